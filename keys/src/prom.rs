//! The one Prometheus text-format writer.
//!
//! Owns the exposition syntax (`# HELP` / `# TYPE` headers, label quoting and
//! escaping, sample lines) for every metric keycore exposes: the server's own
//! families and those each key store renders ([`crate::KeyStore::render_metrics`]).
//! Must not: hold state between scrapes or decide what is measured.

use std::fmt::{Display, Write as _};

/// The type of a metric family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Cumulative buckets with `_sum` and `_count`.
    Histogram,
}

impl MetricKind {
    fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// Appends Prometheus text to a string. Writing to a `String` cannot fail,
/// so no method returns an error.
#[derive(Debug)]
pub struct PromWriter<'a> {
    out: &'a mut String,
}

impl<'a> PromWriter<'a> {
    /// A writer appending to `out`.
    pub fn new(out: &'a mut String) -> Self {
        PromWriter { out }
    }

    /// The `# HELP` and `# TYPE` lines that start a family.
    pub fn family(&mut self, name: &str, kind: MetricKind, help: &str) {
        let _ = writeln!(
            self.out,
            "# HELP {name} {help}\n# TYPE {name} {}",
            kind.as_str()
        );
    }

    /// One sample: `name{k="v",...} value`; label values are escaped. No
    /// braces when there are no labels.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                escape_into(self.out, v);
                self.out.push('"');
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Append a label value with `\`, `"` and newlines escaped (the text format's
/// rules).
fn escape_into(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_in_text_format() {
        let mut s = String::new();
        let mut w = PromWriter::new(&mut s);
        w.family("x_total", MetricKind::Counter, "Things.");
        w.sample("x_total", &[("core", "0"), ("path", "a\"b\\c\nd")], 7);
        w.sample("x_total", &[], 1.5);
        assert_eq!(
            s,
            "# HELP x_total Things.\n# TYPE x_total counter\n\
             x_total{core=\"0\",path=\"a\\\"b\\\\c\\nd\"} 7\nx_total 1.5\n"
        );
    }
}
