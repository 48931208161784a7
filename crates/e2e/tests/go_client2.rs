//! containerd 2.x's Go client library (`github.com/containerd/containerd/v2/client`,
//! what Docker 28, nerdctl and BuildKit link) against stevedored:
//! `go/clientcheck2`, built offline in GOPATH mode with the Go toolchain and
//! the containerd 2.1 sources (plus their golang-*-dev closure) that
//! `scripts/go2-client.sh` unpacks from Debian unstable under
//! /opt/stevedore-tools/go2. It runs clientcheck's checks ported to the 2.x
//! client and the 2.x calls (Server, RuntimeInfo, snapshotter capabilities,
//! Transfer pull/echo/export/import/tag, events, leases, sandbox store).
//!
//! The reference: `go_client2_reference_containerd` (ignored; run it with
//! `--ignored`) runs the same program against containerd 2.1.9 from
//! `scripts/unstable-tools.sh`.

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
        let target = stevedore_e2e::bin_dir();
        let gopath = target.join("go2-path");
        let src = gopath.join("src");
        std::fs::create_dir_all(&src).unwrap();
        let link = src.join("clientcheck2");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("go/clientcheck2"),
            &link,
        )
        .unwrap();
        let out = target.join("clientcheck2");
        let o = Command::new(goroot.join("bin/go"))
            .args(["build", "-o"])
            .arg(&out)
            .arg(".")
            .current_dir(&link)
            .env("GOROOT", &goroot)
            .env("GO111MODULE", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOPATH", format!("{}:{}", gopath.display(), gocode.display()))
            .env("GOCACHE", target.join("go2-cache"))
            .env("GOFLAGS", "")
            .output()
            .expect("run go build");
        assert!(
            o.status.success(),
            "go build clientcheck2: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
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

/// Run clientcheck2 against `socket`; its stdout, stderr and whether it passed.
fn run_clientcheck2(socket: &Path, ns: &str, image: &str) -> (bool, String, String) {
    let o = Command::new(clientcheck2())
        .arg("-address")
        .arg(socket)
        .arg("-namespace")
        .arg(ns)
        .arg("-image")
        .arg(image)
        .output()
        .expect("run clientcheck2");
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    (
        o.status.success() && passed >= 50,
        stdout,
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
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
        ok,
        "clientcheck2:\n{stdout}\n{stderr}\ndaemon log (tail):\n{}",
        tail(&d.log(), 60)
    );
}

/// Run clientcheck2's restart phase `phase` ("before" or "after").
fn restart_phase(socket: &Path, ns: &str, image: &str, log: &Path, phase: &str) -> String {
    let o = Command::new(clientcheck2())
        .arg("-address")
        .arg(socket)
        .arg("-namespace")
        .arg(ns)
        .arg("-image")
        .arg(image)
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

/// containerd 2.1.9 itself fails `events_task_lifecycle` now and then (3 of
/// ~10 runs here): its shim publishes `/tasks/delete` asynchronously and is
/// shut down right after, so subscribers sometimes never see it.
#[test]
#[ignore = "the reference run against containerd 2.1.9: cargo test --test go_client2 -- --ignored"]
fn go2_client_reference_containerd() {
    require_tool("runc", "runc");
    clientcheck2();
    let dir = tempfile::tempdir().unwrap();
    let (_reg, image) = registry_with_busybox(dir.path());
    let c = Containerd2::start();
    let ns = namespace_for(dir.path());
    let (ok, stdout, stderr) = run_clientcheck2(&c.socket, &ns, &image);
    println!("{stdout}");
    assert!(ok, "clientcheck2 on containerd 2.1.9:\n{stdout}\n{stderr}");
}
