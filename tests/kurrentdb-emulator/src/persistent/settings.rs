//! Group settings: the server's defaults, how the wire form maps onto
//! them, and the checks the server makes before accepting a group.

use std::time::Duration;

use crate::proto::persistent as pb;

/// Where a group without a checkpoint starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The first event of the source.
    Start,
    /// Whatever is written after the group is loaded.
    End,
    /// A stream revision, or a global position for `$all` groups.
    At(u64),
}

/// How a group spreads events over its consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The next consumer with a free slot, in turn.
    RoundRobin,
    /// The first consumer until it is full, then the next.
    DispatchToSingle,
    /// Events of one source stream go to one consumer.
    Pinned,
}

impl Strategy {
    /// The server's name for it, as GetInfo reports it.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "RoundRobin",
            Strategy::DispatchToSingle => "DispatchToSingle",
            Strategy::Pinned => "Pinned",
        }
    }

    fn parse(name: &str) -> Option<Strategy> {
        match name {
            "RoundRobin" => Some(Strategy::RoundRobin),
            "DispatchToSingle" => Some(Strategy::DispatchToSingle),
            // The correlation flavour pins by $correlationId upstream;
            // here it pins by stream like Pinned.
            "Pinned" | "PinnedByCorrelation" => Some(Strategy::Pinned),
            _ => None,
        }
    }
}

/// A group's settings, as the server keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Deliver the targets of link events (with the link alongside).
    pub resolve_links: bool,
    /// Where to begin when there is no checkpoint.
    pub start_from: StartFrom,
    /// Reported only.
    pub extra_statistics: bool,
    /// How long a consumer may hold an event before it is retried.
    pub message_timeout: Duration,
    /// Deliveries beyond the first before an event is parked.
    pub max_retry_count: i32,
    /// Reported and validated only: the emulator reads from memory.
    pub live_buffer_size: i32,
    /// Reported and validated only.
    pub read_batch_size: i32,
    /// Reported and validated only.
    pub history_buffer_size: i32,
    /// Minimum time between two checkpoints (unless max count is hit).
    pub checkpoint_after: Duration,
    /// Events to settle before a timed checkpoint is written.
    pub min_checkpoint_count: i32,
    /// Events after which a checkpoint is written at once.
    pub max_checkpoint_count: i32,
    /// 0 means unlimited.
    pub max_subscriber_count: i32,
    /// The consumer strategy.
    pub strategy: Strategy,
}

impl Default for Settings {
    /// The defaults a gRPC client gets.
    fn default() -> Settings {
        Settings {
            resolve_links: false,
            start_from: StartFrom::End,
            extra_statistics: false,
            message_timeout: Duration::from_secs(30),
            max_retry_count: 10,
            live_buffer_size: 500,
            read_batch_size: 20,
            history_buffer_size: 500,
            checkpoint_after: Duration::from_secs(2),
            min_checkpoint_count: 10,
            max_checkpoint_count: 1000,
            max_subscriber_count: 0,
            strategy: Strategy::RoundRobin,
        }
    }
}

impl Settings {
    /// Reads the wire settings. The error is the reason text the server
    /// sends in its `persistent-subscription-failed` answer.
    pub fn from_wire(wire: &pb::Settings, start_from: StartFrom) -> Result<Settings, String> {
        let strategy_name = if wire.consumer_strategy.is_empty() {
            named_strategy(wire.named_consumer_strategy).to_owned()
        } else {
            wire.consumer_strategy.clone()
        };
        let strategy = Strategy::parse(&strategy_name)
            .ok_or_else(|| format!("Consumer strategy {strategy_name} does not exist."))?;

        let settings = Settings {
            resolve_links: wire.resolve_links,
            start_from,
            extra_statistics: wire.extra_statistics,
            message_timeout: message_timeout(wire),
            max_retry_count: wire.max_retry_count,
            live_buffer_size: wire.live_buffer_size,
            read_batch_size: wire.read_batch_size,
            history_buffer_size: wire.history_buffer_size,
            checkpoint_after: checkpoint_after(wire),
            min_checkpoint_count: wire.min_checkpoint_count,
            max_checkpoint_count: wire.max_checkpoint_count,
            max_subscriber_count: wire.max_subscriber_count,
            strategy,
        };
        settings.validate()?;
        Ok(settings)
    }

    /// The checks the server makes when it builds the group.
    pub fn validate(&self) -> Result<(), String> {
        let counts = [
            self.max_retry_count,
            self.live_buffer_size,
            self.read_batch_size,
            self.history_buffer_size,
        ];
        if counts.iter().any(|&count| count < 0) {
            // The settings builder's argument check, again verbatim.
            return Err("count should be non negative. (Parameter 'count')".to_owned());
        }
        if self.read_batch_size >= self.history_buffer_size {
            // The server reports the .NET exception's message verbatim.
            return Err("Specified argument was out of the range of valid values. \
                 (Parameter 'ReadBatchSize may not be greater than or \
                 equal to BufferSize')"
                .to_owned());
        }
        Ok(())
    }
}

fn named_strategy(value: i32) -> &'static str {
    match pb::ConsumerStrategy::try_from(value) {
        Ok(pb::ConsumerStrategy::DispatchToSingle) => "DispatchToSingle",
        Ok(pb::ConsumerStrategy::Pinned) => "Pinned",
        Ok(pb::ConsumerStrategy::RoundRobin) => "RoundRobin",
        Err(_) => "Unknown",
    }
}

/// .NET ticks are 100 ns.
fn ticks(value: i64) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(0) * 100)
}

fn millis(value: i32) -> Duration {
    Duration::from_millis(u64::try_from(value).unwrap_or(0))
}

fn message_timeout(wire: &pb::Settings) -> Duration {
    use pb::settings::MessageTimeout;
    match wire.message_timeout {
        Some(MessageTimeout::MessageTimeoutMs(ms)) => millis(ms),
        Some(MessageTimeout::MessageTimeoutTicks(t)) => ticks(t),
        None => Duration::ZERO,
    }
}

fn checkpoint_after(wire: &pb::Settings) -> Duration {
    use pb::settings::CheckpointAfter;
    match wire.checkpoint_after {
        Some(CheckpointAfter::CheckpointAfterMs(ms)) => millis(ms),
        Some(CheckpointAfter::CheckpointAfterTicks(t)) => ticks(t),
        None => Duration::ZERO,
    }
}

/// One group as kept in the `$persistentSubscriptionConfig` stream, with
/// the field names of the server's configuration entries.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigEntry {
    /// The stream read, or `$all`.
    pub stream: String,
    /// The group name.
    pub group: String,
    /// A `$all` group's filter.
    pub filter: Option<super::filter::FilterConfig>,
    /// See [`Settings::resolve_links`].
    pub resolve_link_tos: bool,
    /// See [`Settings::extra_statistics`].
    pub extra_statistics: bool,
    /// Milliseconds.
    pub message_timeout: u64,
    /// `-1` for the end, else a revision; `C:x/P:x` for `$all`.
    pub start_position: String,
    /// See [`Settings::live_buffer_size`].
    pub live_buffer_size: i32,
    /// See [`Settings::history_buffer_size`].
    pub history_buffer_size: i32,
    /// See [`Settings::max_retry_count`].
    pub max_retry_count: i32,
    /// See [`Settings::read_batch_size`].
    pub read_batch_size: i32,
    /// Milliseconds.
    pub check_point_after: u64,
    /// See [`Settings::min_checkpoint_count`].
    pub min_check_point_count: i32,
    /// See [`Settings::max_checkpoint_count`].
    pub max_check_point_count: i32,
    /// See [`Settings::max_subscriber_count`].
    pub max_subscriber_count: i32,
    /// The strategy's name.
    pub named_consumer_strategy: String,
}

impl ConfigEntry {
    /// The entry of a group.
    pub fn new(
        stream: &str,
        group: &str,
        settings: &Settings,
        filter: Option<super::filter::FilterConfig>,
    ) -> ConfigEntry {
        let all = stream == super::group::ALL_STREAM;
        let start = match (settings.start_from, all) {
            (StartFrom::End, false) => "-1".to_owned(),
            (StartFrom::End, true) => "C:-1/P:-1".to_owned(),
            (StartFrom::Start, false) => "0".to_owned(),
            (StartFrom::Start, true) => "C:0/P:0".to_owned(),
            (StartFrom::At(at), false) => at.to_string(),
            (StartFrom::At(at), true) => format!("C:{at}/P:{at}"),
        };
        ConfigEntry {
            stream: stream.to_owned(),
            group: group.to_owned(),
            filter,
            resolve_link_tos: settings.resolve_links,
            extra_statistics: settings.extra_statistics,
            message_timeout: settings.message_timeout.as_millis() as u64,
            start_position: start,
            live_buffer_size: settings.live_buffer_size,
            history_buffer_size: settings.history_buffer_size,
            max_retry_count: settings.max_retry_count,
            read_batch_size: settings.read_batch_size,
            check_point_after: settings.checkpoint_after.as_millis() as u64,
            min_check_point_count: settings.min_checkpoint_count,
            max_check_point_count: settings.max_checkpoint_count,
            max_subscriber_count: settings.max_subscriber_count,
            named_consumer_strategy: settings.strategy.name().to_owned(),
        }
    }

    /// The settings back; None if the entry does not parse.
    pub fn settings(&self) -> Option<Settings> {
        let start = self.start_position.as_str();
        let commit = start
            .strip_prefix("C:")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or(start);
        let start_from = match commit.parse::<i64>().ok()? {
            -1 => StartFrom::End,
            at => StartFrom::At(u64::try_from(at).ok()?),
        };
        Some(Settings {
            resolve_links: self.resolve_link_tos,
            start_from,
            extra_statistics: self.extra_statistics,
            message_timeout: Duration::from_millis(self.message_timeout),
            max_retry_count: self.max_retry_count,
            live_buffer_size: self.live_buffer_size,
            read_batch_size: self.read_batch_size,
            history_buffer_size: self.history_buffer_size,
            checkpoint_after: Duration::from_millis(self.check_point_after),
            min_checkpoint_count: self.min_check_point_count,
            max_checkpoint_count: self.max_check_point_count,
            max_subscriber_count: self.max_subscriber_count,
            strategy: Strategy::parse(&self.named_consumer_strategy)?,
        })
    }
}
