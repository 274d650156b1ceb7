//! End-to-end verdicts for the mistakes producers make: each kind of bad
//! event is appended to an emulated KurrentDB between good orders, the relay
//! runs in this process against a PostgreSQL database of the test's own, and
//! the test checks three things per event: what the group was told (ack, or
//! nack with the poison action and reason), the `dead_letters` row with its
//! reason code and exact payload, and that every good order around it was
//! written. Cases of one kind share one relay run.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use kurrentdb::{
    DeleteStreamOptions, PersistentSubscriptionOptions, StreamPosition,
    SubscribeToPersistentSubscriptionOptions, TombstoneStreamOptions,
};
use kurrentdb_emulator::{NewEvent, Outcome, Server, Store as EventStore};
use outbox_relay::config::{PoisonAction, Settings};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

const GROUP_STREAM: &str = "$ce-order";
const GROUP: &str = "fulfillment";
const JSON: &str = "application/json";
const BINARY: &str = "application/octet-stream";
const MIB: usize = 1024 * 1024;

use Expect::{Ignored, Poison, Written};

/// What the relay should decide about one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Acked, and its order is in `order_fulfillment`.
    Written,
    /// Nacked with the poison action and recorded with this reason code.
    Poison(&'static str),
    /// Acked, and neither written nor recorded.
    Ignored,
}

/// One event and the verdict it should get.
struct Case {
    name: &'static str,
    stream: String,
    event: NewEvent,
    expect: Expect,
}

/// A valid order for `order_id`, in the tutorial's shape.
fn order(order_id: &str) -> Value {
    json!({
        "orderId": order_id,
        "customerId": "customer-1",
        "checkoutOfCart": "cart-1@3",
        "lineItems": [line("USD601.05", json!(2))],
        "shipping": {"method": "express", "address": {"country": "NL"}},
        "billing": {"paymentMethod": "wireTransfer"},
        "at": "2025-01-01T01:11:30.976938+00:00"
    })
}

fn line(price: &str, quantity: Value) -> Value {
    json!({
        "productId": "p-1", "productName": "Lamp",
        "quantity": quantity, "pricePerUnit": price, "taxRate": 0.21
    })
}

fn stream_of(name: &str) -> String {
    format!("order-{name}")
}

/// A valid order in stream `order-<name>`, changed by `edit`.
fn edited(name: &'static str, expect: Expect, edit: impl FnOnce(&mut Value)) -> Case {
    let stream = stream_of(name);
    let mut data = order(&stream);
    edit(&mut data);
    Case {
        name,
        stream,
        event: NewEvent::json("order-placed", &data),
        expect,
    }
}

/// An `order-placed` event with exactly these bytes and content type.
fn raw(name: &'static str, content_type: &str, data: &[u8], expect: Expect) -> Case {
    Case {
        name,
        stream: stream_of(name),
        event: NewEvent {
            id: Uuid::new_v4(),
            event_type: "order-placed".into(),
            content_type: content_type.into(),
            data: data.to_vec(),
            metadata: Vec::new(),
        },
        expect,
    }
}

/// A valid order for `stream` whose compact JSON is exactly `size` bytes,
/// padded with an unknown `note` field.
fn order_of_size(stream: &str, size: usize) -> Vec<u8> {
    let mut data = order(stream);
    data["note"] = json!("");
    let base = data.to_string().len();
    data["note"] = json!("x".repeat(size - base));
    let bytes = data.to_string().into_bytes();
    assert_eq!(bytes.len(), size);
    bytes
}

/// `value` wrapped in `depth` arrays.
fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

/// One relay run over a list of cases, each preceded by a good order.
struct Run {
    db: TestDb,
    emulator: Server,
    cases: Vec<Case>,
    good: Vec<(String, Uuid)>,
    /// The `$ce-order` link id of each appended event, by event id.
    links: HashMap<(String, Uuid), Uuid>,
    poison_action: &'static str,
}

/// Appends a good order, then the case's event, for every case, and one
/// good order last; runs the relay until every event is settled.
async fn run(cases: Vec<Case>, tweak: impl FnOnce(&mut Settings)) -> Run {
    let db = TestDb::create().await;
    let store = EventStore::new();
    let mut good = Vec::new();
    let mut append_good = |i: usize| {
        let stream = format!("order-good-{i}");
        let event = NewEvent::json("order-placed", &order(&stream));
        good.push((stream.clone(), event.id));
        store.append(&stream, vec![event]).unwrap();
    };
    for (i, case) in cases.iter().enumerate() {
        append_good(i);
        store
            .append(&case.stream, vec![case.event.clone()])
            .unwrap();
    }
    append_good(cases.len());
    let links = link_ids(&store);

    let emulator = start_emulator(store).await;
    let mut s = settings(&emulator.connection_string(), &db);
    tweak(&mut s);
    let poison_action = match s.relay.poison_action {
        PoisonAction::Skip => "skip",
        PoisonAction::Park => "park",
    };
    let relay = RunningRelay::start(s);
    let all = links.len();
    assert!(settled(&emulator, all).await, "every event settled");
    relay.stop().await.unwrap();

    Run {
        db,
        emulator,
        cases,
        good,
        links,
        poison_action,
    }
}

/// The id of each `$ce-order` link, keyed by its target's stream and id.
fn link_ids(store: &EventStore) -> HashMap<(String, Uuid), Uuid> {
    let mut links = HashMap::new();
    for link in store.read_stream(GROUP_STREAM) {
        let Some((revision, stream)) = link.link_target() else {
            continue;
        };
        let target = store.read_stream(stream);
        let found = target.iter().find(|e| e.revision == revision);
        if let Some(event) = found {
            links.insert((stream.to_owned(), event.id), link.id);
        }
    }
    links
}

/// A KurrentDB client of the emulator, acting as another producer or
/// consumer.
fn client_of(emulator: &Server) -> kurrentdb::Client {
    let settings = emulator.connection_string().parse().unwrap();
    kurrentdb::Client::new(settings).unwrap()
}

/// Waits until at least `n` settlements were received and none is pending.
async fn settled(emulator: &Server, n: usize) -> bool {
    let store = emulator.store();
    wait_until(Duration::from_secs(30), || {
        let stats = store.group_stats(GROUP_STREAM, GROUP);
        async move { stats.is_some_and(|s| s.in_flight == 0 && s.settled.len() >= n) }
    })
    .await
}

/// Every settlement the group received for a link id.
fn outcomes(emulator: &Server, link: Uuid) -> Vec<Outcome> {
    let stats = emulator.store().group_stats(GROUP_STREAM, GROUP).unwrap();
    let mine = stats.settled.into_iter().filter(|s| s.event_id == link);
    mine.map(|s| s.outcome).collect()
}

/// How many rows came from the event `id` in `stream`.
async fn rows_from(db: &TestDb, id: Uuid, stream: &str) -> i64 {
    let sql = "SELECT count(*) FROM order_fulfillment \
               WHERE source_event_id = $1 AND source_stream = $2";
    let client = db.client().await;
    let row = client.query_one(sql, &[&id, &stream]).await.unwrap();
    row.get(0)
}

/// The `(reason, payload)` recorded for an event, if any.
async fn dead_letter(db: &TestDb, id: Uuid, stream: &str) -> Option<(String, Vec<u8>)> {
    let sql = "SELECT reason, payload FROM dead_letters \
               WHERE event_id = $1 AND stream = $2";
    let client = db.client().await;
    let row = client.query_opt(sql, &[&id, &stream]).await.unwrap()?;
    Some((row.get(0), row.get(1)))
}

impl Run {
    /// Checks every case's verdict and that every good order was written;
    /// reports all mismatches at once.
    async fn check(&self) {
        let mut wrong = Vec::new();
        for case in &self.cases {
            if let Err(problem) = self.check_case(case).await {
                wrong.push(format!("{}: {problem}", case.name));
            }
        }
        for (stream, id) in &self.good {
            if rows_from(&self.db, *id, stream).await != 1 {
                wrong.push(format!("good order {stream} was not written"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    async fn check_case(&self, case: &Case) -> Result<(), String> {
        let (id, stream) = (case.event.id, case.stream.as_str());
        let outcomes = outcomes(&self.emulator, self.links[&(stream.into(), id)]);
        let [outcome] = outcomes.as_slice() else {
            let n = outcomes.len();
            return Err(format!("settled {n} times: {outcomes:?}"));
        };
        let rows = rows_from(&self.db, id, stream).await;
        let letter = dead_letter(&self.db, id, stream).await;

        let acked = *outcome == Outcome::Ack;
        let ok = match case.expect {
            Written => acked && rows == 1 && letter.is_none(),
            Ignored => acked && rows == 0 && letter.is_none(),
            Poison(code) => {
                let recorded = letter
                    .as_ref()
                    .is_some_and(|(reason, data)| reason == code && *data == case.event.data);
                rows == 0 && recorded && self.is_poison_nack(outcome, code)
            }
        };
        if ok {
            return Ok(());
        }
        let recorded = letter.map(|l| l.0);
        Err(format!(
            "expected {:?}, got {outcome:?}, {rows} rows, dead letter {recorded:?}",
            case.expect
        ))
    }

    /// Whether the group was told the configured poison action and a
    /// reason starting with `code`.
    fn is_poison_nack(&self, outcome: &Outcome, code: &str) -> bool {
        match outcome {
            Outcome::Nack { action, reason } => {
                action == self.poison_action && reason.starts_with(&format!("{code}: "))
            }
            Outcome::Ack => false,
        }
    }
}

/// Payloads that are not a JSON object, not JSON, not text, empty, too
/// large or too deep are each poison with their own reason; an order of
/// exactly the default 1 MiB limit is written, one byte more is recorded
/// whole.
#[tokio::test]
async fn malformed_payloads_are_poison_with_their_own_reasons() {
    let very_deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let valid = order("order-binary").to_string();
    let cases = vec![
        raw("plain_text", JSON, b"hello", Poison("not_json")),
        raw("cut_short", JSON, br#"{"orderId":"#, Poison("not_json")),
        raw("two_documents", JSON, b"{} {}", Poison("not_json")),
        raw("array", JSON, b"[1,2]", Poison("not_an_object")),
        raw("string", JSON, br#""order""#, Poison("not_an_object")),
        raw("null", JSON, b"null", Poison("not_an_object")),
        raw(
            "binary",
            BINARY,
            valid.as_bytes(),
            Poison("unsupported_content_type"),
        ),
        raw(
            "binary_bytes",
            BINARY,
            &[0, 159, 146, 150, 255],
            Poison("unsupported_content_type"),
        ),
        raw(
            "bad_utf8",
            JSON,
            b"{\"orderId\":\"\xff\xfe\"}",
            Poison("invalid_utf8"),
        ),
        raw("empty", JSON, b"", Poison("empty")),
        raw("blank", JSON, b" \n\t ", Poison("empty")),
        raw(
            "at_size_limit",
            JSON,
            &order_of_size("order-at_size_limit", MIB),
            Written,
        ),
        raw(
            "over_size_limit",
            JSON,
            &order_of_size("order-over_size_limit", MIB + 1),
            Poison("too_large"),
        ),
        edited("too_deep", Poison("too_deep"), |o| o["deep"] = nested(65)),
        edited("deep_at_limit", Written, |o| o["deep"] = nested(63)),
        raw("very_deep", JSON, very_deep.as_bytes(), Poison("too_deep")),
    ];
    run(cases, |_| {}).await.check().await;
}

/// `relay.max_event_bytes` is the size limit the relay applies.
#[tokio::test]
async fn the_configured_size_limit_is_applied() {
    let cases = vec![
        raw("small", JSON, &order_of_size("order-small", 2048), Written),
        raw(
            "large",
            JSON,
            &order_of_size("order-large", 2049),
            Poison("too_large"),
        ),
    ];
    let run = run(cases, |s| s.relay.max_event_bytes = 2048).await;
    run.check().await;
}

/// Missing, null, empty, mistyped or mismatched order ids, wrong quantity
/// types, missing, empty or huge line lists and bad timestamps are poison;
/// unknown fields and timestamps with `Z` or an offset are accepted.
#[tokio::test]
async fn misshapen_orders_are_poison_and_unknown_fields_are_kept() {
    let lines = |n: usize| Value::Array(vec![line("USD1.00", json!(1)); n]);
    let cases = vec![
        edited("id_missing", Poison("missing_field"), |o| {
            o.as_object_mut().unwrap().remove("orderId");
        }),
        edited("id_null", Poison("wrong_type"), |o| {
            o["orderId"] = Value::Null
        }),
        edited("id_empty", Poison("invalid_order_id"), |o| {
            o["orderId"] = json!("")
        }),
        edited("id_number", Poison("wrong_type"), |o| {
            o["orderId"] = json!(42)
        }),
        edited("id_padded", Poison("invalid_order_id"), |o| {
            o["orderId"] = json!(" order-id_padded")
        }),
        edited("id_elsewhere", Poison("order_id_stream_mismatch"), |o| {
            o["orderId"] = json!("order-someone-else")
        }),
        edited("extra_fields", Written, |o| {
            o["channel"] = json!({"name": "web", "tags": ["a"]});
            o["loyaltyPoints"] = json!(12);
        }),
        edited("customer_missing", Poison("missing_field"), |o| {
            o.as_object_mut().unwrap().remove("customerId");
        }),
        edited("customer_blank", Poison("blank_field"), |o| {
            o["customerId"] = json!("  ")
        }),
        edited("shipping_text", Poison("wrong_type"), |o| {
            o["shipping"] = json!("home")
        }),
        edited("qty_string", Poison("wrong_type"), |o| {
            o["lineItems"][0]["quantity"] = json!("5")
        }),
        edited("qty_fraction", Poison("invalid_quantity"), |o| {
            o["lineItems"][0]["quantity"] = json!(5.5)
        }),
        edited("qty_float", Poison("invalid_quantity"), |o| {
            o["lineItems"][0]["quantity"] = json!(5.0)
        }),
        edited("qty_negative", Poison("invalid_quantity"), |o| {
            o["lineItems"][0]["quantity"] = json!(-1)
        }),
        edited("qty_zero", Poison("invalid_quantity"), |o| {
            o["lineItems"][0]["quantity"] = json!(0)
        }),
        edited("lines_missing", Poison("missing_field"), |o| {
            o.as_object_mut().unwrap().remove("lineItems");
        }),
        edited("lines_empty", Poison("no_line_items"), |o| {
            o["lineItems"] = json!([])
        }),
        edited("lines_object", Poison("wrong_type"), |o| {
            o["lineItems"] = json!({})
        }),
        edited("lines_at_limit", Written, |o| o["lineItems"] = lines(1000)),
        edited("lines_huge", Poison("too_many_line_items"), |o| {
            o["lineItems"] = lines(1001)
        }),
        edited("at_offset", Written, |o| {
            o["at"] = json!("2025-01-01T03:11:30+02:00")
        }),
        edited("at_z", Written, |o| o["at"] = json!("2025-01-01T01:11:30Z")),
        edited("at_no_offset", Poison("invalid_timestamp"), |o| {
            o["at"] = json!("2025-01-01T01:11:30")
        }),
        edited("at_impossible", Poison("invalid_timestamp"), |o| {
            o["at"] = json!("2025-02-30T01:11:30Z")
        }),
        edited("at_number", Poison("wrong_type"), |o| {
            o["at"] = json!(1_735_693_890)
        }),
    ];
    let run = run(cases, |_| {}).await;
    run.check().await;

    let sql = "SELECT order_id, extra, placed_at FROM order_fulfillment \
               WHERE order_id IN ('order-extra_fields', 'order-at_offset')";
    let rows = run.db.client().await.query(sql, &[]).await.unwrap();
    for row in rows {
        let (id, extra): (String, Value) = (row.get(0), row.get(1));
        let placed_at: chrono::DateTime<chrono::Utc> = row.get(2);
        if id == "order-extra_fields" {
            assert_eq!(
                extra,
                json!({"channel": {"name": "web", "tags": ["a"]}, "loyaltyPoints": 12})
            );
        } else {
            assert_eq!(placed_at.to_rfc3339(), "2025-01-01T01:11:30+00:00");
        }
    }
}

/// Prices without a currency or amount, in lower case or an unknown
/// currency, negative, too precise, too long, in exponent notation or as a
/// JSON number, and orders mixing currencies or overflowing are poison;
/// exact prices in 0-, 2- and 3-decimal currencies are written exactly.
#[tokio::test]
async fn bad_money_is_poison_and_good_money_is_exact() {
    let price = |p: &'static str| move |o: &mut Value| o["lineItems"][0]["pricePerUnit"] = json!(p);
    let max = line("USD999999999999999.99", json!(i32::MAX));
    let cases = vec![
        edited("no_currency", Poison("invalid_price"), price("601.05")),
        edited("no_amount", Poison("invalid_price"), price("USD")),
        edited("lower_case", Poison("invalid_price"), price("usd601.05")),
        edited("unknown_code", Poison("invalid_price"), price("XYZ601.05")),
        edited("negative", Poison("invalid_price"), price("USD-601.05")),
        edited("too_precise", Poison("invalid_price"), price("USD601.055")),
        edited("yen_cents", Poison("invalid_price"), price("JPY1.5")),
        edited(
            "digits_20",
            Poison("invalid_price"),
            price("USD12345678901234567890"),
        ),
        edited(
            "digits_20_decimals",
            Poison("invalid_price"),
            price("USD123456789012345678.90"),
        ),
        edited("exponent", Poison("invalid_price"), price("USD6.0105e2")),
        edited("json_number", Poison("wrong_type"), |o| {
            o["lineItems"][0]["pricePerUnit"] = json!(601.05)
        }),
        edited("two_currencies", Poison("mixed_currencies"), |o| {
            o["lineItems"] = json!([line("USD1.00", json!(1)), line("EUR1.00", json!(1))])
        }),
        edited("overflowing", Poison("amount_overflow"), |o| {
            o["lineItems"] = Value::Array(vec![max.clone(); 400])
        }),
        edited("tax_above_one", Poison("invalid_tax_rate"), |o| {
            o["lineItems"][0]["taxRate"] = json!(1.5)
        }),
        edited("yen", Written, price("JPY1005")),
        edited("dinar", Written, price("BHD1.005")),
        edited("largest", Written, |o| {
            o["lineItems"] = json!([line("USD999999999999999.99", json!(1))])
        }),
    ];
    let run = run(cases, |_| {}).await;
    run.check().await;

    let totals = [
        ("order-yen", "2432"),                    // 2010 + 422.1 -> 422
        ("order-dinar", "2.432"),                 // 2.010 + 0.4221 -> 0.422
        ("order-largest", "1209999999999999.99"), // 0.21 x -> 210000000000000.00
    ];
    let client = run.db.client().await;
    for (id, want) in totals {
        let sql = "SELECT total FROM order_fulfillment WHERE order_id = $1";
        let total: Decimal = client.query_one(sql, &[&id]).await.unwrap().get(0);
        assert_eq!(total.to_string(), want, "{id}");
    }
}

/// NUL characters anywhere and strings longer than their column allows are
/// poison (parked here, to show the configured action is used); a string
/// exactly at its limit is written.
#[tokio::test]
async fn text_postgres_cannot_store_is_poison() {
    let long_id = format!("order-{}", "i".repeat(251));
    let mut long_order = order(&long_id);
    long_order["customerId"] = json!("c");
    let cases = vec![
        edited("nul_customer", Poison("text_not_storable"), |o| {
            o["customerId"] = json!("a\u{0}b")
        }),
        edited("nul_product", Poison("text_not_storable"), |o| {
            o["lineItems"][0]["productName"] = json!("\u{0}")
        }),
        edited("nul_key", Poison("text_not_storable"), |o| {
            o["shipping"]["x\u{0}"] = json!(1)
        }),
        edited("nul_unknown", Poison("text_not_storable"), |o| {
            o["note"] = json!(["\u{0}"])
        }),
        edited("escaped_nul", Written, |o| o["note"] = json!("\\u0000")),
        edited("customer_long", Poison("text_too_long"), |o| {
            o["customerId"] = json!("c".repeat(257))
        }),
        edited("customer_wide", Poison("text_too_long"), |o| {
            o["customerId"] = json!("é".repeat(129))
        }),
        edited("customer_at_limit", Written, |o| {
            o["customerId"] = json!("é".repeat(128))
        }),
        edited("cart_long", Poison("text_too_long"), |o| {
            o["checkoutOfCart"] = json!("c".repeat(257))
        }),
        edited("product_id_long", Poison("text_too_long"), |o| {
            o["lineItems"][0]["productId"] = json!("p".repeat(257))
        }),
        edited("product_name_long", Poison("text_too_long"), |o| {
            o["lineItems"][0]["productName"] = json!("n".repeat(1025))
        }),
        Case {
            name: "order_id_long",
            stream: long_id.clone(),
            event: NewEvent::json("order-placed", &long_order),
            expect: Poison("text_too_long"),
        },
    ];
    let run = run(cases, |s| s.relay.poison_action = PoisonAction::Park).await;
    run.check().await;
    let stats = run.emulator.store().group_stats(GROUP_STREAM, GROUP);
    assert_eq!(stats.unwrap().parked, 10, "every poison event is parked");
}

/// Events of other types in an order stream are acked and ignored, even
/// when their payload would be poison for an order.
#[tokio::test]
async fn events_of_other_types_are_ignored() {
    let mut note = raw("noted", JSON, br#"{"note":"x"}"#, Ignored);
    note.event.event_type = "order-note-added".into();
    let mut garbage = raw("shipped", BINARY, &[0xff, 0], Ignored);
    garbage.event.event_type = "order-shipped".into();
    let mut lower = edited("lower_type", Ignored, |_| {});
    lower.event.event_type = "Order-Placed".into();
    run(vec![note, garbage, lower], |_| {}).await.check().await;
}

/// Links in `$ce-order` whose events were deleted (soft) or tombstoned
/// arrive without a resolved event: they are acked and ignored, and the
/// orders around them are written.
#[tokio::test]
async fn links_to_deleted_events_are_acked_and_ignored() {
    let db = TestDb::create().await;
    let store = EventStore::new();
    let names = ["order-kept-1", "order-soft", "order-kept-2", "order-hard"];
    for name in names {
        let event = NewEvent::json("order-placed", &order(name));
        store.append(name, vec![event]).unwrap();
    }
    let links = link_ids(&store);
    let emulator = start_emulator(store).await;
    let client = client_of(&emulator);
    client
        .delete_stream("order-soft", &DeleteStreamOptions::default())
        .await
        .unwrap();
    client
        .tombstone_stream("order-hard", &TombstoneStreamOptions::default())
        .await
        .unwrap();

    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    assert!(settled(&emulator, 4).await);
    relay.stop().await.unwrap();

    for ((stream, _), link) in &links {
        let outcome = outcomes(&emulator, *link);
        assert_eq!(outcome, vec![Outcome::Ack], "{stream}");
    }
    let ids: Vec<String> = db
        .client()
        .await
        .query("SELECT order_id FROM order_fulfillment ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["order-kept-1", "order-kept-2"]);
    assert_eq!(db.dead_letter_count().await, 0);
}

/// Two events for one order with different content: the one later in the
/// stream wins, both when they arrive in stream order and when the earlier
/// one arrives last (held by another consumer until it leaves the group).
#[tokio::test]
async fn the_later_event_in_the_stream_wins_whatever_arrives_first() {
    let db = TestDb::create().await;
    let store = EventStore::new();
    let with_price = |id: &str, price: &str| {
        let mut data = order(id);
        data["lineItems"] = json!([line(price, json!(1))]);
        NewEvent::json("order-placed", &data)
    };
    store
        .append("order-late", vec![with_price("order-late", "USD10.00")])
        .unwrap();
    let emulator = start_emulator(store.clone()).await;

    // Another consumer takes the first event and holds it.
    let client = client_of(&emulator);
    let group = PersistentSubscriptionOptions::default()
        .resolve_link_tos(true)
        .start_from(StreamPosition::Start);
    client
        .create_persistent_subscription(GROUP_STREAM, GROUP, &group)
        .await
        .unwrap();
    let one = SubscribeToPersistentSubscriptionOptions::default().buffer_size(1);
    let mut holder = client
        .subscribe_to_persistent_subscription(GROUP_STREAM, GROUP, &one)
        .await
        .unwrap();
    let held = holder.next().await.unwrap();
    let held_link = held.get_original_event().id;

    // The later event, and an order whose two events arrive in order.
    store
        .append("order-late", vec![with_price("order-late", "USD20.00")])
        .unwrap();
    for price in ["USD10.00", "USD20.00"] {
        let event = with_price("order-inorder", price);
        store.append("order-inorder", vec![event]).unwrap();
    }
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    let store = emulator.store();
    let others = wait_until(Duration::from_secs(30), || {
        let stats = store.group_stats(GROUP_STREAM, GROUP);
        async move { stats.is_some_and(|s| s.settled.len() >= 3) }
    })
    .await;
    assert!(others, "the relay settled the events it was given");

    drop(holder);
    drop(client);
    let redelivered = wait_until(Duration::from_secs(20), || {
        let acked = outcomes(&emulator, held_link) == [Outcome::Ack];
        async move { acked }
    })
    .await;
    assert!(
        redelivered,
        "the held event reached the relay and was acked"
    );
    relay.stop().await.unwrap();

    let sql = "SELECT order_id, total, source_revision \
               FROM order_fulfillment ORDER BY 1";
    let rows = db.client().await.query(sql, &[]).await.unwrap();
    let got: Vec<(String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get::<_, Decimal>(1).to_string(), r.get(2)))
        .collect();
    let want = |id: &str| (id.to_owned(), "24.20".to_owned(), 1);
    assert_eq!(got, [want("order-inorder"), want("order-late")]);
}

/// The same event delivered twice in one batch (two links to it in
/// `$ce-order`) is written once and both deliveries are acked.
#[tokio::test]
async fn the_same_event_twice_in_a_batch_is_written_once() {
    let db = TestDb::create().await;
    let store = EventStore::new();
    for name in ["order-twice", "order-after"] {
        let event = NewEvent::json("order-placed", &order(name));
        store.append(name, vec![event]).unwrap();
    }
    let target = store.read_stream("order-twice").remove(0);
    let again = NewEvent::link_to(&target, Vec::new());
    store.append(GROUP_STREAM, vec![again]).unwrap();
    let links: Vec<Uuid> = store
        .read_stream(GROUP_STREAM)
        .iter()
        .filter(|l| l.link_target() == Some((0, "order-twice")))
        .map(|l| l.id)
        .collect();
    assert_eq!(links.len(), 2);

    let emulator = start_emulator(store).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    assert!(settled(&emulator, 3).await);
    relay.stop().await.unwrap();

    for link in links {
        assert_eq!(outcomes(&emulator, link), [Outcome::Ack]);
    }
    assert_eq!(rows_from(&db, target.id, "order-twice").await, 1);
    assert_eq!(db.order_count().await, 2);
    assert_eq!(db.dead_letter_count().await, 0);
}

/// Event ids are unique only per stream: two orders whose events share an
/// id are both written (`source_event_id` is deliberately not unique), and
/// two poison events sharing an id get a dead-letter row each.
#[tokio::test]
async fn events_sharing_an_id_across_streams_are_each_kept() {
    let shared = Uuid::new_v4();
    let poison = Uuid::new_v4();
    let mut cases = vec![
        edited("same_id_a", Written, |_| {}),
        edited("same_id_b", Written, |o| o["customerId"] = json!("c-2")),
        raw("bad_id_a", JSON, b"[1]", Poison("not_an_object")),
        raw("bad_id_b", JSON, b"{", Poison("not_json")),
    ];
    for (case, id) in cases.iter_mut().zip([shared, shared, poison, poison]) {
        case.event.id = id;
    }
    let run = run(cases, |_| {}).await;
    run.check().await;
    assert_eq!(run.db.dead_letter_count().await, 2);
}

/// A decoded order that PostgreSQL refuses (here through a CHECK an
/// operator added) is dead-lettered as `rejected_by_database`, and the
/// good orders delivered with it are written row by row.
#[tokio::test]
async fn an_order_postgres_refuses_does_not_fail_its_batch() {
    let db = TestDb::create().await;
    let timeout = Duration::from_secs(5);
    let pg = outbox_relay::store::Store::connect(&db.url, 1, timeout).unwrap();
    pg.migrate().await.unwrap();
    let check = "ALTER TABLE order_fulfillment ADD CONSTRAINT no_blocked \
                 CHECK (customer_id <> 'customer-blocked')";
    db.client().await.batch_execute(check).await.unwrap();

    let store = EventStore::new();
    let mut blocked = None;
    for i in 0..7 {
        let stream = format!("order-batch-{i}");
        let mut data = order(&stream);
        if i == 3 {
            data["customerId"] = json!("customer-blocked");
        }
        let event = NewEvent::json("order-placed", &data);
        if i == 3 {
            blocked = Some((stream.clone(), event.clone()));
        }
        store.append(&stream, vec![event]).unwrap();
    }
    let (stream, event) = blocked.unwrap();
    let link = link_ids(&store)[&(stream.clone(), event.id)];
    let emulator = start_emulator(store).await;
    let relay = RunningRelay::start(settings(&emulator.connection_string(), &db));
    assert!(settled(&emulator, 7).await);
    relay.stop().await.unwrap();

    let settled_as = outcomes(&emulator, link);
    let [Outcome::Nack { action, reason }] = settled_as.as_slice() else {
        panic!("the refused order is nacked once");
    };
    assert_eq!(action, "skip");
    assert!(
        reason.starts_with("rejected_by_database: postgres 23514"),
        "{reason}"
    );
    let letter = dead_letter(&db, event.id, &stream).await.unwrap();
    assert_eq!(letter, ("rejected_by_database".into(), event.data));
    assert_eq!(db.order_count().await, 6);
}
