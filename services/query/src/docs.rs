//! The OpenAPI description of query's routes, from the code that parses them: the query
//! parameters (`IntoParams` for the request types, built from `FILTER_PARAMS`, `Dimension::ALL`
//! and the limits), the page's shape, and the router that registers each handler with its
//! `#[utoipa::path]` (`utoipa_axum::routes!`), so routes and document cannot drift.

use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Object, RefOr, Required, Schema};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use crate::flights::{FlightOut, FlightsRequest};
use crate::params::FILTER_PARAMS;
use crate::stats::{Dimension, MAX_DIMENSIONS, STATS_MAX_LIMIT, StatsRequest};

#[derive(OpenApi)]
#[openapi(
    info(description = "Stored flights and delay statistics, read from ClickHouse deduplicated (`FINAL`: one row \
        per identity, its newest version) and served through a result cache within the pipeline's freshness bound \
        (`Age`, `X-Flightline-Data-Age-Ms`). JSON, or CSV with `Accept: text/csv`."),
    tags((name = "query", description = "Flights and statistics"), (name = "operations", description = "Health, metrics, this document"))
)]
struct ApiDoc;

/// The service's routes, each with its OpenAPI description; `limit` of `GET /v1/flights` has this
/// deployment's `max_rows` as its maximum.
pub(crate) fn routes(state: AppState) -> OpenApiRouter {
    let max_rows = state.max_rows;
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(crate::flights::flights))
        .routes(routes!(crate::flights::flight))
        .routes(routes!(crate::stats::delays))
        .with_state(state);
    let flights = router.get_openapi_mut().paths.paths.get_mut("/v1/flights").and_then(|p| p.get.as_mut());
    for parameter in flights.and_then(|op| op.parameters.as_mut()).into_iter().flatten() {
        if parameter.name == "limit"
            && let Some(RefOr::T(Schema::Object(limit))) = parameter.schema.as_mut()
        {
            limit.maximum = Some(max_rows.into());
        }
    }
    router
}

/// The dates `parse_bound` takes, as a pattern: `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`, a real
/// calendar date (29 February in leap years only) whose seconds since 1970 fit in a `u32`: up to
/// 2106-02-07 06:28:15, where a bare date as `to` (its whole day) must end by then too.
pub(crate) fn date_pattern(to: bool) -> String {
    const TIME: &str = " ([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]";
    const YEAR: &str = "(19[7-9][0-9]|20[0-9][0-9]|210[0-5])";
    const MONTH_DAY: &str =
        "((0[13578]|1[02])-(0[1-9]|[12][0-9]|3[01])|(0[469]|11)-(0[1-9]|[12][0-9]|30)|02-(0[1-9]|1[0-9]|2[0-8]))";
    const LEAP_YEAR: &str = "(19(7[26]|8[048]|9[26])|20([02468][048]|[13579][26])|2104)";
    // The last second a u32 holds: 2106-02-07 06:28:15.
    const LAST_TIME: &str = " (0[0-5]:[0-5][0-9]:[0-5][0-9]|06:([01][0-9]|2[0-7]):[0-5][0-9]|06:28:(0[0-9]|1[0-5]))";
    let last_day = if to { format!("2106-02-07{LAST_TIME}") } else { format!("2106-02-07({LAST_TIME})?") };
    format!(
        "^(({YEAR}-{MONTH_DAY}|{LEAP_YEAR}-02-29|2106-01-(0[1-9]|[12][0-9]|3[01])|2106-02-0[1-6])({TIME})?|{last_day})$"
    )
}

/// `short_text`: 1 to 100 bytes, no control character (`char::is_control`: U+0000–U+001F,
/// U+007F–U+009F). `maxLength` counts characters, so a value of many multi-byte characters may
/// still be refused.
const SHORT_TEXT_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$";

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).pattern(Some(pattern))
}

fn whole(min: u32, max: u32) -> Object {
    ObjectBuilder::new().schema_type(SchemaType::Type(Type::Integer)).minimum(Some(min)).maximum(Some(max)).build()
}

fn parameter(name: &str, required: bool, description: &str, schema: impl Into<RefOr<Schema>>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(if required { Required::True } else { Required::False })
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// The filters both GET endpoints share (`Filters::parse`), in `FILTER_PARAMS` order.
fn filters() -> Vec<Parameter> {
    FILTER_PARAMS
        .iter()
        .map(|name| match *name {
            "from" => parameter(
                name,
                false,
                "Flights scheduled at or after this time: YYYY-MM-DD or YYYY-MM-DD HH:MM:SS (1970-01-01 to 2106-02-07 \
                 06:28:15); not after `to`.",
                string(&date_pattern(false)),
            ),
            "to" => parameter(
                name,
                false,
                "Flights scheduled at or before this time; a bare date includes that whole day.",
                string(&date_pattern(true)),
            ),
            "airline" | "origin" | "destination" => {
                let what = match *name {
                    "airline" => "Airline (OPERA or Emp-I), exact",
                    "origin" => "Origin airport (Ori-I), exact",
                    _ => "Destination (Des-I or SIGLADES), exact",
                };
                let text = string(SHORT_TEXT_PATTERN).min_length(Some(1)).max_length(Some(100));
                parameter(name, false, &format!("{what}: 1 to 100 bytes, no control characters."), text)
            }
            "type" => parameter(
                name,
                false,
                "I (international) or N (national).",
                ObjectBuilder::new().schema_type(SchemaType::Type(Type::String)).enum_values(Some(["I", "N"])),
            ),
            "delayed" => parameter(
                name,
                false,
                "Only flights that left more than 15 minutes late (true) or not (false).",
                ObjectBuilder::new().schema_type(SchemaType::Type(Type::Boolean)),
            ),
            other => unreachable!("a filter without a description: {other}"),
        })
        .collect()
}

/// A cursor `Cursor::encode` writes: `<epoch seconds>.<record id>`, or `<epoch seconds>-<hex>`
/// for an id of other text (up to 1 KiB).
const CURSOR_PATTERN: &str = "^[0-9]{1,10}([.][0-9a-f]{32}|-([0-9a-f]{2}){0,1024})$";

impl IntoParams for FlightsRequest {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let mut parameters = filters();
        parameters.push(parameter(
            "limit",
            false,
            "Flights per page (default 100; at most the pipeline's `maxRows`).",
            whole(1, 10_000),
        ));
        parameters.push(parameter(
            "cursor",
            false,
            "Where the page starts: the `next_cursor` of the previous page (or its `X-Next-Cursor` in CSV).",
            string(CURSOR_PATTERN),
        ));
        parameters
    }
}

impl IntoParams for StatsRequest {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        let names = Dimension::ALL.map(Dimension::name).join("|");
        let by = format!("^({names})(,({names})){{0,{}}}$", MAX_DIMENSIONS - 1);
        let mut parameters = vec![parameter(
            "by",
            true,
            &format!(
                "One to {MAX_DIMENSIONS} dimensions, comma-separated, each once: columns (airline, month, destination, \
                 period_day, type, high_season) or time buckets of the scheduled time (day, week, year_month, \
                 hour_of_day)."
            ),
            string(&by),
        )];
        parameters.extend(filters());
        parameters.push(parameter(
            "limit",
            false,
            &format!("Groups listed (default 1,000; at most {STATS_MAX_LIMIT}); `truncated` says when more exist."),
            whole(1, STATS_MAX_LIMIT),
        ));
        parameters
    }
}

/// A page of `GET /v1/flights` as `page_json` writes it.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct FlightPage {
    /// At most `limit` flights, sorted by scheduled time and id.
    flights: Vec<FlightOut>,
    /// The `cursor` of the next page; `null` on the last.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::StatusCode;
    use flightline_service::auth::{ApiKeys, Auth, hash_key};
    use flightline_service::config::HttpLimits;
    use flightline_service::openapi::check;
    use flightline_service::server::{self, ReadyCheck, Telemetry};
    use proptest::prelude::*;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::cache::{Cache, Limits, Metrics};

    /// The app as `main` builds it, against a ClickHouse that is not there (no route here needs it
    /// to answer), with `maxRows` 500.
    fn app(keys: bool) -> axum::Router {
        let state = AppState {
            clickhouse: clickhouse::Client::default().with_url("http://127.0.0.1:9"),
            table: "`d`.`t`".into(),
            max_rows: 500,
            call_timeout: Duration::from_secs(2),
            cache: Cache::new(
                Limits { freshness: Duration::ZERO, max_entries: 1, max_bytes: 1 << 20 },
                Metrics::default(),
            ),
        };
        let auth = keys.then(|| Arc::new(Auth { keys: Some(ApiKeys::parse(&hash_key("k")).unwrap()), jwt: None }));
        let ready: ReadyCheck = Arc::new(|| Box::pin(async { Ok(()) }));
        server::app(routes(state), Telemetry::new("query"), ready, auth, HttpLimits::QUERY)
    }

    async fn document(app: axum::Router) -> Value {
        let request = axum::http::Request::get("/openapi.json").body(axum::body::Body::empty()).unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "/openapi.json needs no credential");
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap()).unwrap()
    }

    fn names(op: &Value) -> Vec<&str> {
        op["parameters"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect()
    }

    fn parameter<'a>(op: &'a Value, name: &str) -> &'a Value {
        op["parameters"].as_array().unwrap().iter().find(|p| p["name"] == name).unwrap()
    }

    #[tokio::test]
    async fn the_document_is_openapi_3_1_and_describes_the_parameters_the_code_takes() {
        let doc = document(app(true)).await;
        assert_eq!(check::problems(&doc), Vec::<String>::new());
        let parsed = oas3::from_json(doc.to_string()).expect("an OpenAPI 3.1 document (oas3)");
        assert_eq!(parsed.validate_version().unwrap().to_string(), "3.1.0");
        assert_eq!(doc["info"]["title"], "flightline-query");
        let flights = &doc["paths"]["/v1/flights"]["get"];
        let mut expected: Vec<&str> = FILTER_PARAMS.to_vec();
        expected.extend(["limit", "cursor"]);
        assert_eq!(names(flights), expected);
        assert_eq!(parameter(flights, "limit")["schema"]["maximum"], 500, "maxRows of this deployment");
        let stats = &doc["paths"]["/v1/stats/delays"]["get"];
        let by = parameter(stats, "by");
        assert_eq!(by["required"], true);
        let pattern = by["schema"]["pattern"].as_str().unwrap();
        for dimension in Dimension::ALL {
            assert!(pattern.contains(dimension.name()), "{pattern}");
        }
        assert_eq!(parameter(stats, "limit")["schema"]["maximum"], STATS_MAX_LIMIT);
        for (path, own) in [
            ("/v1/flights", &["200", "400", "422", "503", "504"][..]),
            ("/v1/flights/{id}", &["200", "400", "404", "503", "504"][..]),
            ("/v1/stats/delays", &["200", "400", "422", "503", "504"][..]),
        ] {
            let op = &doc["paths"][path]["get"];
            let statuses: BTreeSet<&str> = op["responses"].as_object().unwrap().keys().map(String::as_str).collect();
            for status in own.iter().chain(&["401", "403", "429"]) {
                assert!(statuses.contains(status), "{path}: {status} not in {statuses:?}");
            }
            let ok = &op["responses"]["200"]["content"];
            assert!(ok["application/json"].is_object() && ok["text/csv"].is_object(), "{path}: {ok}");
            assert_eq!(op["security"], json!([{"apiKey": []}, {"bearer": []}]));
        }
        let schemas = &doc["components"]["schemas"];
        let columns: BTreeSet<&str> =
            schemas["FlightOut"]["properties"].as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(columns, crate::flights::FlightOut::CSV_HEADER.into_iter().collect(), "JSON and CSV columns");
        assert_eq!(schemas["FlightPage"]["required"], json!(["flights", "next_cursor"]));
    }

    #[tokio::test]
    async fn every_route_is_in_the_document_and_every_error_code_in_the_schema() {
        let doc = document(app(false)).await;
        let src = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        assert_eq!(check::undocumented_routes(app(false), &doc, &[src]).await, Vec::<String>::new());
        assert_eq!(check::undocumented_error_codes(&[src]), Vec::<String>::new());
    }

    /// Schemathesis' kind of input: a path segment that is not UTF-8 got axum's plain-text 400.
    #[tokio::test]
    async fn an_id_that_is_not_even_utf8_is_refused_in_json() {
        for id in ["%FF", "%C3%28", "x"] {
            let request =
                axum::http::Request::get(format!("/v1/flights/{id}")).body(axum::body::Body::empty()).unwrap();
            let response = app(false).oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{id}");
            assert_eq!(response.headers()["content-type"], "application/json", "{id}");
            let body: Value =
                serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap()).unwrap();
            assert_eq!((&body["error"], &body["field"]), (&json!("invalid_id"), &json!("id")), "{id}");
        }
    }

    proptest! {
        /// `from` and `to` are taken exactly when they match their documented patterns.
        #[test]
        fn prop_date_patterns_are_parse_bound(
            text in "(19[0-9]{2}|20[0-9]{2}|210[0-9]|21[0-9]{2})-[0-1][0-9]-[0-3][0-9]( [0-2][0-9]:[0-6][0-9]:[0-6][0-9])?|[0-9 :-]{0,20}"
        ) {
            for to in [false, true] {
                let pattern = regex::Regex::new(&date_pattern(to)).unwrap();
                let taken = crate::params::parse_bound("from", &text, to).is_ok();
                prop_assert_eq!(pattern.is_match(&text), taken, "{} (to: {})", text, to);
            }
        }

        /// The edges: the last second a u32 holds, leap days.
        #[test]
        fn prop_dates_near_the_edges(
            day in 1u32..=9, hour in 0u32..=23, minute in 0u32..=59, second in 0u32..=59, to in any::<bool>()
        ) {
            let pattern = regex::Regex::new(&date_pattern(to)).unwrap();
            for text in [
                format!("2106-02-0{day} {hour:02}:{minute:02}:{second:02}"),
                format!("2106-02-0{day}"),
                format!("{}-02-29", 2096 + day),
                format!("2100-02-2{day}"),
            ] {
                let taken = crate::params::parse_bound("to", &text, to).is_ok();
                prop_assert_eq!(pattern.is_match(&text), taken, "{} (to: {})", text, to);
            }
        }

        /// A cursor this service writes matches the documented pattern.
        #[test]
        fn prop_cursors_match_the_pattern(at in any::<u32>(), id in "[0-9a-f]{32}|\\PC{0,40}") {
            let cursor = crate::flights::Cursor { scheduled_at: at, record_id: id }.encode();
            prop_assert!(regex::Regex::new(CURSOR_PATTERN).unwrap().is_match(&cursor), "{}", cursor);
        }
    }
}
