//! Power loss: stevedored's root on a disk that loses what was not flushed
//! (`stevedore_e2e::powercut`: ext4 or btrfs on a loop device over a FUSE
//! file modelling a volatile write cache). A client works on the daemon
//! with the real `ctr` and the `stevedore` CLI (ingests, imports and pulls
//! with unpack, image removal with GC, snapshots prepared, written into
//! and committed, containers, leases, content removal), recording when each
//! operation was acknowledged; the power is cut at a random moment (the
//! cache keeping none, all or a random subset of the unflushed writes),
//! stevedored is SIGKILLed, the dead disk taken down. Then the disk boots
//! again, as after a reboot (the state directory, a tmpfs in real life, is
//! empty), and must hold: the filesystem's own check passes; `stevedore
//! check` (the fsck library) finds no problem; every operation
//! acknowledged before the cut is there (a blob by digest, an image, a
//! committed snapshot with the file the client wrote into it, a container,
//! a lease) and every removal acknowledged before it is still gone;
//! `ctr images check` finds every image complete; and every committed
//! layer snapshot an image unpacked holds exactly the files of its layers.
//! The next iteration works on what that boot found.
//!
//! Reproducible: the seed is printed; `STEVEDORE_POWERLOSS_SEED`,
//! `STEVEDORE_POWERLOSS_ITERATIONS` (default 10), `STEVEDORE_POWERLOSS_SECONDS`
//! (default 60: a time budget that ends the run early),
//! `STEVEDORE_POWERLOSS_FS=ext4|btrfs` (default ext4).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stevedore_e2e::powercut::{CutStats, Fs, Keep, PowercutDisk};
use stevedore_e2e::{big_image, busybox_image, env_u64, seed_from_env, Daemon, Images, Rng};
use stevedore_fsck::{check, Options};
use stevedore_remote::testutil::TestRegistry;

const SNAPSHOTTERS: &[&str] = &["overlayfs", "native"];
const GC_ROOT: &str = "containerd.io/gc.root=1";

/// Leftovers of a cut that a garbage collection must remove.
const COLLECTED_BY_GC: &[&str] = &[
    "blob-unreferenced",
    "ingest-unrecorded",
    "ingest-incomplete",
    "snapshot-dir-orphan",
];

/// An object whose presence an acknowledged operation decided.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Obj {
    Blob(String),
    Image(String),
    Snapshot(&'static str, String),
    Container(String),
    Lease(String),
}

/// What acknowledged operations promise: objects present, objects gone,
/// and the file a client wrote into each snapshot before committing it.
#[derive(Clone, Default)]
struct Model {
    present: BTreeSet<Obj>,
    absent: BTreeSet<Obj>,
    files: BTreeMap<Obj, (String, String)>,
    rootfs: BTreeMap<Obj, (&'static str, String)>,
}

impl Model {
    fn set(&mut self, o: Obj, present: bool) {
        self.forget(&o);
        if present {
            self.present.insert(o);
        } else {
            self.absent.insert(o);
        }
    }
    fn forget(&mut self, o: &Obj) {
        self.present.remove(o);
        self.absent.remove(o);
        self.files.remove(o);
        self.rootfs.remove(o);
    }
}

/// One operation of the client, and when (if) it was acknowledged.
struct Record {
    kind: &'static str,
    what: String,
    effects: Vec<(Obj, bool)>,
    file: Option<(Obj, String, String)>,
    /// A container created: its snapshotter and image.
    rootfs: Option<(Obj, &'static str, String)>,
    /// An import or pull, to retry after the reboot when the cut
    /// interrupted it.
    retry: Option<Retry>,
    acked: Option<Instant>,
    /// A command failed: when, and how.
    failed: Option<(Instant, String)>,
}

/// A command to run again: `stevedore ARGS` (cli) or `ctr ARGS`, and
/// what it promises once it succeeds.
#[derive(Clone)]
struct Retry {
    cli: bool,
    args: Vec<String>,
    effects: Vec<(Obj, bool)>,
}

/// Everything the client needs, moved into its thread.
struct Client {
    ctr: PathBuf,
    stevedore: PathBuf,
    socket: PathBuf,
    work: PathBuf,
    images: Vec<(String, PathBuf)>,
    pull_ref: String,
    rng: Rng,
    iteration: usize,
    stop: Arc<AtomicBool>,
    running: Arc<AtomicU32>,
}

impl Client {
    fn cmd(&self, program: &Path, args: &[&str]) -> Result<String, String> {
        if self.stop.load(Ordering::SeqCst) {
            return Err("stopped".into());
        }
        let mut c = Command::new(program);
        c.arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let child = c.spawn().map_err(|e| format!("spawn {program:?}: {e}"))?;
        self.running.store(child.id(), Ordering::SeqCst);
        let o = child.wait_with_output().map_err(|e| e.to_string());
        self.running.store(0, Ordering::SeqCst);
        let o = o?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        } else {
            Err(format!(
                "{} {args:?}: {}: {}",
                program.display(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    }
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        self.cmd(&self.ctr.clone(), args)
    }
    fn lines(&self, args: &[&str]) -> Result<Vec<String>, String> {
        Ok(self
            .ctr(args)?
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
    /// Committed snapshots named `pl-*` in `sn` and whether one has children.
    fn own_snapshots(&self, sn: &str) -> Result<Vec<(String, bool)>, String> {
        // KEY [PARENT] KIND
        let rows: Vec<(String, String, String)> = self
            .lines(&["snapshots", "--snapshotter", sn, "ls"])?
            .into_iter()
            .skip(1)
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                match w[..] {
                    [k, p, kind] => Some((k.into(), p.into(), kind.into())),
                    [k, kind] => Some((k.into(), String::new(), kind.into())),
                    _ => None,
                }
            })
            .collect();
        Ok(rows
            .iter()
            .filter(|(k, _, kind)| k.starts_with("pl-s-") && kind == "Committed")
            .map(|(k, _, _)| (k.clone(), rows.iter().any(|(_, p, _)| p == k)))
            .collect())
    }

    /// Label an object the client just made as a GC root. The daemon's
    /// collector may take an unreferenced object between the two requests
    /// (ctr cannot hold it with a lease): then the operation promised
    /// nothing.
    fn label_or_collected(&self, r: &mut Record, args: &[&str]) -> Result<(), String> {
        match self.ctr(args) {
            Err(e) if e.contains("not found") => {
                r.effects.clear();
                r.file = None;
                r.what.push_str(" (collected before labelled)");
                Ok(())
            }
            other => other.map(drop),
        }
    }

    fn random_bytes(&mut self, max: u64) -> Vec<u8> {
        let size = 4096 + self.rng.below(max) as usize;
        let mut bytes = Vec::with_capacity(size + 8);
        while bytes.len() < size {
            bytes.extend_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        bytes.truncate(size);
        bytes
    }

    /// Run one randomly chosen operation, filling in `r` (left empty when
    /// it found nothing to work on).
    fn one(&mut self, j: usize, r: &mut Record) -> Result<(), String> {
        let id = format!("{}-{j}", self.iteration);
        let sn = *self.rng.pick(SNAPSHOTTERS);
        match self.rng.below(12) {
            0 | 1 => {
                let bytes = self.random_bytes(3 << 20);
                let dg = stevedore_content::digest_of(&bytes).to_string();
                let p = self.work.join("payload");
                std::fs::write(&p, &bytes).map_err(|e| e.to_string())?;
                r.kind = "ingest";
                r.what = format!("ingest {} bytes as {dg}", bytes.len());
                r.effects.push((Obj::Blob(dg.clone()), true));
                let mut c = Command::new(&self.ctr);
                c.arg("--address")
                    .arg(&self.socket)
                    .args(["content", "ingest", "--expected-digest", &dg])
                    .arg(format!("pl-ingest-{id}"))
                    .stdin(std::fs::File::open(&p).map_err(|e| e.to_string())?)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .process_group(0);
                if self.stop.load(Ordering::SeqCst) {
                    return Err("stopped".into());
                }
                let child = c.spawn().map_err(|e| e.to_string())?;
                self.running.store(child.id(), Ordering::SeqCst);
                let o = child.wait_with_output().map_err(|e| e.to_string())?;
                self.running.store(0, Ordering::SeqCst);
                if !o.status.success() {
                    return Err(format!(
                        "ctr content ingest: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
                // an unreferenced blob is the collector's: keep it, unless
                // a collection came first (then nothing was promised)
                self.label_or_collected(r, &["content", "label", &dg, GC_ROOT])?;
            }
            2 | 3 => {
                let (name, tar) = self.rng.pick(&self.images).clone();
                r.kind = "import";
                r.what = format!("import {name} [{sn}]");
                r.effects.push((Obj::Image(name), true));
                let args = [
                    "images",
                    "import",
                    "--snapshotter",
                    sn,
                    tar.to_str().unwrap(),
                ];
                r.retry = Some(Retry {
                    cli: false,
                    args: args.iter().map(|a| a.to_string()).collect(),
                    effects: r.effects.clone(),
                });
                match self.ctr(&args) {
                    // ctr 1.6 unpacks client-side: it Stats each layer's
                    // chain and prepares the next one on it. A collection
                    // that an earlier deletion started (containerd's
                    // scheduler starts one the same way) may take a layer a
                    // cut left unreferenced between the two calls; the
                    // import failed and promised nothing: run it again
                    Err(e) if e.contains("parent snapshot") && e.contains("does not exist") => {
                        r.what
                            .push_str(" (a layer collected under ctr's unpack, imported again)");
                        self.ctr(&args)?;
                    }
                    other => {
                        other?;
                    }
                }
            }
            4 => {
                r.kind = "pull";
                r.what = format!("pull {} [{sn}]", self.pull_ref);
                r.effects.push((Obj::Image(self.pull_ref.clone()), true));
                let (stevedore, pull) = (self.stevedore.clone(), self.pull_ref.clone());
                let args = ["pull", "--quiet", "--snapshotter", sn, &pull];
                r.retry = Some(Retry {
                    cli: true,
                    args: args.iter().map(|a| a.to_string()).collect(),
                    effects: r.effects.clone(),
                });
                self.cmd(&stevedore, &args)?;
            }
            5 => {
                let images = self.lines(&["images", "ls", "-q"])?;
                if images.is_empty() {
                    return Ok(());
                }
                let name = self.rng.pick(&images).clone();
                r.kind = "image-rm";
                r.what = format!("images rm --sync {name}");
                r.effects.push((Obj::Image(name.clone()), false));
                self.ctr(&["images", "rm", "--sync", &name])?;
            }
            6 | 7 => {
                let own = self.own_snapshots(sn)?;
                let parent = if own.is_empty() || self.rng.below(3) == 0 {
                    String::new()
                } else {
                    self.rng.pick(&own).0.clone()
                };
                let (key, name) = (format!("pl-a-{id}"), format!("pl-s-{id}"));
                let bytes = self.random_bytes(1 << 20);
                let file = format!("file-{id}");
                let obj = Obj::Snapshot(sn, name.clone());
                r.kind = "prepare-write-commit";
                r.what = format!(
                    "snapshot {name} on {parent:?} with {} bytes [{sn}]",
                    bytes.len()
                );
                r.effects.push((obj.clone(), true));
                r.file = Some((
                    obj,
                    file.clone(),
                    stevedore_content::digest_of(&bytes).to_string(),
                ));
                let mut args = vec!["snapshots", "--snapshotter", sn, "prepare", &key];
                if !parent.is_empty() {
                    args.push(&parent);
                }
                self.ctr(&args)?;
                let target = self.work.join("snap");
                std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
                let mount = self.ctr(&[
                    "snapshots",
                    "--snapshotter",
                    sn,
                    "mounts",
                    target.to_str().unwrap(),
                    &key,
                ])?;
                let m = MountedBy::run(&mount, &target)?;
                // written like a build step writes: no fsync of its own
                std::fs::write(target.join(&file), &bytes).map_err(|e| e.to_string())?;
                m.release()?;
                self.ctr(&["snapshots", "--snapshotter", sn, "commit", &name, &key])?;
                self.label_or_collected(
                    r,
                    &["snapshots", "--snapshotter", sn, "label", &name, GC_ROOT],
                )?;
            }
            8 => {
                let leaves: Vec<String> = self
                    .own_snapshots(sn)?
                    .into_iter()
                    .filter(|(_, children)| !children)
                    .map(|(k, _)| k)
                    .collect();
                if leaves.is_empty() {
                    return Ok(());
                }
                let name = self.rng.pick(&leaves).clone();
                r.kind = "snapshot-rm";
                r.what = format!("snapshots rm {name} [{sn}]");
                r.effects.push((Obj::Snapshot(sn, name.clone()), false));
                self.ctr(&["snapshots", "--snapshotter", sn, "rm", &name])?;
            }
            9 => {
                let containers = self.lines(&["containers", "ls", "-q"])?;
                if !containers.is_empty() && self.rng.below(2) == 0 {
                    let c = self.rng.pick(&containers).clone();
                    r.kind = "container-rm";
                    r.what = format!("containers rm {c}");
                    r.effects.push((Obj::Container(c.clone()), false));
                    self.ctr(&["containers", "rm", &c])?;
                } else {
                    let images = self.lines(&["images", "ls", "-q"])?;
                    if images.is_empty() {
                        return Ok(());
                    }
                    let image = self.rng.pick(&images).clone();
                    let c = format!("pl-c-{id}");
                    r.kind = "container-create";
                    r.what = format!("containers create {c} on {image} [{sn}]");
                    r.effects.push((Obj::Container(c.clone()), true));
                    r.rootfs = Some((Obj::Container(c.clone()), sn, image.clone()));
                    self.ctr(&[
                        "containers",
                        "create",
                        "--snapshotter",
                        sn,
                        &image,
                        &c,
                        "/bin/true",
                    ])?;
                }
            }
            10 => {
                let leases: Vec<String> = self
                    .lines(&["leases", "ls", "-q"])?
                    .into_iter()
                    .filter(|l| l.starts_with("pl-l-"))
                    .collect();
                if !leases.is_empty() && self.rng.below(2) == 0 {
                    let l = self.rng.pick(&leases).clone();
                    r.kind = "lease-rm";
                    r.what = format!("leases rm {l}");
                    r.effects.push((Obj::Lease(l.clone()), false));
                    self.ctr(&["leases", "rm", &l])?;
                } else {
                    let l = format!("pl-l-{id}");
                    r.kind = "lease-create";
                    r.what = format!("leases create {l}");
                    r.effects.push((Obj::Lease(l.clone()), true));
                    self.ctr(&["leases", "create", "--id", &l])?;
                }
            }
            _ => {
                // a blob an earlier ingest committed and labelled
                let all = self.lines(&["content", "ls"])?;
                let ours: Vec<String> = all
                    .iter()
                    .filter(|l| l.contains("containerd.io/gc.root"))
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect();
                if ours.is_empty() {
                    return Ok(());
                }
                let dg = self.rng.pick(&ours).clone();
                r.kind = "content-rm";
                r.what = format!("content rm {dg}");
                r.effects.push((Obj::Blob(dg.clone()), false));
                self.ctr(&["content", "rm", &dg])?;
            }
        }
        Ok(())
    }

    /// Operations back to back until stopped.
    fn run(mut self) -> Vec<Record> {
        let mut out = Vec::new();
        for j in 0.. {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let mut r = Record {
                kind: "",
                what: String::new(),
                effects: Vec::new(),
                file: None,
                rootfs: None,
                retry: None,
                acked: None,
                failed: None,
            };
            match self.one(j, &mut r) {
                Ok(()) => r.acked = Some(Instant::now()),
                Err(e) => r.failed = Some((Instant::now(), e)),
            }
            let failed = r.failed.is_some();
            if !r.kind.is_empty() || failed {
                out.push(r);
            }
            if failed {
                break;
            }
        }
        out
    }
}

/// A mount made by running the command `ctr snapshots mounts` printed;
/// unmounted by [`MountedBy::release`], or lazily on drop.
struct MountedBy(Option<PathBuf>);

impl MountedBy {
    fn run(command: &str, target: &Path) -> Result<MountedBy, String> {
        let o = Command::new("sh")
            .arg("-c")
            .arg(command.trim())
            .output()
            .map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(format!(
                "{}: {}",
                command.trim(),
                String::from_utf8_lossy(&o.stderr)
            ));
        }
        Ok(MountedBy(Some(target.to_path_buf())))
    }
    fn release(mut self) -> Result<(), String> {
        let t = self.0.take().expect("mounted");
        let o = Command::new("umount")
            .arg(&t)
            .output()
            .map_err(|e| e.to_string())?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "umount {}: {}",
                t.display(),
                String::from_utf8_lossy(&o.stderr)
            ))
        }
    }
}

impl Drop for MountedBy {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            let _ = Command::new("umount").arg("-l").arg(t).status();
        }
    }
}

/// What a layer stack unpacks to: path -> expected entry.
#[derive(Clone, Debug, PartialEq)]
enum Entry {
    Dir,
    File(u64, String),
    Symlink(PathBuf),
}

type Tree = BTreeMap<PathBuf, Entry>;

/// The trees of each prefix of `img`'s layers, keyed by chain id.
fn chain_trees(img: &Images) -> Vec<(String, Tree)> {
    let mut tree = Tree::new();
    let mut chain = String::new();
    let mut out = Vec::new();
    for layer in img.info["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().unwrap();
        let diff_id = layer["diff_id"].as_str().unwrap();
        chain = if chain.is_empty() {
            diff_id.to_string()
        } else {
            stevedore_content::digest_of(format!("{chain} {diff_id}").as_bytes()).to_string()
        };
        let blob = img
            .oci_dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        let f = std::fs::File::open(&blob).unwrap();
        let mt = layer["mediaType"].as_str().unwrap_or_default();
        let reader: Box<dyn Read> = if mt.ends_with("gzip") {
            Box::new(flate2::read::GzDecoder::new(f))
        } else {
            assert!(mt.ends_with("tar"), "layer media type {mt}");
            Box::new(f)
        };
        let mut ar = tar::Archive::new(reader);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path: PathBuf = e
                .path()
                .unwrap()
                .components()
                .filter(|c| matches!(c, std::path::Component::Normal(_)))
                .collect();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let parent = path.parent().unwrap_or(Path::new("")).to_path_buf();
            match name.as_deref() {
                Some(".wh..wh..opq") => {
                    tree.retain(|p, _| !(p.starts_with(&parent) && *p != parent));
                    continue;
                }
                Some(n) if n.starts_with(".wh.") => {
                    let gone = parent.join(&n[4..]);
                    tree.retain(|p, _| !p.starts_with(&gone));
                    continue;
                }
                _ => {}
            }
            let entry = match e.header().entry_type() {
                tar::EntryType::Directory => Entry::Dir,
                tar::EntryType::Regular => {
                    let mut bytes = Vec::new();
                    e.read_to_end(&mut bytes).unwrap();
                    Entry::File(
                        bytes.len() as u64,
                        stevedore_content::digest_of(&bytes).to_string(),
                    )
                }
                tar::EntryType::Symlink => Entry::Symlink(e.link_name().unwrap().unwrap().into()),
                tar::EntryType::Link => {
                    let target: PathBuf = e
                        .link_name()
                        .unwrap()
                        .unwrap()
                        .components()
                        .filter(|c| matches!(c, std::path::Component::Normal(_)))
                        .collect();
                    match tree.get(&target) {
                        Some(t) => t.clone(),
                        None => continue,
                    }
                }
                _ => continue,
            };
            if entry != Entry::Dir {
                tree.retain(|p, _| !p.starts_with(&path));
            }
            tree.insert(path, entry);
        }
        out.push((chain.clone(), tree.clone()));
    }
    out
}

/// Differences between `tree` and the directory `dir`, at most a few.
fn compare_tree(dir: &Path, tree: &Tree) -> Vec<String> {
    let mut bad = Vec::new();
    for (p, want) in tree {
        let at = dir.join(p);
        let got = match std::fs::symlink_metadata(&at) {
            Err(e) => Err(e.to_string()),
            Ok(m) if m.is_dir() => Ok(Entry::Dir),
            Ok(m) if m.file_type().is_symlink() => {
                Ok(Entry::Symlink(std::fs::read_link(&at).unwrap()))
            }
            Ok(m) => {
                let bytes = std::fs::read(&at).unwrap_or_default();
                Ok(Entry::File(
                    m.len(),
                    stevedore_content::digest_of(&bytes).to_string(),
                ))
            }
        };
        if got.as_ref() != Ok(want) {
            bad.push(format!("{}: want {want:?}, found {got:?}", p.display()));
            if bad.len() >= 5 {
                break;
            }
        }
    }
    bad
}

struct Run {
    d: Daemon,
    ctr: PathBuf,
    /// name -> chains of (chain id, expected tree)
    chains: BTreeMap<String, Vec<(String, Tree)>>,
    model: Model,
    verified: usize,
    layers_verified: usize,
    files_verified: usize,
    rootfs_verified: usize,
    leftovers: BTreeMap<&'static str, usize>,
    view: usize,
}

impl Run {
    fn lines(&self, args: &[&str]) -> Vec<String> {
        self.d
            .ctr_ok(args)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Mount a read-only view of committed snapshot `key` and hand its
    /// directory to `f`.
    fn with_view<T>(&mut self, sn: &str, key: &str, f: impl FnOnce(&Path) -> T) -> T {
        self.view += 1;
        let view = format!("pl-view-{}", self.view);
        self.d
            .ctr_ok(&["snapshots", "--snapshotter", sn, "view", &view, key]);
        let out = self.with_mounted(sn, &view, f);
        self.d
            .ctr_ok(&["snapshots", "--snapshotter", sn, "rm", &view]);
        out
    }

    /// Mount active or view snapshot `key` and hand its directory to `f`.
    fn with_mounted<T>(&mut self, sn: &str, key: &str, f: impl FnOnce(&Path) -> T) -> T {
        let target = self.d.dir.path().join("view");
        std::fs::create_dir_all(&target).unwrap();
        let mount = self.d.ctr_ok(&[
            "snapshots",
            "--snapshotter",
            sn,
            "mounts",
            target.to_str().unwrap(),
            key,
        ]);
        let m = MountedBy::run(&mount, &target).unwrap();
        let out = f(&target);
        m.release().unwrap();
        out
    }

    /// After a boot: what every acknowledged operation promised, and the
    /// invariants that hold whatever was acknowledged.
    fn verify(&mut self, when: &str) {
        let images = self.lines(&["images", "ls", "-q"]);
        let content = self.lines(&["content", "ls", "-q"]);
        let containers = self.lines(&["containers", "ls", "-q"]);
        let leases = self.lines(&["leases", "ls", "-q"]);
        let mut snapshots: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
        for sn in SNAPSHOTTERS {
            let rows = self
                .lines(&["snapshots", "--snapshotter", sn, "ls"])
                .into_iter()
                .skip(1)
                .filter_map(|l| {
                    let w: Vec<&str> = l.split_whitespace().collect();
                    Some((w.first()?.to_string(), w.last()?.to_string()))
                })
                .collect();
            snapshots.insert(sn, rows);
        }
        let exists = |o: &Obj| match o {
            Obj::Blob(d) => content.contains(d),
            Obj::Image(n) => images.contains(n),
            Obj::Container(c) => containers.contains(c),
            Obj::Lease(l) => leases.contains(l),
            Obj::Snapshot(sn, k) => snapshots[sn].iter().any(|(key, _)| key == k),
        };
        for o in &self.model.present {
            assert!(exists(o), "{when}: acknowledged {o:?} is missing");
            self.verified += 1;
        }
        for o in &self.model.absent {
            assert!(!exists(o), "{when}: {o:?}, acknowledged removed, is back");
            self.verified += 1;
        }
        // the file a client wrote into each snapshot acknowledged since the
        // last boot (once found whole after a cut, it is on the durable
        // image, which later cuts cannot take back: checked once)
        let files: Vec<(Obj, (String, String))> =
            std::mem::take(&mut self.model.files).into_iter().collect();
        for (o, (file, digest)) in files {
            let Obj::Snapshot(sn, key) = &o else {
                unreachable!()
            };
            let got = self.with_view(sn, key, |dir| {
                std::fs::read(dir.join(&file))
                    .map(|b| stevedore_content::digest_of(&b).to_string())
                    .map_err(|e| e.to_string())
            });
            assert_eq!(
                got.as_ref(),
                Ok(&digest),
                "{when}: file {file} written into acknowledged snapshot {o:?} before its commit"
            );
            self.files_verified += 1;
        }
        // each acknowledged container's rootfs (an active snapshot: native
        // copied its image's files into it) holds its image's files
        // (checked once, like the files below)
        let rootfs: Vec<(Obj, (&'static str, String))> =
            std::mem::take(&mut self.model.rootfs).into_iter().collect();
        for (o, (sn, image)) in rootfs {
            let Obj::Container(id) = &o else {
                unreachable!()
            };
            let Some((_, tree)) = self.chains.get(&image).and_then(|c| c.last()).cloned() else {
                continue;
            };
            let bad = self.with_mounted(sn, id, |dir| compare_tree(dir, &tree));
            assert!(
                bad.is_empty(),
                "{when}: the rootfs of acknowledged container {id} [{sn}] does not hold the files of {image}: {bad:#?}"
            );
            self.rootfs_verified += 1;
        }
        // containerd's notion: every image complete for this platform
        if let Err(e) = self.d.images_check() {
            panic!("{when}: {e}");
        }
        // every committed layer snapshot holds its layers' files
        let chains: Vec<(String, Tree)> = self
            .chains
            .values()
            .flatten()
            .map(|(c, t)| (c.clone(), t.clone()))
            .collect();
        let mut seen = BTreeSet::new();
        for (chain, tree) in chains {
            for sn in SNAPSHOTTERS {
                let committed = snapshots[sn]
                    .iter()
                    .any(|(k, kind)| *k == chain && kind == "Committed");
                if !committed || !seen.insert((sn, chain.clone())) {
                    continue;
                }
                let bad = self.with_view(sn, &chain, |dir| compare_tree(dir, &tree));
                assert!(
                    bad.is_empty(),
                    "{when}: committed layer snapshot {chain} [{sn}] does not hold its layers' files: {bad:#?}"
                );
                self.layers_verified += 1;
            }
        }
    }
}

fn keep_name(k: Keep) -> &'static str {
    match k {
        Keep::None => "none",
        Keep::Some(_) => "some",
        Keep::All => "all",
    }
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_survive_a_power_cut() {
    for fs in [Fs::Ext4, Fs::Btrfs] {
        let mut disk = PowercutDisk::create("1G", fs);
        disk.boot();
        let m = disk.mount_point().to_path_buf();
        let synced: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(m.join("synced")).unwrap();
            f.write_all(&synced).unwrap();
            f.sync_all().unwrap();
            std::fs::File::open(&m).unwrap().sync_all().unwrap();
        }
        // written to the device (O_DIRECT), never flushed
        let src = disk.dir().join("src");
        std::fs::write(&src, vec![7u8; 2 << 20]).unwrap();
        let o = Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", m.join("unsynced").display()))
            .args(["bs=1M", "oflag=direct", "status=none"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        disk.cut(Keep::None);
        let st = disk.shutdown();
        eprintln!("powerloss: {fs:?} self-test: {st:?}");
        assert!(
            st.unflushed_bytes_at_cut >= 2 << 20,
            "{fs:?}: the direct write reached the disk's cache: {st:?}"
        );
        assert!(st.fsyncs > 0, "{fs:?}: the loop device flushes: {st:?}");
        assert!(st.dropped_after_cut > 0, "{fs:?}: {st:?}");
        disk.fsck().unwrap();
        disk.boot();
        assert_eq!(
            std::fs::read(m.join("synced")).unwrap(),
            synced,
            "{fs:?}: a synced file survives"
        );
        let lost = std::fs::read(m.join("unsynced")).unwrap_or_default();
        assert_ne!(lost, vec![7u8; 2 << 20], "{fs:?}: unflushed data is lost");
        disk.shutdown();
    }
}

#[test]
fn acknowledged_work_survives_power_cuts_at_random_points() {
    let ctr = stevedore_e2e::require_tool("ctr", "containerd");
    let seed = seed_from_env("STEVEDORE_POWERLOSS_SEED");
    let iterations = env_u64("STEVEDORE_POWERLOSS_ITERATIONS").unwrap_or(10) as usize;
    let budget = Duration::from_secs(env_u64("STEVEDORE_POWERLOSS_SECONDS").unwrap_or(60));
    let fs = match std::env::var("STEVEDORE_POWERLOSS_FS").as_deref() {
        Ok("btrfs") => Fs::Btrfs,
        Ok("ext4") | Err(_) => Fs::Ext4,
        Ok(other) => panic!("STEVEDORE_POWERLOSS_FS: {other:?} is not ext4 or btrfs"),
    };
    eprintln!(
        "powerloss: seed {seed} on {fs:?} (replay: STEVEDORE_POWERLOSS_SEED={seed} STEVEDORE_POWERLOSS_ITERATIONS={iterations} STEVEDORE_POWERLOSS_FS={})",
        fs.name()
    );
    let started = Instant::now();
    let mut disk = PowercutDisk::create("2G", fs);
    let root = disk.mount_point().join("root");
    let d = Daemon::with_root(&root);
    let work = d.dir.path().join("work");
    let busybox = busybox_image(&work.join("busybox"));
    let big = big_image(&work.join("big"), "gzip", 0.01);
    let registry = TestRegistry::start();
    let pull_ref = stevedore_e2e::skopeo_push(&big, &registry.host(), "stevedore/big:pl", &[]);
    let mut chains = BTreeMap::new();
    chains.insert(busybox.name.clone(), chain_trees(&busybox));
    chains.insert(big.name.clone(), chain_trees(&big));
    chains.insert(pull_ref.clone(), chains[&big.name].clone());
    let images = vec![
        (busybox.name.clone(), busybox.oci_tar.clone()),
        (big.name.clone(), big.oci_tar.clone()),
    ];
    let mut run = Run {
        d,
        ctr,
        chains,
        model: Model::default(),
        verified: 0,
        layers_verified: 0,
        files_verified: 0,
        rootfs_verified: 0,
        leftovers: BTreeMap::new(),
        view: 0,
    };
    let mut rng = Rng(seed);
    let mut acked: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut in_flight: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut keeps: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut totals = CutStats::default();
    let mut survived = 0;
    let mut collected_before_labelled = 0;
    // the import or pull the last cut interrupted, retried after the boot
    let mut retry: Option<Retry> = None;
    let mut retried = 0;
    for i in 0..=iterations {
        // boot: the disk, then the daemon on an empty state directory
        disk.boot();
        let when = format!("boot {i} (seed {seed})");
        if i > 0 {
            let report = check(&Options {
                root: root.clone(),
                repair: false,
            })
            .unwrap_or_else(|e| panic!("{when}: stevedore check: {e}"));
            let problems: Vec<_> = report.problems().collect();
            assert!(
                problems.is_empty(),
                "{when}: corruption found:\n{problems:#?}"
            );
            for f in report.leftovers() {
                *run.leftovers.entry(f.kind).or_default() += 1;
            }
            run.verified += report.total_checked();
        }
        let _ = std::fs::remove_dir_all(&run.d.state);
        let log = run.d.dir.path().join("daemon.log");
        let _ = std::fs::rename(&log, run.d.dir.path().join("daemon.log.previous"));
        run.d.spawn();
        run.verify(&when);
        // interrupted work resumes: the import or pull the cut stopped,
        // run again, completes (what it unpacks is verified next boot)
        if let Some(r) = retry.take() {
            let args: Vec<&str> = r.args.iter().map(String::as_str).collect();
            if r.cli {
                run.d.cli_ok(&args);
            } else {
                run.d.ctr_ok(&args);
            }
            for (o, present) in r.effects {
                run.model.set(o, present);
            }
            retried += 1;
        }
        if i == iterations || started.elapsed() > budget {
            if i < iterations {
                eprintln!("powerloss: time budget {budget:?} reached after {i} cuts");
            }
            break;
        }
        // work, and cut the power at a random moment
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicU32::new(0));
        let client = Client {
            ctr: run.ctr.clone(),
            stevedore: stevedore_e2e::bin("stevedore"),
            socket: run.d.socket.clone(),
            work: work.join("client"),
            images: images.clone(),
            pull_ref: pull_ref.clone(),
            rng: Rng(rng.next_u64()),
            iteration: i,
            stop: stop.clone(),
            running: running.clone(),
        };
        std::fs::create_dir_all(&client.work).unwrap();
        let worker = std::thread::spawn(move || client.run());
        let delay = Duration::from_millis(200 + rng.below(2800));
        let keep = match rng.below(3) {
            0 => Keep::None,
            1 => Keep::Some(rng.next_u64()),
            _ => Keep::All,
        };
        // half the cuts wait (up to a second) for the moment the cache
        // holds 1-8 unflushed writes: the daemon and the filesystem flush
        // so often that a cut at an arbitrary instant mostly finds the
        // cache empty. Work acknowledged while armed counts as in flight.
        let armed = rng.below(2) == 0;
        let armed_writes = 1 + rng.below(8) as u32;
        std::thread::sleep(delay);
        let cut_at = Instant::now();
        let fired = armed && disk.cut_when_cache_holds(armed_writes, keep, Duration::from_secs(1));
        if !armed {
            disk.cut(keep);
        }
        stop.store(true, Ordering::SeqCst);
        run.d.kill9();
        // the client's command in flight dies with the daemon; make sure
        while !worker.is_finished() {
            if let Some(pid) = rustix::process::Pid::from_raw(running.load(Ordering::SeqCst) as i32)
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let records = worker.join().unwrap();
        let mut cut_during = String::from("between operations");
        for r in &records {
            match (r.acked, &r.failed) {
                (Some(t), _) if t < cut_at => {
                    *acked.entry(r.kind).or_default() += 1;
                    collected_before_labelled +=
                        usize::from(r.what.ends_with("(collected before labelled)"));
                    for (o, present) in &r.effects {
                        run.model.set(o.clone(), *present);
                    }
                    if let Some((o, sn, image)) = &r.rootfs {
                        run.model.rootfs.insert(o.clone(), (sn, image.clone()));
                    }
                    if let Some((o, file, digest)) = &r.file {
                        run.model
                            .files
                            .insert(o.clone(), (file.clone(), digest.clone()));
                    }
                }
                (_, Some((t, e))) if *t < cut_at => {
                    panic!(
                        "{when}: {} failed before the cut: {e}\n{}",
                        r.what,
                        run.d.log()
                    )
                }
                _ => {
                    // in flight at the cut: either outcome is allowed
                    *in_flight.entry(r.kind).or_default() += 1;
                    if r.retry.is_some() {
                        retry = r.retry.clone();
                    }
                    cut_during = if r.kind.is_empty() {
                        "the listing before an operation".to_string()
                    } else {
                        r.what.clone()
                    };
                    for (o, _) in &r.effects {
                        run.model.forget(o);
                    }
                }
            }
        }
        *keeps.entry(keep_name(keep)).or_default() += 1;
        let st = disk.shutdown();
        eprintln!(
            "powerloss: cut {i} after {delay:?}{} during {cut_during} ({} acknowledged before), cache kept {} of {} unflushed writes ({} bytes), {:.1}s",
            match (armed, fired) {
                (false, _) => String::new(),
                (true, true) => format!(" (armed: at a write with {armed_writes}+ unflushed)"),
                (true, false) => format!(" (armed for {armed_writes} unflushed writes, none came in 1s)"),
            },
            records.iter().filter(|r| r.acked.is_some_and(|t| t < cut_at)).count(),
            st.kept_writes,
            st.unflushed_writes_at_cut,
            st.unflushed_bytes_at_cut,
            started.elapsed().as_secs_f64()
        );
        totals.writes += st.writes;
        totals.write_bytes += st.write_bytes;
        totals.fsyncs += st.fsyncs;
        totals.unflushed_writes_at_cut += st.unflushed_writes_at_cut;
        totals.unflushed_bytes_at_cut += st.unflushed_bytes_at_cut;
        totals.kept_writes += st.kept_writes;
        totals.dropped_after_cut += st.dropped_after_cut;
        if let Err(e) = disk.fsck() {
            panic!("{when}: the {fs:?} filesystem itself is damaged after the cut: {e}");
        }
        survived += 1;
    }
    // a collection removes whatever the cuts left that nothing holds
    run.d.ctr_ok(&["leases", "create", "--id", "pl-gc-trigger"]);
    run.d.ctr_ok(&["leases", "rm", "--sync", "pl-gc-trigger"]);
    run.d.stop();
    let report = check(&Options {
        root: root.clone(),
        repair: false,
    })
    .unwrap();
    let problems: Vec<_> = report.problems().collect();
    assert!(
        problems.is_empty(),
        "final: corruption found:\n{problems:#?}"
    );
    let uncollected: Vec<_> = report
        .leftovers()
        .filter(|f| COLLECTED_BY_GC.contains(&f.kind))
        .collect();
    assert!(
        uncollected.is_empty(),
        "final: garbage collection left leftovers of the cuts:\n{uncollected:#?}"
    );
    disk.shutdown();
    eprintln!(
        "powerloss: {survived} power cuts survived on {fs:?}, {} checks ({} committed layer snapshots and {} container rootfs compared file by file, {} client-written files, {} objects collected before the client labelled them), acknowledged before a cut {acked:?}, in flight at a cut {in_flight:?}, interrupted imports and pulls retried {retried}, cache kept {keeps:?}; disk: {} writes ({} MB), {} flushes, {} writes unflushed at the cuts ({} MB, {} kept), {} dropped after; leftovers seen {:?}; {:.1}s, seed {seed}",
        run.verified,
        run.layers_verified,
        run.rootfs_verified,
        run.files_verified,
        collected_before_labelled,
        totals.writes,
        totals.write_bytes >> 20,
        totals.fsyncs,
        totals.unflushed_writes_at_cut,
        totals.unflushed_bytes_at_cut >> 20,
        totals.kept_writes,
        totals.dropped_after_cut,
        run.leftovers,
        started.elapsed().as_secs_f64()
    );
    assert!(survived > 0, "no power cut ran");
    assert!(
        totals.unflushed_writes_at_cut > 0,
        "no cut found unflushed writes: the disk model was not exercised"
    );
}
