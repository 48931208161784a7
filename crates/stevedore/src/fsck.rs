//! `stevedore check`: the offline consistency check of a stopped daemon's
//! root (the `stevedore-fsck` library). Unlike every other subcommand it
//! does not talk to the socket: it reads the root directly, and refuses
//! while stevedored holds it. Exit codes: 0 no problems (leftovers are
//! allowed), 1 problems found (also when `--repair` fixed them: run it again
//! to confirm), 2 the check itself failed.

use crate::output::{print_json, Format};
use clap::Args;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use stevedore_fsck::{check, Finding, Options, Report};

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 no problems (leftovers a crash leaves are allowed), 1 problems found, 2 the check failed (e.g. stevedored is running on this root)."
)]
pub struct CheckArgs {
    /// The daemon's root directory (stevedored must be stopped).
    #[arg(long, default_value = "/var/lib/stevedore")]
    root: PathBuf,
    /// Remove what is corrupt or orphaned (default: a dry run that prints what would go).
    #[arg(long)]
    repair: bool,
}

/// Run the check and print the report; the exit code says how it went.
pub fn run(args: &CheckArgs, fmt: Format) -> ExitCode {
    let report = match check(&Options {
        root: args.root.clone(),
        repair: args.repair,
    }) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("stevedore: check {}: {e}", args.root.display());
            return ExitCode::from(2);
        }
    };
    match fmt {
        Format::Json => print_json(&to_json(&report)),
        Format::Table => print_human(&report),
    }
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn to_json(r: &Report) -> serde_json::Value {
    json!({
        "root": r.root,
        "clean": r.is_clean(),
        "repair": r.repair,
        "checked": r.checked,
        "problems": r.problems().count(),
        "leftovers": r.leftovers().count(),
        "by_kind": r.counts_by_kind(),
        "findings": r.findings,
    })
}

fn by_kind<'a>(it: impl Iterator<Item = &'a Finding>) -> String {
    let mut m: BTreeMap<&str, usize> = BTreeMap::new();
    for f in it {
        *m.entry(f.kind).or_default() += 1;
    }
    m.iter()
        .map(|(k, n)| format!("{k} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_section(title: &str, items: &[&Finding], repair: bool) {
    if items.is_empty() {
        return;
    }
    println!("{title}: {}", items.len());
    for f in items {
        println!("  {:<28} {}", f.kind, f.object);
        println!("      {}", f.detail);
        if !f.repair.is_empty() {
            let verb = match (repair, f.repaired) {
                (true, true) => "repaired",
                (true, false) => "NOT repaired",
                (false, _) => "would",
            };
            println!("      {verb}: {}", f.repair);
            if let Some(e) = &f.repair_error {
                println!("      error: {e}");
            }
        }
    }
}

fn print_human(r: &Report) {
    let counts: Vec<String> = r.checked.iter().map(|(k, n)| format!("{n} {k}")).collect();
    println!(
        "checked {}: {} ({} objects)",
        r.root.display(),
        counts.join(", "),
        r.total_checked()
    );
    let problems: Vec<&Finding> = r.problems().collect();
    let leftovers: Vec<&Finding> = r.leftovers().collect();
    print_section("problems", &problems, r.repair);
    print_section(
        "leftovers (left by a crash; the daemon removes them itself)",
        &leftovers,
        r.repair,
    );
    let mut summary = format!("{} problem(s)", problems.len());
    if !problems.is_empty() {
        summary.push_str(&format!(" ({})", by_kind(problems.iter().copied())));
    }
    summary.push_str(&format!(", {} leftover(s)", leftovers.len()));
    if !leftovers.is_empty() {
        summary.push_str(&format!(" ({})", by_kind(leftovers.iter().copied())));
    }
    println!("summary: {summary}");
    let fixable = r.findings.iter().filter(|f| !f.repair.is_empty()).count();
    if r.repair {
        let done = r.findings.iter().filter(|f| f.repaired).count();
        println!("repair: {done} of {fixable} finding(s) repaired");
    } else if fixable > 0 {
        println!(
            "dry run: nothing was changed; `stevedore check --repair` acts on {fixable} finding(s)"
        );
    }
}
