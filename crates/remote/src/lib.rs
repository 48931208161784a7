//! stevedore's distribution client (layer 2): image references, containerd's
//! `hosts.toml` host configuration, resolve, verified and resumable fetches,
//! token and basic auth, and push primitives. No gRPC, no content store: callers
//! (the daemon's pull/push) stream [`BlobReader`] chunks into their own storage.
//!
//! ```text
//! let resolver = Resolver::new(ResolverOptions::default());
//! let reference = Reference::parse_normalized("127.0.0.1:5000/busybox")?;
//! let repo = resolver.repository(&reference).await?;
//! let root = repo.resolve(&reference).await?;          // manifest/index descriptor
//! let manifest = repo.fetch_manifest(&root).await?;    // verified bytes
//! let mut blob = repo.fetch(&layer).await?;            // verified stream, resumes
//! while let Some(chunk) = blob.chunk().await? { ... }
//! ```

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

pub use auth::{Credentials, CredentialsFn};
pub use client::{Repository, Resolver, ResolverOptions};
pub use fetch::BlobReader;
pub use hosts::{Capabilities, HostOptions, RegistryHost};
pub use push::{PushBlobOptions, PushOutcome, PushReader};
pub use reference::Reference;
pub use verify::Hasher;
