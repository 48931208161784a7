//! containerd's identifier rules through the real `ctr`: ids of namespaces,
//! containers, tasks and exec processes that are not identifiers are
//! refused with InvalidArgument in containerd's wording, and nothing is
//! written for them; setting a label on a missing namespace creates it.

use std::path::Path;
use stevedore_e2e::{busybox_image, Daemon};

const RULE: &str = "must match ^[A-Za-z0-9]+(?:[._-](?:[A-Za-z0-9]+))*$";

/// Run ctr, expect failure with containerd's InvalidArgument wording.
fn refused(d: &Daemon, args: &[&str]) -> String {
    let o = d.ctr(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "ctr {args:?} succeeded");
    assert!(
        err.contains(RULE) && err.contains("invalid argument"),
        "ctr {args:?}: {err}"
    );
    err
}

/// Every path under `dir` (recursively), for before/after comparisons.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&p) else {
            continue;
        };
        for e in rd.flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn namespace_label_creates_a_missing_namespace() {
    let d = Daemon::start();
    d.ctr_ok(&["namespaces", "label", "fresh", "k=v"]);
    let ls = d.ctr_ok(&["namespaces", "ls"]);
    let line = ls
        .lines()
        .find(|l| l.starts_with("fresh"))
        .unwrap_or_else(|| panic!("no fresh namespace in:\n{ls}"));
    assert!(line.contains("k=v"), "{line}");
    // the Go client's start-up (dockerd's): label the default snapshotter
    d.ctr_ok(&[
        "namespaces",
        "label",
        "moby",
        "containerd.io/defaults/snapshotter=overlayfs",
    ]);
    assert!(d.ctr_ok(&["namespaces", "ls"]).contains("moby"));
    // a bad name is refused and creates nothing
    refused(&d, &["namespaces", "label", "../evil", "k=v"]);
    refused(&d, &["namespaces", "create", "a/b"]);
    let ls = d.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(!ls.contains("evil") && !ls.contains("a/b"), "{ls}");
}

#[test]
fn bad_namespace_header_is_invalid_argument() {
    let d = Daemon::start();
    let o = d.ctr(&["-n", "../x", "containers", "ls"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(RULE), "{err}");
    assert!(!d.ctr_ok(&["namespaces", "ls", "-q"]).contains(".."));
}

#[test]
fn bad_container_task_and_exec_ids_are_refused_and_write_nothing() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);

    // containers: refused, no record
    for bad in ["../c", "a/b", "-x", "c..d", &"c".repeat(77)] {
        let o = d.ctr(&["containers", "create", &img.name, bad, "true"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "container {bad:?} was created");
        assert!(err.contains("invalid argument"), "{bad:?}: {err}");
    }
    assert!(d.ctr_ok(&["containers", "ls", "-q"]).trim().is_empty());

    // exec ids: refused in the daemon (and again by the shim), nothing
    // written next to or outside the bundle
    d.ctr_ok(&["run", "-d", &img.name, "sleeper", "sleep", "300"]);
    let marker = format!(
        "stevedore-exec-escape-{}",
        d.dir.path().file_name().unwrap().to_string_lossy()
    );
    let escape = format!("../../../../../../../../tmp/{marker}");
    let state_before = tree(&d.state);
    for bad in [escape.as_str(), ".hidden", "x..y", "-dash"] {
        let err = refused(&d, &["tasks", "exec", "--exec-id", bad, "sleeper", "true"]);
        assert!(err.contains("invalid exec id"), "{bad:?}: {err}");
    }
    for ext in ["json", "pid"] {
        let p = format!("/tmp/{marker}.{ext}");
        assert!(!Path::new(&p).exists(), "{p} was written");
    }
    // ctr itself made its FIFOs from the exec id (as against containerd)
    for f in ["stdin", "stdout", "stderr"] {
        let _ = std::fs::remove_file(format!("/tmp/{marker}-{f}"));
    }
    let state_after = tree(&d.state);
    let new: Vec<_> = state_after
        .iter()
        .filter(|p| !state_before.contains(p))
        .collect();
    assert!(
        new.iter()
            .all(|p| !p.ends_with(".json") && !p.ends_with(".pid")),
        "files appeared for refused execs: {new:?}"
    );
    // a good exec id still works
    let out = d.ctr_ok(&[
        "tasks",
        "exec",
        "--exec-id",
        "ok.1",
        "sleeper",
        "echo",
        "fine",
    ]);
    assert_eq!(out.trim(), "fine");
    d.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", "sleeper"]);
    d.ctr_ok(&["tasks", "rm", "-f", "sleeper"]);
    d.ctr_ok(&["containers", "rm", "sleeper"]);
}
