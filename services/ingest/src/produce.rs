//! `flightline-ingest serve`: `POST /v1/flights` (JSON or CSV) → validated records → Kafka.
//! The answer (202) comes only after the broker has acknowledged every accepted record
//! (idempotent producer, acks=all); a full producer queue or a broker that does not answer in
//! time gets 503 with Retry-After.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use flightline_service::auth::Auth;
use flightline_service::config;
use flightline_service::flight::{FieldError, Flight, read_csv, read_json};
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};
use futures::future::join_all;
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;

/// Errors listed in a response, at most (the counts are always complete).
const MAX_LISTED_ERRORS: usize = 100;
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct AppState {
    /// Replaced after a failed batch: see `publish`.
    producer: Arc<RwLock<FutureProducer>>,
    bootstrap: Arc<str>,
    topic: Arc<str>,
    accepted: Counter,
    rejected: Counter,
    produce_errors: Counter,
}

#[derive(Serialize)]
struct RecordErrors {
    record: usize,
    errors: Vec<FieldError>,
}

#[derive(Serialize)]
struct Accepted {
    accepted: usize,
    rejected: usize,
    errors: Vec<RecordErrors>,
}

pub fn producer(bootstrap: &str) -> anyhow::Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", DELIVERY_TIMEOUT.as_millis().to_string())
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

pub async fn serve() -> anyhow::Result<()> {
    let telemetry = Telemetry::new("ingest");
    let bootstrap = config::required("KAFKA_BOOTSTRAP_SERVERS")?;
    let topic: Arc<str> = config::required("KAFKA_TOPIC")?.into();
    let max_body: usize = config::parsed("INGEST_MAX_BODY_BYTES", 16 * 1024 * 1024)?;
    let state = AppState {
        producer: Arc::new(RwLock::new(producer(&bootstrap)?)),
        bootstrap: bootstrap.clone().into(),
        topic: topic.clone(),
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
    let raw = if content_type.starts_with("text/csv") {
        read_csv(&body)
    } else if content_type.starts_with("application/json") {
        read_json(&body)
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json (a flight or an array) or text/csv (the data set's format)",
        ));
    }
    .map_err(|why| ApiError::bad_field("body", why))?;

    let mut flights = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    let mut rejected = 0;
    for (record, r) in raw.iter().enumerate() {
        match Flight::parse(r) {
            Ok(flight) => flights.push(flight),
            Err(e) => {
                rejected += 1;
                if errors.len() < MAX_LISTED_ERRORS {
                    errors.push(RecordErrors { record, errors: e });
                }
            }
        }
    }
    state.rejected.inc_by(rejected as u64);
    if flights.is_empty() {
        let message = if raw.is_empty() {
            "no records in the body".to_string()
        } else {
            format!("all {rejected} records are invalid")
        };
        return Err(
            ApiError::bad_field("body", message).with_details(serde_json::to_value(&errors).unwrap_or_default())
        );
    }

    publish(&state, &flights).await?;
    state.accepted.inc_by(flights.len() as u64);
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted: flights.len(), rejected, errors })))
}

/// Sends every flight and waits for every acknowledgement. After a batch Kafka did not fully
/// acknowledge, the producer is replaced by a fresh one: a broker that lost or cannot resume the
/// idempotent producer's session (Tansu after a restart) then gets a new producer id instead of
/// failing every later batch.
async fn publish(state: &AppState, flights: &[Flight]) -> Result<(), ApiError> {
    let producer = state.producer.read().expect("producer lock").clone();
    let result = send_all(state, &producer, flights).await;
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

async fn send_all(state: &AppState, producer: &FutureProducer, flights: &[Flight]) -> Result<(), ApiError> {
    let mut deliveries = Vec::with_capacity(flights.len());
    for flight in flights {
        let payload = serde_json::to_vec(flight).expect("a flight serializes");
        let key = flight.key();
        let record = FutureRecord::to(&state.topic).key(&key).payload(&payload);
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
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
    let mut failed = 0;
    let mut first_error = None;
    for outcome in join_all(deliveries).await {
        match outcome {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
            Err(_) => {
                failed += 1;
                first_error.get_or_insert("delivery cancelled".into());
            }
        }
    }
    if failed > 0 {
        state.produce_errors.inc_by(failed);
        tracing::warn!(failed, error = ?first_error, "records not acknowledged by Kafka");
        return Err(unavailable(&format!(
            "Kafka did not acknowledge {failed} of {} records ({}); send them again",
            flights.len(),
            first_error.unwrap_or_default()
        )));
    }
    Ok(())
}

fn unavailable(message: &str) -> ApiError {
    ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable", message) }
}
