//! The snapshotter engine shared by overlayfs, native and btrfs: metadata in a
//! redb database, one directory per snapshot, and a [`Backend`] for what
//! differs between filesystems (how a layer directory is made, mounted,
//! frozen and destroyed).
//!
//! # On-disk layout (`<root>` is the plugin root)
//! - `<root>/metadata.db`: redb. Tables:
//!   - `snapshots`: key or name -> JSON [`Record`] (id, kind, parent, labels,
//!     times, usage recorded at commit),
//!   - `children`: `(parent, child)` -> `()`, so "has children" is one range scan,
//!   - `counters`: `"next_id"` -> u64, the id allocator.
//! - `<root>/snapshots/<id>/`: the snapshot's directory; the backend decides
//!   what is inside (overlayfs: `fs/` and `work/`; native and btrfs: `fs/`).
//! - `<root>/snapshots/new-<uuid>/`: a snapshot being created.
//! - `<root>/snapshots/rm-<id>/`: a snapshot being destroyed.
//!
//! # Crash safety
//! Prepare/View build the directory under `new-<uuid>` outside any lock, then
//! in one write transaction check the key and parent again, allocate the id,
//! insert the record, and rename `new-<uuid>` to `<id>` and fsync
//! `snapshots/` (so the rename is on disk before the record, for a power
//! loss too); the transaction commits (fsync) last. The new directory itself
//! is fsync'ed before the rename (its entries, `fs/` and `work/`, are on disk
//! before the record names it), and a backend that copies its parent's
//! files (native) syncs its filesystem after the copy. Commit syncs the
//! filesystem holding the snapshot (`syncfs`) before its transaction: the
//! files a layer unpacked, or a client wrote, into the active snapshot are
//! on disk before the committed record that makes them a parent (without
//! it, the power-loss test, `crates/e2e/tests/powerloss.rs`, found committed
//! layers whose files had become empty; containerd syncs only when asked,
//! with its CRI's `image_pull_with_sync_fs`). A crash before the commit leaves a directory no record
//! names (the id was never committed, so it is allocated again later: a stale
//! `<id>` directory found then is removed before the rename). Remove deletes
//! the record in one transaction and, only after it committed, renames `<id>`
//! to `rm-<id>` and destroys that (ids are never reused, so a crash in
//! between leaves `<id>` without a record). So no record ever names a missing or
//! half-built directory, and every leftover is a directory without a record,
//! which [`Engine::cleanup`] removes (creations and removals in flight hold
//! a shared gate that cleanup takes exclusively).

use crate::usage::disk_usage;
use crate::{Info, Kind, Snapshotter, Usage};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stevedore_types::filters::Filter;
use stevedore_types::{labels, Error, ErrorKind, Mount, Result};

/// Write to disk everything pending on the filesystem that holds `dir`
/// (syncfs(2)): one call for a whole unpacked layer or copied tree, where
/// an fsync per file would commit the journal once per file.
pub(crate) fn sync_filesystem(dir: &Path) -> Result<()> {
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::from(std::io::Error::from(e)).context(format!("open {}", dir.display())))?;
    rustix::fs::syncfs(&fd).map_err(|e| {
        Error::from(std::io::Error::from(e))
            .context(format!("sync the filesystem of {}", dir.display()))
    })
}

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: TableDefinition<(&str, &str), ()> = TableDefinition::new("children");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");

/// A snapshot as the backend sees it when computing mounts.
#[derive(Debug, Clone)]
pub struct Snap {
    pub id: u64,
    pub kind: Kind,
    /// Ids of the parent chain, nearest first.
    pub parent_ids: Vec<u64>,
}

/// What differs between filesystems.
pub trait Backend: Send + Sync + 'static {
    /// Fill the fresh, empty directory `dir` of a new snapshot; `parent` is
    /// the parent snapshot's directory.
    fn create(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()>;
    /// The mounts of a snapshot; `dir_of` gives the directory of an id.
    fn mounts(&self, snap: &Snap, dir_of: &dyn Fn(u64) -> PathBuf) -> Vec<Mount>;
    /// Freeze a snapshot's directory on commit (btrfs: read-only subvolume).
    fn freeze(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Whether an active snapshot's directory is independent of its parents'
    /// (overlayfs: the upper dir), so it may be moved onto another parent
    /// ([`Snapshotter::rebase`], which calls [`Backend::rebase`]).
    fn rebasable(&self) -> bool {
        false
    }
    /// Redo what [`Backend::create`] derives from the parent, for a
    /// snapshot moved onto `parent` (overlayfs: the layer root's owner).
    fn rebase(&self, _dir: &Path, _parent: Option<&Path>) -> Result<()> {
        Ok(())
    }
    /// Undo [`Backend::freeze`] when the commit transaction fails.
    fn thaw(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }
    /// Delete a snapshot directory and everything in it.
    fn destroy(&self, dir: &Path) -> Result<()> {
        remove_tree(dir)
    }
    /// Disk usage of the snapshot's own layer.
    fn usage(&self, dir: &Path) -> Result<Usage> {
        disk_usage(&dir.join("fs"))
    }
}

/// `rm -rf`, tolerating absence.
pub fn remove_tree(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::from(e).context(format!("remove {}", dir.display()))),
    }
}

/// The stored form of a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub id: u64,
    pub kind: Kind,
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub created_ns: u64,
    pub updated_ns: u64,
    #[serde(default)]
    pub usage: Usage,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn time_of(ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns)
}

impl Record {
    fn info(&self, name: &str) -> Info {
        Info {
            name: name.to_string(),
            parent: self.parent.clone(),
            kind: self.kind,
            labels: self.labels.clone(),
            created: time_of(self.created_ns),
            updated: time_of(self.updated_ns),
        }
    }
}

fn db_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("snapshot metadata: {op}: {e}"))
}

/// A snapshotter: metadata plus a [`Backend`].
pub struct Engine<B: Backend> {
    root: PathBuf,
    db: Database,
    backend: B,
    /// Creations and removals hold it shared, cleanup exclusively, so cleanup
    /// never sees a directory whose record is about to be committed.
    gate: RwLock<()>,
}

impl<B: Backend> Engine<B> {
    /// Open (or create) a snapshotter rooted at `root`.
    pub fn open(root: &Path, backend: B) -> Result<Self> {
        let snaps = root.join("snapshots");
        std::fs::create_dir_all(&snaps)
            .map_err(|e| Error::from(e).context(format!("create {}", snaps.display())))?;
        let path = root.join("metadata.db");
        let db = Database::create(&path).map_err(|e| {
            Error::unavailable(format!("open snapshot metadata {}: {e}", path.display()))
        })?;
        let tx = db.begin_write().map_err(|e| db_err("begin", e))?;
        tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
        tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
        tx.open_table(COUNTERS).map_err(|e| db_err("open", e))?;
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(Engine {
            root: root.to_path_buf(),
            db,
            backend,
            gate: RwLock::new(()),
        })
    }

    /// The snapshotter's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of snapshot `id`.
    pub fn dir_of(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    /// The directory holding `key`'s files (`<dir>/fs`), for tools and tests.
    pub fn fs_path(&self, key: &str) -> Result<PathBuf> {
        Ok(self.dir_of(self.get(key)?.id).join("fs"))
    }

    fn get(&self, key: &str) -> Result<Record> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read", e))?;
        let t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
        read(&t, key)?.ok_or_else(|| not_found(key))
    }

    fn chain(&self, rec: &Record) -> Result<Vec<u64>> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read", e))?;
        let t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
        let mut ids = Vec::new();
        let mut parent = rec.parent.clone();
        while !parent.is_empty() {
            let p = read(&t, &parent)?.ok_or_else(|| {
                Error::not_found(format!("missing parent {parent:?} in snapshot chain"))
            })?;
            ids.push(p.id);
            parent = p.parent;
        }
        Ok(ids)
    }

    fn mounts_of(&self, rec: &Record) -> Result<Vec<Mount>> {
        let snap = Snap {
            id: rec.id,
            kind: rec.kind,
            parent_ids: self.chain(rec)?,
        };
        Ok(self.backend.mounts(&snap, &|id| self.dir_of(id)))
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        if key.is_empty() {
            return Err(Error::invalid("snapshot key must not be empty"));
        }
        labels::validate_all(&labels)
            .map_err(|e| e.context(format!("snapshot {key:?}: info.Labels")))?;
        // cheap early checks; repeated under the write lock below
        let parent_id = {
            let tx = self.db.begin_read().map_err(|e| db_err("begin read", e))?;
            let t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            if read(&t, key)?.is_some() {
                return Err(exists(key));
            }
            check_parent(&t, parent)?
        };
        let temp_name = format!("new-{}", uuid::Uuid::new_v4().simple());
        let temp = self.root.join("snapshots").join(&temp_name);
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let result = (|| {
            std::fs::create_dir(&temp)
                .map_err(|e| Error::from(e).context(format!("create {}", temp.display())))?;
            let parent_dir = parent_id.map(|id| self.dir_of(id));
            self.backend
                .create(&temp, kind, parent_dir.as_deref())
                .map_err(|e| e.context(format!("create snapshot {key:?}")))?;
            std::fs::File::open(&temp)
                .and_then(|f| f.sync_all())
                .map_err(|e| Error::from(e).context(format!("fsync {}", temp.display())))?;
            let now = now_ns();
            let rec = Record {
                id: 0,
                kind,
                parent: parent.to_string(),
                labels,
                created_ns: now,
                updated_ns: now,
                usage: Usage::default(),
            };
            let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
            let rec = {
                let mut t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
                if read(&t, key)?.is_some() {
                    return Err(exists(key));
                }
                if check_parent(&t, parent)? != parent_id {
                    return Err(Error::not_found(format!(
                        "parent snapshot {parent:?} was removed while preparing {key:?}"
                    )));
                }
                let mut c = tx.open_table(COUNTERS).map_err(|e| db_err("open", e))?;
                let id = c
                    .get("next_id")
                    .map_err(|e| db_err("read id counter", e))?
                    .map(|v| v.value())
                    .unwrap_or(1);
                c.insert("next_id", id + 1)
                    .map_err(|e| db_err("write id counter", e))?;
                let rec = Record { id, ..rec };
                write(&mut t, key, &rec)?;
                if !parent.is_empty() {
                    let mut ch = tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
                    ch.insert((parent, key), ())
                        .map_err(|e| db_err("link parent", e))?;
                }
                let dir = self.dir_of(id);
                // an uncommitted earlier allocation of this id (crash) left it
                if dir.exists() {
                    self.backend.destroy(&dir)?;
                }
                std::fs::rename(&temp, &dir).map_err(|e| {
                    Error::from(e).context(format!(
                        "rename {} to {}",
                        temp.display(),
                        dir.display()
                    ))
                })?;
                // the rename reaches the disk before the record that names
                // it: after a power loss no record names a directory still
                // called `new-<uuid>` (a syscall trace showed the record's
                // fdatasync with no fsync of this directory before it)
                if let Some(snapshots) = dir.parent() {
                    std::fs::File::open(snapshots)
                        .and_then(|f| f.sync_all())
                        .map_err(|e| {
                            Error::from(e).context(format!("fsync {}", snapshots.display()))
                        })?;
                }
                rec
            };
            if let Err(e) = tx.commit() {
                let _ = std::fs::rename(self.dir_of(rec.id), &temp);
                return Err(db_err("commit", e));
            }
            self.mounts_of(&rec)
        })();
        if result.is_err() && temp.exists() {
            if let Err(e) = self.backend.destroy(&temp) {
                tracing::warn!(dir = %temp.display(), error = %e, "leaving a failed snapshot directory for cleanup");
            }
        }
        result
    }

    /// Every snapshot record with its key: for `stevedore check` and the GC.
    pub fn records(&self) -> Result<Vec<(String, Record)>> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read", e))?;
        let t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
        let mut out = Vec::new();
        for r in t.iter().map_err(|e| db_err("scan", e))? {
            let (k, v) = r.map_err(|e| db_err("scan", e))?;
            out.push((k.value().to_string(), decode(k.value(), v.value())?));
        }
        Ok(out)
    }
}

fn not_found(key: &str) -> Error {
    Error::not_found(format!("snapshot {key:?} does not exist"))
}

fn exists(key: &str) -> Error {
    Error::already_exists(format!("snapshot {key:?} already exists"))
}

fn decode(key: &str, v: &[u8]) -> Result<Record> {
    serde_json::from_slice(v).map_err(|e| db_err(&format!("decode snapshot {key:?}"), e))
}

fn read(t: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<Record>> {
    match t.get(key).map_err(|e| db_err("read", e))? {
        None => Ok(None),
        Some(v) => decode(key, v.value()).map(Some),
    }
}

fn write(t: &mut redb::Table<&'static str, &'static [u8]>, key: &str, r: &Record) -> Result<()> {
    let v = serde_json::to_vec(r).map_err(|e| db_err("encode", e))?;
    t.insert(key, v.as_slice())
        .map_err(|e| db_err("write", e))?;
    Ok(())
}

/// The id of committed `parent`, or None for no parent.
fn check_parent(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    parent: &str,
) -> Result<Option<u64>> {
    if parent.is_empty() {
        return Ok(None);
    }
    let p = read(t, parent)?
        .ok_or_else(|| Error::not_found(format!("parent snapshot {parent:?} does not exist")))?;
    if p.kind != Kind::Committed {
        return Err(Error::invalid(format!(
            "parent {parent:?} is not committed snapshot"
        )));
    }
    Ok(Some(p.id))
}

fn has_children(
    t: &impl ReadableTable<(&'static str, &'static str), ()>,
    key: &str,
) -> Result<bool> {
    let mut it = t.range((key, "")..).map_err(|e| db_err("range", e))?;
    match it.next() {
        None => Ok(false),
        Some(r) => {
            let (k, _) = r.map_err(|e| db_err("range", e))?;
            Ok(k.value().0 == key)
        }
    }
}

impl<B: Backend> Snapshotter for Engine<B> {
    fn stat(&self, key: &str) -> Result<Info> {
        Ok(self.get(key)?.info(key))
    }

    fn update(&self, info: Info, fieldpaths: &[String]) -> Result<Info> {
        let key = info.name.clone();
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        let rec = {
            let mut t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            let mut rec = read(&t, &key)?.ok_or_else(|| not_found(&key))?;
            if fieldpaths.is_empty() {
                rec.labels = info.labels;
            } else {
                for path in fieldpaths {
                    if let Some(k) = path.strip_prefix("labels.") {
                        match info.labels.get(k) {
                            Some(v) => rec.labels.insert(k.to_string(), v.clone()),
                            None => rec.labels.remove(k),
                        };
                    } else if path == "labels" {
                        rec.labels = info.labels.clone();
                    } else {
                        return Err(Error::invalid(format!(
                            "cannot update {path:?} field on snapshot {key:?}"
                        )));
                    }
                }
            }
            labels::validate_all(&rec.labels)
                .map_err(|e| e.context(format!("snapshot {key:?}: info.Labels")))?;
            rec.updated_ns = now_ns();
            write(&mut t, &key, &rec)?;
            rec
        };
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(rec.info(&key))
    }

    fn usage(&self, key: &str) -> Result<Usage> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Active {
            self.backend
                .usage(&self.dir_of(rec.id))
                .map_err(|e| e.context(format!("usage of snapshot {key:?}")))
        } else {
            Ok(rec.usage)
        }
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let rec = self.get(key)?;
        if rec.kind == Kind::Committed {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is committed: only active and view snapshots have mounts"
            )));
        }
        self.mounts_of(&rec)
    }

    fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<Mount>> {
        self.create(Kind::Active, key, parent, labels)
    }

    fn view(&self, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Vec<Mount>> {
        self.create(Kind::View, key, parent, labels)
    }

    fn commit(&self, name: &str, key: &str, labels: HashMap<String, String>) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid("commit name must not be empty"));
        }
        labels::validate_all(&labels)
            .map_err(|e| e.context(format!("snapshot {name:?}: info.Labels")))?;
        let rec = self.get(key).map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                Error::not_found(format!("failed to get active snapshot {key:?}: not found"))
            } else {
                e
            }
        })?;
        if rec.kind != Kind::Active {
            return Err(Error::precondition(format!(
                "snapshot {key:?} is not active"
            )));
        }
        let dir = self.dir_of(rec.id);
        let usage = self
            .backend
            .usage(&dir)
            .map_err(|e| e.context(format!("commit {key:?} as {name:?}: usage")))?;
        // what was written into the snapshot is on disk before the record
        // that commits it (power loss)
        sync_filesystem(&dir).map_err(|e| e.context(format!("commit {key:?} as {name:?}")))?;
        self.backend.freeze(&dir)?;
        let result = (|| {
            let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
            {
                let mut t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
                if read(&t, name)?.is_some() {
                    return Err(exists(name));
                }
                let cur = read(&t, key)?.ok_or_else(|| not_found(key))?;
                if cur.id != rec.id || cur.kind != Kind::Active {
                    return Err(Error::precondition(format!(
                        "snapshot {key:?} changed while committing"
                    )));
                }
                t.remove(key).map_err(|e| db_err("delete active", e))?;
                let now = now_ns();
                let committed = Record {
                    kind: Kind::Committed,
                    labels,
                    created_ns: now,
                    updated_ns: now,
                    usage,
                    ..cur
                };
                write(&mut t, name, &committed)?;
                if !committed.parent.is_empty() {
                    let mut ch = tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
                    ch.remove((committed.parent.as_str(), key))
                        .map_err(|e| db_err("unlink parent", e))?;
                    ch.insert((committed.parent.as_str(), name), ())
                        .map_err(|e| db_err("link parent", e))?;
                }
            }
            tx.commit().map_err(|e| db_err("commit", e))
        })();
        if result.is_err() {
            let _ = self.backend.thaw(&dir);
        }
        result
    }

    fn can_rebase(&self) -> bool {
        self.backend.rebasable()
    }

    fn rebase(&self, key: &str, parent: &str) -> Result<Vec<Mount>> {
        if !self.backend.rebasable() {
            return Err(Error::unimplemented(format!(
                "rebase snapshot {key:?}: not supported by this snapshotter"
            )));
        }
        let rec = self.get(key)?;
        if rec.kind != Kind::Active {
            return Err(Error::precondition(format!(
                "rebase snapshot {key:?}: not an active snapshot"
            )));
        }
        let parent_id = {
            let tx = self.db.begin_read().map_err(|e| db_err("begin read", e))?;
            let t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            check_parent(&t, parent)?
        };
        let dir = self.dir_of(rec.id);
        self.backend
            .rebase(&dir, parent_id.map(|id| self.dir_of(id)).as_deref())
            .map_err(|e| e.context(format!("rebase snapshot {key:?} onto {parent:?}")))?;
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        let rec = {
            let mut t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            let cur = read(&t, key)?.ok_or_else(|| not_found(key))?;
            if cur.id != rec.id || cur.kind != Kind::Active {
                return Err(Error::precondition(format!(
                    "snapshot {key:?} changed while rebasing"
                )));
            }
            if check_parent(&t, parent)? != parent_id {
                return Err(Error::not_found(format!(
                    "parent snapshot {parent:?} was removed while rebasing {key:?}"
                )));
            }
            let mut ch = tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
            if !cur.parent.is_empty() {
                ch.remove((cur.parent.as_str(), key))
                    .map_err(|e| db_err("unlink parent", e))?;
            }
            if !parent.is_empty() {
                ch.insert((parent, key), ())
                    .map_err(|e| db_err("link parent", e))?;
            }
            let moved = Record {
                parent: parent.to_string(),
                updated_ns: now_ns(),
                ..cur
            };
            write(&mut t, key, &moved)?;
            moved
        };
        tx.commit().map_err(|e| db_err("commit", e))?;
        self.mounts_of(&rec)
    }

    fn remove(&self, key: &str) -> Result<()> {
        let _gate = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        let (rec, dir, doomed) = {
            let mut t = tx.open_table(SNAPSHOTS).map_err(|e| db_err("open", e))?;
            let rec = read(&t, key)?.ok_or_else(|| not_found(key))?;
            let mut ch = tx.open_table(CHILDREN).map_err(|e| db_err("open", e))?;
            if has_children(&ch, key)? {
                return Err(Error::precondition(format!(
                    "cannot remove snapshot {key:?} with child"
                )));
            }
            t.remove(key).map_err(|e| db_err("delete", e))?;
            if !rec.parent.is_empty() {
                ch.remove((rec.parent.as_str(), key))
                    .map_err(|e| db_err("unlink parent", e))?;
            }
            let dir = self.dir_of(rec.id);
            let doomed = self.root.join("snapshots").join(format!("rm-{}", rec.id));
            (rec, dir, doomed)
        };
        // the record goes first: renaming the directory before the commit
        // would leave, after a crash between the two, a record naming a
        // missing directory (ids are never reused, so `<id>` without a
        // record is an ordinary leftover for cleanup)
        tx.commit().map_err(|e| db_err("commit", e))?;
        let mut target = doomed;
        if dir.exists() {
            if let Err(e) = std::fs::rename(&dir, &target) {
                tracing::warn!(key, dir = %dir.display(), error = %e, "snapshot removed; could not rename its directory");
                target = dir;
            }
        }
        if target.exists() {
            if let Err(e) = self.backend.destroy(&target) {
                tracing::warn!(key, id = rec.id, error = %e, "snapshot removed; its directory is left for cleanup");
            }
        }
        Ok(())
    }

    fn list(&self, filter: &Filter) -> Result<Vec<Info>> {
        Ok(self
            .records()?
            .into_iter()
            .map(|(k, r)| r.info(&k))
            .filter(|i| i.matches(filter))
            .collect())
    }

    fn cleanup(&self) -> Result<()> {
        let _gate = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let known: HashSet<String> = self
            .records()?
            .into_iter()
            .map(|(_, r)| r.id.to_string())
            .collect();
        let dir = self.root.join("snapshots");
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| Error::from(e).context(format!("cleanup: read {}", dir.display())))?;
        for e in entries {
            let e =
                e.map_err(|e| Error::from(e).context(format!("cleanup: read {}", dir.display())))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if known.contains(&name) {
                continue;
            }
            self.backend
                .destroy(&e.path())
                .map_err(|e| e.context("cleanup"))?;
        }
        Ok(())
    }
}
