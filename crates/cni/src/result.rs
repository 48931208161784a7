//! CNI results (spec 0.3.0 to 1.0.0, and the 0.1/0.2 `ip4`/`ip6` shape) and
//! the CNI error object. Plugin output is hostile input: parsed into typed
//! values with errors, never panics; the JSON as printed is kept so it can be
//! chained as `prevResult` and cached byte-for-byte in meaning.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

/// An address with its prefix length, `10.1.2.3/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not an address/prefix"))?;
        let addr: IpAddr = a.parse().map_err(|_| format!("invalid address in {s:?}"))?;
        let prefix_len: u8 = p.parse().map_err(|_| format!("invalid prefix in {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(format!("prefix too long in {s:?}"));
        }
        Ok(IpNet { addr, prefix_len })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An interface a plugin created or configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    /// The netns path for interfaces inside the pod; empty for host interfaces.
    pub sandbox: String,
}

/// An address assigned to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    /// Index into `interfaces`.
    pub interface: Option<usize>,
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
}

/// A route inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
}

/// DNS settings a plugin returned.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub nameservers: Vec<String>,
    pub domain: String,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

/// A parsed CNI result.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CniResult {
    pub cni_version: String,
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    /// The result JSON as the plugin printed it.
    pub raw: Value,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(default, rename = "cniVersion")]
    cni_version: String,
    #[serde(default)]
    interfaces: Vec<RawInterface>,
    #[serde(default)]
    ips: Vec<RawIp>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    dns: Dns,
    #[serde(default)]
    ip4: Option<RawLegacyIp>,
    #[serde(default)]
    ip6: Option<RawLegacyIp>,
}

#[derive(Deserialize)]
struct RawInterface {
    #[serde(default)]
    name: String,
    #[serde(default)]
    mac: String,
    #[serde(default)]
    sandbox: String,
}

#[derive(Deserialize)]
struct RawIp {
    address: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    interface: Option<i64>,
}

#[derive(Deserialize)]
struct RawRoute {
    dst: String,
    #[serde(default)]
    gw: Option<String>,
}

#[derive(Deserialize)]
struct RawLegacyIp {
    ip: String,
    #[serde(default)]
    gateway: Option<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
}

fn parse_gw(g: Option<String>) -> Result<Option<IpAddr>, String> {
    match g.as_deref() {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| format!("invalid gateway {s:?}")),
    }
}

fn parse_route(r: RawRoute) -> Result<Route, String> {
    Ok(Route {
        dst: r.dst.parse()?,
        gw: parse_gw(r.gw)?,
    })
}

impl CniResult {
    /// Parse a plugin's ADD output.
    pub fn parse(bytes: &[u8]) -> Result<CniResult, String> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        Self::from_value(raw)
    }

    /// Parse a result already decoded as JSON (e.g. from the cache).
    pub fn from_value(raw: Value) -> Result<CniResult, String> {
        if !raw.is_object() {
            return Err("result is not a JSON object".into());
        }
        let r: RawResult =
            serde_json::from_value(raw.clone()).map_err(|e| format!("not a CNI result: {e}"))?;
        let interfaces: Vec<Interface> = r
            .interfaces
            .into_iter()
            .map(|i| Interface {
                name: i.name,
                mac: i.mac,
                sandbox: i.sandbox,
            })
            .collect();
        let mut ips = Vec::new();
        for ip in r.ips {
            let interface = match ip.interface {
                None => None,
                Some(i) => match usize::try_from(i) {
                    Ok(i) if i < interfaces.len() => Some(i),
                    _ => {
                        return Err(format!(
                            "ip {} names interface {i}, which the result does not have",
                            ip.address
                        ))
                    }
                },
            };
            ips.push(IpConfig {
                interface,
                address: ip.address.parse()?,
                gateway: parse_gw(ip.gateway)?,
            });
        }
        let mut routes = r
            .routes
            .into_iter()
            .map(parse_route)
            .collect::<Result<Vec<_>, _>>()?;
        for legacy in [r.ip4, r.ip6].into_iter().flatten() {
            ips.push(IpConfig {
                interface: None,
                address: legacy.ip.parse()?,
                gateway: parse_gw(legacy.gateway)?,
            });
            for route in legacy.routes {
                routes.push(parse_route(route)?);
            }
        }
        Ok(CniResult {
            cni_version: r.cni_version,
            interfaces,
            ips,
            routes,
            dns: r.dns,
            raw,
        })
    }

    /// The addresses that belong to the interface named `ifname`; addresses
    /// that name no interface count for it too (go-cni's rule: they belong to
    /// the network's default interface).
    pub fn ips_of(&self, ifname: &str) -> impl Iterator<Item = &IpConfig> + '_ {
        let ifname = ifname.to_string();
        self.ips.iter().filter(move |ip| match ip.interface {
            None => true,
            Some(i) => self.interfaces.get(i).is_some_and(|itf| itf.name == ifname),
        })
    }
}

/// The CNI error object plugins print on failure.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct CniErrorJson {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// The reply to `CNI_COMMAND=VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default)]
pub struct VersionInfo {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_1_0_0_bridge_result() {
        let r = CniResult::parse(
            br#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"},
            {"name":"veth1","mac":"aa:bb:cc:dd:ee:00"},{"name":"eth0","mac":"0a:58:0a:00:00:02","sandbox":"/run/netns/x"}],
            "ips":[{"interface":2,"address":"10.0.0.2/24","gateway":"10.0.0.1"},{"interface":2,"address":"fd00::2/64"}],
            "routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"}],"dns":{"nameservers":["10.0.0.10"]}}"#,
        )
        .unwrap();
        assert_eq!(r.interfaces.len(), 3);
        assert_eq!(r.ips[0].address.to_string(), "10.0.0.2/24");
        assert_eq!(r.ips[0].gateway, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.ips_of("eth0").count(), 2);
        assert_eq!(r.ips_of("cni0").count(), 0);
        assert_eq!(r.routes[0].dst.prefix_len, 0);
        assert_eq!(r.dns.nameservers, ["10.0.0.10"]);
    }

    #[test]
    fn rejects_bad_results_without_panicking() {
        for bad in [
            &b""[..],
            b"[]",
            b"{\"ips\":[{\"address\":\"10.0.0.2\"}]}",
            b"{\"ips\":[{\"address\":\"10.0.0.2/33\"}]}",
            b"{\"ips\":[{\"address\":\"10.0.0.2/8\",\"interface\":0}]}",
            b"{\"ips\":[{\"address\":\"10.0.0.2/8\",\"interface\":-1}]}",
            b"{\"ips\":[{\"address\":\"10.0.0.2/8\",\"gateway\":\"x\"}]}",
            b"{\"routes\":[{\"dst\":\"nope\"}]}",
            b"{\"interfaces\":7}",
        ] {
            assert!(
                CniResult::parse(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn parses_legacy_ip4_results() {
        let r = CniResult::parse(
            br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.1.0.5/16","gateway":"10.1.0.1","routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .unwrap();
        assert_eq!(r.ips.len(), 1);
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.ips_of("eth0").count(), 1);
    }
}
