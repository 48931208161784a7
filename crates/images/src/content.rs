//! What the images library needs from a content store, as small synchronous
//! traits (callers run them on blocking threads): read by digest
//! ([`Provider`]), write through verified ingests ([`Ingester`]) and set labels
//! ([`LabelManager`]). The real content store implements these; the
//! [`crate::testing::DirStore`] implements them for tests.

use sha2::{Digest as _, Sha256, Sha512};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use stevedore_types::{Algorithm, Descriptor, Digest, Error, ErrorKind, Result};

/// Metadata of one committed blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub digest: Digest,
    pub size: i64,
    pub labels: HashMap<String, String>,
}

/// Reads committed content (containerd's `content.Provider` + `Info`).
pub trait Provider: Send + Sync {
    /// Size and labels of a blob; NotFound when absent.
    fn info(&self, digest: &Digest) -> Result<Info>;
    /// A reader over the blob from `offset` to its end; NotFound when absent.
    fn reader(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send>>;
}

/// An open ingest: bytes are written, then committed (verified) or aborted.
pub trait ContentWriter: Write + Send {
    /// Verify `size` and `digest` against what was written and make the blob
    /// visible with `labels`. AlreadyExists when the blob was already there
    /// (callers usually treat that as success).
    fn commit(
        self: Box<Self>,
        size: i64,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()>;
    /// Drop what was written; nothing becomes visible.
    fn abort(self: Box<Self>) -> Result<()>;
}

/// Opens ingests (containerd's `content.Ingester`).
pub trait Ingester: Send + Sync {
    /// Open a writer for `reference`. `expected` carries the size and, when
    /// known, the digest (`None` when only computed at commit). AlreadyExists
    /// when a blob with the expected digest is already committed.
    fn writer(
        &self,
        reference: &str,
        expected_size: Option<i64>,
        expected_digest: Option<&Digest>,
    ) -> Result<Box<dyn ContentWriter>>;
}

/// Updates labels of committed content (containerd's `content.Manager.Update`
/// with `labels.<key>` field paths).
pub trait LabelManager: Send + Sync {
    /// Set each label (an empty value removes it), leaving others untouched.
    fn set_labels(&self, digest: &Digest, labels: &[(String, String)]) -> Result<()>;
}

/// Everything import needs: read, write and label. The `as_*` methods
/// view a `&dyn Store` as one of its parts without trait upcasting (which
/// needs a newer compiler than the workspace's minimum).
pub trait Store: Provider + Ingester + LabelManager {
    fn as_provider(&self) -> &dyn Provider;
    fn as_ingester(&self) -> &dyn Ingester;
    fn as_label_manager(&self) -> &dyn LabelManager;
}

impl<T: Provider + Ingester + LabelManager> Store for T {
    fn as_provider(&self) -> &dyn Provider {
        self
    }
    fn as_ingester(&self) -> &dyn Ingester {
        self
    }
    fn as_label_manager(&self) -> &dyn LabelManager {
        self
    }
}

/// A running hash for one digest algorithm.
#[derive(Clone)]
pub enum Digester {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Digester {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Digester::Sha256(Sha256::new()),
            Algorithm::Sha512 => Digester::Sha512(Sha512::new()),
        }
    }
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Digester::Sha256(h) => h.update(data),
            Digester::Sha512(h) => h.update(data),
        }
    }
    pub fn digest(&self) -> Digest {
        match self {
            Digester::Sha256(h) => Digest::from_sha256_bytes(&h.clone().finalize()),
            Digester::Sha512(h) => Digest::from_sha512_bytes(&h.clone().finalize()),
        }
    }
}

/// sha256 of a byte slice.
pub fn digest_of(bytes: &[u8]) -> Digest {
    Digest::from_sha256_bytes(&Sha256::digest(bytes))
}

/// A reader that hashes and counts what passes through it.
pub struct DigestingReader<R> {
    inner: R,
    digester: Digester,
    count: u64,
}

impl<R: Read> DigestingReader<R> {
    pub fn new(inner: R, algorithm: Algorithm) -> Self {
        DigestingReader {
            inner,
            digester: Digester::new(algorithm),
            count: 0,
        }
    }
    pub fn digest(&self) -> Digest {
        self.digester.digest()
    }
    pub fn count(&self) -> u64 {
        self.count
    }
}

impl<R: Read> Read for DigestingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digester.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Largest manifest or index the library will parse (containerd's limit).
pub const MAX_MANIFEST_SIZE: i64 = stevedore_types::limits::MAX_MANIFEST_SIZE;
/// Largest image config or other JSON document the library will parse.
pub const MAX_JSON_SIZE: i64 = stevedore_types::limits::MAX_CONFIG_SIZE;

/// Read a whole small blob (a manifest, index or config), refusing anything
/// larger than `limit` with InvalidArgument and verifying size and digest.
pub fn read_blob(provider: &dyn Provider, desc: &Descriptor, limit: i64) -> Result<Vec<u8>> {
    if desc.size < 0 || desc.size > limit {
        return Err(Error::invalid(format!(
            "blob {} ({}): size {} exceeds the limit of {limit} bytes",
            desc.digest, desc.media_type, desc.size
        )));
    }
    let r = provider
        .reader(desc, 0)
        .map_err(|e| e.context(format!("read blob {}", desc.digest)))?;
    let mut r = DigestingReader::new(r.take(limit as u64 + 1), desc.digest.algorithm());
    let mut buf = Vec::with_capacity(desc.size as usize);
    r.read_to_end(&mut buf)
        .map_err(|e| Error::from(e).context(format!("read blob {}", desc.digest)))?;
    if buf.len() as i64 != desc.size {
        return Err(Error::new(
            ErrorKind::FailedPrecondition,
            format!(
                "read blob {}: expected {} bytes, got {}",
                desc.digest,
                desc.size,
                buf.len()
            ),
        ));
    }
    if r.digest() != desc.digest {
        return Err(Error::new(
            ErrorKind::FailedPrecondition,
            format!(
                "read blob {}: content has digest {}",
                desc.digest,
                r.digest()
            ),
        ));
    }
    Ok(buf)
}

/// Write a whole blob through an ingest (containerd's `content.WriteBlob`):
/// an already existing blob counts as success.
pub fn write_blob(
    ingester: &dyn Ingester,
    reference: &str,
    data: &mut dyn Read,
    desc: &Descriptor,
    labels: HashMap<String, String>,
) -> Result<()> {
    let mut w = match ingester.writer(reference, Some(desc.size), Some(&desc.digest)) {
        Ok(w) => w,
        Err(e) if e.is(ErrorKind::AlreadyExists) => return Ok(()),
        Err(e) => return Err(e.context(format!("open writer for {}", desc.digest))),
    };
    if let Err(e) = io::copy(data, &mut w) {
        let _ = w.abort();
        return Err(Error::from(e).context(format!("write blob {}", desc.digest)));
    }
    match w.commit(desc.size, &desc.digest, labels) {
        Ok(()) => Ok(()),
        Err(e) if e.is(ErrorKind::AlreadyExists) => Ok(()),
        Err(e) => Err(e.context(format!("commit blob {}", desc.digest))),
    }
}
