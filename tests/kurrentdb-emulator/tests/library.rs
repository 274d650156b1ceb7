//! The library API the relay's tests use directly, without a client.

use kurrentdb_emulator::{NewEvent, Store};
use serde_json::json;

/// A seed file appends its streams in order, JSON data as compact JSON and
/// non-JSON string data as raw bytes, and categorises them into `$ce-`.
#[test]
fn seed_files_append_streams_and_category_links() {
    let path = std::env::temp_dir().join(format!("seed-{}.json", uuid::Uuid::new_v4()));
    let seed = json!([
        {"stream": "order-1", "events": [
            {"id": "6f6c2f5e-7f5e-4b8e-9d7a-1c2b3d4e5f60", "type": "OrderPlaced",
             "content-type": "application/json", "data": {"total": 10}},
            {"type": "Note", "content-type": "text/plain", "data": "hello"}
        ]},
        {"stream": "order-2", "events": [
            {"type": "OrderPlaced", "content-type": "application/json", "data": [1, 2]}
        ]}
    ]);
    std::fs::write(&path, seed.to_string()).unwrap();

    let store = Store::new();
    assert_eq!(store.seed_file(&path).unwrap(), 3);
    std::fs::remove_file(&path).unwrap();

    let order = store.read_stream("order-1");
    assert_eq!(order[0].data, br#"{"total":10}"#);
    assert_eq!(
        order[0].id.to_string(),
        "6f6c2f5e-7f5e-4b8e-9d7a-1c2b3d4e5f60"
    );
    assert_eq!(order[1].data, b"hello");
    let links: Vec<_> = store
        .read_stream("$ce-order")
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(
        links,
        [
            b"0@order-1".to_vec(),
            b"1@order-1".to_vec(),
            b"0@order-2".to_vec()
        ]
    );
}

/// Appends return the last revision; system streams are not categorised;
/// unknown groups have no stats.
#[test]
fn appends_return_the_last_revision_and_skip_system_streams() {
    let store = Store::new();
    let events = vec![
        NewEvent::json("A", &json!(1)),
        NewEvent::json("A", &json!(2)),
    ];
    assert_eq!(store.append("cart-9", events).unwrap(), 1);
    store
        .append("$system-x", vec![NewEvent::json("A", &json!(3))])
        .unwrap();

    assert_eq!(store.read_stream("$ce-cart").len(), 2);
    assert!(store.read_stream("$ce-$system").is_empty());
    assert!(store.read_stream("missing").is_empty());
    assert!(store.group_stats("cart-9", "none").is_none());
}

/// A data directory whose journal ends in a torn line (a crash mid-write)
/// reopens with every complete change, and later writes follow them.
#[test]
fn a_torn_journal_line_is_cut_off_on_reopen() {
    let dir = std::env::temp_dir().join(format!("emulator-lib-{}", uuid::Uuid::new_v4()));
    let store = Store::open(&dir).unwrap();
    store
        .append("order-1", vec![NewEvent::json("A", &json!(1))])
        .unwrap();
    drop(store);
    let journal = dir.join("log.jsonl");
    let mut text = std::fs::read(&journal).unwrap();
    text.extend_from_slice(br#"{"op":"write","stream":"ord"#);
    std::fs::write(&journal, text).unwrap();

    let store = Store::open(&dir).unwrap();
    assert_eq!(store.read_stream("order-1").len(), 1);
    store
        .append("order-1", vec![NewEvent::json("A", &json!(2))])
        .unwrap();
    drop(store);
    let store = Store::open(&dir).unwrap();
    let data: Vec<_> = store
        .read_stream("order-1")
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(data, [b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(store.read_stream("$ce-order").len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
