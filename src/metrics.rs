//! What the relay counts, and the Prometheus recorder that exposes it.
//!
//! The relay records through the `metrics` facade; [`install`] puts a
//! Prometheus recorder behind it once per process, and the HTTP endpoint in
//! [`crate::health`] renders it on `/metrics`. Until [`install`] runs (as in
//! tests that run a relay in-process), every recording is a no-op.
//!
//! Metric names are constants here so that code, tests and the README agree
//! on them. The recorder is process-wide, like the relay: two relays in one
//! process (only tests do that) would add into the same series.
//!
//! The lag gauge compares the subscribed stream's last revision with the
//! highest position this relay has settled (or the group's checkpoint, if
//! that is further). Events redelivered out of order can make it read a
//! little low until they are settled.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram};
use metrics::{gauge, histogram, Unit};
use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

use crate::config::KurrentDbSettings;
use crate::source::{self, SourceError};

/// Events delivered by the consumer group, redeliveries included.
pub const RECEIVED: &str = "outbox_relay_events_received_total";
/// Orders inserted or updated in `order_fulfillment`.
pub const WRITTEN: &str = "outbox_relay_events_written_total";
/// Orders whose row already came from this event or a later one.
pub const DUPLICATE: &str = "outbox_relay_events_duplicate_total";
/// Events given up: recorded in `dead_letters`, nacked Skip or Park.
pub const POISON: &str = "outbox_relay_events_poison_total";
/// Events handed back to the server with a Nack Retry.
pub const RETRIED: &str = "outbox_relay_events_retried_total";
/// Events acked without a write: other types, dangling links.
pub const IGNORED: &str = "outbox_relay_events_ignored_total";
/// Orders per write transaction.
pub const BATCH_SIZE: &str = "outbox_relay_batch_size";
/// Time to commit one batch, in-place retries included.
pub const WRITE_SECONDS: &str = "outbox_relay_write_duration_seconds";
/// Events received and not yet acked or nacked.
pub const IN_FLIGHT: &str = "outbox_relay_events_in_flight";
/// 1 for the current subscription state, 0 for the others.
pub const STATE: &str = "outbox_relay_subscription_state";
/// Events in the subscribed stream after the last one settled.
pub const LAG: &str = "outbox_relay_lag_events";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Where the relay stands with its consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    /// Preparing PostgreSQL or joining the group for the first time.
    Starting,
    /// A member of the group, receiving events.
    Subscribed,
    /// The subscription broke or could not be made; retrying.
    Reconnecting,
    /// Out of the group on purpose while PostgreSQL is unreachable.
    StoreUnavailable,
    /// Stopped on request.
    Stopped,
}

impl SubscriptionState {
    const ALL: [SubscriptionState; 5] = [
        SubscriptionState::Starting,
        SubscriptionState::Subscribed,
        SubscriptionState::Reconnecting,
        SubscriptionState::StoreUnavailable,
        SubscriptionState::Stopped,
    ];

    /// The label value used on [`STATE`].
    pub fn label(self) -> &'static str {
        match self {
            SubscriptionState::Starting => "starting",
            SubscriptionState::Subscribed => "subscribed",
            SubscriptionState::Reconnecting => "reconnecting",
            SubscriptionState::StoreUnavailable => "store_unavailable",
            SubscriptionState::Stopped => "stopped",
        }
    }
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once; later calls return the same
/// handle) and describes every metric.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(WRITE_SECONDS.into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe();
    set_state(SubscriptionState::Starting);
    gauge!(IN_FLIGHT).set(0.0);
    for name in [RECEIVED, WRITTEN, DUPLICATE, POISON, RETRIED, IGNORED] {
        counter!(name).absolute(0);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    describe_counter!(RECEIVED, "Events delivered by the consumer group");
    describe_counter!(WRITTEN, "Orders inserted or updated");
    describe_counter!(DUPLICATE, "Orders already written by this or a later event");
    describe_counter!(POISON, "Events given up (dead_letters, then Skip or Park)");
    describe_counter!(RETRIED, "Events handed back with a Nack Retry");
    describe_counter!(IGNORED, "Events acked without a write");
    describe_histogram!(BATCH_SIZE, "Orders per write transaction");
    describe_histogram!(WRITE_SECONDS, Unit::Seconds, "Time to commit a batch");
    describe_gauge!(IN_FLIGHT, "Events received and not yet acked or nacked");
    describe_gauge!(STATE, "1 for the current subscription state");
    describe_gauge!(LAG, "Events in the stream after the last one settled");
}

/// Records the new subscription state.
pub fn set_state(state: SubscriptionState) {
    for s in SubscriptionState::ALL {
        let value = if s == state { 1.0 } else { 0.0 };
        gauge!(STATE, "state" => s.label()).set(value);
    }
}

/// One event arrived from the group.
pub fn event_received() {
    counter!(RECEIVED).increment(1);
    gauge!(IN_FLIGHT).increment(1.0);
}

/// `count` events were acked or nacked.
pub fn events_settled(count: usize) {
    gauge!(IN_FLIGHT).decrement(count as f64);
}

/// The session ended: whatever was in flight will be redelivered.
pub fn session_ended() {
    gauge!(IN_FLIGHT).set(0.0);
}

/// A batch of orders was committed.
pub fn batch_written(written: usize, duplicate: usize, took: Duration) {
    counter!(WRITTEN).increment(written as u64);
    counter!(DUPLICATE).increment(duplicate as u64);
    histogram!(BATCH_SIZE).record((written + duplicate) as f64);
    histogram!(WRITE_SECONDS).record(took.as_secs_f64());
}

/// Events were acked without a write.
pub fn events_ignored(count: usize) {
    counter!(IGNORED).increment(count as u64);
}

/// Events were given up.
pub fn events_poisoned(count: usize) {
    counter!(POISON).increment(count as u64);
}

/// Events were handed back for retry.
pub fn events_retried(count: usize) {
    counter!(RETRIED).increment(count as u64);
}

/// One past the highest position in the subscribed stream settled so far.
static SETTLED_UP_TO: AtomicU64 = AtomicU64::new(0);

/// Events up to `position` (a revision in the subscribed stream) have been
/// handled.
pub fn settled_through(position: u64) {
    SETTLED_UP_TO.fetch_max(position.saturating_add(1), Ordering::Relaxed);
}

/// Sets the lag from the stream's length (last revision + 1) and the
/// group's checkpoint, whichever of it and the relay's own progress is
/// further.
pub fn record_lag(stream_len: u64, checkpoint: Option<u64>) {
    let checkpointed = checkpoint.map_or(0, |c| c.saturating_add(1));
    let done = SETTLED_UP_TO.load(Ordering::Relaxed).max(checkpointed);
    gauge!(LAG).set(stream_len.saturating_sub(done) as f64);
}

/// Measures the lag every `every` while the relay is subscribed, until the
/// process ends. Failures are logged at debug and leave the gauge as it
/// was; while the relay is not subscribed nothing is measured, because the
/// client would log every failed attempt to reach KurrentDB at error level
/// and the relay already reports the outage.
pub async fn poll_lag(settings: KurrentDbSettings, every: Duration) {
    let mut client = None;
    let mut ticks = tokio::time::interval(every);
    loop {
        ticks.tick().await;
        if !crate::health::is_subscribed() {
            continue;
        }
        if client.is_none() {
            client = source::connect(&settings).ok();
        }
        let Some(c) = &client else { continue };
        match measure_lag(c, &settings).await {
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot measure lag");
                // A client whose first call failed stays broken.
                client = None;
            }
        }
    }
}

async fn measure_lag(
    client: &kurrentdb::Client,
    settings: &KurrentDbSettings,
) -> Result<(), SourceError> {
    let length = source::stream_length(client, &settings.stream).await?;
    let checkpoint = match source::group_info(client, settings).await {
        Ok(info) => info.stats.last_checkpointed_event_revision,
        Err(SourceError::GroupMissing { .. }) => None,
        Err(e) => return Err(e),
    };
    record_lag(length, checkpoint);
    Ok(())
}
