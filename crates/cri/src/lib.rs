//! Kubernetes' Container Runtime Interface for stevedored: the plugin
//! `io.containerd.grpc.v1 cri` serving `runtime.v1.RuntimeService` and
//! `runtime.v1.ImageService` on the daemon's socket, configured with
//! containerd 1.6's keys (`[plugins."io.containerd.grpc.v1.cri"]`).
//!
//! Like containerd's CRI, it is a client of the daemon's own API
//! ([`client`]): pods and containers are containerd containers and tasks in
//! the `k8s.io` namespace, images are pulled by the transfer engine, so
//! `ctr -n k8s.io` sees everything the CRI made. Its own state is the
//! metadata kept with each container record plus a status file per
//! container ([`store`]), rebuilt after a restart ([`monitor`]).

pub mod client;
pub mod config;
pub mod container;
pub mod core;
pub mod exec;
pub mod features;
pub mod image;
pub mod io;
pub mod monitor;
pub mod network;
pub mod sandbox;
pub mod service;
pub mod spec;
pub mod stats;
pub mod store;
pub mod streaming;
pub mod user;

use crate::config::CriConfig;
use crate::core::Cri;
use std::sync::Arc;
use stevedore_plugin::types::*;
use stevedore_plugin::{ConfigSpec, Registration, Registry};
use stevedore_services::{with_message_limits, GrpcService};

/// Register the CRI plugin.
pub fn register(r: &mut Registry) {
    r.register(
        Registration::new(GRPC, "cri", |ctx| {
            let config: CriConfig = ctx.config_as()?;
            config
                .check_supported()
                .map_err(stevedore_types::Error::invalid)?;
            let ctrd = client::Ctrd::new(ctx.env.address.clone(), client::K8S_NAMESPACE)
                .map_err(stevedore_types::Error::invalid)?;
            let netns_dir = if config.netns_mounts_under_state_dir {
                ctx.state.join("netns")
            } else {
                std::path::PathBuf::from("/var/run/netns")
            };
            let network = network::Network::new(&config.cni, netns_dir, ctx.root.join("cni"));
            let (events, _) = tokio::sync::broadcast::channel(256);
            let (ready, _) = tokio::sync::watch::channel(false);
            let cri = Arc::new(Cri {
                config,
                ctrd,
                store: Default::default(),
                root: ctx.root.clone(),
                state: ctx.state.clone(),
                address: ctx.env.address.clone(),
                network,
                streams: std::sync::OnceLock::new(),
                events,
                image_names: std::sync::Mutex::new(None),
                ready,
            });
            let handle = tokio::runtime::Handle::try_current().map_err(|e| {
                stevedore_types::Error::internal(format!("cri: no async runtime: {e}"))
            })?;
            handle.spawn(cri.clone().start_background());
            handle.spawn_blocking(features::recursive_read_only_mounts);
            let svc = service::CriService(cri);
            Ok(Arc::new(
                GrpcService::new(with_message_limits!(
                    stevedore_api::cri::runtime_service_server::RuntimeServiceServer::new(
                        svc.clone()
                    )
                ))
                .and(with_message_limits!(
                    stevedore_api::cri::image_service_server::ImageServiceServer::new(svc)
                )),
            ) as stevedore_plugin::Instance)
        })
        .requires(&[METADATA, RUNTIME_V2, TRANSFER, SNAPSHOTTER, EVENT])
        .with_config(ConfigSpec::of::<CriConfig>()),
    );
}
