//! stevedore's distribution client (layer 2): image references, containerd's
//! `hosts.toml` host configuration, resolve, verified and resumable fetches,
//! token and basic auth, and push primitives. No gRPC, no content store: callers
//! (the daemon's pull/push) stream [`BlobReader`] chunks into their own storage.
//!
//! ```text
//! let resolver = Resolver::new(ResolverOptions {
//!     hosts: HostOptions { hosts_dir: Some("/etc/containerd/certs.d".into()),
//!                          default_scheme: None /* Some("http") for --plain-http */ },
//!     credentials: Some(Arc::new(|host| Some(Credentials::parse("u:p").ok()?))),
//!     ..Default::default()
//! });
//! let reference = Reference::parse_normalized("127.0.0.1:5000/busybox")?; // :latest added
//! let repo = resolver.repository(&reference).await?;   // endpoints: mirrors, then server
//! let root = repo.resolve(&reference).await?;          // manifest/index descriptor
//! let manifest = repo.fetch_manifest(&root).await?;    // verified bytes (<= 4 MiB)
//! let mut blob = repo.fetch(&layer).await?;            // verified stream, resumes itself
//! while let Some(chunk) = blob.chunk().await? { write(chunk); progress(blob.position()); }
//! // after a restart, with the hash of the bytes already ingested:
//! let mut blob = repo.fetch_from(&layer, ingested, Some(prefix_hasher)).await?;
//! // push, children first:
//! repo.push(&desc, reader, &PushBlobOptions { mount_from: Some("other/repo".into()), ..Default::default() }).await?;
//! repo.push_manifest("v1", &root.media_type, bytes).await?;  // tag after children
//! ```
//!
//! Errors are `stevedore_types::Error`s naming the operation, the reference or
//! digest and the registry: 401/403 -> PermissionDenied, 404 -> NotFound,
//! 429 -> ResourceExhausted, 5xx and connection failures (after bounded retries)
//! -> Unavailable, digest mismatch -> FailedPrecondition, schema1 -> NotImplemented.

pub mod auth;
pub mod client;
pub mod fetch;
pub mod hosts;
pub mod media;
pub mod push;
pub mod reference;
#[cfg(feature = "testutil")]
pub mod testutil;
pub mod verify;

pub use auth::{docker_config_credentials, Credentials, CredentialsFn};
pub use client::{Repository, Resolver, ResolverOptions};
pub use fetch::BlobReader;
pub use hosts::{Capabilities, HostOptions, RegistryHost};
pub use push::{PushBlobOptions, PushOutcome, PushReader};
pub use reference::Reference;
pub use verify::Hasher;

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The daemon spawns these on tokio: they must be Send.
    #[allow(dead_code)]
    async fn futures_are_send(
        repo: Repository,
        d: stevedore_types::Descriptor,
        r: Reference,
        mut reader: BlobReader,
    ) {
        let resolver = Resolver::new(ResolverOptions::default());
        assert_send(&resolver.repository(&r));
        assert_send(&repo.resolve(&r));
        assert_send(&repo.fetch(&d));
        assert_send(&reader.chunk());
        let push: PushReader = Box::new(tokio::io::empty());
        assert_send(&repo.push_blob(&d, push, &PushBlobOptions::default()));
        assert_send(&repo.push_manifest("t", "m", bytes::Bytes::new()));
    }

    #[test]
    fn resolver_and_readers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Resolver>();
        check::<Repository>();
        fn check_send<T: Send>() {}
        check_send::<BlobReader>();
    }
}
