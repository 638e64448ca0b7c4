//! `/v1/callbacks`: agents claim callbacks, report attempts and cancel; desktops read them.
//!
//! Each mutating call is one store method, so the lifecycle rules run inside the store's
//! transaction and two agents racing for one callback cannot both win.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::debug;

use super::error::ApiError;
use super::extract::{
    one_of, optional_text, required, required_text, ApiJson, ApiQuery, CallbackIdPath,
};
use super::{page_limit, ApiState};
use crate::domain::inbound::AttemptReport;
use crate::domain::{
    Attempt, CallInfo, Callback, CallbackId, CancelReason, Customer, Outcome, Priority, QueueName,
    SlaStatus, State as CallbackState,
};
use crate::notify::outbox::rfc3339;
use crate::store::ListFilter;

/// Agent ids are short identifiers from the contact-centre platform.
pub const MAX_AGENT_ID_CHARS: usize = 128;
/// Enough for what an agent types after a call; the store is not a CRM.
pub const MAX_NOTE_CHARS: usize = 2000;

/// Reasons an API client may give; `opted_out` only comes from a `contact.opted_out` event.
const API_CANCEL_REASONS: &[CancelReason] = &[
    CancelReason::CustomerReached,
    CancelReason::CustomerRequest,
    CancelReason::Other,
];

/// A callback as the API shows it. Times are RFC 3339 UTC with milliseconds, as in webhooks;
/// `attempts_made` is the count (the single GET adds the `attempts` list).
#[derive(Debug, Serialize)]
pub struct CallbackView {
    pub id: CallbackId,
    pub queue: QueueName,
    pub phone: String,
    pub priority: Priority,
    pub state: CallbackState,
    pub sla: SlaStatus,
    pub customer: Option<Customer>,
    pub agent_id: Option<String>,
    pub context: Option<serde_json::Value>,
    pub call: Option<CallInfo>,
    pub window: Option<WindowView>,
    pub requested_at: String,
    pub due_at: String,
    pub deadline: String,
    pub requests: u32,
    pub attempts_made: u32,
    pub max_attempts: u32,
    pub claimed_by: Option<String>,
    pub claimed_at: Option<String>,
    pub first_attempt_at: Option<String>,
    pub last_outcome: Option<Outcome>,
    pub cancel_reason: Option<CancelReason>,
    pub closed_at: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct WindowView {
    pub not_before: String,
    pub not_after: String,
}

impl From<Callback> for CallbackView {
    fn from(c: Callback) -> Self {
        let time = |at: Option<DateTime<Utc>>| at.map(rfc3339);
        Self {
            id: c.id,
            queue: c.queue,
            phone: c.phone.into(),
            priority: c.priority,
            state: c.state,
            sla: c.sla,
            customer: c.customer,
            agent_id: c.agent_id,
            context: c.context,
            call: c.call,
            window: c.window.map(|w| WindowView {
                not_before: rfc3339(w.not_before),
                not_after: rfc3339(w.not_after),
            }),
            requested_at: rfc3339(c.requested_at),
            due_at: rfc3339(c.due_at),
            deadline: rfc3339(c.deadline),
            requests: c.requests,
            attempts_made: c.attempts,
            max_attempts: c.max_attempts,
            claimed_by: c.claimed_by,
            claimed_at: time(c.claimed_at),
            first_attempt_at: time(c.first_attempt_at),
            last_outcome: c.last_outcome,
            cancel_reason: c.cancel_reason,
            closed_at: time(c.closed_at),
            updated_at: rfc3339(c.updated_at),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AttemptView {
    /// 1-based.
    pub number: u32,
    pub agent_id: String,
    pub outcome: Outcome,
    pub note: Option<String>,
    pub at: String,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            number: a.number,
            agent_id: a.agent_id,
            outcome: a.outcome,
            note: a.note,
            at: rfc3339(a.at),
        }
    }
}

/// `GET /v1/callbacks/{id}`: the callback and every attempt made on it.
#[derive(Debug, Serialize)]
pub struct CallbackDetail {
    #[serde(flatten)]
    pub callback: CallbackView,
    pub attempts: Vec<AttemptView>,
}

#[derive(Debug, Serialize)]
pub struct CallbackPage {
    pub items: Vec<CallbackView>,
    /// Pass as `cursor` for the next page; `null` when this page was the last.
    pub next_cursor: Option<CallbackId>,
}

// Bodies take every field as an option so a missing one is reported by name, by us.

#[derive(Debug, Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct ClaimBody {
    agent_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct AttemptBody {
    agent_id: Option<String>,
    outcome: Option<String>,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(expecting = "a JSON object")]
pub struct CancelBody {
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    queue: Option<String>,
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

pub async fn claim(
    State(state): State<ApiState>,
    CallbackIdPath(id): CallbackIdPath,
    ApiJson(body): ApiJson<ClaimBody>,
) -> Result<Json<CallbackView>, ApiError> {
    let agent_id = required_text("agent_id", body.agent_id, MAX_AGENT_ID_CHARS)?;
    let callback = state.store.claim(id, &agent_id, state.clock.now()).await?;
    debug!(callback_id = %id, %agent_id, "Callback claimed over the API.");
    Ok(Json(callback.into()))
}

pub async fn record_attempt(
    State(state): State<ApiState>,
    CallbackIdPath(id): CallbackIdPath,
    ApiJson(body): ApiJson<AttemptBody>,
) -> Result<Json<CallbackView>, ApiError> {
    let agent_id = required_text("agent_id", body.agent_id, MAX_AGENT_ID_CHARS)?;
    let outcome = required("outcome", body.outcome)?;
    let outcome = one_of("outcome", &outcome, Outcome::ALL, Outcome::as_str)
        .map_err(ApiError::invalid_body)?;
    let note = optional_text("note", body.note, MAX_NOTE_CHARS)?;
    let report = AttemptReport {
        agent_id,
        outcome,
        note,
    };
    let callback = state
        .store
        .record_attempt(id, &report, state.clock.now())
        .await?;
    debug!(
        callback_id = %id,
        agent_id = %report.agent_id,
        %outcome,
        state = %callback.state,
        "Attempt recorded over the API."
    );
    Ok(Json(callback.into()))
}

pub async fn cancel(
    State(state): State<ApiState>,
    CallbackIdPath(id): CallbackIdPath,
    ApiJson(body): ApiJson<CancelBody>,
) -> Result<Json<CallbackView>, ApiError> {
    let reason = required("reason", body.reason)?;
    let reason = one_of("reason", &reason, API_CANCEL_REASONS, CancelReason::as_str)
        .map_err(ApiError::invalid_body)?;
    let callback = state.store.cancel(id, reason, state.clock.now()).await?;
    debug!(callback_id = %id, %reason, "Callback cancelled over the API.");
    Ok(Json(callback.into()))
}

pub async fn get(
    State(state): State<ApiState>,
    CallbackIdPath(id): CallbackIdPath,
) -> Result<Json<CallbackDetail>, ApiError> {
    let callback = state
        .store
        .get(id)
        .await?
        .ok_or_else(|| ApiError::not_found("callback not found"))?;
    let attempts = state.store.attempts(id).await?;
    Ok(Json(CallbackDetail {
        callback: callback.into(),
        attempts: attempts.into_iter().map(Into::into).collect(),
    }))
}

pub async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<CallbackPage>, ApiError> {
    let filter = list_filter(query)?;
    let limit = filter.limit as usize;
    let callbacks = state.store.list(&filter).await?;
    // A full page may have more behind it; a short one is the last.
    let next_cursor = (callbacks.len() >= limit)
        .then(|| callbacks.last().map(|c| c.id))
        .flatten();
    Ok(Json(CallbackPage {
        items: callbacks.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

fn list_filter(query: ListQuery) -> Result<ListFilter, ApiError> {
    // `?queue=` with nothing after it means no filter, as forms and templated URLs send it.
    let present = |v: Option<String>| v.filter(|v| !v.is_empty());
    let queue = present(query.queue)
        .map(|q| QueueName::parse(&q))
        .transpose()
        .map_err(|e| ApiError::invalid_query(format!("queue: {e}")))?;
    let state = present(query.state)
        .map(|s| one_of("state", &s, CallbackState::ALL, CallbackState::as_str))
        .transpose()
        .map_err(ApiError::invalid_query)?;
    let limit = page_limit(present(query.limit).as_deref())?;
    let cursor = present(query.cursor)
        .map(|c| c.parse::<CallbackId>())
        .transpose()
        .map_err(|_| {
            ApiError::invalid_query("cursor: not a callback id (use next_cursor from a page)")
        })?;
    Ok(ListFilter {
        queue,
        state,
        limit,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(pairs: &[(&str, &str)]) -> ListQuery {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        };
        ListQuery {
            queue: get("queue"),
            state: get("state"),
            limit: get("limit"),
            cursor: get("cursor"),
        }
    }

    #[test]
    fn list_filter_defaults_and_parses() {
        let filter = list_filter(query(&[])).unwrap();
        assert_eq!(filter.limit, 50);
        assert!(filter.queue.is_none() && filter.state.is_none() && filter.cursor.is_none());

        let id = CallbackId::new();
        let filter = list_filter(query(&[
            ("queue", "support"),
            ("state", "due"),
            ("limit", "500"),
            ("cursor", &id.to_string()),
        ]))
        .unwrap();
        assert_eq!(filter.queue.unwrap().as_str(), "support");
        assert_eq!(filter.state, Some(CallbackState::Due));
        assert_eq!(filter.limit, 500);
        assert_eq!(filter.cursor, Some(id));
    }

    #[test]
    fn list_filter_names_the_bad_parameter() {
        for (pairs, field) in [
            (vec![("state", "open")], "state:"),
            (vec![("queue", "Not A Queue")], "queue:"),
            (vec![("limit", "0")], "limit:"),
            (vec![("limit", "501")], "limit:"),
            (vec![("limit", "ten")], "limit:"),
            (vec![("cursor", "42")], "cursor:"),
        ] {
            let err = list_filter(query(&pairs)).unwrap_err();
            assert_eq!(err.code, "invalid_query");
            assert!(err.message.starts_with(field), "{}", err.message);
        }
    }

    #[test]
    fn empty_parameters_mean_no_filter() {
        let filter = list_filter(query(&[("queue", ""), ("state", ""), ("limit", "")])).unwrap();
        assert!(filter.queue.is_none() && filter.state.is_none());
        assert_eq!(filter.limit, 50);
    }
}
