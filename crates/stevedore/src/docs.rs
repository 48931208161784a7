//! Shell completions and man pages, generated from the CLI's own clap
//! definitions, so they can never disagree with what `stevedore` accepts.

use anyhow::{Context, Result};
use clap::CommandFactory;
use std::path::Path;

/// Write the completion script for `shell` to stdout.
pub fn completion(shell: clap_complete::Shell) -> Result<()> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "stevedore", &mut std::io::stdout());
    Ok(())
}

/// Write `stevedore.1` and one page per subcommand (`stevedore-images-pull.1`,
/// ...) into `dir`, creating it if needed. Returns how many pages.
pub fn man_pages(dir: &Path) -> Result<usize> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let cmd = crate::Cli::command();
    write_pages(&cmd, "stevedore", dir)
}

fn write_pages(cmd: &clap::Command, name: &str, dir: &Path) -> Result<usize> {
    let page = cmd.clone().name(name.to_string());
    let path = dir.join(format!("{name}.1"));
    let mut out = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .with_context(|| format!("render man page {name}"))?;
    std::fs::write(&path, out).with_context(|| format!("write {}", path.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        if sub.get_name() == "help" {
            continue;
        }
        n += write_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(n)
}
