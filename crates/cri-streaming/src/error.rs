//! The crate's one error type and its mapping to an [`ErrorKind`].

use stevedore_types::ErrorKind;

/// Why a streaming request or the server failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CRI request is invalid (kubelet's validation; the message is
    /// kubelet's, which CRI clients show as is).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request cache holds `max` unexpired requests already.
    #[error("streaming request cache is full: {max} requests in flight")]
    TooManyRequests { max: usize },
    /// The configured listen address cannot be used.
    #[error("invalid stream server address {address:?}: {reason}")]
    Address { address: String, reason: String },
    /// Binding the listener failed.
    #[error("bind stream server on {address}: {source}")]
    Bind {
        address: String,
        source: std::io::Error,
    },
}

impl Error {
    /// The kind the CRI service maps to a gRPC code.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument(_) | Error::Address { .. } => ErrorKind::InvalidArgument,
            Error::TooManyRequests { .. } => ErrorKind::ResourceExhausted,
            Error::Bind { .. } => ErrorKind::Unavailable,
        }
    }
}
