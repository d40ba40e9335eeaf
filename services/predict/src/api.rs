//! The HTTP API: `POST /predict` (the LATAM challenge contract) and `POST /v1/predict`
//! (probabilities, labels and the model version), with model reload when the artifact changes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
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
use serde_json::Value;

use crate::model::{Features, Model};

pub const MAX_FLIGHTS: usize = 10_000;
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

/// Reads and checks `{"flights": [...]}`; errors name the flight and field.
fn parse_flights(body: &Value, model: &Model) -> Result<Vec<Features>, ApiError> {
    let flights = body
        .get("flights")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad_field("flights", "must be an array of flights"))?;
    if flights.is_empty() || flights.len() > MAX_FLIGHTS {
        return Err(ApiError::bad_field(
            "flights",
            format!("must hold 1 to {MAX_FLIGHTS} flights, not {}", flights.len()),
        ));
    }
    flights
        .iter()
        .enumerate()
        .map(|(i, flight)| {
            let field = |name: &str| format!("flights[{i}].{name}");
            let airline = flight.get("OPERA").and_then(Value::as_str).unwrap_or_default();
            if !model.knows_airline(airline) {
                return Err(ApiError::bad_field(field("OPERA"), format!("unknown airline {airline:?}")));
            }
            let flight_type = flight.get("TIPOVUELO").and_then(Value::as_str).unwrap_or_default();
            if flight_type != "I" && flight_type != "N" {
                return Err(ApiError::bad_field(field("TIPOVUELO"), format!("{flight_type:?} must be I or N")));
            }
            let month = match flight.get("MES") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            let month = month
                .filter(|m| (1..=12).contains(m))
                .ok_or_else(|| ApiError::bad_field(field("MES"), "must be a month from 1 to 12"))?;
            Ok(Features { airline: airline.into(), flight_type: flight_type.into(), month: month as u8 })
        })
        .collect()
}

fn body_json(body: Result<Json<Value>, axum::extract::rejection::JsonRejection>) -> Result<Value, ApiError> {
    body.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {BODY_LIMIT} bytes"),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.body_text())
        }
    })
}

#[derive(Serialize)]
struct ChallengeResponse {
    predict: Vec<u8>,
}

async fn predict_challenge(
    State(state): State<AppState>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ChallengeResponse>, ApiError> {
    let model = state.current();
    let flights = parse_flights(&body_json(body)?, &model)?;
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
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<V1Response>, ApiError> {
    let model = state.current();
    let flights = parse_flights(&body_json(body)?, &model)?;
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
        let flights = parse_flights(&body, &model()).unwrap();
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
            let error = parse_flights(&json!({"flights": [flight]}), &model()).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert_eq!(error.field.as_deref(), Some(field));
        }
        assert!(parse_flights(&json!({"flights": []}), &model()).is_err());
        let too_many = vec![json!({"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 1}); MAX_FLIGHTS + 1];
        assert!(parse_flights(&json!({ "flights": too_many }), &model()).is_err());
    }
}
