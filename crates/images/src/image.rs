//! Questions asked of an image given its target descriptor: which manifest
//! serves a platform, its config, diff IDs, size, platforms, what content is
//! present, and a layer's diff ID.

use crate::content::{DigestingReader, LabelManager, Provider};
use crate::handlers::{
    children_handler, filter_platforms, limit_manifests, sort_by_platform, walk, Handler,
    HandlerError, HandlerResult, Handlers,
};
use crate::mediatypes::*;
use crate::spec::{read_config, read_index, read_manifest, Manifest};
use std::io::{self, Read};
use stevedore_types::platform::MatchPlatform;
use stevedore_types::{Algorithm, Descriptor, Digest, Error, ErrorKind, Platform, Result};

/// The manifest of `image` for `platform` (containerd's `images.Manifest`):
/// indexes are descended, best platform first; a manifest without a platform
/// in an index is matched on its config's platform. A manifest given
/// directly is returned without a platform check.
pub fn manifest(
    provider: &dyn Provider,
    image: &Descriptor,
    platform: Option<&dyn MatchPlatform>,
) -> Result<Manifest> {
    Ok(manifest_with_descriptor(provider, image, platform)?.1)
}

/// Like [`manifest`], also returning the manifest's descriptor.
pub fn manifest_with_descriptor(
    provider: &dyn Provider,
    image: &Descriptor,
    platform: Option<&dyn MatchPlatform>,
) -> Result<(Descriptor, Manifest)> {
    let found: std::cell::RefCell<Vec<(Descriptor, Manifest)>> = Default::default();
    let was_index = std::cell::Cell::new(false);
    let h = |desc: &Descriptor| -> HandlerResult {
        if is_manifest_type(&desc.media_type) {
            let m = read_manifest(provider, desc)?;
            if desc.digest != image.digest {
                if let Some(pm) = platform {
                    match &desc.platform {
                        Some(p) if !pm.matches(p) => return Ok(Vec::new()),
                        Some(_) => {}
                        None => {
                            let cfg = read_config(provider, &m.config)?;
                            if !pm.matches(&cfg.platform()) {
                                return Ok(Vec::new());
                            }
                        }
                    }
                }
            }
            found.borrow_mut().push((desc.clone(), m));
            return Ok(Vec::new());
        }
        if is_index_type(&desc.media_type) {
            let idx = read_index(provider, desc)?;
            let Some(pm) = platform else {
                return Ok(idx.manifests);
            };
            let mut descs: Vec<Descriptor> = idx
                .manifests
                .into_iter()
                .filter(|d| d.platform.as_ref().is_none_or(|p| pm.matches(p)))
                .collect();
            sort_by_platform(pm, &mut descs);
            was_index.set(true);
            descs.truncate(1);
            return Ok(descs);
        }
        Err(Error::not_found(format!(
            "unexpected media type {} for {}: not found",
            desc.media_type, desc.digest
        ))
        .into())
    };
    walk(&h, std::slice::from_ref(image))?;
    let mut found = found.into_inner();
    if found.is_empty() {
        return Err(Error::not_found(if was_index.get() {
            format!(
                "no match for platform in manifest {}: not found",
                image.digest
            )
        } else {
            format!("manifest {}: not found", image.digest)
        }));
    }
    Ok(found.swap_remove(0))
}

/// The config descriptor of the image's manifest for `platform`.
pub fn config(
    provider: &dyn Provider,
    image: &Descriptor,
    platform: Option<&dyn MatchPlatform>,
) -> Result<Descriptor> {
    Ok(manifest(provider, image, platform)?.config)
}

/// The diff IDs (uncompressed layer digests) a config lists.
pub fn rootfs(provider: &dyn Provider, config: &Descriptor) -> Result<Vec<Digest>> {
    Ok(read_config(provider, config)?.rootfs.diff_ids)
}

/// What unpacking an image for a platform needs: the manifest, its config,
/// and each layer paired with its diff ID (checked to be as many as layers).
#[derive(Debug, Clone)]
pub struct UnpackPlan {
    pub manifest_descriptor: Descriptor,
    pub config: Descriptor,
    pub layers: Vec<(Descriptor, Digest)>,
}

/// Resolve the [`UnpackPlan`] of `image` for `platform`.
pub fn unpack_plan(
    provider: &dyn Provider,
    image: &Descriptor,
    platform: &dyn MatchPlatform,
) -> Result<UnpackPlan> {
    let (mdesc, m) = manifest_with_descriptor(provider, image, Some(platform))?;
    let diff_ids = rootfs(provider, &m.config)?;
    if diff_ids.len() != m.layers.len() {
        return Err(Error::invalid(format!(
            "mismatched image rootfs and manifest layers in {}: {} diff IDs, {} layers",
            mdesc.digest,
            diff_ids.len(),
            m.layers.len()
        )));
    }
    Ok(UnpackPlan {
        manifest_descriptor: mdesc,
        config: m.config,
        layers: m.layers.into_iter().zip(diff_ids).collect(),
    })
}

/// Total size of the image's packed content for `platform`: the target, the
/// best-matching manifest, its config and layers.
pub fn size(
    provider: &dyn Provider,
    image: &Descriptor,
    platform: &dyn MatchPlatform,
) -> Result<i64> {
    let total = std::cell::Cell::new(0i64);
    let add = |d: &Descriptor| -> HandlerResult {
        if d.size < 0 {
            return Err(Error::invalid(format!(
                "invalid size {} in {} ({})",
                d.size, d.digest, d.media_type
            ))
            .into());
        }
        // sizes come from manifests: a hostile one must not overflow the sum
        let sum = total.get().checked_add(d.size).ok_or_else(|| {
            Error::invalid(format!(
                "image {}: total size overflows at {} ({})",
                image.digest, d.digest, d.media_type
            ))
        })?;
        total.set(sum);
        Ok(Vec::new())
    };
    let kids = limit_manifests(
        filter_platforms(children_handler(provider), platform),
        platform,
        1,
    );
    let chain: Vec<Box<dyn Handler + '_>> = vec![Box::new(add), Box::new(kids)];
    walk(&Handlers(chain), std::slice::from_ref(image))?;
    Ok(total.get())
}

/// The platforms an image supports: from index entries, or from configs.
pub fn platforms(provider: &dyn Provider, image: &Descriptor) -> Result<Vec<Platform>> {
    let out: std::cell::RefCell<Vec<Platform>> = Default::default();
    let collect = |d: &Descriptor| -> HandlerResult {
        if let Some(p) = &d.platform {
            out.borrow_mut().push(p.clone());
            return Err(HandlerError::SkipDesc);
        }
        if is_config_type(&d.media_type) {
            let cfg = read_config(provider, d)?;
            out.borrow_mut()
                .push(Platform::new(&cfg.os, &cfg.architecture, "").normalize());
        }
        Ok(Vec::new())
    };
    let chain: Vec<Box<dyn Handler + '_>> =
        vec![Box::new(collect), Box::new(children_handler(provider))];
    walk(&Handlers(chain), std::slice::from_ref(image))?;
    Ok(out.into_inner())
}

/// Result of [`check`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckResult {
    /// The manifest was resolved, so `required` is complete.
    pub available: bool,
    pub required: Vec<Descriptor>,
    pub present: Vec<Descriptor>,
    pub missing: Vec<Descriptor>,
}

/// Which of the image's config and layers for `platform` are present
/// (containerd's `images.Check`). An unresolvable manifest makes the image
/// itself required and missing.
pub fn check(
    provider: &dyn Provider,
    image: &Descriptor,
    platform: Option<&dyn MatchPlatform>,
) -> Result<CheckResult> {
    let m = match manifest(provider, image, platform) {
        Ok(m) => m,
        Err(e) if e.is(ErrorKind::NotFound) => {
            return Ok(CheckResult {
                available: false,
                required: vec![image.clone()],
                present: Vec::new(),
                missing: vec![image.clone()],
            })
        }
        Err(e) => return Err(e.context(format!("failed to check image {}", image.digest))),
    };
    let mut res = CheckResult {
        available: true,
        ..Default::default()
    };
    res.required.push(m.config);
    res.required.extend(m.layers);
    for d in &res.required {
        match provider.info(&d.digest) {
            Ok(_) => res.present.push(d.clone()),
            Err(e) if e.is(ErrorKind::NotFound) => res.missing.push(d.clone()),
            Err(e) => return Err(e.context(format!("failed to check image {}", d.digest))),
        }
    }
    Ok(res)
}

/// Open a decompressing reader over a layer, detecting gzip and zstd by
/// their magic bytes (containerd's `compression.DecompressStream`).
pub fn decompress(mut r: Box<dyn Read + Send>) -> Result<Box<dyn Read + Send>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        let k = r.read(&mut head[n..])?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let chained: Box<dyn Read + Send> = Box::new(io::Cursor::new(head[..n].to_vec()).chain(r));
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(
            io::BufReader::with_capacity(1 << 16, chained),
        )),
        [0x28, 0xb5, 0x2f, 0xfd] => Box::new(
            zstd::stream::read::Decoder::new(chained)
                .map_err(|e| Error::internal(format!("open zstd decoder: {e}")))?,
        ),
        _ => chained,
    })
}

/// The diff ID of a layer (containerd's `images.GetDiffID`): uncompressed
/// layers are their own diff ID; otherwise the `containerd.io/uncompressed`
/// label, or the digest of the decompressed stream, which is then
/// remembered in that label.
pub fn get_diff_id(
    provider: &dyn Provider,
    manager: &dyn LabelManager,
    desc: &Descriptor,
) -> Result<Digest> {
    if matches!(
        desc.media_type.as_str(),
        DOCKER_LAYER | OCI_LAYER | DOCKER_LAYER_FOREIGN | OCI_LAYER_NON_DISTRIBUTABLE
    ) {
        return Ok(desc.digest.clone());
    }
    let info = provider.info(&desc.digest)?;
    if let Some(v) = info.labels.get(LABEL_UNCOMPRESSED) {
        return v.parse();
    }
    let r = decompress(provider.reader(desc, 0)?)?;
    let mut r = DigestingReader::new(r, Algorithm::Sha256);
    io::copy(&mut r, &mut io::sink())
        .map_err(|e| Error::from(e).context(format!("decompress layer {}", desc.digest)))?;
    let d = r.digest();
    // Memorising is best effort, as in containerd.
    let _ = manager.set_labels(
        &desc.digest,
        &[(LABEL_UNCOMPRESSED.to_string(), d.to_string())],
    );
    Ok(d)
}
