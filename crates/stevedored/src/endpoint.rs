//! The small HTTP/1.1 servers beside the gRPC socket (debug and metrics):
//! an address that is an absolute path is a unix socket, restricted like the
//! gRPC socket (0660, the given owner and group); anything else is a TCP
//! `host:port`.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::{TcpListener, UnixListener};

/// A bound endpoint.
pub enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

impl Listener {
    /// Where it listens, for the log.
    pub fn describe(&self) -> String {
        match self {
            Listener::Unix(_, p) => p.display().to_string(),
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|_| "tcp".into()),
        }
    }

    /// The socket file to remove at shutdown, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Listener::Unix(_, p) => Some(p),
            Listener::Tcp(_) => None,
        }
    }
}

/// Bind `address` (what is it for: `what`, in errors).
pub async fn bind(what: &str, address: &str, uid: u32, gid: u32) -> Result<Listener> {
    if address.starts_with('/') {
        let path = PathBuf::from(address);
        let l = bind_unix(&path, uid, gid)
            .await
            .with_context(|| format!("{what} endpoint"))?;
        return Ok(Listener::Unix(l, path));
    }
    let l = TcpListener::bind(address)
        .await
        .with_context(|| format!("{what} endpoint: listen on {address}"))?;
    Ok(Listener::Tcp(l))
}

/// Bind a unix socket: refuse when another daemon answers on it, replace a
/// stale one, and restrict it to owner and group (0660).
pub async fn bind_unix(path: &Path, uid: u32, gid: u32) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another daemon is serving on {}: stop it or choose another address",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("remove stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("listen on {}", path.display()))?;
    restrict_socket(path, uid, gid)?;
    Ok(listener)
}

/// Mode 0660 and the configured owner and group (containerd's `uid`/`gid`):
/// only they may connect. A socket is bound with the umask's mode (no write
/// for others), so nobody else can connect before this runs either.
pub fn restrict_socket(path: &Path, uid: u32, gid: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", path.display()))?;
    rustix::fs::chown(
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    )
    .with_context(|| format!("chown {uid}:{gid} {}", path.display()))
}

pub type Reply = Response<Full<Bytes>>;

/// A plain-text reply with a status.
pub fn text(status: u16, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// A reply with a content type.
pub fn typed(content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

/// Serve HTTP/1.1 on the listener until the process ends; one task per
/// connection.
pub fn serve<H, F>(listener: Listener, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let io = match &listener {
                Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Io::Unix(s)),
                Listener::Tcp(l) => l.accept().await.map(|(s, _)| Io::Tcp(s)),
            };
            let io = match io {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on {}", listener.describe());
                    // out of descriptors, say: do not spin
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let h = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(h(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new();
                let r = match io {
                    Io::Unix(s) => conn.serve_connection(TokioIo::new(s), svc).await,
                    Io::Tcp(s) => conn.serve_connection(TokioIo::new(s), svc).await,
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, "http connection");
                }
            });
        }
    });
}

enum Io {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

/// A query parameter's value.
pub fn query<'a>(req: &'a Request<Incoming>, key: &str) -> Option<&'a str> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then_some(v)
    })
}
