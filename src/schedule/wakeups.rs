//! How a write tells the timer and the notifier there is new work, without either polling hard.
//! The store holds the sending side, so every write path wakes them the same way.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, Notify};

use crate::domain::CallbackId;
use crate::notify::Delivery;

/// Most deliveries waiting in the inbox. Beyond it the notifier is behind anyway: the inbox is
/// emptied and the notifier reads them from the store, so memory stays bounded.
const INBOX_MAX: usize = 8192;

/// Cloneable sending side, held by the store.
#[derive(Debug, Clone)]
pub struct Wakeups {
    fire: mpsc::UnboundedSender<(DateTime<Utc>, CallbackId)>,
    deliveries: DeliveryInbox,
    events: Arc<Notify>,
}

/// Receiving side, split between the timer and the notifier at start.
#[derive(Debug)]
pub struct WakeupReceivers {
    pub fire: mpsc::UnboundedReceiver<(DateTime<Utc>, CallbackId)>,
    pub deliveries: DeliveryInbox,
    /// Lifecycle events were written to the outbox; for the events publisher.
    pub events: Arc<Notify>,
}

/// New deliveries on their way to the notifier. A write hands over the deliveries it made, so
/// the notifier sends them without reading them back (in a burst those reads were half the
/// store's reading); a write that does not have them in hand asks it to look in the store.
#[derive(Debug, Clone, Default)]
pub struct DeliveryInbox(Arc<InboxShared>);

#[derive(Debug, Default)]
struct InboxShared {
    contents: Mutex<Inbox>,
    doorbell: Notify,
}

/// What the notifier finds in the inbox.
#[derive(Debug, Default)]
pub struct Inbox {
    /// Stored and committed, due now, in the order made.
    pub handed: Vec<Delivery>,
    /// Deliveries were stored that are not in `handed`: read the store.
    pub look: bool,
}

impl DeliveryInbox {
    /// Call only after COMMIT, with deliveries due now.
    pub fn hand(&self, deliveries: Vec<Delivery>) {
        {
            let mut inbox = self.lock();
            if inbox.handed.len() + deliveries.len() > INBOX_MAX {
                inbox.handed = Vec::new();
                inbox.look = true;
            } else {
                inbox.handed.extend(deliveries);
            }
        }
        self.0.doorbell.notify_one();
    }

    /// Deliveries were stored without being handed over.
    pub fn look(&self) {
        self.lock().look = true;
        self.0.doorbell.notify_one();
    }

    /// Empties the inbox.
    pub fn take(&self) -> Inbox {
        std::mem::take(&mut *self.lock())
    }

    /// Returns once something was put in the inbox since the last wait (maybe taken already).
    pub async fn rung(&self) {
        self.0.doorbell.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inbox> {
        // The inbox is left whole by every holder, so a panic elsewhere does not spoil it.
        self.0
            .contents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Wakeups {
    pub fn new() -> (Self, WakeupReceivers) {
        let (tx, rx) = mpsc::unbounded_channel();
        let deliveries = DeliveryInbox::default();
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

    /// New deliveries were stored and committed; here they are.
    pub fn deliveries_made(&self, deliveries: Vec<Delivery>) {
        self.deliveries.hand(deliveries);
    }

    /// Deliveries were stored or made ready again (a replay, a digest); the notifier reads them.
    pub fn deliveries_ready(&self) {
        self.deliveries.look();
    }

    /// New lifecycle events were written to the outbox.
    pub fn events_ready(&self) {
        self.events.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::lifecycle::Notice;
    use crate::domain::QueueName;

    fn made(n: usize) -> Vec<Delivery> {
        (0..n)
            .map(|i| {
                Delivery::pending(
                    format!("msg_{i}"),
                    None,
                    QueueName::parse("support").unwrap(),
                    Notice::Due,
                    "http://127.0.0.1:9/hook",
                    "{}".into(),
                    Utc::now(),
                )
            })
            .collect()
    }

    fn ids(inbox: &Inbox) -> Vec<&str> {
        inbox.handed.iter().map(|d| d.id.as_str()).collect()
    }

    #[tokio::test]
    async fn the_inbox_keeps_the_order_made_and_rings() {
        let inbox = DeliveryInbox::default();
        inbox.hand(made(2));
        inbox.hand(made(1));
        // Rung once for both: the permit is kept until someone waits.
        tokio::time::timeout(std::time::Duration::from_secs(1), inbox.rung())
            .await
            .expect("the doorbell rang");
        let taken = inbox.take();
        assert_eq!(ids(&taken), ["msg_0", "msg_1", "msg_0"]);
        assert!(!taken.look);
        let empty = inbox.take();
        assert!(empty.handed.is_empty() && !empty.look);
    }

    #[test]
    fn a_full_inbox_is_emptied_and_asks_for_a_look_instead() {
        let inbox = DeliveryInbox::default();
        inbox.hand(made(INBOX_MAX));
        inbox.hand(made(1));
        let taken = inbox.take();
        assert!(taken.handed.is_empty(), "nothing held beyond the bound");
        assert!(taken.look, "the notifier reads the store instead");
        // Then it fills again as usual.
        inbox.hand(made(1));
        let taken = inbox.take();
        assert_eq!((taken.handed.len(), taken.look), (1, false));
    }

    #[test]
    fn a_look_keeps_what_was_handed() {
        let inbox = DeliveryInbox::default();
        inbox.hand(made(1));
        inbox.look();
        let taken = inbox.take();
        assert_eq!((taken.handed.len(), taken.look), (1, true));
    }
}
