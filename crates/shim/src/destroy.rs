//! Deleting a stopped runc container as `runc delete` does it, without
//! running runc.
//!
//! For a container whose init has exited, `runc delete` (runc 1.0 to 1.5,
//! libcontainer's `destroy`) removes the container's cgroups (the
//! `cgroup_paths` of its `state.json`, sub-cgroups first, retried five
//! times from 10 ms while the last processes die), its Intel RDT group and
//! its state directory, then runs the poststop hooks; with a shared PID
//! namespace it first kills what is left in the cgroup. The shim does the
//! common case itself, saving a Go program's start-up per deleted task,
//! and leaves the rest to `runc delete`: hooks, systemd-managed cgroups,
//! Intel RDT, a PID namespace not its own, a state file it does not read
//! as expected, or a cgroup that will not go.

use serde_json::Value;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Where cgroups live; a path elsewhere in `state.json` is not trusted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Delete stopped container `id` under runc's state root `root`: Ok(true)
/// once its cgroups and state are gone; Ok(false) when this is for `runc
/// delete` (nothing was changed, or what was removed runc would have
/// removed too).
pub fn delete_stopped(root: &Path, id: &str) -> std::io::Result<bool> {
    let dir = root.join(id);
    let state = match std::fs::read(dir.join("state.json")) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let Some(paths) = plain_cgroups(&state, id) else {
        return Ok(false);
    };
    if !remove_cgroups(paths) {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(true)
}

/// The container's cgroup directories, when `state` (runc's state.json)
/// asks for nothing beyond their removal and the state directory's.
fn plain_cgroups(state: &[u8], id: &str) -> Option<Vec<PathBuf>> {
    let s: Value = serde_json::from_slice(state).ok()?;
    if s.get("id")?.as_str()? != id {
        return None;
    }
    let config = s.get("config")?;
    // poststop hooks run at delete (the others ran before)
    for key in ["Hooks", "hooks"] {
        match config.get(key) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => match m.get("poststop") {
                None | Some(Value::Null) => {}
                Some(Value::Array(a)) if a.is_empty() => {}
                Some(_) => return None,
            },
            Some(_) => return None,
        }
    }
    let cgroups = config.get("cgroups")?;
    for key in ["Systemd", "systemd"] {
        if cgroups.get(key).and_then(Value::as_bool).unwrap_or(false) {
            return None;
        }
    }
    if s.get("intel_rdt_path")
        .and_then(Value::as_str)
        .is_some_and(|p| !p.is_empty())
    {
        return None;
    }
    // its own PID namespace: the kernel killed what init left behind
    let own_pidns = config.get("namespaces")?.as_array()?.iter().any(|n| {
        n.get("type").and_then(Value::as_str) == Some("NEWPID")
            && n.get("path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
    });
    if !own_pidns {
        return None;
    }
    let mut paths = Vec::new();
    for v in s.get("cgroup_paths")?.as_object()?.values() {
        let p = Path::new(v.as_str()?);
        let below = p.starts_with(CGROUP_ROOT)
            && p.components().count() > Path::new(CGROUP_ROOT).components().count() + 1
            && p.components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !below {
            return None;
        }
        paths.push(p.to_path_buf());
    }
    Some(paths)
}

/// runc's `RemovePaths`: each cgroup with its sub-cgroups, five tries
/// from 10 ms apart, doubling. True once every one is gone.
fn remove_cgroups(mut paths: Vec<PathBuf>) -> bool {
    let mut delay = Duration::from_millis(10);
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(delay);
            delay *= 2;
        }
        paths.retain(|p| {
            let _ = remove_cgroup(p);
            p.exists()
        });
        if paths.is_empty() {
            return true;
        }
    }
    false
}

/// runc's `RemovePath`: rmdir, else the sub-cgroups first, then rmdir.
fn remove_cgroup(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup(&entry.path())?;
        }
    }
    std::fs::remove_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(id: &str) -> Value {
        json!({
            "id": id,
            "config": {
                "Hooks": null,
                "cgroups": {"path": "/default/c", "Systemd": false},
                "namespaces": [{"type": "NEWPID", "path": ""}, {"type": "NEWNS", "path": ""}],
            },
            "cgroup_paths": {
                "": "/sys/fs/cgroup/unified/default/c",
                "pids": "/sys/fs/cgroup/pids/default/c",
            },
            "intel_rdt_path": "",
        })
    }

    fn paths(v: &Value, id: &str) -> Option<Vec<PathBuf>> {
        plain_cgroups(&serde_json::to_vec(v).unwrap(), id)
    }

    #[test]
    fn a_plain_stopped_container_gives_its_cgroups() {
        let mut got = paths(&state("c"), "c").unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                PathBuf::from("/sys/fs/cgroup/pids/default/c"),
                PathBuf::from("/sys/fs/cgroup/unified/default/c")
            ]
        );
        let mut empty_hooks = state("c");
        empty_hooks["config"]["Hooks"] = json!({"poststop": [], "prestart": null});
        assert!(paths(&empty_hooks, "c").is_some());
        // Docker's prestart hook (libnetwork-setkey) ran long before
        let mut prestart = state("c");
        prestart["config"]["Hooks"] = json!({"prestart": [{"path": "/usr/bin/dockerd"}]});
        assert!(paths(&prestart, "c").is_some());
    }

    #[test]
    fn anything_more_is_left_to_runc_delete() {
        type Change = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Change)> = vec![
            ("another id", Box::new(|v| v["id"] = json!("d"))),
            (
                "poststop hook",
                Box::new(|v| v["config"]["Hooks"] = json!({"poststop": [{"path": "/bin/true"}]})),
            ),
            (
                "systemd cgroups",
                Box::new(|v| v["config"]["cgroups"]["Systemd"] = json!(true)),
            ),
            (
                "intel rdt",
                Box::new(|v| v["intel_rdt_path"] = json!("/sys/fs/resctrl/c")),
            ),
            (
                "host pid namespace",
                Box::new(|v| v["config"]["namespaces"] = json!([{"type": "NEWNS", "path": ""}])),
            ),
            (
                "joined pid namespace",
                Box::new(|v| v["config"]["namespaces"][0]["path"] = json!("/proc/1/ns/pid")),
            ),
            (
                "cgroup outside",
                Box::new(|v| v["cgroup_paths"]["pids"] = json!("/tmp/x")),
            ),
            (
                "cgroup root itself",
                Box::new(|v| v["cgroup_paths"]["pids"] = json!("/sys/fs/cgroup/pids")),
            ),
            (
                "dot-dot",
                Box::new(|v| v["cgroup_paths"]["pids"] = json!("/sys/fs/cgroup/pids/../../../etc")),
            ),
            (
                "no cgroup paths",
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("cgroup_paths");
                }),
            ),
            (
                "not a string",
                Box::new(|v| v["cgroup_paths"]["pids"] = json!(7)),
            ),
        ];
        for (what, change) in cases {
            let mut v = state("c");
            change(&mut v);
            assert!(paths(&v, "c").is_none(), "{what}");
        }
        assert!(plain_cgroups(b"{not json", "c").is_none());
    }

    #[test]
    fn no_state_file_is_left_to_runc_delete() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!delete_stopped(dir.path(), "absent").unwrap());
    }

    #[test]
    fn removes_nested_directories_children_first() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("c");
        std::fs::create_dir_all(top.join("a/b")).unwrap();
        std::fs::create_dir_all(top.join("d")).unwrap();
        assert!(remove_cgroups(vec![top.clone(), dir.path().join("gone")]));
        assert!(!top.exists());
    }
}
