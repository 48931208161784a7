//! What the CRI plugin provides: running a command in a container, attaching
//! to its main process, and connecting to a port in a pod's network.

use std::future::Future;
use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use crate::pipe::DuplexStream;

/// A boxed input stream.
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
/// A boxed output stream.
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A terminal size from the client (client-go's `TerminalSize`; its JSON
/// keys are Go's field names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalSize {
    #[serde(rename = "Width", alias = "width")]
    pub width: u16,
    #[serde(rename = "Height", alias = "height")]
    pub height: u16,
}

/// The client's streams for one exec or attach. Absent streams were not
/// requested. Output streams are half-closed by the server after the call
/// returns, so a runtime need not shut them down.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<BoxRead>,
    pub stdout: Option<BoxWrite>,
    pub stderr: Option<BoxWrite>,
    /// Terminal resizes, for a tty session whose client sends them.
    pub resize: Option<mpsc::Receiver<TerminalSize>>,
}

/// How an exec, attach or port forward ended badly.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The command ran and exited with this non-zero code: the client gets
    /// kubelet's `NonZeroExitCode` status with the code.
    #[error("exit code {0}")]
    ExitCode(i32),
    /// An I/O failure; for port forwards, a broken pipe or reset makes the
    /// server reset the client's streams (as kubelet does).
    #[error(transparent)]
    Io(#[from] io::Error),
    /// Anything else; the message reaches the client.
    #[error("{0}")]
    Failed(String),
}

/// The container runtime behind the streaming server.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `cmd` in container `container_id` with the client's streams and
    /// waits for it to exit.
    fn exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        streams: Streams,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Connects the client's streams to the main process of `container_id`
    /// until it exits or the client goes away.
    fn attach(
        &self,
        container_id: &str,
        tty: bool,
        streams: Streams,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Copies between `stream` and `port` in the network namespace of sandbox
    /// `pod_sandbox_id` until both directions end.
    fn port_forward(
        &self,
        pod_sandbox_id: &str,
        port: u16,
        stream: DuplexStream,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
