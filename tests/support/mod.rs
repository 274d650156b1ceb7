//! Shared test fixtures: a database per test, an emulator per test, a relay
//! running in-process, and a TCP proxy that can cut PostgreSQL off.
#![allow(dead_code)]

pub mod pg_instance;
pub mod proxy;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kurrentdb_emulator::{NewEvent, Server, Store as EventStore};
use outbox_relay::config::Settings;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;

/// The server every test uses; each test gets a database of its own.
pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Turns on logs when `TEST_LOG` is set (its value is the filter).
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    }
}

/// A database created for one test and dropped when the value is.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = format!("outbox_test_{}", uuid::Uuid::new_v4().simple());
        admin_execute(&format!("CREATE DATABASE {name}")).await;
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        TestDb { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Number of rows in `order_fulfillment` (0 before migrations ran).
    pub async fn order_count(&self) -> i64 {
        let client = self.client().await;
        match client
            .query_one("SELECT count(*) FROM order_fulfillment", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(_) => 0,
        }
    }

    pub async fn dead_letter_count(&self) -> i64 {
        let client = self.client().await;
        match client
            .query_one("SELECT count(*) FROM dead_letters", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(_) => 0,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((client, conn)) = tokio_postgres::connect(ADMIN_URL, NoTls).await {
                    tokio::spawn(conn);
                    let _ = client.batch_execute(&sql).await;
                }
            });
        })
        .join()
        .ok();
    }
}

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("PostgreSQL at 127.0.0.1:5432");
    tokio::spawn(conn);
    client
}

async fn admin_execute(sql: &str) {
    connect(ADMIN_URL).await.batch_execute(sql).await.unwrap();
}

/// The tutorial's seed files, read from `../shared` beside the repository.
pub fn tutorial_seed_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/tutorial-seed");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 5, "the tutorial has five seed files");
    files
}

/// An emulator on an ephemeral port with the tutorial's seed appended.
pub async fn seeded_emulator() -> Server {
    let store = EventStore::new();
    for file in tutorial_seed_files() {
        store.seed_file(&file).unwrap();
    }
    start_emulator(store).await
}

pub async fn start_emulator(store: EventStore) -> Server {
    Server::start("127.0.0.1:0".parse().unwrap(), store)
        .await
        .unwrap()
}

/// Relay settings for a test: quick reconnects and quick retries.
pub fn settings(connection_string: &str, db: &TestDb) -> Settings {
    let mut s = Settings::default();
    s.kurrentdb.connection_string = connection_string.to_string();
    s.kurrentdb.reconnect_initial_ms = 50;
    s.kurrentdb.reconnect_max_ms = 500;
    s.kurrentdb.checkpoint_after_ms = 100;
    s.postgres.url = db.url.clone();
    s.postgres.connect_timeout_ms = 1_000;
    s.relay.write_retry_ms = 2_000;
    s.relay.shutdown_timeout_ms = 5_000;
    s
}

/// A relay running in this process until [`RunningRelay::stop`].
pub struct RunningRelay {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), outbox_relay::relay::RelayError>>,
}

impl RunningRelay {
    pub fn start(settings: Settings) -> RunningRelay {
        init_logs();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(outbox_relay::relay::run(settings, async move {
            let _ = rx.await;
        }));
        RunningRelay {
            stop: Some(tx),
            task,
        }
    }

    /// Waits (up to 30 s) for the relay to end by itself, as it does on a
    /// fatal error.
    pub async fn finished(mut self) -> Result<(), outbox_relay::relay::RelayError> {
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("relay ends by itself within 30 s")
            .expect("relay task did not panic")
    }

    /// Asks the relay to stop and returns how it ended.
    pub async fn stop(mut self) -> Result<(), outbox_relay::relay::RelayError> {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .expect("relay stops within 15 s")
            .expect("relay task did not panic")
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    while started.elapsed() < timeout {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

/// An `order-placed` event in the tutorial's shape.
pub fn order_event(order_id: &str, customer: &str, prices: &[(&str, i64)]) -> NewEvent {
    let items: Vec<serde_json::Value> = prices
        .iter()
        .enumerate()
        .map(|(i, (price, qty))| {
            serde_json::json!({
                "productId": format!("p{i}"),
                "productName": format!("Product {i}"),
                "quantity": qty,
                "pricePerUnit": price,
                "taxRate": 0.1
            })
        })
        .collect();
    let data = serde_json::json!({
        "orderId": order_id,
        "customerId": customer,
        "checkoutOfCart": "cart-1@3",
        "lineItems": items,
        "shipping": {"address": {"country": "NL", "lines": ["Main 1"]}},
        "billing": {"paymentMethod": "card"},
        "at": "2025-01-01T00:00:00+00:00"
    });
    NewEvent::json("order-placed", &data)
}
