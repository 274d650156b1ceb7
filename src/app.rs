//! What each command does, once the command line has been parsed.
//!
//! Kept apart from `main` so that the binary only wires things together and
//! tests can run any command in-process.

use std::time::Duration;

use tracing::{error, info};

use crate::cli::{Cli, Command};
use crate::config::{ConfigError, Settings};
use crate::relay::{self, RelayError};
use crate::source::{self, SourceError};
use crate::store::{Store, StoreError};
use crate::{demo, shutdown, telemetry};

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
        Command::Demo(args) => {
            telemetry::init(&settings.log);
            demo::run(args, settings).await.map_err(AppError::Demo)
        }
    }
}

fn store_of(settings: &Settings) -> Result<Store, StoreError> {
    Store::connect(
        &settings.postgres.url,
        settings.postgres.pool_size,
        Duration::from_millis(settings.postgres.connect_timeout_ms),
    )
}
