//! Registry hosts: which endpoints serve a registry name, in which order, with
//! which capabilities and TLS settings. Same semantics as containerd 1.6
//! (`remotes/docker/config/hosts.go`):
//!
//! On-disk layout (the `--hosts-dir`, e.g. `/etc/containerd/certs.d`):
//! ```text
//! <dir>/<host>_<port>_/hosts.toml   (tried first for "host:port")
//! <dir>/<host[:port]>/hosts.toml
//! <dir>/_default/hosts.toml          (any registry without its own directory)
//! ```
//! A directory without `hosts.toml` is read Docker-style: `*.crt` are CA files,
//! `*.cert` client certificates with an optional matching `*.key`.
//!
//! `hosts.toml`: `server = "https://registry"` (the last, default endpoint) and
//! `[host."https://mirror"]` tables tried first, in file order. Each endpoint may
//! set `capabilities = ["pull","resolve","push"]`, `ca` (path or list, relative
//! to the directory), `client` (path, list of paths, or list of [cert, key]),
//! `skip_verify`, `override_path` and a `[header]` table (string or list).
//! Unlike containerd, a malformed file or an unknown key is an error naming the
//! file and key, rather than a silent fallback.
//!
//! Without a hosts file: `docker.io` maps to `https://registry-1.docker.io/v2`;
//! `localhost` and loopback addresses use plain HTTP (with `skip_verify`) unless
//! the default scheme is `https`; every other host uses the default scheme
//! (`https` unless `--plain-http` asked for `http`).

use std::path::{Path, PathBuf};
use stevedore_types::{Error, Result};
use toml::{Table, Value};

/// What an endpoint may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    /// pull + resolve + push, the default.
    pub const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
}

/// One endpoint serving a registry name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryHost {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]` to connect to.
    pub host: String,
    /// API root path, `/v2` unless `override_path` said otherwise.
    pub path: String,
    pub capabilities: Capabilities,
    /// Extra CA bundles (PEM), absolute paths.
    pub ca_certs: Vec<PathBuf>,
    /// Client certificate files and their key files (None: key in the cert file).
    pub client_pairs: Vec<(PathBuf, Option<PathBuf>)>,
    pub skip_verify: Option<bool>,
    /// Extra headers sent on every request to this endpoint.
    pub headers: Vec<(String, String)>,
}

impl RegistryHost {
    /// The default endpoint for `host` with the given scheme.
    pub fn new(scheme: &str, host: &str) -> Self {
        RegistryHost {
            scheme: scheme.to_string(),
            host: host.to_string(),
            path: "/v2".to_string(),
            capabilities: Capabilities::ALL,
            ca_certs: Vec::new(),
            client_pairs: Vec::new(),
            skip_verify: None,
            headers: Vec::new(),
        }
    }
    /// `scheme://host/path`, the base of every API URL.
    pub fn base_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.path)
    }
}

/// How registry names map to endpoints.
#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    /// The hosts directory (`--hosts-dir`), if any.
    pub hosts_dir: Option<PathBuf>,
    /// `Some("http")` for `--plain-http`; None means https (http for localhost).
    pub default_scheme: Option<String>,
}

/// Whether `host` (with or without port) is localhost or a loopback address.
pub fn is_localhost(host: &str) -> bool {
    let h = split_port(host);
    if h == "localhost" {
        return true;
    }
    let h = h.trim_start_matches('[').trim_end_matches(']');
    h.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn split_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// The endpoints for registry name `host`, mirrors first, default last.
pub fn configure_hosts(host: &str, options: &HostOptions) -> Result<Vec<RegistryHost>> {
    let mut hosts: Option<Vec<RegistryHost>> = None;
    if let Some(root) = &options.hosts_dir {
        if let Some(dir) = host_dir(root, host)? {
            hosts = Some(load_host_dir(&dir)?);
        }
    }
    let mut hosts = hosts.unwrap_or_else(|| vec![RegistryHost::default()]);
    if let Some(last) = hosts.last_mut() {
        if last.host.is_empty() {
            let h = last;
            if host == "docker.io" {
                h.scheme = "https".into();
                h.host = crate::reference::DOCKER_HUB_HOST.into();
            } else if is_localhost(host) {
                h.host = host.into();
                match options.default_scheme.as_deref() {
                    None | Some("") | Some("http") => {
                        h.scheme = "http".into();
                        h.skip_verify = Some(true);
                    }
                    Some(s) => h.scheme = s.into(),
                }
            } else {
                h.host = host.into();
                h.scheme = match options.default_scheme.as_deref() {
                    None | Some("") => "https".into(),
                    Some(s) => s.into(),
                };
            }
            h.path = "/v2".into();
            h.capabilities = Capabilities::ALL;
        }
    }
    Ok(hosts)
}

/// The directory configuring `host` under `root`, as containerd's `HostDirFromRoot`.
pub fn host_dir(root: &Path, host: &str) -> Result<Option<PathBuf>> {
    let mut candidates = Vec::new();
    if let Some(idx) = host.rfind(':').filter(|&i| i > 0) {
        candidates.push(root.join(format!("{}_{}_", &host[..idx], &host[idx + 1..])));
    }
    candidates.push(root.join(host));
    candidates.push(root.join("_default"));
    for p in candidates {
        match std::fs::metadata(&p) {
            Ok(_) => return Ok(Some(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::from(e).context(format!("stat hosts directory {}", p.display())))
            }
        }
    }
    Ok(None)
}

fn load_host_dir(dir: &Path) -> Result<Vec<RegistryHost>> {
    let file = dir.join("hosts.toml");
    match std::fs::read_to_string(&file) {
        Ok(text) if !text.is_empty() => parse_hosts_file(dir, &file, &text),
        Ok(_) => load_cert_files(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => load_cert_files(dir),
        Err(e) => Err(Error::from(e).context(format!("read {}", file.display()))),
    }
}

fn load_cert_files(dir: &Path) -> Result<Vec<RegistryHost>> {
    let mut host = RegistryHost::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![host]),
        Err(e) => return Err(Error::from(e).context(format!("read directory {}", dir.display()))),
    };
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let e =
            e.map_err(|e| Error::from(e).context(format!("read directory {}", dir.display())))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    for name in names {
        if name.ends_with(".crt") {
            host.ca_certs.push(dir.join(&name));
        }
        if let Some(stem) = name.strip_suffix(".cert") {
            let key = dir.join(format!("{stem}.key"));
            let key = key.exists().then_some(key);
            host.client_pairs.push((dir.join(&name), key));
        }
    }
    Ok(vec![host])
}

const HOST_KEYS: &[&str] = &[
    "capabilities",
    "ca",
    "client",
    "skip_verify",
    "header",
    "override_path",
];

/// Parse the text of `file` (a `hosts.toml` in `dir`): the `[host."..."]` endpoints in
/// file order, then the `server` endpoint (empty `host` when `server` is unset, to be
/// filled with the registry's default).
pub fn parse_hosts_file(dir: &Path, file: &Path, text: &str) -> Result<Vec<RegistryHost>> {
    let fail = |msg: String| Error::invalid(format!("hosts file {}: {msg}", file.display()));
    let table: Table = text
        .parse::<Table>()
        .map_err(|e| fail(format!("invalid TOML: {}", e.message())))?;
    for key in table.keys() {
        if !HOST_KEYS.contains(&key.as_str()) && key != "server" && key != "host" {
            return Err(fail(format!("unknown key {key:?}")));
        }
    }
    let mut out = Vec::new();
    if let Some(hosts) = table.get("host") {
        let hosts = hosts.as_table().ok_or_else(|| {
            fail("key \"host\" must be a table of [host.\"<url>\"] tables".into())
        })?;
        for (url, cfg) in hosts {
            let cfg = cfg
                .as_table()
                .ok_or_else(|| fail(format!("key host.{url:?} must be a table")))?;
            let prefix = format!("host.{url:?}.");
            for key in cfg.keys() {
                if !HOST_KEYS.contains(&key.as_str()) {
                    return Err(fail(format!("unknown key {prefix}{key}")));
                }
            }
            out.push(parse_host_config(Some(url), dir, cfg, &prefix).map_err(fail)?);
        }
    }
    let server = match table.get("server") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(fail("key \"server\" must be a string".into())),
    };
    out.push(parse_host_config(server.filter(|s| !s.is_empty()), dir, &table, "").map_err(fail)?);
    Ok(out)
}

fn parse_host_config(
    server: Option<&str>,
    dir: &Path,
    cfg: &Table,
    prefix: &str,
) -> std::result::Result<RegistryHost, String> {
    let mut h = RegistryHost::default();
    let override_path = match cfg.get("override_path") {
        None => false,
        Some(Value::Boolean(b)) => *b,
        Some(_) => return Err(format!("key {prefix}override_path must be a boolean")),
    };
    if let Some(server) = server {
        let with_scheme = if server.starts_with("http") {
            server.to_string()
        } else {
            format!("https://{server}")
        };
        let u = url::Url::parse(&with_scheme)
            .map_err(|e| format!("unable to parse server {with_scheme:?}: {e}"))?;
        h.scheme = u.scheme().to_string();
        h.host = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        };
        if h.host.is_empty() {
            return Err(format!("server {server:?} has no host"));
        }
        let path = clean_path(u.path());
        h.path = if path.is_empty() || path == "/" {
            if override_path {
                String::new()
            } else {
                "/v2".into()
            }
        } else if !path.ends_with("/v2") && !override_path {
            format!("{path}/v2")
        } else {
            path
        };
    }
    h.skip_verify = match cfg.get("skip_verify") {
        None => None,
        Some(Value::Boolean(b)) => Some(*b),
        Some(_) => return Err(format!("key {prefix}skip_verify must be a boolean")),
    };
    h.capabilities = match cfg.get("capabilities") {
        None => Capabilities::ALL,
        Some(Value::Array(a)) if a.is_empty() => Capabilities::ALL,
        Some(Value::Array(a)) => {
            let mut c = Capabilities::default();
            for v in a {
                match v.as_str().map(str::to_lowercase).as_deref() {
                    Some("pull") => c.pull = true,
                    Some("resolve") => c.resolve = true,
                    Some("push") => c.push = true,
                    _ => return Err(format!("key {prefix}capabilities: unknown capability {v}")),
                }
            }
            c
        }
        Some(_) => {
            return Err(format!(
                "key {prefix}capabilities must be a list of strings"
            ))
        }
    };
    let abs = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    match cfg.get("ca") {
        None => {}
        Some(Value::String(s)) => h.ca_certs.push(abs(s)),
        Some(Value::Array(a)) => {
            for v in a {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("key {prefix}ca: {v} is not a string"))?;
                h.ca_certs.push(abs(s));
            }
        }
        Some(v) => return Err(format!("key {prefix}ca: invalid type {}", v.type_str())),
    }
    match cfg.get("client") {
        None => {}
        Some(Value::String(s)) => h.client_pairs.push((abs(s), None)),
        Some(Value::Array(a)) => {
            for v in a {
                match v {
                    Value::String(s) => h.client_pairs.push((abs(s), None)),
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::String(c), Value::String(k)] => h
                            .client_pairs
                            .push((abs(c), (!k.is_empty()).then(|| abs(k)))),
                        _ => return Err(format!("key {prefix}client: invalid pair {v}")),
                    },
                    _ => return Err(format!("key {prefix}client: invalid type {}", v.type_str())),
                }
            }
        }
        Some(v) => return Err(format!("key {prefix}client: invalid type {}", v.type_str())),
    }
    match cfg.get("header") {
        None => {}
        Some(Value::Table(t)) => {
            for (k, v) in t {
                match v {
                    Value::String(s) => h.headers.push((k.clone(), s.clone())),
                    Value::Array(a) => {
                        for item in a {
                            let s = item.as_str().ok_or_else(|| {
                                format!("key {prefix}header.{k}: {item} is not a string")
                            })?;
                            h.headers.push((k.clone(), s.to_string()));
                        }
                    }
                    _ => {
                        return Err(format!(
                            "key {prefix}header.{k}: invalid type {}",
                            v.type_str()
                        ))
                    }
                }
            }
        }
        Some(_) => return Err(format!("key {prefix}header must be a table")),
    }
    Ok(h)
}

/// Lexical cleanup of a URL path as Go's `path.Clean` (enough for API roots).
fn clean_path(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    if parts.is_empty() {
        if p.is_empty() {
            String::new()
        } else {
            "/".into()
        }
    } else {
        format!("/{}", parts.join("/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_types::ErrorKind;

    fn parse(text: &str) -> Result<Vec<RegistryHost>> {
        parse_hosts_file(
            Path::new("/etc/certs.d/docker.io"),
            Path::new("/etc/certs.d/docker.io/hosts.toml"),
            text,
        )
    }

    // The example of containerd's docs/hosts.md and hosts_test.go.
    #[test]
    fn parses_containerd_documented_example_in_order() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://noprefixnoncompliant.registry"]
  override_path = true

[host."https://onlyprefix.registry/api"]

[host."https://nonstandard.registry/v2/api"]
  override_path = true
"#;
        let hosts = parse(text).unwrap();
        let urls: Vec<String> = hosts.iter().map(|h| h.base_url()).collect();
        assert_eq!(
            urls,
            [
                "https://mirror.registry/v2",
                "https://mirror-bak.registry/us/v2",
                "http://mirror.registry/v2",
                "https://test-1.registry/v2",
                "https://test-2.registry/v2",
                "https://test-3.registry/v2",
                "https://noprefixnoncompliant.registry",
                "https://onlyprefix.registry/api/v2",
                "https://nonstandard.registry/v2/api",
                "https://registry-1.docker.io/v2",
            ]
        );
        let pull_only = Capabilities {
            pull: true,
            ..Default::default()
        };
        assert_eq!(hosts[0].capabilities, pull_only);
        assert_eq!(hosts[0].ca_certs, [PathBuf::from("/etc/certs/mirror.pem")]);
        assert_eq!(hosts[0].skip_verify, Some(false));
        assert_eq!(
            hosts[0].headers,
            [
                ("x-custom-2".to_string(), "value1".to_string()),
                ("x-custom-2".to_string(), "value2".to_string())
            ]
        );
        assert_eq!(hosts[1].skip_verify, Some(true));
        assert_eq!(hosts[3].capabilities, Capabilities::ALL);
        assert_eq!(hosts[3].ca_certs.len(), 2);
        assert_eq!(
            hosts[3].client_pairs,
            [
                (
                    PathBuf::from("/etc/certs/client.cert"),
                    Some(PathBuf::from("/etc/certs/client.key"))
                ),
                (PathBuf::from("/etc/certs/client.pem"), None),
            ]
        );
        assert_eq!(
            hosts[4].client_pairs,
            [(PathBuf::from("/etc/certs/client.pem"), None)]
        );
        assert_eq!(hosts[5].client_pairs.len(), 2);
        assert_eq!(hosts[9].capabilities, Capabilities::ALL);
    }

    #[test]
    fn relative_ca_paths_are_joined_to_the_host_directory() {
        let hosts = parse("ca = \"ca.crt\"\n").unwrap();
        assert_eq!(hosts.len(), 1);
        assert_eq!(
            hosts[0].host, "",
            "no server: filled with the registry default"
        );
        assert_eq!(
            hosts[0].ca_certs,
            [PathBuf::from("/etc/certs.d/docker.io/ca.crt")]
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_name_file_and_key() {
        let e = parse("sever = \"x\"\n").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(
            e.message.contains("/etc/certs.d/docker.io/hosts.toml"),
            "{}",
            e.message
        );
        assert!(e.message.contains("unknown key \"sever\""), "{}", e.message);
        let e = parse("[host.\"https://m\"]\ncapabilites = [\"pull\"]\n").unwrap_err();
        assert!(
            e.message.contains("host.\"https://m\".capabilites"),
            "{}",
            e.message
        );
        let e = parse("[host.\"https://m\"]\ncapabilities = [\"fly\"]\n").unwrap_err();
        assert!(
            e.message.contains("unknown capability \"fly\""),
            "{}",
            e.message
        );
        let e = parse("skip_verify = \"yes\"\n").unwrap_err();
        assert!(
            e.message.contains("skip_verify must be a boolean"),
            "{}",
            e.message
        );
        let e = parse("server = [\n").unwrap_err();
        assert!(e.message.contains("invalid TOML"), "{}", e.message);
    }

    #[test]
    fn defaults_match_containerd_without_hosts_dir() {
        let o = HostOptions::default();
        let h = configure_hosts("docker.io", &o).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "https://registry-1.docker.io/v2");
        let h = configure_hosts("127.0.0.1:5000", &o).unwrap();
        assert_eq!(h[0].base_url(), "http://127.0.0.1:5000/v2");
        assert_eq!(h[0].skip_verify, Some(true));
        let h = configure_hosts("localhost", &o).unwrap();
        assert_eq!(h[0].base_url(), "http://localhost/v2");
        let h = configure_hosts("example.com:5000", &o).unwrap();
        assert_eq!(h[0].base_url(), "https://example.com:5000/v2");
        let plain = HostOptions {
            default_scheme: Some("http".into()),
            ..Default::default()
        };
        let h = configure_hosts("example.com:5000", &plain).unwrap();
        assert_eq!(h[0].base_url(), "http://example.com:5000/v2");
        let https = HostOptions {
            default_scheme: Some("https".into()),
            ..Default::default()
        };
        let h = configure_hosts("localhost:5000", &https).unwrap();
        assert_eq!(h[0].base_url(), "https://localhost:5000/v2");
        assert!(is_localhost("[::1]:5000"));
        assert!(!is_localhost("10.0.0.1:5000"));
    }

    #[test]
    fn hosts_dir_lookup_prefers_port_directory_then_host_then_default() {
        let root = tempfile::tempdir().unwrap();
        let opts = HostOptions {
            hosts_dir: Some(root.path().to_path_buf()),
            default_scheme: None,
        };
        // no directory at all: defaults
        let h = configure_hosts("r.example:5000", &opts).unwrap();
        assert_eq!(h[0].base_url(), "https://r.example:5000/v2");
        std::fs::create_dir(root.path().join("_default")).unwrap();
        std::fs::write(
            root.path().join("_default/hosts.toml"),
            "[host.\"http://fallback:1\"]\ncapabilities=[\"pull\",\"resolve\"]\n",
        )
        .unwrap();
        let h = configure_hosts("r.example:5000", &opts).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].base_url(), "http://fallback:1/v2");
        assert_eq!(h[1].base_url(), "https://r.example:5000/v2");
        std::fs::create_dir(root.path().join("r.example:5000")).unwrap();
        std::fs::write(
            root.path().join("r.example:5000/hosts.toml"),
            "server = \"http://r.example:5000\"\n",
        )
        .unwrap();
        let h = configure_hosts("r.example:5000", &opts).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "http://r.example:5000/v2");
        std::fs::create_dir(root.path().join("r.example_5000_")).unwrap();
        std::fs::write(root.path().join("r.example_5000_/ca.crt"), "").unwrap();
        std::fs::write(root.path().join("r.example_5000_/c.cert"), "").unwrap();
        std::fs::write(root.path().join("r.example_5000_/c.key"), "").unwrap();
        let h = configure_hosts("r.example:5000", &opts).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].base_url(), "https://r.example:5000/v2");
        assert_eq!(h[0].ca_certs, [root.path().join("r.example_5000_/ca.crt")]);
        assert_eq!(
            h[0].client_pairs,
            [(
                root.path().join("r.example_5000_/c.cert"),
                Some(root.path().join("r.example_5000_/c.key"))
            )]
        );
    }
}
