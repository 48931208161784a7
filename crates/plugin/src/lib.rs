//! The plugin registry. Every component of stevedored is a plugin with a type,
//! an id, the plugin types it requires and an init function. The registry
//! orders plugins so requirements initialise first (keeping registration order
//! otherwise), runs their inits, and records each outcome as data (ok, skipped
//! with a reason, or failed with an error kind and message) for introspection.
//!
//! Plugin trouble never aborts the daemon unless the plugin is listed as
//! required: a failed plugin is simply absent for the plugins that need it.

use std::any::Any;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use stevedore_types::{Error, ErrorKind, Platform};

/// Plugin types, spelled as containerd spells them.
pub mod types {
    pub const CONTENT: &str = "io.containerd.content.v1";
    pub const METADATA: &str = "io.containerd.metadata.v1";
    pub const SNAPSHOTTER: &str = "io.containerd.snapshotter.v1";
    pub const DIFF: &str = "io.containerd.differ.v1";
    pub const EVENT: &str = "io.containerd.event.v1";
    pub const GC: &str = "io.containerd.gc.v1";
    pub const LEASE: &str = "io.containerd.lease.v1";
    pub const SERVICE: &str = "io.containerd.service.v1";
    pub const GRPC: &str = "io.containerd.grpc.v1";
    pub const RUNTIME_V2: &str = "io.containerd.runtime.v2";
    pub const MONITOR: &str = "io.containerd.monitor.v1";
    pub const INTERNAL: &str = "io.containerd.internal.v1";
    pub const TRANSFER: &str = "io.containerd.transfer.v1";
    pub const STREAMING: &str = "io.containerd.streaming.v1";
    pub const SANDBOX_STORE: &str = "io.containerd.sandbox.store.v1";
    /// containerd 2.x's pod sandbox controllers (`podsandbox`).
    pub const PODSANDBOX_CONTROLLER: &str = "io.containerd.podsandbox.controller.v1";
    /// containerd 2.x's other sandbox controllers (`shim` in containerd).
    pub const SANDBOX_CONTROLLER: &str = "io.containerd.sandbox.controller.v1";
}

/// An initialised plugin instance; consumers downcast to the concrete type.
pub type Instance = Arc<dyn Any + Send + Sync>;

/// Why an init did not produce an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitError {
    /// Not applicable here (e.g. disabled in config); not an error.
    Skip(String),
    /// Tried and failed.
    Failed(Error),
}

impl From<Error> for InitError {
    fn from(e: Error) -> Self {
        InitError::Failed(e)
    }
}

/// Describes a plugin's config section: its default and a strict parser.
#[derive(Clone, Copy)]
pub struct ConfigSpec {
    pub default: fn() -> toml::Value,
    pub validate: fn(&toml::Value) -> Result<(), String>,
}

impl ConfigSpec {
    /// The spec of a serde config type; unknown keys must be denied by `T`.
    pub fn of<T>() -> ConfigSpec
    where
        T: serde::Serialize + serde::de::DeserializeOwned + Default,
    {
        ConfigSpec {
            default: || toml::Value::try_from(T::default()).expect("default config serialises"),
            validate: |v| {
                v.clone()
                    .try_into::<T>()
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        }
    }
}

type InitFn = Box<dyn Fn(&mut InitContext) -> Result<Instance, InitError> + Send + Sync>;

/// A plugin as registered: who it is, what it needs and how to start it.
pub struct Registration {
    pub kind: &'static str,
    pub id: &'static str,
    /// Plugin types that must initialise first; `"*"` means every other plugin.
    pub requires: Vec<&'static str>,
    pub config: Option<ConfigSpec>,
    pub init: InitFn,
}

impl Registration {
    pub fn new(
        kind: &'static str,
        id: &'static str,
        init: impl Fn(&mut InitContext) -> Result<Instance, InitError> + Send + Sync + 'static,
    ) -> Self {
        Registration {
            kind,
            id,
            requires: Vec::new(),
            config: None,
            init: Box::new(init),
        }
    }
    pub fn requires(mut self, kinds: &[&'static str]) -> Self {
        self.requires = kinds.to_vec();
        self
    }
    pub fn with_config(mut self, spec: ConfigSpec) -> Self {
        self.config = Some(spec);
        self
    }
    /// `type.id`, the name used in `disabled_plugins` and config sections.
    pub fn uri(&self) -> String {
        format!("{}.{}", self.kind, self.id)
    }
}

/// Outcome of one plugin's init.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    Skipped(String),
    Failed(Error),
}

/// What introspection reports about a plugin.
#[derive(Debug, Clone)]
pub struct PluginRecord {
    pub kind: String,
    pub id: String,
    pub requires: Vec<String>,
    pub platforms: Vec<Platform>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub status: Status,
}

/// Daemon-wide facts every plugin init may read.
#[derive(Debug, Clone)]
pub struct Environment {
    pub root: PathBuf,
    pub state: PathBuf,
    /// The gRPC socket address (shims and events use it).
    pub address: PathBuf,
    /// The ttrpc socket shims forward events to.
    pub ttrpc_address: PathBuf,
    /// `type.id` -> config section.
    pub plugin_config: BTreeMap<String, toml::Value>,
    pub disabled: HashSet<String>,
}

/// Handed to each init: its directories, config, metadata to fill in, and
/// access to the plugins initialised before it.
pub struct InitContext<'a> {
    /// `<root>/<type>.<id>`; created on demand by the plugin.
    pub root: PathBuf,
    /// `<state>/<type>.<id>`.
    pub state: PathBuf,
    pub env: &'a Environment,
    pub config: Option<toml::Value>,
    pub platforms: Vec<Platform>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    done: &'a [(String, String, Instance)],
    records: Arc<OnceLock<Vec<PluginRecord>>>,
}

impl InitContext<'_> {
    /// The instance of an initialised plugin, downcast to `T`.
    pub fn get<T: Any + Send + Sync>(&self, kind: &str, id: &str) -> Result<Arc<T>, Error> {
        let inst = self
            .done
            .iter()
            .find(|(k, i, _)| k == kind && i == id)
            .map(|(_, _, inst)| inst.clone())
            .ok_or_else(|| Error::precondition(format!("plugin {kind}.{id} is not initialised")))?;
        inst.downcast::<T>().map_err(|_| {
            Error::internal(format!(
                "plugin {kind}.{id} has an unexpected instance type"
            ))
        })
    }

    /// The single instance of a plugin type (first one initialised).
    pub fn get_by_type<T: Any + Send + Sync>(&self, kind: &str) -> Result<Arc<T>, Error> {
        for (k, _, inst) in self.done {
            if k == kind {
                if let Ok(t) = inst.clone().downcast::<T>() {
                    return Ok(t);
                }
            }
        }
        Err(Error::precondition(format!(
            "no initialised plugin of type {kind}"
        )))
    }

    /// Every initialised instance of a type that downcasts to `T`, with ids.
    pub fn all_of<T: Any + Send + Sync>(&self, kind: &str) -> Vec<(String, Arc<T>)> {
        self.done
            .iter()
            .filter(|(k, _, _)| k == kind)
            .filter_map(|(_, id, inst)| inst.clone().downcast::<T>().ok().map(|t| (id.clone(), t)))
            .collect()
    }

    /// The plugin records, filled in once every plugin has initialised.
    pub fn records(&self) -> Arc<OnceLock<Vec<PluginRecord>>> {
        self.records.clone()
    }

    /// Parse this plugin's config section (or its default when absent).
    pub fn config_as<T: serde::de::DeserializeOwned + Default>(&self) -> Result<T, Error> {
        match &self.config {
            None => Ok(T::default()),
            Some(v) => v
                .clone()
                .try_into()
                .map_err(|e| Error::invalid(format!("invalid config for plugin: {e}"))),
        }
    }
}

/// The set of registered plugins.
#[derive(Default)]
pub struct Registry {
    regs: Vec<Registration>,
}

/// The result of initialising a registry.
pub struct Initialized {
    pub records: Arc<OnceLock<Vec<PluginRecord>>>,
    instances: Vec<(String, String, Instance)>,
}

impl Initialized {
    pub fn records(&self) -> &[PluginRecord] {
        self.records.get().map(Vec::as_slice).unwrap_or(&[])
    }
    /// Every ok instance of a type, in init order.
    pub fn instances_of<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Instance)> + 'a {
        self.instances
            .iter()
            .filter(move |(k, _, _)| k == kind)
            .map(|(_, id, inst)| (id.as_str(), inst))
    }
    pub fn get<T: Any + Send + Sync>(&self, kind: &str, id: &str) -> Option<Arc<T>> {
        self.instances
            .iter()
            .find(|(k, i, _)| k == kind && i == id)
            .and_then(|(_, _, inst)| inst.clone().downcast::<T>().ok())
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// Register a plugin. Duplicate `type.id` pairs are rejected at ordering.
    pub fn register(&mut self, r: Registration) {
        self.regs.push(r);
    }

    pub fn registrations(&self) -> &[Registration] {
        &self.regs
    }

    /// Indices of registrations in init order: requirements first, otherwise
    /// registration order. Fails on duplicates, cycles and requirements on
    /// types nobody registered.
    pub fn order(&self) -> Result<Vec<usize>, Error> {
        let mut seen_ids = HashSet::new();
        for r in &self.regs {
            if !seen_ids.insert((r.kind, r.id)) {
                return Err(Error::already_exists(format!(
                    "plugin {} registered twice",
                    r.uri()
                )));
            }
        }
        let kinds: HashSet<&str> = self.regs.iter().map(|r| r.kind).collect();
        for r in &self.regs {
            for req in &r.requires {
                if *req != "*" && !kinds.contains(req) {
                    return Err(Error::not_found(format!(
                        "plugin {} requires plugin type {req}, which no plugin provides",
                        r.uri()
                    )));
                }
            }
        }
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            None,
            Visiting,
            Done,
        }
        let mut marks = vec![Mark::None; self.regs.len()];
        let mut out = Vec::with_capacity(self.regs.len());

        fn visit(
            regs: &[Registration],
            i: usize,
            marks: &mut [Mark],
            out: &mut Vec<usize>,
            path: &mut Vec<String>,
        ) -> Result<(), Error> {
            match marks[i] {
                Mark::Done => return Ok(()),
                Mark::Visiting => {
                    path.push(regs[i].uri());
                    return Err(Error::precondition(format!(
                        "plugin dependency cycle: {}",
                        path.join(" -> ")
                    )));
                }
                Mark::None => {}
            }
            marks[i] = Mark::Visiting;
            path.push(regs[i].uri());
            let wildcard = regs[i].requires.contains(&"*");
            for (j, other) in regs.iter().enumerate() {
                if j == i {
                    continue;
                }
                let needed = if wildcard {
                    // "*" waits for everything that does not itself wait for all
                    !other.requires.contains(&"*")
                } else {
                    regs[i].requires.contains(&other.kind)
                };
                if needed {
                    visit(regs, j, marks, out, path)?;
                }
            }
            path.pop();
            marks[i] = Mark::Done;
            out.push(i);
            Ok(())
        }

        for i in 0..self.regs.len() {
            let mut path = Vec::new();
            visit(&self.regs, i, &mut marks, &mut out, &mut path)?;
        }
        Ok(out)
    }

    /// Initialise every plugin in order. Fails only when the order cannot be
    /// computed or a plugin named in `required` does not come up ok.
    pub fn init(self, env: &Environment, required: &[String]) -> Result<Initialized, Error> {
        let order = self.order()?;
        let records_cell: Arc<OnceLock<Vec<PluginRecord>>> = Arc::new(OnceLock::new());
        let mut records = Vec::with_capacity(order.len());
        let mut done: Vec<(String, String, Instance)> = Vec::new();
        for i in order {
            let reg = &self.regs[i];
            let uri = reg.uri();
            let mut ctx = InitContext {
                root: env.root.join(&uri),
                state: env.state.join(&uri),
                env,
                config: env.plugin_config.get(&uri).cloned(),
                platforms: Vec::new(),
                exports: BTreeMap::new(),
                capabilities: Vec::new(),
                done: &done,
                records: records_cell.clone(),
            };
            let result = if env.disabled.contains(&uri) {
                Err(InitError::Skip("disabled in config".into()))
            } else {
                (reg.init)(&mut ctx)
            };
            let InitContext {
                platforms,
                exports,
                capabilities,
                ..
            } = ctx;
            let status = match result {
                Ok(inst) => {
                    tracing::debug!(plugin = %uri, "plugin initialised");
                    done.push((reg.kind.to_string(), reg.id.to_string(), inst));
                    Status::Ok
                }
                Err(InitError::Skip(why)) => {
                    tracing::info!(plugin = %uri, reason = %why, "plugin skipped");
                    Status::Skipped(why)
                }
                Err(InitError::Failed(e)) => {
                    tracing::warn!(plugin = %uri, error = %e, "plugin failed to initialise");
                    Status::Failed(e)
                }
            };
            if required.contains(&uri) && status != Status::Ok {
                return Err(Error::precondition(format!(
                    "required plugin {uri} did not initialise: {status:?}"
                )));
            }
            records.push(PluginRecord {
                kind: reg.kind.to_string(),
                id: reg.id.to_string(),
                requires: reg.requires.iter().map(|s| s.to_string()).collect(),
                platforms,
                exports,
                capabilities,
                status,
            });
        }
        let _ = records_cell.set(records);
        Ok(Initialized {
            records: records_cell,
            instances: done,
        })
    }
}

/// containerd reports a skipped plugin as an error whose message contains
/// "skip plugin"; `ctr plugins ls` shows such plugins as `skip`.
pub fn skip_message(reason: &str) -> String {
    format!("{reason}: skip plugin")
}

/// The gRPC status code and message introspection reports for a status.
pub fn status_error(status: &Status) -> Option<(ErrorKind, String)> {
    match status {
        Status::Ok => None,
        Status::Skipped(why) => Some((ErrorKind::Unknown, skip_message(why))),
        Status::Failed(e) => Some((e.kind, e.message.clone())),
    }
}

/// Map of plugin uri to count, handy in tests.
pub fn count_by_status(records: &[PluginRecord]) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for r in records {
        let k = match r.status {
            Status::Ok => "ok",
            Status::Skipped(_) => "skip",
            Status::Failed(_) => "error",
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(kind: &'static str, id: &'static str, requires: &[&'static str]) -> Registration {
        Registration::new(kind, id, |_| Ok(Arc::new(()) as Instance)).requires(requires)
    }

    fn env() -> Environment {
        Environment {
            root: "/tmp/r".into(),
            state: "/tmp/s".into(),
            address: "/tmp/s/sock".into(),
            ttrpc_address: "/tmp/s/sock.ttrpc".into(),
            plugin_config: BTreeMap::new(),
            disabled: HashSet::new(),
        }
    }

    fn names(r: &Registry) -> Vec<String> {
        r.order()
            .unwrap()
            .into_iter()
            .map(|i| r.regs[i].id.to_string())
            .collect()
    }

    #[test]
    fn orders_requirements_first_and_keeps_registration_order() {
        let mut r = Registry::new();
        r.register(reg("grpc", "content", &["svc"]));
        r.register(reg("content", "content", &[]));
        r.register(reg("svc", "content-service", &["meta"]));
        r.register(reg("meta", "bolt", &["content"]));
        r.register(reg("grpc", "version", &[]));
        assert_eq!(
            names(&r),
            ["content", "bolt", "content-service", "content", "version"]
        );
    }

    #[test]
    fn wildcard_waits_for_everything() {
        let mut r = Registry::new();
        r.register(reg("grpc", "introspection", &["*"]));
        r.register(reg("a", "one", &[]));
        r.register(reg("b", "two", &["a"]));
        assert_eq!(names(&r), ["one", "two", "introspection"]);
    }

    #[test]
    fn rejects_cycles() {
        let mut r = Registry::new();
        r.register(reg("a", "x", &["b"]));
        r.register(reg("b", "y", &["a"]));
        let e = r.order().unwrap_err();
        assert!(e.message.contains("cycle"), "{e}");
        assert!(e.message.contains("a.x -> b.y -> a.x"), "{e}");
    }

    #[test]
    fn rejects_missing_requirement() {
        let mut r = Registry::new();
        r.register(reg("a", "x", &["nope"]));
        let e = r.order().unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("requires plugin type nope"), "{e}");
    }

    #[test]
    fn rejects_duplicates() {
        let mut r = Registry::new();
        r.register(reg("a", "x", &[]));
        r.register(reg("a", "x", &[]));
        assert!(r.order().is_err());
    }

    #[test]
    fn records_ok_skip_and_error_and_keeps_going() {
        let mut r = Registry::new();
        r.register(Registration::new("a", "fails", |_| {
            Err(InitError::Failed(Error::unknown("boom")))
        }));
        r.register(Registration::new("a", "skips", |_| {
            Err(InitError::Skip("not here".into()))
        }));
        r.register(reg("a", "disabled", &[]));
        r.register(
            Registration::new("b", "uses", |ctx| {
                // the failed plugin is absent for its dependents
                assert!(ctx.get::<()>("a", "fails").is_err());
                ctx.exports
                    .insert("root".into(), ctx.root.display().to_string());
                Ok(Arc::new(1u32) as Instance)
            })
            .requires(&["a"]),
        );
        let mut e = env();
        e.disabled.insert("a.disabled".into());
        let done = r.init(&e, &[]).unwrap();
        let recs = done.records();
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].status, Status::Failed(Error::unknown("boom")));
        assert!(matches!(recs[1].status, Status::Skipped(_)));
        assert_eq!(recs[2].status, Status::Skipped("disabled in config".into()));
        assert_eq!(recs[3].status, Status::Ok);
        assert_eq!(recs[3].exports["root"], "/tmp/r/b.uses");
        assert_eq!(*done.get::<u32>("b", "uses").unwrap(), 1);
        let (_, msg) = status_error(&recs[1].status).unwrap();
        assert!(msg.ends_with("skip plugin"));
    }

    #[test]
    fn required_plugin_failure_is_fatal() {
        let mut r = Registry::new();
        r.register(Registration::new("a", "x", |_| {
            Err(InitError::Failed(Error::unknown("boom")))
        }));
        assert!(r.init(&env(), &["a.x".to_string()]).is_err());
    }
}
