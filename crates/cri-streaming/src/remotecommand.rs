//! Exec and attach sessions: kubelet's remotecommand server over SPDY
//! (`channel.k8s.io` v1 to `v4.channel.k8s.io`, one SPDY stream per
//! `streamtype`) and over WebSocket (channels 0-4, v5 adds stdin close).
//!
//! What the client may use comes from the cached CRI request, never from
//! the URL's query. The session ends with a status on the error stream:
//! v4/v5 write a JSON `metav1.Status` (Success, NonZeroExitCode with the
//! code, or InternalError), older versions write the failure text only.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::{BoxRead, BoxWrite, Runtime, RuntimeError, Streams, TerminalSize};
use crate::spdy::conn::{Connection, StreamControl};
use crate::status;
use crate::websocket::{self, Codec, WsConn};

/// SPDY remote command protocols, newest first (kubelet's list).
pub(crate) const SPDY_PROTOCOLS: &[&str] = &[
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];

/// WebSocket remote command subprotocols ("" = the client named none).
pub(crate) const WS_PROTOCOLS: &[&str] = &[
    websocket::V5_CHANNEL,
    websocket::V4_CHANNEL,
    websocket::V4_BASE64_CHANNEL,
    websocket::CHANNEL,
    websocket::BASE64_CHANNEL,
    "",
];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;

/// Largest pending (incomplete) resize message.
const MAX_RESIZE_MESSAGE: usize = 4096;

/// What the session runs.
#[derive(Debug, Clone)]
pub(crate) enum Command {
    Exec {
        container_id: String,
        cmd: Vec<String>,
    },
    Attach {
        container_id: String,
    },
}

/// Which streams the CRI request allowed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The client's streams as the protocol layer found them.
struct ClientStreams {
    stdin: Option<BoxRead>,
    stdout: Option<BoxWrite>,
    stderr: Option<BoxWrite>,
    /// Undecoded resize messages.
    resize: Option<BoxRead>,
}

/// Runs the command and returns the bytes for the error stream, if any.
async fn run<R: Runtime>(
    runtime: &R,
    command: &Command,
    tty: bool,
    client: ClientStreams,
    json_status: bool,
) -> Option<Vec<u8>> {
    let ClientStreams {
        stdin,
        stdout,
        stderr,
        resize,
    } = client;
    let resize = match resize {
        Some(r) if tty => {
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(decode_resizes(r, tx));
            Some(rx)
        }
        _ => None,
    };
    let streams = Streams {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let result = match command {
        Command::Exec { container_id, cmd } => runtime.exec(container_id, cmd, tty, streams).await,
        Command::Attach { container_id } => runtime.attach(container_id, tty, streams).await,
    };
    match (result, command) {
        (Ok(()), _) | (Err(RuntimeError::ExitCode(0)), Command::Exec { .. }) => {
            json_status.then(status::success)
        }
        (Err(RuntimeError::ExitCode(code)), Command::Exec { cmd, .. }) => {
            // containerd's CRI wording of the exit error, inside kubelet's
            let message = format!(
                "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
                cmd.join(" ")
            );
            Some(if json_status {
                status::non_zero_exit(code, &message)
            } else {
                message.into_bytes()
            })
        }
        (Err(e), command) => {
            let message = match command {
                Command::Exec { .. } => format!("error executing command in container: {e}"),
                Command::Attach { .. } => format!("error attaching to container: {e}"),
            };
            tracing::warn!(error = %message, "streaming session failed");
            Some(if json_status {
                status::internal(&message)
            } else {
                status::internal_message(&message).into_bytes()
            })
        }
    }
}

/// Decodes a stream of JSON terminal sizes (client-go writes one object per
/// resize) until the stream ends or holds garbage.
async fn decode_resizes(mut input: BoxRead, tx: mpsc::Sender<TerminalSize>) {
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = match input.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut consumed = 0;
        let mut values = serde_json::Deserializer::from_slice(&buf).into_iter::<TerminalSize>();
        loop {
            match values.next() {
                Some(Ok(size)) => {
                    consumed = values.byte_offset();
                    if tx.send(size).await.is_err() {
                        return;
                    }
                }
                Some(Err(e)) if e.is_eof() => break,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "invalid resize message");
                    return;
                }
                None => {
                    consumed = buf.len();
                    break;
                }
            }
        }
        buf.drain(..consumed);
        if buf.len() > MAX_RESIZE_MESSAGE {
            tracing::debug!("resize message too large");
            return;
        }
    }
}

/// Serves a session on an upgraded SPDY connection.
pub(crate) async fn serve_spdy<R: Runtime, T>(
    runtime: &R,
    command: Command,
    opts: Options,
    protocol: &str,
    io: T,
    cancel: CancellationToken,
    creation_timeout: Duration,
) where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let version = match protocol {
        "v4.channel.k8s.io" => 4,
        "v3.channel.k8s.io" => 3,
        "v2.channel.k8s.io" => 2,
        _ => 1,
    };
    let mut conn = Connection::start(io, cancel);
    let expected = 1
        + usize::from(opts.stdin)
        + usize::from(opts.stdout)
        + usize::from(opts.stderr)
        + usize::from(opts.tty && version >= 3);

    let mut error = None;
    let mut stdin: Option<BoxRead> = None;
    let mut stdout: Option<BoxWrite> = None;
    let mut stderr: Option<BoxWrite> = None;
    let mut resize: Option<BoxRead> = None;
    let mut controls: Vec<StreamControl> = Vec::new();
    let mut stdin_control = None;
    let mut received = 0;
    let deadline = tokio::time::sleep(creation_timeout);
    tokio::pin!(deadline);
    while received < expected {
        let incoming = tokio::select! {
            s = conn.next_stream() => s,
            _ = &mut deadline => {
                tracing::warn!("timed out waiting for client to create streams");
                None
            }
        };
        let Some(incoming) = incoming else {
            conn.close().await;
            return;
        };
        let kind = incoming.headers.get("streamtype").unwrap_or("").to_string();
        let Ok((reader, writer)) = incoming.accept().await else {
            conn.close().await;
            return;
        };
        controls.push(writer.control());
        match kind.as_str() {
            "error" => error = Some(writer),
            "stdin" => {
                stdin_control = controls.last().cloned();
                stdin = Some(Box::new(reader))
            }
            "stdout" => stdout = Some(Box::new(writer)),
            "stderr" => stderr = Some(Box::new(writer)),
            "resize" if version >= 3 => resize = Some(Box::new(reader)),
            other => {
                tracing::debug!(stream_type = other, "unexpected stream type");
                continue;
            }
        }
        received += 1;
    }
    if let (1, Some(control)) = (version, &stdin_control) {
        // kubelet's v1 handler closes its side of stdin at once
        control.finish().await;
    }
    // streams the request did not allow stay unused
    let stdin = stdin.filter(|_| opts.stdin);
    let stdout = stdout.filter(|_| opts.stdout);
    let stderr = stderr.filter(|_| opts.stderr);
    let client = ClientStreams {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let session = run(runtime, &command, opts.tty, client, version >= 4);
    tokio::pin!(session);
    // streams beyond the expected ones are refused, so the connection's
    // reader never waits for someone to take them
    let status = loop {
        tokio::select! {
            status = &mut session => break status,
            Some(extra) = conn.next_stream() => extra.refuse().await,
        }
    };
    if let (Some(mut error), Some(status)) = (error, status) {
        let _ = error.write_all(&status).await;
        let _ = error.shutdown().await;
    }
    for control in &controls {
        control.finish().await;
    }
    conn.close().await;
}

/// Serves a session on an upgraded WebSocket connection.
pub(crate) async fn serve_websocket<R: Runtime, T>(
    runtime: &R,
    command: Command,
    opts: Options,
    protocol: &str,
    io: T,
    cancel: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let readable = [opts.stdin, false, false, false, true];
    let close_signal = protocol == websocket::V5_CHANNEL;
    let (conn, mut readers) =
        WsConn::start(io, Codec::of(protocol), &readable, close_signal, cancel).await;
    // an empty message on the lowest writable channel tells the client the
    // session is up (kubelet's handshake completion)
    let ready = if opts.stdout {
        STDOUT
    } else if opts.stderr {
        STDERR
    } else {
        ERROR
    };
    conn.send(ready, bytes::Bytes::new()).await;
    let stdin = readers[STDIN as usize]
        .take()
        .map(|r| Box::new(r) as BoxRead);
    let resize = readers[RESIZE as usize]
        .take()
        .map(|r| Box::new(r) as BoxRead);
    let stdout = opts
        .stdout
        .then(|| Box::new(conn.writer(STDOUT)) as BoxWrite);
    let stderr = opts
        .stderr
        .then(|| Box::new(conn.writer(STDERR)) as BoxWrite);
    let json_status = matches!(
        protocol,
        websocket::V4_CHANNEL | websocket::V4_BASE64_CHANNEL | websocket::V5_CHANNEL
    );
    let client = ClientStreams {
        stdin,
        stdout,
        stderr,
        resize,
    };
    let status = run(runtime, &command, opts.tty, client, json_status).await;
    if let Some(status) = status {
        let mut error = conn.writer(ERROR);
        let _ = error.write_all(&status).await;
    }
    conn.close().await;
}
