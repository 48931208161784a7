//! Fixtures for the root tests with Debian's real CNI plugins: a private
//! bridge and subnet per test, temp dirs for configs, cache and IPAM, and
//! guards that undo everything in `Drop` (also when an assertion fails).

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use stevedore_cni::{Capabilities, Cni, Config, NetNs, PodArgs, SetupResult};

/// Debian's containernetworking-plugins install here.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// Fail (never skip) when the test cannot run as intended.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests create network namespaces and bridges: run them as root"
    );
}

/// Fail (never skip) when an external tool is missing.
pub fn require_tool(path: &str, package: &str) -> PathBuf {
    let p = if path.contains('/') {
        PathBuf::from(path)
    } else {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .map(|d| Path::new(d).join(path))
            .find(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from(path))
    };
    assert!(
        p.is_file(),
        "{path} is required by this test: apt-get install {package}"
    );
    p
}

pub fn require_plugins() {
    for p in ["bridge", "host-local", "loopback", "portmap"] {
        require_tool(
            &format!("{DEBIAN_CNI_DIR}/{p}"),
            "containernetworking-plugins",
        );
    }
    require_tool("ip", "iproute2");
    require_tool("nsenter", "util-linux");
    require_tool("busybox", "busybox-static");
    require_tool("iptables-save", "iptables");
}

/// Run a command; its stdout, or a panic naming the command and its stderr.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One of the 512 /24s of 198.18.0.0/15 (RFC 2544 benchmarking space),
/// held through an flock for as long as the test runs, so parallel tests
/// (in any process) never share a subnet or a bridge name.
pub struct Subnet {
    pub index: u32,
    _lock: File,
}

impl Subnet {
    pub fn claim() -> Subnet {
        // lock files are never deleted: unlinking a lock file races with
        // another process opening it
        let dir = Path::new("/run/lock/stevedore-cni-test-subnets");
        std::fs::create_dir_all(dir).unwrap();
        let start = random_u32() % 512;
        for i in 0..512 {
            let index = (start + i) % 512;
            let path = dir.join(index.to_string());
            let Ok(f) = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            if rustix::fs::flock(
                f.as_fd(),
                rustix::fs::FlockOperation::NonBlockingLockExclusive,
            )
            .is_ok()
            {
                return Subnet { index, _lock: f };
            }
        }
        panic!("all 512 test subnets of 198.18.0.0/15 are in use");
    }

    /// `198.18.x.0/24` or `198.19.x.0/24`.
    pub fn cidr(&self) -> String {
        format!("{}.0/24", self.prefix())
    }

    pub fn prefix(&self) -> String {
        format!("198.{}.{}", 18 + self.index / 256, self.index % 256)
    }

    /// The bridge name for this subnet: `cni-test` + 7 characters (15 max).
    pub fn bridge(&self) -> String {
        format!("cni-test{:03x}{:04x}", self.index, random_u32() & 0xffff)
    }
}

pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).unwrap();
    u32::from_ne_bytes(b)
}

/// A unique name for containers and networks.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), random_u32())
}

/// A test's own network: bridge + host-local + portmap, in temp dirs.
pub struct Net {
    pub subnet: Subnet,
    pub bridge: String,
    pub name: String,
    pub dir: tempfile::TempDir,
    pub cni: Cni,
}

impl Net {
    /// The test network, written as `10-test.conflist` in its own conf dir.
    pub fn new() -> Net {
        let subnet = Subnet::claim();
        let bridge = subnet.bridge();
        let name = unique("test-net");
        let dir = tempfile::tempdir().unwrap();
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": subnet.cidr()}]],
                        "dataDir": dir.path().join("ipam"),
                    }
                },
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        Self::with_conflist(subnet, bridge, name, dir, &conflist)
    }

    pub fn with_conflist(
        subnet: Subnet,
        bridge: String,
        name: String,
        dir: tempfile::TempDir,
        conflist: &Value,
    ) -> Net {
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir_all(&conf_dir).unwrap();
        std::fs::write(
            conf_dir.join("10-test.conflist"),
            serde_json::to_vec_pretty(conflist).unwrap(),
        )
        .unwrap();
        let cni = Cni::new(config(dir.path()));
        Net {
            subnet,
            bridge,
            name,
            dir,
            cni,
        }
    }

    pub fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    /// host-local's lease files (named by IP) of this network.
    pub fn leases(&self) -> Vec<String> {
        let d = self.dir.path().join("ipam").join(&self.name);
        let Ok(entries) = std::fs::read_dir(d) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }

    pub fn cache_file(&self, id: &str, ifname: &str) -> PathBuf {
        self.dir
            .path()
            .join("cache/results")
            .join(format!("{}-{id}-{ifname}", self.name))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // the bridge plugin creates the bridge and never deletes it
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The crate config for a test dir: Debian's plugins, dirs inside `root`.
pub fn config(root: &Path) -> Config {
    Config {
        bin_dirs: vec![PathBuf::from(DEBIAN_CNI_DIR)],
        conf_dir: root.join("net.d"),
        max_conf_num: 1,
        cache_dir: root.join("cache"),
        plugin_timeout: Duration::from_secs(60),
    }
}

/// A pod: its namespace and network, undone in `Drop` if the test did not.
pub struct Pod<'a> {
    pub net: &'a Net,
    pub id: String,
    pub args: PodArgs,
    pub caps: Capabilities,
    pub ns: NetNs,
    pub result: Option<SetupResult>,
}

impl<'a> Pod<'a> {
    pub fn new(net: &'a Net, name: &str) -> Pod<'a> {
        let id = unique(name);
        let ns = NetNs::create(&net.netns_dir()).expect("create netns");
        Pod {
            net,
            args: PodArgs {
                namespace: "default".into(),
                name: name.into(),
                infra_container_id: id.clone(),
                uid: unique("uid"),
                extra: vec![],
            },
            id,
            caps: Capabilities::default(),
            ns,
            result: None,
        }
    }

    pub fn netns(&self) -> &str {
        self.ns.path().to_str().unwrap()
    }

    pub fn setup(&mut self) -> stevedore_cni::Result<&SetupResult> {
        let r = self
            .net
            .cni
            .setup(&self.id, self.netns(), &self.args, &self.caps)?;
        Ok(self.result.insert(r))
    }

    pub fn teardown_with(&mut self, cni: &Cni) -> stevedore_cni::Result<()> {
        cni.teardown(&self.id, self.netns(), &self.args, &self.caps)?;
        self.result = None;
        Ok(())
    }

    /// `ip -j addr` inside the pod.
    pub fn addrs(&self) -> Value {
        let out = run(
            "nsenter",
            &[
                &format!("--net={}", self.netns()),
                "ip",
                "-j",
                "addr",
                "show",
            ],
        );
        serde_json::from_str(&out).unwrap()
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if self.result.is_some() {
            let _ = self
                .net
                .cni
                .teardown(&self.id, self.netns(), &self.args, &self.caps);
        }
        let _ = self.ns.remove();
    }
}

/// The interface named `name` in `ip -j addr` output.
pub fn link<'v>(addrs: &'v Value, name: &str) -> &'v Value {
    addrs
        .as_array()
        .and_then(|a| a.iter().find(|l| l["ifname"] == name))
        .unwrap_or_else(|| panic!("no interface {name} in {addrs:#}"))
}

/// The IPv4 addresses (`a.b.c.d/len`) of a link in `ip -j addr` output.
pub fn ipv4s(link: &Value) -> Vec<String> {
    link["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["family"] == "inet")
                .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                .collect()
        })
        .unwrap_or_default()
}

/// True when some mount sits on `path` in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = path.to_str().unwrap();
    mi.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == p))
}
