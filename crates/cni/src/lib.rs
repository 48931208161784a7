//! Pod networking for the CRI, as containerd's CRI does it with go-cni and
//! libcni: persistent network namespaces ([`netns`]), the CNI config
//! directory ([`config`]), running plugin lists with the CNI protocol
//! (spec 0.3.x to 1.0.0), and libcni's on-disk result cache.
//!
//! [`Cni::setup`] sets up containerd's loopback network (`lo`) and then each
//! pod network (`eth0`, `eth1`, ...); on failure it tears down everything it
//! may have set up. [`Cni::teardown`] is the tolerant inverse and works
//! after a restart (results are cached on disk). Everything here blocks
//! (plugins are processes): callers on an async runtime run it on a
//! blocking thread.
//!
//! Config changes are picked up by [`Cni::status`] and [`Cni::reload`]
//! (containerd watches the directory; the CRI's Status call, which kubelet
//! makes every few seconds, reloads here).

pub mod config;
pub mod error;
pub mod netns;
pub mod result;

mod cache;
mod exec;
mod network;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

pub use config::NetworkConfigList;
pub use error::{Error, Op, PluginDesc, PluginError, Result};
pub use netns::NetNs;
pub use result::{CniResult, IpNet, VersionInfo};

use cache::Cache;
use config::{validate_ifname, validate_name};
use exec::Exec;
use network::RuntimeConf;

/// The pod's interface for the first pod network (go-cni's prefix `eth` + index).
pub const DEFAULT_IFNAME: &str = "eth0";
/// The loopback network's interface.
pub const LOOPBACK_IFNAME: &str = "lo";

/// Where plugins and configs are, and how long a plugin may run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directories searched for plugin binaries, in order (`/opt/cni/bin`).
    pub bin_dirs: Vec<PathBuf>,
    /// The network config directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// How many config files become pod networks (containerd's default 1; 0 = all).
    pub max_conf_num: usize,
    /// libcni's cache directory (`/var/lib/cni`); results go to `<cache_dir>/results`.
    pub cache_dir: PathBuf,
    /// The longest one plugin invocation may run before it is killed.
    pub plugin_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bin_dirs: vec![PathBuf::from("/opt/cni/bin")],
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            max_conf_num: 1,
            cache_dir: PathBuf::from("/var/lib/cni"),
            plugin_timeout: Duration::from_secs(60),
        }
    }
}

/// The pod's identity, passed to plugins in `CNI_ARGS` as containerd passes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    /// The sandbox id (`K8S_POD_INFRA_CONTAINER_ID`).
    pub infra_container_id: String,
    pub uid: String,
    /// More `KEY=value` pairs, appended in order.
    pub extra: Vec<(String, String)>,
}

impl PodArgs {
    /// The `CNI_ARGS` pairs: `IgnoreUnknown=1;K8S_POD_NAMESPACE=..;K8S_POD_NAME=..;
    /// K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..`, then `extra`.
    pub fn cni_args(&self) -> Result<Vec<(String, String)>> {
        let mut args = vec![
            ("IgnoreUnknown".to_string(), "1".to_string()),
            ("K8S_POD_NAMESPACE".to_string(), self.namespace.clone()),
            ("K8S_POD_NAME".to_string(), self.name.clone()),
            (
                "K8S_POD_INFRA_CONTAINER_ID".to_string(),
                self.infra_container_id.clone(),
            ),
            ("K8S_POD_UID".to_string(), self.uid.clone()),
        ];
        args.extend(self.extra.iter().cloned());
        for (k, v) in &args {
            // plugins split CNI_ARGS on ';' and each pair on '='
            for (what, s) in [("CNI_ARGS key", k), ("CNI_ARGS value", v)] {
                if s.contains([';', '=', '\0']) {
                    return Err(Error::InvalidArgument {
                        what,
                        value: s.clone(),
                        reason: "must not contain ';', '=' or NUL",
                    });
                }
            }
        }
        Ok(args)
    }
}

/// A port mapping for the `portMappings` capability (protocol in lower case:
/// "tcp", "udp", "sctp").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: String,
    #[serde(rename = "hostIP", skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Limits for the `bandwidth` capability (bits per second, burst in bits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BandWidth {
    pub ingress_rate: u64,
    pub ingress_burst: u64,
    pub egress_rate: u64,
    pub egress_burst: u64,
}

/// The `dns` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DnsConfig {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

/// One range for the `ipRanges` capability.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRange {
    pub subnet: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub range_start: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub range_end: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub gateway: String,
}

/// Capability args; each reaches only the plugins that declare it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Capabilities {
    /// `portMappings` (always passed, possibly empty, as containerd does).
    pub port_mappings: Vec<PortMapping>,
    pub bandwidth: Option<BandWidth>,
    pub dns: Option<DnsConfig>,
    /// `ipRanges`: a list of range sets.
    pub ip_ranges: Vec<Vec<IpRange>>,
    /// Other well-known capabilities (`mac`, `ips`, ...), by name.
    pub extra: BTreeMap<String, Value>,
}

impl Capabilities {
    /// The capability args as the JSON map plugins get in `runtimeConfig`.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        let mut put = |k: &str, v: std::result::Result<Value, serde_json::Error>| {
            // these types always serialize; a failure would only drop the key
            if let Ok(v) = v {
                m.insert(k.to_string(), v);
            }
        };
        put("portMappings", serde_json::to_value(&self.port_mappings));
        if let Some(b) = &self.bandwidth {
            put("bandwidth", serde_json::to_value(b));
        }
        if let Some(d) = &self.dns {
            put("dns", serde_json::to_value(d));
        }
        if !self.ip_ranges.is_empty() {
            put("ipRanges", serde_json::to_value(&self.ip_ranges));
        }
        for (k, v) in &self.extra {
            m.insert(k.clone(), v.clone());
        }
        m
    }
}

/// One network's part of a setup.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkResult {
    pub network: String,
    pub ifname: String,
    pub result: CniResult,
}

/// An address on a pod interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodIp {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// What a setup produced: each network's result, loopback first.
#[derive(Debug, Clone, PartialEq)]
pub struct SetupResult {
    pub networks: Vec<NetworkResult>,
}

impl SetupResult {
    /// Addresses by pod interface name (go-cni's `Result.Interfaces`): an
    /// address naming no interface belongs to its network's interface.
    pub fn interfaces(&self) -> BTreeMap<String, Vec<PodIp>> {
        let mut out: BTreeMap<String, Vec<PodIp>> = BTreeMap::new();
        for n in &self.networks {
            for ip in &n.result.ips {
                let ifname = ip
                    .interface
                    .and_then(|i| n.result.interfaces.get(i))
                    .map_or(n.ifname.as_str(), |i| i.name.as_str());
                out.entry(ifname.to_string()).or_default().push(PodIp {
                    address: ip.address,
                    gateway: ip.gateway,
                });
            }
        }
        out
    }

    /// The pod's IPs: the addresses of `eth0`, IPv4 first (containerd's CRI
    /// reports the first as the pod IP, the rest as additional IPs).
    pub fn pod_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self
            .interfaces()
            .remove(DEFAULT_IFNAME)
            .unwrap_or_default()
            .into_iter()
            .map(|ip| ip.address.addr)
            .collect();
        // stable: keeps the plugin's order within each family
        ips.sort_by_key(|ip| !ip.is_ipv4());
        ips
    }

    /// The primary pod IP (`PodSandboxStatus.network.ip`).
    pub fn primary_ip(&self) -> Option<IpAddr> {
        self.pod_ips().first().copied()
    }

    /// DNS settings the networks returned, in order.
    pub fn dns(&self) -> Vec<&result::Dns> {
        self.networks.iter().map(|n| &n.result.dns).collect()
    }
}

/// What the CRI needs from pod networking, so its tests can inject failures
/// (implemented by [`Cni`]).
pub trait PodNetwork: Send + Sync {
    /// Ready when a pod network is configured (containerd's `NetworkReady`).
    fn status(&self) -> Result<()>;
    /// Set up the pod's networks in the namespace at `netns_path`.
    fn setup(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<SetupResult>;
    /// Tear them down again (tolerant, idempotent).
    fn teardown(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<()>;
    /// Verify they are still as set up.
    fn check(&self, id: &str, netns_path: &str, pod: &PodArgs, caps: &Capabilities) -> Result<()>;
}

impl PodNetwork for Cni {
    fn status(&self) -> Result<()> {
        Cni::status(self)
    }
    fn setup(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<SetupResult> {
        Cni::setup(self, id, netns_path, pod, caps)
    }
    fn teardown(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<()> {
        Cni::teardown(self, id, netns_path, pod, caps)
    }
    fn check(&self, id: &str, netns_path: &str, pod: &PodArgs, caps: &Capabilities) -> Result<()> {
        Cni::check(self, id, netns_path, pod, caps)
    }
}

/// A loaded pod network and the interface it gets.
#[derive(Debug, Clone)]
struct Network {
    list: NetworkConfigList,
    ifname: String,
}

/// The CNI manager: configs, plugins, cache.
#[derive(Debug)]
pub struct Cni {
    config: Config,
    exec: Exec,
    cache: Cache,
    loopback: Network,
    networks: RwLock<Option<Arc<Vec<Network>>>>,
}

impl Cni {
    /// A manager for `config`; it loads the config directory now, and a
    /// missing config is reported by [`Cni::status`], not here.
    pub fn new(config: Config) -> Cni {
        let cni = Cni {
            exec: Exec {
                bin_dirs: config.bin_dirs.clone(),
                timeout: config.plugin_timeout,
            },
            cache: Cache {
                dir: config.cache_dir.clone(),
            },
            loopback: Network {
                list: NetworkConfigList::loopback(),
                ifname: LOOPBACK_IFNAME.to_string(),
            },
            networks: RwLock::new(None),
            config,
        };
        let _ = cni.reload();
        cni
    }

    /// The configuration this manager was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Re-read the config directory. On failure no pod network is loaded
    /// (as containerd resets before loading).
    pub fn reload(&self) -> Result<()> {
        let loaded = config::load_dir(&self.config.conf_dir, self.config.max_conf_num);
        let (stored, outcome) = match loaded {
            Ok(lists) => {
                let nets = lists
                    .into_iter()
                    .enumerate()
                    .map(|(i, list)| Network {
                        list,
                        ifname: format!("eth{i}"),
                    })
                    .collect();
                (Some(Arc::new(nets)), Ok(()))
            }
            Err(e) => (None, Err(e)),
        };
        match self.networks.write() {
            Ok(mut g) => *g = stored,
            Err(poisoned) => *poisoned.into_inner() = stored,
        }
        outcome
    }

    /// Ready when a pod network config is present: reloads the directory and
    /// returns containerd's "cni plugin not initialized" error otherwise.
    pub fn status(&self) -> Result<()> {
        self.reload()
    }

    /// The loaded pod networks (loopback not included).
    pub fn networks(&self) -> Result<Vec<NetworkConfigList>> {
        Ok(self
            .pod_networks()?
            .iter()
            .map(|n| n.list.clone())
            .collect())
    }

    fn pod_networks(&self) -> Result<Arc<Vec<Network>>> {
        let current = match self.networks.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        if let Some(nets) = current {
            return Ok(nets);
        }
        self.reload()?;
        let current = match self.networks.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        current.ok_or_else(|| Error::NoNetworkConfig {
            dir: self.config.conf_dir.clone(),
        })
    }

    fn all_networks(&self) -> Result<Vec<Network>> {
        let mut all = vec![self.loopback.clone()];
        all.extend(self.pod_networks()?.iter().cloned());
        Ok(all)
    }

    /// Set up the pod's networks in `netns_path`: loopback, then each pod
    /// network. On failure everything is torn down again before returning.
    pub fn setup(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<SetupResult> {
        let args = prepare(id, pod)?;
        let caps = caps.to_map();
        let nets = self.all_networks()?;
        let mut results = Vec::new();
        for net in &nets {
            let rt = runtime(id, netns_path, &net.ifname, &args, &caps)?;
            match network::add(&self.exec, &self.cache, &net.list, &rt) {
                Ok(result) => results.push(NetworkResult {
                    network: net.list.name.clone(),
                    ifname: net.ifname.clone(),
                    result,
                }),
                Err(e) => {
                    // The failed network may have half set up (an IPAM lease,
                    // a veth): tear all of them down, as the CRI does.
                    return Err(
                        match self.teardown_networks(&nets, id, netns_path, &args, &caps) {
                            Ok(()) => e,
                            Err(cleanup) => Error::Rollback {
                                source: Box::new(e),
                                cleanup: Box::new(cleanup),
                            },
                        },
                    );
                }
            }
        }
        Ok(SetupResult { networks: results })
    }

    /// Tear down the pod's networks (pod networks first, loopback last, each
    /// list in reverse). Tolerant like go-cni: a namespace that is gone is
    /// passed as an empty `CNI_NETNS`, and "not found" failures count as
    /// done. Every network is attempted; the first error is returned.
    pub fn teardown(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<()> {
        let args = prepare(id, pod)?;
        let nets = self.all_networks()?;
        self.teardown_networks(&nets, id, netns_path, &args, &caps.to_map())
    }

    fn teardown_networks(
        &self,
        nets: &[Network],
        id: &str,
        netns_path: &str,
        args: &[(String, String)],
        caps: &Map<String, Value>,
    ) -> Result<()> {
        // containerd's CRI passes "" once the namespace is closed
        let netns = if !netns_path.is_empty()
            && !netns::is_netns(std::path::Path::new(netns_path)).unwrap_or(false)
        {
            ""
        } else {
            netns_path
        };
        let tolerate = |e: &Error| {
            let msg = e.to_string();
            (netns.is_empty() && msg.contains("no such file or directory"))
                || msg.contains("not found")
        };
        let mut first_error = None;
        for net in nets.iter().rev() {
            let rt = runtime(id, netns, &net.ifname, args, caps)?;
            if let Err(e) = network::del(&self.exec, &self.cache, &net.list, &rt, tolerate) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// CHECK the pod's networks (those of CNI version 0.4.0 or later; the
    /// loopback network is containerd's 0.3.1 one and is skipped).
    pub fn check(
        &self,
        id: &str,
        netns_path: &str,
        pod: &PodArgs,
        caps: &Capabilities,
    ) -> Result<()> {
        let args = prepare(id, pod)?;
        let caps = caps.to_map();
        for net in self.all_networks()? {
            if net.list.version() < config::Version(0, 4, 0) && net.ifname == LOOPBACK_IFNAME {
                continue;
            }
            let rt = runtime(id, netns_path, &net.ifname, &args, &caps)?;
            network::check(&self.exec, &self.cache, &net.list, &rt)?;
        }
        Ok(())
    }

    /// Ask a plugin which spec versions it supports (`CNI_COMMAND=VERSION`).
    pub fn plugin_version(&self, plugin_type: &str) -> Result<VersionInfo> {
        let desc = PluginDesc {
            plugin_type: plugin_type.to_string(),
            name: None,
        };
        let wrap = |source: PluginError| Error::Plugin {
            op: Op::Version,
            network: String::new(),
            plugin: desc.clone(),
            source: Box::new(source),
        };
        let path = self.exec.find(plugin_type).map_err(wrap)?;
        let out = self
            .exec
            .run(
                &path,
                &[("CNI_COMMAND", "VERSION")],
                br#"{"cniVersion":"1.0.0"}"#,
            )
            .map_err(wrap)?;
        serde_json::from_slice(&out).map_err(|e| {
            wrap(PluginError::BadOutput {
                reason: format!("not a version reply: {e}"),
                stderr: String::new(),
            })
        })
    }
}

fn prepare(id: &str, pod: &PodArgs) -> Result<Vec<(String, String)>> {
    validate_name(id).map_err(|reason| Error::InvalidArgument {
        what: "container id",
        value: id.to_string(),
        reason,
    })?;
    pod.cni_args()
}

fn runtime<'a>(
    id: &'a str,
    netns: &'a str,
    ifname: &'a str,
    args: &'a [(String, String)],
    caps: &'a Map<String, Value>,
) -> Result<RuntimeConf<'a>> {
    validate_ifname(ifname).map_err(|reason| Error::InvalidArgument {
        what: "interface name",
        value: ifname.to_string(),
        reason,
    })?;
    Ok(RuntimeConf {
        container_id: id,
        netns,
        ifname,
        args,
        capability_args: caps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn capabilities_serialize_with_cni_names() {
        let caps = Capabilities {
            port_mappings: vec![PortMapping {
                host_port: 8080,
                container_port: 80,
                protocol: "tcp".into(),
                host_ip: "127.0.0.1".into(),
            }],
            bandwidth: Some(BandWidth {
                ingress_rate: 1,
                ingress_burst: 2,
                egress_rate: 3,
                egress_burst: 4,
            }),
            dns: None,
            ip_ranges: vec![vec![IpRange {
                subnet: "10.0.0.0/24".into(),
                ..Default::default()
            }]],
            extra: BTreeMap::new(),
        };
        assert_eq!(
            Value::Object(caps.to_map()),
            json!({
                "portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"127.0.0.1"}],
                "bandwidth":{"ingressRate":1,"ingressBurst":2,"egressRate":3,"egressBurst":4},
                "ipRanges":[[{"subnet":"10.0.0.0/24"}]]
            })
        );
        assert_eq!(
            Value::Object(Capabilities::default().to_map()),
            json!({"portMappings":[]})
        );
    }

    #[test]
    fn pod_args_are_containerds_and_refuse_separators() {
        let pod = PodArgs {
            namespace: "default".into(),
            name: "web".into(),
            infra_container_id: "abc".into(),
            uid: "u-1".into(),
            extra: vec![],
        };
        let args = pod.cni_args().unwrap();
        let joined: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            joined.join(";"),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
        let bad = PodArgs {
            name: "a;b".into(),
            ..pod
        };
        assert!(matches!(bad.cni_args(), Err(Error::InvalidArgument { .. })));
    }

    #[test]
    fn pod_ips_are_eth0_ipv4_first() {
        let res = |json: &str| CniResult::parse(json.as_bytes()).unwrap();
        let setup = SetupResult {
            networks: vec![
                NetworkResult {
                    network: "cni-loopback".into(),
                    ifname: "lo".into(),
                    result: res(
                        r#"{"interfaces":[{"name":"lo"}],"ips":[{"interface":0,"address":"127.0.0.1/8"}]}"#,
                    ),
                },
                NetworkResult {
                    network: "pod".into(),
                    ifname: "eth0".into(),
                    result: res(
                        r#"{"interfaces":[{"name":"cni0"},{"name":"eth0","sandbox":"/x"}],
                        "ips":[{"interface":1,"address":"fd00::5/64"},{"interface":1,"address":"10.0.0.5/24","gateway":"10.0.0.1"}]}"#,
                    ),
                },
            ],
        };
        assert_eq!(
            setup.pod_ips(),
            [
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(setup.primary_ip(), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(setup.interfaces()["lo"].len(), 1);
    }
}
