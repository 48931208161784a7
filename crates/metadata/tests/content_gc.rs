//! The namespaced content store runs the content conformance suite; then
//! namespace isolation, leases and garbage collection.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use stevedore_content::local::LocalStore;
use stevedore_content::{digest_of, Store, WriterOpts};
use stevedore_metadata::content::ContentOptions;
use stevedore_metadata::leases::Resource;
use stevedore_metadata::Db;
use stevedore_types::filters::Filter;
use stevedore_types::{Digest, ErrorKind};

struct Env {
    dir: tempfile::TempDir,
    db: Arc<Db>,
}

fn env_with(opts: ContentOptions) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.db")).unwrap());
    let store = LocalStore::open(&dir.path().join("content")).unwrap();
    db.attach_content(store, opts).unwrap();
    Env { dir, db }
}

fn env() -> Env {
    env_with(ContentOptions::default())
}

fn fresh() -> (Env, Box<dyn Store>) {
    let e = env();
    let s = Box::new(e.db.content("test", None)) as Box<dyn Store>;
    (e, s)
}

stevedore_content::content_store_conformance!(fresh; labels);

fn put(store: &dyn Store, reference: &str, bytes: &[u8], labels: &[(&str, &str)]) -> Digest {
    let mut w = store
        .writer(WriterOpts::new(reference).total(bytes.len() as i64))
        .unwrap();
    w.write(bytes).unwrap();
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    w.commit(bytes.len() as i64, Some(&digest_of(bytes)), labels)
        .unwrap()
}

fn on_disk(e: &Env, d: &Digest) -> bool {
    e.dir
        .path()
        .join("content/blobs/sha256")
        .join(d.hex())
        .exists()
}

#[test]
fn namespaces_do_not_see_each_others_content() {
    let e = env();
    let a = e.db.content("a", None);
    let b = e.db.content("b", None);
    let d = put(&a, "x", b"shared bytes", &[]);
    assert_eq!(b.info(&d).unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(b.reader_at(&d).err().unwrap().kind, ErrorKind::NotFound);
    assert!(b.list(&Filter::default()).unwrap().is_empty());
    // committing with the expected digest in b only adds the record: no bytes needed
    let mut w = b.writer(WriterOpts::new("y").expected(d.clone())).unwrap();
    let st = w.status().unwrap();
    assert_eq!(st.offset, 12, "shared blob reports its full size");
    let root: HashMap<String, String> =
        [("containerd.io/gc.root".to_string(), "yes".to_string())].into();
    let got = w.commit(12, Some(&d), root).unwrap();
    assert_eq!(got, d);
    assert_eq!(b.info(&d).unwrap().size, 12);
    // deleting in a keeps b's (gc.root) record and the bytes
    a.delete(&d).unwrap();
    e.db.garbage_collect().unwrap();
    assert!(on_disk(&e, &d));
    assert_eq!(a.info(&d).unwrap_err().kind, ErrorKind::NotFound);
    b.delete(&d).unwrap();
    e.db.garbage_collect().unwrap();
    assert!(!on_disk(&e, &d));
}

#[test]
fn namespace_with_content_cannot_be_deleted() {
    let e = env();
    let d = put(&e.db.content("busy", None), "x", b"abc", &[]);
    let err = e.db.delete_namespace("busy").unwrap_err();
    assert_eq!(err.kind, ErrorKind::FailedPrecondition);
    assert!(err.message.contains("blobs"), "{err}");
    e.db.content("busy", None).delete(&d).unwrap();
    e.db.delete_namespace("busy").unwrap();
}

#[test]
fn gc_collects_unreferenced_and_keeps_referenced_content() {
    let e = env();
    let c = e.db.content("default", None);
    let child = put(&c, "child", b"child", &[]);
    let grandchild = put(&c, "gc", b"grandchild", &[]);
    let lonely = put(&c, "lonely", b"lonely", &[]);
    // child -> grandchild through a gc.ref label
    let mut info = c.info(&child).unwrap();
    info.labels.insert(
        "containerd.io/gc.ref.content.l.0".into(),
        grandchild.to_string(),
    );
    c.update(info, &["labels".into()]).unwrap();
    let root = put(
        &c,
        "root",
        b"root",
        &[
            ("containerd.io/gc.root", "2024-01-01T00:00:00Z"),
            ("containerd.io/gc.ref.content.m", &child.to_string()),
        ],
    );
    let stats = e.db.garbage_collect().unwrap();
    assert_eq!(stats.removed.get("content"), Some(&1), "{stats:?}");
    for d in [&root, &child, &grandchild] {
        assert!(c.info(d).is_ok(), "{d} is referenced");
        assert!(on_disk(&e, d));
    }
    assert_eq!(c.info(&lonely).unwrap_err().kind, ErrorKind::NotFound);
    assert!(!on_disk(&e, &lonely));
    // dropping the root label lets the whole chain go
    let mut info = c.info(&root).unwrap();
    info.labels.clear();
    c.update(info, &["labels".into()]).unwrap();
    e.db.garbage_collect().unwrap();
    assert!(c.list(&Filter::default()).unwrap().is_empty());
    assert!(!on_disk(&e, &grandchild));
}

#[test]
fn leased_content_survives_until_the_lease_goes() {
    let e = env();
    e.db.create_lease("default", "l1", &HashMap::new()).unwrap();
    let c = e.db.content("default", Some("l1"));
    let d = put(&c, "x", b"leased", &[]);
    let res = e.db.list_lease_resources("default", "l1").unwrap();
    assert_eq!(
        res,
        vec![Resource::content(&d)],
        "commit moves the ingest to content"
    );
    e.db.garbage_collect().unwrap();
    assert!(c.info(&d).is_ok());
    e.db.delete_lease("default", "l1").unwrap();
    e.db.garbage_collect().unwrap();
    assert_eq!(c.info(&d).unwrap_err().kind, ErrorKind::NotFound);
    assert!(!on_disk(&e, &d));
}

#[test]
fn leased_ingest_is_held_and_listed_as_resource() {
    let e = env();
    e.db.create_lease("default", "pull", &HashMap::new())
        .unwrap();
    let c = e.db.content("default", Some("pull"));
    {
        let mut w = c.writer(WriterOpts::new("layer-1")).unwrap();
        w.write(b"part").unwrap();
    }
    assert_eq!(
        e.db.list_lease_resources("default", "pull").unwrap(),
        vec![Resource::ingest("layer-1")]
    );
    e.db.garbage_collect().unwrap();
    assert_eq!(c.status("layer-1").unwrap().offset, 4);
    e.db.delete_lease("default", "pull").unwrap();
    e.db.garbage_collect().unwrap();
    assert_eq!(c.status("layer-1").unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(
        std::fs::read_dir(e.dir.path().join("content/ingest"))
            .unwrap()
            .count(),
        0,
        "the local ingest is gone too"
    );
}

#[test]
fn writing_under_a_missing_lease_fails() {
    let e = env();
    let c = e.db.content("default", Some("nope"));
    let err = c.writer(WriterOpts::new("x")).err().unwrap();
    assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
    assert!(err.message.contains("nope"), "{err}");
}

#[test]
fn expired_lease_is_collected_with_its_content() {
    let e = env();
    let past: HashMap<String, String> = [(
        "containerd.io/gc.expire".to_string(),
        "2000-01-01T00:00:00Z".to_string(),
    )]
    .into();
    let future: HashMap<String, String> = [(
        "containerd.io/gc.expire".to_string(),
        "2999-01-01T00:00:00+02:00".to_string(),
    )]
    .into();
    e.db.create_lease("default", "old", &past).unwrap();
    e.db.create_lease("default", "new", &future).unwrap();
    let old = put(&e.db.content("default", Some("old")), "o", b"old", &[]);
    let new = put(&e.db.content("default", Some("new")), "n", b"new", &[]);
    let stats = e.db.garbage_collect().unwrap();
    assert_eq!(stats.removed.get("lease"), Some(&1), "{stats:?}");
    let ids: Vec<_> =
        e.db.list_leases("default", &Filter::default())
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
    assert_eq!(ids, ["new"]);
    let c = e.db.content("default", None);
    assert_eq!(c.info(&old).unwrap_err().kind, ErrorKind::NotFound);
    assert!(c.info(&new).is_ok());
}

#[test]
fn stale_unleased_ingests_are_collected() {
    let e = env_with(ContentOptions {
        ingest_expiry: Duration::from_millis(1),
    });
    let c = e.db.content("default", None);
    {
        let mut w = c.writer(WriterOpts::new("stale")).unwrap();
        w.write(b"abc").unwrap();
    }
    std::thread::sleep(Duration::from_millis(20));
    let stats = e.db.garbage_collect().unwrap();
    assert_eq!(stats.removed.get("ingest"), Some(&1), "{stats:?}");
    assert_eq!(c.status("stale").unwrap_err().kind, ErrorKind::NotFound);

    let e = env();
    let c = e.db.content("default", None);
    {
        let mut w = c.writer(WriterOpts::new("fresh")).unwrap();
        w.write(b"abc").unwrap();
    }
    e.db.garbage_collect().unwrap();
    assert_eq!(
        c.status("fresh").unwrap().offset,
        3,
        "a fresh ingest is kept"
    );
}

#[test]
fn gc_removes_blobs_left_without_records_by_a_crash() {
    let e = env();
    // a crash between the local commit and the record: bytes, no record
    let store = LocalStore::open(&e.dir.path().join("content")).unwrap();
    let mut w = store.writer(WriterOpts::new("default/orphan")).unwrap();
    w.write(b"orphan").unwrap();
    let d = w.commit(6, None, HashMap::new()).unwrap();
    assert!(on_disk(&e, &d));
    let stats = e.db.garbage_collect().unwrap();
    assert_eq!(stats.backend_removed, 1);
    assert!(!on_disk(&e, &d));
}

/// Found by the crash suite (btrfs, iteration 595, a retried pull): a pull
/// killed between a layer's local commit and its record left the blob on
/// disk with no record. The retried pull's writer found it there and opened
/// a shared ingest (nothing to download); the collection at the daemon's
/// start then deleted the file no record named, and the commit failed
/// ("shared blob ... vanished"). A shared ingest now keeps the file it will
/// commit.
#[test]
fn gc_keeps_the_blob_a_shared_ingest_will_commit() {
    let e = env();
    let store = LocalStore::open(&e.dir.path().join("content")).unwrap();
    let mut w = store.writer(WriterOpts::new("default/crashed")).unwrap();
    w.write(b"a layer").unwrap();
    let d = w.commit(7, None, HashMap::new()).unwrap();
    e.db.create_lease("default", "retry", &HashMap::new())
        .unwrap();
    let ns = e.db.content("default", Some("retry"));
    let mut w = ns
        .writer(WriterOpts {
            reference: format!("pull-{d}"),
            total: 7,
            expected: Some(d.clone()),
        })
        .unwrap();
    assert_eq!(w.status().unwrap().offset, 7, "shared: nothing to write");
    e.db.garbage_collect().unwrap();
    assert!(on_disk(&e, &d));
    assert_eq!(w.commit(7, Some(&d), HashMap::new()).unwrap(), d);
    assert_eq!(ns.info(&d).unwrap().size, 7);
    // once committed and unheld, the next collection takes it as usual
    e.db.delete_lease("default", "retry").unwrap();
    e.db.garbage_collect().unwrap();
    assert!(!on_disk(&e, &d));
}

#[test]
fn lease_lifecycle_and_filters() {
    let e = env();
    let l: HashMap<String, String> = [("team".to_string(), "a".to_string())].into();
    let lease = e.db.create_lease("default", "one", &l).unwrap();
    assert!(lease.created_at <= SystemTime::now());
    e.db.create_lease("default", "two", &HashMap::new())
        .unwrap();
    assert_eq!(
        e.db.create_lease("default", "one", &HashMap::new())
            .unwrap_err()
            .kind,
        ErrorKind::AlreadyExists
    );
    let f = Filter::parse("labels.team==a").unwrap();
    let got = e.db.list_leases("default", &f).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, "one");
    assert_eq!(
        e.db.list_leases("other", &Filter::default()).unwrap().len(),
        0
    );
    let snap = Resource {
        id: "sha256-layer".into(),
        kind: "snapshots/overlayfs".into(),
    };
    e.db.add_lease_resource("default", "one", &snap).unwrap();
    let bad = Resource {
        id: "x".into(),
        kind: "images".into(),
    };
    assert_eq!(
        e.db.add_lease_resource("default", "one", &bad)
            .unwrap_err()
            .kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        e.db.list_lease_resources("default", "one").unwrap(),
        vec![snap.clone()]
    );
    e.db.delete_lease_resource("default", "one", &snap).unwrap();
    assert!(e
        .db
        .list_lease_resources("default", "one")
        .unwrap()
        .is_empty());
    e.db.delete_lease("default", "one").unwrap();
    assert_eq!(
        e.db.delete_lease("default", "one").unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[test]
fn mutation_hooks_see_deletes() {
    let e = env();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    e.db.on_mutation(move |k| s2.lock().unwrap().push(k));
    let c = e.db.content("default", None);
    let d = put(&c, "x", b"x", &[]);
    c.delete(&d).unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.contains(&stevedore_metadata::MutationKind::Delete));
}

#[test]
fn flat_lease_keeps_only_what_it_holds() {
    let e = env();
    let c = e.db.content("default", None);
    let child = put(&c, "child", b"child", &[]);
    let flat: HashMap<String, String> =
        [("containerd.io/gc.flat".to_string(), String::new())].into();
    e.db.create_lease("default", "flat", &flat).unwrap();
    let parent = put(
        &e.db.content("default", Some("flat")),
        "parent",
        b"parent",
        &[("containerd.io/gc.ref.content.0", &child.to_string())],
    );
    e.db.garbage_collect().unwrap();
    assert!(c.info(&parent).is_ok(), "held by the lease");
    assert_eq!(
        c.info(&child).unwrap_err().kind,
        ErrorKind::NotFound,
        "a flat lease does not follow references"
    );
}
