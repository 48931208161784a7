//! Pod sandboxes: a pause container in the pod's own network namespace
//! (set up through CNI), with the pod's hostname, /etc/hosts,
//! /etc/resolv.conf and a /dev/shm tmpfs, as containerd 1.6's CRI makes
//! them. Every step of RunPodSandbox is undone if a later one fails.

use crate::client::context;
use crate::core::Cri;
use crate::spec::{self, SandboxFiles};
use crate::store::{self, Sandbox, SandboxMeta, SandboxState};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use stevedore_api::cri;
use stevedore_api::services::tasks::{CreateTaskRequest, StartRequest};
use tonic::Status;

const SIGKILL: u32 = 9;

/// What RunPodSandbox has made so far, undone in reverse on failure.
#[derive(Default)]
struct Made {
    dirs: Vec<std::path::PathBuf>,
    shm: Option<String>,
    network: bool,
    record: bool,
    task: bool,
}

impl Cri {
    pub fn sandbox_files(&self, id: &str) -> SandboxFiles {
        let root = self.sandbox_dir(id);
        SandboxFiles {
            hostname: root.join("hostname").display().to_string(),
            hosts: root.join("hosts").display().to_string(),
            resolv: root.join("resolv.conf").display().to_string(),
            shm: self.sandbox_state_dir(id).join("shm").display().to_string(),
        }
    }

    pub async fn run_pod_sandbox(
        self: &Arc<Self>,
        req: cri::RunPodSandboxRequest,
    ) -> Result<cri::RunPodSandboxResponse, Status> {
        let config = req
            .config
            .ok_or_else(|| Status::invalid_argument("sandbox config must be set"))?;
        let metadata = config
            .metadata
            .clone()
            .ok_or_else(|| Status::invalid_argument("sandbox config must include metadata"))?;
        if metadata.name.is_empty() {
            return Err(Status::invalid_argument(
                "sandbox metadata must include a name",
            ));
        }
        let id = store::generate_id();
        let name = store::sandbox_name(&metadata);
        self.store
            .reserve(&name, &id)
            .map_err(|s| context(s, &format!("failed to reserve sandbox name {name:?}")))?;
        let (handler, rt) = self
            .config
            .runtime(&req.runtime_handler)
            .map_err(|e| Status::invalid_argument(format!("failed to get sandbox runtime: {e}")))?;
        let mut meta = SandboxMeta {
            id: id.clone(),
            name: name.clone(),
            config: Some(config.clone()),
            runtime_handler: req.runtime_handler.clone(),
            runtime_type: rt.runtime_type.clone(),
            created_at: store::now_nanos(),
            ..Default::default()
        };
        let mut made = Made::default();
        let r = self
            .run_inner(&mut meta, &config, (&handler, &rt), &mut made)
            .await;
        match r {
            Ok(pid) => {
                let sb = Arc::new(Sandbox::new(meta, SandboxState::Ready));
                store::lock(&sb.state).1.pid = pid;
                self.store.add_sandbox(sb.clone());
                let status = self.sandbox_status(&sb).await;
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerCreatedEvent,
                    Some(status.clone()),
                    vec![],
                );
                self.emit(
                    &id,
                    cri::ContainerEventType::ContainerStartedEvent,
                    Some(status),
                    vec![],
                );
                Ok(cri::RunPodSandboxResponse { pod_sandbox_id: id })
            }
            Err(e) => {
                self.undo_sandbox(&meta, &made).await;
                self.store.release(&name);
                Err(e)
            }
        }
    }

    async fn run_inner(
        &self,
        meta: &mut SandboxMeta,
        config: &cri::PodSandboxConfig,
        runtime: (&str, &crate::config::RuntimeEntry),
        made: &mut Made,
    ) -> Result<u32, Status> {
        let id = meta.id.clone();
        let image = self.ensure_sandbox_image().await?;
        // the sandbox's files
        let root = self.sandbox_dir(&id);
        let state = self.sandbox_state_dir(&id);
        for d in [&root, &state] {
            std::fs::create_dir_all(d).map_err(|e| {
                Status::internal(format!("failed to create sandbox directory {d:?}: {e}"))
            })?;
            made.dirs.push(d.clone());
        }
        let files = self.sandbox_files(&id);
        setup_files(config, &files)?;
        let ns = spec::pod_ns(config);
        if ns.ipc != cri::NamespaceMode::Node {
            mount_shm(&files.shm)?;
            made.shm = Some(files.shm.clone());
        }
        // the network namespace now; CNI ADD runs while the pause container
        // is created and started in it (the pod is reported once both are
        // done: neither needs the other)
        let network = ns.network != cri::NamespaceMode::Node;
        if network {
            made.network = true;
            meta.netns_path =
                self.network.create_netns().await.map_err(|e| {
                    context(e, &format!("failed to setup network for sandbox {id:?}"))
                })?;
        }
        let attach = async {
            if !network {
                return Ok(Vec::new());
            }
            self.network
                .attach(&id, &meta.netns_path, config)
                .await
                .map_err(|e| context(e, &format!("failed to setup network for sandbox {id:?}")))
        };
        let pause = self.start_pause(meta, config, &image, &files, runtime, made);
        let (ips, pid) = tokio::join!(attach, pause);
        let ips = ips?;
        let pid = pid?;
        if let Some((first, rest)) = ips.split_first() {
            meta.ip = first.clone();
            meta.additional_ips = rest.to_vec();
            self.save_sandbox_meta(meta).await?;
        }
        Ok(pid)
    }

    /// Create and start the pause container of sandbox `meta` (its record
    /// carrying `meta`); its pid.
    async fn start_pause(
        &self,
        meta: &SandboxMeta,
        config: &cri::PodSandboxConfig,
        image: &crate::core::Resolved,
        files: &SandboxFiles,
        runtime: (&str, &crate::config::RuntimeEntry),
        made: &mut Made,
    ) -> Result<u32, Status> {
        let id = meta.id.clone();
        let spec = spec::sandbox_spec(
            &id,
            config,
            &image.config,
            &meta.netns_path,
            files,
            &self.config,
        )?;
        let mut labels: HashMap<String, String> = config.labels.clone().into_iter().collect();
        labels.insert(store::KIND_LABEL.into(), store::KIND_SANDBOX.into());
        let snapshotter = self.config.snapshotter_for(runtime.1);
        self.create_container_record(
            &id,
            image,
            &self.config.sandbox_image,
            &spec,
            &snapshotter,
            runtime,
            labels,
            (store::SANDBOX_EXT, store::sandbox_ext(meta)),
        )
        .await?;
        made.record = true;
        let rootfs = self.rootfs(&snapshotter, &id).await?;
        let mut tasks = self.ctrd.tasks();
        tasks
            .create(CreateTaskRequest {
                container_id: id.clone(),
                rootfs,
                options: crate::core::runc_options(runtime.1),
                ..Default::default()
            })
            .await
            .map_err(|s| {
                context(
                    s,
                    &format!("failed to create containerd task for sandbox {id:?}"),
                )
            })?;
        made.task = true;
        let pid = tasks
            .start(StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            })
            .await
            .map_err(|s| context(s, &format!("failed to start sandbox container task {id:?}")))?
            .into_inner()
            .pid;
        Ok(pid)
    }

    /// Rewrite the sandbox metadata in its container record (the pod's IPs,
    /// known once CNI answered), for a restarted daemon to find.
    async fn save_sandbox_meta(&self, meta: &SandboxMeta) -> Result<(), Status> {
        use stevedore_api::services::containers::{Container, UpdateContainerRequest};
        let ext = store::sandbox_ext(meta);
        self.ctrd
            .containers()
            .update(UpdateContainerRequest {
                container: Some(Container {
                    id: meta.id.clone(),
                    extensions: [(store::SANDBOX_EXT.to_string(), ext)].into(),
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![format!("extensions.{}", store::SANDBOX_EXT)],
                }),
            })
            .await
            .map_err(|s| context(s, &format!("failed to save sandbox {:?} metadata", meta.id)))?;
        Ok(())
    }

    async fn undo_sandbox(&self, meta: &SandboxMeta, made: &Made) {
        if made.task {
            self.kill_and_delete(&meta.id).await;
        }
        if made.record {
            if let Err(e) = self.delete_container_record(&meta.id).await {
                tracing::warn!("cleanup of sandbox {}: {}", meta.id, e.message());
            }
        }
        if made.network {
            if let Err(e) = self.network.teardown(meta).await {
                tracing::warn!("network teardown of sandbox {}: {}", meta.id, e.message());
                if let Err(e) = self.network.remove_netns(&meta.netns_path).await {
                    tracing::warn!("netns of sandbox {}: {}", meta.id, e.message());
                }
            }
        }
        if let Some(shm) = &made.shm {
            unmount_shm(shm);
        }
        for d in made.dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// SIGKILL a task (all its processes), wait for it, delete it.
    pub async fn kill_and_delete(&self, id: &str) {
        let waiter = self.ctrd.spawn_wait(id);
        if self.ctrd.kill_task(id, SIGKILL, true).await.is_ok() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
        } else {
            waiter.abort();
        }
        self.ctrd.delete_task(id).await;
    }

    /// The sandbox image, pulled if it is not in the store yet.
    async fn ensure_sandbox_image(&self) -> Result<crate::core::Resolved, Status> {
        let name = self.config.sandbox_image.clone();
        match self.resolve_image(&name).await {
            Ok(i) => Ok(i),
            Err(s) if s.code() == tonic::Code::NotFound => {
                self.pull(&name, None, None)
                    .await
                    .map_err(|s| context(s, &format!("failed to get sandbox image {name:?}")))?;
                self.resolve_image(&name).await
            }
            Err(s) => Err(context(s, &format!("failed to get sandbox image {name:?}"))),
        }
    }

    pub async fn stop_pod_sandbox(
        &self,
        req: cri::StopPodSandboxRequest,
    ) -> Result<cri::StopPodSandboxResponse, Status> {
        let sb = match self.store.sandbox(&req.pod_sandbox_id) {
            Ok(s) => s,
            // the CRI's StopPodSandbox is idempotent: a sandbox already
            // gone is stopped (containerd 2.x)
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Ok(cri::StopPodSandboxResponse {})
            }
            Err(s) => return Err(s),
        };
        let _op = sb.op.lock().await;
        let id = sb.id();
        for c in self.store.containers_of(&id) {
            self.stop_container_inner(&c, 0)
                .await
                .map_err(|s| context(s, &format!("failed to stop container {:?}", c.meta.id)))?;
        }
        // one CONTAINER_STOPPED event per sandbox exit, as containerd: from
        // here unless the exit monitor saw the pause process go first
        let mut stopped_here = false;
        if sb.state() == SandboxState::Ready || sb.state() == SandboxState::Unknown {
            self.kill_and_delete(&id).await;
            stopped_here = sb.state() != SandboxState::NotReady;
            sb.set_state(SandboxState::NotReady);
        }
        let meta = sb.meta();
        let config = meta.config.clone().unwrap_or_default();
        if spec::pod_ns(&config).ipc != cri::NamespaceMode::Node {
            unmount_shm(&self.sandbox_files(&id).shm);
        }
        if !meta.netns_path.is_empty() {
            self.network.teardown(&meta).await.map_err(|s| {
                context(s, &format!("failed to destroy network for sandbox {id:?}"))
            })?;
        }
        if stopped_here {
            let status = self.sandbox_status(&sb).await;
            self.emit(
                &id,
                cri::ContainerEventType::ContainerStoppedEvent,
                Some(status),
                vec![],
            );
        }
        Ok(cri::StopPodSandboxResponse {})
    }

    pub async fn remove_pod_sandbox(
        &self,
        req: cri::RemovePodSandboxRequest,
    ) -> Result<cri::RemovePodSandboxResponse, Status> {
        let sb = match self.store.sandbox(&req.pod_sandbox_id) {
            Ok(s) => s,
            // kubelet retries removal: a sandbox already gone is removed
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Ok(cri::RemovePodSandboxResponse {})
            }
            Err(s) => return Err(s),
        };
        if sb.state() == SandboxState::Ready {
            self.stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: sb.id(),
            })
            .await?;
        }
        let _op = sb.op.lock().await;
        let id = sb.id();
        for c in self.store.containers_of(&id) {
            self.remove_container_inner(&c)
                .await
                .map_err(|s| context(s, &format!("failed to remove container {:?}", c.meta.id)))?;
        }
        // a sandbox whose stop did not finish the network teardown
        let meta = sb.meta();
        if !meta.netns_path.is_empty() {
            self.network.teardown(&meta).await?;
        }
        self.delete_container_record(&id).await?;
        let _ = std::fs::remove_dir_all(self.sandbox_dir(&id));
        let _ = std::fs::remove_dir_all(self.sandbox_state_dir(&id));
        self.store.remove_sandbox(&id);
        self.store.release(&meta.name);
        self.emit(
            &id,
            cri::ContainerEventType::ContainerDeletedEvent,
            None,
            vec![],
        );
        Ok(cri::RemovePodSandboxResponse {})
    }

    pub async fn sandbox_status(&self, sb: &Sandbox) -> cri::PodSandboxStatus {
        let meta = sb.meta();
        let config = meta.config.clone().unwrap_or_default();
        let state = sb.cri_state();
        let ns = spec::pod_ns(&config);
        let opts = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.clone())
            .unwrap_or(cri::NamespaceOption {
                network: ns.network as i32,
                pid: ns.pid as i32,
                ipc: ns.ipc as i32,
                ..Default::default()
            });
        let network = if ns.network == cri::NamespaceMode::Node || meta.ip.is_empty() {
            None
        } else {
            Some(cri::PodSandboxNetworkStatus {
                ip: meta.ip.clone(),
                additional_ips: meta
                    .additional_ips
                    .iter()
                    .map(|ip| cri::PodIp { ip: ip.clone() })
                    .collect(),
            })
        };
        cri::PodSandboxStatus {
            id: meta.id.clone(),
            metadata: config.metadata.clone(),
            state: state as i32,
            created_at: meta.created_at,
            network,
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(opts),
                }),
            }),
            labels: config.labels.clone(),
            annotations: config.annotations.clone(),
            runtime_handler: meta.runtime_handler.clone(),
        }
    }

    pub async fn pod_sandbox_status(
        &self,
        req: cri::PodSandboxStatusRequest,
    ) -> Result<cri::PodSandboxStatusResponse, Status> {
        let sb = self.store.sandbox(&req.pod_sandbox_id)?;
        let status = self.sandbox_status(&sb).await;
        let mut info = HashMap::new();
        if req.verbose {
            let meta = sb.meta();
            let (_, runtime_options, runtime_spec) = self.record_info(&meta.id).await;
            // containerd 1.6's SandboxInfo
            let v = serde_json::json!({
                "runtimeOptions": runtime_options,
                "config": meta.config,
                "runtimeSpec": runtime_spec,
                "pid": sb.pid(),
                "processStatus": if sb.state() == SandboxState::Ready { "running" } else { "stopped" },
                "netNamespaceClosed": meta.netns_path.is_empty() || !Path::new(&meta.netns_path).exists(),
                "image": self.config.sandbox_image,
                "snapshotKey": meta.id,
                "snapshotter": self.config.containerd.snapshotter,
                "runtimeHandler": meta.runtime_handler,
                "runtimeType": meta.runtime_type,
                "netNamespacePath": meta.netns_path,
            });
            info.insert("info".to_string(), v.to_string());
        }
        let mut containers = Vec::new();
        for c in self.store.containers_of(&sb.id()) {
            containers.push(self.container_status_of(&c).await);
        }
        Ok(cri::PodSandboxStatusResponse {
            status: Some(status),
            info,
            containers_statuses: containers,
            timestamp: store::now_nanos(),
        })
    }

    pub async fn list_pod_sandbox(
        &self,
        req: cri::ListPodSandboxRequest,
    ) -> Result<cri::ListPodSandboxResponse, Status> {
        let f = req.filter.unwrap_or_default();
        let mut items = Vec::new();
        for sb in self.store.sandboxes() {
            if !sb.matches(&f.id, &f.label_selector) {
                continue;
            }
            let state = sb.cri_state();
            if let Some(s) = &f.state {
                if s.state != state as i32 {
                    continue;
                }
            }
            let meta = sb.meta();
            let config = meta.config.clone().unwrap_or_default();
            items.push(cri::PodSandbox {
                id: meta.id.clone(),
                metadata: config.metadata.clone(),
                state: state as i32,
                created_at: meta.created_at,
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
                runtime_handler: meta.runtime_handler.clone(),
            });
        }
        items.sort_by_key(|p| std::cmp::Reverse(p.created_at));
        Ok(cri::ListPodSandboxResponse { items })
    }
}

/// hostname, hosts and resolv.conf for the pod (containerd's
/// `setupSandboxFiles`).
fn setup_files(config: &cri::PodSandboxConfig, f: &SandboxFiles) -> Result<(), Status> {
    let io = |what: &str, e: std::io::Error| Status::internal(format!("{what}: {e}"));
    let hostname = if config.hostname.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        config.hostname.clone()
    };
    std::fs::write(&f.hostname, format!("{hostname}\n"))
        .map_err(|e| io(&format!("failed to write hostname to {:?}", f.hostname), e))?;
    let hosts = std::fs::read("/etc/hosts").unwrap_or_else(|_| b"127.0.0.1\tlocalhost\n".to_vec());
    std::fs::write(&f.hosts, hosts).map_err(|e| {
        io(
            &format!("failed to generate sandbox hosts file {:?}", f.hosts),
            e,
        )
    })?;
    let resolv = match &config.dns_config {
        Some(d) => resolv_conf(&d.servers, &d.searches, &d.options),
        None => String::new(),
    };
    let content = if resolv.is_empty() {
        std::fs::read("/etc/resolv.conf").unwrap_or_default()
    } else {
        resolv.into_bytes()
    };
    std::fs::write(&f.resolv, content).map_err(|e| {
        io(
            &format!("failed to write resolv content to {:?}", f.resolv),
            e,
        )
    })?;
    Ok(())
}

/// containerd's `parseDNSOptions`.
pub fn resolv_conf(servers: &[String], searches: &[String], options: &[String]) -> String {
    let mut s = String::new();
    if !searches.is_empty() {
        s += &format!("search {}\n", searches.join(" "));
    }
    if !servers.is_empty() {
        s += &format!("nameserver {}\n", servers.join("\nnameserver "));
    }
    if !options.is_empty() {
        s += &format!("options {}\n", options.join(" "));
    }
    s
}

fn mount_shm(path: &str) -> Result<(), Status> {
    use rustix::mount::{mount, MountFlags};
    std::fs::create_dir_all(path)
        .map_err(|e| Status::internal(format!("failed to create sandbox shm: {e}")))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(|e| Status::internal(format!("failed to create sandbox shm: {e}")))?;
    let data = std::ffi::CString::new(format!("mode=1777,size={}", spec::SHM_SIZE))
        .map_err(|e| Status::internal(e.to_string()))?;
    mount(
        "shm",
        path,
        "tmpfs",
        MountFlags::NOEXEC | MountFlags::NOSUID | MountFlags::NODEV,
        data.as_c_str(),
    )
    .map_err(|e| Status::internal(format!("failed to mount sandbox shm: {e}")))
}

fn unmount_shm(path: &str) {
    use rustix::mount::{unmount, UnmountFlags};
    // stacked mounts: until none is left
    while unmount(path, UnmountFlags::DETACH).is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_like_containerd() {
        assert_eq!(
            resolv_conf(
                &["8.8.8.8".into(), "1.1.1.1".into()],
                &["svc.cluster.local".into()],
                &["ndots:5".into()]
            ),
            "search svc.cluster.local\nnameserver 8.8.8.8\nnameserver 1.1.1.1\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&[], &[], &[]), "");
    }
}
