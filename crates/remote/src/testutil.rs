//! Test helpers (feature `testutil`): a real Debian `docker-registry` on a free
//! 127.0.0.1 port with its own config and storage (optionally htpasswd basic auth),
//! and builders of small OCI / Docker schema2 images and indexes held in memory.
//!
//! Reuse from another crate's tests (e.g. e2e pull tests):
//! ```toml
//! [dev-dependencies]
//! stevedore-remote = { workspace = true, features = ["testutil"] }
//! ```
//! ```text
//! let reg = TestRegistry::start();                 // or start_with_basic_auth("u", "p")
//! let img = TestImage::oci(&[("hello.txt", b"hi")], "amd64");
//! let host = reg.host();                           // "127.0.0.1:<port>"
//! let refr = Reference::parse_normalized(&format!("{host}/test/img:v1"))?;
//! img.push(&resolver, &refr).await?;               // with stevedore's own push code
//! ```
//! The registry is killed and its directory removed on drop; `kill`/`restart`
//! inject outages (same port, same storage).

use crate::media;
use crate::push::{PushBlobOptions, PushReader};
use crate::reference::Reference;
use crate::verify::sha256;
use crate::Resolver;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use stevedore_types::{Descriptor, Platform, Result};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const HTPASSWD_BIN: &str = "/usr/bin/htpasswd";
const OPENSSL_BIN: &str = "/usr/bin/openssl";

/// Panic naming the Debian package when a tool a test needs is missing.
pub fn require_tool(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} not found: install the Debian package `{package}` (scripts/deps.sh)"
    );
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// A running `docker-registry serve` on 127.0.0.1.
pub struct TestRegistry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    credentials: Option<(String, String)>,
    tls: bool,
    token_server: Option<TokenServer>,
}

impl TestRegistry {
    /// Start an open registry.
    pub fn start() -> Self {
        Self::start_inner(None, false)
    }

    /// Start a registry serving HTTPS with a fresh self-signed certificate for
    /// 127.0.0.1 (see [`TestRegistry::ca_cert`]).
    pub fn start_tls() -> Self {
        Self::start_inner(None, true)
    }

    /// Start a registry requiring htpasswd (bcrypt) basic auth for `user`/`password`.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user.to_string(), password.to_string())), false)
    }

    /// Start a registry using token auth (`auth: token`) with a token server on
    /// another free port that issues RS256 JWTs (x5c header, signed by openssl)
    /// to `user`/`password`.
    pub fn start_with_token_auth(user: &str, password: &str) -> Self {
        Self::start_full(Some((user.to_string(), password.to_string())), false, true)
    }

    fn start_inner(credentials: Option<(String, String)>, tls: bool) -> Self {
        Self::start_full(credentials, tls, false)
    }

    fn start_full(credentials: Option<(String, String)>, tls: bool, token: bool) -> Self {
        require_tool(REGISTRY_BIN, "docker-registry");
        let dir = tempfile::tempdir().expect("registry temp dir");
        let port = free_port();
        let storage = dir.path().join("storage");
        std::fs::create_dir(&storage).expect("registry storage dir");
        let mut auth = String::new();
        let mut token_server = None;
        if token {
            let (u, p) = credentials.clone().expect("token auth needs credentials");
            let ts = TokenServer::start(dir.path(), u, p);
            auth = format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                ts.port,
                ts.cert.display()
            );
            token_server = Some(ts);
        } else if let Some((u, p)) = &credentials {
            require_tool(HTPASSWD_BIN, "apache2-utils");
            let out = Command::new(HTPASSWD_BIN)
                .args(["-Bbn", u, p])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).expect("write htpasswd");
            auth = format!(
                "auth:\n  htpasswd:\n    realm: stevedore-test\n    path: {}\n",
                file.display()
            );
        }
        let mut tls_config = String::new();
        if tls {
            require_tool(OPENSSL_BIN, "openssl");
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new(OPENSSL_BIN)
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .args([
                    "-subj",
                    "/CN=127.0.0.1",
                    "-addext",
                    "subjectAltName=IP:127.0.0.1",
                ])
                .args(["-addext", "basicConstraints=critical,CA:FALSE"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "openssl req failed: {out:?}");
            tls_config = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
        }
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls_config}{auth}",
            storage.display()
        );
        std::fs::write(dir.path().join("config.yml"), config).expect("write registry config");
        let mut r = TestRegistry {
            dir,
            port,
            child: None,
            credentials,
            tls,
            token_server,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("registry log");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!("docker-registry exited with {status}: {}", self.log());
                }
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on 127.0.0.1:{} within 10 s: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The self-signed certificate (PEM) of a TLS registry, to trust as its CA.
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.tls.then(|| self.dir.path().join("cert.pem"))
    }

    /// The htpasswd user and password, if the registry requires them.
    pub fn credentials(&self) -> Option<(String, String)> {
        self.credentials.clone()
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// SIGKILL the registry (connections drop mid-transfer).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill();
        if let Some(ts) = self.token_server.take() {
            ts.stop();
        }
    }
}

const TOKEN_SERVICE: &str = "stevedore-test-registry";
const TOKEN_ISSUER: &str = "stevedore-test-issuer";

/// A minimal token server (docker's token auth spec) on a std thread.
struct TokenServer {
    port: u16,
    cert: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    fn start(dir: &Path, user: String, password: String) -> Self {
        use base64::Engine;
        require_tool(OPENSSL_BIN, "openssl");
        let (cert, key) = (dir.join("token-cert.pem"), dir.join("token-key.pem"));
        let out = Command::new(OPENSSL_BIN)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=token-issuer",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl req failed: {out:?}");
        let der = Command::new(OPENSSL_BIN)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("run openssl x509");
        assert!(der.status.success(), "openssl x509 failed: {der:?}");
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind token server");
        let port = listener.local_addr().expect("token server addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let _ = serve_token(conn, &expected, &x5c, &key, &user);
            }
        });
        TokenServer {
            port,
            cert,
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_token(
    mut conn: TcpStream,
    expected_auth: &str,
    x5c: &str,
    key: &Path,
    user: &str,
) -> std::io::Result<()> {
    use base64::Engine;
    use std::io::{BufRead, BufReader};
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut auth = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = v.trim().to_string();
            }
        }
    }
    let target = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let url = url::Url::parse(&format!("http://token{target}")).map_err(std::io::Error::other)?;
    let respond = |conn: &mut TcpStream, status: &str, body: &str| {
        write!(
            conn,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if auth != expected_auth {
        return respond(
            &mut conn,
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#,
        );
    }
    // grant what each scope asks for
    let mut access = Vec::new();
    for (k, v) in url.query_pairs() {
        if k != "scope" {
            continue;
        }
        for scope in v.split(' ') {
            let parts: Vec<&str> = scope.splitn(3, ':').collect();
            if let [typ, name, actions] = parts.as_slice() {
                access.push(serde_json::json!({"type": typ, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}));
            }
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": user, "aud": TOKEN_SERVICE,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", std::process::id()), "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut child = Command::new(OPENSSL_BIN)
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("openssl stdin"))?
        .write_all(signing_input.as_bytes())?;
    let sig = child.wait_with_output()?;
    let jwt = format!("{signing_input}.{}", b64(&sig.stdout));
    let body =
        serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300}).to_string();
    respond(&mut conn, "200 OK", &body)
}

/// Content and its descriptor.
#[derive(Clone)]
pub struct TestBlob {
    pub desc: Descriptor,
    pub data: Vec<u8>,
}

impl TestBlob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Self {
        TestBlob {
            desc: Descriptor::new(media_type, sha256(&data), data.len() as i64),
            data,
        }
    }
}

/// An image as an ordered list of blobs: children first, the root (manifest or
/// index) last.
#[derive(Clone)]
pub struct TestImage {
    pub blobs: Vec<TestBlob>,
}

/// A gzip'ed tar layer of `files` (path, contents; mode 0644, or 0755 when the
/// path ends in `bin/...`), and the digest of the uncompressed tar (the diff ID).
pub fn layer_tar_gz(files: &[(&str, &[u8])]) -> (Vec<u8>, stevedore_types::Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(if path.contains("bin/") { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, *data)
            .expect("append tar entry");
    }
    let raw = tar.into_inner().expect("finish tar");
    let diff_id = sha256(&raw);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).expect("gzip layer");
    (gz.finish().expect("finish gzip"), diff_id)
}

fn image(files: &[(&str, &[u8])], arch: &str, docker: bool) -> TestImage {
    let (layer_mt, config_mt, manifest_mt) = if docker {
        (
            media::DOCKER_LAYER_GZIP,
            media::DOCKER_CONFIG,
            media::DOCKER_MANIFEST,
        )
    } else {
        (
            media::OCI_LAYER_GZIP,
            media::OCI_CONFIG,
            media::OCI_MANIFEST,
        )
    };
    let (gz, diff_id) = layer_tar_gz(files);
    let layer = TestBlob::new(layer_mt, gz);
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.to_string()]},
    });
    let config = TestBlob::new(config_mt, serde_json::to_vec(&config).expect("config json"));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest_mt,
        "config": config.desc,
        "layers": [layer.desc],
    });
    let manifest = TestBlob::new(
        manifest_mt,
        serde_json::to_vec(&manifest).expect("manifest json"),
    );
    TestImage {
        blobs: vec![layer, config, manifest],
    }
}

impl TestImage {
    /// A one-layer OCI image of `files` for `linux/<arch>`.
    pub fn oci(files: &[(&str, &[u8])], arch: &str) -> Self {
        image(files, arch, false)
    }

    /// A one-layer Docker schema2 image of `files` for `linux/<arch>`.
    pub fn docker(files: &[(&str, &[u8])], arch: &str) -> Self {
        image(files, arch, true)
    }

    /// An OCI index over `images` (each gets its root's platform from its config).
    pub fn index(images: &[TestImage]) -> Self {
        let mut blobs = Vec::new();
        let mut manifests = Vec::new();
        for img in images {
            let root = img.root().clone();
            let arch = img
                .blobs
                .iter()
                .find(|b| b.desc.media_type.contains("config"))
                .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c.data).ok())
                .and_then(|v| v["architecture"].as_str().map(str::to_string))
                .unwrap_or_else(|| "amd64".into());
            let mut d = root.desc.clone();
            d.platform = Some(Platform {
                os: "linux".into(),
                architecture: arch,
                ..Default::default()
            });
            manifests.push(d);
            blobs.extend(img.blobs.iter().cloned());
        }
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": manifests,
        });
        blobs.push(TestBlob::new(
            media::OCI_INDEX,
            serde_json::to_vec(&index).expect("index json"),
        ));
        TestImage { blobs }
    }

    /// The root blob (manifest or index).
    pub fn root(&self) -> &TestBlob {
        self.blobs.last().expect("image has blobs")
    }

    /// Push with stevedore's push code: every blob children-first, then the root by tag
    /// (when the reference has one).
    pub async fn push(&self, resolver: &Resolver, reference: &Reference) -> Result<()> {
        let repo = resolver.repository(reference).await?;
        let descs: Vec<Descriptor> = self.blobs.iter().map(|b| b.desc.clone()).collect();
        let blobs = self.blobs.clone();
        repo.push_all(
            &descs,
            reference.tag(),
            &PushBlobOptions::default(),
            move |d| {
                let data = blobs
                    .iter()
                    .find(|b| b.desc.digest == d.digest)
                    .map(|b| b.data.clone())
                    .unwrap_or_default();
                Box::pin(async move { Ok(Box::new(std::io::Cursor::new(data)) as PushReader) })
            },
        )
        .await?;
        Ok(())
    }
}
