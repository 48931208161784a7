//! stevedore's own metrics (what containerd has no name for): pulls, layer
//! unpacks, garbage collection. Recorded here, rendered by the daemon's
//! metrics endpoint with [`render`].

use std::sync::LazyLock;
use std::time::Duration;
use stevedore_metrics::{Counter, Family, Histogram, Text};

/// Buckets for operations that take seconds to minutes (pulls, unpacks).
const SLOW_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

static PULLS: LazyLock<Family<Histogram>> = LazyLock::new(|| {
    Family::new(
        "stevedore_pull_duration_seconds",
        "Image pulls run in the daemon (resolve to image record), by result.",
        &["result"],
        || Histogram::new(SLOW_BUCKETS),
    )
});
static PULL_BYTES: Counter = Counter::new();
static UNPACKS: LazyLock<Histogram> = LazyLock::new(|| Histogram::new(SLOW_BUCKETS));
static UNPACK_BYTES: Counter = Counter::new();
static GC_RUNS: LazyLock<Family<Counter>> = LazyLock::new(|| {
    Family::new(
        "stevedore_gc_runs_total",
        "Garbage collections, by result.",
        &["result"],
        Counter::new,
    )
});
static GC_SECONDS: LazyLock<Histogram> =
    LazyLock::new(|| Histogram::new(stevedore_metrics::DEFAULT_BUCKETS));
static GC_REMOVED: LazyLock<Family<Counter>> = LazyLock::new(|| {
    Family::new(
        "stevedore_gc_removed_total",
        "Records garbage collection removed, by kind (content, snapshot, lease, ...).",
        &["kind"],
        Counter::new,
    )
});
static GC_RECLAIMED: Counter = Counter::new();

/// A finished pull.
pub fn pull_done(ok: bool, took: Duration) {
    PULLS
        .with(&[if ok { "ok" } else { "error" }])
        .observe_duration(took);
}

/// Bytes a pull downloaded from a registry into the content store.
pub fn pull_bytes(n: u64) {
    PULL_BYTES.add(n);
}

/// A layer applied onto a snapshot (`bytes` uncompressed).
pub fn layer_unpacked(bytes: u64, took: Duration) {
    UNPACK_BYTES.add(bytes);
    UNPACKS.observe_duration(took);
}

/// A garbage collection: records removed per kind and blob bytes freed.
pub fn gc_done(
    result: Result<(&std::collections::BTreeMap<&'static str, usize>, u64), ()>,
    took: Duration,
) {
    GC_SECONDS.observe_duration(took);
    match result {
        Ok((removed, bytes)) => {
            GC_RUNS.with(&["ok"]).inc();
            for (kind, n) in removed {
                GC_REMOVED.with(&[kind]).add(*n as u64);
            }
            GC_RECLAIMED.add(bytes);
        }
        Err(()) => GC_RUNS.with(&["error"]).inc(),
    }
}

/// Append every metric of this module.
pub fn render(out: &mut Text) {
    PULLS.render(out);
    out.single(
        "stevedore_pull_bytes_total",
        "Bytes downloaded from registries by pulls.",
        "counter",
        PULL_BYTES.get() as f64,
    );
    out.header(
        "stevedore_unpack_duration_seconds",
        "Layers applied onto snapshots (pull unpack and Diff.Apply).",
        "histogram",
    );
    stevedore_metrics::Metric::write(&*UNPACKS, "stevedore_unpack_duration_seconds", &[], out);
    out.single(
        "stevedore_unpack_bytes_total",
        "Uncompressed layer bytes applied onto snapshots.",
        "counter",
        UNPACK_BYTES.get() as f64,
    );
    GC_RUNS.render(out);
    out.header(
        "stevedore_gc_duration_seconds",
        "Duration of garbage collections.",
        "histogram",
    );
    stevedore_metrics::Metric::write(&*GC_SECONDS, "stevedore_gc_duration_seconds", &[], out);
    GC_REMOVED.render(out);
    out.single(
        "stevedore_gc_reclaimed_bytes_total",
        "Blob bytes garbage collection removed from the content store.",
        "counter",
        GC_RECLAIMED.get() as f64,
    );
}
