//! `flightline-ingest serve`: `POST /v1/flights` (JSON or CSV) → validated records → Kafka.
//! The answer (202) comes only after the broker has acknowledged every accepted record
//! (idempotent producer, acks=all); a full producer queue or a broker that does not answer in
//! time gets 503 with Retry-After.
//!
//! Memory per request: the body (at most `INGEST_MAX_BODY_BYTES`) plus a window of records in
//! flight. The body is read twice, as a stream: once to validate every record and count (stopping
//! at `INGEST_MAX_RECORDS`, 413), then again to publish the accepted records as they are read,
//! at most `IN_FLIGHT` unacknowledged at a time. No list of all records is ever built.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use flightline_service::auth::Auth;
use flightline_service::config;
use flightline_service::connect::KafkaSecurity;
use flightline_service::flight::{
    BodyError, DEFAULT_MAX_RECORDS, Flight, Format, MAX_FIELD_BYTES, RecordErrors, Summary, read_flights,
};
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio::sync::mpsc;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Records sent and not yet acknowledged, per request: bounds what librdkafka holds for it.
const IN_FLIGHT: usize = 4_096;

#[derive(Clone)]
struct AppState {
    /// Replaced after a failed batch: see `publish`.
    producer: Arc<RwLock<FutureProducer>>,
    bootstrap: Arc<str>,
    topic: Arc<str>,
    max_records: usize,
    accepted: Counter,
    rejected: Counter,
    produce_errors: Counter,
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    rejected: usize,
    errors: Vec<RecordErrors>,
}

/// librdkafka settings the producer and the sink's consumer share: the brokers, and TLS and SASL
/// as the environment says (`flightline_service::connect`; plaintext when nothing is set).
pub fn client_config(bootstrap: &str) -> anyhow::Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in KafkaSecurity::from_env()?.rdkafka_settings() {
        config.set(key, value);
    }
    Ok(config)
}

pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(client_config(bootstrap)?
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        .set("queue.buffering.max.messages", "500000")
        // What all requests together may queue (librdkafka's default is 1 GiB): past it, 503.
        .set("queue.buffering.max.kbytes", "65536")
        .create()?)
}

pub async fn serve() -> anyhow::Result<()> {
    let telemetry = Telemetry::new("ingest");
    let bootstrap = config::required("KAFKA_BOOTSTRAP_SERVERS")?;
    let topic: Arc<str> = config::required("KAFKA_TOPIC")?.into();
    let max_body: usize = config::parsed("INGEST_MAX_BODY_BYTES", 16 * 1024 * 1024)?;
    let max_records: usize = config::parsed("INGEST_MAX_RECORDS", DEFAULT_MAX_RECORDS)?.max(1);
    let state = AppState {
        producer: Arc::new(RwLock::new(producer(&bootstrap)?)),
        bootstrap: bootstrap.clone().into(),
        topic: topic.clone(),
        max_records,
        accepted: Counter::default(),
        rejected: Counter::default(),
        produce_errors: Counter::default(),
    };
    telemetry.register("records_accepted", "Records validated and acknowledged by Kafka", state.accepted.clone());
    telemetry.register("records_rejected", "Records that failed validation", state.rejected.clone());
    telemetry.register(
        "produce_errors",
        "Records Kafka did not take (queue full, timeout, broker error)",
        state.produce_errors.clone(),
    );

    let ready: ReadyCheck = {
        let shared = state.producer.clone();
        Arc::new(move || {
            let producer = shared.read().expect("producer lock").clone();
            let topic = topic.clone();
            Box::pin(async move {
                tokio::task::spawn_blocking(move || {
                    producer
                        .client()
                        .fetch_metadata(Some(&topic), Duration::from_secs(2))
                        .map(|_| ())
                        .map_err(|e| format!("Kafka: {e}"))
                })
                .await
                .map_err(|e| e.to_string())?
            })
        })
    };
    let routes = Router::new()
        .route("/v1/flights", post(ingest))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state.clone());
    let limits = config::HttpLimits::from_env(config::HttpLimits::INGEST)?;
    let app = server::app(routes, telemetry, ready, Auth::from_env()?, limits);
    let result = server::serve(config::listen_addr()?, app).await;
    // Whatever is still queued gets its chance before we exit.
    let producer = state.producer.read().expect("producer lock").clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    result
}

async fn ingest(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let body = body.map_err(server::body_error)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if content_type.starts_with("text/csv") {
        Format::Csv
    } else if content_type.starts_with("application/json") {
        Format::Json
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json (a flight or an array) or text/csv (the data set's format)",
        ));
    };

    // Parsing a large body takes a while: off the async workers, and stopped with the request.
    let summary = {
        let (body, max_records) = (body.clone(), state.max_records);
        blocking_until_dropped(move |cancelled| Summary::of_until(&body, format, max_records, cancelled))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
            .map_err(|e| body_refused(e, state.max_records))?
    };
    state.rejected.inc_by(summary.rejected as u64);
    if summary.accepted == 0 {
        let message = match summary.rejected {
            0 => "no records in the body".to_string(),
            n => format!("all {n} records are invalid (fields are at most {MAX_FIELD_BYTES} bytes)"),
        };
        return Err(ApiError::bad_field("body", message)
            .with_details(serde_json::to_value(&summary.errors).unwrap_or_default()));
    }

    publish(&state, body, format, summary.accepted).await?;
    state.accepted.inc_by(summary.accepted as u64);
    let Summary { accepted, rejected, errors } = summary;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted, rejected, errors })))
}

/// Set when dropped: the request that owns it ended (answered, timed out or the client left).
struct CancelOnDrop(Arc<AtomicBool>);

impl CancelOnDrop {
    fn new() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Runs `work` on the blocking pool with a flag that is set when this future is dropped. A
/// request that times out or whose client leaves releases its concurrency slot at once: its
/// body must not be parsed on (and held) behind the limit's back, so `work` checks the flag per
/// record and stops.
async fn blocking_until_dropped<T: Send + 'static>(
    work: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    let guard = CancelOnDrop::new();
    let cancelled = guard.flag();
    let result = tokio::task::spawn_blocking(move || work(&cancelled)).await;
    drop(guard);
    result
}

fn body_refused(error: BodyError, max_records: usize) -> ApiError {
    match error {
        BodyError::Unreadable(why) => ApiError::bad_field("body", why),
        BodyError::TooManyRecords { .. } => ApiError {
            field: Some("body".into()),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_many_records",
                format!("body: more than {max_records} records (INGEST_MAX_RECORDS); send them in several requests"),
            )
        },
    }
}

/// Reads the body again and publishes its valid records as they come, waiting for every
/// acknowledgement. After a batch Kafka did not fully acknowledge, the producer is replaced by a
/// fresh one: librdkafka turns an idempotence violation it cannot repair (a broker that lost the
/// producer's state, an out-of-order sequence) into a fatal error that leaves the instance unusable,
/// so a new producer id is the only way on instead of failing every later batch.
async fn publish(state: &AppState, body: Bytes, format: Format, accepted: usize) -> Result<(), ApiError> {
    let producer = state.producer.read().expect("producer lock").clone();
    let (flights, mut incoming) = mpsc::channel::<Flight>(1_024);
    let max_records = state.max_records;
    // Ends early when the receiver is gone (a failed send) or the request is (this future dropped).
    let request = CancelOnDrop::new();
    let cancelled = request.flag();
    let reader = tokio::task::spawn_blocking(move || {
        read_flights(&body, format, max_records, &mut |outcome| match outcome {
            _ if cancelled.load(Ordering::Relaxed) => ControlFlow::Break(()),
            Ok(flight) => match flights.blocking_send(flight) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            },
            Err(_) => ControlFlow::Continue(()),
        })
    });
    let result = send_all(state, &producer, &mut incoming, accepted).await;
    drop(incoming);
    let _ = reader.await;
    drop(request);
    if result.is_err() {
        match self::producer(&state.bootstrap) {
            Ok(fresh) => {
                tracing::warn!("replacing the Kafka producer after a failed batch");
                *state.producer.write().expect("producer lock") = fresh;
            }
            Err(e) => tracing::error!(error = %e, "could not create a new Kafka producer"),
        }
    }
    result
}

async fn send_all(
    state: &AppState,
    producer: &FutureProducer,
    flights: &mut mpsc::Receiver<Flight>,
    accepted: usize,
) -> Result<(), ApiError> {
    let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
    let mut acknowledged = 0;
    while let Some(flight) = flights.recv().await {
        if in_flight.len() >= IN_FLIGHT {
            acknowledge(state, in_flight.pop_front(), &mut acknowledged, accepted).await?;
        }
        let payload = serde_json::to_vec(&flight).expect("a flight serializes");
        let key = flight.key();
        let record = FutureRecord::to(&state.topic).key(&key).payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => in_flight.push_back(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                state.produce_errors.inc();
                return Err(unavailable("the Kafka producer queue is full"));
            }
            Err((e, _)) => {
                state.produce_errors.inc();
                return Err(unavailable(&format!("Kafka refused the record: {e}")));
            }
        }
    }
    while !in_flight.is_empty() {
        acknowledge(state, in_flight.pop_front(), &mut acknowledged, accepted).await?;
    }
    Ok(())
}

/// Waits for one record's acknowledgement.
async fn acknowledge(
    state: &AppState,
    delivery: Option<DeliveryFuture>,
    acknowledged: &mut usize,
    accepted: usize,
) -> Result<(), ApiError> {
    let Some(delivery) = delivery else { return Ok(()) };
    let error = match delivery.await {
        Ok(Ok(_)) => {
            *acknowledged += 1;
            return Ok(());
        }
        Ok(Err((e, _))) => e.to_string(),
        Err(_) => "delivery cancelled".to_string(),
    };
    state.produce_errors.inc();
    tracing::warn!(acknowledged = *acknowledged, accepted, %error, "a record was not acknowledged by Kafka");
    Err(unavailable(&format!(
        "Kafka did not acknowledge a record ({error}); {} of {accepted} records were acknowledged: send them again",
        *acknowledged
    )))
}

fn unavailable(message: &str) -> ApiError {
    ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable", message) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_stops_when_its_request_is_dropped() {
        let (stopped, was_stopped) = std::sync::mpsc::channel();
        let work = blocking_until_dropped(move |cancelled| {
            let started = std::time::Instant::now();
            while !cancelled.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = stopped.send(started.elapsed());
        });
        // The request times out (or its client leaves): its future is dropped.
        assert!(tokio::time::timeout(Duration::from_millis(50), work).await.is_err());
        let ran = was_stopped.recv_timeout(Duration::from_secs(10)).expect("the work stopped");
        assert!(ran < Duration::from_secs(5), "ran {ran:?} after its request ended");
        // Not dropped: it runs to the end.
        assert!(!blocking_until_dropped(|cancelled| cancelled.load(Ordering::Relaxed)).await.unwrap());
    }

    #[test]
    fn a_body_over_the_record_limit_is_413_and_an_unreadable_one_400_both_naming_the_body() {
        let too_many = body_refused(BodyError::TooManyRecords { limit: 10 }, 10);
        assert_eq!((too_many.status, too_many.error), (StatusCode::PAYLOAD_TOO_LARGE, "too_many_records"));
        assert!(too_many.message.contains("more than 10 records"));
        let unreadable = body_refused(BodyError::Unreadable("invalid JSON: x".into()), 10);
        assert_eq!(unreadable.status, StatusCode::BAD_REQUEST);
        for e in [too_many, unreadable] {
            assert_eq!(e.field.as_deref(), Some("body"));
        }
    }
}
