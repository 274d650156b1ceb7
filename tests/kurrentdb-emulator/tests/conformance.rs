//! Conformance: the official `kurrentdb` client against the emulator.
//! Every test starts its own server on an ephemeral port.

use std::time::Duration;

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, NakAction, PersistentSubscription,
    PersistentSubscriptionEvent, PersistentSubscriptionOptions, ReadStreamOptions, ResolvedEvent,
    StreamPosition, StreamState, SubscribeToPersistentSubscriptionOptions, SystemConsumerStrategy,
};
use kurrentdb_emulator::{NewEvent, Outcome, Server, Store};
use serde_json::json;

/// Generous bound for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(10);

async fn start() -> (Server, Client) {
    let server = Server::start("127.0.0.1:0".parse().unwrap(), Store::new())
        .await
        .expect("emulator starts");
    let client = client_for(&server);
    (server, client)
}

fn client_for(server: &Server) -> Client {
    let settings: ClientSettings = server.connection_string().parse().unwrap();
    Client::new(settings).unwrap()
}

fn events(count: usize) -> Vec<EventData> {
    (0..count)
        .map(|i| EventData::json("OrderPlaced", &json!({ "n": i })).unwrap())
        .collect()
}

fn seed(server: &Server, stream: &str, count: usize) {
    let events = (0..count)
        .map(|i| NewEvent::json("OrderPlaced", &json!({ "n": i })))
        .collect();
    server.store().append(stream, events).unwrap();
}

async fn create(
    client: &Client,
    stream: &str,
    group: &str,
    options: PersistentSubscriptionOptions,
) {
    client
        .create_persistent_subscription(stream, group, &options)
        .await
        .expect("group created");
}

fn from_start() -> PersistentSubscriptionOptions {
    PersistentSubscriptionOptions::default().start_from(StreamPosition::Start)
}

async fn subscribe(client: &Client, stream: &str, group: &str) -> PersistentSubscription {
    client
        .subscribe_to_persistent_subscription(
            stream,
            group,
            &SubscribeToPersistentSubscriptionOptions::default(),
        )
        .await
        .expect("subscribed")
}

/// The next delivered event and its retry count.
async fn next(sub: &mut PersistentSubscription) -> (ResolvedEvent, usize) {
    loop {
        let event = tokio::time::timeout(WAIT, sub.next_subscription_event())
            .await
            .expect("an event arrives in time")
            .expect("the subscription is alive");
        if let PersistentSubscriptionEvent::EventAppeared { retry_count, event } = event {
            return (event, retry_count);
        }
    }
}

/// Polls until `check` holds or fails the test.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client reads the features, appends with every expectation kind,
/// reads forwards and backwards, and sees a missing stream as not found.
#[tokio::test]
async fn appends_and_reads_round_trip_through_the_official_client() {
    let (_server, client) = start().await;
    let info = client.server_info().await.unwrap();
    assert_eq!(info.version().major(), 24);

    let no_stream = AppendToStreamOptions::default().stream_state(StreamState::NoStream);
    let written = client
        .append_to_stream("order-1", &no_stream, events(3))
        .await
        .unwrap();
    assert_eq!(written.next_expected_version, 2);

    let clash = client
        .append_to_stream("order-1", &no_stream, events(1))
        .await;
    assert!(
        matches!(clash, Err(kurrentdb::Error::WrongExpectedVersion { .. })),
        "{clash:?}"
    );
    let exact = AppendToStreamOptions::default().stream_state(StreamState::StreamRevision(2));
    client
        .append_to_stream("order-1", &exact, events(1))
        .await
        .unwrap();

    let mut read = client
        .read_stream("order-1", &ReadStreamOptions::default())
        .await
        .unwrap();
    let mut revisions = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        revisions.push(event.get_original_event().revision);
    }
    assert_eq!(revisions, [0, 1, 2, 3]);

    let backwards = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(2);
    let mut read = client.read_stream("order-1", &backwards).await.unwrap();
    let last = read.next().await.unwrap().unwrap();
    assert_eq!(last.get_original_event().revision, 3);

    let mut missing = client
        .read_stream("nothing-here", &ReadStreamOptions::default())
        .await
        .unwrap();
    assert!(matches!(
        missing.next().await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));
}

/// Appends to `order-*` streams show up in `$ce-order` as links that
/// resolve to the original events.
#[tokio::test]
async fn category_stream_links_resolve_to_the_original_events() {
    let (server, client) = start().await;
    seed(&server, "order-1", 2);
    seed(&server, "order-2", 1);

    let options = ReadStreamOptions::default().resolve_link_tos();
    let mut read = client.read_stream("$ce-order", &options).await.unwrap();
    let mut seen = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        let link = event.link.as_ref().expect("a link");
        let original = event.event.as_ref().expect("resolved");
        assert_eq!(link.event_type, "$>");
        seen.push((original.stream_id().to_owned(), original.revision));
    }
    assert_eq!(
        seen,
        [
            ("order-1".into(), 0),
            ("order-1".into(), 1),
            ("order-2".into(), 0)
        ]
    );
}

/// A second create of the same group is AlreadyExists; subscribing to a
/// group that does not exist is ResourceNotFound.
#[tokio::test]
async fn duplicate_groups_and_missing_groups_are_refused() {
    let (_server, client) = start().await;
    create(&client, "order-1", "g", from_start()).await;

    let again = client
        .create_persistent_subscription("order-1", "g", &from_start())
        .await;
    assert!(
        matches!(again, Err(kurrentdb::Error::ResourceAlreadyExists)),
        "{again:?}"
    );

    let missing = client
        .subscribe_to_persistent_subscription(
            "order-1",
            "nope",
            &SubscribeToPersistentSubscriptionOptions::default(),
        )
        .await;
    assert!(
        matches!(missing, Err(kurrentdb::Error::ResourceNotFound)),
        "{:?}",
        missing.err()
    );
}

/// Acks advance the checkpoint; after a stop and a start over the same
/// store, a new subscriber resumes after the checkpoint.
#[tokio::test]
async fn acked_events_advance_the_checkpoint_and_a_restart_resumes_after_it() {
    let (server, client) = start().await;
    seed(&server, "order-1", 5);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_after(Duration::from_millis(100));
    create(&client, "order-1", "g", options).await;

    let mut sub = subscribe(&client, "order-1", "g").await;
    for expected in 0..5 {
        let (event, retry) = next(&mut sub).await;
        assert_eq!((event.get_original_event().revision, retry), (expected, 0));
        sub.ack(&event).await.unwrap();
    }
    let store = server.store();
    eventually("checkpoint at 4", || {
        store.group_stats("order-1", "g").unwrap().last_checkpoint == Some(4)
    })
    .await;

    let addr = server.addr();
    server.stop().await;
    seed_store(&store, "order-1", 2);
    let server = Server::start(addr, store.clone()).await.unwrap();
    let client = client_for(&server);
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, _) = next(&mut sub).await;
    assert_eq!(event.get_original_event().revision, 5);
}

fn seed_store(store: &Store, stream: &str, count: usize) {
    let events = (0..count)
        .map(|i| NewEvent::json("OrderPlaced", &json!({ "n": i })))
        .collect();
    store.append(stream, events).unwrap();
}

/// Nacking with Retry three times gives four deliveries, with retry
/// counts 0 to 3.
#[tokio::test]
async fn nack_retry_three_times_gives_four_deliveries() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;

    let mut counts = Vec::new();
    for _ in 0..4 {
        let (event, retry) = next(&mut sub).await;
        counts.push(retry);
        if retry < 3 {
            sub.nack(&event, NakAction::Retry, "again").await.unwrap();
        } else {
            sub.ack(&event).await.unwrap();
        }
    }
    assert_eq!(counts, [0, 1, 2, 3]);
    let store = server.store();
    eventually("the ack", || {
        store.group_stats("order-1", "g").unwrap().acked == 1
    })
    .await;
    let stats = store.group_stats("order-1", "g").unwrap();
    assert_eq!((stats.delivered, stats.nacked["retry"]), (4, 3));
}

/// Once retry_count reaches max_retry_count, a Retry nack parks the event
/// with the server's reason text.
#[tokio::test]
async fn reaching_the_max_retry_count_parks_the_event() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    create(&client, "order-1", "g", from_start().max_retry_count(2)).await;
    let mut sub = subscribe(&client, "order-1", "g").await;

    for expected in 0..=2 {
        let (event, retry) = next(&mut sub).await;
        assert_eq!(retry, expected);
        sub.nack(&event, NakAction::Retry, "again").await.unwrap();
    }
    let store = server.store();
    let parked = "$persistentsubscription-order-1::g-parked";
    eventually("a parked event", || store.read_stream(parked).len() == 1).await;
    let link = &store.read_stream(parked)[0];
    assert_eq!(link.data, b"0@order-1");
    let metadata: serde_json::Value = serde_json::from_slice(&link.metadata).unwrap();
    assert_eq!(metadata["reason"], "Reached retry count of 2");
    assert_eq!(store.group_stats("order-1", "g").unwrap().parked, 1);
}

/// A Park nack writes the parked stream; replaying parked messages
/// delivers the event again with retry_count 0 and empties the stream.
#[tokio::test]
async fn parked_events_replay_with_a_fresh_retry_count() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;

    let (event, _) = next(&mut sub).await;
    let original_id = event.get_original_event().id;
    sub.nack(&event, NakAction::Park, "poison").await.unwrap();
    let store = server.store();
    eventually("parking", || {
        store.group_stats("order-1", "g").unwrap().parked == 1
    })
    .await;

    client
        .replay_parked_messages("order-1", "g", &Default::default())
        .await
        .unwrap();
    let (replayed, retry) = next(&mut sub).await;
    assert_eq!(retry, 0);
    assert_eq!(replayed.event.as_ref().unwrap().id, original_id);
    sub.ack(&replayed).await.unwrap();
    eventually("an empty parked stream", || {
        store.group_stats("order-1", "g").unwrap().parked == 0
    })
    .await;
}

/// An event held past the message timeout comes back with retry_count 1.
#[tokio::test]
async fn message_timeout_redelivers_with_a_higher_retry_count() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    let options = from_start().message_timeout(Duration::from_secs(1));
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;

    let (first, retry) = next(&mut sub).await;
    assert_eq!(retry, 0);
    let (again, retry) = next(&mut sub).await;
    assert_eq!(retry, 1);
    assert_eq!(first.get_original_event().id, again.get_original_event().id);
}

/// Two RoundRobin consumers each get a share of the events.
#[tokio::test]
async fn two_round_robin_consumers_share_the_events() {
    let (server, client) = start().await;
    create(&client, "order-1", "g", from_start()).await;
    let mut a = subscribe(&client, "order-1", "g").await;
    let mut b = subscribe(&client, "order-1", "g").await;
    let store = server.store();
    eventually("two consumers", || {
        store.group_stats("order-1", "g").unwrap().connections == 2
    })
    .await;
    seed(&server, "order-1", 4);

    let mut revisions = Vec::new();
    for sub in [&mut a, &mut b] {
        for _ in 0..2 {
            let (event, _) = next(sub).await;
            revisions.push(event.get_original_event().revision);
            sub.ack(&event).await.unwrap();
        }
    }
    revisions.sort_unstable();
    assert_eq!(revisions, [0, 1, 2, 3]);
}

/// When a consumer goes away, its unacked events go to the other one with
/// retry_count + 1.
#[tokio::test]
async fn a_leaving_consumers_events_go_to_the_other() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    create(&client, "order-1", "g", from_start()).await;
    let mut a = subscribe(&client, "order-1", "g").await;
    let (held, _) = next(&mut a).await;

    let mut b = subscribe(&client, "order-1", "g").await;
    drop(a);
    let (event, retry) = next(&mut b).await;
    assert_eq!(event.get_original_event().id, held.get_original_event().id);
    assert_eq!(retry, 1);
}

/// With resolve-links, a `$ce-` group delivers the original with its link,
/// and acks carry the link's id.
#[tokio::test]
async fn resolved_links_are_acked_by_link_id() {
    let (server, client) = start().await;
    seed(&server, "order-1", 2);
    let options = from_start().resolve_link_tos(true);
    create(&client, "$ce-order", "g", options).await;
    let mut sub = subscribe(&client, "$ce-order", "g").await;

    let mut link_ids = Vec::new();
    for expected in 0..2 {
        let (event, _) = next(&mut sub).await;
        let original = event.event.as_ref().unwrap();
        let link = event.link.as_ref().unwrap();
        assert_eq!(
            (original.stream_id(), original.revision),
            ("order-1", expected)
        );
        assert_eq!(event.get_original_event().id, link.id);
        link_ids.push(link.id);
        sub.ack(&event).await.unwrap();
    }
    let store = server.store();
    eventually("two acks", || {
        store.group_stats("$ce-order", "g").unwrap().acked == 2
    })
    .await;
    let stats = store.group_stats("$ce-order", "g").unwrap();
    let acked: Vec<_> = stats.settled.iter().map(|s| s.event_id).collect();
    assert_eq!(acked, link_ids);
    assert!(stats.settled.iter().all(|s| s.outcome == Outcome::Ack));
    assert_eq!(stats.in_flight, 0);
}

/// Dropping every connection ends the subscription with an error rather
/// than a panic; a new client, and the old one, can subscribe again.
#[tokio::test]
async fn dropped_connections_end_subscriptions_with_an_error() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (_unacked, _) = next(&mut sub).await;

    server.drop_connections().await;
    let ended = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("ends in time");
    assert!(ended.is_err());

    let fresh = client_for(&server);
    let mut sub = subscribe(&fresh, "order-1", "g").await;
    let (event, retry) = next(&mut sub).await;
    assert_eq!((event.get_original_event().revision, retry), (0, 1));
    sub.ack(&event).await.unwrap();

    // The first client reconnects by itself on its next call.
    let mut again = subscribe(&client, "order-1", "g").await;
    seed(&server, "order-1", 2);
    let mut revisions = Vec::new();
    for _ in 0..2 {
        let (event, _) = tokio::select! {
            e = next(&mut sub) => e,
            e = next(&mut again) => e,
        };
        revisions.push(event.get_original_event().revision);
    }
    revisions.sort_unstable();
    assert_eq!(revisions, [1, 2]);
}

/// Streams, groups and checkpoints survive a stop and start over the same
/// store, and a group created from the end delivers only later events.
#[tokio::test]
async fn stop_and_start_keeps_streams_groups_and_checkpoints() {
    let (server, client) = start().await;
    seed(&server, "order-1", 3);
    create(
        &client,
        "order-1",
        "live",
        PersistentSubscriptionOptions::default(),
    )
    .await;
    seed(&server, "order-1", 1);

    let store = server.store();
    let addr = server.addr();
    server.stop().await;
    let server = Server::start(addr, store.clone()).await.unwrap();
    let client = client_for(&server);

    let info = client
        .get_persistent_subscription_info("order-1", "live", &Default::default())
        .await
        .unwrap();
    assert_eq!(info.group_name, "live");
    assert_eq!(store.read_stream("order-1").len(), 4);

    let mut sub = subscribe(&client, "order-1", "live").await;
    seed(&server, "order-1", 1);
    let (event, _) = next(&mut sub).await;
    assert_eq!(event.get_original_event().revision, 4);
}

/// GetInfo reports the connection with its name and in-flight count; a
/// group at its subscriber limit refuses another consumer.
#[tokio::test]
async fn group_info_and_the_subscriber_limit() {
    let (server, _) = start().await;
    let settings: ClientSettings = format!("{}&connectionName=relay-1", server.connection_string())
        .parse()
        .unwrap();
    let client = Client::new(settings).unwrap();
    seed(&server, "order-1", 2);
    let options = from_start()
        .max_subscriber_count(1)
        .consumer_strategy_name(SystemConsumerStrategy::DispatchToSingle);
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    next(&mut sub).await;
    next(&mut sub).await;

    let info = client
        .get_persistent_subscription_info("order-1", "g", &Default::default())
        .await
        .unwrap();
    assert_eq!(info.connections.len(), 1);
    assert_eq!(info.connections[0].connection_name, "relay-1");
    assert_eq!(info.connections[0].in_flight_messages, 2);

    let second = client
        .subscribe_to_persistent_subscription("order-1", "g", &Default::default())
        .await;
    assert!(second.is_err());
}
