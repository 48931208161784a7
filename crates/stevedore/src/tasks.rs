//! `stevedore containers ...` and `stevedore tasks ...`.

use crate::client::{rpc_error, Conn};
use crate::output::{labels_cell, print_json, Format, Table};
use anyhow::{bail, Result};
use clap::Subcommand;
use serde_json::json;
use stevedore_api::containerd::v1::types::Status as TaskStatus;
use stevedore_api::services::containers::{
    containers_client::ContainersClient, GetContainerRequest, ListContainersRequest,
};
use stevedore_api::services::tasks::{
    tasks_client::TasksClient, DeleteTaskRequest, KillRequest, ListPidsRequest, ListTasksRequest,
    PauseTaskRequest, ResumeTaskRequest,
};

#[derive(Subcommand)]
pub enum ContainersCmd {
    /// List containers (filters: id==..., image==..., labels.k==v, runtime.name==...).
    #[command(alias = "list")]
    Ls {
        /// Print only ids.
        #[arg(long, short = 'q')]
        quiet: bool,
        filters: Vec<String>,
    },
    /// Create a container (spec from the image and flags, snapshot prepared).
    Create(Box<crate::run::SpecArgs>),
    /// Show a container record, spec included, as JSON.
    Info { id: String },
    /// Remove containers (their task must be deleted first).
    #[command(alias = "remove", alias = "delete")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum TasksCmd {
    /// List tasks with pid and status.
    #[command(alias = "list")]
    Ls,
    /// List the processes of a task.
    Ps { id: String },
    /// Create and start the task of a created container (foreground unless -d).
    Start {
        id: String,
        #[arg(long, short = 'd')]
        detach: bool,
    },
    /// Run another process in a running task.
    Exec(crate::run::ExecArgs),
    /// Reconnect to a running task's stdio (tasks started with -d).
    Attach { id: String },
    /// Wait for a task to exit; exits with its status.
    Wait { id: String },
    /// Show a task's cgroup figures (memory, CPU, pids).
    Metrics { id: String },
    /// Signal a task (default SIGTERM).
    Kill {
        id: String,
        /// Signal number or name (TERM, KILL, INT, HUP, USR1, USR2).
        #[arg(long, short = 's', default_value = "TERM")]
        signal: String,
        /// Signal every process of the task.
        #[arg(long)]
        all: bool,
    },
    /// Freeze a task.
    Pause { id: String },
    /// Thaw a task.
    Resume { id: String },
    /// Delete stopped tasks, printing their exit status.
    #[command(alias = "delete", alias = "remove")]
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

fn signal_number(s: &str) -> Result<u32> {
    stevedore_runtime::signal::number(s).ok_or_else(|| {
        let names: Vec<&str> = stevedore_runtime::signal::NAMES
            .iter()
            .map(|(n, _)| *n)
            .collect();
        anyhow::anyhow!("unknown signal {s:?}: use a number or {}", names.join(", "))
    })
}

fn status_name(s: i32) -> &'static str {
    match TaskStatus::try_from(s).unwrap_or(TaskStatus::Unknown) {
        TaskStatus::Unknown => "UNKNOWN",
        TaskStatus::Created => "CREATED",
        TaskStatus::Running => "RUNNING",
        TaskStatus::Stopped => "STOPPED",
        TaskStatus::Paused => "PAUSED",
        TaskStatus::Pausing => "PAUSING",
    }
}

pub async fn containers(conn: &Conn, out: Format, cmd: ContainersCmd) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = ContainersClient::with_interceptor(ch, ns);
    match cmd {
        ContainersCmd::Ls { quiet, filters } => {
            let list = c
                .list(ListContainersRequest { filters })
                .await
                .map_err(|s| rpc_error("list containers", s))?
                .into_inner()
                .containers;
            if out == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| {
                        json!({"id": c.id, "image": c.image, "labels": c.labels,
                        "runtime": c.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default()})
                    })
                    .collect();
                print_json(&json!(v));
            } else if quiet {
                for c in list {
                    println!("{}", c.id);
                }
            } else {
                let mut t = Table::new(&["CONTAINER", "IMAGE", "RUNTIME", "LABELS"]);
                for c in list {
                    t.row(vec![
                        c.id.clone(),
                        if c.image.is_empty() {
                            "-".into()
                        } else {
                            c.image.clone()
                        },
                        c.runtime.map(|r| r.name).unwrap_or_default(),
                        labels_cell(&c.labels),
                    ]);
                }
                t.print();
            }
        }
        ContainersCmd::Create(a) => {
            crate::run::create_container(conn, &a).await?;
        }
        ContainersCmd::Info { id } => {
            let ct = c
                .get(GetContainerRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error(&format!("get container {id:?}"), s))?
                .into_inner()
                .container
                .unwrap_or_default();
            let spec: serde_json::Value = ct
                .spec
                .as_ref()
                .and_then(|a| serde_json::from_slice(&a.value).ok())
                .unwrap_or(serde_json::Value::Null);
            print_json(&json!({
                "ID": ct.id, "Labels": ct.labels, "Image": ct.image,
                "Runtime": {"Name": ct.runtime.as_ref().map(|r| r.name.clone()).unwrap_or_default()},
                "SnapshotKey": ct.snapshot_key, "Snapshotter": ct.snapshotter,
                "CreatedAt": ct.created_at.map(|t| t.to_string()),
                "UpdatedAt": ct.updated_at.map(|t| t.to_string()),
                "Spec": spec,
            }));
        }
        ContainersCmd::Rm { ids } => {
            let mut failed = false;
            for id in ids {
                // like ctr: the container's snapshot goes with it
                if let Err(e) = crate::run::remove_container(conn, &id).await {
                    eprintln!("{e:#}");
                    failed = true;
                }
            }
            if failed {
                bail!("some containers were not removed");
            }
        }
    }
    Ok(())
}

pub async fn tasks(conn: &Conn, out: Format, cmd: TasksCmd) -> Result<()> {
    let (ch, ns) = conn.svc()?;
    let mut c = TasksClient::with_interceptor(ch, ns);
    match cmd {
        TasksCmd::Ls => {
            let list = c
                .list(ListTasksRequest::default())
                .await
                .map_err(|s| rpc_error("list tasks", s))?
                .into_inner()
                .tasks;
            if out == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|t| json!({"id": t.id, "pid": t.pid, "status": status_name(t.status)}))
                    .collect();
                print_json(&json!(v));
            } else {
                let mut tb = Table::new(&["TASK", "PID", "STATUS"]);
                for t in list {
                    tb.row(vec![
                        t.id.clone(),
                        t.pid.to_string(),
                        status_name(t.status).into(),
                    ]);
                }
                tb.print();
            }
        }
        TasksCmd::Ps { id } => {
            let procs = c
                .list_pids(ListPidsRequest {
                    container_id: id.clone(),
                })
                .await
                .map_err(|s| rpc_error(&format!("list processes of task {id:?}"), s))?
                .into_inner()
                .processes;
            if out == Format::Json {
                print_json(&json!(procs.iter().map(|p| p.pid).collect::<Vec<_>>()));
            } else {
                let mut tb = Table::new(&["PID"]);
                for p in procs {
                    tb.row(vec![p.pid.to_string()]);
                }
                tb.print();
            }
        }
        TasksCmd::Start { id, detach } => {
            let code = crate::run::start(conn, &id, detach).await?;
            crate::exit_with(code)?;
        }
        TasksCmd::Exec(a) => {
            let code = crate::run::exec(conn, a).await?;
            crate::exit_with(code)?;
        }
        TasksCmd::Attach { id } => {
            let code = crate::run::attach(conn, &id).await?;
            crate::exit_with(code)?;
        }
        TasksCmd::Wait { id } => {
            let code = crate::run::wait(conn, &id).await?;
            println!("{id}: exit status {code}");
            crate::exit_with(code)?;
        }
        TasksCmd::Metrics { id } => crate::run::metrics(conn, out, &id).await?,
        TasksCmd::Kill { id, signal, all } => {
            let signal = signal_number(&signal)?;
            c.kill(KillRequest {
                container_id: id.clone(),
                exec_id: String::new(),
                signal,
                all,
            })
            .await
            .map_err(|s| rpc_error(&format!("kill task {id:?}"), s))?;
        }
        TasksCmd::Pause { id } => {
            c.pause(PauseTaskRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|s| rpc_error(&format!("pause task {id:?}"), s))?;
        }
        TasksCmd::Resume { id } => {
            c.resume(ResumeTaskRequest {
                container_id: id.clone(),
            })
            .await
            .map_err(|s| rpc_error(&format!("resume task {id:?}"), s))?;
        }
        TasksCmd::Rm { ids } => {
            let mut failed = false;
            for id in ids {
                match c
                    .delete(DeleteTaskRequest {
                        container_id: id.clone(),
                    })
                    .await
                {
                    Ok(r) => {
                        crate::run::remove_fifos(&conn.namespace, &id);
                        println!("{id}: exit status {}", r.into_inner().exit_status)
                    }
                    Err(s) => {
                        eprintln!("{:#}", rpc_error(&format!("delete task {id:?}"), s));
                        failed = true;
                    }
                }
            }
            if failed {
                bail!("some tasks were not deleted (a running task must be killed first)");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals_by_number_and_name() {
        assert_eq!(signal_number("9").unwrap(), 9);
        assert_eq!(signal_number("SIGKILL").unwrap(), 9);
        assert_eq!(signal_number("term").unwrap(), 15);
        assert!(signal_number("BOGUS").is_err());
    }
}
