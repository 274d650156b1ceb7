//! Seed files: streams to load before the first client connects.
//!
//! A seed file is a JSON array of `{"stream": "...", "events": [...]}`.
//! Each event has `id` (optional, random when absent), `type`,
//! `content-type` (default `application/json`) and `data`, any JSON value.
//! JSON data is stored as its compact text; for other content types a
//! string is stored as its bytes.

use std::path::Path;

use serde::Deserialize;
use uuid::Uuid;

use crate::error::EmulatorError;
use crate::events::{NewEvent, JSON_CONTENT_TYPE};
use crate::store::Store;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedStream {
    stream: String,
    events: Vec<SeedEvent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedEvent {
    #[serde(default)]
    id: Option<Uuid>,
    #[serde(rename = "type")]
    event_type: String,
    #[serde(rename = "content-type", default = "json_content_type")]
    content_type: String,
    data: serde_json::Value,
    /// User metadata, stored like `data`.
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

fn json_content_type() -> String {
    JSON_CONTENT_TYPE.to_owned()
}

impl SeedEvent {
    fn into_new_event(self) -> NewEvent {
        let data = match (&self.data, self.content_type.as_str()) {
            (serde_json::Value::String(text), ct) if ct != JSON_CONTENT_TYPE => {
                text.clone().into_bytes()
            }
            (value, _) => value.to_string().into_bytes(),
        };
        NewEvent {
            id: self.id.unwrap_or_else(Uuid::new_v4),
            event_type: self.event_type,
            content_type: self.content_type,
            data,
            metadata: self
                .metadata
                .map(|m| m.to_string().into_bytes())
                .unwrap_or_default(),
        }
    }
}

/// Loads `path` into `store`; returns the number of events appended.
pub fn seed_file(store: &Store, path: &Path) -> Result<usize, EmulatorError> {
    let text = std::fs::read(path).map_err(|source| EmulatorError::SeedRead {
        path: path.to_owned(),
        source,
    })?;
    let streams: Vec<SeedStream> =
        serde_json::from_slice(&text).map_err(|source| EmulatorError::SeedFormat {
            path: path.to_owned(),
            source,
        })?;

    let mut count = 0;
    for seed in streams {
        let events: Vec<NewEvent> = seed
            .events
            .into_iter()
            .map(SeedEvent::into_new_event)
            .collect();
        count += events.len();
        store.append(&seed.stream, events)?;
    }
    Ok(count)
}
