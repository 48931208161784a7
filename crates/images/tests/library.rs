//! The images library on fixtures made here: multi-platform index, nested
//! index, Docker manifest list, foreign layers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use stevedore_images::content::Provider;
use stevedore_images::handlers::*;
use stevedore_images::image::*;
use stevedore_images::mediatypes::*;
use stevedore_images::testing::{layer_tar, put_image, put_index, DirStore};
use stevedore_types::platform::{All, Exact, Only};
use stevedore_types::{Descriptor, ErrorKind, Platform};

fn p(s: &str) -> Platform {
    s.parse().unwrap()
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: DirStore,
    amd64: Descriptor,
    arm64: Descriptor,
    armv7: Descriptor,
    index: Descriptor,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let l1 = layer_tar(&[("a", b"1")]);
    let l2 = layer_tar(&[("b", b"22")]);
    let amd64 = put_image(
        &store,
        &p("linux/amd64"),
        &[l1.clone(), l2.clone()],
        false,
        true,
    )
    .unwrap();
    let arm64 = put_image(
        &store,
        &p("linux/arm64"),
        std::slice::from_ref(&l1),
        false,
        true,
    )
    .unwrap();
    let armv7 = put_image(&store, &p("linux/arm/v7"), &[l2], false, false).unwrap();
    let index = put_index(
        &store,
        &[armv7.clone(), arm64.clone(), amd64.clone()],
        false,
    )
    .unwrap();
    Fixture {
        _dir: dir,
        store,
        amd64,
        arm64,
        armv7,
        index,
    }
}

#[test]
fn selects_the_manifest_for_a_platform_from_an_index() {
    let f = fixture();
    let m = manifest(&f.store, &f.index, Some(&Only::new(p("linux/arm64")))).unwrap();
    let want = stevedore_images::spec::read_manifest(&f.store, &f.arm64).unwrap();
    assert_eq!(m, want);
    // arm64 hosts run arm/v7 too, but prefer arm64
    let (d, _) =
        manifest_with_descriptor(&f.store, &f.index, Some(&Only::new(p("linux/arm64")))).unwrap();
    assert_eq!(d.digest, f.arm64.digest);
    let (d, _) =
        manifest_with_descriptor(&f.store, &f.index, Some(&Only::new(p("linux/arm/v8")))).unwrap();
    assert_eq!(d.digest, f.armv7.digest);
    let e = manifest(&f.store, &f.index, Some(&Exact(p("linux/s390x")))).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(
        e.message.contains("no match for platform in manifest"),
        "{e}"
    );
}

#[test]
fn resolves_config_rootfs_size_and_platforms() {
    let f = fixture();
    let amd = Only::new(p("linux/amd64"));
    let cfg = config(&f.store, &f.index, Some(&amd)).unwrap();
    let diff_ids = rootfs(&f.store, &cfg).unwrap();
    assert_eq!(diff_ids.len(), 2);
    assert_eq!(
        diff_ids[0],
        stevedore_images::content::digest_of(&layer_tar(&[("a", b"1")]))
    );
    let m = stevedore_images::spec::read_manifest(&f.store, &f.amd64).unwrap();
    let want =
        f.index.size + f.amd64.size + m.config.size + m.layers.iter().map(|l| l.size).sum::<i64>();
    assert_eq!(size(&f.store, &f.index, &amd).unwrap(), want);
    let mut plats: Vec<String> = platforms(&f.store, &f.index)
        .unwrap()
        .iter()
        .map(|p| p.to_string())
        .collect();
    plats.sort();
    assert_eq!(plats, ["linux/amd64", "linux/arm/v7", "linux/arm64"]);
    // a bare manifest: platform from its config
    let mut bare = f.amd64.clone();
    bare.platform = None;
    assert_eq!(platforms(&f.store, &bare).unwrap(), vec![p("linux/amd64")]);
    let plan = unpack_plan(&f.store, &f.index, &amd).unwrap();
    assert_eq!(plan.layers.len(), 2);
    assert_eq!(plan.layers[1].1, diff_ids[1]);
}

#[test]
fn check_reports_present_and_missing_content() {
    let f = fixture();
    let amd = Only::new(p("linux/amd64"));
    let r = check(&f.store, &f.index, Some(&amd)).unwrap();
    assert!(r.available);
    assert_eq!(r.required.len(), 3);
    assert_eq!(r.present.len(), 3);
    assert!(r.missing.is_empty());
    let m = stevedore_images::spec::read_manifest(&f.store, &f.amd64).unwrap();
    f.store.delete(&m.layers[1].digest).unwrap();
    let r = check(&f.store, &f.index, Some(&amd)).unwrap();
    assert!(r.available);
    assert_eq!(r.missing, vec![m.layers[1].clone()]);
    f.store.delete(&f.amd64.digest).unwrap();
    let r = check(&f.store, &f.index, Some(&amd)).unwrap();
    assert!(!r.available);
    assert_eq!(r.missing, vec![f.index.clone()]);
}

#[test]
fn walk_honours_skip_and_stop_sentinels() {
    let f = fixture();
    let seen = Mutex::new(Vec::new());
    let record = |d: &Descriptor| -> HandlerResult {
        seen.lock().unwrap().push(d.media_type.clone());
        if d.digest == f.arm64.digest {
            return Err(HandlerError::SkipDesc);
        }
        if is_config_type(&d.media_type) {
            return Err(HandlerError::StopHandler);
        }
        Ok(Vec::new())
    };
    let never_for_configs = |d: &Descriptor| -> HandlerResult {
        assert!(
            !is_config_type(&d.media_type),
            "stop handler did not stop the chain"
        );
        Ok(Vec::new())
    };
    let kids = children_handler(&f.store);
    let chain: Vec<Box<dyn Handler + '_>> = vec![
        Box::new(record),
        Box::new(never_for_configs),
        Box::new(kids),
    ];
    walk(&Handlers(chain), std::slice::from_ref(&f.index)).unwrap();
    let seen = seen.into_inner().unwrap();
    // index, armv7 (manifest, config, 1 layer), arm64 (skipped), amd64 (manifest, config, 2 layers)
    assert_eq!(seen.len(), 1 + 3 + 1 + 4, "{seen:?}");
}

#[test]
fn dispatch_runs_concurrently_within_the_limit_and_stops_on_error() {
    let f = fixture();
    let running = AtomicUsize::new(0);
    let peak = AtomicUsize::new(0);
    let count = AtomicUsize::new(0);
    let kids = children_handler(&f.store);
    let h = |d: &Descriptor| -> HandlerResult {
        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(20));
        running.fetch_sub(1, Ordering::SeqCst);
        count.fetch_add(1, Ordering::SeqCst);
        kids.handle(d)
    };
    let limiter = Limiter::new(2);
    dispatch(&h, Some(&limiter), std::slice::from_ref(&f.index)).unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1 + 3 + 3 + 4);
    assert_eq!(peak.load(Ordering::SeqCst), 2);

    let failing = |d: &Descriptor| -> HandlerResult {
        if is_layer_type(&d.media_type) {
            return Err(stevedore_types::Error::invalid(format!("bad layer {}", d.digest)).into());
        }
        kids.handle(d)
    };
    let e = dispatch(&failing, None, std::slice::from_ref(&f.index)).unwrap_err();
    assert!(e.message.contains("bad layer"), "{e}");
}

#[test]
fn limit_manifests_orders_by_platform_and_fails_when_nothing_matches() {
    let f = fixture();
    let m = Only::new(p("linux/arm64"));
    let h = limit_manifests(children_handler(&f.store), &m, 1);
    assert_eq!(h.handle(&f.index).unwrap(), vec![f.arm64.clone()]);
    let h = limit_manifests(children_handler(&f.store), &m, 0);
    let all = h.handle(&f.index).unwrap();
    assert_eq!(all[0].digest, f.arm64.digest);
    assert_eq!(all[1].digest, f.armv7.digest);
    let none = Exact(p("windows/amd64"));
    let h = limit_manifests(
        filter_platforms(children_handler(&f.store), &none),
        &none,
        1,
    );
    assert_eq!(
        h.handle(&f.index).unwrap_err(),
        HandlerError::Failed(stevedore_types::Error::not_found(format!(
            "no match for platform in manifest {}: not found",
            f.index.digest
        )))
    );
}

#[test]
fn sets_children_gc_labels_like_containerd() {
    let f = fixture();
    let h = set_children_labels(&f.store, children_handler(&f.store), None);
    walk(&h, std::slice::from_ref(&f.index)).unwrap();
    let l = f.store.labels(&f.index.digest);
    assert_eq!(
        l["containerd.io/gc.ref.content.m.0"],
        f.armv7.digest.to_string()
    );
    assert_eq!(
        l["containerd.io/gc.ref.content.m.2"],
        f.amd64.digest.to_string()
    );
    let m = stevedore_images::spec::read_manifest(&f.store, &f.amd64).unwrap();
    let l = f.store.labels(&f.amd64.digest);
    assert_eq!(
        l["containerd.io/gc.ref.content.config"],
        m.config.digest.to_string()
    );
    assert_eq!(
        l["containerd.io/gc.ref.content.l.0"],
        m.layers[0].digest.to_string()
    );
    assert_eq!(
        l["containerd.io/gc.ref.content.l.1"],
        m.layers[1].digest.to_string()
    );
    assert_eq!(l.len(), 3);
    // the filter-layers variant labels only the config
    let dir = tempfile::tempdir().unwrap();
    let s2 = DirStore::new(dir.path()).unwrap();
    let mm = put_image(
        &s2,
        &p("linux/amd64"),
        &[layer_tar(&[("x", b"x")])],
        false,
        true,
    )
    .unwrap();
    let map: &dyn Fn(&Descriptor) -> Vec<String> = &child_gc_labels_filter_layers;
    let h = set_children_labels(&s2, children_handler(&s2), Some(map));
    walk(&h, std::slice::from_ref(&mm)).unwrap();
    assert_eq!(s2.labels(&mm.digest).len(), 1);
    // a second config-keyed child gets its index appended (Go: "%s%d")
    let two = [m.config.clone(), m.config.clone()];
    let labels = children_labels(&two, &child_gc_labels);
    assert_eq!(labels[0].0, "containerd.io/gc.ref.content.config");
    assert_eq!(labels[1].0, "containerd.io/gc.ref.content.config1");
}

#[test]
fn walks_nested_indexes_docker_lists_and_foreign_layers() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let d = put_image(
        &store,
        &p("linux/amd64"),
        &[layer_tar(&[("d", b"d")])],
        true,
        true,
    )
    .unwrap();
    let list = put_index(&store, std::slice::from_ref(&d), true).unwrap();
    let outer = put_index(&store, std::slice::from_ref(&list), false).unwrap();
    let (md, _) =
        manifest_with_descriptor(&store, &outer, Some(&Only::new(p("linux/amd64")))).unwrap();
    assert_eq!(md.digest, d.digest);
    assert_eq!(children(&store, &outer).unwrap(), vec![list.clone()]);

    // a Windows-style manifest with a foreign layer that is not in the store
    let foreign = Descriptor {
        urls: vec!["https://example.com/base.tar.gz".into()],
        ..Descriptor::new(
            DOCKER_LAYER_FOREIGN_GZIP,
            stevedore_images::content::digest_of(b"absent"),
            6,
        )
    };
    let m = stevedore_images::spec::read_manifest(&store, &d).unwrap();
    let mut m2 = m.clone();
    m2.layers.insert(0, foreign.clone());
    let md2 = store
        .put(DOCKER_MANIFEST, &serde_json::to_vec(&m2).unwrap())
        .unwrap();
    let kids = children(&store, &md2).unwrap();
    assert_eq!(kids[1], foreign);
    assert!(is_non_distributable(&kids[1].media_type));
    let r = check(&store, &md2, None).unwrap();
    assert_eq!(r.missing, vec![foreign]);
    assert!(children(&store, &kids[1]).unwrap().is_empty());
    let _ = All;
    assert!(store.info(&md2.digest).is_ok());
}

#[test]
fn refuses_absurd_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let mut huge = store.put(OCI_MANIFEST, b"{}").unwrap();
    huge.size = 1 << 40;
    let e = children(&store, &huge).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("exceeds the limit"), "{e}");
    // an index posing as a manifest
    let idx = store
        .put(OCI_MANIFEST, br#"{"schemaVersion":2,"manifests":[{}]}"#)
        .unwrap();
    assert!(children(&store, &idx)
        .unwrap_err()
        .message
        .contains("expected manifest but found index"));
}

#[test]
fn computes_and_remembers_diff_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let raw = layer_tar(&[("z", b"zzz")]);
    let gz = store
        .put(OCI_LAYER_GZIP, &stevedore_images::testing::gzip(&raw))
        .unwrap();
    let zs = store
        .put(OCI_LAYER_ZSTD, &zstd::encode_all(&raw[..], 3).unwrap())
        .unwrap();
    let plain = store.put(OCI_LAYER, &raw).unwrap();
    let want = stevedore_images::content::digest_of(&raw);
    assert_eq!(get_diff_id(&store, &store, &plain).unwrap(), want);
    assert_eq!(get_diff_id(&store, &store, &gz).unwrap(), want);
    assert_eq!(
        store.labels(&gz.digest)[LABEL_UNCOMPRESSED],
        want.to_string()
    );
    assert_eq!(get_diff_id(&store, &store, &zs).unwrap(), want);
}

// found by the fuzzer (crates/fuzz, target spec_json): sizes come from the
// manifest, and two near-i64::MAX ones overflowed the sum (a panic in debug
// builds, a wrong total in release)
#[test]
fn size_of_hostile_manifest_is_an_error_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let digest = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{digest}","size":9223372036854775807}},"layers":[{{"mediaType":"{OCI_LAYER}","digest":"{digest}","size":5120}}]}}"#
    );
    let desc = store.put(OCI_MANIFEST, m.as_bytes()).unwrap();
    let e = size(&store, &desc, &All).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("total size overflows"), "{e}");
}
