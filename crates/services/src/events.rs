//! The Events gRPC service: Publish, Forward and Subscribe with filters on
//! `topic`, `namespace` and `event.<field>` of known payloads.

use crate::exchange::Exchange;
use crate::{namespace_of, GrpcService};
use futures::Stream;
use std::pin::Pin;
use stevedore_api::services::events::{
    events_server::{Events, EventsServer},
    Envelope, ForwardRequest, PublishRequest, SubscribeRequest,
};
use stevedore_api::status::IntoStatus;
use stevedore_types::filters::Filter;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

pub struct EventsService {
    exchange: Exchange,
}

impl EventsService {
    pub fn grpc(exchange: Exchange) -> GrpcService {
        GrpcService::new(crate::with_message_limits!(EventsServer::new(
            EventsService { exchange }
        )))
    }
}

fn adapt(env: &Envelope) -> impl Fn(&[String]) -> Option<String> + '_ {
    move |path: &[String]| match path.first().map(String::as_str) {
        Some("topic") => Some(env.topic.clone()),
        Some("namespace") => Some(env.namespace.clone()),
        Some("event") => env
            .event
            .as_ref()
            .and_then(|any| event_field(any, &path[1..])),
        _ => None,
    }
}

/// Fields of known event payloads, for `event.<field>` filters.
fn event_field(any: &prost_types::Any, path: &[String]) -> Option<String> {
    use stevedore_api::events::*;
    use stevedore_api::typeurl::from_any;
    let field = path.first()?.as_str();
    if let Some(e) = from_any::<NamespaceCreate>(any) {
        return (field == "name").then_some(e.name);
    }
    if let Some(e) = from_any::<NamespaceUpdate>(any) {
        return (field == "name").then_some(e.name);
    }
    if let Some(e) = from_any::<NamespaceDelete>(any) {
        return (field == "name").then_some(e.name);
    }
    None
}

type EventStream = Pin<Box<dyn Stream<Item = Result<Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, req: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace_of(&req)?;
        let r = req.into_inner();
        let event = r
            .event
            .ok_or_else(|| Status::invalid_argument("publish: event payload is required"))?;
        self.exchange.publish_any(&ns, &r.topic, event).grpc()?;
        Ok(Response::new(()))
    }

    async fn forward(&self, req: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let env = req
            .into_inner()
            .envelope
            .ok_or_else(|| Status::invalid_argument("forward: envelope is required"))?;
        self.exchange.forward(env).grpc()?;
        Ok(Response::new(()))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = Filter::parse_all(&req.get_ref().filters).grpc()?;
        let mut rx = self.exchange.subscribe();
        let exchange = self.exchange.clone();
        let stream = async_stream(move |tx| async move {
            loop {
                let next = tokio::select! {
                    r = rx.recv() => r,
                    _ = tx.closed() => return,
                    _ = exchange.closed() => return,
                };
                match next {
                    Ok(env) => {
                        if filter.matches(&adapt(&env)) && tx.send(Ok(env)).await.is_err() {
                            return;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        tracing::warn!(dropped = n, "event subscriber fell behind");
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small bounded channel; the task ends when
/// the client goes away.
pub fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = T> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
