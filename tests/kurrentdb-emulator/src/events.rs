//! Event records: what callers propose and what the store keeps.
//!
//! Link events (type `$>`, data `<revision>@<stream>`) are how KurrentDB
//! points from one stream into another; `$ce-` streams and parked-message
//! streams are made of them.

use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// The event type of a link event.
pub const LINK_TYPE: &str = "$>";

/// The content type the client marks JSON payloads with.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The content type of everything else.
pub const BINARY_CONTENT_TYPE: &str = "application/octet-stream";

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// The event id; appends keep it as given.
    pub id: Uuid,
    /// The event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// `application/json` or `application/octet-stream`.
    pub content_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The user metadata (the client's "custom metadata").
    pub metadata: Vec<u8>,
}

impl NewEvent {
    /// A JSON event with a random id, `data` stored as compact JSON.
    pub fn json(event_type: &str, data: &serde_json::Value) -> NewEvent {
        NewEvent {
            id: Uuid::new_v4(),
            event_type: event_type.to_owned(),
            content_type: JSON_CONTENT_TYPE.to_owned(),
            data: data.to_string().into_bytes(),
            metadata: Vec::new(),
        }
    }

    /// A link event pointing at `target`, with the given metadata.
    pub fn link_to(target: &StoredEvent, metadata: Vec<u8>) -> NewEvent {
        let data = format!("{}@{}", target.revision, target.stream);
        NewEvent {
            id: Uuid::new_v4(),
            event_type: LINK_TYPE.to_owned(),
            content_type: BINARY_CONTENT_TYPE.to_owned(),
            data: data.into_bytes(),
            metadata,
        }
    }
}

/// An event as written to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    /// The event id.
    pub id: Uuid,
    /// The stream the event belongs to.
    pub stream: String,
    /// Its revision within `stream`, from 0.
    pub revision: u64,
    /// The event type.
    pub event_type: String,
    /// The content type.
    pub content_type: String,
    /// The payload.
    pub data: Vec<u8>,
    /// The user metadata.
    pub metadata: Vec<u8>,
    /// Its place in the global log (`$all`); used as both commit and
    /// prepare position, since every event is its own transaction here.
    pub position: u64,
    /// When it was written, in 100 ns ticks since the Unix epoch (the unit
    /// of the "created" metadata the client reads).
    pub created_ticks: u64,
}

impl StoredEvent {
    /// Whether this is a link event.
    pub fn is_link(&self) -> bool {
        self.event_type == LINK_TYPE
    }

    /// The `(revision, stream)` a link event points at, if it parses.
    pub fn link_target(&self) -> Option<(u64, &str)> {
        if !self.is_link() {
            return None;
        }
        let text = std::str::from_utf8(&self.data).ok()?;
        let (revision, stream) = text.split_once('@')?;
        Some((revision.parse().ok()?, stream))
    }

    /// Whether the payload is JSON, as the client decides it.
    pub fn is_json(&self) -> bool {
        self.content_type == JSON_CONTENT_TYPE
    }
}

/// Now, in the "created" unit.
pub(crate) fn now_ticks() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (since.as_nanos() / 100) as u64
}
