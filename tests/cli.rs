//! The `outbox-relay` binary as an operator runs it: a config file, the
//! environment, signals and exit codes.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file
}

/// `check-config` prints the effective settings with passwords masked:
/// file values, overridden by the environment.
#[test]
fn check_config_prints_effective_settings_with_passwords_masked() {
    let file = write_config(
        "[kurrentdb]\ngroup = \"from-file\"\n\
         [postgres]\nurl = \"postgres://app:hunter2@db:5432/orders\"\n",
    );
    let out = Command::new(BIN)
        .args(["--config", file.path().to_str().unwrap(), "check-config"])
        .env("OUTBOX_RELAY__KURRENTDB__STREAM", "$ce-invoice")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("group = \"from-file\""), "{text}");
    assert!(text.contains("stream = \"$ce-invoice\""), "{text}");
    assert!(
        text.contains("postgres://app:****@db:5432/orders"),
        "{text}"
    );
    assert!(!text.contains("hunter2"));
}

/// An unknown key fails with a message naming it, and a non-zero exit.
#[test]
fn check_config_rejects_unknown_keys() {
    let file = write_config("[postgres]\nurll = \"x\"\n");
    let out = Command::new(BIN)
        .args(["--config", file.path().to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("urll"), "{err}");
}

/// Every subcommand answers `--help`.
#[test]
fn every_subcommand_has_help() {
    for sub in ["run", "migrate", "check-config", "replay-parked", "demo"] {
        let out = Command::new(BIN).args([sub, "--help"]).output().unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(!out.stdout.is_empty());
    }
}

/// The binary with a config file relays the tutorial's orders, and exits 0
/// on SIGTERM.
#[tokio::test]
async fn binary_relays_tutorial_orders_and_exits_cleanly_on_sigterm() {
    let db = TestDb::create().await;
    let emulator = seeded_emulator().await;
    let file = write_config(&format!(
        "[kurrentdb]\nconnection_string = \"{}\"\nstream = \"$ce-order\"\n\
         group = \"fulfillment\"\n[postgres]\nurl = \"{}\"\n",
        emulator.connection_string(),
        db.url
    ));
    let mut child = Command::new(BIN)
        .args(["--config", file.path().to_str().unwrap()])
        .env("OUTBOX_RELAY__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let written = wait_until(Duration::from_secs(30), || async {
        db.order_count().await == 10
    })
    .await;
    // SAFETY: sends a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_for_exit(&mut child, Duration::from_secs(15));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(written, "ten orders written; logs:\n{stderr}");
    assert_eq!(status, Some(0), "exit status; logs:\n{stderr}");
    assert!(stderr.contains("\"message\":\"subscribed\""), "{stderr}");
}

fn wait_for_exit(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let started = std::time::Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}
