//! The pprof wire format (`perftools.profiles.Profile`, github.com/google/pprof
//! `proto/profile.proto`), encoded by hand: a handful of messages, so a
//! protobuf code generator (and its `protoc`) is not worth it. Output is
//! gzip-compressed as Go's `net/http/pprof` serves it.

use std::collections::HashMap;
use std::io::Write;

/// Builds one profile: strings, functions and locations are interned.
pub struct Builder {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<u8>,
    function_ids: HashMap<(String, String), u64>,
    locations: Vec<u8>,
    location_ids: HashMap<Vec<Line>, u64>,
    samples: Vec<u8>,
    sample_types: Vec<(i64, i64)>,
    period_type: (i64, i64),
    period: i64,
    time_nanos: i64,
    duration_nanos: i64,
}

/// One frame of a location: a function (name, file) at a line; inlined
/// calls make several lines per location, innermost first.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Line {
    pub function: String,
    pub file: String,
    pub line: i64,
}

impl Builder {
    /// A profile whose samples carry `sample_types` (type, unit) values.
    pub fn new(sample_types: &[(&str, &str)], period_type: (&str, &str), period: i64) -> Builder {
        let mut b = Builder {
            strings: vec![String::new()],
            string_ids: HashMap::from([(String::new(), 0)]),
            functions: Vec::new(),
            function_ids: HashMap::new(),
            locations: Vec::new(),
            location_ids: HashMap::new(),
            samples: Vec::new(),
            sample_types: Vec::new(),
            period_type: (0, 0),
            period,
            time_nanos: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0),
            duration_nanos: 0,
        };
        b.sample_types = sample_types
            .iter()
            .map(|(t, u)| (b.string(t), b.string(u)))
            .collect();
        b.period_type = (b.string(period_type.0), b.string(period_type.1));
        b
    }

    pub fn duration(&mut self, d: std::time::Duration) {
        self.duration_nanos = d.as_nanos() as i64;
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(id) = self.string_ids.get(s) {
            return *id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(s.to_string());
        self.string_ids.insert(s.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: &str) -> u64 {
        let key = (name.to_string(), file.to_string());
        if let Some(id) = self.function_ids.get(&key) {
            return *id;
        }
        let id = self.function_ids.len() as u64 + 1;
        let (n, f) = (self.string(name), self.string(file));
        let mut m = Vec::new();
        uint(&mut m, 1, id);
        int(&mut m, 2, n);
        int(&mut m, 3, n);
        int(&mut m, 4, f);
        bytes(&mut self.functions, 5, &m);
        self.function_ids.insert(key, id);
        id
    }

    /// The location id of a frame (its lines, innermost first).
    pub fn location(&mut self, address: u64, lines: Vec<Line>) -> u64 {
        if let Some(id) = self.location_ids.get(&lines) {
            return *id;
        }
        let id = self.location_ids.len() as u64 + 1;
        let mut m = Vec::new();
        uint(&mut m, 1, id);
        uint(&mut m, 2, 1);
        uint(&mut m, 3, address);
        for l in &lines {
            let f = self.function(&l.function, &l.file);
            let mut lm = Vec::new();
            uint(&mut lm, 1, f);
            int(&mut lm, 2, l.line);
            bytes(&mut m, 4, &lm);
        }
        bytes(&mut self.locations, 4, &m);
        self.location_ids.insert(lines, id);
        id
    }

    /// A sample: locations leaf first, one value per sample type, and
    /// string labels.
    pub fn sample(&mut self, locations: &[u64], values: &[i64], labels: &[(&str, &str)]) {
        let mut m = Vec::new();
        let mut packed = Vec::new();
        for l in locations {
            varint(&mut packed, *l);
        }
        bytes(&mut m, 1, &packed);
        let mut packed = Vec::new();
        for v in values {
            varint(&mut packed, *v as u64);
        }
        bytes(&mut m, 2, &packed);
        for (k, v) in labels {
            let (k, v) = (self.string(k), self.string(v));
            let mut lm = Vec::new();
            int(&mut lm, 1, k);
            int(&mut lm, 2, v);
            bytes(&mut m, 3, &lm);
        }
        bytes(&mut self.samples, 2, &m);
    }

    /// The encoded profile, gzip-compressed.
    pub fn finish(mut self) -> Vec<u8> {
        let exe = std::fs::read_link("/proc/self/exe")
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let exe = self.string(&exe);
        let mut out = Vec::new();
        for (t, u) in &self.sample_types {
            let mut m = Vec::new();
            int(&mut m, 1, *t);
            int(&mut m, 2, *u);
            bytes(&mut out, 1, &m);
        }
        out.extend_from_slice(&self.samples);
        // one mapping covering every address, with symbols already resolved:
        // pprof then never tries to symbolise the addresses itself
        let mut m = Vec::new();
        uint(&mut m, 1, 1);
        uint(&mut m, 2, 0);
        uint(&mut m, 3, u64::MAX);
        int(&mut m, 5, exe);
        for field in 7..=10 {
            uint(&mut m, field, 1);
        }
        bytes(&mut out, 3, &m);
        out.extend_from_slice(&self.locations);
        out.extend_from_slice(&self.functions);
        for s in &self.strings {
            bytes(&mut out, 6, s.as_bytes());
        }
        int(&mut out, 9, self.time_nanos);
        int(&mut out, 10, self.duration_nanos);
        let mut m = Vec::new();
        int(&mut m, 1, self.period_type.0);
        int(&mut m, 2, self.period_type.1);
        bytes(&mut out, 11, &m);
        int(&mut out, 12, self.period);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        // writing into a Vec cannot fail
        let _ = gz.write_all(&out);
        gz.finish().unwrap_or_default()
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        varint(out, u64::from(field) << 3);
        varint(out, v);
    }
}

fn int(out: &mut Vec<u8>, field: u32, v: i64) {
    uint(out, field, v as u64);
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, (u64::from(field) << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn encodes_varints_and_fields() {
        let mut v = Vec::new();
        varint(&mut v, 300);
        assert_eq!(v, [0xac, 0x02]);
        let mut v = Vec::new();
        uint(&mut v, 1, 0);
        assert!(v.is_empty(), "proto3 scalars at zero are omitted");
        bytes(&mut v, 6, b"ab");
        assert_eq!(v, [0x32, 2, b'a', b'b']);
    }

    #[test]
    fn profile_is_gzip_with_the_string_table_first_empty() {
        let mut b = Builder::new(&[("samples", "count")], ("cpu", "nanoseconds"), 10);
        let loc = b.location(
            0x10,
            vec![Line {
                function: "main".into(),
                file: "m.rs".into(),
                line: 3,
            }],
        );
        b.sample(&[loc], &[1], &[]);
        let gz = b.finish();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut raw)
            .unwrap();
        // the first string-table entry is "" (field 6, length 0)
        assert!(raw.windows(2).any(|w| w == [0x32, 0]));
        assert!(raw.windows(4).any(|w| w == b"main"));
    }
}
