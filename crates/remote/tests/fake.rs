//! Failure injection against a minimal in-process HTTP/1.1 registry: wrong bytes,
//! dropped connections, Bearer token auth, retries, status mapping, schema1.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stevedore_remote::verify::sha256;
use stevedore_remote::{media, Credentials, Reference, Resolver, ResolverOptions};
use stevedore_types::{Descriptor, ErrorKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
struct Req {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Close the connection after this many body bytes.
    cut_after: Option<usize>,
}

fn reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    Reply {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.to_vec(),
        cut_after: None,
    }
}

type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// Serve `handler` on a free 127.0.0.1 port; returns `127.0.0.1:<port>` and the log
/// of requests.
async fn serve(handler: Handler) -> (String, Arc<Mutex<Vec<Req>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = l.local_addr().unwrap().to_string();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = l.accept().await else {
                return;
            };
            let handler = handler.clone();
            let log = log2.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // read one request head
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    buf.drain(..head_end);
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or_default().split(' ');
                    let req = Req {
                        method: first.next().unwrap_or_default().to_string(),
                        target: first.next().unwrap_or_default().to_string(),
                        headers: lines
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                            .collect(),
                    };
                    let len: usize = req
                        .header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..len);
                    log.lock().unwrap().push(req.clone());
                    let r = handler(&req);
                    let mut out = format!(
                        "HTTP/1.1 {} X\r\nContent-Length: {}\r\n",
                        r.status,
                        r.body.len()
                    );
                    for (k, v) in &r.headers {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    if req.method != "HEAD" {
                        let n = r.cut_after.unwrap_or(r.body.len()).min(r.body.len());
                        bytes.extend_from_slice(&r.body[..n]);
                    }
                    if sock.write_all(&bytes).await.is_err() {
                        return;
                    }
                    if r.cut_after.is_some() {
                        let _ = sock.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (host, log)
}

fn quick() -> ResolverOptions {
    ResolverOptions {
        retries: 3,
        retry_delay: Duration::from_millis(10),
        ..Default::default()
    }
}

fn refr(host: &str, rest: &str) -> Reference {
    Reference::parse_normalized(&format!("{host}/{rest}")).unwrap()
}

#[tokio::test]
async fn blob_with_wrong_bytes_fails_naming_expected_and_actual_digest() {
    let good = b"the bytes the digest promises".to_vec();
    let evil = b"the bytes the registry serves".to_vec();
    assert_eq!(good.len(), evil.len());
    let desc = Descriptor::new("application/octet-stream", sha256(&good), good.len() as i64);
    let served = evil.clone();
    let (host, _) = serve(Arc::new(move |_r: &Req| reply(200, &[], &served))).await;
    let repo = Resolver::new(quick())
        .repository(&refr(&host, "a/b:c"))
        .await
        .unwrap();
    let mut f = repo.fetch(&desc).await.unwrap();
    let mut n = 0;
    let e = loop {
        match f.chunk().await {
            Ok(Some(c)) => n += c.len(),
            Ok(None) => panic!("mismatching blob accepted"),
            Err(e) => break e,
        }
    };
    assert_eq!(n, evil.len());
    assert_eq!(e.kind, ErrorKind::FailedPrecondition, "{e}");
    assert!(e.message.contains(&desc.digest.to_string()), "{e}");
    assert!(e.message.contains(&sha256(&evil).to_string()), "{e}");

    // too many bytes fail as they arrive
    let short = Descriptor::new("application/octet-stream", sha256(&good[..5]), 5);
    let mut f = repo.fetch(&short).await.unwrap();
    let e = f.chunk().await.unwrap_err();
    assert!(e.message.contains("more than the expected 5 bytes"), "{e}");
}

#[tokio::test]
async fn dropped_connection_resumes_with_range_and_verifies() {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let desc = Descriptor::new("application/octet-stream", sha256(&data), data.len() as i64);
    let served = data.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let (host, log) = serve(Arc::new(move |r: &Req| {
        let n = c2.fetch_add(1, Ordering::SeqCst);
        match r
            .header("range")
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
        {
            Some(start) => {
                let s: usize = start.parse().unwrap();
                let cr = format!("bytes {s}-{}/{}", served.len() - 1, served.len());
                let mut rep = reply(206, &[("Content-Range", &cr)], &served[s..]);
                if n == 1 {
                    // break the first resume too
                    rep.cut_after = Some(10_000);
                }
                rep
            }
            None => Reply {
                cut_after: Some(70_000),
                ..reply(200, &[], &served)
            },
        }
    }))
    .await;
    let repo = Resolver::new(quick())
        .repository(&refr(&host, "a/b:c"))
        .await
        .unwrap();
    let mut f = repo.fetch(&desc).await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = f.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert!(got == data);
    assert_eq!(f.resumes(), 2);
    let ranges: Vec<Option<String>> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.header("range").map(str::to_string))
        .collect();
    assert_eq!(
        ranges,
        [
            None,
            Some("bytes=70000-".to_string()),
            Some("bytes=80000-".to_string())
        ]
    );
}

#[tokio::test]
async fn resume_from_offset_with_prefix_hash_verifies_whole_blob() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 97) as u8).collect();
    let desc = Descriptor::new("application/octet-stream", sha256(&data), data.len() as i64);
    let served = data.clone();
    // this server ignores Range: the client must skip what it has
    let (host, _) = serve(Arc::new(move |_r: &Req| reply(200, &[], &served))).await;
    let repo = Resolver::new(quick())
        .repository(&refr(&host, "a/b:c"))
        .await
        .unwrap();
    let mut prefix = stevedore_remote::Hasher::new(desc.digest.algorithm());
    prefix.update(&data[..12_345]);
    let mut f = repo.fetch_from(&desc, 12_345, Some(prefix)).await.unwrap();
    let mut got = data[..12_345].to_vec();
    while let Some(c) = f.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert!(got == data);

    // resuming at the very end needs no request and still verifies
    let mut all = stevedore_remote::Hasher::new(desc.digest.algorithm());
    all.update(&data);
    let mut f = repo
        .fetch_from(&desc, data.len() as u64, Some(all))
        .await
        .unwrap();
    assert!(f.chunk().await.unwrap().is_none());
    let mut wrong = stevedore_remote::Hasher::new(desc.digest.algorithm());
    wrong.update(&data[1..]);
    wrong.update(b"x");
    let mut f = repo
        .fetch_from(&desc, data.len() as u64, Some(wrong))
        .await
        .unwrap();
    let e = f.chunk().await.unwrap_err();
    assert!(e.message.contains("digest mismatch"), "{e}");
}

fn manifest_handler(
    manifest: Vec<u8>,
    media_type: &'static str,
    with_digest: bool,
) -> impl Fn(&Req) -> Reply {
    let digest = sha256(&manifest).to_string();
    move |r: &Req| {
        if r.target.contains("/manifests/") {
            let mut h = vec![("Content-Type", media_type)];
            if with_digest {
                h.push(("Docker-Content-Digest", digest.as_str()));
            }
            return reply(200, &h, &manifest);
        }
        reply(404, &[], b"")
    }
}

#[tokio::test]
async fn bearer_token_is_fetched_with_basic_credentials_and_cached_per_scope() {
    let manifest =
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec();
    let token_calls = Arc::new(AtomicUsize::new(0));
    let tc = token_calls.clone();
    let host_cell: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let hc = host_cell.clone();
    let inner = manifest_handler(manifest.clone(), media::OCI_MANIFEST, true);
    let (host, log) = serve(Arc::new(move |r: &Req| {
        if r.target.starts_with("/token") {
            tc.fetch_add(1, Ordering::SeqCst);
            // "alice:pw" in base64
            if r.header("authorization") != Some("Basic YWxpY2U6cHc=") {
                return reply(401, &[], b"{}");
            }
            if !r.target.contains("scope=repository%3Alib%2Fapp%3Apull") || !r.target.contains("service=fake") {
                return reply(400, &[], b"{}");
            }
            return reply(200, &[("Content-Type", "application/json")], br#"{"token":"tok-1","expires_in":300}"#);
        }
        if r.header("authorization") != Some("Bearer tok-1") {
            let realm = format!(
                "Bearer realm=\"http://{}/token\",service=\"fake\",scope=\"repository:lib/app:pull\"",
                hc.lock().unwrap()
            );
            return reply(
                401,
                &[("WWW-Authenticate", &realm), ("Content-Type", "application/json")],
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
            );
        }
        inner(r)
    }))
    .await;
    *host_cell.lock().unwrap() = host.clone();
    let creds = Credentials::parse("alice:pw").unwrap();
    let r = Resolver::new(ResolverOptions {
        credentials: Some(Arc::new(move |_h: &str| Some(creds.clone()))),
        ..quick()
    });
    let rf = refr(&host, "lib/app:v1");
    let d = r.resolve(&rf).await.unwrap();
    assert_eq!(d.digest, sha256(&manifest));
    assert_eq!(d.media_type, media::OCI_MANIFEST);
    let d2 = r.resolve(&rf).await.unwrap();
    assert_eq!(d2, d);
    let repo = r.repository(&rf).await.unwrap();
    assert_eq!(&repo.fetch_manifest(&d).await.unwrap()[..], &manifest[..]);
    assert_eq!(
        token_calls.load(Ordering::SeqCst),
        1,
        "token cached per scope"
    );
    // one 401, then every request carried the token
    let unauth = log
        .lock()
        .unwrap()
        .iter()
        .filter(|q| !q.target.starts_with("/token") && q.header("authorization").is_none())
        .count();
    assert_eq!(unauth, 1);

    // wrong password: the token endpoint refuses
    let bad = Credentials::parse("alice:nope").unwrap();
    let r = Resolver::new(ResolverOptions {
        credentials: Some(Arc::new(move |_h: &str| Some(bad.clone()))),
        ..quick()
    });
    let e = r.resolve(&rf).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains(&host), "{e}");
    assert!(e.message.contains(&rf.to_string()), "{e}");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_reported() {
    let manifest = br#"{"schemaVersion":2}"#.to_vec();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = manifest_handler(manifest.clone(), media::OCI_MANIFEST, true);
    let (host, _) = serve(Arc::new(move |r: &Req| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            return reply(503, &[], b"busy");
        }
        inner(r)
    }))
    .await;
    let rf = refr(&host, "a/b:c");
    let d = Resolver::new(quick()).resolve(&rf).await.unwrap();
    assert_eq!(d.digest, sha256(&manifest));
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (host, _) = serve(Arc::new(|_r: &Req| reply(502, &[], b""))).await;
    let rf = refr(&host, "a/b:c");
    let e = Resolver::new(quick()).resolve(&rf).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("502"), "{e}");
    assert!(e.message.contains(&host), "{e}");
}

#[tokio::test]
async fn statuses_map_to_error_kinds_naming_reference_and_registry() {
    for (status, kind, word) in [
        (403, ErrorKind::PermissionDenied, "denied"),
        (404, ErrorKind::NotFound, "not found"),
        (429, ErrorKind::ResourceExhausted, "too many requests"),
    ] {
        let (host, _) = serve(Arc::new(move |_r: &Req| {
            reply(
                status,
                &[("Content-Type", "application/json")],
                br#"{"errors":[{"code":"X","message":"y"}]}"#,
            )
        }))
        .await;
        let rf = refr(&host, "a/b:c");
        let desc = Descriptor::new("application/octet-stream", sha256(b"z"), 1);
        let repo = Resolver::new(quick()).repository(&rf).await.unwrap();
        let e = repo.fetch(&desc).await.err().unwrap();
        assert_eq!(e.kind, kind, "{status}: {e}");
        assert!(e.message.contains(&host), "{e}");
        assert!(e.message.contains(&desc.digest.to_string()), "{e}");
        let e = repo.resolve(&rf).await.unwrap_err();
        assert_eq!(e.kind, kind, "{status}: {e}");
        assert!(e.message.contains(&rf.to_string()), "{e}");
        assert!(e.message.contains(word), "{e}");
    }
}

#[tokio::test]
async fn schema1_manifests_are_rejected_as_unsupported() {
    let (host, _) = serve(Arc::new(manifest_handler(
        br#"{"schemaVersion":1}"#.to_vec(),
        media::DOCKER_SCHEMA1_MANIFEST,
        true,
    )))
    .await;
    let rf = refr(&host, "old/img:v1");
    let e = Resolver::new(quick()).resolve(&rf).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotImplemented, "{e}");
    assert!(e.message.contains("schema1"), "{e}");
    assert!(e.message.contains(&rf.to_string()), "{e}");
}

#[tokio::test]
async fn resolve_without_digest_header_hashes_the_manifest_body() {
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#.to_vec();
    let (host, log) = serve(Arc::new(manifest_handler(
        manifest.clone(),
        media::OCI_INDEX,
        false,
    )))
    .await;
    let rf = refr(&host, "a/b:c");
    let d = Resolver::new(quick()).resolve(&rf).await.unwrap();
    assert_eq!(d.digest, sha256(&manifest));
    assert_eq!(d.size, manifest.len() as i64);
    assert_eq!(d.media_type, media::OCI_INDEX);
    let methods: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, ["HEAD", "GET"]);
    let accept = log.lock().unwrap()[0]
        .header("accept")
        .unwrap_or_default()
        .to_string();
    assert!(
        accept.contains(media::OCI_INDEX) && accept.contains(media::DOCKER_MANIFEST),
        "{accept}"
    );
    assert!(!accept.contains("v1+prettyjws"), "{accept}");
}
