//! The Introspection service: the plugin records in init order (with filters
//! on `type` and `id`) and the server's UUID, persisted under the plugin root.

use crate::GrpcService;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use stevedore_api::google::rpc::Status as RpcStatus;
use stevedore_api::services::introspection::{
    introspection_server::{Introspection, IntrospectionServer},
    Plugin, PluginsRequest, PluginsResponse, ServerResponse,
};
use stevedore_api::status::{code_of, IntoStatus};
use stevedore_api::types::Platform as PbPlatform;
use stevedore_plugin::{status_error, PluginRecord};
use stevedore_types::filters::Filter;
use stevedore_types::Error;
use tonic::{Request, Response, Status};

pub struct IntrospectionService {
    records: Arc<OnceLock<Vec<PluginRecord>>>,
    uuid_path: PathBuf,
    uuid: tokio::sync::Mutex<Option<String>>,
}

impl IntrospectionService {
    pub fn grpc(records: Arc<OnceLock<Vec<PluginRecord>>>, root: PathBuf) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(IntrospectionServer::new(
            IntrospectionService {
                records,
                uuid_path: root.join("uuid"),
                uuid: tokio::sync::Mutex::new(None),
            }
        )))
    }
}

/// Convert a plugin record to its wire form.
pub fn to_pb(r: &PluginRecord) -> Plugin {
    Plugin {
        r#type: r.kind.clone(),
        id: r.id.clone(),
        requires: r.requires.clone(),
        platforms: r
            .platforms
            .iter()
            .map(|p| PbPlatform {
                os: p.os.clone(),
                architecture: p.architecture.clone(),
                variant: p.variant.clone(),
                os_version: p.os_version.clone(),
            })
            .collect(),
        exports: r.exports.clone().into_iter().collect(),
        capabilities: r.capabilities.clone(),
        init_err: status_error(&r.status).map(|(kind, message)| RpcStatus {
            code: code_of(kind) as i32,
            message,
            details: Vec::new(),
        }),
    }
}

/// Read the persisted server UUID, creating it on first use (write temp,
/// fsync, rename, so a crash never leaves a torn UUID).
fn load_or_create_uuid(path: &std::path::Path) -> Result<String, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim().to_string();
            uuid::Uuid::parse_str(&s).map_err(|e| {
                Error::internal(format!(
                    "server uuid file {} is corrupt: {e}",
                    path.display()
                ))
            })?;
            Ok(s)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let u = uuid::Uuid::new_v4().to_string();
            let dir = path.parent().expect("uuid path has a parent");
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(".uuid.tmp");
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(u.as_bytes())?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(u)
        }
        Err(e) => Err(Error::from(e).context(format!("read {}", path.display()))),
    }
}

#[tonic::async_trait]
impl Introspection for IntrospectionService {
    async fn plugins(
        &self,
        req: Request<PluginsRequest>,
    ) -> Result<Response<PluginsResponse>, Status> {
        let filter = Filter::parse_all(&req.get_ref().filters).grpc()?;
        let records = self.records.get().map(Vec::as_slice).unwrap_or(&[]);
        let plugins = records
            .iter()
            .filter(|r| {
                filter.matches(&|path: &[String]| match path.first().map(String::as_str) {
                    Some("type") => Some(r.kind.clone()).filter(|s| !s.is_empty()),
                    Some("id") => Some(r.id.clone()).filter(|s| !s.is_empty()),
                    _ => None,
                })
            })
            .map(to_pb)
            .collect();
        Ok(Response::new(PluginsResponse { plugins }))
    }

    async fn server(&self, _req: Request<()>) -> Result<Response<ServerResponse>, Status> {
        let mut cached = self.uuid.lock().await;
        if cached.is_none() {
            let path = self.uuid_path.clone();
            *cached = Some(crate::blocking(move || load_or_create_uuid(&path)).await?);
        }
        Ok(Response::new(ServerResponse {
            uuid: cached.clone().unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_persisted() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x/uuid");
        let a = load_or_create_uuid(&p).unwrap();
        assert_eq!(load_or_create_uuid(&p).unwrap(), a);
        std::fs::write(&p, "garbage").unwrap();
        assert!(load_or_create_uuid(&p).is_err());
    }
}
