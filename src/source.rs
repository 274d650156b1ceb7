//! The KurrentDB side of the relay: the consumer group and what it delivers.
//!
//! This module owns everything that speaks to KurrentDB through the official
//! client: building a client, making sure the consumer group exists,
//! subscribing, and turning a delivered event into a [`Delivery`] that the
//! rest of the relay can handle without knowing the client's types.
//!
//! A `kurrentdb::Client` whose first call could not reach the server stays
//! broken for good, so every connection attempt builds a new one.

use std::collections::HashSet;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, EventData, GetPersistentSubscriptionInfoOptions,
    NakAction, PersistentSubscription, PersistentSubscriptionInfo, PersistentSubscriptionOptions,
    ReadStreamOptions, ReplayParkedMessagesOptions, ResolvedEvent, StreamPosition, StreamState,
    SubscribeToPersistentSubscriptionOptions,
};
use uuid::Uuid;

use crate::config::{mask_url, KurrentDbSettings, StartFrom};

/// Why talking to KurrentDB failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The connection string could not be parsed; retrying cannot help.
    #[error("kurrentdb.connection_string is invalid: {0}")]
    ConnectionString(String),
    /// The server refused our credentials; retrying cannot help.
    #[error("KurrentDB refused access (check the credentials in kurrentdb.connection_string)")]
    AccessDenied,
    /// The group does not exist and `kurrentdb.create_group` is off.
    #[error(
        "consumer group {group} on {stream} does not exist and kurrentdb.create_group is false"
    )]
    GroupMissing {
        /// The subscribed stream.
        stream: String,
        /// The missing group.
        group: String,
    },
    /// The group exists but does not resolve links, so no order would ever
    /// reach the relay.
    #[error(
        "consumer group {group} on {stream} exists with resolveLinkTos off; \
         the relay would see only links and write nothing. Update the group \
         (resolveLinkTos = true) or delete it so the relay creates it"
    )]
    LinksNotResolved {
        /// The subscribed stream.
        stream: String,
        /// The group.
        group: String,
    },
    /// KurrentDB never answered while the relay was starting.
    #[error("kurrentdb.connection_string: {0}")]
    Unreachable(String),
    /// Anything else: network, server restart, dropped subscription.
    #[error(transparent)]
    Client(#[from] kurrentdb::Error),
}

impl SourceError {
    /// Whether trying again later may succeed. Fatal errors stop the relay
    /// with a message naming the setting at fault.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Client(_))
    }

    /// Whether the client could not establish its connection at all (as
    /// opposed to the server answering with an error).
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            SourceError::Client(
                kurrentdb::Error::GrpcConnectionError(_) | kurrentdb::Error::ConnectionClosed
            )
        )
    }
}

/// The first `host:port` of a connection string, for a plain TCP probe.
pub fn first_host(connection_string: &str) -> Option<String> {
    let rest = connection_string.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let hosts = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = hosts.split(',').next()?;
    match host.contains(':') {
        true => Some(host.to_string()),
        false => Some(format!("{host}:2113")),
    }
}

/// Builds a fresh client. It connects lazily, on its first call.
pub fn connect(settings: &KurrentDbSettings) -> Result<Client, SourceError> {
    // The client's errors quote the whole string, password included.
    let masked = |e: &dyn std::fmt::Display| {
        let text = e.to_string();
        let raw = &settings.connection_string;
        SourceError::ConnectionString(text.replace(raw.as_str(), &mask_url(raw)))
    };
    let parsed = ClientSettings::from_str(&settings.connection_string).map_err(|e| masked(&e))?;
    Client::new(parsed).map_err(|e| masked(&e))
}

/// The group's settings as configured.
fn group_options(settings: &KurrentDbSettings) -> PersistentSubscriptionOptions {
    let start = match settings.start_position() {
        StartFrom::Start => StreamPosition::Start,
        StartFrom::End => StreamPosition::End,
        StartFrom::Revision(r) => StreamPosition::Position(r),
    };
    PersistentSubscriptionOptions::default()
        .resolve_link_tos(settings.resolve_links)
        .start_from(start)
        .message_timeout(settings.message_timeout())
        .max_retry_count(settings.max_retry_count)
        .live_buffer_size(settings.live_buffer_size)
        .read_batch_size(settings.read_batch_size)
        .history_buffer_size(settings.history_buffer_size)
        .checkpoint_after(Duration::from_millis(settings.checkpoint_after_ms))
}

/// Creates the group unless it exists. Returns whether it was created.
pub async fn ensure_group(
    client: &Client,
    settings: &KurrentDbSettings,
) -> Result<bool, SourceError> {
    let options = group_options(settings);
    let created = client
        .create_persistent_subscription(settings.stream.as_str(), &settings.group, &options)
        .await;
    match created {
        Ok(()) => Ok(true),
        Err(kurrentdb::Error::ResourceAlreadyExists) => Ok(false),
        Err(e) => Err(classify(e)),
    }
}

/// Refuses a group that exists with links unresolved while the relay reads
/// a category or event-type stream: every delivery would be a bare link,
/// acked and ignored, and no order would ever be written. The relay cannot
/// change an existing group's settings for the operator; it says so.
pub async fn check_group(client: &Client, settings: &KurrentDbSettings) -> Result<(), SourceError> {
    let info = client
        .get_persistent_subscription_info(
            settings.stream.as_str(),
            settings.group.as_str(),
            &Default::default(),
        )
        .await
        .map_err(|e| classify_for_group(e, settings))?;
    let resolves = info.settings.is_some_and(|s| s.resolve_link_tos);
    let links = settings.stream.starts_with("$ce-") || settings.stream.starts_with("$et-");
    match links && !resolves && settings.resolve_links {
        true => Err(SourceError::LinksNotResolved {
            stream: settings.stream.clone(),
            group: settings.group.clone(),
        }),
        false => Ok(()),
    }
}

/// Joins the group.
pub async fn subscribe(
    client: &Client,
    settings: &KurrentDbSettings,
) -> Result<PersistentSubscription, SourceError> {
    let options =
        SubscribeToPersistentSubscriptionOptions::default().buffer_size(settings.buffer_size);
    client
        .subscribe_to_persistent_subscription(settings.stream.as_str(), &settings.group, &options)
        .await
        .map_err(|e| classify_for_group(e, settings))
}

/// Asks the server to deliver the group's parked events again.
pub async fn replay_parked(
    client: &Client,
    settings: &KurrentDbSettings,
    stop_at: Option<usize>,
) -> Result<(), SourceError> {
    let mut options = ReplayParkedMessagesOptions::default();
    if let Some(n) = stop_at {
        options = options.stop_at(n);
    }
    client
        .replay_parked_messages(&settings.stream, &settings.group, &options)
        .await
        .map_err(classify)
}

/// The group's settings and live statistics, as the server reports them.
pub async fn group_info(
    client: &Client,
    settings: &KurrentDbSettings,
) -> Result<PersistentSubscriptionInfo<u64>, SourceError> {
    let options = GetPersistentSubscriptionInfoOptions::default();
    client
        .get_persistent_subscription_info(&settings.stream, &settings.group, &options)
        .await
        .map_err(|e| classify_for_group(e, settings))
}

/// The number of events in `stream` (its last revision + 1; 0 when it does
/// not exist), read as one event backwards from the end. Links are not
/// resolved: only the revision matters.
pub async fn stream_length(client: &Client, stream: &str) -> Result<u64, SourceError> {
    let options = ReadStreamOptions::default()
        .backwards()
        .position(StreamPosition::End)
        .max_count(1);
    let mut read = match client.read_stream(stream, &options).await {
        Ok(read) => read,
        Err(kurrentdb::Error::ResourceNotFound) => return Ok(0),
        Err(e) => return Err(classify(e)),
    };
    match read.next().await {
        Ok(Some(event)) => Ok(event.get_original_event().revision + 1),
        Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => Ok(0),
        Err(e) => Err(classify(e)),
    }
}

/// The ids of the events in `stream` and its last revision (None when the
/// stream does not exist), read forwards from the start.
pub async fn stream_ids(
    client: &Client,
    stream: &str,
) -> Result<(HashSet<Uuid>, Option<u64>), SourceError> {
    let options = ReadStreamOptions::default().position(StreamPosition::Start);
    let mut read = match client.read_stream(stream, &options).await {
        Ok(read) => read,
        Err(kurrentdb::Error::ResourceNotFound) => return Ok((HashSet::new(), None)),
        Err(e) => return Err(classify(e)),
    };
    let mut ids = HashSet::new();
    let mut last = None;
    loop {
        match read.next().await {
            Ok(Some(event)) => {
                let recorded = event.get_original_event();
                ids.insert(recorded.id);
                last = Some(recorded.revision);
            }
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok((ids, last)),
            Err(e) => return Err(classify(e)),
        }
    }
}

/// Appends `events` to `stream`, expecting its last revision to be `last`
/// (None: the stream must not exist), so that a concurrent writer makes
/// the append fail rather than interleave.
pub async fn append_after(
    client: &Client,
    stream: &str,
    last: Option<u64>,
    events: Vec<EventData>,
) -> Result<(), SourceError> {
    let expected = match last {
        Some(revision) => StreamState::StreamRevision(revision),
        None => StreamState::NoStream,
    };
    let options = AppendToStreamOptions::default().stream_state(expected);
    client
        .append_to_stream(stream, &options, events)
        .await
        .map(|_| ())
        .map_err(classify)
}

/// As [`classify`], for calls on the configured group: "not found" means
/// the group is missing.
fn classify_for_group(error: kurrentdb::Error, settings: &KurrentDbSettings) -> SourceError {
    match error {
        kurrentdb::Error::ResourceNotFound => SourceError::GroupMissing {
            stream: settings.stream.clone(),
            group: settings.group.clone(),
        },
        other => classify(other),
    }
}

fn classify(error: kurrentdb::Error) -> SourceError {
    match error {
        kurrentdb::Error::AccessDenied => SourceError::AccessDenied,
        other => SourceError::Client(other),
    }
}

/// One event as delivered by the group, independent of the client's types.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The id the server expects in the ack or nack: the link's id when a
    /// link was resolved.
    pub ack_id: Uuid,
    /// The event's own id.
    pub event_id: Uuid,
    /// The stream the event was written to (`order-...`).
    pub stream: String,
    /// The event's revision in that stream.
    pub revision: u64,
    /// Its revision in the subscribed stream (for an event replayed from the
    /// parked stream: in the parked stream). For logs and dead letters.
    pub position: u64,
    /// The event's type; `$>` when a link could not be resolved.
    pub event_type: String,
    /// The content type recorded with the event.
    pub content_type: String,
    /// The payload, as received.
    pub data: Bytes,
    /// How many times the server delivered it before.
    pub retry_count: usize,
    /// False when the event is a link whose target no longer exists.
    pub resolved: bool,
}

impl Delivery {
    /// Flattens a resolved event.
    pub fn from_resolved(event: &ResolvedEvent, retry_count: usize) -> Delivery {
        let original = event.get_original_event();
        let target = event.event.as_ref();
        let resolved = target.is_some() && !is_unresolved_link(event);
        let shown = target.unwrap_or(original);
        Delivery {
            ack_id: original.id,
            event_id: shown.id,
            stream: shown.stream_id().to_string(),
            revision: shown.revision,
            position: original.revision,
            event_type: shown.event_type.clone(),
            content_type: content_type(shown),
            data: shown.data.clone(),
            retry_count,
            resolved,
        }
    }
}

/// A link whose target was deleted arrives as the bare link event.
fn is_unresolved_link(event: &ResolvedEvent) -> bool {
    event.link.is_none() && event.event.as_ref().is_some_and(|e| e.event_type == "$>")
}

fn content_type(event: &kurrentdb::RecordedEvent) -> String {
    match event.metadata.get("content-type") {
        Some(ct) => ct.clone(),
        None if event.is_json => "application/json".into(),
        None => "application/octet-stream".into(),
    }
}

/// The nack actions the relay uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Nack {
    /// Deliver again later; counts toward the group's retry limit.
    Retry,
    /// Drop the event.
    Skip,
    /// Move the event to the parked stream.
    Park,
}

impl Nack {
    /// The client's action value.
    pub fn action(self) -> NakAction {
        match self {
            Nack::Retry => NakAction::Retry,
            Nack::Skip => NakAction::Skip,
            Nack::Park => NakAction::Park,
        }
    }
}
