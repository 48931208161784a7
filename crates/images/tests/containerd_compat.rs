//! stevedore's OCI export is byte-identical to real containerd 1.6's
//! `ctr images export` for the same image, and tars from either import into
//! the other. Starts a private containerd (own root, state, socket).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stevedore_images::archive::{
    ArchiveImporter, ExportImage, Exporter, ImportOptions, Importer, OciExporter,
};
use stevedore_images::testing::{layer_tar, put_image, put_index, DirStore};
use stevedore_types::platform::All;
use stevedore_types::Platform;

fn require_tool(tool: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"] {
        let p = Path::new(dir).join(tool);
        if p.exists() {
            return p;
        }
    }
    panic!("{tool} not found: install the Debian package {package} (scripts/deps.sh)");
}

struct Containerd {
    child: Child,
    dir: tempfile::TempDir,
    sock: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let bin = require_tool("containerd", "containerd");
        let dir = tempfile::Builder::new()
            .prefix("ctrd")
            .tempdir_in("/tmp")
            .unwrap();
        let sock = dir.path().join("c.sock");
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "version = 2\nroot = \"{r}/root\"\nstate = \"{r}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{s}\"\n[ttrpc]\n  address = \"{s}.ttrpc\"\n",
                r = dir.path().display(),
                s = sock.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let c = Containerd { child, dir, sock };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if c.sock.exists() && c.ctr(&["version"]).status.success() {
                return c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "containerd did not start: {}",
            std::fs::read_to_string(c.dir.path().join("log")).unwrap_or_default()
        );
    }
    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(require_tool("ctr", "containerd"))
            .arg("--address")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap()
    }
    fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn busybox_layers() -> Vec<Vec<u8>> {
    let bb = std::fs::read(require_tool("busybox", "busybox-static")).unwrap();
    vec![
        layer_tar(&[("bin/busybox", &bb)]),
        layer_tar(&[
            ("etc/hostname", b"stevedore\n"),
            ("etc/motd", b"hello <&> world\n"),
        ]),
    ]
}

fn export_ours(
    store: &DirStore,
    name: &str,
    target: &stevedore_types::Descriptor,
    all: bool,
) -> Vec<u8> {
    let ex = OciExporter {
        all_platforms: all,
        ..Default::default()
    };
    let mut out = Vec::new();
    ex.export(store, &[ExportImage::named(name, target)], &mut out)
        .unwrap();
    out
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "lengths {} vs {}, first difference at byte {i} (block {}, offset {})",
        a.len(),
        b.len(),
        i / 512,
        i % 512
    )
}

/// Import `tar` into containerd, export `name` with ctr, return the bytes.
fn ctr_roundtrip(c: &Containerd, tar: &[u8], name: &str, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, tar).unwrap();
    c.ctr_ok(&[
        "images",
        "import",
        "--all-platforms",
        "--no-unpack",
        input.to_str().unwrap(),
    ]);
    let ls = c.ctr_ok(&["images", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == name), "{name} not in {ls}");
    let out = dir.path().join("out.tar");
    let mut args = vec!["images", "export"];
    args.extend_from_slice(extra);
    args.push(out.to_str().unwrap());
    args.push(name);
    c.ctr_ok(&args);
    std::fs::read(out).unwrap()
}

#[test]
fn export_is_byte_identical_to_ctr_for_single_and_multi_platform_images() {
    let c = Containerd::start();
    let sd = tempfile::tempdir().unwrap();
    let store = DirStore::new(sd.path()).unwrap();
    let layers = busybox_layers();
    let host = Platform::host();

    // single platform, OCI media types
    let single = put_image(&store, &host, &layers, false, true).unwrap();
    let mut single_target = single.clone();
    single_target.platform = None;
    let name = "example.com/stevedore/single:1";
    let ours = export_ours(&store, name, &single_target, false);
    let theirs = ctr_roundtrip(&c, &ours, name, &[]);
    assert!(
        ours == theirs,
        "single-platform export differs: {}",
        first_difference(&ours, &theirs)
    );

    // multi platform index (host + another), default and --all-platforms
    let other = if host.architecture == "arm64" {
        Platform::new("linux", "amd64", "")
    } else {
        Platform::new("linux", "arm64", "")
    };
    let m1 = put_image(&store, &host, &layers[1..], false, true).unwrap();
    let m2 = put_image(&store, &other, &layers[1..], false, false).unwrap();
    let idx = put_index(&store, &[m2, m1], false).unwrap();
    let name = "example.com/stevedore/multi:latest";
    let all = export_ours(&store, name, &idx, true);
    let theirs_all = ctr_roundtrip(&c, &all, name, &["--all-platforms"]);
    assert!(
        all == theirs_all,
        "multi-platform --all-platforms export differs: {}",
        first_difference(&all, &theirs_all)
    );
    let ours_host = export_ours(&store, name, &idx, false);
    let theirs_host = ctr_roundtrip(&c, &all, name, &[]);
    assert!(
        ours_host == theirs_host,
        "multi-platform host export differs: {}",
        first_difference(&ours_host, &theirs_host)
    );
    assert!(ours_host.len() < all.len());

    // Docker manifest list with Docker media types
    let d1 = put_image(&store, &host, &layers[1..], true, true).unwrap();
    let d2 = put_image(&store, &other, &layers[1..], true, true).unwrap();
    let list = put_index(&store, &[d1, d2], true).unwrap();
    let name = "docker.io/library/stevedore-docker:2";
    let ours = export_ours(&store, name, &list, true);
    let theirs = ctr_roundtrip(&c, &ours, name, &["--all-platforms"]);
    assert!(
        ours == theirs,
        "docker list export differs: {}",
        first_difference(&ours, &theirs)
    );
}

#[test]
fn imports_what_ctr_exports_with_the_same_names_and_content() {
    let c = Containerd::start();
    let sd = tempfile::tempdir().unwrap();
    let store = DirStore::new(sd.path()).unwrap();
    let layers = busybox_layers();
    let host = Platform::host();
    let m = put_image(&store, &host, &layers, false, true).unwrap();
    let idx = put_index(&store, &[m], false).unwrap();
    let name = "example.com/stevedore/rt:1";
    let tar = export_ours(&store, name, &idx, true);
    let exported = ctr_roundtrip(&c, &tar, name, &["--all-platforms"]);

    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = DirStore::new(fresh_dir.path()).unwrap();
    let opts = ImportOptions {
        platform: Box::new(All),
        ..Default::default()
    };
    let recs = ArchiveImporter::new(opts)
        .import(&fresh, &mut &exported[..])
        .unwrap();
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0].name, name);
    assert_eq!(recs[0].target.digest, idx.digest);
    // every blob of the image arrived, plus index.json itself
    for d in store.list().unwrap() {
        assert!(
            fresh.list().unwrap().contains(&d),
            "{d} missing after import"
        );
    }
    // and our re-export equals ctr's export
    let again = export_ours(&fresh, name, &recs[0].target, true);
    assert!(again == exported, "{}", first_difference(&again, &exported));
}

#[test]
fn exported_archive_has_containerds_records_in_order() {
    let sd = tempfile::tempdir().unwrap();
    let store = DirStore::new(sd.path()).unwrap();
    let m = put_image(
        &store,
        &Platform::host(),
        &[layer_tar(&[("a", b"a")])],
        false,
        true,
    )
    .unwrap();
    let out = export_ours(&store, "example.com/x:1", &m, false);
    let mut ar = tar::Archive::new(&out[..]);
    let mut names = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        names.push(format!(
            "{} {:o} {} {} {}",
            e.path().unwrap().display(),
            h.mode().unwrap(),
            h.uid().unwrap(),
            h.mtime().unwrap(),
            h.entry_type().as_byte() as char
        ));
    }
    assert_eq!(names.len(), 8, "{names:#?}");
    assert_eq!(names[0], "blobs/ 755 0 0 5");
    assert_eq!(names[1], "blobs/sha256/ 755 0 0 5");
    assert!(names[2].starts_with("blobs/sha256/") && names[2].ends_with(" 444 0 0 0"));
    assert_eq!(names[5], "index.json 644 0 0 0");
    assert_eq!(names[6], "manifest.json 644 0 0 0");
    assert_eq!(names[7], "oci-layout 444 0 0 0");
    // Go's tar.Writer.Close: two zero blocks, no padding to 10 KiB
    assert!(out.ends_with(&[0u8; 1024]));
    assert_eq!(out.len() % 512, 0);
}

/// A `docker save` tar: `<id>/layer.tar`, `<id>.json` config,
/// `manifest.json`, `repositories`, one layer stored twice via a symlink.
pub fn docker_save_tar(layers: &[Vec<u8>], repo_tag: &str) -> Vec<u8> {
    use stevedore_images::content::digest_of;
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut layer_paths = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let id = digest_of(l).hex().to_string();
        add(&mut b, &format!("{id}/layer.tar"), l);
        layer_paths.push(format!("{id}/layer.tar"));
        diff_ids.push(digest_of(l).to_string());
    }
    // the first layer again, as Docker writes duplicates: a symlink
    let dup = format!("{}/layer.tar", "d".repeat(64));
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, &dup, format!("../{}", layer_paths[0]))
        .unwrap();
    layer_paths.push(dup);
    diff_ids.push(diff_ids[0].clone());
    let host = Platform::host();
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": host.architecture, "os": host.os,
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cfg_name = format!("{}.json", digest_of(&cfg).hex());
    add(&mut b, &cfg_name, &cfg);
    let manifest =
        serde_json::json!([{"Config": cfg_name, "RepoTags": [repo_tag], "Layers": layer_paths}]);
    add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    let (repo, tag) = repo_tag.rsplit_once(':').unwrap();
    let repos = serde_json::json!({repo: {tag: "x".repeat(64)}});
    add(&mut b, "repositories", &serde_json::to_vec(&repos).unwrap());
    b.into_inner().unwrap()
}

#[test]
fn imports_docker_save_tars_to_the_same_manifest_as_ctr() {
    let c = Containerd::start();
    let layers = busybox_layers();
    let tar = docker_save_tar(&layers, "stevedore/dockersave:3");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("docker.tar");
    std::fs::write(&input, &tar).unwrap();
    c.ctr_ok(&[
        "images",
        "import",
        "--no-unpack",
        "--index-name",
        "the-index",
        input.to_str().unwrap(),
    ]);
    let ls = c.ctr_ok(&["images", "ls"]);
    let index_line = ls
        .lines()
        .find(|l| l.starts_with("the-index "))
        .unwrap()
        .to_string();
    let line = ls
        .lines()
        .find(|l| l.starts_with("docker.io/stevedore/dockersave:3 "))
        .unwrap_or_else(|| panic!("image not imported by ctr: {ls}"));

    let sd = tempfile::tempdir().unwrap();
    let store = DirStore::new(sd.path()).unwrap();
    let opts = ImportOptions {
        index_name: Some("the-index".into()),
        ..Default::default()
    };
    let mut recs = ArchiveImporter::new(opts)
        .import(&store, &mut &tar[..])
        .unwrap();
    assert_eq!(recs.len(), 2, "{recs:?}");
    let index = recs.remove(0);
    assert!(
        index_line.contains(&index.target.digest.to_string()),
        "ctr made a different index: {index_line} vs {}",
        index.target.digest
    );
    assert_eq!(recs[0].name, "docker.io/stevedore/dockersave:3");
    assert_eq!(
        recs[0].target.media_type,
        stevedore_images::mediatypes::DOCKER_MANIFEST
    );
    assert!(
        line.contains(&recs[0].target.digest.to_string()),
        "ctr made a different manifest: {line} vs {}",
        recs[0].target.digest
    );
    // the plan for unpacking: three layers with their diff IDs
    let plan = stevedore_images::image::unpack_plan(
        &store,
        &recs[0].target,
        &stevedore_types::platform::default_matcher(),
    )
    .unwrap();
    assert_eq!(plan.layers.len(), 3);
    assert_eq!(plan.layers[0].0.digest, plan.layers[0].1);
    // and ctr exports it byte-identically to us
    let theirs = {
        let out = dir.path().join("out.tar");
        c.ctr_ok(&["images", "export", out.to_str().unwrap(), &recs[0].name]);
        std::fs::read(out).unwrap()
    };
    // image records keep media type, digest, size and annotations (the
    // containerd image store has no platform field), so drop the platform
    let mut stored = recs[0].target.clone();
    stored.platform = None;
    let ours = export_ours(&store, &recs[0].name, &stored, false);
    assert!(ours == theirs, "{}", first_difference(&ours, &theirs));
}

/// Unpack an OCI layout tar into a directory (for skopeo's `oci:` transport).
fn untar_to(tar: &[u8], dir: &Path) {
    tar::Archive::new(tar).unpack(dir).unwrap();
}

#[test]
fn imports_skopeo_archives_like_ctr() {
    let skopeo = require_tool("skopeo", "skopeo");
    let c = Containerd::start();
    let sd = tempfile::tempdir().unwrap();
    let store = DirStore::new(sd.path()).unwrap();
    let m = put_image(&store, &Platform::host(), &busybox_layers(), false, true).unwrap();
    let mut target = m.clone();
    target.platform = None;
    let tar = export_ours(&store, "example.com/src:1", &target, false);
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    untar_to(&tar, &layout);
    for (dest, name) in [
        (
            format!(
                "docker-archive:{}/d.tar:example.com/skopeo/d:5",
                work.path().display()
            ),
            "example.com/skopeo/d:5",
        ),
        (
            format!(
                "oci-archive:{}/o.tar:example.com/skopeo/o:6",
                work.path().display()
            ),
            "example.com/skopeo/o:6",
        ),
    ] {
        let out = Command::new(&skopeo)
            .args(["--insecure-policy", "copy", "-q"])
            .arg(format!("oci:{}:1", layout.display()))
            .arg(&dest)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo copy to {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let file = dest.split(':').nth(1).unwrap().to_string();
        let bytes = std::fs::read(&file).unwrap();
        c.ctr_ok(&[
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            name.rsplit_once(':').unwrap().0,
            "--digests",
            &file,
        ]);
        let ls = c.ctr_ok(&["images", "ls"]);

        let dir = tempfile::tempdir().unwrap();
        let fresh = DirStore::new(dir.path()).unwrap();
        let base = name.rsplit_once(':').unwrap().0;
        let opts = ImportOptions {
            digest_prefix: Some(base.to_string()),
            ..ImportOptions::base_name(base)
        };
        let recs = ArchiveImporter::new(opts)
            .import(&fresh, &mut &bytes[..])
            .unwrap();
        assert!(!recs.is_empty(), "{dest}: no images");
        for r in &recs {
            let want = format!("{} ", r.name);
            let line = ls
                .lines()
                .find(|l| l.starts_with(&want))
                .unwrap_or_else(|| panic!("ctr has no image {}: {ls}", r.name));
            assert!(
                line.contains(&r.target.digest.to_string()),
                "{dest}: ctr {line} vs ours {}",
                r.target.digest
            );
        }
        // ctr created exactly the images we would create
        let ctr_names: Vec<&str> = ls
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(base))
            .collect();
        assert_eq!(
            ctr_names.len(),
            recs.len(),
            "{dest}: {ctr_names:?} vs {recs:?}"
        );
    }
}

#[test]
fn export_options_match_ctr_flags() {
    use stevedore_images::mediatypes::*;
    let c = Containerd::start();
    let sd = tempfile::tempdir().unwrap();
    let store = DirStore::new(sd.path()).unwrap();
    let host = Platform::host();
    let layers = vec![layer_tar(&[("f", b"foreign test")])];
    // a Docker image whose first layer is foreign (non-distributable)
    let base = put_image(&store, &host, &layers, true, true).unwrap();
    let mut m = stevedore_images::spec::read_manifest(&store, &base).unwrap();
    let foreign = store
        .put(
            DOCKER_LAYER_FOREIGN_GZIP,
            &stevedore_images::testing::gzip(&layer_tar(&[("w", b"windows")])),
        )
        .unwrap();
    m.layers.insert(0, foreign.clone());
    let mut md = store
        .put(DOCKER_MANIFEST, &serde_json::to_vec(&m).unwrap())
        .unwrap();
    md.platform = Some(host.clone());
    let other = put_image(
        &store,
        &Platform::new("linux", "riscv64", ""),
        &layers,
        true,
        true,
    )
    .unwrap();
    let idx = put_index(&store, &[other, md], true).unwrap();
    let name = "example.com/stevedore/flags:1";
    let all = export_ours(&store, name, &idx, true);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tar");
    std::fs::write(&input, &all).unwrap();
    c.ctr_ok(&[
        "images",
        "import",
        "--all-platforms",
        "--no-unpack",
        input.to_str().unwrap(),
    ]);

    type Tweak = fn(&mut OciExporter);
    let cases: [(&[&str], Tweak); 3] = [
        (&["--skip-non-distributable", "--all-platforms"], |e| {
            e.skip_non_distributable = true;
            e.all_platforms = true;
        }),
        (&["--skip-manifest-json"], |e| e.skip_docker_manifest = true),
        (&["--platform", "linux/riscv64"], |e| {
            e.platform = Some(Box::new(stevedore_types::platform::Exact(Platform::new(
                "linux", "riscv64", "",
            ))))
        }),
    ];
    for (flags, tweak) in cases {
        let out = dir.path().join("out.tar");
        let mut args = vec!["images", "export"];
        args.extend_from_slice(flags);
        args.push(out.to_str().unwrap());
        args.push(name);
        c.ctr_ok(&args);
        let theirs = std::fs::read(&out).unwrap();
        let mut ex = OciExporter::default();
        tweak(&mut ex);
        let mut ours = Vec::new();
        ex.export(&store, &[ExportImage::named(name, &idx)], &mut ours)
            .unwrap();
        assert!(
            ours == theirs,
            "ctr {flags:?}: {}",
            first_difference(&ours, &theirs)
        );
        let record = format!("blobs/sha256/{}", foreign.digest.hex());
        let has_foreign = tar::Archive::new(&ours[..])
            .entries()
            .unwrap()
            .any(|e| e.unwrap().path().unwrap().to_str() == Some(record.as_str()));
        assert_eq!(has_foreign, flags[0] == "--skip-manifest-json", "{flags:?}");
    }
}
