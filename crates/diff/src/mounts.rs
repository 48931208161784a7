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
    apply, apply_with_parents, compare, decompress, Applied, Compression, WhiteoutMode, Written,
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

/// Apply a (possibly compressed) layer blob onto the mounts of an active
/// snapshot; `scratch` holds temporary mount points.
pub fn apply_to_mounts(
    mounts: &[Mount],
    media_type: &str,
    blob: impl Read,
    scratch: &Path,
) -> Result<Applied> {
    let layer = decompress(Compression::of_media_type(media_type)?, blob)?;
    if let Some((dir, mode, parents)) = direct_target(mounts) {
        return apply_with_parents(&dir, layer, mode, &parents);
    }
    let target = tempfile::Builder::new()
        .prefix("apply-")
        .tempdir_in(scratch)
        .map_err(|e| {
            Error::from(e).context(format!("apply layer: temp dir in {}", scratch.display()))
        })?;
    let g = MountGuard::mount(mounts, target.path())?;
    let r = apply(target.path(), layer, WhiteoutMode::Delete);
    g.release()?;
    r
}

/// Write the difference between two sets of mounts as an uncompressed layer tar.
pub fn compare_mounts(
    lower: &[Mount],
    upper: &[Mount],
    w: impl Write,
    scratch: &Path,
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
    let r = compare(ld.path(), ud.path(), w);
    ug.release()?;
    if let Some(g) = lg {
        g.release()?;
    }
    r
}
