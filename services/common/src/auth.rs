//! Authentication: API keys and/or JWTs.
//!
//! API keys are stored hashed (SHA-256, hex), one per line, in `API_KEY_HASHES` (the operator sets
//! it from the pipeline's Secret) or in the file named by `API_KEYS_FILE`; hashes are compared in
//! constant time. JWTs are checked when `JWT_ALGORITHM` (`HS256` or `RS256`) and `JWT_KEY` (the
//! shared secret, or the PEM public key) are set, with `JWT_ISSUER` / `JWT_AUDIENCE` when given.
//! A request shows its credential in `Authorization: Bearer <key or token>` or `X-API-Key`.
//! With nothing configured, auth is off.
//!
//! 401 = no usable credential (missing, malformed, expired, bad signature; with
//! `WWW-Authenticate`); 403 = a valid credential that is not allowed here (unknown key, token for
//! another issuer or audience). The body says which.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
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

/// JWT verification settings.
pub struct Jwt {
    key: DecodingKey,
    validation: Validation,
}

impl Jwt {
    pub fn new(algorithm: &str, key: &str, issuer: Option<&str>, audience: Option<&str>) -> anyhow::Result<Self> {
        let (algorithm, key) = match algorithm {
            "HS256" => {
                anyhow::ensure!(key.len() >= 32, "an HS256 key must be at least 32 bytes");
                (Algorithm::HS256, DecodingKey::from_secret(key.as_bytes()))
            }
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(key.as_bytes())?),
            other => anyhow::bail!("JWT_ALGORITHM {other:?} is not HS256 or RS256"),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        if let Some(issuer) = issuer.filter(|i| !i.is_empty()) {
            validation.set_issuer(&[issuer]);
        }
        match audience.filter(|a| !a.is_empty()) {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self { key, validation })
    }

    fn check(&self, token: &str) -> Result<(), Denied> {
        match jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation) {
            Ok(_) => Ok(()),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidIssuer => Denied::Forbidden("the token's issuer is not accepted here"),
                ErrorKind::InvalidAudience => Denied::Forbidden("the token is for another audience"),
                ErrorKind::ExpiredSignature => Denied::Unauthenticated("the token has expired"),
                ErrorKind::ImmatureSignature => Denied::Unauthenticated("the token is not valid yet"),
                ErrorKind::InvalidSignature => Denied::Unauthenticated("the token's signature does not verify"),
                ErrorKind::InvalidAlgorithm => Denied::Unauthenticated("the token is signed with another algorithm"),
                ErrorKind::MissingRequiredClaim(_) => Denied::Unauthenticated("the token has no exp claim"),
                _ => Denied::Unauthenticated("the token is malformed"),
            }),
        }
    }
}

/// Everything a service checks callers against.
#[derive(Default)]
pub struct Auth {
    pub keys: Option<ApiKeys>,
    pub jwt: Option<Jwt>,
}

enum Denied {
    Unauthenticated(&'static str),
    Forbidden(&'static str),
}

impl Auth {
    /// From the environment; `None` (auth off) when neither API keys nor a JWT key are configured.
    pub fn from_env() -> anyhow::Result<Option<Arc<Self>>> {
        let keys = ApiKeys::from_env()?.map(|k| (*k).clone());
        let jwt = match (std::env::var("JWT_ALGORITHM"), std::env::var("JWT_KEY")) {
            (Ok(algorithm), Ok(key)) => Some(
                Jwt::new(
                    &algorithm,
                    &key,
                    std::env::var("JWT_ISSUER").ok().as_deref(),
                    std::env::var("JWT_AUDIENCE").ok().as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("JWT settings: {e}"))?,
            ),
            (Ok(_), Err(_)) | (Err(_), Ok(_)) => anyhow::bail!("JWT_ALGORITHM and JWT_KEY go together"),
            _ => None,
        };
        Ok((keys.is_some() || jwt.is_some()).then(|| Arc::new(Self { keys, jwt })))
    }

    fn check(&self, credential: Option<&str>) -> Result<(), Denied> {
        let Some(credential) = credential else {
            return Err(Denied::Unauthenticated("an API key or a bearer token is required"));
        };
        let looks_like_jwt = credential.split('.').count() == 3;
        match (&self.jwt, &self.keys) {
            (Some(jwt), _) if looks_like_jwt => jwt.check(credential),
            (_, Some(keys)) if keys.allows(credential) => Ok(()),
            (_, Some(_)) => Err(Denied::Forbidden("this API key is not allowed")),
            (_, None) => Err(Denied::Unauthenticated("a bearer JWT is required")),
        }
    }
}

/// Middleware: lets a request through when auth is off or its credential passes.
pub async fn require_auth(State(auth): State<Option<Arc<Auth>>>, request: Request, next: Next) -> Response {
    let Some(auth) = auth else { return next.run(request).await };
    match auth.check(presented_key(request.headers())) {
        Ok(()) => next.run(request).await,
        Err(Denied::Unauthenticated(why)) => {
            let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", why).into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
            response
        }
        Err(Denied::Forbidden(why)) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response(),
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

    fn token(claims: serde_json::Value, algorithm: Algorithm, key: &jsonwebtoken::EncodingKey) -> String {
        jsonwebtoken::encode(&jsonwebtoken::Header::new(algorithm), &claims, key).unwrap()
    }

    fn in_an_hour() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_expiry_issuer_and_audience() {
        let secret = "a-shared-secret-of-at-least-32-bytes!";
        let auth =
            Auth { keys: None, jwt: Some(Jwt::new("HS256", secret, Some("flightline"), Some("query")).unwrap()) };
        let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
        let good = serde_json::json!({"sub": "ana", "iss": "flightline", "aud": "query", "exp": in_an_hour()});
        assert!(auth.check(Some(&token(good.clone(), Algorithm::HS256, &key))).is_ok());
        let mut expired = good.clone();
        expired["exp"] = 1_000.into();
        assert!(
            matches!(auth.check(Some(&token(expired, Algorithm::HS256, &key))), Err(Denied::Unauthenticated(m)) if m.contains("expired"))
        );
        let mut other_audience = good.clone();
        other_audience["aud"] = "predict".into();
        assert!(matches!(auth.check(Some(&token(other_audience, Algorithm::HS256, &key))), Err(Denied::Forbidden(_))));
        let forged = jsonwebtoken::EncodingKey::from_secret(b"another-secret-another-secret-another");
        assert!(
            matches!(auth.check(Some(&token(good, Algorithm::HS256, &forged))), Err(Denied::Unauthenticated(m)) if m.contains("signature"))
        );
        assert!(matches!(auth.check(Some("not-a-token")), Err(Denied::Unauthenticated(_))));
        assert!(matches!(auth.check(None), Err(Denied::Unauthenticated(_))));
    }

    #[test]
    fn rs256_tokens_verify_with_the_public_key_and_api_keys_still_work() {
        let private = include_str!("../testdata/jwt-test-only.key");
        let public = include_str!("../testdata/jwt-test-only.pub");
        let auth = Auth {
            keys: Some(ApiKeys::parse(&hash_key("k1")).unwrap()),
            jwt: Some(Jwt::new("RS256", public, None, None).unwrap()),
        };
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        let claims = serde_json::json!({"sub": "svc", "exp": in_an_hour()});
        assert!(auth.check(Some(&token(claims.clone(), Algorithm::RS256, &key))).is_ok());
        let hs = jsonwebtoken::EncodingKey::from_secret(public.as_bytes());
        assert!(matches!(auth.check(Some(&token(claims, Algorithm::HS256, &hs))), Err(Denied::Unauthenticated(_))));
        assert!(auth.check(Some("k1")).is_ok());
        assert!(matches!(auth.check(Some("k2")), Err(Denied::Forbidden(_))));
    }

    #[test]
    fn weak_or_unknown_jwt_settings_are_refused() {
        assert!(Jwt::new("HS256", "short", None, None).is_err());
        assert!(Jwt::new("none", "x", None, None).is_err());
        assert!(Jwt::new("RS256", "not a pem", None, None).is_err());
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
