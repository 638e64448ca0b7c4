//! The HTTP API: agents claim callbacks and report attempts, ops look at deliveries, and
//! orchestrators probe health. `/v1` needs a bearer token; health and metrics are open.
//!
//! Every error, including axum's own (bad JSON, unknown route, wrong method), leaves as
//! `{ "error": { "code", "message" } }`.

mod auth;
mod callbacks;
mod contacts;
mod deliveries;
pub mod error;
mod extract;
mod health;
mod queues;
mod sla;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;

use crate::clock::SharedClock;
use crate::schedule::Rules;
use crate::store::SharedStore;
use crate::telemetry::SharedHealth;

pub use callbacks::{
    AttemptView, CallbackDetail, CallbackPage, CallbackView, MAX_AGENT_ID_CHARS, MAX_NOTE_CHARS,
};
pub use deliveries::{DeliveryPage, DeliverySummary, DeliveryView};
pub use error::ApiError;
pub use extract::MAX_BODY_BYTES;
pub use queues::Estimate;

/// Page size when a list call names none.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
/// The largest page a list call may ask for.
pub const MAX_PAGE_LIMIT: u32 = 500;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: SharedStore,
    pub clock: SharedClock,
    /// Queue policies; for the queue routes of the estimate/SLA issue.
    pub rules: Arc<Rules>,
    /// Bearer tokens `/v1` accepts; several so a token can be rotated without downtime.
    pub api_tokens: Arc<Vec<SecretString>>,
    pub health: SharedHealth,
    pub metrics: PrometheusHandle,
}

/// The whole API with its state applied, ready for `axum::serve`.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/v1/callbacks", get(callbacks::list))
        .route("/v1/callbacks/{id}", get(callbacks::get))
        .route("/v1/callbacks/{id}/claim", post(callbacks::claim))
        .route(
            "/v1/callbacks/{id}/attempts",
            post(callbacks::record_attempt),
        )
        .route("/v1/callbacks/{id}/cancel", post(callbacks::cancel))
        .route("/v1/queues/{queue}/estimate", get(queues::estimate))
        .route("/v1/deliveries", get(deliveries::list))
        .route("/v1/deliveries/{id}", get(deliveries::get))
        .route("/v1/deliveries/{id}/replay", post(deliveries::replay))
        .route("/v1/sla", get(sla::report))
        .route("/v1/contacts/{phone}", delete(contacts::erase))
        // A route layer, so an unknown `/v1/...` path is a plain 404 rather than a 401.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(v1)
        .fallback(not_found)
        // After every route is added: it is set on each route's method router.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

/// Counts requests by route template and status. The template (never the raw path, which holds
/// ids) keeps the label set bounded.
async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("callkeeper_api_requests_total", "route" => route, "status" => status)
        .increment(1);
    response
}

/// The `limit` of a list call: default 50, 1 to 500.
fn page_limit(raw: Option<&str>) -> Result<u32, ApiError> {
    let Some(raw) = raw else {
        return Ok(DEFAULT_PAGE_LIMIT);
    };
    raw.parse::<u32>()
        .ok()
        .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
        .ok_or_else(|| {
            ApiError::invalid_query(format!(
                "limit: must be a whole number from 1 to {MAX_PAGE_LIMIT}"
            ))
        })
}
