//! Conversions between store records and protobuf shapes shared by the
//! services: event ids in either UUID form, and the system metadata map.

use std::collections::HashMap;

use uuid::Uuid;

use crate::events::{StoredEvent, BINARY_CONTENT_TYPE, JSON_CONTENT_TYPE};
use crate::proto::{self, event_store::client::uuid as pb_uuid};

/// An id in the form the caller asked for.
pub fn uuid_to_wire(id: Uuid, as_string: bool) -> proto::Uuid {
    let value = if as_string {
        pb_uuid::Value::String(id.to_string())
    } else {
        let bits = id.as_u128();
        pb_uuid::Value::Structured(pb_uuid::Structured {
            most_significant_bits: (bits >> 64) as u64 as i64,
            least_significant_bits: bits as u64 as i64,
        })
    };
    proto::Uuid { value: Some(value) }
}

/// An id in either form; None if it is absent or malformed.
pub fn uuid_from_wire(id: &proto::Uuid) -> Option<Uuid> {
    match id.value.as_ref()? {
        pb_uuid::Value::Structured(s) => {
            let high = (s.most_significant_bits as u64 as u128) << 64;
            let low = s.least_significant_bits as u64 as u128;
            Some(Uuid::from_u128(high | low))
        }
        pb_uuid::Value::String(text) => text.parse().ok(),
    }
}

/// The metadata map the server attaches to every recorded event.
pub fn system_metadata(event: &StoredEvent) -> HashMap<String, String> {
    let content_type = if event.is_json() {
        JSON_CONTENT_TYPE
    } else {
        BINARY_CONTENT_TYPE
    };
    HashMap::from([
        ("type".to_owned(), event.event_type.clone()),
        ("content-type".to_owned(), content_type.to_owned()),
        ("created".to_owned(), event.created_ticks.to_string()),
    ])
}

/// A stream name from its wire form (raw UTF-8 bytes).
pub fn stream_name(id: Option<&proto::StreamIdentifier>) -> String {
    id.map(|id| String::from_utf8_lossy(&id.stream_name).into_owned())
        .unwrap_or_default()
}

/// A stream name in its wire form.
pub fn stream_identifier(name: &str) -> proto::StreamIdentifier {
    proto::StreamIdentifier {
        stream_name: name.as_bytes().to_vec(),
    }
}
