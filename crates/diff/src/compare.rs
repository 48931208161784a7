//! Comparing two trees into an OCI layer tar (containerd's walking differ):
//! what `upper` adds or changes relative to `lower` is written as entries,
//! what it lacks as `.wh.<name>` whiteouts (only the topmost deleted path).
//! Entries are sorted by name; files are streamed, never buffered.

use crate::Hashing;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use stevedore_types::{Digest, Error, Result};

/// What a compare wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// sha256 of the uncompressed tar written: the layer's diff ID.
    pub diff_id: Digest,
    pub size: u64,
}

/// How a diff is written.
#[derive(Debug, Clone, Default)]
pub struct CompareOptions {
    /// containerd 2.x's `source_date_epoch` (`WithModTimeUpperBound`): no
    /// entry's modification time is later than this (seconds since the
    /// epoch), for reproducible layers. Whiteouts are always at time 0.
    pub mtime_upper_bound: Option<i64>,
}

/// Write the difference from `lower` to `upper` as a layer tar into `w`.
pub fn compare(lower: &Path, upper: &Path, w: impl Write) -> Result<Written> {
    compare_with(lower, upper, w, &CompareOptions::default())
}

/// [`compare`] with options.
pub fn compare_with(
    lower: &Path,
    upper: &Path,
    w: impl Write,
    opts: &CompareOptions,
) -> Result<Written> {
    let mut b = tar::Builder::new(Hashing::new(w));
    b.mode(tar::HeaderMode::Complete);
    let mut c = Comparer {
        lower,
        upper,
        links: HashMap::new(),
        mtime_max: opts.mtime_upper_bound,
    };
    c.walk(&mut b, Path::new(""), true)?;
    let hashing = b
        .into_inner()
        .map_err(|e| Error::from(e).context("compare: finish tar"))?;
    let (diff_id, size, mut w) = hashing.finish();
    w.flush()
        .map_err(|e| Error::from(e).context("compare: flush"))?;
    Ok(Written { diff_id, size })
}

struct Comparer<'a> {
    lower: &'a Path,
    upper: &'a Path,
    links: HashMap<(u64, u64), PathBuf>,
    mtime_max: Option<i64>,
}

fn io(ctx: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::from(e).context(ctx)
}

fn names(dir: &Path) -> Result<BTreeSet<OsString>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.map(|e| e.file_name())
                    .map_err(io(format!("compare: read {}", dir.display())))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => {
            Ok(BTreeSet::new())
        }
        Err(e) => Err(io(format!("compare: read {}", dir.display()))(e)),
    }
}

fn xattrs(p: &Path) -> Vec<(OsString, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names[..]) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut value = vec![0u8; 64 * 1024];
    for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name);
        if let Ok(len) = rustix::fs::lgetxattr(p, name, &mut value[..]) {
            out.push((name.to_owned(), value[..len].to_vec()));
        }
    }
    out.sort();
    out
}

fn same(l: &Metadata, u: &Metadata, lp: &Path, up: &Path) -> bool {
    let same_meta = l.mode() == u.mode()
        && l.uid() == u.uid()
        && l.gid() == u.gid()
        && l.rdev() == u.rdev()
        && xattrs(lp) == xattrs(up);
    if !same_meta {
        return false;
    }
    let ft = u.file_type();
    if ft.is_dir() {
        return l.mtime() == u.mtime() && l.mtime_nsec() == u.mtime_nsec();
    }
    if ft.is_symlink() {
        return std::fs::read_link(lp).ok() == std::fs::read_link(up).ok();
    }
    if ft.is_file() {
        if l.size() != u.size() {
            return false;
        }
        if l.mtime() == u.mtime() && l.mtime_nsec() == u.mtime_nsec() && u.mtime_nsec() != 0 {
            return true;
        }
        return same_content(lp, up).unwrap_or(false);
    }
    l.mtime() == u.mtime()
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut fa = std::io::BufReader::new(std::fs::File::open(a)?);
    let mut fb = std::io::BufReader::new(std::fs::File::open(b)?);
    let mut ba = [0u8; 8192];
    let mut bb = [0u8; 8192];
    loop {
        let na = fa.read(&mut ba)?;
        if na == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
        fb.read_exact(&mut bb[..na])?;
        if ba[..na] != bb[..na] {
            return Ok(false);
        }
    }
}

impl Comparer<'_> {
    fn walk<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        rel: &Path,
        lower_here: bool,
    ) -> Result<()> {
        let unames = names(&self.upper.join(rel))?;
        let lnames = if lower_here {
            names(&self.lower.join(rel))?
        } else {
            BTreeSet::new()
        };
        let all: BTreeSet<&OsString> = unames.iter().chain(lnames.iter()).collect();
        for name in all {
            let r = rel.join(name);
            let up = self.upper.join(&r);
            let lp = self.lower.join(&r);
            if !unames.contains(name) {
                let mut wh = OsString::from(".wh.");
                wh.push(name);
                self.whiteout(b, &rel.join(wh))?;
                continue;
            }
            let umd = std::fs::symlink_metadata(&up)
                .map_err(io(format!("compare: stat {}", up.display())))?;
            let lmd = if lnames.contains(name) {
                Some(
                    std::fs::symlink_metadata(&lp)
                        .map_err(io(format!("compare: stat {}", lp.display())))?,
                )
            } else {
                None
            };
            match lmd {
                None => {
                    self.emit(b, &r, &up, &umd)?;
                    if umd.is_dir() {
                        self.walk(b, &r, false)?;
                    }
                }
                Some(lmd) => {
                    if umd.is_dir() && lmd.is_dir() {
                        if !same(&lmd, &umd, &lp, &up) {
                            self.emit(b, &r, &up, &umd)?;
                        }
                        self.walk(b, &r, true)?;
                    } else if !same(&lmd, &umd, &lp, &up) || umd.file_type() != lmd.file_type() {
                        self.emit(b, &r, &up, &umd)?;
                        if umd.is_dir() {
                            self.walk(b, &r, false)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn whiteout<W: Write>(&mut self, b: &mut tar::Builder<W>, path: &Path) -> Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0);
        // owner 0:0 written out (containerd's whiteouts carry "0000000"):
        // a NUL-filled field is not a number to strict tar readers
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        b.append_data(&mut h, path, std::io::empty())
            .map_err(io(format!("compare: write whiteout {}", path.display())))
    }

    fn emit<W: Write>(
        &mut self,
        b: &mut tar::Builder<W>,
        rel: &Path,
        p: &Path,
        md: &Metadata,
    ) -> Result<()> {
        let ctx = || format!("compare: write {}", rel.display());
        let x = xattrs(p);
        if !x.is_empty() {
            let keys: Vec<(String, Vec<u8>)> = x
                .into_iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{}", k.to_string_lossy()), v))
                .collect();
            b.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
                .map_err(io(ctx()))?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        let mtime = match self.mtime_max {
            Some(max) => md.mtime().min(max),
            None => md.mtime(),
        };
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(first) = self.links.get(&(md.dev(), md.ino())) {
                h.set_entry_type(tar::EntryType::Link);
                let first = first.clone();
                return b.append_link(&mut h, rel, &first).map_err(io(ctx()));
            }
            self.links.insert((md.dev(), md.ino()), rel.to_path_buf());
        }
        if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.size());
            let f = std::fs::File::open(p).map_err(io(ctx()))?;
            b.append_data(&mut h, rel, f).map_err(io(ctx()))
        } else if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, rel, std::io::empty())
                .map_err(io(ctx()))
        } else if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = std::fs::read_link(p).map_err(io(ctx()))?;
            b.append_link(&mut h, rel, &target).map_err(io(ctx()))
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = md.rdev();
            h.set_device_major(rustix::fs::major(rdev))
                .map_err(io(ctx()))?;
            h.set_device_minor(rustix::fs::minor(rdev))
                .map_err(io(ctx()))?;
            b.append_data(&mut h, rel, std::io::empty())
                .map_err(io(ctx()))
        } else {
            Ok(()) // sockets are not carried in layers
        }
    }
}
