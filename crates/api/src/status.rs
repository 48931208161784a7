//! The one place where stevedore error kinds become gRPC codes, and back.

use stevedore_types::{Error, ErrorKind};
use tonic::{Code, Status};

/// The gRPC code for an error kind (containerd's errdefs.ToGRPC).
pub fn code_of(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::Unknown => Code::Unknown,
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::NotImplemented => Code::Unimplemented,
        ErrorKind::Canceled => Code::Cancelled,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Aborted => Code::Aborted,
        ErrorKind::OutOfRange => Code::OutOfRange,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The error kind for a gRPC code (containerd's errdefs.FromGRPC).
pub fn kind_of(code: Code) -> ErrorKind {
    match code {
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::NotFound => ErrorKind::NotFound,
        Code::AlreadyExists => ErrorKind::AlreadyExists,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::Unimplemented => ErrorKind::NotImplemented,
        Code::Cancelled => ErrorKind::Canceled,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::PermissionDenied | Code::Unauthenticated => ErrorKind::PermissionDenied,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Aborted => ErrorKind::Aborted,
        Code::OutOfRange => ErrorKind::OutOfRange,
        Code::Internal | Code::DataLoss => ErrorKind::Internal,
        Code::Ok | Code::Unknown => ErrorKind::Unknown,
    }
}

/// Convert a library error to a gRPC status.
pub fn to_status(e: Error) -> Status {
    Status::new(code_of(e.kind), e.message)
}

/// Convert a gRPC status back to a library error.
pub fn from_status(s: &Status) -> Error {
    Error::new(kind_of(s.code()), s.message().to_string())
}

/// Extension for `Result<T, Error>` in services: `.grpc()?`.
pub trait IntoStatus<T> {
    fn grpc(self) -> Result<T, Status>;
}

impl<T> IntoStatus<T> for Result<T, Error> {
    fn grpc(self) -> Result<T, Status> {
        self.map_err(to_status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_codes() {
        for k in [
            ErrorKind::Unknown,
            ErrorKind::InvalidArgument,
            ErrorKind::NotFound,
            ErrorKind::AlreadyExists,
            ErrorKind::FailedPrecondition,
            ErrorKind::Unavailable,
            ErrorKind::NotImplemented,
            ErrorKind::Canceled,
            ErrorKind::DeadlineExceeded,
            ErrorKind::PermissionDenied,
            ErrorKind::ResourceExhausted,
            ErrorKind::Aborted,
            ErrorKind::OutOfRange,
            ErrorKind::Internal,
        ] {
            assert_eq!(kind_of(code_of(k)), k);
        }
        let s = to_status(Error::not_found("image \"x\": not found"));
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(from_status(&s).kind, ErrorKind::NotFound);
    }
}
