//! The in-process event exchange (`io.containerd.event.v1 exchange`): services
//! publish envelopes here; subscribers (the Events gRPC service) receive them.
//! The queue per subscriber is bounded: a subscriber that falls behind loses
//! the oldest events (and is told so in the log) instead of growing memory.

use prost::Name;
use stevedore_api::services::events::Envelope;
use stevedore_types::Error;
use tokio::sync::broadcast;

/// Events a subscriber may lag behind before the oldest are dropped.
const QUEUE: usize = 4096;

/// Fan-out of event envelopes to subscribers.
#[derive(Clone)]
pub struct Exchange {
    tx: broadcast::Sender<Envelope>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl Default for Exchange {
    fn default() -> Self {
        Self::new()
    }
}

/// containerd's topic rule: `/` followed by `/`-separated non-empty components.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    if !topic.starts_with('/') || topic.len() < 2 {
        return Err(Error::invalid(format!(
            "event topic {topic:?} must start with '/' and name something"
        )));
    }
    if topic[1..].split('/').any(|c| c.is_empty()) {
        return Err(Error::invalid(format!(
            "event topic {topic:?} has an empty component"
        )));
    }
    Ok(())
}

impl Exchange {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(QUEUE);
        let (closed, _) = tokio::sync::watch::channel(false);
        Exchange { tx, closed }
    }

    /// Publish an already-built envelope (Forward).
    pub fn forward(&self, env: Envelope) -> Result<(), Error> {
        validate_topic(&env.topic)?;
        stevedore_metadata::namespaces::validate_name(&env.namespace)
            .map_err(|e| e.context("forward event envelope namespace"))?;
        // no subscribers is not an error
        let _ = self.tx.send(env);
        Ok(())
    }

    /// Publish an event payload under a topic in a namespace.
    pub fn publish_any(
        &self,
        namespace: &str,
        topic: &str,
        event: prost_types::Any,
    ) -> Result<(), Error> {
        self.forward(Envelope {
            timestamp: Some(crate::now_timestamp()),
            namespace: namespace.to_string(),
            topic: topic.to_string(),
            event: Some(event),
        })
    }

    /// Publish a typed event; failures are logged, never fatal to the caller.
    pub fn publish<M: prost::Message + Name>(&self, namespace: &str, topic: &str, event: &M) {
        let any = stevedore_api::typeurl::to_any(event);
        if let Err(e) = self.publish_any(namespace, topic, any) {
            tracing::warn!(topic, namespace, error = %e, "dropping event");
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Envelope> {
        self.tx.subscribe()
    }

    /// Ends every subscription (daemon shutdown), so streams do not hold the
    /// server open.
    pub fn shutdown(&self) {
        let _ = self.closed.send(true);
    }

    /// Resolves once `shutdown` has been called.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_api::events::NamespaceCreate;

    #[tokio::test]
    async fn delivers_to_subscribers() {
        let ex = Exchange::new();
        let mut rx = ex.subscribe();
        ex.publish(
            "default",
            "/namespaces/create",
            &NamespaceCreate {
                name: "x".into(),
                labels: Default::default(),
            },
        );
        let env = rx.recv().await.unwrap();
        assert_eq!(env.topic, "/namespaces/create");
        assert_eq!(
            env.event.unwrap().type_url,
            "containerd.events.NamespaceCreate"
        );
    }

    #[test]
    fn validates_topics() {
        assert!(validate_topic("/a/b").is_ok());
        for bad in ["", "/", "a/b", "/a//b", "/a/"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
