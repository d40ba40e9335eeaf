//! Configuration from the environment: the operator's ConfigMap and Deployment set these.

use std::str::FromStr;

/// A required variable.
pub fn required(name: &str) -> anyhow::Result<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty()).ok_or_else(|| anyhow::anyhow!("{name} must be set"))
}

/// An optional variable, parsed, with a default.
pub fn parsed<T: FromStr>(name: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|e| anyhow::anyhow!("{name}={v:?}: {e}")),
        _ => Ok(default),
    }
}

/// `LISTEN_ADDR`, default `0.0.0.0:8080`.
pub fn listen_addr() -> anyhow::Result<std::net::SocketAddr> {
    parsed("LISTEN_ADDR", std::net::SocketAddr::from(([0, 0, 0, 0], 8080)))
}

/// Environment of the HTTP limits, set per Deployment by the operator from `spec.<component>.limits`.
pub const HTTP_RATE_LIMIT_RPS_ENV: &str = "HTTP_RATE_LIMIT_RPS";
pub const HTTP_RATE_LIMIT_BURST_ENV: &str = "HTTP_RATE_LIMIT_BURST";
pub const HTTP_MAX_CONCURRENT_REQUESTS_ENV: &str = "HTTP_MAX_CONCURRENT_REQUESTS";
pub const HTTP_REQUEST_TIMEOUT_SECONDS_ENV: &str = "HTTP_REQUEST_TIMEOUT_SECONDS";
/// Service constants (not in the CRD) that the environment may override.
pub const HTTP_HEADER_READ_TIMEOUT_SECONDS_ENV: &str = "HTTP_HEADER_READ_TIMEOUT_SECONDS";
pub const HTTP_BODY_READ_TIMEOUT_SECONDS_ENV: &str = "HTTP_BODY_READ_TIMEOUT_SECONDS";
pub const HTTP_MAX_CONNECTIONS_ENV: &str = "HTTP_MAX_CONNECTIONS";

/// What one service's HTTP side allows: per-client rate, in-flight requests and time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Sustained requests per second per client; 0 turns rate limiting off.
    pub requests_per_second: u32,
    /// Requests a client may send at once before the sustained rate applies.
    pub burst: u32,
    /// Requests in flight before new ones get 503 + `Retry-After`.
    pub max_concurrent_requests: u32,
    /// Whole-request time, body read included.
    pub request_timeout_seconds: u32,
    /// Time to receive the whole request body.
    pub body_read_timeout_seconds: u32,
}

impl HttpLimits {
    /// The defaults equal the CRD's (`spec.<component>.limits`).
    pub const INGEST: Self = Self::defaults(20, 40, 16, 60);
    pub const QUERY: Self = Self::defaults(1000, 2000, 64, 15);
    pub const PREDICT: Self = Self::defaults(1000, 2000, 64, 10);

    const fn defaults(requests_per_second: u32, burst: u32, max_concurrent_requests: u32, timeout: u32) -> Self {
        Self {
            requests_per_second,
            burst,
            max_concurrent_requests,
            request_timeout_seconds: timeout,
            body_read_timeout_seconds: 30,
        }
    }

    /// The service's defaults, overridden by whatever the environment sets.
    pub fn from_env(defaults: Self) -> anyhow::Result<Self> {
        let limits = Self {
            requests_per_second: parsed(HTTP_RATE_LIMIT_RPS_ENV, defaults.requests_per_second)?,
            burst: parsed(HTTP_RATE_LIMIT_BURST_ENV, defaults.burst)?,
            max_concurrent_requests: parsed(HTTP_MAX_CONCURRENT_REQUESTS_ENV, defaults.max_concurrent_requests)?,
            request_timeout_seconds: parsed(HTTP_REQUEST_TIMEOUT_SECONDS_ENV, defaults.request_timeout_seconds)?,
            body_read_timeout_seconds: parsed(HTTP_BODY_READ_TIMEOUT_SECONDS_ENV, defaults.body_read_timeout_seconds)?,
        };
        anyhow::ensure!(limits.max_concurrent_requests > 0, "{HTTP_MAX_CONCURRENT_REQUESTS_ENV} must be at least 1");
        anyhow::ensure!(limits.request_timeout_seconds > 0, "{HTTP_REQUEST_TIMEOUT_SECONDS_ENV} must be at least 1");
        anyhow::ensure!(
            limits.body_read_timeout_seconds > 0,
            "{HTTP_BODY_READ_TIMEOUT_SECONDS_ENV} must be at least 1"
        );
        anyhow::ensure!(
            limits.requests_per_second == 0 || limits.burst > 0,
            "{HTTP_RATE_LIMIT_BURST_ENV} must be at least 1 when {HTTP_RATE_LIMIT_RPS_ENV} is set"
        );
        Ok(limits)
    }
}

/// How long a client may take to send the request line and headers (slow-loris bound), default 10 s.
pub fn header_read_timeout() -> anyhow::Result<std::time::Duration> {
    let seconds: u32 = parsed(HTTP_HEADER_READ_TIMEOUT_SECONDS_ENV, 10)?;
    anyhow::ensure!(seconds > 0, "{HTTP_HEADER_READ_TIMEOUT_SECONDS_ENV} must be at least 1");
    Ok(std::time::Duration::from_secs(seconds.into()))
}

/// How many connections a service holds open at once, default 1,024; past it, new connections
/// wait in the kernel's accept queue instead of each costing a task and buffers.
pub fn max_connections() -> anyhow::Result<usize> {
    let connections: usize = parsed(HTTP_MAX_CONNECTIONS_ENV, 1024)?;
    anyhow::ensure!(connections > 0, "{HTTP_MAX_CONNECTIONS_ENV} must be at least 1");
    Ok(connections)
}

/// ClickHouse settings every statement of query runs with: reads only (`readonly=2`, not 1, so the
/// per-query limits can still be set), a server-side time limit, and result limits that throw
/// rather than silently cut the answer.
pub fn clickhouse_read_only_settings(max_execution_seconds: u32) -> [(&'static str, String); 3] {
    [
        ("readonly", "2".into()),
        ("max_execution_time", max_execution_seconds.to_string()),
        ("result_overflow_mode", "throw".into()),
    ]
}
