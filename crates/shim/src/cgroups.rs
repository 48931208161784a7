//! The task's cgroup: metrics (containerd's `io.containerd.cgroups.v1.Metrics`
//! on a v1 or hybrid host, `io.containerd.cgroups.v2.Metrics` on a unified
//! one, read as github.com/containerd/cgroups reads them), the OOM watch, and
//! joining the runc options' `ShimCgroup`.
//!
//! Missing data is never a silent 0: a controller whose directory does not
//! exist leaves its field absent (containerd's `IgnoreNotExist`); a file that
//! exists but cannot be read or parsed is an error naming the file.

use crate::error::{Error, Result};
use containerd_shim_protos::cgroups::metrics as v1;
use containerd_shim_protos::cgroups_v2::metrics as v2;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the cgroup data comes from (fake trees in tests).
#[derive(Debug, Clone)]
pub struct Sources {
    /// `/sys/fs/cgroup`.
    pub root: PathBuf,
    /// `/proc/partitions` (block device names for blkio).
    pub partitions: PathBuf,
    /// `/sys/kernel/mm/hugepages` (huge page sizes).
    pub hugepages: PathBuf,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            root: "/sys/fs/cgroup".into(),
            partitions: "/proc/partitions".into(),
            hugepages: "/sys/kernel/mm/hugepages".into(),
        }
    }
}

impl Sources {
    /// Whether the host runs the unified hierarchy only (cgroup v2).
    pub fn unified(&self) -> bool {
        self.root.join("cgroup.controllers").exists()
    }
}

/// The bundle's `linux.cgroupsPath`, if any.
pub fn cgroups_path(bundle: &Path) -> Option<String> {
    let b = std::fs::read(bundle.join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).ok()?;
    v["linux"]["cgroupsPath"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn rel(cg: &str) -> &str {
    cg.trim_start_matches('/')
}

/// Read a file; Ok(None) when it does not exist.
fn read_opt(p: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(p) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
    }
}

fn read(p: &Path) -> Result<String> {
    std::fs::read_to_string(p).map_err(|e| Error::io(format!("read {}", p.display()), e))
}

/// containerd's `parseUint`: negative values (e.g. `-1`) read as 0.
fn parse_u64(s: &str, p: &Path) -> Result<u64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v);
    }
    if s.starts_with('-') && s[1..].bytes().all(|b| b.is_ascii_digit()) && s.len() > 1 {
        return Ok(0);
    }
    Err(Error::Internal(format!(
        "{}: {s:?} is not a number",
        p.display()
    )))
}

fn read_u64(p: &Path) -> Result<u64> {
    parse_u64(&read(p)?, p)
}

/// `max` reads as 0 (no limit), like containerd's pids and v2 readers.
fn read_limit(p: &Path) -> Result<u64> {
    let s = read(p)?;
    if s.trim() == "max" {
        Ok(0)
    } else {
        parse_u64(&s, p)
    }
}

/// `key value` lines.
fn read_kv(p: &Path) -> Result<HashMap<String, u64>> {
    let mut m = HashMap::new();
    for line in read(p)?.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        match (it.next(), it.next(), it.next()) {
            (Some(k), Some(v), None) => {
                m.insert(k.to_string(), parse_u64(v, p)?);
            }
            _ => {
                return Err(Error::Internal(format!(
                    "{}: bad line {line:?}",
                    p.display()
                )))
            }
        }
    }
    Ok(m)
}

/// The task's metrics as containerd's shim packs them: (type URL, bytes).
pub fn metrics(src: &Sources, cg: &str) -> Result<(&'static str, Vec<u8>)> {
    use containerd_shim_protos::protobuf::Message;
    let encode = |r: containerd_shim_protos::protobuf::Result<Vec<u8>>| {
        r.map_err(|e| Error::Internal(format!("encode metrics: {e}")))
    };
    if src.unified() {
        let m = stats_v2(src, cg)?;
        Ok((
            "io.containerd.cgroups.v2.Metrics",
            encode(m.write_to_bytes())?,
        ))
    } else {
        let m = stats_v1(src, cg)?;
        Ok((
            "io.containerd.cgroups.v1.Metrics",
            encode(m.write_to_bytes())?,
        ))
    }
}

/// cgroup v1 metrics of `cg` (every mounted controller that has it).
pub fn stats_v1(src: &Sources, cg: &str) -> Result<v1::Metrics> {
    let dir = |ctl: &str| src.root.join(ctl).join(rel(cg));
    let mut m = v1::Metrics::new();
    if !dir("memory").is_dir() && !dir("pids").is_dir() && !dir("cpuacct").is_dir() {
        return Err(Error::NotFound(format!(
            "cgroup {cg} does not exist: not found"
        )));
    }
    // containerd always sends cpu with usage and throttling
    let mut cpu = v1::CPUStat::new();
    let mut usage = v1::CPUUsage::new();
    let mut throttle = v1::Throttle::new();
    let acct = dir("cpuacct");
    if acct.is_dir() {
        usage.total = read_u64(&acct.join("cpuacct.usage"))?;
        let p = acct.join("cpuacct.usage_percpu");
        usage.per_cpu = read(&p)?
            .split_whitespace()
            .map(|v| parse_u64(v, &p))
            .collect::<Result<_>>()?;
        let p = acct.join("cpuacct.stat");
        let kv = read_kv(&p)?;
        let ticks = |k: &str| {
            kv.get(k)
                .map(|t| t * 1_000_000_000 / 100) // USER_HZ is 100 on Linux
                .ok_or_else(|| Error::Internal(format!("{}: no {k}", p.display())))
        };
        usage.user = ticks("user")?;
        usage.kernel = ticks("system")?;
    }
    let cpu_dir = dir("cpu");
    if cpu_dir.is_dir() {
        let kv = read_kv(&cpu_dir.join("cpu.stat"))?;
        throttle.periods = kv.get("nr_periods").copied().unwrap_or_default();
        throttle.throttled_periods = kv.get("nr_throttled").copied().unwrap_or_default();
        throttle.throttled_time = kv.get("throttled_time").copied().unwrap_or_default();
    }
    cpu.usage = Some(usage).into();
    cpu.throttling = Some(throttle).into();
    m.cpu = Some(cpu).into();

    let pids = dir("pids");
    if pids.is_dir() {
        let mut p = v1::PidsStat::new();
        p.current = read_u64(&pids.join("pids.current"))?;
        p.limit = read_limit(&pids.join("pids.max"))?;
        m.pids = Some(p).into();
    }

    let mem = dir("memory");
    if mem.is_dir() {
        let (stat, oom) = memory_v1(&mem)?;
        m.memory = Some(stat).into();
        m.memory_oom_control = Some(oom).into();
    }

    let blkio = dir("blkio");
    if blkio.is_dir() {
        m.blkio = Some(blkio_v1(&blkio, &src.partitions)?).into();
    }

    let huge = dir("hugetlb");
    if huge.is_dir() {
        for size in huge_page_sizes(&src.hugepages)? {
            let f = |n: &str| read_u64(&huge.join(format!("hugetlb.{size}.{n}")));
            let mut h = v1::HugetlbStat::new();
            h.usage = f("usage_in_bytes")?;
            h.max = f("max_usage_in_bytes")?;
            h.failcnt = f("failcnt")?;
            h.pagesize = size;
            m.hugetlb.push(h);
        }
    }
    Ok(m)
}

fn memory_v1(dir: &Path) -> Result<(v1::MemoryStat, v1::MemoryOomControl)> {
    let raw = read_kv(&dir.join("memory.stat"))?;
    let g = |k: &str| raw.get(k).copied().unwrap_or_default();
    let mut s = v1::MemoryStat::new();
    s.cache = g("cache");
    s.rss = g("rss");
    s.rss_huge = g("rss_huge");
    s.mapped_file = g("mapped_file");
    s.dirty = g("dirty");
    s.writeback = g("writeback");
    s.pg_pg_in = g("pgpgin");
    s.pg_pg_out = g("pgpgout");
    s.pg_fault = g("pgfault");
    s.pg_maj_fault = g("pgmajfault");
    s.inactive_anon = g("inactive_anon");
    s.active_anon = g("active_anon");
    s.inactive_file = g("inactive_file");
    s.active_file = g("active_file");
    s.unevictable = g("unevictable");
    s.hierarchical_memory_limit = g("hierarchical_memory_limit");
    s.hierarchical_swap_limit = g("hierarchical_memsw_limit");
    s.total_cache = g("total_cache");
    s.total_rss = g("total_rss");
    s.total_rss_huge = g("total_rss_huge");
    s.total_mapped_file = g("total_mapped_file");
    s.total_dirty = g("total_dirty");
    s.total_writeback = g("total_writeback");
    s.total_pg_pg_in = g("total_pgpgin");
    s.total_pg_pg_out = g("total_pgpgout");
    s.total_pg_fault = g("total_pgfault");
    s.total_pg_maj_fault = g("total_pgmajfault");
    s.total_inactive_anon = g("total_inactive_anon");
    s.total_active_anon = g("total_active_anon");
    s.total_inactive_file = g("total_inactive_file");
    s.total_active_file = g("total_active_file");
    s.total_unevictable = g("total_unevictable");
    // usage is required; swap and kernel accounting may be compiled out
    // (absent files: absent entries)
    s.usage =
        Some(memory_entry(dir, "memory")?.ok_or_else(|| {
            Error::Internal(format!("{}: no memory.usage_in_bytes", dir.display()))
        })?)
        .into();
    s.swap = memory_entry(dir, "memory.memsw")?.into();
    s.kernel = memory_entry(dir, "memory.kmem")?.into();
    s.kernel_tcp = memory_entry(dir, "memory.kmem.tcp")?.into();
    let kv = read_kv(&dir.join("memory.oom_control"))?;
    let mut oom = v1::MemoryOomControl::new();
    oom.oom_kill_disable = kv.get("oom_kill_disable").copied().unwrap_or_default();
    oom.under_oom = kv.get("under_oom").copied().unwrap_or_default();
    oom.oom_kill = kv.get("oom_kill").copied().unwrap_or_default();
    Ok((s, oom))
}

fn memory_entry(dir: &Path, prefix: &str) -> Result<Option<v1::MemoryEntry>> {
    let f = |n: &str| dir.join(format!("{prefix}.{n}"));
    let Some(usage) = read_opt(&f("usage_in_bytes"))? else {
        return Ok(None);
    };
    let mut e = v1::MemoryEntry::new();
    e.usage = parse_u64(&usage, &f("usage_in_bytes"))?;
    e.max = read_u64(&f("max_usage_in_bytes"))?;
    e.failcnt = read_u64(&f("failcnt"))?;
    e.limit = read_u64(&f("limit_in_bytes"))?;
    Ok(Some(e))
}

fn blkio_v1(dir: &Path, partitions: &Path) -> Result<v1::BlkIOStat> {
    let mut devices = HashMap::new();
    for line in read(partitions)?.lines().skip(2) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [maj, min, _, name, ..] = f[..] {
            if let (Ok(a), Ok(b)) = (maj.parse::<u64>(), min.parse::<u64>()) {
                devices
                    .entry((a, b))
                    .or_insert_with(|| format!("/dev/{name}"));
            }
        }
    }
    let read_entries = |name: &str| -> Result<Vec<v1::BlkIOEntry>> {
        let p = dir.join(format!("blkio.{name}"));
        let mut out = Vec::new();
        for line in read(&p)?.lines() {
            let f: Vec<&str> = line.split([' ', ':']).filter(|s| !s.is_empty()).collect();
            if f.len() < 3 {
                if f.len() == 2 && f[0] == "Total" || f.is_empty() {
                    continue;
                }
                return Err(Error::Internal(format!(
                    "{}: bad line {line:?}",
                    p.display()
                )));
            }
            let mut e = v1::BlkIOEntry::new();
            e.major = parse_u64(f[0], &p)?;
            e.minor = parse_u64(f[1], &p)?;
            let value = if f.len() == 4 {
                e.op = f[2].to_string();
                f[3]
            } else {
                f[2]
            };
            e.value = parse_u64(value, &p)?;
            e.device = devices
                .get(&(e.major, e.minor))
                .cloned()
                .unwrap_or_default();
            out.push(e);
        }
        Ok(out)
    };
    let mut s = v1::BlkIOStat::new();
    if dir.join("blkio.io_serviced_recursive").exists() {
        s.sectors_recursive = read_entries("sectors_recursive")?;
        s.io_service_bytes_recursive = read_entries("io_service_bytes_recursive")?;
        s.io_serviced_recursive = read_entries("io_serviced_recursive")?;
        s.io_queued_recursive = read_entries("io_queued_recursive")?;
        s.io_service_time_recursive = read_entries("io_service_time_recursive")?;
        s.io_wait_time_recursive = read_entries("io_wait_time_recursive")?;
        s.io_merged_recursive = read_entries("io_merged_recursive")?;
        s.io_time_recursive = read_entries("time_recursive")?;
        let n = s.sectors_recursive.len()
            + s.io_service_bytes_recursive.len()
            + s.io_serviced_recursive.len()
            + s.io_queued_recursive.len()
            + s.io_service_time_recursive.len()
            + s.io_wait_time_recursive.len()
            + s.io_merged_recursive.len()
            + s.io_time_recursive.len();
        if n > 0 {
            return Ok(s);
        }
    }
    // no CFQ statistics: the throttle counters (containerd's fallback)
    s.io_serviced_recursive = read_entries("throttle.io_serviced")?;
    s.io_service_bytes_recursive = read_entries("throttle.io_service_bytes")?;
    Ok(s)
}

/// Huge page sizes as containerd names them (`2MB`, `1GB`).
fn huge_page_sizes(dir: &Path) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    let mut sizes = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(kb) = name
            .strip_prefix("hugepages-")
            .and_then(|s| s.strip_suffix("kB"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        sizes.push((kb, huge_page_name(kb * 1024)));
    }
    sizes.sort();
    Ok(sizes.into_iter().map(|(_, n)| n).collect())
}

fn huge_page_name(mut bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB"];
    let mut i = 0;
    while bytes >= 1024 && bytes & 1023 == 0 && i < units.len() - 1 {
        bytes /= 1024;
        i += 1;
    }
    format!("{bytes}{}", units[i])
}

/// cgroup v2 metrics of `cg`.
pub fn stats_v2(src: &Sources, cg: &str) -> Result<v2::Metrics> {
    let dir = src.root.join(rel(cg));
    if !dir.is_dir() {
        return Err(Error::NotFound(format!(
            "cgroup {cg} does not exist: not found"
        )));
    }
    let f = |n: &str| dir.join(n);
    let mut m = v2::Metrics::new();
    if f("pids.current").exists() {
        let mut p = v2::PidsStat::new();
        p.current = read_u64(&f("pids.current"))?;
        p.limit = read_limit(&f("pids.max"))?;
        m.pids = Some(p).into();
    }
    let kv = read_kv(&f("cpu.stat"))?;
    let g = |k: &str| kv.get(k).copied().unwrap_or_default();
    let mut cpu = v2::CPUStat::new();
    cpu.usage_usec = g("usage_usec");
    cpu.user_usec = g("user_usec");
    cpu.system_usec = g("system_usec");
    cpu.nr_periods = g("nr_periods");
    cpu.nr_throttled = g("nr_throttled");
    cpu.throttled_usec = g("throttled_usec");
    cpu.nr_bursts = g("nr_bursts");
    cpu.burst_usec = g("burst_usec");
    m.cpu = Some(cpu).into();
    if f("memory.stat").exists() {
        let kv = read_kv(&f("memory.stat"))?;
        let g = |k: &str| kv.get(k).copied().unwrap_or_default();
        let mut s = v2::MemoryStat::new();
        s.anon = g("anon");
        s.file = g("file");
        s.kernel_stack = g("kernel_stack");
        s.slab = g("slab");
        s.sock = g("sock");
        s.shmem = g("shmem");
        s.file_mapped = g("file_mapped");
        s.file_dirty = g("file_dirty");
        s.file_writeback = g("file_writeback");
        s.anon_thp = g("anon_thp");
        s.inactive_anon = g("inactive_anon");
        s.active_anon = g("active_anon");
        s.inactive_file = g("inactive_file");
        s.active_file = g("active_file");
        s.unevictable = g("unevictable");
        s.slab_reclaimable = g("slab_reclaimable");
        s.slab_unreclaimable = g("slab_unreclaimable");
        s.pgfault = g("pgfault");
        s.pgmajfault = g("pgmajfault");
        s.workingset_refault = g("workingset_refault");
        s.workingset_activate = g("workingset_activate");
        s.workingset_nodereclaim = g("workingset_nodereclaim");
        s.pgrefill = g("pgrefill");
        s.pgscan = g("pgscan");
        s.pgsteal = g("pgsteal");
        s.pgactivate = g("pgactivate");
        s.pgdeactivate = g("pgdeactivate");
        s.pglazyfree = g("pglazyfree");
        s.pglazyfreed = g("pglazyfreed");
        s.thp_fault_alloc = g("thp_fault_alloc");
        s.thp_collapse_alloc = g("thp_collapse_alloc");
        s.usage = read_u64(&f("memory.current"))?;
        s.usage_limit = read_limit(&f("memory.max"))?;
        if f("memory.swap.current").exists() {
            s.swap_usage = read_u64(&f("memory.swap.current"))?;
            s.swap_limit = read_limit(&f("memory.swap.max"))?;
        }
        if f("memory.peak").exists() {
            s.max_usage = read_u64(&f("memory.peak"))?;
        }
        if f("memory.swap.peak").exists() {
            s.swap_max_usage = read_u64(&f("memory.swap.peak"))?;
        }
        m.memory = Some(s).into();
        let kv = read_kv(&f("memory.events"))?;
        let g = |k: &str| kv.get(k).copied().unwrap_or_default();
        let mut ev = v2::MemoryEvents::new();
        ev.low = g("low");
        ev.high = g("high");
        ev.max = g("max");
        ev.oom = g("oom");
        ev.oom_kill = g("oom_kill");
        ev.oom_group_kill = g("oom_group_kill");
        m.memory_events = Some(ev).into();
    }
    if f("io.stat").exists() {
        let p = f("io.stat");
        let mut io = v2::IOStat::new();
        for line in read(&p)?.lines().filter(|l| !l.trim().is_empty()) {
            let mut parts = line.split_whitespace();
            let dev = parts.next().unwrap_or_default();
            let Some((maj, min)) = dev.split_once(':') else {
                return Err(Error::Internal(format!(
                    "{}: bad line {line:?}",
                    p.display()
                )));
            };
            let mut e = v2::IOEntry::new();
            e.major = parse_u64(maj, &p)?;
            e.minor = parse_u64(min, &p)?;
            for kv in parts {
                if let Some((k, v)) = kv.split_once('=') {
                    let v = parse_u64(v, &p)?;
                    match k {
                        "rbytes" => e.rbytes = v,
                        "wbytes" => e.wbytes = v,
                        "rios" => e.rios = v,
                        "wios" => e.wios = v,
                        _ => {}
                    }
                }
            }
            io.usage.push(e);
        }
        m.io = Some(io).into();
    }
    for size in huge_page_sizes(&src.hugepages)? {
        let cur = f(&format!("hugetlb.{size}.current"));
        if !cur.exists() {
            continue;
        }
        let mut h = v2::HugeTlbStat::new();
        h.current = read_u64(&cur)?;
        h.max = read_limit(&f(&format!("hugetlb.{size}.max")))?;
        h.pagesize = size;
        m.hugetlb.push(h);
    }
    Ok(m)
}

/// Move process `pid` into cgroup `path` (the runc options' `ShimCgroup`):
/// on v1, every hierarchy that has the cgroup (containerd's
/// `cgroups.Load(V1, StaticPath(path))` + `Add`), on v2 the one cgroup.
pub fn join(src: &Sources, path: &str, pid: u32) -> Result<()> {
    let write = |dir: &Path| {
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).map_err(|e| {
            Error::io(
                format!("failed to join cgroup {path}: write {}", dir.display()),
                e,
            )
        })
    };
    if src.unified() {
        let dir = src.root.join(rel(path));
        if !dir.is_dir() {
            return Err(Error::NotFound(format!(
                "failed to load cgroup {path}: cgroup deleted"
            )));
        }
        return write(&dir);
    }
    let mut joined = 0;
    let rd = std::fs::read_dir(&src.root)
        .map_err(|e| Error::io(format!("read {}", src.root.display()), e))?;
    for h in rd.flatten() {
        if h.file_name() == "unified" {
            continue;
        }
        let dir = h.path().join(rel(path));
        if dir.is_dir() {
            write(&dir)?;
            joined += 1;
        }
    }
    if joined == 0 {
        return Err(Error::NotFound(format!(
            "failed to load cgroup {path}: cgroup deleted"
        )));
    }
    Ok(())
}

/// Call `on_oom` whenever the v1 memory cgroup `cg` hits its limit: an
/// eventfd on `memory.oom_control`, read on a small thread. Removing the
/// cgroup at exit also wakes it; that is not an OOM and ends the watch.
pub fn watch_oom_v1(src: &Sources, cg: &str, on_oom: impl Fn() + Send + 'static) {
    let dir = src.root.join("memory").join(rel(cg));
    if !dir.join("memory.oom_control").exists() {
        return;
    }
    let _ = std::thread::Builder::new()
        .name("oom".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            use std::os::fd::AsRawFd;
            let Ok(ctl) = std::fs::File::open(dir.join("memory.oom_control")) else {
                return;
            };
            let Ok(efd) = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC) else {
                return;
            };
            let reg = format!("{} {}", efd.as_raw_fd(), ctl.as_raw_fd());
            if std::fs::write(dir.join("cgroup.event_control"), reg).is_err() {
                return;
            }
            let mut buf = [0u8; 8];
            while let Ok(8) = rustix::io::read(&efd, &mut buf) {
                if !dir.exists() {
                    return;
                }
                on_oom();
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, rel: &str, text: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn v1_tree() -> (tempfile::TempDir, Sources) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("cg");
        let cg = "ns/c1";
        put(&r, &format!("cpuacct/{cg}/cpuacct.usage"), "123456\n");
        put(
            &r,
            &format!("cpuacct/{cg}/cpuacct.usage_percpu"),
            "100 200 \n",
        );
        put(
            &r,
            &format!("cpuacct/{cg}/cpuacct.stat"),
            "user 5\nsystem 7\n",
        );
        put(
            &r,
            &format!("cpu/{cg}/cpu.stat"),
            "nr_periods 10\nnr_throttled 3\nthrottled_time 999\n",
        );
        put(&r, &format!("pids/{cg}/pids.current"), "4\n");
        put(&r, &format!("pids/{cg}/pids.max"), "max\n");
        let m = format!("memory/{cg}");
        put(
            &r,
            &format!("{m}/memory.stat"),
            "cache 11\nrss 22\nhierarchical_memsw_limit 33\ntotal_rss 44\ntotal_pgmajfault 55\n",
        );
        put(
            &r,
            &format!("{m}/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        for (prefix, base) in [
            ("memory", 1),
            ("memory.memsw", 2),
            ("memory.kmem", 3),
            ("memory.kmem.tcp", 4),
        ] {
            put(
                &r,
                &format!("{m}/{prefix}.usage_in_bytes"),
                &format!("{}\n", base * 100),
            );
            put(
                &r,
                &format!("{m}/{prefix}.max_usage_in_bytes"),
                &format!("{}\n", base * 100 + 1),
            );
            put(&r, &format!("{m}/{prefix}.failcnt"), &format!("{base}\n"));
            put(&r, &format!("{m}/{prefix}.limit_in_bytes"), "67108864\n");
        }
        put(
            &r,
            &format!("blkio/{cg}/blkio.throttle.io_serviced"),
            "254:0 Read 5\n254:0 Write 6\nTotal 11\n",
        );
        put(
            &r,
            &format!("blkio/{cg}/blkio.throttle.io_service_bytes"),
            "254:0 Read 4096\nTotal 4096\n",
        );
        put(
            &r,
            &format!("hugetlb/{cg}/hugetlb.2MB.usage_in_bytes"),
            "0\n",
        );
        put(
            &r,
            &format!("hugetlb/{cg}/hugetlb.2MB.max_usage_in_bytes"),
            "2097152\n",
        );
        put(&r, &format!("hugetlb/{cg}/hugetlb.2MB.failcnt"), "1\n");
        put(
            t.path(),
            "partitions",
            "major minor  #blocks  name\n\n 254        0  268435456 vda\n",
        );
        std::fs::create_dir_all(t.path().join("hugepages/hugepages-2048kB")).unwrap();
        let src = Sources {
            root: r,
            partitions: t.path().join("partitions"),
            hugepages: t.path().join("hugepages"),
        };
        (t, src)
    }

    #[test]
    fn v1_metrics_carry_every_controller_like_containerd() {
        let (_t, src) = v1_tree();
        let m = stats_v1(&src, "/ns/c1").unwrap();
        let cpu = m.cpu.as_ref().unwrap();
        let u = cpu.usage.as_ref().unwrap();
        assert_eq!((u.total, u.per_cpu.clone()), (123456, vec![100, 200]));
        assert_eq!((u.user, u.kernel), (50_000_000, 70_000_000));
        let t = cpu.throttling.as_ref().unwrap();
        assert_eq!(
            (t.periods, t.throttled_periods, t.throttled_time),
            (10, 3, 999)
        );
        let p = m.pids.as_ref().unwrap();
        assert_eq!((p.current, p.limit), (4, 0));
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(
            (mem.cache, mem.rss, mem.total_rss, mem.total_pg_maj_fault),
            (11, 22, 44, 55)
        );
        assert_eq!(mem.hierarchical_swap_limit, 33);
        for (e, base) in [
            (&mem.usage, 1),
            (&mem.swap, 2),
            (&mem.kernel, 3),
            (&mem.kernel_tcp, 4),
        ] {
            let e = e.as_ref().unwrap();
            assert_eq!(
                (e.usage, e.max, e.failcnt, e.limit),
                (base * 100, base * 100 + 1, base, 64 << 20)
            );
        }
        assert_eq!(m.memory_oom_control.as_ref().unwrap().oom_kill, 2);
        let b = m.blkio.as_ref().unwrap();
        assert_eq!(b.io_serviced_recursive.len(), 2);
        assert_eq!(b.io_serviced_recursive[1].op, "Write");
        assert_eq!(b.io_serviced_recursive[1].device, "/dev/vda");
        assert_eq!(b.io_service_bytes_recursive[0].value, 4096);
        assert_eq!(m.hugetlb.len(), 1);
        assert_eq!(
            (
                m.hugetlb[0].pagesize.as_str(),
                m.hugetlb[0].max,
                m.hugetlb[0].failcnt
            ),
            ("2MB", 2097152, 1)
        );
    }

    #[test]
    fn v1_missing_controllers_are_absent_and_unreadable_files_are_errors() {
        let (_t, src) = v1_tree();
        // no swap accounting: the swap entry is absent, not zero
        for f in [
            "usage_in_bytes",
            "max_usage_in_bytes",
            "failcnt",
            "limit_in_bytes",
        ] {
            std::fs::remove_file(src.root.join(format!("memory/ns/c1/memory.memsw.{f}"))).unwrap();
        }
        std::fs::remove_dir_all(src.root.join("pids")).unwrap();
        let m = stats_v1(&src, "/ns/c1").unwrap();
        assert!(m.memory.as_ref().unwrap().swap.is_none());
        assert!(m.pids.is_none());
        // a present but broken file fails the request naming the file
        put(&src.root, "memory/ns/c1/memory.usage_in_bytes", "garbage\n");
        let e = stats_v1(&src, "/ns/c1").unwrap_err();
        assert!(e.to_string().contains("memory.usage_in_bytes"), "{e}");
        std::fs::remove_file(src.root.join("cpuacct/ns/c1/cpuacct.usage")).unwrap();
        put(&src.root, "memory/ns/c1/memory.usage_in_bytes", "1\n");
        let e = stats_v1(&src, "/ns/c1").unwrap_err();
        assert!(e.to_string().contains("cpuacct.usage"), "{e}");
        // no cgroup at all
        assert!(matches!(
            stats_v1(&src, "/ns/other"),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn v2_metrics_read_the_unified_files() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("cg");
        put(&r, "cgroup.controllers", "cpu memory pids io\n");
        let d = "ns/c1";
        put(&r, &format!("{d}/pids.current"), "3\n");
        put(&r, &format!("{d}/pids.max"), "100\n");
        put(&r, &format!("{d}/cpu.stat"), "usage_usec 10\nuser_usec 6\nsystem_usec 4\nnr_periods 2\nnr_throttled 1\nthrottled_usec 5\n");
        put(
            &r,
            &format!("{d}/memory.stat"),
            "anon 1\nfile 2\npgmajfault 3\n",
        );
        put(&r, &format!("{d}/memory.current"), "4096\n");
        put(&r, &format!("{d}/memory.max"), "max\n");
        put(&r, &format!("{d}/memory.swap.current"), "0\n");
        put(&r, &format!("{d}/memory.swap.max"), "1024\n");
        put(
            &r,
            &format!("{d}/memory.events"),
            "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n",
        );
        put(
            &r,
            &format!("{d}/io.stat"),
            "254:0 rbytes=10 wbytes=20 rios=1 wios=2 dbytes=0 dios=0\n",
        );
        let src = Sources {
            root: r,
            partitions: t.path().join("none"),
            hugepages: t.path().join("none"),
        };
        assert!(src.unified());
        let m = stats_v2(&src, "/ns/c1").unwrap();
        assert_eq!(m.pids.as_ref().unwrap().limit, 100);
        assert_eq!(m.cpu.as_ref().unwrap().throttled_usec, 5);
        let mem = m.memory.as_ref().unwrap();
        assert_eq!(
            (mem.anon, mem.usage, mem.usage_limit, mem.swap_limit),
            (1, 4096, 0, 1024)
        );
        assert_eq!(m.memory_events.as_ref().unwrap().max, 7);
        let io = &m.io.as_ref().unwrap().usage[0];
        assert_eq!((io.major, io.rbytes, io.wios), (254, 10, 2));
        let (url, _) = metrics(&src, "/ns/c1").unwrap();
        assert_eq!(url, "io.containerd.cgroups.v2.Metrics");
    }

    #[test]
    fn huge_page_sizes_are_named_like_containerd() {
        assert_eq!(huge_page_name(2 << 20), "2MB");
        assert_eq!(huge_page_name(1 << 30), "1GB");
        assert_eq!(huge_page_name(64 << 10), "64KB");
    }

    #[test]
    fn joining_a_missing_cgroup_fails() {
        let (_t, src) = v1_tree();
        assert!(matches!(join(&src, "/nope", 1), Err(Error::NotFound(_))));
    }
}
