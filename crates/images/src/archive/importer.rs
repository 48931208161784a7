//! Importing image archives: OCI image layout v1 tars and Docker `save` tars
//! (v1.1/v1.2: `manifest.json`, `repositories`, `<id>/layer.tar`), in one
//! streaming pass, as containerd 1.6's `archive.ImportIndex` plus
//! `Client.Import` do.
//!
//! Every regular file of the tar is ingested as a blob while being hashed
//! (never buffered; only `oci-layout` and `manifest.json` are parsed in
//! memory, at most 20 MiB). A blob under `blobs/<alg>/<hex>` must hash to
//! that digest. Then the OCI `index.json` (or, for Docker tars, a Docker
//! schema2 manifest per image and an index over them) is walked with the
//! platform matcher: children GC labels are set on indexes and manifests,
//! every walked blob must be present, and image records are derived from
//! the name annotations.
//!
//! On failure the ingest in flight is aborted and no image record is
//! returned. Blobs committed before the failure stay in the store,
//! unreferenced: as with containerd, callers import under a lease and drop
//! it on failure, so garbage collection removes them.

use super::gojson;
use crate::content::{write_blob, ContentWriter, DigestingReader, Store, MAX_JSON_SIZE};
use crate::handlers::{
    children, filter_platforms, set_children_labels, walk_not_empty, HandlerResult,
};
use crate::image::platforms;
use crate::mediatypes::*;
use crate::reference::{normalize_docker_ref, oci_reference_name};
use crate::spec::{read_index, ImageLayout};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use stevedore_types::limits::MAX_LAYERS;
use stevedore_types::platform::MatchPlatform;
use stevedore_types::{Algorithm, Descriptor, Digest, Error, ErrorKind, Result};

/// An image record for the caller to create (or update the target of).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub name: String,
    pub target: Descriptor,
    pub labels: HashMap<String, String>,
}

/// Reads image archives into a content store (seed 001's `Importer`).
pub trait Importer {
    /// Ingest the archive and return the image records to create.
    fn import(&self, store: &dyn Store, reader: &mut dyn Read) -> Result<Vec<ImageRecord>>;
}

/// Which archive layouts an importer accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OCI layout when `oci-layout` is present, else Docker (containerd's default).
    Auto,
    /// OCI image layout v1 only.
    Oci,
    /// Docker `save` (`manifest.json`) only.
    Docker,
}

/// How `org.opencontainers.image.ref.name` values become image names
/// (containerd's `AddRefPrefix` / `FilterRefPrefix`). Names from the
/// `io.containerd.image.name` annotation are used as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefNames {
    /// Use the ref name as it is.
    AsIs,
    /// Tag-only refs get `<prefix>:`; full refs are kept.
    AddPrefix(String),
    /// Like AddPrefix, but full refs outside the prefix are dropped.
    FilterPrefix(String),
}

/// Progress callback: an archive entry's name and the bytes read so far.
pub type ImportProgress = Box<dyn Fn(&str, u64) + Send + Sync>;

/// Import options, as `ctr images import` flags set them.
pub struct ImportOptions {
    pub format: Format,
    pub ref_names: RefNames,
    /// Create `<prefix>@<digest>` images for each manifest (`--digests`).
    pub digest_prefix: Option<String>,
    /// Only for unnamed manifests (`--skip-digest-for-named`).
    pub skip_digest_for_named: bool,
    /// Keep the index itself as an image of this name (`--index-name`).
    pub index_name: Option<String>,
    /// Platforms whose content is labelled and checked (`--platform`,
    /// `--all-platforms`); containerd's default is the host's.
    pub platform: Box<dyn MatchPlatform>,
    /// gzip uncompressed Docker layers (`--compress-blobs`).
    pub compress_blobs: bool,
    /// Labels of the created image records.
    pub labels: HashMap<String, String>,
    /// Entries declaring more bytes than this are refused.
    pub max_blob_size: i64,
    /// Called with each entry's name and bytes read so far.
    pub progress: Option<ImportProgress>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            format: Format::Auto,
            ref_names: RefNames::AsIs,
            digest_prefix: None,
            skip_digest_for_named: false,
            index_name: None,
            platform: Box::new(stevedore_types::platform::default_matcher()),
            compress_blobs: false,
            labels: HashMap::new(),
            max_blob_size: 1 << 40,
            progress: None,
        }
    }
}

impl ImportOptions {
    /// `ctr images import` without `--base-name`: tag-only refs become
    /// `import-<yyyy-mm-dd>:<tag>` (today's date, UTC).
    pub fn ctr_default() -> Self {
        let days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / 86400) as i64;
        let (y, m, d) = civil_from_days(days);
        ImportOptions {
            ref_names: RefNames::AddPrefix(format!("import-{y:04}-{m:02}-{d:02}")),
            ..Default::default()
        }
    }
    /// `ctr images import --base-name <name>`: only refs under the name.
    pub fn base_name(name: &str) -> Self {
        ImportOptions {
            ref_names: RefNames::FilterPrefix(name.to_string()),
            ..Default::default()
        }
    }
    /// Seed 001's `--oci-name foo/bar`: `foo/bar:<tag>` for tagged refs and
    /// `foo/bar@<digest>` for every manifest.
    pub fn oci_name(name: &str) -> Self {
        ImportOptions {
            ref_names: RefNames::AddPrefix(name.to_string()),
            digest_prefix: Some(name.to_string()),
            ..Default::default()
        }
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The importer for OCI and Docker archives.
#[derive(Default)]
pub struct ArchiveImporter {
    pub options: ImportOptions,
}

impl ArchiveImporter {
    pub fn new(options: ImportOptions) -> Self {
        ArchiveImporter { options }
    }
}

impl Importer for ArchiveImporter {
    fn import(&self, store: &dyn Store, reader: &mut dyn Read) -> Result<Vec<ImageRecord>> {
        let index = import_index(store, reader, &self.options)?;
        image_records(store, &index, &self.options)
    }
}

#[derive(Deserialize)]
struct DockerManifest {
    #[serde(rename = "Config", default)]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Option<Vec<String>>,
}

/// A blob found in the archive, and how its bytes start (for compression).
#[derive(Clone)]
struct Found {
    desc: Descriptor,
    head: Vec<u8>,
}

/// Go's `path.Clean` for tar entry names; refuses names escaping the archive.
fn clean_name(raw: &str) -> Result<String> {
    if raw.starts_with('/') {
        return Err(Error::invalid(format!(
            "archive entry {raw:?}: absolute paths are not allowed"
        )));
    }
    let mut parts: Vec<&str> = Vec::new();
    for p in raw.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(Error::invalid(format!(
                        "archive entry {raw:?}: path escapes the archive root"
                    )));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn expected_digest(name: &str) -> Option<Digest> {
    let rest = name.strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    format!("{alg}:{hex}").parse().ok()
}

fn read_json<T: serde::de::DeserializeOwned>(r: &mut dyn Read, size: u64, name: &str) -> Result<T> {
    if size > MAX_JSON_SIZE as u64 {
        return Err(Error::invalid(format!(
            "archive entry {name}: {size} bytes exceeds the limit of {MAX_JSON_SIZE} for JSON files"
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    r.take(size).read_to_end(&mut buf)?;
    if (buf.len() as u64) < size {
        return Err(Error::invalid(format!(
            "archive entry {name}: truncated ({} of {size} bytes)",
            buf.len()
        )));
    }
    serde_json::from_slice(&buf).map_err(|e| Error::invalid(format!("untar {name}: {e}")))
}

/// Stream one entry into the store, hashing it; returns its digest and head.
fn ingest_entry(
    store: &dyn Store,
    r: &mut dyn Read,
    name: &str,
    size: u64,
    opts: &ImportOptions,
) -> Result<Found> {
    let expected = expected_digest(name);
    let alg = expected
        .as_ref()
        .map_or(Algorithm::Sha256, |d| d.algorithm());
    let mut src = DigestingReader::new(r.take(size), alg);
    let reference = format!("tar-{name}");
    let mut writer: Option<Box<dyn ContentWriter>> =
        match store.writer(&reference, Some(size as i64), expected.as_ref()) {
            Ok(w) => Some(w),
            Err(e) if e.is(ErrorKind::AlreadyExists) => None,
            Err(e) => return Err(e.context(format!("failed to ingest {name:?}"))),
        };
    let mut head = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    let res: Result<()> = (|| {
        loop {
            let n = src.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if head.len() < 10 {
                let k = (10 - head.len()).min(n);
                head.extend_from_slice(&buf[..k]);
            }
            if let Some(w) = writer.as_mut() {
                w.write_all(&buf[..n])?;
            }
            if let Some(p) = &opts.progress {
                p(name, src.count());
            }
        }
        if src.count() != size {
            return Err(Error::invalid(format!(
                "archive truncated: entry {name:?} has {} of {size} bytes",
                src.count()
            )));
        }
        if let Some(e) = &expected {
            if &src.digest() != e {
                return Err(Error::invalid(format!(
                    "archive entry {name:?}: content has digest {}, not the {e} its name promises",
                    src.digest()
                )));
            }
        }
        Ok(())
    })();
    let digest = src.digest();
    if let Err(e) = res {
        if let Some(w) = writer {
            let _ = w.abort();
        }
        return Err(e.context(format!("failed to ingest {name:?}")));
    }
    if let Some(w) = writer {
        match w.commit(size as i64, &digest, HashMap::new()) {
            Ok(()) => {}
            Err(e) if e.is(ErrorKind::AlreadyExists) => {}
            Err(e) => return Err(e.context(format!("failed to ingest {name:?}"))),
        }
    }
    Ok(Found {
        desc: Descriptor::new("", digest, size as i64),
        head,
    })
}

/// Ingest the archive; return the descriptor of the index describing it
/// (containerd's `archive.ImportIndex`).
pub fn import_index(
    store: &dyn Store,
    reader: &mut dyn Read,
    opts: &ImportOptions,
) -> Result<Descriptor> {
    // headers are read 512 bytes at a time: buffer them
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, reader));
    let mut layout: Option<ImageLayout> = None;
    let mut docker: Option<Vec<DockerManifest>> = None;
    let mut symlinks: Vec<(String, String)> = Vec::new();
    let mut blobs: HashMap<String, Found> = HashMap::new();
    let bad_tar =
        |e: io::Error| Error::invalid(format!("read archive: truncated or corrupt tar: {e}"));
    for entry in archive.entries().map_err(bad_tar)? {
        let mut entry = entry.map_err(bad_tar)?;
        let raw = entry
            .path()
            .map_err(bad_tar)?
            .to_string_lossy()
            .into_owned();
        let name = clean_name(&raw)?;
        let kind = entry.header().entry_type();
        if kind == tar::EntryType::Symlink {
            let link = entry
                .link_name()
                .map_err(bad_tar)?
                .map(|l| l.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
            let target = clean_name(&if link.starts_with('/') {
                link.clone()
            } else {
                format!("{dir}/{link}")
            })?;
            symlinks.push((name, target));
            continue;
        }
        if kind != tar::EntryType::Regular {
            continue;
        }
        let size = entry.size();
        if size > opts.max_blob_size as u64 {
            return Err(Error::invalid(format!(
                "archive entry {name:?} declares {size} bytes, more than the limit of {}",
                opts.max_blob_size
            )));
        }
        match name.as_str() {
            "oci-layout" => layout = Some(read_json(&mut entry, size, &name)?),
            "manifest.json" => docker = Some(read_json(&mut entry, size, &name)?),
            _ => {
                let found = ingest_entry(store, &mut entry, &name, size, opts)?;
                blobs.insert(name, found);
            }
        }
    }

    let use_oci = match opts.format {
        Format::Oci => true,
        Format::Docker => false,
        Format::Auto => layout.is_some(),
    };
    if use_oci {
        let layout = layout.ok_or_else(|| {
            Error::invalid("not an OCI image layout: the archive has no oci-layout file")
        })?;
        if layout.version != OCI_LAYOUT_VERSION {
            return Err(Error::invalid(format!(
                "unsupported OCI version {}",
                layout.version
            )));
        }
        let mut idx = blobs
            .get("index.json")
            .ok_or_else(|| {
                Error::invalid(format!(
                    "missing index.json in OCI layout {OCI_LAYOUT_VERSION}"
                ))
            })?
            .desc
            .clone();
        idx.media_type = OCI_INDEX.into();
        return Ok(idx);
    }
    let mfsts = docker.ok_or_else(|| {
        Error::invalid("unrecognized image format: neither oci-layout nor manifest.json found")
    })?;
    for (name, target) in symlinks {
        let f = blobs.get(&target).cloned().ok_or_else(|| {
            Error::invalid(format!(
                "no target for symlink layer from {name:?} to {target:?}"
            ))
        })?;
        blobs.insert(name, f);
    }
    let mut manifests = Vec::new();
    for m in &mfsts {
        let n = m.layers.as_ref().map_or(0, Vec::len);
        if n > MAX_LAYERS {
            return Err(Error::invalid(format!(
                "archive manifest.json: image {:?}: {n} layers exceed the limit of {MAX_LAYERS}",
                m.config
            )));
        }
        let cfg_name = clean_name(&m.config)?;
        let mut config = blobs
            .get(&cfg_name)
            .ok_or_else(|| Error::invalid(format!("image config {:?} not found", m.config)))?
            .desc
            .clone();
        config.media_type = DOCKER_CONFIG.into();
        let mut layers = Vec::new();
        for l in m.layers.iter().flatten() {
            let f = blobs
                .get(&clean_name(l)?)
                .ok_or_else(|| {
                    Error::invalid(format!("failed to resolve layers: layer {l:?} not found"))
                })?
                .clone();
            layers.push(resolve_layer(store, f, opts.compress_blobs)?);
        }
        let body = format!(
            "{{\"schemaVersion\":2,\"mediaType\":{},\"config\":{},\"layers\":[{}]}}",
            gojson::string(DOCKER_MANIFEST),
            gojson::descriptor(&config),
            layers
                .iter()
                .map(gojson::descriptor)
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut desc = write_json(store, body.as_bytes(), DOCKER_MANIFEST)
            .map_err(|e| e.context("write docker manifest"))?;
        let plats = platforms(store.as_provider(), &desc)
            .map_err(|e| e.context("unable to resolve platform"))?;
        desc.platform = plats.into_iter().next();
        match m.repo_tags.as_deref() {
            None | Some([]) => manifests.push(desc),
            Some(tags) => {
                for t in tags {
                    let normalized = normalize_docker_ref(t)?;
                    let mut d = desc.clone();
                    d.annotations
                        .insert(ANNOTATION_REF_NAME.into(), oci_reference_name(&normalized));
                    d.annotations
                        .insert(ANNOTATION_IMAGE_NAME.into(), normalized);
                    manifests.push(d);
                }
            }
        }
    }
    write_json(store, gojson::index(&manifests).as_bytes(), OCI_INDEX)
}

fn is_gzip(head: &[u8]) -> bool {
    head.starts_with(&[0x1f, 0x8b, 0x08])
}

fn is_zstd(head: &[u8]) -> bool {
    head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
}

fn resolve_layer(store: &dyn Store, f: Found, compress: bool) -> Result<Descriptor> {
    let mut d = f.desc;
    if f.head.is_empty()
        || !(is_gzip(&f.head)
            || is_zstd(&f.head)
            || f.head.starts_with(b"BZh")
            || f.head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]))
    {
        if compress {
            return compress_layer(store, &d);
        }
        d.media_type = DOCKER_LAYER.into();
    } else {
        d.media_type = DOCKER_LAYER_GZIP.into();
    }
    Ok(d)
}

/// gzip an uncompressed layer into a new blob labelled with its diff ID.
fn compress_layer(store: &dyn Store, layer: &Descriptor) -> Result<Descriptor> {
    let reference = format!(
        "compress-blob-{}-{}",
        layer.digest.algorithm(),
        layer.digest.hex()
    );
    let mut w = store.writer(&reference, None, None)?;
    let res: Result<(Digest, i64)> = (|| {
        let mut src = store.reader(layer, 0)?;
        let counting = CountingWriter {
            inner: &mut w,
            digester: crate::content::Digester::new(Algorithm::Sha256),
            n: 0,
        };
        let mut gz = flate2::write::GzEncoder::new(counting, flate2::Compression::default());
        io::copy(&mut src, &mut gz)?;
        let c = gz.finish()?;
        Ok((c.digester.digest(), c.n))
    })();
    match res {
        Ok((digest, size)) => {
            let labels =
                HashMap::from([(LABEL_UNCOMPRESSED.to_string(), layer.digest.to_string())]);
            match w.commit(size, &digest, labels) {
                Ok(()) => {}
                Err(e) if e.is(ErrorKind::AlreadyExists) => {}
                Err(e) => return Err(e.context("failed to commit compressed layer")),
            }
            Ok(Descriptor::new(DOCKER_LAYER_GZIP, digest, size))
        }
        Err(e) => {
            let _ = w.abort();
            Err(e.context(format!("compress layer {}", layer.digest)))
        }
    }
}

struct CountingWriter<'a> {
    inner: &'a mut Box<dyn ContentWriter>,
    digester: crate::content::Digester,
    n: i64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digester.update(&buf[..n]);
        self.n += n as i64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn write_json(store: &dyn Store, bytes: &[u8], media_type: &str) -> Result<Descriptor> {
    let desc = Descriptor::new(
        media_type,
        crate::content::digest_of(bytes),
        bytes.len() as i64,
    );
    write_blob(
        store.as_ingester(),
        &format!("manifest-{}", desc.digest),
        &mut &bytes[..],
        &desc,
        HashMap::new(),
    )?;
    Ok(desc)
}

fn translate_ref(ref_names: &RefNames, name: &str) -> String {
    let (prefix, check) = match ref_names {
        RefNames::AsIs => return name.to_string(),
        RefNames::AddPrefix(p) => (p, false),
        RefNames::FilterPrefix(p) => (p, true),
    };
    if name.contains(['/', ':', '@']) {
        if check && !is_image_prefix(name, prefix) {
            return String::new();
        }
        return name.to_string();
    }
    format!("{prefix}:{name}")
}

fn is_image_prefix(s: &str, prefix: &str) -> bool {
    if !s.starts_with(prefix) {
        return false;
    }
    match s.as_bytes().get(prefix.len()) {
        None => true,
        Some(b'/' | b':' | b'@') => true,
        Some(_) => false,
    }
}

fn image_name(annotations: &BTreeMap<String, String>, ref_names: &RefNames) -> String {
    if let Some(n) = annotations
        .get(ANNOTATION_IMAGE_NAME)
        .filter(|n| !n.is_empty())
    {
        return n.clone();
    }
    match annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|n| !n.is_empty())
    {
        Some(n) => translate_ref(ref_names, n),
        None => String::new(),
    }
}

/// Walk the imported index with the platform matcher, setting children GC
/// labels and checking that the content is present, and derive the image
/// records (containerd's `Client.Import` minus the image store writes).
pub fn image_records(
    store: &dyn Store,
    index: &Descriptor,
    opts: &ImportOptions,
) -> Result<Vec<ImageRecord>> {
    let mut records: Vec<ImageRecord> = Vec::new();
    let record = |name: String, target: &Descriptor| ImageRecord {
        name,
        target: target.clone(),
        labels: opts.labels.clone(),
    };
    if let Some(n) = &opts.index_name {
        records.push(record(n.clone(), index));
    }
    let found: std::cell::RefCell<Vec<ImageRecord>> = Default::default();
    let visited: std::cell::RefCell<Vec<Descriptor>> = Default::default();
    let top = |d: &Descriptor| -> HandlerResult {
        visited.borrow_mut().push(d.clone());
        if d.digest != index.digest {
            return Ok(children(store.as_provider(), d)?);
        }
        let idx = read_index(store.as_provider(), d)?;
        for m in &idx.manifests {
            let name = image_name(&m.annotations, &opts.ref_names);
            if !name.is_empty() {
                found.borrow_mut().push(record(name.clone(), m));
            }
            if opts.skip_digest_for_named && !name.is_empty() {
                continue;
            }
            if let Some(p) = &opts.digest_prefix {
                found
                    .borrow_mut()
                    .push(record(format!("{p}@{}", m.digest), m));
            }
        }
        Ok(idx.manifests)
    };
    {
        let h = set_children_labels(
            store.as_label_manager(),
            filter_platforms(top, opts.platform.as_ref()),
            None,
        );
        walk_not_empty(&h, std::slice::from_ref(index)).map_err(|e| {
            if e.is(ErrorKind::NotFound) {
                e.context("import: content referenced by the archive is missing or filtered out")
            } else {
                e
            }
        })?;
    }
    for d in visited.into_inner() {
        if let Err(e) = store.info(&d.digest) {
            if e.is(ErrorKind::NotFound) {
                return Err(Error::invalid(format!(
                    "import: blob {} ({}) is referenced but missing from the archive",
                    d.digest, d.media_type
                )));
            }
            return Err(e);
        }
    }
    records.extend(found.into_inner());
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_names_like_ctr() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_415), (2025, 11, 23));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let p = RefNames::AddPrefix("foo/bar".into());
        assert_eq!(translate_ref(&p, "latest"), "foo/bar:latest");
        assert_eq!(translate_ref(&p, "x.io/y:1"), "x.io/y:1");
        let f = RefNames::FilterPrefix("foo/bar".into());
        assert_eq!(translate_ref(&f, "foo/bar:2"), "foo/bar:2");
        assert_eq!(translate_ref(&f, "foo/barz:2"), "");
        assert_eq!(clean_name("./a//b/../c").unwrap(), "a/c");
        assert!(clean_name("a/../../b").is_err());
    }
}
