//! Image records through the real ctr and the stevedore CLI.

use std::time::Duration;
use stevedore_api::services::images::{images_client::ImagesClient, CreateImageRequest, Image};
use stevedore_api::types::Descriptor;
use stevedore_e2e::Daemon;
use tonic::metadata::MetadataValue;

async fn create_record(d: &Daemon, ns: &str, name: &str) {
    let mut c = ImagesClient::new(d.channel().await);
    let mut req = tonic::Request::new(CreateImageRequest {
        image: Some(Image {
            name: name.into(),
            labels: [("team".to_string(), "a".to_string())].into(),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: format!("sha256:{}", "ab".repeat(32)),
                size: 42,
                annotations: Default::default(),
            }),
            created_at: None,
            updated_at: None,
        }),
        source_date_epoch: None,
    });
    req.metadata_mut()
        .insert("containerd-namespace", MetadataValue::try_from(ns).unwrap());
    c.create(req).await.unwrap();
}

#[tokio::test]
async fn ctr_images_tag_ls_rm_on_records() {
    let d = Daemon::start();
    let w = d.synced_watch(d.ctr_command(&["events"]));
    create_record(&d, "default", "docker.io/library/a:1").await;
    w.expect_line(
        &["/images/create", "docker.io/library/a:1"],
        Duration::from_secs(10),
    );
    let ls = d.ctr_ok(&["images", "ls", "-q"]);
    assert_eq!(ls.trim(), "docker.io/library/a:1");
    // TODO(lead): switch to `ctr images tag` once leases land (ctr tags under a lease)
    d.cli_ok(&[
        "images",
        "tag",
        "docker.io/library/a:1",
        "docker.io/library/a:2",
    ]);
    let o = d.cli(&[
        "images",
        "tag",
        "docker.io/library/a:1",
        "docker.io/library/a:2",
    ]);
    assert!(!o.status.success(), "tagging onto an existing name fails");
    let ls = d.ctr_ok(&["images", "ls", "-q", "name~=:2$"]);
    assert_eq!(ls.trim(), "docker.io/library/a:2");
    let ls = d.ctr_ok(&["images", "ls"]);
    assert!(ls.contains(&format!("sha256:{}", "ab".repeat(32))), "{ls}");
    assert!(ls.contains("team=a"), "{ls}");
    // namespaces isolate images
    assert_eq!(d.ctr_ok(&["-n", "other", "images", "ls", "-q"]).trim(), "");
    d.ctr_ok(&["images", "rm", "docker.io/library/a:1"]);
    w.expect_line(
        &["/images/delete", "docker.io/library/a:1"],
        Duration::from_secs(10),
    );
    assert_eq!(
        d.ctr_ok(&["images", "ls", "-q"]).trim(),
        "docker.io/library/a:2"
    );
    let o = d.ctr(&["namespaces", "rm", "default"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("images"));
}

#[tokio::test]
async fn stevedore_images_ls_tag_rm() {
    let d = Daemon::start();
    create_record(&d, "team", "example.com/x:1").await;
    let j: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["-n", "team", "-o", "json", "images", "ls"])).unwrap();
    assert_eq!(j[0]["name"], "example.com/x:1");
    assert_eq!(j[0]["target"]["size"], 42);
    d.cli_ok(&[
        "-n",
        "team",
        "images",
        "tag",
        "example.com/x:1",
        "example.com/x:2",
    ]);
    let t = d.cli_ok(&["-n", "team", "images", "ls"]);
    assert!(t.starts_with("REF"), "{t}");
    assert!(t.contains("example.com/x:2") && t.contains("42 B"), "{t}");
    d.cli_ok(&[
        "-n",
        "team",
        "images",
        "rm",
        "example.com/x:1",
        "example.com/x:2",
    ]);
    assert_eq!(d.cli_ok(&["-n", "team", "images", "ls", "-q"]).trim(), "");
    let o = d.cli(&["-n", "team", "images", "rm", "nope"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("image \"nope\": not found"));
}

#[tokio::test]
async fn deleting_an_image_with_sync_collects_its_content() {
    use std::io::Write;
    use std::process::Stdio;
    let d = Daemon::start();
    let blob = b"{\"schemaVersion\":2}".to_vec();
    let digest = {
        let o = std::process::Command::new("sha256sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(&blob)?;
                c.wait_with_output()
            })
            .unwrap();
        format!(
            "sha256:{}",
            String::from_utf8(o.stdout)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
        )
    };
    let mut ing = d
        .ctr_command(&["content", "ingest", "--expected-digest", &digest, "ref1"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    ing.stdin.take().unwrap().write_all(&blob).unwrap();
    assert!(ing.wait().unwrap().success());
    assert!(d.ctr_ok(&["content", "ls", "-q"]).contains(&digest));
    let mut c = ImagesClient::new(d.channel().await);
    let mut req = tonic::Request::new(CreateImageRequest {
        image: Some(Image {
            name: "held:1".into(),
            labels: Default::default(),
            target: Some(Descriptor {
                media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                digest: digest.clone(),
                size: blob.len() as i64,
                annotations: Default::default(),
            }),
            created_at: None,
            updated_at: None,
        }),
        source_date_epoch: None,
    });
    req.metadata_mut().insert(
        "containerd-namespace",
        MetadataValue::try_from("default").unwrap(),
    );
    c.create(req).await.unwrap();
    drop(c);
    // an unrelated collection keeps the image's content
    let lease = d.ctr_ok(&["leases", "create"]).trim().to_string();
    d.ctr_ok(&["leases", "rm", "--sync", &lease]);
    assert!(d.ctr_ok(&["content", "ls", "-q"]).contains(&digest));
    d.ctr_ok(&["images", "rm", "--sync", "held:1"]);
    assert!(!d.ctr_ok(&["content", "ls", "-q"]).contains(&digest));
}
