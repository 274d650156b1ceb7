//! Stopping the daemon with signals, as an orchestrator does.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kurrentdb_emulator::Store as EventStore;
use support::proxy::Proxy;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

fn spawn_relay(kurrentdb: &str, postgres: &str, extra: &[(&str, &str)]) -> Child {
    let mut command = Command::new(BIN);
    command
        .arg("run")
        .env("OUTBOX_RELAY__KURRENTDB__CONNECTION_STRING", kurrentdb)
        .env("OUTBOX_RELAY__POSTGRES__URL", postgres)
        .env("OUTBOX_RELAY__KURRENTDB__RECONNECT_MAX_MS", "500")
        .env("OUTBOX_RELAY__HTTP__LISTEN", "127.0.0.1:0")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().unwrap()
}

fn signal(child: &Child) {
    // SAFETY: sends SIGTERM to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

fn wait_for_exit(child: &mut Child, timeout: Duration) -> Option<i32> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

fn append_orders(store: &EventStore, n: usize) {
    for i in 0..n {
        let id = format!("order-t{i}");
        store
            .append(&id, vec![order_event(&id, "c", &[("USD3.00", 1)])])
            .unwrap();
    }
}

/// SIGTERM under load: the relay exits 0, and after a restart the only
/// events delivered twice are those that were in flight (at most the
/// client's buffer).
#[tokio::test]
async fn sigterm_under_load_redelivers_at_most_the_in_flight_events() {
    const ORDERS: usize = 10_000;
    const BUFFER: &str = "64";
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let events = emulator.store();
    append_orders(&events, ORDERS);
    let extra = [("OUTBOX_RELAY__KURRENTDB__BUFFER_SIZE", BUFFER)];

    let mut relay = spawn_relay(&emulator.connection_string(), &db.url, &extra);
    let busy = || async { db.order_count().await >= 1_000 };
    assert!(wait_until(Duration::from_secs(30), busy).await);
    signal(&relay);
    assert_eq!(wait_for_exit(&mut relay, Duration::from_secs(15)), Some(0));
    assert!(db.order_count().await < ORDERS as i64, "stopped mid-stream");

    let mut relay = spawn_relay(&emulator.connection_string(), &db.url, &extra);
    let all = || async { db.order_count().await == ORDERS as i64 };
    assert!(wait_until(Duration::from_secs(60), all).await);
    signal(&relay);
    assert_eq!(wait_for_exit(&mut relay, Duration::from_secs(15)), Some(0));

    let stats = events.group_stats("$ce-order", "fulfillment").unwrap();
    let redelivered = stats.delivered - ORDERS as u64;
    assert!(redelivered <= 64, "{redelivered} redeliveries");
    let unanswered = stats.delivered - stats.settled.len() as u64;
    assert!(unanswered <= 64, "{unanswered} deliveries left unanswered");
}

/// A second SIGTERM while the first is still waiting for in-flight work
/// ends the process at once, with status 130.
#[tokio::test]
async fn second_sigterm_exits_at_once() {
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let emulator = start_emulator(EventStore::new()).await;
    let events = emulator.store();
    append_orders(&events, 10);
    let url = db.url.replace("127.0.0.1:5432", &proxy.addr().to_string());
    let extra = [
        ("OUTBOX_RELAY__RELAY__WRITE_RETRY_MS", "60000"),
        ("OUTBOX_RELAY__POSTGRES__CONNECT_TIMEOUT_MS", "500"),
    ];
    let mut relay = spawn_relay(&emulator.connection_string(), &url, &extra);
    assert!(
        wait_until(Duration::from_secs(30), || async {
            db.order_count().await == 10
        })
        .await
    );

    proxy.cut();
    append_orders(&events, 20);
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(&relay);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        relay.try_wait().unwrap().is_none(),
        "still finishing in-flight work"
    );
    let second = Instant::now();
    signal(&relay);
    assert_eq!(wait_for_exit(&mut relay, Duration::from_secs(5)), Some(130));
    assert!(second.elapsed() < Duration::from_secs(2));
    proxy.restore().await;
}
