//! stevedored's TOML configuration. Every field is optional; unknown keys are
//! an error naming the key; plugin sections are checked against the plugins'
//! own config types.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use stevedore_plugin::Registry;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/stevedore/config.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Config format version (containerd's is 2).
    pub version: u32,
    /// Persistent data.
    pub root: PathBuf,
    /// Volatile state (sockets, bundles).
    pub state: PathBuf,
    /// Plugins (`type.id`) not to initialise.
    pub disabled_plugins: Vec<String>,
    /// Plugins (`type.id`) whose failure stops the daemon.
    pub required_plugins: Vec<String>,
    pub grpc: GrpcConfig,
    pub ttrpc: TtrpcConfig,
    pub debug: DebugConfig,
    pub metrics: MetricsConfig,
    /// Per-plugin sections keyed by `type.id`.
    pub plugins: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    pub address: PathBuf,
    /// Owner of the socket.
    pub uid: u32,
    /// Group of the socket (members may use the API; mode is 0660).
    pub gid: u32,
}

/// The ttrpc socket shims forward events to (containerd's `[ttrpc]`). An
/// empty address means `<grpc address>.ttrpc` with the gRPC socket's owner and
/// group, as containerd does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtrpcConfig {
    pub address: PathBuf,
    /// Owner of the socket.
    pub uid: u32,
    /// Group of the socket (mode is 0660).
    pub gid: u32,
}

/// containerd's `[debug]`: logging, and the debug endpoint (pprof
/// profiles, thread dump, runtime log level).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugConfig {
    /// The debug endpoint: an absolute path is a unix socket (mode 0660),
    /// anything else a TCP `host:port`; empty serves none.
    pub address: String,
    /// Owner of the debug socket (default: the gRPC socket's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group of the debug socket (default: the gRPC socket's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// trace, debug, info, warn or error.
    pub level: String,
    /// text or json.
    pub format: String,
}

/// containerd's `[metrics]`: Prometheus' text format at `/v1/metrics`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A TCP `host:port` (as containerd), or an absolute path for a unix
    /// socket (mode 0660, the gRPC socket's owner and group); empty serves
    /// none.
    pub address: String,
    /// Also record gRPC handling-time histograms
    /// (`grpc_server_handling_seconds`), as containerd's option does.
    pub grpc_histogram: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 2,
            root: "/var/lib/stevedore".into(),
            state: "/run/stevedore".into(),
            disabled_plugins: Vec::new(),
            required_plugins: Vec::new(),
            grpc: GrpcConfig::default(),
            ttrpc: TtrpcConfig::default(),
            debug: DebugConfig::default(),
            metrics: MetricsConfig::default(),
            plugins: BTreeMap::new(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            address: "/run/stevedore/stevedore.sock".into(),
            uid: 0,
            gid: 0,
        }
    }
}

impl Default for DebugConfig {
    fn default() -> Self {
        DebugConfig {
            address: String::new(),
            uid: None,
            gid: None,
            level: "info".into(),
            format: "text".into(),
        }
    }
}

impl Config {
    /// Parse config text, then check plugin sections against the registry.
    pub fn parse(text: &str, origin: &str, registry: &Registry) -> Result<Config> {
        let cfg: Config =
            toml::from_str(text).with_context(|| format!("invalid config {origin}"))?;
        if cfg.version != 2 {
            bail!(
                "invalid config {origin}: version {} is not supported (use version = 2)",
                cfg.version
            );
        }
        cfg.check_plugins(origin, registry)?;
        Ok(cfg)
    }

    /// The ttrpc socket's path, owner and group: containerd's defaulting
    /// (`<grpc address>.ttrpc`, the gRPC socket's ids) when no address is set.
    pub fn ttrpc_socket(&self) -> (PathBuf, u32, u32) {
        if self.ttrpc.address.as_os_str().is_empty() {
            let mut p = self.grpc.address.clone().into_os_string();
            p.push(".ttrpc");
            (p.into(), self.grpc.uid, self.grpc.gid)
        } else {
            (self.ttrpc.address.clone(), self.ttrpc.uid, self.ttrpc.gid)
        }
    }

    /// The debug socket's owner and group: its own, else the gRPC socket's.
    pub fn debug_ids(&self) -> (u32, u32) {
        (
            self.debug.uid.unwrap_or(self.grpc.uid),
            self.debug.gid.unwrap_or(self.grpc.gid),
        )
    }

    /// Load from a file; a missing file at the default path means defaults.
    pub fn load(path: &Path, explicit: bool, registry: &Registry) -> Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, &path.display().to_string(), registry),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                Ok(Config::default())
            }
            Err(e) => Err(e).with_context(|| format!("read config {}", path.display())),
        }
    }

    fn check_plugins(&self, origin: &str, registry: &Registry) -> Result<()> {
        let known: BTreeMap<String, _> = registry
            .registrations()
            .iter()
            .map(|r| (r.uri(), r.config))
            .collect();
        for name in self.disabled_plugins.iter().chain(&self.required_plugins) {
            if !known.contains_key(name) {
                bail!("invalid config {origin}: unknown plugin {name:?} (plugins are named type.id, e.g. io.containerd.snapshotter.v1.btrfs)");
            }
        }
        for (name, section) in &self.plugins {
            match known.get(name) {
                None => {
                    bail!("invalid config {origin}: unknown key plugins.{name:?}: no such plugin")
                }
                Some(None) => {
                    bail!("invalid config {origin}: plugin {name:?} takes no configuration")
                }
                Some(Some(spec)) => (spec.validate)(section).map_err(|e| {
                    anyhow::anyhow!("invalid config {origin}: plugins.{name:?}: {e}")
                })?,
            }
        }
        Ok(())
    }

    /// The full default config, with every configurable plugin's defaults.
    pub fn default_toml(registry: &Registry) -> String {
        let mut cfg = Config::default();
        for r in registry.registrations() {
            if let Some(spec) = r.config {
                cfg.plugins.insert(r.uri(), (spec.default)());
            }
        }
        toml::to_string_pretty(&cfg).expect("config serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg() -> Registry {
        stevedore_services::registry::plugins()
    }

    #[test]
    fn empty_config_is_default() {
        let c = Config::parse("", "test", &reg()).unwrap();
        assert_eq!(c.root, PathBuf::from("/var/lib/stevedore"));
        assert_eq!(
            c.grpc.address,
            PathBuf::from("/run/stevedore/stevedore.sock")
        );
    }

    #[test]
    fn ttrpc_socket_defaults_to_the_grpc_socket_and_its_ids() {
        let c = Config::parse(
            "[grpc]\naddress = \"/r/s.sock\"\nuid = 5\ngid = 7",
            "t",
            &reg(),
        )
        .unwrap();
        assert_eq!(c.ttrpc_socket(), (PathBuf::from("/r/s.sock.ttrpc"), 5, 7));
        let c = Config::parse(
            "[grpc]\ngid = 7\n[ttrpc]\naddress = \"/x/t.sock\"\nuid = 1\ngid = 2",
            "t",
            &reg(),
        )
        .unwrap();
        assert_eq!(c.ttrpc_socket(), (PathBuf::from("/x/t.sock"), 1, 2));
        assert!(Config::parse("[ttrpc]\nmode = 1", "t", &reg()).is_err());
    }

    #[test]
    fn debug_and_metrics_sections_take_containerds_keys() {
        let c = Config::parse(
            "[grpc]\ngid = 7\n[debug]\naddress = \"/r/debug.sock\"\nlevel = \"debug\"\n\
             [metrics]\naddress = \"127.0.0.1:1338\"\ngrpc_histogram = true",
            "t",
            &reg(),
        )
        .unwrap();
        assert_eq!(c.debug.address, "/r/debug.sock");
        assert_eq!(c.debug_ids(), (0, 7));
        assert_eq!(c.metrics.address, "127.0.0.1:1338");
        assert!(c.metrics.grpc_histogram);
        let c = Config::parse("[debug]\nuid = 3\ngid = 4", "t", &reg()).unwrap();
        assert_eq!(c.debug_ids(), (3, 4));
        assert!(Config::parse("[metrics]\nadress = \"x\"", "t", &reg()).is_err());
    }

    #[test]
    fn default_config_round_trips() {
        let text = Config::default_toml(&reg());
        let c = Config::parse(&text, "default", &reg()).unwrap();
        assert_eq!(c.state, PathBuf::from("/run/stevedore"));
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::parse("rooot = \"/x\"", "t", &reg()).unwrap_err();
        assert!(format!("{e:#}").contains("rooot"), "{e:#}");
        let e = Config::parse("[grpc]\naddres = \"/x\"", "t", &reg()).unwrap_err();
        assert!(format!("{e:#}").contains("addres"), "{e:#}");
        let e = Config::parse("[plugins.\"io.nope.v1.x\"]\na = 1", "t", &reg()).unwrap_err();
        assert!(format!("{e:#}").contains("io.nope.v1.x"), "{e:#}");
        let e = Config::parse("disabled_plugins = [\"btrfs\"]", "t", &reg()).unwrap_err();
        assert!(
            format!("{e:#}").contains("unknown plugin \"btrfs\""),
            "{e:#}"
        );
    }

    #[test]
    fn bad_types_and_versions_are_errors() {
        assert!(Config::parse("root = 3", "t", &reg()).is_err());
        assert!(Config::parse("version = 1", "t", &reg()).is_err());
        let ok = Config::parse(
            "disabled_plugins = [\"io.containerd.snapshotter.v1.btrfs\"]",
            "t",
            &reg(),
        )
        .unwrap();
        assert_eq!(ok.disabled_plugins.len(), 1);
    }
}
