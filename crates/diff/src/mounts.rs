//! Applying onto and comparing snapshot mounts: what the Diff service calls.
//!
//! - [`apply_to_mounts`]: an overlay mount with an `upperdir` is applied
//!   straight into the upper directory with overlay-native whiteouts (no
//!   mount needed); a bind mount straight into its source with deletions;
//!   anything else is mounted on a temporary directory, applied with
//!   deletions, and unmounted.
//! - [`compare_mounts`]: mounts lower and upper on temporary directories and
//!   runs [`crate::compare`].

use crate::{
    apply, apply_with_parents, compare_with, decompress, inherit_implicit_dirs, Applied,
    CompareOptions, Compression, WhiteoutMode, Written,
};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use stevedore_sys::mount::MountGuard;
use stevedore_types::{Error, Mount, Result};

/// Where a layer can be written without mounting, how, and the lower dirs.
fn direct_target(mounts: &[Mount]) -> Option<(PathBuf, WhiteoutMode, Vec<PathBuf>)> {
    let [m] = mounts else { return None };
    if m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") {
        if m.read_only() {
            return None;
        }
        return Some((PathBuf::from(&m.source), WhiteoutMode::Delete, Vec::new()));
    }
    if m.kind == "overlay" {
        let upper = m.options.iter().find_map(|o| o.strip_prefix("upperdir="))?;
        let lowers = m
            .options
            .iter()
            .find_map(|o| o.strip_prefix("lowerdir="))
            .map(|l| l.split(':').map(PathBuf::from).collect())
            .unwrap_or_default();
        return Some((PathBuf::from(upper), WhiteoutMode::Overlay, lowers));
    }
    None
}

/// [`inherit_implicit_dirs`] for a layer applied without its lower layers
/// and since stacked: `mounts` are its active snapshot's (an overlay mount
/// names the upper directory and the lowers; a bind mount has no lowers, so
/// the directories keep their defaults).
pub fn inherit_implicit_dirs_in_mounts(mounts: &[Mount], dirs: &[PathBuf]) -> Result<()> {
    if dirs.is_empty() {
        return Ok(());
    }
    let (upper, _, lowers) = direct_target(mounts).ok_or_else(|| {
        Error::internal("implicit directories: the snapshot's mounts name no writable directory")
    })?;
    inherit_implicit_dirs(&upper, dirs, &lowers)
}

/// Apply a (possibly compressed) layer blob onto the mounts of an active
/// snapshot; `scratch` holds temporary mount points.
pub fn apply_to_mounts(
    mounts: &[Mount],
    media_type: &str,
    blob: impl Read,
    scratch: &Path,
) -> Result<Applied> {
    apply_to_mounts_with(mounts, media_type, blob, scratch, false)
}

/// [`apply_to_mounts`], and with `sync_fs` (containerd 2.x's
/// `ApplyRequest.sync_fs`) the filesystem holding the applied files is
/// synced (`syncfs`) before returning.
pub fn apply_to_mounts_with(
    mounts: &[Mount],
    media_type: &str,
    blob: impl Read,
    scratch: &Path,
    sync_fs: bool,
) -> Result<Applied> {
    let layer = decompress(Compression::of_media_type(media_type)?, blob)?;
    if let Some((dir, mode, parents)) = direct_target(mounts) {
        let applied = apply_with_parents(&dir, layer, mode, &parents)?;
        if sync_fs {
            syncfs(&dir)?;
        }
        return Ok(applied);
    }
    let target = tempfile::Builder::new()
        .prefix("apply-")
        .tempdir_in(scratch)
        .map_err(|e| {
            Error::from(e).context(format!("apply layer: temp dir in {}", scratch.display()))
        })?;
    let g = MountGuard::mount(mounts, target.path())?;
    let r = apply(target.path(), layer, WhiteoutMode::Delete);
    let r = match r {
        Ok(applied) if sync_fs => syncfs(target.path()).map(|()| applied),
        r => r,
    };
    g.release()?;
    r
}

/// Sync the filesystem that holds `dir` (syncfs(2)).
fn syncfs(dir: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| {
        Error::from(std::io::Error::from(e)).context(format!("sync fs: open {}", dir.display()))
    })?;
    rustix::fs::syncfs(&fd).map_err(|e| {
        Error::from(std::io::Error::from(e)).context(format!("sync fs of {}", dir.display()))
    })
}

/// Write the difference between two sets of mounts as an uncompressed layer tar.
pub fn compare_mounts(
    lower: &[Mount],
    upper: &[Mount],
    w: impl Write,
    scratch: &Path,
) -> Result<Written> {
    compare_mounts_with(lower, upper, w, scratch, &CompareOptions::default())
}

/// [`compare_mounts`] with options (containerd 2.x's `source_date_epoch`).
pub fn compare_mounts_with(
    lower: &[Mount],
    upper: &[Mount],
    w: impl Write,
    scratch: &Path,
    opts: &CompareOptions,
) -> Result<Written> {
    let mk = |p: &str| {
        tempfile::Builder::new()
            .prefix(p)
            .tempdir_in(scratch)
            .map_err(|e| {
                Error::from(e).context(format!("compare: temp dir in {}", scratch.display()))
            })
    };
    let (ld, ud) = (mk("lower-")?, mk("upper-")?);
    let lg = if lower.is_empty() {
        None
    } else {
        Some(MountGuard::mount(lower, ld.path())?)
    };
    let ug = MountGuard::mount(upper, ud.path())?;
    let r = compare_with(ld.path(), ud.path(), w, opts);
    ug.release()?;
    if let Some(g) = lg {
        g.release()?;
    }
    r
}
