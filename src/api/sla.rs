//! `GET /v1/sla?queue=&from=&to=`: how well callbacks requested in a period kept their promise.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::extract::ApiQuery;
use super::ApiState;
use crate::domain::sla::SlaReport;
use crate::domain::QueueName;
use crate::notify::outbox::rfc3339;

/// The period when `from` is not given: the last day.
const DEFAULT_PERIOD: chrono::Duration = chrono::Duration::hours(24);

#[derive(Debug, Deserialize)]
pub struct SlaQuery {
    queue: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SlaView {
    /// `null` for all queues.
    pub queue: Option<QueueName>,
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub report: SlaReport,
}

pub async fn report(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<SlaQuery>,
) -> Result<Json<SlaView>, ApiError> {
    let present = |v: Option<String>| v.filter(|v| !v.is_empty());
    let queue = present(query.queue)
        .map(|q| {
            let name =
                QueueName::parse(&q).map_err(|e| ApiError::invalid_query(format!("queue: {e}")))?;
            match state.rules.queue(&name) {
                Some(_) => Ok(name),
                None => Err(ApiError::not_found(format!(
                    "queue '{name}' is not configured"
                ))),
            }
        })
        .transpose()?;
    let time = |field: &str, raw: Option<String>| -> Result<Option<DateTime<Utc>>, ApiError> {
        present(raw)
            .map(|raw| {
                DateTime::parse_from_rfc3339(&raw)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        ApiError::invalid_query(format!("{field}: must be an RFC 3339 time"))
                    })
            })
            .transpose()
    };
    let to = time("to", query.to)?.unwrap_or_else(|| state.clock.now());
    let from = time("from", query.from)?.unwrap_or(to - DEFAULT_PERIOD);
    if from >= to {
        return Err(ApiError::invalid_query("from: must be before to"));
    }
    let rows = state.store.sla_rows(queue.as_ref(), from, to).await?;
    Ok(Json(SlaView {
        queue,
        from: rfc3339(from),
        to: rfc3339(to),
        report: SlaReport::from_rows(&rows),
    }))
}
