//! The gRPC face of the CRI: `runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService`, each request waiting until recovery after a
//! start has finished, then handed to the [`Cri`] methods.

use crate::core::Cri;
use std::pin::Pin;
use std::sync::Arc;
use stevedore_api::cri;
use stevedore_api::cri::image_service_server::ImageService;
use stevedore_api::cri::runtime_service_server::RuntimeService;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Kubernetes' CRI version this plugin serves.
pub const KUBE_API_VERSION: &str = "0.1.0";
pub const RUNTIME_API_VERSION: &str = "v1";

#[derive(Clone)]
pub struct CriService(pub Arc<Cri>);

impl CriService {
    async fn cri(&self) -> Result<&Arc<Cri>, Status> {
        let mut rx = self.0.ready.subscribe();
        if !*rx.borrow() {
            let wait = rx.wait_for(|r| *r);
            tokio::time::timeout(std::time::Duration::from_secs(60), wait)
                .await
                .map_err(|_| Status::unavailable("the CRI plugin is still recovering its state"))?
                .map_err(|_| Status::unavailable("the CRI plugin stopped"))?;
        }
        Ok(&self.0)
    }
}

type R<T> = Result<Response<T>, Status>;

fn ok<T>(r: Result<T, Status>) -> R<T> {
    r.map(Response::new)
}

#[tonic::async_trait]
impl RuntimeService for CriService {
    async fn version(&self, _r: Request<cri::VersionRequest>) -> R<cri::VersionResponse> {
        Ok(Response::new(cri::VersionResponse {
            version: KUBE_API_VERSION.into(),
            runtime_name: "stevedore".into(),
            runtime_version: stevedore_services::version::VERSION.into(),
            runtime_api_version: RUNTIME_API_VERSION.into(),
        }))
    }
    async fn run_pod_sandbox(
        &self,
        r: Request<cri::RunPodSandboxRequest>,
    ) -> R<cri::RunPodSandboxResponse> {
        ok(self.cri().await?.run_pod_sandbox(r.into_inner()).await)
    }
    async fn stop_pod_sandbox(
        &self,
        r: Request<cri::StopPodSandboxRequest>,
    ) -> R<cri::StopPodSandboxResponse> {
        ok(self.cri().await?.stop_pod_sandbox(r.into_inner()).await)
    }
    async fn remove_pod_sandbox(
        &self,
        r: Request<cri::RemovePodSandboxRequest>,
    ) -> R<cri::RemovePodSandboxResponse> {
        ok(self.cri().await?.remove_pod_sandbox(r.into_inner()).await)
    }
    async fn pod_sandbox_status(
        &self,
        r: Request<cri::PodSandboxStatusRequest>,
    ) -> R<cri::PodSandboxStatusResponse> {
        ok(self.cri().await?.pod_sandbox_status(r.into_inner()).await)
    }
    async fn list_pod_sandbox(
        &self,
        r: Request<cri::ListPodSandboxRequest>,
    ) -> R<cri::ListPodSandboxResponse> {
        ok(self.cri().await?.list_pod_sandbox(r.into_inner()).await)
    }
    async fn create_container(
        &self,
        r: Request<cri::CreateContainerRequest>,
    ) -> R<cri::CreateContainerResponse> {
        ok(self.cri().await?.create_container(r.into_inner()).await)
    }
    async fn start_container(
        &self,
        r: Request<cri::StartContainerRequest>,
    ) -> R<cri::StartContainerResponse> {
        ok(self.cri().await?.start_container(r.into_inner()).await)
    }
    async fn stop_container(
        &self,
        r: Request<cri::StopContainerRequest>,
    ) -> R<cri::StopContainerResponse> {
        ok(self.cri().await?.stop_container(r.into_inner()).await)
    }
    async fn remove_container(
        &self,
        r: Request<cri::RemoveContainerRequest>,
    ) -> R<cri::RemoveContainerResponse> {
        ok(self.cri().await?.remove_container(r.into_inner()).await)
    }
    async fn list_containers(
        &self,
        r: Request<cri::ListContainersRequest>,
    ) -> R<cri::ListContainersResponse> {
        ok(self.cri().await?.list_containers(r.into_inner()).await)
    }
    async fn container_status(
        &self,
        r: Request<cri::ContainerStatusRequest>,
    ) -> R<cri::ContainerStatusResponse> {
        ok(self.cri().await?.container_status(r.into_inner()).await)
    }
    async fn update_container_resources(
        &self,
        r: Request<cri::UpdateContainerResourcesRequest>,
    ) -> R<cri::UpdateContainerResourcesResponse> {
        ok(self
            .cri()
            .await?
            .update_container_resources(r.into_inner())
            .await)
    }
    async fn reopen_container_log(
        &self,
        r: Request<cri::ReopenContainerLogRequest>,
    ) -> R<cri::ReopenContainerLogResponse> {
        ok(self.cri().await?.reopen_container_log(r.into_inner()).await)
    }
    async fn exec_sync(&self, r: Request<cri::ExecSyncRequest>) -> R<cri::ExecSyncResponse> {
        ok(self.cri().await?.exec_sync(r.into_inner()).await)
    }
    async fn exec(&self, r: Request<cri::ExecRequest>) -> R<cri::ExecResponse> {
        ok(self.cri().await?.stream_exec(r.into_inner()).await)
    }
    async fn attach(&self, r: Request<cri::AttachRequest>) -> R<cri::AttachResponse> {
        ok(self.cri().await?.stream_attach(r.into_inner()).await)
    }
    async fn port_forward(
        &self,
        r: Request<cri::PortForwardRequest>,
    ) -> R<cri::PortForwardResponse> {
        ok(self.cri().await?.stream_port_forward(r.into_inner()).await)
    }
    async fn container_stats(
        &self,
        r: Request<cri::ContainerStatsRequest>,
    ) -> R<cri::ContainerStatsResponse> {
        ok(self.cri().await?.container_stats(r.into_inner()).await)
    }
    async fn list_container_stats(
        &self,
        r: Request<cri::ListContainerStatsRequest>,
    ) -> R<cri::ListContainerStatsResponse> {
        ok(self.cri().await?.list_container_stats(r.into_inner()).await)
    }
    async fn pod_sandbox_stats(
        &self,
        r: Request<cri::PodSandboxStatsRequest>,
    ) -> R<cri::PodSandboxStatsResponse> {
        ok(self.cri().await?.pod_sandbox_stats(r.into_inner()).await)
    }
    async fn list_pod_sandbox_stats(
        &self,
        r: Request<cri::ListPodSandboxStatsRequest>,
    ) -> R<cri::ListPodSandboxStatsResponse> {
        ok(self
            .cri()
            .await?
            .list_pod_sandbox_stats(r.into_inner())
            .await)
    }
    async fn update_runtime_config(
        &self,
        _r: Request<cri::UpdateRuntimeConfigRequest>,
    ) -> R<cri::UpdateRuntimeConfigResponse> {
        // kubelet sends the pod CIDR; containerd only uses it for a CNI
        // config template, which stevedore does not render
        Ok(Response::new(cri::UpdateRuntimeConfigResponse {}))
    }
    async fn status(&self, r: Request<cri::StatusRequest>) -> R<cri::StatusResponse> {
        ok(self.cri().await?.status(r.into_inner()).await)
    }
    async fn checkpoint_container(
        &self,
        _r: Request<cri::CheckpointContainerRequest>,
    ) -> R<cri::CheckpointContainerResponse> {
        Err(Status::unimplemented(
            "CheckpointContainer is not supported by stevedore (containerd 1.6 does not have it either)",
        ))
    }

    type GetContainerEventsStream =
        Pin<Box<dyn Stream<Item = Result<cri::ContainerEventResponse, Status>> + Send>>;

    async fn get_container_events(
        &self,
        _r: Request<cri::GetEventsRequest>,
    ) -> R<Self::GetContainerEventsStream> {
        let rx = self.cri().await?.events.subscribe();
        let s = tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(|e| e.ok().map(Ok));
        Ok(Response::new(Box::pin(s)))
    }
    async fn list_metric_descriptors(
        &self,
        _r: Request<cri::ListMetricDescriptorsRequest>,
    ) -> R<cri::ListMetricDescriptorsResponse> {
        Err(Status::unimplemented(
            "ListMetricDescriptors is not supported (containerd 1.6 and 2.1 do not serve it either)",
        ))
    }
    async fn list_pod_sandbox_metrics(
        &self,
        _r: Request<cri::ListPodSandboxMetricsRequest>,
    ) -> R<cri::ListPodSandboxMetricsResponse> {
        Err(Status::unimplemented(
            "ListPodSandboxMetrics is not supported (containerd 1.6 and 2.1 do not serve it either)",
        ))
    }
    async fn runtime_config(
        &self,
        _r: Request<cri::RuntimeConfigRequest>,
    ) -> R<cri::RuntimeConfigResponse> {
        let (_, rt) = self
            .cri()
            .await?
            .config
            .runtime("")
            .map_err(Status::failed_precondition)?;
        let systemd = rt
            .options
            .get("SystemdCgroup")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        Ok(Response::new(cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration {
                cgroup_driver: if systemd {
                    cri::CgroupDriver::Systemd
                } else {
                    cri::CgroupDriver::Cgroupfs
                } as i32,
            }),
        }))
    }
}

use tokio_stream::StreamExt;

#[tonic::async_trait]
impl ImageService for CriService {
    async fn list_images(&self, r: Request<cri::ListImagesRequest>) -> R<cri::ListImagesResponse> {
        ok(self.cri().await?.list_images(r.into_inner()).await)
    }
    async fn image_status(
        &self,
        r: Request<cri::ImageStatusRequest>,
    ) -> R<cri::ImageStatusResponse> {
        ok(self.cri().await?.image_status(r.into_inner()).await)
    }
    async fn pull_image(&self, r: Request<cri::PullImageRequest>) -> R<cri::PullImageResponse> {
        ok(self.cri().await?.pull_image(r.into_inner()).await)
    }
    async fn remove_image(
        &self,
        r: Request<cri::RemoveImageRequest>,
    ) -> R<cri::RemoveImageResponse> {
        ok(self.cri().await?.remove_image(r.into_inner()).await)
    }
    async fn image_fs_info(
        &self,
        _r: Request<cri::ImageFsInfoRequest>,
    ) -> R<cri::ImageFsInfoResponse> {
        ok(self.cri().await?.image_fs_info().await)
    }
}

impl Cri {
    pub async fn status(&self, req: cri::StatusRequest) -> Result<cri::StatusResponse, Status> {
        let net = self.network.status();
        let conditions = vec![
            cri::RuntimeCondition {
                r#type: "RuntimeReady".into(),
                status: true,
                ..Default::default()
            },
            cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: net.is_ok(),
                reason: if net.is_ok() {
                    String::new()
                } else {
                    "NetworkPluginNotReady".into()
                },
                message: match &net {
                    Ok(()) => String::new(),
                    Err(e) => format!("Network plugin returns error: {e}"),
                },
            },
        ];
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let address = self.address.display().to_string();
            info.insert(
                "config".to_string(),
                self.config
                    .containerd_json(
                        &self.root.display().to_string(),
                        &self.state.display().to_string(),
                        &address,
                    )
                    .to_string(),
            );
            info.insert(
                "lastCNILoadStatus".to_string(),
                match &net {
                    Ok(()) => "OK".into(),
                    Err(e) => e.clone(),
                },
            );
        }
        let runtime_handlers = self
            .config
            .containerd
            .runtimes
            .keys()
            .map(|name| cri::RuntimeHandler {
                name: name.clone(),
                features: Some(handler_features()),
            })
            .chain(std::iter::once(cri::RuntimeHandler {
                name: String::new(),
                features: Some(handler_features()),
            }))
            .collect();
        Ok(cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions }),
            info,
            runtime_handlers,
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
            }),
        })
    }
}

/// What every handler (all run runc through the shim) can do.
fn handler_features() -> cri::RuntimeHandlerFeatures {
    cri::RuntimeHandlerFeatures {
        recursive_read_only_mounts: crate::features::recursive_read_only_mounts(),
        user_namespaces: false,
    }
}
