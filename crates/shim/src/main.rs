//! `containerd-shim-stevedore-v1`: a light runtime v2 shim that drives runc
//! (or the OCI runtime binary named by the runc options' `BinaryName`, e.g.
//! crun; `STEVEDORE_OCI_RUNTIME` sets the shim's default), speaking
//! `containerd.task.v2.Task` over ttrpc so both stevedored and containerd can
//! use it (runtime name `io.containerd.stevedore.v1`).
//!
//! Lightness: no I/O copying. The container's stdio *are* the client's FIFOs
//! (opened here and handed to runc), so the shim holds no buffers and runs no
//! copy loops; one thread per process waits for its exit (the shim is a child
//! subreaper, so runc's detached processes are reparented to it).
//! With a terminal the shim does copy: pty master <-> FIFOs, on two threads.
//! Not yet: checkpoints.
//!
//! Actions: `start` (spawn the serving shim, print its address), `delete`
//! (clean up after a dead shim, print a DeleteResponse), and the internal
//! `serve`.

use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_task, Client, EventsClient, Task};
use containerd_shim_protos::ttrpc::asynchronous::{Server, TtrpcContext};
use containerd_shim_protos::ttrpc::{self, error::get_rpc_status, Code};
use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::watch;

#[derive(Debug, Clone, Default)]
struct Flags {
    namespace: String,
    address: String,
    id: String,
    bundle: String,
    socket: String,
    /// A listening socket inherited from `start` (so `start` can answer
    /// without waiting for the server to bind).
    listen_fd: Option<i32>,
    debug: bool,
    action: String,
}

fn parse_flags() -> Flags {
    let mut f = Flags::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_default();
        match a.trim_start_matches('-') {
            "namespace" => f.namespace = val(),
            "address" => f.address = val(),
            "id" => f.id = val(),
            "bundle" => f.bundle = val(),
            "socket" => f.socket = val(),
            "listen-fd" => f.listen_fd = val().parse().ok(),
            "publish-binary" => {
                val();
            }
            "debug" => f.debug = true,
            "v" | "version" => f.action = "version".into(),
            other if !a.starts_with('-') => f.action = other.to_string(),
            _ => {}
        }
    }
    if f.bundle.is_empty() {
        f.bundle = std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default();
    }
    f
}

/// The OCI runtime binary chosen at create (`BinaryName` of the runc
/// options), kept in the bundle as `oci-runtime` so `delete` after a crash
/// uses the same one.
static OCI_RUNTIME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn runtime_binary() -> String {
    if let Some(b) = OCI_RUNTIME.get() {
        return b.clone();
    }
    std::env::var("STEVEDORE_OCI_RUNTIME").unwrap_or_else(|_| "runc".into())
}

/// `binary_name` (field 6) of containerd's runc options
/// (`containerd.runc.v1.Options`, also sent by ctr as task options).
fn binary_name_option(any: &Any) -> Result<Option<String>, String> {
    if !any.type_url.ends_with("containerd.runc.v1.Options")
        && !any.type_url.ends_with("runtimeoptions.v1.Options")
    {
        return Ok(None);
    }
    let mut input = containerd_shim_protos::protobuf::CodedInputStream::from_bytes(&any.value);
    let bad = |e: containerd_shim_protos::protobuf::Error| format!("runtime options: {e}");
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 6 && wire == 2 {
            let name = input.read_string().map_err(bad)?;
            return Ok((!name.is_empty()).then_some(name));
        }
        let wt = containerd_shim_protos::protobuf::rt::WireType::new(wire)
            .ok_or_else(|| format!("runtime options: bad wire type {wire}"))?;
        input.skip_field(wt).map_err(bad)?;
    }
    Ok(None)
}

/// Remember the OCI runtime for this shim's container.
fn choose_runtime(bundle: &str, options: Option<&Any>) -> Result<(), String> {
    let recorded = Path::new(bundle).join("oci-runtime");
    let chosen = match options.map(binary_name_option).transpose()?.flatten() {
        Some(name) => {
            std::fs::write(&recorded, &name)
                .map_err(|e| format!("record OCI runtime in {bundle}: {e}"))?;
            Some(name)
        }
        None => std::fs::read_to_string(&recorded).ok(),
    };
    if let Some(name) = chosen {
        let _ = OCI_RUNTIME.set(name);
    }
    Ok(())
}

fn runc_root(ns: &str) -> String {
    format!("/run/stevedore/runc/{ns}")
}

/// Run the OCI runtime with the given stdio; its error log is returned on failure.
fn runc(
    ns: &str,
    args: &[&str],
    stdio: Option<[Stdio; 3]>,
    input: Option<&[u8]>,
) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new(runtime_binary());
    cmd.arg("--root").arg(runc_root(ns)).args(args);
    match stdio {
        Some([i, o, e]) => {
            cmd.stdin(i).stdout(o).stderr(e);
        }
        None => {
            cmd.stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("run {}: {e}", runtime_binary()))?;
    if let (Some(data), Some(mut w)) = (input, child.stdin.take()) {
        use std::io::Write;
        let _ = w.write_all(data);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for runc: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{} {}: {}: {}",
            runtime_binary(),
            args.first().unwrap_or(&""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn err(code: Code, msg: impl ToString) -> ttrpc::Error {
    get_rpc_status(code, msg)
}

fn now_ts() -> Timestamp {
    ts(SystemTime::now())
}

fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut x = Timestamp::new();
    x.seconds = d.as_secs() as i64;
    x.nanos = d.subsec_nanos() as i32;
    x
}

/// The protobuf full name of a message the shim sends inside an `Any`.
/// Spelled out rather than taken from the reflection descriptor: building
/// rust-protobuf's descriptors costs a few hundred KiB of heap per shim.
trait Named: Message {
    const FULL_NAME: &'static str;
}

macro_rules! named {
    ($($t:ty => $n:literal),* $(,)?) => {
        $(impl Named for $t { const FULL_NAME: &'static str = $n; })*
    };
}

named! {
    TaskCreate => "containerd.events.TaskCreate",
    TaskStart => "containerd.events.TaskStart",
    TaskExit => "containerd.events.TaskExit",
    TaskDelete => "containerd.events.TaskDelete",
    TaskExecAdded => "containerd.events.TaskExecAdded",
    TaskExecStarted => "containerd.events.TaskExecStarted",
    TaskPaused => "containerd.events.TaskPaused",
    TaskResumed => "containerd.events.TaskResumed",
    TaskOOM => "containerd.events.TaskOOM",
    containerd_shim_protos::cgroups::metrics::Metrics => "io.containerd.cgroups.v1.Metrics",
}

fn pack<M: Named>(m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = M::FULL_NAME.to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

/// Open the client's FIFOs (or /dev/null) as the process's stdio. stdout and
/// stderr are opened read-write so opening never blocks; the shim closes its
/// copies once runc has passed them on, so readers see EOF at exit.
fn open_stdio(stdin: &str, stdout: &str, stderr: &str) -> Result<[Stdio; 3], String> {
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;
    let null = || OpenOptions::new().read(true).write(true).open("/dev/null");
    let open = |p: &str, read_only: bool| -> Result<std::fs::File, String> {
        if p.is_empty() {
            return null().map_err(|e| e.to_string());
        }
        let mut o = OpenOptions::new();
        if read_only {
            // a stdin FIFO: do not wait for a writer
            o.read(true)
                .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32);
        } else {
            o.read(true).write(true);
        }
        let f = o.open(p).map_err(|e| format!("open {p}: {e}"))?;
        if read_only {
            let fd = f.as_fd();
            let fl = rustix::fs::fcntl_getfl(fd).map_err(|e| e.to_string())?;
            rustix::fs::fcntl_setfl(fd, fl - rustix::fs::OFlags::NONBLOCK)
                .map_err(|e| e.to_string())?;
        }
        Ok(f)
    };
    let i = open(stdin, true)?;
    let o = open(stdout, false)?;
    let e = if stderr == stdout && !stderr.is_empty() {
        o.try_clone().map_err(|e| e.to_string())?
    } else {
        open(stderr, false)?
    };
    Ok([i.into(), o.into(), e.into()])
}

/// A console socket runc sends the pty master to (`--console-socket`).
struct ConsoleSocket {
    path: PathBuf,
    listener: std::os::unix::net::UnixListener,
}

impl ConsoleSocket {
    fn new() -> Result<ConsoleSocket, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new("/run/stevedore/c");
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join(format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .map_err(|e| format!("listen on console socket {}: {e}", path.display()))?;
        Ok(ConsoleSocket { path, listener })
    }

    /// Accept runc's connection and receive the pty master.
    fn receive_master(self) -> Result<OwnedFd, String> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::mem::MaybeUninit;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| format!("accept console: {e}"))?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        recvmsg(&conn, &mut iov, &mut control, RecvFlags::empty())
            .map_err(|e| format!("receive console: {e}"))?;
        let _ = std::fs::remove_file(&self.path);
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                if let Some(fd) = fds.next() {
                    return Ok(fd);
                }
            }
        }
        Err("runc sent no console".into())
    }
}

/// Copy the pty master to the stdout FIFO (and the stdin FIFO to the master)
/// on threads; the stdout copy ends when the process's last tty user exits.
fn copy_console(master: &OwnedFd, stdin: &str, stdout: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let dup = |fd: &OwnedFd| -> Result<std::fs::File, String> {
        Ok(std::fs::File::from(
            fd.try_clone().map_err(|e| e.to_string())?,
        ))
    };
    if !stdout.is_empty() {
        let mut m = dup(master)?;
        let path = stdout.to_string();
        std::thread::spawn(move || {
            let Ok(mut out) = std::fs::OpenOptions::new().write(true).open(&path) else {
                return;
            };
            let mut buf = [0u8; 8192];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 || out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    if !stdin.is_empty() {
        let mut m = dup(master)?;
        let path = stdin.to_string();
        std::thread::spawn(move || {
            let Ok(mut input) = std::fs::File::open(&path) else {
                return;
            };
            let mut buf = [0u8; 8192];
            while let Ok(n) = input.read(&mut buf) {
                if n == 0 || m.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Clone)]
struct Proc {
    pid: u32,
    status: St,
    exit: Option<(u32, SystemTime)>,
    stdin: String,
    stdout: String,
    stderr: String,
    spec: Vec<u8>,
    terminal: bool,
    console: Option<Arc<OwnedFd>>,
    done: watch::Receiver<bool>,
    done_tx: Arc<watch::Sender<bool>>,
}

impl Proc {
    fn new(stdin: String, stdout: String, stderr: String, spec: Vec<u8>) -> Proc {
        let (tx, rx) = watch::channel(false);
        Proc {
            pid: 0,
            status: St::Created,
            exit: None,
            stdin,
            stdout,
            stderr,
            spec,
            terminal: false,
            console: None,
            done: rx,
            done_tx: Arc::new(tx),
        }
    }
}

struct Service {
    flags: Flags,
    procs: Mutex<HashMap<String, Proc>>,
    events: tokio::sync::Mutex<Option<EventsClient>>,
    shutdown: tokio::sync::Notify,
    /// Held from `runc start`/`exec` to the start event, and while an exit is
    /// recorded and published: a process's exit event never precedes its start.
    lifecycle: tokio::sync::Mutex<()>,
}

impl Service {
    fn bundle(&self) -> PathBuf {
        PathBuf::from(&self.flags.bundle)
    }

    fn get(&self, exec_id: &str) -> ttrpc::Result<Proc> {
        self.procs
            .lock()
            .unwrap()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                err(
                    Code::NOT_FOUND,
                    format!("process {exec_id:?} of task {:?}: not found", self.flags.id),
                )
            })
    }

    fn set(&self, exec_id: &str, f: impl FnOnce(&mut Proc)) {
        if let Some(p) = self.procs.lock().unwrap().get_mut(exec_id) {
            f(p)
        }
    }

    async fn publish<M: Named>(&self, topic: &str, m: &M) {
        let mut env = containerd_shim_protos::shim::event::Envelope::new();
        env.timestamp = Some(now_ts()).into();
        env.namespace = self.flags.namespace.clone();
        env.topic = topic.into();
        env.event = Some(pack(m)).into();
        let mut req = ForwardRequest::new();
        req.envelope = Some(env).into();
        let addr = std::env::var("TTRPC_ADDRESS").unwrap_or_default();
        if addr.is_empty() {
            return;
        }
        let mut guard = self.events.lock().await;
        for _ in 0..2 {
            if guard.is_none() {
                let a = if addr.starts_with("unix://") {
                    addr.clone()
                } else {
                    format!("unix://{addr}")
                };
                match Client::connect(&a).await {
                    Ok(c) => *guard = Some(EventsClient::new(c)),
                    Err(_) => return,
                }
            }
            let c = guard.as_ref().unwrap();
            match c
                .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                .await
            {
                Ok(_) => return,
                Err(_) => *guard = None,
            }
        }
    }

    /// Publish `/tasks/oom` whenever the container's memory cgroup (v1)
    /// hits its limit: an eventfd registered on `memory.oom_control`, read
    /// on a small thread. Removing the cgroup at exit also wakes it; that
    /// is not an OOM and ends the watch.
    fn watch_oom(self: &Arc<Self>) {
        let cg = self.cgroup_path();
        let dir = PathBuf::from(format!("/sys/fs/cgroup/memory{cg}"));
        if cg.is_empty() || !dir.join("memory.oom_control").exists() {
            return;
        }
        let me = self.clone();
        let handle = tokio::runtime::Handle::current();
        let _ = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                use std::os::fd::AsRawFd;
                let Ok(ctl) = std::fs::File::open(dir.join("memory.oom_control")) else {
                    return;
                };
                let Ok(efd) = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
                else {
                    return;
                };
                let reg = format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd());
                if std::fs::write(dir.join("cgroup.event_control"), reg).is_err() {
                    return;
                }
                let mut buf = [0u8; 8];
                while let Ok(8) = rustix::io::read(&efd, &mut buf) {
                    if !dir.exists() {
                        return;
                    }
                    let mut ev = TaskOOM::new();
                    ev.container_id = me.flags.id.clone();
                    handle.block_on(me.publish("/tasks/oom", &ev));
                }
            });
    }

    /// Wait for a started process on a thread; record and publish its exit.
    fn reap(self: &Arc<Self>, exec_id: String, pid: u32) {
        let me = self.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::spawn(move || {
            let status = loop {
                match rustix::process::waitpid(
                    rustix::process::Pid::from_raw(pid as i32),
                    rustix::process::WaitOptions::empty(),
                ) {
                    Ok(Some((_, st))) => {
                        if let Some(code) = st.exit_status() {
                            break code as u32;
                        }
                        if let Some(sig) = st.terminating_signal() {
                            break 128 + sig as u32;
                        }
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    _ => break 255,
                }
            };
            let at = SystemTime::now();
            handle.block_on(async {
                let _order = me.lifecycle.lock().await;
                me.set(&exec_id, |p| {
                    p.status = St::Stopped;
                    p.exit = Some((status, at));
                });
                if let Ok(p) = me.get(&exec_id) {
                    let _ = p.done_tx.send(true);
                }
                let mut ev = TaskExit::new();
                ev.container_id = me.flags.id.clone();
                ev.id = if exec_id.is_empty() {
                    me.flags.id.clone()
                } else {
                    exec_id.clone()
                };
                ev.pid = pid;
                ev.exit_status = status;
                ev.exited_at = Some(ts(at)).into();
                me.publish("/tasks/exit", &ev).await;
            });
        });
    }

    fn cgroup_path(&self) -> String {
        std::fs::read(self.bundle().join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["linux"]["cgroupsPath"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

fn read_u64(p: String) -> u64 {
    std::fs::read_to_string(p)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The ttrpc service handle (a local type over the shared state).
struct Handle(Arc<Service>);

impl std::ops::Deref for Handle {
    type Target = Service;
    fn deref(&self) -> &Service {
        &self.0
    }
}

#[async_trait::async_trait]
impl Task for Handle {
    async fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        let p = self.get(&r.exec_id)?;
        let mut s = StateResponse::new();
        s.id = if r.exec_id.is_empty() {
            self.flags.id.clone()
        } else {
            r.exec_id.clone()
        };
        s.bundle = self.flags.bundle.clone();
        s.pid = p.pid;
        s.status = match p.status {
            St::Created => Status::CREATED,
            St::Running => Status::RUNNING,
            St::Paused => Status::PAUSED,
            St::Stopped => Status::STOPPED,
        }
        .into();
        s.stdin = p.stdin;
        s.stdout = p.stdout;
        s.stderr = p.stderr;
        if let Some((code, at)) = p.exit {
            s.exit_status = code;
            s.exited_at = Some(ts(at)).into();
        }
        s.exec_id = r.exec_id;
        Ok(s)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        r: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        choose_runtime(&r.bundle, r.options.as_ref())
            .map_err(|e| err(Code::INVALID_ARGUMENT, e))?;
        let rootfs = Path::new(&r.bundle).join("rootfs");
        for m in &r.rootfs {
            let mount = stevedore_types::Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                target: String::new(),
                options: m.options.to_vec(),
            };
            stevedore_sys::mount::mount(&mount, &rootfs).map_err(|e| err(Code::INTERNAL, e))?;
        }
        let (stdio, console) = if r.terminal {
            let null = open_stdio("", "", "").map_err(|e| err(Code::INTERNAL, e))?;
            (
                null,
                Some(ConsoleSocket::new().map_err(|e| err(Code::INTERNAL, e))?),
            )
        } else {
            (
                open_stdio(&r.stdin, &r.stdout, &r.stderr)
                    .map_err(|e| err(Code::INVALID_ARGUMENT, e))?,
                None,
            )
        };
        let pidfile = Path::new(&r.bundle).join("init.pid");
        let ns = self.flags.namespace.clone();
        let (bundle, id, pf) = (
            r.bundle.clone(),
            r.id.clone(),
            pidfile.display().to_string(),
        );
        let csock = console.as_ref().map(|c| c.path.display().to_string());
        let res = tokio::task::spawn_blocking(move || {
            let mut args = vec!["create", "--bundle", &bundle, "--pid-file", &pf];
            if let Some(c) = &csock {
                args.extend(["--console-socket", c.as_str()]);
            }
            args.push(&id);
            runc(&ns, &args, Some(stdio), None)
        });
        let master = match console {
            Some(c) => Some(
                tokio::task::spawn_blocking(move || c.receive_master())
                    .await
                    .map_err(|e| err(Code::INTERNAL, e))?,
            ),
            None => None,
        };
        let res = res.await.map_err(|e| err(Code::INTERNAL, e))?;
        if let Err(e) = res {
            let _ = stevedore_sys::mount::unmount_all(&rootfs);
            return Err(err(Code::UNKNOWN, e));
        }
        let master = match master {
            Some(Ok(m)) => {
                copy_console(&m, &r.stdin, &r.stdout).map_err(|e| err(Code::INTERNAL, e))?;
                Some(Arc::new(m))
            }
            Some(Err(e)) => return Err(err(Code::INTERNAL, e)),
            None => None,
        };
        let pid: u32 = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| err(Code::INTERNAL, "runc wrote no pid file"))?;
        let mut p = Proc::new(
            r.stdin.clone(),
            r.stdout.clone(),
            r.stderr.clone(),
            Vec::new(),
        );
        p.pid = pid;
        p.terminal = r.terminal;
        p.console = master;
        self.procs.lock().unwrap().insert(String::new(), p);
        self.0.reap(String::new(), pid);
        self.0.watch_oom();
        let mut ev = TaskCreate::new();
        ev.container_id = r.id.clone();
        ev.bundle = r.bundle.clone();
        ev.rootfs = r.rootfs.clone();
        let mut io = TaskIO::new();
        io.stdin = r.stdin;
        io.stdout = r.stdout;
        io.stderr = r.stderr;
        ev.io = Some(io).into();
        ev.pid = pid;
        self.publish("/tasks/create", &ev).await;
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start(&self, _: &TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        let _order = self.lifecycle.lock().await;
        let p = self.get(&r.exec_id)?;
        let ns = self.flags.namespace.clone();
        let id = self.flags.id.clone();
        let pid = if r.exec_id.is_empty() {
            let i = id.clone();
            tokio::task::spawn_blocking(move || runc(&ns, &["start", &i], None, None))
                .await
                .map_err(|e| err(Code::INTERNAL, e))?
                .map_err(|e| err(Code::UNKNOWN, e))?;
            // a fast process may already have exited (and been reaped)
            self.set("", |p| {
                if p.status == St::Created {
                    p.status = St::Running
                }
            });
            let mut ev = TaskStart::new();
            ev.container_id = id;
            ev.pid = p.pid;
            self.publish("/tasks/start", &ev).await;
            p.pid
        } else {
            let (stdio, console) = if p.terminal {
                let null = open_stdio("", "", "").map_err(|e| err(Code::INTERNAL, e))?;
                (
                    null,
                    Some(ConsoleSocket::new().map_err(|e| err(Code::INTERNAL, e))?),
                )
            } else {
                (
                    open_stdio(&p.stdin, &p.stdout, &p.stderr)
                        .map_err(|e| err(Code::INVALID_ARGUMENT, e))?,
                    None,
                )
            };
            let spec = self.bundle().join(format!("{}.json", r.exec_id));
            let pidfile = self.bundle().join(format!("{}.pid", r.exec_id));
            std::fs::write(&spec, &p.spec).map_err(|e| err(Code::INTERNAL, e))?;
            let (s, pf, i) = (
                spec.display().to_string(),
                pidfile.display().to_string(),
                id.clone(),
            );
            let csock = console.as_ref().map(|c| c.path.display().to_string());
            let res = tokio::task::spawn_blocking(move || {
                let mut args = vec!["exec", "--detach", "--pid-file", &pf, "--process", &s];
                if let Some(c) = &csock {
                    args.extend(["--console-socket", c.as_str()]);
                }
                args.push(&i);
                runc(&ns, &args, Some(stdio), None)
            });
            let master = match console {
                Some(c) => Some(
                    tokio::task::spawn_blocking(move || c.receive_master())
                        .await
                        .map_err(|e| err(Code::INTERNAL, e))?
                        .map_err(|e| err(Code::INTERNAL, e))?,
                ),
                None => None,
            };
            res.await
                .map_err(|e| err(Code::INTERNAL, e))?
                .map_err(|e| err(Code::UNKNOWN, e))?;
            if let Some(m) = &master {
                copy_console(m, &p.stdin, &p.stdout).map_err(|e| err(Code::INTERNAL, e))?;
            }
            let master = master.map(Arc::new);
            self.set(&r.exec_id, |p| p.console = master);
            let pid: u32 = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| err(Code::INTERNAL, "runc wrote no pid file"))?;
            self.set(&r.exec_id, |p| {
                p.pid = pid;
                p.status = St::Running;
            });
            // reaped only from here on: the exit cannot be overwritten
            self.0.reap(r.exec_id.clone(), pid);
            let mut ev = TaskExecStarted::new();
            ev.container_id = id;
            ev.exec_id = r.exec_id.clone();
            ev.pid = pid;
            self.publish("/tasks/exec-started", &ev).await;
            pid
        };
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn delete(&self, _: &TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let p = self.get(&r.exec_id)?;
        if p.status != St::Stopped && p.status != St::Created {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("cannot delete running process {:?}", r.exec_id),
            ));
        }
        if r.exec_id.is_empty() {
            let (ns, id) = (self.flags.namespace.clone(), self.flags.id.clone());
            let _ = tokio::task::spawn_blocking(move || {
                runc(&ns, &["delete", "--force", &id], None, None)
            })
            .await;
            let _ = stevedore_sys::mount::unmount_all(&self.bundle().join("rootfs"));
        }
        self.procs.lock().unwrap().remove(&r.exec_id);
        let (code, at) = p.exit.unwrap_or((137, SystemTime::now()));
        if r.exec_id.is_empty() {
            let mut ev = TaskDelete::new();
            ev.container_id = self.flags.id.clone();
            ev.pid = p.pid;
            ev.exit_status = code;
            ev.exited_at = Some(ts(at)).into();
            ev.id = self.flags.id.clone();
            self.publish("/tasks/delete", &ev).await;
        }
        let mut resp = DeleteResponse::new();
        resp.pid = p.pid;
        resp.exit_status = code;
        resp.exited_at = Some(ts(at)).into();
        Ok(resp)
    }

    async fn pids(&self, _: &TtrpcContext, _: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let (ns, id) = (self.flags.namespace.clone(), self.flags.id.clone());
        let out = tokio::task::spawn_blocking(move || {
            runc(&ns, &["ps", "--format", "json", &id], None, None)
        })
        .await
        .map_err(|e| err(Code::INTERNAL, e))?
        .map_err(|e| err(Code::UNKNOWN, e))?;
        let pids: Vec<u32> = serde_json::from_slice(&out).unwrap_or_default();
        let mut resp = PidsResponse::new();
        resp.processes = pids
            .into_iter()
            .map(|pid| {
                let mut i = ProcessInfo::new();
                i.pid = pid;
                i
            })
            .collect();
        Ok(resp)
    }

    async fn pause(&self, _: &TtrpcContext, _: PauseRequest) -> ttrpc::Result<Empty> {
        self.simple("pause").await?;
        self.set("", |p| p.status = St::Paused);
        let mut ev = TaskPaused::new();
        ev.container_id = self.flags.id.clone();
        self.publish("/tasks/paused", &ev).await;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, _: ResumeRequest) -> ttrpc::Result<Empty> {
        self.simple("resume").await?;
        self.set("", |p| p.status = St::Running);
        let mut ev = TaskResumed::new();
        ev.container_id = self.flags.id.clone();
        self.publish("/tasks/resumed", &ev).await;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        let p = self.get(&r.exec_id)?;
        if p.status == St::Stopped {
            return Err(err(Code::NOT_FOUND, "process already finished"));
        }
        if r.exec_id.is_empty() {
            let (ns, id, sig) = (
                self.flags.namespace.clone(),
                self.flags.id.clone(),
                r.signal.to_string(),
            );
            let all = r.all;
            tokio::task::spawn_blocking(move || {
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.push(&id);
                args.push(&sig);
                runc(&ns, &args, None, None)
            })
            .await
            .map_err(|e| err(Code::INTERNAL, e))?
            .map_err(|e| err(Code::UNKNOWN, e))?;
        } else {
            let pid = rustix::process::Pid::from_raw(p.pid as i32)
                .ok_or_else(|| err(Code::NOT_FOUND, "process not started"))?;
            let sig =
                rustix::process::Signal::from_named_raw(r.signal as i32).ok_or_else(|| {
                    err(
                        Code::INVALID_ARGUMENT,
                        format!("invalid signal {}", r.signal),
                    )
                })?;
            rustix::process::kill_process(pid, sig).map_err(|e| err(Code::UNKNOWN, e))?;
        }
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        if self.procs.lock().unwrap().contains_key(&r.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {:?}: already exists", r.exec_id),
            ));
        }
        let spec = r.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        let mut p = Proc::new(r.stdin.clone(), r.stdout.clone(), r.stderr.clone(), spec);
        p.terminal = r.terminal;
        self.procs.lock().unwrap().insert(r.exec_id.clone(), p);
        let mut ev = TaskExecAdded::new();
        ev.container_id = self.flags.id.clone();
        ev.exec_id = r.exec_id;
        self.publish("/tasks/exec-added", &ev).await;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let p = self.get(&r.exec_id)?;
        let Some(master) = p.console else {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("process {:?} has no terminal", r.exec_id),
            ));
        };
        let ws = rustix::termios::Winsize {
            ws_row: r.height as u16,
            ws_col: r.width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&*master, ws)
            .map_err(|e| err(Code::INTERNAL, format!("resize pty: {e}")))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, _: CloseIORequest) -> ttrpc::Result<Empty> {
        // stdin is the client's FIFO itself: closing its write end is the client's
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        let data = r
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let (ns, id) = (self.flags.namespace.clone(), self.flags.id.clone());
        tokio::task::spawn_blocking(move || {
            runc(&ns, &["update", "--resources", "-", &id], None, Some(&data))
        })
        .await
        .map_err(|e| err(Code::INTERNAL, e))?
        .map_err(|e| err(Code::UNKNOWN, e))?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let p = self.get(&r.exec_id)?;
        let mut rx = p.done.clone();
        while !*rx.borrow() {
            if rx.changed().await.is_err() {
                break;
            }
        }
        let p = self.get(&r.exec_id)?;
        let (code, at) = p.exit.unwrap_or((255, SystemTime::now()));
        let mut resp = WaitResponse::new();
        resp.exit_status = code;
        resp.exited_at = Some(ts(at)).into();
        Ok(resp)
    }

    async fn stats(&self, _: &TtrpcContext, _: StatsRequest) -> ttrpc::Result<StatsResponse> {
        use containerd_shim_protos::cgroups::metrics::{
            CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
        };
        let cg = self.cgroup_path();
        let f = |ctl: &str, file: &str| format!("/sys/fs/cgroup/{ctl}{cg}/{file}");
        let mut m = Metrics::new();
        let mut pids = PidsStat::new();
        pids.current = read_u64(f("pids", "pids.current"));
        m.pids = Some(pids).into();
        let mut usage = MemoryEntry::new();
        usage.usage = read_u64(f("memory", "memory.usage_in_bytes"));
        usage.limit = read_u64(f("memory", "memory.limit_in_bytes"));
        usage.max = read_u64(f("memory", "memory.max_usage_in_bytes"));
        let mut mem = MemoryStat::new();
        mem.usage = Some(usage).into();
        m.memory = Some(mem).into();
        let mut cpu_usage = CPUUsage::new();
        cpu_usage.total = read_u64(f("cpuacct", "cpuacct.usage"));
        let mut cpu = CPUStat::new();
        cpu.usage = Some(cpu_usage).into();
        m.cpu = Some(cpu).into();
        let mut resp = StatsResponse::new();
        resp.stats = Some(pack(&m)).into();
        Ok(resp)
    }

    async fn connect(&self, _: &TtrpcContext, _: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = self.get("").map(|p| p.pid).unwrap_or(0);
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        if self.procs.lock().unwrap().is_empty() {
            self.shutdown.notify_one();
        }
        Ok(Empty::new())
    }
}

impl Service {
    async fn simple(&self, verb: &'static str) -> ttrpc::Result<()> {
        let (ns, id) = (self.flags.namespace.clone(), self.flags.id.clone());
        tokio::task::spawn_blocking(move || runc(&ns, &[verb, &id], None, None))
            .await
            .map_err(|e| err(Code::INTERNAL, e))?
            .map_err(|e| err(Code::UNKNOWN, e))?;
        Ok(())
    }
}

/// The socket of a shim: one per (daemon address, namespace, id).
fn socket_path(f: &Flags) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&f.address, &f.namespace, &f.id).hash(&mut h);
    PathBuf::from(format!("/run/stevedore/s/{:016x}", h.finish()))
}

fn start(f: &Flags) -> Result<(), String> {
    let sock = socket_path(f);
    if let Some(d) = sock.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
    }
    let _ = std::fs::remove_file(&sock);
    // listen here, hand the socket to the server: the address is good as
    // soon as we print it (clients queue in the backlog until it accepts)
    let listener = std::os::unix::net::UnixListener::bind(&sock)
        .map_err(|e| format!("listen on {}: {e}", sock.display()))?;
    let fd = listener.as_fd();
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty()).map_err(|e| e.to_string())?;
    let listen_fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "-namespace",
        &f.namespace,
        "-address",
        &f.address,
        "-id",
        &f.id,
        "-bundle",
        &f.bundle,
    ])
    .arg("-socket")
    .arg(&sock)
    .arg("-listen-fd")
    .arg(listen_fd.to_string())
    .arg("serve")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .current_dir(&f.bundle);
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| format!("spawn shim server: {e}"))?;
    drop(listener);
    let addr = format!("unix://{}", sock.display());
    std::fs::write(Path::new(&f.bundle).join("address"), &addr).map_err(|e| e.to_string())?;
    println!("{addr}");
    Ok(())
}

fn delete(f: &Flags) -> Result<(), String> {
    let _ = choose_runtime(&f.bundle, None);
    let _ = runc(&f.namespace, &["delete", "--force", &f.id], None, None);
    let _ = stevedore_sys::mount::unmount_all(&Path::new(&f.bundle).join("rootfs"));
    let mut resp = DeleteResponse::new();
    resp.exit_status = 137;
    resp.exited_at = Some(now_ts()).into();
    let out = resp.write_to_bytes().map_err(|e| e.to_string())?;
    use std::io::Write;
    std::io::stdout().write_all(&out).map_err(|e| e.to_string())
}

fn serve(f: Flags) -> Result<(), String> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let svc = Arc::new(Service {
            flags: f.clone(),
            procs: Mutex::new(HashMap::new()),
            events: tokio::sync::Mutex::new(None),
            shutdown: tokio::sync::Notify::new(),
            lifecycle: tokio::sync::Mutex::new(()),
        });
        let server = match f.listen_fd {
            // SAFETY: `start` passed this fd: a listening unix socket, ours alone
            Some(fd) => unsafe {
                // not to be inherited by runc and the containers
                let b = std::os::fd::BorrowedFd::borrow_raw(fd);
                rustix::io::fcntl_setfd(b, rustix::io::FdFlags::CLOEXEC)
                    .map_err(|e| format!("listen fd {fd}: {e}"))?;
                Server::new().add_unix_listener(fd)
            },
            None => Server::new().bind(&format!("unix://{}", f.socket)),
        };
        let mut server = server
            .map_err(|e| e.to_string())?
            .register_service(create_task(Arc::new(Handle(svc.clone()))));
        server.start().await.map_err(|e| e.to_string())?;
        svc.shutdown.notified().await;
        // let the Shutdown response leave before exiting
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let _ = std::fs::remove_file(&f.socket);
        Ok::<_, String>(())
    })?;
    // drop keeps no fds of containers; exit now
    let _: Option<OwnedFd> = None;
    Ok(())
}

fn main() {
    let f = parse_flags();
    let r = match f.action.as_str() {
        "start" => start(&f),
        "delete" => delete(&f),
        "serve" => serve(f),
        "version" => {
            println!("containerd-shim-stevedore-v1 {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(format!("unknown action {other:?}: use start or delete")),
    };
    if let Err(e) = r {
        eprintln!("containerd-shim-stevedore-v1: {e}");
        std::process::exit(1);
    }
}
