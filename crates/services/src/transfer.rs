//! stevedore's Transfer service: pull runs inside the daemon. The registry's
//! bytes go straight into the content store (hashed while written, resumable
//! ingests keyed by digest), layers download concurrently (bounded), and each
//! layer is unpacked into the snapshotter as soon as it and its parent are
//! ready, so decompression and apply overlap the downloads of later layers.
//! Everything is held by a lease until the image record exists and the GC
//! labels link index -> manifests -> config/layers -> snapshot.

use crate::content::lease_of;
use crate::convert::descriptor_to_pb;
use crate::exchange::Exchange;
use crate::{namespace_of, GrpcService};
use futures::Stream;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use stevedore_api::services::images::{ImageCreate, ImageUpdate};
use stevedore_api::services::transfer::{
    transfer_server::{Transfer, TransferServer},
    ConvertRequest, ConvertResponse, ExportChunk, ExportRequest, ImportRequest, Progress,
    PullRequest, PushRequest, TransferProgress,
};
use stevedore_api::status::to_status;
use stevedore_content::{Store, WriterOpts};
use stevedore_images::mediatypes;
use stevedore_images::spec::{ImageConfig, Index, Manifest};
use stevedore_metadata::images::Image;
use stevedore_metadata::Db;
use stevedore_remote::{
    Credentials, HostOptions, Reference, Repository, Resolver, ResolverOptions,
};
use stevedore_snapshots::Namespaced;
use stevedore_types::platform::{All, MatchPlatform, Only};
use stevedore_types::{Descriptor, Digest, Error, ErrorKind, Platform, Result};
use tokio::sync::{mpsc, Semaphore};
use tonic::{Request, Response, Status};

/// Parallel layer downloads when the client does not say.
const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;
/// Progress of one blob is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

pub struct TransferService {
    db: Arc<Db>,
    snapshotters: BTreeMap<String, Namespaced>,
    exchange: Exchange,
    scratch: PathBuf,
}

impl TransferService {
    pub fn grpc(
        db: Arc<Db>,
        snapshotters: BTreeMap<String, Namespaced>,
        exchange: Exchange,
        scratch: PathBuf,
    ) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(TransferServer::new(
            TransferService {
                db,
                snapshotters,
                exchange,
                scratch,
            }
        )))
    }
}

/// Sends progress to the client; a client that went away does not stop the
/// transfer (the work is shared and resumable), it just stops hearing.
#[derive(Clone)]
struct Reporter {
    tx: mpsc::Sender<std::result::Result<TransferProgress, Status>>,
}

impl Reporter {
    async fn item(&self, desc: &Descriptor, kind: &str, status: &str, offset: i64, message: &str) {
        let _ = self
            .tx
            .send(Ok(TransferProgress {
                items: vec![Progress {
                    id: desc.digest.to_string(),
                    kind: kind.to_string(),
                    status: status.to_string(),
                    offset,
                    total: desc.size,
                    message: message.to_string(),
                }],
                ..Default::default()
            }))
            .await;
    }
}

/// Accepts a platform if any of several matchers does.
struct AnyOf(Vec<Box<dyn MatchPlatform>>);

impl MatchPlatform for AnyOf {
    fn matches(&self, p: &Platform) -> bool {
        self.0.iter().any(|m| m.matches(p))
    }
    fn rank(&self, p: &Platform) -> Option<usize> {
        self.0.iter().filter_map(|m| m.rank(p)).min()
    }
}

/// A registry resolver from the client's options (hosts directory, plain
/// HTTP, basic credentials for whatever host asks).
fn resolver_for(opts: &stevedore_api::services::transfer::RegistryOptions) -> Resolver {
    let credentials = (!opts.username.is_empty()).then(|| {
        let c = Credentials {
            username: opts.username.clone(),
            secret: opts.password.clone(),
        };
        Arc::new(move |_host: &str| Some(c.clone())) as stevedore_remote::CredentialsFn
    });
    Resolver::new(ResolverOptions {
        hosts: HostOptions {
            hosts_dir: (!opts.hosts_dir.is_empty()).then(|| PathBuf::from(&opts.hosts_dir)),
            default_scheme: opts.plain_http.then(|| "http".to_string()),
        },
        credentials,
        ..Default::default()
    })
}

/// Every platform when `all`, the host's when none is named, else any of the
/// named ones (each with what it can run).
fn platform_matcher(platforms: &[String], all: bool) -> Result<Box<dyn MatchPlatform>> {
    if all {
        return Ok(Box::new(All));
    }
    if platforms.is_empty() {
        return Ok(Box::new(stevedore_types::platform::default_matcher()));
    }
    let mut v: Vec<Box<dyn MatchPlatform>> = Vec::new();
    for p in platforms {
        v.push(Box::new(Only::new(p.parse::<Platform>()?)));
    }
    Ok(Box::new(AnyOf(v)))
}

fn kind_of(media_type: &str) -> &'static str {
    if mediatypes::is_index_type(media_type) {
        "index"
    } else if mediatypes::is_manifest_type(media_type) {
        "manifest"
    } else if mediatypes::is_config_type(media_type) {
        "config"
    } else {
        "layer"
    }
}

/// containerd's chain ID: the identity of a stack of layers.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    use sha2::Digest as _;
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => {
                let mut h = sha2::Sha256::new();
                h.update(format!("{prev} {d}").as_bytes());
                Digest::from_sha256_bytes(&h.finalize())
            }
        };
        out.push(next);
    }
    out
}

/// One pull, in one namespace, under one lease.
struct Pull {
    db: Arc<Db>,
    ns: String,
    lease: String,
    repo: Option<Repository>,
    report: Reporter,
    downloads: Arc<Semaphore>,
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
        let mut reader = repo.fetch_from(desc, offset.max(0) as u64, None).await?;
        // a blocking task owns the writer; chunks flow through a small queue
        let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(16);
        let d = desc.clone();
        let sink = tokio::task::spawn_blocking(move || -> Result<()> {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write(&chunk)?;
            }
            match writer.commit(d.size, Some(&d.digest), HashMap::new()) {
                Ok(_) => Ok(()),
                Err(e) if e.kind == ErrorKind::AlreadyExists => Ok(()),
                Err(e) => Err(e),
            }
        });
        let mut last = Instant::now();
        let mut pos = offset;
        let fed: Result<()> = async {
            while let Some(chunk) = reader.chunk().await? {
                pos += chunk.len() as i64;
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
        fed?;
        written.map_err(|e| e.context(format!("store {}", desc.digest)))?;
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

    async fn set_labels(&self, d: &Digest, labels: HashMap<String, String>) -> Result<()> {
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}

/// A manifest to fetch, with what it needs.
struct Selected {
    desc: Descriptor,
    manifest: Manifest,
    config: ImageConfig,
}

impl TransferService {
    async fn pull(
        &self,
        ns: String,
        lease_hdr: Option<String>,
        req: PullRequest,
        report: Reporter,
    ) -> Result<(String, Descriptor)> {
        let reference = Reference::parse_normalized(&req.reference)?;
        let opts = req.registry.clone().unwrap_or_default();
        let resolver = resolver_for(&opts);
        let matcher = platform_matcher(&req.platforms, req.all_platforms)?;
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
        let lease = match lease_hdr {
            Some(l) => l,
            None => {
                let id = format!("pull-{}", uuid::Uuid::new_v4());
                let expire =
                    humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(24 * 3600))
                        .to_string();
                let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
                let (db, n, i) = (self.db.clone(), ns.clone(), id.clone());
                blocking(move || db.create_lease(&n, &i, &labels).map(|_| ())).await?;
                id
            }
        };
        let pull = Arc::new(Pull {
            db: self.db.clone(),
            ns: ns.clone(),
            lease: lease.clone(),
            repo: Some(repo),
            report: report.clone(),
            downloads: Arc::new(Semaphore::new(if opts.max_concurrent_downloads > 0 {
                opts.max_concurrent_downloads as usize
            } else {
                DEFAULT_CONCURRENT_DOWNLOADS
            })),
        });
        let result = self
            .pull_under_lease(&pull, &reference, root, matcher.as_ref(), &req)
            .await;
        // on success the image holds everything and the pull's own lease goes;
        // on failure it lapses (24 h) so a retry resumes from the ingested bytes
        if result.is_ok() && lease.starts_with("pull-") {
            let (db, n) = (self.db.clone(), ns.clone());
            let _ = blocking(move || db.delete_lease(&n, &lease)).await;
        }
        result
    }

    async fn pull_under_lease(
        &self,
        pull: &Arc<Pull>,
        reference: &Reference,
        root: Descriptor,
        matcher: &dyn MatchPlatform,
        req: &PullRequest,
    ) -> Result<(String, Descriptor)> {
        pull.fetch(&root).await?;
        // walk the index (one level of nesting is what registries serve)
        let mut selected: Vec<Selected> = Vec::new();
        let mut index_labels: HashMap<String, String> = HashMap::new();
        let manifests: Vec<Descriptor> = if mediatypes::is_index_type(&root.media_type) {
            let index: Index = pull.read_json(&root).await?;
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
            if !req.all_platforms && req.platforms.len() <= 1 {
                ms.truncate(1);
            }
            ms.into_iter().map(|(_, m)| m).collect()
        } else if mediatypes::is_manifest_type(&root.media_type) {
            vec![root.clone()]
        } else {
            return Err(Error::unimplemented(format!(
                "pull {reference}: unsupported root media type {:?}",
                root.media_type
            )));
        };
        for (i, m) in manifests.iter().enumerate() {
            if m.digest != root.digest {
                index_labels.insert(
                    format!("containerd.io/gc.ref.content.m.{i}"),
                    m.digest.to_string(),
                );
            }
        }
        for m in manifests {
            if m.digest != root.digest {
                pull.fetch(&m).await?;
            }
            let manifest: Manifest = pull.read_json(&m).await?;
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

        // download every layer concurrently; unpack the first (best) platform
        // in order as its layers arrive
        let snapshotter = if req.snapshotter.is_empty() {
            "overlayfs"
        } else {
            &req.snapshotter
        };
        let unpack_into = if req.unpack {
            Some(self.snapshotters.get(snapshotter).cloned().ok_or_else(|| {
                Error::invalid(format!("pull: snapshotter {snapshotter:?} is not loaded"))
            })?)
        } else {
            None
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
        let unpacked = match (&unpack_into, selected.first()) {
            (Some(sn), Some(first)) => {
                Some(self.unpack(pull, sn, snapshotter, first, &ready).await)
            }
            _ => None,
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
            if si == 0 {
                if let Some(chain) = &top_chain {
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
        let name = reference.to_string();
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

    /// Create the image record, or retarget it when the name exists (as
    /// containerd's clients do: Update "target", Create on NotFound), and
    /// publish the matching event.
    async fn store_image(&self, ns: &str, image: Image) -> Result<Image> {
        let (db, n) = (self.db.clone(), ns.to_string());
        let (img, is_new) = blocking(move || match db.get_image(&n, &image.name) {
            Ok(_) => db
                .update_image(&n, image, &["target".to_string()])
                .map(|i| (i, false)),
            Err(e) if e.kind == ErrorKind::NotFound => {
                db.create_image(&n, image).map(|i| (i, true))
            }
            Err(e) => Err(e),
        })
        .await?;
        let (name, labels) = (img.name.clone(), img.labels.clone());
        if is_new {
            self.exchange
                .publish(ns, "/images/create", &ImageCreate { name, labels });
        } else {
            self.exchange
                .publish(ns, "/images/update", &ImageUpdate { name, labels });
        }
        Ok(img)
    }

    /// Unpack one manifest's layers into the snapshotter, in order, each as
    /// soon as it has arrived. Returns the top chain ID.
    async fn unpack(
        &self,
        pull: &Arc<Pull>,
        sn: &Namespaced,
        snapshotter: &str,
        s: &Selected,
        ready: &HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>>,
    ) -> Result<Digest> {
        let chains = chain_ids(&s.config.rootfs.diff_ids);
        let mut parent = String::new();
        for (i, layer) in s.manifest.layers.iter().enumerate() {
            let chain = chains[i].clone();
            let diff_id = s.config.rootfs.diff_ids[i].clone();
            let (sn2, ns, c) = (sn.clone(), pull.ns.clone(), chain.to_string());
            let exists = blocking(move || match sn2.stat(&ns, &c) {
                Ok(_) => Ok(true),
                Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            })
            .await?;
            if exists {
                pull.db_lease_snapshot(snapshotter, &chain.to_string())
                    .await?;
                parent = chain.to_string();
                continue;
            }
            if let Some(rx) = ready.get(&layer.digest) {
                let mut rx = rx.clone();
                let ok = rx
                    .wait_for(|v| v.is_some())
                    .await
                    .map_err(|_| Error::unavailable("layer download ended"))?
                    .unwrap_or(false);
                if !ok {
                    return Err(Error::unavailable(format!(
                        "layer {} was not downloaded",
                        layer.digest
                    )));
                }
            }
            pull.report.item(layer, "layer", "extracting", 0, "").await;
            let key = format!("extract-{}-{}", uuid::Uuid::new_v4().simple(), chain.hex());
            pull.db_lease_snapshot(snapshotter, &key).await?;
            pull.db_lease_snapshot(snapshotter, &chain.to_string())
                .await?;
            let (sn2, ns, db, scratch) = (
                sn.clone(),
                pull.ns.clone(),
                self.db.clone(),
                self.scratch.clone(),
            );
            let (layer2, parent2, chain2) = (layer.clone(), parent.clone(), chain.clone());
            blocking(move || {
                let mounts = sn2.prepare(&ns, &key, &parent2, HashMap::new())?;
                let applied = crate::diff::apply_layer(&db, &ns, &layer2, &mounts, &scratch);
                let applied = match applied {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = sn2.remove(&ns, &key);
                        return Err(e);
                    }
                };
                if applied.digest != diff_id {
                    let _ = sn2.remove(&ns, &key);
                    return Err(Error::precondition(format!(
                        "unpack layer {}: uncompressed digest {} does not match diff ID {diff_id}",
                        layer2.digest, applied.digest
                    )));
                }
                let labels =
                    HashMap::from([("containerd.io/snapshot.ref".to_string(), chain2.to_string())]);
                match sn2.commit(&ns, &chain2.to_string(), &key, labels) {
                    Ok(()) => Ok(()),
                    // a concurrent unpack committed the same chain first
                    Err(e) if e.kind == ErrorKind::AlreadyExists => {
                        let _ = sn2.remove(&ns, &key);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
            pull.report
                .item(layer, "layer", "extracted", layer.size, "")
                .await;
            parent = chain.to_string();
        }
        chains
            .last()
            .cloned()
            .ok_or_else(|| Error::invalid("pull: image has no layers"))
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

type ProgressStream =
    Pin<Box<dyn Stream<Item = std::result::Result<TransferProgress, Status>> + Send>>;

#[tonic::async_trait]
impl Transfer for TransferService {
    type PullStream = ProgressStream;

    async fn pull(
        &self,
        req: Request<PullRequest>,
    ) -> std::result::Result<Response<Self::PullStream>, Status> {
        let ns = namespace_of(&req)?;
        let lease = lease_of(&req);
        let r = req.into_inner();
        if r.reference.is_empty() {
            return Err(Status::invalid_argument("pull: reference is required"));
        }
        let (tx, rx) = mpsc::channel(64);
        let report = Reporter { tx: tx.clone() };
        let this = TransferService {
            db: self.db.clone(),
            snapshotters: self.snapshotters.clone(),
            exchange: self.exchange.clone(),
            scratch: self.scratch.clone(),
        };
        tokio::spawn(async move {
            let reference = r.reference.clone();
            let result = this.pull(ns, lease, r, report).await;
            let msg = match result {
                Ok((name, target)) => Ok(TransferProgress {
                    image_name: name,
                    target: Some(descriptor_to_pb(&target)),
                    done: true,
                    ..Default::default()
                }),
                Err(e) => {
                    tracing::warn!(reference, error = %e, "pull failed");
                    Err(to_status(e.context(format!("pull {reference}"))))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn convert(
        &self,
        req: Request<ConvertRequest>,
    ) -> std::result::Result<Response<ConvertResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        if r.source.is_empty() || r.target.is_empty() {
            return Err(Status::invalid_argument(
                "convert: source and target names are required",
            ));
        }
        let compression = match r.layer_compression.as_str() {
            "" => None,
            "gzip" => Some(stevedore_images::convert::Compression::Gzip),
            "zstd" => Some(stevedore_images::convert::Compression::Zstd),
            other => {
                return Err(Status::invalid_argument(format!(
                    "convert: unknown layer compression {other:?} (use gzip or zstd)"
                )))
            }
        };
        let mut platforms: Vec<Box<dyn MatchPlatform>> = Vec::new();
        for p in &r.platforms {
            platforms.push(Box::new(Only::new(
                p.parse::<Platform>().map_err(to_status)?,
            )));
        }
        let (db, n, source) = (self.db.clone(), ns.clone(), r.source.clone());
        let src = crate::blocking(move || db.get_image(&n, &source)).await?;
        let content = self.db.content(&ns, None);
        let target = src.target.clone();
        let oci = r.oci;
        let converted = crate::blocking(move || {
            let adapter = crate::archive::ContentAdapter(content);
            let any = AnyOf(platforms);
            let opts = stevedore_images::convert::ConvertOptions {
                oci,
                layer_compression: compression,
                platform: if any.0.is_empty() { None } else { Some(&any) },
            };
            let converted = stevedore_images::convert::convert(&adapter, &target, &opts)?;
            // the new tree must hold its children for the GC, as containerd's
            // converter labels them
            let labeler = stevedore_images::handlers::set_children_labels(
                &adapter,
                stevedore_images::handlers::children_handler(&adapter),
                None,
            );
            stevedore_images::handlers::walk(&labeler, std::slice::from_ref(&converted))
                .map_err(|e| Error::internal(format!("label converted image: {e:?}")))?;
            Ok(converted)
        })
        .await?;
        let image = Image {
            name: r.target.clone(),
            labels: src.labels.clone(),
            target: Descriptor::new(
                converted.media_type.clone(),
                converted.digest.clone(),
                converted.size,
            ),
            created_at: 0,
            updated_at: 0,
        };
        let img = self.store_image(&ns, image).await.map_err(to_status)?;
        Ok(Response::new(ConvertResponse {
            name: img.name,
            target: Some(descriptor_to_pb(&img.target)),
        }))
    }

    type ImportStream = ProgressStream;

    async fn import(
        &self,
        req: Request<tonic::Streaming<ImportRequest>>,
    ) -> std::result::Result<Response<Self::ImportStream>, Status> {
        let ns = namespace_of(&req)?;
        let mut upload = req.into_inner();
        let first = upload
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("import: empty upload"))?;
        let options = first.options.ok_or_else(|| {
            Status::invalid_argument("import: the first message must carry the options")
        })?;
        let (data_tx, data_rx) = mpsc::channel::<std::io::Result<bytes::Bytes>>(16);
        if !first.data.is_empty() {
            let _ = data_tx.send(Ok(first.data.into())).await;
        }
        tokio::spawn(async move {
            loop {
                match upload.message().await {
                    Ok(Some(m)) => {
                        if data_tx.send(Ok(m.data.into())).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let _ = data_tx
                            .send(Err(std::io::Error::other(format!(
                                "upload interrupted: {}",
                                s.message()
                            ))))
                            .await;
                        return;
                    }
                }
            }
        });
        let (tx, rx) = mpsc::channel(64);
        let report = Reporter { tx: tx.clone() };
        let this = TransferService {
            db: self.db.clone(),
            snapshotters: self.snapshotters.clone(),
            exchange: self.exchange.clone(),
            scratch: self.scratch.clone(),
        };
        tokio::spawn(async move {
            let msg = match this.import_archive(ns, options, data_rx, report).await {
                Ok(names) => Ok(TransferProgress {
                    image_name: names.join(","),
                    done: true,
                    ..Default::default()
                }),
                Err(e) => {
                    tracing::warn!(error = %e, "import failed");
                    Err(to_status(e.context("import")))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type ExportStream =
        Pin<Box<dyn Stream<Item = std::result::Result<ExportChunk, Status>> + Send>>;

    async fn export(
        &self,
        req: Request<ExportRequest>,
    ) -> std::result::Result<Response<Self::ExportStream>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        if r.names.is_empty() {
            return Err(Status::invalid_argument("export: name at least one image"));
        }
        let mut images = Vec::new();
        for name in &r.names {
            let (db, n, name2) = (self.db.clone(), ns.clone(), name.clone());
            let img = crate::blocking(move || db.get_image(&n, &name2)).await?;
            let target = Descriptor::new(
                img.target.media_type.clone(),
                img.target.digest.clone(),
                img.target.size,
            );
            images.push(stevedore_images::archive::ExportImage::named(name, &target));
        }
        let platform: Option<Box<dyn MatchPlatform>> = if r.all_platforms {
            None
        } else if r.platforms.is_empty() {
            Some(Box::new(stevedore_types::platform::Exact(Platform::host())))
        } else {
            let mut v: Vec<Box<dyn MatchPlatform>> = Vec::new();
            for p in &r.platforms {
                v.push(Box::new(stevedore_types::platform::Exact(
                    p.parse::<Platform>().map_err(to_status)?,
                )));
            }
            Some(Box::new(AnyOf(v)))
        };
        let exporter = stevedore_images::archive::OciExporter {
            platform,
            all_platforms: r.all_platforms,
            skip_docker_manifest: r.skip_manifest_json,
            skip_non_distributable: r.skip_non_distributable,
            progress: None,
        };
        let (tx, rx) = mpsc::channel::<std::result::Result<ExportChunk, Status>>(8);
        let content = self.db.content(&ns, None);
        tokio::task::spawn_blocking(move || {
            use stevedore_images::archive::Exporter;
            let adapter = crate::archive::ContentAdapter(content);
            let mut w =
                crate::archive::ChannelWriter::new(tx.clone(), |data| Ok(ExportChunk { data }));
            let r = exporter
                .export(&adapter, &images, &mut w)
                .and_then(|_| std::io::Write::flush(&mut w).map_err(Error::from));
            if let Err(e) = r {
                let _ = tx.blocking_send(Err(to_status(e.context("export"))));
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    type PushStream = ProgressStream;

    async fn push(
        &self,
        req: Request<PushRequest>,
    ) -> std::result::Result<Response<Self::PushStream>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        if r.source.is_empty() {
            return Err(Status::invalid_argument(
                "push: the local image name is required",
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        let report = Reporter { tx: tx.clone() };
        let db = self.db.clone();
        tokio::spawn(async move {
            let what = if r.reference.is_empty() {
                r.source.clone()
            } else {
                r.reference.clone()
            };
            let msg = match push_image(db, ns, r, report).await {
                Ok((name, target)) => Ok(TransferProgress {
                    image_name: name,
                    target: Some(descriptor_to_pb(&target)),
                    done: true,
                    ..Default::default()
                }),
                Err(e) => {
                    tracing::warn!(reference = %what, error = %e, "push failed");
                    Err(to_status(e.context(format!("push {what}"))))
                }
            };
            let _ = tx.send(msg).await;
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// An async reader over a blob of the content store, fed by a blocking thread.
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
    db: Arc<Db>,
    ns: String,
    r: PushRequest,
    report: Reporter,
) -> Result<(String, Descriptor)> {
    let (db2, n2, src) = (db.clone(), ns.clone(), r.source.clone());
    let image = blocking(move || db2.get_image(&n2, &src)).await?;
    let target_ref = if r.reference.is_empty() {
        &r.source
    } else {
        &r.reference
    };
    let reference = Reference::parse_normalized(target_ref)?;
    let opts = r.registry.clone().unwrap_or_default();
    let resolver = resolver_for(&opts);
    // pushing defaults to every platform the image has
    let matcher = platform_matcher(&r.platforms, r.all_platforms || r.platforms.is_empty())?;
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

impl TransferService {
    /// Import an archive streamed by the client: blobs into the content store
    /// (under a lease), image records created or retargeted, then each image
    /// unpacked for this host.
    async fn import_archive(
        &self,
        ns: String,
        opts: stevedore_api::services::transfer::ImportOptions,
        data: mpsc::Receiver<std::io::Result<bytes::Bytes>>,
        report: Reporter,
    ) -> Result<Vec<String>> {
        use stevedore_images::archive::{ArchiveImporter, ImportOptions, Importer};
        let lease = format!("import-{}", uuid::Uuid::new_v4());
        let expire = humantime::format_rfc3339(SystemTime::now() + Duration::from_secs(24 * 3600))
            .to_string();
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        let (db, n, l) = (self.db.clone(), ns.clone(), lease.clone());
        blocking(move || db.create_lease(&n, &l, &labels).map(|_| ())).await?;
        let matcher = platform_matcher(&opts.platforms, opts.all_platforms)?;
        let mut options = if !opts.oci_name.is_empty() {
            ImportOptions::oci_name(&opts.oci_name)
        } else if !opts.base_name.is_empty() {
            let mut o = ImportOptions::base_name(&opts.base_name);
            if opts.digests {
                o.digest_prefix = Some(opts.base_name.clone());
            }
            o
        } else {
            ImportOptions::ctr_default()
        };
        options.platform = matcher;
        options.labels = opts.labels.clone();
        if !opts.index_name.is_empty() {
            options.index_name = Some(opts.index_name.clone());
        }
        let content = self.db.content(&ns, Some(&lease));
        let records = blocking(move || {
            let adapter = crate::archive::ContentAdapter(content);
            let mut reader = crate::archive::ChannelReader::new(data);
            ArchiveImporter::new(options).import(&adapter, &mut reader)
        })
        .await?;
        if records.is_empty() {
            return Err(Error::invalid(
                "the archive names no image: use --base-name or --oci-name",
            ));
        }
        let mut names = Vec::new();
        for rec in &records {
            let image = Image {
                name: rec.name.clone(),
                labels: rec.labels.clone(),
                target: Descriptor::new(
                    rec.target.media_type.clone(),
                    rec.target.digest.clone(),
                    rec.target.size,
                ),
                created_at: 0,
                updated_at: 0,
            };
            let img = self.store_image(&ns, image).await?;
            report
                .item(&img.target, "image", "imported", img.target.size, &img.name)
                .await;
            names.push(img.name);
        }
        if opts.unpack {
            let snapshotter = if opts.snapshotter.is_empty() {
                "overlayfs"
            } else {
                opts.snapshotter.as_str()
            };
            let sn = self.snapshotters.get(snapshotter).cloned().ok_or_else(|| {
                Error::invalid(format!("import: snapshotter {snapshotter:?} is not loaded"))
            })?;
            let pull = Arc::new(Pull {
                db: self.db.clone(),
                ns: ns.clone(),
                lease: lease.clone(),
                repo: None,
                report: report.clone(),
                downloads: Arc::new(Semaphore::new(1)),
            });
            let mut done: Vec<Digest> = Vec::new();
            for rec in &records {
                if done.contains(&rec.target.digest) {
                    continue;
                }
                done.push(rec.target.digest.clone());
                let Some(selected) = select_host_manifest(&pull, &rec.target).await? else {
                    continue;
                };
                let chain = self
                    .unpack(&pull, &sn, snapshotter, &selected, &HashMap::new())
                    .await?;
                pull.set_labels(
                    &selected.manifest.config.digest,
                    HashMap::from([(
                        format!("containerd.io/gc.ref.snapshot.{snapshotter}"),
                        chain.to_string(),
                    )]),
                )
                .await?;
                for (i, l) in selected.manifest.layers.iter().enumerate() {
                    pull.set_labels(
                        &l.digest,
                        HashMap::from([(
                            crate::diff::LABEL_UNCOMPRESSED.to_string(),
                            selected.config.rootfs.diff_ids[i].to_string(),
                        )]),
                    )
                    .await?;
                }
            }
        }
        let (db, n) = (self.db.clone(), ns.clone());
        let _ = blocking(move || db.delete_lease(&n, &lease)).await;
        Ok(names)
    }
}

/// The manifest of `target` this host would run (None when it has none).
async fn select_host_manifest(pull: &Pull, target: &Descriptor) -> Result<Option<Selected>> {
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
    if pull.content().info(&mdesc.digest).is_err() {
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
