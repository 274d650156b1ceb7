//! The errors the library API reports to its callers (tests and the
//! binary). gRPC callers never see these: the services translate store
//! outcomes into the statuses the real server sends.

use std::path::PathBuf;

/// Why a library call on [`crate::Store`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    /// A seed file could not be read.
    #[error("cannot read seed file {path}")]
    SeedRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A seed file is not the expected JSON shape.
    #[error("seed file {path} is not valid")]
    SeedFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The stream was tombstoned; nothing can be appended to it again.
    #[error("stream {stream} is deleted")]
    StreamDeleted { stream: String },

    /// The stream's revision differs from the one the caller expected.
    #[error("stream {stream} is at {current:?}, not at the expected one")]
    WrongExpectedVersion {
        stream: String,
        current: Option<u64>,
    },

    /// The data directory cannot be read or written.
    #[error("cannot use data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A stream name the emulator refuses (empty, or `$all`).
    #[error("invalid stream name {0:?}")]
    InvalidStream(String),
}
