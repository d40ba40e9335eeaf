//! The HTTP API: `POST /predict` (the LATAM challenge contract) and `POST /v1/predict`
//! (probabilities, labels and the model version), with model reload when the artifact changes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use flightline_service::auth::Auth;
use flightline_service::config::{HttpLimits, PredictConfig};
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::Serialize;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::body::{PredictRequest, parse_flights};
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

#[derive(OpenApi)]
#[openapi(
    info(description = "Flight-delay predictions from a logistic regression trained on the SCL 2017 data set: \
        the LATAM challenge contract (`POST /predict`) and labels with probabilities and the model version \
        (`POST /v1/predict`). Bodies are JSON of at most 4 MiB."),
    tags((name = "predict", description = "Delay predictions"), (name = "operations", description = "Health, metrics, this document"))
)]
struct ApiDoc;

/// The service's routes, each with its OpenAPI description; the `Flight` schema's `OPERA` lists
/// the airlines of the model in use now.
pub fn routes(state: AppState) -> OpenApiRouter {
    let airlines = state.current().airlines.clone();
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(predict_challenge))
        .routes(routes!(predict_v1))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state);
    list_airlines(router.get_openapi_mut(), &airlines);
    router
}

/// Sets the `enum` of `Flight.OPERA`: an airline the model does not know is refused with 400.
fn list_airlines(doc: &mut utoipa::openapi::OpenApi, airlines: &[String]) {
    let flight = doc.components.as_mut().and_then(|c| c.schemas.get_mut("Flight"));
    let Some(RefOr::T(Schema::Object(flight))) = flight else { panic!("the Flight schema is an object") };
    let Some(RefOr::T(Schema::Object(airline))) = flight.properties.get_mut("OPERA") else {
        panic!("Flight.OPERA is an inline schema")
    };
    airline.enum_values = Some(airlines.iter().map(|a| a.as_str().into()).collect());
}

pub async fn serve(config: PredictConfig) -> anyhow::Result<()> {
    let telemetry = Telemetry::new("predict");
    let limits = config.http.limits(HttpLimits::PREDICT)?;
    let auth = Auth::from_args(&config.auth)?;
    let model_path = config.predict.model_path().map(str::to_string);
    let model = match &model_path {
        None => crate::built_in_model(),
        Some(path) => load(path).map_err(anyhow::Error::msg)?,
    };
    model.validate().map_err(anyhow::Error::msg)?;
    let state = AppState::new(model, &telemetry);
    if let Some(path) = model_path {
        tokio::spawn(watch(path, state.clone()));
    }
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let app = server::app(routes(state), telemetry, ready, auth, limits);
    server::serve(config.server.listen_addr, app).await
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

/// A label: 1 when the flight is predicted to leave more than 15 minutes late, else 0.
fn label_schema() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).enum_values(Some([0, 1]))
}

fn labels_schema() -> impl Into<RefOr<Schema>> {
    ArrayBuilder::new().items(label_schema()).description(Some("One label per flight, in the order sent."))
}

fn probability_schema() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::Number)).minimum(Some(0)).maximum(Some(1))
}

#[derive(Serialize, ToSchema)]
struct ChallengeResponse {
    #[schema(schema_with = labels_schema)]
    predict: Vec<u8>,
}

/// The LATAM challenge contract: a delay label per flight (1: more than 15 minutes late).
#[utoipa::path(
    post,
    path = "/predict",
    tag = "predict",
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A label per flight.", body = ChallengeResponse,
         example = json!({"predict": [0]})),
        (status = 400, description = "`invalid_request` (an unknown OPERA, TIPOVUELO not I or N, MES not 1 to 12, \
         not 1 to 10,000 flights; `field` names it, e.g. `flights[0].MES`), `invalid_json` (not the JSON expected), \
         `invalid_body` (unreadable).", body = ApiError),
        (status = 413, description = "`body_too_large`: the body is larger than 4 MiB.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json` (or `+json`).",
         body = ApiError),
    )
)]
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

#[derive(Serialize, ToSchema)]
struct Prediction {
    /// 1 when `delay_probability` is at least the model's threshold.
    #[schema(schema_with = label_schema)]
    label: u8,
    /// The model's probability that the flight leaves more than 15 minutes late (6 decimals).
    #[schema(schema_with = probability_schema)]
    delay_probability: f64,
}

#[derive(Serialize, ToSchema)]
struct V1Response {
    /// The model artifact's version (a hash of its weights).
    model_version: String,
    /// The probability from which a flight is labelled 1.
    #[schema(schema_with = probability_schema)]
    threshold: f64,
    /// One per flight, in the order sent.
    predictions: Vec<Prediction>,
}

/// Labels with the delay probability of each flight and the version of the model that made them.
#[utoipa::path(
    post,
    path = "/v1/predict",
    tag = "predict",
    request_body(content = PredictRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "A prediction per flight.", body = V1Response),
        (status = 400, description = "`invalid_request` (an unknown OPERA, TIPOVUELO not I or N, MES not 1 to 12, \
         not 1 to 10,000 flights; `field` names it), `invalid_json` (not the JSON expected), `invalid_body` \
         (unreadable).", body = ApiError),
        (status = 413, description = "`body_too_large`: the body is larger than 4 MiB.", body = ApiError),
        (status = 415, description = "`unsupported_media_type`: the body is not `application/json` (or `+json`).",
         body = ApiError),
    )
)]
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
#[path = "api_tests.rs"]
mod router_tests;

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

    /// The whole app as `serve` builds it, with API keys on or auth off.
    fn app(keys: bool) -> axum::Router {
        use flightline_service::auth::{ApiKeys, hash_key};
        let telemetry = Telemetry::new("predict_test");
        let auth =
            keys.then(|| Arc::new(Auth { keys: Some(ApiKeys::parse(&hash_key("the-key")).unwrap()), jwt: None }));
        let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        server::app(routes(AppState::new(model(), &telemetry)), telemetry, ready, auth, HttpLimits::PREDICT)
    }

    async fn document(app: axum::Router) -> serde_json::Value {
        use tower::ServiceExt;
        let request = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "/openapi.json needs no credential");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn the_document_is_openapi_3_1_and_describes_what_the_code_checks() {
        let doc = document(app(true)).await;
        assert_eq!(flightline_service::openapi::check::problems(&doc), Vec::<String>::new());
        let parsed = oas3::from_json(doc.to_string()).expect("an OpenAPI 3.1 document (oas3)");
        assert_eq!(parsed.validate_version().unwrap().to_string(), "3.1.0");
        assert_eq!(doc["info"]["title"], "flightline-predict");
        for path in ["/predict", "/v1/predict"] {
            let op = &doc["paths"][path]["post"];
            let statuses: Vec<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(statuses, ["200", "400", "401", "403", "408", "413", "415", "429", "503"], "{path}");
            assert_eq!(op["security"], json!([{"apiKey": []}, {"bearer": []}]), "{path}");
            assert_eq!(op["responses"]["429"]["headers"]["Retry-After"]["required"], true);
            let body = &op["requestBody"]["content"]["application/json"]["schema"]["$ref"];
            assert_eq!(body, "#/components/schemas/PredictRequest");
        }
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            assert!(doc["paths"][path]["get"].is_object(), "{path}");
            assert!(doc["paths"][path]["get"].get("security").is_none(), "{path} is open");
        }
        let schemas = &doc["components"]["schemas"];
        let flights = &schemas["PredictRequest"]["properties"]["flights"];
        assert_eq!((&flights["minItems"], &flights["maxItems"]), (&json!(1), &json!(MAX_FLIGHTS)));
        let flight = &schemas["Flight"];
        assert_eq!(flight["required"], json!(["OPERA", "TIPOVUELO", "MES"]));
        assert_eq!(flight["properties"]["OPERA"]["enum"], json!(model().airlines));
        assert_eq!(flight["properties"]["TIPOVUELO"]["enum"], json!(["I", "N"]));
        assert_eq!(flight["properties"]["MES"]["anyOf"][0], json!({"type": "integer", "minimum": 1, "maximum": 12}));
        let codes = &schemas["ApiError"]["properties"]["error"]["enum"];
        for code in ["invalid_request", "invalid_json", "body_too_large", "unsupported_media_type", "rate_limited"] {
            assert!(codes.as_array().unwrap().contains(&json!(code)), "{code}");
        }
    }

    #[tokio::test]
    async fn every_route_is_in_the_document_and_every_error_code_in_the_schema() {
        // Without auth: a route that exists answers 405 to another method, not 401.
        let doc = document(app(false)).await;
        assert!(doc["components"].get("securitySchemes").is_none());
        assert!(doc["paths"]["/predict"]["post"]["responses"].get("401").is_none());
        let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        let undocumented = flightline_service::openapi::check::undocumented_routes(app(false), &doc, &[src]).await;
        assert_eq!(undocumented, Vec::<String>::new());
        assert_eq!(flightline_service::openapi::check::undocumented_error_codes(&[src]), Vec::<String>::new());
    }

    #[test]
    fn months_as_text_are_taken_exactly_as_the_schema_pattern_says() {
        let body = |mes: &str| format!(r#"{{"flights":[{{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":"{mes}"}}]}}"#);
        for ok in ["1", "9", "10", "12", "+3", "03", "0012"] {
            assert!(parse_flights(body(ok).as_bytes(), &model()).is_ok(), "{ok}");
        }
        for bad in ["0", "13", "-1", "3.0", " 3", "3 ", "++3", "", "x"] {
            assert!(parse_flights(body(bad).as_bytes(), &model()).is_err(), "{bad}");
        }
        // As a number: JSON Schema's integer 1 to 12, which includes 5.0 (Schemathesis sent it).
        let number = |mes: &str| format!(r#"{{"flights":[{{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":{mes}}}]}}"#);
        for ok in ["1", "12", "5.0", "5e0", "1.2e1"] {
            assert!(parse_flights(number(ok).as_bytes(), &model()).is_ok(), "{ok}");
        }
        for bad in ["0", "13", "5.5", "-1", "-0.0e1", "1e300", "true", "null"] {
            assert!(parse_flights(number(bad).as_bytes(), &model()).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        /// MES as text is accepted exactly when it matches the documented pattern.
        #[test]
        fn prop_month_text_matches_the_pattern_exactly(mes in "[+ 0-9a-]{0,4}|[+]?0{0,3}[0-9]{1,3}") {
            let pattern = regex::Regex::new(crate::body::MONTH_TEXT_PATTERN).unwrap();
            let body = format!(r#"{{"flights":[{{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":"{mes}"}}]}}"#);
            proptest::prop_assert_eq!(pattern.is_match(&mes), parse_flights(body.as_bytes(), &model()).is_ok(), "{}", mes);
        }
    }

    async fn post(body: Vec<u8>, content_type: &str) -> (StatusCode, serde_json::Value) {
        use tower::ServiceExt;
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/predict")
            .header(header::CONTENT_TYPE, content_type)
            .body(axum::body::Body::from(body))
            .unwrap();
        let router = axum::Router::from(routes(AppState::new(model(), &Telemetry::new("predict_test"))));
        let response = router.oneshot(request).await.unwrap();
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
