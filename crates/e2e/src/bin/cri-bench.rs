//! The CRI client of `bench/run`'s `cri` workload: drives any runtime.v1
//! endpoint (stevedored, containerd 1.6 or 2.x) the way kubelet does, so the
//! same requests measure every daemon.
//!
//! ```text
//! cri-bench --socket S --image IMG [--pause IMG] --pods N --mode latency|hold|cleanup
//!           [--log-dir DIR] [--prefix P]
//! ```
//!
//! - `latency`: N times, one pod after the other: RunPodSandbox +
//!   CreateContainer + StartContainer (a `sleep 3600` container) = "pod
//!   start", then StopPodSandbox + RemovePodSandbox = "pod teardown". Prints
//!   one JSON object with the samples (seconds) and each call's samples.
//! - `hold`: starts N such pods, prints `{"ready": ..., "start_s": [...]}` on
//!   one line, waits for a line (or EOF) on stdin, tears them all down and
//!   prints `{"teardown_s": [...]}`. The harness samples the daemon's memory
//!   in between.
//! - `cleanup`: stops and removes every pod sandbox of the endpoint (after a
//!   failed run), prints `{"removed": n}`.
//!
//! Both images are pulled (untimed) before anything is measured. On an error
//! the pods this run created are removed before it exits with status 1.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;
use stevedore_api::cri;
use stevedore_api::cri::image_service_client::ImageServiceClient;
use stevedore_api::cri::runtime_service_client::RuntimeServiceClient;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error>;

struct Args {
    socket: PathBuf,
    image: String,
    pause: Option<String>,
    pods: usize,
    mode: String,
    log_dir: PathBuf,
    prefix: String,
}

fn parse_args() -> Result<Args, Error> {
    let mut a = Args {
        socket: PathBuf::new(),
        image: String::new(),
        pause: None,
        pods: 1,
        mode: "latency".into(),
        log_dir: std::env::temp_dir().join("cri-bench-logs"),
        prefix: format!("b{}", std::process::id()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--socket" => a.socket = value()?.into(),
            "--image" => a.image = value()?,
            "--pause" => a.pause = Some(value()?),
            "--pods" => a.pods = value()?.parse()?,
            "--mode" => a.mode = value()?,
            "--log-dir" => a.log_dir = value()?.into(),
            "--prefix" => a.prefix = value()?,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if a.socket.as_os_str().is_empty() {
        return Err("--socket is required".into());
    }
    if a.image.is_empty() && a.mode != "cleanup" {
        return Err("--image is required".into());
    }
    if !["latency", "hold", "cleanup"].contains(&a.mode.as_str()) {
        return Err(format!("unknown mode {:?}", a.mode).into());
    }
    Ok(a)
}

struct Bench {
    rt: RuntimeServiceClient<Channel>,
    img: ImageServiceClient<Channel>,
    args: Args,
    /// pods created and not yet removed, for the cleanup on error
    live: Vec<String>,
    seq: usize,
}

/// Per-call samples (seconds), in the order the calls are made.
#[derive(Default)]
struct Phases {
    run_pod_sandbox: Vec<f64>,
    create_container: Vec<f64>,
    start_container: Vec<f64>,
    stop_pod_sandbox: Vec<f64>,
    remove_pod_sandbox: Vec<f64>,
}

impl Phases {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "run_pod_sandbox": self.run_pod_sandbox,
            "create_container": self.create_container,
            "start_container": self.start_container,
            "stop_pod_sandbox": self.stop_pod_sandbox,
            "remove_pod_sandbox": self.remove_pod_sandbox,
        })
    }
}

fn since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

impl Bench {
    async fn pull(&mut self, image: &str) -> Result<(), Error> {
        self.img
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("PullImage {image}: {}", e.message()))?;
        Ok(())
    }

    fn pod_config(&mut self) -> cri::PodSandboxConfig {
        self.seq += 1;
        let name = format!("{}-{}", self.args.prefix, self.seq);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.clone(),
                uid: format!("uid-{name}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            hostname: name.clone(),
            log_directory: self.args.log_dir.join(&name).display().to_string(),
            labels: [("bench".to_string(), self.args.prefix.clone())].into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
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

    fn container_config(&self) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: "sleep".into(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: self.args.image.clone(),
                ..Default::default()
            }),
            command: vec!["sleep".into(), "3600".into()],
            log_path: "sleep.log".into(),
            ..Default::default()
        }
    }

    /// RunPodSandbox + CreateContainer + StartContainer.
    async fn start_pod(&mut self, ph: &mut Phases) -> Result<String, Error> {
        let config = self.pod_config();
        let t = Instant::now();
        let id = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: String::new(),
            })
            .await
            .map_err(|e| format!("RunPodSandbox: {}", e.message()))?
            .into_inner()
            .pod_sandbox_id;
        ph.run_pod_sandbox.push(since(t));
        self.live.push(id.clone());
        let t = Instant::now();
        let cid = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: id.clone(),
                config: Some(self.container_config()),
                sandbox_config: Some(config),
            })
            .await
            .map_err(|e| format!("CreateContainer in {id}: {}", e.message()))?
            .into_inner()
            .container_id;
        ph.create_container.push(since(t));
        let t = Instant::now();
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: cid.clone(),
            })
            .await
            .map_err(|e| format!("StartContainer {cid}: {}", e.message()))?;
        ph.start_container.push(since(t));
        Ok(id)
    }

    /// StopPodSandbox + RemovePodSandbox.
    async fn teardown(&mut self, id: &str, ph: &mut Phases) -> Result<(), Error> {
        let t = Instant::now();
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|e| format!("StopPodSandbox {id}: {}", e.message()))?;
        ph.stop_pod_sandbox.push(since(t));
        let t = Instant::now();
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            })
            .await
            .map_err(|e| format!("RemovePodSandbox {id}: {}", e.message()))?;
        ph.remove_pod_sandbox.push(since(t));
        self.live.retain(|p| p != id);
        Ok(())
    }

    async fn prepare(&mut self) -> Result<(), Error> {
        let image = self.args.image.clone();
        self.pull(&image).await?;
        if let Some(pause) = self.args.pause.clone() {
            self.pull(&pause).await?;
        }
        Ok(())
    }

    async fn latency(&mut self) -> Result<serde_json::Value, Error> {
        self.prepare().await?;
        let mut ph = Phases::default();
        let (mut start, mut teardown) = (vec![], vec![]);
        for _ in 0..self.args.pods {
            let t = Instant::now();
            let pod = self.start_pod(&mut ph).await?;
            start.push(since(t));
            let t = Instant::now();
            self.teardown(&pod, &mut ph).await?;
            teardown.push(since(t));
        }
        Ok(serde_json::json!({
            "start_s": start, "teardown_s": teardown, "phases": ph.json(),
        }))
    }

    async fn hold(&mut self) -> Result<serde_json::Value, Error> {
        self.prepare().await?;
        let mut ph = Phases::default();
        let mut pods = vec![];
        let mut start = vec![];
        for _ in 0..self.args.pods {
            let t = Instant::now();
            pods.push(self.start_pod(&mut ph).await?);
            start.push(since(t));
        }
        let ready = serde_json::json!({
            "ready": pods.len(),
            "start_s": start,
            "sandbox_ids": pods,
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ready}")?;
        out.flush()?;
        drop(out);
        // the harness samples memory now; a line or EOF on stdin ends the hold
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        })
        .await?;
        let mut teardown = vec![];
        for pod in &pods {
            let t = Instant::now();
            self.teardown(pod, &mut ph).await?;
            teardown.push(since(t));
        }
        Ok(serde_json::json!({"teardown_s": teardown, "phases": ph.json()}))
    }

    /// Every pod sandbox of the endpoint, stopped and removed.
    async fn cleanup(&mut self) -> Result<serde_json::Value, Error> {
        let pods = self
            .rt
            .list_pod_sandbox(cri::ListPodSandboxRequest::default())
            .await
            .map_err(|e| format!("ListPodSandbox: {}", e.message()))?
            .into_inner()
            .items;
        let mut ph = Phases::default();
        for p in &pods {
            self.teardown(&p.id, &mut ph).await?;
        }
        Ok(serde_json::json!({"removed": pods.len()}))
    }

    /// After an error: remove what this run created, best effort.
    async fn remove_live(&mut self) {
        for id in std::mem::take(&mut self.live) {
            let _ = self
                .rt
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await;
            let _ = self
                .rt
                .remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: id })
                .await;
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cri-bench: {e}");
            std::process::exit(2);
        }
    };
    let ch = match stevedore_api::client::connect(&args.socket).await {
        Ok(ch) => ch,
        Err(e) => {
            eprintln!("cri-bench: connect {}: {e}", args.socket.display());
            std::process::exit(1);
        }
    };
    let mut b = Bench {
        rt: RuntimeServiceClient::new(ch.clone()),
        img: ImageServiceClient::new(ch),
        args,
        live: vec![],
        seq: 0,
    };
    let result = match b.args.mode.as_str() {
        "latency" => b.latency().await,
        "hold" => b.hold().await,
        _ => b.cleanup().await,
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("cri-bench: {e}");
            b.remove_live().await;
            std::process::exit(1);
        }
    }
}
