//! The task's processes (init and execs), and the ONE path that launches
//! either: stdio, console, `runc create` or `runc exec --detach`, pid file.
//!
//! Stdio without a terminal: the client's stdin and stdout FIFOs are the
//! process's own stdin and stdout (no copy). stderr goes through a pipe the
//! shim copies to the client's stderr FIFO, because runc shares the
//! container's stderr and prints its own failure there: on a failed launch
//! the pipe is dropped, so runc's text never reaches the client (containerd
//! copies every stream for the same reason). When stdout and stderr are the
//! same FIFO both go through that one pipe, in order.
//!
//! stdin: the shim opens the FIFO's read end for runc and keeps a write end
//! (containerd's `openStdin`), so the process sees EOF only once the client
//! closed its end *and* asked for it with CloseIO; a client that detaches
//! without CloseIO leaves stdin open, and a process that reads before the
//! client opened the FIFO does not see a premature EOF.

use crate::console::{self, ConsoleSocket};
use crate::error::{Error, Result};
use crate::runc::{Failure, Runc};
use std::fs::{File, OpenOptions};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tokio::sync::watch;

/// Where a process's stdio goes: FIFO paths (empty: none) and a terminal.
#[derive(Debug, Clone, Default)]
pub struct Io {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
    /// The task's namespace (`CONTAINER_NAMESPACE` of a logging binary).
    pub namespace: String,
    /// The container id for its init, the exec id for an exec
    /// (`CONTAINER_ID` of a logging binary, as containerd's shim sets it).
    pub process_id: String,
}

/// What to launch.
pub enum Kind<'a> {
    /// `runc create --bundle <bundle> <id>`.
    Init { id: &'a str, bundle: &'a Path },
    /// `runc exec --detach --process <spec> <id>`.
    Exec { id: &'a str, spec: &'a Path },
}

/// A launched process.
pub struct Launched {
    pub pid: u32,
    /// The pty master, with a terminal.
    pub console: Option<OwnedFd>,
    /// The shim's write end of the stdin FIFO (closed by CloseIO).
    pub stdin: Option<OwnedFd>,
}

/// A process's lifecycle state (containerd's task status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

/// What changes over a process's life.
pub struct State {
    /// 0 until launched.
    pub pid: u32,
    pub status: Status,
    /// Exit status and time once reaped.
    pub exit: Option<(u32, SystemTime)>,
    pub console: Option<Arc<OwnedFd>>,
    pub stdin: Option<OwnedFd>,
    /// CloseIO arrived (possibly while the process was being launched).
    pub stdin_closed: bool,
}

/// The init process (exec id "") or an exec'd process.
pub struct Process {
    pub exec_id: String,
    pub io: Io,
    /// The exec'd process's OCI process spec (JSON); empty for init.
    pub spec: Vec<u8>,
    state: Mutex<State>,
    done: watch::Sender<bool>,
}

impl Process {
    /// A process not launched yet.
    pub fn new(exec_id: &str, io: Io, spec: Vec<u8>) -> Process {
        Process {
            exec_id: exec_id.to_string(),
            io,
            spec,
            state: Mutex::new(State {
                pid: 0,
                status: Status::Created,
                exit: None,
                console: None,
                stdin: None,
                stdin_closed: false,
            }),
            done: watch::channel(false).0,
        }
    }

    /// The mutable state (never held across an await).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a launch.
    pub fn launched(&self, l: Launched) {
        let mut s = self.state();
        s.pid = l.pid;
        s.console = l.console.map(Arc::new);
        // a CloseIO that raced the launch still closes stdin
        if !s.stdin_closed {
            s.stdin = l.stdin;
        }
    }

    /// Record the exit and wake waiters.
    pub fn set_exited(&self, status: u32, at: SystemTime) {
        {
            let mut s = self.state();
            s.status = Status::Stopped;
            s.exit = Some((status, at));
        }
        self.done.send_replace(true);
    }

    /// Wake waiters of a process that will never run (deleted unstarted).
    pub fn release_waiters(&self) {
        self.done.send_replace(true);
    }

    /// Wait until the process exited (or was deleted unstarted).
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        // the sender lives as long as `self`
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Drop the shim's end of stdin: the process sees EOF once the client
    /// closed its end too.
    pub fn close_stdin(&self) {
        let mut s = self.state();
        s.stdin_closed = true;
        s.stdin = None;
    }
}

/// Open a stdin FIFO without waiting for a writer: the read end for the
/// process and the shim's write end that keeps it from seeing EOF early.
fn open_stdin(path: &str) -> Result<(File, OwnedFd)> {
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| Error::InvalidArgument(format!("open stdin {path}: {e}")))?;
    // a reader exists (ours), so a non-blocking write open succeeds
    let writer = OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(|e| Error::InvalidArgument(format!("open stdin {path}: {e}")))?;
    let fl = rustix::fs::fcntl_getfl(&reader).map_err(|e| Error::io("stdin flags", e))?;
    rustix::fs::fcntl_setfl(&reader, fl - rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| Error::io("stdin flags", e))?;
    Ok((reader, writer.into()))
}

/// Open an output FIFO (or file) read-write, so opening never blocks.
/// A `file://` URI (the Go client's `cio.LogFile`) is a log file, created
/// with its directory and appended to, as containerd's runc shim does;
/// other URI schemes (`binary://` logging drivers) are not supported.
pub fn open_output(path: &str, what: &str) -> Result<File> {
    if let Some(rest) = path.strip_prefix("file://") {
        let file = Path::new(rest.split('?').next().unwrap_or(rest));
        if let Some(dir) = file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::InvalidArgument(format!("open {what} {path}: {e}")))?;
        }
        return OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(file)
            .map_err(|e| Error::InvalidArgument(format!("open {what} {path}: {e}")));
    }
    if path.starts_with("binary://") {
        return Err(Error::InvalidArgument(format!(
            "open {what} {path}: a logging binary takes stdout and stderr without a terminal"
        )));
    }
    if let Some((scheme, _)) = path.split_once("://") {
        return Err(Error::InvalidArgument(format!(
            "open {what} {path}: unsupported stdio scheme {scheme:?} (FIFO paths and file:// are)"
        )));
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::InvalidArgument(format!("open {what} {path}: {e}")))
}

/// `%XX` escapes (and `+` as a space in a query) of a URI, decoded.
fn uri_decode(s: &str, query: bool) -> String {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if query => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A `binary://<path>?<k>=<v>&...` stdio URI (the Go client's
/// `cio.BinaryIO`, nerdctl's log drivers), started as containerd's runc
/// shim starts it: `<path> <k> <v> ...` with `CONTAINER_ID` and
/// `CONTAINER_NAMESPACE` set, the task's stdout on fd 3, stderr on fd 4 and
/// a pipe on fd 5 it closes once ready (waited for here). It exits on EOF,
/// when the process's (and runc's) write ends are gone; a thread reaps it.
/// Returns the write ends for the process's stdout and stderr.
fn start_logger(uri: &str, id: &str, ns: &str) -> Result<(File, File)> {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let rest = uri.strip_prefix("binary://").unwrap_or(uri);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let path = uri_decode(path, false);
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(uri_decode(k, true));
        let v = uri_decode(v, true);
        if !v.is_empty() {
            args.push(v);
        }
    }
    // close-on-exec: only the copies on 3, 4, 5 reach the binary (a stray
    // copy of fd 5's write end would keep the ready wait from ending)
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("create pipe", e))
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = std::process::Command::new(&path);
    cmd.args(&args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", ns)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (fcntl,
    // dup2) on fds this process owns
    unsafe {
        cmd.pre_exec(move || {
            // copies above 10 first (close-on-exec), so no target fd is
            // overwritten before it was copied, then onto 3, 4, 5
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
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::InvalidArgument(format!("start logging binary {path:?} of {uri}: {e}"))
    })?;
    drop((out_r, err_r, ready_w));
    // ready: the binary closed fd 5 (or exited)
    let _ = File::from(ready_r).read(&mut [0u8; 1]);
    std::thread::Builder::new()
        .name("logger-reaper".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = child.wait();
        })
        .map_err(|e| Error::io("spawn logger reaper", e))?;
    Ok((File::from(out_w), File::from(err_w)))
}

fn null() -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| Error::io("open /dev/null", e))
}

/// Copy `from` into `to` on a small thread until EOF or a write error.
pub fn copy_thread(mut from: File, mut to: File, name: &str) -> Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
        })
        .map(|_| ())
        .map_err(|e| Error::io(format!("spawn {name} thread"), e))
}

/// Launch a process (blocking: run it on a blocking thread).
pub fn launch(runc: &Runc, kind: Kind<'_>, io: &Io, pidfile: &Path) -> Result<Launched> {
    let (what, mut args): (&str, Vec<String>) = match &kind {
        Kind::Init { bundle, .. } => (
            "OCI runtime create failed",
            vec!["create".into(), "--bundle".into(), path_arg(bundle)],
        ),
        Kind::Exec { spec, .. } => (
            "OCI runtime exec failed",
            vec![
                "exec".into(),
                "--detach".into(),
                "--process".into(),
                path_arg(spec),
            ],
        ),
    };
    args.extend(["--pid-file".into(), path_arg(pidfile)]);
    let _ = std::fs::remove_file(pidfile);

    let stdin = if io.stdin.is_empty() {
        None
    } else {
        Some(open_stdin(&io.stdin)?)
    };
    let (mut stdin_reader, stdin_hold) = match stdin {
        Some((r, w)) => (Some(r), Some(w)),
        None => (None, None),
    };
    let console = if io.terminal {
        Some(ConsoleSocket::new()?)
    } else {
        None
    };
    // (runc's stdin, stdout, stderr), the stderr copy, runc's own output
    let mut stderr_copy: Option<(File, File)> = None;
    let mut runc_output: Option<File> = None;
    let stdio: [Stdio; 3] = if let Some(c) = &console {
        args.extend(["--console-socket".into(), path_arg(&c.path)]);
        let (r, w) = rustix::pipe::pipe().map_err(|e| Error::io("create pipe", e))?;
        runc_output = Some(File::from(r));
        [null()?.into(), null()?.into(), File::from(w).into()]
    } else {
        let input: Stdio = match stdin_reader.take() {
            Some(r) => r.into(),
            None => null()?.into(),
        };
        let (out, err): (Stdio, Stdio) = if io.stdout.starts_with("binary://") {
            let (o, e) = start_logger(&io.stdout, &io.process_id, &io.namespace)?;
            (o.into(), e.into())
        } else if io.stderr.is_empty() {
            let out = if io.stdout.is_empty() {
                null()?
            } else {
                open_output(&io.stdout, "stdout")?
            };
            (out.into(), null()?.into())
        } else {
            let fifo = open_output(&io.stderr, "stderr")?;
            let (r, w) = rustix::pipe::pipe().map_err(|e| Error::io("create pipe", e))?;
            let w = File::from(w);
            let out: Stdio = if io.stdout == io.stderr {
                w.try_clone()
                    .map_err(|e| Error::io("duplicate pipe", e))?
                    .into()
            } else if io.stdout.is_empty() {
                null()?.into()
            } else {
                open_output(&io.stdout, "stdout")?.into()
            };
            stderr_copy = Some((File::from(r), fifo));
            (out, w.into())
        };
        [input, out, err]
    };
    let id = match kind {
        Kind::Init { id, .. } | Kind::Exec { id, .. } => id,
    };
    args.push(id.to_string());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = runc
        .command(&arg_refs)
        .map_err(|f| runc.runtime_error(f, what))?;
    let [i, o, e] = stdio;
    cmd.stdin(i).stdout(o).stderr(e);
    let t0 = std::time::Instant::now();
    let spawned = cmd.spawn();
    // our copies of the process's stdio close here: only the process keeps them
    drop(cmd);
    let mut child = spawned.map_err(|e| runc.runtime_error(runc.spawn_failure(&e), what))?;

    let mut master = None;
    let status = match &console {
        None => child.wait(),
        Some(c) => loop {
            if master.is_none() {
                master = c.try_receive(50)?;
            }
            match child.try_wait() {
                Ok(Some(st)) => {
                    if master.is_none() && st.success() {
                        master = c.try_receive(0)?;
                    }
                    break Ok(st);
                }
                Ok(None) if master.is_some() => break child.wait(),
                Ok(None) => {}
                Err(e) => break Err(e),
            }
        },
    }
    .map_err(|e| Error::io(format!("wait for {}", runc.binary), e))?;
    if !status.success() {
        let mut text = runc.exit_text(&status);
        if let Some(mut out) = runc_output {
            use std::io::Read;
            // what runc wrote; never wait on a writer that outlived it
            let _ = rustix::fs::fcntl_setfl(&out, rustix::fs::OFlags::NONBLOCK);
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            text = format!("{text}: {s}");
        }
        return Err(runc.runtime_error(Failure::Exit { text }, what));
    }
    if let Some(m) = &master {
        console::copy(m, stdin_reader.take(), &io.stdout)?;
    } else if io.terminal {
        return Err(Error::Internal(format!(
            "failed to retrieve console master: {} sent none",
            runc.binary
        )));
    }
    if let Some((from, to)) = stderr_copy {
        copy_thread(from, to, "stderr")?;
    }
    let pid = read_pid_file(pidfile)?;
    crate::log::timed(|| format!("{} {}", runc.binary, args[0]), t0);
    Ok(Launched {
        pid,
        console: master,
        stdin: stdin_hold,
    })
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

/// The pid runc wrote (`runc.ReadPidFile`).
pub fn read_pid_file(path: &Path) -> Result<u32> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!(
                "failed to retrieve OCI runtime container pid from {}",
                path.display()
            ),
            e,
        )
    })?;
    text.trim().parse().map_err(|_| {
        Error::Internal(format!(
            "failed to retrieve OCI runtime container pid: {} holds {text:?}",
            path.display()
        ))
    })
}

/// Wait for a child (the shim is their subreaper) and return containerd's
/// exit status: the code, or 128 + the signal.
pub fn wait_exit(pid: u32) -> u32 {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let Some(p) = Pid::from_raw(pid as i32) else {
        return 255;
    };
    loop {
        match waitpid(Some(p), WaitOptions::empty()) {
            Ok(Some((_, st))) => {
                if let Some(code) = st.exit_status() {
                    return code as u32;
                }
                if let Some(sig) = st.terminating_signal() {
                    return 128 + sig as u32;
                }
            }
            Err(rustix::io::Errno::INTR) => continue,
            _ => return 255,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uri_outputs_are_created_and_appended_like_containerds_shim() {
        use std::io::Write;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("logs/sub/task.log");
        let uri = format!("file://{}", log.display());
        for line in ["one\n", "two\n"] {
            let mut f = open_output(&uri, "stdout").unwrap();
            f.write_all(line.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "one\ntwo\n");
        let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & !0o022, 0o644 & !0o022, "mode {mode:o}");
        let e = open_output("syslog:///x", "stdout").unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("unsupported stdio scheme \"syslog\"")),
            "{e:?}"
        );
    }

    #[test]
    fn binary_uri_starts_the_logging_binary_as_containerds_shim_does() {
        use std::io::Write;
        assert_eq!(uri_decode("a%20b+c%3D", true), "a b c=");
        assert_eq!(uri_decode("/usr/bin/x+y%", false), "/usr/bin/x+y%");
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "echo \"$CONTAINER_NAMESPACE/$CONTAINER_ID\" > {0}; exec 5>&-; cat <&3 >> {0}; cat <&4 >> {0}",
            out.display()
        );
        let uri = format!(
            "binary:///bin/sh?-c={}",
            script
                .bytes()
                .map(|c| match c {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'.' | b'-' =>
                        (c as char).to_string(),
                    b' ' => "+".to_string(),
                    _ => format!("%{c:02X}"),
                })
                .collect::<String>()
        );
        let (mut o, mut e) = start_logger(&uri, "ctr1", "ns1").unwrap();
        // ready: the first line is there before a byte was sent
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "ns1/ctr1\n");
        o.write_all(b"to stdout\n").unwrap();
        e.write_all(b"to stderr\n").unwrap();
        drop((o, e));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let got = std::fs::read_to_string(&out).unwrap();
            if got == "ns1/ctr1\nto stdout\nto stderr\n" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{got:?}");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    #[test]
    fn stdin_sees_eof_only_after_the_shim_end_closes() {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in");
        stevedore_sys::mkfifo(&path, 0o600).unwrap();
        let p = path.display().to_string();
        let (mut reader, hold) = open_stdin(&p).unwrap();
        let mut client = OpenOptions::new().write(true).open(&path).unwrap();
        client.write_all(b"hi").unwrap();
        drop(client);
        let mut buf = [0u8; 8];
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        // the client is gone; the shim's end keeps the FIFO open
        rustix::fs::fcntl_setfl(&reader, rustix::fs::OFlags::NONBLOCK).unwrap();
        assert_eq!(
            reader.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        drop(hold);
        assert_eq!(reader.read(&mut buf).unwrap(), 0, "EOF after CloseIO");
    }
}
