//! The task manager driving Debian's `containerd-shim-runc-v2` and runc for
//! real: bundle, shim start, ttrpc task API, forwarded events, shim death.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stevedore_runtime::spec::default_spec;
use stevedore_runtime::*;
use stevedore_types::Mount;

fn require(tool: &str, package: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .any(|d| Path::new(d).join(tool).is_file());
    assert!(
        found,
        "{tool} is required by this test: apt-get install {package}"
    );
}

/// A directory with busybox-static and its applets: a minimal rootfs.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    require("busybox", "busybox-static");
    let root = dir.join("busybox-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "cat", "true", "ls", "ps"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for d in ["proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

struct Exits;
impl ExitEvents for Exits {
    fn shim_died(&self, namespace: &str, id: &str, exit: &Exit) -> Vec<Event> {
        vec![Event {
            timestamp: std::time::SystemTime::now(),
            namespace: namespace.into(),
            topic: "/tasks/exit".into(),
            event: Some(Any {
                type_url: format!("test.exit/{id}/{}", exit.status),
                value: vec![],
            }),
        }]
    }
}

struct Env {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    manager: Arc<TaskManager>,
    cfg: ManagerConfig,
    sink: EventSink,
    events: Arc<Mutex<Vec<Event>>>,
    _server: EventsServer,
}

async fn env() -> Env {
    require("containerd-shim-runc-v2", "containerd");
    require("runc", "runc");
    let dir = tempfile::Builder::new()
        .prefix("rt-")
        .tempdir_in("/tmp")
        .unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let grpc = dir.path().join("d.sock");
    let ttrpc = dir.path().join("d.sock.ttrpc");
    let events: Arc<Mutex<Vec<Event>>> = Arc::default();
    let ev = events.clone();
    let sink: EventSink = Arc::new(move |e| {
        ev.lock().unwrap().push(e);
        Ok(())
    });
    let server = EventsServer::serve(&ttrpc, sink.clone()).await.unwrap();
    let cfg = ManagerConfig {
        state: dir.path().join("state"),
        root: dir.path().join("root"),
        env: ShimEnv {
            grpc_address: grpc.display().to_string(),
            ttrpc_address: ttrpc.display().to_string(),
            publish_binary: PathBuf::from("/bin/true"),
            debug: false,
        },
        shims: HashMap::new(),
    };
    let manager = TaskManager::new(cfg.clone(), sink.clone(), Arc::new(Exits));
    Env {
        dir,
        rootfs,
        manager,
        cfg,
        sink,
        events,
        _server: server,
    }
}

impl Env {
    fn ns(&self) -> String {
        // unique per test: cgroups live at /<namespace>/<id>
        let base = self.dir.path().file_name().unwrap().to_string_lossy();
        base.replace(|c: char| !c.is_ascii_alphanumeric(), "")
    }

    fn task(&self, id: &str, args: &[&str], stdout: &Path) -> TaskSpec {
        let mut spec = default_spec(&self.ns(), id);
        // one parent cgroup for all test runs, a unique leaf per task
        spec.linux.as_mut().unwrap().cgroups_path = format!("/stevedore-test/{}-{id}", self.ns());
        spec.with_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        // runc loads the default seccomp profile for real in every test
        spec.with_default_seccomp();
        TaskSpec {
            spec: spec.to_json(),
            runtime: "io.containerd.runc.v2".into(),
            runtime_options: None,
            create: CreateOpts {
                rootfs: vec![Mount {
                    kind: "bind".into(),
                    source: self.rootfs.display().to_string(),
                    target: String::new(),
                    options: vec!["rbind".into(), "rw".into()],
                }],
                stdout: stdout.display().to_string(),
                stderr: stdout.display().to_string(),
                ..Default::default()
            },
        }
    }

    fn topics(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.topic.clone())
            .collect()
    }
}

/// Create a FIFO and read it to EOF on a thread.
fn fifo_reader(path: &Path) -> std::thread::JoinHandle<String> {
    stevedore_sys::mkfifo(path, 0o600).unwrap();
    let p = path.to_path_buf();
    std::thread::spawn(move || std::fs::read_to_string(p).unwrap_or_default())
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not reached in 10s");
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_echo_through_runc_shim_and_reports_events() {
    let e = env().await;
    let ns = e.ns();
    let out = e.dir.path().join("stdout");
    let reader = fifo_reader(&out);
    let (shim, pid) = e
        .manager
        .create(&ns, "echo", e.task("echo", &["/bin/echo", "hi"], &out))
        .await
        .unwrap();
    assert!(pid > 0);
    assert!(shim.bundle.path.join("config.json").is_file());
    assert_eq!(shim.state("").await.unwrap().status, Status::Created);
    assert_eq!(e.manager.list(&ns).len(), 1);
    shim.start("").await.unwrap();
    let exit = shim.wait("").await.unwrap();
    assert_eq!(exit.status, 0);
    assert_eq!(reader.join().unwrap(), "hi\n");
    let st = shim.state("").await.unwrap();
    assert_eq!(st.status, Status::Stopped);
    let exit = e.manager.delete(&ns, "echo").await.unwrap();
    assert_eq!(exit.status, 0);
    assert!(!shim.bundle.path.exists(), "bundle removed");
    assert!(e.manager.list(&ns).is_empty());
    wait_for(|| e.topics().contains(&"/tasks/delete".to_string())).await;
    let topics = e.topics();
    for t in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(topics.contains(&t.to_string()), "{t} in {topics:?}");
    }
    assert!(e.events.lock().unwrap().iter().all(|ev| ev.namespace == ns));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_code_exec_pause_pids_stats_and_kill() {
    let e = env().await;
    let ns = e.ns();
    let out = e.dir.path().join("o1");
    let reader = fifo_reader(&out);
    let (shim, _) = e
        .manager
        .create(
            &ns,
            "three",
            e.task("three", &["/bin/sh", "-c", "exit 3"], &out),
        )
        .await
        .unwrap();
    shim.start("").await.unwrap();
    assert_eq!(shim.wait("").await.unwrap().status, 3);
    reader.join().unwrap();
    assert_eq!(e.manager.delete(&ns, "three").await.unwrap().status, 3);

    let out = e.dir.path().join("o2");
    let _reader = fifo_reader(&out);
    let (shim, pid) = e
        .manager
        .create(
            &ns,
            "sleeper",
            e.task("sleeper", &["/bin/sleep", "60"], &out),
        )
        .await
        .unwrap();
    assert_eq!(shim.start("").await.unwrap(), pid);
    assert_eq!(shim.state("").await.unwrap().status, Status::Running);

    // exec a process that writes to its own FIFO
    let eout = e.dir.path().join("exec-out");
    let ereader = fifo_reader(&eout);
    // ctr gives stdout and stderr their own FIFOs; sharing one races in the runc shim
    let eerr = e.dir.path().join("exec-err");
    let _err_reader = fifo_reader(&eerr);
    let mut process = default_spec(&ns, "sleeper").process.unwrap();
    process.args = vec![
        "/bin/sh".into(),
        "-c".into(),
        "echo from-exec; exit 7".into(),
    ];
    shim.exec(&ExecOpts {
        exec_id: "ex1".into(),
        stdout: eout.display().to_string(),
        stderr: eerr.display().to_string(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: serde_json::to_vec(&process).unwrap(),
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    shim.start("ex1").await.unwrap();
    assert_eq!(shim.wait("ex1").await.unwrap().status, 7);
    assert_eq!(ereader.join().unwrap(), "from-exec\n");
    assert_eq!(shim.delete_process("ex1").await.unwrap().status, 7);

    let pids = shim.pids().await.unwrap();
    assert!(pids.iter().any(|p| p.pid == pid), "{pids:?}");
    shim.pause().await.unwrap();
    assert_eq!(shim.state("").await.unwrap().status, Status::Paused);
    shim.resume().await.unwrap();
    assert_eq!(shim.state("").await.unwrap().status, Status::Running);
    let stats = shim.stats().await.unwrap().expect("stats");
    assert!(
        stats.type_url.contains("io.containerd.cgroups.v1.Metrics"),
        "{}",
        stats.type_url
    );

    shim.kill("", 9, false).await.unwrap();
    assert_eq!(shim.wait("").await.unwrap().status, 137);
    assert_eq!(e.manager.delete(&ns, "sleeper").await.unwrap().status, 137);
    wait_for(|| e.topics().contains(&"/tasks/resumed".to_string())).await;
    let topics = e.topics();
    for t in ["/tasks/exec-added", "/tasks/exec-started", "/tasks/paused"] {
        assert!(topics.contains(&t.to_string()), "{t} in {topics:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_shim_is_cleaned_up_and_reported() {
    let e = env().await;
    let ns = e.ns();
    let out = e.dir.path().join("o");
    let _reader = fifo_reader(&out);
    let (shim, pid) = e
        .manager
        .create(&ns, "victim", e.task("victim", &["/bin/sleep", "60"], &out))
        .await
        .unwrap();
    shim.start("").await.unwrap();
    let (shim_pid, task_pid) = shim.connect_info().await.unwrap();
    assert_eq!(task_pid, pid);
    let bundle = shim.bundle.path.clone();
    drop(shim);
    unsafe_kill(shim_pid);
    wait_for(|| e.manager.list(&ns).is_empty()).await;
    wait_for(|| !bundle.exists()).await;
    wait_for(|| {
        e.events.lock().unwrap().iter().any(|ev| {
            ev.event
                .as_ref()
                .is_some_and(|a| a.type_url.starts_with("test.exit/victim/"))
        })
    })
    .await;
    // the container process does not outlive its shim's cleanup
    wait_for(|| !Path::new(&format!("/proc/{pid}")).exists()).await;
}

/// Found by the crash suite (a kill in the middle of `ctr run -d`): the
/// daemon died after it started the task's shim and before the task's
/// Create reached it. After the restart the shim answered, so the task was
/// "recovered": a shim without a task that no list showed and nothing ever
/// removed, with its bundle. Recovery now removes such a shim and its
/// bundle, as containerd's `loadShims` does (containerd#6860). The crash is
/// replaced by its outcome: the bundle and shim that `create` makes before
/// calling Create, then a new manager recovering the state directory.
#[tokio::test(flavor = "multi_thread")]
async fn recovery_removes_a_shim_whose_task_was_never_created() {
    let e = env().await;
    let ns = e.ns();
    let out = e.dir.path().join("o");
    let t = e.task("half", &["/bin/true"], &out);
    let bundle = Bundle::create(&e.cfg.state, &e.cfg.root, &ns, "half", &t.spec).unwrap();
    // stevedore's shim answers Connect without a task (task pid 0); Debian's
    // Go shim drops the connection, which recovery already cleaned up
    let binary = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("containerd-shim-stevedore-v1");
    assert!(
        binary.is_file(),
        "{} not found: run `cargo build --workspace --bins` before the tests",
        binary.display()
    );
    let address = shim::start(&binary, &bundle, &e.cfg.env, None)
        .await
        .unwrap();
    bundle
        .write("shim-binary-path", &binary.display().to_string())
        .unwrap();
    if bundle.read("address").is_err() {
        bundle.write("address", &address).unwrap();
    }
    let s = Shim::connect(bundle.clone(), binary.clone(), &address)
        .await
        .unwrap();
    let (shim_pid, task_pid) = s.connect_info().await.unwrap();
    assert_eq!(task_pid, 0, "no task was created");
    drop(s);
    // the daemon restarts: a new manager over the same state
    let restarted = TaskManager::new(e.cfg.clone(), e.sink.clone(), Arc::new(Exits));
    let recovered = restarted.recover(|_, _| true).await.unwrap();
    assert_eq!(recovered, 0);
    assert!(restarted.list(&ns).is_empty());
    assert!(!bundle.path.exists(), "bundle removed");
    wait_for(|| !Path::new(&format!("/proc/{shim_pid}")).exists()).await;
    // a task that never was has no exit to report
    assert!(
        !e.events.lock().unwrap().iter().any(|ev| ev
            .event
            .as_ref()
            .is_some_and(|a| a.type_url.contains("/half/"))),
        "{:?}",
        e.topics()
    );
}

/// Found by the crash suite (a kill 45 ms into `ctr tasks start`): the
/// daemon died after it started the shim and before it recorded the shim's
/// binary in the bundle; recovery took the bundle for one no shim was
/// started for and removed it, leaving the shim running forever. The binary
/// is now recorded first. A stand-in shim reports what the bundle held when
/// it was started.
#[tokio::test(flavor = "multi_thread")]
async fn the_shim_binary_is_recorded_before_the_shim_starts() {
    let mut e = env().await;
    let fake = e.dir.path().join("fake-shim");
    let mark = e.dir.path().join("mark");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" start \"*) ;; *) exit 0;; esac\n\
             if [ -f shim-binary-path ]; then echo recorded > {m}; else echo missing > {m}; fi\n\
             echo refusing to start >&2\nexit 1\n",
            m = mark.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    e.cfg
        .shims
        .insert("io.containerd.fake.v1".into(), fake.clone());
    let manager = TaskManager::new(e.cfg.clone(), e.sink.clone(), Arc::new(Exits));
    let ns = e.ns();
    let out = e.dir.path().join("o");
    let mut t = e.task("early", &["/bin/true"], &out);
    t.runtime = "io.containerd.fake.v1".into();
    let Err(err) = manager.create(&ns, "early", t).await else {
        panic!("the stand-in shim refuses to start");
    };
    assert!(err.to_string().contains("refusing to start"), "{err}");
    assert_eq!(std::fs::read_to_string(&mark).unwrap().trim(), "recorded");
    // and the failed start left no bundle
    assert!(!e.cfg.state.join(&ns).join("early").exists());
}

fn unsafe_kill(pid: u32) {
    let st = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}
