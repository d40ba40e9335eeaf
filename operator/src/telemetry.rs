//! JSON logs, OpenMetrics metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// JSON logs to stderr, filtered by `RUST_LOG` (default `info`). `FLIGHTLINE_LOG_SPAN_TIMES=1` also
/// logs each span's close with its busy and idle time (where a reconcile's time goes).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let span_times = matches!(std::env::var("FLIGHTLINE_LOG_SPAN_TIMES").as_deref(), Ok("1" | "true"));
    let span_events = match span_times {
        true => tracing_subscriber::fmt::format::FmtSpan::CLOSE,
        false => tracing_subscriber::fmt::format::FmtSpan::NONE,
    };
    tracing_subscriber::fmt()
        .with_span_events(span_events)
        .json()
        .flatten_event(true)
        .with_current_span(span_times)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabels {
    namespace: String,
    pipeline: String,
}

pub struct Metrics {
    registry: Registry,
    reconciliations: Family<ResultLabels, Counter>,
    errors: Family<ReasonLabels, Counter>,
    duration: Histogram,
    pub leader: Gauge,
    /// Reconciles running now: the controller's work in hand (kube-runtime exposes no queue depth).
    pub in_flight: Gauge,
    pipeline_ready: Family<PipelineLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("flightline_operator");
        let reconciliations = Family::<ResultLabels, Counter>::default();
        let errors = Family::<ReasonLabels, Counter>::default();
        let duration = Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]);
        let leader = Gauge::default();
        let in_flight = Gauge::default();
        let pipeline_ready = Family::<PipelineLabels, Gauge>::default();
        registry.register("reconciliations", "Reconciles run, by result", reconciliations.clone());
        registry.register("reconcile_errors", "Failed reconciles, by reason", errors.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Time a reconcile takes",
            prometheus_client::registry::Unit::Seconds,
            duration.clone(),
        );
        registry.register("leader", "1 while this replica holds the leader lease", leader.clone());
        registry.register("reconciles_in_flight", "Reconciles running now", in_flight.clone());
        registry.register(
            "pipeline_ready",
            "1 when the pipeline's Ready condition is True, by pipeline",
            pipeline_ready.clone(),
        );
        Self { registry, reconciliations, errors, duration, leader, in_flight, pipeline_ready }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, error_reason: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error_reason.is_some() { "error" } else { "ok" };
        self.reconciliations.get_or_create(&ResultLabels { result }).inc();
        if let Some(reason) = error_reason {
            self.errors.get_or_create(&ReasonLabels { reason }).inc();
        }
    }

    pub fn set_pipeline_ready(&self, namespace: &str, pipeline: &str, ready: bool) {
        let labels = PipelineLabels { namespace: namespace.into(), pipeline: pipeline.into() };
        self.pipeline_ready.get_or_create(&labels).set(i64::from(ready));
    }

    /// A deleted pipeline's series go with it.
    pub fn forget_pipeline(&self, namespace: &str, pipeline: &str) {
        self.pipeline_ready.remove(&PipelineLabels { namespace: namespace.into(), pipeline: pipeline.into() });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// Shared by the HTTP handlers.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the operator has reached the API server and found its CRD.
    pub ready: Arc<AtomicBool>,
}

pub async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], health.metrics.encode())
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not connected to the Kubernetes API yet")
    }
}
