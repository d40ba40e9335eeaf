//! A small Kafka admin client over the wire protocol (`kafka-protocol` codecs on a tokio socket).
//!
//! The operator needs only admin calls (metadata, topics, configs, partitions). Speaking the
//! protocol directly lets it negotiate versions per broker, use `IncrementalAlterConfigs`, and
//! name exactly which API a broker lacks, without linking librdkafka. PLAINTEXT only for now.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
}

impl WireError {
    /// Whether retrying later may succeed (the broker was unreachable or slow).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::Timeout { .. } | Self::Io { .. })
    }
}

/// One connection to one broker, with the API versions it advertised.
pub struct Connection {
    addr: String,
    stream: TcpStream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
    timeout: Duration,
}

impl Connection {
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Self, WireError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Timeout { addr: addr.into() })?
            .map_err(|source| WireError::Connect { addr: addr.into(), source })?;
        stream.set_nodelay(true).ok();
        let mut conn = Self { addr: addr.into(), stream, correlation_id: 0, versions: HashMap::new(), timeout };
        // ApiVersions v0 is understood by every broker; it tells us what else is.
        let response = conn.send(ApiVersionsRequest::default(), 0).await?;
        if response.error_code != 0 {
            return Err(conn.protocol_error(format!("ApiVersions failed with error code {}", response.error_code)));
        }
        conn.versions = response.api_keys.iter().map(|k| (k.api_key, (k.min_version, k.max_version))).collect();
        Ok(conn)
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
        let exchange = async {
            self.stream.write_all(&frame).await?;
            let size = self.stream.read_i32().await?;
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
            .map_err(|source| WireError::Io { addr: addr.clone(), source })?;

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
        _ => "an admin API",
    }
}

/// Human text for the Kafka error codes admin calls return.
pub fn error_text(code: i16, message: Option<&StrBytes>) -> String {
    let name = match code {
        3 => "UNKNOWN_TOPIC_OR_PARTITION",
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
        _ => "KAFKA_ERROR",
    };
    match message.map(|m| m.as_str()).filter(|m| !m.is_empty()) {
        Some(m) => format!("{name} ({code}): {m}"),
        None => format!("{name} ({code})"),
    }
}
