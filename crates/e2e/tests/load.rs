//! Load: 64 concurrent gRPC clients (each its own connection over the unix
//! socket) hold a mixed workload against one stevedored for a bounded time
//! (`STEVEDORE_LOAD_SECS`, default 15): Version, image/content/namespace
//! lists, content Info, small ingests (write + commit), snapshot prepare +
//! remove, pulls from a real `docker-registry` (then image delete with sync GC),
//! and container runs through the real `ctr`. Every error fails the test
//! (counted by operation and code); the daemon's open fds and RSS are taken
//! after a warmup and again after the run has settled, and must not grow
//! beyond small bounds. One summary line reports the figures.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stevedore_api::services::content::{
    content_client::ContentClient, InfoRequest, ListContentRequest, WriteAction,
    WriteContentRequest,
};
use stevedore_api::services::images::{
    images_client::ImagesClient, DeleteImageRequest, ListImagesRequest,
};
use stevedore_api::services::namespaces::{
    namespaces_client::NamespacesClient, ListNamespacesRequest,
};
use stevedore_api::services::snapshots::{
    snapshots_client::SnapshotsClient, PrepareSnapshotRequest, RemoveSnapshotRequest,
};
use stevedore_api::services::stevedore_transfer::{
    transfer_client::TransferClient, PullRequest, RegistryOptions,
};
use stevedore_api::services::version::version_client::VersionClient;
use stevedore_content::digest_of;
use stevedore_e2e::{busybox_image, require_tool, Daemon};
use stevedore_remote::testutil::TestRegistry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

const CLIENTS: usize = 64;
/// Clients that pull (each into its own namespace) and that run containers.
const PULLERS: usize = 4;
const RUNNERS: usize = 2;
/// Allowed growth of the daemon's open fds after the run settles.
const FD_SLACK: usize = 8;
/// Allowed growth of the daemon's RSS after the run settles (allocator
/// arenas and caches stay; a leak per operation would exceed it).
const RSS_SLACK_KIB: u64 = 96 * 1024;

fn req<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        stevedore_api::NAMESPACE_HEADER,
        MetadataValue::try_from(ns).unwrap(),
    );
    r
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// What the clients did: operation counts, errors by operation and code,
/// and latencies of the calls whose percentiles are reported.
#[derive(Default)]
struct Tally {
    ops: BTreeMap<&'static str, u64>,
    errors: BTreeMap<String, (u64, String)>,
    version_us: Vec<u64>,
    list_us: Vec<u64>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        for (k, v) in o.ops {
            *self.ops.entry(k).or_default() += v;
        }
        for (k, (n, msg)) in o.errors {
            let e = self.errors.entry(k).or_insert((0, msg));
            e.0 += n;
        }
        self.version_us.extend(o.version_us);
        self.list_us.extend(o.list_us);
    }

    fn record<T>(&mut self, op: &'static str, r: Result<T, String>) -> Option<T> {
        *self.ops.entry(op).or_default() += 1;
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let kind = format!("{op}: {}", e.split(':').next().unwrap_or(""));
                self.errors.entry(kind).or_insert((0, e)).0 += 1;
                None
            }
        }
    }
}

fn status(s: tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn percentile(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

/// Write `data` through a fresh ingest and commit it with its digest.
async fn ingest(ch: &Channel, ns: &str, reference: String, data: Vec<u8>) -> Result<(), String> {
    let expected = digest_of(&data).to_string();
    let total = data.len() as i64;
    let (tx, rx) = mpsc::channel(4);
    let msgs = [
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference,
            total,
            offset: 0,
            data: data.into(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            total,
            offset: total,
            expected: expected.clone(),
            ..Default::default()
        },
    ];
    for m in msgs {
        tx.send(m).await.unwrap();
    }
    drop(tx);
    let mut s = ContentClient::new(ch.clone())
        .write(req(ns, ReceiverStream::new(rx)))
        .await
        .map_err(status)?
        .into_inner();
    let mut digest = String::new();
    while let Some(m) = s.message().await.map_err(status)? {
        digest = m.digest;
    }
    if digest != expected {
        return Err(format!("Commit: digest {digest:?}, expected {expected}"));
    }
    Ok(())
}

async fn pull(ch: &Channel, ns: &str, reference: &str) -> Result<(), String> {
    let mut s = TransferClient::new(ch.clone())
        .pull(req(
            ns,
            PullRequest {
                reference: reference.into(),
                unpack: true,
                registry: Some(RegistryOptions {
                    plain_http: true,
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .map_err(status)?
        .into_inner();
    let mut done = false;
    while let Some(m) = s.message().await.map_err(status)? {
        done |= m.done;
    }
    if !done {
        return Err("Pull: stream ended without done".into());
    }
    // delete with sync so the next pull downloads and unpacks again
    ImagesClient::new(ch.clone())
        .delete(req(
            ns,
            DeleteImageRequest {
                name: reference.into(),
                sync: true,
                target: None,
            },
        ))
        .await
        .map_err(status)?;
    Ok(())
}

/// One gRPC client: its own connection, a fixed rotation of operations.
async fn grpc_client(
    d_socket: std::path::PathBuf,
    c: usize,
    deadline: Instant,
    known_digest: String,
    remote: String,
) -> Tally {
    let ch = stevedore_api::client::connect(&d_socket).await.unwrap();
    let mut t = Tally::default();
    let ns = "load";
    let pull_ns = format!("load-pull-{c}");
    let mut i = 0u64;
    while Instant::now() < deadline {
        i += 1;
        match i % 8 {
            0 => {
                let s = Instant::now();
                let r = VersionClient::new(ch.clone()).version(()).await;
                t.version_us.push(s.elapsed().as_micros() as u64);
                t.record("version", r.map_err(status));
            }
            1 => {
                let s = Instant::now();
                let r = ImagesClient::new(ch.clone())
                    .list(req(ns, ListImagesRequest::default()))
                    .await;
                t.list_us.push(s.elapsed().as_micros() as u64);
                t.record("images.list", r.map_err(status));
            }
            2 => {
                let r = async {
                    let mut s = ContentClient::new(ch.clone())
                        .list(req(ns, ListContentRequest::default()))
                        .await?
                        .into_inner();
                    while s.message().await?.is_some() {}
                    Ok::<_, tonic::Status>(())
                }
                .await;
                t.record("content.list", r.map_err(status));
            }
            3 => {
                let r = ContentClient::new(ch.clone())
                    .info(req(
                        ns,
                        InfoRequest {
                            digest: known_digest.clone(),
                        },
                    ))
                    .await;
                t.record("content.info", r.map_err(status));
            }
            4 => {
                let s = Instant::now();
                let r = NamespacesClient::new(ch.clone())
                    .list(Request::new(ListNamespacesRequest::default()))
                    .await;
                t.list_us.push(s.elapsed().as_micros() as u64);
                t.record("namespaces.list", r.map_err(status));
            }
            5 => {
                let data = format!("load client {c} op {i} {}", "x".repeat(512)).into_bytes();
                let r = ingest(&ch, ns, format!("load-{c}-{i}"), data).await;
                t.record("content.ingest", r);
            }
            6 => {
                let key = format!("load-{c}-{i}");
                let mut sc = SnapshotsClient::new(ch.clone());
                let r = async {
                    sc.prepare(req(
                        ns,
                        PrepareSnapshotRequest {
                            snapshotter: "overlayfs".into(),
                            key: key.clone(),
                            // a GC root: the collector must not race the remove
                            labels: [("containerd.io/gc.root".to_string(), "load".to_string())]
                                .into(),
                            ..Default::default()
                        },
                    ))
                    .await?;
                    sc.remove(req(
                        ns,
                        RemoveSnapshotRequest {
                            snapshotter: "overlayfs".into(),
                            key,
                        },
                    ))
                    .await?;
                    Ok::<_, tonic::Status>(())
                }
                .await;
                t.record("snapshots.prepare+remove", r.map_err(status));
            }
            _ => {
                if c < PULLERS && i % 64 == 7 {
                    let r = pull(&ch, &pull_ns, &remote).await;
                    t.record("transfer.pull+delete", r);
                } else {
                    let s = Instant::now();
                    let r = VersionClient::new(ch.clone()).version(()).await;
                    t.version_us.push(s.elapsed().as_micros() as u64);
                    t.record("version", r.map_err(status));
                }
            }
        }
    }
    t
}

/// A client running containers with the real `ctr` until the deadline.
fn ctr_runner(d: &Daemon, c: usize, deadline: Instant, image: &str) -> Tally {
    let mut t = Tally::default();
    let mut i = 0;
    while Instant::now() < deadline {
        i += 1;
        let id = format!("load-run-{}-{c}-{i}", d.pid());
        let o = d.ctr(&["-n", "load", "run", "--rm", image, &id, "echo", "ok"]);
        let r = if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "ok" {
            Ok(())
        } else {
            Err(format!(
                "ctr run: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ))
        };
        t.record("ctr.run", r);
    }
    t
}

/// Run the whole mix for `secs`; returns the merged tally.
async fn run_mix(
    d: &Arc<Daemon>,
    secs: f64,
    known_digest: &str,
    remote: &str,
    image: &str,
) -> Tally {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut handles = Vec::new();
    for c in 0..CLIENTS - RUNNERS {
        handles.push(tokio::spawn(grpc_client(
            d.socket.clone(),
            c,
            deadline,
            known_digest.to_string(),
            remote.to_string(),
        )));
    }
    let mut runners = Vec::new();
    for c in 0..RUNNERS {
        let (d, image) = (d.clone(), image.to_string());
        runners.push(tokio::task::spawn_blocking(move || {
            ctr_runner(&d, c, deadline, &image)
        }));
    }
    let mut total = Tally::default();
    for h in handles.into_iter().chain(runners) {
        total.merge(h.await.unwrap());
    }
    total
}

/// The daemon's fd count once the finished clients' connections and streams
/// are torn down (asynchronously): back to `baseline`, or whatever it is
/// after 10 s.
async fn settled_fds(pid: u32, baseline: usize) -> usize {
    let until = Instant::now() + Duration::from_secs(10);
    let mut n = fds(pid);
    while n > baseline && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        n = fds(pid);
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_clients_hold_a_mixed_load_without_errors_or_leaks() {
    require_tool("skopeo", "skopeo");
    let secs: f64 = std::env::var("STEVEDORE_LOAD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15.0);
    let reg = TestRegistry::start();
    let dir = tempfile::tempdir().unwrap();
    let img = busybox_image(dir.path());
    let remote = format!("{}/load/busybox:latest", reg.host());
    let o = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false", "--insecure-policy"])
        .arg(format!("oci:{}", img.oci_dir.display()))
        .arg(format!("docker://{remote}"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "skopeo: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let d = Arc::new(Daemon::start());
    d.ctr_ok(&[
        "-n",
        "load",
        "images",
        "import",
        img.oci_tar.to_str().unwrap(),
    ]);
    let known = d.ctr_ok(&["-n", "load", "content", "ls", "-q"]);
    let known = known.lines().next().expect("imported content").to_string();
    let pid = d.pid();

    // warmup: every kind of operation once or more, then let it settle
    let warm = run_mix(&d, 2.0_f64.min(secs), &known, &remote, &img.name).await;
    assert!(
        warm.errors.is_empty(),
        "errors during warmup: {:#?}",
        warm.errors
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fds_before = fds(pid);
    let rss_before = rss_kib(pid);

    let started = Instant::now();
    let mut t = run_mix(&d, secs, &known, &remote, &img.name).await;
    let elapsed = started.elapsed().as_secs_f64();

    let fds_after = settled_fds(pid, fds_before).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(pid);
    let total: u64 = t.ops.values().sum();
    let (v50, v99) = (
        percentile(&mut t.version_us, 0.5),
        percentile(&mut t.version_us, 0.99),
    );
    let (l50, l99) = (
        percentile(&mut t.list_us, 0.5),
        percentile(&mut t.list_us, 0.99),
    );
    let errors: u64 = t.errors.values().map(|e| e.0).sum();
    println!(
        "load: clients={CLIENTS} secs={elapsed:.1} ops={total} ({:.0}/s) {} errors={errors} \
         version_p50={v50}us version_p99={v99}us list_p50={l50}us list_p99={l99}us \
         fds_before={fds_before} fds_after={fds_after} rss_before={rss_before}KiB rss_after={rss_after}KiB",
        total as f64 / elapsed,
        t.ops
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    );
    assert!(t.errors.is_empty(), "errors under load: {:#?}", t.errors);
    for op in [
        "version",
        "images.list",
        "content.ingest",
        "snapshots.prepare+remove",
        "transfer.pull+delete",
        "ctr.run",
    ] {
        assert!(t.ops.get(op).copied().unwrap_or(0) > 0, "no {op} ran");
    }
    assert!(
        fds_after <= fds_before + FD_SLACK,
        "daemon fds grew from {fds_before} to {fds_after}"
    );
    assert!(
        rss_after <= rss_before + RSS_SLACK_KIB,
        "daemon RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}
