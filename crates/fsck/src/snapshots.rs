//! Snapshotter metadata against snapshot directories (layout:
//! `stevedore_snapshots::engine`), and mounts left under the root.

use crate::{running_or, Action, Collector, Severity, SNAPSHOTTER_PREFIX};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use stevedore_snapshots::engine::{Backend, Engine, Record};
use stevedore_snapshots::{Kind, Snapshotter};
use stevedore_types::{Error, Result};

/// An opened snapshotter, whatever its backend.
pub(crate) trait Inspect {
    fn records(&self) -> Result<Vec<(String, Record)>>;
    fn dir_of(&self, id: u64) -> PathBuf;
    fn snapshots_dir(&self) -> PathBuf;
    fn snapshotter(&self) -> &dyn Snapshotter;
}

impl<B: Backend> Inspect for Engine<B> {
    fn records(&self) -> Result<Vec<(String, Record)>> {
        Engine::records(self)
    }
    fn dir_of(&self, id: u64) -> PathBuf {
        Engine::dir_of(self, id)
    }
    fn snapshots_dir(&self) -> PathBuf {
        self.root().join("snapshots")
    }
    fn snapshotter(&self) -> &dyn Snapshotter {
        self
    }
}

/// Every snapshotter of a root that has metadata, by name.
pub(crate) struct Opened(BTreeMap<String, Box<dyn Inspect>>);

impl Opened {
    pub fn remove(&self, snapshotter: &str, key: &str) -> Result<()> {
        self.get(snapshotter)?.snapshotter().remove(key)
    }

    pub fn cleanup(&self, snapshotter: &str) -> Result<()> {
        self.get(snapshotter)?.snapshotter().cleanup()
    }

    fn get(&self, name: &str) -> Result<&dyn Inspect> {
        self.0
            .get(name)
            .map(|b| b.as_ref())
            .ok_or_else(|| Error::not_found(format!("snapshotter {name:?}: not opened")))
    }
}

/// Open the snapshotters that have a `metadata.db` under `root`.
pub(crate) fn open_all(root: &Path) -> Result<Opened> {
    let mut out: BTreeMap<String, Box<dyn Inspect>> = BTreeMap::new();
    let rd = std::fs::read_dir(root)
        .map_err(|e| Error::from(e).context(format!("read {}", root.display())))?;
    for ent in rd.flatten() {
        let fname = ent.file_name().to_string_lossy().into_owned();
        let Some(name) = fname.strip_prefix(SNAPSHOTTER_PREFIX) else {
            continue;
        };
        let dir = ent.path();
        if !dir.join("metadata.db").exists() {
            continue; // never initialised (e.g. btrfs on another filesystem)
        }
        let opened: Box<dyn Inspect> = match name {
            "overlayfs" => {
                Box::new(stevedore_snapshots::overlay::open(&dir).map_err(|e| running_or(e, root))?)
            }
            "native" => {
                Box::new(stevedore_snapshots::native::open(&dir).map_err(|e| running_or(e, root))?)
            }
            "btrfs" => {
                Box::new(stevedore_snapshots::btrfs::open(&dir).map_err(|e| running_or(e, root))?)
            }
            _ => continue, // not a snapshotter this build knows
        };
        out.insert(name.to_string(), opened);
    }
    Ok(Opened(out))
}

/// Snapshots that exist and are sound: `snapshotter -> keys` (`<ns>/<key>`),
/// and every key each snapshotter records, sound or broken.
pub(crate) struct SnapState {
    pub sound: BTreeMap<String, BTreeSet<String>>,
    pub recorded: BTreeMap<String, BTreeSet<String>>,
}

impl SnapState {
    pub fn exists(&self, snapshotter: &str, key: &str) -> bool {
        self.sound.get(snapshotter).is_some_and(|s| s.contains(key))
    }

    /// The snapshotter is in the root and holds no record of `key`: the
    /// snapshot was removed (a broken one still has its record).
    pub fn removed(&self, snapshotter: &str, key: &str) -> bool {
        self.recorded
            .get(snapshotter)
            .is_some_and(|s| !s.contains(key))
    }
}

pub(crate) fn check(opened: &Opened, c: &mut Collector) -> Result<SnapState> {
    let mut sound = BTreeMap::new();
    let mut recorded = BTreeMap::new();
    for (name, s) in &opened.0 {
        let records: BTreeMap<String, Record> = s.records()?.into_iter().collect();
        recorded.insert(name.clone(), records.keys().cloned().collect());
        c.count("snapshots", records.len());
        let object = |key: &str| format!("{name}/{key}");
        let remove = |key: &str| {
            Some(Action::RemoveSnapshot {
                snapshotter: name.clone(),
                key: key.to_string(),
            })
        };
        let mut broken: BTreeSet<String> = BTreeSet::new();
        let mut by_id: HashMap<u64, Vec<&str>> = HashMap::new();
        for (key, rec) in &records {
            by_id.entry(rec.id).or_default().push(key);
            let dir = s.dir_of(rec.id);
            let why = if !dir.join("fs").is_dir() {
                Some((
                    "snapshot-dir-missing",
                    format!(
                        "{} snapshot has no directory {}",
                        rec.kind.as_str(),
                        dir.join("fs").display()
                    ),
                ))
            } else if name == "overlayfs" && rec.kind == Kind::Active && !dir.join("work").is_dir()
            {
                Some((
                    "snapshot-dir-missing",
                    format!(
                        "active snapshot has no work dir {}",
                        dir.join("work").display()
                    ),
                ))
            } else if !rec.parent.is_empty() {
                match records.get(&rec.parent) {
                    None => Some((
                        "snapshot-parent-missing",
                        format!("parent {:?} has no record", rec.parent),
                    )),
                    Some(p) if p.kind != Kind::Committed => Some((
                        "snapshot-parent-not-committed",
                        format!(
                            "parent {:?} is {}, not committed",
                            rec.parent,
                            p.kind.as_str()
                        ),
                    )),
                    Some(_) => None,
                }
            } else {
                None
            };
            if let Some((kind, detail)) = why {
                c.add(
                    kind,
                    Severity::Problem,
                    object(key),
                    detail,
                    "remove the snapshot record",
                    remove(key),
                );
                broken.insert(key.clone());
            }
        }
        for (id, keys) in &by_id {
            if keys.len() > 1 {
                for key in keys {
                    c.add(
                        "snapshot-id-shared",
                        Severity::Problem,
                        object(key),
                        format!("shares directory id {id} with {keys:?}"),
                        "",
                        None,
                    );
                }
            }
        }
        // a snapshot on a broken chain is broken too
        loop {
            let more: Vec<String> = records
                .iter()
                .filter(|(k, r)| !broken.contains(*k) && broken.contains(&r.parent))
                .map(|(k, _)| k.clone())
                .collect();
            if more.is_empty() {
                break;
            }
            for key in more {
                c.add(
                    "snapshot-chain-broken",
                    Severity::Problem,
                    object(&key),
                    format!("an ancestor ({:?}) is broken", records[&key].parent),
                    "remove the snapshot record",
                    remove(&key),
                );
                broken.insert(key);
            }
        }
        // directories no record names
        let ids: BTreeSet<String> = records.values().map(|r| r.id.to_string()).collect();
        let snaps_dir = s.snapshots_dir();
        let rd = std::fs::read_dir(&snaps_dir)
            .map_err(|e| Error::from(e).context(format!("read {}", snaps_dir.display())))?;
        for ent in rd.flatten() {
            let dname = ent.file_name().to_string_lossy().into_owned();
            c.count("snapshot directories", 1);
            if !ids.contains(&dname) {
                c.add(
                    "snapshot-dir-orphan",
                    Severity::Leftover,
                    ent.path().display().to_string(),
                    "no snapshot record names this directory (a crash mid-create or mid-remove; the snapshotter's cleanup at the next garbage collection removes it)",
                    "remove it",
                    Some(Action::SnapshotCleanup {
                        snapshotter: name.clone(),
                    }),
                );
            }
        }
        sound.insert(
            name.clone(),
            records
                .keys()
                .filter(|k| !broken.contains(*k))
                .cloned()
                .collect(),
        );
    }
    Ok(SnapState { sound, recorded })
}

/// Every mount point of this process's mount namespace (`/proc/self/mountinfo`).
pub fn mount_points() -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::from(e).context("read /proc/self/mountinfo"))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts an administrator makes, not a crash: the root itself, or a
/// plugin's directory directly under it on its own filesystem (containerd's
/// btrfs snapshotter is deployed with a btrfs volume mounted at
/// `<root>/io.containerd.snapshotter.v1.btrfs`). stevedore itself mounts
/// only deeper: snapshots, task rootfs, temporary apply targets.
fn is_deployment_mount(root: &Path, m: &Path) -> bool {
    m == root || m.parent() == Some(root)
}

pub(crate) fn check_mounts(root: &Path, c: &mut Collector) -> Result<()> {
    let canonical = root.canonicalize().unwrap_or_else(|_| root.to_path_buf());
    for m in mount_points()?
        .into_iter()
        .filter(|m| m.starts_with(&canonical) && !is_deployment_mount(&canonical, m))
    {
        c.add(
            "mount-left",
            Severity::Problem,
            m.display().to_string(),
            "a mount under the root while stevedored is stopped (left by a crash)",
            "",
            None,
        );
    }
    Ok(())
}
