//! Runtime v2: OCI runtime specs, task bundles, and runtime v2 shims spoken to
//! over ttrpc (`containerd.task.v2.Task`) exactly as containerd does, so
//! Debian's `containerd-shim-runc-v2` runs stevedore's tasks. Also the ttrpc
//! events endpoint shims forward their events to.
//!
//! No gRPC types here: the services crate translates. The ttrpc messages are
//! those of `containerd-shim-protos` (rust-protobuf); this crate's API is
//! plain data.

pub mod bundle;
pub mod events;
pub mod manager;
pub mod seccomp;
mod seccomp_lists;
pub mod shim;
mod shimlog;
pub mod signal;
pub mod spec;

pub use bundle::Bundle;
pub use events::{Event, EventSink, EventsServer};
pub use manager::{ExitEvents, ManagerConfig, TaskManager, TaskSpec};
pub use shim::{CreateOpts, ExecOpts, Shim, ShimEnv};

use std::time::SystemTime;

/// A protobuf `Any`, as bytes (type URL and encoded message).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Any {
    pub type_url: String,
    pub value: Vec<u8>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: u32,
    pub status: u32,
    pub exited_at: Option<SystemTime>,
}

/// A process's status, as containerd's task types name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Unknown,
    Created,
    Running,
    Stopped,
    Paused,
    Pausing,
}

/// A process of a task, as the shim reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessState {
    /// The container id for the init process, the exec id otherwise.
    pub id: String,
    pub pid: u32,
    pub status: Status,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// One process of a task (ListPids).
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessInfo {
    pub pid: u32,
    pub info: Option<Any>,
}
