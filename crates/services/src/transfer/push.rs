//! Push: a local image's blobs (skipped when the registry has them, mounted
//! across repositories of the same registry when the content came from
//! one), then its manifests children before parents, then the tag.

use super::{blocking, kind_of, resolver_for, Engine, RegistryOptions, Reporter};
use stevedore_content::Store;
use stevedore_images::mediatypes;
use stevedore_images::spec::{Index, Manifest};
use stevedore_remote::Reference;
use stevedore_types::platform::MatchPlatform;
use stevedore_types::{Descriptor, Digest, Error, Result};

/// What to push and how, whichever front end asked.
pub(crate) struct PushOptions {
    /// The local image.
    pub source: String,
    /// The remote reference; empty means the image's own name.
    pub reference: String,
    /// Which manifests of an index to push (a subset is refused: it would
    /// change the index's digest).
    pub platforms: Box<dyn MatchPlatform>,
    pub registry: RegistryOptions,
}

fn content_reader(
    content: stevedore_metadata::content::NsContent,
    d: Digest,
) -> stevedore_remote::PushReader {
    use tokio::io::AsyncWriteExt;
    let (mut w, r) = tokio::io::duplex(1 << 20);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let ra = match content.reader_at(&d) {
            Ok(ra) => ra,
            Err(e) => {
                tracing::warn!(digest = %d, error = %e, "push: cannot read blob");
                return;
            }
        };
        let mut off = 0u64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match ra.read_at(&mut buf, off) {
                Ok(0) => break,
                Ok(n) => {
                    off += n as u64;
                    if handle.block_on(w.write_all(&buf[..n])).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(digest = %d, error = %e, "push: read failed");
                    return;
                }
            }
        }
        let _ = handle.block_on(w.shutdown());
    });
    Box::new(r)
}

/// Push a local image: blobs first (skipping what the registry has, mounting
/// across repositories of the same registry when the content came from one),
/// then manifests children before parents, then the tag.
async fn push_image(
    engine: &Engine,
    ns: String,
    r: PushOptions,
    report: Reporter,
) -> Result<(String, Descriptor)> {
    let db = engine.db.clone();
    let (db2, n2, src) = (db.clone(), ns.clone(), r.source.clone());
    let image = blocking(move || db2.get_image(&n2, &src)).await?;
    let target_ref = if r.reference.is_empty() {
        &r.source
    } else {
        &r.reference
    };
    let reference = Reference::parse_normalized(target_ref)?;
    let resolver = resolver_for(&r.registry);
    let matcher = r.platforms.as_ref();
    let repo = resolver.repository(&reference).await?;
    let content = db.content(&ns, None);
    let read_json = |d: Descriptor| {
        let c = content.clone();
        async move {
            blocking(move || {
                let ra = c.reader_at(&d.digest)?;
                let limit = stevedore_types::limits::MAX_MANIFEST_SIZE as u64;
                if ra.size() > limit {
                    return Err(Error::invalid(format!(
                        "manifest {}: {} bytes exceed the limit of {limit} bytes",
                        d.digest,
                        ra.size()
                    )));
                }
                let mut buf = Vec::new();
                stevedore_content::read_all(ra.as_ref(), &mut buf)?;
                Ok(buf)
            })
            .await
        }
    };
    // children first: blobs, then manifests, then the root
    let root = image.target.clone();
    let mut blobs: Vec<Descriptor> = Vec::new();
    let mut manifests: Vec<Descriptor> = Vec::new();
    let mut root_bytes = read_json(root.clone()).await?;
    if mediatypes::is_index_type(&root.media_type) {
        let mut index: Index = stevedore_images::spec::decode(&root_bytes, &root)?;
        let all = index.manifests.len();
        index.manifests.retain(|m| {
            m.platform
                .as_ref()
                .map(|p| matcher.matches(p))
                .unwrap_or(true)
        });
        if index.manifests.len() != all {
            return Err(Error::unimplemented(format!(
                "push {reference}: pushing a subset of a multi-platform index would change its digest; push all platforms"
            )));
        }
        for m in &index.manifests {
            manifests.push(m.clone());
        }
    } else {
        manifests.push(root.clone());
    }
    for m in &manifests {
        let bytes = read_json(m.clone()).await?;
        let manifest: Manifest = stevedore_images::spec::decode(&bytes, m)?;
        blobs.push(manifest.config.clone());
        for l in manifest.layers {
            if !mediatypes::is_non_distributable(&l.media_type)
                && !blobs.iter().any(|b| b.digest == l.digest)
            {
                blobs.push(l);
            }
        }
    }
    let source_label = format!("containerd.io/distribution.source.{}", reference.domain());
    for b in &blobs {
        let kind = kind_of(&b.media_type);
        report.item(b, kind, "uploading", 0, "").await;
        let mount_from = {
            let (c, d) = (content.clone(), b.digest.clone());
            blocking(move || c.info(&d))
                .await
                .ok()
                .and_then(|i| i.labels.get(&source_label).cloned())
        };
        let outcome = repo
            .push_blob(
                b,
                content_reader(content.clone(), b.digest.clone()),
                &stevedore_remote::PushBlobOptions {
                    mount_from,
                    chunk_size: None,
                },
            )
            .await?;
        let status = match outcome {
            stevedore_remote::PushOutcome::Exists => "exists",
            stevedore_remote::PushOutcome::Mounted => "mounted",
            stevedore_remote::PushOutcome::Uploaded => "done",
        };
        report.item(b, kind, status, b.size, "").await;
    }
    for m in manifests.iter().filter(|m| m.digest != root.digest) {
        let bytes = read_json(m.clone()).await?;
        repo.push_manifest(&m.digest.to_string(), &m.media_type, bytes.into())
            .await?;
        report.item(m, "manifest", "done", m.size, "").await;
    }
    let tag = reference
        .tag()
        .map(str::to_string)
        .unwrap_or_else(|| root.digest.to_string());
    repo.push_manifest(
        &tag,
        &root.media_type,
        std::mem::take(&mut root_bytes).into(),
    )
    .await?;
    report
        .item(&root, kind_of(&root.media_type), "done", root.size, "")
        .await;
    Ok((reference.to_string(), root))
}

impl Engine {
    /// Push a local image; returns the remote reference and the pushed root.
    pub(crate) async fn push(
        &self,
        ns: String,
        opts: PushOptions,
        report: Reporter,
    ) -> Result<(String, Descriptor)> {
        push_image(self, ns, opts, report).await
    }
}
