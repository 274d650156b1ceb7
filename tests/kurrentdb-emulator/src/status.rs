//! The gRPC error answers the real server gives, with the `exception`
//! trailers the client reads to tell them apart.

use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

fn with_trailers(code: Code, message: String, pairs: &[(&str, &str)]) -> Status {
    let mut trailers = MetadataMap::new();
    for (key, value) in pairs {
        // Keys are static ASCII; values that are not valid header text
        // (odd stream names) are left out rather than failing the answer.
        if let (Ok(key), Ok(value)) = (
            key.parse::<tonic::metadata::AsciiMetadataKey>(),
            value.parse::<MetadataValue<_>>(),
        ) {
            trailers.insert(key, value);
        }
    }
    Status::with_metadata(code, message, trailers)
}

/// The group does not exist.
pub fn group_not_found(stream: &str, group: &str) -> Status {
    with_trailers(
        Code::NotFound,
        format!("Subscription group {group} on stream {stream} does not exist."),
        &[
            ("exception", "persistent-subscription-does-not-exist"),
            ("stream-name", stream),
            ("group-name", group),
        ],
    )
}

/// A create named a group that already exists.
pub fn group_exists(stream: &str, group: &str) -> Status {
    with_trailers(
        Code::AlreadyExists,
        format!("Subscription group {group} on stream {stream} exists."),
        &[
            ("exception", "persistent-subscription-exists"),
            ("stream-name", stream),
            ("group-name", group),
        ],
    )
}

/// The group has its maximum number of consumers.
pub fn group_full(stream: &str, group: &str) -> Status {
    with_trailers(
        Code::FailedPrecondition,
        format!(
            "Maximum subscriptions reached for subscription group {group} \
             on stream {stream}."
        ),
        &[
            ("exception", "maximum-subscribers-reached"),
            ("stream-name", stream),
            ("group-name", group),
        ],
    )
}

/// The server ended a consumer's subscription.
pub fn dropped(stream: &str, group: &str) -> Status {
    with_trailers(
        Code::Cancelled,
        format!("Subscription group {group} on stream {stream} was dropped."),
        &[
            ("exception", "persistent-subscription-dropped"),
            ("stream-name", stream),
            ("group-name", group),
        ],
    )
}

/// Settings or a start position the server refuses.
pub fn group_failed(stream: &str, group: &str, reason: &str) -> Status {
    with_trailers(
        Code::Internal,
        format!("Subscription group {group} on stream {stream} failed: '{reason}'"),
        &[
            ("exception", "persistent-subscription-failed"),
            ("stream-name", stream),
            ("group-name", group),
            ("reason", reason),
        ],
    )
}

/// The stream was tombstoned.
pub fn stream_deleted(stream: &str) -> Status {
    with_trailers(
        Code::FailedPrecondition,
        format!("Event stream '{stream}' is deleted."),
        &[("exception", "stream-deleted"), ("stream-name", stream)],
    )
}
