//! Containers and tasks through stevedored's gRPC API with Debian's
//! `containerd-shim-runc-v2` and with stevedore's own shim, both over runc, on a busybox rootfs bind mount; the
//! real `ctr` lists what the API created; a daemon SIGKILL keeps tasks.

use prost::Message;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stevedore_api::io::containerd::cgroups::v1::Metrics as CgroupMetrics;
use stevedore_api::services::containers::{
    container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
    DeleteContainerRequest, GetContainerRequest, ListContainersRequest,
};
use stevedore_api::services::events::{events_client::EventsClient, Envelope, SubscribeRequest};
use stevedore_api::services::tasks::{
    tasks_client::TasksClient, CheckpointTaskRequest, CreateTaskRequest, DeleteProcessRequest,
    DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest, ListPidsRequest,
    ListTasksRequest, MetricsRequest, PauseTaskRequest, ResizePtyRequest, ResumeTaskRequest,
    StartRequest, UpdateTaskRequest, WaitRequest,
};
use stevedore_api::types::Mount;
use stevedore_e2e::{require_tool, Daemon};
use stevedore_runtime::spec::default_spec;
use tonic::transport::Channel;
use tonic::Request;

const NS: &str = "stevedore-e2e";
/// Debian's containerd-shim-runc-v2.
const RUNC_SHIM: &str = "io.containerd.runc.v2";
/// stevedore's own shim (`containerd-shim-stevedore-v1`, found next to stevedored).
const STEVEDORE_SHIM: &str = "io.containerd.stevedore.v1";

use stevedore_e2e::busybox_rootfs;

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(stevedore_api::NAMESPACE_HEADER, NS.parse().unwrap());
    r
}

struct Env {
    runtime: &'static str,
    daemon: Daemon,
    rootfs: PathBuf,
    ch: Channel,
    suffix: String,
}

async fn env(runtime: &'static str) -> Env {
    if runtime == RUNC_SHIM {
        env_with_config(runtime, Some(stevedore_e2e::GO_SHIM_CONFIG)).await
    } else {
        env_with_config(runtime, None).await
    }
}

async fn env_with_config(runtime: &'static str, config: Option<&str>) -> Env {
    require_tool("containerd-shim-runc-v2", "containerd");
    require_tool("runc", "runc");
    let daemon = Daemon::start_with_config(config);
    let rootfs = busybox_rootfs(daemon.dir.path());
    let ch = daemon.channel().await;
    let suffix: String = daemon
        .dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    Env {
        runtime,
        daemon,
        rootfs,
        ch,
        suffix,
    }
}

/// A FIFO read to EOF on a thread (the shim opens it for writing).
fn fifo_reader(path: &Path) -> std::thread::JoinHandle<String> {
    stevedore_sys::mkfifo(path, 0o600).unwrap();
    let p = path.to_path_buf();
    std::thread::spawn(move || std::fs::read_to_string(p).unwrap_or_default())
}

impl Env {
    fn id(&self, name: &str) -> String {
        format!("{name}-{}", self.suffix)
    }

    async fn create_container(&self, id: &str, args: &[&str]) {
        let mut spec = default_spec(NS, id);
        spec.with_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        self.create_container_with(id, spec).await
    }

    async fn create_container_with(&self, id: &str, spec: stevedore_runtime::spec::Spec) {
        ContainersClient::new(self.ch.clone())
            .create(req(CreateContainerRequest {
                container: Some(Container {
                    id: id.into(),
                    image: "busybox-rootfs".into(),
                    runtime: Some(Runtime {
                        name: self.runtime.into(),
                        options: None,
                    }),
                    spec: Some(prost_types::Any {
                        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                        value: spec.to_json(),
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap();
    }

    /// Create container + task with stdout/stderr on a FIFO; returns the pid
    /// and the FIFO reader.
    async fn create_task(&self, id: &str, args: &[&str]) -> (u32, std::thread::JoinHandle<String>) {
        self.create_container(id, args).await;
        self.create_task_only(id).await
    }

    async fn create_task_only(&self, id: &str) -> (u32, std::thread::JoinHandle<String>) {
        let out = self.daemon.dir.path().join(format!("{id}.out"));
        let reader = fifo_reader(&out);
        let r = TasksClient::new(self.ch.clone())
            .create(req(CreateTaskRequest {
                container_id: id.into(),
                rootfs: vec![Mount {
                    r#type: "bind".into(),
                    source: self.rootfs.display().to_string(),
                    target: String::new(),
                    options: vec!["rbind".into(), "rw".into()],
                }],
                stdout: out.display().to_string(),
                stderr: out.display().to_string(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.container_id, id);
        assert!(r.pid > 0);
        (r.pid, reader)
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ch.clone())
    }

    async fn start(&self, id: &str, exec_id: &str) -> u32 {
        self.tasks()
            .start(req(StartRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .pid
    }

    async fn wait(&self, id: &str, exec_id: &str) -> u32 {
        self.tasks()
            .wait(req(WaitRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .exit_status
    }

    async fn delete(&self, id: &str) -> u32 {
        let r = self
            .tasks()
            .delete(req(DeleteTaskRequest {
                container_id: id.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        ContainersClient::new(self.ch.clone())
            .delete(req(DeleteContainerRequest { id: id.into() }))
            .await
            .unwrap();
        r.exit_status
    }

    async fn status(&self, id: &str) -> i32 {
        self.tasks()
            .get(req(GetRequest {
                container_id: id.into(),
                exec_id: String::new(),
            }))
            .await
            .unwrap()
            .into_inner()
            .process
            .unwrap()
            .status
    }

    async fn subscribe(&self) -> tonic::Streaming<Envelope> {
        EventsClient::new(self.ch.clone())
            .subscribe(SubscribeRequest {
                filters: vec![format!("namespace=={NS}")],
            })
            .await
            .unwrap()
            .into_inner()
    }
}

async fn expect_event(
    events: &mut tonic::Streaming<Envelope>,
    daemon: &Daemon,
    topic: &str,
    id: &str,
) -> Envelope {
    let fut = async {
        loop {
            let env = events.message().await.unwrap().expect("event stream open");
            let payload = env
                .event
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            if env.topic == topic && String::from_utf8_lossy(&payload).contains(id) {
                return env;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("no {topic} event for {id} within 20s\n{}", daemon.log()))
}

async fn task_prints_hi_and_exit_codes_propagate(runtime: &'static str) {
    let e = env(runtime).await;
    let mut events = e.subscribe().await;
    // the real `ctr events` decodes the shim's forwarded task events
    let ctr_events = e.daemon.watch(e.daemon.ctr_command(&["events"]));
    std::thread::sleep(Duration::from_millis(300));
    let id = e.id("echo");
    let (_, reader) = e.create_task(&id, &["/bin/echo", "hi"]).await;
    e.start(&id, "").await;
    assert_eq!(e.wait(&id, "").await, 0);
    assert_eq!(reader.join().unwrap(), "hi\n");
    assert_eq!(e.delete(&id).await, 0);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        expect_event(&mut events, &e.daemon, topic, &id).await;
    }
    expect_event(&mut events, &e.daemon, "/containers/delete", &id).await;
    // the payload decoded: ctr prints its fields
    ctr_events.expect_line(
        &["/tasks/exit", &id, NS, "exited_at"],
        Duration::from_secs(10),
    );

    let id = e.id("three");
    let (_, reader) = e.create_task(&id, &["/bin/sh", "-c", "exit 3"]).await;
    e.start(&id, "").await;
    assert_eq!(e.wait(&id, "").await, 3);
    reader.join().unwrap();
    assert_eq!(e.delete(&id).await, 3);
    let err = e
        .tasks()
        .get(req(GetRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

async fn running_task_supports_exec_pids_pause_metrics_and_kill(runtime: &'static str) {
    let e = env(runtime).await;
    let id = e.id("sleeper");
    let (pid, _reader) = e.create_task(&id, &["/bin/sleep", "60"]).await;
    assert_eq!(e.start(&id, "").await, pid);
    assert_eq!(e.status(&id).await, 2, "running");

    // the real ctr sees the container and the task
    let ls = e.daemon.ctr_ok(&["-n", NS, "containers", "ls"]);
    assert!(ls.contains(&id) && ls.contains(e.runtime), "{ls}");
    let ls = e.daemon.ctr_ok(&["-n", NS, "tasks", "ls"]);
    assert!(
        ls.contains(&id) && ls.contains("RUNNING") && ls.contains(&pid.to_string()),
        "{ls}"
    );

    let pids = e
        .tasks()
        .list_pids(req(ListPidsRequest {
            container_id: id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(pids.processes.iter().any(|p| p.pid == pid));

    // exec a process with its own output FIFO
    let out = e.daemon.dir.path().join("exec.out");
    let reader = fifo_reader(&out);
    // ctr gives stdout and stderr their own FIFOs; sharing one races in the runc shim
    let err_path = e.daemon.dir.path().join("exec.err");
    let err_reader = fifo_reader(&err_path);
    let mut process = default_spec(NS, &id).process.unwrap();
    process.args = vec!["/bin/sh".into(), "-c".into(), "echo exec-ok; exit 5".into()];
    e.tasks()
        .exec(req(ExecProcessRequest {
            container_id: id.clone(),
            exec_id: "ex1".into(),
            stdout: out.display().to_string(),
            stderr: err_path.display().to_string(),
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).unwrap(),
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    e.start(&id, "ex1").await;
    assert_eq!(e.wait(&id, "ex1").await, 5);
    assert_eq!(reader.join().unwrap(), "exec-ok\n");
    assert_eq!(err_reader.join().unwrap(), "");
    let d = e
        .tasks()
        .delete_process(req(DeleteProcessRequest {
            container_id: id.clone(),
            exec_id: "ex1".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.id.as_str(), d.exit_status), ("ex1", 5));

    e.tasks()
        .pause(req(PauseTaskRequest {
            container_id: id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(e.status(&id).await, 4, "paused");
    let ls = e.daemon.ctr_ok(&["-n", NS, "tasks", "ls"]);
    assert!(ls.contains("PAUSED"), "{ls}");
    e.tasks()
        .resume(req(ResumeTaskRequest {
            container_id: id.clone(),
        }))
        .await
        .unwrap();
    assert_eq!(e.status(&id).await, 2, "running again");

    let m = e
        .tasks()
        .metrics(req(MetricsRequest {
            filters: vec![format!("id=={id}")],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.metrics.len(), 1);
    let data = m.metrics[0].data.as_ref().unwrap();
    assert_eq!(data.type_url, "io.containerd.cgroups.v1.Metrics");
    let cg = CgroupMetrics::decode(data.value.as_slice()).unwrap();
    assert_eq!(cg.pids.unwrap().current, 1);
    assert!(cg.memory.unwrap().usage.unwrap().usage > 0);

    // ctr and the stevedore CLI over the same task
    let ps = e.daemon.ctr_ok(&["-n", NS, "tasks", "ps", &id]);
    assert!(ps.contains("PID") && ps.contains(&pid.to_string()), "{ps}");
    let metrics = e.daemon.ctr_ok(&["-n", NS, "tasks", "metrics", &id]);
    assert!(
        metrics.contains("memory.usage_in_bytes") && metrics.contains("pids.current"),
        "{metrics}"
    );
    let ls = e.daemon.cli_ok(&["-n", NS, "tasks", "ls"]);
    assert!(ls.contains(&id) && ls.contains("RUNNING"), "{ls}");
    let ls = e
        .daemon
        .cli_ok(&["-n", NS, "containers", "ls", &format!("id=={id}")]);
    assert!(ls.contains(&id) && ls.contains("busybox-rootfs"), "{ls}");
    let info = e.daemon.cli_ok(&["-n", NS, "containers", "info", &id]);
    assert!(info.contains("\"cgroupsPath\""), "{info}");
    let err = e.daemon.cli(&["-n", NS, "tasks", "rm", &id]);
    assert!(!err.status.success(), "deleting a running task fails");

    let mut events = e.subscribe().await;
    e.daemon
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(e.wait(&id, "").await, 137);
    expect_event(&mut events, &e.daemon, "/tasks/exit", &id).await;
    let ls = e.daemon.ctr_ok(&["-n", NS, "tasks", "ls"]);
    assert!(ls.contains("STOPPED"), "{ls}");
    e.daemon.ctr_ok(&["-n", NS, "tasks", "rm", &id]);
    e.daemon.ctr_ok(&["-n", NS, "containers", "rm", &id]);
    let left = ContainersClient::new(e.ch.clone())
        .list(req(ListContainersRequest { filters: vec![] }))
        .await
        .unwrap()
        .into_inner();
    assert!(!left.containers.iter().any(|c| c.id == id));
}

async fn daemon_sigkill_keeps_running_task_and_reports_its_exit_later(runtime: &'static str) {
    let mut e = env(runtime).await;
    let id = e.id("survivor");
    let (pid, _reader) = e.create_task(&id, &["/bin/sleep", "60"]).await;
    e.start(&id, "").await;
    // killed right after the start, possibly while it answers the shim's
    // `/tasks/start` Forward: each ttrpc frame leaves in one write, so the
    // shim reads a whole reply or none (a truncated one made containerd's
    // Go shim stop publishing for good; docs/compatibility.md)

    e.daemon.kill9();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "task survives the daemon"
    );
    e.daemon.spawn();
    e.ch = e.daemon.channel().await;

    let list = e
        .tasks()
        .list(req(ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let t = list
        .tasks
        .iter()
        .find(|t| t.id == id)
        .unwrap_or_else(|| panic!("task listed after restart: {list:?}\n{}", e.daemon.log()));
    assert_eq!((t.pid, t.status), (pid, 2));
    ContainersClient::new(e.ch.clone())
        .get(req(GetContainerRequest { id: id.clone() }))
        .await
        .unwrap();

    let mut events = e.subscribe().await;
    e.tasks()
        .kill(req(KillRequest {
            container_id: id.clone(),
            exec_id: String::new(),
            signal: 9,
            all: false,
        }))
        .await
        .unwrap();
    assert_eq!(e.wait(&id, "").await, 137);
    // the shim forwards its exit event to the restarted daemon
    expect_event(&mut events, &e.daemon, "/tasks/exit", &id).await;
    assert_eq!(e.delete(&id).await, 137);
}

fn cgroup_file(controller: &str, id: &str, file: &str) -> String {
    let p = format!("/sys/fs/cgroup/{controller}/{NS}/{id}/{file}");
    std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("read {p}: {e}"))
        .trim()
        .to_string()
}

async fn spec_resources_land_in_cgroups_and_update_changes_them(runtime: &'static str) {
    let e = env(runtime).await;
    let id = e.id("limits");
    let mut spec = default_spec(NS, &id);
    spec.with_args(&["/bin/sleep".to_string(), "60".to_string()])
        .with_memory_limit(64 << 20)
        .with_cpus(0.5)
        .with_default_seccomp();
    e.create_container_with(&id, spec).await;
    let (_, _reader) = e.create_task_only(&id).await;
    e.start(&id, "").await;
    assert_eq!(
        cgroup_file("memory", &id, "memory.limit_in_bytes"),
        (64u64 << 20).to_string()
    );
    assert_eq!(cgroup_file("cpu", &id, "cpu.cfs_quota_us"), "50000");
    assert_eq!(cgroup_file("cpu", &id, "cpu.cfs_period_us"), "100000");

    let resources = serde_json::json!({"memory": {"limit": 32u64 << 20}});
    e.tasks()
        .update(req(UpdateTaskRequest {
            container_id: id.clone(),
            resources: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: serde_json::to_vec(&resources).unwrap(),
            }),
            annotations: Default::default(),
        }))
        .await
        .unwrap();
    assert_eq!(
        cgroup_file("memory", &id, "memory.limit_in_bytes"),
        (32u64 << 20).to_string()
    );

    // checkpoint says what is missing: criu, or (with criu) stevedore's support
    let err = e
        .tasks()
        .checkpoint(req(CheckpointTaskRequest {
            container_id: id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    let has_criu = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join("criu").is_file());
    if has_criu {
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{err:?}");
    } else {
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("apt-get install criu"), "{err:?}");
    }

    e.daemon
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "9", &id]);
    assert_eq!(e.wait(&id, "").await, 137);
    assert_eq!(e.delete(&id).await, 137);
}

async fn killed_shim_is_reported_exited_and_cleaned_up(runtime: &'static str) {
    let e = env(runtime).await;
    let id = e.id("shimkill");
    let (pid, _reader) = e.create_task(&id, &["/bin/sleep", "60"]).await;
    e.start(&id, "").await;
    let mut events = e.subscribe().await;
    // the shim is the parent of the task's init process
    let ppid = stevedore_e2e::parent_pid(pid);
    let cmd = stevedore_e2e::parent_cmdline(pid);
    assert!(cmd.contains("containerd-shim-"), "{cmd}");
    // for the record (benchmarks compare shims): the shim's resident memory
    let status = std::fs::read_to_string(format!("/proc/{ppid}/status")).unwrap_or_default();
    if let Some(rss) = status.lines().find(|l| l.starts_with("VmRSS:")) {
        eprintln!("{runtime}: shim {rss}");
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(ppid).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();

    let exit = expect_event(&mut events, &e.daemon, "/tasks/exit", &id).await;
    let exit =
        stevedore_api::events::TaskExit::decode(exit.event.unwrap().value.as_slice()).unwrap();
    assert_eq!(exit.container_id, id);
    expect_event(&mut events, &e.daemon, "/tasks/delete", &id).await;
    let err = e
        .tasks()
        .get(req(GetRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let bundle = e
        .daemon
        .state
        .join("io.containerd.runtime.v2.task")
        .join(NS)
        .join(&id);
    assert!(!bundle.exists(), "bundle removed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "container process gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ContainersClient::new(e.ch.clone())
        .delete(req(DeleteContainerRequest { id: id.clone() }))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_task_prints_hi_and_exit_codes_propagate() {
    task_prints_hi_and_exit_codes_propagate(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_task_prints_hi_and_exit_codes_propagate() {
    task_prints_hi_and_exit_codes_propagate(STEVEDORE_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_running_task_supports_exec_pids_pause_metrics_and_kill() {
    running_task_supports_exec_pids_pause_metrics_and_kill(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_running_task_supports_exec_pids_pause_metrics_and_kill() {
    running_task_supports_exec_pids_pause_metrics_and_kill(STEVEDORE_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_daemon_sigkill_keeps_running_task_and_reports_its_exit_later() {
    daemon_sigkill_keeps_running_task_and_reports_its_exit_later(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_daemon_sigkill_keeps_running_task_and_reports_its_exit_later() {
    daemon_sigkill_keeps_running_task_and_reports_its_exit_later(STEVEDORE_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_spec_resources_land_in_cgroups_and_update_changes_them() {
    spec_resources_land_in_cgroups_and_update_changes_them(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_spec_resources_land_in_cgroups_and_update_changes_them() {
    spec_resources_land_in_cgroups_and_update_changes_them(STEVEDORE_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_killed_shim_is_reported_exited_and_cleaned_up() {
    killed_shim_is_reported_exited_and_cleaned_up(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_killed_shim_is_reported_exited_and_cleaned_up() {
    killed_shim_is_reported_exited_and_cleaned_up(STEVEDORE_SHIM).await
}

async fn restart_cleans_up_tasks_whose_container_record_is_gone(runtime: &'static str) {
    let mut e = env(runtime).await;
    let id = e.id("orphan");
    let (pid, _reader) = e.create_task(&id, &["/bin/sleep", "60"]).await;
    e.start(&id, "").await;
    e.daemon.kill9();
    // while the daemon is down its state loses the container record
    {
        let db = stevedore_metadata::Db::open(
            &e.daemon.root.join("io.containerd.metadata.v1.bolt/meta.db"),
        )
        .unwrap();
        db.delete_container(NS, &id).unwrap();
    }
    e.daemon.spawn();
    e.ch = e.daemon.channel().await;
    let list = e
        .tasks()
        .list(req(ListTasksRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(!list.tasks.iter().any(|t| t.id == id), "{list:?}");
    let bundle = e
        .daemon
        .state
        .join("io.containerd.runtime.v2.task")
        .join(NS)
        .join(&id);
    assert!(!bundle.exists(), "bundle removed");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "container process gone"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // and its shim exited
    let sock = e.daemon.socket.display().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alive = std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).to_string();
            cmd.contains("containerd-shim-") && cmd.contains(&sock)
        });
        if !alive {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "shim of {id} still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_restart_cleans_up_tasks_whose_container_record_is_gone() {
    restart_cleans_up_tasks_whose_container_record_is_gone(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_restart_cleans_up_tasks_whose_container_record_is_gone() {
    restart_cleans_up_tasks_whose_container_record_is_gone(STEVEDORE_SHIM).await
}

async fn task_with_terminal_gets_a_pty_of_the_requested_size(runtime: &'static str) {
    let e = env(runtime).await;
    let id = e.id("tty");
    let mut spec = default_spec(NS, &id);
    spec.with_args(&[
        "/bin/busybox".to_string(),
        "sh".to_string(),
        "-c".to_string(),
        "busybox tty; busybox stty size".to_string(),
    ])
    .with_tty(true);
    e.create_container_with(&id, spec).await;
    let out = e.daemon.dir.path().join("tty.out");
    let reader = fifo_reader(&out);
    let pid = e
        .tasks()
        .create(req(CreateTaskRequest {
            container_id: id.clone(),
            rootfs: vec![Mount {
                r#type: "bind".into(),
                source: e.rootfs.display().to_string(),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            }],
            stdout: out.display().to_string(),
            terminal: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .pid;
    assert!(pid > 0);
    e.tasks()
        .resize_pty(req(ResizePtyRequest {
            container_id: id.clone(),
            exec_id: String::new(),
            width: 100,
            height: 40,
        }))
        .await
        .unwrap();
    e.start(&id, "").await;
    assert_eq!(e.wait(&id, "").await, 0);
    let text = reader.join().unwrap();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("40 100"), "{text:?}");
    assert_eq!(e.delete(&id).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_shim_task_with_terminal_gets_a_pty_of_the_requested_size() {
    task_with_terminal_gets_a_pty_of_the_requested_size(RUNC_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_task_with_terminal_gets_a_pty_of_the_requested_size() {
    task_with_terminal_gets_a_pty_of_the_requested_size(STEVEDORE_SHIM).await
}

#[tokio::test(flavor = "multi_thread")]
async fn runc_v2_runs_on_stevedores_shim_by_default_and_config_maps_it_to_the_go_shim() {
    for (config, expected) in [
        (None, "containerd-shim-stevedore-v1"),
        (
            Some(stevedore_e2e::GO_SHIM_CONFIG),
            "containerd-shim-runc-v2",
        ),
    ] {
        let e = env_with_config(RUNC_SHIM, config).await;
        let id = e.id("mapped");
        let (pid, _reader) = e.create_task(&id, &["/bin/sleep", "60"]).await;
        e.start(&id, "").await;
        let cmd = stevedore_e2e::parent_cmdline(pid);
        assert!(cmd.contains(expected), "{cmd}");
        e.tasks()
            .kill(req(KillRequest {
                container_id: id.clone(),
                exec_id: String::new(),
                signal: 9,
                all: false,
            }))
            .await
            .unwrap();
        assert_eq!(e.wait(&id, "").await, 137);
        assert_eq!(e.delete(&id).await, 137);
    }
}

/// The Go shim sends a running process's `exited_at` as Go's zero time (year
/// 1); containerd passes it on, so Go clients read `ExitTime.IsZero()`. It
/// must not turn into an exit at the Unix epoch on the way through.
#[tokio::test]
async fn runc_shim_running_task_keeps_go_zero_time_as_its_exit_time() {
    let e = env(RUNC_SHIM).await;
    let id = e.id("zerotime");
    let (pid, _reader) = e.create_task(&id, &["/bin/sleep", "60"]).await;
    assert_eq!(e.start(&id, "").await, pid);
    let process = e
        .tasks()
        .get(req(GetRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .process
        .unwrap();
    assert_eq!(process.status, 2, "running");
    let exited_at = process.exited_at.expect("the Go shim sends exited_at");
    assert_eq!((exited_at.seconds, exited_at.nanos), (-62_135_596_800, 0));
    // and the real ctr reads it as Go's zero time
    let o = e.daemon.ctr(&["-n", NS, "containers", "rm", &id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0001-01-01 00:00:00 +0000 UTC"), "{err}");
    e.daemon
        .ctr_ok(&["-n", NS, "tasks", "kill", "-s", "SIGKILL", &id]);
    assert_eq!(e.wait(&id, "").await, 137);
    e.delete(&id).await;
}
