//! The Images gRPC service over the metadata database.

use crate::convert::{descriptor_from_pb, descriptor_to_pb, timestamp};
use crate::exchange::Exchange;
use crate::gc::GcScheduler;
use crate::{blocking, namespace_of, GrpcService};
use std::sync::Arc;
// containerd publishes image events from the images service package
use stevedore_api::services::images::{
    images_server::{Images, ImagesServer},
    CreateImageRequest, CreateImageResponse, DeleteImageRequest, GetImageRequest, GetImageResponse,
    Image as PbImage, ListImagesRequest, ListImagesResponse, UpdateImageRequest,
    UpdateImageResponse,
};
use stevedore_api::services::images::{ImageCreate, ImageDelete, ImageUpdate};
use stevedore_api::status::to_status;
use stevedore_metadata::images::Image;
use stevedore_metadata::Db;
use tonic::{Request, Response, Status};

pub struct ImagesService {
    db: Arc<Db>,
    exchange: Exchange,
    /// Deleting with `sync` collects the image's garbage before returning.
    gc: Option<Arc<GcScheduler>>,
}

impl ImagesService {
    pub fn grpc(db: Arc<Db>, exchange: Exchange, gc: Option<Arc<GcScheduler>>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(ImagesServer::new(
            ImagesService { db, exchange, gc }
        )))
    }
}

fn to_pb(i: Image) -> PbImage {
    PbImage {
        name: i.name,
        labels: i.labels,
        target: Some(descriptor_to_pb(&i.target)),
        created_at: Some(timestamp(i.created_at)),
        updated_at: Some(timestamp(i.updated_at)),
    }
}

fn from_pb(i: PbImage) -> Result<Image, Status> {
    let target = i.target.as_ref().ok_or_else(|| {
        Status::invalid_argument(format!("image {:?}: target is required", i.name))
    })?;
    let target = descriptor_from_pb(target)
        .map_err(|e| to_status(e.context(format!("image {:?}: Target.Digest", i.name))))?;
    Ok(Image {
        name: i.name,
        labels: i.labels,
        target,
        created_at: 0,
        updated_at: 0,
    })
}

fn required(i: Option<PbImage>, op: &str) -> Result<PbImage, Status> {
    i.ok_or_else(|| Status::invalid_argument(format!("{op} image: image is required")))
}

#[tonic::async_trait]
impl Images for ImagesService {
    async fn get(
        &self,
        req: Request<GetImageRequest>,
    ) -> Result<Response<GetImageResponse>, Status> {
        let ns = namespace_of(&req)?;
        let name = req.into_inner().name;
        let db = self.db.clone();
        let img = blocking(move || db.get_image(&ns, &name)).await?;
        Ok(Response::new(GetImageResponse {
            image: Some(to_pb(img)),
        }))
    }

    async fn list(
        &self,
        req: Request<ListImagesRequest>,
    ) -> Result<Response<ListImagesResponse>, Status> {
        let ns = namespace_of(&req)?;
        let filters = req.into_inner().filters;
        let db = self.db.clone();
        let list = blocking(move || db.list_images(&ns, &filters)).await?;
        Ok(Response::new(ListImagesResponse {
            images: list.into_iter().map(to_pb).collect(),
        }))
    }

    async fn create(
        &self,
        req: Request<CreateImageRequest>,
    ) -> Result<Response<CreateImageResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        // containerd 2.x's source_date_epoch dates the record instead of now
        let at = r.source_date_epoch.as_ref().map(crate::convert::nanos);
        let img = from_pb(required(r.image, "create")?)?;
        let db = self.db.clone();
        let n = ns.clone();
        let created = blocking(move || db.create_image_at(&n, img, at)).await?;
        self.exchange.publish(
            &ns,
            "/images/create",
            &ImageCreate {
                name: created.name.clone(),
                labels: created.labels.clone(),
            },
        );
        Ok(Response::new(CreateImageResponse {
            image: Some(to_pb(created)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateImageRequest>,
    ) -> Result<Response<UpdateImageResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        // containerd 2.x's source_date_epoch dates the record instead of now
        let at = r.source_date_epoch.as_ref().map(crate::convert::nanos);
        let pb = required(r.image, "update")?;
        // a partial update that leaves the target alone may omit it, or send
        // an empty one (containerd's client always sends a target: `ctr
        // images label` sends one with no digest); only its annotations count
        let img = if !paths.is_empty() && !paths.iter().any(|p| p == "target") {
            let db = self.db.clone();
            let (n, name) = (ns.clone(), pb.name.clone());
            let mut target = blocking(move || db.get_image(&n, &name)).await?.target;
            if let Some(t) = pb.target {
                target.annotations = t.annotations.into_iter().collect();
            }
            Image {
                name: pb.name,
                labels: pb.labels,
                target,
                created_at: 0,
                updated_at: 0,
            }
        } else {
            from_pb(pb)?
        };
        let db = self.db.clone();
        let n = ns.clone();
        let updated = blocking(move || db.update_image_at(&n, img, &paths, at)).await?;
        self.exchange.publish(
            &ns,
            "/images/update",
            &ImageUpdate {
                name: updated.name.clone(),
                labels: updated.labels.clone(),
            },
        );
        Ok(Response::new(UpdateImageResponse {
            image: Some(to_pb(updated)),
        }))
    }

    async fn delete(&self, req: Request<DeleteImageRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let db = self.db.clone();
        let (n, name) = (ns.clone(), r.name.clone());
        let target = r.target.map(|t| t.digest);
        blocking(move || db.delete_image_if(&n, &name, target.as_deref())).await?;
        self.exchange
            .publish(&ns, "/images/delete", &ImageDelete { name: r.name });
        if r.sync {
            if let Some(gc) = &self.gc {
                gc.run_now().await.map_err(to_status)?;
            }
        }
        Ok(Response::new(()))
    }
}
