//! Containers in pods: created from an image over a writable snapshot with
//! the pod's namespaces, started with FIFOs the daemon reads into the CRI
//! log, stopped with the image's stop signal and then SIGKILL, removed with
//! their snapshot, as containerd 1.6's CRI does.

use crate::client::context;
use crate::core::Cri;
use crate::io::{ContainerIo, Fifos};
use crate::spec::{self, PodContext};
use crate::store::{self, Container, ContainerMeta, ContainerStatus, SandboxState};
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stevedore_api::cri;
use stevedore_api::services::tasks::{CreateTaskRequest, StartRequest, UpdateTaskRequest};
use tonic::Status;

const SIGKILL: u32 = 9;

impl Cri {
    pub async fn create_container(
        &self,
        req: cri::CreateContainerRequest,
    ) -> Result<cri::CreateContainerResponse, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("container config must be set"))?;
        let cmeta = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("container config must include metadata"))?;
        if cmeta.name.is_empty() {
            return Err(Status::invalid_argument(
                "container metadata must include a name",
            ));
        }
        let sb = self.store.sandbox(&req.pod_sandbox_id).map_err(|s| {
            context(
                s,
                &format!("failed to find sandbox id {:?}", req.pod_sandbox_id),
            )
        })?;
        if sb.state() != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "sandbox {:?} is not ready: cannot create containers in it",
                sb.id()
            )));
        }
        let smeta = sb.meta();
        let sconfig = smeta.config.clone().unwrap_or_default();
        let pod_meta = sconfig.metadata.clone().unwrap_or_default();
        let id = store::generate_id();
        let name = store::container_name(&cmeta, &pod_meta);
        self.store
            .reserve(&name, &id)
            .map_err(|s| context(s, &format!("failed to reserve container name {name:?}")))?;
        let r = self
            .create_inner(&id, &name, &config, &sb, &smeta, &sconfig)
            .await;
        match r {
            Ok(c) => {
                self.store.add_container(c.clone());
                let st = self.container_status_of(&c).await;
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerCreatedEvent,
                    None,
                    vec![st],
                );
                Ok(cri::CreateContainerResponse { container_id: id })
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(self.container_dir(&id));
                let _ = std::fs::remove_dir_all(self.container_state_dir(&id));
                self.store.release(&name);
                Err(e)
            }
        }
    }

    async fn create_inner(
        &self,
        id: &str,
        name: &str,
        config: &cri::ContainerConfig,
        sb: &store::Sandbox,
        smeta: &store::SandboxMeta,
        sconfig: &cri::PodSandboxConfig,
    ) -> Result<Arc<Container>, Status> {
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Status::invalid_argument(
                "container config must name an image",
            ));
        }
        let image = self
            .resolve_image(&image_name)
            .await
            .map_err(|s| context(s, &format!("failed to resolve image {image_name:?}")))?;
        let (handler, rt) = self
            .config
            .runtime(&smeta.runtime_handler)
            .map_err(Status::invalid_argument)?;
        let dir = self.container_dir(id);
        let state = self.container_state_dir(id);
        for d in [&dir, &state] {
            std::fs::create_dir_all(d).map_err(|e| {
                Status::internal(format!("failed to create container directory {d:?}: {e}"))
            })?;
        }
        let log_path = if !sconfig.log_directory.is_empty() && !config.log_path.is_empty() {
            std::path::Path::new(&sconfig.log_directory)
                .join(&config.log_path)
                .display()
                .to_string()
        } else {
            String::new()
        };
        let fifos = Fifos::create(&state.join("io"), id, config.stdin, config.tty)
            .map_err(|e| Status::internal(format!("failed to create container io: {e}")))?;
        // a TARGET pid namespace joins another container of the pod
        let cns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or_default();
        let target_pid = if cns.pid == cri::NamespaceMode::Target as i32 {
            let t = self.store.container(&cns.target_id).map_err(|s| {
                Status::invalid_argument(format!("invalid target container: {}", s.message()))
            })?;
            if t.meta.sandbox_id != smeta.id {
                return Err(Status::invalid_argument(format!(
                    "invalid target container: container {:?} is not in sandbox {:?}",
                    cns.target_id, smeta.id
                )));
            }
            Some(t.status().pid)
        } else {
            None
        };
        let files = self.sandbox_files(&smeta.id);
        let pod = PodContext {
            sandbox_id: &smeta.id,
            sandbox_pid: sb.pid(),
            target_pid,
            config: sconfig,
            files: &files,
        };
        // containerd's user handling: WithUser(the CRI's user string, else
        // the image's USER), WithAdditionalGIDs(runAsUsername, else the uid)
        let sc = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let uid = sc.run_as_user.as_ref().map(|v| v.value);
        let mut userstr = crate::user::user_string(
            &sc.run_as_username,
            uid,
            sc.run_as_group.as_ref().map(|v| v.value),
        )?;
        if userstr.is_empty() {
            userstr = image.config.user.clone();
        }
        let gids_of = if sc.run_as_username.is_empty() {
            uid.unwrap_or(0).to_string()
        } else {
            sc.run_as_username.clone()
        };
        let db = self
            .user_db(&image, &self.config.snapshotter_for(&rt))
            .await?;
        let (uid, gid) = if userstr.is_empty() {
            (0, 0)
        } else {
            db.resolve(&userstr)?
        };
        // SupplementalGroupsPolicy Strict: none of the image's groups
        let strict = sc.supplemental_groups_policy == cri::SupplementalGroupsPolicy::Strict as i32;
        let ids = crate::user::Ids {
            uid,
            gid,
            additional_gids: if strict {
                Vec::new()
            } else {
                db.additional_gids(&gids_of)
            },
        };
        let spec = spec::container_spec(
            id,
            config,
            &image.config,
            &image_name,
            &pod,
            &self.config,
            &ids,
        )?;
        let meta = ContainerMeta {
            id: id.to_string(),
            name: name.to_string(),
            sandbox_id: smeta.id.clone(),
            config: Some(config.clone()),
            image_ref: image.id.clone(),
            image_name: image_name.clone(),
            log_path,
            stdin: fifos.stdin.clone(),
            stdout: fifos.stdout.clone(),
            stderr: fifos.stderr.clone(),
            created_at: store::now_nanos(),
            snapshotter: self.config.snapshotter_for(&rt),
            user: spec.process.as_ref().map(|p| cri::ContainerUser {
                linux: Some(cri::LinuxContainerUser {
                    uid: p.user.uid.into(),
                    gid: p.user.gid.into(),
                    supplemental_groups: p
                        .user
                        .additional_gids
                        .iter()
                        .map(|g| (*g).into())
                        .collect(),
                }),
            }),
        };
        let mut labels: HashMap<String, String> = config.labels.clone().into_iter().collect();
        labels.insert(store::KIND_LABEL.into(), store::KIND_CONTAINER.into());
        let r = self
            .create_container_record(
                id,
                &image,
                &image_name,
                &spec,
                &meta.snapshotter,
                (&handler, &rt),
                labels,
                (
                    store::CONTAINER_EXT,
                    prost_types::Any {
                        type_url: store::CONTAINER_META_TYPE.into(),
                        value: meta.encode_to_vec(),
                    },
                ),
            )
            .await;
        if let Err(e) = r {
            fifos.remove();
            return Err(e);
        }
        let c = Arc::new(Container::new(meta, ContainerStatus::default(), &dir));
        if let Err(e) = c.update(|_| {}) {
            let _ = self.delete_container_record(id).await;
            fifos.remove();
            return Err(e);
        }
        Ok(c)
    }

    pub async fn start_container(
        &self,
        req: cri::StartContainerRequest,
    ) -> Result<cri::StartContainerResponse, Status> {
        let c = self.store.container(&req.container_id)?;
        let _op = c.op.lock().await;
        let st = c.status();
        if st.state() != cri::ContainerState::ContainerCreated {
            return Err(Status::failed_precondition(format!(
                "container {:?} is in {} state",
                c.meta.id,
                state_name(st.state())
            )));
        }
        let sb = self.store.sandbox(&c.meta.sandbox_id)?;
        if sb.state() != SandboxState::Ready {
            return Err(Status::failed_precondition(format!(
                "sandbox container {:?} is not running",
                sb.id()
            )));
        }
        match self.start_inner(&c).await {
            Ok(pid) => {
                c.update(|s| {
                    s.pid = pid;
                    s.started_at = store::now_nanos();
                })?;
                let st = self.container_status_of(&c).await;
                self.emit(
                    &c.meta.id,
                    cri::ContainerEventType::ContainerStartedEvent,
                    None,
                    vec![st],
                );
                Ok(cri::StartContainerResponse {})
            }
            Err(e) => {
                let msg = e.message().to_string();
                let _ = c.update(|s| {
                    s.finished_at = store::now_nanos();
                    s.exit_code = 128;
                    s.reason = "StartError".into();
                    s.message = msg;
                });
                Err(e)
            }
        }
    }

    async fn start_inner(&self, c: &Container) -> Result<u32, Status> {
        let id = &c.meta.id;
        let config = c.meta.config.clone().unwrap_or_default();
        let fifos = Fifos {
            dir: self.container_state_dir(id).join("io"),
            stdin: c.meta.stdin.clone(),
            stdout: c.meta.stdout.clone(),
            stderr: c.meta.stderr.clone(),
        };
        let io = Arc::new(
            ContainerIo::new(fifos, &c.meta.log_path)
                .map_err(|e| Status::internal(format!("failed to create container log: {e}")))?,
        );
        io.start(self.config.max_container_log_line_size);
        *store::lock(&c.io) = Some(io.clone());
        let (_, rt) = self
            .config
            .runtime(
                &self
                    .store
                    .sandbox(&c.meta.sandbox_id)
                    .map(|s| s.meta().runtime_handler)
                    .unwrap_or_default(),
            )
            .map_err(Status::invalid_argument)?;
        let rootfs = self.rootfs(&c.meta.snapshotter, id).await?;
        let mut tasks = self.ctrd.tasks();
        let created = tasks
            .create(CreateTaskRequest {
                container_id: id.clone(),
                rootfs,
                stdin: c.meta.stdin.clone(),
                stdout: c.meta.stdout.clone(),
                stderr: c.meta.stderr.clone(),
                terminal: config.tty,
                options: crate::core::runc_options(&rt),
                ..Default::default()
            })
            .await;
        if let Err(s) = created {
            io.fifos.remove();
            return Err(context(s, "failed to create containerd task"));
        }
        match tasks
            .start(StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })
            .await
        {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                self.ctrd.delete_task(id).await;
                io.fifos.remove();
                Err(context(s, "failed to start containerd task"))
            }
        }
    }

    pub async fn stop_container(
        &self,
        req: cri::StopContainerRequest,
    ) -> Result<cri::StopContainerResponse, Status> {
        let c = match self.store.container(&req.container_id) {
            Ok(c) => c,
            // the CRI's StopContainer is idempotent: a container already
            // gone is stopped (containerd 2.x)
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Ok(cri::StopContainerResponse {})
            }
            Err(s) => return Err(s),
        };
        self.stop_container_inner(&c, req.timeout).await?;
        Ok(cri::StopContainerResponse {})
    }

    /// The stop signal (SIGTERM unless the image says otherwise), up to
    /// `timeout` seconds, then SIGKILL.
    pub async fn stop_container_inner(&self, c: &Container, timeout: i64) -> Result<(), Status> {
        let _op = c.op.lock().await;
        if c.status().state() != cri::ContainerState::ContainerRunning {
            return Ok(());
        }
        let id = c.meta.id.clone();
        let mut wait = Some(self.ctrd.spawn_wait(&id));
        if timeout > 0 {
            let signal = self.stop_signal(c).await;
            match self.ctrd.kill_task(&id, signal, false).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(context(s, &format!("failed to stop container {id:?}"))),
            }
            if let Some(w) = wait.as_mut() {
                if let Ok(r) = tokio::time::timeout(Duration::from_secs(timeout as u64), w).await {
                    wait = None;
                    self.record_exit(c, r).await;
                }
            }
        }
        if let Some(w) = wait {
            match self.ctrd.kill_task(&id, SIGKILL, true).await {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(context(s, &format!("failed to kill container {id:?}"))),
            }
            match tokio::time::timeout(Duration::from_secs(30), w).await {
                Ok(r) => self.record_exit(c, r).await,
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "container {id:?} did not exit 30s after SIGKILL"
                    )))
                }
            }
        }
        Ok(())
    }

    async fn record_exit(
        &self,
        c: &Container,
        r: Result<
            Result<tonic::Response<stevedore_api::services::tasks::WaitResponse>, Status>,
            tokio::task::JoinError,
        >,
    ) {
        let (code, at) = match r {
            Ok(Ok(w)) => {
                let w = w.into_inner();
                let at = store::nanos_or_now(w.exited_at);
                (w.exit_status, at)
            }
            _ => (255, store::now_nanos()),
        };
        self.container_exited(c, code, at).await;
    }

    /// A container's task ended: record how, delete the task, let the log
    /// readers drain. Called by stop and by the event monitor; only the
    /// first call counts.
    pub async fn container_exited(&self, c: &Container, code: u32, at: i64) {
        if c.status().finished_at != 0 {
            return;
        }
        self.ctrd.delete_task(&c.meta.id).await;
        if let Some(io) = c.io() {
            let io2 = io.clone();
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::task::spawn_blocking(move || io2.wait()),
            )
            .await;
        }
        let mut recorded = false;
        let r = c.update(|s| {
            if s.finished_at != 0 {
                return;
            }
            recorded = true;
            s.finished_at = at.max(1);
            s.exit_code = code as i32;
            if s.reason.is_empty() {
                s.reason = if code == 0 { "Completed" } else { "Error" }.into();
            }
        });
        if let Err(e) = r {
            tracing::warn!("record exit of {}: {}", c.meta.id, e.message());
        }
        if !recorded {
            // another caller (the exit monitor or StopContainer) recorded
            // this exit and sent its event: containerd sends one per exit
            return;
        }
        let st = self.container_status_of(c).await;
        self.emit(
            &c.meta.id,
            cri::ContainerEventType::ContainerStoppedEvent,
            None,
            vec![st],
        );
    }

    async fn stop_signal(&self, c: &Container) -> u32 {
        let sig = match self.resolve_image(&c.meta.image_ref).await {
            Ok(img) => serde_json::from_slice::<serde_json::Value>(&img.config_raw)
                .ok()
                .and_then(|v| v["config"]["StopSignal"].as_str().map(String::from)),
            Err(_) => None,
        };
        sig.and_then(|s| stevedore_runtime::signal::number(&s))
            .unwrap_or(15)
    }

    pub async fn remove_container(
        &self,
        req: cri::RemoveContainerRequest,
    ) -> Result<cri::RemoveContainerResponse, Status> {
        let c = match self.store.container(&req.container_id) {
            Ok(c) => c,
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Ok(cri::RemoveContainerResponse {})
            }
            Err(s) => return Err(s),
        };
        self.remove_container_inner(&c).await?;
        Ok(cri::RemoveContainerResponse {})
    }

    pub async fn remove_container_inner(&self, c: &Container) -> Result<(), Status> {
        if c.status().state() == cri::ContainerState::ContainerRunning {
            self.stop_container_inner(c, 0).await?;
        }
        let _op = c.op.lock().await;
        let id = c.meta.id.clone();
        c.update(|s| s.removing = true)?;
        // a task left behind (a start that failed half way)
        self.ctrd.delete_task(&id).await;
        self.delete_container_record(&id).await?;
        Fifos {
            dir: self.container_state_dir(&id).join("io"),
            stdin: c.meta.stdin.clone(),
            stdout: c.meta.stdout.clone(),
            stderr: c.meta.stderr.clone(),
        }
        .remove();
        let _ = std::fs::remove_dir_all(self.container_dir(&id));
        let _ = std::fs::remove_dir_all(self.container_state_dir(&id));
        self.store.remove_container(&id);
        self.store.release(&c.meta.name);
        self.emit(
            &id,
            cri::ContainerEventType::ContainerDeletedEvent,
            None,
            vec![],
        );
        Ok(())
    }

    pub async fn container_status_of(&self, c: &Container) -> cri::ContainerStatus {
        let st = c.status();
        let config = c.meta.config.clone().unwrap_or_default();
        let (image, image_ref) = self.image_refs(&c.meta.image_ref, &c.meta.image_name).await;
        cri::ContainerStatus {
            id: c.meta.id.clone(),
            metadata: config.metadata.clone(),
            state: st.state() as i32,
            created_at: c.meta.created_at,
            started_at: st.started_at,
            finished_at: st.finished_at,
            exit_code: st.exit_code,
            image: Some(cri::ImageSpec {
                image,
                annotations: config
                    .image
                    .as_ref()
                    .map(|i| i.annotations.clone())
                    .unwrap_or_default(),
                ..Default::default()
            }),
            image_ref,
            reason: st.reason.clone(),
            message: st.message.clone(),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            mounts: config.mounts.clone(),
            log_path: c.meta.log_path.clone(),
            resources: config.linux.as_ref().and_then(|l| {
                l.resources.clone().map(|r| cri::ContainerResources {
                    linux: Some(r),
                    ..Default::default()
                })
            }),
            image_id: c.meta.image_ref.clone(),
            user: c.meta.user.clone(),
        }
    }

    /// containerd's `toCRIContainerStatus` image fields: the first repo
    /// tag (else the image id) and the first repo digest (else the id).
    async fn image_refs(&self, id: &str, fallback: &str) -> (String, String) {
        match self.image_record_names(id).await {
            Ok((tags, digests)) => (
                tags.first().cloned().unwrap_or_else(|| id.to_string()),
                digests.first().cloned().unwrap_or_else(|| id.to_string()),
            ),
            Err(_) => (fallback.to_string(), id.to_string()),
        }
    }

    pub async fn container_status(
        &self,
        req: cri::ContainerStatusRequest,
    ) -> Result<cri::ContainerStatusResponse, Status> {
        let c = self.store.container(&req.container_id)?;
        let status = self.container_status_of(&c).await;
        let mut info = HashMap::new();
        if req.verbose {
            let (runtime_type, runtime_options, runtime_spec) = self.record_info(&c.meta.id).await;
            // containerd 1.6's containerInfo
            let v = serde_json::json!({
                "sandboxID": c.meta.sandbox_id,
                "pid": c.status().pid,
                "removing": c.status().removing,
                "snapshotKey": c.meta.id,
                "snapshotter": c.meta.snapshotter,
                "runtimeType": runtime_type,
                "runtimeOptions": runtime_options,
                "config": c.meta.config,
                "runtimeSpec": runtime_spec,
            });
            info.insert("info".to_string(), v.to_string());
        }
        Ok(cri::ContainerStatusResponse {
            status: Some(status),
            info,
        })
    }

    pub async fn list_containers(
        &self,
        req: cri::ListContainersRequest,
    ) -> Result<cri::ListContainersResponse, Status> {
        let f = req.filter.unwrap_or_default();
        let mut out = Vec::new();
        for c in self.store.containers() {
            if !c.matches(&f.id, &f.pod_sandbox_id, &f.label_selector) {
                continue;
            }
            let st = c.status();
            if let Some(s) = &f.state {
                if s.state != st.state() as i32 {
                    continue;
                }
            }
            let config = c.meta.config.clone().unwrap_or_default();
            let (image, image_ref) = self.image_refs(&c.meta.image_ref, &c.meta.image_name).await;
            out.push(cri::Container {
                id: c.meta.id.clone(),
                pod_sandbox_id: c.meta.sandbox_id.clone(),
                metadata: config.metadata.clone(),
                image: Some(cri::ImageSpec {
                    image,
                    ..Default::default()
                }),
                image_ref,
                state: st.state() as i32,
                created_at: c.meta.created_at,
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                image_id: c.meta.image_ref.clone(),
            });
        }
        out.sort_by_key(|c| std::cmp::Reverse(c.created_at));
        Ok(cri::ListContainersResponse { containers: out })
    }

    pub async fn update_container_resources(
        &self,
        req: cri::UpdateContainerResourcesRequest,
    ) -> Result<cri::UpdateContainerResourcesResponse, Status> {
        let c = self.store.container(&req.container_id)?;
        let Some(r) = req.linux else {
            return Ok(cri::UpdateContainerResourcesResponse {});
        };
        if c.status().state() != cri::ContainerState::ContainerRunning {
            return Ok(cri::UpdateContainerResourcesResponse {});
        }
        let mut res = serde_json::Map::new();
        let mut cpu = serde_json::Map::new();
        if r.cpu_shares != 0 {
            cpu.insert("shares".into(), r.cpu_shares.into());
        }
        if r.cpu_quota != 0 {
            cpu.insert("quota".into(), r.cpu_quota.into());
        }
        if r.cpu_period != 0 {
            cpu.insert("period".into(), r.cpu_period.into());
        }
        if !r.cpuset_cpus.is_empty() {
            cpu.insert("cpus".into(), r.cpuset_cpus.clone().into());
        }
        if !r.cpuset_mems.is_empty() {
            cpu.insert("mems".into(), r.cpuset_mems.clone().into());
        }
        if !cpu.is_empty() {
            res.insert("cpu".into(), cpu.into());
        }
        if r.memory_limit_in_bytes != 0 {
            res.insert(
                "memory".into(),
                serde_json::json!({"limit": r.memory_limit_in_bytes}),
            );
        }
        self.ctrd
            .tasks()
            .update(UpdateTaskRequest {
                container_id: c.meta.id.clone(),
                resources: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
                        .into(),
                    value: serde_json::to_vec(&res).unwrap_or_default(),
                }),
                annotations: Default::default(),
            })
            .await
            .map_err(|s| {
                context(
                    s,
                    &format!("failed to update resources of container {:?}", c.meta.id),
                )
            })?;
        Ok(cri::UpdateContainerResourcesResponse {})
    }

    pub async fn reopen_container_log(
        &self,
        req: cri::ReopenContainerLogRequest,
    ) -> Result<cri::ReopenContainerLogResponse, Status> {
        let c = self.store.container(&req.container_id)?;
        if c.status().state() != cri::ContainerState::ContainerRunning {
            return Err(Status::failed_precondition("container is not running"));
        }
        if let Some(io) = c.io() {
            io.reopen_log()
                .map_err(|e| Status::internal(format!("failed to reopen container log: {e}")))?;
        }
        Ok(cri::ReopenContainerLogResponse {})
    }
}

pub fn state_name(s: cri::ContainerState) -> &'static str {
    match s {
        cri::ContainerState::ContainerCreated => "CONTAINER_CREATED",
        cri::ContainerState::ContainerRunning => "CONTAINER_RUNNING",
        cri::ContainerState::ContainerExited => "CONTAINER_EXITED",
        cri::ContainerState::ContainerUnknown => "CONTAINER_UNKNOWN",
    }
}
