//! `GET /v1/stats/delays`: delay statistics per group, computed in ClickHouse over a deduplicated
//! (`FINAL`) read, and served through the result cache.
//!
//! `by` names one to three dimensions (`by=airline,month`) from a fixed list: columns (`airline`,
//! `month` = the data set's MES, `destination`, `period_day`, `type`, `high_season`) and time buckets
//! over the scheduled time (UTC as stored): `day` (date), `week` (the ISO week's Monday),
//! `year_month` (`2017-03`), `hour_of_day` (0-23). Each group has its flights, delayed flights, delay
//! rate and delay minutes (mean, and p50/p90/p99 by `quantilesExact`: the value at 0-based position
//! `floor(level * n)` of the group's sorted delays, no interpolation). Groups come largest first,
//! or in the dimensions' order when one of them is a time bucket (a time series); `limit` (default
//! 1,000, at most 5,000) lists the first ones and `truncated` says more exist. The total counts every
//! flight, listed or not.

use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use clickhouse::Row;
use flightline_service::server::ApiError;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::answer::{self, Body, Key};
use crate::params::{Filters, Format, csv_line, query_params, where_clause};
use crate::{AppState, STATS_MAX_RESULT_BYTES, bounded, result_limits};

/// Groups listed when `limit` is not given, and the most `limit` may ask for: 5,000 groups of three
/// keys of at most 256 bytes (ingest's field limit) stay under 8 MiB as read.
pub(crate) const STATS_DEFAULT_LIMIT: u32 = 1_000;
pub(crate) const STATS_MAX_LIMIT: u32 = 5_000;
/// `by` takes at most this many dimensions.
pub(crate) const MAX_DIMENSIONS: usize = 3;

/// What a group can be keyed by: the only SQL a `by` value selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Dimension {
    Airline,
    Month,
    Destination,
    PeriodDay,
    Type,
    HighSeason,
    Day,
    Week,
    YearMonth,
    HourOfDay,
}

impl Dimension {
    pub(crate) const ALL: [Dimension; 10] = [
        Dimension::Airline,
        Dimension::Month,
        Dimension::Destination,
        Dimension::PeriodDay,
        Dimension::Type,
        Dimension::HighSeason,
        Dimension::Day,
        Dimension::Week,
        Dimension::YearMonth,
        Dimension::HourOfDay,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Dimension::Airline => "airline",
            Dimension::Month => "month",
            Dimension::Destination => "destination",
            Dimension::PeriodDay => "period_day",
            Dimension::Type => "type",
            Dimension::HighSeason => "high_season",
            Dimension::Day => "day",
            Dimension::Week => "week",
            Dimension::YearMonth => "year_month",
            Dimension::HourOfDay => "hour_of_day",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    /// What rows are grouped (and time series ordered) by.
    pub(crate) fn group_expression(self) -> &'static str {
        match self {
            Dimension::Airline => "airline_name",
            Dimension::Month => "month",
            Dimension::Destination => "destination_city",
            Dimension::PeriodDay => "period_day",
            Dimension::Type => "flight_type",
            Dimension::HighSeason => "high_season",
            Dimension::Day => "toDate(scheduled_at, 'UTC')",
            Dimension::Week => "toMonday(scheduled_at, 'UTC')",
            Dimension::YearMonth => "toStartOfMonth(scheduled_at, 'UTC')",
            Dimension::HourOfDay => "toHour(scheduled_at, 'UTC')",
        }
    }

    /// The group's key as text.
    fn key_expression(self) -> String {
        match self {
            Dimension::YearMonth => format!("formatDateTime({}, '%Y-%m')", self.group_expression()),
            _ => format!("toString({})", self.group_expression()),
        }
    }

    fn is_time(self) -> bool {
        matches!(self, Dimension::Day | Dimension::Week | Dimension::YearMonth | Dimension::HourOfDay)
    }
}

/// What `GET /v1/stats/delays` asks for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct StatsRequest {
    pub(crate) by: Vec<Dimension>,
    pub(crate) filters: Filters,
    pub(crate) limit: u32,
}

impl StatsRequest {
    pub(crate) fn parse(uri: &Uri) -> Result<Self, ApiError> {
        let params = query_params(uri, &["by", "limit"])?;
        let text = params.get("by").ok_or_else(|| ApiError::bad_field("by", "is required"))?;
        let names: Vec<&str> = Dimension::ALL.iter().map(|d| d.name()).collect();
        let mut by = Vec::new();
        for name in text.split(',') {
            let dimension = Dimension::parse(name).ok_or_else(|| {
                ApiError::bad_field(
                    "by",
                    format!("must be up to {MAX_DIMENSIONS} of {}, comma-separated", names.join(", ")),
                )
            })?;
            if by.contains(&dimension) {
                return Err(ApiError::bad_field("by", format!("names {} twice", dimension.name())));
            }
            by.push(dimension);
        }
        if by.len() > MAX_DIMENSIONS {
            return Err(ApiError::bad_field("by", format!("takes at most {MAX_DIMENSIONS} dimensions")));
        }
        let limit =
            match params.get("limit") {
                None => STATS_DEFAULT_LIMIT,
                Some(v) => v.parse::<u32>().ok().filter(|n| (1..=STATS_MAX_LIMIT).contains(n)).ok_or_else(|| {
                    ApiError::bad_field("limit", format!("must be a number from 1 to {STATS_MAX_LIMIT}"))
                })?,
            };
        Ok(Self { by, filters: Filters::parse(&params)?, limit })
    }

    /// One statement: the groups and, by `GROUPING SETS`, the total over every group in the same
    /// read (so they always agree). The total row sorts first; one row past `limit` says whether
    /// groups were left out.
    pub(crate) fn sql(&self, table: &str) -> String {
        let groups: Vec<&str> = self.by.iter().map(|d| d.group_expression()).collect();
        let keys: Vec<String> = self.by.iter().map(|d| d.key_expression()).collect();
        let order = if self.by.iter().any(|d| d.is_time()) {
            groups.join(", ")
        } else {
            format!("flights_n DESC, {}", groups.join(", "))
        };
        format!(
            "SELECT [{keys}] AS keys, count() AS flights_n, toUInt64(countIf(delayed)) AS delayed_n, \
             avg(delay_minutes) AS mean_minutes, quantilesExact(0.5, 0.9, 0.99)(delay_minutes) AS quantile_minutes, \
             toUInt8(grouping({groups}) != 0) AS is_total \
             FROM {table} FINAL {where_} GROUP BY GROUPING SETS (({groups}), ()) \
             ORDER BY is_total DESC, {order} LIMIT {rows}",
            keys = keys.join(", "),
            groups = groups.join(", "),
            where_ = where_clause(&self.filters.conditions()),
            rows = self.limit + 2,
        )
    }
}

#[derive(Row, Deserialize, Debug)]
pub(crate) struct GroupRow {
    pub(crate) keys: Vec<String>,
    pub(crate) flights: u64,
    pub(crate) delayed: u64,
    pub(crate) mean_minutes: f64,
    pub(crate) quantile_minutes: Vec<i32>,
    pub(crate) is_total: u8,
}

/// A group's keys, `{"airline": "Sky Airline", "month": "3"}`, in `by`'s order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Keys(pub(crate) Vec<(&'static str, String)>);

impl Serialize for Keys {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[derive(Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub(crate) struct DelayMinutes {
    /// Rounded to two decimals.
    pub(crate) mean: f64,
    pub(crate) p50: i32,
    pub(crate) p90: i32,
    pub(crate) p99: i32,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Group {
    /// The one key when `by` names one dimension (as before several were possible); `"all"` for the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) key: Option<String>,
    /// The group's value of each dimension of `by`, by name.
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub(crate) keys: Keys,
    pub(crate) flights: u64,
    pub(crate) delayed: u64,
    pub(crate) delay_rate: f64,
    /// `null` for a total over no flights.
    pub(crate) delay_minutes: Option<DelayMinutes>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct DelayStats {
    /// `by` as asked, e.g. `"airline,month"`.
    pub(crate) by: String,
    pub(crate) dimensions: Vec<&'static str>,
    pub(crate) total: Group,
    pub(crate) groups: Vec<Group>,
    /// More groups exist than the `limit` listed.
    pub(crate) truncated: bool,
}

fn rounded(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn group(key: Option<String>, keys: Keys, row: Option<&GroupRow>) -> Group {
    let (flights, delayed) = row.map_or((0, 0), |r| (r.flights, r.delayed));
    let delay_rate = if flights == 0 { 0.0 } else { rounded(delayed as f64 / flights as f64, 4) };
    let delay_minutes = row.filter(|r| r.flights > 0 && r.quantile_minutes.len() == 3).map(|r| DelayMinutes {
        mean: rounded(r.mean_minutes, 2),
        p50: r.quantile_minutes[0],
        p90: r.quantile_minutes[1],
        p99: r.quantile_minutes[2],
    });
    Group { key, keys, flights, delayed, delay_rate, delay_minutes }
}

pub(crate) fn delay_stats(request: &StatsRequest, rows: Vec<GroupRow>) -> DelayStats {
    let total_row = rows.iter().find(|r| r.is_total != 0);
    let total = group(Some("all".into()), Keys::default(), total_row);
    let mut groups: Vec<Group> = rows
        .iter()
        .filter(|r| r.is_total == 0)
        .map(|r| {
            let keys = Keys(request.by.iter().map(|d| d.name()).zip(r.keys.iter().cloned()).collect());
            let key = (request.by.len() == 1).then(|| r.keys.first().cloned().unwrap_or_default());
            group(key, keys, Some(r))
        })
        .collect();
    let truncated = groups.len() > request.limit as usize;
    groups.truncate(request.limit as usize);
    DelayStats {
        by: request.by.iter().map(|d| d.name()).collect::<Vec<_>>().join(","),
        dimensions: request.by.iter().map(|d| d.name()).collect(),
        total,
        groups,
        truncated,
    }
}

/// CSV: a header row (the dimensions, then the figures), one line per listed group; the total is
/// not a line (sum the groups, or ask for JSON), `X-Flightline-Truncated` says whether groups were
/// left out.
pub(crate) fn stats_csv(stats: &DelayStats) -> Vec<u8> {
    let mut out = Vec::new();
    let figures = ["flights", "delayed", "delay_rate", "delay_minutes_mean", "delay_minutes_p50", "delay_minutes_p90"];
    let header = stats.dimensions.iter().copied().chain(figures).chain(["delay_minutes_p99"]);
    csv_line(&mut out, header);
    for g in &stats.groups {
        let minutes = g.delay_minutes.as_ref();
        let numbers = [
            g.flights.to_string(),
            g.delayed.to_string(),
            g.delay_rate.to_string(),
            minutes.map_or(String::new(), |m| m.mean.to_string()),
            minutes.map_or(String::new(), |m| m.p50.to_string()),
            minutes.map_or(String::new(), |m| m.p90.to_string()),
            minutes.map_or(String::new(), |m| m.p99.to_string()),
        ];
        csv_line(&mut out, g.keys.0.iter().map(|(_, v)| v.as_str()).chain(numbers.iter().map(String::as_str)));
    }
    out
}

/// Delay statistics per group of one to three dimensions (columns or time buckets): flights,
/// delayed flights, delay rate and delay minutes (mean, p50, p90, p99), with the total over every
/// group; JSON, or CSV with `Accept: text/csv` (groups only).
#[utoipa::path(
    get,
    path = "/v1/stats/delays",
    tag = "query",
    params(StatsRequest),
    responses(
        (status = 200, description = "The groups, largest first (in time order when a dimension is a time bucket).",
         content((DelayStats = "application/json"), (String = "text/csv")),
         headers(
            ("Age" = u64, description = "Whole seconds since the ClickHouse query behind this answer started (the result cache)."),
            ("X-Flightline-Data-Age-Ms" = u64, description = "The same, in milliseconds: at most the pipeline's freshness bound for a cached answer."),
            ("X-Flightline-Truncated" = bool, description = "CSV: whether groups past `limit` were left out."),
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
pub(crate) async fn delays(State(state): State<AppState>, headers: HeaderMap, uri: Uri) -> Result<Response, ApiError> {
    let request = StatsRequest::parse(&uri)?;
    let format = Format::negotiate(&headers);
    let key = Key::Stats(request.clone(), format);
    answer::serve(&state, key, || {
        let state = state.clone();
        async move {
            let query = result_limits(
                state.clickhouse.query(&request.sql(&state.table)),
                request.limit + 2,
                STATS_MAX_RESULT_BYTES,
            );
            let rows = bounded(state.call_timeout, request.filters.bind(query).fetch_all::<GroupRow>()).await?;
            let stats = delay_stats(&request, rows);
            Ok(match format {
                Format::Json => answer::json(serde_json::to_vec(&stats).expect("statistics serialize")),
                Format::Csv => Body {
                    content_type: format.content_type(),
                    bytes: stats_csv(&stats).into(),
                    headers: vec![(TRUNCATED_HEADER, stats.truncated.to_string())],
                },
            })
        }
    })
    .await
}

const TRUNCATED_HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-flightline-truncated");

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use serde_json::json;

    fn parse(query: &str) -> Result<StatsRequest, ApiError> {
        StatsRequest::parse(&format!("/v1/stats/delays?{query}").parse().unwrap())
    }

    #[test]
    fn by_takes_up_to_three_known_dimensions_once_each() {
        let r = parse("by=airline,month&limit=10").unwrap();
        assert_eq!((r.by.as_slice(), r.limit), ([Dimension::Airline, Dimension::Month].as_slice(), 10));
        let r = parse("by=week,hour_of_day,type").unwrap();
        assert_eq!(r.by, [Dimension::Week, Dimension::HourOfDay, Dimension::Type]);
        assert_eq!(parse("by=day").unwrap().limit, STATS_DEFAULT_LIMIT);
        for (query, field) in [
            ("by=airline,month,day,week", "by"),
            ("by=airline,airline", "by"),
            ("by=airline,", "by"),
            ("by=", "by"),
            ("by=hour", "by"),
            ("by=airline%2Cmonth%3BDROP", "by"),
            ("by=Airline", "by"),
            ("by=airline&by=month", "by"),
            ("by=airline&limit=0", "limit"),
            ("by=airline&limit=5001", "limit"),
            ("by=airline&limit=x", "limit"),
            ("by=airline&top=3", "top"),
        ] {
            let e = parse(query).unwrap_err();
            assert_eq!((e.status, e.field.as_deref()), (StatusCode::BAD_REQUEST, Some(field)), "{query}");
        }
        assert!(parse("by=airline&limit=5000").is_ok());
    }

    #[test]
    fn equal_requests_written_differently_are_one_cache_key() {
        let a = parse("by=airline,month&airline=Grupo+LATAM&delayed=true").unwrap();
        let b = parse("delayed=true&airline=Grupo%20LATAM&by=airline,month&limit=1000").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, parse("by=month,airline&airline=Grupo+LATAM&delayed=true").unwrap());
    }

    #[test]
    fn sql_selects_only_listed_expressions_and_orders_time_series_by_time() {
        let sql = parse("by=airline,month&airline=x%27%20OR%201%3D1").unwrap().sql("`d`.`t`");
        assert!(sql.contains("GROUP BY GROUPING SETS ((airline_name, month), ())"), "{sql}");
        assert!(sql.contains("ORDER BY is_total DESC, flights_n DESC, airline_name, month LIMIT 1002"), "{sql}");
        assert!(sql.contains("FROM `d`.`t` FINAL WHERE (airline_name = {airline:String}"), "{sql}");
        assert!(!sql.contains("OR 1=1"));
        let sql = parse("by=airline,week&limit=5").unwrap().sql("t");
        assert!(sql.contains("ORDER BY is_total DESC, airline_name, toMonday(scheduled_at, 'UTC') LIMIT 7"), "{sql}");
        let sql = parse("by=year_month").unwrap().sql("t");
        assert!(sql.contains("[formatDateTime(toStartOfMonth(scheduled_at, 'UTC'), '%Y-%m')] AS keys"), "{sql}");
    }

    fn row(keys: &[&str], flights: u64, delayed: u64, is_total: u8) -> GroupRow {
        GroupRow {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            flights,
            delayed,
            mean_minutes: 9.123_456,
            quantile_minutes: vec![4, 26, 102],
            is_total,
        }
    }

    #[test]
    fn one_dimension_keeps_its_key_several_get_keys_and_the_limit_truncates() {
        let request = parse("by=airline,month&limit=2").unwrap();
        let rows = vec![
            row(&["", "0"], 100, 30, 1),
            row(&["A", "1"], 50, 10, 0),
            row(&["B", "2"], 30, 15, 0),
            row(&["C", "3"], 20, 5, 0),
        ];
        let stats = serde_json::to_value(delay_stats(&request, rows)).unwrap();
        let minutes = json!({"mean": 9.12, "p50": 4, "p90": 26, "p99": 102});
        assert_eq!(
            stats,
            json!({"by": "airline,month", "dimensions": ["airline", "month"],
                "total": {"key": "all", "keys": {}, "flights": 100, "delayed": 30, "delay_rate": 0.3, "delay_minutes": minutes},
                "groups": [
                    {"keys": {"airline": "A", "month": "1"}, "flights": 50, "delayed": 10, "delay_rate": 0.2, "delay_minutes": minutes},
                    {"keys": {"airline": "B", "month": "2"}, "flights": 30, "delayed": 15, "delay_rate": 0.5, "delay_minutes": minutes}],
                "truncated": true})
        );
        let request = parse("by=airline").unwrap();
        let stats = delay_stats(&request, vec![row(&[""], 3, 1, 1), row(&["Sky Airline"], 3, 1, 0)]);
        let group = serde_json::to_value(&stats.groups[0]).unwrap();
        assert_eq!(
            (&group["key"], &group["keys"], group["delay_rate"].as_f64()),
            (&json!("Sky Airline"), &json!({"airline": "Sky Airline"}), Some(0.3333))
        );
        assert!(!stats.truncated);
        // No flights: a zero total, no delay minutes, no groups.
        let stats = delay_stats(&request, vec![GroupRow { mean_minutes: f64::NAN, ..row(&[""], 0, 0, 1) }]);
        let value = serde_json::to_value(&stats).unwrap();
        assert_eq!(
            (&value["total"]["flights"], &value["total"]["delay_minutes"], &value["groups"]),
            (&json!(0), &json!(null), &json!([]))
        );
    }

    #[test]
    fn csv_has_a_header_row_and_quotes_what_needs_it() {
        let request = parse("by=airline,destination").unwrap();
        let rows = vec![row(&["", ""], 3, 1, 1), row(&["Sky, \"Air\"", "Puerto Montt"], 3, 1, 0)];
        let csv = String::from_utf8(stats_csv(&delay_stats(&request, rows))).unwrap();
        assert_eq!(
            csv,
            "airline,destination,flights,delayed,delay_rate,delay_minutes_mean,delay_minutes_p50,delay_minutes_p90,delay_minutes_p99\r\n\
             \"Sky, \"\"Air\"\"\",Puerto Montt,3,1,0.3333,9.12,4,26,102\r\n"
        );
    }
}
