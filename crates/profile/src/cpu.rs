//! CPU profiles: `pprof` (tikv/pprof-rs) samples every thread's stack on
//! SIGPROF (`setitimer(ITIMER_PROF)`, CPU time), and the samples become Go's
//! CPU profile (`samples/count`, `cpu/nanoseconds`, one per period).

use crate::proto::{Builder, Line};
use crate::Error;
use std::time::Duration;

/// Go's default sampling rate (`runtime.SetCPUProfileRate(100)`).
pub const DEFAULT_HZ: i32 = 100;

/// Leading frames that belong to the profiler's signal handler.
const HANDLER_FRAMES: &[&str] = &[
    "pprof::",
    "<pprof::",
    "backtrace::",
    "<backtrace::",
    "__restore_rt",
];

/// Profile the whole process for `duration` (this thread sleeps meanwhile:
/// run it on a blocking thread). One profile at a time: a second gets
/// [`Error::Busy`].
pub fn profile(duration: Duration, hz: i32) -> Result<Vec<u8>, Error> {
    let guard = pprof::ProfilerGuardBuilder::default()
        .frequency(hz)
        // never unwind from inside these: their unwind tables or locks are
        // not safe to use from a signal handler
        .blocklist(&["libc", "libgcc", "pthread", "vdso"])
        .build()
        .map_err(|e| match e {
            pprof::Error::Running => Error::Busy,
            e => Error::Cpu(e.to_string()),
        })?;
    std::thread::sleep(duration);
    let report = guard
        .report()
        .build()
        .map_err(|e| Error::Cpu(e.to_string()));
    drop(guard);
    let report = report?;
    let period = 1_000_000_000 / i64::from(report.timing.frequency.max(1));
    let mut b = Builder::new(
        &[("samples", "count"), ("cpu", "nanoseconds")],
        ("cpu", "nanoseconds"),
        period,
    );
    b.duration(report.timing.duration);
    for (frames, count) in &report.data {
        let mut locs = Vec::with_capacity(frames.frames.len());
        let mut leading = true;
        for frame in &frames.frames {
            let lines: Vec<Line> = frame
                .iter()
                .map(|s| Line {
                    function: crate::symbols::readable(&s.name()),
                    file: s.filename().into_owned(),
                    line: i64::from(s.lineno()),
                })
                .collect();
            if lines.is_empty() {
                continue;
            }
            if leading
                && lines
                    .iter()
                    .any(|l| HANDLER_FRAMES.iter().any(|h| l.function.starts_with(h)))
            {
                continue;
            }
            leading = false;
            let addr = frame
                .first()
                .and_then(|s| s.addr)
                .map(|a| a as u64)
                .unwrap_or(0);
            locs.push(b.location(addr, lines));
        }
        let count = *count as i64;
        b.sample(
            &locs,
            &[count, count * period],
            &[("thread", &frames.thread_name_or_id())],
        );
    }
    drop(report);
    crate::symbols::release();
    Ok(b.finish())
}
