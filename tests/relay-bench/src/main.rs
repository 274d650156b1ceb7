//! relay-bench: measures the relay against the local PostgreSQL and prints
//! one table.
//!
//! Build everything in release mode, then run it from the repository root:
//!
//! ```sh
//! cargo build --release --workspace && ./target/release/relay-bench --orders 200000
//! ```
//!
//! One run has three phases, each on a fresh database of its own
//! (`relay_bench_<random>_<phase>`, dropped at the end):
//! - [`raw`]: the same rows written straight to PostgreSQL in batches from
//!   two connections, with no relay: the ceiling;
//! - [`throughput`]: the relay, as a child process, draining a backlog of
//!   N orders from an in-process emulator; also its peak memory;
//! - [`latency`]: append-to-row latency at a steady rate.
//!
//! Orders come from [`generate`]; the emulator from [`emulator`]; the relay
//! process from [`relay_process`]; the table from [`report`]. Progress goes
//! to stderr, the table to stdout.

mod database;
mod emulator;
mod generate;
mod latency;
mod raw;
mod relay_process;
mod report;
mod throughput;

use anyhow::{Context, Result};
use clap::Parser;
use outbox_relay::config::Settings;

use crate::database::Databases;
use crate::generate::Generator;
use crate::report::{Machine, Report};

/// Measures the relay's throughput, latency and memory against raw
/// PostgreSQL, and prints one table.
#[derive(Debug, Parser)]
#[command(name = "relay-bench")]
struct Args {
    /// Orders in the raw and relay phases (N).
    #[arg(long, default_value_t = 200_000, value_parser = at_least_one())]
    orders: u64,

    /// How long the latency phase appends, in seconds.
    #[arg(long, default_value_t = 10, value_parser = at_least_one())]
    latency_seconds: u64,

    /// Orders per second appended in the latency phase.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,

    /// The PostgreSQL server; the bench creates and drops its own
    /// databases there.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    postgres: String,

    /// An extra variable for the relay, e.g.
    /// `OUTBOX_RELAY__RELAY__BATCH_SIZE=200`; may be repeated.
    #[arg(long = "relay-env", value_name = "KEY=VALUE", value_parser = parse_env)]
    relay_env: Vec<(String, String)>,

    /// Seed of the generated orders.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    relay_process::relay_binary()?;

    // The settings the relay will run with, to use its batch size for the
    // raw phase too.
    let env = std::env::vars().chain(args.relay_env.iter().cloned());
    let settings = Settings::load_from(None, env)
        .context("the relay's settings (environment and --relay-env)")?;

    let facts = database::server_facts(&args.postgres).await?;
    let mut machine = Machine::describe(facts);
    let mut databases = Databases::new(&args.postgres);
    // On Ctrl-C the phases are dropped (which kills the relay) and the
    // databases are still dropped.
    let measured = tokio::select! {
        measured = measure(&args, &settings, &mut databases) => measured,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let dropped = databases.drop_all().await;
    let (raw, relay, latency) = measured?;
    dropped?;

    machine.load_after = report::load_average();
    let report = Report {
        machine,
        orders: args.orders,
        batch_size: settings.relay.batch_size,
        rate: args.rate,
        raw,
        relay,
        latency,
    };
    report.print();
    Ok(())
}

type Measured = (
    raw::RawResult,
    throughput::ThroughputResult,
    latency::LatencyResult,
);

/// A fresh database for `phase`, after a `CHECKPOINT` so that the writes
/// of the phase before are not flushed to disk during this one.
async fn fresh_database(databases: &mut Databases, phase: &str) -> Result<String> {
    let url = databases.create(phase).await?;
    if !database::checkpoint(&url).await {
        eprintln!("{phase}: CHECKPOINT refused; earlier writes may interfere");
    }
    Ok(url)
}

/// Runs the three phases, one database each.
async fn measure(args: &Args, settings: &Settings, databases: &mut Databases) -> Result<Measured> {
    let generator = Generator::new(args.seed);
    let batch_size = settings.relay.batch_size;

    eprintln!("raw: {} orders, batches of {batch_size}", args.orders);
    let url = fresh_database(databases, "raw").await?;
    let raw = raw::run(&url, generator, args.orders, batch_size).await?;
    eprintln!("raw: {:.0} rows/s", raw.rate());

    let url = fresh_database(databases, "relay").await?;
    let relay = throughput::run(&url, generator, args.orders, &args.relay_env).await?;
    eprintln!("relay: {:.0} events/s", relay.rate());

    let url = fresh_database(databases, "latency").await?;
    let latency = latency::run(
        &url,
        generator,
        args.orders,
        args.rate,
        args.latency_seconds,
        &args.relay_env,
    )
    .await?;
    Ok((raw, relay, latency))
}

/// A count that must not be 0.
fn at_least_one() -> clap::builder::RangedU64ValueParser {
    clap::value_parser!(u64).range(1..)
}

/// Parses `KEY=VALUE`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.into(), value.into())),
        _ => Err(format!("expected KEY=VALUE, got {text:?}")),
    }
}
