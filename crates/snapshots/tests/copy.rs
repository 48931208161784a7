//! The native snapshotter's copy keeps everything a layer can carry.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use stevedore_snapshots::copy::copy_tree;

fn set_mtime(p: &Path, secs: i64) {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: 7,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

#[test]
fn copy_keeps_owners_modes_xattrs_links_devices_and_times() {
    let d = tempfile::tempdir().unwrap();
    let (src, dst) = (d.path().join("src"), d.path().join("dst"));
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::create_dir(&dst).unwrap();
    fs::write(src.join("dir/suid"), "s").unwrap();
    std::os::unix::fs::chown(src.join("dir/suid"), Some(1234), Some(4321)).unwrap();
    fs::set_permissions(src.join("dir/suid"), fs::Permissions::from_mode(0o4750)).unwrap();
    rustix::fs::setxattr(
        src.join("dir/suid"),
        "user.note",
        b"hi",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::hard_link(src.join("dir/suid"), src.join("link")).unwrap();
    std::os::unix::fs::symlink("dir/suid", src.join("sym")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        src.join("null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    )
    .unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        src.join("fifo"),
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .unwrap();
    set_mtime(&src.join("dir/suid"), 1_000_000_000);
    set_mtime(&src.join("sym"), 1_100_000_000);
    set_mtime(&src.join("dir"), 1_200_000_000);

    copy_tree(&src, &dst).unwrap();

    let f = fs::symlink_metadata(dst.join("dir/suid")).unwrap();
    assert_eq!((f.uid(), f.gid(), f.mode() & 0o7777), (1234, 4321, 0o4750));
    assert_eq!((f.mtime(), f.mtime_nsec()), (1_000_000_000, 7));
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(dst.join("dir/suid"), "user.note", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"hi");
    assert_eq!(
        fs::symlink_metadata(dst.join("link")).unwrap().ino(),
        f.ino(),
        "hardlink kept"
    );
    assert_eq!(
        fs::read_link(dst.join("sym")).unwrap(),
        Path::new("dir/suid")
    );
    assert_eq!(
        fs::symlink_metadata(dst.join("sym")).unwrap().mtime(),
        1_100_000_000
    );
    let n = fs::symlink_metadata(dst.join("null")).unwrap();
    assert!(n.file_type().is_char_device());
    assert_eq!(n.rdev(), rustix::fs::makedev(1, 3));
    assert!(fs::symlink_metadata(dst.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fs::symlink_metadata(dst.join("dir")).unwrap().mtime(),
        1_200_000_000,
        "dir time after contents"
    );
}
