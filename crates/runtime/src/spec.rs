//! OCI runtime specs (`config.json`) as containerd's `oci` package generates
//! them: a default Linux spec (namespaces, capabilities, mounts, masked and
//! read-only paths, rlimits, cgroups path `/<namespace>/<id>`), and options
//! that change it (args, env, user, tty, host network, read-only rootfs,
//! privileged, resources, bind mounts, user namespaces, an image config).
//!
//! The types cover the fields stevedore writes; fields it does not know are
//! kept (`extra`) so a spec from a client survives a round trip unchanged.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use stevedore_types::{Error, Result};

/// The OCI runtime spec version written.
pub const OCI_VERSION: &str = "1.0.2-dev";

/// Extra JSON fields a type does not model, kept verbatim.
type Extra = BTreeMap<String, Value>;

/// The root of an OCI runtime spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub oci_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Root>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<Linux>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub terminal: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
    pub user: User,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ConsoleSize {
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bounding: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inheritable: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permitted: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Root {
    pub path: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gid_mappings: Vec<IdMapping>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cgroups_path: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<Namespace>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    #[serde(rename = "fileMode", default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceCgroup>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceCgroup {
    pub allow: bool,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(flatten)]
    pub extra: Extra,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(flatten)]
    pub extra: Extra,
}

/// The image configuration fields a spec takes from an image, as plain data.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

/// containerd's default capabilities for unprivileged containers.
pub fn default_capabilities() -> Vec<String> {
    [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ]
    .map(String::from)
    .to_vec()
}

/// The capabilities this process holds (`CapEff` of /proc/self/status), by
/// name: what `--privileged` grants, as containerd's
/// `WithAllCurrentCapabilities` does (asking for more fails in runc when the
/// caller's bounding set is reduced). Every known one if /proc is unreadable.
pub fn current_capabilities() -> Vec<String> {
    let all = all_capabilities();
    let mask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        });
    match mask {
        Some(m) => all
            .into_iter()
            .enumerate()
            .filter(|(i, _)| m & (1u64 << i) != 0)
            .map(|(_, c)| c)
            .collect(),
        None => all,
    }
}

/// Every capability Linux knows, in the kernel's numbering order.
pub fn all_capabilities() -> Vec<String> {
    [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ]
    .map(String::from)
    .to_vec()
}

/// The PATH containerd sets when the image gives none.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    Mount {
        destination: dest.into(),
        kind: kind.into(),
        source: source.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The default Linux spec for container `id` in `namespace`, as containerd's
/// `populateDefaultUnixSpec` writes it (plus the cgroup mount of 1.7+).
pub fn default_spec(namespace: &str, id: &str) -> Spec {
    let caps = default_capabilities();
    Spec {
        oci_version: OCI_VERSION.into(),
        process: Some(Process {
            user: User::default(),
            cwd: "/".into(),
            env: vec![DEFAULT_PATH_ENV.into()],
            no_new_privileges: true,
            capabilities: Some(Capabilities {
                bounding: caps.clone(),
                effective: caps.clone(),
                permitted: caps,
                ..Default::default()
            }),
            rlimits: vec![Rlimit {
                kind: "RLIMIT_NOFILE".into(),
                hard: 1024,
                soft: 1024,
            }],
            ..Default::default()
        }),
        root: Some(Root {
            path: "rootfs".into(),
            readonly: false,
        }),
        mounts: vec![
            mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
            mount(
                "/dev/shm",
                "tmpfs",
                "shm",
                &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            ),
            mount(
                "/dev/mqueue",
                "mqueue",
                "mqueue",
                &["nosuid", "noexec", "nodev"],
            ),
            mount(
                "/sys",
                "sysfs",
                "sysfs",
                &["nosuid", "noexec", "nodev", "ro"],
            ),
            mount(
                "/sys/fs/cgroup",
                "cgroup",
                "cgroup",
                &["nosuid", "noexec", "nodev", "relatime", "ro"],
            ),
            mount(
                "/run",
                "tmpfs",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
        ],
        linux: Some(Linux {
            masked_paths: strings(&[
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ]),
            readonly_paths: strings(&[
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ]),
            cgroups_path: format!("/{namespace}/{id}"),
            resources: Some(Resources {
                devices: vec![DeviceCgroup {
                    allow: false,
                    access: Some("rwm".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            namespaces: ["pid", "ipc", "uts", "mount", "network"]
                .iter()
                .map(|k| Namespace {
                    kind: k.to_string(),
                    path: String::new(),
                })
                .collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl Spec {
    /// Parse a spec from JSON (a container record's spec).
    pub fn from_json(bytes: &[u8]) -> Result<Spec> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid(format!("parse OCI runtime spec: {e}")))
    }

    /// The spec as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("spec serialises")
    }

    fn process_mut(&mut self) -> &mut Process {
        self.process.get_or_insert_with(|| Process {
            cwd: "/".into(),
            ..Default::default()
        })
    }

    fn linux_mut(&mut self) -> &mut Linux {
        self.linux.get_or_insert_with(Linux::default)
    }

    fn resources_mut(&mut self) -> &mut Resources {
        self.linux_mut()
            .resources
            .get_or_insert_with(Resources::default)
    }

    /// Set the process arguments.
    pub fn with_args(&mut self, args: &[String]) -> &mut Self {
        self.process_mut().args = args.to_vec();
        self
    }

    /// Add or replace environment variables (`KEY=value`), by key.
    pub fn with_env(&mut self, env: &[String]) -> &mut Self {
        let p = self.process_mut();
        for kv in env {
            let key = kv.split('=').next().unwrap_or(kv);
            match p
                .env
                .iter()
                .position(|e| e.split('=').next().unwrap_or(e) == key)
            {
                Some(i) => p.env[i] = kv.clone(),
                None => p.env.push(kv.clone()),
            }
        }
        self
    }

    /// Set the working directory.
    pub fn with_cwd(&mut self, cwd: &str) -> &mut Self {
        self.process_mut().cwd = cwd.into();
        self
    }

    /// Set the user from `uid[:gid]` (numeric; names need the image's
    /// /etc/passwd, which the caller resolves).
    pub fn with_user(&mut self, user: &str) -> Result<&mut Self> {
        let (u, g) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let uid: u32 = u.parse().map_err(|_| {
            Error::invalid(format!(
                "user {user:?}: only numeric uid[:gid] is supported here"
            ))
        })?;
        let gid: u32 = match g {
            Some(g) => g.parse().map_err(|_| {
                Error::invalid(format!(
                    "user {user:?}: only numeric uid[:gid] is supported here"
                ))
            })?,
            None => 0,
        };
        let p = self.process_mut();
        p.user.uid = uid;
        p.user.gid = gid;
        Ok(self)
    }

    /// Give the process a terminal.
    pub fn with_tty(&mut self, tty: bool) -> &mut Self {
        self.process_mut().terminal = tty;
        self
    }

    /// Share the host's network namespace, with the host's /etc/hosts and
    /// /etc/resolv.conf bound read-only (ctr's `--net-host`).
    pub fn with_host_network(&mut self) -> &mut Self {
        self.linux_mut().namespaces.retain(|n| n.kind != "network");
        for f in ["/etc/hosts", "/etc/resolv.conf"] {
            self.mounts.push(mount(f, "bind", f, &["rbind", "ro"]));
        }
        self
    }

    /// Make the root filesystem read-only.
    pub fn with_readonly_rootfs(&mut self) -> &mut Self {
        self.root
            .get_or_insert_with(|| Root {
                path: "rootfs".into(),
                readonly: false,
            })
            .readonly = true;
        self
    }

    /// Grant everything: all capabilities, no masked or read-only paths, all
    /// devices allowed, /sys read-write (ctr's `--privileged`).
    pub fn with_privileged(&mut self) -> &mut Self {
        let caps = current_capabilities();
        self.process_mut().capabilities = Some(Capabilities {
            bounding: caps.clone(),
            effective: caps.clone(),
            permitted: caps,
            ..Default::default()
        });
        let l = self.linux_mut();
        l.masked_paths.clear();
        l.readonly_paths.clear();
        self.resources_mut().devices = vec![DeviceCgroup {
            allow: true,
            access: Some("rwm".into()),
            ..Default::default()
        }];
        for m in &mut self.mounts {
            if m.destination == "/sys" || m.destination == "/sys/fs/cgroup" {
                m.options.retain(|o| o != "ro");
            }
        }
        self
    }

    /// Limit memory to `bytes`.
    pub fn with_memory_limit(&mut self, bytes: u64) -> &mut Self {
        self.resources_mut()
            .memory
            .get_or_insert_with(Memory::default)
            .limit = Some(bytes as i64);
        self
    }

    /// Limit CPU to `cpus` CPUs as CFS quota over a 100ms period (ctr's `--cpus`).
    pub fn with_cpus(&mut self, cpus: f64) -> &mut Self {
        let period: u64 = 100_000;
        let cpu = self.resources_mut().cpu.get_or_insert_with(Cpu::default);
        cpu.period = Some(period);
        cpu.quota = Some((cpus * period as f64) as i64);
        self
    }

    /// Bind `source` at `destination` (read-only when `readonly`).
    pub fn with_bind_mount(
        &mut self,
        source: &str,
        destination: &str,
        readonly: bool,
    ) -> &mut Self {
        let opts: &[&str] = if readonly {
            &["rbind", "ro"]
        } else {
            &["rbind", "rw"]
        };
        self.mounts.push(mount(destination, "bind", source, opts));
        self
    }

    /// Add a user namespace with these uid and gid maps.
    pub fn with_user_namespace(&mut self, uids: &[IdMapping], gids: &[IdMapping]) -> &mut Self {
        let l = self.linux_mut();
        if !l.namespaces.iter().any(|n| n.kind == "user") {
            l.namespaces.push(Namespace {
                kind: "user".into(),
                path: String::new(),
            });
        }
        l.uid_mappings.extend_from_slice(uids);
        l.gid_mappings.extend_from_slice(gids);
        self
    }

    /// Apply an image's config: env, working dir, user, and the command
    /// (`args` replace the image's cmd, the entrypoint stays), as
    /// containerd's `WithImageConfigArgs` does.
    pub fn with_image_config(&mut self, image: &ImageConfig, args: &[String]) -> Result<&mut Self> {
        {
            let p = self.process_mut();
            if !image.env.is_empty() {
                p.env.clear();
            }
        }
        let mut env = image.env.clone();
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, DEFAULT_PATH_ENV.into());
        }
        self.with_env(&env);
        let cmd = if args.is_empty() {
            image.cmd.clone()
        } else {
            args.to_vec()
        };
        let mut full = image.entrypoint.clone();
        full.extend(cmd);
        if full.is_empty() {
            return Err(Error::invalid(
                "no command specified: the image has no entrypoint or cmd and none was given",
            ));
        }
        self.with_args(&full);
        if !image.working_dir.is_empty() {
            self.with_cwd(&image.working_dir);
        }
        if !image.user.is_empty() {
            self.with_user(&image.user)?;
        }
        Ok(self)
    }
}

/// Parse ctr's `--uidmap`/`--gidmap` value `container:host:size`.
pub fn parse_id_mapping(s: &str) -> Result<IdMapping> {
    let parts: Vec<&str> = s.split(':').collect();
    let bad = || {
        Error::invalid(format!(
            "id mapping {s:?} must be container-id:host-id:size"
        ))
    };
    if parts.len() != 3 {
        return Err(bad());
    }
    let n = |p: &str| p.parse::<u32>().map_err(|_| bad());
    Ok(IdMapping {
        container_id: n(parts[0])?,
        host_id: n(parts[1])?,
        size: n(parts[2])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_matches_containerd() {
        let s = default_spec("default", "c1");
        let l = s.linux.as_ref().unwrap();
        assert_eq!(l.cgroups_path, "/default/c1");
        let ns: Vec<&str> = l.namespaces.iter().map(|n| n.kind.as_str()).collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
        let p = s.process.as_ref().unwrap();
        assert_eq!(p.rlimits[0].kind, "RLIMIT_NOFILE");
        assert_eq!(p.capabilities.as_ref().unwrap().bounding.len(), 14);
        let dests: Vec<&str> = s.mounts.iter().map(|m| m.destination.as_str()).collect();
        for d in [
            "/proc",
            "/dev",
            "/dev/pts",
            "/dev/shm",
            "/dev/mqueue",
            "/sys",
            "/sys/fs/cgroup",
        ] {
            assert!(dests.contains(&d), "{d}");
        }
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["linux"]["cgroupsPath"], "/default/c1");
        assert_eq!(v["process"]["noNewPrivileges"], true);
        assert_eq!(v["linux"]["resources"]["devices"][0]["access"], "rwm");
    }

    #[test]
    fn options_change_the_spec() {
        let mut s = default_spec("ns", "c");
        s.with_host_network()
            .with_readonly_rootfs()
            .with_memory_limit(1 << 20)
            .with_cpus(0.5)
            .with_env(&["A=1".into(), "PATH=/bin".into()])
            .with_bind_mount("/tmp", "/mnt", true)
            .with_user_namespace(&[parse_id_mapping("0:1000:65536").unwrap()], &[]);
        s.with_user("5:6").unwrap();
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert!(!v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "network"));
        assert!(v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["type"] == "user"));
        assert_eq!(v["linux"]["uidMappings"][0]["hostID"], 1000);
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["linux"]["resources"]["memory"]["limit"], 1 << 20);
        assert_eq!(v["linux"]["resources"]["cpu"]["quota"], 50000);
        assert_eq!(v["linux"]["resources"]["cpu"]["period"], 100000);
        assert_eq!(v["process"]["env"], serde_json::json!(["PATH=/bin", "A=1"]));
        assert_eq!(v["process"]["user"]["uid"], 5);
        assert!(s.mounts.iter().any(|m| m.destination == "/etc/resolv.conf"));
        assert!(s.with_user("root").is_err());
        assert!(parse_id_mapping("1:2").is_err());
    }

    #[test]
    fn privileged_drops_masks_and_grants_all_caps() {
        let mut s = default_spec("ns", "c");
        s.with_privileged();
        let l = s.linux.as_ref().unwrap();
        assert!(l.masked_paths.is_empty() && l.readonly_paths.is_empty());
        assert!(l.resources.as_ref().unwrap().devices[0].allow);
        let caps = &s
            .process
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap()
            .bounding;
        assert!(caps.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn image_config_sets_command_env_and_user() {
        let mut s = default_spec("ns", "c");
        let img = ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            env: vec!["FOO=bar".into()],
            working_dir: "/work".into(),
            user: "1000:1000".into(),
        };
        s.with_image_config(&img, &[]).unwrap();
        let p = s.process.as_ref().unwrap();
        assert_eq!(p.args, ["/entry", "default"]);
        assert_eq!(p.env[0], DEFAULT_PATH_ENV);
        assert!(p.env.contains(&"FOO=bar".to_string()));
        assert_eq!(p.cwd, "/work");
        assert_eq!(p.user.uid, 1000);
        s.with_image_config(&img, &["x".into()]).unwrap();
        assert_eq!(s.process.as_ref().unwrap().args, ["/entry", "x"]);
        assert!(default_spec("a", "b")
            .with_image_config(&ImageConfig::default(), &[])
            .is_err());
    }

    #[test]
    fn unknown_fields_survive_round_trip() {
        let json = br#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","apparmorProfile":"x"},"linux":{"seccomp":{"defaultAction":"SCMP_ACT_ALLOW"}},"hooks":{}}"#;
        let s = Spec::from_json(json).unwrap();
        let v: Value = serde_json::from_slice(&s.to_json()).unwrap();
        assert_eq!(v["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(v["process"]["apparmorProfile"], "x");
        assert!(v["hooks"].is_object());
    }
}
