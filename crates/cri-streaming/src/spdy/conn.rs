//! The server side of a SPDY/3.1 connection, as moby/spdystream (the
//! kubelet's and kubectl's stack) behaves: the client opens streams with
//! SYN_STREAM, the server answers SYN_REPLY (or RST_STREAM to refuse), data
//! flows both ways, FIN half-closes, GOAWAY ends the connection.
//!
//! Two tasks per connection: a reader that decodes frames and routes data to
//! per-stream bounded queues, and a writer that owns the header compressor
//! and serialises every outgoing frame from one bounded queue.
//!
//! Flow control: spdystream neither sends WINDOW_UPDATE nor honours it, so the
//! server does not stall on its send window (it would deadlock kubectl after
//! 64 KiB). Incoming data is bounded instead: a full stream queue stops the
//! reader (TCP backpressure, as spdystream does), and WINDOW_UPDATEs credit
//! only what was queued, for clients that honour the SPDY/3.1 windows.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, PollSender};

use super::compress::Headers;
use super::frame::{rst, Decoder, Encoder, Frame, FLAG_FIN};
use crate::pipe::{ChunkReader, CHUNK};

/// Streams a connection may hold open at once (each holds a bounded queue).
pub const MAX_STREAMS: usize = 128;
/// Frames queued for the writer task.
const OUT_QUEUE: usize = 32;

enum Out {
    Frame(Frame),
    /// Send GOAWAY, flush, and close the write side.
    Close,
}

struct StreamState {
    id: u32,
    fin_sent: AtomicBool,
    reset: AtomicBool,
}

/// A stream the client opened, not yet answered.
pub struct IncomingStream {
    /// The stream id the client chose.
    pub id: u32,
    /// The SYN_STREAM's headers (`streamtype`, `port`, `requestid`, ...).
    pub headers: Headers,
    reader: ChunkReader,
    writer: StreamWriter,
}

impl IncomingStream {
    /// Answers SYN_REPLY and returns the stream's two halves.
    pub async fn accept(self) -> io::Result<(ChunkReaderHalf, StreamWriter)> {
        let reply = Frame::SynReply {
            stream_id: self.id,
            flags: 0,
            headers: Headers::new(),
        };
        send(&self.writer.out, Out::Frame(reply)).await?;
        Ok((ChunkReaderHalf(self.reader), self.writer))
    }

    /// Refuses the stream (RST_STREAM REFUSED_STREAM), as kubelet does for a
    /// stream whose headers it rejects.
    pub async fn refuse(self) {
        self.writer.state.reset.store(true, Ordering::SeqCst);
        let _ = send(
            &self.writer.out,
            Out::Frame(Frame::RstStream {
                stream_id: self.id,
                status: rst::REFUSED_STREAM,
            }),
        )
        .await;
    }
}

async fn send(out: &mpsc::Sender<Out>, item: Out) -> io::Result<()> {
    out.send(item)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "SPDY connection closed"))
}

/// The receiving half of an accepted stream.
pub struct ChunkReaderHalf(ChunkReader);

impl AsyncRead for ChunkReaderHalf {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

/// The sending half of an accepted stream: writes become data frames of at
/// most 32 KiB, shutdown sends FIN.
pub struct StreamWriter {
    state: Arc<StreamState>,
    out: mpsc::Sender<Out>,
    poll: PollSender<Out>,
}

impl StreamWriter {
    /// A handle that can FIN or reset this stream after the writer is gone.
    pub fn control(&self) -> StreamControl {
        StreamControl {
            state: self.state.clone(),
            out: self.out.clone(),
        }
    }
}

fn closed_error() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "SPDY connection closed")
}

impl AsyncWrite for StreamWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.state.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("SPDY stream {} was reset", self.state.id),
            )));
        }
        if self.state.fin_sent.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("SPDY stream {} is closed for writing", self.state.id),
            )));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll.poll_reserve(cx)).map_err(|_| closed_error())?;
        let n = buf.len().min(CHUNK);
        let frame = Frame::Data {
            stream_id: self.state.id,
            flags: 0,
            data: Bytes::copy_from_slice(&buf[..n]),
        };
        self.poll
            .send_item(Out::Frame(frame))
            .map_err(|_| closed_error())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.fin_sent.load(Ordering::SeqCst) || self.state.reset.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll.poll_reserve(cx)).map_err(|_| closed_error())?;
        if self.state.fin_sent.swap(true, Ordering::SeqCst) {
            self.poll.abort_send();
            return Poll::Ready(Ok(()));
        }
        let frame = Frame::Data {
            stream_id: self.state.id,
            flags: FLAG_FIN,
            data: Bytes::new(),
        };
        self.poll
            .send_item(Out::Frame(frame))
            .map_err(|_| closed_error())?;
        Poll::Ready(Ok(()))
    }
}

/// FIN or reset a stream independently of its writer.
#[derive(Clone)]
pub struct StreamControl {
    state: Arc<StreamState>,
    out: mpsc::Sender<Out>,
}

impl StreamControl {
    /// Half-closes the stream (empty data frame with FIN) unless already done.
    pub async fn finish(&self) {
        if self.state.reset.load(Ordering::SeqCst)
            || self.state.fin_sent.swap(true, Ordering::SeqCst)
        {
            return;
        }
        let _ = send(
            &self.out,
            Out::Frame(Frame::Data {
                stream_id: self.state.id,
                flags: FLAG_FIN,
                data: Bytes::new(),
            }),
        )
        .await;
    }

    /// Resets the stream (RST_STREAM CANCEL) unless already reset.
    pub async fn reset(&self) {
        if self.state.reset.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = send(
            &self.out,
            Out::Frame(Frame::RstStream {
                stream_id: self.state.id,
                status: rst::CANCEL,
            }),
        )
        .await;
    }
}

/// A server-side SPDY connection.
pub struct Connection {
    incoming: mpsc::Receiver<IncomingStream>,
    out: mpsc::Sender<Out>,
    peer_gone: CancellationToken,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Starts the reader and writer tasks over an upgraded connection; both
    /// stop when `cancel` fires.
    pub fn start<T>(io: T, cancel: CancellationToken) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let (out_tx, out_rx) = mpsc::channel(OUT_QUEUE);
        let (in_tx, in_rx) = mpsc::channel(8);
        let peer_gone = CancellationToken::new();
        let reader = Reader {
            out: out_tx.clone(),
            incoming: in_tx,
            streams: HashMap::new(),
            last_id: 0,
            going_away: false,
        };
        let gone = peer_gone.clone();
        let reader_cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = reader.run(rd) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "SPDY connection read ended");
                    }
                }
                _ = reader_cancel.cancelled() => {}
            }
            gone.cancel();
        });
        let writer = tokio::spawn(async move {
            tokio::select! {
                result = write_loop(wr, out_rx) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "SPDY connection write ended");
                    }
                }
                _ = cancel.cancelled() => {}
            }
        });
        Self {
            incoming: in_rx,
            out: out_tx,
            peer_gone,
            writer,
        }
    }

    /// The next stream the client opens; `None` once the client is gone.
    pub async fn next_stream(&mut self) -> Option<IncomingStream> {
        self.incoming.recv().await
    }

    /// Resolves when the client closed the connection (or it failed).
    pub fn peer_gone(&self) -> CancellationToken {
        self.peer_gone.clone()
    }

    /// Sends GOAWAY after every frame queued so far, closes the write side,
    /// and waits until that is written.
    pub async fn close(self) {
        let _ = self.out.send(Out::Close).await;
        drop(self.out);
        drop(self.incoming);
        let _ = self.writer.await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Out>,
) -> Result<(), super::frame::FrameError> {
    let mut wr = BufWriter::with_capacity(64 << 10, wr);
    let mut encoder = Encoder::new();
    let mut buf = Vec::with_capacity(CHUNK + 64);
    let mut last_accepted = 0;
    while let Some(item) = rx.recv().await {
        let mut next = Some(item);
        // batch what is queued into one flush
        while let Some(item) = next.take() {
            buf.clear();
            match item {
                Out::Frame(frame) => {
                    if let Frame::SynReply { stream_id, .. } = &frame {
                        last_accepted = last_accepted.max(*stream_id);
                    }
                    encoder.encode(&frame, &mut buf)?;
                    wr.write_all(&buf).await?;
                }
                Out::Close => {
                    encoder.encode(
                        &Frame::GoAway {
                            last_good_stream_id: last_accepted,
                            status: 0,
                        },
                        &mut buf,
                    )?;
                    wr.write_all(&buf).await?;
                    wr.flush().await?;
                    wr.shutdown().await?;
                    return Ok(());
                }
            }
            next = rx.try_recv().ok();
        }
        wr.flush().await?;
    }
    wr.shutdown().await?;
    Ok(())
}

struct StreamIn {
    tx: Option<mpsc::Sender<Bytes>>,
    state: Arc<StreamState>,
}

struct Reader {
    out: mpsc::Sender<Out>,
    incoming: mpsc::Sender<IncomingStream>,
    streams: HashMap<u32, StreamIn>,
    last_id: u32,
    going_away: bool,
}

impl Reader {
    async fn run<R: AsyncRead + Unpin>(
        mut self,
        mut rd: R,
    ) -> Result<(), super::frame::FrameError> {
        let mut decoder = Decoder::new();
        while let Some(frame) = decoder.read(&mut rd).await? {
            self.handle(frame).await?;
        }
        Ok(())
    }

    async fn reply(&self, frame: Frame) -> io::Result<()> {
        send(&self.out, Out::Frame(frame)).await
    }

    async fn handle(&mut self, frame: Frame) -> Result<(), super::frame::FrameError> {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                headers,
                ..
            } => {
                // client streams are odd and increasing (spdystream's check)
                if stream_id % 2 == 0 || stream_id <= self.last_id {
                    self.reply(Frame::RstStream {
                        stream_id,
                        status: rst::PROTOCOL_ERROR,
                    })
                    .await?;
                    return Ok(());
                }
                self.last_id = stream_id;
                self.streams.retain(|_, s| {
                    !(s.tx.is_none()
                        && (s.state.fin_sent.load(Ordering::SeqCst)
                            || s.state.reset.load(Ordering::SeqCst)))
                });
                if self.going_away || self.streams.len() >= MAX_STREAMS {
                    self.reply(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    })
                    .await?;
                    return Ok(());
                }
                let state = Arc::new(StreamState {
                    id: stream_id,
                    fin_sent: AtomicBool::new(false),
                    reset: AtomicBool::new(false),
                });
                let (tx, reader) = ChunkReader::channel();
                let tx = (flags & FLAG_FIN == 0).then_some(tx);
                self.streams.insert(
                    stream_id,
                    StreamIn {
                        tx,
                        state: state.clone(),
                    },
                );
                let writer = StreamWriter {
                    state,
                    out: self.out.clone(),
                    poll: PollSender::new(self.out.clone()),
                };
                let stream = IncomingStream {
                    id: stream_id,
                    headers,
                    reader,
                    writer,
                };
                if self.incoming.send(stream).await.is_err() {
                    // nobody takes streams any more: refuse
                    self.reply(Frame::RstStream {
                        stream_id,
                        status: rst::REFUSED_STREAM,
                    })
                    .await?;
                }
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                let len = data.len() as u32;
                let Some(stream) = self.streams.get_mut(&stream_id) else {
                    self.reply(Frame::RstStream {
                        stream_id,
                        status: rst::INVALID_STREAM,
                    })
                    .await?;
                    return Ok(());
                };
                if let Some(tx) = &stream.tx {
                    let mut rest = data;
                    while !rest.is_empty() {
                        let chunk = rest.split_to(rest.len().min(CHUNK));
                        if tx.send(chunk).await.is_err() {
                            // the consumer is gone: discard the rest
                            stream.tx = None;
                            break;
                        }
                    }
                }
                if flags & FLAG_FIN != 0 {
                    stream.tx = None;
                }
                if len > 0 {
                    self.reply(Frame::WindowUpdate {
                        stream_id,
                        delta: len,
                    })
                    .await?;
                    self.reply(Frame::WindowUpdate {
                        stream_id: 0,
                        delta: len,
                    })
                    .await?;
                }
            }
            Frame::RstStream { stream_id, .. } => {
                if let Some(stream) = self.streams.remove(&stream_id) {
                    stream.state.reset.store(true, Ordering::SeqCst);
                }
            }
            Frame::Headers {
                stream_id, flags, ..
            } => {
                if flags & FLAG_FIN != 0 {
                    if let Some(stream) = self.streams.get_mut(&stream_id) {
                        stream.tx = None;
                    }
                }
            }
            Frame::Ping { id } => {
                // echo the client's (odd) pings; even ones would be answers to ours
                if id % 2 == 1 {
                    self.reply(Frame::Ping { id }).await?;
                }
            }
            Frame::GoAway { .. } => self.going_away = true,
            Frame::SynReply { .. }
            | Frame::Settings { .. }
            | Frame::WindowUpdate { .. }
            | Frame::Unknown { .. } => {}
        }
        Ok(())
    }
}
