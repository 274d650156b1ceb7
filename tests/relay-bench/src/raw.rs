//! Phase 1: how fast PostgreSQL takes the same rows without the relay.
//!
//! The orders are decoded up front with the relay's own decoder, then
//! written with the relay's own statement ([`Store::upsert_orders`]) in
//! batches of the relay's batch size from [`CONNECTIONS`] connections at
//! once. Only the writing is timed, so the figure is what the database
//! can do with this schema and batch size: the ceiling for the relay.
//!
//! Known shortcoming: every decoded order is held in memory while the
//! phase runs (a few KiB each, so gigabytes at a million orders).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use outbox_relay::order::{self, DecodeLimits, Order};
use outbox_relay::store::{EventSource, Store};
use tokio::task::JoinSet;

use crate::generate::Generator;

/// Connections writing at once, as in the pgbench comparison.
pub const CONNECTIONS: usize = 2;

/// What phase 1 measured.
pub struct RawResult {
    /// Rows written.
    pub rows: usize,
    /// Time from the first batch sent to the last one committed.
    pub elapsed: Duration,
}

impl RawResult {
    /// Rows per second.
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64()
    }
}

/// The decoded orders and where each claims to come from.
struct Rows {
    orders: Vec<Order>,
    sources: Vec<EventSource>,
}

/// Writes `count` orders into the empty database at `url`.
pub async fn run(
    url: &str,
    generator: Generator,
    count: u64,
    batch_size: usize,
) -> Result<RawResult> {
    let rows = tokio::task::spawn_blocking(move || decode_all(generator, count)).await??;
    let rows = Arc::new(rows);

    let store = Store::connect(url, CONNECTIONS, Duration::from_secs(10))?;
    store
        .migrate()
        .await
        .context("migrating the raw database")?;
    let store = Arc::new(store);
    eprintln!("raw: orders decoded; writing from {CONNECTIONS} connections");

    let next_batch = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..CONNECTIONS {
        let (store, rows, next) = (store.clone(), rows.clone(), next_batch.clone());
        writers.spawn(async move { write_batches(&store, &rows, &next, batch_size).await });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(RawResult {
        rows: rows.orders.len(),
        elapsed: started.elapsed(),
    })
}

/// Generates and decodes every order, failing on any the relay would
/// refuse: the phases must write the same rows.
fn decode_all(generator: Generator, count: u64) -> Result<Rows> {
    let limits = DecodeLimits::default();
    let mut rows = Rows {
        orders: Vec::with_capacity(count as usize),
        sources: Vec::with_capacity(count as usize),
    };
    for index in 0..count {
        let generated = generator.order(index);
        let order = order::decode(
            "application/json",
            &generated.data,
            &generated.order_id,
            &limits,
        )
        .with_context(|| format!("generated order {index} does not decode"))?;
        rows.sources.push(EventSource {
            event_id: generated.event_id,
            stream: generated.order_id,
            revision: 0,
            position: index,
        });
        rows.orders.push(order);
    }
    Ok(rows)
}

/// One connection's loop: takes the next unwritten batch until none is
/// left.
async fn write_batches(
    store: &Store,
    rows: &Rows,
    next: &AtomicUsize,
    batch_size: usize,
) -> Result<()> {
    loop {
        let start = next.fetch_add(1, Ordering::Relaxed) * batch_size;
        if start >= rows.orders.len() {
            return Ok(());
        }
        let end = (start + batch_size).min(rows.orders.len());
        let batch: Vec<(&Order, EventSource)> = (start..end)
            .map(|i| (&rows.orders[i], rows.sources[i].clone()))
            .collect();
        store.upsert_orders(&batch).await?;
    }
}
