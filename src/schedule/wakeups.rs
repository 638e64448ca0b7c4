//! How a write tells the timer and the notifier there is new work, without either polling hard.
//! The store holds the sending side, so every write path wakes them the same way.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};

use crate::domain::CallbackId;
use crate::notify::Delivery;

/// Cloneable sending side, held by the store.
#[derive(Debug, Clone)]
pub struct Wakeups {
    fire: mpsc::UnboundedSender<(DateTime<Utc>, CallbackId)>,
    deliveries: Arc<Notify>,
    handed: mpsc::UnboundedSender<Vec<Delivery>>,
    events: Arc<Notify>,
}

/// The notifier's side: a wakeup to read the store, or committed deliveries handed over whole,
/// which spares it that read.
#[derive(Debug)]
pub struct DeliveryWakeups {
    pub ready: Arc<Notify>,
    pub handed: mpsc::UnboundedReceiver<Vec<Delivery>>,
}

/// Receiving side, split between the timer and the notifier at start.
#[derive(Debug)]
pub struct WakeupReceivers {
    pub fire: mpsc::UnboundedReceiver<(DateTime<Utc>, CallbackId)>,
    pub deliveries: DeliveryWakeups,
    /// Lifecycle events were written to the outbox; for the events publisher.
    pub events: Arc<Notify>,
}

impl Wakeups {
    pub fn new() -> (Self, WakeupReceivers) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (handed_tx, handed) = mpsc::unbounded_channel();
        let deliveries = Arc::new(Notify::new());
        let events = Arc::new(Notify::new());
        (
            Self {
                fire: tx,
                deliveries: deliveries.clone(),
                handed: handed_tx,
                events: events.clone(),
            },
            WakeupReceivers {
                fire: rx,
                deliveries: DeliveryWakeups {
                    ready: deliveries,
                    handed,
                },
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

    /// These deliveries were just committed, ready to send: the notifier takes them as a read
    /// of the store would have returned them.
    pub fn hand_over(&self, deliveries: Vec<Delivery>) {
        // A closed channel means the notifier stopped; the store still holds them.
        let _ = self.handed.send(deliveries);
    }

    /// New lifecycle events were written to the outbox.
    pub fn events_ready(&self) {
        self.events.notify_one();
    }
}
