//! An in-memory, single-node server speaking KurrentDB's gRPC protocol,
//! so the relay's tests can run the official `kurrentdb` client against
//! something faithful without a real KurrentDB.
//!
//! Layout:
//! - [`store`]: the database handle (log + groups behind one lock);
//! - `log`: streams, the global order, `$ce-`/`$et-` links;
//! - `journal`: the on-disk log of a store with a data directory;
//! - `encode`: persistent deliveries written straight to wire form;
//! - [`persistent`]: consumer groups and their gRPC service;
//! - `streams`, `features`: the other gRPC services;
//! - [`server`]: the HTTP/2 listener and its lifecycle;
//! - [`seed`]: loading streams from JSON files.
//!
//! Known gaps (real-server behaviour not emulated): TLS and ACLs
//! (authentication is Basic credentials from a fixed list only);
//! catch-up subscriptions; batch append; idempotent appends;
//! stream metadata set by clients is stored but not applied (only the
//! `$maxCount`/`$tb` the emulator sets on its own streams take effect);
//! filters on `$all` reads (groups apply theirs); projections beyond the
//! synchronous `$ce-`/`$et-` links (links carry no projection metadata);
//! gRPC deadlines (`grpc-timeout`) are not enforced; the HTTP API;
//! gossip and clusters.
//! Persistent-subscription details are listed in `persistent::group`.

// tonic's generated traits and helpers return `tonic::Status` as the
// error; boxing it only in our helpers would add conversions for nothing.
#![allow(clippy::result_large_err)]

mod encode;
pub mod error;
pub mod events;
mod features;
mod journal;
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
