//! Applying a layer tar onto a directory.
//!
//! # Safety argument
//! The root is opened once; every entry's parent directory is opened with
//! `openat2(root, parent, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so a
//! parent path that would leave the root (an absolute symlink, `..` through a
//! symlink, a chain of them) fails with EXDEV, reported as an error naming
//! the entry. The final component is then created, replaced or changed with
//! `*at` calls on that directory fd that never follow a symlink
//! (`O_NOFOLLOW|O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `linkat` without
//! `AT_SYMLINK_FOLLOW`); an existing entry in the way is unlinked first, never
//! written through. Entry names are cleaned lexically: a `..` that climbs
//! above the root is an error, a leading `/` means the root. Hardlink targets
//! are resolved the same way. So nothing outside the root is ever written.
//!
//! Ordering: ownership, then mode (chown clears setuid bits), then xattrs
//! (chown clears `security.capability`), then times; directories' times are
//! set after the whole layer, deepest first, since writing into a directory
//! changes its mtime.

use crate::Hashing;
use rustix::fd::{AsFd, AsRawFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use stevedore_types::{Digest, Error, Result};

/// How OCI whiteouts are materialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// For an overlayfs upper directory: a whiteout becomes a 0/0 character
    /// device, an opaque directory gets `trusted.overlay.opaque=y`.
    Overlay,
    /// For a complete tree (native, btrfs, a mounted overlay): a whiteout
    /// deletes the path, an opaque marker deletes what lower layers put in
    /// the directory.
    Delete,
}

/// What an apply read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// sha256 of the uncompressed tar stream: compare with the diff ID.
    pub diff_id: Digest,
    /// Bytes of the uncompressed stream.
    pub size: u64,
    /// Directories the layer needed but did not carry, created here (with
    /// the attributes of the nearest parent layer holding them, or 0755
    /// root-owned when no parent layer was given), relative to the root,
    /// each after its own parent; see [`inherit_implicit_dirs`].
    pub implicit_dirs: Vec<PathBuf>,
}

/// A numeric header field of only NULs and spaces reads as 0, as Go's
/// archive/tar (containerd's reader) reads it; the tar crate calls it an
/// error. Whiteouts written without owner or time fields are common.
fn blank_is_zero(v: std::io::Result<u64>, field: &[u8]) -> std::io::Result<u64> {
    match v {
        Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        v => v,
    }
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Apply the uncompressed layer tar `layer` onto directory `root`.
pub fn apply(root: &Path, layer: impl Read, mode: WhiteoutMode) -> Result<Applied> {
    apply_with_parents(root, layer, mode, &[])
}

/// Like [`apply`] onto an overlay upper dir whose lower dirs are `parents`
/// (nearest first): a directory the layer needs but does not carry is
/// created with the owner, mode and xattrs it has in the nearest lower layer
/// (as containerd does), so the merged view keeps them.
pub fn apply_with_parents(
    root: &Path,
    layer: impl Read,
    mode: WhiteoutMode,
    parents: &[PathBuf],
) -> Result<Applied> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| sys(e, format!("apply layer: open root {}", root.display())))?;
    let mut hashing = Hashing::new(layer);
    let implicit_dirs;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut st = Applier {
            root: rootfd,
            mode,
            written: HashSet::new(),
            dirs: Vec::new(),
            parents: parents.to_vec(),
            implicit_dirs: Vec::new(),
        };
        let entries = archive
            .entries()
            .map_err(|e| Error::from(e).context("apply layer: read tar"))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| Error::from(e).context("apply layer: read tar entry"))?;
            st.entry(&mut entry)?;
        }
        st.finish()?;
        // a directory the layer carried after all keeps its own attributes
        implicit_dirs = std::mem::take(&mut st.implicit_dirs)
            .into_iter()
            .filter(|d| !st.written.contains(d))
            .collect();
    }
    // the trailer and padding belong to the digest too
    std::io::copy(&mut hashing, &mut std::io::sink())
        .map_err(|e| Error::from(e).context("apply layer: read tar trailer"))?;
    let (diff_id, size, _) = hashing.finish();
    Ok(Applied {
        diff_id,
        size,
        implicit_dirs,
    })
}

fn sys(e: Errno, ctx: impl std::fmt::Display) -> Error {
    Error::from(std::io::Error::from(e)).context(ctx)
}

fn escape(entry: &str, why: &str) -> Error {
    Error::invalid(format!(
        "apply layer: entry {entry:?} {why}: refusing to write outside the root"
    ))
}

/// Lexically clean a tar path into components below the root.
fn clean(raw: &[u8], entry: &str) -> Result<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(escape(entry, "climbs above the root with \"..\""));
                }
            }
            c => out.push(OsStr::from_bytes(c).to_owned()),
        }
    }
    Ok(out)
}

fn rel(comps: &[OsString]) -> PathBuf {
    if comps.is_empty() {
        PathBuf::from(".")
    } else {
        comps.iter().collect()
    }
}

/// Give a directory created implicitly the attributes it has in the
/// nearest lower layer holding it.
fn inherit_dir_info(
    parents: &[PathBuf],
    pfd: &OwnedFd,
    name: &OsStr,
    comps: &[OsString],
    entry: &str,
) -> Result<()> {
    for p in parents {
        let Ok(proot) = rustix::fs::open(
            p,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let found = rustix::fs::openat2(
            &proot,
            rel(comps),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        );
        let Ok(fd) = found else { continue };
        let st = rustix::fs::fstat(&fd).map_err(|e| {
            sys(
                e,
                format!("apply layer: entry {entry:?}: stat lower directory"),
            )
        })?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Ok(()); // replaced in a lower layer: keep defaults
        }
        let ctx = |what: &str| format!("apply layer: entry {entry:?}: {what} of implicit parent");
        rustix::fs::chownat(
            pfd,
            name,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sys(e, ctx("chown")))?;
        rustix::fs::chmodat(
            pfd,
            name,
            Mode::from_raw_mode(st.st_mode & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| sys(e, ctx("chmod")))?;
        let lower = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let upper = proc_path(pfd, name);
        let mut names = vec![0u8; 64 * 1024];
        if let Ok(n) = rustix::fs::listxattr(&lower, &mut names[..]) {
            let mut value = vec![0u8; 64 * 1024];
            for x in names[..n].split(|&b| b == 0).filter(|x| !x.is_empty()) {
                let x = OsStr::from_bytes(x);
                // overlay's own markers (opaque, redirect) stay with their layer
                if x.as_bytes().starts_with(b"trusted.overlay.") {
                    continue;
                }
                if let Ok(len) = rustix::fs::getxattr(&lower, x, &mut value[..]) {
                    rustix::fs::setxattr(&upper, x, &value[..len], XattrFlags::empty())
                        .map_err(|e| sys(e, ctx(&format!("copy xattr {x:?}"))))?;
                }
            }
        }
        return Ok(());
    }
    Ok(())
}

/// Give the directories `dirs` (relative to `root`, each after its own
/// parent) that a layer applied without lower layers created implicitly
/// the attributes they have in the nearest of `parents` (the lower layers
/// the layer was then stacked on, nearest first): what [`apply_with_parents`]
/// would have given them. A directory no longer there is skipped.
pub fn inherit_implicit_dirs(root: &Path, dirs: &[PathBuf], parents: &[PathBuf]) -> Result<()> {
    let rootfd = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        sys(
            e,
            format!("implicit directories: open root {}", root.display()),
        )
    })?;
    for dir in dirs {
        let comps: Vec<OsString> = dir.components().map(|c| c.as_os_str().to_owned()).collect();
        let Some((name, parent)) = comps.split_last() else {
            continue;
        };
        let what = dir.display().to_string();
        let pfd = match rustix::fs::openat2(
            &rootfd,
            rel(parent),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(sys(e, format!("implicit directory {what}: open parent"))),
        };
        match rustix::fs::statat(&pfd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {}
            Ok(_) | Err(Errno::NOENT) => continue,
            Err(e) => return Err(sys(e, format!("implicit directory {what}: stat"))),
        }
        inherit_dir_info(parents, &pfd, name, &comps, &what)?;
    }
    Ok(())
}

struct Applier {
    root: OwnedFd,
    mode: WhiteoutMode,
    /// Paths this layer wrote (spared by its own opaque markers).
    written: HashSet<PathBuf>,
    /// Directories and their times, set at the end.
    dirs: Vec<(Vec<OsString>, Timestamps)>,
    /// Lower layers (overlay), consulted for implicit parent directories.
    parents: Vec<PathBuf>,
    /// Directories created implicitly, in order.
    implicit_dirs: Vec<PathBuf>,
}

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    times: Timestamps,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

/// `/proc/self/fd/<dir>/<name>`: a path for calls that have no `*at` form.
fn proc_path(dir: &impl AsFd, name: &OsStr) -> PathBuf {
    let mut p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()));
    p.push(name);
    p
}

impl Applier {
    /// Open directory `comps` beneath the root (no escaping symlinks).
    fn open_dir(&self, comps: &[OsString], entry: &str) -> Result<OwnedFd> {
        rustix::fs::openat2(
            &self.root,
            rel(comps),
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| match e {
            Errno::XDEV => escape(entry, "resolves through a symlink that leaves the root"),
            Errno::LOOP => escape(entry, "resolves through a symlink loop"),
            e => sys(
                e,
                format!(
                    "apply layer: entry {entry:?}: open {}",
                    rel(comps).display()
                ),
            ),
        })
    }

    /// Like `open_dir`, creating missing directories (0755, root-owned).
    fn open_dir_create(&mut self, comps: &[OsString], entry: &str) -> Result<OwnedFd> {
        match self.open_dir(comps, entry) {
            Err(e) if e.kind == stevedore_types::ErrorKind::NotFound && !comps.is_empty() => {
                let (last, parent) = comps.split_last().expect("not empty");
                let pfd = self.open_dir_create(parent, entry)?;
                match rustix::fs::mkdirat(&pfd, last.as_os_str(), Mode::from_raw_mode(0o755)) {
                    Ok(()) => {
                        self.implicit_dirs.push(rel(comps));
                        inherit_dir_info(&self.parents, &pfd, last, comps, entry)?
                    }
                    Err(Errno::EXIST) => {}
                    Err(e) => {
                        return Err(sys(
                            e,
                            format!("apply layer: entry {entry:?}: create parent"),
                        ))
                    }
                }
                self.open_dir(comps, entry)
            }
            r => r,
        }
    }

    fn entry<R: Read>(&mut self, e: &mut tar::Entry<'_, R>) -> Result<()> {
        let raw = e.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean(&raw, &name)?;
        let Some((base, parent)) = comps.split_last() else {
            return Ok(()); // the root itself
        };
        let kind = e.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let base_bytes = base.as_bytes();
        if base_bytes == OPAQUE_MARKER.as_bytes() {
            return self.opaque(parent, &name);
        }
        if let Some(orig) = base_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout(parent, OsStr::from_bytes(orig), e, &name);
        }
        let meta = self.meta_of(e, &name)?;
        let dir = self.open_dir_create(parent, &name)?;
        let is_dir = kind == tar::EntryType::Directory;
        // whatever is in the way goes, unless a directory meets a directory
        match rustix::fs::statat(&dir, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                let existing_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if !(existing_dir && is_dir) {
                    remove_at(&dir, base, existing_dir, &name)?;
                }
            }
            Err(Errno::NOENT) => {}
            Err(err) => return Err(sys(err, format!("apply layer: entry {name:?}: stat"))),
        }
        let ctx = |what: &str| format!("apply layer: entry {name:?}: {what}");
        let perm = Mode::from_raw_mode(meta.mode & 0o7777);
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                if kind == tar::EntryType::GNUSparse {
                    return Err(Error::unimplemented(ctx(
                        "GNU sparse files are not supported",
                    )));
                }
                let fd = rustix::fs::openat(
                    &dir,
                    base.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|err| sys(err, ctx("create file")))?;
                let mut f = std::fs::File::from(fd);
                std::io::copy(e, &mut f)
                    .map_err(|err| Error::from(err).context(ctx("write file")))?;
            }
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(&dir, base.as_os_str(), Mode::from_raw_mode(0o700)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(err) => return Err(sys(err, ctx("create directory"))),
                }
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, base.as_os_str())
                    .map_err(|err| sys(err, ctx("create symlink")))?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .unwrap_or_default();
                let tcomps = clean(&target, &name)?;
                let Some((tbase, tparent)) = tcomps.split_last() else {
                    return Err(Error::invalid(ctx("hardlink to the root directory")));
                };
                let tdir = self.open_dir(tparent, &name)?;
                rustix::fs::linkat(
                    &tdir,
                    tbase.as_os_str(),
                    &dir,
                    base.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|err| {
                    sys(
                        err,
                        ctx(&format!(
                            "hardlink to {:?}",
                            String::from_utf8_lossy(&target)
                        )),
                    )
                })?;
                // the entry's owner, mode, xattrs and times go to the
                // shared inode, as containerd applies them (not the mode of
                // a link to a symlink, which has none)
                let linked = rustix::fs::statat(&dir, base.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|err| sys(err, ctx("stat hardlink")))?;
                let symlink = FileType::from_raw_mode(linked.st_mode) == FileType::Symlink;
                self.set_meta(&dir, base, &meta, symlink, &name)?;
                self.written.insert(comps.iter().collect());
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ft = match kind {
                    tar::EntryType::Char => FileType::CharacterDevice,
                    tar::EntryType::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                let h = e.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                rustix::fs::mknodat(
                    &dir,
                    base.as_os_str(),
                    ft,
                    perm,
                    rustix::fs::makedev(major, minor),
                )
                .map_err(|err| sys(err, ctx("create device node")))?;
            }
            other => {
                return Err(Error::unimplemented(ctx(&format!(
                    "unsupported tar entry type {other:?}"
                ))))
            }
        }
        self.set_meta(&dir, base, &meta, kind == tar::EntryType::Symlink, &name)?;
        if is_dir {
            self.dirs.push((comps.clone(), meta.times));
        }
        self.written.insert(comps.iter().collect());
        Ok(())
    }

    fn meta_of<R: Read>(&self, e: &mut tar::Entry<'_, R>, name: &str) -> Result<Meta> {
        let h = e.header();
        let bad = |what: &str| Error::invalid(format!("apply layer: entry {name:?}: bad {what}"));
        let mut mtime = Timespec {
            tv_sec: blank_is_zero(h.mtime(), &h.as_old().mtime).map_err(|_| bad("mtime"))? as i64,
            tv_nsec: 0,
        };
        // chown takes 32-bit ids and reads u32::MAX (-1) as "leave as is";
        // a larger id would wrap to another owner (2^32 to root)
        let id = |v: std::io::Result<u64>, what: &str| {
            v.ok()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| bad(what))
        };
        let uid = id(blank_is_zero(h.uid(), &h.as_old().uid), "uid")?;
        let gid = id(blank_is_zero(h.gid(), &h.as_old().gid), "gid")?;
        let mode = blank_is_zero(h.mode().map(u64::from), &h.as_old().mode)
            .ok()
            .and_then(|m| u32::try_from(m).ok())
            .ok_or_else(|| bad("mode"))?;
        let mut xattrs = Vec::new();
        let mut atime = None;
        if let Some(pax) = e
            .pax_extensions()
            .map_err(|err| Error::from(err).context(format!("apply layer: entry {name:?}: pax")))?
        {
            for ext in pax {
                let ext = ext.map_err(|err| {
                    Error::from(err).context(format!("apply layer: entry {name:?}: pax"))
                })?;
                let Ok(key) = ext.key() else { continue };
                if let Some(x) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((OsString::from(x), ext.value_bytes().to_vec()));
                } else if key == "mtime" {
                    if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                        mtime = t;
                    }
                } else if key == "atime" {
                    atime = ext.value().ok().and_then(parse_pax_time);
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs,
        })
    }

    fn set_meta(
        &self,
        dir: &OwnedFd,
        base: &OsStr,
        m: &Meta,
        symlink: bool,
        name: &str,
    ) -> Result<()> {
        let ctx = |what: &str| format!("apply layer: entry {name:?}: {what}");
        rustix::fs::chownat(
            dir,
            base,
            Some(rustix::fs::Uid::from_raw(m.uid)),
            Some(rustix::fs::Gid::from_raw(m.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| sys(e, ctx("chown")))?;
        if !symlink {
            rustix::fs::chmodat(
                dir,
                base,
                Mode::from_raw_mode(m.mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| sys(e, ctx("chmod")))?;
        }
        if !m.xattrs.is_empty() {
            let p = proc_path(dir, base);
            for (k, v) in &m.xattrs {
                match rustix::fs::lsetxattr(&p, k.as_os_str(), v, XattrFlags::empty()) {
                    Ok(()) => {}
                    Err(Errno::PERM) if symlink => {}
                    Err(e) => return Err(sys(e, ctx(&format!("set xattr {k:?}")))),
                }
            }
        }
        rustix::fs::utimensat(dir, base, &m.times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| sys(e, ctx("set times")))
    }

    fn whiteout<R: Read>(
        &mut self,
        parent: &[OsString],
        orig: &OsStr,
        e: &mut tar::Entry<'_, R>,
        name: &str,
    ) -> Result<()> {
        if orig.is_empty() || orig == ".." || orig == "." {
            return Err(Error::invalid(format!(
                "apply layer: entry {name:?}: invalid whiteout"
            )));
        }
        match self.mode {
            WhiteoutMode::Delete => {
                let dir = match self.open_dir(parent, name) {
                    Ok(d) => d,
                    Err(err) if err.kind == stevedore_types::ErrorKind::NotFound => return Ok(()),
                    Err(err) => return Err(err),
                };
                match rustix::fs::statat(&dir, orig, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) => remove_at(
                        &dir,
                        orig,
                        FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                        name,
                    ),
                    Err(Errno::NOENT) => Ok(()),
                    Err(err) => Err(sys(err, format!("apply layer: entry {name:?}: stat"))),
                }
            }
            WhiteoutMode::Overlay => {
                let meta = self.meta_of(e, name)?;
                let dir = self.open_dir_create(parent, name)?;
                if let Ok(st) = rustix::fs::statat(&dir, orig, AtFlags::SYMLINK_NOFOLLOW) {
                    remove_at(
                        &dir,
                        orig,
                        FileType::from_raw_mode(st.st_mode) == FileType::Directory,
                        name,
                    )?;
                }
                rustix::fs::mknodat(
                    &dir,
                    orig,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|err| {
                    sys(
                        err,
                        format!("apply layer: entry {name:?}: create overlay whiteout"),
                    )
                })?;
                rustix::fs::chownat(
                    &dir,
                    orig,
                    Some(rustix::fs::Uid::from_raw(meta.uid)),
                    Some(rustix::fs::Gid::from_raw(meta.gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(|err| sys(err, format!("apply layer: entry {name:?}: chown whiteout")))?;
                let mut p: Vec<OsString> = parent.to_vec();
                p.push(orig.to_owned());
                self.written.insert(p.iter().collect());
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir_comps: &[OsString], name: &str) -> Result<()> {
        let dir = self.open_dir_create(dir_comps, name)?;
        match self.mode {
            WhiteoutMode::Overlay => {
                let p = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                rustix::fs::setxattr(&p, "trusted.overlay.opaque", b"y", XattrFlags::empty())
                    .map_err(|e| {
                        sys(
                            e,
                            format!("apply layer: entry {name:?}: mark directory opaque"),
                        )
                    })
            }
            WhiteoutMode::Delete => {
                let here: PathBuf = dir_comps.iter().collect();
                let listing = std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                    .map_err(|e| {
                        Error::from(e)
                            .context(format!("apply layer: entry {name:?}: list directory"))
                    })?;
                for child in listing {
                    let child = child.map_err(|e| {
                        Error::from(e)
                            .context(format!("apply layer: entry {name:?}: list directory"))
                    })?;
                    let cname = child.file_name();
                    if self.written.contains(&here.join(&cname)) {
                        continue;
                    }
                    let is_dir = child.file_type().map(|t| t.is_dir()).unwrap_or(false);
                    remove_at(&dir, &cname, is_dir, name)?;
                }
                Ok(())
            }
        }
    }

    fn finish(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, times) in dirs.iter().rev() {
            let (base, parent) = comps.split_last().expect("not empty");
            let name = rel(comps).display().to_string();
            let dir = match self.open_dir(parent, &name) {
                Ok(d) => d,
                Err(e) if e.kind == stevedore_types::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            match rustix::fs::utimensat(&dir, base.as_os_str(), times, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(sys(e, format!("apply layer: entry {name:?}: set times"))),
            }
        }
        Ok(())
    }
}

/// Remove `name` in `dir` (recursively for a directory), never following it.
fn remove_at(dir: &OwnedFd, name: &OsStr, is_dir: bool, entry: &str) -> Result<()> {
    let r = if is_dir {
        // std's remove_dir_all walks with fds and does not follow symlinks
        std::fs::remove_dir_all(proc_path(dir, name)).map_err(Error::from)
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| Error::from(std::io::Error::from(e)))
    };
    r.map_err(|e| e.context(format!("apply layer: entry {entry:?}: remove {name:?}")))
}

fn parse_pax_time(v: &str) -> Option<Timespec> {
    let (secs, frac) = match v.split_once('.') {
        Some((s, f)) => (s, f),
        None => (v, ""),
    };
    let tv_sec: i64 = secs.parse().ok()?;
    let mut nanos = String::from(frac);
    nanos.truncate(9);
    while nanos.len() < 9 {
        nanos.push('0');
    }
    let tv_nsec: i64 = nanos.parse().ok()?;
    Some(Timespec {
        tv_sec,
        tv_nsec: tv_nsec as _,
    })
}
