//! Importing OCI archives: naming options (seed 001), several images per
//! tar, and broken archives that must fail cleanly.

use stevedore_images::archive::*;
use stevedore_images::content::{digest_of, Provider};
use stevedore_images::mediatypes::*;
use stevedore_images::testing::{layer_tar, put_image, put_index, DirStore};
use stevedore_types::platform::All;
use stevedore_types::{Descriptor, ErrorKind, Platform};

struct Src {
    _dir: tempfile::TempDir,
    store: DirStore,
    m1: Descriptor,
    idx: Descriptor,
}

fn source() -> Src {
    let dir = tempfile::tempdir().unwrap();
    let store = DirStore::new(dir.path()).unwrap();
    let host = Platform::host();
    let m1 = put_image(
        &store,
        &host,
        &[layer_tar(&[("one", b"1")]), layer_tar(&[("two", b"2")])],
        false,
        true,
    )
    .unwrap();
    let m2 = put_image(
        &store,
        &Platform::new("linux", "s390x", ""),
        &[layer_tar(&[("z", b"z")])],
        false,
        true,
    )
    .unwrap();
    let idx = put_index(&store, &[m1.clone(), m2], false).unwrap();
    Src {
        _dir: dir,
        store,
        m1,
        idx,
    }
}

fn export(src: &Src, images: &[ExportImage]) -> Vec<u8> {
    let ex = OciExporter {
        all_platforms: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    ex.export(&src.store, images, &mut out).unwrap();
    out
}

fn sink() -> (tempfile::TempDir, DirStore) {
    let d = tempfile::tempdir().unwrap();
    let s = DirStore::new(d.path()).unwrap();
    (d, s)
}

/// A tar of the given entries (regular files).
fn tar_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o444);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// The regular files of a tar.
fn entries_of(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(tar);
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut v).unwrap();
        out.push((name, v));
    }
    out
}

fn import(
    store: &DirStore,
    tar: &[u8],
    opts: ImportOptions,
) -> stevedore_types::Result<Vec<ImageRecord>> {
    ArchiveImporter::new(opts).import(store, &mut &tar[..])
}

#[test]
fn oci_name_creates_tag_and_digest_images() {
    let src = source();
    // an OCI archive whose index entry has only a ref name ("latest")
    let mut anon = src.m1.clone();
    anon.platform = None;
    let mut tagged = anon.clone();
    tagged
        .annotations
        .insert(ANNOTATION_REF_NAME.into(), "latest".into());
    let tar = export(&src, &[ExportImage::manifest(&tagged)]);
    let (_d, store) = sink();
    let recs = import(&store, &tar, ImportOptions::oci_name("foo/bar")).unwrap();
    let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "foo/bar:latest".to_string(),
            format!("foo/bar@{}", src.m1.digest)
        ]
    );
    assert!(recs.iter().all(|r| r.target.digest == src.m1.digest));
    // the manifest now references its config and layers for GC
    let l = store.labels(&src.m1.digest);
    assert!(
        l.contains_key("containerd.io/gc.ref.content.config"),
        "{l:?}"
    );
    assert!(l.contains_key("containerd.io/gc.ref.content.l.1"), "{l:?}");
}

#[test]
fn imports_several_images_from_one_tar_by_their_names() {
    let src = source();
    let tar = export(
        &src,
        &[
            ExportImage::named("docker.io/library/a:1", &src.idx),
            ExportImage::named("example.com/b:2", &src.m1),
        ],
    );
    let (_d, store) = sink();
    let opts = ImportOptions {
        platform: Box::new(All),
        index_name: Some("whole-index".into()),
        ..Default::default()
    };
    let recs = import(&store, &tar, opts).unwrap();
    let names: Vec<&str> = recs.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["whole-index", "docker.io/library/a:1", "example.com/b:2"]
    );
    assert_eq!(recs[1].target.digest, src.idx.digest);
    assert_eq!(recs[0].target.media_type, OCI_INDEX);
    for d in src.store.list().unwrap() {
        assert!(store.info(&d).is_ok(), "{d} not imported");
    }
    // base-name filters full refs outside the prefix
    let (_d2, s2) = sink();
    let mut anon = src.m1.clone();
    anon.annotations
        .insert(ANNOTATION_REF_NAME.into(), "other.io/x:1".into());
    let tar = export(&src, &[ExportImage::manifest(&anon)]);
    let recs = import(&s2, &tar, ImportOptions::base_name("foo/bar")).unwrap();
    assert!(recs.is_empty(), "{recs:?}");
}

fn assert_clean_failure(
    store: &DirStore,
    res: stevedore_types::Result<Vec<ImageRecord>>,
    needle: &str,
) {
    let e = res.expect_err("import of a broken archive must fail");
    assert!(
        e.message.contains(needle),
        "error {e:?} does not mention {needle:?}"
    );
    assert_eq!(
        store.open_ingests().unwrap(),
        0,
        "an ingest was left behind"
    );
}

#[test]
fn refuses_truncated_archives() {
    let src = source();
    let tar = export(&src, &[ExportImage::named("x.io/y:1", &src.m1)]);
    // cut in a header, and in the middle of the first blob's data
    // (records: blobs/, blobs/sha256/, then the first blob at block 2)
    for cut in [512 + 100, 3 * 512 + 50] {
        let (_d, store) = sink();
        assert_clean_failure(
            &store,
            import(&store, &tar[..cut], ImportOptions::default()),
            "truncated",
        );
        assert!(store.list().unwrap().is_empty());
    }
}

#[test]
fn refuses_blobs_whose_content_does_not_match_their_name() {
    let src = source();
    let tar = export(&src, &[ExportImage::named("x.io/y:1", &src.m1)]);
    let mut entries = entries_of(&tar);
    let victim = entries
        .iter_mut()
        .find(|(n, _)| n.starts_with("blobs/"))
        .unwrap();
    victim.1[0] ^= 0xff;
    let victim_name = victim.0.clone();
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let (_d, store) = sink();
    assert_clean_failure(
        &store,
        import(&store, &tar_of(&refs), ImportOptions::default()),
        "not the sha256:",
    );
    let hex = victim_name.rsplit('/').next().unwrap();
    assert!(store
        .info(&format!("sha256:{hex}").parse().unwrap())
        .is_err());
}

#[test]
fn refuses_archives_missing_a_referenced_blob() {
    let src = source();
    let tar = export(&src, &[ExportImage::named("x.io/y:1", &src.m1)]);
    let m = stevedore_images::spec::read_manifest(&src.store, &src.m1).unwrap();
    let gone = format!("blobs/sha256/{}", m.layers[1].digest.hex());
    let entries: Vec<(String, Vec<u8>)> = entries_of(&tar)
        .into_iter()
        .filter(|(n, _)| *n != gone)
        .collect();
    let refs: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    let (_d, store) = sink();
    assert_clean_failure(
        &store,
        import(&store, &tar_of(&refs), ImportOptions::default()),
        "missing from the archive",
    );
    // without index.json
    let entries: Vec<(&str, &[u8])> = refs
        .iter()
        .copied()
        .filter(|(n, _)| *n != "index.json")
        .collect();
    let (_d, store) = sink();
    assert_clean_failure(
        &store,
        import(&store, &tar_of(&entries), ImportOptions::default()),
        "missing index.json",
    );
}

#[test]
fn refuses_entry_names_escaping_the_archive() {
    for evil in ["../../etc/passwd", "/etc/passwd", "blobs/../../x"] {
        let mut h = tar::Header::new_ustar();
        h.set_size(1);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..evil.len()].copy_from_slice(evil.as_bytes());
        h.set_cksum();
        let mut tar = h.as_bytes().to_vec();
        tar.extend_from_slice(&[b'x'; 512]);
        tar.extend_from_slice(&[0; 1024]);
        let (_d, store) = sink();
        let res = import(&store, &tar, ImportOptions::default());
        let e = res.expect_err(evil);
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains(evil), "{e}");
        assert!(store.list().unwrap().is_empty());
    }
}

#[test]
fn refuses_entries_declaring_huge_sizes() {
    let mut h = tar::Header::new_gnu();
    h.set_path("blobs/sha256/aaaa").unwrap();
    h.set_size(1 << 50);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[0; 2048]);
    let (_d, store) = sink();
    assert_clean_failure(
        &store,
        import(&store, &tar, ImportOptions::default()),
        "declares 1125899906842624 bytes",
    );
    // and an oversized manifest.json is refused before it is read
    let big = vec![b' '; (20 << 20) + 1];
    let (_d, store) = sink();
    assert_clean_failure(
        &store,
        import(
            &store,
            &tar_of(&[("manifest.json", &big)]),
            ImportOptions::default(),
        ),
        "exceeds the limit",
    );
}

#[test]
fn refuses_archives_of_unknown_format_and_wrong_format() {
    let (_d, store) = sink();
    let tar = tar_of(&[("hello", b"world")]);
    assert_clean_failure(
        &store,
        import(&store, &tar, ImportOptions::default()),
        "unrecognized image format",
    );
    let src = source();
    let oci = export(&src, &[ExportImage::named("x.io/y:1", &src.m1)]);
    let opts = ImportOptions {
        format: Format::Docker,
        ..Default::default()
    };
    // ctr's export carries a manifest.json, so the Docker reading works too
    let recs = import(&store, &oci, opts).unwrap();
    assert_eq!(recs[0].name, "x.io/y:1");
    assert_eq!(recs[0].target.media_type, DOCKER_MANIFEST);
    let _ = digest_of(b"");
}
