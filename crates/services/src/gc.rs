//! The GC scheduler (`io.containerd.gc.v1 scheduler`, containerd's
//! `gc/scheduler`): runs garbage collection after deletions, after many
//! mutations, at startup, and synchronously on request, without letting GC
//! take more than `pause_threshold` of the time.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stevedore_metadata::gc::GcStats;
use stevedore_metadata::{Db, MutationKind};
use stevedore_types::{Error, Result};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

/// The scheduler's config section, with containerd's knobs and defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Largest fraction of time GC may take (0.02 = 2%).
    pub pause_threshold: f64,
    /// Deletions that trigger a GC as soon as `schedule_delay` allows (0: off).
    pub deletion_threshold: usize,
    /// Mutations that trigger a GC (0: off).
    pub mutation_threshold: usize,
    /// Delay before a triggered GC runs (Go duration, e.g. "0s", "100ms").
    pub schedule_delay: String,
    /// Delay of the first GC after start.
    pub startup_delay: String,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: "0s".into(),
            startup_delay: "100ms".into(),
        }
    }
}

fn duration(field: &str, s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| Error::invalid(format!("gc scheduler: {field} {s:?}: {e}")))
}

/// Triggers and runs garbage collection.
pub struct GcScheduler {
    requests: mpsc::Sender<oneshot::Sender<Result<GcStats>>>,
}

struct Counters {
    deletions: AtomicUsize,
    mutations: AtomicUsize,
    notify: Notify,
}

impl GcScheduler {
    /// Start the scheduler task on the current tokio runtime.
    pub fn start(db: Arc<Db>, cfg: &SchedulerConfig) -> Result<GcScheduler> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::precondition("gc scheduler: no async runtime"))?;
        if !(0.0..=1.0).contains(&cfg.pause_threshold) {
            return Err(Error::invalid(format!(
                "gc scheduler: pause_threshold {} must be between 0 and 1",
                cfg.pause_threshold
            )));
        }
        let schedule_delay = duration("schedule_delay", &cfg.schedule_delay)?;
        let startup_delay = duration("startup_delay", &cfg.startup_delay)?;
        let counters = Arc::new(Counters {
            deletions: AtomicUsize::new(0),
            mutations: AtomicUsize::new(0),
            notify: Notify::new(),
        });
        let c = counters.clone();
        db.on_mutation(move |k| {
            match k {
                MutationKind::Delete => c.deletions.fetch_add(1, Ordering::Relaxed),
                MutationKind::Change => c.mutations.fetch_add(1, Ordering::Relaxed),
            };
            c.notify.notify_one();
        });
        let (tx, rx) = mpsc::channel(16);
        let cfg = cfg.clone();
        handle.spawn(run(db, counters, rx, cfg, schedule_delay, startup_delay));
        Ok(GcScheduler { requests: tx })
    }

    /// Collect now and wait for the result.
    pub async fn run_now(&self) -> Result<GcStats> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(tx)
            .await
            .map_err(|_| Error::unavailable("gc scheduler is not running"))?;
        rx.await
            .map_err(|_| Error::unavailable("gc scheduler stopped during collection"))?
    }
}

async fn collect(db: &Arc<Db>, counters: &Counters) -> Result<GcStats> {
    counters.deletions.store(0, Ordering::Relaxed);
    counters.mutations.store(0, Ordering::Relaxed);
    let db = db.clone();
    let started = std::time::Instant::now();
    let r = tokio::task::spawn_blocking(move || db.garbage_collect()).await;
    crate::memory::work_done();
    let r = r.map_err(|e| Error::internal(format!("gc task failed: {e}")))?;
    crate::metrics::gc_done(
        r.as_ref()
            .map(|s| (&s.removed, s.reclaimed_bytes))
            .map_err(|_| ()),
        started.elapsed(),
    );
    r
}

async fn run(
    db: Arc<Db>,
    counters: Arc<Counters>,
    mut requests: mpsc::Receiver<oneshot::Sender<Result<GcStats>>>,
    cfg: SchedulerConfig,
    schedule_delay: Duration,
    startup_delay: Duration,
) {
    let mut next: Option<Instant> = Some(Instant::now() + startup_delay);
    // earliest time the next scheduled (not requested) GC may start
    let mut not_before = Instant::now();
    loop {
        let wake = next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            req = requests.recv() => {
                let Some(reply) = req else { return };
                let started = Instant::now();
                let r = collect(&db, &counters).await;
                not_before = pause_after(started, &cfg);
                let _ = reply.send(r);
                next = None;
            }
            _ = counters.notify.notified() => {
                let d = counters.deletions.load(Ordering::Relaxed);
                let m = counters.mutations.load(Ordering::Relaxed);
                let now = Instant::now();
                let due = (cfg.deletion_threshold > 0 && d >= cfg.deletion_threshold)
                    || (cfg.mutation_threshold > 0 && m >= cfg.mutation_threshold);
                let at = if due {
                    Some(now + schedule_delay)
                } else if d > 0 {
                    Some((now + schedule_delay).max(not_before))
                } else {
                    None
                };
                if let Some(at) = at {
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
            _ = tokio::time::sleep_until(wake), if next.is_some() => {
                let started = Instant::now();
                if let Err(e) = collect(&db, &counters).await {
                    tracing::warn!(error = %e, "garbage collection failed");
                }
                not_before = pause_after(started, &cfg);
                next = None;
            }
        }
    }
}

/// When GC took `d`, wait `d * (1/p - 1)` so that it takes at most a
/// fraction `p` of the time.
fn pause_after(started: Instant, cfg: &SchedulerConfig) -> Instant {
    let took = started.elapsed();
    let now = Instant::now();
    if cfg.pause_threshold <= 0.0 || cfg.pause_threshold >= 1.0 {
        return now;
    }
    let wait = took.as_secs_f64() * (1.0 / cfg.pause_threshold - 1.0);
    now + Duration::from_secs_f64(wait.min(3600.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_matches_containerd() {
        let c = SchedulerConfig::default();
        assert_eq!(c.pause_threshold, 0.02);
        assert_eq!(c.mutation_threshold, 100);
        assert_eq!(
            duration("x", &c.startup_delay).unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(duration("x", &c.schedule_delay).unwrap(), Duration::ZERO);
        let e = toml::from_str::<SchedulerConfig>("pause = 1").unwrap_err();
        assert!(e.to_string().contains("unknown field"), "{e}");
    }

    #[tokio::test]
    async fn deletion_schedules_collection_and_sync_runs_it() {
        use stevedore_content::{Store, WriterOpts};
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&dir.path().join("meta.db")).unwrap());
        let store = stevedore_content::local::LocalStore::open(&dir.path().join("c")).unwrap();
        db.attach_content(store.clone(), Default::default())
            .unwrap();
        let gc = GcScheduler::start(db.clone(), &SchedulerConfig::default()).unwrap();
        let c = db.content("default", None);
        let mut w = c.writer(WriterOpts::new("x")).unwrap();
        w.write(b"bytes").unwrap();
        let d = w.commit(5, None, Default::default()).unwrap();
        gc.run_now().await.unwrap();
        // unreferenced content goes at the next collection anyway; make it
        // referenced, delete it, and watch the scheduled run remove the file
        let path = store.blob_path(&d);
        assert!(
            !path.exists(),
            "unreferenced content is collected on request"
        );
        let mut w = c.writer(WriterOpts::new("y")).unwrap();
        w.write(b"other").unwrap();
        let root = [("containerd.io/gc.root".to_string(), "1".to_string())].into();
        let d = w.commit(5, None, root).unwrap();
        gc.run_now().await.unwrap();
        let path = store.blob_path(&d);
        assert!(path.exists());
        c.delete(&d).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while path.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!path.exists(), "a deletion schedules a collection");
    }
}
