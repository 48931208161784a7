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
    let mut ex = OciExporter::default();
    ex.all_platforms = all;
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
    let mut opts = ImportOptions::default();
    opts.platform = Box::new(All);
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
