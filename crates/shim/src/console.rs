//! Terminals: the console socket runc sends a pty master to
//! (`--console-socket`), the copy of the master to the client's FIFOs, and
//! window sizes.
//!
//! The socket lives under `/run/stevedore/c/<shim pid>-<n>` and is removed
//! once the master arrived (or the launch failed). Receiving never waits on
//! a runc that has already exited: the caller polls with a timeout.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

const SOCKET_DIR: &str = "/run/stevedore/c";

/// A listening console socket.
pub struct ConsoleSocket {
    /// The path passed to runc.
    pub path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listen on a fresh socket path.
    pub fn new() -> Result<ConsoleSocket> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(SOCKET_DIR);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {SOCKET_DIR}"), e))?;
        let path = dir.join(format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .map_err(|e| Error::io(format!("listen on console socket {}", path.display()), e))?;
        Ok(ConsoleSocket { path, listener })
    }

    /// The pty master if runc connected within `timeout_ms`, else None.
    pub fn try_receive(&self, timeout_ms: i64) -> Result<Option<OwnedFd>> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
        let t = Timespec {
            tv_sec: timeout_ms / 1000,
            tv_nsec: (timeout_ms % 1000) * 1_000_000,
        };
        match poll(&mut fds, Some(&t)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(Error::io("poll console socket", e)),
        }
        self.receive().map(Some)
    }

    fn receive(&self) -> Result<OwnedFd> {
        use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        use std::mem::MaybeUninit;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| Error::io("accept console connection", e))?;
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 4096];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        recvmsg(&conn, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
            .map_err(|e| Error::io("receive console master", e))?;
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(mut fds) = msg {
                if let Some(fd) = fds.next() {
                    return Ok(fd);
                }
            }
        }
        Err(Error::Internal(
            "the OCI runtime sent no console master".into(),
        ))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Copy the pty master to the stdout FIFO (until the last user of the
/// terminal exits) and `stdin` into the master (until the client and
/// CloseIO closed every writer), each on a small thread.
pub fn copy(master: &OwnedFd, stdin: Option<File>, stdout: &str) -> Result<()> {
    let dup = || -> Result<File> {
        Ok(File::from(
            master
                .try_clone()
                .map_err(|e| Error::io("duplicate console master", e))?,
        ))
    };
    if !stdout.is_empty() {
        // read-write: opening never blocks on a client that has not opened
        // yet (a file:// log is created and appended to)
        let out = crate::process::open_output(stdout, "stdout")?;
        crate::process::copy_thread(dup()?, out, "console-out")?;
    }
    if let Some(input) = stdin {
        crate::process::copy_thread(input, dup()?, "console-in")?;
    }
    Ok(())
}

/// Set a terminal's window size.
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let ws = rustix::termios::Winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    rustix::termios::tcsetwinsize(master, ws).map_err(|e| Error::io("resize pty", e))
}
