//! containerd's own Go client library against stevedored: `go/clientcheck`
//! (built here with Debian's golang-go and the containerd 1.6 client sources
//! of golang-github-containerd-containerd-dev, GOPATH mode, no network) runs
//! the behaviours containerd's integration tests rely on (namespace labels at
//! start-up, pull with unpack, runc's reasons in errors, identifier checks,
//! TTY execs with megabytes of output, CloseIO, exec delete status, NotFound
//! after runc deleted the container, complete metrics, host-PID kill-all, the
//! shim cgroup). The same checks run on stevedore's shim and on containerd's
//! Go shim, the reference.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use stevedore_e2e::{busybox_image, require_tool, Daemon, GO_SHIM_CONFIG};
use stevedore_remote::testutil::TestRegistry;

const GO_SOURCES: &str = "/usr/share/gocode/src/github.com/containerd/containerd";

/// Build clientcheck once per test binary; the Go build cache lives in the
/// cargo target directory so later runs reuse it.
fn clientcheck() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let go = require_tool("go", "golang-go");
        assert!(
            Path::new(GO_SOURCES).join("client.go").is_file(),
            "containerd's Go client sources are required: apt-get install golang-github-containerd-containerd-dev"
        );
        stevedore_e2e::go_build(
            "clientcheck",
            &go,
            Path::new("/usr/share/gocode"),
            &[],
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

fn run_clientcheck(config: Option<&str>) {
    require_tool("runc", "runc");
    let bin = clientcheck();
    let dir = tempfile::tempdir().unwrap();
    let (_reg, image) = registry_with_busybox(dir.path());
    let d = Daemon::start_with_config(config);
    // containers' cgroups and the Go shim's runc root are host-wide, keyed
    // by namespace and id: a namespace of this test's own
    let ns = format!(
        "cc-{}",
        d.dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(['_', '.'], "-")
    );
    let o = Command::new(bin)
        .arg("-address")
        .arg(&d.socket)
        .arg("-namespace")
        .arg(&ns)
        .arg("-image")
        .arg(&image)
        .output()
        .expect("run clientcheck");
    let stdout = String::from_utf8_lossy(&o.stdout);
    let passed = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(
        o.status.success() && passed >= 14,
        "clientcheck ({passed} passed):\n{stdout}\n{}\ndaemon log (tail):\n{}",
        String::from_utf8_lossy(&o.stderr),
        tail(&d.log(), 60)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn go_client_behaviours_on_stevedore_shim() {
    run_clientcheck(None);
}

#[test]
fn go_client_behaviours_on_containerd_go_shim() {
    run_clientcheck(Some(GO_SHIM_CONFIG));
}
