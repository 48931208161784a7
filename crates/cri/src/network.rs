//! Pod networks: a network namespace per pod (`<dir>/cni-<uuid>`), set up
//! through CNI (loopback, then the configured pod network on eth0) with the
//! pod's identity in CNI_ARGS and its port mappings and DNS as capability
//! args, torn down (DEL with the cached result) on stop, on failure and
//! after a restart.

use crate::config::CniConfig;
use crate::store::SandboxMeta;
use std::path::PathBuf;
use std::sync::Arc;
use stevedore_api::cri;
use stevedore_cni::{Capabilities, Cni, DnsConfig, NetNs, PodArgs, PortMapping};
use tonic::Status;

pub struct Network {
    cni: Arc<Cni>,
    netns_dir: PathBuf,
}

fn status_of(e: stevedore_cni::Error) -> Status {
    let kind = e.kind();
    stevedore_api::status::to_status(stevedore_types::Error::new(kind, e.to_string()))
}

fn pod_args(id: &str, config: &cri::PodSandboxConfig) -> PodArgs {
    let m = config.metadata.clone().unwrap_or_default();
    PodArgs {
        namespace: m.namespace,
        name: m.name,
        infra_container_id: id.to_string(),
        uid: m.uid,
        extra: Vec::new(),
    }
}

fn capabilities(config: &cri::PodSandboxConfig) -> Capabilities {
    let port_mappings = config
        .port_mappings
        .iter()
        .filter(|p| p.host_port > 0)
        .map(|p| PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: match cri::Protocol::try_from(p.protocol).unwrap_or(cri::Protocol::Tcp) {
                cri::Protocol::Tcp => "tcp",
                cri::Protocol::Udp => "udp",
                cri::Protocol::Sctp => "sctp",
            }
            .into(),
            host_ip: p.host_ip.clone(),
        })
        .collect();
    let dns = config.dns_config.as_ref().map(|d| DnsConfig {
        servers: d.servers.clone(),
        searches: d.searches.clone(),
        options: d.options.clone(),
    });
    Capabilities {
        port_mappings,
        dns,
        ..Default::default()
    }
}

impl Network {
    pub fn new(cfg: &CniConfig, netns_dir: PathBuf, cache_dir: PathBuf) -> Network {
        let cni = Cni::new(stevedore_cni::Config {
            bin_dirs: cfg
                .bin_dir
                .split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect(),
            conf_dir: PathBuf::from(&cfg.conf_dir),
            max_conf_num: cfg.max_conf_num.max(0) as usize,
            cache_dir,
            ..Default::default()
        });
        Network {
            cni: Arc::new(cni),
            netns_dir,
        }
    }

    /// Whether pod networks can be set up (the CRI's NetworkReady).
    pub fn status(&self) -> Result<(), String> {
        self.cni.status().map_err(|e| e.to_string())
    }

    /// Make a pod's network namespace (once CNI is ready); its path.
    pub async fn create_netns(&self) -> Result<String, Status> {
        let cni = self.cni.clone();
        let dir = self.netns_dir.clone();
        tokio::task::spawn_blocking(move || {
            cni.status().map_err(status_of)?;
            let ns = NetNs::create(&dir).map_err(|e| {
                Status::internal(format!("failed to create network namespace: {e}"))
            })?;
            Ok(ns.path().display().to_string())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// CNI ADD of pod `id` in the namespace at `path`; the pod's IPs
    /// (primary first). After a failure, [`Network::teardown`] undoes what
    /// the plugins did and removes the namespace.
    pub async fn attach(
        &self,
        id: &str,
        path: &str,
        config: &cri::PodSandboxConfig,
    ) -> Result<Vec<String>, Status> {
        let cni = self.cni.clone();
        let (id, path, config) = (id.to_string(), path.to_string(), config.clone());
        tokio::task::spawn_blocking(move || {
            let r = cni
                .setup(&id, &path, &pod_args(&id, &config), &capabilities(&config))
                .map_err(status_of)?;
            Ok(r.pod_ips().iter().map(|ip| ip.to_string()).collect())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// CNI DEL, then remove the namespace; done once (the path is
    /// forgotten by the caller after success).
    pub async fn teardown(&self, meta: &SandboxMeta) -> Result<(), Status> {
        // a namespace already removed was torn down by an earlier stop
        if meta.netns_path.is_empty() || !std::path::Path::new(&meta.netns_path).exists() {
            return Ok(());
        }
        let cni = self.cni.clone();
        let id = meta.id.clone();
        let path = meta.netns_path.clone();
        let config = meta.config.clone().unwrap_or_default();
        tokio::task::spawn_blocking(move || {
            cni.teardown(&id, &path, &pod_args(&id, &config), &capabilities(&config))
                .map_err(status_of)?;
            NetNs::load(&path).remove().map_err(status_of)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// Remove the namespace at `path` whatever CNI says (a pod that never
    /// ran: its plugins' DEL failed, and nobody else would remove it).
    pub async fn remove_netns(&self, path: &str) -> Result<(), Status> {
        if path.is_empty() || !std::path::Path::new(path).exists() {
            return Ok(());
        }
        let path = path.to_string();
        tokio::task::spawn_blocking(move || NetNs::load(&path).remove().map_err(status_of))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
    }
}
