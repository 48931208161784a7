//! grpc.health.v1: the daemon is SERVING once it accepts connections.

use crate::events::async_stream;
use crate::GrpcService;
use futures::Stream;
use std::pin::Pin;
use stevedore_api::services::health::{
    health_check_response::ServingStatus,
    health_server::{Health, HealthServer},
    HealthCheckRequest, HealthCheckResponse,
};
use tonic::{Request, Response, Status};

pub struct HealthService;

impl HealthService {
    pub fn grpc() -> GrpcService {
        GrpcService::new(crate::with_message_limits!(HealthServer::new(
            HealthService
        )))
    }
}

fn serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(serving()))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Ok(Response::new(async_stream(|tx| async move {
            if tx.send(Ok(serving())).await.is_ok() {
                // the status never changes while the daemon runs
                tx.closed().await;
            }
        })))
    }
}
