//! Unpacking a pulled image: on overlayfs the daemon extracts every layer at
//! once, each into its own parentless snapshot, and stacks them in order
//! (rebase + commit); directories a layer needs but does not carry take
//! their attributes from the layers below once it is stacked (as when
//! applied onto its parent). The result must be the tree the
//! sequential unpack onto complete copies (native) gives, and the checks
//! the image generator lists (whiteouts, an opaque directory, replaced and
//! hardlinked files, an implicitly created directory's owner and mode) must
//! hold on both.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use stevedore_e2e::{big_image, Daemon};
use stevedore_remote::testutil::TestRegistry;

/// Everything a layer decides about each entry below `root` (directory
/// times aside: deleting through a complete copy touches them).
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        names.sort();
        for p in names {
            let md = std::fs::symlink_metadata(&p).expect("lstat");
            let rel = p
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if ft.is_symlink() {
                format!(
                    "symlink {}",
                    std::fs::read_link(&p).expect("readlink").display()
                )
            } else if ft.is_file() {
                let data = std::fs::read(&p).expect("read file");
                format!(
                    "file {} bytes sha256 {} mtime {} nlink {}",
                    data.len(),
                    stevedore_remote::verify::sha256(&data),
                    md.mtime(),
                    md.nlink()
                )
            } else {
                format!("special {:o} rdev {}", md.mode(), md.rdev())
            };
            out.insert(
                rel,
                format!(
                    "{what} mode {:o} owner {}:{}",
                    md.permissions().mode() & 0o7777,
                    md.uid(),
                    md.gid()
                ),
            );
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

struct Mounted<'a> {
    d: &'a Daemon,
    at: std::path::PathBuf,
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        let _ = self
            .d
            .ctr2(&["images", "unmount", "--rm", self.at.to_str().unwrap()]);
    }
}

/// `ctr images mount` with containerd 2.x's ctr (1.6's ignores its
/// `--snapshotter` flag and always mounts overlayfs).
fn mount<'a>(d: &'a Daemon, snapshotter: &str, image: &str, at: &Path) -> Mounted<'a> {
    std::fs::create_dir_all(at).unwrap();
    d.ctr2_ok(&[
        "images",
        "mount",
        "--snapshotter",
        snapshotter,
        image,
        at.to_str().unwrap(),
    ]);
    Mounted {
        d,
        at: at.to_path_buf(),
    }
}

#[test]
fn concurrent_overlay_unpack_gives_the_tree_of_the_sequential_native_unpack() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = big_image(&dir.path().join("img"), "gzip", 0.02);
    let remote = stevedore_e2e::skopeo_push(&img, &reg.host(), "stevedore/big:unpack", &[]);
    let d = Daemon::start();
    d.cli_ok(&["pull", "--snapshotter", "overlayfs", &remote]);
    d.cli_ok(&["pull", "--snapshotter", "native", &remote]);
    // every layer became a committed snapshot on both, in one chain
    for sn in ["overlayfs", "native"] {
        let ls = d.ctr_ok(&["snapshots", "--snapshotter", sn, "ls"]);
        let committed = ls.lines().filter(|l| l.contains("Committed")).count();
        assert_eq!(committed, 5, "{sn}:\n{ls}");
        assert!(
            !ls.contains("Active"),
            "{sn}: an extraction was left:\n{ls}"
        );
    }
    let ov = mount(&d, "overlayfs", &remote, &dir.path().join("ov"));
    let nat = mount(&d, "native", &remote, &dir.path().join("nat"));
    let (a, b) = (tree(&ov.at), tree(&nat.at));
    assert!(a.len() > 100, "{} entries", a.len());
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k}: overlayfs {v:?}, native {:?}", b.get(k)))
        .chain(
            b.keys()
                .filter(|k| !a.contains_key(*k))
                .map(|k| format!("{k}: only on native")),
        )
        .collect();
    assert!(differ.is_empty(), "trees differ:\n{}", differ.join("\n"));

    let checks = &img.info["checks"];
    for root in [&ov.at, &nat.at] {
        for p in checks["present"].as_array().unwrap() {
            let p = root.join(p.as_str().unwrap());
            assert!(p.symlink_metadata().is_ok(), "{} is missing", p.display());
        }
        for p in checks["absent"].as_array().unwrap() {
            let p = root.join(p.as_str().unwrap());
            assert!(p.symlink_metadata().is_err(), "{} is there", p.display());
        }
        for (p, want) in checks["replaced"].as_object().unwrap() {
            let got = std::fs::read_to_string(root.join(p)).unwrap();
            assert_eq!(&got, want.as_str().unwrap(), "{p}");
        }
        for (p, want) in checks["dirs"].as_object().unwrap() {
            let md = std::fs::metadata(root.join(p)).unwrap();
            assert_eq!(
                (md.permissions().mode() & 0o7777) as u64,
                want["mode"].as_u64().unwrap(),
                "{p} in {}",
                root.display()
            );
            assert_eq!(md.uid() as u64, want["uid"].as_u64().unwrap(), "{p}");
            assert_eq!(md.gid() as u64, want["gid"].as_u64().unwrap(), "{p}");
        }
    }
    drop((ov, nat));
    // and the image runs
    let out = d.ctr_ok(&["images", "check"]);
    assert!(out.contains("complete"), "{out}");
}

/// The bottom layer is extracted while it downloads; the registry serves
/// its blob with the gzip header's timestamp changed (same length, still a
/// gzip stream that extracts to the right diff ID, so only the digest
/// check can tell). The pull fails on that digest, and neither a layer
/// snapshot (committed or left active) nor an image remains: on overlayfs
/// (every layer extracted at once) and on native (one after another).
#[test]
fn pull_of_a_layer_served_corrupted_fails_on_its_digest_and_leaves_no_snapshot() {
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = big_image(&dir.path().join("img"), "gzip", 0.02);
    let remote = stevedore_e2e::skopeo_push(&img, &reg.host(), "stevedore/big:corrupt", &[]);
    let bottom = img.info["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = bottom.strip_prefix("sha256:").unwrap();
    let blob = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut data = std::fs::read(&blob).unwrap_or_else(|e| panic!("{}: {e}", blob.display()));
    assert_eq!(&data[..3], &[0x1f, 0x8b, 8], "a gzip member");
    assert_eq!(
        data[3] & 0x02,
        0,
        "no header CRC that would catch the change"
    );
    data[4] ^= 0x5a;
    std::fs::write(&blob, &data).unwrap();

    for snapshotter in ["overlayfs", "native"] {
        let d = Daemon::start();
        let o = d.cli(&["pull", "--snapshotter", snapshotter, &remote]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{snapshotter}: the pull succeeded:\n{err}"
        );
        assert!(
            err.contains("unexpected commit digest") && err.contains(&bottom),
            "{snapshotter}: the error names the layer and its digest check:\n{err}"
        );
        let ls = d.ctr_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
        assert!(
            !ls.contains("Committed") && !ls.contains("Active"),
            "{snapshotter}: snapshots left:\n{ls}"
        );
        assert_eq!(
            d.ctr_ok(&["images", "ls", "-q"]).trim(),
            "",
            "{snapshotter}: an image was created"
        );
        // the bad bytes are not kept as an ingest a retry would resume at
        // its end (and fail on again): the retry downloads afresh
        let active = d.ctr_ok(&["content", "active"]);
        assert!(
            !active.contains(hex),
            "{snapshotter}: ingest kept:\n{active}"
        );
        let again = d.cli(&["pull", "--snapshotter", snapshotter, &remote]);
        let err2 = String::from_utf8_lossy(&again.stderr);
        assert!(
            !again.status.success() && err2.contains("unexpected commit digest"),
            "{snapshotter}: the retry:\n{err2}"
        );
    }
}
