//! The Sandbox Controller service (`containerd.services.sandbox.v1.Controller`,
//! plugin `io.containerd.grpc.v1.sandbox-controllers`), as containerd 2.x's
//! `plugins/services/sandbox/controller_service.go`: each request names its
//! controller in `sandboxer`; an unknown name is NotFound (`failed to get
//! sandbox controller by <name>`). The service publishes containerd's three
//! sandbox events and nothing else: `/sandboxes/create` after Create,
//! `/sandboxes/start` after Start, `/sandboxes/exit` when a Wait returns
//! (containerd has no `/sandboxes/delete`; 2.1.9 fixed the topics, which
//! lacked their leading slash up to 2.1.4). As 2.1.9's, Create hands the
//! controller the request's rootfs mounts, netns path and annotations.
//!
//! One difference, for a containerd bug: containerd 2.1's client (and so
//! `ctr` 2.1's `sandboxes run`) stores sandboxes without a sandboxer and
//! calls Start without Create, which containerd 2.1 refuses (`sandbox
//! controller name can not be empty`), so `ctr sandboxes run` works against
//! no containerd 2.1. containerd 2.2's client fixed it by choosing a default
//! sandboxer on the client side; stevedored applies the default here: an
//! empty `sandboxer` means [`DEFAULT_SANDBOXER`], and `podsandbox` creates
//! a sandbox it is asked to start from its Store record.

use crate::exchange::Exchange;
use crate::sandbox::store::from_pb;
use crate::{namespace_of, GrpcService};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stevedore_api::events::{SandboxCreate, SandboxExit, SandboxStart};
use stevedore_api::services::sandbox::{
    controller_server::{Controller, ControllerServer},
    ControllerCreateRequest, ControllerCreateResponse, ControllerMetricsRequest,
    ControllerMetricsResponse, ControllerPlatformRequest, ControllerPlatformResponse,
    ControllerShutdownRequest, ControllerShutdownResponse, ControllerStartRequest,
    ControllerStartResponse, ControllerStatusRequest, ControllerStatusResponse,
    ControllerStopRequest, ControllerStopResponse, ControllerUpdateRequest,
    ControllerUpdateResponse, ControllerWaitRequest, ControllerWaitResponse,
};
use stevedore_api::status::to_status;
use stevedore_api::types::{Metric, Platform as PbPlatform};
use stevedore_metadata::sandboxes::Sandbox;
use stevedore_types::{Error, Mount, Platform, Result};
use tonic::{Request, Response, Status};

/// The controller an empty `sandboxer` means (see the module docs).
pub const DEFAULT_SANDBOXER: &str = "podsandbox";

/// What Create hands a controller (containerd's `sandbox.CreateOptions`).
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    /// The sandbox: the request's, or its Store record's when the request
    /// carries none.
    pub sandbox: Sandbox,
    /// Mounts that make the sandbox's root filesystem (none: the spec's root).
    pub rootfs: Vec<Mount>,
    /// Runtime options for the shim (none: the sandbox runtime's options).
    pub options: Option<prost_types::Any>,
    /// A network namespace to join (an absolute path), or empty.
    pub netns_path: String,
    pub annotations: HashMap<String, String>,
}

/// A started sandbox (containerd's `sandbox.ControllerInstance`).
#[derive(Debug, Clone)]
pub struct StartedSandbox {
    pub pid: u32,
    pub created_at: SystemTime,
    pub labels: HashMap<String, String>,
    /// Start created the sandbox first (it had no Create).
    pub created: bool,
}

/// How a sandbox ended.
#[derive(Debug, Clone, Copy)]
pub struct SandboxExitStatus {
    pub exit_status: u32,
    pub exited_at: Option<SystemTime>,
}

/// A sandbox's state (containerd's `sandbox.ControllerStatus`).
#[derive(Debug, Clone, Default)]
pub struct SandboxStatus {
    pub pid: u32,
    /// `SANDBOX_READY`, `SANDBOX_NOTREADY` or `SANDBOX_UNKNOWN`, as
    /// containerd's podsandbox spells them.
    pub state: String,
    pub info: HashMap<String, String>,
    pub created_at: Option<SystemTime>,
    pub exited_at: Option<SystemTime>,
}

/// A sandbox controller (containerd's `core/sandbox.Controller`).
#[tonic::async_trait]
pub trait SandboxController: Send + Sync {
    async fn create(&self, ns: &str, req: CreateRequest) -> Result<()>;
    async fn start(&self, ns: &str, id: &str) -> Result<StartedSandbox>;
    async fn platform(&self, ns: &str, id: &str) -> Result<Platform>;
    async fn stop(&self, ns: &str, id: &str, timeout: Duration) -> Result<()>;
    async fn wait(&self, ns: &str, id: &str) -> Result<SandboxExitStatus>;
    async fn status(&self, ns: &str, id: &str, verbose: bool) -> Result<SandboxStatus>;
    async fn shutdown(&self, ns: &str, id: &str) -> Result<()>;
    async fn metrics(&self, ns: &str, id: &str) -> Result<Metric>;
    async fn update(&self, ns: &str, id: &str, sandbox: Sandbox, fields: &[String]) -> Result<()>;
}

/// A controller as a plugin instance (`io.containerd.podsandbox.controller.v1`
/// or `io.containerd.sandbox.controller.v1`), so the service can collect
/// every controller by type.
pub struct ControllerPlugin(pub Arc<dyn SandboxController>);

/// The gRPC Controller service.
pub struct ControllerService {
    controllers: BTreeMap<String, Arc<dyn SandboxController>>,
    db: Arc<stevedore_metadata::Db>,
    exchange: Exchange,
}

impl ControllerService {
    pub fn grpc(
        controllers: BTreeMap<String, Arc<dyn SandboxController>>,
        db: Arc<stevedore_metadata::Db>,
        exchange: Exchange,
    ) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(ControllerServer::new(
            ControllerService {
                controllers,
                db,
                exchange,
            }
        )))
    }

    fn controller(&self, name: &str) -> std::result::Result<&Arc<dyn SandboxController>, Status> {
        let name = if name.is_empty() {
            DEFAULT_SANDBOXER
        } else {
            name
        };
        self.controllers.get(name).ok_or_else(|| {
            to_status(Error::not_found(format!(
                "failed to get sandbox controller by {name}"
            )))
        })
    }
}

fn g<T>(r: Result<T>) -> std::result::Result<T, Status> {
    r.map_err(to_status)
}

fn ts(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(Into::into)
}

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn create(
        &self,
        req: Request<ControllerCreateRequest>,
    ) -> std::result::Result<Response<ControllerCreateResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let ctrl = self.controller(&r.sandboxer)?;
        let sandbox = match r.sandbox {
            Some(s) => from_pb(s),
            None => {
                let (db, n, id) = (self.db.clone(), ns.clone(), r.sandbox_id.clone());
                crate::blocking(move || db.get_sandbox(&n, &id)).await?
            }
        };
        if sandbox.id != r.sandbox_id {
            return Err(Status::invalid_argument(format!(
                "create sandbox {:?}: the request's sandbox is {:?}",
                r.sandbox_id, sandbox.id
            )));
        }
        let create = CreateRequest {
            sandbox,
            rootfs: r
                .rootfs
                .into_iter()
                .map(crate::diff::mount_from_pb)
                .collect(),
            options: r.options,
            netns_path: r.netns_path,
            annotations: r.annotations,
        };
        g(ctrl.create(&ns, create).await)?;
        self.exchange.publish(
            &ns,
            "/sandboxes/create",
            &SandboxCreate {
                sandbox_id: r.sandbox_id.clone(),
            },
        );
        Ok(Response::new(ControllerCreateResponse {
            sandbox_id: r.sandbox_id,
        }))
    }

    async fn start(
        &self,
        req: Request<ControllerStartRequest>,
    ) -> std::result::Result<Response<ControllerStartResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let ctrl = self.controller(&r.sandboxer)?;
        let started = g(ctrl.start(&ns, &r.sandbox_id).await)?;
        let id = r.sandbox_id;
        if started.created {
            self.exchange.publish(
                &ns,
                "/sandboxes/create",
                &SandboxCreate {
                    sandbox_id: id.clone(),
                },
            );
        }
        self.exchange.publish(
            &ns,
            "/sandboxes/start",
            &SandboxStart {
                sandbox_id: id.clone(),
            },
        );
        Ok(Response::new(ControllerStartResponse {
            sandbox_id: id,
            pid: started.pid,
            created_at: Some(started.created_at.into()),
            labels: started.labels,
            address: String::new(),
            version: 0,
        }))
    }

    async fn platform(
        &self,
        req: Request<ControllerPlatformRequest>,
    ) -> std::result::Result<Response<ControllerPlatformResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let p = g(self
            .controller(&r.sandboxer)?
            .platform(&ns, &r.sandbox_id)
            .await)?;
        Ok(Response::new(ControllerPlatformResponse {
            platform: Some(PbPlatform {
                os: p.os,
                architecture: p.architecture,
                variant: p.variant,
                os_version: p.os_version,
            }),
        }))
    }

    async fn stop(
        &self,
        req: Request<ControllerStopRequest>,
    ) -> std::result::Result<Response<ControllerStopResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let timeout = Duration::from_secs(u64::from(r.timeout_secs));
        g(self
            .controller(&r.sandboxer)?
            .stop(&ns, &r.sandbox_id, timeout)
            .await)?;
        Ok(Response::new(ControllerStopResponse {}))
    }

    async fn wait(
        &self,
        req: Request<ControllerWaitRequest>,
    ) -> std::result::Result<Response<ControllerWaitResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let exit = g(self
            .controller(&r.sandboxer)?
            .wait(&ns, &r.sandbox_id)
            .await)?;
        self.exchange.publish(
            &ns,
            "/sandboxes/exit",
            &SandboxExit {
                sandbox_id: r.sandbox_id,
                exit_status: exit.exit_status,
                exited_at: ts(exit.exited_at),
            },
        );
        Ok(Response::new(ControllerWaitResponse {
            exit_status: exit.exit_status,
            exited_at: ts(exit.exited_at),
        }))
    }

    async fn status(
        &self,
        req: Request<ControllerStatusRequest>,
    ) -> std::result::Result<Response<ControllerStatusResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = g(self
            .controller(&r.sandboxer)?
            .status(&ns, &r.sandbox_id, r.verbose)
            .await)?;
        Ok(Response::new(ControllerStatusResponse {
            sandbox_id: r.sandbox_id,
            pid: s.pid,
            state: s.state,
            info: s.info,
            created_at: ts(s.created_at),
            exited_at: ts(s.exited_at),
            // containerd answers an empty Any rather than none
            extra: Some(prost_types::Any::default()),
            address: String::new(),
            version: 0,
        }))
    }

    async fn shutdown(
        &self,
        req: Request<ControllerShutdownRequest>,
    ) -> std::result::Result<Response<ControllerShutdownResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        g(self
            .controller(&r.sandboxer)?
            .shutdown(&ns, &r.sandbox_id)
            .await)?;
        Ok(Response::new(ControllerShutdownResponse {}))
    }

    async fn metrics(
        &self,
        req: Request<ControllerMetricsRequest>,
    ) -> std::result::Result<Response<ControllerMetricsResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let m = g(self
            .controller(&r.sandboxer)?
            .metrics(&ns, &r.sandbox_id)
            .await)?;
        Ok(Response::new(ControllerMetricsResponse {
            metrics: Some(m),
        }))
    }

    async fn update(
        &self,
        req: Request<ControllerUpdateRequest>,
    ) -> std::result::Result<Response<ControllerUpdateResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let ctrl = self.controller(&r.sandboxer)?;
        let Some(sandbox) = r.sandbox else {
            return Err(Status::invalid_argument(format!(
                "update sandbox {:?}: sandbox can not be nil",
                r.sandbox_id
            )));
        };
        g(ctrl
            .update(&ns, &r.sandbox_id, from_pb(sandbox), &r.fields)
            .await)?;
        Ok(Response::new(ControllerUpdateResponse {}))
    }
}
