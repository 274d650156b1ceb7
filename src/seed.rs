//! `outbox-relay seed`: appends sample events from files in the KurrentDB
//! tutorial's format to a real server (or the emulator).
//!
//! A seed file is a JSON array of `{"stream": "...", "events": [...]}`,
//! each event with an optional `id`, a `type`, an optional `content-type`
//! (default `application/json`), `data` and optional `metadata`. The same
//! stream may continue in a later file. An event whose `id` is already in
//! its stream is not appended again, so running the seeder twice (say, on
//! every `docker compose up`) adds nothing the second time; events without
//! an `id` get a new one and are appended every time.
//!
//! Known shortcoming: the official client sends JSON or
//! `application/octet-stream` only, so an event with another content type
//! is appended as octet-stream (its `data` string as the bytes).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use kurrentdb::{Client, EventData};
use serde::Deserialize;
use tracing::debug;
use uuid::Uuid;

use crate::source::{self, SourceError};

/// Why seeding failed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not in the tutorial's format.
    #[error("{path} is not a seed file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// KurrentDB refused an append.
    #[error(transparent)]
    Source(#[from] SourceError),
}

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
    #[serde(rename = "content-type", default)]
    content_type: Option<String>,
    data: serde_json::Value,
    #[serde(default)]
    metadata: Option<serde_json::Value>,
}

/// What seeding did, for the operator.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedReport {
    /// Streams appended to.
    pub streams: usize,
    /// Events appended.
    pub events: usize,
    /// Events left out because their stream already had them.
    pub skipped: usize,
}

/// Appends every stream in `files`, in order.
pub async fn seed_files(client: &Client, files: &[PathBuf]) -> Result<SeedReport, SeedError> {
    let mut report = SeedReport::default();
    for path in files {
        for stream in read(path)? {
            let (present, last) = source::stream_ids(client, &stream.stream).await?;
            let total = stream.events.len();
            let new: Vec<SeedEvent> = stream
                .events
                .into_iter()
                .filter(|e| e.id.is_none_or(|id| !present.contains(&id)))
                .collect();
            report.skipped += total - new.len();
            if new.is_empty() {
                debug!(stream = %stream.stream, "stream already seeded");
                continue;
            }
            let count = new.len();
            let events = to_event_data(path, new)?;
            source::append_after(client, &stream.stream, last, events).await?;
            debug!(stream = %stream.stream, events = count, "stream seeded");
            report.streams += 1;
            report.events += count;
        }
    }
    Ok(report)
}

fn read(path: &Path) -> Result<Vec<SeedStream>, SeedError> {
    let text = std::fs::read(path).map_err(|source| SeedError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|e| format_error(path, e))
}

fn to_event_data(path: &Path, events: Vec<SeedEvent>) -> Result<Vec<EventData>, SeedError> {
    events
        .into_iter()
        .map(|e| event_data(e).map_err(|err| format_error(path, err)))
        .collect()
}

fn event_data(event: SeedEvent) -> serde_json::Result<EventData> {
    let json = event
        .content_type
        .as_deref()
        .is_none_or(|ct| ct == "application/json");
    let mut data = match (&event.data, json) {
        (_, true) => EventData::json(&event.event_type, &event.data)?,
        (serde_json::Value::String(text), false) => {
            EventData::binary(&event.event_type, Bytes::from(text.clone()))
        }
        (other, false) => {
            let bytes = Bytes::from(serde_json::to_vec(other)?);
            EventData::binary(&event.event_type, bytes)
        }
    };
    data = data.id(event.id.unwrap_or_else(Uuid::new_v4));
    if let Some(metadata) = &event.metadata {
        data = data.metadata_as_json(metadata)?;
    }
    Ok(data)
}

fn format_error(path: &Path, error: impl std::fmt::Display) -> SeedError {
    SeedError::Format {
        path: path.to_owned(),
        reason: error.to_string(),
    }
}

/// The `.json` files in `dir`, sorted by name.
pub fn files_in(dir: &Path) -> Result<Vec<PathBuf>, SeedError> {
    let entries = std::fs::read_dir(dir).map_err(|source| SeedError::Read {
        path: dir.to_owned(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    Ok(files)
}
