//! Predict's router as `serve` builds it, through `tower::ServiceExt::oneshot`, with the model
//! artifact the image ships (`model/delay-model.json`, read as `PREDICT_MODEL_PATH` would be):
//! real predictions, credentials, the JSON 404, 405 with `Allow`, body limits and named 400s.

use axum::body::Body;
use axum::http::Request;
use flightline_service::auth::{ApiKeys, hash_key};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::model::Features;

const KEY: &str = "a-predict-key";
const MODEL_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/model/delay-model.json");

fn model() -> Model {
    load(MODEL_FILE).expect("the shipped model file")
}

/// The app of `serve` with the shipped model file, and the telemetry it reports to.
fn app(keys: bool) -> (axum::Router, Arc<Telemetry>) {
    let telemetry = Telemetry::new("predict_test");
    let auth = keys.then(|| Arc::new(Auth { keys: Some(ApiKeys::parse(&hash_key(KEY)).unwrap()), jwt: None }));
    let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
    let limits = HttpLimits { requests_per_second: 0, ..HttpLimits::PREDICT };
    let app = server::app(routes(AppState::new(model(), &telemetry)), telemetry.clone(), ready, auth, limits);
    (app, telemetry)
}

fn post(path: &str, content_type: &str, body: impl Into<Body>) -> Request<Body> {
    let request = Request::post(path).header(header::CONTENT_TYPE, content_type);
    request.header("x-api-key", KEY).body(body.into()).unwrap()
}

async fn answer(app: &axum::Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, headers, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// A flight the model labels `label`.
fn flight_labelled(model: &Model, label: u8) -> Features {
    let mut all = Vec::new();
    for airline in &model.airlines {
        for flight_type in ["I", "N"] {
            for month in 1..=12 {
                all.push(Features { airline: airline.clone(), flight_type: flight_type.into(), month });
            }
        }
    }
    all.into_iter().find(|f| model.label(model.probability(f)) == label).expect("the model uses both labels")
}

#[tokio::test]
async fn the_shipped_model_answers_both_contracts() {
    let (app, telemetry) = app(true);
    let model = model();
    let flights: Vec<Features> = vec![
        Features { airline: "Aerolineas Argentinas".into(), flight_type: "N".into(), month: 3 },
        flight_labelled(&model, 1),
        flight_labelled(&model, 0),
    ];
    let body = json!({"flights": flights.iter().map(|f| json!({
        "OPERA": f.airline, "TIPOVUELO": f.flight_type, "MES": f.month,
    })).collect::<Vec<_>>()});

    let (status, _, v1) = answer(&app, post("/v1/predict", "application/json", body.to_string())).await;
    assert_eq!(status, StatusCode::OK, "{v1}");
    assert_eq!((&v1["model_version"], &v1["threshold"]), (&json!(model.version), &json!(model.threshold)));
    let expected: Vec<Value> = flights
        .iter()
        .map(|f| {
            let p = model.probability(f);
            json!({"label": model.label(p), "delay_probability": (p * 1e6).round() / 1e6})
        })
        .collect();
    assert_eq!(v1["predictions"], Value::Array(expected));
    assert_eq!(v1["predictions"][0]["label"], 0, "the challenge's sample is on time");

    let (status, _, challenge) = answer(&app, post("/predict", "application/json", body.to_string())).await;
    assert_eq!((status, challenge), (StatusCode::OK, json!({"predict": [0, 1, 0]})));
    let metrics = telemetry.encode();
    assert!(metrics.contains(r#"predictions_total{label="1"} 2"#), "{metrics}");
    assert!(metrics.contains(r#"predictions_total{label="0"} 4"#), "{metrics}");
}

#[tokio::test]
async fn a_prediction_needs_a_known_key() {
    let (app, _) = app(true);
    let sample = r#"{"flights":[{"OPERA":"Grupo LATAM","TIPOVUELO":"N","MES":1}]}"#;
    let mut without = post("/predict", "application/json", sample);
    without.headers_mut().remove("x-api-key");
    let (status, headers, body) = answer(&app, without).await;
    assert_eq!((status, &body["error"]), (StatusCode::UNAUTHORIZED, &json!("unauthenticated")));
    assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    let mut wrong = post("/predict", "application/json", sample);
    wrong.headers_mut().insert("x-api-key", "not-a-key".parse().unwrap());
    let (status, _, body) = answer(&app, wrong).await;
    assert_eq!((status, &body["error"]), (StatusCode::FORBIDDEN, &json!("forbidden")));
}

#[tokio::test]
async fn other_paths_are_404_and_other_methods_405_naming_post() {
    let (app, _) = app(false);
    let (status, _, body) = answer(&app, post("/v2/predict", "application/json", "{}")).await;
    assert_eq!((status, &body["error"]), (StatusCode::NOT_FOUND, &json!("not_found")));
    for path in ["/predict", "/v1/predict"] {
        let (status, headers, body) = answer(&app, Request::get(path).body(Body::empty()).unwrap()).await;
        assert_eq!((status, &body["error"]), (StatusCode::METHOD_NOT_ALLOWED, &json!("method_not_allowed")), "{path}");
        assert_eq!(headers[header::ALLOW], "POST", "{path}");
    }
    let (status, _, _) = answer(&app, Request::get("/healthz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_bodies_get_a_named_code_and_field() {
    let (app, _) = app(false);
    let flight = |f: Value| json!({ "flights": [f] }).to_string();
    for (content_type, body, status, error, field) in [
        ("text/plain", flight(json!({})), StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
        ("application/json", "{\"flights\": [".into(), StatusCode::BAD_REQUEST, "invalid_json", None),
        ("application/json", "[]".into(), StatusCode::BAD_REQUEST, "invalid_json", None),
        ("application/json", "{}".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("flights")),
        ("application/json", "{\"flights\": []}".into(), StatusCode::BAD_REQUEST, "invalid_request", Some("flights")),
        (
            "application/json",
            flight(json!({"OPERA": "Grupo LATAM", "TIPOVUELO": "N", "MES": 13})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("flights[0].MES"),
        ),
        (
            "application/json",
            flight(json!({"OPERA": "Nobody Air", "TIPOVUELO": "N", "MES": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("flights[0].OPERA"),
        ),
        (
            "application/json",
            flight(json!({"OPERA": "Grupo LATAM", "TIPOVUELO": ["N"], "MES": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            Some("flights[0].TIPOVUELO"),
        ),
        ("application/json", " ".repeat(BODY_LIMIT + 1), StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
    ] {
        let (got, _, answer) = answer(&app, post("/v1/predict", content_type, body.clone())).await;
        let what = format!("{content_type} {body:.60}: {answer}");
        assert_eq!((got, answer["error"].as_str()), (status, Some(error)), "{what}");
        assert_eq!(answer["field"].as_str(), field, "{what}");
    }
}
