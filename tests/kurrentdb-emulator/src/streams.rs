//! The `Streams` gRPC service: append, read, delete and tombstone.
//!
//! Reads are answered from a snapshot taken under the store's lock, so a
//! read sees the log as it was when the call arrived.
//!
//! Known gaps: catch-up subscriptions (`count_option = subscription`) and
//! batch append are answered Unimplemented; read filters on `$all` are
//! ignored; appends are not idempotent; there are no ACLs.

use std::collections::HashMap;

use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::events::{NewEvent, StoredEvent, BINARY_CONTENT_TYPE};
use crate::log::{AppendError, Expected, Log};
use crate::proto::event_store::client::AllStreamPosition;
use crate::proto::streams::{self as pb, streams_server};
use crate::proto::Empty;
use crate::status;
use crate::store::Store;
use crate::wire;

/// Serves streams from a [`Store`].
pub(crate) struct StreamsService {
    store: Store,
}

impl StreamsService {
    pub fn new(store: Store) -> StreamsService {
        StreamsService { store }
    }
}

type ReadItems = tokio_stream::Iter<std::vec::IntoIter<Result<pb::ReadResp, Status>>>;

/// How a read request wants its events.
struct ReadShape {
    backwards: bool,
    count: usize,
    resolve_links: bool,
    uuid_as_string: bool,
}

#[tonic::async_trait]
impl streams_server::Streams for StreamsService {
    type ReadStream = ReadItems;

    async fn read(&self, request: Request<pb::ReadReq>) -> Result<Response<ReadItems>, Status> {
        use pb::read_req::options::{uuid_option, CountOption, StreamOption};
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| Status::invalid_argument("options are required"))?;
        let count = match options.count_option {
            Some(CountOption::Count(count)) => count,
            Some(CountOption::Subscription(_)) => {
                return Err(Status::unimplemented(
                    "catch-up subscriptions are not emulated",
                ))
            }
            None => u64::MAX,
        };
        let shape = ReadShape {
            backwards: options.read_direction
                == pb::read_req::options::ReadDirection::Backwards as i32,
            count: usize::try_from(count).unwrap_or(usize::MAX),
            resolve_links: options.resolve_links,
            uuid_as_string: matches!(
                options.uuid_option.and_then(|o| o.content),
                Some(uuid_option::Content::String(_))
            ),
        };

        let state = self.store.lock();
        let responses = match options.stream_option {
            Some(StreamOption::Stream(s)) => read_stream(&state.log, s, &shape)?,
            Some(StreamOption::All(a)) => read_all(&state.log, a, &shape),
            None => return Err(Status::invalid_argument("no stream given")),
        };
        drop(state);
        Ok(Response::new(tokio_stream::iter(
            responses.into_iter().map(Ok).collect::<Vec<_>>(),
        )))
    }

    async fn append(
        &self,
        request: Request<Streaming<pb::AppendReq>>,
    ) -> Result<Response<pb::AppendResp>, Status> {
        use pb::append_req::Content;
        let mut inbound = request.into_inner();
        let options = match inbound.message().await? {
            Some(pb::AppendReq {
                content: Some(Content::Options(options)),
            }) => options,
            _ => return Err(Status::invalid_argument("expected append options")),
        };
        let stream = wire::stream_name(options.stream_identifier.as_ref());
        if stream.is_empty() || stream == "$all" {
            return Err(Status::invalid_argument("invalid stream name"));
        }
        let expected = append_expected(options.expected_stream_revision);

        let mut events = Vec::new();
        while let Some(request) = inbound.message().await? {
            if let Some(Content::ProposedMessage(message)) = request.content {
                events.push(proposed_event(message)?);
            }
        }

        let result = self.store.lock().append(&stream, expected, events);
        let result = match result {
            Ok(appended) => pb::append_resp::Result::Success(success(appended)),
            Err(AppendError::StreamDeleted) => return Err(status::stream_deleted(&stream)),
            Err(AppendError::WrongExpectedVersion { current, expected }) => {
                pb::append_resp::Result::WrongExpectedVersion(wrong_version(current, expected))
            }
        };
        Ok(Response::new(pb::AppendResp {
            result: Some(result),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteReq>,
    ) -> Result<Response<pb::DeleteResp>, Status> {
        use pb::delete_resp::PositionOption;
        let options = request.into_inner().options.unwrap_or_default();
        let position = self.remove(options, false)?;
        Ok(Response::new(pb::DeleteResp {
            position_option: Some(match position {
                Some(p) => PositionOption::Position(all_position(p)),
                None => PositionOption::NoPosition(Empty {}),
            }),
        }))
    }

    async fn tombstone(
        &self,
        request: Request<pb::TombstoneReq>,
    ) -> Result<Response<pb::TombstoneResp>, Status> {
        use pb::tombstone_resp::PositionOption;
        let options = request.into_inner().options.unwrap_or_default();
        let position = self.remove(options, true)?;
        Ok(Response::new(pb::TombstoneResp {
            position_option: Some(match position {
                Some(p) => PositionOption::Position(all_position(p)),
                None => PositionOption::NoPosition(Empty {}),
            }),
        }))
    }
}

impl StreamsService {
    /// A soft delete or a tombstone; returns the log's last position.
    fn remove(&self, options: pb::delete_req::Options, hard: bool) -> Result<Option<u64>, Status> {
        use pb::delete_req::options::ExpectedStreamRevision as E;
        let stream = wire::stream_name(options.stream_identifier.as_ref());
        let expected = match options.expected_stream_revision {
            Some(E::Revision(r)) => Expected::Revision(r),
            Some(E::NoStream(_)) => Expected::NoStream,
            Some(E::StreamExists(_)) => Expected::StreamExists,
            Some(E::Any(_)) | None => Expected::Any,
        };
        let mut state = self.store.lock();
        let result = if hard {
            state.log.tombstone(&stream, expected)
        } else {
            state.log.delete(&stream, expected)
        };
        match result {
            Ok(_) => Ok(state.log.all().last().map(|e| e.position)),
            Err(AppendError::StreamDeleted) => Err(status::stream_deleted(&stream)),
            Err(AppendError::WrongExpectedVersion { current, expected }) => {
                let operation = if hard { "Tombstone" } else { "Delete" };
                Err(wrong_version_status(operation, &stream, current, expected))
            }
        }
    }
}

fn append_expected(option: Option<pb::append_req::options::ExpectedStreamRevision>) -> Expected {
    use pb::append_req::options::ExpectedStreamRevision as E;
    match option {
        Some(E::Revision(r)) => Expected::Revision(r),
        Some(E::NoStream(_)) => Expected::NoStream,
        Some(E::StreamExists(_)) => Expected::StreamExists,
        Some(E::Any(_)) | None => Expected::Any,
    }
}

/// An event proposed by the client; "type" and "content-type" travel in
/// the metadata map.
fn proposed_event(message: pb::append_req::ProposedMessage) -> Result<NewEvent, Status> {
    let id = message
        .id
        .as_ref()
        .and_then(wire::uuid_from_wire)
        .ok_or_else(|| Status::invalid_argument("event id is required"))?;
    let mut metadata: HashMap<String, String> = message.metadata;
    Ok(NewEvent {
        id,
        event_type: metadata.remove("type").unwrap_or_default(),
        content_type: metadata
            .remove("content-type")
            .unwrap_or_else(|| BINARY_CONTENT_TYPE.to_owned()),
        data: message.data,
        metadata: message.custom_metadata,
    })
}

fn success(appended: crate::log::Appended) -> pb::append_resp::Success {
    use pb::append_resp::success::{CurrentRevisionOption, PositionOption};
    pb::append_resp::Success {
        current_revision_option: Some(match appended.revision {
            Some(r) => CurrentRevisionOption::CurrentRevision(r),
            None => CurrentRevisionOption::NoStream(Empty {}),
        }),
        position_option: Some(match appended.position {
            Some(p) => PositionOption::Position(pb::append_resp::Position {
                commit_position: p,
                prepare_position: p,
            }),
            None => PositionOption::NoPosition(Empty {}),
        }),
    }
}

/// Both the current and the pre-20.6 fields, as the server fills them.
fn wrong_version(
    current: Option<u64>,
    expected: Expected,
) -> pb::append_resp::WrongExpectedVersion {
    use pb::append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption,
        ExpectedRevisionOption2060,
    };
    let empty = Empty {};
    pb::append_resp::WrongExpectedVersion {
        current_revision_option_20_6_0: Some(match current {
            Some(r) => CurrentRevisionOption2060::CurrentRevision2060(r),
            None => CurrentRevisionOption2060::NoStream2060(empty),
        }),
        expected_revision_option_20_6_0: match expected {
            Expected::Revision(r) => Some(ExpectedRevisionOption2060::ExpectedRevision2060(r)),
            Expected::Any => Some(ExpectedRevisionOption2060::Any2060(empty)),
            Expected::StreamExists => Some(ExpectedRevisionOption2060::StreamExists2060(empty)),
            Expected::NoStream => None,
        },
        current_revision_option: Some(match current {
            Some(r) => CurrentRevisionOption::CurrentRevision(r),
            None => CurrentRevisionOption::CurrentNoStream(empty),
        }),
        expected_revision_option: Some(match expected {
            Expected::Revision(r) => ExpectedRevisionOption::ExpectedRevision(r),
            Expected::Any => ExpectedRevisionOption::ExpectedAny(empty),
            Expected::StreamExists => ExpectedRevisionOption::ExpectedStreamExists(empty),
            Expected::NoStream => ExpectedRevisionOption::ExpectedNoStream(empty),
        }),
    }
}

/// Delete and tombstone report a version clash as a status.
fn wrong_version_status(
    operation: &str,
    stream: &str,
    current: Option<u64>,
    expected: Expected,
) -> Status {
    let actual = current.map_or("-1".to_owned(), |r| r.to_string());
    let expected = match expected {
        Expected::Any => "-2".to_owned(),
        Expected::NoStream => "-1".to_owned(),
        Expected::StreamExists => "-4".to_owned(),
        Expected::Revision(r) => r.to_string(),
    };
    let mut trailers = MetadataMap::new();
    trailers.insert(
        "exception",
        "wrong-expected-version".parse().expect("ascii"),
    );
    if let Ok(value) = stream.parse() {
        trailers.insert("stream-name", value);
    }
    if let (Ok(a), Ok(e)) = (actual.parse(), expected.parse()) {
        trailers.insert("actual-version", a);
        trailers.insert("expected-version", e);
    }
    let message = format!(
        "{operation} failed due to WrongExpectedVersion. Stream: {stream}, \
         Expected version: {expected}, Actual version: {actual}"
    );
    Status::with_metadata(Code::FailedPrecondition, message, trailers)
}

fn all_position(position: u64) -> AllStreamPosition {
    AllStreamPosition {
        commit_position: position,
        prepare_position: position,
    }
}

fn read_stream(
    log: &Log,
    options: pb::read_req::options::StreamOptions,
    shape: &ReadShape,
) -> Result<Vec<pb::ReadResp>, Status> {
    use pb::read_req::options::stream_options::RevisionOption;
    let name = wire::stream_name(options.stream_identifier.as_ref());
    let data = match log.stream(&name) {
        Some(data) if data.is_tombstoned() => return Err(status::stream_deleted(&name)),
        Some(data) if !data.is_absent() => data,
        _ => return Ok(vec![not_found(options.stream_identifier)]),
    };

    let events = data.visible();
    let from = match options.revision_option {
        Some(RevisionOption::Revision(r)) => r,
        Some(RevisionOption::End(_)) => u64::MAX,
        Some(RevisionOption::Start(_)) | None => 0,
    };
    let selected: Vec<&std::sync::Arc<StoredEvent>> = if shape.backwards {
        let from = from.min(data.last_revision().unwrap_or(0));
        events
            .iter()
            .rev()
            .skip_while(|e| e.revision > from)
            .take(shape.count)
            .collect()
    } else {
        events
            .iter()
            .skip_while(|e| e.revision < from)
            .take(shape.count)
            .collect()
    };
    Ok(selected
        .into_iter()
        .map(|e| read_event(log, e, shape))
        .collect())
}

fn read_all(
    log: &Log,
    options: pb::read_req::options::AllOptions,
    shape: &ReadShape,
) -> Vec<pb::ReadResp> {
    use pb::read_req::options::all_options::AllOption;
    let all = log.all();
    let end = all.len() as u64;
    let from = match options.all_option {
        Some(AllOption::Position(p)) => p.commit_position.min(end),
        Some(AllOption::End(_)) => end,
        Some(AllOption::Start(_)) | None => 0,
    } as usize;
    let selected: Vec<&std::sync::Arc<StoredEvent>> = if shape.backwards {
        // Backwards reads return what lies before the position.
        all[..from].iter().rev().take(shape.count).collect()
    } else {
        all[from..].iter().take(shape.count).collect()
    };
    selected
        .into_iter()
        .map(|e| read_event(log, e, shape))
        .collect()
}

fn not_found(id: Option<crate::proto::StreamIdentifier>) -> pb::ReadResp {
    pb::ReadResp {
        content: Some(pb::read_resp::Content::StreamNotFound(
            pb::read_resp::StreamNotFound {
                stream_identifier: id,
            },
        )),
    }
}

fn read_event(log: &Log, record: &StoredEvent, shape: &ReadShape) -> pb::ReadResp {
    use pb::read_resp::read_event::Position;
    let position = record.position;
    let as_string = shape.uuid_as_string;
    let recorded = |e: &StoredEvent| recorded(e, position, as_string);
    let (event, link) = if shape.resolve_links && record.is_link() {
        (
            log.resolve(record).map(|e| recorded(e)),
            Some(recorded(record)),
        )
    } else {
        (Some(recorded(record)), None)
    };
    pb::ReadResp {
        content: Some(pb::read_resp::Content::Event(pb::read_resp::ReadEvent {
            event,
            link,
            position: Some(Position::CommitPosition(position)),
        })),
    }
}

fn recorded(
    event: &StoredEvent,
    position: u64,
    uuid_as_string: bool,
) -> pb::read_resp::read_event::RecordedEvent {
    pb::read_resp::read_event::RecordedEvent {
        id: Some(wire::uuid_to_wire(event.id, uuid_as_string)),
        stream_identifier: Some(wire::stream_identifier(&event.stream)),
        stream_revision: event.revision,
        prepare_position: position,
        commit_position: position,
        metadata: wire::system_metadata(event),
        custom_metadata: event.metadata.clone(),
        data: event.data.clone(),
    }
}
