//! The `podsandbox` sandbox controller (plugin
//! `io.containerd.podsandbox.controller.v1 podsandbox`), containerd 2.x's
//! default controller, over the same task manager, shims and runc as the
//! Tasks service.
//!
//! A sandbox is what containerd's podsandbox makes of it: a container record
//! with the sandbox's id (stevedore marks it as the sandbox's own by naming
//! the sandbox in the record's `sandbox` field, containerd 2.x's
//! `Container.sandbox`) and a task of that container, without stdio. The
//! spec is the sandbox's (the Create request's sandbox, or its Store
//! record's), with `process.terminal` off (a sandbox has no console), the
//! request's network namespace and annotations added; the root filesystem
//! is the request's `rootfs` mounts, or the spec's `root.path` as runc
//! reads it when there are none, as for a task.
//!
//! Lifecycle: Create writes the record (`/containers/create`) and creates
//! the task (the shim runs `runc create`; `/tasks/create`); Start starts it
//! (creating it first when the sandbox has a Store record but no Create,
//! which is what containerd 2.1's `ctr sandboxes run` sends); Stop kills the
//! process with SIGKILL (containerd's podsandbox ignores the timeout too)
//! and waits for it; the stopped task stays, so Status and Wait can answer
//! its exit, until Shutdown deletes task, shim, bundle and record.
//!
//! Crash safety: every step is undone when a later one fails, and what
//! stays is visible to restart recovery: the runtime plugin reconnects to a
//! sandbox's shim because its container record exists (and removes a task
//! whose record is gone), and this controller keeps no state the record and
//! the task do not hold, except the exit of a task that is already deleted.

use crate::containers::{publish_create, publish_delete};
use crate::exchange::Exchange;
use crate::sandbox::controller::{
    CreateRequest, SandboxController, SandboxExitStatus, SandboxStatus, StartedSandbox,
};
use crate::tasks::RUNC_V2;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stevedore_api::types::Metric;
use stevedore_metadata::containers::{AnyBytes, Container, Runtime};
use stevedore_metadata::sandboxes::Sandbox;
use stevedore_metadata::Db;
use stevedore_runtime::{Any, CreateOpts, Shim, Status, TaskManager, TaskSpec};
use stevedore_types::{identifiers, Error, ErrorKind, Platform, Result};

/// The controller's name, in `sandboxer` and the plugin id.
pub const NAME: &str = "podsandbox";

const SIGKILL: u32 = 9;
const READY: &str = "SANDBOX_READY";
const NOT_READY: &str = "SANDBOX_NOTREADY";
const UNKNOWN: &str = "SANDBOX_UNKNOWN";

type Key = (String, String);

/// The podsandbox controller.
pub struct PodSandbox {
    db: Arc<Db>,
    tasks: Arc<TaskManager>,
    exchange: Exchange,
    /// Serialises the steps that create or remove records and tasks, so a
    /// Start racing a Shutdown cannot leave half a sandbox.
    lifecycle: tokio::sync::Mutex<()>,
    /// Exits of sandboxes whose task is already deleted.
    exits: Mutex<HashMap<Key, SandboxExitStatus>>,
}

async fn db_call<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
}

fn key(ns: &str, id: &str) -> Key {
    (ns.to_string(), id.to_string())
}

/// The sandbox's spec as the task runs it.
fn task_spec(
    id: &str,
    raw: &[u8],
    netns: &str,
    annotations: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    use serde_json::{Map, Value};
    let bad = |why: String| Error::invalid(format!("sandbox {id:?}: spec: {why}"));
    let mut spec: Value =
        serde_json::from_slice(raw).map_err(|e| bad(format!("not an OCI runtime spec: {e}")))?;
    let obj = spec
        .as_object_mut()
        .ok_or_else(|| bad("not an OCI runtime spec: not a JSON object".into()))?;
    if let Some(p) = obj.get_mut("process").and_then(Value::as_object_mut) {
        p.insert("terminal".into(), Value::Bool(false));
    }
    if !netns.is_empty() {
        if !std::path::Path::new(netns).is_absolute() {
            return Err(Error::invalid(format!(
                "sandbox {id:?}: netns path {netns:?} must be absolute"
            )));
        }
        let linux = obj
            .entry("linux")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| bad("linux is not an object".into()))?;
        let nss = linux
            .entry("namespaces")
            .or_insert_with(|| Value::Array(Vec::new()))
            .as_array_mut()
            .ok_or_else(|| bad("linux.namespaces is not a list".into()))?;
        nss.retain(|n| n.get("type").and_then(Value::as_str) != Some("network"));
        nss.push(serde_json::json!({"type": "network", "path": netns}));
    }
    if !annotations.is_empty() {
        let a = obj
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()))
            .as_object_mut()
            .ok_or_else(|| bad("annotations is not an object".into()))?;
        for (k, v) in annotations {
            a.insert(k.clone(), Value::String(v.clone()));
        }
    }
    serde_json::to_vec(&spec).map_err(|e| Error::internal(format!("sandbox {id:?}: spec: {e}")))
}

fn rt_any(a: prost_types::Any) -> Any {
    Any {
        type_url: a.type_url,
        value: a.value,
    }
}

impl PodSandbox {
    pub fn new(db: Arc<Db>, tasks: Arc<TaskManager>, exchange: Exchange) -> PodSandbox {
        PodSandbox {
            db,
            tasks,
            exchange,
            lifecycle: tokio::sync::Mutex::new(()),
            exits: Mutex::new(HashMap::new()),
        }
    }

    /// The sandbox's own container record, if the controller made one.
    async fn container(&self, ns: &str, id: &str) -> Result<Option<Container>> {
        let (db, n, i) = (self.db.clone(), ns.to_string(), id.to_string());
        match db_call(move || db.get_container(&n, &i)).await {
            Ok(c) if c.sandbox_id == id => Ok(Some(c)),
            Ok(_) => Ok(None),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The sandbox's Store record, if any.
    async fn stored(&self, ns: &str, id: &str) -> Result<Option<Sandbox>> {
        let (db, n, i) = (self.db.clone(), ns.to_string(), id.to_string());
        match db_call(move || db.get_sandbox(&n, &i)).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn task(&self, ns: &str, id: &str) -> Option<Arc<Shim>> {
        self.tasks.get(ns, id).ok()
    }

    async fn delete_record(&self, ns: &str, id: &str) -> Result<()> {
        let (db, n, i) = (self.db.clone(), ns.to_string(), id.to_string());
        match db_call(move || db.delete_container(&n, &i)).await {
            Ok(()) => {
                publish_delete(&self.exchange, ns, id.to_string());
                Ok(())
            }
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Record and task; on failure neither stays. Holds `lifecycle`.
    async fn create_locked(&self, ns: &str, req: CreateRequest) -> Result<Container> {
        let sb = req.sandbox;
        let id = sb.id.clone();
        identifiers::validate(&id).map_err(|e| e.context("invalid sandbox ID"))?;
        let spec = sb.spec.ok_or_else(|| {
            Error::precondition(format!(
                "create sandbox {id:?}: the sandbox has no spec (the {NAME} controller runs the sandbox's OCI spec)"
            ))
        })?;
        let value = task_spec(&id, &spec.value, &req.netns_path, &req.annotations)?;
        let runtime = if sb.runtime.name.is_empty() {
            RUNC_V2.to_string()
        } else {
            sb.runtime.name.clone()
        };
        let record = Container {
            id: id.clone(),
            runtime: Runtime {
                name: runtime.clone(),
                options: sb.runtime.options.clone(),
            },
            spec: Some(AnyBytes {
                type_url: spec.type_url,
                value: value.clone(),
            }),
            sandbox_id: id.clone(),
            ..Default::default()
        };
        let (db, n) = (self.db.clone(), ns.to_string());
        let created = db_call(move || db.create_container(&n, record))
            .await
            .map_err(|e| e.context(format!("create sandbox {id:?}")))?;
        publish_create(&self.exchange, ns, &created);
        let t = TaskSpec {
            spec: value,
            runtime,
            runtime_options: sb.runtime.options.map(|a| Any {
                type_url: a.type_url,
                value: a.value,
            }),
            create: CreateOpts {
                rootfs: req.rootfs,
                options: req.options.map(rt_any),
                ..Default::default()
            },
        };
        if let Err(e) = self.tasks.create(ns, &id, t).await {
            if let Err(d) = self.delete_record(ns, &id).await {
                tracing::warn!(id, namespace = ns, error = %d, "removing the record of a sandbox that failed to create");
            }
            return Err(e.context(format!("create sandbox {id:?}")));
        }
        self.exits.lock().unwrap().remove(&key(ns, &id));
        Ok(created)
    }

    /// Kill the sandbox's process and wait for it; an already stopped one
    /// answers its exit.
    async fn kill_and_wait(&self, ns: &str, id: &str, shim: &Shim) -> Result<SandboxExitStatus> {
        let st = shim.state("").await?;
        if st.status != Status::Stopped {
            match shim.kill("", SIGKILL, true).await {
                Ok(()) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e.context(format!("stop sandbox {id:?}"))),
            }
        }
        let exit = tokio::time::timeout(Duration::from_secs(30), shim.wait(""))
            .await
            .map_err(|_| {
                Error::unavailable(format!(
                    "stop sandbox {id:?}: its process did not exit within 30s of SIGKILL"
                ))
            })??;
        let exit = SandboxExitStatus {
            exit_status: exit.status,
            exited_at: exit.exited_at,
        };
        self.exits.lock().unwrap().insert(key(ns, id), exit);
        Ok(exit)
    }
}

#[tonic::async_trait]
impl SandboxController for PodSandbox {
    async fn create(&self, ns: &str, req: CreateRequest) -> Result<()> {
        let _l = self.lifecycle.lock().await;
        self.create_locked(ns, req).await.map(|_| ())
    }

    async fn start(&self, ns: &str, id: &str) -> Result<StartedSandbox> {
        let _l = self.lifecycle.lock().await;
        let mut created = false;
        let record = match self.container(ns, id).await? {
            Some(c) => c,
            None => {
                identifiers::validate(id).map_err(|e| e.context("invalid sandbox ID"))?;
                // containerd 2.1's client starts a stored sandbox without Create
                let sandbox = self.stored(ns, id).await?.ok_or_else(|| {
                    Error::not_found(format!(
                        "unable to find pod sandbox with id {id:?}: not found"
                    ))
                })?;
                let c = self
                    .create_locked(
                        ns,
                        CreateRequest {
                            sandbox,
                            ..Default::default()
                        },
                    )
                    .await?;
                created = true;
                c
            }
        };
        let shim = self.task(ns, id).ok_or_else(|| {
            Error::precondition(format!(
                "start sandbox {id:?}: its task is gone; shut the sandbox down and create it again"
            ))
        })?;
        let st = shim.state("").await?;
        if st.status != Status::Created {
            return Err(Error::precondition(format!(
                "start sandbox {id:?}: already started"
            )));
        }
        match shim.start("").await {
            Ok(pid) => Ok(StartedSandbox {
                pid,
                created_at: record.created_at,
                labels: [("oci_runtime_type".to_string(), record.runtime.name)].into(),
                created,
            }),
            Err(e) => {
                if created {
                    // undo what this call made, so Start can be retried
                    if let Err(d) = self.tasks.delete(ns, id).await {
                        tracing::warn!(id, namespace = ns, error = %d, "deleting the task of a sandbox that failed to start");
                    }
                    if let Err(d) = self.delete_record(ns, id).await {
                        tracing::warn!(id, namespace = ns, error = %d, "removing the record of a sandbox that failed to start");
                    }
                }
                Err(e.context(format!("start sandbox {id:?}")))
            }
        }
    }

    async fn platform(&self, _ns: &str, _id: &str) -> Result<Platform> {
        // containerd's podsandbox answers the host's platform for any id
        Ok(Platform::host())
    }

    async fn stop(&self, ns: &str, id: &str, _timeout: Duration) -> Result<()> {
        if self.container(ns, id).await?.is_none() {
            // a stored sandbox that never ran (or failed to) is stopped
            return match self.stored(ns, id).await? {
                Some(_) => Ok(()),
                None => Err(Error::not_found(format!("sandbox {id:?}: not found"))),
            };
        }
        if let Some(shim) = self.task(ns, id) {
            self.kill_and_wait(ns, id, &shim).await?;
        }
        Ok(())
    }

    async fn wait(&self, ns: &str, id: &str) -> Result<SandboxExitStatus> {
        if self.container(ns, id).await?.is_none() {
            return Err(Error::not_found(format!(
                "failed to get exit channel. {id:?}: not found"
            )));
        }
        if let Some(shim) = self.task(ns, id) {
            let exit = shim.wait("").await?;
            let exit = SandboxExitStatus {
                exit_status: exit.status,
                exited_at: exit.exited_at,
            };
            self.exits.lock().unwrap().insert(key(ns, id), exit);
            return Ok(exit);
        }
        self.exits
            .lock()
            .unwrap()
            .get(&key(ns, id))
            .copied()
            .ok_or_else(|| {
                Error::precondition(format!(
                    "wait sandbox {id:?}: its task is gone and its exit is unknown"
                ))
            })
    }

    async fn status(&self, ns: &str, id: &str, verbose: bool) -> Result<SandboxStatus> {
        let Some(c) = self.container(ns, id).await? else {
            return Err(Error::not_found(format!(
                "unable to find sandbox {id:?}: not found"
            )));
        };
        let mut s = SandboxStatus {
            created_at: Some(c.created_at),
            ..Default::default()
        };
        let mut task_status = "deleted";
        match self.task(ns, id) {
            Some(shim) => {
                let st = shim.state("").await?;
                // as containerd, no pid before Start (runc's init waits in create)
                if st.status != Status::Created {
                    s.pid = st.pid;
                }
                let state;
                (state, task_status) = match st.status {
                    Status::Created => (UNKNOWN, "created"),
                    Status::Running => (READY, "running"),
                    Status::Paused => (READY, "paused"),
                    Status::Pausing => (READY, "pausing"),
                    Status::Stopped => (NOT_READY, "stopped"),
                    Status::Unknown => (UNKNOWN, "unknown"),
                };
                s.state = state.into();
                if st.status == Status::Stopped {
                    s.exited_at = st.exited_at;
                }
            }
            None => {
                s.state = NOT_READY.into();
                s.exited_at = self
                    .exits
                    .lock()
                    .unwrap()
                    .get(&key(ns, id))
                    .and_then(|e| e.exited_at);
            }
        }
        if verbose {
            // the keys containerd's podsandbox puts in its verbose `info`
            let spec: serde_json::Value = c
                .spec
                .as_ref()
                .and_then(|a| serde_json::from_slice(&a.value).ok())
                .unwrap_or(serde_json::Value::Null);
            let info = serde_json::json!({
                "pid": s.pid,
                "status": task_status,
                "runtimeType": c.runtime.name,
                "runtimeSpec": spec,
            });
            s.info.insert("info".into(), info.to_string());
        }
        Ok(s)
    }

    async fn shutdown(&self, ns: &str, id: &str) -> Result<()> {
        let _l = self.lifecycle.lock().await;
        // containerd's podsandbox: shutting down an unknown sandbox succeeds
        if self.container(ns, id).await?.is_none() {
            return Ok(());
        }
        if let Some(shim) = self.task(ns, id) {
            match self.kill_and_wait(ns, id, &shim).await {
                Ok(_) => {}
                // a shim that went away is cleaned up by the task manager
                Err(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Unavailable) => {}
                Err(e) => return Err(e.context(format!("shutdown sandbox {id:?}"))),
            }
            match self.tasks.delete(ns, id).await {
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e.context(format!("shutdown sandbox {id:?}: delete task"))),
            }
        }
        self.delete_record(ns, id)
            .await
            .map_err(|e| e.context(format!("shutdown sandbox {id:?}")))?;
        self.exits.lock().unwrap().remove(&key(ns, id));
        Ok(())
    }

    async fn metrics(&self, ns: &str, id: &str) -> Result<Metric> {
        if self.container(ns, id).await?.is_none() {
            return Err(Error::not_found(format!("sandbox {id:?}: not found")));
        }
        let shim = self.task(ns, id).ok_or_else(|| {
            Error::precondition(format!("metrics of sandbox {id:?}: it has no task"))
        })?;
        let data = shim.stats().await?;
        Ok(Metric {
            timestamp: Some(SystemTime::now().into()),
            id: id.to_string(),
            data: data.map(|a| prost_types::Any {
                type_url: a.type_url,
                value: a.value,
            }),
        })
    }

    async fn update(&self, _ns: &str, _id: &str, _sb: Sandbox, _fields: &[String]) -> Result<()> {
        // containerd's podsandbox accepts and ignores updates; the record is
        // the Store's to update
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_spec_turns_the_terminal_off_and_joins_the_netns() {
        let raw = br#"{"process":{"terminal":true,"args":["sh"]},"linux":{"namespaces":[{"type":"pid"},{"type":"network"}]}}"#;
        let ann: HashMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let out = task_spec("sb", raw, "/var/run/netns/x", &ann).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(
            v["linux"]["namespaces"],
            serde_json::json!([{"type":"pid"},{"type":"network","path":"/var/run/netns/x"}])
        );
        assert_eq!(v["annotations"]["k"], "v");
    }

    #[test]
    fn task_spec_refuses_what_is_not_a_spec() {
        let e = task_spec("sb", b"[1]", "", &HashMap::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("sandbox \"sb\""), "{e}");
        let e = task_spec("sb", b"{}", "netns", &HashMap::new()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("must be absolute"), "{e}");
    }
}
