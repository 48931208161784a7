//! The btrfs snapshotter (`io.containerd.snapshotter.v1 btrfs`): every
//! snapshot is a subvolume; a child is a btrfs snapshot of its parent's
//! subvolume (copy-on-write, instant), and commit makes the subvolume
//! read-only. Uses the `btrfs` tool of btrfs-progs.
//!
//! # On-disk layout
//! `<root>/snapshots/<id>/fs`: the subvolume (read-only once committed). Views
//! are writable snapshots mounted read-only. Mounts are binds of `fs`
//! (containerd mounts btrfs by `subvolid=`; a bind of the subvolume directory
//! shows the same tree and needs no device lookup). Metadata and crash
//! safety: [`crate::engine`]; a subvolume is destroyed with
//! `btrfs subvolume delete` before its directory is removed.

use crate::engine::{remove_tree, Backend, Engine, Snap};
use crate::Kind;
use std::path::{Path, PathBuf};
use std::process::Command;
use stevedore_types::{Error, Mount, Result};

/// The btrfs backend.
pub struct Btrfs;

/// A btrfs snapshotter.
pub type BtrfsSnapshotter = Engine<Btrfs>;

/// Open a btrfs snapshotter at `root`, which must be on btrfs.
pub fn open(root: &Path) -> Result<BtrfsSnapshotter> {
    std::fs::create_dir_all(root)
        .map_err(|e| Error::from(e).context(format!("create {}", root.display())))?;
    if !stevedore_sys::is_btrfs(root)? {
        return Err(not_btrfs(root));
    }
    Engine::open(root, Btrfs)
}

/// containerd's error for a root that is not on btrfs.
pub fn not_btrfs(root: &Path) -> Error {
    Error::unknown(format!(
        "path {} must be a btrfs filesystem to be used with the btrfs snapshotter",
        root.display()
    ))
}

fn btrfs(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("btrfs")
        .args(args)
        .output()
        .map_err(|e| Error::unavailable(format!("run btrfs (install btrfs-progs): {e}")))?;
    if !out.status.success() {
        let cmd: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        return Err(Error::unknown(format!(
            "btrfs {}: {}",
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Make the subvolume `<dir>/fs` read-only (a committed snapshot) or
/// writable again (`btrfs property set -ts <fs> ro true|false`).
fn set_read_only(dir: &Path, read_only: bool) -> Result<()> {
    let fs = dir.join("fs");
    let value = if read_only { "true" } else { "false" };
    btrfs(&[
        "property".as_ref(),
        "set".as_ref(),
        "-ts".as_ref(),
        fs.as_os_str(),
        "ro".as_ref(),
        value.as_ref(),
    ])
}

impl Backend for Btrfs {
    fn create(&self, dir: &Path, _kind: Kind, parent: Option<&Path>) -> Result<()> {
        let fs = dir.join("fs");
        match parent {
            None => btrfs(&["subvolume".as_ref(), "create".as_ref(), fs.as_os_str()]),
            Some(p) => btrfs(&[
                "subvolume".as_ref(),
                "snapshot".as_ref(),
                p.join("fs").as_os_str(),
                fs.as_os_str(),
            ]),
        }
    }

    fn mounts(&self, s: &Snap, dir_of: &dyn Fn(u64) -> PathBuf) -> Vec<Mount> {
        crate::native::bind_of(s, dir_of)
    }

    fn freeze(&self, dir: &Path) -> Result<()> {
        set_read_only(dir, true)
    }

    fn thaw(&self, dir: &Path) -> Result<()> {
        set_read_only(dir, false)
    }

    fn destroy(&self, dir: &Path) -> Result<()> {
        let fs = dir.join("fs");
        // a subvolume's root directory is inode 256; a plain directory (an
        // orphan of a failed creation) is removed like any other
        let is_subvolume = std::fs::symlink_metadata(&fs)
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m) == 256)
            .unwrap_or(false);
        if is_subvolume {
            btrfs(&["subvolume".as_ref(), "delete".as_ref(), fs.as_os_str()])?;
        }
        remove_tree(dir)
    }
}
