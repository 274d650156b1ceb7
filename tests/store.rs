//! The PostgreSQL store against a real server: migrations, the idempotent
//! upsert, dead letters, and how errors are classified.

use std::time::Duration;

use chrono::{DateTime, Utc};
use outbox_relay::order::{decode, DecodeLimits, Order, JSON_CONTENT_TYPE};
use outbox_relay::store::{DeadLetter, EventSource, Store, StoreError, WriteOutcome};
use rust_decimal::Decimal;
use serde_json::json;
use support::TestDb;
use uuid::Uuid;

mod support;

/// A decoded order with the given id, total driven by `price`.
fn order(id: &str, price: &str) -> Order {
    let data = json!({
        "orderId": id,
        "customerId": "customer-1",
        "checkoutOfCart": "cart-1@3",
        "lineItems": [{
            "productId": "p-1", "productName": "Lamp", "quantity": 2,
            "pricePerUnit": format!("USD{price}"), "taxRate": 0.21
        }],
        "shipping": {"method": "express"},
        "billing": {"paymentMethod": "wireTransfer"},
        "at": "2025-01-01T01:11:30.976938+00:00",
        "channel": "web"
    });
    let bytes = serde_json::to_vec(&data).unwrap();
    decode(JSON_CONTENT_TYPE, &bytes, id, &DecodeLimits::default()).unwrap()
}

fn source(stream: &str, position: u64) -> EventSource {
    EventSource {
        event_id: Uuid::new_v4(),
        stream: stream.to_owned(),
        revision: 0,
        position,
    }
}

async fn migrated_store(db: &TestDb) -> Store {
    let store = Store::connect(&db.url, 2, Duration::from_secs(5)).unwrap();
    store.migrate().await.unwrap();
    store
}

/// (total, source_position, updated_at) of one order.
async fn row(db: &TestDb, id: &str) -> (Decimal, i64, DateTime<Utc>) {
    let client = db.client().await;
    let sql = "SELECT total, source_position, updated_at \
               FROM order_fulfillment WHERE order_id = $1";
    let row = client.query_one(sql, &[&id]).await.unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Running the migrations again on a migrated database does nothing.
#[tokio::test]
async fn migrating_twice_is_harmless() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.count_orders().await.unwrap(), 0);
}

/// Two relays migrating the same empty database at once both succeed.
#[tokio::test]
async fn concurrent_migrations_take_turns() {
    let db = TestDb::create().await;
    let a = Store::connect(&db.url, 1, Duration::from_secs(5)).unwrap();
    let b = Store::connect(&db.url, 1, Duration::from_secs(5)).unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    ra.unwrap();
    rb.unwrap();
}

/// A decoded order is stored with exact amounts and its source.
#[tokio::test]
async fn an_order_is_stored_with_exact_amounts() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let src = source("order-1", 7);

    let outcome = store.upsert_order(&order("order-1", "601.05"), &src).await;
    assert_eq!(outcome.unwrap(), WriteOutcome::Inserted);

    let client = db.client().await;
    let sql = "SELECT status, currency, subtotal, tax, total, line_items, \
               line_item_count, extra, source_event_id \
               FROM order_fulfillment WHERE order_id = 'order-1'";
    let r = client.query_one(sql, &[]).await.unwrap();
    assert_eq!(r.get::<_, String>(0), "Started");
    assert_eq!(r.get::<_, String>(1), "USD");
    assert_eq!(r.get::<_, Decimal>(2).to_string(), "1202.10");
    assert_eq!(r.get::<_, Decimal>(3).to_string(), "252.44");
    assert_eq!(r.get::<_, Decimal>(4).to_string(), "1454.54");
    let items: serde_json::Value = r.get(5);
    assert_eq!(items[0]["unitPrice"], "601.05");
    assert_eq!(r.get::<_, i32>(6), 1);
    assert_eq!(r.get::<_, serde_json::Value>(7), json!({"channel": "web"}));
    assert_eq!(r.get::<_, Uuid>(8), src.event_id);
}

/// Redelivering the same event leaves the row, and updated_at, untouched.
#[tokio::test]
async fn redelivery_of_the_same_event_is_unchanged() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let (o, src) = (order("order-1", "10.00"), source("order-1", 3));

    assert_eq!(
        store.upsert_order(&o, &src).await.unwrap(),
        WriteOutcome::Inserted
    );
    let before = row(&db, "order-1").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        store.upsert_order(&o, &src).await.unwrap(),
        WriteOutcome::Unchanged
    );

    assert_eq!(row(&db, "order-1").await, before);
    assert_eq!(store.count_orders().await.unwrap(), 1);
}

/// The event later in the stream wins, whichever arrives first.
#[tokio::test]
async fn later_position_wins_regardless_of_arrival_order() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let (early, late) = (order("order-a", "10.00"), order("order-a", "20.00"));

    // In order: the later event updates the row.
    store
        .upsert_order(&early, &source("order-a", 1))
        .await
        .unwrap();
    let outcome = store.upsert_order(&late, &source("order-a", 2)).await;
    assert_eq!(outcome.unwrap(), WriteOutcome::Updated);
    assert_eq!(row(&db, "order-a").await.1, 2);

    // Out of order: the earlier event arriving second changes nothing.
    let (early, late) = (order("order-b", "10.00"), order("order-b", "20.00"));
    store
        .upsert_order(&late, &source("order-b", 2))
        .await
        .unwrap();
    let outcome = store.upsert_order(&early, &source("order-b", 1)).await;
    assert_eq!(outcome.unwrap(), WriteOutcome::Unchanged);

    for id in ["order-a", "order-b"] {
        let (total, position, _) = row(&db, id).await;
        assert_eq!((total.to_string(), position), ("48.40".into(), 2), "{id}");
    }
}

/// A batch keeps only each order's latest event and reports per input.
#[tokio::test]
async fn a_batch_writes_the_latest_event_per_order() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let (a1, a2, b) = (
        order("order-a", "1.00"),
        order("order-a", "2.00"),
        order("order-b", "3.00"),
    );
    store.upsert_order(&b, &source("order-b", 9)).await.unwrap();

    let batch = [
        (&a2, source("order-a", 5)),
        (&b, source("order-b", 4)),
        (&a1, source("order-a", 3)),
    ];
    let outcomes = store.upsert_orders(&batch).await.unwrap();

    use WriteOutcome::*;
    assert_eq!(outcomes, vec![Inserted, Unchanged, Unchanged]);
    assert_eq!(row(&db, "order-a").await.1, 5);
    assert_eq!(row(&db, "order-b").await.1, 9);
    assert!(store.upsert_orders(&[]).await.unwrap().is_empty());
}

/// The same event twice in one batch is written once; the copy is
/// reported unchanged and the statement does not trip over the duplicate.
#[tokio::test]
async fn the_same_event_twice_in_one_batch_is_written_once() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let o = order("order-a", "1.00");
    let src = source("order-a", 4);

    let batch = [(&o, src.clone()), (&o, src)];
    let outcomes = store.upsert_orders(&batch).await.unwrap();

    use WriteOutcome::*;
    assert_eq!(outcomes, vec![Inserted, Unchanged]);
    assert_eq!(store.count_orders().await.unwrap(), 1);
}

/// Text longer than the decoder allows is refused by the schema too, as a
/// data error the relay treats as poison.
#[tokio::test]
async fn over_long_text_is_refused_by_the_schema() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let mut long = order("order-long", "1.00");
    long.customer_id = "c".repeat(257);

    let err = store
        .upsert_order(&long, &source("order-long", 1))
        .await
        .unwrap_err();

    assert_eq!(err.sqlstate().map(|c| c.code()), Some("23514"));
    assert!(err.is_poison() && !err.is_transient(), "{err:?}");
}

/// Two poison events sharing an id in different streams keep a row each;
/// the same event recorded again still shares one.
#[tokio::test]
async fn dead_letters_are_keyed_by_event_and_stream() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let letter = |stream, payload| DeadLetter {
        event_id: Uuid::nil(),
        stream,
        position: 1,
        event_type: "order-placed",
        reason: "not_json",
        detail: "",
        content_type: "application/json",
        payload,
    };

    store
        .record_dead_letter(&letter("order-a", b"a"))
        .await
        .unwrap();
    store
        .record_dead_letter(&letter("order-b", b"b"))
        .await
        .unwrap();
    store
        .record_dead_letter(&letter("order-b", b"b"))
        .await
        .unwrap();

    let client = db.client().await;
    let sql = "SELECT stream, payload, seen_count FROM dead_letters ORDER BY 1";
    let rows = client.query(sql, &[]).await.unwrap();
    let got: Vec<(String, Vec<u8>, i32)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        got,
        [
            ("order-a".into(), b"a".to_vec(), 1),
            ("order-b".into(), b"b".to_vec(), 2)
        ]
    );
}

/// Recording the same dead letter twice keeps one row and counts both.
#[tokio::test]
async fn dead_letter_recorded_twice_bumps_seen_count() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let payload = br#"{"thisEvent":"is invalid"}"#;
    let letter = DeadLetter {
        event_id: Uuid::new_v4(),
        stream: "order-x",
        position: 12,
        event_type: "order-placed",
        reason: "missing_field",
        detail: "orderId \0 with a NUL",
        content_type: "application/json",
        payload,
    };

    store.record_dead_letter(&letter).await.unwrap();
    store.record_dead_letter(&letter).await.unwrap();

    let client = db.client().await;
    let sql = "SELECT seen_count, payload, reason, last_seen_at > first_seen_at \
               FROM dead_letters";
    let rows = client.query(sql, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 2);
    assert_eq!(rows[0].get::<_, Vec<u8>>(1), payload.to_vec());
    assert_eq!(rows[0].get::<_, String>(2), "missing_field");
    assert!(rows[0].get::<_, bool>(3));
}

/// A server nobody listens on is a transient failure.
#[tokio::test]
async fn closed_port_is_transient() {
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    let store = Store::connect(url, 1, Duration::from_secs(2)).unwrap();
    let err = store.ping().await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert!(!err.is_poison());
}

/// A connection killed by an administrator is a transient failure.
#[tokio::test]
async fn terminated_backend_is_transient() {
    let db = TestDb::create().await;
    let victim = db.client().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    let admin = db.client().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();

    let err = StoreError::from(victim.simple_query("SELECT 1").await.unwrap_err());
    assert!(err.is_transient(), "{err:?}");
    assert!(!err.is_poison());
}

/// Data errors (class 22) are poison, not transient.
#[tokio::test]
async fn data_exception_is_poison_not_transient() {
    let db = TestDb::create().await;
    let client = db.client().await;
    let err = StoreError::from(client.simple_query("SELECT 1/0").await.unwrap_err());
    assert!(err.is_poison(), "{err:?}");
    assert!(!err.is_transient());
    assert_eq!(err.sqlstate().map(|c| c.code()), Some("22012"));
    assert!(err.to_string().contains("22012"), "{err}");
}

/// An order the decoder would refuse is refused by the schema as well.
#[tokio::test]
async fn unstorable_orders_are_poison() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;

    let mut nul = order("order-nul", "1.00");
    nul.customer_id = "a\0b".into();
    let err = store
        .upsert_order(&nul, &source("order-nul", 1))
        .await
        .unwrap_err();
    assert!(err.is_poison() && !err.is_transient(), "{err:?}");

    let mut lower = order("order-lower", "1.00");
    lower.currency = "usd".into();
    let err = store
        .upsert_order(&lower, &source("order-lower", 1))
        .await
        .unwrap_err();
    assert_eq!(err.sqlstate().map(|c| c.code()), Some("23514"));
    assert!(err.is_poison() && !err.is_transient(), "{err:?}");

    let huge = store
        .upsert_order(&order("order-h", "1.00"), &source("o", u64::MAX))
        .await;
    assert!(huge.unwrap_err().is_poison());
}

/// Every tutorial order decodes and is stored once, however often sent.
#[tokio::test]
async fn tutorial_orders_are_stored_once() {
    let db = TestDb::create().await;
    let store = migrated_store(&db).await;
    let mut orders = Vec::new();
    for file in support::tutorial_seed_files() {
        let streams: serde_json::Value =
            serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        for s in streams.as_array().unwrap() {
            for e in s["events"].as_array().unwrap() {
                if e["type"] == "order-placed" {
                    let stream = s["stream"].as_str().unwrap();
                    let data = serde_json::to_vec(&e["data"]).unwrap();
                    let limits = DecodeLimits::default();
                    orders.push(decode(JSON_CONTENT_TYPE, &data, stream, &limits).unwrap());
                }
            }
        }
    }
    let batch: Vec<_> = orders
        .iter()
        .enumerate()
        .map(|(i, o)| (o, source(&o.order_id, i as u64)))
        .collect();

    store.upsert_orders(&batch).await.unwrap();
    let again = store.upsert_orders(&batch).await.unwrap();

    assert!(again.iter().all(|o| *o == WriteOutcome::Unchanged));
    assert_eq!(store.count_orders().await.unwrap(), 10);
    let listed = store.list_orders(3).await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed[0].placed_at >= listed[1].placed_at);
}
