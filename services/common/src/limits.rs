//! The HTTP guards every service's own routes run behind (health, readiness and metrics do not):
//! authentication with per-client rate limiting (429), a concurrency limit (503, never a queue) and
//! a whole-request timeout (503). Each refusal is a JSON `ApiError` with `Retry-After`.
//!
//! A client is its authenticated principal when auth is on, else its peer address. `X-Forwarded-For`
//! is not trusted: any client can write it, so trusting it would let one client spread its requests
//! over made-up addresses (escaping its limit) or charge them to someone else's address. Behind a
//! proxy every request then shares the proxy's address; give such callers API keys or tokens.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::Semaphore;

use crate::auth::Auth;
use crate::config::HttpLimits;
use crate::ratelimit::{ClientKey, RateLimiter, retry_after_seconds};
use crate::server::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    reason: &'static str,
}

/// Requests refused by the guards, by reason (`rate_limited`, `overloaded`, `timeout`).
pub(crate) type Refusals = Family<RefusalLabels, Counter>;

fn refuse(refusals: &Refusals, reason: &'static str, error: ApiError) -> Response {
    refusals.get_or_create(&RefusalLabels { reason }).inc();
    error.into_response()
}

/// Authentication and the per-client rate limit, in one step: the limiter needs the principal,
/// and a refused credential is charged to the peer address, so guessing keys is rate limited too.
pub(crate) struct Gate {
    pub auth: Option<Arc<Auth>>,
    pub limiter: Option<RateLimiter>,
    pub refusals: Refusals,
}

/// The peer address hyper accepted the connection from (`server::serve` adds it).
fn peer_address(request: &Request) -> IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| peer.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

pub(crate) async fn gate(State(gate): State<Arc<Gate>>, mut request: Request, next: Next) -> Response {
    let identity = match &gate.auth {
        Some(auth) => auth.authenticate(request.headers()),
        None => Ok(None),
    };
    if let Some(limiter) = &gate.limiter {
        let client = match &identity {
            Ok(Some(principal)) => ClientKey::principal(&principal.0),
            _ => ClientKey::address(peer_address(&request)),
        };
        if let Err(wait) = limiter.check(client) {
            let seconds = retry_after_seconds(wait);
            let error = ApiError {
                retry_after: Some(seconds),
                ..ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    format!("this client sent more requests than its rate limit allows; retry in {seconds} s"),
                )
            };
            return refuse(&gate.refusals, "rate_limited", error);
        }
    }
    match identity {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
        Err(denied) => denied.into_response(),
    }
}

pub(crate) struct Concurrency {
    pub permits: Semaphore,
    pub refusals: Refusals,
}

/// Answers 503 at once when `max_concurrent_requests` are in flight: a queue would only add latency
/// and memory while the client waits anyway.
pub(crate) async fn limit_concurrency(State(limit): State<Arc<Concurrency>>, request: Request, next: Next) -> Response {
    let Ok(_permit) = limit.permits.try_acquire() else {
        let error = ApiError {
            retry_after: Some(1),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the service is at its limit of concurrent requests; retry shortly",
            )
        };
        return refuse(&limit.refusals, "overloaded", error);
    };
    next.run(request).await
}

pub(crate) struct Deadline {
    pub timeout: Duration,
    pub refusals: Refusals,
}

/// The whole request, body read included, within `timeout`; dropping the handler's future cancels
/// whatever it was waiting for.
pub(crate) async fn limit_time(State(deadline): State<Arc<Deadline>>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline.timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let error = ApiError {
                retry_after: Some(1),
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "request_timeout",
                    format!("the request took longer than {} s", deadline.timeout.as_secs()),
                )
            };
            refuse(&deadline.refusals, "timeout", error)
        }
    }
}

/// The guards for `limits`, sharing one refusal counter.
pub(crate) fn guards(
    auth: Option<Arc<Auth>>,
    limits: &HttpLimits,
    refusals: Refusals,
) -> (Arc<Gate>, Arc<Concurrency>, Arc<Deadline>) {
    (
        Arc::new(Gate {
            auth,
            limiter: RateLimiter::new(limits.requests_per_second, limits.burst),
            refusals: refusals.clone(),
        }),
        Arc::new(Concurrency {
            permits: Semaphore::new(limits.max_concurrent_requests as usize),
            refusals: refusals.clone(),
        }),
        Arc::new(Deadline { timeout: Duration::from_secs(limits.request_timeout_seconds.into()), refusals }),
    )
}
