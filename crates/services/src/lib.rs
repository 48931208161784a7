//! containerd's gRPC services, implemented over stevedore's libraries. This is
//! the edge: requests are validated and translated here, library errors become
//! gRPC statuses here (through `stevedore_api::status`), and events are
//! published here after each state change.

/// Apply containerd's gRPC message limits (16 MiB each way, see
/// `stevedore_types::limits`) to a generated server: every service's
/// `grpc()` wraps its server in this, so the limit is set in one place.
#[macro_export]
macro_rules! with_message_limits {
    ($server:expr) => {
        $server
            .max_decoding_message_size(stevedore_types::limits::MAX_RECV_MESSAGE_SIZE)
            .max_encoding_message_size(stevedore_types::limits::MAX_SEND_MESSAGE_SIZE)
    };
}

pub mod archive;
pub mod containers;
pub mod content;
pub mod convert;
pub mod diff;
pub mod events;
pub mod exchange;
pub mod gc;
pub mod health;
pub mod images;
pub mod introspection;
pub mod leases;
pub mod memory;
pub mod metrics;
pub mod namespaces;
pub mod registry;
pub mod sandbox;
pub mod snapshot_gc;
pub mod snapshots;
pub mod streaming;
pub mod task_oom;
pub mod tasks;
pub mod transfer;
pub mod version;

use stevedore_api::status::to_status;
use stevedore_types::Error;
use tonic::{Request, Status};

/// A gRPC service ready to be mounted on the server, as a plugin instance.
pub struct GrpcService {
    add: Box<dyn Fn(&mut tonic::service::RoutesBuilder) + Send + Sync>,
}

impl GrpcService {
    pub fn new<S>(svc: S) -> Self
    where
        S: tower_service_bound::Svc,
    {
        GrpcService {
            add: Box::new(move |routes| {
                routes.add_service(svc.clone());
            }),
        }
    }
    /// One more service mounted with this one (a plugin serving two APIs).
    pub fn and<S>(self, svc: S) -> Self
    where
        S: tower_service_bound::Svc,
    {
        let first = self.add;
        GrpcService {
            add: Box::new(move |routes| {
                first(routes);
                routes.add_service(svc.clone());
            }),
        }
    }
    /// Mount the service.
    pub fn add_to(&self, routes: &mut tonic::service::RoutesBuilder) {
        (self.add)(routes)
    }
}

/// The bounds tonic puts on a mountable service, named once.
pub mod tower_service_bound {
    use std::convert::Infallible;
    use tonic::body::Body;
    use tonic::server::NamedService;

    pub trait Svc:
        tonic::codegen::Service<
            tonic::codegen::http::Request<Body>,
            Response = tonic::codegen::http::Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
    {
    }
    impl<T> Svc for T where
        T: tonic::codegen::Service<
                tonic::codegen::http::Request<Body>,
                Response = tonic::codegen::http::Response<Body>,
                Error = Infallible,
                Future: Send + 'static,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static
    {
    }
}

/// The namespace a request is for, from the `containerd-namespace` header.
pub fn namespace_of<T>(req: &Request<T>) -> Result<String, Status> {
    let ns = req
        .metadata()
        .get(stevedore_api::NAMESPACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ns.is_empty() {
        return Err(to_status(Error::precondition(
            "namespace is required: set the containerd-namespace header",
        )));
    }
    stevedore_metadata::namespaces::validate_name(ns)
        .map_err(|e| to_status(e.context(format!("namespace {ns:?}"))))?;
    Ok(ns.to_string())
}

/// Run blocking work (filesystem, database) off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Status> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(to_status),
        Err(e) => Err(Status::internal(format!("blocking task failed: {e}"))),
    }
}

/// The current time as a protobuf timestamp.
pub fn now_timestamp() -> prost_types::Timestamp {
    prost_types::Timestamp::from(std::time::SystemTime::now())
}
