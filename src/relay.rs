//! The relay's lifecycle: start, subscribe, consume, reconnect, stop.
//!
//! [`run`] prepares PostgreSQL, then keeps one subscription to the consumer
//! group alive until it is told to stop. Each subscription is a *session*:
//! one task reads deliveries and sends acks and nacks (the client needs
//! exclusive access to the subscription for both), while writer tasks
//! (`relay.writers`) gather deliveries into batches and ask the
//! [`Handler`] for verdicts. While PostgreSQL is unreachable the relay
//! leaves the group, so the server holds the events without counting
//! retries against them, and joins again once PostgreSQL answers.
//! When a session ends for any reason other than a stop, the relay waits
//! with capped, jittered exponential backoff and starts a new one with a new
//! client.
//!
//! On a stop, the relay takes no more events, lets the writers finish the
//! batches they have, sends those verdicts, and leaves the group. Events the
//! server had already pushed but the relay had not read are redelivered to
//! another member (or to this relay after a restart).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::FutureExt;
use kurrentdb::{PersistentSubscription, PersistentSubscriptionEvent};
use tokio::sync::{mpsc, Mutex};
use tracing::{debug, error, info, warn};

use crate::config::{Masked, Settings};
use crate::handler::{Handler, Settled, Verdict};
use crate::health;
use crate::metrics::{self, SubscriptionState};
use crate::shutdown::Stop;
use crate::source::{self, Delivery, Nack, SourceError};
use crate::store::{Store, StoreError};

/// Why the relay stopped without being asked to.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// KurrentDB refused something retrying cannot fix.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// PostgreSQL could not be prepared.
    #[error("postgres: {0}")]
    Store(#[from] StoreError),
}

/// A subscription that lasted at least this long resets the backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// At start-up, a port that accepts TCP connections while the client's
/// connection keeps failing means the connection string does not match the
/// server (usually `tls=`); after this many such failures the relay stops.
const MISCONFIGURED_AFTER: u32 = 3;

/// How long to let queued acks reach the server before leaving the group.
/// The client offers no way to wait for its ack queue to drain, so this is
/// a pause, not a guarantee: an ack still queued after it is lost and its
/// event redelivered (harmlessly) later.
const ACK_FLUSH: Duration = Duration::from_millis(1_000);

/// Runs the relay until `stop` completes, then returns once in-flight events
/// are settled.
pub async fn run(
    settings: Settings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RelayError> {
    let mut stop = Stop::on(stop);
    let store = Store::from_settings(&settings.postgres)?;
    if prepare(&store, &settings, &mut stop).await? {
        let handler = Handler::new(store, &settings.kurrentdb.event_type, &settings.relay);
        consume_until_stopped(&settings, Arc::new(handler), &mut stop).await?;
    }
    info!("stopped");
    Ok(())
}

/// Keeps a session going until a stop, resubscribing after every drop.
async fn consume_until_stopped(
    settings: &Settings,
    handler: Arc<Handler>,
    stop: &mut Stop,
) -> Result<(), RelayError> {
    let started = Instant::now();
    let mut subscribed_once = false;
    let mut refused_while_open = 0;
    let mut delays = reconnect_backoff(settings);
    while !stop.is_requested() {
        let session_started = Instant::now();
        match session(settings, &handler, stop).await {
            Ok(End::Stopped) => break,
            Ok(End::Dropped(reason)) => {
                subscribed_once = true;
                warn!(%reason, "subscription dropped; resubscribing");
            }
            Ok(End::StoreUnavailable) => {
                subscribed_once = true;
                warn!("left the group while postgres is unavailable");
                let probe = reconnect_backoff(settings);
                if !handler.wait_for_store(stop, probe).await {
                    break;
                }
                delays = reconnect_backoff(settings);
                continue;
            }
            Err(e) if !e.is_retryable() => return Err(e.into()),
            Err(e) if !subscribed_once && past_startup(settings, started) => {
                return Err(unreachable_at_startup(settings, e).await.into());
            }
            Err(e) if !subscribed_once && e.is_connect_failure() => {
                refused_while_open += port_open(settings).await as u32;
                if refused_while_open >= MISCONFIGURED_AFTER {
                    return Err(misconfigured(settings, e).into());
                }
                warn!(error = %e, "cannot reach kurrentdb yet; retrying");
            }
            Err(e) => warn!(error = %e, "cannot subscribe yet; retrying"),
        }
        if session_started.elapsed() >= HEALTHY_SESSION {
            delays = reconnect_backoff(settings);
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.requested() => {}
        }
    }
    Ok(())
}

/// Applies migrations (when configured) and checks the target table,
/// waiting for PostgreSQL if it is not up yet. Returns false if a stop came
/// first.
async fn prepare(store: &Store, settings: &Settings, stop: &mut Stop) -> Result<bool, RelayError> {
    let mut delays = reconnect_backoff(settings);
    loop {
        match migrate_and_verify(store, settings).await {
            Ok(()) => {
                info!(postgres = %Masked(&settings.postgres.url), "schema ready");
                return Ok(true);
            }
            Err(e) if e.is_transient() => {
                warn!(error = %e, "postgres unavailable; waiting");
            }
            Err(e) => return Err(e.into()),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(1));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.requested() => return Ok(false),
        }
    }
}

async fn migrate_and_verify(store: &Store, settings: &Settings) -> Result<(), StoreError> {
    if settings.postgres.migrate {
        store.migrate().await?;
    }
    store.verify_schema().await
}

/// The error for a server whose port answers but whose gRPC does not.
fn misconfigured(settings: &Settings, last: SourceError) -> SourceError {
    SourceError::Unreachable(format!(
        "{} accepts connections but the client cannot talk to it \
         (check tls= and the credentials): {last}",
        Masked(&settings.kurrentdb.connection_string),
    ))
}

/// Whether KurrentDB's port accepts TCP connections.
async fn port_open(settings: &Settings) -> bool {
    let Some(host) = source::first_host(&settings.kurrentdb.connection_string) else {
        return false;
    };
    let probe = tokio::net::TcpStream::connect(host);
    let answer = tokio::time::timeout(Duration::from_secs(2), probe).await;
    answer.is_ok_and(|r| r.is_ok())
}

/// Whether the relay has tried to reach KurrentDB for longer than the
/// configured start-up time without ever subscribing.
fn past_startup(settings: &Settings, started: Instant) -> bool {
    let limit = settings.kurrentdb.startup_timeout_ms;
    limit > 0 && started.elapsed() >= Duration::from_millis(limit)
}

/// The error for a KurrentDB that never answered at start-up, with a hint
/// when the port accepts connections but the client still fails (most often
/// a `tls=` setting that does not match the server).
async fn unreachable_at_startup(settings: &Settings, last: SourceError) -> SourceError {
    let k = &settings.kurrentdb;
    let hint = match port_open(settings).await {
        true => "; the port accepts connections, so check tls= and the credentials",
        false => "",
    };
    SourceError::Unreachable(format!(
        "no answer from {} within kurrentdb.startup_timeout_ms ({} ms): {last}{hint}",
        Masked(&k.connection_string),
        k.startup_timeout_ms,
    ))
}

/// A schedule of waits: capped, jittered, exponential, endless.
pub type Backoff = backon::ExponentialBackoff;

fn reconnect_backoff(settings: &Settings) -> Backoff {
    let k = &settings.kurrentdb;
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(k.reconnect_initial_ms))
        .with_max_delay(Duration::from_millis(k.reconnect_max_ms))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How a session ended.
enum End {
    /// A stop was requested and in-flight events were settled.
    Stopped,
    /// The subscription broke; the reason is for the log.
    Dropped(String),
    /// PostgreSQL is unreachable; the relay left the group so that the
    /// server holds events (without counting retries) until it is back.
    StoreUnavailable,
}

impl End {
    /// Where the relay stands after a session ended this way.
    fn state(&self) -> SubscriptionState {
        match self {
            End::Stopped => SubscriptionState::Stopped,
            End::Dropped(_) => SubscriptionState::Reconnecting,
            End::StoreUnavailable => SubscriptionState::StoreUnavailable,
        }
    }
}

/// Connects, joins the group and consumes until the subscription ends.
async fn session(
    settings: &Settings,
    handler: &Arc<Handler>,
    stop: &mut Stop,
) -> Result<End, SourceError> {
    let k = &settings.kurrentdb;
    let client = source::connect(k)?;
    if k.create_group && source::ensure_group(&client, k).await? {
        info!(stream = %k.stream, group = %k.group, "consumer group created");
    }
    source::check_group(&client, k).await?;
    let subscription = source::subscribe(&client, k).await?;
    info!(
        stream = %k.stream,
        group = %k.group,
        kurrentdb = %Masked(&k.connection_string),
        buffer_size = k.buffer_size,
        "subscribed"
    );
    health::set_state(SubscriptionState::Subscribed);
    let end = consume(subscription, settings, handler, stop).await;
    health::set_state(end.state());
    metrics::session_ended();
    Ok(end)
}

/// The session's reading and settling loop.
async fn consume(
    mut subscription: PersistentSubscription,
    settings: &Settings,
    handler: &Arc<Handler>,
    stop: &mut Stop,
) -> End {
    let (work_tx, work_rx) = mpsc::channel(settings.kurrentdb.buffer_size);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let work_rx = Arc::new(Mutex::new(work_rx));
    let writers: Vec<_> = (0..settings.relay.writers)
        .map(|_| {
            tokio::spawn(write_batches(
                handler.clone(),
                work_rx.clone(),
                done_tx.clone(),
                settings.relay.batch_size,
                Duration::from_millis(settings.relay.linger_ms),
            ))
        })
        .collect();
    drop(done_tx);

    let end = loop {
        tokio::select! {
            biased;
            _ = stop.requested() => break End::Stopped,
            Some(settled) = done_rx.recv() => {
                if let Err(e) = settle(&mut subscription, settled).await {
                    break End::Dropped(e.to_string());
                }
                if handler.store_unavailable() {
                    break End::StoreUnavailable;
                }
            }
            next = next_delivery(&mut subscription) => match next {
                Ok(Some(delivery)) => {
                    if work_tx.send(delivery).await.is_err() {
                        break End::Dropped("writer stopped".into());
                    }
                }
                Ok(None) => {}
                Err(reason) => break End::Dropped(reason),
            },
        }
    };

    drop(work_tx);
    if matches!(end, End::Stopped | End::StoreUnavailable) {
        finish(&mut subscription, &mut done_rx, settings).await;
    }
    writers.iter().for_each(|w| w.abort());
    end
}

/// After a stop: waits for the writer's last verdicts (up to the shutdown
/// timeout) and sends them.
async fn finish(
    subscription: &mut PersistentSubscription,
    done_rx: &mut mpsc::UnboundedReceiver<Vec<Settled>>,
    settings: &Settings,
) {
    let deadline = Duration::from_millis(settings.relay.shutdown_timeout_ms);
    let drained = tokio::time::timeout(deadline, async {
        while let Some(settled) = done_rx.recv().await {
            if let Err(e) = settle(subscription, settled).await {
                warn!(error = %e, "could not send final acks");
                return;
            }
        }
    })
    .await;
    if drained.is_err() {
        warn!("shutdown timeout reached; unsettled events will be redelivered");
    }
    tokio::time::sleep(ACK_FLUSH).await;
    info!("left the consumer group");
}

/// Reads the next delivery. `Ok(None)` for messages that are not events.
///
/// The client panics when a server ends the stream without an error; that
/// is caught here and treated like any other dropped subscription.
async fn next_delivery(
    subscription: &mut PersistentSubscription,
) -> Result<Option<Delivery>, String> {
    let next = AssertUnwindSafe(subscription.next_subscription_event())
        .catch_unwind()
        .await;
    match next {
        Ok(Ok(PersistentSubscriptionEvent::EventAppeared { event, retry_count })) => {
            metrics::event_received();
            let delivery = Delivery::from_resolved(&event, retry_count);
            debug!(
                event_id = %delivery.event_id,
                stream = %delivery.stream,
                position = delivery.position,
                retry_count,
                "event received"
            );
            Ok(Some(delivery))
        }
        Ok(Ok(PersistentSubscriptionEvent::Confirmed(id))) => {
            debug!(subscription_id = %id, "subscription confirmed");
            Ok(None)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the client panicked reading the subscription".into()),
    }
}

/// Sends verdicts: all acks in one message, nacks grouped by action and
/// reason.
async fn settle(
    subscription: &mut PersistentSubscription,
    settled: Vec<Settled>,
) -> kurrentdb::Result<()> {
    metrics::events_settled(settled.len());
    let mut acks = Vec::new();
    let mut nacks: Vec<(Nack, String, Vec<uuid::Uuid>)> = Vec::new();
    for s in settled {
        match s.verdict {
            Verdict::Ack => acks.push(s.ack_id),
            Verdict::Nack(action, reason) => {
                match nacks
                    .iter_mut()
                    .find(|(a, r, _)| *a == action && *r == reason)
                {
                    Some((_, _, ids)) => ids.push(s.ack_id),
                    None => nacks.push((action, reason, vec![s.ack_id])),
                }
            }
        }
    }
    if !acks.is_empty() {
        subscription.ack_ids(acks).await?;
    }
    for (action, reason, ids) in nacks {
        subscription.nack_ids(ids, action.action(), reason).await?;
    }
    Ok(())
}

/// Handles a batch; if the handler panics, every event of the batch goes
/// back to the server for retry instead of being left unanswered.
async fn handle_guarded(handler: &Handler, batch: Vec<Delivery>) -> Vec<Settled> {
    let ids: Vec<_> = batch.iter().map(|d| d.ack_id).collect();
    let handled = AssertUnwindSafe(handler.handle(batch)).catch_unwind().await;
    handled.unwrap_or_else(|_| {
        error!(
            events = ids.len(),
            "handler panicked; handing the batch back"
        );
        let retry = Verdict::Nack(Nack::Retry, "handler panicked".into());
        ids.into_iter()
            .map(|ack_id| Settled {
                ack_id,
                verdict: retry.clone(),
            })
            .collect()
    })
}

/// A writer: gathers deliveries into batches of up to `batch_size`,
/// waiting at most `linger` for a batch to fill, and returns their
/// verdicts. Several writers share the work queue, so one gathers the next
/// batch while another waits for PostgreSQL.
async fn write_batches(
    handler: Arc<Handler>,
    work: Arc<Mutex<mpsc::Receiver<Delivery>>>,
    done: mpsc::UnboundedSender<Vec<Settled>>,
    batch_size: usize,
    linger: Duration,
) {
    while let Some(batch) = gather(&work, batch_size, linger).await {
        let settled = handle_guarded(&handler, batch).await;
        if done.send(settled).is_err() {
            return;
        }
    }
}

/// Takes the next batch off the queue; `None` once the queue is closed and
/// empty.
async fn gather(
    work: &Mutex<mpsc::Receiver<Delivery>>,
    batch_size: usize,
    linger: Duration,
) -> Option<Vec<Delivery>> {
    let mut work = work.lock().await;
    let mut batch = vec![work.recv().await?];
    let deadline = tokio::time::Instant::now() + linger;
    while batch.len() < batch_size {
        match tokio::time::timeout_at(deadline, work.recv()).await {
            Ok(Some(delivery)) => batch.push(delivery),
            _ => break,
        }
    }
    Some(batch)
}
