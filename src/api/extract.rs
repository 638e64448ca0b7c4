//! Extractors whose rejections are [`ApiError`]s, so axum's plain-text errors never reach a
//! client, and the small validators the handlers share.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::domain::CallbackId;

/// Request bodies larger than this are refused with 413 before they are parsed.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A JSON body. Syntax and type errors become `400 invalid_body` naming the field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        // The inner error is serde_path_to_error's, which starts with the field's path.
        JsonRejection::JsonDataError(e) => ApiError::invalid_body(inner_text(&e)),
        JsonRejection::JsonSyntaxError(e) => {
            ApiError::invalid_body(format!("body is not valid JSON: {}", inner_text(&e)))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body must be at most {MAX_BODY_BYTES} bytes"),
        ),
        _ => ApiError::invalid_body("request body could not be read"),
    }
}

/// Query parameters. Parameters are taken as strings and checked by the handler, so this only
/// fails on a malformed query string.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => {
                Err(ApiError::invalid_query(inner_text(&e)))
            }
            Err(_) => Err(ApiError::invalid_query("query string could not be read")),
        }
    }
}

/// The `{id}` of a callback route, parsed.
pub struct CallbackIdPath(pub CallbackId);

impl<S: Send + Sync> FromRequestParts<S> for CallbackIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = raw_id(parts, state).await?;
        raw.parse()
            .map(Self)
            .map_err(|_| ApiError::invalid_id("id: not a callback id (a UUID is expected)"))
    }
}

/// The `{id}` of a delivery route: `msg_<hex>` today; checked only for shape so ids stay opaque.
pub struct DeliveryIdPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for DeliveryIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let raw = raw_id(parts, state).await?;
        let ok = !raw.is_empty()
            && raw.len() <= 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw))
        } else {
            Err(ApiError::invalid_id(
                "id: not a delivery id (1-64 characters of letters, digits, '_' or '-')",
            ))
        }
    }
}

async fn raw_id<S: Send + Sync>(parts: &mut Parts, state: &S) -> Result<String, ApiError> {
    Path::<String>::from_request_parts(parts, state)
        .await
        .map(|Path(raw)| raw)
        .map_err(|_| ApiError::invalid_id("id: could not be read from the path"))
}

/// The serde message inside an axum rejection, without axum's generic prefix.
fn inner_text(error: &dyn std::error::Error) -> String {
    error
        .source()
        .map_or_else(|| error.to_string(), ToString::to_string)
}

/// A required text field: present, not blank, at most `max` characters, no control characters.
pub fn required_text(field: &str, value: Option<String>, max: usize) -> Result<String, ApiError> {
    let value = required(field, value)?;
    if value.trim().is_empty() {
        return Err(ApiError::invalid_body(format!(
            "{field}: must not be empty"
        )));
    }
    check_text(field, &value, max, false)?;
    Ok(value)
}

/// An optional free-text field such as a note: line breaks and tabs are fine, other control
/// characters are not. Blank counts as absent.
pub fn optional_text(
    field: &str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match value {
        Some(value) if !value.trim().is_empty() => {
            check_text(field, &value, max, true)?;
            Ok(Some(value))
        }
        _ => Ok(None),
    }
}

fn check_text(field: &str, value: &str, max: usize, multiline: bool) -> Result<(), ApiError> {
    if value.chars().count() > max {
        return Err(ApiError::invalid_body(format!(
            "{field}: must be at most {max} characters"
        )));
    }
    let allowed = |c: char| !c.is_control() || (multiline && matches!(c, '\n' | '\r' | '\t'));
    if !value.chars().all(allowed) {
        return Err(ApiError::invalid_body(format!(
            "{field}: must not contain control characters"
        )));
    }
    Ok(())
}

/// A field the body must have.
pub fn required<T>(field: &str, value: Option<T>) -> Result<T, ApiError> {
    value.ok_or_else(|| ApiError::invalid_body(format!("{field}: required")))
}

/// Parses one of a fixed set of words; the error message names the field and the allowed
/// words, and the caller picks the error code (body or query).
pub fn one_of<T: Copy>(
    field: &str,
    value: &str,
    allowed: &[T],
    as_str: fn(T) -> &'static str,
) -> Result<T, String> {
    allowed
        .iter()
        .copied()
        .find(|v| as_str(*v) == value)
        .ok_or_else(|| {
            let words: Vec<&str> = allowed.iter().map(|v| as_str(*v)).collect();
            format!("{field}: must be one of {}", words.join(", "))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Outcome;

    #[test]
    fn required_text_names_the_field() {
        let err = required_text("agent_id", None, 128).unwrap_err();
        assert_eq!(err.message, "agent_id: required");
        let err = required_text("agent_id", Some("  ".into()), 128).unwrap_err();
        assert!(err.message.starts_with("agent_id:"));
        let err = required_text("agent_id", Some("a".repeat(129)), 128).unwrap_err();
        assert!(err.message.contains("at most 128"));
        let err = required_text("agent_id", Some("a\u{0}b".into()), 128).unwrap_err();
        assert!(err.message.contains("control"));
        assert_eq!(
            required_text("agent_id", Some("agent-7".into()), 128).unwrap(),
            "agent-7"
        );
    }

    #[test]
    fn notes_may_span_lines_but_are_bounded() {
        assert_eq!(
            optional_text("note", Some("a\nb".into()), 10).unwrap(),
            Some("a\nb".into())
        );
        assert_eq!(optional_text("note", Some(" ".into()), 10).unwrap(), None);
        assert!(optional_text("note", Some("x".repeat(11)), 10).is_err());
    }

    #[test]
    fn one_of_lists_the_allowed_words() {
        let err = one_of("outcome", "maybe", Outcome::ALL, Outcome::as_str).unwrap_err();
        assert!(err.starts_with("outcome: must be one of connected, no_answer"));
        let ok = one_of("outcome", "busy", Outcome::ALL, Outcome::as_str).unwrap();
        assert_eq!(ok, Outcome::Busy);
    }
}
