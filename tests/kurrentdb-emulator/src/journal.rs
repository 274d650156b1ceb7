//! The on-disk form of a store opened with a data directory: every change
//! to the log, one JSON line each, appended to `<dir>/log.jsonl` and
//! replayed in order when the store is opened again.
//!
//! Checkpoints, parked messages and the group configuration are events
//! like any other, so replaying the log restores them too. Lines are
//! buffered and flushed whenever the store's lock is released, so a
//! process killed outright loses at most the operation in progress; a
//! torn last line is ignored on replay.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::StoredEvent;

/// The journal's file name inside the data directory.
const FILE_NAME: &str = "log.jsonl";

/// One change to the log.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(crate) enum Entry {
    /// An event written (positions and revisions follow from the order).
    Write {
        stream: String,
        id: Uuid,
        #[serde(rename = "type")]
        event_type: String,
        content_type: String,
        /// Base64.
        data: String,
        /// Base64.
        metadata: String,
        created: u64,
    },
    /// Revisions below `before` hidden.
    Truncate { stream: String, before: u64 },
    /// A soft delete.
    Delete { stream: String },
    /// A hard delete.
    Tombstone { stream: String },
    /// A stream the emulator owns, forgotten.
    Remove { stream: String },
}

impl Entry {
    /// The entry for a written event.
    pub fn write(event: &StoredEvent) -> Entry {
        Entry::Write {
            stream: event.stream.clone(),
            id: event.id,
            event_type: event.event_type.clone(),
            content_type: event.content_type.clone(),
            data: STANDARD.encode(&event.data),
            metadata: STANDARD.encode(&event.metadata),
            created: event.created_ticks,
        }
    }
}

/// Decodes base64 written by [`Entry::write`]; bad text reads as empty.
pub(crate) fn bytes(text: &str) -> Vec<u8> {
    STANDARD.decode(text).unwrap_or_default()
}

/// The open journal file.
pub(crate) struct Journal {
    path: PathBuf,
    file: BufWriter<File>,
    /// The first write error, reported once; later writes are dropped.
    failed: bool,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Journal {
    /// Reads every entry of `dir`'s journal (creating the directory if
    /// needed) and opens it for appending.
    pub fn open(dir: &Path) -> std::io::Result<(Journal, Vec<Entry>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let entries = read_entries(&path)?;
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let journal = Journal {
            path,
            file: BufWriter::new(file),
            failed: false,
        };
        Ok((journal, entries))
    }

    /// Appends one entry (buffered).
    pub fn record(&mut self, entry: &Entry) {
        let result = serde_json::to_writer(&mut self.file, entry)
            .map_err(std::io::Error::from)
            .and_then(|()| self.file.write_all(b"\n"));
        self.check(result);
    }

    /// Writes buffered entries to the file.
    pub fn flush(&mut self) {
        let result = self.file.flush();
        self.check(result);
    }

    fn check(&mut self, result: std::io::Result<()>) {
        if let (Err(error), false) = (result, self.failed) {
            self.failed = true;
            tracing::error!(path = %self.path.display(), %error, "data directory write failed");
        }
    }
}

/// Every entry that parses, in order. A bad line (a torn last write) and
/// whatever follows it are cut off, so later appends follow good lines.
fn read_entries(path: &Path) -> std::io::Result<Vec<Entry>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut reader = BufReader::new(file);
    let mut entries = Vec::new();
    let mut good = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        let read = reader.read_line(&mut line)?;
        if read == 0 {
            return Ok(entries);
        }
        match serde_json::from_str(line.trim_end()) {
            Ok(entry) if line.ends_with('\n') => {
                entries.push(entry);
                good += read as u64;
            }
            _ => break,
        }
    }
    tracing::warn!(path = %path.display(), entries = entries.len(),
        "journal ends with a torn line; cut off");
    OpenOptions::new().write(true).open(path)?.set_len(good)?;
    Ok(entries)
}
