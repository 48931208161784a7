//! The ttrpc events endpoint shims forward their events to
//! (`containerd.services.events.ttrpc.v1.Events/Forward` on `<grpc socket>.ttrpc`).

use crate::Any;
use containerd_shim_protos::api::Empty;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{create_events, Events};
use containerd_shim_protos::ttrpc::asynchronous::{Server, TtrpcContext};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;
use stevedore_types::{Error, Result};

/// An event a shim published.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: String,
    pub event: Option<Any>,
}

/// Where forwarded events go.
pub type EventSink = Arc<dyn Fn(Event) -> Result<()> + Send + Sync>;

struct Forwarder {
    sink: EventSink,
}

#[async_trait::async_trait]
impl Events for Forwarder {
    async fn forward(
        &self,
        ctx: &TtrpcContext,
        req: ForwardRequest,
    ) -> containerd_shim_protos::ttrpc::Result<Empty> {
        let Some(env) = req.envelope.into_option() else {
            return Err(containerd_shim_protos::ttrpc::error::get_rpc_status(
                containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT,
                "forward event: envelope is required",
            ));
        };
        let timestamp = env
            .timestamp
            .as_ref()
            .map(|t| crate::shim::system_time(t.seconds, t.nanos))
            .unwrap_or_else(SystemTime::now);
        tracing::debug!(
            topic = %env.topic,
            namespace = %env.namespace,
            stream = ctx.mh.stream_id,
            "event forwarded by a shim"
        );
        let ev = Event {
            timestamp,
            namespace: env.namespace,
            topic: env.topic,
            event: env.event.as_ref().map(|a| Any {
                type_url: a.type_url.clone(),
                value: a.value.clone(),
            }),
        };
        (self.sink)(ev).map_err(|e| {
            containerd_shim_protos::ttrpc::error::get_rpc_status(
                containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT,
                e.to_string(),
            )
        })?;
        Ok(Empty::new())
    }
}

/// A running events server; stops when dropped.
pub struct EventsServer {
    // a Mutex only to make the server Sync (it is never contended)
    server: std::sync::Mutex<Server>,
}

impl EventsServer {
    /// Serve Forward on the unix socket `path`, delivering events to `sink`.
    pub async fn serve(path: &Path, sink: EventSink) -> Result<EventsServer> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::from(e).context(format!("create {}", dir.display())))?;
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(
                    Error::from(e).context(format!("remove stale socket {}", path.display()))
                )
            }
        }
        let svc = create_events(Arc::new(Forwarder { sink }));
        // each reply leaves in one write: a Go shim whose publisher read a
        // truncated frame from a daemon killed mid-reply never reconnects
        let listener = stevedore_ttrpc::bind(path)
            .map_err(|e| Error::unavailable(format!("listen on {}: {e}", path.display())))?;
        let mut server = Server::new().add_listener(listener).register_service(svc);
        server
            .start()
            .await
            .map_err(|e| Error::unavailable(format!("serve ttrpc on {}: {e}", path.display())))?;
        Ok(EventsServer {
            server: std::sync::Mutex::new(server),
        })
    }

    /// Stop serving.
    pub async fn shutdown(self) {
        let mut server = self.server.into_inner().unwrap_or_else(|p| p.into_inner());
        let _ = server.shutdown().await;
    }
}
