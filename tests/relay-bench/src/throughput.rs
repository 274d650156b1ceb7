//! Phase 2: how fast the relay drains a backlog, and how much memory it
//! needs for it.
//!
//! All orders are appended to the emulator before the relay starts, so the
//! clock runs from the relay's process start (migrations, connecting and
//! subscribing included) until PostgreSQL holds every row.
//!
//! Watching for the end must not slow the relay down, and `count(*)` over
//! a large table is a scan. So the bench polls the table's id sequence
//! (`order_fulfillment_id_seq`, one tuple, and at least the number of rows
//! inserted, since every inserted row draws from it) and counts rows only
//! once the sequence has reached the target. The end time is when that
//! count was sent: its snapshot already held every row.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kurrentdb_emulator::Store as EventStore;
use tokio_postgres::Client;

use crate::database::{self, count_orders};
use crate::emulator;
use crate::generate::Generator;
use crate::relay_process::{Memory, RelayProcess};

/// How often progress is polled.
const POLL: Duration = Duration::from_millis(50);

/// Without a new row for this long, the run is declared stuck.
const STALL_LIMIT: Duration = Duration::from_secs(60);

/// How often progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What phase 2 measured.
pub struct ThroughputResult {
    /// Orders relayed.
    pub events: u64,
    /// From the relay's start to the last row committed.
    pub elapsed: Duration,
    /// The relay's memory at the end.
    pub memory: Memory,
}

impl ThroughputResult {
    /// Events per second.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

/// Appends `count` orders, then relays them into the empty database at
/// `url` and times it.
pub async fn run(
    url: &str,
    generator: Generator,
    count: u64,
    relay_env: &[(String, String)],
) -> Result<ThroughputResult> {
    let events = EventStore::new();
    let store = events.clone();
    tokio::task::spawn_blocking(move || append_all(&store, generator, count)).await??;
    let server = emulator::start(events).await?;
    let client = database::connect(url).await?;

    eprintln!("relay: starting; {count} orders waiting");
    let started = Instant::now();
    let mut relay = RelayProcess::spawn(&server.connection_string(), url, relay_env)?;
    eprintln!("relay: pid {}", relay.pid());
    let done = wait_for_rows(&client, &mut relay, count, started).await;
    let memory = relay.memory();
    let stopped = relay.stop().await;
    server.stop().await;

    let elapsed = done? - started;
    stopped?;
    Ok(ThroughputResult {
        events: count,
        elapsed,
        memory: memory?,
    })
}

fn append_all(store: &EventStore, generator: Generator, count: u64) -> Result<()> {
    for index in 0..count {
        emulator::append(store, generator.order(index))?;
    }
    Ok(())
}

/// Waits until `count` rows are committed; returns when that was seen.
async fn wait_for_rows(
    client: &Client,
    relay: &mut RelayProcess,
    count: u64,
    started: Instant,
) -> Result<Instant> {
    let target = i64::try_from(count)?;
    let mut last = (0, Instant::now());
    let mut printed = Instant::now();
    loop {
        tokio::time::sleep(POLL).await;
        relay.ensure_running()?;
        let drawn = ids_drawn(client).await;
        if drawn >= target {
            let sent = Instant::now();
            if count_orders(client).await? >= target {
                return Ok(sent);
            }
        }
        if drawn > last.0 {
            last = (drawn, Instant::now());
        } else if last.1.elapsed() > STALL_LIMIT {
            bail!("no new rows for {STALL_LIMIT:?}; {drawn} of {count}");
        }
        if printed.elapsed() >= PROGRESS_EVERY {
            printed = Instant::now();
            let rate = drawn as f64 / started.elapsed().as_secs_f64();
            eprintln!("relay: about {drawn} of {count} rows, {rate:.0}/s");
        }
    }
}

/// How many ids the table's sequence has handed out; 0 while the relay
/// has not created the table yet.
async fn ids_drawn(client: &Client) -> i64 {
    let sql = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END \
               FROM order_fulfillment_id_seq";
    match client.query_one(sql, &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}
