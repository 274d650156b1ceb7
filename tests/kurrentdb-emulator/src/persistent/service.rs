//! The `PersistentSubscriptions` gRPC service: request parsing, status
//! mapping, and the bidirectional Read call.
//!
//! A Read call reads its options message inside the handler, so an
//! unknown group fails the call itself; then a background task keeps
//! draining the consumer's acks and nacks (the client's ack queue is
//! small and blocks when not drained). The response stream never ends
//! with OK: the client treats that as impossible and panics, so a stream
//! that loses its sender ends with the server's "dropped" status.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::filter::Filter;
use super::group::{Joining, ALL_STREAM};
use super::settings::{Settings, StartFrom};
use crate::proto::persistent::{self as pb, persistent_subscriptions_server};
use crate::proto::Empty;
use crate::server::Peer;
use crate::status;
use crate::store::Store;
use crate::wire;

/// Serves persistent subscriptions from a [`Store`].
pub(crate) struct PersistentService {
    store: Store,
}

impl PersistentService {
    pub fn new(store: Store) -> PersistentService {
        PersistentService { store }
    }
}

/// The stream name a request's stream option names.
fn stream_of(id: Option<&crate::proto::StreamIdentifier>, all: bool) -> String {
    if all {
        ALL_STREAM.to_owned()
    } else {
        wire::stream_name(id)
    }
}

/// What a Create or Update defines.
struct Definition {
    stream: String,
    group: String,
    settings: Settings,
    /// A `$all` group's filter (Update sends none and keeps the old one).
    filter: Option<Filter>,
}

/// The stream, group, start, settings and filter of a Create or Update.
fn group_definition(options: Option<pb::GroupOptions>) -> Result<Definition, Status> {
    use pb::all_options::AllOption;
    use pb::group_options::StreamOption;
    use pb::stream_options::RevisionOption;

    let options = options.ok_or_else(|| Status::invalid_argument("options are required"))?;
    let wire_settings = options.settings.unwrap_or_default();
    let mut filter = Ok(None);
    let (stream, start) = match options.stream_option {
        Some(StreamOption::Stream(s)) => {
            let start = match s.revision_option {
                Some(RevisionOption::Revision(r)) => StartFrom::At(r),
                Some(RevisionOption::End(_)) => StartFrom::End,
                Some(RevisionOption::Start(_)) | None => StartFrom::Start,
            };
            (wire::stream_name(s.stream_identifier.as_ref()), start)
        }
        Some(StreamOption::All(a)) => {
            let start = match a.all_option {
                Some(AllOption::Position(p)) => StartFrom::At(p.commit_position),
                Some(AllOption::End(_)) => StartFrom::End,
                Some(AllOption::Start(_)) | None => StartFrom::Start,
            };
            if let Some(pb::all_options::FilterOption::Filter(f)) = &a.filter_option {
                filter = Filter::from_wire(f);
            }
            (ALL_STREAM.to_owned(), start)
        }
        // Clients before 21.10 sent only the deprecated fields.
        None => (
            wire::stream_name(options.stream_identifier.as_ref()),
            StartFrom::At(wire_settings.revision),
        ),
    };

    let group = options.group_name;
    if stream.is_empty() {
        return Err(status::group_failed(&stream, &group, "Bad stream name."));
    }
    let failed = |reason: String| status::group_failed(&stream, &group, &reason);
    let settings = Settings::from_wire(&wire_settings, start).map_err(failed)?;
    let filter = filter.map_err(failed)?;
    Ok(Definition {
        stream,
        group,
        settings,
        filter,
    })
}

#[tonic::async_trait]
impl persistent_subscriptions_server::PersistentSubscriptions for PersistentService {
    type ReadStream = Subscription;

    async fn create(
        &self,
        request: Request<pb::CreateReq>,
    ) -> Result<Response<pb::CreateResp>, Status> {
        let d = group_definition(request.into_inner().options)?;
        let mut state = self.store.lock();
        let state = &mut *state;
        state
            .groups
            .create(&mut state.log, &d.stream, &d.group, d.settings, d.filter)
            .map_err(|e| e.to_status(&d.stream, &d.group))?;
        Ok(Response::new(pb::CreateResp {}))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateReq>,
    ) -> Result<Response<pb::UpdateResp>, Status> {
        let d = group_definition(request.into_inner().options)?;
        let mut state = self.store.lock();
        let state = &mut *state;
        state
            .groups
            .update(&mut state.log, &d.stream, &d.group, d.settings)
            .map_err(|e| e.to_status(&d.stream, &d.group))?;
        Ok(Response::new(pb::UpdateResp {}))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteReq>,
    ) -> Result<Response<pb::DeleteResp>, Status> {
        use pb::delete_req::options::StreamOption;
        let options = request.into_inner().options.unwrap_or_default();
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_of(Some(id), false),
            Some(StreamOption::All(_)) => stream_of(None, true),
            None => String::new(),
        };
        let group = options.group_name;
        let mut state = self.store.lock();
        let state = &mut *state;
        state
            .groups
            .delete(&mut state.log, &stream, &group)
            .map_err(|e| e.to_status(&stream, &group))?;
        Ok(Response::new(pb::DeleteResp {}))
    }

    async fn read(
        &self,
        request: Request<Streaming<pb::ReadReq>>,
    ) -> Result<Response<Subscription>, Status> {
        let connection_name = request
            .metadata()
            .get("connection-name")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("<unknown>")
            .to_owned();
        let from = request
            .extensions()
            .get::<Peer>()
            .map(|p| p.0.to_string())
            .unwrap_or_default();
        let mut inbound = request.into_inner();

        let options = match inbound.message().await? {
            Some(pb::ReadReq {
                content: Some(pb::read_req::Content::Options(options)),
            }) => options,
            _ => return Err(Status::invalid_argument("expected read options")),
        };
        let (stream, group, joining, outbox) = joining_for(options, connection_name, from);
        {
            let mut state = self.store.lock();
            let state = &mut *state;
            let joining = Joining {
                id: state.next_consumer_id(),
                ..joining
            };
            let consumer = joining.id;
            state
                .groups
                .join(&mut state.log, &stream, &group, joining)
                .map_err(|e| e.to_status(&stream, &group))?;
            tokio::spawn(drain_settlements(
                self.store.clone(),
                stream.clone(),
                group.clone(),
                consumer,
                inbound,
            ));
        }
        let dropped = status::dropped(&stream, &group);
        Ok(Response::new(Subscription {
            outbox,
            dropped: Some(dropped),
        }))
    }

    async fn get_info(
        &self,
        request: Request<pb::GetInfoReq>,
    ) -> Result<Response<pb::GetInfoResp>, Status> {
        use pb::get_info_req::options::StreamOption;
        let options = request.into_inner().options.unwrap_or_default();
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_of(Some(id), false),
            Some(StreamOption::All(_)) => stream_of(None, true),
            None => String::new(),
        };
        let group = options.group_name;
        let mut state = self.store.lock();
        let state = &mut *state;
        let info = state
            .groups
            .info(&state.log, &stream, &group)
            .map_err(|e| e.to_status(&stream, &group))?;
        Ok(Response::new(pb::GetInfoResp {
            subscription_info: Some(info),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<pb::ReplayParkedReq>,
    ) -> Result<Response<pb::ReplayParkedResp>, Status> {
        use pb::replay_parked_req::options::{StopAtOption, StreamOption};
        let options = request.into_inner().options.unwrap_or_default();
        let stream = match &options.stream_option {
            Some(StreamOption::StreamIdentifier(id)) => stream_of(Some(id), false),
            Some(StreamOption::All(_)) => stream_of(None, true),
            None => String::new(),
        };
        let group = options.group_name;
        let stop_at = match options.stop_at_option {
            Some(StopAtOption::StopAt(at)) => Some(u64::try_from(at).map_err(|_| {
                let reason = "Cannot stop replaying parked message at a negative version.";
                status::group_failed(&stream, &group, reason)
            })?),
            Some(StopAtOption::NoLimit(_)) | None => None,
        };
        let mut state = self.store.lock();
        let state = &mut *state;
        state
            .groups
            .replay_parked(&mut state.log, &stream, &group, stop_at)
            .map_err(|e| e.to_status(&stream, &group))?;
        Ok(Response::new(pb::ReplayParkedResp {}))
    }

    async fn list(&self, request: Request<pb::ListReq>) -> Result<Response<pb::ListResp>, Status> {
        use pb::list_req::options::ListOption;
        use pb::list_req::stream_option::StreamOption;
        let options = request.into_inner().options.unwrap_or_default();
        let stream = match options.list_option {
            Some(ListOption::ListForStream(s)) => match s.stream_option {
                Some(StreamOption::Stream(id)) => Some(stream_of(Some(&id), false)),
                Some(StreamOption::All(_)) => Some(stream_of(None, true)),
                None => None,
            },
            Some(ListOption::ListAllSubscriptions(_)) | None => None,
        };
        let mut state = self.store.lock();
        let state = &mut *state;
        let subscriptions = state.groups.list(&state.log, stream.as_deref());
        // Asking for one stream that has no groups is "not found".
        if let (Some(stream), true) = (&stream, subscriptions.is_empty()) {
            return Err(status::group_not_found(stream, ""));
        }
        Ok(Response::new(pb::ListResp { subscriptions }))
    }

    async fn restart_subsystem(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        let mut state = self.store.lock();
        let state = &mut *state;
        state.groups.restart(&state.log);
        tracing::info!("persistent subscriptions restarted");
        Ok(Response::new(Empty {}))
    }
}

/// Reads a Read call's options into a join request and its outbox.
fn joining_for(
    options: pb::read_req::Options,
    connection_name: String,
    from: String,
) -> (String, String, Joining, mpsc::UnboundedReceiver<Item>) {
    use pb::read_req::options::{uuid_option, StreamOption};
    let stream = match &options.stream_option {
        Some(StreamOption::StreamIdentifier(id)) => stream_of(Some(id), false),
        Some(StreamOption::All(_)) => stream_of(None, true),
        None => String::new(),
    };
    let uuid_as_string = matches!(
        options.uuid_option.and_then(|o| o.content),
        Some(uuid_option::Content::String(_))
    );
    let (outbox, receiver) = mpsc::unbounded_channel();
    let joining = Joining {
        id: 0,
        connection_name,
        from,
        buffer_size: usize::try_from(options.buffer_size).unwrap_or(1).max(1),
        uuid_as_string,
        outbox,
    };
    (stream, options.group_name, joining, receiver)
}

/// Applies a consumer's acks and nacks until its call ends, then removes
/// it from the group.
async fn drain_settlements(
    store: Store,
    stream: String,
    group: String,
    consumer: u64,
    mut inbound: Streaming<pb::ReadReq>,
) {
    use pb::read_req::Content;
    while let Ok(Some(request)) = inbound.message().await {
        let mut state = store.lock();
        let state = &mut *state;
        match request.content {
            Some(Content::Ack(ack)) => {
                let ids = ids_of(&ack.ids);
                state.groups.ack(&mut state.log, &stream, &group, &ids);
            }
            Some(Content::Nack(nack)) => {
                let ids = ids_of(&nack.ids);
                let action = pb::read_req::nack::Action::try_from(nack.action)
                    .unwrap_or(pb::read_req::nack::Action::Unknown);
                state
                    .groups
                    .nack(&mut state.log, &stream, &group, &ids, action, &nack.reason);
            }
            // A second options message means nothing upstream either.
            Some(Content::Options(_)) | None => {}
        }
    }
    let mut state = store.lock();
    let state = &mut *state;
    state
        .groups
        .leave(&mut state.log, &stream, &group, consumer);
}

/// Ids in either wire form; malformed ones are ignored.
fn ids_of(ids: &[crate::proto::Uuid]) -> Vec<Uuid> {
    ids.iter().filter_map(wire::uuid_from_wire).collect()
}

type Item = Result<pb::ReadResp, Status>;

/// The response side of a Read call.
pub(crate) struct Subscription {
    outbox: mpsc::UnboundedReceiver<Item>,
    /// Sent if the group lets go of the sender without saying why.
    dropped: Option<Status>,
}

impl Stream for Subscription {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        if self.dropped.is_none() {
            return Poll::Ready(None);
        }
        match self.outbox.poll_recv(cx) {
            Poll::Ready(Some(Ok(message))) => Poll::Ready(Some(Ok(message))),
            // An OK status is the fault-injection hook's way to end the
            // call cleanly (see `Server::end_subscriptions_cleanly`).
            Poll::Ready(Some(Err(status))) if status.code() == tonic::Code::Ok => {
                self.dropped = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(status))) => {
                self.dropped = None;
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(None) => Poll::Ready(self.dropped.take().map(Err)),
            Poll::Pending => Poll::Pending,
        }
    }
}
