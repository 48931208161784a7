//! The local content store (`io.containerd.content.v1 content`).
//!
//! # On-disk layout
//! Under the plugin root `<root>/io.containerd.content.v1.content/`:
//!
//! ```text
//! blobs/<alg>/<hex>            committed blob, mode 0444, content == digest
//! ingest/<sha256(ref)>/        one active ingest (resumable)
//!     ref                      the ingest reference, as given by the client
//!     data                     the bytes received so far (append-only)
//!     startedat                creation time, unix nanoseconds (text)
//!     updatedat                time of the last write, unix nanoseconds (20 digits,
//!                              overwritten in place by every write)
//!     total                    expected size, 0 when unknown (text)
//!     expected                 expected digest, when known (text)
//! ingest/.tmp-<...>/           an ingest being created (removed at open)
//! ```
//! An ingest's update time is the later of `updatedat` and the mtime of
//! `data` (as containerd's store reads it): `updatedat` has the clock's full
//! precision, where an mtime comes from the kernel's coarse clock and can be
//! earlier than the write; the mtime covers a crash between the two writes.
//! Its offset is the length of `data`.
//!
//! # Crash safety
//! - A blob becomes visible only by `rename(ingest/<h>/data, blobs/<alg>/<hex>)`
//!   after the data was fsync'ed and its size and digest were checked against
//!   the bytes actually on disk (the running hash of this writer, which after a
//!   resume starts by re-hashing the existing `data`). rename is atomic, the
//!   blobs directory is fsync'ed after it, so after any crash a blob either is
//!   absent or has exactly the content its name says.
//! - An ingest directory is created complete (written under `.tmp-*`, fsync'ed,
//!   renamed into place), so a crash never leaves a half-described ingest;
//!   leftover `.tmp-*` directories and ingests whose `data` was already
//!   renamed into `blobs/` (a crash between rename and cleanup) are removed
//!   when the store opens.
//! - A crash mid-ingest leaves `data` holding a prefix of what the client
//!   sent; reopening the same ref re-hashes that prefix and reports its length
//!   as the offset, so the client resumes there. Whatever the prefix holds,
//!   commit verifies the digest, so torn data never becomes a blob.
//! - Owned chunks (`Writer::write_bytes`, the Content service's Write) are
//!   appended by a thread of the ingest's own while the caller hashes them;
//!   the call returns once both are done, so a returned write is in `data`
//!   as before. A failed append closes the writer (its hash no longer
//!   matches `data`); commit checks that `data` holds exactly the bytes
//!   hashed.
//! - Every [`WRITEBACK_STEP`] appended bytes start their writeback
//!   (`sync_file_range`, not waited for), so the fsync at commit finds most
//!   of a large blob on disk already; only that fsync is relied upon.
//! - One writer per ref at a time (an in-process lock table); the daemon owns
//!   the directory (the metadata database's single-open rule keeps a second
//!   daemon out).

use crate::{apply_label_paths, Hasher, Info, ReaderAt, Status, Store, Writer, WriterOpts};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stevedore_types::filters::Filter;
use stevedore_types::{Algorithm, Digest, Error, ErrorKind, Result};

/// The on-disk content store.
#[derive(Clone)]
pub struct LocalStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    /// ref -> when its writer was opened.
    locks: Mutex<HashMap<String, SystemTime>>,
    tmp_seq: AtomicU64,
    /// Most bytes one ingest may hold; 0 means no cap.
    max_ingest_size: AtomicI64,
}

fn io_err(op: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::from(e).context(op)
}

fn hex_of(s: &str) -> String {
    crate::digest_of(s.as_bytes()).hex().to_string()
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

fn from_nanos(n: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n.min(u64::MAX as u128) as u64)
}

fn fsync_dir(p: &Path) -> Result<()> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(format!("fsync {}", p.display()), e))
}

fn write_small(path: &Path, text: &str) -> Result<()> {
    let mut f = File::create(path).map_err(|e| io_err(format!("create {}", path.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(format!("write {}", path.display()), e))
}

/// Replace a small file atomically (temp + fsync + rename).
fn replace_small(path: &Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    write_small(&tmp, text)?;
    fs::rename(&tmp, path).map_err(|e| io_err(format!("rename {}", path.display()), e))
}

fn read_small(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()), e)),
    }
}

impl LocalStore {
    /// Open (or create) the store at `root`, cleaning what a crash left.
    pub fn open(root: &Path) -> Result<LocalStore> {
        for d in [root.join("blobs"), root.join("ingest")] {
            fs::create_dir_all(&d).map_err(|e| io_err(format!("create {}", d.display()), e))?;
        }
        let store = LocalStore {
            inner: Arc::new(Inner {
                root: root.to_path_buf(),
                locks: Mutex::new(HashMap::new()),
                tmp_seq: AtomicU64::new(0),
                max_ingest_size: AtomicI64::new(0),
            }),
        };
        store.clean_ingests()?;
        Ok(store)
    }

    /// Cap the size of any one ingest (the content plugin's
    /// `max_ingest_size`); 0 removes the cap. Every later write honours it.
    pub fn set_max_ingest_size(&self, bytes: i64) {
        self.inner
            .max_ingest_size
            .store(bytes.max(0), Ordering::Relaxed);
    }

    /// The cap on one ingest's size (0: none).
    pub fn max_ingest_size(&self) -> i64 {
        self.inner.max_ingest_size.load(Ordering::Relaxed)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn ingest_root(&self) -> PathBuf {
        self.inner.root.join("ingest")
    }

    fn ingest_dir(&self, reference: &str) -> PathBuf {
        self.ingest_root().join(hex_of(reference))
    }

    /// Where a blob lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.inner
            .root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn clean_ingests(&self) -> Result<()> {
        let root = self.ingest_root();
        let rd = fs::read_dir(&root).map_err(|e| io_err(format!("read {}", root.display()), e))?;
        for ent in rd.flatten() {
            let p = ent.path();
            let name = ent.file_name().to_string_lossy().to_string();
            let stale = name.starts_with(".tmp-") || !p.join("data").exists();
            if stale {
                tracing::info!(path = %p.display(), "removing incomplete ingest left by a crash");
                fs::remove_dir_all(&p).map_err(|e| io_err(format!("remove {}", p.display()), e))?;
            }
        }
        Ok(())
    }

    fn lock(&self, reference: &str) -> Result<()> {
        let mut locks = self.inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = locks.get(reference) {
            let age = SystemTime::now().duration_since(*since).unwrap_or_default();
            return Err(Error::unavailable(format!(
                "ref {reference} locked for {:.3}s (since {}): unavailable",
                age.as_secs_f64(),
                humanish_time(*since)
            )));
        }
        locks.insert(reference.to_string(), SystemTime::now());
        Ok(())
    }

    fn unlock(inner: &Inner, reference: &str) {
        let mut locks = inner.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.remove(reference);
    }

    fn read_status(&self, dir: &Path) -> Result<Status> {
        let reference = read_small(&dir.join("ref"))?
            .ok_or_else(|| Error::not_found(format!("ingest {}: not found", dir.display())))?;
        let meta = fs::metadata(dir.join("data"))
            .map_err(|e| io_err(format!("ingest ref {reference:?}: stat data"), e))?;
        let started = read_small(&dir.join("startedat"))?
            .and_then(|s| s.trim().parse::<u128>().ok())
            .map(from_nanos)
            .unwrap_or(UNIX_EPOCH);
        let total = read_small(&dir.join("total"))?
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        let expected = read_small(&dir.join("expected"))?.and_then(|s| s.trim().parse().ok());
        let mtime = meta.modified().unwrap_or(started);
        let updated = read_small(&dir.join("updatedat"))?
            .and_then(|s| s.trim().parse::<u128>().ok())
            .map(from_nanos)
            .map_or(mtime, |u| u.max(mtime));
        Ok(Status {
            reference,
            offset: meta.len() as i64,
            total,
            expected,
            started_at: started,
            updated_at: updated,
        })
    }

    /// Replace the ingest at `dir` with an empty one for `opts`: the old one
    /// is renamed to a `.tmp-*` name first (what a crash leaves there the
    /// store removes when it opens), so no crash leaves a half-removed ingest.
    fn restart_ingest(&self, dir: &Path, opts: &WriterOpts) -> Result<()> {
        let n = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let old = self.ingest_root().join(format!(
            ".tmp-{}-{}-{n}-old",
            hex_of(&opts.reference),
            std::process::id()
        ));
        fs::rename(dir, &old).map_err(|e| io_err(format!("rename {}", dir.display()), e))?;
        fsync_dir(&self.ingest_root())?;
        fs::remove_dir_all(&old).map_err(|e| io_err(format!("remove {}", old.display()), e))?;
        self.create_ingest(dir, opts)
    }

    /// Create the ingest directory for `reference` complete, then rename it in.
    fn create_ingest(&self, dir: &Path, opts: &WriterOpts) -> Result<()> {
        let n = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.ingest_root().join(format!(
            ".tmp-{}-{}-{n}",
            hex_of(&opts.reference),
            std::process::id()
        ));
        fs::create_dir(&tmp).map_err(|e| io_err(format!("create {}", tmp.display()), e))?;
        let res = (|| {
            write_small(&tmp.join("ref"), &opts.reference)?;
            let now = nanos(SystemTime::now());
            write_small(&tmp.join("startedat"), &now.to_string())?;
            write_small(&tmp.join("updatedat"), &format!("{now:020}"))?;
            write_small(&tmp.join("total"), &opts.total.to_string())?;
            if let Some(d) = &opts.expected {
                write_small(&tmp.join("expected"), &d.to_string())?;
            }
            write_small(&tmp.join("data"), "")?;
            fsync_dir(&tmp)?;
            fs::rename(&tmp, dir).map_err(|e| io_err(format!("rename {}", dir.display()), e))?;
            fsync_dir(&self.ingest_root())
        })();
        if res.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        res
    }

    fn open_writer(&self, opts: WriterOpts) -> Result<LocalWriter> {
        if opts.total < 0 {
            return Err(Error::invalid(format!(
                "ingest ref {:?}: invalid expected size {}",
                opts.reference, opts.total
            )));
        }
        let max = self.max_ingest_size();
        if max > 0 && opts.total > max {
            return Err(Error::invalid(format!(
                "ingest ref {:?}: expected size {} exceeds the limit of {max} bytes per ingest (max_ingest_size)",
                opts.reference, opts.total
            )));
        }
        let dir = self.ingest_dir(&opts.reference);
        if !dir.join("data").exists() {
            self.create_ingest(&dir, &opts)?;
        } else if opts.total > 0 {
            let st = self.read_status(&dir)?;
            if st.reference == opts.reference
                && ((st.total > 0 && st.total != opts.total) || st.offset > opts.total)
            {
                // the ref now names other content (ctr imports every
                // archive's index.json as "tar-index.json"): as containerd's
                // store, start the ingest again rather than resume bytes
                // that cannot be its prefix
                self.restart_ingest(&dir, &opts)?;
            } else {
                replace_small(&dir.join("total"), &opts.total.to_string())?;
            }
        }
        let status = self.read_status(&dir)?;
        if status.reference != opts.reference {
            return Err(Error::internal(format!(
                "ingest {}: holds ref {:?}, not {:?}",
                dir.display(),
                status.reference,
                opts.reference
            )));
        }
        let expected = opts.expected.clone().or(status.expected.clone());
        if opts.expected.is_some() && status.expected != opts.expected {
            if let Some(d) = &opts.expected {
                replace_small(&dir.join("expected"), &d.to_string())?;
            }
        }
        let alg = expected
            .as_ref()
            .map(|d| d.algorithm())
            .unwrap_or(Algorithm::Sha256);
        let data_path = dir.join("data");
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&data_path)
            .map_err(|e| io_err(format!("ingest ref {:?}: open data", opts.reference), e))?;
        // Resume: the bytes already on disk are the truth; hash them again.
        let mut hasher = Hasher::new(alg);
        let mut offset = 0i64;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| io_err(format!("ingest ref {:?}: read data", opts.reference), e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as i64;
        }
        let updated_path = dir.join("updatedat");
        let updated_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&updated_path)
            .map_err(|e| {
                io_err(
                    format!("ingest ref {:?}: open updatedat", opts.reference),
                    e,
                )
            })?;
        Ok(LocalWriter {
            store: self.clone(),
            reference: opts.reference,
            dir,
            data: Data::Here(Appender::new(file, offset as u64)),
            updated_file,
            hasher,
            offset,
            total: if opts.total > 0 {
                opts.total
            } else {
                status.total
            },
            declared_total: opts.total,
            expected,
            started_at: status.started_at,
            updated_at: status.updated_at,
        })
    }
}

fn humanish_time(t: SystemTime) -> String {
    format!("unix {:.3}", nanos(t) as f64 / 1e9)
}

/// A blob opened for random reads.
struct FileReader {
    file: File,
    size: u64,
    digest: Digest,
}

impl ReaderAt for FileReader {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize> {
        if offset >= self.size {
            return Ok(0);
        }
        let want = buf.len().min((self.size - offset) as usize);
        self.file
            .read_at(&mut buf[..want], offset)
            .map_err(|e| io_err(format!("read content {} at {offset}", self.digest), e))
    }
    fn size(&self) -> u64 {
        self.size
    }
}

/// A writer on one ingest of the local store.
pub struct LocalWriter {
    store: LocalStore,
    reference: String,
    dir: PathBuf,
    data: Data,
    hasher: Hasher,
    offset: i64,
    total: i64,
    /// The total declared by whoever opened this writer (0: none). Writes
    /// past it are refused; a total stored by an earlier session is only
    /// reported (as containerd does), so a resume without one still works.
    declared_total: i64,
    expected: Option<Digest>,
    started_at: SystemTime,
    updated_at: SystemTime,
    /// `updatedat`, rewritten in place (one positioned write) at each write.
    updated_file: File,
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // writes still queued finish before the ref is free again: a new
        // writer resuming it re-hashes `data` and must see its final length
        if let Err(e) = self.here() {
            tracing::debug!(reference = %self.reference, error = %e.message, "ingest writer dropped after a failed write");
        }
        LocalStore::unlock(&self.store.inner, &self.reference);
    }
}

/// Appends to an ingest's `data`, starting the writeback of each
/// [`WRITEBACK_STEP`] bytes as they accumulate: the page cache then drains
/// while the ingest goes on, and the `fsync` at commit waits for the last
/// few MiB instead of the whole blob.
struct Appender {
    file: File,
    /// Length of `data`.
    end: u64,
    /// Where writeback was last started up to.
    flushed: u64,
}

/// How many written bytes start a writeback.
const WRITEBACK_STEP: u64 = 8 << 20;

impl Appender {
    fn new(file: File, end: u64) -> Self {
        Appender {
            file,
            end,
            flushed: end,
        }
    }

    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all(data)?;
        self.end += data.len() as u64;
        if self.end - self.flushed >= WRITEBACK_STEP {
            // advisory: the fsync at commit covers whatever this did not start
            if let Err(e) =
                stevedore_sys::start_writeback(&self.file, self.flushed, self.end - self.flushed)
            {
                tracing::debug!(error = %e.message, "ingest writeback not started");
            }
            self.flushed = self.end;
        }
        Ok(())
    }

    fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.end = 0;
        self.flushed = 0;
        Ok(())
    }
}

/// Where an ingest's bytes go.
enum Data {
    /// Written on the caller's thread.
    Here(Appender),
    /// Appended by a thread of this ingest's own ([`Writer::write_bytes`]),
    /// one chunk at a time, while the caller hashes the same chunk; each
    /// append answers on `done`. The thread stops at the first failed append.
    Parallel {
        chunks: std::sync::mpsc::SyncSender<bytes::Bytes>,
        done: std::sync::mpsc::Receiver<std::io::Result<()>>,
        thread: std::thread::JoinHandle<Appender>,
    },
    /// Committed, or a write failed: `data` no longer matches what this
    /// writer hashed, so nothing but dropping it (and resuming from disk
    /// with a new writer) is allowed.
    Closed(String),
}

impl LocalWriter {
    /// Record the time of a write with the clock's full precision.
    fn touch(&mut self) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.updated_at = SystemTime::now();
        let text = format!("{:020}", nanos(self.updated_at));
        self.updated_file
            .write_all_at(text.as_bytes(), 0)
            .map_err(|e| {
                io_err(
                    format!("ingest ref {:?}: write updatedat", self.reference),
                    e,
                )
            })
    }

    /// The appender, back from the append thread if one runs.
    fn here(&mut self) -> Result<&mut Appender> {
        if let Data::Parallel { .. } = self.data {
            let Data::Parallel { chunks, thread, .. } =
                std::mem::replace(&mut self.data, Data::Closed(String::new()))
            else {
                unreachable!("matched above")
            };
            drop(chunks);
            self.data = match thread.join() {
                Ok(a) => Data::Here(a),
                Err(_) => Data::Closed(format!(
                    "ingest ref {:?}: the append thread panicked",
                    self.reference
                )),
            };
        }
        match &mut self.data {
            Data::Here(a) => Ok(a),
            Data::Closed(why) if why.is_empty() => Err(Error::precondition(format!(
                "ingest ref {:?}: writer already committed",
                self.reference
            ))),
            Data::Closed(why) => Err(Error::precondition(format!(
                "{why} (the writer is closed; open the ingest again to resume)"
            ))),
            Data::Parallel { .. } => unreachable!("joined above"),
        }
    }

    /// Append `data` on the ingest's append thread (started on first use)
    /// while hashing it here; returns once both are done.
    fn append_parallel(&mut self, data: bytes::Bytes) -> Result<()> {
        let r = self.reference.clone();
        if let Data::Here(_) = self.data {
            let Data::Here(mut a) = std::mem::replace(&mut self.data, Data::Closed(String::new()))
            else {
                unreachable!("matched above")
            };
            let (chunks, todo) = std::sync::mpsc::sync_channel::<bytes::Bytes>(1);
            let (answer, done) = std::sync::mpsc::sync_channel(1);
            let spawned = std::thread::Builder::new()
                .name("ingest-append".into())
                .spawn(move || {
                    for chunk in todo {
                        let appended = a.append(&chunk);
                        let failed = appended.is_err();
                        if answer.send(appended).is_err() || failed {
                            break;
                        }
                    }
                    a
                });
            match spawned {
                Ok(thread) => {
                    self.data = Data::Parallel {
                        chunks,
                        done,
                        thread,
                    }
                }
                Err(e) => {
                    // the appender went with the closure that never ran
                    let e = io_err(format!("ingest ref {r:?}: start the append thread"), e);
                    self.data = Data::Closed(e.message.clone());
                    return Err(e);
                }
            }
        }
        let Data::Parallel { chunks, done, .. } = &self.data else {
            return self.here().map(|_| ());
        };
        let appended = match chunks.send(data.clone()) {
            Ok(()) => {
                self.hasher.update(&data);
                done.recv()
                    .unwrap_or_else(|_| Err(std::io::Error::other("the append thread stopped")))
            }
            Err(_) => Err(std::io::Error::other("the append thread stopped")),
        };
        if let Err(e) = appended {
            // `data` no longer matches the hash: nothing more on this writer
            let _ = self.here();
            let e = io_err(format!("ingest ref {r:?}: write"), e);
            self.data = Data::Closed(e.message.clone());
            return Err(e);
        }
        Ok(())
    }

    /// Refuse a write past the declared total or the store's cap.
    fn check_room(&self, len: usize) -> Result<()> {
        let r = &self.reference;
        let end = self.offset.saturating_add(len as i64);
        if self.declared_total > 0 && end > self.declared_total {
            return Err(Error::invalid(format!(
                "ingest ref {r:?}: writing {len} bytes at offset {} exceeds the expected total of {} bytes",
                self.offset, self.declared_total
            )));
        }
        let max = self.store.max_ingest_size();
        if max > 0 && end > max {
            return Err(Error::invalid(format!(
                "ingest ref {r:?}: writing {len} bytes at offset {} exceeds the limit of {max} bytes per ingest (max_ingest_size)",
                self.offset
            )));
        }
        Ok(())
    }
}

impl Writer for LocalWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.check_room(data.len())?;
        let r = self.reference.clone();
        if let Err(e) = self.here()?.append(data) {
            let e = io_err(format!("ingest ref {r:?}: write"), e);
            self.data = Data::Closed(e.message.clone());
            return Err(e);
        }
        self.hasher.update(data);
        self.offset += data.len() as i64;
        self.touch()
    }

    fn write_bytes(&mut self, data: bytes::Bytes) -> Result<()> {
        self.check_room(data.len())?;
        self.append_parallel(data.clone())?;
        self.offset += data.len() as i64;
        self.touch()
    }

    fn status(&self) -> Result<Status> {
        Ok(Status {
            reference: self.reference.clone(),
            offset: self.offset,
            total: self.total,
            expected: self.expected.clone(),
            started_at: self.started_at,
            updated_at: self.updated_at,
        })
    }

    fn digest(&self) -> Digest {
        self.hasher.digest()
    }

    fn truncate(&mut self, size: i64) -> Result<()> {
        if size != 0 {
            return Err(Error::invalid(format!(
                "ingest ref {:?}: truncate to {size} is not supported (only 0)",
                self.reference
            )));
        }
        let r = self.reference.clone();
        self.here()?
            .truncate()
            .map_err(|e| io_err(format!("ingest ref {r:?}: truncate"), e))?;
        let alg = self
            .expected
            .as_ref()
            .map(|d| d.algorithm())
            .unwrap_or(Algorithm::Sha256);
        self.hasher = Hasher::new(alg);
        self.offset = 0;
        self.touch()
    }

    fn commit(
        &mut self,
        size: i64,
        expected: Option<&Digest>,
        _labels: HashMap<String, String>,
    ) -> Result<Digest> {
        let r = self.reference.clone();
        let a = self.here()?;
        a.file
            .sync_all()
            .map_err(|e| io_err(format!("ingest ref {r:?}: fsync"), e))?;
        let on_disk = a.end;
        if on_disk != self.offset as u64 {
            return Err(Error::internal(format!(
                "ingest ref {r:?}: data holds {on_disk} bytes, the writer wrote {}",
                self.offset
            )));
        }
        if size > 0 && size != self.offset {
            return Err(Error::precondition(format!(
                "ingest ref {r:?}: unexpected commit size {}, expected {size}",
                self.offset
            )));
        }
        let mut actual = self.hasher.digest();
        if let Some(exp) = expected {
            if exp.algorithm() != actual.algorithm() {
                // the writer hashed with another algorithm: hash the data again
                actual = rehash(&self.dir.join("data"), exp.algorithm())?;
            }
            if exp != &actual {
                return Err(Error::precondition(format!(
                    "ingest ref {r:?}: unexpected commit digest {actual}, expected {exp}"
                )));
            }
        }
        let target = self.store.blob_path(&actual);
        let data = self.dir.join("data");
        if target.exists() {
            self.data = Data::Closed(String::new());
            fs::remove_dir_all(&self.dir)
                .map_err(|e| io_err(format!("remove ingest ref {r:?}"), e))?;
            return Err(Error::already_exists(format!(
                "content {actual}: already exists"
            )));
        }
        let parent = target.parent().expect("blob path has a parent");
        fs::create_dir_all(parent)
            .map_err(|e| io_err(format!("create {}", parent.display()), e))?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o444))
            .map_err(|e| io_err(format!("ingest ref {r:?}: chmod"), e))?;
        fs::rename(&data, &target)
            .map_err(|e| io_err(format!("commit ingest ref {r:?} to {actual}"), e))?;
        fsync_dir(parent)?;
        self.data = Data::Closed(String::new());
        fs::remove_dir_all(&self.dir).map_err(|e| io_err(format!("remove ingest ref {r:?}"), e))?;
        Ok(actual)
    }
}

fn rehash(path: &Path, alg: Algorithm) -> Result<Digest> {
    let mut f = File::open(path).map_err(|e| io_err(format!("open {}", path.display()), e))?;
    let mut h = Hasher::new(alg);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err(format!("read {}", path.display()), e))?;
        if n == 0 {
            return Ok(h.digest());
        }
        h.update(&buf[..n]);
    }
}

impl Store for LocalStore {
    fn info(&self, digest: &Digest) -> Result<Info> {
        let p = self.blob_path(digest);
        let meta = fs::metadata(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!("content digest {digest}: not found"))
            } else {
                io_err(format!("stat content {digest}"), e)
            }
        })?;
        let t = meta.modified().unwrap_or(UNIX_EPOCH);
        Ok(Info {
            digest: digest.clone(),
            size: meta.len() as i64,
            created_at: t,
            updated_at: t,
            labels: HashMap::new(),
        })
    }

    fn update(&self, info: Info, paths: &[String]) -> Result<Info> {
        // the local store keeps no labels; only a no-op update is accepted
        let mut cur = self.info(&info.digest)?;
        let mut labels = HashMap::new();
        apply_label_paths(
            &mut labels,
            &info.labels,
            paths,
            &format!("content {}", info.digest),
        )?;
        if !labels.is_empty() {
            return Err(Error::precondition(format!(
                "update content {}: labels are not supported by the local store (use the namespaced store)",
                info.digest
            )));
        }
        cur.labels = labels;
        Ok(cur)
    }

    fn list(&self, filter: &Filter) -> Result<Vec<Info>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.inner.root.join("blobs").join(alg.as_str());
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("read {}", dir.display()), e)),
            };
            for ent in rd {
                let ent = ent.map_err(|e| io_err(format!("read {}", dir.display()), e))?;
                let name = ent.file_name().to_string_lossy().to_string();
                let Ok(d) = Digest::new(alg, &name) else {
                    continue; // not a blob (e.g. a stray temp file)
                };
                match self.info(&d) {
                    Ok(info) if filter.matches(&info) => out.push(info),
                    Ok(_) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        out.sort_by(|a, b| a.digest.cmp(&b.digest));
        Ok(out)
    }

    fn delete(&self, digest: &Digest) -> Result<()> {
        let p = self.blob_path(digest);
        fs::remove_file(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!("content digest {digest}: not found"))
            } else {
                io_err(format!("delete content {digest}"), e)
            }
        })
    }

    fn reader_at(&self, digest: &Digest) -> Result<Box<dyn ReaderAt>> {
        let p = self.blob_path(digest);
        let file = File::open(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::not_found(format!("content {digest}: not found"))
            } else {
                io_err(format!("open content {digest}"), e)
            }
        })?;
        let size = file
            .metadata()
            .map_err(|e| io_err(format!("stat content {digest}"), e))?
            .len();
        Ok(Box::new(FileReader {
            file,
            size,
            digest: digest.clone(),
        }))
    }

    fn writer(&self, opts: WriterOpts) -> Result<Box<dyn Writer>> {
        if opts.reference.is_empty() {
            return Err(Error::invalid("ref must not be empty"));
        }
        if let Some(d) = &opts.expected {
            if self.blob_path(d).exists() {
                return Err(Error::already_exists(format!(
                    "content {d}: already exists"
                )));
            }
        }
        self.lock(&opts.reference)?;
        let reference = opts.reference.clone();
        match self.open_writer(opts) {
            Ok(w) => Ok(Box::new(w)),
            Err(e) => {
                LocalStore::unlock(&self.inner, &reference);
                Err(e)
            }
        }
    }

    fn status(&self, reference: &str) -> Result<Status> {
        let dir = self.ingest_dir(reference);
        if !dir.join("data").exists() {
            return Err(Error::not_found(format!(
                "ingest ref {reference:?}: not found"
            )));
        }
        self.read_status(&dir)
    }

    fn list_statuses(&self, filter: &Filter) -> Result<Vec<Status>> {
        let root = self.ingest_root();
        let rd = fs::read_dir(&root).map_err(|e| io_err(format!("read {}", root.display()), e))?;
        let mut out = Vec::new();
        for ent in rd.flatten() {
            if ent.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            match self.read_status(&ent.path()) {
                Ok(s) if filter.matches(&s) => out.push(s),
                Ok(_) => {}
                // raced with a commit or abort
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    fn abort(&self, reference: &str) -> Result<()> {
        let dir = self.ingest_dir(reference);
        if !dir.exists() {
            return Err(Error::not_found(format!(
                "ingest ref {reference:?}: not found"
            )));
        }
        fs::remove_dir_all(&dir).map_err(|e| io_err(format!("abort ingest ref {reference:?}"), e))
    }
}
