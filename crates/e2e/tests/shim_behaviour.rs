//! Behaviours containerd's clients rely on, held against both shims: stevedore's
//! own (`containerd-shim-stevedore-v1`, the default for io.containerd.runc.v2)
//! and Debian's Go `containerd-shim-runc-v2` (mapped in the config), which is
//! the reference: a scenario that fails on the Go shim states the wrong thing.
//! Where `ctr` can show a behaviour it does; otherwise the gRPC task API does.
//! The last tests talk ttrpc to stevedore's shim directly, without a daemon
//! in between, to show the shim refuses hostile identifiers on its own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stevedore_api::services::containers::{
    container::Runtime, containers_client::ContainersClient, Container, CreateContainerRequest,
};
use stevedore_api::services::tasks::{
    tasks_client::TasksClient, CloseIoRequest, CreateTaskRequest, DeleteProcessRequest,
    ExecProcessRequest, GetRequest, KillRequest, ListPidsRequest, ResizePtyRequest, StartRequest,
    WaitRequest,
};
use stevedore_api::types::Mount;
use stevedore_e2e::{busybox_image, require_tool, Daemon, GO_SHIM_CONFIG};
use stevedore_runtime::spec::default_spec;
use tonic::transport::Channel;
use tonic::Request;

/// ctr's namespace: tasks started by ctr and inspected over gRPC.
const NS: &str = "default";

/// A test on stevedore's shim and one on containerd's Go shim.
macro_rules! on_both_shims {
    ($f:ident: $stevedore:ident, $go:ident) => {
        #[tokio::test(flavor = "multi_thread")]
        async fn $stevedore() {
            $f(Shim::Stevedore).await;
        }

        #[tokio::test(flavor = "multi_thread")]
        async fn $go() {
            $f(Shim::Go).await;
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Shim {
    Stevedore,
    Go,
}

impl Shim {
    /// Where the shim keeps runc's state for ctr's namespace.
    fn runc_root(self) -> String {
        match self {
            Shim::Stevedore => format!("/run/stevedore/runc/{NS}"),
            Shim::Go => format!("/run/containerd/runc/{NS}"),
        }
    }
}

struct Env {
    d: Daemon,
    _dir: tempfile::TempDir,
    img: String,
    ch: Channel,
    shim: Shim,
}

async fn setup(shim: Shim) -> Env {
    require_tool("runc", "runc");
    require_tool("containerd-shim-runc-v2", "containerd");
    let d = match shim {
        Shim::Stevedore => Daemon::start(),
        Shim::Go => Daemon::start_with_config(Some(GO_SHIM_CONFIG)),
    };
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    let ch = d.channel().await;
    Env {
        d,
        _dir: dir,
        img: img.name,
        ch,
        shim,
    }
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(stevedore_api::NAMESPACE_HEADER, NS.parse().unwrap());
    r
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

impl Env {
    /// A task id unique to this test, shim and process (runc roots and
    /// cgroup paths are shared by every daemon of a namespace).
    fn id(&self, name: &str) -> String {
        let tag = match self.shim {
            Shim::Stevedore => "sd",
            Shim::Go => "go",
        };
        format!("{name}-{tag}-{}", std::process::id())
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ch.clone())
    }

    /// `ctr run -d IMG id sleep 1000` (plus extra flags); returns the pid.
    fn run_sleeper(&self, id: &str, flags: &[&str]) -> u32 {
        let mut args = vec!["run", "-d"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&[self.img.as_str(), id, "sleep", "1000"]);
        self.d.ctr_ok(&args);
        self.pid_of(id)
    }

    fn pid_of(&self, id: &str) -> u32 {
        let ls = self.d.ctr_ok(&["tasks", "ls"]);
        ls.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("task {id} not listed: {ls}"))
    }

    /// Kill and remove task and container `id`.
    fn remove(&self, id: &str) {
        let _ = self.d.ctr(&["tasks", "kill", "-s", "SIGKILL", id]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .d
            .ctr_ok(&["tasks", "ls"])
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("STOPPED"))
        {
            assert!(Instant::now() < deadline, "task {id} did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.d.ctr_ok(&["tasks", "rm", id]);
        self.d.ctr_ok(&["containers", "rm", id]);
    }

    fn exec_spec(&self, id: &str, args: &[&str]) -> prost_types::Any {
        let mut process = default_spec(NS, id).process.unwrap();
        process.args = args.iter().map(|s| s.to_string()).collect();
        prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).unwrap(),
        }
    }

    async fn exec(&self, id: &str, exec_id: &str, args: &[&str], stdio: [&Path; 3]) {
        let s = |p: &Path| {
            if p.as_os_str().is_empty() {
                String::new()
            } else {
                p.display().to_string()
            }
        };
        self.tasks()
            .exec(req(ExecProcessRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
                stdin: s(stdio[0]),
                stdout: s(stdio[1]),
                stderr: s(stdio[2]),
                terminal: false,
                spec: Some(self.exec_spec(id, args)),
            }))
            .await
            .unwrap();
    }

    async fn status(&self, id: &str, exec_id: &str) -> i32 {
        self.tasks()
            .get(req(GetRequest {
                container_id: id.into(),
                exec_id: exec_id.into(),
            }))
            .await
            .unwrap()
            .into_inner()
            .process
            .unwrap()
            .status
    }
}

/// A FIFO read to EOF on a thread.
fn fifo_reader(path: &Path) -> std::thread::JoinHandle<String> {
    stevedore_sys::mkfifo(path, 0o600).unwrap();
    let p = path.to_path_buf();
    std::thread::spawn(move || std::fs::read_to_string(p).unwrap_or_default())
}

/// The state letter of a process (`Z` zombie), None once it is gone.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

async fn exec_with_a_tty_and_megabytes_of_output_completes(shim: Shim) {
    let e = setup(shim).await;
    let tty1 = e.id("tty1");
    e.run_sleeper(&tty1, &[]);
    let ctr = require_tool("ctr", "containerd");
    let sock = e.d.socket.display().to_string();
    let started = Instant::now();
    let (code, out) = stevedore_e2e::run_on_pty(&[
        "timeout",
        "120",
        ctr.to_str().unwrap(),
        "--address",
        &sock,
        "tasks",
        "exec",
        "-t",
        "--exec-id",
        "big",
        &tty1,
        "sh",
        "-c",
        "head -c 1500000 /dev/zero | od -v",
    ]);
    assert_eq!(code, 0, "{} bytes after {:?}", out.len(), started.elapsed());
    // od prints 16 bytes per line of 75 characters: about 7 MB of text
    // (a pty moves it at a few MB/s on a loaded 2-core machine)
    assert!(out.len() > 5_000_000, "{} bytes", out.len());
    // a TTY exec that fails fails promptly, with containerd's message
    let started = Instant::now();
    e.tasks()
        .exec(req(ExecProcessRequest {
            container_id: tty1.clone(),
            exec_id: "bad".into(),
            terminal: true,
            spec: Some(e.exec_spec(&tty1, &["/bin/notthere"])),
            ..Default::default()
        }))
        .await
        .unwrap();
    let err = e
        .tasks()
        .start(req(StartRequest {
            container_id: tty1.clone(),
            exec_id: "bad".into(),
        }))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        err.message().contains("OCI runtime exec failed: ")
            && err.message().contains(
                r#"exec: "/bin/notthere": stat /bin/notthere: no such file or directory"#
            ),
        "{err:?}"
    );
    e.tasks()
        .delete_process(req(DeleteProcessRequest {
            container_id: tty1.clone(),
            exec_id: "bad".into(),
        }))
        .await
        .unwrap();
    e.remove(&tty1);
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(exec_with_a_tty_and_megabytes_of_output_completes:
    stevedore_shim_exec_with_a_tty_and_megabytes_of_output_completes,
    go_shim_exec_with_a_tty_and_megabytes_of_output_completes);

async fn runc_failures_read_like_containerd_and_runc_output_stays_off_the_client(shim: Shim) {
    let e = setup(shim).await;
    let n1 = e.id("n1");
    let n2 = e.id("n2");
    let n3 = e.id("n3");
    let x1 = e.id("x1");
    let missing = r#"exec: "/bin/notthere": stat /bin/notthere: no such file or directory"#;
    let o = e.d.ctr(&["run", "--rm", &e.img, &n1, "/bin/notthere"]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "OCI runtime create failed: runc create failed: unable to start container process: {missing}: unknown"
        )),
        "{err}"
    );
    // only the client's own error line: no runc log line, no runc stderr
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(o.stdout.is_empty(), "{o:?}");
    let o = e.d.cli(&["run", "--rm", &e.img, &n2, "/bin/notthere"]);
    let err = stderr(&o);
    assert!(
        err.contains("OCI runtime create failed: runc create failed"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        !err.contains("level=") && !err.contains("\"level\""),
        "{err}"
    );

    e.run_sleeper(&x1, &[]);
    let o =
        e.d.ctr(&["tasks", "exec", "--exec-id", "e1", &x1, "/bin/notthere"]);
    let err = stderr(&o);
    assert!(
        err.contains("OCI runtime exec failed: exec failed: unable to start container process: ")
            && err.contains(&format!("{missing}: unknown")),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    e.remove(&x1);

    // an OCI runtime binary that does not exist: Go's exec wording
    let o = e.d.ctr(&[
        "run",
        "--rm",
        "--runc-binary",
        "stevedore-no-such-runc",
        &e.img,
        &n3,
        "true",
    ]);
    let err = stderr(&o);
    assert!(
        err.contains(r#"exec: "stevedore-no-such-runc": executable file not found in $PATH"#),
        "{err}"
    );
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(runc_failures_read_like_containerd_and_runc_output_stays_off_the_client:
    stevedore_shim_runc_failures_read_like_containerd_and_stay_off_the_client,
    go_shim_runc_failures_read_like_containerd_and_stay_off_the_client);

async fn kill_of_a_container_deleted_behind_the_shims_back_is_not_found(shim: Shim) {
    let e = setup(shim).await;
    let k1 = e.id("k1");
    let k2 = e.id("k2");
    let root = shim.runc_root();
    let kill = |id: &str| {
        let mut t = e.tasks();
        let id = id.to_string();
        async move {
            t.kill(req(KillRequest {
                container_id: id,
                exec_id: String::new(),
                signal: 15,
                all: false,
            }))
            .await
        }
    };
    // runc delete -f: the container and its process are gone
    e.run_sleeper(&k1, &[]);
    let o = std::process::Command::new("runc")
        .args(["--root", &root, "delete", "-f", &k1])
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    let err = kill(&k1).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    e.remove(&k1);
    // runc's state removed while the process runs: runc says "does not exist"
    let pid = e.run_sleeper(&k2, &[]);
    std::fs::remove_dir_all(Path::new(&root).join(&k2)).unwrap();
    let err = kill(&k2).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    assert!(err.message().contains("not found"), "{err:?}");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    e.remove(&k2);
    e.d.expect_no_shims(Duration::from_secs(10));
    // with runc's state gone nobody knows k2's cgroups: the test removes them
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(h.path().join(NS).join(&k2));
    }
}

on_both_shims!(kill_of_a_container_deleted_behind_the_shims_back_is_not_found:
    stevedore_shim_kill_of_a_container_deleted_behind_its_back_is_not_found,
    go_shim_kill_of_a_container_deleted_behind_its_back_is_not_found);

async fn pause_and_resume_follow_containerds_state_rules(shim: Shim) {
    let e = setup(shim).await;
    let p1 = e.id("p1");
    e.run_sleeper(&p1, &[]);
    // each refusal carries containerd's reason (pkg/process/init_state.go)
    let refused = |args: &[&str], why: &str| {
        let o = e.d.ctr(args);
        assert!(!o.status.success(), "ctr {args:?} succeeded");
        let err = stderr(&o);
        assert!(err.contains(why), "ctr {args:?}: {err}");
    };
    refused(&["tasks", "resume", &p1], "cannot resume a running process");
    e.d.ctr_ok(&["tasks", "pause", &p1]);
    refused(&["tasks", "pause", &p1], "cannot pause a paused container");
    e.d.ctr_ok(&["tasks", "resume", &p1]);
    e.d.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &p1]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !e
        .d
        .ctr_ok(&["tasks", "ls"])
        .lines()
        .any(|l| l.starts_with(&p1) && l.contains("STOPPED"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "task {p1} never stopped"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    refused(&["tasks", "pause", &p1], "cannot pause a stopped container");
    refused(
        &["tasks", "exec", "--exec-id", "x", &p1, "true"],
        "cannot exec in a stopped state",
    );
    e.remove(&p1);
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(pause_and_resume_follow_containerds_state_rules:
    stevedore_shim_pause_and_resume_follow_containerds_state_rules,
    go_shim_pause_and_resume_follow_containerds_state_rules);

async fn unstarted_exec_deletes_with_status_0_and_resize_without_a_tty_is_a_noop(shim: Shim) {
    let e = setup(shim).await;
    let u1 = e.id("u1");
    e.run_sleeper(&u1, &[]);
    e.exec(&u1, "never", &["true"], [Path::new(""); 3]).await;
    let d = e
        .tasks()
        .delete_process(req(DeleteProcessRequest {
            container_id: u1.clone(),
            exec_id: "never".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((d.exit_status, d.pid), (0, 0), "{d:?}");
    for exec_id in ["", "tty-less"] {
        if !exec_id.is_empty() {
            e.exec(&u1, exec_id, &["sleep", "5"], [Path::new(""); 3])
                .await;
        }
        e.tasks()
            .resize_pty(req(ResizePtyRequest {
                container_id: u1.clone(),
                exec_id: exec_id.into(),
                width: 80,
                height: 25,
            }))
            .await
            .unwrap_or_else(|err| panic!("resize of {exec_id:?}: {err:?}"));
    }
    e.remove(&u1);
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(unstarted_exec_deletes_with_status_0_and_resize_without_a_tty_is_a_noop:
    stevedore_shim_unstarted_exec_deletes_with_status_0_and_resize_without_a_tty_is_a_noop,
    go_shim_unstarted_exec_deletes_with_status_0_and_resize_without_a_tty_is_a_noop);

async fn stdin_ends_when_the_client_closed_and_called_close_io(shim: Shim) {
    let e = setup(shim).await;
    let s1 = e.id("s1");
    e.run_sleeper(&s1, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (inp, out) = (dir.path().join("in"), dir.path().join("out"));
    stevedore_sys::mkfifo(&inp, 0o600).unwrap();
    let reader = fifo_reader(&out);
    // containerd's shim wants stderr whenever stdout is given (as ctr does)
    let err_path = dir.path().join("err");
    let err_reader = fifo_reader(&err_path);
    e.exec(
        &s1,
        "cat",
        &["sh", "-c", "cat; echo done"],
        [&inp, &out, &err_path],
    )
    .await;
    e.tasks()
        .start(req(StartRequest {
            container_id: s1.clone(),
            exec_id: "cat".into(),
        }))
        .await
        .unwrap();
    {
        use std::io::Write;
        let mut w = std::fs::OpenOptions::new().write(true).open(&inp).unwrap();
        w.write_all(b"hello\n").unwrap();
    }
    // the client closed its end (a detach): the process keeps its stdin
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(e.status(&s1, "cat").await, 2, "still running");
    e.tasks()
        .close_io(req(CloseIoRequest {
            container_id: s1.clone(),
            exec_id: "cat".into(),
            stdin: true,
        }))
        .await
        .unwrap();
    let w = e
        .tasks()
        .wait(req(WaitRequest {
            container_id: s1.clone(),
            exec_id: "cat".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(w.exit_status, 0);
    assert_eq!(reader.join().unwrap(), "hello\ndone\n");
    assert_eq!(err_reader.join().unwrap(), "");
    // ctr closes its stdin FIFO and calls CloseIO at the end of its input,
    // which may arrive while the shim is still starting the process
    for n in 0..3 {
        let exec_id = format!("c{n}");
        let mut child =
            e.d.ctr_command(&[
                "tasks",
                "exec",
                "--exec-id",
                &exec_id,
                &s1,
                "sh",
                "-c",
                "cat; echo end",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(b"piped\n").unwrap();
        }
        let pid = child.id();
        let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !waiter.is_finished() {
            if Instant::now() > deadline {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
                panic!("ctr tasks exec {n} never saw the end of its stdin");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let o = waiter.join().unwrap();
        assert!(o.status.success(), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "piped\nend\n");
    }
    e.remove(&s1);
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(stdin_ends_when_the_client_closed_and_called_close_io:
    stevedore_shim_stdin_ends_when_the_client_closed_and_called_close_io,
    go_shim_stdin_ends_when_the_client_closed_and_called_close_io);

async fn host_pid_container_processes_die_with_its_init(shim: Shim) {
    let e = setup(shim).await;
    let rootfs = stevedore_e2e::busybox_rootfs(e.d.dir.path());
    let id = e.id("hostpid");
    let id = id.as_str();
    let mut spec = default_spec(NS, id);
    spec.with_args(&[
        "sh".into(),
        "-c".into(),
        "sleep 300 & exec sleep 301".into(),
    ]);
    if let Some(l) = spec.linux.as_mut() {
        l.namespaces.retain(|n| n.kind != "pid");
    }
    create_container(&e, id, spec.to_json(), None).await;
    let pid = create_task(&e, id, &rootfs).await;
    e.tasks()
        .start(req(StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        }))
        .await
        .unwrap();
    // the background sleep, a child of init
    let deadline = Instant::now() + Duration::from_secs(10);
    let child = loop {
        let pids = e
            .tasks()
            .list_pids(req(ListPidsRequest {
                container_id: id.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        if let Some(p) = pids.processes.iter().find(|p| p.pid != pid) {
            break p.pid;
        }
        assert!(Instant::now() < deadline, "no child of init: {pids:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    e.d.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", id]);
    // killed and reaped by the shim (its subreaper), as containerd's shim
    // reaps every child: no zombie while the task is still there
    let deadline = Instant::now() + Duration::from_secs(10);
    while proc_state(child).is_some() {
        assert!(
            Instant::now() < deadline,
            "init's child {child} survives or is not reaped: state {:?}",
            proc_state(child)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    e.remove(id);
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(host_pid_container_processes_die_with_its_init:
    stevedore_shim_host_pid_container_processes_die_with_its_init,
    go_shim_host_pid_container_processes_die_with_its_init);

async fn create_container(e: &Env, id: &str, spec: Vec<u8>, options: Option<prost_types::Any>) {
    ContainersClient::new(e.ch.clone())
        .create(req(CreateContainerRequest {
            container: Some(Container {
                id: id.into(),
                image: "busybox-rootfs".into(),
                runtime: Some(Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options,
                }),
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: spec,
                }),
                ..Default::default()
            }),
        }))
        .await
        .unwrap();
}

async fn create_task(e: &Env, id: &str, rootfs: &Path) -> u32 {
    e.tasks()
        .create(req(CreateTaskRequest {
            container_id: id.into(),
            rootfs: vec![Mount {
                r#type: "bind".into(),
                source: rootfs.display().to_string(),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            }],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .pid
}

async fn shim_joins_the_shim_cgroup_of_the_runc_options(shim: Shim) {
    let e = setup(shim).await;
    let rootfs = stevedore_e2e::busybox_rootfs(e.d.dir.path());
    let name = format!("stevedore-e2e-shimcg-{}", std::process::id());
    let dirs: Vec<PathBuf> = ["memory", "pids"]
        .iter()
        .map(|c| Path::new("/sys/fs/cgroup").join(c).join(&name))
        .collect();
    for d in &dirs {
        std::fs::create_dir_all(d).unwrap();
    }
    // containerd.runc.v1.Options { shim_cgroup (3): "/<name>" }
    let cg = format!("/{name}");
    let mut value = vec![(3 << 3) | 2, cg.len() as u8];
    value.extend_from_slice(cg.as_bytes());
    let id = e.id("shimcg");
    let id = id.as_str();
    let mut spec = default_spec(NS, id);
    spec.with_args(&["sleep".into(), "1000".into()]);
    create_container(
        &e,
        id,
        spec.to_json(),
        Some(prost_types::Any {
            type_url: "containerd.runc.v1.Options".into(),
            value,
        }),
    )
    .await;
    let pid = create_task(&e, id, &rootfs).await;
    let shim_pid = stevedore_e2e::parent_pid(pid);
    let cgroups = std::fs::read_to_string(format!("/proc/{shim_pid}/cgroup")).unwrap();
    for c in ["memory", "pids"] {
        assert!(
            cgroups.lines().any(|l| l.ends_with(&format!(":{c}:{cg}"))),
            "{c}: {cgroups}"
        );
    }
    e.remove(id);
    e.d.expect_no_shims(Duration::from_secs(10));
    for d in &dirs {
        std::fs::remove_dir(d).unwrap();
    }
}

on_both_shims!(shim_joins_the_shim_cgroup_of_the_runc_options:
    stevedore_shim_joins_the_shim_cgroup_of_the_runc_options,
    go_shim_joins_the_shim_cgroup_of_the_runc_options);

async fn metrics_are_complete_cgroup_v1_metrics(shim: Shim) {
    let e = setup(shim).await;
    let m1 = e.id("m1");
    e.run_sleeper(&m1, &["--memory-limit", "67108864"]);
    let out = e.d.ctr_ok(&["tasks", "metrics", "--format", "json", &m1]);
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|err| panic!("{err}: {out}"));
    let at = |path: &str| path.split('.').fold(&v, |v, k| &v[k]).clone();
    let num = |path: &str| {
        at(path)
            .as_u64()
            .unwrap_or_else(|| panic!("{path} missing in {out}"))
    };
    assert_eq!(num("memory.usage.limit"), 64 << 20);
    assert_eq!(num("memory.hierarchical_memory_limit"), 64 << 20);
    for p in [
        "memory.usage.usage",
        "memory.usage.max",
        "memory.swap.limit",
        "memory.kernel.limit",
        "memory.kernel_tcp.limit",
        "memory.pg_fault",
        "memory.total_pg_fault",
        "cpu.usage.total",
        "pids.current",
    ] {
        assert!(num(p) > 0, "{p} in {out}");
    }
    assert!(
        !at("cpu.usage.per_cpu")
            .as_array()
            .map(Vec::is_empty)
            .unwrap_or(true),
        "{out}"
    );
    for p in ["cpu.throttling", "blkio", "memory_oom_control"] {
        assert!(at(p).is_object(), "{p} missing in {out}");
    }
    let table = e.d.ctr_ok(&["tasks", "metrics", &m1]);
    assert!(
        table.contains("memory.limit_in_bytes") && table.contains("67108864"),
        "{table}"
    );
    let m: serde_json::Value =
        serde_json::from_str(&e.d.cli_ok(&["-o", "json", "tasks", "metrics", &m1])).unwrap();
    assert!(m["memory_usage"].as_u64().unwrap() > 0, "{m}");
    e.remove(&m1);
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(metrics_are_complete_cgroup_v1_metrics:
    stevedore_shim_metrics_are_complete_cgroup_v1_metrics,
    go_shim_metrics_are_complete_cgroup_v1_metrics);

/// Exec and attach leave no shim behind once their task is deleted.
#[test]
fn no_shim_outlives_its_task_after_exec_and_attach() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt.block_on(setup(Shim::Stevedore));
    let a1 = e.id("a1");
    e.d.cli_ok(&[
        "run",
        "-d",
        &e.img,
        &a1,
        "sh",
        "-c",
        "while true; do sleep 0.1; done",
    ]);
    let o = e.d.cli(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        &a1,
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    // an exec that never started and one still running when the task dies
    rt.block_on(e.exec(&a1, "left", &["true"], [Path::new(""); 3]));
    e.d.cli_ok(&[
        "tasks",
        "exec",
        "-d",
        "--exec-id",
        "e2",
        &a1,
        "sleep",
        "100",
    ]);
    let attach =
        e.d.cli_command(&["tasks", "attach", &a1])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    e.d.cli_ok(&["tasks", "kill", "--signal", "9", &a1]);
    let _ = attach.wait_with_output();
    let _ = e.d.cli(&["tasks", "wait", &a1]);
    e.d.cli_ok(&["tasks", "rm", &a1]);
    e.d.expect_no_shims(Duration::from_secs(10));
}

// --- ttrpc straight to stevedore's shim: no daemon validates for it ---

/// stevedore's shim started by hand as the daemon starts it, with no daemon
/// (its addresses name sockets nobody serves), for a task of namespace
/// `shimtest` whose spec runs `sleep 1000` in a busybox rootfs.
struct DirectShim {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    spec: stevedore_runtime::spec::Spec,
    bundle: stevedore_runtime::bundle::Bundle,
    binary: PathBuf,
    addr: String,
}

impl DirectShim {
    async fn start(prefix: &str, id: &str) -> DirectShim {
        use stevedore_runtime::shim::{self, ShimEnv};
        require_tool("runc", "runc");
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in("/tmp")
            .unwrap();
        let rootfs = stevedore_e2e::busybox_rootfs(dir.path());
        let mut spec = default_spec("shimtest", id);
        spec.with_args(&["sleep".into(), "1000".into()]);
        let bundle = stevedore_runtime::bundle::Bundle::create(
            &dir.path().join("state"),
            &dir.path().join("root"),
            "shimtest",
            id,
            &spec.to_json(),
        )
        .unwrap();
        let binary = stevedore_e2e::bin("containerd-shim-stevedore-v1");
        let env = ShimEnv {
            grpc_address: dir.path().join("none.sock").display().to_string(),
            ttrpc_address: dir.path().join("none.sock.ttrpc").display().to_string(),
            publish_binary: stevedore_e2e::bin("stevedored"),
            debug: false,
        };
        let addr = shim::start(&binary, &bundle, &env, None).await.unwrap();
        DirectShim {
            dir,
            rootfs,
            spec,
            bundle,
            binary,
            addr,
        }
    }

    async fn connect(&self) -> stevedore_runtime::shim::Shim {
        stevedore_runtime::shim::Shim::connect(self.bundle.clone(), self.binary.clone(), &self.addr)
            .await
            .unwrap()
    }

    /// Pids of this shim's processes (their command line names its socket).
    fn pids(&self) -> Vec<u32> {
        stevedore_e2e::shim_pids_for(&self.dir.path().join("none.sock").display().to_string())
    }

    async fn expect_exit(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pids().is_empty() {
            assert!(Instant::now() < deadline, "the shim did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn shim_refuses_exec_ids_that_are_not_one_path_component() {
    use stevedore_runtime::shim::{CreateOpts, ExecOpts};
    let id = format!("t{}", std::process::id());
    let d = DirectShim::start("shimid-", &id).await;
    let (rootfs, spec, bundle) = (&d.rootfs, &d.spec, &d.bundle);
    let s = d.connect().await;
    s.create(&CreateOpts {
        rootfs: vec![stevedore_types::Mount {
            kind: "bind".into(),
            source: rootfs.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "rw".into()],
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    s.start("").await.unwrap();
    let evil = format!("../../../../tmp/stevedore-evil-{}", std::process::id());
    let escaped: Vec<PathBuf> = ["json", "pid", "process.json"]
        .iter()
        .map(|ext| bundle.path.join(format!("{evil}.{ext}")))
        .collect();
    let mut process = spec.process.clone().unwrap();
    process.args = vec!["true".into()];
    let err = s
        .exec(&ExecOpts {
            exec_id: evil.clone(),
            spec: Some(stevedore_runtime::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                value: serde_json::to_vec(&process).unwrap(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.kind,
        stevedore_types::ErrorKind::InvalidArgument,
        "{err}"
    );
    assert!(
        err.message.contains(&format!(
            "identifier \"{evil}\" must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"
        )),
        "{err}"
    );
    for call in ["start", "kill", "delete"] {
        let err = match call {
            "start" => s.start(&evil).await.map(|_| ()),
            "kill" => s.kill(&evil, 9, false).await,
            _ => s.delete_process(&evil).await.map(|_| ()),
        }
        .unwrap_err();
        assert_eq!(
            err.kind,
            stevedore_types::ErrorKind::InvalidArgument,
            "{call}: {err}"
        );
    }
    for p in &escaped {
        assert!(!p.exists(), "{} written", p.display());
    }
    s.kill("", 9, false).await.unwrap();
    s.wait("").await.unwrap();
    s.delete_process("").await.unwrap();
    // with its init deleted the container is gone, as containerd's shim
    // drops it: a late kill (the CRI stopping a container whose exit it is
    // handling) is NotFound, not FailedPrecondition
    let err = s.kill("", 9, false).await.unwrap_err();
    assert_eq!(err.kind, stevedore_types::ErrorKind::NotFound, "{err}");
    s.shutdown().await.unwrap();
    d.expect_exit().await;
    let _ = bundle.delete();
}

#[test]
fn shim_refuses_a_task_id_that_is_not_one_path_component() {
    let dir = tempfile::tempdir().unwrap();
    let o = std::process::Command::new(stevedore_e2e::bin("containerd-shim-stevedore-v1"))
        .args([
            "-namespace",
            "default",
            "-address",
            "/nonexistent.sock",
            "-id",
            "../../evil",
            "start",
        ])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "{o:?}");
    let err = stderr(&o);
    assert!(
        err.contains(
            r#"-id: identifier "../../evil" must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$"#
        ),
        "{err}"
    );
    assert!(o.stdout.is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}

/// stevedore's shim starts a created container by releasing runc's
/// `exec.fifo` itself (what `runc start` does) instead of running `runc
/// start`, and deletes a stopped one by removing its cgroups and runc state
/// (what `runc delete` does); runc sees the container running after the
/// start and gone after the delete, as after its own commands.
#[tokio::test(flavor = "multi_thread")]
async fn stevedore_shim_starts_and_deletes_a_container_without_runc_start_or_delete() {
    let e = setup(Shim::Stevedore).await;
    let runc = require_tool("runc", "runc");
    // a runc that notes each command line, as `--runc-binary`
    let dir = e.d.dir.path().join("wrapped");
    std::fs::create_dir_all(&dir).unwrap();
    let calls = dir.join("calls");
    let wrapper = dir.join("runc");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n",
            calls.display(),
            runc.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let id = e.id("fifostart");
    let pid = e.run_sleeper(&id, &["--runc-binary", wrapper.to_str().unwrap()]);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.starts_with(b"sleep\0"), "{cmdline:?}");
    let state = std::process::Command::new(&runc)
        .args(["--root", &e.shim.runc_root(), "state", &id])
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout)
        .unwrap_or_else(|err| panic!("runc state: {err}: {}", stderr(&state)));
    assert_eq!(state["status"], "running", "{state}");
    let saved = std::fs::read(Path::new(&e.shim.runc_root()).join(&id).join("state.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_slice(&saved).unwrap();
    let cgroups: Vec<PathBuf> = saved["cgroup_paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert!(cgroups.iter().any(|p| p.exists()), "{cgroups:?}");
    e.remove(&id);
    e.d.expect_no_shims(Duration::from_secs(10));
    let gone = std::process::Command::new(&runc)
        .args(["--root", &e.shim.runc_root(), "state", &id])
        .output()
        .unwrap();
    assert!(
        !gone.status.success() && stderr(&gone).contains("does not exist"),
        "{}",
        stderr(&gone)
    );
    for p in &cgroups {
        assert!(!p.exists(), "cgroup {} left behind", p.display());
    }
    let noted = std::fs::read_to_string(&calls).unwrap();
    let subcommands: Vec<&str> = noted
        .lines()
        .filter_map(|l| l.split(" --log-format json ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    assert!(subcommands.contains(&"create"), "{noted}");
    assert!(!subcommands.contains(&"start"), "{noted}");
    assert!(!subcommands.contains(&"delete"), "{noted}");
}

/// `ctr run --log-uri binary:///driver?k=v` (the Go client's `cio.BinaryIO`,
/// nerdctl's log drivers): the shim starts the driver with the task in its
/// environment, the process's stdout on fd 3 and stderr on fd 4, waits for
/// it to close fd 5; the driver sees EOF once the process is gone (Go's
/// shim: once it is deleted) and SIGTERM at the delete.
async fn binary_log_uri_hands_the_output_to_a_logging_driver(shim: Shim) {
    let e = setup(shim).await;
    let id = e.id("binlog");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("log");
    let driver = dir.path().join("driver");
    std::fs::write(
        &driver,
        format!(
            "#!/bin/sh\n\
             trap '' TERM\n\
             exec 5>&-\n\
             {{ echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID $1=$2\"; cat <&3; cat <&4; }} > {0}.tmp\n\
             mv {0}.tmp {0}\n",
            out.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!("binary://{}?tag=web", driver.display());
    e.d.ctr_ok(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        &e.img,
        &id,
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(t) = std::fs::read_to_string(&out) {
            break t;
        }
        assert!(Instant::now() < deadline, "the driver wrote nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(text, format!("{NS}/{id} tag=web\nto-stdout\nto-stderr\n"));
    e.d.expect_no_shims(Duration::from_secs(10));
}

on_both_shims!(binary_log_uri_hands_the_output_to_a_logging_driver:
    stevedore_shim_binary_log_uri_hands_the_output_to_a_logging_driver,
    go_shim_binary_log_uri_hands_the_output_to_a_logging_driver);

/// A shim started for a task whose Create never came (the daemon was killed
/// in between) answers Connect with task pid 0, as containerd's shim does,
/// and exits at Shutdown: how a restarted daemon finds and removes it (the
/// crash suite met it as a shim no task owned).
#[tokio::test(flavor = "multi_thread")]
async fn a_shim_without_its_task_connects_with_pid_0_and_exits_at_shutdown() {
    let d = DirectShim::start("shimnotask-", &format!("nt{}", std::process::id())).await;
    assert_eq!(d.pids().len(), 1);
    let s = d.connect().await;
    let (shim_pid, task_pid) = s.connect_info().await.unwrap();
    assert_eq!(task_pid, 0, "no task");
    assert_eq!(d.pids(), [shim_pid]);
    s.shutdown().await.unwrap();
    d.expect_exit().await;
}

/// A Create whose connection closes before the answer (a daemon killed
/// mid-call) still completes in stevedore's shim, as a Go shim's handler
/// runs to its end: the task is there for a restarted daemon to find, and
/// it goes with Kill, Delete and Shutdown. (Cut short, it left a task
/// without a process in the shim, which then ignored every Shutdown.)
#[tokio::test(flavor = "multi_thread")]
async fn a_create_whose_caller_went_away_completes() {
    use std::io::Write;
    let id = format!("gone{}", std::process::id());
    let d = DirectShim::start("shimgone-", &id).await;
    let (rootfs, bundle, addr) = (&d.rootfs, &d.bundle, &d.addr);
    // CreateTaskRequest { id, bundle, rootfs: [Mount { type, source,
    // options }] } in a ttrpc request frame, written, then the connection
    // closed without reading the answer
    fn field(n: u8, data: &[u8]) -> Vec<u8> {
        assert!(data.len() < 128 * 128);
        let mut v = vec![(n << 3) | 2];
        let mut len = data.len();
        while len >= 0x80 {
            v.push((len as u8) | 0x80);
            len >>= 7;
        }
        v.push(len as u8);
        v.extend_from_slice(data);
        v
    }
    let src = rootfs.display().to_string();
    let mount = [
        field(1, b"bind"),
        field(2, src.as_bytes()),
        field(4, b"rbind"),
        field(4, b"rw"),
    ]
    .concat();
    let create = [
        field(1, id.as_bytes()),
        field(2, bundle.path.display().to_string().as_bytes()),
        field(3, &mount),
    ]
    .concat();
    let req = [
        field(1, b"containerd.task.v2.Task"),
        field(2, b"Create"),
        field(3, &create),
    ]
    .concat();
    let mut frame = (req.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&1u32.to_be_bytes());
    frame.extend_from_slice(&[1, 0]);
    frame.extend_from_slice(&req);
    {
        let mut c =
            std::os::unix::net::UnixStream::connect(addr.trim_start_matches("unix://")).unwrap();
        c.write_all(&frame).unwrap();
    }
    let s = d.connect().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, pid) = s.connect_info().await.unwrap();
        if pid != 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the Create did not complete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.kill("", 9, false).await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.wait("")).await;
    s.delete_process("").await.unwrap();
    s.shutdown().await.unwrap();
    d.expect_exit().await;
    let _ = stevedore_sys::mount::unmount_all(&bundle.path.join("rootfs"));
}
