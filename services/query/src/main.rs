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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use clap::Parser;
use flightline_service::auth::Auth;
use flightline_service::config::{self, FromEnv, HttpLimits, QueryArgs, QueryConfig};
use flightline_service::server::{self, ApiError, ReadyCheck, Telemetry};

mod answer;
mod cache;
mod docs;
mod flights;
mod params;
mod stats;

#[derive(Parser)]
#[command(name = "flightline-query", version, about = "Stored flights and delay statistics over HTTP")]
struct Cli {}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) clickhouse: clickhouse::Client,
    /// `` `database`.`table` ``, from the operator's (validated) settings.
    pub(crate) table: Arc<str>,
    pub(crate) max_rows: u32,
    /// How long a ClickHouse call may take before the client gives up.
    pub(crate) call_timeout: Duration,
    /// Answers by normalized request (`cache.rs`).
    pub(crate) cache: Arc<cache::Cache<answer::Key, answer::Body, ApiError>>,
}

/// Result bounds. A page holds at most `QUERY_MAX_ROWS` (10,000) + 1 rows; a full page of the
/// data set is 1.3 MiB by ClickHouse's count (measured; 1.5 MB as RowBinary), so it fits in 4 MiB;
/// rows of long fields (ingest allows 256 bytes each) make ClickHouse refuse the page (422: ask
/// for a smaller `limit`). The JSON answer is cut at `PAGE_MAX_RESPONSE_BYTES` (the page ends
/// early, `next_cursor` goes on from there): a control character is 6 bytes of JSON, so without
/// the cut 4 MiB of rows could become 24 MiB. One page request thus holds at most ~4 MiB of rows
/// as read (about twice that as Rust strings) plus 8 MiB of JSON: under 20 MiB.
pub(crate) const PAGE_MAX_RESULT_BYTES: u64 = 4 * 1024 * 1024;
pub(crate) const PAGE_MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// A statistics answer holds one row per group, at most `stats::STATS_MAX_LIMIT` (5,000) + 2
/// (`truncated` says more exist), so anyone posting many distinct values cannot make the answer
/// fail for everyone; the total still counts every flight. 5,000 rows of three keys of at most
/// 256 bytes and their figures stay under 8 MiB as read.
pub(crate) const STATS_MAX_RESULT_BYTES: u64 = 8 * 1024 * 1024;
/// The client waits this much longer than `max_execution_time`, so ClickHouse's own error wins
/// when the server is alive.
pub(crate) const CALL_TIMEOUT_MARGIN: Duration = Duration::from_secs(2);

/// Settings every statement runs with.
pub(crate) fn read_only(client: clickhouse::Client, max_execution_seconds: u32) -> clickhouse::Client {
    config::clickhouse_read_only_settings(max_execution_seconds)
        .into_iter()
        .fold(client, |client, (name, value)| client.with_setting(name, value))
}

/// The result cache's bounds: `QUERY_FRESHNESS_MS` (default 2000, at most an hour, 0 = no cache;
/// the operator writes it from `spec.query.freshnessMs`), `QUERY_CACHE_MAX_ENTRIES` (default
/// 1,024) and `QUERY_CACHE_MAX_BYTES` (default 64 MiB; an answer over an eighth of it is not stored).
fn cache_limits(query: &QueryArgs) -> anyhow::Result<cache::Limits> {
    Ok(cache::Limits {
        freshness: Duration::from_millis(query.freshness_ms),
        max_entries: usize::try_from(query.cache_max_entries)?,
        max_bytes: usize::try_from(query.cache_max_bytes)?,
    })
}

fn cache_metrics(telemetry: &Telemetry) -> cache::Metrics {
    let metrics = cache::Metrics::default();
    telemetry.register("cache_hits", "Answers served from the result cache", metrics.hits.clone());
    telemetry.register(
        "cache_misses",
        "Requests that started a ClickHouse query (no fresh cached answer)",
        metrics.misses.clone(),
    );
    telemetry.register(
        "cache_coalesced_waits",
        "Requests that waited for another request's ClickHouse query",
        metrics.coalesced.clone(),
    );
    telemetry.register(
        "cache_refreshes",
        "Background refreshes of answers older than half the freshness bound",
        metrics.refreshes.clone(),
    );
    telemetry.register("cache_entries", "Entries in the result cache", metrics.entries.clone());
    telemetry.register("cache_bytes", "Bytes of answers in the result cache", metrics.bytes.clone());
    metrics
}

pub(crate) fn result_limits(query: clickhouse::query::Query, rows: u32, bytes: u64) -> clickhouse::query::Query {
    query.with_setting("max_result_rows", rows.to_string()).with_setting("max_result_bytes", bytes.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    Cli::parse();
    flightline_service::server::init_logging();
    // Database and table are checked plain identifiers (`config::ClickHouseArgs`): they are quoted into SQL.
    let config = QueryConfig::from_env()?;
    config.server.log_start();
    let telemetry = Telemetry::new("query");
    let (database, table) = (&config.clickhouse.database, &config.clickhouse.table);
    // Rows are read by position (RowBinary); the SELECT lists the columns in struct order.
    let clickhouse = config.clickhouse.client()?.with_validation(false);
    let max_execution_seconds = config.query.max_execution_seconds;
    let clickhouse = read_only(clickhouse, max_execution_seconds);
    let cache = cache::Cache::new(cache_limits(&config.query)?, cache_metrics(&telemetry));
    let state = AppState {
        clickhouse: clickhouse.clone(),
        table: format!("`{database}`.`{table}`").into(),
        max_rows: config.query.max_rows,
        call_timeout: Duration::from_secs(max_execution_seconds.into()) + CALL_TIMEOUT_MARGIN,
        cache,
    };
    // The server caches the answer and gives up after a few seconds: a hung ClickHouse is "not ready".
    let ready: ReadyCheck = Arc::new(move || {
        let clickhouse = clickhouse.clone();
        Box::pin(async move { clickhouse.query("SELECT 1").execute().await.map_err(|e| format!("ClickHouse: {e}")) })
    });
    let routes = docs::routes(state);
    let limits = config.http.limits(HttpLimits::QUERY)?;
    let app = server::app(routes, telemetry, ready, Auth::from_args(&config.auth)?, limits);
    server::serve(config.server.listen_addr, app).await
}

pub(crate) fn database_error(e: clickhouse::error::Error) -> ApiError {
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

pub(crate) fn result_too_large() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "result_too_large",
        format!(
            "the answer would exceed {} MiB; ask for fewer rows (limit) or narrow the filters",
            PAGE_MAX_RESULT_BYTES >> 20
        ),
    )
}

pub(crate) fn store_timeout(message: &str) -> ApiError {
    ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::GATEWAY_TIMEOUT, "clickhouse_timeout", message) }
}

/// A ClickHouse call within the client-side timeout.
pub(crate) async fn bounded<T>(
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

#[cfg(test)]
mod router_tests;
#[cfg(test)]
mod tests;
