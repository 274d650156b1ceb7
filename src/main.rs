//! The `outbox-relay` binary: parses the command line and runs the chosen
//! job. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use outbox_relay::{app, cli::Cli};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match app::execute(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-relay: {e}");
            ExitCode::FAILURE
        }
    }
}
