//! The CRI ImageService over the daemon's image store and transfer engine:
//! images pulled into `k8s.io` and unpacked for the configured snapshotter,
//! recorded under their reference, `repo@digest` and id (`sha256:<config>`)
//! with containerd's `io.cri-containerd.image=managed` label.

use crate::client::context;
use crate::core::{Cri, Resolved, IMAGE_LABEL};
use std::collections::{BTreeMap, BTreeSet};
use stevedore_api::cri;
use stevedore_api::services::images::{
    CreateImageRequest, DeleteImageRequest, Image, ListImagesRequest, UpdateImageRequest,
};
use stevedore_api::services::stevedore_transfer::{PullRequest, RegistryOptions};
use tonic::Status;

/// Image record names by image id.
pub type ImageNames = BTreeMap<String, Vec<String>>;

/// How long a listing of the image records is reused.
const IMAGE_NAMES_TTL: std::time::Duration = std::time::Duration::from_secs(2);

impl Cri {
    /// Pull `reference` (normalised) and record it as the CRI does; the
    /// image id.
    pub async fn pull(
        &self,
        reference: &str,
        auth: Option<&cri::AuthConfig>,
        _sandbox: Option<&cri::PodSandboxConfig>,
    ) -> Result<String, Status> {
        let name = stevedore_images::reference::normalize_docker_ref(reference).map_err(|e| {
            Status::invalid_argument(format!(
                "failed to parse image reference {reference:?}: {}",
                e.message
            ))
        })?;
        let (username, password) = credentials(auth)?;
        let mut stream = self
            .ctrd
            .transfer()
            .pull(PullRequest {
                reference: name.clone(),
                platforms: vec![],
                all_platforms: false,
                registry: Some(RegistryOptions {
                    plain_http: false,
                    hosts_dir: self.config.registry.config_path.clone(),
                    username,
                    password,
                    max_concurrent_downloads: self.config.max_concurrent_downloads as i32,
                }),
                unpack: true,
                snapshotter: self.config.containerd.snapshotter.clone(),
                labels: [(IMAGE_LABEL.to_string(), "managed".to_string())].into(),
            })
            .await
            .map_err(|s| context(s, &format!("failed to pull and unpack image {name:?}")))?
            .into_inner();
        let mut done = false;
        while let Some(p) = stream
            .message()
            .await
            .map_err(|s| context(s, &format!("failed to pull and unpack image {name:?}")))?
        {
            done |= p.done;
        }
        if !done {
            return Err(Status::unavailable(format!(
                "failed to pull and unpack image {name:?}: the transfer ended early"
            )));
        }
        let img = self.resolve_image(&name).await?;
        // the id and repo@digest names point at the same target
        let target = self.image_record(&name).await?;
        let mut names = vec![img.id.clone()];
        if let Ok(r) = stevedore_images::reference::parse_normalized_named(&name) {
            names.push(format!(
                "{}@{}",
                r.name(),
                target
                    .target
                    .as_ref()
                    .map(|t| t.digest.clone())
                    .unwrap_or_default()
            ));
        }
        for n in names {
            self.put_image(&n, &target).await?;
        }
        self.images_changed();
        Ok(img.id)
    }

    async fn image_record(&self, name: &str) -> Result<Image, Status> {
        self.ctrd
            .images()
            .get(stevedore_api::services::images::GetImageRequest {
                name: name.to_string(),
            })
            .await
            .map_err(|s| context(s, &format!("get image {name:?}")))?
            .into_inner()
            .image
            .ok_or_else(|| Status::internal(format!("image {name:?}: empty answer")))
    }

    async fn put_image(&self, name: &str, like: &Image) -> Result<(), Status> {
        let img = Image {
            name: name.to_string(),
            labels: [(IMAGE_LABEL.to_string(), "managed".to_string())].into(),
            target: like.target.clone(),
            ..Default::default()
        };
        let mut images = self.ctrd.images();
        match images
            .create(CreateImageRequest {
                image: Some(img.clone()),
                source_date_epoch: None,
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => images
                .update(UpdateImageRequest {
                    image: Some(img),
                    update_mask: None,
                    source_date_epoch: None,
                })
                .await
                .map(|_| ())
                .map_err(|s| context(s, &format!("update image {name:?}"))),
            Err(s) => Err(context(s, &format!("create image {name:?}"))),
        }
    }

    /// Forget the cached image listing (after a pull or a removal).
    fn images_changed(&self) {
        *crate::store::lock(&self.image_names) = None;
    }

    /// All image records, grouped by image id (cached for a moment).
    async fn images_by_id(&self) -> Result<ImageNames, Status> {
        if let Some((at, names)) = crate::store::lock(&self.image_names).as_ref() {
            if at.elapsed() < IMAGE_NAMES_TTL {
                return Ok(names.clone());
            }
        }
        let names = self.list_images_by_id().await?;
        *crate::store::lock(&self.image_names) = Some((std::time::Instant::now(), names.clone()));
        Ok(names)
    }

    async fn list_images_by_id(&self) -> Result<ImageNames, Status> {
        let list = self
            .ctrd
            .images()
            .list(ListImagesRequest { filters: vec![] })
            .await
            .map_err(|s| context(s, "list images"))?
            .into_inner()
            .images;
        let mut by_target: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for i in list {
            let d = i
                .target
                .as_ref()
                .map(|t| t.digest.clone())
                .unwrap_or_default();
            by_target.entry(d).or_default().push(i.name);
        }
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for names in by_target.into_values() {
            let Some(first) = names.first() else { continue };
            match self.resolve_image(first).await {
                Ok(r) => out.entry(r.id).or_default().extend(names),
                Err(e) => tracing::debug!("image {first:?} skipped: {}", e.message()),
            }
        }
        Ok(out)
    }

    /// The repo tags and repo digests an image id is known by.
    pub async fn image_record_names(&self, id: &str) -> Result<(Vec<String>, Vec<String>), Status> {
        let all = self.images_by_id().await?;
        let names = all
            .get(id)
            .ok_or_else(|| Status::not_found(format!("image {id:?}: not found")))?;
        Ok(split_names(names))
    }

    fn cri_image(&self, r: &Resolved, names: &[String]) -> cri::Image {
        let (repo_tags, repo_digests) = split_names(names);
        let size = r.manifest.config.size.max(0) as u64
            + r.manifest
                .layers
                .iter()
                .map(|l| l.size.max(0) as u64)
                .sum::<u64>()
            + r.target.size.max(0) as u64;
        let (uid, username) = image_user(&r.config.user);
        cri::Image {
            id: r.id.clone(),
            repo_tags,
            repo_digests,
            size,
            uid: uid.map(|value| cri::Int64Value { value }),
            username,
            spec: Some(cri::ImageSpec {
                image: r.id.clone(),
                ..Default::default()
            }),
            pinned: false,
        }
    }

    pub async fn list_images(
        &self,
        req: cri::ListImagesRequest,
    ) -> Result<cri::ListImagesResponse, Status> {
        let filter = req
            .filter
            .and_then(|f| f.image)
            .map(|i| i.image)
            .unwrap_or_default();
        let want = if filter.is_empty() {
            None
        } else {
            Some(self.resolve_image(&filter).await.ok().map(|r| r.id))
        };
        let mut images = Vec::new();
        for (id, names) in self.images_by_id().await? {
            if let Some(w) = &want {
                if w.as_deref() != Some(id.as_str()) {
                    continue;
                }
            }
            if let Ok(r) = self.resolve_image(&id).await {
                images.push(self.cri_image(&r, &names));
            } else if let Some(n) = names.first() {
                if let Ok(r) = self.resolve_image(n).await {
                    images.push(self.cri_image(&r, &names));
                }
            }
        }
        Ok(cri::ListImagesResponse { images })
    }

    pub async fn image_status(
        &self,
        req: cri::ImageStatusRequest,
    ) -> Result<cri::ImageStatusResponse, Status> {
        let name = req.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("image must be set"));
        }
        let r = match self.resolve_image(&name).await {
            Ok(r) => r,
            // kubelet asks before pulling: a missing image is no error
            Err(s) if s.code() == tonic::Code::NotFound => {
                return Ok(cri::ImageStatusResponse::default())
            }
            Err(s) => return Err(s),
        };
        let all = self.images_by_id().await?;
        let names = all.get(&r.id).cloned().unwrap_or_default();
        let mut info = std::collections::HashMap::new();
        if req.verbose {
            let config: serde_json::Value =
                serde_json::from_slice(&r.config_raw).unwrap_or_default();
            info.insert(
                "info".to_string(),
                serde_json::json!({"chainID": r.chain_id, "imageSpec": config}).to_string(),
            );
        }
        Ok(cri::ImageStatusResponse {
            image: Some(self.cri_image(&r, &names)),
            info,
        })
    }

    pub async fn pull_image(
        &self,
        req: cri::PullImageRequest,
    ) -> Result<cri::PullImageResponse, Status> {
        let name = req.image.map(|i| i.image).unwrap_or_default();
        if name.is_empty() {
            return Err(Status::invalid_argument("image must be set"));
        }
        let id = self
            .pull(&name, req.auth.as_ref(), req.sandbox_config.as_ref())
            .await?;
        Ok(cri::PullImageResponse { image_ref: id })
    }

    pub async fn remove_image(
        &self,
        req: cri::RemoveImageRequest,
    ) -> Result<cri::RemoveImageResponse, Status> {
        let name = req.image.map(|i| i.image).unwrap_or_default();
        let r = match self.resolve_image(&name).await {
            Ok(r) => r,
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(cri::RemoveImageResponse {}),
            Err(s) => return Err(s),
        };
        self.images_changed();
        let all = self.images_by_id().await?;
        let mut names = all.get(&r.id).cloned().unwrap_or_default();
        // the id record last, so a failure midway leaves it findable
        names.sort_by_key(|n| n == &r.id);
        let count = names.len();
        for (i, n) in names.into_iter().enumerate() {
            match self
                .ctrd
                .images()
                .delete(DeleteImageRequest {
                    name: n.clone(),
                    sync: i + 1 == count,
                    target: None,
                })
                .await
            {
                Ok(_) => {}
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => {
                    return Err(context(
                        s,
                        &format!("failed to delete image reference {n:?}"),
                    ))
                }
            }
        }
        self.images_changed();
        Ok(cri::RemoveImageResponse {})
    }

    pub async fn image_fs_info(&self) -> Result<cri::ImageFsInfoResponse, Status> {
        let snapshotter = self.config.containerd.snapshotter.clone();
        let dir = self
            .root
            .parent()
            .map(|p| p.join(format!("io.containerd.snapshotter.v1.{snapshotter}")))
            .unwrap_or_default();
        let d2 = dir.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || usage(&d2))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let fs = cri::FilesystemUsage {
            timestamp: crate::store::now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: dir.display().to_string(),
            }),
            used_bytes: Some(cri::UInt64Value { value: bytes }),
            inodes_used: Some(cri::UInt64Value { value: inodes }),
        };
        Ok(cri::ImageFsInfoResponse {
            image_filesystems: vec![fs.clone()],
            container_filesystems: vec![fs],
        })
    }
}

/// Disk use of a tree (bytes of blocks, inodes), not following links or
/// crossing into mounts.
fn usage(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut seen = BTreeSet::new();
    let (mut bytes, mut inodes) = (0u64, 0u64);
    let dev = match std::fs::symlink_metadata(dir) {
        Ok(m) => m.dev(),
        Err(_) => return (0, 0),
    };
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if m.dev() != dev || !seen.insert(m.ino()) {
            continue;
        }
        bytes += m.blocks() * 512;
        inodes += 1;
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    (bytes, inodes)
}

/// Repo tags (`name:tag`) and repo digests (`name@sha256:...`) among an
/// image's record names (the id record is neither).
fn split_names(names: &[String]) -> (Vec<String>, Vec<String>) {
    let mut tags = BTreeSet::new();
    let mut digests = BTreeSet::new();
    for n in names {
        if n.starts_with("sha256:") {
            continue;
        }
        if n.contains('@') {
            digests.insert(n.clone());
        } else {
            tags.insert(n.clone());
        }
    }
    (tags.into_iter().collect(), digests.into_iter().collect())
}

/// containerd's `getUserFromImage`: a numeric user is a uid, else a name.
fn image_user(user: &str) -> (Option<i64>, String) {
    if user.is_empty() {
        return (None, String::new());
    }
    let u = user.split(':').next().unwrap_or(user);
    match u.parse::<i64>() {
        Ok(uid) => (Some(uid), String::new()),
        Err(_) => (None, u.to_string()),
    }
}

/// Registry credentials from the request (containerd's `ParseAuth`).
fn credentials(auth: Option<&cri::AuthConfig>) -> Result<(String, String), Status> {
    let Some(a) = auth else {
        return Ok((String::new(), String::new()));
    };
    if !a.username.is_empty() {
        return Ok((a.username.clone(), a.password.clone()));
    }
    if !a.identity_token.is_empty() {
        return Ok((String::new(), a.identity_token.clone()));
    }
    if !a.auth.is_empty() {
        use base64::Engine;
        // containerd's ParseAuth: standard base64
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(a.auth.trim())
            .map_err(|e| Status::invalid_argument(format!("failed to decode auth: {e}")))?;
        let s = String::from_utf8(decoded)
            .map_err(|_| Status::invalid_argument("failed to decode auth: not UTF-8"))?;
        let (u, p) = s
            .split_once(':')
            .ok_or_else(|| Status::invalid_argument("invalid decoded auth: missing ':'"))?;
        return Ok((u.to_string(), p.trim_end_matches('\0').to_string()));
    }
    if !a.registry_token.is_empty() {
        return Err(Status::unimplemented(
            "registry_token authentication is not supported; use username/password or identity_token",
        ));
    }
    Ok((String::new(), String::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_forms() {
        let a = cri::AuthConfig {
            auth: "dXNlcjpwYXNz".into(),
            ..Default::default()
        };
        assert_eq!(
            credentials(Some(&a)).unwrap(),
            ("user".to_string(), "pass".to_string())
        );
        let a = cri::AuthConfig {
            username: "u".into(),
            password: "p".into(),
            ..Default::default()
        };
        assert_eq!(credentials(Some(&a)).unwrap(), ("u".into(), "p".into()));
        let a = cri::AuthConfig {
            auth: "!!".into(),
            ..Default::default()
        };
        assert_eq!(
            credentials(Some(&a)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn names_split_into_tags_and_digests() {
        let (t, d) = split_names(&[
            "docker.io/library/busybox:latest".into(),
            "docker.io/library/busybox@sha256:aa".into(),
            "sha256:bb".into(),
        ]);
        assert_eq!(t, vec!["docker.io/library/busybox:latest"]);
        assert_eq!(d, vec!["docker.io/library/busybox@sha256:aa"]);
        assert_eq!(image_user("1000:1000"), (Some(1000), String::new()));
        assert_eq!(image_user("nobody"), (None, "nobody".to_string()));
    }
}
