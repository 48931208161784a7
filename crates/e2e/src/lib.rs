//! Test support: start a real stevedored with its own root, state and socket,
//! run the real `ctr` and the `stevedore` CLI against it, and clean up.
//!
//! Binaries come from the cargo target directory next to the test executable,
//! so run `cargo build --workspace --bins` before `cargo test` (README's test
//! command does). Missing external tools fail the test naming the package.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub mod docker;
pub mod powercut;

/// splitmix64: small, seedable, good enough to pick operations and delays
/// reproducibly from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// A numeric environment variable, when set and valid.
pub fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// A seed from `var`, or from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    env_u64(var).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    })
}

/// Build the Go program `crates/e2e/go/<name>` offline in GOPATH mode
/// (`GO111MODULE=off`) with the `go` binary, a GOPATH of its own in the
/// target directory followed by `sources` (the packages it imports), the
/// build cache in the target directory (later runs reuse it) and `env`
/// added; returns the binary, `<target>/<name>`.
pub fn go_build(name: &str, go: &Path, sources: &Path, env: &[(&str, &OsStr)]) -> PathBuf {
    let target = bin_dir();
    let gopath = target.join(format!("{name}-gopath"));
    let src = gopath.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let link = src.join(name);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("go").join(name),
        &link,
    )
    .unwrap();
    let out = target.join(name);
    let o = Command::new(go)
        .args(["build", "-o"])
        .arg(&out)
        .arg(".")
        .current_dir(&link)
        .env("GO111MODULE", "off")
        .env(
            "GOPATH",
            format!("{}:{}", gopath.display(), sources.display()),
        )
        .env("GOCACHE", target.join(format!("{name}-gocache")))
        .env("GOFLAGS", "")
        .envs(env.iter().copied())
        .output()
        .expect("run go build");
    assert!(
        o.status.success(),
        "go build {name}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Directory holding the workspace binaries (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("STEVEDORE_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test-binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of a workspace binary, failing clearly when it was not built.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

/// Fail (never skip) when an external tool is missing.
pub fn require_tool(tool: &str, package: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(tool);
        if p.is_file() {
            return p;
        }
    }
    panic!("{tool} is required by this test: apt-get install {package}");
}

/// A running stevedored owned by one test.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: Option<PathBuf>,
    child: Option<Child>,
}

impl Daemon {
    /// Start a daemon with a fresh root, state and socket.
    pub fn start() -> Daemon {
        Self::start_with_config(None)
    }

    /// Start a daemon with the given config text (root/state/address are
    /// still set per test by flags).
    pub fn start_with_config(config: Option<&str>) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("sd-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let mut d = Daemon {
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            socket: dir.path().join("s.sock"),
            config: None,
            dir,
            child: None,
        };
        if let Some(text) = config {
            let p = d.dir.path().join("config.toml");
            std::fs::write(&p, text).unwrap();
            d.config = Some(p);
        }
        d.spawn();
        d
    }

    /// A daemon, not started, whose root is `root` (e.g. on a test's own
    /// filesystem), with state, socket and log in a fresh directory.
    pub fn with_root(root: &Path) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("sd-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        Daemon {
            root: root.to_path_buf(),
            state: dir.path().join("state"),
            socket: dir.path().join("s.sock"),
            config: None,
            dir,
            child: None,
        }
    }

    /// The command line that starts this daemon.
    pub fn command(&self) -> Command {
        let mut c = Command::new(bin("stevedored"));
        c.arg("--root")
            .arg(&self.root)
            .arg("--state")
            .arg(&self.state)
            .arg("--address")
            .arg(&self.socket)
            .arg("--log-level")
            .arg("debug");
        if let Some(cfg) = &self.config {
            c.arg("--config").arg(cfg);
        } else {
            // never read the machine's /etc/stevedore/config.toml in tests
            c.arg("--config").arg(self.dir.path().join("none.toml"));
            std::fs::write(self.dir.path().join("none.toml"), "").unwrap();
        }
        c
    }

    /// (Re)start the daemon process and wait until it serves.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .unwrap();
        let child = self
            .command()
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn stevedored");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("stevedored exited early ({st}):\n{}", self.log());
                }
            }
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                // the scheduler collects once shortly after start; let that
                // pass so it cannot race the test's first unleased objects
                let gc_deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < gc_deadline && !self.log().contains("garbage collected") {
                    std::thread::sleep(Duration::from_millis(10));
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("stevedored did not start serving:\n{}", self.log());
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// SIGKILL the daemon (crash simulation).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM the daemon and wait for it; returns its exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let pid = rustix::process::Pid::from_raw(c.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        c.wait().ok()
    }

    /// Run the real containerd `ctr` against this daemon.
    pub fn ctr(&self, args: &[&str]) -> Output {
        let ctr = require_tool("ctr", "containerd");
        Command::new(ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Run ctr and return stdout, failing the test on a non-zero exit.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?} failed: {}\n{}\ndaemon log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `ctr images check`: Err naming the images that are not complete for
    /// this platform (or ctr's failure), with ctr's output.
    pub fn images_check(&self) -> Result<(), String> {
        let o = self.ctr(&["images", "check"]);
        let out = String::from_utf8_lossy(&o.stdout);
        let incomplete: Vec<&str> = out
            .lines()
            .skip(1)
            .filter(|l| !l.split_whitespace().any(|w| w == "complete"))
            .collect();
        if o.status.success() && incomplete.is_empty() {
            return Ok(());
        }
        Err(format!(
            "ctr images check: {incomplete:?}\n{out}{}",
            String::from_utf8_lossy(&o.stderr)
        ))
    }

    /// Run the stevedore CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("stevedore"))
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run stevedore")
    }

    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "stevedore {args:?} failed: {}\n{}\ndaemon log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Start a long-running client command (e.g. `events`) whose stdout lines
    /// are collected on a channel.
    pub fn watch(&self, cmd: Command) -> Watch {
        watch(cmd)
    }

    /// Start an event watcher (`ctr events` or `stevedore events`, whose filters
    /// must let namespace events through) and return once it is subscribed,
    /// by creating namespaces until one of their events arrives.
    pub fn synced_watch(&self, cmd: Command) -> Watch {
        let w = self.watch(cmd);
        for i in 0..100 {
            let name = format!("sync{i}");
            self.ctr_ok(&["namespaces", "create", &name]);
            self.ctr_ok(&["namespaces", "rm", &name]);
            let lines = w.lines_for(Duration::from_millis(200));
            if lines.iter().any(|l| l.contains("/namespaces/")) {
                return w;
            }
        }
        panic!("event watcher never received events");
    }

    /// `ctr` 2.x (containerd 2.1's, unpacked by scripts/unstable-tools.sh)
    /// against this daemon.
    pub fn ctr2_command(&self, args: &[&str]) -> Command {
        let p = Path::new(CTR2);
        assert!(
            p.is_file(),
            "{CTR2} is required by this test: run scripts/unstable-tools.sh (as root)"
        );
        let mut c = Command::new(p);
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    /// Run `ctr` 2.x.
    pub fn ctr2(&self, args: &[&str]) -> Output {
        self.ctr2_command(args).output().expect("run ctr 2.x")
    }

    /// Run `ctr` 2.x and return stdout, failing the test on a non-zero exit.
    pub fn ctr2_ok(&self, args: &[&str]) -> String {
        let o = self.ctr2(args);
        assert!(
            o.status.success(),
            "ctr 2.x {args:?} failed: {}\nstdout:\n{}\nstderr:\n{}\ndaemon log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(require_tool("ctr", "containerd"));
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("stevedore"));
        c.arg("--address").arg(&self.socket).args(args);
        c
    }

    /// Pids of the shims this daemon started (their command line names its
    /// socket), whoever their parent is now.
    pub fn shim_pids(&self) -> Vec<u32> {
        shim_pids_for(&self.socket.display().to_string())
    }

    /// Wait until no shim of this daemon runs; panics naming the survivors.
    pub fn expect_no_shims(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = self.shim_pids();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                let cmds: Vec<String> = left
                    .iter()
                    .map(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                            .unwrap_or_default()
                            .replace('\0', " ")
                    })
                    .collect();
                panic!("shims outlive their tasks: {cmds:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A gRPC channel to the daemon for direct API calls.
    pub async fn channel(&self) -> tonic::transport::Channel {
        stevedore_api::client::connect(&self.socket)
            .await
            .expect("connect to stevedored")
    }
}

impl Drop for Daemon {
    /// Stop the daemon, then make sure a failed test leaks no shims,
    /// container processes or mounts: kill the shims started for this
    /// daemon (their tasks die with them), delete leftover runc state and
    /// detach leftover rootfs mounts.
    fn drop(&mut self) {
        self.stop();
        for pid in self.shim_pids() {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let tasks = self.state.join("io.containerd.runtime.v2.task");
        for ns in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            let ns_name = ns.file_name().to_string_lossy().to_string();
            for b in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                // runc state: the Go shim's under /run/containerd/runc/<namespace>,
                // stevedore's shim's under /run/stevedore/runc/<namespace>
                for root in ["/run/containerd/runc", "/run/stevedore/runc"] {
                    let _ = Command::new("runc")
                        .args(["--root", &format!("{root}/{ns_name}"), "delete", "--force"])
                        .arg(b.file_name())
                        .stderr(Stdio::null())
                        .status();
                }
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(b.path().join("rootfs"))
                    .stderr(Stdio::null())
                    .status();
            }
        }
        // anything else mounted under the daemon's directories (a CRI pod's
        // network namespace or /dev/shm after a failed test), deepest first
        let root = self.dir.path().display().to_string();
        let mut left: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&m)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// containerd 2.1's `ctr` (Debian unstable's, never installed).
pub const CTR2: &str = "/opt/stevedore-tools/containerd/usr/bin/ctr";

/// Start a long-running client command whose stdout lines are collected on
/// a channel.
pub fn watch(mut cmd: Command) -> Watch {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn watcher");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Watch { child, lines: rx }
}

/// A long-running client whose output lines arrive on a channel.
pub struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    /// Wait for a line containing all of `needles`; returns it.
    pub fn expect_line(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if needles.iter().all(|n| line.contains(n)) {
                        return line;
                    }
                    seen.push(line);
                }
                Err(_) => panic!("no line with {needles:?} within {timeout:?}; saw: {seen:#?}"),
            }
        }
    }

    /// Collect lines for a while.
    pub fn lines_for(&self, d: Duration) -> Vec<String> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(l) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            out.push(l);
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test image written by `bench/images/mkimage.py` (deterministic: the same
/// bytes on every run). See bench/README.md for what each kind contains.
pub struct Images {
    /// The output directory given to the generator.
    pub dir: PathBuf,
    /// The image reference recorded in the archives (`io.containerd.image.name`).
    pub name: String,
    /// Digest of the top manifest (or of the index for `multi`).
    pub digest: String,
    /// The OCI image layout directory (`dir/oci`), e.g. for `skopeo copy oci:...`.
    pub oci_dir: PathBuf,
    /// The OCI archive (`dir/<kind>-oci.tar`), for `ctr images import`.
    pub oci_tar: PathBuf,
    /// The `docker save` archive (`dir/busybox-docker.tar`; busybox only).
    pub docker_tar: Option<PathBuf>,
    /// Everything `image.json` records: layers (digest, size, diff_id, files,
    /// unpacked_size), file counts, and `checks.present` / `checks.absent`
    /// paths an unpacked rootfs must (not) contain.
    pub info: serde_json::Value,
}

/// Path of the image generator in the source tree.
pub fn mkimage_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/images/mkimage.py")
}

/// Run the generator: `kind` is `busybox`, `big` or `multi`; `extra` are more
/// flags (`--compression zstd`, `--scale 0.01`, `--name REF`).
pub fn make_image(kind: &str, dir: &Path, extra: &[&str]) -> Images {
    require_tool("python3", "python3");
    require_tool("zstd", "zstd");
    let out = Command::new("python3")
        .arg(mkimage_script())
        .arg(kind)
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run python3 bench/images/mkimage.py");
    assert!(
        out.status.success(),
        "mkimage.py {kind} {extra:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(dir.join("image.json")).expect("read image.json");
    let info: serde_json::Value = serde_json::from_str(&text).expect("parse image.json");
    let field = |k: &str| info[k].as_str().map(str::to_string);
    Images {
        dir: dir.to_path_buf(),
        name: field("name").expect("image.json name"),
        digest: field("digest").expect("image.json digest"),
        oci_dir: dir.join(field("oci_dir").expect("image.json oci_dir")),
        oci_tar: dir.join(field("oci_tar").expect("image.json oci_tar")),
        docker_tar: field("docker_tar").map(|t| dir.join(t)),
        info,
    }
}

/// Copy `img`'s OCI layout into the plain-HTTP registry at `host` as
/// `<host>/<name>` with skopeo (`extra`: more flags, e.g. `--all` for an
/// index, `--format v2s2`); returns the reference.
pub fn skopeo_push(img: &Images, host: &str, name: &str, extra: &[&str]) -> String {
    let dest = format!("{host}/{name}");
    let o = Command::new(require_tool("skopeo", "skopeo"))
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .args(extra)
        .arg(format!("oci:{}", img.oci_dir.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("run skopeo");
    assert!(
        o.status.success(),
        "skopeo copy to {dest}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    dest
}

/// `docker.io/library/busybox:latest` from Debian's busybox-static (one gzip layer).
pub fn busybox_image(dir: &Path) -> Images {
    require_tool("busybox", "busybox-static");
    make_image("busybox", dir, &[])
}

/// The 5-layer `docker.io/stevedore/big:<compression>` image; `scale` 1.0 is
/// ~30k files / ~360 MB unpacked, tests want ~0.01 (~300 files, ~3.5 MB).
pub fn big_image(dir: &Path, compression: &str, scale: f64) -> Images {
    make_image(
        "big",
        dir,
        &["--compression", compression, "--scale", &scale.to_string()],
    )
}

/// `docker.io/stevedore/multi:latest`: an index with linux/amd64 and
/// linux/arm64/v8 manifests sharing the busybox layer.
pub fn multi_image(dir: &Path) -> Images {
    require_tool("busybox", "busybox-static");
    make_image("multi", dir, &[])
}

/// Daemon config that runs `io.containerd.runc.v2` on containerd's Go shim
/// (stevedored's default for it is stevedore's own shim).
pub const GO_SHIM_CONFIG: &str =
    "[plugins.\"io.containerd.runtime.v2.task\".shims]\n\"io.containerd.runc.v2\" = \"containerd-shim-runc-v2\"\n";

/// The parent of process `pid` (for a task's init process: its shim).
pub fn parent_pid(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    stat.rsplit(')')
        .next()
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|p| p.parse().ok())
        .expect("ppid in stat")
}

/// The command line of the parent of process `pid`, NULs as spaces.
pub fn parent_cmdline(pid: u32) -> String {
    let ppid = parent_pid(pid);
    std::fs::read_to_string(format!("/proc/{ppid}/cmdline"))
        .expect("read parent cmdline")
        .replace('\0', " ")
}

/// Which shim a test daemon runs `io.containerd.runc.v2` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shim {
    /// stevedore's own (stevedored's default).
    Stevedore,
    /// Debian's `containerd-shim-runc-v2` ([`GO_SHIM_CONFIG`]).
    Go,
}

impl Daemon {
    /// Start a daemon whose `io.containerd.runc.v2` runs on `shim`.
    pub fn start_with_shim(shim: Shim) -> Daemon {
        require_tool("runc", "runc");
        match shim {
            Shim::Stevedore => Daemon::start(),
            Shim::Go => {
                require_tool("containerd-shim-runc-v2", "containerd");
                Daemon::start_with_config(Some(GO_SHIM_CONFIG))
            }
        }
    }
}

/// Pids of running shim processes (not zombies) whose command line
/// contains `needle` (a daemon's socket path).
pub fn shim_pids_for(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("containerd-shim-") && cmd.contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// Run `args` with a pty of 33 rows x 101 columns as its stdio (python3's
/// pty module); returns (exit code, everything written to the terminal).
pub fn run_on_pty(args: &[&str]) -> (i32, String) {
    let script = r#"
import os, pty, subprocess, fcntl, termios, struct, sys
m, s = pty.openpty()
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
p = subprocess.Popen(sys.argv[1:], stdin=s, stdout=s, stderr=s, start_new_session=True)
os.close(s)
out = b""
while True:
    try:
        d = os.read(m, 65536)
    except OSError:
        break
    if not d:
        break
    out += d
sys.stdout.write(out.decode(errors="replace"))
sys.exit(p.wait())
"#;
    let o = Command::new(require_tool("python3", "python3"))
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run python3");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).to_string(),
    )
}

/// A directory with busybox-static and its applets: a minimal rootfs to
/// bind-mount as a task's rootfs.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    require_tool("busybox", "busybox-static");
    let root = dir.join("busybox-rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "cat", "true", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    for d in ["proc", "dev", "sys", "tmp", "etc", "run"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    root
}

/// A btrfs filesystem on a loop device (a sparse image file in /tmp),
/// mounted for a test and torn down on drop: unmounted, detached, removed.
pub struct LoopBtrfs {
    dir: tempfile::TempDir,
    dev: String,
    mnt: PathBuf,
}

pub(crate) fn run_ok(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl LoopBtrfs {
    /// Make a btrfs of `size` (truncate's syntax: `256M`) and mount it on
    /// `mnt` (created).
    pub fn mount_on(mnt: &Path, size: &str) -> LoopBtrfs {
        require_tool("mkfs.btrfs", "btrfs-progs");
        require_tool("losetup", "mount");
        let dir = tempfile::Builder::new()
            .prefix("e2e-btrfs-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let img = dir.path().join("img");
        run_ok("truncate", &["-s", size, img.to_str().unwrap()]);
        run_ok("mkfs.btrfs", &["-q", img.to_str().unwrap()]);
        let dev = run_ok("losetup", &["-f", "--show", img.to_str().unwrap()]);
        std::fs::create_dir_all(mnt).unwrap();
        let fs = LoopBtrfs {
            dir,
            dev,
            mnt: mnt.to_path_buf(),
        };
        run_ok("mount", &["-t", "btrfs", &fs.dev, mnt.to_str().unwrap()]);
        fs
    }

    /// Where it is mounted.
    pub fn mount_point(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for LoopBtrfs {
    fn drop(&mut self) {
        // a Daemon's drop may have detached it already (lazily)
        let _ = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = &self.dir;
    }
}
