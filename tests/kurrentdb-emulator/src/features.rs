//! `ServerFeatures/GetSupportedMethods`: what the client asks first.
//!
//! The client matches method and service names in lower case. It needs all
//! four of getinfo/replayparked/list/restartsubsystem to use gRPC for
//! those calls (otherwise it falls back to HTTP, which the emulator does
//! not serve), and the `all` feature on `create` to allow `$all` groups.
//! Batch append is not advertised because it is not emulated.

use tonic::{Request, Response, Status};

use crate::proto::features::{self as pb, server_features_server};
use crate::proto::Empty;

/// The version reported; it must parse as digits and dots.
pub const SERVER_VERSION: &str = "24.10.0";

const PERSISTENT: &str = "event_store.client.persistent_subscriptions.persistentsubscriptions";
const STREAMS: &str = "event_store.client.streams.streams";
const FEATURES: &str = "event_store.client.server_features.serverfeatures";

/// Answers the feature discovery call.
pub(crate) struct FeaturesService;

fn method(service: &str, name: &str, features: &[&str]) -> pb::SupportedMethod {
    pb::SupportedMethod {
        method_name: name.to_owned(),
        service_name: service.to_owned(),
        features: features.iter().map(|f| (*f).to_owned()).collect(),
    }
}

/// Everything the emulator serves.
fn supported_methods() -> Vec<pb::SupportedMethod> {
    let both = ["stream", "all"];
    let mut methods: Vec<pb::SupportedMethod> = [
        "create",
        "update",
        "delete",
        "read",
        "getinfo",
        "replayparked",
        "list",
    ]
    .iter()
    .map(|name| method(PERSISTENT, name, &both))
    .collect();
    methods.push(method(PERSISTENT, "restartsubsystem", &[]));
    for name in ["read", "append", "delete", "tombstone"] {
        methods.push(method(STREAMS, name, &[]));
    }
    methods.push(method(FEATURES, "getsupportedmethods", &[]));
    methods
}

#[tonic::async_trait]
impl server_features_server::ServerFeatures for FeaturesService {
    async fn get_supported_methods(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<pb::SupportedMethods>, Status> {
        Ok(Response::new(pb::SupportedMethods {
            methods: supported_methods(),
            event_store_server_version: SERVER_VERSION.to_owned(),
        }))
    }
}
