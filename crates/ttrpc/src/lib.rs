//! ttrpc over unix sockets, each frame sent in one write.
//!
//! The `ttrpc` crate writes a frame as the header's four fields (4, 4, 1
//! and 1 bytes, then a flush) and then the payload, each its own write(2)
//! on an unbuffered socket. A process killed between those writes leaves
//! its peer a truncated frame: Go's ttrpc then fails the connection with
//! `unexpected EOF`, not `ErrClosed`, and containerd's Go shim, whose event
//! publisher reconnects only on `ErrClosed`, loses every later event of its
//! task (its exit) against a daemon that was SIGKILLed mid-reply. Every
//! ttrpc connection of stevedore (the daemon's events server and its shim
//! clients, the shim's task server and its events client) goes through
//! [`FrameWriter`], which holds a frame's header until its payload comes
//! and sends both in one `writev`, so a frame reaches the peer whole or
//! not at all (unless it overflows the socket buffer, which the kernel
//! then takes in parts: frames of several hundred KiB).

use containerd_shim_protos::ttrpc::asynchronous::transport::{Listener, Socket};
use containerd_shim_protos::ttrpc::asynchronous::Client;
use std::io::{self, IoSlice};
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

/// A ttrpc frame's header: length (u32 BE), stream id (u32 BE), type, flags.
pub const HEADER_LEN: usize = 10;

/// A stream whose writes are ttrpc frames: a frame's header is held back
/// until the first bytes of its payload and both leave in one `writev`;
/// a header of an empty payload leaves at the flush that follows it.
/// Reads pass through.
pub struct FrameWriter<S> {
    inner: S,
    header: [u8; HEADER_LEN],
    /// Header bytes received from the writer.
    held: usize,
    /// Header bytes passed on to `inner`.
    sent: usize,
    /// Payload bytes of the current frame still to come.
    left: usize,
}

impl<S> FrameWriter<S> {
    pub fn new(inner: S) -> FrameWriter<S> {
        FrameWriter {
            inner,
            header: [0; HEADER_LEN],
            held: 0,
            sent: 0,
            left: 0,
        }
    }

    fn take_payload(&mut self, n: usize) {
        self.left -= n;
        if self.left == 0 {
            self.held = 0;
            self.sent = 0;
        }
    }
}

impl<S: AsyncWrite + Unpin> FrameWriter<S> {
    /// Pass on the held header bytes (a frame with no payload, or what a
    /// shutdown finds); the next bytes start a new frame.
    fn poll_send_header(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.held {
            let w = ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.header[self.sent..self.held])
            )?;
            if w == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += w;
        }
        self.held = 0;
        self.sent = 0;
        self.left = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameWriter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.held == HEADER_LEN && this.left == 0 {
            // an empty frame not yet flushed: it goes before the next one
            ready!(this.poll_send_header(cx))?;
        }
        if this.held < HEADER_LEN {
            let n = (HEADER_LEN - this.held).min(buf.len());
            this.header[this.held..this.held + n].copy_from_slice(&buf[..n]);
            this.held += n;
            if this.held == HEADER_LEN {
                let mut len = [0u8; 4];
                len.copy_from_slice(&this.header[..4]);
                this.left = u32::from_be_bytes(len) as usize;
                this.sent = 0;
            }
            return Poll::Ready(Ok(n));
        }
        let data = &buf[..buf.len().min(this.left)];
        while this.sent < HEADER_LEN {
            let rest = &this.header[this.sent..];
            let bufs = [IoSlice::new(rest), IoSlice::new(data)];
            let w = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, &bufs))?;
            if w == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            if w <= rest.len() {
                this.sent += w;
                continue;
            }
            let n = w - rest.len();
            this.sent = HEADER_LEN;
            this.take_payload(n);
            return Poll::Ready(Ok(n));
        }
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.take_payload(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held == HEADER_LEN && this.left == 0 {
            ready!(this.poll_send_header(cx))?;
        }
        // a header whose payload is to come stays held: the payload follows
        // the flush ttrpc does after the header
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.sent < this.held {
            ready!(this.poll_send_header(cx))?;
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameWriter<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

/// Connections accepted on a unix listener, each as a [`FrameWriter`].
struct Accept(UnixListener);

impl futures_core::Stream for Accept {
    type Item = io::Result<FrameWriter<UnixStream>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let (s, _) = ready!(self.0.poll_accept(cx))?;
        Poll::Ready(Some(Ok(FrameWriter::new(s))))
    }
}

/// A ttrpc listener serving on `listener` (a bound, listening socket).
/// Call within a tokio runtime.
pub fn listener(listener: StdUnixListener) -> io::Result<Listener> {
    listener.set_nonblocking(true)?;
    Ok(Listener::new(Accept(UnixListener::from_std(listener)?)))
}

/// A ttrpc listener bound to `path`. Call within a tokio runtime.
pub fn bind(path: &Path) -> io::Result<Listener> {
    listener(StdUnixListener::bind(path)?)
}

/// A ttrpc client of the unix socket at `address`: a path, `unix://` and
/// a path, or `@` and an abstract name (older Go shims), with or without
/// `unix://`.
pub async fn connect(address: &str) -> io::Result<Client> {
    let addr = address.strip_prefix("unix://").unwrap_or(address);
    let stream = match addr.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let sa = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            let s = std::os::unix::net::UnixStream::connect_addr(&sa)?;
            s.set_nonblocking(true)?;
            UnixStream::from_std(s)?
        }
        None => UnixStream::connect(addr).await?,
    };
    Ok(Client::new(Socket::new(FrameWriter::new(stream))))
}

#[cfg(test)]
mod tests;
