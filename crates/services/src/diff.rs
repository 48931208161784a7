//! The Diff gRPC service (`io.containerd.differ.v1 walking` + the grpc
//! `diff` service): Apply a layer blob from the content store onto mounts, and
//! Diff two mounts into a new layer written to the content store.

use crate::content::lease_of;
use crate::convert::descriptor_to_pb;
use crate::{blocking, namespace_of, GrpcService};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use stevedore_api::services::diff::{
    diff_server::{Diff, DiffServer},
    ApplyRequest, ApplyResponse, DiffRequest, DiffResponse,
};
use stevedore_api::types::Mount as PbMount;
use stevedore_content::{SeqReader, Store, WriteAdapter, WriterOpts};
use stevedore_diff::Compression;
use stevedore_metadata::Db;
use stevedore_types::{Descriptor, Digest, Error, Mount};
use tonic::{Request, Response, Status};

/// containerd's label for the uncompressed digest of a layer.
pub const LABEL_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// The media type of an uncompressed OCI layer.
const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct DiffService {
    db: Arc<Db>,
    /// Where temporary mounts go.
    scratch: PathBuf,
}

impl DiffService {
    pub fn grpc(db: Arc<Db>, scratch: PathBuf) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(DiffServer::new(DiffService {
            db,
            scratch
        })))
    }
}

pub fn mount_from_pb(m: PbMount) -> Mount {
    Mount {
        kind: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

/// Apply a layer blob (from the namespace's content) onto mounts; returns the
/// uncompressed descriptor. Blocking.
pub fn apply_layer(
    db: &Arc<Db>,
    ns: &str,
    desc: &Descriptor,
    mounts: &[Mount],
    scratch: &std::path::Path,
) -> Result<Descriptor, Error> {
    apply_layer_with(db, ns, desc, mounts, scratch, false)
}

/// [`apply_layer`]; `sync_fs` syncs the filesystem holding the applied
/// files before returning (containerd 2.x's `ApplyRequest.sync_fs`).
pub fn apply_layer_with(
    db: &Arc<Db>,
    ns: &str,
    desc: &Descriptor,
    mounts: &[Mount],
    scratch: &std::path::Path,
    sync_fs: bool,
) -> Result<Descriptor, Error> {
    std::fs::create_dir_all(scratch)?;
    let applied = apply_blob(db, ns, desc, |media_type, reader| {
        stevedore_diff::mounts::apply_to_mounts_with(mounts, media_type, reader, scratch, sync_fs)
    })?;
    Ok(Descriptor::new(
        MEDIA_TYPE_LAYER_TAR,
        applied.diff_id,
        applied.size as i64,
    ))
}

/// Apply a layer blob straight into an overlayfs upper directory `upper`
/// with no parent layers to consult (`whiteouts`: overlay whiteouts, or
/// deletions for a bottom layer; directories the layer does not carry
/// are made 0755 root-owned and listed in [`stevedore_diff::Applied`]'s
/// `implicit_dirs`, for `stevedore_diff::inherit_implicit_dirs` once the
/// layer is stacked). The pull's concurrent unpack (`transfer::pull`)
/// extracts layers this way before stacking them.
/// Blocking.
pub fn apply_layer_to_upper(
    db: &Arc<Db>,
    ns: &str,
    desc: &Descriptor,
    upper: &std::path::Path,
    whiteouts: stevedore_diff::WhiteoutMode,
) -> Result<stevedore_diff::Applied, Error> {
    apply_blob(db, ns, desc, |media_type, reader| {
        let layer = stevedore_diff::decompress(Compression::of_media_type(media_type)?, reader)?;
        stevedore_diff::apply(upper, layer, whiteouts)
    })
}

/// Open the blob `desc` of `ns` and hand its bytes to `apply` (timed for
/// the metrics).
fn apply_blob(
    db: &Arc<Db>,
    ns: &str,
    desc: &Descriptor,
    apply: impl FnOnce(&str, std::io::BufReader<SeqReader>) -> Result<stevedore_diff::Applied, Error>,
) -> Result<stevedore_diff::Applied, Error> {
    let content = db.content(ns, None);
    let ra = content
        .reader_at(&desc.digest)
        .map_err(|e| e.context(format!("apply layer {}", desc.digest)))?;
    let reader = std::io::BufReader::with_capacity(1 << 20, SeqReader::new(ra, 0));
    let started = std::time::Instant::now();
    let applied = apply(&desc.media_type, reader)
        .map_err(|e| e.context(format!("apply layer {}", desc.digest)))?;
    crate::metrics::layer_unpacked(applied.size, started.elapsed());
    Ok(applied)
}

#[tonic::async_trait]
impl Diff for DiffService {
    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let pb = r
            .diff
            .ok_or_else(|| Status::invalid_argument("apply: diff descriptor is required"))?;
        let desc =
            crate::convert::descriptor_from_pb(&pb).map_err(stevedore_api::status::to_status)?;
        let mounts: Vec<Mount> = r.mounts.into_iter().map(mount_from_pb).collect();
        let (db, scratch, sync_fs) = (self.db.clone(), self.scratch.clone(), r.sync_fs);
        let applied =
            blocking(move || apply_layer_with(&db, &ns, &desc, &mounts, &scratch, sync_fs)).await;
        crate::memory::work_done();
        let applied = applied?;
        Ok(Response::new(ApplyResponse {
            applied: Some(descriptor_to_pb(&applied)),
        }))
    }

    async fn diff(&self, req: Request<DiffRequest>) -> Result<Response<DiffResponse>, Status> {
        let ns = namespace_of(&req)?;
        let lease = lease_of(&req);
        let r = req.into_inner();
        let left: Vec<Mount> = r.left.into_iter().map(mount_from_pb).collect();
        let right: Vec<Mount> = r.right.into_iter().map(mount_from_pb).collect();
        let media_type = if r.media_type.is_empty() {
            MEDIA_TYPE_LAYER_GZIP.to_string()
        } else {
            r.media_type
        };
        let compression =
            Compression::of_media_type(&media_type).map_err(stevedore_api::status::to_status)?;
        let reference = if r.r#ref.is_empty() {
            format!("diff-{}", uuid::Uuid::new_v4())
        } else {
            r.r#ref
        };
        // containerd 2.x's SourceDateEpoch: no entry newer than it
        let opts = stevedore_diff::CompareOptions {
            mtime_upper_bound: r.source_date_epoch.map(|t| t.seconds),
        };
        let mut labels: HashMap<String, String> = r.labels;
        let (db, scratch) = (self.db.clone(), self.scratch.clone());
        let desc = blocking(move || {
            let content = db.content(&ns, lease.as_deref());
            let mut writer = content.writer(WriterOpts::new(reference.clone()))?;
            std::fs::create_dir_all(&scratch)?;
            let written = {
                let adapter = WriteAdapter(writer.as_mut());
                let mut hashing = stevedore_diff::Hashing::new(adapter);
                let written = {
                    let mut enc = stevedore_diff::compress(compression, &mut hashing)?;
                    let w = stevedore_diff::mounts::compare_mounts_with(
                        &left, &right, &mut enc, &scratch, &opts,
                    )?;
                    enc.finish_stream()
                        .map_err(|e| Error::from(e).context("finish layer compression"))?;
                    w
                };
                let (digest, size, _) = hashing.finish();
                (written, digest, size)
            };
            let (w, digest, size) = written;
            labels.insert(LABEL_UNCOMPRESSED.into(), w.diff_id.to_string());
            match writer.commit(size as i64, Some(&digest), labels) {
                Ok(_) => {}
                Err(e) if e.kind == stevedore_types::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e.context(format!("commit diff {reference}"))),
            }
            let _: &Digest = &digest;
            Ok(Descriptor::new(media_type, digest, size as i64))
        })
        .await?;
        Ok(Response::new(DiffResponse {
            diff: Some(descriptor_to_pb(&desc)),
        }))
    }
}
