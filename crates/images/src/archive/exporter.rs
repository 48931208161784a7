//! The OCI image layout v1 exporter, byte for byte what containerd 1.6's
//! `images/archive.Export` (so `ctr images export`) writes:
//!
//! ```text
//! blobs/                  dir  0755
//! blobs/<alg>/            dir  0755
//! blobs/<alg>/<hex>       file 0444  (digest and size verified while copying)
//! index.json              file 0644  {"schemaVersion":2,"manifests":[...]}
//! manifest.json           file 0644  Docker-compatible (unless skipped)
//! oci-layout              file 0444  {"imageLayoutVersion":"1.0.0"}
//! ```
//!
//! Records are sorted by name, duplicates dropped; headers are Go's (uid/gid
//! 0, mtime 0, USTAR; see [`super::gotar`]). One known difference: with
//! several images, Go orders `manifest.json` entries by map iteration
//! (random); stevedore keeps the order the images were given.

use super::gojson;
use super::gotar::{self, TYPE_DIR, TYPE_REG};
use crate::content::{read_blob, DigestingReader, Provider, MAX_MANIFEST_SIZE};
use crate::handlers::{children_handler, sort_by_platform, walk, Handler, HandlerResult, Handlers};
use crate::mediatypes::*;
use crate::reference::{familiarize, oci_reference_name};
use crate::spec::Manifest;
use std::collections::{BTreeSet, HashMap};
use std::io::{self, Read, Write};
use stevedore_types::platform::{Exact, MatchPlatform};
use stevedore_types::{Descriptor, Digest, Error, Platform, Result};

/// An image (or manifest) to put into an archive.
#[derive(Debug, Clone)]
pub struct ExportImage {
    /// The target, with the name annotations already added when named.
    pub target: Descriptor,
}

impl ExportImage {
    /// A named image: the descriptor gets `io.containerd.image.name` and
    /// `org.opencontainers.image.ref.name` (containerd's `WithImage`).
    pub fn named(name: &str, target: &Descriptor) -> Self {
        let mut t = target.clone();
        t.annotations
            .insert(ANNOTATION_IMAGE_NAME.to_string(), name.to_string());
        t.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), oci_reference_name(name));
        ExportImage { target: t }
    }
    /// A descriptor exported as given (containerd's `WithManifest` without names).
    pub fn manifest(target: &Descriptor) -> Self {
        ExportImage {
            target: target.clone(),
        }
    }
}

/// Writes images to a tar stream (seed 001's `Exporter`).
pub trait Exporter {
    fn export(
        &self,
        provider: &dyn Provider,
        images: &[ExportImage],
        out: &mut dyn Write,
    ) -> Result<()>;
}

/// Progress callback: a blob and the bytes of it copied so far.
pub type ExportProgress = Box<dyn Fn(&Descriptor, u64) + Send + Sync>;

/// Export options, as `ctr images export` flags set them.
pub struct OciExporter {
    /// Manifests of indexes to include (and to resolve `manifest.json`);
    /// `ctr`'s default is the host platform only (`platforms.DefaultStrict`).
    pub platform: Option<Box<dyn MatchPlatform>>,
    /// Include every manifest of an index (`--all-platforms`).
    pub all_platforms: bool,
    /// Do not write the Docker `manifest.json` (`--skip-manifest-json`).
    pub skip_docker_manifest: bool,
    /// Leave out non-distributable layers (`--skip-non-distributable`).
    pub skip_non_distributable: bool,
    /// Called with each blob's descriptor and the bytes copied so far.
    pub progress: Option<ExportProgress>,
}

impl Default for OciExporter {
    fn default() -> Self {
        OciExporter {
            platform: Some(Box::new(Exact(Platform::host()))),
            all_platforms: false,
            skip_docker_manifest: false,
            skip_non_distributable: false,
            progress: None,
        }
    }
}

enum Body {
    Bytes(Vec<u8>),
    Blob(Box<Descriptor>),
    Empty,
}

struct Record {
    name: String,
    mode: i64,
    size: i64,
    typeflag: u8,
    body: Body,
}

fn blob_path(d: &Digest) -> String {
    format!("blobs/{}/{}", d.algorithm(), d.hex())
}

impl OciExporter {
    fn blob_record(&self, desc: &Descriptor) -> Option<Record> {
        if self.skip_non_distributable && is_non_distributable(&desc.media_type) {
            return None;
        }
        Some(Record {
            name: blob_path(&desc.digest),
            mode: 0o444,
            size: desc.size,
            typeflag: TYPE_REG,
            body: Body::Blob(Box::new(desc.clone())),
        })
    }

    /// The records of a manifest (or nested index) and everything below it.
    fn records_below(
        &self,
        provider: &dyn Provider,
        desc: &Descriptor,
        algorithms: &mut BTreeSet<String>,
        records: &mut Vec<Record>,
    ) -> Result<()> {
        let found: std::cell::RefCell<Vec<Descriptor>> = Default::default();
        let collect = |d: &Descriptor| -> HandlerResult {
            found.borrow_mut().push(d.clone());
            Ok(Vec::new())
        };
        let chain: Vec<Box<dyn Handler + '_>> =
            vec![Box::new(children_handler(provider)), Box::new(collect)];
        walk(&Handlers(chain), std::slice::from_ref(desc))?;
        for d in found.into_inner() {
            algorithms.insert(d.digest.algorithm().to_string());
            records.extend(self.blob_record(&d));
        }
        Ok(())
    }

    fn manifests_record(
        &self,
        provider: &dyn Provider,
        manifests: &[(Descriptor, Vec<String>)],
    ) -> Result<Record> {
        let mut entries = Vec::new();
        for (desc, names) in manifests {
            let b = read_blob(provider, desc, MAX_MANIFEST_SIZE)?;
            let m: Manifest = crate::spec::decode(&b, desc)
                .map_err(|e| e.context("unable to create manifests file"))?;
            let layers = m.layers.iter().map(|l| blob_path(&l.digest)).collect();
            let mut tags = Vec::new();
            for n in names {
                tags.push(familiarize(n).map_err(|e| e.context(format!("failed to parse {n:?}")))?);
            }
            entries.push((blob_path(&m.config.digest), tags, layers));
        }
        let b = gojson::docker_manifests(&entries).into_bytes();
        Ok(Record {
            name: "manifest.json".into(),
            mode: 0o644,
            size: b.len() as i64,
            typeflag: TYPE_REG,
            body: Body::Bytes(b),
        })
    }

    fn copy_blob(
        &self,
        provider: &dyn Provider,
        desc: &Descriptor,
        out: &mut dyn Write,
    ) -> Result<()> {
        let r = provider
            .reader(desc, 0)
            .map_err(|e| e.context(format!("failed to get reader for {}", desc.digest)))?;
        let mut r = DigestingReader::new(r, desc.digest.algorithm());
        let mut buf = vec![0u8; 1 << 20];
        let mut copied: u64 = 0;
        let want = desc.size.max(0) as u64;
        loop {
            let n = r.read(&mut buf).map_err(|e| {
                Error::from(e).context(format!("failed to copy {} to tar", desc.digest))
            })?;
            if n == 0 {
                break;
            }
            if copied + n as u64 > want {
                return Err(Error::precondition(format!(
                    "unexpected copy size for {}: blob is larger than {} bytes",
                    blob_path(&desc.digest),
                    desc.size
                )));
            }
            out.write_all(&buf[..n])?;
            copied += n as u64;
            if let Some(p) = &self.progress {
                p(desc, copied);
            }
        }
        if r.digest() != desc.digest {
            return Err(Error::precondition(format!(
                "unexpected digest {} copied for {}",
                r.digest(),
                desc.digest
            )));
        }
        if copied != want {
            return Err(Error::precondition(format!(
                "unexpected copy size for {}: copied {copied} of {} bytes",
                blob_path(&desc.digest),
                desc.size
            )));
        }
        Ok(())
    }
}

impl Exporter for OciExporter {
    fn export(
        &self,
        provider: &dyn Provider,
        images: &[ExportImage],
        out: &mut dyn Write,
    ) -> Result<()> {
        let manifests: Vec<Descriptor> = images.iter().map(|i| i.target.clone()).collect();
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec();
        let index = gojson::index(&manifests).into_bytes();
        let mut records = vec![
            Record {
                name: "oci-layout".into(),
                mode: 0o444,
                size: layout.len() as i64,
                typeflag: TYPE_REG,
                body: Body::Bytes(layout),
            },
            Record {
                name: "index.json".into(),
                mode: 0o644,
                size: index.len() as i64,
                typeflag: TYPE_REG,
                body: Body::Bytes(index),
            },
        ];
        let mut algorithms = BTreeSet::new();
        // manifest digest -> position in `docker`; docker keeps insertion order
        let mut docker: Vec<(Descriptor, Vec<String>)> = Vec::new();
        let mut docker_pos: HashMap<Digest, usize> = HashMap::new();
        let mut resolved_index: HashMap<Digest, Option<Digest>> = HashMap::new();
        for desc in &manifests {
            let name = desc.annotations.get(ANNOTATION_IMAGE_NAME).cloned();
            if is_manifest_type(&desc.media_type) {
                let pos = match docker_pos.get(&desc.digest) {
                    Some(&p) => p,
                    None => {
                        self.records_below(provider, desc, &mut algorithms, &mut records)?;
                        docker.push((desc.clone(), Vec::new()));
                        docker_pos.insert(desc.digest.clone(), docker.len() - 1);
                        docker.len() - 1
                    }
                };
                if let Some(n) = name.filter(|n| !n.is_empty() && !self.skip_docker_manifest) {
                    docker[pos].1.push(n);
                }
            } else if is_index_type(&desc.media_type) {
                let d = match resolved_index.get(&desc.digest) {
                    Some(d) => d.clone(),
                    None => {
                        // as in containerd, the index blob alone does not add
                        // its algorithm's directory record
                        records.extend(self.blob_record(desc));
                        let idx = crate::spec::read_index(provider, desc)?;
                        let mut chosen = Vec::new();
                        for m in &idx.manifests {
                            if let Some(pm) = &self.platform {
                                if m.platform.as_ref().is_none_or(|p| pm.matches(p)) {
                                    chosen.push(m.clone());
                                } else if !self.all_platforms {
                                    continue;
                                }
                            }
                            self.records_below(provider, m, &mut algorithms, &mut records)?;
                        }
                        let mut d = None;
                        if !self.skip_docker_manifest {
                            if !chosen.is_empty() {
                                if let Some(pm) = &self.platform {
                                    sort_by_platform(pm.as_ref(), &mut chosen);
                                }
                                let first = chosen.swap_remove(0);
                                let dg = first.digest.clone();
                                match docker_pos.get(&dg) {
                                    // Go replaces the entry (and its names)
                                    Some(&p) => docker[p] = (first, Vec::new()),
                                    None => {
                                        docker.push((first, Vec::new()));
                                        docker_pos.insert(dg.clone(), docker.len() - 1);
                                    }
                                }
                                d = Some(dg);
                            } else if self.platform.is_some() {
                                return Err(Error::not_found(
                                    "no manifest found for platform: not found",
                                ));
                            }
                        }
                        resolved_index.insert(desc.digest.clone(), d.clone());
                        d
                    }
                };
                if let (Some(d), Some(n)) = (d, name.filter(|n| !n.is_empty())) {
                    if let Some(&p) = docker_pos.get(&d) {
                        docker[p].1.push(n);
                    }
                }
            } else {
                return Err(Error::invalid(format!(
                    "export {}: only manifests may be exported, not {}: invalid argument",
                    desc.digest, desc.media_type
                )));
            }
        }
        if !docker.is_empty() {
            records.push(self.manifests_record(provider, &docker)?);
        }
        if !algorithms.is_empty() {
            records.push(dir_record("blobs/"));
            for a in &algorithms {
                records.push(dir_record(&format!("blobs/{a}/")));
            }
        }
        records.sort_by(|a, b| a.name.cmp(&b.name));
        records.dedup_by(|b, a| a.name == b.name);
        for r in &records {
            gotar::write_header(out, &r.name, r.mode, r.size, r.typeflag)?;
            match &r.body {
                Body::Bytes(b) => out.write_all(b)?,
                Body::Blob(d) => self.copy_blob(provider, d, out)?,
                Body::Empty => {
                    if r.size > 0 {
                        return Err(Error::internal(format!(
                            "no content to write to record with non-zero size for {}",
                            r.name
                        )));
                    }
                }
            }
            gotar::finish_entry(out, r.size.max(0) as u64)?;
        }
        gotar::finish_archive(out)?;
        out.flush()?;
        Ok(())
    }
}

fn dir_record(name: &str) -> Record {
    Record {
        name: name.into(),
        mode: 0o755,
        size: 0,
        typeflag: TYPE_DIR,
        body: Body::Empty,
    }
}

/// Write a tar to a `Write`, counting nothing: a convenience for callers
/// that export to a file path.
pub fn export_to_file(
    exporter: &dyn Exporter,
    provider: &dyn Provider,
    images: &[ExportImage],
    path: &std::path::Path,
) -> Result<()> {
    let f = std::fs::File::create(path)?;
    let mut w = io::BufWriter::with_capacity(1 << 20, f);
    exporter.export(provider, images, &mut w)?;
    w.into_inner()
        .map_err(|e| Error::from(e.into_error()))?
        .sync_all()?;
    Ok(())
}
