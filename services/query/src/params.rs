//! Query-string parsing both endpoints share: known names given once, typed filters, and the SQL
//! conditions they select (typed parameters only, never user text).

use std::collections::BTreeMap;

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use flightline_service::flight::parse_datetime;
use flightline_service::server::ApiError;

/// Filters both endpoints share, parsed and checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct Filters {
    pub(crate) from: Option<u32>,
    pub(crate) to: Option<u32>,
    pub(crate) airline: Option<String>,
    pub(crate) origin: Option<String>,
    pub(crate) destination: Option<String>,
    pub(crate) flight_type: Option<String>,
    pub(crate) delayed: Option<bool>,
}

pub(crate) const FILTER_PARAMS: [&str; 7] = ["from", "to", "airline", "origin", "destination", "type", "delayed"];

/// At most this much of a client's text is echoed in an error.
pub(crate) fn clip(text: &str) -> &str {
    text.char_indices().nth(60).map_or(text, |(end, _)| &text[..end])
}

/// The query string as name → value, each name known to this endpoint and given once.
pub(crate) fn query_params(uri: &Uri, extra: &[&str]) -> Result<BTreeMap<String, String>, ApiError> {
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
pub(crate) fn parse_bound(name: &str, value: &str, end_of_day: bool) -> Result<u32, ApiError> {
    let (text, whole_day) =
        if value.len() == 10 { (format!("{value} 00:00:00"), true) } else { (value.to_string(), false) };
    let epoch = parse_datetime(&text)
        .ok_or_else(|| ApiError::bad_field(name, "must be a date YYYY-MM-DD or date-time YYYY-MM-DD HH:MM:SS"))?
        .epoch;
    let epoch = if whole_day && end_of_day { epoch + 86_399 } else { epoch };
    u32::try_from(epoch).map_err(|_| ApiError::bad_field(name, "is out of range"))
}

pub(crate) fn short_text(name: &str, value: &str) -> Result<String, ApiError> {
    if value.is_empty() || value.len() > 100 || value.chars().any(char::is_control) {
        return Err(ApiError::bad_field(name, "must be 1 to 100 printable characters"));
    }
    Ok(value.to_string())
}

impl Filters {
    pub(crate) fn parse(params: &BTreeMap<String, String>) -> Result<Self, ApiError> {
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
    pub(crate) fn conditions(&self) -> Vec<&'static str> {
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

    pub(crate) fn bind(&self, mut q: clickhouse::query::Query) -> clickhouse::query::Query {
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

pub(crate) fn where_clause(conditions: &[&str]) -> String {
    if conditions.is_empty() { String::new() } else { format!("WHERE {}", conditions.join(" AND ")) }
}

/// The media type of an answer: JSON unless the client's `Accept` prefers `text/csv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Format {
    Json,
    Csv,
}

impl Format {
    /// The listed type with the highest `q` among `application/json`, `text/csv` and the wildcards
    /// (which mean JSON); the first listed wins a tie. No `Accept`, or nothing we know: JSON.
    pub(crate) fn negotiate(headers: &HeaderMap) -> Self {
        let mut best = (Format::Json, -1.0f32);
        for value in headers.get_all(header::ACCEPT) {
            let Ok(text) = value.to_str() else { continue };
            for range in text.split(',') {
                let mut parts = range.split(';');
                let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
                let format = match media.as_str() {
                    "text/csv" => Format::Csv,
                    "application/json" | "*/*" | "application/*" => Format::Json,
                    _ => continue,
                };
                let q = parts
                    .filter_map(|p| p.trim().strip_prefix("q="))
                    .find_map(|q| q.trim().parse::<f32>().ok())
                    .unwrap_or(1.0);
                if q > 0.0 && q > best.1 {
                    best = (format, q);
                }
            }
        }
        best.0
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv; charset=utf-8; header=present",
        }
    }
}

/// One CSV line (RFC 4180): a field with a comma, quote, CR or LF, or leading/trailing space is
/// quoted, its quotes doubled; lines end with CRLF.
pub(crate) fn csv_line<'a>(out: &mut Vec<u8>, fields: impl IntoIterator<Item = &'a str>) {
    for (n, field) in fields.into_iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        let quote = field.contains([',', '"', '\r', '\n']) || field.starts_with(' ') || field.ends_with(' ');
        if quote {
            out.push(b'"');
            out.extend_from_slice(field.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(field.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> Format {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, v.parse().unwrap());
        }
        Format::negotiate(&headers)
    }

    #[test]
    fn csv_only_when_the_client_prefers_it() {
        assert_eq!(accept(&[]), Format::Json);
        assert_eq!(accept(&["text/csv"]), Format::Csv);
        assert_eq!(accept(&["Text/CSV; charset=utf-8"]), Format::Csv);
        assert_eq!(accept(&["application/json, text/csv"]), Format::Json);
        assert_eq!(accept(&["text/csv, application/json"]), Format::Csv);
        assert_eq!(accept(&["application/json;q=0.5, text/csv"]), Format::Csv);
        assert_eq!(accept(&["text/csv;q=0.2, */*;q=0.8"]), Format::Json);
        assert_eq!(accept(&["text/csv;q=0"]), Format::Json);
        assert_eq!(accept(&["text/html", "text/csv"]), Format::Csv);
        assert_eq!(accept(&["*/*"]), Format::Json);
        assert_eq!(accept(&["text/csv;q=banana"]), Format::Csv);
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        let mut out = Vec::new();
        csv_line(&mut out, ["plain", "a,b", "say \"hi\"", "two\nlines", " padded", "", "ñandú"]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",\" padded\",,ñandú\r\n"
        );
    }

    #[test]
    fn equal_filters_written_differently_are_equal() {
        let parse = |query: &str| {
            let uri: Uri = format!("/v1/flights?{query}").parse().unwrap();
            Filters::parse(&query_params(&uri, &[]).unwrap()).unwrap()
        };
        assert_eq!(parse("airline=Sky+Airline&delayed=true"), parse("delayed=true&airline=Sky%20Airline"));
        assert_eq!(parse("to=2017-01-31"), parse("to=2017-01-31+23:59:59"));
        assert_ne!(parse("airline=Sky+Airline"), parse("origin=Sky+Airline"));
    }
}
