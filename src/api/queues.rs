//! `/v1/queues/{queue}/estimate`: the due time and deadline a request made now would get, so
//! the IVR can promise an honest time ("we will call you back before 14:30").

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::{one_of, ApiQuery};
use super::ApiState;
use crate::domain::{Phone, Priority, QueueName};
use crate::notify::outbox::rfc3339;

#[derive(Debug, Deserialize)]
pub struct EstimateQuery {
    priority: Option<String>,
    phone: Option<String>,
}

/// What a request made now would be promised. Times are RFC 3339 UTC, as everywhere.
#[derive(Debug, Serialize)]
pub struct Estimate {
    pub queue: QueueName,
    pub priority: Priority,
    pub due_at: String,
    pub deadline: String,
    /// The zone the callee's calling window was read in: from the number's country when
    /// `phone` was given and its country has one zone, else the queue's.
    pub callee_timezone: String,
}

pub async fn estimate(
    State(state): State<ApiState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    ApiQuery(query): ApiQuery<EstimateQuery>,
) -> Result<Json<Estimate>, ApiError> {
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_queue",
            "queue is not configured",
        )
    };
    let Ok(Path(raw)) = path else {
        return Err(unknown());
    };
    let queue = QueueName::parse(&raw).map_err(|_| unknown())?;
    let policy = state.rules.queue(&queue).ok_or_else(unknown)?;
    // `?priority=` with nothing after it means the default, as templated URLs send it.
    let present = |v: Option<String>| v.filter(|v| !v.is_empty());
    let priority = present(query.priority)
        .map(|p| one_of("priority", &p, Priority::ALL, Priority::as_str))
        .transpose()
        .map_err(ApiError::invalid_query)?
        .unwrap_or_default();
    let callee = match present(query.phone) {
        Some(raw) => {
            let phone = parse_phone(&raw).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_phone",
                    format!("phone: {e}"),
                )
            })?;
            policy.callee(&phone, None)
        }
        None => policy.queue_callee(),
    };
    let plan = policy.plan_for(&callee, priority, None, state.clock.now());
    Ok(Json(Estimate {
        queue,
        priority,
        due_at: rfc3339(plan.due_at),
        deadline: rfc3339(plan.deadline),
        callee_timezone: callee.zone.name().to_owned(),
    }))
}

/// A `+` left unencoded in a query string arrives as a space; read it back as the `+` the
/// caller meant rather than refusing the number.
fn parse_phone(raw: &str) -> Result<Phone, crate::domain::PhoneError> {
    match raw.strip_prefix(' ') {
        Some(digits) if digits.starts_with(|c: char| c.is_ascii_digit()) => {
            Phone::parse(&format!("+{digits}"))
        }
        _ => Phone::parse(raw),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unencoded_plus_is_read_back() {
        assert_eq!(
            parse_phone(" 31612345678").unwrap().as_str(),
            "+31612345678"
        );
        assert!(parse_phone("31612345678").is_err());
        assert!(parse_phone("+3161234").is_err());
    }
}
