//! The shim's actions: `start` (fork the serving shim, join the runc
//! options' `ShimCgroup`, print the address), `delete` (clean up after a
//! dead shim, print a DeleteResponse) and `serve` (the ttrpc server).
//!
//! The socket is `/run/stevedore/s/<hash of address, namespace, id>`; its
//! address is also written to `<bundle>/address`.

use crate::cgroups::{self, Sources};
use crate::error::{Error, Result};
use crate::flags::Flags;
use crate::options::RuncOptions;
use crate::runc::Runc;
use crate::service::{Service, Shim};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim_async::create_task;
use containerd_shim_protos::ttrpc::asynchronous::Server;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The socket of a shim: one per (daemon address, namespace, id).
fn socket_path(f: &Flags) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&f.address, &f.namespace, &f.id).hash(&mut h);
    PathBuf::from(format!("/run/stevedore/s/{:016x}", h.finish()))
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
    let sock = socket_path(f);
    if let Some(d) = sock.parent() {
        std::fs::create_dir_all(d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }
    let _ = std::fs::remove_file(&sock);
    // listen here, hand the socket to the server: the address is good as
    // soon as we print it (clients queue in the backlog until it accepts)
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(|e| Error::io(format!("listen on {}", sock.display()), e))?;
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
    let addr = format!("unix://{}", sock.display());
    let af = Path::new(&f.bundle).join("address");
    std::fs::write(&af, &addr).map_err(|e| Error::io(format!("write {}", af.display()), e))?;
    println!("{addr}");
    Ok(())
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
        let shim = Arc::new(Shim::new(&f.namespace, &f.id, Path::new(&f.bundle)));
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
            .register_service(create_task(Arc::new(Service(shim.clone()))));
        server
            .start()
            .await
            .map_err(|e| Error::Internal(format!("start ttrpc server: {e}")))?;
        crate::log::since_born("server up");
        shim.shutdown.notified().await;
        // the last events (`/tasks/delete`) reach the daemon before we go;
        // and the Shutdown response leaves
        shim.events.flush(std::time::Duration::from_secs(2)).await;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _ = std::fs::remove_file(&f.socket);
        Ok(())
    })
}
