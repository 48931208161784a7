//! containerd 2.x's Transfer service (`containerd.services.transfer.v1`,
//! plugin `io.containerd.grpc.v1.transfer`), which `ctr` 2.x moves images
//! with: `Transfer(source, destination, options)` where source and
//! destination are typed `Any`s from `containerd.types.transfer`. The pairs
//! containerd's local transferrer serves map onto the engine:
//!
//! | source | destination | engine |
//! |---|---|---|
//! | `OCIRegistry` | `ImageStore` | pull (unpack when an unpack platform runs here) |
//! | `ImageStore` | `OCIRegistry` | push |
//! | `ImageImportStream` | `ImageStore` | import |
//! | `ImageStore` | `ImageExportStream` | export |
//! | `ImageStore` | `ImageStore` | tag |
//! | `ImageImportStream` | `ImageExportStream` | echo (the bytes, unchanged) |
//!
//! Byte streams, progress and registry credentials travel over streams the
//! client opened with the Streaming service ([`crate::streaming`]), named
//! in the request. Their flow control is containerd's: the receiver grants
//! `WindowUpdate`s, the sender sends `Data` of at most 32 KiB within the
//! window. Progress events are containerd's (`core/transfer/local`): free
//! text status lines (no name), then per object `waiting`, `downloading` /
//! `uploading`, `complete` or `already exists`, named by containerd's ref
//! keys (`layer-sha256:...`) with their parents, and `saved` per image.

use super::{
    kind_of, AnyOf, Engine, ExportOptions, ImportOptions, ProgressSink, PullOptions, PushOptions,
    RegistryOptions, Reporter, UnpackOptions,
};
use crate::content::lease_of;
use crate::convert::descriptor_to_pb;
use crate::streaming::{ManagedStream, StreamManager};
use crate::{namespace_of, GrpcService};
use futures::future::BoxFuture;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stevedore_api::services::transfer::{
    transfer_server::{Transfer, TransferServer},
    TransferRequest,
};
use stevedore_api::status::to_status;
use stevedore_api::types::transfer as tt;
use stevedore_api::typeurl::{from_any, to_any};
use stevedore_remote::{Credentials, Reference};
use stevedore_types::platform::{default_matcher, All, MatchPlatform, Only};
use stevedore_types::{Descriptor, Error, Platform, Result};
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tonic::{Request, Response, Status};

/// Byte streams (containerd's `core/transfer/streaming`): the receiver
/// grants windows with `WindowUpdate`, the sender sends `Data` within them.
/// Most bytes per `Data` message sent: as much of the client's window as is
/// open. containerd's sender stops at 32 KiB, but its receiver takes any
/// size and grants 64 KiB per message it reads, so a message per grant
/// halves the messages the client decodes and writes (and the round trips
/// through both daemons' stream plumbing) for an export.
const MAX_SEND: usize = 1 << 20;
/// What this daemon grants a client uploading an import: 512 KiB whenever
/// less than that is open. containerd grants 64 KiB (its `windowSize`),
/// which lets its own sender, 32 KiB per message, have two messages in
/// flight: a round trip per 64 KiB. Any grant is within the protocol (the
/// sender sends what it was granted); this one bounds what is in flight
/// to 1 MiB per import.
const RECV_GRANT: i32 = 512 * 1024;
/// How long the client may take to answer a credentials request.
const AUTH_TIMEOUT: Duration = Duration::from_secs(60);

/// containerd's Transfer service over the engine.
pub struct ContainerdTransfer {
    engine: Arc<Engine>,
    streams: Arc<StreamManager>,
}

impl ContainerdTransfer {
    pub fn grpc(engine: Arc<Engine>, streams: Arc<StreamManager>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(TransferServer::new(
            ContainerdTransfer { engine, streams }
        )))
    }
}

/// A decoded source or destination.
enum Endpoint {
    Registry {
        registry: tt::OciRegistry,
        auth: Option<ManagedStream>,
        logs: Option<ManagedStream>,
    },
    Store(tt::ImageStore),
    Import(tt::ImageImportStream, Option<ManagedStream>),
    Export(tt::ImageExportStream, Option<ManagedStream>),
}

impl Endpoint {
    fn decode(any: Option<prost_types::Any>, ns: &str, streams: &StreamManager) -> Result<Self> {
        let any =
            any.ok_or_else(|| Error::invalid("transfer: source and destination are required"))?;
        if let Some(r) = from_any::<tt::OciRegistry>(&any) {
            let resolver = r.resolver.clone().unwrap_or_default();
            let take = |id: &str| -> Result<Option<ManagedStream>> {
                if id.is_empty() {
                    Ok(None)
                } else {
                    streams.take(ns, id).map(Some)
                }
            };
            return Ok(Endpoint::Registry {
                auth: take(&resolver.auth_stream)?,
                logs: take(&resolver.logs_stream)?,
                registry: r,
            });
        }
        if let Some(s) = from_any::<tt::ImageStore>(&any) {
            return Ok(Endpoint::Store(s));
        }
        if let Some(i) = from_any::<tt::ImageImportStream>(&any) {
            let s = streams.take(ns, &i.stream)?;
            return Ok(Endpoint::Import(i, Some(s)));
        }
        if let Some(e) = from_any::<tt::ImageExportStream>(&any) {
            let s = streams.take(ns, &e.stream)?;
            return Ok(Endpoint::Export(e, Some(s)));
        }
        Err(Error::unimplemented(format!(
            "transfer: {:?} is not a transfer type stevedore implements",
            any.type_url
        )))
    }

    fn kind(&self) -> &'static str {
        match self {
            Endpoint::Registry { .. } => "containerd.types.transfer.OCIRegistry",
            Endpoint::Store(_) => "containerd.types.transfer.ImageStore",
            Endpoint::Import(..) => "containerd.types.transfer.ImageImportStream",
            Endpoint::Export(..) => "containerd.types.transfer.ImageExportStream",
        }
    }

    /// Streams it holds, closed when the transfer ends.
    fn into_streams(self) -> Vec<ManagedStream> {
        match self {
            Endpoint::Registry { auth, logs, .. } => auth.into_iter().chain(logs).collect(),
            Endpoint::Store(_) => Vec::new(),
            Endpoint::Import(_, s) | Endpoint::Export(_, s) => s.into_iter().collect(),
        }
    }
}

fn platform_of(p: &stevedore_api::types::Platform) -> Platform {
    let mut out = Platform::new(&p.os, &p.architecture, &p.variant);
    out.os_version = p.os_version.clone();
    out.normalize()
}

/// An image store's platform filter: all platforms when it names none.
fn store_matcher(platforms: &[stevedore_api::types::Platform]) -> Box<dyn MatchPlatform> {
    if platforms.is_empty() {
        return Box::new(All);
    }
    Box::new(AnyOf(
        platforms
            .iter()
            .map(|p| Box::new(Only::new(platform_of(p))) as Box<dyn MatchPlatform>)
            .collect(),
    ))
}

/// The snapshotter of the first unpack configuration this host can run
/// (containerd skips the others), if any.
fn unpack_snapshotter(unpacks: &[tt::UnpackConfiguration]) -> Option<String> {
    let host = default_matcher();
    unpacks
        .iter()
        .find(|u| {
            u.platform
                .as_ref()
                .is_none_or(|p| host.matches(&platform_of(p)))
        })
        .map(|u| {
            if u.snapshotter.is_empty() {
                "overlayfs".to_string()
            } else {
                u.snapshotter.clone()
            }
        })
}

/// Progress as containerd sends it, on the client's progress stream.
struct ProgressEvents {
    stream: AsyncMutex<Option<ManagedStream>>,
    /// The root of the tree (the image's name) for objects without a parent.
    root: String,
    parents: Mutex<HashMap<String, Vec<String>>>,
    seen: Mutex<HashSet<String>>,
}

impl ProgressEvents {
    fn new(stream: Option<ManagedStream>, root: &str) -> Self {
        ProgressEvents {
            stream: AsyncMutex::new(stream),
            root: root.to_string(),
            parents: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashSet::new()),
        }
    }

    async fn send(&self, p: tt::Progress) {
        let stream = self.stream.lock().await;
        if let Some(s) = stream.as_ref() {
            // a client that stopped listening does not stop the transfer
            if let Err(e) = s.send(to_any(&p)).await {
                tracing::debug!(error = %e, "transfer progress not delivered");
            }
        }
    }

    /// A status line (no object).
    async fn status(&self, event: &str, name: &str, desc: Option<&Descriptor>) {
        self.send(tt::Progress {
            event: event.to_string(),
            name: name.to_string(),
            desc: desc.map(descriptor_to_pb),
            ..Default::default()
        })
        .await
    }

    /// Close the progress stream once everything sent on it left.
    async fn close(&self) {
        if let Some(s) = self.stream.lock().await.take() {
            s.close().await;
        }
    }
}

/// containerd's ref key of a descriptor (`remotes.MakeRefKey`).
fn ref_key(desc: &Descriptor) -> String {
    format!("{}-{}", kind_of(&desc.media_type), desc.digest)
}

impl ProgressSink for ProgressEvents {
    fn item<'a>(
        &'a self,
        desc: &'a Descriptor,
        _kind: &'a str,
        status: &'a str,
        offset: i64,
        _message: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let (event, progress) = match status {
                "waiting" => ("waiting", 0),
                "downloading" => ("downloading", offset),
                "uploading" => ("uploading", offset),
                "exists" | "mounted" => ("already exists", desc.size),
                "done" => ("complete", desc.size),
                // resolution, extraction and import records are not
                // objects containerd reports
                _ => return,
            };
            let name = ref_key(desc);
            let parents = self
                .parents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned()
                .unwrap_or_else(|| vec![self.root.clone()]);
            let first = self
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone());
            let pb = Some(descriptor_to_pb(desc));
            if first && event != "waiting" {
                self.send(tt::Progress {
                    event: "waiting".to_string(),
                    name: name.clone(),
                    parents: parents.clone(),
                    progress: 0,
                    total: desc.size,
                    desc: pb.clone(),
                })
                .await;
            }
            self.send(tt::Progress {
                event: event.to_string(),
                name,
                parents,
                progress,
                total: desc.size,
                desc: pb,
            })
            .await
        })
    }

    fn children(&self, parent: &Descriptor, children: &[Descriptor]) {
        let parent = ref_key(parent);
        let mut parents = self.parents.lock().unwrap_or_else(|e| e.into_inner());
        for c in children {
            let list = parents.entry(ref_key(c)).or_default();
            if !list.contains(&parent) {
                list.push(parent.clone());
            }
        }
    }
}

/// The registry options of an `OCIRegistry`, asking the client for
/// credentials once over its auth stream.
async fn registry_options(
    registry: &tt::OciRegistry,
    auth: Option<&mut ManagedStream>,
) -> Result<RegistryOptions> {
    let resolver = registry.resolver.clone().unwrap_or_default();
    let mut opts = RegistryOptions {
        plain_http: resolver.default_scheme == "http",
        hosts_dir: (!resolver.host_dir.is_empty()).then(|| PathBuf::from(&resolver.host_dir)),
        ..Default::default()
    };
    if !resolver.headers.is_empty() {
        tracing::warn!(
            reference = %registry.reference,
            "transfer: extra registry headers are not supported; sent without them"
        );
    }
    if let Some(stream) = auth {
        let reference = Reference::parse_normalized(&registry.reference)?;
        opts.credentials = ask_credentials(stream, &registry.reference, reference.domain()).await?;
    }
    Ok(opts)
}

async fn ask_credentials(
    stream: &mut ManagedStream,
    reference: &str,
    host: &str,
) -> Result<Option<Credentials>> {
    stream
        .send(to_any(&tt::AuthRequest {
            host: host.to_string(),
            reference: reference.to_string(),
            wwwauthenticate: Vec::new(),
        }))
        .await?;
    let answer = tokio::time::timeout(AUTH_TIMEOUT, stream.recv())
        .await
        .map_err(|_| {
            Error::new(
                stevedore_types::ErrorKind::DeadlineExceeded,
                format!("credentials for {host}: the client did not answer"),
            )
        })??;
    let Some(answer) = answer else {
        return Ok(None);
    };
    let resp: tt::AuthResponse = from_any(&answer).ok_or_else(|| {
        Error::invalid(format!(
            "credentials for {host}: expected an AuthResponse, got {:?}",
            answer.type_url
        ))
    })?;
    match tt::AuthType::try_from(resp.auth_type).unwrap_or(tt::AuthType::None) {
        tt::AuthType::Credentials if !resp.username.is_empty() => Ok(Some(Credentials {
            username: resp.username,
            secret: resp.secret,
        })),
        tt::AuthType::Credentials | tt::AuthType::None => Ok(None),
        tt::AuthType::Refresh if resp.secret.is_empty() => Ok(None),
        other => Err(Error::unimplemented(format!(
            "credentials for {host}: {} credentials are not supported (use user and password)",
            other.as_str_name()
        ))),
    }
}

/// Feed a client's upload (`Data` within granted windows) into a byte
/// channel the importer reads on a blocking thread.
async fn receive_bytes(mut stream: ManagedStream, tx: mpsc::Sender<std::io::Result<bytes::Bytes>>) {
    let mut window: i64 = 0;
    loop {
        if window < RECV_GRANT as i64
            && stream
                .send(to_any(&tt::WindowUpdate { update: RECV_GRANT }))
                .await
                .is_ok()
        {
            window += RECV_GRANT as i64;
        }
        match stream.recv().await {
            Ok(None) => break,
            Ok(Some(m)) => match from_any::<tt::Data>(&m) {
                Some(d) => {
                    window -= d.data.len() as i64;
                    if tx.send(Ok(d.data)).await.is_err() {
                        break;
                    }
                }
                None => tracing::debug!(type_url = %m.type_url, "import stream: ignored message"),
            },
            Err(e) => {
                let _ = tx.send(Err(std::io::Error::other(e.message))).await;
                break;
            }
        }
    }
    stream.close().await;
}

/// Send an export's bytes to the client as `Data` within the windows it
/// grants (each message as large as the open window), then close the
/// stream. The chunks are the exporter's 1 MiB buffers, split without a copy.
async fn send_bytes(mut stream: ManagedStream, mut rx: mpsc::Receiver<bytes::Bytes>) -> Result<()> {
    let mut window: i64 = 0;
    while let Some(mut chunk) = rx.recv().await {
        while !chunk.is_empty() {
            while window <= 0 {
                let m = stream.recv().await?.ok_or_else(|| {
                    Error::unavailable("export stream: the client stopped reading")
                })?;
                if let Some(u) = from_any::<tt::WindowUpdate>(&m) {
                    window += u.update as i64;
                }
            }
            let n = chunk.len().min(MAX_SEND).min(window as usize);
            let data = chunk.split_to(n);
            stream.send(to_any(&tt::Data { data })).await?;
            window -= n as i64;
        }
    }
    stream.close().await;
    Ok(())
}

impl ContainerdTransfer {
    async fn run(
        &self,
        ns: String,
        lease: Option<String>,
        src: &mut Endpoint,
        dst: &mut Endpoint,
        progress: &ProgressEvents,
        report: Reporter,
    ) -> Result<()> {
        let engine = &self.engine;
        match (src, dst) {
            (Endpoint::Registry { registry, auth, .. }, Endpoint::Store(store)) => {
                let shown = format!("OCI Registry ({})", registry.reference);
                progress
                    .status(&format!("Resolving from {shown}"), "", None)
                    .await;
                let opts = registry_options(registry, auth.as_mut()).await?;
                progress
                    .status(&format!("Pulling from {shown}"), "", None)
                    .await;
                progress
                    .status("fetching image content", &registry.reference, None)
                    .await;
                let image_name = if store.name.is_empty() {
                    registry.reference.clone()
                } else {
                    store.name.clone()
                };
                let pull = PullOptions {
                    reference: registry.reference.clone(),
                    platforms: store_matcher(&store.platforms),
                    best_only: store.platforms.len() == 1,
                    all_metadata: store.all_metadata,
                    registry: opts,
                    unpack: unpack_snapshotter(&store.unpacks).map(|snapshotter| UnpackOptions {
                        snapshotter,
                        platform: Some(Box::new(default_matcher())),
                    }),
                    labels: store.labels.clone(),
                    image_name: Some(image_name),
                    lease,
                };
                let (name, target) = engine.pull(ns, pull, report).await?;
                progress.status("saved", &name, Some(&target)).await;
                progress
                    .status(&format!("Completed pull from {shown}"), "", None)
                    .await;
                Ok(())
            }
            (Endpoint::Store(store), Endpoint::Registry { registry, auth, .. }) => {
                let shown = format!("OCI Registry ({})", registry.reference);
                let opts = registry_options(registry, auth.as_mut()).await?;
                let source = if store.name.is_empty() {
                    registry.reference.clone()
                } else {
                    store.name.clone()
                };
                progress
                    .status(&format!("Pushing to {shown}"), "", None)
                    .await;
                progress.status("pushing content", &source, None).await;
                let push = PushOptions {
                    source: source.clone(),
                    reference: registry.reference.clone(),
                    platforms: store_matcher(&store.platforms),
                    registry: opts,
                };
                let (_, target) = engine.push(ns, push, report).await?;
                progress
                    .status("pushed content", &source, Some(&target))
                    .await;
                progress
                    .status(&format!("Completed push to {shown}"), "", Some(&target))
                    .await;
                Ok(())
            }
            (Endpoint::Import(import, stream), Endpoint::Store(store)) => {
                if !import.media_type.is_empty() && !import.media_type.ends_with("tar") {
                    return Err(Error::unimplemented(format!(
                        "import: archives of media type {:?} are not supported (a tar is)",
                        import.media_type
                    )));
                }
                progress.status("Importing", "", None).await;
                let mut opts = import_options(store)?;
                // `ctr images import --compress-blobs`: gzip the
                // uncompressed layers of Docker archives
                opts.archive.compress_blobs = import.force_compress;
                let (tx, rx) = mpsc::channel(16);
                let taken = stream
                    .take()
                    .ok_or_else(|| Error::internal("import: the stream was already used"))?;
                let pump = tokio::spawn(receive_bytes(taken, tx));
                let images = engine.import_archive(ns, opts, rx, report).await;
                pump.abort();
                for img in images? {
                    progress.status("saved", &img.name, Some(&img.target)).await;
                }
                progress.status("Completed import", "", None).await;
                Ok(())
            }
            (Endpoint::Store(store), Endpoint::Export(export, stream)) => {
                progress.status("Exporting", "", None).await;
                let mut names = Vec::new();
                if !store.name.is_empty() {
                    names.push(store.name.clone());
                }
                for r in &store.extra_references {
                    if r.is_prefix {
                        return Err(Error::unimplemented(
                            "export: looking images up by a name prefix is not implemented",
                        ));
                    }
                    names.push(r.name.clone());
                }
                let platforms: Vec<Platform> = export.platforms.iter().map(platform_of).collect();
                let opts = ExportOptions {
                    names,
                    platform: super::archive::export_platforms(&platforms),
                    all_platforms: export.all_platforms,
                    skip_manifest_json: export.skip_compatibility_manifest,
                    skip_non_distributable: export.skip_non_distributable,
                };
                let (tx, rx) = mpsc::channel::<bytes::Bytes>(4);
                let w = crate::archive::ChannelWriter::new(tx, bytes::Bytes::from);
                let taken = stream
                    .take()
                    .ok_or_else(|| Error::internal("export: the stream was already used"))?;
                let sender = tokio::spawn(send_bytes(taken, rx));
                let exported = engine.export(&ns, opts, w).await;
                let sent = sender
                    .await
                    .map_err(|e| Error::internal(format!("export stream task: {e}")))?;
                exported?;
                sent?;
                progress.status("Completed export", "", None).await;
                Ok(())
            }
            (Endpoint::Import(_, input), Endpoint::Export(_, output)) => {
                // containerd's echo (its TestTransferEcho): the import
                // stream's bytes, unchanged, onto the export stream
                let input = input
                    .take()
                    .ok_or_else(|| Error::internal("echo: the import stream was already used"))?;
                let output = output
                    .take()
                    .ok_or_else(|| Error::internal("echo: the export stream was already used"))?;
                let (tx, mut rx) = mpsc::channel(16);
                let pump = tokio::spawn(receive_bytes(input, tx));
                let (out_tx, out_rx) = mpsc::channel::<bytes::Bytes>(4);
                let sender = tokio::spawn(send_bytes(output, out_rx));
                let mut copied = Ok(());
                while let Some(chunk) = rx.recv().await {
                    match chunk {
                        Ok(b) if b.is_empty() => {}
                        Ok(b) => {
                            if out_tx.send(b).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            copied = Err(Error::unavailable(format!("echo: import stream: {e}")));
                            break;
                        }
                    }
                }
                drop(out_tx);
                pump.abort();
                let sent = sender
                    .await
                    .map_err(|e| Error::internal(format!("echo stream task: {e}")))?;
                copied?;
                sent
            }
            (Endpoint::Store(from), Endpoint::Store(to)) => {
                let mut names = Vec::new();
                if !to.name.is_empty() {
                    names.push(to.name.clone());
                }
                names.extend(
                    to.extra_references
                        .iter()
                        .filter(|r| !r.is_prefix)
                        .map(|r| r.name.clone()),
                );
                if names.is_empty() {
                    return Err(Error::not_found("tag: no image name found"));
                }
                engine.tag(&ns, &from.name, &names, &to.labels).await?;
                Ok(())
            }
            (src, dst) => Err(Error::unimplemented(format!(
                "method Transfer not implemented for {} to {}",
                src.kind(),
                dst.kind()
            ))),
        }
    }
}

/// The images library's import options from a destination image store
/// (containerd's naming: a prefix that may be overwritten by the names in
/// the archive, or that filters them; digest references; an index name).
fn import_options(store: &tt::ImageStore) -> Result<ImportOptions> {
    use stevedore_images::archive::{ImportOptions as Naming, RefNames};
    let mut archive = Naming::default();
    for r in store.extra_references.iter().filter(|r| r.is_prefix) {
        archive.ref_names = if r.allow_overwrite {
            RefNames::AddPrefix(r.name.clone())
        } else {
            RefNames::FilterPrefix(r.name.clone())
        };
        if r.add_digest {
            archive.digest_prefix = Some(r.name.clone());
            archive.skip_digest_for_named = r.skip_named_digest;
        }
    }
    archive.platform = store_matcher(&store.platforms);
    archive.labels = store.labels.clone();
    if !store.name.is_empty() {
        archive.index_name = Some(store.name.clone());
    }
    Ok(ImportOptions {
        archive,
        unpack: unpack_snapshotter(&store.unpacks),
    })
}

#[tonic::async_trait]
impl Transfer for ContainerdTransfer {
    async fn transfer(
        &self,
        req: Request<TransferRequest>,
    ) -> std::result::Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let lease = lease_of(&req);
        let r = req.into_inner();
        let progress_id = r.options.map(|o| o.progress_stream).unwrap_or_default();
        let progress_stream = if progress_id.is_empty() {
            None
        } else {
            Some(self.streams.take(&ns, &progress_id).map_err(to_status)?)
        };
        let mut src = Endpoint::decode(r.source, &ns, &self.streams).map_err(to_status)?;
        let mut dst = Endpoint::decode(r.destination, &ns, &self.streams).map_err(to_status)?;
        let root = match (&src, &dst) {
            (Endpoint::Registry { registry, .. }, _) | (_, Endpoint::Registry { registry, .. }) => {
                registry.reference.clone()
            }
            (Endpoint::Store(s), _) => s.name.clone(),
            (_, Endpoint::Store(s)) => s.name.clone(),
            _ => String::new(),
        };
        let progress = Arc::new(ProgressEvents::new(progress_stream, &root));
        let report = Reporter(progress.clone());
        let result = self
            .run(ns, lease, &mut src, &mut dst, &progress, report)
            .await;
        progress.close().await;
        for s in src.into_streams().into_iter().chain(dst.into_streams()) {
            s.close().await;
        }
        match result {
            Ok(()) => Ok(Response::new(())),
            Err(e) => {
                tracing::warn!(root, error = %e, "transfer failed");
                Err(to_status(e))
            }
        }
    }
}
