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
    /// Manage the consumer group on KurrentDB.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Append the streams in tutorial-format seed files (or in every
    /// `.json` file of a directory) to KurrentDB; events whose id is
    /// already in their stream are skipped, so seeding twice appends
    /// nothing.
    Seed {
        /// Seed files or directories of them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Run the whole pipeline on this machine: an emulated KurrentDB seeded
    /// with sample orders, the relay, and the local PostgreSQL.
    Demo(crate::demo::DemoArgs),
}

/// `outbox-relay group ...`: the configured `kurrentdb.stream` and
/// `kurrentdb.group`.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create the consumer group with the configured settings, unless it
    /// exists.
    Create,
    /// Print the group's settings and live statistics.
    Info,
}
