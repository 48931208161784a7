//! Hostile-input limits through the real socket (see `stevedore_types::limits`):
//! oversized labels on every object kind, gRPC messages over containerd's
//! 16 MiB, ingests writing past their declared total, and archives whose
//! manifests are too large or list too many layers. Each is refused with
//! InvalidArgument (or tonic's message-size status) and the daemon keeps
//! serving.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use stevedore_api::services::containers::{
    container, containers_client::ContainersClient, Container, CreateContainerRequest,
};
use stevedore_api::services::images::{images_client::ImagesClient, CreateImageRequest, Image};
use stevedore_api::services::version::version_client::VersionClient;
use stevedore_api::types::Descriptor as PbDescriptor;
use stevedore_content::digest_of;
use stevedore_e2e::Daemon;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

/// A `k=<value>` label whose key plus value is `total` bytes.
fn label_of(total: usize) -> String {
    format!("k={}", "v".repeat(total - 1))
}

fn assert_label_refused(what: &str, o: &Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "{what}: an oversized label was accepted"
    );
    assert!(
        err.contains("label key and value greater than maximum size (4096 bytes), key: k")
            && err.contains("invalid argument"),
        "{what}: {err}"
    );
}

fn with_stdin(mut cmd: Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn request<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut().insert(
        "containerd-namespace",
        MetadataValue::from_static("default"),
    );
    r
}

fn image(name: &str, labels: HashMap<String, String>) -> CreateImageRequest {
    CreateImageRequest {
        image: Some(Image {
            name: name.into(),
            labels,
            target: Some(PbDescriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: digest_of(b"x").to_string(),
                size: 1,
                ..Default::default()
            }),
            ..Default::default()
        }),
        source_date_epoch: None,
    }
}

#[test]
fn oversized_labels_are_invalid_argument_on_every_object_kind() {
    let d = Daemon::start();
    let ok = label_of(4096);
    let big = label_of(4097);

    // namespaces: create and label
    assert_label_refused(
        "namespaces create",
        &d.ctr(&["namespaces", "create", "ns-big", &big]),
    );
    d.ctr_ok(&["namespaces", "create", "ns-ok", &ok]);
    assert_label_refused(
        "namespaces label",
        &d.ctr(&["namespaces", "label", "ns-ok", &big]),
    );

    // leases
    assert_label_refused("leases create", &d.ctr(&["leases", "create", &big]));
    d.ctr_ok(&["leases", "create", &ok]);

    // content
    let blob = b"limits e2e blob";
    let dg = digest_of(blob).to_string();
    let o = with_stdin(d.ctr_command(&["content", "ingest", "blob-ref"]), blob);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_label_refused("content label", &d.ctr(&["content", "label", &dg, &big]));
    d.ctr_ok(&["content", "label", &dg, &ok]);

    // snapshots
    d.ctr_ok(&["snapshots", "--snapshotter", "native", "prepare", "snap-1"]);
    assert_label_refused(
        "snapshots label",
        &d.ctr(&[
            "snapshots",
            "--snapshotter",
            "native",
            "label",
            "snap-1",
            &big,
        ]),
    );
    d.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "native",
        "label",
        "snap-1",
        &ok,
    ]);

    // images and containers (created over gRPC: they need no content)
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut images = ImagesClient::new(d.channel().await);
        images
            .create(request(image("example.com/limits:1", HashMap::new())))
            .await
            .unwrap();
        let mut containers = ContainersClient::new(d.channel().await);
        let st = containers
            .create(request(CreateContainerRequest {
                container: Some(Container {
                    id: "c-big".into(),
                    labels: HashMap::from([("k".to_string(), "v".repeat(4096))]),
                    runtime: Some(container::Runtime {
                        name: "io.containerd.runc.v2".into(),
                        options: None,
                    }),
                    ..Default::default()
                }),
            }))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(
            st.message()
                .contains("label key and value greater than maximum size (4096 bytes)"),
            "{st:?}"
        );
    });
    assert_label_refused(
        "images label",
        &d.ctr(&["images", "label", "example.com/limits:1", &big]),
    );
    d.ctr_ok(&["images", "label", "example.com/limits:1", &ok]);
}

#[test]
fn grpc_messages_over_16_mib_are_refused_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut images = ImagesClient::new(d.channel().await);
        // 15 MiB crosses the transport and is refused by the label check
        let st = images
            .create(request(image(
                "example.com/m:15",
                HashMap::from([("k".to_string(), "v".repeat(15 << 20))]),
            )))
            .await
            .unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{}", st.message());
        // 17 MiB never reaches the service
        let st = images
            .create(request(image(
                "example.com/m:17",
                HashMap::from([("k".to_string(), "v".repeat(17 << 20))]),
            )))
            .await
            .unwrap_err();
        assert!(
            matches!(st.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{st:?}"
        );
        assert!(
            st.message().contains("16777216") || st.message().contains("too large"),
            "{}",
            st.message()
        );
        // still serving, on the same and on a new connection
        images
            .create(request(image("example.com/m:ok", HashMap::new())))
            .await
            .unwrap();
        let mut v = VersionClient::new(d.channel().await);
        v.version(()).await.unwrap();
    });
}

#[test]
fn ingest_writing_past_its_expected_size_is_invalid_argument() {
    let d = Daemon::start();
    let data = vec![7u8; 20];
    let o = with_stdin(
        d.ctr_command(&["content", "ingest", "--expected-size", "10", "too-long"]),
        &data,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "20 bytes into a 10-byte ingest succeeded"
    );
    assert!(
        err.contains("exceeds the expected total of 10 bytes") && err.contains("invalid argument"),
        "{err}"
    );
    assert!(!d
        .ctr_ok(&["content", "ls", "-q"])
        .contains(&digest_of(&data).to_string()));
    // the same bytes with the right size go in
    let o = with_stdin(
        d.ctr_command(&["content", "ingest", "--expected-size", "20", "right"]),
        &data,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Write an OCI layout whose one manifest has `layers` layers and an
/// annotation of `pad` bytes, and tar it (with the system tar).
fn hostile_layout(dir: &Path, layers: usize, pad: usize) -> std::path::PathBuf {
    let root = dir.join("layout");
    let blobs = root.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| {
        let d = digest_of(bytes);
        std::fs::write(blobs.join(d.hex()), bytes).unwrap();
        (d.to_string(), bytes.len())
    };
    let (layer, lsize) = put(b"not really a layer");
    let (config, csize) =
        put(br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#);
    let l = format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":{lsize}}}"#
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":{csize}}},"layers":[{}],"annotations":{{"pad":"{}"}}}}"#,
        vec![l; layers].join(","),
        "p".repeat(pad)
    );
    let (m, msize) = put(manifest.as_bytes());
    std::fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        root.join("index.json"),
        format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{m}","size":{msize},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"example.com/hostile:latest"}}}}]}}"#
        ),
    )
    .unwrap();
    let tar = dir.join("hostile.tar");
    let st = Command::new("tar")
        .arg("-cf")
        .arg(&tar)
        .arg("-C")
        .arg(&root)
        .args(["oci-layout", "index.json", "blobs"])
        .status()
        .expect("run tar");
    assert!(st.success());
    tar
}

#[test]
fn imports_of_manifests_over_the_size_or_layer_limit_are_invalid_argument() {
    let d = Daemon::start();
    let work = tempfile::tempdir().unwrap();

    let many = hostile_layout(&work.path().join("many"), 501, 0);
    let o = d.cli(&["images", "import", "--no-unpack", many.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a 501-layer manifest was imported");
    assert!(err.contains("501 layers exceed the limit of 500"), "{err}");

    let big = hostile_layout(&work.path().join("big"), 1, 4 * 1048 * 1048);
    let o = d.cli(&["images", "import", "--no-unpack", big.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a manifest over 4 MiB was imported");
    assert!(err.contains("exceeds the limit of 4393216 bytes"), "{err}");

    // neither left an image behind, and a layout within the limits imports
    assert!(!d.ctr_ok(&["images", "ls", "-q"]).contains("hostile"));
    let fine = hostile_layout(&work.path().join("fine"), 500, 0);
    d.cli_ok(&["images", "import", "--no-unpack", fine.to_str().unwrap()]);
    assert!(d
        .ctr_ok(&["images", "ls", "-q"])
        .contains("example.com/hostile:latest"));
}
