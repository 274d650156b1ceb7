//! `kurrentdb-emulator`: serves a KurrentDB over gRPC until SIGINT or
//! SIGTERM, in memory or kept in a data directory. Logs go to stderr;
//! `RUST_LOG` overrides the default `info` level.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kurrentdb_emulator::{Server, Store};
use tracing_subscriber::EnvFilter;

/// An in-memory server speaking KurrentDB's gRPC protocol.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (plain HTTP/2, no TLS).
    #[arg(long, default_value = "127.0.0.1:2113")]
    listen: SocketAddr,

    /// JSON seed files to append before serving, in order. With a data
    /// directory they are appended only when it holds nothing yet.
    #[arg(long = "seed", value_name = "FILE", num_args = 1..)]
    seeds: Vec<PathBuf>,

    /// Keep the database in this directory across restarts (created if
    /// missing); without it the database lives in memory only.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Require Basic credentials NAME:PASSWORD on every call (repeatable);
    /// without it, no authentication.
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = parse_user)]
    users: Vec<(String, String)>,
}

fn parse_user(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, password)) if !name.is_empty() => Ok((name.to_string(), password.to_string())),
        _ => Err("expected NAME:PASSWORD".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let store = match &args.data_dir {
        Some(dir) => match Store::open(dir) {
            Ok(store) => store,
            Err(error) => {
                tracing::error!(%error, cause = ?std::error::Error::source(&error), "cannot open the data directory");
                return ExitCode::FAILURE;
            }
        },
        None => Store::new(),
    };
    let seeds: &[PathBuf] = if store.is_empty() { &args.seeds } else { &[] };
    for path in seeds {
        match store.seed_file(path) {
            Ok(events) => tracing::info!(path = %path.display(), events, "seeded"),
            Err(error) => {
                tracing::error!(error = %error, cause = ?std::error::Error::source(&error), "seeding failed");
                return ExitCode::FAILURE;
            }
        }
    }

    let server = match Server::start_with_users(args.listen, store, &args.users).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!(%error, listen = %args.listen, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("stopping");
    server.stop().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
