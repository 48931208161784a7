//! The Version service.

use crate::GrpcService;
use stevedore_api::services::version::{
    version_server::{Version, VersionServer},
    VersionResponse,
};
use tonic::{Request, Response, Status};

/// The containerd API level stevedore serves, with stevedore's own version as
/// build metadata, so version-checking clients see a 1.6 API.
pub const VERSION: &str = concat!("v1.6.20+stevedore.", env!("CARGO_PKG_VERSION"));
/// The source revision, when the build knows it.
pub const REVISION: &str = match option_env!("STEVEDORE_REVISION") {
    Some(r) => r,
    None => "stevedore",
};

pub struct VersionService;

impl VersionService {
    pub fn grpc() -> GrpcService {
        GrpcService::new(crate::with_message_limits!(VersionServer::new(
            VersionService
        )))
    }
}

#[tonic::async_trait]
impl Version for VersionService {
    async fn version(&self, _req: Request<()>) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: VERSION.to_string(),
            revision: REVISION.to_string(),
        }))
    }
}
