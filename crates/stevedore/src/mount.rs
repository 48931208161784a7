//! `stevedore images mount|unmount`: an image's unpacked rootfs as a
//! snapshot view (or writable snapshot) mounted on a directory, held by a
//! lease named after the directory until unmounted.

use crate::client::{from_api_mounts, rpc_error, with_lease, Conn};
use anyhow::{anyhow, bail, Context, Result};
use sha2::Digest as _;
use std::path::Path;
use stevedore_api::services::content::{content_client::ContentClient, ReadContentRequest};
use stevedore_api::services::images::{images_client::ImagesClient, GetImageRequest};
use stevedore_api::services::leases::{leases_client::LeasesClient, CreateRequest, DeleteRequest};
use stevedore_api::services::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
    ViewSnapshotRequest,
};
use stevedore_images::spec::{ImageConfig, Index, Manifest};
use stevedore_types::platform::MatchPlatform;
use tonic::metadata::MetadataValue;

fn lease_id(target: &Path) -> String {
    let h = sha2::Sha256::digest(target.to_string_lossy().as_bytes());
    format!(
        "mount-{}",
        &stevedore_types::Digest::from_sha256_bytes(&h).hex()[..16]
    )
}

pub(crate) async fn read_blob(conn: &Conn, digest: &str) -> Result<Vec<u8>> {
    let (ch, ns) = conn.svc()?;
    let mut stream = ContentClient::with_interceptor(ch, ns)
        .read(ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        })
        .await
        .map_err(|s| rpc_error(&format!("read {digest}"), s))?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream
        .message()
        .await
        .map_err(|s| rpc_error(&format!("read {digest}"), s))?
    {
        out.extend_from_slice(&m.data);
        if out.len() > 64 << 20 {
            bail!("{digest} is too large for a manifest or config");
        }
    }
    Ok(out)
}

/// The chain ID of the image's top layer for this host's platform.
pub(crate) async fn top_chain_id(conn: &Conn, image: &str) -> Result<String> {
    Ok(resolve_image(conn, image).await?.0)
}

/// For this host's platform: the image's top chain ID and its config JSON.
pub(crate) async fn resolve_image(conn: &Conn, image: &str) -> Result<(String, Vec<u8>)> {
    let (ch, ns) = conn.svc()?;
    let img = ImagesClient::with_interceptor(ch, ns)
        .get(GetImageRequest {
            name: image.to_string(),
        })
        .await
        .map_err(|s| rpc_error(&format!("get image {image:?}"), s))?
        .into_inner()
        .image
        .and_then(|i| i.target)
        .ok_or_else(|| anyhow!("image {image:?} has no target"))?;
    let mut digest = img.digest.clone();
    let mut bytes = read_blob(conn, &digest).await?;
    if stevedore_images::mediatypes::is_index_type(&img.media_type) {
        let index: Index = serde_json::from_slice(&bytes).context("parse index")?;
        let m = stevedore_types::platform::default_matcher();
        let best = index
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref().and_then(|p| m.rank(p)).map(|r| (r, d)))
            .min_by_key(|(r, _)| *r)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| anyhow!("image {image:?} has no manifest for this platform"))?;
        digest = best.digest.to_string();
        bytes = read_blob(conn, &digest).await?;
    }
    let manifest: Manifest = serde_json::from_slice(&bytes).context("parse manifest")?;
    let config_bytes = read_blob(conn, &manifest.config.digest.to_string()).await?;
    let config: ImageConfig =
        serde_json::from_slice(&config_bytes).context("parse image config")?;
    let mut chain: Option<String> = None;
    for d in &config.rootfs.diff_ids {
        chain = Some(match chain {
            None => d.to_string(),
            Some(prev) => {
                let h = sha2::Sha256::digest(format!("{prev} {d}").as_bytes());
                stevedore_types::Digest::from_sha256_bytes(&h).to_string()
            }
        });
    }
    let chain = chain.ok_or_else(|| anyhow!("image {image:?} has no layers"))?;
    Ok((chain, config_bytes))
}

pub async fn mount(
    conn: &Conn,
    image: &str,
    target: &Path,
    snapshotter: &str,
    rw: bool,
) -> Result<()> {
    let target = std::fs::canonicalize(target)
        .with_context(|| format!("mount target {}", target.display()))?;
    let chain = top_chain_id(conn, image).await?;
    let (ch, ns) = conn.svc()?;
    let lease = lease_id(&target);
    let expire = humantime::format_rfc3339(
        std::time::SystemTime::now() + std::time::Duration::from_secs(24 * 3600),
    )
    .to_string();
    LeasesClient::with_interceptor(ch.clone(), ns.clone())
        .create(CreateRequest {
            id: lease.clone(),
            labels: [("containerd.io/gc.expire".to_string(), expire)].into(),
        })
        .await
        .map_err(|s| rpc_error(&format!("create lease {lease}"), s))?;
    let key = target.display().to_string();
    let mut snaps = SnapshotsClient::with_interceptor(ch, ns);
    let lease_value = MetadataValue::try_from(lease.as_str()).context("lease id")?;
    let mounts = if rw {
        snaps
            .prepare(with_lease(
                &lease_value,
                tonic::Request::new(PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent: chain.clone(),
                    labels: Default::default(),
                }),
            ))
            .await
            .map_err(|s| rpc_error(&format!("prepare snapshot {key}"), s))?
            .into_inner()
            .mounts
    } else {
        snaps
            .view(with_lease(
                &lease_value,
                tonic::Request::new(ViewSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: key.clone(),
                    parent: chain.clone(),
                    labels: Default::default(),
                }),
            ))
            .await
            .map_err(|s| rpc_error(&format!("view snapshot {key}"), s))?
            .into_inner()
            .mounts
    };
    let mounts = from_api_mounts(mounts);
    stevedore_sys::mount::mount_all(&mounts, &target).map_err(|e| anyhow!("{e}"))?;
    println!("{}", target.display());
    Ok(())
}

pub async fn unmount(conn: &Conn, target: &Path, snapshotter: &str) -> Result<()> {
    let target = std::fs::canonicalize(target)
        .with_context(|| format!("unmount target {}", target.display()))?;
    stevedore_sys::mount::unmount_all(&target).map_err(|e| anyhow!("{e}"))?;
    let (ch, ns) = conn.svc()?;
    let key = target.display().to_string();
    match SnapshotsClient::with_interceptor(ch.clone(), ns.clone())
        .remove(RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
        })
        .await
    {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::NotFound => {}
        Err(s) => return Err(rpc_error(&format!("remove snapshot {key}"), s)),
    }
    let _ = LeasesClient::with_interceptor(ch, ns)
        .delete(DeleteRequest {
            id: lease_id(&target),
            sync: false,
        })
        .await;
    println!("{}", target.display());
    Ok(())
}
