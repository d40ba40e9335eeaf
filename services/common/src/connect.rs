//! How the operator and the services reach Kafka and ClickHouse: TLS and SASL checked together
//! from the environment (`contract::kafka` names the variables the operator writes), the
//! librdkafka settings they turn into, and the TLS client for ClickHouse over `https://`.
//!
//! Certificates and keys travel as PEM text (`ssl.ca.pem`, `ssl.certificate.pem`, `ssl.key.pem` in
//! librdkafka): env vars from Secret keys need no volume, and the operator uses the same text it
//! read from the Secret. TLS on the Rust side is rustls with ring, the provider kube already links.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{FromEnv, KafkaSecurityArgs};
use crate::contract::kafka::{
    SASL_MECHANISM as KAFKA_SASL_MECHANISM_ENV, SASL_PASSWORD as KAFKA_SASL_PASSWORD_ENV,
    SASL_USERNAME as KAFKA_SASL_USERNAME_ENV, SECURITY_PROTOCOL as KAFKA_SECURITY_PROTOCOL_ENV,
    SSL_CA_PEM as KAFKA_SSL_CA_PEM_ENV, SSL_CERTIFICATE_PEM as KAFKA_SSL_CERTIFICATE_PEM_ENV,
    SSL_KEY_PEM as KAFKA_SSL_KEY_PEM_ENV,
};

/// Kafka's `security.protocol`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    #[default]
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    pub fn new(tls: bool, sasl: bool) -> Self {
        match (tls, sasl) {
            (false, false) => Self::Plaintext,
            (true, false) => Self::Ssl,
            (false, true) => Self::SaslPlaintext,
            (true, true) => Self::SaslSsl,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "PLAINTEXT",
            Self::Ssl => "SSL",
            Self::SaslPlaintext => "SASL_PLAINTEXT",
            Self::SaslSsl => "SASL_SSL",
        }
    }
    pub fn tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }
    pub fn sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Plaintext, Self::Ssl, Self::SaslPlaintext, Self::SaslSsl]
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown security protocol {s:?} (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL)"))
    }
}

/// Kafka's `sasl.mechanism` values the operator and the services speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Plain, Self::ScramSha256, Self::ScramSha512]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown SASL mechanism {s:?} (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"))
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: String,
}

impl fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A client certificate and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub certificate_pem: String,
    pub key_pem: String,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

/// How a Kafka client connects: plaintext, TLS, SASL, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KafkaSecurity {
    pub protocol: SecurityProtocol,
    pub sasl: Option<SaslCredentials>,
    /// CA bundle that signed the brokers' certificates; `None` trusts the system's roots.
    pub ca_pem: Option<String>,
    pub client_certificate: Option<ClientCertificate>,
}

impl KafkaSecurity {
    /// From the process environment (what the operator sets on the ingest and sink containers).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_args(&KafkaSecurityArgs::from_env()?)
    }

    /// From any variable lookup.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Self::from_args(&KafkaSecurityArgs::from_lookup(lookup)?)
    }

    /// From the variables as read; unset and empty are the same. Every inconsistency is an error
    /// that names the variables, so a pod fails at start instead of connecting in plaintext.
    pub fn from_args(args: &KafkaSecurityArgs) -> anyhow::Result<Self> {
        let get = |value: &Option<String>| value.clone().filter(|v| !v.is_empty());
        let protocol = match get(&args.security_protocol) {
            Some(p) => p.parse().map_err(|e| anyhow::anyhow!("{KAFKA_SECURITY_PROTOCOL_ENV}: {e}"))?,
            None => SecurityProtocol::Plaintext,
        };
        let sasl = if protocol.sasl() {
            let mechanism = get(&args.sasl_mechanism)
                .ok_or_else(|| anyhow::anyhow!("{KAFKA_SASL_MECHANISM_ENV} must be set for {}", protocol.as_str()))?
                .parse()
                .map_err(|e| anyhow::anyhow!("{KAFKA_SASL_MECHANISM_ENV}: {e}"))?;
            let username = get(&args.sasl_username)
                .ok_or_else(|| anyhow::anyhow!("{KAFKA_SASL_USERNAME_ENV} must be set for {}", protocol.as_str()))?;
            // An empty password is refused too: it is always a missing Secret key, never a real one.
            let password = get(&args.sasl_password)
                .ok_or_else(|| anyhow::anyhow!("{KAFKA_SASL_PASSWORD_ENV} must be set for {}", protocol.as_str()))?;
            Some(SaslCredentials { mechanism, username, password })
        } else {
            None
        };
        let ca_pem = get(&args.ssl_ca_pem);
        let client_certificate = match (get(&args.ssl_certificate_pem), get(&args.ssl_key_pem)) {
            (Some(certificate_pem), Some(key_pem)) => Some(ClientCertificate { certificate_pem, key_pem }),
            (None, None) => None,
            _ => anyhow::bail!("{KAFKA_SSL_CERTIFICATE_PEM_ENV} and {KAFKA_SSL_KEY_PEM_ENV} go together"),
        };
        if !protocol.tls() && (ca_pem.is_some() || client_certificate.is_some()) {
            anyhow::bail!(
                "{KAFKA_SSL_CA_PEM_ENV}/{KAFKA_SSL_CERTIFICATE_PEM_ENV} are set but {KAFKA_SECURITY_PROTOCOL_ENV} is {}",
                protocol.as_str()
            );
        }
        Ok(Self { protocol, sasl, ca_pem, client_certificate })
    }

    /// The librdkafka properties for this security (nothing for plaintext, librdkafka's default).
    pub fn rdkafka_settings(&self) -> Vec<(&'static str, String)> {
        let mut settings = Vec::new();
        if self.protocol == SecurityProtocol::Plaintext {
            return settings;
        }
        settings.push(("security.protocol", self.protocol.as_str().to_string()));
        if let Some(sasl) = &self.sasl {
            settings.push(("sasl.mechanism", sasl.mechanism.as_str().to_string()));
            settings.push(("sasl.username", sasl.username.clone()));
            settings.push(("sasl.password", sasl.password.clone()));
        }
        if self.protocol.tls() {
            // The broker's name (or address) must be in its certificate: librdkafka's default
            // since 2.0, stated so an older default can never turn it off.
            settings.push(("ssl.endpoint.identification.algorithm", "https".to_string()));
            if let Some(ca) = &self.ca_pem {
                settings.push(("ssl.ca.pem", ca.clone()));
            }
            if let Some(client) = &self.client_certificate {
                settings.push(("ssl.certificate.pem", client.certificate_pem.clone()));
                settings.push(("ssl.key.pem", client.key_pem.clone()));
            }
        }
        settings
    }
}

/// A rustls client configuration (ring provider) trusting `ca_pem`, or the system's roots without
/// it, and presenting `client` when given.
pub fn tls_config(ca_pem: Option<&str>, client: Option<&ClientCertificate>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("the CA bundle is not valid PEM")?;
            anyhow::ensure!(!certs.is_empty(), "the CA bundle holds no certificate (PEM `BEGIN CERTIFICATE` block)");
            for cert in certs {
                roots.add(cert).context("the CA bundle holds a certificate rustls cannot use")?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            anyhow::ensure!(added > 0, "no CA bundle given and no system root certificates found");
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match client {
        None => builder.with_no_client_auth(),
        Some(client) => {
            let chain = CertificateDer::pem_slice_iter(client.certificate_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .context("the client certificate is not valid PEM")?;
            anyhow::ensure!(!chain.is_empty(), "the client certificate PEM holds no certificate");
            let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes())
                .context("the client key is not a PEM private key (PKCS#8, PKCS#1 or SEC1)")?;
            builder.with_client_auth_cert(chain, key).context("the client certificate does not match its key")?
        }
    })
}

/// ClickHouse's answer to an idle pooled connection is to close it after 3 s; the crate's default
/// client drops them after 2 s, and so does this one.
const CLICKHOUSE_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(2);
const CLICKHOUSE_TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// A ClickHouse client for `url`: the crate's own HTTP client for `http://`, and for `https://` a
/// rustls one trusting `ca_pem` (or the system's roots). A CA for a plain `http://` URL is an
/// error, not silently unused.
pub fn clickhouse_client(url: &str, ca_pem: Option<&str>) -> anyhow::Result<clickhouse::Client> {
    let https = url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    if !https {
        anyhow::ensure!(ca_pem.is_none(), "a ClickHouse CA bundle is set but the URL {url} is not https://");
        return Ok(clickhouse::Client::default().with_url(url));
    }
    let tls = tls_config(ca_pem, None).context("ClickHouse TLS")?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_keepalive(Some(CLICKHOUSE_TCP_KEEPALIVE));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(CLICKHOUSE_POOL_IDLE_TIMEOUT)
        .build(connector);
    Ok(clickhouse::Client::with_http_client(client).with_url(url))
}

/// Whether an error (or anything in its source chain) is a TLS failure: a certificate not trusted,
/// a name mismatch, a handshake refused. Callers name these apart from "unreachable".
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // `io::Error::source` skips the error it wraps (it returns that error's source), and the
        // TLS stacks wrap the rustls error in `io::Error`s (hyper-rustls in one more): look inside.
        current = match e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| vars.get(name).cloned()
    }

    #[test]
    fn plaintext_by_default_and_no_settings() {
        let security = KafkaSecurity::from_lookup(lookup(&[])).unwrap();
        assert_eq!(security, KafkaSecurity::default());
        assert!(security.rdkafka_settings().is_empty());
    }

    #[test]
    fn sasl_ssl_turns_into_librdkafka_properties() {
        let security = KafkaSecurity::from_lookup(lookup(&[
            (KAFKA_SECURITY_PROTOCOL_ENV, "SASL_SSL"),
            (KAFKA_SASL_MECHANISM_ENV, "SCRAM-SHA-512"),
            (KAFKA_SASL_USERNAME_ENV, "flightline"),
            (KAFKA_SASL_PASSWORD_ENV, "s3cret"),
            (KAFKA_SSL_CA_PEM_ENV, "-----BEGIN CERTIFICATE-----\n"),
        ]))
        .unwrap();
        let settings: HashMap<&str, String> = security.rdkafka_settings().into_iter().collect();
        assert_eq!(settings["security.protocol"], "SASL_SSL");
        assert_eq!(settings["sasl.mechanism"], "SCRAM-SHA-512");
        assert_eq!(settings["sasl.username"], "flightline");
        assert_eq!(settings["sasl.password"], "s3cret");
        assert_eq!(settings["ssl.ca.pem"], "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(settings["ssl.endpoint.identification.algorithm"], "https");
        assert!(!settings.contains_key("ssl.certificate.pem"));
        // The password never reaches a log line through Debug.
        assert!(!format!("{security:?}").contains("s3cret"));
    }

    #[test]
    fn mutual_tls_without_sasl() {
        let security = KafkaSecurity::from_lookup(lookup(&[
            (KAFKA_SECURITY_PROTOCOL_ENV, "ssl"),
            (KAFKA_SSL_CERTIFICATE_PEM_ENV, "CERT"),
            (KAFKA_SSL_KEY_PEM_ENV, "KEY"),
        ]))
        .unwrap();
        let settings: HashMap<&str, String> = security.rdkafka_settings().into_iter().collect();
        assert_eq!(settings["security.protocol"], "SSL");
        assert_eq!((settings["ssl.certificate.pem"].as_str(), settings["ssl.key.pem"].as_str()), ("CERT", "KEY"));
        assert!(!settings.contains_key("sasl.mechanism") && !settings.contains_key("ssl.ca.pem"));
        assert!(!format!("{security:?}").contains("KEY\""));
    }

    #[test]
    fn inconsistent_environments_are_refused_with_the_variable_named() {
        let refused = |vars: &[(&str, &str)]| KafkaSecurity::from_lookup(lookup(vars)).unwrap_err().to_string();
        assert!(refused(&[(KAFKA_SECURITY_PROTOCOL_ENV, "TLS")]).contains(KAFKA_SECURITY_PROTOCOL_ENV));
        assert!(refused(&[(KAFKA_SECURITY_PROTOCOL_ENV, "SASL_SSL")]).contains(KAFKA_SASL_MECHANISM_ENV));
        assert!(
            refused(&[
                (KAFKA_SECURITY_PROTOCOL_ENV, "SASL_PLAINTEXT"),
                (KAFKA_SASL_MECHANISM_ENV, "PLAIN"),
                (KAFKA_SASL_USERNAME_ENV, "u"),
            ])
            .contains(KAFKA_SASL_PASSWORD_ENV)
        );
        assert!(
            refused(&[
                (KAFKA_SECURITY_PROTOCOL_ENV, "SASL_SSL"),
                (KAFKA_SASL_MECHANISM_ENV, "GSSAPI"),
                (KAFKA_SASL_USERNAME_ENV, "u"),
                (KAFKA_SASL_PASSWORD_ENV, "p"),
            ])
            .contains("unknown SASL mechanism")
        );
        assert!(refused(&[(KAFKA_SSL_CA_PEM_ENV, "CA")]).contains("is PLAINTEXT"));
        assert!(
            refused(&[(KAFKA_SECURITY_PROTOCOL_ENV, "SSL"), (KAFKA_SSL_CERTIFICATE_PEM_ENV, "C")])
                .contains("go together")
        );
    }

    #[test]
    fn protocol_follows_tls_and_sasl() {
        for (tls, sasl, want) in [
            (false, false, "PLAINTEXT"),
            (true, false, "SSL"),
            (false, true, "SASL_PLAINTEXT"),
            (true, true, "SASL_SSL"),
        ] {
            let protocol = SecurityProtocol::new(tls, sasl);
            assert_eq!(protocol.as_str(), want);
            assert_eq!((protocol.tls(), protocol.sasl()), (tls, sasl));
            assert_eq!(want.parse::<SecurityProtocol>(), Ok(protocol));
        }
    }

    #[test]
    fn tls_failures_are_found_inside_nested_io_errors() {
        let rustls_error = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let inner = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_error);
        let outer = std::io::Error::other(inner);
        assert_eq!(tls_failure(&outer).as_deref(), Some("invalid peer certificate: UnknownIssuer"));
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(tls_failure(&std::io::Error::other(refused)), None);
    }

    #[test]
    fn bad_pem_is_named() {
        let error = tls_config(Some("not a certificate"), None).unwrap_err();
        assert!(format!("{error:#}").contains("no certificate"), "{error:#}");
        let error = clickhouse_client("http://127.0.0.1:8123", Some("CA")).unwrap_err();
        assert!(error.to_string().contains("not https://"), "{error}");
        assert!(clickhouse_client("http://127.0.0.1:8123", None).is_ok());
    }
}
