//! What a run measured, and its renderings: the live line, the text report,
//! JSON, a self-contained HTML page (inline SVG, no scripts or CDN), and
//! HdrHistogram interval logs.
//!
//! This module owns formatting only. It takes merged stats from the runner
//! and never talks to the server.

use crate::check::OpKind;
use crate::client::PoolCounters;
use crate::profile::{LoopMode, Plan, Profile};
use crate::runner::{IntervalStats, RunResult};
use crate::stats::OpStats;
use hdrhistogram::Histogram;
use std::fmt::Write as _;
use std::io::{self, Write};

/// CPU use (percent of the generator's cores) from which the generator,
/// not the server, is taken to limit the run.
pub const CPU_BOUND_PCT: f64 = 90.0;

/// Send lag (p99, µs) from which the generator is behind its schedule: the
/// offered load is no longer what the profile asked for.
pub const LAG_BEHIND_US: u64 = 5_000;

/// Latency percentiles of one operation, in microseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: u64,
    /// 90th.
    pub p90_us: u64,
    /// 99th.
    pub p99_us: u64,
    /// 99.9th.
    pub p999_us: u64,
    /// 99.99th.
    pub p9999_us: u64,
    /// Largest.
    pub max_us: u64,
    /// Mean.
    pub mean_us: f64,
}

impl Percentiles {
    /// From a histogram; `None` if it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        (!h.is_empty()).then(|| Percentiles {
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            p9999_us: h.value_at_quantile(0.9999),
            max_us: h.max(),
            mean_us: h.mean(),
        })
    }
}

/// One operation's (or all operations') results over the measured window.
#[derive(Clone, Debug, serde::Serialize)]
pub struct OpReport {
    /// Operation name, or "all".
    pub op: String,
    /// OK responses.
    pub ok: u64,
    /// Failed requests.
    pub errors: u64,
    /// OK responses verified with the public key.
    pub verified: u64,
    /// OK responses per second of measured time.
    pub throughput_per_s: f64,
    /// Latency of OK responses.
    pub latency: Option<Percentiles>,
}

impl OpReport {
    fn new(op: &str, s: &OpStats, secs: f64) -> OpReport {
        OpReport {
            op: op.to_string(),
            ok: s.ok,
            errors: s.error_count(),
            verified: s.verified,
            throughput_per_s: s.ok as f64 / secs.max(1e-9),
            latency: Percentiles::of(&s.hist),
        }
    }
}

/// One line of the error table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ErrorRow {
    /// Operation.
    pub op: String,
    /// What went wrong.
    pub error: String,
    /// How many times.
    pub count: u64,
}

/// One interval of the timeline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct IntervalRow {
    /// End of the interval, seconds from the start of the run.
    pub t_s: f64,
    /// Seconds the interval covered: one interval, except the last one
    /// (the run ended inside it).
    pub len_s: f64,
    /// Only the drain after the last scheduled request: no offered load,
    /// so its rate is left out of the throughput plot.
    pub drain: bool,
    /// In the warm-up.
    pub warmup: bool,
    /// OK responses per second.
    pub rate_per_s: f64,
    /// Failures in the interval.
    pub errors: u64,
    /// Latency percentiles of OK responses (all operations).
    pub latency: Option<Percentiles>,
    /// Open loop: p99 of how late requests were sent, µs.
    pub lag_p99_us: Option<u64>,
    /// Generator CPU, percent of its cores.
    pub cpu_pct: f64,
    /// Requests in flight at the end.
    pub in_flight: usize,
}

impl IntervalRow {
    /// Summarise one merged interval.
    pub fn of(i: &IntervalStats) -> IntervalRow {
        let all = i.stats.all();
        let full = crate::runner::INTERVAL.as_secs_f64();
        // A zero length would divide by zero; an interval that covered
        // nothing has nothing to rate.
        let len_s = i.len.as_secs_f64().min(full);
        IntervalRow {
            t_s: i.index as f64 * full + len_s,
            len_s,
            drain: i.drain,
            warmup: i.warmup,
            rate_per_s: if len_s > 0.0 {
                all.ok as f64 / len_s
            } else {
                0.0
            },
            errors: all.error_count(),
            latency: Percentiles::of(&all.hist),
            lag_p99_us: i
                .stats
                .lag
                .as_ref()
                .filter(|l| !l.is_empty())
                .map(|l| l.value_at_quantile(0.99)),
            cpu_pct: i.cpu_pct,
            in_flight: i.in_flight,
        }
    }

    /// Why the generator may be the bottleneck in this interval, if it is.
    pub fn generator_warning(&self, cores: usize) -> Option<String> {
        if self.cpu_pct >= CPU_BOUND_PCT {
            return Some(format!(
                "generator CPU at {:.0}% of its {cores} core(s): the generator, not the server, may be the bottleneck (add --cores or lower --verify-fraction)",
                self.cpu_pct
            ));
        }
        match self.lag_p99_us {
            Some(l) if l >= LAG_BEHIND_US => Some(format!(
                "send lag p99 {}: requests left later than scheduled, so the offered load was below the profile's (server backpressure or generator CPU; latency still counts from the scheduled time)",
                ms(l)
            )),
            _ => None,
        }
    }

    /// The live line.
    pub fn live_line(&self) -> String {
        let mut s = format!(
            "{:>6.0}s  rate {:>9.0}/s  err {:>6}",
            self.t_s, self.rate_per_s, self.errors
        );
        match &self.latency {
            Some(p) => {
                let _ = write!(
                    s,
                    "  p50 {:>9}  p99 {:>9}  max {:>9}",
                    ms(p.p50_us),
                    ms(p.p99_us),
                    ms(p.max_us)
                );
            }
            None => s.push_str("  (no responses)"),
        }
        let _ = write!(
            s,
            "  in-flight {:>5}  cpu {:>3.0}%",
            self.in_flight, self.cpu_pct
        );
        if self.warmup {
            s.push_str("  [warm-up]");
        }
        s
    }
}

/// Where the OK requests' time went inside the generator
/// ([`crate::stats::Phases`]), measured window only.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PhaseReport {
    /// Scheduled (or started, closed loop) → request written to the socket.
    pub to_wire: Option<Percentiles>,
    /// Written → answer read from the socket.
    pub round_trip: Option<Percentiles>,
    /// Answer read → outcome recorded (not part of the latency).
    pub after_read: Option<Percentiles>,
}

impl PhaseReport {
    /// From the measured window's phases; `None` when no request was OK.
    pub fn of(p: &crate::stats::Phases) -> Option<PhaseReport> {
        (!p.after_read.is_empty()).then(|| PhaseReport {
            to_wire: Percentiles::of(&p.to_wire),
            round_trip: Percentiles::of(&p.round_trip),
            after_read: Percentiles::of(&p.after_read),
        })
    }

    /// One line: p50 / p99 / p99.9 of each part.
    pub fn line(&self) -> String {
        let f = |p: &Option<Percentiles>| match p {
            Some(p) => format!("{} / {} / {}", ms(p.p50_us), ms(p.p99_us), ms(p.p999_us)),
            None => "–".into(),
        };
        format!(
            "where the time went in the generator (p50 / p99 / p99.9): scheduled → written {}; written → answer read {}; answer read → recorded (after the latency's end) {}",
            f(&self.to_wire),
            f(&self.round_trip),
            f(&self.after_read)
        )
    }
}

/// Milliseconds with three decimals, from microseconds.
pub fn ms(us: u64) -> String {
    format!("{:.3}ms", us as f64 / 1000.0)
}

/// The result of one run against one server.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    /// Server address.
    pub server: String,
    /// The profile run (after flags were applied).
    pub profile: Profile,
    /// Per operation that was part of the mix.
    pub ops: Vec<OpReport>,
    /// All operations together.
    pub total: OpReport,
    /// Failures by operation and kind.
    pub errors: Vec<ErrorRow>,
    /// Connection events.
    pub connections: PoolCounters,
    /// Requests sent, warm-up included.
    pub sent: u64,
    /// Open loop: how late the generator sent requests.
    pub send_lag: Option<Percentiles>,
    /// The OK requests' latency split inside the generator.
    pub phases: Option<PhaseReport>,
    /// Generator CPU over the measured window, percent of its cores.
    pub generator_cpu_pct: f64,
    /// CPUs the executors were pinned to (`null`: not pinned).
    pub cpus: Vec<Option<usize>>,
    /// Per-interval timeline.
    pub timeline: Vec<IntervalRow>,
    /// Things the reader must know (generator-bound, dropped operations...).
    pub warnings: Vec<String>,
    /// Final histograms per operation, for plots (not serialised).
    #[serde(skip)]
    pub hists: Vec<(OpKind, Histogram<u64>)>,
}

impl Report {
    /// Assemble from a run.
    pub fn new(server: String, plan: &Plan, run: RunResult, timeline: Vec<IntervalRow>) -> Report {
        let p = &plan.profile;
        let secs = p.duration_s;
        let mut ops = Vec::new();
        let mut errors = Vec::new();
        let mut hists = Vec::new();
        for (op, _) in &plan.ops {
            let s = &run.totals.ops[op.index()];
            ops.push(OpReport::new(op.name(), s, secs));
            for (k, c) in &s.errors {
                errors.push(ErrorRow {
                    op: op.name().into(),
                    error: k.to_string(),
                    count: *c,
                });
            }
            hists.push((*op, s.hist.clone()));
        }
        let total = OpReport::new("all", &run.totals.all(), secs);
        let mut warnings = run.warnings.clone();
        if let Some(r) = plan.replay.as_ref().filter(|r| r.skipped > 0) {
            warnings.push(format!(
                "replay: {} recorded request(s) the generator cannot send were skipped (--replay-skip-unsupported)",
                r.skipped
            ));
        }
        for op in &plan.dropped_ops {
            warnings.push(format!(
                "{op} is in the default mix but no suitable key was given; it was left out"
            ));
        }
        // One summary line per kind of generator trouble, with the worst value.
        let measured = || timeline.iter().filter(|r| !r.warmup);
        let cpu_bound: Vec<f64> = measured()
            .map(|r| r.cpu_pct)
            .filter(|&c| c >= CPU_BOUND_PCT)
            .collect();
        if !cpu_bound.is_empty() {
            warnings.push(format!(
                "generator CPU at {:.0}% (worst) of its {} core(s) in {} interval(s): the generator, not the server, may be the bottleneck (add --cores or lower --verify-fraction)",
                cpu_bound.iter().fold(0.0f64, |a, &b| a.max(b)),
                p.cores,
                cpu_bound.len()
            ));
        }
        let behind: Vec<u64> = measured()
            .filter_map(|r| r.lag_p99_us)
            .filter(|&l| l >= LAG_BEHIND_US)
            .collect();
        if !behind.is_empty() {
            warnings.push(format!(
                "send lag in {} interval(s) (worst p99 {}): requests left later than scheduled, so the offered load was below the profile's there (server backpressure or generator CPU; latency still counts from the scheduled time)",
                behind.len(),
                ms(behind.iter().copied().max().unwrap_or(0))
            ));
        }
        let send_lag = run.totals.lag.as_ref().and_then(Percentiles::of);
        Report {
            server,
            profile: p.clone(),
            ops,
            total,
            errors,
            connections: run.counters,
            sent: run.sent,
            send_lag,
            phases: PhaseReport::of(&run.totals.phases),
            generator_cpu_pct: run.cpu_pct,
            cpus: run.cpus,
            timeline,
            warnings,
            hists,
        }
    }

    /// OK responses in the measured window.
    pub fn total_ok(&self) -> u64 {
        self.total.ok
    }

    /// Failed requests in the measured window.
    pub fn total_errors(&self) -> u64 {
        self.total.errors
    }

    /// JSON for machines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }

    /// One-line description of the load offered.
    pub fn describe_load(&self) -> String {
        let p = &self.profile;
        let load = match p.mode {
            LoopMode::Open => format!(
                "open loop, {:?} arrivals at {} req/s{}",
                p.arrivals,
                p.rate,
                if p.ramp_s > 0.0 {
                    format!(" (ramp {} s)", p.ramp_s)
                } else {
                    String::new()
                }
            )
            .to_lowercase(),
            LoopMode::Closed => format!("closed loop, {} outstanding", p.concurrency),
        };
        format!(
            "{load}; {} s measured after {} s warm-up; {} connection(s){}; {} generator core(s)",
            p.duration_s,
            p.warmup_s,
            p.connections,
            p.conn_lifetime_s
                .map(|l| format!(" replaced every {l} s"))
                .unwrap_or_default(),
            p.cores
        )
    }

    /// The human report.
    pub fn print_text(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "keycore loadgen against {}", self.server)?;
        writeln!(w, "  {}", self.describe_load())?;
        writeln!(w)?;
        writeln!(
            w,
            "{:<18} {:>9} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "operation",
            "ok",
            "errors",
            "verified",
            "rate/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "p99.99",
            "max"
        )?;
        for r in self.ops.iter().chain(std::iter::once(&self.total)) {
            write!(
                w,
                "{:<18} {:>9} {:>7} {:>9} {:>10.1}",
                r.op, r.ok, r.errors, r.verified, r.throughput_per_s
            )?;
            match &r.latency {
                Some(p) => writeln!(
                    w,
                    " {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
                    ms(p.p50_us),
                    ms(p.p90_us),
                    ms(p.p99_us),
                    ms(p.p999_us),
                    ms(p.p9999_us),
                    ms(p.max_us)
                )?,
                None => writeln!(w, " {:>10}", "-")?,
            }
        }
        writeln!(w)?;
        if self.errors.is_empty() {
            writeln!(w, "errors: none")?;
        } else {
            writeln!(w, "errors:")?;
            writeln!(w, "  {:<18} {:<40} {:>9}", "operation", "error", "count")?;
            for e in &self.errors {
                writeln!(w, "  {:<18} {:<40} {:>9}", e.op, e.error, e.count)?;
            }
        }
        let c = &self.connections;
        writeln!(
            w,
            "connections: {} handshakes, {} connect failures, {} lost, {} churned; {} late responses (after their timeout)",
            c.handshakes, c.connect_failures, c.connections_lost, c.connections_churned, c.late_responses
        )?;
        let pinned: Vec<String> = self
            .cpus
            .iter()
            .map(|c| c.map_or("unpinned".into(), |c| format!("cpu{c}")))
            .collect();
        write!(
            w,
            "generator: {} requests sent; CPU {:.0}% of {} core(s) [{}]",
            self.sent,
            self.generator_cpu_pct,
            self.cpus.len(),
            pinned.join(", ")
        )?;
        if let Some(l) = &self.send_lag {
            write!(w, "; send lag p99 {} max {}", ms(l.p99_us), ms(l.max_us))?;
        }
        writeln!(w)?;
        if let Some(p) = &self.phases {
            writeln!(w, "{}", p.line())?;
        }
        for warn in &self.warnings {
            writeln!(w, "WARNING: {warn}")?;
        }
        Ok(())
    }

    /// The throughput plot's points: each interval's rate over the time it
    /// covered (the last one is partial), without the drain after the last
    /// scheduled request, which has no offered load and would plot as a
    /// drop to zero at the end of every run.
    pub fn rate_series(&self) -> Vec<(f64, f64)> {
        self.timeline
            .iter()
            .filter(|r| !r.drain && r.len_s > 0.0)
            .map(|r| (r.t_s, r.rate_per_s))
            .collect()
    }

    /// A self-contained HTML page with latency-over-time and
    /// percentile-distribution plots (inline SVG).
    pub fn to_html(&self) -> String {
        let mut text = Vec::new();
        let _ = self.print_text(&mut text);
        let text = String::from_utf8_lossy(&text);
        let t = |f: fn(&Percentiles) -> u64| -> Vec<(f64, f64)> {
            self.timeline
                .iter()
                .filter_map(|r| r.latency.as_ref().map(|p| (r.t_s, f(p) as f64 / 1000.0)))
                .collect()
        };
        // Interval rows are stamped with their end time.
        let warmup_end = self
            .timeline
            .iter()
            .filter(|r| r.warmup)
            .map(|r| r.t_s)
            .fold(0.0f64, f64::max);
        let over_time = svg_chart(&Chart {
            title: "Latency over time (all operations)",
            x_label: "seconds from start",
            y_label: "latency (ms, log)",
            log_y: true,
            x_ticks: None,
            shade_until: Some(warmup_end),
            series: vec![
                ("p50".into(), t(|p| p.p50_us)),
                ("p99".into(), t(|p| p.p99_us)),
                ("max".into(), t(|p| p.max_us)),
            ],
        });
        let rate = svg_chart(&Chart {
            title: "Throughput over time",
            x_label: "seconds from start",
            y_label: "OK responses / s",
            log_y: false,
            x_ticks: None,
            shade_until: Some(warmup_end),
            series: vec![("rate".into(), self.rate_series())],
        });
        // Percentile distribution, x = log10(1 / (1 - q)): 0 = p0, 1 = p90, 2 = p99...
        let nines = 5.0;
        let dist_series = self
            .hists
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(op, h)| {
                let pts = (0..=100)
                    .map(|i| {
                        let x = nines * i as f64 / 100.0;
                        let q = 1.0 - 10f64.powf(-x);
                        (x, h.value_at_quantile(q) as f64 / 1000.0)
                    })
                    .collect();
                (op.name().to_string(), pts)
            })
            .collect();
        let dist = svg_chart(&Chart {
            title: "Latency by percentile (measured window)",
            x_label: "percentile",
            y_label: "latency (ms, log)",
            log_y: true,
            x_ticks: Some(vec![
                (0.0, "0%".into()),
                (1.0, "90%".into()),
                (2.0, "99%".into()),
                (3.0, "99.9%".into()),
                (4.0, "99.99%".into()),
                (5.0, "99.999%".into()),
            ]),
            shade_until: None,
            series: dist_series,
        });
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>keycore loadgen: {server}</title>\
<style>body{{font-family:sans-serif;margin:2em;}} pre{{background:#f6f6f6;padding:1em;overflow-x:auto;}} svg{{display:block;margin:1em 0;}}</style>\
</head><body>\n<h1>keycore loadgen against {server}</h1>\n<pre>{text}</pre>\n{dist}\n{over_time}\n{rate}\n</body></html>\n",
            server = html_escape(&self.server),
            text = html_escape(&text),
        )
    }
}

/// Escape text for HTML element content (also used by the planner's page).
pub fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart (also drawn by the backend comparison report in keycore-tuning).
#[derive(Debug)]
pub struct Chart<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// X axis label.
    pub x_label: &'a str,
    /// Y axis label.
    pub y_label: &'a str,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// Explicit x ticks (value, label); None: six even ticks.
    pub x_ticks: Option<Vec<(f64, String)>>,
    /// Named lines.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Shade x below this (the warm-up on time axes).
    pub shade_until: Option<f64>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// A line chart as inline SVG.
pub fn svg_chart(c: &Chart<'_>) -> String {
    let (w, h, ml, mr, mt, mb) = (960.0, 360.0, 80.0, 190.0, 40.0, 50.0);
    let pts: Vec<(f64, f64)> = c
        .series
        .iter()
        .flat_map(|(_, p)| p.iter().copied())
        .filter(|(x, y)| x.is_finite() && y.is_finite() && (!c.log_y || *y > 0.0))
        .collect();
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
<text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        w / 2.0,
        html_escape(c.title)
    );
    if pts.is_empty() {
        s.push_str("<text x=\"100\" y=\"100\">no data</text></svg>");
        return s;
    }
    let fy = |y: f64| if c.log_y { y.log10() } else { y };
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for (x, y) in &pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(fy(*y));
        y1 = y1.max(fy(*y));
    }
    if c.log_y {
        y0 = y0.floor();
        y1 = y1.ceil().max(y0 + 1.0);
    } else {
        y0 = 0.0f64.min(y0);
        y1 = if y1 > y0 { y1 * 1.05 } else { y0 + 1.0 };
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| h - mb - (fy(y) - y0) / (y1 - y0) * (h - mt - mb);
    if let Some(until) = c.shade_until.filter(|&u| u > x0) {
        let x = px(until.min(x1));
        let _ = write!(
            s,
            "<rect x=\"{ml}\" y=\"{mt}\" width=\"{:.1}\" height=\"{}\" fill=\"#f0f0f0\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"10\" fill=\"#888\">warm-up</text>",
            x - ml,
            h - mt - mb,
            ml + 4.0,
            mt + 12.0
        );
    }
    // Axes.
    let _ = write!(
        s,
        "<line x1=\"{ml}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{ml}\" y1=\"{mt}\" x2=\"{ml}\" y2=\"{}\" stroke=\"black\"/>",
        h - mb,
        w - mr,
        h - mb,
        h - mb
    );
    // Y ticks.
    let yticks: Vec<f64> = if c.log_y {
        (y0 as i32..=y1 as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=4).map(|i| y0 + (y1 - y0) * i as f64 / 4.0).collect()
    };
    for v in yticks {
        let y = if c.log_y {
            py(v)
        } else {
            h - mb - (v - y0) / (y1 - y0) * (h - mt - mb)
        };
        let _ = write!(
            s,
            "<line x1=\"{ml}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"11\">{}</text>",
            w - mr,
            ml - 5.0,
            y + 4.0,
            fmt_num(v)
        );
    }
    // X ticks.
    let xticks = c.x_ticks.clone().unwrap_or_else(|| {
        (0..=5)
            .map(|i| {
                let v = x0 + (x1 - x0) * i as f64 / 5.0;
                (v, fmt_num(v))
            })
            .collect()
    });
    for (v, label) in xticks {
        let x = px(v);
        let _ = write!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{mt}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" font-size=\"11\">{}</text>",
            h - mb,
            h - mb + 15.0,
            html_escape(&label)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">{}</text>\
<text x=\"15\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\" transform=\"rotate(-90 15 {})\">{}</text>",
        (ml + w - mr) / 2.0,
        h - 10.0,
        html_escape(c.x_label),
        h / 2.0,
        h / 2.0,
        html_escape(c.y_label)
    );
    for (i, (name, p)) in c.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite() && (!c.log_y || *y > 0.0))
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
<rect x=\"{}\" y=\"{}\" width=\"12\" height=\"3\" fill=\"{color}\"/><text x=\"{}\" y=\"{}\" font-size=\"12\">{}</text>",
            path.join(" "),
            w - mr + 10.0,
            mt + 15.0 * i as f64 + 5.0,
            w - mr + 27.0,
            mt + 15.0 * i as f64 + 10.0,
            html_escape(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Writes each interval's per-operation histograms to an HdrHistogram
/// interval log (V2 compressed, as the Java/Go/Rust HdrHistogram tools read).
/// Values are microseconds; the log's max column is in milliseconds.
pub struct HdrLog {
    file: io::BufWriter<std::fs::File>,
    serializer: hdrhistogram::serialization::V2DeflateSerializer,
    started: bool,
    start: std::time::SystemTime,
}

impl std::fmt::Debug for HdrLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdrLog").finish()
    }
}

/// The HdrHistogram log file could not be created.
#[derive(Debug, thiserror::Error)]
#[error("creating HdrHistogram log {}", path.display())]
pub struct HdrLogError {
    /// The file.
    pub path: std::path::PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

impl HdrLog {
    /// Create (truncate) the log file.
    pub fn create(path: &std::path::Path) -> Result<HdrLog, HdrLogError> {
        let file = std::fs::File::create(path).map_err(|source| HdrLogError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(HdrLog {
            file: io::BufWriter::new(file),
            serializer: hdrhistogram::serialization::V2DeflateSerializer::new(),
            started: false,
            start: std::time::SystemTime::now(),
        })
    }

    /// Append one interval: one tagged histogram per operation with data.
    pub fn write_interval(&mut self, i: &IntervalStats) -> io::Result<()> {
        let tagged: Vec<(&str, &Histogram<u64>)> = OpKind::ALL
            .iter()
            .map(|op| (op.name(), &i.stats.ops[op.index()].hist))
            .filter(|(_, h)| !h.is_empty())
            .collect();
        self.write_tagged(i.index, &tagged)
    }

    /// Append interval `index` (one [`crate::runner::INTERVAL`] each from
    /// the run's start): one histogram per tag.
    pub fn write_tagged(
        &mut self,
        index: u64,
        hists: &[(&str, &Histogram<u64>)],
    ) -> io::Result<()> {
        use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
        let mut b = IntervalLogWriterBuilder::new();
        if !self.started {
            // Interval i ends about now: put the log's start at the run's start.
            self.start = std::time::SystemTime::now()
                .checked_sub(crate::runner::INTERVAL * (index as u32 + 1))
                .unwrap_or(self.start);
            b.add_comment("keycore loadgen: latency in microseconds, one tag per operation");
            b.with_start_time(self.start);
            b.with_base_time(self.start);
        }
        b.with_max_value_divisor(1000.0);
        // The builder writes its header lines on begin; after the first
        // interval we only want histogram lines, so drop those on later calls.
        let mut buf = Vec::new();
        {
            let mut w = b
                .begin_log_with(&mut buf, &mut self.serializer)
                .map_err(io::Error::other)?;
            let start = crate::runner::INTERVAL * index as u32;
            for (tag, h) in hists {
                w.write_histogram(h, start, crate::runner::INTERVAL, Tag::new(tag))
                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        for line in text.lines() {
            let header = line.starts_with('#') || line.starts_with("\"StartTimestamp\"");
            if header && self.started {
                continue;
            }
            writeln!(self.file, "{line}")?;
        }
        self.started = true;
        self.file.flush()
    }
}

/// Side-by-side table of several reports (compare mode).
pub fn print_compare(reports: &[Report], w: &mut dyn Write) -> io::Result<()> {
    if reports.is_empty() {
        return Ok(());
    }
    writeln!(w, "comparison: {}", reports[0].describe_load())?;
    write!(w, "{:<30}", "")?;
    for r in reports {
        write!(w, " {:>22}", truncate(&r.server, 22))?;
    }
    writeln!(w)?;
    let mut names: Vec<String> = reports[0].ops.iter().map(|o| o.op.clone()).collect();
    names.push("all".into());
    for name in names {
        type Getter = fn(&OpReport) -> String;
        let rows: [(&str, Getter); 6] = [
            ("rate/s", |o| format!("{:.1}", o.throughput_per_s)),
            ("p50", |o| {
                o.latency.as_ref().map_or("-".into(), |p| ms(p.p50_us))
            }),
            ("p99", |o| {
                o.latency.as_ref().map_or("-".into(), |p| ms(p.p99_us))
            }),
            ("p99.9", |o| {
                o.latency.as_ref().map_or("-".into(), |p| ms(p.p999_us))
            }),
            ("max", |o| {
                o.latency.as_ref().map_or("-".into(), |p| ms(p.max_us))
            }),
            ("errors", |o| o.errors.to_string()),
        ];
        for (label, get) in rows {
            write!(w, "{:<30}", format!("{name} {label}"))?;
            for r in reports {
                let o = if name == "all" {
                    Some(&r.total)
                } else {
                    r.ops.iter().find(|o| o.op == name)
                };
                write!(w, " {:>22}", o.map_or("-".into(), get))?;
            }
            writeln!(w)?;
        }
    }
    for r in reports {
        for warn in &r.warnings {
            writeln!(w, "WARNING ({}): {warn}", r.server)?;
        }
    }
    Ok(())
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{KeyKind, PublicKeyInfo};
    use crate::stats::{ErrorKind, OpSet};
    use std::path::PathBuf;

    fn sample_report() -> Report {
        let keys = vec![PublicKeyInfo {
            source: PathBuf::from("k"),
            spki_der: vec![],
            key_bits: vec![],
            ski: [1; 20],
            kind: KeyKind::EcdsaP256,
        }];
        let profile = Profile {
            duration_s: 2.0,
            warmup_s: 1.0,
            mix: Profile::parse_mix("ecdsa-p256-sha256=1,ping=1").unwrap(),
            ..Profile::default()
        };
        let plan = Plan::new(profile, keys).unwrap();
        let mut totals = OpSet::new(true);
        let mut timeline = Vec::new();
        for i in 0..3u64 {
            let mut set = OpSet::new(true);
            for us in 1..=1000 {
                set.op(OpKind::EcdsaP256Sha256).ok(us * (i + 1), true);
                set.op(OpKind::Ping).ok(50, true);
            }
            set.op(OpKind::EcdsaP256Sha256).error(ErrorKind::Server(2));
            crate::stats::record(set.lag.as_mut().unwrap(), 20);
            if i > 0 {
                totals.merge(&set);
            }
            timeline.push(IntervalRow::of(&IntervalStats {
                index: i,
                len: crate::runner::INTERVAL,
                drain: false,
                warmup: i == 0,
                stats: set,
                in_flight: 1,
                cpu_pct: if i == 2 { 95.0 } else { 10.0 },
            }));
        }
        let run = RunResult {
            totals,
            counters: PoolCounters {
                handshakes: 8,
                ..PoolCounters::default()
            },
            sent: 6006,
            cpu_pct: 50.0,
            cpus: vec![Some(1)],
            warnings: vec![],
        };
        Report::new("127.0.0.1:2407".into(), &plan, run, timeline)
    }

    #[test]
    fn report_counts_rates_and_percentiles() {
        let r = sample_report();
        assert_eq!(r.total_ok(), 4000);
        assert_eq!(r.total_errors(), 2);
        assert_eq!(r.ops[0].op, "ecdsa-p256-sha256");
        assert_eq!(r.ops[0].throughput_per_s, 1000.0);
        let p = r.ops[0].latency.as_ref().unwrap();
        assert!(p.p50_us < p.p99_us && p.p99_us <= p.max_us);
        assert!((2999..=3002).contains(&p.max_us), "{}", p.max_us);
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].count, 2);
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("generator CPU at 95%")),
            "{:?}",
            r.warnings
        );
    }

    #[test]
    fn text_json_and_html_render() {
        let r = sample_report();
        let mut out = Vec::new();
        r.print_text(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("ecdsa-p256-sha256"), "{text}");
        assert!(text.contains("key not found"), "{text}");
        assert!(text.contains("WARNING: generator CPU"), "{text}");
        let j = r.to_json();
        assert_eq!(j["total"]["ok"], 4000);
        assert_eq!(
            j["ops"][0]["latency"]["p50_us"].as_u64(),
            r.ops[0].latency.as_ref().map(|p| p.p50_us)
        );
        assert_eq!(j["timeline"].as_array().unwrap().len(), 3);
        let html = r.to_html();
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("<polyline"));
        assert!(
            !html.contains("http://")
                || html.matches("http://").count()
                    == html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
        );
        let line = r.timeline[0].live_line();
        assert!(line.contains("[warm-up]") && line.contains("p99"), "{line}");
    }

    /// Issue 13: a run's last interval is cut short by the end of the run,
    /// and the one after the last request only drains answers in flight;
    /// neither may plot as a drop in throughput.
    #[test]
    fn partial_last_interval_and_drain_do_not_plot_as_a_drop() {
        let interval = |index: u64, len_ms: u64, ok: u64, drain: bool| {
            let mut set = OpSet::new(true);
            for _ in 0..ok {
                set.op(OpKind::EcdsaP256Sha256).ok(700, true);
            }
            IntervalRow::of(&IntervalStats {
                index,
                len: std::time::Duration::from_millis(len_ms),
                drain,
                warmup: false,
                stats: set,
                in_flight: 0,
                cpu_pct: 10.0,
            })
        };
        let mut r = sample_report();
        // Steady 2,000/s; the run ends 250 ms into interval 3 (500 answers,
        // still 2,000/s); interval 4 drains 30 late answers in 40 ms.
        r.timeline = vec![
            interval(0, 1000, 2000, false),
            interval(1, 1000, 2000, false),
            interval(2, 1000, 2000, false),
            interval(3, 250, 500, false),
            interval(4, 40, 30, true),
        ];
        let last = &r.timeline[3];
        assert!((last.t_s - 3.25).abs() < 1e-9, "{}", last.t_s);
        assert!(
            (last.rate_per_s - 2000.0).abs() < 1e-6,
            "{}",
            last.rate_per_s
        );
        let pts = r.rate_series();
        assert_eq!(
            pts.len(),
            4,
            "the drain interval is not a throughput: {pts:?}"
        );
        for (t, rate) in &pts {
            assert!((rate - 2000.0).abs() < 1e-6, "rate {rate} at {t} s");
        }
        // The plotted polyline: every point of the rate series at the same
        // height (no point falls towards the x axis).
        let html = r.to_html();
        let chart = html
            .split("<svg")
            .find(|c| c.contains("Throughput over time"))
            .unwrap();
        let line = chart.split("points=\"").nth(1).unwrap();
        let line = &line[..line.find('"').unwrap()];
        let ys: Vec<&str> = line
            .split(' ')
            .map(|p| p.split(',').nth(1).unwrap())
            .collect();
        assert_eq!(ys.len(), 4, "{line}");
        assert!(ys.iter().all(|y| *y == ys[0]), "{line}");
        // A zero-length interval (the run ended exactly on a boundary) has
        // no rate to plot rather than a division by zero.
        let empty = interval(5, 0, 0, false);
        assert_eq!(empty.rate_per_s, 0.0);
        r.timeline.push(empty);
        assert_eq!(r.rate_series().len(), 4);
    }

    #[test]
    fn hdr_interval_log_reads_back_with_the_hdrhistogram_reader() {
        use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
        use hdrhistogram::serialization::Deserializer;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.hlog");
        let mut log = HdrLog::create(&path).unwrap();
        for i in 0..3u64 {
            let mut set = OpSet::new(false);
            for us in 1..=100 {
                set.op(OpKind::EcdsaP256Sha256).ok(us * 10, false);
            }
            set.op(OpKind::Ping).ok(5, false);
            log.write_interval(&IntervalStats {
                index: i,
                len: crate::runner::INTERVAL,
                drain: false,
                warmup: false,
                stats: set,
                in_flight: 0,
                cpu_pct: 0.0,
            })
            .unwrap();
        }
        drop(log);
        let bytes = std::fs::read(&path).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("#[StartTime:").count(), 1, "{text}");
        let mut n = 0;
        let mut de = Deserializer::new();
        for e in IntervalLogIterator::new(&bytes) {
            if let LogEntry::Interval(h) = e.unwrap() {
                let b = base64_decode(h.encoded_histogram());
                let hist: Histogram<u64> = de.deserialize(&mut &b[..]).unwrap();
                if h.tag().map(|t| t.as_str()) == Some("ecdsa-p256-sha256") {
                    assert_eq!(hist.len(), 100);
                    assert!((995..=1001).contains(&hist.max()), "{}", hist.max());
                }
                n += 1;
            }
        }
        assert_eq!(n, 6);
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let val = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
        let mut out = Vec::new();
        for chunk in bytes.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                n |= (val(c) as u32) << (18 - 6 * i);
            }
            for i in 0..chunk.len().saturating_sub(1) {
                out.push((n >> (16 - 8 * i)) as u8);
            }
        }
        out
    }

    #[test]
    fn compare_prints_servers_side_by_side() {
        let a = sample_report();
        let mut b = sample_report();
        b.server = "127.0.0.1:3000".into();
        let mut out = Vec::new();
        print_compare(&[a, b], &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(
            s.contains("127.0.0.1:2407") && s.contains("127.0.0.1:3000"),
            "{s}"
        );
        assert!(s.contains("all p99"), "{s}");
    }
}
