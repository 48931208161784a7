//! `ctr run` flags against stevedored: the spec is built by ctr, the task runs
//! through the runtime v2 shim and runc; these check the container sees it.

use stevedore_e2e::{busybox_image, Daemon};

fn setup() -> (Daemon, tempfile::TempDir, String) {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    d.ctr_ok(&["images", "import", img.oci_tar.to_str().unwrap()]);
    (d, dir, img.name)
}

#[test]
fn default_network_namespace_has_only_loopback_and_net_host_sees_the_host() {
    let (d, _dir, img) = setup();
    let out = d.ctr_ok(&["run", "--rm", &img, "n1", "ls", "/sys/class/net"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["lo"], "{out}");
    let host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let out = d.ctr_ok(&[
        "run",
        "--rm",
        "--net-host",
        &img,
        "n2",
        "ls",
        "/sys/class/net",
    ]);
    for h in &host {
        assert!(out.contains(h.as_str()), "{h} missing in {out}");
    }
}

#[test]
fn read_only_rootfs_and_bind_mounts() {
    let (d, dir, img) = setup();
    let o = d.ctr(&["run", "--rm", "--read-only", &img, "ro", "touch", "/x"]);
    assert!(!o.status.success(), "writing to a read-only rootfs fails");
    let host = dir.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("hello.txt"), "from the host").unwrap();
    let spec = format!("type=bind,src={},dst=/mnt,options=rbind:rw", host.display());
    let out = d.ctr_ok(&[
        "run",
        "--rm",
        "--mount",
        &spec,
        &img,
        "bm",
        "sh",
        "-c",
        "cat /mnt/hello.txt; echo back > /mnt/out.txt",
    ]);
    assert_eq!(out.trim(), "from the host");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt"))
            .unwrap()
            .trim(),
        "back"
    );
}

#[test]
fn memory_limit_and_cpus_land_in_the_cgroup() {
    let (d, _dir, img) = setup();
    d.ctr_ok(&[
        "run",
        "-d",
        "--memory-limit",
        "67108864",
        "--cpus",
        "0.5",
        &img,
        "cg",
        "sleep",
        "60",
    ]);
    // containerd's default cgroups path is /<namespace>/<id>
    let read = |v1: &str, v2: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/{v1}"))
            .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/{v2}")))
            .unwrap_or_default()
    };
    let mem = read(
        "memory/default/cg/memory.limit_in_bytes",
        "default/cg/memory.max",
    );
    let cpu = read("cpu/default/cg/cpu.cfs_quota_us", "default/cg/cpu.max");
    d.ctr_ok(&["tasks", "kill", "-s", "KILL", "cg"]);
    for _ in 0..50 {
        if d.ctr(&["tasks", "rm", "cg"]).status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    d.ctr_ok(&["containers", "rm", "cg"]);
    assert_eq!(mem.trim(), "67108864");
    assert!(cpu.contains("50000"), "{cpu}");
}

#[test]
fn privileged_containers_get_all_capabilities() {
    let (d, _dir, img) = setup();
    let caps = |args: &[&str]| -> u64 {
        let mut a = vec!["run", "--rm"];
        a.extend_from_slice(args);
        a.extend_from_slice(&[
            img.as_str(),
            "caps",
            "sh",
            "-c",
            "grep CapEff /proc/self/status",
        ]);
        let out = d.ctr_ok(&a);
        let hex = out.split_whitespace().last().unwrap().to_string();
        u64::from_str_radix(&hex, 16).unwrap()
    };
    let default = caps(&[]);
    let privileged = caps(&["--privileged"]);
    assert!(
        privileged.count_ones() > default.count_ones(),
        "{default:x} vs {privileged:x}"
    );
}
