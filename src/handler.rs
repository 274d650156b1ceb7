//! Verdicts: what happens to each delivered event.
//!
//! The relay hands this module batches of deliveries; for each delivery it
//! gets back exactly one verdict, ack or nack, and nothing else decides one.
//! Events of other types and links whose target is gone are acked and
//! ignored. Orders are decoded and written; a transient database failure is
//! retried in place for a while and then handed back to the server with a
//! Nack Retry; an event that can never be written (poison) is recorded in
//! `dead_letters` first and then nacked with the configured action, so it
//! is never lost and never blocks the stream.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use crate::config::{PoisonAction, RelaySettings};
use crate::metrics;
use crate::order::{self, DecodeLimits, Order, Poison};
use crate::relay::Backoff;
use crate::shutdown::Stop;
use crate::source::{Delivery, Nack};
use crate::store::{DeadLetter, EventSource, Store, StoreError, WriteOutcome};

/// The outcome for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Done with it: written, already written, or not ours.
    Ack,
    /// Hand it back with this action and reason.
    Nack(Nack, String),
}

/// A verdict and the id the server needs to apply it.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The id to ack or nack (the link's id for resolved links).
    pub ack_id: Uuid,
    /// What to tell the server.
    pub verdict: Verdict,
}

/// Decides verdicts and performs the writes behind them.
pub struct Handler {
    store: Store,
    event_type: String,
    decode: DecodeFn,
    limits: DecodeLimits,
    poison: Nack,
    write_retry: Duration,
    /// Event types already reported as ignored, so that a misspelt
    /// `kurrentdb.event_type` shows at info without a line per event.
    ignored_types: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Set when PostgreSQL stayed unreachable for the whole write-retry
    /// time; cleared once it answers again.
    unavailable: AtomicBool,
}

/// Turns a payload into an order: [`order::decode`], unless a test swaps in
/// another to see how the handler copes with a misbehaving decoder.
pub type DecodeFn = fn(&str, &[u8], &str, &DecodeLimits) -> Result<Order, Poison>;

/// An order ready to be written, with where it came from.
struct Pending {
    delivery: Delivery,
    order: Order,
}

impl Handler {
    /// A handler writing to `store` the events of `event_type`.
    pub fn new(store: Store, event_type: &str, settings: &RelaySettings) -> Self {
        let poison = match settings.poison_action {
            PoisonAction::Skip => Nack::Skip,
            PoisonAction::Park => Nack::Park,
        };
        Handler {
            store,
            event_type: event_type.to_string(),
            decode: order::decode,
            limits: DecodeLimits {
                max_bytes: settings.max_event_bytes,
                ..DecodeLimits::default()
            },
            poison,
            write_retry: Duration::from_millis(settings.write_retry_ms),
            unavailable: AtomicBool::new(false),
            ignored_types: Default::default(),
        }
    }

    /// Reports, once per type, that events of a type are being ignored.
    fn note_ignored_type(&self, event_type: &str) {
        let Ok(mut seen) = self.ignored_types.lock() else {
            return;
        };
        if seen.len() < 1_000 && seen.insert(event_type.to_string()) {
            info!(
                event_type,
                written = %self.event_type,
                "ignoring events of this type (acked, not written)"
            );
        }
    }

    /// The same handler with another decoder.
    pub fn with_decoder(self, decode: DecodeFn) -> Self {
        Handler { decode, ..self }
    }

    /// Whether PostgreSQL was found unreachable. While it is, every order
    /// is handed back at once, and the relay should leave the group (see
    /// [`crate::relay`]) so that the server holds the events without
    /// counting retries against them.
    pub fn store_unavailable(&self) -> bool {
        self.unavailable.load(Ordering::SeqCst)
    }

    /// Probes PostgreSQL with backoff until it answers and the target table
    /// can take the relay's writes. Returns false if a
    /// stop was requested first.
    pub async fn wait_for_store(&self, stop: &mut Stop, delays: Backoff) -> bool {
        for delay in delays {
            match self.store.verify_schema().await {
                Ok(()) => {
                    self.unavailable.store(false, Ordering::SeqCst);
                    info!("postgres can take writes again");
                    return true;
                }
                Err(e) => debug!(error = %e, "postgres still unavailable"),
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = stop.requested() => return false,
            }
        }
        false
    }

    /// One verdict per delivery, in no particular order.
    pub async fn handle(&self, batch: Vec<Delivery>) -> Vec<Settled> {
        let mut settled = Vec::with_capacity(batch.len());
        let mut pending = Vec::with_capacity(batch.len());
        let unavailable = self.store_unavailable();
        let newest = batch.iter().map(|d| d.position).max();
        for delivery in batch {
            match self.decode(&delivery) {
                Decoded::Ignore => {
                    metrics::events_ignored(1);
                    settled.push(ack(&delivery));
                }
                _ if unavailable => {
                    settled.push(nack(&delivery, Nack::Retry, "postgres unavailable"))
                }
                Decoded::Order(order) => pending.push(Pending {
                    delivery,
                    order: *order,
                }),
                Decoded::Poison(poison) => {
                    settled.push(self.give_up(&delivery, &poison).await);
                }
            }
        }
        self.write(pending, &mut settled).await;
        record_verdicts(&settled, newest);
        settled
    }

    fn decode(&self, delivery: &Delivery) -> Decoded {
        if !delivery.resolved {
            warn!(
                event_id = %delivery.event_id,
                position = delivery.position,
                "link target missing; ignoring"
            );
            return Decoded::Ignore;
        }
        if delivery.event_type != self.event_type {
            self.note_ignored_type(&delivery.event_type);
            debug!(
                event_id = %delivery.event_id,
                event_type = %delivery.event_type,
                "not an order; ignoring"
            );
            return Decoded::Ignore;
        }
        let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
            (self.decode)(
                &delivery.content_type,
                &delivery.data,
                &delivery.stream,
                &self.limits,
            )
        }));
        match decoded {
            Ok(Ok(order)) => Decoded::Order(Box::new(order)),
            Ok(Err(poison)) => Decoded::Poison(poison),
            Err(_) => Decoded::Poison(Poison::handler_panicked()),
        }
    }

    /// Writes the batch in one transaction; on a permanent failure, splits
    /// it so that only the event at fault is given up.
    async fn write(&self, pending: Vec<Pending>, settled: &mut Vec<Settled>) {
        if pending.is_empty() {
            return;
        }
        let rows: Vec<(&Order, EventSource)> = pending
            .iter()
            .map(|p| (&p.order, source_of(&p.delivery)))
            .collect();
        let started = Instant::now();
        let result = self.with_retry(|| self.store.upsert_orders(&rows)).await;
        match result {
            Ok(outcomes) => {
                let written = outcomes
                    .iter()
                    .filter(|o| **o != WriteOutcome::Unchanged)
                    .count();
                let duplicate = pending.len() - written;
                metrics::batch_written(written, duplicate, started.elapsed());
                for p in &pending {
                    debug!(
                        event_id = %p.delivery.event_id,
                        order_id = %p.order.order_id,
                        "order written"
                    );
                    settled.push(ack(&p.delivery));
                }
            }
            Err(e) if e.is_transient() => {
                warn!(
                    error = %e,
                    events = pending.len(),
                    "database unavailable; handing events back for retry"
                );
                self.hand_back(&pending, &format!("transient: {e}"), settled);
            }
            Err(e) if e.is_poison() && pending.len() > 1 => {
                debug!(error = %e, "batch rejected; writing one by one");
                for p in pending {
                    Box::pin(self.write(vec![p], settled)).await;
                }
            }
            Err(e) if e.is_poison() => {
                let p = &pending[0];
                let poison = Poison::rejected_by_database(&e);
                settled.push(self.give_up(&p.delivery, &poison).await);
            }
            Err(e) => {
                // Neither the data nor the network: the schema or the
                // permissions are wrong. Only an operator can fix that; until
                // then the relay treats the database as unavailable, so the
                // events wait on the server instead of burning retries.
                error!(
                    error = %e,
                    events = pending.len(),
                    "database refused the write; operator must act"
                );
                self.hand_back(&pending, &format!("database error: {e}"), settled);
            }
        }
    }

    /// PostgreSQL cannot take the batch: every event goes back to the server
    /// for retry, and the relay is told to leave the group until it can.
    fn hand_back(&self, pending: &[Pending], reason: &str, settled: &mut Vec<Settled>) {
        self.unavailable.store(true, Ordering::SeqCst);
        for p in pending {
            settled.push(nack(&p.delivery, Nack::Retry, reason));
        }
    }

    /// Records a poison event, then nacks it with the configured action. If
    /// it cannot be recorded, it is handed back for retry instead, so that
    /// nothing is lost.
    async fn give_up(&self, delivery: &Delivery, poison: &Poison) -> Settled {
        let letter = DeadLetter {
            event_id: delivery.event_id,
            stream: &delivery.stream,
            position: delivery.position,
            event_type: &delivery.event_type,
            reason: poison.reason.code(),
            detail: &poison.detail,
            content_type: &delivery.content_type,
            payload: &delivery.data,
        };
        let recorded = self
            .with_retry(|| self.store.record_dead_letter(&letter))
            .await;
        if let Err(e) = recorded {
            warn!(
                event_id = %delivery.event_id,
                error = %e,
                "could not record poison event; handing it back for retry"
            );
            if e.is_transient() {
                self.unavailable.store(true, Ordering::SeqCst);
            }
            return nack(delivery, Nack::Retry, &format!("transient: {e}"));
        }
        error!(
            event_id = %delivery.event_id,
            stream = %delivery.stream,
            revision = delivery.revision,
            position = delivery.position,
            retry_count = delivery.retry_count,
            reason = poison.reason.code(),
            detail = %poison.detail,
            action = ?self.poison,
            "poison event given up"
        );
        nack(delivery, self.poison, &poison.to_string())
    }

    /// Runs `op` until it succeeds, fails permanently, or transient failures
    /// have lasted longer than the configured write-retry time.
    async fn with_retry<T, F, Fut>(&self, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, StoreError>>,
    {
        let started = Instant::now();
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            match op().await {
                Err(e) if e.is_transient() && started.elapsed() < self.write_retry => {
                    let delay = delays.next().unwrap_or(Duration::from_secs(1));
                    debug!(error = %e, ?delay, "transient database error; retrying");
                    tokio::time::sleep(delay).await;
                }
                other => return other,
            }
        }
    }
}

enum Decoded {
    Ignore,
    Order(Box<Order>),
    Poison(Poison),
}

/// Counts the verdicts that are not writes, and notes how far into the
/// subscribed stream the relay has got (see [`crate::metrics`]).
fn record_verdicts(settled: &[Settled], newest: Option<u64>) {
    let nacked = |action: Nack| {
        settled
            .iter()
            .filter(|s| matches!(&s.verdict, Verdict::Nack(a, _) if *a == action))
            .count()
    };
    metrics::events_retried(nacked(Nack::Retry));
    metrics::events_poisoned(nacked(Nack::Skip) + nacked(Nack::Park));
    if let Some(position) = newest {
        metrics::settled_through(position);
    }
}

/// Where an order came from. Its versions are ordered by revision in the
/// order's own stream: see [`EventSource::position`].
fn source_of(delivery: &Delivery) -> EventSource {
    EventSource {
        event_id: delivery.event_id,
        stream: delivery.stream.clone(),
        revision: delivery.revision,
        position: delivery.revision,
    }
}

fn ack(delivery: &Delivery) -> Settled {
    Settled {
        ack_id: delivery.ack_id,
        verdict: Verdict::Ack,
    }
}

fn nack(delivery: &Delivery, action: Nack, reason: &str) -> Settled {
    Settled {
        ack_id: delivery.ack_id,
        verdict: Verdict::Nack(action, reason.to_string()),
    }
}
