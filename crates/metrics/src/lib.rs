//! Counters, gauges and histograms, and their rendering in Prometheus' text
//! exposition format (version 0.0.4), which is what containerd's `/v1/metrics`
//! serves. Std only: libraries record into statics of these types, and the
//! daemon renders them at scrape time; nobody here knows about HTTP.
//!
//! Values that only exist at scrape time (task cgroups, shim counts) are
//! written straight into a [`Text`] by whoever knows them.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// containerd's (and the Prometheus Go client's) default latency buckets, in
/// seconds: what go-grpc-prometheus' handling-time histogram uses.
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A histogram of observations (cumulative buckets, sum and count as
/// Prometheus renders them).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound plus the +Inf bucket, not cumulative.
    counts: Vec<AtomicU64>,
    /// The sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + v).to_bits();
            match self
                .sum
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, name: &str, labels: &[(&str, &str)], out: &mut Text) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => format_value(*b),
                None => "+Inf".to_string(),
            };
            let mut l: Vec<(&str, &str)> = labels.to_vec();
            l.push(("le", &le));
            out.sample(&format!("{name}_bucket"), &l, cumulative as f64);
        }
        out.sample(
            &format!("{name}_sum"),
            labels,
            f64::from_bits(self.sum.load(Ordering::Relaxed)),
        );
        out.sample(&format!("{name}_count"), labels, cumulative as f64);
    }
}

/// What a family holds per label set.
pub trait Metric: Send + Sync {
    /// The `# TYPE` of the family.
    const KIND: &'static str;
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Text);
}

impl Metric for Counter {
    const KIND: &'static str = "counter";
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Text) {
        out.sample(name, labels, self.get() as f64);
    }
}

impl Metric for Histogram {
    const KIND: &'static str = "histogram";
    fn write(&self, name: &str, labels: &[(&str, &str)], out: &mut Text) {
        self.render(name, labels, out);
    }
}

/// A metric per label-value tuple (a Prometheus "vector").
pub struct Family<M> {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    make: fn() -> M,
    members: Mutex<BTreeMap<Vec<String>, Arc<M>>>,
}

impl<M: Metric> Family<M> {
    pub fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        make: fn() -> M,
    ) -> Family<M> {
        Family {
            name,
            help,
            labels,
            make,
            members: Mutex::new(BTreeMap::new()),
        }
    }

    /// The member for these label values (in the family's label order),
    /// created on first use.
    pub fn with(&self, values: &[&str]) -> Arc<M> {
        debug_assert_eq!(values.len(), self.labels.len(), "{}", self.name);
        let key: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key)
            .or_insert_with(|| Arc::new((self.make)()))
            .clone()
    }

    /// Write the family (nothing when it has no members yet, as the Go
    /// client does for vectors).
    pub fn render(&self, out: &mut Text) {
        let m = self.members.lock().unwrap_or_else(|p| p.into_inner());
        if m.is_empty() {
            return;
        }
        out.header(self.name, self.help, M::KIND);
        for (values, metric) in m.iter() {
            let labels: Vec<(&str, &str)> = self
                .labels
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            metric.write(self.name, &labels, out);
        }
    }
}

/// A scrape's text, built family by family.
#[derive(Default)]
pub struct Text {
    buf: String,
}

impl Text {
    pub fn new() -> Text {
        Text::default()
    }

    /// `# HELP` and `# TYPE` lines.
    pub fn header(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.buf, "# HELP {name} {help}");
        let _ = writeln!(self.buf, "# TYPE {name} {kind}");
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.buf.push_str(name);
        if !labels.is_empty() {
            self.buf.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.buf.push(',');
                }
                let _ = write!(self.buf, "{k}=\"{}\"", escape_label(v));
            }
            self.buf.push('}');
        }
        let _ = writeln!(self.buf, " {}", format_value(value));
    }

    /// A whole single-sample family.
    pub fn single(&mut self, name: &str, help: &str, kind: &str, value: f64) {
        self.header(name, help, kind);
        self.sample(name, &[], value);
    }

    pub fn into_string(self) -> String {
        self.buf
    }
}

fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_in_the_text_format() {
        let f: Family<Counter> = Family::new("x_total", "Things.", &["kind", "code"], Counter::new);
        f.with(&["a", "OK"]).add(3);
        f.with(&["b\"q", "OK"]).inc();
        let mut t = Text::new();
        f.render(&mut t);
        assert_eq!(
            t.into_string(),
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{kind=\"a\",code=\"OK\"} 3\nx_total{kind=\"b\\\"q\",code=\"OK\"} 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(7.0);
        let mut t = Text::new();
        h.write("d_seconds", &[], &mut t);
        let s = t.into_string();
        assert!(s.contains("d_seconds_bucket{le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("d_seconds_bucket{le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("d_seconds_bucket{le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("d_seconds_sum 7.55\n"), "{s}");
        assert!(s.contains("d_seconds_count 3\n"), "{s}");
    }

    #[test]
    fn empty_families_render_nothing() {
        let f: Family<Histogram> =
            Family::new("h", "H.", &["m"], || Histogram::new(DEFAULT_BUCKETS));
        let mut t = Text::new();
        f.render(&mut t);
        assert_eq!(t.into_string(), "");
    }
}
