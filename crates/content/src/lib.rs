//! The content store: blobs addressed by digest, written through resumable
//! ingests that hash on the fly and are verified before they become visible.
//!
//! [`Store`] is the interface (containerd's `content.Store`); [`local::LocalStore`]
//! is the on-disk implementation (its module documents the layout and the
//! crash-safety argument). The metadata crate wraps a local store into a
//! namespaced store with labels and leases that implements the same trait, and
//! [`testsuite`] is the conformance suite every implementation runs.
//!
//! Everything here blocks (file I/O); async callers use a blocking pool.

pub mod local;
pub mod testsuite;

use std::collections::HashMap;
use std::time::SystemTime;
use stevedore_types::filters::{Adaptor, Filter};
use stevedore_types::{Digest, Result};

/// What the store knows about a committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: i64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub labels: HashMap<String, String>,
}

impl Adaptor for Info {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "digest" => Some(self.digest.to_string()),
            "size" => Some(self.size.to_string()),
            "labels" => {
                let key = path[1..].join(".");
                self.labels.get(&key).cloned()
            }
            _ => None,
        }
    }
}

/// The state of an active ingest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub reference: String,
    /// Bytes written so far.
    pub offset: i64,
    /// Expected total size (0 when unknown).
    pub total: i64,
    pub expected: Option<Digest>,
    pub started_at: SystemTime,
    pub updated_at: SystemTime,
}

impl Adaptor for Status {
    fn field(&self, path: &[String]) -> Option<String> {
        match path.first().map(String::as_str)? {
            "ref" => Some(self.reference.clone()),
            _ => None,
        }
    }
}

/// Random access to a committed blob.
pub trait ReaderAt: Send + Sync {
    /// Read up to `buf.len()` bytes at `offset`; 0 means end of blob.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize>;
    /// The blob's size in bytes.
    fn size(&self) -> u64;
}

/// How to open a writer: the ingest reference and, optionally, what the
/// caller expects the blob to be.
#[derive(Debug, Clone, Default)]
pub struct WriterOpts {
    pub reference: String,
    /// Expected size; 0 when unknown.
    pub total: i64,
    pub expected: Option<Digest>,
}

impl WriterOpts {
    pub fn new(reference: impl Into<String>) -> Self {
        WriterOpts {
            reference: reference.into(),
            ..Default::default()
        }
    }
    pub fn total(mut self, total: i64) -> Self {
        self.total = total;
        self
    }
    pub fn expected(mut self, d: Digest) -> Self {
        self.expected = Some(d);
        self
    }
}

/// An open ingest. It holds the ingest's lock until dropped or committed.
pub trait Writer: Send {
    /// Append data (the ingest is append-only), hashing it on the way.
    fn write(&mut self, data: &[u8]) -> Result<()>;
    /// Append owned bytes, as `write` does; a store may write them on
    /// another thread while it hashes them (both done when this returns).
    /// Defaults to `write`.
    fn write_bytes(&mut self, data: bytes::Bytes) -> Result<()> {
        self.write(&data)
    }
    /// Offset, totals and times of this ingest.
    fn status(&self) -> Result<Status>;
    /// The digest of the bytes written so far.
    fn digest(&self) -> Digest;
    /// Restart the ingest from `size` bytes; only 0 is supported.
    fn truncate(&mut self, size: i64) -> Result<()>;
    /// Verify size (when non-zero) and digest (when given) and make the blob
    /// visible, with `labels`. Returns the committed digest. An existing blob
    /// yields AlreadyExists (the ingest is gone either way).
    fn commit(
        &mut self,
        size: i64,
        expected: Option<&Digest>,
        labels: HashMap<String, String>,
    ) -> Result<Digest>;
}

/// containerd's content store interface.
pub trait Store: Send + Sync {
    fn info(&self, digest: &Digest) -> Result<Info>;
    /// Update labels. `paths` empty or `labels` replaces all; `labels.<k>` one key.
    fn update(&self, info: Info, paths: &[String]) -> Result<Info>;
    /// Every blob matching `filter`.
    fn list(&self, filter: &Filter) -> Result<Vec<Info>>;
    fn delete(&self, digest: &Digest) -> Result<()>;
    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>>;
    /// Open (or resume) the ingest named by `opts.reference`. A second writer
    /// on a reference that is in use gets Unavailable.
    fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>>;
    fn status(&self, reference: &str) -> Result<Status>;
    fn list_statuses(&self, filter: &Filter) -> Result<Vec<Status>>;
    /// Drop an ingest and its data.
    fn abort(&self, reference: &str) -> Result<()>;
}

/// Apply containerd's label field paths to `current`.
pub fn apply_label_paths(
    current: &mut HashMap<String, String>,
    new: &HashMap<String, String>,
    paths: &[String],
    object: &str,
) -> Result<()> {
    if paths.is_empty() {
        *current = new.clone();
    }
    for p in paths {
        if p == "labels" {
            *current = new.clone();
        } else if let Some(key) = p.strip_prefix("labels.") {
            match new.get(key) {
                Some(v) if !v.is_empty() => {
                    current.insert(key.to_string(), v.clone());
                }
                _ => {
                    current.remove(key);
                }
            }
        } else {
            return Err(stevedore_types::Error::invalid(format!(
                "cannot update {p:?} field on {object}"
            )));
        }
    }
    current.retain(|_, v| !v.is_empty());
    Ok(())
}

/// Read a whole blob through a reader, in chunks, into `out` (for tests and
/// small blobs such as manifests).
pub fn read_all(ra: &dyn ReaderAt, out: &mut Vec<u8>) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    loop {
        let n = ra.read_at(&mut buf, off)?;
        if n == 0 {
            return Ok(());
        }
        out.extend_from_slice(&buf[..n]);
        off += n as u64;
    }
}

/// A running digest (sha256 by default, sha512 when that is expected).
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(alg: stevedore_types::Algorithm) -> Self {
        use sha2::Digest as _;
        match alg {
            stevedore_types::Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            stevedore_types::Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }
    /// The digest so far (the hasher keeps running).
    pub fn digest(&self) -> Digest {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => Digest::from_sha256_bytes(&h.clone().finalize()),
            Hasher::Sha512(h) => Digest::from_sha512_bytes(&h.clone().finalize()),
        }
    }
}

/// The digest of a byte slice.
pub fn digest_of(data: &[u8]) -> Digest {
    let mut h = Hasher::new(stevedore_types::Algorithm::Sha256);
    h.update(data);
    h.digest()
}

/// Sequential `std::io::Read` over a [`ReaderAt`], from an offset.
pub struct SeqReader {
    ra: Box<dyn ReaderAt>,
    offset: u64,
}

impl SeqReader {
    pub fn new(ra: Box<dyn ReaderAt>, offset: u64) -> Self {
        SeqReader { ra, offset }
    }
}

impl std::io::Read for SeqReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self
            .ra
            .read_at(buf, self.offset)
            .map_err(|e| std::io::Error::other(e.message))?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// `std::io::Write` into an ingest [`Writer`] (commit it afterwards).
pub struct WriteAdapter<'a>(pub &'a mut dyn Writer);

impl std::io::Write for WriteAdapter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .write(buf)
            .map_err(|e| std::io::Error::other(e.message))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
