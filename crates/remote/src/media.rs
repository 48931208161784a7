//! Manifest media types the distribution client asks for and recognises.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_SCHEMA1_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
pub const DOCKER_SCHEMA1_MANIFEST_UNSIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+json";

/// The `Accept` header of manifest requests (containerd's order, schema1 excluded).
pub const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, */*";

/// Largest manifest accepted from a registry (containerd's `MaxManifestSize`).
pub const MAX_MANIFEST_SIZE: i64 = stevedore_types::limits::MAX_MANIFEST_SIZE;

/// Whether `media_type` is a manifest or index (served under `/manifests/`).
pub fn is_manifest(media_type: &str) -> bool {
    matches!(
        media_type,
        OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
    ) || is_schema1(media_type)
}

/// Whether `media_type` is a Docker schema1 manifest (unsupported).
pub fn is_schema1(media_type: &str) -> bool {
    matches!(
        media_type,
        DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_MANIFEST_UNSIGNED | "text/plain"
    )
}
