//! Stopping the relay: the stop signal and the process signals behind it.
//!
//! The relay's entry point takes any future as its stop signal, so tests stop
//! it without sending signals. [`Stop`] turns that future into something
//! every task can check and wait on. [`signals`] is the future the daemon
//! uses: SIGINT or SIGTERM starts a graceful stop, and a second signal ends
//! the process at once for an operator who does not want to wait.

use std::future::Future;

use tokio::sync::watch;

/// A stop request shared by the relay's tasks.
#[derive(Clone)]
pub struct Stop {
    requested: watch::Receiver<bool>,
}

impl Stop {
    /// Requests a stop once `signal` completes.
    pub fn on(signal: impl Future<Output = ()> + Send + 'static) -> Stop {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = signal => { let _ = tx.send(true); }
                _ = tx.closed() => {}
            }
        });
        Stop { requested: rx }
    }

    /// Whether a stop has been requested.
    pub fn is_requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Completes when a stop is requested. Never completes otherwise, even
    /// if the signal's task ends without firing.
    pub async fn requested(&mut self) {
        if self.requested.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Completes on the first SIGINT or SIGTERM, and arranges for a second one
/// to exit the process immediately with status 130.
pub async fn signals() {
    first_signal().await;
    tracing::info!("stop requested; finishing in-flight events");
    tokio::spawn(async {
        first_signal().await;
        tracing::warn!("second stop signal; exiting now");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn first_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(not(unix))]
async fn first_signal() {
    let _ = tokio::signal::ctrl_c().await;
}
