//! The Introspection service: the plugin records in init order (with filters
//! on `type` and `id`), the server's UUID (persisted under the plugin root),
//! pid and PID namespace, its deprecation warnings (containerd 2.x), and
//! `PluginInfo` (containerd 2.x): one plugin's record and, when asked with
//! options, the extra data of plugins that provide some
//! ([`PluginInfoProvider`]), with containerd's codes otherwise.

use crate::GrpcService;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use stevedore_api::google::rpc::Status as RpcStatus;
use stevedore_api::services::introspection::{
    introspection_server::{Introspection, IntrospectionServer},
    Plugin, PluginInfoRequest, PluginInfoResponse, PluginsRequest, PluginsResponse, ServerResponse,
};
use stevedore_api::status::{code_of, IntoStatus};
use stevedore_api::types::Platform as PbPlatform;
use stevedore_plugin::{status_error, PluginRecord};
use stevedore_types::filters::Filter;
use stevedore_types::Error;
use tonic::{Request, Response, Status};

/// A plugin that answers `PluginInfo` requests carrying options with extra
/// data (containerd's `pluginInfoProvider`), e.g. the runtime plugin's
/// `RuntimeRequest` -> `RuntimeInfo`.
#[tonic::async_trait]
pub trait PluginInfoProvider: Send + Sync {
    /// The extra data for `options`; errors carry their gRPC code by kind.
    async fn plugin_info(&self, options: prost_types::Any) -> Result<prost_types::Any, Error>;
}

/// Providers by `(type, id)`.
pub type PluginInfoProviders = HashMap<(String, String), Arc<dyn PluginInfoProvider>>;

pub struct IntrospectionService {
    records: Arc<OnceLock<Vec<PluginRecord>>>,
    providers: PluginInfoProviders,
    uuid_path: PathBuf,
    uuid: tokio::sync::Mutex<Option<String>>,
}

impl IntrospectionService {
    pub fn grpc(
        records: Arc<OnceLock<Vec<PluginRecord>>>,
        providers: PluginInfoProviders,
        root: PathBuf,
    ) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(IntrospectionServer::new(
            IntrospectionService {
                records,
                providers,
                uuid_path: root.join("uuid"),
                uuid: tokio::sync::Mutex::new(None),
            }
        )))
    }

    fn records(&self) -> &[PluginRecord] {
        self.records.get().map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The inode of this process's PID namespace (containerd's `statPIDNS`).
fn pid_namespace() -> Result<u64, Error> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata("/proc/self/ns/pid")
        .map_err(|e| Error::from(e).context("stat /proc/self/ns/pid"))?;
    Ok(m.ino())
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
        let plugins = self
            .records()
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
            pid: u64::from(std::process::id()),
            pidns: pid_namespace().grpc()?,
            // stevedored has no deprecated features or config properties to warn about
            deprecations: Vec::new(),
        }))
    }

    async fn plugin_info(
        &self,
        req: Request<PluginInfoRequest>,
    ) -> Result<Response<PluginInfoResponse>, Status> {
        let r = req.into_inner();
        let record = self
            .records()
            .iter()
            .find(|p| p.kind == r.r#type && p.id == r.id)
            .ok_or_else(|| Error::not_found(format!("plugin {}.{} not found", r.r#type, r.id)))
            .grpc()?;
        let plugin = Some(to_pb(record));
        let Some(options) = r.options else {
            return Ok(Response::new(PluginInfoResponse {
                plugin,
                extra: None,
            }));
        };
        if status_error(&record.status).is_some() {
            return Err(Status::failed_precondition(
                "cannot get extra info, plugin not successfully loaded",
            ));
        }
        let provider = self
            .providers
            .get(&(r.r#type.clone(), r.id.clone()))
            .ok_or_else(|| Status::unimplemented("plugin does not provided extra information"))?;
        let extra = provider.plugin_info(options).await.grpc()?;
        Ok(Response::new(PluginInfoResponse {
            plugin,
            extra: Some(extra),
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
