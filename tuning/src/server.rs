//! Server-side sweep (`keycore tune --serve-config FILE --set KEY=V1,V2 ...`): launch
//! `keycore serve` with the same config file once per point, with exactly one setting changed
//! (as its flag, so the file stays untouched), find each point's highest open-loop rate within
//! the p99 SLO with `keycore_loadgen::capacity`, and recommend the best measured point as YAML
//! lines, taken from the server's own `-o` output for that point (so they are what the server
//! really read). Optionally confirm: launch the recommended config again and run one separate
//! open-loop load at the predicted rate.
//!
//! Owns: the launch / readiness / stop of one server process per point, the point order, the
//! recommendation rule and the duration estimate. Must not: measure anything itself (every
//! number comes from the load generator), leave a server running (each one is stopped by
//! SIGTERM, then SIGKILL after a bounded wait, also on error paths), or run unbounded (points,
//! steps per point and every wait are capped).

use crate::TuneError;
use keycore_loadgen::{capacity, CapacitySpec, LoadSpec};
use serde::Serialize;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Most points (baseline included) in one server sweep.
pub const MAX_SERVER_POINTS: usize = 32;
/// A change must beat the baseline by this fraction to be recommended over it (run-to-run
/// noise of capacity searches on a shared machine is of this order).
pub const MIN_GAIN: f64 = 0.05;
/// The confirmation run must hold a rate at least this fraction below the prediction.
pub const CONFIRM_TOLERANCE: f64 = 0.10;
/// A stopped server gets this long to drain before SIGKILL.
const STOP_WAIT: Duration = Duration::from_secs(15);

/// One setting to sweep: a config-table key and the values to try.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Setting {
    /// The YAML key (`pkcs11_sessions_per_core`).
    pub key: String,
    /// Values, as they would be written in the file.
    pub values: Vec<String>,
}

impl Setting {
    /// `KEY=V1,V2,...`; the key must be in the config table.
    pub fn parse(s: &str) -> Result<Setting, TuneError> {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| TuneError::SetEntry(s.to_string()))?;
        let key = k.trim().to_string();
        let known = keycore_config::SETTINGS.iter().find(|x| x.name == key);
        let Some(known) = known else {
            return Err(TuneError::SetUnknownKey(key));
        };
        if ["private_key_stores", "port", "listen_address"].contains(&key.as_str()) {
            return Err(TuneError::SetOwnedKey(key));
        }
        let values: Vec<String> = v
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect();
        if values.is_empty() {
            return Err(TuneError::SetNoValues(key));
        }
        if known.switch && !values.iter().all(|v| v == "true" || v == "false") {
            return Err(TuneError::SetNotBoolean(key));
        }
        Ok(Setting { key, values })
    }

    fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }
}

/// How to run the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSweepSpec {
    /// The `keycore` binary to launch.
    pub keycore_bin: PathBuf,
    /// The config file every point starts from.
    pub config: PathBuf,
    /// Settings to vary, one at a time.
    pub settings: Vec<Setting>,
    /// Capacity search per point (open loop).
    pub cap: CapacitySpec,
    /// Longest wait for a launched server to accept a TLS connection, seconds.
    pub startup_timeout_s: f64,
    /// Run the confirmation load at the recommended config.
    pub confirm: bool,
    /// Measured seconds of the confirmation run.
    pub confirm_duration_s: f64,
}

/// One measured point.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ServerPoint {
    /// The changed setting (None: the file as is).
    pub change: Option<(String, String)>,
    /// Highest open-loop rate that held the SLO, req/s.
    pub capacity_per_s: Option<f64>,
    /// p99 at that rate, ms.
    pub p99_ms: Option<f64>,
    /// Steps the search ran.
    pub steps: usize,
    /// The generator, not the server, ran out (capacity is a lower bound).
    pub generator_bound: bool,
    /// The search reached its step limit still holding (capacity is a lower bound).
    pub capped: bool,
    /// Launch or run failure.
    pub error: Option<String>,
    /// Wall time of the point, seconds.
    pub seconds: f64,
}

/// The recommendation.
#[derive(Clone, Debug, Serialize)]
pub struct Recommended {
    /// The change from the file (None: keep the file).
    pub change: Option<(String, String)>,
    /// Predicted capacity: the point's highest held rate, req/s.
    pub capacity_per_s: f64,
    /// YAML lines to put in the file, as the server printed them with `-o`.
    pub yaml: Vec<String>,
}

/// The separate confirmation run: a fresh server at the recommended config and a short capacity
/// search of its own, from 90% of the prediction up in steps of 10%.
#[derive(Clone, Debug, Serialize)]
pub struct Confirmation {
    /// The prediction, req/s.
    pub predicted_per_s: f64,
    /// Its steps: offered, achieved, p99 (ms), held.
    pub steps: Vec<ConfirmStep>,
    /// Highest rate that held in this run.
    pub measured_per_s: Option<f64>,
    /// The separate run held at least 90% of the prediction.
    pub confirmed: bool,
}

/// One step of the confirmation run.
#[derive(Clone, Debug, Serialize)]
pub struct ConfirmStep {
    /// Offered, req/s.
    pub offered_per_s: f64,
    /// Achieved OK/s.
    pub achieved_per_s: f64,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Held the SLO.
    pub held: bool,
}

/// Sweep result.
#[derive(Clone, Debug, Serialize)]
pub struct ServerSweepReport {
    /// Where the servers listened.
    pub server: String,
    /// The sweep.
    pub spec: ServerSweepSpec,
    /// Points in run order (baseline first).
    pub points: Vec<ServerPoint>,
    /// The recommendation, if any point held a rate.
    pub recommended: Option<Recommended>,
    /// The confirmation run, if asked for.
    pub confirmation: Option<Confirmation>,
    /// Notes.
    pub notes: Vec<String>,
}

/// The points: the file as is, then each value of each setting alone.
pub fn points(settings: &[Setting]) -> Vec<Option<(String, String)>> {
    let mut v = vec![None];
    for s in settings {
        for val in &s.values {
            v.push(Some((s.key.clone(), val.clone())));
        }
    }
    v
}

/// Worst-case duration of one point, seconds: start-up plus every step of the search.
pub fn point_bound_s(spec: &ServerSweepSpec) -> f64 {
    spec.startup_timeout_s
        + spec.cap.max_steps as f64 * (spec.cap.step_duration_s + spec.cap.step_warmup_s + 0.5)
}

/// Best point: highest capacity; a change must beat the baseline by [`MIN_GAIN`].
pub fn recommend(points: &[ServerPoint]) -> Option<(usize, f64)> {
    let base = points
        .first()
        .filter(|p| p.change.is_none())
        .and_then(|p| p.capacity_per_s);
    let best = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.capacity_per_s.map(|c| (i, c)))
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
    match base {
        Some(b) if best.1 < b * (1.0 + MIN_GAIN) => Some((0, b)),
        _ => Some(best),
    }
}

/// A running `keycore serve` of one point; stopped on drop.
struct Launched {
    child: Child,
}

impl Launched {
    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < STOP_WAIT {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_cmd(
    spec: &ServerSweepSpec,
    addr: SocketAddr,
    change: &Option<(String, String)>,
) -> Command {
    let mut c = Command::new(&spec.keycore_bin);
    c.arg("serve")
        .arg("-c")
        .arg(&spec.config)
        .args(["--port", &addr.port().to_string()])
        .args(["--listen-address", &addr.ip().to_string()])
        .args(["--metrics-port", "0"])
        .args(["--loglevel", "3"]);
    if let Some((k, v)) = change {
        let flag = Setting {
            key: k.clone(),
            values: Vec::new(),
        }
        .flag();
        let switch = keycore_config::SETTINGS
            .iter()
            .any(|s| s.name == k && s.switch);
        if switch {
            if v == "true" {
                c.arg(flag);
            }
        } else {
            c.arg(flag).arg(v);
        }
    }
    c
}

/// The YAML lines `-o` prints for `key` with this point's flags.
fn effective_lines(
    spec: &ServerSweepSpec,
    addr: SocketAddr,
    change: &Option<(String, String)>,
) -> Result<Vec<String>, TuneError> {
    let out = serve_cmd(spec, addr, change)
        .arg("-o")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| TuneError::Spawn {
            bin: spec.keycore_bin.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(TuneError::ShowConfig {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let Some((k, _)) = change else {
        return Ok(vec!["# keep the file's settings".into()]);
    };
    let lines: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{k}:")))
        .map(str::to_string)
        .collect();
    if lines.is_empty() {
        return Err(TuneError::ShowConfigMissing(k.clone()));
    }
    Ok(lines)
}

fn launch(
    spec: &ServerSweepSpec,
    load: &LoadSpec,
    change: &Option<(String, String)>,
    log: &Path,
) -> Result<Launched, TuneError> {
    let log_file = std::fs::File::create(log).map_err(|source| TuneError::ServeLog {
        path: log.to_path_buf(),
        source,
    })?;
    let child = serve_cmd(spec, load.server, change)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|source| TuneError::Spawn {
            bin: spec.keycore_bin.clone(),
            source,
        })?;
    let mut l = Launched { child };
    let tls = keycore_loadgen::ClientTls::from_paths(
        &load.tls,
        &keycore_loadgen::TlsOptions {
            tls12_only: load.profile.tls12_only,
            server_name: load.server_name.clone(),
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs_f64(spec.startup_timeout_s);
    loop {
        if let Ok(Some(status)) = l.child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(TuneError::ServeExited {
                status,
                log_tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            });
        }
        match keycore_loadgen::BlockingClient::connect(load.server, &tls) {
            Ok(_) => return Ok(l),
            Err(source) if Instant::now() >= deadline => {
                l.stop();
                return Err(TuneError::ServeNotReady {
                    addr: load.server,
                    timeout_s: spec.startup_timeout_s,
                    source,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Run the sweep. `progress` gets one line per step and point.
pub fn sweep(
    load: &LoadSpec,
    spec: &ServerSweepSpec,
    progress: &mut dyn FnMut(&str),
) -> Result<ServerSweepReport, TuneError> {
    let pts = points(&spec.settings);
    if pts.len() > MAX_SERVER_POINTS {
        return Err(TuneError::TooManyPoints {
            points: pts.len(),
            max: MAX_SERVER_POINTS,
        });
    }
    if !(spec.cap.max_steps >= 1 && spec.startup_timeout_s > 0.0) {
        return Err(TuneError::ServerSweepBounds {
            max_steps: spec.cap.max_steps,
            startup_timeout_s: spec.startup_timeout_s,
        });
    }
    if !spec.keycore_bin.is_file() {
        return Err(TuneError::BinaryNotFound(spec.keycore_bin.clone()));
    }
    let logs = tempfile::tempdir().map_err(TuneError::LogDir)?;
    let bound = point_bound_s(spec);
    progress(&format!(
        "server sweep: {} point(s) (the file, then one setting changed each), each at most {:.0} s \
         (start-up {} s + up to {} steps x {} s); expected at most {:.0} s{}",
        pts.len(),
        bound,
        spec.startup_timeout_s,
        spec.cap.max_steps,
        spec.cap.step_duration_s + spec.cap.step_warmup_s,
        bound * pts.len() as f64,
        if spec.confirm {
            format!(
                " plus a confirmation run of at most {:.0} s",
                3.0 * (spec.confirm_duration_s + spec.cap.step_warmup_s + 0.5)
                    + spec.startup_timeout_s
            )
        } else {
            String::new()
        }
    ));
    let mut out = Vec::new();
    for (i, change) in pts.iter().enumerate() {
        let t = Instant::now();
        let label = describe(change);
        progress(&format!("[{}/{}] {label}: starting", i + 1, pts.len()));
        let log = logs.path().join(format!("serve-{i}.log"));
        let r = launch(spec, load, change, &log).and_then(|mut srv| {
            let mut step = 0;
            let r = capacity(load, &spec.cap, &mut |rep| {
                step += 1;
                progress(&format!(
                    "[{}/{}] {label}: step {step} {:.0} req/s -> {:.0}/s, p99 {}, errors {}",
                    i + 1,
                    pts.len(),
                    rep.profile.rate,
                    rep.total.throughput_per_s,
                    rep.total
                        .latency
                        .as_ref()
                        .map_or("-".into(), |p| keycore_loadgen::report::ms(p.p99_us)),
                    rep.total.errors
                ));
            });
            srv.stop();
            r.map_err(TuneError::from)
        });
        let point = match r {
            Ok(c) => {
                let held = c.steps.iter().rev().find(|s| s.held).and_then(|s| s.p99_ms);
                ServerPoint {
                    change: change.clone(),
                    capacity_per_s: c.highest_held_per_s,
                    p99_ms: held,
                    steps: c.steps.len(),
                    generator_bound: c.generator_bound,
                    capped: c.steps.len() >= spec.cap.max_steps
                        && c.steps.last().is_some_and(|s| s.held),
                    error: None,
                    seconds: t.elapsed().as_secs_f64(),
                }
            }
            Err(e) => ServerPoint {
                change: change.clone(),
                capacity_per_s: None,
                p99_ms: None,
                steps: 0,
                generator_bound: false,
                capped: false,
                error: Some(keycore_keys::error_chain(&e)),
                seconds: t.elapsed().as_secs_f64(),
            },
        };
        progress(&format!(
            "[{}/{}] {label}: {} ({:.0} s)",
            i + 1,
            pts.len(),
            match (&point.capacity_per_s, &point.error) {
                (_, Some(e)) => format!("failed: {e}"),
                (Some(c), _) => format!("{c:.0} req/s held"),
                (None, _) => "no rate held".into(),
            },
            point.seconds
        ));
        out.push(point);
    }
    let mut notes = Vec::new();
    if out.iter().any(|p| p.generator_bound) {
        notes.push(
            "some points were generator-bound: their capacity is a lower bound (give the generator more cores or sample verification)"
                .into(),
        );
    }
    notes.push(format!(
        "capacity resolution: steps of x{} from {} req/s, so a point's figure is within one step below its true capacity",
        spec.cap.step_factor, spec.cap.start_rate
    ));
    let recommended = match recommend(&out) {
        Some((i, c)) => {
            let change = out[i].change.clone();
            let yaml = effective_lines(spec, load.server, &change)?;
            Some(Recommended {
                change,
                capacity_per_s: c,
                yaml,
            })
        }
        None => {
            notes.push("no point held any rate: nothing to recommend".into());
            None
        }
    };
    let confirmation = match (&recommended, spec.confirm) {
        (Some(r), true) => {
            progress(&format!(
                "confirm: {} at {:.0} req/s for {} s",
                describe(&r.change),
                r.capacity_per_s,
                spec.confirm_duration_s
            ));
            let log = logs.path().join("serve-confirm.log");
            let mut srv = launch(spec, load, &r.change, &log)?;
            let c = confirm(load, spec, r.capacity_per_s);
            srv.stop();
            Some(c?)
        }
        _ => None,
    };
    Ok(ServerSweepReport {
        server: load.server.to_string(),
        spec: spec.clone(),
        points: out,
        recommended,
        confirmation,
        notes,
    })
}

/// Confirmation search against a running server: rates 0.9, 0.99 and 1.09 x the prediction
/// (the same SLO rules as the sweep, `confirm_duration_s` each). Confirmed when the separate run
/// holds a rate within [`CONFIRM_TOLERANCE`] of the prediction or above it.
pub fn confirm(
    load: &LoadSpec,
    spec: &ServerSweepSpec,
    predicted: f64,
) -> Result<Confirmation, TuneError> {
    let cap = CapacitySpec {
        start_rate: predicted * (1.0 - CONFIRM_TOLERANCE),
        step_factor: 1.0 + CONFIRM_TOLERANCE,
        step_duration_s: spec.confirm_duration_s,
        max_steps: 3,
        ..spec.cap.clone()
    };
    let c = capacity(load, &cap, &mut |_| {})?;
    let measured = c.highest_held_per_s;
    Ok(Confirmation {
        predicted_per_s: predicted,
        steps: c
            .steps
            .iter()
            .map(|s| ConfirmStep {
                offered_per_s: s.offered_per_s,
                achieved_per_s: s.achieved_per_s,
                p99_ms: s.p99_ms,
                held: s.held,
            })
            .collect(),
        measured_per_s: measured,
        confirmed: measured.is_some_and(|m| m >= predicted * (1.0 - CONFIRM_TOLERANCE) - 1e-9),
    })
}

fn describe(change: &Option<(String, String)>) -> String {
    match change {
        None => "the file as is".into(),
        Some((k, v)) => format!("{k} = {v}"),
    }
}

impl ServerSweepReport {
    /// Evidence table, recommendation and confirmation.
    pub fn print_text(&self, w: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            w,
            "server sweep against {} (open loop; SLO p99 <= {} ms, error ratio <= {}; config {})",
            self.server,
            self.spec.cap.slo_p99_ms,
            self.spec.cap.max_error_ratio,
            self.spec.config.display()
        )?;
        writeln!(
            w,
            "{:<40} {:>14} {:>12} {:>6} {:>8}  note",
            "point", "capacity/s", "p99 there", "steps", "seconds"
        )?;
        for p in &self.points {
            writeln!(
                w,
                "{:<40} {:>14} {:>12} {:>6} {:>8.0}  {}",
                describe(&p.change),
                p.capacity_per_s.map_or("-".into(), |c| format!("{c:.0}")),
                p.p99_ms.map_or("-".into(), |v| format!("{v:.3}ms")),
                p.steps,
                p.seconds,
                match (&p.error, p.generator_bound, p.capped) {
                    (Some(e), _, _) => format!("error: {e}"),
                    (None, true, _) => "generator-bound (lower bound)".into(),
                    (None, false, true) => "still holding at --max-steps (lower bound)".into(),
                    _ => String::new(),
                }
            )?;
        }
        match &self.recommended {
            Some(r) => {
                writeln!(
                    w,
                    "recommended: {} (predicted capacity {:.0} req/s); YAML:",
                    describe(&r.change),
                    r.capacity_per_s
                )?;
                for l in &r.yaml {
                    writeln!(w, "  {l}")?;
                }
            }
            None => writeln!(w, "no recommendation (no point held a rate)")?,
        }
        if let Some(c) = &self.confirmation {
            let steps: Vec<String> = c
                .steps
                .iter()
                .map(|s| {
                    format!(
                        "{:.0}/s -> {:.0}/s p99 {} {}",
                        s.offered_per_s,
                        s.achieved_per_s,
                        s.p99_ms.map_or("-".into(), |v| format!("{v:.3}ms")),
                        if s.held { "held" } else { "failed" }
                    )
                })
                .collect();
            writeln!(
                w,
                "confirmation (fresh server, separate run from 90% of {:.0} req/s in 10% steps): {}; highest held {}: {}",
                c.predicted_per_s,
                steps.join(", "),
                c.measured_per_s.map_or("none".into(), |m| format!(
                    "{m:.0} req/s ({:+.1}% of the prediction)",
                    100.0 * (m - c.predicted_per_s) / c.predicted_per_s
                )),
                if c.confirmed {
                    "CONFIRMED within 10%"
                } else {
                    "NOT confirmed"
                }
            )?;
        }
        for n in &self.notes {
            writeln!(w, "note: {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(change: Option<(&str, &str)>, cap: Option<f64>) -> ServerPoint {
        ServerPoint {
            change: change.map(|(k, v)| (k.to_string(), v.to_string())),
            capacity_per_s: cap,
            p99_ms: cap.map(|_| 1.0),
            steps: 3,
            generator_bound: false,
            capped: false,
            error: None,
            seconds: 1.0,
        }
    }

    #[test]
    fn settings_parse_against_the_config_table() {
        let s = Setting::parse("pkcs11_sessions_per_core=1, 2,4").unwrap();
        assert_eq!(s.values, vec!["1", "2", "4"]);
        assert_eq!(s.flag(), "--pkcs11-sessions-per-core");
        assert!(matches!(
            Setting::parse("no_such_key=1"),
            Err(TuneError::SetUnknownKey(k)) if k == "no_such_key"
        ));
        assert!(matches!(
            Setting::parse("port=1,2"),
            Err(TuneError::SetOwnedKey(k)) if k == "port"
        ));
        assert!(matches!(
            Setting::parse("cores="),
            Err(TuneError::SetNoValues(k)) if k == "cores"
        ));
        assert!(matches!(
            Setting::parse("tls12_only=maybe"),
            Err(TuneError::SetNotBoolean(k)) if k == "tls12_only"
        ));
        assert!(matches!(
            Setting::parse("cores"),
            Err(TuneError::SetEntry(_))
        ));
        assert!(Setting::parse("tls12_only=true,false").is_ok());
    }

    #[test]
    fn points_change_one_setting_each_after_the_baseline() {
        let p = points(&[
            Setting::parse("cores=1,2").unwrap(),
            Setting::parse("pkcs11_dispatch=inline,offload").unwrap(),
        ]);
        assert_eq!(p.len(), 5);
        assert_eq!(p[0], None);
        assert_eq!(p[1], Some(("cores".into(), "1".into())));
        assert_eq!(p[4], Some(("pkcs11_dispatch".into(), "offload".into())));
    }

    #[test]
    fn a_change_must_beat_the_baseline_by_the_margin() {
        let base = pt(None, Some(1000.0));
        // 3% better: noise, keep the file.
        let r = recommend(&[base.clone(), pt(Some(("cores", "2")), Some(1030.0))]).unwrap();
        assert_eq!(r, (0, 1000.0));
        // 50% better: recommended.
        let r = recommend(&[base.clone(), pt(Some(("cores", "2")), Some(1500.0))]).unwrap();
        assert_eq!(r, (1, 1500.0));
        // Baseline failed: best of the rest.
        let r = recommend(&[pt(None, None), pt(Some(("cores", "1")), Some(10.0))]).unwrap();
        assert_eq!(r.0, 1);
        assert!(recommend(&[pt(None, None)]).is_none());
    }

    #[test]
    fn the_duration_bound_counts_every_step_and_the_start_up() {
        let spec = ServerSweepSpec {
            keycore_bin: "k".into(),
            config: "c".into(),
            settings: vec![],
            cap: CapacitySpec {
                step_duration_s: 2.0,
                step_warmup_s: 1.0,
                max_steps: 4,
                ..CapacitySpec::default()
            },
            startup_timeout_s: 10.0,
            confirm: false,
            confirm_duration_s: 5.0,
        };
        assert_eq!(point_bound_s(&spec), 10.0 + 4.0 * 3.5);
    }
}
