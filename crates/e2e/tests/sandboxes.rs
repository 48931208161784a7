//! containerd 2.x's Sandbox Controller (`containerd.services.sandbox.v1.Controller`)
//! and its `podsandbox` controller on stevedored: `ctr` 2.1's `sandboxes
//! run|ls|rm` with a real process under the shim and runc, the events
//! containerd publishes, the Controller API through a tonic client with
//! containerd's errors, and what a daemon restart keeps.

use std::path::Path;
use std::time::Duration;
use stevedore_api::services::containers::{
    containers_client::ContainersClient, GetContainerRequest,
};
use stevedore_api::services::sandbox::{
    controller_client::ControllerClient, store_client::StoreClient, ControllerCreateRequest,
    ControllerMetricsRequest, ControllerPlatformRequest, ControllerShutdownRequest,
    ControllerStartRequest, ControllerStatusRequest, ControllerStopRequest,
    ControllerUpdateRequest, ControllerWaitRequest, StoreCreateRequest, StoreDeleteRequest,
    StoreGetRequest,
};
use stevedore_api::types::{sandbox::Runtime, Mount, Sandbox};
use stevedore_e2e::{busybox_rootfs, Daemon};
use tonic::transport::Channel;
use tonic::{Code, Request};

const NS: &str = "default";

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(stevedore_api::NAMESPACE_HEADER, NS.parse().unwrap());
    r
}

/// `ctr oci spec`'s default spec (as `ctr sandboxes run` users start from),
/// made to run `sleep` from `root` in its own cgroup without a terminal.
fn sandbox_spec(d: &Daemon, id: &str, root: &str) -> serde_json::Value {
    let mut spec: serde_json::Value =
        serde_json::from_str(&d.ctr2_ok(&["oci", "spec"])).expect("ctr oci spec prints JSON");
    spec["root"] = serde_json::json!({"path": root, "readonly": true});
    spec["process"]["args"] = serde_json::json!(["/bin/sleep", "1000"]);
    spec["linux"]["cgroupsPath"] = format!("/default/{id}").into();
    spec
}

fn write_spec(dir: &Path, id: &str, spec: &serde_json::Value) -> String {
    let p = dir.join(format!("{id}.json"));
    std::fs::write(&p, serde_json::to_vec(spec).unwrap()).unwrap();
    p.display().to_string()
}

fn cmdline(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
}

/// `pid` runs `needle` (runc's init execs it just after Start returns).
fn runs(pid: u32, needle: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cmdline(pid).contains(needle) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    cmdline(pid).contains(needle)
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&dir))
        .collect()
}

fn task_pid(d: &Daemon, id: &str) -> u32 {
    let ls = d.ctr2_ok(&["tasks", "ls"]);
    let row = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no task {id}:\n{ls}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[2], "RUNNING", "{ls}");
    cols[1].parse().unwrap()
}

/// Nothing of sandbox `id` is left: no task, container, shim, bundle or mount.
fn assert_gone(d: &Daemon, id: &str, pid: u32) {
    let listed = |args: &[&str]| {
        d.ctr2_ok(args)
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().next() == Some(id))
    };
    assert!(!listed(&["sandboxes", "ls"]), "sandbox {id} still listed");
    assert!(!listed(&["tasks", "ls"]), "task {id} still listed");
    assert!(
        !listed(&["containers", "ls"]),
        "container {id} still listed"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cmdline(pid).contains("sleep") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !cmdline(pid).contains("sleep"),
        "sandbox process {pid} survived"
    );
    d.expect_no_shims(Duration::from_secs(10));
    let bundle = d
        .state
        .join("io.containerd.runtime.v2.task")
        .join(NS)
        .join(id);
    assert!(!bundle.exists(), "{} left behind", bundle.display());
    assert_eq!(mounts_under(d.dir.path()), Vec::<String>::new());
}

#[test]
fn ctr2_runs_lists_and_removes_a_sandbox_with_a_real_process() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let id = "sbx-run";
    let spec = write_spec(
        dir.path(),
        id,
        &sandbox_spec(&d, id, rootfs.to_str().unwrap()),
    );
    // containerd 2.1's plugin types and ids
    let plugins = d.ctr2_ok(&["plugins", "ls"]);
    for (t, pid) in [
        ("io.containerd.podsandbox.controller.v1", "podsandbox"),
        ("io.containerd.grpc.v1", "sandbox-controllers"),
    ] {
        assert!(
            plugins.lines().any(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                c.first() == Some(&t) && c.get(1) == Some(&pid) && c.last() == Some(&"ok")
            }),
            "{t} {pid} not ok:\n{plugins}"
        );
    }
    let events = d.synced_watch(d.ctr2_command(&["events"]));

    let out = d.ctr2_ok(&["sandboxes", "run", &spec, id]);
    assert_eq!(out.trim(), id);
    // containerd's topics and payloads: the record, the task, the sandbox
    events.expect_line(&["/containers/create", id], Duration::from_secs(10));
    events.expect_line(&["/tasks/create", id], Duration::from_secs(10));
    let ev = events.expect_line(&["/sandboxes/create"], Duration::from_secs(10));
    assert!(ev.contains(&format!(r#"{{"sandbox_id":"{id}"}}"#)), "{ev}");
    events.expect_line(&["/sandboxes/start", id], Duration::from_secs(10));

    let ls = d.ctr2_ok(&["sandboxes", "ls"]);
    let row: Vec<&str> = ls
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("{ls}"))
        .split_whitespace()
        .collect();
    assert_eq!(*row.last().unwrap(), "io.containerd.runc.v2", "{ls}");
    // a real process, under the shim and runc
    let pid = task_pid(&d, id);
    assert!(runs(pid, "/bin/sleep 1000"), "{}", cmdline(pid));
    assert_eq!(d.shim_pids().len(), 1);

    // the id is taken: the Store refuses a second sandbox, as containerd's
    let o = d.ctr2(&["sandboxes", "run", &spec, id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("already exists"),
        "{err}"
    );
    // ids follow containerd's identifier rule
    let o = d.ctr2(&["sandboxes", "run", &spec, "../escape"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("invalid sandbox ID: identifier \"../escape\" must match"),
        "{err}"
    );

    let o = d.ctr2(&["sandboxes", "rm", id]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains(&format!("deleted: {id}")), "{err}");
    let exit = events.expect_line(&["/tasks/exit", id], Duration::from_secs(10));
    assert!(exit.contains(r#""exit_status":137"#), "{exit}");
    events.expect_line(&["/containers/delete", id], Duration::from_secs(10));
    assert_gone(&d, id, pid);

    // a sandbox whose process cannot start leaves only its Store record,
    // which `rm` then removes
    let mut bad = sandbox_spec(&d, "sbx-bad", rootfs.to_str().unwrap());
    bad["process"]["args"] = serde_json::json!(["/bin/no-such-binary"]);
    let bad = write_spec(dir.path(), "sbx-bad", &bad);
    let o = d.ctr2(&["sandboxes", "run", &bad, "sbx-bad"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("create sandbox \"sbx-bad\"")
            && err.contains("no-such-binary"),
        "{err}"
    );
    assert!(!d.ctr2_ok(&["containers", "ls"]).contains("sbx-bad"));
    d.expect_no_shims(Duration::from_secs(10));
    assert!(d.ctr2_ok(&["sandboxes", "ls"]).contains("sbx-bad"));
    let o = d.ctr2(&["sandboxes", "rm", "sbx-bad"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!d.ctr2_ok(&["sandboxes", "ls"]).contains("sbx-bad"));
    // an unknown sandbox: ctr logs containerd's NotFound and goes on
    let o = d.ctr2(&["sandboxes", "rm", "nothere"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("failed to load sandbox nothere") && err.contains("not found"),
        "{err}"
    );
}

fn grpc_sandbox(id: &str, spec: &serde_json::Value) -> Sandbox {
    Sandbox {
        sandbox_id: id.into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: serde_json::to_vec(spec).unwrap(),
        }),
        sandboxer: "podsandbox".into(),
        ..Default::default()
    }
}

async fn status(
    c: &mut ControllerClient<Channel>,
    id: &str,
) -> Result<stevedore_api::services::sandbox::ControllerStatusResponse, tonic::Status> {
    c.status(req(ControllerStatusRequest {
        sandbox_id: id.into(),
        verbose: true,
        sandboxer: "podsandbox".into(),
    }))
    .await
    .map(|r| r.into_inner())
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_api_runs_waits_stops_and_shuts_down_like_containerd() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let id = "sbx-grpc";
    let ch = d.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut store = StoreClient::new(ch.clone());
    let mut containers = ContainersClient::new(ch.clone());
    let events = d.synced_watch(d.ctr2_command(&["events"]));

    // the rootfs comes from the request's mounts; the spec names `rootfs`
    let mut spec = sandbox_spec(&d, id, "rootfs");
    spec["root"]["readonly"] = false.into();
    let sb = grpc_sandbox(id, &spec);
    store
        .create(req(StoreCreateRequest {
            sandbox: Some(sb.clone()),
        }))
        .await
        .unwrap();
    ctl.create(req(ControllerCreateRequest {
        sandbox_id: id.into(),
        rootfs: vec![Mount {
            r#type: "bind".into(),
            source: rootfs.display().to_string(),
            target: String::new(),
            options: vec!["rbind".into(), "ro".into()],
        }],
        sandbox: Some(sb.clone()),
        sandboxer: "podsandbox".into(),
        ..Default::default()
    }))
    .await
    .unwrap();
    events.expect_line(&["/sandboxes/create", id], Duration::from_secs(10));
    // created, not started: containerd's podsandbox says unknown, no pid
    let s = status(&mut ctl, id).await.unwrap();
    assert_eq!((s.state.as_str(), s.pid), ("SANDBOX_UNKNOWN", 0), "{s:?}");
    assert!(s.created_at.is_some());

    let started = ctl
        .start(req(ControllerStartRequest {
            sandbox_id: id.into(),
            sandboxer: "podsandbox".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(started.pid > 0);
    assert!(
        runs(started.pid, "/bin/sleep 1000"),
        "{}",
        cmdline(started.pid)
    );
    assert_eq!(started.labels["oci_runtime_type"], "io.containerd.runc.v2");
    events.expect_line(&["/sandboxes/start", id], Duration::from_secs(10));
    let s = status(&mut ctl, id).await.unwrap();
    assert_eq!((s.state.as_str(), s.pid), ("SANDBOX_READY", started.pid));
    assert_eq!(s.created_at, started.created_at);
    let info: serde_json::Value = serde_json::from_str(&s.info["info"]).unwrap();
    assert_eq!(info["status"], "running", "{info}");
    assert_eq!(info["runtimeSpec"]["process"]["terminal"], false, "{info}");
    // an empty sandboxer means podsandbox (containerd 2.1's ctr sends none)
    let s = ctl
        .status(req(ControllerStatusRequest {
            sandbox_id: id.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.pid, started.pid);
    let p = ctl
        .platform(req(ControllerPlatformRequest {
            sandbox_id: id.into(),
            sandboxer: "podsandbox".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .platform
        .unwrap();
    assert_eq!((p.os.as_str(), p.architecture.is_empty()), ("linux", false));
    let m = ctl
        .metrics(req(ControllerMetricsRequest {
            sandbox_id: id.into(),
            sandboxer: "podsandbox".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .metrics
        .unwrap();
    assert_eq!(m.id, id);
    assert!(m.data.is_some_and(|a| a.type_url.contains("cgroups")));
    let again = ctl
        .start(req(ControllerStartRequest {
            sandbox_id: id.into(),
            sandboxer: "podsandbox".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");

    // Wait returns the exit status once Stop kills the process
    let mut waiter = ctl.clone();
    let wait = tokio::spawn(async move {
        waiter
            .wait(req(ControllerWaitRequest {
                sandbox_id: "sbx-grpc".into(),
                sandboxer: "podsandbox".into(),
            }))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    ctl.stop(req(ControllerStopRequest {
        sandbox_id: id.into(),
        timeout_secs: 5,
        sandboxer: "podsandbox".into(),
    }))
    .await
    .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .into_inner();
    assert_eq!(exit.exit_status, 137);
    assert!(exit.exited_at.is_some());
    let ev = events.expect_line(&["/sandboxes/exit", id], Duration::from_secs(10));
    assert!(ev.contains(r#""exit_status":137"#), "{ev}");
    let s = status(&mut ctl, id).await.unwrap();
    assert_eq!(s.state, "SANDBOX_NOTREADY");
    assert_eq!(s.exited_at, exit.exited_at);

    ctl.shutdown(req(ControllerShutdownRequest {
        sandbox_id: id.into(),
        sandboxer: "podsandbox".into(),
    }))
    .await
    .unwrap();
    let e = status(&mut ctl, id).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        format!("unable to find sandbox {id:?}: not found")
    );
    let e = containers
        .get(req(GetContainerRequest { id: id.into() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // the Store record is the client's to delete, as with containerd
    store
        .get(req(StoreGetRequest {
            sandbox_id: id.into(),
        }))
        .await
        .unwrap();
    store
        .delete(req(StoreDeleteRequest {
            sandbox_id: id.into(),
        }))
        .await
        .unwrap();
    assert_gone(&d, id, started.pid);
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_api_answers_bad_requests_with_containerds_errors() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let ch = d.channel().await;
    let mut ctl = ControllerClient::new(ch.clone());
    let mut containers = ContainersClient::new(ch.clone());
    let pod = |s: &str| s.to_string();

    // controllers by name: containerd 2.1's `shim` controller needs a shim
    // with the sandbox API, which runc's shims do not have
    let e = ctl
        .start(req(ControllerStartRequest {
            sandbox_id: "x".into(),
            sandboxer: "shim".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "failed to get sandbox controller by shim");

    // unknown sandboxes are NotFound, in containerd's words
    let e = ctl
        .start(req(ControllerStartRequest {
            sandbox_id: "nope".into(),
            sandboxer: pod("podsandbox"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(
        e.message(),
        "unable to find pod sandbox with id \"nope\": not found"
    );
    let e = ctl
        .stop(req(ControllerStopRequest {
            sandbox_id: "nope".into(),
            timeout_secs: 0,
            sandboxer: pod("podsandbox"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = ctl
        .wait(req(ControllerWaitRequest {
            sandbox_id: "nope".into(),
            sandboxer: pod("podsandbox"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().starts_with("failed to get exit channel"),
        "{e:?}"
    );
    let e = status(&mut ctl, "nope").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = ctl
        .metrics(req(ControllerMetricsRequest {
            sandbox_id: "nope".into(),
            sandboxer: pod("podsandbox"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Shutdown of an unknown sandbox succeeds, as containerd's podsandbox
    ctl.shutdown(req(ControllerShutdownRequest {
        sandbox_id: "nope".into(),
        sandboxer: pod("podsandbox"),
    }))
    .await
    .unwrap();

    // bad ids never become records or bundles
    let spec = sandbox_spec(&d, "x", rootfs.to_str().unwrap());
    for bad in ["../x", "a/b", ""] {
        let e = ctl
            .create(req(ControllerCreateRequest {
                sandbox_id: bad.into(),
                sandbox: Some(grpc_sandbox(bad, &spec)),
                sandboxer: pod("podsandbox"),
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("invalid sandbox ID"), "{e:?}");
    }
    let e = ctl
        .start(req(ControllerStartRequest {
            sandbox_id: "../x".into(),
            sandboxer: pod("podsandbox"),
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // a relative netns path or a spec that is not one: refused before anything exists
    let e = ctl
        .create(req(ControllerCreateRequest {
            sandbox_id: "sbx-netns".into(),
            sandbox: Some(grpc_sandbox("sbx-netns", &spec)),
            netns_path: "netns".into(),
            sandboxer: pod("podsandbox"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = ctl
        .create(req(ControllerCreateRequest {
            sandbox_id: "sbx-nospec".into(),
            sandbox: Some(grpc_sandbox("sbx-nospec", &serde_json::json!([1]))),
            sandboxer: pod("podsandbox"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = ctl
        .update(req(ControllerUpdateRequest {
            sandbox_id: "x".into(),
            sandboxer: pod("podsandbox"),
            sandbox: None,
            fields: vec![],
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // a process runc cannot start: the error names the sandbox, nothing stays
    let mut bad = spec.clone();
    bad["process"]["args"] = serde_json::json!(["/bin/no-such-binary"]);
    let e = ctl
        .create(req(ControllerCreateRequest {
            sandbox_id: "sbx-fails".into(),
            sandbox: Some(grpc_sandbox("sbx-fails", &bad)),
            sandboxer: pod("podsandbox"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(
        e.message().contains("create sandbox \"sbx-fails\"")
            && e.message().contains("no-such-binary"),
        "{e:?}"
    );
    // created but never started: Shutdown kills runc's waiting init and
    // removes everything
    ctl.create(req(ControllerCreateRequest {
        sandbox_id: "sbx-idle".into(),
        sandbox: Some(grpc_sandbox("sbx-idle", &spec)),
        sandboxer: pod("podsandbox"),
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_eq!(d.shim_pids().len(), 1);
    let e = ctl
        .create(req(ControllerCreateRequest {
            sandbox_id: "sbx-idle".into(),
            sandbox: Some(grpc_sandbox("sbx-idle", &spec)),
            sandboxer: pod("podsandbox"),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    ctl.shutdown(req(ControllerShutdownRequest {
        sandbox_id: "sbx-idle".into(),
        sandboxer: pod("podsandbox"),
    }))
    .await
    .unwrap();
    for id in ["sbx-netns", "sbx-nospec", "sbx-fails", "sbx-idle"] {
        let e = containers
            .get(req(GetContainerRequest { id: id.into() }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id}");
    }
    d.expect_no_shims(Duration::from_secs(10));
    let bundles = d.state.join("io.containerd.runtime.v2.task").join(NS);
    assert_eq!(
        std::fs::read_dir(&bundles).map(|r| r.count()).unwrap_or(0),
        0,
        "bundles left in {}",
        bundles.display()
    );
    assert_eq!(mounts_under(d.dir.path()), Vec::<String>::new());
}

#[test]
fn a_running_sandbox_survives_a_daemon_restart() {
    let mut d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let id = "sbx-restart";
    let spec = write_spec(
        dir.path(),
        id,
        &sandbox_spec(&d, id, rootfs.to_str().unwrap()),
    );
    d.ctr2_ok(&["sandboxes", "run", &spec, id]);
    let pid = task_pid(&d, id);
    d.stop();
    assert!(
        cmdline(pid).contains("sleep"),
        "the sandbox died with the daemon"
    );
    d.spawn();
    // the runtime reconnected to the sandbox's shim: the controller sees it
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(async {
        let mut ctl = ControllerClient::new(d.channel().await);
        status(&mut ctl, id).await.unwrap()
    });
    assert_eq!((s.state.as_str(), s.pid), ("SANDBOX_READY", pid));
    let o = d.ctr2(&["sandboxes", "rm", id]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_gone(&d, id, pid);
}
