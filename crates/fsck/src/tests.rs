//! Roots built by the real stores (content store, metadata database,
//! overlayfs snapshotter), then damaged the way crashes and bugs would.

use super::*;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use stevedore_content::local::LocalStore;
use stevedore_content::{digest_of, Store, WriterOpts};
use stevedore_images::mediatypes::{OCI_CONFIG, OCI_LAYER, OCI_MANIFEST};
use stevedore_metadata::containers::Container;
use stevedore_metadata::content::ContentOptions;
use stevedore_metadata::images::Image;
use stevedore_snapshots::Snapshotter;
use stevedore_types::{Descriptor, Digest};

const NS: &str = "default";

/// A root holding: a stand-alone blob, an image (manifest, config, layer),
/// a committed snapshot with an active child, and a container on the child.
struct Fixture {
    dir: tempfile::TempDir,
    loose: Digest,
    layer: Digest,
    manifest: Digest,
}

fn desc(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: digest_of(bytes),
        size: bytes.len() as i64,
        urls: vec![],
        annotations: Default::default(),
        platform: None,
    }
}

fn put(db: &Arc<Db>, bytes: &[u8]) -> Digest {
    let d = digest_of(bytes);
    let mut w = db
        .content(NS, None)
        .writer(WriterOpts::new(format!("ref-{d}")))
        .unwrap();
    w.write(bytes).unwrap();
    w.commit(bytes.len() as i64, Some(&d), HashMap::new())
        .unwrap();
    d
}

impl Fixture {
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    fn snapshots_root(&self) -> PathBuf {
        self.root().join("io.containerd.snapshotter.v1.overlayfs")
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.root()
            .join(CONTENT_DIR)
            .join("blobs/sha256")
            .join(d.hex())
    }

    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let store = LocalStore::open(&root.join(CONTENT_DIR)).unwrap();
        let db = Arc::new(Db::open(&root.join(METADATA_DB)).unwrap());
        db.attach_content(store, ContentOptions::default()).unwrap();
        let loose = put(&db, b"a loose blob");
        let layer_bytes = b"not really a tar, but content all the same".to_vec();
        let config_bytes =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let layer = put(&db, &layer_bytes);
        put(&db, config_bytes);
        let manifest_json = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": desc(OCI_CONFIG, config_bytes),
            "layers": [desc(OCI_LAYER, &layer_bytes)],
        })
        .to_string();
        let manifest = put(&db, manifest_json.as_bytes());
        db.create_image(
            NS,
            Image {
                name: "docker.io/library/t:1".into(),
                labels: HashMap::new(),
                target: desc(OCI_MANIFEST, manifest_json.as_bytes()),
                created_at: 0,
                updated_at: 0,
            },
        )
        .unwrap();
        let snaps = stevedore_snapshots::overlay::open(
            &root.join("io.containerd.snapshotter.v1.overlayfs"),
        )
        .unwrap();
        snaps.prepare("default/base-a", "", HashMap::new()).unwrap();
        snaps
            .commit("default/base", "default/base-a", HashMap::new())
            .unwrap();
        snaps
            .prepare("default/ctr-1", "default/base", HashMap::new())
            .unwrap();
        db.create_container(
            NS,
            Container {
                id: "ctr-1".into(),
                image: "docker.io/library/t:1".into(),
                runtime: stevedore_metadata::containers::Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                },
                snapshotter: "overlayfs".into(),
                snapshot_key: "ctr-1".into(),
                spec: Some(stevedore_metadata::containers::AnyBytes {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                    value: b"{}".to_vec(),
                }),
                ..Default::default()
            },
        )
        .unwrap();
        Fixture {
            dir,
            loose,
            layer,
            manifest,
        }
    }

    fn check(&self, repair: bool) -> Report {
        check(&Options {
            root: self.root(),
            repair,
        })
        .unwrap()
    }

    fn snapshot_dir(&self, key: &str) -> PathBuf {
        let s = stevedore_snapshots::overlay::open(&self.snapshots_root()).unwrap();
        s.fs_path(key).unwrap().parent().unwrap().to_path_buf()
    }
}

fn kinds(r: &Report) -> Vec<(&'static str, String)> {
    let mut v: Vec<_> = r
        .findings
        .iter()
        .map(|f| (f.kind, f.object.clone()))
        .collect();
    v.sort();
    v
}

fn assert_all_clear(r: &Report) {
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
}

/// The report has an `image-incomplete` finding whose detail says `missing`.
fn assert_image_incomplete(r: &Report, missing: &str) {
    let img = r
        .findings
        .iter()
        .find(|x| x.kind == "image-incomplete")
        .unwrap_or_else(|| panic!("{:#?}", r.findings));
    assert!(img.detail.contains(missing), "{}", img.detail);
}

#[test]
fn a_root_written_by_the_stores_is_clean() {
    let f = Fixture::new();
    let r = f.check(false);
    assert_all_clear(&r);
    assert_eq!(r.checked["blobs"], 4);
    assert_eq!(r.checked["content records"], 4);
    assert_eq!(r.checked["images"], 1);
    assert_eq!(r.checked["snapshots"], 2);
    assert_eq!(r.checked["containers"], 1);
    assert!(r.is_clean());
}

#[test]
fn detects_and_removes_a_blob_whose_bytes_do_not_match_its_digest() {
    let f = Fixture::new();
    let p = f.blob(&f.loose);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&p, b"a loose blob, bit-rotted").unwrap();
    let r = f.check(false);
    assert_eq!(
        kinds(&r),
        vec![("blob-corrupt", f.loose.to_string())],
        "{:#?}",
        r.findings
    );
    assert!(!r.is_clean());
    assert!(r.findings[0].repair.contains("namespace(s) default"));
    // a dry run changes nothing
    assert!(p.exists());
    let r = f.check(true);
    assert!(r.findings.iter().all(|f| f.repaired), "{:#?}", r.findings);
    assert!(!p.exists());
    assert_all_clear(&f.check(false));
}

#[test]
fn detects_a_blob_an_image_needs_is_gone_and_repair_drops_record_and_image() {
    let f = Fixture::new();
    std::fs::remove_file(f.blob(&f.layer)).unwrap();
    let r = f.check(false);
    assert_eq!(
        kinds(&r),
        vec![
            (
                "content-record-missing-blob",
                format!("default/{}", f.layer)
            ),
            ("image-incomplete", "default/docker.io/library/t:1".into()),
        ]
    );
    assert_image_incomplete(&r, &format!("layer {} of manifest {}", f.layer, f.manifest));
    f.check(true);
    let after = f.check(false);
    // the image went with its content; its manifest and config stay until GC
    assert_eq!(after.checked["images"], 0);
    assert!(after.is_clean(), "{:#?}", after.findings);
}

#[test]
fn detects_a_missing_snapshot_dir_its_descendants_and_the_container_on_it() {
    let f = Fixture::new();
    let base = f.snapshot_dir("default/base");
    std::fs::remove_dir_all(&base).unwrap();
    let r = f.check(false);
    assert_eq!(
        kinds(&r),
        vec![
            ("container-snapshot-missing", "default/ctr-1".into()),
            ("snapshot-chain-broken", "overlayfs/default/ctr-1".into()),
            ("snapshot-dir-missing", "overlayfs/default/base".into()),
        ],
        "{:#?}",
        r.findings
    );
    f.check(true);
    let after = f.check(false);
    assert_all_clear(&after);
    assert_eq!(after.checked["snapshots"], 0);
    assert_eq!(after.checked["containers"], 0);
}

/// Found by the crash suite: `ctr containers rm` (containerd's
/// `Container.Delete` with `WithSnapshotCleanup`) removes the snapshot, then
/// the record; a kill between the two leaves a container whose snapshot was
/// removed whole (no record, no directory). That is the client's order and
/// containerd's state too, finished by deleting again: a leftover, not
/// corruption. A snapshot whose record remains without its directory is
/// still a problem (the test above).
#[test]
fn a_container_whose_snapshot_a_crashed_delete_removed_is_a_leftover() {
    let f = Fixture::new();
    let snaps = stevedore_snapshots::overlay::open(&f.snapshots_root()).unwrap();
    snaps.remove("default/ctr-1").unwrap();
    drop(snaps);
    let r = f.check(false);
    assert_eq!(
        kinds(&r),
        vec![("container-snapshot-removed", "default/ctr-1".into())],
        "{:#?}",
        r.findings
    );
    assert!(r.is_clean(), "{:#?}", r.findings);
    f.check(true);
    let after = f.check(false);
    assert_all_clear(&after);
    assert_eq!(after.checked["containers"], 0);
}

#[test]
fn reports_orphan_snapshot_dirs_and_stale_ingests_as_leftovers_and_removes_them() {
    let f = Fixture::new();
    let orphan = f.snapshots_root().join("snapshots/999");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    let creating = f.snapshots_root().join("snapshots/new-0123");
    std::fs::create_dir_all(&creating).unwrap();
    let ingest = f.root().join(CONTENT_DIR).join("ingest");
    let tmp = ingest.join(".tmp-abc-1-0");
    std::fs::create_dir_all(&tmp).unwrap();
    // a complete local ingest that no ingest record names
    let store = LocalStore::open(&f.root().join(CONTENT_DIR)).unwrap();
    let mut w = store.writer(WriterOpts::new("default/lost")).unwrap();
    w.write(b"half").unwrap();
    drop(w);
    drop(store);
    std::fs::create_dir_all(&tmp).unwrap();
    let r = f.check(false);
    assert!(
        r.is_clean(),
        "leftovers are not problems: {:#?}",
        r.findings
    );
    let mut k: Vec<&str> = r.leftovers().map(|x| x.kind).collect();
    k.sort();
    assert_eq!(
        k,
        vec![
            "ingest-incomplete",
            "ingest-unrecorded",
            "snapshot-dir-orphan",
            "snapshot-dir-orphan"
        ]
    );
    assert!(orphan.exists() && tmp.exists());
    f.check(true);
    assert!(!orphan.exists() && !creating.exists() && !tmp.exists());
    assert_eq!(std::fs::read_dir(&ingest).unwrap().count(), 0);
    assert_all_clear(&f.check(false));
}

#[test]
fn flags_an_ingest_the_store_could_never_resume_or_clean() {
    let f = Fixture::new();
    let dir = f
        .root()
        .join(CONTENT_DIR)
        .join("ingest/not-the-hash-of-its-ref");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("ref"), "default/x").unwrap();
    std::fs::write(dir.join("data"), "xx").unwrap();
    let r = f.check(false);
    assert_eq!(
        kinds(&r),
        vec![("ingest-invalid", dir.display().to_string())]
    );
    assert!(r.findings[0].detail.contains("not sha256 of its ref"));
    f.check(true);
    assert!(!dir.exists());
}

#[test]
fn refuses_a_root_whose_database_is_open_in_a_daemon() {
    let f = Fixture::new();
    let held = Db::open(&f.root().join(METADATA_DB)).unwrap();
    let e = check(&Options {
        root: f.root(),
        repair: false,
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    assert!(
        e.message.contains("stevedored is running on this root"),
        "{e}"
    );
    drop(held);
    assert_all_clear(&f.check(false));
}

#[test]
fn a_missing_root_is_an_error_naming_it() {
    let e = check(&Options {
        root: "/nonexistent/stevedore-root".into(),
        repair: false,
    })
    .unwrap_err();
    assert!(e.message.contains("/nonexistent/stevedore-root"), "{e}");
}

#[test]
fn a_directory_without_a_metadata_database_is_not_taken_for_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let e = check(&Options {
        root: dir.path().to_path_buf(),
        repair: false,
    })
    .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.contains("no metadata database"), "{e}");
    // and the check created nothing there
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn unescapes_mountinfo_paths() {
    assert_eq!(snapshots::unescape("/a\\040b\\134c"), "/a b\\c".to_string());
}

#[test]
fn a_lease_holding_something_that_never_was_is_a_leftover_and_repair_drops_the_reference() {
    let f = Fixture::new();
    {
        let db = Db::open(&f.root().join(METADATA_DB)).unwrap();
        db.create_lease(NS, "l1", &HashMap::new()).unwrap();
        let ghost = stevedore_metadata::leases::Resource::content(&digest_of(b"never written"));
        db.add_lease_resource(NS, "l1", &ghost).unwrap();
        db.add_lease_resource(
            NS,
            "l1",
            &stevedore_metadata::leases::Resource::content(&f.loose),
        )
        .unwrap();
    }
    let r = f.check(false);
    assert!(r.is_clean());
    assert_eq!(
        kinds(&r),
        vec![("lease-reference-dangling", "default/lease l1".into())]
    );
    assert!(r.findings[0]
        .detail
        .contains(&digest_of(b"never written").to_string()));
    f.check(true);
    assert_all_clear(&f.check(false));
    let db = Db::open(&f.root().join(METADATA_DB)).unwrap();
    assert_eq!(db.list_lease_resources(NS, "l1").unwrap().len(), 1);
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// Mount a tmpfs on `target` (made first); unmounted when the guard drops.
fn mount_tmpfs(target: &Path) -> Unmount {
    std::fs::create_dir_all(target).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(target)
        .status()
        .expect("run mount (util-linux)");
    assert!(st.success(), "mount tmpfs on {}", target.display());
    Unmount(target.to_path_buf())
}

#[test]
fn a_mount_left_under_the_root_is_a_problem() {
    let f = Fixture::new();
    let target = f.root().join("io.containerd.runtime.v2.task/leftover");
    let guard = mount_tmpfs(&target);
    let r = f.check(false);
    assert_eq!(
        kinds(&r),
        vec![("mount-left", target.display().to_string())]
    );
    assert!(!r.is_clean());
    drop(guard);
    assert_all_clear(&f.check(false));
}

/// A btrfs volume mounted at the btrfs snapshotter's directory (how
/// containerd's btrfs snapshotter is deployed, and how the crash suite runs
/// it) is the root's layout, not something a crash left mounted.
#[test]
fn a_filesystem_mounted_at_a_plugin_directory_is_not_a_leftover() {
    let f = Fixture::new();
    let target = f.root().join("io.containerd.snapshotter.v1.btrfs");
    let guard = mount_tmpfs(&target);
    assert_all_clear(&f.check(false));
    // a mount below it is still one a crash left
    let below = target.join("snapshots-left");
    let inner = mount_tmpfs(&below);
    assert_eq!(
        kinds(&f.check(false)),
        vec![("mount-left", below.display().to_string())]
    );
    drop(inner);
    drop(guard);
}

/// Commit `bytes` in the default namespace, under `lease` when given, with
/// `labels` on the record.
fn put_with(db: &Arc<Db>, lease: Option<&str>, bytes: &[u8], labels: &[(&str, &Digest)]) -> Digest {
    let d = digest_of(bytes);
    let labels: HashMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut w = db
        .content(NS, lease)
        .writer(WriterOpts::new(format!("ref-{d}")))
        .unwrap();
    w.write(bytes).unwrap();
    w.commit(bytes.len() as i64, Some(&d), labels).unwrap();
    d
}

/// A two-platform image as `ctr images import` leaves it: every blob of the
/// archive written under the import's lease, GC labels only on the index
/// (naming the host's manifest) and on that manifest, the image record,
/// then the lease released and a collection run, which takes the other
/// platform's manifest and config.
struct Multi {
    dir: tempfile::TempDir,
    db: Arc<Db>,
    amd64_config: Digest,
    arm64_manifest: Vec<u8>,
    arm64_config: Digest,
}

fn manifest_of(config: &[u8], layer: &[u8]) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(OCI_CONFIG, config),
        "layers": [desc(OCI_LAYER, layer)],
    })
    .to_string()
    .into_bytes()
}

impl Multi {
    fn new(index_labels: bool) -> Multi {
        use stevedore_images::mediatypes::OCI_INDEX;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let db = Arc::new(Db::open(&root.join(METADATA_DB)).unwrap());
        db.attach_content(
            LocalStore::open(&root.join(CONTENT_DIR)).unwrap(),
            ContentOptions::default(),
        )
        .unwrap();
        let layer = b"the layer both platforms share".to_vec();
        let amd64_config_bytes = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let arm64_config_bytes = br#"{"architecture":"arm64","os":"linux"}"#.to_vec();
        let amd64_manifest = manifest_of(&amd64_config_bytes, &layer);
        let arm64_manifest = manifest_of(&arm64_config_bytes, &layer);
        let platform = |arch: &str| stevedore_types::Platform {
            architecture: arch.into(),
            os: "linux".into(),
            ..Default::default()
        };
        let mut m_amd64 = desc(OCI_MANIFEST, &amd64_manifest);
        m_amd64.platform = Some(platform("amd64"));
        let mut m_arm64 = desc(OCI_MANIFEST, &arm64_manifest);
        m_arm64.platform = Some(platform("arm64"));
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [m_amd64, m_arm64],
        })
        .to_string()
        .into_bytes();
        // the import: every blob under its lease, then the children labels
        // of what the host platform uses, then the image record
        db.create_lease(NS, "import-1", &HashMap::new()).unwrap();
        let l = Some("import-1");
        let layer_d = put_with(&db, l, &layer, &[]);
        let amd64_config = put_with(&db, l, &amd64_config_bytes, &[]);
        let arm64_config = put_with(&db, l, &arm64_config_bytes, &[]);
        put_with(
            &db,
            l,
            &amd64_manifest,
            &[
                ("containerd.io/gc.ref.content.config", &amd64_config),
                ("containerd.io/gc.ref.content.l.0", &layer_d),
            ],
        );
        put_with(&db, l, &arm64_manifest, &[]);
        let amd64_d = digest_of(&amd64_manifest);
        let index_d = if index_labels {
            put_with(
                &db,
                l,
                &index,
                &[("containerd.io/gc.ref.content.m.0", &amd64_d)],
            )
        } else {
            put_with(&db, l, &index, &[])
        };
        assert_eq!(index_d, digest_of(&index));
        db.create_image(
            NS,
            Image {
                name: "docker.io/stevedore/multi:latest".into(),
                labels: HashMap::new(),
                target: desc(OCI_INDEX, &index),
                created_at: 0,
                updated_at: 0,
            },
        )
        .unwrap();
        db.delete_lease(NS, "import-1").unwrap();
        Multi {
            dir,
            db,
            amd64_config,
            arm64_manifest,
            arm64_config,
        }
    }

    fn blob(&self, d: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("root")
            .join(CONTENT_DIR)
            .join("blobs/sha256")
            .join(d.hex())
    }

    /// Stop (close the database) and check the root.
    fn check(self) -> Report {
        drop(self.db);
        check(&Options {
            root: self.dir.path().join("root"),
            repair: false,
        })
        .unwrap()
    }
}

#[test]
fn another_platforms_manifest_held_by_a_crashed_import_without_its_config_is_not_corruption() {
    let m = Multi::new(true);
    let stats = m.db.garbage_collect().unwrap();
    // the arm64 manifest and config were the image's only while leased
    assert_eq!(stats.removed.get("content"), Some(&2), "{stats:?}");
    assert!(!m.blob(&m.arm64_config).exists());
    // the same archive imported again, killed after the arm64 manifest was
    // written and before its config (the archive lists blobs by digest):
    // the new lease holds the manifest, the config is not there yet
    m.db.create_lease(NS, "import-2", &HashMap::new()).unwrap();
    put_with(&m.db, Some("import-2"), &m.arm64_manifest, &[]);
    // the restarted daemon collects; the lease keeps the manifest
    m.db.garbage_collect().unwrap();
    assert!(m.blob(&digest_of(&m.arm64_manifest)).exists());
    // the image keeps exactly what its labels name: linux/amd64, all there
    let r = m.check();
    assert!(r.is_clean(), "{:#?}", r.findings);
    assert_all_clear(&r);
}

#[test]
fn the_config_of_the_manifest_an_index_keeps_is_still_required() {
    let m = Multi::new(true);
    m.db.garbage_collect().unwrap();
    m.db.content(NS, None).delete(&m.amd64_config).unwrap();
    m.db.garbage_collect().unwrap();
    let missing = format!("config {} of manifest", m.amd64_config);
    assert_image_incomplete(&m.check(), &missing);
}

#[test]
fn an_index_without_children_labels_needs_each_present_manifest_whole() {
    // written without labels: nothing says which manifests the image keeps,
    // so every present one must be whole (and GC keeps none of them)
    let m = Multi::new(false);
    m.db.content(NS, None).delete(&m.arm64_config).unwrap();
    let missing = format!("config {} of manifest", m.arm64_config);
    assert_image_incomplete(&m.check(), &missing);
}
