//! Namespaces: names with labels. Every other object lives in one.

use crate::{db_err, ns_has_any, Db, NAMESPACED_TABLES};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use stevedore_types::{labels, Error, Result};

pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");

/// A namespace record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    pub labels: HashMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
struct Stored {
    labels: HashMap<String, String>,
}

/// containerd's identifier rule for namespaces (and other object ids).
pub fn validate_name(name: &str) -> Result<()> {
    stevedore_types::identifiers::validate(name)
}

fn decode(name: &str, bytes: &[u8]) -> Result<Namespace> {
    let s: Stored = serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("namespace {name:?}: corrupt record: {e}")))?;
    Ok(Namespace {
        name: name.to_string(),
        labels: s.labels,
    })
}

fn encode(labels: &HashMap<String, String>) -> Vec<u8> {
    serde_json::to_vec(&Stored {
        labels: labels.clone(),
    })
    .expect("labels serialise")
}

/// Create the namespace inside a transaction if it does not exist yet
/// (objects created in a new namespace bring it into being, as in containerd).
pub fn ensure(tx: &redb::WriteTransaction, name: &str) -> Result<bool> {
    validate_name(name).map_err(|e| e.context(format!("namespace {name:?}")))?;
    let mut t = tx
        .open_table(NAMESPACES)
        .map_err(|e| db_err("open namespaces", e))?;
    if t.get(name)
        .map_err(|e| db_err("get namespace", e))?
        .is_some()
    {
        return Ok(false);
    }
    t.insert(name, encode(&HashMap::new()).as_slice())
        .map_err(|e| db_err("insert namespace", e))?;
    Ok(true)
}

impl Db {
    pub fn create_namespace(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<Namespace> {
        validate_name(name).map_err(|e| e.context(format!("create namespace {name:?}")))?;
        labels::validate_all(labels).map_err(|e| e.context("namespace.Labels"))?;
        let labels: HashMap<String, String> = labels
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.update(|tx| {
            let mut t = tx
                .open_table(NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            if t.get(name)
                .map_err(|e| db_err("get namespace", e))?
                .is_some()
            {
                return Err(Error::already_exists(format!(
                    "namespace {name:?}: already exists"
                )));
            }
            t.insert(name, encode(&labels).as_slice())
                .map_err(|e| db_err("insert namespace", e))?;
            Ok(Namespace {
                name: name.to_string(),
                labels: labels.clone(),
            })
        })
    }

    pub fn get_namespace(&self, name: &str) -> Result<Namespace> {
        self.view(|tx| {
            let t = tx
                .open_table(NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            let v = t
                .get(name)
                .map_err(|e| db_err("get namespace", e))?
                .ok_or_else(|| Error::not_found(format!("namespace {name:?}: not found")))?;
            decode(name, v.value())
        })
    }

    pub fn list_namespaces(&self) -> Result<Vec<Namespace>> {
        self.view(|tx| {
            let t = tx
                .open_table(NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            let mut out = Vec::new();
            for r in t.iter().map_err(|e| db_err("list namespaces", e))? {
                let (k, v) = r.map_err(|e| db_err("list namespaces", e))?;
                out.push(decode(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// Update a namespace's labels. `paths` follow containerd's field masks:
    /// empty or `labels` replaces all labels; `labels.<key>` sets or (with an
    /// empty value) removes one key.
    pub fn update_namespace(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
        paths: &[String],
    ) -> Result<Namespace> {
        labels::validate_all(labels).map_err(|e| e.context("namespace.Labels"))?;
        self.update(|tx| {
            let mut t = tx
                .open_table(NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            let existing = t
                .get(name)
                .map_err(|e| db_err("get namespace", e))?
                .map(|v| decode(name, v.value()))
                .transpose()?;
            let mut ns = match existing {
                Some(ns) => ns,
                // containerd's store creates the namespace when it sets a
                // label on it (clients label their namespace at start-up)
                None if !paths.is_empty() || !labels.is_empty() => {
                    validate_name(name)
                        .map_err(|e| e.context(format!("update namespace {name:?}")))?;
                    Namespace {
                        name: name.to_string(),
                        labels: HashMap::new(),
                    }
                }
                None => {
                    return Err(Error::not_found(format!("namespace {name:?}: not found")));
                }
            };
            if paths.is_empty() {
                ns.labels = labels.clone();
            }
            for p in paths {
                if p == "labels" {
                    ns.labels = labels.clone();
                } else if let Some(key) = p.strip_prefix("labels.") {
                    match labels.get(key) {
                        Some(v) if !v.is_empty() => {
                            ns.labels.insert(key.to_string(), v.clone());
                        }
                        _ => {
                            ns.labels.remove(key);
                        }
                    }
                } else {
                    return Err(Error::invalid(format!(
                        "cannot update {p:?} field on namespace {name:?}"
                    )));
                }
            }
            ns.labels.retain(|_, v| !v.is_empty());
            t.insert(name, encode(&ns.labels).as_slice())
                .map_err(|e| db_err("update namespace", e))?;
            Ok(ns)
        })
    }

    /// Create a namespace if it does not exist (objects kept outside this
    /// database, such as snapshots, bring their namespace into being too).
    pub fn ensure_namespace(&self, name: &str) -> Result<bool> {
        // the common case (it exists) costs a read, not a durable commit
        let exists = self.view(|tx| {
            let t = tx
                .open_table(NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            Ok(t.get(name)
                .map_err(|e| db_err("get namespace", e))?
                .is_some())
        })?;
        if exists {
            return Ok(false);
        }
        self.update(|tx| ensure(tx, name))
    }

    /// Delete an empty namespace: no records in the namespaced tables and
    /// nothing that a GC source (snapshotters) still holds in it.
    pub fn delete_namespace(&self, name: &str) -> Result<()> {
        let sources = self
            .gc_sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.update(|tx| {
            let mut busy: Vec<String> = Vec::new();
            for (table, what) in NAMESPACED_TABLES {
                let t = tx.open_table(*table).map_err(|e| db_err("open table", e))?;
                if ns_has_any(&t, name)? {
                    busy.push(what.to_string());
                }
            }
            // inside the write transaction: a collection (which removes
            // snapshots under the same lock) cannot interleave
            for source in &sources {
                busy.extend(source.namespace_objects(name)?);
            }
            if !busy.is_empty() {
                return Err(Error::precondition(format!(
                    "namespace {name:?} must be empty, but it still has {}",
                    busy.join(", ")
                )));
            }
            let mut t = tx
                .open_table(NAMESPACES)
                .map_err(|e| db_err("open namespaces", e))?;
            t.remove(name)
                .map_err(|e| db_err("delete namespace", e))?
                .ok_or_else(|| Error::not_found(format!("namespace {name:?}: not found")))?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_types::ErrorKind;

    fn db() -> (tempfile::TempDir, Db) {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("meta.db")).unwrap();
        (d, db)
    }

    fn l(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn namespace_lifecycle() {
        let (_d, db) = db();
        db.create_namespace("foo", &l(&[("a", "1")])).unwrap();
        assert_eq!(
            db.create_namespace("foo", &HashMap::new())
                .unwrap_err()
                .kind,
            ErrorKind::AlreadyExists
        );
        assert_eq!(db.get_namespace("foo").unwrap().labels, l(&[("a", "1")]));
        db.update_namespace("foo", &l(&[("b", "2")]), &["labels.b".into()])
            .unwrap();
        db.update_namespace("foo", &HashMap::new(), &["labels.a".into()])
            .unwrap();
        assert_eq!(db.get_namespace("foo").unwrap().labels, l(&[("b", "2")]));
        assert_eq!(
            db.update_namespace("foo", &HashMap::new(), &["name".into()])
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        assert_eq!(db.list_namespaces().unwrap().len(), 1);
        db.delete_namespace("foo").unwrap();
        assert_eq!(
            db.get_namespace("foo").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            db.delete_namespace("foo").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn setting_a_label_creates_a_missing_namespace() {
        let (_d, db) = db();
        let key = "containerd.io/defaults/snapshotter";
        let ns = db
            .update_namespace(
                "moby",
                &l(&[(key, "overlayfs")]),
                &[format!("labels.{key}")],
            )
            .unwrap();
        assert_eq!(ns.labels, l(&[(key, "overlayfs")]));
        assert_eq!(db.get_namespace("moby").unwrap().labels, ns.labels);
        // without a mask the labels replace the (empty) set
        db.update_namespace("new", &l(&[("k", "v")]), &[]).unwrap();
        assert_eq!(db.get_namespace("new").unwrap().labels, l(&[("k", "v")]));
        // nothing to set: still NotFound, nothing created
        assert_eq!(
            db.update_namespace("none", &HashMap::new(), &[])
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        // a bad name or field is refused and creates nothing
        for (name, path) in [("../x", "labels.k"), ("fresh", "name")] {
            assert_eq!(
                db.update_namespace(name, &l(&[("k", "v")]), &[path.to_string()])
                    .unwrap_err()
                    .kind,
                ErrorKind::InvalidArgument
            );
            assert_eq!(
                db.get_namespace(name).unwrap_err().kind,
                ErrorKind::NotFound
            );
        }
    }

    #[test]
    fn rejects_bad_names() {
        let (_d, db) = db();
        for bad in ["", "a b", "-a", "a..b", "a/b", &"x".repeat(77)] {
            assert_eq!(
                db.create_namespace(bad, &HashMap::new()).unwrap_err().kind,
                ErrorKind::InvalidArgument,
                "{bad}"
            );
        }
        db.create_namespace("k8s.io", &HashMap::new()).unwrap();
        db.create_namespace("a_b-c", &HashMap::new()).unwrap();
    }
}
