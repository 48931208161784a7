//! The CRI service's state and the pieces every request shares: images
//! resolved through the image store, containers made under a lease,
//! runtime options from the config.

use crate::client::{context, with_lease, Ctrd};
use crate::config::{CriConfig, RuntimeEntry};
use crate::store::Store;
use std::path::PathBuf;
use stevedore_api::services::images::GetImageRequest;
use stevedore_api::services::leases::{CreateRequest as CreateLease, DeleteRequest as DeleteLease};
use stevedore_images::spec::{Index, Manifest};
use stevedore_runtime::spec::ImageConfig;
use stevedore_types::platform::MatchPlatform;
use stevedore_types::Descriptor;
use tonic::Status;

/// The label containerd's CRI puts on the images it manages.
pub const IMAGE_LABEL: &str = "io.cri-containerd.image";

/// The CRI plugin: config, a client of the daemon, the pod/container store.
pub struct Cri {
    pub config: CriConfig,
    pub ctrd: Ctrd,
    pub store: Store,
    /// `<root>/io.containerd.grpc.v1.cri`
    pub root: PathBuf,
    /// `<state>/io.containerd.grpc.v1.cri`
    pub state: PathBuf,
    /// The daemon's socket (containerd's `containerdEndpoint`).
    pub address: PathBuf,
    pub network: crate::network::Network,
    pub streams: std::sync::OnceLock<crate::streaming::StreamServer>,
    /// Container events for GetContainerEvents subscribers.
    pub events: tokio::sync::broadcast::Sender<stevedore_api::cri::ContainerEventResponse>,
    /// Image records grouped by image id, briefly cached: container
    /// statuses name their image's tags and digests on every list.
    pub image_names: std::sync::Mutex<Option<(std::time::Instant, crate::image::ImageNames)>>,
    /// True once the store has been rebuilt after a start.
    pub ready: tokio::sync::watch::Sender<bool>,
}

/// An image in the store, resolved down to its config.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `sha256:<config digest>`: the image id the CRI speaks of.
    pub id: String,
    pub target: Descriptor,
    pub manifest: Manifest,
    pub config_raw: Vec<u8>,
    pub config: ImageConfig,
    /// The snapshot of the top layer (containerd's chain id).
    pub chain_id: String,
    pub name: String,
}

impl Cri {
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.root.join("sandboxes").join(id)
    }
    pub fn sandbox_state_dir(&self, id: &str) -> PathBuf {
        self.state.join("sandboxes").join(id)
    }
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }
    pub fn container_state_dir(&self, id: &str) -> PathBuf {
        self.state.join("containers").join(id)
    }

    /// Find an image by reference, id (`sha256:...`) or digest reference.
    pub async fn resolve_image(&self, name: &str) -> Result<Resolved, Status> {
        let candidates = image_names(name);
        let mut images = self.ctrd.images();
        let mut last = None;
        for n in &candidates {
            match images.get(GetImageRequest { name: n.clone() }).await {
                Ok(r) => {
                    let img = r
                        .into_inner()
                        .image
                        .ok_or_else(|| Status::internal(format!("image {n:?}: empty answer")))?;
                    let target = img
                        .target
                        .ok_or_else(|| Status::internal(format!("image {n:?} has no target")))?;
                    return self.resolve_target(n, &target).await;
                }
                Err(s) if s.code() == tonic::Code::NotFound => last = Some(s),
                Err(s) => return Err(context(s, &format!("get image {n:?}"))),
            }
        }
        let _ = last;
        Err(Status::not_found(format!("image {name:?}: not found")))
    }

    async fn resolve_target(
        &self,
        name: &str,
        target: &stevedore_api::types::Descriptor,
    ) -> Result<Resolved, Status> {
        let mut desc = Descriptor {
            media_type: target.media_type.clone(),
            digest: target
                .digest
                .parse()
                .map_err(|e| Status::internal(format!("image {name:?}: digest: {e}")))?,
            size: target.size,
            urls: Vec::new(),
            annotations: Default::default(),
            platform: None,
        };
        let mut bytes = self.ctrd.read_blob(&target.digest).await?;
        if stevedore_images::mediatypes::is_index_type(&target.media_type) {
            let index: Index = serde_json::from_slice(&bytes)
                .map_err(|e| Status::internal(format!("image {name:?}: index: {e}")))?;
            let m = stevedore_types::platform::default_matcher();
            let best = index
                .manifests
                .iter()
                .filter_map(|d| d.platform.as_ref().and_then(|p| m.rank(p)).map(|r| (r, d)))
                .min_by_key(|(r, _)| *r)
                .map(|(_, d)| d.clone())
                .ok_or_else(|| {
                    Status::not_found(format!("image {name:?} has no manifest for this platform"))
                })?;
            bytes = self.ctrd.read_blob(&best.digest.to_string()).await?;
            desc = best;
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| Status::internal(format!("image {name:?}: manifest: {e}")))?;
        let config_raw = self
            .ctrd
            .read_blob(&manifest.config.digest.to_string())
            .await?;
        let (config, diff_ids) = parse_config(&config_raw)
            .map_err(|e| Status::internal(format!("image {name:?}: config: {e}")))?;
        let diff_ids = diff_ids
            .iter()
            .map(|d| d.parse())
            .collect::<Result<Vec<stevedore_types::Digest>, _>>()
            .map_err(|e| Status::internal(format!("image {name:?}: config diff_ids: {e}")))?;
        let chain_id = stevedore_services::transfer::chain_ids(&diff_ids)
            .pop()
            .map(|d| d.to_string())
            .ok_or_else(|| Status::failed_precondition(format!("image {name:?} has no layers")))?;
        Ok(Resolved {
            id: manifest.config.digest.to_string(),
            target: desc,
            manifest,
            config_raw,
            config,
            chain_id,
            name: name.to_string(),
        })
    }

    /// A lease for the objects of one request (expires if we die midway).
    pub async fn lease(&self, id: &str) -> Result<String, Status> {
        let lease = format!("cri-{id}-{}", uuid::Uuid::new_v4().simple());
        let expire = humantime::format_rfc3339(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        )
        .to_string();
        self.ctrd
            .leases()
            .create(CreateLease {
                id: lease.clone(),
                labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
            })
            .await
            .map_err(|s| context(s, "create lease"))?;
        Ok(lease)
    }

    pub async fn drop_lease(&self, lease: &str) {
        let _ = self
            .ctrd
            .leases()
            .delete(DeleteLease {
                id: lease.to_string(),
                sync: false,
            })
            .await;
    }

    /// Make a container record with a writable snapshot over `image`.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_container_record(
        &self,
        id: &str,
        image: &Resolved,
        image_name: &str,
        spec: &stevedore_runtime::spec::Spec,
        snapshotter: &str,
        runtime: (&str, &RuntimeEntry),
        labels: std::collections::HashMap<String, String>,
        extension: (&str, prost_types::Any),
    ) -> Result<(), Status> {
        use stevedore_api::services::containers::{
            container::Runtime, Container, CreateContainerRequest,
        };
        use stevedore_api::services::snapshots::{PrepareSnapshotRequest, RemoveSnapshotRequest};
        let lease = self.lease(id).await?;
        let r = async {
            self.ctrd
                .snapshots()
                .prepare(with_lease(
                    &lease,
                    tonic::Request::new(PrepareSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        key: id.to_string(),
                        parent: image.chain_id.clone(),
                        labels: Default::default(),
                    }),
                ))
                .await
                .map_err(|s| {
                    context(
                        s,
                        &format!(
                            "failed to prepare snapshot of image {:?} for {id} (is it unpacked for {snapshotter}?)",
                            image.name
                        ),
                    )
                })?;
            let created = self
                .ctrd
                .containers()
                .create(with_lease(
                    &lease,
                    tonic::Request::new(CreateContainerRequest {
                        container: Some(Container {
                            id: id.to_string(),
                            labels,
                            image: image_name.to_string(),
                            runtime: Some(Runtime {
                                name: runtime.1.runtime_type.clone(),
                                options: runc_options(runtime.1),
                            }),
                            spec: Some(prost_types::Any {
                                type_url: SPEC_TYPE.into(),
                                value: spec.to_json(),
                            }),
                            snapshotter: snapshotter.to_string(),
                            snapshot_key: id.to_string(),
                            extensions: [(extension.0.to_string(), extension.1)].into(),
                            ..Default::default()
                        }),
                    }),
                ))
                .await;
            if let Err(s) = created {
                let _ = self
                    .ctrd
                    .snapshots()
                    .remove(RemoveSnapshotRequest {
                        snapshotter: snapshotter.to_string(),
                        key: id.to_string(),
                    })
                    .await;
                return Err(context(s, &format!("failed to create containerd container {id}")));
            }
            Ok(())
        }
        .await;
        self.drop_lease(&lease).await;
        r
    }

    /// Delete a container record and its snapshot; a missing one is fine.
    pub async fn delete_container_record(&self, id: &str) -> Result<(), Status> {
        use stevedore_api::services::containers::{DeleteContainerRequest, GetContainerRequest};
        use stevedore_api::services::snapshots::RemoveSnapshotRequest;
        let rec = match self
            .ctrd
            .containers()
            .get(GetContainerRequest { id: id.to_string() })
            .await
        {
            Ok(r) => r.into_inner().container,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(()),
            Err(s) => return Err(context(s, &format!("get container {id}"))),
        };
        if let Some(c) = rec {
            if !c.snapshot_key.is_empty() {
                match self
                    .ctrd
                    .snapshots()
                    .remove(RemoveSnapshotRequest {
                        snapshotter: c.snapshotter.clone(),
                        key: c.snapshot_key.clone(),
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    Err(s) => return Err(context(s, &format!("remove snapshot of {id}"))),
                }
            }
        }
        match self
            .ctrd
            .containers()
            .delete(DeleteContainerRequest { id: id.to_string() })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(context(s, &format!("delete container {id}"))),
        }
    }

    /// The rootfs mounts of a container's snapshot.
    pub async fn rootfs(
        &self,
        snapshotter: &str,
        key: &str,
    ) -> Result<Vec<stevedore_api::types::Mount>, Status> {
        use stevedore_api::services::snapshots::MountsRequest;
        Ok(self
            .ctrd
            .snapshots()
            .mounts(MountsRequest {
                snapshotter: snapshotter.to_string(),
                key: key.to_string(),
            })
            .await
            .map_err(|s| context(s, &format!("mounts of snapshot {key}")))?
            .into_inner()
            .mounts)
    }

    /// The runtime type, decoded runtime options and OCI spec of a
    /// container record, for verbose statuses (JSON nulls if unreadable).
    pub async fn record_info(&self, id: &str) -> (String, serde_json::Value, serde_json::Value) {
        use prost::Message;
        use stevedore_api::services::containers::GetContainerRequest;
        let rec = self
            .ctrd
            .containers()
            .get(GetContainerRequest { id: id.to_string() })
            .await
            .ok()
            .and_then(|r| r.into_inner().container);
        let Some(rec) = rec else {
            return (
                String::new(),
                serde_json::Value::Null,
                serde_json::Value::Null,
            );
        };
        let runtime = rec.runtime.unwrap_or_default();
        let options = runtime
            .options
            .filter(|o| o.type_url.ends_with(RUNC_OPTIONS_TYPE))
            .and_then(|o| RuncOptions::decode(o.value.as_slice()).ok())
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
        let spec = rec
            .spec
            .and_then(|s| serde_json::from_slice(&s.value).ok())
            .unwrap_or(serde_json::Value::Null);
        (runtime.name, options, spec)
    }

    /// Publish a container event to GetContainerEvents subscribers.
    pub fn emit(
        &self,
        container_id: &str,
        kind: stevedore_api::cri::ContainerEventType,
        sandbox: Option<stevedore_api::cri::PodSandboxStatus>,
        containers: Vec<stevedore_api::cri::ContainerStatus>,
    ) {
        let _ = self
            .events
            .send(stevedore_api::cri::ContainerEventResponse {
                container_id: container_id.to_string(),
                container_event_type: kind as i32,
                created_at: crate::store::now_nanos(),
                pod_sandbox_status: sandbox,
                containers_statuses: containers,
            });
    }
}

pub const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";

/// containerd's runc shim options (`containerd.runc.v1.Options`).
#[derive(Clone, PartialEq, prost::Message, serde::Serialize)]
pub struct RuncOptions {
    #[prost(bool, tag = "1")]
    pub no_pivot_root: bool,
    #[prost(bool, tag = "2")]
    pub no_new_keyring: bool,
    #[prost(string, tag = "3")]
    pub shim_cgroup: String,
    #[prost(uint32, tag = "4")]
    pub io_uid: u32,
    #[prost(uint32, tag = "5")]
    pub io_gid: u32,
    #[prost(string, tag = "6")]
    pub binary_name: String,
    #[prost(string, tag = "7")]
    pub root: String,
    #[prost(bool, tag = "9")]
    pub systemd_cgroup: bool,
    #[prost(string, tag = "10")]
    pub criu_image_path: String,
    #[prost(string, tag = "11")]
    pub criu_work_path: String,
}

/// The runtime's `options` table as the shim's options message.
pub fn runc_options(rt: &RuntimeEntry) -> Option<prost_types::Any> {
    use prost::Message;
    if rt.options.is_empty() {
        return None;
    }
    let s = |k: &str| {
        rt.options
            .get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let b = |k: &str| rt.options.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let u = |k: &str| rt.options.get(k).and_then(|v| v.as_integer()).unwrap_or(0) as u32;
    let o = RuncOptions {
        no_pivot_root: b("NoPivotRoot"),
        no_new_keyring: b("NoNewKeyring"),
        shim_cgroup: s("ShimCgroup"),
        io_uid: u("IoUid"),
        io_gid: u("IoGid"),
        binary_name: s("BinaryName"),
        root: s("Root"),
        systemd_cgroup: b("SystemdCgroup"),
        criu_image_path: s("CriuImagePath"),
        criu_work_path: s("CriuWorkPath"),
    };
    Some(prost_types::Any {
        type_url: RUNC_OPTIONS_TYPE.into(),
        value: o.encode_to_vec(),
    })
}

/// The names an image may be stored under for what a client gave.
pub fn image_names(name: &str) -> Vec<String> {
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if let Some(h) = name.strip_prefix("sha256:") {
        if hex(h) {
            return vec![name.to_string()];
        }
    }
    if hex(name) {
        return vec![format!("sha256:{name}")];
    }
    let mut out = Vec::new();
    if let Ok(n) = stevedore_images::reference::normalize_docker_ref(name) {
        out.push(n);
    }
    if !out.iter().any(|n| n == name) {
        out.push(name.to_string());
    }
    out
}

/// The parts of an image config the CRI uses, and its layers' diff ids.
pub fn parse_config(raw: &[u8]) -> Result<(ImageConfig, Vec<String>), String> {
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| e.to_string())?;
    let c = &v["config"];
    let strings = |x: &serde_json::Value| -> Vec<String> {
        x.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let cfg = ImageConfig {
        entrypoint: strings(&c["Entrypoint"]),
        cmd: strings(&c["Cmd"]),
        env: strings(&c["Env"]),
        working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
        user: c["User"].as_str().unwrap_or_default().to_string(),
    };
    Ok((cfg, strings(&v["rootfs"]["diff_ids"])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_cover_ids_and_references() {
        let id = format!("sha256:{}", "a".repeat(64));
        assert_eq!(image_names(&id), vec![id.clone()]);
        assert_eq!(image_names(&"a".repeat(64)), vec![id]);
        assert_eq!(
            image_names("busybox"),
            vec![
                "docker.io/library/busybox:latest".to_string(),
                "busybox".to_string()
            ]
        );
    }

    #[test]
    fn runc_options_come_from_the_table() {
        let mut rt = RuntimeEntry::default();
        assert!(runc_options(&rt).is_none());
        rt.options.insert("BinaryName".into(), "crun".into());
        rt.options.insert("SystemdCgroup".into(), true.into());
        let any = runc_options(&rt).unwrap();
        use prost::Message;
        let o = RuncOptions::decode(any.value.as_slice()).unwrap();
        assert_eq!(o.binary_name, "crun");
        assert!(o.systemd_cgroup);
    }
}
