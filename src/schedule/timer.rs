//! The one timer task. STUB: filled in by the timer work.
pub struct Timer;
