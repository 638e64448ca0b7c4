//! `/v1/deliveries`: for ops, to see webhook deliveries and replay the ones that gave up.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::error::ApiError;
use super::extract::{one_of, ApiQuery, DeliveryIdPath};
use super::{page_limit, ApiState};
use crate::domain::lifecycle::Notice;
use crate::domain::{CallbackId, QueueName};
use crate::notify::outbox::rfc3339;
use crate::notify::{Delivery, DeliveryState};

/// A delivery without its body, to keep lists light.
#[derive(Debug, Serialize)]
pub struct DeliverySummary {
    /// The `webhook-id` every try of this notification carries.
    pub id: String,
    /// `null` for an SLA digest.
    pub callback_id: Option<CallbackId>,
    pub queue: QueueName,
    /// The webhook type, as in the body: `callback.due`, ….
    #[serde(rename = "type")]
    pub notice: Notice,
    pub url: String,
    pub state: DeliveryState,
    pub tries: u32,
    pub next_try_at: String,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
}

/// One delivery with the exact body it sends (as a string: those bytes are what is signed).
#[derive(Debug, Serialize)]
pub struct DeliveryView {
    #[serde(flatten)]
    pub summary: DeliverySummary,
    pub body: String,
}

#[derive(Debug, Serialize)]
pub struct DeliveryPage {
    pub items: Vec<DeliverySummary>,
}

impl DeliverySummary {
    fn new(d: &Delivery) -> Self {
        Self {
            id: d.id.clone(),
            callback_id: d.callback_id,
            queue: d.queue.clone(),
            notice: d.notice,
            url: d.url.clone(),
            state: d.state,
            tries: d.tries,
            next_try_at: rfc3339(d.next_try_at),
            last_status: d.last_status,
            last_error: d.last_error.clone(),
            created_at: rfc3339(d.created_at),
            delivered_at: d.delivered_at.map(rfc3339),
        }
    }
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            summary: DeliverySummary::new(&d),
            body: d.body,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
}

pub async fn list(
    State(state): State<ApiState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let present = |v: Option<String>| v.filter(|v| !v.is_empty());
    let delivery_state = present(query.state)
        .map(|s| one_of("state", &s, DeliveryState::ALL, DeliveryState::as_str))
        .transpose()
        .map_err(ApiError::invalid_query)?;
    let limit = page_limit(present(query.limit).as_deref())?;
    let deliveries = state.store.list_deliveries(delivery_state, limit).await?;
    Ok(Json(DeliveryPage {
        items: deliveries.iter().map(DeliverySummary::new).collect(),
    }))
}

pub async fn get(
    State(state): State<ApiState>,
    DeliveryIdPath(id): DeliveryIdPath,
) -> Result<Json<DeliveryView>, ApiError> {
    let delivery = state
        .store
        .get_delivery(&id)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery not found"))?;
    Ok(Json(delivery.into()))
}

/// Makes a given-up or held delivery pending again; 202 because the send happens later.
pub async fn replay(
    State(state): State<ApiState>,
    DeliveryIdPath(id): DeliveryIdPath,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let delivery = state
        .store
        .replay_delivery(&id, state.clock.now())
        .await?
        .ok_or_else(|| ApiError::not_found("delivery not found"))?;
    info!(
        delivery_id = %id,
        callback_id = delivery.callback_id.map(tracing::field::display),
        "Delivery replayed over the API."
    );
    Ok((StatusCode::ACCEPTED, Json(delivery.into())))
}
