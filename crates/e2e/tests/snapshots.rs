//! Snapshots through the real containerd `ctr` (and the stevedore CLI)
//! against stevedored, for overlayfs and native: prepare, mount what the
//! daemon returns with mount(8), write, commit, ls, usage, tree, view, rm.

use std::path::{Path, PathBuf};
use std::process::Command;
use stevedore_e2e::{require_tool, Daemon, LoopBtrfs};

/// Unmounts a target when dropped, so a failing test leaves no mount.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Run the `mount -t ...` lines ctr printed, on `target`.
fn mount_printed(out: &str, target: &Path) -> Mounted {
    require_tool("mount", "mount");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("mount ")).collect();
    assert_eq!(lines.len(), 1, "one mount expected: {out}");
    let args: Vec<&str> = lines[0].split_whitespace().skip(1).collect();
    assert!(args.contains(&target.to_str().unwrap()), "{out}");
    let o = Command::new("mount").args(&args).output().unwrap();
    assert!(
        o.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    Mounted(target.to_path_buf())
}

fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .skip(1)
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn ctr_snapshots_lifecycle(snapshotter: &str, expect_child_mount: &str) {
    let d = Daemon::start();
    let sn = ["snapshots", "--snapshotter", snapshotter];
    let ctr = |args: &[&str]| d.ctr_ok(&[&sn[..], args].concat());
    let target = d.dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let t = target.to_str().unwrap();

    ctr(&["prepare", "base", ""]);
    let out = ctr(&["mounts", t, "base"]);
    assert!(out.contains("mount -t bind"), "{out}");
    {
        let _m = mount_printed(&out, &target);
        std::fs::write(target.join("hello"), "from base").unwrap();
    }
    assert!(!target.join("hello").exists(), "unmounted");
    ctr(&["commit", "base-layer", "base"]);

    ctr(&["prepare", "child", "base-layer"]);
    let out = ctr(&["mounts", t, "child"]);
    assert!(out.contains(expect_child_mount), "{out}");
    {
        let _m = mount_printed(&out, &target);
        assert_eq!(
            std::fs::read_to_string(target.join("hello")).unwrap(),
            "from base"
        );
        std::fs::write(target.join("world"), vec![b'w'; 64 * 1024]).unwrap();
    }
    ctr(&["commit", "child-layer", "child"]);

    let ls = rows(&ctr(&["ls"]));
    assert!(
        ls.contains(&vec!["base-layer".into(), "Committed".into()]),
        "{ls:?}"
    );
    assert!(
        ls.contains(&vec![
            "child-layer".into(),
            "base-layer".into(),
            "Committed".into()
        ]),
        "{ls:?}"
    );

    let usage = ctr(&["usage"]);
    let child = rows(&usage)
        .into_iter()
        .find(|r| r[0] == "child-layer")
        .unwrap_or_else(|| panic!("{usage}"));
    let kib: f64 = child[1].parse().unwrap();
    assert!(child[2] == "KiB" && kib >= 64.0, "64 KiB written: {usage}");

    // ctr draws children as `\_ name` under their parent
    let tree = ctr(&["tree"]);
    let lines: Vec<&str> = tree.lines().collect();
    let base_line = lines
        .iter()
        .position(|l| l.trim() == "base-layer")
        .expect(&tree);
    assert_eq!(
        lines.get(base_line + 1).map(|l| l.trim()),
        Some("\\_ child-layer"),
        "{tree}"
    );

    ctr(&["view", "ro", "child-layer"]);
    let out = ctr(&["mounts", t, "ro"]);
    {
        let _m = mount_printed(&out, &target);
        assert!(target.join("hello").exists() && target.join("world").exists());
        assert!(
            std::fs::write(target.join("x"), "x").is_err(),
            "a view is read-only"
        );
    }

    let o = d.ctr(&[&sn[..], &["rm", "base-layer"]].concat());
    assert!(!o.status.success(), "a parent cannot be removed");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("with child"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ctr(&["rm", "ro"]);
    ctr(&["rm", "child-layer"]);
    ctr(&["rm", "base-layer"]);
    assert_eq!(rows(&ctr(&["ls"])).len(), 0);

    // namespaces are isolated
    ctr(&["prepare", "mine", ""]);
    let other = d.ctr_ok(&[
        "-n",
        "other",
        "snapshots",
        "--snapshotter",
        snapshotter,
        "ls",
    ]);
    assert_eq!(rows(&other).len(), 0, "{other}");
    let cli = d.cli_ok(&["snapshots", "--snapshotter", snapshotter, "ls"]);
    assert!(cli.contains("mine") && cli.contains("Active"), "{cli}");
    let json = d.cli_ok(&[
        "-o",
        "json",
        "snapshots",
        "--snapshotter",
        snapshotter,
        "usage",
        "mine",
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["key"], "mine");
}

#[test]
fn ctr_snapshot_lifecycle_on_overlayfs() {
    ctr_snapshots_lifecycle("overlayfs", "mount -t overlay overlay");
}

#[test]
fn ctr_snapshot_lifecycle_on_native() {
    ctr_snapshots_lifecycle("native", "mount -t bind");
}

#[test]
fn stevedore_cli_prepares_commits_and_removes() {
    let d = Daemon::start();
    // as in containerd, snapshots outside a lease are garbage unless they are
    // GC roots: mark them so a collection during the test keeps them
    let root = "containerd.io/gc.root=test";
    d.cli_ok(&["snapshots", "prepare", "a", "--label", root]);
    d.cli_ok(&["snapshots", "commit", "a-done", "a"]);
    d.cli_ok(&[
        "snapshots",
        "prepare",
        "b",
        "a-done",
        "--label",
        "team=x",
        "--label",
        root,
    ]);
    let ls = d.cli_ok(&["snapshots", "ls", "labels.team==x"]);
    let keys: Vec<String> = rows(&ls).into_iter().map(|r| r[0].clone()).collect();
    assert_eq!(keys, ["b"], "{ls}");
    let tree = d.cli_ok(&["snapshots", "tree"]);
    assert_eq!(tree, "a-done\n  b\n");
    let e = d.cli(&["snapshots", "rm", "a-done"]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("FailedPrecondition"));
    d.cli_ok(&["snapshots", "rm", "b", "a-done"]);
}

#[test]
fn ctr_snapshots_on_btrfs_when_its_root_is_btrfs() {
    let mut d = Daemon::start();
    d.stop();
    let root = d.root.join("io.containerd.snapshotter.v1.btrfs");
    let _ = std::fs::remove_dir_all(&root);
    let fs = LoopBtrfs::mount_on(&root, "256M");
    d.spawn();
    let plugins = d.ctr_ok(&["plugins", "ls", "id==btrfs"]);
    assert!(plugins.contains(" ok"), "{plugins}");
    let target = d.dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let t = target.to_str().unwrap();
    let sn = ["snapshots", "--snapshotter", "btrfs"];
    let ctr = |args: &[&str]| d.ctr_ok(&[&sn[..], args].concat());
    ctr(&["prepare", "a", ""]);
    {
        let _m = mount_printed(&ctr(&["mounts", t, "a"]), &target);
        std::fs::write(target.join("f"), "btrfs").unwrap();
    }
    ctr(&["commit", "a-done", "a"]);
    ctr(&["prepare", "b", "a-done"]);
    {
        let _m = mount_printed(&ctr(&["mounts", t, "b"]), &target);
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "btrfs");
    }
    let ls = ctr(&["ls"]);
    assert!(ls.contains("a-done") && ls.contains("Active"), "{ls}");
    ctr(&["rm", "b"]);
    ctr(&["rm", "a-done"]);
    d.stop();
    drop(fs);
}

#[test]
fn snapshot_changes_publish_events() {
    let d = Daemon::start();
    let w = d.watch(d.ctr_command(&["events"]));
    // the watcher subscribes asynchronously: prepare until an event arrives
    let mut seen = None;
    for i in 0..100 {
        d.ctr_ok(&["snapshots", "prepare", &format!("sync{i}"), ""]);
        if let Some(l) = w
            .lines_for(std::time::Duration::from_millis(200))
            .into_iter()
            .find(|l| l.contains("/snapshot/prepare"))
        {
            seen = Some(l);
            break;
        }
    }
    let line = seen.expect("a /snapshot/prepare event");
    assert!(line.contains("default"), "{line}");
    d.ctr_ok(&["snapshots", "commit", "done", "sync0"]);
    w.expect_line(&["/snapshot/commit"], std::time::Duration::from_secs(5));
    d.ctr_ok(&["snapshots", "rm", "done"]);
    w.expect_line(&["/snapshot/remove"], std::time::Duration::from_secs(5));
}

#[test]
fn containerd_2_events_name_the_snapshotter_and_content_creation() {
    let d = Daemon::start();
    let w = d.watch(d.ctr2_command(&["events"]));
    let mut seen = None;
    for i in 0..100 {
        d.ctr_ok(&["snapshots", "prepare", &format!("p{i}"), ""]);
        if let Some(l) = w
            .lines_for(std::time::Duration::from_millis(200))
            .into_iter()
            .find(|l| l.contains("/snapshot/prepare"))
        {
            seen = Some(l);
            break;
        }
    }
    let line = seen.expect("a /snapshot/prepare event");
    assert!(line.contains("\"snapshotter\":\"overlayfs\""), "{line}");
    d.ctr_ok(&["snapshots", "rm", "p0"]);
    let line = w.expect_line(&["/snapshot/remove"], std::time::Duration::from_secs(5));
    assert!(line.contains("\"snapshotter\":\"overlayfs\""), "{line}");
    // a committed write: containerd 2.x's /content/create with digest and size
    let mut ingest = d.ctr_command(&["content", "ingest", "ev-blob"]);
    let mut child = ingest.stdin(std::process::Stdio::piped()).spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello events\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let line = w.expect_line(&["/content/create"], std::time::Duration::from_secs(5));
    assert!(
        line.contains("sha256:") && line.contains("\"size\":13"),
        "{line}"
    );
}
