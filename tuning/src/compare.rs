//! Vendor comparison report (`keycore loadgen --compare-report FILE --server A --server B ...
//! [--label A=NAME]`): the same traffic profile's open-loop capacity search against each
//! backend in turn, and one HTML page side by side — rate vs p50 and p99 curves, the knee (the
//! highest rate that held the SLO), achieved vs offered with each product's published ceiling
//! overlaid, the error ratio and error kinds, and each operation's latency at the lowest rate
//! (what one operation costs on that backend when nothing queues).
//!
//! Owns: the per-backend collection of capacity steps and the page. Ceilings come from
//! `keycore_hsmprofiles` (HSM products) and the planner's cloud-quota figures (one
//! definition each), always with their source. Must not: measure anything itself (every point is
//! a `keycore_loadgen::capacity` step) or run unbounded (at most
//! `keycore_loadgen::MAX_COMPARE_SERVERS` backends, each search at most `max_steps` steps).

use crate::plan;
use crate::TuneError;
use keycore_hsmprofiles as profiles;
use keycore_loadgen::report::{html_escape, svg_chart, Chart};
use keycore_loadgen::{capacity, CapacitySpec, LoadSpec};
use serde::Serialize;
use std::fmt::Write as _;
use std::net::SocketAddr;

/// A backend to compare.
#[derive(Clone, Debug, Serialize)]
pub struct Backend {
    /// Shown name (an hsmsim profile name or a cloud target gets its ceiling overlaid).
    pub label: String,
    /// Key server in front of it.
    pub server: SocketAddr,
    /// Keys to use instead of the profile's (a cloud stand-in holds its own).
    pub keys: Option<Vec<std::path::PathBuf>>,
}

/// A published ceiling for the run's mix.
#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// Operations per second of one unit (one HSM / partition, one quota).
    pub per_s: f64,
    /// How it was derived, with the sources.
    pub source: String,
}

/// One capacity step.
#[derive(Clone, Debug, Serialize)]
pub struct Step {
    /// Offered rate.
    pub offered_per_s: f64,
    /// Achieved OK/s.
    pub achieved_per_s: f64,
    /// p50, ms.
    pub p50_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
    /// Failed requests.
    pub errors: u64,
    /// Failed / sent.
    pub error_ratio: f64,
}

/// Per-operation latency at the lowest rate.
#[derive(Clone, Debug, Serialize)]
pub struct OpCost {
    /// Operation.
    pub op: String,
    /// p50, ms.
    pub p50_ms: Option<f64>,
    /// p99, ms.
    pub p99_ms: Option<f64>,
}

/// One backend's result.
#[derive(Clone, Debug, Serialize)]
pub struct BackendResult {
    /// The backend.
    pub backend: Backend,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Highest rate that held the SLO.
    pub knee_per_s: Option<f64>,
    /// The generator ran out first (the knee is a lower bound).
    pub generator_bound: bool,
    /// Operation latency at the first (lowest) step.
    pub op_cost: Vec<OpCost>,
    /// Errors over all steps by kind.
    pub errors_by_kind: Vec<(String, u64)>,
    /// Published ceiling, if the label names a known product.
    pub ceiling: Option<Ceiling>,
    /// A failure that stopped this backend's search.
    pub error: Option<String>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// The traffic, in words.
    pub load: String,
    /// The search.
    pub cap: CapacitySpec,
    /// Results in run order.
    pub backends: Vec<BackendResult>,
}

/// The published ceiling of `label` for this mix (op name -> weight), if known.
pub fn ceiling(label: &str, mix: &std::collections::BTreeMap<String, f64>) -> Option<Ceiling> {
    let total: f64 = mix.values().sum();
    if total <= 0.0 {
        return None;
    }
    // `+ 0.0`: an empty f64 sum is -0.0, which would print as "-0.00".
    let share = |pred: &dyn Fn(&str) -> bool| {
        mix.iter()
            .filter(|(k, _)| pred(k))
            .map(|(_, w)| w / total)
            .sum::<f64>()
            + 0.0
    };
    let ec = share(&|k| k.starts_with("ecdsa"));
    let ed = share(&|k| k.starts_with("ed25519"));
    let rsa = share(&|k| k.starts_with("rsa"));
    let assumed = "ASSUMED: RSA keys are RSA-2048 and EC keys P-256 (the figures' reference sizes)";
    if let Some(f) = profiles::figures(label) {
        let get = |k: &str| f.iter().find(|(n, _)| *n == k).map(|(_, x)| *x);
        let (r, e, d) = (
            get("rsa2048_sign_per_sec")?,
            get("ec_p256_sign_per_sec")?,
            get("ed25519_sign_per_sec")?,
        );
        let time = rsa / r.value + ec / e.value + ed / d.value;
        if time <= 0.0 {
            return None;
        }
        let mut per_s = 1.0 / time;
        // Only the algorithms the mix uses, each with its figure's source.
        let used: Vec<(f64, &str, profiles::Figure)> =
            [(rsa, "RSA", r), (ec, "EC", e), (ed, "Ed25519", d)]
                .into_iter()
                .filter(|(share, _, _)| *share > 0.0)
                .collect();
        let terms: Vec<String> = used
            .iter()
            .map(|(share, n, f)| format!("{share:.2} / {:.0} {n}", f.value))
            .collect();
        let sources: Vec<String> = used
            .iter()
            .map(|(_, n, f)| format!("{n}: {}", f.source))
            .collect();
        let mut source = format!(
            "1 / ({}) for one HSM; {}; {assumed}",
            terms.join(" + "),
            sources.join("; ")
        );
        if let Some(cap) = get("licence_cap_per_sec") {
            if cap.value < per_s {
                per_s = cap.value;
                let _ = write!(source, "; licence cap {:.0}/s: {}", cap.value, cap.source);
            }
        }
        return Some(Ceiling { per_s, source });
    }
    let q = plan::cloud_quota(label)?;
    // AWS KMS has separate RSA and ECC quotas: the mix reaches the first one it fills.
    let per_s = if q.separate_rsa_ecc {
        let ecc = ec + ed;
        let by_rsa = if rsa > 0.0 { q.per_s / rsa } else { f64::MAX };
        let by_ecc = if ecc > 0.0 { q.per_s / ecc } else { f64::MAX };
        by_rsa.min(by_ecc)
    } else {
        q.per_s
    };
    Some(Ceiling {
        per_s,
        source: format!("{} ({:.0}/s per unit)", q.source, q.per_s),
    })
}

/// Run the comparison; `progress` gets one line per step.
pub fn compare(
    load: &LoadSpec,
    backends: &[Backend],
    cap: &CapacitySpec,
    progress: &mut dyn FnMut(&str),
) -> Result<CompareReport, TuneError> {
    if !(1..=keycore_loadgen::MAX_COMPARE_SERVERS).contains(&backends.len()) {
        return Err(TuneError::CompareBackends {
            got: backends.len(),
            max: keycore_loadgen::MAX_COMPARE_SERVERS,
        });
    }
    let per = cap.max_steps as f64 * (cap.step_duration_s + cap.step_warmup_s + 0.5);
    progress(&format!(
        "comparison: {} backend(s), each a capacity search of at most {} steps: at most {:.0} s",
        backends.len(),
        cap.max_steps,
        per * backends.len() as f64
    ));
    let mut out = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let mut spec = load.clone();
        spec.server = b.server;
        spec.live = false;
        if let Some(k) = &b.keys {
            spec.keys = k.clone();
        }
        let mut steps = Vec::new();
        let mut op_cost = Vec::new();
        let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
        let r = capacity(&spec, cap, &mut |rep| {
            let ms = |us: u64| us as f64 / 1000.0;
            let sent = (rep.total.ok + rep.total.errors).max(1);
            steps.push(Step {
                offered_per_s: rep.profile.rate,
                achieved_per_s: rep.total.throughput_per_s,
                p50_ms: rep.total.latency.as_ref().map(|p| ms(p.p50_us)),
                p99_ms: rep.total.latency.as_ref().map(|p| ms(p.p99_us)),
                errors: rep.total.errors,
                error_ratio: rep.total.errors as f64 / sent as f64,
            });
            if op_cost.is_empty() {
                op_cost = rep
                    .ops
                    .iter()
                    .map(|o| OpCost {
                        op: o.op.clone(),
                        p50_ms: o.latency.as_ref().map(|p| ms(p.p50_us)),
                        p99_ms: o.latency.as_ref().map(|p| ms(p.p99_us)),
                    })
                    .collect();
            }
            for e in &rep.errors {
                *kinds.entry(format!("{}: {}", e.op, e.error)).or_default() += e.count;
            }
            progress(&format!(
                "[{}/{}] {}: {:.0} req/s -> {:.0}/s, p99 {}, errors {}",
                i + 1,
                backends.len(),
                b.label,
                rep.profile.rate,
                rep.total.throughput_per_s,
                rep.total
                    .latency
                    .as_ref()
                    .map_or("-".into(), |p| keycore_loadgen::report::ms(p.p99_us)),
                rep.total.errors
            ));
        });
        let (knee, gb, error) = match r {
            Ok(c) => (c.highest_held_per_s, c.generator_bound, None),
            Err(e) => (None, false, Some(keycore_keys::error_chain(&e))),
        };
        out.push(BackendResult {
            backend: b.clone(),
            steps,
            knee_per_s: knee,
            generator_bound: gb,
            op_cost,
            errors_by_kind: kinds.into_iter().collect(),
            ceiling: ceiling(&b.label, &load.profile.mix),
            error,
        });
    }
    Ok(CompareReport {
        load: describe_load(load),
        cap: cap.clone(),
        backends: out,
    })
}

fn describe_load(load: &LoadSpec) -> String {
    let mix: Vec<String> = load
        .profile
        .mix
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "open loop, {:?} arrivals, mix {}, {} connection(s)",
        load.profile.arrivals,
        mix.join(","),
        load.profile.connections
    )
}

fn fmt_opt(v: Option<f64>, unit: &str) -> String {
    v.map_or("-".into(), |v| format!("{v:.3}{unit}"))
}

impl CompareReport {
    /// Side-by-side text table.
    pub fn to_text(&self) -> String {
        let mut s = format!(
            "comparison ({}); SLO p99 <= {} ms\n{:<28} {:>10} {:>12} {:>12} {:>12}  ceiling\n",
            self.load, self.cap.slo_p99_ms, "backend", "knee/s", "p50 (low)", "p99 (low)", "errors"
        );
        for b in &self.backends {
            let first = b.steps.first();
            if let Some(e) = &b.error {
                let _ = writeln!(s, "{:<28} error: {e}", b.backend.label);
                continue;
            }
            let _ = writeln!(
                s,
                "{:<28} {:>10} {:>12} {:>12} {:>12}  {}",
                b.backend.label,
                b.knee_per_s.map_or("-".into(), |k| format!("{k:.0}")),
                fmt_opt(first.and_then(|f| f.p50_ms), "ms"),
                fmt_opt(first.and_then(|f| f.p99_ms), "ms"),
                b.steps.iter().map(|s| s.errors).sum::<u64>(),
                b.ceiling
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.0}/s", c.per_s))
            );
        }
        s
    }

    /// The HTML page.
    pub fn to_html(&self) -> String {
        let series = |f: &dyn Fn(&Step) -> Option<f64>, suffix: &str| {
            self.backends
                .iter()
                .map(|b| {
                    (
                        format!("{} {suffix}", b.backend.label),
                        b.steps
                            .iter()
                            .filter_map(|s| f(s).map(|y| (s.offered_per_s, y)))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let p99 = svg_chart(&Chart {
            title: "p99 latency vs offered rate (from the scheduled time)",
            x_label: "offered requests/s",
            y_label: "p99 ms (log)",
            log_y: true,
            x_ticks: None,
            series: series(&|s| s.p99_ms, "p99"),
            shade_until: None,
        });
        let p50 = svg_chart(&Chart {
            title: "p50 latency vs offered rate",
            x_label: "offered requests/s",
            y_label: "p50 ms (log)",
            log_y: true,
            x_ticks: None,
            series: series(&|s| s.p50_ms, "p50"),
            shade_until: None,
        });
        let max_offered = self
            .backends
            .iter()
            .flat_map(|b| b.steps.iter().map(|s| s.offered_per_s))
            .fold(0.0, f64::max);
        let mut tput = series(&|s| Some(s.achieved_per_s), "achieved");
        let mut beyond = Vec::new();
        for b in &self.backends {
            if let Some(c) = &b.ceiling {
                if c.per_s <= 1.5 * max_offered {
                    tput.push((
                        format!("{} published ceiling", b.backend.label),
                        vec![(c.per_s, 0.0), (c.per_s, max_offered)],
                    ));
                } else {
                    beyond.push(format!(
                        "{}: published ceiling {:.0}/s is beyond this chart",
                        b.backend.label, c.per_s
                    ));
                }
            }
        }
        let tput = svg_chart(&Chart {
            title: "achieved vs offered rate; vertical lines: published ceilings of one unit",
            x_label: "offered requests/s",
            y_label: "achieved OK/s",
            log_y: false,
            x_ticks: None,
            series: tput,
            shade_until: None,
        });
        let mut rows = String::new();
        for b in &self.backends {
            let sent_err: u64 = b.steps.iter().map(|s| s.errors).sum();
            let costs: Vec<String> = b
                .op_cost
                .iter()
                .map(|o| {
                    format!(
                        "{}: p50 {} / p99 {}",
                        o.op,
                        fmt_opt(o.p50_ms, " ms"),
                        fmt_opt(o.p99_ms, " ms")
                    )
                })
                .collect();
            let kinds: Vec<String> = b
                .errors_by_kind
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            let _ = write!(
                rows,
                "<tr><td><b>{}</b><br><small>{}</small></td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><small>{}</small></td></tr>",
                html_escape(&b.backend.label),
                b.backend.server,
                match (&b.error, b.knee_per_s) {
                    (Some(e), _) => format!("error: {}", html_escape(e)),
                    (None, Some(k)) => format!("{k:.0}/s"),
                    (None, None) => "none held".into(),
                },
                if b.generator_bound { " (lower bound: generator-bound)" } else { "" },
                html_escape(&costs.join("<br>")).replace("&lt;br&gt;", "<br>"),
                if sent_err == 0 {
                    "0".to_string()
                } else {
                    html_escape(&format!(
                        "{sent_err} ({:.2}% at the last step); {}",
                        100.0 * b.steps.last().map_or(0.0, |s| s.error_ratio),
                        kinds.join("; ")
                    ))
                },
                b.ceiling
                    .as_ref()
                    .map_or("-".into(), |c| format!("{:.0}/s", c.per_s)),
                match (b.knee_per_s, &b.ceiling) {
                    (Some(k), Some(c)) => format!("{:.0}%", 100.0 * k / c.per_s),
                    _ => "-".into(),
                },
                html_escape(&b.ceiling.as_ref().map_or(String::new(), |c| c.source.clone()))
            );
        }
        let steps: String = self
            .backends
            .iter()
            .map(|b| {
                let lines: Vec<String> = b
                    .steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{:>10.0} {:>10.0} {:>12} {:>12} {:>7}",
                            s.offered_per_s,
                            s.achieved_per_s,
                            fmt_opt(s.p50_ms, "ms"),
                            fmt_opt(s.p99_ms, "ms"),
                            s.errors
                        )
                    })
                    .collect();
                format!(
                    "<h3>{}</h3><pre>{:>10} {:>10} {:>12} {:>12} {:>7}\n{}</pre>",
                    html_escape(&b.backend.label),
                    "offered/s",
                    "achieved/s",
                    "p50",
                    "p99",
                    "errors",
                    lines.join("\n")
                )
            })
            .collect();
        let beyond: String = beyond
            .iter()
            .map(|b| format!("<li>{}</li>", html_escape(b)))
            .collect();
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>keycore backend comparison</title>\
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;margin:1em 0;}} \
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top;overflow-wrap:anywhere;}} \
td:last-child{{max-width:28em;}} svg{{display:block;margin:1em 0;}}</style>\
</head><body>\n<h1>keycore backend comparison</h1>\n<p>{} &mdash; capacity search from {} req/s, x{} per step, {} s per step; \
the knee is the highest offered rate whose p99 stayed within {} ms with no more than {} errors and at least 95% of it achieved.</p>\n\
<table><tr><th>backend</th><th>knee</th><th>operation latency at the lowest rate</th><th>errors</th>\
<th>published ceiling (one unit)</th><th>knee / ceiling</th><th>ceiling source</th></tr>{rows}</table>\n\
<ul>{beyond}</ul>\n{p99}\n{p50}\n{tput}\n<h2>Steps</h2>{steps}\n</body></html>\n",
            html_escape(&self.load),
            self.cap.start_rate,
            self.cap.step_factor,
            self.cap.step_duration_s,
            self.cap.slo_p99_ms,
            self.cap.max_error_ratio,
        )
    }
}

/// `keycore loadgen --compare-report FILE ...`.
pub fn run_cli(args: &keycore_loadgen::LoadgenArgs) -> Result<(), TuneError> {
    use std::io::Write;
    let html = args
        .compare_report
        .clone()
        .ok_or(TuneError::MissingFlag("--compare-report FILE"))?;
    let load = args.to_spec()?;
    let mut backends = Vec::new();
    for s in &args.servers {
        let server = keycore_loadgen::resolve(s)?;
        let label = args
            .label
            .iter()
            .find_map(|l| l.split_once('=').filter(|(a, _)| a == s).map(|(_, n)| n))
            .unwrap_or(s)
            .to_string();
        let keys: Vec<std::path::PathBuf> = args
            .backend_keys
            .iter()
            .filter_map(|l| {
                l.split_once('=')
                    .filter(|(a, _)| a == s)
                    .map(|(_, p)| p.into())
            })
            .collect();
        backends.push(Backend {
            label,
            server,
            keys: (!keys.is_empty()).then_some(keys),
        });
    }
    for (flag, list) in [
        ("--label", &args.label),
        ("--backend-keys", &args.backend_keys),
    ] {
        for l in list {
            if !l
                .split_once('=')
                .is_some_and(|(a, _)| args.servers.contains(&a.to_string()))
            {
                return Err(TuneError::ServerEntry {
                    flag,
                    entry: l.clone(),
                });
            }
        }
    }
    let mut cap = args.capacity_spec();
    cap.step_duration_s = args.step_duration.unwrap_or(3.0);
    cap.step_warmup_s = args.warmup.unwrap_or(1.0);
    cap.max_steps = 12;
    let quiet = args.quiet;
    let rep = compare(&load, &backends, &cap, &mut |l| {
        if !quiet {
            eprintln!("{l}");
        }
    })?;
    std::fs::write(&html, rep.to_html()).map_err(|source| TuneError::Write {
        path: html.clone(),
        source,
    })?;
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut out, &rep)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        writeln!(out, "{}report: {}", rep.to_text(), html.display())
    };
    printed.map_err(TuneError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(s: &str) -> std::collections::BTreeMap<String, f64> {
        keycore_loadgen::Profile::parse_mix(s).unwrap()
    }

    #[test]
    fn ceilings_follow_the_mix_and_cite_sources() {
        // hsm2m.medium member: 1,000 RSA, 1,500 EC per s. 50/50: 1 / (0.5/1000 + 0.5/1500) = 1200.
        let c = ceiling(
            "aws-cloudhsm-hsm2m.medium",
            &mix("ecdsa-p256-sha256=1,rsa-pss-sha256=1"),
        )
        .unwrap();
        assert!((c.per_s - 1200.0).abs() < 1e-6, "{}", c.per_s);
        assert!(c.source.contains("docs.aws.amazon.com/cloudhsm"));
        // A licence cap below the crypto rate binds.
        let c = ceiling("thales-luna7-a700", &mix("ecdsa-p256-sha256=1")).unwrap();
        assert_eq!(c.per_s, 1000.0);
        assert!(c.source.contains("licence"));
        // AWS KMS: separate quotas; 70% ECC fills the ECC quota at 1000/0.7.
        let c = ceiling("aws-kms", &mix("ecdsa-p256-sha256=7,rsa-pss-sha256=3")).unwrap();
        assert!((c.per_s - 1000.0 / 0.7).abs() < 1e-6);
        assert!(ceiling("software", &mix("ecdsa-p256-sha256=1")).is_none());
    }

    #[test]
    fn the_page_has_curves_knees_ceilings_and_steps() {
        let step = |o: f64, p99: f64| Step {
            offered_per_s: o,
            achieved_per_s: o,
            p50_ms: Some(p99 / 4.0),
            p99_ms: Some(p99),
            errors: 0,
            error_ratio: 0.0,
        };
        let b = |label: &str, knee: f64| BackendResult {
            backend: Backend {
                label: label.into(),
                server: "127.0.0.1:1".parse().unwrap(),
                keys: None,
            },
            steps: vec![step(100.0, 1.0), step(200.0, 2.0), step(400.0, 50.0)],
            knee_per_s: Some(knee),
            generator_bound: false,
            op_cost: vec![OpCost {
                op: "ecdsa-p256-sha256".into(),
                p50_ms: Some(0.25),
                p99_ms: Some(1.0),
            }],
            errors_by_kind: vec![],
            ceiling: ceiling(label, &mix("ecdsa-p256-sha256=1")),
            error: None,
        };
        let r = CompareReport {
            load: "open loop".into(),
            cap: CapacitySpec::default(),
            backends: vec![b("software", 200.0), b("thales-luna7-a700", 200.0)],
        };
        let html = r.to_html();
        assert_eq!(html.matches("<svg").count(), 3);
        assert!(html.contains("software p99") && html.contains("thales-luna7-a700 p50"));
        assert!(
            html.contains("published ceiling 1000/s is beyond this chart"),
            "{html}"
        );
        assert!(html.contains("20%"), "knee / ceiling");
        assert!(r.to_text().contains("1000/s"));
    }
}
