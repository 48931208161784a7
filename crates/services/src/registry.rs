//! Every plugin of stevedored, registered in one place. Order matters only
//! where requirements leave it free: it is the order `ctr plugins ls` shows.

use crate::content::ContentService;
use crate::events::EventsService;
use crate::exchange::Exchange;
use crate::gc::{GcScheduler, SchedulerConfig};
use crate::health::HealthService;
use crate::images::ImagesService;
use crate::introspection::IntrospectionService;
use crate::leases::LeasesService;
use crate::namespaces::NamespacesService;
use crate::sandbox::controller::ControllerPlugin;
use crate::snapshots::SnapshotsService;
use crate::version::VersionService;
use crate::GrpcService;
use std::sync::Arc;
use stevedore_content::local::LocalStore;
use stevedore_metadata::content::ContentOptions;
use stevedore_metadata::Db;
use stevedore_plugin::types::*;
use stevedore_plugin::{ConfigSpec, InitContext, InitError, Instance, Registration, Registry};
use stevedore_snapshots::{Namespaced, Snapshotter};
use stevedore_types::{Error, Platform};

fn grpc(
    id: &'static str,
    requires: &[&'static str],
    make: impl Fn(&mut InitContext) -> Result<GrpcService, InitError> + Send + Sync + 'static,
) -> Registration {
    Registration::new(GRPC, id, move |ctx| Ok(Arc::new(make(ctx)?) as Instance)).requires(requires)
}

/// A snapshotter plugin: its instance is a [`Namespaced`] over the backend.
fn snapshotter(
    id: &'static str,
    open: fn(&std::path::Path) -> Result<Arc<dyn Snapshotter>, Error>,
) -> Registration {
    Registration::new(SNAPSHOTTER, id, move |ctx| {
        ctx.platforms.push(Platform::host());
        ctx.exports
            .insert("root".into(), ctx.root.display().to_string());
        let s = open(&ctx.root)?;
        Ok(Arc::new(Namespaced::new(s)) as Instance)
    })
}

/// The btrfs snapshotter's registration: it needs its root on btrfs, and
/// fails with containerd's message otherwise.
fn btrfs() -> Registration {
    snapshotter("btrfs", |root| {
        Ok(Arc::new(stevedore_snapshots::btrfs::open(root)?) as Arc<dyn Snapshotter>)
    })
}

/// The content plugin's config section.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentConfig {
    /// Most bytes a single ingest may hold (writes beyond it are refused
    /// with InvalidArgument); 0 means no cap beyond each ingest's own total.
    pub max_ingest_size: i64,
}

/// The metadata plugin's config section.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BoltConfig {
    /// An ingest not held by a lease is garbage after this long (e.g. "24h").
    pub ingest_expiry: String,
}

impl Default for BoltConfig {
    fn default() -> Self {
        BoltConfig {
            ingest_expiry: "24h".into(),
        }
    }
}

/// All plugins stevedored knows.
pub fn plugins() -> Registry {
    let mut r = Registry::new();
    r.register(
        Registration::new(CONTENT, "content", |ctx| {
            let cfg: ContentConfig = ctx.config_as()?;
            let store = LocalStore::open(&ctx.root)?;
            store.set_max_ingest_size(cfg.max_ingest_size);
            ctx.exports
                .insert("root".into(), ctx.root.display().to_string());
            Ok(Arc::new(store) as Instance)
        })
        .with_config(ConfigSpec::of::<ContentConfig>()),
    );
    r.register(btrfs());
    r.register(snapshotter("native", |root| {
        Ok(Arc::new(stevedore_snapshots::native::open(root)?) as Arc<dyn Snapshotter>)
    }));
    r.register(snapshotter("overlayfs", |root| {
        Ok(Arc::new(stevedore_snapshots::overlay::open(root)?) as Arc<dyn Snapshotter>)
    }));
    r.register(
        Registration::new(METADATA, "bolt", |ctx| {
            let cfg: BoltConfig = ctx.config_as()?;
            let ingest_expiry = humantime::parse_duration(&cfg.ingest_expiry).map_err(|e| {
                Error::invalid(format!("bolt: ingest_expiry {:?}: {e}", cfg.ingest_expiry))
            })?;
            let store: Arc<LocalStore> = ctx.get(CONTENT, "content")?;
            let db = Db::open(&ctx.root.join("meta.db"))?;
            db.attach_content((*store).clone(), ContentOptions { ingest_expiry })?;
            Ok(Arc::new(db) as Instance)
        })
        .requires(&[CONTENT, SNAPSHOTTER])
        .with_config(ConfigSpec::of::<BoltConfig>()),
    );
    r.register(
        Registration::new(GC, "scheduler", |ctx| {
            let cfg: SchedulerConfig = ctx.config_as()?;
            let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
            Ok(Arc::new(GcScheduler::start(db, &cfg)?) as Instance)
        })
        .requires(&[METADATA])
        .with_config(ConfigSpec::of::<SchedulerConfig>()),
    );
    r.register(Registration::new(EVENT, "exchange", |_| {
        Ok(Arc::new(Exchange::new()) as Instance)
    }));
    r.register(grpc("content", &[METADATA, EVENT], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        Ok(ContentService::grpc(db, (*ex).clone()))
    }));
    r.register(
        Registration::new(DIFF, "walking", |ctx| {
            ctx.platforms.push(Platform::host());
            let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
            Ok(Arc::new(crate::diff::DiffService::grpc(
                db,
                ctx.state.join("tmpmounts"),
            )) as Instance)
        })
        .requires(&[METADATA]),
    );
    r.register(
        Registration::new(GRPC, "diff", |ctx| {
            let svc: Arc<GrpcService> = ctx.get(DIFF, "walking")?;
            Ok(svc as Instance)
        })
        .requires(&[DIFF]),
    );
    r.register(grpc("events", &[EVENT], |ctx| {
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        Ok(EventsService::grpc((*ex).clone()))
    }));
    r.register(grpc("containers", &[METADATA, EVENT], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        Ok(crate::containers::ContainersService::grpc(
            db,
            (*ex).clone(),
        ))
    }));
    r.register(
        Registration::new(RUNTIME_V2, "task", |ctx| {
            let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
            let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
            ctx.platforms.push(Platform::host());
            let cfg: crate::tasks::RuntimeConfig = ctx.config_as()?;
            let rt = crate::tasks::RuntimeV2::init(
                ctx.state.clone(),
                ctx.root.clone(),
                ctx.env.address.clone(),
                ctx.env.ttrpc_address.clone(),
                cfg,
                db,
                (*ex).clone(),
            )?;
            Ok(Arc::new(rt) as Instance)
        })
        .requires(&[METADATA, EVENT])
        .with_config(ConfigSpec::of::<crate::tasks::RuntimeConfig>()),
    );
    r.register(grpc("tasks", &[RUNTIME_V2, METADATA], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let rt: Arc<crate::tasks::RuntimeV2> = ctx.get(RUNTIME_V2, "task")?;
        Ok(crate::tasks::TasksService::grpc(db, rt))
    }));
    r.register(grpc("healthcheck", &[], |_| Ok(HealthService::grpc())));
    r.register(grpc("images", &[METADATA, EVENT, GC], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        let gc: Option<Arc<GcScheduler>> = ctx.get(GC, "scheduler").ok();
        Ok(ImagesService::grpc(db, (*ex).clone(), gc))
    }));
    r.register(grpc("introspection", &["*"], |ctx| {
        // plugins that answer PluginInfo with extra data (containerd's pluginInfoProvider)
        let mut providers = crate::introspection::PluginInfoProviders::new();
        if let Ok(rt) = ctx.get::<crate::tasks::RuntimeV2>(RUNTIME_V2, "task") {
            providers.insert((RUNTIME_V2.into(), "task".into()), rt);
        }
        Ok(IntrospectionService::grpc(
            ctx.records(),
            providers,
            ctx.root.clone(),
        ))
    }));
    r.register(grpc("leases", &[METADATA, GC], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let gc: Arc<GcScheduler> = ctx.get(GC, "scheduler")?;
        Ok(LeasesService::grpc(db, gc))
    }));
    r.register(grpc("namespaces", &[METADATA, EVENT], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        Ok(NamespacesService::grpc(db, (*ex).clone()))
    }));
    r.register(
        Registration::new(SANDBOX_STORE, "local", |ctx| {
            let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
            Ok(Arc::new(crate::sandbox::SandboxStore::new(db)) as Instance)
        })
        .requires(&[METADATA]),
    );
    r.register(grpc("sandboxes", &[SANDBOX_STORE], |ctx| {
        let store: Arc<crate::sandbox::SandboxStore> = ctx.get(SANDBOX_STORE, "local")?;
        Ok(crate::sandbox::SandboxStoreService::grpc(store))
    }));
    r.register(
        Registration::new(
            PODSANDBOX_CONTROLLER,
            crate::sandbox::podsandbox::NAME,
            |ctx| {
                let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
                let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
                let rt: Arc<crate::tasks::RuntimeV2> = ctx.get(RUNTIME_V2, "task")?;
                let ctrl = crate::sandbox::podsandbox::PodSandbox::new(
                    db,
                    rt.manager.clone(),
                    (*ex).clone(),
                );
                Ok(Arc::new(ControllerPlugin(Arc::new(ctrl))) as Instance)
            },
        )
        .requires(&[METADATA, EVENT, RUNTIME_V2]),
    );
    r.register(grpc(
        "sandbox-controllers",
        &[PODSANDBOX_CONTROLLER, METADATA, EVENT],
        |ctx| {
            let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
            let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
            // containerd's service collects both controller types by id
            let controllers = [PODSANDBOX_CONTROLLER, SANDBOX_CONTROLLER]
                .into_iter()
                .flat_map(|t| ctx.all_of::<ControllerPlugin>(t))
                .map(|(id, c)| (id, c.0.clone()))
                .collect();
            Ok(crate::sandbox::controller::ControllerService::grpc(
                controllers,
                db,
                (*ex).clone(),
            ))
        },
    ));
    r.register(grpc("snapshots", &[SNAPSHOTTER, EVENT, METADATA], |ctx| {
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        let snapshotters: std::collections::BTreeMap<String, Namespaced> = ctx
            .all_of::<Namespaced>(SNAPSHOTTER)
            .into_iter()
            .map(|(id, s)| (id, (*s).clone()))
            .collect();
        let db: Option<Arc<Db>> = ctx.get(METADATA, "bolt").ok();
        if let Some(db) = &db {
            // snapshots join the GC graph: referenced via gc.ref.snapshot labels,
            // leases and their parents; the rest is collected
            db.register_gc_source(Arc::new(crate::snapshot_gc::SnapshotSource::new(
                snapshotters.clone(),
            )));
        }
        Ok(SnapshotsService::grpc(snapshotters, (*ex).clone(), db))
    }));
    r.register(
        Registration::new(TRANSFER, "local", |ctx| {
            let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
            let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
            let snapshotters = ctx
                .all_of::<Namespaced>(SNAPSHOTTER)
                .into_iter()
                .map(|(id, s)| (id, (*s).clone()))
                .collect();
            Ok(Arc::new(crate::transfer::Engine::new(
                db,
                snapshotters,
                (*ex).clone(),
                ctx.state.join("tmpmounts"),
            )) as Instance)
        })
        .requires(&[SNAPSHOTTER, EVENT, METADATA]),
    );
    r.register(Registration::new(STREAMING, "manager", |_| {
        Ok(Arc::new(crate::streaming::StreamManager::new()) as Instance)
    }));
    r.register(grpc("streaming", &[STREAMING], |ctx| {
        let streams: Arc<crate::streaming::StreamManager> = ctx.get(STREAMING, "manager")?;
        Ok(crate::streaming::StreamingService::grpc(streams))
    }));
    // containerd 2.x's Transfer service keeps containerd's plugin id; stevedore's
    // own transfer API, on the same engine, has an id of its own
    r.register(grpc("transfer", &[TRANSFER, STREAMING], |ctx| {
        let engine: Arc<crate::transfer::Engine> = ctx.get(TRANSFER, "local")?;
        let streams: Arc<crate::streaming::StreamManager> = ctx.get(STREAMING, "manager")?;
        Ok(crate::transfer::containerd::ContainerdTransfer::grpc(
            engine, streams,
        ))
    }));
    r.register(grpc("stevedore-transfer", &[TRANSFER], |ctx| {
        let engine: Arc<crate::transfer::Engine> = ctx.get(TRANSFER, "local")?;
        Ok(crate::transfer::stevedore::TransferService::grpc(engine))
    }));
    r.register(grpc("version", &[], |_| Ok(VersionService::grpc())));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_orders_without_error() {
        let r = plugins();
        let order = r.order().unwrap();
        let regs = r.registrations();
        let names: Vec<String> = order.iter().map(|&i| regs[i].uri()).collect();
        assert_eq!(names.last().unwrap(), "io.containerd.grpc.v1.introspection");
        let pos = |u: &str| names.iter().position(|n| n == u).unwrap();
        assert!(pos("io.containerd.metadata.v1.bolt") < pos("io.containerd.grpc.v1.namespaces"));
    }
}
