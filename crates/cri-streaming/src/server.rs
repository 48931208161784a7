//! The HTTP server behind the URLs `get_exec`, `get_attach` and
//! `get_port_forward` hand out: `/exec/<token>`, `/attach/<token>` and
//! `/portforward/<token>` (GET or POST), each upgraded to SPDY/3.1 or to a
//! WebSocket. An unknown, expired or used token is a 404, as in kubelet.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

use crate::cache::{Pending, RequestCache};
use crate::request::{AttachRequest, ExecRequest, PortForwardRequest};
use crate::runtime::Runtime;
use crate::{portforward, remotecommand, Error};

/// The header clients list their protocol versions in (SPDY only).
const PROTOCOL_VERSION: &str = "x-stream-protocol-version";
/// The header a refused negotiation lists the server's versions in.
const ACCEPTED_VERSIONS: &str = "x-accepted-stream-protocol-versions";

/// Streaming server settings; the defaults are containerd's and kubelet's.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address (containerd's `stream_server_address`, "127.0.0.1").
    pub address: String,
    /// Listen port (containerd's `stream_server_port`; "0" picks a free one).
    pub port: String,
    /// Base of the handed-out URLs (default `http://<bound address>`). The
    /// routes stay at the root: a base with a path needs a proxy that strips it.
    pub base_url: Option<String>,
    /// How long SPDY clients have to open their streams (30 s).
    pub stream_creation_timeout: Duration,
    /// How long a handed-out URL stays valid (1 minute).
    pub request_ttl: Duration,
    /// Most URLs handed out and not used yet (1000).
    pub max_in_flight: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            address: "127.0.0.1".into(),
            port: "0".into(),
            base_url: None,
            stream_creation_timeout: Duration::from_secs(30),
            request_ttl: Duration::from_secs(60),
            max_in_flight: 1000,
        }
    }
}

struct Inner<R> {
    runtime: Arc<R>,
    cache: RequestCache,
    base_url: String,
    creation_timeout: Duration,
    cancel: CancellationToken,
}

/// A running streaming server. Dropping it stops the listener and ends every
/// session.
pub struct Server<R: Runtime> {
    inner: Arc<Inner<R>>,
    local_addr: SocketAddr,
}

impl<R: Runtime> Drop for Server<R> {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

impl<R: Runtime> Server<R> {
    /// Binds the listener and starts serving.
    pub async fn start(config: Config, runtime: Arc<R>) -> Result<Self, Error> {
        if config.address.is_empty() {
            return Err(Error::Address {
                address: config.address,
                reason: "empty".into(),
            });
        }
        let port: u16 = config.port.parse().map_err(|_| Error::Address {
            address: config.port.clone(),
            reason: "the port is not a number in 0-65535".into(),
        })?;
        let host = config.address.trim_start_matches('[').trim_end_matches(']');
        let listener = TcpListener::bind((host, port))
            .await
            .map_err(|source| Error::Bind {
                address: format!("{}:{}", config.address, config.port),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            address: format!("{}:{}", config.address, config.port),
            source,
        })?;
        let base_url = config
            .base_url
            .clone()
            .unwrap_or_else(|| format!("http://{local_addr}"))
            .trim_end_matches('/')
            .to_string();
        let inner = Arc::new(Inner {
            runtime,
            cache: RequestCache::new(config.request_ttl, config.max_in_flight),
            base_url,
            creation_timeout: config.stream_creation_timeout,
            cancel: CancellationToken::new(),
        });
        tokio::spawn(accept_loop(listener, inner.clone()));
        tracing::info!(address = %local_addr, "CRI streaming server listening");
        Ok(Self { inner, local_addr })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The base URL handed-out URLs start with.
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    fn url(&self, method: &str, token: &str) -> String {
        format!("{}/{method}/{token}", self.inner.base_url)
    }

    /// Validates an exec request and returns its single-use URL
    /// (ExecResponse.url).
    pub fn get_exec(&self, req: &ExecRequest) -> Result<String, Error> {
        req.validate()?;
        let token = self.inner.cache.insert(Pending::Exec(req.clone()))?;
        Ok(self.url("exec", &token))
    }

    /// Validates an attach request and returns its single-use URL
    /// (AttachResponse.url).
    pub fn get_attach(&self, req: &AttachRequest) -> Result<String, Error> {
        req.validate()?;
        let token = self.inner.cache.insert(Pending::Attach(req.clone()))?;
        Ok(self.url("attach", &token))
    }

    /// Validates a port forward request and returns its single-use URL
    /// (PortForwardResponse.url).
    pub fn get_port_forward(&self, req: &PortForwardRequest) -> Result<String, Error> {
        req.validate()?;
        let token = self.inner.cache.insert(Pending::PortForward(req.clone()))?;
        Ok(self.url("portforward", &token))
    }

    /// Stops accepting connections and ends every session.
    pub fn stop(&self) {
        self.inner.cancel.cancel();
    }
}

async fn accept_loop<R: Runtime>(listener: TcpListener, inner: Arc<Inner<R>>) {
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "streaming server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = inner.cancel.cancelled() => return,
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let cancel = inner.cancel.clone();
            let service = service_fn(move |req| handle(inner.clone(), req));
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades();
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "streaming HTTP connection ended");
                    }
                }
                _ = cancel.cancelled() => {}
            }
        });
    }
}

type Body = Full<Bytes>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(format!("{text}\n"))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

fn not_found() -> Response<Body> {
    plain(StatusCode::NOT_FOUND, "404 page not found")
}

/// Values of a header that may repeat or hold comma-separated lists.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

fn header_has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    header_list(headers, name.as_str())
        .iter()
        .any(|v| v.eq_ignore_ascii_case(token))
}

fn is_websocket(req: &Request<Incoming>) -> bool {
    header_has_token(req.headers(), &header::CONNECTION, "upgrade")
        && header_has_token(req.headers(), &header::UPGRADE, "websocket")
}

async fn handle<R: Runtime>(
    inner: Arc<Inner<R>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').split('/');
    let (Some(kind), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(not_found());
    };
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() {
        return Ok(not_found());
    }
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "405: Method Not Allowed",
        ));
    }
    let Some(pending) = inner.cache.consume(token) else {
        return Ok(not_found());
    };
    let resp = match (kind, pending) {
        ("exec", Pending::Exec(r)) => {
            let opts = remotecommand::Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            };
            let command = remotecommand::Command::Exec {
                container_id: r.container_id,
                cmd: r.cmd,
            };
            remote_command(inner, req, command, opts)
        }
        ("attach", Pending::Attach(r)) => {
            let opts = remotecommand::Options {
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                tty: r.tty,
            };
            let command = remotecommand::Command::Attach {
                container_id: r.container_id,
            };
            remote_command(inner, req, command, opts)
        }
        ("portforward", Pending::PortForward(r)) => port_forward(inner, req, r),
        _ => not_found(),
    };
    Ok(resp)
}

/// Picks the subprotocol for a WebSocket handshake (x/net/websocket's rule:
/// the first the client lists that the server supports; "" if it lists none).
fn websocket_protocol(req: &Request<Incoming>, supported: &[&str]) -> Option<String> {
    let requested = header_list(req.headers(), "sec-websocket-protocol");
    if requested.is_empty() {
        return supported.contains(&"").then(String::new);
    }
    requested
        .into_iter()
        .find(|p| supported.contains(&p.as_str()))
}

/// An accepted upgrade: the 101 response, the negotiated protocol, and the
/// future that yields the connection once the response is sent.
type Upgrade = (Response<Body>, String, hyper::upgrade::OnUpgrade);

/// The connection once the client has switched protocols; None (logged)
/// when the upgrade fails.
async fn upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match on_upgrade.await {
        Ok(upgraded) => Some(TokioIo::new(upgraded)),
        Err(e) => {
            tracing::debug!(error = %e, "streaming upgrade failed");
            None
        }
    }
}

/// Answers a WebSocket upgrade; the returned future yields the connection.
fn websocket_upgrade(
    req: &mut Request<Incoming>,
    supported: &[&'static str],
) -> Result<Upgrade, Box<Response<Body>>> {
    let Some(key) = req.headers().get("sec-websocket-key") else {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "missing Sec-WebSocket-Key",
        )));
    };
    if req
        .headers()
        .get("sec-websocket-version")
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut resp = plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
        resp.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("13"));
        return Err(Box::new(resp));
    }
    let Some(protocol) = websocket_protocol(req, supported) else {
        return Err(Box::new(plain(
            StatusCode::FORBIDDEN,
            &format!(
                "requested protocol(s) are not supported: {:?}; supports {supported:?}",
                header_list(req.headers(), "sec-websocket-protocol")
            ),
        )));
    };
    let accept = derive_accept_key(key.as_bytes());
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    if !protocol.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&protocol) {
            h.insert("sec-websocket-protocol", v);
        }
    }
    Ok((resp, protocol, hyper::upgrade::on(req)))
}

/// httpstream's `Handshake` plus the SPDY upgrade check.
fn spdy_upgrade(
    req: &mut Request<Incoming>,
    supported: &[&'static str],
) -> Result<Upgrade, Box<Response<Body>>> {
    let client = header_list(req.headers(), PROTOCOL_VERSION);
    if client.is_empty() {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: X-Stream-Protocol-Version is required",
        )));
    }
    let Some(protocol) = client.iter().find(|p| supported.contains(&p.as_str())) else {
        let mut resp = plain(
            StatusCode::FORBIDDEN,
            &format!(
                "unable to upgrade: unable to negotiate protocol: client supports {client:?}, server accepts {supported:?}"
            ),
        );
        for p in supported {
            resp.headers_mut()
                .append(ACCEPTED_VERSIONS, HeaderValue::from_static(p));
        }
        return Err(Box::new(resp));
    };
    let protocol = protocol.clone();
    if !header_has_token(req.headers(), &header::CONNECTION, "upgrade")
        || !header_has_token(req.headers(), &header::UPGRADE, "spdy/3.1")
    {
        return Err(Box::new(plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request",
        )));
    }
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    if let Ok(v) = HeaderValue::from_str(&protocol) {
        h.insert(PROTOCOL_VERSION, v);
    }
    Ok((resp, protocol, hyper::upgrade::on(req)))
}

fn remote_command<R: Runtime>(
    inner: Arc<Inner<R>>,
    mut req: Request<Incoming>,
    command: remotecommand::Command,
    opts: remotecommand::Options,
) -> Response<Body> {
    let websocket = is_websocket(&req);
    let upgrade = if websocket {
        websocket_upgrade(&mut req, remotecommand::WS_PROTOCOLS)
    } else {
        spdy_upgrade(&mut req, remotecommand::SPDY_PROTOCOLS)
    };
    let (resp, protocol, on_upgrade) = match upgrade {
        Ok(u) => u,
        Err(resp) => return *resp,
    };
    let cancel = inner.cancel.child_token();
    tokio::spawn(async move {
        let Some(io) = upgraded(on_upgrade).await else {
            return;
        };
        let runtime = inner.runtime.as_ref();
        if websocket {
            remotecommand::serve_websocket(runtime, command, opts, &protocol, io, cancel).await;
        } else {
            remotecommand::serve_spdy(
                runtime,
                command,
                opts,
                &protocol,
                io,
                cancel,
                inner.creation_timeout,
            )
            .await;
        }
    });
    resp
}

fn port_forward<R: Runtime>(
    inner: Arc<Inner<R>>,
    mut req: Request<Incoming>,
    pf: PortForwardRequest,
) -> Response<Body> {
    let websocket = is_websocket(&req);
    // validated when the URL was handed out
    let ports: Vec<u16> = pf
        .port
        .iter()
        .filter_map(|p| u16::try_from(*p).ok())
        .collect();
    if websocket && (ports.is_empty() || ports.len() > 127) {
        return plain(
            StatusCode::BAD_REQUEST,
            "a WebSocket port forward needs 1 to 127 ports in its request",
        );
    }
    let upgrade = if websocket {
        websocket_upgrade(&mut req, portforward::WS_PROTOCOLS)
    } else {
        spdy_upgrade(&mut req, portforward::SPDY_PROTOCOLS)
    };
    let (resp, protocol, on_upgrade) = match upgrade {
        Ok(u) => u,
        Err(resp) => return *resp,
    };
    let cancel = inner.cancel.child_token();
    tokio::spawn(async move {
        let Some(io) = upgraded(on_upgrade).await else {
            return;
        };
        let runtime = inner.runtime.clone();
        let sandbox = pf.pod_sandbox_id;
        if websocket {
            portforward::serve_websocket(runtime, sandbox, ports, &protocol, io, cancel).await;
        } else {
            portforward::serve_spdy(runtime, sandbox, io, cancel, inner.creation_timeout).await;
        }
    });
    resp
}
