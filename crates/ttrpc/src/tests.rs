use super::*;
use containerd_shim_protos::ttrpc::proto::{GenMessage, MessageHeader};

/// A sink recording each write call; it takes at most `max` bytes a call
/// and answers every `pending_every`-th call with Pending first.
struct Recorder {
    writes: Vec<Vec<u8>>,
    max: usize,
    pending_every: usize,
    calls: usize,
}

impl Recorder {
    fn new(max: usize, pending_every: usize) -> Recorder {
        Recorder {
            writes: Vec::new(),
            max,
            pending_every,
            calls: 0,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        self.writes.concat()
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.calls += 1;
        if this.pending_every > 0 && this.calls.is_multiple_of(this.pending_every) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let mut call = Vec::new();
        for b in bufs {
            let n = (this.max - call.len()).min(b.len());
            call.extend_from_slice(&b[..n]);
            if call.len() == this.max {
                break;
            }
        }
        let n = call.len();
        this.writes.push(call);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn frame(stream_id: u32, payload: &[u8]) -> GenMessage {
    GenMessage {
        header: MessageHeader::new_response(stream_id, payload.len() as u32),
        payload: payload.to_vec(),
    }
}

fn wire(frames: &[GenMessage]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        out.extend_from_slice(&f.header.length.to_be_bytes());
        out.extend_from_slice(&f.header.stream_id.to_be_bytes());
        out.push(f.header.type_);
        out.push(f.header.flags);
        out.extend_from_slice(&f.payload);
    }
    out
}

fn frames() -> Vec<GenMessage> {
    vec![
        frame(1, b"first reply"),
        frame(3, b""),
        frame(5, &[7u8; 3000]),
        frame(7, b"x"),
        frame(9, b""),
    ]
}

#[tokio::test]
async fn ttrpc_frames_leave_in_one_write_each() {
    let frames = frames();
    // what the crate does on its own: a write per header field and payload
    let mut bare = Recorder::new(usize::MAX, 0);
    for f in &frames {
        f.write_to(&mut bare).await.unwrap();
    }
    assert!(bare.writes.len() >= 4 * frames.len(), "{:?}", bare.writes);
    let mut w = FrameWriter::new(Recorder::new(usize::MAX, 0));
    for f in &frames {
        // the ttrpc crate's own writer: header fields, flush, payload
        f.write_to(&mut w).await.unwrap();
    }
    let writes = &w.inner.writes;
    assert_eq!(
        writes.len(),
        frames.len(),
        "one write per frame: {writes:?}"
    );
    for (got, f) in writes.iter().zip(&frames) {
        assert_eq!(got, &wire(std::slice::from_ref(f)));
    }
}

#[tokio::test]
async fn ttrpc_frames_keep_their_bytes_through_short_and_pending_writes() {
    let frames = frames();
    for (max, pending_every) in [(1, 0), (3, 2), (11, 3), (12, 0), (4096, 2)] {
        let mut w = FrameWriter::new(Recorder::new(max, pending_every));
        for f in &frames {
            f.write_to(&mut w).await.unwrap();
        }
        assert_eq!(
            w.inner.bytes(),
            wire(&frames),
            "max {max}, pending every {pending_every}"
        );
    }
}

#[tokio::test]
async fn ttrpc_shutdown_passes_on_a_held_header() {
    use tokio::io::AsyncWriteExt;
    let mut w = FrameWriter::new(Recorder::new(usize::MAX, 0));
    w.write_all(&[0, 0, 0, 5, 0, 0, 0, 1, 2]).await.unwrap();
    w.flush().await.unwrap();
    assert!(w.inner.writes.is_empty(), "a header waits for its payload");
    w.shutdown().await.unwrap();
    assert_eq!(w.inner.bytes(), vec![0, 0, 0, 5, 0, 0, 0, 1, 2]);
}

#[tokio::test]
async fn ttrpc_client_and_server_talk_over_frame_writers() {
    use containerd_shim_protos::api::Empty;
    use containerd_shim_protos::api::ForwardRequest;
    use containerd_shim_protos::shim_async::{create_events, Events, EventsClient};
    use containerd_shim_protos::ttrpc::asynchronous::{Server, TtrpcContext};
    use containerd_shim_protos::ttrpc::context;
    use std::sync::{Arc, Mutex};

    struct Sink(Arc<Mutex<Vec<String>>>);
    #[async_trait::async_trait]
    impl Events for Sink {
        async fn forward(
            &self,
            _: &TtrpcContext,
            r: ForwardRequest,
        ) -> containerd_shim_protos::ttrpc::Result<Empty> {
            self.0.lock().unwrap().push(r.envelope.topic.clone());
            Ok(Empty::new())
        }
    }

    let dir = std::env::temp_dir().join(format!("stevedore-ttrpc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("events.sock");
    let _ = std::fs::remove_file(&path);
    let got = Arc::new(Mutex::new(Vec::new()));
    let mut server = Server::new()
        .add_listener(bind(&path).unwrap())
        .register_service(create_events(Arc::new(Sink(got.clone()))));
    server.start().await.unwrap();
    let client = EventsClient::new(
        connect(&format!("unix://{}", path.display()))
            .await
            .unwrap(),
    );
    for topic in ["/tasks/create", "/tasks/start", "/tasks/exit"] {
        let mut req = ForwardRequest::new();
        let mut env = containerd_shim_protos::shim::event::Envelope::new();
        env.topic = topic.into();
        req.envelope = Some(env).into();
        client
            .forward(context::with_timeout(5_000_000_000), &req)
            .await
            .unwrap();
    }
    assert_eq!(
        *got.lock().unwrap(),
        vec!["/tasks/create", "/tasks/start", "/tasks/exit"]
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
