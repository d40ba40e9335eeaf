//! Answers as the cache keeps them (rendered bodies) and as the client gets them (with their age).

use std::future::Future;

use axum::body::Bytes;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use flightline_service::server::ApiError;

use crate::AppState;
use crate::cache::{CacheError, Weigh};
use crate::flights::FlightsRequest;
use crate::params::Format;
use crate::stats::StatsRequest;

/// A request as the cache tells it apart: its parsed parameters and the media type asked for, so
/// `?a=1&b=2` and `?b=2&a=1` (or `Grupo+LATAM` and `Grupo%20LATAM`) share one entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Stats(StatsRequest, Format),
    Flights(FlightsRequest, Format),
    Flight(String, Format),
}

/// A rendered answer.
#[derive(Debug)]
pub(crate) struct Body {
    pub(crate) content_type: &'static str,
    pub(crate) bytes: Bytes,
    /// Headers beside the body (a CSV page's next cursor).
    pub(crate) headers: Vec<(HeaderName, String)>,
}

impl Weigh for Body {
    fn weight(&self) -> usize {
        // Plus what the key, the entry and the headers hold: a few hundred bytes.
        self.bytes.len() + self.headers.iter().map(|(_, v)| v.len() + 64).sum::<usize>() + 512
    }
}

pub(crate) const DATA_AGE_HEADER: HeaderName = HeaderName::from_static("x-flightline-data-age-ms");

/// The cached answer for `key`, or `load`'s, with `Age` (whole seconds, RFC 9111) and
/// `X-Flightline-Data-Age-Ms`: how long ago the ClickHouse query behind the answer started.
pub(crate) async fn serve<Fut>(state: &AppState, key: Key, load: impl FnOnce() -> Fut) -> Result<Response, ApiError>
where
    Fut: Future<Output = Result<Body, ApiError>> + Send + 'static,
{
    let answer = state.cache.get(key, load).await.map_err(|e| match e {
        CacheError::Load(e) => clone_error(&e),
        CacheError::Lost => ApiError {
            retry_after: Some(1),
            ..ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "internal_error", "the query was lost; retry")
        },
    })?;
    let body = &answer.value;
    let mut response = body.bytes.clone().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(body.content_type));
    headers.insert(header::VARY, HeaderValue::from_static("accept"));
    headers.insert(header::AGE, HeaderValue::from(answer.age.as_secs()));
    headers.insert(DATA_AGE_HEADER, HeaderValue::from(answer.age.as_millis() as u64));
    for (name, value) in &body.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name.clone(), value);
        }
    }
    Ok(response)
}

/// One failed load answers every request that waited for it.
fn clone_error(e: &ApiError) -> ApiError {
    ApiError {
        status: e.status,
        error: e.error,
        message: e.message.clone(),
        field: e.field.clone(),
        details: e.details.clone(),
        retry_after: e.retry_after,
    }
}

/// A JSON body.
pub(crate) fn json(bytes: Vec<u8>) -> Body {
    Body { content_type: Format::Json.content_type(), bytes: bytes.into(), headers: Vec::new() }
}
