//! The crate graph matches ARCHITECTURE.md: libraries only depend downwards.

use std::collections::BTreeMap;
use std::process::Command;

/// Layer of each workspace crate (see ARCHITECTURE.md, "Code map").
fn layers() -> BTreeMap<&'static str, u32> {
    BTreeMap::from([
        ("stevedore-types", 0),
        ("stevedore-metrics", 0),
        ("stevedore-api", 1),
        ("stevedore-sys", 1),
        ("stevedore-profile", 1),
        ("stevedore-ttrpc", 1),
        ("stevedore-snapshots", 2),
        ("stevedore-diff", 2),
        ("stevedore-content", 2),
        ("stevedore-remote", 2),
        ("stevedore-runtime", 2),
        ("stevedore-cni", 2),
        ("stevedore-cri-streaming", 2),
        ("stevedore-metadata", 3),
        ("stevedore-images", 4),
        ("stevedore-fsck", 4),
        ("stevedore-plugin", 5),
        ("stevedore-services", 5),
        ("stevedored", 7),
        ("stevedore-cri", 6),
        ("stevedore", 6),
        ("stevedore-shim", 6),
        ("stevedore-e2e", 8),
        ("stevedore-fuzz", 8),
    ])
}

#[test]
fn crate_dependencies_point_down_the_layers() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = layers();
    let mut seen = 0;
    for pkg in meta["packages"].as_array().unwrap() {
        let name = pkg["name"].as_str().unwrap();
        let Some(&layer) = layers.get(name) else {
            panic!("crate {name} has no layer: add it to ARCHITECTURE.md and this test");
        };
        seen += 1;
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dname = dep["name"].as_str().unwrap();
            if dep["kind"].as_str() == Some("dev") {
                continue;
            }
            if let Some(&dl) = layers.get(dname) {
                assert!(
                    dl < layer
                        || (dl == layer
                            && name == "stevedore-services"
                            && dname == "stevedore-plugin")
                        || (dl == layer && name == "stevedore-fsck" && dname == "stevedore-images"),
                    "{name} (layer {layer}) must not depend on {dname} (layer {dl})"
                );
            }
        }
        // libraries never see gRPC types, the config or the plugin registry
        if layer <= 4 && name != "stevedore-api" {
            for dep in pkg["dependencies"].as_array().unwrap() {
                let d = dep["name"].as_str().unwrap();
                if dep["kind"].as_str() == Some("dev") {
                    continue;
                }
                // hosts.toml is the registry client's own file format (containerd keeps
                // it in remotes/docker/config), not the daemon's config file
                if name == "stevedore-remote" && d == "toml" {
                    continue;
                }
                assert!(
                    ![
                        "tonic",
                        "prost",
                        "stevedore-api",
                        "stevedore-plugin",
                        "toml"
                    ]
                    .contains(&d),
                    "library {name} must not depend on {d}"
                );
            }
        }
    }
    assert_eq!(seen, layers.len(), "every crate in the table exists");
}
