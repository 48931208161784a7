//! The main user flows end to end, driven by the real ctr and the stevedore
//! CLI against a real stevedored: import, unpack, mount, export, run, pull
//! from a real registry, and garbage collection of what is removed.

use stevedore_e2e::{busybox_image, multi_image, Daemon, Images};
use stevedore_remote::testutil::TestRegistry;

fn busybox() -> (tempfile::TempDir, Images) {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    (dir, img)
}

/// Push a generated OCI layout into the registry under `name`.
fn push(img: &Images, reg: &TestRegistry, name: &str) -> String {
    stevedore_e2e::skopeo_push(img, &reg.host(), name, &["--all"])
}

#[test]
fn ctr_imports_unpacks_mounts_exports_and_collects() {
    let d = Daemon::start();
    let (dir, img) = busybox();
    let out = d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    assert!(out.contains("done"), "{out}");
    let check = d.ctr_ok(&["images", "check"]);
    assert!(
        check.contains("complete") && check.contains("true"),
        "{check}"
    );
    // the unpacked rootfs has busybox
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    d.ctr_ok(&["images", "mount", &img.name, mnt.to_str().unwrap()]);
    assert!(mnt.join("bin/busybox").exists());
    d.ctr_ok(&["images", "unmount", "--rm", mnt.to_str().unwrap()]);
    // export, then import the export into a second daemon
    let exported = dir.path().join("export.tar");
    d.ctr_ok(&["images", "export", exported.to_str().unwrap(), &img.name]);
    let d2 = Daemon::start();
    d2.ctr_ok(&["images", "import", exported.to_str().unwrap()]);
    assert!(d2.ctr_ok(&["images", "ls", "-q"]).contains(&img.name));
    // a Docker save tar imports too, into the native snapshotter
    let docker = img.docker_tar.clone().unwrap();
    d2.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        "native",
        docker.to_str().unwrap(),
    ]);
    assert!(d2
        .ctr_ok(&["snapshots", "--snapshotter", "native", "ls"])
        .contains("Committed"));
    // removing the image with --sync collects its content and snapshots
    d.ctr_ok(&["images", "rm", "--sync", &img.name]);
    assert_eq!(d.ctr_ok(&["content", "ls", "-q"]).trim(), "");
    assert_eq!(
        d.ctr_ok(&["snapshots", "ls"]).lines().count(),
        1,
        "only the header remains"
    );
}

#[test]
fn ctr_run_prints_output_and_propagates_exit_codes() {
    let d = Daemon::start();
    let (_dir, img) = busybox();
    d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    let out = d.ctr_ok(&["run", "--rm", &img.name, "hello", "echo", "hi"]);
    assert_eq!(out.trim(), "hi");
    let o = d.ctr(&["run", "--rm", &img.name, "three", "sh", "-c", "exit 3"]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // --env, --cwd and the native snapshotter
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
        "--env",
        "GREETING=yo",
        "--cwd",
        "/tmp",
        &img.name,
        "envcwd",
        "sh",
        "-c",
        "echo $GREETING $(pwd)",
    ]);
    assert_eq!(out.trim(), "yo /tmp");
    // nothing is left behind
    assert_eq!(d.ctr_ok(&["containers", "ls", "-q"]).trim(), "");
    assert_eq!(d.ctr_ok(&["tasks", "ls", "-q"]).trim(), "");
}

#[test]
fn ctr_and_stevedore_pull_from_a_real_registry() {
    let reg = TestRegistry::start();
    let (_dir, img) = busybox();
    let remote = push(&img, &reg, "library/busybox:1");
    let d = Daemon::start();
    // the classic client-side flow of ctr
    d.ctr_ok(&["images", "pull", "--plain-http", &remote]);
    let check = d.ctr_ok(&["images", "check", &format!("name=={remote}")]);
    assert!(
        check.contains("complete") && check.contains("true"),
        "{check}"
    );
    // the daemon-side pull of stevedore, into another namespace
    let out = d.cli_ok(&["-n", "team", "pull", &remote]);
    assert!(out.contains(&remote) && out.contains(&img.digest), "{out}");
    let check = d.ctr_ok(&["-n", "team", "images", "check"]);
    assert!(
        check.contains("complete") && check.contains("true"),
        "{check}"
    );
    // and the pulled image runs
    let out = d.ctr_ok(&["-n", "team", "run", "--rm", &remote, "p1", "echo", "pulled"]);
    assert_eq!(out.trim(), "pulled");
    // a second pull finds everything present
    let j: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-n", "team", "-o", "json", "pull", &remote])).unwrap();
    assert_eq!(j["digest"], img.digest.as_str());
    // a missing image is a clear NotFound
    let o = d.cli(&["pull", &format!("{}/library/nope:1", reg.host())]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("NotFound") && err.contains("nope"), "{err}");
}

#[test]
fn stevedore_pulls_one_platform_or_all_of_a_multi_platform_image() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = multi_image(dir.path());
    let remote = push(&img, &reg, "stevedore/multi:latest");
    let d = Daemon::start();
    d.cli_ok(&["pull", "--no-unpack", "--platform", "linux/arm64", &remote]);
    // index + the arm64 manifest + its config + the layer; no amd64 manifest
    let content = d.ctr_ok(&["content", "ls", "-q"]);
    assert_eq!(content.lines().count(), 4, "{content}");
    let d2 = Daemon::start();
    d2.cli_ok(&["pull", "--all-platforms", "--no-unpack", &remote]);
    let content = d2.ctr_ok(&["content", "ls", "-q"]);
    // index + 2 manifests + 2 configs + the shared layer
    assert!(content.lines().count() >= 5, "{content}");
}

#[test]
fn stevedore_and_ctr_push_to_a_real_registry() {
    let reg = TestRegistry::start();
    let (_dir, img) = busybox();
    let d = Daemon::start();
    d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    // daemon-side push under a new name, children before the manifest
    let dest = format!("{}/pushed/busybox:v1", reg.host());
    let out = d.cli_ok(&["push", &dest, &img.name]);
    assert!(out.contains(&img.digest), "{out}");
    // the registry serves it: a fresh daemon pulls it back, complete
    let d2 = Daemon::start();
    d2.cli_ok(&["pull", &dest]);
    let check = d2.ctr_ok(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");
    // pushing again uploads nothing (the registry has every blob)
    let o = d.cli(&["push", &dest, &img.name]);
    assert!(o.status.success());
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!log.contains("layer") || log.contains("exists"), "{log}");
    // the classic client-side push of ctr works against stevedored too
    let dest2 = format!("{}/ctr/busybox:v2", reg.host());
    d.ctr_ok(&["images", "push", "--plain-http", &dest2, &img.name]);
    d2.cli_ok(&["pull", &dest2]);
    // pushing an unknown local image fails clearly
    let o = d.cli(&["push", &dest, "nope:1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
}

#[test]
fn stevedore_imports_and_exports_archives_in_the_daemon() {
    let d = Daemon::start();
    let (dir, img) = busybox();
    let out = d.cli_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    assert!(out.contains(&img.name), "{out}");
    let check = d.ctr_ok(&["images", "check"]);
    assert!(
        check.contains("complete") && check.contains("true"),
        "{check}"
    );
    // stevedore's export is byte-identical to ctr's of the same image
    let ours = dir.path().join("ours.tar");
    let theirs = dir.path().join("theirs.tar");
    d.cli_ok(&["images", "export", ours.to_str().unwrap(), &img.name]);
    d.ctr_ok(&["images", "export", theirs.to_str().unwrap(), &img.name]);
    assert_eq!(
        std::fs::read(&ours).unwrap(),
        std::fs::read(&theirs).unwrap()
    );
    // a docker save tar under an OCI name, into another namespace, runs
    let docker = img.docker_tar.clone().unwrap();
    d.cli_ok(&[
        "-n",
        "other",
        "images",
        "import",
        "--oci-name",
        "foo/bar",
        docker.to_str().unwrap(),
    ]);
    let ls = d.cli_ok(&["-n", "other", "images", "ls", "-q"]);
    assert!(ls.contains("foo/bar@sha256:"), "{ls}");
    // a broken archive fails clearly and leaves no image behind
    let broken = dir.path().join("broken.tar");
    let bytes = std::fs::read(&img.oci_tar).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let o = d.cli(&["-n", "broken", "images", "import", broken.to_str().unwrap()]);
    assert!(!o.status.success());
    assert_eq!(d.cli_ok(&["-n", "broken", "images", "ls", "-q"]).trim(), "");
}

#[test]
fn stevedore_images_mount_shows_the_rootfs_and_unmount_cleans_up() {
    let d = Daemon::start();
    let (dir, img) = busybox();
    d.cli_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    let mnt = dir.path().join("m");
    std::fs::create_dir_all(&mnt).unwrap();
    d.cli_ok(&["images", "mount", &img.name, mnt.to_str().unwrap()]);
    assert!(mnt.join("bin/busybox").exists());
    assert!(
        std::fs::write(mnt.join("x"), "y").is_err(),
        "a view is read-only"
    );
    d.cli_ok(&["images", "unmount", mnt.to_str().unwrap()]);
    assert!(!mnt.join("bin/busybox").exists());
    assert_eq!(
        d.ctr_ok(&["snapshots", "ls"]).lines().count(),
        2,
        "only the image's layer"
    );
    // --rw gives a writable snapshot
    d.cli_ok(&["images", "mount", "--rw", &img.name, mnt.to_str().unwrap()]);
    std::fs::write(mnt.join("x"), "y").unwrap();
    d.cli_ok(&["images", "unmount", mnt.to_str().unwrap()]);
}

#[test]
fn ctr_images_convert_to_oci_makes_a_runnable_image() {
    let d = Daemon::start();
    let (_dir, img) = busybox();
    let docker = img.docker_tar.clone().unwrap();
    d.ctr_ok(&["images", "import", docker.to_str().unwrap()]);
    let oci = format!("{}-oci", img.name);
    d.ctr_ok(&["images", "convert", "--oci", &img.name, &oci]);
    let ls = d.ctr_ok(&["images", "ls", &format!("name=={oci}")]);
    assert!(
        ls.contains("application/vnd.oci.image.manifest.v1+json"),
        "{ls}"
    );
    let out = d.ctr_ok(&["run", "--rm", &oci, "conv", "echo", "converted"]);
    assert_eq!(out.trim(), "converted");
}

#[test]
fn stevedore_images_check_inspect_and_convert() {
    let d = Daemon::start();
    let (_dir, img) = busybox();
    let docker = img.docker_tar.clone().unwrap();
    d.cli_ok(&["images", "import", "-q", docker.to_str().unwrap()]);
    d.cli_ok(&["images", "convert", "--oci", &img.name, "bb:oci"]);
    d.cli_ok(&[
        "images",
        "convert",
        "--layer-compression",
        "zstd",
        "bb:oci",
        "bb:zstd",
    ]);
    // a full collection keeps the converted trees (children GC labels are set)
    let lease = d.ctr_ok(&["leases", "create"]).trim().to_string();
    d.ctr_ok(&["leases", "rm", "--sync", &lease]);
    let j: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-o", "json", "images", "check"])).unwrap();
    for i in j.as_array().unwrap() {
        assert_eq!(i["complete"], true, "{j}");
        assert_eq!(i["unpacked"], true, "{j}");
    }
    let inspect: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["images", "inspect", "bb:zstd"])).unwrap();
    assert_eq!(
        inspect["manifest"]["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    assert_eq!(inspect["config"]["os"], "linux");
    let out = d.ctr_ok(&["run", "--rm", "bb:zstd", "z", "echo", "zstd"]);
    assert_eq!(out.trim(), "zstd");
    // an unknown compression is refused clearly
    let o = d.cli(&[
        "images",
        "convert",
        "--layer-compression",
        "lz4",
        "bb:oci",
        "x",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown layer compression"));
}
