//! Connecting to stevedored, with the namespace on every call.

use anyhow::{anyhow, Result};
use std::path::Path;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

/// Adds the `containerd-namespace` header to each request.
#[derive(Clone)]
pub struct WithNamespace(MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for WithNamespace {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert(stevedore_api::NAMESPACE_HEADER, self.0.clone());
        Ok(req)
    }
}

/// A connection to the daemon.
#[derive(Clone)]
pub struct Conn {
    pub channel: Channel,
    pub namespace: String,
}

impl Conn {
    pub async fn open(address: &Path, namespace: &str) -> Result<Conn> {
        let channel = stevedore_api::client::connect(address).await.map_err(|e| {
            anyhow!(
                "cannot connect to stevedored at {}: is it running? ({})",
                address.display(),
                root_cause(&e)
            )
        })?;
        Ok(Conn {
            channel,
            namespace: namespace.to_string(),
        })
    }

    /// The channel wrapped with the namespace interceptor.
    pub fn svc(&self) -> Result<(Channel, WithNamespace)> {
        let v = MetadataValue::try_from(self.namespace.as_str())
            .map_err(|_| anyhow!("invalid namespace {:?}", self.namespace))?;
        Ok((self.channel.clone(), WithNamespace(v)))
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Turn a gRPC status into a CLI error that says what failed.
pub fn rpc_error(what: &str, s: Status) -> anyhow::Error {
    let code = format!("{:?}", s.code());
    // messages that passed through containerd's errdefs already end with
    // the code's phrase (`...: unknown`): say it once
    let phrase = stevedore_api::status::kind_of(s.code()).as_str();
    if s.message().ends_with(&format!(": {phrase}")) {
        anyhow!("{what}: {}", s.message())
    } else {
        anyhow!("{what}: {} ({code})", s.message())
    }
}

/// Tag a request with a lease (`containerd-lease` header) so what it
/// creates is held by that lease.
pub fn with_lease<T>(
    lease: &MetadataValue<tonic::metadata::Ascii>,
    mut r: Request<T>,
) -> Request<T> {
    r.metadata_mut().insert("containerd-lease", lease.clone());
    r
}

/// Mounts as the API sends them, as the mount helpers take them.
pub fn from_api_mounts(m: Vec<stevedore_api::types::Mount>) -> Vec<stevedore_types::Mount> {
    m.into_iter()
        .map(|m| stevedore_types::Mount {
            kind: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}
