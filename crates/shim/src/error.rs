//! The shim's one error type and its one mapping to ttrpc codes.
//!
//! Messages follow containerd's runc shim where a client may show them:
//! OCI runtime failures read `OCI runtime create failed: <runc's last
//! error>` and travel as Unknown, exactly as containerd's shim sends them
//! (`errdefs.ToGRPC` of an error without a kind), so clients print the same
//! `...: unknown` suffix.

use containerd_shim_protos::ttrpc::{self, error::get_rpc_status, Code};

/// Everything a shim operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A malformed request: bad identifier, bad options, bad signal.
    #[error("{0}")]
    InvalidArgument(String),
    /// The task, the process or the runc container does not exist (any more).
    #[error("{0}")]
    NotFound(String),
    /// An exec id already in use.
    #[error("{0}")]
    AlreadyExists(String),
    /// The process is in the wrong state for the request.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request the shim does not implement (checkpoints).
    #[error("{0}")]
    Unimplemented(String),
    /// The OCI runtime failed; the message is containerd's.
    #[error("{0}")]
    Runtime(String),
    /// A system call or file operation of the shim itself failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// A broken invariant (a missing pid file, a lost worker thread).
    #[error("{0}")]
    Internal(String),
}

/// Shorthand for the shim's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O failure with what the shim was doing.
    pub fn io(context: impl Into<String>, source: impl Into<std::io::Error>) -> Error {
        Error::Io {
            context: context.into(),
            source: source.into(),
        }
    }

    /// The ttrpc code of this error: the one place errors become codes.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) => Code::INVALID_ARGUMENT,
            Error::NotFound(_) => Code::NOT_FOUND,
            Error::AlreadyExists(_) => Code::ALREADY_EXISTS,
            Error::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
            Error::Unimplemented(_) => Code::UNIMPLEMENTED,
            // containerd's shim sends runtime failures without a kind
            Error::Runtime(_) => Code::UNKNOWN,
            Error::Io { .. } | Error::Internal(_) => Code::INTERNAL,
        }
    }
}

impl From<Error> for ttrpc::Error {
    fn from(e: Error) -> ttrpc::Error {
        get_rpc_status(e.code(), e.to_string())
    }
}

impl From<stevedore_types::Error> for Error {
    fn from(e: stevedore_types::Error) -> Error {
        use stevedore_types::ErrorKind as K;
        match e.kind {
            K::InvalidArgument => Error::InvalidArgument(e.message),
            K::NotFound => Error::NotFound(e.message),
            K::AlreadyExists => Error::AlreadyExists(e.message),
            K::FailedPrecondition => Error::FailedPrecondition(e.message),
            K::NotImplemented => Error::Unimplemented(e.message),
            _ => Error::Internal(e.message),
        }
    }
}

/// Go's text for an OS error (`open x: no such file or directory`): the
/// strerror text in lower case, without Rust's `(os error N)`.
pub fn go_os_error(e: &std::io::Error) -> String {
    let text = match e.raw_os_error() {
        Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
        None => return e.to_string(),
    };
    let text = text.split(" (os error").next().unwrap_or(&text);
    let mut c = text.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_maps_to_its_own_code() {
        let cases = [
            (Error::InvalidArgument("x".into()), Code::INVALID_ARGUMENT),
            (Error::NotFound("x".into()), Code::NOT_FOUND),
            (Error::AlreadyExists("x".into()), Code::ALREADY_EXISTS),
            (
                Error::FailedPrecondition("x".into()),
                Code::FAILED_PRECONDITION,
            ),
            (Error::Unimplemented("x".into()), Code::UNIMPLEMENTED),
            (Error::Runtime("x".into()), Code::UNKNOWN),
            (Error::io("x", std::io::Error::other("y")), Code::INTERNAL),
            (Error::Internal("x".into()), Code::INTERNAL),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            match ttrpc::Error::from(e) {
                ttrpc::Error::RpcStatus(s) => {
                    assert_eq!(s.code(), code);
                    assert_eq!(s.message(), msg);
                }
                other => panic!("not a status: {other:?}"),
            }
        }
    }

    #[test]
    fn os_errors_read_like_go() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(go_os_error(&e), "no such file or directory");
    }

    #[test]
    fn identifier_errors_are_invalid_argument() {
        let e: Error = stevedore_types::identifiers::validate("../x")
            .unwrap_err()
            .into();
        assert_eq!(e.code(), Code::INVALID_ARGUMENT);
        assert!(e.to_string().contains("must match"), "{e}");
    }
}
