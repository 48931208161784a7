//! The crate's one error type. Every message names the network, plugin,
//! file or namespace path, and the operation; `Error::kind` maps it once to
//! stevedore's `ErrorKind` (and from there to a gRPC code at the edge).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use stevedore_types::ErrorKind;

/// What we asked of a plugin (`CNI_COMMAND`), named as libcni names it in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Add,
    Del,
    Check,
    Version,
}

impl Op {
    /// The `CNI_COMMAND` value.
    pub fn command(self) -> &'static str {
        match self {
            Op::Add => "ADD",
            Op::Del => "DEL",
            Op::Check => "CHECK",
            Op::Version => "VERSION",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Add => "add",
            Op::Del => "delete",
            Op::Check => "check",
            Op::Version => "version",
        })
    }
}

/// A crate-wide result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading CNI configs, running plugins or
/// managing network namespaces.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `conf_dir` holds no config file: containerd's exact wording, which the
    /// CRI Status reports as the `NetworkReady=false` reason.
    #[error("cni config load failed: no network config found in {}: cni plugin not initialized: failed to load cni config", dir.display())]
    NoNetworkConfig { dir: PathBuf },
    /// `conf_dir` holds config files, but none of them is usable.
    #[error("cni config load failed: no valid network config found in {} ({problems}): cni plugin not initialized: failed to load cni config", dir.display())]
    NoValidNetworkConfig { dir: PathBuf, problems: String },
    /// `conf_dir` cannot be listed.
    #[error("cni config load failed: failed to read config file: read {}: {source}: failed to load cni config", dir.display())]
    ReadConfDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// One network configuration (a file or bytes) is not valid.
    #[error("invalid cni config {origin}: {reason}")]
    InvalidConfig { origin: String, reason: String },
    /// A caller-supplied value (container id, interface name, pod argument) is not valid.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// A plugin of a network failed (libcni's `plugin type="x" name="y" failed (add): ...`).
    #[error("plugin {plugin} failed ({op}): {source}")]
    Plugin {
        op: Op,
        network: String,
        plugin: PluginDesc,
        source: Box<PluginError>,
    },
    /// Reading, writing or removing a cached ADD result failed.
    #[error("failed to {op} network {network:?} cached result {}: {source}", path.display())]
    Cache {
        op: &'static str,
        network: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// CHECK needs a network configuration of CNI version 0.4.0 or later.
    #[error(
        "network {network:?}: configuration version {version:?} does not support the CHECK command"
    )]
    CheckUnsupported { network: String, version: String },
    /// CHECK needs the ADD result, and there is none cached.
    #[error("network {network:?} has no cached result for container {container_id} interface {ifname} (not set up?)")]
    NoCachedResult {
        network: String,
        container_id: String,
        ifname: String,
    },
    /// Creating, checking or removing a network namespace failed.
    #[error("network namespace {}: {op}: {source}", path.display())]
    NetNs {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Setup failed and so did tearing down what it had set up.
    #[error("{source}; tearing the pod network down after that failed too: {cleanup}")]
    Rollback {
        source: Box<Error>,
        cleanup: Box<Error>,
    },
}

impl Error {
    /// The stevedore error kind (one mapping, used by the services edge).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NoNetworkConfig { .. }
            | Error::NoValidNetworkConfig { .. }
            | Error::ReadConfDir { .. }
            | Error::CheckUnsupported { .. } => ErrorKind::FailedPrecondition,
            Error::InvalidConfig { .. } | Error::InvalidArgument { .. } => {
                ErrorKind::InvalidArgument
            }
            Error::Plugin { source, .. } => source.kind(),
            Error::Cache { .. } => ErrorKind::Unknown,
            Error::NoCachedResult { .. } => ErrorKind::NotFound,
            Error::NetNs { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => ErrorKind::NotFound,
                std::io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                std::io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
                _ => ErrorKind::Unknown,
            },
            Error::Rollback { source, .. } => source.kind(),
        }
    }

    /// True when this is containerd's "cni plugin not initialized" condition
    /// (no usable network config), i.e. the CRI's `NetworkReady=false`.
    pub fn is_not_initialized(&self) -> bool {
        matches!(
            self,
            Error::NoNetworkConfig { .. }
                | Error::NoValidNetworkConfig { .. }
                | Error::ReadConfDir { .. }
        )
    }
}

impl From<Error> for stevedore_types::Error {
    fn from(e: Error) -> Self {
        stevedore_types::Error::new(e.kind(), e.to_string())
    }
}

/// A plugin in an error message: `type="bridge" name="net"` as libcni prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginDesc {
    pub plugin_type: String,
    pub name: Option<String>,
}

impl fmt::Display for PluginDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "type={:?}", self.plugin_type)?;
        if let Some(name) = self.name.as_deref().filter(|n| !n.is_empty()) {
            write!(f, " name={name:?}")?;
        }
        Ok(())
    }
}

/// Why one plugin invocation failed.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// No executable of that name in any plugin directory.
    #[error("failed to find plugin {plugin:?} in path [{}]", join_paths(dirs))]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
    /// The plugin type cannot name a file in a plugin directory.
    #[error("invalid plugin type {plugin:?}: {reason}")]
    InvalidType {
        plugin: String,
        reason: &'static str,
    },
    /// The plugin binary could not be started.
    #[error("exec {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Talking to the running plugin (pipes, wait) failed.
    #[error("{} {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        source: std::io::Error,
    },
    /// The plugin ran longer than the configured timeout and was killed.
    #[error("{} timed out after {timeout:?} and was killed{}", path.display(), stderr_suffix(stderr))]
    Timeout {
        path: PathBuf,
        timeout: Duration,
        stderr: String,
    },
    /// The plugin reported an error (the CNI error JSON on stdout, or only stderr).
    #[error("{msg}{}{}", details_suffix(details), stderr_suffix(stderr))]
    Failed {
        /// The CNI error code (0 when the plugin printed none).
        code: u32,
        msg: String,
        details: String,
        stderr: String,
    },
    /// The plugin exited 0 but its output is not a CNI result.
    #[error("invalid plugin output: {reason}{}", stderr_suffix(stderr))]
    BadOutput { reason: String, stderr: String },
}

impl PluginError {
    fn kind(&self) -> ErrorKind {
        match self {
            PluginError::NotFound { .. } | PluginError::InvalidType { .. } => {
                ErrorKind::FailedPrecondition
            }
            PluginError::Timeout { .. } => ErrorKind::DeadlineExceeded,
            PluginError::Spawn { .. }
            | PluginError::Io { .. }
            | PluginError::Failed { .. }
            | PluginError::BadOutput { .. } => ErrorKind::Unknown,
        }
    }
}

fn join_paths(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!("; {details}")
    }
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {s})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_config_message_is_containerds() {
        let e = Error::NoNetworkConfig {
            dir: "/etc/cni/net.d".into(),
        };
        assert_eq!(
            e.to_string(),
            "cni config load failed: no network config found in /etc/cni/net.d: cni plugin not initialized: failed to load cni config"
        );
        assert!(e.is_not_initialized());
        assert_eq!(e.kind(), ErrorKind::FailedPrecondition);
    }

    #[test]
    fn plugin_failure_names_plugin_and_operation() {
        let e = Error::Plugin {
            op: Op::Add,
            network: "test-net".into(),
            plugin: PluginDesc {
                plugin_type: "bridge".into(),
                name: Some("test-net".into()),
            },
            source: Box::new(PluginError::Failed {
                code: 11,
                msg: "failed to allocate".into(),
                details: "range full".into(),
                stderr: String::new(),
            }),
        };
        assert_eq!(
            e.to_string(),
            "plugin type=\"bridge\" name=\"test-net\" failed (add): failed to allocate; range full"
        );
        let missing = PluginError::NotFound {
            plugin: "nope".into(),
            dirs: vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()],
        };
        assert_eq!(
            missing.to_string(),
            "failed to find plugin \"nope\" in path [/usr/lib/cni /opt/cni/bin]"
        );
    }
}
