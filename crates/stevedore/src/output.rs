//! Output: aligned tables for people, JSON for programs.

use clap::ValueEnum;
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// A table with a header row; columns are padded to align.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate().take(n) {
                if i + 1 == n {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{c:<w$}   ", w = widths[i]));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

pub fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("json serialises")
    );
}

/// `k=v,k2=v2`, sorted, or `-` when empty (like ctr).
pub fn labels_cell<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let mut v: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// Removal of several objects: each removed name is printed, each failure
/// reported, and the whole fails at the end if any did.
pub struct Removals {
    noun: &'static str,
    failed: usize,
}

impl Removals {
    pub fn new(noun: &'static str) -> Self {
        Removals { noun, failed: 0 }
    }

    /// Record the outcome of removing `name`.
    pub fn done(&mut self, name: &str, result: anyhow::Result<()>) {
        match result {
            Ok(()) => println!("{name}"),
            Err(e) => {
                self.failed += 1;
                eprintln!("stevedore: {e:#}");
            }
        }
    }

    pub fn finish(self) -> anyhow::Result<()> {
        if self.failed > 0 {
            anyhow::bail!("{} {}(s) could not be removed", self.failed, self.noun);
        }
        Ok(())
    }
}

/// A byte count for people: 1.5 MiB.
pub fn human_size(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human_size(12), "12 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 30), "3.0 GiB");
    }

    #[test]
    fn aligns_columns() {
        let mut t = Table::new(&["A", "LONGER"]);
        t.row(vec!["xxxxx".into(), "1".into()]);
        assert_eq!(t.render(), "A       LONGER\nxxxxx   1\n");
    }
}
