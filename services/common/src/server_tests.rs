//! The middleware every service runs behind, through `tower::ServiceExt::oneshot` on `server::app`
//! (no socket, no Kafka, no ClickHouse): health and readiness, the JSON 404 and 405 (with
//! `Allow`), credentials (401 / 403 / accepted), the body limit (413) and a broken body (400).

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{Request, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::auth::{ApiKeys, Auth, hash_key};
use crate::config::HttpLimits;
use crate::server::{self, ApiError, ReadyCheck, Telemetry};

const BODY_LIMIT: usize = 1024;
const KEY: &str = "a-key-of-the-test";

async fn echo(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(server::body_error)
}

fn ready(answer: Result<(), &'static str>) -> ReadyCheck {
    Arc::new(move || Box::pin(async move { answer.map_err(String::from) }))
}

/// A service's routes (`GET /v1/thing`, `POST /v1/echo` with a 1 KiB body limit) behind the shared
/// middleware; no rate limit, so a test's many requests are never 429.
fn app(ready: ReadyCheck, keys: bool) -> Router {
    let routes = Router::new()
        .route("/v1/thing", get(|| async { "thing" }))
        .route("/v1/echo", post(echo))
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let auth = keys.then(|| Arc::new(Auth { keys: Some(ApiKeys::parse(&hash_key(KEY)).unwrap()), jwt: None }));
    let limits = HttpLimits { requests_per_second: 0, ..HttpLimits::QUERY };
    server::app(routes, Telemetry::new("middle_tier"), ready, auth, limits)
}

fn request(method: &str, path: &str) -> Request<Body> {
    Request::builder().method(method).uri(path).body(Body::empty()).unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Response) {
    let response = app.clone().oneshot(request).await.unwrap();
    (response.status(), response)
}

async fn text(response: Response) -> String {
    String::from_utf8(axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap()
}

async fn json_error(response: Response) -> Value {
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    serde_json::from_str(&text(response).await).unwrap()
}

#[tokio::test]
async fn health_readiness_and_metrics_answer_without_credentials() {
    let app = app(ready(Ok(())), true);
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ok")] {
        let (status, response) = send(&app, request("GET", path)).await;
        assert_eq!((status, text(response).await.as_str()), (StatusCode::OK, body), "{path}");
    }
    let (status, response) = send(&app, request("GET", "/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text(response).await.contains("# EOF"), "OpenMetrics text");

    let down = self::app(ready(Err("Kafka: broker transport failure")), true);
    let (status, response) = send(&down, request("GET", "/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text(response).await.contains("Kafka: broker transport failure"), "the reason, in words");
    let (status, _) = send(&down, request("GET", "/healthz")).await;
    assert_eq!(status, StatusCode::OK, "alive while not ready");
}

#[tokio::test]
async fn unknown_paths_are_a_json_404_and_other_methods_a_405_with_allow() {
    let app = app(ready(Ok(())), false);
    for path in ["/", "/v2/thing", "/v1/thing/more", "/healthz/x"] {
        let (status, response) = send(&app, request("GET", path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(json_error(response).await, json!({"error": "not_found", "message": "no such route"}), "{path}");
    }
    for (method, path, allow) in [
        ("DELETE", "/v1/thing", "GET,HEAD"),
        ("GET", "/v1/echo", "POST"),
        ("POST", "/healthz", "GET,HEAD"),
        ("PUT", "/metrics", "GET,HEAD"),
    ] {
        let (status, response) = send(&app, request(method, path)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_eq!(response.headers()[header::ALLOW], allow, "{method} {path}");
        assert_eq!(json_error(response).await["error"], "method_not_allowed", "{method} {path}");
    }
}

#[tokio::test]
async fn a_service_route_needs_a_key_the_service_knows() {
    let app = app(ready(Ok(())), true);
    let with =
        |name: &str, value: &str| Request::builder().uri("/v1/thing").header(name, value).body(Body::empty()).unwrap();
    let (status, response) = send(&app, request("GET", "/v1/thing")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    assert_eq!(json_error(response).await["error"], "unauthenticated");
    // Even a method the route does not take: a caller without a key learns nothing.
    let (status, _) = send(&app, request("DELETE", "/v1/thing")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (name, value) in [("x-api-key", "not-the-key"), ("authorization", "Bearer not-the-key")] {
        let (status, response) = send(&app, with(name, value)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{name}");
        assert_eq!(json_error(response).await["error"], "forbidden", "{name}");
    }
    // Only a bearer scheme counts; the scheme's case does not.
    let (status, _) = send(&app, with("authorization", &format!("Basic {KEY}"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    for (name, value) in [("x-api-key", KEY.to_string()), ("authorization", format!("bearer {KEY}"))] {
        let (status, response) = send(&app, with(name, &value)).await;
        assert_eq!((status, text(response).await.as_str()), (StatusCode::OK, "thing"), "{name}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_and_broken_ones_400_both_as_json() {
    let app = app(ready(Ok(())), false);
    let post = |body: Body| Request::builder().method("POST").uri("/v1/echo").body(body).unwrap();
    let (status, response) = send(&app, post(Body::from(vec![b'x'; BODY_LIMIT]))).await;
    assert_eq!((status, text(response).await.len()), (StatusCode::OK, BODY_LIMIT));
    let (status, response) = send(&app, post(Body::from(vec![b'x'; BODY_LIMIT + 1]))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json_error(response).await["error"], "body_too_large");
    // A body that breaks off half-way (the client's connection dropped).
    let chunks: Vec<Result<Bytes, std::io::Error>> =
        vec![Ok(Bytes::from_static(b"{\"a\":")), Err(std::io::Error::other("connection reset"))];
    let (status, response) = send(&app, post(Body::from_stream(futures::stream::iter(chunks)))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json_error(response).await["error"], "invalid_body");
}
