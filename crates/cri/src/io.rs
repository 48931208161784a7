//! Container stdio as containerd's CRI does it: FIFOs the shim writes, read
//! by the daemon, every line written to the container's log in the CRI
//! format (`<RFC3339Nano> <stream> <P|F> <line>`), and copied to attached
//! clients. One reader thread per stream: it blocks in `open` until the
//! shim opens the write end, and ends at EOF when the process is gone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

use crate::store::lock;

/// The FIFO paths of one process ("" where the stream is not used).
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    pub dir: PathBuf,
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

fn mkfifo(p: &Path) -> std::io::Result<()> {
    rustix::fs::mkfifoat(rustix::fs::CWD, p, rustix::fs::Mode::from_raw_mode(0o700))
        .map_err(std::io::Error::from)
}

impl Fifos {
    /// Make FIFOs `<dir>/<id>-stdin|stdout|stderr` (stderr only without a tty).
    pub fn create(dir: &Path, id: &str, stdin: bool, tty: bool) -> std::io::Result<Fifos> {
        std::fs::create_dir_all(dir)?;
        let path = |s: &str| dir.join(format!("{id}-{s}"));
        let mut f = Fifos {
            dir: dir.to_path_buf(),
            ..Default::default()
        };
        if stdin {
            mkfifo(&path("stdin"))?;
            f.stdin = path("stdin").display().to_string();
        }
        mkfifo(&path("stdout"))?;
        f.stdout = path("stdout").display().to_string();
        if !tty {
            mkfifo(&path("stderr"))?;
            f.stderr = path("stderr").display().to_string();
        }
        Ok(f)
    }

    /// Release readers still blocked in `open` (the process never started),
    /// then remove the directory.
    pub fn remove(&self) {
        for p in [&self.stdout, &self.stderr] {
            if !p.is_empty() {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction dropped).
pub fn rfc3339_nano(t: std::time::SystemTime) -> String {
    let s = humantime::format_rfc3339_nanos(t).to_string();
    // "2026-12-07T06:20:00.123456000Z" -> "2026-12-07T06:20:00.123456Z"
    match s.rsplit_once('.') {
        Some((head, frac)) => {
            let digits = frac.trim_end_matches('Z').trim_end_matches('0');
            if digits.is_empty() {
                format!("{head}Z")
            } else {
                format!("{head}.{digits}Z")
            }
        }
        None => s,
    }
}

/// A container's CRI log file, shared by its stdout and stderr readers.
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(Some(f)),
        })
    }

    /// Open the path again (kubelet renamed the file to rotate it).
    pub fn reopen(&self) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(&self.path)?;
        *lock(&self.file) = Some(f);
        Ok(())
    }

    fn write_line(&self, stream: Stream, partial: bool, line: &[u8]) {
        let mut out = Vec::with_capacity(line.len() + 48);
        out.extend_from_slice(rfc3339_nano(std::time::SystemTime::now()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(stream.as_str().as_bytes());
        out.extend_from_slice(if partial { b" P " } else { b" F " });
        out.extend_from_slice(line);
        out.push(b'\n');
        if let Some(f) = lock(&self.file).as_mut() {
            if let Err(e) = f.write_all(&out) {
                tracing::warn!("write container log {}: {e}", self.path.display());
            }
        }
    }
}

/// Cuts a byte stream into CRI log lines: full lines end in `\n` (dropped),
/// longer ones than `max` are cut into partial lines.
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: i64) -> LineSplitter {
        LineSplitter {
            buf: Vec::new(),
            max: if max <= 0 { usize::MAX } else { max as usize },
        }
    }

    /// Feed bytes; `emit(partial, line)` for each complete piece.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(bool, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.buf.extend_from_slice(&data[..i]);
                    self.flush_long(emit);
                    emit(false, &self.buf);
                    self.buf.clear();
                    data = &data[i + 1..];
                }
                None => {
                    self.buf.extend_from_slice(data);
                    self.flush_long(emit);
                    data = &[];
                }
            }
        }
    }

    fn flush_long(&mut self, emit: &mut dyn FnMut(bool, &[u8])) {
        while self.buf.len() > self.max {
            let rest = self.buf.split_off(self.max);
            emit(true, &self.buf);
            self.buf = rest;
        }
    }

    /// The stream ended: what is left is a final line.
    pub fn finish(&mut self, emit: &mut dyn FnMut(bool, &[u8])) {
        if !self.buf.is_empty() {
            emit(false, &self.buf);
            self.buf.clear();
        }
    }
}

/// Output of a running container, for attach.
pub type Chunk = (Stream, Vec<u8>);

/// The IO of one container: its FIFOs, log and attached clients.
pub struct ContainerIo {
    pub fifos: Fifos,
    pub log: Option<Arc<LogFile>>,
    attached: Arc<Mutex<Vec<mpsc::Sender<Chunk>>>>,
    readers: Mutex<Vec<std::thread::JoinHandle<()>>>,
    /// Readers still running; the last one to end closes the attachments.
    live: Arc<std::sync::atomic::AtomicUsize>,
}

impl ContainerIo {
    pub fn new(fifos: Fifos, log_path: &str) -> std::io::Result<ContainerIo> {
        let log = if log_path.is_empty() {
            None
        } else {
            Some(Arc::new(LogFile::open(Path::new(log_path))?))
        };
        Ok(ContainerIo {
            fifos,
            log,
            attached: Arc::new(Mutex::new(Vec::new())),
            readers: Mutex::new(Vec::new()),
            live: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        })
    }

    /// Start the reader threads (before the task opens the FIFOs).
    pub fn start(&self, max_line: i64) {
        let mut readers = lock(&self.readers);
        for (path, stream) in [
            (&self.fifos.stdout, Stream::Stdout),
            (&self.fifos.stderr, Stream::Stderr),
        ] {
            if path.is_empty() {
                continue;
            }
            let path = PathBuf::from(path);
            let log = self.log.clone();
            let attached = self.attached.clone();
            let live = self.live.clone();
            live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let spawned = std::thread::Builder::new()
                .name("cri-log".into())
                .spawn(move || {
                    pump(&path, stream, log, attached.clone(), max_line);
                    if live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                        // the process's output has ended: so do attachments
                        lock(&attached).clear();
                    }
                });
            match spawned {
                Ok(h) => readers.push(h),
                Err(e) => {
                    self.live.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    tracing::warn!("start log reader: {e}")
                }
            }
        }
    }

    /// A receiver of the container's output from now on.
    pub fn subscribe(&self) -> mpsc::Receiver<Chunk> {
        let (tx, rx) = mpsc::channel(64);
        let mut attached = lock(&self.attached);
        if self.live.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            attached.push(tx);
        }
        rx
    }

    /// Whether every reader reached EOF.
    pub fn done(&self) -> bool {
        lock(&self.readers).iter().all(|h| h.is_finished())
    }

    /// Wait (on a blocking thread) until the readers have drained the FIFOs.
    pub fn wait(&self) {
        let handles: Vec<_> = lock(&self.readers).drain(..).collect();
        for h in handles {
            let _ = h.join();
        }
    }

    pub fn reopen_log(&self) -> std::io::Result<()> {
        match &self.log {
            Some(l) => l.reopen(),
            None => Ok(()),
        }
    }
}

fn pump(
    path: &Path,
    stream: Stream,
    log: Option<Arc<LogFile>>,
    attached: Arc<Mutex<Vec<mpsc::Sender<Chunk>>>>,
    max_line: i64,
) {
    // blocks until the shim opens the write end (or `Fifos::remove` does)
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            tracing::debug!("open {}: {e}", path.display());
            return;
        }
    };
    let mut split = LineSplitter::new(max_line);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let data = &buf[..n];
        if let Some(log) = &log {
            split.feed(data, &mut |partial, line| {
                log.write_line(stream, partial, line)
            });
        }
        let subs: Vec<_> = lock(&attached).clone();
        for tx in subs {
            if tx.blocking_send((stream, data.to_vec())).is_err() {
                lock(&attached).retain(|t| !t.same_channel(&tx));
            }
        }
    }
    if let Some(log) = &log {
        split.finish(&mut |partial, line| log.write_line(stream, partial, line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(max: i64, chunks: &[&[u8]]) -> Vec<(bool, String)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        for c in chunks {
            s.feed(c, &mut |p, l| {
                out.push((p, String::from_utf8_lossy(l).into_owned()))
            });
        }
        s.finish(&mut |p, l| out.push((p, String::from_utf8_lossy(l).into_owned())));
        out
    }

    #[test]
    fn lines_are_cut_like_containerd() {
        assert_eq!(
            lines(100, &[b"ab", b"c\nde\n", b"f"]),
            vec![
                (false, "abc".into()),
                (false, "de".into()),
                (false, "f".into())
            ]
        );
        assert_eq!(
            lines(3, &[b"abcdefg\n"]),
            vec![
                (true, "abc".into()),
                (true, "def".into()),
                (false, "g".into())
            ]
        );
        assert_eq!(lines(3, &[b"\n"]), vec![(false, "".into())]);
    }

    #[test]
    fn timestamps_are_rfc3339_nano() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_500_000_000);
        assert_eq!(rfc3339_nano(t), "1970-01-01T00:00:01.5Z");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(2);
        assert_eq!(rfc3339_nano(t), "1970-01-01T00:00:02Z");
    }
}
