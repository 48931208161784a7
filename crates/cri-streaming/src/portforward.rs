//! Port forwarding, as kubelet serves it.
//!
//! SPDY (`portforward.k8s.io`): the client opens a pair of streams per
//! forwarded connection, `streamtype: error` and `streamtype: data`, both
//! with a `port` header and the same `requestid`; once both are there the
//! data stream is handed to the runtime. A pair not completed within the
//! stream creation timeout is dropped with a message on its error stream.
//!
//! WebSocket (`v4.channel.k8s.io` and base64, or no subprotocol): the ports
//! come from the cached CRI request; port i has data channel 2i and error
//! channel 2i+1, and the first message on each is the port, 16 bits little
//! endian.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::pipe::DuplexStream;
use crate::runtime::{Runtime, RuntimeError};
use crate::spdy::conn::{ChunkReaderHalf, Connection, IncomingStream, StreamWriter};
use crate::websocket::{self, Codec, WsConn};

/// SPDY port forward protocols.
pub(crate) const SPDY_PROTOCOLS: &[&str] = &["portforward.k8s.io"];

/// WebSocket port forward subprotocols ("" = the client named none).
pub(crate) const WS_PROTOCOLS: &[&str] = &[websocket::V4_CHANNEL, websocket::V4_BASE64_CHANNEL, ""];

/// kubelet's message for a failed forward (the pod UID is unknown here).
fn forward_error(port: u16, sandbox: &str, err: &RuntimeError) -> String {
    format!("error forwarding port {port} to pod {sandbox}, uid : {err}")
}

/// Whether kubelet resets the streams instead of reporting the error.
fn is_reset(err: &RuntimeError) -> bool {
    matches!(err, RuntimeError::Io(e)
        if matches!(e.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset))
}

#[derive(Default)]
struct Pair {
    data: Option<(ChunkReaderHalf, StreamWriter)>,
    error: Option<StreamWriter>,
}

/// Checks a new stream's headers as kubelet's `httpStreamReceived` does.
fn check_stream(stream: &IncomingStream) -> Result<(u16, &'static str), String> {
    let port = stream.headers.get("port").unwrap_or("");
    if port.is_empty() {
        return Err("\"port\" header is required".into());
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("unable to parse {port:?} as a port"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    match stream.headers.get("streamtype") {
        Some("error") => Ok((port, "error")),
        Some("data") => Ok((port, "data")),
        Some("") | None => Err("\"streamType\" header is required".into()),
        Some(other) => Err(format!("invalid stream type {other:?}")),
    }
}

/// Serves port forwards on an upgraded SPDY connection until the client
/// closes it.
pub(crate) async fn serve_spdy<R: Runtime, T>(
    runtime: Arc<R>,
    sandbox: String,
    io: T,
    cancel: CancellationToken,
    creation_timeout: Duration,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut conn = Connection::start(io, cancel.clone());
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let (expired_tx, mut expired_rx) = mpsc::channel::<String>(16);
    let mut forwards = JoinSet::new();
    let mut timers = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            s = conn.next_stream() => s,
            Some(id) = expired_rx.recv() => {
                if let Some(pair) = pairs.remove(&id) {
                    tracing::warn!(request = %id, "timed out waiting for port forward streams");
                    if let Some(mut error) = pair.error {
                        let msg = format!("(conn=spdy, request={id}) timed out waiting for streams");
                        let _ = error.write_all(msg.as_bytes()).await;
                        let _ = error.shutdown().await;
                    }
                    if let Some((_, data)) = pair.data {
                        data.control().reset().await;
                    }
                }
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let Some(incoming) = incoming else { break };
        let (port, kind) = match check_stream(&incoming) {
            Ok(v) => v,
            Err(reason) => {
                tracing::debug!(%reason, "refusing port forward stream");
                incoming.refuse().await;
                continue;
            }
        };
        let request_id = match incoming.headers.get("requestid") {
            Some(id) if !id.is_empty() => id.to_string(),
            // old clients: the error stream's id names the pair, data is id+2
            _ if kind == "error" => incoming.id.to_string(),
            _ => incoming.id.saturating_sub(2).to_string(),
        };
        let Ok((reader, writer)) = incoming.accept().await else {
            break;
        };
        let created = !pairs.contains_key(&request_id);
        let pair = pairs.entry(request_id.clone()).or_default();
        if created {
            let tx = expired_tx.clone();
            let id = request_id.clone();
            timers.spawn(async move {
                tokio::time::sleep(creation_timeout).await;
                let _ = tx.send(id).await;
            });
        }
        let duplicate = match kind {
            "error" => pair.error.replace(writer).is_some(),
            _ => pair.data.replace((reader, writer)).is_some(),
        };
        if duplicate {
            let msg = format!(
                "error processing stream for request {request_id}: {kind} stream already assigned"
            );
            tracing::warn!(%msg);
            if let Some(error) = pair.error.as_mut() {
                let _ = error.write_all(msg.as_bytes()).await;
            }
            continue;
        }
        if pair.error.is_some() && pair.data.is_some() {
            let Some(Pair {
                data: Some((reader, data)),
                error: Some(error),
            }) = pairs.remove(&request_id)
            else {
                continue;
            };
            let runtime = runtime.clone();
            let sandbox = sandbox.clone();
            forwards.spawn(async move {
                let data_control = data.control();
                let error_control = error.control();
                let result = runtime
                    .port_forward(&sandbox, port, DuplexStream::new(reader, data))
                    .await;
                match result {
                    Ok(()) => {}
                    Err(e) if is_reset(&e) => {
                        tracing::debug!(error = %e, port, "port forward reset");
                        data_control.reset().await;
                        error_control.reset().await;
                        return;
                    }
                    Err(e) => {
                        let msg = forward_error(port, &sandbox, &e);
                        tracing::warn!(%msg);
                        let mut error = error;
                        let _ = error.write_all(msg.as_bytes()).await;
                    }
                }
                data_control.finish().await;
                error_control.finish().await;
            });
        }
    }
    timers.abort_all();
    // the client is gone: its forwards cannot deliver anything any more
    forwards.abort_all();
    conn.close().await;
}

/// Serves the ports of the cached request on an upgraded WebSocket.
pub(crate) async fn serve_websocket<R: Runtime, T>(
    runtime: Arc<R>,
    sandbox: String,
    ports: Vec<u16>,
    protocol: &str,
    io: T,
    cancel: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let readable: Vec<bool> = ports.iter().flat_map(|_| [true, false]).collect();
    let (conn, mut readers) =
        WsConn::start(io, Codec::of(protocol), &readable, false, cancel).await;
    let mut forwards = JoinSet::new();
    for (i, &port) in ports.iter().enumerate() {
        let (data_ch, error_ch) = ((2 * i) as u8, (2 * i + 1) as u8);
        let prefix = Bytes::copy_from_slice(&port.to_le_bytes());
        conn.send(data_ch, prefix.clone()).await;
        conn.send(error_ch, prefix).await;
        let Some(reader) = readers[2 * i].take() else {
            continue;
        };
        let data = conn.writer(data_ch);
        let mut error = conn.writer(error_ch);
        let runtime = runtime.clone();
        let sandbox = sandbox.clone();
        forwards.spawn(async move {
            let result = runtime
                .port_forward(&sandbox, port, DuplexStream::new(reader, data))
                .await;
            if let Err(e) = result {
                let msg = forward_error(port, &sandbox, &e);
                tracing::warn!(%msg);
                let _ = error.write_all(msg.as_bytes()).await;
            }
        });
    }
    let peer_gone = conn.peer_gone();
    tokio::select! {
        _ = async { while forwards.join_next().await.is_some() {} } => {}
        _ = peer_gone.cancelled() => forwards.abort_all(),
    }
    conn.close().await;
}
