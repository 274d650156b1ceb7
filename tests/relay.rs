//! End-to-end: the tutorial's events in an emulated KurrentDB, the relay in
//! this process, rows in a real PostgreSQL database of the test's own.

mod support;

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use kurrentdb_emulator::{NewEvent, Outcome, Server, Store as EventStore};
use rust_decimal::{Decimal, RoundingStrategy};
use support::proxy::Proxy;
use support::*;

const GROUP_STREAM: &str = "$ce-order";
const GROUP: &str = "fulfillment";

/// What the seed files say each order should become.
struct Expected {
    customer: String,
    items: i32,
    total: Decimal,
}

/// Reads the tutorial's orders straight from the seed files, independently
/// of the relay's decoder.
fn expected_orders() -> HashMap<String, Expected> {
    let mut orders = HashMap::new();
    for file in tutorial_seed_files() {
        let text = std::fs::read_to_string(file).unwrap();
        let streams: serde_json::Value = serde_json::from_str(&text).unwrap();
        for stream in streams.as_array().unwrap() {
            for event in stream["events"].as_array().unwrap() {
                if event["type"] != "order-placed" {
                    continue;
                }
                let data = &event["data"];
                let mut total = Decimal::ZERO;
                let items = data["lineItems"].as_array().unwrap();
                for item in items {
                    let price = item["pricePerUnit"].as_str().unwrap();
                    assert!(price.starts_with("USD"));
                    let price = Decimal::from_str(&price[3..]).unwrap();
                    let qty = Decimal::from(item["quantity"].as_i64().unwrap());
                    let rate = Decimal::from_str(&item["taxRate"].to_string()).unwrap();
                    let line = price * qty;
                    let tax = (line * rate)
                        .round_dp_with_strategy(2, RoundingStrategy::MidpointNearestEven);
                    total += line + tax;
                }
                orders.insert(
                    data["orderId"].as_str().unwrap().to_string(),
                    Expected {
                        customer: data["customerId"].as_str().unwrap().into(),
                        items: items.len() as i32,
                        total,
                    },
                );
            }
        }
    }
    assert_eq!(orders.len(), 10, "the tutorial places ten orders");
    orders
}

async fn wait_for_orders(db: &TestDb, n: i64) -> bool {
    wait_until(Duration::from_secs(20), || async {
        db.order_count().await == n
    })
    .await
}

/// Every event the group delivered has been acked or nacked.
async fn wait_until_settled(emulator: &Server, at_least: u64) -> bool {
    let store = emulator.store();
    wait_until(Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            store
                .group_stats(GROUP_STREAM, GROUP)
                .is_some_and(|s| s.in_flight == 0 && s.settled.len() as u64 >= at_least)
        }
    })
    .await
}

fn count_nacks(emulator: &Server, action: &str) -> u64 {
    let stats = emulator.store().group_stats(GROUP_STREAM, GROUP).unwrap();
    stats.nacked.get(action).copied().unwrap_or(0)
}

/// The five seed files, relayed: exactly the ten orders, each with the
/// customer, line-item count and total that the seed data gives.
#[tokio::test]
async fn tutorial_orders_land_in_postgres_with_their_totals() {
    let db = TestDb::create().await;
    let emulator = seeded_emulator().await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));

    assert!(wait_for_orders(&db, 10).await, "ten orders written");
    assert!(wait_until_settled(&emulator, 10).await);
    relay.stop().await.unwrap();

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT order_id, customer_id, line_item_count, total, currency, status \
             FROM order_fulfillment",
            &[],
        )
        .await
        .unwrap();
    let expected = expected_orders();
    assert_eq!(rows.len(), 10);
    for row in rows {
        let order_id: String = row.get(0);
        let want = &expected[&order_id];
        assert_eq!(row.get::<_, String>(1), want.customer, "{order_id}");
        assert_eq!(row.get::<_, i32>(2), want.items, "{order_id}");
        assert_eq!(row.get::<_, Decimal>(3), want.total, "{order_id}");
        assert_eq!(row.get::<_, String>(4).trim(), "USD");
        assert_eq!(row.get::<_, String>(5), "Started");
    }
    assert_eq!(count_nacks(&emulator, "skip"), 0);
    assert_eq!(count_nacks(&emulator, "park"), 0);
}

/// Events of other types in an order stream are acked and leave no row.
#[tokio::test]
async fn events_of_other_types_are_acked_and_ignored() {
    let db = TestDb::create().await;
    let store = EventStore::new();
    let note = NewEvent::json("order-note-added", &serde_json::json!({"note": "x"}));
    store
        .append(
            "order-a1",
            vec![order_event("order-a1", "c-1", &[("USD1.00", 1)])],
        )
        .unwrap();
    store.append("order-a1", vec![note]).unwrap();
    let emulator = start_emulator(store).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));

    assert!(wait_for_orders(&db, 1).await);
    assert!(wait_until_settled(&emulator, 2).await);
    relay.stop().await.unwrap();

    let stats = emulator.store().group_stats(GROUP_STREAM, GROUP).unwrap();
    let acks = stats
        .settled
        .iter()
        .filter(|s| s.outcome == Outcome::Ack)
        .count();
    assert_eq!(acks, 2, "both the order and the note are acked");
}

/// The tutorial's invalid event (`{"thisEvent":"is invalid"}`) is skipped
/// and recorded; the orders around it are written.
#[tokio::test]
async fn invalid_event_is_skipped_and_the_others_are_written() {
    let db = TestDb::create().await;
    let store = EventStore::new();
    let files = tutorial_seed_files();
    store.seed_file(&files[0]).unwrap();
    let invalid = NewEvent::json(
        "order-placed",
        &serde_json::json!({"thisEvent": "is invalid"}),
    );
    store.append("order-invalid", vec![invalid]).unwrap();
    for file in &files[1..] {
        store.seed_file(file).unwrap();
    }
    let emulator = start_emulator(store).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));

    assert!(wait_for_orders(&db, 10).await);
    assert!(wait_until_settled(&emulator, 11).await);
    relay.stop().await.unwrap();

    assert_eq!(count_nacks(&emulator, "skip"), 1);
    assert_eq!(count_nacks(&emulator, "park"), 0);
    assert_eq!(db.dead_letter_count().await, 1);
    let row = db
        .client()
        .await
        .query_one("SELECT stream, payload FROM dead_letters", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "order-invalid");
    assert_eq!(row.get::<_, Vec<u8>>(1), br#"{"thisEvent":"is invalid"}"#);
}

/// Every event delivered a second time (the group deleted and created again
/// from the start): still ten rows, and none of them touched.
#[tokio::test]
async fn redelivered_events_leave_rows_untouched() {
    let db = TestDb::create().await;
    let emulator = seeded_emulator().await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    assert!(wait_for_orders(&db, 10).await);
    assert!(wait_until_settled(&emulator, 10).await);
    relay.stop().await.unwrap();
    let before = updated_at(&db).await;

    let client = kurrentdb::Client::new(emulator.connection_string().parse().unwrap()).unwrap();
    client
        .delete_persistent_subscription(GROUP_STREAM, GROUP, &Default::default())
        .await
        .unwrap();
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    assert!(
        wait_until_settled(&emulator, 10).await,
        "all ten delivered again"
    );
    relay.stop().await.unwrap();

    assert_eq!(db.order_count().await, 10);
    assert_eq!(updated_at(&db).await, before, "no row was rewritten");
}

async fn updated_at(db: &TestDb) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let rows = db
        .client()
        .await
        .query(
            "SELECT order_id, updated_at FROM order_fulfillment ORDER BY order_id",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1))).collect()
}

/// PostgreSQL cut off for a few seconds while orders arrive: nothing is
/// skipped or parked, and every order is there once it is back.
#[tokio::test]
async fn postgres_outage_loses_no_event() {
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let emulator = start_emulator(EventStore::new()).await;
    let mut s = settings(&emulator.connection_string(), &db);
    s.postgres.url = db.url.replace("127.0.0.1:5432", &proxy.addr().to_string());
    s.relay.write_retry_ms = 500;
    s.kurrentdb.max_retry_count = 10;
    let relay = RunningRelay::start(s);

    let events = emulator.store();
    events
        .append(
            "order-b0",
            vec![order_event("order-b0", "c", &[("USD2.00", 1)])],
        )
        .unwrap();
    assert!(wait_for_orders(&db, 1).await);

    proxy.cut();
    for i in 1..=20 {
        let id = format!("order-b{i}");
        events
            .append(&id, vec![order_event(&id, "c", &[("USD2.00", 1)])])
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore().await;

    assert!(
        wait_for_orders(&db, 21).await,
        "every order written after recovery"
    );
    relay.stop().await.unwrap();
    assert_eq!(count_nacks(&emulator, "skip"), 0);
    assert_eq!(count_nacks(&emulator, "park"), 0);
    let stats = emulator.store().group_stats(GROUP_STREAM, GROUP).unwrap();
    assert_eq!(stats.parked, 0);
}

/// A relay started before KurrentDB listens connects once it does.
#[tokio::test]
async fn relay_started_before_the_emulator_connects_when_it_listens() {
    let db = TestDb::create().await;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = RunningRelay::start(settings(&format!("kurrentdb://{addr}?tls=false"), &db));
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let store = EventStore::new();
    for file in tutorial_seed_files() {
        store.seed_file(&file).unwrap();
    }
    let emulator = Server::start(addr, store).await.unwrap();
    assert!(wait_for_orders(&db, 10).await);
    relay.stop().await.unwrap();
    drop(emulator);
}
