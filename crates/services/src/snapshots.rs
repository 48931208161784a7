//! The Snapshots service over the snapshotter plugins. The request's
//! `snapshotter` field picks the plugin (empty means `overlayfs`, ctr's
//! default); the namespace header scopes keys through
//! [`stevedore_snapshots::Namespaced`]. Events: `/snapshot/prepare`,
//! `/snapshot/commit`, `/snapshot/remove`.

use crate::exchange::Exchange;
use crate::{blocking, namespace_of, GrpcService};
use futures::Stream;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;
use stevedore_api::events::{SnapshotCommit, SnapshotPrepare, SnapshotRemove};
use stevedore_api::services::snapshots::{
    snapshots_server::{Snapshots, SnapshotsServer},
    CleanupRequest, CommitSnapshotRequest, Info as PbInfo, Kind as PbKind, ListSnapshotsRequest,
    ListSnapshotsResponse, MountsRequest, MountsResponse, PrepareSnapshotRequest,
    PrepareSnapshotResponse, RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse,
    UpdateSnapshotRequest, UpdateSnapshotResponse, UsageRequest, UsageResponse,
    ViewSnapshotRequest, ViewSnapshotResponse,
};
use stevedore_api::status::to_status;
use stevedore_api::types::Mount as PbMount;
use stevedore_metadata::Db;
use stevedore_snapshots::{Info, Kind, Namespaced};
use stevedore_types::filters::Filter;
use stevedore_types::{Error, Mount};
use tonic::{Request, Response, Status};

/// The snapshotter used when a request names none.
pub const DEFAULT_SNAPSHOTTER: &str = "overlayfs";

/// Serves Snapshots for every loaded snapshotter plugin.
pub struct SnapshotsService {
    snapshotters: BTreeMap<String, Namespaced>,
    exchange: Exchange,
    /// Leases hold the snapshots created under them (`containerd-lease` header).
    db: Option<Arc<Db>>,
}

impl SnapshotsService {
    pub fn grpc(
        snapshotters: BTreeMap<String, Namespaced>,
        exchange: Exchange,
        db: Option<Arc<Db>>,
    ) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(SnapshotsServer::new(
            SnapshotsService {
                snapshotters,
                exchange,
                db,
            }
        )))
    }

    /// Add a snapshot to the request's lease, if it has one.
    async fn lease<T>(
        &self,
        req: &Request<T>,
        ns: &str,
        snapshotter: &str,
        key: &str,
    ) -> Result<(), Status> {
        let (Some(db), Some(lease)) = (self.db.clone(), crate::content::lease_of(req)) else {
            return Ok(());
        };
        let snapshotter = if snapshotter.is_empty() {
            DEFAULT_SNAPSHOTTER
        } else {
            snapshotter
        };
        let r = stevedore_metadata::leases::Resource {
            id: key.to_string(),
            kind: format!("snapshots/{snapshotter}"),
        };
        let ns = ns.to_string();
        blocking(move || db.add_lease_resource(&ns, &lease, &r)).await
    }

    /// A snapshot brings its namespace into being, as in containerd.
    async fn ensure_namespace(&self, ns: &str) -> Result<(), Status> {
        let Some(db) = self.db.clone() else {
            return Ok(());
        };
        let ns = ns.to_string();
        blocking(move || db.ensure_namespace(&ns).map(drop)).await
    }

    fn get(&self, name: &str) -> Result<Namespaced, Status> {
        let name = if name.is_empty() {
            DEFAULT_SNAPSHOTTER
        } else {
            name
        };
        self.snapshotters.get(name).cloned().ok_or_else(|| {
            to_status(Error::invalid(format!(
                "snapshotter not loaded: {name}: loaded snapshotters are {:?}",
                self.snapshotters.keys().collect::<Vec<_>>()
            )))
        })
    }
}

fn to_pb_mount(m: Mount) -> PbMount {
    PbMount {
        r#type: m.kind,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

fn mounts_pb(ms: Vec<Mount>) -> Vec<PbMount> {
    ms.into_iter().map(to_pb_mount).collect()
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A snapshot record on the wire.
pub fn to_pb_info(i: Info) -> PbInfo {
    PbInfo {
        name: i.name,
        parent: i.parent,
        kind: match i.kind {
            Kind::View => PbKind::View,
            Kind::Active => PbKind::Active,
            Kind::Committed => PbKind::Committed,
        } as i32,
        created_at: Some(ts(i.created)),
        updated_at: Some(ts(i.updated)),
        labels: i.labels,
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotsService {
    async fn prepare(
        &self,
        req: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let ns = namespace_of(&req)?;
        self.ensure_namespace(&ns).await?;
        self.lease(&req, &ns, &req.get_ref().snapshotter, &req.get_ref().key)
            .await?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let (n, key, parent) = (ns.clone(), r.key.clone(), r.parent.clone());
        let mounts = blocking(move || s.prepare(&n, &key, &parent, r.labels)).await?;
        self.exchange.publish(
            &ns,
            "/snapshot/prepare",
            &SnapshotPrepare {
                key: r.key,
                parent: r.parent,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(PrepareSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn view(
        &self,
        req: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let ns = namespace_of(&req)?;
        self.ensure_namespace(&ns).await?;
        self.lease(&req, &ns, &req.get_ref().snapshotter, &req.get_ref().key)
            .await?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let mounts = blocking(move || s.view(&ns, &r.key, &r.parent, r.labels)).await?;
        Ok(Response::new(ViewSnapshotResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn mounts(
        &self,
        req: Request<MountsRequest>,
    ) -> Result<Response<MountsResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let mounts = blocking(move || s.mounts(&ns, &r.key)).await?;
        Ok(Response::new(MountsResponse {
            mounts: mounts_pb(mounts),
        }))
    }

    async fn commit(&self, req: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        self.lease(&req, &ns, &req.get_ref().snapshotter, &req.get_ref().name)
            .await?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let (n, name, key) = (ns.clone(), r.name.clone(), r.key.clone());
        blocking(move || s.commit(&n, &name, &key, r.labels)).await?;
        self.exchange.publish(
            &ns,
            "/snapshot/commit",
            &SnapshotCommit {
                key: r.key,
                name: r.name,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let (n, key) = (ns.clone(), r.key.clone());
        blocking(move || s.remove(&n, &key)).await?;
        self.exchange.publish(
            &ns,
            "/snapshot/remove",
            &SnapshotRemove {
                key: r.key,
                snapshotter: r.snapshotter,
            },
        );
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        req: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let info = blocking(move || s.stat(&ns, &r.key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(to_pb_info(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update snapshot: info is required"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let local = Info {
            name: info.name,
            parent: info.parent,
            kind: Kind::Active, // not updatable; the stored kind wins
            labels: info.labels,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        };
        let updated = blocking(move || s.update(&ns, local, &paths)).await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(to_pb_info(updated)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        req: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let filter = Filter::parse_all(&r.filters).map_err(to_status)?;
        let infos = blocking(move || s.list(&ns, &filter)).await?;
        let batches: Vec<Result<ListSnapshotsResponse, Status>> = infos
            .chunks(100)
            .map(|c| {
                Ok(ListSnapshotsResponse {
                    info: c.iter().cloned().map(to_pb_info).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(&self, req: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let s = self.get(&r.snapshotter)?;
        let u = blocking(move || s.usage(&ns, &r.key)).await?;
        Ok(Response::new(UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, req: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let _ = namespace_of(&req)?;
        let s = self.get(&req.into_inner().snapshotter)?;
        blocking(move || s.cleanup()).await?;
        Ok(Response::new(()))
    }
}
