//! The Containers service over the metadata database, with containerd's
//! `/containers/create|update|delete` events.

use crate::exchange::Exchange;
use crate::{blocking, namespace_of, GrpcService};
use std::pin::Pin;
use std::sync::Arc;
use stevedore_api::events::{
    container_create::Runtime as EvRuntime, ContainerCreate, ContainerDelete, ContainerUpdate,
};
use stevedore_api::services::containers::{
    container::Runtime as PbRuntime,
    containers_server::{Containers, ContainersServer},
    Container as PbContainer, CreateContainerRequest, CreateContainerResponse,
    DeleteContainerRequest, GetContainerRequest, GetContainerResponse, ListContainerMessage,
    ListContainersRequest, ListContainersResponse, UpdateContainerRequest, UpdateContainerResponse,
};
use stevedore_metadata::containers::{AnyBytes, Container, Runtime};
use stevedore_metadata::Db;
use tonic::{Request, Response, Status};

pub struct ContainersService {
    db: Arc<Db>,
    exchange: Exchange,
}

impl ContainersService {
    pub fn grpc(db: Arc<Db>, exchange: Exchange) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(ContainersServer::new(
            ContainersService { db, exchange }
        )))
    }
}

pub(crate) fn any_in(a: prost_types::Any) -> AnyBytes {
    AnyBytes {
        type_url: a.type_url,
        value: a.value,
    }
}

pub(crate) fn any_out(a: AnyBytes) -> prost_types::Any {
    prost_types::Any {
        type_url: a.type_url,
        value: a.value,
    }
}

fn from_pb(c: PbContainer) -> Container {
    let rt = c.runtime.unwrap_or_default();
    Container {
        id: c.id,
        labels: c.labels,
        image: c.image,
        runtime: Runtime {
            name: rt.name,
            options: rt.options.map(any_in),
        },
        spec: c.spec.map(any_in),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_in(v)))
            .collect(),
        sandbox_id: c.sandbox,
        ..Default::default()
    }
}

fn to_pb(c: Container) -> PbContainer {
    PbContainer {
        id: c.id,
        labels: c.labels,
        image: c.image,
        runtime: Some(PbRuntime {
            name: c.runtime.name,
            options: c.runtime.options.map(any_out),
        }),
        spec: c.spec.map(any_out),
        snapshotter: c.snapshotter,
        snapshot_key: c.snapshot_key,
        created_at: Some(c.created_at.into()),
        updated_at: Some(c.updated_at.into()),
        extensions: c
            .extensions
            .into_iter()
            .map(|(k, v)| (k, any_out(v)))
            .collect(),
        sandbox: c.sandbox_id,
    }
}

/// `/containers/create` for a container record just created (also by the
/// sandbox controller, whose sandboxes are containers).
pub(crate) fn publish_create(exchange: &Exchange, ns: &str, c: &Container) {
    exchange.publish(
        ns,
        "/containers/create",
        &ContainerCreate {
            id: c.id.clone(),
            image: c.image.clone(),
            runtime: Some(EvRuntime {
                name: c.runtime.name.clone(),
                options: c.runtime.options.clone().map(any_out),
            }),
        },
    );
}

/// `/containers/delete` for a container record just deleted.
pub(crate) fn publish_delete(exchange: &Exchange, ns: &str, id: String) {
    exchange.publish(ns, "/containers/delete", &ContainerDelete { id });
}

type ListStream =
    Pin<Box<dyn futures::Stream<Item = Result<ListContainerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Containers for ContainersService {
    async fn get(
        &self,
        req: Request<GetContainerRequest>,
    ) -> Result<Response<GetContainerResponse>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().id;
        let db = self.db.clone();
        let c = blocking(move || db.get_container(&ns, &id)).await?;
        Ok(Response::new(GetContainerResponse {
            container: Some(to_pb(c)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<ListContainersResponse>, Status> {
        let ns = namespace_of(&req)?;
        let filters = req.into_inner().filters;
        let db = self.db.clone();
        let list = blocking(move || db.list_containers(&ns, &filters)).await?;
        Ok(Response::new(ListContainersResponse {
            containers: list.into_iter().map(to_pb).collect(),
        }))
    }

    type ListStreamStream = ListStream;

    async fn list_stream(
        &self,
        req: Request<ListContainersRequest>,
    ) -> Result<Response<Self::ListStreamStream>, Status> {
        let ns = namespace_of(&req)?;
        let filters = req.into_inner().filters;
        let db = self.db.clone();
        let list = blocking(move || db.list_containers(&ns, &filters)).await?;
        let stream = futures::stream::iter(list.into_iter().map(|c| {
            Ok(ListContainerMessage {
                container: Some(to_pb(c)),
            })
        }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(
        &self,
        req: Request<CreateContainerRequest>,
    ) -> Result<Response<CreateContainerResponse>, Status> {
        let ns = namespace_of(&req)?;
        let c = from_pb(req.into_inner().container.unwrap_or_default());
        let db = self.db.clone();
        let n = ns.clone();
        let created = blocking(move || db.create_container(&n, c)).await?;
        publish_create(&self.exchange, &ns, &created);
        Ok(Response::new(CreateContainerResponse {
            container: Some(to_pb(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateContainerRequest>,
    ) -> Result<Response<UpdateContainerResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let Some(c) = r.container else {
            return Err(Status::invalid_argument(
                "update container: container is required",
            ));
        };
        let c = from_pb(c);
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let db = self.db.clone();
        let n = ns.clone();
        let updated = blocking(move || db.update_container(&n, c, &paths)).await?;
        self.exchange.publish(
            &ns,
            "/containers/update",
            &ContainerUpdate {
                id: updated.id.clone(),
                image: updated.image.clone(),
                labels: updated.labels.clone(),
                snapshot_key: updated.snapshot_key.clone(),
            },
        );
        Ok(Response::new(UpdateContainerResponse {
            container: Some(to_pb(updated)),
        }))
    }

    async fn delete(&self, req: Request<DeleteContainerRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let id = req.into_inner().id;
        let db = self.db.clone();
        let (n, i) = (ns.clone(), id.clone());
        blocking(move || db.delete_container(&n, &i)).await?;
        publish_delete(&self.exchange, &ns, id);
        Ok(Response::new(()))
    }
}
