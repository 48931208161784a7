//! The shim's log: lines written to the bundle's `log` FIFO, which the
//! daemon copies into its own log (containerd's shim does the same).
//! Writes never block: a full FIFO drops the line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

/// `-debug`: debug lines (timings) go to the log too.
static DEBUG: AtomicBool = AtomicBool::new(false);

/// When this program started (`start`; its forked server inherits it).
static BORN: OnceLock<Instant> = OnceLock::new();

/// Note the program's start (first thing in main).
pub fn born() {
    BORN.get_or_init(Instant::now);
}

/// With `-debug`: log how long after the program's start `what` happened
/// (the server's own start-up, as the daemon's "shim started" does not
/// show it).
pub fn since_born(what: &str) {
    if let Some(t) = BORN.get() {
        timed(|| format!("{what} (since the shim started)"), *t);
    }
}

/// Turn debug lines on (the shim runs with `-debug`).
pub fn set_debug(on: bool) {
    DEBUG.store(on, Ordering::Relaxed);
}

/// Open `<bundle>/log` for writing if the daemon created it.
pub fn open(bundle: &std::path::Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(f) = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(bundle.join("log"))
    {
        let _ = LOG.set(Mutex::new(f));
    }
}

/// Log a warning.
pub fn warn(msg: &str) {
    if let Some(f) = LOG.get() {
        if let Ok(mut f) = f.lock() {
            let _ = writeln!(f, "level=warning msg={msg:?}");
        }
    }
}

/// With `-debug`: log how long `what` took since `since` (where a task's
/// start latency goes; nothing is formatted without `-debug`).
pub fn timed(what: impl FnOnce() -> String, since: Instant) {
    if !DEBUG.load(Ordering::Relaxed) {
        return;
    }
    let ms = since.elapsed().as_secs_f64() * 1000.0;
    if let Some(f) = LOG.get() {
        if let Ok(mut f) = f.lock() {
            let _ = writeln!(f, "level=debug msg={:?}", format!("{}: {ms:.1} ms", what()));
        }
    }
}
