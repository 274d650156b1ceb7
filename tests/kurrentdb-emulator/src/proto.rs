//! Generated protobuf types and service traits.
//!
//! The module tree mirrors the proto packages because the generated code
//! names its siblings through `super::` paths.

#![allow(clippy::all, missing_docs)]

/// `event_store.*`
pub mod event_store {
    /// `event_store.client.*`
    pub mod client {
        tonic::include_proto!("event_store.client");

        /// `event_store.client.server_features`
        pub mod server_features {
            tonic::include_proto!("event_store.client.server_features");
        }

        /// `event_store.client.streams`
        pub mod streams {
            tonic::include_proto!("event_store.client.streams");
        }

        /// `event_store.client.persistent_subscriptions`
        pub mod persistent_subscriptions {
            tonic::include_proto!("event_store.client.persistent_subscriptions");
        }
    }
}

pub use event_store::client::persistent_subscriptions as persistent;
pub use event_store::client::server_features as features;
pub use event_store::client::streams;
pub use event_store::client::{Empty, StreamIdentifier, Uuid};
