//! A dump of every thread's stack, the Rust daemon's counterpart of Go's
//! goroutine dump. Each thread is asked, one at a time, with a real-time
//! signal (`tgkill`) whose handler records its own return addresses into a
//! static buffer; the requester waits (bounded) and resolves them.
//!
//! The handler is installed with `SA_RESTART`: an interrupted `read`,
//! `write` or `futex` resumes; calls that never restart (`epoll_wait`,
//! `nanosleep`) return `EINTR`, which tokio's driver and std's sleep retry.

use crate::proto::Builder;
use crate::symbols::{self, lines, pcs, through, Symbolizer};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

const DEPTH: usize = 128;
/// How long one thread may take to answer (a thread stopped in the kernel
/// for longer is reported without a stack).
const ANSWER_TIMEOUT: Duration = Duration::from_millis(200);

static TARGET: AtomicI32 = AtomicI32::new(0);
static DONE: AtomicBool = AtomicBool::new(false);
static LEN: AtomicUsize = AtomicUsize::new(0);
#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicUsize = AtomicUsize::new(0);
static IPS: [AtomicUsize; DEPTH] = [ZERO; DEPTH];
/// One dump at a time (the buffer above is shared).
static DUMP: Mutex<()> = Mutex::new(());
static INSTALL: Once = Once::new();

/// One thread's stack.
pub struct Thread {
    pub tid: i32,
    pub name: String,
    /// The kernel's state letter and word from `/proc/self/task/<tid>/stat`.
    pub state: String,
    /// Return addresses, leaf first; empty when the thread did not answer.
    pub ips: Vec<usize>,
    /// The stack was taken in the signal handler (not by the dumping
    /// thread itself): a trampoline frame follows the handler's.
    signalled: bool,
}

impl Thread {
    /// Frames after the dump's own.
    fn skipped(&self) -> usize {
        let then = usize::from(self.signalled);
        through(&pcs(&self.ips), DUMP_FRAMES, then)
    }
}

fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

extern "C" fn on_signal(_: libc::c_int) {
    // SAFETY: gettid is async-signal-safe
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    if TARGET.load(Ordering::Acquire) != me {
        return;
    }
    let mut n = 0;
    // SAFETY: the dump lock serialises requests; only this thread writes
    // the buffer until DONE is set
    unsafe {
        backtrace::trace_unsynchronized(|f| {
            IPS[n].store(f.ip() as usize, Ordering::Relaxed);
            n += 1;
            n < DEPTH
        });
    }
    LEN.store(n, Ordering::Relaxed);
    DONE.store(true, Ordering::Release);
}

fn install() -> Result<(), crate::Error> {
    let mut err = None;
    INSTALL.call_once(|| {
        // SAFETY: a plain handler with an empty mask; sigaction copies it
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(signal(), &sa, std::ptr::null_mut()) != 0 {
                err = Some(std::io::Error::last_os_error());
            }
        }
    });
    match err {
        Some(e) => Err(crate::Error::Threads(format!(
            "install signal handler: {e}"
        ))),
        None => Ok(()),
    }
}

/// Every thread of this process with its stack (blocking: up to
/// [`ANSWER_TIMEOUT`] per thread that does not answer).
pub fn threads() -> Result<Vec<Thread>, crate::Error> {
    install()?;
    let _one = DUMP.lock().unwrap_or_else(|p| p.into_inner());
    let me = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let pid = std::process::id() as i32;
    let mut tids: Vec<i32> = std::fs::read_dir("/proc/self/task")
        .map_err(|e| crate::Error::Threads(format!("list /proc/self/task: {e}")))?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    let mut out = Vec::with_capacity(tids.len());
    for tid in tids {
        let (name, state) = stat(tid);
        let ips = if tid == me {
            let mut v = Vec::new();
            backtrace::trace(|f| {
                v.push(f.ip() as usize);
                v.len() < DEPTH
            });
            v
        } else {
            ask(pid, tid)
        };
        out.push(Thread {
            tid,
            name,
            state,
            ips,
            signalled: tid != me,
        });
    }
    Ok(out)
}

fn ask(pid: i32, tid: i32) -> Vec<usize> {
    DONE.store(false, Ordering::Release);
    TARGET.store(tid, Ordering::Release);
    // SAFETY: tgkill with our own pid only reaches our threads
    let sent = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal()) } == 0;
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    let mut answered = false;
    while sent && Instant::now() < deadline {
        if DONE.load(Ordering::Acquire) {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    TARGET.store(0, Ordering::Release);
    if !answered {
        return Vec::new();
    }
    let n = LEN.load(Ordering::Relaxed).min(DEPTH);
    IPS[..n].iter().map(|i| i.load(Ordering::Relaxed)).collect()
}

/// A thread's name and state from `/proc/self/task/<tid>/stat`.
fn stat(tid: i32) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // pid (comm) S ...: comm may hold spaces and parentheses
    let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
        return (String::new(), "?".into());
    };
    let name = text[open + 1..close].to_string();
    let state = match text[close + 1..].split_whitespace().next() {
        Some("R") => "R (running)",
        Some("S") => "S (sleeping)",
        Some("D") => "D (disk sleep)",
        Some("T") => "T (stopped)",
        Some("t") => "t (tracing stop)",
        Some("Z") => "Z (zombie)",
        _ => "?",
    };
    (name, state.into())
}

/// Leading frames of the handler and the signal trampoline.
const DUMP_FRAMES: &[&str] = &["stevedore_profile::threads::"];

/// The text dump (Go's `goroutine?debug=2` shape: a header per thread, then
/// one function per line with its file and line indented).
pub fn text() -> Result<String, crate::Error> {
    let threads = threads()?;
    let mut s = String::new();
    for t in &threads {
        let _ = writeln!(s, "thread {} [{}] \"{}\":", t.tid, t.state, t.name);
        if t.ips.is_empty() {
            let _ = writeln!(s, "\t(no answer within {ANSWER_TIMEOUT:?})");
        }
        for pc in pcs(&t.ips).into_iter().skip(t.skipped()) {
            for l in lines(pc) {
                let _ = writeln!(s, "{}()", l.function);
                if l.file.is_empty() {
                    let _ = writeln!(s, "\t{pc:#x}");
                } else {
                    let _ = writeln!(s, "\t{}:{} {pc:#x}", l.file, l.line);
                }
            }
        }
        s.push('\n');
    }
    symbols::release();
    Ok(s)
}

/// The dump as a pprof profile (Go's `goroutine` profile: one sample per
/// distinct stack, valued by how many threads share it).
pub fn profile() -> Result<Vec<u8>, crate::Error> {
    let threads = threads()?;
    let mut b = Builder::new(&[("goroutine", "count")], ("goroutine", "count"), 1);
    let mut sym = Symbolizer::new();
    for t in &threads {
        let pcs = pcs(&t.ips);
        let locs = sym.stack(&mut b, &pcs[t.skipped()..]);
        b.sample(&locs, &[1], &[("thread", &t.name)]);
    }
    symbols::release();
    Ok(b.finish())
}
