//! Garbage collection (containerd's `metadata/gc.go` + `gc/gc.go`): mark and
//! sweep over the reference graph of the metadata database.
//!
//! # The graph
//! Nodes are `(kind, namespace, key)`. Roots: leases that have not expired
//! (`containerd.io/gc.expire`) and everything they hold (only that, without
//! following references, for leases labelled `containerd.io/gc.flat`), objects labelled
//! `containerd.io/gc.root`, unexpired unleased ingests, and whatever other
//! sources declare (images, containers, ...). Edges: the labels
//! `containerd.io/gc.ref.content[.<name>|/<name>]` -> content and
//! `containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]` -> snapshot
//! `<snapshotter>/<value>` on any object, plus source-specific edges.
//!
//! # Extension points
//! A component joins the graph by registering a [`GcSource`] with
//! [`Db::register_gc_source`]: it emits its roots, the references of its own
//! nodes, all its nodes (sweep candidates), removes unmarked ones inside the
//! sweep transaction, and reconciles its backend (files, snapshots) in
//! [`GcSource::cleanup`] while the GC lock is held. Images and containers are
//! roots that reference content/snapshots ([`label_refs`] parses the labels);
//! snapshots are sweepable nodes (kind [`SNAPSHOT`], key
//! `<snapshotter>/<key>`) with parent edges.
//!
//! Marking and sweeping run in one redb write transaction, so no metadata
//! change interleaves; writers hold the GC lock shared while they open and
//! commit content, so backend cleanup never races a commit.

use crate::content::{self, backend_ref, decode_ingest, from_nanos};
use crate::leases::{self, is_expired};
use crate::{db_err, scan_all, Db};
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use stevedore_content::Store;
use stevedore_types::filters::Filter;
use stevedore_types::{Digest, ErrorKind, Result};

pub const CONTENT: &str = "content";
pub const INGEST: &str = "ingest";
pub const LEASE: &str = "lease";
pub const SNAPSHOT: &str = "snapshot";
/// Content held by a `containerd.io/gc.flat` lease: kept, references not followed.
pub const CONTENT_FLAT: &str = "content.flat";
/// A snapshot held by a flat lease.
pub const SNAPSHOT_FLAT: &str = "snapshot.flat";

pub const LABEL_GC_FLAT: &str = "containerd.io/gc.flat";

pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// A node of the reference graph.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub kind: &'static str,
    pub namespace: String,
    pub key: String,
}

impl Node {
    pub fn new(kind: &'static str, ns: &str, key: impl Into<String>) -> Node {
        Node {
            kind,
            namespace: ns.to_string(),
            key: key.into(),
        }
    }
}

/// Emit the nodes an object's labels reference (gc.ref.content*, gc.ref.snapshot.*).
pub fn label_refs(ns: &str, labels: &HashMap<String, String>, emit: &mut dyn FnMut(Node)) {
    for (k, v) in labels {
        if let Some(rest) = k.strip_prefix(LABEL_GC_REF_CONTENT) {
            if rest.is_empty() || rest.starts_with('.') || rest.starts_with('/') {
                emit(Node::new(CONTENT, ns, v.clone()));
            }
        } else if let Some(rest) = k.strip_prefix(LABEL_GC_REF_SNAPSHOT) {
            let snapshotter = rest.split('/').next().unwrap_or(rest);
            if !snapshotter.is_empty() {
                emit(Node::new(SNAPSHOT, ns, format!("{snapshotter}/{v}")));
            }
        }
    }
}

/// True when labels make an object a root.
pub fn is_root(labels: &HashMap<String, String>) -> bool {
    labels.contains_key(LABEL_GC_ROOT)
}

/// A participant in garbage collection. A source that only emits roots
/// (images, containers, sandboxes) owns no node kinds and implements
/// `roots` alone; the defaults of the rest are for it.
pub trait GcSource: Send + Sync {
    /// The node kinds this source owns (it answers `references`, `all`, `remove` for them).
    fn kinds(&self) -> &[&'static str] {
        &[]
    }
    /// Emit roots.
    fn roots(
        &self,
        tx: &redb::WriteTransaction,
        now: SystemTime,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()>;
    /// Emit what `node` (of one of this source's kinds) references.
    fn references(
        &self,
        _tx: &redb::WriteTransaction,
        _node: &Node,
        _emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        Ok(())
    }
    /// Emit every node of this source's kinds.
    fn all(&self, _tx: &redb::WriteTransaction, _emit: &mut dyn FnMut(Node)) -> Result<()> {
        Ok(())
    }
    /// Remove an unreferenced node's record, inside the sweep transaction.
    fn remove(&self, _tx: &redb::WriteTransaction, _node: &Node) -> Result<()> {
        Ok(())
    }
    /// Reconcile backend storage with the records, after the sweep committed
    /// (GC lock held). Returns what it removed.
    fn cleanup(&self, _db: &Db) -> Result<Cleaned> {
        Ok(Cleaned::default())
    }
    /// What this source still holds in namespace `ns` outside the metadata
    /// tables (e.g. `snapshots on "overlayfs" snapshotter`), as containerd
    /// names it; deleting the namespace is refused while anything is listed.
    fn namespace_objects(&self, _ns: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
}

/// What a source's backend cleanup removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// Backend objects (blob files, ingest directories, snapshots) removed.
    pub objects: usize,
    /// Bytes those objects held, where the source knows them (blob sizes);
    /// 0 where it does not.
    pub bytes: u64,
}

/// What one collection did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcStats {
    /// Records removed, per node kind.
    pub removed: BTreeMap<&'static str, usize>,
    /// Backend objects (blob files, ingest directories, ...) removed.
    pub backend_removed: usize,
    /// Bytes the removed backend objects held (blobs and ingests).
    pub reclaimed_bytes: u64,
    pub duration: Duration,
}

impl Db {
    /// Add a participant to garbage collection.
    pub fn register_gc_source(&self, source: Arc<dyn GcSource>) {
        self.gc_sources
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(source);
    }

    /// Run a full mark and sweep now.
    pub fn garbage_collect(&self) -> Result<GcStats> {
        let start = Instant::now();
        let sources: Vec<Arc<dyn GcSource>> = self
            .gc_sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _lock = self.gc_lock.write().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let owner = |kind: &str| sources.iter().find(|s| s.kinds().contains(&kind)).cloned();
        let mut stats = self.update(|tx| {
            // mark
            let mut marked: HashSet<Node> = HashSet::new();
            let mut work: Vec<Node> = Vec::new();
            for s in &sources {
                s.roots(tx, now, &mut |n| work.push(n))?;
            }
            while let Some(n) = work.pop() {
                // a flat root is marked without following its references
                let (n, follow) = match n.kind {
                    CONTENT_FLAT => (Node { kind: CONTENT, ..n }, false),
                    SNAPSHOT_FLAT => (Node { kind: SNAPSHOT, ..n }, false),
                    _ => (n, true),
                };
                if marked.contains(&n) {
                    continue;
                }
                if let (true, Some(s)) = (follow, owner(n.kind)) {
                    s.references(tx, &n, &mut |m| {
                        if !marked.contains(&m) {
                            work.push(m)
                        }
                    })?;
                }
                marked.insert(n);
            }
            // sweep
            let mut stats = GcStats::default();
            for s in &sources {
                let mut all = Vec::new();
                s.all(tx, &mut |n| all.push(n))?;
                for n in all.into_iter().filter(|n| !marked.contains(n)) {
                    tracing::debug!(kind = n.kind, namespace = %n.namespace, key = %n.key, "gc: removing");
                    s.remove(tx, &n)?;
                    *stats.removed.entry(n.kind).or_default() += 1;
                }
            }
            Ok(stats)
        })?;
        for s in &sources {
            let c = s.cleanup(self)?;
            stats.backend_removed += c.objects;
            stats.reclaimed_bytes += c.bytes;
        }
        stats.duration = start.elapsed();
        tracing::info!(removed = ?stats.removed, backend_removed = stats.backend_removed, reclaimed_bytes = stats.reclaimed_bytes, duration = ?stats.duration, "garbage collected");
        Ok(stats)
    }
}

/// Leases: unexpired leases are roots, and so is everything they hold.
pub(crate) struct LeaseSource;

fn resource_node(ns: &str, r: &leases::Resource, flat: bool) -> Option<Node> {
    let (content, snapshot) = if flat {
        (CONTENT_FLAT, SNAPSHOT_FLAT)
    } else {
        (CONTENT, SNAPSHOT)
    };
    match r.kind.as_str() {
        "content" => Some(Node::new(content, ns, r.id.clone())),
        "ingests" => Some(Node::new(INGEST, ns, r.id.clone())),
        k => k
            .strip_prefix("snapshots/")
            .map(|s| Node::new(snapshot, ns, format!("{s}/{}", r.id))),
    }
}

fn all_leases(tx: &redb::WriteTransaction) -> Result<Vec<(String, leases::Lease)>> {
    let t = tx
        .open_table(leases::LEASES)
        .map_err(|e| db_err("open leases", e))?;
    let mut out = Vec::new();
    scan_all(&t, "leases", |ns, id, v| {
        let rec: serde_json::Value = serde_json::from_slice(v).unwrap_or_default();
        let labels = rec
            .get("labels")
            .and_then(|l| serde_json::from_value::<HashMap<String, String>>(l.clone()).ok())
            .unwrap_or_default();
        out.push((
            ns.to_string(),
            leases::Lease {
                id: id.to_string(),
                created_at: SystemTime::UNIX_EPOCH,
                labels,
            },
        ));
        Ok(())
    })?;
    Ok(out)
}

impl GcSource for LeaseSource {
    fn kinds(&self) -> &[&'static str] {
        &[LEASE]
    }
    fn roots(
        &self,
        tx: &redb::WriteTransaction,
        now: SystemTime,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let rt = tx
            .open_table(leases::RESOURCES)
            .map_err(|e| db_err("open lease resources", e))?;
        for (ns, l) in all_leases(tx)? {
            if is_expired(&l, now) {
                continue;
            }
            emit(Node::new(LEASE, &ns, l.id.clone()));
            let flat = l.labels.contains_key(LABEL_GC_FLAT);
            for r in leases::resources_of(&rt, &ns, &l.id)? {
                if let Some(n) = resource_node(&ns, &r, flat) {
                    emit(n);
                }
            }
        }
        Ok(())
    }
    fn all(&self, tx: &redb::WriteTransaction, emit: &mut dyn FnMut(Node)) -> Result<()> {
        for (ns, l) in all_leases(tx)? {
            emit(Node::new(LEASE, &ns, l.id));
        }
        Ok(())
    }
    fn remove(&self, tx: &redb::WriteTransaction, node: &Node) -> Result<()> {
        leases::delete_tx(tx, &node.namespace, &node.key).map(|_| ())
    }
}

/// Content blobs and ingests of every namespace, and the local store below.
pub(crate) struct ContentSource;

fn blob_labels(v: &[u8]) -> HashMap<String, String> {
    serde_json::from_slice::<serde_json::Value>(v)
        .ok()
        .and_then(|j| j.get("labels").cloned())
        .and_then(|l| serde_json::from_value(l).ok())
        .unwrap_or_default()
}

impl GcSource for ContentSource {
    fn kinds(&self) -> &[&'static str] {
        &[CONTENT, INGEST]
    }
    fn roots(
        &self,
        tx: &redb::WriteTransaction,
        now: SystemTime,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let t = tx
            .open_table(content::BLOBS)
            .map_err(|e| db_err("open blobs", e))?;
        scan_all(&t, "blobs", |ns, d, v| {
            if is_root(&blob_labels(v)) {
                emit(Node::new(CONTENT, ns, d));
            }
            Ok(())
        })?;
        let t = tx
            .open_table(content::INGESTS)
            .map_err(|e| db_err("open ingests", e))?;
        scan_all(&t, "ingests", |ns, reference, v| {
            let rec = decode_ingest(reference, v)?;
            // leased ingests carry no expiry: their lease holds them
            if rec.expires.is_some_and(|e| from_nanos(e) > now) {
                emit(Node::new(INGEST, ns, reference));
            }
            Ok(())
        })
    }
    fn references(
        &self,
        tx: &redb::WriteTransaction,
        node: &Node,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        if node.kind != CONTENT {
            return Ok(());
        }
        let t = tx
            .open_table(content::BLOBS)
            .map_err(|e| db_err("open blobs", e))?;
        if let Some(v) = t
            .get((node.namespace.as_str(), node.key.as_str()))
            .map_err(|e| db_err("get blob", e))?
        {
            label_refs(&node.namespace, &blob_labels(v.value()), emit);
        }
        Ok(())
    }
    fn all(&self, tx: &redb::WriteTransaction, emit: &mut dyn FnMut(Node)) -> Result<()> {
        for (table, kind) in [(content::BLOBS, CONTENT), (content::INGESTS, INGEST)] {
            let t = tx.open_table(table).map_err(|e| db_err("open table", e))?;
            scan_all(&t, kind, |ns, key, _| {
                emit(Node::new(kind, ns, key));
                Ok(())
            })?;
        }
        Ok(())
    }
    fn remove(&self, tx: &redb::WriteTransaction, node: &Node) -> Result<()> {
        let table = if node.kind == CONTENT {
            content::BLOBS
        } else {
            content::INGESTS
        };
        let mut t = tx.open_table(table).map_err(|e| db_err("open table", e))?;
        t.remove((node.namespace.as_str(), node.key.as_str()))
            .map_err(|e| db_err("gc remove", e))?;
        Ok(())
    }
    /// Delete blob files no namespace records, and local ingests no
    /// namespace's ingest record names.
    fn cleanup(&self, db: &Db) -> Result<Cleaned> {
        let Ok((store, _)) = db.backend() else {
            return Ok(Cleaned::default());
        };
        let (digests, refs) = db.view(|tx| {
            let mut digests: HashSet<String> = HashSet::new();
            let t = tx
                .open_table(content::BLOBS)
                .map_err(|e| db_err("open blobs", e))?;
            scan_all(&t, "blobs", |_, d, _| {
                digests.insert(d.to_string());
                Ok(())
            })?;
            let mut refs: HashSet<String> = HashSet::new();
            let t = tx
                .open_table(content::INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            scan_all(&t, "ingests", |ns, reference, v| {
                refs.insert(backend_ref(ns, reference));
                // a shared ingest (the blob was on disk when it opened, with
                // no record in its namespace, e.g. a crash's leftover) commits
                // that file: it keeps it until it commits or goes itself
                if let Ok(rec) = content::decode_ingest(reference, v) {
                    if let Some(d) = rec.expected() {
                        digests.insert(d.to_string());
                    }
                }
                Ok(())
            })?;
            Ok((digests, refs))
        })?;
        let mut removed = 0;
        let mut bytes = 0u64;
        for info in store.list(&Filter::default())? {
            if !digests.contains(&info.digest.to_string()) {
                match store.delete(&info.digest) {
                    Ok(()) => {
                        removed += 1;
                        bytes += info.size.max(0) as u64;
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for st in store.list_statuses(&Filter::default())? {
            if !refs.contains(&st.reference) {
                match store.abort(&st.reference) {
                    Ok(()) => {
                        removed += 1;
                        bytes += st.offset.max(0) as u64;
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Cleaned {
            objects: removed,
            bytes,
        })
    }
}

/// Parse helper for callers that hold digests as strings.
pub fn content_node(ns: &str, d: &Digest) -> Node {
    Node::new(CONTENT, ns, d.to_string())
}
