//! Name/value header blocks and their zlib compression.
//!
//! SPDY/3 compresses every header block of a connection, per direction, with
//! ONE zlib stream primed with the SPDY dictionary, each block ending on a
//! sync flush. The decompressor is the first thing a peer's bytes reach, so it
//! is bounded: a block may inflate to at most [`MAX_HEADER_BLOCK`] bytes, and
//! the parsed block is checked field by field before any allocation it names.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::dictionary::DICTIONARY;
use super::frame::FrameError;

/// Largest uncompressed header block accepted from a peer (64 KiB, far above
/// the few hundred bytes kubectl and the kubelet send).
pub const MAX_HEADER_BLOCK: usize = 64 << 10;

/// Header names and values of one SYN_STREAM, SYN_REPLY or HEADERS frame.
/// Names are lower case (SPDY/3 requires it); a value holding several
/// values keeps them NUL-separated as on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// An empty header block.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a header; the name is lower-cased as SPDY/3 requires.
    pub fn insert(&mut self, name: &str, value: &str) -> &mut Self {
        self.0.push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split('\0').next().unwrap_or(""))
    }

    /// All (name, value) pairs in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.0.len() as u32).to_be_bytes());
        for (name, value) in &self.0 {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value.as_bytes());
        }
        out
    }

    fn decode(block: &[u8]) -> Result<Self, FrameError> {
        let mut rest = block;
        let count = take_u32(&mut rest)? as usize;
        // each pair needs at least two length fields and a one-byte name
        if count > rest.len() / 9 {
            return Err(bad(format!(
                "{count} headers cannot fit in {} bytes",
                block.len()
            )));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = take_str(&mut rest)?;
            if name.is_empty() {
                return Err(bad("empty header name".into()));
            }
            if name.bytes().any(|b| b.is_ascii_uppercase() || b == 0) {
                return Err(bad(format!("header name {name:?} is not lower case")));
            }
            let value = take_str(&mut rest)?;
            if headers.iter().any(|(n, _): &(String, String)| *n == name) {
                return Err(bad(format!("header {name:?} appears twice")));
            }
            headers.push((name, value));
        }
        if !rest.is_empty() {
            return Err(bad(format!("{} bytes after the last header", rest.len())));
        }
        Ok(Self(headers))
    }
}

fn bad(msg: String) -> FrameError {
    FrameError::HeaderBlock(msg)
}

fn take_u32(rest: &mut &[u8]) -> Result<u32, FrameError> {
    let Some((head, tail)) = rest.split_first_chunk::<4>() else {
        return Err(bad("truncated length field".into()));
    };
    *rest = tail;
    Ok(u32::from_be_bytes(*head))
}

fn take_str(rest: &mut &[u8]) -> Result<String, FrameError> {
    let len = take_u32(rest)? as usize;
    if len > rest.len() {
        return Err(bad(format!("field of {len} bytes overruns the block")));
    }
    let (field, tail) = rest.split_at(len);
    *rest = tail;
    String::from_utf8(field.to_vec()).map_err(|_| bad("header is not UTF-8".into()))
}

/// The sending side's zlib stream (one per connection).
pub struct HeaderCompressor {
    zlib: Compress,
}

impl Default for HeaderCompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderCompressor {
    /// A compressor primed with the SPDY/3 dictionary.
    pub fn new() -> Self {
        let mut zlib = Compress::new(Compression::default(), true);
        // only fails on a stream that already produced output
        let _ = zlib.set_dictionary(&DICTIONARY);
        Self { zlib }
    }

    /// Compresses one header block, ending on a sync flush so the peer can
    /// inflate it without the next one.
    pub fn compress(&mut self, headers: &Headers) -> Result<Vec<u8>, FrameError> {
        let input = headers.encode();
        let mut out = Vec::with_capacity(input.len() / 2 + 64);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                out.reserve(out.capacity().max(64));
            }
            let before = self.zlib.total_in();
            self.zlib
                .compress_vec(&input[pos..], &mut out, FlushCompress::Sync)
                .map_err(|e| bad(format!("compress: {e}")))?;
            pos += (self.zlib.total_in() - before) as usize;
            // a sync flush is complete once input is used up and room is left
            if pos == input.len() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The receiving side's zlib stream (one per connection).
pub struct HeaderDecompressor {
    zlib: Decompress,
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A decompressor that supplies the SPDY/3 dictionary when asked.
    pub fn new() -> Self {
        Self {
            zlib: Decompress::new(true),
        }
    }

    /// Inflates and parses one compressed header block.
    pub fn decompress(&mut self, input: &[u8]) -> Result<Headers, FrameError> {
        let mut out: Vec<u8> = Vec::with_capacity(512);
        let mut pos = 0;
        loop {
            if out.len() == out.capacity() {
                if out.len() > MAX_HEADER_BLOCK {
                    return Err(bad(format!(
                        "header block inflates past {MAX_HEADER_BLOCK} bytes"
                    )));
                }
                let room = out.capacity().min(MAX_HEADER_BLOCK + 1 - out.len()).max(1);
                out.reserve_exact(room);
            }
            let (in_before, out_before) = (self.zlib.total_in(), out.len());
            let result = self
                .zlib
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            pos += (self.zlib.total_in() - in_before) as usize;
            let produced = out.len() - out_before;
            match result {
                Ok(Status::StreamEnd) => {
                    return Err(bad("zlib stream ended inside a header block".into()))
                }
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.zlib
                        .set_dictionary(&DICTIONARY)
                        .map_err(|e| bad(format!("set dictionary: {e}")))?;
                    continue;
                }
                Err(e) => return Err(bad(format!("inflate: {e}"))),
            }
            if out.len() > MAX_HEADER_BLOCK {
                return Err(bad(format!(
                    "header block inflates past {MAX_HEADER_BLOCK} bytes"
                )));
            }
            if pos == input.len() && out.len() < out.capacity() {
                break;
            }
            if produced == 0 && pos == input.len() {
                break;
            }
            if produced == 0 && out.len() < out.capacity() {
                return Err(bad("inflate made no progress".into()));
            }
        }
        Headers::decode(&out)
    }
}
