//! `bench/run --smoke` end to end, so the benchmark harness cannot rot: it
//! starts the real containerd, stevedored and a registry, runs every workload
//! once on tiny images (the CRI rows with 2 pods, on both daemons started
//! again with their CRI enabled) and writes the results table. Building this
//! test builds `cri-bench` (a binary of this crate), the harness's CRI client.

use std::process::Command;
use stevedore_e2e::{bin_dir, require_tool};

#[test]
fn bench_smoke_produces_the_side_by_side_table() {
    for (tool, pkg) in [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("pigz", "pigz"),
        ("zstd", "zstd"),
        ("python3", "python3"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
    ] {
        require_tool(tool, pkg);
    }
    let out_dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/run");
    let out = Command::new("python3")
        .arg(script)
        .args(["--smoke", "--no-deps", "--bin-dir"])
        .arg(bin_dir())
        .arg("--out")
        .arg(out_dir.path())
        .arg("--cache")
        .arg(cache.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench/run --smoke failed:\n{stderr}");

    let json_path = std::fs::read_dir(out_dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "json"))
        .expect("results json written");
    let md = std::fs::read_to_string(json_path.with_extension("md")).unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    let workloads = report["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    for expected in [
        "idle_rss",
        "version",
        "content_ingest",
        "import_big_gzip",
        "import_big_zstd",
        "export_big_gzip",
        "pull_busybox_cold",
        "pull_big_zstd_warm",
        "pull_big_gzip_transfer",
        "rss_after_transfers",
        "run_true",
        "run_3_sequential",
        "run_3_parallel",
        "rss_3_running",
        "cri_idle_rss",
        "cri_pod_start",
        "cri_pod_teardown",
        "cri_rss_2_pods",
        "cri_rss_2_pods_total",
    ] {
        assert!(names.contains(&expected), "{expected} missing: {names:?}");
    }
    // every row has a containerd number (the reference must always work) and
    // a stevedore number or an explicit unsupported/error status
    for w in workloads {
        if w["name"].as_str().unwrap().starts_with("cli_") {
            continue;
        }
        let c = &w["daemons"]["containerd"];
        if w["name"].as_str().unwrap().ends_with("_transfer") {
            // containerd 1.6 has no Transfer service: ctr 2.x's pull rows
            // measure containerd 2.x and stevedore
            assert_eq!(c["status"], "unsupported", "{w}");
            assert_eq!(w["daemons"]["stevedore"]["status"], "ok", "{w}");
            continue;
        }
        assert_eq!(c["status"], "ok", "containerd failed {w}");
        assert!(c["median"].as_f64().unwrap() > 0.0, "{w}");
        let s = &w["daemons"]["stevedore"]["status"];
        assert!(
            ["ok", "unsupported", "error"].contains(&s.as_str().unwrap()),
            "{w}"
        );
    }
    // stevedore serves version today: that row has both numbers and a ratio
    let version = workloads.iter().find(|w| w["name"] == "version").unwrap();
    assert_eq!(version["daemons"]["stevedore"]["status"], "ok", "{version}");
    assert!(version["ratio"].as_f64().unwrap() > 0.0);
    // and the CRI: pods start and go away on stevedored as on containerd,
    // through the same client (`cri-bench`)
    for name in ["cri_pod_start", "cri_pod_teardown", "cri_rss_2_pods"] {
        let w = workloads.iter().find(|w| w["name"] == name).unwrap();
        assert_eq!(w["daemons"]["stevedore"]["status"], "ok", "{w}");
        assert!(w["ratio"].as_f64().unwrap() > 0.0, "{w}");
    }
    let start = workloads
        .iter()
        .find(|w| w["name"] == "cri_pod_start")
        .unwrap();
    assert_eq!(start["daemons"]["stevedore"]["n"], 2, "{start}");
    assert!(md.contains("| workload | unit | containerd | stevedore | ratio | floor |"));
    // nothing left behind: the temp dir (roots, states, sockets) is gone and
    // nothing is mounted below it
    let tmp = stderr
        .lines()
        .find_map(|l| l.split_once("temp dir ").map(|(_, p)| p.trim().to_string()))
        .expect("harness logs its temp dir");
    assert!(!std::path::Path::new(&tmp).exists(), "{tmp} left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&tmp), "mounts left under {tmp}:\n{mounts}");
    // nor the CRI pods' bridges (the CNI bridge plugin never deletes them)
    let bridges = stderr
        .lines()
        .find_map(|l| l.split_once("CRI bridges ").map(|(_, b)| b.to_string()))
        .expect("harness logs its CRI bridges");
    for b in bridges.split_whitespace() {
        assert!(
            !std::path::Path::new("/sys/class/net").join(b).exists(),
            "bridge {b} left behind"
        );
    }
}
