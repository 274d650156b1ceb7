//! What a group has done, for tests to assert on. The real server keeps
//! similar counters for its monitoring; the settlement log exists only
//! here, so tests can check that every delivery was settled exactly once.

use std::collections::BTreeMap;

use uuid::Uuid;

/// How a consumer settled one event id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged.
    Ack,
    /// Not acknowledged; `action` is "park", "retry", "skip", "stop" or
    /// "unknown".
    Nack { action: String, reason: String },
}

/// One ack or nack, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The id the consumer sent (the link's id when links were resolved).
    pub event_id: Uuid,
    /// What it said.
    pub outcome: Outcome,
}

/// A snapshot of a group's activity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Events sent to consumers, redeliveries included.
    pub delivered: u64,
    /// Ids acknowledged.
    pub acked: u64,
    /// Ids not acknowledged, by action.
    pub nacked: BTreeMap<String, u64>,
    /// Events currently in the parked stream (replays remove them).
    pub parked: u64,
    /// Events sent and not yet settled.
    pub in_flight: u64,
    /// Consumers connected.
    pub connections: usize,
    /// The last checkpoint written (a revision, or a position for `$all`).
    pub last_checkpoint: Option<u64>,
    /// Every ack and nack received, in order.
    pub settled: Vec<Settlement>,
}

/// The counters a group keeps across reloads.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub delivered: u64,
    pub acked: u64,
    pub nacked: BTreeMap<String, u64>,
    pub settled: Vec<Settlement>,
}
