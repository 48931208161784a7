//! The test-image generator (`bench/images/mkimage.py`): deterministic output
//! that skopeo and the real containerd accept.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use stevedore_e2e::{big_image, busybox_image, multi_image, require_tool, Images};

/// sha256 of every file under `dir`, keyed by relative path.
fn tree_digests(dir: &Path) -> BTreeMap<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("find . -type f -print0 | sort -z | xargs -0 sha256sum")
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let (h, p) = l.split_once("  ").unwrap();
            (p.to_string(), h.to_string())
        })
        .collect()
}

fn skopeo_inspect(transport_ref: &str) -> serde_json::Value {
    let skopeo = require_tool("skopeo", "skopeo");
    let out = Command::new(skopeo)
        .args(["inspect", transport_ref])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {transport_ref}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn generate_twice(make: impl Fn(&Path) -> Images) -> Images {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let first = make(a.path());
    make(b.path());
    let (da, db) = (tree_digests(a.path()), tree_digests(b.path()));
    assert!(da.len() >= 5, "{da:?}");
    assert_eq!(da, db, "two runs of the generator differ");
    // keep the first run's files alive for the caller
    std::mem::forget(a);
    first
}

#[test]
fn busybox_image_is_deterministic_and_accepted_by_skopeo() {
    let img = generate_twice(busybox_image);
    assert_eq!(img.name, "docker.io/library/busybox:latest");
    let oci = skopeo_inspect(&format!("oci-archive:{}", img.oci_tar.display()));
    assert_eq!(oci["Digest"], img.digest.as_str());
    assert_eq!(oci["Layers"].as_array().unwrap().len(), 1);
    let docker = skopeo_inspect(&format!(
        "docker-archive:{}",
        img.docker_tar.as_ref().unwrap().display()
    ));
    assert_eq!(docker["Os"], "linux");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(img.oci_dir.join("index.json")).unwrap()).unwrap();
    let ann = &index["manifests"][0]["annotations"];
    assert_eq!(ann["io.containerd.image.name"], img.name.as_str());
    assert_eq!(ann["org.opencontainers.image.ref.name"], "latest");
    std::fs::remove_dir_all(&img.dir).unwrap();
}

#[test]
fn big_image_has_five_layers_in_gzip_and_zstd_deterministically() {
    for comp in ["gzip", "zstd"] {
        let img = generate_twice(|d| big_image(d, comp, 0.01));
        let layers = img.info["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 5);
        for l in layers {
            assert!(
                l["mediaType"].as_str().unwrap().ends_with(comp),
                "{l} is not {comp}"
            );
        }
        assert!(img.info["files"].as_u64().unwrap() > 250, "{}", img.info);
        let inspected = skopeo_inspect(&format!("oci:{}", img.oci_dir.display()));
        assert_eq!(inspected["Layers"].as_array().unwrap().len(), 5);
        // the top layer carries the whiteouts and the opaque directory
        let top = layers[4]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:");
        let blob = img.oci_dir.join("blobs/sha256").join(top);
        let list = Command::new("tar")
            .arg(if comp == "zstd" { "--zstd" } else { "-z" })
            .arg("-tf")
            .arg(&blob)
            .output()
            .unwrap();
        let names = String::from_utf8(list.stdout).unwrap();
        assert!(names.contains("/.wh.f00000.txt"), "{names}");
        assert!(names.contains("/.wh..wh..opq"), "{names}");
        std::fs::remove_dir_all(&img.dir).unwrap();
    }
}

#[test]
fn multi_image_indexes_amd64_and_arm64() {
    let img = generate_twice(multi_image);
    let platforms: Vec<String> = img.info["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    let skopeo = require_tool("skopeo", "skopeo");
    let raw = Command::new(skopeo)
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", img.oci_tar.display()))
        .output()
        .unwrap();
    assert!(raw.status.success());
    let index: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    std::fs::remove_dir_all(&img.dir).unwrap();
}
