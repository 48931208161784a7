//! JSON exactly as Go's `encoding/json.Marshal` writes the image-spec structs
//! containerd's exporter serialises: struct field order, `omitempty` rules,
//! sorted map keys and Go's string escaping (HTML-safe `\u003c` `\u003e`
//! `\u0026`, `\u2028` `\u2029`).

use std::collections::BTreeMap;
use stevedore_types::{Descriptor, Platform};

/// A JSON string literal as Go writes it.
pub fn string(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn map(m: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{}:{}", string(k), string(v)))
        .collect();
    format!("{{{}}}", parts.join(","))
}

fn strings(v: &[String]) -> String {
    let parts: Vec<String> = v.iter().map(|s| string(s)).collect();
    format!("[{}]", parts.join(","))
}

/// An OCI platform.
pub fn platform(p: &Platform) -> String {
    let mut s = format!(
        "{{\"architecture\":{},\"os\":{}",
        string(&p.architecture),
        string(&p.os)
    );
    if !p.os_version.is_empty() {
        s.push_str(&format!(",\"os.version\":{}", string(&p.os_version)));
    }
    if !p.os_features.is_empty() {
        s.push_str(&format!(",\"os.features\":{}", strings(&p.os_features)));
    }
    if !p.variant.is_empty() {
        s.push_str(&format!(",\"variant\":{}", string(&p.variant)));
    }
    s.push('}');
    s
}

/// An OCI descriptor.
pub fn descriptor(d: &Descriptor) -> String {
    let mut s = String::from("{");
    if !d.media_type.is_empty() {
        s.push_str(&format!("\"mediaType\":{},", string(&d.media_type)));
    }
    s.push_str(&format!(
        "\"digest\":{},\"size\":{}",
        string(&d.digest.to_string()),
        d.size
    ));
    if !d.urls.is_empty() {
        s.push_str(&format!(",\"urls\":{}", strings(&d.urls)));
    }
    if !d.annotations.is_empty() {
        s.push_str(&format!(",\"annotations\":{}", map(&d.annotations)));
    }
    if let Some(p) = &d.platform {
        s.push_str(&format!(",\"platform\":{}", platform(p)));
    }
    s.push('}');
    s
}

/// An OCI index with schemaVersion 2 and the given manifests.
pub fn index(manifests: &[Descriptor]) -> String {
    let body = if manifests.is_empty() {
        "null".to_string()
    } else {
        let parts: Vec<String> = manifests.iter().map(descriptor).collect();
        format!("[{}]", parts.join(","))
    };
    format!("{{\"schemaVersion\":2,\"manifests\":{body}}}")
}

/// Docker's `manifest.json` entries.
pub fn docker_manifests(entries: &[(String, Vec<String>, Vec<String>)]) -> String {
    let list = |v: &Vec<String>| {
        if v.is_empty() {
            "null".to_string()
        } else {
            strings(v)
        }
    };
    let parts: Vec<String> = entries
        .iter()
        .map(|(config, tags, layers)| {
            format!(
                "{{\"Config\":{},\"RepoTags\":{},\"Layers\":{}}}",
                string(config),
                list(tags),
                list(layers)
            )
        })
        .collect();
    format!("[{}]", parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_go() {
        assert_eq!(
            string("a<b>&\u{2028}\"\\\n\x01"),
            r#""a\u003cb\u003e\u0026\u2028\"\\\n\u0001""#
        );
    }
}
