//! The relay under test, run as a child process: the release
//! `outbox-relay` binary built beside this one, configured only through
//! `OUTBOX_RELAY__...` variables, so that it is measured exactly as it
//! ships and its memory is its own.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

/// How long the relay may take to stop gracefully before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where the relay binary is: next to this benchmark's own executable.
pub fn relay_binary() -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name("outbox-relay");
    if !path.is_file() {
        bail!(
            "{} not found; build it first with \
             `cargo build --release --workspace`",
            path.display()
        );
    }
    Ok(path)
}

/// A running relay. Dropping it kills the process.
pub struct RelayProcess {
    child: Child,
    pid: u32,
}

/// The relay's memory, from `/proc/<pid>/status`, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    /// Peak resident set size (`VmHWM`).
    pub peak: u64,
}

impl RelayProcess {
    /// Starts the relay against `kurrentdb` and `postgres_url`, with
    /// `extra` variables set last so that they override the bench's.
    pub fn spawn(
        kurrentdb: &str,
        postgres_url: &str,
        extra: &[(String, String)],
    ) -> Result<RelayProcess> {
        let mut command = Command::new(relay_binary()?);
        command
            .arg("run")
            .env_remove("OUTBOX_RELAY_CONFIG")
            .env("OUTBOX_RELAY__KURRENTDB__CONNECTION_STRING", kurrentdb)
            .env("OUTBOX_RELAY__POSTGRES__URL", postgres_url)
            .env("OUTBOX_RELAY__HTTP__LISTEN", "127.0.0.1:0")
            .env("OUTBOX_RELAY__LOG__LEVEL", "warn")
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let child = command.spawn().context("starting outbox-relay")?;
        let pid = child.id().context("the relay exited at once")?;
        Ok(RelayProcess { child, pid })
    }

    /// The process id, for `perf record -p` and the like.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Fails if the relay has exited (it should run until stopped).
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("the relay exited early: {status}"),
            None => Ok(()),
        }
    }

    /// Reads the relay's peak resident memory.
    pub fn memory(&self) -> Result<Memory> {
        let path = format!("/proc/{}/status", self.pid);
        let status = std::fs::read_to_string(&path).with_context(|| path.clone())?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} missing from {path}"))?;
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .with_context(|| format!("unreadable {line:?}"))?;
            Ok(kib * 1024)
        };
        Ok(Memory {
            peak: field("VmHWM:")?,
        })
    }

    /// Asks the relay to stop (SIGTERM) and waits; kills it if it takes
    /// longer than [`STOP_TIMEOUT`].
    pub async fn stop(mut self) -> Result<()> {
        let pid = libc::pid_t::try_from(self.pid)?;
        // SAFETY: kill(2) with a pid we started and have not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!("the relay stopped with {status}");
                }
                Ok(())
            }
            Err(_) => {
                self.child.kill().await?;
                bail!("the relay did not stop within {STOP_TIMEOUT:?}; killed")
            }
        }
    }
}
