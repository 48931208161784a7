//! The native snapshotter (`io.containerd.snapshotter.v1 native`): every
//! snapshot is a full copy of its parent, so it works on any filesystem.
//!
//! # On-disk layout
//! `<root>/snapshots/<id>/fs`: the snapshot's complete tree. A child's `fs` is
//! made by [`crate::copy::copy_tree`] (owners, modes, xattrs, symlinks,
//! hardlinks, devices, times) before its record is committed. Mounts are binds
//! (`rw`/`ro` + `rbind`). Metadata and crash safety: [`crate::engine`].

use crate::copy::copy_tree;
use crate::engine::{Backend, Engine, Snap};
use crate::Kind;
use std::path::{Path, PathBuf};
use stevedore_types::{Error, Mount, Result};

/// The copying backend.
pub struct Native;

/// A native snapshotter.
pub type NativeSnapshotter = Engine<Native>;

/// Open a native snapshotter at `root`.
pub fn open(root: &Path) -> Result<NativeSnapshotter> {
    Engine::open(root, Native)
}

/// A bind mount of a snapshot's tree.
pub(crate) fn bind_of(s: &Snap, dir_of: &dyn Fn(u64) -> PathBuf) -> Vec<Mount> {
    vec![Mount {
        kind: "bind".into(),
        source: dir_of(s.id).join("fs").display().to_string(),
        target: String::new(),
        options: vec![
            if s.kind == Kind::Active { "rw" } else { "ro" }.into(),
            "rbind".into(),
        ],
    }]
}

impl Backend for Native {
    fn create(&self, dir: &Path, _kind: Kind, parent: Option<&Path>) -> Result<()> {
        let fs = dir.join("fs");
        std::fs::create_dir(&fs)
            .map_err(|e| Error::from(e).context(format!("create {}", fs.display())))?;
        if let Some(p) = parent {
            copy_tree(&p.join("fs"), &fs)?;
            // the copy is on disk before the record that names it (power loss)
            crate::engine::sync_filesystem(&fs)?;
        }
        Ok(())
    }

    fn mounts(&self, s: &Snap, dir_of: &dyn Fn(u64) -> PathBuf) -> Vec<Mount> {
        bind_of(s, dir_of)
    }
}
