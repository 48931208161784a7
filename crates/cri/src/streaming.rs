//! The CRI streaming server wired to containers: Exec/Attach/PortForward
//! hand out URLs on the server (`stream_server_address:stream_server_port`),
//! and the sessions behind them run exec processes, attach to a container's
//! output and stdin, or connect to a port inside the pod's network
//! namespace (containerd's `portForward`, dialling localhost from inside).

use crate::core::Cri;
use crate::io::Stream;
use std::sync::{Arc, Weak};
use std::time::Duration;
use stevedore_api::cri;
use stevedore_api::services::tasks::{CloseIoRequest, ResizePtyRequest};
use stevedore_cri_streaming::{
    self as streaming, BoxRead, BoxWrite, DuplexStream, RuntimeError, Streams,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Status;

/// The streaming server of this CRI.
pub type StreamServer = streaming::Server<StreamRuntime>;

/// What the streaming server runs sessions with.
pub struct StreamRuntime {
    cri: Weak<Cri>,
}

fn to_status(e: streaming::Error) -> Status {
    stevedore_api::status::to_status(stevedore_types::Error::new(e.kind(), e.to_string()))
}

impl Cri {
    /// Start the streaming server (from the background task at start).
    pub async fn start_streaming(self: &Arc<Self>) {
        let config = streaming::Config {
            address: self.config.stream_server_address.clone(),
            port: self.config.stream_server_port.clone(),
            ..Default::default()
        };
        let rt = Arc::new(StreamRuntime {
            cri: Arc::downgrade(self),
        });
        match StreamServer::start(config, rt).await {
            Ok(s) => {
                let _ = self.streams.set(s);
            }
            Err(e) => tracing::error!("cri: streaming server: {e}"),
        }
    }

    fn stream_server(&self) -> Result<&StreamServer, Status> {
        self.streams.get().ok_or_else(|| {
            Status::unavailable(format!(
                "the streaming server is not running (stream_server_address {:?}, stream_server_port {:?}): see the daemon log",
                self.config.stream_server_address, self.config.stream_server_port
            ))
        })
    }

    pub async fn stream_exec(&self, r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
        let c = self.store.running_container(&r.container_id)?;
        let url = self
            .stream_server()?
            .get_exec(&streaming::ExecRequest {
                container_id: c.meta.id.clone(),
                cmd: r.cmd,
                tty: r.tty,
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(to_status)?;
        Ok(cri::ExecResponse { url })
    }

    pub async fn stream_attach(
        &self,
        r: cri::AttachRequest,
    ) -> Result<cri::AttachResponse, Status> {
        let c = self.store.running_container(&r.container_id)?;
        let url = self
            .stream_server()?
            .get_attach(&streaming::AttachRequest {
                container_id: c.meta.id.clone(),
                stdin: r.stdin,
                tty: r.tty,
                stdout: r.stdout,
                stderr: r.stderr,
            })
            .map_err(to_status)?;
        Ok(cri::AttachResponse { url })
    }

    pub async fn stream_port_forward(
        &self,
        r: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, Status> {
        let sb = self.store.sandbox(&r.pod_sandbox_id)?;
        let url = self
            .stream_server()?
            .get_port_forward(&streaming::PortForwardRequest {
                pod_sandbox_id: sb.id(),
                port: r.port,
            })
            .map_err(to_status)?;
        Ok(cri::PortForwardResponse { url })
    }

    async fn resize(
        &self,
        container_id: String,
        exec_id: String,
        mut rx: mpsc::Receiver<streaming::TerminalSize>,
    ) {
        while let Some(sz) = rx.recv().await {
            let _ = self
                .ctrd
                .tasks()
                .resize_pty(ResizePtyRequest {
                    container_id: container_id.clone(),
                    exec_id: exec_id.clone(),
                    width: sz.width as u32,
                    height: sz.height as u32,
                })
                .await;
        }
    }
}

/// Copy a FIFO to a client stream: a thread reads (blocking open until the
/// process's side opens it, EOF when it is gone), a task writes.
fn fifo_to(path: String, mut out: BoxWrite) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
    let spawned = std::thread::Builder::new()
        .name("cri-stream-out".into())
        .spawn(move || {
            use std::io::Read;
            let Ok(mut f) = std::fs::File::open(&path) else {
                return;
            };
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cri: stream reader: {e}");
    }
    tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            if out.write_all(&b).await.is_err() {
                break;
            }
            let _ = out.flush().await;
        }
    })
}

/// Copy a client's stdin into a FIFO; when the client's stdin ends, close
/// the process's stdin (CloseIO), as containerd does.
fn stdin_to(
    cri: Arc<Cri>,
    mut input: BoxRead,
    path: String,
    container_id: String,
    exec_id: String,
    close: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let p2 = path.clone();
        let file =
            tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(p2))
                .await;
        let Ok(Ok(file)) = file else { return };
        let mut file = tokio::fs::File::from_std(file);
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match input.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if file.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    let _ = file.flush().await;
                }
            }
        }
        drop(file);
        if close {
            let _ = cri
                .ctrd
                .tasks()
                .close_io(CloseIoRequest {
                    container_id,
                    exec_id,
                    stdin: true,
                })
                .await;
        }
    })
}

impl StreamRuntime {
    fn cri(&self) -> Result<Arc<Cri>, RuntimeError> {
        self.cri
            .upgrade()
            .ok_or_else(|| RuntimeError::Failed("the CRI plugin stopped".into()))
    }
}

impl streaming::Runtime for StreamRuntime {
    async fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        streams: Streams,
    ) -> Result<(), RuntimeError> {
        let cri = self.cri()?;
        let e = cri
            .create_exec(container_id, cmd, tty, streams.stdin.is_some())
            .await
            .map_err(|s| RuntimeError::Failed(s.message().to_string()))?;
        let mut copies = Vec::new();
        if let Some(out) = streams.stdout {
            copies.push(fifo_to(e.fifos.stdout.clone(), out));
        }
        if let (Some(err), false) = (streams.stderr, e.fifos.stderr.is_empty()) {
            copies.push(fifo_to(e.fifos.stderr.clone(), err));
        }
        if let Some(input) = streams.stdin {
            stdin_to(
                cri.clone(),
                input,
                e.fifos.stdin.clone(),
                e.container_id.clone(),
                e.exec_id.clone(),
                true,
            );
        }
        if let Some(rx) = streams.resize {
            let (c2, cid, eid) = (cri.clone(), e.container_id.clone(), e.exec_id.clone());
            // as containerd: sizes apply once the process runs (a resize
            // before the start fails and the client's first size is lost)
            let mut started = e.started.subscribe();
            tokio::spawn(async move {
                if started.wait_for(|s| *s).await.is_ok() {
                    c2.resize(cid, eid, rx).await
                }
            });
        }
        let code = cri.run_exec(&e, None).await;
        for c in copies {
            let _ = tokio::time::timeout(Duration::from_secs(5), c).await;
        }
        cri.delete_exec(&e).await;
        match code {
            Ok(0) => Ok(()),
            Ok(n) => Err(RuntimeError::ExitCode(n as i32)),
            Err(s) => Err(RuntimeError::Failed(s.message().to_string())),
        }
    }

    async fn attach(
        &self,
        container_id: &str,
        _tty: bool,
        streams: Streams,
    ) -> Result<(), RuntimeError> {
        let cri = self.cri()?;
        let c = cri
            .store
            .container(container_id)
            .map_err(|s| RuntimeError::Failed(s.message().to_string()))?;
        let io = c
            .io()
            .ok_or_else(|| RuntimeError::Failed(format!("container {container_id:?} has no io")))?;
        let config = c.meta.config.clone().unwrap_or_default();
        if let (Some(input), true) = (streams.stdin, !c.meta.stdin.is_empty()) {
            stdin_to(
                cri.clone(),
                input,
                c.meta.stdin.clone(),
                c.meta.id.clone(),
                String::new(),
                config.stdin_once,
            );
        }
        if let Some(rx) = streams.resize {
            let (c2, cid) = (cri.clone(), c.meta.id.clone());
            tokio::spawn(async move { c2.resize(cid, String::new(), rx).await });
        }
        let mut rx = io.subscribe();
        let (mut out, mut err) = (streams.stdout, streams.stderr);
        while let Some((stream, data)) = rx.recv().await {
            let w = match stream {
                Stream::Stdout => out.as_mut(),
                Stream::Stderr => err.as_mut(),
            };
            if let Some(w) = w {
                if w.write_all(&data).await.is_err() {
                    break;
                }
                let _ = w.flush().await;
            }
        }
        Ok(())
    }

    async fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        mut stream: DuplexStream,
    ) -> Result<(), RuntimeError> {
        let cri = self.cri()?;
        let sb = cri
            .store
            .sandbox(pod_sandbox_id)
            .map_err(|s| RuntimeError::Failed(s.message().to_string()))?;
        let netns = sb.meta().netns_path;
        let conn = tokio::task::spawn_blocking(move || dial_in(&netns, port))
            .await
            .map_err(|e| RuntimeError::Failed(e.to_string()))??;
        conn.set_nonblocking(true)?;
        let mut conn = tokio::net::TcpStream::from_std(conn)?;
        tokio::io::copy_bidirectional(&mut stream, &mut conn).await?;
        Ok(())
    }
}

/// Connect to localhost:`port` inside the network namespace at `netns`
/// (the host's when empty), from a thread that enters it and ends after.
fn dial_in(netns: &str, port: u16) -> Result<std::net::TcpStream, RuntimeError> {
    if netns.is_empty() {
        return Ok(std::net::TcpStream::connect(("127.0.0.1", port))?);
    }
    let ns = std::fs::File::open(netns)
        .map_err(|e| RuntimeError::Failed(format!("open network namespace {netns}: {e}")))?;
    let netns = netns.to_string();
    let port_err = move |e: std::io::Error| {
        RuntimeError::Failed(format!(
            "failed to connect to localhost:{port} inside namespace {netns:?}: {e}"
        ))
    };
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&ns),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| RuntimeError::Failed(format!("enter network namespace: {e}")))?;
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(port_err)
    })
    .join()
    .map_err(|_| RuntimeError::Failed("port forward thread panicked".into()))?
}
