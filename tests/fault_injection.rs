//! The whole system under fire: three relay processes in one consumer
//! group, orders (1% poison) arriving throughout, while relays are killed
//! with SIGKILL and restarted, PostgreSQL is restarted, and the server
//! drops every connection. Afterwards nothing may be lost or doubled.
//!
//! The test prints its figures on standard error whether it passes or not.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kurrentdb_emulator::{NewEvent, Outcome, Server, Store as EventStore};
use support::pg_instance::PgInstance;
use support::*;

const ORDERS: usize = 20_000;
const POISON_EVERY: usize = 100;
const CHUNKS: usize = 20;
const RELAYS: usize = 3;

/// What happens after each chunk of orders is appended.
#[derive(Debug, Clone, Copy)]
enum Chaos {
    Nothing,
    KillRelay(usize),
    RestartPostgres,
    DropConnections,
}

fn schedule() -> [Chaos; CHUNKS] {
    use Chaos::*;
    [
        Nothing,
        KillRelay(0),
        DropConnections,
        RestartPostgres,
        KillRelay(1),
        Nothing,
        DropConnections,
        KillRelay(2),
        RestartPostgres,
        Nothing,
        KillRelay(0),
        DropConnections,
        Nothing,
        RestartPostgres,
        KillRelay(1),
        Nothing,
        Nothing,
        Nothing,
        Nothing,
        Nothing,
    ]
}

struct Relay {
    child: Child,
    log: PathBuf,
    starts: usize,
}

impl Relay {
    fn spawn(index: usize, kurrentdb: &str, postgres: &str, logs: &std::path::Path) -> Relay {
        let log = logs.join(format!("relay-{index}.log"));
        let child = spawn_process(kurrentdb, postgres, &log);
        Relay {
            child,
            log,
            starts: 1,
        }
    }

    fn kill_and_restart(&mut self, kurrentdb: &str, postgres: &str) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn_process(kurrentdb, postgres, &self.log);
        self.starts += 1;
    }

    fn terminate(&mut self) -> Option<i32> {
        // SAFETY: sends SIGTERM to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_process(kurrentdb: &str, postgres: &str, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("run")
        .env("OUTBOX_RELAY__KURRENTDB__CONNECTION_STRING", kurrentdb)
        .env("OUTBOX_RELAY__POSTGRES__URL", postgres)
        .env("OUTBOX_RELAY__POSTGRES__CONNECT_TIMEOUT_MS", "1000")
        .env("OUTBOX_RELAY__KURRENTDB__RECONNECT_MAX_MS", "1000")
        .env("OUTBOX_RELAY__RELAY__WRITE_RETRY_MS", "2000")
        .env("OUTBOX_RELAY__HTTP__LISTEN", "127.0.0.1:0")
        .env("OUTBOX_RELAY__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Appends orders `from..to`; every hundredth is poison (no `orderId`).
fn append_chunk(store: &EventStore, from: usize, to: usize) {
    for i in from..to {
        if i % POISON_EVERY == POISON_EVERY - 1 {
            let stream = format!("order-poison{i}");
            let bad = serde_json::json!({"customerId": "c", "lineItems": []});
            store
                .append(&stream, vec![NewEvent::json("order-placed", &bad)])
                .unwrap();
        } else {
            let id = format!("order-g{i}");
            let price = format!("USD{}.{:02}", 1 + i % 900, i % 100);
            store
                .append(
                    &id,
                    vec![order_event(
                        &id,
                        "c",
                        &[(price.as_str(), 1 + (i % 5) as i64)],
                    )],
                )
                .unwrap();
        }
    }
}

fn figure(text: String) {
    let _ = writeln!(std::io::stderr(), "fault test: {text}");
}

/// 20k orders, 1% poison, three relays, five SIGKILLs, three PostgreSQL
/// restarts, three dropped-connection storms: every good order written
/// once, every poison event in `dead_letters`, no good event parked or
/// skipped, every relay exits 0 on the final SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_lost_nothing_doubled_under_crashes_outages_and_restarts() {
    let started = Instant::now();
    let pg = PgInstance::start();
    let db_url = pg.url();
    let events = EventStore::new();
    let emulator = Server::start("127.0.0.1:0".parse().unwrap(), events.clone())
        .await
        .unwrap();
    let kdb = emulator.connection_string();
    let logs = std::env::temp_dir().join(format!("outbox-fault-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();

    let mut relays: Vec<Relay> = (0..RELAYS)
        .map(|i| Relay::spawn(i, &kdb, &db_url, &logs))
        .collect();
    let per_chunk = ORDERS / CHUNKS;
    let (mut kills, mut pg_restarts, mut drops) = (0, 0, 0);
    for (chunk, chaos) in schedule().into_iter().enumerate() {
        append_chunk(&events, chunk * per_chunk, (chunk + 1) * per_chunk);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        match chaos {
            Chaos::Nothing => {}
            Chaos::KillRelay(i) => {
                relays[i].kill_and_restart(&kdb, &db_url);
                kills += 1;
            }
            Chaos::RestartPostgres => {
                pg.restart();
                pg_restarts += 1;
            }
            Chaos::DropConnections => {
                emulator.drop_connections().await;
                drops += 1;
            }
        }
    }
    figure(format!(
        "chaos: {kills} SIGKILLs, {pg_restarts} PostgreSQL restarts, {drops} connection drops"
    ));

    let good = ORDERS - ORDERS / POISON_EVERY;
    let poison = ORDERS / POISON_EVERY;
    let db = connect(&db_url).await;
    let quiet = wait_until(Duration::from_secs(180), || async {
        let rows: i64 = db
            .query_one("SELECT count(*) FROM order_fulfillment", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        let letters: i64 = db
            .query_one("SELECT count(*) FROM dead_letters", &[])
            .await
            .map(|r| r.get(0))
            .unwrap_or(0);
        let idle = events
            .group_stats("$ce-order", "fulfillment")
            .is_some_and(|s| s.in_flight == 0);
        rows as usize == good && letters as usize == poison && idle
    })
    .await;
    let quiet_after = started.elapsed();

    let exits: Vec<Option<i32>> = relays.iter_mut().map(Relay::terminate).collect();
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT order_id) FROM order_fulfillment",
            &[],
        )
        .await
        .unwrap();
    let (rows, distinct): (i64, i64) = (row.get(0), row.get(1));
    let letters: Vec<String> = db
        .query("SELECT stream FROM dead_letters", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let stats = events.group_stats("$ce-order", "fulfillment").unwrap();
    let given_up_good = good_events_given_up(&events, &stats.settled);
    let parked = events
        .read_stream("$persistentsubscription-$ce-order::fulfillment-parked")
        .len();

    figure(format!(
        "appended {ORDERS} orders: {good} good, {poison} poison"
    ));
    figure(format!(
        "rows {rows} (distinct {distinct}), lost {}",
        good as i64 - distinct
    ));
    figure(format!("dead letters {}", letters.len()));
    figure(format!(
        "deliveries {} (redelivered {}), acks {}, nacks {:?}",
        stats.delivered,
        stats.delivered.saturating_sub(ORDERS as u64),
        stats.acked,
        stats.nacked
    ));
    figure(format!(
        "good events skipped or parked: {given_up_good}; parked stream: {parked}"
    ));
    figure(format!(
        "relay starts {:?}; final exit codes {exits:?}; quiet after {:.1} s",
        relays.iter().map(|r| r.starts).collect::<Vec<_>>(),
        quiet_after.as_secs_f64()
    ));
    figure(format!("relay logs in {}", logs.display()));

    assert!(quiet, "the system went quiet with everything written");
    assert_eq!(distinct, good as i64, "no good order lost");
    assert_eq!(rows, distinct, "no order twice");
    let poison_streams: HashSet<&str> = letters.iter().map(String::as_str).collect();
    assert_eq!(poison_streams.len(), poison, "every poison event recorded");
    assert!(poison_streams.iter().all(|s| s.starts_with("order-poison")));
    assert_eq!(given_up_good, 0, "no good event skipped or parked");
    assert_eq!(parked, 0);
    assert!(
        exits.iter().all(|e| *e == Some(0)),
        "every relay exits 0: {exits:?}"
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// Good events among those nacked with Skip or Park, found by following
/// each settled link id to the order stream it points to.
fn good_events_given_up(events: &EventStore, settled: &[kurrentdb_emulator::Settlement]) -> usize {
    let links: std::collections::HashMap<uuid::Uuid, String> = events
        .read_stream("$ce-order")
        .into_iter()
        .filter_map(|l| Some((l.id, l.link_target()?.1.to_string())))
        .collect();
    settled
        .iter()
        .filter(|s| match &s.outcome {
            Outcome::Nack { action, .. } => action == "skip" || action == "park",
            Outcome::Ack => false,
        })
        .filter(|s| {
            links
                .get(&s.event_id)
                .is_some_and(|stream| stream.starts_with("order-g"))
        })
        .count()
}
