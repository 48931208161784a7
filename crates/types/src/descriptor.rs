//! OCI content descriptors (media type, digest, size and friends).

use crate::digest::Digest;
use crate::platform::Platform;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An OCI descriptor, serialised with the image-spec JSON field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: impl Into<String>, digest: Digest, size: i64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_oci_json_names() {
        let d = Descriptor::new(
            "application/vnd.oci.image.manifest.v1+json",
            Digest::from_sha256_bytes(&[0; 32]),
            7,
        );
        let j = serde_json::to_value(&d).unwrap();
        assert_eq!(j["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(j["size"], 7);
        assert!(j.get("annotations").is_none());
        let back: Descriptor = serde_json::from_value(j).unwrap();
        assert_eq!(back, d);
    }
}
