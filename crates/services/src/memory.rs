//! Giving memory back after bursts of work: services call [`work_done`] when
//! a transfer, layer apply or GC ends; the trimmer started by [`spawn_trimmer`]
//! waits until the daemon has been quiet for [`QUIET`] and then returns the
//! allocator's free pages to the kernel (`stevedore_sys::malloc::trim`), once
//! per burst. The signal is process-wide because the allocator is.

use std::sync::OnceLock;
use std::time::Duration;
use tokio::sync::Notify;

/// How long after the last finished piece of work the trim runs: long enough
/// that the layers of one pull are one burst, short enough that the daemon is
/// small again soon after it.
pub const QUIET: Duration = Duration::from_secs(1);

fn signal() -> &'static Notify {
    static SIGNAL: OnceLock<Notify> = OnceLock::new();
    SIGNAL.get_or_init(Notify::new)
}

/// A burst of allocation-heavy work (blob write, layer apply, GC) has ended.
pub fn work_done() {
    signal().notify_one();
}

/// Start the trimmer on the current tokio runtime.
pub fn spawn_trimmer() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async {
        loop {
            signal().notified().await;
            // wait until QUIET passes without another signal
            while tokio::time::timeout(QUIET, signal().notified())
                .await
                .is_ok()
            {}
            let _ = tokio::task::spawn_blocking(stevedore_sys::malloc::trim).await;
        }
    })
}
