//! How a write tells the timer and the notifier there is new work, without either polling hard.
//! The store holds the sending side, so every write path wakes them the same way.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};

use crate::domain::CallbackId;

/// Cloneable sending side, held by the store.
#[derive(Debug, Clone)]
pub struct Wakeups {
    fire: mpsc::UnboundedSender<(DateTime<Utc>, CallbackId)>,
    deliveries: Arc<Notify>,
    events: Arc<Notify>,
}

/// Receiving side, split between the timer and the notifier at start.
#[derive(Debug)]
pub struct WakeupReceivers {
    pub fire: mpsc::UnboundedReceiver<(DateTime<Utc>, CallbackId)>,
    pub deliveries: Arc<Notify>,
    /// Lifecycle events were written to the outbox; for the events publisher.
    pub events: Arc<Notify>,
}

impl Wakeups {
    pub fn new() -> (Self, WakeupReceivers) {
        let (tx, rx) = mpsc::unbounded_channel();
        let deliveries = Arc::new(Notify::new());
        let events = Arc::new(Notify::new());
        (
            Self {
                fire: tx,
                deliveries: deliveries.clone(),
                events: events.clone(),
            },
            WakeupReceivers {
                fire: rx,
                deliveries,
                events,
            },
        )
    }

    /// A callback now needs the timer at `at` (the timer ignores it when beyond its horizon).
    pub fn fire_at(&self, at: DateTime<Utc>, id: CallbackId) {
        // A closed channel means the timer stopped; the store still holds the time.
        let _ = self.fire.send((at, id));
    }

    /// New deliveries were stored.
    pub fn deliveries_ready(&self) {
        self.deliveries.notify_one();
    }

    /// New lifecycle events were written to the outbox.
    pub fn events_ready(&self) {
        self.events.notify_one();
    }
}
