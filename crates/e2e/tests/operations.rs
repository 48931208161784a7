//! The operator's endpoints, driven by the real tools: `ctr pprof` against
//! the debug socket (`[debug] address`), the profiles opened by
//! `go tool pprof`, the log level changed at run time; and a real
//! Prometheus scraping `[metrics] address` and answering a query over its
//! HTTP API with stevedore's series.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stevedore_e2e::{require_tool, Daemon};

/// A daemon whose config (written before it starts) names sockets in `dir`.
fn daemon_with(dir: &Path, config: &str) -> Daemon {
    std::fs::create_dir_all(dir).unwrap();
    Daemon::start_with_config(Some(config))
}

/// One HTTP/1.0 exchange on a unix socket: (status line, body).
fn unix_http(sock: &Path, method: &str, path: &str, body: &str) -> (String, String) {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    split_http(s)
}

/// One HTTP/1.0 GET over TCP: (status line, body).
fn tcp_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    split_http(s)
}

fn split_http(mut s: impl Read) -> (String, String) {
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn go_pprof_top(file: &Path) -> String {
    let go = require_tool("go", "golang-go");
    let out = Command::new(go)
        .args(["tool", "pprof", "-top"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "go tool pprof -top {}: {}\n{text}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

fn ctr_pprof(sock: &Path, args: &[&str]) -> Vec<u8> {
    let ctr = require_tool("ctr", "containerd");
    let out = Command::new(ctr)
        .arg("pprof")
        .arg("--debug-socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr pprof {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn ctr_pprof_profiles_open_in_go_tool_pprof() {
    let dir = tempfile::Builder::new()
        .prefix("sd-dbg-")
        .tempdir_in("/tmp")
        .unwrap();
    let sock = dir.path().join("debug.sock");
    let d = daemon_with(
        dir.path(),
        &format!("[debug]\naddress = \"{}\"\n", sock.display()),
    );
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "debug socket mode");
    // some work for the heap profile to show
    d.ctr_ok(&["namespaces", "create", "pprof-test"]);

    let heap = dir.path().join("heap.pb.gz");
    std::fs::write(&heap, ctr_pprof(&sock, &["heap"])).unwrap();
    let top = go_pprof_top(&heap);
    assert!(top.contains("Type: inuse_space"), "{top}");

    let cpu = dir.path().join("cpu.pb.gz");
    std::fs::write(&cpu, ctr_pprof(&sock, &["profile", "--seconds", "1s"])).unwrap();
    let top = go_pprof_top(&cpu);
    assert!(top.contains("Type: cpu"), "{top}");
    assert!(top.contains("Duration: 1"), "{top}");

    let dump = String::from_utf8(ctr_pprof(&sock, &["goroutines"])).unwrap();
    assert!(dump.starts_with("thread "), "{dump}");
    assert!(dump.contains("tokio::runtime"), "{dump}");
    assert!(!dump.contains("on_signal"), "the dump's own frames: {dump}");

    // not every Go profile has a Rust counterpart: a clear refusal
    let ctr = require_tool("ctr", "containerd");
    let out = Command::new(ctr)
        .arg("pprof")
        .arg("--debug-socket")
        .arg(&sock)
        .arg("block")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("501"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // the log level changes while the daemon runs
    assert_eq!(
        unix_http(&sock, "GET", "/debug/log-level", ""),
        ("HTTP/1.0 200 OK".into(), "debug\n".into())
    );
    let (status, _) = unix_http(&sock, "PUT", "/debug/log-level", "warn");
    assert_eq!(status, "HTTP/1.0 200 OK");
    let (status, body) = unix_http(&sock, "PUT", "/debug/log-level", "loud");
    assert_eq!(status, "HTTP/1.0 400 Bad Request", "{body}");
    assert_eq!(unix_http(&sock, "GET", "/debug/log-level", "").1, "warn\n");
    let before = d.log().len();
    d.ctr_ok(&["namespaces", "create", "quiet"]);
    assert!(
        !d.log()[before..].contains("DEBUG"),
        "debug lines after the level went to warn:\n{}",
        &d.log()[before..]
    );
}

/// A free loopback port (bound and released; tests use distinct ones).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A Prometheus server owned by the test: its own config, storage and
/// port; killed (by pid) and reaped on drop.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn prometheus_scrapes_stevedore_metrics() {
    let prometheus = require_tool("prometheus", "prometheus");
    let dir = tempfile::Builder::new()
        .prefix("sd-prom-")
        .tempdir_in("/tmp")
        .unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let d = daemon_with(
        dir.path(),
        &format!("[metrics]\naddress = \"{metrics}\"\ngrpc_histogram = true\n"),
    );
    d.ctr_ok(&["version"]);
    // the endpoint answers in the text format first
    let (status, body) = tcp_get(&metrics, "/v1/metrics");
    assert_eq!(status, "HTTP/1.0 200 OK");
    assert!(
        body.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Version\",grpc_service=\"containerd.services.version.v1.Version\",grpc_type=\"unary\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("grpc_server_handling_seconds_bucket{"),
        "{body}"
    );
    assert!(body.contains("containerd_build_info{"), "{body}");

    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: stevedore\n    metrics_path: /v1/metrics\n    static_configs:\n      - targets: ['{metrics}']\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut p = Prometheus {
        child: Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
        addr: web,
    };
    let query = "/api/v1/query?query=grpc_server_handled_total%7Bgrpc_method%3D%22Version%22%7D";
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(Some(st)) = p.child.try_wait() {
            panic!(
                "prometheus exited ({st}):\n{}",
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
        if std::net::TcpStream::connect(&p.addr).is_ok() {
            let (_, body) = tcp_get(&p.addr, query);
            if body.contains("\"job\":\"stevedore\"") {
                assert!(body.contains("\"grpc_code\":\"OK\""), "{body}");
                assert!(
                    body.contains("\"grpc_service\":\"containerd.services.version.v1.Version\""),
                    "{body}"
                );
                // stevedore's own series are there too
                let (_, gc) = tcp_get(&p.addr, "/api/v1/query?query=stevedore_gc_runs_total");
                assert!(gc.contains("\"result\":\"ok\""), "{gc}");
                return;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "prometheus never returned stevedore's series: {last}\n{}",
        std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
    );
}
