//! callkeeper keeps contact-centre callback promises.
//!
//! A callback is born in [`intake`] (an event from RabbitMQ), is kept in [`store`] (the source of
//! truth), waits in [`schedule`] until it is due, fires through [`notify`] (signed webhooks) and is
//! claimed, attempted and closed through [`api`]. [`app`] wires the stages together; beside them
//! run [`retention`] and the daily SLA [`digest`].
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod digest;
pub mod domain;
pub mod events;
pub mod intake;
pub mod ivr;
pub mod notify;
pub mod reconnect;
pub mod retention;
pub mod schedule;
pub mod store;
pub mod telemetry;
