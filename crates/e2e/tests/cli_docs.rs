//! `stevedore completion` and `stevedore man`: generated from the CLI's
//! definitions, checked with the real tools that consume them (bash's
//! programmable completion, groff's man macros).

use std::process::Command;
use stevedore_e2e::{bin_dir, require_tool};

fn stevedore() -> Command {
    Command::new(bin_dir().join("stevedore"))
}

#[test]
fn bash_completion_completes_subcommands_and_flags() {
    let bash = require_tool("bash", "bash");
    let out = stevedore().args(["completion", "bash"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stevedore.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    // what bash offers after `stevedore ima<TAB>` and `stevedore pull --pl<TAB>`
    let complete = |line: &str| -> String {
        let words: Vec<&str> = line.split(' ').collect();
        let probe = format!(
            "source {script}; COMP_WORDS=({words}); COMP_CWORD={cword}; \
             COMP_LINE='{line}'; COMP_POINT={point}; \
             _stevedore stevedore '{last}' '{prev}'; echo \"${{COMPREPLY[@]}}\"",
            script = script.display(),
            words = words.join(" "),
            cword = words.len() - 1,
            point = line.len(),
            last = words[words.len() - 1],
            prev = words[words.len() - 2],
        );
        let o = Command::new(&bash).args(["-c", &probe]).output().unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8(o.stdout).unwrap()
    };
    assert_eq!(complete("stevedore ima").trim(), "images");
    assert!(
        complete("stevedore pull --pl").contains("--plain-http"),
        "pull flags"
    );
    for shell in ["zsh", "fish"] {
        let o = stevedore().args(["completion", shell]).output().unwrap();
        assert!(o.status.success() && !o.stdout.is_empty(), "{shell}: {o:?}");
    }
    let bad = stevedore().args(["completion", "tcsh"]).output().unwrap();
    assert!(!bad.status.success());
}

#[test]
fn man_pages_render_without_warnings() {
    let groff = require_tool("groff", "groff-base");
    let dir = tempfile::tempdir().unwrap();
    let out = stevedore().arg("man").arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut pages: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    pages.sort();
    for want in [
        "stevedore.1",
        "stevedore-pull.1",
        "stevedore-images-import.1",
        "stevedore-tasks-exec.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    for page in &pages {
        let o = Command::new(&groff)
            .args(["-man", "-Tutf8", "-ww"])
            .arg(dir.path().join(page))
            .output()
            .unwrap();
        assert!(o.status.success(), "{page}: {o:?}");
        assert!(
            o.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let top = Command::new(&groff)
        .args(["-man", "-Tutf8"])
        .arg(dir.path().join("stevedore-pull.1"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(text.contains("plain"), "{text}");
}
