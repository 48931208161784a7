//! The metadata database of stevedored (`io.containerd.metadata.v1 bolt`).
//!
//! # On-disk layout
//! One redb file, `<root>/io.containerd.metadata.v1.bolt/meta.db`. redb is ACID
//! with one writer and concurrent readers; a transaction is durable once its
//! commit returns (fsync), and a crash before that leaves the previous state.
//! So every multi-record change in stevedore happens in one transaction.
//!
//! Tables:
//! - `meta`: `&str -> &[u8]`, holds `schema_version` (checked on open).
//! - `namespaces`: `name -> JSON {labels}`.
//! - `containers`: `(namespace, id) -> JSON container record` (`containers.rs`).
//! - `sandboxes`: `(namespace, id) -> JSON sandbox record` (`sandboxes.rs`,
//!   containerd 2.x's sandbox store). Both record tables are read and written
//!   through `records.rs`, which the two kinds share.
//! - every namespaced object table is keyed by `(namespace, id)` so that a
//!   namespace's objects are one range scan, and emptiness checks are cheap.
//! - content (`content_blobs`, `content_ingests`): see [`content`].
//! - leases (`leases`, `lease_resources`): see [`leases`].
//!
//! Garbage collection over all of it: see [`gc`].
//!
//! All calls here block (redb does file I/O); async callers use a blocking pool.

pub mod containers;
pub mod content;
pub mod gc;
mod gc_containers;
pub mod images;
pub mod leases;
pub mod namespaces;
mod records;
pub mod sandboxes;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use stevedore_content::local::LocalStore;
use stevedore_types::{Error, Result};

/// Schema version this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A namespaced object table: `(namespace, id) -> value`.
pub type NsTable = TableDefinition<'static, (&'static str, &'static str), &'static [u8]>;

/// Namespaced tables, with the word used when a namespace is not empty.
/// Later components add theirs here so namespace deletion sees them.
pub const NAMESPACED_TABLES: &[(NsTable, &str)] = &[
    (images::IMAGES, "images"),
    (content::BLOBS, "blobs"),
    (leases::LEASES, "leases"),
    (containers::CONTAINERS, "containers"),
    (sandboxes::SANDBOXES, "sandboxes"),
];

/// What a change did, for the GC scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MutationKind {
    /// Something was added or changed.
    Change,
    /// Something was deleted: garbage may exist now.
    Delete,
}

type MutationHook = Box<dyn Fn(MutationKind) + Send + Sync>;

/// The open metadata database.
pub struct Db {
    db: Database,
    /// The local content store and its options, attached at plugin init.
    content: OnceLock<(LocalStore, content::ContentOptions)>,
    /// Held shared by content writers while they open and commit, exclusively by GC.
    gc_lock: RwLock<()>,
    gc_sources: RwLock<Vec<Arc<dyn gc::GcSource>>>,
    hooks: Mutex<Vec<MutationHook>>,
}

/// Apply one `<prefix><key>` field path of an update (`labels.<k>`,
/// `extensions.<k>`): copy `from[key]` into `into`, or remove the key when
/// `from` lacks it. False when `path` does not start with `prefix`.
pub(crate) fn apply_key_path<V: Clone>(
    path: &str,
    prefix: &str,
    from: &std::collections::HashMap<String, V>,
    into: &mut std::collections::HashMap<String, V>,
) -> bool {
    let Some(k) = path.strip_prefix(prefix) else {
        return false;
    };
    match from.get(k) {
        Some(v) => into.insert(k.into(), v.clone()),
        None => into.remove(k),
    };
    true
}

pub(crate) fn db_err(op: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("metadata database: {op}: {e}"))
}

impl Db {
    /// Open (or create) the database at `path` and check its schema version.
    pub fn open(path: &Path) -> Result<Db> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::from(e).context(format!("create {}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| {
            Error::unavailable(format!("open metadata database {}: {e}", path.display()))
        })?;
        let this = Db {
            db,
            content: OnceLock::new(),
            gc_lock: RwLock::new(()),
            gc_sources: RwLock::new(vec![
                Arc::new(gc::ContentSource) as Arc<dyn gc::GcSource>,
                Arc::new(gc::LeaseSource),
                Arc::new(images::ImageSource),
                Arc::new(gc_containers::ContainerSource),
                Arc::new(sandboxes::SandboxSource),
            ]),
            hooks: Mutex::new(Vec::new()),
        };
        this.check_schema(path)?;
        Ok(this)
    }

    fn check_schema(&self, path: &Path) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| db_err("open meta", e))?;
            let found = t
                .get("schema_version")
                .map_err(|e| db_err("read schema version", e))?
                .map(|v| v.value().to_vec());
            match found {
                None => {
                    t.insert("schema_version", SCHEMA_VERSION.to_le_bytes().as_slice())
                        .map_err(|e| db_err("write schema version", e))?;
                }
                Some(v) => {
                    let v: [u8; 4] = v.as_slice().try_into().map_err(|_| {
                        Error::internal(format!(
                            "metadata database {}: corrupt schema version record",
                            path.display()
                        ))
                    })?;
                    let found = u32::from_le_bytes(v);
                    if found != SCHEMA_VERSION {
                        return Err(Error::precondition(format!(
                            "metadata database {} has schema version {found}, this stevedored reads version {SCHEMA_VERSION}",
                            path.display()
                        )));
                    }
                }
            }
            tx.open_table(namespaces::NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            for (t, _) in NAMESPACED_TABLES {
                tx.open_table(*t).map_err(|e| db_err("open table", e))?;
            }
            tx.open_table(content::INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            tx.open_table(leases::RESOURCES)
                .map_err(|e| db_err("open lease resources", e))?;
        }
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(())
    }

    /// The underlying database, for stores built on top of this crate.
    pub fn raw(&self) -> &Database {
        &self.db
    }

    /// Run `f` in a write transaction; commits when it returns Ok.
    pub fn update<T>(&self, f: impl FnOnce(&redb::WriteTransaction) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        let out = f(&tx)?;
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(out)
    }

    /// Run `f` in a read transaction.
    pub fn view<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> Result<T>) -> Result<T> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin read", e))?;
        f(&tx)
    }
}

impl Db {
    /// Call `hook` after every mutation (the GC scheduler counts them).
    pub fn on_mutation(&self, hook: impl Fn(MutationKind) + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(hook));
    }

    /// Tell the hooks (the GC scheduler) about a mutation; stores built on
    /// this database call it after deleting (`Delete`) or changing records.
    pub fn notify(&self, kind: MutationKind) {
        for h in self.hooks.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            h(kind);
        }
    }
}

/// Every `(id, value)` of namespace `ns` in a namespaced table.
pub(crate) fn ns_scan<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    t: &T,
    ns: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    for r in t.range((ns, "")..).map_err(|e| db_err("range scan", e))? {
        let (k, v) = r.map_err(|e| db_err("range scan", e))?;
        let (kns, id) = k.value();
        if kns != ns {
            break;
        }
        out.push((id.to_string(), v.value().to_vec()));
    }
    Ok(out)
}

/// Call `f` with `(namespace, id, value)` of every entry of a namespaced
/// table, in every namespace; `what` names the table in errors (`scan <what>`).
pub(crate) fn scan_all<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    t: &T,
    what: &str,
    mut f: impl FnMut(&str, &str, &[u8]) -> Result<()>,
) -> Result<()> {
    let op = format!("scan {what}");
    for r in t.iter().map_err(|e| db_err(&op, e))? {
        let (k, v) = r.map_err(|e| db_err(&op, e))?;
        let (ns, id) = k.value();
        f(ns, id, v.value())?;
    }
    Ok(())
}

/// True when a namespaced table holds any key in `ns`.
pub(crate) fn ns_has_any<T: ReadableTable<(&'static str, &'static str), &'static [u8]>>(
    t: &T,
    ns: &str,
) -> Result<bool> {
    let mut it = t.range((ns, "")..).map_err(|e| db_err("range scan", e))?;
    match it.next() {
        None => Ok(false),
        Some(r) => {
            let (k, _) = r.map_err(|e| db_err("range scan", e))?;
            Ok(k.value().0 == ns)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_and_checks_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meta.db");
        drop(Db::open(&p).unwrap());
        let db = Db::open(&p).unwrap();
        db.update(|tx| {
            let mut t = tx.open_table(META).map_err(|e| db_err("t", e))?;
            t.insert("schema_version", 99u32.to_le_bytes().as_slice())
                .map_err(|e| db_err("t", e))?;
            Ok(())
        })
        .unwrap();
        drop(db);
        let e = Db::open(&p).err().unwrap();
        assert!(e.message.contains("schema version 99"), "{e}");
    }
}
