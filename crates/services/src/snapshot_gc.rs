//! Snapshots in the GC graph. Each snapshotter keeps its own metadata, so a
//! collection lists them when it starts (nodes `snapshot <ns> <snapshotter>/<key>`,
//! edges to the parent and to what their labels reference), records the
//! unreferenced ones during the sweep, and removes them afterwards, children
//! first, while the GC lock is held.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;
use stevedore_metadata::gc::{is_root, label_refs, GcSource, Node, SNAPSHOT};
use stevedore_metadata::Db;
use stevedore_snapshots::Namespaced;
use stevedore_types::filters::Filter;
use stevedore_types::Result;

/// A snapshot's parent name and labels.
type Edges = (String, HashMap<String, String>);

pub struct SnapshotSource {
    snapshotters: BTreeMap<String, Namespaced>,
    /// The snapshots seen when this collection started: node -> (parent, labels).
    seen: Mutex<HashMap<Node, Edges>>,
    /// Unreferenced snapshots to remove after the sweep.
    doomed: Mutex<Vec<Node>>,
}

impl SnapshotSource {
    pub fn new(snapshotters: BTreeMap<String, Namespaced>) -> Self {
        SnapshotSource {
            snapshotters,
            seen: Mutex::new(HashMap::new()),
            doomed: Mutex::new(Vec::new()),
        }
    }
}

fn split(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

impl GcSource for SnapshotSource {
    fn kinds(&self) -> &[&'static str] {
        &[SNAPSHOT]
    }

    fn namespace_objects(&self, ns: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (name, s) in &self.snapshotters {
            if !s.list(ns, &Filter::default())?.is_empty() {
                out.push(format!("snapshots on {name:?} snapshotter"));
            }
        }
        Ok(out)
    }

    fn roots(
        &self,
        _tx: &redb::WriteTransaction,
        _now: SystemTime,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.clear();
        for (name, s) in &self.snapshotters {
            for (ns, info) in s.all()? {
                let node = Node::new(SNAPSHOT, &ns, format!("{name}/{}", info.name));
                if is_root(&info.labels) {
                    emit(node.clone());
                }
                seen.insert(node, (info.parent.clone(), info.labels.clone()));
            }
        }
        Ok(())
    }

    fn references(
        &self,
        _tx: &redb::WriteTransaction,
        node: &Node,
        emit: &mut dyn FnMut(Node),
    ) -> Result<()> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((parent, labels)) = seen.get(node) {
            let (snapshotter, _) = split(&node.key);
            if !parent.is_empty() {
                emit(Node::new(
                    SNAPSHOT,
                    &node.namespace,
                    format!("{snapshotter}/{parent}"),
                ));
            }
            label_refs(&node.namespace, labels, emit);
        }
        Ok(())
    }

    fn all(&self, _tx: &redb::WriteTransaction, emit: &mut dyn FnMut(Node)) -> Result<()> {
        for n in self.seen.lock().unwrap_or_else(|p| p.into_inner()).keys() {
            emit(n.clone());
        }
        Ok(())
    }

    fn remove(&self, _tx: &redb::WriteTransaction, node: &Node) -> Result<()> {
        self.doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(node.clone());
        Ok(())
    }

    fn cleanup(&self, _db: &Db) -> Result<stevedore_metadata::gc::Cleaned> {
        let mut doomed =
            std::mem::take(&mut *self.doomed.lock().unwrap_or_else(|p| p.into_inner()));
        let mut removed = 0;
        // children before parents: retry while progress is made
        loop {
            let before = doomed.len();
            doomed.retain(|n| {
                let (snapshotter, key) = split(&n.key);
                let Some(s) = self.snapshotters.get(snapshotter) else {
                    return false;
                };
                match s.remove(&n.namespace, key) {
                    Ok(()) => {
                        removed += 1;
                        false
                    }
                    Err(e) if e.kind == stevedore_types::ErrorKind::NotFound => false,
                    Err(_) => true,
                }
            });
            if doomed.is_empty() || doomed.len() == before {
                break;
            }
        }
        for n in &doomed {
            tracing::warn!(namespace = %n.namespace, snapshot = %n.key, "gc: could not remove snapshot");
        }
        for s in self.snapshotters.values() {
            if let Err(e) = s.cleanup() {
                tracing::warn!(error = %e, "gc: snapshotter cleanup failed");
            }
        }
        Ok(stevedore_metadata::gc::Cleaned {
            objects: removed,
            bytes: 0,
        })
    }
}
