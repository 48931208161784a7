//! Linux facilities behind small functions and traits, so the logic above is
//! testable and the real thing is tested for real (as root) here.

pub mod malloc;
pub mod mount;

use std::path::Path;
use stevedore_types::{Error, Result};

/// `statfs` magic of btrfs.
pub const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
/// `statfs` magic of overlayfs.
pub const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// The filesystem type magic of the filesystem holding `path`.
pub fn fs_magic(path: &Path) -> Result<i64> {
    let st = rustix::fs::statfs(path).map_err(|e| {
        Error::from(std::io::Error::from(e)).context(format!("statfs {}", path.display()))
    })?;
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_type as i64)
}

/// Create a FIFO at `path` with `mode`; an existing FIFO is fine.
pub fn mkfifo(path: &Path, mode: u32) -> Result<()> {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    match mknodat(CWD, path, FileType::Fifo, Mode::from_raw_mode(mode), 0) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => {
            Err(Error::from(std::io::Error::from(e)).context(format!("mkfifo {}", path.display())))
        }
    }
}

/// True when `path` lives on btrfs.
pub fn is_btrfs(path: &Path) -> Result<bool> {
    Ok(fs_magic(path)? == BTRFS_SUPER_MAGIC)
}

/// Start writing back the dirty pages of `file` in `offset..offset+len`
/// without waiting for them (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): a
/// large file written in pieces is then mostly on disk when its final
/// `fsync` runs, instead of all of it waiting for that one call. Durability
/// still comes only from the `fsync`.
pub fn start_writeback(file: &std::fs::File, offset: u64, len: u64) -> Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a descriptor `file` keeps open for the call
    let r = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r != 0 {
        return Err(Error::from(std::io::Error::last_os_error())
            .context(format!("start writeback of {len} bytes at {offset}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_is_not_btrfs() {
        assert!(!is_btrfs(Path::new("/proc")).unwrap());
        assert_eq!(fs_magic(Path::new("/proc")).unwrap(), 0x9fa0);
        assert!(fs_magic(Path::new("/nonexistent/x")).is_err());
    }
}
