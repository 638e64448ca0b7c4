//! The delivery worker. STUB.
pub struct Notifier;
