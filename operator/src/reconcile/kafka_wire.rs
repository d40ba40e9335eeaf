//! A small Kafka admin client over the wire protocol (`kafka-protocol` codecs on a tokio socket).
//!
//! The operator needs only admin calls (metadata, topics, configs, partitions). Speaking the
//! protocol directly lets it negotiate versions per broker, use `IncrementalAlterConfigs`, and
//! name exactly which API a broker lacks, without linking librdkafka. It speaks PLAINTEXT, SSL
//! (rustls with ring: a CA from a Secret or the system's roots, an optional client certificate),
//! SASL_PLAINTEXT and SASL_SSL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512; `kafka_sasl`).
//!
//! Why not rdkafka's admin API (0.39, librdkafka 2.12): its safe `AdminClient` has `AlterConfigs`
//! only, which replaces a topic's whole config set and so resets every config the operator does
//! not manage on an adopted topic; `IncrementalAlterConfigs` and the controller id exist only as
//! raw `rdkafka-sys` functions (unsafe FFI plus an event queue to drive by hand); and it would
//! link librdkafka and OpenSSL into an operator that is otherwise pure Rust with rustls.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use flightline_service::connect::{KafkaSecurity, SaslCredentials};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader, SaslAuthenticateRequest, SaslHandshakeRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::kafka_sasl::{self, Exchange};

const CLIENT_ID: &str = "flightline-operator";
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot reach Kafka broker {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("Kafka broker {addr} timed out")]
    Timeout { addr: String },
    #[error("Kafka connection to {addr} failed: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("Kafka protocol error talking to {addr}: {message}")]
    Protocol { addr: String, message: String },
    #[error("the Kafka broker does not support {api} (API key {key})")]
    Unsupported { api: &'static str, key: i16 },
    /// The TLS handshake failed: a certificate not signed by the CA, a name not in it, a client
    /// certificate refused, or a plaintext listener.
    #[error("TLS with Kafka broker {addr} failed: {message}")]
    Tls { addr: String, message: String },
    /// The broker refused the SASL mechanism or the credentials.
    #[error("SASL {mechanism} authentication with Kafka broker {addr} failed: {message}")]
    Authentication { addr: String, mechanism: &'static str, message: String },
    /// The TLS settings themselves are unusable (a CA that is not PEM, a key that does not match).
    #[error("Kafka TLS settings: {0}")]
    Settings(String),
}

/// A batched call's failure reaches every caller: an I/O error is copied as its kind and text.
impl Clone for WireError {
    fn clone(&self) -> Self {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            Self::Connect { addr, source } => Self::Connect { addr: addr.clone(), source: io(source) },
            Self::Timeout { addr } => Self::Timeout { addr: addr.clone() },
            Self::Io { addr, source } => Self::Io { addr: addr.clone(), source: io(source) },
            Self::Protocol { addr, message } => Self::Protocol { addr: addr.clone(), message: message.clone() },
            Self::Unsupported { api, key } => Self::Unsupported { api, key: *key },
            Self::Tls { addr, message } => Self::Tls { addr: addr.clone(), message: message.clone() },
            Self::Authentication { addr, mechanism, message } => {
                Self::Authentication { addr: addr.clone(), mechanism, message: message.clone() }
            }
            Self::Settings(message) => Self::Settings(message.clone()),
        }
    }
}

impl WireError {
    /// Whether retrying later may succeed (the broker was unreachable or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. } | Self::Io { .. })
    }
}

/// TLS and SASL for every connection of one admin session, prepared once.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<tokio_rustls::TlsConnector>,
    sasl: Option<SaslCredentials>,
}

impl Security {
    pub fn new(security: &KafkaSecurity) -> Result<Self, WireError> {
        let tls = if security.protocol.tls() {
            let config = flightline_service::connect::tls_config(
                security.ca_pem.as_deref(),
                security.client_certificate.as_ref(),
            )
            .map_err(|e| WireError::Settings(format!("{e:#}")))?;
            Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(Self { tls, sasl: security.sasl.clone() })
    }
}

/// A broker connection, plaintext or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The host part of `host:port` (`[v6]:port` too), as the name a TLS certificate must carry.
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host)
}

/// One connection to one broker, with the API versions it advertised.
pub struct Connection {
    addr: String,
    stream: Stream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
    timeout: Duration,
}

impl Connection {
    pub async fn connect(addr: &str, security: &Security, timeout: Duration) -> Result<Self, WireError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout { addr: addr.into() })?
            .map_err(|source| WireError::Connect { addr: addr.into(), source })?;
        tcp.set_nodelay(true).ok();
        let stream = match &security.tls {
            None => Stream::Plain(tcp),
            Some(connector) => {
                let tls_error = |message: String| WireError::Tls { addr: addr.into(), message };
                let name = rustls::pki_types::ServerName::try_from(host_of(addr).to_string())
                    .map_err(|e| tls_error(format!("{:?} is not a host name: {e}", host_of(addr))))?;
                let handshake = tokio::time::timeout(timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| WireError::Timeout { addr: addr.into() })?;
                // Every failure here is the handshake's: name the certificate problem when rustls
                // has one, else the connection dropped mid-handshake (a plaintext listener, a
                // refused client certificate).
                Stream::Tls(Box::new(handshake.map_err(|e| {
                    let detail = flightline_service::connect::tls_failure(&e).unwrap_or_else(|| e.to_string());
                    tls_error(format!("{detail} (is the listener TLS, and is its certificate signed by the CA given?)"))
                })?))
            }
        };
        let mut conn = Self { addr: addr.into(), stream, correlation_id: 0, versions: HashMap::new(), timeout };
        // ApiVersions v0 is understood by every broker, before SASL too; it tells us what else is.
        let response = conn.send(ApiVersionsRequest::default(), 0).await?;
        if response.error_code != 0 {
            return Err(conn.protocol_error(format!("ApiVersions failed with error code {}", response.error_code)));
        }
        conn.versions = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        if let Some(credentials) = &security.sasl {
            conn.authenticate(credentials).await?;
        }
        Ok(conn)
    }

    /// `SaslHandshake` v1 then `SaslAuthenticate` rounds (KIP-152), the way Java clients do it.
    async fn authenticate(&mut self, credentials: &SaslCredentials) -> Result<(), WireError> {
        let mechanism = credentials.mechanism.as_str();
        let refused = |addr: &str, message: String| WireError::Authentication { addr: addr.into(), mechanism, message };
        let mut handshake = SaslHandshakeRequest::default();
        handshake.mechanism = StrBytes::from_static_str(mechanism);
        let (response, _) = self.call(handshake, 1).await?;
        if response.error_code != 0 {
            let offered: Vec<&str> = response.mechanisms.iter().map(|m| m.as_str()).collect();
            let message = format!("{}; the listener offers {offered:?}", error_text(response.error_code, None));
            return Err(refused(&self.addr, message));
        }
        let nonce = kafka_sasl::nonce();
        match Exchange::start(credentials.mechanism, &credentials.username, &credentials.password, &nonce) {
            Exchange::Plain(message) => {
                self.sasl_round(message, mechanism).await?;
            }
            Exchange::Scram(mut scram) => {
                let server_first = self.sasl_round(scram.client_first(), mechanism).await?;
                let client_final = scram.client_final(&server_first).map_err(|m| refused(&self.addr, m))?;
                let server_final = self.sasl_round(client_final, mechanism).await?;
                scram.verify_server_final(&server_final).map_err(|m| refused(&self.addr, m))?;
            }
        }
        Ok(())
    }

    async fn sasl_round(&mut self, message: Vec<u8>, mechanism: &'static str) -> Result<bytes::Bytes, WireError> {
        let mut request = SaslAuthenticateRequest::default();
        request.auth_bytes = bytes::Bytes::from(message);
        let (response, _) = match self.call(request, 2).await {
            // The broker closes the connection after a failed round on SaslAuthenticate v0.
            Err(WireError::Io { source, .. }) => {
                return Err(WireError::Authentication {
                    addr: self.addr.clone(),
                    mechanism,
                    message: format!("the broker closed the connection ({source})"),
                });
            }
            other => other?,
        };
        if response.error_code != 0 {
            return Err(WireError::Authentication {
                addr: self.addr.clone(),
                mechanism,
                message: error_text(response.error_code, response.error_message.as_ref()),
            });
        }
        Ok(response.auth_bytes)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The highest version both sides speak, capped at `max`, or `Unsupported`.
    pub fn version<R: Request>(&self, max: i16) -> Result<i16, WireError> {
        let ours = R::VERSIONS;
        let unsupported = || WireError::Unsupported { api: api_name(R::KEY), key: R::KEY };
        let (broker_min, broker_max) = *self.versions.get(&R::KEY).ok_or_else(unsupported)?;
        let top = broker_max.min(ours.max).min(max);
        if top < broker_min.max(ours.min) {
            return Err(unsupported());
        }
        Ok(top)
    }

    pub fn supports<R: Request>(&self) -> bool {
        self.versions.contains_key(&R::KEY)
    }

    /// Sends a request at the highest common version (capped at `max`) and decodes the answer.
    pub async fn call<R: Request>(&mut self, request: R, max: i16) -> Result<(R::Response, i16), WireError> {
        let version = self.version::<R>(max)?;
        Ok((self.send(request, version).await?, version))
    }

    async fn send<R: Request>(&mut self, request: R, version: i16) -> Result<R::Response, WireError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let mut header = RequestHeader::default();
        header.request_api_key = R::KEY;
        header.request_api_version = version;
        header.correlation_id = self.correlation_id;
        header.client_id = Some(StrBytes::from_static_str(CLIENT_ID));

        let mut frame = BytesMut::new();
        frame.put_i32(0); // length, patched below
        header.encode(&mut frame, R::header_version(version)).map_err(|e| self.protocol_error(e.to_string()))?;
        request.encode(&mut frame, version).map_err(|e| self.protocol_error(e.to_string()))?;
        let length = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&length.to_be_bytes());

        let addr = self.addr.clone();
        let timeout = self.timeout;
        let plaintext = matches!(self.stream, Stream::Plain(_));
        let exchange = async {
            self.stream.write_all(&frame).await?;
            let size = self.stream.read_i32().await?;
            if plaintext && is_tls_alert(size) {
                return Err(std::io::Error::other(TLS_LISTENER));
            }
            if size < 0 || size as usize > MAX_RESPONSE_BYTES {
                return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("response size {size}")));
            }
            let mut body = vec![0u8; size as usize];
            self.stream.read_exact(&mut body).await?;
            Ok(body)
        };
        let body = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| WireError::Timeout { addr: addr.clone() })?
            .map_err(|source| match source.get_ref().map(|e| e.to_string()) {
                Some(message) if message == TLS_LISTENER => WireError::Tls { addr: addr.clone(), message },
                _ => WireError::Io { addr: addr.clone(), source },
            })?;

        let mut buf = bytes::Bytes::from(body);
        let response_header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(|e| self.protocol_error(e.to_string()))?;
        if response_header.correlation_id != self.correlation_id {
            return Err(self.protocol_error("response correlation id does not match the request".into()));
        }
        let response = R::Response::decode(&mut buf, version).map_err(|e| self.protocol_error(e.to_string()))?;
        if buf.has_remaining() {
            tracing::debug!(api = api_name(R::KEY), left = buf.remaining(), "response had trailing bytes");
        }
        Ok(response)
    }

    fn protocol_error(&self, message: String) -> WireError {
        WireError::Protocol { addr: self.addr.clone(), message }
    }
}

const TLS_LISTENER: &str = "the listener answered with TLS, but the connection is plaintext: set spec.kafka.tls";

/// Whether the 4 bytes read as a response's size are a TLS alert record's header (content type 21,
/// version 3.x): what a TLS listener sends back to a plaintext request.
fn is_tls_alert(size: i32) -> bool {
    let [content_type, major, ..] = size.to_be_bytes();
    content_type == 21 && major == 3
}

fn api_name(key: i16) -> &'static str {
    match ApiKey::try_from(key) {
        Ok(ApiKey::CreatePartitions) => "CreatePartitions",
        Ok(ApiKey::IncrementalAlterConfigs) => "IncrementalAlterConfigs",
        Ok(ApiKey::AlterConfigs) => "AlterConfigs",
        Ok(ApiKey::DescribeConfigs) => "DescribeConfigs",
        Ok(ApiKey::CreateTopics) => "CreateTopics",
        Ok(ApiKey::DeleteTopics) => "DeleteTopics",
        Ok(ApiKey::Metadata) => "Metadata",
        Ok(ApiKey::ApiVersions) => "ApiVersions",
        Ok(ApiKey::SaslHandshake) => "SaslHandshake",
        Ok(ApiKey::SaslAuthenticate) => "SaslAuthenticate",
        _ => "an admin API",
    }
}

/// Human text for the Kafka error codes admin calls return.
pub fn error_text(code: i16, message: Option<&StrBytes>) -> String {
    let name = match code {
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
        33 => "UNSUPPORTED_SASL_MECHANISM",
        34 => "ILLEGAL_SASL_STATE",
        7 => "REQUEST_TIMED_OUT",
        17 => "INVALID_TOPIC_EXCEPTION",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        36 => "TOPIC_ALREADY_EXISTS",
        37 => "INVALID_PARTITIONS",
        38 => "INVALID_REPLICATION_FACTOR",
        40 => "INVALID_CONFIG",
        41 => "NOT_CONTROLLER",
        42 => "INVALID_REQUEST",
        44 => "POLICY_VIOLATION",
        58 => "SASL_AUTHENTICATION_FAILED",
        _ => "KAFKA_ERROR",
    };
    match message.map(|m| m.as_str()).filter(|m| !m.is_empty()) {
        Some(m) => format!("{name} ({code}): {m}"),
        None => format!("{name} ({code})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_alert_read_as_a_size_is_recognised() {
        // What Apache Kafka's SSL listener sent to a plaintext ApiVersions: 15 03 03 00 (then 02 ..).
        assert!(is_tls_alert(352_518_912));
        assert!(!is_tls_alert(1024) && !is_tls_alert(-1) && !is_tls_alert(0x1502_0000));
    }

    #[test]
    fn the_certificate_name_is_the_host_of_the_address() {
        assert_eq!(host_of("kafka-0.kafka:9093"), "kafka-0.kafka");
        assert_eq!(host_of("10.88.0.1:19095"), "10.88.0.1");
        assert_eq!(host_of("[fd00::1]:9093"), "fd00::1");
        assert_eq!(host_of("kafka"), "kafka");
    }

    #[test]
    fn sasl_refusals_read_as_kafka_names_them() {
        let message =
            StrBytes::from_static_str("Authentication failed during authentication due to invalid credentials");
        assert_eq!(
            error_text(58, Some(&message)),
            "SASL_AUTHENTICATION_FAILED (58): Authentication failed during authentication due to invalid credentials"
        );
        assert_eq!(error_text(33, None), "UNSUPPORTED_SASL_MECHANISM (33)");
        let tls = WireError::Tls { addr: "b:9093".into(), message: "invalid peer certificate: UnknownIssuer".into() };
        let auth = WireError::Authentication { addr: "b:9093".into(), mechanism: "PLAIN", message: "x".into() };
        // Neither is retried fast: the same CA or password fails the same way until the Secret changes.
        assert!(!tls.is_transient() && !auth.is_transient());
        assert_eq!(auth.to_string(), "SASL PLAIN authentication with Kafka broker b:9093 failed: x");
    }

    #[test]
    fn unusable_tls_settings_are_refused_before_any_connection() {
        let security = KafkaSecurity {
            protocol: flightline_service::connect::SecurityProtocol::Ssl,
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n".into()),
            ..KafkaSecurity::default()
        };
        let Err(WireError::Settings(message)) = Security::new(&security) else { panic!("bad PEM accepted") };
        assert!(message.contains("CA bundle"), "{message}");
        assert!(Security::new(&KafkaSecurity::default()).is_ok_and(|s| s.tls.is_none() && s.sasl.is_none()));
    }
}
