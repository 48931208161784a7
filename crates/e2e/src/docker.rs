//! Docker Engine as a real client of stevedored: a `dockerd --containerd
//! <socket>` owned by one test, with its own data-root, exec-root, pid file,
//! API socket, daemon config and CLI config, all under a temp dir, so tests run
//! in parallel and never read the machine's `/etc/docker/daemon.json` or
//! `~/.docker`.
//!
//! Two engines: Debian bookworm's `docker.io` 20.10 (installed) and Docker 28
//! from Debian unstable, unpacked (never installed) by
//! `scripts/unstable-tools.sh` under `$STEVEDORE_TOOLS` (default
//! `/opt/stevedore-tools`) and run with `--feature containerd-snapshotter`, so
//! its images live in stevedore's content store and snapshotters. Explicit
//! paths throughout: `/usr/local/bin/docker` may be an unrelated client.
//!
//! Dropping a [`Dockerd`] stops it (SIGTERM to the pid in its pid file, then
//! SIGKILL after a deadline) and detaches whatever it left mounted under its
//! directory (its data-root bind mount, overlay2 rootfs mounts, netns files).

use crate::Watch;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A Docker Engine release under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// Debian bookworm's `docker.io` 20.10 (graphdriver images, containerd
    /// only runs containers).
    Docker20,
    /// Docker 28 from Debian unstable with the containerd image store.
    Docker28,
}

fn tools_dir() -> PathBuf {
    std::env::var_os("STEVEDORE_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/stevedore-tools"))
}

/// Fail (never skip) when a tool at a fixed path is missing, saying where it
/// comes from.
fn require_path(path: PathBuf, from: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{} is required by this test: {from}",
        path.display()
    );
    path
}

impl Engine {
    /// The `dockerd` binary of this release.
    pub fn dockerd(self) -> PathBuf {
        match self {
            Engine::Docker20 => require_path(
                PathBuf::from("/usr/sbin/dockerd"),
                "apt-get install docker.io",
            ),
            Engine::Docker28 => require_path(
                tools_dir().join("docker.io/usr/sbin/dockerd"),
                "run scripts/unstable-tools.sh (unpacks docker.io 28 from Debian unstable)",
            ),
        }
    }

    /// The `docker` CLI of this release.
    pub fn cli(self) -> PathBuf {
        match self {
            Engine::Docker20 => require_path(
                PathBuf::from("/usr/bin/docker"),
                "apt-get install docker.io",
            ),
            Engine::Docker28 => require_path(
                tools_dir().join("docker-cli/usr/bin/docker"),
                "run scripts/unstable-tools.sh (unpacks docker-cli 28 from Debian unstable)",
            ),
        }
    }

    /// Flags this release needs besides the common ones.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Engine::Docker20 => &[],
            Engine::Docker28 => &["--feature", "containerd-snapshotter"],
        }
    }
}

/// A running dockerd owned by one test, talking to a test stevedored.
pub struct Dockerd {
    /// Which release this is.
    pub engine: Engine,
    /// Everything dockerd writes lives here.
    pub dir: tempfile::TempDir,
    /// `--data-root`.
    pub data_root: PathBuf,
    /// `--exec-root`.
    pub exec_root: PathBuf,
    /// The API socket (`-H unix://...`).
    pub socket: PathBuf,
    /// `--pidfile`.
    pub pidfile: PathBuf,
    containerd: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl Dockerd {
    /// Start dockerd against the containerd API at `containerd` with no
    /// bridge, no iptables, a short shutdown timeout and `extra` flags
    /// (kept for [`Dockerd::start_again`]).
    pub fn start(engine: Engine, containerd: &Path, extra: &[&str]) -> Dockerd {
        let dir = tempfile::Builder::new()
            .prefix("dk-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::write(dir.path().join("daemon.json"), "{}\n").unwrap();
        std::fs::create_dir(dir.path().join("cli")).unwrap();
        let mut d = Dockerd {
            engine,
            data_root: dir.path().join("data"),
            // short: dockerd puts unix sockets and FIFOs under it
            exec_root: dir.path().join("x"),
            socket: dir.path().join("docker.sock"),
            pidfile: dir.path().join("docker.pid"),
            dir,
            containerd: containerd.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        d.start_again();
        d
    }

    /// Start the (stopped) dockerd again with the same flags and wait until
    /// it serves.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "dockerd is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("dockerd.log"))
            .unwrap();
        let child = Command::new(self.engine.dockerd())
            .arg("--containerd")
            .arg(&self.containerd)
            .arg("--data-root")
            .arg(&self.data_root)
            .arg("--exec-root")
            .arg(&self.exec_root)
            .arg("--pidfile")
            .arg(&self.pidfile)
            .arg("--config-file")
            .arg(self.dir.path().join("daemon.json"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip-masq=false",
                "--shutdown-timeout=3",
            ])
            .args(self.engine.flags())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("dockerd exited early ({st}):\n{}", self.log());
            }
            if self.socket.exists() && self.docker(&["version"]).status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd did not start serving:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// The pid dockerd wrote to its pid file.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Whether the dockerd process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM dockerd (pid from its pid file) and wait for it to exit;
    /// SIGKILL after 30 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = self.pid().unwrap_or(child.id() as i32);
        if let Some(pid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// A `docker` CLI command for this daemon (own CLI config dir).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.engine.cli());
        c.env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT")
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args);
        c
    }

    /// Run the docker CLI with no stdin.
    pub fn docker(&self, args: &[&str]) -> Output {
        self.command(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// Run the docker CLI with `input` on its stdin.
    pub fn docker_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input).expect("write docker stdin");
        drop(stdin);
        child.wait_with_output().expect("wait for docker")
    }

    /// Run the docker CLI and return its stdout, failing the test (with
    /// dockerd's log) on a non-zero exit.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed: {}\n{}\ndockerd log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr),
            self.tail_log()
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// `docker inspect -f <format> <name>`, trimmed.
    pub fn inspect(&self, name: &str, format: &str) -> String {
        self.docker_ok(&["inspect", "-f", format, name])
            .trim()
            .to_string()
    }

    /// Poll `docker inspect -f <format>` until it prints `want`.
    pub fn await_inspect(&self, name: &str, format: &str, want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            last = self.inspect(name, format);
            if last == want {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{name}: `{format}` is {last:?}, not {want:?} after {timeout:?}\ndockerd log:\n{}",
            self.tail_log()
        );
    }

    /// Stream `docker events` (one JSON object per line) from `since` (a
    /// unix time, so events of earlier actions are replayed and none is
    /// missed while the client connects).
    pub fn events(&self, since: u64) -> Watch {
        crate::watch(self.command(&[
            "events",
            "--since",
            &since.to_string(),
            "--format",
            "{{json .}}",
        ]))
    }

    /// The last 60 lines of dockerd's log (for failure messages).
    pub fn tail_log(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Detach everything mounted under this dockerd's directory, deepest
    /// first.
    fn unmount_leftovers(&self) {
        let prefix = self.dir.path().to_string_lossy().to_string();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut targets: Vec<String> = info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .map(unescape_mount_path)
            .filter(|t| t == &prefix || t.starts_with(&format!("{prefix}/")))
            .collect();
        targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
        targets.dedup();
        for t in targets {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&t)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        self.unmount_leftovers();
    }
}
