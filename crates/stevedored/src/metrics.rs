//! The metrics endpoint (`[metrics] address`): Prometheus' text format at
//! `/v1/metrics`, as containerd serves it, with containerd's names where the
//! meaning is the same:
//!
//! - gRPC server metrics as go-grpc-prometheus names them (containerd
//!   registers it on its server): `grpc_server_started_total`,
//!   `grpc_server_handled_total`, `grpc_server_msg_received_total`,
//!   `grpc_server_msg_sent_total` by `grpc_service`, `grpc_method`,
//!   `grpc_type` (and `grpc_code`), plus the `grpc_server_handling_seconds`
//!   histogram when `grpc_histogram = true`. Series appear with a method's
//!   first call (go-grpc-prometheus pre-creates them at zero).
//! - `containerd_build_info{version, revision}` (the daemon's own version).
//! - task cgroup metrics as containerd's cgroups collector names them
//!   (`container_*{container_id, namespace}`), read from each task's shim.
//! - stevedore's own: pulls, unpacks, garbage collection
//!   (`stevedore_services::metrics`), running shims, and the `process_*`
//!   metrics the Prometheus Go client adds to containerd's.

use crate::endpoint::{self, text, typed, Reply};
use bytes::Buf;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::Request;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::Instant;
use stevedore_metrics::{Counter, Family, Histogram, Text, DEFAULT_BUCKETS};
use stevedore_runtime::manager::TaskManager;

static STARTED: LazyLock<Family<Counter>> = LazyLock::new(|| {
    Family::new(
        "grpc_server_started_total",
        "Total number of RPCs started on the server.",
        &["grpc_method", "grpc_service", "grpc_type"],
        Counter::new,
    )
});
static HANDLED: LazyLock<Family<Counter>> = LazyLock::new(|| {
    Family::new(
        "grpc_server_handled_total",
        "Total number of RPCs completed on the server, regardless of success or failure.",
        &["grpc_code", "grpc_method", "grpc_service", "grpc_type"],
        Counter::new,
    )
});
static RECEIVED: LazyLock<Family<Counter>> = LazyLock::new(|| {
    Family::new(
        "grpc_server_msg_received_total",
        "Total number of RPC stream messages received on the server.",
        &["grpc_method", "grpc_service", "grpc_type"],
        Counter::new,
    )
});
static SENT: LazyLock<Family<Counter>> = LazyLock::new(|| {
    Family::new(
        "grpc_server_msg_sent_total",
        "Total number of gRPC stream messages sent by the server.",
        &["grpc_method", "grpc_service", "grpc_type"],
        Counter::new,
    )
});
static HANDLING: LazyLock<Family<Histogram>> = LazyLock::new(|| {
    Family::new(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        &["grpc_method", "grpc_service", "grpc_type"],
        || Histogram::new(DEFAULT_BUCKETS),
    )
});

/// A tower layer around the gRPC routes that counts every RPC.
#[derive(Clone)]
pub struct GrpcMetricsLayer {
    pub histogram: bool,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;
    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            histogram: self.histogram,
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    histogram: bool,
}

/// One RPC's labels and start.
struct Call {
    service: String,
    method: String,
    kind: &'static str,
    started: Instant,
    histogram: bool,
}

impl Call {
    fn labels(&self) -> [&str; 3] {
        [&self.method, &self.service, self.kind]
    }

    fn finish(&self, code: &str) {
        let [m, s, k] = self.labels();
        HANDLED.with(&[code, m, s, k]).inc();
        if self.histogram {
            HANDLING
                .with(&self.labels())
                .observe_duration(self.started.elapsed());
        }
    }
}

type Body = tonic::body::Body;

impl<S> tower::Service<http::Request<Body>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let path = req.uri().path();
        // only the contract's RPCs (an unknown one is answered Unimplemented
        // before go-grpc-prometheus' interceptor would run)
        let Some(kind) = stevedore_api::methods::kind(path) else {
            return Box::pin(self.inner.call(req));
        };
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        let call = Arc::new(Call {
            service: service.to_string(),
            method: method.to_string(),
            kind: kind.label(),
            started: Instant::now(),
            histogram: self.histogram,
        });
        STARTED.with(&call.labels()).inc();
        let req = req.map(|b| {
            Body::new(Counted {
                inner: b,
                frames: Frames::default(),
                counter: RECEIVED.with(&call.labels()),
                call: None,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            // a trailers-only answer carries the status in the headers
            let code = resp.headers().get("grpc-status").map(code_name);
            let sent = SENT.with(&call.labels());
            let resp = match code {
                Some(code) => {
                    call.finish(code);
                    resp.map(|b| {
                        Body::new(Counted {
                            inner: b,
                            frames: Frames::default(),
                            counter: sent,
                            call: None,
                        })
                    })
                }
                None => resp.map(|b| {
                    Body::new(Counted {
                        inner: b,
                        frames: Frames::default(),
                        counter: sent,
                        call: Some(Finish { call, done: false }),
                    })
                }),
            };
            Ok(resp)
        })
    }
}

/// go-grpc-prometheus' code names (Go's `codes.Code.String()`).
fn code_name(v: &http::HeaderValue) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    v.to_str()
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("Unknown")
}

/// Records the RPC's end once: the status from the trailers, or Canceled
/// when the stream is dropped before them (the client went away).
struct Finish {
    call: Arc<Call>,
    done: bool,
}

impl Finish {
    fn finish(&mut self, code: &'static str) {
        if !self.done {
            self.done = true;
            self.call.finish(code);
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.finish("Canceled");
    }
}

/// Counts gRPC messages (5-byte prefix: flag, big-endian length) in a body.
#[derive(Default)]
struct Frames {
    header: [u8; 5],
    have: usize,
    /// Bytes of the current message still to come.
    left: u64,
}

impl Frames {
    /// Feed bytes; returns how many messages began.
    fn feed(&mut self, mut b: &[u8]) -> u64 {
        let mut n = 0;
        while !b.is_empty() {
            if self.left > 0 {
                let skip = (self.left as usize).min(b.len());
                self.left -= skip as u64;
                b = &b[skip..];
                continue;
            }
            let take = (5 - self.have).min(b.len());
            self.header[self.have..self.have + take].copy_from_slice(&b[..take]);
            self.have += take;
            b = &b[take..];
            if self.have == 5 {
                self.have = 0;
                n += 1;
                self.left = u64::from(u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]));
            }
        }
        n
    }
}

struct Counted {
    inner: Body,
    frames: Frames,
    counter: Arc<Counter>,
    call: Option<Finish>,
}

impl HttpBody for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = this.frames.feed(data.chunk());
                    this.counter.add(n);
                } else if let Some(t) = frame.trailers_ref() {
                    if let Some(f) = this.call.as_mut() {
                        f.finish(t.get("grpc-status").map(code_name).unwrap_or("Unknown"));
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.call.as_mut() {
                    f.finish("Unknown");
                }
            }
            Poll::Ready(None) => {
                if let Some(f) = this.call.as_mut() {
                    f.finish("OK");
                }
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What the endpoint reads at scrape time.
#[derive(Clone)]
pub struct Sources {
    pub tasks: Option<Arc<TaskManager>>,
}

/// Answer one request.
pub async fn handle(req: Request<Incoming>, sources: Sources) -> Reply {
    if req.uri().path() != "/v1/metrics" {
        return text(404, "404 page not found\n");
    }
    let mut out = Text::new();
    out.header(
        "containerd_build_info",
        "containerd build information",
        "counter",
    );
    out.sample(
        "containerd_build_info",
        &[
            ("revision", stevedore_services::version::REVISION),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
        1.0,
    );
    for f in [&*STARTED, &*HANDLED, &*RECEIVED, &*SENT] {
        f.render(&mut out);
    }
    HANDLING.render(&mut out);
    stevedore_services::metrics::render(&mut out);
    if let Some(tasks) = &sources.tasks {
        crate::cgroups::render(tasks, &mut out).await;
    }
    process(&mut out);
    typed(
        "text/plain; version=0.0.4; charset=utf-8",
        out.into_string(),
    )
}

/// The Prometheus Go client's `process_*` metrics, from `/proc/self`.
fn process(out: &mut Text) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the command's closing parenthesis
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let tick = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    // utime and stime are fields 14 and 15 of stat(5): index 11 and 12 here
    if let (Some(u), Some(s)) = (field(11), field(12)) {
        out.single(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            (u + s) / tick,
        );
    }
    if let Some(v) = field(20) {
        out.single(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            v,
        );
    }
    if let Some(v) = field(21) {
        out.single(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            v * page,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        out.single(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            fds.count() as f64,
        );
    }
}

/// Serve the metrics endpoint.
pub fn serve(listener: endpoint::Listener, sources: Sources) {
    endpoint::serve(listener, move |req| handle(req, sources.clone()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grpc_messages_across_chunks() {
        let mut f = Frames::default();
        // two messages: 3 bytes, then 0 bytes, split at awkward places
        let wire = [0u8, 0, 0, 0, 3, b'a', b'b', b'c', 0, 0, 0, 0, 0];
        assert_eq!(f.feed(&wire[..2]), 0);
        assert_eq!(f.feed(&wire[2..6]), 1);
        assert_eq!(f.feed(&wire[6..]), 1);
        assert_eq!(f.have, 0);
        assert_eq!(f.left, 0);
    }

    #[test]
    fn names_codes_as_go_does() {
        assert_eq!(code_name(&http::HeaderValue::from_static("0")), "OK");
        assert_eq!(code_name(&http::HeaderValue::from_static("1")), "Canceled");
        assert_eq!(code_name(&http::HeaderValue::from_static("5")), "NotFound");
        assert_eq!(code_name(&http::HeaderValue::from_static("99")), "Unknown");
    }
}
