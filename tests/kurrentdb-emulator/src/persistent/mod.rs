//! Persistent subscriptions: groups that deliver a stream's events to
//! competing consumers, with acks, retries, parking and checkpoints.
//!
//! `registry` owns the set of groups, `group` one group's delivery state,
//! `pinned` the Pinned strategy's buckets, `filter` what `$all` groups
//! deliver, `settings` the configuration rules, `service` the gRPC
//! surface.

pub mod filter;
pub(crate) mod group;
pub mod pinned;
pub(crate) mod registry;
pub(crate) mod service;
pub mod settings;
pub mod stats;
