//! Platforms (`os/arch/variant`) with containerd's parsing, normalisation and
//! default matcher semantics.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An OCI platform, serialised with the image-spec JSON field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub os_version: String,
    #[serde(rename = "os.features", default, skip_serializing_if = "Vec::is_empty")]
    pub os_features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "windows",
    "zos",
];
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

impl Platform {
    pub fn new(os: &str, arch: &str, variant: &str) -> Self {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            ..Default::default()
        }
    }

    /// The platform this binary runs on, normalised (e.g. `linux/amd64`).
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = if arch == "arm" { "v7" } else { "" };
        Platform::new(std::env::consts::OS, arch, variant).normalize()
    }

    /// containerd's `platforms.Normalize`: canonical os, arch and variant names.
    pub fn normalize(mut self) -> Self {
        self.os = self.os.to_lowercase();
        if self.os == "macos" {
            self.os = "darwin".into();
        }
        let arch = self.architecture.to_lowercase();
        let variant = self.variant.to_lowercase();
        let (arch, variant) = match arch.as_str() {
            "i386" => ("386".to_string(), String::new()),
            "x86_64" | "x86-64" | "amd64" => {
                let v = if variant == "v1" {
                    String::new()
                } else {
                    variant
                };
                ("amd64".to_string(), v)
            }
            "aarch64" | "arm64" => {
                let v = match variant.as_str() {
                    "8" | "v8" => String::new(),
                    _ => variant,
                };
                ("arm64".to_string(), v)
            }
            "armhf" => ("arm".to_string(), "v7".to_string()),
            "armel" => ("arm".to_string(), "v6".to_string()),
            "arm" => {
                let v = match variant.as_str() {
                    "" | "7" => "v7".to_string(),
                    "5" | "6" | "8" => format!("v{variant}"),
                    _ => variant,
                };
                ("arm".to_string(), v)
            }
            _ => (arch, variant),
        };
        self.architecture = arch;
        self.variant = variant;
        self
    }

    /// Ordered list of platforms this one can run, best first (containerd's
    /// `platformVector`): amd64 runs 386, arm64 runs arm/v8..v5, arm/vN runs lower.
    pub fn compatible(&self) -> Vec<Platform> {
        let p = self.clone().normalize();
        let mut out = vec![p.clone()];
        match p.architecture.as_str() {
            "amd64" => out.push(Platform::new(&p.os, "386", "")),
            "arm64" => {
                let v = if p.variant.is_empty() {
                    "v8"
                } else {
                    &p.variant
                };
                out.extend(Platform::new(&p.os, "arm", v).compatible());
            }
            "arm" => {
                if let Ok(n) = p.variant.trim_start_matches('v').parse::<u32>() {
                    for lower in (5..n).rev() {
                        out.push(Platform::new(&p.os, "arm", &format!("v{lower}")));
                    }
                }
            }
            _ => {}
        }
        out
    }
}

impl FromStr for Platform {
    type Err = Error;
    /// Parse a specifier: `os`, `arch`, `os/arch` or `os/arch/variant`.
    fn from_str(spec: &str) -> Result<Self, Error> {
        let bad = |why: &str| Error::invalid(format!("invalid platform specifier {spec:?}: {why}"));
        if spec.is_empty() {
            return Err(bad("empty"));
        }
        let parts: Vec<&str> = spec.split('/').collect();
        for p in &parts {
            if p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad("components must be non-empty [A-Za-z0-9_-]"));
            }
        }
        let host = Platform::host();
        let p = match parts.as_slice() {
            [one] => {
                let one = one.to_lowercase();
                if KNOWN_OS.contains(&one.as_str()) {
                    let mut p = host.clone();
                    p.os = one;
                    p
                } else {
                    let p = Platform::new(&host.os, &one, "").normalize();
                    if !KNOWN_ARCH.contains(&p.architecture.as_str()) {
                        return Err(bad("unknown operating system or architecture"));
                    }
                    p
                }
            }
            [os, arch] => Platform::new(os, arch, ""),
            [os, arch, variant] => Platform::new(os, arch, variant),
            _ => return Err(bad("too many components")),
        };
        Ok(p.normalize())
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = if self.os.is_empty() {
            "unknown"
        } else {
            &self.os
        };
        let arch = if self.architecture.is_empty() {
            "unknown"
        } else {
            &self.architecture
        };
        write!(f, "{os}/{arch}")?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// Decides which platforms to accept and which is preferred.
pub trait MatchPlatform: Send + Sync {
    fn matches(&self, p: &Platform) -> bool;
    /// Preference rank: lower is better; None when not matched.
    fn rank(&self, p: &Platform) -> Option<usize>;
}

/// containerd's `platforms.Only`: the given platform and what it can run, in order.
#[derive(Debug, Clone)]
pub struct Only {
    ordered: Vec<Platform>,
}

impl Only {
    pub fn new(p: Platform) -> Self {
        Only {
            ordered: p.compatible(),
        }
    }
}

fn same(a: &Platform, b: &Platform) -> bool {
    a.os == b.os && a.architecture == b.architecture && a.variant == b.variant
}

impl MatchPlatform for Only {
    fn matches(&self, p: &Platform) -> bool {
        self.rank(p).is_some()
    }
    fn rank(&self, p: &Platform) -> Option<usize> {
        let p = p.clone().normalize();
        self.ordered.iter().position(|o| same(o, &p))
    }
}

/// Exactly one platform, nothing else (containerd's `platforms.OnlyStrict`).
#[derive(Debug, Clone)]
pub struct Exact(pub Platform);

impl MatchPlatform for Exact {
    fn matches(&self, p: &Platform) -> bool {
        same(&self.0.clone().normalize(), &p.clone().normalize())
    }
    fn rank(&self, p: &Platform) -> Option<usize> {
        self.matches(p).then_some(0)
    }
}

/// Accepts every platform (`--all-platforms`).
#[derive(Debug, Clone, Copy)]
pub struct All;

impl MatchPlatform for All {
    fn matches(&self, _: &Platform) -> bool {
        true
    }
    fn rank(&self, _: &Platform) -> Option<usize> {
        Some(0)
    }
}

/// The default matcher: the host platform and what it can run.
pub fn default_matcher() -> Only {
    Only::new(Platform::host())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        s.parse().unwrap()
    }

    #[test]
    fn normalises_arm64_and_amd64_aliases() {
        assert_eq!(p("linux/arm64/v8"), p("linux/arm64"));
        assert_eq!(p("linux/aarch64"), p("linux/arm64"));
        assert_eq!(p("linux/x86_64"), p("linux/amd64"));
        assert_eq!(p("linux/armhf").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm").to_string(), "linux/arm/v7");
        assert_eq!(p("linux/arm/6").to_string(), "linux/arm/v6");
        assert_eq!(p("linux/amd64").to_string(), "linux/amd64");
    }

    #[test]
    fn parses_single_components() {
        let host = Platform::host();
        assert_eq!(p("linux").architecture, host.architecture);
        let a = p("arm64");
        assert_eq!(a.os, host.os);
        assert_eq!(a.architecture, "arm64");
    }

    #[test]
    fn rejects_bad_specifiers() {
        for bad in ["", "linux/", "/amd64", "a/b/c/d", "linux/am d64", "notanos"] {
            let e = bad.parse::<Platform>().unwrap_err();
            assert!(
                e.message.contains("invalid platform specifier"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn only_matches_compatible_in_order() {
        let m = Only::new(p("linux/arm64"));
        assert_eq!(m.rank(&p("linux/arm64/v8")), Some(0));
        assert!(m.rank(&p("linux/arm/v7")).unwrap() > 0);
        assert!(!m.matches(&p("linux/amd64")));
        assert!(!m.matches(&p("windows/arm64")));
        let m = Only::new(p("linux/amd64"));
        assert!(m.matches(&p("linux/386")));
        assert!(m.rank(&p("linux/amd64")) < m.rank(&p("linux/386")));
        assert!(!Exact(p("linux/amd64")).matches(&p("linux/386")));
    }

    #[test]
    fn json_names_match_image_spec() {
        let j = serde_json::to_value(p("linux/arm/v7")).unwrap();
        assert_eq!(j["architecture"], "arm");
        assert_eq!(j["variant"], "v7");
        assert!(j.get("os.version").is_none());
    }
}
