//! The Namespaces service over the metadata database.

use crate::exchange::Exchange;
use crate::{blocking, GrpcService};
use std::collections::HashMap;
use std::sync::Arc;
use stevedore_api::events::{NamespaceCreate, NamespaceDelete, NamespaceUpdate};
use stevedore_api::services::namespaces::{
    namespaces_server::{Namespaces, NamespacesServer},
    CreateNamespaceRequest, CreateNamespaceResponse, DeleteNamespaceRequest, GetNamespaceRequest,
    GetNamespaceResponse, ListNamespacesRequest, ListNamespacesResponse, Namespace as PbNamespace,
    UpdateNamespaceRequest, UpdateNamespaceResponse,
};
use stevedore_metadata::namespaces::Namespace;
use stevedore_metadata::Db;
use tonic::{Request, Response, Status};

pub struct NamespacesService {
    db: Arc<Db>,
    exchange: Exchange,
}

impl NamespacesService {
    pub fn grpc(db: Arc<Db>, exchange: Exchange) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(NamespacesServer::new(
            NamespacesService { db, exchange }
        )))
    }
}

fn to_pb(n: Namespace) -> PbNamespace {
    PbNamespace {
        name: n.name,
        labels: n.labels,
    }
}

fn required(ns: Option<PbNamespace>, op: &str) -> Result<PbNamespace, Status> {
    ns.ok_or_else(|| Status::invalid_argument(format!("{op} namespace: namespace is required")))
}

#[tonic::async_trait]
impl Namespaces for NamespacesService {
    async fn get(
        &self,
        req: Request<GetNamespaceRequest>,
    ) -> Result<Response<GetNamespaceResponse>, Status> {
        let db = self.db.clone();
        let name = req.into_inner().name;
        // containerd answers Get with the labels it has, empty for a
        // namespace that does not exist (clients read their namespace's
        // default-runtime label at start-up before anything created it)
        let ns = blocking(move || match db.get_namespace(&name) {
            Err(e) if e.kind == stevedore_types::ErrorKind::NotFound => Ok(Namespace {
                name,
                labels: HashMap::new(),
            }),
            r => r,
        })
        .await?;
        Ok(Response::new(GetNamespaceResponse {
            namespace: Some(to_pb(ns)),
        }))
    }

    async fn list(
        &self,
        _req: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let db = self.db.clone();
        let list = blocking(move || db.list_namespaces()).await?;
        Ok(Response::new(ListNamespacesResponse {
            namespaces: list.into_iter().map(to_pb).collect(),
        }))
    }

    async fn create(
        &self,
        req: Request<CreateNamespaceRequest>,
    ) -> Result<Response<CreateNamespaceResponse>, Status> {
        let ns = required(req.into_inner().namespace, "create")?;
        let db = self.db.clone();
        let created = blocking(move || db.create_namespace(&ns.name, &ns.labels)).await?;
        self.exchange.publish(
            &created.name,
            "/namespaces/create",
            &NamespaceCreate {
                name: created.name.clone(),
                labels: created.labels.clone(),
            },
        );
        Ok(Response::new(CreateNamespaceResponse {
            namespace: Some(to_pb(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<UpdateNamespaceResponse>, Status> {
        let r = req.into_inner();
        let ns = required(r.namespace, "update")?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let db = self.db.clone();
        let labels: HashMap<String, String> = ns.labels;
        let name = ns.name;
        let updated = blocking(move || db.update_namespace(&name, &labels, &paths)).await?;
        self.exchange.publish(
            &updated.name,
            "/namespaces/update",
            &NamespaceUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone(),
            },
        );
        Ok(Response::new(UpdateNamespaceResponse {
            namespace: Some(to_pb(updated)),
        }))
    }

    async fn delete(&self, req: Request<DeleteNamespaceRequest>) -> Result<Response<()>, Status> {
        let name = req.into_inner().name;
        let db = self.db.clone();
        let n = name.clone();
        blocking(move || db.delete_namespace(&n)).await?;
        self.exchange.publish(
            &name,
            "/namespaces/delete",
            &NamespaceDelete { name: name.clone() },
        );
        Ok(Response::new(()))
    }
}
