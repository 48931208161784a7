//! containerd 2.x's Streaming service (`containerd.services.streaming.v1`,
//! plugin `io.containerd.grpc.v1.streaming`) and the stream manager it
//! registers streams with (`io.containerd.streaming.v1.manager`).
//!
//! A client opens a bidirectional stream of `Any`s and names it in its first
//! message, a `StreamInit{id}`; once the stream is registered under
//! (namespace, id) the daemon answers with an empty message, and the client
//! then names the stream in a Transfer request (progress, import/export
//! bytes, registry credentials). The transfer takes the stream out of the
//! manager: it reads what the client sends and writes to the client. The
//! RPC ends when the transfer closes (or drops) the stream; a client that
//! goes away first unregisters it. Every queue is bounded, and so is the
//! number of registered streams.

use crate::GrpcService;
use futures::Stream;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use stevedore_api::services::streaming::{
    streaming_server::{Streaming, StreamingServer},
    StreamInit,
};
use stevedore_api::typeurl::from_any;
use stevedore_types::{Error, Result};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// Most streams registered and not yet taken, over all namespaces.
const MAX_STREAMS: usize = 1024;
/// Messages queued each way on one stream.
const QUEUE: usize = 16;
/// How long closing a stream waits for its RPC to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

type Outbound = mpsc::Sender<std::result::Result<prost_types::Any, Status>>;
/// The client's side of the RPC, read by whoever took the stream: no task
/// in between, so a window update or an uploaded chunk costs the transfer
/// one wake-up, not two (until it is taken, h2's flow control holds what
/// the client sends). Boxed: a `Streaming` is large, a `ManagedStream` is
/// moved around in transfer endpoints.
type Inbound = Box<tonic::Streaming<prost_types::Any>>;

struct Registered {
    token: u64,
    tx: Outbound,
    rx: Inbound,
    ended: oneshot::Receiver<()>,
}

/// Streams registered by clients, waiting for a transfer to take them.
#[derive(Default)]
pub struct StreamManager {
    streams: Mutex<HashMap<(String, String), Registered>>,
    next: AtomicU64,
}

impl StreamManager {
    pub fn new() -> Self {
        Self::default()
    }

    fn register(&self, ns: &str, id: &str, reg: Registered) -> Result<()> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if streams.len() >= MAX_STREAMS {
            return Err(Error::new(
                stevedore_types::ErrorKind::ResourceExhausted,
                format!("stream {id}: {MAX_STREAMS} streams are already waiting"),
            ));
        }
        let key = (ns.to_string(), id.to_string());
        if streams.contains_key(&key) {
            return Err(Error::already_exists(format!(
                "stream {id}: already exists"
            )));
        }
        streams.insert(key, reg);
        Ok(())
    }

    fn unregister(&self, ns: &str, id: &str, token: u64) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let key = (ns.to_string(), id.to_string());
        if streams.get(&key).is_some_and(|r| r.token == token) {
            streams.remove(&key);
        }
    }

    /// Take the stream `id` of namespace `ns` (NotFound when no client
    /// registered it, or another transfer took it).
    pub fn take(&self, ns: &str, id: &str) -> Result<ManagedStream> {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let reg = streams
            .remove(&(ns.to_string(), id.to_string()))
            .ok_or_else(|| Error::not_found(format!("stream {id}: not found")))?;
        Ok(ManagedStream {
            id: id.to_string(),
            tx: reg.tx,
            rx: reg.rx,
            ended: reg.ended,
        })
    }
}

/// A client's stream, taken by a transfer.
pub struct ManagedStream {
    id: String,
    tx: Outbound,
    rx: Inbound,
    ended: oneshot::Receiver<()>,
}

impl ManagedStream {
    /// The id the client gave the stream.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Send a message to the client (Unavailable once it went away).
    pub async fn send(&self, msg: prost_types::Any) -> Result<()> {
        self.tx
            .send(Ok(msg))
            .await
            .map_err(|_| Error::unavailable(format!("stream {}: the client went away", self.id)))
    }

    /// The client's next message; None when it closed its side.
    pub async fn recv(&mut self) -> Result<Option<prost_types::Any>> {
        self.rx
            .message()
            .await
            .map_err(|s| Error::unavailable(format!("stream {}: {}", self.id, s.message())))
    }

    /// End the RPC and wait (briefly) until everything sent on it left, so
    /// a client sees the stream's end before the transfer's answer.
    pub async fn close(self) {
        let ManagedStream { tx, rx, ended, .. } = self;
        drop(tx);
        drop(rx);
        let _ = tokio::time::timeout(CLOSE_WAIT, ended).await;
    }
}

/// The RPC's response: what the transfer sends; unregisters a stream no
/// transfer took when the client goes away, and reports its end.
struct Outgoing {
    rx: mpsc::Receiver<std::result::Result<prost_types::Any, Status>>,
    ended: Option<oneshot::Sender<()>>,
    manager: Arc<StreamManager>,
    key: (String, String),
    token: u64,
}

impl Stream for Outgoing {
    type Item = std::result::Result<prost_types::Any, Status>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(None) = r {
            if let Some(e) = self.ended.take() {
                let _ = e.send(());
            }
        }
        r
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        self.manager
            .unregister(&self.key.0, &self.key.1, self.token);
        if let Some(e) = self.ended.take() {
            let _ = e.send(());
        }
    }
}

/// The Streaming gRPC service.
pub struct StreamingService {
    manager: Arc<StreamManager>,
}

impl StreamingService {
    pub fn grpc(manager: Arc<StreamManager>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(StreamingServer::new(
            StreamingService { manager }
        )))
    }
}

/// The acknowledgement of a registered stream: an empty message.
fn empty_any() -> prost_types::Any {
    prost_types::Any {
        type_url: "google.protobuf.Empty".to_string(),
        value: Vec::new(),
    }
}

#[tonic::async_trait]
impl Streaming for StreamingService {
    type StreamStream =
        Pin<Box<dyn Stream<Item = std::result::Result<prost_types::Any, Status>> + Send>>;

    async fn stream(
        &self,
        req: Request<tonic::Streaming<prost_types::Any>>,
    ) -> std::result::Result<Response<Self::StreamStream>, Status> {
        // streams are namespaced as in containerd, where no namespace is ""
        let ns = req
            .metadata()
            .get(stevedore_api::NAMESPACE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let mut inbound = req.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream: closed before its StreamInit"))?;
        let init: StreamInit = from_any(&first).ok_or_else(|| {
            Status::invalid_argument(format!(
                "stream: the first message must be a StreamInit, not {:?}",
                first.type_url
            ))
        })?;
        if init.id.is_empty() {
            return Err(Status::invalid_argument("stream: StreamInit without an id"));
        }
        let (out_tx, out_rx) = mpsc::channel(QUEUE);
        let (ended_tx, ended_rx) = oneshot::channel();
        let token = self.manager.next.fetch_add(1, Ordering::Relaxed);
        // the acknowledgement goes first, once the stream can be taken
        out_tx
            .try_send(Ok(empty_any()))
            .map_err(|_| Status::internal("stream: cannot queue the acknowledgement"))?;
        self.manager
            .register(
                &ns,
                &init.id,
                Registered {
                    token,
                    tx: out_tx,
                    rx: Box::new(inbound),
                    ended: ended_rx,
                },
            )
            .map_err(stevedore_api::status::to_status)?;
        tracing::debug!(namespace = %ns, stream = %init.id, "stream registered");
        Ok(Response::new(Box::pin(Outgoing {
            rx: out_rx,
            ended: Some(ended_tx),
            manager: self.manager.clone(),
            key: (ns, init.id),
            token,
        })))
    }
}
