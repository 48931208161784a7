//! The runtime v2 plugin (`io.containerd.runtime.v2 task`: the task manager,
//! the ttrpc events endpoint (`[ttrpc] address`, by default `<socket>.ttrpc`),
//! restart recovery) and the Tasks gRPC service over it. Task events come
//! from the shims (forwarded to the exchange); the daemon publishes
//! `/tasks/exit` and `/tasks/delete` itself only for a shim that died.

use crate::exchange::Exchange;
use crate::{namespace_of, GrpcService};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use stevedore_api::containerd::v1::types::{Process, ProcessInfo, Status as PbStatus};
use stevedore_api::events::{TaskDelete, TaskExit};
use stevedore_api::services::events::Envelope;
use stevedore_api::services::tasks::{
    tasks_server::{Tasks, TasksServer},
    CheckpointTaskRequest, CheckpointTaskResponse, CloseIoRequest, CreateTaskRequest,
    CreateTaskResponse, DeleteProcessRequest, DeleteResponse, DeleteTaskRequest,
    ExecProcessRequest, GetRequest, GetResponse, KillRequest, ListPidsRequest, ListPidsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, PauseTaskRequest,
    ResizePtyRequest, ResumeTaskRequest, StartRequest, StartResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use stevedore_api::status::to_status;
use stevedore_api::types::Metric;
use stevedore_metadata::Db;
use stevedore_runtime::{
    Any, CreateOpts, Event, EventSink, EventsServer, ExecOpts, Exit, ExitEvents, ManagerConfig,
    ProcessState, ShimEnv, Status as RtStatus, TaskManager, TaskSpec,
};
use stevedore_types::filters::Filter;
use stevedore_types::Error;
use tonic::{Request, Response, Status};

/// The runtime v2 plugin's config section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Runtime name -> shim binary, a path or a name looked up on PATH and
    /// next to stevedored (overrides `containerd-shim-<x>-<v>` lookup).
    /// Entries are merged over the built-in default, which runs
    /// `io.containerd.runc.v2` on stevedore's own shim; map it to
    /// `containerd-shim-runc-v2` to use containerd's Go shim instead.
    pub shims: BTreeMap<String, String>,
    /// Start shims with `-debug`.
    pub shim_debug: bool,
}

/// The runtime name containerd clients use by default.
pub const RUNC_V2: &str = "io.containerd.runc.v2";
/// stevedore's own shim binary, the default for [`RUNC_V2`].
pub const STEVEDORE_SHIM: &str = "containerd-shim-stevedore-v1";

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            shims: [(RUNC_V2.to_string(), STEVEDORE_SHIM.to_string())].into(),
            shim_debug: false,
        }
    }
}

/// The runtime v2 plugin instance.
pub struct RuntimeV2 {
    pub manager: Arc<TaskManager>,
    _events: EventsServer,
}

/// The runtime plugin's extra data (containerd's `TaskManager.PluginInfo`):
/// a `RuntimeRequest` runs the runtime's shim with `-info` and answers its
/// `RuntimeInfo` (`ctr plugins inspect-runtime`).
#[tonic::async_trait]
impl crate::introspection::PluginInfoProvider for RuntimeV2 {
    async fn plugin_info(
        &self,
        options: prost_types::Any,
    ) -> Result<prost_types::Any, stevedore_types::Error> {
        use prost::Message;
        use stevedore_api::types::{RuntimeInfo, RuntimeRequest};
        let req: RuntimeRequest = stevedore_api::typeurl::from_any(&options).ok_or_else(|| {
            stevedore_types::Error::unimplemented(format!(
                "unknown request type {}: not implemented",
                options.type_url
            ))
        })?;
        let opts = req.options.map(|o| o.encode_to_vec()).unwrap_or_default();
        let out = self.manager.runtime_info(&req.runtime_path, opts).await?;
        let info = RuntimeInfo::decode(out.as_slice()).map_err(|e| {
            stevedore_types::Error::unknown(format!(
                "failed to unmarshal the -info output of {:?} into containerd.types.RuntimeInfo: {e}",
                req.runtime_path
            ))
        })?;
        Ok(stevedore_api::typeurl::to_any(&info))
    }
}

pub(crate) fn to_rt_any(a: prost_types::Any) -> Any {
    Any {
        type_url: a.type_url,
        value: a.value,
    }
}

fn from_rt_any(a: Any) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url,
        value: a.value,
    }
}

fn ts(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(Into::into)
}

struct DeathEvents;

impl ExitEvents for DeathEvents {
    fn shim_died(&self, namespace: &str, id: &str, exit: &Exit) -> Vec<Event> {
        let exited_at = ts(exit.exited_at);
        let exit_ev = TaskExit {
            container_id: id.into(),
            id: id.into(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at,
        };
        let del = TaskDelete {
            container_id: id.into(),
            pid: exit.pid,
            exit_status: exit.status,
            exited_at,
            id: String::new(),
        };
        let ev = |topic: &str, a: prost_types::Any| Event {
            timestamp: SystemTime::now(),
            namespace: namespace.into(),
            topic: topic.into(),
            event: Some(to_rt_any(a)),
        };
        vec![
            ev("/tasks/exit", stevedore_api::typeurl::to_any(&exit_ev)),
            ev("/tasks/delete", stevedore_api::typeurl::to_any(&del)),
        ]
    }
}

impl RuntimeV2 {
    /// Start the task manager and its events endpoint, and reconnect to the
    /// shims of tasks that survived a daemon restart. Runs on a blocking
    /// thread inside the daemon's tokio runtime (plugin init).
    pub fn init(
        state: PathBuf,
        root: PathBuf,
        grpc_address: PathBuf,
        ttrpc: PathBuf,
        cfg: RuntimeConfig,
        db: Arc<Db>,
        exchange: Exchange,
    ) -> Result<RuntimeV2, Error> {
        let publish_binary = std::env::current_exe()
            .map_err(|e| Error::from(e).context("find the daemon's own binary"))?;
        let ex = exchange.clone();
        let oom_order = crate::task_oom::OomOrder::new(state.clone());
        let sink: EventSink = Arc::new(move |e: Event| {
            for e in oom_order.order(e) {
                ex.forward(Envelope {
                    timestamp: Some(e.timestamp.into()),
                    namespace: e.namespace,
                    topic: e.topic,
                    event: e.event.map(from_rt_any),
                })?;
            }
            Ok(())
        });
        let manager = TaskManager::new(
            ManagerConfig {
                state,
                root,
                env: ShimEnv {
                    grpc_address: grpc_address.display().to_string(),
                    ttrpc_address: ttrpc.display().to_string(),
                    publish_binary,
                    debug: cfg.shim_debug,
                },
                shims: RuntimeConfig::default()
                    .shims
                    .into_iter()
                    .chain(cfg.shims)
                    .map(|(k, v)| (k, PathBuf::from(v)))
                    .collect(),
            },
            sink.clone(),
            Arc::new(DeathEvents),
        );
        let handle = tokio::runtime::Handle::current();
        let events = handle.block_on(EventsServer::serve(&ttrpc, sink))?;
        let m = manager.clone();
        let recovered = handle.block_on(m.recover(|ns, id| db.get_container(ns, id).is_ok()))?;
        if recovered > 0 {
            tracing::info!(recovered, "reconnected to running shims");
        }
        Ok(RuntimeV2 {
            manager,
            _events: events,
        })
    }
}

/// The Tasks gRPC service.
pub struct TasksService {
    db: Arc<Db>,
    manager: Arc<TaskManager>,
}

impl TasksService {
    pub fn grpc(db: Arc<Db>, rt: Arc<RuntimeV2>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(TasksServer::new(
            TasksService {
                db,
                manager: rt.manager.clone(),
            }
        )))
    }
}

fn status_of(s: RtStatus) -> PbStatus {
    match s {
        RtStatus::Unknown => PbStatus::Unknown,
        RtStatus::Created => PbStatus::Created,
        RtStatus::Running => PbStatus::Running,
        RtStatus::Stopped => PbStatus::Stopped,
        RtStatus::Paused => PbStatus::Paused,
        RtStatus::Pausing => PbStatus::Pausing,
    }
}

fn process_of(container_id: &str, s: ProcessState) -> Process {
    Process {
        container_id: container_id.into(),
        id: s.id,
        pid: s.pid,
        status: status_of(s.status) as i32,
        stdin: s.stdin,
        stdout: s.stdout,
        stderr: s.stderr,
        terminal: s.terminal,
        exit_status: s.exit_status,
        exited_at: ts(s.exited_at),
    }
}

fn delete_response(id: &str, e: Exit) -> DeleteResponse {
    DeleteResponse {
        id: id.into(),
        pid: e.pid,
        exit_status: e.status,
        exited_at: ts(e.exited_at),
    }
}

fn g<T>(r: Result<T, Error>) -> Result<T, Status> {
    r.map_err(to_status)
}

impl TasksService {
    fn task(&self, ns: &str, id: &str) -> Result<Arc<stevedore_runtime::Shim>, Status> {
        g(self.manager.get(ns, id))
    }
}

fn require_exec_id(exec_id: &str) -> Result<(), Status> {
    if exec_id.is_empty() {
        return Err(Status::invalid_argument("exec id cannot be empty"));
    }
    Ok(())
}

#[tonic::async_trait]
impl Tasks for TasksService {
    async fn create(
        &self,
        req: Request<CreateTaskRequest>,
    ) -> Result<Response<CreateTaskResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        if r.checkpoint.is_some() {
            return Err(Status::unimplemented(format!(
                "create task {:?}: restoring from a checkpoint is not supported yet",
                r.container_id
            )));
        }
        let db = self.db.clone();
        let (n, id) = (ns.clone(), r.container_id.clone());
        let c = crate::blocking(move || db.get_container(&n, &id)).await?;
        let spec = c.spec.ok_or_else(|| {
            Status::failed_precondition(format!("container {:?} has no spec", c.id))
        })?;
        let runtime = if r.runtime_path.is_empty() {
            c.runtime.name.clone()
        } else {
            r.runtime_path.clone()
        };
        let t = TaskSpec {
            spec: spec.value,
            runtime,
            runtime_options: c.runtime.options.map(|a| Any {
                type_url: a.type_url,
                value: a.value,
            }),
            create: CreateOpts {
                rootfs: r
                    .rootfs
                    .into_iter()
                    .map(crate::diff::mount_from_pb)
                    .collect(),
                stdin: r.stdin,
                stdout: r.stdout,
                stderr: r.stderr,
                terminal: r.terminal,
                checkpoint: String::new(),
                options: r.options.map(to_rt_any),
            },
        };
        let (_, pid) = g(self.manager.create(&ns, &r.container_id, t).await)?;
        Ok(Response::new(CreateTaskResponse {
            container_id: r.container_id,
            pid,
        }))
    }

    async fn start(&self, req: Request<StartRequest>) -> Result<Response<StartResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        let pid = g(t.start(&r.exec_id).await)?;
        Ok(Response::new(StartResponse { pid }))
    }

    async fn delete(
        &self,
        req: Request<DeleteTaskRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().container_id;
        let exit = g(self.manager.delete(&ns, &id).await)?;
        Ok(Response::new(delete_response(&id, exit)))
    }

    async fn delete_process(
        &self,
        req: Request<DeleteProcessRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        require_exec_id(&r.exec_id)?;
        let t = self.task(&ns, &r.container_id)?;
        let exit = g(t.delete_process(&r.exec_id).await)?;
        Ok(Response::new(delete_response(&r.exec_id, exit)))
    }

    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        let s = g(t.state(&r.exec_id).await)?;
        Ok(Response::new(GetResponse {
            process: Some(process_of(&r.container_id, s)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        let ns = namespace_of(&req)?;
        let mut tasks = Vec::new();
        for t in self.manager.list(&ns) {
            match t.state("").await {
                Ok(s) => tasks.push(process_of(t.id(), s)),
                // a task whose shim just went away is no longer listed
                Err(e) => tracing::debug!(id = t.id(), error = %e, "skipping task in list"),
            }
        }
        Ok(Response::new(ListTasksResponse { tasks }))
    }

    async fn kill(&self, req: Request<KillRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        g(t.kill(&r.exec_id, r.signal, r.all).await)?;
        Ok(Response::new(()))
    }

    async fn exec(&self, req: Request<ExecProcessRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        require_exec_id(&r.exec_id)?;
        let t = self.task(&ns, &r.container_id)?;
        g(t.exec(&ExecOpts {
            exec_id: r.exec_id,
            stdin: r.stdin,
            stdout: r.stdout,
            stderr: r.stderr,
            terminal: r.terminal,
            spec: r.spec.map(to_rt_any),
        })
        .await)?;
        Ok(Response::new(()))
    }

    async fn resize_pty(&self, req: Request<ResizePtyRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        g(t.resize_pty(&r.exec_id, r.width, r.height).await)?;
        Ok(Response::new(()))
    }

    async fn close_io(&self, req: Request<CloseIoRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        g(t.close_io(&r.exec_id, r.stdin).await)?;
        Ok(Response::new(()))
    }

    async fn pause(&self, req: Request<PauseTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let t = self.task(&ns, &req.into_inner().container_id)?;
        g(t.pause().await)?;
        Ok(Response::new(()))
    }

    async fn resume(&self, req: Request<ResumeTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let t = self.task(&ns, &req.into_inner().container_id)?;
        g(t.resume().await)?;
        Ok(Response::new(()))
    }

    async fn list_pids(
        &self,
        req: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        let ns = namespace_of(&req)?;
        let t = self.task(&ns, &req.into_inner().container_id)?;
        let pids = g(t.pids().await)?;
        Ok(Response::new(ListPidsResponse {
            processes: pids
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: p.pid,
                    info: p.info.map(from_rt_any),
                })
                .collect(),
        }))
    }

    async fn checkpoint(
        &self,
        req: Request<CheckpointTaskRequest>,
    ) -> Result<Response<CheckpointTaskResponse>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().container_id;
        self.task(&ns, &id)?;
        let criu = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join("criu").is_file()))
            .unwrap_or(false);
        if !criu {
            return Err(Status::failed_precondition(format!(
                "checkpoint task {id:?}: criu is not installed (apt-get install criu)"
            )));
        }
        Err(Status::unimplemented(format!(
            "checkpoint task {id:?}: checkpoints are not supported by stevedore yet"
        )))
    }

    async fn update(&self, req: Request<UpdateTaskRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        g(t.update(r.resources.map(to_rt_any), r.annotations).await)?;
        Ok(Response::new(()))
    }

    async fn metrics(
        &self,
        req: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        let ns = namespace_of(&req)?;
        let filter = g(Filter::parse_all(&req.get_ref().filters))?;
        let mut metrics = Vec::new();
        for t in self.manager.list(&ns) {
            let id = t.id().to_string();
            let (tid, tns) = (id.clone(), ns.clone());
            let adaptor = move |p: &[String]| match p.first().map(String::as_str) {
                Some("id") => Some(tid.clone()),
                Some("namespace") => Some(tns.clone()),
                _ => None,
            };
            if !filter.matches(&adaptor) {
                continue;
            }
            match t.stats().await {
                Ok(data) => metrics.push(Metric {
                    timestamp: Some(crate::now_timestamp()),
                    id,
                    data: data.map(from_rt_any),
                }),
                Err(e) => tracing::debug!(id, error = %e, "no metrics for task"),
            }
        }
        Ok(Response::new(MetricsResponse { metrics }))
    }

    async fn wait(&self, req: Request<WaitRequest>) -> Result<Response<WaitResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let t = self.task(&ns, &r.container_id)?;
        let exit = g(t.wait(&r.exec_id).await)?;
        Ok(Response::new(WaitResponse {
            exit_status: exit.status,
            exited_at: ts(exit.exited_at),
        }))
    }
}
