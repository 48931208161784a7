//! containerd 2.x's API beyond transfer: the Sandbox Store service (through
//! the socket with a tonic client, and with `ctr` 2.1's `sandboxes`),
//! Introspection 2.x (`Server`'s pid/pidns/deprecations, `PluginInfo`;
//! `ctr info`, `ctr deprecations list`), and ctr 2.1's everyday commands
//! (run, tasks, snapshots, content, leases, namespaces, events, plugins,
//! version) against stevedored.

use std::time::Duration;
use stevedore_api::services::containers::{
    container::Runtime as ContainerRuntime, containers_client::ContainersClient, Container,
    CreateContainerRequest, DeleteContainerRequest, GetContainerRequest, UpdateContainerRequest,
};
use stevedore_api::services::introspection::{
    introspection_client::IntrospectionClient, PluginInfoRequest,
};
use stevedore_api::services::sandbox::{
    store_client::StoreClient, StoreCreateRequest, StoreDeleteRequest, StoreGetRequest,
    StoreListRequest, StoreUpdateRequest,
};
use stevedore_api::types::{sandbox::Runtime, Sandbox};
use stevedore_e2e::{busybox_image, Daemon};
use tonic::{Code, Request};

fn req<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert(stevedore_api::NAMESPACE_HEADER, ns.parse().unwrap());
    r
}

fn sandbox(id: &str, labels: &[(&str, &str)]) -> Sandbox {
    Sandbox {
        sandbox_id: id.into(),
        runtime: Some(Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: b"{}".to_vec(),
        }),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        sandboxer: "podsandbox".into(),
        ..Default::default()
    }
}

async fn create(
    c: &mut StoreClient<tonic::transport::Channel>,
    ns: &str,
    s: Sandbox,
) -> Result<Sandbox, tonic::Status> {
    c.create(req(ns, StoreCreateRequest { sandbox: Some(s) }))
        .await
        .map(|r| r.into_inner().sandbox.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_store_over_grpc_follows_containerd() {
    let d = Daemon::start();
    let mut c = StoreClient::new(d.channel().await);

    let created = create(&mut c, "ns1", sandbox("pod1", &[("app", "web")]))
        .await
        .unwrap();
    assert_eq!(created.sandbox_id, "pod1");
    assert_eq!(created.sandboxer, "podsandbox");
    assert!(created.created_at.is_some());
    assert_eq!(created.created_at, created.updated_at);
    let e = create(&mut c, "ns1", sandbox("pod1", &[]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    for bad in ["../pod", "a b", ""] {
        let e = create(&mut c, "ns1", sandbox(bad, &[])).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e:?}");
        assert!(e.message().contains("invalid sandbox ID"), "{e:?}");
    }
    let e = c
        .create(req("ns1", StoreCreateRequest { sandbox: None }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .list(Request::new(StoreListRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "no namespace: {e:?}");

    create(&mut c, "ns1", sandbox("pod2", &[("app", "db")]))
        .await
        .unwrap();
    create(&mut c, "ns2", sandbox("pod3", &[])).await.unwrap();
    let base = c.clone();
    let list = move |filters: &[&str]| {
        let mut c = base.clone();
        let filters = filters.iter().map(|f| f.to_string()).collect();
        async move {
            c.list(req("ns1", StoreListRequest { filters }))
                .await
                .map(|r| {
                    r.into_inner()
                        .list
                        .into_iter()
                        .map(|s| s.sandbox_id)
                        .collect::<Vec<_>>()
                })
        }
    };
    assert_eq!(list(&[]).await.unwrap(), ["pod1", "pod2"]);
    assert_eq!(list(&["labels.app==db"]).await.unwrap(), ["pod2"]);
    assert_eq!(
        list(&["id==pod1", "id==pod2"]).await.unwrap(),
        ["pod1", "pod2"]
    );
    assert_eq!(
        list(&["id=="]).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // a foreign namespace's sandbox is NotFound
    let e = c
        .get(req(
            "ns1",
            StoreGetRequest {
                sandbox_id: "pod3".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // update with field paths: only the named label changes; no paths
    // replaces labels/extensions/spec/runtime but not the runtime name
    let mut upd = sandbox("pod1", &[("tier", "front")]);
    upd.spec = None;
    let u = c
        .update(req(
            "ns1",
            StoreUpdateRequest {
                sandbox: Some(upd.clone()),
                fields: vec!["labels.tier".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .sandbox
        .unwrap();
    assert_eq!(u.labels.len(), 2);
    assert!(u.spec.is_some());
    assert_eq!(u.created_at, created.created_at);
    let mut renamed = upd.clone();
    renamed.runtime.as_mut().unwrap().name = "io.containerd.kata.v2".into();
    let e = c
        .update(req(
            "ns1",
            StoreUpdateRequest {
                sandbox: Some(renamed),
                fields: vec![],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let e = c
        .update(req(
            "ns1",
            StoreUpdateRequest {
                sandbox: Some(upd.clone()),
                fields: vec!["sandboxer".into()],
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    let u = c
        .update(req(
            "ns1",
            StoreUpdateRequest {
                sandbox: Some(upd),
                fields: vec![],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .sandbox
        .unwrap();
    assert_eq!(u.spec, None);
    assert_eq!(u.labels.len(), 1);
    let got = c
        .get(req(
            "ns1",
            StoreGetRequest {
                sandbox_id: "pod1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .sandbox
        .unwrap();
    assert_eq!(got, u);

    // containerd 2.x's Container.sandbox (field 11): a container names its
    // sandbox, kept across updates that do not name it
    let mut cc = ContainersClient::new(d.channel().await);
    let container = Container {
        id: "app".into(),
        runtime: Some(ContainerRuntime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: sandbox("x", &[]).spec,
        sandbox: "pod1".into(),
        ..Default::default()
    };
    cc.create(req(
        "ns1",
        CreateContainerRequest {
            container: Some(container.clone()),
        },
    ))
    .await
    .unwrap();
    let mut relabelled = container.clone();
    relabelled.sandbox = String::new();
    relabelled.labels.insert("k".into(), "v".into());
    cc.update(req(
        "ns1",
        UpdateContainerRequest {
            container: Some(relabelled),
            update_mask: None,
        },
    ))
    .await
    .unwrap();
    let got = cc
        .get(req("ns1", GetContainerRequest { id: "app".into() }))
        .await
        .unwrap()
        .into_inner()
        .container
        .unwrap();
    assert_eq!(got.sandbox, "pod1");
    assert_eq!(got.labels.get("k").map(String::as_str), Some("v"));
    cc.delete(req("ns1", DeleteContainerRequest { id: "app".into() }))
        .await
        .unwrap();

    // a namespace holding sandboxes cannot be deleted, as containerd says
    let o = d.ctr2(&["namespaces", "rm", "ns2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("sandboxes"), "{err}");

    let base = c.clone();
    let del = move |id: &str| {
        let mut c = base.clone();
        let id = id.to_string();
        async move {
            c.delete(req("ns1", StoreDeleteRequest { sandbox_id: id }))
                .await
        }
    };
    del("pod1").await.unwrap();
    assert_eq!(del("pod1").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(list(&[]).await.unwrap(), ["pod2"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctr2_lists_and_removes_sandboxes() {
    let d = Daemon::start();
    let mut c = StoreClient::new(d.channel().await);
    create(&mut c, "default", sandbox("web", &[("app", "web")]))
        .await
        .unwrap();
    create(&mut c, "default", sandbox("db", &[("app", "db")]))
        .await
        .unwrap();

    let ls = d.ctr2_ok(&["sandboxes", "ls"]);
    let mut lines = ls.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["ID", "CREATED", "RUNTIME"]
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{ls}");
    assert_eq!(rows[0][0], "db");
    assert_eq!(rows[1][0], "web");
    assert_eq!(*rows[1].last().unwrap(), "io.containerd.runc.v2", "{ls}");
    let filtered = d.ctr2_ok(&["sandboxes", "ls", "--filters", "labels.app==web"]);
    assert!(
        filtered.contains("web") && !filtered.contains("db"),
        "{filtered}"
    );

    // a stored sandbox the podsandbox controller never ran: Stop and
    // Shutdown have nothing to do, and the record goes
    d.ctr2_ok(&["sandboxes", "rm", "--force", "web"]);
    let ls = d.ctr2_ok(&["sandboxes", "ls"]);
    assert!(!ls.contains("web") && ls.contains("db"), "{ls}");
    // a missing sandbox is reported and skipped; ctr exits 0 as against containerd
    let o = d.ctr2(&["sandboxes", "rm", "--force", "nothere"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed to load sandbox nothere"), "{err}");
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn introspection_reports_server_pid_and_plugin_info() {
    let d = Daemon::start();
    let info: serde_json::Value = serde_json::from_str(&d.ctr2_ok(&["info"])).unwrap();
    let server = &info["server"];
    assert_eq!(server["pid"].as_u64(), Some(u64::from(d.pid())), "{info}");
    let pidns = std::fs::metadata("/proc/self/ns/pid").unwrap();
    assert_eq!(
        server["pidns"].as_u64(),
        Some(std::os::unix::fs::MetadataExt::ino(&pidns)),
        "{info}"
    );
    assert_eq!(server["uuid"].as_str().unwrap().len(), 36, "{info}");
    assert!(server.get("deprecations").is_none(), "{info}");
    // no deprecated features in use: nothing to print, as containerd 2.1 with a v3 config
    assert_eq!(d.ctr2_ok(&["deprecations", "list"]), "");

    let plugins = d.ctr2_ok(&["plugins", "ls"]);
    for (ty, id) in [
        ("io.containerd.sandbox.store.v1", "local"),
        ("io.containerd.grpc.v1", "sandboxes"),
        ("io.containerd.grpc.v1", "introspection"),
    ] {
        assert!(
            plugins.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.first() == Some(&ty) && w.get(1) == Some(&id) && w.last() == Some(&"ok")
            }),
            "{ty} {id} not ok in:\n{plugins}"
        );
    }

    let c = IntrospectionClient::new(d.channel().await);
    let info = |ty: &str, id: &str, options: Option<prost_types::Any>| {
        let mut c = c.clone();
        let r = PluginInfoRequest {
            r#type: ty.into(),
            id: id.into(),
            options,
        };
        async move { c.plugin_info(r).await.map(|r| r.into_inner()) }
    };
    let r = info("io.containerd.sandbox.store.v1", "local", None)
        .await
        .unwrap();
    let p = r.plugin.unwrap();
    assert_eq!(
        (p.r#type.as_str(), p.id.as_str()),
        ("io.containerd.sandbox.store.v1", "local")
    );
    assert_eq!(p.requires, ["io.containerd.metadata.v1"]);
    assert!(p.init_err.is_none() && r.extra.is_none());
    let e = info("io.containerd.grpc.v1", "nothere", None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("io.containerd.grpc.v1.nothere"),
        "{e:?}"
    );
    // btrfs is in error on a root that is not btrfs: its record says so,
    // and extra data is refused as containerd refuses it
    let r = info("io.containerd.snapshotter.v1", "btrfs", None)
        .await
        .unwrap();
    assert!(r.plugin.unwrap().init_err.is_some());
    let opts = prost_types::Any {
        type_url: "types.containerd.io/google.protobuf.Empty".into(),
        value: vec![],
    };
    let e = info("io.containerd.snapshotter.v1", "btrfs", Some(opts.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let e = info("io.containerd.grpc.v1", "version", Some(opts))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
}

#[test]
fn ctr2_runs_containers_and_manages_tasks_snapshots_leases_and_namespaces() {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    let version = d.ctr2_ok(&["version"]);
    assert!(
        version.contains("Server:") && version.contains("+stevedore."),
        "{version}"
    );
    let events = d.synced_watch(d.ctr2_command(&["events"]));
    d.ctr2_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);

    let out = d.ctr2_ok(&["run", "--rm", &img.name, "once", "echo", "hello"]);
    assert_eq!(out.trim(), "hello");
    events.expect_line(&["/tasks/exit", "once"], Duration::from_secs(10));
    events.expect_line(&["/containers/delete", "once"], Duration::from_secs(10));

    d.ctr2_ok(&["run", "-d", &img.name, "bg", "sleep", "300"]);
    events.expect_line(&["/tasks/start", "bg"], Duration::from_secs(10));
    let row = |status: &str| {
        let ls = d.ctr2_ok(&["tasks", "ls"]);
        assert!(
            ls.lines()
                .any(|l| l.starts_with("bg ") && l.trim_end().ends_with(status)),
            "bg not {status}:\n{ls}"
        );
    };
    row("RUNNING");
    let out = d.ctr2_ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "bg",
        "echo",
        "from exec",
    ]);
    assert_eq!(out.trim(), "from exec");
    d.ctr2_ok(&["tasks", "pause", "bg"]);
    row("PAUSED");
    d.ctr2_ok(&["tasks", "resume", "bg"]);
    row("RUNNING");
    let metrics = d.ctr2_ok(&["tasks", "metrics", "bg"]);
    assert!(
        metrics.contains("ID") && metrics.contains("bg"),
        "{metrics}"
    );
    assert!(metrics.to_lowercase().contains("memory"), "{metrics}");

    let snaps = d.ctr2_ok(&["snapshots", "ls"]);
    assert!(
        snaps
            .lines()
            .any(|l| l.starts_with("bg ") && l.contains("Active")),
        "{snaps}"
    );
    let content = d.ctr2_ok(&["content", "ls", "-q"]);
    assert!(content.contains(&img.digest), "{content}");

    d.ctr2_ok(&["tasks", "kill", "--signal", "SIGKILL", "bg"]);
    events.expect_line(&["/tasks/exit", "bg"], Duration::from_secs(10));
    d.ctr2_ok(&["tasks", "rm", "bg"]);
    d.ctr2_ok(&["containers", "rm", "bg"]);

    let lease = d.ctr2_ok(&["leases", "create", "--id", "l1", "k=v"]);
    assert_eq!(lease.trim(), "l1");
    let ls = d.ctr2_ok(&["leases", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("l1 ") && l.contains("k=v")),
        "{ls}"
    );
    d.ctr2_ok(&["leases", "rm", "l1"]);
    assert!(!d.ctr2_ok(&["leases", "ls"]).contains("l1"));

    d.ctr2_ok(&["namespaces", "create", "team", "owner=me"]);
    let ls = d.ctr2_ok(&["namespaces", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("team ") && l.contains("owner=me")),
        "{ls}"
    );
    events.expect_line(&["/namespaces/create", "team"], Duration::from_secs(10));
    d.ctr2_ok(&["namespaces", "rm", "team"]);
    assert!(!d.ctr2_ok(&["namespaces", "ls"]).contains("team"));
}

#[test]
fn ctr2_inspects_the_runtime_through_plugin_info() {
    stevedore_e2e::require_tool("runc", "runc");
    let d = Daemon::start();
    // the default runtime runs on stevedore's shim, which answers `-info`
    // as containerd's runc shim does: identical JSON but for the version
    let info: serde_json::Value =
        serde_json::from_str(&d.ctr2_ok(&["plugins", "inspect-runtime"])).unwrap();
    assert_eq!(info["Name"], "io.containerd.runc.v2", "{info}");
    assert!(info["Version"]["Version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));
    // runc's own `runc features`, passed through
    let runc: serde_json::Value = serde_json::from_slice(
        &std::process::Command::new("runc")
            .arg("features")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(info["Features"], runc, "{info}");
    // the runc options reach the shim and come back
    let info: serde_json::Value =
        serde_json::from_str(&d.ctr2_ok(&["plugins", "inspect-runtime", "--runc-binary", "runc"]))
            .unwrap();
    assert_eq!(info["Options"]["binary_name"], "runc", "{info}");
    let o = d.ctr2(&[
        "plugins",
        "inspect-runtime",
        "--runtime",
        "io.containerd.nope.v1",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("failed to resolve runtime path"), "{err}");
    assert!(err.contains("containerd-shim-nope-v1"), "{err}");
    let o = d.ctr2(&[
        "plugins",
        "inspect-runtime",
        "--runc-binary",
        "no-such-runc",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("-info]: exit status 1")
            && err.contains("failed to look up the path of")
            && err.contains("no-such-runc"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn images_source_date_epoch_and_delete_target_follow_containerd_2() {
    use stevedore_api::services::images::{
        images_client::ImagesClient, DeleteImageRequest, GetImageRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    d.ctr2_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    // ctr 2.x under SOURCE_DATE_EPOCH sends Create/UpdateImageRequest's
    // source_date_epoch: the records are dated then, not now
    let tagged = d
        .ctr2_command(&["images", "tag", "--local", &img.name, "docker.io/x/epoch:1"])
        .env("SOURCE_DATE_EPOCH", "1000")
        .output()
        .unwrap();
    assert!(tagged.status.success(), "{tagged:?}");
    let mut c = ImagesClient::new(d.channel().await);
    let get = |name: &str| GetImageRequest { name: name.into() };
    let got = c
        .get(req("default", get("docker.io/x/epoch:1")))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert_eq!(got.created_at.as_ref().unwrap().seconds, 1000, "{got:?}");
    assert_eq!(got.updated_at.as_ref().unwrap().seconds, 1000, "{got:?}");
    let target = got.target.clone().unwrap();
    // DeleteImageRequest.target: another digest is NotFound and deletes nothing
    let mut wrong = target.clone();
    wrong.digest = format!("sha256:{}", "0".repeat(64));
    let e = c
        .delete(req(
            "default",
            DeleteImageRequest {
                name: "docker.io/x/epoch:1".into(),
                sync: false,
                target: Some(wrong),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("has target"), "{e:?}");
    assert!(c
        .get(req("default", get("docker.io/x/epoch:1")))
        .await
        .is_ok());
    // the right digest deletes it
    c.delete(req(
        "default",
        DeleteImageRequest {
            name: "docker.io/x/epoch:1".into(),
            sync: false,
            target: Some(target),
        },
    ))
    .await
    .unwrap();
    let e = c
        .get(req("default", get("docker.io/x/epoch:1")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}
