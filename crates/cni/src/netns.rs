//! Persistent network namespaces, as containerd's `pkg/netns` makes them.
//!
//! Layout: `<dir>/cni-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` (containerd uses
//! `/var/run/netns`), an empty regular file with the namespace's nsfs inode
//! bind-mounted on it. The mount keeps the namespace alive with no process in
//! it; CNI plugins and the sandbox's runtime spec open the path.
//!
//! Creation happens on a dedicated, short-lived std thread: `unshare(CLONE_NEWNET)`
//! moves only that thread into a fresh namespace, the thread bind-mounts
//! `/proc/thread-self/ns/net` onto the file and exits, so no thread of the
//! caller ever changes namespace. The file is created with `O_EXCL` (a name
//! collision is an error, never a takeover) and removed again when the
//! unshare or the mount fails; once the mount succeeded nothing else can fail,
//! so an error never leaves a mount behind.
//!
//! containerd's comment asks for `<dir>` to be a shared mount point (so the
//! binds show up in mount namespaces that received a copy of it); neither
//! containerd nor we set that up: binds propagate as `<dir>`'s own mount
//! propagation says, and runtimes join the namespace by path at creation.
//!
//! Removal is `umount2(MNT_DETACH)` (repeated while stacked mounts remain) and
//! `unlink`; both tolerate a missing path, so it is idempotent and safe after a
//! crash half-way through.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::mount::{mount_bind, unmount, UnmountFlags};

use crate::error::{Error, Result};

/// `statfs` magic of nsfs, the filesystem of namespace files.
pub const NSFS_MAGIC: i64 = 0x6e73_6673;

/// A network namespace bound at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNs {
    path: PathBuf,
}

impl NetNs {
    /// Create a new network namespace bound at `<dir>/cni-<random uuid>`,
    /// creating `dir` if needed.
    pub fn create(dir: &Path) -> Result<NetNs> {
        std::fs::create_dir_all(dir).map_err(|source| Error::NetNs {
            op: "create directory",
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(format!("cni-{}", random_uuid(dir)?));
        Self::create_at(path)
    }

    /// Create a new network namespace bound at exactly `path` (which must not exist).
    pub fn create_at(path: PathBuf) -> Result<NetNs> {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o444)
            .open(&path)
            .map_err(|source| Error::NetNs {
                op: "create mount point",
                path: path.clone(),
                source,
            })?;
        let target = path.clone();
        let outcome = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn(move || bind_new_netns(&target))
            .map_err(|source| ("spawn thread", source))
            .and_then(|handle| {
                handle.join().unwrap_or_else(|_| {
                    Err(("bind", io::Error::other("namespace thread panicked")))
                })
            });
        match outcome {
            Ok(()) => Ok(NetNs { path }),
            Err((op, source)) => {
                // The mount did not happen (it is the thread's last step), so
                // only the empty file is left to remove.
                let _ = std::fs::remove_file(&path);
                Err(Error::NetNs { op, path, source })
            }
        }
    }

    /// A handle to a namespace created earlier (e.g. found in a sandbox record
    /// after a restart). It does not check the path; see [`NetNs::is_netns`].
    pub fn load(path: impl Into<PathBuf>) -> NetNs {
        NetNs { path: path.into() }
    }

    /// Where the namespace is bound.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True while the path still is a network namespace; false when the path
    /// is gone or is no namespace (e.g. the mount was removed).
    pub fn is_netns(&self) -> Result<bool> {
        is_netns(&self.path)
    }

    /// Unmount and delete the namespace file. Idempotent: a missing path or a
    /// file that is no longer a mount point is not an error.
    pub fn remove(&self) -> Result<()> {
        remove(&self.path)
    }
}

/// True when `path` is a network namespace file (nsfs, of type net).
pub fn is_netns(path: &Path) -> Result<bool> {
    let err = |op, source| Error::NetNs {
        op,
        path: path.to_path_buf(),
        source,
    };
    match rustix::fs::statfs(path) {
        Ok(st) =>
        {
            #[allow(clippy::unnecessary_cast)]
            if st.f_type as i64 != NSFS_MAGIC {
                return Ok(false);
            }
        }
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(err("statfs", e.into())),
    }
    // nsfs also holds mount, pid, ... namespaces: ask the kernel which one.
    let file = std::fs::File::open(path).map_err(|e| err("open", e))?;
    // NS_GET_NSTYPE = _IO(0xb7, 0x3)
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    use std::os::fd::AsRawFd;
    // SAFETY: the ioctl takes no argument and only reads the open fd.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(err("ioctl NS_GET_NSTYPE", io::Error::last_os_error()));
    }
    Ok(kind == libc::CLONE_NEWNET)
}

/// Unmount (lazily) and delete a namespace file; a missing path is fine.
pub fn remove(path: &Path) -> Result<()> {
    // Stacked binds are possible if something raced us; unmount them all.
    for _ in 0..16 {
        match unmount(path, UnmountFlags::DETACH) {
            Ok(()) => continue,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => break,
            Err(e) => {
                return Err(Error::NetNs {
                    op: "unmount",
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::NetNs {
            op: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Runs on its own thread: move this thread into a new network namespace and
/// bind it onto `target`. The thread exits afterwards, so its namespace
/// switch never leaks into the caller's threads.
fn bind_new_netns(target: &Path) -> std::result::Result<(), (&'static str, io::Error)> {
    // SAFETY: CLONE_NEWNET only changes this thread's network namespace; no
    // file descriptor table is unshared.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| ("unshare(CLONE_NEWNET)", e.into()))?;
    mount_bind("/proc/thread-self/ns/net", target).map_err(|e| ("bind mount", e.into()))
}

/// A random RFC 4122 version 4 UUID string, from the kernel's CSPRNG.
fn random_uuid(dir: &Path) -> Result<String> {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        let n = rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| Error::NetNs {
                op: "getrandom for the namespace name",
                path: dir.to_path_buf(),
                source: e.into(),
            })?;
        filled += n;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_names_have_containerds_shape() {
        let u = random_uuid(Path::new("/")).unwrap();
        assert_eq!(u.len(), 36);
        let parts: Vec<_> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_ne!(u, random_uuid(Path::new("/")).unwrap());
    }

    #[test]
    fn missing_path_is_no_netns_and_removes_fine() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cni-gone");
        assert!(!is_netns(&p).unwrap());
        remove(&p).unwrap();
        // a plain file is not a namespace, and remove deletes it
        std::fs::write(&p, b"").unwrap();
        assert!(!is_netns(&p).unwrap());
        remove(&p).unwrap();
        assert!(!p.exists());
    }
}
