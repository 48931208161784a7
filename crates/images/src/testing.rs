//! A small directory-backed content store implementing the library's content
//! traits, for tests and tools (not the daemon's store).
//!
//! Layout under its root:
//! - `blobs/<alg>/<hex>`: committed blobs (renamed into place after fsync-free
//!   verification: tests do not need crash safety);
//! - `ingest/<n>`: open ingests, removed on commit or abort.
//!
//! Labels live in memory.

use crate::content::{ContentWriter, Digester, Info, Ingester, LabelManager, Provider};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use stevedore_types::{Descriptor, Digest, Error, Result};

/// A content store in a directory.
#[derive(Clone)]
pub struct DirStore {
    root: PathBuf,
    labels: Arc<Mutex<HashMap<Digest, HashMap<String, String>>>>,
    next: Arc<AtomicU64>,
}

impl DirStore {
    /// Open (creating) a store at `root`.
    pub fn new(root: &Path) -> Result<Self> {
        fs::create_dir_all(root.join("blobs"))?;
        fs::create_dir_all(root.join("ingest"))?;
        Ok(DirStore {
            root: root.to_path_buf(),
            labels: Default::default(),
            next: Default::default(),
        })
    }
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }
    /// Store bytes directly and return their descriptor.
    pub fn put(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
        let d = crate::content::digest_of(bytes);
        let p = self.blob_path(&d);
        fs::create_dir_all(p.parent().unwrap_or(&self.root))?;
        fs::write(&p, bytes)?;
        Ok(Descriptor::new(media_type, d, bytes.len() as i64))
    }
    /// Remove a blob (to simulate missing content).
    pub fn delete(&self, d: &Digest) -> Result<()> {
        Ok(fs::remove_file(self.blob_path(d))?)
    }
    /// Every committed digest.
    pub fn list(&self) -> Result<Vec<Digest>> {
        let mut out = Vec::new();
        for alg in fs::read_dir(self.root.join("blobs"))? {
            let alg = alg?;
            for f in fs::read_dir(alg.path())? {
                let f = f?;
                let s = format!(
                    "{}:{}",
                    alg.file_name().to_string_lossy(),
                    f.file_name().to_string_lossy()
                );
                out.push(s.parse()?);
            }
        }
        out.sort();
        Ok(out)
    }
    /// Number of ingests still open or left behind.
    pub fn open_ingests(&self) -> Result<usize> {
        Ok(fs::read_dir(self.root.join("ingest"))?.count())
    }
    /// The labels of a blob.
    pub fn labels(&self, d: &Digest) -> HashMap<String, String> {
        self.labels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(d)
            .cloned()
            .unwrap_or_default()
    }
}

impl Provider for DirStore {
    fn info(&self, digest: &Digest) -> Result<Info> {
        let md = fs::metadata(self.blob_path(digest))
            .map_err(|e| Error::from(e).context(format!("content {digest}")))?;
        Ok(Info {
            digest: digest.clone(),
            size: md.len() as i64,
            labels: self.labels(digest),
        })
    }
    fn reader(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send>> {
        let mut f = File::open(self.blob_path(&desc.digest))
            .map_err(|e| Error::from(e).context(format!("content {}", desc.digest)))?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(f))
    }
}

struct DirWriter {
    store: DirStore,
    reference: String,
    path: PathBuf,
    file: File,
    digester: Digester,
    written: i64,
    expected_size: Option<i64>,
}

impl Write for DirWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.digester.update(&buf[..n]);
        self.written += n as i64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl ContentWriter for DirWriter {
    fn commit(
        self: Box<Self>,
        size: i64,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let fail = |msg: String| {
            let _ = fs::remove_file(&self.path);
            Err(Error::precondition(msg))
        };
        if size > 0 && size != self.written {
            return fail(format!(
                "commit {}: unexpected commit size {}, expected {size}",
                self.reference, self.written
            ));
        }
        if let Some(es) = self.expected_size {
            if es != self.written {
                return fail(format!(
                    "commit {}: unexpected commit size {}, expected {es}",
                    self.reference, self.written
                ));
            }
        }
        let actual = self.digester.digest();
        if &actual != digest {
            return fail(format!(
                "commit {}: unexpected commit digest {actual}, expected {digest}",
                self.reference
            ));
        }
        let target = self.store.blob_path(digest);
        if target.exists() {
            let _ = fs::remove_file(&self.path);
            return Err(Error::already_exists(format!(
                "content {digest}: already exists"
            )));
        }
        fs::create_dir_all(target.parent().unwrap_or(&self.store.root))?;
        fs::rename(&self.path, &target)?;
        if !labels.is_empty() {
            self.store
                .labels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(digest.clone())
                .or_default()
                .extend(labels);
        }
        Ok(())
    }
    fn abort(self: Box<Self>) -> Result<()> {
        fs::remove_file(&self.path)?;
        Ok(())
    }
}

impl Ingester for DirStore {
    fn writer(
        &self,
        reference: &str,
        expected_size: Option<i64>,
        expected_digest: Option<&Digest>,
    ) -> Result<Box<dyn ContentWriter>> {
        if let Some(d) = expected_digest {
            if self.blob_path(d).exists() {
                return Err(Error::already_exists(format!(
                    "content {d}: already exists"
                )));
            }
        }
        let alg = expected_digest
            .map(|d| d.algorithm())
            .unwrap_or(stevedore_types::Algorithm::Sha256);
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        let path = self.root.join("ingest").join(n.to_string());
        let file = File::create(&path)?;
        Ok(Box::new(DirWriter {
            store: self.clone(),
            reference: reference.to_string(),
            path,
            file,
            digester: Digester::new(alg),
            written: 0,
            expected_size,
        }))
    }
}

impl LabelManager for DirStore {
    fn set_labels(&self, digest: &Digest, labels: &[(String, String)]) -> Result<()> {
        if !self.blob_path(digest).exists() {
            return Err(Error::not_found(format!("content {digest}: not found")));
        }
        let mut all = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        let entry = all.entry(digest.clone()).or_default();
        for (k, v) in labels {
            if v.is_empty() {
                entry.remove(k);
            } else {
                entry.insert(k.clone(), v.clone());
            }
        }
        Ok(())
    }
}

/// An uncompressed layer tar holding the given files (mode 0644, mtime 0).
pub fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data)
            .expect("append to in-memory tar");
    }
    b.into_inner().expect("finish in-memory tar")
}

/// gzip bytes.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip to memory");
    e.finish().expect("gzip to memory")
}

/// Store a single-platform image (config + layers + manifest) built from
/// uncompressed layer tars; returns the manifest descriptor with its
/// platform set. Docker media types when `docker`, gzip layers when `gz`.
pub fn put_image(
    store: &DirStore,
    platform: &stevedore_types::Platform,
    layers: &[Vec<u8>],
    docker: bool,
    gz: bool,
) -> Result<Descriptor> {
    use crate::mediatypes::*;
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        diff_ids.push(crate::content::digest_of(l).to_string());
        let (mt, bytes) = match (docker, gz) {
            (true, true) => (DOCKER_LAYER_GZIP, gzip(l)),
            (true, false) => (DOCKER_LAYER, l.clone()),
            (false, true) => (OCI_LAYER_GZIP, gzip(l)),
            (false, false) => (OCI_LAYER, l.clone()),
        };
        layer_descs.push(store.put(mt, &bytes)?);
    }
    let mut cfg = serde_json::json!({
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "stevedore test"}],
    });
    if !platform.variant.is_empty() {
        cfg["variant"] = platform.variant.clone().into();
    }
    let config = store.put(
        if docker { DOCKER_CONFIG } else { OCI_CONFIG },
        &serde_json::to_vec(&cfg).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    let manifest = crate::spec::Manifest {
        schema_version: 2,
        media_type: if docker {
            DOCKER_MANIFEST
        } else {
            OCI_MANIFEST
        }
        .into(),
        config,
        layers: layer_descs,
        annotations: Default::default(),
    };
    let mut d = store.put(
        &manifest.media_type,
        &serde_json::to_vec(&manifest).map_err(|e| Error::internal(e.to_string()))?,
    )?;
    d.platform = Some(platform.clone());
    Ok(d)
}

/// Store an index (or Docker manifest list) over the given manifests.
pub fn put_index(store: &DirStore, manifests: &[Descriptor], docker: bool) -> Result<Descriptor> {
    use crate::mediatypes::*;
    let mt = if docker {
        DOCKER_MANIFEST_LIST
    } else {
        OCI_INDEX
    };
    let idx = crate::spec::Index {
        schema_version: 2,
        media_type: mt.into(),
        manifests: manifests.to_vec(),
        annotations: Default::default(),
    };
    store.put(
        mt,
        &serde_json::to_vec(&idx).map_err(|e| Error::internal(e.to_string()))?,
    )
}

/// The behaviour the images library relies on from a content store, as one
/// conformance check any implementation of the content traits can run
/// (`DirStore` runs it in its tests; the real store should too). Panics
/// with a message naming the broken expectation.
pub fn content_conformance(store: &dyn crate::content::Store) {
    use crate::content::digest_of;
    use stevedore_types::ErrorKind;
    let data = b"stevedore conformance blob".to_vec();
    let d = digest_of(&data);
    let desc = Descriptor::new("application/octet-stream", d.clone(), data.len() as i64);
    assert_eq!(
        store.info(&d).map(|_| ()).unwrap_err().kind,
        ErrorKind::NotFound,
        "info of an absent blob must be NotFound"
    );

    // a commit with the wrong digest fails and leaves nothing visible
    let mut w = store
        .writer("conf-bad", Some(data.len() as i64), None)
        .expect("open writer");
    w.write_all(&data).expect("write");
    let wrong = digest_of(b"something else");
    assert!(
        w.commit(data.len() as i64, &wrong, HashMap::new()).is_err(),
        "commit with a wrong digest must fail"
    );
    assert!(
        store.info(&wrong).is_err() && store.info(&d).is_err(),
        "a failed commit must not make content visible"
    );

    // a commit with the wrong size fails
    let mut w = store.writer("conf-size", None, None).expect("open writer");
    w.write_all(&data).expect("write");
    assert!(
        w.commit(data.len() as i64 + 1, &d, HashMap::new()).is_err(),
        "commit with a wrong size must fail"
    );
    assert!(store.info(&d).is_err());

    // an aborted ingest leaves nothing
    let mut w = store
        .writer("conf-abort", Some(data.len() as i64), Some(&d))
        .expect("open writer");
    w.write_all(&data).expect("write");
    w.abort().expect("abort");
    assert!(
        store.info(&d).is_err(),
        "an aborted ingest must not make content visible"
    );

    // a good commit, with labels; reads from an offset
    let mut w = store
        .writer("conf-ok", Some(data.len() as i64), Some(&d))
        .expect("open writer");
    w.write_all(&data).expect("write");
    let labels = HashMap::from([("a".to_string(), "1".to_string())]);
    w.commit(data.len() as i64, &d, labels).expect("commit");
    let info = store.info(&d).expect("info after commit");
    assert_eq!(info.size, data.len() as i64);
    assert_eq!(
        info.labels.get("a").map(String::as_str),
        Some("1"),
        "commit labels"
    );
    let mut r = store.reader(&desc, 5).expect("reader at offset");
    let mut got = Vec::new();
    r.read_to_end(&mut got).expect("read");
    assert_eq!(got, &data[5..], "reader must start at the offset");

    // writers for existing content report AlreadyExists (open or commit)
    match store.writer("conf-again", Some(data.len() as i64), Some(&d)) {
        Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists),
        Ok(mut w) => {
            w.write_all(&data).expect("write");
            let e = w.commit(data.len() as i64, &d, HashMap::new()).unwrap_err();
            assert_eq!(
                e.kind,
                ErrorKind::AlreadyExists,
                "committing existing content"
            );
        }
    }

    // labels: set, keep others, remove with an empty value
    store
        .set_labels(&d, &[("b".into(), "2".into()), ("a".into(), String::new())])
        .expect("set labels");
    let l = store.info(&d).expect("info").labels;
    assert_eq!(l.get("b").map(String::as_str), Some("2"));
    assert!(!l.contains_key("a"), "an empty value removes a label");
    assert_eq!(
        store
            .set_labels(&wrong, &[("x".into(), "y".into())])
            .unwrap_err()
            .kind,
        ErrorKind::NotFound,
        "labelling absent content"
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn dir_store_passes_the_content_conformance_check() {
        let dir = tempfile::tempdir().unwrap();
        let s = super::DirStore::new(dir.path()).unwrap();
        super::content_conformance(&s);
        assert_eq!(s.open_ingests().unwrap(), 0);
    }
}
