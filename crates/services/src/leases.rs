//! The Leases service over the metadata database. Deleting a lease with
//! `sync` runs garbage collection before returning.

use crate::gc::GcScheduler;
use crate::{blocking, namespace_of, GrpcService};
use std::sync::Arc;
use stevedore_api::services::leases::{
    leases_server::{Leases, LeasesServer},
    AddResourceRequest, CreateRequest, CreateResponse, DeleteRequest, DeleteResourceRequest,
    Lease as PbLease, ListRequest, ListResourcesRequest, ListResourcesResponse, ListResponse,
    Resource as PbResource,
};
use stevedore_api::status::to_status;
use stevedore_metadata::leases::{Lease, Resource};
use stevedore_metadata::Db;
use stevedore_types::filters::Filter;
use tonic::{Request, Response, Status};

pub struct LeasesService {
    db: Arc<Db>,
    gc: Arc<GcScheduler>,
}

impl LeasesService {
    pub fn grpc(db: Arc<Db>, gc: Arc<GcScheduler>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(LeasesServer::new(
            LeasesService { db, gc }
        )))
    }
}

/// containerd's `leases.WithRandomID`: `<nanoseconds>-<4 base64url chars>`.
fn random_id() -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let u = uuid::Uuid::new_v4();
    let b = u.as_bytes();
    let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
    let enc: String = (0..4)
        .map(|i| B64[((n >> (18 - 6 * i)) & 63) as usize] as char)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{nanos}-{enc}")
}

fn to_pb(l: Lease) -> PbLease {
    PbLease {
        id: l.id,
        created_at: Some(prost_types::Timestamp::from(l.created_at)),
        labels: l.labels,
    }
}

fn resource(r: Option<PbResource>, op: &str) -> Result<Resource, Status> {
    let r = r.ok_or_else(|| Status::invalid_argument(format!("{op}: resource is required")))?;
    Ok(Resource {
        id: r.id,
        kind: r.r#type,
    })
}

#[tonic::async_trait]
impl Leases for LeasesService {
    async fn create(
        &self,
        req: Request<CreateRequest>,
    ) -> Result<Response<CreateResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let id = if r.id.is_empty() { random_id() } else { r.id };
        let db = self.db.clone();
        let lease = blocking(move || db.create_lease(&ns, &id, &r.labels)).await?;
        Ok(Response::new(CreateResponse {
            lease: Some(to_pb(lease)),
        }))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let db = self.db.clone();
        blocking(move || db.delete_lease(&ns, &r.id)).await?;
        if r.sync {
            self.gc.run_now().await.map_err(to_status)?;
        }
        Ok(Response::new(()))
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let ns = namespace_of(&req)?;
        let filter = Filter::parse_all(&req.into_inner().filters).map_err(to_status)?;
        let db = self.db.clone();
        let mut leases = blocking(move || db.list_leases(&ns, &filter)).await?;
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Response::new(ListResponse {
            leases: leases.into_iter().map(to_pb).collect(),
        }))
    }

    async fn add_resource(&self, req: Request<AddResourceRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let res = resource(r.resource, "add lease resource")?;
        let db = self.db.clone();
        blocking(move || db.add_lease_resource(&ns, &r.id, &res)).await?;
        Ok(Response::new(()))
    }

    async fn delete_resource(
        &self,
        req: Request<DeleteResourceRequest>,
    ) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let res = resource(r.resource, "delete lease resource")?;
        let db = self.db.clone();
        blocking(move || db.delete_lease_resource(&ns, &r.id, &res)).await?;
        Ok(Response::new(()))
    }

    async fn list_resources(
        &self,
        req: Request<ListResourcesRequest>,
    ) -> Result<Response<ListResourcesResponse>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().id;
        let db = self.db.clone();
        let list = blocking(move || db.list_lease_resources(&ns, &id)).await?;
        Ok(Response::new(ListResourcesResponse {
            resources: list
                .into_iter()
                .map(|r| PbResource {
                    id: r.id,
                    r#type: r.kind,
                })
                .collect(),
        }))
    }
}
