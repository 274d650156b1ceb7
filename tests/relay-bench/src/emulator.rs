//! The event source: an in-process KurrentDB emulator holding the orders.
//!
//! Each order goes to its own `order-<id>` stream, as the tutorial writes
//! them, so the emulator links it into `$ce-order`, the stream the relay's
//! consumer group reads. The emulator shares this process's cores with the
//! bench, as a real KurrentDB would share the machine with the relay.

use anyhow::{Context, Result};
use kurrentdb_emulator::events::JSON_CONTENT_TYPE;
use kurrentdb_emulator::{NewEvent, Server, Store};

use crate::generate::{GeneratedOrder, EVENT_TYPE};

/// Serves `store` on an ephemeral loopback port.
pub async fn start(store: Store) -> Result<Server> {
    let addr = "127.0.0.1:0".parse().expect("a valid address");
    Server::start(addr, store)
        .await
        .context("starting the emulator")
}

/// Appends one order to its stream.
pub fn append(store: &Store, order: GeneratedOrder) -> Result<()> {
    let event = NewEvent {
        id: order.event_id,
        event_type: EVENT_TYPE.to_owned(),
        content_type: JSON_CONTENT_TYPE.to_owned(),
        data: order.data,
        metadata: Vec::new(),
    };
    store
        .append(&order.order_id, vec![event])
        .with_context(|| format!("appending {}", order.order_id))?;
    Ok(())
}
