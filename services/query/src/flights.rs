//! `GET /v1/flights`: stored flights, filtered, in pages with a cursor.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, Uri};
use axum::response::Response;
use clickhouse::Row;
use flightline_service::server::ApiError;
use serde::{Deserialize, Serialize};

use crate::answer::{self, Body, Key};
use crate::params::{Filters, Format, csv_line, query_params, where_clause};
use crate::{AppState, PAGE_MAX_RESPONSE_BYTES, PAGE_MAX_RESULT_BYTES, bounded, result_limits};

/// A CSV page's cursor to the next one (JSON pages carry `next_cursor` in the body).
pub(crate) const NEXT_CURSOR_HEADER: HeaderName = HeaderName::from_static("x-next-cursor");

/// A page position: the sort key of the last row returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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

impl FlightOut {
    /// CSV columns: the JSON names, in the same order.
    pub(crate) const CSV_HEADER: [&'static str; 22] = [
        "Fecha-I",
        "Vlo-I",
        "Ori-I",
        "Des-I",
        "Emp-I",
        "Fecha-O",
        "Vlo-O",
        "Ori-O",
        "Des-O",
        "Emp-O",
        "DIA",
        "MES",
        "AÑO",
        "DIANOM",
        "TIPOVUELO",
        "OPERA",
        "SIGLAORI",
        "SIGLADES",
        "delay_minutes",
        "delayed",
        "period_day",
        "high_season",
    ];

    fn csv_fields(&self) -> [String; 22] {
        [
            self.scheduled_at.clone(),
            self.scheduled_flight.clone(),
            self.scheduled_origin.clone(),
            self.scheduled_destination.clone(),
            self.scheduled_airline.clone(),
            self.operated_at.clone(),
            self.operated_flight.clone(),
            self.operated_origin.clone(),
            self.operated_destination.clone(),
            self.operated_airline.clone(),
            self.day.to_string(),
            self.month.to_string(),
            self.year.to_string(),
            self.day_name.clone(),
            self.flight_type.clone(),
            self.airline_name.clone(),
            self.origin_city.clone(),
            self.destination_city.clone(),
            self.delay_minutes.to_string(),
            self.delayed.to_string(),
            self.period_day.clone(),
            self.high_season.to_string(),
        ]
    }

    fn cursor(&self) -> String {
        Cursor { scheduled_at: self.sort_at, partition: self.source_partition, offset: self.source_offset }.encode()
    }
}

impl FlightsRequest {
    fn sql(&self, table: &str) -> String {
        let mut conditions = self.filters.conditions();
        if self.cursor.is_some() {
            conditions.push(
                "(toUInt32(scheduled_at), source_partition, source_offset) > ({c_at:UInt32}, {c_p:Int32}, {c_o:Int64})",
            );
        }
        // FINAL: a record the sink wrote twice (crash before commit) is read once.
        format!(
            "SELECT {FLIGHT_COLUMNS} FROM {table} FINAL {} ORDER BY scheduled_at, source_partition, source_offset \
             LIMIT {{limit:UInt32}}",
            where_clause(&conditions)
        )
    }

    async fn load(self, state: AppState, format: Format) -> Result<Body, ApiError> {
        let query =
            result_limits(state.clickhouse.query(&self.sql(&state.table)), self.limit + 1, PAGE_MAX_RESULT_BYTES);
        let mut query = self.filters.bind(query).param("limit", self.limit + 1);
        if let Some(c) = &self.cursor {
            query = query.param("c_at", c.scheduled_at).param("c_p", c.partition).param("c_o", c.offset);
        }
        let rows = bounded(state.call_timeout, query.fetch_all::<FlightOut>()).await?;
        let limit = self.limit as usize;
        Ok(match format {
            Format::Json => answer::json(page_json(&rows, limit, PAGE_MAX_RESPONSE_BYTES, FlightOut::cursor)),
            Format::Csv => {
                let (bytes, next_cursor) = page_csv(&rows, limit, PAGE_MAX_RESPONSE_BYTES);
                Body {
                    content_type: format.content_type(),
                    bytes: bytes.into(),
                    headers: next_cursor.map(|c| (NEXT_CURSOR_HEADER, c)).into_iter().collect(),
                }
            }
        })
    }
}

pub(crate) async fn flights(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let request = FlightsRequest::parse(&uri, state.max_rows)?;
    let format = Format::negotiate(&headers);
    let key = Key::Flights(request.clone(), format);
    answer::serve(&state, key, || request.load(state.clone(), format)).await
}

/// The CSV page: a header row, at most `limit` rows, ended (like `page_json`) before `max_bytes`;
/// the cursor to the rest, if any, goes into a header.
pub(crate) fn page_csv(rows: &[FlightOut], limit: usize, max_bytes: usize) -> (Vec<u8>, Option<String>) {
    let mut body = Vec::new();
    csv_line(&mut body, FlightOut::CSV_HEADER);
    let mut written = 0;
    for row in rows.iter().take(limit) {
        let start = body.len();
        csv_line(&mut body, row.csv_fields().iter().map(String::as_str));
        if written > 0 && body.len() > max_bytes {
            body.truncate(start);
            break;
        }
        written += 1;
    }
    let next_cursor = (written < rows.len()).then(|| rows[written - 1].cursor());
    (body, next_cursor)
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
