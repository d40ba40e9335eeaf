//! What every service's HTTP side shares: JSON logs, `/healthz`, `/readyz` (cached), `/metrics`
//! (request count by route, method and status, and a latency histogram, labelled from fixed sets
//! only), JSON errors, the limits of [`crate::limits`], header and body read timeouts, graceful
//! shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tower::ServiceExt;

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
        Arc::new(Self { registry: Mutex::new(registry), requests, latency, refusals })
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
pub const FAULT_RATIO_ENV: &str = "FLIGHTLINE_FAULT_ERROR_RATIO";

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
        let ratio: f64 = crate::config::parsed(FAULT_RATIO_ENV, 0.0)?;
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
        return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "fault_injected", format!("{FAULT_RATIO_ENV} is set"))
            .into_response();
    }
    next.run(request).await
}

/// A readiness answer is reused this long, so probes do not become a backend call each.
const READY_CACHED_FOR: Duration = Duration::from_secs(2);
/// A readiness check that takes longer than this counts as not ready (a hung backend).
const READY_CHECK_TIMEOUT: Duration = Duration::from_secs(3);

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
            Err(format!("the readiness check did not answer within {} s", READY_CHECK_TIMEOUT.as_secs()))
        });
        *self.last.lock().expect("readiness lock") = Some((Instant::now(), result.clone()));
        result
    }
}

/// Adds `/healthz`, `/readyz` and `/metrics` to a service's routes and wraps them all in the
/// request metrics and the body read timeout. The service's own routes also get, outermost first:
/// authentication with the per-client rate limit, the concurrency limit, the request timeout, and
/// the fault switch (`FLIGHTLINE_FAULT_ERROR_RATIO`) when set. Health, readiness and metrics are
/// not rate limited, so probes and scrapes never see 429.
pub fn app(
    routes: Router,
    telemetry: Arc<Telemetry>,
    ready: ReadyCheck,
    auth: Option<Arc<crate::auth::Auth>>,
    limits: crate::config::HttpLimits,
) -> Router {
    let routes = match FaultSwitch::from_env() {
        Ok(Some(switch)) => routes.layer(middleware::from_fn_with_state(switch, inject_fault)),
        Ok(None) => routes,
        Err(e) => {
            tracing::error!(error = %e, "ignoring the fault switch");
            routes
        }
    };
    let (gate, concurrency, deadline) = crate::limits::guards(auth, &limits, telemetry.refusals.clone());
    let routes = routes
        .layer(middleware::from_fn_with_state(deadline, crate::limits::limit_time))
        .layer(middleware::from_fn_with_state(concurrency, crate::limits::limit_concurrency))
        .layer(middleware::from_fn_with_state(gate, crate::limits::gate));
    let ready = Arc::new(CachedReady { check: ready, last: Mutex::new(None), running: Default::default() });
    let metrics = {
        let telemetry = telemetry.clone();
        move || async move {
            ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], telemetry.encode())
        }
    };
    let readyz = move || {
        let ready = ready.clone();
        async move {
            match ready.get().await {
                Ok(()) => (StatusCode::OK, "ok".to_string()),
                Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
            }
        }
    };
    routes
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .layer(tower_http::timeout::RequestBodyDeadlineLayer::new(Duration::from_secs(
            limits.body_read_timeout_seconds.into(),
        )))
        .layer(middleware::from_fn_with_state(telemetry, record))
}

/// How long in-flight requests may take to finish after SIGTERM (Kubernetes' default grace period
/// is 30 s).
const DRAIN_FOR: Duration = Duration::from_secs(25);

/// Serves until SIGTERM or Ctrl-C, then finishes in-flight requests. A client that does not send
/// its request line and headers within the header read timeout (10 s by default) is disconnected
/// (hyper's `header_read_timeout`; axum::serve cannot set it). Each request carries its peer
/// address as `ConnectInfo<SocketAddr>`.
pub async fn serve(addr: SocketAddr, app: Router) -> anyhow::Result<()> {
    let header_read_timeout = crate::config::header_read_timeout()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, header_read_timeout_seconds = header_read_timeout.as_secs(), "listening");
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_read_timeout);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
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
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_FOR, graceful.shutdown()).await.is_err() {
        tracing::warn!(seconds = DRAIN_FOR.as_secs(), "requests still in flight after the drain period");
    }
    tracing::info!("stopped");
    Ok(())
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
    use super::FaultSwitch;

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
