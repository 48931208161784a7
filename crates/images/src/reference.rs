//! Image references as containerd names them: the generic `locator:object`
//! split (containerd's `reference.Parse`) and Docker's normalisation
//! (`docker.io/library/` prefixes, default `latest` tag, familiar names).

use regex::Regex;
use std::sync::OnceLock;
use stevedore_types::Error;

/// A reference split into locator (host/path) and object (tag, `@digest` or
/// `tag@digest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    pub locator: String,
    pub object: String,
}

/// containerd's `reference.Parse`: the host must be present and a port, when
/// given, must be numeric.
pub fn parse(s: &str) -> Result<Spec, Error> {
    if s.contains("://") {
        return Err(Error::invalid(format!("invalid reference {s:?}")));
    }
    let (host, path) = match s.find('/') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, ""),
    };
    if host.is_empty() {
        return Err(Error::invalid(format!(
            "reference {s:?}: hostname required"
        )));
    }
    if let Some((_, port)) = host.rsplit_once(':') {
        if !host.ends_with(']') && !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::invalid(format!(
                "reference {s:?}: invalid port {port:?} after host"
            )));
        }
    }
    let (path, object) = match path.find([':', '@']) {
        Some(i) => {
            let obj = &path[i..];
            (&path[..i], obj.strip_prefix(':').unwrap_or(obj))
        }
        None => (path, ""),
    };
    let locator = format!("{host}{}", path.trim_end_matches('/'));
    Ok(Spec {
        locator,
        object: object.to_string(),
    })
}

/// The OCI `ref.name` containerd writes for an image name: the object of the
/// reference, or the whole name when it does not parse.
pub fn oci_reference_name(name: &str) -> String {
    match parse(name) {
        Ok(s) => s.object,
        Err(_) => name.to_string(),
    }
}

const DOMAIN: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))+)?(?::[0-9]+)?";
const COMPONENT: &str = r"[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*";
/// Go's `\w` is ASCII; Rust's is Unicode (and 128 repetitions of the
/// Unicode class made a 7 MB automaton).
const TAG: &str = r"[0-9A-Za-z_][0-9A-Za-z_.-]{0,127}";
const DIGEST: &str = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}";

fn reference_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(&format!(
            r"^((?:{DOMAIN}/)?{COMPONENT}(?:/{COMPONENT})*)(?::({TAG}))?(?:@({DIGEST}))?$"
        ))
        .expect("reference regexp")
    })
}

fn name_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(&format!(
            r"^(?:({DOMAIN})/)?({COMPONENT}(?:/{COMPONENT})*)$"
        ))
        .expect("name regexp")
    })
}

/// A parsed, normalised Docker reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRef {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl DockerRef {
    /// `domain/path`.
    pub fn name(&self) -> String {
        if self.domain.is_empty() {
            self.path.clone()
        } else {
            format!("{}/{}", self.domain, self.path)
        }
    }
    fn with_name(&self, name: String) -> String {
        let mut s = name;
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
        s
    }
    /// The fully qualified string (`docker.io/library/busybox:latest`).
    pub fn full(&self) -> String {
        self.with_name(self.name())
    }
    /// The familiar string (`busybox:latest`).
    pub fn familiar(&self) -> String {
        let mut path = self.path.clone();
        let name = if self.domain == "docker.io" {
            if let Some(rest) = path.strip_prefix("library/") {
                if !rest.contains('/') {
                    path = rest.to_string();
                }
            }
            path
        } else {
            self.name()
        };
        self.with_name(name)
    }
}

/// Docker's `ParseNormalizedNamed`.
pub fn parse_normalized_named(s: &str) -> Result<DockerRef, Error> {
    let bad = |why: &str| Error::invalid(format!("invalid reference format {s:?}: {why}"));
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::invalid(format!(
            "invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
        )));
    }
    let (mut domain, mut remainder) = match s.find('/') {
        Some(i) if s[..i].contains(['.', ':']) || &s[..i] == "localhost" => {
            (s[..i].to_string(), s[i + 1..].to_string())
        }
        _ => ("docker.io".to_string(), s.to_string()),
    };
    if domain == "index.docker.io" {
        domain = "docker.io".into();
    }
    if domain == "docker.io" && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    let remote = remainder.split(':').next().unwrap_or("");
    if remote.to_lowercase() != remote {
        return Err(bad("repository name must be lowercase"));
    }
    let full = format!("{domain}/{remainder}");
    let caps = reference_re()
        .captures(&full)
        .ok_or_else(|| bad("does not match the reference grammar"))?;
    let name = caps.get(1).map_or("", |m| m.as_str());
    if name.len() > 255 {
        return Err(bad("repository name must not be more than 255 characters"));
    }
    let n = name_re()
        .captures(name)
        .ok_or_else(|| bad("invalid name"))?;
    Ok(DockerRef {
        domain: n.get(1).map_or("", |m| m.as_str()).to_string(),
        path: n.get(2).map_or("", |m| m.as_str()).to_string(),
        tag: caps.get(2).map(|m| m.as_str().to_string()),
        digest: caps.get(3).map(|m| m.as_str().to_string()),
    })
}

/// Docker's `ParseDockerRef`: normalised, `latest` when neither tag nor
/// digest, and only the digest when both are given.
pub fn normalize_docker_ref(s: &str) -> Result<String, Error> {
    let mut r = parse_normalized_named(s)?;
    if r.digest.is_some() {
        r.tag = None;
    } else if r.tag.is_none() {
        r.tag = Some("latest".into());
    }
    Ok(r.full())
}

/// The familiar form with a default tag (`busybox:latest`), as Docker's
/// `manifest.json` `RepoTags` holds it.
pub fn familiarize(s: &str) -> Result<String, Error> {
    let mut r = parse_normalized_named(s)?;
    if r.tag.is_none() && r.digest.is_none() {
        r.tag = Some("latest".into());
    }
    Ok(r.familiar())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_locator_and_object() {
        let s = parse("docker.io/library/busybox:latest").unwrap();
        assert_eq!(s.locator, "docker.io/library/busybox");
        assert_eq!(s.object, "latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            parse(&format!("foo/bar@{d}")).unwrap().object,
            format!("@{d}")
        );
        assert_eq!(parse("localhost:5000/x:1").unwrap().object, "1");
        assert!(parse("busybox:latest").is_err());
        assert_eq!(oci_reference_name("busybox:latest"), "busybox:latest");
        assert_eq!(oci_reference_name("docker.io/library/busybox:1.36"), "1.36");
    }

    #[test]
    fn normalizes_like_docker() {
        assert_eq!(
            normalize_docker_ref("busybox").unwrap(),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_docker_ref("foo/bar:1").unwrap(),
            "docker.io/foo/bar:1"
        );
        assert_eq!(
            normalize_docker_ref("localhost:5000/a/b").unwrap(),
            "localhost:5000/a/b:latest"
        );
        let d = format!("sha256:{}", "b".repeat(64));
        assert_eq!(
            normalize_docker_ref(&format!("busybox:1@{d}")).unwrap(),
            format!("docker.io/library/busybox@{d}")
        );
        assert!(normalize_docker_ref("Busybox").is_err());
        // tags are ASCII word characters, as in Go's regexp
        assert_eq!(
            normalize_docker_ref("busybox:v1_2.3-x").unwrap(),
            "docker.io/library/busybox:v1_2.3-x"
        );
        assert!(normalize_docker_ref("busybox:café").is_err());
        assert!(normalize_docker_ref("busybox:١٢").is_err());
        assert!(normalize_docker_ref(&format!("busybox:{}", "a".repeat(129))).is_err());
        assert!(normalize_docker_ref(&"a".repeat(64)).is_err());
        assert_eq!(
            familiarize("docker.io/library/busybox:latest").unwrap(),
            "busybox:latest"
        );
        assert_eq!(familiarize("docker.io/foo/bar").unwrap(), "foo/bar:latest");
        assert_eq!(
            familiarize("example.com/x/y:2").unwrap(),
            "example.com/x/y:2"
        );
    }
}
