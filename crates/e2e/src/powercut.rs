//! A disk that loses its unflushed writes when the power is cut: a
//! filesystem (ext4 or btrfs) on a loop device whose backing file is served
//! by `powercut-disk` (`src/bin/powercut-disk.rs`, a FUSE server modelling a
//! volatile write cache). The image file is what the disk holds durably;
//! each [`PowercutDisk::boot`] serves it afresh, so what one cut left is
//! what the next boot finds, as after a real power loss.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, require_tool, run_ok};

/// The filesystem on the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Btrfs,
}

impl Fs {
    pub fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Btrfs => "btrfs",
        }
    }
}

/// What the disk's volatile cache kept of the writes not yet flushed when
/// the power went: none, all, or a random subset (seeded), in order.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    None,
    Some(u64),
    All,
}

fn keep_words(keep: Keep) -> String {
    match keep {
        Keep::None => "none".to_string(),
        Keep::All => "all".to_string(),
        Keep::Some(seed) => format!("some {seed}"),
    }
}

/// Counts `powercut-disk` reports when it stops.
#[derive(Clone, Debug, Default)]
pub struct CutStats {
    pub writes: u64,
    pub write_bytes: u64,
    pub fsyncs: u64,
    pub unflushed_writes_at_cut: u64,
    pub unflushed_bytes_at_cut: u64,
    pub kept_writes: u64,
    pub dropped_after_cut: u64,
}

/// A disk image, booted (served, attached to a loop device and mounted)
/// or not. Drop tears down whatever is up: the mount (lazily), the loop
/// device, the FUSE mount and its server.
pub struct PowercutDisk {
    dir: tempfile::TempDir,
    pub fs: Fs,
    image: PathBuf,
    fuse: PathBuf,
    mnt: PathBuf,
    server: Option<Child>,
    dev: Option<String>,
    mounted: bool,
}

impl PowercutDisk {
    /// A fresh sparse image of `size` (truncate's syntax) with `fs` on it.
    pub fn create(size: &str, fs: Fs) -> PowercutDisk {
        require_tool("losetup", "mount");
        let dir = tempfile::Builder::new()
            .prefix("e2e-powercut-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let image = dir.path().join("disk.img");
        let (fuse, mnt) = (dir.path().join("fuse"), dir.path().join("mnt"));
        std::fs::create_dir_all(&fuse).unwrap();
        std::fs::create_dir_all(&mnt).unwrap();
        run_ok("truncate", &["-s", size, image.to_str().unwrap()]);
        match fs {
            Fs::Ext4 => {
                require_tool("mkfs.ext4", "e2fsprogs");
                run_ok(
                    "mkfs.ext4",
                    &[
                        "-q",
                        "-F",
                        "-E",
                        "lazy_itable_init=0,lazy_journal_init=0,nodiscard",
                        image.to_str().unwrap(),
                    ],
                );
            }
            Fs::Btrfs => {
                require_tool("mkfs.btrfs", "btrfs-progs");
                run_ok("mkfs.btrfs", &["-q", "-K", image.to_str().unwrap()]);
            }
        }
        PowercutDisk {
            dir,
            fs,
            image,
            fuse,
            mnt,
            server: None,
            dev: None,
            mounted: false,
        }
    }

    /// Where the filesystem is mounted while booted.
    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }

    /// Serve the image, attach it to a loop device and mount the
    /// filesystem (which replays its journal or log: the reboot).
    pub fn boot(&mut self) {
        assert!(self.server.is_none(), "already booted");
        let mut server = Command::new(bin("powercut-disk"))
            .arg(&self.fuse)
            .arg(&self.image)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn powercut-disk");
        let mut first = String::new();
        let out = server.stdout.as_mut().unwrap();
        let _ = BufReader::new(out).read_line(&mut first);
        self.server = Some(server);
        assert_eq!(
            first.trim(),
            "mounted",
            "powercut-disk did not mount on {}",
            self.fuse.display()
        );
        let file = self.fuse.join("disk.img");
        self.dev = Some(run_ok("losetup", &["-f", "--show", file.to_str().unwrap()]));
        run_ok(
            "mount",
            &[
                "-t",
                self.fs.name(),
                self.dev.as_deref().unwrap(),
                self.mnt.to_str().unwrap(),
            ],
        );
        self.mounted = true;
    }

    /// Cut the power: from now on the disk drops every write. A no-op on
    /// a disk already cut.
    pub fn cut(&self, keep: Keep) {
        self.control(&format!("cut {}", keep_words(keep)));
    }

    /// Cut the power as soon as `writes` writes wait unflushed in the
    /// cache, or after `timeout` if that does not come first. Returns
    /// whether the armed cut fired.
    pub fn cut_when_cache_holds(&self, writes: u32, keep: Keep, timeout: Duration) -> bool {
        self.control(&format!("arm {writes} {}", keep_words(keep)));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.state() == "cut" {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        self.cut(keep);
        false
    }

    /// `on`, `armed` or `cut`.
    fn state(&self) -> String {
        std::fs::read_to_string(self.fuse.join("ctl"))
            .expect("read powercut-disk ctl")
            .trim()
            .to_string()
    }

    fn control(&self, msg: &str) {
        std::fs::write(self.fuse.join("ctl"), msg)
            .unwrap_or_else(|e| panic!("write {msg:?} to powercut-disk ctl: {e}"));
    }

    /// Take the dead disk down: unmount the filesystem (its writes go
    /// nowhere), detach the loop device, stop the server, which writes to
    /// the image what the cache kept. Nothing may hold files under the
    /// mount point (processes are dead).
    pub fn shutdown(&mut self) -> CutStats {
        if self.mounted {
            // what dead processes left mounted on it (a layer being applied,
            // a client's snapshot mount), deepest first
            let below = format!("{}/", self.mnt.display());
            let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
                .filter(|m| m.starts_with(&below))
                .collect();
            left.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in left {
                run_ok("umount", &[&m]);
            }
            run_ok("umount", &[self.mnt.to_str().unwrap()]);
            self.mounted = false;
        }
        if let Some(dev) = self.dev.take() {
            run_ok("losetup", &["-d", &dev]);
        }
        let mut server = self.server.take().expect("booted");
        // the loop device may let go of its file a moment after the detach
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = Command::new("umount").arg(&self.fuse).output().unwrap();
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "umount {}: {}",
                self.fuse.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut out = String::new();
        std::io::Read::read_to_string(server.stdout.as_mut().unwrap(), &mut out).unwrap();
        let st = server.wait().unwrap();
        assert!(st.success(), "powercut-disk failed ({st}): {out}");
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("powercut-disk stats {out:?}: {e}"));
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        CutStats {
            writes: n("writes"),
            write_bytes: n("write_bytes"),
            fsyncs: n("fsyncs"),
            unflushed_writes_at_cut: n("unflushed_writes_at_cut"),
            unflushed_bytes_at_cut: n("unflushed_bytes_at_cut"),
            kept_writes: n("kept_writes"),
            dropped_after_cut: n("dropped_after_cut"),
        }
    }

    /// The filesystem's own check of the image, offline, after replaying
    /// its journal: Err with the checker's output when it found damage.
    /// ext4's free block and inode counts are summaries the kernel
    /// recomputes at mount, not kept exact on disk: their fixes are not
    /// damage.
    pub fn fsck(&self) -> Result<(), String> {
        let img = self.image.to_str().unwrap();
        match self.fs {
            Fs::Ext4 => {
                require_tool("e2fsck", "e2fsprogs");
                let o = Command::new("e2fsck")
                    .args(["-f", "-y", img])
                    .output()
                    .unwrap();
                let out = String::from_utf8_lossy(&o.stdout).to_string();
                let benign = |l: &str| {
                    l.starts_with("Free blocks count wrong")
                        || l.starts_with("Free inodes count wrong")
                };
                let lines: Vec<&str> = out.lines().collect();
                let damage: Vec<&str> = lines
                    .windows(2)
                    .filter(|w| w[1].starts_with("Fix? yes") && !benign(w[0]))
                    .map(|w| w[0])
                    .collect();
                match o.status.code() {
                    Some(0) | Some(1) if damage.is_empty() => Ok(()),
                    c => Err(format!("e2fsck exited {c:?}; damage {damage:?}:\n{out}")),
                }
            }
            Fs::Btrfs => {
                require_tool("btrfs", "btrfs-progs");
                let o = Command::new("btrfs")
                    .args(["check", "--readonly", img])
                    .output()
                    .unwrap();
                if o.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "btrfs check exited {}:\n{}{}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    ))
                }
            }
        }
    }

    /// The temporary directory holding the image (for logs beside it).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PowercutDisk {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .stderr(Stdio::null())
                .status();
        };
        if self.mounted {
            quiet(&["umount", "-l", self.mnt.to_str().unwrap()]);
        }
        if let Some(dev) = self.dev.take() {
            quiet(&["losetup", "-d", &dev]);
        }
        if let Some(mut server) = self.server.take() {
            quiet(&["umount", "-l", self.fuse.to_str().unwrap()]);
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}
