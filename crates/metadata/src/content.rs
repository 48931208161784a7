//! Namespaced content (containerd's `metadata/content.go`): blobs are shared
//! on disk in the local store, but each namespace has its own records (size,
//! times, labels). A blob is visible in a namespace only once it was committed
//! there; committing a blob that already exists on disk (from another
//! namespace) with its expected digest only adds the record ("shared" policy).
//!
//! # Tables
//! - `content_blobs`: `(namespace, digest) -> JSON {size, created, updated, labels}`
//! - `content_ingests`: `(namespace, ref) -> JSON {expires, expected, size}`;
//!   the local store's ingest for it is named `<namespace>/<ref>`.
//!
//! # Consistency
//! A commit first commits in the local store, then records the blob in one redb
//! transaction. A crash between the two leaves a blob on disk with no record
//! in any namespace; garbage collection removes such blobs (it reconciles the
//! local store with the records under the GC lock, which writers hold shared
//! while they open and commit, so a blob being committed is never collected).

use crate::leases::{self, Resource};
use crate::{db_err, namespaces, ns_scan, Db, MutationKind};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stevedore_content::local::LocalStore;
use stevedore_content::{apply_label_paths, Info, ReaderAt, Status, Store, Writer, WriterOpts};
use stevedore_types::filters::Filter;
use stevedore_types::{labels, Digest, Error, ErrorKind, Result};

pub(crate) const BLOBS: crate::NsTable = TableDefinition::new("content_blobs");
pub(crate) const INGESTS: crate::NsTable = TableDefinition::new("content_ingests");

#[derive(Serialize, Deserialize)]
struct BlobRecord {
    size: i64,
    created: u64,
    updated: u64,
    #[serde(default)]
    labels: HashMap<String, String>,
}

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct IngestRecord {
    /// Unix nanoseconds after which an unleased ingest is garbage.
    #[serde(default)]
    pub(crate) expires: Option<u64>,
    /// Set for a shared ingest: the blob exists on disk already.
    #[serde(default)]
    expected: Option<String>,
    #[serde(default)]
    size: i64,
}

pub(crate) fn to_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
        .min(u64::MAX as u128) as u64
}

pub(crate) fn from_nanos(n: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n)
}

/// The local store's ingest name for a namespaced ref.
pub(crate) fn backend_ref(ns: &str, reference: &str) -> String {
    format!("{ns}/{reference}")
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("metadata: corrupt {what} record: {e}"))
}

fn decode_blob(digest: &str, bytes: &[u8]) -> Result<Info> {
    let r: BlobRecord =
        serde_json::from_slice(bytes).map_err(|e| corrupt(&format!("content {digest}"), e))?;
    Ok(Info {
        digest: digest
            .parse()
            .map_err(|e| corrupt(&format!("content {digest}"), e))?,
        size: r.size,
        created_at: from_nanos(r.created),
        updated_at: from_nanos(r.updated),
        labels: r.labels,
    })
}

fn encode_blob(info: &Info) -> Vec<u8> {
    serde_json::to_vec(&BlobRecord {
        size: info.size,
        created: to_nanos(info.created_at),
        updated: to_nanos(info.updated_at),
        labels: info.labels.clone(),
    })
    .expect("record serialises")
}

impl IngestRecord {
    /// The blob a shared ingest will commit (it was on disk when it opened).
    pub(crate) fn expected(&self) -> Option<&str> {
        self.expected.as_deref()
    }
}

pub(crate) fn decode_ingest(reference: &str, bytes: &[u8]) -> Result<IngestRecord> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(&format!("ingest {reference:?}"), e))
}

fn not_found(d: &Digest) -> Error {
    Error::not_found(format!("content digest {d}: not found"))
}

/// Options of the namespaced content store.
#[derive(Debug, Clone)]
pub struct ContentOptions {
    /// An ingest not held by a lease becomes garbage after this long.
    pub ingest_expiry: Duration,
}

impl Default for ContentOptions {
    fn default() -> Self {
        ContentOptions {
            ingest_expiry: Duration::from_secs(24 * 3600),
        }
    }
}

/// The content store seen from one namespace, optionally under a lease.
/// Implements [`Store`], so it runs the content conformance suite.
#[derive(Clone)]
pub struct NsContent {
    db: Arc<Db>,
    ns: String,
    lease: Option<String>,
}

impl Db {
    /// Attach the local content store (once, at plugin init).
    pub fn attach_content(&self, store: LocalStore, opts: ContentOptions) -> Result<()> {
        self.content
            .set((store, opts))
            .map_err(|_| Error::precondition("metadata: content store already attached"))
    }

    pub(crate) fn backend(&self) -> Result<&(LocalStore, ContentOptions)> {
        self.content
            .get()
            .ok_or_else(|| Error::precondition("metadata: no content store attached"))
    }

    /// Content in namespace `ns`; with `lease`, new content is added to it.
    pub fn content(self: &Arc<Self>, ns: &str, lease: Option<&str>) -> NsContent {
        NsContent {
            db: self.clone(),
            ns: ns.to_string(),
            lease: lease.filter(|l| !l.is_empty()).map(str::to_string),
        }
    }
}

impl NsContent {
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    fn store(&self) -> Result<&LocalStore> {
        Ok(&self.db.backend()?.0)
    }

    fn record(&self, d: &Digest) -> Result<Option<Info>> {
        self.db.view(|tx| {
            let t = tx.open_table(BLOBS).map_err(|e| db_err("open blobs", e))?;
            let key = d.to_string();
            match t
                .get((self.ns.as_str(), key.as_str()))
                .map_err(|e| db_err("get blob", e))?
            {
                Some(v) => Ok(Some(decode_blob(&key, v.value())?)),
                None => Ok(None),
            }
        })
    }
}

impl Store for NsContent {
    fn info(&self, digest: &Digest) -> Result<Info> {
        self.record(digest)?.ok_or_else(|| not_found(digest))
    }

    fn update(&self, info: Info, paths: &[String]) -> Result<Info> {
        labels::validate_all(&info.labels)
            .map_err(|e| e.context(format!("content {}: info.Labels", info.digest)))?;
        let d = info.digest.to_string();
        let out = self.db.update(|tx| {
            let mut t = tx.open_table(BLOBS).map_err(|e| db_err("open blobs", e))?;
            let mut cur = {
                let v = t
                    .get((self.ns.as_str(), d.as_str()))
                    .map_err(|e| db_err("get blob", e))?
                    .ok_or_else(|| not_found(&info.digest))?;
                decode_blob(&d, v.value())?
            };
            apply_label_paths(
                &mut cur.labels,
                &info.labels,
                paths,
                &format!("content {d}"),
            )?;
            cur.updated_at = SystemTime::now();
            t.insert((self.ns.as_str(), d.as_str()), encode_blob(&cur).as_slice())
                .map_err(|e| db_err("update blob", e))?;
            Ok(cur)
        })?;
        // a label change can drop a gc reference
        self.db.notify(MutationKind::Change);
        Ok(out)
    }

    fn list(&self, filter: &Filter) -> Result<Vec<Info>> {
        self.db.view(|tx| {
            let t = tx.open_table(BLOBS).map_err(|e| db_err("open blobs", e))?;
            let mut out = Vec::new();
            for (k, v) in ns_scan(&t, &self.ns)? {
                let info = decode_blob(&k, &v)?;
                if filter.matches(&info) {
                    out.push(info);
                }
            }
            Ok(out)
        })
    }

    /// Removes this namespace's record; the bytes go at the next GC when no
    /// other namespace holds them.
    fn delete(&self, digest: &Digest) -> Result<()> {
        let d = digest.to_string();
        self.db.update(|tx| {
            let mut t = tx.open_table(BLOBS).map_err(|e| db_err("open blobs", e))?;
            t.remove((self.ns.as_str(), d.as_str()))
                .map_err(|e| db_err("delete blob", e))?
                .ok_or_else(|| not_found(digest))?;
            Ok(())
        })?;
        self.db.notify(MutationKind::Delete);
        Ok(())
    }

    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>> {
        self.info(digest)?;
        self.store()?.reader_at(digest)
    }

    fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>> {
        if opts.reference.is_empty() {
            return Err(Error::invalid("ref must not be empty"));
        }
        let (store, copts) = self.db.backend()?;
        let _gc = self.db.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let bref = backend_ref(&self.ns, &opts.reference);
        let mut exists = false;
        let mut shared: Option<(Digest, i64)> = None;
        let backend = self.db.update(|tx| {
            if let Some(d) = &opts.expected {
                let t = tx.open_table(BLOBS).map_err(|e| db_err("open blobs", e))?;
                let key = d.to_string();
                if t.get((self.ns.as_str(), key.as_str()))
                    .map_err(|e| db_err("get blob", e))?
                    .is_some()
                {
                    // keep the lease's hold on it, then report it exists
                    if let Some(l) = &self.lease {
                        leases::add_resource_tx(tx, &self.ns, l, &Resource::content(d))?;
                    }
                    exists = true;
                    return Ok(None);
                }
                if let Ok(st) = store.info(d) {
                    if opts.total == 0 || opts.total == st.size {
                        shared = Some((d.clone(), st.size));
                    }
                }
            }
            namespaces::ensure(tx, &self.ns)?;
            let mut t = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            let key = (self.ns.as_str(), opts.reference.as_str());
            let mut rec = match t.get(key).map_err(|e| db_err("get ingest", e))? {
                Some(v) => decode_ingest(&opts.reference, v.value())?,
                None => IngestRecord::default(),
            };
            match &self.lease {
                Some(l) => {
                    leases::add_resource_tx(tx, &self.ns, l, &Resource::ingest(&opts.reference))?;
                    rec.expires = None;
                }
                None => {
                    rec.expires = Some(to_nanos(SystemTime::now() + copts.ingest_expiry));
                }
            }
            if let Some((d, size)) = &shared {
                rec.expected = Some(d.to_string());
                rec.size = *size;
            } else {
                rec.expected = None;
                rec.size = 0;
            }
            t.insert(
                key,
                serde_json::to_vec(&rec).expect("serialises").as_slice(),
            )
            .map_err(|e| db_err("put ingest", e))?;
            if shared.is_some() {
                return Ok(None);
            }
            // the expected digest was checked against this namespace above;
            // the backend must not short-cut on blobs of other namespaces
            let w = store.writer(WriterOpts {
                reference: bref.clone(),
                total: opts.total,
                expected: None,
            })?;
            Ok(Some(w))
        })?;
        if exists {
            let d = opts.expected.as_ref().expect("exists implies expected");
            return Err(Error::already_exists(format!(
                "content {d}: already exists"
            )));
        }
        let state = match (backend, shared) {
            (Some(w), _) => State::Backend(w),
            (None, Some((d, size))) => State::Shared(d, size),
            (None, None) => unreachable!("writer opened a backend or found a shared blob"),
        };
        Ok(Box::new(NsWriter {
            content: self.clone(),
            reference: opts.reference,
            bref,
            state,
            started: SystemTime::now(),
        }))
    }

    fn status(&self, reference: &str) -> Result<Status> {
        let rec = self.db.view(|tx| {
            let t = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            match t
                .get((self.ns.as_str(), reference))
                .map_err(|e| db_err("get ingest", e))?
            {
                Some(v) => Ok(Some(decode_ingest(reference, v.value())?)),
                None => Ok(None),
            }
        })?;
        let rec =
            rec.ok_or_else(|| Error::not_found(format!("ingest ref {reference:?}: not found")))?;
        self.status_of(reference, &rec)
    }

    fn list_statuses(&self, filter: &Filter) -> Result<Vec<Status>> {
        let recs = self.db.view(|tx| {
            let t = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            ns_scan(&t, &self.ns)
        })?;
        let mut out = Vec::new();
        for (r, v) in recs {
            let rec = decode_ingest(&r, &v)?;
            match self.status_of(&r, &rec) {
                Ok(st) if filter.matches(&st) => out.push(st),
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    fn abort(&self, reference: &str) -> Result<()> {
        let store = self.store()?;
        self.db.update(|tx| {
            let mut t = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            t.remove((self.ns.as_str(), reference))
                .map_err(|e| db_err("delete ingest", e))?
                .ok_or_else(|| Error::not_found(format!("ingest ref {reference:?}: not found")))?;
            Ok(())
        })?;
        match store.abort(&backend_ref(&self.ns, reference)) {
            Err(e) if e.kind != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl NsContent {
    fn status_of(&self, reference: &str, rec: &IngestRecord) -> Result<Status> {
        let mut st = match (
            &rec.expected,
            self.store()?.status(&backend_ref(&self.ns, reference)),
        ) {
            (_, Ok(st)) => st,
            (Some(d), Err(e)) if e.kind == ErrorKind::NotFound => Status {
                reference: reference.to_string(),
                offset: rec.size,
                total: rec.size,
                expected: d.parse().ok(),
                started_at: SystemTime::now(),
                updated_at: SystemTime::now(),
            },
            (_, Err(e)) => return Err(e),
        };
        st.reference = reference.to_string();
        Ok(st)
    }
}

/// A writer in a namespace: a local-store writer, or a "shared" ingest (the
/// blob already exists on disk and only needs a record; also the state after
/// a commit).
struct NsWriter {
    content: NsContent,
    reference: String,
    bref: String,
    state: State,
    started: SystemTime,
}

enum State {
    Backend(Box<dyn Writer>),
    Shared(Digest, i64),
}

impl NsWriter {
    /// Turn a shared ingest into a real one holding a copy of the blob so far
    /// (containerd's createAndCopy): the client chose to write after all.
    fn materialise(&mut self, keep: bool) -> Result<&mut Box<dyn Writer>> {
        if let State::Shared(d, size) = &self.state {
            let store = self.content.store()?;
            let mut w = store.writer(WriterOpts::new(self.bref.clone()))?;
            w.truncate(0)?;
            if keep {
                let ra = store.reader_at(d)?;
                let mut buf = vec![0u8; 1 << 20];
                let mut off = 0u64;
                while off < *size as u64 {
                    let n = ra.read_at(&mut buf, off)?;
                    if n == 0 {
                        break;
                    }
                    w.write(&buf[..n])?;
                    off += n as u64;
                }
            }
            self.state = State::Backend(w);
        }
        match &mut self.state {
            State::Backend(w) => Ok(w),
            State::Shared(..) => unreachable!("materialised above"),
        }
    }
}

impl Writer for NsWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.materialise(true)?.write(data)
    }

    fn write_bytes(&mut self, data: bytes::Bytes) -> Result<()> {
        self.materialise(true)?.write_bytes(data)
    }

    fn status(&self) -> Result<Status> {
        let mut st = match &self.state {
            State::Backend(w) => w.status()?,
            State::Shared(d, size) => Status {
                reference: self.reference.clone(),
                offset: *size,
                total: *size,
                expected: Some(d.clone()),
                started_at: self.started,
                updated_at: self.started,
            },
        };
        st.reference = self.reference.clone();
        Ok(st)
    }

    fn digest(&self) -> Digest {
        match &self.state {
            State::Backend(w) => w.digest(),
            State::Shared(d, _) => d.clone(),
        }
    }

    fn truncate(&mut self, size: i64) -> Result<()> {
        if size == 0 && matches!(self.state, State::Shared(..)) {
            self.materialise(false)?;
            return Ok(());
        }
        self.materialise(true)?.truncate(size)
    }

    fn commit(
        &mut self,
        size: i64,
        expected: Option<&Digest>,
        labels: HashMap<String, String>,
    ) -> Result<Digest> {
        labels::validate_all(&labels).map_err(|e| e.context("commit content labels"))?;
        let db = self.content.db.clone();
        let _gc = db.gc_lock.read().unwrap_or_else(|p| p.into_inner());
        let r = &self.reference;
        let (actual, size) = match &mut self.state {
            State::Shared(d, have) => {
                if size != 0 && size != *have {
                    return Err(Error::precondition(format!(
                        "{r:?} failed size validation: {have} != {size}"
                    )));
                }
                if let Some(e) = expected {
                    if e != d {
                        return Err(Error::precondition(format!(
                            "{r:?} unexpected digest {d}, expected {e}"
                        )));
                    }
                }
                // the blob may have been collected since the writer opened
                self.content.store()?.info(d).map_err(|e| {
                    e.context(format!("commit {r:?}: shared blob {d} vanished; retry"))
                })?;
                (d.clone(), *have)
            }
            State::Backend(w) => {
                let st = w.status()?;
                if size != 0 && size != st.offset {
                    return Err(Error::precondition(format!(
                        "{r:?} failed size validation: {} != {size}",
                        st.offset
                    )));
                }
                match w.commit(st.offset, expected, HashMap::new()) {
                    Ok(d) => (d, st.offset),
                    Err(e) if e.kind == ErrorKind::AlreadyExists => (w.digest(), st.offset),
                    Err(e) => return Err(e),
                }
            }
        };
        let ns = self.content.ns.clone();
        let lease = self.content.lease.clone();
        let existed = db.update(|tx| {
            namespaces::ensure(tx, &ns)?;
            let key = actual.to_string();
            let mut t = tx.open_table(BLOBS).map_err(|e| db_err("open blobs", e))?;
            let existed = t
                .get((ns.as_str(), key.as_str()))
                .map_err(|e| db_err("get blob", e))?
                .is_some();
            if !existed {
                let now = SystemTime::now();
                let info = Info {
                    digest: actual.clone(),
                    size,
                    created_at: now,
                    updated_at: now,
                    labels: labels.clone(),
                };
                t.insert((ns.as_str(), key.as_str()), encode_blob(&info).as_slice())
                    .map_err(|e| db_err("put blob", e))?;
            }
            let mut it = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            it.remove((ns.as_str(), r.as_str()))
                .map_err(|e| db_err("delete ingest", e))?;
            if let Some(l) = &lease {
                leases::delete_resource_tx(tx, &ns, l, &Resource::ingest(r))?;
                leases::add_resource_tx(tx, &ns, l, &Resource::content(&actual))?;
            }
            Ok(existed)
        })?;
        // committed: drop the backend writer (and its ref lock)
        self.state = State::Shared(actual.clone(), size);
        db.notify(MutationKind::Change);
        if existed {
            return Err(Error::already_exists(format!(
                "content {actual}: already exists"
            )));
        }
        Ok(actual)
    }
}

/// One ingest record as stored, for offline checks (`stevedore check`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestEntry {
    pub namespace: String,
    pub reference: String,
    /// Set for a shared ingest (the blob was on disk already: no local ingest).
    pub expected: Option<String>,
    /// Unix nanoseconds after which an unleased ingest is garbage.
    pub expires: Option<u64>,
}

impl Db {
    /// Every ingest record of every namespace (works without a content
    /// store attached).
    pub fn ingest_records(&self) -> Result<Vec<IngestEntry>> {
        self.view(|tx| {
            let t = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            let mut out = Vec::new();
            crate::scan_all(&t, "ingests", |ns, reference, v| {
                let rec = decode_ingest(reference, v)?;
                out.push(IngestEntry {
                    namespace: ns.to_string(),
                    reference: reference.to_string(),
                    expected: rec.expected,
                    expires: rec.expires,
                });
                Ok(())
            })?;
            Ok(out)
        })
    }

    /// Remove one ingest record (not its local ingest); absent is fine.
    pub fn remove_ingest_record(&self, ns: &str, reference: &str) -> Result<()> {
        self.update(|tx| {
            let mut t = tx
                .open_table(INGESTS)
                .map_err(|e| db_err("open ingests", e))?;
            t.remove((ns, reference))
                .map_err(|e| db_err("delete ingest", e))?;
            Ok(())
        })?;
        self.notify(MutationKind::Delete);
        Ok(())
    }
}

/// The local store's ingest name for a namespaced ref (`<namespace>/<ref>`).
pub fn local_ingest_ref(ns: &str, reference: &str) -> String {
    backend_ref(ns, reference)
}
