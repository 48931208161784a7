//! Container records: what to run (spec), with what (runtime, snapshot,
//! image), labelled. Table `containers`: `(namespace, id) -> JSON record`.
//! Validation and update field paths follow containerd's metadata store.

use crate::records::Record;
use crate::{namespaces, Db, NsTable};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::SystemTime;
use stevedore_types::filters::label_field;
use stevedore_types::{labels, Error, Result};

pub(crate) const CONTAINERS: NsTable = NsTable::new("containers");

/// A protobuf `Any` kept as bytes (type URL and encoded value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnyBytes {
    pub type_url: String,
    pub value: Vec<u8>,
}

/// The runtime a container runs with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub name: String,
    pub options: Option<AnyBytes>,
}

/// A container record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub image: String,
    pub runtime: Runtime,
    pub spec: Option<AnyBytes>,
    pub snapshotter: String,
    pub snapshot_key: String,
    pub extensions: HashMap<String, AnyBytes>,
    pub sandbox_id: String,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Default for Container {
    fn default() -> Self {
        Container {
            id: String::new(),
            labels: HashMap::new(),
            image: String::new(),
            runtime: Runtime::default(),
            spec: None,
            snapshotter: String::new(),
            snapshot_key: String::new(),
            extensions: HashMap::new(),
            sandbox_id: String::new(),
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
        }
    }
}

impl Container {
    /// The fields filters see: `id`, `runtime.name`, `image`, `labels.<key>`.
    pub fn field(&self, path: &[String]) -> Option<String> {
        let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_string());
        match path.first().map(String::as_str)? {
            "id" => nonempty(&self.id),
            "image" => nonempty(&self.image),
            "runtime" if path.get(1).map(String::as_str) == Some("name") => {
                nonempty(&self.runtime.name)
            }
            "labels" => label_field(path, &self.labels),
            _ => None,
        }
    }
}

fn validate(c: &Container) -> Result<()> {
    namespaces::validate_name(&c.id).map_err(|e| e.context("container.ID"))?;
    if c.extensions.keys().any(|k| k.is_empty()) {
        return Err(Error::invalid(
            "container.Extension keys must not be zero-length",
        ));
    }
    labels::validate_all(&c.labels).map_err(|e| e.context("containers.Labels"))?;
    if c.runtime.name.is_empty() {
        return Err(Error::invalid("container.Runtime.Name must be set"));
    }
    if c.spec.is_none() {
        return Err(Error::invalid("container.Spec must be set"));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(Error::invalid(
            "container.Snapshotter must be set if container.SnapshotKey is set",
        ));
    }
    Ok(())
}

impl Record for Container {
    const TABLE: NsTable = CONTAINERS;
    const KIND: &'static str = "container";
    fn id(&self) -> &str {
        &self.id
    }
    fn field(&self, path: &[String]) -> Option<String> {
        Container::field(self, path)
    }
    fn timestamps_mut(&mut self) -> (&mut SystemTime, &mut SystemTime) {
        (&mut self.created_at, &mut self.updated_at)
    }
}

impl Db {
    /// Create a container record; the namespace comes into being if needed.
    pub fn create_container(&self, ns: &str, c: Container) -> Result<Container> {
        validate(&c).map_err(|e| e.context("create container failed validation"))?;
        self.create_record(ns, c)
    }

    /// The container `id`.
    pub fn get_container(&self, ns: &str, id: &str) -> Result<Container> {
        self.get_record(ns, id)
    }

    /// Containers of a namespace matching `filters` (any of them; none = all).
    pub fn list_containers(&self, ns: &str, filters: &[String]) -> Result<Vec<Container>> {
        self.list_records(ns, filters)
    }

    /// Update a container with containerd's field paths (`labels`,
    /// `labels.<k>`, `spec`, `extensions`, `extensions.<k>`, `image`,
    /// `snapshotkey`); no paths replaces those fields, and then the
    /// snapshotter and runtime name must not change.
    pub fn update_container(&self, ns: &str, c: Container, paths: &[String]) -> Result<Container> {
        if c.id.is_empty() {
            return Err(Error::invalid("must specify a container id"));
        }
        self.update_record(ns, &c.id, |mut u: Container| {
            let default_paths: Vec<String>;
            let paths = if paths.is_empty() {
                if u.snapshotter != c.snapshotter {
                    return Err(Error::invalid("container.Snapshotter field is immutable"));
                }
                if u.runtime.name != c.runtime.name {
                    return Err(Error::invalid("container.Runtime.Name field is immutable"));
                }
                default_paths = ["labels", "spec", "extensions", "image", "snapshotkey"]
                    .map(String::from)
                    .to_vec();
                &default_paths[..]
            } else {
                paths
            };
            for p in paths {
                if crate::apply_key_path(p, "labels.", &c.labels, &mut u.labels)
                    || crate::apply_key_path(p, "extensions.", &c.extensions, &mut u.extensions)
                {
                    continue;
                }
                match p.as_str() {
                    "labels" => u.labels = c.labels.clone(),
                    "spec" => u.spec = c.spec.clone(),
                    "extensions" => u.extensions = c.extensions.clone(),
                    "image" => u.image = c.image.clone(),
                    "snapshotkey" => u.snapshot_key = c.snapshot_key.clone(),
                    _ => {
                        return Err(Error::invalid(format!(
                            "cannot update {p:?} field on {:?}",
                            c.id
                        )))
                    }
                }
            }
            u.labels.retain(|_, v| !v.is_empty());
            validate(&u).map_err(|e| e.context("update failed validation"))?;
            Ok(u)
        })
    }

    /// Delete the container record `id`.
    pub fn delete_container(&self, ns: &str, id: &str) -> Result<()> {
        self.delete_record::<Container>(ns, id)
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

    fn c(id: &str) -> Container {
        Container {
            id: id.into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: Some(AnyBytes {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            image: "docker.io/library/busybox:latest".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn container_lifecycle_with_validation_filters_and_field_paths() {
        let (_d, db) = db();
        let created = db.create_container("ns", c("c1")).unwrap();
        assert!(created.created_at > SystemTime::UNIX_EPOCH);
        assert_eq!(
            db.create_container("ns", c("c1")).unwrap_err().kind,
            ErrorKind::AlreadyExists
        );
        assert_eq!(db.get_namespace("ns").unwrap().name, "ns");
        let mut bad = c("c2");
        bad.spec = None;
        let e = db.create_container("ns", bad).unwrap_err();
        assert!(e.message.contains("container.Spec must be set"), "{e}");
        let mut bad = c("c2");
        bad.snapshot_key = "k".into();
        assert_eq!(
            db.create_container("ns", bad).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        assert!(db.create_container("ns", c("bad id")).is_err());

        let mut other = c("c2");
        other.labels = [("app".to_string(), "db".to_string())].into();
        db.create_container("ns", other).unwrap();
        db.create_container("ns2", c("c3")).unwrap();
        let ids = |v: Vec<Container>| v.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(ids(db.list_containers("ns", &[]).unwrap()), ["c1", "c2"]);
        assert_eq!(
            ids(db
                .list_containers("ns", &["labels.app==db".into()])
                .unwrap()),
            ["c2"]
        );
        assert_eq!(
            ids(db
                .list_containers("ns", &["id==c1".into(), "id==c2".into()])
                .unwrap()),
            ["c1", "c2"]
        );
        assert_eq!(
            ids(db
                .list_containers(
                    "ns",
                    &["runtime.name==io.containerd.runc.v2,image~=busybox".into()]
                )
                .unwrap()),
            ["c1", "c2"]
        );

        let mut upd = c("c1");
        upd.labels = [("new".to_string(), "1".to_string())].into();
        upd.image = "other".into();
        let u = db
            .update_container("ns", upd.clone(), &["labels.new".into()])
            .unwrap();
        assert_eq!(u.labels.len(), 2);
        assert_eq!(u.image, "docker.io/library/busybox:latest");
        assert!(u.updated_at >= u.created_at);
        let u = db.update_container("ns", upd.clone(), &[]).unwrap();
        assert_eq!(u.image, "other");
        assert_eq!(u.labels, upd.labels);
        upd.runtime.name = "io.containerd.other.v1".into();
        let e = db.update_container("ns", upd.clone(), &[]).unwrap_err();
        assert!(e.message.contains("Runtime.Name field is immutable"), "{e}");
        let e = db
            .update_container("ns", upd.clone(), &["runtime".into()])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);

        let e = db.delete_namespace("ns").unwrap_err();
        assert!(e.message.contains("containers"), "{e}");
        db.delete_container("ns", "c1").unwrap();
        db.delete_container("ns", "c2").unwrap();
        assert_eq!(
            db.delete_container("ns", "c2").unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            db.get_container("ns", "c1").unwrap_err().kind,
            ErrorKind::NotFound
        );
        db.delete_namespace("ns").unwrap();
    }
}
