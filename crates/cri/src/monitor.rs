//! The CRI's view kept true: task exits and OOMs from the event stream
//! (with reconnects), and recovery after a daemon restart (pods and
//! containers rebuilt from their records, log readers reattached to
//! running containers, exits that happened while the daemon was down
//! recorded).

use crate::core::Cri;
use crate::io::{ContainerIo, Fifos};
use crate::store::{self, Container, ContainerMeta, Sandbox, SandboxMeta, SandboxState};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use stevedore_api::containerd::v1::types::Status as TaskStatus;
use stevedore_api::cri;
use stevedore_api::events::{TaskExit, TaskOom};
use stevedore_api::services::containers::ListContainersRequest;
use stevedore_api::services::events::SubscribeRequest;

impl Cri {
    /// Rebuild the store from the daemon's records, then follow events.
    pub async fn start_background(self: Arc<Self>) {
        self.start_streaming().await;
        // the daemon serves its socket once every plugin is initialised
        let mut delay = Duration::from_millis(20);
        loop {
            match self.recover().await {
                Ok(()) => break,
                Err(e)
                    if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown =>
                {
                    tracing::debug!("cri: waiting for the daemon's API: {}", e.message());
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) => {
                    tracing::error!("cri: recovery failed: {}", e.message());
                    break;
                }
            }
        }
        self.ready.send_replace(true);
        tokio::spawn(self.clone().follow_events());
    }

    async fn follow_events(self: Arc<Self>) {
        loop {
            let stream = self
                .ctrd
                .events()
                .subscribe(SubscribeRequest {
                    filters: vec![format!(
                        "namespace=={},topic~=\"^/tasks/\"",
                        crate::client::K8S_NAMESPACE
                    )],
                })
                .await;
            let mut stream = match stream {
                Ok(s) => s.into_inner(),
                Err(e) => {
                    tracing::debug!("cri: subscribe: {}", e.message());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // exits that happened while not subscribed
            self.reconcile().await;
            while let Ok(Some(env)) = stream.message().await {
                let Some(ev) = env.event else { continue };
                match env.topic.as_str() {
                    "/tasks/exit" => {
                        if let Ok(e) = TaskExit::decode(ev.value.as_slice()) {
                            if e.id == e.container_id {
                                let at = store::nanos_or_now(e.exited_at);
                                let me = self.clone();
                                tokio::spawn(async move {
                                    me.task_exited(&e.container_id, e.exit_status, at).await
                                });
                            }
                        }
                    }
                    "/tasks/oom" => {
                        if let Ok(e) = TaskOom::decode(ev.value.as_slice()) {
                            if let Ok(c) = self.store.container(&e.container_id) {
                                if c.meta.id == e.container_id {
                                    let _ = c.update(|s| s.reason = "OOMKilled".into());
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn task_exited(&self, id: &str, code: u32, at: i64) {
        if let Some(c) = self
            .store
            .containers()
            .into_iter()
            .find(|c| c.meta.id == id)
        {
            self.container_exited(&c, code, at).await;
            return;
        }
        if let Some(sb) = self.store.sandboxes().into_iter().find(|s| s.id() == id) {
            self.sandbox_exited(&sb, at).await;
        }
    }

    async fn sandbox_exited(&self, sb: &Sandbox, at: i64) {
        {
            let mut st = store::lock(&sb.state);
            if st.0 == SandboxState::NotReady {
                return;
            }
            st.0 = SandboxState::NotReady;
            st.1.exited_at = at;
        }
        self.ctrd.delete_task(&sb.id()).await;
        let status = self.sandbox_status(sb).await;
        self.emit(
            &sb.id(),
            cri::ContainerEventType::ContainerStoppedEvent,
            Some(status),
            vec![],
        );
    }

    /// Compare what the store believes runs with the daemon's tasks.
    async fn reconcile(&self) {
        for c in self.store.containers() {
            if c.status().state() != cri::ContainerState::ContainerRunning {
                continue;
            }
            if let Some((code, at)) = self.task_gone(&c.meta.id).await {
                self.container_exited(&c, code, at).await;
            }
        }
        for sb in self.store.sandboxes() {
            if sb.state() != SandboxState::Ready {
                continue;
            }
            if let Some((_, at)) = self.task_gone(&sb.id()).await {
                self.sandbox_exited(&sb, at).await;
            }
        }
    }

    /// `Some((exit code, exited at))` if task `id` is not running.
    async fn task_gone(&self, id: &str) -> Option<(u32, i64)> {
        match self.ctrd.task_process(id).await {
            Ok(p) => {
                let p = p?;
                (p.status == TaskStatus::Stopped as i32)
                    .then(|| (p.exit_status, store::nanos_or_now(p.exited_at)))
            }
            Err(s) if s.code() == tonic::Code::NotFound => Some((255, store::now_nanos())),
            Err(_) => None,
        }
    }

    /// Running pid of task `id`, if it runs.
    async fn task_pid(&self, id: &str) -> Option<u32> {
        let p = self.ctrd.task_process(id).await.ok()??;
        (p.status == TaskStatus::Running as i32 || p.status == TaskStatus::Paused as i32)
            .then_some(p.pid)
    }

    /// Rebuild pods and containers from the container records.
    async fn recover(&self) -> Result<(), tonic::Status> {
        let list = self
            .ctrd
            .containers()
            .list(ListContainersRequest { filters: vec![] })
            .await?
            .into_inner()
            .containers;
        let mut sandboxes = Vec::new();
        let mut containers = Vec::new();
        for rec in list {
            if let Some(ext) = rec.extensions.get(store::SANDBOX_EXT) {
                match SandboxMeta::decode(ext.value.as_slice()) {
                    Ok(m) => sandboxes.push(m),
                    Err(e) => tracing::warn!("cri: sandbox {}: bad metadata: {e}", rec.id),
                }
            } else if let Some(ext) = rec.extensions.get(store::CONTAINER_EXT) {
                match ContainerMeta::decode(ext.value.as_slice()) {
                    Ok(m) => containers.push(m),
                    Err(e) => tracing::warn!("cri: container {}: bad metadata: {e}", rec.id),
                }
            }
        }
        for meta in sandboxes {
            let id = meta.id.clone();
            let pid = self.task_pid(&id).await;
            let state = if pid.is_some() {
                SandboxState::Ready
            } else {
                self.ctrd.delete_task(&id).await;
                SandboxState::NotReady
            };
            let _ = self.store.reserve(&meta.name, &id);
            let sb = Arc::new(Sandbox::new(meta, state));
            store::lock(&sb.state).1.pid = pid.unwrap_or(0);
            self.store.add_sandbox(sb);
        }
        for meta in containers {
            let id = meta.id.clone();
            let dir = self.container_dir(&id);
            let status = store::read_status(&dir);
            let _ = self.store.reserve(&meta.name, &id);
            let c = Arc::new(Container::new(meta, status, &dir));
            match c.status().state() {
                cri::ContainerState::ContainerRunning => match self.task_pid(&id).await {
                    Some(_) => self.reattach_io(&c),
                    None => {
                        let (code, at) = self
                            .task_gone(&id)
                            .await
                            .unwrap_or((255, store::now_nanos()));
                        self.store.add_container(c.clone());
                        self.container_exited(&c, code, at).await;
                        continue;
                    }
                },
                cri::ContainerState::ContainerCreated => {}
                _ => {
                    self.ctrd.delete_task(&id).await;
                }
            }
            self.store.add_container(c);
        }
        Ok(())
    }

    fn reattach_io(&self, c: &Container) {
        let fifos = Fifos {
            dir: self.container_state_dir(&c.meta.id).join("io"),
            stdin: c.meta.stdin.clone(),
            stdout: c.meta.stdout.clone(),
            stderr: c.meta.stderr.clone(),
        };
        match ContainerIo::new(fifos, &c.meta.log_path) {
            Ok(io) => {
                io.start(self.config.max_container_log_line_size);
                *store::lock(&c.io) = Some(Arc::new(io));
            }
            Err(e) => tracing::warn!("cri: reopen log of {}: {e}", c.meta.id),
        }
    }
}
