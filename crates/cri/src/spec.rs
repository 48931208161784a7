//! OCI runtime specs for pod sandboxes and their containers, as containerd
//! 1.6's CRI writes them (`sandboxContainerSpec`, `containerSpec`): the
//! pod's namespaces joined through the pause process, the sandbox's
//! hostname/hosts/resolv.conf/shm, security contexts, resources, mounts
//! with propagation, annotations kubelet and runtimes read.

use crate::config::CriConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use stevedore_api::cri;
use stevedore_runtime::spec::{
    self, Capabilities, Cpu, DeviceCgroup, ImageConfig, Memory, Mount, Namespace, Spec,
};
use tonic::Status;

pub const ANN_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const ANN_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const ANN_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const ANN_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const ANN_SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
pub const ANN_SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
pub const ANN_CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
pub const ANN_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";

/// The pause container's oom_score_adj (kubelet's `PodInfraOOMAdj`).
pub const SANDBOX_OOM_ADJ: i64 = -998;
/// Default size of a sandbox's /dev/shm (64 MiB).
pub const SHM_SIZE: u64 = 64 << 20;

/// Where a sandbox's files live.
#[derive(Debug, Clone)]
pub struct SandboxFiles {
    pub hostname: String,
    pub hosts: String,
    pub resolv: String,
    pub shm: String,
}

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn ns_mode(
    o: Option<&cri::NamespaceOption>,
    f: impl Fn(&cri::NamespaceOption) -> i32,
) -> cri::NamespaceMode {
    o.map(|o| cri::NamespaceMode::try_from(f(o)).unwrap_or(cri::NamespaceMode::Pod))
        .unwrap_or(cri::NamespaceMode::Pod)
}

/// The pod's namespace options.
pub struct PodNs {
    pub network: cri::NamespaceMode,
    pub pid: cri::NamespaceMode,
    pub ipc: cri::NamespaceMode,
}

pub fn pod_ns(cfg: &cri::PodSandboxConfig) -> PodNs {
    let o = cfg
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    PodNs {
        network: ns_mode(o, |o| o.network),
        pid: ns_mode(o, |o| o.pid),
        ipc: ns_mode(o, |o| o.ipc),
    }
}

fn set_ns(s: &mut Spec, kind: &str, path: Option<String>) {
    let l = s.linux.get_or_insert_with(Default::default);
    l.namespaces.retain(|n| n.kind != kind);
    if let Some(path) = path {
        l.namespaces.push(Namespace {
            kind: kind.into(),
            path,
        });
    }
}

fn bind(dest: &str, src: &str, opts: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        kind: "bind".into(),
        source: src.into(),
        options: opts.iter().map(|s| s.to_string()).collect(),
    }
}

/// containerd's `WithoutDefaultSecuritySettings`: the CRI decides caps,
/// seccomp, masked/readonly paths itself.
fn without_default_security(s: &mut Spec) {
    if let Some(p) = s.process.as_mut() {
        p.capabilities = Some(Capabilities {
            bounding: spec::default_capabilities(),
            effective: spec::default_capabilities(),
            permitted: spec::default_capabilities(),
            ..Default::default()
        });
        p.no_new_privileges = false;
        p.rlimits.clear();
    }
    if let Some(l) = s.linux.as_mut() {
        l.extra.remove("seccomp");
    }
}

fn cgroups_path(parent: &str, id: &str) -> String {
    format!("{}/{id}", parent.trim_end_matches('/'))
}

fn oom_score_adj(wanted: i64, restrict: bool) -> Result<i64, Status> {
    if !restrict {
        return Ok(wanted);
    }
    let current: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Status::internal("read /proc/self/oom_score_adj"))?;
    Ok(wanted.max(current))
}

fn set_oom(s: &mut Spec, adj: i64) {
    if let Some(p) = s.process.as_mut() {
        p.extra.insert("oomScoreAdj".into(), json!(adj));
    }
}

fn set_user(
    s: &mut Spec,
    uid: Option<i64>,
    gid: Option<i64>,
    image_user: &str,
    groups: &[i64],
) -> Result<(), Status> {
    match uid {
        Some(u) => {
            let p = s.process.get_or_insert_with(Default::default);
            p.user.uid = u as u32;
            p.user.gid = gid.unwrap_or(0) as u32;
        }
        None if !image_user.is_empty() => {
            s.with_user(image_user).map_err(|e| {
                bad(format!(
                    "image user {image_user:?}: {} (set runAsUser to a uid)",
                    e.message
                ))
            })?;
            if let Some(g) = gid {
                s.process.get_or_insert_with(Default::default).user.gid = g as u32;
            }
        }
        None => {
            if let Some(g) = gid {
                s.process.get_or_insert_with(Default::default).user.gid = g as u32;
            }
        }
    }
    let p = s.process.get_or_insert_with(Default::default);
    for g in groups {
        let g = *g as u32;
        if !p.user.additional_gids.contains(&g) {
            p.user.additional_gids.push(g);
        }
    }
    Ok(())
}

fn seccomp(
    s: &mut Spec,
    profile: Option<&cri::SecurityProfile>,
    legacy: &str,
    privileged: bool,
    unset: &str,
) -> Result<(), Status> {
    if privileged {
        return Ok(());
    }
    use cri::security_profile::ProfileType;
    let (kind, local) = match profile {
        Some(p) => (
            ProfileType::try_from(p.profile_type).unwrap_or(ProfileType::Unconfined),
            p.localhost_ref.clone(),
        ),
        None => {
            let l = if legacy.is_empty() { unset } else { legacy };
            match l {
                "" | "unconfined" => (ProfileType::Unconfined, String::new()),
                "runtime/default" | "docker/default" => {
                    (ProfileType::RuntimeDefault, String::new())
                }
                other => match other.strip_prefix("localhost/") {
                    Some(path) => (ProfileType::Localhost, path.to_string()),
                    None => return Err(bad(format!("unsupported seccomp profile {other:?}"))),
                },
            }
        }
    };
    match kind {
        ProfileType::Unconfined => {}
        ProfileType::RuntimeDefault => {
            s.with_default_seccomp();
        }
        ProfileType::Localhost => {
            let text = std::fs::read(&local)
                .map_err(|e| bad(format!("failed to load seccomp profile {local:?}: {e}")))?;
            let v: Value = serde_json::from_slice(&text)
                .map_err(|e| bad(format!("failed to parse seccomp profile {local:?}: {e}")))?;
            s.linux
                .get_or_insert_with(Default::default)
                .extra
                .insert("seccomp".into(), v);
        }
    }
    Ok(())
}

/// The spec of a pod's pause container.
pub fn sandbox_spec(
    id: &str,
    cfg: &cri::PodSandboxConfig,
    image: &ImageConfig,
    netns: &str,
    files: &SandboxFiles,
    c: &CriConfig,
) -> Result<Spec, Status> {
    let mut s = spec::default_spec(crate::client::K8S_NAMESPACE, id);
    without_default_security(&mut s);
    s.mounts.retain(|m| m.destination != "/run");
    if image.entrypoint.is_empty() && image.cmd.is_empty() {
        return Err(bad(format!(
            "invalid empty entrypoint and cmd in image config of {id}"
        )));
    }
    let mut args = image.entrypoint.clone();
    args.extend(image.cmd.iter().cloned());
    s.with_args(&args)
        .with_env(&image.env)
        .with_readonly_rootfs();
    if !image.working_dir.is_empty() {
        s.with_cwd(&image.working_dir);
    }
    let linux = cfg.linux.clone().unwrap_or_default();
    if !c.disable_cgroup && !linux.cgroup_parent.is_empty() {
        s.linux.get_or_insert_with(Default::default).cgroups_path =
            cgroups_path(&linux.cgroup_parent, id);
    }
    let ns = pod_ns(cfg);
    if ns.network == cri::NamespaceMode::Node {
        // the host's UTS namespace: runc refuses to set a hostname there
        set_ns(&mut s, "network", None);
        set_ns(&mut s, "uts", None);
    } else {
        set_ns(&mut s, "network", Some(netns.to_string()));
        s.hostname = cfg.hostname.clone();
    }
    if ns.pid == cri::NamespaceMode::Node {
        set_ns(&mut s, "pid", None);
    }
    if ns.ipc == cri::NamespaceMode::Node {
        set_ns(&mut s, "ipc", None);
    }
    let shm = if ns.ipc == cri::NamespaceMode::Node {
        "/dev/shm"
    } else {
        files.shm.as_str()
    };
    s.mounts.retain(|m| m.destination != "/dev/shm");
    s.mounts.push(bind("/dev/shm", shm, &["rbind", "ro"]));
    s.mounts
        .push(bind("/etc/resolv.conf", &files.resolv, &["rbind", "ro"]));
    let sc = linux.security_context.clone().unwrap_or_default();
    let mut sysctls: BTreeMap<String, String> = linux.sysctls.clone().into_iter().collect();
    if ns.network != cri::NamespaceMode::Node {
        if c.enable_unprivileged_ports {
            sysctls
                .entry("net.ipv4.ip_unprivileged_port_start".into())
                .or_insert_with(|| "0".into());
        }
        if c.enable_unprivileged_icmp {
            sysctls
                .entry("net.ipv4.ping_group_range".into())
                .or_insert_with(|| "0 2147483647".into());
        }
    }
    if !sysctls.is_empty() {
        s.linux
            .get_or_insert_with(Default::default)
            .extra
            .insert("sysctl".into(), json!(sysctls));
    }
    if !c.disable_cgroup {
        // containerd's WithDefaultSandboxShares
        let r = s
            .linux
            .get_or_insert_with(Default::default)
            .resources
            .get_or_insert_with(Default::default);
        r.cpu.get_or_insert_with(Cpu::default).shares = Some(2);
    }
    set_oom(
        &mut s,
        oom_score_adj(SANDBOX_OOM_ADJ, c.restrict_oom_score_adj)?,
    );
    seccomp(
        &mut s,
        sc.seccomp.as_ref(),
        #[allow(deprecated)]
        &sc.seccomp_profile_path,
        sc.privileged,
        &c.unset_seccomp_profile,
    )?;
    set_user(
        &mut s,
        sc.run_as_user.as_ref().map(|v| v.value),
        sc.run_as_group.as_ref().map(|v| v.value),
        &image.user,
        &sc.supplemental_groups,
    )?;
    if sc.readonly_rootfs {
        s.with_readonly_rootfs();
    }
    let meta = cfg.metadata.clone().unwrap_or_default();
    let a = &mut s.annotations;
    if let Some(r) = &linux.resources {
        a.insert(
            "io.kubernetes.cri.sandbox-cpu-period".into(),
            r.cpu_period.to_string(),
        );
        a.insert(
            "io.kubernetes.cri.sandbox-cpu-quota".into(),
            r.cpu_quota.to_string(),
        );
        a.insert(
            "io.kubernetes.cri.sandbox-cpu-shares".into(),
            r.cpu_shares.to_string(),
        );
        a.insert(
            "io.kubernetes.cri.sandbox-memory".into(),
            r.memory_limit_in_bytes.to_string(),
        );
    }
    a.insert(ANN_CONTAINER_TYPE.into(), "sandbox".into());
    a.insert(ANN_SANDBOX_ID.into(), id.into());
    a.insert(ANN_SANDBOX_NAMESPACE.into(), meta.namespace.clone());
    a.insert(ANN_SANDBOX_UID.into(), meta.uid.clone());
    a.insert(ANN_SANDBOX_NAME.into(), meta.name.clone());
    a.insert(ANN_SANDBOX_LOG_DIR.into(), cfg.log_directory.clone());
    Ok(s)
}

/// containerd 2.x's rules for a recursive read-only mount (runc's `rro`):
/// read-only, private propagation, and a runtime that can.
fn check_recursive_read_only(
    m: &cri::Mount,
    propagation: cri::MountPropagation,
) -> Result<(), Status> {
    if !m.readonly {
        return Err(bad(format!(
            "mount {:?}: recursive read-only mount needs to be read-only",
            m.container_path
        )));
    }
    if propagation != cri::MountPropagation::PropagationPrivate {
        return Err(bad(format!(
            "mount {:?}: recursive read-only mount requires private propagation, got {}",
            m.container_path,
            propagation.as_str_name()
        )));
    }
    if !crate::features::recursive_read_only_mounts() {
        return Err(bad(format!(
            "mount {:?}: recursive read-only mounts are not supported (runc's rro and Linux 5.12 are needed)",
            m.container_path
        )));
    }
    Ok(())
}

/// What a container spec needs to know of its pod.
pub struct PodContext<'a> {
    pub sandbox_id: &'a str,
    pub sandbox_pid: u32,
    /// The pid whose pid namespace a TARGET container joins.
    pub target_pid: Option<u32>,
    pub config: &'a cri::PodSandboxConfig,
    pub files: &'a SandboxFiles,
}

fn cap_name(c: &str) -> String {
    let up = c.to_uppercase();
    if up.starts_with("CAP_") {
        up
    } else {
        format!("CAP_{up}")
    }
}

fn capabilities(s: &mut Spec, caps: Option<&cri::Capability>) {
    let Some(caps) = caps else { return };
    let mut set = spec::default_capabilities();
    if caps
        .add_capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("ALL"))
    {
        // what this process holds, as containerd's
        // WithAllCurrentCapabilities: runc cannot grant a capability
        // outside the daemon's bounding set
        set = spec::current_capabilities();
    }
    if caps
        .drop_capabilities
        .iter()
        .any(|c| c.eq_ignore_ascii_case("ALL"))
    {
        set.clear();
    }
    for c in &caps.add_capabilities {
        if !c.eq_ignore_ascii_case("ALL") {
            let c = cap_name(c);
            if !set.contains(&c) {
                set.push(c);
            }
        }
    }
    for c in &caps.drop_capabilities {
        let c = cap_name(c);
        set.retain(|x| *x != c);
    }
    if let Some(p) = s.process.as_mut() {
        p.capabilities = Some(Capabilities {
            bounding: set.clone(),
            effective: set.clone(),
            permitted: set,
            ..Default::default()
        });
    }
}

fn resources(s: &mut Spec, r: &cri::LinuxContainerResources) {
    let res = s
        .linux
        .get_or_insert_with(Default::default)
        .resources
        .get_or_insert_with(Default::default);
    let cpu = res.cpu.get_or_insert_with(Cpu::default);
    if r.cpu_period != 0 {
        cpu.period = Some(r.cpu_period as u64);
    }
    if r.cpu_quota != 0 {
        cpu.quota = Some(r.cpu_quota);
    }
    if r.cpu_shares != 0 {
        cpu.shares = Some(r.cpu_shares as u64);
    }
    if !r.cpuset_cpus.is_empty() {
        cpu.cpus = Some(r.cpuset_cpus.clone());
    }
    if !r.cpuset_mems.is_empty() {
        cpu.extra.insert("mems".into(), json!(r.cpuset_mems));
    }
    if r.memory_limit_in_bytes != 0 {
        let m = res.memory.get_or_insert_with(Memory::default);
        m.limit = Some(r.memory_limit_in_bytes);
        if r.memory_swap_limit_in_bytes != 0 {
            m.extra
                .insert("swap".into(), json!(r.memory_swap_limit_in_bytes));
        }
    }
    if !r.hugepage_limits.is_empty() {
        let v: Vec<Value> = r
            .hugepage_limits
            .iter()
            .map(|h| json!({"pageSize": h.page_size, "limit": h.limit}))
            .collect();
        res.extra.insert("hugepageLimits".into(), json!(v));
    }
    if !r.unified.is_empty() {
        res.extra.insert("unified".into(), json!(r.unified));
    }
}

/// The spec of a container in a pod.
pub fn container_spec(
    id: &str,
    cfg: &cri::ContainerConfig,
    image: &ImageConfig,
    image_name: &str,
    pod: &PodContext<'_>,
    c: &CriConfig,
    ids: &crate::user::Ids,
) -> Result<Spec, Status> {
    let mut s = spec::default_spec(crate::client::K8S_NAMESPACE, id);
    without_default_security(&mut s);
    s.mounts.retain(|m| m.destination != "/run");
    // args: containerd's WithProcessArgs
    let (mut args, cmd) = (cfg.command.clone(), cfg.args.clone());
    if args.is_empty() {
        args = image.entrypoint.clone();
        if cmd.is_empty() {
            args.extend(image.cmd.iter().cloned());
        } else {
            args.extend(cmd);
        }
    } else {
        args.extend(cmd);
    }
    if args.is_empty() {
        return Err(bad("no command specified"));
    }
    s.with_args(&args);
    if !cfg.working_dir.is_empty() {
        s.with_cwd(&cfg.working_dir);
    } else if !image.working_dir.is_empty() {
        s.with_cwd(&image.working_dir);
    }
    s.with_tty(cfg.tty);
    if cfg.stdin {
        if let Some(p) = s.process.as_mut() {
            p.extra.insert("stdin".into(), json!(true));
        }
    }
    let hostname = if pod.config.hostname.is_empty() {
        rustix::system::uname()
            .nodename()
            .to_string_lossy()
            .into_owned()
    } else {
        pod.config.hostname.clone()
    };
    // containerd's oci.WithTTY: a terminal gets TERM=xterm, which the
    // image's and the request's env may override
    let mut env = Vec::new();
    if cfg.tty {
        env.push("TERM=xterm".to_string());
    }
    env.push(format!("HOSTNAME={hostname}"));
    env.extend(image.env.iter().cloned());
    env.extend(cfg.envs.iter().map(|kv| format!("{}={}", kv.key, kv.value)));
    s.with_env(&env);

    let linux = cfg.linux.clone().unwrap_or_default();
    let sc = linux.security_context.clone().unwrap_or_default();
    let pod_sc = pod
        .config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let ns = pod_ns(pod.config);

    // mounts: the sandbox's files, then the request's (which win)
    let mut mounts: Vec<cri::Mount> = Vec::new();
    let has = |p: &str| {
        cfg.mounts
            .iter()
            .any(|m| m.container_path.trim_end_matches('/') == p)
    };
    for (dest, src) in [
        ("/etc/hostname", &pod.files.hostname),
        ("/etc/hosts", &pod.files.hosts),
        ("/etc/resolv.conf", &pod.files.resolv),
    ] {
        if !has(dest) && std::path::Path::new(src).exists() {
            mounts.push(cri::Mount {
                container_path: dest.into(),
                host_path: src.clone(),
                readonly: sc.readonly_rootfs,
                ..Default::default()
            });
        }
    }
    if !has("/dev/shm") {
        let shm = if ns.ipc == cri::NamespaceMode::Node {
            "/dev/shm".to_string()
        } else {
            pod.files.shm.clone()
        };
        mounts.push(cri::Mount {
            container_path: "/dev/shm".into(),
            host_path: shm,
            ..Default::default()
        });
    }
    mounts.extend(cfg.mounts.iter().cloned());
    // sort by depth so a parent mount does not shadow a child
    mounts.sort_by_key(|m| std::path::Path::new(&m.container_path).components().count());
    let dests: Vec<String> = mounts
        .iter()
        .map(|m| m.container_path.trim_end_matches('/').to_string())
        .collect();
    let dev_given = dests.iter().any(|d| d == "/dev");
    s.mounts.retain(|m| {
        let d = m.destination.trim_end_matches('/');
        !(dests.iter().any(|x| x == d) || dev_given && d.starts_with("/dev/"))
    });
    let mut rootfs_propagation = String::new();
    for m in &mounts {
        if m.host_path.is_empty() || m.container_path.is_empty() {
            return Err(bad(format!(
                "mount {:?} -> {:?}: host and container paths are required",
                m.host_path, m.container_path
            )));
        }
        let src = std::path::Path::new(&m.host_path);
        if !src.exists() {
            std::fs::create_dir_all(src)
                .map_err(|e| Status::internal(format!("failed to mkdir {:?}: {e}", m.host_path)))?;
        }
        let src = std::fs::canonicalize(src)
            .map_err(|e| Status::internal(format!("resolve {:?}: {e}", m.host_path)))?;
        let propagation = cri::MountPropagation::try_from(m.propagation)
            .unwrap_or(cri::MountPropagation::PropagationPrivate);
        if m.recursive_read_only {
            check_recursive_read_only(m, propagation)?;
        }
        let mut opts = vec!["rbind".to_string()];
        match propagation {
            cri::MountPropagation::PropagationPrivate => opts.push("rprivate".into()),
            cri::MountPropagation::PropagationBidirectional => {
                opts.push("rshared".into());
                rootfs_propagation = "rshared".into();
            }
            cri::MountPropagation::PropagationHostToContainer => {
                opts.push("rslave".into());
                if rootfs_propagation != "rshared" {
                    rootfs_propagation = "rslave".into();
                }
            }
        }
        opts.push(if m.readonly { "ro" } else { "rw" }.into());
        if m.recursive_read_only {
            opts.push("rro".into());
        }
        s.mounts.push(Mount {
            destination: m.container_path.clone(),
            kind: "bind".into(),
            source: src.display().to_string(),
            options: opts,
        });
    }
    if !rootfs_propagation.is_empty() {
        s.linux
            .get_or_insert_with(Default::default)
            .extra
            .insert("rootfsPropagation".into(), json!(rootfs_propagation));
    }

    if !c.disable_proc_mount {
        let l = s.linux.get_or_insert_with(Default::default);
        l.masked_paths = sc.masked_paths.clone();
        l.readonly_paths = sc.readonly_paths.clone();
    }
    add_devices(&mut s, &cfg.devices)?;
    capabilities(&mut s, sc.capabilities.as_ref());
    if sc.privileged {
        if !pod_sc.privileged {
            return Err(bad("no privileged container allowed in sandbox"));
        }
        s.with_privileged();
    }
    if let Some(p) = s.process.as_mut() {
        if let Some(caps) = p.capabilities.as_mut() {
            caps.ambient.clear();
            caps.inheritable.clear();
        }
        p.no_new_privileges = sc.no_new_privs;
    }
    if sc.readonly_rootfs {
        s.with_readonly_rootfs();
    }
    if !c.disable_cgroup {
        if let Some(r) = &linux.resources {
            resources(&mut s, r);
        }
        let parent = pod
            .config
            .linux
            .as_ref()
            .map(|l| l.cgroup_parent.clone())
            .unwrap_or_default();
        if !parent.is_empty() {
            s.linux.get_or_insert_with(Default::default).cgroups_path = cgroups_path(&parent, id);
        }
    }
    if let Some(r) = &linux.resources {
        if r.oom_score_adj != 0 || c.restrict_oom_score_adj {
            set_oom(
                &mut s,
                oom_score_adj(r.oom_score_adj, c.restrict_oom_score_adj)?,
            );
        }
    }
    // the pod's namespaces, through the pause process
    let proc_ns = |pid: u32, kind: &str| format!("/proc/{pid}/ns/{kind}");
    if ns.network == cri::NamespaceMode::Node {
        set_ns(&mut s, "network", None);
        set_ns(&mut s, "uts", None);
    } else {
        set_ns(&mut s, "network", Some(proc_ns(pod.sandbox_pid, "net")));
        set_ns(&mut s, "uts", Some(proc_ns(pod.sandbox_pid, "uts")));
    }
    if ns.ipc == cri::NamespaceMode::Node {
        set_ns(&mut s, "ipc", None);
    } else {
        set_ns(&mut s, "ipc", Some(proc_ns(pod.sandbox_pid, "ipc")));
    }
    let cns = sc.namespace_options.clone().unwrap_or_default();
    match cri::NamespaceMode::try_from(cns.pid).unwrap_or(cri::NamespaceMode::Container) {
        cri::NamespaceMode::Node => set_ns(&mut s, "pid", None),
        cri::NamespaceMode::Pod => set_ns(&mut s, "pid", Some(proc_ns(pod.sandbox_pid, "pid"))),
        cri::NamespaceMode::Target => match pod.target_pid {
            Some(pid) => set_ns(&mut s, "pid", Some(proc_ns(pid, "pid"))),
            None => return Err(bad("target container for the pid namespace is not running")),
        },
        cri::NamespaceMode::Container => {}
    }
    seccomp(
        &mut s,
        sc.seccomp.as_ref(),
        #[allow(deprecated)]
        &sc.seccomp_profile_path,
        sc.privileged,
        &c.unset_seccomp_profile,
    )?;
    // the user as resolved against the image's passwd and group files;
    // the primary group first among the additional ones (containerd's
    // ensureAdditionalGids, 1.6.18's fix of CVE-2023-25173), then the
    // image's groups of the user, then the request's
    let p = s.process.get_or_insert_with(Default::default);
    p.user.uid = ids.uid;
    p.user.gid = ids.gid;
    p.user.additional_gids = vec![ids.gid];
    let requested = sc.supplemental_groups.iter().map(|g| *g as u32);
    for g in ids.additional_gids.iter().copied().chain(requested) {
        if !p.user.additional_gids.contains(&g) {
            p.user.additional_gids.push(g);
        }
    }
    let meta = pod.config.metadata.clone().unwrap_or_default();
    let cname = cfg
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let a = &mut s.annotations;
    a.insert(ANN_CONTAINER_TYPE.into(), "container".into());
    a.insert(ANN_SANDBOX_ID.into(), pod.sandbox_id.into());
    a.insert(ANN_SANDBOX_NAMESPACE.into(), meta.namespace.clone());
    a.insert(ANN_SANDBOX_UID.into(), meta.uid.clone());
    a.insert(ANN_SANDBOX_NAME.into(), meta.name.clone());
    a.insert(ANN_CONTAINER_NAME.into(), cname);
    a.insert(ANN_IMAGE_NAME.into(), image_name.into());
    Ok(s)
}

fn add_devices(s: &mut Spec, devices: &[cri::Device]) -> Result<(), Status> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for d in devices {
        let meta = std::fs::metadata(&d.host_path)
            .map_err(|e| bad(format!("device {:?}: {e}", d.host_path)))?;
        let ft = meta.file_type();
        let kind = if ft.is_block_device() {
            "b"
        } else if ft.is_char_device() {
            "c"
        } else {
            return Err(bad(format!("{:?} is not a device", d.host_path)));
        };
        let rdev = meta.rdev();
        let (major, minor) = (libc::major(rdev) as i64, libc::minor(rdev) as i64);
        let l = s.linux.get_or_insert_with(Default::default);
        l.devices.push(spec::Device {
            path: d.container_path.clone(),
            kind: kind.into(),
            major,
            minor,
            file_mode: Some(meta.mode() & 0o777),
            uid: Some(meta.uid()),
            gid: Some(meta.gid()),
        });
        let perms = if d.permissions.is_empty() {
            "rwm".to_string()
        } else {
            d.permissions.clone()
        };
        l.resources
            .get_or_insert_with(Default::default)
            .devices
            .push(DeviceCgroup {
                allow: true,
                kind: Some(kind.into()),
                major: Some(major),
                minor: Some(minor),
                access: Some(perms),
            });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> SandboxFiles {
        SandboxFiles {
            hostname: "/nonexistent/hostname".into(),
            hosts: "/nonexistent/hosts".into(),
            resolv: "/nonexistent/resolv.conf".into(),
            shm: "/nonexistent/shm".into(),
        }
    }

    /// A pod with the default config and [`files`], for the context of
    /// its containers (sandbox "sb", pause pid 42).
    struct DefaultPod {
        config: cri::PodSandboxConfig,
        files: SandboxFiles,
    }

    impl DefaultPod {
        fn new() -> DefaultPod {
            DefaultPod {
                config: cri::PodSandboxConfig::default(),
                files: files(),
            }
        }

        fn ctx(&self) -> PodContext<'_> {
            PodContext {
                sandbox_id: "sb",
                sandbox_pid: 42,
                target_pid: None,
                config: &self.config,
                files: &self.files,
            }
        }
    }

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/pause".into()],
            env: vec!["PATH=/bin".into()],
            ..Default::default()
        }
    }

    #[test]
    fn sandbox_spec_joins_the_pod_network_and_restricts_oom() {
        let cfg = cri::PodSandboxConfig {
            hostname: "pod1".into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: "p".into(),
                namespace: "default".into(),
                uid: "u1".into(),
                attempt: 0,
            }),
            ..Default::default()
        };
        let c = CriConfig {
            restrict_oom_score_adj: true,
            ..Default::default()
        };
        let s = sandbox_spec("sb1", &cfg, &image(), "/run/netns/x", &files(), &c).unwrap();
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/netns/x"));
        let own: i64 = std::fs::read_to_string("/proc/self/oom_score_adj")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(v["process"]["oomScoreAdj"], json!(SANDBOX_OOM_ADJ.max(own)));
        assert_eq!(v["hostname"], "pod1");
        assert_eq!(v["annotations"][ANN_CONTAINER_TYPE], "sandbox");
        assert_eq!(v["root"]["readonly"], true);
    }

    #[test]
    fn container_spec_joins_the_pause_namespaces() {
        let pod = DefaultPod::new();
        let ctx = pod.ctx();
        let cfg = cri::ContainerConfig {
            args: vec!["echo".into(), "hi".into()],
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: "1".into(),
            }],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    capabilities: Some(cri::Capability {
                        add_capabilities: vec!["NET_ADMIN".into()],
                        drop_capabilities: vec!["CAP_KILL".into()],
                        ..Default::default()
                    }),
                    run_as_user: Some(cri::Int64Value { value: 1000 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let s = container_spec(
            "c1",
            &cfg,
            &image(),
            "img",
            &ctx,
            &CriConfig::default(),
            &crate::user::Ids {
                uid: 1000,
                gid: 0,
                additional_gids: vec![],
            },
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["process"]["args"], json!(["/pause", "echo", "hi"]));
        let env = v["process"]["env"].as_array().unwrap();
        assert!(env.contains(&json!("A=1")));
        let nss = v["linux"]["namespaces"].as_array().unwrap();
        assert!(nss
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/proc/42/ns/net"));
        // no namespace options: the pod's pid namespace (NamespaceMode POD is 0)
        assert!(nss
            .iter()
            .any(|n| n["type"] == "pid" && n["path"] == "/proc/42/ns/pid"));
        let caps = v["process"]["capabilities"]["bounding"].as_array().unwrap();
        assert!(caps.contains(&json!("CAP_NET_ADMIN")));
        assert!(!caps.contains(&json!("CAP_KILL")));
        assert_eq!(v["process"]["user"]["uid"], 1000);
        // privileged needs a privileged pod
        let mut p = cfg.clone();
        p.linux
            .as_mut()
            .unwrap()
            .security_context
            .as_mut()
            .unwrap()
            .privileged = true;
        let e = container_spec(
            "c1",
            &p,
            &image(),
            "img",
            &ctx,
            &CriConfig::default(),
            &crate::user::Ids::default(),
        )
        .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn recursive_read_only_mounts_follow_containerds_rules() {
        let pod = DefaultPod::new();
        let ctx = pod.ctx();
        let dir = tempfile::tempdir().unwrap();
        let spec_with = |m: cri::Mount| {
            let cfg = cri::ContainerConfig {
                args: vec!["true".into()],
                mounts: vec![m],
                ..Default::default()
            };
            container_spec(
                "c1",
                &cfg,
                &image(),
                "img",
                &ctx,
                &CriConfig::default(),
                &Default::default(),
            )
        };
        let rro = |readonly, propagation: cri::MountPropagation| cri::Mount {
            container_path: "/mnt".into(),
            host_path: dir.path().display().to_string(),
            readonly,
            recursive_read_only: true,
            propagation: propagation as i32,
            ..Default::default()
        };
        let private = cri::MountPropagation::PropagationPrivate;
        for bad in [
            rro(false, private),
            rro(true, cri::MountPropagation::PropagationHostToContainer),
            rro(true, cri::MountPropagation::PropagationBidirectional),
        ] {
            let err = spec_with(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
        }
        let r = spec_with(rro(true, private));
        if crate::features::recursive_read_only_mounts() {
            let s = r.unwrap();
            let m = s.mounts.iter().find(|m| m.destination == "/mnt").unwrap();
            assert!(m.options.iter().any(|o| o == "rro"), "{:?}", m.options);
            assert!(m.options.iter().any(|o| o == "ro"), "{:?}", m.options);
        } else {
            assert_eq!(r.unwrap_err().code(), tonic::Code::InvalidArgument);
        }
    }

    #[test]
    fn the_primary_group_leads_the_additional_groups() {
        let pod = DefaultPod::new();
        let ctx = pod.ctx();
        let cfg = cri::ContainerConfig {
            args: vec!["id".into()],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    supplemental_groups: vec![1234, 1000],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let ids = crate::user::Ids {
            uid: 1000,
            gid: 1000,
            additional_gids: vec![50000],
        };
        let s = container_spec(
            "c1",
            &cfg,
            &image(),
            "img",
            &ctx,
            &CriConfig::default(),
            &ids,
        )
        .unwrap();
        let u = s.process.unwrap().user;
        assert_eq!((u.uid, u.gid), (1000, 1000));
        // CVE-2023-25173: the primary group is a supplementary one too
        assert_eq!(u.additional_gids, vec![1000, 50000, 1234]);
    }

    #[test]
    fn adding_all_capabilities_grants_those_the_daemon_holds() {
        let mut s = Spec {
            process: Some(Default::default()),
            ..Default::default()
        };
        let caps = cri::Capability {
            add_capabilities: vec!["ALL".into()],
            drop_capabilities: vec!["CHOWN".into()],
            ..Default::default()
        };
        capabilities(&mut s, Some(&caps));
        let mut want = spec::current_capabilities();
        want.retain(|c| c != "CAP_CHOWN");
        let got = s.process.unwrap().capabilities.unwrap();
        assert_eq!(got.bounding, want);
        assert_eq!(got.effective, want);
        assert_eq!(got.permitted, want);
    }

    #[test]
    fn a_tty_container_gets_term_xterm_as_containerd_gives_it() {
        let pod = DefaultPod::new();
        let ctx = pod.ctx();
        let env_of = |cfg: &cri::ContainerConfig| {
            let s = container_spec(
                "c1",
                cfg,
                &image(),
                "img",
                &ctx,
                &CriConfig::default(),
                &crate::user::Ids::default(),
            )
            .unwrap();
            let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
            v["process"]["env"].clone()
        };
        let mut cfg = cri::ContainerConfig {
            tty: true,
            ..Default::default()
        };
        assert!(env_of(&cfg)
            .as_array()
            .unwrap()
            .contains(&json!("TERM=xterm")));
        cfg.envs = vec![cri::KeyValue {
            key: "TERM".into(),
            value: "dumb".into(),
        }];
        let env = env_of(&cfg);
        assert!(
            env.as_array().unwrap().contains(&json!("TERM=dumb")),
            "{env}"
        );
        assert!(
            !env.as_array().unwrap().contains(&json!("TERM=xterm")),
            "{env}"
        );
        cfg.tty = false;
        cfg.envs.clear();
        let env = env_of(&cfg);
        assert!(!env.to_string().contains("TERM="), "{env}");
    }
}
