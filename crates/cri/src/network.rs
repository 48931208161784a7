//! Pod networks: a network namespace per pod, set up through CNI.

use crate::config::CniConfig;
use crate::store::SandboxMeta;
use std::path::PathBuf;
use stevedore_api::cri;
use tonic::Status;

pub struct Network {
    pub cfg: CniConfig,
    pub netns_dir: PathBuf,
    pub cache_dir: PathBuf,
}

impl Network {
    pub fn new(cfg: CniConfig, netns_dir: PathBuf, cache_dir: PathBuf) -> Network {
        Network {
            cfg,
            netns_dir,
            cache_dir,
        }
    }

    /// Whether pod networks can be set up (NetworkReady).
    pub fn status(&self) -> Result<(), String> {
        Err(format!(
            "cni config load failed: no network config found in {}: cni plugin not initialized: failed to load cni config",
            self.cfg.conf_dir
        ))
    }

    /// Make the pod's network namespace and run CNI ADD; its path and IPs.
    pub async fn setup(
        &self,
        _id: &str,
        _config: &cri::PodSandboxConfig,
    ) -> Result<(String, Vec<String>), Status> {
        Err(Status::failed_precondition(self.status().unwrap_err()))
    }

    /// CNI DEL and remove the namespace.
    pub async fn teardown(&self, _meta: &SandboxMeta) -> Result<(), Status> {
        Ok(())
    }
}
