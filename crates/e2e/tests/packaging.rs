//! Running stevedored as a system service: `scripts/install.sh` into a
//! staging root (binaries, default config, unit, tmpfiles entry), the unit
//! checked by systemd's own `systemd-analyze verify` (no warnings), and the
//! `Type=notify` protocol (READY=1 once serving, STOPPING=1 on SIGTERM)
//! spoken to a socket like systemd's.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use stevedore_e2e::{bin_dir, require_tool, Daemon};

fn repo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

#[test]
fn install_script_stages_a_unit_that_systemd_verifies() {
    let analyze = require_tool("systemd-analyze", "systemd");
    let dest = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("BUILD", "0")
        .env("BIN_FROM", bin_dir())
        .env("DESTDIR", dest.path())
        .env("PREFIX", "/usr/local")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "install.sh: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let root = dest.path();
    for b in ["stevedored", "stevedore", "containerd-shim-stevedore-v1"] {
        assert!(
            root.join("usr/local/bin").join(b).is_file(),
            "{b} installed"
        );
    }
    // the default config parses back (the daemon refuses unknown keys)
    let cfg = root.join("etc/stevedore/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("io.containerd.grpc.v1.cri"), "{text}");
    let o = Command::new(root.join("usr/local/bin/stevedored"))
        .arg("--config")
        .arg(&cfg)
        .args(["config", "dump"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // a second run keeps the operator's config
    std::fs::write(&cfg, format!("{text}\n# edited\n")).unwrap();
    let o = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .env("BUILD", "0")
        .env("BIN_FROM", bin_dir())
        .env("DESTDIR", dest.path())
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(std::fs::read_to_string(&cfg)
        .unwrap()
        .ends_with("# edited\n"));
    // systemd's verdict on the unit as installed; ExecStart points into the
    // staging root so the binary it names exists
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/stevedore.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/stevedored --config /etc/stevedore/config.toml")
    );
    for key in [
        "Type=notify",
        "Delegate=yes",
        "KillMode=process",
        "OOMScoreAdjust=-999",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    let staged = dest.path().join("stevedore.service");
    std::fs::write(
        &staged,
        unit.replace(
            "/usr/local/bin/stevedored",
            &root.join("usr/local/bin/stevedored").display().to_string(),
        ),
    )
    .unwrap();
    let o = Command::new(analyze)
        .arg("verify")
        .arg(&staged)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("stevedore.service"))
        .collect();
    assert!(
        warnings.is_empty(),
        "systemd-analyze verify warns: {warnings:#?}"
    );
    assert!(root.join("usr/lib/tmpfiles.d/stevedore.conf").is_file());
    for f in [
        "usr/local/share/bash-completion/completions/stevedore",
        "usr/local/share/zsh/site-functions/_stevedore",
        "usr/local/share/fish/vendor_completions.d/stevedore.fish",
        "usr/local/share/man/man1/stevedore.1",
        "usr/local/share/man/man1/stevedore-run.1",
    ] {
        assert!(root.join(f).is_file(), "{f} not installed");
    }
}

#[test]
fn stevedored_notifies_readiness_and_stopping_like_a_notify_service() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut d = Daemon::start();
    d.stop();
    let mut child = d
        .command()
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within 30 s");
    assert_eq!(&buf[..n], b"READY=1");
    // it serves by then
    assert!(std::os::unix::net::UnixStream::connect(&d.socket).is_ok());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let n = sock.recv(&mut buf).expect("STOPPING=1 after SIGTERM");
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

/// containerd 1.6's own default config (`containerd config default`), its
/// CRI section moved over as is: stevedored starts with it and the CRI
/// plugin initialises.
#[test]
fn containerd_1_6_default_cri_section_is_accepted() {
    let containerd = require_tool("containerd", "containerd");
    let o = Command::new(containerd)
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let text = String::from_utf8(o.stdout).unwrap();
    let mut cri = String::from("version = 2\n");
    let mut keep = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            keep = t.starts_with("[plugins.\"io.containerd.grpc.v1.cri\"");
        }
        if keep {
            cri.push_str(line);
            cri.push('\n');
        }
    }
    assert!(cri.contains("sandbox_image"), "{cri}");
    let d = Daemon::start_with_config(Some(&cri));
    let plugins = d.ctr_ok(&["plugins", "ls"]);
    let line = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_else(|| panic!("{plugins}"));
    assert!(line.trim_end().ends_with("ok"), "{line}\n{}", d.log());
}
