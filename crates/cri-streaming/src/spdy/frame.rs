//! SPDY/3 frames: the 8-byte frame head, the control frames kubelet's and
//! kubectl's SPDY stack (moby/spdystream) exchange, and data frames.
//!
//! Every length comes from the peer, so the head is checked against
//! [`MAX_FRAME_PAYLOAD`] before the payload is read, and each control frame's
//! fixed fields are checked against its length before they are parsed.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::compress::{HeaderCompressor, HeaderDecompressor, Headers};

/// The only protocol version spoken.
pub const VERSION: u16 = 3;

/// Largest frame payload accepted from a peer (1 MiB; Go's clients write at
/// most 32 KiB per data frame). The format allows 16 MiB.
pub const MAX_FRAME_PAYLOAD: usize = 1 << 20;

/// Control frame types (SPDY/3 section 2.6).
pub mod kind {
    pub const SYN_STREAM: u16 = 1;
    pub const SYN_REPLY: u16 = 2;
    pub const RST_STREAM: u16 = 3;
    pub const SETTINGS: u16 = 4;
    pub const PING: u16 = 6;
    pub const GOAWAY: u16 = 7;
    pub const HEADERS: u16 = 8;
    pub const WINDOW_UPDATE: u16 = 9;
}

/// FLAG_FIN on data, SYN_STREAM, SYN_REPLY and HEADERS frames.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

/// RST_STREAM status codes used here.
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    SynStream {
        stream_id: u32,
        associated_to: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream_id: u32,
        status: u32,
    },
    Settings {
        flags: u8,
        entries: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good_stream_id: u32,
        status: u32,
    },
    Headers {
        stream_id: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream_id: u32,
        delta: u32,
    },
    Data {
        stream_id: u32,
        flags: u8,
        data: Bytes,
    },
    /// A control frame type SPDY/3 tells receivers to ignore (e.g. CREDENTIAL).
    Unknown {
        kind: u16,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("SPDY version {0} is not supported (only 3)")]
    Version(u16),
    #[error("frame payload of {len} bytes exceeds the limit of {MAX_FRAME_PAYLOAD}")]
    TooLarge { len: usize },
    #[error("invalid {frame} frame: {reason}")]
    Invalid { frame: &'static str, reason: String },
    #[error("invalid header block: {0}")]
    HeaderBlock(String),
    #[error("connection closed inside a frame")]
    Truncated,
    #[error("read frame: {0}")]
    Io(#[from] std::io::Error),
}

fn invalid(frame: &'static str, reason: impl Into<String>) -> FrameError {
    FrameError::Invalid {
        frame,
        reason: reason.into(),
    }
}

/// The fixed 8-byte head of every frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Control {
        version: u16,
        kind: u16,
        flags: u8,
        len: usize,
    },
    Data {
        stream_id: u32,
        flags: u8,
        len: usize,
    },
}

impl Head {
    /// Parses the head; fails if the announced payload is too large.
    pub fn parse(b: [u8; 8]) -> Result<Self, FrameError> {
        let flags = b[4];
        let len = u32::from_be_bytes([0, b[5], b[6], b[7]]) as usize;
        if len > MAX_FRAME_PAYLOAD {
            return Err(FrameError::TooLarge { len });
        }
        Ok(if b[0] & 0x80 != 0 {
            let version = u16::from_be_bytes([b[0] & 0x7f, b[1]]);
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
            Head::Control {
                version,
                kind: u16::from_be_bytes([b[2], b[3]]),
                flags,
                len,
            }
        } else {
            Head::Data {
                stream_id: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
                flags,
                len,
            }
        })
    }

    /// Payload length announced by the head.
    pub fn len(&self) -> usize {
        match self {
            Head::Control { len, .. } | Head::Data { len, .. } => *len,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn stream_id(frame: &'static str, b: &[u8], at: usize) -> Result<u32, FrameError> {
    let id = be32(b, at) & 0x7fff_ffff;
    if id == 0 {
        return Err(invalid(frame, "stream id 0"));
    }
    Ok(id)
}

/// Turns frames from a peer into [`Frame`]s (owns the inflate stream).
#[derive(Default)]
pub struct Decoder {
    headers: HeaderDecompressor,
}

impl Decoder {
    /// A decoder for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decodes one frame from its head and payload.
    pub fn decode(&mut self, head: Head, payload: Bytes) -> Result<Frame, FrameError> {
        let (kind, flags) = match head {
            Head::Data {
                stream_id: raw,
                flags,
                ..
            } => {
                let stream_id = raw & 0x7fff_ffff;
                if stream_id == 0 {
                    return Err(invalid("data", "stream id 0"));
                }
                return Ok(Frame::Data {
                    stream_id,
                    flags,
                    data: payload,
                });
            }
            Head::Control { kind, flags, .. } => (kind, flags),
        };
        let p = &payload[..];
        let need = |frame: &'static str, n: usize, exact: bool| {
            if (exact && p.len() != n) || p.len() < n {
                Err(invalid(frame, format!("length {} (expected {n})", p.len())))
            } else {
                Ok(())
            }
        };
        Ok(match kind {
            kind::SYN_STREAM => {
                need("SYN_STREAM", 10, false)?;
                let stream_id = stream_id("SYN_STREAM", p, 0)?;
                let headers = self.headers.decompress(&p[10..])?;
                Frame::SynStream {
                    stream_id,
                    associated_to: be32(p, 4) & 0x7fff_ffff,
                    priority: p[8] >> 5,
                    flags,
                    headers,
                }
            }
            kind::SYN_REPLY => {
                need("SYN_REPLY", 4, false)?;
                let stream_id = stream_id("SYN_REPLY", p, 0)?;
                Frame::SynReply {
                    stream_id,
                    flags,
                    headers: self.headers.decompress(&p[4..])?,
                }
            }
            kind::HEADERS => {
                need("HEADERS", 4, false)?;
                let stream_id = stream_id("HEADERS", p, 0)?;
                Frame::Headers {
                    stream_id,
                    flags,
                    headers: self.headers.decompress(&p[4..])?,
                }
            }
            kind::RST_STREAM => {
                need("RST_STREAM", 8, true)?;
                Frame::RstStream {
                    stream_id: stream_id("RST_STREAM", p, 0)?,
                    status: be32(p, 4),
                }
            }
            kind::SETTINGS => {
                need("SETTINGS", 4, false)?;
                let count = be32(p, 0) as usize;
                if count > (p.len() - 4) / 8 || p.len() != 4 + count * 8 {
                    return Err(invalid(
                        "SETTINGS",
                        format!("{count} entries in {} bytes", p.len()),
                    ));
                }
                let entries = p[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: u32::from_be_bytes([0, e[1], e[2], e[3]]),
                        value: be32(e, 4),
                    })
                    .collect();
                Frame::Settings { flags, entries }
            }
            kind::PING => {
                need("PING", 4, true)?;
                Frame::Ping { id: be32(p, 0) }
            }
            kind::GOAWAY => {
                need("GOAWAY", 8, true)?;
                Frame::GoAway {
                    last_good_stream_id: be32(p, 0) & 0x7fff_ffff,
                    status: be32(p, 4),
                }
            }
            kind::WINDOW_UPDATE => {
                need("WINDOW_UPDATE", 8, true)?;
                let delta = be32(p, 4) & 0x7fff_ffff;
                if delta == 0 {
                    return Err(invalid("WINDOW_UPDATE", "delta 0"));
                }
                Frame::WindowUpdate {
                    stream_id: be32(p, 0) & 0x7fff_ffff,
                    delta,
                }
            }
            other => Frame::Unknown { kind: other },
        })
    }

    /// Decodes the first frame in `buf`; `Ok(None)` when `buf` holds only part
    /// of it. Returns the frame and the bytes it took.
    pub fn decode_slice(&mut self, buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
        let Some(head) = buf.first_chunk::<8>() else {
            return Ok(None);
        };
        let head = Head::parse(*head)?;
        let end = 8 + head.len();
        if buf.len() < end {
            return Ok(None);
        }
        let frame = self.decode(head, Bytes::copy_from_slice(&buf[8..end]))?;
        Ok(Some((frame, end)))
    }

    /// Reads one frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> Result<Option<Frame>, FrameError> {
        let mut head = [0u8; 8];
        let mut got = 0;
        while got < head.len() {
            let n = r.read(&mut head[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated)
                };
            }
            got += n;
        }
        let head = Head::parse(head)?;
        let mut payload = vec![0u8; head.len()];
        r.read_exact(&mut payload).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                FrameError::Truncated
            } else {
                FrameError::Io(e)
            }
        })?;
        self.decode(head, payload.into()).map(Some)
    }
}

/// Turns [`Frame`]s into bytes (owns the deflate stream).
#[derive(Default)]
pub struct Encoder {
    headers: HeaderCompressor,
}

impl Encoder {
    /// An encoder for a new connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the encoding of `frame` to `out`.
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<(), FrameError> {
        let control = |out: &mut Vec<u8>, kind: u16, flags: u8, payload: &[u8]| {
            if payload.len() > MAX_FRAME_PAYLOAD {
                return Err(FrameError::TooLarge { len: payload.len() });
            }
            out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
            out.extend_from_slice(&kind.to_be_bytes());
            out.push(flags);
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(payload);
            Ok(())
        };
        match frame {
            Frame::SynStream {
                stream_id,
                associated_to,
                priority,
                flags,
                headers,
            } => {
                let mut p = Vec::new();
                p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p.extend_from_slice(&(associated_to & 0x7fff_ffff).to_be_bytes());
                p.push((priority & 0x07) << 5);
                p.push(0);
                p.extend_from_slice(&self.headers.compress(headers)?);
                control(out, kind::SYN_STREAM, *flags, &p)
            }
            Frame::SynReply {
                stream_id,
                flags,
                headers,
            }
            | Frame::Headers {
                stream_id,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    kind::SYN_REPLY
                } else {
                    kind::HEADERS
                };
                let mut p = Vec::new();
                p.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                p.extend_from_slice(&self.headers.compress(headers)?);
                control(out, kind, *flags, &p)
            }
            Frame::RstStream { stream_id, status } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, kind::RST_STREAM, 0, &p)
            }
            Frame::Settings { flags, entries } => {
                let mut p = (entries.len() as u32).to_be_bytes().to_vec();
                for e in entries {
                    p.push(e.flags);
                    p.extend_from_slice(&e.id.to_be_bytes()[1..]);
                    p.extend_from_slice(&e.value.to_be_bytes());
                }
                control(out, kind::SETTINGS, *flags, &p)
            }
            Frame::Ping { id } => control(out, kind::PING, 0, &id.to_be_bytes()),
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut p = (last_good_stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&status.to_be_bytes());
                control(out, kind::GOAWAY, 0, &p)
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut p = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                p.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, kind::WINDOW_UPDATE, 0, &p)
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                if data.len() > MAX_FRAME_PAYLOAD {
                    return Err(FrameError::TooLarge { len: data.len() });
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                out.push(*flags);
                out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
                out.extend_from_slice(data);
                Ok(())
            }
            Frame::Unknown { kind } => {
                Err(invalid("unknown", format!("cannot encode type {kind}")))
            }
        }
    }
}
