//! Query's router as `main` builds it, through `tower::ServiceExt::oneshot`, against a ClickHouse
//! that is not there (a closed port) or that never answers (a listener that only accepts): every
//! parameter refused by name before ClickHouse is asked, and what a caller sees when the store is
//! down (503 `clickhouse_unavailable`) or hung (504 `clickhouse_timeout`), both with `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use flightline_service::config::HttpLimits;
use flightline_service::server::{self, ReadyCheck, Telemetry};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::AppState;
use crate::cache::{Cache, Limits, Metrics};

const MAX_ROWS: u32 = 500;

fn app(clickhouse_url: &str, call_timeout: Duration) -> axum::Router {
    let state = AppState {
        clickhouse: clickhouse::Client::default().with_url(clickhouse_url),
        table: "`air`.`scl_flights`".into(),
        max_rows: MAX_ROWS,
        call_timeout,
        cache: Cache::new(Limits { freshness: Duration::ZERO, max_entries: 1, max_bytes: 1 << 20 }, Metrics::default()),
    };
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let limits = HttpLimits { requests_per_second: 0, ..HttpLimits::QUERY };
    server::app(crate::docs::routes(state), Telemetry::new("query_test"), ready, None, limits)
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(Request::get(uri).body(Body::empty()).unwrap()).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// `/v1/flights/{id}` (written as the documented route: the OpenAPI check reads path literals).
fn by_id(id: &str) -> String {
    "/v1/flights/{id}".replace("{id}", id)
}

/// A loopback URL nothing listens on, and the socket that keeps its port bound (never listening)
/// while the test holds it: a port only released could be given to another test's listener (the
/// hung ClickHouse below) and answer in its place.
fn closed_url() -> (String, tokio::net::TcpSocket) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    (format!("http://{}", socket.local_addr().unwrap()), socket)
}

#[tokio::test]
async fn parameters_are_refused_by_name_before_clickhouse_is_asked() {
    let (url, _bound) = closed_url();
    let app = app(&url, Duration::from_secs(2));
    for (uri, field) in [
        ("/v1/flights?limit=0", "limit"),
        ("/v1/flights?limit=501", "limit"),
        ("/v1/flights?from=yesterday", "from"),
        ("/v1/flights?from=2017-02-01&to=2017-01-01", "from"),
        ("/v1/flights?type=X", "type"),
        ("/v1/flights?delayed=1", "delayed"),
        ("/v1/flights?cursor=1.2", "cursor"),
        ("/v1/flights?sort=airline", "sort"),
        ("/v1/flights?limit=1&limit=2", "limit"),
        ("/v1/stats/delays", "by"),
        ("/v1/stats/delays?by=airline;DROP", "by"),
        (&by_id("0123"), "id"),
    ] {
        let (status, _, body) = get(&app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["field"], json!(field), "{uri}: {body}");
        assert!(body["error"].as_str().is_some_and(|e| e.starts_with("invalid_")), "{uri}: {body}");
    }
}

#[tokio::test]
async fn a_store_that_is_down_is_503_with_retry_after() {
    let (url, _bound) = closed_url();
    let app = app(&url, Duration::from_secs(2));
    for uri in [
        "/v1/flights?limit=5",
        "/v1/flights?airline=Grupo+LATAM&delayed=true",
        &by_id("0123456789abcdef0123456789abcdef"),
        "/v1/stats/delays?by=airline",
    ] {
        let (status, headers, body) = get(&app, uri).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::SERVICE_UNAVAILABLE, &json!("clickhouse_unavailable")),
            "{uri}"
        );
        assert_eq!(headers[header::RETRY_AFTER], "1", "{uri}");
    }
}

#[tokio::test]
async fn a_store_that_never_answers_is_504_within_the_call_timeout() {
    // Accepts connections and keeps them open without a word.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    let app = app(&url, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let (status, headers, body) = get(&app, "/v1/flights?limit=5").await;
    assert_eq!((status, &body["error"]), (StatusCode::GATEWAY_TIMEOUT, &json!("clickhouse_timeout")), "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    held.abort();
}
