//! outbox-relay: the reliable path from a KurrentDB stream to PostgreSQL.
//!
//! A KurrentDB stream is durable like a database and subscribable like a
//! queue, so it can serve as the outbox itself. This crate joins a
//! persistent-subscription consumer group and writes each `order-placed`
//! event into PostgreSQL with an idempotent upsert, acking only after the
//! write has committed.
//!
//! The layout, from the outside in:
//! - [`cli`] and [`app`]: the command line and what each command does;
//! - [`config`]: layered settings; [`telemetry`]: logging;
//! - [`metrics`] and [`health`]: what the relay counts, and the HTTP
//!   endpoint that serves it with the liveness and readiness probes;
//! - [`relay`]: the lifecycle (subscribe, consume, reconnect, stop);
//! - [`handler`]: one verdict, ack or nack, for every delivery;
//! - [`source`]: everything that speaks to KurrentDB;
//! - [`order`]: decoding and validating an order event;
//! - [`store`]: every SQL statement, and the retry-or-give-up decision;
//! - [`shutdown`]: the stop signal;
//! - [`demo`]: the one-command local demonstration;
//! - [`seed`]: appending sample events from the tutorial's files.

pub mod app;
pub mod cli;
pub mod config;
pub mod demo;
pub mod handler;
pub mod health;
pub mod metrics;
pub mod order;
pub mod relay;
pub mod seed;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod telemetry;
