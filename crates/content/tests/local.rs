//! The local store runs the conformance suite, plus its crash-recovery rules.

use std::collections::HashMap;
use stevedore_content::local::LocalStore;
use stevedore_content::{digest_of, Store, WriterOpts};
use stevedore_types::ErrorKind;

fn fresh() -> (tempfile::TempDir, Box<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    (dir, Box::new(store) as Box<dyn Store>)
}

stevedore_content::content_store_conformance!(fresh);

#[test]
fn ingest_survives_reopen_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    {
        let store = LocalStore::open(dir.path()).unwrap();
        let mut w = store.writer(WriterOpts::new("r").total(50_000)).unwrap();
        w.write(&bytes[..20_000]).unwrap();
        // the process "dies": nothing is closed cleanly
        std::mem::forget(w);
    }
    let store = LocalStore::open(dir.path()).unwrap();
    let st = store.status("r").unwrap();
    assert_eq!((st.offset, st.total), (20_000, 50_000));
    let mut w = store.writer(WriterOpts::new("r")).unwrap();
    w.write(&bytes[20_000..]).unwrap();
    let d = w
        .commit(50_000, Some(&digest_of(&bytes)), HashMap::new())
        .unwrap();
    assert_eq!(store.info(&d).unwrap().size, 50_000);
}

/// `ctr images import` writes every archive's index.json as ref
/// "tar-index.json": after a crash mid-import of one archive, the import of
/// another finds the ref holding bytes of other content and another total.
/// containerd's store starts such an ingest again; resuming would keep more
/// bytes than the new total (an ingest no writer could finish).
#[test]
fn a_ref_reopened_with_another_total_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let first = b"the index of the first archive, 42 bytes..".to_vec();
    let mut w = store
        .writer(WriterOpts::new("tar-index.json").total(first.len() as i64))
        .unwrap();
    w.write(&first).unwrap();
    std::mem::forget(w);
    let store = LocalStore::open(dir.path()).unwrap();
    let second = b"another index, shorter".to_vec();
    let mut w = store
        .writer(WriterOpts::new("tar-index.json").total(second.len() as i64))
        .unwrap();
    let st = w.status().unwrap();
    assert_eq!((st.offset, st.total), (0, second.len() as i64));
    w.write(&second).unwrap();
    let d = w
        .commit(
            second.len() as i64,
            Some(&digest_of(&second)),
            HashMap::new(),
        )
        .unwrap();
    assert_eq!(d, digest_of(&second));
    // the same total resumes as before
    let mut w = store.writer(WriterOpts::new("r").total(10)).unwrap();
    w.write(b"01234").unwrap();
    std::mem::forget(w);
    let store = LocalStore::open(dir.path()).unwrap();
    let w = store.writer(WriterOpts::new("r").total(10)).unwrap();
    assert_eq!(w.status().unwrap().offset, 5);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn open_removes_what_a_crash_left_half_done() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    drop(store);
    let ingest = dir.path().join("ingest");
    std::fs::create_dir_all(ingest.join(".tmp-abc-1-0")).unwrap();
    // a commit renamed data into blobs/ but died before removing the ingest
    std::fs::create_dir_all(ingest.join("deadbeef")).unwrap();
    std::fs::write(ingest.join("deadbeef/ref"), "gone").unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    assert_eq!(std::fs::read_dir(&ingest).unwrap().count(), 0);
    assert_eq!(store.status("gone").unwrap_err().kind, ErrorKind::NotFound);
}

#[test]
fn blobs_are_read_only_and_named_by_digest() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, store) = fresh();
    let mut w = store.writer(WriterOpts::new("x")).unwrap();
    w.write(b"hello").unwrap();
    let d = w.commit(5, None, HashMap::new()).unwrap();
    let p = dir.path().join("blobs/sha256").join(d.hex());
    assert_eq!(std::fs::read(&p).unwrap(), b"hello");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o444
    );
}

#[test]
fn max_ingest_size_caps_declared_and_unknown_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    store.set_max_ingest_size(1000);
    let e = store
        .writer(WriterOpts::new("declared").total(1001))
        .err()
        .expect("declared size over the cap");
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("max_ingest_size"), "{e}");
    let mut w = store.writer(WriterOpts::new("unknown")).unwrap();
    w.write(&[7u8; 600]).unwrap();
    let e = w.write(&[7u8; 401]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message.contains("\"unknown\"") && e.message.contains("limit of 1000 bytes"),
        "{e}"
    );
    w.write(&[7u8; 400]).unwrap();
    store.set_max_ingest_size(0);
    w.write(&[7u8; 10]).unwrap();
}

#[test]
fn only_the_total_declared_by_the_open_session_bounds_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let bytes = [3u8; 150];
    let mut w = store.writer(WriterOpts::new("r").total(100)).unwrap();
    w.write(&bytes[..50]).unwrap();
    drop(w);
    // a resume that declares no total is not held to the earlier one
    // (containerd keeps the stored total as information only)
    let mut w = store.writer(WriterOpts::new("r")).unwrap();
    w.write(&bytes[50..]).unwrap();
    let d = w
        .commit(150, Some(&digest_of(&bytes)), HashMap::new())
        .unwrap();
    assert_eq!(store.info(&d).unwrap().size, 150);
    // one that declares a total is
    let mut w = store.writer(WriterOpts::new("r2").total(10)).unwrap();
    assert_eq!(
        w.write(&bytes[..11]).unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
}
