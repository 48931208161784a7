//! Layers applied onto real snapshot chains (what image unpack does):
//! prepare on the parent, apply into the mounts, commit; then a view of the
//! top shows the merged tree, with whiteouts and opaque dirs honoured.

use std::collections::HashMap;
use std::sync::Arc;
use stevedore_diff::mounts::{apply_to_mounts, compare_mounts};
use stevedore_snapshots::Snapshotter;
use stevedore_sys::mount::MountGuard;

fn tar(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        match data {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
            Some(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(d.len() as u64);
                b.append_data(&mut h, name, d.as_bytes()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = stevedore_diff::compress(stevedore_diff::Compression::Gzip, &mut out).unwrap();
    std::io::Write::write_all(&mut w, data).unwrap();
    w.finish_stream().unwrap();
    out
}

fn unpack_chain(s: &dyn Snapshotter, scratch: &std::path::Path) {
    let layers = [
        tar(&[
            ("etc", None),
            ("etc/a", Some("a")),
            ("etc/b", Some("b")),
            ("opt", None),
            ("opt/x", Some("x")),
        ]),
        tar(&[
            ("etc", None),
            ("etc/.wh.a", Some("")),
            ("opt", None),
            ("opt/.wh..wh..opq", Some("")),
            ("opt/y", Some("y")),
        ]),
        tar(&[("etc", None), ("etc/c", Some("c"))]),
    ];
    let mut parent = String::new();
    for (i, layer) in layers.iter().enumerate() {
        let key = format!("extract-{i}");
        let mounts = s.prepare(&key, &parent, HashMap::new()).unwrap();
        let applied = apply_to_mounts(
            &mounts,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            gzip(layer).as_slice(),
            scratch,
        )
        .unwrap();
        assert_eq!(applied.size, layer.len() as u64);
        let name = format!("layer-{i}");
        s.commit(&name, &key, HashMap::new()).unwrap();
        parent = name;
    }
    let view = s.view("check", &parent, HashMap::new()).unwrap();
    let target = scratch.join("view");
    std::fs::create_dir(&target).unwrap();
    let g = MountGuard::mount(&view, &target).unwrap();
    let list = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(target.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(list("etc"), ["b", "c"]);
    assert_eq!(list("opt"), ["y"]);
    g.release().unwrap();

    // the diff of the top layer against its parent is that layer again
    let lower = s.view("lower", "layer-1", HashMap::new()).unwrap();
    let upper = s.prepare("upper", "layer-2", HashMap::new()).unwrap();
    let mut out = Vec::new();
    compare_mounts(&lower, &upper, &mut out, scratch).unwrap();
    let mut names: Vec<String> = tar::Archive::new(out.as_slice())
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    names.sort();
    // etc/ has the same metadata in both (the layer set its mtime back)
    assert_eq!(names, ["etc/c"]);
}

#[test]
fn unpacks_a_layer_chain_into_overlay_snapshots() {
    let d = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in("/tmp")
        .unwrap();
    let s: Arc<dyn Snapshotter> =
        Arc::new(stevedore_snapshots::overlay::open(&d.path().join("root")).unwrap());
    unpack_chain(&*s, d.path());
}

#[test]
fn unpacks_a_layer_chain_into_native_snapshots() {
    let d = tempfile::Builder::new()
        .prefix("unpack-")
        .tempdir_in("/tmp")
        .unwrap();
    let s: Arc<dyn Snapshotter> =
        Arc::new(stevedore_snapshots::native::open(&d.path().join("root")).unwrap());
    unpack_chain(&*s, d.path());
}
