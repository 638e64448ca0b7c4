//! When a callback is due, by when it must happen, and the one timer that fires it.

mod calendar;
mod country_zones;
mod rules;
mod timer;
mod wakeups;

pub use calendar::{instant, Calendar, Range, Recurring};
pub use country_zones::zone_of_country;
pub use rules::{Callee, CallingWindows, Plan, QueuePolicy, Rules};
pub use timer::Timer;
pub use wakeups::{DeliveryInbox, Inbox, WakeupReceivers, Wakeups};
