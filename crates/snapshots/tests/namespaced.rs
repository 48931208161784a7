//! Namespacing over one snapshotter, and recovery from crash leftovers.

use std::collections::HashMap;
use std::sync::Arc;
use stevedore_snapshots::{Kind, Namespaced, Snapshotter};
use stevedore_types::filters::Filter;
use stevedore_types::ErrorKind;

fn labels(k: &str, v: &str) -> HashMap<String, String> {
    HashMap::from([(k.to_string(), v.to_string())])
}

#[test]
fn namespaces_are_isolated_and_the_gc_sees_all() {
    let d = tempfile::tempdir().unwrap();
    let s = Namespaced::new(Arc::new(
        stevedore_snapshots::native::open(d.path()).unwrap(),
    ));
    s.prepare("a", "k", "", HashMap::new()).unwrap();
    s.commit("a", "base", "k", labels("containerd.io/gc.root", "x"))
        .unwrap();
    s.prepare("a", "child", "base", HashMap::new()).unwrap();
    // the same keys in another namespace are independent
    s.prepare("b", "k", "", HashMap::new()).unwrap();
    let e = s.prepare("b", "child", "base", HashMap::new()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
    assert!(
        e.message.contains("\"base\"") && !e.message.contains("b/"),
        "local names in errors: {e}"
    );
    let a = s.list("a", &Filter::default()).unwrap();
    let mut names: Vec<_> = a
        .iter()
        .map(|i| (i.name.as_str(), i.parent.as_str()))
        .collect();
    names.sort();
    assert_eq!(names, [("base", ""), ("child", "base")]);
    assert_eq!(
        s.list("b", &Filter::parse("kind==active").unwrap())
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.stat("a", "child").unwrap().kind, Kind::Active);
    assert_eq!(s.stat("b", "base").unwrap_err().kind, ErrorKind::NotFound);
    let mut all: Vec<(String, String)> = s
        .all()
        .unwrap()
        .into_iter()
        .map(|(ns, i)| (ns, i.name))
        .collect();
    all.sort();
    assert_eq!(
        all,
        [
            ("a".into(), "base".into()),
            ("a".into(), "child".into()),
            ("b".into(), "k".into())
        ]
    );
    s.remove("a", "child").unwrap();
    s.remove("a", "base").unwrap();
    assert!(s.list("a", &Filter::default()).unwrap().is_empty());
}

#[test]
fn a_stale_directory_of_an_uncommitted_id_is_replaced() {
    let d = tempfile::tempdir().unwrap();
    let s = stevedore_snapshots::native::open(d.path()).unwrap();
    // a crash after renaming `new-*` to `1` but before the commit
    std::fs::create_dir_all(d.path().join("snapshots/1/fs/junk")).unwrap();
    s.prepare("a", "", HashMap::new()).unwrap();
    let fs = s.fs_path("a").unwrap();
    assert_eq!(fs, d.path().join("snapshots/1/fs"));
    assert_eq!(
        std::fs::read_dir(&fs).unwrap().count(),
        0,
        "stale contents are gone"
    );
    assert_eq!(s.list(&Filter::default()).unwrap().len(), 1);
}
