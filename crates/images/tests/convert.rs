//! Converting Docker images to OCI and recompressing layers.

use stevedore_images::convert::{convert, Compression, ConvertOptions};
use stevedore_images::image::{check, get_diff_id, manifest, rootfs};
use stevedore_images::mediatypes::*;
use stevedore_images::testing::{layer_tar, put_image, put_index, DirStore};
use stevedore_types::platform::Only;
use stevedore_types::Platform;

#[test]
fn converts_docker_list_to_oci_keeping_configs_and_diff_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let amd = Platform::new("linux", "amd64", "");
    let m = put_image(
        &store,
        &amd,
        &[layer_tar(&[("a", b"a")]), layer_tar(&[("b", b"b")])],
        true,
        true,
    )
    .unwrap();
    let list = put_index(&store, std::slice::from_ref(&m), true).unwrap();
    let opts = ConvertOptions {
        oci: true,
        layer_compression: None,
        platform: None,
    };
    let out = convert(&store, &list, &opts).unwrap();
    assert_eq!(out.media_type, OCI_INDEX);
    assert_ne!(out.digest, list.digest);
    let only = Only::new(amd.clone());
    let before = manifest(&store, &list, Some(&only)).unwrap();
    let after = manifest(&store, &out, Some(&only)).unwrap();
    assert_eq!(after.media_type, OCI_MANIFEST);
    assert_eq!(after.config.digest, before.config.digest);
    assert_eq!(after.config.media_type, OCI_CONFIG);
    assert!(after.layers.iter().all(|l| l.media_type == OCI_LAYER_GZIP));
    assert_eq!(
        rootfs(&store, &after.config).unwrap(),
        rootfs(&store, &before.config).unwrap()
    );
    let idx = stevedore_images::spec::read_index(&store, &out).unwrap();
    assert_eq!(idx.manifests[0].platform, m.platform);
    // converting again changes nothing
    assert_eq!(convert(&store, &out, &opts).unwrap(), out);
}

#[test]
fn recompresses_layers_between_gzip_and_zstd() {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let amd = Platform::new("linux", "amd64", "");
    let m = put_image(
        &store,
        &amd,
        &[layer_tar(&[("a", &[7u8; 5000])])],
        false,
        true,
    )
    .unwrap();
    let diff_ids = rootfs(&store, &manifest(&store, &m, None).unwrap().config).unwrap();
    let to_zstd = ConvertOptions {
        oci: true,
        layer_compression: Some(Compression::Zstd),
        platform: None,
    };
    let z = convert(&store, &m, &to_zstd).unwrap();
    let zm = manifest(&store, &z, None).unwrap();
    assert_eq!(zm.layers[0].media_type, OCI_LAYER_ZSTD);
    assert_eq!(
        store.labels(&zm.layers[0].digest)[LABEL_UNCOMPRESSED],
        diff_ids[0].to_string()
    );
    assert_eq!(
        get_diff_id(&store, &store, &zm.layers[0]).unwrap(),
        diff_ids[0]
    );
    let back = ConvertOptions {
        oci: true,
        layer_compression: Some(Compression::Gzip),
        platform: None,
    };
    let g = convert(&store, &z, &back).unwrap();
    let gm = manifest(&store, &g, None).unwrap();
    assert_eq!(gm.layers[0].media_type, OCI_LAYER_GZIP);
    assert!(check(&store, &g, None).unwrap().missing.is_empty());
    let fresh = DirStore::new(&dir.path().join("fresh")).unwrap();
    let d = fresh
        .put(
            OCI_LAYER_GZIP,
            &std::fs::read(store.blob_path(&gm.layers[0].digest)).unwrap(),
        )
        .unwrap();
    assert_eq!(get_diff_id(&fresh, &fresh, &d).unwrap(), diff_ids[0]);
}
