//! Image records: a name, labels and a target descriptor, per namespace.
//! Table `images`: `(namespace, name) -> JSON ImageRecord`. An image holds its
//! target (and through children labels, the whole tree) for the GC.

use crate::{db_err, namespaces, Db, NsTable};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};
use stevedore_types::filters::{label_field, Filter};
use stevedore_types::{labels, Descriptor, Error, Result};

pub const IMAGES: NsTable = TableDefinition::new("images");

/// An image record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    #[serde(default)]
    pub labels: HashMap<String, String>,
    pub target: Descriptor,
    /// Nanoseconds since the epoch.
    pub created_at: u128,
    pub updated_at: u128,
}

pub(crate) fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn validate(image: &Image) -> Result<()> {
    if image.name.is_empty() {
        return Err(Error::invalid("image name must not be empty"));
    }
    labels::validate_all(&image.labels).map_err(|e| e.context("image.Labels"))?;
    if image.target.size <= 0 {
        return Err(Error::invalid(format!(
            "image {:?}: Target.Size must be greater than zero",
            image.name
        )));
    }
    if image.target.media_type.is_empty() {
        return Err(Error::invalid(format!(
            "image {:?}: Target.MediaType must be set",
            image.name
        )));
    }
    Ok(())
}

fn decode(name: &str, bytes: &[u8]) -> Result<Image> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::internal(format!("image {name:?}: corrupt record: {e}")))
}

fn encode(image: &Image) -> Vec<u8> {
    serde_json::to_vec(image).expect("image record serialises")
}

/// Filter fields of an image, as containerd's adaptImage.
fn field(image: &Image, path: &[String]) -> Option<String> {
    match path.first().map(String::as_str)? {
        "name" => Some(image.name.clone()),
        "target" => match path.get(1).map(String::as_str)? {
            "digest" => Some(image.target.digest.to_string()),
            "mediatype" => Some(image.target.media_type.clone()),
            _ => None,
        },
        "labels" => label_field(path, &image.labels),
        _ => None,
    }
}

impl Db {
    pub fn get_image(&self, ns: &str, name: &str) -> Result<Image> {
        self.view(|tx| {
            let t = tx
                .open_table(IMAGES)
                .map_err(|e| db_err("open images", e))?;
            let v = t
                .get((ns, name))
                .map_err(|e| db_err("get image", e))?
                .ok_or_else(|| Error::not_found(format!("image {name:?}: not found")))?;
            decode(name, v.value())
        })
    }

    pub fn list_images(&self, ns: &str, filters: &[String]) -> Result<Vec<Image>> {
        let filter = Filter::parse_all(filters)?;
        self.view(|tx| {
            let t = tx
                .open_table(IMAGES)
                .map_err(|e| db_err("open images", e))?;
            let mut out = Vec::new();
            for r in t.range((ns, "")..).map_err(|e| db_err("list images", e))? {
                let (k, v) = r.map_err(|e| db_err("list images", e))?;
                let (kns, name) = k.value();
                if kns != ns {
                    break;
                }
                let img = decode(name, v.value())?;
                if filter.matches(&|p: &[String]| field(&img, p)) {
                    out.push(img);
                }
            }
            Ok(out)
        })
    }

    /// Create an image; AlreadyExists when the name is taken.
    pub fn create_image(&self, ns: &str, image: Image) -> Result<Image> {
        self.create_image_at(ns, image, None)
    }

    /// Create an image dated `at` (nanoseconds since the epoch; containerd
    /// 2.x's `source_date_epoch`) instead of now.
    pub fn create_image_at(&self, ns: &str, mut image: Image, at: Option<u128>) -> Result<Image> {
        validate(&image)?;
        self.update(|tx| {
            namespaces::ensure(tx, ns)?;
            let mut t = tx
                .open_table(IMAGES)
                .map_err(|e| db_err("open images", e))?;
            if t.get((ns, image.name.as_str()))
                .map_err(|e| db_err("get image", e))?
                .is_some()
            {
                return Err(Error::already_exists(format!(
                    "image {:?}: already exists",
                    image.name
                )));
            }
            image.created_at = at.unwrap_or_else(now_nanos);
            image.updated_at = image.created_at;
            t.insert((ns, image.name.as_str()), encode(&image).as_slice())
                .map_err(|e| db_err("insert image", e))?;
            Ok(image)
        })
        .inspect(|_| self.notify(crate::MutationKind::Change))
    }

    /// Update an image with containerd's field paths: `labels`, `labels.<k>`,
    /// `target`, `annotations`, `annotations.<k>`; none replaces everything.
    pub fn update_image(&self, ns: &str, image: Image, paths: &[String]) -> Result<Image> {
        self.update_image_at(ns, image, paths, None)
    }

    /// [`Db::update_image`], dated `at` (containerd 2.x's
    /// `source_date_epoch`) instead of now.
    pub fn update_image_at(
        &self,
        ns: &str,
        image: Image,
        paths: &[String],
        at: Option<u128>,
    ) -> Result<Image> {
        if image.name.is_empty() {
            return Err(Error::invalid("image name is required for update"));
        }
        self.update(|tx| {
            let mut t = tx
                .open_table(IMAGES)
                .map_err(|e| db_err("open images", e))?;
            let mut updated = {
                let v = t
                    .get((ns, image.name.as_str()))
                    .map_err(|e| db_err("get image", e))?
                    .ok_or_else(|| {
                        Error::not_found(format!("image {:?}: not found", image.name))
                    })?;
                decode(&image.name, v.value())?
            };
            let created = updated.created_at;
            if paths.is_empty() {
                updated = image.clone();
            }
            for p in paths {
                if let Some(k) = p.strip_prefix("labels.") {
                    match image.labels.get(k) {
                        Some(v) => updated.labels.insert(k.to_string(), v.clone()),
                        None => updated.labels.remove(k),
                    };
                } else if let Some(k) = p.strip_prefix("annotations.") {
                    match image.target.annotations.get(k) {
                        Some(v) => updated.target.annotations.insert(k.to_string(), v.clone()),
                        None => updated.target.annotations.remove(k),
                    };
                } else {
                    match p.as_str() {
                        "labels" => updated.labels = image.labels.clone(),
                        "target" => updated.target = image.target.clone(),
                        "annotations" => {
                            updated.target.annotations = image.target.annotations.clone()
                        }
                        _ => {
                            return Err(Error::invalid(format!(
                                "cannot update {p:?} field on image {:?}",
                                image.name
                            )))
                        }
                    }
                }
            }
            updated.labels.retain(|_, v| !v.is_empty());
            validate(&updated)?;
            updated.created_at = created;
            updated.updated_at = at.unwrap_or_else(now_nanos);
            t.insert((ns, updated.name.as_str()), encode(&updated).as_slice())
                .map_err(|e| db_err("update image", e))?;
            Ok(updated)
        })
        // a retargeted image may have left its old tree unreferenced
        .inspect(|_| self.notify(crate::MutationKind::Delete))
    }

    pub fn delete_image(&self, ns: &str, name: &str) -> Result<()> {
        self.delete_image_if(ns, name, None)
    }

    /// Delete an image only if its target is `target` (containerd 2.x's
    /// `DeleteImageRequest.target`): another target is NotFound, so a
    /// client never deletes an image someone re-pointed meanwhile.
    pub fn delete_image_if(&self, ns: &str, name: &str, target: Option<&str>) -> Result<()> {
        self.update(|tx| {
            let mut t = tx
                .open_table(IMAGES)
                .map_err(|e| db_err("open images", e))?;
            if let Some(want) = target.filter(|d| !d.is_empty()) {
                let current = {
                    let v = t
                        .get((ns, name))
                        .map_err(|e| db_err("get image", e))?
                        .ok_or_else(|| Error::not_found(format!("image {name:?}: not found")))?;
                    decode(name, v.value())?.target.digest.to_string()
                };
                if current != want {
                    return Err(Error::not_found(format!(
                        "image {name:?} has target {current}, not {want}: not found"
                    )));
                }
            }
            t.remove((ns, name))
                .map_err(|e| db_err("delete image", e))?
                .ok_or_else(|| Error::not_found(format!("image {name:?}: not found")))?;
            Ok(())
        })
    }
}

/// Images are GC roots: each holds its target (and, through children labels
/// on the content, the whole tree) plus whatever its own labels reference.
pub(crate) struct ImageSource;

impl crate::gc::GcSource for ImageSource {
    fn roots(
        &self,
        tx: &redb::WriteTransaction,
        _now: std::time::SystemTime,
        emit: &mut dyn FnMut(crate::gc::Node),
    ) -> Result<()> {
        let t = tx
            .open_table(IMAGES)
            .map_err(|e| db_err("open images", e))?;
        crate::scan_all(&t, "images", |ns, name, v| {
            let img = decode(name, v)?;
            emit(crate::gc::content_node(ns, &img.target.digest));
            crate::gc::label_refs(ns, &img.labels, emit);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_types::{Digest, ErrorKind};

    fn img(name: &str) -> Image {
        Image {
            name: name.into(),
            labels: HashMap::new(),
            target: Descriptor::new(
                "application/vnd.oci.image.index.v1+json",
                Digest::from_sha256_bytes(&[1; 32]),
                10,
            ),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn image_lifecycle_is_namespaced() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("m.db")).unwrap();
        let created = db.create_image("a", img("docker.io/library/x:1")).unwrap();
        assert!(created.created_at > 0);
        assert_eq!(
            db.create_image("a", img("docker.io/library/x:1"))
                .unwrap_err()
                .kind,
            ErrorKind::AlreadyExists
        );
        db.create_image("b", img("docker.io/library/x:1")).unwrap();
        assert_eq!(db.list_images("a", &[]).unwrap().len(), 1);
        assert_eq!(
            db.get_image("c", "docker.io/library/x:1").unwrap_err().kind,
            ErrorKind::NotFound
        );
        // namespaces were created on first use, and are not empty
        assert!(db.get_namespace("a").is_ok());
        let e = db.delete_namespace("a").unwrap_err();
        assert!(e.message.contains("images"), "{e}");

        let mut u = img("docker.io/library/x:1");
        u.labels.insert("k".into(), "v".into());
        let up = db.update_image("a", u, &["labels.k".into()]).unwrap();
        assert_eq!(up.labels["k"], "v");
        assert_eq!(up.created_at, created.created_at);
        assert!(db.list_images("a", &["labels.k==v".into()]).unwrap().len() == 1);
        assert!(
            db.list_images("a", &["name~=^docker.io/,target.mediatype~=index".into()])
                .unwrap()
                .len()
                == 1
        );
        assert_eq!(
            db.update_image("a", img("docker.io/library/x:1"), &["bogus".into()])
                .unwrap_err()
                .kind,
            ErrorKind::InvalidArgument
        );
        db.delete_image("a", "docker.io/library/x:1").unwrap();
        assert_eq!(
            db.delete_image("a", "docker.io/library/x:1")
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        db.delete_namespace("a").unwrap();
    }

    #[test]
    fn rejects_invalid_images() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("m.db")).unwrap();
        let mut i = img("");
        assert_eq!(
            db.create_image("a", i.clone()).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        i.name = "x".into();
        i.target.size = 0;
        assert_eq!(
            db.create_image("a", i.clone()).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        i.target.size = 1;
        i.target.media_type.clear();
        assert_eq!(
            db.create_image("a", i).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }
}
