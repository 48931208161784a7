//! The JSON documents of an image: manifest, index (manifest list), config and
//! the OCI layout file. Unknown fields are ignored, as the OCI spec requires of
//! readers; documents are read with size limits ([`crate::content`]).

use crate::content::{read_blob, Provider, MAX_JSON_SIZE, MAX_MANIFEST_SIZE};
use crate::mediatypes::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stevedore_types::limits::MAX_LAYERS;
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

/// A JSON document of an image with its limits (see
/// `stevedore_types::limits`): every read of one, for unpack, import, pull,
/// push or check, goes through [`decode`] so the checks live here once.
pub trait Document: serde::de::DeserializeOwned {
    /// What the document is called in errors.
    const KIND: &'static str;
    /// Largest accepted encoding, in bytes.
    const MAX_SIZE: i64;
    /// Checks on the raw bytes before parsing.
    fn check_bytes(_bytes: &[u8], _desc: &Descriptor) -> Result<()> {
        Ok(())
    }
    /// Checks on the parsed document.
    fn check(&self, _desc: &Descriptor) -> Result<()> {
        Ok(())
    }
}

fn too_many_layers(kind: &str, what: &str, n: usize, desc: &Descriptor) -> Error {
    Error::invalid(format!(
        "{kind} {}: {n} {what} exceed the limit of {MAX_LAYERS}",
        desc.digest
    ))
}

impl Document for Manifest {
    const KIND: &'static str = "manifest";
    const MAX_SIZE: i64 = MAX_MANIFEST_SIZE;
    fn check_bytes(bytes: &[u8], desc: &Descriptor) -> Result<()> {
        validate_media_type(bytes, &desc.media_type)
            .map_err(|e| e.context(format!("manifest: invalid desc {}", desc.digest)))
    }
    fn check(&self, desc: &Descriptor) -> Result<()> {
        if self.layers.len() > MAX_LAYERS {
            return Err(too_many_layers(
                Self::KIND,
                "layers",
                self.layers.len(),
                desc,
            ));
        }
        Ok(())
    }
}

impl Document for Index {
    const KIND: &'static str = "index";
    const MAX_SIZE: i64 = MAX_MANIFEST_SIZE;
    fn check_bytes(bytes: &[u8], desc: &Descriptor) -> Result<()> {
        validate_media_type(bytes, &desc.media_type)
            .map_err(|e| e.context(format!("index: invalid desc {}", desc.digest)))
    }
}

impl Document for ImageConfig {
    const KIND: &'static str = "image config";
    const MAX_SIZE: i64 = MAX_JSON_SIZE;
    fn check(&self, desc: &Descriptor) -> Result<()> {
        let n = self.rootfs.diff_ids.len();
        if n > MAX_LAYERS {
            return Err(too_many_layers(Self::KIND, "diff IDs", n, desc));
        }
        Ok(())
    }
}

/// Check and parse the bytes of the document `desc` describes: size limit,
/// media-type consistency, JSON, then the document's own limits. Errors are
/// InvalidArgument naming the document and the limit.
pub fn decode<T: Document>(bytes: &[u8], desc: &Descriptor) -> Result<T> {
    if bytes.len() as i64 > T::MAX_SIZE {
        return Err(Error::invalid(format!(
            "{} {}: {} bytes exceed the limit of {} bytes",
            T::KIND,
            desc.digest,
            bytes.len(),
            T::MAX_SIZE
        )));
    }
    T::check_bytes(bytes, desc)?;
    let doc: T = parse(bytes, T::KIND, desc)?;
    doc.check(desc)?;
    Ok(doc)
}

/// Read (size-limited, digest-verified) and [`decode`] a document.
pub fn read<T: Document>(provider: &dyn Provider, desc: &Descriptor) -> Result<T> {
    let b = read_blob(provider, desc, T::MAX_SIZE)?;
    decode(&b, desc)
}

/// Read, validate and parse a manifest.
pub fn read_manifest(provider: &dyn Provider, desc: &Descriptor) -> Result<Manifest> {
    read(provider, desc)
}

/// Read, validate and parse an index or manifest list.
pub fn read_index(provider: &dyn Provider, desc: &Descriptor) -> Result<Index> {
    read(provider, desc)
}

/// Read and parse an image config.
pub fn read_config(provider: &dyn Provider, desc: &Descriptor) -> Result<ImageConfig> {
    read(provider, desc)
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

    fn manifest_with_layers(n: usize) -> Vec<u8> {
        let l = r#"{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0}"#;
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{l},"layers":[{}]}}"#,
            vec![l; n].join(",")
        )
        .into_bytes()
    }

    fn desc_of(mt: &str, b: &[u8]) -> Descriptor {
        Descriptor::new(mt, crate::content::digest_of(b), b.len() as i64)
    }

    #[test]
    fn refuses_manifests_with_more_layers_than_overlay_can_stack() {
        let ok = manifest_with_layers(MAX_LAYERS);
        let m: Manifest = decode(&ok, &desc_of(OCI_MANIFEST, &ok)).unwrap();
        assert_eq!(m.layers.len(), MAX_LAYERS);
        let bad = manifest_with_layers(MAX_LAYERS + 1);
        let d = desc_of(OCI_MANIFEST, &bad);
        let e = decode::<Manifest>(&bad, &d).unwrap_err();
        assert!(e.is(stevedore_types::ErrorKind::InvalidArgument), "{e}");
        assert_eq!(
            e.message,
            format!("manifest {}: 501 layers exceed the limit of 500", d.digest)
        );
    }

    #[test]
    fn refuses_configs_with_too_many_diff_ids() {
        let ids = vec![
            "\"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"";
            MAX_LAYERS + 1
        ];
        let b = format!(
            r#"{{"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            ids.join(",")
        );
        let e =
            decode::<ImageConfig>(b.as_bytes(), &desc_of(OCI_CONFIG, b.as_bytes())).unwrap_err();
        assert!(
            e.message.contains("501 diff IDs exceed the limit of 500"),
            "{e}"
        );
    }

    #[test]
    fn refuses_manifests_over_containerds_size_limit() {
        // containerd's MaxManifestSize is 4 * 1048 * 1048 bytes
        assert_eq!(MAX_MANIFEST_SIZE, 4_393_216);
        let mut big = manifest_with_layers(1);
        big.pop();
        big.extend(std::iter::repeat_n(b' ', MAX_MANIFEST_SIZE as usize));
        big.push(b'}');
        let d = desc_of(OCI_MANIFEST, &big);
        let e = decode::<Manifest>(&big, &d).unwrap_err();
        assert!(e.is(stevedore_types::ErrorKind::InvalidArgument));
        assert!(
            e.message.contains("exceed the limit of 4393216 bytes"),
            "{e}"
        );
    }
}
