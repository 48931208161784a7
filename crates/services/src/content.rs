//! The Content service (containerd's `services/content/contentserver`) over
//! the namespaced content store. The Write stream follows containerd's
//! server message for message, since clients (ctr's remote writer) depend on
//! it: the first message names the ref and opens (locks) the ingest; every
//! message gets one reply carrying the current offset; STAT adds digest,
//! times and total; WRITE/COMMIT check the offset (0 restarts the ingest),
//! append data, and COMMIT verifies and ends the stream.

use crate::exchange::Exchange;
use crate::{blocking, namespace_of, GrpcService};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;
use stevedore_api::events::ContentDelete;
use stevedore_api::services::content::{
    content_server::{Content, ContentServer},
    AbortRequest, DeleteContentRequest, Info as PbInfo, InfoRequest, InfoResponse,
    ListContentRequest, ListContentResponse, ListStatusesRequest, ListStatusesResponse,
    ReadContentRequest, ReadContentResponse, Status as PbStatus, StatusRequest, StatusResponse,
    UpdateRequest, UpdateResponse, WriteAction, WriteContentRequest, WriteContentResponse,
};
use stevedore_api::status::to_status;
use stevedore_content::{Info, Status as IngestStatus, Store, Writer, WriterOpts};
use stevedore_metadata::content::NsContent;
use stevedore_metadata::Db;
use stevedore_types::filters::Filter;
use stevedore_types::{Digest, Error};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The gRPC metadata key carrying the lease, as containerd names it.
pub const LEASE_HEADER: &str = "containerd-lease";

/// Bytes per Read response.
const READ_CHUNK: usize = 1 << 20;
/// Infos per List response (containerd batches 100).
const LIST_BATCH: usize = 100;

pub struct ContentService {
    db: Arc<Db>,
    exchange: Exchange,
}

impl ContentService {
    pub fn grpc(db: Arc<Db>, exchange: Exchange) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(ContentServer::new(
            ContentService { db, exchange }
        )))
    }

    fn store<T>(&self, req: &Request<T>) -> Result<NsContent, Status> {
        let ns = namespace_of(req)?;
        Ok(self.db.content(&ns, lease_of(req).as_deref()))
    }
}

/// The lease a request is made under, from the `containerd-lease` header.
pub fn lease_of<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(LEASE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn ts(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn from_ts(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn info_to_pb(i: Info) -> PbInfo {
    PbInfo {
        digest: i.digest.to_string(),
        size: i.size,
        created_at: Some(ts(i.created_at)),
        updated_at: Some(ts(i.updated_at)),
        labels: i.labels,
    }
}

fn status_to_pb(s: IngestStatus) -> PbStatus {
    PbStatus {
        started_at: Some(ts(s.started_at)),
        updated_at: Some(ts(s.updated_at)),
        r#ref: s.reference,
        offset: s.offset,
        total: s.total,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

fn parse_digest(s: &str) -> Result<Digest, Status> {
    s.parse::<Digest>().map_err(to_status)
}

fn parse_filters(f: &[String]) -> Result<Filter, Status> {
    Filter::parse_all(f).map_err(to_status)
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Content for ContentService {
    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let store = self.store(&req)?;
        let d = parse_digest(&req.into_inner().digest)?;
        let info = blocking(move || store.info(&d)).await?;
        Ok(Response::new(InfoResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    async fn update(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<UpdateResponse>, Status> {
        let store = self.store(&req)?;
        let r = req.into_inner();
        let pb = r
            .info
            .ok_or_else(|| Status::invalid_argument("update content: info is required"))?;
        let info = Info {
            digest: parse_digest(&pb.digest)?,
            size: pb.size,
            created_at: from_ts(pb.created_at),
            updated_at: from_ts(pb.updated_at),
            labels: pb.labels,
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = blocking(move || store.update(info, &paths)).await?;
        Ok(Response::new(UpdateResponse {
            info: Some(info_to_pb(info)),
        }))
    }

    type ListStream = BoxStream<ListContentResponse>;

    async fn list(
        &self,
        req: Request<ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let store = self.store(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let infos = blocking(move || store.list(&filter)).await?;
        let batches: Vec<Result<ListContentResponse, Status>> = infos
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(ListContentResponse {
                    info: c.iter().cloned().map(info_to_pb).collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(batches))))
    }

    async fn delete(&self, req: Request<DeleteContentRequest>) -> Result<Response<()>, Status> {
        let store = self.store(&req)?;
        let ns = store.namespace().to_string();
        let d = parse_digest(&req.into_inner().digest)?;
        let d2 = d.clone();
        blocking(move || store.delete(&d2)).await?;
        self.exchange.publish(
            &ns,
            "/content/delete",
            &ContentDelete {
                digest: d.to_string(),
            },
        );
        Ok(Response::new(()))
    }

    type ReadStream = BoxStream<ReadContentResponse>;

    async fn read(
        &self,
        req: Request<ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let store = self.store(&req)?;
        let r = req.into_inner();
        let d = r
            .digest
            .parse::<Digest>()
            .map_err(|e| Status::invalid_argument(format!("{}: {}", r.digest, e.message)))?;
        let (offset, want) = (r.offset, r.size);
        // ctr 1.6's remote ReaderAt asks for 32 KiB per request (one stream
        // per io.Copy buffer, thousands per export): a request that fits one
        // response is looked up, opened and read in a single blocking hop
        let opened = blocking(move || {
            store.info(&d)?;
            let ra = store.reader_at(&d)?;
            let (offset, size) = read_range(ra.size() as i64, offset, want)?;
            if size as usize <= READ_CHUNK {
                let data = read_full(&*ra, offset, size as usize)?;
                return Ok(Opened::Done(ReadContentResponse {
                    offset,
                    data: data.into(),
                }));
            }
            Ok(Opened::Stream(ra, offset, size))
        })
        .await?;
        let (ra, offset, size) = match opened {
            Opened::Done(msg) => {
                let one = tokio_stream::iter([Ok(msg)]);
                return Ok(Response::new(Box::pin(one)));
            }
            Opened::Stream(ra, offset, size) => (ra, offset, size),
        };
        let (tx, rx) = mpsc::channel::<Result<ReadContentResponse, Status>>(4);
        tokio::task::spawn_blocking(move || {
            let mut off = offset;
            let end = offset + size;
            while off < end {
                let want = ((end - off) as usize).min(READ_CHUNK);
                let data = match read_full(&*ra, off, want) {
                    Ok(data) => data,
                    Err(e) => {
                        let _ = tx.blocking_send(Err(to_status(e)));
                        return;
                    }
                };
                let got = data.len();
                let msg = ReadContentResponse {
                    offset: off,
                    data: data.into(),
                };
                if tx.blocking_send(Ok(msg)).is_err() {
                    return; // client went away
                }
                off += got as i64;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn status(
        &self,
        req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let store = self.store(&req)?;
        let r = req.into_inner().r#ref;
        let st = blocking(move || store.status(&r)).await?;
        Ok(Response::new(StatusResponse {
            status: Some(status_to_pb(st)),
        }))
    }

    async fn list_statuses(
        &self,
        req: Request<ListStatusesRequest>,
    ) -> Result<Response<ListStatusesResponse>, Status> {
        let store = self.store(&req)?;
        let filter = parse_filters(&req.into_inner().filters)?;
        let list = blocking(move || store.list_statuses(&filter)).await?;
        Ok(Response::new(ListStatusesResponse {
            statuses: list.into_iter().map(status_to_pb).collect(),
        }))
    }

    type WriteStream = BoxStream<WriteContentResponse>;

    async fn write(
        &self,
        req: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let store = self.store(&req)?;
        let ns = namespace_of(&req)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<WriteContentResponse, Status>>(16);
        let exchange = self.exchange.clone();
        tokio::spawn(async move {
            let mut session = WriteSession {
                store,
                inbound,
                tx: tx.clone(),
                exchange,
                namespace: ns,
            };
            let result = session.run().await;
            drop(session);
            crate::memory::work_done();
            if let Err(s) = result {
                if s.code() != tonic::Code::AlreadyExists {
                    tracing::debug!(error = %s.message(), "content write failed");
                }
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn abort(&self, req: Request<AbortRequest>) -> Result<Response<()>, Status> {
        let store = self.store(&req)?;
        let r = req.into_inner().r#ref;
        blocking(move || store.abort(&r)).await?;
        Ok(Response::new(()))
    }
}

/// One Write stream.
struct WriteSession {
    store: NsContent,
    inbound: Streaming<WriteContentRequest>,
    tx: mpsc::Sender<Result<WriteContentResponse, Status>>,
    /// containerd 2.x publishes `/content/create` once a write commits.
    exchange: Exchange,
    namespace: String,
}

/// An operation on the stream's writer, run on its blocking task.
type WriterOp = Box<dyn FnOnce(&mut dyn Writer) + Send>;

/// The writer of one Write stream on one blocking task for the whole stream:
/// each message's work is queued to it (one at a time, the replies go out in
/// order) instead of a trip to the blocking pool per message. There the
/// store hashes each chunk while its own thread appends it
/// (`Writer::write_bytes`). The writer is dropped on that task too.
struct WriterTask {
    ops: mpsc::Sender<WriterOp>,
    task: tokio::task::JoinHandle<()>,
}

impl WriterTask {
    fn start(w: Box<dyn Writer>) -> WriterTask {
        let (ops, mut queued) = mpsc::channel::<WriterOp>(1);
        let task = tokio::task::spawn_blocking(move || {
            let mut w = w;
            while let Some(op) = queued.blocking_recv() {
                op(&mut *w);
            }
        });
        WriterTask { ops, task }
    }

    /// Drop the writer (releasing its ingest) and wait until it is gone.
    async fn close(self) {
        drop(self.ops);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "content write task failed");
        }
    }

    /// Run `f` on the writer and wait for its answer.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Writer) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Status> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let op: WriterOp = Box::new(move |w| {
            let _ = answer.send(f(w));
        });
        let gone = || Status::internal("content write: the writer task ended");
        self.ops.send(op).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?.map_err(to_status)
    }
}

impl WriteSession {
    async fn next(&mut self) -> Result<Option<WriteContentRequest>, Status> {
        match self.inbound.next().await {
            None => Ok(None),
            Some(r) => r.map(Some),
        }
    }

    async fn send(&self, msg: &WriteContentResponse) -> Result<(), Status> {
        self.tx
            .send(Ok(msg.clone()))
            .await
            .map_err(|_| Status::cancelled("content write: client went away"))
    }

    async fn run(&mut self) -> Result<(), Status> {
        let Some(req) = self.next().await? else {
            return Ok(());
        };
        let reference = req.r#ref.clone();
        if reference.is_empty() {
            return Err(Status::invalid_argument(
                "first message must have a reference",
            ));
        }
        let total = req.total;
        let expected: Option<Digest> = if req.expected.is_empty() {
            None
        } else {
            Some(parse_digest(&req.expected)?)
        };
        let store = self.store.clone();
        let opts = WriterOpts {
            reference: reference.clone(),
            total,
            expected: expected.clone(),
        };
        let w = WriterTask::start(blocking(move || store.writer(opts)).await?);
        let served = self.serve(&w, req, total, expected).await;
        // the ingest is free again before the stream ends
        w.close().await;
        match served {
            Err(Ended::Exists(exp)) => {
                let store = self.store.clone();
                let r = reference.clone();
                if let Err(e) = blocking(move || store.abort(&r)).await {
                    tracing::warn!(error = %e.message(), "failed to abort write");
                }
                Err(Status::already_exists(format!(
                    "blob with expected digest {exp} exists"
                )))
            }
            Err(Ended::Failed(s)) => Err(s),
            Ok(()) => Ok(()),
        }
    }

    /// The stream's messages after the first opened the writer.
    async fn serve(
        &mut self,
        w: &WriterTask,
        mut req: WriteContentRequest,
        mut total: i64,
        mut expected: Option<Digest>,
    ) -> Result<(), Ended> {
        // the writer's status, refreshed by every operation on it, so a
        // WRITE message costs one operation
        let mut ws = w.run(|w| w.status()).await?;
        // persists across messages, as containerd's does
        let mut msg = WriteContentResponse::default();
        loop {
            msg.action = req.action;
            msg.offset = ws.offset;

            if !req.expected.is_empty() {
                let exp = parse_digest(&req.expected)?;
                let store = self.store.clone();
                let e2 = exp.clone();
                if blocking(move || store.info(&e2)).await.is_ok() {
                    return Err(Ended::Exists(exp));
                }
                expected = Some(exp);
            }
            if req.total > 0 {
                total = req.total;
            }

            let action = WriteAction::try_from(req.action).map_err(|_| {
                Status::invalid_argument(format!("unknown write action {}", req.action))
            })?;
            match action {
                WriteAction::Stat => {
                    let (d, st) = w.run(|w| Ok((w.digest(), w.status()?))).await?;
                    ws = st;
                    msg.offset = ws.offset;
                    msg.digest = d.to_string();
                    msg.started_at = Some(ts(ws.started_at));
                    msg.updated_at = Some(ts(ws.updated_at));
                    msg.total = total;
                }
                WriteAction::Write | WriteAction::Commit => {
                    if req.offset > 0 && req.offset != ws.offset {
                        return Err(Status::out_of_range(format!(
                            "write @{} must occur at current offset {}",
                            req.offset, ws.offset
                        ))
                        .into());
                    }
                    let restart = req.offset == 0 && ws.offset > 0;
                    let data = std::mem::take(&mut req.data);
                    let n = data.len() as i64;
                    let commit = (action == WriteAction::Commit)
                        .then(|| (total, expected.clone(), std::mem::take(&mut req.labels)));
                    let res = w
                        .run(move |w| {
                            if restart {
                                w.truncate(0)?;
                            }
                            if !data.is_empty() {
                                w.write_bytes(data)?;
                            }
                            if let Some((total, expected, labels)) = commit {
                                let labels: HashMap<String, String> = labels;
                                w.commit(total, expected.as_ref(), labels)?;
                            }
                            Ok((w.digest(), w.status()?))
                        })
                        .await;
                    if restart {
                        msg.offset = 0;
                    }
                    let (d, st) = res?;
                    ws = st;
                    msg.offset += n;
                    msg.digest = d.to_string();
                }
            }
            self.send(&msg).await?;
            if action == WriteAction::Commit {
                self.exchange.publish(
                    &self.namespace,
                    "/content/create",
                    &stevedore_api::events::ContentCreate {
                        digest: msg.digest.clone(),
                        size: ws.offset,
                    },
                );
                break;
            }
            match self.next().await? {
                Some(r) => req = r,
                None => break,
            }
        }
        // containerd's deferred send: one last copy of the final reply
        let _ = self.tx.send(Ok(msg)).await;
        Ok(())
    }
}

/// How a Write stream ended early.
enum Ended {
    /// The expected blob exists: the ingest is aborted, AlreadyExists.
    Exists(Digest),
    Failed(Status),
}

impl From<Status> for Ended {
    fn from(s: Status) -> Self {
        Ended::Failed(s)
    }
}

/// What one blocking hop of a Read found: the whole answer, or a blob to
/// stream from `offset` for `size` bytes.
enum Opened {
    Done(ReadContentResponse),
    Stream(Box<dyn stevedore_content::ReaderAt>, i64, i64),
}

/// The range a Read request names, as containerd's server clamps it: a
/// negative offset is 0, size 0 (or past the end) means to the end, an
/// offset past the end is OutOfRange.
fn read_range(blob_size: i64, offset: i64, size: i64) -> Result<(i64, i64), Error> {
    let offset = offset.max(0);
    if offset > blob_size {
        return Err(Error::new(
            stevedore_types::ErrorKind::OutOfRange,
            format!("read past object length {blob_size} bytes"),
        ));
    }
    let size = if size <= 0 || offset + size > blob_size {
        blob_size - offset
    } else {
        size
    };
    Ok((offset, size))
}

/// Read `want` bytes at `off`; a blob shorter than its recorded size is an
/// error rather than a short answer.
fn read_full(
    ra: &dyn stevedore_content::ReaderAt,
    off: i64,
    want: usize,
) -> Result<Vec<u8>, Error> {
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        match ra.read_at(&mut buf[got..], off as u64 + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    if got == 0 && want > 0 {
        return Err(Error::internal(format!(
            "read content: unexpected end of blob at {off}"
        )));
    }
    buf.truncate(got);
    Ok(buf)
}
