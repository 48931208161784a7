//! The OCI runtime driver: runc's command line as containerd's go-runc
//! builds it (`--root <root>/<namespace> --log <bundle>/log.json
//! --log-format json`), and runc's failures in containerd's wording.
//!
//! runc writes its log lines to `log.json`, never to the container's stdio;
//! on failure the last `"level":"error"` line of that file is the message
//! (containerd's `getLastRuntimeError`), prefixed with what failed
//! (`OCI runtime create failed: ...`, `runtimeError` in containerd's
//! `pkg/process`). Kill errors are classified like `checkKillError`.

use crate::error::{go_os_error, Error, Result};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Where the shim keeps runc's state: one root per namespace.
pub const RUNC_ROOT: &str = "/run/stevedore/runc";

/// The file in the bundle naming the OCI runtime chosen at create, so
/// `delete` after a crash uses the same one.
pub const OCI_RUNTIME_FILE: &str = "oci-runtime";

/// The file in the bundle naming runc's state root chosen at create (the
/// runc options' `root`), for the same reason.
pub const RUNC_ROOT_FILE: &str = "runc-root";

/// The default OCI runtime: `STEVEDORE_OCI_RUNTIME` or runc.
pub fn default_runtime() -> String {
    std::env::var("STEVEDORE_OCI_RUNTIME").unwrap_or_else(|_| "runc".into())
}

/// How one OCI runtime binary is run for one task.
#[derive(Debug, Clone)]
pub struct Runc {
    /// The binary: `runc`, a name looked up in `PATH`, or a path.
    pub binary: String,
    /// `--root`: `<root>/<namespace>`, root being the runc options' `root`
    /// or [`RUNC_ROOT`].
    pub root: PathBuf,
    /// `--log`: `<bundle>/log.json`.
    pub log: PathBuf,
}

/// How a runc invocation failed, before it is worded for a client.
#[derive(Debug)]
pub enum Failure {
    /// The binary could not be run: Go's `exec: "<name>": ...` text.
    Spawn(String),
    /// runc ran and failed: go-runc's `<binary> did not terminate
    /// successfully: exit status N[: <output>]`.
    Exit { text: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Spawn(s) => f.write_str(s),
            Failure::Exit { text } => f.write_str(text),
        }
    }
}

impl Runc {
    /// The runtime `binary` keeping its state under `root/<namespace>`.
    pub fn with_root(binary: &str, root: &Path, namespace: &str, bundle: &Path) -> Runc {
        Runc {
            binary: binary.to_string(),
            root: root.join(namespace),
            log: bundle.join("log.json"),
        }
    }

    /// The runtime recorded in `bundle` at create, else the defaults.
    pub fn recorded(namespace: &str, bundle: &Path) -> Runc {
        let read = |f: &str| {
            std::fs::read_to_string(bundle.join(f))
                .ok()
                .filter(|s| !s.is_empty())
        };
        let binary = read(OCI_RUNTIME_FILE).unwrap_or_else(default_runtime);
        let root = read(RUNC_ROOT_FILE).unwrap_or_else(|| RUNC_ROOT.to_string());
        Self::with_root(&binary, Path::new(&root), namespace, bundle)
    }

    /// The runtime the runc options choose, recorded in `bundle` (what they
    /// leave unset keeps its default).
    pub fn choose(
        opts: &crate::options::RuncOptions,
        namespace: &str,
        bundle: &Path,
    ) -> Result<Runc> {
        let record = |f: &str, v: &str| {
            let p = bundle.join(f);
            std::fs::write(&p, v).map_err(|e| Error::io(format!("record {}", p.display()), e))
        };
        if let Some(name) = &opts.binary_name {
            record(OCI_RUNTIME_FILE, name)?;
        }
        if let Some(root) = &opts.root {
            record(RUNC_ROOT_FILE, root)?;
        }
        Ok(Self::recorded(namespace, bundle))
    }

    /// Whether the runtime is runc (by name: `runc` or a path ending in
    /// `/runc`), whose state layout the shim may rely on.
    pub fn is_runc(&self) -> bool {
        Path::new(&self.binary).file_name() == Some(std::ffi::OsStr::new("runc"))
    }

    /// The binary's path, as Go's `exec.LookPath` finds it.
    pub fn look_path(&self) -> Result<PathBuf, Failure> {
        look_path(&self.binary)
    }

    /// A command with the global flags; stdio and arguments are the caller's.
    pub fn command(&self, args: &[&str]) -> Result<Command, Failure> {
        let mut cmd = Command::new(self.look_path()?);
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"])
            .args(args)
            .env_remove("NOTIFY_SOCKET");
        Ok(cmd)
    }

    /// Run a command that has no stdio of a container: its output is
    /// collected (stdout returned, stdout+stderr in the failure like
    /// go-runc's `runOrError`).
    pub fn run(&self, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        let t0 = std::time::Instant::now();
        let r = self.invoke(args, input);
        crate::log::timed(|| format!("{} {}", self.binary, args.join(" ")), t0);
        r
    }

    fn invoke(&self, args: &[&str], input: Option<&[u8]>) -> Result<Vec<u8>, Failure> {
        use std::io::Write;
        let mut cmd = self.command(args)?;
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let (mut child, mut exit) =
            crate::reaper::spawn(&mut cmd).map_err(|e| self.spawn_failure(&e))?;
        if let (Some(data), Some(mut w)) = (input, child.stdin.take()) {
            // a runc that exits early closes the pipe: its status says why
            let _ = w.write_all(data);
        }
        let (mut output, stderr) = read_both(&mut child).map_err(|e| Failure::Exit {
            text: format!("read the output of {}: {}", self.binary, go_os_error(&e)),
        })?;
        let status = exit.wait();
        if status.success() {
            return Ok(output);
        }
        output.extend_from_slice(&stderr);
        Err(Failure::Exit {
            text: format!(
                "{}: {}",
                self.exit_text(&status),
                String::from_utf8_lossy(&output)
            ),
        })
    }

    /// go-runc's `<binary> did not terminate successfully: exit status N`.
    pub fn exit_text(&self, status: &std::process::ExitStatus) -> String {
        let code = crate::reaper::exit_code(*status);
        format!(
            "{} did not terminate successfully: exit status {code}",
            self.binary
        )
    }

    /// Go's wording for a binary that could not be started.
    pub fn spawn_failure(&self, e: &std::io::Error) -> Failure {
        Failure::Spawn(format!("fork/exec {}: {}", self.binary, go_os_error(e)))
    }

    /// The message of the last error runc logged (`getLastRuntimeError`).
    pub fn last_error(&self) -> std::io::Result<String> {
        let text = std::fs::read_to_string(&self.log)?;
        Ok(last_error_in(&text))
    }

    /// containerd's `runtimeError`: `<what>: <runc's last logged error>`,
    /// or the invocation's own failure when runc logged none.
    pub fn runtime_error(&self, failure: Failure, what: &str) -> Error {
        Error::Runtime(match self.last_error() {
            Err(e) => format!(
                "{what}: unable to retrieve OCI runtime error (open {}: {}): {failure}",
                self.log.display(),
                go_os_error(&e)
            ),
            Ok(msg) if msg.is_empty() => format!("{what}: {failure}"),
            Ok(msg) => format!("{what}: {msg}"),
        })
    }
}

/// The last `"level":"error"` message of a runc JSON log, trimmed.
pub fn last_error_in(log: &str) -> String {
    let mut last = String::new();
    for v in serde_json::Deserializer::from_str(log)
        .into_iter::<serde_json::Value>()
        .map_while(|v| v.ok())
    {
        if v["level"] == "error" {
            if let Some(m) = v["msg"].as_str() {
                last = m.trim().to_string();
            }
        }
    }
    last
}

/// containerd's `checkKillError`: a process or container that is gone is
/// NotFound; anything else says the kill failed.
pub fn kill_error(failure: Failure) -> Error {
    let text = failure.to_string();
    if text.contains("os: process already finished")
        || text.contains("container not running")
        || text.to_lowercase().contains("no such process")
    {
        Error::NotFound("process already finished: not found".into())
    } else if text.contains("does not exist") {
        Error::NotFound("no such container: not found".into())
    } else {
        Error::Runtime(format!("unknown error after kill: {text}"))
    }
}

/// Go's `exec.LookPath`: a name with a slash is used as is, others are
/// searched in `PATH`; failures read like Go's.
pub fn look_path(name: &str) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return match std::fs::metadata(&p) {
            Ok(_) if executable(&p) => Ok(p),
            Ok(_) => Err(Failure::Spawn(format!("exec: {name:?}: permission denied"))),
            Err(e) => Err(Failure::Spawn(format!(
                "exec: {name:?}: stat {name}: {}",
                go_os_error(&e)
            ))),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| executable(p))
        .ok_or_else(|| {
            Failure::Spawn(format!(
                "exec: {name:?}: executable file not found in $PATH"
            ))
        })
}

/// A child's stdout and stderr, read to their ends (stderr on a thread so
/// that neither pipe fills while the other is read), as `wait_with_output`
/// does; the exit is the reaper's.
fn read_both(child: &mut std::process::Child) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use std::io::Read;
    let err = child.stderr.take().map(|mut e| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).map(|_| buf)
        })
    });
    let mut out = Vec::new();
    if let Some(o) = child.stdout.as_mut() {
        o.read_to_end(&mut out)?;
    }
    let err = match err {
        Some(t) => t
            .join()
            .map_err(|_| std::io::Error::other("stderr reader panicked"))??,
        None => Vec::new(),
    };
    Ok((out, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_is_the_message() {
        let log = concat!(
            r#"{"level":"warning","msg":"w","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"first","time":"t"}"#,
            "\n",
            r#"{"level":"error","msg":"runc create failed: unable to start container process: exec: \"/bin/x\": stat /bin/x: no such file or directory ","time":"t"}"#,
            "\n",
            r#"{"level":"info","msg":"later","time":"t"}"#,
        );
        assert_eq!(
            last_error_in(log),
            r#"runc create failed: unable to start container process: exec: "/bin/x": stat /bin/x: no such file or directory"#
        );
        assert_eq!(last_error_in(""), "");
    }

    #[test]
    fn runtime_errors_are_worded_like_containerd() {
        let dir = tempfile::tempdir().unwrap();
        let r = Runc::with_root("runc", Path::new(RUNC_ROOT), "ns", dir.path());
        let fail = || Failure::Exit {
            text: "runc did not terminate successfully: exit status 1".into(),
        };
        // no log at all
        let e = r.runtime_error(fail(), "OCI runtime create failed");
        assert_eq!(
            e.to_string(),
            format!(
                "OCI runtime create failed: unable to retrieve OCI runtime error (open {}/log.json: no such file or directory): runc did not terminate successfully: exit status 1",
                dir.path().display()
            )
        );
        std::fs::write(&r.log, r#"{"level":"error","msg":"boom","time":"t"}"#).unwrap();
        let e = r.runtime_error(fail(), "OCI runtime exec failed");
        assert_eq!(e.to_string(), "OCI runtime exec failed: boom");
        assert_eq!(e.code(), containerd_shim_protos::ttrpc::Code::UNKNOWN);
    }

    #[test]
    fn kill_errors_of_gone_containers_are_not_found() {
        let exit = |t: &str| Failure::Exit {
            text: format!("runc did not terminate successfully: exit status 1: {t}"),
        };
        for t in [
            "container does not exist",
            "container not running",
            "no such process",
        ] {
            assert!(matches!(kill_error(exit(t)), Error::NotFound(_)), "{t}");
        }
        assert!(matches!(kill_error(exit("other")), Error::Runtime(_)));
    }

    #[test]
    fn a_missing_binary_reads_like_go() {
        let e = look_path("stevedore-no-such-runtime").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"exec: "stevedore-no-such-runtime": executable file not found in $PATH"#
        );
        let e = look_path("/no/such/runc").unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"exec: "/no/such/runc": stat /no/such/runc: no such file or directory"#
        );
    }
}
