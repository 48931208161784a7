//! Crash consistency: SIGKILL stevedored in the middle of real client work
//! (the real `ctr`, and the `stevedore` CLI for pulls the daemon runs), over
//! many seeded iterations, and check after every crash, offline with the
//! `stevedore-fsck` library, that nothing is corrupt: blobs match their
//! digests, committed snapshots have their directories and parents, every
//! image's content is present (or the image is gone), containers have their
//! snapshots, no mount is left under the root but the rootfs of tasks whose
//! shims live on. Then the daemon must restart on the same root and serve,
//! every shim and task rootfs must belong to a task it lists, `ctr images
//! check` must find every image complete, and an interrupted pull, retried,
//! must complete; after a garbage collection no crash leftover (ingest,
//! blob, snapshot directory) may survive.
//!
//! Reproducible: the seed is printed; `STEVEDORE_CRASH_SEED=<n>` replays a
//! run's operations, snapshotters and where in its kill window each kill
//! lands (the windows adapt to how long operations take on the machine);
//! `STEVEDORE_CRASH_ITERATIONS=<n>` sets its length (default 40, bounded by
//! `STEVEDORE_CRASH_SECONDS`, default 75, so CI stays quick).
//! `STEVEDORE_CRASH_OPS=import,rm-gc,...` limits the operations (names:
//! `ingest`, `import`, `prepare-commit`, `rm-gc`, `create`, `snapshot-rm`,
//! `pull`, `start`, `delete`) and
//! `STEVEDORE_CRASH_SNAPSHOTTERS=overlayfs,native,btrfs` the snapshotters
//! (btrfs runs on a loop-device volume mounted at its directory), to hammer
//! one path.
//!
//! The suite fails unless at least a third of the kills landed while the
//! client was still working (a kill after the client finished only tests a
//! restart).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use stevedore_e2e::{
    big_image, busybox_image, env_u64, make_image, multi_image, seed_from_env, Daemon, Images, Rng,
};
use stevedore_fsck::{check, mount_points, Options, Report};
use stevedore_remote::testutil::TestRegistry;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    ContentIngest,
    ImageImport,
    SnapshotPrepareCommit,
    ImageRmGc,
    ContainerCreate,
    SnapshotRemove,
    ImagePull,
    ContainerStart,
    ContainerDelete,
}

impl Op {
    /// Where kills start landing: uniformly within this many milliseconds of
    /// the start, about how long the operation takes (ctr itself starts in
    /// ~20 ms). The window then adapts, see [`Windows`].
    fn kill_window_ms(self) -> u64 {
        match self {
            Op::ContentIngest => 150,
            Op::ImageImport => 450,
            Op::SnapshotPrepareCommit => 120,
            Op::ImageRmGc => 200,
            Op::ContainerCreate => 150,
            Op::SnapshotRemove => 150,
            Op::ImagePull => 1200,
            Op::ContainerStart => 400,
            Op::ContainerDelete => 300,
        }
    }
}

/// Per-operation kill windows that follow how long operations take on this
/// machine: a kill that came after the client finished shrinks the window
/// by a third, one that interrupted it widens it by a quarter. The window
/// settles where ln(3/2) * finished = ln(5/4) * interrupted, i.e. about two
/// kills in three land mid-operation (the suite requires one in three).
struct Windows(BTreeMap<Op, u64>);

impl Windows {
    fn get(&mut self, op: Op) -> u64 {
        *self.0.entry(op).or_insert_with(|| op.kill_window_ms())
    }
    fn learn(&mut self, op: Op, interrupted: bool) {
        let w = self.get(op);
        let w = if interrupted { w * 5 / 4 } else { w * 2 / 3 };
        self.0.insert(op, w.clamp(20, 3000));
    }
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::ContentIngest => "ingest",
            Op::ImageImport => "import",
            Op::SnapshotPrepareCommit => "prepare-commit",
            Op::ImageRmGc => "rm-gc",
            Op::ContainerCreate => "create",
            Op::SnapshotRemove => "snapshot-rm",
            Op::ImagePull => "pull",
            Op::ContainerStart => "start",
            Op::ContainerDelete => "delete",
        }
    }
}

/// The comma-separated names in `var` that `names` knows (all of them when
/// unset); panics on an unknown name so a typo cannot silently test less.
fn selected<T: Copy>(var: &str, all: &[T], name: impl Fn(T) -> &'static str) -> Vec<T> {
    let Ok(v) = std::env::var(var) else {
        return all.to_vec();
    };
    v.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| {
            *all.iter()
                .find(|x| name(**x).eq_ignore_ascii_case(w))
                .unwrap_or_else(|| {
                    let known: Vec<_> = all.iter().map(|x| name(*x)).collect();
                    panic!("{var}: unknown {w:?}; known: {known:?}")
                })
        })
        .collect()
}

/// overlayfs renames, native copies whole trees (long creates to crash
/// in), btrfs makes subvolumes and snapshots (on a loop-device btrfs
/// mounted at its directory of the root).
const SNAPSHOTTERS: &[&str] = &["overlayfs", "native", "btrfs"];

/// Tasks (shims and their containers) alive at once; a start beyond it
/// deletes a container instead.
const MAX_TASKS: usize = 3;

const OPS: &[Op] = &[
    Op::ContentIngest,
    Op::ImageImport,
    Op::SnapshotPrepareCommit,
    Op::ImageRmGc,
    Op::ContainerCreate,
    Op::SnapshotRemove,
    Op::ImagePull,
    Op::ContainerStart,
    Op::ContainerDelete,
];

/// Leftovers a garbage collection must have removed.
const COLLECTED_BY_GC: &[&str] = &[
    "blob-unreferenced",
    "ingest-unrecorded",
    "ingest-incomplete",
    "snapshot-dir-orphan",
];

struct Harness {
    d: Daemon,
    rng: Rng,
    images: Vec<Images>,
    payloads: Vec<PathBuf>,
    ctr: PathBuf,
    invariants: usize,
    objects: usize,
    leftovers: BTreeMap<&'static str, usize>,
    ops: BTreeMap<String, usize>,
    snapshotters: Vec<&'static str>,
    stevedore: PathBuf,
    /// The pulled image, through the throttling proxy of the registry.
    pull_ref: String,
    /// The snapshotter of a pull the last kill interrupted: the next
    /// restart retries it, and it must complete.
    retry_pull: Option<&'static str>,
    /// Pull kills after which a layer's ingest (`pull-<digest>`) was
    /// found partly written, i.e. killed mid-layer.
    pulls_killed_mid_layer: usize,
    pulls_retried: usize,
    /// Checks that found the databases still locked just after a kill.
    lock_waits: usize,
}

impl Harness {
    /// Start `script` (a shell script of ctr commands) in its own process
    /// group, so that killing the group stops every ctr it started.
    fn start(&self, script: &str) -> Child {
        let mut c = std::process::Command::new("sh");
        c.arg("-c")
            .arg(script)
            .env("CTR", &self.ctr)
            .env("STEVEDORE", &self.stevedore)
            .env("ADDR", &self.d.socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        c.spawn().expect("spawn client script")
    }

    fn ctr_lines(&self, args: &[&str]) -> Vec<String> {
        self.d
            .ctr_ok(args)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// A shell script for one operation, chosen against the current state.
    fn script(&mut self, i: usize, op: Op) -> (Op, String, String) {
        let sn = *self.rng.pick(&self.snapshotters);
        let (op, what, script) = self.script_on(i, op, sn);
        (op, format!("{what} [{sn}]"), script)
    }

    fn script_on(&mut self, i: usize, op: Op, sn: &'static str) -> (Op, String, String) {
        let tasks = self.ctr_lines(&["tasks", "ls", "-q"]);
        let containers = self.ctr_lines(&["containers", "ls", "-q"]);
        // bounded shims: past the limit a start becomes a delete
        let op = match op {
            Op::ContainerStart if tasks.len() >= MAX_TASKS => Op::ContainerDelete,
            op => op,
        };
        if op == Op::ContainerDelete && containers.is_empty() {
            // something to delete: a running container, without a crash
            self.ensure_busybox();
            let id = format!("crash-pre-{i}");
            self.d.ctr_ok(&[
                "run",
                "-d",
                "--snapshotter",
                sn,
                &self.images[0].name,
                &id,
                "sleep",
                "600",
            ]);
        }
        if op == Op::ImagePull {
            self.retry_pull = Some(sn);
        }
        let mut images = self.ctr_lines(&["images", "ls", "-q"]);
        if images.is_empty() && matches!(op, Op::ImageRmGc | Op::ContainerCreate) {
            // these need an image: import one first, without a crash
            let tar = self.rng.pick(&self.images).oci_tar.clone();
            self.d.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
            images = self.ctr_lines(&["images", "ls", "-q"]);
        }
        let pick_image = |rng: &mut Rng, imgs: &[Images]| rng.pick(imgs).oci_tar.clone();
        match op {
            Op::ContentIngest => {
                // a small pool of payloads and refs: later crashes resume earlier ingests
                let k = self.rng.below(self.payloads.len() as u64) as usize;
                let p = &self.payloads[k];
                let dg = digest_of_file(p);
                (
                    op,
                    format!("ingest payload {k}"),
                    format!(
                        "exec \"$CTR\" --address \"$ADDR\" content ingest --expected-digest {dg} crash-ref-{k} < {}",
                        p.display()
                    ),
                )
            }
            Op::ImageImport => {
                let tar = pick_image(&mut self.rng, &self.images);
                (
                    op,
                    format!(
                        "import {}/{}",
                        tar.parent().unwrap().file_name().unwrap().to_string_lossy(),
                        tar.file_name().unwrap().to_string_lossy()
                    ),
                    format!(
                        "exec \"$CTR\" --address \"$ADDR\" images import --snapshotter {sn} {}",
                        tar.display()
                    ),
                )
            }
            Op::SnapshotPrepareCommit => {
                let committed: Vec<String> = self
                    .ctr_lines(&["snapshots", "--snapshotter", sn, "ls"])
                    .into_iter()
                    .skip(1)
                    .filter(|l| l.ends_with("Committed"))
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .collect();
                let parent = if committed.is_empty() || self.rng.below(3) == 0 {
                    String::new()
                } else {
                    self.rng.pick(&committed).clone()
                };
                (
                    op,
                    format!("snapshot prepare+commit on {parent:?}"),
                    format!(
                        "\"$CTR\" --address \"$ADDR\" snapshots --snapshotter {sn} prepare snap-{i}-a {parent} && \
                         \"$CTR\" --address \"$ADDR\" snapshots --snapshotter {sn} commit snap-{i} snap-{i}-a"
                    ),
                )
            }
            Op::ImageRmGc if !images.is_empty() => {
                let name = self.rng.pick(&images).clone();
                (
                    op,
                    format!("rm --sync {name}"),
                    format!("exec \"$CTR\" --address \"$ADDR\" images rm --sync {name}"),
                )
            }
            Op::ContainerCreate if !images.is_empty() => {
                let name = self.rng.pick(&images).clone();
                (
                    op,
                    format!("container create on {name}"),
                    format!(
                        "exec \"$CTR\" --address \"$ADDR\" containers create --snapshotter {sn} {name} crash-ctr-{i} /bin/true"
                    ),
                )
            }
            Op::SnapshotRemove => {
                // newest first, so children go before their parents
                let mut keys: Vec<String> = self
                    .ctr_lines(&["snapshots", "--snapshotter", sn, "ls"])
                    .into_iter()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                    .filter(|k| k.starts_with("snap-"))
                    .collect();
                keys.sort_by_key(|k| {
                    std::cmp::Reverse(
                        k.trim_start_matches("snap-")
                            .trim_end_matches("-a")
                            .parse::<u64>()
                            .unwrap_or(0),
                    )
                });
                let cmds: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!("\"$CTR\" --address \"$ADDR\" snapshots --snapshotter {sn} rm {k}")
                    })
                    .collect();
                (
                    op,
                    format!("snapshots rm of {} snapshots", keys.len()),
                    format!("{}; true", cmds.join("; ")),
                )
            }
            Op::ImagePull => {
                // mostly a fresh pull (every layer downloaded and unpacked),
                // sometimes over the image already there
                let present = images.contains(&self.pull_ref);
                if present && self.rng.below(4) != 0 {
                    // the leases of killed pulls hold their blobs until they
                    // expire; let them expire now, so the pull starts afresh
                    for lease in self.ctr_lines(&["leases", "ls", "-q"]) {
                        if lease.starts_with("pull-") {
                            self.d.ctr_ok(&["leases", "rm", &lease]);
                        }
                    }
                    self.d.ctr_ok(&["images", "rm", "--sync", &self.pull_ref]);
                }
                (
                    op,
                    format!(
                        "pull {}{}",
                        self.pull_ref,
                        if present { " (was present)" } else { "" }
                    ),
                    format!(
                        "exec \"$STEVEDORE\" --address \"$ADDR\" pull --quiet --snapshotter {sn} {}",
                        self.pull_ref
                    ),
                )
            }
            Op::ContainerStart => {
                let idle: Vec<&String> = containers.iter().filter(|c| !tasks.contains(c)).collect();
                if !idle.is_empty() && self.rng.below(2) == 0 {
                    // a task for a created container (its command may exit at once)
                    let id = (*self.rng.pick(&idle)).clone();
                    (
                        op,
                        format!("task start of {id}"),
                        format!("exec \"$CTR\" --address \"$ADDR\" tasks start -d {id}"),
                    )
                } else {
                    // create, unpack if needed, start
                    self.ensure_busybox();
                    (
                        op,
                        format!("run -d crash-run-{i}"),
                        format!(
                            "exec \"$CTR\" --address \"$ADDR\" run -d --snapshotter {sn} {} crash-run-{i} sleep 600",
                            self.images[0].name
                        ),
                    )
                }
            }
            Op::ContainerDelete => {
                let containers = self.ctr_lines(&["containers", "ls", "-q"]);
                let id = self.rng.pick(&containers).clone();
                (
                    op,
                    format!("delete of container {id} and its task"),
                    format!(
                        "\"$CTR\" --address \"$ADDR\" tasks rm -f {id}; \
                         exec \"$CTR\" --address \"$ADDR\" containers rm {id}"
                    ),
                )
            }
            Op::ImageRmGc | Op::ContainerCreate => {
                unreachable!("an image was imported above: {images:?}")
            }
        }
    }

    /// The busybox image (the one containers run), imported without a
    /// crash when a collection took it.
    fn ensure_busybox(&self) {
        let name = &self.images[0].name;
        if !self.ctr_lines(&["images", "ls", "-q"]).contains(name) {
            self.d
                .ctr_ok(&["images", "import", self.images[0].oci_tar.to_str().unwrap()]);
        }
    }

    /// The offline check of the stopped daemon's root: no problem at all,
    /// no mount left under the root or the state directory.
    fn verify_offline(&mut self, when: &str) -> Report {
        // The killed daemon is reaped, but a child it was starting (a shim,
        // between its fork and its exec) can hold the databases' lock a
        // moment longer: seen once in 539 kills of `ctr tasks start`. Wait
        // for it; a lock held for seconds is a failure naming its holders.
        let deadline = Instant::now() + Duration::from_secs(5);
        let report = loop {
            match check(&Options {
                root: self.d.root.clone(),
                repair: false,
            }) {
                Ok(r) => break r,
                Err(e) if e.to_string().contains("is running") && Instant::now() < deadline => {
                    self.lock_waits += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!(
                    "{when}: check failed: {e}\nprocesses holding files under the root: {:?}\n{}",
                    holders_of(&self.d.root),
                    tail(&self.d.log())
                ),
            }
        };
        let problems: Vec<_> = report.problems().collect();
        assert!(
            problems.is_empty(),
            "{when}: corruption found:\n{problems:#?}\ndaemon log tail:\n{}",
            tail(&self.d.log())
        );
        let left: Vec<PathBuf> = self
            .mounts()
            .into_iter()
            .filter(|m| task_of_rootfs(&self.d.state, m).is_none())
            .collect();
        assert!(left.is_empty(), "{when}: mounts left behind: {left:?}");
        // blob digests, snapshot dirs and chains, image trees, containers,
        // lease references, ingests, mounts: one invariant per object checked
        self.invariants += report.total_checked() + 1;
        self.objects += report.total_checked();
        report
    }

    /// Mounts under the root or the state directory but the btrfs volume
    /// at its snapshotter's directory. A task's rootfs stays mounted while
    /// its shim lives, across a daemon crash.
    fn mounts(&self) -> Vec<PathBuf> {
        let state = self.d.state.canonicalize().unwrap_or(self.d.state.clone());
        let root = self.d.root.canonicalize().unwrap_or(self.d.root.clone());
        mount_points()
            .unwrap()
            .into_iter()
            .filter(|m| m.starts_with(&root) || m.starts_with(&state))
            .filter(|m| m.parent() != Some(&root))
            .collect()
    }

    /// After a restart: every shim of this daemon and every rootfs mount
    /// belongs to a task the daemon lists (the restart reconnected it or
    /// cleaned it up).
    fn check_tasks(&mut self, when: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let tasks = self.ctr_lines(&["tasks", "ls", "-q"]);
            let stray_mounts: Vec<PathBuf> = self
                .mounts()
                .into_iter()
                .filter(|m| !task_of_rootfs(&self.d.state, m).is_some_and(|t| tasks.contains(&t)))
                .collect();
            let stray_shims: Vec<String> = self
                .d
                .shim_pids()
                .into_iter()
                .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| !shim_id(c).is_some_and(|id| tasks.contains(&id)))
                .collect();
            if stray_mounts.is_empty() && stray_shims.is_empty() {
                self.invariants += 1;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{when}: after restart, mounts {stray_mounts:?} and shims {stray_shims:#?} \
                 belong to no task the daemon lists ({tasks:?})\n{}",
                tail(&self.d.log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Delete every task (before a clean stop: shims outlive the daemon
    /// and keep their rootfs mounted).
    fn delete_tasks(&self) {
        for id in self.ctr_lines(&["tasks", "ls", "-q"]) {
            self.d.ctr_ok(&["tasks", "rm", "-f", &id]);
        }
        self.d.expect_no_shims(Duration::from_secs(10));
    }

    /// A pull the crash interrupted, retried: it resumes what the killed one
    /// wrote and must complete.
    fn retry_pull(&mut self, when: &str) {
        let Some(sn) = self.retry_pull.take() else {
            return;
        };
        let active = self.ctr_lines(&["content", "active"]);
        if active.iter().any(|l| l.starts_with("pull-")) {
            self.pulls_killed_mid_layer += 1;
        }
        let t = Instant::now();
        let o = self
            .d
            .cli(&["pull", "--quiet", "--snapshotter", sn, &self.pull_ref]);
        eprintln!(
            "crash:   retried pull took {:.1}s",
            t.elapsed().as_secs_f64()
        );
        assert!(
            o.status.success(),
            "{when}: the retried pull failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            tail(&self.d.log())
        );
        self.pulls_retried += 1;
        self.invariants += 1;
    }

    /// The daemon restarts on the same root and answers reads of every kind.
    fn restart_and_probe(&mut self, when: &str) {
        self.d.spawn();
        self.check_tasks(when);
        self.retry_pull(when);
        for args in [
            &["images", "ls"][..],
            &["content", "ls"],
            &["content", "active"],
            &["snapshots", "ls"],
            &["containers", "ls"],
            &["leases", "ls"],
        ] {
            let o = self.d.ctr(args);
            assert!(
                o.status.success(),
                "{when}: ctr {args:?} after restart: {}\n{}",
                String::from_utf8_lossy(&o.stderr),
                tail(&self.d.log())
            );
            self.invariants += 1;
        }
        // containerd's own notion: every image complete for this platform
        if let Err(e) = self.d.images_check() {
            panic!("{when}: after restart: {e}");
        }
        self.invariants += 1;
    }

    fn gc(&self) {
        self.d
            .ctr_ok(&["leases", "create", "--id", "crash-gc-trigger"]);
        self.d
            .ctr_ok(&["leases", "rm", "--sync", "crash-gc-trigger"]);
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn digest_of_file(p: &Path) -> String {
    let bytes = std::fs::read(p).unwrap();
    stevedore_content::digest_of(&bytes).to_string()
}

/// The task id of a mount at `<state>/io.containerd.runtime.v2.task/<ns>/<id>/rootfs`.
fn task_of_rootfs(state: &Path, m: &Path) -> Option<String> {
    let state = state.canonicalize().unwrap_or(state.to_path_buf());
    let rel = m
        .strip_prefix(state.join("io.containerd.runtime.v2.task"))
        .ok()?;
    let parts: Vec<_> = rel.iter().collect();
    match parts[..] {
        [_ns, id, rootfs] if rootfs == "rootfs" => Some(id.to_string_lossy().into_owned()),
        _ => None,
    }
}

/// `pid: command line` of every process with a file under `root` open.
fn holders_of(root: &Path) -> Vec<String> {
    let root = root.canonicalize().unwrap_or(root.to_path_buf());
    let mut out = Vec::new();
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .any(|t| t.starts_with(&root))
        {
            let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
            out.push(format!(
                "{}: {}",
                p.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            ));
        }
    }
    out
}

/// The `-id` of a shim's command line.
fn shim_id(cmdline: &str) -> Option<String> {
    let mut words = cmdline.split_whitespace();
    words.find(|w| *w == "-id")?;
    words.next().map(str::to_string)
}

/// A TCP proxy to `upstream` that sends what the upstream answers at about
/// `bytes_per_sec`, so a pull from a local registry takes long enough for a
/// kill to land in the middle of a layer. Its threads end with their
/// connections.
fn throttling_proxy(upstream: String, bytes_per_sec: usize) -> String {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (Ok(mut c_in), Ok(mut s_out)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_in, &mut s_out);
                let _ = s_out.shutdown(std::net::Shutdown::Write);
            });
            let (mut s_in, mut c_out) = (server, client);
            std::thread::spawn(move || {
                let chunk = 16 << 10;
                let pause = Duration::from_secs_f64(chunk as f64 / bytes_per_sec as f64);
                let mut buf = vec![0u8; chunk];
                loop {
                    match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c_out.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            std::thread::sleep(pause.mul_f64(n as f64 / chunk as f64));
                        }
                    }
                }
                let _ = c_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

fn kill_group(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = child.wait();
}

#[test]
fn survives_sigkill_at_random_points_of_ingest_import_pull_snapshot_gc_and_containers() {
    let ctr = stevedore_e2e::require_tool("ctr", "containerd");
    stevedore_e2e::require_tool("runc", "runc");
    let seed = seed_from_env("STEVEDORE_CRASH_SEED");
    let iterations = env_u64("STEVEDORE_CRASH_ITERATIONS").unwrap_or(40) as usize;
    let budget = Duration::from_secs(env_u64("STEVEDORE_CRASH_SECONDS").unwrap_or(75));
    eprintln!(
        "crash: seed {seed} (replay: STEVEDORE_CRASH_SEED={seed} STEVEDORE_CRASH_ITERATIONS={iterations})"
    );
    let started = Instant::now();
    let snapshotters = selected("STEVEDORE_CRASH_SNAPSHOTTERS", SNAPSHOTTERS, |s| s);
    let mut d = Daemon::start();
    // btrfs: a loop-device volume at the snapshotter's directory, as
    // containerd's btrfs snapshotter is deployed
    let _btrfs = snapshotters.contains(&"btrfs").then(|| {
        d.stop();
        let dir = d.root.join("io.containerd.snapshotter.v1.btrfs");
        let _ = std::fs::remove_dir_all(&dir);
        let fs = stevedore_e2e::LoopBtrfs::mount_on(&dir, "1G");
        d.spawn();
        let plugins = d.ctr_ok(&["plugins", "ls", "id==btrfs"]);
        assert!(plugins.contains(" ok"), "{plugins}");
        fs
    });
    let work = d.dir.path().join("work");
    let busybox = busybox_image(&work.join("busybox"));
    let multi = multi_image(&work.join("multi"));
    // the same platforms uncompressed: there the arm64 manifest sorts (and
    // so comes in the archive) before its config, the order of issue 19
    let multi_raw = make_image(
        "multi",
        &work.join("multi-raw"),
        &[
            "--compression",
            "none",
            "--name",
            "docker.io/stevedore/multi:raw",
        ],
    );
    // the pulled image: five gzip layers (the largest 1.8 MB, 4 MB in
    // all) from a real registry, through a proxy sending 1.5 MB/s per
    // connection, so a pull downloads for about a second (and a debug
    // build's gunzip does not dominate it)
    let registry = TestRegistry::start();
    let big = big_image(&work.join("big"), "gzip", 0.02);
    let pushed = stevedore_e2e::skopeo_push(&big, &registry.host(), "stevedore/big:crash", &[]);
    let proxy = throttling_proxy(registry.host(), 3 << 19);
    let pull_ref = pushed.replacen(&registry.host(), &proxy, 1);
    let mut rng = Rng(seed);
    // payloads: a few MB each, so a kill lands mid-stream often
    let mut payloads = Vec::new();
    for k in 0..3 {
        let size = (1 << 20) + rng.below(6 << 20) as usize;
        let mut bytes = Vec::with_capacity(size);
        while bytes.len() < size {
            bytes.extend_from_slice(&rng.next_u64().to_le_bytes());
        }
        let p = work.join(format!("payload-{k}"));
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&bytes[..size])
            .unwrap();
        payloads.push(p);
    }
    let mut h = Harness {
        d,
        rng,
        images: vec![busybox, multi, multi_raw],
        payloads,
        ctr,
        invariants: 0,
        objects: 0,
        leftovers: BTreeMap::new(),
        ops: BTreeMap::new(),
        snapshotters,
        stevedore: stevedore_e2e::bin("stevedore"),
        pull_ref,
        retry_pull: None,
        pulls_killed_mid_layer: 0,
        pulls_retried: 0,
        lock_waits: 0,
    };
    let ops = selected("STEVEDORE_CRASH_OPS", OPS, Op::name);
    assert!(!ops.is_empty() && !h.snapshotters.is_empty());
    let mut survived = 0;
    let mut interrupted = 0;
    let mut interrupted_by_op: BTreeMap<String, usize> = BTreeMap::new();
    let mut windows = Windows(BTreeMap::new());
    for i in 0..iterations {
        if started.elapsed() > budget {
            eprintln!("crash: time budget {budget:?} reached after {i} iterations");
            break;
        }
        let op = *h.rng.pick(&ops);
        let (op, what, script) = h.script(i, op);
        let delay = Duration::from_millis(h.rng.below(windows.get(op)));
        *h.ops.entry(format!("{op:?}")).or_default() += 1;
        let mut client = h.start(&script);
        std::thread::sleep(delay);
        let finished = matches!(client.try_wait(), Ok(Some(_)));
        if !finished {
            interrupted += 1;
            *interrupted_by_op.entry(format!("{op:?}")).or_default() += 1;
        }
        windows.learn(op, !finished);
        h.d.kill9();
        kill_group(&mut client);
        let when = format!("iteration {i} ({what}, killed after {delay:?}, seed {seed})");
        eprintln!(
            "crash: {when}{} at {:.1}s",
            if finished {
                " [client had finished]"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        );
        let report = h.verify_offline(&format!("{when}: after SIGKILL"));
        for f in report.leftovers() {
            let n = h.leftovers.entry(f.kind).or_default();
            if *n == 0 {
                eprintln!("crash:   first {}: {} ({})", f.kind, f.object, f.detail);
            }
            *n += 1;
        }
        h.restart_and_probe(&when);
        // a collection removes whatever the crash left that nothing holds
        h.gc();
        h.d.kill9();
        let report = h.verify_offline(&format!("{when}: after GC"));
        let uncollected: Vec<_> = report
            .leftovers()
            .filter(|f| COLLECTED_BY_GC.contains(&f.kind))
            .collect();
        assert!(
            uncollected.is_empty(),
            "{when}: garbage collection left crash leftovers:\n{uncollected:#?}"
        );
        h.invariants += 1;
        h.restart_and_probe(&when);
        survived += 1;
    }
    // the client still works end to end on the crashed-and-restarted root
    let img = &h.images[0];
    h.d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    h.d.ctr_ok(&["images", "check"]);
    // and what the crashes left unpacked runs: every layer was applied whole
    let out =
        h.d.ctr_ok(&["run", "--rm", &img.name, "crash-final", "echo", "alive"]);
    assert_eq!(out.trim(), "alive");
    h.delete_tasks();
    h.d.stop();
    let report = h.verify_offline("final, after a clean stop");
    eprintln!(
        "crash: {survived} iterations survived ({interrupted} killed mid-operation: {interrupted_by_op:?}), {} invariant checks ({} objects verified), operations {:?}, snapshotters {:?}, pulls retried {} ({} killed mid-layer), checks that waited for the lock {}, crash leftovers seen {:?}, {:.1}s, seed {seed}",
        h.invariants,
        h.objects,
        h.ops,
        h.snapshotters,
        h.pulls_retried,
        h.pulls_killed_mid_layer,
        h.lock_waits,
        h.leftovers,
        started.elapsed().as_secs_f64()
    );
    assert!(report.is_clean());
    assert!(survived > 0, "no iteration ran");
    // kills after the client finished test restarts, not crash consistency
    assert!(
        interrupted * 3 >= survived,
        "only {interrupted} of {survived} kills landed mid-operation (at least a third must); \
         operations {:?}, mid-operation {interrupted_by_op:?}, seed {seed}",
        h.ops
    );
}

#[test]
fn stevedore_check_refuses_a_running_daemon_then_finds_and_repairs_a_corrupt_blob() {
    let mut d = Daemon::start();
    let input = d.dir.path().join("blob");
    std::fs::write(&input, b"bytes that will rot").unwrap();
    let dg = digest_of_file(&input);
    let mut c = d
        .ctr_command(&["content", "ingest", "--expected-digest", &dg, "rot"])
        .stdin(std::fs::File::open(&input).unwrap())
        .spawn()
        .unwrap();
    assert!(c.wait().unwrap().success());
    let root = d.root.clone();
    let cli = |args: &[&str]| {
        std::process::Command::new(stevedore_e2e::bin("stevedore"))
            .arg("check")
            .arg("--root")
            .arg(&root)
            .args(args)
            .output()
            .unwrap()
    };
    let o = cli(&[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("stevedored is running on this root; stop it first"),
        "{err}"
    );
    d.stop();
    let o = cli(&[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // rot the blob
    let hex = dg.strip_prefix("sha256:").unwrap();
    let blob = root
        .join("io.containerd.content.v1.content/blobs/sha256")
        .join(hex);
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, b"bytes that have rotted").unwrap();
    let o = cli(&["-o", "json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["problems"], 1, "{v:#}");
    assert_eq!(v["findings"][0]["kind"], "blob-corrupt");
    assert_eq!(v["findings"][0]["object"], dg.as_str());
    assert!(blob.exists(), "a dry run removes nothing");
    let o = cli(&["--repair"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("repaired: remove the blob and its records"),
        "{out}"
    );
    assert!(!blob.exists());
    let o = cli(&[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    // the daemon starts on the repaired root and no longer lists the blob
    d.spawn();
    let ls = d.ctr_ok(&["content", "ls", "-q"]);
    assert!(!ls.contains(&dg), "{ls}");
}

/// Issue 19: an import of a multi-platform archive over an existing image,
/// killed after the archive's other-platform manifest was written and
/// before its config (blobs come in digest order), leaves that manifest
/// (held by the import's lease) without its config, which the collection
/// after the previous import had taken. The image keeps only what its
/// labels name (the host's manifest, whole), so that is no corruption, and
/// `stevedore check` must agree with `ctr images check`. The crash is
/// replaced by its outcome, deterministically: the manifest committed on
/// its own after a collection.
#[test]
fn another_platforms_manifest_without_its_config_is_not_an_incomplete_image() {
    let mut d = Daemon::start();
    let multi = multi_image(&d.dir.path().join("multi"));
    d.ctr_ok(&["images", "import", multi.oci_tar.to_str().unwrap()]);
    // the import released its lease: collect what no label keeps
    d.ctr_ok(&["leases", "create", "--id", "gc"]);
    d.ctr_ok(&["leases", "rm", "--sync", "gc"]);
    let host = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    let other = multi.info["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["platform"]["architecture"] != host)
        .expect("a manifest of another platform")["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let content = d.ctr_ok(&["content", "ls", "-q"]);
    assert!(!content.contains(&other), "{other} was not collected");
    let path = multi
        .oci_dir
        .join("blobs/sha256")
        .join(other.trim_start_matches("sha256:"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_string();
    let mut c = d
        .ctr_command(&[
            "content",
            "ingest",
            "--expected-digest",
            &other,
            "crashed-import",
        ])
        .stdin(std::fs::File::open(&path).unwrap())
        .spawn()
        .unwrap();
    assert!(c.wait().unwrap().success());
    let content = d.ctr_ok(&["content", "ls", "-q"]);
    assert!(content.contains(&other) && !content.contains(&config));
    // containerd's client finds the image complete for this host
    let checked = d.ctr_ok(&["images", "check"]);
    assert!(
        checked
            .lines()
            .any(|l| l.contains(&multi.name) && l.split_whitespace().any(|w| w == "complete")),
        "{checked}"
    );
    d.kill9();
    let report = check(&Options {
        root: d.root.clone(),
        repair: false,
    })
    .unwrap();
    let problems: Vec<_> = report.problems().collect();
    assert!(problems.is_empty(), "{problems:#?}");
}
