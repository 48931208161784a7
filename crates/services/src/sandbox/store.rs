//! The Sandbox Store service (`containerd.services.sandbox.v1.Store`,
//! plugin `io.containerd.grpc.v1.sandboxes`) over the store plugin
//! `io.containerd.sandbox.store.v1.local` (the metadata database's
//! `sandboxes` table). As containerd's store service, it publishes no events:
//! `/sandboxes/create|start|exit` belong to the sandbox controllers.

use crate::containers::{any_in, any_out};
use crate::{blocking, namespace_of, GrpcService};
use std::sync::Arc;
use stevedore_api::services::sandbox::{
    store_server::{Store, StoreServer},
    StoreCreateRequest, StoreCreateResponse, StoreDeleteRequest, StoreDeleteResponse,
    StoreGetRequest, StoreGetResponse, StoreListRequest, StoreListResponse, StoreUpdateRequest,
    StoreUpdateResponse,
};
use stevedore_api::types::{sandbox::Runtime as PbRuntime, Sandbox as PbSandbox};
use stevedore_metadata::sandboxes::{Sandbox, SandboxRuntime};
use stevedore_metadata::Db;
use tonic::{Request, Response, Status};

/// The sandbox store plugin's instance (`io.containerd.sandbox.store.v1.local`).
pub struct SandboxStore {
    db: Arc<Db>,
}

impl SandboxStore {
    pub fn new(db: Arc<Db>) -> SandboxStore {
        SandboxStore { db }
    }
}

/// The gRPC front of a [`SandboxStore`].
pub struct SandboxStoreService {
    store: Arc<SandboxStore>,
}

impl SandboxStoreService {
    pub fn grpc(store: Arc<SandboxStore>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(StoreServer::new(
            SandboxStoreService { store }
        )))
    }

    fn db(&self) -> Arc<Db> {
        self.store.db.clone()
    }
}

pub(crate) fn from_pb(s: PbSandbox) -> Sandbox {
    let rt = s.runtime.unwrap_or_default();
    Sandbox {
        id: s.sandbox_id,
        runtime: SandboxRuntime {
            name: rt.name,
            options: rt.options.map(any_in),
        },
        spec: s.spec.map(any_in),
        labels: s.labels,
        extensions: s
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_in(v)))
            .collect(),
        sandboxer: s.sandboxer,
        ..Default::default()
    }
}

fn to_pb(s: Sandbox) -> PbSandbox {
    PbSandbox {
        sandbox_id: s.id,
        runtime: Some(PbRuntime {
            name: s.runtime.name,
            options: s.runtime.options.map(any_out),
        }),
        spec: s.spec.map(any_out),
        labels: s.labels,
        created_at: Some(s.created_at.into()),
        updated_at: Some(s.updated_at.into()),
        extensions: s
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_out(v)))
            .collect(),
        sandboxer: s.sandboxer,
    }
}

fn required(s: Option<PbSandbox>, op: &str) -> Result<Sandbox, Status> {
    s.map(from_pb)
        .ok_or_else(|| Status::invalid_argument(format!("{op} sandbox: sandbox is required")))
}

#[tonic::async_trait]
impl Store for SandboxStoreService {
    async fn create(
        &self,
        req: Request<StoreCreateRequest>,
    ) -> Result<Response<StoreCreateResponse>, Status> {
        let ns = namespace_of(&req)?;
        let s = required(req.into_inner().sandbox, "create")?;
        let db = self.db();
        let created = blocking(move || db.create_sandbox(&ns, s)).await?;
        Ok(Response::new(StoreCreateResponse {
            sandbox: Some(to_pb(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<StoreUpdateRequest>,
    ) -> Result<Response<StoreUpdateResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = required(r.sandbox, "update")?;
        let db = self.db();
        let updated = blocking(move || db.update_sandbox(&ns, s, &r.fields)).await?;
        Ok(Response::new(StoreUpdateResponse {
            sandbox: Some(to_pb(updated)),
        }))
    }

    async fn delete(
        &self,
        req: Request<StoreDeleteRequest>,
    ) -> Result<Response<StoreDeleteResponse>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().sandbox_id;
        let db = self.db();
        blocking(move || db.delete_sandbox(&ns, &id)).await?;
        Ok(Response::new(StoreDeleteResponse {}))
    }

    async fn list(
        &self,
        req: Request<StoreListRequest>,
    ) -> Result<Response<StoreListResponse>, Status> {
        let ns = namespace_of(&req)?;
        let filters = req.into_inner().filters;
        let db = self.db();
        let list = blocking(move || db.list_sandboxes(&ns, &filters)).await?;
        Ok(Response::new(StoreListResponse {
            list: list.into_iter().map(to_pb).collect(),
        }))
    }

    async fn get(
        &self,
        req: Request<StoreGetRequest>,
    ) -> Result<Response<StoreGetResponse>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().sandbox_id;
        let db = self.db();
        let s = blocking(move || db.get_sandbox(&ns, &id)).await?;
        Ok(Response::new(StoreGetResponse {
            sandbox: Some(to_pb(s)),
        }))
    }
}
