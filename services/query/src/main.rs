//! `flightline-query`: stored flights (`GET /v1/flights`, filters and cursor pagination) and delay
//! statistics (`GET /v1/stats/delays?by=...`), computed in ClickHouse. Every value a user sends
//! reaches ClickHouse as a typed query parameter (`{name:Type}`), never as SQL text; unknown or
//! malformed parameters get 400 naming the parameter.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Query, State};
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
    let mut clickhouse =
        clickhouse::Client::default().with_url(config::required("CLICKHOUSE_URL")?).with_validation(false);
    if let Ok(user) = config::required("CLICKHOUSE_USER") {
        clickhouse = clickhouse.with_user(user).with_password(std::env::var("CLICKHOUSE_PASSWORD").unwrap_or_default());
    }
    let state = AppState {
        clickhouse: clickhouse.clone(),
        table: format!("`{database}`.`{table}`").into(),
        max_rows: config::parsed("QUERY_MAX_ROWS", 10_000u32)?.max(1),
    };
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

/// Rejects parameters this endpoint does not know.
fn check_known(params: &BTreeMap<String, String>, extra: &[&str]) -> Result<(), ApiError> {
    match params.keys().find(|k| !FILTER_PARAMS.contains(&k.as_str()) && !extra.contains(&k.as_str())) {
        Some(unknown) => Err(ApiError::bad_field(unknown.clone(), "unknown query parameter")),
        None => Ok(()),
    }
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
    ApiError::new(
        axum::http::StatusCode::SERVICE_UNAVAILABLE,
        "clickhouse_unavailable",
        "the flight store did not answer",
    )
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

#[derive(Serialize)]
struct FlightsPage {
    flights: Vec<FlightOut>,
    next_cursor: Option<String>,
}

async fn flights(
    State(state): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<FlightsPage>, ApiError> {
    check_known(&params, &["limit", "cursor"])?;
    let filters = Filters::parse(&params)?;
    let limit =
        match params.get("limit") {
            None => 100.min(state.max_rows),
            Some(v) => v.parse::<u32>().ok().filter(|n| (1..=state.max_rows).contains(n)).ok_or_else(|| {
                ApiError::bad_field("limit", format!("must be a number from 1 to {}", state.max_rows))
            })?,
        };
    let cursor = params.get("cursor").map(|c| Cursor::parse(c)).transpose()?;
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
    let mut query = filters.bind(state.clickhouse.query(&sql)).param("limit", limit + 1);
    if let Some(c) = &cursor {
        query = query.param("c_at", c.scheduled_at).param("c_p", c.partition).param("c_o", c.offset);
    }
    let mut rows = query.fetch_all::<FlightOut>().await.map_err(database_error)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| {
            Cursor { scheduled_at: r.sort_at, partition: r.source_partition, offset: r.source_offset }.encode()
        })
    } else {
        None
    };
    Ok(Json(FlightsPage { flights: rows, next_cursor }))
}

#[derive(Row, Deserialize)]
struct GroupRow {
    key: String,
    flights: u64,
    delayed: u64,
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

async fn delays(
    State(state): State<AppState>,
    Query(params): Query<BTreeMap<String, String>>,
) -> Result<Json<DelayStats>, ApiError> {
    check_known(&params, &["by"])?;
    let by = params.get("by").ok_or_else(|| ApiError::bad_field("by", "is required"))?;
    let expression = group_expression(by)
        .ok_or_else(|| ApiError::bad_field("by", "must be airline, month, destination, period_day or type"))?;
    let filters = Filters::parse(&params)?;
    let sql = format!(
        "SELECT {expression} AS key, count() AS flights, toUInt64(countIf(delayed)) AS delayed FROM {} FINAL {} \
         GROUP BY key ORDER BY flights DESC, key",
        state.table,
        where_clause(&filters.conditions())
    );
    let rows = filters.bind(state.clickhouse.query(&sql)).fetch_all::<GroupRow>().await.map_err(database_error)?;
    let (flights, delayed) = rows.iter().fold((0, 0), |(f, d), r| (f + r.flights, d + r.delayed));
    Ok(Json(DelayStats {
        by: by.clone(),
        total: group("all".into(), flights, delayed),
        groups: rows.into_iter().map(|r| group(r.key, r.flights, r.delayed)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn unknown_parameters_and_groupings_are_rejected() {
        assert_eq!(
            check_known(&params(&[("limit", "1"), ("sort", "x")]), &["limit"]).unwrap_err().field.as_deref(),
            Some("sort")
        );
        assert!(group_expression("airline; DROP TABLE t").is_none());
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
