//! The snapshotter conformance suite (after containerd's
//! `snapshots/testsuite`), run against overlayfs, native and btrfs (on a
//! loop-mounted btrfs made by the test) with real mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use stevedore_snapshots::{Kind, Snapshotter};
use stevedore_sys::mount::MountGuard;
use stevedore_types::filters::Filter;
use stevedore_types::{ErrorKind, Mount};

type Case = fn(&dyn Snapshotter, &Path, &Path);

static MOUNT_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Mount `mounts` on a fresh directory under `work`, run `f`, unmount.
fn with_mount<T>(mounts: &[Mount], work: &Path, f: impl FnOnce(&Path) -> T) -> T {
    let target = work.join(format!("m{}", MOUNT_SEQ.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&target).unwrap();
    let g = MountGuard::mount(mounts, &target).expect("mount snapshot");
    let out = f(&target);
    g.release().expect("unmount snapshot");
    out
}

fn no_labels() -> HashMap<String, String> {
    HashMap::new()
}

/// Prepare `key` on `parent`, let `f` change its files, commit as `name`.
fn layer(
    s: &dyn Snapshotter,
    work: &Path,
    key: &str,
    parent: &str,
    name: &str,
    f: impl FnOnce(&Path),
) {
    let m = s.prepare(key, parent, no_labels()).unwrap();
    with_mount(&m, work, f);
    s.commit(name, key, no_labels()).unwrap();
}

fn kind_of_err<T: std::fmt::Debug>(r: stevedore_types::Result<T>) -> ErrorKind {
    r.expect_err("expected an error").kind
}

fn prepare_commit_chain(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k1", "", "base", |p| {
        std::fs::write(p.join("a"), "A").unwrap()
    });
    let m = s.prepare("k2", "base", no_labels()).unwrap();
    assert_eq!(s.stat("k2").unwrap().kind, Kind::Active);
    assert_eq!(s.stat("k2").unwrap().parent, "base");
    assert_eq!(s.mounts("k2").unwrap(), m);
    with_mount(&m, work, |p| {
        assert_eq!(std::fs::read_to_string(p.join("a")).unwrap(), "A");
        std::fs::write(p.join("b"), "B").unwrap();
    });
    s.commit("top", "k2", no_labels()).unwrap();
    assert_eq!(kind_of_err(s.stat("k2")), ErrorKind::NotFound);
    let top = s.stat("top").unwrap();
    assert_eq!((top.kind, top.parent.as_str()), (Kind::Committed, "base"));
    let v = s.view("v", "top", no_labels()).unwrap();
    assert_eq!(s.stat("v").unwrap().kind, Kind::View);
    with_mount(&v, work, |p| {
        assert_eq!(std::fs::read_to_string(p.join("a")).unwrap(), "A");
        assert_eq!(std::fs::read_to_string(p.join("b")).unwrap(), "B");
    });
    let names = |f: &str| {
        let mut n: Vec<String> = s
            .list(&Filter::parse(f).unwrap())
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        n.sort();
        n
    };
    assert_eq!(names("kind==committed"), ["base", "top"]);
    assert_eq!(names("parent==base"), ["top"]);
    assert_eq!(names("kind==view"), ["v"]);
    assert_eq!(names(""), ["base", "top", "v"]);
    assert_eq!(kind_of_err(s.mounts("top")), ErrorKind::FailedPrecondition);
}

fn view_is_read_only(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k", "", "base", |p| {
        std::fs::write(p.join("a"), "A").unwrap()
    });
    layer(s, work, "k2", "base", "two", |p| {
        std::fs::write(p.join("b"), "B").unwrap()
    });
    for parent in ["base", "two"] {
        let key = format!("view-{parent}");
        let m = s.view(&key, parent, no_labels()).unwrap();
        with_mount(&m, work, |p| {
            assert!(p.join("a").exists());
            let e = std::fs::write(p.join("new"), "x").unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(30),
                "EROFS on a view of {parent}: {e}"
            );
            assert!(std::fs::remove_file(p.join("a")).is_err());
        });
        assert_eq!(
            kind_of_err(s.commit("c", &key, no_labels())),
            ErrorKind::FailedPrecondition
        );
    }
    // a view with no parent is an empty read-only tree
    let m = s.view("empty-view", "", no_labels()).unwrap();
    with_mount(&m, work, |p| {
        assert_eq!(std::fs::read_dir(p).unwrap().count(), 0);
        assert!(std::fs::write(p.join("x"), "x").is_err());
    });
}

fn remove_with_children_fails(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k", "", "base", |_| {});
    s.prepare("child", "base", no_labels()).unwrap();
    let e = s.remove("base").unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message.contains("with child"), "{e}");
    s.remove("child").unwrap();
    s.remove("base").unwrap();
    assert_eq!(kind_of_err(s.stat("base")), ErrorKind::NotFound);
    assert_eq!(kind_of_err(s.remove("base")), ErrorKind::NotFound);
}

fn errors_name_the_snapshot(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k", "", "base", |_| {});
    s.prepare("a", "", no_labels()).unwrap();
    let e = s.prepare("a", "", no_labels()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::AlreadyExists);
    assert!(e.message.contains("\"a\""), "{e}");
    assert_eq!(
        kind_of_err(s.prepare("b", "missing", no_labels())),
        ErrorKind::NotFound
    );
    assert_eq!(
        kind_of_err(s.prepare("b", "a", no_labels())),
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        kind_of_err(s.commit("base", "a", no_labels())),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        kind_of_err(s.commit("x", "base", no_labels())),
        ErrorKind::FailedPrecondition
    );
    assert_eq!(
        kind_of_err(s.commit("x", "nope", no_labels())),
        ErrorKind::NotFound
    );
    assert_eq!(kind_of_err(s.mounts("nope")), ErrorKind::NotFound);
    assert_eq!(kind_of_err(s.usage("nope")), ErrorKind::NotFound);
    // the failed prepares left nothing behind
    assert_eq!(s.list(&Filter::default()).unwrap().len(), 2);
}

fn concurrent_prepares(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k", "", "base", |p| {
        std::fs::write(p.join("a"), "A").unwrap()
    });
    let won = AtomicUsize::new(0);
    std::thread::scope(|sc| {
        for i in 0..8 {
            let won = &won;
            sc.spawn(move || {
                s.prepare(&format!("distinct-{i}"), "base", no_labels())
                    .unwrap();
                match s.prepare("same", "base", no_labels()) {
                    Ok(_) => {
                        won.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}"),
                }
            });
        }
    });
    assert_eq!(
        won.load(Ordering::Relaxed),
        1,
        "exactly one prepare of a key wins"
    );
    assert_eq!(
        s.list(&Filter::parse("kind==active").unwrap())
            .unwrap()
            .len(),
        9
    );
}

fn usage_counts_layer_bytes_and_inodes(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    let m = s.prepare("k", "", no_labels()).unwrap();
    let before = s.usage("k").unwrap();
    with_mount(&m, work, |p| {
        std::fs::write(p.join("big"), vec![7u8; 1 << 20]).unwrap();
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/small"), "x").unwrap();
    });
    let after = s.usage("k").unwrap();
    assert!(
        after.size - before.size >= 1 << 20,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.inodes - before.inodes, 3, "{before:?} -> {after:?}");
    s.commit("c", "k", no_labels()).unwrap();
    assert_eq!(s.usage("c").unwrap(), after, "usage is recorded at commit");
}

fn labels_are_kept_updated_and_filtered(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    let labels = HashMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
    s.prepare("k", "", labels.clone()).unwrap();
    assert_eq!(s.stat("k").unwrap().labels, labels);
    let mut info = s.stat("k").unwrap();
    info.labels = HashMap::from([
        ("a".to_string(), "one".to_string()),
        ("c".into(), "3".into()),
    ]);
    let updated = s.update(info.clone(), &["labels.a".into()]).unwrap();
    assert_eq!(updated.labels["a"], "one");
    assert_eq!(updated.labels["b"], "2");
    assert!(!updated.labels.contains_key("c"));
    assert!(updated.updated >= updated.created);
    let e = s.update(info.clone(), &["parent".into()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    let replaced = s.update(info, &[]).unwrap();
    assert_eq!(replaced.labels.len(), 2);
    assert_eq!(s.stat("k").unwrap().labels["c"], "3");
    let hits = s.list(&Filter::parse("labels.c==3").unwrap()).unwrap();
    assert_eq!(hits.len(), 1);
    let commit_labels =
        HashMap::from([("containerd.io/snapshot.ref".to_string(), "x".to_string())]);
    s.commit("done", "k", commit_labels.clone()).unwrap();
    assert_eq!(s.stat("done").unwrap().labels, commit_labels);
    let _ = work;
}

fn deep_chains_mount_every_layer(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    const DEPTH: usize = 128;
    let mut parent = String::new();
    for i in 0..DEPTH {
        let name = format!("layer-{i:03}-{}", "x".repeat(40));
        layer(s, work, &format!("active-{i}"), &parent, &name, |p| {
            std::fs::write(p.join(format!("f{i}")), i.to_string()).unwrap()
        });
        parent = name;
    }
    let v = s.view("deep-view", &parent, no_labels()).unwrap();
    with_mount(&v, work, |p| {
        for i in 0..DEPTH {
            assert_eq!(
                std::fs::read_to_string(p.join(format!("f{i}"))).unwrap(),
                i.to_string()
            );
        }
    });
    let m = s.prepare("deep-active", &parent, no_labels()).unwrap();
    with_mount(&m, work, |p| {
        assert!(p.join("f0").exists() && p.join("f127").exists());
        std::fs::write(p.join("top"), "t").unwrap();
    });
}

fn file_deleted_in_upper_layer_is_gone(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k1", "", "base", |p| {
        std::fs::write(p.join("keep"), "k").unwrap();
        std::fs::write(p.join("gone"), "g").unwrap();
    });
    layer(s, work, "k2", "base", "top", |p| {
        std::fs::remove_file(p.join("gone")).unwrap()
    });
    let v = s.view("v", "top", no_labels()).unwrap();
    with_mount(&v, work, |p| {
        assert!(p.join("keep").exists());
        assert!(!p.join("gone").exists());
    });
    // the lower layer still has it
    let v = s.view("vb", "base", no_labels()).unwrap();
    with_mount(&v, work, |p| assert!(p.join("gone").exists()));
}

fn replaced_dir_hides_lower_contents(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k1", "", "base", |p| {
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/x"), "x").unwrap();
        std::fs::write(p.join("d/y"), "y").unwrap();
    });
    layer(s, work, "k2", "base", "mid", |p| {
        std::fs::write(p.join("m"), "m").unwrap()
    });
    layer(s, work, "k3", "mid", "top", |p| {
        std::fs::remove_dir_all(p.join("d")).unwrap();
        std::fs::create_dir(p.join("d")).unwrap();
        std::fs::write(p.join("d/z"), "z").unwrap();
    });
    let v = s.view("v", "top", no_labels()).unwrap();
    with_mount(&v, work, |p| {
        let mut names: Vec<String> = std::fs::read_dir(p.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["z"]);
        assert!(p.join("m").exists());
    });
}

/// stevedore's own `rebase`: where layers are independent directories
/// (overlayfs) an active snapshot moves onto another committed parent with
/// its files, its mounts stack on the new parent, and the parent can no
/// longer be removed; elsewhere it is refused and changes nothing.
fn rebase_moves_an_active_snapshot_or_is_refused(s: &dyn Snapshotter, _root: &Path, work: &Path) {
    layer(s, work, "k1", "", "base", |p| {
        std::fs::write(p.join("a"), "A").unwrap()
    });
    let m = s.prepare("loose", "", no_labels()).unwrap();
    with_mount(&m, work, |p| std::fs::write(p.join("b"), "B").unwrap());
    if !s.can_rebase() {
        assert_eq!(
            kind_of_err(s.rebase("loose", "base")),
            ErrorKind::NotImplemented
        );
        assert_eq!(s.stat("loose").unwrap().parent, "");
        return;
    }
    assert_eq!(kind_of_err(s.rebase("loose", "nope")), ErrorKind::NotFound);
    assert_eq!(
        kind_of_err(s.rebase("base", "")),
        ErrorKind::FailedPrecondition
    );
    let m = s.rebase("loose", "base").unwrap();
    assert_eq!(s.stat("loose").unwrap().parent, "base");
    assert_eq!(s.mounts("loose").unwrap(), m);
    with_mount(&m, work, |p| {
        assert_eq!(std::fs::read_to_string(p.join("a")).unwrap(), "A");
        assert_eq!(std::fs::read_to_string(p.join("b")).unwrap(), "B");
    });
    assert_eq!(kind_of_err(s.remove("base")), ErrorKind::FailedPrecondition);
    s.commit("top", "loose", no_labels()).unwrap();
    assert_eq!(s.stat("top").unwrap().parent, "base");
    let v = s.view("v", "top", no_labels()).unwrap();
    with_mount(&v, work, |p| {
        assert_eq!(std::fs::read_to_string(p.join("a")).unwrap(), "A");
        assert_eq!(std::fs::read_to_string(p.join("b")).unwrap(), "B");
    });
    s.remove("v").unwrap();
    s.remove("top").unwrap();
    s.remove("base").unwrap();
}

fn cleanup_removes_only_orphans(s: &dyn Snapshotter, root: &Path, work: &Path) {
    layer(s, work, "k", "", "base", |p| {
        std::fs::write(p.join("a"), "A").unwrap()
    });
    s.prepare("live", "base", no_labels()).unwrap();
    let snaps = root.join("snapshots");
    let before: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(before.len(), 2);
    for orphan in ["999", "rm-7", "new-deadbeef"] {
        std::fs::create_dir_all(snaps.join(orphan).join("fs/sub")).unwrap();
        std::fs::write(snaps.join(orphan).join("fs/sub/f"), "x").unwrap();
    }
    s.cleanup().unwrap();
    let mut after: Vec<PathBuf> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(after, before);
    let m = s.mounts("live").unwrap();
    with_mount(&m, work, |p| assert!(p.join("a").exists()));
    s.remove("live").unwrap();
    assert_eq!(
        std::fs::read_dir(&snaps).unwrap().count(),
        1,
        "remove deletes the directory"
    );
}

const CASES: &[(&str, Case)] = &[
    ("prepare_commit_chain", prepare_commit_chain),
    ("view_is_read_only", view_is_read_only),
    ("remove_with_children_fails", remove_with_children_fails),
    ("errors_name_the_snapshot", errors_name_the_snapshot),
    ("concurrent_prepares", concurrent_prepares),
    (
        "usage_counts_layer_bytes_and_inodes",
        usage_counts_layer_bytes_and_inodes,
    ),
    (
        "labels_are_kept_updated_and_filtered",
        labels_are_kept_updated_and_filtered,
    ),
    (
        "deep_chains_mount_every_layer",
        deep_chains_mount_every_layer,
    ),
    (
        "file_deleted_in_upper_layer_is_gone",
        file_deleted_in_upper_layer_is_gone,
    ),
    (
        "replaced_dir_hides_lower_contents",
        replaced_dir_hides_lower_contents,
    ),
    ("cleanup_removes_only_orphans", cleanup_removes_only_orphans),
    (
        "rebase_moves_an_active_snapshot_or_is_refused",
        rebase_moves_an_active_snapshot_or_is_refused,
    ),
];

fn case(name: &str) -> Case {
    CASES
        .iter()
        .find(|(n, _)| *n == name)
        .expect("case exists")
        .1
}

fn run_on(open: fn(&Path) -> Arc<dyn Snapshotter>, base: &Path, name: &str) {
    let root = base.join(format!("root-{name}"));
    let work = base.join(format!("work-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    let s = open(&root);
    case(name)(&*s, &root, &work);
    // metadata survives reopening (after the first instance is dropped)
    let before = s.list(&Filter::default()).unwrap().len();
    drop(s);
    let s = open(&root);
    assert_eq!(
        s.list(&Filter::default()).unwrap().len(),
        before,
        "{name}: reopened"
    );
}

fn overlay(root: &Path) -> Arc<dyn Snapshotter> {
    Arc::new(stevedore_snapshots::overlay::open(root).unwrap())
}

fn native(root: &Path) -> Arc<dyn Snapshotter> {
    Arc::new(stevedore_snapshots::native::open(root).unwrap())
}

fn btrfs(root: &Path) -> Arc<dyn Snapshotter> {
    Arc::new(stevedore_snapshots::btrfs::open(root).unwrap())
}

macro_rules! suite {
    ($backend:ident: $($case:ident),*) => {
        mod $backend {
            $(
                #[test]
                fn $case() {
                    let d = tempfile::Builder::new().prefix("snap-").tempdir_in("/tmp").unwrap();
                    super::run_on(super::$backend, d.path(), stringify!($case));
                }
            )*
        }
    };
}

suite!(overlay: prepare_commit_chain, view_is_read_only, remove_with_children_fails,
    errors_name_the_snapshot, concurrent_prepares, usage_counts_layer_bytes_and_inodes,
    labels_are_kept_updated_and_filtered, deep_chains_mount_every_layer,
    file_deleted_in_upper_layer_is_gone, replaced_dir_hides_lower_contents,
    cleanup_removes_only_orphans, rebase_moves_an_active_snapshot_or_is_refused);

suite!(native: prepare_commit_chain, view_is_read_only, remove_with_children_fails,
    errors_name_the_snapshot, concurrent_prepares, usage_counts_layer_bytes_and_inodes,
    labels_are_kept_updated_and_filtered, deep_chains_mount_every_layer,
    file_deleted_in_upper_layer_is_gone, replaced_dir_hides_lower_contents,
    cleanup_removes_only_orphans, rebase_moves_an_active_snapshot_or_is_refused);

fn require_tool(tool: &str, package: &str) {
    let found = std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(tool).is_file());
    assert!(
        found,
        "{tool} is required by this test: apt-get install {package}"
    );
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A btrfs filesystem on a loop device, torn down on drop.
struct LoopBtrfs {
    dir: tempfile::TempDir,
    dev: String,
    mounted: bool,
}

impl LoopBtrfs {
    fn new() -> LoopBtrfs {
        require_tool("mkfs.btrfs", "btrfs-progs");
        require_tool("btrfs", "btrfs-progs");
        require_tool("losetup", "mount");
        let dir = tempfile::Builder::new()
            .prefix("btrfs-")
            .tempdir_in("/tmp")
            .unwrap();
        let img = dir.path().join("img");
        run("truncate", &["-s", "1G", img.to_str().unwrap()]);
        run("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        let dev = run("losetup", &["-f", "--show", img.to_str().unwrap()]);
        let mut fs = LoopBtrfs {
            dir,
            dev,
            mounted: false,
        };
        std::fs::create_dir(fs.mnt()).unwrap();
        run(
            "mount",
            &["-t", "btrfs", &fs.dev, fs.mnt().to_str().unwrap()],
        );
        fs.mounted = true;
        fs
    }
    fn mnt(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.mnt()).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

#[test]
fn btrfs_passes_the_conformance_suite_on_a_loop_device() {
    let fs = LoopBtrfs::new();
    for (name, _) in CASES {
        run_on(btrfs, &fs.mnt(), name);
    }
}

#[test]
fn btrfs_refuses_a_root_that_is_not_btrfs() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    let e = stevedore_snapshots::btrfs::open(&root).err().unwrap();
    assert_eq!(
        e.message,
        format!(
            "path {} must be a btrfs filesystem to be used with the btrfs snapshotter",
            root.display()
        )
    );
}
