//! containerd's filter grammar, parsed into a matcher over any object that
//! exposes its fields through [`Adaptor`].
//!
//! ```text
//! selectors := selector ("," selector)*
//! selector  := fieldpath (operator value)?
//! fieldpath := field ("." field)*
//! field     := quoted | [A-Za-z0-9_]+
//! operator  := "==" | "!=" | "~="
//! value     := quoted | [^\s,]+
//! quoted    := "..." (Go string escapes); after ~= also /.../ and |...|
//! ```
//! Several filter strings are or-ed; the selectors of one string are and-ed.
//! Bad input yields an InvalidArgument error that shows where parsing stopped,
//! in containerd's format: `[before >|at|< after]: message`.

use crate::error::Error;
use regex::Regex;

/// Exposes an object's fields to filters. Returns None when the field is absent.
pub trait Adaptor {
    fn field(&self, path: &[String]) -> Option<String>;
}

impl<F: Fn(&[String]) -> Option<String>> Adaptor for F {
    fn field(&self, path: &[String]) -> Option<String> {
        self(path)
    }
}

/// The compiled size a client's `~=` value may reach.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A `~=` value compiled as containerd compiles it (Go's `regexp`, RE2
/// syntax): Perl classes (`\d \w \s \b` and their negations) match ASCII
/// only, and `[` inside a bracket class is a literal (Rust's regex reads
/// it as a nested class) unless it opens `[:name:]`. What Go refuses may
/// still compile here; the compiled size is bounded.
fn go_regexp(pattern: &str) -> Result<Regex, regex::Error> {
    let mut out = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    // a `]` right after `[` or `[^` is a literal
    let mut class_start = false;
    while let Some(c) = chars.next() {
        let at_start = std::mem::take(&mut class_start);
        match c {
            '\\' => {
                let Some(e) = chars.next() else {
                    out.push('\\');
                    break;
                };
                let ascii = match (e, in_class) {
                    ('d', false) => "[0-9]",
                    ('D', false) => "[^0-9]",
                    ('w', false) => "[0-9A-Za-z_]",
                    ('W', false) => "[^0-9A-Za-z_]",
                    ('s', false) => "[\\t\\n\\f\\r ]",
                    ('S', false) => "[^\\t\\n\\f\\r ]",
                    ('b', false) => "(?-u:\\b)",
                    ('B', false) => "(?-u:\\B)",
                    ('d', true) => "0-9",
                    ('D', true) => "[^0-9]",
                    ('w', true) => "0-9A-Za-z_",
                    ('W', true) => "[^0-9A-Za-z_]",
                    ('s', true) => "\\t\\n\\f\\r ",
                    ('S', true) => "[^\\t\\n\\f\\r ]",
                    _ => "",
                };
                if ascii.is_empty() {
                    out.push('\\');
                    out.push(e);
                } else {
                    out.push_str(ascii);
                }
            }
            '[' if !in_class => {
                out.push('[');
                in_class = true;
                class_start = true;
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
            }
            '[' => {
                if chars.peek() == Some(&':') {
                    // `[:alpha:]` and friends, copied whole
                    out.push('[');
                    for d in chars.by_ref() {
                        out.push(d);
                        if d == ']' {
                            break;
                        }
                    }
                } else {
                    out.push_str("\\[");
                }
            }
            ']' if in_class && !at_start => {
                out.push(']');
                in_class = false;
            }
            ']' if in_class => out.push_str("\\]"),
            // Rust's class set operators are literals in Go
            '&' | '~' | '-' if in_class && chars.peek() == Some(&c) => {
                out.push(c);
                out.push('\\');
                out.push(chars.next().unwrap_or(c));
            }
            _ => out.push(c),
        }
    }
    regex::RegexBuilder::new(&out)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

#[derive(Debug, Clone)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug, Clone)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

impl Selector {
    fn matches(&self, a: &dyn Adaptor) -> bool {
        let v = a.field(&self.path);
        match &self.op {
            Op::Present => v.is_some(),
            Op::Equal(want) => v.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => v.as_deref().unwrap_or("") != want,
            Op::Matches(re) => re.is_match(v.as_deref().unwrap_or("")),
        }
    }
}

/// A parsed set of filters: matches when any filter string matches, and a
/// filter string matches when all its selectors do. Empty matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    any: Vec<Vec<Selector>>,
}

impl Filter {
    /// Parse several filter strings (or-ed). Empty strings match everything.
    pub fn parse_all<S: AsRef<str>>(filters: &[S]) -> Result<Filter, Error> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.is_empty() {
                // containerd's Parse("") is Always: the whole filter matches everything
                return Ok(Filter::default());
            }
            any.push(Parser::new(f).selectors()?);
        }
        Ok(Filter { any })
    }

    /// Parse one filter string.
    pub fn parse(filter: &str) -> Result<Filter, Error> {
        Self::parse_all(&[filter])
    }

    /// True when this filter accepts everything.
    pub fn is_always(&self) -> bool {
        self.any.is_empty()
    }

    pub fn matches(&self, a: &dyn Adaptor) -> bool {
        self.any.is_empty() || self.any.iter().any(|all| all.iter().all(|s| s.matches(a)))
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Eof,
    Quoted(String),
    Value(String),
    Field(String),
    Sep(char),
    Operator(String),
    Illegal(String),
}

struct Parser<'a> {
    input: &'a str,
    pos: usize,
    value_mode: bool,
}

fn is_field_char(c: char) -> bool {
    c == '_' || c.is_ascii_alphanumeric()
}
fn is_quote(c: char) -> bool {
    matches!(c, '"' | '/' | '|')
}
fn is_op_char(c: char) -> bool {
    matches!(c, '=' | '!' | '~')
}
fn is_value_char(c: char) -> bool {
    c != ',' && !c.is_whitespace() && !c.is_control()
}

impl<'a> Parser<'a> {
    fn new(input: &'a str) -> Self {
        Parser {
            input,
            pos: 0,
            value_mode: false,
        }
    }

    fn err(&self, pos: usize, msg: impl std::fmt::Display) -> Error {
        let input = self.input;
        let text = if pos < input.len() {
            let end = input[pos..]
                .chars()
                .next()
                .map(|c| pos + c.len_utf8())
                .unwrap_or(pos);
            format!(
                "[{} >|{}|< {}]: {msg}",
                &input[..pos],
                &input[pos..end],
                &input[end..]
            )
        } else {
            format!("[{input}]: {msg}")
        };
        Error::invalid(format!("filters: parse error: {text}"))
    }

    fn peek_char(&self) -> Option<char> {
        self.input[self.pos..].chars().next()
    }

    /// Next non-space character without consuming it.
    fn peek_significant(&self) -> Option<char> {
        self.input[self.pos..].chars().find(|c| !c.is_whitespace())
    }

    fn scan(&mut self) -> (usize, Tok) {
        while let Some(c) = self.peek_char() {
            if c.is_whitespace() {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
        let start = self.pos;
        let Some(c) = self.peek_char() else {
            return (start, Tok::Eof);
        };
        if c == '\0' {
            return (start, Tok::Illegal("unexpected null".into()));
        }
        if is_quote(c) {
            return match self.scan_quoted(c) {
                Ok(s) => (start, Tok::Quoted(s)),
                Err(m) => (start, Tok::Illegal(m)),
            };
        }
        if c == ',' || c == '.' {
            self.pos += 1;
            if c == ',' {
                self.value_mode = false;
            }
            return (start, Tok::Sep(c));
        }
        if is_op_char(c) {
            let end = self.take_while(start, is_op_char);
            self.value_mode = true;
            return (start, Tok::Operator(self.input[start..end].to_string()));
        }
        if self.value_mode {
            let end = self.take_while(start, is_value_char);
            self.value_mode = false;
            return (start, Tok::Value(self.input[start..end].to_string()));
        }
        if is_field_char(c) {
            let end = self.take_while(start, is_field_char);
            return (start, Tok::Field(self.input[start..end].to_string()));
        }
        self.pos += c.len_utf8();
        (start, Tok::Illegal(format!("unexpected character {c:?}")))
    }

    fn take_while(&mut self, start: usize, f: fn(char) -> bool) -> usize {
        let end = self.input[start..]
            .char_indices()
            .find(|(_, c)| !f(*c))
            .map(|(i, _)| start + i)
            .unwrap_or(self.input.len());
        self.pos = end;
        end
    }

    /// Scan a quoted literal starting at the quote; returns its unquoted text
    /// tagged with the quote used (first char) for the caller's checks.
    fn scan_quoted(&mut self, quote: char) -> Result<String, String> {
        let mut out = String::new();
        out.push(quote);
        let mut chars = self.input[self.pos + 1..].char_indices();
        loop {
            let Some((i, c)) = chars.next() else {
                self.pos = self.input.len();
                return Err("quoted literal not terminated".into());
            };
            if c == quote {
                self.pos = self.pos + 1 + i + 1;
                return Ok(out);
            }
            if c == '\n' {
                return Err("quoted literal not terminated".into());
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else {
                return Err("quoted literal not terminated".into());
            };
            let simple = match e {
                'a' => Some('\x07'),
                'b' => Some('\x08'),
                'f' => Some('\x0c'),
                'n' => Some('\n'),
                'r' => Some('\r'),
                't' => Some('\t'),
                'v' => Some('\x0b'),
                '\\' => Some('\\'),
                q if q == quote => Some(q),
                _ => None,
            };
            if let Some(s) = simple {
                // in regex quotes an escaped backslash sequence stays as written
                if quote != '"' && e != quote {
                    out.push('\\');
                    out.push(e);
                } else {
                    out.push(s);
                }
                continue;
            }
            let (base, n) = match e {
                '0'..='7' => (8, 2),
                'x' => (16, 2),
                'u' => (16, 4),
                'U' => (16, 8),
                _ => return Err("illegal escape sequence".into()),
            };
            let mut digits = String::new();
            if base == 8 {
                digits.push(e);
            }
            for _ in 0..n {
                match chars.next() {
                    Some((_, d)) if d.is_digit(base) => digits.push(d),
                    _ => return Err("illegal numeric escape sequence".into()),
                }
            }
            let v = u32::from_str_radix(&digits, base)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| "illegal numeric escape sequence".to_string())?;
            out.push(v);
        }
    }

    fn selectors(&mut self) -> Result<Vec<Selector>, Error> {
        let mut all = vec![self.selector()?];
        loop {
            let (pos, tok) = self.scan();
            match tok {
                Tok::Eof => return Ok(all),
                Tok::Sep(',') => all.push(self.selector()?),
                Tok::Illegal(m) => return Err(self.err(pos, m)),
                _ => return Err(self.err(pos, "unexpected input: expected `,` or end")),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, Error> {
        let path = self.fieldpath()?;
        match self.peek_significant() {
            None | Some(',') => {
                return Ok(Selector {
                    path,
                    op: Op::Present,
                })
            }
            _ => {}
        }
        let (pos, tok) = self.scan();
        let op = match tok {
            Tok::Operator(o) => o,
            Tok::Illegal(m) => return Err(self.err(pos, m)),
            _ => return Err(self.err(pos, r#"expected an operator ("=="|"!="|"~=")"#)),
        };
        let regex = match op.as_str() {
            "==" | "!=" => false,
            "~=" => true,
            other => return Err(self.err(pos, format!("unsupported operator {other:?}"))),
        };
        let (vpos, tok) = self.scan();
        let value = match tok {
            Tok::Value(v) | Tok::Field(v) => v,
            Tok::Quoted(q) => {
                let (quote, text) = q.split_at(1);
                if !regex && quote != "\"" {
                    return Err(self.err(vpos, "invalid quote encountered"));
                }
                text.to_string()
            }
            Tok::Illegal(m) => return Err(self.err(vpos, m)),
            Tok::Eof => return Err(self.err(vpos, "unexpected end of input: expected a value")),
            _ => return Err(self.err(vpos, "expected value or quoted")),
        };
        let op = match op.as_str() {
            "==" => Op::Equal(value),
            "!=" => Op::NotEqual(value),
            _ => Op::Matches(go_regexp(&value).map_err(|e| {
                self.err(vpos, format!("invalid regular expression {value:?}: {e}"))
            })?),
        };
        Ok(Selector { path, op })
    }

    fn fieldpath(&mut self) -> Result<Vec<String>, Error> {
        let mut path = vec![self.field()?];
        while self.peek_significant() == Some('.') {
            self.scan();
            path.push(self.field()?);
        }
        Ok(path)
    }

    fn field(&mut self) -> Result<String, Error> {
        let (pos, tok) = self.scan();
        match tok {
            Tok::Field(f) => Ok(f),
            Tok::Quoted(q) => {
                let (quote, text) = q.split_at(1);
                if quote != "\"" {
                    return Err(self.err(pos, "invalid quote encountered"));
                }
                Ok(text.to_string())
            }
            Tok::Illegal(m) => Err(self.err(pos, m)),
            Tok::Eof => Err(self.err(pos, "unexpected end of input: expected field or quoted")),
            _ => Err(self.err(pos, "expected field or quoted")),
        }
    }
}

/// Helper for adaptors: look a label up for a path `labels.<key>`.
pub fn label_field<'a, I>(path: &[String], labels: I) -> Option<String>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    if path.len() < 2 {
        return None;
    }
    // a label key may itself contain dots when unquoted: rejoin the rest
    let key = path[1..].join(".");
    labels
        .into_iter()
        .find(|(k, _)| **k == key)
        .map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Obj {
        name: &'static str,
        labels: HashMap<String, String>,
    }

    impl Adaptor for Obj {
        fn field(&self, path: &[String]) -> Option<String> {
            match path.first().map(String::as_str) {
                Some("name") => Some(self.name.to_string()),
                Some("labels") => label_field(path, &self.labels),
                _ => None,
            }
        }
    }

    fn obj(name: &'static str, labels: &[(&str, &str)]) -> Obj {
        Obj {
            name,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn m(filters: &[&str], o: &Obj) -> bool {
        Filter::parse_all(filters).unwrap().matches(o)
    }

    #[test]
    fn matches_operators() {
        let o = obj("foo", &[("a", "1"), ("foo.bar/baz", "x y")]);
        assert!(m(&["name==foo"], &o));
        assert!(!m(&["name==bar"], &o));
        assert!(m(&["name!=bar"], &o));
        assert!(m(&["name~=^f.o$"], &o));
        assert!(m(&["name~=/^f/"], &o));
        assert!(m(&["name~=|o+|"], &o));
        assert!(m(&["labels.a"], &o));
        assert!(!m(&["labels.b"], &o));
        assert!(m(&["labels.b!=1"], &o), "absent field is not equal");
        assert!(m(&[r#"labels."foo.bar/baz"=="x y""#], &o));
        assert!(m(&[], &o));
        assert!(m(&[""], &o));
    }

    #[test]
    fn regexps_read_as_go_reads_them() {
        let ascii = obj("abc_1", &[("u", "café"), ("sp", "a\u{a0}b"), ("br", "[x]")]);
        assert!(m(&[r"name~=^\w+$"], &ascii));
        assert!(m(&[r"name~=^[\w]+\d$"], &ascii));
        // Go's \w, \s and \d are ASCII
        assert!(!m(&[r"labels.u~=^\w+$"], &ascii));
        assert!(m(&[r"labels.u~=^\w+\W$"], &ascii));
        assert!(!m(&[r"labels.sp~=a\sb"], &ascii));
        assert!(m(&[r"labels.sp~=a\Sb"], &ascii));
        assert!(!m(&["labels.u~=\\d"], &obj("x", &[("u", "٣")])));
        // `[` in a class is a literal; `]` first in a class too; POSIX classes stay
        assert!(m(&[r"labels.br~=^[[]x[]]$"], &ascii));
        assert!(m(&[r"labels.br~=^\[[[:alpha:]]\]$"], &ascii));
        assert!(m(&[r"labels.br~=^[^]a]"], &ascii));
        assert!(m(&[r"name~=^[a&&b_]+"], &obj("a&b", &[])));
        // a pattern too large to compile is refused, not built
        let e = Filter::parse(r"name~=(\w{1000}){1000}").unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::InvalidArgument);
    }

    #[test]
    fn comma_is_and_and_several_filters_are_or() {
        let o = obj("foo", &[("a", "1")]);
        assert!(m(&["name==foo,labels.a==1"], &o));
        assert!(!m(&["name==foo,labels.a==2"], &o));
        assert!(m(&["name==nope", "labels.a==1"], &o));
        assert!(!m(&["name==nope", "labels.a==2"], &o));
        assert!(m(&["name == foo , labels.a == 1"], &o));
    }

    #[test]
    fn values_may_contain_dots_and_slashes() {
        let o = obj("docker.io/library/busybox:latest", &[]);
        assert!(m(&["name==docker.io/library/busybox:latest"], &o));
    }

    #[test]
    fn quoted_escapes() {
        let o = obj("a\"b\tc", &[]);
        assert!(m(&[r#"name=="a\"b\tc""#], &o));
        assert!(m(&[r#"name=="a\x22b\u0009c""#], &o));
    }

    #[test]
    fn bad_input_reports_position() {
        for (bad, want) in [
            ("name=", "unsupported operator"),
            ("name==", "expected a value"),
            ("name=foo", "unsupported operator"),
            ("name>=foo", "unexpected character"),
            ("=foo", "expected field or quoted"),
            ("name==\"unterminated", "not terminated"),
            ("name==foo bar", "unexpected input"),
            ("name==/x/", "invalid quote"),
            ("name~=/(/", "invalid regular expression"),
            ("name==\"\\q\"", "illegal escape"),
            ("labels.", "expected field or quoted"),
            ("name==a,", "expected field or quoted"),
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.kind, crate::ErrorKind::InvalidArgument);
            assert!(e.message.contains(want), "{bad}: {}", e.message);
            assert!(e.message.contains("parse error"), "{bad}: {}", e.message);
        }
        let e = Filter::parse("name==foo bar").unwrap_err();
        assert!(e.message.contains(">|b|<"), "{}", e.message);
    }
}
