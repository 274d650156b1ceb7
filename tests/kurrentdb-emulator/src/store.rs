//! The whole in-memory database behind one mutex: the event log and the
//! persistent subscription groups that read it.
//!
//! One lock keeps appends, deliveries and acks in a single order, like the
//! server's single writer. Every operation holds it briefly: deliveries
//! are queued on unbounded channels whose depth is bounded by each
//! consumer's buffer size. The only I/O under it is the journal of a
//! store opened with [`Store::open`], flushed when the lock is released.

use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::EmulatorError;
use crate::events::{NewEvent, StoredEvent};
use crate::journal::Journal;
use crate::log::{AppendError, Appended, Expected, Log};
use crate::persistent::registry::Groups;
use crate::persistent::stats::GroupStats;

/// The state under the store's lock.
#[derive(Default)]
pub(crate) struct State {
    pub log: Log,
    pub groups: Groups,
    next_consumer: u64,
}

impl State {
    /// Appends and lets the groups reading the grown streams push.
    pub fn append(
        &mut self,
        stream: &str,
        expected: Expected,
        events: Vec<NewEvent>,
    ) -> Result<Appended, AppendError> {
        let (appended, touched) = self.log.append(stream, expected, events)?;
        self.groups.notify(&mut self.log, &touched);
        Ok(appended)
    }

    /// A process-unique consumer id.
    pub fn next_consumer_id(&mut self) -> u64 {
        self.next_consumer += 1;
        self.next_consumer
    }
}

/// The in-memory database. Cloning gives another handle to the same data,
/// so a test can keep one while a [`crate::Server`] serves another.
#[derive(Clone, Default)]
pub struct Store {
    state: Arc<Mutex<State>>,
}

impl Store {
    /// An empty database.
    pub fn new() -> Store {
        Store::default()
    }

    /// A database kept in `dir` (created if needed): what was written
    /// there before is replayed, groups included, and every change is
    /// appended to it. See the `journal` module for the format.
    pub fn open(dir: &Path) -> Result<Store, EmulatorError> {
        let (journal, entries) = Journal::open(dir).map_err(|source| EmulatorError::DataDir {
            path: dir.to_owned(),
            source,
        })?;
        let store = Store::new();
        {
            let mut state = store.lock();
            let state = &mut *state;
            state.log.attach(journal, entries);
            state.groups.load_config(&state.log);
        }
        Ok(store)
    }

    /// Whether nothing was ever written (a fresh data directory).
    pub fn is_empty(&self) -> bool {
        self.lock().log.all().is_empty()
    }

    /// Appends `events` to `stream` whatever its revision, and writes the
    /// `$ce-` / `$et-` links. Returns the stream's last revision.
    pub fn append(&self, stream: &str, events: Vec<NewEvent>) -> Result<u64, EmulatorError> {
        if stream.is_empty() || stream == "$all" {
            return Err(EmulatorError::InvalidStream(stream.to_owned()));
        }
        let mut state = self.lock();
        match state.append(stream, Expected::Any, events) {
            Ok(appended) => Ok(appended.revision.unwrap_or(0)),
            Err(AppendError::StreamDeleted) => Err(EmulatorError::StreamDeleted {
                stream: stream.to_owned(),
            }),
            Err(AppendError::WrongExpectedVersion { current, .. }) => {
                Err(EmulatorError::WrongExpectedVersion {
                    stream: stream.to_owned(),
                    current,
                })
            }
        }
    }

    /// Appends every stream of a seed file, in order; see [`crate::seed`].
    /// Returns the number of events appended.
    pub fn seed_file(&self, path: &Path) -> Result<usize, EmulatorError> {
        crate::seed::seed_file(self, path)
    }

    /// The visible events of a stream, oldest first (empty if none).
    pub fn read_stream(&self, stream: &str) -> Vec<StoredEvent> {
        let state = self.lock();
        state.log.stream(stream).map_or_else(Vec::new, |data| {
            data.visible()
                .iter()
                .map(|e| StoredEvent::clone(e))
                .collect()
        })
    }

    /// Live statistics of a group, None if it does not exist.
    pub fn group_stats(&self, stream: &str, group: &str) -> Option<GroupStats> {
        let state = self.lock();
        state.groups.stats(&state.log, stream, group)
    }

    /// The lock. A panic while holding it leaves consistent-enough data
    /// for a test double, so poisoning is ignored.
    pub(crate) fn lock(&self) -> StateGuard<'_> {
        StateGuard(self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The locked state; releasing it flushes the journal, so whatever one
/// operation wrote is on disk before the next one starts.
pub(crate) struct StateGuard<'a>(MutexGuard<'a, State>);

impl Deref for StateGuard<'_> {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

impl DerefMut for StateGuard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.0
    }
}

impl Drop for StateGuard<'_> {
    fn drop(&mut self) {
        self.0.log.flush();
    }
}
