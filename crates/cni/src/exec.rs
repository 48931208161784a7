//! Running one plugin binary with the CNI protocol: find it in the plugin
//! directories, pass the `CNI_*` environment and the network config on stdin,
//! bound the run with a timeout, and turn a failure into the plugin's own
//! CNI error (with its stderr).
//!
//! The plugin runs in its own process group so a timeout kills whatever it
//! started (iptables, ...) too; the group is killed before the plugin is
//! reaped, so its id cannot have been reused. Output is read by helper
//! threads and capped ([`MAX_STDOUT`], [`MAX_STDERR`]); a plugin that exits
//! while something it started still holds its stdout open is waited for only
//! until the deadline.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::PluginError;
use crate::result::CniErrorJson;

/// The most stdout we accept from a plugin (results are a few KiB).
pub const MAX_STDOUT: usize = 1 << 20;
/// The most stderr we keep for an error message.
pub const MAX_STDERR: usize = 16 << 10;

/// Finds and runs plugins.
#[derive(Debug, Clone)]
pub(crate) struct Exec {
    pub bin_dirs: Vec<PathBuf>,
    pub timeout: Duration,
}

impl Exec {
    /// The plugin's binary: the first regular file named `plugin_type` in the plugin dirs.
    pub fn find(&self, plugin_type: &str) -> Result<PathBuf, PluginError> {
        if plugin_type.is_empty() || plugin_type.contains('/') || plugin_type.starts_with('.') {
            return Err(PluginError::InvalidType {
                plugin: plugin_type.to_string(),
                reason: "must be a file name",
            });
        }
        for dir in &self.bin_dirs {
            let candidate = dir.join(plugin_type);
            if std::fs::metadata(&candidate).is_ok_and(|m| m.is_file()) {
                return Ok(candidate);
            }
        }
        Err(PluginError::NotFound {
            plugin: plugin_type.to_string(),
            dirs: self.bin_dirs.clone(),
        })
    }

    /// `CNI_PATH`: the plugin dirs, colon-separated.
    pub fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// Run `path` with `env` (added to ours, minus any inherited `CNI_*`) and
    /// `stdin`; the plugin's stdout on success.
    pub fn run(
        &self,
        path: &Path,
        env: &[(&str, &str)],
        stdin: &[u8],
    ) -> Result<Vec<u8>, PluginError> {
        let deadline = Instant::now() + self.timeout;
        let mut child = self.spawn(path, env)?;
        let io_err = |what, source| PluginError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let (tx, rx) = mpsc::channel::<(Stream, std::io::Result<Vec<u8>>)>();
        if let Some(mut pipe) = child.stdin.take() {
            let data = stdin.to_vec();
            // A plugin may exit without reading stdin: EPIPE is not our error.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&data);
            });
        }
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((Stream::Out, read_capped(out, MAX_STDOUT)));
            });
        }
        if let Some(err) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send((Stream::Err, read_capped(err, MAX_STDERR)));
            });
        }
        drop(tx);

        let status = match wait_until(&mut child, deadline).map_err(|e| io_err("wait", e))? {
            Some(status) => status,
            None => {
                // Kill the group while the plugin is a zombie at worst, so the
                // group id still is the plugin's.
                let pid = rustix::process::Pid::from_raw(child.id() as i32);
                if let Some(pid) = pid {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.kill();
                let _ = child.wait();
                let (_, stderr) = collect(&rx, Instant::now() + Duration::from_millis(500));
                return Err(PluginError::Timeout {
                    path: path.to_path_buf(),
                    timeout: self.timeout,
                    stderr: lossy(&stderr.and_then(Result::ok).unwrap_or_default()),
                });
            }
        };
        let grace = deadline.max(Instant::now() + Duration::from_millis(500));
        let (stdout, stderr) = collect(&rx, grace);
        let stdout = stdout.ok_or_else(|| {
            io_err(
                "stdout",
                std::io::Error::other("still held open after the plugin exited"),
            )
        })?;
        let stdout = stdout.map_err(|e| io_err("read stdout", e))?;
        let stderr = lossy(&stderr.and_then(Result::ok).unwrap_or_default());
        if stdout.len() > MAX_STDOUT {
            return Err(PluginError::BadOutput {
                reason: format!("more than {MAX_STDOUT} bytes on stdout"),
                stderr,
            });
        }
        if status.success() {
            return Ok(stdout);
        }
        Err(plugin_failure(status, &stdout, stderr))
    }

    fn spawn(&self, path: &Path, env: &[(&str, &str)]) -> Result<Child, PluginError> {
        let mut attempt = 0;
        loop {
            let mut cmd = Command::new(path);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("CNI_") {
                    cmd.env_remove(k);
                }
            }
            cmd.envs(env.iter().copied())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            match cmd.spawn() {
                Ok(child) => return Ok(child),
                // libcni retries while a plugin binary is being replaced
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 5 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(source) => {
                    return Err(PluginError::Spawn {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

type Collected = Option<std::io::Result<Vec<u8>>>;

/// The readers' results that arrive before `deadline`.
fn collect(
    rx: &mpsc::Receiver<(Stream, std::io::Result<Vec<u8>>)>,
    deadline: Instant,
) -> (Collected, Collected) {
    let (mut out, mut err) = (None, None);
    while out.is_none() || err.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((Stream::Out, r)) => out = Some(r),
            Ok((Stream::Err, r)) => err = Some(r),
            Err(_) => break,
        }
    }
    (out, err)
}

/// Poll the child until it exits or the deadline passes (`None`).
fn wait_until(child: &mut Child, deadline: Instant) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Read up to `cap + 1` bytes (so callers can tell "too much"), then drain.
fn read_capped(mut r: impl Read, cap: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    (&mut r).take(cap as u64 + 1).read_to_end(&mut buf)?;
    std::io::copy(&mut r, &mut std::io::sink())?;
    Ok(buf)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// The error of a plugin that exited non-zero: its CNI error JSON when it
/// printed one (libcni's rules), with its stderr attached.
fn plugin_failure(status: ExitStatus, stdout: &[u8], stderr: String) -> PluginError {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        let msg = if stderr.is_empty() {
            format!("netplugin failed with no error message: {status}")
        } else {
            "netplugin failed".to_string()
        };
        return PluginError::Failed {
            code: 0,
            msg,
            details: String::new(),
            stderr,
        };
    }
    match serde_json::from_slice::<CniErrorJson>(stdout) {
        Ok(e) => PluginError::Failed {
            code: e.code,
            msg: if e.msg.is_empty() {
                format!(
                    "netplugin failed with code {} and no message ({status})",
                    e.code
                )
            } else {
                e.msg
            },
            details: e.details,
            stderr,
        },
        Err(perr) => PluginError::Failed {
            code: 0,
            msg: format!(
                "netplugin failed but error parsing its diagnostic message {:?}: {perr}",
                lossy(stdout)
            ),
            details: String::new(),
            stderr,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn exec(dir: &Path, timeout: Duration) -> Exec {
        Exec {
            bin_dirs: vec![dir.join("missing"), dir.to_path_buf()],
            timeout,
        }
    }

    #[test]
    fn passes_env_and_stdin_and_returns_stdout() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "echoer",
            r#"printf '%s|%s|' "$CNI_COMMAND" "$CNI_IFNAME"; cat"#,
        );
        let e = exec(dir.path(), Duration::from_secs(10));
        let path = e.find("echoer").unwrap();
        let out = e
            .run(
                &path,
                &[("CNI_COMMAND", "ADD"), ("CNI_IFNAME", "eth0")],
                b"{}",
            )
            .unwrap();
        assert_eq!(out, b"ADD|eth0|{}");
    }

    #[test]
    fn missing_plugin_names_plugin_and_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let e = exec(dir.path(), Duration::from_secs(1));
        let err = e.find("nothere").unwrap_err().to_string();
        assert!(err.contains("\"nothere\""), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(matches!(
            e.find("../sh"),
            Err(PluginError::InvalidType { .. })
        ));
    }

    #[test]
    fn failure_carries_cni_error_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        script(
            dir.path(),
            "failer",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no bridge"}'; echo oops >&2; exit 1"#,
        );
        script(dir.path(), "crasher", "echo 'panic: boom' >&2; exit 2");
        script(dir.path(), "garbler", "echo 'not json'; exit 1");
        let e = exec(dir.path(), Duration::from_secs(10));
        let err = e.run(&e.find("failer").unwrap(), &[], b"").unwrap_err();
        assert!(matches!(err, PluginError::Failed { code: 7, .. }));
        assert_eq!(err.to_string(), "bad config; no bridge (stderr: oops)");
        let err = e.run(&e.find("crasher").unwrap(), &[], b"").unwrap_err();
        assert_eq!(err.to_string(), "netplugin failed (stderr: panic: boom)");
        let err = e.run(&e.find("garbler").unwrap(), &[], b"").unwrap_err();
        assert!(
            err.to_string()
                .contains("error parsing its diagnostic message \"not json\""),
            "{err}"
        );
    }

    #[test]
    fn timeout_kills_plugin_and_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        script(
            dir.path(),
            "sleeper",
            &format!(
                "echo started >&2; (sleep 2; touch {}) & sleep 30",
                marker.display()
            ),
        );
        let e = exec(dir.path(), Duration::from_millis(300));
        let t = Instant::now();
        let err = e.run(&e.find("sleeper").unwrap(), &[], b"").unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(matches!(err, PluginError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("stderr: started"), "{err}");
        std::thread::sleep(Duration::from_millis(2500));
        assert!(!marker.exists(), "the plugin's child outlived the timeout");
    }

    #[test]
    fn inherited_cni_variables_do_not_leak() {
        let dir = tempfile::tempdir().unwrap();
        script(dir.path(), "envdump", "env | grep '^CNI_' | sort");
        let e = exec(dir.path(), Duration::from_secs(10));
        let out = e
            .run(&e.find("envdump").unwrap(), &[("CNI_COMMAND", "DEL")], b"")
            .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "CNI_COMMAND=DEL\n");
    }
}
