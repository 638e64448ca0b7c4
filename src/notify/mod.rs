//! Webhooks out: what a notice becomes ([`outbox`]), how it is signed ([`signing`]) and the
//! worker that delivers it with retries held in the store ([`deliver`]). [`receiver`] is a small
//! verifying endpoint for tests and the demo.

pub mod deliver;
pub mod outbox;
pub mod receiver;
pub mod signing;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::lifecycle::Notice;
use crate::domain::{CallbackId, QueueName};

pub use deliver::Notifier;
pub use receiver::{Answer, ReceivedWebhook, Receiver};

crate::domain::string_enum! {
    /// Where a delivery stands.
    pub enum DeliveryState {
        /// Waiting for its next try.
        Pending => "pending",
        Delivered => "delivered",
        /// Gave up after its tries; kept and replayable.
        Failed => "failed",
        /// Held because its endpoint answered 410 Gone; replayable.
        Disabled => "disabled",
    }
}

/// One webhook notification to one endpoint; every try of it carries the same `id`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Delivery {
    /// The `webhook-id` header: `msg_<uuid>`.
    pub id: String,
    /// `None` for an SLA digest, which is about a queue's day rather than one callback.
    pub callback_id: Option<CallbackId>,
    pub queue: QueueName,
    pub notice: Notice,
    pub url: String,
    /// The exact JSON body, fixed when the notice was made.
    pub body: String,
    pub state: DeliveryState,
    pub tries: u32,
    pub next_try_at: DateTime<Utc>,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Delivery {
    /// A new notification, waiting for its first try.
    pub fn pending(
        id: String,
        callback_id: Option<CallbackId>,
        queue: QueueName,
        notice: Notice,
        url: &str,
        body: String,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            callback_id,
            queue,
            notice,
            url: url.to_owned(),
            body,
            state: DeliveryState::Pending,
            tries: 0,
            next_try_at: now,
            last_status: None,
            last_error: None,
            created_at: now,
            delivered_at: None,
        }
    }
}
