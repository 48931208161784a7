//! containerd 2.x's `ctr` against stevedored: `images pull|push|import|
//! export|tag` go through containerd's Transfer service (typed `Any`s,
//! progress, byte and credential streams over the Streaming service); the
//! `--local` variants through the 1.6 services. The real ctr 2.1 from
//! Debian unstable, unpacked by scripts/unstable-tools.sh.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use stevedore_e2e::{busybox_image, multi_image, require_tool, Daemon, Images};
use stevedore_remote::testutil::TestRegistry;

fn skopeo_push(img: &Images, reg: &TestRegistry, name: &str) -> String {
    stevedore_e2e::skopeo_push(img, &reg.host(), name, &["--all"])
}

/// Digests the namespace's content holds.
fn content_digests(d: &Daemon) -> Vec<String> {
    d.ctr_ok(&["content", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// The target digest `ctr images ls` shows for `name`.
fn image_digest(d: &Daemon, name: &str) -> String {
    let ls = d.ctr2_ok(&["images", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not listed:\n{ls}"));
    line.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap()
        .to_string()
}

/// Names of the entries of a tar file, and the bytes of `index.json`.
fn tar_entries(path: &Path) -> (Vec<String>, Vec<u8>) {
    let mut ar = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut names = Vec::new();
    let mut index = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if name == "index.json" {
            e.read_to_end(&mut index).unwrap();
        }
        names.push(name);
    }
    (names, index)
}

fn manifest_digest(img: &Images, arch: &str) -> String {
    img.info["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] == arch)
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn ctr2_pulls_from_a_registry_and_runs_the_image() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let remote = skopeo_push(&img, &reg, "library/bb:1");
    let d = Daemon::start();
    let out = d.ctr2_ok(&["images", "pull", "--plain-http", &remote]);
    // containerd's progress: status lines and the tree of objects (the last
    // lines race ctr's exit, as against containerd)
    assert!(out.contains("from OCI Registry ("), "{out}");
    assert!(out.contains("└──layer ("), "{out}");
    assert_eq!(image_digest(&d, &remote), img.digest);
    let check = d.ctr2_ok(&["images", "check"]);
    assert!(
        check.contains("complete") && check.contains(&remote),
        "{check}"
    );
    // unpacked into the default snapshotter: ctr run needs no unpack of its own
    let snaps = d.ctr_ok(&["snapshots", "ls"]);
    assert!(snaps.contains("Committed"), "{snaps}");
    let run = d.ctr2_ok(&["run", "--rm", &remote, "c2", "echo", "hello from ctr2"]);
    assert_eq!(run.trim(), "hello from ctr2");
    // a missing image is NotFound, with the registry's word for it
    let o = d.ctr2(&[
        "images",
        "pull",
        "--plain-http",
        &format!("{}/library/nope:1", reg.host()),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn ctr2_pulls_one_platform_or_all_of_an_index() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = multi_image(dir.path());
    let remote = skopeo_push(&img, &reg, "stevedore/multi:1");
    let amd64 = manifest_digest(&img, "amd64");
    let arm64 = manifest_digest(&img, "arm64");

    // --skip-metadata: only the platform asked
    let d = Daemon::start();
    d.ctr2_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--skip-metadata",
        "--platform",
        "linux/arm64/v8",
        &remote,
    ]);
    let have = content_digests(&d);
    assert!(have.contains(&arm64), "{have:?}");
    assert!(!have.contains(&amd64), "{have:?}");
    assert_eq!(image_digest(&d, &remote), img.digest);
    // another platform than the host's is not unpacked (containerd skips it)
    assert!(!d.ctr_ok(&["snapshots", "ls"]).contains("Committed"));

    let d2 = Daemon::start();
    d2.ctr2_ok(&["images", "pull", "--plain-http", "--all-platforms", &remote]);
    let have = content_digests(&d2);
    assert!(have.contains(&arm64) && have.contains(&amd64), "{have:?}");
    let check = d2.ctr2_ok(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");

    // by default ctr 2.x asks for all metadata (ImageStore.all_metadata):
    // every manifest and config of the index, layers only for the platform
    // asked; the image keeps them through a GC
    let d3 = Daemon::start();
    d3.ctr2_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--platform",
        "linux/arm64/v8",
        &remote,
    ]);
    let amd64_manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            img.oci_dir
                .join("blobs/sha256")
                .join(amd64.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let amd64_config = amd64_manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    d3.ctr2_ok(&["leases", "create", "--id", "gc-now"]);
    d3.ctr2_ok(&["leases", "rm", "--sync", "gc-now"]);
    let have = content_digests(&d3);
    for want in [&arm64, &amd64, &amd64_config] {
        assert!(have.contains(want), "{want} missing: {have:?}");
    }
    assert_eq!(image_digest(&d3, &remote), img.digest);
}

#[test]
fn ctr2_pulls_through_a_hosts_directory_and_with_basic_auth() {
    let reg = TestRegistry::start_with_basic_auth("alice", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    // skopeo needs the credentials too
    let dest = format!("{}/private/bb:1", reg.host());
    let o = Command::new(require_tool("skopeo", "skopeo"))
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .args(["--dest-creds", "alice:s3cret"])
        .arg(format!("oci:{}", img.oci_dir.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hosts = dir.path().join("hosts");
    let hdir = hosts.join(reg.host());
    std::fs::create_dir_all(&hdir).unwrap();
    std::fs::write(
        hdir.join("hosts.toml"),
        format!(
            "server = \"http://{0}\"\n[host.\"http://{0}\"]\ncapabilities = [\"pull\", \"resolve\", \"push\"]\n",
            reg.host()
        ),
    )
    .unwrap();
    let hosts = hosts.to_str().unwrap();
    let d = Daemon::start();
    // without credentials the registry refuses
    let o = d.ctr2(&["images", "pull", "--hosts-dir", hosts, &dest]);
    assert!(!o.status.success(), "pulled without credentials");
    // the credentials travel over ctr's auth stream
    d.ctr2_ok(&[
        "images",
        "pull",
        "--hosts-dir",
        hosts,
        "--user",
        "alice:s3cret",
        &dest,
    ]);
    assert_eq!(image_digest(&d, &dest), img.digest);
    assert!(!d.log().contains("s3cret"), "the password reached the log");
    // push back under another name with the same credentials
    let copy = format!("{}/private/copy:2", reg.host());
    d.ctr2_ok(&["images", "tag", &dest, &copy]);
    d.ctr2_ok(&[
        "images",
        "push",
        "--hosts-dir",
        hosts,
        "--user",
        "alice:s3cret",
        &copy,
    ]);
    let d2 = Daemon::start();
    d2.ctr2_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        "alice:s3cret",
        &copy,
    ]);
    assert_eq!(image_digest(&d2, &copy), img.digest);
}

#[test]
fn ctr2_tags_lists_and_removes_images() {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    d.ctr2_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    let out = d.ctr2_ok(&[
        "images",
        "tag",
        &img.name,
        "example.com/copy:1",
        "example.com/copy:2",
    ]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["example.com/copy:1", "example.com/copy:2"]
    );
    assert_eq!(image_digest(&d, "example.com/copy:1"), img.digest);
    assert_eq!(image_digest(&d, "example.com/copy:2"), img.digest);
    // tagging a missing image is NotFound and creates nothing
    let o = d.ctr2(&["images", "tag", "example.com/nope:1", "example.com/x:1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    assert!(!d
        .ctr2_ok(&["images", "ls", "-q"])
        .contains("example.com/x:1"));
    d.ctr2_ok(&["images", "rm", "example.com/copy:1"]);
    let ls = d.ctr2_ok(&["images", "ls", "-q"]);
    assert!(
        !ls.contains("example.com/copy:1") && ls.contains("example.com/copy:2"),
        "{ls}"
    );
    // the 1.6 path of tag still works
    d.ctr2_ok(&["images", "tag", "--local", &img.name, "example.com/local:1"]);
    assert_eq!(image_digest(&d, "example.com/local:1"), img.digest);
}

#[test]
fn ctr2_import_export_round_trip_is_byte_identical_to_ctr_1_6() {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    let out = d.ctr2_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    assert!(out.contains("Importing"), "{out}");
    assert_eq!(image_digest(&d, &img.name), img.digest);
    // unpacked for this host: runs straight away
    let run = d.ctr2_ok(&["run", "--rm", &img.name, "imp", "echo", "imported"]);
    assert_eq!(run.trim(), "imported");

    let ours = dir.path().join("ctr2.tar");
    d.ctr2_ok(&["images", "export", ours.to_str().unwrap(), &img.name]);
    let reference = dir.path().join("ctr16.tar");
    d.ctr_ok(&["images", "export", reference.to_str().unwrap(), &img.name]);
    assert!(
        std::fs::read(&ours).unwrap() == std::fs::read(&reference).unwrap(),
        "ctr 2.x's export differs from ctr 1.6's"
    );
    // the exported archive imports into another daemon, under a base name
    let d2 = Daemon::start();
    d2.ctr2_ok(&[
        "images",
        "import",
        "--base-name",
        "docker.io/library/busybox",
        ours.to_str().unwrap(),
    ]);
    assert_eq!(image_digest(&d2, &img.name), img.digest);
    // compressed archives import as on containerd 2.x (the stream's
    // compression is detected): `docker save | gzip`, `zstd` archives
    for (tool, ext) in [("gzip", "gz"), ("zstd", "zst")] {
        let packed = dir.path().join(format!("ctr2.tar.{ext}"));
        let st = std::process::Command::new(tool)
            .args(["-q", "-c"])
            .arg(&ours)
            .stdout(std::fs::File::create(&packed).unwrap())
            .status()
            .unwrap_or_else(|e| panic!("{tool} (Debian package {tool}): {e}"));
        assert!(st.success(), "{tool} failed");
        d2.ctr2_ok(&["images", "rm", "--sync", &img.name]);
        let out = d2.ctr2_ok(&["images", "import", packed.to_str().unwrap()]);
        assert!(out.contains("Importing"), "{out}");
        assert_eq!(image_digest(&d2, &img.name), img.digest, "{ext}");
    }
    // a missing image exports nothing and says NotFound
    let o = d.ctr2(&[
        "images",
        "export",
        dir.path().join("x.tar").to_str().unwrap(),
        "nope:1",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));
    // the 1.6 services (ctr 2.x's own client-side exporter and importer)
    let local = dir.path().join("local.tar");
    d.ctr2_ok(&[
        "images",
        "export",
        "--local",
        local.to_str().unwrap(),
        &img.name,
    ]);
    let d3 = Daemon::start();
    d3.ctr2_ok(&["images", "import", "--local", local.to_str().unwrap()]);
    assert_eq!(image_digest(&d3, &img.name), img.digest);
}

#[test]
fn ctr2_import_compress_blobs_gzips_docker_layers() {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    let docker_tar = img
        .docker_tar
        .clone()
        .expect("busybox has a Docker archive");
    let archive = docker_tar.to_str().unwrap();
    let layer_types = |d: &Daemon| -> Vec<String> {
        let digest = image_digest(d, &img.name);
        let m: serde_json::Value =
            serde_json::from_str(&d.ctr2_ok(&["content", "get", &digest])).unwrap();
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect()
    };
    d.ctr2_ok(&["images", "import", archive]);
    assert_eq!(
        layer_types(&d),
        ["application/vnd.docker.image.rootfs.diff.tar"]
    );
    d.ctr2_ok(&["images", "rm", "--sync", &img.name]);
    d.ctr2_ok(&["images", "import", "--compress-blobs", archive]);
    assert_eq!(
        layer_types(&d),
        ["application/vnd.docker.image.rootfs.diff.tar.gzip"]
    );
    let run = d.ctr2_ok(&["run", "--rm", &img.name, "cb", "echo", "gzipped"]);
    assert_eq!(run.trim(), "gzipped");
}

#[test]
fn ctr2_import_export_of_a_multi_platform_archive() {
    let dir = tempfile::tempdir().unwrap();
    let img = multi_image(dir.path());
    let amd64 = manifest_digest(&img, "amd64");
    let arm64 = manifest_digest(&img, "arm64");
    let d = Daemon::start();
    d.ctr2_ok(&[
        "images",
        "import",
        "--all-platforms",
        img.oci_tar.to_str().unwrap(),
    ]);
    assert_eq!(image_digest(&d, &img.name), img.digest);
    let have = content_digests(&d);
    assert!(have.contains(&amd64) && have.contains(&arm64), "{have:?}");

    let all = dir.path().join("all.tar");
    d.ctr2_ok(&[
        "images",
        "export",
        "--all-platforms",
        all.to_str().unwrap(),
        &img.name,
    ]);
    let reference = dir.path().join("all16.tar");
    d.ctr_ok(&[
        "images",
        "export",
        "--all-platforms",
        reference.to_str().unwrap(),
        &img.name,
    ]);
    assert!(
        std::fs::read(&all).unwrap() == std::fs::read(&reference).unwrap(),
        "ctr 2.x's export --all-platforms differs from ctr 1.6's"
    );
    let (names, _) = tar_entries(&all);
    for m in [&amd64, &arm64] {
        let blob = format!("blobs/sha256/{}", m.trim_start_matches("sha256:"));
        assert!(names.contains(&blob), "{blob} missing from {names:?}");
    }
    // one platform: only its manifest's blobs
    let one = dir.path().join("arm64.tar");
    d.ctr2_ok(&[
        "images",
        "export",
        "--platform",
        "linux/arm64/v8",
        one.to_str().unwrap(),
        &img.name,
    ]);
    let (names, index) = tar_entries(&one);
    assert!(names.contains(&format!(
        "blobs/sha256/{}",
        arm64.trim_start_matches("sha256:")
    )));
    assert!(!names.contains(&format!(
        "blobs/sha256/{}",
        amd64.trim_start_matches("sha256:")
    )));
    assert!(!index.is_empty());

    // round trip into another daemon
    let d2 = Daemon::start();
    d2.ctr2_ok(&["images", "import", "--all-platforms", all.to_str().unwrap()]);
    assert_eq!(image_digest(&d2, &img.name), img.digest);
    let check = d2.ctr2_ok(&["images", "check"]);
    assert!(check.contains("complete"), "{check}");
}

#[test]
fn ctr2_pushes_to_a_registry_and_the_local_paths_still_work() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    d.ctr2_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    let dest = format!("{}/pushed/bb:1", reg.host());
    let out = d.ctr2_ok(&["images", "push", "--plain-http", &dest, &img.name]);
    assert!(out.contains("to OCI Registry ("), "{out}");
    // pushing a missing image is NotFound
    let o = d.ctr2(&["images", "push", "--plain-http", &dest, "nope:1"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not found"));

    // what was pushed pulls and runs elsewhere, with ctr 2.x's --local too
    let d2 = Daemon::start();
    d2.ctr2_ok(&["images", "pull", "--plain-http", &dest]);
    assert_eq!(image_digest(&d2, &dest), img.digest);
    let run = d2.ctr2_ok(&["run", "--rm", &dest, "p2", "echo", "pushed"]);
    assert_eq!(run.trim(), "pushed");
    let d3 = Daemon::start();
    d3.ctr2_ok(&["images", "pull", "--local", "--plain-http", &dest]);
    assert_eq!(image_digest(&d3, &dest), img.digest);
    let local = format!("{}/pushed/local:1", reg.host());
    d3.ctr2_ok(&["images", "tag", "--local", &dest, &local]);
    d3.ctr2_ok(&["images", "push", "--local", "--plain-http", &local]);
    let d4 = Daemon::start();
    d4.ctr2_ok(&["images", "pull", "--plain-http", &local]);
    assert_eq!(image_digest(&d4, &local), img.digest);
}

/// The mtimes of the entries of a gzip-compressed layer.
fn layer_mtimes(gz: &[u8]) -> std::collections::HashMap<String, u64> {
    use std::io::Write;
    let mut child = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip (Debian package gzip)");
    child.stdin.take().unwrap().write_all(gz).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "gzip -dc of the diff");
    let mut a = tar::Archive::new(out.stdout.as_slice());
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.path().unwrap().display().to_string();
            (name, e.header().mtime().unwrap())
        })
        .collect()
}

#[test]
fn ctr2_snapshot_diff_honours_source_date_epoch_and_unpack_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let d = Daemon::start();
    // an active snapshot with a file dated in the future (2033)
    d.ctr2_ok(&["snapshots", "prepare", "sde-active"]);
    let mounts = d.ctr2_ok(&["snapshots", "mounts", "/unused", "sde-active"]);
    let source = mounts
        .split_whitespace()
        .skip_while(|w| *w != "-t")
        .nth(2)
        .unwrap_or_else(|| panic!("no mount source in {mounts:?}"))
        .to_string();
    let file = std::path::Path::new(&source).join("hello.txt");
    std::fs::write(&file, "hi\n").unwrap();
    let future = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(future)
        .unwrap();
    // without SOURCE_DATE_EPOCH the diff keeps the file's time
    let plain = d.ctr2(&["snapshots", "diff", "sde-active"]);
    assert!(plain.status.success(), "{plain:?}");
    assert_eq!(layer_mtimes(&plain.stdout)["hello.txt"], 2_000_000_000);
    // with it, ctr 2.x sends DiffRequest.source_date_epoch: times are clamped
    let clamped = d
        .ctr2_command(&["snapshots", "diff", "sde-active"])
        .env("SOURCE_DATE_EPOCH", "1000")
        .output()
        .unwrap();
    assert!(clamped.status.success(), "{clamped:?}");
    assert_eq!(layer_mtimes(&clamped.stdout)["hello.txt"], 1000);
    d.ctr2_ok(&["snapshots", "rm", "sde-active"]);

    // ApplyRequest.sync_fs: a client-side unpack asking for syncfs works
    d.ctr2_ok(&[
        "images",
        "import",
        "--local",
        "--sync-fs",
        img.oci_tar.to_str().unwrap(),
    ]);
    let run = d.ctr2_ok(&["run", "--rm", &img.name, "sync", "echo", "synced"]);
    assert_eq!(run.trim(), "synced");
}
