//! Domain types that can only hold valid values, and the pure lifecycle rules.

mod callback;
pub mod events;
pub mod inbound;
mod string_enum;
pub(crate) use string_enum::string_enum;
mod ids;
pub mod lifecycle;
mod phone;
mod priority;
pub mod sla;

pub use callback::{
    Attempt, CallInfo, Callback, CancelReason, Customer, OfferedTo, Outcome, SlaStatus, State,
    Window,
};
pub use ids::{CallbackId, QueueName};
pub use phone::{mask_phone, Phone, PhoneError};
pub use priority::Priority;
