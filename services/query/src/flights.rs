//! `GET /v1/flights`: stored flights, filtered, in pages with a cursor; `GET /v1/flights/{id}`: one
//! flight by its identity (`record_id`). Both read `FINAL`: one row per identity, its newest version.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, StatusCode, Uri};
use axum::response::Response;
use clickhouse::Row;
use flightline_service::server::ApiError;
use serde::{Deserialize, Serialize};

use crate::answer::{self, Body, Key};
use crate::params::{Filters, Format, csv_line, query_params, where_clause};
use crate::{AppState, PAGE_MAX_RESPONSE_BYTES, PAGE_MAX_RESULT_BYTES, bounded, result_limits};

/// A CSV page's cursor to the next one (JSON pages carry `next_cursor` in the body).
pub(crate) const NEXT_CURSOR_HEADER: HeaderName = HeaderName::from_static("x-next-cursor");

/// A page position: the sort key `(scheduled_at, record_id)` of the last row returned, written
/// `<epoch seconds>.<record id>`. Ids are 32 hex digits as the sink writes them; a row of a table
/// filled by other means may hold any other text (or none), and a cursor must still go on from it:
/// such an id is written as the hex of its bytes, `<epoch seconds>-<hex>` (ids up to 1 KiB).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Cursor {
    pub(crate) scheduled_at: u32,
    pub(crate) record_id: String,
}

/// Longest id a cursor carries in hex form, in bytes.
const CURSOR_MAX_ID_BYTES: usize = 1024;

/// A record id: 32 lowercase hex digits (128 bits of SHA-256).
pub(crate) fn is_record_id(text: &str) -> bool {
    text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Cursor {
    pub(crate) fn parse(text: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::bad_field("cursor", "is not a cursor this service returned");
        let (at, id) = match text.split_once(['.', '-']) {
            Some((at, id)) if text.as_bytes()[at.len()] == b'.' => (at, is_record_id(id).then(|| id.to_string())),
            Some((at, hex)) => (at, from_hex(hex)),
            None => return Err(bad()),
        };
        let scheduled_at = at.parse().ok().filter(|_| at.bytes().all(|b| b.is_ascii_digit())).ok_or_else(bad)?;
        Ok(Cursor { scheduled_at, record_id: id.ok_or_else(bad)? })
    }

    pub(crate) fn encode(&self) -> String {
        if is_record_id(&self.record_id) {
            format!("{}.{}", self.scheduled_at, self.record_id)
        } else {
            let hex: String = self.record_id.bytes().map(|b| format!("{b:02x}")).collect();
            format!("{}-{hex}", self.scheduled_at)
        }
    }
}

/// Text from lowercase hex of its UTF-8 bytes, at most `CURSOR_MAX_ID_BYTES` of them.
fn from_hex(hex: &str) -> Option<String> {
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * CURSOR_MAX_ID_BYTES {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let bytes: Option<Vec<u8>> = hex.as_bytes().chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect();
    String::from_utf8(bytes?).ok()
}

/// A stored flight: the data set's columns, its id and the derived columns.
#[derive(Row, Deserialize, Serialize, utoipa::ToSchema)]
pub(crate) struct FlightOut {
    /// The record's identity (`record_id`).
    pub(crate) id: String,
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
}

pub(crate) const FLIGHT_COLUMNS: &str = "record_id, toString(scheduled_at, 'UTC'), scheduled_flight, toString(scheduled_origin), \
    toString(scheduled_destination), toString(scheduled_airline), toString(operated_at, 'UTC'), operated_flight, \
    toString(operated_origin), toString(operated_destination), toString(operated_airline), day, month, year, \
    toString(day_name), toString(flight_type), toString(airline_name), toString(origin_city), \
    toString(destination_city), delay_minutes, delayed, toString(period_day), high_season, \
    toUInt32(scheduled_at)";

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
    pub(crate) const CSV_HEADER: [&'static str; 23] = [
        "id",
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

    fn csv_fields(&self) -> [String; 23] {
        [
            self.id.clone(),
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

    pub(crate) fn cursor(&self) -> String {
        Cursor { scheduled_at: self.sort_at, record_id: self.id.clone() }.encode()
    }
}

impl FlightsRequest {
    fn sql(&self, table: &str) -> String {
        let mut conditions = self.filters.conditions();
        if self.cursor.is_some() {
            // The first condition lets ClickHouse skip by the sorting key; the tuple is the exact one.
            conditions.push("scheduled_at >= toDateTime({c_at:UInt32})");
            conditions.push("(scheduled_at, record_id) > (toDateTime({c_at:UInt32}), {c_id:String})");
        }
        // FINAL: one row per identity, however often the record arrived; the newest version.
        format!(
            "SELECT {FLIGHT_COLUMNS} FROM {table} FINAL {} ORDER BY scheduled_at, record_id LIMIT {{limit:UInt32}}",
            where_clause(&conditions)
        )
    }

    async fn load(self, state: AppState, format: Format) -> Result<Body, ApiError> {
        let query =
            result_limits(state.clickhouse.query(&self.sql(&state.table)), self.limit + 1, PAGE_MAX_RESULT_BYTES);
        let mut query = self.filters.bind(query).param("limit", self.limit + 1);
        if let Some(c) = &self.cursor {
            query = query.param("c_at", c.scheduled_at).param("c_id", &c.record_id);
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

/// Stored flights, filtered, a page at a time, sorted by scheduled time and id; JSON, or CSV with
/// `Accept: text/csv` (the next page's cursor then in `X-Next-Cursor`).
#[utoipa::path(
    get,
    path = "/v1/flights",
    tag = "query",
    params(FlightsRequest),
    responses(
        (status = 200, description = "A page of flights.",
         content((crate::docs::FlightPage = "application/json"), (String = "text/csv")),
         headers(
            ("Age" = u64, description = "Whole seconds since the ClickHouse query behind this answer started (the result cache)."),
            ("X-Flightline-Data-Age-Ms" = u64, description = "The same, in milliseconds: at most the pipeline's freshness bound for a cached answer."),
            ("X-Next-Cursor" = String, description = "CSV pages: the cursor of the next page, when there is one."),
         )),
        (status = 400, description = "`invalid_request`: a parameter is unknown, given twice or malformed (`field` names \
         it); `invalid_query`: the query string cannot be decoded.", body = ApiError),
        (status = 422, description = "`result_too_large`: the answer would exceed the result limit; ask for a smaller \
         `limit` or narrow the filters.", body = ApiError),
        (status = 503, description = "`clickhouse_unavailable`: the flight store did not answer; `internal_error`: the \
         answer was lost inside the service.", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
        (status = 504, description = "`clickhouse_timeout`: the flight store did not answer in time.", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
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

/// `GET /v1/flights/{id}`: the flight with this identity, its newest version; 400 `invalid_id` for
/// anything but 32 lowercase hex digits, 404 `flight_not_found` when no row has it (not cached: a
/// flight stored a moment later is found at once).
#[utoipa::path(
    get,
    path = "/v1/flights/{id}",
    tag = "query",
    params(("id" = String, Path, pattern = "^[0-9a-f]{32}$",
            description = "The flight's id: 32 lowercase hex digits (`id` in /v1/flights, `ids` of ingest's 202).")),
    responses(
        (status = 200, description = "The flight, its newest version.",
         content((FlightOut = "application/json"), (String = "text/csv")),
         headers(
            ("Age" = u64, description = "Whole seconds since the ClickHouse query behind this answer started (the result cache)."),
            ("X-Flightline-Data-Age-Ms" = u64, description = "The same, in milliseconds: at most the pipeline's freshness bound for a cached answer."),
         )),
        (status = 400, description = "`invalid_id`: not 32 lowercase hex digits.", body = ApiError),
        (status = 404, description = "`flight_not_found`: no flight has this id.", body = ApiError),
        (status = 422, description = "`result_too_large`: the answer would exceed the result limit; ask for a smaller \
         `limit` or narrow the filters.", body = ApiError),
        (status = 503, description = "`clickhouse_unavailable`: the flight store did not answer; `internal_error`: the \
         answer was lost inside the service.", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
        (status = 504, description = "`clickhouse_timeout`: the flight store did not answer in time.", body = ApiError,
         headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    )
)]
pub(crate) async fn flight(
    State(state): State<AppState>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // An id that is not even UTF-8 (`%FF`) is refused like any other malformed id: in JSON, not
    // with axum's plain-text rejection.
    let id = id.map(|Path(id)| id).unwrap_or_default();
    if !is_record_id(&id) {
        return Err(ApiError {
            field: Some("id".into()),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_id",
                "id: a flight id is 32 lowercase hex digits (the `id` of a flight in /v1/flights)",
            )
        });
    }
    let format = Format::negotiate(&headers);
    let key = Key::Flight(id.clone(), format);
    let load_state = state.clone();
    answer::serve(&state, key, || async move {
        let state = load_state;
        let sql = format!("SELECT {FLIGHT_COLUMNS} FROM {} FINAL WHERE record_id = {{id:String}} LIMIT 1", state.table);
        let query = result_limits(state.clickhouse.query(&sql), 1, PAGE_MAX_RESULT_BYTES).param("id", &id);
        let row = bounded(state.call_timeout, query.fetch_optional::<FlightOut>()).await?;
        let row = row.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "flight_not_found", format!("no flight has the id {id}"))
        })?;
        Ok(match format {
            Format::Json => answer::json(serde_json::to_vec(&row).expect("a row serializes")),
            Format::Csv => {
                let mut body = Vec::new();
                csv_line(&mut body, FlightOut::CSV_HEADER);
                csv_line(&mut body, row.csv_fields().iter().map(String::as_str));
                Body { content_type: format.content_type(), bytes: body.into(), headers: Vec::new() }
            }
        })
    })
    .await
}
