//! Signals by name (`SIGTERM`, `TERM`, `term`) or number, as the CLI's
//! `tasks kill` and an image's `StopSignal` give them.

/// The names known here, with their Linux numbers.
pub const NAMES: &[(&str, u32)] = &[
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("KILL", 9),
    ("USR1", 10),
    ("USR2", 12),
    ("TERM", 15),
    ("CONT", 18),
    ("STOP", 19),
    ("WINCH", 28),
];

/// The number of signal `s`; None for an unknown name.
pub fn number(s: &str) -> Option<u32> {
    if let Ok(n) = s.parse::<u32>() {
        return Some(n);
    }
    let name = s.to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(number("9"), Some(9));
        assert_eq!(number("SIGKILL"), Some(9));
        assert_eq!(number("term"), Some(15));
        assert_eq!(number("SIGWINCH"), Some(28));
        assert_eq!(number("BOGUS"), None);
    }
}
