//! containerd 2.x's Go client library (`github.com/containerd/containerd/v2/client`,
//! what Docker 28, nerdctl and BuildKit link) against stevedored:
//! `go/clientcheck2`, built offline in GOPATH mode with the Go toolchain and
//! the containerd 2.1 sources (plus their golang-*-dev closure) that
//! `scripts/go2-client.sh` unpacks from Debian unstable under
//! /opt/stevedore-tools/go2. It runs clientcheck's checks ported to the 2.x
//! client and the 2.x calls (Server, RuntimeInfo, snapshotter capabilities,
//! Transfer pull/echo/export/import/tag, events, leases, sandbox store).
//!
//! The reference: `go2_client_reference_containerd` runs the same program
//! against containerd 2.1.9 from `scripts/unstable-tools.sh`.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use stevedore_e2e::{busybox_image, require_tool, Daemon};
use stevedore_remote::testutil::TestRegistry;

fn go2_root() -> PathBuf {
    PathBuf::from(
        std::env::var("GO2_ROOT").unwrap_or_else(|_| "/opt/stevedore-tools/go2".to_string()),
    )
}

/// Build clientcheck2 once per test binary; the Go build cache lives in the
/// cargo target directory so later runs reuse it.
fn clientcheck2() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let root = go2_root();
        let goroot = std::fs::read_dir(root.join("usr/lib"))
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("bin/go").is_file());
        let gocode = root.join("usr/share/gocode");
        let (Some(goroot), true) = (
            goroot,
            gocode
                .join("src/github.com/containerd/containerd/v2/client/client.go")
                .is_file(),
        ) else {
            panic!(
                "containerd 2.x's Go client and a Go toolchain are required under {}: run scripts/go2-client.sh (as root)",
                root.display()
            );
        };
        stevedore_e2e::go_build(
            "clientcheck2",
            &goroot.join("bin/go"),
            &gocode,
            &[
                ("GOROOT", goroot.as_os_str()),
                ("GOTOOLCHAIN", OsStr::new("local")),
            ],
        )
    })
    .clone()
}

/// A registry holding the busybox test image, as `containerd/busybox:1.32`.
fn registry_with_busybox(dir: &Path) -> (TestRegistry, String) {
    let reg = TestRegistry::start();
    let img = busybox_image(dir);
    let dest = stevedore_e2e::skopeo_push(&img, &reg.host(), "containerd/busybox:1.32", &[]);
    (reg, dest)
}

/// clientcheck2 against the daemon on `socket`, in namespace `ns`, pulling
/// `image`.
fn clientcheck2_cmd(socket: &Path, ns: &str, image: &str) -> Command {
    let mut c = Command::new(clientcheck2());
    c.arg("-address")
        .arg(socket)
        .arg("-namespace")
        .arg(ns)
        .arg("-image")
        .arg(image);
    c
}

/// The checks clientcheck2 runs (one `PASS name` or `FAIL name: reason`
/// line each).
const CHECKS: usize = 50;

/// Run clientcheck2: whether it exited 0, its stdout and stderr.
fn run_clientcheck2(socket: &Path, ns: &str, image: &str) -> (bool, String, String) {
    let o = clientcheck2_cmd(socket, ns, image)
        .output()
        .expect("run clientcheck2");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The lines of `stdout` starting with `prefix`.
fn lines<'a>(stdout: &'a str, prefix: &str) -> Vec<&'a str> {
    stdout.lines().filter(|l| l.starts_with(prefix)).collect()
}

/// Containers' cgroups and runc roots are host-wide, keyed by namespace and
/// id: a namespace of the test's own.
fn namespace_for(dir: &Path) -> String {
    let name = dir.file_name().unwrap().to_string_lossy();
    let name: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("cc2-{name}")
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn go2_client_behaviours_on_stevedore_shim() {
    require_tool("runc", "runc");
    let bin = clientcheck2();
    assert!(bin.is_file());
    let dir = tempfile::tempdir().unwrap();
    let (_reg, image) = registry_with_busybox(dir.path());
    let d = Daemon::start();
    let ns = namespace_for(d.dir.path());
    let (ok, stdout, stderr) = run_clientcheck2(&d.socket, &ns, &image);
    println!("{stdout}");
    assert!(
        ok && lines(&stdout, "PASS ").len() >= CHECKS,
        "clientcheck2:\n{stdout}\n{stderr}\ndaemon log (tail):\n{}",
        tail(&d.log(), 60)
    );
}

/// Run clientcheck2's restart phase `phase` ("before" or "after").
fn restart_phase(socket: &Path, ns: &str, image: &str, log: &Path, phase: &str) -> String {
    let o = clientcheck2_cmd(socket, ns, image)
        .arg("-log")
        .arg(log)
        .arg("-restart-phase")
        .arg(phase)
        .output()
        .expect("run clientcheck2");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && stdout.contains(&format!("PASS restart_{phase}")),
        "clientcheck2 -restart-phase {phase}:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// A task started through the 2.x client keeps running across a
/// stevedored restart; a new client finds it running (its cio.LogFile log
/// still growing), kills, waits for and deletes it.
#[test]
fn go2_client_finds_a_task_after_a_daemon_restart() {
    require_tool("runc", "runc");
    clientcheck2();
    let dir = tempfile::tempdir().unwrap();
    let (_reg, image) = registry_with_busybox(dir.path());
    let mut d = Daemon::start();
    let ns = namespace_for(d.dir.path());
    let log = dir.path().join("task.log");
    restart_phase(&d.socket, &ns, &image, &log, "before");
    d.stop();
    d.spawn();
    restart_phase(&d.socket, &ns, &image, &log, "after");
}

const CONTAINERD2: &str = "/opt/stevedore-tools/containerd/usr/bin/containerd";

/// containerd 2.1.9 with its own root, state and sockets, CRI off; its Go
/// shim (from the same package) first on PATH.
struct Containerd2 {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Containerd2 {
    fn start() -> Containerd2 {
        assert!(
            Path::new(CONTAINERD2).is_file(),
            "containerd 2.x is required: run scripts/unstable-tools.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 3\nroot = \"{0}/root\"\nstate = \"{0}/state\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\", \"io.containerd.cri.v1.images\", \
                 \"io.containerd.cri.v1.runtime\", \"io.containerd.nri.v1.nri\"]\n\
                 [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n\
                 [debug]\n  level = \"info\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
                d.display(),
                socket.display()
            ),
        )
        .unwrap();
        let path = format!(
            "/opt/stevedore-tools/containerd/usr/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new(CONTAINERD2)
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "containerd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Containerd2 {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Containerd2 {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

/// The reference: the same checks pass on containerd 2.1.9 (a check that
/// fails there tests something containerd does not do). containerd 2.1.9
/// itself fails `events_task_lifecycle` now and then under load (3 of ~10
/// runs here; 0 of 8 on an idle machine): its shim publishes
/// `/tasks/delete` asynchronously and is shut down right after, so
/// subscribers sometimes never see it. That one failure is containerd's,
/// and only on the reference is it let pass.
#[test]
fn go2_client_reference_containerd() {
    require_tool("runc", "runc");
    clientcheck2();
    let dir = tempfile::tempdir().unwrap();
    let (_reg, image) = registry_with_busybox(dir.path());
    let c = Containerd2::start();
    let ns = namespace_for(dir.path());
    let (ok, stdout, stderr) = run_clientcheck2(&c.socket, &ns, &image);
    println!("{stdout}");
    let fails = lines(&stdout, "FAIL ");
    let containerds_own = |l: &&str| l.starts_with("FAIL events_task_lifecycle:");
    assert!(
        (ok || fails.iter().all(containerds_own))
            && lines(&stdout, "PASS ").len() + fails.len() >= CHECKS,
        "clientcheck2 on containerd 2.1.9:\n{stdout}\n{stderr}"
    );
}
