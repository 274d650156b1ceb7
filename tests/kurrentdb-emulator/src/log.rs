//! The in-memory event log: every stream, and the global order (`$all`).
//!
//! Events are shared `Arc`s, so a stream and `$all` hold the same record
//! and a delivery clones a pointer, not a payload. Revisions are indexes
//! into a stream's vector; truncation (`$tb`, `$maxCount`) hides events
//! instead of freeing them, which keeps indexing O(1).
//!
//! With a data directory, every change is also recorded in the
//! [`Journal`] and replayed from it when the store is opened again.
//!
//! Known gaps: no idempotent appends (re-sending the same event ids writes
//! them again), no stream metadata stream (`$$<stream>`), no ACLs, and
//! `$maxCount` is only applied to the streams the emulator writes itself.

use std::collections::HashMap;
use std::sync::Arc;

use crate::events::{now_ticks, NewEvent, StoredEvent};
use crate::journal::{self, Entry, Journal};

/// A system-written stream whose name starts with `$` is never categorised.
const SYSTEM_PREFIX: char = '$';

/// What the writer expects the stream's state to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Whatever the state.
    Any,
    /// The stream has no events yet.
    NoStream,
    /// The stream has at least one event.
    StreamExists,
    /// The stream's last revision is exactly this.
    Revision(u64),
}

/// Why an append was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendError {
    /// The expectation did not hold; `current` is the last revision.
    WrongExpectedVersion {
        current: Option<u64>,
        expected: Expected,
    },
    /// The stream is tombstoned.
    StreamDeleted,
}

/// A successful append.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// The stream's last revision after the append (None if nothing was
    /// appended to a stream that does not exist).
    pub revision: Option<u64>,
    /// The global position of the last event written.
    pub position: Option<u64>,
}

/// One stream's events and its truncation state.
#[derive(Debug, Default)]
pub struct StreamData {
    events: Vec<Arc<StoredEvent>>,
    /// Revisions below this are hidden (`$tb`, soft delete).
    truncate_before: u64,
    /// Set by a soft delete, cleared by the next append.
    soft_deleted: bool,
    tombstoned: bool,
}

impl StreamData {
    /// The revision of the last event written, hidden or not.
    pub fn last_revision(&self) -> Option<u64> {
        (self.events.len() as u64).checked_sub(1)
    }

    /// The number of events ever written (the next revision).
    pub fn next_revision(&self) -> u64 {
        self.events.len() as u64
    }

    /// The event at `revision` if it is visible.
    pub fn get(&self, revision: u64) -> Option<&Arc<StoredEvent>> {
        if revision < self.truncate_before {
            return None;
        }
        self.events.get(usize::try_from(revision).ok()?)
    }

    /// The visible events, oldest first.
    pub fn visible(&self) -> &[Arc<StoredEvent>] {
        let from = (self.truncate_before as usize).min(self.events.len());
        &self.events[from..]
    }

    /// Whether a read should answer "stream not found".
    pub fn is_absent(&self) -> bool {
        self.events.is_empty() || self.soft_deleted
    }

    /// Whether the stream was tombstoned.
    pub fn is_tombstoned(&self) -> bool {
        self.tombstoned
    }
}

/// Every stream plus the global order of events.
#[derive(Debug, Default)]
pub struct Log {
    streams: HashMap<String, StreamData>,
    all: Vec<Arc<StoredEvent>>,
    /// Where changes are recorded, for a store with a data directory.
    journal: Option<Journal>,
}

impl Log {
    /// A stream, if anything was ever written to it.
    pub fn stream(&self, name: &str) -> Option<&StreamData> {
        self.streams.get(name)
    }

    /// The global log, in write order.
    pub fn all(&self) -> &[Arc<StoredEvent>] {
        &self.all
    }

    /// Appends `events` after checking `expected`, then writes the
    /// category and event-type links a real server's system projections
    /// would write. Returns the outcome and the streams that grew.
    pub fn append(
        &mut self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<(Appended, Vec<String>), AppendError> {
        self.check_expected(stream, expected)?;
        let mut touched = vec![stream.to_owned()];
        let mut written = Vec::with_capacity(events.len());
        for event in events {
            written.push(self.write(stream, event));
        }

        let appended = Appended {
            revision: self.stream(stream).and_then(StreamData::last_revision),
            position: written.last().map(|e| e.position),
        };
        if !stream.starts_with(SYSTEM_PREFIX) {
            self.write_projection_links(&written, &mut touched);
        }
        Ok((appended, touched))
    }

    /// Replays a journal into an empty log, then records every later
    /// change in it.
    pub fn attach(&mut self, journal: Journal, entries: Vec<Entry>) {
        for entry in entries {
            self.apply(entry);
        }
        self.journal = Some(journal);
    }

    /// Writes buffered journal lines to disk.
    pub fn flush(&mut self) {
        if let Some(journal) = &mut self.journal {
            journal.flush();
        }
    }

    fn record(&mut self, entry: impl FnOnce() -> Entry) {
        if let Some(journal) = &mut self.journal {
            journal.record(&entry());
        }
    }

    fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Write {
                stream,
                id,
                event_type,
                content_type,
                data,
                metadata,
                created,
            } => {
                let event = NewEvent {
                    id,
                    event_type,
                    content_type,
                    data: journal::bytes(&data),
                    metadata: journal::bytes(&metadata),
                };
                self.write_at(&stream, event, created);
            }
            Entry::Truncate { stream, before } => self.truncate(&stream, before),
            Entry::Delete { stream } => {
                let _ = self.delete(&stream, Expected::Any);
            }
            Entry::Tombstone { stream } => {
                let _ = self.tombstone(&stream, Expected::Any);
            }
            Entry::Remove { stream } => self.remove(&stream),
        }
    }

    /// Appends without any check or projection; for the streams the
    /// emulator itself maintains (checkpoints, parked messages, links).
    pub fn write(&mut self, stream: &str, event: NewEvent) -> Arc<StoredEvent> {
        let record = self.write_at(stream, event, now_ticks());
        self.record(|| Entry::write(&record));
        record
    }

    fn write_at(&mut self, stream: &str, event: NewEvent, created: u64) -> Arc<StoredEvent> {
        let position = self.all.len() as u64;
        let data = self.streams.entry(stream.to_owned()).or_default();
        let record = Arc::new(StoredEvent {
            id: event.id,
            stream: stream.to_owned(),
            revision: data.next_revision(),
            event_type: event.event_type,
            content_type: event.content_type,
            data: event.data,
            metadata: event.metadata,
            position,
            created_ticks: created,
        });
        data.soft_deleted = false;
        data.events.push(Arc::clone(&record));
        self.all.push(Arc::clone(&record));
        record
    }

    /// Hides every revision below `before` (the `$tb` stream metadata).
    pub fn truncate(&mut self, stream: &str, before: u64) {
        if let Some(data) = self.streams.get_mut(stream) {
            data.truncate_before = data.truncate_before.max(before);
        }
        self.record(|| Entry::Truncate {
            stream: stream.to_owned(),
            before,
        });
    }

    /// Keeps only the last `count` events visible (`$maxCount`).
    pub fn keep_last(&mut self, stream: &str, count: u64) {
        let next = self.stream(stream).map_or(0, StreamData::next_revision);
        self.truncate(stream, next.saturating_sub(count));
    }

    /// A soft delete: the stream reads as absent until written again, and
    /// revisions continue where they were.
    pub fn delete(&mut self, stream: &str, expected: Expected) -> Result<(), AppendError> {
        self.check_expected(stream, expected)?;
        if let Some(data) = self.streams.get_mut(stream) {
            data.truncate_before = data.next_revision();
            data.soft_deleted = true;
        }
        self.record(|| Entry::Delete {
            stream: stream.to_owned(),
        });
        Ok(())
    }

    /// A hard delete: the stream can never be written or read again.
    pub fn tombstone(&mut self, stream: &str, expected: Expected) -> Result<(), AppendError> {
        self.check_expected(stream, expected)?;
        let data = self.streams.entry(stream.to_owned()).or_default();
        data.truncate_before = data.next_revision();
        data.tombstoned = true;
        self.record(|| Entry::Tombstone {
            stream: stream.to_owned(),
        });
        Ok(())
    }

    /// Removes a stream the emulator owns (a deleted group's checkpoints
    /// and parked messages). Its events stay in `$all`.
    pub fn remove(&mut self, stream: &str) {
        self.streams.remove(stream);
        self.record(|| Entry::Remove {
            stream: stream.to_owned(),
        });
    }

    /// Resolves a link event to the event it points at, if it still exists.
    pub fn resolve(&self, link: &StoredEvent) -> Option<&Arc<StoredEvent>> {
        let (revision, stream) = link.link_target()?;
        self.stream(stream)?.get(revision)
    }

    fn check_expected(&self, stream: &str, expected: Expected) -> Result<(), AppendError> {
        let data = self.streams.get(stream);
        if data.is_some_and(StreamData::is_tombstoned) {
            return Err(AppendError::StreamDeleted);
        }

        let current = data
            .filter(|d| !d.soft_deleted)
            .and_then(StreamData::last_revision);
        let ok = match expected {
            Expected::Any => true,
            Expected::NoStream => current.is_none(),
            Expected::StreamExists => current.is_some(),
            Expected::Revision(r) => current == Some(r),
        };
        if ok {
            Ok(())
        } else {
            Err(AppendError::WrongExpectedVersion { current, expected })
        }
    }

    /// `$ce-<category>` and `$et-<type>` links for freshly written events.
    fn write_projection_links(&mut self, written: &[Arc<StoredEvent>], touched: &mut Vec<String>) {
        for event in written {
            if let Some((category, _)) = event.stream.split_once('-') {
                let stream = format!("$ce-{category}");
                self.write(&stream, NewEvent::link_to(event, Vec::new()));
                push_unique(touched, stream);
            }
            if !event.event_type.starts_with(SYSTEM_PREFIX) {
                let stream = format!("$et-{}", event.event_type);
                self.write(&stream, NewEvent::link_to(event, Vec::new()));
                push_unique(touched, stream);
            }
        }
    }
}

fn push_unique(names: &mut Vec<String>, name: String) {
    if !names.contains(&name) {
        names.push(name);
    }
}
