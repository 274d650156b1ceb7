//! The relay as a monitoring system sees it: the binary's `/metrics` and
//! health endpoints, scraped while it runs, and its logs.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_outbox-relay");

/// The relay binary, its stderr lines and the endpoint's address.
struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
    log: Vec<String>,
    _config: tempfile::NamedTempFile,
}

impl Relay {
    fn start(config: &str, envs: &[(&str, &str)]) -> Relay {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(config.as_bytes()).unwrap();
        let mut child = Command::new(BIN)
            .args(["--config", file.path().to_str().unwrap(), "run"])
            .env("OUTBOX_RELAY__LOG__FORMAT", "json")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                if tx.send(line.unwrap_or_default()).is_err() {
                    return;
                }
            }
        });
        Relay {
            child,
            lines: rx,
            log: Vec::new(),
            _config: file,
        }
    }

    /// Waits for the "http endpoint listening" line and returns its address.
    fn http_addr(&mut self) -> SocketAddr {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            self.log.push(line.clone());
            let json: serde_json::Value = match serde_json::from_str(&line) {
                Ok(json) => json,
                Err(_) => continue,
            };
            if json["message"] == "http endpoint listening" {
                return json["addr"].as_str().unwrap().parse().unwrap();
            }
        }
        panic!("no http endpoint line; logs:\n{}", self.log.join("\n"));
    }

    /// Stops the relay with SIGTERM and returns everything it logged.
    fn stop(mut self) -> String {
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        self.log.extend(self.lines.try_iter());
        self.log.join("\n")
    }
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The value of one series in a Prometheus text exposition.
fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn config(kurrentdb: &str, db: &TestDb) -> String {
    format!(
        "[kurrentdb]\nconnection_string = \"{kurrentdb}\"\n\
         reconnect_initial_ms = 50\nreconnect_max_ms = 500\n\
         [postgres]\nurl = \"{}\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\nlag_poll_ms = 100\n",
        db.url
    )
}

/// While the relay runs, `/metrics` counts exactly the rows it wrote, the
/// lag falls to zero, and `/health/ready` and `/health/live` answer 200.
#[tokio::test]
async fn metrics_and_readiness_match_the_rows_written_during_a_run() {
    let db = TestDb::create().await;
    let emulator = seeded_emulator().await;
    let mut relay = Relay::start(&config(&emulator.connection_string(), &db), &[]);
    let addr = relay.http_addr();

    let written = wait_until(Duration::from_secs(30), || async {
        db.order_count().await == 10
    })
    .await;
    let settled = wait_until(Duration::from_secs(10), || async {
        let (_, text) = get(addr, "/metrics");
        sample(&text, "outbox_relay_lag_events") == Some(0.0)
            && sample(&text, "outbox_relay_events_in_flight") == Some(0.0)
    })
    .await;
    let (metrics_status, text) = get(addr, "/metrics");
    let ready = get(addr, "/health/ready");
    let live = get(addr, "/health/live");
    let logs = relay.stop();

    assert!(written, "ten orders written; logs:\n{logs}");
    assert!(settled, "lag and in-flight reach 0:\n{text}");
    assert_eq!(metrics_status, 200);
    let rows = db.order_count().await as f64;
    let count = |name: &str| sample(&text, name).unwrap_or(-1.0);
    assert_eq!(count("outbox_relay_events_written_total"), rows, "{text}");
    assert_eq!(count("outbox_relay_events_duplicate_total"), 0.0);
    assert_eq!(count("outbox_relay_events_poison_total"), 0.0);
    assert_eq!(count("outbox_relay_events_retried_total"), 0.0);
    let received = count("outbox_relay_events_received_total");
    let ignored = count("outbox_relay_events_ignored_total");
    assert_eq!(received, rows + ignored, "every delivery has one verdict");
    assert_eq!(count("outbox_relay_batch_size_sum"), rows);
    assert!(count("outbox_relay_write_duration_seconds_count") >= 1.0);
    let subscribed = "outbox_relay_subscription_state{state=\"subscribed\"}";
    assert_eq!(count(subscribed), 1.0, "{text}");
    assert_eq!(ready, (200, "ready\n".to_string()));
    assert_eq!(live.0, 200);
}

/// Without a KurrentDB to join, the relay is live but not ready, and says
/// why.
#[tokio::test]
async fn relay_without_kurrentdb_is_live_but_not_ready() {
    let db = TestDb::create().await;
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = nowhere.local_addr().unwrap().port();
    drop(nowhere);
    let kurrentdb = format!("kurrentdb://127.0.0.1:{port}?tls=false");
    let mut relay = Relay::start(&config(&kurrentdb, &db), &[]);
    let addr = relay.http_addr();

    let live = get(addr, "/health/live");
    let ready = get(addr, "/health/ready");
    let (_, text) = get(addr, "/metrics");
    relay.stop();

    assert_eq!(live.0, 200);
    assert_eq!(ready.0, 503);
    assert!(ready.1.contains("not subscribed"), "{}", ready.1);
    let subscribed = "outbox_relay_subscription_state{state=\"subscribed\"}";
    assert_eq!(sample(&text, subscribed), Some(0.0), "{text}");
}

/// Neither password appears in the logs, even at debug level with every
/// lifecycle line and per-event line written.
#[tokio::test]
async fn logs_never_print_passwords() {
    let db = TestDb::create().await;
    let emulator = seeded_emulator().await;
    let kurrentdb = emulator
        .connection_string()
        .replace("://", "://admin:kdb-s3cret@");
    let url = db.url.replace("postgres@", "postgres:pg-s3cret@");
    let text = config(&kurrentdb, &db).replace(&db.url, &url);
    let mut relay = Relay::start(&text, &[("RUST_LOG", "debug")]);
    relay.http_addr();

    let written = wait_until(Duration::from_secs(30), || async {
        db.order_count().await == 10
    })
    .await;
    let logs = relay.stop();

    assert!(written, "ten orders written; logs:\n{logs}");
    assert!(logs.contains("\"message\":\"order written\""), "{logs}");
    assert!(logs.contains("admin:****@"), "masked URL logged: {logs}");
    assert!(!logs.contains("kdb-s3cret"), "{logs}");
    assert!(!logs.contains("pg-s3cret"), "{logs}");
}
