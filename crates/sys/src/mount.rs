//! Mounting and unmounting, as the runtime needs them for bundles.

use std::path::Path;
use stevedore_types::{Error, Result};

fn io_err(e: rustix::io::Errno, what: String) -> Error {
    Error::from(std::io::Error::from(e)).context(what)
}

/// Bind-mount `source` on `target` (recursively), read-only when asked.
pub fn bind(source: &Path, target: &Path, readonly: bool) -> Result<()> {
    use rustix::mount::{mount_bind_recursive, mount_remount, MountFlags};
    mount_bind_recursive(source, target).map_err(|e| {
        io_err(
            e,
            format!("bind mount {} on {}", source.display(), target.display()),
        )
    })?;
    if readonly {
        mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")
            .map_err(|e| io_err(e, format!("remount {} read-only", target.display())))?;
    }
    Ok(())
}

/// Perform a containerd-style mount (`type`, `source`, `options`) on
/// `target`: `bind`/`rbind` become bind mounts, flag options (ro, nosuid,
/// nodev, noexec, ...) become mount flags, the rest is filesystem data
/// (e.g. overlay's `lowerdir=...`).
pub fn mount(kind: &str, source: &str, target: &Path, options: &[String]) -> Result<()> {
    use rustix::mount::{mount as sys_mount, MountFlags};
    let readonly = options.iter().any(|o| o == "ro");
    if kind == "bind" || options.iter().any(|o| o == "bind" || o == "rbind") {
        return bind(Path::new(source), target, readonly);
    }
    let mut flags = MountFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MountFlags::RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MountFlags::NOSUID,
            "nodev" => flags |= MountFlags::NODEV,
            "noexec" => flags |= MountFlags::NOEXEC,
            "noatime" => flags |= MountFlags::NOATIME,
            "relatime" => flags |= MountFlags::RELATIME,
            "sync" => flags |= MountFlags::SYNCHRONOUS,
            other => data.push(other),
        }
    }
    let data = std::ffi::CString::new(data.join(","))
        .map_err(|_| Error::invalid(format!("mount options of {target:?} contain NUL")))?;
    sys_mount(source, target, kind, flags, Some(data.as_c_str()))
        .map_err(|e| io_err(e, format!("mount {kind} {source} on {}", target.display())))
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
                    .map_err(|e| io_err(e, format!("unmount {}", target.display())));
            }
            Err(e) => return Err(io_err(e, format!("unmount {}", target.display()))),
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
    fn bind_mount_and_unmount_all() {
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(src.join("f"), b"x").unwrap();
        bind(&src, &dst, true).unwrap();
        bind(&src, &dst, false).unwrap();
        assert_eq!(std::fs::read(dst.join("f")).unwrap(), b"x");
        unmount_all(&dst).unwrap();
        assert!(!dst.join("f").exists());
        unmount_all(&dst).unwrap();
        unmount_all(&d.path().join("missing")).unwrap();
        mount("tmpfs", "tmpfs", &dst, &["nosuid".into(), "size=1m".into()]).unwrap();
        std::fs::write(dst.join("t"), b"y").unwrap();
        mount(
            "bind",
            src.to_str().unwrap(),
            &dst,
            &["rbind".into(), "ro".into()],
        )
        .unwrap();
        assert!(
            std::fs::write(dst.join("g"), b"z").is_err(),
            "read-only bind"
        );
        unmount_all(&dst).unwrap();
        assert!(!dst.join("t").exists());
    }
}
