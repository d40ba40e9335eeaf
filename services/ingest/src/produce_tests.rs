//! Ingest's router as `serve` builds it, through `tower::ServiceExt::oneshot`, with a producer
//! for a broker nobody runs (librdkafka connects only in the background): every answer that comes
//! before a record reaches Kafka. Readiness, the JSON 404, 405 with `Allow`, credentials, body
//! limits and what a body may hold, each with its named error code.

use axum::body::Body;
use axum::http::Request;
use axum::response::Response;
use flightline_service::auth::{ApiKeys, hash_key};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;

const MAX_BODY: usize = 64 * 1024;
const MAX_RECORDS: usize = 10;
const KEY: &str = "an-ingest-key";

fn state(identity: Identity) -> AppState {
    AppState {
        producer: Arc::new(RwLock::new(producer("127.0.0.1:9").unwrap())),
        bootstrap: "127.0.0.1:9".into(),
        topic: "air.scl.flights".into(),
        identity,
        last_version: Arc::new(AtomicU64::new(0)),
        max_records: MAX_RECORDS,
        accepted: Counter::default(),
        rejected: Counter::default(),
        produce_errors: Counter::default(),
    }
}

/// The app of `serve`: ingest's routes behind the shared middleware, no rate limit.
fn app(identity: Identity, keys: bool, ready: Result<(), &'static str>) -> axum::Router {
    let ready: ReadyCheck = Arc::new(move || Box::pin(async move { ready.map_err(String::from) }));
    app_with(state(identity), keys, ready)
}

fn app_with(state: AppState, keys: bool, ready: ReadyCheck) -> axum::Router {
    let auth = keys.then(|| Arc::new(Auth { keys: Some(ApiKeys::parse(&hash_key(KEY)).unwrap()), jwt: None }));
    let limits = config::HttpLimits { requests_per_second: 0, ..config::HttpLimits::INGEST };
    server::app(routes(state, MAX_BODY), Telemetry::new("ingest_test"), ready, auth, limits)
}

fn post(content_type: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/flights").header(header::CONTENT_TYPE, content_type).body(body.into()).unwrap()
}

async fn answer(app: &axum::Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response: Response = app.clone().oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, headers, body)
}

/// Ingest's own readiness check (as `serve` builds it), against a broker nobody runs: a metadata
/// request for the topic fails within its 2 s, and /readyz says so.
#[tokio::test]
async fn readiness_says_why_kafka_is_not_ready() {
    let state = state(Identity::Record);
    let ready = kafka_ready(state.producer.clone(), state.topic.clone());
    let app = app_with(state, true, ready);
    let started = std::time::Instant::now();
    let (status, _, body) = answer(&app, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.as_str().unwrap().starts_with("Kafka: "), "{body}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    let (status, _, body) = answer(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body), (StatusCode::OK, json!("ok")));
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405_naming_what_is_allowed() {
    let app = app(Identity::Record, false, Ok(()));
    let (status, _, body) = answer(&app, Request::get("/v1/flight").body(Body::empty()).unwrap()).await;
    assert_eq!((status, &body["error"]), (StatusCode::NOT_FOUND, &json!("not_found")));
    let (status, headers, body) = answer(&app, Request::get("/v1/flights").body(Body::empty()).unwrap()).await;
    assert_eq!((status, &body["error"]), (StatusCode::METHOD_NOT_ALLOWED, &json!("method_not_allowed")));
    assert_eq!(headers[header::ALLOW], "POST,PUT");
    // PUT replaces flights only under ScheduledFlight identity: under Record it is ingest's own 405.
    let put = Request::put("/v1/flights").header(header::CONTENT_TYPE, "application/json").body(Body::from("[]"));
    let (status, headers, body) = answer(&app, put.unwrap()).await;
    assert_eq!((status, &body["error"]), (StatusCode::METHOD_NOT_ALLOWED, &json!("updates_not_enabled")));
    assert_eq!(headers[header::ALLOW], "POST");
    let scheduled = self::app(Identity::ScheduledFlight, false, Ok(()));
    let put = Request::put("/v1/flights").header(header::CONTENT_TYPE, "application/json").body(Body::from("[]"));
    let (status, _, body) = answer(&scheduled, put.unwrap()).await;
    assert_eq!((status, &body["field"]), (StatusCode::BAD_REQUEST, &json!("body")), "taken, and the body checked");
}

#[tokio::test]
async fn posting_needs_a_known_key() {
    let app = app(Identity::Record, true, Ok(()));
    let (status, headers, body) = answer(&app, post("application/json", "[]")).await;
    assert_eq!((status, &body["error"]), (StatusCode::UNAUTHORIZED, &json!("unauthenticated")));
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let mut wrong = post("application/json", "[]");
    wrong.headers_mut().insert("x-api-key", "another-key".parse().unwrap());
    let (status, _, body) = answer(&app, wrong).await;
    assert_eq!((status, &body["error"]), (StatusCode::FORBIDDEN, &json!("forbidden")));
    let mut known = post("application/json", "[]");
    known.headers_mut().insert(header::AUTHORIZATION, format!("Bearer {KEY}").parse().unwrap());
    let (status, _, body) = answer(&app, known).await;
    assert_eq!((status, &body["message"]), (StatusCode::BAD_REQUEST, &json!("body: no records in the body")));
}

#[tokio::test]
async fn bodies_are_refused_with_a_named_code_before_anything_reaches_kafka() {
    let app = app(Identity::Record, false, Ok(()));
    let flights = |n: usize| Value::Array(vec![json!({}); n]).to_string();
    for (content_type, body, status, error, field) in [
        ("text/plain", "[]".to_string(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
        ("application/json", "".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("body")),
        ("application/json", "[{\"Fecha-I\": ".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("body")),
        ("application/json", "{\"a\": 1} trailing".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("body")),
        ("application/json", "\"a string\"".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("body")),
        ("text/csv", "Fecha-I,Vlo-I\n".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("body")),
        ("application/json", flights(MAX_RECORDS + 1), StatusCode::PAYLOAD_TOO_LARGE, "too_many_records", Some("body")),
        ("application/json", " ".repeat(MAX_BODY + 1), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
    ] {
        let (got, _, answer) = answer(&app, post(content_type, body.clone())).await;
        let what = format!("{content_type} {:.40}: {answer}", body);
        assert_eq!((got, answer["error"].as_str()), (status, Some(error)), "{what}");
        assert_eq!(answer["field"].as_str(), field, "{what}");
    }
    // Records that are all invalid: 400, each record's errors listed by field.
    let (status, _, body) = answer(&app, post("application/json", flights(MAX_RECORDS))).await;
    let message = format!("body: all {MAX_RECORDS} records are invalid (fields are at most {MAX_FIELD_BYTES} bytes)");
    assert_eq!((status, body["message"].as_str()), (StatusCode::BAD_REQUEST, Some(message.as_str())));
    let details = body["details"].as_array().expect("the records' errors");
    assert_eq!(details.len(), MAX_RECORDS);
    assert!(details[0].to_string().contains("Fecha-I"), "{}", details[0]);
}
