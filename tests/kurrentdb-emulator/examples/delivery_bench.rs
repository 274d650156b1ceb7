//! Delivery benchmark: how many events per second the emulator delivers
//! to one persistent-subscription consumer that acks in batches, through
//! the official client, on this machine.
//!
//! Run: `cargo run --release -p kurrentdb-emulator --example delivery_bench`
//! (optionally followed by the event count). Prints one line of figures.

use std::time::Instant;

use kurrentdb::{
    Client, ClientSettings, PersistentSubscriptionOptions, StreamPosition,
    SubscribeToPersistentSubscriptionOptions,
};
use kurrentdb_emulator::{NewEvent, Server, Store};
use serde_json::json;

/// Events the consumer may hold; the relay's order of magnitude.
const BUFFER_SIZE: usize = 500;

/// Ids per ack message.
const ACK_BATCH: usize = 100;

#[tokio::main]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(300_000);
    let store = Store::new();
    seed(&store, count);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), store)
        .await
        .expect("emulator starts");
    let settings: ClientSettings = server.connection_string().parse().unwrap();
    let client = Client::new(settings).unwrap();

    let options = PersistentSubscriptionOptions::default()
        .start_from(StreamPosition::Start)
        .checkpoint_upper_bound(1000);
    client
        .create_persistent_subscription("bench-1", "bench", &options)
        .await
        .expect("group created");
    let options = SubscribeToPersistentSubscriptionOptions::default().buffer_size(BUFFER_SIZE);
    let mut sub = client
        .subscribe_to_persistent_subscription("bench-1", "bench", &options)
        .await
        .expect("subscribed");

    let started = Instant::now();
    let mut batch = Vec::with_capacity(ACK_BATCH);
    for _ in 0..count {
        let event = sub.next().await.expect("an event");
        batch.push(event.get_original_event().id);
        if batch.len() == ACK_BATCH {
            sub.ack_ids(batch.drain(..)).await.expect("acked");
        }
    }
    let elapsed = started.elapsed();
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "delivered {count} events to one consumer (buffer {BUFFER_SIZE}, \
         acks of {ACK_BATCH}) in {:.2} s: {:.0} events/s",
        elapsed.as_secs_f64(),
        rate
    );
    server.stop().await;
}

/// A realistic order payload, about 200 bytes.
fn seed(store: &Store, count: usize) {
    let mut events = Vec::with_capacity(count);
    for i in 0..count {
        events.push(NewEvent::json(
            "order-placed",
            &json!({
                "order_id": format!("ord-{i:08}"),
                "customer_id": "cust-0001",
                "total": "129.90",
                "currency": "EUR",
                "lines": [{"sku": "sku-1", "qty": 2, "price": "64.95"}]
            }),
        ));
    }
    store.append("bench-1", events).expect("seeded");
}
