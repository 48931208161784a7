//! Kubernetes' channel protocols over WebSocket (`channel.k8s.io` and its
//! `base64.`, `v4.` and `v5.` variants), as k8s.io/apimachinery's `wsstream`
//! speaks them: every message starts with a channel number (a byte, or an
//! ASCII digit in the base64 variants), and `v5.channel.k8s.io` adds the
//! close signal `[255, channel]` with which a client half-closes stdin.
//!
//! A reader task routes each message to its channel's bounded queue (a full
//! queue stops reading: backpressure); a writer task owns the socket's sink
//! and serialises every outgoing message from one bounded queue.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::{frame::coding::CloseCode, CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::{CancellationToken, PollSender};

use crate::pipe::{ChunkReader, CHUNK};

/// The binary channel subprotocol (also used when the client names none).
pub const CHANNEL: &str = "channel.k8s.io";
/// The base64 (text) channel subprotocol.
pub const BASE64_CHANNEL: &str = "base64.channel.k8s.io";
/// Remote command v4: JSON `metav1.Status` on the error channel.
pub const V4_CHANNEL: &str = "v4.channel.k8s.io";
/// Remote command v4 over base64 text messages.
pub const V4_BASE64_CHANNEL: &str = "v4.base64.channel.k8s.io";
/// Remote command v5: v4 plus the stdin close signal.
pub const V5_CHANNEL: &str = "v5.channel.k8s.io";

/// The channel byte of v5's close signal.
const CLOSE_SIGNAL: u8 = 255;
/// Largest message accepted from a client.
const MAX_MESSAGE: usize = 1 << 20;
/// How long a closing server waits for the client's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// How channel data is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Codec {
    /// Binary messages, channel byte first.
    Binary,
    /// Text messages: ASCII channel digit, then base64 of the data.
    Base64,
}

impl Codec {
    /// The codec of a negotiated subprotocol.
    pub(crate) fn of(protocol: &str) -> Self {
        if protocol.contains("base64") {
            Codec::Base64
        } else {
            Codec::Binary
        }
    }
}

enum WsOut {
    Data(u8, Bytes),
    Close,
}

/// The server side of a channel-multiplexed WebSocket.
pub(crate) struct WsConn {
    out: mpsc::Sender<WsOut>,
    writer: tokio::task::JoinHandle<()>,
    peer_gone: CancellationToken,
    cancel: CancellationToken,
}

impl WsConn {
    /// Starts the reader and writer tasks. `readable[i]` says whether input on
    /// channel `i` is delivered (it is dropped otherwise); the returned vector
    /// has a reader for each readable channel.
    pub(crate) async fn start<T>(
        io: T,
        codec: Codec,
        readable: &[bool],
        close_signal: bool,
        cancel: CancellationToken,
    ) -> (Self, Vec<Option<ChunkReader>>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let (mut sink, mut stream) = ws.split();
        let mut senders = Vec::with_capacity(readable.len());
        let mut readers = Vec::with_capacity(readable.len());
        for &r in readable {
            if r {
                let (tx, rx) = ChunkReader::channel();
                senders.push(Some(tx));
                readers.push(Some(rx));
            } else {
                senders.push(None);
                readers.push(None);
            }
        }
        let peer_gone = CancellationToken::new();
        let gone = peer_gone.clone();
        let reader_cancel = cancel.clone();
        tokio::spawn(async move {
            let read = async {
                while let Some(msg) = stream.next().await {
                    let data: Bytes = match msg {
                        Ok(Message::Binary(b)) => b,
                        Ok(Message::Text(t)) => Bytes::copy_from_slice(t.as_bytes()),
                        Ok(Message::Close(_)) => break,
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::debug!(error = %e, "websocket read ended");
                            break;
                        }
                    };
                    if data.is_empty() {
                        continue;
                    }
                    if close_signal && data[0] == CLOSE_SIGNAL {
                        if data.len() != 2 {
                            tracing::debug!("malformed websocket close signal");
                            break;
                        }
                        if let Some(slot) = senders.get_mut(data[1] as usize) {
                            *slot = None;
                        }
                        continue;
                    }
                    let channel = match codec {
                        Codec::Binary => data[0],
                        Codec::Base64 => data[0].wrapping_sub(b'0'),
                    };
                    let Some(slot) = senders.get_mut(channel as usize) else {
                        continue;
                    };
                    let Some(tx) = slot else { continue };
                    let payload = match codec {
                        Codec::Binary => data.slice(1..),
                        Codec::Base64 => {
                            match base64::engine::general_purpose::STANDARD.decode(&data[1..]) {
                                Ok(d) => Bytes::from(d),
                                Err(_) => {
                                    tracing::debug!(channel, "invalid base64 on websocket");
                                    continue;
                                }
                            }
                        }
                    };
                    let mut rest = payload;
                    while !rest.is_empty() {
                        let chunk = rest.split_to(rest.len().min(CHUNK));
                        if tx.send(chunk).await.is_err() {
                            *slot = None;
                            break;
                        }
                    }
                }
            };
            tokio::select! {
                _ = read => {}
                _ = reader_cancel.cancelled() => {}
            }
            gone.cancel();
        });
        let (out_tx, mut out_rx) = mpsc::channel::<WsOut>(32);
        let writer_cancel = cancel.clone();
        let writer = tokio::spawn(async move {
            let write = async {
                while let Some(item) = out_rx.recv().await {
                    let msg = match item {
                        WsOut::Data(ch, data) => match codec {
                            Codec::Binary => {
                                let mut frame = Vec::with_capacity(data.len() + 1);
                                frame.push(ch);
                                frame.extend_from_slice(&data);
                                Message::Binary(frame.into())
                            }
                            Codec::Base64 => {
                                let mut text = String::with_capacity(data.len() * 4 / 3 + 5);
                                // as Go's string('0'+num): byte arithmetic wraps
                                text.push(b'0'.wrapping_add(ch) as char);
                                base64::engine::general_purpose::STANDARD
                                    .encode_string(&data, &mut text);
                                Message::text(text)
                            }
                        },
                        WsOut::Close => {
                            let frame = CloseFrame {
                                code: CloseCode::Normal,
                                reason: "".into(),
                            };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                            return;
                        }
                    };
                    if let Err(e) = sink.send(msg).await {
                        tracing::debug!(error = %e, "websocket write ended");
                        return;
                    }
                }
            };
            tokio::select! {
                _ = write => {}
                _ = writer_cancel.cancelled() => {}
            }
        });
        (
            Self {
                out: out_tx,
                writer,
                peer_gone,
                cancel,
            },
            readers,
        )
    }

    /// A writer for channel `ch`.
    pub(crate) fn writer(&self, ch: u8) -> ChannelWriter {
        ChannelWriter {
            ch,
            poll: PollSender::new(self.out.clone()),
        }
    }

    /// Sends one message on channel `ch` (possibly empty: kubelet's "ready").
    pub(crate) async fn send(&self, ch: u8, data: Bytes) {
        let _ = self.out.send(WsOut::Data(ch, data)).await;
    }

    /// Resolves when the client closed the socket.
    pub(crate) fn peer_gone(&self) -> CancellationToken {
        self.peer_gone.clone()
    }

    /// Sends a close frame after everything queued, waits briefly for the
    /// client's answer, then drops the connection.
    pub(crate) async fn close(self) {
        let _ = self.out.send(WsOut::Close).await;
        drop(self.out);
        let _ = self.writer.await;
        let _ = tokio::time::timeout(CLOSE_GRACE, self.peer_gone.cancelled()).await;
        self.cancel.cancel();
    }
}

/// Writes to one channel; writes become messages of at most 32 KiB.
pub(crate) struct ChannelWriter {
    ch: u8,
    poll: PollSender<WsOut>,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "websocket closed")
}

impl AsyncWrite for ChannelWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.poll.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(CHUNK);
        let ch = self.ch;
        self.poll
            .send_item(WsOut::Data(ch, Bytes::copy_from_slice(&buf[..n])))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // channels have no half-close from the server; the socket's close ends them
        Poll::Ready(Ok(()))
    }
}
