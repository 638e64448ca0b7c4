//! The one error shape every API response uses: `{ "error": { "code", "message" } }`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::error;

use crate::domain::lifecycle::LifecycleError;
use crate::store::StoreError;

/// An error as the client sees it. `code` is a stable machine word; `message` is for humans and
/// never holds internals or a full phone number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The body is malformed or a field is missing or invalid; the message names the field.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_body", message)
    }

    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
    }

    pub fn invalid_id(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_id", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required: send 'Authorization: Bearer <token>'",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this method is not allowed on this path; see the Allow header",
        )
    }

    pub fn store_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            "the store is unavailable; try again shortly",
        )
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<LifecycleError> for ApiError {
    fn from(error: LifecycleError) -> Self {
        let code = match error {
            LifecycleError::ClaimedByOther => "claimed_by_other",
            LifecycleError::NotOpen(_) => "not_open",
        };
        Self::new(StatusCode::CONFLICT, code, error.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => Self::not_found("callback not found"),
            StoreError::Lifecycle(lifecycle) => lifecycle.into(),
            // A row that no longer decodes will not get better by retrying: a bug, not an outage.
            StoreError::Corrupt(_) => {
                error!(%error, "Store returned a corrupt row to the API.");
                Self::internal()
            }
            StoreError::Database(_) | StoreError::Migrate(_) => {
                error!(%error, "Store call from the API failed.");
                Self::store_unavailable()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::State;

    #[test]
    fn store_errors_map_to_contract_codes() {
        let cases = [
            (StoreError::NotFound, StatusCode::NOT_FOUND, "not_found"),
            (
                StoreError::Lifecycle(LifecycleError::ClaimedByOther),
                StatusCode::CONFLICT,
                "claimed_by_other",
            ),
            (
                StoreError::Lifecycle(LifecycleError::NotOpen(State::Completed)),
                StatusCode::CONFLICT,
                "not_open",
            ),
            (
                StoreError::Database(sqlx::Error::PoolTimedOut),
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
            ),
            (
                StoreError::Corrupt("bad state".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            let api = ApiError::from(error);
            assert_eq!((api.status, api.code), (status, code));
        }
    }

    #[test]
    fn store_failure_message_leaks_nothing() {
        let api = ApiError::from(StoreError::Corrupt("phone +31612345678".into()));
        assert!(!api.message.contains("+316"));
    }
}
