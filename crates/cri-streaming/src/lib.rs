//! The Kubernetes CRI streaming server: the HTTP endpoint behind the URLs a
//! CRI runtime returns from `Exec`, `Attach` and `PortForward`, as
//! containerd's CRI serves it with k8s.io/kubelet/pkg/cri/streaming.
//!
//! - [`Server`] binds a TCP address (containerd's defaults: 127.0.0.1, any
//!   free port), hands out single-use URLs (`http://<addr>/exec/<token>`)
//!   for validated requests, and serves them.
//! - Remote command (exec, attach) over SPDY/3.1 (`channel.k8s.io` v1-v4,
//!   what kubectl and the kubelet speak) and over WebSocket (`channel.k8s.io`,
//!   `base64.channel.k8s.io`, `v4.channel.k8s.io`, `v4.base64.channel.k8s.io`,
//!   `v5.channel.k8s.io`).
//! - Port forward over SPDY/3.1 (`portforward.k8s.io`) and WebSocket
//!   (`v4.channel.k8s.io`).
//! - [`Runtime`] is what the CRI plugin implements to run the sessions.
//!
//! Everything a client sends is bounded: frame and message sizes, inflated
//! header blocks, per-stream queues (a full queue stops reading from the
//! socket), streams per connection, and the request cache.

mod cache;
mod error;
mod pipe;
mod portforward;
mod remotecommand;
mod request;
mod runtime;
mod server;
pub mod spdy;
mod status;
mod websocket;

pub use error::Error;
pub use pipe::DuplexStream;
pub use request::{AttachRequest, ExecRequest, PortForwardRequest};
pub use runtime::{BoxRead, BoxWrite, Runtime, RuntimeError, Streams, TerminalSize};
pub use server::{Config, Server};
