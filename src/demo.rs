//! `outbox-relay demo`: the whole pipeline on one machine, in one command.
//!
//! It starts the project's KurrentDB emulator (the `kurrentdb-emulator`
//! binary built beside this one) seeded with sample order files, points the
//! relay at it and at a database of its own on the configured PostgreSQL
//! server, waits until every sample order is in `order_fulfillment`, prints
//! them, and stops everything it started. The database is created afresh at
//! the start (so old rows cannot pass for new ones) and kept at the end so
//! the rows can be inspected.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::Args;
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

use crate::config::Settings;
use crate::relay;
use crate::store::{self, Store};

/// Options of `outbox-relay demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Seed files in the KurrentDB tutorial's format. Default: the
    /// tutorial's files in ../shared/data/tutorial-seed.
    #[arg(long = "seed", value_name = "FILE")]
    pub seeds: Vec<PathBuf>,

    /// The database to fill. It is dropped and created again on each run,
    /// so what the demo prints is that run's work.
    #[arg(long, default_value = "outbox_demo")]
    pub database: String,

    /// The emulator binary. Default: `kurrentdb-emulator` next to this
    /// binary.
    #[arg(long)]
    pub emulator: Option<PathBuf>,

    /// Give up if the orders are not all written by then.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

const DEFAULT_SEEDS: &str = "../shared/data/tutorial-seed";

/// Runs the demo. Errors are plain sentences for the operator.
pub async fn run(args: DemoArgs, mut settings: Settings) -> Result<(), String> {
    let seeds = seed_files(&args.seeds)?;
    let expected = count_events(&seeds, &settings.kurrentdb.event_type)?;

    settings.postgres.url = store::recreate_database(&settings.postgres.url, &args.database)
        .await
        .map_err(|e| format!("cannot prepare database {}: {e}", args.database))?;

    let addr = free_port().map_err(|e| format!("no free port: {e}"))?;
    let mut emulator = start_emulator(&args, &seeds, addr)?;
    settings.kurrentdb.connection_string = format!("kurrentdb://{addr}?tls=false");
    wait_until_listening(addr).await?;

    let result = relay_until_written(&settings, expected, &args).await;
    let _ = emulator.kill().await;
    result?;

    let store = store_for(&settings)?;
    let orders = store.list_orders(50).await.map_err(|e| e.to_string())?;
    println!(
        "\n{} orders in order_fulfillment ({}):",
        orders.len(),
        args.database
    );
    for o in &orders {
        println!(
            "  {}  {:<20} {:>2} items  {} {}",
            o.order_id, o.customer_id, o.line_item_count, o.total, o.currency
        );
    }
    println!(
        "\nSee them with:\n  psql -h 127.0.0.1 -U postgres -d {} -c \
         'SELECT order_id, customer_id, line_item_count, total, currency FROM order_fulfillment'",
        args.database
    );
    Ok(())
}

fn seed_files(given: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    let dir = Path::new(DEFAULT_SEEDS);
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("no --seed given and {} is unreadable: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no --seed given and no .json in {}", dir.display()));
    }
    Ok(files)
}

/// Counts the events of `event_type` in seed files, to know when to stop.
fn count_events(seeds: &[PathBuf], event_type: &str) -> Result<usize, String> {
    let mut count = 0;
    for path in seeds {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let streams: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
        let events = streams
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["events"].as_array())
            .flatten();
        count += events.filter(|e| e["type"] == event_type).count();
    }
    Ok(count)
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

fn start_emulator(args: &DemoArgs, seeds: &[PathBuf], addr: SocketAddr) -> Result<Child, String> {
    let binary = match &args.emulator {
        Some(path) => path.clone(),
        None => std::env::current_exe()
            .map_err(|e| e.to_string())?
            .with_file_name("kurrentdb-emulator"),
    };
    let mut command = Command::new(&binary);
    command.arg("--listen").arg(addr.to_string());
    for seed in seeds {
        command.arg("--seed").arg(seed);
    }
    command
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {} ({e}); build it with `cargo build --workspace`",
                binary.display()
            )
        })
}

async fn wait_until_listening(addr: SocketAddr) -> Result<(), String> {
    let started = Instant::now();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("the emulator did not listen on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs the relay until `expected` orders are in the table.
async fn relay_until_written(
    settings: &Settings,
    expected: usize,
    args: &DemoArgs,
) -> Result<(), String> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let relay = tokio::spawn(relay::run(settings.clone(), async move {
        let _ = stop_rx.await;
    }));
    let store = store_for(settings)?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut written = 0;
    while Instant::now() < deadline && !relay.is_finished() {
        written = store.count_orders().await.unwrap_or(0) as usize;
        if written >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(());
    match relay.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("the relay failed: {e}")),
        Err(e) => return Err(format!("the relay crashed: {e}")),
    }
    if written < expected {
        return Err(format!("only {written} of {expected} orders were written"));
    }
    Ok(())
}

fn store_for(settings: &Settings) -> Result<Store, String> {
    Store::connect(&settings.postgres.url, 2, Duration::from_secs(5)).map_err(|e| e.to_string())
}
