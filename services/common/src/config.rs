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
