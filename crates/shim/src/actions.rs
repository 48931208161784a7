//! The shim's actions: `start` (fork the serving shim, join the runc
//! options' `ShimCgroup`, print the address), `delete` (clean up after a
//! dead shim, print a DeleteResponse) and `serve` (the ttrpc server).
//!
//! The socket is `/run/stevedore/s/<hash of address, namespace, group>`
//! (the group is the task's id unless its spec names a group, as a CRI
//! container names its pod: see `grouping`); a `start` for a task whose
//! group's shim runs prints that shim's address and starts nothing. The
//! address is also written to `<bundle>/address`.

use crate::cgroups::{self, Sources};
use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::options::RuncOptions;
use crate::runc::Runc;
use crate::service::{Group, Service};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::asynchronous::Server;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The socket of a shim: one per (daemon address, namespace, group).
fn socket_path(f: &Flags, group: &str) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&f.address, &f.namespace, group).hash(&mut h);
    PathBuf::from(format!("/run/stevedore/s/{:016x}", h.finish()))
}

/// The annotations containerd's runc shim groups containers by, the first
/// present winning: the CRI names a container's pod in the second, so a
/// pod's containers share the shim of its sandbox.
const GROUP_LABELS: [&str; 2] = [
    "io.containerd.runc.v2.group",
    "io.kubernetes.cri.sandbox-id",
];

/// The group of the task whose bundle is `bundle`: the value of the first
/// grouping annotation in its `config.json`, else its own id.
pub fn grouping(bundle: &Path, id: &str) -> String {
    let spec = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let annotations = spec.as_ref().map(|s| &s["annotations"]);
    GROUP_LABELS
        .iter()
        .find_map(|l| {
            annotations
                .and_then(|a| a[*l].as_str())
                .filter(|g| !g.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| id.to_string())
}

/// Bind the group's socket; None when a live shim already listens on it
/// (it serves this task too). A socket nobody answers on is a dead shim's:
/// removed and bound anew, as containerd's shim does.
fn bind_or_join(sock: &Path) -> Result<Option<std::os::unix::net::UnixListener>> {
    use std::os::unix::net::{UnixListener, UnixStream};
    match UnixListener::bind(sock) {
        Ok(l) => return Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(Error::io(format!("listen on {}", sock.display()), e)),
    }
    if UnixStream::connect(sock).is_ok() {
        return Ok(None);
    }
    let _ = std::fs::remove_file(sock);
    UnixListener::bind(sock)
        .map(Some)
        .map_err(|e| Error::io(format!("listen on {}", sock.display()), e))
}

/// Write `<bundle>/address` and print the address for the daemon.
fn announce(bundle: &Path, sock: &Path) -> Result<()> {
    let addr = format!("unix://{}", sock.display());
    let af = bundle.join("address");
    std::fs::write(&af, &addr).map_err(|e| Error::io(format!("write {}", af.display()), e))?;
    println!("{addr}");
    Ok(())
}

/// The runtime options the daemon wrote on stdin (an `Any`), if any.
fn options_from_stdin() -> Result<RuncOptions> {
    use std::io::Read;
    let mut data = Vec::new();
    std::io::stdin()
        .read_to_end(&mut data)
        .map_err(|e| Error::io("read options from stdin", e))?;
    if data.is_empty() {
        return Ok(RuncOptions::default());
    }
    let any = Any::parse_from_bytes(&data)
        .map_err(|e| Error::InvalidArgument(format!("runtime options on stdin: {e}")))?;
    RuncOptions::from_any(&any)
}

/// `start`: fork the server into its own session on a socket bound here,
/// print the address. The server is a fork of this process, not a new
/// exec of the binary (`serve`): no second program start-up on the way to
/// a task's Create. `start` is single-threaded until it forks (nothing here
/// starts a thread before), so the child may go on running Rust code.
pub fn start(f: &Flags) -> Result<()> {
    let opts = options_from_stdin()?;
    let bundle_dir = Path::new(&f.bundle);
    let sock = socket_path(f, &grouping(bundle_dir, &f.id));
    if let Some(d) = sock.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }
    // listen here, hand the socket to the server: the address is good as
    // soon as we print it (clients queue in the backlog until it accepts)
    let Some(listener) = bind_or_join(&sock)? else {
        // the group's shim runs: it serves this task too
        return announce(bundle_dir, &sock);
    };
    let mut server = f.clone();
    server.socket = sock.display().to_string();
    server.listen_fd = Some(std::os::fd::AsRawFd::as_raw_fd(&listener));
    server.action = "serve".into();
    // what the server needs, made before the fork
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))?;
    let bundle = std::ffi::CString::new(f.bundle.as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("bundle {:?}", f.bundle)))?;
    // SAFETY: single-threaded here (see above), so the child may allocate
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::io(
            "fork shim server",
            std::io::Error::last_os_error(),
        ));
    }
    if pid == 0 {
        std::process::exit(run_server(server, &null, &bundle));
    }
    drop(listener);
    if let Some(cg) = &opts.shim_cgroup {
        if let Err(e) = cgroups::join(&Sources::default(), cg, pid as u32) {
            // SAFETY: plain syscalls on our own child
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            let _ = std::fs::remove_file(&sock);
            return Err(e);
        }
    }
    announce(bundle_dir, &sock)
}

/// The forked server: its own session, stdio on /dev/null (the daemon
/// reads `start`'s stdout to EOF), the bundle as working directory, then
/// `serve`; returns the exit code.
fn run_server(f: Flags, null: &std::fs::File, bundle: &std::ffi::CStr) -> i32 {
    let null = std::os::fd::AsRawFd::as_raw_fd(null);
    // SAFETY: plain syscalls on fds and a path we own
    let ok = unsafe {
        libc::setsid() >= 0
            && (0..3).all(|fd| libc::dup2(null, fd) == fd)
            && libc::chdir(bundle.as_ptr()) == 0
    };
    if !ok {
        return 1;
    }
    match serve(f) {
        Ok(()) => 0,
        Err(e) => {
            crate::log::warn(&format!("shim server: {e}"));
            1
        }
    }
}

/// `delete`: force-delete the runc container, unmount the rootfs, print a
/// DeleteResponse (status 137, as containerd's shim reports a killed task).
pub fn delete(f: &Flags) -> Result<()> {
    let bundle = Path::new(&f.bundle);
    let runc = Runc::recorded(&f.namespace, bundle);
    let _ = runc.run(&["delete", "--force", &f.id], None);
    let _ = stevedore_sys::mount::unmount_all(&bundle.join("rootfs"));
    let mut resp = DeleteResponse::new();
    resp.exit_status = 137;
    resp.exited_at = Some(crate::events::ts(std::time::SystemTime::now())).into();
    let out = resp
        .write_to_bytes()
        .map_err(|e| Error::Internal(format!("encode DeleteResponse: {e}")))?;
    use std::io::Write;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| Error::io("write DeleteResponse", e))
}

/// `serve`: the task service until Shutdown.
pub fn serve(f: Flags) -> Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| Error::io("become subreaper", e))?;
    // every child is reaped, also those reparented to the shim (reaper.rs)
    crate::reaper::start().map_err(|e| Error::io("start the reaper", e))?;
    crate::log::open(Path::new(&f.bundle));
    crate::log::set_debug(f.debug);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("build runtime", e))?;
    rt.block_on(async move {
        let group = Arc::new(Group::new(&f.namespace));
        let listener = match f.listen_fd {
            // SAFETY: `start` passed this fd: a listening unix socket, ours alone
            Some(fd) => unsafe {
                // not to be inherited by runc and the containers
                let b = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(b, rustix::io::FdFlags::CLOEXEC)
                    .map_err(|e| Error::io(format!("listen fd {fd}"), e))?;
                use std::os::fd::FromRawFd;
                stevedore_ttrpc::listener(std::os::unix::net::UnixListener::from_raw_fd(fd))
            },
            None => stevedore_ttrpc::bind(Path::new(&f.socket)),
        };
        // each reply leaves in one write (stevedore_ttrpc)
        let listener = listener.map_err(|e| Error::Internal(format!("ttrpc server: {e}")))?;
        let mut server = Server::new()
            .add_listener(listener)
            .register_service(create_task(Arc::new(Service(group.clone()))));
        server
            .start()
            .await
            .map_err(|e| Error::Internal(format!("start ttrpc server: {e}")))?;
        crate::log::since_born("server up");
        group.shutdown.notified().await;
        // the last events (`/tasks/delete`) reach the daemon before we go;
        // and the Shutdown response leaves
        group.events.flush(std::time::Duration::from_secs(2)).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _ = std::fs::remove_file(&f.socket);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_joins_the_group_its_spec_names_else_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path();
        assert_eq!(grouping(b, "c1"), "c1", "no config.json");
        let spec = |annotations: serde_json::Value| {
            std::fs::write(
                b.join("config.json"),
                serde_json::json!({ "annotations": annotations }).to_string(),
            )
            .unwrap()
        };
        spec(serde_json::json!({}));
        assert_eq!(grouping(b, "c1"), "c1");
        spec(serde_json::json!({ "io.kubernetes.cri.sandbox-id": "pod1" }));
        assert_eq!(grouping(b, "c1"), "pod1");
        // containerd's order: the runc group first
        spec(serde_json::json!({
            "io.kubernetes.cri.sandbox-id": "pod1",
            "io.containerd.runc.v2.group": "g"
        }));
        assert_eq!(grouping(b, "c1"), "g");
        spec(serde_json::json!({ "io.containerd.runc.v2.group": "" }));
        assert_eq!(grouping(b, "c1"), "c1", "an empty group is none");
    }

    #[test]
    fn a_live_shims_socket_is_joined_and_a_dead_ones_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let live = bind_or_join(&sock).unwrap().expect("bound");
        assert!(bind_or_join(&sock).unwrap().is_none(), "joined");
        drop(live); // the socket file stays, nobody listens: a dead shim's
        assert!(sock.exists());
        let again = bind_or_join(&sock).unwrap().expect("bound anew");
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
        drop(again);
    }
}
