//! Phase 3: how long an order takes from its append to its row, while
//! orders arrive at a steady rate.
//!
//! The relay runs against a fresh emulator and database and is warmed up
//! first (a few orders relayed and committed), so its start-up is not
//! counted. Then orders are appended at `rate` per second, each at its own
//! scheduled instant, and a poller asks PostgreSQL every [`POLL`] which of
//! the orders still outstanding have a row. An order's latency is from
//! the moment its append returned to the moment the first poll that saw
//! its row was sent (that poll's snapshot was taken just after). It is
//! therefore an upper bound, late by at most one poll interval.
//!
//! As a cross-check, each row's `created_at` (the writing transaction's
//! start, `now()`) is compared with the append's wall-clock time: that
//! lower bound leaves out the statement and the commit.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use kurrentdb_emulator::Store as EventStore;
use tokio::sync::mpsc;
use tokio_postgres::Client;

use crate::database::{self, count_orders};
use crate::emulator;
use crate::generate::{GeneratedOrder, Generator};
use crate::relay_process::RelayProcess;

/// How often the poller looks for new rows.
pub const POLL: Duration = Duration::from_millis(2);

/// Orders relayed before measuring.
const WARM_UP: u64 = 200;

/// How long to wait for the last rows after the last append.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// What phase 3 measured.
pub struct LatencyResult {
    /// Append to row seen, per order, sorted.
    pub seen: Vec<Duration>,
    /// Append to the writing transaction's start, per order, sorted.
    pub write_started: Vec<Duration>,
    /// The append rate achieved, per second.
    pub achieved_rate: f64,
}

/// One append: which order, when (monotonic and wall clock).
struct Appended {
    order_id: String,
    at: Instant,
    wall_micros: i64,
}

/// Runs the relay on the empty database at `url` and measures latency at
/// `rate` orders per second for `seconds`, with orders from `first` on.
pub async fn run(
    url: &str,
    generator: Generator,
    first: u64,
    rate: u32,
    seconds: u64,
    relay_env: &[(String, String)],
) -> Result<LatencyResult> {
    let events = EventStore::new();
    let server = emulator::start(events.clone()).await?;
    let client = database::connect(url).await?;
    let mut relay = RelayProcess::spawn(&server.connection_string(), url, relay_env)?;
    eprintln!("latency: relay pid {}", relay.pid());

    let measured = async {
        warm_up(&events, &client, &mut relay, generator, first).await?;
        let total = u64::from(rate) * seconds;
        let orders: Vec<GeneratedOrder> = (first + WARM_UP..first + WARM_UP + total)
            .map(|i| generator.order(i))
            .collect();
        eprintln!("latency: appending {total} orders at {rate}/s");
        measure(&events, &client, orders, rate).await
    }
    .await;
    let stopped = relay.stop().await;
    server.stop().await;
    let result = measured?;
    stopped?;
    Ok(result)
}

/// Relays a few orders so that connections, statements and the group
/// are ready before the clock starts.
async fn warm_up(
    events: &EventStore,
    client: &Client,
    relay: &mut RelayProcess,
    generator: Generator,
    first: u64,
) -> Result<()> {
    for index in first..first + WARM_UP {
        emulator::append(events, generator.order(index))?;
    }
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        relay.ensure_running()?;
        // The table appears once the relay has migrated.
        if count_orders(client).await.unwrap_or(0) >= WARM_UP as i64 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the relay did not write the warm-up orders within 60 s")
}

/// Appends `orders` at `rate` while polling for their rows.
async fn measure(
    events: &EventStore,
    client: &Client,
    orders: Vec<GeneratedOrder>,
    rate: u32,
) -> Result<LatencyResult> {
    let (tx, rx) = mpsc::unbounded_channel();
    let appender = tokio::spawn(append_paced(events.clone(), orders, rate, tx));
    let (seen, appended) = poll_rows(client, rx).await?;
    let achieved_rate = appender.await??;

    let write_started = write_start_latencies(client, &appended).await?;
    Ok(LatencyResult {
        seen: sorted(seen),
        write_started: sorted(write_started),
        achieved_rate,
    })
}

/// Appends each order at its scheduled instant and reports it; returns
/// the rate achieved.
async fn append_paced(
    events: EventStore,
    orders: Vec<GeneratedOrder>,
    rate: u32,
    report: mpsc::UnboundedSender<Appended>,
) -> Result<f64> {
    let period = Duration::from_secs(1) / rate;
    let count = orders.len();
    let start = tokio::time::Instant::now();
    let mut first_last = None;
    for (i, order) in orders.into_iter().enumerate() {
        tokio::time::sleep_until(start + period * u32::try_from(i)?).await;
        let order_id = order.order_id.clone();
        emulator::append(&events, order)?;
        let at = Instant::now();
        let wall_micros = wall_clock_micros();
        first_last = Some((first_last.map_or(at, |(f, _)| f), at));
        let _ = report.send(Appended {
            order_id,
            at,
            wall_micros,
        });
    }
    let (first, last) = first_last.context("no orders to append")?;
    let span = (last - first).as_secs_f64();
    Ok(if count > 1 {
        (count - 1) as f64 / span
    } else {
        f64::from(rate)
    })
}

/// Polls for the rows of appended orders until every one has been seen.
/// Returns the latencies and every append, for the cross-check.
async fn poll_rows(
    client: &Client,
    mut appends: mpsc::UnboundedReceiver<Appended>,
) -> Result<(Vec<Duration>, Vec<Appended>)> {
    let statement = client
        .prepare("SELECT order_id FROM order_fulfillment WHERE order_id = ANY($1)")
        .await?;
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut all = Vec::new();
    let mut seen = Vec::new();
    let mut appending = true;
    let mut last_append = Instant::now();
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while appending || !pending.is_empty() {
        ticks.tick().await;
        loop {
            match appends.try_recv() {
                Ok(a) => {
                    pending.insert(a.order_id.clone(), a.at);
                    last_append = a.at;
                    all.push(a);
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    appending = false;
                    break;
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        if !appending && last_append.elapsed() > DRAIN_LIMIT {
            bail!(
                "{} orders had no row {DRAIN_LIMIT:?} after the last append",
                pending.len()
            );
        }
        let ids: Vec<&str> = pending.keys().map(String::as_str).collect();
        let sent = Instant::now();
        let rows = client.query(&statement, &[&ids]).await?;
        for row in rows {
            let id: &str = row.get(0);
            if let Some(appended) = pending.remove(id) {
                seen.push(sent.saturating_duration_since(appended));
            }
        }
    }
    Ok((seen, all))
}

/// For each append, the time until the writing transaction started, from
/// the row's `created_at`.
async fn write_start_latencies(client: &Client, appended: &[Appended]) -> Result<Vec<Duration>> {
    let ids: Vec<&str> = appended.iter().map(|a| a.order_id.as_str()).collect();
    let rows = client
        .query(
            "SELECT order_id, (extract(epoch FROM created_at) * 1e6)::int8 \
             FROM order_fulfillment WHERE order_id = ANY($1)",
            &[&ids],
        )
        .await?;
    let created: HashMap<&str, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let latencies = appended
        .iter()
        .filter_map(|a| {
            let micros = created.get(a.order_id.as_str())? - a.wall_micros;
            Some(Duration::from_micros(micros.max(0) as u64))
        })
        .collect();
    Ok(latencies)
}

fn wall_clock_micros() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_micros() as i64
}

fn sorted(mut durations: Vec<Duration>) -> Vec<Duration> {
    durations.sort_unstable();
    durations
}

/// The `p`-th quantile (`0.0..=1.0`) of sorted samples, by nearest rank.
pub fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quantiles pick the nearest rank, so p50 of 1..=100 ms is 50 ms.
    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
