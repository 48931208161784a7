//! Task bundles, laid out as containerd's runtime v2 lays them out.
//!
//! # On-disk layout
//! - `<state>/<namespace>/<id>/` (state = `<daemon state>/io.containerd.runtime.v2.task`),
//!   mode 0700: the bundle the shim runs in (its working directory).
//!   - `config.json`: the OCI runtime spec (written temp + fsync + rename).
//!   - `rootfs/` (0711): the shim mounts the task's rootfs mounts here.
//!   - `work` -> `<root>/<namespace>/<id>` (root = `<daemon root>/io.containerd.runtime.v2.task`):
//!     persistent scratch space for the shim/runtime.
//!   - `log`: a FIFO the shim writes its log to; the daemon reads it.
//!   - `address`: the shim's ttrpc address (written by the shim, or by us).
//!   - `shim-binary-path`: the shim binary that started it (for `delete` after a crash).
//!
//! State is volatile (tmpfs in production): after a reboot no bundle remains,
//! as no task does. After a daemon crash, bundles tell which shims to reconnect to.

use std::io::Write;
use std::path::{Path, PathBuf};
use stevedore_types::{Error, Result};

/// A task's bundle directory.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub namespace: String,
    pub id: String,
    pub path: PathBuf,
    work: PathBuf,
}

fn io(e: std::io::Error, what: impl std::fmt::Display) -> Error {
    Error::from(e).context(what)
}

/// Write `data` to `path` crash-safely: temp file, fsync, rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).map_err(|e| io(e, format!("create {}", tmp.display())))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| io(e, format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| io(e, format!("rename to {}", path.display())))
}

/// Ids must be safe as one path component: containerd's identifier rule,
/// worded as containerd's runtime words it (`invalid task id ...: identifier ...`).
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    stevedore_types::identifiers::validate(id)
        .map_err(|e| Error::invalid(format!("invalid {what} {id}: {}", e.message)))
}

impl Bundle {
    /// Create the bundle of task `id` with its spec. Fails with AlreadyExists
    /// when a bundle for it exists.
    pub fn create(
        state: &Path,
        root: &Path,
        namespace: &str,
        id: &str,
        spec: &[u8],
    ) -> Result<Bundle> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        validate_id("namespace", namespace)?;
        validate_id("task id", id)?;
        let b = Bundle::at(state, root, namespace, id);
        let parent = state.join(namespace);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&parent)
            .map_err(|e| io(e, format!("create {}", parent.display())))?;
        match std::fs::DirBuilder::new().mode(0o700).create(&b.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(Error::already_exists(format!(
                    "bundle of task {id:?} in namespace {namespace:?}: already exists"
                )))
            }
            Err(e) => return Err(io(e, format!("create bundle {}", b.path.display()))),
        }
        let result = (|| {
            let rootfs = b.rootfs();
            std::fs::create_dir(&rootfs)
                .map_err(|e| io(e, format!("create {}", rootfs.display())))?;
            std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o711))
                .map_err(|e| io(e, format!("chmod {}", rootfs.display())))?;
            let _ = std::fs::remove_dir_all(&b.work);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(&b.work)
                .map_err(|e| io(e, format!("create {}", b.work.display())))?;
            std::os::unix::fs::symlink(&b.work, b.path.join("work"))
                .map_err(|e| io(e, "link bundle work dir"))?;
            write_atomic(&b.path.join("config.json"), spec)?;
            prepare_for_user_namespace(&b.path, spec)
        })();
        if let Err(e) = result {
            let _ = b.delete();
            return Err(e.context(format!("create bundle of task {id:?}")));
        }
        Ok(b)
    }

    /// The bundle of task `id` (whether or not it exists).
    pub fn at(state: &Path, root: &Path, namespace: &str, id: &str) -> Bundle {
        Bundle {
            namespace: namespace.into(),
            id: id.into(),
            path: state.join(namespace).join(id),
            work: root.join(namespace).join(id),
        }
    }

    /// Where the rootfs is mounted.
    pub fn rootfs(&self) -> PathBuf {
        self.path.join("rootfs")
    }

    /// Read a small file of the bundle, trimmed.
    pub fn read(&self, name: &str) -> Result<String> {
        let p = self.path.join(name);
        std::fs::read_to_string(&p)
            .map(|s| s.trim().to_string())
            .map_err(|e| io(e, format!("read {}", p.display())))
    }

    /// Write a small file of the bundle crash-safely.
    pub fn write(&self, name: &str, data: &str) -> Result<()> {
        write_atomic(&self.path.join(name), data.as_bytes())
    }

    /// Unmount the rootfs and remove the bundle and its work dir.
    pub fn delete(&self) -> Result<()> {
        stevedore_sys::mount::unmount_all(&self.rootfs())
            .map_err(|e| e.context(format!("delete bundle of task {:?}", self.id)))?;
        for dir in [&self.path, &self.work] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e, format!("remove {}", dir.display()))),
            }
        }
        Ok(())
    }
}

/// With a user namespace the container's root (the remapped gid 0) must be
/// able to reach the rootfs: group-own the bundle by that gid, mode 0710
/// (containerd's `prepareBundleDirectoryPermissions`).
fn prepare_for_user_namespace(path: &Path, spec: &[u8]) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let v: serde_json::Value =
        serde_json::from_slice(spec).map_err(|e| Error::invalid(format!("bundle spec: {e}")))?;
    let gid = v["linux"]["gidMappings"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["containerID"].as_u64() == Some(0))
        .and_then(|m| m["hostID"].as_u64())
        .unwrap_or(0);
    if gid == 0 {
        return Ok(());
    }
    let gid =
        u32::try_from(gid).map_err(|_| Error::invalid("bundle spec: gid mapping out of range"))?;
    std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
        io(
            e,
            format!("chown {} to the remapped root group", path.display()),
        )
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o710))
        .map_err(|e| io(e, format!("chmod {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_and_deletes_bundle_with_mounted_rootfs() {
        let d = tempfile::tempdir().unwrap();
        let (state, root) = (d.path().join("state"), d.path().join("root"));
        let b = Bundle::create(&state, &root, "ns", "c1", b"{}").unwrap();
        assert_eq!(std::fs::read(b.path.join("config.json")).unwrap(), b"{}");
        assert!(b.rootfs().is_dir());
        assert_eq!(
            std::fs::read_link(b.path.join("work")).unwrap(),
            root.join("ns").join("c1")
        );
        let e = Bundle::create(&state, &root, "ns", "c1", b"{}").unwrap_err();
        assert_eq!(e.kind, stevedore_types::ErrorKind::AlreadyExists);
        let src = d.path().join("src");
        std::fs::create_dir(&src).unwrap();
        stevedore_sys::mount::bind(&src, &b.rootfs(), false).unwrap();
        b.delete().unwrap();
        assert!(!b.path.exists());
        assert!(!root.join("ns").join("c1").exists());
        assert!(src.exists());
        let e = Bundle::create(&state, &root, "ns", "../x", b"{}").unwrap_err();
        assert_eq!(e.kind, stevedore_types::ErrorKind::InvalidArgument);
        assert!(
            e.message.starts_with("invalid task id ../x: identifier"),
            "{e}"
        );
        assert!(!state.join("x").exists() && !d.path().join("x").exists());
    }
}
