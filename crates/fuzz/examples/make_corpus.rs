//! Regenerates the committed seed corpus of every fuzz target:
//!
//!     cargo run -p stevedore-fuzz --example make_corpus
//!
//! Seeds are real inputs: filters and references from containerd's docs and
//! tests, the sample image's manifest/index/config (and Docker and hostile
//! variants), layer tars (two also gzip'd) with symlinks, hardlinks, whiteouts and
//! `..` escapes, archives written by stevedore's own OCI exporter from a content
//! store plus a Docker `save` tar, containerd's documented hosts.toml, and
//! stevedored's full default config. Output is deterministic.

use std::path::{Path, PathBuf};
use stevedore_fuzz::samples::{self, tar_of, Entry};
use stevedore_images::archive::{ExportImage, Exporter, OciExporter};
use stevedore_images::content::digest_of;
use stevedore_images::mediatypes::*;
use stevedore_images::testing::DirStore;
use stevedore_types::platform::All;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus().join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn lines(target: &str, items: &[&str]) {
    for (i, s) in items.iter().enumerate() {
        write(target, &format!("{i:03}.txt"), s.as_bytes());
    }
}

fn filters() {
    lines(
        "filter",
        &[
            "name==docker.io/library/busybox:latest",
            "name!=bar",
            "name~=^f.o$",
            "name~=/^docker\\.io/",
            "name~=|o+|",
            "labels.a",
            "labels.\"foo.bar/baz\"==\"x y\"",
            "labels.\"io.containerd.image.name\"~=\"busybox\"",
            "name==foo,labels.a==1",
            "name == foo , labels.a == 1",
            "topic==\"/tasks/exit\",namespace==default",
            "id==x\nid==y",
            "labels.\"containerd.io/gc.root\"",
            "name==\"a\\\"b\\tc\\u00e9\\x41\"",
            "kind==active,parent==\"\"",
            "event.exit_status!=0",
        ],
    );
}

fn references() {
    lines(
        "reference",
        &[
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:1.36",
            "library/busybox",
            "user/app:v1",
            "localhost:5000/app",
            "127.0.0.1:5000/foo/bar:tag@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "ghcr.io/containerd/busybox@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "index.docker.io/library/alpine",
            "[::1]:5000/ns/img:tag",
            "registry.example:443/a/b/c/d_e__f-g.h:x.y-z",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "linux/arm64/v8",
            "windows/amd64",
            "Docker.io/Library/Busybox",
            "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        ],
    );
}

fn spec_json() {
    let img = samples::image();
    let (layer, config, manifest, index) = (&img[0], &img[1], &img[2], &img[3]);
    write("spec_json", "oci-config.json", &config.1);
    write("spec_json", "oci-manifest.json", &manifest.1);
    write("spec_json", "oci-index.json", &index.1);
    let docker_manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{DOCKER_LAYER_GZIP}","digest":"{}","size":{},"urls":["https://example.com/l"]}},{{"mediaType":"{DOCKER_LAYER_FOREIGN_GZIP}","digest":"{}","size":{}}}]}}"#,
        config.0.digest, config.0.size, layer.0.digest, layer.0.size, layer.0.digest, layer.0.size
    );
    write(
        "spec_json",
        "docker-manifest.json",
        docker_manifest.as_bytes(),
    );
    let docker_list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST_LIST}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"arm64","os":"linux","variant":"v8"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux","os.version":"10.0","os.features":["x"]}}}},{{"mediaType":"{OCI_INDEX}","digest":"{}","size":{}}}]}}"#,
        manifest.0.digest,
        manifest.0.size,
        manifest.0.digest,
        manifest.0.size,
        index.0.digest,
        index.0.size
    );
    write("spec_json", "docker-list.json", docker_list.as_bytes());
    write(
        "spec_json",
        "schema1.json",
        br#"{"schemaVersion":1,"name":"library/busybox","tag":"latest","architecture":"amd64","fsLayers":[{"blobSum":"sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"}],"history":[{"v1Compatibility":"{}"}]}"#,
    );
    let artifact = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x-fuzz","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2,"data":"e30="}},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}},"annotations":{{"a":"b"}}}}"#,
        manifest.0.digest, manifest.0.size
    );
    write("spec_json", "artifact.json", artifact.as_bytes());
    write(
        "spec_json",
        "docker-config.json",
        br#"{"architecture":"arm","variant":"v7","os":"linux","config":{"User":"1000:1000","WorkingDir":"/w","Entrypoint":["/bin/sh","-c"]},"rootfs":{"type":"layers","diff_ids":[]},"container_config":{}}"#,
    );
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut out = Vec::new();
    let mut w = stevedore_diff::compress(stevedore_diff::Compression::Gzip, &mut out).unwrap();
    w.write_all(bytes).unwrap();
    w.finish_stream().unwrap();
    out
}

fn tar_apply() {
    let cases: Vec<(&str, Vec<Entry>)> = vec![
        ("sample.tar", vec![]),
        (
            "whiteouts.tar",
            vec![
                Entry::Dir("a/"),
                Entry::File("a/.wh.gone", b""),
                Entry::Dir("opaque/"),
                Entry::File("opaque/.wh..wh..opq", b""),
                Entry::File("opaque/kept", b"k"),
                Entry::File(".wh.top", b""),
                Entry::Char("a/dev", 0, 0),
                Entry::Fifo("a/fifo"),
            ],
        ),
        (
            "dotdot.tar",
            vec![
                Entry::File("../sentinel/canary", b"escaped"),
                Entry::File("a/../../escape", b"x"),
                Entry::File("./ok", b"ok"),
            ],
        ),
        (
            "absolute.tar",
            vec![
                Entry::File("/abs-file", b"abs"),
                Entry::Dir("/etc/"),
                Entry::File("//double", b"d"),
            ],
        ),
        (
            "symlink-escape.tar",
            vec![
                Entry::Symlink("out", "../sentinel"),
                Entry::File("out/canary", b"through the link"),
                Entry::Symlink("abs", "/"),
                Entry::File("abs/tmp/fuzz-escape", b"x"),
                Entry::Symlink("chain1", "chain2"),
                Entry::Symlink("chain2", "../../.."),
                Entry::File("chain1/x", b"x"),
            ],
        ),
        (
            "hardlink-escape.tar",
            vec![
                Entry::Hardlink("h1", "../sentinel/canary"),
                Entry::Symlink("s", "../sentinel"),
                Entry::Hardlink("h2", "s/canary"),
                Entry::File("f", b"f"),
                Entry::Hardlink("h3", "f"),
                Entry::Hardlink("h4", "/etc/passwd"),
            ],
        ),
        (
            "replace-and-whiteout-escape.tar",
            vec![
                Entry::Symlink("d", "../sentinel"),
                Entry::File("d/.wh.canary", b""),
                Entry::File("d/.wh..wh..opq", b""),
                Entry::File(".wh...", b""),
                Entry::File("x", b"1"),
                Entry::Dir("x/"),
                Entry::Symlink("x", "/proc/self/root"),
            ],
        ),
    ];
    for (name, entries) in cases {
        let bytes = if entries.is_empty() {
            samples::layer()
        } else {
            tar_of(&entries)
        };
        // two gzip'd layers: the applier's input may be a raw gzip stream
        if matches!(name, "sample.tar" | "symlink-escape.tar") {
            write("tar_apply", &format!("{name}.gz"), &gzip(&bytes));
        }
        write("tar_apply", name, &bytes);
    }
    // a PAX header carrying a long path and an xattr, and a GNU long name
    let mut b = tar::Builder::new(Vec::new());
    let long = format!("{}/file", "d".repeat(150));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_mtime(samples::MTIME);
    h.set_size(4);
    b.append_data(&mut h, &long, &b"long"[..]).unwrap();
    b.append_pax_extensions([
        ("SCHILY.xattr.user.fuzz", &b"v"[..]),
        ("path", &b"pax/name"[..]),
    ])
    .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o4755);
    h.set_mtime(samples::MTIME);
    h.set_size(3);
    b.append_data(&mut h, "plain", &b"pax"[..]).unwrap();
    write(
        "tar_apply",
        "pax-and-longname.tar",
        &b.into_inner().unwrap(),
    );
}

fn archives() {
    // stevedore's own exporter writing the sample image out of a content store
    let tmp = tempfile::tempdir().unwrap();
    let store = DirStore::new(tmp.path()).unwrap();
    let img = samples::image();
    for (d, bytes) in &img {
        store.put(&d.media_type, bytes).unwrap();
    }
    let index = &img[3].0;
    let manifest = &img[2].0;
    let exporter = OciExporter {
        platform: Some(Box::new(All)),
        all_platforms: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    exporter
        .export(
            &store,
            &[ExportImage::named(
                "docker.io/library/sample:latest",
                manifest,
            )],
            &mut out,
        )
        .unwrap();
    write("archive_import", "oci-manifest.tar", &out);
    let mut out = Vec::new();
    exporter
        .export(
            &store,
            &[
                ExportImage::named("docker.io/library/sample:index", index),
                ExportImage::manifest(manifest),
            ],
            &mut out,
        )
        .unwrap();
    write("archive_import", "oci-index.tar", &out);

    // `docker save` (v1.2): manifest.json, repositories, <id>/layer.tar,
    // a config named by its hex, and a second image whose layer is a symlink
    let layer = samples::layer();
    let config = &img[1].1;
    let id = digest_of(config).hex().to_string();
    let layer_id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let manifest_json = format!(
        r#"[{{"Config":"{id}.json","RepoTags":["sample:latest","example.com/ns/sample:v1"],"Layers":["{layer_id}/layer.tar"]}},{{"Config":"{id}.json","RepoTags":null,"Layers":["linked/layer.tar"]}}]"#
    );
    let repositories = format!(r#"{{"sample":{{"latest":"{layer_id}"}}}}"#);
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(samples::MTIME);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add(&format!("{layer_id}/VERSION"), b"1.0");
    add(&format!("{layer_id}/json"), b"{}");
    add(&format!("{layer_id}/layer.tar"), &layer);
    add(&format!("{id}.json"), config);
    add("manifest.json", manifest_json.as_bytes());
    add("repositories", repositories.as_bytes());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_mode(0o777);
    h.set_mtime(samples::MTIME);
    h.set_size(0);
    b.append_link(
        &mut h,
        "linked/layer.tar",
        format!("../{layer_id}/layer.tar"),
    )
    .unwrap();
    write(
        "archive_import",
        "docker-save.tar",
        &b.into_inner().unwrap(),
    );

    // a layout whose blob name lies about its digest, and one escaping the root
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o444);
        h.set_mtime(samples::MTIME);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(
        &format!("blobs/sha256/{}", img[2].0.digest.hex()),
        b"not the manifest",
    );
    add("index.json", &img[3].1);
    write(
        "archive_import",
        "oci-lying-blob.tar",
        &b.into_inner().unwrap(),
    );
}

fn hosts() {
    write(
        "hosts_toml",
        "containerd-docs.toml",
        br#"server = "https://registry-1.docker.io"

[host."https://mirror.registry"]
  capabilities = ["pull"]
  ca = "/etc/certs/mirror.pem"
  skip_verify = false
  [host."https://mirror.registry".header]
    x-custom-2 = ["value1", "value2"]

[host."https://mirror-bak.registry/us"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://mirror.registry"]
  capabilities = ["pull"]

[host."https://test-1.registry"]
  capabilities = ["pull", "resolve", "push"]
  ca = ["/etc/certs/test-1-ca.pem", "/etc/certs/special.pem"]
  client = [["/etc/certs/client.cert", "/etc/certs/client.key"],["/etc/certs/client.pem", ""]]

[host."https://test-2.registry"]
  client = "/etc/certs/client.pem"

[host."https://test-3.registry"]
  client = ["/etc/certs/client-1.pem", "/etc/certs/client-2.pem"]

[host."https://noprefixnoncompliant.registry"]
  override_path = true

[host."https://onlyprefix.registry/api"]

[host."https://nonstandard.registry/v2/api"]
  override_path = true
"#,
    );
    write(
        "hosts_toml",
        "local-plain-http.toml",
        br#"server = "http://127.0.0.1:5000"
[host."http://127.0.0.1:5000"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
  [host."http://127.0.0.1:5000".header]
    authorization = "Basic Zm9vOmJhcg=="
"#,
    );
    write(
        "hosts_toml",
        "server-only.toml",
        b"server = \"https://[::1]:8443/prefix\"\nca = \"ca.crt\"\nclient = [[\"c.cert\", \"c.key\"]]\n",
    );
}

fn daemon_config() {
    let registry = stevedore_services::registry::plugins();
    write(
        "daemon_config",
        "default.toml",
        stevedored::config::Config::default_toml(&registry).as_bytes(),
    );
    write(
        "daemon_config",
        "small.toml",
        br#"version = 2
root = "/var/lib/stevedore"
state = "/run/stevedore"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs"]
required_plugins = ["io.containerd.grpc.v1.content"]

[grpc]
address = "/run/stevedore/stevedore.sock"
uid = 0
gid = 1000

[debug]
level = "debug"
format = "json"
"#,
    );
    write("daemon_config", "empty.toml", b"");
}

fn main() {
    let _ = std::fs::remove_dir_all(corpus());
    filters();
    references();
    spec_json();
    tar_apply();
    archives();
    hosts();
    daemon_config();
    println!("wrote {}", corpus().display());
}
