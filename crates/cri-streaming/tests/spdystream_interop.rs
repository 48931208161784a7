//! Interop with moby/spdystream, the SPDY library of kubectl, client-go and
//! the kubelet: a Go client (`interop/spdyclient.go`, speaking like
//! client-go's remotecommand v4 and portforward clients) against the server.
//!
//! Needs Go and spdystream's source (Debian: `golang-go`,
//! `golang-github-docker-spdystream-dev`, both installed by scripts/deps.sh).

mod support;

use std::path::PathBuf;
use std::sync::OnceLock;

use stevedore_cri_streaming::{ExecRequest, PortForwardRequest};
use support::*;

const SPDYSTREAM_GOPATH: &str = "/usr/share/gocode";

/// Builds the client once per test binary (the tests run in parallel).
fn build_client() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build).clone()
}

fn build() -> PathBuf {
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/spdyclient.go");
    let bin = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spdyclient");
    let out = std::process::Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(src)
        .env("GO111MODULE", "off")
        .env("GOPATH", SPDYSTREAM_GOPATH)
        .env(
            "GOCACHE",
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gocache"),
        )
        .output()
        .expect("run go (install golang-go)");
    assert!(
        out.status.success(),
        "go build (install golang-github-docker-spdystream-dev): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

async fn run_client(args: &[&str]) -> String {
    let bin = build_client();
    let out = tokio::time::timeout(
        TIMEOUT,
        tokio::process::Command::new(bin).args(args).output(),
    )
    .await
    .expect("spdystream client finishes in time")
    .unwrap();
    assert!(
        out.status.success(),
        "client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn all_stdio(cmd: &[&str]) -> ExecRequest {
    ExecRequest {
        container_id: "ctr".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        stdin: true,
        stdout: true,
        stderr: true,
        tty: false,
    }
}

#[tokio::test]
async fn spdystream_client_execs_with_stdin_and_gets_success() {
    let (server, _) = server().await;
    let url = server.get_exec(&all_stdio(&["cat"])).unwrap();
    let out = run_client(&["exec", &url, "from spdystream"]).await;
    assert_eq!(
        out,
        "protocol=v4.channel.k8s.io\nstdout=from spdystream\nstderr=\nerror={\"metadata\":{},\"status\":\"Success\"}\n"
    );
}

#[tokio::test]
async fn spdystream_client_gets_the_exit_code() {
    let (server, _) = server().await;
    let url = server.get_exec(&all_stdio(&["exit", "5"])).unwrap();
    let out = run_client(&["exec", &url, "ignored"]).await;
    assert!(out.contains("stdout=out\n"), "{out}");
    assert!(
        out.contains(r#""reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"5"}]}"#),
        "{out}"
    );
}

#[tokio::test]
async fn spdystream_client_port_forwards() {
    let (server, _) = server().await;
    let port = echo_server().await.to_string();
    let url = server
        .get_port_forward(&PortForwardRequest {
            pod_sandbox_id: "pod".into(),
            port: vec![],
        })
        .unwrap();
    let out = run_client(&["portforward", &url, &port, "hello"]).await;
    assert_eq!(
        out,
        "protocol=portforward.k8s.io\necho0=hello 0\nerror0=\necho1=hello 1\nerror1=\n"
    );
}
