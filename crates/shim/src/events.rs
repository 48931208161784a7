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
use containerd_shim_protos::shim_async::{Client, EventsClient};
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

/// Forwards events of one namespace to the daemon, reconnecting once.
pub struct Publisher {
    namespace: String,
    address: Option<String>,
    client: tokio::sync::Mutex<Option<EventsClient>>,
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
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// Publish `m` on `topic`.
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
        let mut guard = self.client.lock().await;
        let mut last = String::new();
        for _ in 0..2 {
            if guard.is_none() {
                match Client::connect(addr).await {
                    Ok(c) => *guard = Some(EventsClient::new(c)),
                    Err(e) => {
                        last = format!("connect to {addr}: {e}");
                        continue;
                    }
                }
            }
            let Some(client) = guard.as_ref() else {
                continue;
            };
            match client
                .forward(ttrpc::context::with_timeout(5_000_000_000), &req)
                .await
            {
                Ok(_) => return,
                Err(e) => {
                    last = e.to_string();
                    *guard = None;
                }
            }
        }
        crate::log::warn(&format!("publish {topic} event: {last}"));
    }
}
