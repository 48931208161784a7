//! Records that reference other objects: images (their content tree),
//! containers (their snapshot and image) and leases (their resources).

use crate::content::ContentState;
use crate::snapshots::SnapState;
use crate::{Action, Collector, Severity};
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use stevedore_images::content::{Info, Provider};
use stevedore_images::handlers::children;
use stevedore_images::mediatypes::{is_index_type, is_manifest_type};
use stevedore_metadata::Db;
use stevedore_types::filters::Filter;
use stevedore_types::{Descriptor, Digest, Error, Result};

/// Content as one namespace sees it: a record and an intact blob.
struct NsProvider<'a> {
    content: &'a ContentState,
    ns: &'a str,
}

impl NsProvider<'_> {
    fn present(&self, d: &Digest) -> bool {
        self.content.present(self.ns, d)
    }
}

impl Provider for NsProvider<'_> {
    fn info(&self, digest: &Digest) -> Result<Info> {
        if !self.present(digest) {
            return Err(Error::not_found(format!("content {digest}: not found")));
        }
        let p = self.content.blob_path(digest);
        let md = std::fs::metadata(&p)
            .map_err(|e| Error::from(e).context(format!("stat {}", p.display())))?;
        Ok(Info {
            digest: digest.clone(),
            size: md.len() as i64,
            labels: Default::default(),
        })
    }

    fn reader(&self, desc: &Descriptor, offset: u64) -> Result<Box<dyn Read + Send>> {
        self.info(&desc.digest)?;
        let p = self.content.blob_path(&desc.digest);
        let mut f = std::fs::File::open(&p)
            .map_err(|e| Error::from(e).context(format!("open {}", p.display())))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::from(e).context(format!("seek {}", p.display())))?;
        Ok(Box::new(f))
    }
}

/// Index nesting deeper than this is reported rather than followed.
const MAX_DEPTH: usize = 8;

/// Why an image's content tree is incomplete: what the image keeps alive
/// is missing. An image keeps what garbage collection keeps for it: its
/// target and, from there, the children each blob's
/// `containerd.io/gc.ref.content*` labels name.
///
/// - An index keeps the manifests its labels name: clients label those of
///   the platforms they chose (by default the host's: `ctr images import`,
///   pull), each must be present and whole. Other manifests of the index are
///   not the image's: one may be present without its config or layers (a
///   crashed import or pull holds it under its lease; or it waits for the
///   next collection), which containerd's `images check` does not look at
///   either, so it is not followed. An index whose labels name none of its
///   manifests (written without labels) needs at least one present
///   manifest, and each present one is followed.
/// - A manifest needs its config and every layer.
fn missing(p: &NsProvider, desc: &Descriptor, depth: usize, out: &mut Vec<String>) {
    if !p.present(&desc.digest) {
        out.push(format!("{} {} is missing", word(desc), desc.digest));
        return;
    }
    if depth > MAX_DEPTH {
        out.push(format!(
            "index nesting deeper than {MAX_DEPTH} at {}",
            desc.digest
        ));
        return;
    }
    let kids = match children(p, desc) {
        Ok(k) => k,
        Err(e) => {
            out.push(format!("{} {} is unreadable: {e}", word(desc), desc.digest));
            return;
        }
    };
    if is_index_type(&desc.media_type) {
        let named = p.content.content_refs(p.ns, &desc.digest);
        let kept: Vec<&Descriptor> = kids
            .iter()
            .filter(|d| named.is_some_and(|n| n.contains(&d.digest.to_string())))
            .collect();
        if !kept.is_empty() {
            for d in kept {
                missing(p, d, depth + 1, out);
            }
            return;
        }
        let present: Vec<&Descriptor> = kids.iter().filter(|d| p.present(&d.digest)).collect();
        if present.is_empty() && !kids.is_empty() {
            out.push(format!(
                "index {}: none of its {} manifests is present",
                desc.digest,
                kids.len()
            ));
        }
        for d in present {
            missing(p, d, depth + 1, out);
        }
    } else if is_manifest_type(&desc.media_type) {
        for (i, d) in kids.iter().enumerate() {
            if !p.present(&d.digest) {
                let what = if i == 0 { "config" } else { "layer" };
                out.push(format!(
                    "{what} {} of manifest {} is missing",
                    d.digest, desc.digest
                ));
            }
        }
    }
}

fn word(d: &Descriptor) -> &'static str {
    if is_index_type(&d.media_type) {
        "index"
    } else if is_manifest_type(&d.media_type) {
        "manifest"
    } else {
        "blob"
    }
}

pub(crate) fn check(
    db: &Arc<Db>,
    content: &ContentState,
    snaps: &SnapState,
    c: &mut Collector,
) -> Result<()> {
    for ns in db.list_namespaces()? {
        let ns = ns.name;
        let images = db.list_images(&ns, &[])?;
        c.count("images", images.len());
        let p = NsProvider {
            content,
            ns: ns.as_str(),
        };
        for img in &images {
            let mut why = Vec::new();
            missing(&p, &img.target, 0, &mut why);
            if !why.is_empty() {
                c.add(
                    "image-incomplete",
                    Severity::Problem,
                    format!("{ns}/{}", img.name),
                    why.join("; "),
                    "remove the image record",
                    Some(Action::RemoveImage {
                        namespace: ns.clone(),
                        name: img.name.clone(),
                    }),
                );
            }
        }
        let containers = db.list_containers(&ns, &[])?;
        c.count("containers", containers.len());
        for ctr in &containers {
            let key = format!("{ns}/{}", ctr.snapshot_key);
            if ctr.snapshot_key.is_empty() || snaps.exists(&ctr.snapshotter, &key) {
                // sound
            } else if snaps.removed(&ctr.snapshotter, &key) {
                // Nothing in the daemon removes a container's snapshot (the
                // GC keeps it): a client did. containerd's own
                // `Container.Delete(WithSnapshotCleanup)` (`ctr containers
                // rm`) removes the snapshot first and the record second, so
                // a crash between the two leaves this; deleting the
                // container again completes (a missing snapshot is ignored).
                c.add(
                    "container-snapshot-removed",
                    Severity::Leftover,
                    format!("{ns}/{}", ctr.id),
                    format!(
                        "its snapshot {:?} (snapshotter {}) was removed, as a container delete does before removing the record (a crash between the two); delete the container again",
                        ctr.snapshot_key, ctr.snapshotter
                    ),
                    "remove the container record",
                    Some(Action::RemoveContainer {
                        namespace: ns.clone(),
                        id: ctr.id.clone(),
                    }),
                );
            } else {
                c.add(
                    "container-snapshot-missing",
                    Severity::Problem,
                    format!("{ns}/{}", ctr.id),
                    format!(
                        "its snapshot {:?} (snapshotter {}) does not exist or is broken",
                        ctr.snapshot_key, ctr.snapshotter
                    ),
                    "remove the container record",
                    Some(Action::RemoveContainer {
                        namespace: ns.clone(),
                        id: ctr.id.clone(),
                    }),
                );
            }
            if !ctr.image.is_empty() && !images.iter().any(|i| i.name == ctr.image) {
                c.add(
                    "container-image-missing",
                    Severity::Leftover,
                    format!("{ns}/{}", ctr.id),
                    format!(
                        "its image {:?} was removed (containerd allows this; reported only)",
                        ctr.image
                    ),
                    "",
                    None,
                );
            }
        }
        let leases = db.list_leases(&ns, &Filter::default())?;
        c.count("leases", leases.len());
        for lease in &leases {
            let resources = db.list_lease_resources(&ns, &lease.id)?;
            c.count("lease resources", resources.len());
            for r in resources {
                let exists = match r.kind.as_str() {
                    "content" => {
                        r.id.parse::<Digest>()
                            .is_ok_and(|d| content.present(&ns, &d))
                    }
                    "ingests" => content.ingests.contains(&(ns.clone(), r.id.clone())),
                    k => match k.strip_prefix("snapshots/") {
                        Some(s) => snaps.exists(s, &format!("{ns}/{}", r.id)),
                        None => false,
                    },
                };
                if !exists {
                    c.add(
                        "lease-reference-dangling",
                        Severity::Leftover,
                        format!("{ns}/lease {}", lease.id),
                        format!(
                            "holds {} {:?}, which does not exist (harmless; gone with the lease)",
                            r.kind, r.id
                        ),
                        "remove the reference from the lease",
                        Some(Action::RemoveLeaseResource {
                            namespace: ns.clone(),
                            lease: lease.id.clone(),
                            resource: r.clone(),
                        }),
                    );
                }
            }
        }
    }
    Ok(())
}
