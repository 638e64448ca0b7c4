//! Open routes for orchestrators and scrapers: liveness, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

use super::ApiState;

/// A store that does not answer within this is not ready; `/readyz` must answer quickly itself.
const STORE_PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Alive: the process runs and serves HTTP.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready: the broker connection is up and the store answers. The 503 body says which check
/// failed, in the usual error shape plus the per-check detail.
pub async fn readyz(State(state): State<ApiState>) -> Response {
    let amqp_ok = state.health.amqp_connected();
    let store_ok = match tokio::time::timeout(STORE_PING_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            warn!(%error, "Store ping for readiness failed.");
            false
        }
        Err(_) => {
            warn!(
                timeout_ms = STORE_PING_TIMEOUT.as_millis() as u64,
                "Store ping for readiness timed out."
            );
            false
        }
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let checks = json!({ "amqp": word(amqp_ok), "store": word(store_ok) });
    if amqp_ok && store_ok {
        return Json(json!({ "status": "ok", "checks": checks })).into_response();
    }
    let failed: Vec<&str> = [("amqp", amqp_ok), ("store", store_ok)]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| name)
        .collect();
    let body = json!({
        "status": "unavailable",
        "checks": checks,
        "error": {
            "code": "not_ready",
            "message": format!("not ready: {} unavailable", failed.join(" and ")),
        },
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
