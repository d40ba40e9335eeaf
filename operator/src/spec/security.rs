//! TLS and SASL of a pipeline's connections: the spec checked and turned into Secret references
//! (`resolve`), and the container environment that carries them to the services (`env`). Pure.
//!
//! Certificates, keys and passwords reach the pods as env vars from Secret keys (PEM text for
//! librdkafka's `ssl.*.pem` and rustls): no volume, so a rotated Secret rolls nothing by itself,
//! just as for the ClickHouse credentials. The operator reads the same Secret keys itself.

use flightline_service::connect::{SaslMechanism, SecurityProtocol};
use flightline_service::contract::{clickhouse, kafka};
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, SecretKeySelector};

use crate::crd::{CaSecretRef, ClickHouseSpec, ClientCertificateSecretRef, KafkaSpec, SecretKeyRefs};

/// Where a pipeline's Kafka TLS and SASL material lives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KafkaSecurityRefs {
    pub protocol: SecurityProtocol,
    pub sasl: Option<(SaslMechanism, SecretKeyRefs)>,
    pub ca: Option<CaSecretRef>,
    pub client_certificate: Option<ClientCertificateSecretRef>,
}

/// The Kafka security of a spec, or what is wrong with it.
pub fn kafka(spec: &KafkaSpec) -> Result<KafkaSecurityRefs, String> {
    let tls = spec.tls.as_ref();
    let sasl = spec.sasl.as_ref();
    if let Some(sasl) = sasl
        && tls.is_none()
        && !sasl.allow_plaintext
    {
        return Err(format!(
            "spec.kafka.sasl: {} would send the credentials without TLS; add spec.kafka.tls, or set \
             spec.kafka.sasl.allowPlaintext: true for a SASL_PLAINTEXT listener",
            mechanism(sasl.mechanism).as_str()
        ));
    }
    Ok(KafkaSecurityRefs {
        protocol: SecurityProtocol::new(tls.is_some(), sasl.is_some()),
        sasl: sasl.map(|s| (mechanism(s.mechanism), s.credentials_secret.clone())),
        ca: tls.and_then(|t| t.ca_secret.clone()),
        client_certificate: tls.and_then(|t| t.client_certificate_secret.clone()),
    })
}

pub fn mechanism(m: crate::crd::SaslMechanism) -> SaslMechanism {
    match m {
        crate::crd::SaslMechanism::Plain => SaslMechanism::Plain,
        crate::crd::SaslMechanism::ScramSha256 => SaslMechanism::ScramSha256,
        crate::crd::SaslMechanism::ScramSha512 => SaslMechanism::ScramSha512,
    }
}

/// The CA of ClickHouse's certificate, or what is wrong: TLS settings for a plain `http://` URL
/// would be ignored, so they are refused.
pub fn clickhouse(spec: &ClickHouseSpec, url: &str) -> Result<Option<CaSecretRef>, String> {
    let Some(tls) = &spec.tls else { return Ok(None) };
    let https = url.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if !https {
        return Err(format!("spec.clickhouse.tls: set, but the ClickHouse URL {url:?} is not https://"));
    }
    Ok(tls.ca_secret.clone())
}

/// Settings for the shared ConfigMap, both keys always (the mechanism empty without SASL, which
/// the services read as unset): containers refer to each key they read (`configMapKeyRef`, not
/// optional), so a key that went away when security was switched off would leave every pod of the
/// previous template that starts again (a restart, an eviction, a rollout that does not finish, a
/// rollback) stuck in CreateContainerConfigError.
pub fn kafka_settings(refs: &KafkaSecurityRefs) -> Vec<(String, String)> {
    let mechanism = refs.sasl.as_ref().map(|(mechanism, _)| mechanism.as_str()).unwrap_or_default();
    vec![
        (kafka::SECURITY_PROTOCOL.to_string(), refs.protocol.as_str().to_string()),
        (kafka::SASL_MECHANISM.to_string(), mechanism.to_string()),
    ]
}

fn from_secret(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector { name: secret.into(), key: key.into(), optional: Some(false) }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The Secret-backed variables of a Kafka client container (ingest, sink).
pub fn kafka_env(refs: &KafkaSecurityRefs) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some((_, secret)) = &refs.sasl {
        env.push(from_secret(kafka::SASL_USERNAME, &secret.name, &secret.username_key));
        env.push(from_secret(kafka::SASL_PASSWORD, &secret.name, &secret.password_key));
    }
    if let Some(ca) = &refs.ca {
        env.push(from_secret(kafka::SSL_CA_PEM, &ca.name, &ca.key));
    }
    if let Some(client) = &refs.client_certificate {
        env.push(from_secret(kafka::SSL_CERTIFICATE_PEM, &client.name, &client.cert_key));
        env.push(from_secret(kafka::SSL_KEY_PEM, &client.name, &client.key_key));
    }
    env
}

/// The Secret-backed variable of a ClickHouse client container (sink, query).
pub fn clickhouse_env(ca: Option<&CaSecretRef>) -> Vec<EnvVar> {
    ca.map(|ca| from_secret(clickhouse::CA_PEM, &ca.name, &ca.key)).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ClickHouseTlsSpec, KafkaSaslSpec, KafkaTlsSpec};

    fn secret(name: &str) -> SecretKeyRefs {
        SecretKeyRefs { name: name.into(), username_key: "user".into(), password_key: "pass".into() }
    }
    fn ca(name: &str) -> CaSecretRef {
        CaSecretRef { name: name.into(), key: "ca.crt".into() }
    }
    fn sasl(allow_plaintext: bool) -> KafkaSaslSpec {
        KafkaSaslSpec {
            mechanism: crate::crd::SaslMechanism::ScramSha512,
            credentials_secret: secret("kafka-user"),
            allow_plaintext,
        }
    }

    #[test]
    fn protocol_follows_tls_and_sasl() {
        let mut spec = KafkaSpec::default();
        assert_eq!(kafka(&spec).unwrap(), KafkaSecurityRefs::default());
        spec.tls = Some(KafkaTlsSpec::default());
        assert_eq!(kafka(&spec).unwrap().protocol, SecurityProtocol::Ssl);
        spec.sasl = Some(sasl(false));
        let refs = kafka(&spec).unwrap();
        assert_eq!(refs.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(refs.sasl, Some((SaslMechanism::ScramSha512, secret("kafka-user"))));
        spec.tls = None;
        spec.sasl = Some(sasl(true));
        assert_eq!(kafka(&spec).unwrap().protocol, SecurityProtocol::SaslPlaintext);
    }

    #[test]
    fn sasl_without_tls_needs_the_explicit_opt_in() {
        let spec = KafkaSpec { sasl: Some(sasl(false)), ..KafkaSpec::default() };
        let error = kafka(&spec).unwrap_err();
        assert!(error.contains("allowPlaintext") && error.contains("SCRAM-SHA-512"), "{error}");
    }

    #[test]
    fn clickhouse_tls_needs_an_https_url() {
        let spec = ClickHouseSpec {
            tls: Some(ClickHouseTlsSpec { ca_secret: Some(ca("ch-ca")) }),
            ..ClickHouseSpec::default()
        };
        assert_eq!(clickhouse(&spec, "HTTPS://ch:8443").unwrap(), Some(ca("ch-ca")));
        assert!(clickhouse(&spec, "http://ch:8123").unwrap_err().contains("not https://"));
        assert_eq!(clickhouse(&ClickHouseSpec::default(), "http://ch:8123").unwrap(), None);
    }

    #[test]
    fn the_secure_example_resolves_to_sasl_ssl_and_an_https_ca() {
        let text = include_str!("../../../examples/scl-secure.yaml");
        let fp: crate::crd::FlightPipeline = serde_saphyr::from_str(text).expect("the example parses");
        let refs = kafka(&fp.spec.kafka).unwrap();
        assert_eq!(refs.protocol, SecurityProtocol::SaslSsl);
        assert_eq!(
            refs.sasl.as_ref().map(|(m, s)| (*m, s.name.as_str())),
            Some((SaslMechanism::ScramSha512, "kafka-user"))
        );
        assert_eq!(refs.ca, Some(ca("kafka-ca")));
        assert_eq!(clickhouse(&fp.spec.clickhouse, &fp.spec.clickhouse.url).unwrap(), Some(ca("clickhouse-ca")));
    }

    #[test]
    fn env_names_every_secret_key_and_settings_keep_their_keys_for_plaintext() {
        let plaintext = kafka_settings(&KafkaSecurityRefs::default());
        assert_eq!(
            plaintext,
            [
                (kafka::SECURITY_PROTOCOL.to_string(), "PLAINTEXT".to_string()),
                (kafka::SASL_MECHANISM.to_string(), String::new())
            ]
        );
        // The services read these as plaintext, no SASL.
        let lookup = |name: &str| plaintext.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(
            flightline_service::connect::KafkaSecurity::from_lookup(lookup).unwrap().rdkafka_settings(),
            Vec::<(&str, String)>::new()
        );
        assert!(kafka_env(&KafkaSecurityRefs::default()).is_empty());
        let refs = KafkaSecurityRefs {
            protocol: SecurityProtocol::SaslSsl,
            sasl: Some((SaslMechanism::Plain, secret("kafka-user"))),
            ca: Some(ca("kafka-ca")),
            client_certificate: Some(ClientCertificateSecretRef {
                name: "kafka-client".into(),
                cert_key: "tls.crt".into(),
                key_key: "tls.key".into(),
            }),
        };
        assert_eq!(
            kafka_settings(&refs),
            [
                (kafka::SECURITY_PROTOCOL.to_string(), "SASL_SSL".to_string()),
                (kafka::SASL_MECHANISM.to_string(), "PLAIN".to_string())
            ]
        );
        let env: Vec<(String, String, String)> = kafka_env(&refs)
            .into_iter()
            .map(|e| {
                let r = e.value_from.unwrap().secret_key_ref.unwrap();
                (e.name, r.name, r.key)
            })
            .collect();
        let want = [
            (kafka::SASL_USERNAME, "kafka-user", "user"),
            (kafka::SASL_PASSWORD, "kafka-user", "pass"),
            (kafka::SSL_CA_PEM, "kafka-ca", "ca.crt"),
            (kafka::SSL_CERTIFICATE_PEM, "kafka-client", "tls.crt"),
            (kafka::SSL_KEY_PEM, "kafka-client", "tls.key"),
        ];
        assert_eq!(env, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())));
        let ch = clickhouse_env(Some(&ca("ch-ca")));
        assert_eq!(ch[0].name, clickhouse::CA_PEM);
        assert!(clickhouse_env(None).is_empty());
    }
}
