//! The HTTP side of the distribution client: per-endpoint HTTP clients (TLS from
//! hosts.toml), requests with authentication and bounded retries, error mapping,
//! and `resolve`.

use crate::auth::{Authorizer, CredentialsFn};
use crate::hosts::{configure_hosts, HostOptions, RegistryHost};
use crate::media;
use crate::reference::Reference;
use crate::verify::Hasher;
use bytes::Bytes;
use reqwest::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stevedore_types::{Descriptor, Digest, Error, ErrorKind, Result};

/// Settings of a [`Resolver`].
#[derive(Clone)]
pub struct ResolverOptions {
    /// Hosts directory and default scheme (`--hosts-dir`, `--plain-http`).
    pub hosts: HostOptions,
    /// Credentials per registry host (`--user`, a config file, a helper).
    pub credentials: Option<CredentialsFn>,
    /// Attempts after the first on 5xx, connection errors and truncated bodies.
    pub retries: u32,
    /// First backoff delay; doubles per attempt, capped at 2 s.
    pub retry_delay: Duration,
    pub user_agent: String,
}

impl Default for ResolverOptions {
    fn default() -> Self {
        ResolverOptions {
            hosts: HostOptions::default(),
            credentials: None,
            retries: 5,
            retry_delay: Duration::from_millis(100),
            user_agent: format!("stevedore/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

impl std::fmt::Debug for ResolverOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverOptions")
            .field("hosts", &self.hosts)
            .field("credentials", &self.credentials.is_some())
            .field("retries", &self.retries)
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) options: ResolverOptions,
    pub(crate) auth: Authorizer,
    clients: Mutex<HashMap<String, reqwest::Client>>,
}

/// Entry point: maps references to repositories on configured endpoints. Cheap to
/// clone; tokens and HTTP connections are shared by clones.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

/// One endpoint of a repository with its HTTP client.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: RegistryHost,
    pub(crate) http: reqwest::Client,
}

/// A repository (`domain/path`) on its endpoints, ready for resolve/fetch/push.
#[derive(Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
    pub(crate) domain: String,
    pub(crate) path: String,
    pub(crate) endpoints: Arc<Vec<Endpoint>>,
}

/// The request body of one registry call.
pub(crate) enum ReqBody {
    Empty,
    Bytes(Bytes),
    /// A stream can be sent once: no retry after it has been taken.
    Once(Mutex<Option<reqwest::Body>>),
}

impl ReqBody {
    fn take(&self) -> Option<reqwest::Body> {
        match self {
            ReqBody::Empty => Some(reqwest::Body::from(Bytes::new())),
            ReqBody::Bytes(b) => Some(reqwest::Body::from(b.clone())),
            ReqBody::Once(m) => m.lock().ok()?.take(),
        }
    }
    fn is_replayable(&self) -> bool {
        !matches!(self, ReqBody::Once(_))
    }
}

/// The chain of causes of an HTTP error, so "connection refused" is visible.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn read_pem_files(files: &[std::path::PathBuf]) -> Result<Vec<reqwest::Certificate>> {
    let mut out = Vec::new();
    for f in files {
        let data = std::fs::read(f)
            .map_err(|e| Error::from(e).context(format!("read CA certificate {}", f.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&data)
            .map_err(|e| Error::invalid(format!("load CA certificate {}: {e}", f.display())))?;
        if certs.is_empty() {
            return Err(Error::invalid(format!(
                "load CA certificate {}: no PEM certificate found",
                f.display()
            )));
        }
        out.extend(certs);
    }
    Ok(out)
}

fn build_http_client(host: &RegistryHost, user_agent: &str) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(user_agent)
        .connect_timeout(Duration::from_secs(30))
        // a transfer stalled this long is broken: fetches resume it with Range
        .read_timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(30))
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::limited(10));
    if host.scheme == "http" {
        // no TLS on this endpoint: skip loading the system roots (slow to parse)
        b = b.tls_built_in_root_certs(false);
    }
    for c in read_pem_files(&host.ca_certs)? {
        b = b.add_root_certificate(c);
    }
    if let Some((cert, key)) = host.client_pairs.first() {
        let mut pem = std::fs::read(cert).map_err(|e| {
            Error::from(e).context(format!("read client certificate {}", cert.display()))
        })?;
        if let Some(key) = key {
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| {
                Error::from(e).context(format!("read client key {}", key.display()))
            })?);
        }
        let id = reqwest::Identity::from_pem(&pem).map_err(|e| {
            Error::invalid(format!("load client certificate {}: {e}", cert.display()))
        })?;
        b = b.identity(id);
    }
    if host.skip_verify == Some(true) {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| Error::internal(format!("build HTTP client for {}: {e}", host.host)))
}

impl Resolver {
    pub fn new(options: ResolverOptions) -> Self {
        let auth = Authorizer::new(options.credentials.clone());
        Resolver {
            inner: Arc::new(Inner {
                options,
                auth,
                clients: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The repository of `reference` on its configured endpoints (reads the hosts
    /// directory and certificates on a blocking thread).
    pub async fn repository(&self, reference: &Reference) -> Result<Repository> {
        let domain = reference.domain().to_string();
        if domain.is_empty() {
            return Err(Error::invalid(format!(
                "reference {reference} has no registry host"
            )));
        }
        let inner = self.inner.clone();
        let d = domain.clone();
        let endpoints = tokio::task::spawn_blocking(move || -> Result<Vec<Endpoint>> {
            let hosts = configure_hosts(&d, &inner.options.hosts)?;
            let mut out = Vec::new();
            for host in hosts {
                let key = format!(
                    "{}|{:?}|{:?}|{:?}",
                    host.scheme, host.ca_certs, host.client_pairs, host.skip_verify
                );
                let cached = inner.clients.lock().ok().and_then(|m| m.get(&key).cloned());
                let http = match cached {
                    Some(c) => c,
                    None => {
                        let c = build_http_client(&host, &inner.options.user_agent)?;
                        if let Ok(mut m) = inner.clients.lock() {
                            m.insert(key, c.clone());
                        }
                        c
                    }
                };
                out.push(Endpoint { host, http });
            }
            Ok(out)
        })
        .await
        .map_err(|e| Error::internal(format!("configure hosts for {domain}: {e}")))??;
        Ok(Repository {
            inner: self.inner.clone(),
            domain,
            path: reference.path().to_string(),
            endpoints: Arc::new(endpoints),
        })
    }

    /// Resolve `reference` (tag or digest) to the descriptor of its manifest or index.
    pub async fn resolve(&self, reference: &Reference) -> Result<Descriptor> {
        self.repository(reference).await?.resolve(reference).await
    }
}

/// Which capability a request needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    Pull,
    Resolve,
    Push,
}

impl Repository {
    /// `domain/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The endpoint hosts, in the order they are tried (for messages and tests).
    pub fn endpoint_urls(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.host.base_url()).collect()
    }

    pub(crate) fn endpoints_for(&self, need: Need) -> Vec<Endpoint> {
        self.endpoints
            .iter()
            .filter(|e| {
                let c = e.host.capabilities;
                match need {
                    Need::Pull => c.pull,
                    Need::Resolve => c.pull && c.resolve,
                    Need::Push => c.push,
                }
            })
            .cloned()
            .collect()
    }

    pub(crate) fn pull_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:pull", self.path)]
    }

    pub(crate) fn push_scope(&self) -> Vec<String> {
        vec![format!("repository:{}:pull,push", self.path)]
    }

    /// `<base>/<path>/<suffix>`, with `ns=<domain>` when the endpoint is a mirror.
    pub(crate) fn url(&self, ep: &Endpoint, suffix: &str) -> Result<url::Url> {
        let raw = format!("{}/{}/{}", ep.host.base_url(), self.path, suffix);
        let mut u = url::Url::parse(&raw)
            .map_err(|e| Error::invalid(format!("invalid registry URL {raw:?}: {e}")))?;
        let is_proxy = self.domain != ep.host.host
            && !(self.domain == "docker.io" && ep.host.host == crate::reference::DOCKER_HUB_HOST);
        if is_proxy {
            u.query_pairs_mut().append_pair("ns", &self.domain);
        }
        Ok(u)
    }

    /// Send one request to `ep` with authentication and bounded retries. Returns the
    /// final response whatever its status (callers map statuses to errors).
    pub(crate) async fn send(
        &self,
        ep: &Endpoint,
        method: Method,
        url: url::Url,
        headers: HeaderMap,
        body: ReqBody,
        scopes: &[String],
    ) -> Result<reqwest::Response> {
        let opts = &self.inner.options;
        let host = ep.host.host.as_str();
        let mut authz = self.inner.auth.cached_header(host, scopes);
        let mut auth_tried = false;
        let mut attempt = 0u32;
        loop {
            let Some(b) = body.take() else {
                return Err(Error::unavailable(format!(
                    "{method} {url}: request body already sent, cannot retry"
                )));
            };
            let mut req = ep.http.request(method.clone(), url.clone());
            for (k, v) in &ep.host.headers {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::try_from(k.as_str()),
                    HeaderValue::try_from(v.as_str()),
                ) {
                    req = req.header(k, v);
                }
            }
            req = req.headers(headers.clone());
            if let Some(a) = &authz {
                req = req.header(AUTHORIZATION, a);
            }
            if method != Method::GET && method != Method::HEAD {
                req = req.body(b);
            }
            let retry_allowed = attempt < opts.retries && body.is_replayable();
            match req.send().await {
                Err(e) => {
                    let msg = error_chain(&e);
                    if retry_allowed
                        && (e.is_connect() || e.is_request() || e.is_timeout() || e.is_body())
                    {
                        tracing::debug!(%url, error = %msg, attempt, "retrying registry request");
                        backoff(opts, attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Err(Error::unavailable(format!(
                        "{method} {url} on registry {host}: {msg}"
                    )));
                }
                Ok(resp) => {
                    let status = resp.status();
                    if status == StatusCode::UNAUTHORIZED && !auth_tried && body.is_replayable() {
                        auth_tried = true;
                        let challenges: Vec<String> = resp
                            .headers()
                            .get_all(WWW_AUTHENTICATE)
                            .iter()
                            .filter_map(|v| v.to_str().ok().map(str::to_string))
                            .collect();
                        if let Some(h) = self
                            .inner
                            .auth
                            .authorize(&ep.http, host, scopes, &challenges, authz.as_deref())
                            .await?
                        {
                            authz = Some(h);
                            continue;
                        }
                        return Ok(resp);
                    }
                    if status.is_server_error() && retry_allowed {
                        tracing::debug!(%url, %status, attempt, "retrying registry request");
                        backoff(opts, attempt).await;
                        attempt += 1;
                        continue;
                    }
                    return Ok(resp);
                }
            }
        }
    }

    /// Resolve `reference` to a manifest/index descriptor: HEAD (then GET when the
    /// registry gives no digest or size) on each resolve endpoint in order.
    pub async fn resolve(&self, reference: &Reference) -> Result<Descriptor> {
        let object = reference.object().ok_or_else(|| {
            Error::invalid(format!(
                "resolve {reference}: reference has no tag or digest"
            ))
        })?;
        let dgst = reference.digest().cloned();
        let (paths, need) = match &dgst {
            Some(d) => (
                vec![format!("manifests/{d}"), format!("blobs/{d}")],
                Need::Pull,
            ),
            None => (vec![format!("manifests/{object}")], Need::Resolve),
        };
        let hosts = self.endpoints_for(need);
        if hosts.is_empty() {
            return Err(Error::not_found(format!(
                "resolve {reference}: no resolve hosts"
            )));
        }
        let scopes = self.pull_scope();
        let mut first_err: Option<Error> = None;
        let mut accept = HeaderMap::new();
        accept.insert(ACCEPT, HeaderValue::from_static(media::MANIFEST_ACCEPT));
        for path in &paths {
            for ep in &hosts {
                let url = self.url(ep, path)?;
                let resp = match self
                    .send(
                        ep,
                        Method::HEAD,
                        url.clone(),
                        accept.clone(),
                        ReqBody::Empty,
                        &scopes,
                    )
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        first_err.get_or_insert(e.context(format!("resolve {reference}")));
                        continue;
                    }
                };
                let status = resp.status();
                if status == StatusCode::NOT_FOUND {
                    continue;
                }
                if !status.is_success() {
                    let e =
                        status_error(resp, &format!("resolve {reference}"), &ep.host.host).await;
                    first_err.get_or_insert(e);
                    continue;
                }
                let mut content_type = media_type_of(resp.headers());
                let mut size = header_len(resp.headers());
                let mut digest = dgst.clone();
                if digest.is_none() && size.is_some() {
                    if let Some(h) = resp.headers().get("Docker-Content-Digest") {
                        let s = h.to_str().unwrap_or_default();
                        digest = Some(s.parse::<Digest>().map_err(|e| {
                            Error::invalid(format!(
                                "resolve {reference} on registry {}: Docker-Content-Digest {s:?} is not a valid digest: {}",
                                ep.host.host, e.message
                            ))
                        })?);
                    }
                }
                if digest.is_none() || size.is_none() {
                    let resp = self
                        .send(
                            ep,
                            Method::GET,
                            url.clone(),
                            accept.clone(),
                            ReqBody::Empty,
                            &scopes,
                        )
                        .await
                        .map_err(|e| e.context(format!("resolve {reference}")))?;
                    if !resp.status().is_success() {
                        return Err(status_error(
                            resp,
                            &format!("resolve {reference}"),
                            &ep.host.host,
                        )
                        .await);
                    }
                    content_type = media_type_of(resp.headers());
                    reject_schema1(&content_type, reference, &ep.host.host)?;
                    let mut hasher = Hasher::new(
                        digest
                            .as_ref()
                            .map_or(stevedore_types::Algorithm::Sha256, |d| d.algorithm()),
                    );
                    let mut n: i64 = 0;
                    let mut resp = resp;
                    while let Some(chunk) = resp.chunk().await.map_err(|e| {
                        Error::unavailable(format!(
                            "resolve {reference} on registry {}: read manifest: {}",
                            ep.host.host,
                            error_chain(&e)
                        ))
                    })? {
                        n += chunk.len() as i64;
                        if n > media::MAX_MANIFEST_SIZE {
                            break;
                        }
                        hasher.update(&chunk);
                    }
                    size = Some(n);
                    if digest.is_none() {
                        digest = Some(hasher.finish());
                    }
                }
                reject_schema1(&content_type, reference, &ep.host.host)?;
                let size = size.unwrap_or(0);
                if size > media::MAX_MANIFEST_SIZE {
                    first_err.get_or_insert(Error::not_found(format!(
                        "resolve {reference}: rejecting {size} byte manifest from registry {}",
                        ep.host.host
                    )));
                    continue;
                }
                let digest = digest.expect("digest set above");
                tracing::debug!(%reference, %digest, host = %ep.host.host, "resolved");
                return Ok(Descriptor::new(content_type, digest, size));
            }
        }
        Err(first_err.unwrap_or_else(|| {
            Error::not_found(format!(
                "resolve {reference}: not found on {}",
                hosts
                    .iter()
                    .map(|e| e.host.host.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }))
    }
}

fn reject_schema1(content_type: &str, reference: &Reference, host: &str) -> Result<()> {
    if media::is_schema1(content_type) {
        return Err(Error::unimplemented(format!(
            "resolve {reference} on registry {host}: Docker schema1 manifests ({content_type}) are unsupported; push the image with a schema2 or OCI manifest"
        )));
    }
    Ok(())
}

pub(crate) async fn backoff(opts: &ResolverOptions, attempt: u32) {
    let d = opts
        .retry_delay
        .saturating_mul(1u32 << attempt.min(10))
        .min(Duration::from_secs(2));
    tokio::time::sleep(d).await;
}

/// The media type from `Content-Type` without parameters (`text/plain` is schema1,
/// as containerd assumes).
pub(crate) fn media_type_of(h: &HeaderMap) -> String {
    let ct = h
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ct = ct.split(';').next().unwrap_or_default().trim();
    if ct == "text/plain" {
        media::DOCKER_SCHEMA1_MANIFEST.to_string()
    } else {
        ct.to_string()
    }
}

/// `Content-Length` as sent (reqwest reports 0 for HEAD bodies).
pub(crate) fn header_len(h: &HeaderMap) -> Option<i64> {
    h.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

#[derive(serde::Deserialize)]
struct RegistryErrors {
    #[serde(default)]
    errors: Vec<RegistryError>,
}

#[derive(serde::Deserialize)]
struct RegistryError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Map a non-success response to an error naming the operation, the registry,
/// the status and the registry's own error codes.
pub(crate) async fn status_error(resp: reqwest::Response, op: &str, host: &str) -> Error {
    let status = resp.status();
    let kind = match status.as_u16() {
        401 | 403 => ErrorKind::PermissionDenied,
        404 => ErrorKind::NotFound,
        429 => ErrorKind::ResourceExhausted,
        400 | 405 | 411 | 413 | 416 => ErrorKind::InvalidArgument,
        409 => ErrorKind::AlreadyExists,
        s if s >= 500 => ErrorKind::Unavailable,
        _ => ErrorKind::Unknown,
    };
    // error bodies are small; cap what is read
    let mut detail = String::new();
    let mut resp = resp;
    let mut body = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        body.extend_from_slice(&c);
        if body.len() > 64 * 1024 {
            break;
        }
    }
    if let Ok(e) = serde_json::from_slice::<RegistryErrors>(&body) {
        let parts: Vec<String> = e
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code, e.message))
            .collect();
        if !parts.is_empty() {
            detail = format!(" ({})", parts.join("; "));
        }
    }
    let what = match status.as_u16() {
        401 => "unauthorized: authentication required or credentials rejected",
        403 => "access denied",
        404 => "not found",
        429 => "too many requests (rate limited)",
        _ => "",
    };
    let what = if what.is_empty() {
        String::new()
    } else {
        format!(" {what}")
    };
    Error::new(
        kind,
        format!("{op} on registry {host}: {status}{what}{detail}"),
    )
}
