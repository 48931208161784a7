//! Every plugin of stevedored, registered in one place. Order matters only
//! where requirements leave it free: it is the order `ctr plugins ls` shows.

use crate::events::EventsService;
use crate::exchange::Exchange;
use crate::health::HealthService;
use crate::introspection::IntrospectionService;
use crate::namespaces::NamespacesService;
use crate::version::VersionService;
use crate::GrpcService;
use std::sync::Arc;
use stevedore_metadata::Db;
use stevedore_plugin::types::*;
use stevedore_plugin::{ConfigSpec, InitContext, InitError, Instance, Registration, Registry};
use stevedore_types::{Error, Platform};

fn grpc(
    id: &'static str,
    requires: &[&'static str],
    make: impl Fn(&mut InitContext) -> Result<GrpcService, InitError> + Send + Sync + 'static,
) -> Registration {
    Registration::new(GRPC, id, move |ctx| Ok(Arc::new(make(ctx)?) as Instance)).requires(requires)
}

/// The btrfs snapshotter's registration: it needs its root on btrfs.
fn btrfs() -> Registration {
    Registration::new(SNAPSHOTTER, "btrfs", |ctx| {
        ctx.platforms.push(Platform::host());
        ctx.exports
            .insert("root".into(), ctx.root.display().to_string());
        std::fs::create_dir_all(&ctx.root)
            .map_err(|e| Error::from(e).context(format!("create {}", ctx.root.display())))?;
        if !stevedore_sys::is_btrfs(&ctx.root)? {
            return Err(InitError::Failed(Error::unknown(format!(
                "path {} must be a btrfs filesystem to be used with the btrfs snapshotter",
                ctx.root.display()
            ))));
        }
        Err(InitError::Failed(Error::unimplemented(
            "the btrfs snapshotter is not implemented yet",
        )))
    })
}

/// All plugins stevedored knows.
pub fn plugins() -> Registry {
    let mut r = Registry::new();
    r.register(btrfs());
    r.register(
        Registration::new(METADATA, "bolt", |ctx| {
            let db = Db::open(&ctx.root.join("meta.db"))?;
            Ok(Arc::new(db) as Instance)
        })
        .requires(&[SNAPSHOTTER]),
    );
    r.register(Registration::new(EVENT, "exchange", |_| {
        Ok(Arc::new(Exchange::new()) as Instance)
    }));
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
    r.register(grpc("introspection", &["*"], |ctx| {
        Ok(IntrospectionService::grpc(ctx.records(), ctx.root.clone()))
    }));
    r.register(grpc("namespaces", &[METADATA, EVENT], |ctx| {
        let db: Arc<Db> = ctx.get(METADATA, "bolt")?;
        let ex: Arc<Exchange> = ctx.get(EVENT, "exchange")?;
        Ok(NamespacesService::grpc(db, (*ex).clone()))
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
