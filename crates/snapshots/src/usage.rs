//! Disk usage of a directory tree, as containerd's `fs.DiskUsage` counts it.

use crate::Usage;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use stevedore_types::{Error, Result};

/// Blocks (in 512-byte units, as bytes) and distinct inodes under `dir`.
pub fn disk_usage(dir: &Path) -> Result<Usage> {
    let mut seen = HashSet::new();
    let mut u = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p)
            .map_err(|e| Error::from(e).context(format!("usage: stat {}", p.display())))?;
        if seen.insert((md.dev(), md.ino())) {
            u.inodes += 1;
            u.size += (md.blocks() * 512) as i64;
        }
        if md.is_dir() {
            let rd = std::fs::read_dir(&p)
                .map_err(|e| Error::from(e).context(format!("usage: read {}", p.display())))?;
            for e in rd {
                let e =
                    e.map_err(|e| Error::from(e).context(format!("usage: read {}", p.display())))?;
                stack.push(e.path());
            }
        }
    }
    Ok(u)
}
