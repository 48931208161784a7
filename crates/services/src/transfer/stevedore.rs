//! stevedore's own transfer API (`stevedore.services.transfer.v1`, plugin
//! `io.containerd.grpc.v1.stevedore-transfer`), which the `stevedore` CLI
//! speaks: requests become the engine's options, progress a stream of
//! `TransferProgress` messages answering the call.

use super::{
    platform_matcher, AnyOf, Engine, ExportOptions, ImportOptions, ProgressSink, PullOptions,
    PushOptions, RegistryOptions, Reporter, UnpackOptions,
};
use crate::content::lease_of;
use crate::convert::descriptor_to_pb;
use crate::{namespace_of, GrpcService};
use futures::future::BoxFuture;
use futures::Stream;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use stevedore_api::services::stevedore_transfer::{
    transfer_server::{Transfer, TransferServer},
    ConvertRequest, ConvertResponse, ExportChunk, ExportRequest, ImportRequest, Progress,
    PullRequest, PushRequest, TransferProgress,
};
use stevedore_api::status::to_status;
use stevedore_metadata::images::Image;
use stevedore_remote::Credentials;
use stevedore_types::platform::{MatchPlatform, Only};
use stevedore_types::{Descriptor, Error, Platform};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// stevedore's Transfer service over the engine.
pub struct TransferService {
    engine: Arc<Engine>,
}

impl TransferService {
    pub fn grpc(engine: Arc<Engine>) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(TransferServer::new(
            TransferService { engine }
        )))
    }
}

/// Sends progress to the client; a client that went away does not stop the
/// transfer (the work is shared and resumable), it just stops hearing.
struct ProgressMessages {
    tx: mpsc::Sender<std::result::Result<TransferProgress, Status>>,
}

impl ProgressSink for ProgressMessages {
    fn item<'a>(
        &'a self,
        desc: &'a Descriptor,
        kind: &'a str,
        status: &'a str,
        offset: i64,
        message: &'a str,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
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
        })
    }
}

fn registry_options(
    opts: Option<stevedore_api::services::stevedore_transfer::RegistryOptions>,
) -> RegistryOptions {
    let opts = opts.unwrap_or_default();
    RegistryOptions {
        plain_http: opts.plain_http,
        hosts_dir: (!opts.hosts_dir.is_empty()).then(|| PathBuf::from(&opts.hosts_dir)),
        credentials: (!opts.username.is_empty()).then(|| Credentials {
            username: opts.username.clone(),
            secret: opts.password.clone(),
        }),
        max_concurrent_downloads: opts.max_concurrent_downloads.max(0) as usize,
    }
}

type ProgressStream =
    Pin<Box<dyn Stream<Item = std::result::Result<TransferProgress, Status>> + Send>>;

/// Run a transfer on its own task; its progress and its outcome (the last
/// message, or the error) stream back to the client.
fn run_transfer<F>(
    what: String,
    op: &'static str,
    work: impl FnOnce(Reporter) -> F,
) -> Response<ProgressStream>
where
    F: std::future::Future<Output = stevedore_types::Result<(String, Option<Descriptor>)>>
        + Send
        + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let report = Reporter::new(ProgressMessages { tx: tx.clone() });
    let fut = work(report);
    tokio::spawn(async move {
        let msg = match fut.await {
            Ok((name, target)) => Ok(TransferProgress {
                image_name: name,
                target: target.as_ref().map(descriptor_to_pb),
                done: true,
                ..Default::default()
            }),
            Err(e) => {
                tracing::warn!(what, error = %e, "{op} failed");
                Err(to_status(if what.is_empty() {
                    e.context(op)
                } else {
                    e.context(format!("{op} {what}"))
                }))
            }
        };
        let _ = tx.send(msg).await;
    });
    Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}

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
        let opts = PullOptions {
            reference: r.reference.clone(),
            platforms: platform_matcher(&r.platforms, r.all_platforms).map_err(to_status)?,
            best_only: !r.all_platforms && r.platforms.len() <= 1,
            all_metadata: false,
            registry: registry_options(r.registry),
            unpack: r.unpack.then(|| UnpackOptions {
                snapshotter: if r.snapshotter.is_empty() {
                    "overlayfs".to_string()
                } else {
                    r.snapshotter.clone()
                },
                platform: None,
            }),
            labels: r.labels,
            image_name: None,
            lease,
        };
        let engine = self.engine.clone();
        Ok(run_transfer(
            r.reference,
            "pull",
            move |report| async move {
                let (name, target) = engine.pull(ns, opts, report).await?;
                Ok((name, Some(target)))
            },
        ))
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
        let (db, n, source) = (self.engine.db.clone(), ns.clone(), r.source.clone());
        let src = crate::blocking(move || db.get_image(&n, &source)).await?;
        let content = self.engine.db.content(&ns, None);
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
        let img = self
            .engine
            .store_image(&ns, image)
            .await
            .map_err(to_status)?;
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
        let o = first.options.ok_or_else(|| {
            Status::invalid_argument("import: the first message must carry the options")
        })?;
        use stevedore_images::archive::ImportOptions as Naming;
        let mut archive = if !o.oci_name.is_empty() {
            Naming::oci_name(&o.oci_name)
        } else if !o.base_name.is_empty() {
            let mut n = Naming::base_name(&o.base_name);
            if o.digests {
                n.digest_prefix = Some(o.base_name.clone());
            }
            n
        } else {
            Naming::ctr_default()
        };
        archive.platform = platform_matcher(&o.platforms, o.all_platforms).map_err(to_status)?;
        archive.labels = o.labels.clone();
        if !o.index_name.is_empty() {
            archive.index_name = Some(o.index_name.clone());
        }
        let opts = ImportOptions {
            archive,
            unpack: o.unpack.then(|| {
                if o.snapshotter.is_empty() {
                    "overlayfs".to_string()
                } else {
                    o.snapshotter.clone()
                }
            }),
        };
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
        let engine = self.engine.clone();
        Ok(run_transfer(
            String::new(),
            "import",
            move |report| async move {
                let images = engine.import_archive(ns, opts, data_rx, report).await?;
                let names: Vec<String> = images.into_iter().map(|i| i.name).collect();
                Ok((names.join(","), None))
            },
        ))
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
        let mut platforms = Vec::new();
        for p in &r.platforms {
            platforms.push(p.parse::<Platform>().map_err(to_status)?);
        }
        // an image that does not exist fails the call itself
        for name in &r.names {
            let (db, n, name2) = (self.engine.db.clone(), ns.clone(), name.clone());
            crate::blocking(move || db.get_image(&n, &name2)).await?;
        }
        let opts = ExportOptions {
            names: r.names,
            platform: if r.all_platforms {
                None
            } else {
                super::archive::export_platforms(&platforms)
            },
            all_platforms: r.all_platforms,
            skip_manifest_json: r.skip_manifest_json,
            skip_non_distributable: r.skip_non_distributable,
        };
        let (tx, rx) = mpsc::channel::<std::result::Result<ExportChunk, Status>>(8);
        let w = crate::archive::ChannelWriter::new(tx.clone(), |data| Ok(ExportChunk { data }));
        let engine = self.engine.clone();
        tokio::spawn(async move {
            if let Err(e) = engine.export(&ns, opts, w).await {
                let _ = tx.send(Err(to_status(e.context("export")))).await;
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
        let what = if r.reference.is_empty() {
            r.source.clone()
        } else {
            r.reference.clone()
        };
        // pushing defaults to every platform the image has
        let opts = PushOptions {
            source: r.source,
            reference: r.reference,
            platforms: platform_matcher(&r.platforms, r.all_platforms || r.platforms.is_empty())
                .map_err(to_status)?,
            registry: registry_options(r.registry),
        };
        let engine = self.engine.clone();
        Ok(run_transfer(what, "push", move |report| async move {
            let (name, target) = engine.push(ns, opts, report).await?;
            Ok((name, Some(target)))
        }))
    }
}
