//! Pull: resolve, fetch (layers concurrently, into resumable ingests),
//! unpack as layers arrive, label for the GC, create the image record.

use super::{
    blocking, chain_ids, kind_of, resolver_for, Engine, RegistryOptions, Reporter,
    DEFAULT_CONCURRENT_DOWNLOADS, PROGRESS_INTERVAL,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stevedore_content::{Store, WriterOpts};
use stevedore_images::mediatypes;
use stevedore_images::spec::{ImageConfig, Index, Manifest};
use stevedore_metadata::images::Image;
use stevedore_metadata::Db;
use stevedore_remote::{Reference, Repository};
use stevedore_snapshots::Namespaced;
use stevedore_types::platform::MatchPlatform;
use stevedore_types::{Descriptor, Digest, Error, ErrorKind, Result};
use tokio::sync::{mpsc, Semaphore};

/// What to pull and how, whichever front end asked.
pub(crate) struct PullOptions {
    /// The reference to resolve (normalised as docker does).
    pub reference: String,
    /// Which manifests of an index to fetch.
    pub platforms: Box<dyn MatchPlatform>,
    /// Keep only the best-ranked manifest of an index (one platform asked).
    pub best_only: bool,
    /// Fetch every manifest of an index and its config, layers only for the
    /// platforms asked (containerd 2.x's `ImageStore.all_metadata`).
    pub all_metadata: bool,
    pub registry: RegistryOptions,
    /// Unpack into a snapshotter, or not at all.
    pub unpack: Option<UnpackOptions>,
    /// Labels of the image record.
    pub labels: HashMap<String, String>,
    /// The image record's name; None: the normalised reference.
    pub image_name: Option<String>,
    /// The client's lease (`containerd-lease` header); None: the pull
    /// holds its content under a lease of its own until the image exists.
    pub lease: Option<String>,
}

/// Where and what to unpack.
pub(crate) struct UnpackOptions {
    /// The snapshotter's plugin id.
    pub snapshotter: String,
    /// Unpack the pulled manifest this matcher ranks best (none matching:
    /// no unpack); None: the first pulled manifest.
    pub platform: Option<Box<dyn MatchPlatform>>,
}

/// One pull, in one namespace, under one lease.
pub(super) struct Pull {
    pub(super) db: Arc<Db>,
    pub(super) ns: String,
    pub(super) lease: String,
    pub(super) repo: Option<Repository>,
    pub(super) report: Reporter,
    pub(super) downloads: Arc<Semaphore>,
    /// `/content/create` for each blob a pull commits (containerd 2.x).
    pub(super) exchange: crate::exchange::Exchange,
}

impl Pull {
    fn content(&self) -> stevedore_metadata::content::NsContent {
        self.db.content(&self.ns, Some(&self.lease))
    }

    /// True when the blob is already in this namespace (adding it to the lease).
    async fn have(&self, d: &Digest) -> Result<bool> {
        let content = self.content();
        let (db, ns, lease, d2) = (
            self.db.clone(),
            self.ns.clone(),
            self.lease.clone(),
            d.clone(),
        );
        let found = blocking(move || match content.info(&d2) {
            Ok(_) => {
                db.add_lease_resource(
                    &ns,
                    &lease,
                    &stevedore_metadata::leases::Resource::content(&d2),
                )?;
                Ok(true)
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        })
        .await?;
        Ok(found)
    }

    /// Fetch a blob into the content store, resuming an earlier ingest of it.
    /// Two pulls of the same blob share the download: the second waits.
    async fn fetch(&self, desc: &Descriptor) -> Result<()> {
        let kind = kind_of(&desc.media_type);
        if self.have(&desc.digest).await? {
            self.report.item(desc, kind, "exists", desc.size, "").await;
            return Ok(());
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .map_err(|_| Error::unavailable("pull cancelled"))?;
        let reference = format!("pull-{}", desc.digest);
        let started = Instant::now();
        loop {
            let content = self.content();
            let opts = WriterOpts {
                reference: reference.clone(),
                total: desc.size,
                expected: Some(desc.digest.clone()),
            };
            let opened = blocking(move || {
                let w = content.writer(opts)?;
                let offset = w.status()?.offset;
                Ok((w, offset))
            })
            .await;
            let (writer, offset) = match opened {
                Ok(x) => x,
                Err(e) if e.kind == ErrorKind::Unavailable => {
                    // another pull is writing it: wait for that one to finish
                    self.report
                        .item(desc, kind, "waiting", 0, "shared with another pull")
                        .await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if self.have(&desc.digest).await? {
                        self.report.item(desc, kind, "done", desc.size, "").await;
                        return Ok(());
                    }
                    if started.elapsed() > Duration::from_secs(3600) {
                        return Err(e);
                    }
                    continue;
                }
                Err(e) if e.kind == ErrorKind::AlreadyExists => {
                    self.report.item(desc, kind, "exists", desc.size, "").await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            return self.download(desc, kind, writer, offset).await;
        }
    }

    async fn download(
        &self,
        desc: &Descriptor,
        kind: &'static str,
        mut writer: Box<dyn stevedore_content::Writer>,
        offset: i64,
    ) -> Result<()> {
        self.report
            .item(desc, kind, "downloading", offset, "")
            .await;
        let repo = self
            .repo
            .as_ref()
            .ok_or_else(|| Error::internal("fetch without a registry"))?;
        // the writer's commit checks the digest: the stream is not hashed
        let mut reader = repo.fetch_from(desc, offset.max(0) as u64, None).await?;
        // a blocking task owns the writer; chunks flow through a small queue
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(16);
        let d = desc.clone();
        let sink = tokio::task::spawn_blocking(move || -> Result<bool> {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write(&chunk)?;
            }
            match writer.commit(d.size, Some(&d.digest), HashMap::new()) {
                Ok(_) => Ok(true),
                Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            }
        });
        let mut last = Instant::now();
        let mut pos = offset;
        let fed: Result<()> = async {
            while let Some(chunk) = reader.chunk().await? {
                pos += chunk.len() as i64;
                crate::metrics::pull_bytes(chunk.len() as u64);
                if tx.send(chunk).await.is_err() {
                    break;
                }
                if last.elapsed() >= PROGRESS_INTERVAL {
                    last = Instant::now();
                    self.report.item(desc, kind, "downloading", pos, "").await;
                }
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = sink
            .await
            .map_err(|e| Error::internal(format!("content writer task: {e}")))?;
        if pos >= desc.size && matches!(&written, Err(e) if e.kind == ErrorKind::FailedPrecondition)
        {
            // a whole blob that failed the commit's digest check is not
            // kept for a retry to resume at its end (a short one is: the
            // retry resumes it)
            let (content, r) = (self.content(), format!("pull-{}", desc.digest));
            if let Err(a) = blocking(move || content.abort(&r)).await {
                tracing::warn!("pull: drop the ingest of {}: {a}", desc.digest);
            }
        }
        fed?;
        let created = written.map_err(|e| e.context(format!("store {}", desc.digest)))?;
        if created {
            self.exchange.publish(
                &self.ns,
                "/content/create",
                &stevedore_api::events::ContentCreate {
                    digest: desc.digest.to_string(),
                    size: desc.size,
                },
            );
        }
        self.report.item(desc, kind, "done", desc.size, "").await;
        Ok(())
    }

    /// Read a manifest, index or config with the images library's limits.
    async fn read_json<T: stevedore_images::spec::Document + Send + 'static>(
        &self,
        desc: &Descriptor,
    ) -> Result<T> {
        let content = self.content();
        let d = desc.clone();
        blocking(move || {
            let ra = content.reader_at(&d.digest)?;
            if ra.size() > T::MAX_SIZE as u64 {
                return Err(Error::invalid(format!(
                    "{} {}: {} bytes exceed the limit of {} bytes",
                    T::KIND,
                    d.digest,
                    ra.size(),
                    T::MAX_SIZE
                )));
            }
            let mut buf = Vec::new();
            stevedore_content::read_all(ra.as_ref(), &mut buf)?;
            stevedore_images::spec::decode(&buf, &d)
        })
        .await
    }

    pub(super) async fn set_labels(
        &self,
        d: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if labels.is_empty() {
            return Ok(());
        }
        let content = self.content();
        let d = d.clone();
        blocking(move || {
            let mut info = content.info(&d)?;
            let paths: Vec<String> = labels.keys().map(|k| format!("labels.{k}")).collect();
            info.labels = labels;
            content.update(info, &paths)?;
            Ok(())
        })
        .await
    }
}

/// A manifest to fetch, with what it needs.
pub(super) struct Selected {
    pub(super) desc: Descriptor,
    pub(super) manifest: Manifest,
    pub(super) config: ImageConfig,
}

impl Engine {
    /// Pull an image into namespace `ns`; returns its name and target.
    pub(crate) async fn pull(
        &self,
        ns: String,
        req: PullOptions,
        report: Reporter,
    ) -> Result<(String, Descriptor)> {
        let started = Instant::now();
        let result = self.pull_resolved(ns, req, report).await;
        crate::metrics::pull_done(result.is_ok(), started.elapsed());
        result
    }

    async fn pull_resolved(
        &self,
        ns: String,
        req: PullOptions,
        report: Reporter,
    ) -> Result<(String, Descriptor)> {
        let reference = Reference::parse_normalized(&req.reference)?;
        let resolver = resolver_for(&req.registry);
        let repo = resolver.repository(&reference).await?;
        let root = repo.resolve(&reference).await?;
        report
            .item(
                &root,
                kind_of(&root.media_type),
                "resolved",
                0,
                &reference.to_string(),
            )
            .await;

        // hold everything under a lease until the image record exists
        // (the pull owns its lease only when the client brought none)
        let (lease, owned) = match &req.lease {
            Some(l) => (l.clone(), false),
            None => (self.create_lease(&ns, "pull").await?, true),
        };
        let pull = Arc::new(Pull {
            db: self.db.clone(),
            ns: ns.clone(),
            lease: lease.clone(),
            repo: Some(repo),
            report: report.clone(),
            exchange: self.exchange.clone(),
            downloads: Arc::new(Semaphore::new(
                if req.registry.max_concurrent_downloads > 0 {
                    req.registry.max_concurrent_downloads
                } else {
                    DEFAULT_CONCURRENT_DOWNLOADS
                },
            )),
        });
        let result = self.pull_under_lease(&pull, &reference, root, &req).await;
        // on success the image holds everything and the pull's own lease goes;
        // on failure it lapses (24 h) so a retry resumes from the ingested bytes
        if result.is_ok() && owned {
            self.delete_lease(&ns, &lease).await;
        }
        result
    }

    async fn pull_under_lease(
        &self,
        pull: &Arc<Pull>,
        reference: &Reference,
        root: Descriptor,
        req: &PullOptions,
    ) -> Result<(String, Descriptor)> {
        let matcher = req.platforms.as_ref();
        pull.fetch(&root).await?;
        // walk the index (one level of nesting is what registries serve)
        let mut selected: Vec<Selected> = Vec::new();
        let mut index_labels: HashMap<String, String> = HashMap::new();
        // with all_metadata: the other manifests of the index, fetched with
        // their configs only
        let mut metadata_only: Vec<Descriptor> = Vec::new();
        let manifests: Vec<Descriptor> = if mediatypes::is_index_type(&root.media_type) {
            let index: Index = pull.read_json(&root).await?;
            let all = index.manifests.clone();
            let mut ms: Vec<(usize, Descriptor)> = index
                .manifests
                .into_iter()
                .filter(|m| {
                    m.platform
                        .as_ref()
                        .map(|p| matcher.matches(p))
                        .unwrap_or(true)
                })
                .map(|m| {
                    (
                        m.platform
                            .as_ref()
                            .and_then(|p| matcher.rank(p))
                            .unwrap_or(usize::MAX),
                        m,
                    )
                })
                .collect();
            ms.sort_by_key(|(r, _)| *r);
            if ms.is_empty() {
                return Err(Error::not_found(format!(
                    "pull {reference}: no manifest for the requested platform(s)"
                )));
            }
            if req.best_only {
                ms.truncate(1);
            }
            let chosen: Vec<Descriptor> = ms.into_iter().map(|(_, m)| m).collect();
            if req.all_metadata {
                metadata_only = all
                    .into_iter()
                    .filter(|m| mediatypes::is_manifest_type(&m.media_type))
                    .filter(|m| !chosen.iter().any(|c| c.digest == m.digest))
                    .collect();
            }
            chosen
        } else if mediatypes::is_manifest_type(&root.media_type) {
            vec![root.clone()]
        } else {
            return Err(Error::unimplemented(format!(
                "pull {reference}: unsupported root media type {:?}",
                root.media_type
            )));
        };
        if manifests.first().is_some_and(|m| m.digest != root.digest) {
            let mut children = manifests.clone();
            children.extend(metadata_only.iter().cloned());
            pull.report.children(&root, &children);
        }
        for (i, m) in manifests.iter().chain(&metadata_only).enumerate() {
            if m.digest != root.digest {
                index_labels.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    m.digest.to_string(),
                );
            }
        }
        // the other platforms' manifests and configs (all_metadata): labelled
        // to keep their config, no layers
        for m in &metadata_only {
            pull.fetch(m).await?;
            let manifest: Manifest = pull.read_json(m).await?;
            pull.report
                .children(m, std::slice::from_ref(&manifest.config));
            pull.fetch(&manifest.config).await?;
            pull.set_labels(
                &m.digest,
                HashMap::from([(
                    "containerd.io/gc.ref.content.config".to_string(),
                    manifest.config.digest.to_string(),
                )]),
            )
            .await?;
        }
        for m in manifests {
            if m.digest != root.digest {
                pull.fetch(&m).await?;
            }
            let manifest: Manifest = pull.read_json(&m).await?;
            let mut children = vec![manifest.config.clone()];
            children.extend(manifest.layers.iter().cloned());
            pull.report.children(&m, &children);
            pull.fetch(&manifest.config).await?;
            let config: ImageConfig = pull.read_json(&manifest.config).await?;
            if config.rootfs.diff_ids.len() != manifest.layers.len() {
                return Err(Error::invalid(format!(
                    "pull {reference}: manifest {} has {} layers but its config lists {} diff IDs",
                    m.digest,
                    manifest.layers.len(),
                    config.rootfs.diff_ids.len()
                )));
            }
            selected.push(Selected {
                desc: m,
                manifest,
                config,
            });
        }

        // download every layer concurrently; unpack one platform in order
        // as its layers arrive
        let unpack = match &req.unpack {
            Some(u) => {
                let sn = self.snapshotter("pull", &u.snapshotter)?;
                let which = match &u.platform {
                    None => (!selected.is_empty()).then_some(0),
                    Some(m) => selected
                        .iter()
                        .enumerate()
                        .filter_map(|(i, s)| {
                            let p = s
                                .desc
                                .platform
                                .clone()
                                .unwrap_or_else(|| s.config.platform());
                            m.rank(&p).map(|r| (r, i))
                        })
                        .min()
                        .map(|(_, i)| i),
                };
                which.map(|i| (sn, u.snapshotter.as_str(), i))
            }
            None => None,
        };
        let mut fetches = Vec::new();
        let mut ready: HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>> = HashMap::new();
        for s in &selected {
            for l in &s.manifest.layers {
                if ready.contains_key(&l.digest) || mediatypes::is_non_distributable(&l.media_type)
                {
                    continue;
                }
                let (tx, rx) = tokio::sync::watch::channel(None);
                ready.insert(l.digest.clone(), rx);
                let (p, l) = (pull.clone(), l.clone());
                fetches.push(tokio::spawn(async move {
                    let r = p.fetch(&l).await;
                    let _ = tx.send(Some(r.is_ok()));
                    r
                }));
            }
        }
        let unpacked = match &unpack {
            Some((sn, snapshotter, i)) => Some(
                self.unpack(pull, sn, snapshotter, &selected[*i], &ready)
                    .await,
            ),
            None => None,
        };
        for f in fetches {
            f.await
                .map_err(|e| Error::internal(format!("download task: {e}")))??;
        }
        let top_chain = match unpacked {
            Some(r) => Some(r?),
            None => None,
        };

        // GC labels: index -> manifests -> config/layers -> snapshot
        pull.set_labels(&root.digest, index_labels).await?;
        let source_key = format!("containerd.io/distribution.source.{}", reference.domain());
        for (si, s) in selected.iter().enumerate() {
            let mut labels = HashMap::from([(
                "containerd.io/gc.ref.content.config".to_string(),
                s.manifest.config.digest.to_string(),
            )]);
            for (i, l) in s.manifest.layers.iter().enumerate() {
                labels.insert(
                    format!("containerd.io/gc.ref.content.l.{i}"),
                    l.digest.to_string(),
                );
                let mut ll = HashMap::from([(
                    crate::diff::LABEL_UNCOMPRESSED.to_string(),
                    s.config.rootfs.diff_ids[i].to_string(),
                )]);
                ll.insert(source_key.clone(), reference.path().to_string());
                if !mediatypes::is_non_distributable(&l.media_type) {
                    pull.set_labels(&l.digest, ll).await?;
                }
            }
            pull.set_labels(&s.desc.digest, labels).await?;
            if let (Some((_, snapshotter, i)), Some(chain)) = (&unpack, &top_chain) {
                if *i == si {
                    pull.set_labels(
                        &s.manifest.config.digest,
                        HashMap::from([(
                            format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                            chain.to_string(),
                        )]),
                    )
                    .await?;
                }
            }
        }

        // the image record
        let name = req
            .image_name
            .clone()
            .unwrap_or_else(|| reference.to_string());
        let image = Image {
            name: name.clone(),
            labels: req.labels.clone(),
            target: Descriptor::new(root.media_type.clone(), root.digest.clone(), root.size),
            created_at: 0,
            updated_at: 0,
        };
        let img = self.store_image(&pull.ns, image).await?;
        Ok((name, img.target))
    }

    /// Unpack one manifest's layers into the snapshotter, in order, each as
    /// soon as it has arrived. Returns the top chain ID.
    pub(super) async fn unpack(
        &self,
        pull: &Arc<Pull>,
        sn: &Namespaced,
        snapshotter: &str,
        s: &Selected,
        ready: &HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>>,
    ) -> Result<Digest> {
        let chains = chain_ids(&s.config.rootfs.diff_ids);
        // the layers already unpacked (a shared base image) are kept
        let mut parent = String::new();
        let mut first = 0;
        for chain in &chains {
            let (sn2, ns, c) = (sn.clone(), pull.ns.clone(), chain.to_string());
            let exists = blocking(move || match sn2.stat(&ns, &c) {
                Ok(_) => Ok(true),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            })
            .await?;
            if !exists {
                break;
            }
            pull.db_lease_snapshot(snapshotter, &chain.to_string())
                .await?;
            parent = chain.to_string();
            first += 1;
        }
        let layers = &s.manifest.layers[first..];
        if sn.can_rebase() && layers.len() > 1 {
            self.unpack_concurrently(pull, sn, snapshotter, s, ready, first, parent)
                .await?;
        } else {
            for (i, layer) in layers.iter().enumerate() {
                let i = first + i;
                wait_downloaded(ready, layer).await?;
                self.unpack_on_parent(pull, sn, snapshotter, s, i, &chains[i], &parent)
                    .await?;
                parent = chains[i].to_string();
            }
        }
        chains
            .last()
            .cloned()
            .ok_or_else(|| Error::invalid("pull: image has no layers"))
    }

    /// Unpack layer `i` of `s` onto committed `parent` and commit it under
    /// its chain ID `chain`.
    #[allow(clippy::too_many_arguments)]
    async fn unpack_on_parent(
        &self,
        pull: &Arc<Pull>,
        sn: &Namespaced,
        snapshotter: &str,
        s: &Selected,
        i: usize,
        chain: &Digest,
        parent: &str,
    ) -> Result<()> {
        let layer = &s.manifest.layers[i];
        let chain = chain.clone();
        let diff_id = s.config.rootfs.diff_ids[i].clone();
        pull.report.item(layer, "layer", "extracting", 0, "").await;
        let key = extract_key(&chain);
        pull.db_lease_snapshot(snapshotter, &key).await?;
        pull.db_lease_snapshot(snapshotter, &chain.to_string())
            .await?;
        let (sn2, ns, db, scratch) = (
            sn.clone(),
            pull.ns.clone(),
            self.db.clone(),
            self.scratch.clone(),
        );
        let (layer2, parent2) = (layer.clone(), parent.to_string());
        blocking(move || {
            let mounts = sn2.prepare(&ns, &key, &parent2, HashMap::new())?;
            let applied = crate::diff::apply_layer(&db, &ns, &layer2, &mounts, &scratch)
                .and_then(|a| check_diff_id(&layer2, &a.digest, &diff_id));
            commit_layer(&sn2, &ns, &chain, &key, applied)
        })
        .await?;
        pull.report
            .item(layer, "layer", "extracted", layer.size, "")
            .await;
        Ok(())
    }

    /// Unpack layers `first..` of `s` at once, each into its own parentless
    /// snapshot as soon as it is downloaded (bounded by the CPUs), then
    /// stack them in order: each is rebased onto the one below and
    /// committed, so only the (cheap) commits are sequential. Directories a
    /// layer needed but did not carry get the attributes they have in the
    /// layers below once it is stacked (what applying onto its parent
    /// gives them).
    #[allow(clippy::too_many_arguments)]
    async fn unpack_concurrently(
        &self,
        pull: &Arc<Pull>,
        sn: &Namespaced,
        snapshotter: &str,
        s: &Selected,
        ready: &HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>>,
        first: usize,
        mut parent: String,
    ) -> Result<()> {
        let chains = chain_ids(&s.config.rootfs.diff_ids);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slots = Arc::new(Semaphore::new(cpus.max(2)));
        let mut tasks = Vec::new();
        for (i, layer) in s.manifest.layers.iter().enumerate().skip(first) {
            let key = extract_key(&chains[i]);
            pull.db_lease_snapshot(snapshotter, &key).await?;
            let rx = ready.get(&layer.digest).cloned();
            let (pull2, sn2, db, slots) =
                (pull.clone(), sn.clone(), self.db.clone(), slots.clone());
            let (layer, key2) = (layer.clone(), key.clone());
            let task = tokio::spawn(async move {
                if let Some(mut rx) = rx {
                    wait_ready(&mut rx, &layer).await?;
                }
                let _slot = slots
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::unavailable("unpack: pull ended"))?;
                pull2
                    .report
                    .item(&layer, "layer", "extracting", 0, "")
                    .await;
                let ns = pull2.ns.clone();
                blocking(move || {
                    let mounts = sn2.prepare(&ns, &key2, "", HashMap::new())?;
                    let upper = match mounts.as_slice() {
                        [m] if m.kind == "bind" => std::path::PathBuf::from(&m.source),
                        _ => {
                            let _ = sn2.remove(&ns, &key2);
                            return Err(Error::internal(format!(
                                "unpack layer {}: a parentless snapshot is not one bind mount",
                                layer.digest
                            )));
                        }
                    };
                    // the bottom layer has nothing to white out (and is
                    // mounted alone as a bind): whiteouts delete, as when
                    // applied onto its bind mount
                    let whiteouts = if i == 0 {
                        stevedore_diff::WhiteoutMode::Delete
                    } else {
                        stevedore_diff::WhiteoutMode::Overlay
                    };
                    let applied =
                        crate::diff::apply_layer_to_upper(&db, &ns, &layer, &upper, whiteouts);
                    if applied.is_err() {
                        let _ = sn2.remove(&ns, &key2);
                    }
                    applied
                })
                .await
            });
            tasks.push((i, key, task));
        }
        let mut result = Ok(());
        let mut tasks = tasks.into_iter();
        for (i, key, task) in tasks.by_ref() {
            let layer = &s.manifest.layers[i];
            let chain = chains[i].clone();
            let step = async {
                let applied = task
                    .await
                    .map_err(|e| Error::internal(format!("unpack task: {e}")))??;
                let (sn2, ns) = (sn.clone(), pull.ns.clone());
                pull.db_lease_snapshot(snapshotter, &chain.to_string())
                    .await?;
                let (diff_id, parent2, layer2, chain2) = (
                    s.config.rootfs.diff_ids[i].clone(),
                    parent.clone(),
                    layer.clone(),
                    chain.clone(),
                );
                blocking(move || {
                    // directories the layer needed but did not carry take
                    // their owner, mode and xattrs from the layers below,
                    // as when applied onto its parent
                    let stacked = check_diff_id(&layer2, &applied.diff_id, &diff_id)
                        .and_then(|()| sn2.rebase(&ns, &key, &parent2))
                        .and_then(|mounts| {
                            stevedore_diff::mounts::inherit_implicit_dirs_in_mounts(
                                &mounts,
                                &applied.implicit_dirs,
                            )
                        });
                    commit_layer(&sn2, &ns, &chain2, &key, stacked)
                })
                .await?;
                pull.report
                    .item(layer, "layer", "extracted", layer.size, "")
                    .await;
                Ok(())
            };
            if let Err(e) = step.await {
                result = Err(e);
                break;
            }
            parent = chain.to_string();
        }
        // after a failure, let the other extractions finish and drop them
        // (their snapshots are leased, so a crash here leaves nothing)
        for (_, key, task) in tasks {
            if let Ok(Ok(_)) = task.await {
                let (sn2, ns) = (sn.clone(), pull.ns.clone());
                let _ = blocking(move || sn2.remove(&ns, &key)).await;
            }
        }
        result
    }
}

/// The key of the active snapshot a layer is unpacked into.
fn extract_key(chain: &Digest) -> String {
    format!("extract-{}-{}", uuid::Uuid::new_v4().simple(), chain.hex())
}

/// Wait until `layer` is in the content store (no entry in `ready`: it was
/// there before the pull).
async fn wait_downloaded(
    ready: &HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>>,
    layer: &Descriptor,
) -> Result<()> {
    match ready.get(&layer.digest) {
        Some(rx) => wait_ready(&mut rx.clone(), layer).await,
        None => Ok(()),
    }
}

async fn wait_ready(
    rx: &mut tokio::sync::watch::Receiver<Option<bool>>,
    layer: &Descriptor,
) -> Result<()> {
    let ok = rx
        .wait_for(|v| v.is_some())
        .await
        .map_err(|_| Error::unavailable("layer download ended"))?
        .unwrap_or(false);
    if ok {
        Ok(())
    } else {
        Err(Error::unavailable(format!(
            "layer {} was not downloaded",
            layer.digest
        )))
    }
}

fn check_diff_id(layer: &Descriptor, got: &Digest, diff_id: &Digest) -> Result<()> {
    if got == diff_id {
        return Ok(());
    }
    Err(Error::precondition(format!(
        "unpack layer {}: uncompressed digest {got} does not match diff ID {diff_id}",
        layer.digest
    )))
}

/// Commit active `key` as `chain` (labelled as containerd labels layer
/// snapshots) once `ready` (its layer applied and checked) is Ok; otherwise,
/// or when the commit fails, `key` goes. A chain another pull committed
/// first is kept and `key` goes.
fn commit_layer(
    sn: &Namespaced,
    ns: &str,
    chain: &Digest,
    key: &str,
    ready: Result<()>,
) -> Result<()> {
    if let Err(e) = ready {
        let _ = sn.remove(ns, key);
        return Err(e);
    }
    let labels = HashMap::from([(
        stevedore_snapshots::LABEL_SNAPSHOT_REF.to_string(),
        chain.to_string(),
    )]);
    match sn.commit(ns, &chain.to_string(), key, labels) {
        Ok(()) => Ok(()),
        Err(e) if e.kind == ErrorKind::AlreadyExists => {
            let _ = sn.remove(ns, key);
            Ok(())
        }
        Err(e) => {
            let _ = sn.remove(ns, key);
            Err(e)
        }
    }
}

impl Pull {
    async fn db_lease_snapshot(&self, snapshotter: &str, key: &str) -> Result<()> {
        let r = stevedore_metadata::leases::Resource {
            id: key.to_string(),
            kind: format!("snapshots/{snapshotter}"),
        };
        let (db, ns, lease) = (self.db.clone(), self.ns.clone(), self.lease.clone());
        blocking(move || db.add_lease_resource(&ns, &lease, &r)).await
    }
}

pub(super) async fn select_host_manifest(
    pull: &Pull,
    target: &Descriptor,
) -> Result<Option<Selected>> {
    let matcher = stevedore_types::platform::default_matcher();
    let mdesc = if mediatypes::is_index_type(&target.media_type) {
        let index: Index = pull.read_json(target).await?;
        let best = index
            .manifests
            .into_iter()
            .filter(|m| mediatypes::is_manifest_type(&m.media_type))
            .filter_map(|m| {
                let rank = match &m.platform {
                    Some(p) => matcher.rank(p)?,
                    None => usize::MAX - 1,
                };
                Some((rank, m))
            })
            .min_by_key(|(r, _)| *r);
        match best {
            Some((_, m)) => m,
            None => return Ok(None),
        }
    } else {
        target.clone()
    };
    let (content, d) = (pull.content(), mdesc.digest.clone());
    if blocking(move || Ok(content.info(&d).is_err())).await? {
        return Ok(None);
    }
    let manifest: Manifest = pull.read_json(&mdesc).await?;
    let config: ImageConfig = pull.read_json(&manifest.config).await?;
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(Error::invalid(format!(
            "manifest {} has {} layers but its config lists {} diff IDs",
            mdesc.digest,
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(Some(Selected {
        desc: mdesc,
        manifest,
        config,
    }))
}
