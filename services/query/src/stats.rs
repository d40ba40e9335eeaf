//! `GET /v1/stats/delays`: delay statistics per group, computed in ClickHouse.

use axum::Json;
use axum::extract::State;
use axum::http::Uri;
use clickhouse::Row;
use flightline_service::server::ApiError;
use serde::{Deserialize, Serialize};

use crate::params::{Filters, query_params, where_clause};
use crate::{AppState, STATS_MAX_GROUPS, STATS_MAX_RESULT_BYTES, bounded, result_limits};

#[derive(Row, Deserialize)]
pub(crate) struct GroupRow {
    pub(crate) key: String,
    pub(crate) flights: u64,
    pub(crate) delayed: u64,
    /// Over all groups, listed or not.
    pub(crate) all_flights: u64,
    pub(crate) all_delayed: u64,
}

#[derive(Serialize)]
pub(crate) struct Group {
    pub(crate) key: String,
    pub(crate) flights: u64,
    pub(crate) delayed: u64,
    pub(crate) delay_rate: f64,
}

#[derive(Serialize)]
pub(crate) struct DelayStats {
    pub(crate) by: String,
    pub(crate) total: Group,
    pub(crate) groups: Vec<Group>,
    /// More groups exist than the `STATS_MAX_GROUPS` largest listed.
    pub(crate) truncated: bool,
}

/// Grouping expressions: the only SQL a `by` value selects, from this fixed list.
pub(crate) fn group_expression(by: &str) -> Option<&'static str> {
    Some(match by {
        "airline" => "toString(airline_name)",
        "month" => "toString(month)",
        "destination" => "toString(destination_city)",
        "period_day" => "toString(period_day)",
        "type" => "toString(flight_type)",
        _ => return None,
    })
}

pub(crate) fn group(key: String, flights: u64, delayed: u64) -> Group {
    let delay_rate = if flights == 0 { 0.0 } else { (delayed as f64 / flights as f64 * 1e4).round() / 1e4 };
    Group { key, flights, delayed, delay_rate }
}

/// What `GET /v1/stats/delays` asks for.
#[derive(Debug)]
pub(crate) struct StatsRequest {
    pub(crate) by: String,
    pub(crate) expression: &'static str,
    pub(crate) filters: Filters,
}

impl StatsRequest {
    pub(crate) fn parse(uri: &Uri) -> Result<Self, ApiError> {
        let params = query_params(uri, &["by"])?;
        let by = params.get("by").ok_or_else(|| ApiError::bad_field("by", "is required"))?;
        let expression = group_expression(by)
            .ok_or_else(|| ApiError::bad_field("by", "must be airline, month, destination, period_day or type"))?;
        Ok(Self { by: by.clone(), expression, filters: Filters::parse(&params)? })
    }
}

pub(crate) async fn delays(State(state): State<AppState>, uri: Uri) -> Result<Json<DelayStats>, ApiError> {
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

pub(crate) fn delay_stats(by: String, mut rows: Vec<GroupRow>) -> DelayStats {
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
