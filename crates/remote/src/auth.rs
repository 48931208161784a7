//! Registry authentication: `WWW-Authenticate` challenges, Basic credentials and
//! Bearer tokens fetched from the challenge's realm, cached per host and scope.

use base64::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stevedore_types::{Error, ErrorKind, Result};

/// A user name and password (or identity token) for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// Parse `user:password` as given to `--user` (the password may contain `:`).
    pub fn parse(user: &str) -> Result<Self> {
        let (u, p) = user.split_once(':').ok_or_else(|| {
            Error::invalid("invalid credentials: expected user:password".to_string())
        })?;
        Ok(Credentials {
            username: u.to_string(),
            secret: p.to_string(),
        })
    }
    fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.secret);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Looks up credentials for a registry host (`host[:port]` as connected to).
pub type CredentialsFn = Arc<dyn Fn(&str) -> Option<Credentials> + Send + Sync>;

/// Credentials from a Docker `config.json` (`{"auths": {"<host>": {"auth": base64(user:pass)}}}`
/// or `username`/`password` fields). Docker Hub's entry (`https://index.docker.io/v1/`)
/// also serves `registry-1.docker.io` and `docker.io`. Credential helpers are not run.
pub fn docker_config_credentials(config_json: &[u8], source: &str) -> Result<CredentialsFn> {
    #[derive(serde::Deserialize, Default)]
    struct Entry {
        #[serde(default)]
        auth: String,
        #[serde(default)]
        username: String,
        #[serde(default)]
        password: String,
        #[serde(default)]
        identitytoken: String,
    }
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    let cfg: Config = serde_json::from_slice(config_json)
        .map_err(|e| Error::invalid(format!("parse docker config {source}: {e}")))?;
    let mut map: HashMap<String, Credentials> = HashMap::new();
    for (key, e) in cfg.auths {
        let creds = if !e.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(e.auth.trim())
                .map_err(|err| {
                    Error::invalid(format!(
                        "docker config {source}: auths.{key:?}.auth is not base64: {err}"
                    ))
                })?;
            let raw = String::from_utf8(raw).map_err(|_| {
                Error::invalid(format!(
                    "docker config {source}: auths.{key:?}.auth is not UTF-8"
                ))
            })?;
            Credentials::parse(&raw).map_err(|_| {
                Error::invalid(format!(
                    "docker config {source}: auths.{key:?}.auth is not user:password"
                ))
            })?
        } else if !e.identitytoken.is_empty() {
            Credentials {
                username: String::new(),
                secret: e.identitytoken,
            }
        } else {
            Credentials {
                username: e.username,
                secret: e.password,
            }
        };
        // "https://host/v1/" -> "host"
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        map.insert(host, creds);
    }
    Ok(Arc::new(move |host: &str| {
        if let Some(c) = map.get(host) {
            return Some(c.clone());
        }
        if host == crate::reference::DOCKER_HUB_HOST || host == "docker.io" {
            return ["index.docker.io", "docker.io", "registry-1.docker.io"]
                .iter()
                .find_map(|h| map.get(*h).cloned());
        }
        None
    }))
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic` or `bearer`, lower-cased.
    pub scheme: String,
    pub params: HashMap<String, String>,
}

/// Parse the challenges of a `WWW-Authenticate` header value.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out: Vec<Challenge> = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        // scheme token
        let end = rest
            .find(|c: char| c.is_whitespace() || c == ',' || c == '=')
            .unwrap_or(rest.len());
        let token = &rest[..end];
        rest = rest[end..].trim_start_matches([' ', '\t']);
        if token.is_empty() {
            rest = rest.trim_start_matches([',', ' ', '\t']);
            continue;
        }
        if rest.starts_with('=') {
            // a parameter of the current challenge
            rest = &rest[1..];
            let (value, after) = if let Some(q) = rest.strip_prefix('"') {
                let mut val = String::new();
                let mut chars = q.char_indices();
                let mut consumed = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                val.push(n);
                            }
                        }
                        '"' => {
                            consumed = i + 1;
                            break;
                        }
                        c => val.push(c),
                    }
                }
                (val, &q[consumed..])
            } else {
                let e = rest.find(',').unwrap_or(rest.len());
                (rest[..e].trim().to_string(), &rest[e..])
            };
            if let Some(c) = out.last_mut() {
                c.params.insert(token.to_lowercase(), value);
            }
            rest = after.trim_start_matches([',', ' ', '\t']);
        } else {
            out.push(Challenge {
                scheme: token.to_lowercase(),
                params: HashMap::new(),
            });
            rest = rest.trim_start_matches([',', ' ', '\t']);
        }
    }
    out
}

#[derive(Clone)]
struct CachedToken {
    token: String,
    expires: Instant,
}

/// Per-resolver authentication state: challenges per host, tokens per host + scope.
pub(crate) struct Authorizer {
    credentials: Option<CredentialsFn>,
    challenges: Mutex<HashMap<String, Challenge>>,
    tokens: Mutex<HashMap<(String, String), CachedToken>>,
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: u64,
}

impl Authorizer {
    pub(crate) fn new(credentials: Option<CredentialsFn>) -> Self {
        Authorizer {
            credentials,
            challenges: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn creds(&self, host: &str) -> Option<Credentials> {
        self.credentials.as_ref().and_then(|f| f(host))
    }

    /// The `Authorization` header to send to `host` for `scopes`, if one is known
    /// without a network round trip.
    pub(crate) fn cached_header(&self, host: &str, scopes: &[String]) -> Option<String> {
        let challenge = self.challenges.lock().ok()?.get(host).cloned()?;
        match challenge.scheme.as_str() {
            "basic" => self.creds(host).map(|c| c.basic_header()),
            "bearer" => {
                let key = (host.to_string(), scopes.join(" "));
                let tokens = self.tokens.lock().ok()?;
                let t = tokens.get(&key)?;
                (t.expires > Instant::now()).then(|| format!("Bearer {}", t.token))
            }
            _ => None,
        }
    }

    /// Handle a 401: remember the challenge and obtain a header for a retry.
    /// Returns None when there is nothing new to try.
    pub(crate) async fn authorize(
        &self,
        http: &reqwest::Client,
        host: &str,
        scopes: &[String],
        www_authenticate: &[String],
        previous: Option<&str>,
    ) -> Result<Option<String>> {
        let challenges: Vec<Challenge> = www_authenticate
            .iter()
            .flat_map(|h| parse_challenges(h))
            .collect();
        let chosen = challenges
            .iter()
            .find(|c| c.scheme == "bearer")
            .or_else(|| challenges.iter().find(|c| c.scheme == "basic"))
            .cloned();
        let Some(challenge) = chosen else {
            return Ok(None);
        };
        if let Ok(mut m) = self.challenges.lock() {
            m.insert(host.to_string(), challenge.clone());
        }
        let header = match challenge.scheme.as_str() {
            "basic" => match self.creds(host) {
                Some(c) => c.basic_header(),
                None => return Ok(None),
            },
            _ => {
                let token = self.fetch_token(http, host, scopes, &challenge).await?;
                format!("Bearer {token}")
            }
        };
        if previous == Some(header.as_str()) {
            // the same credentials were already refused
            return Ok(None);
        }
        Ok(Some(header))
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        host: &str,
        scopes: &[String],
        challenge: &Challenge,
    ) -> Result<String> {
        let realm = challenge.params.get("realm").ok_or_else(|| {
            Error::invalid(format!("registry {host}: bearer challenge without a realm"))
        })?;
        let mut url = url::Url::parse(realm).map_err(|e| {
            Error::invalid(format!(
                "registry {host}: invalid token realm {realm:?}: {e}"
            ))
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(service) = challenge.params.get("service") {
                q.append_pair("service", service);
            }
            // the challenge's own scope plus ours
            let mut all: Vec<String> = scopes.to_vec();
            if let Some(s) = challenge.params.get("scope") {
                for s in s.split(' ') {
                    if !s.is_empty() && !all.iter().any(|x| x == s) {
                        all.push(s.to_string());
                    }
                }
            }
            for s in &all {
                q.append_pair("scope", s);
            }
        }
        let mut req = http.get(url.clone());
        if let Some(c) = self.creds(host) {
            req = req.basic_auth(&c.username, Some(&c.secret));
        }
        let resp = req.send().await.map_err(|e| {
            Error::unavailable(format!(
                "registry {host}: fetch token from {realm}: {}",
                crate::client::error_chain(&e)
            ))
        })?;
        let status = resp.status();
        if !status.is_success() {
            let kind = match status.as_u16() {
                401 | 403 => ErrorKind::PermissionDenied,
                429 => ErrorKind::ResourceExhausted,
                404 => ErrorKind::NotFound,
                _ => ErrorKind::Unavailable,
            };
            return Err(Error::new(
                kind,
                format!("registry {host}: fetch token from {realm}: {status}"),
            ));
        }
        let raw = resp.bytes().await.map_err(|e| {
            Error::unavailable(format!(
                "registry {host}: read token response from {realm}: {}",
                crate::client::error_chain(&e)
            ))
        })?;
        let body: TokenResponse = serde_json::from_slice(&raw).map_err(|e| {
            Error::unavailable(format!(
                "registry {host}: invalid token response from {realm}: {e}"
            ))
        })?;
        let token = if !body.token.is_empty() {
            body.token
        } else {
            body.access_token
        };
        if token.is_empty() {
            return Err(Error::unavailable(format!(
                "registry {host}: token response from {realm} has no token"
            )));
        }
        // registries default to 60 s; refresh a little early
        let ttl =
            Duration::from_secs(body.expires_in.max(60)).saturating_sub(Duration::from_secs(5));
        if let Ok(mut m) = self.tokens.lock() {
            m.insert(
                (host.to_string(), scopes.join(" ")),
                CachedToken {
                    token: token.clone(),
                    expires: Instant::now() + ttl,
                },
            );
        }
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].params["realm"], "https://auth.docker.io/token");
        assert_eq!(c[0].params["service"], "registry.docker.io");
        assert_eq!(c[0].params["scope"], "repository:library/busybox:pull");
        let c = parse_challenges(r#"Basic realm="Registry Realm""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].params["realm"], "Registry Realm");
        let c = parse_challenges(r#"Basic realm="a, \"b\"", Bearer realm=x, service=y"#);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].params["realm"], "a, \"b\"");
        assert_eq!(c[1].params["realm"], "x");
        assert_eq!(c[1].params["service"], "y");
    }

    #[test]
    fn docker_config_maps_hosts_and_hub_aliases() {
        let json = br#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOnNlY3JldA=="},"127.0.0.1:5000":{"username":"u","password":"p"}}}"#;
        let f = docker_config_credentials(json, "config.json").unwrap();
        assert_eq!(f("registry-1.docker.io").unwrap().username, "hub");
        assert_eq!(f("registry-1.docker.io").unwrap().secret, "secret");
        assert_eq!(f("127.0.0.1:5000").unwrap().secret, "p");
        assert!(f("other.io").is_none());
        let e = docker_config_credentials(br#"{"auths":{"x":{"auth":"!!"}}}"#, "c.json")
            .err()
            .unwrap();
        assert!(
            e.message.contains("c.json") && e.message.contains("auths.\"x\".auth"),
            "{e}"
        );
    }

    #[test]
    fn credentials_parse_user_password_with_colons() {
        let c = Credentials::parse("bob:pa:ss").unwrap();
        assert_eq!(c.username, "bob");
        assert_eq!(c.secret, "pa:ss");
        assert!(Credentials::parse("bob").is_err());
        assert!(!format!("{c:?}").contains("pa:ss"));
    }
}
