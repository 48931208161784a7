//! The shim's log: lines written to the bundle's `log` FIFO, which the
//! daemon copies into its own log (containerd's shim does the same).
//! Writes never block: a full FIFO drops the line.

use std::io::Write;
use std::sync::{Mutex, OnceLock};

static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

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
