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
    /// Its `binary://` logging driver.
    pub logger: Option<crate::binlog::Logger>,
    /// Its exit, from the reaper.
    pub exit: crate::reaper::Exit,
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
    /// The `binary://` logging driver, finished when the process is deleted.
    pub logger: Option<crate::binlog::Logger>,
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
                logger: None,
                stdin_closed: false,
            }),
            done: watch::channel(false).0,
        }
    }

    /// The mutable state (never held across an await).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record a launch; what remains is the wait for its exit.
    pub fn launched(&self, l: Launched) -> crate::reaper::Exit {
        let mut s = self.state();
        s.pid = l.pid;
        s.console = l.console.map(Arc::new);
        s.logger = l.logger;
        // a CloseIO that raced the launch still closes stdin
        if !s.stdin_closed {
            s.stdin = l.stdin;
        }
        l.exit
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

    /// The process is deleted: its logging driver finishes (binlog.rs).
    pub fn finish_logger(&self) {
        if let Some(l) = self.state().logger.take() {
            l.finish();
        }
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
    let id = match kind {
        Kind::Init { id, .. } | Kind::Exec { id, .. } => id,
    };
    // (runc's stdin, stdout, stderr), the stderr copy, runc's own output
    let mut stderr_copy: Option<(File, File)> = None;
    let mut runc_output: Option<File> = None;
    let mut logger = None;
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
        let binary = [&io.stdout, &io.stderr]
            .into_iter()
            .find(|p| crate::binlog::is_binary(p));
        let (out, err): (Stdio, Stdio) = if let Some(uri) = binary {
            // a logging driver takes both streams (runc's own text too,
            // as with containerd)
            let started = crate::binlog::start(uri, &io.process_id, &io.namespace)?;
            logger = Some(started.logger);
            (started.stdout.into(), started.stderr.into())
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
    args.push(id.to_string());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = runc
        .command(&arg_refs)
        .map_err(|f| runc.runtime_error(f, what))?;
    let [i, o, e] = stdio;
    cmd.stdin(i).stdout(o).stderr(e);
    let t0 = std::time::Instant::now();
    let spawned = crate::reaper::spawn(&mut cmd);
    // our copies of the process's stdio close here: only the process keeps them
    drop(cmd);
    let (_child, mut exit) = match spawned {
        Ok(s) => s,
        Err(e) => {
            if let Some(l) = logger {
                l.finish();
            }
            return Err(runc.runtime_error(runc.spawn_failure(&e), what));
        }
    };

    let mut master = None;
    let status = match &console {
        None => exit.wait(),
        Some(c) => loop {
            if master.is_none() {
                master = c.try_receive(50)?;
            }
            match exit.try_wait() {
                Some(st) => {
                    if master.is_none() && st.success() {
                        master = c.try_receive(0)?;
                    }
                    break st;
                }
                None if master.is_some() => break exit.wait(),
                None => {}
            }
        },
    };
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
        if let Some(l) = logger {
            l.finish();
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
        logger,
        exit: crate::reaper::watch(pid, t0),
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
