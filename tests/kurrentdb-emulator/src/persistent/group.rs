//! One persistent subscription group: its consumers, the events they hold,
//! retries, parking and checkpoints.
//!
//! The real server reads its source in batches into history and live
//! buffers; the emulator's source is already in memory, so a group only
//! keeps a cursor (`next`) into it and indexes the log directly. The buffer
//! settings are therefore validated and reported, but barely shape
//! delivery (see the last rule). Everything else follows the server's
//! rules:
//!
//! - a consumer holds at most `buffer_size` unsettled events; retries are
//!   pushed before new events;
//! - a timeout or a Retry/Unknown nack puts the event back with
//!   `retry_count + 1`, or parks it once `retry_count` has reached the
//!   group's maximum ("Reached retry count of N");
//! - a consumer that leaves hands its events back with `retry_count + 1`
//!   and no maximum check;
//! - checkpoints record the position just before the lowest unsettled
//!   event, under the min/max count and checkpoint-after rules;
//! - an event whose id is already in flight is delivered but not
//!   tracked (its ack settles the first copy), as upstream;
//! - new events are taken from the source only while fewer than
//!   `live_buffer_size` messages wait for a retry, which bounds the
//!   messages a Pinned group holds for a full owner.
//!
//! Known gaps:
//! - replays run to completion synchronously, so "a replay is already
//!   running" never happens;
//! - GetInfo's status is "Live" or "Behind" only, and extra statistics
//!   (latency measurements) are always empty;
//! - checkpoints and parked links are written synchronously, so the
//!   server's "one checkpoint write in flight" and its park retries never
//!   come into play.
//!
//! `$all` groups: see `filter`; Pinned: see `pinned`.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tonic::Status;
use uuid::Uuid;

use super::filter::{all_group_allows, Filter};
use super::pinned::{self, Buckets};
use super::settings::{Settings, StartFrom, Strategy};
use super::stats::{Counters, GroupStats, Outcome, Settlement};
use crate::encode;
use crate::events::{NewEvent, StoredEvent, BINARY_CONTENT_TYPE, LINK_TYPE};
use crate::log::Log;
use crate::proto::persistent as pb;

/// The event type of checkpoint records.
const CHECKPOINT_TYPE: &str = "$SubscriptionCheckpoint";

/// The checkpoint stream keeps only its latest records (`$maxCount`).
const CHECKPOINT_MAX_COUNT: u64 = 2;

/// The event type of stream metadata records.
const METADATA_TYPE: &str = "$metadata";

/// The stream name the server uses for `$all` groups.
pub const ALL_STREAM: &str = "$all";

/// Where a consumer's messages go: the response side of its Read call.
pub(crate) type Outbox = mpsc::UnboundedSender<Result<pb::ReadResp, Status>>;

/// Why a consumer could not join.
#[derive(Debug)]
pub(crate) struct GroupFull;

/// A consumer asking to join.
pub(crate) struct Joining {
    pub id: u64,
    pub connection_name: String,
    pub from: String,
    pub buffer_size: usize,
    pub uuid_as_string: bool,
    pub outbox: Outbox,
}

/// A connected consumer.
struct Consumer {
    id: u64,
    connection_name: String,
    from: String,
    buffer_size: usize,
    in_flight: usize,
    delivered: u64,
    /// `delivered` when GetInfo last measured the rate.
    measured: u64,
    uuid_as_string: bool,
    outbox: Outbox,
    /// Its Read call went away; reaped after the current push.
    gone: bool,
}

impl Consumer {
    fn has_room(&self) -> bool {
        !self.gone && self.in_flight < self.buffer_size
    }
}

/// What a delivery carries besides the source record.
#[derive(Debug, Clone)]
enum Target {
    /// The record is delivered as the event, without a link.
    Itself,
    /// The record is a link, delivered with the event it points at.
    Resolved(Arc<StoredEvent>),
    /// The record is a link whose target no longer exists.
    Missing,
}

/// An event on its way to (or held by) a consumer.
#[derive(Debug, Clone)]
struct Message {
    /// The record read from the source (or from the parked stream); its id
    /// is the one consumers ack.
    original: Arc<StoredEvent>,
    target: Target,
    /// Its index in the source; None for replayed parked events, which
    /// take no part in checkpoints.
    seq: Option<u64>,
    retry_count: i32,
}

impl Message {
    fn id(&self) -> Uuid {
        self.original.id
    }

    /// The event a parked link should point at.
    fn event(&self) -> Option<&Arc<StoredEvent>> {
        match &self.target {
            Target::Itself => Some(&self.original),
            Target::Resolved(event) => Some(event),
            Target::Missing => None,
        }
    }
}

/// An event a consumer holds.
struct InFlight {
    message: Message,
    consumer: u64,
    deadline: Instant,
    /// Its Pinned bucket (0 for other strategies).
    bucket: usize,
}

/// A group's source: one stream or the global log.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Stream(String),
    All,
}

/// One persistent subscription group.
pub(crate) struct Group {
    stream: String,
    name: String,
    source: Source,
    settings: Settings,
    /// A `$all` group's filter, applied on top of the default rule.
    filter: Option<Filter>,
    consumers: Vec<Consumer>,
    /// Pinned bucket ownership.
    buckets: Buckets,
    /// RoundRobin's next consumer index.
    next_consumer: usize,
    /// The next source index to read as a new event.
    next: u64,
    /// Where this load began reading.
    load_start: u64,
    /// The checkpoint loaded, if any: the floor below the first message.
    floor: Option<u64>,
    /// The last source index pushed as a new event.
    last_pushed: Option<u64>,
    in_flight: HashMap<Uuid, InFlight>,
    /// Ordered by source index, then by arrival.
    retries: BTreeMap<(u64, u64), Message>,
    retry_seq: u64,
    /// Source indexes still unsettled (in flight or waiting to retry).
    pending: BTreeMap<u64, u32>,
    last_checkpoint: Option<u64>,
    last_checkpoint_at: Option<Instant>,
    counters: Counters,
    /// When GetInfo last measured rates, and the total then.
    measured_at: Instant,
    measured_total: u64,
}

impl Group {
    /// A new group, loaded from its checkpoint if one exists.
    pub fn new(
        stream: &str,
        name: &str,
        settings: Settings,
        filter: Option<Filter>,
        log: &Log,
    ) -> Group {
        let source = if stream == ALL_STREAM {
            Source::All
        } else {
            Source::Stream(stream.to_owned())
        };
        let mut group = Group {
            stream: stream.to_owned(),
            name: name.to_owned(),
            source,
            settings,
            filter,
            consumers: Vec::new(),
            buckets: Buckets::default(),
            next_consumer: 0,
            next: 0,
            load_start: 0,
            floor: None,
            last_pushed: None,
            in_flight: HashMap::new(),
            retries: BTreeMap::new(),
            retry_seq: 0,
            pending: BTreeMap::new(),
            last_checkpoint: None,
            last_checkpoint_at: None,
            counters: Counters::default(),
            measured_at: Instant::now(),
            measured_total: 0,
        };
        group.load(log);
        group
    }

    /// The stream the group reads (`$all` for the global log).
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<stream>::<group>`, the server's subscription id.
    pub fn subscription_id(&self) -> String {
        format!("{}::{}", self.stream, self.name)
    }

    /// The stream checkpoints are written to.
    pub fn checkpoint_stream(&self) -> String {
        format!(
            "$persistentsubscription-{}-checkpoint",
            self.subscription_id()
        )
    }

    /// The stream parked events are linked from.
    pub fn parked_stream(&self) -> String {
        format!("$persistentsubscription-{}-parked", self.subscription_id())
    }

    /// Whether an append to `stream` may feed this group.
    pub fn reads(&self, stream: &str) -> bool {
        match &self.source {
            Source::All => true,
            Source::Stream(name) => name == stream,
        }
    }

    /// Replaces the settings; the caller drops consumers and reloads.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The `$all` filter, if any.
    pub fn filter(&self) -> Option<&Filter> {
        self.filter.as_ref()
    }

    /// Forgets all delivery state and starts again from the checkpoint,
    /// or from the configured start when there is none. Consumers must
    /// have been dropped first.
    pub fn load(&mut self, log: &Log) {
        self.in_flight.clear();
        self.retries.clear();
        self.pending.clear();
        self.last_checkpoint_at = None;

        let checkpoint = self.read_checkpoint(log);
        self.last_checkpoint = checkpoint;
        self.floor = checkpoint;
        self.last_pushed = checkpoint;
        self.next = match (checkpoint, self.settings.start_from) {
            (Some(at), _) => at + 1,
            (None, StartFrom::Start) => 0,
            (None, StartFrom::End) => self.source_len(log),
            (None, StartFrom::At(at)) => at,
        };
        self.load_start = self.next;
    }

    /// Adds a consumer, confirms it, and pushes what it can take.
    pub fn join(&mut self, log: &mut Log, joining: Joining) -> Result<(), GroupFull> {
        let max = self.settings.max_subscriber_count;
        if max > 0 && self.consumers.len() >= max as usize {
            return Err(GroupFull);
        }

        let confirmation = pb::ReadResp {
            content: Some(pb::read_resp::Content::SubscriptionConfirmation(
                pb::read_resp::SubscriptionConfirmation {
                    subscription_id: self.subscription_id(),
                },
            )),
        };
        // A closed outbox is reaped by the push below.
        let id = joining.id;
        let gone = joining.outbox.send(Ok(confirmation)).is_err();
        self.consumers.push(Consumer {
            id: joining.id,
            connection_name: joining.connection_name,
            from: joining.from,
            buffer_size: joining.buffer_size,
            in_flight: 0,
            delivered: 0,
            measured: 0,
            uuid_as_string: joining.uuid_as_string,
            outbox: joining.outbox,
            gone,
        });
        if self.settings.strategy == Strategy::Pinned {
            let ids = self.consumer_ids();
            self.buckets.join(id, &ids);
        }
        self.push(log, Instant::now());
        Ok(())
    }

    /// Removes a consumer whose call ended; its events go back to the
    /// others with `retry_count + 1`.
    pub fn leave(&mut self, log: &mut Log, consumer: u64) {
        let Some(index) = self.consumers.iter().position(|c| c.id == consumer) else {
            return;
        };
        self.consumers.remove(index);
        self.buckets.leave(consumer);
        self.requeue_held_by(&[consumer]);
        self.push(log, Instant::now());
    }

    /// Ends every consumer's call with `status` and takes their events
    /// back. Used before updates, deletes, restarts and shutdowns.
    pub fn drop_consumers(&mut self, status: &Status) {
        let ids: Vec<u64> = self.consumers.iter().map(|c| c.id).collect();
        for consumer in self.consumers.drain(..) {
            let _ = consumer.outbox.send(Err(status.clone()));
        }
        self.next_consumer = 0;
        self.buckets.clear();
        self.requeue_held_by(&ids);
    }

    /// Settles acknowledged ids.
    pub fn ack(&mut self, log: &mut Log, ids: &[Uuid]) {
        for &id in ids {
            self.counters.acked += 1;
            self.counters.settled.push(Settlement {
                event_id: id,
                outcome: Outcome::Ack,
            });
            if let Some(message) = self.settle(id) {
                self.release(&message);
            }
        }
        self.try_checkpoint(log, false, Instant::now());
        self.push(log, Instant::now());
    }

    /// Settles not-acknowledged ids as `action` says.
    pub fn nack(
        &mut self,
        log: &mut Log,
        ids: &[Uuid],
        action: pb::read_req::nack::Action,
        reason: &str,
    ) {
        use pb::read_req::nack::Action;
        let name = action_name(action);
        for &id in ids {
            *self.counters.nacked.entry(name.to_owned()).or_default() += 1;
            self.counters.settled.push(Settlement {
                event_id: id,
                outcome: Outcome::Nack {
                    action: name.to_owned(),
                    reason: reason.to_owned(),
                },
            });
            let Some(message) = self.settle(id) else {
                continue;
            };
            match action {
                Action::Retry | Action::Unknown => self.retry_or_park(log, message),
                Action::Park => {
                    let why = format!("Client explicitly NAK'ed message.\n{reason}");
                    self.park(log, &message, &why);
                }
                // Stop is a no-op upstream, so it ends like Skip.
                Action::Skip | Action::Stop => self.release(&message),
            }
        }
        self.try_checkpoint(log, false, Instant::now());
        self.push(log, Instant::now());
    }

    /// The 1 s timer: retry timed-out events, push, maybe checkpoint.
    pub fn tick(&mut self, log: &mut Log, now: Instant) {
        let mut expired: Vec<(Option<u64>, Uuid)> = self
            .in_flight
            .iter()
            .filter(|(_, held)| held.deadline <= now)
            .map(|(id, held)| (held.message.seq, *id))
            .collect();
        expired.sort_unstable();
        for (_, id) in expired {
            if let Some(message) = self.settle(id) {
                self.retry_or_park(log, message);
            }
        }
        self.push(log, now);
        self.try_checkpoint(log, true, now);
    }

    /// Called after the source grew.
    pub fn notify(&mut self, log: &mut Log) {
        self.push(log, Instant::now());
    }

    /// Puts parked events back for delivery with `retry_count` 0 and
    /// truncates the parked stream past them. `stop_at` is the parked
    /// stream revision to stop before.
    pub fn replay_parked(&mut self, log: &mut Log, stop_at: Option<u64>) {
        let parked = self.parked_stream();
        let Some(data) = log.stream(&parked) else {
            return;
        };
        let end = stop_at.unwrap_or(u64::MAX).min(data.next_revision());
        let mut replayed = Vec::new();
        for link in data.visible() {
            if link.revision >= end {
                break;
            }
            if let Some(event) = log.resolve(link) {
                replayed.push(Message {
                    original: Arc::clone(link),
                    target: Target::Resolved(Arc::clone(event)),
                    seq: None,
                    retry_count: 0,
                });
            }
        }
        for message in replayed {
            self.enqueue_retry(message);
        }
        write_metadata(log, &parked, serde_json::json!({ "$tb": end }));
        log.truncate(&parked, end);
        self.push(log, Instant::now());
    }

    /// Removes the group's own streams (on delete).
    pub fn remove_streams(&self, log: &mut Log) {
        log.remove(&self.checkpoint_stream());
        log.remove(&self.parked_stream());
    }

    /// A snapshot for tests.
    pub fn stats(&self, log: &Log) -> GroupStats {
        GroupStats {
            delivered: self.counters.delivered,
            acked: self.counters.acked,
            nacked: self.counters.nacked.clone(),
            parked: self.parked_count(log),
            in_flight: self.in_flight.len() as u64,
            connections: self.consumers.len(),
            last_checkpoint: self.last_checkpoint,
            settled: self.counters.settled.clone(),
        }
    }

    /// What GetInfo and List report. Rates are measured since the
    /// previous call, as upstream.
    pub fn info(&mut self, log: &Log) -> pb::SubscriptionInfo {
        let now = Instant::now();
        let seconds = now.duration_since(self.measured_at).as_secs_f64();
        let rate = |items: u64| {
            if seconds > 0.0 {
                (items as f64 / seconds) as i32
            } else {
                0
            }
        };
        let connections = self
            .consumers
            .iter_mut()
            .map(|c| {
                let recent = c.delivered - c.measured;
                c.measured = c.delivered;
                pb::subscription_info::ConnectionInfo {
                    from: c.from.clone(),
                    username: String::new(),
                    average_items_per_second: rate(recent),
                    total_items: c.delivered as i64,
                    count_since_last_measurement: recent as i64,
                    observed_measurements: Vec::new(),
                    available_slots: c.buffer_size.saturating_sub(c.in_flight) as i32,
                    in_flight_messages: c.in_flight as i32,
                    connection_name: c.connection_name.clone(),
                }
            })
            .collect();
        let total = self.counters.delivered;
        let recent = total - self.measured_total;
        self.measured_total = total;
        self.measured_at = now;

        let s = &self.settings;
        let len = self.source_len(log);
        let waiting = len.saturating_sub(self.next);
        let status = if waiting == 0 { "Live" } else { "Behind" };
        let in_flight: usize = self.consumers.iter().map(|c| c.in_flight).sum();
        pb::SubscriptionInfo {
            event_source: self.stream.clone(),
            group_name: self.name.clone(),
            status: status.to_owned(),
            connections,
            average_per_second: rate(recent),
            total_items: total as i64,
            count_since_last_measurement: recent as i64,
            last_checkpointed_event_position: self.position_text(self.last_checkpoint),
            last_known_event_position: self.position_text(len.checked_sub(1)),
            resolve_link_tos: s.resolve_links,
            start_from: self.start_from_text(),
            message_timeout_milliseconds: millis(s.message_timeout),
            extra_statistics: s.extra_statistics,
            max_retry_count: s.max_retry_count,
            live_buffer_size: s.live_buffer_size,
            buffer_size: s.history_buffer_size,
            read_batch_size: s.read_batch_size,
            check_point_after_milliseconds: millis(s.checkpoint_after),
            min_check_point_count: s.min_checkpoint_count,
            max_check_point_count: s.max_checkpoint_count,
            read_buffer_count: 0,
            live_buffer_count: waiting.min(s.live_buffer_size.max(0) as u64) as i64,
            retry_buffer_count: self.retries.len() as i32,
            total_in_flight_messages: in_flight as i32,
            outstanding_messages_count: self.in_flight.len() as i32,
            named_consumer_strategy: s.strategy.name().to_owned(),
            max_subscriber_count: s.max_subscriber_count,
            parked_message_count: self.parked_count(log) as i64,
        }
    }

    fn parked_count(&self, log: &Log) -> u64 {
        log.stream(&self.parked_stream())
            .map_or(0, |data| data.visible().len() as u64)
    }

    /// A revision, or `C:x/P:x` for `$all`; empty when unknown.
    fn position_text(&self, at: Option<u64>) -> String {
        match (at, &self.source) {
            (None, _) => String::new(),
            (Some(at), Source::Stream(_)) => at.to_string(),
            (Some(at), Source::All) => format!("C:{at}/P:{at}"),
        }
    }

    fn start_from_text(&self) -> String {
        let all = self.source == Source::All;
        match (self.settings.start_from, all) {
            (StartFrom::Start, false) => "0".to_owned(),
            (StartFrom::End, false) => "-1".to_owned(),
            (StartFrom::At(at), false) => at.to_string(),
            (StartFrom::Start, true) => "C:0/P:0".to_owned(),
            (StartFrom::End, true) => "C:-1/P:-1".to_owned(),
            (StartFrom::At(at), true) => format!("C:{at}/P:{at}"),
        }
    }

    fn source_len(&self, log: &Log) -> u64 {
        match &self.source {
            Source::All => log.all().len() as u64,
            Source::Stream(name) => log.stream(name).map_or(0, |d| d.next_revision()),
        }
    }

    fn source_get(&self, log: &Log, index: u64) -> Option<Arc<StoredEvent>> {
        let event = match &self.source {
            Source::All => log.all().get(usize::try_from(index).ok()?),
            Source::Stream(name) => log.stream(name)?.get(index),
        };
        event.cloned()
    }

    /// Pushes retries, then new events, while consumers have room.
    fn push(&mut self, log: &mut Log, now: Instant) {
        loop {
            if !self.consumers.is_empty() {
                self.push_retries(now);
                self.push_new(log, now);
            }
            if !self.reap_gone() {
                return;
            }
        }
    }

    fn push_retries(&mut self, now: Instant) {
        let pinned = self.settings.strategy == Strategy::Pinned;
        let mut after: Option<(u64, u64)> = None;
        loop {
            let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
            let Some((&key, message)) = self.retries.range((lower, Bound::Unbounded)).next() else {
                return;
            };
            after = Some(key);
            let bucket = self.bucket_of(message);
            let Some(index) = self.pick_consumer(bucket) else {
                if pinned && self.any_room() {
                    continue;
                }
                return;
            };
            if let Some(message) = self.retries.remove(&key) {
                if let Err(message) = self.deliver(index, message, now) {
                    self.retries.insert(key, message);
                }
            }
        }
    }

    fn push_new(&mut self, log: &Log, now: Instant) {
        let len = self.source_len(log);
        let bound = usize::try_from(self.settings.live_buffer_size).unwrap_or(0);
        while self.next < len && self.any_room() && self.retries.len() < bound.max(1) {
            let seq = self.next;
            self.next += 1;
            let Some(record) = self.source_get(log, seq) else {
                continue; // truncated away
            };
            if self.source == Source::All && !all_group_allows(self.filter.as_ref(), &record) {
                // Filtered out: it still counts as seen for checkpoints.
                self.last_pushed = Some(seq);
                continue;
            }
            let message = self.message_for(log, record, seq);
            self.last_pushed = Some(seq);
            *self.pending.entry(seq).or_default() += 1;

            match self.pick_consumer(self.bucket_of(&message)) {
                Some(index) => {
                    if let Err(message) = self.deliver(index, message, now) {
                        self.enqueue_retry(message);
                    }
                }
                // Only Pinned gets here with room elsewhere: the event
                // waits for its owner.
                None => self.enqueue_retry(message),
            }
        }
    }

    fn message_for(&self, log: &Log, record: Arc<StoredEvent>, seq: u64) -> Message {
        let target = if self.settings.resolve_links && record.is_link() {
            match log.resolve(&record) {
                Some(event) => Target::Resolved(Arc::clone(event)),
                None => Target::Missing,
            }
        } else {
            Target::Itself
        };
        Message {
            original: record,
            target,
            seq: Some(seq),
            retry_count: 0,
        }
    }

    fn any_room(&self) -> bool {
        self.consumers.iter().any(Consumer::has_room)
    }

    /// The Pinned bucket of a message's source stream (0 for other
    /// strategies, which do not need it). An unresolved link counts for
    /// the stream it points into.
    fn bucket_of(&self, message: &Message) -> usize {
        if self.settings.strategy != Strategy::Pinned {
            return 0;
        }
        let stream = match message.event() {
            Some(event) if !event.is_link() => event.stream.as_str(),
            _ => message
                .original
                .link_target()
                .map_or(message.original.stream.as_str(), |(_, s)| s),
        };
        pinned::bucket_of(stream)
    }

    fn consumer_ids(&self) -> Vec<u64> {
        self.consumers.iter().map(|c| c.id).collect()
    }

    fn pick_consumer(&mut self, bucket: usize) -> Option<usize> {
        let count = self.consumers.len();
        if count == 0 {
            return None;
        }
        match self.settings.strategy {
            Strategy::RoundRobin => {
                let start = self.next_consumer % count;
                let index = (0..count)
                    .map(|k| (start + k) % count)
                    .find(|&i| self.consumers[i].has_room())?;
                self.next_consumer = (index + 1) % count;
                Some(index)
            }
            Strategy::DispatchToSingle => self.consumers.iter().position(Consumer::has_room),
            Strategy::Pinned => {
                if !self.any_room() {
                    return None;
                }
                let ids = self.consumer_ids();
                let owner = self.buckets.owner(bucket, &ids)?;
                let index = self.consumers.iter().position(|c| c.id == owner)?;
                self.consumers[index].has_room().then_some(index)
            }
        }
    }

    /// Sends a message; gives it back if the consumer's call is gone.
    fn deliver(&mut self, index: usize, message: Message, now: Instant) -> Result<(), Message> {
        let bucket = self.bucket_of(&message);
        let consumer = &mut self.consumers[index];
        let response = read_event(&message, consumer.uuid_as_string);
        if consumer.outbox.send(Ok(response)).is_err() {
            consumer.gone = true;
            return Err(message);
        }
        consumer.delivered += 1;
        self.counters.delivered += 1;
        if self.in_flight.contains_key(&message.id()) {
            // Upstream sends it but tracks only the first copy.
            tracing::warn!(
                group = %self.subscription_id(),
                event_id = %message.id(),
                "duplicate event id in flight; not tracked"
            );
            self.release(&message);
            return Ok(());
        }
        consumer.in_flight += 1;
        let held = InFlight {
            consumer: consumer.id,
            deadline: now + self.settings.message_timeout,
            bucket,
            message,
        };
        if self.settings.strategy == Strategy::Pinned {
            self.buckets.sent(bucket);
        }
        self.in_flight.insert(held.message.id(), held);
        Ok(())
    }

    /// Removes consumers whose calls went away; true if any were.
    fn reap_gone(&mut self) -> bool {
        let gone: Vec<u64> = self
            .consumers
            .iter()
            .filter(|c| c.gone)
            .map(|c| c.id)
            .collect();
        if gone.is_empty() {
            return false;
        }
        self.consumers.retain(|c| !c.gone);
        for &id in &gone {
            self.buckets.leave(id);
        }
        self.requeue_held_by(&gone);
        true
    }

    fn requeue_held_by(&mut self, consumers: &[u64]) {
        let mut lost: Vec<(Option<u64>, Uuid)> = self
            .in_flight
            .iter()
            .filter(|(_, held)| consumers.contains(&held.consumer))
            .map(|(id, held)| (held.message.seq, *id))
            .collect();
        lost.sort_unstable();
        for (_, id) in lost {
            if let Some(held) = self.in_flight.remove(&id) {
                let mut message = held.message;
                message.retry_count += 1;
                self.enqueue_retry(message);
            }
        }
    }

    /// Takes an id out of flight; the message is still pending.
    fn settle(&mut self, id: Uuid) -> Option<Message> {
        let held = self.in_flight.remove(&id)?;
        if let Some(consumer) = self.consumers.iter_mut().find(|c| c.id == held.consumer) {
            consumer.in_flight = consumer.in_flight.saturating_sub(1);
        }
        self.buckets.settled(held.bucket, held.consumer);
        Some(held.message)
    }

    /// The message is done with: it no longer holds back checkpoints.
    fn release(&mut self, message: &Message) {
        let Some(seq) = message.seq else {
            return;
        };
        if let Some(count) = self.pending.get_mut(&seq) {
            *count -= 1;
            if *count == 0 {
                self.pending.remove(&seq);
            }
        }
    }

    fn enqueue_retry(&mut self, message: Message) {
        self.retry_seq += 1;
        let key = (message.seq.unwrap_or(0), self.retry_seq);
        self.retries.insert(key, message);
    }

    fn retry_or_park(&mut self, log: &mut Log, mut message: Message) {
        let max = self.settings.max_retry_count;
        if message.retry_count >= max {
            let reason = format!("Reached retry count of {max}");
            self.park(log, &message, &reason);
        } else {
            message.retry_count += 1;
            self.enqueue_retry(message);
        }
    }

    /// Writes a link to the parked stream and lets the message go.
    fn park(&mut self, log: &mut Log, message: &Message, reason: &str) {
        let data = match message.event() {
            Some(event) => format!("{}@{}", event.revision, event.stream),
            // An unresolved link parks its own data, as upstream does.
            None => String::from_utf8_lossy(&message.original.data).into_owned(),
        };
        let metadata = serde_json::json!({
            "added": chrono::Utc::now().to_rfc3339(),
            "reason": reason,
            "subscriptionEventNumber": message.original.revision,
        });
        let link = NewEvent {
            id: Uuid::new_v4(),
            event_type: LINK_TYPE.to_owned(),
            content_type: BINARY_CONTENT_TYPE.to_owned(),
            data: data.into_bytes(),
            metadata: metadata.to_string().into_bytes(),
        };
        log.write(&self.parked_stream(), link);
        tracing::debug!(
            group = %self.subscription_id(),
            event_id = %message.id(),
            reason,
            "parked"
        );
        self.release(message);
    }

    /// The position before the lowest unsettled event, or the last event
    /// pushed when nothing is unsettled.
    fn checkpoint_candidate(&self) -> Option<u64> {
        match self.pending.keys().next() {
            Some(&lowest) if lowest > self.load_start => Some(lowest - 1),
            Some(_) => self.floor,
            None => self.last_pushed,
        }
    }

    fn try_checkpoint(&mut self, log: &mut Log, timed: bool, now: Instant) {
        let Some(candidate) = self.checkpoint_candidate() else {
            return;
        };
        let base = match self.last_checkpoint {
            Some(at) => at as i64,
            None => self.load_start as i64 - 1,
        };
        let difference = candidate as i64 - base;
        let min = i64::from(self.settings.min_checkpoint_count);
        let max = i64::from(self.settings.max_checkpoint_count);

        // A zero checkpoint-after means "never on time" upstream.
        let after = self.settings.checkpoint_after;
        let waited = match self.last_checkpoint_at {
            _ if after == Duration::ZERO => false,
            None => true,
            Some(at) => now.duration_since(at) >= after,
        };
        if !waited && difference < max {
            return;
        }
        if (difference >= min && timed) || difference >= max {
            self.last_checkpoint_at = Some(now);
            self.last_checkpoint = Some(candidate);
            self.write_checkpoint(log, candidate);
        }
    }

    fn write_checkpoint(&self, log: &mut Log, at: u64) {
        let text = match self.source {
            Source::Stream(_) => at.to_string(),
            Source::All => format!("C:{at}/P:{at}"),
        };
        let stream = self.checkpoint_stream();
        if log.stream(&stream).is_none() {
            // The server sets the checkpoint stream's metadata first.
            write_metadata(log, &stream, serde_json::json!({ "$maxCount": 2 }));
        }
        let event = NewEvent::json(CHECKPOINT_TYPE, &serde_json::json!(text));
        log.write(&stream, event);
        log.keep_last(&stream, CHECKPOINT_MAX_COUNT);
        tracing::debug!(group = %self.subscription_id(), at, "checkpoint");
    }

    fn read_checkpoint(&self, log: &Log) -> Option<u64> {
        let stream = log.stream(&self.checkpoint_stream())?;
        let last = stream.visible().last()?;
        let text: String = serde_json::from_slice(&last.data).ok()?;
        match self.source {
            Source::Stream(_) => text.parse().ok(),
            Source::All => {
                let commit = text.strip_prefix("C:")?.split('/').next()?;
                commit.parse().ok()
            }
        }
    }
}

/// Writes a `$$<stream>` metadata record, as the server does for the
/// streams a group keeps.
fn write_metadata(log: &mut Log, stream: &str, metadata: serde_json::Value) {
    log.write(
        &format!("$${stream}"),
        NewEvent::json(METADATA_TYPE, &metadata),
    );
}

/// The lower-case action names the stats use.
fn action_name(action: pb::read_req::nack::Action) -> &'static str {
    use pb::read_req::nack::Action;
    match action {
        Action::Unknown => "unknown",
        Action::Park => "park",
        Action::Retry => "retry",
        Action::Skip => "skip",
        Action::Stop => "stop",
    }
}

fn millis(duration: Duration) -> i32 {
    i32::try_from(duration.as_millis()).unwrap_or(i32::MAX)
}

/// The ReadEvent message for a delivery, as the server shapes it: the
/// original's position on both records, retry_count always set.
fn read_event(message: &Message, uuid_as_string: bool) -> pb::ReadResp {
    use pb::read_resp::read_event::{Count, Position};
    let position = message.original.position;
    let record = |event: &StoredEvent| encode::recorded_event(event, position, uuid_as_string);
    let (event, link) = match &message.target {
        Target::Itself => (record(&message.original), Vec::new()),
        Target::Resolved(event) => (record(event), record(&message.original)),
        Target::Missing => (Vec::new(), record(&message.original)),
    };
    pb::ReadResp {
        content: Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent {
            event,
            link,
            position: Some(Position::CommitPosition(position)),
            count: Some(Count::RetryCount(message.retry_count)),
        })),
    }
}
