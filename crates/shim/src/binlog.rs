//! `binary://` stdio: a logging driver program, as containerd's runc shim
//! runs one (`pkg/process` `NewBinaryIO`, the Go client's `cio.BinaryIO`,
//! nerdctl's log drivers). For `binary:///path/to/driver?key=value&flag`
//! the shim starts `/path/to/driver key value flag ""` with only
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment, stdio on
//! /dev/null, the process's stdout on fd 3, its stderr on fd 4 and a pipe
//! on fd 5 that the driver closes (or writes a byte to) once it is ready;
//! the process starts after that. The driver sees EOF when the process and
//! whatever inherited its output are gone (containerd's shim holds the
//! pipes until the delete); at the process's delete it gets SIGTERM and
//! has 12 s to finish before it is killed (`binaryIOProcTermTimeout`).

use crate::error::{Error, Result};
use crate::reaper::Exit;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a driver may go on after its process was deleted.
const TERM_TIMEOUT: Duration = Duration::from_secs(12);

/// A running logging driver.
pub struct Logger {
    exit: Exit,
}

/// A started driver and the write ends the process gets as its stdout and
/// stderr.
pub struct Started {
    pub stdout: File,
    pub stderr: File,
    pub logger: Logger,
}

/// Whether a stdio path names a logging driver.
pub fn is_binary(path: &str) -> bool {
    path.starts_with("binary://")
}

/// The driver's path and arguments from its URI, as Go's `url.Parse` and
/// `Query()` read them (percent-decoding; each key, then its first value).
pub fn parse(uri: &str) -> Result<(PathBuf, Vec<String>)> {
    let bad = |why: &str| Error::InvalidArgument(format!("binary logging URI {uri:?}: {why}"));
    let rest = uri
        .strip_prefix("binary://")
        .ok_or_else(|| bad("not binary://"))?;
    let rest = rest.split('#').next().unwrap_or(rest);
    let (hostpath, query) = rest.split_once('?').unwrap_or((rest, ""));
    // binary:///path has an empty host; binary://host/path is refused
    let path = hostpath
        .strip_prefix('/')
        .map(|p| format!("/{p}"))
        .ok_or_else(|| bad("the driver must be an absolute path"))?;
    let path = unescape(&path, false).ok_or_else(|| bad("bad escape in the path"))?;
    if path.is_empty() || path == "/" {
        return Err(bad("no driver path"));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = unescape(k, true).ok_or_else(|| bad("bad escape in the query"))?;
        let v = unescape(v, true).ok_or_else(|| bad("bad escape in the query"))?;
        if args.iter().step_by(2).any(|a| *a == k) {
            continue; // Go keeps a key's first value
        }
        args.push(k);
        args.push(v);
    }
    Ok((PathBuf::from(path), args))
}

/// Percent-decoding; `+` is a space in a query.
fn unescape(s: &str, query: bool) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if query => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::io("create pipe", e))
}

/// Start the driver of `uri` for task `id` and wait until it is ready.
pub fn start(uri: &str, id: &str, namespace: &str) -> Result<Started> {
    let (path, args) = parse(uri)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = Command::new(&path);
    cmd.args(&args)
        .env_clear()
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only async-signal-safe calls (fcntl, dup2, close_range)
    unsafe {
        cmd.pre_exec(move || {
            // out of the way of 3..=5 first, then into place (dup2 leaves
            // the copies without CLOEXEC); nothing else of the shim's
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(fds) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (target, h) in (3..).zip(high) {
                if libc::dup2(h, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            libc::syscall(libc::SYS_close_range, 6u32, u32::MAX, 0u32);
            Ok(())
        });
    }
    let (_child, exit) = crate::reaper::spawn(&mut cmd).map_err(|e| {
        Error::Runtime(format!(
            "failed to start binary process {}: {e}",
            path.display()
        ))
    })?;
    drop(cmd);
    drop((out_r, err_r, ready_w));
    let logger = Logger { exit };
    // ready: a byte, or the driver closed fd 5 (EOF); containerd waits as long
    let mut b = [0u8; 1];
    if let Err(e) = rustix::io::read(&ready_r, &mut b) {
        logger.finish();
        return Err(Error::Runtime(format!(
            "failed to read from logging binary {}: {e}",
            path.display()
        )));
    }
    Ok(Started {
        stdout: File::from(out_w),
        stderr: File::from(err_w),
        logger,
    })
}

impl Logger {
    /// The process is deleted (or never started): SIGTERM, so the driver
    /// flushes and exits, then SIGKILL after [`TERM_TIMEOUT`], as
    /// containerd's shim does; waited for on a thread.
    pub fn finish(mut self) {
        if self.exit.try_wait().is_some() {
            return;
        }
        // SAFETY: a plain kill of our own child, not reaped yet
        unsafe { libc::kill(self.exit.pid() as i32, libc::SIGTERM) };
        let spawned = std::thread::Builder::new()
            .name("binlog".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                let deadline = Instant::now() + TERM_TIMEOUT;
                while self.exit.try_wait().is_none() {
                    if Instant::now() >= deadline {
                        // SAFETY: a plain kill of our own child, not reaped yet
                        unsafe { libc::kill(self.exit.pid() as i32, libc::SIGKILL) };
                        self.exit.wait();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        if let Err(e) = spawned {
            crate::log::warn(&format!("cannot wait for the logging binary: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_read_as_containerds_shim_reads_them() {
        let (p, a) =
            parse("binary:///usr/local/bin/log%20drv?tag=a+b&path=%2Ftmp%2Fx&flag").unwrap();
        assert_eq!(p, PathBuf::from("/usr/local/bin/log drv"));
        assert_eq!(a, ["tag", "a b", "path", "/tmp/x", "flag", ""]);
        let (_, a) = parse("binary:///d?k=1&k=2").unwrap();
        assert_eq!(a, ["k", "1"], "a key's first value");
        assert!(parse("binary://host/d").is_err());
        assert!(parse("binary://").is_err());
        assert!(parse("binary:///d?k=%zz").is_err());
    }

    #[test]
    fn the_driver_reads_stdout_and_stderr_on_fds_3_and_4_with_the_task_in_its_env() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = dir.path().join("driver");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\n{{ echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID $# $1=$2 ${{HOME:-nohome}}\"; cat <&3; cat <&4; }} > {}.tmp\nmv {0}.tmp {0}\n",
                out.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let uri = format!("binary://{}?k=v", script.display());
        let mut s = start(&uri, "task1", "ns1").unwrap();
        s.stdout.write_all(b"to stdout\n").unwrap();
        s.stderr.write_all(b"to stderr\n").unwrap();
        drop((s.stdout, s.stderr));
        let mut exit = s.logger.exit;
        assert!(exit.wait().success());
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "ns1/task1 2 k=v nohome\nto stdout\nto stderr\n"
        );
    }
}
