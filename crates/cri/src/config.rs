//! The CRI plugin's configuration, with containerd 1.6's keys
//! (`[plugins."io.containerd.grpc.v1.cri"]`), so a containerd config's CRI
//! section moves over unchanged. Keys stevedore does not act on are accepted
//! and listed in docs/compatibility.md; unknown keys are errors, as for every
//! other plugin.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `[plugins."io.containerd.grpc.v1.cri"]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    pub containerd: ContainerdConfig,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
    pub image_decryption: toml::Table,
    pub x509_key_pair_streaming: toml::Table,
    pub disable_tcp_service: bool,
    pub stream_server_address: String,
    pub stream_server_port: String,
    pub stream_idle_timeout: String,
    pub enable_selinux: bool,
    pub selinux_category_range: i64,
    /// The pause image every pod sandbox runs.
    pub sandbox_image: String,
    pub stats_collect_period: i64,
    pub systemd_cgroup: bool,
    pub enable_tls_streaming: bool,
    /// Longer log lines are split into partial (`P`) lines; -1: no limit.
    pub max_container_log_line_size: i64,
    pub disable_cgroup: bool,
    pub disable_apparmor: bool,
    /// Never ask for an `oom_score_adj` below the daemon's own (hosts that
    /// refuse lowering it, like this VM).
    pub restrict_oom_score_adj: bool,
    pub max_concurrent_downloads: i64,
    pub disable_proc_mount: bool,
    pub unset_seccomp_profile: String,
    pub tolerate_missing_hugetlb_controller: bool,
    pub disable_hugetlb_controller: bool,
    pub device_ownership_from_security_context: bool,
    pub ignore_image_defined_volumes: bool,
    /// Network namespaces under `<state>/netns` instead of /var/run/netns.
    pub netns_mounts_under_state_dir: bool,
    pub enable_unprivileged_ports: bool,
    pub enable_unprivileged_icmp: bool,
    pub enable_cdi: bool,
    pub cdi_spec_dirs: Vec<String>,
    pub image_pull_progress_timeout: String,
    pub drain_exec_sync_io_timeout: String,
}

impl Default for CriConfig {
    fn default() -> Self {
        CriConfig {
            containerd: ContainerdConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            image_decryption: toml::Table::new(),
            x509_key_pair_streaming: toml::Table::new(),
            disable_tcp_service: true,
            stream_server_address: "127.0.0.1".into(),
            stream_server_port: "0".into(),
            stream_idle_timeout: "4h0m0s".into(),
            enable_selinux: false,
            selinux_category_range: 1024,
            sandbox_image: "registry.k8s.io/pause:3.6".into(),
            stats_collect_period: 10,
            systemd_cgroup: false,
            enable_tls_streaming: false,
            max_container_log_line_size: 16 * 1024,
            disable_cgroup: false,
            disable_apparmor: false,
            restrict_oom_score_adj: false,
            max_concurrent_downloads: 3,
            disable_proc_mount: false,
            unset_seccomp_profile: String::new(),
            tolerate_missing_hugetlb_controller: true,
            disable_hugetlb_controller: true,
            device_ownership_from_security_context: false,
            ignore_image_defined_volumes: false,
            netns_mounts_under_state_dir: false,
            enable_unprivileged_ports: false,
            enable_unprivileged_icmp: false,
            enable_cdi: false,
            cdi_spec_dirs: vec!["/etc/cdi".into(), "/var/run/cdi".into()],
            image_pull_progress_timeout: "1m0s".into(),
            drain_exec_sync_io_timeout: "0s".into(),
        }
    }
}

/// `[...cri.containerd]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerdConfig {
    pub snapshotter: String,
    pub default_runtime_name: String,
    pub runtimes: BTreeMap<String, RuntimeEntry>,
    pub default_runtime: Option<RuntimeEntry>,
    pub untrusted_workload_runtime: Option<RuntimeEntry>,
    pub no_pivot: bool,
    pub disable_snapshot_annotations: bool,
    pub discard_unpacked_layers: bool,
    pub ignore_rdt_not_enabled_errors: bool,
    pub ignore_blockio_not_enabled_errors: bool,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            snapshotter: "overlayfs".into(),
            default_runtime_name: "runc".into(),
            runtimes: [("runc".to_string(), RuntimeEntry::default())].into(),
            default_runtime: None,
            untrusted_workload_runtime: None,
            no_pivot: false,
            disable_snapshot_annotations: true,
            discard_unpacked_layers: false,
            ignore_rdt_not_enabled_errors: false,
            ignore_blockio_not_enabled_errors: false,
        }
    }
}

/// `[...cri.containerd.runtimes.<name>]`: a runtime handler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeEntry {
    pub runtime_type: String,
    /// containerd 1.6: a shim binary path for this runtime (empty: looked
    /// up from runtime_type).
    pub runtime_path: String,
    pub runtime_engine: String,
    pub runtime_root: String,
    pub pod_annotations: Vec<String>,
    pub container_annotations: Vec<String>,
    pub privileged_without_host_devices: bool,
    pub privileged_without_host_devices_all_devices_allowed: bool,
    pub base_runtime_spec: String,
    pub cni_conf_dir: String,
    pub cni_max_conf_num: i64,
    pub snapshotter: String,
    pub sandbox_mode: String,
    /// The shim's options: for runc, `BinaryName`, `Root`, `SystemdCgroup`,
    /// `ShimCgroup`, ... (containerd's runc `Options` in TOML).
    pub options: toml::Table,
}

impl Default for RuntimeEntry {
    fn default() -> Self {
        RuntimeEntry {
            runtime_type: "io.containerd.runc.v2".into(),
            runtime_path: String::new(),
            runtime_engine: String::new(),
            runtime_root: String::new(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
            privileged_without_host_devices: false,
            privileged_without_host_devices_all_devices_allowed: false,
            base_runtime_spec: String::new(),
            cni_conf_dir: String::new(),
            cni_max_conf_num: 0,
            snapshotter: String::new(),
            sandbox_mode: "podsandbox".into(),
            options: toml::Table::new(),
        }
    }
}

/// `[...cri.cni]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    pub bin_dir: String,
    pub conf_dir: String,
    pub max_conf_num: i64,
    pub conf_template: String,
    pub ip_pref: String,
    pub setup_serially: bool,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            bin_dir: "/opt/cni/bin".into(),
            conf_dir: "/etc/cni/net.d".into(),
            max_conf_num: 1,
            conf_template: String::new(),
            ip_pref: String::new(),
            setup_serially: false,
        }
    }
}

/// `[...cri.registry]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// containerd's hosts directory (`hosts.toml` per registry host).
    pub config_path: String,
    pub headers: BTreeMap<String, Vec<String>>,
    pub mirrors: toml::Table,
    pub configs: toml::Table,
    pub auths: toml::Table,
}

impl CriConfig {
    /// Refuse settings stevedore accepts the key of but cannot honour, so
    /// a moved-over config never silently means something else.
    pub fn check_supported(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if !self.registry.mirrors.is_empty()
            || !self.registry.configs.is_empty()
            || !self.registry.auths.is_empty()
        {
            bad.push("registry.mirrors/configs/auths (deprecated in containerd 1.6): use registry.config_path with hosts.toml files");
        }
        if !self.cni.conf_template.is_empty() {
            bad.push("cni.conf_template: write the CNI config into cni.conf_dir instead");
        }
        let tls_files = self
            .x509_key_pair_streaming
            .values()
            .any(|v| v.as_str().is_some_and(|s| !s.is_empty()));
        if self.enable_tls_streaming || tls_files {
            bad.push("enable_tls_streaming / x509_key_pair_streaming: the streaming server serves plain HTTP on stream_server_address");
        }
        if self.systemd_cgroup {
            bad.push(
                "systemd_cgroup (the v1 runtime's): set SystemdCgroup in the runtime's options",
            );
        }
        if self.enable_selinux {
            bad.push("enable_selinux: SELinux labelling is not supported");
        }
        // containerd's default config writes both tables with empty values
        let named = |r: &Option<RuntimeEntry>| {
            r.as_ref()
                .is_some_and(|r| !r.runtime_type.is_empty() || !r.runtime_path.is_empty())
        };
        if named(&self.containerd.default_runtime)
            || named(&self.containerd.untrusted_workload_runtime)
        {
            bad.push("containerd.default_runtime / untrusted_workload_runtime: use runtimes and default_runtime_name");
        }
        if !self
            .containerd
            .runtimes
            .contains_key(&self.containerd.default_runtime_name)
        {
            return Err(format!(
                "containerd.default_runtime_name {:?} names no runtime in containerd.runtimes",
                self.containerd.default_runtime_name
            ));
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("unsupported CRI settings: {}", bad.join("; ")))
        }
    }

    /// The runtime handler a request names ("" is the default).
    pub fn runtime(&self, handler: &str) -> Result<(String, RuntimeEntry), String> {
        let name = if handler.is_empty() {
            self.containerd.default_runtime_name.as_str()
        } else {
            handler
        };
        match self.containerd.runtimes.get(name) {
            Some(r) => Ok((name.to_string(), r.clone())),
            None => Err(format!("no runtime for {name:?} is configured")),
        }
    }

    /// The snapshotter for a runtime handler.
    pub fn snapshotter_for(&self, rt: &RuntimeEntry) -> String {
        if rt.snapshotter.is_empty() {
            self.containerd.snapshotter.clone()
        } else {
            rt.snapshotter.clone()
        }
    }
}

/// containerd's JSON name of a config key (its Go structs' `json` tags:
/// camel case, with the Go initialisms).
fn json_key(k: &str) -> String {
    match k {
        "restrict_oom_score_adj" => return "restrictOOMScoreAdj".into(),
        "max_container_log_line_size" => return "maxContainerLogSize".into(),
        "disable_tcp_service" => return "disableTCPService".into(),
        "enable_tls_streaming" => return "enableTLSStreaming".into(),
        "enable_cdi" => return "enableCDI".into(),
        "cdi_spec_dirs" => return "cdiSpecDirs".into(),
        "enable_unprivileged_icmp" => return "enableUnprivilegedICMP".into(),
        "x509_key_pair_streaming" => return "x509KeyPairStreaming".into(),
        "cni" => return "cni".into(),
        _ => {}
    }
    let mut out = String::new();
    let mut up = false;
    for ch in k.chars() {
        if ch == '_' {
            up = true;
        } else if up {
            out.extend(ch.to_uppercase());
            up = false;
        } else {
            out.push(ch);
        }
    }
    out
}

fn camel(v: serde_json::Value, keep_below: bool) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => serde_json::Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    if keep_below {
                        return (k, v);
                    }
                    // runtime options and registry tables keep their own keys
                    let keep = matches!(
                        k.as_str(),
                        "options" | "runtimes" | "mirrors" | "configs" | "auths" | "headers"
                    );
                    let v = if k == "runtimes" {
                        match v {
                            serde_json::Value::Object(rs) => serde_json::Value::Object(
                                rs.into_iter().map(|(n, r)| (n, camel(r, false))).collect(),
                            ),
                            other => other,
                        }
                    } else {
                        camel(v, keep)
                    };
                    (json_key(&k), v)
                })
                .collect(),
        ),
        other => other,
    }
}

impl CriConfig {
    /// The config as containerd's `crictl info` shows it: its JSON key
    /// names, plus the directories and endpoint it adds.
    pub fn containerd_json(&self, root: &str, state: &str, endpoint: &str) -> serde_json::Value {
        let mut v = camel(serde_json::to_value(self).unwrap_or_default(), false);
        if let Some(m) = v.as_object_mut() {
            m.insert("containerdRootDir".into(), root.into());
            m.insert("containerdEndpoint".into(), endpoint.into());
            m.insert("rootDir".into(), root.into());
            m.insert("stateDir".into(), state.into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_1_6_section_is_accepted() {
        let text = r#"
            sandbox_image = "127.0.0.1:5000/pause:3.6"
            stream_server_address = "127.0.0.1"
            stream_server_port = "0"
            restrict_oom_score_adj = true
            max_container_log_line_size = 16384
            enable_selinux = false
            [containerd]
              snapshotter = "overlayfs"
              default_runtime_name = "runc"
              [containerd.runtimes.runc]
                runtime_type = "io.containerd.runc.v2"
                [containerd.runtimes.runc.options]
                  SystemdCgroup = false
                  BinaryName = "runc"
            [cni]
              bin_dir = "/usr/lib/cni"
              conf_dir = "/etc/cni/net.d"
            [registry]
              config_path = "/etc/containerd/certs.d"
        "#;
        let c: CriConfig = toml::from_str(text).unwrap();
        assert!(c.restrict_oom_score_adj);
        assert_eq!(c.cni.bin_dir, "/usr/lib/cni");
        let (name, rt) = c.runtime("").unwrap();
        assert_eq!(name, "runc");
        assert_eq!(rt.runtime_type, "io.containerd.runc.v2");
        assert_eq!(rt.options["BinaryName"].as_str(), Some("runc"));
        assert!(c.runtime("kata").is_err());
    }

    #[test]
    fn settings_that_cannot_be_honoured_are_refused() {
        assert!(CriConfig::default().check_supported().is_ok());
        let c: CriConfig =
            toml::from_str("[registry.mirrors.\"docker.io\"]\nendpoint = [\"https://m\"]\n")
                .unwrap();
        assert!(c.check_supported().unwrap_err().contains("config_path"));
        let c: CriConfig =
            toml::from_str("[containerd]\ndefault_runtime_name = \"kata\"\n").unwrap();
        assert!(c.check_supported().unwrap_err().contains("kata"));
    }

    #[test]
    fn info_json_uses_containerd_names() {
        let c: CriConfig = toml::from_str(
            "sandbox_image = \"p:1\"\nrestrict_oom_score_adj = true\n[cni]\nbin_dir = \"/b\"\n[containerd.runtimes.runc.options]\nBinaryName = \"runc\"\n",
        )
        .unwrap();
        let v = c.containerd_json("/r", "/s", "/sock");
        assert_eq!(v["sandboxImage"], "p:1");
        assert_eq!(v["restrictOOMScoreAdj"], true);
        assert_eq!(v["cni"]["binDir"], "/b");
        assert_eq!(v["containerd"]["defaultRuntimeName"], "runc");
        assert_eq!(
            v["containerd"]["runtimes"]["runc"]["options"]["BinaryName"],
            "runc"
        );
        assert_eq!(
            v["containerd"]["runtimes"]["runc"]["runtimeType"],
            "io.containerd.runc.v2"
        );
        assert_eq!(v["stateDir"], "/s");
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<CriConfig>("sandbox_imag = \"x\"").is_err());
    }
}
