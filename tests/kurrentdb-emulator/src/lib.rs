//! An in-memory, single-node server speaking KurrentDB's gRPC protocol,
//! so the relay's tests can run the official `kurrentdb` client against
//! something faithful without a real KurrentDB.
//!
//! Layout:
//! - [`store`]: the database handle (log + groups behind one lock);
//! - `log`: streams, the global order, `$ce-`/`$et-` links;
//! - [`persistent`]: consumer groups and their gRPC service;
//! - `streams`, `features`: the other gRPC services;
//! - [`server`]: the HTTP/2 listener and its lifecycle;
//! - [`seed`]: loading streams from JSON files.
//!
//! Known gaps (real-server behaviour not emulated): TLS, authentication
//! and ACLs; catch-up subscriptions; batch append; idempotent appends;
//! stream metadata streams (`$$stream`), `$maxCount`/`$maxAge` set by
//! clients; filters on `$all` groups and reads; projections beyond the
//! synchronous `$ce-`/`$et-` links (links carry no projection metadata);
//! gRPC deadlines (`grpc-timeout`) are not enforced; the HTTP API;
//! gossip and clusters; statistics such as rates are reported as 0.
//! Persistent-subscription details are listed in `persistent::group`.

// tonic's generated traits and helpers return `tonic::Status` as the
// error; boxing it only in our helpers would add conversions for nothing.
#![allow(clippy::result_large_err)]

pub mod error;
pub mod events;
mod features;
mod log;
pub mod persistent;
pub mod proto;
pub mod seed;
pub mod server;
mod status;
pub mod store;
mod streams;
mod wire;

pub use error::EmulatorError;
pub use events::{NewEvent, StoredEvent};
pub use persistent::stats::{GroupStats, Outcome, Settlement};
pub use server::Server;
pub use store::Store;
