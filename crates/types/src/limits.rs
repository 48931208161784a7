//! The limits stevedore puts on what clients, registries and archives hand
//! it, in one place. Each is checked once, by the code that owns the object,
//! and a violation is an InvalidArgument error naming the limit and the
//! object (except gRPC messages, which tonic refuses itself).
//!
//! | limit | value | checked in |
//! |---|---|---|
//! | label key + value | 4096 bytes (containerd's `labels.Validate`) | `labels::validate`, called by metadata (images, containers, content, leases, namespaces) and the snapshot engine |
//! | manifest / index size | 4,393,216 bytes (containerd's `MaxManifestSize`, `4 * 1048 * 1048`) | `images::spec` (unpack, import, pull, push, check), `remote` (registry responses) |
//! | image config / other JSON | 20 MiB | `images::spec`, `images::archive` (`manifest.json`, `oci-layout`) |
//! | layers per manifest, diff IDs per config | 500 (overlayfs' `OVL_MAX_STACK`: more lower dirs cannot be mounted) | `images::spec` |
//! | gRPC message, both directions | 16 MiB (containerd's `defaults.DefaultMaxRecvMsgSize` / `DefaultMaxSendMsgSize`) | every service in `services` |
//! | one ingest | its declared total; a configurable cap (content plugin `max_ingest_size`, 0 = none) | `content::local` writer |

/// containerd's maximum size of a label key plus its value.
pub const MAX_LABEL_SIZE: usize = 4096;

/// containerd's `remotes/docker.MaxManifestSize` (sic: 4 * 1048 * 1048, not 4 MiB).
pub const MAX_MANIFEST_SIZE: i64 = 4 * 1048 * 1048;

/// Largest image config (or other JSON document) parsed in memory.
pub const MAX_CONFIG_SIZE: i64 = 20 << 20;

/// Most layers a manifest (and diff IDs a config) may list: overlayfs stacks
/// at most 500 lower directories (`OVL_MAX_STACK`), so a deeper image could
/// not be mounted anyway.
pub const MAX_LAYERS: usize = 500;

/// containerd's default gRPC server receive limit (`defaults.DefaultMaxRecvMsgSize`).
pub const MAX_RECV_MESSAGE_SIZE: usize = 16 << 20;

/// containerd's default gRPC server send limit (`defaults.DefaultMaxSendMsgSize`).
pub const MAX_SEND_MESSAGE_SIZE: usize = 16 << 20;
