//! Addresses to function names, files and lines (the binary's own symbol
//! table and line tables, read by `backtrace`), as profile locations.

use crate::proto::{Builder, Line};
use std::collections::HashMap;

/// Resolves the addresses of one profile; each address once.
pub struct Symbolizer {
    cache: HashMap<usize, u64>,
}

impl Symbolizer {
    pub fn new() -> Symbolizer {
        Symbolizer {
            cache: HashMap::new(),
        }
    }

    /// The location ids of call sites (from [`pcs`], leaf first).
    pub fn stack(&mut self, b: &mut Builder, pcs: &[usize]) -> Vec<u64> {
        pcs.iter()
            .map(|pc| {
                *self
                    .cache
                    .entry(*pc)
                    .or_insert_with(|| b.location(*pc as u64, lines(*pc)))
            })
            .collect()
    }
}

/// Whether a frame's function (any of an address's inlined frames, whose
/// names are short) starts with one of `prefixes`.
fn matches(pc: usize, prefixes: &[&str]) -> bool {
    lines(pc)
        .iter()
        .any(|l| prefixes.iter().any(|s| l.function.starts_with(s)))
}

/// How many frames up to the outermost one matching `prefixes`, plus
/// `then` (a signal handler's frames and its trampoline).
pub fn through(pcs: &[usize], prefixes: &[&str], then: usize) -> usize {
    match pcs.iter().rposition(|pc| matches(*pc, prefixes)) {
        Some(i) => (i + 1 + then).min(pcs.len()),
        None => 0,
    }
}

/// Return addresses point after the call: look up the call itself (the
/// leaf's address is where it was stopped).
pub fn pcs(ips: &[usize]) -> Vec<usize> {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| if i == 0 { *ip } else { ip.saturating_sub(1) })
        .collect()
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new()
    }
}

/// The lines at an address, innermost (inlined) first; an address without
/// symbols becomes its hex value.
pub fn lines(pc: usize) -> Vec<Line> {
    let mut lines = Vec::new();
    backtrace::resolve(pc as *mut std::ffi::c_void, |s| {
        lines.push(Line {
            function: s
                .name()
                .map(|n| readable(&format!("{n:#}")))
                .unwrap_or_else(|| format!("{pc:#x}")),
            file: s
                .filename()
                .map(|f| f.display().to_string())
                .unwrap_or_default(),
            line: s.lineno().map(i64::from).unwrap_or(0),
        });
    });
    if lines.is_empty() {
        lines.push(Line {
            function: format!("{pc:#x}"),
            file: String::new(),
            line: 0,
        });
    }
    lines
}

/// Drop the debug information `backtrace` loaded to resolve names: it is
/// tens of MB for a binary with line tables, and a profile is rare.
pub fn release() {
    backtrace::clear_symbol_cache();
}

/// `<T as Trait>::f` as `T as Trait::f`: pprof shortens names by dropping
/// everything in angle brackets (C++ templates), which would leave `::f`.
pub fn readable(name: &str) -> String {
    if !name.starts_with('<') {
        return name.to_string();
    }
    let mut depth = 0;
    for (i, c) in name.char_indices() {
        match c {
            '<' => depth += 1,
            '>' => {
                depth -= 1;
                if depth == 0 {
                    return format!("{}{}", &name[1..i], &name[i + 1..]);
                }
            }
            _ => {}
        }
    }
    name.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn trait_impls_keep_their_type_through_pprofs_shortening() {
        assert_eq!(
            super::readable("<a::B<C> as d::E>::f"),
            "a::B<C> as d::E::f"
        );
        assert_eq!(super::readable("a::b"), "a::b");
        assert_eq!(super::readable("<unbalanced"), "<unbalanced");
    }
}
