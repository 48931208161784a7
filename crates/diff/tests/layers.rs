//! Crafted layer tars: every escape attempt fails without writing outside
//! the root; whiteouts and opaque directories in both modes; metadata kept;
//! compare + apply round-trips.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use stevedore_diff::{apply, compare, Compression, WhiteoutMode};
use stevedore_types::ErrorKind;

/// A tar under construction; names are written raw (no sanitising).
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }
    fn raw(
        &mut self,
        name: &str,
        kind: tar::EntryType,
        data: &[u8],
        link: &str,
        mode: u32,
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        {
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_uid(0);
        h.set_gid(0);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.0.append(&h, data).unwrap();
        self
    }
    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, data.as_bytes(), "", 0o644)
    }
    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, b"", "", 0o755)
    }
    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, b"", target, 0o777)
    }
    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, b"", target, 0o644)
    }
    /// A hard link entry with its own mode (tar writers give a link its
    /// inode's mode; containerd applies whatever the entry says).
    fn hardlink_mode(&mut self, name: &str, target: &str, mode: u32) -> &mut Self {
        self.raw(name, tar::EntryType::Link, b"", target, mode)
    }
    fn bytes(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap()
    }
}

struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("diff-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(outside.join("sub")).unwrap();
        fs::write(outside.join("sentinel"), "untouched").unwrap();
        Sandbox {
            _dir: dir,
            root,
            outside,
        }
    }
    fn outside_listing(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        let mut stack = vec![self.outside.clone()];
        while let Some(p) = stack.pop() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let md = fs::symlink_metadata(e.path()).unwrap();
                if md.is_dir() {
                    stack.push(e.path());
                    out.push((e.path(), String::new()));
                } else {
                    out.push((e.path(), fs::read_to_string(e.path()).unwrap_or_default()));
                }
            }
        }
        out.sort();
        out
    }
}

fn assert_escape_rejected(build: impl Fn(&Sandbox) -> Vec<u8>, entry: &str) {
    for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
        let sb = Sandbox::new();
        let before = sb.outside_listing();
        let tar = build(&sb);
        let e = apply(&sb.root, tar.as_slice(), mode).expect_err("escape must fail");
        assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
        assert!(
            e.message.contains(entry),
            "error names the entry {entry:?}: {e}"
        );
        assert!(e.message.contains("outside the root"), "{e}");
        assert_eq!(
            sb.outside_listing(),
            before,
            "nothing written outside the root"
        );
    }
}

#[test]
fn rejects_dot_dot_climbing_above_the_root() {
    assert_escape_rejected(
        |_| Tar::new().file("../outside/x", "evil").bytes(),
        "../outside/x",
    );
    assert_escape_rejected(
        |_| Tar::new().file("a/../../outside/y", "evil").bytes(),
        "a/../../outside/y",
    );
}

#[test]
fn absolute_entry_paths_land_inside_the_root() {
    let sb = Sandbox::new();
    let before = sb.outside_listing();
    let abs = format!("{}/abs", sb.outside.display());
    let tar = Tar::new().file(&abs, "inside").bytes();
    apply(&sb.root, tar.as_slice(), WhiteoutMode::Delete).unwrap();
    let inside = sb.root.join(abs.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside).unwrap(), "inside");
    assert_eq!(sb.outside_listing(), before);
}

#[test]
fn rejects_writing_through_a_symlink_to_slash() {
    assert_escape_rejected(
        |sb| {
            Tar::new()
                .symlink("evil", "/")
                .file(&format!("evil{}/planted", sb.outside.display()), "evil")
                .bytes()
        },
        "evil/",
    );
}

#[test]
fn rejects_writing_through_a_relative_symlink_leaving_the_root() {
    assert_escape_rejected(
        |_| {
            Tar::new()
                .symlink("up", "../outside")
                .file("up/planted", "evil")
                .bytes()
        },
        "up/planted",
    );
}

#[test]
fn rejects_writing_through_a_symlink_chain() {
    assert_escape_rejected(
        |sb| {
            Tar::new()
                .symlink("a", "b")
                .symlink("b", &sb.outside.display().to_string())
                .file("a/sub/planted", "evil")
                .bytes()
        },
        "a/sub/planted",
    );
}

#[test]
fn rejects_hardlinks_to_outside_files() {
    assert_escape_rejected(
        |_| Tar::new().hardlink("h", "../outside/sentinel").bytes(),
        "\"h\"",
    );
    assert_escape_rejected(
        |sb| {
            Tar::new()
                .symlink("evil", &sb.outside.display().to_string())
                .hardlink("h", "evil/sentinel")
                .bytes()
        },
        "\"h\"",
    );
}

#[test]
fn rejects_whiteouts_through_symlinks() {
    assert_escape_rejected(
        |sb| {
            Tar::new()
                .symlink("evil", &sb.outside.display().to_string())
                .file("evil/.wh.sentinel", "")
                .bytes()
        },
        "evil/.wh.sentinel",
    );
}

/// Found by libFuzzer (fuzz/, target layer_apply): uid 2^32-1 made rustix
/// panic, and a uid of 2^32 or more wrapped to another owner.
#[test]
fn rejects_owner_ids_chown_cannot_take() {
    for (uid, gid) in [
        (u64::from(u32::MAX), 0),
        (0, u64::from(u32::MAX)),
        (1 << 32, 0),
        (0, (1 << 32) + 1000),
    ] {
        for mode in [WhiteoutMode::Delete, WhiteoutMode::Overlay] {
            let sb = Sandbox::new();
            let mut h = tar::Header::new_gnu();
            h.set_path("f").unwrap();
            h.set_size(1);
            h.set_mode(0o644);
            // GNU headers hold large ids in base-256
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_cksum();
            let mut b = tar::Builder::new(Vec::new());
            b.append(&h, &b"x"[..]).unwrap();
            let tar = b.into_inner().unwrap();
            let e = apply(&sb.root, tar.as_slice(), mode).expect_err("id out of range");
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
            let what = if uid != 0 { "bad uid" } else { "bad gid" };
            assert!(
                e.message.contains(what) && e.message.contains("\"f\""),
                "{e}"
            );
        }
    }
}

#[test]
fn replaces_an_existing_symlink_instead_of_writing_through_it() {
    let sb = Sandbox::new();
    let before = sb.outside_listing();
    std::os::unix::fs::symlink(sb.outside.join("sentinel"), sb.root.join("f")).unwrap();
    std::os::unix::fs::symlink(&sb.outside, sb.root.join("d")).unwrap();
    let tar = Tar::new()
        .file("f", "new")
        .dir("d")
        .file("d/x", "in")
        .bytes();
    apply(&sb.root, tar.as_slice(), WhiteoutMode::Delete).unwrap();
    assert!(fs::symlink_metadata(sb.root.join("f")).unwrap().is_file());
    assert_eq!(fs::read_to_string(sb.root.join("f")).unwrap(), "new");
    assert!(fs::symlink_metadata(sb.root.join("d")).unwrap().is_dir());
    assert_eq!(sb.outside_listing(), before);
}

fn base_layer() -> Vec<u8> {
    Tar::new()
        .file("a", "A")
        .file("keep", "K")
        .dir("d")
        .file("d/x", "x")
        .file("d/y", "y")
        .dir("gone")
        .file("gone/deep", "g")
        .bytes()
}

fn whiteout_layer() -> Vec<u8> {
    Tar::new()
        .file(".wh.a", "")
        .file(".wh.gone", "")
        .dir("d")
        .file("d/.wh..wh..opq", "")
        .file("d/z", "z")
        .bytes()
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn whiteouts_delete_paths_on_a_full_tree() {
    let sb = Sandbox::new();
    apply(&sb.root, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    apply(&sb.root, whiteout_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    assert_eq!(listing(&sb.root), ["d", "keep"]);
    assert_eq!(
        listing(&sb.root.join("d")),
        ["z"],
        "opaque dir keeps only this layer's entries"
    );
}

#[test]
fn opaque_marker_before_the_layers_own_entries_keeps_them() {
    let sb = Sandbox::new();
    apply(&sb.root, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    let tar = Tar::new()
        .file("d/z", "z")
        .file("d/.wh..wh..opq", "")
        .bytes();
    apply(&sb.root, tar.as_slice(), WhiteoutMode::Delete).unwrap();
    assert_eq!(listing(&sb.root.join("d")), ["z"]);
}

#[test]
fn whiteouts_become_overlay_markers_in_an_upper_dir_and_mount_correctly() {
    let sb = Sandbox::new();
    let (lower, upper, work, merged) = (
        sb.root.join("lower"),
        sb.root.join("upper"),
        sb.root.join("work"),
        sb.root.join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    apply(&lower, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    apply(&upper, whiteout_layer().as_slice(), WhiteoutMode::Overlay).unwrap();
    let wh = fs::symlink_metadata(upper.join("a")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(fs::symlink_metadata(upper.join("gone"))
        .unwrap()
        .file_type()
        .is_char_device());
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(upper.join("d"), "trusted.overlay.opaque", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"y");
    let m = stevedore_types::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("lowerdir={}", lower.display()),
            format!("upperdir={}", upper.display()),
            format!("workdir={}", work.display()),
        ],
    };
    let g = stevedore_sys::mount::MountGuard::mount(&[m], &merged).unwrap();
    assert_eq!(listing(&merged), ["d", "keep"]);
    assert_eq!(listing(&merged.join("d")), ["z"]);
    g.release().unwrap();
}

#[test]
fn keeps_ownership_modes_links_devices_xattrs_and_times() {
    let sb = Sandbox::new();
    let mut t = Tar::new();
    t.dir("bin");
    t.raw("bin/su", tar::EntryType::Regular, b"suid", "", 0o4755);
    t.hardlink_mode("bin/su-link", "bin/su", 0o4755);
    t.symlink("bin/sh", "busybox");
    t.raw("dev-null", tar::EntryType::Char, b"", "", 0o666);
    t.raw("fifo", tar::EntryType::Fifo, b"", "", 0o600);
    // ownership and an xattr through PAX on one file
    let mut h = tar::Header::new_gnu();
    h.set_path("owned").unwrap();
    h.set_size(2);
    h.set_mode(0o640);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mtime(1_500_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    t.0.append_pax_extensions([
        ("SCHILY.xattr.user.note", b"hello".as_slice()),
        ("mtime", b"1500000000.25".as_slice()),
    ])
    .unwrap();
    t.0.append(&h, b"ok".as_slice()).unwrap();
    // the char device needs major/minor: rewrite via a proper header
    let mut d = tar::Header::new_gnu();
    d.set_path("dev-zero").unwrap();
    d.set_uid(0);
    d.set_gid(0);
    d.set_mtime(0);
    d.set_entry_type(tar::EntryType::Char);
    d.set_mode(0o666);
    d.set_device_major(1).unwrap();
    d.set_device_minor(5).unwrap();
    d.set_size(0);
    d.set_cksum();
    t.0.append(&d, std::io::empty()).unwrap();
    let applied = apply(&sb.root, t.bytes().as_slice(), WhiteoutMode::Delete).unwrap();
    assert!(applied.size > 0);
    let r = &sb.root;
    let su = fs::metadata(r.join("bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(
        su.ino(),
        fs::metadata(r.join("bin/su-link")).unwrap().ino(),
        "hardlink"
    );
    assert_eq!(
        fs::read_link(r.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    let z = fs::metadata(r.join("dev-zero")).unwrap();
    assert!(z.file_type().is_char_device());
    assert_eq!(
        (rustix::fs::major(z.rdev()), rustix::fs::minor(z.rdev())),
        (1, 5)
    );
    assert!(fs::metadata(r.join("fifo")).unwrap().file_type().is_fifo());
    let o = fs::metadata(r.join("owned")).unwrap();
    assert_eq!((o.uid(), o.gid(), o.mode() & 0o7777), (1234, 4321, 0o640));
    assert_eq!((o.mtime(), o.mtime_nsec()), (1_500_000_000, 250_000_000));
    let mut v = [0u8; 16];
    let n = rustix::fs::getxattr(r.join("owned"), "user.note", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"hello");
    assert_eq!(
        fs::metadata(r.join("bin")).unwrap().mtime(),
        1_600_000_000,
        "dir mtime set after its contents"
    );
}

#[test]
fn digest_covers_the_whole_uncompressed_stream() {
    let sb = Sandbox::new();
    let tar = base_layer();
    let applied = apply(&sb.root, tar.as_slice(), WhiteoutMode::Delete).unwrap();
    let mut h = stevedore_diff::Hashing::new(std::io::sink());
    std::io::copy(&mut tar.as_slice(), &mut h).unwrap();
    let (digest, _, _) = h.finish();
    assert_eq!((applied.diff_id, applied.size), (digest, tar.len() as u64));
}

#[test]
fn applies_gzip_and_zstd_layers_by_media_type() {
    for (mt, c) in [
        (
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::Zstd,
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        (
            "application/vnd.oci.image.layer.v1.tar",
            Compression::Uncompressed,
        ),
    ] {
        assert_eq!(Compression::of_media_type(mt).unwrap(), c);
        let sb = Sandbox::new();
        let tar = base_layer();
        let mut blob = Vec::new();
        {
            let mut w = stevedore_diff::compress(c, &mut blob).unwrap();
            std::io::Write::write_all(&mut w, &tar).unwrap();
            w.finish_stream().unwrap();
        }
        let m = stevedore_types::Mount {
            kind: "bind".into(),
            source: sb.root.display().to_string(),
            target: String::new(),
            options: vec!["rw".into(), "rbind".into()],
        };
        let applied =
            stevedore_diff::mounts::apply_to_mounts(&[m], mt, blob.as_slice(), &sb.root).unwrap();
        assert_eq!(applied.size, tar.len() as u64, "{mt}");
        assert_eq!(fs::read_to_string(sb.root.join("d/y")).unwrap(), "y");
    }
    assert_eq!(
        Compression::of_media_type("text/plain").unwrap_err().kind,
        ErrorKind::NotImplemented
    );
}

#[test]
fn compare_then_apply_reproduces_the_upper_tree() {
    let sb = Sandbox::new();
    let (lower, upper, target) = (
        sb.root.join("lower"),
        sb.root.join("upper"),
        sb.root.join("target"),
    );
    for d in [&lower, &upper, &target] {
        fs::create_dir(d).unwrap();
    }
    apply(&lower, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    apply(&target, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    stevedore_snapshots_copy(&lower, &upper);
    fs::remove_file(upper.join("a")).unwrap();
    fs::remove_dir_all(upper.join("gone")).unwrap();
    fs::write(upper.join("d/x"), "changed").unwrap();
    fs::write(upper.join("new"), "N").unwrap();
    fs::hard_link(upper.join("new"), upper.join("new-link")).unwrap();
    std::os::unix::fs::symlink("keep", upper.join("ln")).unwrap();
    let mut tar = Vec::new();
    let w = compare(&lower, &upper, &mut tar).unwrap();
    assert_eq!(w.size, tar.len() as u64);
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(tar.as_slice());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        names.push(e.path().unwrap().display().to_string());
        let mut s = Vec::new();
        e.read_to_end(&mut s).unwrap();
    }
    assert!(names.contains(&".wh.a".to_string()), "{names:?}");
    assert!(names.contains(&".wh.gone".to_string()), "{names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("gone/")),
        "only the topmost deletion: {names:?}"
    );
    assert!(
        !names.contains(&"keep".to_string()),
        "unchanged files are not carried: {names:?}"
    );
    apply(&target, tar.as_slice(), WhiteoutMode::Delete).unwrap();
    let mut again = Vec::new();
    compare(&target, &upper, &mut again).unwrap();
    let count = tar::Archive::new(again.as_slice())
        .entries()
        .unwrap()
        .count();
    assert!(
        count <= 2,
        "only directory times may differ after the round trip ({count} entries)"
    );
    assert_eq!(fs::read_to_string(target.join("d/x")).unwrap(), "changed");
    assert_eq!(
        fs::metadata(target.join("new")).unwrap().ino(),
        fs::metadata(target.join("new-link")).unwrap().ino()
    );
    assert!(!target.join("a").exists() && !target.join("gone").exists());
}

/// `cp -a` for the test's lower -> upper copy.
fn stevedore_snapshots_copy(from: &Path, to: &Path) {
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn applies_archives_written_by_gnu_tar() {
    let sb = Sandbox::new();
    let src = sb.root.join("src");
    let out = sb.root.join("out");
    let deep = src
        .join("a".repeat(60))
        .join("b".repeat(60))
        .join("c".repeat(60));
    fs::create_dir_all(&deep).unwrap();
    fs::create_dir(&out).unwrap();
    fs::write(deep.join("long-named-file"), "deep").unwrap();
    fs::write(src.join("f"), "f").unwrap();
    fs::hard_link(src.join("f"), src.join("g")).unwrap();
    std::os::unix::fs::symlink("f", src.join("s")).unwrap();
    rustix::fs::setxattr(
        src.join("f"),
        "user.k",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    let o = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--format=posix", "-C"])
        .arg(&src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    apply(&out, o.stdout.as_slice(), WhiteoutMode::Delete).unwrap();
    let mut diff = Vec::new();
    compare(&src, &out, &mut diff).unwrap();
    let mut changed = Vec::new();
    for e in tar::Archive::new(diff.as_slice()).entries().unwrap() {
        let e = e.unwrap();
        if e.header().entry_type() != tar::EntryType::Directory {
            changed.push(e.path().unwrap().display().to_string());
        }
    }
    assert!(
        changed.is_empty(),
        "applied tree differs from the source: {changed:?}"
    );
    let mut v = [0u8; 4];
    let n = rustix::fs::getxattr(out.join("f"), "user.k", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"v");
    assert_eq!(
        fs::metadata(out.join("f")).unwrap().ino(),
        fs::metadata(out.join("g")).unwrap().ino()
    );
}

#[test]
fn overlay_apply_gives_implicit_parents_their_lower_attributes() {
    let sb = Sandbox::new();
    let (lower, upper, work, merged) = (
        sb.root.join("lower"),
        sb.root.join("upper"),
        sb.root.join("work"),
        sb.root.join("merged"),
    );
    for d in [&lower, &upper, &work, &merged] {
        fs::create_dir(d).unwrap();
    }
    fs::create_dir(lower.join("etc")).unwrap();
    fs::write(lower.join("etc/old"), "o").unwrap();
    std::os::unix::fs::chown(lower.join("etc"), Some(1234), Some(1234)).unwrap();
    fs::set_permissions(lower.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
    let m = stevedore_types::Mount {
        kind: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={}", lower.display()),
        ],
    };
    // the layer has etc/new and a whiteout for etc/old but no entry for etc
    let tar = Tar::new()
        .file("etc/new", "n")
        .file("etc/.wh.old", "")
        .bytes();
    stevedore_diff::mounts::apply_to_mounts(
        std::slice::from_ref(&m),
        "application/vnd.oci.image.layer.v1.tar",
        tar.as_slice(),
        &sb.root,
    )
    .unwrap();
    let e = fs::metadata(upper.join("etc")).unwrap();
    assert_eq!((e.uid(), e.mode() & 0o7777), (1234, 0o750));
    let g = stevedore_sys::mount::MountGuard::mount(&[m], &merged).unwrap();
    assert_eq!(listing(&merged.join("etc")), ["new"]);
    let e = fs::metadata(merged.join("etc")).unwrap();
    assert_eq!((e.uid(), e.mode() & 0o7777), (1234, 0o750));
    g.release().unwrap();
}

#[test]
fn implicit_parents_applied_without_lowers_inherit_once_stacked() {
    let sb = Sandbox::new();
    let (lower, upper) = (sb.root.join("lower"), sb.root.join("upper"));
    for d in [&lower, &upper] {
        fs::create_dir(d).unwrap();
    }
    for d in ["etc", "etc/deep", "carried"] {
        fs::create_dir(lower.join(d)).unwrap();
        std::os::unix::fs::chown(lower.join(d), Some(1234), Some(1234)).unwrap();
        fs::set_permissions(lower.join(d), fs::Permissions::from_mode(0o750)).unwrap();
    }
    // etc, etc/deep and etc/deep/new-dir are implied by the file; carried/
    // is implied first, then carried by the layer with its own attributes
    let tar = Tar::new()
        .file("etc/deep/new-dir/f", "n")
        .file("carried/g", "g")
        .dir("carried")
        .bytes();
    let applied = stevedore_diff::apply(
        &upper,
        tar.as_slice(),
        stevedore_diff::WhiteoutMode::Overlay,
    )
    .unwrap();
    assert_eq!(
        applied.implicit_dirs,
        ["etc", "etc/deep", "etc/deep/new-dir"].map(std::path::PathBuf::from)
    );
    let attrs = |p: &str| {
        let m = fs::metadata(upper.join(p)).unwrap();
        (m.uid(), m.mode() & 0o7777)
    };
    assert_eq!(attrs("etc/deep"), (0, 0o755), "defaults before stacking");
    let carried = attrs("carried");
    stevedore_diff::inherit_implicit_dirs(
        &upper,
        &applied.implicit_dirs,
        std::slice::from_ref(&lower),
    )
    .unwrap();
    assert_eq!(attrs("etc"), (1234, 0o750));
    assert_eq!(attrs("etc/deep"), (1234, 0o750));
    // not in any lower layer: the defaults; carried by the layer: its own
    assert_eq!(attrs("etc/deep/new-dir"), (0, 0o755));
    assert_eq!(attrs("carried"), carried);
    // a directory gone since is skipped
    fs::remove_dir_all(upper.join("etc/deep/new-dir")).unwrap();
    stevedore_diff::inherit_implicit_dirs(&upper, &applied.implicit_dirs, &[lower]).unwrap();
}

#[test]
fn a_hardlink_entry_applies_its_owner_mode_and_times_to_the_shared_file_as_containerd() {
    let sb = Sandbox::new();
    let mut t = Tar::new();
    t.raw("f", tar::EntryType::Regular, b"data", "", 0o600);
    t.symlink("s", "f");
    // containerd's createTarFile: Lchown, xattrs, lchmod (not on a
    // symlink), chtimes (no follow) for a TypeLink entry too
    let mut h = tar::Header::new_gnu();
    h.set_path("g").unwrap();
    h.set_link_name("f").unwrap();
    h.set_entry_type(tar::EntryType::Link);
    h.set_uid(1234);
    h.set_gid(4321);
    h.set_mode(0o751);
    h.set_mtime(1_400_000_000);
    h.set_size(0);
    h.set_cksum();
    t.0.append(&h, std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_path("t").unwrap();
    h.set_link_name("s").unwrap();
    h.set_entry_type(tar::EntryType::Link);
    h.set_uid(77);
    h.set_gid(88);
    h.set_mode(0o600);
    h.set_mtime(1_300_000_000);
    h.set_size(0);
    h.set_cksum();
    t.0.append(&h, std::io::empty()).unwrap();
    apply(&sb.root, t.bytes().as_slice(), WhiteoutMode::Delete).unwrap();
    let r = &sb.root;
    let f = fs::metadata(r.join("f")).unwrap();
    let g = fs::metadata(r.join("g")).unwrap();
    assert_eq!(f.ino(), g.ino(), "one inode");
    assert_eq!(
        (f.uid(), f.gid(), f.mode() & 0o7777, f.mtime()),
        (1234, 4321, 0o751, 1_400_000_000),
        "the link entry's metadata is the file's"
    );
    assert_eq!(fs::read(r.join("g")).unwrap(), b"data");
    // a hard link to a symlink is the symlink: owner and times, no mode
    let s = fs::symlink_metadata(r.join("s")).unwrap();
    let l = fs::symlink_metadata(r.join("t")).unwrap();
    assert!(l.file_type().is_symlink());
    assert_eq!(s.ino(), l.ino());
    assert_eq!((l.uid(), l.gid(), l.mtime()), (77, 88, 1_300_000_000));
    assert_eq!(fs::read_link(r.join("t")).unwrap(), Path::new("f"));
    let f = fs::metadata(r.join("f")).unwrap();
    assert_eq!(
        (f.uid(), f.mode() & 0o7777, f.mtime()),
        (1234, 0o751, 1_400_000_000),
        "the symlink's target untouched"
    );
}

/// Diff.Compare's layers go back through Diff.Apply onto an overlay upper
/// directory (containerd 2.x's Go client: `DiffService().Compare` then
/// `Apply`, as docker commit and BuildKit do): its whiteouts carry owner
/// 0:0, and a whiteout whose numeric fields are blank (NULs, as some tar
/// writers leave them) reads as 0 like Go's archive/tar reads it.
#[test]
fn compared_whiteouts_and_blank_numeric_fields_apply_in_overlay_mode() {
    let sb = Sandbox::new();
    let (lower, upper, target) = (
        sb.root.join("lower"),
        sb.root.join("upper"),
        sb.root.join("target"),
    );
    for d in [&lower, &upper, &target] {
        fs::create_dir(d).unwrap();
    }
    apply(&lower, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
    stevedore_snapshots_copy(&lower, &upper);
    fs::remove_file(upper.join("a")).unwrap();
    let mut tar = Vec::new();
    compare(&lower, &upper, &mut tar).unwrap();
    for e in tar::Archive::new(tar.as_slice()).entries().unwrap() {
        let e = e.unwrap();
        if e.path().unwrap().to_str() == Some(".wh.a") {
            assert_eq!(e.header().uid().unwrap(), 0);
            assert_eq!(e.header().gid().unwrap(), 0);
        }
    }
    apply(&target, tar.as_slice(), WhiteoutMode::Overlay).unwrap();
    let st = fs::symlink_metadata(target.join("a")).unwrap();
    assert!(st.file_type().is_char_device() && st.rdev() == 0);

    // a whiteout and a file with every numeric field but size left blank
    let mut b = tar::Builder::new(Vec::new());
    for (path, size) in [(".wh.d", 0usize), ("blank", 1)] {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size as u64);
        let o = h.as_old_mut();
        o.mode.fill(0);
        o.uid.fill(0);
        o.gid.fill(0);
        o.mtime.fill(0);
        h.set_cksum();
        b.append(&h, &b"x"[..size]).unwrap();
    }
    let blank = b.into_inner().unwrap();
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Delete] {
        let dir = sb.root.join(format!("blank-{mode:?}"));
        fs::create_dir(&dir).unwrap();
        apply(&dir, base_layer().as_slice(), WhiteoutMode::Delete).unwrap();
        apply(&dir, blank.as_slice(), mode).unwrap();
        let md = fs::symlink_metadata(dir.join("blank")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 0, 0));
    }
}
