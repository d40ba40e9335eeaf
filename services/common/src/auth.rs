//! Authentication: API keys and/or JWTs.
//!
//! API keys are stored hashed (SHA-256, hex), one per line, in `API_KEY_HASHES` (the operator sets
//! it from the pipeline's Secret) or in the file named by `API_KEYS_FILE`; hashes are compared in
//! constant time. JWTs are checked when `JWT_ALGORITHM` (`HS256` or `RS256`) and `JWT_KEY` (the
//! shared secret, or the PEM public key) are set, with `JWT_ISSUER` / `JWT_AUDIENCE` when given.
//! A configured issuer or audience is a required claim; `exp` is required and `nbf` checked, both
//! with 30 s of leeway for clock skew.
//! A request shows its credential in `Authorization: Bearer <key or token>` (the scheme in any
//! case) or `X-API-Key`. With nothing configured, auth is off.
//!
//! 401 = no usable credential (missing, malformed, expired, not yet valid, a required claim
//! missing, bad signature; with `WWW-Authenticate`); 403 = a valid credential that is not allowed
//! here (unknown key, token for another issuer or audience). The body says which.
//!
//! A request that passes carries its [`Principal`] as a request extension: the rate limiter
//! charges requests to it.

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AuthArgs, FromEnv};
use crate::contract::auth::{API_KEY_HASHES, API_KEYS_FILE, JWT_ALGORITHM, JWT_KEY};
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

    /// From `API_KEY_HASHES` or `API_KEYS_FILE`, or `None` (auth off) when neither is set. Set
    /// but empty is an error, never auth off.
    pub fn from_args(args: &AuthArgs) -> anyhow::Result<Option<Arc<Self>>> {
        let (source, text) = match (&args.api_key_hashes, &args.api_keys_file) {
            (Some(hashes), _) => (API_KEY_HASHES.to_string(), hashes.clone()),
            (None, Some(path)) => {
                let path = path.display();
                let text = std::fs::read_to_string(path.to_string())
                    .map_err(|e| anyhow::anyhow!("{API_KEYS_FILE} {path}: {e}"))?;
                (format!("{API_KEYS_FILE} {path}"), text)
            }
            (None, None) => return Ok(None),
        };
        let keys = Self::parse(&text).map_err(|e| anyhow::anyhow!("{source}: {e}"))?;
        anyhow::ensure!(!keys.hashes.is_empty(), "{source} holds no keys");
        Ok(Some(Arc::new(keys)))
    }

    /// Whether `key` hashes to a listed hash. Every listed hash is compared, always, in constant time.
    pub fn allows(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// The hash of `key` when it is listed.
    fn find(&self, key: &str) -> Option<[u8; 32]> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let found: bool = self.hashes.iter().fold(subtle::Choice::from(0), |found, h| found | h.ct_eq(&hash)).into();
        found.then_some(hash)
    }
}

/// Who sent a request: `key:<first 16 hex digits of the API key's SHA-256>` or `sub:<JWT subject>`
/// (never the key itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal(pub String);

/// The hex SHA-256 of a key, as the key file holds it.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
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
        // RFC 9110 §11.1: the scheme is case-insensitive.
        let (scheme, credential) = value.trim_start().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| credential.trim());
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
        // jsonwebtoken checks `nbf` only when asked, and checks `iss`/`aud` only when present:
        // a configured issuer or audience must also be a required claim.
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(issuer) = issuer.filter(|i| !i.is_empty()) {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        match audience.filter(|a| !a.is_empty()) {
            Some(audience) => {
                validation.set_audience(&[audience]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Ok(Self { key, validation })
    }

    fn check(&self, token: &str) -> Result<Option<Principal>, Denied> {
        match jsonwebtoken::decode::<serde_json::Value>(token, &self.key, &self.validation) {
            Ok(data) => Ok(data.claims.get("sub").and_then(|s| s.as_str()).map(|sub| Principal(format!("sub:{sub}")))),
            Err(e) => Err(match e.kind() {
                ErrorKind::InvalidIssuer => Denied::Forbidden("the token's issuer is not accepted here".into()),
                ErrorKind::InvalidAudience => Denied::Forbidden("the token is for another audience".into()),
                ErrorKind::ExpiredSignature => Denied::Unauthenticated("the token has expired".into()),
                ErrorKind::ImmatureSignature => Denied::Unauthenticated("the token is not valid yet (nbf)".into()),
                ErrorKind::InvalidSignature => Denied::Unauthenticated("the token's signature does not verify".into()),
                ErrorKind::InvalidAlgorithm => {
                    Denied::Unauthenticated("the token is signed with another algorithm".into())
                }
                ErrorKind::MissingRequiredClaim(claim) => {
                    Denied::Unauthenticated(format!("the token has no {claim} claim, which is required here").into())
                }
                _ => Denied::Unauthenticated("the token is malformed".into()),
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

/// Why a request was refused: 401 or 403, with the reason in the body.
#[derive(Debug)]
pub enum Denied {
    Unauthenticated(Cow<'static, str>),
    Forbidden(Cow<'static, str>),
}

impl IntoResponse for Denied {
    fn into_response(self) -> Response {
        match self {
            Denied::Unauthenticated(why) => {
                let mut response = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", why).into_response();
                response.headers_mut().insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static header"));
                response
            }
            Denied::Forbidden(why) => ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response(),
        }
    }
}

impl Auth {
    /// From the environment; `None` (auth off) when neither API keys nor a JWT key are configured.
    pub fn from_env() -> anyhow::Result<Option<Arc<Self>>> {
        Self::from_args(&AuthArgs::from_env()?)
    }

    /// From the variables as read (`config::AuthArgs`).
    pub fn from_args(args: &AuthArgs) -> anyhow::Result<Option<Arc<Self>>> {
        let keys = ApiKeys::from_args(args)?.map(|k| (*k).clone());
        let jwt = match (&args.jwt_algorithm, &args.jwt_key) {
            (Some(algorithm), Some(key)) => Some(
                Jwt::new(algorithm, key, args.jwt_issuer.as_deref(), args.jwt_audience.as_deref())
                    .map_err(|e| anyhow::anyhow!("JWT settings: {e}"))?,
            ),
            (Some(_), None) | (None, Some(_)) => anyhow::bail!("{JWT_ALGORITHM} and {JWT_KEY} go together"),
            (None, None) => None,
        };
        Ok((keys.is_some() || jwt.is_some()).then(|| Arc::new(Self { keys, jwt })))
    }

    /// Checks a request's credential: its principal (`None` for a token without `sub`) or why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, Denied> {
        self.check(presented_key(headers))
    }

    fn check(&self, credential: Option<&str>) -> Result<Option<Principal>, Denied> {
        let Some(credential) = credential else {
            return Err(Denied::Unauthenticated("an API key or a bearer token is required".into()));
        };
        let looks_like_jwt = credential.split('.').count() == 3;
        match (&self.jwt, &self.keys) {
            (Some(jwt), _) if looks_like_jwt => jwt.check(credential),
            (_, Some(keys)) => match keys.find(credential) {
                Some(hash) => Ok(Some(Principal(format!("key:{}", &hex(&hash)[..16])))),
                None => Err(Denied::Forbidden("this API key is not allowed".into())),
            },
            (_, None) => Err(Denied::Unauthenticated("a bearer JWT is required".into())),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Middleware: lets a request through when auth is off or its credential passes, with its
/// [`Principal`] as a request extension. (`server::app` does the same together with rate limiting.)
pub async fn require_auth(State(auth): State<Option<Arc<Auth>>>, mut request: Request, next: Next) -> Response {
    let Some(auth) = auth else { return next.run(request).await };
    match auth.authenticate(request.headers()) {
        Ok(principal) => {
            if let Some(principal) = principal {
                request.extensions_mut().insert(principal);
            }
            next.run(request).await
        }
        Err(denied) => denied.into_response(),
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

    fn now() -> u64 {
        in_an_hour() - 3600
    }

    const SECRET: &str = "a-shared-secret-of-at-least-32-bytes!";

    fn hs256(claims: serde_json::Value) -> String {
        token(claims, Algorithm::HS256, &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()))
    }

    fn issuer_and_audience_auth() -> Auth {
        Auth { keys: None, jwt: Some(Jwt::new("HS256", SECRET, Some("flightline"), Some("query")).unwrap()) }
    }

    #[test]
    fn a_configured_issuer_or_audience_is_required_and_the_refusal_names_the_claim() {
        let auth = issuer_and_audience_auth();
        for (claims, missing) in [
            (serde_json::json!({"sub": "ana", "exp": in_an_hour()}), &["iss", "aud"][..]),
            (serde_json::json!({"sub": "ana", "iss": "flightline", "exp": in_an_hour()}), &["aud"]),
            (serde_json::json!({"sub": "ana", "aud": "query", "exp": in_an_hour()}), &["iss"]),
            (serde_json::json!({"sub": "ana", "iss": "flightline", "aud": "query"}), &["exp"]),
        ] {
            match auth.check(Some(&hs256(claims.clone()))) {
                // With both missing, either may be named.
                Err(Denied::Unauthenticated(why)) => {
                    assert!(missing.iter().any(|c| why.contains(&format!("no {c} claim"))), "{why}")
                }
                other => panic!("{claims}: {other:?}"),
            }
        }
    }

    #[test]
    fn nbf_is_checked_with_30_seconds_of_leeway() {
        let auth = issuer_and_audience_auth();
        let claims = |nbf: u64| serde_json::json!({"sub": "ana", "iss": "flightline", "aud": "query", "exp": in_an_hour(), "nbf": nbf});
        match auth.check(Some(&hs256(claims(now() + 86_400)))) {
            Err(Denied::Unauthenticated(why)) => assert!(why.contains("not valid yet"), "{why}"),
            other => panic!("a token valid from tomorrow passed: {other:?}"),
        }
        assert!(auth.check(Some(&hs256(claims(now() + 10)))).is_ok(), "within the leeway");
        assert!(auth.check(Some(&hs256(claims(now() - 60)))).is_ok());
    }

    #[test]
    fn the_principal_is_the_subject_or_the_key_hash_prefix() {
        let auth = Auth {
            keys: Some(ApiKeys::parse(&hash_key("k1")).unwrap()),
            jwt: Some(Jwt::new("HS256", SECRET, None, None).unwrap()),
        };
        let principal = auth.check(Some(&hs256(serde_json::json!({"sub": "ana", "exp": in_an_hour()})))).unwrap();
        assert_eq!(principal, Some(Principal("sub:ana".into())));
        let no_subject = auth.check(Some(&hs256(serde_json::json!({"exp": in_an_hour()})))).unwrap();
        assert_eq!(no_subject, None);
        let key = auth.check(Some("k1")).unwrap().unwrap();
        assert_eq!(key.0, format!("key:{}", &hash_key("k1")[..16]));
    }

    #[test]
    fn keys_come_from_either_header() {
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, format!("{scheme} k1").parse().unwrap());
            assert_eq!(presented_key(&headers), Some("k1"), "{scheme}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Basic k1".parse().unwrap());
        assert_eq!(presented_key(&headers), None);
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, "Bearer k1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k1"));
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "k2".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("k2"));
        assert_eq!(presented_key(&HeaderMap::new()), None);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn auth() -> Auth {
        Auth {
            keys: Some(ApiKeys::parse(&hash_key("the-only-key")).unwrap()),
            jwt: Some(
                Jwt::new("HS256", "a-shared-secret-of-at-least-32-bytes!", Some("flightline"), Some("query")).unwrap(),
            ),
        }
    }

    fn is_refusal(result: Result<Option<Principal>, Denied>) -> bool {
        matches!(result, Err(Denied::Unauthenticated(_) | Denied::Forbidden(_)))
    }

    proptest! {
        /// Arbitrary text as a credential never panics and is always refused (401 or 403).
        #[test]
        fn prop_jwt_never_panics_and_garbage_is_refused(token in "\\PC{0,300}") {
            prop_assert!(is_refusal(auth().check(Some(&token))));
        }

        /// Three dot-separated base64url parts (what looks like a JWT, so the JWT path runs).
        #[test]
        fn prop_jwt_shaped_garbage_is_refused(
            parts in proptest::collection::vec("[A-Za-z0-9_=-]{0,120}", 3),
            header in proptest::option::of(proptest::sample::select(vec![
                r#"{"alg":"HS256","typ":"JWT"}"#, r#"{"alg":"none"}"#, r#"{"alg":"RS256"}"#, r#"{}"#,
            ])),
        ) {
            use base64_engine::encode;
            let first = header.map(|h| encode(h.as_bytes())).unwrap_or_else(|| parts[0].clone());
            let token = format!("{first}.{}.{}", parts[1], parts[2]);
            prop_assert!(is_refusal(auth().check(Some(&token))));
        }

        /// Any header value in `Authorization` gives a principal only for the real key.
        #[test]
        fn prop_authorization_headers_never_panic(value in "[ -~]{0,200}") {
            let mut headers = HeaderMap::new();
            if let Ok(v) = value.parse() {
                headers.insert(header::AUTHORIZATION, v);
            }
            prop_assert!(is_refusal(auth().authenticate(&headers)));
        }
    }

    /// base64url without padding, enough to build token-shaped inputs.
    mod base64_engine {
        pub fn encode(bytes: &[u8]) -> String {
            const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in bytes.chunks(3) {
                let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
                for i in 0..=chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
