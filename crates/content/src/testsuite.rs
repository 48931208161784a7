//! The content store conformance suite (containerd's `content/testsuite`):
//! behaviour every [`Store`] must show. Each check takes a fresh, empty store.
//! Run it for an implementation with [`content_store_conformance!`]:
//!
//! ```ignore
//! stevedore_content::content_store_conformance!(|| {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = LocalStore::open(dir.path()).unwrap();
//!     (dir, Box::new(store) as Box<dyn Store>)
//! }; labels);
//! ```
//! The optional trailing `labels` also runs the label checks (for stores that
//! keep labels).

use crate::{digest_of, read_all, Store, WriterOpts};
use std::collections::HashMap;
use stevedore_types::filters::Filter;
use stevedore_types::{Digest, ErrorKind};

/// Generate one `#[test]` per conformance check for a store factory.
#[macro_export]
macro_rules! content_store_conformance {
    ($factory:expr $(; $labels:ident)?) => {
        $crate::content_store_conformance!(@tests $factory;
            writes_and_commits_blob,
            resumes_interrupted_ingest,
            writes_owned_chunks_in_order,
            records_update_time_of_each_write,
            rejects_digest_mismatch_and_keeps_blob_invisible,
            rejects_size_mismatch,
            refuses_writes_beyond_expected_total,
            second_writer_on_same_ref_is_unavailable,
            concurrent_writers_of_same_content_commit_once,
            reports_existing_blob_on_open,
            lists_with_filters,
            reads_ranges,
            aborts_ingest,
            lists_and_filters_statuses,
            deletes_blob,
            streams_large_blob_with_bounded_memory
        );
        $($crate::content_store_conformance!(@labels $labels $factory);)?
    };
    (@labels labels $factory:expr) => {
        $crate::content_store_conformance!(@tests $factory; updates_labels);
    };
    (@tests $factory:expr; $($name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                let (_guard, store) = ($factory)();
                $crate::testsuite::$name(&*store);
            }
        )+
    };
}

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn ingest(store: &dyn Store, reference: &str, bytes: &[u8]) -> Digest {
    let d = digest_of(bytes);
    let mut w = store
        .writer(WriterOpts::new(reference).total(bytes.len() as i64))
        .unwrap();
    for chunk in bytes.chunks(7000) {
        w.write(chunk).unwrap();
    }
    w.commit(bytes.len() as i64, Some(&d), HashMap::new())
        .unwrap();
    d
}

fn read(store: &dyn Store, d: &Digest) -> Vec<u8> {
    let ra = store.reader_at(d).unwrap();
    let mut out = Vec::new();
    read_all(&*ra, &mut out).unwrap();
    out
}

pub fn writes_and_commits_blob(store: &dyn Store) {
    let bytes = data(100_000, 1);
    let d = ingest(store, "ref-1", &bytes);
    let info = store.info(&d).unwrap();
    assert_eq!(info.size, bytes.len() as i64);
    assert_eq!(info.digest, d);
    assert_eq!(read(store, &d), bytes);
    assert_eq!(
        store.status("ref-1").unwrap_err().kind,
        ErrorKind::NotFound,
        "a committed ingest is gone"
    );
    // an empty blob is a blob too
    let e = ingest(store, "empty", b"");
    assert_eq!(store.info(&e).unwrap().size, 0);
}

pub fn resumes_interrupted_ingest(store: &dyn Store) {
    let bytes = data(300_000, 2);
    let (a, b) = bytes.split_at(123_457);
    {
        let mut w = store
            .writer(WriterOpts::new("resume").total(bytes.len() as i64))
            .unwrap();
        w.write(a).unwrap();
        // dropped without commit: the client went away
    }
    let st = store.status("resume").unwrap();
    assert_eq!(st.offset, a.len() as i64);
    assert_eq!(st.total, bytes.len() as i64);
    let mut w = store.writer(WriterOpts::new("resume")).unwrap();
    let st = w.status().unwrap();
    assert_eq!(st.offset, a.len() as i64, "resumes at the stored offset");
    assert_eq!(w.digest(), digest_of(a), "re-hashes what is on disk");
    w.write(b).unwrap();
    let d = w
        .commit(bytes.len() as i64, Some(&digest_of(&bytes)), HashMap::new())
        .unwrap();
    assert_eq!(read(store, &d), bytes);
}

/// Owned chunks (`write_bytes`, which a store may write behind the caller)
/// land in order with plain writes; a truncate, a drop (then a resume) and a
/// commit each see every byte written before them, and the declared total
/// still bounds them.
pub fn writes_owned_chunks_in_order(store: &dyn Store) {
    use bytes::Bytes;
    let bytes = data(3 << 20, 5);
    let total = bytes.len() as i64;
    let mut w = store.writer(WriterOpts::new("owned").total(total)).unwrap();
    w.write_bytes(Bytes::copy_from_slice(&bytes[..1 << 20]))
        .unwrap();
    w.truncate(0).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
    let (a, rest) = bytes.split_at(1_500_000);
    for chunk in a.chunks(300_000) {
        w.write_bytes(Bytes::copy_from_slice(chunk)).unwrap();
    }
    w.write(&rest[..1000]).unwrap();
    assert_eq!(w.status().unwrap().offset, 1_501_000);
    drop(w);
    assert_eq!(
        store.status("owned").unwrap().offset,
        1_501_000,
        "a writer that went away leaves every byte it took"
    );
    let mut w = store.writer(WriterOpts::new("owned").total(total)).unwrap();
    assert_eq!(w.digest(), digest_of(&bytes[..1_501_000]));
    for chunk in rest[1000..].chunks(1 << 20) {
        w.write_bytes(Bytes::copy_from_slice(chunk)).unwrap();
    }
    let err = w.write_bytes(Bytes::from_static(b"x")).unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidArgument, "{}", err.message);
    let d = w
        .commit(total, Some(&digest_of(&bytes)), HashMap::new())
        .unwrap();
    assert_eq!(read(store, &d), bytes);
}

/// containerd's `checkStatus`: an ingest's `updated_at` lies between the
/// clock read just before and just after the last write, for the writer and
/// for a status read after the writer went away (resume), at full clock
/// precision (a file's coarse mtime can be earlier than the write).
pub fn records_update_time_of_each_write(store: &dyn Store) {
    use std::time::SystemTime;
    for round in 0..20u8 {
        let reference = format!("updated-{round}");
        let mut w = store.writer(WriterOpts::new(&reference)).unwrap();
        let started = w.status().unwrap().started_at;
        let before = SystemTime::now();
        w.write(&data(1000, round)).unwrap();
        let after = SystemTime::now();
        let st = w.status().unwrap();
        assert!(
            st.updated_at >= before && st.updated_at <= after,
            "writer: updated {:?} not within [{before:?}, {after:?}]",
            st.updated_at
        );
        assert!(st.started_at == started && started <= before);
        drop(w);
        for st in [
            store.status(&reference).unwrap(),
            store
                .writer(WriterOpts::new(&reference))
                .unwrap()
                .status()
                .unwrap(),
        ] {
            assert!(
                st.updated_at >= before && st.updated_at <= after,
                "after reopen: updated {:?} not within [{before:?}, {after:?}]",
                st.updated_at
            );
        }
        store.abort(&reference).unwrap();
    }
}

pub fn rejects_digest_mismatch_and_keeps_blob_invisible(store: &dyn Store) {
    let bytes = data(5000, 3);
    let wrong = digest_of(b"something else");
    let mut w = store.writer(WriterOpts::new("bad-digest")).unwrap();
    w.write(&bytes).unwrap();
    let e = w
        .commit(bytes.len() as i64, Some(&wrong), HashMap::new())
        .unwrap_err();
    assert!(
        matches!(
            e.kind,
            ErrorKind::FailedPrecondition | ErrorKind::InvalidArgument
        ),
        "{e:?}"
    );
    assert!(e.message.contains(&wrong.to_string()), "{e}");
    assert!(e.message.contains(&digest_of(&bytes).to_string()), "{e}");
    assert_eq!(store.info(&wrong).unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(
        store.info(&digest_of(&bytes)).unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert!(store.list(&Filter::default()).unwrap().is_empty());
}

pub fn rejects_size_mismatch(store: &dyn Store) {
    let bytes = data(5000, 4);
    let mut w = store.writer(WriterOpts::new("bad-size")).unwrap();
    w.write(&bytes).unwrap();
    let e = w
        .commit(4999, Some(&digest_of(&bytes)), HashMap::new())
        .unwrap_err();
    assert!(
        matches!(
            e.kind,
            ErrorKind::FailedPrecondition | ErrorKind::InvalidArgument
        ),
        "{e:?}"
    );
    assert!(
        e.message.contains("4999") && e.message.contains("5000"),
        "{e}"
    );
    assert_eq!(
        store.info(&digest_of(&bytes)).unwrap_err().kind,
        ErrorKind::NotFound
    );
}

pub fn refuses_writes_beyond_expected_total(store: &dyn Store) {
    let bytes = data(5000, 9);
    let mut w = store
        .writer(WriterOpts::new("too-long").total(4000))
        .unwrap();
    w.write(&bytes[..4000]).unwrap();
    let e = w.write(&bytes[4000..]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e:?}");
    assert!(
        e.message.contains("too-long") && e.message.contains("expected total of 4000 bytes"),
        "{e}"
    );
    // what fits is still there and commits
    assert_eq!(w.status().unwrap().offset, 4000);
    w.commit(4000, Some(&digest_of(&bytes[..4000])), HashMap::new())
        .unwrap();
}

pub fn second_writer_on_same_ref_is_unavailable(store: &dyn Store) {
    let w = store.writer(WriterOpts::new("locked")).unwrap();
    let e = store.writer(WriterOpts::new("locked")).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unavailable, "{e}");
    assert!(e.message.contains("locked"), "{e}");
    drop(w);
    store.writer(WriterOpts::new("locked")).unwrap();
}

pub fn concurrent_writers_of_same_content_commit_once(store: &dyn Store) {
    let bytes = data(200_000, 5);
    let d = digest_of(&bytes);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|i| {
                let bytes = &bytes;
                let d = &d;
                s.spawn(move || {
                    let mut w = store.writer(WriterOpts::new(format!("conc-{i}")))?;
                    for c in bytes.chunks(10_000) {
                        w.write(c)?;
                    }
                    w.commit(bytes.len() as i64, Some(d), HashMap::new())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert!(ok >= 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
        }
    }
    assert_eq!(read(store, &d), bytes);
    assert!(store.list_statuses(&Filter::default()).unwrap().is_empty());
}

pub fn reports_existing_blob_on_open(store: &dyn Store) {
    let bytes = data(1000, 6);
    let d = ingest(store, "first", &bytes);
    let e = store
        .writer(WriterOpts::new("second").expected(d.clone()))
        .err()
        .unwrap();
    assert_eq!(e.kind, ErrorKind::AlreadyExists, "{e}");
}

pub fn lists_with_filters(store: &dyn Store) {
    let a = ingest(store, "a", &data(10, 7));
    let b = ingest(store, "b", &data(20, 8));
    let all = store.list(&Filter::default()).unwrap();
    assert_eq!(all.len(), 2);
    let only_a = store
        .list(&Filter::parse(&format!("digest=={a}")).unwrap())
        .unwrap();
    assert_eq!(only_a.len(), 1);
    assert_eq!(only_a[0].digest, a);
    let by_size = store.list(&Filter::parse("size==20").unwrap()).unwrap();
    assert_eq!(by_size.len(), 1);
    assert_eq!(by_size[0].digest, b);
    let either = store
        .list(&Filter::parse_all(&[format!("digest=={a}"), "size==20".into()]).unwrap())
        .unwrap();
    assert_eq!(either.len(), 2);
}

pub fn reads_ranges(store: &dyn Store) {
    let bytes = data(70_000, 9);
    let d = ingest(store, "ranges", &bytes);
    let ra = store.reader_at(&d).unwrap();
    assert_eq!(ra.size(), bytes.len() as u64);
    for (off, len) in [
        (0usize, 10usize),
        (1, 1),
        (65_536, 4464),
        (69_990, 10),
        (500, 60_000),
    ] {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = ra.read_at(&mut buf[got..], (off + got) as u64).unwrap();
            assert!(n > 0);
            got += n;
        }
        assert_eq!(buf, &bytes[off..off + len], "range {off}+{len}");
    }
    let mut buf = vec![0u8; 100];
    assert_eq!(ra.read_at(&mut buf, 70_000).unwrap(), 0, "end of blob");
    assert_eq!(
        ra.read_at(&mut buf, 69_950).unwrap(),
        50,
        "short read at end"
    );
    assert_eq!(
        store.reader_at(&digest_of(b"nope")).err().unwrap().kind,
        ErrorKind::NotFound
    );
}

pub fn aborts_ingest(store: &dyn Store) {
    {
        let mut w = store.writer(WriterOpts::new("abort-me")).unwrap();
        w.write(b"partial").unwrap();
    }
    assert_eq!(store.status("abort-me").unwrap().offset, 7);
    store.abort("abort-me").unwrap();
    assert_eq!(
        store.status("abort-me").unwrap_err().kind,
        ErrorKind::NotFound
    );
    assert_eq!(
        store.abort("abort-me").unwrap_err().kind,
        ErrorKind::NotFound
    );
    // the ref starts afresh
    let w = store.writer(WriterOpts::new("abort-me")).unwrap();
    assert_eq!(w.status().unwrap().offset, 0);
}

pub fn lists_and_filters_statuses(store: &dyn Store) {
    for r in ["pull-1", "pull-2", "other"] {
        let mut w = store.writer(WriterOpts::new(r).total(100)).unwrap();
        w.write(r.as_bytes()).unwrap();
    }
    let all = store.list_statuses(&Filter::default()).unwrap();
    let mut refs: Vec<_> = all.iter().map(|s| s.reference.as_str()).collect();
    refs.sort();
    assert_eq!(refs, ["other", "pull-1", "pull-2"]);
    let some = store
        .list_statuses(&Filter::parse("ref~=^pull-").unwrap())
        .unwrap();
    assert_eq!(some.len(), 2);
    let one = store
        .list_statuses(&Filter::parse("ref==other").unwrap())
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].offset, 5);
    assert_eq!(one[0].total, 100);
}

pub fn deletes_blob(store: &dyn Store) {
    let d = ingest(store, "del", b"delete me");
    store.delete(&d).unwrap();
    assert_eq!(store.info(&d).unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(store.delete(&d).unwrap_err().kind, ErrorKind::NotFound);
}

pub fn updates_labels(store: &dyn Store) {
    let d = ingest(store, "lbl", b"labelled");
    let mut info = store.info(&d).unwrap();
    info.labels = [("a".to_string(), "1".to_string()), ("b".into(), "2".into())].into();
    let got = store.update(info.clone(), &["labels".into()]).unwrap();
    assert_eq!(got.labels.len(), 2);
    info.labels = [("b".to_string(), String::new()), ("c".into(), "3".into())].into();
    let got = store
        .update(info.clone(), &["labels.b".into(), "labels.c".into()])
        .unwrap();
    let want: HashMap<String, String> =
        [("a".to_string(), "1".to_string()), ("c".into(), "3".into())].into();
    assert_eq!(got.labels, want);
    assert_eq!(store.info(&d).unwrap().labels, want);
    let listed = store.list(&Filter::parse("labels.c==3").unwrap()).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(store
        .list(&Filter::parse("labels.b==2").unwrap())
        .unwrap()
        .is_empty());
    let e = store.update(info, &["size".into()]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

/// Peak resident memory of this process, in bytes.
fn peak_rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

pub fn streams_large_blob_with_bounded_memory(store: &dyn Store) {
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 1100; // 1.07 GiB
    let before = peak_rss();
    let mut buf = data(CHUNK, 10);
    let mut expect = crate::Hasher::new(stevedore_types::Algorithm::Sha256);
    let mut w = store.writer(WriterOpts::new("large")).unwrap();
    for i in 0..CHUNKS {
        buf[..8].copy_from_slice(&i.to_le_bytes());
        expect.update(&buf);
        w.write(&buf).unwrap();
    }
    let size = (CHUNK as u64 * CHUNKS) as i64;
    let d = w
        .commit(size, Some(&expect.digest()), HashMap::new())
        .unwrap();
    assert_eq!(store.info(&d).unwrap().size, size);
    // read it back in chunks and check the digest again
    let ra = store.reader_at(&d).unwrap();
    let mut h = crate::Hasher::new(stevedore_types::Algorithm::Sha256);
    let mut off = 0u64;
    loop {
        let n = ra.read_at(&mut buf, off).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    assert_eq!(off as i64, size);
    assert_eq!(h.digest(), d);
    let grew = peak_rss().saturating_sub(before);
    assert!(
        grew < 256 << 20,
        "streaming 1 GiB must not buffer it: peak RSS grew by {} MiB",
        grew >> 20
    );
    store.delete(&d).unwrap();
}
