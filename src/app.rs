//! What each command does, once the command line has been parsed.
//!
//! Kept apart from `main` so that the binary only wires things together and
//! tests can run any command in-process.

use std::time::Duration;

use tracing::{error, info};

use crate::cli::{Cli, Command, GroupCommand};
use crate::config::{ConfigError, Settings};
use crate::relay::{self, RelayError};
use crate::seed::{self, SeedError};
use crate::source::{self, SourceError};
use crate::store::{Store, StoreError};
use crate::{demo, health, metrics, shutdown, telemetry};

/// Why a command failed. Printed once, as the process's last words.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Settings could not be loaded or are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The relay stopped on an error it cannot recover from.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// A database command failed.
    #[error("postgres: {0}")]
    Store(#[from] StoreError),
    /// A KurrentDB command failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The metrics and health endpoint could not start.
    #[error("{0}")]
    Http(String),
    /// Seeding failed.
    #[error(transparent)]
    Seed(#[from] SeedError),
    /// The demo could not run.
    #[error("demo: {0}")]
    Demo(String),
}

/// Runs the parsed command line.
pub async fn execute(cli: Cli) -> Result<(), AppError> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Run => {
            telemetry::init(&settings.log);
            info!(version = env!("CARGO_PKG_VERSION"), "starting");
            observe(&settings).await?;
            let result = relay::run(settings, shutdown::signals()).await;
            if let Err(e) = &result {
                error!(error = %e, "relay failed");
            }
            Ok(result?)
        }
        Command::Migrate => {
            telemetry::init(&settings.log);
            let store = store_of(&settings)?;
            store.migrate().await?;
            info!("migrations applied");
            Ok(())
        }
        Command::ReplayParked { stop_at } => {
            telemetry::init(&settings.log);
            let client = source::connect(&settings.kurrentdb)?;
            source::replay_parked(&client, &settings.kurrentdb, stop_at).await?;
            info!(
                stream = %settings.kurrentdb.stream,
                group = %settings.kurrentdb.group,
                "parked events replayed"
            );
            Ok(())
        }
        Command::Group(command) => {
            telemetry::init(&settings.log);
            group(command, &settings).await
        }
        Command::Seed { paths } => {
            telemetry::init(&settings.log);
            seed(&paths, &settings).await
        }
        Command::Demo(args) => {
            telemetry::init(&settings.log);
            demo::run(args, settings).await.map_err(AppError::Demo)
        }
    }
}

/// Starts the metrics and health endpoint and the lag measurement, unless
/// `http.enabled` is off.
async fn observe(settings: &Settings) -> Result<(), AppError> {
    let http = &settings.http;
    if !http.enabled {
        info!("http endpoint disabled");
        return Ok(());
    }
    let handle = metrics::install().map_err(|e| AppError::Http(format!("metrics: {e}")))?;
    let pg = &settings.postgres;
    let probe = Store::connect_tls(
        &pg.url,
        &pg.tls_ca_file,
        1,
        Duration::from_millis(pg.connect_timeout_ms),
    )?;
    let addr = health::serve(&http.listen, handle, probe)
        .await
        .map_err(|e| AppError::Http(format!("http.listen {}: {e}", http.listen)))?;
    info!(%addr, "http endpoint listening");
    let every = Duration::from_millis(http.lag_poll_ms);
    tokio::spawn(metrics::poll_lag(settings.kurrentdb.clone(), every));
    Ok(())
}

async fn group(command: GroupCommand, settings: &Settings) -> Result<(), AppError> {
    let k = &settings.kurrentdb;
    let client = source::connect(k)?;
    match command {
        GroupCommand::Create => {
            let created = source::ensure_group(&client, k).await?;
            let what = if created { "created" } else { "already exists" };
            println!("consumer group {} on {}: {what}", k.group, k.stream);
        }
        GroupCommand::Info => {
            let info = source::group_info(&client, k).await?;
            print!("{}", describe_group(&info));
        }
    }
    Ok(())
}

/// The group's settings and statistics as `key: value` lines.
fn describe_group(info: &kurrentdb::PersistentSubscriptionInfo<u64>) -> String {
    let mut out = format!(
        "group: {}\nstream: {}\nstatus: {}\n",
        info.group_name, info.event_source, info.status
    );
    if let Some(s) = &info.settings {
        out += &format!(
            "resolve_links: {}\nstart_from: {:?}\nmessage_timeout_ms: {}\n\
             max_retry_count: {}\nlive_buffer_size: {}\nread_batch_size: {}\n\
             history_buffer_size: {}\ncheckpoint_after_ms: {}\n\
             consumer_strategy: {:?}\n",
            s.resolve_link_tos,
            s.start_from,
            s.message_timeout.as_millis(),
            s.max_retry_count,
            s.live_buffer_size,
            s.read_batch_size,
            s.history_buffer_size,
            s.checkpoint_after.as_millis(),
            s.consumer_strategy_name,
        );
    }
    let st = &info.stats;
    let revision = |r: Option<u64>| r.map_or("none".to_string(), |r| r.to_string());
    out += &format!(
        "connections: {}\ntotal_items: {}\nin_flight: {}\n\
         retry_buffer: {}\nparked: {}\nlast_checkpointed_revision: {}\n\
         last_known_revision: {}\n",
        info.connections.len(),
        st.total_items,
        st.total_in_flight_messages,
        st.retry_buffer_count,
        st.parked_message_count,
        revision(st.last_checkpointed_event_revision),
        revision(st.last_known_event_revision),
    );
    out
}

async fn seed(paths: &[std::path::PathBuf], settings: &Settings) -> Result<(), AppError> {
    let mut files = Vec::new();
    for path in paths {
        match path.is_dir() {
            true => files.extend(seed::files_in(path)?),
            false => files.push(path.clone()),
        }
    }
    let client = source::connect(&settings.kurrentdb)?;
    let report = seed::seed_files(&client, &files).await?;
    info!(
        files = files.len(),
        streams = report.streams,
        events = report.events,
        skipped = report.skipped,
        "seeding done"
    );
    Ok(())
}

fn store_of(settings: &Settings) -> Result<Store, StoreError> {
    Store::from_settings(&settings.postgres)
}
