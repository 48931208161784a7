//! Container and pod statistics from the shims' cgroup metrics (v1 or v2),
//! the writable layer's usage from the snapshotter, and pod network use
//! from the pod's network namespace.

use crate::client::context;
use crate::core::Cri;
use crate::store::{Container, Sandbox, SandboxState};
use prost::Message;
use stevedore_api::cri;
use stevedore_api::io::containerd::cgroups::{v1, v2};
use stevedore_api::services::snapshots::UsageRequest;
use stevedore_api::services::tasks::MetricsRequest;
use tonic::Status;

/// What the CRI reads from a cgroup.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    pub timestamp: i64,
    pub cpu_ns: u64,
    pub memory_usage: u64,
    pub working_set: u64,
    pub rss: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    pub available: Option<u64>,
}

fn decode(data: &prost_types::Any) -> Option<Usage> {
    if data.type_url.ends_with("io.containerd.cgroups.v1.Metrics") {
        let m = v1::Metrics::decode(data.value.as_slice()).ok()?;
        let mem = m.memory.unwrap_or_default();
        let usage = mem.usage.unwrap_or_default();
        let limit = usage.limit;
        Some(Usage {
            cpu_ns: m.cpu.and_then(|c| c.usage).map(|u| u.total).unwrap_or(0),
            memory_usage: usage.usage,
            working_set: usage.usage.saturating_sub(mem.total_inactive_file),
            rss: mem.total_rss,
            page_faults: mem.total_pg_fault,
            major_page_faults: mem.total_pg_maj_fault,
            available: (limit > 0 && limit < (1 << 62))
                .then(|| limit.saturating_sub(usage.usage.saturating_sub(mem.total_inactive_file))),
            ..Default::default()
        })
    } else if data.type_url.ends_with("io.containerd.cgroups.v2.Metrics") {
        let m = v2::Metrics::decode(data.value.as_slice()).ok()?;
        let mem = m.memory.unwrap_or_default();
        Some(Usage {
            cpu_ns: m.cpu.map(|c| c.usage_usec * 1000).unwrap_or(0),
            memory_usage: mem.usage,
            working_set: mem.usage.saturating_sub(mem.inactive_file),
            rss: mem.anon,
            page_faults: mem.pgfault,
            major_page_faults: mem.pgmajfault,
            available: (mem.usage_limit > 0 && mem.usage_limit < (1 << 62)).then(|| {
                mem.usage_limit
                    .saturating_sub(mem.usage.saturating_sub(mem.inactive_file))
            }),
            ..Default::default()
        })
    } else {
        None
    }
}

impl Cri {
    /// The cgroup usage of task `id` (None if it has no running task).
    pub async fn task_usage(&self, id: &str) -> Result<Option<Usage>, Status> {
        let r = self
            .ctrd
            .tasks()
            .metrics(MetricsRequest {
                filters: vec![format!("id=={id}")],
            })
            .await
            .map_err(|s| context(s, &format!("failed to fetch metrics of {id:?}")))?
            .into_inner();
        let Some(m) = r.metrics.into_iter().find(|m| m.id == id) else {
            return Ok(None);
        };
        let ts = crate::store::nanos_or_now(m.timestamp);
        Ok(m.data.as_ref().and_then(decode).map(|mut u| {
            u.timestamp = ts;
            u
        }))
    }

    async fn writable_layer(&self, c: &Container) -> Option<cri::FilesystemUsage> {
        let u = self
            .ctrd
            .snapshots()
            .usage(UsageRequest {
                snapshotter: c.meta.snapshotter.clone(),
                key: c.meta.id.clone(),
            })
            .await
            .ok()?
            .into_inner();
        Some(cri::FilesystemUsage {
            timestamp: crate::store::now_nanos(),
            fs_id: Some(cri::FilesystemIdentifier {
                mountpoint: self
                    .root
                    .parent()
                    .map(|p| {
                        p.join(format!(
                            "io.containerd.snapshotter.v1.{}",
                            c.meta.snapshotter
                        ))
                        .display()
                        .to_string()
                    })
                    .unwrap_or_default(),
            }),
            used_bytes: Some(cri::UInt64Value {
                value: u.size.max(0) as u64,
            }),
            inodes_used: Some(cri::UInt64Value {
                value: u.inodes.max(0) as u64,
            }),
        })
    }

    pub async fn stats_of(&self, c: &Container) -> Result<cri::ContainerStats, Status> {
        let config = c.meta.config.clone().unwrap_or_default();
        let usage = if c.status().state() == cri::ContainerState::ContainerRunning {
            self.task_usage(&c.meta.id).await.ok().flatten()
        } else {
            None
        };
        let u = usage.unwrap_or_default();
        let ts = if u.timestamp == 0 {
            crate::store::now_nanos()
        } else {
            u.timestamp
        };
        Ok(cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: c.meta.id.clone(),
                metadata: config.metadata.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
            }),
            cpu: usage.map(|u| cri::CpuUsage {
                timestamp: ts,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: u.cpu_ns }),
                usage_nano_cores: None,
            }),
            memory: usage.map(|u| cri::MemoryUsage {
                timestamp: ts,
                working_set_bytes: Some(cri::UInt64Value {
                    value: u.working_set,
                }),
                available_bytes: u.available.map(|value| cri::UInt64Value { value }),
                usage_bytes: Some(cri::UInt64Value {
                    value: u.memory_usage,
                }),
                rss_bytes: Some(cri::UInt64Value { value: u.rss }),
                page_faults: Some(cri::UInt64Value {
                    value: u.page_faults,
                }),
                major_page_faults: Some(cri::UInt64Value {
                    value: u.major_page_faults,
                }),
            }),
            writable_layer: self.writable_layer(c).await,
            swap: None,
        })
    }

    pub async fn container_stats(
        &self,
        req: cri::ContainerStatsRequest,
    ) -> Result<cri::ContainerStatsResponse, Status> {
        let c = self.store.container(&req.container_id)?;
        Ok(cri::ContainerStatsResponse {
            stats: Some(self.stats_of(&c).await?),
        })
    }

    pub async fn list_container_stats(
        &self,
        req: cri::ListContainerStatsRequest,
    ) -> Result<cri::ListContainerStatsResponse, Status> {
        let f = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for c in self.store.containers() {
            if c.matches(&f.id, &f.pod_sandbox_id, &f.label_selector) {
                stats.push(self.stats_of(&c).await?);
            }
        }
        Ok(cri::ListContainerStatsResponse { stats })
    }

    pub async fn pod_stats_of(&self, sb: &Sandbox) -> Result<cri::PodSandboxStats, Status> {
        let meta = sb.meta();
        let config = meta.config.clone().unwrap_or_default();
        let ready = sb.state() == SandboxState::Ready;
        let mut containers = Vec::new();
        let mut total = Usage::default();
        let mut any = false;
        for c in self.store.containers_of(&meta.id) {
            let s = self.stats_of(&c).await?;
            if let Some(cpu) = &s.cpu {
                total.cpu_ns += cpu
                    .usage_core_nano_seconds
                    .as_ref()
                    .map(|v| v.value)
                    .unwrap_or(0);
                any = true;
            }
            if let Some(m) = &s.memory {
                total.working_set += m.working_set_bytes.as_ref().map(|v| v.value).unwrap_or(0);
                total.memory_usage += m.usage_bytes.as_ref().map(|v| v.value).unwrap_or(0);
                total.rss += m.rss_bytes.as_ref().map(|v| v.value).unwrap_or(0);
            }
            containers.push(s);
        }
        if ready {
            if let Ok(Some(u)) = self.task_usage(&meta.id).await {
                total.cpu_ns += u.cpu_ns;
                total.working_set += u.working_set;
                total.memory_usage += u.memory_usage;
                total.rss += u.rss;
                any = true;
            }
        }
        let ts = crate::store::now_nanos();
        let network = if ready && !meta.netns_path.is_empty() {
            net_dev(sb.pid()).map(|ifaces| {
                let default = ifaces.iter().find(|i| i.name == "eth0").cloned();
                cri::NetworkUsage {
                    timestamp: ts,
                    default_interface: default,
                    interfaces: ifaces.into_iter().filter(|i| i.name != "eth0").collect(),
                }
            })
        } else {
            None
        };
        Ok(cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes {
                id: meta.id.clone(),
                metadata: config.metadata.clone(),
                labels: config.labels.clone(),
                annotations: config.annotations.clone(),
            }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: any.then_some(cri::CpuUsage {
                    timestamp: ts,
                    usage_core_nano_seconds: Some(cri::UInt64Value {
                        value: total.cpu_ns,
                    }),
                    usage_nano_cores: None,
                }),
                memory: any.then(|| cri::MemoryUsage {
                    timestamp: ts,
                    working_set_bytes: Some(cri::UInt64Value {
                        value: total.working_set,
                    }),
                    usage_bytes: Some(cri::UInt64Value {
                        value: total.memory_usage,
                    }),
                    rss_bytes: Some(cri::UInt64Value { value: total.rss }),
                    ..Default::default()
                }),
                network,
                process: ready.then(|| cri::ProcessUsage {
                    timestamp: ts,
                    process_count: Some(cri::UInt64Value {
                        value: process_count(sb.pid()),
                    }),
                }),
                containers,
            }),
            windows: None,
        })
    }

    pub async fn pod_sandbox_stats(
        &self,
        req: cri::PodSandboxStatsRequest,
    ) -> Result<cri::PodSandboxStatsResponse, Status> {
        let sb = self.store.sandbox(&req.pod_sandbox_id)?;
        Ok(cri::PodSandboxStatsResponse {
            stats: Some(self.pod_stats_of(&sb).await?),
        })
    }

    pub async fn list_pod_sandbox_stats(
        &self,
        req: cri::ListPodSandboxStatsRequest,
    ) -> Result<cri::ListPodSandboxStatsResponse, Status> {
        let f = req.filter.unwrap_or_default();
        let mut stats = Vec::new();
        for sb in self.store.sandboxes() {
            if sb.matches(&f.id, &f.label_selector) {
                stats.push(self.pod_stats_of(&sb).await?);
            }
        }
        Ok(cri::ListPodSandboxStatsResponse { stats })
    }
}

/// Interface counters of the network namespace `pid` is in.
fn net_dev(pid: u32) -> Option<Vec<cri::NetworkInterfaceUsage>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/dev")).ok()?;
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() < 16 {
            continue;
        }
        out.push(cri::NetworkInterfaceUsage {
            name: name.to_string(),
            rx_bytes: Some(cri::UInt64Value { value: f[0] }),
            rx_errors: Some(cri::UInt64Value { value: f[2] }),
            tx_bytes: Some(cri::UInt64Value { value: f[8] }),
            tx_errors: Some(cri::UInt64Value { value: f[10] }),
        });
    }
    Some(out)
}

/// Processes in the pid namespace of `pid` (the pod's, when shared); 1 if
/// it cannot be read.
fn process_count(pid: u32) -> u64 {
    let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/pid")) else {
        return 1;
    };
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return 1;
    };
    rd.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| std::fs::read_link(e.path().join("ns/pid")).ok().as_ref() == Some(&ns))
        .count() as u64
}
