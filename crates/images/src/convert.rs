//! Image conversion (what `ctr images convert --oci` does, plus layer
//! recompression): Docker schema2 media types become OCI ones, so manifests
//! and indexes get new digests; configs keep their bytes (only the media
//! type changes); layers can be recompressed gzip <-> zstd, keeping their
//! diff IDs (the new blobs carry the `containerd.io/uncompressed` label).
//! Annotations and unknown JSON fields of rewritten documents are kept.

use crate::content::{read_blob, write_blob, ContentWriter, Digester, Store, MAX_MANIFEST_SIZE};
use crate::image::decompress;
use crate::mediatypes::*;
use std::collections::HashMap;
use std::io::{self, Write};
use stevedore_types::platform::MatchPlatform;
use stevedore_types::{Algorithm, Descriptor, Error, ErrorKind, Result};

/// Target compression for layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Zstd,
}

/// What to convert.
pub struct ConvertOptions<'a> {
    /// Rewrite Docker media types to OCI ones (`--oci`).
    pub oci: bool,
    /// Recompress layers not already in this compression.
    pub layer_compression: Option<Compression>,
    /// Manifests of indexes to keep (others are dropped); None keeps all.
    pub platform: Option<&'a dyn MatchPlatform>,
}

fn oci_media_type(mt: &str) -> String {
    match mt {
        DOCKER_MANIFEST => OCI_MANIFEST,
        DOCKER_MANIFEST_LIST => OCI_INDEX,
        DOCKER_CONFIG => OCI_CONFIG,
        DOCKER_LAYER => OCI_LAYER,
        DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
        DOCKER_LAYER_ZSTD => OCI_LAYER_ZSTD,
        DOCKER_LAYER_FOREIGN => OCI_LAYER_NON_DISTRIBUTABLE,
        DOCKER_LAYER_FOREIGN_GZIP => OCI_LAYER_NON_DISTRIBUTABLE_GZIP,
        other => other,
    }
    .to_string()
}

fn json_err(what: &str, d: &Descriptor, e: serde_json::Error) -> Error {
    Error::invalid(format!("convert: parse {what} {}: {e}", d.digest))
}

/// Convert the image rooted at `desc`; returns the new root descriptor
/// (equal to `desc` when nothing changed).
pub fn convert(store: &dyn Store, desc: &Descriptor, opts: &ConvertOptions) -> Result<Descriptor> {
    if is_index_type(&desc.media_type) {
        let bytes = read_blob(store.as_provider(), desc, MAX_MANIFEST_SIZE)?;
        // the limits and checks every index read gets; the rewrite below
        // keeps fields this library does not model, so it works on JSON values
        crate::spec::decode::<crate::spec::Index>(&bytes, desc)?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| json_err("index", desc, e))?;
        let list: Vec<Descriptor> = serde_json::from_value(doc["manifests"].clone())
            .map_err(|e| json_err("index", desc, e))?;
        let mut out = Vec::new();
        for m in list {
            if let (Some(pm), Some(p)) = (opts.platform, &m.platform) {
                if !pm.matches(p) {
                    continue;
                }
            }
            out.push(convert(store, &m, opts)?);
        }
        let mt = if opts.oci {
            oci_media_type(&desc.media_type)
        } else {
            desc.media_type.clone()
        };
        doc["manifests"] = serde_json::to_value(&out).map_err(|e| json_err("index", desc, e))?;
        if doc.get("mediaType").is_some() {
            doc["mediaType"] = mt.clone().into();
        }
        return rewrite(store, desc, &bytes, doc, mt);
    }
    if is_manifest_type(&desc.media_type) {
        let bytes = read_blob(store.as_provider(), desc, MAX_MANIFEST_SIZE)?;
        crate::spec::decode::<crate::spec::Manifest>(&bytes, desc)?;
        let mut doc: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| json_err("manifest", desc, e))?;
        let mut config: Descriptor = serde_json::from_value(doc["config"].clone())
            .map_err(|e| json_err("manifest", desc, e))?;
        let layers: Vec<Descriptor> = serde_json::from_value(doc["layers"].clone())
            .map_err(|e| json_err("manifest", desc, e))?;
        if opts.oci {
            config.media_type = oci_media_type(&config.media_type);
        }
        let mut new_layers = Vec::new();
        for l in layers {
            new_layers.push(convert_layer(store, &l, opts)?);
        }
        let mt = if opts.oci {
            oci_media_type(&desc.media_type)
        } else {
            desc.media_type.clone()
        };
        doc["config"] = serde_json::to_value(&config).map_err(|e| json_err("manifest", desc, e))?;
        doc["layers"] =
            serde_json::to_value(&new_layers).map_err(|e| json_err("manifest", desc, e))?;
        if doc.get("mediaType").is_some() {
            doc["mediaType"] = mt.clone().into();
        }
        return rewrite(store, desc, &bytes, doc, mt);
    }
    Ok(desc.clone())
}

/// Store the rewritten document when it changed; keep the descriptor's
/// annotations and platform.
fn rewrite(
    store: &dyn Store,
    old: &Descriptor,
    old_bytes: &[u8],
    doc: serde_json::Value,
    media_type: String,
) -> Result<Descriptor> {
    let bytes = serde_json::to_vec(&doc).map_err(|e| Error::internal(e.to_string()))?;
    let same = serde_json::from_slice::<serde_json::Value>(old_bytes).ok() == Some(doc);
    if same && media_type == old.media_type {
        return Ok(old.clone());
    }
    let mut d = old.clone();
    d.media_type = media_type;
    d.digest = crate::content::digest_of(&bytes);
    d.size = bytes.len() as i64;
    write_blob(
        store.as_ingester(),
        &format!("convert-{}", d.digest),
        &mut &bytes[..],
        &d,
        HashMap::new(),
    )?;
    Ok(d)
}

fn layer_compression(mt: &str) -> Option<Compression> {
    match diff_compression(mt).ok()? {
        DiffCompression::Gzip => Some(Compression::Gzip),
        DiffCompression::Zstd => Some(Compression::Zstd),
        _ => None,
    }
}

fn convert_layer(store: &dyn Store, l: &Descriptor, opts: &ConvertOptions) -> Result<Descriptor> {
    let mut out = l.clone();
    if opts.oci {
        out.media_type = oci_media_type(&l.media_type);
    }
    let Some(target) = opts.layer_compression else {
        return Ok(out);
    };
    if is_non_distributable(&l.media_type) || layer_compression(&l.media_type) == Some(target) {
        return Ok(out);
    }
    // Recompressed layers are always OCI typed (Docker has no zstd type).
    let (mt, enc) = match target {
        Compression::Gzip => (OCI_LAYER_GZIP, target),
        Compression::Zstd => (OCI_LAYER_ZSTD, target),
    };
    let (digest, size, diff_id) = recompress(store, l, enc)?;
    out.media_type = mt.into();
    out.digest = digest;
    out.size = size;
    let _ = diff_id;
    Ok(out)
}

struct Tee<'a> {
    w: &'a mut Box<dyn ContentWriter>,
    d: Digester,
    n: i64,
}

impl Write for Tee<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.w.write(buf)?;
        self.d.update(&buf[..n]);
        self.n += n as i64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

fn recompress(
    store: &dyn Store,
    l: &Descriptor,
    target: Compression,
) -> Result<(stevedore_types::Digest, i64, stevedore_types::Digest)> {
    let mut w = store.writer(&format!("convert-layer-{}", l.digest), None, None)?;
    let res: Result<(stevedore_types::Digest, i64, stevedore_types::Digest)> = (|| {
        let src = decompress(store.reader(l, 0)?)?;
        let mut src = crate::content::DigestingReader::new(src, Algorithm::Sha256);
        let tee = Tee {
            w: &mut w,
            d: Digester::new(Algorithm::Sha256),
            n: 0,
        };
        let tee = match target {
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(tee, flate2::Compression::default());
                io::copy(&mut src, &mut e)?;
                e.finish()?
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(tee, 3)?;
                io::copy(&mut src, &mut e)?;
                e.finish()?
            }
        };
        Ok((tee.d.digest(), tee.n, src.digest()))
    })();
    match res {
        Ok((digest, size, diff_id)) => {
            let labels = HashMap::from([(LABEL_UNCOMPRESSED.to_string(), diff_id.to_string())]);
            match w.commit(size, &digest, labels) {
                Ok(()) => {}
                Err(e) if e.is(ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e.context(format!("convert layer {}", l.digest))),
            }
            Ok((digest, size, diff_id))
        }
        Err(e) => {
            let _ = w.abort();
            Err(e.context(format!("recompress layer {}", l.digest)))
        }
    }
}
