//! What Kafka and ClickHouse report, as a condition: its type, its reason, its message, and whether
//! the reconcile is retried with backoff (transient: the system was unreachable or slow). Pure.

use super::Error;
use super::kafka::KafkaError;
use crate::conditions::{ConditionType, Finding, reason};

/// A failure as the status reports it, and whether to retry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub finding: Finding,
    pub transient: bool,
}

/// `KafkaReady` for a Kafka failure: TLS before authentication before reachability.
pub fn kafka(e: &KafkaError) -> Outcome {
    let transient = e.is_transient();
    let why = if e.is_tls() {
        reason::KAFKA_TLS_FAILED
    } else if e.is_authentication() {
        reason::KAFKA_AUTHENTICATION_FAILED
    } else if transient {
        reason::KAFKA_UNAVAILABLE
    } else {
        reason::KAFKA_ERROR
    };
    Outcome { finding: Finding::failed(ConditionType::KafkaReady, why, e.to_string()), transient }
}

/// `ClickHouseReady` for a failure on the way to ClickHouse: its own errors, and reading the
/// credentials' Secret (a Secret missing or forbidden waits for a change; an API server that is
/// down, overloaded or throttling is retried like ClickHouse being down).
pub fn clickhouse(e: &Error) -> Outcome {
    let transient = match e {
        Error::ClickHouse(c) => c.is_transient(),
        Error::Kube(k) => kube_transient(k),
        _ => false,
    };
    let why = match e {
        Error::ClickHouse(c) if c.is_tls() => reason::CLICKHOUSE_TLS_FAILED,
        Error::ClickHouse(c) if c.is_authentication() => reason::CLICKHOUSE_AUTHENTICATION_FAILED,
        // ClickHouse itself unreachable; the API server failing is said in the message.
        Error::ClickHouse(_) if transient => reason::CLICKHOUSE_UNAVAILABLE,
        _ => reason::CLICKHOUSE_ERROR,
    };
    Outcome { finding: Finding::failed(ConditionType::ClickHouseReady, why, e.to_string()), transient }
}

/// A Kubernetes API failure a retry can cure: the API server unreachable, failing (5xx) or
/// throttling (429).
fn kube_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(status) => status.code >= 500 || status.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::clickhouse::ClickHouseError;
    use crate::reconcile::kafka_wire::WireError;
    use std::io;

    fn refused(code: i16) -> KafkaError {
        KafkaError::Refused { action: "create", topic: "t".into(), code, detail: format!("code {code}") }
    }

    fn io_error(kind: io::ErrorKind) -> io::Error {
        io::Error::new(kind, "from the test")
    }

    /// Every kind of Kafka failure → (reason, transient); the type is always `KafkaReady`.
    #[test]
    fn kafka_failures_map_to_a_reason_and_a_retry() {
        let addr = || "127.0.0.1:1".to_string();
        let cases: Vec<(KafkaError, &str, bool)> = vec![
            (
                WireError::Connect { addr: addr(), source: io_error(io::ErrorKind::ConnectionRefused) }.into(),
                "KafkaUnavailable",
                true,
            ),
            (WireError::Timeout { addr: addr() }.into(), "KafkaUnavailable", true),
            (
                WireError::Io { addr: addr(), source: io_error(io::ErrorKind::UnexpectedEof) }.into(),
                "KafkaUnavailable",
                true,
            ),
            (WireError::Protocol { addr: addr(), message: "bad frame".into() }.into(), "KafkaError", false),
            (WireError::Unsupported { api: "CreatePartitions", key: 37 }.into(), "KafkaError", false),
            (WireError::Tls { addr: addr(), message: "UnknownIssuer".into() }.into(), "KafkaTLSFailed", false),
            (WireError::Settings("the CA is not PEM".into()).into(), "KafkaTLSFailed", false),
            (
                WireError::Authentication { addr: addr(), mechanism: "SCRAM-SHA-512", message: "bad password".into() }
                    .into(),
                "KafkaAuthenticationFailed",
                false,
            ),
            // Codes a retry can cure (leadership, controller, a slow broker) and ones it cannot.
            (refused(5), "KafkaUnavailable", true),
            (refused(6), "KafkaUnavailable", true),
            (refused(7), "KafkaUnavailable", true),
            (refused(15), "KafkaUnavailable", true),
            (refused(41), "KafkaUnavailable", true),
            (refused(29), "KafkaError", false),
            (refused(37), "KafkaError", false),
            (KafkaError::Exists { topic: "t".into() }, "KafkaError", false),
            (KafkaError::Secret("Secret kafka-user not found".into()), "KafkaError", false),
        ];
        for (error, why, transient) in cases {
            let outcome = kafka(&error);
            assert_eq!(outcome.finding.type_, ConditionType::KafkaReady, "{error}");
            assert!(!outcome.finding.ok, "{error}");
            assert_eq!((outcome.finding.reason, outcome.transient), (why, transient), "{error}");
            assert_eq!(outcome.finding.message, error.to_string());
        }
    }

    fn bad_response(text: &str) -> ClickHouseError {
        ClickHouseError::Refused {
            url: "http://ch:8123".into(),
            statement: "SELECT 1".into(),
            source: clickhouse::error::Error::BadResponse(text.into()),
        }
    }

    /// Every kind of ClickHouse failure → (reason, transient); the type is always `ClickHouseReady`.
    #[test]
    fn clickhouse_failures_map_to_a_reason_and_a_retry() {
        let url = || "http://ch:8123".to_string();
        let network = || clickhouse::error::Error::Network("connection refused".into());
        let cases: Vec<(Error, &str, bool)> = vec![
            (ClickHouseError::Unreachable { url: url(), source: network() }.into(), "ClickHouseUnavailable", true),
            (
                ClickHouseError::Unreachable { url: url(), source: clickhouse::error::Error::TimedOut }.into(),
                "ClickHouseUnavailable",
                true,
            ),
            (
                bad_response("Code: 516. DB::Exception: Authentication failed").into(),
                "ClickHouseAuthenticationFailed",
                false,
            ),
            (
                bad_response("Code: 194. DB::Exception: Password required").into(),
                "ClickHouseAuthenticationFailed",
                false,
            ),
            (bad_response("Code: 192. DB::Exception: Unknown user x").into(), "ClickHouseAuthenticationFailed", false),
            (bad_response("Code: 60. DB::Exception: Unknown table").into(), "ClickHouseError", false),
            (bad_response("Code: 81. DB::Exception: Database x does not exist").into(), "ClickHouseError", false),
            (ClickHouseError::Tls { url: url(), message: "UnknownIssuer".into() }.into(), "ClickHouseTLSFailed", false),
            (ClickHouseError::Settings("a CA for an http:// URL".into()).into(), "ClickHouseTLSFailed", false),
            (ClickHouseError::Exists { table: "air.scl".into() }.into(), "ClickHouseError", false),
            // The credentials' Secret: missing, or an API error reading it.
            (Error::Credentials("Secret ch-user not found".into()), "ClickHouseError", false),
            (
                Error::Kube(kube::Error::Api(
                    kube::core::Status::failure("secrets is forbidden", "Forbidden").with_code(403).boxed(),
                )),
                "ClickHouseError",
                false,
            ),
            // The API server failing or throttling while the Secret is read: retried (ClickHouse is
            // not said to be down).
            (
                Error::Kube(kube::Error::Api(
                    kube::core::Status::failure("etcdserver: request timed out", "InternalError")
                        .with_code(500)
                        .boxed(),
                )),
                "ClickHouseError",
                true,
            ),
            (
                Error::Kube(kube::Error::Api(
                    kube::core::Status::failure("too many requests", "TooManyRequests").with_code(429).boxed(),
                )),
                "ClickHouseError",
                true,
            ),
            (Error::Kube(kube::Error::Service("connection reset".into())), "ClickHouseError", true),
        ];
        for (error, why, transient) in cases {
            let outcome = clickhouse(&error);
            assert_eq!(outcome.finding.type_, ConditionType::ClickHouseReady, "{error}");
            assert!(!outcome.finding.ok, "{error}");
            assert_eq!((outcome.finding.reason, outcome.transient), (why, transient), "{error}");
            assert_eq!(outcome.finding.message, error.to_string());
        }
    }
}
