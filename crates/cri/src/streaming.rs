//! The streaming server (exec, attach, port-forward URLs).

pub struct StreamServer;

use crate::core::Cri;
use stevedore_api::cri;
use tonic::Status;

impl Cri {
    pub async fn stream_exec(&self, _r: cri::ExecRequest) -> Result<cri::ExecResponse, Status> {
        Err(Status::unavailable("the streaming server is not running"))
    }
    pub async fn stream_attach(
        &self,
        _r: cri::AttachRequest,
    ) -> Result<cri::AttachResponse, Status> {
        Err(Status::unavailable("the streaming server is not running"))
    }
    pub async fn stream_port_forward(
        &self,
        _r: cri::PortForwardRequest,
    ) -> Result<cri::PortForwardResponse, Status> {
        Err(Status::unavailable("the streaming server is not running"))
    }
}
