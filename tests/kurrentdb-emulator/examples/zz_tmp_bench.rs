//! Delivery benchmark: events per second the emulator delivers to one
//! persistent-subscription consumer that acks in batches of 100, over
//! HTTP/2 on loopback, on this machine.
//!
//! Run: `cargo run --release -p kurrentdb-emulator --example delivery_bench`
//! (optionally followed by the event count, default 300000).
//!
//! It measures two consumers in turn, each on its own group over the same
//! seeded stream:
//! - a thin gRPC consumer that decodes only the event ids it acks; this is
//!   the emulator's own delivery rate, the figure the README quotes;
//! - the official `kurrentdb` client, which decodes every event fully.
//!   Client, emulator and benchmark share the machine's cores, so this
//!   figure is bounded by the client's decoding as much as by the
//!   emulator.

use std::time::Instant;

use kurrentdb::{
    Client, ClientSettings, PersistentSubscriptionOptions, StreamPosition,
    SubscribeToPersistentSubscriptionOptions,
};
use kurrentdb_emulator::proto::persistent::persistent_subscriptions_client::PersistentSubscriptionsClient;
use kurrentdb_emulator::proto::persistent::{read_req, read_resp, ReadReq};
use kurrentdb_emulator::proto::{StreamIdentifier, Uuid};
use kurrentdb_emulator::{NewEvent, Server, Store};
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Events the consumer may hold.
const BUFFER_SIZE: usize = 500;

/// Ids per ack message.
const ACK_BATCH: usize = 100;

const STREAM: &str = "bench-1";

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
    for group in ["thin", "official"] {
        let options = PersistentSubscriptionOptions::default()
            .start_from(StreamPosition::Start)
            .checkpoint_upper_bound(1000);
        client
            .create_persistent_subscription(STREAM, group, &options)
            .await
            .expect("group created");
    }

    let started = Instant::now();
    if std::env::var("SKIP_THIN").is_err() { thin_consumer(&server, count).await; }
    report("thin gRPC consumer", count, started);

    let started = Instant::now();
    official_consumer(&client, count).await;
    report("official kurrentdb client", count, started);
    server.stop().await;
}

fn report(consumer: &str, count: usize, started: Instant) {
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "{consumer}: {count} events (buffer {BUFFER_SIZE}, acks of \
         {ACK_BATCH}) in {seconds:.2} s = {:.0} events/s",
        count as f64 / seconds
    );
}

/// Only the id of a RecordedEvent; prost skips the other fields.
#[derive(Clone, PartialEq, Message)]
struct IdOnly {
    #[prost(message, optional, tag = "1")]
    id: Option<Uuid>,
}

/// Subscribes with the generated client and acks every `ACK_BATCH` ids.
async fn thin_consumer(server: &Server, count: usize) {
    let url = format!("http://{}", server.addr());
    let mut client = PersistentSubscriptionsClient::connect(url)
        .await
        .expect("connects");
    let (requests, outbound) = mpsc::channel(64);
    let options = read_req::Options {
        stream_option: Some(read_req::options::StreamOption::StreamIdentifier(
            StreamIdentifier {
                stream_name: STREAM.as_bytes().to_vec(),
            },
        )),
        group_name: "thin".to_owned(),
        buffer_size: BUFFER_SIZE as i32,
        uuid_option: None,
    };
    send(&requests, read_req::Content::Options(options)).await;
    let mut inbound = client
        .read(ReceiverStream::new(outbound))
        .await
        .expect("subscribed")
        .into_inner();

    let mut batch = Vec::with_capacity(ACK_BATCH);
    let mut received = 0;
    while received < count {
        let response = inbound.message().await.expect("alive").expect("open");
        let Some(read_resp::Content::Event(event)) = response.content else {
            continue;
        };
        let id = IdOnly::decode(event.event.as_slice()).expect("an id");
        batch.push(id.id.expect("an id"));
        received += 1;
        if batch.len() == ACK_BATCH {
            let ids = std::mem::replace(&mut batch, Vec::with_capacity(ACK_BATCH));
            let ack = read_req::Ack {
                id: Vec::new(),
                ids,
            };
            send(&requests, read_req::Content::Ack(ack)).await;
        }
    }
}

async fn send(requests: &mpsc::Sender<ReadReq>, content: read_req::Content) {
    let request = ReadReq {
        content: Some(content),
    };
    requests.send(request).await.expect("request sent");
}

/// Subscribes with the official client and acks every `ACK_BATCH` ids.
async fn official_consumer(client: &Client, count: usize) {
    let options = SubscribeToPersistentSubscriptionOptions::default().buffer_size(BUFFER_SIZE);
    let mut sub = client
        .subscribe_to_persistent_subscription(STREAM, "official", &options)
        .await
        .expect("subscribed");
    let mut batch = Vec::with_capacity(ACK_BATCH);
    for _ in 0..count {
        let event = sub.next().await.expect("an event");
        batch.push(event.get_original_event().id);
        if batch.len() == ACK_BATCH {
            sub.ack_ids(batch.drain(..)).await.expect("acked");
        }
    }
}

/// An order payload of about 200 bytes, like the relay's.
fn seed(store: &Store, count: usize) {
    let events = (0..count)
        .map(|i| {
            let order = json!({
                "order_id": format!("ord-{i:08}"),
                "customer_id": "cust-0001",
                "total": "129.90",
                "currency": "EUR",
                "lines": [{"sku": "sku-1", "qty": 2, "price": "64.95"}]
            });
            NewEvent::json("order-placed", &order)
        })
        .collect();
    store.append(STREAM, events).expect("seeded");
}
