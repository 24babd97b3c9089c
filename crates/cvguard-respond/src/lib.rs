//! cvguard-respond: what cvguard does about a decision.
//!
//! - [`rails`]: the cooldown and the blast-radius limit, pure (the service and `backtest`).
//! - [`responder`]: safety rails and the incident record (with its outbox) for each alert.
//! - [`suspend`]: the signed suspend webhook, sent from the outbox with retries.
//! - [`sinks`] and [`http_sinks`]: alert sinks (JSONL, stdout, webhook, Alertmanager,
//!   Kafka), each on its own thread behind a bounded queue.
//! - [`alertmanager`]: the Alertmanager sink, and the task that keeps an incident's alert
//!   alive there while it is open and resolves it when it closes.
//! - [`sign`]: the webhook signature, for senders and receivers.

pub mod alertmanager;
pub mod http_sinks;
pub mod rails;
pub mod responder;
pub mod sign;
pub mod sinks;
pub mod suspend;

pub use rails::Rails;
pub use responder::Responder;
pub use sinks::SinkSet;
