//! `flightline-query`: stored flights (`GET /v1/flights`, filters and cursor pagination) and delay
//! statistics (`GET /v1/stats/delays?by=...`), computed in ClickHouse. Every value a user sends
//! reaches ClickHouse as a typed query parameter (`{name:Type}`), never as SQL text; unknown,
//! repeated or malformed parameters get 400 naming the parameter.
//!
//! Every statement runs with `readonly=2` (reads only; 2 so the limits below can still be set per
//! query), `max_execution_time` (`QUERY_MAX_EXECUTION_SECONDS`, default 10), and result limits
//! (`max_result_rows`/`max_result_bytes` sized to a page or a statistics answer, with
//! `result_overflow_mode=throw`). Every call also has a client-side timeout 2 s longer, so a hung
//! ClickHouse gives a 504 instead of a hung request. Give query a read-only user as well (README).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use clickhouse::Row;
use flightline_service::auth::Auth;
use flightline_service::config::{self, HttpLimits};
use flightline_service::flight::parse_datetime;
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};
use serde::{Deserialize, Serialize};

#[derive(Parser)]
#[command(name = "flightline-query", version, about = "Stored flights and delay statistics over HTTP")]
struct Cli {}

#[derive(Clone)]
struct AppState {
    clickhouse: clickhouse::Client,
    /// `` `database`.`table` ``, from the operator's (validated) settings.
    table: Arc<str>,
    max_rows: u32,
    /// How long a ClickHouse call may take before the client gives up.
    call_timeout: Duration,
}

/// Result bounds. A page holds at most `QUERY_MAX_ROWS` (10,000) + 1 rows; a full page of the
/// data set is 1.3 MiB by ClickHouse's count (measured; 1.5 MB as RowBinary), so it fits in 4 MiB;
/// rows of long fields (ingest allows 256 bytes each) make ClickHouse refuse the page (422: ask
/// for a smaller `limit`). The JSON answer is cut at `PAGE_MAX_RESPONSE_BYTES` (the page ends
/// early, `next_cursor` goes on from there): a control character is 6 bytes of JSON, so without
/// the cut 4 MiB of rows could become 24 MiB. One page request thus holds at most ~4 MiB of rows
/// as read (about twice that as Rust strings) plus 8 MiB of JSON: under 20 MiB.
const PAGE_MAX_RESULT_BYTES: u64 = 4 * 1024 * 1024;
const PAGE_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// A statistics answer holds one row per group (airlines, destinations, months: tens to
/// hundreds). Only the largest `STATS_MAX_GROUPS` groups are listed (`truncated: true` says more
/// exist), so anyone posting many distinct values cannot make the answer fail for everyone; the
/// total still counts every flight. 1,000 keys of at most 256 bytes stay under 2 MB of JSON.
const STATS_MAX_GROUPS: u32 = 1_000;
const STATS_MAX_RESULT_BYTES: u64 = 4 * 1024 * 1024;
/// The client waits this much longer than `max_execution_time`, so ClickHouse's own error wins
/// when the server is alive.
const CALL_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

/// Settings every statement runs with.
fn read_only(client: clickhouse::Client, max_execution_seconds: u32) -> clickhouse::Client {
    config::clickhouse_read_only_settings(max_execution_seconds)
        .into_iter()
        .fold(client, |client, (name, value)| client.with_setting(name, value))
}

fn result_limits(query: clickhouse::query::Query, rows: u32, bytes: u64) -> clickhouse::query::Query {
    query.with_setting("max_result_rows", rows.to_string()).with_setting("max_result_bytes", bytes.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    flightline_service::server::init_logging();
    let telemetry = Telemetry::new("query");
    let database = config::required("CLICKHOUSE_DATABASE")?;
    let table = config::required("CLICKHOUSE_TABLE")?;
    for ident in [&database, &table] {
        anyhow::ensure!(
            ident.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{ident:?} is not a plain identifier"
        );
    }
    // Rows are read by position (RowBinary); the SELECT lists the columns in struct order.
    // CLICKHOUSE_URL, and CLICKHOUSE_CA_PEM for an https:// one.
    let mut clickhouse = flightline_service::connect::clickhouse_client_from_env()?.with_validation(false);
    if let Ok(user) = config::required("CLICKHOUSE_USER") {
        clickhouse = clickhouse.with_user(user).with_password(std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default());
    }
    let max_execution_seconds: u32 = config::parsed("QUERY_MAX_EXECUTION_SECONDS", 10)?;
    anyhow::ensure!(max_execution_seconds > 0, "QUERY_MAX_EXECUTION_SECONDS must be at least 1");
    let clickhouse = read_only(clickhouse, max_execution_seconds);
    let state = AppState {
        clickhouse: clickhouse.clone(),
        table: format!("`{database}`.`{table}`").into(),
        max_rows: config::parsed("QUERY_MAX_ROWS", 10_000u32)?.max(1),
        call_timeout: Duration::from_secs(max_execution_seconds.into()) + CALL_TIMEOUT_MARGIN,
    };
    // The server caches the answer and gives up after a few seconds: a hung ClickHouse is "not ready".
    let ready: ReadyCheck = Arc::new(move || {
        let clickhouse = clickhouse.clone();
        Box::pin(async move { clickhouse.query("SELECT 1").execute().await.map_err(|e| format!("ClickHouse: {e}")) })
    });
    let routes =
        Router::new().route("/v1/flights", get(flights)).route("/v1/stats/delays", get(delays)).with_state(state);
    let app = server::app(routes, telemetry, ready, Auth::from_env()?, HttpLimits::from_env(HttpLimits::QUERY)?);
    server::serve(config::listen_addr()?, app).await
}

/// Filters both endpoints share, parsed and checked.
#[derive(Debug, Default, PartialEq)]
struct Filters {
    from: Option<u32>,
    to: Option<u32>,
    airline: Option<String>,
    origin: Option<String>,
    destination: Option<String>,
    flight_type: Option<String>,
    delayed: Option<bool>,
}

const FILTER_PARAMS: [&str; 7] = ["from", "to", "airline", "origin", "destination", "type", "delayed"];

/// At most this much of a client's text is echoed in an error.
fn clip(text: &str) -> &str {
    text.char_indices().nth(60).map_or(text, |(end, _)| &text[..end])
}

/// The query string as name → value, each name known to this endpoint and given once.
fn query_params(uri: &Uri, extra: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
    let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    let mut params = BTreeMap::new();
    for (name, value) in pairs {
        if !FILTER_PARAMS.contains(&name.as_str()) && !extra.contains(&name.as_str()) {
            return Err(ApiError::bad_field(clip(&name), "unknown query parameter"));
        }
        if params.contains_key(&name) {
            return Err(ApiError::bad_field(name, "is given more than once"));
        }
        params.insert(name, value);
    }
    Ok(params)
}

/// `YYYY-MM-DD` or `YYYY-MM-DD HH:MM:SS`; a bare `to` date includes that whole day.
fn parse_bound(name: &str, value: &str, end_of_day: bool) -> Result<u32, ApiError> {
    let (text, whole_day) =
        if value.len() == 10 { (format!("{value} 00:00:00"), true) } else { (value.to_string(), false) };
    let epoch = parse_datetime(&text)
        .ok_or_else(|| ApiError::bad_field(name, "must be a date YYYY-MM-DD or date-time YYYY-MM-DD HH:MM:SS"))?
        .epoch;
    let epoch = if whole_day && end_of_day { epoch + 86_399 } else { epoch };
    u32::try_from(epoch).map_err(|_| ApiError::bad_field(name, "is out of range"))
}

fn short_text(name: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > 100 || value.chars().any(char::is_control) {
        return Err(ApiError::bad_field(name, "must be 1 to 100 printable characters"));
    }
    Ok(value.to_string())
}

impl Filters {
    fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
        let mut f = Filters::default();
        for (name, value) in params {
            match name.as_str() {
                "from" => f.from = Some(parse_bound(name, value, false)?),
                "to" => f.to = Some(parse_bound(name, value, true)?),
                "airline" => f.airline = Some(short_text(name, value)?),
                "origin" => f.origin = Some(short_text(name, value)?),
                "destination" => f.destination = Some(short_text(name, value)?),
                "type" => match value.as_str() {
                    "I" | "N" => f.flight_type = Some(value.clone()),
                    _ => return Err(ApiError::bad_field(name, "must be I or N")),
                },
                "delayed" => match value.as_str() {
                    "true" => f.delayed = Some(true),
                    "false" => f.delayed = Some(false),
                    _ => return Err(ApiError::bad_field(name, "must be true or false")),
                },
                _ => {}
            }
        }
        if let (Some(from), Some(to)) = (f.from, f.to)
            && from > to
        {
            return Err(ApiError::bad_field("from", "must not be after `to`"));
        }
        Ok(f)
    }

    /// SQL conditions that only reference typed parameters, never user text.
    fn conditions(&self) -> Vec<&'static str> {
        let mut c = Vec::new();
        if self.from.is_some() {
            c.push("toUInt32(scheduled_at) >= {from:UInt32}");
        }
        if self.to.is_some() {
            c.push("toUInt32(scheduled_at) <= {to:UInt32}");
        }
        if self.airline.is_some() {
            c.push("(airline_name = {airline:String} OR scheduled_airline = {airline:String})");
        }
        if self.origin.is_some() {
            c.push("scheduled_origin = {origin:String}");
        }
        if self.destination.is_some() {
            c.push("(scheduled_destination = {destination:String} OR destination_city = {destination:String})");
        }
        if self.flight_type.is_some() {
            c.push("flight_type = {type:String}");
        }
        if self.delayed.is_some() {
            c.push("delayed = {delayed:Bool}");
        }
        c
    }

    fn bind(&self, mut q: clickhouse::query::Query) -> clickhouse::query::Query {
        if let Some(v) = self.from {
            q = q.param("from", v);
        }
        if let Some(v) = self.to {
            q = q.param("to", v);
        }
        if let Some(v) = &self.airline {
            q = q.param("airline", v);
        }
        if let Some(v) = &self.origin {
            q = q.param("origin", v);
        }
        if let Some(v) = &self.destination {
            q = q.param("destination", v);
        }
        if let Some(v) = &self.flight_type {
            q = q.param("type", v);
        }
        if let Some(v) = self.delayed {
            q = q.param("delayed", v);
        }
        q
    }
}

fn where_clause(conditions: &[&str]) -> String {
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

fn database_error(e: clickhouse::error::Error) -> ApiError {
    tracing::error!(error = %e, "ClickHouse query failed");
    // Code 159: TIMEOUT_EXCEEDED (max_execution_time).
    if e.to_string().contains("Code: 159.") {
        return store_timeout("the query ran longer than its time limit");
    }
    // Code 396: TOO_MANY_ROWS_OR_BYTES (max_result_rows/bytes): the answer, not the store, is at
    // fault, so it is not a 5xx that burns the availability SLO.
    if e.to_string().contains("Code: 396.") {
        return result_too_large();
    }
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "clickhouse_unavailable", "the flight store did not answer")
    }
}

fn result_too_large() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "result_too_large",
        format!(
            "the answer would exceed {} MiB; ask for fewer rows (limit) or narrow the filters",
            PAGE_MAX_RESULT_BYTES >> 20
        ),
    )
}

fn store_timeout(message: &str) -> ApiError {
    ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::GATEWAY_TIMEOUT, "clickhouse_timeout", message) }
}

/// A ClickHouse call within the client-side timeout.
async fn bounded<T>(
    timeout: Duration,
    call: impl Future<Output = Result<T, clickhouse::error::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(database_error),
        Err(_) => {
            tracing::error!(seconds = timeout.as_secs(), "ClickHouse did not answer in time");
            Err(store_timeout(&format!("the flight store did not answer within {} s", timeout.as_secs())))
        }
    }
}

/// A page position: the sort key of the last row returned.
#[derive(Debug, PartialEq, Eq)]
struct Cursor {
    scheduled_at: u32,
    partition: i32,
    offset: i64,
}

impl Cursor {
    fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_field("cursor", "is not a cursor this service returned");
        let mut parts = text.split('.');
        let cursor = Cursor {
            scheduled_at: parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            partition: parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?,
            offset: parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(cursor)
    }

    fn encode(&self) -> String {
        format!("{}.{}.{}", self.scheduled_at, self.partition, self.offset)
    }
}

#[derive(Row, Deserialize, Serialize)]
struct FlightOut {
    #[serde(rename = "Fecha-I")]
    scheduled_at: String,
    #[serde(rename = "Vlo-I")]
    scheduled_flight: String,
    #[serde(rename = "Ori-I")]
    scheduled_origin: String,
    #[serde(rename = "Des-I")]
    scheduled_destination: String,
    #[serde(rename = "Emp-I")]
    scheduled_airline: String,
    #[serde(rename = "Fecha-O")]
    operated_at: String,
    #[serde(rename = "Vlo-O")]
    operated_flight: String,
    #[serde(rename = "Ori-O")]
    operated_origin: String,
    #[serde(rename = "Des-O")]
    operated_destination: String,
    #[serde(rename = "Emp-O")]
    operated_airline: String,
    #[serde(rename = "DIA")]
    day: u8,
    #[serde(rename = "MES")]
    month: u8,
    #[serde(rename = "AÑO")]
    year: u16,
    #[serde(rename = "DIANOM")]
    day_name: String,
    #[serde(rename = "TIPOVUELO")]
    flight_type: String,
    #[serde(rename = "OPERA")]
    airline_name: String,
    #[serde(rename = "SIGLAORI")]
    origin_city: String,
    #[serde(rename = "SIGLADES")]
    destination_city: String,
    delay_minutes: i32,
    delayed: bool,
    period_day: String,
    high_season: bool,
    #[serde(skip_serializing)]
    sort_at: u32,
    #[serde(skip_serializing)]
    source_partition: i32,
    #[serde(skip_serializing)]
    source_offset: i64,
}

const FLIGHT_COLUMNS: &str = "toString(scheduled_at, 'UTC'), scheduled_flight, toString(scheduled_origin), \
    toString(scheduled_destination), toString(scheduled_airline), toString(operated_at, 'UTC'), operated_flight, \
    toString(operated_origin), toString(operated_destination), toString(operated_airline), day, month, year, \
    toString(day_name), toString(flight_type), toString(airline_name), toString(origin_city), \
    toString(destination_city), delay_minutes, delayed, toString(period_day), high_season, \
    toUInt32(scheduled_at), source_partition, source_offset";

/// What `GET /v1/flights` asks for.
#[derive(Debug)]
struct FlightsRequest {
    filters: Filters,
    limit: u32,
    cursor: Option<Cursor>,
}

impl FlightsRequest {
    fn parse(uri: &Uri, max_rows: u32) -> Result<Self, ApiError> {
        let params = query_params(uri, &["limit", "cursor"])?;
        let filters = Filters::parse(&params)?;
        let limit = match params.get("limit") {
            None => 100.min(max_rows),
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=max_rows).contains(n))
                .ok_or_else(|| ApiError::bad_field("limit", format!("must be a number from 1 to {max_rows}")))?,
        };
        let cursor = params.get("cursor").map(|c| Cursor::parse(c)).transpose()?;
        Ok(Self { filters, limit, cursor })
    }
}

async fn flights(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
    let FlightsRequest { filters, limit, cursor } = FlightsRequest::parse(&uri, state.max_rows)?;
    let mut conditions = filters.conditions();
    if cursor.is_some() {
        conditions.push(
            "(toUInt32(scheduled_at), source_partition, source_offset) > ({c_at:UInt32}, {c_p:Int32}, {c_o:Int64})",
        );
    }
    // FINAL: a record the sink wrote twice (crash before commit) is read once.
    let sql = format!(
        "SELECT {FLIGHT_COLUMNS} FROM {} FINAL {} ORDER BY scheduled_at, source_partition, source_offset LIMIT {{limit:UInt32}}",
        state.table,
        where_clause(&conditions)
    );
    let query = result_limits(state.clickhouse.query(&sql), limit + 1, PAGE_MAX_RESULT_BYTES);
    let mut query = filters.bind(query).param("limit", limit + 1);
    if let Some(c) = &cursor {
        query = query.param("c_at", c.scheduled_at).param("c_p", c.partition).param("c_o", c.offset);
    }
    let rows = bounded(state.call_timeout, query.fetch_all::<FlightOut>()).await?;
    let body = page_json(&rows, limit as usize, PAGE_MAX_RESPONSE_BYTES, |r| {
        Cursor { scheduled_at: r.sort_at, partition: r.source_partition, offset: r.source_offset }.encode()
    });
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `{"flights": [...], "next_cursor": ...}` with at most `limit` of `rows`, written row by row and
/// ended early (with a cursor to the rest) before the JSON passes `max_bytes`. At least one row is
/// always written; a row is at most a few tens of KiB.
fn page_json<T: Serialize>(rows: &[T], limit: usize, max_bytes: usize, cursor_of: impl Fn(&T) -> String) -> Vec<u8> {
    /// Room kept for the cursor and the closing bytes.
    const TAIL: usize = 128;
    let mut body = b"{\"flights\":[".to_vec();
    let mut written = 0;
    for row in rows.iter().take(limit) {
        let start = body.len();
        if written > 0 {
            body.push(b',');
        }
        serde_json::to_writer(&mut body, row).expect("a row serializes");
        if written > 0 && body.len() + TAIL > max_bytes {
            body.truncate(start);
            break;
        }
        written += 1;
    }
    let next_cursor = (written < rows.len()).then(|| cursor_of(&rows[written - 1]));
    body.extend_from_slice(b"],\"next_cursor\":");
    serde_json::to_writer(&mut body, &next_cursor).expect("a cursor serializes");
    body.push(b'}');
    body
}

#[derive(Row, Deserialize)]
struct GroupRow {
    key: String,
    flights: u64,
    delayed: u64,
    /// Over all groups, listed or not.
    all_flights: u64,
    all_delayed: u64,
}

#[derive(Serialize)]
struct Group {
    key: String,
    flights: u64,
    delayed: u64,
    delay_rate: f64,
}

#[derive(Serialize)]
struct DelayStats {
    by: String,
    total: Group,
    groups: Vec<Group>,
    /// More groups exist than the `STATS_MAX_GROUPS` largest listed.
    truncated: bool,
}

/// Grouping expressions: the only SQL a `by` value selects, from this fixed list.
fn group_expression(by: &str) -> Option<&'static str> {
    Some(match by {
        "airline" => "toString(airline_name)",
        "month" => "toString(month)",
        "destination" => "toString(destination_city)",
        "period_day" => "toString(period_day)",
        "type" => "toString(flight_type)",
        _ => return None,
    })
}

fn group(key: String, flights: u64, delayed: u64) -> Group {
    let delay_rate = if flights == 0 { 0.0 } else { (delayed as f64 / flights as f64 * 1e4).round() / 1e4 };
    Group { key, flights, delayed, delay_rate }
}

/// What `GET /v1/stats/delays` asks for.
#[derive(Debug)]
struct StatsRequest {
    by: String,
    expression: &'static str,
    filters: Filters,
}

impl StatsRequest {
    fn parse(uri: &Uri) -> Result<Self, ApiError> {
        let params = query_params(uri, &["by"])?;
        let by = params.get("by").ok_or_else(|| ApiError::bad_field("by", "is required"))?;
        let expression = group_expression(by)
            .ok_or_else(|| ApiError::bad_field("by", "must be airline, month, destination, period_day or type"))?;
        Ok(Self { by: by.clone(), expression, filters: Filters::parse(&params)? })
    }
}

async fn delays(State(state): State<AppState>, uri: Uri) -> Result<Json<DelayStats>, ApiError> {
    let StatsRequest { by, expression, filters } = StatsRequest::parse(&uri)?;
    // One row past the limit says whether groups were left out; the window sums (computed before
    // LIMIT) give the total over every group.
    let sql = format!(
        "SELECT {expression} AS key, count() AS group_flights, toUInt64(countIf(delayed)) AS group_delayed, \
         toUInt64(sum(count()) OVER ()) AS all_flights, toUInt64(sum(countIf(delayed)) OVER ()) AS all_delayed \
         FROM {} FINAL {} GROUP BY key ORDER BY group_flights DESC, key LIMIT {}",
        state.table,
        where_clause(&filters.conditions()),
        STATS_MAX_GROUPS + 1
    );
    let query = result_limits(state.clickhouse.query(&sql), STATS_MAX_GROUPS + 1, STATS_MAX_RESULT_BYTES);
    let rows = bounded(state.call_timeout, filters.bind(query).fetch_all::<GroupRow>()).await?;
    Ok(Json(delay_stats(by, rows)))
}

fn delay_stats(by: String, mut rows: Vec<GroupRow>) -> DelayStats {
    let total = rows.first().map_or((0, 0), |r| (r.all_flights, r.all_delayed));
    let truncated = rows.len() > STATS_MAX_GROUPS as usize;
    rows.truncate(STATS_MAX_GROUPS as usize);
    DelayStats {
        by,
        total: group("all".into(), total.0, total.1),
        groups: rows.into_iter().map(|r| group(r.key, r.flights, r.delayed)).collect(),
        truncated,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn filters_parse_and_name_bad_parameters() {
        let f = Filters::parse(&params(&[
            ("from", "2017-01-01"),
            ("to", "2017-01-31"),
            ("type", "I"),
            ("delayed", "true"),
        ]))
        .unwrap();
        assert_eq!(f.from, Some(1_483_228_800));
        assert_eq!(f.to, Some(1_483_228_800 + 30 * 86_400 + 86_399));
        assert_eq!(f.conditions().len(), 4);
        for (name, value) in [("from", "yesterday"), ("type", "X"), ("delayed", "1"), ("airline", "")] {
            let e = Filters::parse(&params(&[(name, value)])).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(name));
        }
        assert_eq!(
            Filters::parse(&params(&[("from", "2017-02-01"), ("to", "2017-01-01")])).unwrap_err().field.as_deref(),
            Some("from")
        );
    }

    fn uri(query: &str) -> Uri {
        format!("/v1/flights?{query}").parse().unwrap()
    }

    #[test]
    fn unknown_repeated_or_huge_parameters_are_rejected_by_name() {
        for (query, field) in [
            ("limit=1&sort=x", "sort"),
            ("limit=1&limit=2", "limit"),
            ("limit=99999999999999999999", "limit"),
            ("limit=0", "limit"),
            ("cursor=1.2", "cursor"),
            (&format!("cursor={}", "9".repeat(10_000)), "cursor"),
            (&format!("airline={}", "x".repeat(10_000)), "airline"),
            (&format!("from={}", "2".repeat(10_000)), "from"),
            ("from=2017-02-30", "from"),
            ("to=%FF%FE", "to"),
        ] {
            let error = FlightsRequest::parse(&uri(query), 10_000).unwrap_err();
            assert_eq!((error.status, error.field.as_deref()), (StatusCode::BAD_REQUEST, Some(field)), "{query}");
        }
        let long_name = format!("{}=1", "n".repeat(10_000));
        assert!(FlightsRequest::parse(&uri(&long_name), 10_000).unwrap_err().field.unwrap().len() <= 60);
        let by = |query: &str| StatsRequest::parse(&format!("/v1/stats/delays?{query}").parse().unwrap());
        assert_eq!(by("").unwrap_err().field.as_deref(), Some("by"));
        assert_eq!(by("by=airline;DROP").unwrap_err().field.as_deref(), Some("by"));
        assert_eq!(by("by=month&delayed=true").unwrap().expression, "toString(month)");
        assert!(group_expression("airline; DROP TABLE t").is_none());
        let ok = FlightsRequest::parse(&uri("limit=5&cursor=1.2.3&airline=Grupo+LATAM"), 10_000).unwrap();
        assert_eq!((ok.limit, ok.filters.airline.as_deref()), (5, Some("Grupo LATAM")));
    }

    #[tokio::test]
    async fn a_hung_call_gives_504_within_the_timeout() {
        let started = std::time::Instant::now();
        let error = bounded::<()>(Duration::from_millis(200), std::future::pending()).await.unwrap_err();
        assert_eq!((error.status, error.error), (StatusCode::GATEWAY_TIMEOUT, "clickhouse_timeout"));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn pages_end_before_the_response_limit_with_a_cursor_to_the_rest() {
        #[derive(Serialize)]
        struct Row {
            n: usize,
            text: String,
        }
        // Control characters are 6 bytes each in JSON: 100 rows of 200 would be ~120 KB.
        let rows: Vec<_> = (0..101).map(|n| Row { n, text: "\u{1}".repeat(200) }).collect();
        let cursor = |r: &Row| r.n.to_string();
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows, 100, 1 << 20, cursor)).unwrap();
        assert_eq!((page["flights"].as_array().unwrap().len(), &page["next_cursor"]), (100, &json!("99")));
        let body = page_json(&rows, 100, 10_000, cursor);
        assert!(body.len() <= 10_000, "{}", body.len());
        let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let listed = page["flights"].as_array().unwrap().len();
        assert!((5..10).contains(&listed), "{listed}");
        assert_eq!(page["next_cursor"], json!((listed - 1).to_string()));
        // The last page has no cursor; one row always fits, even past the limit.
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows[..3], 100, 10, cursor)).unwrap();
        assert_eq!((page["flights"].as_array().unwrap().len(), &page["next_cursor"]), (1, &json!("0")));
        let page: serde_json::Value = serde_json::from_slice(&page_json(&rows[..0], 100, 10, cursor)).unwrap();
        assert_eq!(page, json!({"flights": [], "next_cursor": null}));
    }

    #[test]
    fn statistics_list_the_largest_groups_and_say_when_more_exist() {
        let row =
            |n: u64| GroupRow { key: n.to_string(), flights: 10, delayed: 1, all_flights: 90_000, all_delayed: 7 };
        let stats = delay_stats("airline".into(), (0..=u64::from(STATS_MAX_GROUPS)).map(row).collect());
        assert!(stats.truncated);
        assert_eq!(stats.groups.len(), STATS_MAX_GROUPS as usize);
        assert_eq!((stats.total.flights, stats.total.delayed), (90_000, 7));
        let stats = delay_stats("airline".into(), (0..3).map(row).collect());
        assert!(!stats.truncated && stats.groups.len() == 3);
        let stats = delay_stats("airline".into(), Vec::new());
        assert!(!stats.truncated && stats.total.flights == 0);
    }

    #[test]
    fn an_oversized_answer_is_422_not_5xx() {
        let e = clickhouse::error::Error::BadResponse(
            "Code: 396. DB::Exception: Limit for result exceeded, max rows: 10.00. (TOO_MANY_ROWS_OR_BYTES)".into(),
        );
        let error = database_error(e);
        assert_eq!((error.status, error.error), (StatusCode::UNPROCESSABLE_ENTITY, "result_too_large"));
    }

    #[test]
    fn injection_text_stays_a_parameter() {
        let f = Filters::parse(&params(&[("airline", "x' OR 1=1 --")])).unwrap();
        assert!(f.conditions().iter().all(|c| !c.contains("OR 1=1")));
    }

    #[test]
    fn cursors_round_trip_and_garbage_is_rejected() {
        let c = Cursor { scheduled_at: 1, partition: 2, offset: 3 };
        assert_eq!(Cursor::parse(&c.encode()).unwrap(), c);
        for bad in ["", "1.2", "1.2.3.4", "a.b.c", "1.2.3; DROP"] {
            assert!(Cursor::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn refused_by_name(error: &ApiError) -> bool {
        error.status == StatusCode::BAD_REQUEST && (error.field.is_some() || error.error == "invalid_query")
    }

    /// Query-string text: anything a URI may hold, weighted towards the characters that matter.
    fn query_text() -> impl Strategy<Value = String> {
        let names = proptest::sample::select(vec![
            "from",
            "to",
            "airline",
            "origin",
            "destination",
            "type",
            "delayed",
            "limit",
            "cursor",
            "by",
            "x",
        ]);
        let value = prop_oneof![
            "[-0-9.:% +&=a-zA-Z]{0,40}",
            "\\PC{0,20}",
            "[0-9]{1,30}",
            "[0-9]{1,12}\\.-?[0-9]{1,12}\\.-?[0-9]{1,22}"
        ];
        proptest::collection::vec((names, value), 0..6).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(name, value)| {
                    let encoded: String = value
                        .bytes()
                        .map(|b| {
                            if b.is_ascii_alphanumeric() || b"-.%+=&".contains(&b) {
                                (b as char).to_string()
                            } else {
                                format!("%{b:02X}")
                            }
                        })
                        .collect();
                    format!("{name}={encoded}")
                })
                .collect::<Vec<_>>()
                .join("&")
        })
    }

    proptest! {
        /// Any query string is parsed or refused with 400 naming the parameter; never a 5xx or a panic.
        #[test]
        fn prop_query_parameters_never_5xx(query in query_text()) {
            let uri: Uri = format!("/v1/flights?{query}").parse().unwrap();
            if let Err(e) = FlightsRequest::parse(&uri, 10_000) {
                prop_assert!(refused_by_name(&e), "{query}: {e:?}");
            }
            let uri: Uri = format!("/v1/stats/delays?{query}").parse().unwrap();
            if let Err(e) = StatsRequest::parse(&uri) {
                prop_assert!(refused_by_name(&e), "{query}: {e:?}");
            }
        }

        /// Any cursor text round-trips or is refused naming `cursor`.
        #[test]
        fn prop_cursor_never_panics(text in prop_oneof!["\\PC{0,60}", "-?[0-9]{0,12}\\.-?[0-9]{0,12}\\.-?[0-9]{0,22}"]) {
            match Cursor::parse(&text) {
                Ok(cursor) => prop_assert_eq!(Cursor::parse(&cursor.encode()).unwrap(), cursor),
                Err(e) => prop_assert_eq!(e.field.as_deref(), Some("cursor")),
            }
        }
    }
}
