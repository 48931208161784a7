//! `stevedore run`, `stevedore containers create` and the task commands that
//! move bytes or wait: `tasks start|exec|attach|wait|metrics`.
//!
//! The spec is built like containerd's (crates/runtime `default_spec` plus
//! the image config and the flags); the container's snapshot is prepared
//! under a short lease so GC cannot take it before the container record
//! references it. Task stdio are FIFOs under
//! `/run/stevedore/fifo/<namespace>/<id>[-<exec id>]/` that this process
//! copies to and from its own stdio: stdout/stderr are opened for reading
//! before the task exists (non-blocking, then polled, so output written
//! before we get scheduled is never lost and EOF means the shim closed its
//! side); stdin is opened read-write so it never blocks and the container
//! sees EOF only when our input ends. A detached task keeps its FIFOs so
//! `tasks attach` can reopen them; `tasks rm` removes them.

use crate::client::{from_api_mounts, rpc_error, with_lease, Conn};
use crate::mount::resolve_image;
use crate::output::{human_size, print_json, Format, Table};
use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use stevedore_api::services::containers::{
    container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
    DeleteContainerRequest, GetContainerRequest,
};
use stevedore_api::services::leases::{leases_client::LeasesClient, CreateRequest, DeleteRequest};
use stevedore_api::services::snapshots::{
    snapshots_client::SnapshotsClient, CommitSnapshotRequest, MountsRequest,
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use stevedore_api::services::tasks::{
    tasks_client::TasksClient, CloseIoRequest, CreateTaskRequest, DeleteProcessRequest,
    DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest, MetricsRequest,
    ResizePtyRequest, StartRequest, WaitRequest,
};
use stevedore_runtime::spec::{self, IdMapping, Spec};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

type Tasks = TasksClient<
    tonic::service::interceptor::InterceptedService<Channel, crate::client::WithNamespace>,
>;

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
const FIFO_ROOT: &str = "/run/stevedore/fifo";

/// How a container is built: the flags `run` and `containers create` share.
#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Allocate a pseudo-terminal (the host terminal goes raw; size follows it).
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(long)]
    pub cwd: Option<String>,
    /// Add a mount, ctr's syntax: type=bind,src=/host,dst=/in/ctr,options=rbind:ro
    #[arg(long)]
    pub mount: Vec<String>,
    /// Mount the root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Use the host's network namespace.
    #[arg(long)]
    pub net_host: bool,
    /// All capabilities, all devices, no seccomp, writable /sys.
    #[arg(long)]
    pub privileged: bool,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory_limit: Option<u64>,
    /// CPU limit (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Run as uid[:gid].
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    /// User namespace uid map container:host:size (the rootfs is remapped).
    #[arg(long)]
    pub uidmap: Option<String>,
    /// User namespace gid map container:host:size (default: the uid map).
    #[arg(long)]
    pub gidmap: Option<String>,
    /// Runtime (shim): io.containerd.runc.v2 runs on stevedore's shim by default.
    #[arg(long, default_value = "io.containerd.runc.v2")]
    pub runtime: String,
    /// OCI runtime binary the shim drives (runc options BinaryName), e.g. crun.
    #[arg(long)]
    pub runc_binary: Option<String>,
    #[arg(long, default_value = "overlayfs")]
    pub snapshotter: String,
    /// Container label key=value (repeatable).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Do not apply the default seccomp profile.
    #[arg(long)]
    pub no_seccomp: bool,
    pub image: String,
    pub id: String,
    /// Command and arguments (default: the image's entrypoint and cmd).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Remove the container and its snapshot when the task exits.
    #[arg(long)]
    pub rm: bool,
    /// Start the task and return (`tasks attach` reconnects).
    #[arg(long, short = 'd')]
    pub detach: bool,
    #[command(flatten)]
    pub spec: SpecArgs,
}

#[derive(Args)]
pub struct ExecArgs {
    /// Exec process id.
    #[arg(long)]
    pub exec_id: String,
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Do not wait: start the process and return.
    #[arg(long, short = 'd')]
    pub detach: bool,
    #[arg(long = "env", short = 'e')]
    pub env: Vec<String>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(long, short = 'u')]
    pub user: Option<String>,
    pub id: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn tasks_client(conn: &Conn) -> Result<Tasks> {
    let (ch, ns) = conn.svc()?;
    Ok(TasksClient::with_interceptor(ch, ns))
}

/// Parse ctr's `--mount` syntax.
fn parse_mount(s: &str) -> Result<spec::Mount> {
    let mut m = spec::Mount {
        destination: String::new(),
        kind: String::new(),
        source: String::new(),
        options: Vec::new(),
    };
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("mount {s:?}: {part:?} is not key=value"))?;
        match k {
            "type" => m.kind = v.to_string(),
            "src" | "source" => m.source = v.to_string(),
            "dst" | "destination" | "target" => m.destination = v.to_string(),
            "options" => m.options = v.split(':').map(String::from).collect(),
            _ => bail!("mount {s:?}: unknown key {k:?} (type, src, dst, options)"),
        }
    }
    if m.destination.is_empty() {
        bail!("mount {s:?}: dst= is required");
    }
    if m.kind.is_empty() {
        m.kind = "bind".into();
    }
    if m.kind == "bind" && m.options.is_empty() {
        m.options = vec!["rbind".into(), "rw".into()];
    }
    Ok(m)
}

/// The container-config part of an image config, as the spec library wants it.
fn image_config(config: &[u8]) -> Result<spec::ImageConfig> {
    let v: serde_json::Value = serde_json::from_slice(config).context("parse image config")?;
    let c = &v["config"];
    let strings = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(spec::ImageConfig {
        entrypoint: strings("Entrypoint"),
        cmd: strings("Cmd"),
        env: strings("Env"),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
        user: c["User"].as_str().unwrap_or_default().to_string(),
    })
}

/// The process flags `run` and `tasks exec` share.
fn process_flags(
    s: &mut Spec,
    env: &[String],
    cwd: Option<&str>,
    user: Option<&str>,
    tty: bool,
) -> Result<()> {
    if !env.is_empty() {
        s.with_env(env);
    }
    if let Some(cwd) = cwd {
        s.with_cwd(cwd);
    }
    if let Some(u) = user {
        s.with_user(u)?;
    }
    s.with_tty(tty);
    Ok(())
}

fn build_spec(ns: &str, a: &SpecArgs, image: &spec::ImageConfig) -> Result<Spec> {
    let mut s = spec::default_spec(ns, &a.id);
    s.with_image_config(image, &a.args)?;
    process_flags(&mut s, &a.env, a.cwd.as_deref(), a.user.as_deref(), a.tty)?;
    if a.net_host {
        s.with_host_network();
    }
    if a.read_only {
        s.with_readonly_rootfs();
    }
    if a.privileged {
        s.with_privileged();
    }
    if let Some(m) = a.memory_limit {
        s.with_memory_limit(m);
    }
    if let Some(c) = a.cpus {
        s.with_cpus(c);
    }
    for m in &a.mount {
        s.mounts.push(parse_mount(m)?);
    }
    if let Some((u, g)) = id_maps(a)? {
        s.with_user_namespace(&[u], &[g]);
    }
    if !a.privileged && !a.no_seccomp {
        s.with_default_seccomp();
    }
    Ok(s)
}

fn id_maps(a: &SpecArgs) -> Result<Option<(IdMapping, IdMapping)>> {
    let Some(u) = &a.uidmap else {
        if a.gidmap.is_some() {
            bail!("--gidmap needs --uidmap");
        }
        return Ok(None);
    };
    let u = spec::parse_id_mapping(u)?;
    let g = match &a.gidmap {
        Some(g) => spec::parse_id_mapping(g)?,
        None => u.clone(),
    };
    Ok(Some((u, g)))
}

/// A short-lived lease for the create path.
struct Lease {
    id: String,
    value: MetadataValue<tonic::metadata::Ascii>,
}

async fn create_lease(conn: &Conn, id: &str) -> Result<Lease> {
    let (ch, ns) = conn.svc()?;
    let lease = format!("stevedore-run-{id}-{}", std::process::id());
    let expire =
        humantime::format_rfc3339(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    LeasesClient::with_interceptor(ch, ns)
        .create(CreateRequest {
            id: lease.clone(),
            labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
        })
        .await
        .map_err(|s| rpc_error(&format!("create lease {lease}"), s))?;
    let value = MetadataValue::try_from(lease.as_str()).context("lease id")?;
    Ok(Lease { id: lease, value })
}

async fn drop_lease(conn: &Conn, lease: &Lease) {
    if let Ok((ch, ns)) = conn.svc() {
        let _ = LeasesClient::with_interceptor(ch, ns)
            .delete(DeleteRequest {
                id: lease.id.clone(),
                sync: false,
            })
            .await;
    }
}

/// The parent for a user-namespaced container: the image's snapshot with
/// every file's owner shifted by the host ids (containerd's
/// `WithRemappedSnapshot`), committed once as `<chain>-<uid>-<gid>`.
async fn remapped_parent(
    conn: &Conn,
    snapshotter: &str,
    chain: &str,
    u: &IdMapping,
    g: &IdMapping,
    lease: &Lease,
) -> Result<String> {
    let (ch, ns) = conn.svc()?;
    let mut snaps = SnapshotsClient::with_interceptor(ch, ns);
    let name = format!("{chain}-{}-{}", u.host_id, g.host_id);
    let exists = snaps
        .stat(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: name.clone(),
        })
        .await;
    match exists {
        Ok(_) => return Ok(name),
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(rpc_error(&format!("stat snapshot {name}"), s)),
    }
    let key = format!("{name}-remap-{}", std::process::id());
    let mounts = snaps
        .prepare(with_lease(
            &lease.value,
            tonic::Request::new(PrepareSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key: key.clone(),
                parent: chain.to_string(),
                labels: Default::default(),
            }),
        ))
        .await
        .map_err(|s| rpc_error(&format!("prepare snapshot {key}"), s))?
        .into_inner()
        .mounts;
    let mounts = from_api_mounts(mounts);
    let (uid, gid) = (u.host_id, g.host_id);
    let shifted = tokio::task::spawn_blocking(move || -> Result<()> {
        let dir = tempfile::tempdir().context("temporary mount point")?;
        stevedore_sys::mount::mount_all(&mounts, dir.path()).map_err(|e| anyhow!("{e}"))?;
        let r = shift_owners(dir.path(), uid, gid);
        stevedore_sys::mount::unmount_all(dir.path()).map_err(|e| anyhow!("{e}"))?;
        r
    })
    .await?;
    if let Err(e) = shifted {
        let _ = snaps
            .remove(RemoveSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                key,
            })
            .await;
        return Err(e);
    }
    snaps
        .commit(with_lease(
            &lease.value,
            tonic::Request::new(CommitSnapshotRequest {
                snapshotter: snapshotter.to_string(),
                name: name.clone(),
                key: key.clone(),
                labels: Default::default(),
            }),
        ))
        .await
        .map_err(|s| rpc_error(&format!("commit snapshot {name}"), s))?;
    Ok(name)
}

/// Add `uid`/`gid` to the owner of every file under `root` (not following symlinks).
fn shift_owners(root: &Path, uid: u32, gid: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).with_context(|| format!("stat {}", p.display()))?;
        std::os::unix::fs::lchown(&p, Some(md.uid() + uid), Some(md.gid() + gid))
            .with_context(|| format!("chown {}", p.display()))?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("read {}", p.display()))? {
                stack.push(e?.path());
            }
        }
    }
    Ok(())
}

/// Build the spec, prepare the snapshot and create the container record.
pub async fn create_container(conn: &Conn, a: &SpecArgs) -> Result<()> {
    let (chain, config) = resolve_image(conn, &a.image).await?;
    let spec = build_spec(&conn.namespace, a, &image_config(&config)?)?;
    let lease = create_lease(conn, &a.id).await?;
    let r = create_under_lease(conn, a, &chain, spec, &lease).await;
    drop_lease(conn, &lease).await;
    r
}

async fn create_under_lease(
    conn: &Conn,
    a: &SpecArgs,
    chain: &str,
    spec: Spec,
    lease: &Lease,
) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut snaps = SnapshotsClient::with_interceptor(ch.clone(), ns.clone());
    match snaps
        .stat(StatSnapshotRequest {
            snapshotter: a.snapshotter.clone(),
            key: chain.to_string(),
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => bail!(
            "image {:?} is not unpacked for snapshotter {}: import or pull it with --snapshotter {}",
            a.image,
            a.snapshotter,
            a.snapshotter
        ),
        Err(s) => return Err(rpc_error(&format!("stat snapshot {chain}"), s)),
    }
    let parent = match id_maps(a)? {
        Some((u, g)) => remapped_parent(conn, &a.snapshotter, chain, &u, &g, lease).await?,
        None => chain.to_string(),
    };
    snaps
        .prepare(with_lease(
            &lease.value,
            tonic::Request::new(PrepareSnapshotRequest {
                snapshotter: a.snapshotter.clone(),
                key: a.id.clone(),
                parent,
                labels: Default::default(),
            }),
        ))
        .await
        .map_err(|s| rpc_error(&format!("prepare snapshot {}", a.id), s))?;
    let options = a.runc_binary.as_ref().map(|b| prost_types::Any {
        type_url: RUNC_OPTIONS_TYPE.into(),
        value: runc_options(b),
    });
    let mut labels = std::collections::HashMap::new();
    for l in &a.labels {
        let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
        labels.insert(k.to_string(), v.to_string());
    }
    let created = ContainersClient::with_interceptor(ch, ns)
        .create(with_lease(
            &lease.value,
            tonic::Request::new(CreateContainerRequest {
                container: Some(Container {
                    id: a.id.clone(),
                    labels,
                    image: a.image.clone(),
                    runtime: Some(Runtime {
                        name: a.runtime.clone(),
                        options,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: SPEC_TYPE.into(),
                        value: spec.to_json(),
                    }),
                    snapshotter: a.snapshotter.clone(),
                    snapshot_key: a.id.clone(),
                    ..Default::default()
                }),
            }),
        ))
        .await;
    if let Err(s) = created {
        let _ = snaps
            .remove(RemoveSnapshotRequest {
                snapshotter: a.snapshotter.clone(),
                key: a.id.clone(),
            })
            .await;
        return Err(rpc_error(&format!("create container {:?}", a.id), s));
    }
    Ok(())
}

/// containerd.runc.v1.Options with only `binary_name` (field 6) set.
fn runc_options(binary: &str) -> Vec<u8> {
    let mut v = vec![(6 << 3) | 2];
    let mut n = binary.len();
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            v.push(b);
            break;
        }
        v.push(b | 0x80);
    }
    v.extend_from_slice(binary.as_bytes());
    v
}

/// The FIFOs of one process, and the ends this process holds.
struct Stdio {
    dir: PathBuf,
    stdin: String,
    stdout: String,
    stderr: String,
}

fn fifo_dir(ns: &str, name: &str) -> PathBuf {
    Path::new(FIFO_ROOT).join(ns).join(name)
}

impl Stdio {
    /// Create the FIFOs (no stderr with a terminal; no stdin when `stdin` is false).
    fn create(dir: PathBuf, tty: bool, stdin: bool) -> Result<Stdio> {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("create FIFO dir {}", dir.display()))?;
        let mk = |name: &str| -> Result<String> {
            let p = dir.join(name);
            stevedore_sys::mkfifo(&p, 0o600).map_err(|e| anyhow!("{e}"))?;
            Ok(p.display().to_string())
        };
        Ok(Stdio {
            stdin: if stdin { mk("stdin")? } else { String::new() },
            stdout: mk("stdout")?,
            stderr: if tty { String::new() } else { mk("stderr")? },
            dir,
        })
    }

    fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copy a FIFO to one of our outputs until its writers are gone. Opened
/// non-blocking now (a reader exists before the shim writes), polled on a
/// thread; read() returning 0 after POLLHUP is the end.
fn pump_out(path: &str, err: bool) -> Result<std::thread::JoinHandle<()>> {
    let f = open_reader(path)?;
    Ok(std::thread::spawn(move || {
        let mut f = f;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut fds = [rustix::event::PollFd::new(&f, rustix::event::PollFlags::IN)];
            if rustix::event::poll(&mut fds, None).is_err() {
                return;
            }
            match f.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    let r = if err {
                        let mut e = std::io::stderr().lock();
                        e.write_all(&buf[..n]).and_then(|_| e.flush())
                    } else {
                        let mut o = std::io::stdout().lock();
                        o.write_all(&buf[..n]).and_then(|_| o.flush())
                    };
                    if r.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }))
}

/// This process's ends of a process's FIFOs.
struct Attachment {
    /// Output copies (foreground).
    outs: Vec<std::thread::JoinHandle<()>>,
    /// Fires with the stdin FIFO when our input ends (foreground).
    stdin_done: Option<tokio::sync::oneshot::Receiver<std::fs::File>>,
    /// The host terminal in raw mode (foreground with a tty).
    raw: Option<RawTerminal>,
    /// Read ends held while a detached process is created: containerd's Go
    /// shim blocks opening an output FIFO until a reader exists.
    _readers: Vec<std::fs::File>,
}

impl Attachment {
    fn open(stdio: &Stdio, tty: bool, detach: bool) -> Result<Attachment> {
        if detach {
            return Ok(Attachment {
                outs: Vec::new(),
                stdin_done: None,
                raw: None,
                _readers: hold_readers(stdio)?,
            });
        }
        let mut outs = vec![pump_out(&stdio.stdout, false)?];
        if !stdio.stderr.is_empty() {
            outs.push(pump_out(&stdio.stderr, true)?);
        }
        Ok(Attachment {
            outs,
            raw: tty.then(RawTerminal::enable),
            stdin_done: Some(pump_in(&stdio.stdin)?),
            _readers: Vec::new(),
        })
    }
}

/// Non-blocking read ends of the output FIFOs, held while the task is
/// created and started.
fn hold_readers(stdio: &Stdio) -> Result<Vec<std::fs::File>> {
    [&stdio.stdout, &stdio.stderr]
        .into_iter()
        .filter(|p| !p.is_empty())
        .map(|p| open_reader(p))
        .collect()
}

/// A FIFO's read end, opened without waiting for a writer.
fn open_reader(path: &str) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .with_context(|| format!("open {path}"))
}

/// Copy our stdin into the stdin FIFO (held read-write so opening never
/// blocks). At end of input the FIFO is handed back through the channel
/// rather than closed here: closing it before the shim has opened its end
/// would drop what we wrote, so `supervise` (which runs once the task
/// exists) closes it.
fn pump_in(path: &str) -> Result<tokio::sync::oneshot::Receiver<std::fs::File>> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("open {path}"))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut f = f;
        let mut input = std::io::stdin().lock();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match input.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if f.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(f);
    });
    Ok(rx)
}

/// The host terminal in raw mode until dropped.
struct RawTerminal(Option<(OwnedFd, rustix::termios::Termios)>);

impl RawTerminal {
    fn enable() -> RawTerminal {
        let fd = match rustix::io::dup(std::io::stdin().as_fd()) {
            Ok(fd) => fd,
            Err(_) => return RawTerminal(None),
        };
        if !rustix::termios::isatty(&fd) {
            return RawTerminal(None);
        }
        let Ok(orig) = rustix::termios::tcgetattr(&fd) else {
            return RawTerminal(None);
        };
        let mut raw = orig.clone();
        raw.make_raw();
        if rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &raw).is_err() {
            return RawTerminal(None);
        }
        RawTerminal(Some((fd, orig)))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Some((fd, orig)) = &self.0 {
            let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, orig);
        }
    }
}

fn window_size() -> Option<(u32, u32)> {
    for fd in [std::io::stdin().as_fd(), std::io::stdout().as_fd()] {
        if let Ok(w) = rustix::termios::tcgetwinsize(fd) {
            if w.ws_col > 0 {
                return Some((w.ws_col as u32, w.ws_row as u32));
            }
        }
    }
    None
}

async fn resize(tasks: &mut Tasks, id: &str, exec_id: &str) {
    if let Some((width, height)) = window_size() {
        let _ = tasks
            .resize_pty(ResizePtyRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                width,
                height,
            })
            .await;
    }
}

/// While a foreground process runs: forward INT/TERM/HUP (or follow the
/// window size with a terminal) until `wait` answers; returns the exit code.
async fn supervise(
    conn: &Conn,
    id: &str,
    exec_id: &str,
    tty: bool,
    stdin_done: Option<tokio::sync::oneshot::Receiver<std::fs::File>>,
) -> Result<u32> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut tasks = tasks_client(conn)?;
    let mut waiter = tasks_client(conn)?;
    let (cid, eid) = (id.to_string(), exec_id.to_string());
    let wait = tokio::spawn(async move {
        waiter
            .wait(WaitRequest {
                container_id: cid,
                exec_id: eid,
            })
            .await
    });
    tokio::pin!(wait);
    let mut winch = signal(SignalKind::window_change())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut stdin_done = stdin_done;
    loop {
        let sig = tokio::select! {
            r = &mut wait => {
                let r = r.map_err(|e| anyhow!("wait for {id}: {e}"))?;
                let status = r.map_err(|s| rpc_error(&format!("wait for task {id:?}"), s))?;
                return Ok(status.into_inner().exit_status);
            }
            _ = winch.recv() => { if tty { resize(&mut tasks, id, exec_id).await; } continue; }
            _ = int.recv() => 2,
            _ = term.recv() => 15,
            _ = hup.recv() => 1,
            r = async { match stdin_done.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                drop(r);
                stdin_done = None;
                let _ = tasks.close_io(CloseIoRequest {
                    container_id: id.to_string(),
                    exec_id: exec_id.to_string(),
                    stdin: true,
                }).await;
                continue;
            }
        };
        let _ = tasks
            .kill(KillRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                signal: sig,
                all: false,
            })
            .await;
    }
}

/// Wait (bounded) for the output copies to reach EOF.
fn join_outputs(outs: Vec<std::thread::JoinHandle<()>>) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for h in outs {
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if h.is_finished() {
            let _ = h.join();
        }
    }
}

/// Create and start the task of an existing container; in the foreground
/// copy its stdio and return its exit code, detached return None.
async fn start_task(conn: &Conn, id: &str, detach: bool) -> Result<Option<u32>> {
    let (ch, ns) = conn.svc()?;
    let c = ContainersClient::with_interceptor(ch.clone(), ns.clone())
        .get(GetContainerRequest { id: id.to_string() })
        .await
        .map_err(|s| rpc_error(&format!("get container {id:?}"), s))?
        .into_inner()
        .container
        .ok_or_else(|| anyhow!("container {id:?}: empty answer"))?;
    let tty = c
        .spec
        .as_ref()
        .and_then(|s| Spec::from_json(&s.value).ok())
        .and_then(|s| s.process.map(|p| p.terminal))
        .unwrap_or(false);
    let rootfs = SnapshotsClient::with_interceptor(ch, ns)
        .mounts(MountsRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        })
        .await
        .map_err(|s| rpc_error(&format!("mounts of snapshot {}", c.snapshot_key), s))?
        .into_inner()
        .mounts;
    let stdio = Stdio::create(fifo_dir(&conn.namespace, id), tty, !detach)?;
    let Attachment {
        outs,
        stdin_done,
        raw,
        _readers,
    } = Attachment::open(&stdio, tty, detach)?;
    let mut tasks = tasks_client(conn)?;
    let created = tasks
        .create(CreateTaskRequest {
            container_id: id.to_string(),
            rootfs,
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: tty,
            options: c.runtime.as_ref().and_then(|r| r.options.clone()),
            ..Default::default()
        })
        .await;
    if let Err(s) = created {
        drop(raw);
        stdio.remove();
        return Err(rpc_error(&format!("create task {id:?}"), s));
    }
    if tty {
        // the console exists once the task is created: size it before the
        // process starts so its first look at the terminal is right
        resize(&mut tasks, id, "").await;
    }
    if detach {
        if let Err(s) = tasks
            .start(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })
            .await
        {
            let _ = tasks
                .delete(DeleteTaskRequest {
                    container_id: id.to_string(),
                })
                .await;
            stdio.remove();
            return Err(rpc_error(&format!("start task {id:?}"), s));
        }
        return Ok(None);
    }
    let code = async {
        // `supervise` waits for the exit beside the start (a Wait that
        // arrives after the exit still gets the status until the delete)
        let conn2 = conn.clone();
        let idc = id.to_string();
        let sup = tokio::spawn(async move { supervise(&conn2, &idc, "", tty, stdin_done).await });
        tasks
            .start(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })
            .await
            .map_err(|s| rpc_error(&format!("start task {id:?}"), s))?;
        sup.await?
    }
    .await;
    let code = match code {
        Ok(c) => c,
        Err(e) => {
            let _ = tasks
                .kill(KillRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                    signal: 9,
                    all: true,
                })
                .await;
            let _ = tasks
                .delete(DeleteTaskRequest {
                    container_id: id.to_string(),
                })
                .await;
            drop(raw);
            stdio.remove();
            return Err(e);
        }
    };
    tokio::task::spawn_blocking(move || join_outputs(outs)).await?;
    drop(raw);
    let _ = tasks
        .delete(DeleteTaskRequest {
            container_id: id.to_string(),
        })
        .await;
    stdio.remove();
    Ok(Some(code))
}

/// Remove a container and its snapshot (containerd's `WithSnapshotCleanup`).
pub async fn remove_container(conn: &Conn, id: &str) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut containers = ContainersClient::with_interceptor(ch.clone(), ns.clone());
    let c = containers
        .get(GetContainerRequest { id: id.to_string() })
        .await
        .map_err(|s| rpc_error(&format!("remove container {id:?}"), s))?
        .into_inner()
        .container
        .unwrap_or_default();
    containers
        .delete(DeleteContainerRequest { id: id.to_string() })
        .await
        .map_err(|s| rpc_error(&format!("remove container {id:?}"), s))?;
    if c.snapshot_key.is_empty() {
        return Ok(());
    }
    match SnapshotsClient::with_interceptor(ch, ns)
        .remove(RemoveSnapshotRequest {
            snapshotter: c.snapshotter.clone(),
            key: c.snapshot_key.clone(),
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
        Err(s) => Err(rpc_error(
            &format!("remove snapshot {} of container {id:?}", c.snapshot_key),
            s,
        )),
    }
}

/// `stevedore run`: returns the container's exit code (0 when detached).
pub async fn run(conn: &Conn, a: RunArgs) -> Result<u32> {
    if a.rm && a.detach {
        bail!("--rm and --detach cannot be combined");
    }
    create_container(conn, &a.spec).await?;
    let r = start_task(conn, &a.spec.id, a.detach).await;
    if a.rm {
        remove_container(conn, &a.spec.id).await?;
    }
    Ok(r?.unwrap_or(0))
}

/// `stevedore tasks start`: the task of a created container.
pub async fn start(conn: &Conn, id: &str, detach: bool) -> Result<u32> {
    Ok(start_task(conn, id, detach).await?.unwrap_or(0))
}

/// `stevedore tasks exec`.
pub async fn exec(conn: &Conn, a: ExecArgs) -> Result<u32> {
    let (ch, ns) = conn.svc()?;
    let c = ContainersClient::with_interceptor(ch, ns)
        .get(GetContainerRequest { id: a.id.clone() })
        .await
        .map_err(|s| rpc_error(&format!("get container {:?}", a.id), s))?
        .into_inner()
        .container
        .ok_or_else(|| anyhow!("container {:?}: empty answer", a.id))?;
    let mut s = c
        .spec
        .as_ref()
        .map(|s| Spec::from_json(&s.value))
        .transpose()
        .map_err(|e| anyhow!("container {:?}: {e}", a.id))?
        .ok_or_else(|| anyhow!("container {:?} has no spec", a.id))?;
    s.with_args(&a.args);
    process_flags(&mut s, &a.env, a.cwd.as_deref(), a.user.as_deref(), a.tty)?;
    let process = serde_json::to_vec(&s.process).context("encode process")?;
    let stdio = Stdio::create(
        fifo_dir(&conn.namespace, &format!("{}-{}", a.id, a.exec_id)),
        a.tty,
        !a.detach,
    )?;
    let Attachment {
        outs,
        stdin_done,
        raw,
        _readers,
    } = Attachment::open(&stdio, a.tty, a.detach)?;
    let mut tasks = tasks_client(conn)?;
    if let Err(st) = tasks
        .exec(ExecProcessRequest {
            container_id: a.id.clone(),
            stdin: stdio.stdin.clone(),
            stdout: stdio.stdout.clone(),
            stderr: stdio.stderr.clone(),
            terminal: a.tty,
            spec: Some(prost_types::Any {
                type_url: PROCESS_TYPE.into(),
                value: process,
            }),
            exec_id: a.exec_id.clone(),
        })
        .await
    {
        drop(raw);
        stdio.remove();
        return Err(rpc_error(
            &format!("exec {:?} in task {:?}", a.exec_id, a.id),
            st,
        ));
    }
    let conn2 = conn.clone();
    let (idc, eid, tty) = (a.id.clone(), a.exec_id.clone(), a.tty);
    let sup = (!a.detach)
        .then(|| tokio::spawn(async move { supervise(&conn2, &idc, &eid, tty, stdin_done).await }));
    if let Err(st) = tasks
        .start(StartRequest {
            container_id: a.id.clone(),
            exec_id: a.exec_id.clone(),
        })
        .await
    {
        let _ = tasks
            .delete_process(DeleteProcessRequest {
                container_id: a.id.clone(),
                exec_id: a.exec_id.clone(),
            })
            .await;
        drop(raw);
        stdio.remove();
        return Err(rpc_error(&format!("start exec {:?}", a.exec_id), st));
    }
    let Some(sup) = sup else {
        return Ok(0);
    };
    if a.tty {
        resize(&mut tasks, &a.id, &a.exec_id).await;
    }
    let code = sup.await?;
    tokio::task::spawn_blocking(move || join_outputs(outs)).await?;
    drop(raw);
    let _ = tasks
        .delete_process(DeleteProcessRequest {
            container_id: a.id.clone(),
            exec_id: a.exec_id.clone(),
        })
        .await;
    stdio.remove();
    code
}

/// `stevedore tasks attach`: reconnect to a running task's FIFOs.
pub async fn attach(conn: &Conn, id: &str) -> Result<u32> {
    let mut tasks = tasks_client(conn)?;
    let p = tasks
        .get(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
        .map_err(|s| rpc_error(&format!("get task {id:?}"), s))?
        .into_inner()
        .process
        .ok_or_else(|| anyhow!("task {id:?}: empty answer"))?;
    if p.stdout.is_empty() {
        bail!("task {id:?} has no output FIFOs to attach to (it was started without stdio)");
    }
    let mut outs = vec![pump_out(&p.stdout, false)?];
    if !p.stderr.is_empty() {
        outs.push(pump_out(&p.stderr, true)?);
    }
    let raw = p.terminal.then(RawTerminal::enable);
    let stdin_done = if p.stdin.is_empty() {
        None
    } else {
        Some(pump_in(&p.stdin)?)
    };
    if p.terminal {
        resize(&mut tasks, id, "").await;
    }
    let code = supervise(conn, id, "", p.terminal, stdin_done).await?;
    tokio::task::spawn_blocking(move || join_outputs(outs)).await?;
    drop(raw);
    Ok(code)
}

/// `stevedore tasks wait`.
pub async fn wait(conn: &Conn, id: &str) -> Result<u32> {
    let r = tasks_client(conn)?
        .wait(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
        .map_err(|s| rpc_error(&format!("wait for task {id:?}"), s))?
        .into_inner();
    Ok(r.exit_status)
}

/// Remove the FIFOs a detached task kept (after `tasks rm`).
pub fn remove_fifos(ns: &str, id: &str) {
    let _ = std::fs::remove_dir_all(fifo_dir(ns, id));
}

/// `stevedore tasks metrics`: cgroup v1 or v2 figures of one task.
pub async fn metrics(conn: &Conn, out: Format, id: &str) -> Result<()> {
    use prost::Message;
    use stevedore_api::io::containerd::cgroups::{v1, v2};
    let m = tasks_client(conn)?
        .metrics(MetricsRequest {
            filters: vec![format!("id=={id}")],
        })
        .await
        .map_err(|s| rpc_error(&format!("metrics of task {id:?}"), s))?
        .into_inner()
        .metrics;
    let data = m
        .into_iter()
        .find(|m| m.id == id)
        .and_then(|m| m.data)
        .ok_or_else(|| anyhow!("task {id:?}: no metrics (is it running?)"))?;
    let name = data.type_url.rsplit('/').next().unwrap_or_default();
    let (mem, limit, cpu_ns, pids) = match name {
        "io.containerd.cgroups.v1.Metrics" => {
            let v = v1::Metrics::decode(data.value.as_slice()).context("decode v1 metrics")?;
            let usage = v.memory.as_ref().and_then(|m| m.usage).unwrap_or_default();
            (
                usage.usage,
                usage.limit,
                v.cpu.and_then(|c| c.usage).map(|u| u.total).unwrap_or(0),
                v.pids.map(|p| p.current).unwrap_or(0),
            )
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let v = v2::Metrics::decode(data.value.as_slice()).context("decode v2 metrics")?;
            let mem = v.memory.unwrap_or_default();
            (
                mem.usage,
                mem.usage_limit,
                v.cpu.map(|c| c.usage_usec * 1000).unwrap_or(0),
                v.pids.map(|p| p.current).unwrap_or(0),
            )
        }
        other => bail!("task {id:?}: unknown metrics type {other:?}"),
    };
    match out {
        Format::Json => print_json(&json!({
            "id": id, "type": name, "memory_usage": mem, "memory_limit": limit,
            "cpu_total_ns": cpu_ns, "pids": pids,
        })),
        Format::Table => {
            let mut t = Table::new(&["TASK", "MEMORY", "LIMIT", "CPU", "PIDS"]);
            let lim = if limit == 0 || limit >= (1u64 << 62) {
                "-".to_string()
            } else {
                human_size(limit as i64)
            };
            t.row(vec![
                id.to_string(),
                human_size(mem as i64),
                lim,
                format!("{:.3}s", cpu_ns as f64 / 1e9),
                pids.to_string(),
            ]);
            t.print();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ctr_mount_syntax() {
        let m = parse_mount("type=bind,src=/a,dst=/b,options=rbind:ro").unwrap();
        assert_eq!(
            (m.kind.as_str(), m.source.as_str(), m.destination.as_str()),
            ("bind", "/a", "/b")
        );
        assert_eq!(m.options, ["rbind", "ro"]);
        assert_eq!(
            parse_mount("src=/a,dst=/b").unwrap().options,
            ["rbind", "rw"]
        );
        assert!(parse_mount("src=/a").is_err());
        assert!(parse_mount("type=bind,bogus=1,dst=/b").is_err());
    }

    #[test]
    fn runc_options_encode_binary_name_as_field_6() {
        assert_eq!(runc_options("crun"), b"\x32\x04crun");
    }

    #[test]
    fn image_config_fields_feed_the_spec() {
        let c = image_config(
            br#"{"config":{"Entrypoint":["/bin/sh"],"Cmd":["-c","echo"],"Env":["A=1"],"WorkingDir":"/w","User":"5"}}"#,
        )
        .unwrap();
        assert_eq!(c.entrypoint, ["/bin/sh"]);
        assert_eq!(c.cmd, ["-c", "echo"]);
        assert_eq!((c.working_dir.as_str(), c.user.as_str()), ("/w", "5"));
    }
}
