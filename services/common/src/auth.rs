//! API-key authentication. Keys are stored hashed (SHA-256, hex), one per line, in
//! `API_KEY_HASHES` (the operator sets it from the pipeline's Secret) or in the file named by
//! `API_KEYS_FILE`; a request shows its key in `Authorization: Bearer <key>` or `X-API-Key`.
//! Hashes are compared in constant time. With neither variable set, auth is off.
//!
//! 401 = no credentials (with `WWW-Authenticate`); 403 = a key that is not on the list.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::server::ApiError;

#[derive(Clone, Debug, Default)]
pub struct ApiKeys {
    hashes: Vec<[u8; 32]>,
}

impl ApiKeys {
    /// Parses the key file: one SHA-256 hex hash per line; `#` comments and blank lines ignored.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut hashes = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            hashes.push(decode_hex(line).ok_or_else(|| format!("line {}: not a SHA-256 hex hash", n + 1))?);
        }
        Ok(Self { hashes })
    }

    /// From `API_KEY_HASHES` or `API_KEYS_FILE`, or `None` (auth off) when neither is set.
    pub fn from_env() -> anyhow::Result<Option<Arc<Self>>> {
        let (source, text) = match (std::env::var("API_KEY_HASHES"), std::env::var("API_KEYS_FILE")) {
            (Ok(hashes), _) => ("API_KEY_HASHES".to_string(), hashes),
            (_, Ok(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("API_KEYS_FILE {path}: {e}"))?;
                (format!("API_KEYS_FILE {path}"), text)
            }
            _ => return Ok(None),
        };
        let keys = Self::parse(&text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        anyhow::ensure!(!keys.hashes.is_empty(), "{source} holds no keys");
        Ok(Some(Arc::new(keys)))
    }

    /// Whether `key` hashes to a listed hash. Every listed hash is compared, always, in constant time.
    pub fn allows(&self, key: &str) -> bool {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.hashes.iter().fold(subtle::Choice::from(0), |found, h| found | h.ct_eq(&hash)).into()
    }
}

/// The hex SHA-256 of a key, as the key file holds it.
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::trim);
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Middleware: lets a request through when auth is off or its key is listed.
pub async fn require_key(State(keys): State<Option<Arc<ApiKeys>>>, request: Request, next: Next) -> Response {
    let Some(keys) = keys else { return next.run(request).await };
    match presented_key(request.headers()) {
        None => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            )
            .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
            response
        }
        Some(key) if keys.allows(key) => next.run(request).await,
        Some(_) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", "this API key is not allowed").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_keys_pass_and_others_do_not() {
        let file = format!("# keys\n{}\n\n{}\n", hash_key("alpha"), hash_key("beta"));
        let keys = ApiKeys::parse(&file).unwrap();
        assert!(keys.allows("alpha"));
        assert!(keys.allows("beta"));
        assert!(!keys.allows("gamma"));
        assert!(!keys.allows(""));
    }

    #[test]
    fn malformed_key_files_are_rejected() {
        assert!(ApiKeys::parse("not-hex").is_err());
        assert!(ApiKeys::parse(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn keys_come_from_either_header() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k1"));
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k2"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}
