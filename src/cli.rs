//! The command line: which job to run and with which settings.
//!
//! Every subcommand loads settings the same way (defaults, then `--config`,
//! then `OUTBOX_RELAY__...` variables), so what `check-config` prints is
//! exactly what `run` would use.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Relays order events from a KurrentDB consumer group into PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "outbox-relay", version, about)]
pub struct Cli {
    /// A TOML settings file; environment variables override it.
    #[arg(long, short, global = true, env = "OUTBOX_RELAY_CONFIG")]
    pub config: Option<PathBuf>,

    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The relay's jobs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the consumer group and relay events until SIGINT or SIGTERM.
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Print the effective settings (passwords masked) and exit; exits
    /// non-zero when they are invalid.
    CheckConfig,
    /// Ask KurrentDB to deliver the group's parked events again.
    ReplayParked {
        /// Replay only this many parked events.
        #[arg(long)]
        stop_at: Option<usize>,
    },
    /// Run the whole pipeline on this machine: an emulated KurrentDB seeded
    /// with sample orders, the relay, and the local PostgreSQL.
    Demo(crate::demo::DemoArgs),
}
