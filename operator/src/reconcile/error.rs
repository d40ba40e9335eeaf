//! Why a reconcile failed, and when it is tried again.

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::runtime::controller::Action;

use super::Context;
use super::clickhouse::ClickHouseError;
use super::kafka::KafkaError;
use crate::crd::FlightPipeline;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    ClickHouse(#[from] ClickHouseError),
    #[error("ClickHouse credentials: {0}")]
    Credentials(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
}

impl Error {
    /// Low-cardinality label for the errors metric.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::Kafka(e) if e.is_transient() => "kafka_unavailable",
            Error::Kafka(_) => "kafka",
            Error::ClickHouse(e) if e.is_transient() => "clickhouse_unavailable",
            Error::ClickHouse(_) => "clickhouse",
            Error::Credentials(_) => "credentials",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.reason()
                }
                _ => "finalizer",
            },
        }
    }
}

/// Retries failed reconciles with exponential backoff (1 s doubling to 5 min) and ±50 % jitter,
/// so a broker outage does not turn into a retry storm across many pipelines.
pub fn error_policy(fp: Arc<FlightPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", fp.namespace().unwrap_or_default(), fp.name_any());
    let attempt = {
        let mut failures = ctx.failures.lock().expect("failures lock");
        let n = failures.entry(key.clone()).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempt, rand::random::<f64>());
    tracing::warn!(pipeline = %key, error = %error, attempt, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

/// `base · 2^(attempt-1)` capped at 5 minutes, scaled by a jitter factor in [0.5, 1.5).
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = Duration::from_secs(1).saturating_mul(1 << attempt.saturating_sub(1).min(9));
    base.min(Duration::from_secs(300)).mul_f64(0.5 + jitter)
}

#[cfg(test)]
mod tests {
    use super::backoff;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff(1, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(4, 0.5), Duration::from_secs(8));
        assert_eq!(backoff(30, 0.5), Duration::from_secs(300));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(500));
        assert!(backoff(30, 0.999) < Duration::from_secs(450));
    }
}
