//! A fake runtime, an echo server, and small SPDY/3.1 and WebSocket clients
//! written against the protocols (not against the server's internals).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use stevedore_cri_streaming::spdy::{Decoder, Encoder, Frame, Headers};
use stevedore_cri_streaming::{
    Config, DuplexStream, Runtime, RuntimeError, Server, Streams, TerminalSize,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Commands: `cat` (stdin to stdout), `stderr <text>`, `exit <code>` (prints
/// "out" first), `resize <n>` (prints n resizes), `fail`.
#[derive(Default)]
pub struct FakeRuntime {
    pub calls: Mutex<Vec<String>>,
}

async fn write_out(streams: &mut Streams, text: &str) -> Result<(), RuntimeError> {
    if let Some(out) = streams.stdout.as_mut() {
        out.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

impl Runtime for FakeRuntime {
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        mut streams: Streams,
    ) -> Result<(), RuntimeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("exec {container_id} {} tty={tty}", cmd.join(" ")));
        match cmd[0].as_str() {
            "cat" => {
                let (Some(mut stdin), Some(mut stdout)) =
                    (streams.stdin.take(), streams.stdout.take())
                else {
                    return Err(RuntimeError::Failed("cat needs stdin and stdout".into()));
                };
                tokio::io::copy(&mut stdin, &mut stdout).await?;
                Ok(())
            }
            "stderr" => {
                let err = streams.stderr.as_mut().expect("stderr requested");
                err.write_all(cmd[1].as_bytes()).await?;
                Ok(())
            }
            "exit" => {
                write_out(&mut streams, "out").await?;
                Err(RuntimeError::ExitCode(cmd[1].parse().unwrap()))
            }
            "resize" => {
                let n: usize = cmd[1].parse().unwrap();
                let mut rx = streams.resize.take().expect("tty session has resizes");
                for _ in 0..n {
                    let TerminalSize { width, height } =
                        rx.recv().await.expect("resize before the stream ends");
                    write_out(&mut streams, &format!("{width}x{height}\n")).await?;
                }
                Ok(())
            }
            "fail" => Err(RuntimeError::Failed("boom".into())),
            "hold" => {
                // holds stdin without reading it
                let _stdin = streams.stdin.take();
                tokio::time::sleep(Duration::from_millis(cmd[1].parse().unwrap())).await;
                Ok(())
            }
            other => Err(RuntimeError::Failed(format!("unknown command {other}"))),
        }
    }

    async fn attach(
        &self,
        container_id: &str,
        tty: bool,
        mut streams: Streams,
    ) -> Result<(), RuntimeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("attach {container_id} tty={tty}"));
        write_out(&mut streams, &format!("attached to {container_id}\n")).await?;
        if let (Some(mut stdin), Some(mut stdout)) = (streams.stdin.take(), streams.stdout.take()) {
            tokio::io::copy(&mut stdin, &mut stdout).await?;
        }
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: DuplexStream,
    ) -> Result<(), RuntimeError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("portforward {pod_sandbox_id} {port}"));
        let mut target = TcpStream::connect(("127.0.0.1", port)).await?;
        tokio::io::copy_bidirectional(&mut stream, &mut target).await?;
        Ok(())
    }
}

pub async fn server_with(config: Config) -> (Server<FakeRuntime>, Arc<FakeRuntime>) {
    let runtime = Arc::new(FakeRuntime::default());
    let server = Server::start(config, runtime.clone()).await.unwrap();
    (server, runtime)
}

pub async fn server() -> (Server<FakeRuntime>, Arc<FakeRuntime>) {
    server_with(Config::default()).await
}

/// A TCP echo server on 127.0.0.1; returns its port.
pub async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

fn host_and_path(url: &str) -> (String, String) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').unwrap();
    (host.to_string(), format!("/{path}"))
}

/// Sends a raw HTTP/1.1 request; returns the status and the connection
/// positioned after the response head.
pub async fn http_request(
    url: &str,
    method: &str,
    headers: &[(&str, &str)],
) -> (u16, String, TcpStream) {
    let (host, path) = host_and_path(url);
    let mut conn = TcpStream::connect(&host).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(TIMEOUT, conn.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert!(n > 0, "connection closed in the response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, conn)
}

/// What a SPDY session delivered per stream.
#[derive(Debug, Default)]
pub struct Collected {
    pub data: HashMap<u32, Vec<u8>>,
    pub fin: HashSet<u32>,
    pub reset: HashSet<u32>,
    pub replied: HashSet<u32>,
    pub goaway: bool,
    pub pings: Vec<u32>,
    /// (stream id, delta) of each WINDOW_UPDATE.
    pub window_updates: Vec<(u32, u32)>,
}

impl Collected {
    pub fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(self.data.get(&id).map(|v| &v[..]).unwrap_or(b"")).into_owned()
    }

    fn absorb(&mut self, frame: Frame) {
        match frame {
            Frame::Data {
                stream_id,
                flags,
                data,
            } => {
                self.data
                    .entry(stream_id)
                    .or_default()
                    .extend_from_slice(&data);
                if flags & 1 != 0 {
                    self.fin.insert(stream_id);
                }
            }
            Frame::SynReply { stream_id, .. } => {
                self.replied.insert(stream_id);
            }
            Frame::RstStream { stream_id, .. } => {
                self.reset.insert(stream_id);
            }
            Frame::GoAway { .. } => self.goaway = true,
            Frame::Ping { id } => self.pings.push(id),
            Frame::WindowUpdate { stream_id, delta } => {
                self.window_updates.push((stream_id, delta))
            }
            _ => {}
        }
    }
}

/// A minimal SPDY/3.1 client on the crate's frame codec, speaking like
/// client-go's: it opens streams, the server replies.
pub struct SpdyClient {
    write: tokio::net::tcp::OwnedWriteHalf,
    encoder: Encoder,
    frames: mpsc::Receiver<Frame>,
    next_id: u32,
    pub collected: Collected,
    pub protocol: String,
}

impl SpdyClient {
    /// Upgrades `url` to SPDY/3.1 offering `protocols`.
    pub async fn connect(url: &str, protocols: &[&str]) -> Result<Self, (u16, String)> {
        let mut headers = vec![("Connection", "Upgrade"), ("Upgrade", "SPDY/3.1")];
        for p in protocols {
            headers.push(("X-Stream-Protocol-Version", p));
        }
        let (status, head, conn) = http_request(url, "POST", &headers).await;
        if status != 101 {
            return Err((status, head));
        }
        let protocol = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("x-stream-protocol-version")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_default();
        let (mut read, write) = conn.into_split();
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(async move {
            let mut decoder = Decoder::new();
            while let Ok(Some(frame)) = decoder.read(&mut read).await {
                if tx.send(frame).await.is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            write,
            encoder: Encoder::new(),
            frames: rx,
            next_id: 1,
            collected: Collected::default(),
            protocol,
        })
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut buf = Vec::new();
        self.encoder.encode(&frame, &mut buf).unwrap();
        self.write.write_all(&buf).await.unwrap();
    }

    /// Opens a stream with these headers; returns its id.
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> u32 {
        let id = self.next_id;
        self.next_id += 2;
        let mut h = Headers::new();
        for (n, v) in headers {
            h.insert(n, v);
        }
        self.send(Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: h,
        })
        .await;
        id
    }

    pub async fn data(&mut self, id: u32, data: &[u8], fin: bool) {
        self.send(Frame::Data {
            stream_id: id,
            flags: u8::from(fin),
            data: Bytes::copy_from_slice(data),
        })
        .await;
    }

    /// Reads frames until `done` holds or the connection ends.
    pub async fn until(&mut self, done: impl Fn(&Collected) -> bool) {
        tokio::time::timeout(TIMEOUT, async {
            while !done(&self.collected) {
                match self.frames.recv().await {
                    Some(f) => self.collected.absorb(f),
                    None => return,
                }
            }
        })
        .await
        .expect("SPDY frames in time");
    }

    /// Reads frames for `period` (or until the connection ends).
    pub async fn collect_for(&mut self, period: Duration) {
        let _ = tokio::time::timeout(period, async {
            while let Some(f) = self.frames.recv().await {
                self.collected.absorb(f);
            }
        })
        .await;
    }

    /// Bytes the server credited to `id` with WINDOW_UPDATEs.
    pub fn credited(&self, id: u32) -> u64 {
        self.collected
            .window_updates
            .iter()
            .filter(|(s, _)| *s == id)
            .map(|(_, d)| u64::from(*d))
            .sum()
    }

    /// Reads frames until the server closes the connection.
    pub async fn until_closed(&mut self) {
        tokio::time::timeout(TIMEOUT, async {
            while let Some(f) = self.frames.recv().await {
                self.collected.absorb(f);
            }
        })
        .await
        .expect("server closes the connection in time");
    }
}

/// A WebSocket client offering `protocol` ("" offers none).
pub async fn ws_connect(
    url: &str,
    protocol: &str,
) -> Result<(WebSocketStream<TcpStream>, Option<String>), tokio_tungstenite::tungstenite::Error> {
    let (host, _) = host_and_path(url);
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.into_client_request().unwrap();
    if !protocol.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
    }
    let tcp = TcpStream::connect(&host).await.unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(req, tcp).await?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().unwrap().to_string());
    Ok((ws, chosen))
}

/// Reads channel messages until the server closes; returns (channel, data)
/// in arrival order, base64 decoded for the base64 protocols.
pub async fn ws_collect(ws: &mut WebSocketStream<TcpStream>) -> Vec<(u8, Vec<u8>)> {
    use base64::Engine;
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Binary(b)) => out.push((b[0], b[1..].to_vec())),
                Ok(Message::Text(t)) => {
                    let t = t.as_bytes();
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(&t[1..])
                        .unwrap();
                    out.push((t[0] - b'0', data));
                }
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("server closes the websocket in time");
    out
}

/// Concatenated data of one channel.
pub fn channel(messages: &[(u8, Vec<u8>)], ch: u8) -> String {
    let bytes: Vec<u8> = messages
        .iter()
        .filter(|(c, _)| *c == ch)
        .flat_map(|(_, d)| d.clone())
        .collect();
    String::from_utf8(bytes).unwrap()
}

pub async fn ws_send(ws: &mut WebSocketStream<TcpStream>, data: Vec<u8>) {
    ws.send(Message::Binary(data.into())).await.unwrap();
}
