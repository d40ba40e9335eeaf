//! The HTTP API: `POST /predict` (the LATAM challenge contract) and `POST /v1/predict`
//! (probabilities, labels and the model version), with model reload when the artifact changes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use axum::{Json, Router};
use flightline_service::auth::Auth;
use flightline_service::config::{self, HttpLimits};
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;

use crate::body::parse_flights;
use crate::model::Model;

const BODY_LIMIT: usize = 4 * 1024 * 1024;
const RELOAD_EVERY: Duration = Duration::from_secs(2);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LabelLabels {
    label: u8,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone)]
pub struct AppState {
    model: Arc<RwLock<Arc<Model>>>,
    predictions: Family<LabelLabels, Counter>,
    model_info: Family<VersionLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
}

impl AppState {
    pub fn new(model: Model, telemetry: &Telemetry) -> Self {
        let state = Self {
            model: Arc::new(RwLock::new(Arc::new(model))),
            predictions: Family::default(),
            model_info: Family::default(),
            reloads: Family::default(),
        };
        telemetry.register("predictions", "Predictions made, by label", state.predictions.clone());
        telemetry.register("model_info", "The model in use (value 1), by version", state.model_info.clone());
        telemetry.register("model_reloads", "Model reloads, by result", state.reloads.clone());
        state.set_info(None);
        state
    }

    fn current(&self) -> Arc<Model> {
        self.model.read().expect("model lock").clone()
    }

    fn set_info(&self, previous: Option<&str>) {
        if let Some(previous) = previous {
            self.model_info.remove(&VersionLabels { version: previous.into() });
        }
        self.model_info.get_or_create(&VersionLabels { version: self.current().version.clone() }).set(1);
    }

    /// Replaces the model if `candidate` is valid; the old one stays otherwise.
    fn replace(&self, candidate: Result<Model, String>) {
        match candidate.and_then(|m| m.validate().map(|()| m)) {
            Ok(model) => {
                let previous = self.current().version.clone();
                tracing::info!(from = %previous, to = %model.version, "model loaded");
                *self.model.write().expect("model lock") = Arc::new(model);
                self.set_info(Some(&previous));
                self.reloads.get_or_create(&ResultLabels { result: "ok" }).inc();
            }
            Err(why) => {
                tracing::error!(error = %why, "model not loaded; keeping the one in use");
                self.reloads.get_or_create(&ResultLabels { result: "error" }).inc();
            }
        }
    }
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/predict", post(predict_challenge))
        .route("/v1/predict", post(predict_v1))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

pub async fn serve() -> anyhow::Result<()> {
    let telemetry = Telemetry::new("predict");
    let model_path = std::env::var("PREDICT_MODEL_PATH").unwrap_or_default();
    let model =
        if model_path.is_empty() { crate::built_in_model() } else { load(&model_path).map_err(anyhow::Error::msg)? };
    model.validate().map_err(anyhow::Error::msg)?;
    let state = AppState::new(model, &telemetry);
    if !model_path.is_empty() {
        tokio::spawn(watch(model_path, state.clone()));
    }
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let limits = HttpLimits::from_env(HttpLimits::PREDICT)?;
    let app = server::app(routes(state), telemetry, ready, Auth::from_env()?, limits);
    server::serve(config::listen_addr()?, app).await
}

fn load(path: &str) -> Result<Model, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: {e}"))
}

/// Reloads the artifact when its modification time changes (a ConfigMap update, a new file).
async fn watch(path: String, state: AppState) {
    let modified = |p: &str| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last: Option<SystemTime> = modified(&path);
    loop {
        tokio::time::sleep(RELOAD_EVERY).await;
        let now = modified(&path);
        if now.is_some() && now != last {
            last = now;
            state.replace(load(&path));
        }
    }
}

/// The body, if it is JSON and within the size limit.
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|value| {
        let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        mime == "application/json" || mime.ends_with("+json")
    });
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be JSON (Content-Type: application/json)",
        ));
    }
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {BODY_LIMIT} bytes"),
            )
        } else {
            server::body_error(e)
        }
    })
}

#[derive(Serialize)]
struct ChallengeResponse {
    predict: Vec<u8>,
}

async fn predict_challenge(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChallengeResponse>, ApiError> {
    let model = state.current();
    let flights = parse_flights(&json_body(&headers, body)?, &model)?;
    let predict: Vec<u8> = flights.iter().map(|f| model.label(model.probability(f))).collect();
    count(&state, &predict);
    Ok(Json(ChallengeResponse { predict }))
}

#[derive(Serialize)]
struct Prediction {
    label: u8,
    delay_probability: f64,
}

#[derive(Serialize)]
struct V1Response {
    model_version: String,
    threshold: f64,
    predictions: Vec<Prediction>,
}

async fn predict_v1(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<V1Response>, ApiError> {
    let model = state.current();
    let flights = parse_flights(&json_body(&headers, body)?, &model)?;
    let predictions: Vec<Prediction> = flights
        .iter()
        .map(|f| {
            let p = model.probability(f);
            Prediction { label: model.label(p), delay_probability: (p * 1e6).round() / 1e6 }
        })
        .collect();
    count(&state, &predictions.iter().map(|p| p.label).collect::<Vec<_>>());
    Ok(Json(V1Response { model_version: model.version.clone(), threshold: model.threshold, predictions }))
}

fn count(state: &AppState, labels: &[u8]) {
    let ones = labels.iter().filter(|l| **l == 1).count() as u64;
    state.predictions.get_or_create(&LabelLabels { label: 1 }).inc_by(ones);
    state.predictions.get_or_create(&LabelLabels { label: 0 }).inc_by(labels.len() as u64 - ones);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::MAX_FLIGHTS;
    use serde_json::json;

    #[tokio::test]
    async fn a_changed_artifact_is_reloaded_and_a_broken_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("flightline-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.json");
        let mut model = model();
        std::fs::write(&path, serde_json::to_string(&model).unwrap()).unwrap();
        let telemetry = Telemetry::new("predict_test");
        let state = AppState::new(load(path.to_str().unwrap()).unwrap(), &telemetry);
        tokio::spawn(watch(path.to_str().unwrap().to_string(), state.clone()));

        // Same modification time granularity: wait a moment before rewriting.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        model.version = "v1-retrained".into();
        model.threshold = 0.9;
        std::fs::write(&path, serde_json::to_string(&model).unwrap()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while state.current().version != "v1-retrained" {
            assert!(tokio::time::Instant::now() < deadline, "the new model was not loaded");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(state.current().threshold, 0.9);
        assert!(telemetry.encode().contains(r#"model_info{version="v1-retrained"} 1"#));

        tokio::time::sleep(Duration::from_millis(1100)).await;
        std::fs::write(&path, "{ not a model").unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(state.current().version, "v1-retrained", "a broken artifact does not replace a good one");
        assert!(telemetry.encode().contains(r#"model_reloads_total{result="error"} 1"#));
        std::fs::remove_dir_all(&dir).ok();
    }

    fn model() -> Model {
        crate::built_in_model()
    }

    #[test]
    fn the_challenge_body_parses() {
        let body = json!({"flights": [{"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "N", "MES": 3}]});
        let flights = parse_flights(body.to_string().as_bytes(), &model()).unwrap();
        assert_eq!(flights[0].month, 3);
    }

    #[test]
    fn invalid_flights_name_the_field() {
        for (flight, field) in [
            (json!({"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "N", "MES": 13}), "flights[0].MES"),
            (json!({"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "O", "MES": 3}), "flights[0].TIPOVUELO"),
            (json!({"OPERA": "Argentinas", "TIPOVUELO": "N", "MES": 3}), "flights[0].OPERA"),
            (json!({"OPERA": "Aerolineas Argentinas", "TIPOVUELO": "N"}), "flights[0].MES"),
        ] {
            let error = parse_flights(json!({"flights": [flight]}).to_string().as_bytes(), &model()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert_eq!(error.field.as_deref(), Some(field));
        }
        assert!(parse_flights(br#"{"flights": []}"#, &model()).is_err());
        let too_many = vec![json!({"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 1}); MAX_FLIGHTS + 1];
        let error = parse_flights(json!({ "flights": too_many }).to_string().as_bytes(), &model()).unwrap_err();
        assert_eq!((error.status, error.field.as_deref()), (StatusCode::BAD_REQUEST, Some("flights")));
    }

    async fn post(body: Vec<u8>, content_type: &str) -> (StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/predict")
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from(body))
            .unwrap();
        let response = routes(AppState::new(model(), &Telemetry::new("predict_test"))).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or_default())
    }

    #[tokio::test]
    async fn the_router_refuses_many_empty_flights_non_json_and_oversized_bodies() {
        let empties = format!("{{\"flights\":[{}{{}}]}}", "{},".repeat(589_999)).into_bytes();
        assert!(empties.len() < BODY_LIMIT);
        let (status, body) = post(empties, "application/json").await;
        assert_eq!((status, body["field"].as_str()), (StatusCode::BAD_REQUEST, Some("flights")));
        let (status, _) = post(br#"{"flights":[]}"#.to_vec(), "text/plain").await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, body) = post(vec![b' '; BODY_LIMIT + 1], "application/json").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")));
        let sample = br#"{"flights":[{"OPERA":"Aerolineas Argentinas","TIPOVUELO":"N","MES":3}]}"#.to_vec();
        let (status, body) = post(sample, "application/json; charset=utf-8").await;
        assert_eq!((status, body), (StatusCode::OK, json!({"predict": [0]})));
    }
}
