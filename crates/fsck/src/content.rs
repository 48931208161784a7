//! Blobs, ingests and content records (layout: `stevedore_content::local`
//! and `stevedore_metadata::content`).

use crate::{Action, Collector, Severity, CONTENT_DIR};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stevedore_content::{Hasher, Store};
use stevedore_metadata::Db;
use stevedore_types::filters::Filter;
use stevedore_types::{Algorithm, Digest, Error, Result};

/// What the other checks need to know about content.
pub(crate) struct ContentState {
    /// Blob files whose bytes match their names.
    pub intact: BTreeSet<Digest>,
    /// Content records per namespace.
    pub records: BTreeMap<String, BTreeSet<Digest>>,
    /// The content each record's `containerd.io/gc.ref.content*` labels name
    /// (what garbage collection keeps because that record is kept), for
    /// records that name any.
    pub content_refs: HashMap<(String, Digest), BTreeSet<String>>,
    /// Ingest records, `(namespace, ref)`.
    pub ingests: BTreeSet<(String, String)>,
    /// Where blobs live.
    pub blobs_dir: PathBuf,
}

impl ContentState {
    /// True when `d` is visible and intact in namespace `ns`.
    pub fn present(&self, ns: &str, d: &Digest) -> bool {
        self.intact.contains(d) && self.records.get(ns).is_some_and(|r| r.contains(d))
    }

    /// The digests (as written in the labels) that `d`'s record in `ns`
    /// names with `containerd.io/gc.ref.content*` labels.
    pub fn content_refs(&self, ns: &str, d: &Digest) -> Option<&BTreeSet<String>> {
        self.content_refs.get(&(ns.to_string(), d.clone()))
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir.join(d.algorithm().as_str()).join(d.hex())
    }
}

fn io(op: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::from(e).context(op)
}

fn algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "sha256" => Some(Algorithm::Sha256),
        "sha512" => Some(Algorithm::Sha512),
        _ => None,
    }
}

/// Hash a file while streaming it.
fn hash_file(path: &Path, alg: Algorithm) -> Result<(Digest, u64)> {
    let mut f = fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if k == 0 {
            return Ok((h.digest(), n));
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
}

fn read_dir(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(io(format!("read {}", dir.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::from(e).context(format!("read {}", dir.display()))),
    }
}

pub(crate) fn check(root: &Path, db: &Arc<Db>, c: &mut Collector) -> Result<ContentState> {
    let store = root.join(CONTENT_DIR);
    let blobs_dir = store.join("blobs");
    // records of every namespace
    let mut records: BTreeMap<String, BTreeSet<Digest>> = BTreeMap::new();
    let mut sizes: HashMap<(String, Digest), i64> = HashMap::new();
    let mut content_refs: HashMap<(String, Digest), BTreeSet<String>> = HashMap::new();
    for ns in db.list_namespaces()? {
        let infos = db.content(&ns.name, None).list(&Filter::default())?;
        c.count("content records", infos.len());
        let set = records.entry(ns.name.clone()).or_default();
        for i in infos {
            sizes.insert((ns.name.clone(), i.digest.clone()), i.size);
            let mut refs = BTreeSet::new();
            stevedore_metadata::gc::label_refs(&ns.name, &i.labels, &mut |n| {
                if n.kind == stevedore_metadata::gc::CONTENT {
                    refs.insert(n.key);
                }
            });
            if !refs.is_empty() {
                content_refs.insert((ns.name.clone(), i.digest.clone()), refs);
            }
            set.insert(i.digest);
        }
    }
    let holders = |d: &Digest| -> Vec<String> {
        records
            .iter()
            .filter(|(_, s)| s.contains(d))
            .map(|(ns, _)| ns.clone())
            .collect()
    };

    // blob files: each must hash to its name
    let mut intact = BTreeSet::new();
    let mut on_disk: HashMap<Digest, u64> = HashMap::new();
    for alg_dir in read_dir(&blobs_dir)? {
        let alg_name = alg_dir.file_name().to_string_lossy().into_owned();
        let Some(alg) = algorithm(&alg_name).filter(|_| alg_dir.path().is_dir()) else {
            c.add(
                "blob-stray",
                Severity::Problem,
                alg_dir.path().display().to_string(),
                "not a digest algorithm directory of the content store",
                "remove it",
                Some(Action::RemovePath(alg_dir.path())),
            );
            continue;
        };
        for ent in read_dir(&alg_dir.path())? {
            let path = ent.path();
            let name = ent.file_name().to_string_lossy().into_owned();
            let is_file = ent.file_type().map(|t| t.is_file()).unwrap_or(false);
            let digest = match Digest::new(alg, &name) {
                Ok(d) if is_file => d,
                _ => {
                    c.add(
                        "blob-stray",
                        Severity::Problem,
                        path.display().to_string(),
                        "not a blob (the name is no digest or it is not a regular file)",
                        "remove it",
                        Some(Action::RemovePath(path)),
                    );
                    continue;
                }
            };
            c.count("blobs", 1);
            match hash_file(&path, alg) {
                Ok((actual, size)) if actual == digest => {
                    intact.insert(digest.clone());
                    on_disk.insert(digest, size);
                }
                Ok((actual, _)) => {
                    let ns = holders(&digest);
                    c.add(
                        "blob-corrupt",
                        Severity::Problem,
                        digest.to_string(),
                        format!("content hashes to {actual}, not to its name"),
                        remove_blob_text(&ns),
                        Some(Action::RemoveBlob {
                            path,
                            digest,
                            namespaces: ns,
                        }),
                    );
                }
                Err(e) => {
                    let ns = holders(&digest);
                    c.add(
                        "blob-unreadable",
                        Severity::Problem,
                        digest.to_string(),
                        format!("cannot read: {e}"),
                        remove_blob_text(&ns),
                        Some(Action::RemoveBlob {
                            path,
                            digest,
                            namespaces: ns,
                        }),
                    );
                }
            }
        }
    }
    // records -> blobs
    for (ns, set) in &records {
        for d in set {
            let object = format!("{ns}/{d}");
            if !blobs_dir
                .join(d.algorithm().as_str())
                .join(d.hex())
                .exists()
            {
                c.add(
                    "content-record-missing-blob",
                    Severity::Problem,
                    object,
                    "content record names a blob that is not on disk",
                    "remove the record",
                    Some(Action::RemoveContentRecords {
                        digest: d.clone(),
                        namespaces: vec![ns.clone()],
                    }),
                );
            } else if let (Some(&have), Some(&want)) =
                (on_disk.get(d), sizes.get(&(ns.clone(), d.clone())))
            {
                if have as i64 != want {
                    c.add(
                        "content-record-size-mismatch",
                        Severity::Problem,
                        object,
                        format!("record says {want} bytes, the blob has {have}"),
                        "remove the record",
                        Some(Action::RemoveContentRecords {
                            digest: d.clone(),
                            namespaces: vec![ns.clone()],
                        }),
                    );
                }
            }
        }
    }
    // a shared ingest (opened on a blob already on disk) will commit that
    // file, and the collection keeps it for the ingest
    let shared: BTreeSet<String> = db
        .ingest_records()?
        .into_iter()
        .filter_map(|r| r.expected)
        .collect();
    for d in on_disk.keys() {
        if holders(d).is_empty() && !shared.contains(&d.to_string()) {
            c.add(
                "blob-unreferenced",
                Severity::Leftover,
                d.to_string(),
                "no namespace records this blob (garbage collection removes it)",
                "remove the blob",
                Some(Action::RemovePath(
                    blobs_dir.join(d.algorithm().as_str()).join(d.hex()),
                )),
            );
        }
    }

    // ingests
    let ingest_records = db.ingest_records()?;
    c.count("ingest records", ingest_records.len());
    let recorded: BTreeSet<String> = ingest_records
        .iter()
        .map(|r| stevedore_metadata::content::local_ingest_ref(&r.namespace, &r.reference))
        .collect();
    let mut local_refs = BTreeSet::new();
    for ent in read_dir(&store.join("ingest"))? {
        let path = ent.path();
        let name = ent.file_name().to_string_lossy().into_owned();
        c.count("ingests", 1);
        if !ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            c.add(
                "ingest-stray",
                Severity::Problem,
                path.display().to_string(),
                "not an ingest directory",
                "remove it",
                Some(Action::RemovePath(path)),
            );
            continue;
        }
        if name.starts_with(".tmp-") || !path.join("data").exists() {
            c.add(
                "ingest-incomplete",
                Severity::Leftover,
                path.display().to_string(),
                "an ingest whose creation or commit a crash interrupted (the content store removes it when it opens)",
                "remove it",
                Some(Action::RemovePath(path)),
            );
            continue;
        }
        match check_ingest(&path, &name) {
            Ok(reference) => {
                if !recorded.contains(&reference) {
                    c.add(
                        "ingest-unrecorded",
                        Severity::Leftover,
                        format!("ingest {reference:?}"),
                        "no ingest record names this local ingest (garbage collection removes it)",
                        "remove it",
                        Some(Action::RemovePath(path)),
                    );
                }
                local_refs.insert(reference);
            }
            Err(why) => c.add(
                "ingest-invalid",
                Severity::Problem,
                path.display().to_string(),
                why,
                "remove it",
                Some(Action::RemovePath(path)),
            ),
        }
    }
    let mut ingests = BTreeSet::new();
    for r in &ingest_records {
        let local = stevedore_metadata::content::local_ingest_ref(&r.namespace, &r.reference);
        let shared_ok = r
            .expected
            .as_ref()
            .and_then(|d| d.parse::<Digest>().ok())
            .is_some_and(|d| intact.contains(&d));
        if !local_refs.contains(&local) && !shared_ok {
            c.add(
                "ingest-record-dangling",
                Severity::Leftover,
                format!("{}/{}", r.namespace, r.reference),
                "ingest record without its local ingest (a crash between commit steps; garbage collection removes it when it expires or its lease goes)",
                "remove the record",
                Some(Action::RemoveIngestRecord {
                    namespace: r.namespace.clone(),
                    reference: r.reference.clone(),
                }),
            );
        }
        ingests.insert((r.namespace.clone(), r.reference.clone()));
    }
    Ok(ContentState {
        intact,
        records,
        content_refs,
        ingests,
        blobs_dir,
    })
}

fn remove_blob_text(ns: &[String]) -> String {
    if ns.is_empty() {
        "remove the blob".into()
    } else {
        format!(
            "remove the blob and its records in namespace(s) {}",
            ns.join(", ")
        )
    }
}

/// The ref of a sane ingest, or why it is not sane (what the store would
/// never clean or resume by itself).
fn check_ingest(dir: &Path, name: &str) -> std::result::Result<String, String> {
    let reference =
        fs::read_to_string(dir.join("ref")).map_err(|e| format!("cannot read its ref: {e}"))?;
    if reference.is_empty() {
        return Err("its ref is empty".into());
    }
    let want = stevedore_content::digest_of(reference.as_bytes());
    if want.hex() != name {
        return Err(format!(
            "directory name is not sha256 of its ref {reference:?} (the store cannot find it)"
        ));
    }
    let data = fs::metadata(dir.join("data")).map_err(|e| format!("cannot stat data: {e}"))?;
    if !data.is_file() {
        return Err("data is not a regular file".into());
    }
    if let Ok(total) = fs::read_to_string(dir.join("total")) {
        let total: i64 = total
            .trim()
            .parse()
            .map_err(|_| format!("unreadable total {total:?}"))?;
        if total > 0 && data.len() as i64 > total {
            return Err(format!(
                "holds {} bytes, more than its total {total}",
                data.len()
            ));
        }
    }
    if let Ok(expected) = fs::read_to_string(dir.join("expected")) {
        expected
            .trim()
            .parse::<Digest>()
            .map_err(|_| format!("unreadable expected digest {expected:?}"))?;
    }
    Ok(reference)
}
