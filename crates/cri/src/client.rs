//! The CRI plugin is a client of the daemon's own API, as containerd's CRI is
//! a client of containerd: every container, task, snapshot and image it
//! makes goes through the same services `ctr` uses (so events, leases and
//! the GC see them), over the daemon's socket, in the `k8s.io` namespace.

use std::path::PathBuf;
use stevedore_api::containerd::v1::types::Process;
use stevedore_api::services::containers::containers_client::ContainersClient;
use stevedore_api::services::content::content_client::ContentClient;
use stevedore_api::services::content::ReadContentRequest;
use stevedore_api::services::events::events_client::EventsClient;
use stevedore_api::services::images::images_client::ImagesClient;
use stevedore_api::services::leases::leases_client::LeasesClient;
use stevedore_api::services::snapshots::snapshots_client::SnapshotsClient;
use stevedore_api::services::stevedore_transfer::transfer_client::TransferClient;
use stevedore_api::services::tasks::tasks_client::TasksClient;
use stevedore_api::services::tasks::{
    DeleteTaskRequest, GetRequest, KillRequest, WaitRequest, WaitResponse,
};
use tonic::codegen::InterceptedService;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic::{Request, Status};

/// containerd's CRI namespace.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Adds the namespace header to each request.
#[derive(Clone)]
pub struct Ns(MetadataValue<Ascii>);

impl tonic::service::Interceptor for Ns {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(stevedore_api::NAMESPACE_HEADER, self.0.clone());
        Ok(req)
    }
}

type Svc = InterceptedService<Channel, Ns>;

/// A lazily connected channel to the daemon, in one namespace.
#[derive(Clone)]
pub struct Ctrd {
    channel: Channel,
    ns: Ns,
}

impl Ctrd {
    /// A client of the daemon at `socket`; it connects on first use, so it
    /// can be made while the daemon is still starting.
    pub fn new(socket: PathBuf, namespace: &str) -> Result<Ctrd, String> {
        let ns = MetadataValue::try_from(namespace)
            .map_err(|_| format!("invalid namespace {namespace:?}"))?;
        let channel = stevedore_api::client::connect_lazy(&socket).map_err(|e| e.to_string())?;
        Ok(Ctrd {
            channel,
            ns: Ns(ns),
        })
    }

    pub fn containers(&self) -> ContainersClient<Svc> {
        ContainersClient::with_interceptor(self.channel.clone(), self.ns.clone())
    }
    pub fn tasks(&self) -> TasksClient<Svc> {
        TasksClient::with_interceptor(self.channel.clone(), self.ns.clone())
            .max_decoding_message_size(stevedore_types::limits::MAX_RECV_MESSAGE_SIZE)
    }
    pub fn images(&self) -> ImagesClient<Svc> {
        ImagesClient::with_interceptor(self.channel.clone(), self.ns.clone())
            .max_decoding_message_size(stevedore_types::limits::MAX_RECV_MESSAGE_SIZE)
    }
    pub fn snapshots(&self) -> SnapshotsClient<Svc> {
        SnapshotsClient::with_interceptor(self.channel.clone(), self.ns.clone())
    }
    pub fn content(&self) -> ContentClient<Svc> {
        ContentClient::with_interceptor(self.channel.clone(), self.ns.clone())
    }
    pub fn leases(&self) -> LeasesClient<Svc> {
        LeasesClient::with_interceptor(self.channel.clone(), self.ns.clone())
    }
    pub fn events(&self) -> EventsClient<Svc> {
        EventsClient::with_interceptor(self.channel.clone(), self.ns.clone())
    }
    pub fn transfer(&self) -> TransferClient<Svc> {
        TransferClient::with_interceptor(self.channel.clone(), self.ns.clone())
    }

    /// Wait for the task of container `id` on a task of its own, so that it
    /// can be signalled meanwhile.
    pub fn spawn_wait(
        &self,
        id: &str,
    ) -> tokio::task::JoinHandle<Result<tonic::Response<WaitResponse>, Status>> {
        let mut tasks = self.tasks();
        let id = id.to_string();
        tokio::spawn(async move {
            tasks
                .wait(WaitRequest {
                    container_id: id,
                    exec_id: String::new(),
                })
                .await
        })
    }

    /// Send `signal` to the task of container `id` (with `all`, to every
    /// process in it).
    pub async fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<(), Status> {
        self.tasks()
            .kill(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all,
            })
            .await
            .map(|_| ())
    }

    /// The init process of container `id`'s task.
    pub async fn task_process(&self, id: &str) -> Result<Option<Process>, Status> {
        let r = self
            .tasks()
            .get(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            })
            .await?;
        Ok(r.into_inner().process)
    }

    /// Delete the task of container `id` if there is one: cleanup, so a
    /// failure (most often: no task) is ignored.
    pub async fn delete_task(&self, id: &str) {
        let _ = self
            .tasks()
            .delete(DeleteTaskRequest {
                container_id: id.to_string(),
            })
            .await;
    }

    /// A whole blob from the content store (manifests and configs: small).
    pub async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, Status> {
        let mut stream = self
            .content()
            .read(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            })
            .await
            .map_err(|s| context(s, &format!("read content {digest}")))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| context(s, &format!("read content {digest}")))?
        {
            if out.len() + chunk.data.len() > stevedore_types::limits::MAX_CONFIG_SIZE as usize {
                return Err(Status::resource_exhausted(format!(
                    "content {digest} is larger than a manifest or config may be"
                )));
            }
            out.extend_from_slice(&chunk.data);
        }
        Ok(out)
    }
}

/// Tag a request with a lease so what it creates is held by that lease.
pub fn with_lease<T>(lease: &str, mut r: Request<T>) -> Request<T> {
    if let Ok(v) = MetadataValue::try_from(lease) {
        r.metadata_mut().insert("containerd-lease", v);
    }
    r
}

/// Keep a status's code and say what was being done.
pub fn context(s: Status, what: &str) -> Status {
    Status::new(s.code(), format!("{what}: {}", s.message()))
}
