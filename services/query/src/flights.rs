//! `GET /v1/flights`: stored flights, filtered, in pages with a cursor.

use axum::extract::State;
use axum::http::{Uri, header};
use axum::response::{IntoResponse, Response};
use clickhouse::Row;
use flightline_service::server::ApiError;
use serde::{Deserialize, Serialize};

use crate::params::{Filters, query_params, where_clause};
use crate::{AppState, PAGE_MAX_RESPONSE_BYTES, PAGE_MAX_RESULT_BYTES, bounded, result_limits};

/// A page position: the sort key of the last row returned.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) scheduled_at: u32,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
}

impl Cursor {
    pub(crate) fn parse(text: &str) -> Result<Self, ApiError> {
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

    pub(crate) fn encode(&self) -> String {
        format!("{}.{}.{}", self.scheduled_at, self.partition, self.offset)
    }
}

#[derive(Row, Deserialize, Serialize)]
pub(crate) struct FlightOut {
    #[serde(rename = "Fecha-I")]
    pub(crate) scheduled_at: String,
    #[serde(rename = "Vlo-I")]
    pub(crate) scheduled_flight: String,
    #[serde(rename = "Ori-I")]
    pub(crate) scheduled_origin: String,
    #[serde(rename = "Des-I")]
    pub(crate) scheduled_destination: String,
    #[serde(rename = "Emp-I")]
    pub(crate) scheduled_airline: String,
    #[serde(rename = "Fecha-O")]
    pub(crate) operated_at: String,
    #[serde(rename = "Vlo-O")]
    pub(crate) operated_flight: String,
    #[serde(rename = "Ori-O")]
    pub(crate) operated_origin: String,
    #[serde(rename = "Des-O")]
    pub(crate) operated_destination: String,
    #[serde(rename = "Emp-O")]
    pub(crate) operated_airline: String,
    #[serde(rename = "DIA")]
    pub(crate) day: u8,
    #[serde(rename = "MES")]
    pub(crate) month: u8,
    #[serde(rename = "AÑO")]
    pub(crate) year: u16,
    #[serde(rename = "DIANOM")]
    pub(crate) day_name: String,
    #[serde(rename = "TIPOVUELO")]
    pub(crate) flight_type: String,
    #[serde(rename = "OPERA")]
    pub(crate) airline_name: String,
    #[serde(rename = "SIGLAORI")]
    pub(crate) origin_city: String,
    #[serde(rename = "SIGLADES")]
    pub(crate) destination_city: String,
    pub(crate) delay_minutes: i32,
    pub(crate) delayed: bool,
    pub(crate) period_day: String,
    pub(crate) high_season: bool,
    #[serde(skip_serializing)]
    pub(crate) sort_at: u32,
    #[serde(skip_serializing)]
    pub(crate) source_partition: i32,
    #[serde(skip_serializing)]
    pub(crate) source_offset: i64,
}

pub(crate) const FLIGHT_COLUMNS: &str = "toString(scheduled_at, 'UTC'), scheduled_flight, toString(scheduled_origin), \
    toString(scheduled_destination), toString(scheduled_airline), toString(operated_at, 'UTC'), operated_flight, \
    toString(operated_origin), toString(operated_destination), toString(operated_airline), day, month, year, \
    toString(day_name), toString(flight_type), toString(airline_name), toString(origin_city), \
    toString(destination_city), delay_minutes, delayed, toString(period_day), high_season, \
    toUInt32(scheduled_at), source_partition, source_offset";

/// What `GET /v1/flights` asks for.
#[derive(Debug)]
pub(crate) struct FlightsRequest {
    pub(crate) filters: Filters,
    pub(crate) limit: u32,
    pub(crate) cursor: Option<Cursor>,
}

impl FlightsRequest {
    pub(crate) fn parse(uri: &Uri, max_rows: u32) -> Result<Self, ApiError> {
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

pub(crate) async fn flights(State(state): State<AppState>, uri: Uri) -> Result<Response, ApiError> {
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
pub(crate) fn page_json<T: Serialize>(
    rows: &[T],
    limit: usize,
    max_bytes: usize,
    cursor_of: impl Fn(&T) -> String,
) -> Vec<u8> {
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
