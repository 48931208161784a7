//! The images library (layer 4): what an image is made of and how to walk,
//! check, label, import, export and convert it, over small content traits
//! ([`content::Provider`], [`content::Ingester`], [`content::LabelManager`]).
//! No gRPC, no image records storage: services and the CLI call in here.
//!
//! - [`mediatypes`]: media types and predicates.
//! - [`spec`]: manifest, index, config JSON (size-limited reads).
//! - [`handlers`]: walk/dispatch, skip/stop sentinels, platform filters,
//!   children GC labels.
//! - [`image`]: manifest for a platform, config, diff IDs, size, check,
//!   unpack plan, diff IDs of layers.
//! - [`archive`]: OCI/Docker importers, the OCI exporter (byte-identical to
//!   containerd 1.6's).
//! - [`convert`]: Docker schema2 to OCI, layer recompression.
//! - [`reference`]: containerd/Docker reference parsing and normalisation.
//! - [`testing`]: a directory-backed content store for tests.

pub mod archive;
pub mod content;
pub mod convert;
pub mod handlers;
pub mod image;
pub mod mediatypes;
pub mod reference;
pub mod spec;
pub mod testing;
