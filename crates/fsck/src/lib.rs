//! `stevedore check`: an offline consistency check (and repair) of a
//! stevedored root, while the daemon is stopped.
//!
//! # What it reads
//! The layouts documented by their owners, under `<root>` (default
//! `/var/lib/stevedore`):
//! - `io.containerd.metadata.v1.bolt/meta.db` (`stevedore_metadata`):
//!   namespaces, content and ingest records, images, containers, leases;
//! - `io.containerd.content.v1.content/{blobs,ingest}`
//!   (`stevedore_content::local`);
//! - `io.containerd.snapshotter.v1.<name>/{metadata.db,snapshots/}`
//!   (`stevedore_snapshots::engine`), for every snapshotter that has a
//!   `metadata.db`.
//!
//! The databases are redb files that a running daemon holds locked: opening
//! them fails then, and the check stops with "stevedored is running on this
//! root; stop it first" rather than reading a moving target.
//!
//! # What it finds
//! Each finding names the object, says what is wrong, and what `--repair`
//! does about it. Findings have a [`Severity`]:
//! - [`Severity::Problem`]: corrupt data or a record the daemon cannot fix
//!   itself (a blob whose bytes do not hash to its name, a record naming a
//!   missing blob or snapshot directory, a broken snapshot parent chain, an
//!   image whose content is missing, a container whose snapshot is gone, an
//!   unusable ingest). The exit code of `stevedore check` is 1 when any exists.
//! - [`Severity::Leftover`]: what a crash legitimately leaves and the daemon
//!   removes itself, when its stores open or at the next garbage collection
//!   (temp ingests, blobs and ingests no record names, snapshot directories
//!   no record names, lease references to objects that are gone), and
//!   states containerd allows (a container whose image was removed).
//!   Reported, removed by `--repair` where removal makes sense, but not a
//!   failure.
//!
//! Without `repair` nothing is changed (the report says what would be
//! removed). With it, removals run in dependency order: broken snapshots
//! (children first), orphan snapshot directories, records (containers,
//! images, lease references, content, ingests), then files.

mod content;
mod records;
mod snapshots;

pub use snapshots::mount_points;

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stevedore_metadata::Db;
use stevedore_types::{Error, ErrorKind, Result};

/// Where the metadata database lives under a root.
pub const METADATA_DB: &str = "io.containerd.metadata.v1.bolt/meta.db";
/// The content store's plugin root under a root.
pub const CONTENT_DIR: &str = "io.containerd.content.v1.content";
/// Prefix of snapshotter plugin roots under a root.
pub const SNAPSHOTTER_PREFIX: &str = "io.containerd.snapshotter.v1.";

/// What to check.
#[derive(Debug, Clone)]
pub struct Options {
    /// The daemon's root directory.
    pub root: PathBuf,
    /// Remove what is corrupt or orphaned (otherwise a dry run).
    pub repair: bool,
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Corrupt data or a record the daemon cannot fix by itself.
    Problem,
    /// Left by a crash (the daemon removes it at start or at the next GC),
    /// or a state containerd allows.
    Leftover,
}

/// One thing found wrong.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// A stable kebab-case name (`blob-corrupt`, `snapshot-dir-missing`, ...).
    pub kind: &'static str,
    pub severity: Severity,
    /// The object: a digest, `<namespace>/<name>`, a path, ...
    pub object: String,
    /// What is wrong.
    pub detail: String,
    /// What `--repair` does about it ("" when it leaves it alone).
    pub repair: String,
    /// True once `--repair` did it.
    pub repaired: bool,
    /// Why `--repair` could not do it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_error: Option<String>,
    #[serde(skip)]
    action: Option<Action>,
}

/// What repair does for a finding.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    /// Remove a snapshot record (its directory is missing or its chain broken).
    RemoveSnapshot {
        snapshotter: String,
        key: String,
    },
    /// Remove directories no snapshot record names (the engine's cleanup).
    SnapshotCleanup {
        snapshotter: String,
    },
    RemoveContainer {
        namespace: String,
        id: String,
    },
    RemoveImage {
        namespace: String,
        name: String,
    },
    RemoveLeaseResource {
        namespace: String,
        lease: String,
        resource: stevedore_metadata::leases::Resource,
    },
    /// Remove a blob's records in these namespaces.
    RemoveContentRecords {
        digest: stevedore_types::Digest,
        namespaces: Vec<String>,
    },
    RemoveIngestRecord {
        namespace: String,
        reference: String,
    },
    /// Remove a blob file and its records in these namespaces.
    RemoveBlob {
        path: PathBuf,
        digest: stevedore_types::Digest,
        namespaces: Vec<String>,
    },
    /// Remove a file or a directory tree.
    RemovePath(PathBuf),
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub root: PathBuf,
    /// Objects examined, by kind (`blobs`, `content records`, `images`, ...).
    pub checked: BTreeMap<String, usize>,
    pub findings: Vec<Finding>,
    /// True when `--repair` was given (findings with `repaired` were removed).
    pub repair: bool,
}

impl Report {
    /// Findings of severity [`Severity::Problem`].
    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Problem)
    }

    /// Findings of severity [`Severity::Leftover`].
    pub fn leftovers(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Leftover)
    }

    /// True when no problem was found (leftovers allowed).
    pub fn is_clean(&self) -> bool {
        self.problems().next().is_none()
    }

    /// Findings per kind, for summaries.
    pub fn counts_by_kind(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for f in &self.findings {
            *m.entry(f.kind).or_default() += 1;
        }
        m
    }

    /// Total number of objects examined.
    pub fn total_checked(&self) -> usize {
        self.checked.values().sum()
    }
}

/// Collects findings and counts while the checks run.
pub(crate) struct Collector {
    checked: BTreeMap<String, usize>,
    findings: Vec<Finding>,
}

impl Collector {
    fn count(&mut self, what: &str, n: usize) {
        *self.checked.entry(what.to_string()).or_default() += n;
    }

    fn add(
        &mut self,
        kind: &'static str,
        severity: Severity,
        object: impl Into<String>,
        detail: impl Into<String>,
        repair: impl Into<String>,
        action: Option<Action>,
    ) {
        self.findings.push(Finding {
            kind,
            severity,
            object: object.into(),
            detail: detail.into(),
            repair: repair.into(),
            repaired: false,
            repair_error: None,
            action,
        });
    }
}

/// Open the metadata database, telling a running daemon apart from damage.
fn open_db(root: &Path) -> Result<Db> {
    let path = root.join(METADATA_DB);
    Db::open(&path).map_err(|e| running_or(e, root))
}

/// redb refuses a database another process holds: that is the daemon.
pub(crate) fn running_or(e: Error, root: &Path) -> Error {
    if e.kind == ErrorKind::Unavailable && e.message.contains("already open") {
        Error::precondition(format!(
            "stevedored is running on this root; stop it first (its databases under {} are locked)",
            root.display()
        ))
    } else {
        e
    }
}

/// Check the root; with `opts.repair`, also remove what is corrupt or orphaned.
pub fn check(opts: &Options) -> Result<Report> {
    let root = &opts.root;
    if !root.is_dir() {
        return Err(Error::not_found(format!(
            "check {}: no such directory (is this the stevedored root?)",
            root.display()
        )));
    }
    if !root.join(METADATA_DB).is_file() {
        return Err(Error::not_found(format!(
            "check {}: no metadata database {METADATA_DB} (is this the stevedored root?)",
            root.display()
        )));
    }
    // open every database first: a running daemon is refused before any work
    let snapshotters = snapshots::open_all(root)?;
    let db = Arc::new(open_db(root)?);
    let mut c = Collector {
        checked: BTreeMap::new(),
        findings: Vec::new(),
    };
    let content = content::check(root, &db, &mut c)?;
    let snaps = snapshots::check(&snapshotters, &mut c)?;
    records::check(&db, &content, &snaps, &mut c)?;
    snapshots::check_mounts(root, &mut c)?;
    let mut report = Report {
        root: root.clone(),
        checked: c.checked,
        findings: c.findings,
        repair: opts.repair,
    };
    if opts.repair {
        repair(&db, &snapshotters, &mut report)?;
    }
    Ok(report)
}

/// Carry out the findings' actions in dependency order.
fn repair(db: &Arc<Db>, snapshotters: &snapshots::Opened, report: &mut Report) -> Result<()> {
    // broken snapshots: remove children before parents, retrying while
    // progress is made (a parent with a live child cannot go)
    loop {
        let mut progress = false;
        let mut pending = false;
        for f in report.findings.iter_mut().filter(|f| !f.repaired) {
            if let Some(Action::RemoveSnapshot { snapshotter, key }) = &f.action {
                match snapshotters.remove(snapshotter, key) {
                    Ok(()) => {
                        f.repaired = true;
                        f.repair_error = None;
                        progress = true;
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => f.repaired = true,
                    Err(e) => {
                        f.repair_error = Some(e.to_string());
                        pending = true;
                    }
                }
            }
        }
        if !pending || !progress {
            break;
        }
    }
    let order = |a: &Action| match a {
        Action::RemoveSnapshot { .. } => 0,
        Action::SnapshotCleanup { .. } => 1,
        Action::RemoveContainer { .. } => 2,
        Action::RemoveImage { .. } => 3,
        Action::RemoveLeaseResource { .. } => 4,
        Action::RemoveContentRecords { .. } => 5,
        Action::RemoveIngestRecord { .. } => 6,
        Action::RemoveBlob { .. } => 7,
        Action::RemovePath(_) => 8,
    };
    let mut idx: Vec<usize> = (0..report.findings.len())
        .filter(|&i| report.findings[i].action.is_some() && !report.findings[i].repaired)
        .collect();
    idx.sort_by_key(|&i| order(report.findings[i].action.as_ref().expect("filtered")));
    // one cleanup per snapshotter serves all its orphan directories
    let mut cleaned: BTreeMap<String, Result<()>> = BTreeMap::new();
    for i in idx {
        let action = report.findings[i].action.clone().expect("filtered");
        let done = match &action {
            Action::RemoveSnapshot { .. } => {
                continue; // tried above; its error is recorded
            }
            Action::SnapshotCleanup { snapshotter } => cleaned
                .entry(snapshotter.clone())
                .or_insert_with(|| snapshotters.cleanup(snapshotter))
                .clone(),
            Action::RemoveContainer { namespace, id } => {
                ignore_not_found(db.delete_container(namespace, id))
            }
            Action::RemoveImage { namespace, name } => {
                ignore_not_found(db.delete_image(namespace, name))
            }
            Action::RemoveLeaseResource {
                namespace,
                lease,
                resource,
            } => ignore_not_found(db.delete_lease_resource(namespace, lease, resource)),
            Action::RemoveContentRecords { digest, namespaces } => {
                remove_records(db, digest, namespaces)
            }
            Action::RemoveBlob {
                path,
                digest,
                namespaces,
            } => remove_records(db, digest, namespaces).and_then(|_| remove_path(path)),
            Action::RemoveIngestRecord {
                namespace,
                reference,
            } => db.remove_ingest_record(namespace, reference),
            Action::RemovePath(p) => remove_path(p),
        };
        // one failure does not stop the others; the report says what stayed
        match done {
            Ok(()) => report.findings[i].repaired = true,
            Err(e) => report.findings[i].repair_error = Some(e.to_string()),
        }
    }
    Ok(())
}

fn remove_records(
    db: &Arc<Db>,
    digest: &stevedore_types::Digest,
    namespaces: &[String],
) -> Result<()> {
    use stevedore_content::Store;
    namespaces
        .iter()
        .try_for_each(|ns| ignore_not_found(db.content(ns, None).delete(digest)))
}

fn ignore_not_found(r: Result<()>) -> Result<()> {
    match r {
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// `rm -rf` of a file or directory, tolerating absence.
fn remove_path(p: &Path) -> Result<()> {
    let r = match std::fs::symlink_metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
    };
    r.map_err(|e| Error::from(e).context(format!("remove {}", p.display())))
}

#[cfg(test)]
mod tests;
