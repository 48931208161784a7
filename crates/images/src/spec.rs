//! The JSON documents of an image: manifest, index (manifest list), config and
//! the OCI layout file. Unknown fields are ignored, as the OCI spec requires of
//! readers; documents are read with size limits ([`crate::content`]).

use crate::content::{read_blob, Provider, MAX_JSON_SIZE, MAX_MANIFEST_SIZE};
use crate::mediatypes::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stevedore_types::{Descriptor, Digest, Error, Platform, Result};

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion", default)]
    pub schema_version: i64,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The layer list of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub diff_ids: Vec<Digest>,
}

/// The fields of an image config the library uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(rename = "os.version", default)]
    pub os_version: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub rootfs: RootFs,
}

impl ImageConfig {
    /// The normalised platform the config declares.
    pub fn platform(&self) -> Platform {
        let mut p = Platform::new(&self.os, &self.architecture, &self.variant);
        p.os_version = self.os_version.clone();
        p.normalize()
    }
}

/// The `oci-layout` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayout {
    #[serde(rename = "imageLayoutVersion", default)]
    pub version: String,
}

/// Fields that reveal what kind of document a blob really is.
#[derive(Deserialize)]
struct UnknownDocument {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(rename = "fsLayers", default)]
    fs_layers: Option<serde_json::Value>,
}

fn present(v: &Option<serde_json::Value>) -> bool {
    match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// containerd's `validateMediaType`: refuse a blob whose content contradicts
/// its descriptor's media type (a manifest that is an index, schema1, ...).
pub fn validate_media_type(bytes: &[u8], mt: &str) -> Result<()> {
    let doc: UnknownDocument = serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("invalid JSON in {mt} document: {e}")))?;
    if present(&doc.fs_layers) {
        return Err(Error::invalid("media-type: schema 1 not supported"));
    }
    if is_manifest_type(mt) && (present(&doc.manifests) || is_index_type(&doc.media_type)) {
        return Err(Error::invalid(format!(
            "media-type: expected manifest but found index ({mt})"
        )));
    }
    if is_index_type(mt)
        && (present(&doc.config) || present(&doc.layers) || is_manifest_type(&doc.media_type))
    {
        return Err(Error::invalid(format!(
            "media-type: expected index but found manifest ({mt})"
        )));
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str, desc: &Descriptor) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| Error::invalid(format!("parse {what} {}: {e}", desc.digest)))
}

/// Read, validate and parse a manifest.
pub fn read_manifest(provider: &dyn Provider, desc: &Descriptor) -> Result<Manifest> {
    let b = read_blob(provider, desc, MAX_MANIFEST_SIZE)?;
    validate_media_type(&b, &desc.media_type)
        .map_err(|e| e.context(format!("manifest: invalid desc {}", desc.digest)))?;
    parse(&b, "manifest", desc)
}

/// Read, validate and parse an index or manifest list.
pub fn read_index(provider: &dyn Provider, desc: &Descriptor) -> Result<Index> {
    let b = read_blob(provider, desc, MAX_MANIFEST_SIZE)?;
    validate_media_type(&b, &desc.media_type)
        .map_err(|e| e.context(format!("index: invalid desc {}", desc.digest)))?;
    parse(&b, "index", desc)
}

/// Read and parse an image config.
pub fn read_config(provider: &dyn Provider, desc: &Descriptor) -> Result<ImageConfig> {
    let b = read_blob(provider, desc, MAX_JSON_SIZE)?;
    parse(&b, "image config", desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerates_unknown_fields() {
        let j = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "artifactType":"x","subject":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0,"data":"","future":1},
            "layers":[]}"#;
        let m: Manifest = serde_json::from_slice(j).unwrap();
        assert_eq!(m.config.media_type, OCI_CONFIG);
        validate_media_type(j, OCI_MANIFEST).unwrap();
        let e = validate_media_type(j, OCI_INDEX).unwrap_err();
        assert!(
            e.message.contains("expected index but found manifest"),
            "{e}"
        );
    }

    #[test]
    fn refuses_schema1_and_index_posing_as_manifest() {
        let s1 = br#"{"schemaVersion":1,"fsLayers":[{"blobSum":"x"}]}"#;
        assert!(validate_media_type(s1, DOCKER_MANIFEST)
            .unwrap_err()
            .message
            .contains("schema 1"));
        let idx = br#"{"schemaVersion":2,"manifests":[{"x":1}]}"#;
        assert!(validate_media_type(idx, OCI_MANIFEST)
            .unwrap_err()
            .message
            .contains("expected manifest but found index"));
    }
}
