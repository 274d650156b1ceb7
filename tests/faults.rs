//! Faults a deployment meets, one at a time: outages, dropped
//! subscriptions, restarts, misconfiguration, panics, several relays.
//! Each test would fail without the behaviour it names.

mod support;

use std::time::{Duration, Instant};

use kurrentdb_emulator::{NewEvent, Outcome, Server, Store as EventStore};
use outbox_relay::config::{PoisonAction, Settings};
use outbox_relay::handler::{Handler, Verdict};
use outbox_relay::order::{DecodeLimits, Order, Poison};
use outbox_relay::source::{self, Delivery};
use outbox_relay::store::Store;
use support::proxy::Proxy;
use support::*;

const GROUP_STREAM: &str = "$ce-order";
const GROUP: &str = "fulfillment";
const PARKED: &str = "$persistentsubscription-$ce-order::fulfillment-parked";

fn append_orders(store: &EventStore, from: usize, to: usize) {
    for i in from..to {
        let id = format!("order-f{i}");
        store
            .append(&id, vec![order_event(&id, "c", &[("USD3.00", 1)])])
            .unwrap();
    }
}

async fn wait_for_orders(db: &TestDb, n: i64, secs: u64) -> bool {
    wait_until(Duration::from_secs(secs), || async {
        db.order_count().await == n
    })
    .await
}

fn nacks(emulator: &Server, action: &str) -> u64 {
    let stats = emulator.store().group_stats(GROUP_STREAM, GROUP).unwrap();
    stats.nacked.get(action).copied().unwrap_or(0)
}

/// An outage far longer than the group's retry budget (one retry, a
/// one-second message timeout) parks nothing: the relay leaves the group
/// while PostgreSQL is down, so the server holds the events.
#[tokio::test]
async fn long_postgres_outage_parks_no_event() {
    let db = TestDb::create().await;
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let emulator = start_emulator(EventStore::new()).await;
    let mut s = settings(&emulator.connection_string(), &db);
    s.postgres.url = db.url.replace("127.0.0.1:5432", &proxy.addr().to_string());
    s.kurrentdb.max_retry_count = 1;
    s.kurrentdb.message_timeout_ms = 1_000;
    s.relay.write_retry_ms = 200;
    let relay = RunningRelay::start(s);
    let events = emulator.store();
    append_orders(&events, 0, 1);
    assert!(wait_for_orders(&db, 1, 20).await);

    proxy.cut();
    append_orders(&events, 1, 30);
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.restore().await;

    assert!(
        wait_for_orders(&db, 30, 30).await,
        "all orders after the outage"
    );
    relay.stop().await.unwrap();
    let stats = events.group_stats(GROUP_STREAM, GROUP).unwrap();
    assert_eq!(stats.parked, 0, "nothing parked");
    assert_eq!(nacks(&emulator, "park") + nacks(&emulator, "skip"), 0);
}

/// Every connection dropped by the server, twice, mid-stream: the relay
/// resubscribes and writes everything.
#[tokio::test]
async fn dropped_connections_are_followed_by_a_new_subscription() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    let events = emulator.store();
    for round in 0..3 {
        append_orders(&events, round * 50, round * 50 + 50);
        assert!(wait_for_orders(&db, (round as i64 + 1) * 50, 20).await);
        emulator.drop_connections().await;
    }
    append_orders(&events, 150, 200);
    assert!(wait_for_orders(&db, 200, 20).await);
    relay.stop().await.unwrap();
}

/// The group deleted under a running relay is created again (from the
/// start; the upsert makes the redelivery harmless).
#[tokio::test]
async fn deleted_group_is_recreated() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    let events = emulator.store();
    append_orders(&events, 0, 20);
    assert!(wait_for_orders(&db, 20, 20).await);

    let client = kurrentdb::Client::new(emulator.connection_string().parse().unwrap()).unwrap();
    client
        .delete_persistent_subscription(GROUP_STREAM, GROUP, &Default::default())
        .await
        .unwrap();
    append_orders(&events, 20, 40);
    assert!(wait_for_orders(&db, 40, 20).await);
    relay.stop().await.unwrap();
    assert!(events.group_stats(GROUP_STREAM, GROUP).is_some());
}

/// The server stops and starts again on the same address with the same
/// data: the relay resumes from the group's checkpoint.
#[tokio::test]
async fn server_restart_is_survived() {
    let db = TestDb::create().await;
    let store = EventStore::new();
    let emulator = start_emulator(store.clone()).await;
    let addr = emulator.addr();
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    append_orders(&store, 0, 20);
    assert!(wait_for_orders(&db, 20, 20).await);

    emulator.stop().await;
    append_orders(&store, 20, 40);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let emulator = Server::start(addr, store).await.unwrap();
    assert!(wait_for_orders(&db, 40, 20).await);
    relay.stop().await.unwrap();
    drop(emulator);
}

/// With `poison_action = "park"`, a poison event is recorded in
/// `dead_letters` and parked; `replay-parked` delivers it again, and it is
/// recorded (seen twice) and parked again, never lost.
#[tokio::test]
async fn parked_poison_is_recorded_and_can_be_replayed() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let events = emulator.store();
    append_orders(&events, 0, 3);
    let bad = NewEvent::json(
        "order-placed",
        &serde_json::json!({"thisEvent": "is invalid"}),
    );
    let bad_id = bad.id;
    events.append("order-bad", vec![bad]).unwrap();
    append_orders(&events, 3, 6);
    let mut s = settings(&emulator.connection_string(), &db);
    s.relay.poison_action = PoisonAction::Park;
    let relay = RunningRelay::start(s.clone());

    assert!(wait_for_orders(&db, 6, 20).await);
    let parked = || events.read_stream(PARKED).len();
    assert!(wait_until(Duration::from_secs(10), || async { parked() == 1 }).await);
    assert_eq!(db.dead_letter_count().await, 1);

    let client = source::connect(&s.kurrentdb).unwrap();
    source::replay_parked(&client, &s.kurrentdb, None)
        .await
        .unwrap();
    let seen_twice = || async {
        let client = db.client().await;
        let row = client
            .query_one(
                "SELECT seen_count FROM dead_letters WHERE event_id = $1",
                &[&bad_id],
            )
            .await
            .unwrap();
        row.get::<_, i32>(0) == 2
    };
    assert!(wait_until(Duration::from_secs(10), seen_twice).await);
    relay.stop().await.unwrap();
    assert_eq!(nacks(&emulator, "park"), 2);
    assert_eq!(db.order_count().await, 6);
}

/// A target table without the unique key the upsert needs stops the relay
/// at start-up, with a message that says so.
#[tokio::test]
async fn table_without_unique_key_stops_the_relay_at_startup() {
    let db = TestDb::create().await;
    let store = Store::connect(&db.url, 1, Duration::from_secs(2)).unwrap();
    store.migrate().await.unwrap();
    db.client()
        .await
        .batch_execute(
            "ALTER TABLE order_fulfillment DROP CONSTRAINT order_fulfillment_order_id_key",
        )
        .await
        .unwrap();
    let emulator = start_emulator(EventStore::new()).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    let err = relay.finished().await.unwrap_err().to_string();
    assert!(err.contains("unique") && err.contains("order_id"), "{err}");
}

/// A TLS setting that does not match the server stops the relay within
/// seconds instead of retrying for ever.
#[tokio::test]
async fn mismatched_tls_setting_stops_the_relay_quickly() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let tls = format!("kurrentdb://{}?tls=true", emulator.addr());
    let started = Instant::now();
    let relay = RunningRelay::start(settings(&tls, &db));
    let err = relay.finished().await.unwrap_err().to_string();
    assert!(err.contains("tls="), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// A KurrentDB that never answers stops the relay once the start-up time
/// has passed, naming the setting.
#[tokio::test]
async fn unreachable_kurrentdb_stops_the_relay_after_the_startup_timeout() {
    let db = TestDb::create().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s = settings(&format!("kurrentdb://{closed}?tls=false"), &db);
    s.kurrentdb.startup_timeout_ms = 1_500;
    let relay = RunningRelay::start(s);
    let err = relay.finished().await.unwrap_err().to_string();
    assert!(err.contains("kurrentdb.startup_timeout_ms"), "{err}");
}

fn panicking_decoder(
    content_type: &str,
    data: &[u8],
    stream: &str,
    limits: &DecodeLimits,
) -> Result<Order, Poison> {
    if stream == "order-boom" {
        panic!("decoder bug");
    }
    outbox_relay::order::decode(content_type, data, stream, limits)
}

fn delivery(stream: &str, data: Vec<u8>, position: u64) -> Delivery {
    let id = uuid::Uuid::new_v4();
    Delivery {
        ack_id: id,
        event_id: id,
        stream: stream.into(),
        revision: 0,
        position,
        event_type: "order-placed".into(),
        content_type: "application/json".into(),
        data: data.into(),
        retry_count: 0,
        resolved: true,
    }
}

/// A panic while handling one event is caught for that event: it becomes
/// a poison verdict (recorded), and the events beside it are written.
#[tokio::test]
async fn handler_panic_is_contained_to_its_event() {
    let db = TestDb::create().await;
    let store = Store::connect(&db.url, 2, Duration::from_secs(2)).unwrap();
    store.migrate().await.unwrap();
    let handler = Handler::new(store, "order-placed", &Settings::default().relay)
        .with_decoder(panicking_decoder);
    let good = |id: &str| {
        let e = order_event(id, "c", &[("USD1.00", 1)]);
        delivery(id, e.data, 0)
    };
    let batch = vec![
        good("order-p1"),
        delivery("order-boom", b"{}".to_vec(), 1),
        good("order-p2"),
    ];
    let boom = batch[1].ack_id;

    let settled = handler.handle(batch).await;

    assert_eq!(settled.len(), 3, "one verdict per event");
    for s in &settled {
        match (&s.verdict, s.ack_id == boom) {
            (Verdict::Ack, false) => {}
            (Verdict::Nack(_, reason), true) => assert!(reason.contains("panic"), "{reason}"),
            other => panic!("unexpected verdict {other:?}"),
        }
    }
    assert_eq!(db.order_count().await, 2);
    assert_eq!(db.dead_letter_count().await, 1);
}

/// Two relays in one group share the events; orders sent twice (a later
/// event with new content) end as one row each with the later content, and
/// concurrent upserts neither deadlock nor duplicate.
#[tokio::test]
async fn two_relays_share_the_group_without_duplicates() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let events = emulator.store();
    let mut s = settings(&emulator.connection_string(), &db);
    s.kurrentdb.buffer_size = 16;
    s.relay.batch_size = 8;
    let first = RunningRelay::start(s.clone());
    let second = RunningRelay::start(s);
    for round in ["USD1.00", "USD2.00"] {
        for i in 0..200 {
            let id = format!("order-s{i}");
            events
                .append(&id, vec![order_event(&id, "c", &[(round, 1)])])
                .unwrap();
        }
    }
    let connected = || async {
        events
            .group_stats(GROUP_STREAM, GROUP)
            .is_some_and(|s| s.connections == 2)
    };
    assert!(wait_until(Duration::from_secs(10), connected).await);
    let settled = || async {
        events
            .group_stats(GROUP_STREAM, GROUP)
            .is_some_and(|s| s.in_flight == 0 && acks(&s.settled) >= 400)
    };
    assert!(wait_until(Duration::from_secs(30), settled).await);
    first.stop().await.unwrap();
    second.stop().await.unwrap();

    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT count(*), count(DISTINCT order_id), min(subtotal)::text \
             FROM order_fulfillment",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 200);
    assert_eq!(row.get::<_, i64>(1), 200);
    assert_eq!(
        row.get::<_, String>(2),
        "2.00",
        "the later event won everywhere"
    );
}

fn acks(settled: &[kurrentdb_emulator::Settlement]) -> usize {
    settled.iter().filter(|s| s.outcome == Outcome::Ack).count()
}

/// Group settings the server would refuse stop the binary before it
/// connects, with the setting named and a non-zero exit.
#[test]
fn invalid_group_settings_stop_the_binary_at_startup() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outbox-relay"))
        .arg("run")
        .env("OUTBOX_RELAY__KURRENTDB__READ_BATCH_SIZE", "5000")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kurrentdb.read_batch_size"), "{err}");
}

/// A group that exists with links unresolved would deliver only bare links
/// and nothing would be written: the relay refuses it at start-up, naming
/// the setting.
#[tokio::test]
async fn group_without_resolved_links_is_refused() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let client = kurrentdb::Client::new(emulator.connection_string().parse().unwrap()).unwrap();
    let options = kurrentdb::PersistentSubscriptionOptions::default()
        .resolve_link_tos(false)
        .start_from(kurrentdb::StreamPosition::Start);
    client
        .create_persistent_subscription(GROUP_STREAM, GROUP, &options)
        .await
        .unwrap();

    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    let err = relay.finished().await.unwrap_err().to_string();
    assert!(err.contains("resolveLinkTos"), "{err}");
}

/// A schema problem only an operator can fix (the table renamed away) makes
/// the relay wait, not burn the events' retries: nothing is parked, and
/// once the table is back every order is written, the later version of an
/// order winning.
#[tokio::test]
async fn missing_table_makes_the_relay_wait_instead_of_parking() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let events = emulator.store();
    let mut s = settings(&emulator.connection_string(), &db);
    s.kurrentdb.max_retry_count = 2;
    s.relay.write_retry_ms = 200;
    let relay = RunningRelay::start(s);
    let v1 = order_event("order-v", "customer-v1", &[("USD1.00", 1)]);
    events.append("order-v", vec![v1]).unwrap();
    assert!(wait_for_orders(&db, 1, 20).await);

    let client = db.client().await;
    client
        .batch_execute("ALTER TABLE order_fulfillment RENAME TO parked_away")
        .await
        .unwrap();
    let v2 = order_event("order-v", "customer-v2", &[("USD1.00", 1)]);
    events.append("order-v", vec![v2]).unwrap();
    append_orders(&events, 0, 10);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        events.read_stream(PARKED).len(),
        0,
        "nothing parked while waiting"
    );
    client
        .batch_execute("ALTER TABLE parked_away RENAME TO order_fulfillment")
        .await
        .unwrap();

    assert!(wait_for_orders(&db, 11, 30).await);
    relay.stop().await.unwrap();
    let row = client
        .query_one(
            "SELECT customer_id FROM order_fulfillment WHERE order_id = 'order-v'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "customer-v2");
    assert_eq!(events.read_stream(PARKED).len(), 0);
}

/// A subscription whose stream ends without an error (which makes the
/// official client panic when it reads on) counts as a dropped
/// subscription: the relay resubscribes and goes on writing.
#[tokio::test]
async fn subscription_ending_without_an_error_is_survived() {
    let db = TestDb::create().await;
    let emulator = start_emulator(EventStore::new()).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    let events = emulator.store();
    append_orders(&events, 0, 20);
    assert!(wait_for_orders(&db, 20, 20).await);

    emulator.end_subscriptions_cleanly().await;
    append_orders(&events, 20, 40);
    assert!(wait_for_orders(&db, 40, 20).await);
    relay.stop().await.unwrap();
}

/// Credentials the server refuses stop the relay at once with a message
/// naming the setting, instead of retrying for ever.
#[tokio::test]
async fn bad_credentials_stop_the_relay_at_once() {
    let db = TestDb::create().await;
    let users = [("admin".to_string(), "changeit".to_string())];
    let addr = "127.0.0.1:0".parse().unwrap();
    let emulator = Server::start_with_users(addr, EventStore::new(), &users)
        .await
        .unwrap();
    let wrong = format!("kurrentdb://admin:wrong@{}?tls=false", emulator.addr());
    let started = Instant::now();
    let relay = RunningRelay::start(settings(&wrong, &db));
    let err = relay.finished().await.unwrap_err().to_string();
    assert!(err.contains("refused access"), "{err}");
    assert!(!err.contains("wrong"), "the password is not printed: {err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let right = format!("kurrentdb://admin:changeit@{}?tls=false", emulator.addr());
    let relay = RunningRelay::start(settings(&right, &db));
    append_orders(&emulator.store(), 0, 3);
    assert!(
        wait_for_orders(&db, 3, 20).await,
        "the right credentials work"
    );
    relay.stop().await.unwrap();
}
