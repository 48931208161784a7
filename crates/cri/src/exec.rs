//! Processes run in a running container: ExecSync (output collected, with a
//! timeout that kills the process and answers DeadlineExceeded, which
//! kubelet reads as a probe timeout), and the exec sessions of the
//! streaming server.

use crate::client::context;
use crate::core::Cri;
use crate::io::Fifos;
use crate::store::Container;
use std::io::Read;
use std::time::Duration;
use stevedore_api::cri;
use stevedore_api::services::containers::GetContainerRequest;
use stevedore_api::services::tasks::{
    DeleteProcessRequest, ExecProcessRequest, KillRequest, StartRequest, WaitRequest,
};
use tonic::Status;

pub const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The most output ExecSync keeps per stream (the gRPC message limit).
const MAX_EXEC_SYNC_OUTPUT: usize = 8 << 20;

/// An exec process created (not yet started) in a container.
pub struct Exec {
    pub container_id: String,
    pub exec_id: String,
    pub fifos: Fifos,
    /// Turns true once the process is started (a terminal can be resized
    /// only then, so a client's first size waits for it).
    pub started: tokio::sync::watch::Sender<bool>,
}

impl Cri {
    /// The container's process spec with `cmd` and `tty`.
    async fn exec_spec(&self, c: &Container, cmd: &[String], tty: bool) -> Result<Vec<u8>, Status> {
        let rec = self
            .ctrd
            .containers()
            .get(GetContainerRequest {
                id: c.meta.id.clone(),
            })
            .await
            .map_err(|s| context(s, &format!("get container {:?}", c.meta.id)))?
            .into_inner()
            .container
            .ok_or_else(|| Status::internal("empty container record"))?;
        let spec = rec
            .spec
            .ok_or_else(|| Status::internal(format!("container {:?} has no spec", c.meta.id)))?;
        let mut v: serde_json::Value = serde_json::from_slice(&spec.value)
            .map_err(|e| Status::internal(format!("container spec: {e}")))?;
        let mut p = v["process"].take();
        if !p.is_object() {
            return Err(Status::internal("container spec has no process"));
        }
        p["args"] = serde_json::json!(cmd);
        p["terminal"] = serde_json::json!(tty);
        if tty {
            // containerd's exec adds TERM=xterm for a terminal (oci.WithEnv:
            // replacing a TERM the container has)
            let mut env: Vec<serde_json::Value> = p["env"].as_array().cloned().unwrap_or_default();
            env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with("TERM=")));
            env.push(serde_json::json!("TERM=xterm"));
            p["env"] = serde_json::json!(env);
        }
        if let Some(o) = p.as_object_mut() {
            o.remove("consoleSize");
        }
        serde_json::to_vec(&p).map_err(|e| Status::internal(e.to_string()))
    }

    /// Create an exec process with FIFOs (started by the caller).
    pub async fn create_exec(
        &self,
        container_id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
    ) -> Result<Exec, Status> {
        if cmd.is_empty() {
            return Err(Status::invalid_argument("cmd must not be empty"));
        }
        let c = self.store.running_container(container_id)?;
        let spec = self.exec_spec(&c, cmd, tty).await?;
        let exec_id = crate::store::generate_id();
        let dir = self
            .container_state_dir(&c.meta.id)
            .join("io")
            .join(format!("exec-{}", &exec_id[..16]));
        let fifos = Fifos::create(&dir, &exec_id[..16], stdin, tty)
            .map_err(|e| Status::internal(format!("failed to create exec io: {e}")))?;
        let r = self
            .ctrd
            .tasks()
            .exec(ExecProcessRequest {
                container_id: c.meta.id.clone(),
                stdin: fifos.stdin.clone(),
                stdout: fifos.stdout.clone(),
                stderr: fifos.stderr.clone(),
                terminal: tty,
                spec: Some(prost_types::Any {
                    type_url: PROCESS_TYPE.into(),
                    value: spec,
                }),
                exec_id: exec_id.clone(),
            })
            .await;
        if let Err(s) = r {
            fifos.remove();
            return Err(context(
                s,
                &format!("failed to exec in container {:?}", c.meta.id),
            ));
        }
        Ok(Exec {
            container_id: c.meta.id.clone(),
            exec_id,
            fifos,
            started: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Start an exec and wait for it (up to `timeout`, then SIGKILL and
    /// DeadlineExceeded); its exit code. The process is deleted after.
    pub async fn run_exec(&self, e: &Exec, timeout: Option<Duration>) -> Result<u32, Status> {
        let mut tasks = self.ctrd.tasks();
        let mut wait = {
            let mut t = tasks.clone();
            let (cid, eid) = (e.container_id.clone(), e.exec_id.clone());
            tokio::spawn(async move {
                t.wait(WaitRequest {
                    container_id: cid,
                    exec_id: eid,
                })
                .await
            })
        };
        if let Err(s) = tasks
            .start(StartRequest {
                container_id: e.container_id.clone(),
                exec_id: e.exec_id.clone(),
            })
            .await
        {
            wait.abort();
            self.delete_exec(e).await;
            return Err(context(s, "failed to start exec"));
        }
        e.started.send_replace(true);
        let r = match timeout {
            Some(t) => match tokio::time::timeout(t, &mut wait).await {
                Ok(r) => r,
                Err(_) => {
                    let killed = tasks
                        .kill(KillRequest {
                            container_id: e.container_id.clone(),
                            exec_id: e.exec_id.clone(),
                            signal: 9,
                            all: false,
                        })
                        .await;
                    // the process is gone when the caller hears of the
                    // timeout (containerd waits for the exit too)
                    if killed.is_ok() {
                        let _ = tokio::time::timeout(Duration::from_secs(10), &mut wait).await;
                    }
                    wait.abort();
                    self.delete_exec(e).await;
                    return Err(Status::deadline_exceeded(format!(
                        "timeout {}s exceeded: context deadline exceeded",
                        t.as_secs()
                    )));
                }
            },
            None => wait.await,
        };
        let code = match r {
            Ok(Ok(w)) => w.into_inner().exit_status,
            Ok(Err(s)) => {
                self.delete_exec(e).await;
                return Err(context(s, "failed to wait for exec"));
            }
            Err(j) => {
                self.delete_exec(e).await;
                return Err(Status::internal(j.to_string()));
            }
        };
        Ok(code)
    }

    pub async fn delete_exec(&self, e: &Exec) {
        let _ = self
            .ctrd
            .tasks()
            .delete_process(DeleteProcessRequest {
                container_id: e.container_id.clone(),
                exec_id: e.exec_id.clone(),
            })
            .await;
        e.fifos.remove();
    }

    pub async fn exec_sync(
        &self,
        req: cri::ExecSyncRequest,
    ) -> Result<cri::ExecSyncResponse, Status> {
        let e = self
            .create_exec(&req.container_id, &req.cmd, false, false)
            .await?;
        let out = collect(&e.fifos.stdout);
        let err = collect(&e.fifos.stderr);
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout as u64));
        let code = self.run_exec(&e, timeout).await;
        let code = match code {
            Ok(c) => c,
            Err(s) => {
                e.fifos.remove();
                return Err(s);
            }
        };
        let stdout = join(out).await;
        let stderr = join(err).await;
        self.delete_exec(&e).await;
        Ok(cri::ExecSyncResponse {
            stdout,
            stderr,
            exit_code: code as i32,
        })
    }
}

fn collect(path: &str) -> Option<std::thread::JoinHandle<Vec<u8>>> {
    if path.is_empty() {
        return None;
    }
    let path = path.to_string();
    std::thread::Builder::new()
        .name("cri-exec-out".into())
        .spawn(move || {
            let mut out = Vec::new();
            let Ok(f) = std::fs::File::open(&path) else {
                return out;
            };
            let mut buf = [0u8; 16 * 1024];
            let mut f = f;
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let room = MAX_EXEC_SYNC_OUTPUT.saturating_sub(out.len());
                        out.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
            out
        })
        .ok()
}

async fn join(h: Option<std::thread::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    match h {
        Some(h) => {
            let r = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::task::spawn_blocking(move || h.join().unwrap_or_default()),
            )
            .await;
            match r {
                Ok(Ok(v)) => v,
                _ => Vec::new(),
            }
        }
        None => Vec::new(),
    }
}
