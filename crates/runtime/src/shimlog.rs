//! The shim's log FIFO (`<bundle>/log`): the shim opens it for writing at
//! start (and blocks until a reader exists), so the daemon creates it and
//! copies what arrives into its own log, as containerd does.

use crate::bundle::Bundle;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Create the FIFO and start copying it to the daemon log; the copier stops
/// once the bundle is gone.
pub(crate) fn open(bundle: &Bundle) {
    let path = bundle.path.join("log");
    if let Err(e) = stevedore_sys::mkfifo(&path, 0o700) {
        tracing::warn!(id = bundle.id, error = %e, "shim log fifo");
        return;
    }
    // read-write: never blocks, never sees EOF while the shim restarts its writer
    let rx = match tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(rx) => rx,
        Err(e) => {
            tracing::warn!(id = bundle.id, error = %e, "open shim log fifo");
            return;
        }
    };
    let (id, dir) = (bundle.id.clone(), bundle.path.clone());
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(rx).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(l)) => tracing::debug!(target: "shim", id, "{l}"),
                    _ => break,
                },
                _ = tokio::time::sleep(Duration::from_secs(5)) => {
                    if !dir.exists() {
                        break;
                    }
                }
            }
        }
    });
}

/// After a daemon restart, read the log FIFO of a reconnected shim again.
pub(crate) fn reopen(bundle: &Bundle) {
    open(bundle)
}
