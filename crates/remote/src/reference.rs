//! Image references, parsed and normalised as docker/distribution and containerd do
//! (`reference/docker/reference.go`): `busybox` is `docker.io/library/busybox:latest`,
//! `user/img` is `docker.io/user/img:latest`, a first component with a `.` or `:` or
//! equal to `localhost` is a registry host, `name:tag@sha256:...` keeps both.

use std::fmt;
use std::str::FromStr;
use stevedore_types::{Digest, Error, Result};

/// The registry docker.io names resolve to when no hosts directory says otherwise.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// A fully qualified reference: `domain/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A name component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// A registry host: dot-separated `[a-zA-Z0-9-]` labels (no leading/trailing `-`),
/// optionally `:<digits>`.
fn is_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|x| x.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// `[\w][\w.-]{0,127}` (ASCII word characters).
fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b[1..].iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// A 64-character lower-case hex string (an image ID, not a name).
fn is_identifier(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|x| x.is_ascii_digit() || (b'a'..=b'f').contains(&x))
}

/// Split `s` into (domain, path, tag, digest) following docker's ReferenceRegexp;
/// None when it does not match.
fn split_reference(s: &str) -> Option<(String, String, Option<String>, Option<String>)> {
    let (rest, digest) = match s.rsplit_once('@') {
        Some((r, d)) => (r, Some(d.to_string())),
        None => (s, None),
    };
    let last_slash = rest.rfind('/');
    let (name, tag) = match rest.rfind(':') {
        Some(i) if last_slash.is_none_or(|sl| i > sl) => {
            (&rest[..i], Some(rest[i + 1..].to_string()))
        }
        _ => (rest, None),
    };
    if let Some(t) = &tag {
        if !is_tag(t) {
            return None;
        }
    }
    let comps: Vec<&str> = name.split('/').collect();
    let (domain, path) = if comps.len() > 1 && is_domain(comps[0]) {
        (comps[0].to_string(), &comps[1..])
    } else {
        (String::new(), &comps[..])
    };
    if !path.iter().all(|c| is_path_component(c)) {
        return None;
    }
    Some((domain, path.join("/"), tag, digest))
}

fn invalid(input: &str, why: &str) -> Error {
    Error::invalid(format!("invalid reference {input:?}: {why}"))
}

impl Reference {
    /// Parse a familiar or qualified name the way `docker pull` and `stevedore pull`
    /// do: add `docker.io`, `library/` and `:latest` where they are implied.
    pub fn parse_normalized(input: &str) -> Result<Self> {
        if input.is_empty() {
            return Err(invalid(
                input,
                "repository name must have at least one component",
            ));
        }
        if is_identifier(input) {
            return Err(invalid(
                input,
                "cannot specify 64-byte hexadecimal strings as a repository name",
            ));
        }
        let (domain, remainder) = split_docker_domain(input);
        let remote_name = remainder.split(':').next().unwrap_or_default();
        if remote_name.to_lowercase() != remote_name {
            return Err(invalid(input, "repository name must be lowercase"));
        }
        let mut r = Self::parse_qualified_inner(input, &format!("{domain}/{remainder}"))?;
        if r.domain.is_empty() {
            // the first component looked like a host (it has a '.' or ':') but
            // is not a valid one: docker would keep it as a path with no
            // registry at all, which cannot be pulled from anywhere
            return Err(invalid(input, &format!("invalid registry host {domain:?}")));
        }
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }

    /// Parse a reference that must already carry its registry host (containerd's
    /// `reference.Parse`, as `ctr` requires): nothing is added.
    pub fn parse_qualified(input: &str) -> Result<Self> {
        let r = Self::parse_qualified_inner(input, input)?;
        if r.domain.is_empty() {
            return Err(invalid(
                input,
                "a registry host is required (e.g. docker.io/library/busybox:latest)",
            ));
        }
        Ok(r)
    }

    fn parse_qualified_inner(input: &str, s: &str) -> Result<Self> {
        if s.is_empty() {
            return Err(invalid(
                input,
                "repository name must have at least one component",
            ));
        }
        let Some((domain, path, tag, digest)) = split_reference(s) else {
            if split_reference(&s.to_lowercase()).is_some() {
                return Err(invalid(input, "repository name must be lowercase"));
            }
            return Err(invalid(input, "invalid reference format"));
        };
        let name_len = if domain.is_empty() {
            path.len()
        } else {
            domain.len() + 1 + path.len()
        };
        if name_len > NAME_TOTAL_LENGTH_MAX {
            return Err(invalid(
                input,
                &format!(
                    "repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters"
                ),
            ));
        }
        let digest = match digest {
            Some(d) => Some(
                Digest::from_str(&d)
                    .map_err(|e| invalid(input, &format!("invalid digest: {}", e.message)))?,
            ),
            None => None,
        };
        Ok(Reference {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// The registry host as written in the name (`docker.io`, `127.0.0.1:5000`).
    pub fn domain(&self) -> &str {
        &self.domain
    }
    /// The repository path inside the registry (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }
    /// `domain/path`, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
    /// What the registry is asked for: the digest when there is one, else the tag.
    pub fn object(&self) -> Option<String> {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Some(d.to_string()),
            (None, Some(t)) => Some(t.clone()),
            (None, None) => None,
        }
    }
    /// The same repository with another tag (no digest).
    pub fn with_tag(&self, tag: &str) -> Result<Self> {
        if !is_tag(tag) {
            return Err(Error::invalid(format!(
                "invalid tag {tag:?} for {}",
                self.name()
            )));
        }
        Ok(Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }
    /// The same repository pinned to a digest (no tag).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest),
        }
    }
    /// docker's `ParseDockerRef` form: a reference with both tag and digest keeps
    /// only the digest.
    pub fn docker_ref(&self) -> Self {
        if self.digest.is_some() {
            Reference {
                tag: None,
                ..self.clone()
            }
        } else {
            self.clone()
        }
    }
    /// The short form docker prints (`busybox:latest`, `user/app:v1`).
    pub fn familiar(&self) -> String {
        let mut name = if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.name()
        };
        if let Some(t) = &self.tag {
            name.push(':');
            name.push_str(t);
        }
        if let Some(d) = &self.digest {
            name.push('@');
            name.push_str(&d.to_string());
        }
        name
    }
}

fn split_docker_domain(name: &str) -> (String, String) {
    let (mut domain, remainder) = match name.find('/') {
        Some(i) if name[..i].contains(['.', ':']) || &name[..i] == "localhost" => {
            (name[..i].to_string(), name[i + 1..].to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        return (domain, format!("{OFFICIAL_REPO_PREFIX}{remainder}"));
    }
    (domain, remainder)
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.domain.is_empty() {
            write!(f, "{}/", self.domain)?;
        }
        f.write_str(&self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse_normalized(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stevedore_types::ErrorKind;

    const D: &str = "sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa";

    fn norm(s: &str) -> String {
        Reference::parse_normalized(s).unwrap().to_string()
    }

    #[test]
    fn normalises_familiar_names_like_docker() {
        assert_eq!(norm("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(norm("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(norm("user/img"), "docker.io/user/img:latest");
        assert_eq!(
            norm("index.docker.io/user/img"),
            "docker.io/user/img:latest"
        );
        assert_eq!(
            norm("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(norm("a/b/c/d:v"), "docker.io/a/b/c/d:v");
        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("localhost:5000/x"), "localhost:5000/x:latest");
        assert_eq!(norm("127.0.0.1:5000/x:tag"), "127.0.0.1:5000/x:tag");
        assert_eq!(norm("Example.COM/a/b"), "Example.COM/a/b:latest");
        assert_eq!(norm("ghcr.io/o/r_x-y.z__w"), "ghcr.io/o/r_x-y.z__w:latest");
        assert_eq!(norm("my_org/img"), "docker.io/my_org/img:latest");
        assert_eq!(norm("a/b---c"), "docker.io/a/b---c:latest");
        assert_eq!(norm("localhost:5000"), "docker.io/library/localhost:5000");
        assert_eq!(norm("r.io/a:V_1.0-x"), "r.io/a:V_1.0-x");
    }

    #[test]
    fn keeps_tag_and_digest_and_docker_ref_drops_tag() {
        let r = Reference::parse_normalized(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.tag(), None);
        assert_eq!(r.object().unwrap(), D);
        let r = Reference::parse_normalized(&format!("busybox:1@{D}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox:1@{D}"));
        assert_eq!(r.object().unwrap(), D);
        assert_eq!(
            r.docker_ref().to_string(),
            format!("docker.io/library/busybox@{D}")
        );
        let r = Reference::parse_normalized(&format!("127.0.0.1:5000/a/b:t@{D}")).unwrap();
        assert_eq!(r.domain(), "127.0.0.1:5000");
        assert_eq!(r.path(), "a/b");
        assert_eq!(r.tag(), Some("t"));
    }

    #[test]
    fn familiar_form_strips_default_domain() {
        let f = |s: &str| Reference::parse_normalized(s).unwrap().familiar();
        assert_eq!(f("busybox"), "busybox:latest");
        assert_eq!(f("user/img:v"), "user/img:v");
        assert_eq!(f("localhost:5000/x"), "localhost:5000/x:latest");
    }

    #[test]
    fn rejects_invalid_references_with_invalid_argument() {
        for (input, why) in [
            ("", "at least one component"),
            ("Busybox", "must be lowercase"),
            ("user/Img", "must be lowercase"),
            ("busybox:", "invalid reference format"),
            ("busybox:-tag", "invalid reference format"),
            ("-busybox", "invalid reference format"),
            ("busybox@sha256:abc", "invalid digest"),
            ("busybox@md5:abc", "unsupported algorithm"),
            ("a//b", "invalid reference format"),
            ("a/b___c", "invalid reference format"),
            ("a/b-.c", "invalid reference format"),
            ("a/b.", "invalid reference format"),
            ("-r.io/a", "invalid reference format"),
            ("r.io:port/a", "invalid reference format"),
            (
                "busybox@sha256:7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5a",
                "invalid digest",
            ),
            (
                "7cc4b5aefd1d0cadf8d97d4350462ba51c694ebca145b08d7d41b41acc8db5aa",
                "64-byte hexadecimal",
            ),
        ] {
            let e = Reference::parse_normalized(input).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{input}");
            assert!(e.message.contains(why), "{input}: {}", e.message);
            assert!(e.message.contains(&format!("{input:?}")), "{}", e.message);
        }
        let long = format!("x/{}", "a".repeat(260));
        let e = Reference::parse_normalized(&long).unwrap_err();
        assert!(e.message.contains("255"), "{}", e.message);
    }

    #[test]
    fn qualified_parse_requires_a_host_and_adds_nothing() {
        let r = Reference::parse_qualified("docker.io/library/busybox:latest").unwrap();
        assert_eq!(r.domain(), "docker.io");
        assert!(Reference::parse_qualified("busybox").is_err());
        let r = Reference::parse_qualified("127.0.0.1:5000/x").unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.object(), None);
    }

    #[test]
    fn with_tag_validates() {
        let r = Reference::parse_normalized("busybox").unwrap();
        assert_eq!(
            r.with_tag("v2").unwrap().to_string(),
            "docker.io/library/busybox:v2"
        );
        assert!(r.with_tag("bad tag").is_err());
    }

    // found by the fuzzer (crates/fuzz, target reference): the first component
    // has a '.' so it was taken for a host, but '_' makes it an invalid one;
    // the reference came back with no host and printed as "/a_b.io/c:latest"
    #[test]
    fn refuses_host_like_first_component_that_is_not_a_valid_host() {
        for s in ["a_b.io/c", "e3b0c442_98fc1c1index.docker.io/b"] {
            let e = Reference::parse_normalized(s).unwrap_err();
            assert_eq!(e.kind, stevedore_types::ErrorKind::InvalidArgument);
            assert!(e.message.contains("invalid registry host"), "{s}: {e}");
        }
        assert_eq!(norm("a-b.io/c"), "a-b.io/c:latest");
    }
}
