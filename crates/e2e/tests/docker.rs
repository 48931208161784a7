//! Docker Engine runs unchanged against stevedored (issue 14): `dockerd
//! --containerd <stevedored socket>` for Debian's Docker 20.10 and for Docker
//! 28 with the containerd image store, each on stevedore's own shim and on
//! containerd's Go shim (so a failure on both is the daemon's, one on
//! stevedore's shim only is the shim's). Images come from a real
//! `docker-registry` on 127.0.0.1; containers have no network.
//!
//! Every behaviour is one function run by four tests,
//! `<behaviour>::docker{20,28}_{stevedore,go}_shim`, so
//! `cargo test -p stevedore-e2e --test docker <behaviour>` picks one and the
//! harness runs the combinations in parallel.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stevedore_e2e::docker::{Dockerd, Engine};
use stevedore_e2e::{busybox_image, require_tool, Daemon, Shim, Watch};
use stevedore_remote::testutil::TestRegistry;

/// Generates `mod <behaviour> { docker20_stevedore_shim, docker20_go_shim,
/// docker28_stevedore_shim, docker28_go_shim }`.
macro_rules! on_both_engines_and_shims {
    ($($f:ident),* $(,)?) => {$(
        mod $f {
            use super::*;

            #[test]
            fn docker20_stevedore_shim() {
                super::$f(Engine::Docker20, Shim::Stevedore);
            }

            #[test]
            fn docker20_go_shim() {
                super::$f(Engine::Docker20, Shim::Go);
            }

            #[test]
            fn docker28_stevedore_shim() {
                super::$f(Engine::Docker28, Shim::Stevedore);
            }

            #[test]
            fn docker28_go_shim() {
                super::$f(Engine::Docker28, Shim::Go);
            }
        }
    )*};
}

/// For Docker 28 only: `mod <behaviour> { docker28_stevedore_shim,
/// docker28_go_shim }` (Docker 20.10 keeps images in its graphdriver).
macro_rules! on_docker28_and_both_shims {
    ($($f:ident),* $(,)?) => {$(
        mod $f {
            use super::*;

            #[test]
            fn docker28_stevedore_shim() {
                super::$f(Engine::Docker28, Shim::Stevedore);
            }

            #[test]
            fn docker28_go_shim() {
                super::$f(Engine::Docker28, Shim::Go);
            }
        }
    )*};
}

on_docker28_and_both_shims!(builds_commits_saves_loads_pushes_and_removes_images_in_stevedore);

on_both_engines_and_shims!(
    pulls_runs_execs_pauses_stops_and_removes_containers,
    enforces_memory_limits_reports_oom_and_applies_restart_policies,
    run_exits_127_for_a_missing_command_and_126_for_an_unrunnable_one,
    live_restore_keeps_containers_across_a_dockerd_restart,
    keeps_containers_and_their_exits_across_a_stevedored_restart,
    stats_report_cgroup_usage_without_crashing_dockerd,
);

/// stevedored, a registry holding busybox, and dockerd on top; dockerd is
/// stopped first (fields drop in order).
struct Setup {
    docker: Dockerd,
    daemon: Daemon,
    /// `127.0.0.1:<port>/library/busybox:latest`.
    image: String,
    /// The image's manifest digest.
    digest: String,
    _registry: TestRegistry,
    _image_dir: tempfile::TempDir,
}

fn setup(engine: Engine, shim: Shim, extra: &[&str]) -> Setup {
    let image_dir = tempfile::tempdir().unwrap();
    let img = busybox_image(image_dir.path());
    let registry = TestRegistry::start();
    let image = format!("{}/library/busybox:latest", registry.host());
    let o = std::process::Command::new(require_tool("skopeo", "skopeo"))
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .arg(format!("oci:{}", img.oci_dir.display()))
        .arg(format!("docker://{image}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "skopeo copy: {o:?}");
    let daemon = Daemon::start_with_shim(shim);
    let insecure = format!("--insecure-registry={}", registry.host());
    let mut flags = vec![insecure.as_str()];
    flags.extend_from_slice(extra);
    let docker = Dockerd::start(engine, &daemon.socket, &flags);
    Setup {
        docker,
        daemon,
        image,
        digest: img.digest,
        _registry: registry,
        _image_dir: image_dir,
    }
}

impl Setup {
    fn pull(&self) -> String {
        self.docker.docker_ok(&["pull", &self.image])
    }

    /// `docker run -d --network none [flags] <image> <cmd>`; returns the id.
    fn run_detached(&self, flags: &[&str], cmd: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--network", "none"];
        args.extend_from_slice(flags);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        let id = self.docker.docker_ok(&args).trim().to_string();
        assert_eq!(id.len(), 64, "container id: {id}");
        id
    }

    /// `docker run --rm --network none [flags] <image> <cmd>`.
    fn run(&self, flags: &[&str], cmd: &[&str]) -> Output {
        let mut args = vec!["run", "--network", "none"];
        args.extend_from_slice(flags);
        args.push(&self.image);
        args.extend_from_slice(cmd);
        self.docker.docker(&args)
    }

    fn pid(&self, name: &str) -> i32 {
        let pid: i32 = self.docker.inspect(name, "{{.State.Pid}}").parse().unwrap();
        assert!(pid > 0, "{name} has no pid");
        pid
    }

    /// stevedored's view of dockerd's tasks: `ctr -n moby tasks ls`.
    fn tasks(&self) -> String {
        self.daemon.ctr_ok(&["-n", "moby", "tasks", "ls"])
    }

    /// Everything a failing assertion should show.
    fn logs(&self) -> String {
        format!(
            "dockerd log:\n{}\nstevedored log (tail):\n{}",
            self.docker.tail_log(),
            tail(&self.daemon.log(), 40)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Poll `f` until it returns Some, failing with `what` after `timeout`.
fn await_some<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a `docker events --format '{{json .}}'` line of container
/// `name` with `action` and, if given, that exit code.
fn expect_event(events: &Watch, name: &str, action: &str, exit_code: Option<i32>) {
    let name = format!("\"name\":\"{name}\"");
    let action = format!("\"Action\":\"{action}\"");
    let code = exit_code.map(|c| format!("\"exitCode\":\"{c}\""));
    let mut needles = vec![name.as_str(), action.as_str()];
    needles.extend(code.as_deref());
    events.expect_line(&needles, Duration::from_secs(30));
}

/// A cgroup file of process `pid`: `v1_file` in its cgroup of the v1
/// `controller` hierarchy, or `v2_file` in its unified cgroup.
fn cgroup_file(pid: i32, controller: &str, v1_file: &str, v2_file: &str) -> PathBuf {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next().unwrap(), parts.next().unwrap());
        if controllers.split(',').any(|c| c == controller) {
            return PathBuf::from(format!("/sys/fs/cgroup/{controller}{path}/{v1_file}"));
        }
    }
    let path = cgroups
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no {controller} cgroup for {pid}: {cgroups}"));
    PathBuf::from(format!("/sys/fs/cgroup{path}/{v2_file}"))
}

fn read_trimmed(p: &PathBuf) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
        .trim()
        .to_string()
}

/// Whether the cgroup of `pid` is frozen (docker pause).
fn frozen(pid: i32) -> bool {
    let f = cgroup_file(pid, "freezer", "freezer.state", "cgroup.freeze");
    matches!(read_trimmed(&f).as_str(), "FROZEN" | "1")
}

/// A container that prints `started`, then ticks, and exits 3 on SIGTERM.
const TRAPPING: &[&str] = &[
    "sh",
    "-c",
    "trap 'exit 3' TERM; echo started; while true; do echo tick; sleep 0.1; done",
];

fn pulls_runs_execs_pauses_stops_and_removes_containers(engine: Engine, shim: Shim) {
    let s = setup(engine, shim, &[]);
    let d = &s.docker;
    let events = d.events(unix_now().saturating_sub(1));

    // docker version and info name stevedored's Version answer as containerd's
    let ctr_version = s.daemon.ctr_ok(&["version"]);
    let server = ctr_version.split("Server:").nth(1).unwrap();
    let field = |k: &str| {
        server
            .lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {k} in ctr version: {ctr_version}"))
    };
    let (version, revision) = (field("Version:"), field("Revision:"));
    let server: serde_json::Value =
        serde_json::from_str(&d.docker_ok(&["version", "--format", "{{json .Server}}"])).unwrap();
    let containerd = server["Components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["Name"] == "containerd")
        .unwrap_or_else(|| panic!("no containerd component: {server}"));
    assert_eq!(containerd["Version"], version.as_str(), "{server}");
    assert_eq!(
        containerd["Details"]["GitCommit"],
        revision.as_str(),
        "{server}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&d.docker_ok(&["info", "--format", "{{json .}}"])).unwrap();
    assert_eq!(info["ContainerdCommit"]["ID"], revision.as_str());
    if engine == Engine::Docker28 {
        // the containerd image store: images are stevedore's
        assert_eq!(info["Driver"], "overlayfs", "{}", info["DriverStatus"]);
        assert!(
            info["DriverStatus"]
                .to_string()
                .contains("io.containerd.snapshotter.v1"),
            "{}",
            info["DriverStatus"]
        );
    }

    // pull from the registry
    let pulled = s.pull();
    assert!(
        pulled.contains(&format!("Digest: {}", s.digest)),
        "{pulled}"
    );
    let repo = s.image.trim_end_matches(":latest");
    let digests = d.docker_ok(&["image", "inspect", "-f", "{{json .RepoDigests}}", &s.image]);
    assert!(
        digests.contains(&format!("{repo}@{}", s.digest)),
        "{digests}"
    );
    if engine == Engine::Docker28 {
        let check = s.daemon.ctr_ok(&["-n", "moby", "images", "check"]);
        let line = check
            .lines()
            .find(|l| l.starts_with(&s.image))
            .unwrap_or_else(|| panic!("{} not in stevedore's images: {check}", s.image));
        assert!(line.contains("complete"), "{check}");
    }

    // run: output, stderr and exit codes
    let o = s.run(&["--rm"], &["echo", "hello"]);
    assert!(o.status.success(), "{o:?}\n{}", s.logs());
    assert_eq!(stdout(&o), "hello\n");
    let o = s.run(&["--rm"], &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{o:?}\n{}", s.logs());
    assert_eq!(stdout(&o), "out\n");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("err\n"),
        "{o:?}"
    );
    // run -i: stdin reaches the container, its end is EOF
    let mut args = vec!["run", "--rm", "-i", "--network", "none", s.image.as_str()];
    args.extend(["sh", "-c", "cat; exit 2"]);
    let o = d.docker_with_stdin(&args, b"in\nput\n");
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_eq!(stdout(&o), "in\nput\n");

    // run -d: a task in stevedored's moby namespace
    let id = s.run_detached(&["--name", "lc"], TRAPPING);
    let pid = s.pid("lc");
    let tasks = s.tasks();
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&id) && l.contains(&pid.to_string()) && l.contains("RUNNING")),
        "{tasks}"
    );
    await_some(
        "lc's first output in docker logs",
        Duration::from_secs(20),
        || {
            stdout(&d.docker(&["logs", "lc"]))
                .starts_with("started\n")
                .then_some(())
        },
    );

    // exec: output, exit codes, stdin
    assert_eq!(d.docker_ok(&["exec", "lc", "echo", "inexec"]), "inexec\n");
    let o = d.docker(&["exec", "lc", "sh", "-c", "exit 5"]);
    assert_eq!(o.status.code(), Some(5), "{o:?}\n{}", s.logs());
    let o = d.docker_with_stdin(&["exec", "-i", "lc", "cat"], b"piped\nlines\n");
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "piped\nlines\n");
    // a terminal: exec -t and run -t (output through the pty, \r\n)
    let o = d.docker(&["exec", "-t", "lc", "sh", "-c", "tty; exit 6"]);
    assert_eq!(o.status.code(), Some(6), "{o:?}");
    assert!(stdout(&o).starts_with("/dev/pts/"), "{o:?}");
    let o = s.run(&["--rm", "-t"], &["sh", "-c", "tty; exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(stdout(&o).starts_with("/dev/pts/"), "{o:?}");

    // top lists the container's processes
    let top = d.docker_ok(&["top", "lc"]);
    assert!(
        top.lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some(&pid.to_string())),
        "pid {pid} not in top:\n{top}"
    );

    // pause freezes the cgroup, unpause thaws it
    d.docker_ok(&["pause", "lc"]);
    assert_eq!(d.inspect("lc", "{{.State.Status}}"), "paused");
    assert!(frozen(pid), "lc paused but its cgroup is not frozen");
    assert!(s.tasks().contains("PAUSED"), "{}", s.tasks());
    d.docker_ok(&["unpause", "lc"]);
    assert_eq!(d.inspect("lc", "{{.State.Status}}"), "running");
    assert!(!frozen(pid), "lc unpaused but its cgroup is frozen");

    // stop delivers SIGTERM (the trap exits 3, well before the 10 s kill)
    let t = Instant::now();
    d.docker_ok(&["stop", "lc"]);
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "stop took {:?}",
        t.elapsed()
    );
    assert_eq!(
        d.inspect("lc", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 3"
    );
    // start runs it again, kill is SIGKILL
    d.docker_ok(&["start", "lc"]);
    assert_eq!(d.inspect("lc", "{{.State.Status}}"), "running");
    let pid2 = s.pid("lc");
    assert_ne!(pid, pid2, "start reused the old process");
    d.docker_ok(&["kill", "lc"]);
    d.await_inspect(
        "lc",
        "{{.State.Status}} {{.State.ExitCode}}",
        "exited 137",
        Duration::from_secs(20),
    );

    // rm -f removes a running container, from stevedored too
    d.docker_ok(&["start", "lc"]);
    d.docker_ok(&["rm", "-f", "lc"]);
    let o = d.docker(&["inspect", "lc"]);
    assert!(!o.status.success(), "lc still exists: {o:?}");
    await_some("lc gone from stevedored", Duration::from_secs(20), || {
        let containers = s.daemon.ctr_ok(&["-n", "moby", "containers", "ls", "-q"]);
        (!containers.contains(&id) && !s.tasks().contains(&id)).then_some(())
    });

    // docker events saw it all, in order (die and exec_die come from
    // stevedored's /tasks/exit events)
    expect_event(&events, "lc", "create", None);
    expect_event(&events, "lc", "start", None);
    expect_event(&events, "lc", "exec_die", Some(5));
    expect_event(&events, "lc", "pause", None);
    expect_event(&events, "lc", "unpause", None);
    expect_event(&events, "lc", "die", Some(3));
    expect_event(&events, "lc", "start", None);
    expect_event(&events, "lc", "die", Some(137));
    expect_event(&events, "lc", "start", None);
    expect_event(&events, "lc", "destroy", None);
}

fn run_exits_127_for_a_missing_command_and_126_for_an_unrunnable_one(engine: Engine, shim: Shim) {
    let s = setup(engine, shim, &[]);
    s.pull();
    // docker maps the runtime's error text (carried in Tasks.Create's
    // error) to these codes, so the text must reach dockerd
    let o = s.run(&["--rm"], &["nosuchcmd"]);
    assert_eq!(o.status.code(), Some(127), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("executable file not found"), "{err}");
    let o = s.run(&["--rm"], &["/etc/passwd"]);
    assert_eq!(o.status.code(), Some(126), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("permission denied"), "{err}");
}

fn enforces_memory_limits_reports_oom_and_applies_restart_policies(engine: Engine, shim: Shim) {
    let s = setup(engine, shim, &[]);
    let d = &s.docker;
    s.pull();
    let events = d.events(unix_now().saturating_sub(1));

    // -m reaches the container's memory cgroup
    s.run_detached(&["--name", "mem", "-m", "32m"], &["sleep", "1000"]);
    assert_eq!(d.inspect("mem", "{{.HostConfig.Memory}}"), "33554432");
    let limit = cgroup_file(
        s.pid("mem"),
        "memory",
        "memory.limit_in_bytes",
        "memory.max",
    );
    assert_eq!(read_trimmed(&limit), "33554432");
    d.docker_ok(&["rm", "-f", "mem"]);

    // the memory cgroup kills a container past its limit: OOMKilled and
    // exit code 137, with the OOM event before the exit. The Go shim (1.6
    // and 2.1) watches for OOM only once `runc start` returned and
    // publishes OOM and exit from different goroutines, so with it the
    // exit can come first or the OOM not at all (containerd issues 8180,
    // 8893); stevedored then forwards the OOM the cgroup counted before
    // the exit (services/task_oom.rs), which this hog, killed in the
    // task's first milliseconds, exercises under load
    let o = s.run(
        &["--name", "oom", "-m", "16m", "--memory-swap", "16m"],
        &["sh", "-c", "head -c 200m /dev/zero | tail > /dev/null"],
    );
    assert_eq!(o.status.code(), Some(137), "{o:?}\n{}", s.logs());
    assert_eq!(
        d.inspect("oom", "{{.State.OOMKilled}} {{.State.ExitCode}}"),
        "true 137",
        "{}",
        s.logs()
    );
    expect_event(&events, "oom", "oom", None);
    expect_event(&events, "oom", "die", Some(137));

    // on-failure:2 restarts a failing container twice, then leaves it
    s.run_detached(
        &["--name", "onfail", "--restart", "on-failure:2"],
        &["sh", "-c", "exit 4"],
    );
    d.await_inspect(
        "onfail",
        "{{.RestartCount}} {{.State.Status}} {{.State.ExitCode}}",
        "2 exited 4",
        Duration::from_secs(60),
    );
    // always restarts it whatever its exit code, until docker stop
    s.run_detached(
        &["--name", "always", "--restart", "always"],
        &["sh", "-c", "sleep 0.2; exit 0"],
    );
    await_some("two restarts of `always`", Duration::from_secs(60), || {
        let n: u32 = d.inspect("always", "{{.RestartCount}}").parse().unwrap();
        (n >= 2).then_some(())
    });
    d.docker_ok(&["stop", "always"]);
    assert_eq!(d.inspect("always", "{{.State.Status}}"), "exited");
    let count = d.inspect("always", "{{.RestartCount}}");
    // no restart after a stop: stays exited with the same count
    let o = d.docker_ok(&["wait", "always"]);
    assert_eq!(o.trim(), d.inspect("always", "{{.State.ExitCode}}"));
    assert_eq!(
        d.inspect("always", "{{.State.Status}} {{.RestartCount}}"),
        format!("exited {count}")
    );
}

fn live_restore_keeps_containers_across_a_dockerd_restart(engine: Engine, shim: Shim) {
    let mut s = setup(engine, shim, &["--live-restore"]);
    s.pull();
    let id = s.run_detached(&["--name", "lr"], TRAPPING);
    let pid = s.pid("lr");
    s.docker.stop();
    // dockerd is gone, the container runs on under stevedored
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "lr died with dockerd\n{}",
        s.logs()
    );
    let tasks = s.tasks();
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("RUNNING")),
        "{tasks}"
    );
    s.docker.start_again();
    let d = &s.docker;
    assert_eq!(
        d.inspect("lr", "{{.State.Status}} {{.State.Pid}}"),
        format!("running {pid}"),
        "{}",
        s.logs()
    );
    assert_eq!(d.docker_ok(&["exec", "lr", "echo", "alive"]), "alive\n");
    // dockerd reattached to its output: logs keep growing
    let ticks = |d: &Dockerd| stdout(&d.docker(&["logs", "lr"])).lines().count();
    let before = ticks(d);
    await_some(
        "new log lines after the restore",
        Duration::from_secs(20),
        || (ticks(d) > before).then_some(()),
    );
    // and to its exit
    d.docker_ok(&["stop", "lr"]);
    assert_eq!(
        d.inspect("lr", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 3",
        "{}",
        s.logs()
    );
    let o = s.run(&["--rm"], &["echo", "after"]);
    assert_eq!(stdout(&o), "after\n", "{o:?}");
}

fn keeps_containers_and_their_exits_across_a_stevedored_restart(engine: Engine, shim: Shim) {
    let mut s = setup(engine, shim, &[]);
    s.pull();
    let kept = s.run_detached(&["--name", "kept"], TRAPPING);
    let kept_pid = s.pid("kept");
    // `gone` exits 6 once told to, which happens while stevedored is down
    let signal_dir = tempfile::tempdir().unwrap();
    let bind = format!("{}:/w", signal_dir.path().display());
    s.run_detached(
        &["--name", "gone", "-v", &bind],
        &["sh", "-c", "until [ -e /w/go ]; do sleep 0.1; done; exit 6"],
    );
    let gone_pid = s.pid("gone");
    s.daemon.stop();
    std::fs::write(signal_dir.path().join("go"), "").unwrap();
    await_some("gone's exit", Duration::from_secs(20), || {
        (!std::path::Path::new(&format!("/proc/{gone_pid}")).exists()).then_some(())
    });
    s.daemon.spawn();
    // the exit reaches dockerd once stevedored is back (the shim's
    // /tasks/exit is delivered late, as containerd's shims retry)
    s.docker.await_inspect(
        "gone",
        "{{.State.Status}} {{.State.ExitCode}}",
        "exited 6",
        Duration::from_secs(30),
    );
    let d = &s.docker;
    // the running one is still served: exec, then stop with its exit
    assert_eq!(
        d.inspect("kept", "{{.State.Status}} {{.State.Pid}}"),
        format!("running {kept_pid}")
    );
    assert!(s.tasks().contains(&kept), "{}", s.tasks());
    assert_eq!(d.docker_ok(&["exec", "kept", "echo", "alive"]), "alive\n");
    d.docker_ok(&["stop", "kept"]);
    assert_eq!(
        d.inspect("kept", "{{.State.Status}} {{.State.ExitCode}}"),
        "exited 3",
        "{}",
        s.logs()
    );
    let o = s.run(&["--rm"], &["echo", "after"]);
    assert_eq!(stdout(&o), "after\n", "{o:?}");
}

fn builds_commits_saves_loads_pushes_and_removes_images_in_stevedore(engine: Engine, shim: Shim) {
    let s = setup(engine, shim, &[]);
    let d = &s.docker;
    s.pull();
    let images = || s.daemon.ctr_ok(&["-n", "moby", "images", "ls", "-q"]);

    // commit: the container's changes (Diff service) become an image
    let o = s.run(&["--name", "cm"], &["sh", "-c", "echo committed > /hello"]);
    assert!(o.status.success(), "{o:?}");
    d.docker_ok(&["commit", "cm", "mine:1"]);
    assert!(
        images().contains("docker.io/library/mine:1"),
        "{}",
        images()
    );
    let o = s.docker.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "mine:1",
        "cat",
        "/hello",
    ]);
    assert_eq!(stdout(&o), "committed\n", "{o:?}");

    // save and load round trip through stevedore's content store
    let tar = d.dir.path().join("mine.tar");
    d.docker_ok(&["save", "-o", tar.to_str().unwrap(), "mine:1"]);
    d.docker_ok(&["rm", "cm"]);
    d.docker_ok(&["rmi", "mine:1"]);
    assert!(!images().contains("mine:1"), "{}", images());
    let loaded = d.docker_ok(&["load", "-i", tar.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: mine:1"), "{loaded}");
    let o = s.docker.docker(&[
        "run",
        "--rm",
        "--network",
        "none",
        "mine:1",
        "cat",
        "/hello",
    ]);
    assert_eq!(stdout(&o), "committed\n", "{o:?}");

    // push to the registry, remove, pull back
    let registry = s.image.split('/').next().unwrap();
    let remote = format!("{registry}/mine:1");
    d.docker_ok(&["tag", "mine:1", &remote]);
    d.docker_ok(&["push", &remote]);
    d.docker_ok(&["rmi", "mine:1", &remote]);
    d.docker_ok(&["pull", &remote]);
    let o = s
        .docker
        .docker(&["run", "--rm", "--network", "none", &remote, "cat", "/hello"]);
    assert_eq!(stdout(&o), "committed\n", "{o:?}");

    // the classic builder runs a step in a container and commits it
    let ctx = d.dir.path().join("ctx");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n",
            s.image
        ),
    )
    .unwrap();
    let o = d
        .command(&["build", "-t", "built:1", ctx.to_str().unwrap()])
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}\n{}", s.logs());
    let o = s
        .docker
        .docker(&["run", "--rm", "--network", "none", "built:1"]);
    assert_eq!(stdout(&o), "built\n", "{o:?}");

    // removing every image leaves nothing behind once stevedored collects
    d.docker_ok(&["image", "prune", "-a", "-f"]);
    assert_eq!(images().trim(), "", "images left in stevedore");
    await_some(
        "content and snapshots collected",
        Duration::from_secs(30),
        || {
            let content = s.daemon.ctr_ok(&["-n", "moby", "content", "ls", "-q"]);
            let snapshots = s.daemon.ctr_ok(&["-n", "moby", "snapshots", "ls"]);
            (content.trim().is_empty() && snapshots.lines().count() <= 1).then_some(())
        },
    );
}

fn stats_report_cgroup_usage_without_crashing_dockerd(engine: Engine, shim: Shim) {
    let mut s = setup(engine, shim, &[]);
    s.pull();
    s.run_detached(&["--name", "st", "-m", "64m"], &["sleep", "1000"]);
    let o = s
        .docker
        .docker(&["stats", "--no-stream", "--format", "{{json .}}", "st"]);
    let alive = s.docker.is_running();
    assert!(
        alive && o.status.success(),
        "docker stats failed (dockerd running: {alive}): {o:?}\n{}",
        s.logs()
    );
    let stats: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    // usage / limit: the limit is the container's memory cgroup limit
    let mem = stats["MemUsage"].as_str().unwrap();
    let (usage, limit) = mem.split_once(" / ").unwrap();
    assert_eq!(limit, "64MiB", "{stats}");
    assert_ne!(usage, "0B", "{stats}");
    assert_eq!(stats["PIDs"], "1", "{stats}");
    assert!(s.docker.docker(&["version"]).status.success());
}
