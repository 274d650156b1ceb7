//! Conformance: the official `kurrentdb` client against the emulator.
//! Every test starts its own server on an ephemeral port.

use std::time::Duration;

use std::collections::{BTreeMap, BTreeSet};

use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, DeleteStreamOptions, EventData, NakAction,
    PersistentSubscription, PersistentSubscriptionEvent, PersistentSubscriptionOptions,
    PersistentSubscriptionToAllOptions, Position, ReadStreamOptions, ReplayParkedMessagesOptions,
    ResolvedEvent, StreamMetadataResult, StreamPosition, StreamState,
    SubscribeToPersistentSubscriptionOptions, SubscriptionFilter, SystemConsumerStrategy,
    TombstoneStreamOptions,
};
use kurrentdb_emulator::persistent::pinned::bucket_of;
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

async fn subscribe_with_buffer(
    client: &Client,
    stream: &str,
    group: &str,
    buffer: usize,
) -> PersistentSubscription {
    let options = SubscribeToPersistentSubscriptionOptions::default().buffer_size(buffer);
    client
        .subscribe_to_persistent_subscription(stream, group, &options)
        .await
        .expect("subscribed")
}

/// Gives in-flight work a moment, for checks that nothing more happens.
async fn settle_down() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

fn stats(server: &Server, stream: &str, group: &str) -> kurrentdb_emulator::GroupStats {
    server
        .store()
        .group_stats(stream, group)
        .expect("the group")
}

/// Appends to `order-*` streams also link each event into `$et-<type>`.
#[tokio::test]
async fn event_type_streams_link_every_event_of_their_type() {
    let (server, client) = start().await;
    seed(&server, "order-1", 2);
    let store = server.store();
    store
        .append("cart-1", vec![NewEvent::json("CartOpened", &json!({}))])
        .unwrap();

    let options = ReadStreamOptions::default().resolve_link_tos();
    let mut read = client
        .read_stream("$et-OrderPlaced", &options)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = read.next().await.unwrap() {
        let original = event.event.as_ref().expect("resolved");
        seen.push((original.stream_id().to_owned(), original.revision));
    }
    assert_eq!(seen, [("order-1".into(), 0), ("order-1".into(), 1)]);
    assert_eq!(store.read_stream("$et-CartOpened").len(), 1);
}

/// A `$all` group without a filter gets system streams such as `$ce-`
/// links, but never its own checkpoint records.
#[tokio::test]
async fn all_groups_never_see_their_own_checkpoints() {
    let (server, client) = start().await;
    let options = PersistentSubscriptionToAllOptions::default()
        .start_from(StreamPosition::Start)
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    client
        .create_persistent_subscription_to_all("g", &options)
        .await
        .unwrap();
    let mut sub = client
        .subscribe_to_persistent_subscription_to_all("g", &Default::default())
        .await
        .unwrap();
    seed(&server, "order-1", 3);

    let mut streams = BTreeSet::new();
    while !streams.contains("$et-OrderPlaced") || streams.len() < 4 {
        let (event, _) = next(&mut sub).await;
        streams.insert(event.get_original_event().stream_id().to_owned());
        sub.ack(&event).await.unwrap();
    }
    let store = server.store();
    eventually("a checkpoint", || {
        !store
            .read_stream("$persistentsubscription-$all::g-checkpoint")
            .is_empty()
    })
    .await;
    seed(&server, "order-2", 1);
    loop {
        let (event, _) = next(&mut sub).await;
        let stream = event.get_original_event().stream_id().to_owned();
        assert!(
            !stream.starts_with("$persistentsubscription-$all::"),
            "{stream}"
        );
        sub.ack(&event).await.unwrap();
        if stream == "order-2" {
            break;
        }
    }
    assert!(streams.contains("$ce-order"), "{streams:?}");
}

/// A `$all` group filtered by stream-name prefix gets only those streams.
#[tokio::test]
async fn all_groups_apply_a_stream_name_prefix_filter() {
    let (server, client) = start().await;
    let filter = SubscriptionFilter::on_stream_name().add_prefix("order-");
    let options = PersistentSubscriptionToAllOptions::default()
        .start_from(StreamPosition::Start)
        .filter(filter);
    client
        .create_persistent_subscription_to_all("g", &options)
        .await
        .unwrap();
    seed(&server, "cart-1", 2);
    seed(&server, "order-1", 1);
    seed(&server, "cart-2", 1);
    let mut sub = client
        .subscribe_to_persistent_subscription_to_all("g", &Default::default())
        .await
        .unwrap();

    let (event, _) = next(&mut sub).await;
    assert_eq!(event.get_original_event().stream_id(), "order-1");
    settle_down().await;
    assert_eq!(stats(&server, "$all", "g").delivered, 1);
}

/// A `$all` group filtered by an event-type regex gets only those types.
#[tokio::test]
async fn all_groups_apply_an_event_type_regex_filter() {
    let (server, client) = start().await;
    let filter = SubscriptionFilter::on_event_type().regex("^Cart.*d$");
    let options = PersistentSubscriptionToAllOptions::default()
        .start_from(StreamPosition::Start)
        .filter(filter);
    client
        .create_persistent_subscription_to_all("g", &options)
        .await
        .unwrap();
    let store = server.store();
    for kind in ["CartOpened", "CartUpdate", "OrderPlaced", "CartClosed"] {
        store
            .append("cart-1", vec![NewEvent::json(kind, &json!({}))])
            .unwrap();
    }
    let mut sub = client
        .subscribe_to_persistent_subscription_to_all("g", &Default::default())
        .await
        .unwrap();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (event, _) = next(&mut sub).await;
        kinds.push(event.get_original_event().event_type.clone());
    }
    assert_eq!(kinds, ["CartOpened", "CartClosed"]);
    settle_down().await;
    assert_eq!(stats(&server, "$all", "g").delivered, 2);
}

/// Settings the server rejects (read batch not below the history buffer,
/// negative counts) fail the create with the server's reason.
#[tokio::test]
async fn invalid_settings_are_refused_with_the_servers_reason() {
    let (_server, client) = start().await;
    let options = from_start().read_batch_size(50).history_buffer_size(50);
    let refused = client
        .create_persistent_subscription("order-1", "g", &options)
        .await;
    match refused {
        Err(kurrentdb::Error::ServerError(message)) => {
            assert!(message.contains("ReadBatchSize"), "{message}");
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    let negative = from_start().max_retry_count(-1);
    let refused = client
        .create_persistent_subscription("order-1", "g", &negative)
        .await;
    assert!(
        matches!(&refused, Err(kurrentdb::Error::ServerError(m)) if m.contains("non negative")),
        "{refused:?}"
    );
}

/// A group at its subscriber limit answers FailedPrecondition.
#[tokio::test]
async fn a_full_group_refuses_another_subscriber_with_failed_precondition() {
    let (_server, client) = start().await;
    create(
        &client,
        "order-1",
        "g",
        from_start().max_subscriber_count(1),
    )
    .await;
    let _first = subscribe(&client, "order-1", "g").await;
    let second = client
        .subscribe_to_persistent_subscription("order-1", "g", &Default::default())
        .await;
    match second {
        Err(kurrentdb::Error::Grpc { code, .. }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition);
        }
        other => panic!("expected FailedPrecondition, got {:?}", other.err()),
    }
}

/// DispatchToSingle fills the first consumer's buffer before the second
/// gets anything.
#[tokio::test]
async fn dispatch_to_single_fills_the_first_consumer_first() {
    let (server, client) = start().await;
    let options = from_start().consumer_strategy_name(SystemConsumerStrategy::DispatchToSingle);
    create(&client, "order-1", "g", options).await;
    let mut a = subscribe_with_buffer(&client, "order-1", "g", 2).await;
    let mut b = subscribe_with_buffer(&client, "order-1", "g", 2).await;
    eventually("two consumers", || {
        stats(&server, "order-1", "g").connections == 2
    })
    .await;
    seed(&server, "order-1", 3);

    let first = [next(&mut a).await.0, next(&mut a).await.0];
    let revisions: Vec<u64> = first
        .iter()
        .map(|e| e.get_original_event().revision)
        .collect();
    assert_eq!(revisions, [0, 1]);
    assert_eq!(next(&mut b).await.0.get_original_event().revision, 2);
}

/// Pinned keeps each source stream on one consumer; a joining consumer
/// takes over the excess buckets of the first (owned minus its share).
#[tokio::test]
async fn pinned_keeps_streams_on_one_consumer_and_rebalances_on_join() {
    let (server, client) = start().await;
    let options = from_start()
        .resolve_link_tos(true)
        .consumer_strategy_name(SystemConsumerStrategy::Pinned);
    create(&client, "$ce-order", "g", options).await;
    let streams: Vec<String> = (0..40).map(|i| format!("order-{i}")).collect();
    let mut a = subscribe_with_buffer(&client, "$ce-order", "g", 100).await;
    for stream in &streams {
        seed(&server, stream, 1);
    }
    for _ in 0..streams.len() {
        let (event, _) = next(&mut a).await;
        sub_ack(&mut a, &event).await;
    }

    let mut b = subscribe_with_buffer(&client, "$ce-order", "g", 100).await;
    eventually("two consumers", || {
        stats(&server, "$ce-order", "g").connections == 2
    })
    .await;
    for stream in &streams {
        seed(&server, stream, 2);
    }
    let mut owner: BTreeMap<String, BTreeSet<char>> = BTreeMap::new();
    for _ in 0..streams.len() * 2 {
        let (who, event) = tokio::select! {
            (e, _) = next(&mut a) => ('a', e),
            (e, _) = next(&mut b) => ('b', e),
        };
        let stream = event.event.as_ref().unwrap().stream_id().to_owned();
        owner.entry(stream).or_default().insert(who);
        let sub = if who == 'a' { &mut a } else { &mut b };
        sub_ack(sub, &event).await;
    }
    assert!(owner.values().all(|who| who.len() == 1), "{owner:?}");

    let buckets: BTreeSet<usize> = streams.iter().map(|s| bucket_of(s)).collect();
    let moved: BTreeSet<usize> = owner
        .iter()
        .filter(|(_, who)| who.contains(&'b'))
        .map(|(stream, _)| bucket_of(stream))
        .collect();
    assert_eq!(moved.len(), buckets.len() - buckets.len().div_ceil(2));
}

async fn sub_ack(sub: &mut PersistentSubscription, event: &ResolvedEvent) {
    sub.ack(event).await.unwrap();
}

/// A consumer never holds more unacked events than its buffer size.
#[tokio::test]
async fn a_consumer_holds_at_most_its_buffer_size() {
    let (server, client) = start().await;
    seed(&server, "order-1", 5);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe_with_buffer(&client, "order-1", "g", 2).await;
    let (first, _) = next(&mut sub).await;
    next(&mut sub).await;
    settle_down().await;
    assert_eq!(stats(&server, "order-1", "g").delivered, 2);

    sub.ack(&first).await.unwrap();
    let (third, _) = next(&mut sub).await;
    assert_eq!(third.get_original_event().revision, 2);
}

/// A retried event goes out before events not yet delivered.
#[tokio::test]
async fn retries_are_sent_before_new_events() {
    let (server, client) = start().await;
    seed(&server, "order-1", 3);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe_with_buffer(&client, "order-1", "g", 1).await;
    let (event, _) = next(&mut sub).await;
    sub.nack(&event, NakAction::Retry, "later").await.unwrap();
    let (again, retry) = next(&mut sub).await;
    assert_eq!((again.get_original_event().revision, retry), (0, 1));
}

/// Skip lets an event go; Park writes it to the parked stream with the
/// client's reason after the server's prefix.
#[tokio::test]
async fn nack_skip_drops_and_nack_park_parks_with_the_clients_reason() {
    let (server, client) = start().await;
    seed(&server, "order-1", 2);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (skipped, _) = next(&mut sub).await;
    sub.nack(&skipped, NakAction::Skip, "dull").await.unwrap();
    let (parked, _) = next(&mut sub).await;
    sub.nack(&parked, NakAction::Park, "poison").await.unwrap();

    let store = server.store();
    let stream = "$persistentsubscription-order-1::g-parked";
    eventually("a parked event", || store.read_stream(stream).len() == 1).await;
    let link = &store.read_stream(stream)[0];
    assert_eq!(link.data, b"1@order-1");
    let metadata: serde_json::Value = serde_json::from_slice(&link.metadata).unwrap();
    assert_eq!(
        metadata["reason"],
        "Client explicitly NAK'ed message.\npoison"
    );
    settle_down().await;
    let stats = stats(&server, "order-1", "g");
    assert_eq!((stats.delivered, stats.in_flight), (2, 0));
}

/// Replaying with a stop-at replays the parked events before it only.
#[tokio::test]
async fn replay_parked_with_stop_at_replays_only_earlier_events() {
    let (server, client) = start().await;
    seed(&server, "order-1", 3);
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    for _ in 0..3 {
        let (event, _) = next(&mut sub).await;
        sub.nack(&event, NakAction::Park, "later").await.unwrap();
    }
    eventually("three parked", || {
        stats(&server, "order-1", "g").parked == 3
    })
    .await;

    let options = ReplayParkedMessagesOptions::default().stop_at(2);
    client
        .replay_parked_messages("order-1", "g", &options)
        .await
        .unwrap();
    let mut replayed = Vec::new();
    for _ in 0..2 {
        let (event, retry) = next(&mut sub).await;
        assert_eq!(retry, 0);
        replayed.push(event.event.as_ref().unwrap().revision);
        sub.ack(&event).await.unwrap();
    }
    assert_eq!(replayed, [0, 1]);
    settle_down().await;
    assert_eq!(stats(&server, "order-1", "g").parked, 1);

    client
        .replay_parked_messages("order-1", "g", &Default::default())
        .await
        .unwrap();
    let (event, _) = next(&mut sub).await;
    assert_eq!(event.event.as_ref().unwrap().revision, 2);
}

/// The checkpoint stays before the lowest unacked event, and reaching the
/// max count writes it at once, without waiting for the timer.
#[tokio::test]
async fn the_checkpoint_stays_before_the_lowest_unacked_event() {
    let (server, client) = start().await;
    seed(&server, "order-1", 4);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(2)
        .checkpoint_after(Duration::from_secs(60));
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(next(&mut sub).await.0);
    }
    for event in &events[1..] {
        sub.ack(event).await.unwrap();
    }
    eventually("three acks", || stats(&server, "order-1", "g").acked == 3).await;
    assert_eq!(stats(&server, "order-1", "g").last_checkpoint, None);

    sub.ack(&events[0]).await.unwrap();
    eventually("a checkpoint at 3", || {
        stats(&server, "order-1", "g").last_checkpoint == Some(3)
    })
    .await;
}

/// Below the max count, a checkpoint waits for the timer and the min
/// count.
#[tokio::test]
async fn a_timed_checkpoint_needs_the_min_count() {
    let (server, client) = start().await;
    seed(&server, "order-1", 3);
    let options = from_start()
        .checkpoint_lower_bound(3)
        .checkpoint_upper_bound(100)
        .checkpoint_after(Duration::from_millis(100));
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    for _ in 0..2 {
        let (event, _) = next(&mut sub).await;
        sub.ack(&event).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stats(&server, "order-1", "g").last_checkpoint, None);

    let (event, _) = next(&mut sub).await;
    sub.ack(&event).await.unwrap();
    eventually("a timed checkpoint", || {
        stats(&server, "order-1", "g").last_checkpoint == Some(2)
    })
    .await;
}

/// Updating a group drops its consumers; a new one resumes after the
/// checkpoint with the new settings.
#[tokio::test]
async fn updating_a_group_drops_consumers_and_reloads_from_the_checkpoint() {
    let (server, client) = start().await;
    seed(&server, "order-1", 3);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    create(&client, "order-1", "g", options.clone()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, _) = next(&mut sub).await;
    sub.ack(&event).await.unwrap();
    eventually("a checkpoint", || {
        stats(&server, "order-1", "g").last_checkpoint == Some(0)
    })
    .await;
    next(&mut sub).await;

    client
        .update_persistent_subscription("order-1", "g", &options.max_retry_count(3))
        .await
        .unwrap();
    // Events already received (revision 2) come first, then the end.
    let ended = tokio::time::timeout(WAIT, async { while sub.next().await.is_ok() {} });
    ended.await.expect("the subscription ends");
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, retry) = next(&mut sub).await;
    assert_eq!((event.get_original_event().revision, retry), (1, 0));
    let info = client
        .get_persistent_subscription_info("order-1", "g", &Default::default())
        .await
        .unwrap();
    assert_eq!(info.settings.unwrap().max_retry_count, 3);
}

/// Deleting a group removes its checkpoint and parked streams.
#[tokio::test]
async fn deleting_a_group_removes_its_checkpoint_and_parked_streams() {
    let (server, client) = start().await;
    seed(&server, "order-1", 2);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, _) = next(&mut sub).await;
    sub.ack(&event).await.unwrap();
    let (event, _) = next(&mut sub).await;
    sub.nack(&event, NakAction::Park, "bad").await.unwrap();
    let store = server.store();
    let checkpoint = "$persistentsubscription-order-1::g-checkpoint";
    let parked = "$persistentsubscription-order-1::g-parked";
    eventually("both streams", || {
        !store.read_stream(checkpoint).is_empty() && !store.read_stream(parked).is_empty()
    })
    .await;

    client
        .delete_persistent_subscription("order-1", "g", &Default::default())
        .await
        .unwrap();
    assert!(store.read_stream(checkpoint).is_empty());
    assert!(store.read_stream(parked).is_empty());
    assert!(store.group_stats("order-1", "g").is_none());
}

/// GetInfo and List report connections, in-flight counts, positions,
/// parked counts and start positions in the forms the client parses.
#[tokio::test]
async fn group_info_and_lists_report_live_statistics() {
    let (server, client) = start().await;
    seed(&server, "order-1", 3);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, _) = next(&mut sub).await;
    sub.ack(&event).await.unwrap();
    let (event, _) = next(&mut sub).await;
    sub.nack(&event, NakAction::Park, "bad").await.unwrap();
    next(&mut sub).await;
    eventually("a parked event", || {
        stats(&server, "order-1", "g").parked == 1
    })
    .await;

    let info = client
        .get_persistent_subscription_info("order-1", "g", &Default::default())
        .await
        .unwrap();
    assert_eq!(info.status, "Live");
    assert_eq!(info.connections.len(), 1);
    assert_eq!(info.connections[0].in_flight_messages, 1);
    assert_eq!(info.connections[0].total_items, 3);
    assert_eq!(info.stats.total_in_flight_messages, 1);
    assert_eq!(info.stats.parked_message_count, 1);
    assert_eq!(info.stats.last_checkpointed_event_revision, Some(1));
    assert_eq!(info.stats.last_known_event_revision, Some(2));
    assert_eq!(info.settings.unwrap().start_from, StreamPosition::Start);

    let at = Position {
        commit: 2,
        prepare: 2,
    };
    let all =
        PersistentSubscriptionToAllOptions::default().start_from(StreamPosition::Position(at));
    client
        .create_persistent_subscription_to_all("h", &all)
        .await
        .unwrap();
    let listed = client
        .list_all_persistent_subscriptions(&Default::default())
        .await
        .unwrap();
    let names: Vec<_> = listed.iter().map(|i| i.group_name.as_str()).collect();
    assert_eq!(names, ["h", "g"]);
    let info = client
        .get_persistent_subscription_info_to_all("h", &Default::default())
        .await
        .unwrap();
    assert_eq!(
        info.settings.unwrap().start_from,
        StreamPosition::Position(at)
    );
}

/// Deleted streams read as missing and continue their revisions when
/// written again; tombstoned ones refuse appends; a clashing expected
/// revision on delete is the server's FailedPrecondition, which this
/// client reports as a plain gRPC error.
#[tokio::test]
async fn deleted_and_tombstoned_streams_answer_as_the_server_does() {
    let (server, client) = start().await;
    seed(&server, "order-1", 2);
    let clash = DeleteStreamOptions::default().stream_state(StreamState::StreamRevision(7));
    match client.delete_stream("order-1", &clash).await {
        Err(kurrentdb::Error::Grpc { code, message }) => {
            assert_eq!(code, tonic::Code::FailedPrecondition);
            assert!(message.contains("WrongExpectedVersion"), "{message}");
        }
        other => panic!("expected a version clash, got {other:?}"),
    }

    client
        .delete_stream("order-1", &Default::default())
        .await
        .unwrap();
    let mut read = client
        .read_stream("order-1", &Default::default())
        .await
        .unwrap();
    assert!(matches!(
        read.next().await,
        Err(kurrentdb::Error::ResourceNotFound)
    ));
    let written = client
        .append_to_stream("order-1", &Default::default(), events(1))
        .await
        .unwrap();
    assert_eq!(written.next_expected_version, 2);

    client
        .tombstone_stream("order-1", &TombstoneStreamOptions::default())
        .await
        .unwrap();
    let refused = client
        .append_to_stream("order-1", &Default::default(), events(1))
        .await;
    assert!(
        matches!(refused, Err(kurrentdb::Error::ResourceDeleted)),
        "{refused:?}"
    );
}

/// The checkpoint stream carries `$maxCount` 2 and a replayed parked
/// stream a `$tb`, as stream metadata the client reads.
#[tokio::test]
async fn checkpoint_and_parked_streams_carry_the_servers_metadata() {
    let (server, client) = start().await;
    seed(&server, "order-1", 1);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    create(&client, "order-1", "g", options).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, _) = next(&mut sub).await;
    sub.nack(&event, NakAction::Park, "bad").await.unwrap();
    eventually("parked", || stats(&server, "order-1", "g").parked == 1).await;
    client
        .replay_parked_messages("order-1", "g", &Default::default())
        .await
        .unwrap();
    let (event, _) = next(&mut sub).await;
    sub.ack(&event).await.unwrap();
    eventually("a checkpoint", || {
        stats(&server, "order-1", "g").last_checkpoint.is_some()
    })
    .await;

    let checkpoint = "$persistentsubscription-order-1::g-checkpoint";
    let metadata = stream_metadata(&client, checkpoint).await;
    assert_eq!(metadata.max_count, Some(2));
    let parked = stream_metadata(&client, "$persistentsubscription-order-1::g-parked").await;
    assert_eq!(parked.truncate_before, Some(1));
}

async fn stream_metadata(client: &Client, stream: &str) -> kurrentdb::StreamMetadata {
    match client
        .get_stream_metadata(stream, &Default::default())
        .await
        .unwrap()
    {
        StreamMetadataResult::Success(versioned) => versioned.metadata().clone(),
        other => panic!("no metadata for {stream}: {other:?}"),
    }
}

/// Two source events with the same id are both delivered, but only the
/// first is tracked, so one ack settles the pair.
#[tokio::test]
async fn duplicate_event_ids_in_flight_are_tracked_once() {
    let (server, client) = start().await;
    let twin = NewEvent::json("OrderPlaced", &json!({}));
    server
        .store()
        .append("order-1", vec![twin.clone(), twin])
        .unwrap();
    create(&client, "order-1", "g", from_start()).await;
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (first, _) = next(&mut sub).await;
    let (second, _) = next(&mut sub).await;
    assert_eq!(
        first.get_original_event().id,
        second.get_original_event().id
    );
    assert_eq!(stats(&server, "order-1", "g").in_flight, 1);

    sub.ack(&first).await.unwrap();
    eventually("nothing in flight", || {
        stats(&server, "order-1", "g").in_flight == 0
    })
    .await;
}

/// A store opened from a data directory keeps streams, groups (with
/// their filters) and checkpoints across a full reopen.
#[tokio::test]
async fn a_data_directory_keeps_streams_groups_and_checkpoints() {
    let dir = std::env::temp_dir().join(format!("emulator-{}", uuid::Uuid::new_v4()));
    let store = Store::open(&dir).unwrap();
    let server = Server::start("127.0.0.1:0".parse().unwrap(), store)
        .await
        .unwrap();
    let client = client_for(&server);
    seed(&server, "order-1", 3);
    let options = from_start()
        .checkpoint_lower_bound(1)
        .checkpoint_upper_bound(1);
    create(&client, "order-1", "g", options).await;
    let filter = SubscriptionFilter::on_stream_name().add_prefix("order-");
    let all = PersistentSubscriptionToAllOptions::default().filter(filter);
    client
        .create_persistent_subscription_to_all("h", &all)
        .await
        .unwrap();
    let mut sub = subscribe(&client, "order-1", "g").await;
    for _ in 0..2 {
        let (event, _) = next(&mut sub).await;
        sub.ack(&event).await.unwrap();
    }
    eventually("a checkpoint at 1", || {
        stats(&server, "order-1", "g").last_checkpoint == Some(1)
    })
    .await;
    server.stop().await;

    let store = Store::open(&dir).unwrap();
    assert_eq!(store.read_stream("order-1").len(), 3);
    assert_eq!(store.read_stream("$ce-order").len(), 3);
    let server = Server::start("127.0.0.1:0".parse().unwrap(), store)
        .await
        .unwrap();
    let client = client_for(&server);
    let mut sub = subscribe(&client, "order-1", "g").await;
    let (event, retry) = next(&mut sub).await;
    assert_eq!((event.get_original_event().revision, retry), (2, 0));

    let mut all = client
        .subscribe_to_persistent_subscription_to_all("h", &Default::default())
        .await
        .unwrap();
    seed(&server, "cart-1", 1);
    seed(&server, "order-2", 1);
    let (event, _) = next(&mut all).await;
    assert_eq!(event.get_original_event().stream_id(), "order-2");
    server.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
