//! A full-fidelity tree copy (the native snapshotter's `cp -a`): owners,
//! modes (setuid/setgid/sticky included), extended attributes, symlinks,
//! hardlinks (kept as links within the copy), device nodes, fifos, sockets
//! and timestamps (directories' after their contents are written).

use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use stevedore_types::{Error, Result};

fn io_err(op: &str, p: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let ctx = format!("copy: {op} {}", p.display());
    move |e| Error::from(e).context(ctx)
}

fn sys_err(op: &str, p: &Path) -> impl FnOnce(rustix::io::Errno) -> Error {
    let ctx = format!("copy: {op} {}", p.display());
    move |e| Error::from(std::io::Error::from(e)).context(ctx)
}

/// Copy the contents of directory `src` into existing directory `dst`, and
/// `src`'s own metadata onto `dst`.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = HashMap::new();
    copy_dir(src, dst, &mut links)
}

fn copy_dir(src: &Path, dst: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    let md = std::fs::symlink_metadata(src).map_err(io_err("stat", src))?;
    let rd = std::fs::read_dir(src).map_err(io_err("read dir", src))?;
    for e in rd {
        let e = e.map_err(io_err("read dir", src))?;
        let s = e.path();
        let d = dst.join(e.file_name());
        copy_entry(&s, &d, links)?;
    }
    copy_metadata(src, dst, &md)
}

fn copy_entry(s: &Path, d: &Path, links: &mut HashMap<(u64, u64), PathBuf>) -> Result<()> {
    let md = std::fs::symlink_metadata(s).map_err(io_err("stat", s))?;
    let ft = FileType::from_raw_mode(md.mode());
    if ft != FileType::Directory && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            return std::fs::hard_link(first, d).map_err(io_err("link", d));
        }
        links.insert((md.dev(), md.ino()), d.to_path_buf());
    }
    match ft {
        FileType::Directory => {
            std::fs::create_dir(d).map_err(io_err("mkdir", d))?;
            return copy_dir(s, d, links);
        }
        FileType::RegularFile => {
            let mut from = std::fs::File::open(s).map_err(io_err("open", s))?;
            let mut to = std::fs::File::create_new(d).map_err(io_err("create", d))?;
            std::io::copy(&mut from, &mut to).map_err(io_err("write", d))?;
        }
        FileType::Symlink => {
            let target = std::fs::read_link(s).map_err(io_err("readlink", s))?;
            std::os::unix::fs::symlink(&target, d).map_err(io_err("symlink", d))?;
        }
        FileType::Fifo => {
            rustix::fs::mkfifoat(CWD, d, Mode::from_raw_mode(md.mode() & 0o7777))
                .map_err(sys_err("mkfifo", d))?;
        }
        FileType::CharacterDevice | FileType::BlockDevice | FileType::Socket => {
            rustix::fs::mknodat(
                CWD,
                d,
                ft,
                Mode::from_raw_mode(md.mode() & 0o7777),
                md.rdev(),
            )
            .map_err(sys_err("mknod", d))?;
        }
        FileType::Unknown => {
            return Err(Error::invalid(format!(
                "copy: {} has an unknown file type",
                s.display()
            )))
        }
    }
    copy_metadata(s, d, &md)
}

/// Owner, mode, xattrs and times of `s` onto `d` (not following symlinks).
pub fn copy_metadata(s: &Path, d: &Path, md: &std::fs::Metadata) -> Result<()> {
    let is_link = md.file_type().is_symlink();
    std::os::unix::fs::lchown(d, Some(md.uid()), Some(md.gid())).map_err(io_err("chown", d))?;
    copy_xattrs(s, d, is_link)?;
    if !is_link {
        // after chown, which clears setuid/setgid
        rustix::fs::chmodat(
            CWD,
            d,
            Mode::from_raw_mode(md.mode() & 0o7777),
            AtFlags::empty(),
        )
        .map_err(sys_err("chmod", d))?;
    }
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec() as _,
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(CWD, d, &times, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(sys_err("set times", d))
}

fn copy_xattrs(s: &Path, d: &Path, is_link: bool) -> Result<()> {
    let mut names = vec![0u8; 64 * 1024];
    let n = match rustix::fs::llistxattr(s, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(sys_err("list xattrs", s)(e)),
    };
    let mut value = vec![0u8; 64 * 1024];
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        let len = match rustix::fs::lgetxattr(s, name, &mut value[..]) {
            Ok(l) => l,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(sys_err(&format!("read xattr {name:?} of"), s)(e)),
        };
        match rustix::fs::lsetxattr(d, name, &value[..len], rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // user.* xattrs cannot be set on symlinks
            Err(rustix::io::Errno::PERM) if is_link => {}
            Err(e) => return Err(sys_err(&format!("write xattr {name:?} of"), d)(e)),
        }
    }
    Ok(())
}
