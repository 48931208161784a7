//! The server's reaper. The shim server is the child subreaper of what it
//! starts (runc, and the containers runc leaves to it), so a descendant
//! that outlives its parent becomes its child: a host-PID container's
//! processes after the kill-all, a daemon a container forked. containerd's
//! shim reaps every one of them (`reaper.Default`, `sys.Reap`), and so does
//! this: one thread waits for any child, reaps it and hands its status to
//! whoever watches that pid; exits nobody watches are reaped all the same.
//!
//! Every child the server spawns goes through [`spawn`], which registers
//! the pid before the reaper can take its exit (std's `Child::wait` would
//! find nothing to wait for). A pid runc reports (a container's init, an
//! exec'd process) is watched with [`watch`] once runc's pid file is read;
//! a process that exited before that, as a fast exec can, left its status
//! here, kept for [`KEEP_UNCLAIMED`]. Before [`start`] (the `start`,
//! `delete` and `info` actions, unit tests) nothing reaps in the
//! background and [`Exit`] waits for its own pid.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How long an exit nobody watched is kept for a later [`watch`].
pub const KEEP_UNCLAIMED: Duration = Duration::from_secs(30);
/// At most this many unclaimed exits are kept (the oldest go first).
const MAX_UNCLAIMED: usize = 4096;

#[derive(Default)]
struct State {
    watchers: HashMap<u32, Sender<ExitStatus>>,
    /// Exits reaped with nobody watching: when, and the status.
    unclaimed: HashMap<u32, (Instant, ExitStatus)>,
    /// Bumped by every spawn and watch: the reaper, finding no child, sleeps
    /// until this changes.
    generation: u64,
}

struct Reaper {
    state: Mutex<State>,
    changed: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

impl Reaper {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Start reaping every child of this process on a thread of its own. Call
/// once, in the process that is the subreaper, before it spawns anything.
pub fn start() -> std::io::Result<()> {
    let mut fresh = false;
    REAPER.get_or_init(|| {
        fresh = true;
        Reaper {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    });
    if !fresh {
        return Ok(());
    }
    std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(128 * 1024)
        .spawn(reap_forever)
        .map(|_| ())
}

/// How a child or a watched pid ends.
pub struct Exit {
    pid: u32,
    how: How,
}

enum How {
    /// The reaper sends the status.
    Watched(Receiver<ExitStatus>),
    /// No reaper runs: waitpid on the pid itself.
    Direct,
    Done(ExitStatus),
}

impl Exit {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Block until the process exited; its status.
    pub fn wait(&mut self) -> ExitStatus {
        let status = match &self.how {
            How::Done(s) => *s,
            How::Watched(rx) => rx.recv().unwrap_or_else(|_| lost()),
            How::Direct => wait_direct(self.pid, 0).unwrap_or_else(lost),
        };
        self.how = How::Done(status);
        status
    }

    /// The status if the process exited, without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        let status = match &self.how {
            How::Done(s) => *s,
            How::Watched(rx) => match rx.try_recv() {
                Ok(s) => s,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => lost(),
            },
            How::Direct => wait_direct(self.pid, libc::WNOHANG)?,
        };
        self.how = How::Done(status);
        Some(status)
    }
}

/// The status of a process whose exit went missing: containerd's 255.
fn lost() -> ExitStatus {
    ExitStatus::from_raw(255 << 8)
}

/// waitpid(pid); None when WNOHANG found it running.
fn wait_direct(pid: u32, flags: i32) -> Option<ExitStatus> {
    let mut raw = 0;
    loop {
        // SAFETY: waitpid writes only the status int we own
        let r = unsafe { libc::waitpid(pid as i32, &mut raw, flags) };
        if r == pid as i32 {
            return Some(ExitStatus::from_raw(raw));
        }
        if r == 0 {
            return None;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Some(lost());
        }
    }
}

/// Spawn a command whose exit the reaper will deliver. The returned
/// `Child` is for its stdio only: never wait on it (its exit is the
/// reaper's), use the `Exit`.
pub fn spawn(cmd: &mut Command) -> std::io::Result<(Child, Exit)> {
    let Some(r) = REAPER.get() else {
        let child = cmd.spawn()?;
        let pid = child.id();
        return Ok((
            child,
            Exit {
                pid,
                how: How::Direct,
            },
        ));
    };
    // the reaper takes an exit only under this lock: registered before
    // it can reap the child however fast the child exits
    let mut st = r.lock();
    let child = cmd.spawn()?;
    let pid = child.id();
    let (tx, rx) = channel();
    st.watchers.insert(pid, tx);
    st.generation += 1;
    drop(st);
    r.changed.notify_all();
    Ok((
        child,
        Exit {
            pid,
            how: How::Watched(rx),
        },
    ))
}

/// Watch a pid another program started that is (or was) a child of ours:
/// one runc reported. An exit of that pid reaped since `since` (the
/// start of the runc call that made it) is returned at once.
pub fn watch(pid: u32, since: Instant) -> Exit {
    let Some(r) = REAPER.get() else {
        return Exit {
            pid,
            how: How::Direct,
        };
    };
    let mut st = r.lock();
    if let Some((at, status)) = st.unclaimed.remove(&pid) {
        if at >= since {
            return Exit {
                pid,
                how: How::Done(status),
            };
        }
    }
    let (tx, rx) = channel();
    st.watchers.insert(pid, tx);
    st.generation += 1;
    drop(st);
    r.changed.notify_all();
    Exit {
        pid,
        how: How::Watched(rx),
    }
}

fn reap_forever() {
    let r = REAPER.get().expect("reaper started");
    loop {
        let generation = r.lock().generation;
        // SAFETY: an all-zero siginfo_t is valid; waitid fills it
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // wait for an exited child without reaping it: it is reaped below,
        // under the lock, so spawn() always registers its child first
        // SAFETY: waitid writes only into `info`
        let rc = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if rc < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EINTR) => {}
                Some(libc::ECHILD) => {
                    // no child: sleep until something is spawned or watched
                    let st = r.lock();
                    let _ = r
                        .changed
                        .wait_timeout_while(st, Duration::from_secs(1), |s| {
                            s.generation == generation
                        });
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
            continue;
        }
        // SAFETY: waitid succeeded for a child: si_pid is set
        let pid = unsafe { info.si_pid() };
        if pid <= 0 {
            continue;
        }
        let mut st = r.lock();
        let mut raw = 0;
        // SAFETY: waitpid writes only the status int we own
        let got = unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) };
        if got != pid {
            // reaped by someone else (std's spawn, when exec failed)
            continue;
        }
        let status = ExitStatus::from_raw(raw);
        let pid = pid as u32;
        if let Some(tx) = st.watchers.remove(&pid) {
            let _ = tx.send(status);
            continue;
        }
        let now = Instant::now();
        st.unclaimed
            .retain(|_, (at, _)| now.duration_since(*at) < KEEP_UNCLAIMED);
        if st.unclaimed.len() >= MAX_UNCLAIMED {
            if let Some(oldest) = st
                .unclaimed
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(p, _)| *p)
            {
                st.unclaimed.remove(&oldest);
            }
        }
        st.unclaimed.insert(pid, (now, status));
    }
}

/// containerd's exit status: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> u32 {
    if let Some(code) = status.code() {
        return code as u32;
    }
    match status.signal() {
        Some(sig) => 128 + sig as u32,
        None => 255,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    /// The scenario runs in a child process of the test binary: a reaper
    /// waiting for any child would take the children of other tests.
    const CHILD_ENV: &str = "STEVEDORE_SHIM_REAPER_TEST";

    fn state_of(pid: u32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit(')')
            .next()?
            .split_whitespace()
            .next()?
            .chars()
            .next()
    }

    fn scenario() {
        rustix::process::set_child_subreaper(Some(rustix::process::getpid())).unwrap();
        start().unwrap();
        // a spawned child's status arrives through its Exit
        let (_c, mut exit) = spawn(Command::new("sh").args(["-c", "exit 3"])).unwrap();
        assert_eq!(exit.wait().code(), Some(3));
        let (_c, mut exit) = spawn(
            Command::new("sh")
                .args(["-c", "kill -9 $$"])
                .stdin(Stdio::null()),
        )
        .unwrap();
        assert_eq!(exit_code(exit.wait()), 137);
        // orphans reparented to us are reaped though nobody watches them
        let since = Instant::now();
        let out = {
            let (child, mut exit) = spawn(
                Command::new("sh")
                    .args([
                        "-c",
                        "sleep 0.3 >/dev/null & echo $!; sleep 0.3 >/dev/null & echo $!",
                    ])
                    .stdout(Stdio::piped()),
            )
            .unwrap();
            let mut s = String::new();
            std::io::Read::read_to_string(&mut child.stdout.unwrap(), &mut s).unwrap();
            assert!(exit.wait().success());
            s
        };
        let orphans: Vec<u32> = out.split_whitespace().map(|p| p.parse().unwrap()).collect();
        assert_eq!(orphans.len(), 2, "{out:?}");
        let deadline = Instant::now() + Duration::from_secs(10);
        for &orphan in &orphans {
            while state_of(orphan).is_some() {
                assert!(
                    Instant::now() < deadline,
                    "orphan {orphan} not reaped: state {:?}",
                    state_of(orphan)
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // an exit reaped before anyone watched is there for a watch that
        // started before it, not for one that started after
        assert!(watch(orphans[0], since).wait().success());
        let mut stale = watch(orphans[1], Instant::now());
        assert_eq!(stale.try_wait(), None, "an exit from before the watch");
        // a watch before the exit gets it when it comes
        let (child, mut exit) = spawn(
            Command::new("sh")
                .args(["-c", "(sleep 1; exit 5) >/dev/null & echo $!"])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut child.stdout.unwrap(), &mut s).unwrap();
        exit.wait();
        let late: u32 = s.trim().parse().unwrap();
        let mut w = watch(late, since);
        assert_eq!(w.try_wait(), None, "still running");
        assert_eq!(w.wait().code(), Some(5));
    }

    #[test]
    fn reaps_every_child_and_delivers_the_watched_ones() {
        if std::env::var_os(CHILD_ENV).is_some() {
            scenario();
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "reaper::tests::reaps_every_child_and_delivers_the_watched_ones",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the scenario did not run: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    #[test]
    fn without_the_reaper_an_exit_waits_for_its_own_pid() {
        let (_c, mut exit) = spawn(Command::new("sh").args(["-c", "exit 7"])).unwrap();
        assert_eq!(exit.wait().code(), Some(7));
        assert_eq!(exit.try_wait().and_then(|s| s.code()), Some(7));
    }
}
