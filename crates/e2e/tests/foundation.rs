//! The foundation, driven from outside: the real containerd `ctr` and the
//! stevedore CLI against a real stevedored.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;
use stevedore_e2e::{bin, Daemon};

#[test]
fn ctr_version_reports_the_server() {
    let d = Daemon::start();
    let out = d.ctr_ok(&["version"]);
    assert!(out.contains("Server:"), "{out}");
    assert!(out.contains("v1.6.20+stevedore"), "{out}");
    let uuid_line = out.lines().find(|l| l.contains("UUID:")).unwrap();
    let uuid = uuid_line.split_whitespace().last().unwrap().to_string();
    assert_eq!(uuid.len(), 36, "{out}");
    // the UUID is persisted across restarts
    let mut d = d;
    d.stop();
    d.spawn();
    assert!(d.ctr_ok(&["version"]).contains(&uuid));
}

#[test]
fn ctr_plugins_ls_lists_plugins_in_init_order() {
    let d = Daemon::start();
    let out = d.ctr_ok(&["plugins", "ls"]);
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let find = |t: &str, id: &str| {
        rows.iter()
            .position(|r| r[0] == t && r[1] == id)
            .unwrap_or_else(|| panic!("{t} {id} missing:\n{out}"))
    };
    let btrfs = &rows[find("io.containerd.snapshotter.v1", "btrfs")];
    assert_eq!(btrfs[2], "linux/amd64");
    assert_eq!(btrfs[3], "error");
    let bolt = find("io.containerd.metadata.v1", "bolt");
    let ns = find("io.containerd.grpc.v1", "namespaces");
    assert!(
        bolt < ns,
        "metadata initialises before the namespaces service:\n{out}"
    );
    for id in ["events", "healthcheck", "introspection", "version"] {
        let r = &rows[find("io.containerd.grpc.v1", id)];
        assert_eq!(r[3], "ok", "{out}");
    }
}

#[test]
fn ctr_plugins_detailed_shows_the_btrfs_error() {
    let d = Daemon::start();
    let out = d.ctr_ok(&["plugins", "ls", "--detailed", "id==btrfs"]);
    let root = d.root.join("io.containerd.snapshotter.v1.btrfs");
    assert!(
        out.contains("Type:          io.containerd.snapshotter.v1"),
        "{out}"
    );
    assert!(out.contains("Platforms:     linux/amd64"), "{out}");
    assert!(
        out.contains(&format!("root      {}", root.display())),
        "{out}"
    );
    assert!(out.contains("Code:        Unknown"), "{out}");
    assert!(
        out.contains(&format!(
            "Message:     path {} must be a btrfs filesystem to be used with the btrfs snapshotter",
            root.display()
        )),
        "{out}"
    );
    // the filter selected only btrfs
    assert_eq!(out.matches("Type:").count(), 1, "{out}");
    // a bad filter is an InvalidArgument naming the position
    let o = d.ctr(&["plugins", "ls", "id=btrfs"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unsupported operator"), "{err}");
}

#[test]
fn disabled_plugin_is_listed_as_skipped() {
    let d = Daemon::start_with_config(Some(
        "version = 2\ndisabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\"]\n",
    ));
    let out = d.ctr_ok(&["plugins", "ls", "id==btrfs"]);
    assert!(
        out.lines().nth(1).unwrap().trim_end().ends_with("skip"),
        "{out}"
    );
}

#[test]
fn ctr_namespaces_create_label_ls_rm() {
    let d = Daemon::start();
    d.ctr_ok(&["namespaces", "create", "team-a", "owner=alice"]);
    let o = d.ctr(&["namespaces", "create", "team-a"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    d.ctr_ok(&["namespaces", "label", "team-a", "tier=gold"]);
    let ls = d.ctr_ok(&["namespaces", "ls"]);
    let row = ls.lines().find(|l| l.starts_with("team-a")).expect(&ls);
    assert!(
        row.contains("owner=alice") && row.contains("tier=gold"),
        "{ls}"
    );
    d.ctr_ok(&["namespaces", "label", "team-a", "owner="]);
    let ls = d.ctr_ok(&["namespaces", "ls"]);
    assert!(!ls.contains("owner=alice"), "{ls}");
    assert_eq!(d.ctr_ok(&["namespaces", "ls", "-q"]).trim(), "team-a");
    d.ctr_ok(&["namespaces", "rm", "team-a"]);
    assert_eq!(d.ctr_ok(&["namespaces", "ls", "-q"]).trim(), "");
    let o = d.ctr(&["namespaces", "create", "bad name"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("must match") && err.contains("invalid argument"),
        "{err}"
    );
}

#[test]
fn namespaces_survive_restart() {
    let mut d = Daemon::start();
    d.ctr_ok(&["namespaces", "create", "keep", "a=b"]);
    d.kill9();
    d.spawn();
    assert!(d.ctr_ok(&["namespaces", "ls"]).contains("keep"));
}

#[test]
fn ctr_events_prints_namespace_events() {
    let d = Daemon::start();
    let w = d.synced_watch(d.ctr_command(&["events"]));
    d.ctr_ok(&["namespaces", "create", "evns", "k=v"]);
    d.ctr_ok(&["namespaces", "label", "evns", "x=y"]);
    d.ctr_ok(&["namespaces", "rm", "evns"]);
    let t = Duration::from_secs(10);
    let l = w.expect_line(&["evns", "/namespaces/create"], t);
    assert!(l.contains(r#""labels":{"k":"v"}"#), "{l}");
    w.expect_line(&["evns", "/namespaces/update", r#""x":"y""#], t);
    w.expect_line(&["evns", "/namespaces/delete"], t);
}

#[test]
fn ctr_events_filters_by_topic() {
    let d = Daemon::start();
    let w = d.watch(d.ctr_command(&["events", r#"topic=="/namespaces/delete""#, "topic~=sync"]));
    // the watcher only passes deletes; sync on them
    for i in 0..100 {
        d.ctr_ok(&["namespaces", "create", &format!("f{i}")]);
        d.ctr_ok(&["namespaces", "rm", &format!("f{i}")]);
        if !w.lines_for(Duration::from_millis(200)).is_empty() {
            break;
        }
    }
    d.ctr_ok(&["namespaces", "create", "onlydelete"]);
    d.ctr_ok(&["namespaces", "rm", "onlydelete"]);
    let l = w.expect_line(&["onlydelete"], Duration::from_secs(10));
    assert!(l.contains("/namespaces/delete"), "{l}");
    let rest = w.lines_for(Duration::from_millis(300));
    assert!(
        rest.iter().all(|l| !l.contains("/namespaces/create")),
        "{rest:?}"
    );
}

#[test]
fn stevedore_cli_covers_the_same_commands() {
    let d = Daemon::start();
    let v = d.cli_ok(&["version"]);
    assert!(v.contains("v1.6.20+stevedore"), "{v}");
    let p = d.cli_ok(&["plugins", "ls"]);
    assert!(p.lines().next().unwrap().starts_with("TYPE"), "{p}");
    let j: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-o", "json", "plugins", "ls", "id==btrfs"])).unwrap();
    assert_eq!(j[0]["status"], "error");
    assert_eq!(j[0]["error"]["code"], "Unknown");
    let det = d.cli_ok(&["plugins", "ls", "--detailed", "id==btrfs"]);
    assert!(det.contains("must be a btrfs filesystem"), "{det}");

    let w = d.synced_watch(d.cli_command(&["events"]));
    d.cli_ok(&["namespaces", "create", "clins", "a=1"]);
    d.cli_ok(&["namespaces", "label", "clins", "b=2"]);
    let j: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-o", "json", "namespaces", "ls"])).unwrap();
    assert_eq!(j[0]["name"], "clins");
    assert_eq!(j[0]["labels"]["b"], "2");
    d.cli_ok(&["namespaces", "rm", "clins"]);
    w.expect_line(&["clins", "/namespaces/create"], Duration::from_secs(10));
    w.expect_line(&["clins", "/namespaces/delete"], Duration::from_secs(10));
    let o = d.cli(&["namespaces", "rm", "nope"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("namespace \"nope\": not found"));
}

#[test]
fn cli_says_when_the_daemon_is_not_running() {
    let o = std::process::Command::new(bin("stevedore"))
        .args(["--address", "/tmp/does-not-exist.sock", "version"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot connect to stevedored at /tmp/does-not-exist.sock: is it running?"),
        "{err}"
    );
}

#[test]
fn socket_is_0660_and_a_second_daemon_is_refused() {
    let mut d = Daemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let o = d.command().output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("another daemon is serving on"), "{err}");
    // the first daemon is unaffected
    d.ctr_ok(&["version"]);
    // a stale socket (daemon killed) is replaced on start
    d.kill9();
    assert!(d.socket.exists());
    d.spawn();
    d.ctr_ok(&["version"]);
    // SIGTERM shuts down cleanly and removes the socket
    let st = d.stop().unwrap();
    assert!(st.success(), "{st}");
    assert!(!d.socket.exists());
}

#[test]
fn config_default_prints_and_bad_config_is_refused() {
    let o = std::process::Command::new(bin("stevedored"))
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text.contains("root = \"/var/lib/stevedore\""), "{text}");
    assert!(
        text.contains("address = \"/run/stevedore/stevedore.sock\""),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "version = 2\n[grpc]\nadress = \"/x\"\n").unwrap();
    let o = std::process::Command::new(bin("stevedored"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("unknown field `adress`"), "{err}");
}

#[tokio::test]
async fn health_check_reports_serving() {
    use stevedore_api::services::health::{health_client::HealthClient, HealthCheckRequest};
    let d = Daemon::start();
    let mut c = HealthClient::new(d.channel().await);
    let r = c
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.status, 1, "SERVING");
}

#[tokio::test]
async fn requests_without_a_namespace_are_refused() {
    use stevedore_api::services::events::{events_client::EventsClient, PublishRequest};
    let d = Daemon::start();
    let mut c = EventsClient::new(d.channel().await);
    let e = c
        .publish(PublishRequest {
            topic: "/x".into(),
            event: Some(prost_types::Any {
                type_url: "x".into(),
                value: vec![],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("namespace is required"));
}
