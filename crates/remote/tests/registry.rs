//! Against a real Debian `docker-registry` started per test on a free port: push with
//! stevedore's own push code, then resolve and fetch back, verifying bytes and digests.

use std::sync::Arc;
use stevedore_remote::testutil::{TestBlob, TestImage, TestRegistry};
use stevedore_remote::{
    media, Credentials, HostOptions, PushBlobOptions, PushOutcome, PushReader, Reference,
    Repository, Resolver, ResolverOptions,
};
use stevedore_types::{Descriptor, ErrorKind};

fn resolver() -> Resolver {
    Resolver::new(ResolverOptions::default())
}

fn resolver_with(user: &str, pass: &str) -> Resolver {
    let c = Credentials {
        username: user.into(),
        secret: pass.into(),
    };
    Resolver::new(ResolverOptions {
        credentials: Some(Arc::new(move |_host: &str| Some(c.clone()))),
        ..Default::default()
    })
}

fn reference(reg: &TestRegistry, name: &str) -> Reference {
    Reference::parse_normalized(&format!("{}/{name}", reg.host())).unwrap()
}

async fn fetch_all(repo: &Repository, desc: &Descriptor) -> Vec<u8> {
    let mut r = repo.fetch(desc).await.unwrap();
    let mut out = Vec::new();
    while let Some(c) = r.chunk().await.unwrap() {
        out.extend_from_slice(&c);
    }
    out
}

async fn assert_image_round_trips(resolver: &Resolver, refr: &Reference, img: &TestImage) {
    let repo = resolver.repository(refr).await.unwrap();
    let root = repo.resolve(refr).await.unwrap();
    assert_eq!(root.digest, img.root().desc.digest);
    assert_eq!(root.size, img.root().desc.size);
    assert_eq!(root.media_type, img.root().desc.media_type);
    assert_eq!(
        &repo.fetch_manifest(&root).await.unwrap()[..],
        &img.root().data[..]
    );
    for b in &img.blobs {
        assert_eq!(fetch_all(&repo, &b.desc).await, b.data, "{}", b.desc.digest);
    }
    // by digest too
    let by_digest = refr.with_digest(root.digest.clone());
    let again = repo.resolve(&by_digest).await.unwrap();
    assert_eq!(again.digest, root.digest);
    assert_eq!(again.size, root.size);
}

#[tokio::test]
async fn pushes_oci_image_then_resolves_and_fetches_identical_bytes() {
    let reg = TestRegistry::start();
    let busybox = std::fs::read("/bin/busybox").unwrap_or_else(|_| b"#!/bin/sh\n".to_vec());
    let img = TestImage::oci(
        &[("bin/busybox", &busybox), ("etc/hello", b"hello\n")],
        "amd64",
    );
    let r = resolver();
    let refr = reference(&reg, "test/oci:v1");
    img.push(&r, &refr).await.unwrap();
    assert_image_round_trips(&r, &refr, &img).await;

    // a second push finds everything in place
    let repo = r.repository(&refr).await.unwrap();
    for b in &img.blobs {
        let reader: PushReader = Box::new(std::io::Cursor::new(b.data.clone()));
        let outcome = repo
            .push(&b.desc, reader, &PushBlobOptions::default())
            .await
            .unwrap();
        assert_eq!(outcome, PushOutcome::Exists, "{}", b.desc.digest);
    }
}

#[tokio::test]
async fn pushes_docker_schema2_image_and_resolves_its_media_type() {
    let reg = TestRegistry::start();
    let img = TestImage::docker(&[("etc/os-release", b"ID=test\n")], "amd64");
    let r = resolver();
    let refr = reference(&reg, "test/docker:latest");
    img.push(&r, &refr).await.unwrap();
    let root = r.resolve(&refr).await.unwrap();
    assert_eq!(root.media_type, media::DOCKER_MANIFEST);
    assert_image_round_trips(&r, &refr, &img).await;
}

#[tokio::test]
async fn pushes_multi_platform_index_and_fetches_each_platform() {
    let reg = TestRegistry::start();
    let amd = TestImage::oci(&[("arch", b"amd64\n")], "amd64");
    let arm = TestImage::oci(&[("arch", b"arm64\n")], "arm64");
    let index = TestImage::index(&[amd.clone(), arm.clone()]);
    let r = resolver();
    let refr = reference(&reg, "test/multi:v1");
    index.push(&r, &refr).await.unwrap();
    let repo = r.repository(&refr).await.unwrap();
    let root = repo.resolve(&refr).await.unwrap();
    assert_eq!(root.media_type, media::OCI_INDEX);
    let idx: serde_json::Value =
        serde_json::from_slice(&repo.fetch_manifest(&root).await.unwrap()).unwrap();
    let children: Vec<Descriptor> = serde_json::from_value(idx["manifests"].clone()).unwrap();
    assert_eq!(children.len(), 2);
    assert_eq!(children[1].platform.as_ref().unwrap().architecture, "arm64");
    let arm_manifest = repo.fetch_manifest(&children[1]).await.unwrap();
    assert_eq!(&arm_manifest[..], &arm.root().data[..]);
    assert_image_round_trips(&r, &refr, &index).await;
}

#[tokio::test]
async fn missing_tag_is_not_found_naming_reference_and_registry() {
    let reg = TestRegistry::start();
    let refr = reference(&reg, "test/none:nope");
    let e = resolver().resolve(&refr).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains(&refr.to_string()), "{e}");
    assert!(e.message.contains(&reg.host()), "{e}");
    // a missing blob
    let repo = resolver().repository(&refr).await.unwrap();
    let blob = TestBlob::new("application/octet-stream", b"absent".to_vec());
    let e = repo.fetch(&blob.desc).await.err().unwrap();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(e.message.contains(&blob.desc.digest.to_string()), "{e}");
}

#[tokio::test]
async fn basic_auth_registry_needs_the_right_credentials() {
    let reg = TestRegistry::start_with_basic_auth("tester", "s3cret:pw");
    let img = TestImage::oci(&[("f", b"auth\n")], "amd64");
    let refr = reference(&reg, "private/img:v1");

    let e = img.push(&resolver(), &refr).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains(&reg.host()), "{e}");
    assert!(e.message.contains("401"), "{e}");

    let e = img
        .push(&resolver_with("tester", "wrong"), &refr)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");

    let good = resolver_with("tester", "s3cret:pw");
    img.push(&good, &refr).await.unwrap();
    assert_image_round_trips(&good, &refr, &img).await;
    let e = resolver().resolve(&refr).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains(&refr.to_string()), "{e}");
}

#[tokio::test]
async fn mounts_blobs_across_repositories_and_uploads_in_chunks() {
    let reg = TestRegistry::start();
    let r = resolver();
    let a = r.repository(&reference(&reg, "team/a:v1")).await.unwrap();
    let b = r.repository(&reference(&reg, "team/b:v1")).await.unwrap();
    // 1 MiB + a bit, pushed in 256 KiB PATCH chunks
    let data: Vec<u8> = (0..(1 << 20) + 1234u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let blob = TestBlob::new("application/octet-stream", data);
    let chunked = PushBlobOptions {
        chunk_size: Some(256 * 1024),
        ..Default::default()
    };
    let reader: PushReader = Box::new(std::io::Cursor::new(blob.data.clone()));
    assert_eq!(
        a.push_blob(&blob.desc, reader, &chunked).await.unwrap(),
        PushOutcome::Uploaded
    );
    assert!(a.blob_exists(&blob.desc.digest).await.unwrap());
    assert!(!b.blob_exists(&blob.desc.digest).await.unwrap());

    let mount = PushBlobOptions {
        mount_from: Some("team/a".into()),
        ..Default::default()
    };
    let reader: PushReader = Box::new(tokio::io::empty());
    assert_eq!(
        b.push_blob(&blob.desc, reader, &mount).await.unwrap(),
        PushOutcome::Mounted
    );
    assert_eq!(fetch_all(&b, &blob.desc).await, blob.data);

    // a mount from a repository without the blob reports false
    let other = TestBlob::new("application/octet-stream", b"not there".to_vec());
    assert!(!b.mount_blob(&other.desc, "team/a").await.unwrap());
}

#[tokio::test]
async fn upload_with_wrong_digest_is_rejected() {
    let reg = TestRegistry::start();
    let repo = resolver()
        .repository(&reference(&reg, "x/y:z"))
        .await
        .unwrap();
    let blob = TestBlob::new("application/octet-stream", b"the real bytes".to_vec());
    let reader: PushReader = Box::new(std::io::Cursor::new(b"other  bytes!!".to_vec()));
    let e = repo
        .push_blob(&blob.desc, reader, &PushBlobOptions::default())
        .await
        .unwrap_err();
    assert!(e.message.contains(&blob.desc.digest.to_string()), "{e}");
    assert!(!repo.blob_exists(&blob.desc.digest).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_resumes_with_range_after_registry_is_killed_mid_transfer() {
    let mut reg = TestRegistry::start();
    let r = resolver();
    let repo = r.repository(&reference(&reg, "big/blob:v1")).await.unwrap();
    // 24 MiB of pseudo-random bytes: more than socket buffers hold
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let data: Vec<u8> = (0..24 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let blob = TestBlob::new("application/octet-stream", data);
    let reader: PushReader = Box::new(std::io::Cursor::new(blob.data.clone()));
    repo.push_blob(&blob.desc, reader, &PushBlobOptions::default())
        .await
        .unwrap();

    let mut f = repo.fetch(&blob.desc).await.unwrap();
    let mut got = Vec::with_capacity(blob.data.len());
    while got.len() < 1 << 20 {
        got.extend_from_slice(&f.chunk().await.unwrap().unwrap());
    }
    let before = got.len();
    reg.kill();
    reg.restart();
    while let Some(c) = f.chunk().await.unwrap() {
        got.extend_from_slice(&c);
    }
    assert!(before < blob.data.len());
    assert!(f.resumes() >= 1, "the transfer was not interrupted");
    assert_eq!(got.len(), blob.data.len());
    assert!(got == blob.data, "resumed bytes differ");
    assert_eq!(f.position(), blob.desc.size as u64);
}

#[tokio::test]
async fn mirrors_from_hosts_dir_serve_pull_and_resolve_in_order() {
    let reg = TestRegistry::start();
    let img = TestImage::oci(&[("m", b"mirror\n")], "amd64");
    // the image lives on the test registry under the mirrored path
    let on_reg = reference(&reg, "lib/app:v1");
    img.push(&resolver(), &on_reg).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let host_dir = dir.path().join("registry.example:5000");
    std::fs::create_dir(&host_dir).unwrap();
    let dead = stevedore_remote::testutil::free_port();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"http://127.0.0.1:{dead}\"\n\n\
             [host.\"http://127.0.0.1:{dead}\"]\n  capabilities = [\"pull\", \"resolve\"]\n\n\
             [host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  [host.\"http://{}\".header]\n    x-test = \"1\"\n",
            reg.host(),
            reg.host()
        ),
    )
    .unwrap();
    let r = Resolver::new(ResolverOptions {
        hosts: HostOptions {
            hosts_dir: Some(dir.path().to_path_buf()),
            default_scheme: None,
        },
        retries: 1,
        ..Default::default()
    });
    let refr = Reference::parse_normalized("registry.example:5000/lib/app:v1").unwrap();
    let repo = r.repository(&refr).await.unwrap();
    assert_eq!(
        repo.endpoint_urls(),
        [
            format!("http://127.0.0.1:{dead}/v2"),
            format!("http://{}/v2", reg.host()),
            format!("http://127.0.0.1:{dead}/v2"),
        ]
    );
    // the first mirror is down, the second serves
    let root = repo.resolve(&refr).await.unwrap();
    assert_eq!(root.digest, img.root().desc.digest);
    for b in &img.blobs {
        assert_eq!(fetch_all(&repo, &b.desc).await, b.data);
    }
    // push only goes to the push-capable server, which is down
    let e = img.push(&r, &refr).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains(&format!("127.0.0.1:{dead}")), "{e}");
}

#[tokio::test]
async fn tls_registry_is_trusted_through_hosts_toml_ca_or_skip_verify() {
    let reg = TestRegistry::start_tls();
    let img = TestImage::oci(&[("t", b"tls\n")], "amd64");
    let dir = tempfile::tempdir().unwrap();
    let opts = |dir: &std::path::Path| ResolverOptions {
        hosts: HostOptions {
            hosts_dir: Some(dir.to_path_buf()),
            // loopback defaults to plain HTTP; ask for https as `--plain-http=false` would not
            default_scheme: Some("https".into()),
        },
        retries: 0,
        ..Default::default()
    };
    let refr = reference(&reg, "secure/img:v1");

    // untrusted self-signed certificate: refused, naming the registry
    let e = img
        .push(&Resolver::new(opts(dir.path())), &refr)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains(&reg.host()), "{e}");
    assert!(e.message.to_lowercase().contains("certificate"), "{e}");

    // ca = "<relative path>" in <dir>/<host>_<port>_/hosts.toml
    let host_dir = dir.path().join(reg.host().replace(':', "_") + "_");
    std::fs::create_dir(&host_dir).unwrap();
    std::fs::copy(reg.ca_cert().unwrap(), host_dir.join("registry-ca.pem")).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://{}\"\nca = \"registry-ca.pem\"\n",
            reg.host()
        ),
    )
    .unwrap();
    let r = Resolver::new(opts(dir.path()));
    img.push(&r, &refr).await.unwrap();
    assert_image_round_trips(&r, &refr, &img).await;

    // skip_verify = true
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!("server = \"https://{}\"\nskip_verify = true\n", reg.host()),
    )
    .unwrap();
    let r = Resolver::new(opts(dir.path()));
    assert_image_round_trips(&r, &refr, &img).await;
}

#[tokio::test]
async fn token_auth_registry_accepts_bearer_tokens_from_its_realm() {
    let reg = TestRegistry::start_with_token_auth("tok-user", "tok-pass");
    let img = TestImage::oci(&[("b", b"bearer\n")], "amd64");
    let refr = reference(&reg, "tokens/img:v1");

    let e = img.push(&resolver(), &refr).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    let e = img
        .push(&resolver_with("tok-user", "bad"), &refr)
        .await
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::PermissionDenied, "{e}");
    assert!(e.message.contains("token"), "{e}");

    let good = resolver_with("tok-user", "tok-pass");
    img.push(&good, &refr).await.unwrap();
    assert_image_round_trips(&good, &refr, &img).await;
    // cross-repository mount needs a token with pull on the source too
    let other = good
        .repository(&reference(&reg, "tokens/copy:v1"))
        .await
        .unwrap();
    let layer = &img.blobs[0];
    let mount = PushBlobOptions {
        mount_from: Some("tokens/img".into()),
        ..Default::default()
    };
    let reader: PushReader = Box::new(tokio::io::empty());
    assert_eq!(
        other.push_blob(&layer.desc, reader, &mount).await.unwrap(),
        PushOutcome::Mounted
    );
}

#[tokio::test]
async fn skopeo_reads_what_stevedore_pushed_and_stevedore_reads_what_skopeo_copied() {
    stevedore_remote::testutil::require_tool("/usr/bin/skopeo", "skopeo");
    let reg = TestRegistry::start();
    let img = TestImage::index(&[
        TestImage::docker(&[("a", b"amd\n")], "amd64"),
        TestImage::docker(&[("a", b"arm\n")], "arm64"),
    ]);
    let r = resolver();
    let refr = reference(&reg, "cross/img:v1");
    img.push(&r, &refr).await.unwrap();

    let run = |args: &[&str]| {
        let out = std::process::Command::new("/usr/bin/skopeo")
            .args(args)
            .output()
            .expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let src = format!("docker://{}/cross/img:v1", reg.host());
    // skopeo sees our exact index bytes
    let raw = run(&["inspect", "--tls-verify=false", "--raw", &src]);
    assert_eq!(raw, img.root().data);
    // and copies every platform's blobs (verifying their digests) to another repository
    let dst = format!("docker://{}/cross/copy:v2", reg.host());
    run(&[
        "copy",
        "--all",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &src,
        &dst,
    ]);

    let copy = reference(&reg, "cross/copy:v2");
    assert_image_round_trips(&r, &copy, &img).await;
}
