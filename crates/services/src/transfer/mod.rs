//! The one transfer engine of stevedored: pull, push, import, export and tag
//! run inside the daemon over the content store, the snapshotters, the diff
//! applier and the registry client. Two gRPC front ends drive it and only
//! translate (requests into the engine's plain options, the engine's
//! progress into their wire's messages through a [`ProgressSink`]):
//!
//! - [`stevedore`]: stevedore's own `stevedore.services.transfer.v1`
//!   (plugin `io.containerd.grpc.v1.stevedore-transfer`), which the
//!   `stevedore` CLI speaks;
//! - [`containerd`]: containerd 2.x's `containerd.services.transfer.v1`
//!   (plugin `io.containerd.grpc.v1.transfer`), typed `Any`s from
//!   `containerd.types.transfer`, byte/progress/auth streams opened through
//!   the Streaming service ([`crate::streaming`]); `ctr` 2.x speaks it.
//!
//! Pull (`pull.rs`): the registry's bytes go straight into the content store
//! (hashed while written, resumable ingests keyed by digest), layers
//! download concurrently (bounded), and each layer is unpacked as soon as it
//! is there: on overlayfs all at once (one per CPU), each into its own
//! parentless snapshot, stacked in order afterwards (rebase + commit); on
//! other snapshotters once its parent is committed. Decompression and apply
//! overlap the downloads and each other. Everything is held by a
//! lease until the image record exists and the GC labels link index ->
//! manifests -> config/layers -> snapshot. Push (`push.rs`): children before
//! parents, blobs the registry has skipped or mounted. Import and export
//! (`archive.rs`): the images library's importer and exporter over the
//! namespace's content, fed by / feeding a bounded byte channel.

mod archive;
pub mod containerd;
mod pull;
mod push;
pub mod stevedore;

pub(crate) use archive::{ExportOptions, ImportOptions};
pub(crate) use pull::{PullOptions, UnpackOptions};
pub(crate) use push::PushOptions;

use crate::exchange::Exchange;
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use stevedore_api::services::images::{ImageCreate, ImageUpdate};
use stevedore_images::mediatypes;
use stevedore_metadata::images::Image;
use stevedore_metadata::Db;
use stevedore_remote::{Credentials, HostOptions, Resolver, ResolverOptions};
use stevedore_snapshots::Namespaced;
use stevedore_types::platform::{All, MatchPlatform, Only};
use stevedore_types::{Descriptor, Digest, Error, ErrorKind, Platform, Result};

/// Parallel layer downloads when the client does not say.
const DEFAULT_CONCURRENT_DOWNLOADS: usize = 3;
/// Progress of one blob is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// The transfer engine: what every transfer needs, shared by both front
/// ends (the plugin `io.containerd.transfer.v1.local`).
#[derive(Clone)]
pub struct Engine {
    db: Arc<Db>,
    snapshotters: BTreeMap<String, Namespaced>,
    exchange: Exchange,
    scratch: PathBuf,
}

impl Engine {
    /// An engine over the metadata database, the loaded snapshotters, the
    /// event exchange and a scratch directory for temporary mounts.
    pub fn new(
        db: Arc<Db>,
        snapshotters: BTreeMap<String, Namespaced>,
        exchange: Exchange,
        scratch: PathBuf,
    ) -> Self {
        Engine {
            db,
            snapshotters,
            exchange,
            scratch,
        }
    }

    /// The named snapshotter, or InvalidArgument naming it.
    fn snapshotter(&self, op: &str, name: &str) -> Result<Namespaced> {
        self.snapshotters
            .get(name)
            .cloned()
            .ok_or_else(|| Error::invalid(format!("{op}: snapshotter {name:?} is not loaded")))
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

    /// Tag: the image `source` under each of `targets` (created, or
    /// retargeted when the name exists), with `labels`.
    pub(crate) async fn tag(
        &self,
        ns: &str,
        source: &str,
        targets: &[String],
        labels: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<Image>> {
        let (db, n, s) = (self.db.clone(), ns.to_string(), source.to_string());
        let src = blocking(move || db.get_image(&n, &s)).await?;
        let mut out = Vec::new();
        for name in targets {
            let image = Image {
                name: name.clone(),
                labels: labels.clone(),
                target: src.target.clone(),
                created_at: 0,
                updated_at: 0,
            };
            out.push(self.store_image(ns, image).await?);
        }
        Ok(out)
    }

    /// A lease for one transfer (expiring in 24 h, so a failed transfer's
    /// content lapses but a retry soon after resumes from it).
    async fn create_lease(&self, ns: &str, what: &str) -> Result<String> {
        let id = format!("{what}-{}", uuid::Uuid::new_v4());
        let expire = humantime::format_rfc3339(
            std::time::SystemTime::now() + Duration::from_secs(24 * 3600),
        )
        .to_string();
        let labels =
            std::collections::HashMap::from([("containerd.io/gc.expire".to_string(), expire)]);
        let (db, n, i) = (self.db.clone(), ns.to_string(), id.clone());
        blocking(move || db.create_lease(&n, &i, &labels).map(|_| ())).await?;
        Ok(id)
    }

    /// Drop a lease this engine created (a failure is logged: the lease
    /// still expires on its own).
    async fn delete_lease(&self, ns: &str, lease: &str) {
        // the end of a transfer: its buffers are free now
        crate::memory::work_done();
        let (db, n, l) = (self.db.clone(), ns.to_string(), lease.to_string());
        if let Err(e) = blocking(move || db.delete_lease(&n, &l)).await {
            tracing::warn!(namespace = ns, lease, error = %e, "transfer: cannot drop its lease");
        }
    }
}

/// Where a transfer's progress goes: each front end renders it in its
/// wire's terms. `status` is one of resolved, waiting, downloading, exists,
/// done, extracting, extracted, uploading, mounted, imported.
pub(crate) trait ProgressSink: Send + Sync {
    /// One object's progress.
    fn item<'a>(
        &'a self,
        desc: &'a Descriptor,
        kind: &'a str,
        status: &'a str,
        offset: i64,
        message: &'a str,
    ) -> BoxFuture<'a, ()>;
    /// `children` were found under `parent` (for sinks that draw a tree).
    fn children(&self, _parent: &Descriptor, _children: &[Descriptor]) {}
}

/// A cloneable handle on a transfer's [`ProgressSink`].
#[derive(Clone)]
pub(crate) struct Reporter(Arc<dyn ProgressSink>);

impl Reporter {
    pub(crate) fn new(sink: impl ProgressSink + 'static) -> Self {
        Reporter(Arc::new(sink))
    }
    async fn item(&self, desc: &Descriptor, kind: &str, status: &str, offset: i64, message: &str) {
        self.0.item(desc, kind, status, offset, message).await
    }
    fn children(&self, parent: &Descriptor, children: &[Descriptor]) {
        self.0.children(parent, children)
    }
}

/// Accepts a platform if any of several matchers does.
pub(crate) struct AnyOf(pub Vec<Box<dyn MatchPlatform>>);

impl MatchPlatform for AnyOf {
    fn matches(&self, p: &Platform) -> bool {
        self.0.iter().any(|m| m.matches(p))
    }
    fn rank(&self, p: &Platform) -> Option<usize> {
        self.0.iter().filter_map(|m| m.rank(p)).min()
    }
}

/// How to reach a registry, as a client asked.
#[derive(Clone, Default)]
pub(crate) struct RegistryOptions {
    /// `http` for hosts without their own configuration (`--plain-http`).
    pub plain_http: bool,
    /// containerd hosts directory (`<dir>/<host>/hosts.toml`).
    pub hosts_dir: Option<PathBuf>,
    /// Basic credentials for whatever host asks; never logged.
    pub credentials: Option<Credentials>,
    /// Parallel layer downloads; 0 means the default.
    pub max_concurrent_downloads: usize,
}

/// A registry resolver from the client's options (hosts directory, plain
/// HTTP, basic credentials for whatever host asks).
fn resolver_for(opts: &RegistryOptions) -> Resolver {
    let credentials = opts
        .credentials
        .clone()
        .map(|c| Arc::new(move |_host: &str| Some(c.clone())) as stevedore_remote::CredentialsFn);
    Resolver::new(ResolverOptions {
        hosts: HostOptions {
            hosts_dir: opts.hosts_dir.clone(),
            default_scheme: opts.plain_http.then(|| "http".to_string()),
        },
        credentials,
        ..Default::default()
    })
}

/// Every platform when `all`, the host's when none is named, else any of the
/// named ones (each with what it can run).
pub(crate) fn platform_matcher(platforms: &[String], all: bool) -> Result<Box<dyn MatchPlatform>> {
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

/// What a descriptor is, in progress reports (containerd's ref-key kinds).
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

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}
