//! OpenAPI 3.1 documents, generated from the code: each service registers its handlers with
//! `utoipa_axum::routes!` on an [`OpenApiRouter`](utoipa_axum::router::OpenApiRouter) (route and
//! description in one place), and [`crate::server::app`] adds what every service shares — the
//! `ApiError` schema with its `error` codes, the health, readiness, metrics and `/openapi.json`
//! endpoints, the auth schemes as this process is configured (Bearer API key or JWT, `X-API-Key`)
//! with their 401/403, and the guards' 429/503 with `Retry-After` — then serves the result at
//! `GET /openapi.json`. [`check`] holds what the services' tests use to prove the document valid and
//! complete.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::{OpenApi, RefOr};

use crate::auth::Auth;
use crate::config::HttpLimits;
use crate::server::ApiError;

/// Every `error` code an [`ApiError`] carries, with what it means. A service test
/// ([`check::undocumented_error_codes`]) fails when its source uses a code missing here.
pub const ERROR_CODES: &[(&str, &str)] = &[
    ("invalid_request", "a parameter or field is invalid; `field` names it"),
    ("invalid_query", "the query string cannot be decoded"),
    ("invalid_json", "the body is not the JSON expected"),
    ("invalid_body", "the body could not be read"),
    ("body_too_large", "the body is larger than the service's limit"),
    ("too_many_records", "the body holds more records than the service's limit"),
    ("body_timeout", "the body did not arrive within the body read timeout"),
    ("unsupported_media_type", "the Content-Type is not one this operation takes"),
    ("unauthenticated", "no usable credential (missing, malformed, expired, badly signed)"),
    ("forbidden", "a valid credential that is not allowed here"),
    ("not_found", "no such route"),
    ("method_not_allowed", "the route does not take this method; `Allow` lists those it does"),
    ("invalid_id", "the id in the path is not a flight id"),
    ("flight_not_found", "no flight has this id"),
    ("updates_not_enabled", "the pipeline identifies records by content: there is nothing to replace"),
    ("rate_limited", "this client is over its rate limit"),
    ("overloaded", "the service is at its concurrency limit"),
    ("request_timeout", "the request took longer than the request timeout"),
    ("fault_injected", "the fault switch (FLIGHTLINE_FAULT_ERROR_RATIO) failed this request"),
    ("kafka_unavailable", "Kafka did not take the records"),
    ("clickhouse_unavailable", "the flight store did not answer"),
    ("clickhouse_timeout", "the flight store did not answer in time"),
    ("result_too_large", "the answer would exceed the service's result limit"),
    ("internal", "an unexpected failure inside the service"),
    ("internal_error", "the answer was lost inside the service; retry"),
];

impl utoipa::PartialSchema for ApiError {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str| {
            ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).description(Some(description))
        };
        let codes = ERROR_CODES.iter().map(|(code, meaning)| format!("`{code}`: {meaning}")).collect::<Vec<_>>();
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Object))
            .description(Some("An error: what went wrong in words, and which parameter or field when one is at fault."))
            .property(
                "error",
                string(&format!("What kind of error, one of: {}.", codes.join("; ")))
                    .enum_values(Some(ERROR_CODES.iter().map(|(code, _)| *code))),
            )
            .required("error")
            .property("message", string("The error in words."))
            .required("message")
            .property("field", string("The parameter or body field at fault, when there is one."))
            .property(
                "details",
                ObjectBuilder::new()
                    .schema_type(SchemaType::AnyValue)
                    .description(Some("More about the error (ingest: the per-record errors).")),
            )
            .into()
    }
}

impl utoipa::ToSchema for ApiError {}

/// One flight record as ingest takes it in JSON: the data set's columns ([`crate::flight::COLUMNS`])
/// as text or numbers, as `RawRecord::validate` checks them. What JSON Schema cannot say is in
/// the descriptions: `DIA`, `MES` and `AÑO` must be the date of `Fecha-O`, and the 256-byte limit
/// is in UTF-8 bytes (`maxLength` counts characters).
pub struct FlightRecord;

impl utoipa::PartialSchema for FlightRecord {
    fn schema() -> RefOr<Schema> {
        use crate::flight::{COLUMNS, FIRST_DATETIME, LAST_DATETIME, MAX_FIELD_BYTES, REQUIRED};
        let max = MAX_FIELD_BYTES;
        let text = || {
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .max_length(Some(max))
                .pattern(Some("^[^\\u0000-\\u001f\\u007f]*$"))
        };
        let number = || ObjectBuilder::new().schema_type(SchemaType::Type(Type::Number));
        let either = |text: ObjectBuilder, number: ObjectBuilder, description: String| -> RefOr<Schema> {
            utoipa::openapi::schema::AnyOfBuilder::new().item(text).item(number).description(Some(description)).into()
        };
        let mut record = ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Object))
            .description(Some(format!(
                "One flight: the data set's columns by name, each text (at most {max} bytes of UTF-8, no control \
                 characters, surrounding spaces ignored) or a number (taken as its text). Unknown columns are \
                 refused. `DIA`, `MES` and `AÑO` must be the date of `Fecha-O`."
            )))
            .additional_properties(Some(utoipa::openapi::schema::AdditionalProperties::FreeForm(false)));
        for column in COLUMNS {
            let schema = match column {
                "Fecha-I" | "Fecha-O" => text()
                    .pattern(Some(
                        "^ *(19[7-9][0-9]|20[0-9][0-9]|2100)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01]) \
                         ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9] *$",
                    ))
                    .description(Some(format!(
                        "{} time, YYYY-MM-DD HH:MM:SS (local), from {FIRST_DATETIME} to {LAST_DATETIME}.",
                        if column == "Fecha-I" { "Scheduled" } else { "Operated" }
                    )))
                    .into(),
                "DIA" | "MES" | "AÑO" => {
                    // As text: what `str::parse::<u16>` reads as a number in the range.
                    let (min, max, what, digits) = match column {
                        "DIA" => (1, 31, "day", "^ *[+]?0*([1-9]|[12][0-9]|3[01]) *$"),
                        "MES" => (1, 12, "month", "^ *[+]?0*([1-9]|1[0-2]) *$"),
                        _ => (1970, 2100, "year", "^ *[+]?0*(19[7-9][0-9]|20[0-9][0-9]|2100) *$"),
                    };
                    let digits = ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).pattern(Some(digits));
                    let whole = ObjectBuilder::new()
                        .schema_type(SchemaType::Type(Type::Integer))
                        .minimum(Some(min))
                        .maximum(Some(max));
                    either(digits, whole, format!("The {what} of `Fecha-O`, {min} to {max} (a number or its digits)."))
                }
                "TIPOVUELO" => ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .enum_values(Some(["I", "N"]))
                    .description(Some("I (international) or N (national)."))
                    .into(),
                _ => either(text(), number(), format!("Text of at most {max} bytes, or a number.")),
            };
            record = record.property(column, schema);
        }
        for column in REQUIRED {
            record = record.required(column);
        }
        record.into()
    }
}

impl utoipa::ToSchema for FlightRecord {}

/// A JSON body of ingest: one [`FlightRecord`] or an array of them (each validated on its own).
pub struct FlightRecords;

impl utoipa::PartialSchema for FlightRecords {
    fn schema() -> RefOr<Schema> {
        let record = || utoipa::openapi::Ref::from_schema_name("FlightRecord");
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(record())
            .item(utoipa::openapi::schema::ArrayBuilder::new().items(record()))
            .description(Some(
                "One flight, or an array of flights (at most the pipeline's `maxRecords`, 100,000 by default). \
                 Each record is validated on its own: the valid ones are stored, the others reported.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for FlightRecords {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push(("FlightRecord".into(), <FlightRecord as utoipa::PartialSchema>::schema()));
    }
}

/// A response header every refusal that may be retried carries.
fn retry_after() -> Value {
    json!({
        "description": "Seconds to wait before retrying.",
        "required": true,
        "schema": { "type": "integer", "minimum": 1 }
    })
}

fn error_response(description: &str, retry: bool) -> Value {
    let mut response = json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } }
    });
    if retry {
        response["headers"] = json!({ "Retry-After": retry_after() });
    }
    response
}

/// Every response of every operation of a path item.
fn responses_of(item: &mut Value) -> Vec<&mut Value> {
    item.as_object_mut()
        .into_iter()
        .flatten()
        .filter(|(method, _)| METHODS.contains(&method.as_str()))
        .filter_map(|(_, op)| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|responses| responses.values_mut())
        .collect()
}

/// `(path, method)` of every operation in `doc`, methods lower case as OpenAPI writes them.
pub fn operations(doc: &OpenApi) -> BTreeSet<(String, String)> {
    let value = serde_json::to_value(&doc.paths).expect("paths serialize");
    value
        .get("paths")
        .unwrap_or(&value)
        .as_object()
        .into_iter()
        .flatten()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flatten()
                .filter(|(method, _)| METHODS.contains(&method.as_str()))
                .map(move |(method, _)| (path.clone(), method.clone()))
        })
        .collect()
}

const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

/// The whole document: `doc` (the service's own operations and the shared endpoints) plus what
/// the guards in front of `guarded` operations answer, and the auth schemes `auth` accepts.
pub(crate) fn complete(
    service: &str,
    doc: OpenApi,
    guarded: &BTreeSet<(String, String)>,
    auth: Option<&Auth>,
    limits: &HttpLimits,
    fault_switch: bool,
) -> Value {
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    // A plain `Router` turned into an `OpenApiRouter` carries utoipa-axum's own name.
    if doc["info"]["title"].as_str().is_none_or(|title| title.is_empty() || title == "utoipa-axum") {
        doc["info"]["title"] = json!(format!("flightline-{service}"));
    }
    if doc["info"]["version"].as_str().is_none_or(str::is_empty) {
        doc["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    }
    // Handlers write `headers(("Retry-After" = u32))`; the header is always sent with them.
    for response in doc["paths"].as_object_mut().into_iter().flat_map(|p| p.values_mut()).flat_map(responses_of) {
        if let Some(header) = response.get_mut("headers").and_then(|h| h.get_mut("Retry-After")) {
            *header = retry_after();
        }
    }
    let schemes = auth.map(security_schemes);
    let components = doc.as_object_mut().expect("an object").entry("components").or_insert_with(|| json!({}));
    let schemas = components.as_object_mut().expect("an object").entry("schemas").or_insert_with(|| json!({}));
    schemas["ApiError"] = serde_json::to_value(<ApiError as utoipa::PartialSchema>::schema()).expect("serializes");
    if let Some(schemes) = &schemes {
        components["securitySchemes"] = Value::Object(schemes.clone());
    }
    for (path, method) in guarded {
        let Some(operation) = doc["paths"][path.as_str()][method.as_str()].as_object_mut() else { continue };
        let takes_body = operation.contains_key("requestBody");
        let responses = operation.entry("responses").or_insert_with(|| json!({}));
        if schemes.is_some() {
            add_response(
                responses,
                "401",
                "`unauthenticated`: no usable credential (missing, malformed, expired, not yet valid, a required \
                 claim missing, badly signed); with `WWW-Authenticate: Bearer`.",
                false,
            );
            responses["401"]["headers"]["WWW-Authenticate"] = json!({
                "description": "The scheme to authenticate with.",
                "required": true,
                "schema": { "type": "string", "const": "Bearer" }
            });
            add_response(
                responses,
                "403",
                "`forbidden`: an unknown API key, or a token for another issuer or audience.",
                false,
            );
        }
        let mut add =
            |status: &str, description: &str, retry: bool| add_response(responses, status, description, retry);
        if limits.requests_per_second > 0 {
            add(
                "429",
                &format!(
                    "`rate_limited`: more than {} requests per second (burst {}) from this client (its API key or \
                     token subject, else its address).",
                    limits.requests_per_second, limits.burst
                ),
                true,
            );
        }
        let mut unavailable = format!(
            "`overloaded`: {} requests in flight already; `request_timeout`: the request took longer than {} s.",
            limits.max_concurrent_requests, limits.request_timeout_seconds
        );
        if fault_switch {
            unavailable.push_str(" `fault_injected`: a drill's fault switch failed it.");
        }
        add("503", &unavailable, true);
        if takes_body {
            add(
                "408",
                &format!("`body_timeout`: the body did not arrive within {} s.", limits.body_read_timeout_seconds),
                false,
            );
        }
        if let Some(schemes) = &schemes {
            let either = schemes.keys().map(|name| json!({ name.as_str(): [] })).collect();
            operation.insert("security".into(), Value::Array(either));
        }
    }
    doc
}

/// Adds a guard's error response to an operation's `responses`; when the handler documents the
/// same status, one response names both reasons.
fn add_response(responses: &mut Value, status: &str, description: &str, retry: bool) {
    match responses.get_mut(status) {
        Some(own) => {
            let text = own["description"].as_str().unwrap_or_default().to_string();
            own["description"] = json!(format!("{text} {description}").trim());
            if retry {
                own["headers"]["Retry-After"] = retry_after();
            }
        }
        None => responses[status] = error_response(description, retry),
    }
}

/// The schemes the configured auth accepts, by the name operations refer to them with.
fn security_schemes(auth: &Auth) -> Map<String, Value> {
    let mut schemes = Map::new();
    let what = match (&auth.keys, &auth.jwt) {
        (Some(_), Some(_)) => "an API key or a JSON Web Token (HS256 or RS256)",
        (Some(_), None) => "an API key",
        (None, _) => "a JSON Web Token (HS256 or RS256)",
    };
    schemes.insert(
        "bearer".into(),
        json!({
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": if auth.keys.is_some() { "API key or JWT" } else { "JWT" },
            "description": format!("`Authorization: Bearer <credential>`: {what}.")
        }),
    );
    schemes.insert(
        "apiKey".into(),
        json!({
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": format!("`X-API-Key: <credential>`: {what}; not read when `Authorization` is sent.")
        }),
    );
    schemes
}

/// What the services' tests check the document and the router with.
pub mod check {
    use std::collections::BTreeSet;
    use std::path::Path;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    /// What is wrong with `doc` as an OpenAPI 3.1 document: the version, every operation with an
    /// `operationId` (unique) and documented responses with descriptions, every status a valid
    /// code, every path parameter declared, every `$ref` resolving, every security requirement
    /// naming a declared scheme. Empty when none.
    pub fn problems(doc: &Value) -> Vec<String> {
        let mut problems = Vec::new();
        if doc["openapi"] != "3.1.0" {
            problems.push(format!("openapi is {}, not 3.1.0", doc["openapi"]));
        }
        for field in ["title", "version"] {
            if doc["info"][field].as_str().is_none_or(str::is_empty) {
                problems.push(format!("info.{field} is empty"));
            }
        }
        let mut ids = BTreeSet::new();
        let schemes = doc["components"]["securitySchemes"].as_object().cloned().unwrap_or_default();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            if !path.starts_with('/') {
                problems.push(format!("{path}: does not start with /"));
            }
            for (method, op) in item.as_object().into_iter().flatten() {
                let at = format!("{} {path}", method.to_uppercase());
                match op["operationId"].as_str() {
                    Some(id) if ids.insert(id.to_string()) => {}
                    Some(id) => problems.push(format!("{at}: operationId {id} is used twice")),
                    None => problems.push(format!("{at}: no operationId")),
                }
                let responses = op["responses"].as_object().cloned().unwrap_or_default();
                if responses.is_empty() {
                    problems.push(format!("{at}: no responses"));
                }
                for (status, response) in &responses {
                    let valid = status.len() == 3 && status.parse::<u16>().is_ok_and(|s| (100..600).contains(&s))
                        || status == "default";
                    if !valid {
                        problems.push(format!("{at}: {status} is not a status code"));
                    }
                    if response.get("$ref").is_none() && response["description"].as_str().is_none() {
                        problems.push(format!("{at} {status}: no description"));
                    }
                }
                let declared: BTreeSet<&str> = op["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|p| p["in"] == "path")
                    .filter_map(|p| p["name"].as_str())
                    .collect();
                for name in path.split('{').skip(1).filter_map(|rest| rest.split_once('}').map(|(name, _)| name)) {
                    if !declared.contains(name) {
                        problems.push(format!("{at}: path parameter {name} is not declared"));
                    }
                }
                for requirement in op["security"].as_array().into_iter().flatten() {
                    for name in requirement.as_object().into_iter().flatten().map(|(name, _)| name) {
                        if !schemes.contains_key(name) {
                            problems.push(format!("{at}: security scheme {name} is not declared"));
                        }
                    }
                }
            }
        }
        let mut refs = Vec::new();
        collect_refs(doc, &mut refs);
        for reference in refs {
            let resolves = reference.strip_prefix('#').is_some_and(|pointer| doc.pointer(pointer).is_some());
            if !resolves {
                problems.push(format!("$ref {reference} does not resolve"));
            }
        }
        problems
    }

    fn collect_refs(value: &Value, refs: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(reference)) = map.get("$ref") {
                    refs.push(reference.clone());
                }
                map.values().for_each(|v| collect_refs(v, refs));
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
            _ => {}
        }
    }

    /// Paths a router serves that `doc` does not describe, as `METHOD path`. Candidates: the
    /// documented paths and every string literal that looks like a path (`"/…"`) in the `.rs` files
    /// under `sources` (a route added with plain `.route(...)` beside the documented ones shows up
    /// here); `{param}` segments are tried with `x`. A route exists when the router answers
    /// neither axum's 405 (`method_not_allowed`) nor its fallback's 404 `no such route`.
    pub async fn undocumented_routes(app: Router, doc: &Value, sources: &[&Path]) -> Vec<String> {
        let mut candidates: BTreeSet<String> =
            doc["paths"].as_object().into_iter().flatten().map(|(p, _)| p.clone()).collect();
        for dir in sources {
            for file in rust_files(dir) {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for literal in text.split('"').skip(1).step_by(2) {
                    let path_like = literal.starts_with('/')
                        && literal.len() > 1
                        && literal.chars().all(|c| c.is_ascii_alphanumeric() || "/_-.{}".contains(c));
                    if path_like {
                        candidates.insert(literal.to_string());
                    }
                }
            }
        }
        let mut undocumented = Vec::new();
        for path in candidates {
            let concrete: String = path
                .split('/')
                .map(|segment| if segment.starts_with('{') { "x" } else { segment })
                .collect::<Vec<_>>()
                .join("/");
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
                let request = Request::builder().method(method).uri(&concrete).body(Body::empty()).expect("a request");
                let response = app.clone().oneshot(request).await.expect("infallible");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap_or_default();
                // axum's own 405 is `method_not_allowed` (a handler's 405, such as ingest's PUT, has its own code).
                let text = String::from_utf8_lossy(&body);
                let unrouted = (status == StatusCode::METHOD_NOT_ALLOWED && text.contains("\"method_not_allowed\""))
                    || (status == StatusCode::NOT_FOUND && text.contains("no such route"));
                let documented = doc["paths"][path.as_str()][method.to_lowercase()].is_object();
                if !unrouted && !documented {
                    undocumented.push(format!("{method} {path} ({status})"));
                }
                if unrouted && documented {
                    undocumented.push(format!("{method} {path} is documented but not routed ({status})"));
                }
            }
        }
        undocumented
    }

    fn rust_files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(rust_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }

    /// `error` codes used in calls of `ApiError::new` (a status, then the code) under `sources` that
    /// [`super::ERROR_CODES`] does not list.
    pub fn undocumented_error_codes(sources: &[&Path]) -> Vec<String> {
        let known: BTreeSet<&str> = super::ERROR_CODES.iter().map(|(code, _)| *code).collect();
        let mut missing = BTreeSet::new();
        for dir in sources {
            for file in rust_files(dir) {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                for call in text.split("ApiError::new(").skip(1) {
                    // The code is the first string literal after the status argument.
                    let Some((_, after_status)) = call.split_once(',') else { continue };
                    let Some(code) = after_status.trim_start().strip_prefix('"').and_then(|s| s.split('"').next())
                    else {
                        continue;
                    };
                    if !known.contains(code) {
                        missing.insert(format!("{code} ({})", file.display()));
                    }
                }
            }
        }
        missing.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use axum::http::StatusCode;
    use serde_json::json;
    use tower::ServiceExt;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;

    use super::*;
    use crate::auth::{ApiKeys, Jwt, hash_key};
    use crate::server::{ReadyCheck, Telemetry, app};

    /// A documented route as a service writes one.
    #[utoipa::path(
        post,
        path = "/v1/things/{id}",
        params(("id" = String, Path, description = "Which thing")),
        request_body(content = String, content_type = "text/plain"),
        responses(
            (status = 200, description = "Done.", body = String, content_type = "text/plain"),
            (status = 503, description = "`kafka_unavailable`: try again.", body = ApiError,
             headers(("Retry-After" = u32, description = "Seconds"))),
        )
    )]
    async fn thing() -> &'static str {
        "done"
    }

    async fn served(auth: Option<Auth>, limits: HttpLimits) -> (axum::Router, Value) {
        let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        let routes = OpenApiRouter::new().routes(routes!(thing));
        let app = app(routes, Telemetry::new("test"), ready, auth.map(Arc::new), limits);
        let request = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (app, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn guarded_operations_get_the_guards_answers_and_the_configured_auth() {
        let jwt = Jwt::new("HS256", "a-shared-secret-of-at-least-32-bytes!", None, None).unwrap();
        let (_, doc) = served(Some(Auth { keys: None, jwt: Some(jwt) }), HttpLimits::QUERY).await;
        assert_eq!(check::problems(&doc), Vec::<String>::new());
        oas3::from_json(doc.to_string()).expect("oas3 parses it");
        let op = &doc["paths"]["/v1/things/{id}"]["post"];
        let statuses: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert_eq!(statuses, ["200", "401", "403", "408", "429", "503"]);
        // The handler's own 503 and the guards' share one response.
        let unavailable = op["responses"]["503"]["description"].as_str().unwrap();
        assert!(unavailable.contains("kafka_unavailable") && unavailable.contains("overloaded"), "{unavailable}");
        assert_eq!(op["responses"]["503"]["headers"]["Retry-After"], retry_after());
        assert_eq!(op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"], true);
        assert!(op["responses"]["429"]["description"].as_str().unwrap().contains("1000 requests per second"));
        assert_eq!(op["security"], json!([{"apiKey": []}, {"bearer": []}]));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(
            (&schemes["bearer"]["scheme"], &schemes["bearer"]["bearerFormat"]),
            (&json!("bearer"), &json!("JWT"))
        );
        assert_eq!((&schemes["apiKey"]["in"], &schemes["apiKey"]["name"]), (&json!("header"), &json!("X-API-Key")));
        for path in ["/healthz", "/readyz", "/metrics", "/openapi.json"] {
            let op = &doc["paths"][path]["get"];
            assert!(op.get("security").is_none() && op["responses"].get("401").is_none(), "{path} is open");
        }
        assert_eq!(doc["paths"]["/metrics"]["get"]["responses"]["503"]["headers"]["Retry-After"], retry_after());
    }

    #[tokio::test]
    async fn without_auth_or_rate_limit_neither_is_documented() {
        let limits = HttpLimits { requests_per_second: 0, ..HttpLimits::QUERY };
        let (app, doc) = served(None, limits).await;
        let responses = &doc["paths"]["/v1/things/{id}"]["post"]["responses"];
        assert!(["401", "403", "429"].iter().all(|s| responses.get(s).is_none()), "{responses}");
        assert!(doc["components"].get("securitySchemes").is_none());
        assert_eq!(doc["info"]["title"], "flightline-test");
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        // Only this test's route and the shared ones: every path literal of this crate is either
        // one of them or not routed.
        assert_eq!(check::undocumented_routes(app, &doc, &[src]).await, Vec::<String>::new());
        let keys = Auth { keys: Some(ApiKeys::parse(&hash_key("k")).unwrap()), jwt: None };
        let (_, doc) = served(Some(keys), limits).await;
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["bearerFormat"], "API key or JWT");
    }

    #[tokio::test]
    async fn a_plain_route_beside_the_documented_ones_is_found() {
        let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        let routes =
            OpenApiRouter::new().routes(routes!(thing)).route("/v1/hidden", axum::routing::get(|| async { "hidden" }));
        let app = app(routes, Telemetry::new("test"), ready, None, HttpLimits::QUERY);
        let doc: Value = {
            let request = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
            let body = app.clone().oneshot(request).await.unwrap().into_body();
            serde_json::from_slice(&axum::body::to_bytes(body, 1 << 20).await.unwrap()).unwrap()
        };
        let dir = std::env::temp_dir().join(format!("openapi-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("main.rs"), r#"let r = Router::new().route("/v1/hidden", get(h));"#).unwrap();
        let found = check::undocumented_routes(app, &doc, &[&dir]).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("GET /v1/hidden"), "{found:?}");
    }

    #[test]
    fn every_error_code_this_crate_uses_is_in_the_schema_and_strays_are_found() {
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        assert_eq!(check::undocumented_error_codes(&[src]), Vec::<String>::new());
        let dir = std::env::temp_dir().join(format!("openapi-codes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("x.rs"), "ApiError::new(\n    StatusCode::CONFLICT,\n    \"conflict\",\n    \"m\")")
            .unwrap();
        let missing = check::undocumented_error_codes(&[&dir]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(missing.len(), 1);
        assert!(missing[0].starts_with("conflict"), "{missing:?}");
    }

    /// A FlightRecord property's pattern (the string branch of an `anyOf`, or the schema itself).
    fn record_pattern(column: &str) -> regex::Regex {
        let record = serde_json::to_value(<FlightRecord as utoipa::PartialSchema>::schema()).unwrap();
        let property = &record["properties"][column];
        let pattern = property["pattern"].as_str().or(property["anyOf"][0]["pattern"].as_str()).unwrap();
        regex::Regex::new(pattern).unwrap()
    }

    proptest::proptest! {
        /// Fecha-I/Fecha-O as text match the pattern exactly when validation takes the date, except
        /// days past a month's end (a pattern cannot know February's length in every year; the
        /// description says so): the pattern may only be wider than the parser.
        #[test]
        fn prop_record_date_pattern_is_the_parser_up_to_month_lengths(
            text in "[ ]?(19[0-9]{2}|20[0-9]{2}|21[0-9]{2})-[0-1][0-9]-[0-3][0-9] [0-2][0-9]:[0-6][0-9]:[0-6][0-9][ ]?"
        ) {
            let parsed = crate::flight::parse_datetime(text.trim())
                .filter(|t| t.epoch >= 0 && t.year <= 2100);
            let matched = record_pattern("Fecha-O").is_match(&text);
            proptest::prop_assert!(matched || parsed.is_none(), "{text}: taken but refused by the pattern");
            let day: u8 = text.trim()[8..10].parse().unwrap();
            if day <= 28 {
                proptest::prop_assert_eq!(matched, parsed.is_some(), "{}", text);
            }
        }

        /// DIA, MES and AÑO as text match their patterns exactly when `u16` parsing gives a number in range.
        #[test]
        fn prop_record_number_patterns_are_the_parser(text in "[ ]?[+-]?0{0,2}[0-9]{1,4}[ ]?|[ 0-9a+]{0,5}") {
            for (column, range) in [("DIA", 1..=31u16), ("MES", 1..=12), ("AÑO", 1970..=2100)] {
                let taken = text.trim().parse::<u16>().is_ok_and(|n| range.contains(&n));
                proptest::prop_assert_eq!(record_pattern(column).is_match(&text), taken, "{} {}", column, text);
            }
        }
    }

    #[test]
    fn problems_are_named() {
        let doc = json!({
            "openapi": "3.0.3",
            "info": {"title": "", "version": "1"},
            "paths": {
                "/a/{id}": {"get": {"operationId": "a", "responses": {"2000": {"description": "x"}},
                                    "security": [{"nope": []}]}},
                "/b": {"get": {"operationId": "a", "responses": {"200": {"$ref": "#/components/responses/Missing"}}}}
            }
        });
        let problems = check::problems(&doc);
        for expected in [
            "openapi is \"3.0.3\", not 3.1.0",
            "info.title is empty",
            "GET /a/{id}: 2000 is not a status code",
            "GET /a/{id}: path parameter id is not declared",
            "GET /a/{id}: security scheme nope is not declared",
            "GET /b: operationId a is used twice",
            "$ref #/components/responses/Missing does not resolve",
        ] {
            assert!(problems.iter().any(|p| p == expected), "{expected} not in {problems:?}");
        }
    }
}
