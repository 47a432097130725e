//! # keycore-tuning
//!
//! Answers for planners, on top of `keycore-loadgen`:
//! - [`sweep`]: the *client-side* concurrency an edge should use
//!   (connections x requests in flight, closed loop) against a running server:
//!   the knee of its throughput/latency curve;
//! - [`server`]: the *server-side* settings (`keycore tune --serve-config`):
//!   launches `keycore serve` once per point with one setting changed, finds
//!   each point's open-loop capacity within a p99 SLO, recommends the config;
//! - [`plan`]: `keycore plan`, key servers and HSMs (or cloud quota) for a
//!   peak of new handshakes, per vendor profile.
//!
//! It is a separate crate because it orchestrates many runs and owns no
//! measurement code: every number comes from `keycore_loadgen::run` or
//! `keycore_loadgen::capacity` (or, for the planner, a cited figure).
//!
//! Public surface: [`sweep`] with [`SweepSpec`], [`SweepPoint`],
//! [`SweepReport`] and [`recommend`]; `keycore tune` through [`TuneArgs`]
//! and [`run_cli`]; modules [`server`], [`plan`] and [`compare`];
//! [`MAX_POINTS`]. Errors: [`TuneError`] (sweeps, comparison report; the load
//! generator's error passes through) and `plan::PlanError` (`keycore plan`).

pub mod compare;
mod error;
pub mod plan;
pub mod server;

pub use error::TuneError;

use keycore_loadgen::{run, LoadSpec, LoopMode};
use std::io::Write;

/// Most points in one sweep (each is a full run; this bounds a typo'd grid).
pub const MAX_POINTS: usize = 64;

/// Doubling concurrency must add at least this fraction of throughput to
/// count as still climbing (else the curve has reached its knee).
const KNEE_GAIN: f64 = 0.05;

/// What to sweep. Defaults are assumptions, documented per field.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepSpec {
    /// Connection counts to try. Default 1, 2, 4, 8 (assumption: the range
    /// an edge pool per key server spans).
    pub connections: Vec<usize>,
    /// Total requests in flight to try. Default 1, 8, 64, 512 (from one
    /// request at a time to half the reference's 1024 per connection).
    pub concurrency: Vec<usize>,
    /// Measured seconds per point. Default 5 (assumption).
    pub step_duration_s: f64,
    /// Warm-up seconds per point. Default 1 (assumption).
    pub step_warmup_s: f64,
    /// A point is acceptable if its p99 is at most this, ms. Default 10
    /// (assumption, as the load generator's capacity mode).
    pub slo_p99_ms: f64,
}

impl Default for SweepSpec {
    fn default() -> Self {
        SweepSpec {
            connections: vec![1, 2, 4, 8],
            concurrency: vec![1, 8, 64, 512],
            step_duration_s: 5.0,
            step_warmup_s: 1.0,
            slo_p99_ms: 10.0,
        }
    }
}

/// One measured point.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SweepPoint {
    /// Connections used.
    pub connections: usize,
    /// Requests in flight.
    pub concurrency: usize,
    /// OK responses per second.
    pub throughput_per_s: f64,
    /// Median latency, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, ms.
    pub p99_ms: Option<f64>,
    /// Failed requests.
    pub errors: u64,
    /// The generator, not the server, may have been the limit.
    pub generator_bound: bool,
    /// p99 within the SLO and no errors.
    pub meets_slo: bool,
}

/// The sweep's table and recommendation.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SweepReport {
    /// Server address.
    pub server: String,
    /// The sweep run.
    pub spec: SweepSpec,
    /// Points in run order.
    pub points: Vec<SweepPoint>,
    /// Highest throughput that met the SLO (ties: fewer connections, then
    /// lower concurrency — less load on the server for the same result).
    pub recommended: Option<SweepPoint>,
    /// Notes: knee, generator limits, why nothing was recommended.
    pub notes: Vec<String>,
}

impl SweepReport {
    /// Human-readable table.
    pub fn print_text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "concurrency sweep against {} (closed loop; SLO p99 <= {} ms)",
            self.server, self.spec.slo_p99_ms
        )?;
        writeln!(
            w,
            "{:>11} {:>11} {:>12} {:>10} {:>10} {:>7}  verdict",
            "connections", "in flight", "ok/s", "p50", "p99", "errors"
        )?;
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}ms"));
        for p in &self.points {
            writeln!(
                w,
                "{:>11} {:>11} {:>12.1} {:>10} {:>10} {:>7}  {}{}",
                p.connections,
                p.concurrency,
                p.throughput_per_s,
                ms(p.p50_ms),
                ms(p.p99_ms),
                p.errors,
                if p.meets_slo { "ok" } else { "over SLO" },
                if p.generator_bound {
                    " (generator-bound)"
                } else {
                    ""
                }
            )?;
        }
        match &self.recommended {
            Some(p) => writeln!(
                w,
                "recommended: {} connection(s), {} in flight: {:.1} ok/s at p99 {}",
                p.connections,
                p.concurrency,
                p.throughput_per_s,
                ms(p.p99_ms)
            )?,
            None => writeln!(w, "no point met the SLO")?,
        }
        for n in &self.notes {
            writeln!(w, "note: {n}")?;
        }
        Ok(())
    }

    /// JSON for machines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    }
}

/// Run `spec`'s traffic (its mix, keys, TLS) in closed loop for every
/// (connections, concurrency) pair, in order; `on_point` sees each result.
pub fn sweep(
    spec: &LoadSpec,
    s: &SweepSpec,
    on_point: &mut dyn FnMut(&SweepPoint),
) -> Result<SweepReport, TuneError> {
    if s.connections.is_empty() || s.concurrency.is_empty() {
        return Err(TuneError::SweepEmpty);
    }
    let n = s.connections.len() * s.concurrency.len();
    if n > MAX_POINTS {
        return Err(TuneError::TooManyPoints {
            points: n,
            max: MAX_POINTS,
        });
    }
    if !(s.slo_p99_ms > 0.0 && s.step_duration_s > 0.0) {
        return Err(TuneError::SweepBounds {
            slo_p99_ms: s.slo_p99_ms,
            step_duration_s: s.step_duration_s,
        });
    }
    let mut points = Vec::with_capacity(n);
    for &conns in &s.connections {
        for &conc in &s.concurrency {
            let mut one = spec.clone();
            one.profile.mode = LoopMode::Closed;
            one.profile.connections = conns;
            one.profile.concurrency = conc;
            one.profile.duration_s = s.step_duration_s;
            one.profile.warmup_s = s.step_warmup_s;
            let r = run(&one)?;
            let lat = r.total.latency.as_ref();
            let p99_ms = lat.map(|p| p.p99_us as f64 / 1000.0);
            let point = SweepPoint {
                connections: conns,
                concurrency: conc,
                throughput_per_s: r.total.throughput_per_s,
                p50_ms: lat.map(|p| p.p50_us as f64 / 1000.0),
                p99_ms,
                errors: r.total_errors(),
                generator_bound: r.warnings.iter().any(|w| w.starts_with("generator")),
                meets_slo: r.total_errors() == 0 && p99_ms.is_some_and(|p| p <= s.slo_p99_ms),
            };
            on_point(&point);
            points.push(point);
        }
    }
    let recommended = recommend(&points);
    let mut notes = knees(&points);
    if points.iter().any(|p| p.generator_bound) {
        notes.push(
            "some points were generator-bound: give the generator more cores (--cores) or sample verification".into(),
        );
    }
    if recommended.is_none() {
        notes.push(format!(
            "no point had p99 <= {} ms without errors: the server can't meet this SLO at any tried concurrency",
            s.slo_p99_ms
        ));
    }
    Ok(SweepReport {
        server: spec.server.to_string(),
        spec: s.clone(),
        points,
        recommended,
        notes,
    })
}

/// The best point that meets the SLO.
pub fn recommend(points: &[SweepPoint]) -> Option<SweepPoint> {
    points
        .iter()
        .filter(|p| p.meets_slo)
        .max_by(|a, b| {
            a.throughput_per_s
                .total_cmp(&b.throughput_per_s)
                .then(b.connections.cmp(&a.connections))
                .then(b.concurrency.cmp(&a.concurrency))
        })
        .cloned()
}

/// Per connection count: the concurrency after which more in flight stopped
/// adding throughput (the knee), as notes.
fn knees(points: &[SweepPoint]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut conns: Vec<usize> = points.iter().map(|p| p.connections).collect();
    conns.dedup();
    for c in conns {
        let mut row: Vec<&SweepPoint> = points.iter().filter(|p| p.connections == c).collect();
        row.sort_by_key(|p| p.concurrency);
        for w in row.windows(2) {
            if w[1].throughput_per_s < w[0].throughput_per_s * (1.0 + KNEE_GAIN) {
                notes.push(format!(
                    "{c} connection(s): throughput stops climbing after {} in flight ({:.1} ok/s; {} gave {:.1})",
                    w[0].concurrency, w[0].throughput_per_s, w[1].concurrency, w[1].throughput_per_s
                ));
                break;
            }
        }
    }
    notes
}

/// `keycore tune`: the load generator's flags (server, TLS, keys, mix...),
/// plus the grid to sweep. `--step-duration`, `--warmup` and `--slo-p99-ms`
/// apply per point.
#[derive(clap::Args, Debug, Clone)]
pub struct TuneArgs {
    /// Everything `keycore loadgen` takes.
    #[command(flatten)]
    pub load: keycore_loadgen::LoadgenArgs,
    /// Connection counts to sweep, comma-separated. Default 1,2,4,8.
    #[arg(long, value_delimiter = ',')]
    pub sweep_connections: Vec<usize>,
    /// Requests-in-flight values to sweep, comma-separated. Default 1,8,64,512.
    #[arg(long, value_delimiter = ',')]
    pub sweep_concurrency: Vec<usize>,
    /// Server-side sweep: launch `keycore serve -c FILE` per point (listening
    /// on --server's address) instead of sweeping client concurrency.
    #[arg(long, value_name = "FILE")]
    pub serve_config: Option<std::path::PathBuf>,
    /// Server-side sweep: a config key and its values, KEY=V1,V2 (repeat for
    /// more keys; each point changes one setting from the file).
    #[arg(long = "set", value_name = "KEY=V1,V2")]
    pub set: Vec<String>,
    /// Server-side sweep: the keycore binary to launch. Default: this one.
    #[arg(long, value_name = "PATH")]
    pub keycore_bin: Option<std::path::PathBuf>,
    /// Server-side sweep: most capacity steps per point. Default 8.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Server-side sweep: longest wait for a launched server, seconds. Default 30.
    #[arg(long, value_name = "SECONDS")]
    pub startup_timeout: Option<f64>,
    /// Server-side sweep: afterwards, launch the recommended config and run
    /// one open-loop load at the predicted capacity (within 10% = confirmed).
    #[arg(long)]
    pub confirm: bool,
    /// Server-side sweep: measured seconds of the confirmation run. Default 2x --step-duration.
    #[arg(long, value_name = "SECONDS")]
    pub confirm_duration: Option<f64>,
}

/// `keycore tune --serve-config`: the server-side sweep from the flags.
fn run_server_cli(args: &TuneArgs, config: &std::path::Path) -> Result<(), TuneError> {
    let load = args.load.to_spec()?;
    let settings = args
        .set
        .iter()
        .map(|s| server::Setting::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let mut cap = args.load.capacity_spec();
    // Shorter defaults than a lone capacity search: a sweep runs many.
    cap.step_duration_s = args.load.step_duration.unwrap_or(3.0);
    cap.step_warmup_s = args.load.warmup.unwrap_or(1.0);
    cap.step_factor = args.load.step_factor.unwrap_or(1.25);
    cap.max_steps = args.max_steps.unwrap_or(8);
    let spec = server::ServerSweepSpec {
        keycore_bin: match &args.keycore_bin {
            Some(p) => p.clone(),
            None => std::env::current_exe().map_err(TuneError::CurrentExe)?,
        },
        config: config.to_path_buf(),
        settings,
        confirm_duration_s: args.confirm_duration.unwrap_or(2.0 * cap.step_duration_s),
        cap,
        startup_timeout_s: args.startup_timeout.unwrap_or(30.0),
        confirm: args.confirm,
    };
    let quiet = args.load.quiet;
    let mut load = load;
    load.live = false;
    let rep = server::sweep(&load, &spec, &mut |l| {
        if !quiet {
            eprintln!("{l}");
        }
    })?;
    let mut out = std::io::stdout().lock();
    let printed = if args.load.json {
        json_line(&mut out, &rep)
    } else {
        rep.print_text(&mut out)
    };
    printed.map_err(TuneError::Output)
}

/// `v` as pretty JSON and a newline.
fn json_line(out: &mut dyn Write, v: &impl serde::Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)
}

/// Run a sweep from the command line and print the table (or JSON).
pub fn run_cli(args: &TuneArgs) -> Result<(), TuneError> {
    if let Some(c) = &args.serve_config {
        return run_server_cli(args, c);
    }
    if !args.set.is_empty() || args.confirm {
        return Err(TuneError::SetWithoutServeConfig);
    }
    let spec = args.load.to_spec()?;
    let d = SweepSpec::default();
    let s = SweepSpec {
        connections: if args.sweep_connections.is_empty() {
            d.connections
        } else {
            args.sweep_connections.clone()
        },
        concurrency: if args.sweep_concurrency.is_empty() {
            d.concurrency
        } else {
            args.sweep_concurrency.clone()
        },
        step_duration_s: args.load.step_duration.unwrap_or(d.step_duration_s),
        step_warmup_s: args.load.warmup.unwrap_or(d.step_warmup_s),
        slo_p99_ms: args.load.slo_p99_ms.unwrap_or(d.slo_p99_ms),
    };
    let live = !args.load.quiet;
    let rep = sweep(&spec, &s, &mut |p| {
        if live {
            eprintln!(
                "{} connection(s), {} in flight: {:.1} ok/s, p99 {}",
                p.connections,
                p.concurrency,
                p.throughput_per_s,
                p.p99_ms.map_or("-".into(), |v| format!("{v:.3}ms"))
            );
        }
    })?;
    let mut out = std::io::stdout().lock();
    let printed = if args.load.json {
        json_line(&mut out, &rep.to_json())
    } else {
        rep.print_text(&mut out)
    };
    printed.map_err(TuneError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(connections: usize, concurrency: usize, tput: f64, p99: f64, slo: f64) -> SweepPoint {
        SweepPoint {
            connections,
            concurrency,
            throughput_per_s: tput,
            p50_ms: Some(p99 / 2.0),
            p99_ms: Some(p99),
            errors: 0,
            generator_bound: false,
            meets_slo: p99 <= slo,
        }
    }

    #[test]
    fn recommends_the_fastest_point_within_the_slo_and_prefers_fewer_resources_on_ties() {
        let pts = vec![
            pt(1, 1, 1000.0, 1.0, 10.0),
            pt(1, 8, 5000.0, 3.0, 10.0),
            pt(1, 64, 9000.0, 20.0, 10.0),
            pt(2, 8, 5000.0, 2.5, 10.0),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!((r.connections, r.concurrency), (1, 8));
        assert!(recommend(&[pt(1, 1, 10.0, 50.0, 10.0)]).is_none());
    }

    #[test]
    fn cli_grid_parses() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: TuneArgs,
        }
        let c = Cli::try_parse_from([
            "tune",
            "--server",
            "127.0.0.1:1",
            "--ca",
            "a",
            "--cert",
            "b",
            "--key",
            "c",
            "--keys",
            "k",
            "--sweep-connections",
            "1,4",
            "--sweep-concurrency",
            "2,32,256",
        ])
        .unwrap();
        assert_eq!(c.a.sweep_connections, vec![1, 4]);
        assert_eq!(c.a.sweep_concurrency, vec![2, 32, 256]);
    }

    #[test]
    fn knee_is_where_doubling_stops_paying() {
        let pts = vec![
            pt(2, 1, 1000.0, 1.0, 10.0),
            pt(2, 8, 6000.0, 2.0, 10.0),
            pt(2, 64, 6100.0, 9.0, 10.0),
            pt(2, 512, 6150.0, 80.0, 10.0),
        ];
        let n = knees(&pts);
        assert_eq!(n.len(), 1);
        assert!(n[0].contains("after 8 in flight"), "{n:?}");
    }
}
