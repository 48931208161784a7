//! Kubernetes' CRI on stevedored, driven the way kubelet drives it (a Rust
//! client of `runtime.v1`): pods with their own network namespace from the
//! real CNI plugins (a bridge in 198.19.0.0/24 without a gateway, so no
//! traffic leaves the pod network), containers sharing it, logs in the CRI
//! format, exec, stats, stop with a grace period, restart of the daemon,
//! images from a local registry (also with basic auth), and bad requests,
//! with nothing left behind (netns, mounts, shims).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use stevedore_api::cri;
use stevedore_api::cri::image_service_client::ImageServiceClient;
use stevedore_api::cri::runtime_service_client::RuntimeServiceClient;
use stevedore_e2e::{busybox_image, make_image, require_tool, skopeo_push, Daemon};
use stevedore_remote::testutil::TestRegistry;
use tonic::transport::Channel;

const PAUSE_CMD: &str =
    r#"["/bin/sh","-c","trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]"#;

struct Env {
    d: Daemon,
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    busybox: String,
    _reg: TestRegistry,
    dir: tempfile::TempDir,
}

fn cni_conf(dir: &Path) -> PathBuf {
    let conf = dir.join("net.d");
    std::fs::create_dir_all(&conf).unwrap();
    let bridge = format!("cri{}", &uuid_like()[..8]);
    let text = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "cri-test",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": false, "ipMasq": false,
             "ipam": {"type": "host-local", "dataDir": dir.join("ipam"),
                      "ranges": [[{"subnet": "198.19.0.0/24"}]]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(conf.join("10-test.conflist"), text.to_string()).unwrap();
    std::fs::write(dir.join("bridge-name"), bridge).unwrap();
    conf
}

/// A name part unique per test, also among tests of one process (bridge
/// names are at most 15 bytes).
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = N.fetch_add(1, Ordering::SeqCst);
    let mix = (std::process::id() as u64) << 32 ^ (t as u64) ^ ((n as u64) << 24);
    format!("{:012x}", mix & 0xffff_ffff_ffff)
}

impl Env {
    async fn start(with_cni: bool) -> Env {
        require_tool("/usr/lib/cni/bridge", "containernetworking-plugins");
        let reg = TestRegistry::start();
        let dir = tempfile::tempdir().unwrap();
        let bb = busybox_image(&dir.path().join("bb"));
        let busybox = skopeo_push(&bb, &reg.host(), "library/busybox:1", &[]);
        let pause = make_image(
            "busybox",
            &dir.path().join("pause"),
            &["--name", "pause:3.6", "--cmd", PAUSE_CMD],
        );
        let pause = skopeo_push(&pause, &reg.host(), "pause:3.6", &[]);
        let conf = if with_cni {
            cni_conf(dir.path())
        } else {
            dir.path().join("empty.d")
        };
        let config = format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
sandbox_image = "{pause}"
restrict_oom_score_adj = true
netns_mounts_under_state_dir = true
[plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "/usr/lib/cni"
conf_dir = "{}"
"#,
            conf.display()
        );
        let d = Daemon::start_with_config(Some(&config));
        let ch = stevedore_api::client::connect(&d.socket).await.unwrap();
        Env {
            rt: RuntimeServiceClient::new(ch.clone()),
            img: ImageServiceClient::new(ch),
            d,
            busybox,
            _reg: reg,
            dir,
        }
    }

    async fn reconnect(&mut self) {
        let ch = stevedore_api::client::connect(&self.d.socket)
            .await
            .unwrap();
        self.rt = RuntimeServiceClient::new(ch.clone());
        self.img = ImageServiceClient::new(ch);
    }

    fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn pod_config(&self, name: &str, host_network: bool) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: self.logs().join(name).display().to_string(),
            labels: [("app".to_string(), name.to_string())].into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: if host_network {
                            cri::NamespaceMode::Node as i32
                        } else {
                            cri::NamespaceMode::Pod as i32
                        },
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn container_config(&self, name: &str, args: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.busybox.clone(),
                ..Default::default()
            }),
            command: args.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            envs: vec![cri::KeyValue {
                key: "GREETING".into(),
                value: "hello".into(),
            }],
            labels: [("c".to_string(), name.to_string())].into(),
            ..Default::default()
        }
    }

    async fn pull_busybox(&mut self) -> String {
        self.img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: self.busybox.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .image_ref
    }

    async fn run_pod(&mut self, cfg: &cri::PodSandboxConfig) -> String {
        self.rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(cfg.clone()),
                runtime_handler: String::new(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", self.d.log()))
            .into_inner()
            .pod_sandbox_id
    }

    async fn start_container(
        &mut self,
        pod: &str,
        pod_cfg: &cri::PodSandboxConfig,
        cfg: cri::ContainerConfig,
    ) -> String {
        let id = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", self.d.log()))
            .into_inner()
            .container_id;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", self.d.log()));
        id
    }

    async fn exec(&mut self, id: &str, cmd: &[&str]) -> cri::ExecSyncResponse {
        self.rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {cmd:?}: {e}\n{}", self.d.log()))
            .into_inner()
    }

    async fn status(&mut self, id: &str) -> cri::ContainerStatus {
        self.rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.into(),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner()
            .status
            .unwrap()
    }

    async fn wait_state(&mut self, id: &str, state: cri::ContainerState) -> cri::ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(id).await;
            if s.state == state as i32 || Instant::now() > deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn teardown(&mut self, pod: &str) {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", self.d.log()));
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", self.d.log()));
    }

    /// No veth is left on the pod bridge and no network namespace in the
    /// CRI's state; then the test's bridge goes.
    fn assert_no_pod_network_left(&self) {
        let bridge = std::fs::read_to_string(self.dir.path().join("bridge-name")).unwrap();
        let o = std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &bridge])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).trim().is_empty(),
            "veths left: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let netns_dir = self.d.state.join("io.containerd.grpc.v1.cri").join("netns");
        let left: Vec<_> = std::fs::read_dir(&netns_dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "netns left: {left:?}");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &bridge])
            .status();
    }

    /// Nothing of the daemon's is left mounted (netns, shm, rootfs).
    fn assert_no_mounts(&self) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.d.dir.path().display().to_string();
        let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&root)).collect();
        assert!(left.is_empty(), "mounts left behind: {left:#?}");
    }
}

fn wait_for_file(p: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        if s.contains(needle) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `<RFC3339Nano> <stream> <P|F> <line>`
fn assert_cri_line(line: &str, stream: &str, text: &str) {
    let parts: Vec<&str> = line.splitn(4, ' ').collect();
    assert_eq!(parts.len(), 4, "{line:?}");
    assert!(
        parts[0].ends_with('Z') && parts[0].contains('T'),
        "timestamp: {line:?}"
    );
    assert_eq!(parts[1], stream, "{line:?}");
    assert_eq!(parts[2], "F", "{line:?}");
    assert_eq!(parts[3], text, "{line:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_runs_a_pod_whose_containers_share_the_pod_network() {
    let mut e = Env::start(true).await;
    let v =
        e.rt.version(cri::VersionRequest::default())
            .await
            .unwrap()
            .into_inner();
    assert_eq!(v.runtime_api_version, "v1");
    let st =
        e.rt.status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let conds: HashMap<String, bool> = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .map(|c| (c.r#type, c.status))
        .collect();
    assert!(conds["RuntimeReady"]);
    assert!(conds["NetworkReady"], "{}", e.d.log());

    let image_id = e.pull_busybox().await;
    assert!(image_id.starts_with("sha256:"), "{image_id}");
    let pod_cfg = e.pod_config("web", false);
    let pod = e.run_pod(&pod_cfg).await;
    let ps =
        e.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let status = ps.status.unwrap();
    assert_eq!(status.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = status.network.unwrap().ip;
    assert!(ip.starts_with("198.19.0."), "pod ip {ip}");
    // containerd 1.6's verbose info: what `crictl inspectp` users read
    let info: serde_json::Value = serde_json::from_str(&ps.info["info"]).unwrap();
    assert!(info["netNamespacePath"].as_str().unwrap().contains("cni-"));
    assert_eq!(info["config"]["metadata"]["name"], "web");
    assert!(
        info["runtimeSpec"]["linux"]["namespaces"].is_array(),
        "{info}"
    );

    let server = e
        .start_container(
            &pod,
            &pod_cfg,
            e.container_config(
                "server",
                &[
                    "/bin/sh",
                    "-c",
                    "mkdir -p /www && echo pong > /www/index.html && echo started; echo to-stderr >&2; exec /bin/busybox httpd -f -p 8080 -h /www",
                ],
            ),
        )
        .await;
    // the client has a pid namespace of its own: its shell is pid 1 there
    let mut client_cfg = e.container_config("client", &["sh", "-c", "sleep 3600"]);
    client_cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            namespace_options: Some(cri::NamespaceOption {
                pid: cri::NamespaceMode::Container as i32,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    let client = e.start_container(&pod, &pod_cfg, client_cfg).await;
    // one shim serves the pod: its sandbox and both containers (containerd's
    // runc shim groups a pod's containers by io.kubernetes.cri.sandbox-id)
    let address = |id: &str| {
        std::fs::read_to_string(
            e.d.state
                .join("io.containerd.runtime.v2.task/k8s.io")
                .join(id)
                .join("address"),
        )
        .unwrap()
    };
    assert_eq!(address(&server), address(&pod));
    assert_eq!(address(&client), address(&pod));
    let shims = e.d.shim_pids();
    assert_eq!(shims.len(), 1, "one shim process for the pod: {shims:?}");
    // the client reaches the server over the pod's loopback and the pod IP
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut r = e
        .exec(
            &client,
            &[
                "/bin/busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://127.0.0.1:8080/",
            ],
        )
        .await;
    while r.exit_code != 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = e
            .exec(
                &client,
                &[
                    "/bin/busybox",
                    "wget",
                    "-q",
                    "-O",
                    "-",
                    "http://127.0.0.1:8080/",
                ],
            )
            .await;
    }
    assert_eq!(String::from_utf8_lossy(&r.stdout), "pong\n", "{r:?}");
    let url = format!("http://{ip}:8080/");
    let r = e
        .exec(&client, &["/bin/busybox", "wget", "-q", "-O", "-", &url])
        .await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "pong\n", "{r:?}");
    // hostname, env, exit codes, stderr
    let r = e.exec(&client, &["hostname"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "web");
    let r = e
        .exec(
            &client,
            &["sh", "-c", "echo $GREETING; echo oops >&2; exit 3"],
        )
        .await;
    assert_eq!(r.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hello\n");
    assert_eq!(String::from_utf8_lossy(&r.stderr), "oops\n");
    // a timeout kills the process and answers DeadlineExceeded
    let t0 = Instant::now();
    let err =
        e.rt.exec_sync(cri::ExecSyncRequest {
            container_id: client.clone(),
            cmd: vec!["sleep".into(), "30".into()],
            timeout: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::DeadlineExceeded, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    // ... and the process is gone when the answer comes (critest's
    // "execSync with timeout" looks for it right after)
    let r = e
        .exec(
            &client,
            &["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"],
        )
        .await;
    let procs = String::from_utf8_lossy(&r.stdout);
    assert!(
        !procs.contains("sleep 30"),
        "the timed-out exec still runs: {procs}"
    );

    // logs in the CRI format at the path kubelet gave
    let log = e.logs().join("web").join("server.log");
    let text = wait_for_file(&log, "to-stderr");
    let lines: Vec<&str> = text.lines().collect();
    let out = lines.iter().find(|l| l.contains(" stdout ")).unwrap();
    assert_cri_line(out, "stdout", "started");
    let err_line = lines.iter().find(|l| l.contains(" stderr ")).unwrap();
    assert_cri_line(err_line, "stderr", "to-stderr");
    // reopen after kubelet's rotation
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    e.rt.reopen_container_log(cri::ReopenContainerLogRequest {
        container_id: server.clone(),
    })
    .await
    .unwrap();
    assert!(log.exists(), "the log was reopened at its path");

    // status, lists, stats
    let v =
        e.rt.container_status(cri::ContainerStatusRequest {
            container_id: server.clone(),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let info: serde_json::Value = serde_json::from_str(&v.info["info"]).unwrap();
    assert_eq!(info["sandboxID"], pod.as_str());
    assert_eq!(info["runtimeType"], "io.containerd.runc.v2");
    assert_eq!(info["config"]["log_path"], "server.log");
    assert!(info["runtimeSpec"]["process"]["args"].is_array(), "{info}");
    let st =
        e.rt.status(cri::StatusRequest { verbose: true })
            .await
            .unwrap()
            .into_inner();
    let cfg: serde_json::Value = serde_json::from_str(&st.info["config"]).unwrap();
    assert!(
        cfg["sandboxImage"].as_str().unwrap().contains("pause"),
        "{cfg}"
    );
    assert_eq!(cfg["cni"]["binDir"], "/usr/lib/cni");
    let s = e.status(&server).await;
    assert_eq!(s.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(s.image_id, image_id);
    assert!(
        s.image_ref.contains("@sha256:") || s.image_ref == image_id,
        "{s:?}"
    );
    let list =
        e.rt.list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .containers;
    assert_eq!(list.len(), 2);
    let stats =
        e.rt.container_stats(cri::ContainerStatsRequest {
            container_id: server.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert!(stats.cpu.unwrap().usage_core_nano_seconds.unwrap().value > 0);
    assert!(stats.memory.unwrap().working_set_bytes.unwrap().value > 0);
    assert!(stats.writable_layer.is_some());
    let pstats =
        e.rt.pod_sandbox_stats(cri::PodSandboxStatsRequest {
            pod_sandbox_id: pod.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    let linux = pstats.linux.unwrap();
    assert_eq!(linux.containers.len(), 2);
    assert!(linux.network.unwrap().default_interface.is_some());

    // stop with a grace period: the client's shell, pid 1 of its own pid
    // namespace, ignores SIGTERM, so it takes the SIGKILL after a second
    let t0 = Instant::now();
    e.rt.stop_container(cri::StopContainerRequest {
        container_id: client.clone(),
        timeout: 1,
    })
    .await
    .unwrap();
    let s = e
        .wait_state(&client, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.exit_code, 137, "{s:?}");
    assert_eq!(s.reason, "Error");
    assert!(t0.elapsed() >= Duration::from_secs(1));
    // the pod's shim still serves the server once the client's task is gone
    let r = e.exec(&server, &["/bin/busybox", "true"]).await;
    assert_eq!(r.exit_code, 0, "{r:?}");
    assert_eq!(e.d.shim_pids(), shims);
    // the pod goes, with its network namespace, shm and containers
    e.teardown(&pod).await;
    let pods =
        e.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty());
    let ctrs = e.d.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
    assert!(ctrs.trim().is_empty(), "{ctrs}");
    e.assert_no_mounts();
    e.assert_no_pod_network_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pods_survive_a_daemon_restart() {
    let mut e = Env::start(true).await;
    e.pull_busybox().await;
    let pod_cfg = e.pod_config("keep", false);
    let pod = e.run_pod(&pod_cfg).await;
    let c = e
        .start_container(
            &pod,
            &pod_cfg,
            e.container_config(
                "ticker",
                &[
                    "sh",
                    "-c",
                    "i=0; while :; do echo tick$i; i=$((i+1)); sleep 0.2; done",
                ],
            ),
        )
        .await;
    let short = e
        .start_container(
            &pod,
            &pod_cfg,
            e.container_config("short", &["sh", "-c", "sleep 2; exit 7"]),
        )
        .await;
    let log = e.logs().join("keep").join("ticker.log");
    wait_for_file(&log, "tick2");
    e.d.kill9();
    // the short container exits while the daemon is down
    std::thread::sleep(Duration::from_secs(3));
    e.d.spawn();
    e.reconnect().await;
    let pods =
        e.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].state, cri::PodSandboxState::SandboxReady as i32);
    let s = e.status(&c).await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    let s = e
        .wait_state(&short, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(s.exit_code, 7, "{s:?}\n{}", e.d.log());
    // logging resumed after the restart
    let before = std::fs::read_to_string(&log).unwrap().lines().count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&log).unwrap().lines().count() <= before + 2 {
        assert!(Instant::now() < deadline, "no log lines after the restart");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = e.exec(&c, &["echo", "still here"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout), "still here\n");
    e.teardown(&pod).await;
    e.assert_no_mounts();
    let bridge = std::fs::read_to_string(e.dir.path().join("bridge-name")).unwrap();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_answers_bad_requests_clearly_and_leaks_nothing() {
    let mut e = Env::start(false).await;
    // without a CNI config: NetworkReady is false with containerd's reason
    let st =
        e.rt.status(cri::StatusRequest { verbose: false })
            .await
            .unwrap()
            .into_inner();
    let net = st
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!net.status);
    assert!(
        net.message.contains("cni plugin not initialized"),
        "{net:?}"
    );
    // a pod network cannot be set up, and nothing stays behind
    let pod_cfg = e.pod_config("nonet", false);
    let err =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(pod_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("cni"), "{err}");
    // the name was released: a host-network pod of that name runs
    let host_cfg = e.pod_config("nonet", true);
    let pod = e.run_pod(&host_cfg).await;
    // the same name again is refused while the pod exists
    let err =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(host_cfg.clone()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    let err =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(cri::PodSandboxConfig::default()),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let err =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(e.pod_config("kata", true)),
            runtime_handler: "kata".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    // unknown ids
    let err =
        e.rt.pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: "nope".into(),
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    let err =
        e.rt.start_container(cri::StartContainerRequest {
            container_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    // stopping what is gone is done (the CRI's stops are idempotent;
    // critest's Idempotence specs)
    e.rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: "nope".into(),
    })
    .await
    .expect("StopPodSandbox of an unknown id");
    e.rt.stop_container(cri::StopContainerRequest {
        container_id: "nope".into(),
        timeout: 0,
    })
    .await
    .expect("StopContainer of an unknown id");
    // an image that is not there
    let mut cfg = e.container_config("x", &["true"]);
    cfg.image = Some(cri::ImageSpec {
        image: "example.invalid/none:1".into(),
        ..Default::default()
    });
    let err =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    // ImageStatus of a missing image is an empty answer, not an error
    let r = e
        .img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: "example.invalid/none:1".into(),
                ..Default::default()
            }),
            verbose: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.image.is_none());
    // malformed configs: a mount without paths, a privileged container in
    // an unprivileged pod
    let mut cfg = e.container_config("badmount", &["true"]);
    cfg.mounts = vec![cri::Mount {
        container_path: String::new(),
        host_path: "/tmp".into(),
        ..Default::default()
    }];
    e.pull_busybox().await;
    let err =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    let mut cfg = e.container_config("priv", &["true"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            privileged: true,
            ..Default::default()
        }),
        ..Default::default()
    });
    let err =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("privileged"), "{err}");
    // neither left a container record behind
    let ls = e.d.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "only the sandbox: {ls}");
    // a created container cannot exec; duplicate container names are refused
    e.pull_busybox().await;
    let cfg = e.container_config("once", &["true"]);
    let id =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg.clone()),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let err =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}");
    let err =
        e.rt.exec_sync(cri::ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["true".into()],
            timeout: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err}");
    // a command that does not exist fails the start with runc's reason
    let bad =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(e.container_config("bad", &["/no/such/binary"])),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .container_id;
    let err =
        e.rt.start_container(cri::StartContainerRequest {
            container_id: bad.clone(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("/no/such/binary"), "{err}");
    let s = e.status(&bad).await;
    assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
    assert_eq!(s.reason, "StartError");
    // users by name from the image's /etc/passwd, and containerd's
    // additional groups (root is in wheel in the test image), the primary
    // group among them (containerd 1.6.18+, CVE-2023-25173)
    let mut cfg = e.container_config("www", &["sleep", "3600"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "www-data".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let www = e.start_container(&pod, &host_cfg, cfg).await;
    let r = e.exec(&www, &["id"]).await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim(),
        "uid=33(www-data) gid=33(www-data) groups=33(www-data)",
        "{r:?}"
    );
    // ContainerStatus.user: the identity the process started with
    let user = e.status(&www).await.user.and_then(|u| u.linux).unwrap();
    assert_eq!(
        (user.uid, user.gid, user.supplemental_groups),
        (33, 33, vec![33])
    );
    let root = e
        .start_container(
            &pod,
            &host_cfg,
            e.container_config("root", &["sleep", "3600"]),
        )
        .await;
    let r = e.exec(&root, &["id", "-G"]).await;
    assert_eq!(String::from_utf8_lossy(&r.stdout).trim(), "0 10", "{r:?}");
    let mut cfg = e.container_config("ghost", &["true"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        security_context: Some(cri::LinuxContainerSecurityContext {
            run_as_username: "ghost".into(),
            ..Default::default()
        }),
        ..Default::default()
    });
    let err =
        e.rt.create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(host_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    assert!(err.message().contains("ghost"), "{err}");
    // removing twice is fine; images go with RemoveImage
    e.rt.remove_container(cri::RemoveContainerRequest {
        container_id: bad.clone(),
    })
    .await
    .unwrap();
    e.rt.remove_container(cri::RemoveContainerRequest { container_id: bad })
        .await
        .unwrap();
    e.teardown(&pod).await;
    e.rt.remove_pod_sandbox(cri::RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap();
    let images = e
        .img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    let bb = images
        .iter()
        .find(|i| i.repo_tags.iter().any(|t| t == &e.busybox))
        .unwrap_or_else(|| panic!("{images:?}"));
    e.img
        .remove_image(cri::RemoveImageRequest {
            image: Some(cri::ImageSpec {
                image: bb.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    let images = e
        .img
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner()
        .images;
    assert!(images.iter().all(|i| i.id != bb.id), "{images:?}");
    e.assert_no_mounts();
    e.d.expect_no_shims(Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pulls_with_basic_auth_from_the_request() {
    let reg = TestRegistry::start_with_basic_auth("kube", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let bb = busybox_image(&dir.path().join("bb"));
    let (user, pass) = reg.credentials().unwrap();
    let dest = format!("{}/private/busybox:1", reg.host());
    let o = std::process::Command::new(require_tool("skopeo", "skopeo"))
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .arg(format!("--dest-creds={user}:{pass}"))
        .arg(format!("oci:{}", bb.oci_dir.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let d = Daemon::start();
    let ch = stevedore_api::client::connect(&d.socket).await.unwrap();
    let mut img = ImageServiceClient::new(ch);
    let err = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: dest.clone(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.message().contains("401") || err.message().to_lowercase().contains("unauthorized"),
        "{err}"
    );
    let id = img
        .pull_image(cri::PullImageRequest {
            image: Some(cri::ImageSpec {
                image: dest.clone(),
                ..Default::default()
            }),
            auth: Some(cri::AuthConfig {
                username: user,
                password: pass,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.log()))
        .into_inner()
        .image_ref;
    let st = img
        .image_status(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec {
                image: dest.clone(),
                ..Default::default()
            }),
            verbose: true,
        })
        .await
        .unwrap()
        .into_inner();
    let image = st.image.unwrap();
    assert_eq!(image.id, id);
    assert_eq!(image.repo_tags, vec![dest.clone()]);
    assert_eq!(image.repo_digests.len(), 1);
    assert!(image.size > 0);
    assert!(st.info["info"].contains("chainID"));
    // the CRI's images live in k8s.io, labelled as containerd's CRI does
    let ls = d.ctr_ok(&["-n", "k8s.io", "images", "ls"]);
    assert!(ls.contains(&dest) && ls.contains(&id), "{ls}");
    assert!(ls.contains("io.cri-containerd.image=managed"), "{ls}");
    let fs = img
        .image_fs_info(cri::ImageFsInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(fs.image_filesystems[0].used_bytes.as_ref().unwrap().value > 0);
    // ctr lists the CRI plugin as containerd 1.6 does
    let plugins = d.ctr_ok(&["plugins", "ls"]);
    assert!(
        plugins.lines().any(|l| l.contains("io.containerd.grpc.v1")
            && l.contains(" cri ")
            && l.contains("ok")),
        "{plugins}"
    );
}

mod ws {
    //! A WebSocket client of the CRI streaming server, as kubectl 1.30+ speaks
    //! to kubelet: channel byte first, v5 closes stdin with channel 255.
    use futures::{SinkExt, StreamExt};
    use std::time::Duration;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::WebSocketStream;

    pub type Ws = WebSocketStream<TcpStream>;

    pub async fn connect(url: &str, protocol: &str) -> Ws {
        let host = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut req = url
            .replacen("http://", "ws://", 1)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(protocol).unwrap(),
        );
        let tcp = TcpStream::connect(&host).await.unwrap();
        tokio_tungstenite::client_async(req, tcp).await.unwrap().0
    }

    pub async fn send(ws: &mut Ws, channel: u8, data: &[u8]) {
        let mut m = vec![channel];
        m.extend_from_slice(data);
        ws.send(Message::Binary(m.into())).await.unwrap();
    }

    /// Messages until `done` holds or the server closes: (channel, data).
    pub async fn read_until(
        ws: &mut Ws,
        done: impl Fn(&[(u8, Vec<u8>)]) -> bool,
    ) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), async {
            while !done(&out) {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) if !b.is_empty() => {
                        out.push((b[0], b[1..].to_vec()))
                    }
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    _ => {}
                }
            }
        })
        .await;
        out
    }

    pub fn text(msgs: &[(u8, Vec<u8>)], ch: u8) -> String {
        let b: Vec<u8> = msgs
            .iter()
            .filter(|(c, _)| *c == ch)
            .flat_map(|(_, d)| d.clone())
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_streams_exec_attach_and_port_forward() {
    let mut e = Env::start(true).await;
    e.pull_busybox().await;
    let pod_cfg = e.pod_config("stream", false);
    let pod = e.run_pod(&pod_cfg).await;
    let server = e
        .start_container(
            &pod,
            &pod_cfg,
            e.container_config(
                "server",
                &["/bin/sh", "-c", "mkdir -p /www && echo pong > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"],
            ),
        )
        .await;
    let mut reader = e.container_config(
        "reader",
        &["/bin/sh", "-c", "while read l; do echo got:$l; done"],
    );
    reader.stdin = true;
    let reader = e.start_container(&pod, &pod_cfg, reader).await;

    // exec: stdin to stdout, stderr, and the exit code in the status
    let url =
        e.rt.exec(cri::ExecRequest {
            container_id: server.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat; echo done >&2; exit 5".into(),
            ],
            tty: false,
            stdin: true,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let mut s = ws::connect(&url, "v5.channel.k8s.io").await;
    ws::send(&mut s, 0, b"hello stream\n").await;
    ws::send(&mut s, 255, &[0]).await; // v5: stdin closed
    let msgs = ws::read_until(&mut s, |m| m.iter().any(|(c, _)| *c == 3)).await;
    assert_eq!(ws::text(&msgs, 1), "hello stream\n", "{msgs:?}");
    assert_eq!(ws::text(&msgs, 2), "done\n");
    let status = ws::text(&msgs, 3);
    assert!(
        status.contains("NonZeroExitCode") && status.contains("\"5\""),
        "{status}"
    );
    // exec with a terminal: TERM=xterm, and the size the client sends
    // before the process starts applies (crictl exec -it sends it at once)
    let url =
        e.rt.exec(cri::ExecRequest {
            container_id: server.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "sleep 1; stty size; echo TERM=$TERM".into(),
            ],
            tty: true,
            stdin: false,
            stdout: true,
            stderr: false,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut s = ws::connect(&url, "v5.channel.k8s.io").await;
    ws::send(&mut s, 4, br#"{"Width":100,"Height":40}"#).await;
    let msgs = ws::read_until(&mut s, |m| m.iter().any(|(c, _)| *c == 3)).await;
    let out = ws::text(&msgs, 1);
    assert!(out.contains("40 100"), "{out:?}\n{}", e.d.log());
    assert!(out.contains("TERM=xterm"), "{out:?}");
    // a used URL is gone
    let again =
        std::net::TcpStream::connect(url.trim_start_matches("http://").split('/').next().unwrap())
            .map(|mut c| {
                use std::io::{Read, Write};
                let path = &url[url.find("/exec").unwrap()..];
                write!(c, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                let mut b = [0u8; 12];
                c.read_exact(&mut b).unwrap();
                String::from_utf8_lossy(&b).into_owned()
            })
            .unwrap();
    assert!(again.contains("404"), "{again}");

    // attach: the container's stdin and stdout
    let url =
        e.rt.attach(cri::AttachRequest {
            container_id: reader.clone(),
            stdin: true,
            tty: false,
            stdout: true,
            stderr: true,
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut s = ws::connect(&url, "v5.channel.k8s.io").await;
    ws::send(&mut s, 0, b"one\n").await;
    let msgs = ws::read_until(&mut s, |m| ws::text(m, 1).contains("got:one")).await;
    assert!(ws::text(&msgs, 1).contains("got:one"), "{msgs:?}");
    drop(s);

    // port forward into the pod's network namespace
    let url =
        e.rt.port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.clone(),
            port: vec![8080],
        })
        .await
        .unwrap()
        .into_inner()
        .url;
    let mut s = ws::connect(&url, "v4.channel.k8s.io").await;
    // each channel first carries its port (little endian)
    let first = ws::read_until(&mut s, |m| m.len() >= 2).await;
    assert!(
        first
            .iter()
            .any(|(c, d)| *c == 0 && d == &8080u16.to_le_bytes()),
        "{first:?}"
    );
    ws::send(&mut s, 0, b"GET / HTTP/1.0\r\n\r\n").await;
    let msgs = ws::read_until(&mut s, |m| ws::text(m, 0).contains("pong")).await;
    assert!(ws::text(&msgs, 0).contains("pong"), "{msgs:?}");
    drop(s);

    e.teardown(&pod).await;
    e.assert_no_mounts();
    let bridge = std::fs::read_to_string(e.dir.path().join("bridge-name")).unwrap();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &bridge])
        .status();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_reports_oom_killed_containers_and_events() {
    let mut e = Env::start(false).await;
    e.pull_busybox().await;
    let mut events =
        e.rt.get_container_events(cri::GetEventsRequest {})
            .await
            .unwrap()
            .into_inner();
    let pod_cfg = e.pod_config("oom", true);
    let pod = e.run_pod(&pod_cfg).await;
    let mut cfg = e.container_config("hog", &["sh", "-c", "a=x; while :; do a=$a$a; done"]);
    cfg.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 32 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let id = e.start_container(&pod, &pod_cfg, cfg).await;
    let s = e
        .wait_state(&id, cri::ContainerState::ContainerExited)
        .await;
    assert_eq!(
        s.state,
        cri::ContainerState::ContainerExited as i32,
        "{s:?}"
    );
    assert_eq!(s.reason, "OOMKilled", "{s:?}\n{}", e.d.log());
    assert_eq!(s.exit_code, 137);
    // kubelet's evented PLEG: created, started, stopped for the container
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&(
        id.clone(),
        cri::ContainerEventType::ContainerStoppedEvent as i32,
    )) && Instant::now() < deadline
    {
        match tokio::time::timeout(Duration::from_secs(5), events.message()).await {
            Ok(Ok(Some(ev))) => seen.push((ev.container_id, ev.container_event_type)),
            _ => break,
        }
    }
    for kind in [
        cri::ContainerEventType::ContainerCreatedEvent,
        cri::ContainerEventType::ContainerStartedEvent,
        cri::ContainerEventType::ContainerStoppedEvent,
    ] {
        assert!(
            seen.contains(&(id.clone(), kind as i32)),
            "{kind:?} missing: {seen:?}"
        );
    }
    // StopContainer and StopPodSandbox: one CONTAINER_STOPPED event per exit
    // (the stop path and the exit monitor both see it; containerd sends one)
    let cfg = e.container_config("sleeper", &["sleep", "1000"]);
    let sleeper = e.start_container(&pod, &pod_cfg, cfg).await;
    e.rt.stop_container(cri::StopContainerRequest {
        container_id: sleeper.clone(),
        timeout: 0,
    })
    .await
    .unwrap();
    e.teardown(&pod).await;
    let mut stopped = Vec::new();
    while let Ok(Ok(Some(ev))) =
        tokio::time::timeout(Duration::from_secs(2), events.message()).await
    {
        if ev.container_event_type == cri::ContainerEventType::ContainerStoppedEvent as i32 {
            stopped.push(ev.container_id);
        }
    }
    for want in [&sleeper, &pod] {
        let n = stopped.iter().filter(|c| *c == want).count();
        assert_eq!(n, 1, "stopped events for {want}: {stopped:?}");
    }
    e.assert_no_mounts();
}

/// A pod whose CNI ADD fails (here the bridge's IPAM range is impossible)
/// fails with the plugin's reason while its pause container is being
/// started alongside, and leaves nothing: no pod, no container record, no
/// shim, no network namespace, no veth.
#[tokio::test(flavor = "multi_thread")]
async fn cri_pod_whose_network_setup_fails_leaves_nothing_behind() {
    let mut e = Env::start(true).await;
    let conf = e.dir.path().join("net.d").join("10-test.conflist");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("198.19.0.0/24", "198.19.0.0/33");
    std::fs::write(&conf, text).unwrap();
    let err =
        e.rt.run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(e.pod_config("badnet", false)),
            runtime_handler: String::new(),
        })
        .await
        .unwrap_err();
    assert!(
        err.message()
            .contains("failed to setup network for sandbox"),
        "{err}"
    );
    let pods =
        e.rt.list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
            .await
            .unwrap()
            .into_inner()
            .items;
    assert!(pods.is_empty(), "{pods:?}");
    e.d.expect_no_shims(Duration::from_secs(10));
    let records = e.d.ctr_ok(&["-n", "k8s.io", "containers", "ls", "-q"]);
    assert!(
        records.trim().is_empty(),
        "container records left: {records}"
    );
    e.assert_no_pod_network_left();
}
