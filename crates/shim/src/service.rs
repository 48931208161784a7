//! The `containerd.task.v2.Task` ttrpc service over the shim's tasks (one,
//! or a group such as a pod's containers, `Group`): containerd's
//! runc shim semantics (`runtime/v2/runc/task/service.go`, `pkg/process`)
//! on the processes of `process.rs`, runc through `runc.rs`, metrics from
//! `cgroups.rs`, events through `events.rs`.
//!
//! Every request's task id and exec id is checked with containerd's
//! identifier rule before it is used, and an exec id becomes at most one
//! path component of the bundle (`<exec id>.pid`, `<exec id>.process.json`).

use crate::cgroups::{self, Sources};
use crate::error::{Error, Result};
use crate::events::{ts, Publisher};
use crate::options::RuncOptions;
use crate::process::{self, Io, Kind, Process, Status};
use crate::runc::{self, Runc};
use containerd_shim_protos::api::*;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, asynchronous::TtrpcContext};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use stevedore_types::identifiers;

/// containerd's `ShouldKillAllOnExit`: a container without its own PID
/// namespace leaves processes behind when its init exits; they are killed.
pub fn should_kill_all_on_exit(bundle: &Path) -> bool {
    let Ok(b) = std::fs::read(bundle.join("config.json")) else {
        return true;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) else {
        return true;
    };
    let own_pid_ns = v["linux"]["namespaces"].as_array().is_some_and(|nss| {
        nss.iter()
            .any(|ns| ns["type"] == "pid" && ns["path"].as_str().unwrap_or("").is_empty())
    });
    !own_pid_ns
}

/// One task's state in the shim.
pub struct Shim {
    pub namespace: String,
    pub id: String,
    pub bundle: PathBuf,
    runc: Mutex<Runc>,
    procs: Mutex<HashMap<String, Arc<Process>>>,
    /// The shim's one publisher (all its tasks' events, in order).
    pub events: Arc<Publisher>,
    /// Held from `runc start`/`exec` to the start event, and while an exit
    /// is recorded and published: an exit event never precedes its start.
    lifecycle: tokio::sync::Mutex<()>,
    cgroups: Sources,
}

fn blocking_err(e: tokio::task::JoinError) -> Error {
    Error::Internal(format!("blocking task failed: {e}"))
}

impl Shim {
    /// The shim of task `id` in `namespace` with its bundle.
    pub fn new(namespace: &str, id: &str, bundle: &Path, events: Arc<Publisher>) -> Shim {
        Shim {
            namespace: namespace.to_string(),
            id: id.to_string(),
            bundle: bundle.to_path_buf(),
            runc: Mutex::new(Runc::recorded(namespace, bundle)),
            procs: Mutex::new(HashMap::new()),
            events,
            lifecycle: tokio::sync::Mutex::new(()),
            cgroups: Sources::default(),
        }
    }

    fn runc(&self) -> Runc {
        self.runc.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Check a request's ids: both valid identifiers, the task this shim's.
    fn check(&self, id: &str, exec_id: &str) -> Result<()> {
        identifiers::validate(id)?;
        if !exec_id.is_empty() {
            identifiers::validate(exec_id)?;
        }
        if id != self.id {
            return Err(Error::NotFound(format!(
                "container {id:?} not created: not found"
            )));
        }
        Ok(())
    }

    fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if let Some(p) = self.procs().get(exec_id) {
            return Ok(p.clone());
        }
        Err(if exec_id.is_empty() {
            // containerd's shim has no container before Create or after the
            // init's Delete (it drops it from its map): NotFound, which
            // callers racing an exit (the CRI's StopContainer) ignore
            Error::NotFound(format!("container {:?} not created: not found", self.id))
        } else {
            Error::NotFound(format!("process does not exist {exec_id}: not found"))
        })
    }

    fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    async fn create(self: &Arc<Self>, r: CreateTaskRequest) -> Result<CreateTaskResponse> {
        crate::log::since_born("create received");
        // a second Create of the id is refused by the group (Group::create)
        self.check(&r.id, "")?;
        let opts = match r.options.as_ref() {
            Some(a) => RuncOptions::from_any(a)?,
            None => RuncOptions::default(),
        };
        if opts.binary_name.is_some() || opts.root.is_some() {
            *self.runc.lock().unwrap_or_else(|p| p.into_inner()) =
                Runc::choose(&opts, &self.namespace, &self.bundle)?;
        }
        let runc = self.runc();
        let io = Io {
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
            namespace: self.namespace.clone(),
            process_id: r.id.clone(),
        };
        let mounts: Vec<stevedore_types::Mount> = r
            .rootfs
            .iter()
            .map(|m| stevedore_types::Mount {
                kind: m.type_.clone(),
                source: m.source.clone(),
                target: String::new(),
                options: m.options.to_vec(),
            })
            .collect();
        let (bundle, id, rootfs, io2) = (
            self.bundle.clone(),
            self.id.clone(),
            self.rootfs(),
            io.clone(),
        );
        let launched = tokio::task::spawn_blocking(move || {
            crate::log::since_born("create on its thread");
            let t0 = std::time::Instant::now();
            for m in &mounts {
                if let Err(e) = stevedore_sys::mount::mount(m, &rootfs) {
                    let _ = stevedore_sys::mount::unmount_all(&rootfs);
                    return Err(Error::from(e));
                }
            }
            crate::log::timed(|| format!("mount rootfs ({} mounts)", mounts.len()), t0);
            let pidfile = bundle.join("init.pid");
            let r = process::launch(
                &runc,
                Kind::Init {
                    id: &id,
                    bundle: &bundle,
                },
                &io2,
                &pidfile,
            );
            if r.is_err() {
                let _ = stevedore_sys::mount::unmount_all(&rootfs);
            }
            r
        })
        .await
        .map_err(blocking_err)??;
        let pid = launched.pid;
        let p = Arc::new(Process::new("", io, Vec::new()));
        let exit = p.launched(launched);
        self.procs().insert(String::new(), p.clone());
        self.reap(p, exit);
        self.watch_oom();
        let mut ev = TaskCreate::new();
        ev.container_id = r.id.clone();
        ev.bundle = r.bundle.clone();
        ev.rootfs = r.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = r.stdin;
        tio.stdout = r.stdout;
        tio.stderr = r.stderr;
        tio.terminal = r.terminal;
        ev.io = Some(tio).into();
        ev.pid = pid;
        self.events.publish("/tasks/create", &ev).await;
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn start(self: &Arc<Self>, r: StartRequest) -> Result<StartResponse> {
        self.check(&r.id, &r.exec_id)?;
        let _order = self.lifecycle.lock().await;
        let p = self.process(&r.exec_id)?;
        match p.state().status {
            Status::Created => {}
            Status::Running => {
                return Err(Error::FailedPrecondition(
                    "cannot start a running process: failed precondition".into(),
                ))
            }
            Status::Paused => {
                return Err(Error::FailedPrecondition(
                    "cannot start a paused process: failed precondition".into(),
                ))
            }
            Status::Stopped => {
                return Err(Error::FailedPrecondition(
                    "cannot start a stopped process: failed precondition".into(),
                ))
            }
        }
        let runc = self.runc();
        let id = self.id.clone();
        if r.exec_id.is_empty() {
            let init = p.clone();
            tokio::task::spawn_blocking(move || {
                // runc's `start` is a read of the FIFO its init waits on:
                // done here, one runc start-up is saved (execfifo.rs)
                if runc.is_runc() {
                    let t0 = std::time::Instant::now();
                    let gone = || init.state().status == Status::Stopped;
                    match crate::execfifo::start(&runc.root, &id, gone) {
                        Ok(true) => {
                            crate::log::timed(|| format!("start {id} through exec.fifo"), t0);
                            return Ok(());
                        }
                        Ok(false) => {}
                        Err(e) => crate::log::warn(&format!(
                            "start {id} through exec.fifo: {e}; running runc start"
                        )),
                    }
                }
                runc.run(&["start", &id], None)
                    .map(|_| ())
                    .map_err(|f| runc.runtime_error(f, "OCI runtime start failed"))
            })
            .await
            .map_err(blocking_err)??;
            let pid = {
                let mut s = p.state();
                // a fast process may already have exited (and been reaped)
                if s.status == Status::Created {
                    s.status = Status::Running;
                }
                s.pid
            };
            let mut ev = TaskStart::new();
            ev.container_id = self.id.clone();
            ev.pid = pid;
            self.events.publish("/tasks/start", &ev).await;
            let mut resp = StartResponse::new();
            resp.pid = pid;
            return Ok(resp);
        }
        // Exec: the one launch path, with the process spec in the bundle
        let mut spec: serde_json::Value = serde_json::from_slice(&p.spec).map_err(|e| {
            Error::InvalidArgument(format!("exec {}: process spec: {e}", r.exec_id))
        })?;
        spec["terminal"] = serde_json::Value::Bool(p.io.terminal);
        let spec_path = self.bundle.join(format!("{}.process.json", r.exec_id));
        let pidfile = self.bundle.join(format!("{}.pid", r.exec_id));
        let io = p.io.clone();
        let launched = tokio::task::spawn_blocking(move || {
            let bytes = serde_json::to_vec(&spec)
                .map_err(|e| Error::Internal(format!("encode process spec: {e}")))?;
            std::fs::write(&spec_path, bytes)
                .map_err(|e| Error::io(format!("write {}", spec_path.display()), e))?;
            let r = process::launch(
                &runc,
                Kind::Exec {
                    id: &id,
                    spec: &spec_path,
                },
                &io,
                &pidfile,
            );
            let _ = std::fs::remove_file(&spec_path);
            r
        })
        .await
        .map_err(blocking_err)?;
        let launched = match launched {
            Ok(l) => l,
            Err(e) => {
                // containerd: the process stays created; its waiters return
                p.release_waiters();
                return Err(e);
            }
        };
        let pid = launched.pid;
        let exit = p.launched(launched);
        {
            let mut s = p.state();
            if s.status == Status::Created {
                s.status = Status::Running;
            }
        }
        self.reap(p, exit);
        let mut ev = TaskExecStarted::new();
        ev.container_id = self.id.clone();
        ev.exec_id = r.exec_id.clone();
        ev.pid = pid;
        self.events.publish("/tasks/exec-started", &ev).await;
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    async fn delete(&self, r: DeleteRequest) -> Result<DeleteResponse> {
        self.check(&r.id, &r.exec_id)?;
        let p = self.process(&r.exec_id)?;
        let (pid, status, exit) = {
            let s = p.state();
            (s.pid, s.status, s.exit)
        };
        if matches!(status, Status::Running | Status::Paused) {
            return Err(Error::FailedPrecondition(format!(
                "cannot delete a {} process: failed precondition",
                if status == Status::Paused {
                    "paused"
                } else {
                    "running"
                }
            )));
        }
        if r.exec_id.is_empty() {
            let (runc, id, rootfs) = (self.runc(), self.id.clone(), self.rootfs());
            let stopped = status == Status::Stopped;
            tokio::task::spawn_blocking(move || {
                // what runc delete does for a stopped container, done here
                // when that is all it takes (destroy.rs)
                if stopped && runc.is_runc() {
                    let t0 = std::time::Instant::now();
                    match crate::destroy::delete_stopped(&runc.root, &id) {
                        Ok(true) => {
                            crate::log::timed(|| format!("delete {id} without runc"), t0);
                            let _ = stevedore_sys::mount::unmount_all(&rootfs);
                            return Ok(());
                        }
                        Ok(false) => {}
                        Err(e) => crate::log::warn(&format!(
                            "delete {id} without runc: {e}; running runc delete"
                        )),
                    }
                }
                let r = match runc.run(&["delete", &id], None) {
                    // runc already forgot it (deleted behind our back): fine
                    Err(f) if !f.to_string().contains("does not exist") => {
                        Err(runc.runtime_error(f, "failed to delete task"))
                    }
                    _ => Ok(()),
                };
                let _ = stevedore_sys::mount::unmount_all(&rootfs);
                r
            })
            .await
            .map_err(blocking_err)??;
            let all: Vec<Arc<Process>> = self.procs().drain().map(|(_, p)| p).collect();
            for q in all {
                q.close_stdin();
                q.release_waiters();
                q.finish_logger();
            }
            let mut ev = TaskDelete::new();
            ev.container_id = self.id.clone();
            ev.pid = pid;
            ev.exit_status = exit.map(|e| e.0).unwrap_or(0);
            ev.exited_at = exit.map(|e| ts(e.1)).into();
            ev.id = self.id.clone();
            self.events.publish("/tasks/delete", &ev).await;
        } else {
            self.procs().remove(&r.exec_id);
            p.close_stdin();
            p.release_waiters();
            p.finish_logger();
            let _ = std::fs::remove_file(self.bundle.join(format!("{}.pid", r.exec_id)));
        }
        let mut resp = DeleteResponse::new();
        resp.pid = pid;
        // a process that never ran exited with 0, as in containerd
        resp.exit_status = exit.map(|e| e.0).unwrap_or(0);
        resp.exited_at = exit.map(|e| ts(e.1)).into();
        Ok(resp)
    }

    async fn kill(&self, r: KillRequest) -> Result<()> {
        self.check(&r.id, &r.exec_id)?;
        let p = self.process(&r.exec_id)?;
        if r.exec_id.is_empty() {
            let (runc, id) = (self.runc(), self.id.clone());
            let (sig, all) = (r.signal.to_string(), r.all);
            return tokio::task::spawn_blocking(move || {
                let mut args = vec!["kill"];
                if all {
                    args.push("--all");
                }
                args.extend([id.as_str(), sig.as_str()]);
                runc.run(&args, None).map(|_| ()).map_err(runc::kill_error)
            })
            .await
            .map_err(blocking_err)?;
        }
        let (pid, exited) = {
            let s = p.state();
            (s.pid, s.exit.is_some())
        };
        if pid == 0 {
            return Err(Error::FailedPrecondition(
                "process not created: failed precondition".into(),
            ));
        }
        if exited {
            return Err(Error::NotFound(
                "process already finished: not found".into(),
            ));
        }
        let sig = rustix::process::Signal::from_named_raw(r.signal as i32)
            .ok_or_else(|| Error::InvalidArgument(format!("invalid signal {}", r.signal)))?;
        let pid = rustix::process::Pid::from_raw(pid as i32)
            .ok_or_else(|| Error::Internal(format!("bad pid {pid}")))?;
        match rustix::process::kill_process(pid, sig) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::SRCH) => Err(Error::NotFound(
                "exec kill error: process already finished: not found".into(),
            )),
            Err(e) => Err(Error::io("exec kill error", e)),
        }
    }

    async fn exec(&self, r: ExecProcessRequest) -> Result<()> {
        self.check(&r.id, &r.exec_id)?;
        if r.exec_id.is_empty() {
            return Err(Error::InvalidArgument("exec id must not be empty".into()));
        }
        let init = self.process("")?;
        if init.state().status == Status::Stopped {
            return Err(Error::FailedPrecondition(
                "cannot exec in a stopped state: failed precondition".into(),
            ));
        }
        let spec = r.spec.as_ref().map(|a| a.value.clone()).unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&spec).map_err(|e| {
            Error::InvalidArgument(format!("exec {}: process spec: {e}", r.exec_id))
        })?;
        let io = Io {
            stdin: r.stdin.clone(),
            stdout: r.stdout.clone(),
            stderr: r.stderr.clone(),
            terminal: r.terminal,
            namespace: self.namespace.clone(),
            process_id: r.exec_id.clone(),
        };
        {
            let mut procs = self.procs();
            if procs.contains_key(&r.exec_id) {
                return Err(Error::AlreadyExists(format!(
                    "id {}: already exists",
                    r.exec_id
                )));
            }
            procs.insert(
                r.exec_id.clone(),
                Arc::new(Process::new(&r.exec_id, io, spec)),
            );
        }
        let mut ev = TaskExecAdded::new();
        ev.container_id = self.id.clone();
        ev.exec_id = r.exec_id;
        self.events.publish("/tasks/exec-added", &ev).await;
        Ok(())
    }

    fn state(&self, r: StateRequest) -> Result<StateResponse> {
        self.check(&r.id, &r.exec_id)?;
        let p = self.process(&r.exec_id)?;
        let s = p.state();
        let mut out = StateResponse::new();
        out.id = if r.exec_id.is_empty() {
            self.id.clone()
        } else {
            r.exec_id.clone()
        };
        out.bundle = self.bundle.display().to_string();
        out.pid = s.pid;
        // an exec reports its container's pause
        let status = match self.procs().get("") {
            Some(init) if !r.exec_id.is_empty() && init.state().status == Status::Paused => {
                Status::Paused
            }
            _ => s.status,
        };
        out.status = match status {
            Status::Created => containerd_shim_protos::api::Status::CREATED,
            Status::Running => containerd_shim_protos::api::Status::RUNNING,
            Status::Paused => containerd_shim_protos::api::Status::PAUSED,
            Status::Stopped => containerd_shim_protos::api::Status::STOPPED,
        }
        .into();
        out.stdin = p.io.stdin.clone();
        out.stdout = p.io.stdout.clone();
        out.stderr = p.io.stderr.clone();
        out.terminal = p.io.terminal;
        if let Some((code, at)) = s.exit {
            out.exit_status = code;
            out.exited_at = Some(ts(at)).into();
        }
        out.exec_id = r.exec_id;
        Ok(out)
    }

    async fn pids(&self, r: PidsRequest) -> Result<PidsResponse> {
        self.check(&r.id, "")?;
        let (runc, id) = (self.runc(), self.id.clone());
        let out = tokio::task::spawn_blocking(move || {
            runc.run(&["ps", "--format", "json", &id], None)
                .map_err(|f| Error::Runtime(f.to_string()))
        })
        .await
        .map_err(blocking_err)??;
        let pids: Vec<u32> = serde_json::from_slice(&out)
            .map_err(|e| Error::Internal(format!("runc ps printed bad JSON: {e}")))?;
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

    async fn pause_resume(&self, id: &str, pause: bool) -> Result<()> {
        self.check(id, "")?;
        let init = self.process("")?;
        // containerd's init state machine (pkg/process/init_state.go)
        let refused = match (init.state().status, pause) {
            (Status::Created, true) => Some("cannot pause task in created state"),
            (Status::Created, false) => Some("cannot resume task in created state"),
            (Status::Paused, true) => Some("cannot pause a paused container"),
            (Status::Running, false) => Some("cannot resume a running process"),
            (Status::Stopped, true) => Some("cannot pause a stopped container"),
            (Status::Stopped, false) => Some("cannot resume a stopped container"),
            _ => None,
        };
        if let Some(why) = refused {
            return Err(Error::FailedPrecondition(format!(
                "{why}: failed precondition"
            )));
        }
        let (runc, i) = (self.runc(), self.id.clone());
        let (verb, what) = if pause {
            ("pause", "OCI runtime pause failed")
        } else {
            ("resume", "OCI runtime resume failed")
        };
        tokio::task::spawn_blocking(move || {
            runc.run(&[verb, &i], None)
                .map(|_| ())
                .map_err(|f| runc.runtime_error(f, what))
        })
        .await
        .map_err(blocking_err)??;
        init.state().status = if pause {
            Status::Paused
        } else {
            Status::Running
        };
        if pause {
            let mut ev = TaskPaused::new();
            ev.container_id = self.id.clone();
            self.events.publish("/tasks/paused", &ev).await;
        } else {
            let mut ev = TaskResumed::new();
            ev.container_id = self.id.clone();
            self.events.publish("/tasks/resumed", &ev).await;
        }
        Ok(())
    }

    async fn update(&self, r: UpdateTaskRequest) -> Result<()> {
        self.check(&r.id, "")?;
        self.process("")?;
        let data = r
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        serde_json::from_slice::<serde_json::Value>(&data)
            .map_err(|e| Error::InvalidArgument(format!("resources: {e}")))?;
        let (runc, id) = (self.runc(), self.id.clone());
        tokio::task::spawn_blocking(move || {
            runc.run(&["update", "--resources", "-", &id], Some(&data))
                .map(|_| ())
                .map_err(|f| Error::Runtime(f.to_string()))
        })
        .await
        .map_err(blocking_err)?
    }

    async fn wait(&self, r: WaitRequest) -> Result<WaitResponse> {
        self.check(&r.id, &r.exec_id)?;
        let p = self.process(&r.exec_id)?;
        p.wait().await;
        let mut resp = WaitResponse::new();
        if let Some((code, at)) = p.state().exit {
            resp.exit_status = code;
            resp.exited_at = Some(ts(at)).into();
        }
        Ok(resp)
    }

    async fn stats(&self, r: StatsRequest) -> Result<StatsResponse> {
        self.check(&r.id, "")?;
        self.process("")?;
        let cg = cgroups::cgroups_path(&self.bundle)
            .ok_or_else(|| Error::NotFound("cgroup does not exist: not found".into()))?;
        let src = self.cgroups.clone();
        let (url, value) = tokio::task::spawn_blocking(move || cgroups::metrics(&src, &cg))
            .await
            .map_err(blocking_err)??;
        let mut a = Any::new();
        a.type_url = url.into();
        a.value = value;
        let mut resp = StatsResponse::new();
        resp.stats = Some(a).into();
        Ok(resp)
    }

    /// Wait for a launched process on a thread (the reaper delivers its
    /// exit); kill what a host-PID container's init leaves behind (the
    /// reaper reaps them); record and publish the exit.
    fn reap(self: &Arc<Self>, p: Arc<Process>, mut exit: crate::reaper::Exit) {
        let me = self.clone();
        let pid = exit.pid();
        let handle = tokio::runtime::Handle::current();
        let spawned = std::thread::Builder::new()
            .name("reap".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let status = crate::reaper::exit_code(exit.wait());
                let at = SystemTime::now();
                if p.exec_id.is_empty() && should_kill_all_on_exit(&me.bundle) {
                    let runc = me.runc();
                    if let Err(f) = runc.run(&["kill", "--all", &me.id, "9"], None) {
                        crate::log::warn(&format!(
                            "failed to kill init's children of {}: {f}",
                            me.id
                        ));
                    }
                }
                handle.block_on(async {
                    let _order = me.lifecycle.lock().await;
                    p.set_exited(status, at);
                    let mut ev = TaskExit::new();
                    ev.container_id = me.id.clone();
                    ev.id = if p.exec_id.is_empty() {
                        me.id.clone()
                    } else {
                        p.exec_id.clone()
                    };
                    ev.pid = pid;
                    ev.exit_status = status;
                    ev.exited_at = Some(ts(at)).into();
                    me.events.publish("/tasks/exit", &ev).await;
                });
            });
        if let Err(e) = spawned {
            crate::log::warn(&format!("cannot wait for pid {pid}: {e}"));
        }
    }

    fn watch_oom(self: &Arc<Self>) {
        if self.cgroups.unified() {
            return;
        }
        let Some(cg) = cgroups::cgroups_path(&self.bundle) else {
            return;
        };
        let me = self.clone();
        let handle = tokio::runtime::Handle::current();
        cgroups::watch_oom_v1(&self.cgroups, &cg, move || {
            let mut ev = TaskOOM::new();
            ev.container_id = me.id.clone();
            handle.block_on(me.events.publish("/tasks/oom", &ev));
        });
    }
}

/// The tasks one shim process serves, by id: one task, or a group of them
/// (a pod's containers), as containerd's runc shim serves every container
/// whose bundle names the same group (`actions::grouping`).
pub struct Group {
    namespace: String,
    tasks: Mutex<HashMap<String, Arc<Shim>>>,
    pub events: Arc<Publisher>,
    /// Notified when Shutdown lets the shim exit (no task left).
    pub shutdown: tokio::sync::Notify,
    /// Held shared by each Create while it runs, exclusively by Connect and
    /// Shutdown: they answer about created tasks, never half-created ones
    /// (containerd's shim holds its lock across Create for the same end).
    gate: tokio::sync::RwLock<()>,
    /// Shutdown let the shim go: a Create read later from a connection (a
    /// killed daemon's request still queued) is refused.
    closing: AtomicBool,
}

impl Group {
    pub fn new(namespace: &str) -> Group {
        Group {
            namespace: namespace.to_string(),
            tasks: Mutex::new(HashMap::new()),
            events: Arc::new(Publisher::from_env(namespace)),
            shutdown: tokio::sync::Notify::new(),
            gate: tokio::sync::RwLock::new(()),
            closing: AtomicBool::new(false),
        }
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Shim>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task `id` (a valid identifier) this shim serves.
    fn task(&self, id: &str) -> Result<Arc<Shim>> {
        identifiers::validate(id)?;
        self.tasks()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not created: not found")))
    }

    /// Create a task: it joins the group while its Create runs (requests
    /// for it meanwhile find no process yet) and leaves it if Create fails.
    async fn create(&self, r: CreateTaskRequest) -> Result<CreateTaskResponse> {
        let _creating = self.gate.read().await;
        identifiers::validate(&r.id)?;
        if self.closing.load(Ordering::SeqCst) {
            return Err(Error::FailedPrecondition(format!(
                "task {:?}: the shim is shutting down",
                r.id
            )));
        }
        let bundle = PathBuf::from(&r.bundle);
        if !bundle.is_absolute() {
            return Err(Error::InvalidArgument(format!(
                "task {:?}: bundle {:?} is not an absolute path",
                r.id, r.bundle
            )));
        }
        let shim = {
            let mut tasks = self.tasks();
            if tasks.contains_key(&r.id) {
                return Err(Error::AlreadyExists(format!(
                    "task {:?}: already exists",
                    r.id
                )));
            }
            let shim = Arc::new(Shim::new(
                &self.namespace,
                &r.id,
                &bundle,
                self.events.clone(),
            ));
            tasks.insert(r.id.clone(), shim.clone());
            shim
        };
        let id = r.id.clone();
        let created = shim.create(r).await;
        if created.is_err() {
            self.leave(&id, &shim);
        }
        created
    }

    /// A task leaves the group (its init was deleted, or Create failed).
    fn leave(&self, id: &str, shim: &Arc<Shim>) {
        let mut tasks = self.tasks();
        if tasks.get(id).is_some_and(|s| Arc::ptr_eq(s, shim)) {
            tasks.remove(id);
        }
    }
}

/// The ttrpc service: each call finds its task, runs, and maps its error
/// once.
pub struct Service(pub Arc<Group>);

/// Run a call that changes a task on a task of its own: a request whose
/// connection went away (a killed daemon's) is dropped by the ttrpc server,
/// and the change must still complete or undo itself, as a Go shim's
/// handler runs to its end (a Create cut short left its task half-made in
/// the group, and the shim never exited).
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| Error::Internal(format!("task call failed: {e}")))?
}

#[async_trait::async_trait]
impl Task for Service {
    async fn state(&self, _: &TtrpcContext, r: StateRequest) -> ttrpc::Result<StateResponse> {
        Ok(self.0.task(&r.id)?.state(r)?)
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        r: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let group = self.0.clone();
        Ok(detached(async move { group.create(r).await }).await?)
    }

    async fn start(&self, _: &TtrpcContext, r: StartRequest) -> ttrpc::Result<StartResponse> {
        let task = self.0.task(&r.id)?;
        Ok(detached(async move { task.start(r).await }).await?)
    }

    async fn delete(&self, _: &TtrpcContext, r: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let task = self.0.task(&r.id)?;
        let group = self.0.clone();
        Ok(detached(async move {
            let init = r.exec_id.is_empty();
            let id = r.id.clone();
            let resp = task.delete(r).await?;
            if init {
                group.leave(&id, &task);
            }
            Ok(resp)
        })
        .await?)
    }

    async fn pids(&self, _: &TtrpcContext, r: PidsRequest) -> ttrpc::Result<PidsResponse> {
        Ok(self.0.task(&r.id)?.pids(r).await?)
    }

    async fn pause(&self, _: &TtrpcContext, r: PauseRequest) -> ttrpc::Result<Empty> {
        self.0.task(&r.id)?.pause_resume(&r.id, true).await?;
        Ok(Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, r: ResumeRequest) -> ttrpc::Result<Empty> {
        self.0.task(&r.id)?.pause_resume(&r.id, false).await?;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, r: KillRequest) -> ttrpc::Result<Empty> {
        self.0.task(&r.id)?.kill(r).await?;
        Ok(Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, r: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let task = self.0.task(&r.id)?;
        detached(async move { task.exec(r).await }).await?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, r: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let task = self.0.task(&r.id)?;
        task.check(&r.id, &r.exec_id)?;
        let p = task.process(&r.exec_id)?;
        let console = p.state().console.clone();
        // containerd: a process without a terminal resizes as a no-op
        if let Some(m) = console {
            crate::console::resize(&m, r.width, r.height)?;
        }
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, r: CloseIORequest) -> ttrpc::Result<Empty> {
        let task = self.0.task(&r.id)?;
        task.check(&r.id, &r.exec_id)?;
        // containerd closes the shim's stdin whatever the request's flag says
        task.process(&r.exec_id)?.close_stdin();
        Ok(Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, r: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        self.0.task(&r.id)?.update(r).await?;
        Ok(Empty::new())
    }

    async fn wait(&self, _: &TtrpcContext, r: WaitRequest) -> ttrpc::Result<WaitResponse> {
        Ok(self.0.task(&r.id)?.wait(r).await?)
    }

    async fn stats(&self, _: &TtrpcContext, r: StatsRequest) -> ttrpc::Result<StatsResponse> {
        Ok(self.0.task(&r.id)?.stats(r).await?)
    }

    async fn connect(&self, _: &TtrpcContext, r: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        // containerd's shim answers for any id, task pid 0 without the task:
        // how a restarted daemon tells a shim whose Create never came
        identifiers::validate(&r.id).map_err(Error::from)?;
        let _no_create = self.0.gate.write().await;
        let task = self.0.tasks().get(&r.id).cloned();
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = task
            .and_then(|t| t.procs().get("").map(|p| p.state().pid))
            .unwrap_or(0);
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        // containerd's shim stays while it serves a task (created, not
        // deleted), of its group too; a Create under way finishes first
        let _no_create = self.0.gate.write().await;
        if self.0.tasks().is_empty() {
            self.0.closing.store(true, Ordering::SeqCst);
            self.0.shutdown.notify_one();
        }
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_private_pid_namespace_spares_the_init_children() {
        let dir = tempfile::tempdir().unwrap();
        let write = |v: serde_json::Value| {
            std::fs::write(dir.path().join("config.json"), v.to_string()).unwrap()
        };
        assert!(should_kill_all_on_exit(dir.path()), "no config: kill");
        write(serde_json::json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}));
        assert!(!should_kill_all_on_exit(dir.path()));
        write(serde_json::json!({"linux": {"namespaces": [{"type": "mount"}]}}));
        assert!(should_kill_all_on_exit(dir.path()));
        write(
            serde_json::json!({"linux": {"namespaces": [{"type": "pid", "path": "/proc/1/ns/pid"}]}}),
        );
        assert!(should_kill_all_on_exit(dir.path()));
    }

    #[test]
    fn requests_with_bad_ids_are_refused_before_any_path_is_built() {
        let dir = tempfile::tempdir().unwrap();
        let s = Shim::new(
            "ns",
            "task1",
            dir.path(),
            Arc::new(Publisher::from_env("ns")),
        );
        for exec_id in ["../../../../tmp/x", "a/b", ".hidden", "x\0y"] {
            let e = s.check("task1", exec_id).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{exec_id:?}: {e}");
            assert!(
                e.to_string()
                    .contains(r"must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"),
                "{e}"
            );
        }
        assert!(matches!(
            s.check("../x", ""),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(s.check("other", ""), Err(Error::NotFound(_))));
        s.check("task1", "exec-1").unwrap();
    }
}
