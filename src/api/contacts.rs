//! `DELETE /v1/contacts/{phone}`: the right to erasure. Removes every stored trace of a number
//! — its callbacks in every state, their attempts, deliveries and outbox events, and any other
//! delivery whose body names it — and reports what it removed, per table.
//!
//! The number's opt-out, if any, is kept on purpose: it is what stops the number being called
//! again, and erasing it would turn the request into its opposite. It holds the number and an
//! end time only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use tracing::info;

use super::error::ApiError;
use super::ApiState;
use crate::domain::{mask_phone, Phone};
use crate::store::Erased;

pub async fn erase(
    State(state): State<ApiState>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Erased>, ApiError> {
    let raw = path.map(|Path(raw)| raw).unwrap_or_default();
    let phone = Phone::parse(&raw).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_phone",
            format!(
                "phone '{}': {e}; send it URL-encoded, e.g. %2B31612345678",
                mask_phone(&raw)
            ),
        )
    })?;
    let erased = state.store.erase_phone(&phone).await?;
    metrics::counter!("callkeeper_erasures_total").increment(1);
    info!(
        %phone,
        callbacks = erased.callbacks,
        attempts = erased.attempts,
        deliveries = erased.deliveries,
        event_outbox = erased.event_outbox,
        opt_out_kept = erased.opt_out_kept,
        "Phone number erased on request."
    );
    Ok(Json(erased))
}
