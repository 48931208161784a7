//! Sandboxes are GC roots: content a sandbox's labels reference survives a
//! collection until the sandbox (or the label) goes.

use std::sync::Arc;
use stevedore_content::local::LocalStore;
use stevedore_content::{digest_of, Store, WriterOpts};
use stevedore_metadata::content::ContentOptions;
use stevedore_metadata::sandboxes::Sandbox;
use stevedore_metadata::Db;
use stevedore_types::ErrorKind;

#[test]
fn sandbox_labels_hold_content_until_the_sandbox_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.db")).unwrap());
    let store = LocalStore::open(&dir.path().join("content")).unwrap();
    db.attach_content(store, ContentOptions::default()).unwrap();
    let c = db.content("default", None);
    let put = |reference: &str, bytes: &[u8]| {
        let mut w = c
            .writer(WriterOpts::new(reference).total(bytes.len() as i64))
            .unwrap();
        w.write(bytes).unwrap();
        w.commit(
            bytes.len() as i64,
            Some(&digest_of(bytes)),
            Default::default(),
        )
        .unwrap()
    };
    let held = put("held", b"held by a sandbox");
    let other = put("other", b"held by nothing");
    let kept_by_label = put("label", b"held by a label that goes");
    let sandbox = Sandbox {
        id: "pod1".into(),
        labels: [
            (
                "containerd.io/gc.ref.content.config".to_string(),
                held.to_string(),
            ),
            (
                "containerd.io/gc.ref.content.extra".to_string(),
                kept_by_label.to_string(),
            ),
        ]
        .into(),
        ..Default::default()
    };
    db.create_sandbox("default", sandbox.clone()).unwrap();
    // the same sandbox id in another namespace holds nothing here
    db.create_sandbox(
        "other",
        Sandbox {
            id: "pod1".into(),
            ..Default::default()
        },
    )
    .unwrap();

    let stats = db.garbage_collect().unwrap();
    assert_eq!(stats.removed.get("content"), Some(&1), "{stats:?}");
    assert!(c.info(&held).is_ok());
    assert!(c.info(&kept_by_label).is_ok());
    assert_eq!(c.info(&other).unwrap_err().kind, ErrorKind::NotFound);

    // dropping one label releases that blob only
    let mut upd = sandbox.clone();
    upd.labels.remove("containerd.io/gc.ref.content.extra");
    db.update_sandbox(
        "default",
        upd,
        &["labels.containerd.io/gc.ref.content.extra".into()],
    )
    .unwrap();
    db.garbage_collect().unwrap();
    assert!(c.info(&held).is_ok());
    assert_eq!(
        c.info(&kept_by_label).unwrap_err().kind,
        ErrorKind::NotFound
    );

    db.delete_sandbox("default", "pod1").unwrap();
    db.garbage_collect().unwrap();
    assert_eq!(c.info(&held).unwrap_err().kind, ErrorKind::NotFound);
}
