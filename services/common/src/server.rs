//! What every service's HTTP side shares: JSON logs, `/healthz`, `/readyz` (cached), `/metrics`
//! (request count by route, method and status, and a latency histogram, labelled from fixed sets
//! only), JSON errors, the limits of [`crate::limits`], header and body read timeouts, graceful
//! shutdown, and the service's OpenAPI 3.1 document at `/openapi.json` ([`crate::openapi`]).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tower::ServiceExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// JSON logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A readiness check: `Ok` when the service can do its job (its dependencies answer).
pub type ReadyCheck = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Label values come from fixed sets, never from the client: `route` is the matched route template
/// or `unmatched`, `method` one of the standard methods or `other`, `status` the code this server
/// answered with.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The registry a service registers its own metrics in, plus the HTTP metrics.
pub struct Telemetry {
    /// The service's name (`ingest`, `query`, `predict`).
    service: String,
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    refusals: crate::limits::Refusals,
}

impl Telemetry {
    /// `service` becomes the metric prefix: `flightline_<service>_...`.
    pub fn new(service: &str) -> Arc<Self> {
        let mut registry = Registry::with_prefix(format!("flightline_{service}"));
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.4, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        registry.register("http_requests", "HTTP requests, by route, method and status", requests.clone());
        registry.register_with_unit(
            "http_request_duration",
            "HTTP request latency, by route and method",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        let refusals = crate::limits::Refusals::default();
        registry.register(
            "http_refused_requests",
            "HTTP requests refused by the rate limit, concurrency limit or request timeout, by reason",
            refusals.clone(),
        );
        Arc::new(Self { service: service.to_string(), registry: Mutex::new(registry), requests, latency, refusals })
    }

    /// Registers a service metric (name without prefix).
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().expect("registry lock").register(name, help, metric);
    }

    /// Registers a service metric measured in seconds (name without prefix or unit).
    pub fn register_with_unit(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().expect("registry lock").register_with_unit(
            name,
            help,
            prometheus_client::registry::Unit::Seconds,
            metric,
        );
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().expect("registry lock"))
            .expect("writing to a String cannot fail");
        out
    }
}

async fn record(State(telemetry): State<Arc<Telemetry>>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    telemetry
        .latency
        .get_or_create(&RouteLabels { route: route.clone(), method })
        .observe(started.elapsed().as_secs_f64());
    telemetry.requests.get_or_create(&RequestLabels { route, method, status }).inc();
    response
}

/// Environment variable of the fault switch: the fraction (0 to 1) of API requests answered with
/// 503 `fault_injected`, for drills that prove the SLO alerts page (see docs/runbooks.md). Health
/// and metrics endpoints are never affected. Unset or 0 in normal operation.
pub const FAULT_RATIO_ENV: &str = crate::contract::service::FAULT_ERROR_RATIO;

/// Which requests the fault switch fails: exactly `ratio` of them, spread evenly (the n-th
/// request fails when `floor(n·ratio)` steps up), so a drill's error rate is what it says.
#[derive(Debug)]
pub struct FaultSwitch {
    ratio: f64,
    seen: std::sync::atomic::AtomicU64,
}

impl FaultSwitch {
    pub fn new(ratio: f64) -> Option<Arc<Self>> {
        (ratio > 0.0).then(|| Arc::new(Self { ratio: ratio.min(1.0), seen: Default::default() }))
    }

    pub fn from_env() -> anyhow::Result<Option<Arc<Self>>> {
        let ratio = crate::config::fault_error_ratio()?;
        if !(0.0..=1.0).contains(&ratio) {
            anyhow::bail!("{FAULT_RATIO_ENV}: {ratio} must be between 0 and 1");
        }
        if ratio > 0.0 {
            tracing::warn!(ratio, "fault switch on: this share of API requests will fail with 503");
        }
        Ok(Self::new(ratio))
    }

    pub fn should_fail(&self) -> bool {
        let n = self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64;
        ((n + 1.0) * self.ratio).floor() > (n * self.ratio).floor()
    }
}

async fn inject_fault(State(switch): State<Arc<FaultSwitch>>, request: Request, next: Next) -> Response {
    if switch.should_fail() {
        let error =
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "fault_injected", format!("{FAULT_RATIO_ENV} is set"));
        // Like every other 503 here: the client may retry.
        return ApiError { retry_after: Some(1), ..error }.into_response();
    }
    next.run(request).await
}

/// A readiness answer is reused this long, so probes do not become a backend call each.
const READY_CACHED_FOR: Duration = Duration::from_secs(2);
/// A readiness check that takes longer than this counts as not ready (a hung backend); below the
/// probes' 2 s timeout, so the probe gets this answer rather than its own timeout.
const READY_CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

/// Runs the readiness check at most once per [`READY_CACHED_FOR`], one at a time, with a timeout.
struct CachedReady {
    check: ReadyCheck,
    last: Mutex<Option<(Instant, Result<(), String>)>>,
    running: tokio::sync::Mutex<()>,
}

impl CachedReady {
    fn fresh(&self) -> Option<Result<(), String>> {
        let last = self.last.lock().expect("readiness lock");
        last.as_ref().filter(|(at, _)| at.elapsed() < READY_CACHED_FOR).map(|(_, result)| result.clone())
    }

    async fn get(&self) -> Result<(), String> {
        if let Some(result) = self.fresh() {
            return result;
        }
        let _one_at_a_time = self.running.lock().await;
        if let Some(result) = self.fresh() {
            return result;
        }
        let result = tokio::time::timeout(READY_CHECK_TIMEOUT, (self.check)()).await.unwrap_or_else(|_| {
            Err(format!("the readiness check did not answer within {} ms", READY_CHECK_TIMEOUT.as_millis()))
        });
        *self.last.lock().expect("readiness lock") = Some((Instant::now(), result.clone()));
        result
    }
}

/// Adds `/healthz`, `/readyz`, `/metrics` and `/openapi.json` to a service's routes and wraps them
/// all in the request metrics and the body read timeout. The service's own routes also get,
/// outermost first: authentication with the per-client rate limit, the concurrency limit, the
/// request timeout, and the fault switch (`FLIGHTLINE_FAULT_ERROR_RATIO`) when set. Health,
/// readiness, metrics and the OpenAPI document are not behind auth or the rate limit, so probes
/// and scrapes never see 401 or 429.
///
/// `routes` documented with `utoipa_axum::routes!` appear in the OpenAPI document, completed with
/// what the guards answer and the auth schemes `auth` accepts ([`crate::openapi`]); a plain
/// `Router` is served the same way but only the shared endpoints are documented.
pub fn app(
    routes: impl Into<OpenApiRouter>,
    telemetry: Arc<Telemetry>,
    ready: ReadyCheck,
    auth: Option<Arc<crate::auth::Auth>>,
    limits: crate::config::HttpLimits,
) -> Router {
    let routes: OpenApiRouter = routes.into();
    let guarded = crate::openapi::operations(routes.get_openapi());
    let (routes, fault_switch) = match FaultSwitch::from_env() {
        Ok(Some(switch)) => (routes.layer(middleware::from_fn_with_state(switch, inject_fault)), true),
        Ok(None) => (routes, false),
        Err(e) => {
            tracing::error!(error = %e, "ignoring the fault switch");
            (routes, false)
        }
    };
    let (gate, concurrency, deadline) = crate::limits::guards(auth.clone(), &limits, telemetry.refusals.clone());
    let routes = routes
        .layer(middleware::from_fn_with_state(deadline, crate::limits::limit_time))
        .layer(middleware::from_fn_with_state(concurrency, crate::limits::limit_concurrency))
        .layer(middleware::from_fn_with_state(gate, crate::limits::gate));
    let ready = Arc::new(CachedReady { check: ready, last: Mutex::new(None), running: Default::default() });
    let scrapes = Arc::new(Scrapes {
        telemetry: telemetry.clone(),
        permits: tokio::sync::Semaphore::new(METRICS_MAX_CONCURRENT_SCRAPES),
    });
    let document = Arc::new(OnceLock::new());
    let (router, doc) = routes
        .merge(OpenApiRouter::new().routes(routes!(healthz)))
        .merge(OpenApiRouter::new().routes(routes!(readyz)).with_state(ready))
        .merge(OpenApiRouter::new().routes(routes!(metrics)).with_state(scrapes))
        .merge(OpenApiRouter::new().routes(routes!(openapi_json)).with_state(document.clone()))
        .split_for_parts();
    let doc = crate::openapi::complete(&telemetry.service, doc, &guarded, auth.as_deref(), &limits, fault_switch);
    document.set(Bytes::from(serde_json::to_vec(&doc).expect("the document serializes"))).expect("set once");
    router
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(middleware::map_response(method_not_allowed))
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(Duration::from_secs(
            limits.body_read_timeout_seconds.into(),
        )))
        .layer(middleware::from_fn_with_state(telemetry, record))
}

/// axum answers a method a route does not take with an empty 405 (and adds `Allow` after this
/// layer): the same as a JSON `ApiError`, like every other error. A handler's own 405 has its body
/// already and is left alone.
async fn method_not_allowed(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED || response.headers().contains_key(header::CONTENT_TYPE) {
        return response;
    }
    let message = "this route does not take this method: `Allow` lists those it does";
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message).into_response()
}

/// Liveness: the process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "Alive: `ok`.", body = String, content_type = "text/plain"))
)]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the service's dependencies answer (checked at most every 2 s, within 1.5 s).
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready: `ok`.", body = String, content_type = "text/plain"),
        (status = 503, description = "Not ready: why, in words.", body = String, content_type = "text/plain"),
    )
)]
async fn readyz(State(ready): State<Arc<CachedReady>>) -> (StatusCode, String) {
    match ready.get().await {
        Ok(()) => (StatusCode::OK, "ok".to_string()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// `/metrics` is not behind the request limits (scrapes must not see 429), so it has its own small
/// bound: a flood of scrapes gets 503 at once instead of encoding the registry in parallel.
const METRICS_MAX_CONCURRENT_SCRAPES: usize = 2;

struct Scrapes {
    telemetry: Arc<Telemetry>,
    permits: tokio::sync::Semaphore,
}

/// Prometheus metrics (OpenMetrics text): requests by route, method and status, latency, refusals,
/// and the service's own.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "The metrics.", body = String, content_type = "application/openmetrics-text"),
        (status = 503, description = "`overloaded`: too many scrapes at once.", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
async fn metrics(State(scrapes): State<Arc<Scrapes>>) -> Response {
    metrics_answer(&scrapes.permits, &scrapes.telemetry)
}

fn metrics_answer(scrapes: &tokio::sync::Semaphore, telemetry: &Telemetry) -> Response {
    let Ok(_scrape) = scrapes.try_acquire() else {
        let busy = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "too many scrapes at once");
        return ApiError { retry_after: Some(1), ..busy }.into_response();
    };
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], telemetry.encode())
        .into_response()
}

/// This document: the service's API as OpenAPI 3.1, with the auth schemes this process accepts.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object, content_type = "application/json"))
)]
async fn openapi_json(State(document): State<Arc<OnceLock<Bytes>>>) -> Response {
    let body = document.get().cloned().unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// How long in-flight requests may take to finish after SIGTERM (Kubernetes' default grace period
/// is 30 s).
const DRAIN_FOR: Duration = Duration::from_secs(25);

/// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests. A client that does not send
/// its request line and headers within the header read timeout (10 s by default) is disconnected
/// (hyper's `header_read_timeout`; axum::serve cannot set it). Each request carries its peer
/// address as `ConnectInfo<SocketAddr>`. At most `HTTP_MAX_CONNECTIONS` (1,024) connections are
/// served at once; further ones wait to be accepted.
pub async fn serve(addr: SocketAddr, app: Router) -> anyhow::Result<()> {
    let header_read_timeout = crate::config::header_read_timeout()?;
    let max_connections = crate::config::max_connections()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, header_read_timeout_seconds = header_read_timeout.as_secs(), max_connections, "listening");
    serve_on(listener, app, header_read_timeout, max_connections, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Router,
    header_read_timeout: Duration,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then accept: at the cap, clients wait in the kernel's accept queue.
        let connection_slot = tokio::select! {
            slot = connections.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(request.map(Body::new))
        });
        let connection = graceful.watch(http.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _connection_slot = connection_slot;
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_FOR, graceful.shutdown()).await.is_err() {
        tracing::warn!(seconds = DRAIN_FOR.as_secs(), "requests still in flight after the drain period");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// A JSON error body: `{"error": "...", "message": "...", "field": "...", "details": [...]}`.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    pub error: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self { status, error, message: message.into(), field: None, details: None, retry_after: None }
    }

    /// 400 naming the parameter or field at fault.
    pub fn bad_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = format!("{field}: {}", message.into());
        Self { field: Some(field), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request", message) }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(&self)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Turns axum's body-limit and JSON rejections into `ApiError`s.
pub fn body_error(error: axum::extract::rejection::BytesRejection) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", "the request body is larger than the limit")
    } else if body_timed_out(&error) {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "body_timeout", "the request body did not arrive in time")
    } else {
        ApiError::new(error.status(), "invalid_body", error.body_text())
    }
}

/// Whether reading the body failed on the body read timeout.
fn body_timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// An empty 204/202 body helper for handlers that only set a status.
pub fn empty(status: StatusCode) -> Response {
    Response::builder().status(status).body(Body::empty()).expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpLimits;
    use axum::routing::{get, post};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits(requests_per_second: u32, burst: u32, max_concurrent_requests: u32) -> HttpLimits {
        HttpLimits { requests_per_second, burst, max_concurrent_requests, ..HttpLimits::QUERY }
    }

    fn ok() -> ReadyCheck {
        Arc::new(|| Box::pin(async { Ok(()) }))
    }

    fn test_app(routes: Router, limits: HttpLimits) -> (Router, Arc<Telemetry>) {
        let telemetry = Telemetry::new("test");
        (app(routes, telemetry.clone(), ok(), None, limits), telemetry)
    }

    fn request(method: &str, path: &str) -> Request {
        Request::builder().method(method).uri(path).body(Body::empty()).unwrap()
    }

    async fn json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn series(telemetry: &Telemetry) -> usize {
        telemetry.encode().lines().filter(|l| !l.starts_with('#')).count()
    }

    #[tokio::test]
    async fn made_up_methods_do_not_grow_the_metrics() {
        let (app, telemetry) = test_app(Router::new().route("/v1/x", get(|| async { "x" })), limits(0, 1, 8));
        for path in ["/healthz", "/v1/x", "/nowhere"] {
            app.clone().oneshot(request("GET", path)).await.unwrap();
        }
        let before = series(&telemetry);
        for n in 0..300 {
            for path in ["/healthz", "/v1/x", "/nowhere"] {
                let response = app.clone().oneshot(request(&format!("MADEUP{n}"), path)).await.unwrap();
                assert!(response.status().is_client_error(), "{path}: {}", response.status());
            }
        }
        let text = telemetry.encode();
        assert!(!text.contains("MADEUP"), "a client's method reached a label");
        // At most: per route, one `other` counter series per status (405/404) and one histogram.
        let grown = series(&telemetry) - before;
        assert!(grown <= 3 * 20, "{grown} new series for 900 requests with made-up methods");
        assert!(text.contains(r#"method="other""#));
    }

    #[tokio::test]
    async fn a_burst_over_the_rate_gets_429_with_retry_after_and_health_is_exempt() {
        let (app, telemetry) = test_app(Router::new().route("/v1/x", get(|| async { "x" })), limits(1, 3, 8));
        for _ in 0..3 {
            assert_eq!(app.clone().oneshot(request("GET", "/v1/x")).await.unwrap().status(), StatusCode::OK);
        }
        let refused = app.clone().oneshot(request("GET", "/v1/x")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        let body = json(refused).await;
        assert_eq!(body["error"], "rate_limited");
        assert!(body["message"].as_str().unwrap().contains("rate limit"));
        for path in ["/healthz", "/readyz", "/metrics"] {
            for _ in 0..10 {
                assert_eq!(app.clone().oneshot(request("GET", path)).await.unwrap().status(), StatusCode::OK, "{path}");
            }
        }
        assert!(telemetry.encode().contains(r#"http_refused_requests_total{reason="rate_limited"} 1"#));
        // Another client (peer address) has its own bucket.
        let mut other = request("GET", "/v1/x");
        other.extensions_mut().insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 4000))));
        assert_eq!(app.clone().oneshot(other).await.unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn clients_are_their_principal_and_refused_credentials_are_charged_to_the_address() {
        use crate::auth::{ApiKeys, Auth, hash_key};
        let keys = ApiKeys::parse(&format!("{}\n{}", hash_key("team-a"), hash_key("team-b"))).unwrap();
        let auth = Arc::new(Auth { keys: Some(keys), jwt: None });
        let routes = Router::new().route("/v1/x", get(|| async { "x" }));
        let app = app(routes, Telemetry::new("test"), ok(), Some(auth), limits(1, 2, 8));
        let with_key = |key: &str| {
            let mut request = request("GET", "/v1/x");
            request.headers_mut().insert("x-api-key", key.parse().unwrap());
            request
        };
        let statuses = async |key: &str, n: usize| {
            let mut statuses = Vec::new();
            for _ in 0..n {
                statuses.push(app.clone().oneshot(with_key(key)).await.unwrap().status().as_u16());
            }
            statuses
        };
        // Guessing keys from one address is rate limited like any other request.
        assert_eq!(statuses("guess", 3).await, [403, 403, 429]);
        // The same address with real keys: each key has its own bucket.
        assert_eq!(statuses("team-a", 3).await, [200, 200, 429]);
        assert_eq!(statuses("team-b", 2).await, [200, 200]);
    }

    #[tokio::test]
    async fn a_full_concurrency_limit_answers_503_at_once() {
        let release = Arc::new(tokio::sync::Notify::new());
        let waiting = release.clone();
        let routes = Router::new().route(
            "/v1/slow",
            get(move || {
                let waiting = waiting.clone();
                async move {
                    waiting.notified().await;
                    "done"
                }
            }),
        );
        let (app, _) = test_app(routes, limits(0, 1, 1));
        let first = tokio::spawn(app.clone().oneshot(request("GET", "/v1/slow")));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let refused = app.clone().oneshot(request("GET", "/v1/slow")).await.unwrap();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(refused).await["error"], "overloaded");
        assert_eq!(app.clone().oneshot(request("GET", "/healthz")).await.unwrap().status(), StatusCode::OK);
        release.notify_one();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn slow_requests_and_stalled_bodies_time_out() {
        let routes = Router::new()
            .route(
                "/v1/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }),
            )
            .route(
                "/v1/upload",
                post(|body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>| async move {
                    body.map(|b| b.len().to_string()).map_err(body_error)
                }),
            );
        let limits = HttpLimits { request_timeout_seconds: 1, body_read_timeout_seconds: 1, ..limits(0, 1, 8) };
        let (app, _) = test_app(routes, limits);
        let started = Instant::now();
        let response = app.clone().oneshot(request("GET", "/v1/slow")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(json(response).await["error"], "request_timeout");
        assert!(started.elapsed() < Duration::from_secs(3));
        let stalled = Body::from_stream(futures::stream::pending::<Result<axum::body::Bytes, std::io::Error>>());
        let upload = Request::builder().method("POST").uri("/v1/upload").body(stalled).unwrap();
        let response = app.clone().oneshot(upload).await.unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(json(response).await["error"], "body_timeout");
    }

    #[tokio::test]
    async fn readiness_is_checked_once_for_many_probes() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let ready: ReadyCheck = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err("backend down".to_string())
            })
        });
        let app = app(Router::new(), Telemetry::new("test"), ready, None, limits(0, 1, 8));
        let probes: Vec<_> = (0..50).map(|_| tokio::spawn(app.clone().oneshot(request("GET", "/readyz")))).collect();
        for probe in probes {
            assert_eq!(probe.await.unwrap().unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_hung_readiness_check_means_not_ready() {
        let ready: ReadyCheck = Arc::new(|| Box::pin(std::future::pending()));
        let app = app(Router::new(), Telemetry::new("test"), ready, None, limits(0, 1, 8));
        let started = Instant::now();
        let response = app.oneshot(request("GET", "/readyz")).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(started.elapsed() < READY_CHECK_TIMEOUT + Duration::from_secs(1));
    }

    #[tokio::test]
    async fn a_client_that_stalls_in_its_headers_is_disconnected() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (app, _) = test_app(Router::new(), limits(0, 1, 8));
        tokio::spawn(serve_on(listener, app, Duration::from_secs(1), 64, std::future::pending()));
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Half: ").await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), stalled.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the connection stayed open");
        assert!(started.elapsed() >= Duration::from_millis(900));
        // So is one that sends nothing, or nothing more after a keep-alive request.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        for stream in [&mut silent, &mut idle] {
            let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf)).await;
            assert!(read.is_ok(), "an idle connection stayed open");
        }
        // A complete request on another connection is served.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_wait_until_one_closes() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (app, _) = test_app(Router::new(), limits(0, 1, 8));
        tokio::spawn(serve_on(listener, app, Duration::from_secs(60), 2, std::future::pending()));
        let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        // Two silent connections take both slots (the header read timeout is 60 s here).
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A third connects (the kernel queues it) but is not served while both are open.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        third.write_all(request).await.unwrap();
        let mut answer = String::new();
        let waited = tokio::time::timeout(Duration::from_millis(500), third.read_to_string(&mut answer)).await;
        assert!(waited.is_err() && answer.is_empty(), "served past the cap: {answer}");
        // Once one finishes, the third is accepted and served.
        first.write_all(request).await.unwrap();
        first.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        answer.clear();
        tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut answer)).await.unwrap().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn scrapes_past_their_own_bound_get_503_at_once() {
        let telemetry = Telemetry::new("test");
        let scrapes = tokio::sync::Semaphore::new(METRICS_MAX_CONCURRENT_SCRAPES);
        let held = scrapes.try_acquire_many(METRICS_MAX_CONCURRENT_SCRAPES as u32).unwrap();
        let busy = metrics_answer(&scrapes, &telemetry);
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.headers()[header::RETRY_AFTER], "1");
        assert_eq!(json(busy).await["error"], "overloaded");
        drop(held);
        assert_eq!(metrics_answer(&scrapes, &telemetry).status(), StatusCode::OK);
    }

    #[test]
    fn fault_switch_fails_exactly_its_share() {
        let failed = |ratio: f64| {
            let switch = FaultSwitch::new(ratio).expect("switch on");
            (0..1000).filter(|_| switch.should_fail()).count()
        };
        assert_eq!(failed(1.0), 1000);
        assert_eq!(failed(0.25), 250);
        assert_eq!(failed(0.001), 1);
        assert!(FaultSwitch::new(0.0).is_none());
    }
}
