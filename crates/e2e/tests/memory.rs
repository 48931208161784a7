//! The daemon gives memory back: repeated import/remove cycles of an image
//! leave its RSS flat (no retention that grows with the work done).

use std::time::{Duration, Instant};
use stevedore_e2e::Daemon;

/// Cycles before the baseline sample: the first ones grow caches, arenas and
/// the database file to their working size.
const WARM_CYCLES: usize = 4;
const CYCLES: usize = 24;
/// Allowed growth from cycle 4 to cycle 24. A settled daemon's RSS moves by
/// a few hundred KiB between samples (allocator fragmentation, a thread's
/// stack pages); retention tied to the work grows by at least one 1 MiB
/// transfer buffer or one layer (~1 MB compressed here) per cycle, so 20 more cycles of
/// it exceed this by far.
const MARGIN_KIB: u64 = 4 << 10;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// RSS once the daemon is idle and its trimmer has run (it trims 1 s after
/// the last piece of work): the smallest of a few samples taken as it settles.
fn settled_rss_kib(pid: u32) -> u64 {
    std::thread::sleep(Duration::from_millis(1500));
    (0..3)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(200));
            rss_kib(pid)
        })
        .min()
        .unwrap()
}

#[test]
fn rss_stays_flat_over_repeated_import_and_remove() {
    let tmp = tempfile::tempdir().unwrap();
    let img = stevedore_e2e::busybox_image(tmp.path());
    let tar = img.oci_tar.to_str().unwrap();
    let d = Daemon::start();
    let started = Instant::now();
    let mut baseline = 0;
    for cycle in 1..=CYCLES {
        d.ctr_ok(&["images", "import", tar]);
        d.ctr_ok(&["images", "rm", "--sync", &img.name]);
        if cycle == WARM_CYCLES {
            baseline = settled_rss_kib(d.pid());
        }
    }
    let end = settled_rss_kib(d.pid());
    eprintln!(
        "RSS after cycle {WARM_CYCLES}: {baseline} KiB, after cycle {CYCLES}: {end} KiB \
         ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    assert!(
        end <= baseline + MARGIN_KIB,
        "RSS grew from {baseline} KiB after cycle {WARM_CYCLES} to {end} KiB after cycle \
         {CYCLES} (margin {MARGIN_KIB} KiB)"
    );
}
