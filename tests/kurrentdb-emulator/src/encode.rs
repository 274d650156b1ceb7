//! Encodes a stored event as the protocol's `RecordedEvent` message
//! straight from the store, for persistent-subscription deliveries.
//!
//! Building the generated message first would cost a dozen allocations per
//! delivery (the metadata map, its strings, copies of data and metadata);
//! writing the wire form directly costs one buffer. The persistent
//! `ReadEvent` declares its records as `bytes`, which protobuf encodes
//! exactly like an embedded message, so the client decodes the result as
//! its own `RecordedEvent`.

use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use uuid::Uuid;

use crate::events::{StoredEvent, BINARY_CONTENT_TYPE, JSON_CONTENT_TYPE};

// Field numbers of RecordedEvent and of the messages inside it.
const ID: u32 = 1;
const STREAM_IDENTIFIER: u32 = 2;
const STREAM_REVISION: u32 = 3;
const PREPARE_POSITION: u32 = 4;
const COMMIT_POSITION: u32 = 5;
const METADATA: u32 = 6;
const CUSTOM_METADATA: u32 = 7;
const DATA: u32 = 8;
const STREAM_NAME: u32 = 3;
const UUID_STRUCTURED: u32 = 1;
const UUID_STRING: u32 = 2;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;

/// The length of a length-delimited field holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_bytes(buf: &mut Vec<u8>, tag: u32, data: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(data.len() as u64, buf);
    buf.extend_from_slice(data);
}

/// A scalar; zero is the default and is left out, as prost would.
fn put_u64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn put_map_entry(buf: &mut Vec<u8>, key: &str, value: &str) {
    let inner = field_len(MAP_KEY, key.len()) + field_len(MAP_VALUE, value.len());
    encode_key(METADATA, WireType::LengthDelimited, buf);
    encode_varint(inner as u64, buf);
    put_bytes(buf, MAP_KEY, key.as_bytes());
    put_bytes(buf, MAP_VALUE, value.as_bytes());
}

fn put_uuid(buf: &mut Vec<u8>, id: Uuid, as_string: bool) {
    encode_key(ID, WireType::LengthDelimited, buf);
    if as_string {
        let mut text = [0u8; 36];
        id.hyphenated().encode_lower(&mut text);
        encode_varint(field_len(UUID_STRING, text.len()) as u64, buf);
        put_bytes(buf, UUID_STRING, &text);
        return;
    }
    let bits = id.as_u128();
    let halves = [(bits >> 64) as u64, bits as u64];
    let mut inner = Vec::with_capacity(22);
    for (tag, half) in [1, 2].into_iter().zip(halves) {
        put_u64(&mut inner, tag, half);
    }
    let mut nested = Vec::with_capacity(inner.len() + 2);
    encode_key(UUID_STRUCTURED, WireType::LengthDelimited, &mut nested);
    encode_varint(inner.len() as u64, &mut nested);
    nested.extend_from_slice(&inner);
    encode_varint(nested.len() as u64, buf);
    buf.extend_from_slice(&nested);
}

/// `event` as a RecordedEvent reported at `position` (the position of
/// what the group read, which for a resolved link is the link's).
pub fn recorded_event(event: &StoredEvent, position: u64, uuid_as_string: bool) -> Vec<u8> {
    let content_type = if event.is_json() {
        JSON_CONTENT_TYPE
    } else {
        BINARY_CONTENT_TYPE
    };
    let mut ticks = [0u8; 20];
    let created = format_u64(event.created_ticks, &mut ticks);
    let stream = event.stream.as_bytes();

    let capacity = 160 + stream.len() + event.data.len() + event.metadata.len();
    let mut buf = Vec::with_capacity(capacity);
    put_uuid(&mut buf, event.id, uuid_as_string);
    encode_key(STREAM_IDENTIFIER, WireType::LengthDelimited, &mut buf);
    encode_varint(field_len(STREAM_NAME, stream.len()) as u64, &mut buf);
    put_bytes(&mut buf, STREAM_NAME, stream);
    put_u64(&mut buf, STREAM_REVISION, event.revision);
    put_u64(&mut buf, PREPARE_POSITION, position);
    put_u64(&mut buf, COMMIT_POSITION, position);
    put_map_entry(&mut buf, "type", &event.event_type);
    put_map_entry(&mut buf, "content-type", content_type);
    put_map_entry(&mut buf, "created", created);
    if !event.metadata.is_empty() {
        put_bytes(&mut buf, CUSTOM_METADATA, &event.metadata);
    }
    if !event.data.is_empty() {
        put_bytes(&mut buf, DATA, &event.data);
    }
    buf
}

/// Decimal text of `value` in `buf`, without allocating.
fn format_u64(mut value: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::proto::streams::read_resp::read_event::RecordedEvent;

    fn sample() -> StoredEvent {
        StoredEvent {
            id: Uuid::new_v4(),
            stream: "order-7".to_owned(),
            revision: 3,
            event_type: "order-placed".to_owned(),
            content_type: JSON_CONTENT_TYPE.to_owned(),
            data: br#"{"a":1}"#.to_vec(),
            metadata: b"m".to_vec(),
            position: 42,
            created_ticks: 638_000_000_000_000_000,
        }
    }

    /// The hand-written encoding decodes as the generated message with
    /// every field the server sets, in both id forms.
    #[test]
    fn hand_encoding_decodes_as_the_generated_message() {
        let event = sample();
        for as_string in [true, false] {
            let bytes = recorded_event(&event, 99, as_string);
            let decoded = RecordedEvent::decode(bytes.as_slice()).unwrap();
            let id = crate::wire::uuid_from_wire(decoded.id.as_ref().unwrap());
            assert_eq!(id, Some(event.id));
            assert_eq!(decoded.stream_identifier.unwrap().stream_name, b"order-7");
            assert_eq!(decoded.stream_revision, 3);
            assert_eq!(
                (decoded.prepare_position, decoded.commit_position),
                (99, 99)
            );
            assert_eq!(decoded.metadata, crate::wire::system_metadata(&event));
            assert_eq!(decoded.custom_metadata, b"m");
            assert_eq!(decoded.data, event.data);
        }
    }
}
