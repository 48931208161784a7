//! The overlayfs snapshotter (`io.containerd.snapshotter.v1 overlayfs`).
//!
//! # On-disk layout
//! `<root>/snapshots/<id>/fs` is the layer (the upper dir while active, a
//! lower dir once committed) and `<root>/snapshots/<id>/work` overlayfs' work
//! dir (active snapshots only). Metadata and crash safety: [`crate::engine`].
//!
//! # Mounts (as containerd returns them)
//! - no parent: a bind of `fs` (`rw` or, for a view, `ro`, plus `rbind`);
//! - a view with one parent: a read-only bind of the parent's `fs`;
//! - otherwise `overlay` with `index=off` (when the kernel has the parameter),
//!   `workdir=`/`upperdir=` for active snapshots, and `lowerdir=` listing the
//!   parent chain nearest first (views: lower dirs only, so read-only).
//!
//! Deep chains exceed the kernel's one-page limit on mount data with
//! absolute paths; `stevedore_sys::mount::mount` shortens them to paths
//! relative to `<root>/snapshots` and mounts from a thread with its own cwd
//! (see that module). The returned options stay absolute, like containerd's.

use crate::engine::{Backend, Engine, Snap};
use crate::Kind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use stevedore_types::{Error, Mount, Result};

/// The overlayfs backend.
pub struct Overlay {
    index_off: bool,
}

/// An overlayfs snapshotter.
pub type OverlaySnapshotter = Engine<Overlay>;

/// Open an overlayfs snapshotter at `root`.
pub fn open(root: &Path) -> Result<OverlaySnapshotter> {
    Engine::open(
        root,
        Overlay {
            index_off: Path::new("/sys/module/overlay/parameters/index").exists(),
        },
    )
}

fn mkdir(p: &Path) -> Result<()> {
    std::fs::create_dir(p).map_err(|e| Error::from(e).context(format!("create {}", p.display())))
}

fn path_str(p: PathBuf) -> String {
    p.display().to_string()
}

impl Backend for Overlay {
    fn create(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()> {
        let fs = dir.join("fs");
        mkdir(&fs)?;
        if kind == Kind::Active {
            mkdir(&dir.join("work"))?;
        }
        if let Some(p) = parent {
            // the layer root takes its parent's owner, as containerd does
            let md = std::fs::metadata(p.join("fs"))
                .map_err(|e| Error::from(e).context(format!("stat parent {}", p.display())))?;
            std::os::unix::fs::chown(&fs, Some(md.uid()), Some(md.gid()))
                .map_err(|e| Error::from(e).context(format!("chown {}", fs.display())))?;
        }
        Ok(())
    }

    fn rebasable(&self) -> bool {
        true // the upper dir holds only the snapshot's own changes
    }

    fn rebase(&self, dir: &Path, parent: Option<&Path>) -> Result<()> {
        // as create does: the layer root takes its parent's owner
        let Some(p) = parent else { return Ok(()) };
        let fs = dir.join("fs");
        let md = std::fs::metadata(p.join("fs"))
            .map_err(|e| Error::from(e).context(format!("stat parent {}", p.display())))?;
        std::os::unix::fs::chown(&fs, Some(md.uid()), Some(md.gid()))
            .map_err(|e| Error::from(e).context(format!("chown {}", fs.display())))
    }

    fn mounts(&self, s: &Snap, dir_of: &dyn Fn(u64) -> PathBuf) -> Vec<Mount> {
        let fs = |id: u64| path_str(dir_of(id).join("fs"));
        let bind = |source: String, ro: bool| {
            vec![Mount {
                kind: "bind".into(),
                source,
                target: String::new(),
                options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
            }]
        };
        if s.parent_ids.is_empty() {
            return bind(fs(s.id), s.kind == Kind::View);
        }
        let mut options = Vec::new();
        if self.index_off {
            options.push("index=off".to_string());
        }
        if s.kind == Kind::Active {
            options.push(format!("workdir={}", path_str(dir_of(s.id).join("work"))));
            options.push(format!("upperdir={}", fs(s.id)));
        } else if s.parent_ids.len() == 1 {
            return bind(fs(s.parent_ids[0]), true);
        }
        let lower: Vec<String> = s.parent_ids.iter().map(|&id| fs(id)).collect();
        options.push(format!("lowerdir={}", lower.join(":")));
        vec![Mount {
            kind: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }]
    }
}
