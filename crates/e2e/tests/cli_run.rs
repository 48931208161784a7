//! `stevedore run`, `containers create` and `tasks start|exec|attach|wait|
//! metrics|pause|resume|kill|rm` against stevedored, on stevedore's own shim
//! (the default for io.containerd.runc.v2) and on containerd's Go shim
//! (mapped in the config); plus the ctr flows that need a pty, a user
//! namespace or another snapshotter, and `ctr events` showing task exits.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::Duration;
use stevedore_e2e::{busybox_image, require_tool, run_on_pty as on_pty, Daemon, GO_SHIM_CONFIG};

/// A test on stevedore's shim and one on containerd's Go shim.
macro_rules! on_both_shims {
    ($f:ident: $stevedore:ident, $go:ident) => {
        #[test]
        fn $stevedore() {
            $f(Shim::Stevedore);
        }

        #[test]
        fn $go() {
            $f(Shim::Go);
        }
    };
}

#[derive(Clone, Copy, Debug)]
enum Shim {
    Stevedore,
    Go,
}

fn setup(shim: Shim) -> (Daemon, tempfile::TempDir, String) {
    require_tool("runc", "runc");
    require_tool("containerd-shim-runc-v2", "containerd");
    let d = match shim {
        Shim::Stevedore => Daemon::start(),
        Shim::Go => Daemon::start_with_config(Some(GO_SHIM_CONFIG)),
    };
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    d.cli_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    (d, dir, img.name)
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The shim binary running task `id` (parent of its init process).
fn shim_of(d: &Daemon, id: &str) -> String {
    let out = d.cli_ok(&["-o", "json", "tasks", "ls"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pid = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id)
        .unwrap_or_else(|| panic!("task {id} not listed: {out}"))["pid"]
        .as_u64()
        .unwrap();
    stevedore_e2e::parent_cmdline(pid as u32)
}

fn run_prints_output_propagates_exit_codes_and_stdin(shim: Shim) {
    let (d, _dir, img) = setup(shim);
    assert_eq!(d.cli_ok(&["run", "--rm", &img, "r1", "echo", "hi"]), "hi\n");
    let o = d.cli(&[
        "run",
        "--rm",
        &img,
        "r2",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(text(&o), "out\n");
    assert_eq!(String::from_utf8_lossy(&o.stderr), "err\n");
    // stdin reaches the container and its end ends `cat`
    let mut child = d
        .cli_command(&["run", "--rm", &img, "r3", "sh", "-c", "cat; echo done"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"line one\nline two\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o), "line one\nline two\ndone\n");
    // --env / --cwd / --user; image env kept
    let out = d.cli_ok(&[
        "run",
        "--rm",
        "--env",
        "A=b",
        "--cwd",
        "/tmp",
        "--user",
        "7:8",
        &img,
        "r4",
        "sh",
        "-c",
        "echo $A $PATH; pwd; id -u; id -g",
    ]);
    assert_eq!(
        out, "b /usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n/tmp\n7\n8\n",
        "{out}"
    );
    // --rm leaves neither the container nor its snapshot
    assert_eq!(d.cli_ok(&["containers", "ls", "-q"]), "");
    let snaps = d.cli_ok(&["snapshots", "ls"]);
    for id in ["r1", "r2", "r3", "r4"] {
        assert!(
            !snaps.lines().any(|l| l.starts_with(&format!("{id} "))),
            "{snaps}"
        );
    }
    // an unknown image is a clear error and creates nothing
    let o = d.cli(&["run", "--rm", "no/such:image", "r5", "true"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no/such:image"),
        "{o:?}"
    );
    assert_eq!(d.cli_ok(&["containers", "ls", "-q"]), "");
}

on_both_shims!(run_prints_output_propagates_exit_codes_and_stdin: stevedore_shim_run_prints_output_propagates_exit_codes_and_stdin, go_shim_run_prints_output_propagates_exit_codes_and_stdin);

fn detached_task_lifecycle(shim: Shim) {
    let (d, _dir, img) = setup(shim);
    d.cli_ok(&[
        "run",
        "-d",
        &img,
        "d1",
        "sh",
        "-c",
        "echo started; trap 'echo bye; exit 7' TERM; while true; do sleep 0.1; done",
    ]);
    let cmd = shim_of(&d, "d1");
    let expected = match shim {
        Shim::Stevedore => "containerd-shim-stevedore-v1",
        Shim::Go => "containerd-shim-runc-v2",
    };
    assert!(cmd.contains(expected), "{cmd}");
    assert!(d.cli_ok(&["tasks", "ls"]).contains("RUNNING"));
    let ps = d.cli_ok(&["tasks", "ps", "d1"]);
    assert!(ps.lines().count() >= 2, "{ps}");
    // exec: output and exit code
    let o = d.cli(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "d1",
        "sh",
        "-c",
        "echo in-exec; exit 4",
    ]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(text(&o), "in-exec\n");
    // metrics come from the task's cgroup
    let m: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-o", "json", "tasks", "metrics", "d1"])).unwrap();
    assert!(m["memory_usage"].as_u64().unwrap() > 0, "{m}");
    assert!(m["pids"].as_u64().unwrap() >= 1, "{m}");
    // pause / resume
    d.cli_ok(&["tasks", "pause", "d1"]);
    assert!(d.cli_ok(&["tasks", "ls"]).contains("PAUSED"));
    d.cli_ok(&["tasks", "resume", "d1"]);
    assert!(d.cli_ok(&["tasks", "ls"]).contains("RUNNING"));
    // attach sees what the task writes; TERM makes it say bye and exit 7
    let attach = d
        .cli_command(&["tasks", "attach", "d1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    d.cli_ok(&["tasks", "kill", "d1"]);
    let o = attach.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    let out = text(&o);
    assert!(out.contains("started") && out.contains("bye"), "{out:?}");
    let o = d.cli(&["tasks", "wait", "d1"]);
    assert_eq!(o.status.code(), Some(7));
    assert!(d.cli_ok(&["tasks", "rm", "d1"]).contains("exit status 7"));
    // the container stays until removed, with its snapshot
    assert_eq!(d.cli_ok(&["containers", "ls", "-q"]), "d1\n");
    d.cli_ok(&["containers", "rm", "d1"]);
    assert_eq!(d.cli_ok(&["containers", "ls", "-q"]), "");
    assert!(!d
        .cli_ok(&["snapshots", "ls"])
        .lines()
        .any(|l| l.starts_with("d1 ")));
}

on_both_shims!(detached_task_lifecycle: stevedore_shim_detached_task_supports_exec_metrics_pause_attach_kill_wait_rm, go_shim_detached_task_supports_exec_metrics_pause_attach_kill_wait_rm);

#[test]
fn containers_create_then_tasks_start_runs_the_image_config_command() {
    let (d, _dir, img) = setup(Shim::Stevedore);
    d.cli_ok(&[
        "containers",
        "create",
        "--label",
        "team=a",
        &img,
        "c1",
        "echo",
        "from-create",
    ]);
    let info: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["containers", "info", "c1"])).unwrap();
    assert_eq!(info["Labels"]["team"], "a");
    assert_eq!(
        info["Spec"]["process"]["args"],
        serde_json::json!(["echo", "from-create"])
    );
    // the default seccomp profile and containerd's default capabilities
    assert_eq!(
        info["Spec"]["linux"]["seccomp"]["defaultAction"],
        "SCMP_ACT_ERRNO"
    );
    assert_eq!(
        info["Spec"]["process"]["capabilities"]["bounding"]
            .as_array()
            .unwrap()
            .len(),
        14
    );
    assert_eq!(d.cli_ok(&["tasks", "start", "c1"]), "from-create\n");
    d.cli_ok(&["containers", "rm", "c1"]);
}

#[test]
fn stevedore_run_flags_reach_the_container() {
    let (d, dir, img) = setup(Shim::Stevedore);
    // default: only lo; --net-host: the host's interfaces
    let out = d.cli_ok(&["run", "--rm", &img, "n1", "ls", "/sys/class/net"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"], "{out}");
    let out = d.cli_ok(&[
        "run",
        "--rm",
        "--net-host",
        &img,
        "n2",
        "ls",
        "/sys/class/net",
    ]);
    assert!(out.split_whitespace().count() > 1, "{out}");
    // --read-only
    let o = d.cli(&["run", "--rm", "--read-only", &img, "ro", "touch", "/x"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only"),
        "{o:?}"
    );
    // --mount bind, read-only and read-write
    let host = dir.path().join("shared");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("f"), "from host").unwrap();
    let src = host.display().to_string();
    let out = d.cli_ok(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,src={src},dst=/data,options=rbind:rw"),
        &img,
        "m1",
        "sh",
        "-c",
        "cat /data/f; echo written > /data/g",
    ]);
    assert_eq!(out, "from host");
    assert_eq!(
        std::fs::read_to_string(host.join("g")).unwrap(),
        "written\n"
    );
    let o = d.cli(&[
        "run",
        "--rm",
        "--mount",
        &format!("type=bind,src={src},dst=/data,options=rbind:ro"),
        &img,
        "m2",
        "touch",
        "/data/h",
    ]);
    assert!(!o.status.success(), "{o:?}");
    // --memory-limit and --cpus land in the cgroup (v1 paths under /<ns>/<id>)
    let out = d.cli_ok(&[
        "run", "--rm", "--memory-limit", "67108864", "--cpus", "0.5", &img, "cg", "sh", "-c",
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us",
    ]);
    let v: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(v, ["67108864", "50000", "100000"], "{out}");
    // --privileged: all capabilities
    let caps = |extra: &[&str], id: &str| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[img.as_str(), id, "grep", "CapEff", "/proc/self/status"]);
        d.cli_ok(&args)
    };
    let plain = caps(&[], "p0");
    let privileged = caps(&["--privileged"], "p1");
    assert!(plain.contains("00000000a80425fb"), "{plain}");
    assert!(!privileged.contains("00000000a80425fb"), "{privileged}");
    // --runc-binary reaches the shim: crun refuses this host's hybrid cgroups
    // with its own reason (runc has none such), which proves it was crun
    // that ran; on a unified host it runs
    if std::path::Path::new("/usr/bin/crun").exists() {
        let o = d.cli(&["run", "--rm", "--runc-binary", "crun", &img, "cr", "true"]);
        let all = format!("{}{}", text(&o), String::from_utf8_lossy(&o.stderr));
        let hybrid = std::path::Path::new("/sys/fs/cgroup/memory").is_dir();
        if hybrid {
            assert!(
                all.contains("OCI runtime create failed: cgroups in hybrid mode not supported"),
                "{all}"
            );
        } else {
            assert!(o.status.success(), "{all}");
        }
    }
}

fn tty_run(shim: Shim) {
    let (d, _dir, img) = setup(shim);
    let cli = stevedore_e2e::bin("stevedore");
    let sock = d.socket.display().to_string();
    let (code, out) = on_pty(&[
        cli.to_str().unwrap(),
        "--address",
        &sock,
        "run",
        "--rm",
        "-t",
        &img,
        "t1",
        "sh",
        "-c",
        "tty; stty size; exit 5",
    ]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("/dev/pts/"), "{out:?}");
    assert!(out.contains("33 101"), "{out:?}");
    let ctr = require_tool("ctr", "containerd");
    let (code, out) = on_pty(&[
        ctr.to_str().unwrap(),
        "--address",
        &sock,
        "run",
        "--rm",
        "-t",
        &img,
        "t2",
        "sh",
        "-c",
        "tty; sleep 0.2; stty size",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("/dev/pts/") && out.contains("33 101"),
        "{out:?}"
    );
}

on_both_shims!(tty_run: stevedore_shim_run_with_a_tty_gets_a_pty_of_the_callers_size, go_shim_run_with_a_tty_gets_a_pty_of_the_callers_size);

#[test]
fn uidmap_runs_root_as_a_remapped_user_with_the_rootfs_shifted() {
    let (d, _dir, img) = setup(Shim::Stevedore);
    let out = d.cli_ok(&[
        "run",
        "--rm",
        "--uidmap",
        "0:100000:65536",
        &img,
        "u1",
        "sh",
        "-c",
        "cat /proc/self/uid_map; stat -c %u /bin/busybox; touch /ok && echo writable",
    ]);
    let v: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(v, ["0", "100000", "65536", "0", "writable"], "{out}");
    let out = d.ctr_ok(&[
        "run",
        "--rm",
        "--uidmap",
        "0:200000:65536",
        "--gidmap",
        "0:200000:65536",
        &img,
        "u2",
        "sh",
        "-c",
        "cat /proc/self/uid_map; stat -c %u:%g /bin/busybox",
    ]);
    let v: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(v, ["0", "200000", "65536", "0:0"], "{out}");
}

#[test]
fn ctr_run_with_the_native_snapshotter() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    d.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        img.oci_tar.to_str().unwrap(),
    ]);
    let out = d.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "native",
        &img.name,
        "n1",
        "echo",
        "native",
    ]);
    assert_eq!(out, "native\n");
    let out = d.cli_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "native",
        &img.name,
        "n2",
        "echo",
        "cli",
    ]);
    assert_eq!(out, "cli\n");
}

#[test]
fn ctr_events_show_task_lifecycle_with_the_exit_status() {
    let (d, _dir, img) = setup(Shim::Stevedore);
    let w = d.synced_watch(d.ctr_command(&["events"]));
    let o = d.ctr(&["run", "--rm", &img, "ev1", "sh", "-c", "exit 9"]);
    assert_eq!(o.status.code(), Some(9));
    for topic in ["/containers/create", "/tasks/create", "/tasks/start"] {
        w.expect_line(&[topic, "ev1"], Duration::from_secs(10));
    }
    let exit = w.expect_line(&["/tasks/exit", "ev1"], Duration::from_secs(10));
    assert!(
        exit.contains("exit_status:9") || exit.contains("\"exit_status\":9"),
        "{exit}"
    );
    w.expect_line(&["/tasks/delete", "ev1"], Duration::from_secs(10));
    w.expect_line(&["/containers/delete", "ev1"], Duration::from_secs(10));
}

fn oom_kill_is_reported(shim: Shim) {
    let (d, _dir, img) = setup(shim);
    let w = d.synced_watch(d.ctr_command(&["events"]));
    // `tail` keeps a line-less stream in memory: past 16 MiB the cgroup kills it
    let o = d.cli(&[
        "run",
        "--rm",
        "--memory-limit",
        "16777216",
        &img,
        "oom1",
        "sh",
        "-c",
        "head -c 200m /dev/zero | tail > /dev/null",
    ]);
    assert_eq!(o.status.code(), Some(137), "{o:?}");
    w.expect_line(&["/tasks/oom", "oom1"], Duration::from_secs(10));
}

on_both_shims!(oom_kill_is_reported: stevedore_shim_reports_an_oom_kill_as_tasks_oom, go_shim_reports_an_oom_kill_as_tasks_oom);
