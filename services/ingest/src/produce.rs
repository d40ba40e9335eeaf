//! `flightline-ingest serve`: `POST /v1/flights` (JSON or CSV) → validated records → Kafka.
//! The answer (202) comes only after the broker has acknowledged every accepted record
//! (idempotent producer, acks=all); a full producer queue or a broker that does not answer in
//! time gets 503 with Retry-After.
//!
//! Exactly once from the client's side: every record is keyed by its identity (`record_id`, a hash
//! of the record or of the scheduled flight, `FLIGHTLINE_IDENTITY`) and carries a `version` (when
//! this pod received it), so the table keeps one row per identity, the newest version. A 503 thus
//! means "send the whole request again": records of it that did arrive are not stored twice.
//! `PUT /v1/flights` takes the same bodies and, with `ScheduledFlight` identity, replaces flights
//! (POST does the same there); with `Record` identity nothing can be replaced, and PUT is 405.
//!
//! Memory per request: the body (at most `INGEST_MAX_BODY_BYTES`) plus a window of records in
//! flight. The body is read twice, as a stream: once to validate every record and count (stopping
//! at `INGEST_MAX_RECORDS`, 413), then again to publish the accepted records as they are read,
//! at most `IN_FLIGHT` unacknowledged at a time. No list of all records is ever built.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flightline_service::auth::Auth;
use flightline_service::config;
use flightline_service::connect::KafkaSecurity;
use flightline_service::flight::{
    BodyError, Flight, Format, Identity, MAX_FIELD_BYTES, RecordErrors, Summary, read_flights,
};
use flightline_service::openapi::FlightRecords;
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};
use prometheus_client::metrics::counter::Counter;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Records sent and not yet acknowledged, per request: bounds what librdkafka holds for it.
const IN_FLIGHT: usize = 4_096;

#[derive(Clone)]
struct AppState {
    /// Replaced after a failed batch: see `publish`.
    producer: Arc<RwLock<FutureProducer>>,
    bootstrap: Arc<str>,
    topic: Arc<str>,
    identity: Identity,
    /// The last `version` handed out: versions only grow, even if the clock steps back.
    last_version: Arc<AtomicU64>,
    max_records: usize,
    accepted: Counter,
    rejected: Counter,
    produce_errors: Counter,
}

#[derive(Serialize, ToSchema)]
struct Accepted {
    /// Records stored (acknowledged by Kafka).
    accepted: usize,
    /// Records refused for what they hold.
    rejected: usize,
    /// The errors of the first 100 refused records.
    errors: Vec<RecordErrors>,
    /// The `record_id` of each accepted record, in body order (`GET /v1/flights/{id}` on query).
    ids: Vec<String>,
}

/// Kafka record headers the sink reads: the version orders records of one identity (newest wins).
pub const VERSION_HEADER: &str = "flightline-version";
pub const RECORD_ID_HEADER: &str = "flightline-record-id";

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

pub async fn serve(config: config::IngestConfig) -> anyhow::Result<()> {
    let telemetry = Telemetry::new("ingest");
    let bootstrap = config.kafka.bootstrap_servers.clone();
    let topic: Arc<str> = config.kafka.topic.clone().into();
    let max_body = usize::try_from(config.ingest.max_body_bytes)?;
    let max_records = usize::try_from(config.ingest.max_records)?;
    let limits = config.http.limits(config::HttpLimits::INGEST)?;
    let auth = Auth::from_args(&config.auth)?;
    // TLS and SASL are read again by each client (`client_config`); checked here, before anything starts.
    KafkaSecurity::from_args(&config.kafka_security)?;
    let state = AppState {
        producer: Arc::new(RwLock::new(producer(&bootstrap)?)),
        bootstrap: bootstrap.clone().into(),
        topic: topic.clone(),
        identity: config.records.identity(),
        last_version: Arc::new(AtomicU64::new(0)),
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

    let ready = kafka_ready(state.producer.clone(), topic);
    let routes = routes(state.clone(), max_body);
    let app = server::app(routes, telemetry, ready, auth, limits);
    let result = server::serve(config.server.listen_addr, app).await;
    // Whatever is still queued gets its chance before we exit.
    let producer = state.producer.read().expect("producer lock").clone();
    let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(10))).await;
    result
}

/// Ready while the broker answers a metadata request for the topic; else why not. The request's
/// 1 s stays inside the shared readiness budget (1.5 s, `server::READY_CHECK_TIMEOUT`): with 2 s a
/// broker that is down was reported as "the readiness check did not answer", not Kafka's reason.
fn kafka_ready(shared: Arc<RwLock<FutureProducer>>, topic: Arc<str>) -> ReadyCheck {
    Arc::new(move || {
        let producer = shared.read().expect("producer lock").clone();
        let topic = topic.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(1))
                    .map(|_| ())
                    .map_err(|e| format!("Kafka: {e}"))
            })
            .await
            .map_err(|e| e.to_string())?
        })
    })
}

#[derive(OpenApi)]
#[openapi(
    info(description = "Flight records into the pipeline: JSON (one flight or an array, the data set's column \
        names) or the data set's CSV, validated record by record, stored exactly once per identity."),
    tags((name = "ingest", description = "Flight records"), (name = "operations", description = "Health, metrics, this document"))
)]
struct ApiDoc;

/// The service's routes, each with its OpenAPI description (`utoipa_axum::routes!`).
fn routes(state: AppState, max_body: usize) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ingest, replace))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// `PUT /v1/flights`: the same bodies as POST; stored flights with the same identity are replaced.
#[utoipa::path(
    put,
    path = "/v1/flights",
    tag = "ingest",
    request_body(content((FlightRecords = "application/json"), (String = "text/csv"))),
    responses(
        (status = 202, description = "Every valid record is stored, replacing the flight with the same identity \
         (`spec.identity: ScheduledFlight`); the others are counted and listed.", body = Accepted),
        (status = 400, description = "`invalid_request`: no valid record (`field` is `body`, `details` lists the \
         errors of the first 100 records), or the body is not the JSON or CSV expected; `invalid_body`: the body \
         could not be read.", body = ApiError),
        (status = 405, description = "`updates_not_enabled`: the pipeline identifies a flight by its whole record \
         (`spec.identity: Record`), so there is nothing to replace; with `Allow: POST`.", body = ApiError),
        (status = 413, description = "`body_too_large`: larger than `maxBodyBytes`; `too_many_records`: more than \
         `maxRecords`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: neither `application/json` nor `text/csv`.",
         body = ApiError),
        (status = 500, description = "`internal`: validating the body failed inside the service.", body = ApiError),
        (status = 503, description = "`kafka_unavailable`: Kafka did not take or acknowledge every record: send \
         the whole request again (records that did arrive are not stored twice).", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn replace(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), Response> {
    if state.identity == Identity::Record {
        let refusal = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "updates_not_enabled",
            "this pipeline identifies a flight by its whole record, so there is nothing to replace: POST new records, \
             or create a pipeline with spec.identity: ScheduledFlight",
        );
        return Err(([(header::ALLOW, "POST")], refusal).into_response());
    }
    ingest(State(state), headers, body).await.map_err(IntoResponse::into_response)
}

/// `POST /v1/flights`: stores flights, each exactly once per identity; 202 once Kafka has
/// acknowledged every valid record.
#[utoipa::path(
    post,
    path = "/v1/flights",
    tag = "ingest",
    request_body(content((FlightRecords = "application/json"), (String = "text/csv"))),
    responses(
        (status = 202, description = "Every valid record is stored (a record sent again is stored once); the \
         others are counted and the first 100 listed with their errors.", body = Accepted),
        (status = 400, description = "`invalid_request`: no valid record (`field` is `body`, `details` lists the \
         errors of the first 100 records), or the body is not the JSON or CSV expected; `invalid_body`: the body \
         could not be read.", body = ApiError),
        (status = 413, description = "`body_too_large`: larger than `maxBodyBytes`; `too_many_records`: more than \
         `maxRecords`.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: neither `application/json` nor `text/csv`.",
         body = ApiError),
        (status = 500, description = "`internal`: validating the body failed inside the service.", body = ApiError),
        (status = 503, description = "`kafka_unavailable`: Kafka did not take or acknowledge every record: send \
         the whole request again (records that did arrive are not stored twice).", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
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

    let first_version = reserve_versions(&state.last_version, now_nanos(), summary.accepted as u64);
    let ids = publish(&state, body, format, summary.accepted, first_version).await?;
    state.accepted.inc_by(summary.accepted as u64);
    let Summary { accepted, rejected, errors } = summary;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted, rejected, errors, ids })))
}

fn now_nanos() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX)
}

/// Reserves `count` consecutive versions from `now` on, after every version handed out before:
/// the records of one request are ordered by their place in the body (a later record of the same
/// flight wins), and a later request's records by arrival, even across a clock step back.
fn reserve_versions(last: &AtomicU64, now: u64, count: u64) -> u64 {
    let mut first = 0;
    last.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |previous| {
        first = now.max(previous.saturating_add(1));
        Some(first.saturating_add(count.saturating_sub(1)))
    })
    .expect("the update always returns Some");
    first
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
async fn publish(
    state: &AppState,
    body: Bytes,
    format: Format,
    accepted: usize,
    first_version: u64,
) -> Result<Vec<String>, ApiError> {
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
    let result = send_all(state, &producer, &mut incoming, accepted, first_version).await;
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
    first_version: u64,
) -> Result<Vec<String>, ApiError> {
    let mut in_flight = VecDeque::with_capacity(IN_FLIGHT);
    let mut acknowledged = 0;
    let mut ids = Vec::with_capacity(accepted);
    while let Some(flight) = flights.recv().await {
        if in_flight.len() >= IN_FLIGHT {
            acknowledge(state, in_flight.pop_front(), &mut acknowledged, accepted).await?;
        }
        let payload = serde_json::to_vec(&flight).expect("a flight serializes");
        // The id is the key: every version of one identity lands in one partition, in order.
        let id = flight.record_id(state.identity);
        let version = (first_version + ids.len() as u64).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header { key: VERSION_HEADER, value: Some(&version) })
            .insert(Header { key: RECORD_ID_HEADER, value: Some(&id) });
        let record = FutureRecord::to(&state.topic).key(&id).payload(&payload).headers(headers);
        ids.push(id.clone());
        let sent = producer.send_result(record);
        match sent {
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
    Ok(ids)
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
        "Kafka did not acknowledge a record ({error}); send the whole request again: records are identified by \
         their content, so the {} of {accepted} already acknowledged are stored once",
        *acknowledged
    )))
}

fn unavailable(message: &str) -> ApiError {
    ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "kafka_unavailable", message) }
}

#[cfg(test)]
#[path = "produce_tests.rs"]
mod router_tests;

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
    fn versions_grow_within_a_request_and_across_requests_even_if_the_clock_steps_back() {
        let last = AtomicU64::new(0);
        assert_eq!(reserve_versions(&last, 1_000, 3), 1_000); // 1000, 1001, 1002
        assert_eq!(reserve_versions(&last, 1_001, 2), 1_003); // the clock is behind what was handed out
        assert_eq!(reserve_versions(&last, 500, 1), 1_005); // the clock stepped back
        assert_eq!(reserve_versions(&last, 9_000, 1), 9_000);
        assert_eq!(last.load(Ordering::Relaxed), 9_000);
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

    /// The whole app as `serve` builds it (the producer connects only when it sends), auth on or off.
    fn app(keys: bool) -> axum::Router {
        use flightline_service::auth::{ApiKeys, hash_key};
        let state = AppState {
            producer: Arc::new(RwLock::new(producer("127.0.0.1:9").unwrap())),
            bootstrap: "127.0.0.1:9".into(),
            topic: "t".into(),
            identity: Identity::Record,
            last_version: Arc::new(AtomicU64::new(0)),
            max_records: 10,
            accepted: Counter::default(),
            rejected: Counter::default(),
            produce_errors: Counter::default(),
        };
        let auth = keys.then(|| Arc::new(Auth { keys: Some(ApiKeys::parse(&hash_key("k")).unwrap()), jwt: None }));
        let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        let telemetry = Telemetry::new("ingest");
        server::app(routes(state, 1 << 20), telemetry, ready, auth, config::HttpLimits::INGEST)
    }

    async fn document(app: axum::Router) -> serde_json::Value {
        use tower::ServiceExt;
        let request = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "/openapi.json needs no credential");
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_document_is_openapi_3_1_and_describes_the_bodies_and_answers() {
        use serde_json::json;
        let doc = document(app(true)).await;
        assert_eq!(flightline_service::openapi::check::problems(&doc), Vec::<String>::new());
        let parsed = oas3::from_json(doc.to_string()).expect("an OpenAPI 3.1 document (oas3)");
        assert_eq!(parsed.validate_version().unwrap().to_string(), "3.1.0");
        assert_eq!(doc["info"]["title"], "flightline-ingest");
        for (method, own) in [("post", &["202", "400", "413", "415", "500", "503"][..]), ("put", &["405"][..])] {
            let op = &doc["paths"]["/v1/flights"][method];
            let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
            for status in own.iter().chain(&["401", "403", "408", "429"]) {
                assert!(statuses.iter().any(|s| s == status), "{method}: {status} not in {statuses:?}");
            }
            let content = &op["requestBody"]["content"];
            assert_eq!(content["application/json"]["schema"]["$ref"], "#/components/schemas/FlightRecords");
            assert_eq!(content["text/csv"]["schema"]["type"], "string");
            assert_eq!(op["responses"]["503"]["headers"]["Retry-After"]["required"], true);
            assert_eq!(op["security"], json!([{"apiKey": []}, {"bearer": []}]));
        }
        let record = &doc["components"]["schemas"]["FlightRecord"];
        let columns: std::collections::BTreeSet<&str> =
            record["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(columns, flightline_service::flight::COLUMNS.into_iter().collect());
        assert_eq!(record["required"], json!(flightline_service::flight::REQUIRED));
        assert_eq!(record["additionalProperties"], false);
        assert_eq!(record["properties"]["TIPOVUELO"]["enum"], json!(["I", "N"]));
        let accepted = &doc["components"]["schemas"]["Accepted"];
        assert_eq!(accepted["required"], json!(["accepted", "rejected", "errors", "ids"]));
        assert_eq!(accepted["properties"]["errors"]["items"]["$ref"], "#/components/schemas/RecordErrors");
    }

    #[tokio::test]
    async fn every_route_is_in_the_document_and_every_error_code_in_the_schema() {
        let doc = document(app(false)).await;
        let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        let undocumented = flightline_service::openapi::check::undocumented_routes(app(false), &doc, &[src]).await;
        assert_eq!(undocumented, Vec::<String>::new());
        assert_eq!(flightline_service::openapi::check::undocumented_error_codes(&[src]), Vec::<String>::new());
    }
}
