//! Deterministic sample content shared by the corpus generator
//! (`examples/make_corpus.rs`) and the targets: a small one-layer image
//! (layer, config, manifest, index) whose digests the JSON seeds refer to,
//! and builders for hostile layer tars.

use stevedore_images::content::digest_of;
use stevedore_images::mediatypes::*;
use stevedore_types::Descriptor;

/// mtime of every sample tar entry (2023-11-14T22:13:20Z, as bench/images).
pub const MTIME: u64 = 1_700_000_000;

/// One tar entry to build, with raw control over the name (so `..` and
/// absolute names are possible, which `tar::Builder` refuses).
#[derive(Debug, Clone)]
pub enum Entry {
    Dir(&'static str),
    File(&'static str, &'static [u8]),
    Symlink(&'static str, &'static str),
    Hardlink(&'static str, &'static str),
    /// A character device (major, minor): `0,0` is an overlay whiteout.
    Char(&'static str, u32, u32),
    Fifo(&'static str),
}

fn header(name: &str, kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    // raw name: no validation, so hostile names survive
    let raw = name.as_bytes();
    let n = raw.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&raw[..n]);
    h
}

fn set_link(h: &mut tar::Header, target: &str) {
    let raw = target.as_bytes();
    let n = raw.len().min(100);
    h.as_old_mut().linkname[..n].copy_from_slice(&raw[..n]);
}

/// An uncompressed tar of `entries`, in order.
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, body): (tar::Header, &[u8]) = match e {
            Entry::Dir(n) => (header(n, tar::EntryType::Directory, 0, 0o755), &[]),
            Entry::File(n, data) => (
                header(n, tar::EntryType::Regular, data.len() as u64, 0o644),
                data,
            ),
            Entry::Symlink(n, t) => {
                let mut h = header(n, tar::EntryType::Symlink, 0, 0o777);
                set_link(&mut h, t);
                (h, &[])
            }
            Entry::Hardlink(n, t) => {
                let mut h = header(n, tar::EntryType::Link, 0, 0o644);
                set_link(&mut h, t);
                (h, &[])
            }
            Entry::Char(n, maj, min) => {
                let mut h = header(n, tar::EntryType::Char, 0, 0o600);
                h.set_device_major(*maj).expect("ustar device");
                h.set_device_minor(*min).expect("ustar device");
                (h, &[])
            }
            Entry::Fifo(n) => (header(n, tar::EntryType::Fifo, 0, 0o600), &[]),
        };
        h.set_cksum();
        b.append(&h, body).expect("append to in-memory tar");
    }
    b.into_inner().expect("finish in-memory tar")
}

/// The sample image's only layer.
pub fn layer() -> Vec<u8> {
    tar_of(&[
        Entry::Dir("bin/"),
        Entry::File("bin/hello", b"#!/bin/sh\necho hello\n"),
        Entry::Symlink("bin/sh", "hello"),
        Entry::Dir("etc/"),
        Entry::File("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
        Entry::Hardlink("etc/passwd-", "etc/passwd"),
    ])
}

/// The sample image's blobs, root last: layer, config, manifest, index.
pub fn image() -> Vec<(Descriptor, Vec<u8>)> {
    let layer = layer();
    let layer_desc = Descriptor::new(OCI_LAYER, digest_of(&layer), layer.len() as i64);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["PATH=/bin"],"Cmd":["/bin/sh"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}},"history":[{{"created":"2023-11-14T22:13:20Z","created_by":"fuzz sample"}}]}}"#,
        layer_desc.digest
    )
    .into_bytes();
    let config_desc = Descriptor::new(OCI_CONFIG, digest_of(&config), config.len() as i64);
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":{}}},"layers":[{{"mediaType":"{OCI_LAYER}","digest":"{}","size":{}}}]}}"#,
        config_desc.digest, config_desc.size, layer_desc.digest, layer_desc.size
    )
    .into_bytes();
    let manifest_desc = Descriptor::new(OCI_MANIFEST, digest_of(&manifest), manifest.len() as i64);
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"architecture":"amd64","os":"linux"}},"annotations":{{"io.containerd.image.name":"docker.io/library/sample:latest","org.opencontainers.image.ref.name":"latest"}}}}]}}"#,
        manifest_desc.digest, manifest_desc.size
    )
    .into_bytes();
    let index_desc = Descriptor::new(OCI_INDEX, digest_of(&index), index.len() as i64);
    vec![
        (layer_desc, layer),
        (config_desc, config),
        (manifest_desc, manifest),
        (index_desc, index),
    ]
}
