//! Task cgroup metrics at scrape time, with the names containerd's cgroups
//! collector gives them (`metrics/cgroups/v1` and `v2`: namespace
//! `container`, labels `container_id` and `namespace`). containerd reads the
//! cgroup itself; here each task's shim answers `Stats` (the same
//! `io.containerd.cgroups.v1/v2.Metrics` that `ctr tasks metrics` shows),
//! so the daemon needs no cgroup code of its own. A task whose stats cannot
//! be read is left out (never reported as 0), and counted in
//! `stevedore_task_metrics_errors`.

use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use stevedore_api::io::containerd::cgroups::{v1, v2};
use stevedore_metrics::Text;
use stevedore_runtime::manager::TaskManager;

/// containerd's `io.containerd.timeout.metrics.shimstats`.
const STATS_TIMEOUT: Duration = Duration::from_secs(2);

/// One sample: metric name, labels, value.
type Row = (&'static str, [String; 2], f64);

/// (name, help) of every metric, in output order.
const METRICS: &[(&str, &str)] = &[
    ("container_cpu_total_nanoseconds", "The total cpu time"),
    (
        "container_cpu_kernel_nanoseconds",
        "The total kernel cpu time",
    ),
    ("container_cpu_user_nanoseconds", "The total user cpu time"),
    (
        "container_cpu_throttle_periods_total",
        "The total cpu throttle periods",
    ),
    (
        "container_cpu_throttled_periods_total",
        "The total cpu throttled periods",
    ),
    (
        "container_cpu_throttled_time_nanoseconds",
        "The total cpu throttled time",
    ),
    ("container_memory_cache_bytes", "The cache amount used"),
    ("container_memory_rss_bytes", "The rss amount used"),
    ("container_memory_usage_usage_bytes", "The memory usage"),
    ("container_memory_usage_limit_bytes", "The memory limit"),
    (
        "container_memory_usage_max_bytes",
        "The memory maximum usage",
    ),
    ("container_memory_usage_failcnt_total", "The usage failcnt"),
    (
        "container_cpu_usage_usec_microseconds",
        "Total cpu usage (cgroup v2)",
    ),
    (
        "container_cpu_user_usec_microseconds",
        "Current cpu usage in user space (cgroup v2)",
    ),
    (
        "container_cpu_system_usec_microseconds",
        "Current cpu usage in kernel space (cgroup v2)",
    ),
    (
        "container_cpu_nr_periods_total",
        "Current cpu number of periods (only if controller is enabled)",
    ),
    (
        "container_cpu_nr_throttled_total",
        "Total number of times tasks have been throttled (only if controller is enabled)",
    ),
    (
        "container_cpu_throttled_usec_microseconds",
        "Total time duration for which tasks have been throttled. (only if controller is enabled)",
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage (cgroup v2)",
    ),
    (
        "container_memory_swap_usage_bytes",
        "Current swap usage (cgroup v2)",
    ),
    (
        "container_memory_swap_limit_bytes",
        "Current swap usage limit (cgroup v2)",
    ),
    ("container_pids_current", "The current number of pids"),
    (
        "container_pids_limit",
        "The limit to the number of pids allowed",
    ),
];

/// Append the running shims' count and every task's cgroup metrics.
pub async fn render(tasks: &Arc<TaskManager>, out: &mut Text) {
    let shims = tasks.all();
    out.single(
        "stevedore_shims",
        "Tasks with a running shim.",
        "gauge",
        shims.len() as f64,
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut errors = 0u64;
    for shim in shims {
        let labels = [shim.id().to_string(), shim.namespace().to_string()];
        match tokio::time::timeout(STATS_TIMEOUT, shim.stats()).await {
            Ok(Ok(Some(any))) => {
                if !decode(&any.type_url, &any.value, &labels, &mut rows) {
                    errors += 1;
                }
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(id = %labels[0], error = %e, "metrics: no stats for task");
                errors += 1;
            }
            Err(_) => {
                tracing::debug!(id = %labels[0], "metrics: task stats timed out");
                errors += 1;
            }
        }
    }
    for (name, help) in METRICS {
        let mut first = true;
        for (_, labels, v) in rows.iter().filter(|r| r.0 == *name) {
            if first {
                out.header(name, help, "gauge");
                first = false;
            }
            out.sample(
                name,
                &[("container_id", &labels[0]), ("namespace", &labels[1])],
                *v,
            );
        }
    }
    out.single(
        "stevedore_task_metrics_errors",
        "Tasks whose stats could not be read in this scrape.",
        "gauge",
        errors as f64,
    );
}

/// Decode a shim's stats; false when the payload is not cgroup metrics.
fn decode(type_url: &str, value: &[u8], labels: &[String; 2], rows: &mut Vec<Row>) -> bool {
    let mut push = |name: &'static str, v: u64| rows.push((name, labels.clone(), v as f64));
    match type_url.trim_start_matches('/') {
        "io.containerd.cgroups.v1.Metrics" => {
            let Ok(m) = v1::Metrics::decode(value) else {
                return false;
            };
            if let Some(cpu) = &m.cpu {
                if let Some(u) = &cpu.usage {
                    push("container_cpu_total_nanoseconds", u.total);
                    push("container_cpu_kernel_nanoseconds", u.kernel);
                    push("container_cpu_user_nanoseconds", u.user);
                }
                if let Some(t) = &cpu.throttling {
                    push("container_cpu_throttle_periods_total", t.periods);
                    push("container_cpu_throttled_periods_total", t.throttled_periods);
                    push("container_cpu_throttled_time_nanoseconds", t.throttled_time);
                }
            }
            if let Some(mem) = &m.memory {
                push("container_memory_cache_bytes", mem.cache);
                push("container_memory_rss_bytes", mem.rss);
                if let Some(u) = &mem.usage {
                    push("container_memory_usage_usage_bytes", u.usage);
                    push("container_memory_usage_limit_bytes", u.limit);
                    push("container_memory_usage_max_bytes", u.max);
                    push("container_memory_usage_failcnt_total", u.failcnt);
                }
            }
            if let Some(p) = &m.pids {
                push("container_pids_current", p.current);
                push("container_pids_limit", p.limit);
            }
            true
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let Ok(m) = v2::Metrics::decode(value) else {
                return false;
            };
            if let Some(c) = &m.cpu {
                push("container_cpu_usage_usec_microseconds", c.usage_usec);
                push("container_cpu_user_usec_microseconds", c.user_usec);
                push("container_cpu_system_usec_microseconds", c.system_usec);
                push("container_cpu_nr_periods_total", c.nr_periods);
                push("container_cpu_nr_throttled_total", c.nr_throttled);
                push(
                    "container_cpu_throttled_usec_microseconds",
                    c.throttled_usec,
                );
            }
            if let Some(mem) = &m.memory {
                push("container_memory_usage_bytes", mem.usage);
                push("container_memory_usage_limit_bytes", mem.usage_limit);
                push("container_memory_swap_usage_bytes", mem.swap_usage);
                push("container_memory_swap_limit_bytes", mem.swap_limit);
            }
            if let Some(p) = &m.pids {
                push("container_pids_current", p.current);
                push("container_pids_limit", p.limit);
            }
            true
        }
        _ => false,
    }
}
