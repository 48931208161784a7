//! Mounting the [`Mount`]s snapshotters return, and unmounting them.
//!
//! Options follow containerd's `mount.Mount`: flag words (`ro`, `rw`, `bind`,
//! `rbind`, `nosuid`, `nodev`, `noexec`, ...) become mount flags, the rest is
//! the filesystem data string.
//!
//! # Long overlay option strings
//! The kernel copies mount data into one page (4096 bytes), so an overlay with
//! many `lowerdir`s of absolute paths does not fit (128 layers of
//! `/var/lib/stevedore/io.containerd.snapshotter.v1.overlayfs/snapshots/N/fs`
//! need ~9 KiB). When the data is too long, [`mount`] rewrites every
//! `lowerdir`/`upperdir`/`workdir` path relative to their longest common
//! directory and performs the mount from a helper thread that first unshares
//! its filesystem context (`unshare(CLONE_FS)`) and `chdir`s there: the
//! kernel resolves relative overlay paths against the caller's cwd, and the
//! unshared cwd never disturbs the other threads of the process (unlike a
//! process-wide `chdir`). `snapshots/N/fs` paths then cost ~10 bytes a layer.
//! Clients (such as `ctr`) mounting the same absolute options themselves use
//! containerd's equivalent compaction.

use rustix::mount::{MountFlags, UnmountFlags};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use stevedore_types::{Error, Mount, Result};

/// The most mount data the kernel accepts (one page, minus the terminator).
pub const MAX_MOUNT_DATA: usize = 4095;

/// Performs and undoes mounts; the real one is [`SystemMounter`].
pub trait Mounter: Send + Sync {
    fn mount(&self, m: &Mount, target: &Path) -> Result<()>;
    fn unmount(&self, target: &Path) -> Result<()>;
}

/// Mounts with the real syscalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemMounter;

impl Mounter for SystemMounter {
    fn mount(&self, m: &Mount, target: &Path) -> Result<()> {
        mount(m, target)
    }
    fn unmount(&self, target: &Path) -> Result<()> {
        unmount(target)
    }
}

fn sys_err(op: String) -> impl FnOnce(rustix::io::Errno) -> Error {
    move |e| Error::from(std::io::Error::from(e)).context(op)
}

struct Parsed {
    flags: MountFlags,
    bind: bool,
    recursive: bool,
    read_only: bool,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Parsed {
    let mut p = Parsed {
        flags: MountFlags::empty(),
        bind: false,
        recursive: false,
        read_only: false,
        data: Vec::new(),
    };
    for o in options {
        match o.as_str() {
            "ro" => p.read_only = true,
            "rw" | "defaults" => p.read_only = false,
            "bind" => p.bind = true,
            "rbind" => {
                p.bind = true;
                p.recursive = true
            }
            "nosuid" => p.flags |= MountFlags::NOSUID,
            "nodev" => p.flags |= MountFlags::NODEV,
            "noexec" => p.flags |= MountFlags::NOEXEC,
            "suid" | "dev" | "exec" => {}
            _ => p.data.push(o.clone()),
        }
    }
    p
}

/// Mount `m` on `target` (a directory that exists).
pub fn mount(m: &Mount, target: &Path) -> Result<()> {
    let p = parse_options(&m.options);
    let what = format!("mount {} ({}) on {}", m.source, m.kind, target.display());
    if p.bind || m.kind == "bind" {
        if p.recursive {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target)
                .map_err(sys_err(what.clone()))?;
        } else {
            rustix::mount::mount_bind(m.source.as_str(), target).map_err(sys_err(what.clone()))?;
        }
        if p.read_only || !p.flags.is_empty() {
            let mut flags = p.flags | MountFlags::BIND;
            if p.read_only {
                flags |= MountFlags::RDONLY;
            }
            if let Err(e) = rustix::mount::mount_remount(target, flags, "") {
                let _ = unmount(target);
                return Err(sys_err(format!("{what}: remount read-only"))(e));
            }
        }
        return Ok(());
    }
    let mut flags = p.flags;
    if p.read_only {
        flags |= MountFlags::RDONLY;
    }
    let data = p.data.join(",");
    if data.len() <= MAX_MOUNT_DATA || m.kind != "overlay" {
        let c =
            CString::new(data).map_err(|_| Error::invalid(format!("{what}: NUL in options")))?;
        return rustix::mount::mount(
            m.source.as_str(),
            target,
            m.kind.as_str(),
            flags,
            c.as_c_str(),
        )
        .map_err(sys_err(what));
    }
    let (dir, compact) = compact_overlay_options(&p.data).ok_or_else(|| {
        Error::invalid(format!(
            "{what}: overlay options are {} bytes, over the {MAX_MOUNT_DATA}-byte limit, and share no directory to shorten them",
            data.len()
        ))
    })?;
    if compact.len() > MAX_MOUNT_DATA {
        return Err(Error::invalid(format!(
            "{what}: overlay options are {} bytes even relative to {}, over the {MAX_MOUNT_DATA}-byte limit",
            compact.len(),
            dir.display()
        )));
    }
    let c = CString::new(compact).map_err(|_| Error::invalid(format!("{what}: NUL in options")))?;
    let source = m.source.clone();
    let kind = m.kind.clone();
    let target = std::path::absolute(target)?;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // SAFETY: CLONE_FS only gives this thread its own cwd/umask/root;
            // no file descriptors are affected.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
                .map_err(sys_err(format!("{what}: unshare filesystem context")))?;
            rustix::process::chdir(&dir)
                .map_err(sys_err(format!("{what}: chdir {}", dir.display())))?;
            rustix::mount::mount(source.as_str(), &target, kind.as_str(), flags, c.as_c_str())
                .map_err(sys_err(format!("{what} (relative to {})", dir.display())))
        })
        .join()
        .unwrap_or_else(|_| Err(Error::internal("mount helper thread panicked")))
    })
}

/// Rewrite overlay path options relative to their longest common directory.
/// Returns that directory and the new data string.
pub fn compact_overlay_options(data: &[String]) -> Option<(PathBuf, String)> {
    let mut paths: Vec<&str> = Vec::new();
    for o in data {
        if let Some(v) = o.strip_prefix("lowerdir=") {
            paths.extend(v.split(':'));
        } else if let Some(v) = o
            .strip_prefix("upperdir=")
            .or_else(|| o.strip_prefix("workdir="))
        {
            paths.push(v);
        }
    }
    if paths.is_empty() || paths.iter().any(|p| !p.starts_with('/')) {
        return None;
    }
    let mut common: Vec<&str> = paths[0].split('/').collect();
    common.pop(); // a directory strictly above the first path
    for p in &paths[1..] {
        let comps: Vec<&str> = p.split('/').collect();
        let n = common
            .iter()
            .zip(comps.iter())
            .take_while(|(a, b)| a == b)
            .count()
            .min(comps.len().saturating_sub(1));
        common.truncate(n);
    }
    let prefix = common.join("/");
    if prefix.is_empty() {
        return None;
    }
    let rel = |p: &str| p[prefix.len() + 1..].to_string();
    let out: Vec<String> = data
        .iter()
        .map(|o| {
            if let Some(v) = o.strip_prefix("lowerdir=") {
                format!(
                    "lowerdir={}",
                    v.split(':').map(rel).collect::<Vec<_>>().join(":")
                )
            } else if let Some(v) = o.strip_prefix("upperdir=") {
                format!("upperdir={}", rel(v))
            } else if let Some(v) = o.strip_prefix("workdir=") {
                format!("workdir={}", rel(v))
            } else {
                o.clone()
            }
        })
        .collect();
    Some((PathBuf::from(prefix), out.join(",")))
}

/// Mount several mounts on one target, in order (containerd's `mount.All`).
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<()> {
    for m in mounts {
        mount(m, target)?;
    }
    Ok(())
}

/// Unmount `target` (not lazily: a busy mount is an error).
pub fn unmount(target: &Path) -> Result<()> {
    rustix::mount::unmount(target, UnmountFlags::empty())
        .map_err(sys_err(format!("unmount {}", target.display())))
}

/// Unmounts its target when dropped: for tests and short-lived mounts.
pub struct MountGuard {
    target: PathBuf,
    active: bool,
}

impl MountGuard {
    /// Mount `mounts` on `target` and return a guard that unmounts them.
    pub fn mount(mounts: &[Mount], target: &Path) -> Result<MountGuard> {
        mount_all(mounts, target)?;
        Ok(MountGuard {
            target: target.to_path_buf(),
            active: true,
        })
    }
    pub fn path(&self) -> &Path {
        &self.target
    }
    /// Unmount now, reporting errors.
    pub fn release(mut self) -> Result<()> {
        self.active = false;
        unmount(&self.target)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.active && unmount(&self.target).is_err() {
            let _ = rustix::mount::unmount(&self.target, UnmountFlags::DETACH);
        }
    }
}

// ---- used by the runtime for bundles ----

fn runtime_io_err(e: rustix::io::Errno, what: String) -> Error {
    Error::from(std::io::Error::from(e)).context(what)
}

/// Bind-mount `source` on `target` (recursively), read-only when asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    use rustix::mount::{mount_bind_recursive, mount_remount, MountFlags};
    mount_bind_recursive(source, target).map_err(|e| {
        runtime_io_err(
            e,
            format!("bind mount {} on {}", source.display(), target.display()),
        )
    })?;
    if readonly {
        mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(|e| runtime_io_err(e, format!("remount {} read-only", target.display())))?;
    }
    Ok(())
}

/// Unmount everything mounted on `target` (stacked mounts included), lazily
/// detaching busy ones. Not mounted (or missing) is not an error.
pub fn unmount_all(target: &Path) -> Result<()> {
    use rustix::io::Errno;
    use rustix::mount::{unmount, UnmountFlags};
    for _ in 0..64 {
        match unmount(target, UnmountFlags::NOFOLLOW) {
            Ok(()) => continue,
            Err(Errno::INVAL) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::BUSY) => {
                return unmount(target, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)
                    .map_err(|e| runtime_io_err(e, format!("unmount {}", target.display())));
            }
            Err(e) => return Err(runtime_io_err(e, format!("unmount {}", target.display()))),
        }
    }
    Err(Error::internal(format!(
        "unmount {}: still mounted after 64 unmounts",
        target.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_overlay_paths_relative_to_common_dir() {
        let data = vec![
            "index=off".to_string(),
            "workdir=/r/snapshots/3/work".to_string(),
            "upperdir=/r/snapshots/3/fs".to_string(),
            "lowerdir=/r/snapshots/2/fs:/r/snapshots/1/fs".to_string(),
        ];
        let (dir, s) = compact_overlay_options(&data).unwrap();
        assert_eq!(dir, PathBuf::from("/r/snapshots"));
        assert_eq!(
            s,
            "index=off,workdir=3/work,upperdir=3/fs,lowerdir=2/fs:1/fs"
        );
    }

    #[test]
    fn bind_mounts_read_only_and_unmounts_on_drop() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let m = Mount {
            kind: "bind".into(),
            source: src.display().to_string(),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        };
        {
            let g = MountGuard::mount(&[m], &dst).unwrap();
            assert_eq!(std::fs::read_to_string(g.path().join("f")).unwrap(), "x");
            let e = std::fs::write(dst.join("g"), "y").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(30), "EROFS expected: {e}");
        }
        assert!(!dst.join("f").exists(), "unmounted on drop");
    }
}
