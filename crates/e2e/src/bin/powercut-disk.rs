//! `powercut-disk MOUNTPOINT IMAGE`: a disk with a volatile write cache, for
//! power-loss tests. A FUSE filesystem (spoken directly on `/dev/fuse`, no
//! libfuse) that serves one file, `disk.img`, as large as IMAGE, to be
//! attached to a loop device; and `ctl`, to which the test writes
//! `cut none|some|all SEED` to cut the power now, or `arm N none|some|all
//! SEED` to cut it as soon as N writes wait unflushed in the cache (the
//! moment a busy disk's cache holds something; the test falls back to an
//! immediate cut when that does not come). Reading `ctl` gives `on`,
//! `armed` or `cut`.
//!
//! The model is a disk whose cache loses what was not flushed. IMAGE holds
//! what is durable. A WRITE goes to an overlay in memory (what READs see)
//! and to a log; an FSYNC (the loop driver calls `vfs_fsync` for every
//! REQ_OP_FLUSH, and FUA writes become write + flush because loop
//! advertises a write cache without FUA) writes the overlay to IMAGE and
//! clears the log. After a cut every WRITE and FSYNC is acknowledged and
//! dropped, as a dead disk's would be to nobody. When the filesystem is
//! unmounted (after the loop device was detached), the writes logged
//! before the cut that a volatile cache may have persisted are applied to
//! IMAGE: none, all, or a random subset (in their order) chosen by SEED;
//! then one line of JSON with the counts goes to stdout and the process
//! exits. IMAGE is then what survived the power loss.
//!
//! The kernel's FUSE page cache is write-through here (FUSE_WRITEBACK_CACHE
//! is not negotiated), so every write the loop device issues reaches this
//! process before the loop device completes it.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const BLOCK: u64 = 4096;
const MAX_WRITE: u32 = 1 << 20;

const ROOT: u64 = 1;
const DISK: u64 = 2;
const CTL: u64 = 3;

// opcodes (include/uapi/linux/fuse.h)
const LOOKUP: u32 = 1;
const FORGET: u32 = 2;
const GETATTR: u32 = 3;
const SETATTR: u32 = 4;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const INTERRUPT: u32 = 36;
const BATCH_FORGET: u32 = 42;

const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;
const FOPEN_DIRECT_IO: u32 = 1;

const ENOENT: i32 = 2;
const EIO: i32 = 5;
const EINVAL: i32 = 22;
const ENOSYS: i32 = 38;

/// What a volatile cache kept of the unflushed writes at the cut.
#[derive(Clone, Copy)]
enum Keep {
    None,
    Some(u64),
    All,
}

#[derive(Default)]
struct Stats {
    writes: u64,
    write_bytes: u64,
    fsyncs: u64,
    unflushed_writes_at_cut: u64,
    unflushed_bytes_at_cut: u64,
    kept_writes: u64,
    dropped_after_cut: u64,
    fsyncs_after_cut: u64,
}

struct Disk {
    durable: File,
    size: u64,
    /// Blocks written since the last flush, as READs see them.
    overlay: BTreeMap<u64, Vec<u8>>,
    /// The writes since the last flush, in order.
    log: Vec<(u64, Vec<u8>)>,
    cut: Option<Keep>,
    /// Cut once this many writes wait unflushed.
    armed: Option<(usize, Keep)>,
    stats: Stats,
}

impl Disk {
    fn read_durable(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let mut done = 0;
        while done < buf.len() {
            match self.durable.read_at(&mut buf[done..], off + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn read(&self, off: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let len = len.min(self.size.saturating_sub(off));
        let mut buf = vec![0; len as usize];
        self.read_durable(off, &mut buf)?;
        let first = off / BLOCK;
        let end = off + len;
        for (&b, data) in self.overlay.range(first..end.div_ceil(BLOCK)) {
            let (bs, be) = (b * BLOCK, b * BLOCK + BLOCK);
            let (s, e) = (bs.max(off), be.min(end));
            buf[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&data[(s - bs) as usize..(e - bs) as usize]);
        }
        Ok(buf)
    }

    fn write(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        self.stats.writes += 1;
        if self.cut.is_some() {
            self.stats.dropped_after_cut += 1;
            return Ok(());
        }
        self.stats.write_bytes += data.len() as u64;
        let end = off + data.len() as u64;
        for b in off / BLOCK..end.div_ceil(BLOCK) {
            let bs = b * BLOCK;
            if !self.overlay.contains_key(&b) {
                let mut blk = vec![0; BLOCK as usize];
                self.read_durable(bs, &mut blk)?;
                self.overlay.insert(b, blk);
            }
            let blk = self.overlay.get_mut(&b).expect("inserted above");
            let (s, e) = (bs.max(off), (bs + BLOCK).min(end));
            blk[(s - bs) as usize..(e - bs) as usize]
                .copy_from_slice(&data[(s - off) as usize..(e - off) as usize]);
        }
        self.log.push((off, data.to_vec()));
        if let Some((n, keep)) = self.armed {
            if self.log.len() >= n {
                self.cut(keep);
            }
        }
        Ok(())
    }

    fn fsync(&mut self) -> std::io::Result<()> {
        self.stats.fsyncs += 1;
        if self.cut.is_some() {
            self.stats.fsyncs_after_cut += 1;
            return Ok(());
        }
        for (b, data) in std::mem::take(&mut self.overlay) {
            self.durable.write_all_at(&data, b * BLOCK)?;
        }
        self.log.clear();
        Ok(())
    }

    fn cut(&mut self, keep: Keep) {
        if self.cut.is_none() {
            self.stats.unflushed_writes_at_cut = self.log.len() as u64;
            self.stats.unflushed_bytes_at_cut = self.log.iter().map(|(_, d)| d.len() as u64).sum();
            self.cut = Some(keep);
            self.armed = None;
        }
    }

    fn state(&self) -> &'static [u8] {
        match (self.cut, self.armed) {
            (Some(_), _) => b"cut\n",
            (None, Some(_)) => b"armed\n",
            (None, None) => b"on\n",
        }
    }

    fn control(&mut self, msg: &str) -> Option<()> {
        let mut w = msg.split_whitespace();
        match w.next()? {
            "cut" => self.cut(parse_keep(w)?),
            "arm" => {
                let n: usize = w.next()?.parse().ok().filter(|&n| n > 0)?;
                let keep = parse_keep(w)?;
                if self.cut.is_none() {
                    self.armed = Some((n, keep));
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// Write to IMAGE what survives: all logged writes without a cut (a
    /// clean unmount flushed them anyway), else what the cache kept.
    fn finish(&mut self) -> std::io::Result<()> {
        let keep = self.cut.unwrap_or(Keep::All);
        let mut rng = match keep {
            Keep::Some(seed) => seed,
            _ => 0,
        };
        for (off, data) in std::mem::take(&mut self.log) {
            let kept = match keep {
                Keep::None => false,
                Keep::All => true,
                Keep::Some(_) => splitmix(&mut rng) & 1 == 1,
            };
            if kept {
                self.durable.write_all_at(&data, off)?;
                self.stats.kept_writes += 1;
            }
        }
        self.durable.sync_all()
    }
}

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn parse_keep<'a>(mut w: impl Iterator<Item = &'a str>) -> Option<Keep> {
    match (w.next()?, w.next()) {
        ("none", _) => Some(Keep::None),
        ("all", _) => Some(Keep::All),
        ("some", Some(seed)) => seed.parse().ok().map(Keep::Some),
        _ => None,
    }
}

/// Little-endian reply builder.
#[derive(Default)]
struct Out(Vec<u8>);

impl Out {
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn attr(self, ino: u64, size: u64) -> Self {
        let mode = match ino {
            ROOT => 0o040755,
            DISK => 0o100600,
            _ => 0o100600,
        };
        self.u64(ino)
            .u64(size)
            .u64(size.div_ceil(512))
            .u64(0)
            .u64(0)
            .u64(0)
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(mode)
            .u32(if ino == ROOT { 2 } else { 1 })
            .u32(0)
            .u32(0)
            .u32(0)
            .u32(BLOCK as u32)
            .u32(0)
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The reply to one request: `Err(errno)`, `Ok(None)` for no reply at all.
type Reply = Result<Option<Vec<u8>>, i32>;

fn handle(disk: &mut Disk, opcode: u32, node: u64, body: &[u8]) -> Reply {
    const VALID: u64 = 3600;
    let size_of = |ino: u64| if ino == DISK { disk.size } else { 0 };
    let io = |e: std::io::Error| {
        eprintln!("powercut-disk: {e}");
        EIO
    };
    Ok(Some(match opcode {
        INIT => {
            let major = u32_at(body, 0).ok_or(EINVAL)?;
            let flags = u32_at(body, 12).ok_or(EINVAL)?;
            if major != 7 {
                return Err(EINVAL);
            }
            Out::default()
                .u32(7)
                .u32(31)
                .u32(u32_at(body, 8).ok_or(EINVAL)?)
                .u32(flags & (FUSE_BIG_WRITES | FUSE_MAX_PAGES))
                .u16(16)
                .u16(12)
                .u32(MAX_WRITE)
                .u32(1)
                .u16((MAX_WRITE / BLOCK as u32) as u16)
                .u16(0)
                .u32(0)
                .u32(0)
                .u64(0)
                .u64(0)
                .u64(0)
                .0
        }
        LOOKUP => {
            let name = body.split(|&c| c == 0).next().unwrap_or_default();
            let ino = match (node, name) {
                (ROOT, b"disk.img") => DISK,
                (ROOT, b"ctl") => CTL,
                _ => return Err(ENOENT),
            };
            Out::default()
                .u64(ino)
                .u64(0)
                .u64(VALID)
                .u64(VALID)
                .u32(0)
                .u32(0)
                .attr(ino, size_of(ino))
                .0
        }
        GETATTR | SETATTR => {
            Out::default()
                .u64(VALID)
                .u32(0)
                .u32(0)
                .attr(node, size_of(node))
                .0
        }
        OPEN | OPENDIR => {
            Out::default()
                .u64(0)
                .u32(if node == CTL { FOPEN_DIRECT_IO } else { 0 })
                .u32(0)
                .0
        }
        READ => {
            let off = u64_at(body, 8).ok_or(EINVAL)?;
            let len = u32_at(body, 16).ok_or(EINVAL)?;
            if node == CTL {
                let st = disk.state();
                st.get(off.min(st.len() as u64) as usize..)
                    .unwrap_or_default()
                    .to_vec()
            } else if node != DISK {
                Vec::new()
            } else {
                disk.read(off, u64::from(len)).map_err(io)?
            }
        }
        WRITE => {
            let off = u64_at(body, 8).ok_or(EINVAL)?;
            let len = u32_at(body, 16).ok_or(EINVAL)?;
            let data = body.get(40..40 + len as usize).ok_or(EINVAL)?;
            match node {
                DISK if off + u64::from(len) <= disk.size => disk.write(off, data).map_err(io)?,
                CTL => {
                    disk.control(&String::from_utf8_lossy(data)).ok_or(EINVAL)?;
                }
                _ => return Err(EINVAL),
            }
            Out::default().u32(len).u32(0).0
        }
        FSYNC => {
            if node == DISK {
                disk.fsync().map_err(io)?;
            }
            Vec::new()
        }
        STATFS => {
            Out::default()
                .u64(disk.size / BLOCK)
                .u64(0)
                .u64(0)
                .u64(3)
                .u64(0)
                .u32(BLOCK as u32)
                .u32(255)
                .u32(BLOCK as u32)
                .u32(0)
                .u64(0)
                .u64(0)
                .u64(0)
                .0
        }
        RELEASE | RELEASEDIR | FLUSH | READDIR => Vec::new(),
        FORGET | BATCH_FORGET | INTERRUPT => return Ok(None),
        _ => return Err(ENOSYS),
    }))
}

fn mount(mountpoint: &str) -> std::io::Result<File> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let data = CString::new(format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
        dev.as_raw_fd()
    ))
    .expect("no NUL in mount options");
    rustix::mount::mount(
        "powercut",
        mountpoint,
        "fuse.powercut",
        rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
        data.as_c_str(),
    )?;
    Ok(dev)
}

fn serve(dev: &mut File, disk: &mut Disk) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_WRITE as usize + 4096];
    loop {
        let n = match dev.read(&mut buf) {
            Ok(n) => n,
            // ENODEV: unmounted; ENOENT: the request was interrupted
            Err(e) if e.raw_os_error() == Some(19) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::Interrupted || e.raw_os_error() == Some(2) => continue,
            Err(e) => return Err(e),
        };
        let req = &buf[..n];
        let (Some(opcode), Some(unique), Some(node)) =
            (u32_at(req, 4), u64_at(req, 8), u64_at(req, 16))
        else {
            return Err(std::io::Error::other("short FUSE request"));
        };
        let body = &req[40.min(n)..];
        let (error, data) = match handle(disk, opcode, node, body) {
            Ok(None) => continue,
            Ok(Some(d)) => (0, d),
            Err(errno) => (-errno, Vec::new()),
        };
        let reply = Out::default()
            .u32(16 + data.len() as u32)
            .u32(error as u32)
            .u64(unique);
        let mut reply = reply.0;
        reply.extend_from_slice(&data);
        match dev.write(&reply) {
            Ok(_) => {}
            // the request was interrupted and aborted meanwhile
            Err(e) if e.raw_os_error() == Some(2) => {}
            Err(e) if e.raw_os_error() == Some(19) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, mountpoint, image] = &args[..] else {
        eprintln!("usage: powercut-disk MOUNTPOINT IMAGE");
        std::process::exit(2);
    };
    let run = || -> std::io::Result<Stats> {
        let durable = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(image)?;
        let size = durable.metadata()?.len();
        let mut disk = Disk {
            durable,
            size,
            overlay: BTreeMap::new(),
            log: Vec::new(),
            cut: None,
            armed: None,
            stats: Stats::default(),
        };
        let mut dev = mount(mountpoint)?;
        // the test waits for this line before it attaches the loop device
        println!("mounted");
        std::io::stdout().flush()?;
        serve(&mut dev, &mut disk)?;
        disk.finish()?;
        Ok(disk.stats)
    };
    match run() {
        Ok(s) => println!(
            "{{\"writes\":{},\"write_bytes\":{},\"fsyncs\":{},\"unflushed_writes_at_cut\":{},\"unflushed_bytes_at_cut\":{},\"kept_writes\":{},\"dropped_after_cut\":{},\"fsyncs_after_cut\":{}}}",
            s.writes,
            s.write_bytes,
            s.fsyncs,
            s.unflushed_writes_at_cut,
            s.unflushed_bytes_at_cut,
            s.kept_writes,
            s.dropped_after_cut,
            s.fsyncs_after_cut
        ),
        Err(e) => {
            eprintln!("powercut-disk {mountpoint} {image}: {e}");
            std::process::exit(1);
        }
    }
}
