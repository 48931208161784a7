//! Snapshotters with containerd's semantics (`snapshots/snapshotter.go`):
//! active snapshots are prepared on a committed parent, mounted, written, and
//! committed under a name; views are read-only actives; a chain of committed
//! parents is an image's layers.
//!
//! Three filesystems back the same engine ([`engine::Engine`]): [`overlay`]
//! (one directory per layer, stacked by overlayfs), [`native`] (each snapshot a
//! full copy of its parent, works anywhere) and [`btrfs`] (subvolumes and
//! snapshots). Each keeps its own transactional metadata (`metadata.db`, see
//! [`engine`]). Keys here are global; [`namespaced::Namespaced`] maps
//! containerd namespaces onto one snapshotter. All calls block: async callers
//! use a blocking pool.

pub mod btrfs;
pub mod copy;
pub mod engine;
pub mod namespaced;
pub mod native;
pub mod overlay;
pub mod usage;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;
use stevedore_types::filters::{label_field, Filter};
use stevedore_types::{Mount, Result};

pub use engine::Engine;
pub use namespaced::Namespaced;

/// The label by which containerd marks the image layer a snapshot unpacks.
pub const LABEL_SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";

/// What a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Read-only, mountable, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Immutable, a parent for others.
    Committed,
}

impl Kind {
    /// containerd's word for the kind (filters, `ctr snapshots ls`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

/// A snapshot's public record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// Key of an active/view snapshot, or name of a committed one.
    pub name: String,
    /// The committed parent's name, empty for none.
    pub parent: String,
    pub kind: Kind,
    pub labels: HashMap<String, String>,
    pub created: SystemTime,
    pub updated: SystemTime,
}

impl Info {
    /// Fields for containerd's filters: `name`, `parent`, `kind`, `labels.*`.
    pub fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "name" => Some(self.name.clone()),
            "parent" => Some(self.parent.clone()),
            "kind" => Some(self.kind.as_str().to_string()),
            "labels" => label_field(path, &self.labels),
            _ => None,
        }
    }

    /// True when `filter` accepts this snapshot.
    pub fn matches(&self, filter: &Filter) -> bool {
        filter.matches(&|p: &[String]| self.field(p))
    }
}

/// Disk usage of a snapshot's own layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes allocated (blocks * 512), hardlinks counted once.
    pub size: i64,
    /// Distinct inodes.
    pub inodes: i64,
}

/// containerd's Snapshotter interface, blocking.
pub trait Snapshotter: Send + Sync {
    /// The record of `key`.
    fn stat(&self, key: &str) -> Result<Info>;
    /// Change labels (`labels` or `labels.<key>` field paths; none = all labels).
    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info>;
    /// Disk usage: live for active snapshots, recorded at commit otherwise.
    fn usage(&self, key: &str) -> Result<Usage>;
    /// The mounts of an active or view snapshot.
    fn mounts(&self, key: &str) -> Result<Vec<Mount>>;
    /// Create an active snapshot on `parent` ("" for none).
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>>;
    /// Create a read-only view of `parent`.
    fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>>;
    /// Turn active `key` into committed `name`, with `labels`.
    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()>;
    /// Remove a snapshot that has no children.
    fn remove(&self, key: &str) -> Result<()>;
    /// Whether [`Snapshotter::rebase`] is supported: only where a layer's
    /// directory does not depend on its parents' (overlayfs).
    fn can_rebase(&self) -> bool {
        false
    }
    /// Put active `key` on committed `parent` ("" for none) instead of the
    /// parent it was prepared on, keeping its files, so a pull can unpack
    /// layers concurrently into parentless snapshots and stack them in order
    /// before committing. Unimplemented where [`Snapshotter::can_rebase`] is
    /// false. Not in containerd's interface: stevedore's own, used inside
    /// the daemon.
    fn rebase(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        let _ = parent;
        Err(stevedore_types::Error::unimplemented(format!(
            "rebase snapshot {key:?}: not supported by this snapshotter"
        )))
    }
    /// Every snapshot that `filter` accepts.
    fn list(&self, filter: &Filter) -> Result<Vec<Info>>;
    /// Remove directories no snapshot owns (left by crashes or removals).
    fn cleanup(&self) -> Result<()>;
}
