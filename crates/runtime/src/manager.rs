//! The task manager (`io.containerd.runtime.v2 task`): creates bundles,
//! starts shims, keeps the list of live tasks per namespace, watches each
//! shim's socket so a dead shim is cleaned up (`shim delete`, exit and delete
//! events), and reconnects to running shims after a daemon restart.

use crate::bundle::Bundle;
use crate::events::{Event, EventSink};
use crate::shim::{self, CreateOpts, Shim, ShimEnv};
use crate::{Any, Exit};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use stevedore_types::{Error, ErrorKind, Result};

/// The task manager's configuration.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// `<daemon state>/io.containerd.runtime.v2.task`.
    pub state: PathBuf,
    /// `<daemon root>/io.containerd.runtime.v2.task`.
    pub root: PathBuf,
    pub env: ShimEnv,
    /// Runtime name -> shim binary (a path, or a name looked up on PATH and
    /// next to the daemon), overriding name resolution.
    pub shims: HashMap<String, PathBuf>,
}

/// Everything needed to create a task.
#[derive(Debug, Clone, Default)]
pub struct TaskSpec {
    /// The OCI runtime spec as JSON.
    pub spec: Vec<u8>,
    /// Runtime name, e.g. `io.containerd.runc.v2`.
    pub runtime: String,
    /// Runtime options from the container record.
    pub runtime_options: Option<Any>,
    pub create: CreateOpts,
}

/// Builds the events the manager itself publishes (exit/delete after a shim
/// died), so this crate stays free of the event message types.
pub trait ExitEvents: Send + Sync {
    /// `/tasks/exit` and `/tasks/delete` for task `id` that ended with `exit`.
    fn shim_died(&self, namespace: &str, id: &str, exit: &Exit) -> Vec<Event>;
}

type Key = (String, String);

/// Live tasks and the shims that run them.
pub struct TaskManager {
    cfg: ManagerConfig,
    tasks: Mutex<HashMap<Key, Arc<Shim>>>,
    sink: EventSink,
    exits: Arc<dyn ExitEvents>,
    me: Weak<TaskManager>,
}

impl TaskManager {
    /// A manager; call [`TaskManager::recover`] once to reconnect to shims.
    pub fn new(
        cfg: ManagerConfig,
        sink: EventSink,
        exits: Arc<dyn ExitEvents>,
    ) -> Arc<TaskManager> {
        Arc::new_cyclic(|me| TaskManager {
            cfg,
            tasks: Mutex::new(HashMap::new()),
            sink,
            exits,
            me: me.clone(),
        })
    }

    fn binary(&self, runtime: &str) -> Result<PathBuf> {
        if let Some(p) = self.cfg.shims.get(runtime) {
            if p.components().count() > 1 {
                return Ok(p.clone());
            }
            // a bare binary name: look it up like a runtime's own shim
            let name = p.display().to_string();
            return shim::find_binary(&name, &self.cfg.env.publish_binary).ok_or_else(|| {
                Error::not_found(format!(
                    "runtime {runtime:?}: shim binary {name} (from the config's shims) not found on PATH or next to stevedored"
                ))
            });
        }
        shim::resolve_binary(runtime, &self.cfg.env.publish_binary)
    }

    /// Run the runtime's shim with `-info` (containerd 2.x's `PluginInfo`
    /// for the runtime plugin): `options` (a protobuf `Any`, possibly
    /// empty) on its stdin, the encoded `containerd.types.RuntimeInfo` it
    /// prints returned as is.
    pub async fn runtime_info(&self, runtime: &str, options: Vec<u8>) -> Result<Vec<u8>> {
        use tokio::io::AsyncWriteExt;
        let binary = self
            .binary(runtime)
            .map_err(|e| e.context("failed to resolve runtime path"))?;
        let mut child = tokio::process::Command::new(&binary)
            .arg("-info")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::from(e).context(format!("failed to run [{} -info]", binary.display()))
            })?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // a shim that exits without reading its stdin answers through its status
        let _ = stdin.write_all(&options).await;
        drop(stdin);
        let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
            .await
            .map_err(|_| {
                Error::unavailable(format!("{} -info: no answer within 30s", binary.display()))
            })?
            .map_err(|e| Error::from(e).context(format!("{} -info", binary.display())))?;
        if !out.status.success() {
            // Go's wording: `exit status N` / `signal: ...`
            let status = match out.status.code() {
                Some(c) => format!("exit status {c}"),
                None => out.status.to_string(),
            };
            return Err(Error::unknown(format!(
                "failed to run [{} -info]: {status} (stderr: {:?})",
                binary.display(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            )));
        }
        Ok(out.stdout)
    }

    fn key(ns: &str, id: &str) -> Key {
        (ns.to_string(), id.to_string())
    }

    /// Create a task: bundle, shim start, Create in the shim. Returns the shim
    /// and the init pid. On failure nothing is left behind.
    pub async fn create(&self, namespace: &str, id: &str, t: TaskSpec) -> Result<(Arc<Shim>, u32)> {
        if self
            .tasks
            .lock()
            .unwrap()
            .contains_key(&Self::key(namespace, id))
        {
            return Err(Error::already_exists(format!(
                "task {id:?}: already exists"
            )));
        }
        let binary = self.binary(&t.runtime)?;
        let (state, root, ns, i, spec) = (
            self.cfg.state.clone(),
            self.cfg.root.clone(),
            namespace.to_string(),
            id.to_string(),
            t.spec.clone(),
        );
        let bundle =
            tokio::task::spawn_blocking(move || Bundle::create(&state, &root, &ns, &i, &spec))
                .await
                .map_err(|e| Error::internal(format!("create bundle: {e}")))??;
        tracing::debug!(id, "bundle written");
        crate::shimlog::open(&bundle);
        // the binary is recorded before the shim starts: a crash right after
        // the start must leave a bundle recovery can clean the shim up with
        // (a bundle without it is removed as one no shim was started for)
        if let Err(e) = bundle.write("shim-binary-path", &binary.display().to_string()) {
            let _ = bundle.delete();
            return Err(e);
        }
        let opts = t.create.options.clone().or(t.runtime_options.clone());
        let address = match shim::start(&binary, &bundle, &self.cfg.env, opts.as_ref()).await {
            Ok(a) => a,
            Err(e) => {
                let _ = bundle.delete();
                return Err(e);
            }
        };
        tracing::debug!(id, address, "shim started");
        let shim = async {
            if bundle.read("address").is_err() {
                bundle.write("address", &address)?;
            }
            Shim::connect(bundle.clone(), binary.clone(), &address).await
        }
        .await;
        let shim = match shim {
            Ok(s) => Arc::new(s),
            Err(e) => {
                let _ = shim::delete(&binary, &bundle, &self.cfg.env).await;
                let _ = bundle.delete();
                return Err(e);
            }
        };
        tracing::debug!(id, "shim connected");
        let mut create = t.create.clone();
        create.options = opts;
        match shim.create(&create).await {
            Ok(pid) => {
                tracing::debug!(id, pid, "shim created the task");
                self.tasks
                    .lock()
                    .unwrap()
                    .insert(Self::key(namespace, id), shim.clone());
                self.watch(shim.clone());
                Ok((shim, pid))
            }
            Err(e) => {
                let _ = shim.shutdown().await;
                let _ = shim::delete(&binary, &bundle, &self.cfg.env).await;
                let _ = bundle.delete();
                Err(e)
            }
        }
    }

    /// The task `id`.
    pub fn get(&self, namespace: &str, id: &str) -> Result<Arc<Shim>> {
        self.tasks
            .lock()
            .unwrap()
            .get(&Self::key(namespace, id))
            .cloned()
            .ok_or_else(|| Error::not_found(format!("task {id:?}: not found")))
    }

    /// Every task of every namespace (one shim each), by namespace and id.
    pub fn all(&self) -> Vec<Arc<Shim>> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The tasks of a namespace, by id.
    pub fn list(&self, namespace: &str) -> Vec<Arc<Shim>> {
        let mut v: Vec<Arc<Shim>> = self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|((ns, _), _)| ns == namespace)
            .map(|(_, s)| s.clone())
            .collect();
        v.sort_by(|a, b| a.id().cmp(b.id()));
        v
    }

    /// Delete the task: Delete in the shim, shut it down, remove the bundle.
    pub async fn delete(&self, namespace: &str, id: &str) -> Result<Exit> {
        let shim = self.get(namespace, id)?;
        let exit = match shim.delete_process("").await {
            Ok(e) => Some(e),
            Err(e) if e.kind == ErrorKind::Unavailable || e.kind == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        tracing::debug!(id, "shim deleted the task");
        self.tasks.lock().unwrap().remove(&Self::key(namespace, id));
        if let Err(e) = shim.shutdown().await {
            tracing::warn!(id, namespace, error = %e, "shim shutdown failed");
        }
        tracing::debug!(id, "shim shut down");
        let exit = match exit {
            Some(e) => e,
            None => shim::delete(&shim.binary, &shim.bundle, &self.cfg.env).await?,
        };
        let b = shim.bundle.clone();
        tokio::task::spawn_blocking(move || b.delete())
            .await
            .map_err(|e| Error::internal(format!("delete bundle: {e}")))??;
        Ok(exit)
    }

    /// Watch a shim's socket on a second connection: when it closes while the
    /// task is still listed, the shim died: clean up after it.
    fn watch(&self, shim: Arc<Shim>) {
        let me = self.me.clone();
        let path = shim.address.trim_start_matches("unix://").to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            if let Ok(mut s) = tokio::net::UnixStream::connect(&path).await {
                let mut buf = [0u8; 64];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
            if let Some(m) = me.upgrade() {
                m.shim_gone(&shim).await;
            }
        });
    }

    async fn shim_gone(&self, shim: &Arc<Shim>) {
        let key = Self::key(shim.namespace(), shim.id());
        let listed = {
            let mut tasks = self.tasks.lock().unwrap();
            match tasks.get(&key) {
                Some(s) if Arc::ptr_eq(s, shim) => {
                    tasks.remove(&key);
                    true
                }
                _ => false,
            }
        };
        if !listed {
            return;
        }
        tracing::warn!(
            id = shim.id(),
            namespace = shim.namespace(),
            "cleaning up after shim disconnected"
        );
        self.cleanup_dead(&shim.binary, &shim.bundle, true).await;
    }

    async fn cleanup_dead(&self, binary: &std::path::Path, bundle: &Bundle, publish: bool) {
        let exit = match shim::delete(binary, bundle, &self.cfg.env).await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(id = bundle.id, error = %e, "shim delete after shim death failed");
                Exit {
                    pid: 0,
                    status: 255,
                    exited_at: Some(SystemTime::now()),
                }
            }
        };
        let b = bundle.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || b.delete()).await {
            tracing::warn!(id = bundle.id, error = %e, "removing bundle failed");
        }
        if publish {
            for ev in self.exits.shim_died(&bundle.namespace, &bundle.id, &exit) {
                if let Err(e) = (self.sink)(ev) {
                    tracing::warn!(error = %e, "dropping event");
                }
            }
        }
    }

    /// After a daemon restart: reconnect to the shims of every bundle under
    /// the state dir; clean up bundles whose shim is gone, and those `keep`
    /// rejects (their container record is gone).
    pub async fn recover(&self, keep: impl Fn(&str, &str) -> bool) -> Result<usize> {
        let mut found = Vec::new();
        let rd = match std::fs::read_dir(&self.cfg.state) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => {
                return Err(Error::from(e).context(format!("read {}", self.cfg.state.display())))
            }
        };
        for ns in rd.flatten() {
            let ns_name = ns.file_name().to_string_lossy().to_string();
            let Ok(ids) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            for id in ids.flatten() {
                let id = id.file_name().to_string_lossy().to_string();
                found.push((ns_name.clone(), id));
            }
        }
        let mut n = 0;
        for (ns, id) in found {
            let bundle = Bundle::at(&self.cfg.state, &self.cfg.root, &ns, &id);
            let binary = match bundle.read("shim-binary-path") {
                Ok(b) => PathBuf::from(b),
                Err(_) => {
                    // the daemon died before it started a shim for it
                    tracing::warn!(id, namespace = ns, "bundle without shim binary: removing");
                    let _ = bundle.delete();
                    continue;
                }
            };
            if !keep(&ns, &id) {
                tracing::warn!(id, namespace = ns, "task has no container record: removing");
                if let Ok(addr) = bundle.read("address") {
                    if let Ok(s) = Shim::connect(bundle.clone(), binary.clone(), &addr).await {
                        // stop the task and let its shim exit, then clean up
                        let _ = s.kill("", 9, true).await;
                        let _ = tokio::time::timeout(Duration::from_secs(5), s.wait("")).await;
                        let _ = s.delete_process("").await;
                        let _ = s.shutdown().await;
                    }
                }
                self.cleanup_dead(&binary, &bundle, false).await;
                continue;
            }
            let connected = match bundle.read("address") {
                Ok(addr) => match Shim::connect(bundle.clone(), binary.clone(), &addr).await {
                    Ok(s) => match s.connect_info().await {
                        Ok((_, 0)) => {
                            // A shim without a task: the daemon died between
                            // starting the shim and the task's Create (as
                            // containerd's loadShims, containerd#6860). No
                            // task ever existed, so no exit to publish. The
                            // dead daemon's Create may still be queued on
                            // its connection: Shutdown waits for a Create
                            // under way (after it the shim refuses one), so
                            // a task it made shows here and is kept.
                            let _ = s.shutdown().await;
                            match s.connect_info().await {
                                Ok((_, pid)) if pid != 0 => {
                                    tracing::warn!(
                                        id,
                                        namespace = ns,
                                        "the task's create landed after the crash: keeping it"
                                    );
                                    Some(s)
                                }
                                _ => {
                                    tracing::warn!(
                                        id,
                                        namespace = ns,
                                        "shim has no task (a crash before its create): removing"
                                    );
                                    self.cleanup_dead(&binary, &bundle, false).await;
                                    continue;
                                }
                            }
                        }
                        Ok(_) => Some(s),
                        Err(e) => {
                            tracing::warn!(id, error = %e, "shim does not answer");
                            None
                        }
                    },
                    Err(e) => {
                        tracing::warn!(id, error = %e, "shim unreachable");
                        None
                    }
                },
                Err(_) => None,
            };
            match connected {
                Some(s) => {
                    let s = Arc::new(s);
                    crate::shimlog::reopen(&bundle);
                    self.tasks
                        .lock()
                        .unwrap()
                        .insert(Self::key(&ns, &id), s.clone());
                    self.watch(s);
                    n += 1;
                }
                None => {
                    self.tasks.lock().unwrap().remove(&Self::key(&ns, &id));
                    self.cleanup_dead(&binary, &bundle, true).await;
                }
            }
        }
        Ok(n)
    }
}
