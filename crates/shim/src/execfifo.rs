//! Starting a container runc created, as `runc start` does it, without
//! running runc a second time.
//!
//! `runc create` leaves the container's init blocked opening
//! `<runc root>/<id>/exec.fifo` for writing; `runc start` (every runc from
//! 1.0 to 1.5: libcontainer's `Container.exec`) only opens that FIFO for
//! reading, reads the byte init writes, and removes the FIFO (runc tells a
//! created container from a running one by it). Poststart hooks run at
//! create, not here. Doing those three steps in the shim saves a runc start
//! (a Go program's start-up, ~6 ms here) per container start. Anything
//! unexpected (no FIFO, not a FIFO, no byte, init gone) is left to
//! `runc start` itself, so its state checks and error text stay runc's.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

/// How often the wait for init's byte checks whether init is gone (runc's
/// own interval).
const CHECK: Duration = Duration::from_millis(100);

/// Start the created container `id` under runc's state root `root`:
/// Ok(true) once init has its go; Ok(false) when this is not a runc
/// container waiting to start (let `runc start` answer). `gone` tells
/// whether init has exited.
pub fn start(root: &Path, id: &str, gone: impl Fn() -> bool) -> std::io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    use rustix::fs::{fstat, open, FileType, Mode, OFlags};
    let path = root.join(id).join("exec.fifo");
    let fd = match open(
        &path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(fstat(&fd)?.st_mode) != FileType::Fifo {
        return Ok(false);
    }
    let timeout = Timespec {
        tv_sec: 0,
        tv_nsec: CHECK.as_nanos() as i64,
    };
    loop {
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ready = match poll(&mut fds, Some(&timeout)) {
            Ok(n) => n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        // the byte, or init gone: a last look (init may have written and
        // exited between two checks, as runc allows)
        let last = !ready && gone();
        if ready || last {
            let mut byte = [0u8; 16];
            match rustix::io::read(fd.as_fd(), &mut byte) {
                Ok(n) if n > 0 => {
                    // init has its go whatever follows: never run `runc
                    // start` after this (it would call the container
                    // running and fail)
                    match std::fs::remove_file(&path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            crate::log::warn(&format!("started {id}, but its exec.fifo stays: {e}"))
                        }
                    }
                    return Ok(true);
                }
                // EOF: a writer came and went without a byte
                Ok(_) => return Ok(false),
                Err(rustix::io::Errno::AGAIN) if !last => continue,
                Err(rustix::io::Errno::AGAIN) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fifo(dir: &Path, id: &str) -> std::path::PathBuf {
        std::fs::create_dir_all(dir.join(id)).unwrap();
        let p = dir.join(id).join("exec.fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &p,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o622),
            0,
        )
        .unwrap();
        p
    }

    /// What runc init does: open for writing (blocking until a reader),
    /// write "0", close.
    fn init_writes(p: std::path::PathBuf, after: Duration) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            std::thread::sleep(after);
            let mut f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all(b"0").unwrap();
        })
    }

    #[test]
    fn init_waiting_on_the_fifo_is_started_and_the_fifo_removed() {
        let dir = tempfile::tempdir().unwrap();
        for (id, delay) in [("early", 0), ("late", 250)] {
            let p = fifo(dir.path(), id);
            let init = init_writes(p.clone(), Duration::from_millis(delay));
            assert!(start(dir.path(), id, || false).unwrap(), "{id}");
            init.join().unwrap();
            assert!(
                !p.exists(),
                "{id}: runc tells running from created by the FIFO"
            );
        }
    }

    #[test]
    fn no_fifo_or_not_a_fifo_is_left_to_runc() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!start(dir.path(), "absent", || false).unwrap());
        std::fs::create_dir_all(dir.path().join("file")).unwrap();
        std::fs::write(dir.path().join("file/exec.fifo"), "0").unwrap();
        assert!(!start(dir.path(), "file", || false).unwrap());
        assert!(dir.path().join("file/exec.fifo").exists());
    }

    #[test]
    fn init_gone_without_its_byte_is_left_to_runc() {
        let dir = tempfile::tempdir().unwrap();
        let p = fifo(dir.path(), "dead");
        let t0 = std::time::Instant::now();
        assert!(!start(dir.path(), "dead", || true).unwrap());
        assert!(t0.elapsed() < Duration::from_secs(2));
        assert!(p.exists(), "runc start finds it as it was");
        // a writer that closes without a byte
        let p2 = fifo(dir.path(), "nobyte");
        let w = std::thread::spawn(move || {
            drop(std::fs::OpenOptions::new().write(true).open(&p2).unwrap());
        });
        assert!(!start(dir.path(), "nobyte", || false).unwrap());
        w.join().unwrap();
    }
}
