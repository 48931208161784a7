//! Task events, forwarded to the daemon's ttrpc `Events.Forward` at
//! `TTRPC_ADDRESS` (containerd's shim publisher). An event that cannot be
//! delivered is logged to the shim log.

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::EventsClient;
use containerd_shim_protos::ttrpc;
use std::time::SystemTime;

/// The protobuf full name of a message the shim sends inside an `Any`.
/// Spelled out rather than taken from the reflection descriptor: building
/// rust-protobuf's descriptors costs a few hundred KiB of heap per shim.
pub trait Named: Message {
    const FULL_NAME: &'static str;
}

macro_rules! named {
    ($($t:ty => $n:literal),* $(,)?) => {
        $(impl Named for $t { const FULL_NAME: &'static str = $n; })*
    };
}

named! {
    TaskCreate => "containerd.events.TaskCreate",
    TaskStart => "containerd.events.TaskStart",
    TaskExit => "containerd.events.TaskExit",
    TaskDelete => "containerd.events.TaskDelete",
    TaskExecAdded => "containerd.events.TaskExecAdded",
    TaskExecStarted => "containerd.events.TaskExecStarted",
    TaskPaused => "containerd.events.TaskPaused",
    TaskResumed => "containerd.events.TaskResumed",
    TaskOOM => "containerd.events.TaskOOM",
}

/// Wrap a message in an `Any`.
pub fn pack<M: Named>(m: &M) -> Any {
    let mut a = Any::new();
    a.type_url = M::FULL_NAME.to_string();
    a.value = m.write_to_bytes().unwrap_or_default();
    a
}

/// A protobuf timestamp.
pub fn ts(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut x = Timestamp::new();
    x.seconds = d.as_secs() as i64;
    x.nanos = d.subsec_nanos() as i32;
    x
}

/// How often an event that could not be delivered is tried again, waiting
/// 1, 2, ... seconds in between (containerd's shim publisher: `maxRequeue`).
const MAX_REQUEUE: u64 = 5;

/// Events waiting for delivery; publishing waits when this many are queued.
const QUEUE: usize = 256;

/// An event on its way to the daemon.
struct Queued {
    topic: String,
    req: ForwardRequest,
}

/// Forwards events of one namespace to the daemon, in order, from one task:
/// publishing only queues, so a daemon that is down (restarting) never
/// blocks the task's lifecycle; an undelivered event is retried
/// [`MAX_REQUEUE`] times over ~15 s, as containerd's shim does, so a
/// restarted daemon still learns of exits that happened while it was away.
pub struct Publisher {
    namespace: String,
    address: Option<String>,
    queue: std::sync::OnceLock<tokio::sync::mpsc::Sender<Queued>>,
    /// Queued and not yet delivered (or given up on).
    pending: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
}

impl Publisher {
    /// A publisher to `TTRPC_ADDRESS` (none: events are dropped).
    pub fn from_env(namespace: &str) -> Publisher {
        let address = std::env::var("TTRPC_ADDRESS")
            .ok()
            .filter(|a| !a.is_empty())
            .map(|a| {
                if a.starts_with("unix://") {
                    a
                } else {
                    format!("unix://{a}")
                }
            });
        Publisher {
            namespace: namespace.to_string(),
            address,
            queue: std::sync::OnceLock::new(),
            pending: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// Queue `m` on `topic` for delivery (inside the shim's runtime).
    pub async fn publish<M: Named>(&self, topic: &str, m: &M) {
        let Some(addr) = &self.address else {
            return;
        };
        let mut env = containerd_shim_protos::shim::event::Envelope::new();
        env.timestamp = Some(ts(SystemTime::now())).into();
        env.namespace = self.namespace.clone();
        env.topic = topic.into();
        env.event = Some(pack(m)).into();
        let mut req = ForwardRequest::new();
        req.envelope = Some(env).into();
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
            tokio::spawn(forward(addr.clone(), rx, self.pending.clone()));
            tx
        });
        self.pending.send_modify(|n| *n += 1);
        let queued = Queued {
            topic: topic.to_string(),
            req,
        };
        if queue.send(queued).await.is_err() {
            self.pending.send_modify(|n| *n -= 1);
            crate::log::warn(&format!("publish {topic} event: the publisher stopped"));
        }
    }

    /// Wait (at most `limit`) until every queued event was delivered or
    /// given up on: before the shim exits.
    pub async fn flush(&self, limit: std::time::Duration) {
        let mut rx = self.pending.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(|n| *n == 0)).await;
    }
}

/// The delivery task: one event at a time, in order, retried with growing
/// pauses; one connection, re-made after a failure.
async fn forward(
    addr: String,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    pending: std::sync::Arc<tokio::sync::watch::Sender<usize>>,
) {
    let mut client: Option<EventsClient> = None;
    while let Some(q) = rx.recv().await {
        let mut last = String::new();
        let mut delivered = false;
        for attempt in 0..=MAX_REQUEUE {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_secs(attempt)).await;
            }
            if client.is_none() {
                match stevedore_ttrpc::connect(&addr).await {
                    Ok(c) => client = Some(EventsClient::new(c)),
                    Err(e) => {
                        last = format!("connect to {addr}: {e}");
                        continue;
                    }
                }
            }
            let Some(c) = client.as_ref() else {
                continue;
            };
            match c
                .forward(ttrpc::context::with_timeout(5_000_000_000), &q.req)
                .await
            {
                Ok(_) => {
                    delivered = true;
                    break;
                }
                Err(e) => {
                    last = e.to_string();
                    client = None;
                }
            }
        }
        if !delivered {
            crate::log::warn(&format!(
                "publish {} event: {last} (gave up after {MAX_REQUEUE} retries)",
                q.topic
            ));
        }
        pending.send_modify(|n| *n -= 1);
    }
}
