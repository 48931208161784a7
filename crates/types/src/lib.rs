//! Core types shared by every stevedore crate. Layer 0: depends on std, serde,
//! thiserror and regex only; knows nothing of gRPC, the config or plugins.

pub mod descriptor;
pub mod digest;
pub mod error;
pub mod filters;
pub mod identifiers;
pub mod labels;
pub mod limits;
pub mod mount;
pub mod platform;

pub use descriptor::Descriptor;
pub use digest::{Algorithm, Digest};
pub use error::{Error, ErrorKind, Result};
pub use mount::Mount;
pub use platform::Platform;
