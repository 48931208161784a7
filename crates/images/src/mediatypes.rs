//! Media types of image components (OCI, Docker schema2, containerd
//! checkpoints) and the predicates containerd's `images` package offers.

use stevedore_types::Error;

pub const OCI_LAYOUT_VERSION: &str = "1.0.0";

// OCI image-spec media types.
pub const OCI_DESCRIPTOR: &str = "application/vnd.oci.descriptor.v1+json";
pub const OCI_LAYOUT_HEADER: &str = "application/vnd.oci.layout.header.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NON_DISTRIBUTABLE: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NON_DISTRIBUTABLE_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NON_DISTRIBUTABLE_ZSTD: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const OCI_LAYER_ENCRYPTED: &str = "application/vnd.oci.image.layer.v1.tar+encrypted";
pub const OCI_LAYER_GZIP_ENCRYPTED: &str = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";

// Docker schema2 media types.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Not in containerd 1.6's list; written by some tools for zstd Docker layers.
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Legacy Docker schema1 manifest (pull only, converted).
pub const DOCKER_SCHEMA1_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

// containerd checkpoint/restore media types.
pub const CONTAINERD_CHECKPOINT: &str =
    "application/vnd.containerd.container.criu.checkpoint.criu.tar";
pub const CONTAINERD_CHECKPOINT_PRE_DUMP: &str =
    "application/vnd.containerd.container.criu.checkpoint.predump.tar";
pub const CONTAINERD_RESOURCE: &str = "application/vnd.containerd.container.resource.tar";
pub const CONTAINERD_RW: &str = "application/vnd.containerd.container.rw.tar";
pub const CONTAINERD_CHECKPOINT_CONFIG: &str =
    "application/vnd.containerd.container.checkpoint.config.v1+proto";
pub const CONTAINERD_CHECKPOINT_OPTIONS: &str =
    "application/vnd.containerd.container.checkpoint.options.v1+proto";
pub const CONTAINERD_CHECKPOINT_RUNTIME_NAME: &str =
    "application/vnd.containerd.container.checkpoint.runtime.name";
pub const CONTAINERD_CHECKPOINT_RUNTIME_OPTIONS: &str =
    "application/vnd.containerd.container.checkpoint.runtime.options+proto";

/// Annotation on an index.json descriptor carrying the full image name.
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// OCI's reference-name annotation (only the tag part, in containerd's use).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Content label holding a layer's uncompressed digest (its diff ID).
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// Compression of a layer as its media type declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffCompression {
    /// Uncompressed (or wrapped in an unknown `+ext`): apply as is.
    None,
    /// Docker's plain `tar` types, which are sometimes compressed anyway: detect.
    Unknown,
    Gzip,
    Zstd,
}

impl DiffCompression {
    /// containerd's string for the compression ("", "unknown", "gzip", "zstd").
    pub fn as_str(self) -> &'static str {
        match self {
            DiffCompression::None => "",
            DiffCompression::Unknown => "unknown",
            DiffCompression::Gzip => "gzip",
            DiffCompression::Zstd => "zstd",
        }
    }
}

/// Split a media type into its base and its sorted `+` extensions.
fn parse_media_type(mt: &str) -> (&str, Vec<&str>) {
    let mut parts = mt.split('+');
    let base = parts.next().unwrap_or("");
    let mut ext: Vec<&str> = parts.collect();
    ext.sort_unstable();
    (base, ext)
}

/// The compression a layer media type declares; NotImplemented for non-layers.
pub fn diff_compression(mt: &str) -> Result<DiffCompression, Error> {
    let (base, ext) = parse_media_type(mt);
    match base {
        DOCKER_LAYER | DOCKER_LAYER_FOREIGN => Ok(if ext.is_empty() {
            DiffCompression::Unknown
        } else {
            DiffCompression::None
        }),
        DOCKER_LAYER_GZIP | DOCKER_LAYER_FOREIGN_GZIP => Ok(if ext.is_empty() {
            DiffCompression::Gzip
        } else {
            DiffCompression::None
        }),
        DOCKER_LAYER_ZSTD => Ok(if ext.is_empty() {
            DiffCompression::Zstd
        } else {
            DiffCompression::None
        }),
        OCI_LAYER | OCI_LAYER_NON_DISTRIBUTABLE => Ok(match ext.last() {
            Some(&"gzip") => DiffCompression::Gzip,
            Some(&"zstd") => DiffCompression::Zstd,
            _ => DiffCompression::None,
        }),
        _ => Err(Error::unimplemented(format!(
            "unrecognised mediatype {mt}: not implemented"
        ))),
    }
}

/// True for non-distributable (foreign) layers, which registries may not serve.
pub fn is_non_distributable(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.nondistributable.")
        || mt.starts_with("application/vnd.docker.image.rootfs.foreign.")
}

/// True for every layer media type (OCI, Docker, with any `+` suffix).
pub fn is_layer_type(mt: &str) -> bool {
    if mt.starts_with("application/vnd.oci.image.layer.") {
        return true;
    }
    let (base, _) = parse_media_type(mt);
    matches!(
        base,
        DOCKER_LAYER
            | DOCKER_LAYER_GZIP
            | DOCKER_LAYER_FOREIGN
            | DOCKER_LAYER_FOREIGN_GZIP
            | DOCKER_LAYER_ZSTD
    )
}

/// True for media types starting with `application/vnd.docker.`.
pub fn is_docker_type(mt: &str) -> bool {
    mt.starts_with("application/vnd.docker.")
}

/// True for an OCI or Docker schema2 image manifest (schema1 excluded).
pub fn is_manifest_type(mt: &str) -> bool {
    matches!(mt, DOCKER_MANIFEST | OCI_MANIFEST)
}

/// True for an OCI index or a Docker manifest list.
pub fn is_index_type(mt: &str) -> bool {
    matches!(mt, OCI_INDEX | DOCKER_MANIFEST_LIST)
}

/// True for an OCI or Docker image config (checkpoint configs excluded).
pub fn is_config_type(mt: &str) -> bool {
    matches!(mt, DOCKER_CONFIG | OCI_CONFIG)
}

/// True for image configs and containerd checkpoint configs.
pub fn is_known_config(mt: &str) -> bool {
    matches!(
        mt,
        DOCKER_CONFIG | OCI_CONFIG | CONTAINERD_CHECKPOINT | CONTAINERD_CHECKPOINT_CONFIG
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_layers_and_compression() {
        for (mt, c) in [
            (DOCKER_LAYER, DiffCompression::Unknown),
            (DOCKER_LAYER_FOREIGN, DiffCompression::Unknown),
            (DOCKER_LAYER_GZIP, DiffCompression::Gzip),
            (DOCKER_LAYER_FOREIGN_GZIP, DiffCompression::Gzip),
            (OCI_LAYER, DiffCompression::None),
            (OCI_LAYER_GZIP, DiffCompression::Gzip),
            (OCI_LAYER_ZSTD, DiffCompression::Zstd),
            (OCI_LAYER_NON_DISTRIBUTABLE_GZIP, DiffCompression::Gzip),
            (OCI_LAYER_NON_DISTRIBUTABLE_ZSTD, DiffCompression::Zstd),
            // containerd sorts the extensions and looks at the last one
            (OCI_LAYER_GZIP_ENCRYPTED, DiffCompression::Gzip),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip+enc",
                DiffCompression::None,
            ),
        ] {
            assert!(is_layer_type(mt), "{mt}");
            assert_eq!(diff_compression(mt).unwrap(), c, "{mt}");
        }
        let err = diff_compression(OCI_MANIFEST).unwrap_err();
        assert_eq!(err.kind, stevedore_types::ErrorKind::NotImplemented);
        assert!(!is_layer_type(OCI_CONFIG));
        assert!(!is_layer_type(DOCKER_MANIFEST));
    }

    #[test]
    fn classifies_documents() {
        assert!(is_manifest_type(OCI_MANIFEST) && is_manifest_type(DOCKER_MANIFEST));
        assert!(!is_manifest_type(DOCKER_SCHEMA1_MANIFEST));
        assert!(is_index_type(OCI_INDEX) && is_index_type(DOCKER_MANIFEST_LIST));
        assert!(!is_index_type(OCI_MANIFEST));
        assert!(is_config_type(OCI_CONFIG) && is_config_type(DOCKER_CONFIG));
        assert!(!is_config_type(CONTAINERD_CHECKPOINT_CONFIG));
        assert!(is_known_config(CONTAINERD_CHECKPOINT_CONFIG));
        assert!(is_docker_type(DOCKER_MANIFEST_LIST) && !is_docker_type(OCI_INDEX));
        assert!(is_non_distributable(DOCKER_LAYER_FOREIGN_GZIP));
        assert!(is_non_distributable(OCI_LAYER_NON_DISTRIBUTABLE));
        assert!(!is_non_distributable(OCI_LAYER_GZIP));
    }
}
