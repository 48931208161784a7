//! Sandbox records (containerd 2.x's sandbox store, `core/metadata/sandbox.go`):
//! what a sandboxer needs to bring a sandbox back (runtime, spec,
//! extensions), labelled. Table `sandboxes`: `(namespace, id) -> JSON record`.
//!
//! Validation and update field paths follow containerd: the id must pass the
//! identifier rule; `sandboxer` is free-form (may be empty) and set only at
//! creation; Update takes `labels`, `labels.<k>`, `extensions`,
//! `extensions.<k>`, `spec`, `runtime`, and without paths replaces the first
//! four (the runtime name must then not change). In the GC graph every
//! sandbox is a root that holds what its labels reference
//! (`containerd.io/gc.ref.*`), as in containerd's `gc.go`.

use crate::containers::AnyBytes;
use crate::records::{self, Record};
use crate::{Db, MutationKind, NsTable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;
use stevedore_types::filters::label_field;
use stevedore_types::{identifiers, labels, Error, Result};

pub(crate) const SANDBOXES: NsTable = NsTable::new("sandboxes");

/// The runtime a sandbox runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxRuntime {
    pub name: String,
    pub options: Option<AnyBytes>,
}

/// A sandbox record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub runtime: SandboxRuntime,
    pub spec: Option<AnyBytes>,
    pub labels: HashMap<String, String>,
    pub extensions: HashMap<String, AnyBytes>,
    /// The controller that owns the sandbox (containerd's `sandboxer`).
    pub sandboxer: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            id: String::new(),
            runtime: SandboxRuntime::default(),
            spec: None,
            labels: HashMap::new(),
            extensions: HashMap::new(),
            sandboxer: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }
}

impl Sandbox {
    /// The fields filters see, as containerd's `adaptSandbox`: `id`, `labels.<key>`.
    pub fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "id" => Some(self.id.clone()),
            "labels" => label_field(path, &self.labels),
            _ => None,
        }
    }
}

fn validate(s: &Sandbox) -> Result<()> {
    identifiers::validate(&s.id).map_err(|e| e.context("invalid sandbox ID"))?;
    labels::validate_all(&s.labels).map_err(|e| e.context("sandbox.Labels"))?;
    if s.extensions.keys().any(|k| k.is_empty()) {
        return Err(Error::invalid(
            "sandbox.Extension keys must not be zero-length",
        ));
    }
    Ok(())
}

impl Record for Sandbox {
    const TABLE: NsTable = SANDBOXES;
    const KIND: &'static str = "sandbox";
    fn id(&self) -> &str {
        &self.id
    }
    fn field(&self, path: &[String]) -> Option<String> {
        Sandbox::field(self, path)
    }
    fn timestamps_mut(&mut self) -> (&mut SystemTime, &mut SystemTime) {
        (&mut self.created_at, &mut self.updated_at)
    }
}

impl Db {
    /// Create a sandbox record (timestamps set here); the namespace comes
    /// into being if needed.
    pub fn create_sandbox(&self, ns: &str, s: Sandbox) -> Result<Sandbox> {
        validate(&s).map_err(|e| e.context("failed to validate sandbox"))?;
        self.create_record(ns, s)
    }

    /// The sandbox `id`.
    pub fn get_sandbox(&self, ns: &str, id: &str) -> Result<Sandbox> {
        self.get_record(ns, id)
    }

    /// Sandboxes of a namespace matching `filters` (any of them; none = all).
    pub fn list_sandboxes(&self, ns: &str, filters: &[String]) -> Result<Vec<Sandbox>> {
        self.list_records(ns, filters)
    }

    /// Update a sandbox with containerd's field paths (see the module docs).
    pub fn update_sandbox(&self, ns: &str, s: Sandbox, paths: &[String]) -> Result<Sandbox> {
        let updated = self.update_record(ns, &s.id, |mut u: Sandbox| {
            let default_paths: Vec<String>;
            let paths = if paths.is_empty() {
                if u.runtime.name != s.runtime.name {
                    return Err(Error::invalid("sandbox.Runtime.Name field is immutable"));
                }
                default_paths = ["labels", "extensions", "spec", "runtime"]
                    .map(String::from)
                    .to_vec();
                &default_paths[..]
            } else {
                paths
            };
            for p in paths {
                if crate::apply_key_path(p, "labels.", &s.labels, &mut u.labels)
                    || crate::apply_key_path(p, "extensions.", &s.extensions, &mut u.extensions)
                {
                    continue;
                }
                match p.as_str() {
                    "labels" => u.labels = s.labels.clone(),
                    "extensions" => u.extensions = s.extensions.clone(),
                    "runtime" => u.runtime = s.runtime.clone(),
                    "spec" => u.spec = s.spec.clone(),
                    _ => {
                        return Err(Error::invalid(format!(
                            "cannot update {p:?} field on sandbox {:?}",
                            s.id
                        )))
                    }
                }
            }
            // containerd's label writer drops empty values: that is how a label is removed
            u.labels.retain(|_, v| !v.is_empty());
            validate(&u).map_err(|e| e.context("failed to validate sandbox"))?;
            Ok(u)
        })?;
        // a label that referenced content or a snapshot may be gone
        self.notify(MutationKind::Change);
        Ok(updated)
    }

    /// Delete the sandbox record `id`.
    pub fn delete_sandbox(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_record::<Sandbox>(ns, id)?;
        self.notify(MutationKind::Delete);
        Ok(())
    }
}

/// Sandboxes in the GC graph: each record is a root holding what its labels
/// reference (containerd's `scanRoots` sends every sandbox's label refs).
pub(crate) struct SandboxSource;

impl crate::gc::GcSource for SandboxSource {
    fn roots(
        &self,
        tx: &redb::WriteTransaction,
        _now: SystemTime,
        emit: &mut dyn FnMut(crate::gc::Node),
    ) -> Result<()> {
        records::for_each_record(tx, |ns, s: Sandbox| {
            crate::gc::label_refs(ns, &s.labels, emit);
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

    fn sb(id: &str) -> Sandbox {
        Sandbox {
            id: id.into(),
            runtime: SandboxRuntime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: Some(AnyBytes {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            labels: [("app".to_string(), "web".to_string())].into(),
            sandboxer: "podsandbox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn create_validates_the_id_and_refuses_duplicates() {
        let (_d, db) = db();
        let created = db.create_sandbox("ns", sb("s1")).unwrap();
        assert!(created.created_at > SystemTime::UNIX_EPOCH);
        assert_eq!(created.created_at, created.updated_at);
        assert_eq!(db.get_namespace("ns").unwrap().name, "ns");
        let e = db.create_sandbox("ns", sb("s1")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::AlreadyExists);
        for bad in ["", "../x", "a/b", &"x".repeat(77)] {
            let e = db.create_sandbox("ns", sb(bad)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{bad:?}: {e}");
            assert!(e.message.contains("invalid sandbox ID"), "{e}");
        }
        // containerd requires neither a sandboxer nor a runtime name
        let bare = Sandbox {
            id: "bare".into(),
            ..Default::default()
        };
        assert_eq!(db.create_sandbox("ns", bare).unwrap().sandboxer, "");
        assert_eq!(db.get_sandbox("ns", "s1").unwrap(), created);
        assert_eq!(
            db.get_sandbox("other", "s1").unwrap_err().kind,
            ErrorKind::NotFound
        );
    }

    #[test]
    fn list_filters_on_id_and_labels_within_the_namespace() {
        let (_d, db) = db();
        db.create_sandbox("ns", sb("s1")).unwrap();
        let mut s2 = sb("s2");
        s2.labels = [("app".to_string(), "db".to_string())].into();
        db.create_sandbox("ns", s2).unwrap();
        db.create_sandbox("ns2", sb("s3")).unwrap();
        let ids = |v: Vec<Sandbox>| v.into_iter().map(|s| s.id).collect::<Vec<_>>();
        assert_eq!(ids(db.list_sandboxes("ns", &[]).unwrap()), ["s1", "s2"]);
        assert_eq!(
            ids(db.list_sandboxes("ns", &["labels.app==db".into()]).unwrap()),
            ["s2"]
        );
        assert_eq!(
            ids(db
                .list_sandboxes("ns", &["id==s1".into(), "id==s2".into()])
                .unwrap()),
            ["s1", "s2"]
        );
        assert!(db.list_sandboxes("empty", &[]).unwrap().is_empty());
        let e = db.list_sandboxes("ns", &["id==".into()]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
    }

    #[test]
    fn update_follows_containerd_field_paths() {
        let (_d, db) = db();
        let created = db.create_sandbox("ns", sb("s1")).unwrap();
        let mut upd = sb("s1");
        upd.labels = [("new".to_string(), "1".to_string())].into();
        upd.spec = None;
        upd.sandboxer = "other".into();
        let u = db
            .update_sandbox("ns", upd.clone(), &["labels.new".into()])
            .unwrap();
        assert_eq!(u.labels.len(), 2);
        assert!(u.spec.is_some(), "only the named label changes");
        assert!(u.updated_at >= created.updated_at);
        assert_eq!(u.created_at, created.created_at);
        // labels.<k> missing from the request removes the label
        let u = db
            .update_sandbox("ns", upd.clone(), &["labels.app".into()])
            .unwrap();
        assert_eq!(u.labels, upd.labels);
        // no paths: labels, extensions, spec, runtime; never the sandboxer
        let u = db.update_sandbox("ns", upd.clone(), &[]).unwrap();
        assert_eq!(u.spec, None);
        assert_eq!(u.sandboxer, "podsandbox");
        upd.runtime.name = "io.containerd.kata.v2".into();
        let e = db.update_sandbox("ns", upd.clone(), &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("Runtime.Name field is immutable"), "{e}");
        let u = db
            .update_sandbox("ns", upd.clone(), &["runtime".into()])
            .unwrap();
        assert_eq!(u.runtime.name, "io.containerd.kata.v2");
        let e = db
            .update_sandbox("ns", upd.clone(), &["sandboxer".into()])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("cannot update \"sandboxer\""), "{e}");
        let mut ext = sb("s1");
        ext.extensions.insert(
            "k".into(),
            AnyBytes {
                type_url: "t".into(),
                value: vec![1],
            },
        );
        let u = db
            .update_sandbox("ns", ext, &["extensions.k".into()])
            .unwrap();
        assert_eq!(u.extensions.len(), 1);
        let e = db.update_sandbox("ns", sb("missing"), &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(db.get_sandbox("ns", "s1").unwrap(), u);
    }

    #[test]
    fn delete_removes_the_record_and_frees_the_namespace() {
        let (_d, db) = db();
        db.create_sandbox("ns", sb("s1")).unwrap();
        let e = db.delete_namespace("ns").unwrap_err();
        assert!(e.message.contains("sandboxes"), "{e}");
        db.delete_sandbox("ns", "s1").unwrap();
        assert_eq!(
            db.delete_sandbox("ns", "s1").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            db.get_sandbox("ns", "s1").unwrap_err().kind,
            ErrorKind::NotFound
        );
        db.delete_namespace("ns").unwrap();
    }
}
