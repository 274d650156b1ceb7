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
    let subcommands: [&[&str]; 9] = [
        &["run"],
        &["migrate"],
        &["check-config"],
        &["replay-parked"],
        &["demo"],
        &["seed"],
        &["group"],
        &["group", "create"],
        &["group", "info"],
    ];
    for sub in subcommands {
        let out = Command::new(BIN).args(sub).arg("--help").output().unwrap();
        assert!(out.status.success(), "{sub:?} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: outbox-relay"), "{sub:?}: {text}");
    }
}

/// An invalid value fails `check-config` with the key at fault and a
/// non-zero exit.
#[test]
fn check_config_names_an_invalid_value() {
    let out = Command::new(BIN)
        .arg("check-config")
        .env("OUTBOX_RELAY__HTTP__LISTEN", "nine-one-eight-seven")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("invalid configuration: http.listen"), "{err}");
}

/// Runs the binary against `emulator` and returns its output. Blocks, so
/// callers run on a multi-threaded runtime that keeps the emulator serving.
fn run_against(emulator: &kurrentdb_emulator::Server, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .env(
            "OUTBOX_RELAY__KURRENTDB__CONNECTION_STRING",
            emulator.connection_string(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{args:?}: {stdout}{stderr}");
    stdout
}

/// `group create` creates the configured group once; `group info` then
/// shows its settings and statistics.
#[tokio::test(flavor = "multi_thread")]
async fn group_create_then_info_shows_the_groups_settings() {
    let emulator = seeded_emulator().await;
    let first = run_against(&emulator, &["group", "create"]);
    let second = run_against(&emulator, &["group", "create"]);
    let info = run_against(&emulator, &["group", "info"]);

    assert!(
        first.contains("fulfillment on $ce-order: created"),
        "{first}"
    );
    assert!(second.contains("already exists"), "{second}");
    assert!(info.contains("group: fulfillment\n"), "{info}");
    assert!(info.contains("resolve_links: true\n"), "{info}");
    assert!(info.contains("max_retry_count: 10\n"), "{info}");
    assert!(info.contains("connections: 0\n"), "{info}");
}

/// `group info` on a missing group fails and names it.
#[tokio::test(flavor = "multi_thread")]
async fn group_info_on_a_missing_group_fails_with_its_name() {
    let emulator = start_emulator(kurrentdb_emulator::Store::new()).await;
    let out = Command::new(BIN)
        .args(["group", "info"])
        .env(
            "OUTBOX_RELAY__KURRENTDB__CONNECTION_STRING",
            emulator.connection_string(),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("consumer group fulfillment"), "{err}");
}

/// `seed DIR` appends the tutorial's streams through the official client;
/// seeding again appends nothing.
#[tokio::test(flavor = "multi_thread")]
async fn seed_appends_tutorial_streams_once() {
    let emulator = start_emulator(kurrentdb_emulator::Store::new()).await;
    let dir = tutorial_seed_files()[0].parent().unwrap().to_owned();
    let dir = dir.to_str().unwrap();

    run_against(&emulator, &["seed", dir]);
    run_against(&emulator, &["seed", dir]);

    // The same files loaded straight into an emulator are the reference.
    let reference = kurrentdb_emulator::Store::new();
    let mut streams = Vec::new();
    for file in tutorial_seed_files() {
        reference.seed_file(&file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        for s in json.as_array().unwrap() {
            streams.push(s["stream"].as_str().unwrap().to_string());
        }
    }
    let shape = |events: Vec<kurrentdb_emulator::StoredEvent>| {
        events
            .into_iter()
            .map(|e| (e.id, e.event_type, e.content_type, e.data))
            .collect::<Vec<_>>()
    };
    assert!(streams.len() >= 10, "{streams:?}");
    for stream in &streams {
        let seeded = shape(emulator.store().read_stream(stream));
        let expected = shape(reference.read_stream(stream));
        assert!(!expected.is_empty());
        let ids = |events: &[(uuid::Uuid, String, String, Vec<u8>)]| {
            events.iter().map(|e| e.0).collect::<Vec<_>>()
        };
        assert_eq!(ids(&seeded), ids(&expected), "{stream}");
        assert!(seeded == expected, "{stream}: types or payloads differ");
    }
    assert_eq!(emulator.store().read_stream("$ce-order").len(), 10);
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
        .env("OUTBOX_RELAY__HTTP__LISTEN", "127.0.0.1:0")
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
