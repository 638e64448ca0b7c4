//! Events in from RabbitMQ: [`decode`] turns a message body into a command (or says why it can
//! never be applied), [`topology`] declares the exchanges and queues, and [`Intake`] consumes,
//! stores, dead-letters and acks.

mod consumer;
pub mod decode;
pub mod topology;

pub use consumer::{Intake, DETAIL_HEADER, REASON_HEADER};
pub use decode::decode;
