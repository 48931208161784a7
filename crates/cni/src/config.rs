//! CNI network configurations and containerd's rules for finding them.
//!
//! `conf_dir` is read like go-cni's `loadFromConfDir` (which containerd's CRI
//! uses): files ending in `.conf`, `.conflist` or `.json` (directories
//! skipped), sorted by name; `.conflist` files are network lists, the others
//! single-plugin configs that become one-plugin lists; the first `max_conf_num`
//! usable ones are the pod networks (interfaces eth0, eth1, ...). One
//! divergence: go-cni stops at the first broken file, we skip it and name it
//! in the error if nothing usable is left, so one stray file next to a good
//! one does not take the node's network down. A missing or empty directory
//! is containerd's "no network config found" error.
//!
//! Config files are hostile input: each is read up to [`MAX_CONFIG_SIZE`],
//! parsed without panics, and every value that later becomes a path (plugin
//! type, network name) is checked here.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The largest config file we read (they are a few hundred bytes in practice).
pub const MAX_CONFIG_SIZE: u64 = 1 << 20;

/// The loopback network containerd's CRI sets up before the pod network
/// (go-cni's `WithLoNetwork`, same name and version).
pub const LOOPBACK_CONFLIST: &str =
    r#"{"cniVersion":"0.3.1","name":"cni-loopback","plugins":[{"type":"loopback"}]}"#;

/// One plugin's entry in a network list.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    /// `type`: the binary to run.
    pub plugin_type: String,
    /// `name`, if the entry has one (list entries usually do not).
    pub name: Option<String>,
    /// `capabilities`: which runtime capability args the plugin wants.
    pub capabilities: BTreeMap<String, bool>,
    /// The entry as written, passed on to the plugin (with injected keys).
    pub raw: Map<String, Value>,
}

/// A network: a named list of plugins run in order (a `.conflist`).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    /// `cniVersion` as written ("" when absent, which the spec reads as 0.1.0).
    pub cni_version: String,
    /// `disableCheck`: CHECK is a no-op for this network.
    pub disable_check: bool,
    pub plugins: Vec<PluginConfig>,
    /// The list as JSON (kept in the result cache like libcni keeps it).
    pub bytes: Vec<u8>,
    /// Where it came from: a file path, or a description.
    pub origin: String,
}

impl NetworkConfigList {
    /// Parse a network list (`.conflist` format).
    pub fn from_conflist_bytes(bytes: &[u8], origin: &str) -> Result<NetworkConfigList> {
        let invalid = |reason: String| Error::InvalidConfig {
            origin: origin.to_string(),
            reason,
        };
        let raw: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("error parsing configuration list: {e}")))?;
        let name = match raw.get("name") {
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(invalid("invalid name type".into())),
            None => return Err(invalid("error parsing configuration list: no name".into())),
        };
        validate_name(&name).map_err(|r| invalid(format!("network name {name:?}: {r}")))?;
        let cni_version = match raw.get("cniVersion") {
            Some(Value::String(s)) => s.clone(),
            None => String::new(),
            Some(_) => return Err(invalid("invalid cniVersion type".into())),
        };
        Version::parse(&cni_version).map_err(|r| invalid(format!("cniVersion: {r}")))?;
        let disable_check = match raw.get("disableCheck") {
            Some(Value::Bool(b)) => *b,
            None => false,
            Some(_) => return Err(invalid("invalid disableCheck type".into())),
        };
        let plugins = match raw.get("plugins") {
            Some(Value::Array(a)) if a.is_empty() => {
                return Err(invalid("no plugins in list".into()))
            }
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid("invalid 'plugins' type".into())),
            None => return Err(invalid("no 'plugins' key".into())),
        };
        let plugins = plugins
            .iter()
            .enumerate()
            .map(|(i, p)| match p {
                Value::Object(m) => PluginConfig::from_map(m.clone())
                    .map_err(|r| invalid(format!("plugin {i}: {r}"))),
                _ => Err(invalid(format!("plugin {i}: not a JSON object"))),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins,
            bytes: bytes.to_vec(),
            origin: origin.to_string(),
        })
    }

    /// Parse a single-plugin config (`.conf`/`.json` format) as a one-plugin list.
    pub fn from_conf_bytes(bytes: &[u8], origin: &str) -> Result<NetworkConfigList> {
        let invalid = |reason: String| Error::InvalidConfig {
            origin: origin.to_string(),
            reason,
        };
        let raw: Map<String, Value> = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("error parsing configuration: {e}")))?;
        // go-cni: a conf must name its plugin type (this also catches a
        // conflist saved under a .conf name).
        if !matches!(raw.get("type"), Some(Value::String(t)) if !t.is_empty()) {
            return Err(invalid("network type not found".into()));
        }
        let name = raw.get("name").cloned().unwrap_or(Value::Null);
        let version = raw.get("cniVersion").cloned().unwrap_or(Value::Null);
        let mut list = Map::new();
        list.insert("name".into(), name);
        list.insert("cniVersion".into(), version);
        list.insert("plugins".into(), Value::Array(vec![Value::Object(raw)]));
        let list_bytes = serde_json::to_vec(&Value::Object(list))
            .map_err(|e| invalid(format!("converting to a list: {e}")))?;
        Self::from_conflist_bytes(&list_bytes, origin)
    }

    /// Read a config file: `.conflist` as a list, anything else as a single plugin.
    pub fn from_file(path: &Path) -> Result<NetworkConfigList> {
        let origin = path.display().to_string();
        let bytes = read_limited(path).map_err(|reason| Error::InvalidConfig {
            origin: origin.clone(),
            reason,
        })?;
        if path.extension().is_some_and(|e| e == "conflist") {
            Self::from_conflist_bytes(&bytes, &origin)
        } else {
            Self::from_conf_bytes(&bytes, &origin)
        }
    }

    /// containerd's loopback network.
    pub fn loopback() -> NetworkConfigList {
        // A constant that the tests parse; the fallback keeps this panic-free.
        Self::from_conflist_bytes(LOOPBACK_CONFLIST.as_bytes(), "loopback").unwrap_or_else(|_| {
            NetworkConfigList {
                name: "cni-loopback".into(),
                cni_version: "0.3.1".into(),
                disable_check: false,
                plugins: vec![PluginConfig {
                    plugin_type: "loopback".into(),
                    name: None,
                    capabilities: BTreeMap::new(),
                    raw: Map::from_iter([("type".to_string(), Value::from("loopback"))]),
                }],
                bytes: LOOPBACK_CONFLIST.as_bytes().to_vec(),
                origin: "loopback".into(),
            }
        })
    }

    /// The parsed `cniVersion` (0.1.0 when absent).
    pub fn version(&self) -> Version {
        Version::parse(&self.cni_version).unwrap_or(Version(0, 1, 0))
    }
}

impl PluginConfig {
    fn from_map(raw: Map<String, Value>) -> std::result::Result<PluginConfig, String> {
        let plugin_type = match raw.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err("invalid 'type' type".into()),
            None => return Err("missing 'type'".into()),
        };
        validate_plugin_type(&plugin_type)?;
        let name = match raw.get("name") {
            Some(Value::String(n)) => Some(n.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err("invalid 'name' type".into()),
        };
        let capabilities = match raw.get("capabilities") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Bool(b) => Ok((k.clone(), *b)),
                    _ => Err(format!("capability {k:?} is not a boolean")),
                })
                .collect::<std::result::Result<_, _>>()?,
            Some(_) => return Err("invalid 'capabilities' type".into()),
        };
        Ok(PluginConfig {
            plugin_type,
            name,
            capabilities,
            raw,
        })
    }
}

/// A CNI spec version, `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

impl Version {
    /// Parse "1.0.0" (also "0.4" and ""; the empty version is 0.1.0).
    pub fn parse(s: &str) -> std::result::Result<Version, String> {
        if s.is_empty() {
            return Ok(Version(0, 1, 0));
        }
        let mut parts = [0u32; 3];
        let fields: Vec<&str> = s.split('.').collect();
        if fields.len() > 3 {
            return Err(format!("invalid version {s:?}"));
        }
        for (slot, f) in parts.iter_mut().zip(&fields) {
            *slot = f.parse().map_err(|_| format!("invalid version {s:?}"))?;
        }
        Ok(Version(parts[0], parts[1], parts[2]))
    }
}

/// libcni's rule for container ids and network names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub(crate) fn validate_name(s: &str) -> std::result::Result<(), &'static str> {
    let mut chars = s.chars();
    match chars.next() {
        None => return Err("must not be empty"),
        Some(c) if !c.is_ascii_alphanumeric() => return Err("must start with a letter or digit"),
        Some(_) => {}
    }
    if chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        Ok(())
    } else {
        Err("may contain only letters, digits, '_', '.' and '-'")
    }
}

/// libcni's interface name rule (what the kernel accepts).
pub(crate) fn validate_ifname(s: &str) -> std::result::Result<(), &'static str> {
    if s.is_empty() {
        return Err("interface name is empty");
    }
    if s.len() > 15 {
        return Err("interface name is longer than 15 bytes");
    }
    if s == "." || s == ".." {
        return Err("interface name is . or ..");
    }
    if s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err("interface name contains / or : or whitespace");
    }
    Ok(())
}

/// A plugin type names a file in a plugin directory: no separators, no dot names.
fn validate_plugin_type(t: &str) -> std::result::Result<(), String> {
    if t.is_empty() || t == "." || t == ".." || t.contains('/') || t.contains('\0') {
        return Err(format!("invalid plugin type {t:?}"));
    }
    Ok(())
}

fn read_limited(path: &Path) -> std::result::Result<Vec<u8>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("error reading: {e}"))?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("error reading: {e}"))?;
    if bytes.len() as u64 > MAX_CONFIG_SIZE {
        return Err(format!("larger than {MAX_CONFIG_SIZE} bytes"));
    }
    Ok(bytes)
}

/// The config files of `dir` that go-cni considers, sorted by name.
pub fn config_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(Error::ReadConfDir {
                dir: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadConfDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let path = entry.path();
        let wanted = path
            .extension()
            .is_some_and(|e| e == "conf" || e == "conflist" || e == "json");
        if !wanted || entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Load the pod networks from `dir`: the first `max` usable configs (all of
/// them when `max` is 0).
pub fn load_dir(dir: &Path, max: usize) -> Result<Vec<NetworkConfigList>> {
    let files = config_files(dir)?;
    if files.is_empty() {
        return Err(Error::NoNetworkConfig {
            dir: dir.to_path_buf(),
        });
    }
    let mut networks = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match NetworkConfigList::from_file(&file) {
            Ok(list) => networks.push(list),
            Err(e) => problems.push(e.to_string()),
        }
        if max > 0 && networks.len() == max {
            break;
        }
    }
    if networks.is_empty() {
        return Err(Error::NoValidNetworkConfig {
            dir: dir.to_path_buf(),
            problems: problems.join("; "),
        });
    }
    Ok(networks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_becomes_a_one_plugin_list() {
        let l = NetworkConfigList::from_conf_bytes(
            br#"{"cniVersion":"1.0.0","name":"n1","type":"bridge","bridge":"cni0","capabilities":{"portMappings":true}}"#,
            "x.conf",
        )
        .unwrap();
        assert_eq!(l.name, "n1");
        assert_eq!(l.cni_version, "1.0.0");
        assert_eq!(l.plugins.len(), 1);
        assert_eq!(l.plugins[0].plugin_type, "bridge");
        assert_eq!(l.plugins[0].raw["bridge"], "cni0");
        assert!(l.plugins[0].capabilities["portMappings"]);
    }

    #[test]
    fn rejects_hostile_configs_without_panicking() {
        for (bytes, want) in [
            (&b"not json"[..], "error parsing"),
            (br#"[]"#, "error parsing"),
            (br#"{"name":"n","plugins":[]}"#, "no plugins"),
            (br#"{"name":"n"}"#, "no 'plugins'"),
            (br#"{"plugins":[{"type":"x"}]}"#, "no name"),
            (
                br#"{"name":"../etc","plugins":[{"type":"x"}]}"#,
                "network name",
            ),
            (
                br#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "invalid plugin type",
            ),
            (br#"{"name":"n","plugins":[{"type":7}]}"#, "'type' type"),
            (
                br#"{"name":"n","plugins":[{"name":"x"}]}"#,
                "missing 'type'",
            ),
            (br#"{"name":"n","plugins":[3]}"#, "not a JSON object"),
            (
                br#"{"name":"n","cniVersion":"one","plugins":[{"type":"x"}]}"#,
                "invalid version",
            ),
            (
                br#"{"name":"n","plugins":[{"type":"x","capabilities":{"a":1}}]}"#,
                "not a boolean",
            ),
            (
                br#"{"name":"n","disableCheck":"yes","plugins":[{"type":"x"}]}"#,
                "disableCheck",
            ),
        ] {
            let e = NetworkConfigList::from_conflist_bytes(bytes, "f.conflist").unwrap_err();
            assert!(e.to_string().contains(want), "{e} should contain {want}");
            assert!(e.to_string().contains("f.conflist"), "{e}");
        }
        let e =
            NetworkConfigList::from_conf_bytes(br#"{"name":"n","plugins":[{"type":"x"}]}"#, "c")
                .unwrap_err();
        assert!(e.to_string().contains("network type not found"), "{e}");
    }

    #[test]
    fn loopback_is_containerds() {
        let l = NetworkConfigList::loopback();
        assert_eq!(l.name, "cni-loopback");
        assert_eq!(l.cni_version, "0.3.1");
        assert_eq!(l.plugins[0].plugin_type, "loopback");
        assert_eq!(
            NetworkConfigList::from_conflist_bytes(LOOPBACK_CONFLIST.as_bytes(), "loopback")
                .unwrap(),
            l
        );
    }

    #[test]
    fn versions_compare_numerically() {
        assert!(Version::parse("0.10.0").unwrap() > Version::parse("0.4.0").unwrap());
        assert_eq!(Version::parse("").unwrap(), Version(0, 1, 0));
        assert_eq!(Version::parse("1.0").unwrap(), Version(1, 0, 0));
        assert!(Version::parse("1.0.0.0").is_err());
        assert!(Version::parse("-1").is_err());
    }

    #[test]
    fn loads_first_valid_config_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("05-broken.conflist"), b"{").unwrap();
        std::fs::write(
            d.join("10-b.conflist"),
            br#"{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(
            d.join("20-a.conf"),
            br#"{"cniVersion":"1.0.0","name":"a","type":"ptp"}"#,
        )
        .unwrap();
        std::fs::write(d.join("00-ignored.txt"), b"{}").unwrap();
        std::fs::create_dir(d.join("00-dir.conf")).unwrap();
        let nets = load_dir(d, 1).unwrap();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].name, "b");
        let nets = load_dir(d, 0).unwrap();
        assert_eq!(
            nets.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
    }

    #[test]
    fn no_config_is_containerds_not_initialized_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = load_dir(dir.path(), 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "cni config load failed: no network config found in {}: cni plugin not initialized: failed to load cni config",
                dir.path().display()
            )
        );
        let e = load_dir(&dir.path().join("missing"), 1).unwrap_err();
        assert!(matches!(e, Error::NoNetworkConfig { .. }), "{e}");
        std::fs::write(dir.path().join("1.conf"), b"{}").unwrap();
        let e = load_dir(dir.path(), 1).unwrap_err();
        assert!(e.is_not_initialized());
        assert!(
            e.to_string().contains("1.conf: network type not found"),
            "{e}"
        );
    }

    #[test]
    fn names_and_interfaces_follow_libcni_rules() {
        assert!(validate_name("abc-1.2_3").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("-a").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("0123456789abcdef").is_err());
        assert!(validate_ifname("a b").is_err());
        assert!(validate_ifname("..").is_err());
    }
}
