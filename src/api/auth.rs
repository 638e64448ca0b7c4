//! Bearer-token check for `/v1`.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;
use super::ApiState;

/// Lets the request through only with `Authorization: Bearer <token>` for a configured token.
pub async fn require_token(
    State(state): State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    match bearer(request.headers()) {
        Some(token) if token_matches(token, &state.api_tokens) => next.run(request).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// The token of a `Bearer` authorization header; the scheme is case-insensitive (RFC 7235).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Compares against every token in constant time. Both sides are hashed first so that neither
/// the length of a token nor which token matched shows in the timing.
fn token_matches(presented: &str, tokens: &[SecretString]) -> bool {
    let presented = Sha256::digest(presented.as_bytes());
    let mut matched = Choice::from(0);
    for token in tokens {
        let expected = Sha256::digest(token.expose_secret().as_bytes());
        matched |= expected.as_slice().ct_eq(presented.as_slice());
    }
    matched.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn reads_bearer_tokens_only() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }

    #[test]
    fn matches_any_configured_token() {
        let tokens = vec![SecretString::from("old-token"), SecretString::from("new")];
        assert!(token_matches("old-token", &tokens));
        assert!(token_matches("new", &tokens));
        assert!(!token_matches("ne", &tokens));
        assert!(!token_matches("new-token", &tokens));
        assert!(!token_matches("anything", &[]));
    }
}
