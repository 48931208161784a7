//! containerd 2.x's sandbox API: the Store (`store.rs`: records in the
//! metadata database, plugin `io.containerd.grpc.v1.sandboxes`) and the
//! Controller (`controller.rs`: `containerd.services.sandbox.v1.Controller`,
//! plugin `io.containerd.grpc.v1.sandbox-controllers`, which dispatches each
//! request to the sandbox controller its `sandboxer` names and publishes
//! `/sandboxes/create|start|exit`). The one controller today is
//! `podsandbox` (`podsandbox.rs`): a sandbox is a container record and a
//! task on the runtime v2 task manager, the same shims and runc as the
//! Tasks service.

pub mod controller;
pub mod podsandbox;
mod store;

pub use store::{SandboxStore, SandboxStoreService};
