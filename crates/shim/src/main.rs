//! `containerd-shim-stevedore-v1`: a light runtime v2 shim that drives runc
//! (or the OCI runtime binary named by the runc options' `BinaryName`, e.g.
//! crun; `STEVEDORE_OCI_RUNTIME` sets the shim's default), speaking
//! `containerd.task.v2.Task` over ttrpc so both stevedored and containerd can
//! use it (runtime name `io.containerd.stevedore.v1`).
//!
//! Rooms: `flags` (command line), `actions` (start / delete / serve),
//! `service` (the ttrpc task service), `process` (init and exec processes,
//! one launch path, stdio), `binlog` (`binary://` logging drivers), `reaper` (reaps every child, delivers the
//! exits of those the shim waits for), `console` (ptys), `runc` (the OCI runtime driver
//! and its errors), `events` (publisher), `cgroups` (metrics, OOM, the shim
//! cgroup), `options` (runc options), `error` (the error type and its ttrpc
//! codes), `log` (the shim log FIFO), `info` (`-info`: containerd 2.x's
//! runtime info).

mod actions;
mod binlog;
mod cgroups;
mod console;
mod destroy;
mod error;
mod events;
mod execfifo;
mod flags;
mod info;
mod log;
mod options;
mod process;
mod reaper;
mod runc;
mod service;

fn main() {
    log::born();
    let f = flags::Flags::parse(std::env::args().skip(1));
    let r = match f.action.as_str() {
        "version" => {
            println!("containerd-shim-stevedore-v1 {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        "info" => info::info(),
        "start" | "delete" | "serve" => f.validate().and_then(|()| match f.action.as_str() {
            "start" => actions::start(&f),
            "delete" => actions::delete(&f),
            _ => actions::serve(f.clone()),
        }),
        other => Err(error::Error::InvalidArgument(format!(
            "unknown action {other:?}: use start or delete"
        ))),
    };
    if let Err(e) = r {
        eprintln!("containerd-shim-stevedore-v1: {e}");
        std::process::exit(1);
    }
}
