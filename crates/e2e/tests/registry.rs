//! Pull and push against a real registry in the harder cases: basic auth, a
//! hosts directory, Docker schema2 manifests, and a registry that dies in the
//! middle of a pull.

use std::process::Command;
use stevedore_e2e::{big_image, busybox_image, Daemon, Images};
use stevedore_remote::testutil::TestRegistry;

fn skopeo_push(img: &Images, reg: &TestRegistry, name: &str, extra: &[&str]) -> String {
    stevedore_e2e::skopeo_push(img, &reg.host(), name, extra)
}

#[test]
fn pulls_docker_schema2_images_and_through_a_hosts_directory() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    // skopeo converts to a Docker schema2 manifest on the way
    let remote = skopeo_push(&img, &reg, "library/bb:v2s2", &["--format", "v2s2"]);
    let d = Daemon::start();
    let j: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-o", "json", "pull", &remote])).unwrap();
    assert_eq!(
        j["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let out = d.ctr_ok(&["run", "--rm", &remote, "v2s2", "echo", "schema2"]);
    assert_eq!(out.trim(), "schema2");
    // a hosts directory that says the registry speaks plain HTTP
    let hosts = dir.path().join("hosts");
    let hdir = hosts.join(reg.host());
    std::fs::create_dir_all(&hdir).unwrap();
    std::fs::write(
        hdir.join("hosts.toml"),
        format!("server = \"http://{}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\", \"resolve\", \"push\"]\n", reg.host(), reg.host()),
    )
    .unwrap();
    let d2 = Daemon::start();
    d2.ctr_ok(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        &remote,
    ]);
    d2.cli_ok(&[
        "-n",
        "h",
        "pull",
        "--hosts-dir",
        hosts.to_str().unwrap(),
        &remote,
    ]);
    let check = d2.ctr_ok(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");
}

#[test]
fn pull_and_push_with_basic_auth() {
    let reg = TestRegistry::start_with_basic_auth("alice", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    let dest = format!("{}/private/bb:1", reg.host());
    // without credentials the registry refuses, and the error says so
    let o = d.cli(&["push", &dest, &img.name]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("PermissionDenied") || err.contains("401"),
        "{err}"
    );
    d.cli_ok(&["push", "-u", "alice:s3cret", &dest, &img.name]);
    let d2 = Daemon::start();
    assert!(!d2.cli(&["pull", &dest]).status.success());
    d2.cli_ok(&["pull", "-u", "alice:s3cret", &dest]);
    d2.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        "alice:s3cret",
        &dest,
    ]);
    let check = d2.ctr_ok(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");
    // the password never reaches the daemon's log
    assert!(!d2.log().contains("s3cret"));
}

#[test]
fn pull_resumes_after_the_registry_dies_midway() {
    let mut reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = big_image(dir.path(), "gzip", 0.05);
    let remote = skopeo_push(&img, &reg, "stevedore/big:gzip", &[]);
    let d = Daemon::start();
    let mut pull = d
        .cli_command(&["pull", "--quiet", &remote])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    reg.kill();
    std::thread::sleep(std::time::Duration::from_millis(300));
    reg.restart();
    let st = pull.wait().unwrap();
    if !st.success() {
        // the first attempt gave up while the registry was down: a retry
        // resumes from what was ingested
        d.cli_ok(&["pull", &remote]);
    }
    let check = d.ctr_ok(&["images", "check"]);
    assert!(
        check.contains("complete") && check.contains("true"),
        "{check}"
    );
    // every blob matches its digest
    for digest in d.ctr_ok(&["content", "ls", "-q"]).lines() {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ctr --address {} content get {digest} | sha256sum",
                d.socket.display()
            ))
            .output()
            .unwrap();
        let sum = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            format!("sha256:{}", sum.split_whitespace().next().unwrap_or("")),
            digest
        );
    }
}
