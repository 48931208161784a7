//! A container's OOM event before its exit event, whatever the shim does.
//!
//! Consumers decide from the order of the two events: Docker sets
//! `State.OOMKilled` from `/tasks/oom` and stops the container on
//! `/tasks/exit`, applying a container's events in the order they arrive,
//! so an OOM delivered after the exit is missing from the state a `docker
//! run` or `docker wait` hands back; the CRI gives the reason `OOMKilled`
//! only if the OOM came first. containerd's Go shim publishes the two from
//! different goroutines (the OOM from the cgroup watcher, the exit from
//! the reaper), and it starts watching only after `runc start` returned,
//! so under load the exit can come first or the OOM not at all
//! (containerd issues 8180 and 8893; the same happens with containerd).
//!
//! So when a task's init process exits and no OOM was forwarded for the
//! container since its task was created, the daemon reads the memory
//! cgroup's own count of OOM kills (`oom_kill` in `memory.oom_control` on
//! cgroup v1, `memory.events` on v2; the cgroup lives until the task is
//! deleted) and, if the kernel killed something, forwards a `/tasks/oom`
//! just before the exit. The shim's own OOM event arriving later for the
//! same task is then dropped, so consumers see the OOM first. (What was
//! forwarded is marked in the task's bundle, so a daemon restarted between
//! the OOM and the exit does not forward a second one.) The check reads two small files, only
//! when an init exits without an OOM reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use stevedore_api::events::{TaskCreate, TaskDelete, TaskExit, TaskOom};
use stevedore_runtime::{Any, Bundle, Event};

/// How long a synthesised OOM waits to swallow the shim's late one.
const LATE_OOM: Duration = Duration::from_secs(30);
/// The file in a task's bundle saying an OOM was forwarded for it (the
/// bundle, and so the mark, goes with the task).
const OOM_MARK: &str = "oom-reported";
/// Entries kept before the map is first swept of tasks that are gone.
const SWEEP_AT: usize = 256;

#[derive(Default)]
struct Entry {
    /// An OOM was forwarded for the current task.
    reported: bool,
    /// When one was synthesised at exit; the shim's own is dropped then.
    synthesized: Option<Instant>,
    /// The task was deleted: the entry only waits for a late OOM.
    deleted: bool,
}

/// Orders OOM before exit for the events shims forward.
pub struct OomOrder {
    state: PathBuf,
    cgroup_root: PathBuf,
    tasks: Mutex<Tasks>,
}

struct Tasks {
    by_id: HashMap<(String, String), Entry>,
    /// Sweep when the map grows past this (doubling with live tasks).
    sweep_at: usize,
}

impl OomOrder {
    /// `state` is the task manager's state directory (bundles).
    pub fn new(state: PathBuf) -> OomOrder {
        OomOrder::with_cgroup_root(state, PathBuf::from("/sys/fs/cgroup"))
    }

    fn with_cgroup_root(state: PathBuf, cgroup_root: PathBuf) -> OomOrder {
        OomOrder {
            state,
            cgroup_root,
            tasks: Mutex::new(Tasks {
                by_id: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        }
    }

    /// The events to forward for `ev`, in order: `ev` itself, preceded by
    /// a synthesised OOM, or nothing for an OOM already reported.
    pub fn order(&self, ev: Event) -> Vec<Event> {
        let Some((kind, key)) = classify(&ev) else {
            return vec![ev];
        };
        let mut guard = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        let tasks = &mut guard.by_id;
        let mut out = vec![ev];
        match kind {
            Kind::Create => {
                let _ = std::fs::remove_file(self.oom_mark(&key));
                tasks.insert(key, Entry::default());
            }
            Kind::Oom => {
                self.mark_reported(&key);
                let e = tasks.entry(key).or_default();
                e.reported = true;
                if e.synthesized.take().is_some() {
                    out.clear();
                }
            }
            Kind::InitExit => {
                let reported =
                    tasks.get(&key).is_some_and(|e| e.reported) || self.was_reported(&key);
                if !reported && self.oom_kills(&key.0, &key.1) > 0 {
                    tracing::debug!(
                        namespace = %key.0,
                        id = %key.1,
                        "the cgroup counted an OOM kill the shim has not reported: forwarding /tasks/oom before /tasks/exit"
                    );
                    let oom = Event {
                        timestamp: out[0].timestamp,
                        namespace: key.0.clone(),
                        topic: "/tasks/oom".into(),
                        event: Some(any_of(&TaskOom {
                            container_id: key.1.clone(),
                        })),
                    };
                    out.insert(0, oom);
                    self.mark_reported(&key);
                    let e = tasks.entry(key).or_default();
                    e.reported = true;
                    e.synthesized = Some(Instant::now());
                }
            }
            Kind::InitDelete => match tasks.get_mut(&key) {
                // keep it to swallow the shim's late OOM
                Some(e) if e.synthesized.is_some() => e.deleted = true,
                _ => {
                    tasks.remove(&key);
                }
            },
        }
        if guard.by_id.len() > guard.sweep_at {
            // what the shims' delete events did not remove: tasks whose
            // bundle is gone, and late OOMs that never came
            guard.by_id.retain(|(ns, id), e| match e.synthesized {
                Some(t) => t.elapsed() < LATE_OOM,
                None => !e.deleted && Bundle::at(&self.state, &self.state, ns, id).path.exists(),
            });
            guard.sweep_at = SWEEP_AT.max(2 * guard.by_id.len());
        }
        out
    }

    /// Note in the task's bundle that an OOM was forwarded, so a daemon
    /// restarted before the exit does not forward another.
    fn mark_reported(&self, key: &(String, String)) {
        let mark = self.oom_mark(key);
        if mark.parent().is_some_and(Path::is_dir) {
            let _ = std::fs::write(mark, b"");
        }
    }

    fn was_reported(&self, key: &(String, String)) -> bool {
        self.oom_mark(key).exists()
    }

    /// The task's [`OOM_MARK`] file (in its bundle).
    fn oom_mark(&self, (namespace, id): &(String, String)) -> PathBuf {
        Bundle::at(&self.state, &self.state, namespace, id)
            .path
            .join(OOM_MARK)
    }

    /// The OOM kills the task's memory cgroup counted; 0 when unknown.
    /// `namespace` and `id` are valid (see [`classify`]).
    fn oom_kills(&self, namespace: &str, id: &str) -> u64 {
        let bundle = Bundle::at(&self.state, &self.state, namespace, id);
        let Some(cg) = cgroups_path(&bundle.path) else {
            return 0;
        };
        // both files have an `oom_kill N` line
        let file = if self.cgroup_root.join("cgroup.controllers").exists() {
            self.cgroup_root.join(&cg).join("memory.events")
        } else {
            self.cgroup_root
                .join("memory")
                .join(&cg)
                .join("memory.oom_control")
        };
        std::fs::read_to_string(file)
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    (k == "oom_kill").then(|| v.trim().parse().ok()).flatten()
                })
            })
            .unwrap_or(0)
    }
}

enum Kind {
    Create,
    Oom,
    InitExit,
    InitDelete,
}

/// The task event `ev` is, for its container (namespace, id), if it is one
/// this ordering follows and names a valid namespace and container id (the
/// pair becomes a bundle path).
fn classify(ev: &Event) -> Option<(Kind, (String, String))> {
    let v = ev.event.as_ref()?.value.as_slice();
    let (kind, id) = match ev.topic.as_str() {
        "/tasks/create" => (Kind::Create, TaskCreate::decode(v).ok()?.container_id),
        "/tasks/oom" => (Kind::Oom, TaskOom::decode(v).ok()?.container_id),
        "/tasks/exit" => {
            let x = TaskExit::decode(v).ok()?;
            (x.id == x.container_id).then_some((Kind::InitExit, x.container_id))?
        }
        "/tasks/delete" => {
            let d = TaskDelete::decode(v).ok()?;
            (d.id.is_empty() || d.id == d.container_id)
                .then_some((Kind::InitDelete, d.container_id))?
        }
        _ => return None,
    };
    stevedore_metadata::namespaces::validate_name(&ev.namespace).ok()?;
    stevedore_runtime::bundle::validate_id("container", &id).ok()?;
    Some((kind, (ev.namespace.clone(), id)))
}

/// The bundle's `linux.cgroupsPath` as a path relative to a hierarchy's
/// root, when it is a plain cgroupfs path (not systemd's `slice:prefix:name`)
/// with no `.` or `..` component.
fn cgroups_path(bundle: &Path) -> Option<PathBuf> {
    let b = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    let cg = v["linux"]["cgroupsPath"].as_str()?;
    if cg.contains(':') {
        return None;
    }
    let mut rel = PathBuf::new();
    for c in cg.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return None;
        }
        rel.push(c);
    }
    (!rel.as_os_str().is_empty()).then_some(rel)
}

fn any_of<M: prost::Message + prost::Name>(m: &M) -> Any {
    crate::tasks::to_rt_any(stevedore_api::typeurl::to_any(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    struct Fixture {
        _dir: tempfile::TempDir,
        order: OomOrder,
        /// The container's memory cgroup (v1 layout).
        memcg: PathBuf,
    }

    fn fixture(cgroups_path: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let bundle = state.join("moby").join("c1");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            serde_json::json!({"linux": {"cgroupsPath": cgroups_path}}).to_string(),
        )
        .unwrap();
        let root = dir.path().join("cgroup");
        let memcg = root.join("memory/docker/c1");
        std::fs::create_dir_all(&memcg).unwrap();
        Fixture {
            order: OomOrder::with_cgroup_root(state, root),
            memcg,
            _dir: dir,
        }
    }

    fn oom_kills(f: &Fixture, n: u64) {
        std::fs::write(
            f.memcg.join("memory.oom_control"),
            format!("oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"),
        )
        .unwrap();
    }

    fn ev<M: prost::Message + prost::Name>(topic: &str, m: &M) -> Event {
        Event {
            timestamp: SystemTime::now(),
            namespace: "moby".into(),
            topic: topic.into(),
            event: Some(any_of(m)),
        }
    }

    fn create() -> Event {
        ev(
            "/tasks/create",
            &TaskCreate {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
    }

    fn exit(id: &str) -> Event {
        ev(
            "/tasks/exit",
            &TaskExit {
                container_id: "c1".into(),
                id: id.into(),
                exit_status: 137,
                ..Default::default()
            },
        )
    }

    fn oom() -> Event {
        ev(
            "/tasks/oom",
            &TaskOom {
                container_id: "c1".into(),
            },
        )
    }

    fn delete() -> Event {
        ev(
            "/tasks/delete",
            &TaskDelete {
                container_id: "c1".into(),
                ..Default::default()
            },
        )
    }

    fn topics(evs: &[Event]) -> Vec<&str> {
        evs.iter().map(|e| e.topic.as_str()).collect()
    }

    #[test]
    fn an_oom_kill_the_shim_reports_after_the_exit_is_forwarded_first_and_once() {
        let f = fixture("/docker/c1");
        assert_eq!(topics(&f.order.order(create())), ["/tasks/create"]);
        oom_kills(&f, 1);
        let out = f.order.order(exit("c1"));
        assert_eq!(topics(&out), ["/tasks/oom", "/tasks/exit"]);
        let o = TaskOom::decode(out[0].event.as_ref().unwrap().value.as_slice()).unwrap();
        assert_eq!(o.container_id, "c1");
        assert_eq!(out[0].namespace, "moby");
        // the shim's own, late: dropped; the next task's: forwarded
        assert!(f.order.order(oom()).is_empty());
        assert_eq!(topics(&f.order.order(delete())), ["/tasks/delete"]);
        f.order.order(create());
        assert_eq!(topics(&f.order.order(oom())), ["/tasks/oom"]);
    }

    #[test]
    fn an_oom_forwarded_before_a_daemon_restart_is_not_forwarded_again() {
        let f = fixture("/docker/c1");
        f.order.order(create());
        oom_kills(&f, 1);
        assert_eq!(topics(&f.order.order(oom())), ["/tasks/oom"]);
        // the restarted daemon knows nothing but the state directory
        let again = OomOrder::with_cgroup_root(f.order.state.clone(), f.order.cgroup_root.clone());
        assert_eq!(topics(&again.order(exit("c1"))), ["/tasks/exit"]);
        // a synthesised one is remembered too, and a new task starts afresh
        again.order(delete());
        again.order(create());
        let out = again.order(exit("c1"));
        assert_eq!(topics(&out), ["/tasks/oom", "/tasks/exit"]);
        let third = OomOrder::with_cgroup_root(f.order.state.clone(), f.order.cgroup_root.clone());
        assert_eq!(topics(&third.order(exit("c1"))), ["/tasks/exit"]);
    }

    #[test]
    fn an_oom_reported_first_or_no_kill_changes_nothing() {
        let f = fixture("/docker/c1");
        f.order.order(create());
        oom_kills(&f, 1);
        assert_eq!(topics(&f.order.order(oom())), ["/tasks/oom"]);
        assert_eq!(topics(&f.order.order(exit("c1"))), ["/tasks/exit"]);
        f.order.order(delete());
        // a new task without a kill: the exit alone
        f.order.order(create());
        oom_kills(&f, 0);
        assert_eq!(topics(&f.order.order(exit("c1"))), ["/tasks/exit"]);
        // an exec's exit never brings an OOM
        oom_kills(&f, 3);
        assert_eq!(topics(&f.order.order(exit("exec-1"))), ["/tasks/exit"]);
    }

    #[test]
    fn tasks_whose_delete_never_came_are_swept_once_their_bundle_is_gone() {
        let f = fixture("/docker/c1");
        f.order.order(create());
        for i in 0..300 {
            f.order.order(ev(
                "/tasks/create",
                &TaskCreate {
                    container_id: format!("gone-{i}"),
                    ..Default::default()
                },
            ));
        }
        let t = f.order.tasks.lock().unwrap();
        assert!(t.by_id.len() < 100, "{} entries kept", t.by_id.len());
        assert!(t
            .by_id
            .contains_key(&("moby".to_string(), "c1".to_string())));
    }

    #[test]
    fn cgroup_paths_that_leave_the_hierarchy_or_are_systemd_units_are_not_read() {
        for bad in ["/docker/../../etc", "system.slice:docker:c1", "", "/"] {
            let f = fixture(bad);
            f.order.order(create());
            oom_kills(&f, 1);
            assert_eq!(topics(&f.order.order(exit("c1"))), ["/tasks/exit"], "{bad}");
        }
        // an id that is not one path component is never looked up
        let f = fixture("/docker/c1");
        let mut e = exit("c1");
        e.event = Some(any_of(&TaskExit {
            container_id: "../c1".into(),
            id: "../c1".into(),
            ..Default::default()
        }));
        assert_eq!(topics(&f.order.order(e)), ["/tasks/exit"]);
    }
}
