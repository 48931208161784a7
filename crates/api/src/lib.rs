//! containerd's gRPC API (generated from `proto/` at build time with protox and
//! tonic-prost-build), plus the edge helpers every service and client needs:
//! the one mapping between stevedore error kinds and gRPC codes, the namespace
//! metadata header, type URLs for `Any` payloads, and a unix-socket client.

#![allow(clippy::all, clippy::pedantic)]

mod generated {
    #![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub use generated::*;

pub mod client;
pub mod methods;
pub mod status;
pub mod typeurl;

/// The gRPC metadata key carrying the namespace, as containerd names it.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// Shorter paths to the services and types everybody uses.
pub mod services {
    pub use crate::containerd::services::containers::v1 as containers;
    pub use crate::containerd::services::content::v1 as content;
    pub use crate::containerd::services::diff::v1 as diff;
    pub use crate::containerd::services::events::v1 as events;
    pub use crate::containerd::services::images::v1 as images;
    pub use crate::containerd::services::introspection::v1 as introspection;
    pub use crate::containerd::services::leases::v1 as leases;
    pub use crate::containerd::services::namespaces::v1 as namespaces;
    pub use crate::containerd::services::sandbox::v1 as sandbox;
    pub use crate::containerd::services::snapshots::v1 as snapshots;
    pub use crate::containerd::services::streaming::v1 as streaming;
    pub use crate::containerd::services::tasks::v1 as tasks;
    pub use crate::containerd::services::transfer::v1 as transfer;
    pub use crate::containerd::services::version::v1 as version;
    pub use crate::grpc::health::v1 as health;
    /// stevedore's own transfer API (plugin `stevedore-transfer`), which
    /// the `stevedore` CLI speaks; containerd 2.x's is [`transfer`].
    pub use crate::stevedore::services::transfer::v1 as stevedore_transfer;
}

/// Kubernetes' Container Runtime Interface (`runtime.v1`: RuntimeService and
/// ImageService), served by the CRI plugins.
pub use generated::runtime::v1 as cri;

pub use containerd::events;
pub use containerd::types;
