//! Layer tars, both ways.
//!
//! - [`apply`] streams an uncompressed layer tar onto a directory:
//!   OCI whiteouts (`.wh.<name>`) and opaque directories (`.wh..wh..opq`)
//!   become either overlayfs' own markers (a 0/0 character device, the
//!   `trusted.overlay.opaque=y` xattr; for an overlay upper dir) or deletions
//!   (for a full tree: native, btrfs, a mounted overlay); every entry is
//!   resolved beneath the root, and one that would leave it is an error naming
//!   the entry. The sha256 of the uncompressed stream is computed while
//!   reading, to check against the layer's diff ID.
//! - [`compare`] walks a lower and an upper tree and writes the difference as
//!   an OCI layer tar (whiteouts for deletions).
//! - [`mounts`] applies onto and compares snapshot mounts (the Diff service).
//! - [`decompress`] wraps a compressed stream by media type (gzip via
//!   zlib-rs, zstd).
//!
//! Everything here blocks: async callers run it on a blocking pool.

pub mod apply;
pub mod compare;
pub mod mounts;

pub use apply::{apply, apply_with_parents, inherit_implicit_dirs, Applied, WhiteoutMode};
pub use compare::{compare, compare_with, CompareOptions, Written};

use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use stevedore_types::{Digest, Error, Result};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Uncompressed,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type names (OCI and Docker types).
    pub fn of_media_type(media_type: &str) -> Result<Compression> {
        let m = media_type;
        if m.ends_with("+gzip")
            || m.ends_with(".gzip")
            || m == "application/vnd.docker.image.rootfs.diff.tar.gzip"
        {
            Ok(Compression::Gzip)
        } else if m.ends_with("+zstd") || m.ends_with(".zstd") {
            Ok(Compression::Zstd)
        } else if m.ends_with(".tar")
            || m.ends_with("layer.v1.tar")
            || m == "application/vnd.docker.image.rootfs.diff.tar"
        {
            Ok(Compression::Uncompressed)
        } else {
            Err(Error::unimplemented(format!(
                "unsupported layer media type {media_type:?}"
            )))
        }
    }
}

/// Wrap `r` so that reading yields the uncompressed layer tar.
pub fn decompress<'a, R: Read + 'a>(compression: Compression, r: R) -> Result<Box<dyn Read + 'a>> {
    Ok(match compression {
        Compression::Uncompressed => Box::new(r),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
            std::io::BufReader::with_capacity(1 << 16, r),
        )),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(r)
                .map_err(|e| Error::from(e).context("start zstd decoder"))?,
        ),
    })
}

/// Wrap `w` so that writing an uncompressed tar stores it compressed.
pub fn compress<'a, W: Write + 'a>(
    compression: Compression,
    w: W,
) -> Result<Box<dyn FinishWrite + 'a>> {
    Ok(match compression {
        Compression::Uncompressed => Box::new(Plain(w)),
        Compression::Gzip => Box::new(flate2::write::GzEncoder::new(
            w,
            flate2::Compression::fast(),
        )),
        Compression::Zstd => Box::new(
            zstd::stream::write::Encoder::new(w, 3)
                .map_err(|e| Error::from(e).context("start zstd encoder"))?,
        ),
    })
}

/// A writer whose end must be marked (compressors write a trailer).
pub trait FinishWrite: Write {
    fn finish_stream(self: Box<Self>) -> std::io::Result<()>;
}

struct Plain<W>(W);
impl<W: Write> Write for Plain<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write> FinishWrite for Plain<W> {
    fn finish_stream(mut self: Box<Self>) -> std::io::Result<()> {
        self.0.flush()
    }
}
impl<W: Write> FinishWrite for flate2::write::GzEncoder<W> {
    fn finish_stream(self: Box<Self>) -> std::io::Result<()> {
        self.finish().map(|_| ())
    }
}
impl<W: Write> FinishWrite for zstd::stream::write::Encoder<'_, W> {
    fn finish_stream(self: Box<Self>) -> std::io::Result<()> {
        self.finish().map(|_| ())
    }
}

/// Counts and hashes (sha256) what passes through, reading or writing.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    bytes: u64,
}

impl<T> Hashing<T> {
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
    /// Digest and size of everything seen so far.
    pub fn finish(self) -> (Digest, u64, T) {
        (
            Digest::from_sha256_bytes(&self.hasher.finalize()),
            self.bytes,
            self.inner,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
