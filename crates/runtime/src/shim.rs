//! Shims: launching a runtime v2 shim binary exactly as containerd 1.6 does,
//! and the `containerd.task.v2.Task` ttrpc client over its socket.
//!
//! Launch: `<shim> -namespace <ns> -address <grpc socket> -publish-binary <daemon>
//! -id <id> [-debug] start`, working directory = bundle, environment plus
//! `TTRPC_ADDRESS=<grpc socket>.ttrpc`, `GRPC_ADDRESS`, `NAMESPACE`,
//! `MAX_SHIM_VERSION=2`, runtime options (a protobuf `Any`) on stdin. The shim
//! prints its address: `unix:///...` (1.6) or JSON `{"version":2,"address":...}` (2.x).
//! Cleanup after a dead shim: the same command line with `-bundle <path> delete`,
//! which prints a protobuf `DeleteResponse`.

use crate::bundle::Bundle;
use crate::{Any, Exit, ProcessInfo, ProcessState, Status};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::{self, Message, MessageField};
use containerd_shim_protos::shim_async::TaskClient;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};
use stevedore_types::{Error, ErrorKind, Mount, Result};
use tokio::io::AsyncWriteExt;

/// ttrpc metadata key carrying the namespace (containerd's `namespaces.TTRPCHeader`).
pub const TTRPC_NAMESPACE_HEADER: &str = "containerd-namespace-ttrpc";

/// How the daemon tells shims where to reach it.
#[derive(Debug, Clone)]
pub struct ShimEnv {
    /// The daemon's gRPC socket path.
    pub grpc_address: String,
    /// The daemon's ttrpc socket path (events Forward).
    pub ttrpc_address: String,
    /// The binary shims run to publish events (`-publish-binary`).
    pub publish_binary: PathBuf,
    /// Pass `-debug` to shims.
    pub debug: bool,
}

/// The shim binary for a runtime name: a path is used as is;
/// `io.containerd.runc.v2` becomes `containerd-shim-runc-v2`, looked up in
/// `PATH` and next to the daemon's binary.
pub fn resolve_binary(runtime: &str, publish_binary: &Path) -> Result<PathBuf> {
    if runtime.contains('/') {
        let p = PathBuf::from(runtime);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::not_found(format!(
                "runtime {runtime:?}: shim binary not found"
            )))
        };
    }
    let parts: Vec<&str> = runtime.split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(Error::invalid(format!(
            "runtime {runtime:?}: invalid runtime name, expected e.g. io.containerd.runc.v2"
        )));
    }
    let name = format!(
        "containerd-shim-{}-{}",
        parts[parts.len() - 2],
        parts[parts.len() - 1]
    );
    find_binary(&name, publish_binary).ok_or_else(|| {
        Error::not_found(format!(
            "runtime {runtime:?}: binary {name} not installed on PATH (Debian: apt-get install containerd)"
        ))
    })
}

/// A shim binary named `name` next to the daemon's own binary (so a
/// daemon runs the shim it was built with) or on PATH.
pub fn find_binary(name: &str, publish_binary: &Path) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = publish_binary
        .parent()
        .map(|d| vec![d.to_path_buf()])
        .unwrap_or_default();
    if let Some(p) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&p));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn command(
    binary: &Path,
    bundle: &Bundle,
    env: &ShimEnv,
    args: &[&str],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(binary);
    cmd.args([
        "-namespace",
        &bundle.namespace,
        "-address",
        &env.grpc_address,
    ])
    .arg("-publish-binary")
    .arg(&env.publish_binary)
    .args(args)
    .current_dir(&bundle.path)
    .env("GOMAXPROCS", "2")
    .env("TTRPC_ADDRESS", &env.ttrpc_address)
    .env("GRPC_ADDRESS", &env.grpc_address)
    .env("NAMESPACE", &bundle.namespace)
    .env("MAX_SHIM_VERSION", "2")
    .process_group(0)
    .kill_on_drop(false);
    cmd
}

fn any_to_pb(a: &Any) -> protobuf::well_known_types::any::Any {
    let mut p = protobuf::well_known_types::any::Any::new();
    p.type_url = a.type_url.clone();
    p.value = a.value.clone();
    p
}

fn any_field(a: &Option<Any>) -> MessageField<protobuf::well_known_types::any::Any> {
    MessageField::from_option(a.as_ref().map(any_to_pb))
}

fn any_from_pb(a: &protobuf::well_known_types::any::Any) -> Any {
    Any {
        type_url: a.type_url.clone(),
        value: a.value.clone(),
    }
}

fn time_from_pb(
    t: &MessageField<protobuf::well_known_types::timestamp::Timestamp>,
) -> Option<SystemTime> {
    t.as_ref().map(|t| system_time(t.seconds, t.nanos))
}

/// A protobuf timestamp's seconds and nanos as a `SystemTime`, before the
/// Unix epoch too: Go shims send a running process's `exited_at` as Go's
/// zero time (year 1, seconds -62135596800), which containerd passes on and
/// Go clients read back as zero (`ExitTime.IsZero()`); clamped to the epoch
/// it would read as an exit in 1970.
pub(crate) fn system_time(seconds: i64, nanos: i32) -> SystemTime {
    let nanos = Duration::from_nanos(nanos.clamp(0, 999_999_999) as u64);
    let whole = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + whole + nanos
    } else {
        SystemTime::UNIX_EPOCH - whole + nanos
    }
}

/// Parse what `shim start` printed: a plain address or 2.x JSON.
pub fn parse_start_output(out: &str) -> Result<String> {
    let out = out.trim();
    if out.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(out)
            .map_err(|e| Error::unknown(format!("shim start printed bad JSON {out:?}: {e}")))?;
        let version = v["version"].as_u64().unwrap_or(2);
        if version != 2 {
            return Err(Error::unimplemented(format!(
                "shim speaks task API version {version}, stevedore speaks version 2"
            )));
        }
        if let Some(p) = v["protocol"].as_str() {
            if p != "ttrpc" {
                return Err(Error::unimplemented(format!(
                    "shim protocol {p:?} is not supported"
                )));
            }
        }
        return v["address"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::unknown(format!("shim start printed no address: {out:?}")));
    }
    if out.is_empty() || out.contains('\n') {
        return Err(Error::unknown(format!(
            "shim start printed no address: {out:?}"
        )));
    }
    Ok(out.to_string())
}

/// Run `<shim> ... start` and return the address it printed.
pub async fn start(
    binary: &Path,
    bundle: &Bundle,
    env: &ShimEnv,
    opts: Option<&Any>,
) -> Result<String> {
    let mut args = vec!["-id", bundle.id.as_str()];
    if env.debug {
        args.push("-debug");
    }
    args.push("start");
    let mut cmd = command(binary, bundle, env, &args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::from(e).context(format!("start shim {}", binary.display())))?;
    let stdin = opts.map(|a| any_to_pb(a).write_to_bytes().unwrap_or_default());
    if let Some(mut w) = child.stdin.take() {
        if let Some(data) = stdin {
            let _ = w.write_all(&data).await;
        }
        drop(w);
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| Error::from(e).context(format!("wait for shim {}", binary.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::unknown(format!(
            "start shim {} for task {:?}: {}: {}{}",
            binary.display(),
            bundle.id,
            out.status,
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    parse_start_output(&text)
}

/// Run `<shim> ... -bundle <path> delete` to clean up after a dead shim.
pub async fn delete(binary: &Path, bundle: &Bundle, env: &ShimEnv) -> Result<Exit> {
    let bpath = bundle.path.display().to_string();
    let mut cmd = command(
        binary,
        bundle,
        env,
        &["-id", &bundle.id, "-bundle", &bpath, "delete"],
    );
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = tokio::time::timeout(Duration::from_secs(10), cmd.output())
        .await
        .map_err(|_| {
            Error::new(
                ErrorKind::DeadlineExceeded,
                format!("shim delete of task {:?} timed out", bundle.id),
            )
        })?
        .map_err(|e| Error::from(e).context(format!("run shim {} delete", binary.display())))?;
    if !out.status.success() {
        return Err(Error::unknown(format!(
            "shim delete of task {:?}: {}: {}",
            bundle.id,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let r = api::DeleteResponse::parse_from_bytes(&out.stdout).map_err(|e| {
        Error::unknown(format!(
            "shim delete of task {:?} printed a bad response: {e}",
            bundle.id
        ))
    })?;
    Ok(Exit {
        pid: r.pid,
        status: r.exit_status,
        exited_at: time_from_pb(&r.exited_at),
    })
}

/// A connected shim: the ttrpc task client for one task's shim.
pub struct Shim {
    pub bundle: Bundle,
    pub binary: PathBuf,
    pub address: String,
    client: TaskClient,
}

fn ttrpc_err(op: &str, id: &str, e: containerd_shim_protos::ttrpc::Error) -> Error {
    use containerd_shim_protos::ttrpc::{Code, Error as TE};
    match e {
        TE::RpcStatus(s) => {
            let kind = match s.code() {
                Code::INVALID_ARGUMENT => ErrorKind::InvalidArgument,
                Code::NOT_FOUND => ErrorKind::NotFound,
                Code::ALREADY_EXISTS => ErrorKind::AlreadyExists,
                Code::FAILED_PRECONDITION => ErrorKind::FailedPrecondition,
                Code::UNAVAILABLE => ErrorKind::Unavailable,
                Code::UNIMPLEMENTED => ErrorKind::NotImplemented,
                Code::CANCELLED => ErrorKind::Canceled,
                Code::DEADLINE_EXCEEDED => ErrorKind::DeadlineExceeded,
                Code::PERMISSION_DENIED => ErrorKind::PermissionDenied,
                Code::RESOURCE_EXHAUSTED => ErrorKind::ResourceExhausted,
                Code::ABORTED => ErrorKind::Aborted,
                Code::OUT_OF_RANGE => ErrorKind::OutOfRange,
                Code::INTERNAL | Code::DATA_LOSS => ErrorKind::Internal,
                _ => ErrorKind::Unknown,
            };
            // the shim's reason (runc's, in containerd's wording) reaches the
            // client; a failed create reads as containerd's does
            let msg = if op == "create" {
                format!("failed to create shim task: {}", s.message())
            } else {
                format!("{op} task {id:?}: {}", s.message())
            };
            Error::new(kind, msg)
        }
        TE::LocalClosed | TE::RemoteClosed | TE::Eof | TE::Socket(_) => {
            Error::unavailable(format!("{op} task {id:?}: shim connection closed: {e}"))
        }
        other => Error::unknown(format!("{op} task {id:?}: {other}")),
    }
}

/// Options to create a task (the shim's CreateTaskRequest, in plain data).
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    pub rootfs: Vec<Mount>,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    pub checkpoint: String,
    pub options: Option<Any>,
}

/// Options to exec a process in a task.
#[derive(Debug, Clone, Default)]
pub struct ExecOpts {
    pub exec_id: String,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// The OCI process spec (JSON) as an `Any`.
    pub spec: Option<Any>,
}

impl Shim {
    /// Connect to a shim's ttrpc address (`unix:///path` or a path).
    pub async fn connect(bundle: Bundle, binary: PathBuf, address: &str) -> Result<Shim> {
        let addr = if address.starts_with("unix://") {
            address.to_string()
        } else {
            format!("unix://{address}")
        };
        let client = tokio::time::timeout(Duration::from_secs(5), stevedore_ttrpc::connect(&addr))
            .await
            .map_err(|_| Error::unavailable(format!("connect to shim {address}: timed out")))?
            .map_err(|e| Error::unavailable(format!("connect to shim {address}: {e}")))?;
        Ok(Shim {
            bundle,
            binary,
            address: addr,
            client: TaskClient::new(client),
        })
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.bundle.id
    }

    /// The task's namespace.
    pub fn namespace(&self) -> &str {
        &self.bundle.namespace
    }

    fn ctx(&self, timeout: Option<Duration>) -> containerd_shim_protos::ttrpc::context::Context {
        let mut c = containerd_shim_protos::ttrpc::context::Context::default();
        c.add(TTRPC_NAMESPACE_HEADER.into(), self.bundle.namespace.clone());
        if let Some(t) = timeout {
            c.timeout_nano = t.as_nanos() as i64;
        }
        c
    }

    fn short(&self) -> containerd_shim_protos::ttrpc::context::Context {
        self.ctx(Some(Duration::from_secs(30)))
    }

    /// Create the task in the shim; returns the init pid.
    pub async fn create(&self, o: &CreateOpts) -> Result<u32> {
        let mut r = api::CreateTaskRequest::new();
        r.id = self.id().into();
        r.bundle = self.bundle.path.display().to_string();
        r.rootfs = o
            .rootfs
            .iter()
            .map(|m| {
                let mut pm = api::Mount::new();
                pm.type_ = m.kind.clone();
                pm.source = m.source.clone();
                pm.target = m.target.clone();
                pm.options = m.options.clone();
                pm
            })
            .collect();
        r.terminal = o.terminal;
        r.stdin = o.stdin.clone();
        r.stdout = o.stdout.clone();
        r.stderr = o.stderr.clone();
        r.checkpoint = o.checkpoint.clone();
        r.options = any_field(&o.options);
        let resp = self
            .client
            .create(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("create", self.id(), e))?;
        Ok(resp.pid)
    }

    /// Start the init process (empty exec id) or an exec'd process.
    pub async fn start(&self, exec_id: &str) -> Result<u32> {
        let mut r = api::StartRequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        let resp = self
            .client
            .start(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("start", self.id(), e))?;
        Ok(resp.pid)
    }

    /// State of the init process or an exec'd process.
    pub async fn state(&self, exec_id: &str) -> Result<ProcessState> {
        let mut r = api::StateRequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        let s = self
            .client
            .state(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("state of", self.id(), e))?;
        use containerd_shim_protos::api::Status as S;
        let status = match s.status.enum_value_or_default() {
            S::CREATED => Status::Created,
            S::RUNNING => Status::Running,
            S::STOPPED => Status::Stopped,
            S::PAUSED => Status::Paused,
            S::PAUSING => Status::Pausing,
            _ => Status::Unknown,
        };
        Ok(ProcessState {
            id: if exec_id.is_empty() {
                self.id().to_string()
            } else {
                exec_id.to_string()
            },
            pid: s.pid,
            status,
            stdin: s.stdin,
            stdout: s.stdout,
            stderr: s.stderr,
            terminal: s.terminal,
            exit_status: s.exit_status,
            exited_at: time_from_pb(&s.exited_at),
        })
    }

    /// Delete the init process (empty exec id) or an exec'd process.
    pub async fn delete_process(&self, exec_id: &str) -> Result<Exit> {
        let mut r = api::DeleteRequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        let d = self
            .client
            .delete(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("delete", self.id(), e))?;
        Ok(Exit {
            pid: d.pid,
            status: d.exit_status,
            exited_at: time_from_pb(&d.exited_at),
        })
    }

    /// Signal a process (all processes of the task when `all`).
    pub async fn kill(&self, exec_id: &str, signal: u32, all: bool) -> Result<()> {
        let mut r = api::KillRequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        r.signal = signal;
        r.all = all;
        self.client
            .kill(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("kill", self.id(), e))?;
        Ok(())
    }

    /// Add a process to the task (start it with `start(exec_id)`).
    pub async fn exec(&self, o: &ExecOpts) -> Result<()> {
        crate::bundle::validate_id("exec id", &o.exec_id)?;
        let mut r = api::ExecProcessRequest::new();
        r.id = self.id().into();
        r.exec_id = o.exec_id.clone();
        r.terminal = o.terminal;
        r.stdin = o.stdin.clone();
        r.stdout = o.stdout.clone();
        r.stderr = o.stderr.clone();
        r.spec = any_field(&o.spec);
        self.client
            .exec(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("exec in", self.id(), e))?;
        Ok(())
    }

    /// Resize a process's terminal.
    pub async fn resize_pty(&self, exec_id: &str, width: u32, height: u32) -> Result<()> {
        let mut r = api::ResizePtyRequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        r.width = width;
        r.height = height;
        self.client
            .resize_pty(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("resize pty of", self.id(), e))?;
        Ok(())
    }

    /// Close a process's stdin.
    pub async fn close_io(&self, exec_id: &str, stdin: bool) -> Result<()> {
        let mut r = api::CloseIORequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        r.stdin = stdin;
        self.client
            .close_io(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("close io of", self.id(), e))?;
        Ok(())
    }

    /// Freeze the task.
    pub async fn pause(&self) -> Result<()> {
        let mut r = api::PauseRequest::new();
        r.id = self.id().into();
        self.client
            .pause(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("pause", self.id(), e))?;
        Ok(())
    }

    /// Thaw the task.
    pub async fn resume(&self) -> Result<()> {
        let mut r = api::ResumeRequest::new();
        r.id = self.id().into();
        self.client
            .resume(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("resume", self.id(), e))?;
        Ok(())
    }

    /// The task's processes.
    pub async fn pids(&self) -> Result<Vec<ProcessInfo>> {
        let mut r = api::PidsRequest::new();
        r.id = self.id().into();
        let resp = self
            .client
            .pids(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("list pids of", self.id(), e))?;
        Ok(resp
            .processes
            .iter()
            .map(|p| ProcessInfo {
                pid: p.pid,
                info: p.info.as_ref().map(any_from_pb),
            })
            .collect())
    }

    /// Update the task's resources (an `Any` of the OCI LinuxResources JSON).
    pub async fn update(
        &self,
        resources: Option<Any>,
        annotations: HashMap<String, String>,
    ) -> Result<()> {
        let mut r = api::UpdateTaskRequest::new();
        r.id = self.id().into();
        r.resources = any_field(&resources);
        r.annotations = annotations;
        self.client
            .update(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("update", self.id(), e))?;
        Ok(())
    }

    /// Wait for a process to exit (no timeout).
    pub async fn wait(&self, exec_id: &str) -> Result<Exit> {
        let mut r = api::WaitRequest::new();
        r.id = self.id().into();
        r.exec_id = exec_id.into();
        let w = self
            .client
            .wait(self.ctx(None), &r)
            .await
            .map_err(|e| ttrpc_err("wait for", self.id(), e))?;
        Ok(Exit {
            pid: 0,
            status: w.exit_status,
            exited_at: time_from_pb(&w.exited_at),
        })
    }

    /// The task's resource usage (cgroup metrics as an `Any`).
    pub async fn stats(&self) -> Result<Option<Any>> {
        let mut r = api::StatsRequest::new();
        r.id = self.id().into();
        let s = self
            .client
            .stats(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("stats of", self.id(), e))?;
        Ok(s.stats.as_ref().map(any_from_pb))
    }

    /// Checkpoint the task to `path`.
    pub async fn checkpoint(&self, path: &str, options: Option<Any>) -> Result<()> {
        let mut r = api::CheckpointTaskRequest::new();
        r.id = self.id().into();
        r.path = path.into();
        r.options = any_field(&options);
        self.client
            .checkpoint(self.short(), &r)
            .await
            .map_err(|e| ttrpc_err("checkpoint", self.id(), e))?;
        Ok(())
    }

    /// The shim's and the task's pids.
    pub async fn connect_info(&self) -> Result<(u32, u32)> {
        let mut r = api::ConnectRequest::new();
        r.id = self.id().into();
        let c = self
            .client
            .connect(self.ctx(Some(Duration::from_secs(5))), &r)
            .await
            .map_err(|e| ttrpc_err("connect to", self.id(), e))?;
        Ok((c.shim_pid, c.task_pid))
    }

    /// Ask the shim to exit (it does once it has no tasks left).
    pub async fn shutdown(&self) -> Result<()> {
        let mut r = api::ShutdownRequest::new();
        r.id = self.id().into();
        match self
            .client
            .shutdown(self.ctx(Some(Duration::from_secs(3))), &r)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let e = ttrpc_err("shut down shim of", self.id(), e);
                // the shim exiting closes the connection before it answers
                if e.kind == ErrorKind::Unavailable {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_timestamps_before_the_epoch_such_as_go_zero_time() {
        let go_zero = protobuf::well_known_types::timestamp::Timestamp {
            seconds: -62_135_596_800,
            ..Default::default()
        };
        let t = time_from_pb(&MessageField::some(go_zero)).unwrap();
        assert_eq!(
            SystemTime::UNIX_EPOCH.duration_since(t).unwrap(),
            Duration::from_secs(62_135_596_800)
        );
        assert_eq!(
            system_time(1_700_000_000, 5),
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5)
        );
        assert_eq!(
            system_time(-1, 500_000_000),
            SystemTime::UNIX_EPOCH - Duration::from_millis(500)
        );
        assert!(time_from_pb(&MessageField::none()).is_none());
    }

    #[test]
    fn parses_shim_start_output_of_both_versions() {
        assert_eq!(
            parse_start_output("unix:///run/containerd/s/abc\n").unwrap(),
            "unix:///run/containerd/s/abc"
        );
        assert_eq!(
            parse_start_output(r#"{"version":2,"address":"unix:///x","protocol":"ttrpc"}"#)
                .unwrap(),
            "unix:///x"
        );
        assert!(parse_start_output(r#"{"version":3,"address":"unix:///x"}"#).is_err());
        assert!(parse_start_output("").is_err());
    }

    #[test]
    fn resolves_shim_binary_from_runtime_name() {
        let e = resolve_binary(
            "io.containerd.nosuch.v9",
            Path::new("/nonexistent/stevedored"),
        )
        .unwrap_err();
        assert!(e.message.contains("containerd-shim-nosuch-v9"), "{e}");
        assert_eq!(
            resolve_binary("runc", Path::new("/x")).unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
        if let Ok(p) = resolve_binary("io.containerd.runc.v2", Path::new("/x")) {
            assert!(p.ends_with("containerd-shim-runc-v2"));
        }
    }
}
