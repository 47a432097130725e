//! The traffic model: what load to offer and how.
//!
//! A [`Profile`] holds every setting, each with a documented default that
//! says where it comes from (or that it is an assumption). It is read from a
//! YAML or JSON file and/or command-line flags, then validated once into a
//! [`Plan`] (weights normalised, keys matched to operations, Zipf tables
//! built) that the executors trust. This module also owns the pure pieces of
//! the model: the Zipf sampler and the arrival schedule. No I/O except
//! reading the profile file; no clock (times are offsets passed in).

use crate::check::OpKind;
use crate::keys::PublicKeyInfo;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest number of executors (generator cores) accepted; more than any
/// machine this runs on has, and it bounds per-core allocations.
pub const MAX_CORES: usize = 256;

/// Most keys used in one run (bounds the Zipf tables: 8 bytes per key per op).
pub const MAX_KEYS: usize = 1_000_000;

/// Largest open-loop rate accepted, requests per second (far above what one
/// machine can generate; catches typos like an extra zero or three).
pub const MAX_RATE: f64 = 10_000_000.0;

/// Open-loop rates are ramped from this fraction of the target, so the
/// first arrival of a ramp is not infinitely far away.
const RAMP_START_FRACTION: f64 = 0.01;

/// How load is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoopMode {
    /// Requests start at scheduled times whatever the server does; latency is
    /// measured from the scheduled time (no coordinated omission).
    Open,
    /// A fixed number of requests outstanding; each completion starts the next.
    Closed,
}

/// Open-loop arrival process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Exponential gaps: many independent clients handshaking.
    Poisson,
    /// Evenly spaced.
    Constant,
}

/// Every setting of a run. Field docs give the default and its source.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// Default `open`: capacity planning needs latency under a fixed offered
    /// load, which only an open loop measures honestly.
    pub mode: LoopMode,
    /// Open loop: total requests per second over all cores. Default 1000
    /// (assumption: a modest load any server should hold; set it).
    pub rate: f64,
    /// Open loop: default `poisson` (assumption: handshakes from many
    /// independent clients arrive as a Poisson process).
    pub arrivals: Arrivals,
    /// Closed loop: requests outstanding over all cores. Default 64
    /// (assumption: 8 edge connections × 8 in flight).
    pub concurrency: usize,
    /// Measured seconds. Default 30 (the issue's reference run).
    pub duration_s: f64,
    /// Seconds of load before measuring starts (connections warm, caches and
    /// HSM sessions settled). Default 5 (assumption).
    pub warmup_s: f64,
    /// Seconds over which the open-loop rate rises linearly from 1% to
    /// `rate`, starting at time 0 (so it overlaps the warm-up). Default 0.
    pub ramp_s: f64,
    /// Operation weights by name (`ecdsa-p256-sha256`, `rsa-pkcs1-sha256`,
    /// `rsa-pss-sha256`, `ed25519`, `rsa-decrypt`, `ping`). Default
    /// ecdsa-p256-sha256 70, rsa-pss-sha256 20, rsa-pkcs1-sha256 8,
    /// rsa-decrypt 2 (assumption: a CDN edge serves ECDSA certificates to
    /// most clients, RSA-PSS to TLS 1.3 clients of RSA-only zones, PKCS#1 to
    /// TLS 1.2 ones, and RSA key exchange is rare). When the mix is the
    /// default, operations with no suitable key are dropped (and reported);
    /// a mix given explicitly must be satisfiable.
    pub mix: BTreeMap<String, f64>,
    /// Use only the first K keys (in load order: files sorted by name).
    /// Default: all keys given.
    pub keys: Option<usize>,
    /// Zipf exponent of key popularity; key rank = load order. Default 1.0
    /// (assumption: site popularity on the web is roughly Zipf with s ≈ 1).
    /// 0 makes keys uniformly popular.
    pub zipf_exponent: f64,
    /// Edge connections over all cores. Default 8 (assumption: a few edge
    /// processes per key server). Each core gets at least one.
    pub connections: usize,
    /// Replace each connection after this many seconds (connection churn).
    /// Default none (assumption: the edge keeps connections open).
    pub conn_lifetime_s: Option<f64>,
    /// Per-request timeout in milliseconds, counted from the scheduled time
    /// in open loop. Default 5000 (assumption).
    pub timeout_ms: u64,
    /// Fraction of responses whose signature is verified (0..=1). Default 1
    /// (verify everything); lower it when verification would make the
    /// generator the bottleneck. Error codes and opcodes are always checked.
    pub verify_fraction: f64,
    /// Add an SNI item (`k<rank>.example.com`), as the edge does. Default false.
    pub sni: bool,
    /// Add a client IP item (random address in 198.18.0.0/15, the benchmark
    /// range of RFC 2544). Default false.
    pub client_ip: bool,
    /// Add this server IP item. Default none.
    pub server_ip: Option<IpAddr>,
    /// Generator cores (one pinned glommio executor each). Default 1.
    pub cores: usize,
    /// First CPU to pin to; cores are `first_cpu..first_cpu+cores`. Default
    /// none: pick the last CPUs of the machine (servers tend to start at 0).
    pub first_cpu: Option<usize>,
    /// Offer only TLS 1.2 with the edge's two AES256-GCM-SHA384 suites.
    /// Default false.
    pub tls12_only: bool,
    /// Random seed; default: from the clock. Same seed, same request sequence.
    pub seed: Option<u64>,
    /// Open loop: requests outstanding per generator core at most; arrivals
    /// beyond it are counted as "not sent" rather than queued, so a dead or
    /// far-behind server can't grow the generator's memory without bound.
    /// Default 262144 (each waiting request holds under 1 KiB: ≤ 256 MiB).
    pub max_outstanding_per_core: usize,
    /// Microseconds each generator executor keeps polling for work (its
    /// sockets, its timers) after running out of it, before it sleeps in the
    /// kernel (at most [`MAX_SPIN_US`]). Default 0: sleep at once. Spinning
    /// keeps a sleeping CPU's wake-up delay (a timer due, an answer
    /// arriving) out of the measured latency, and with it an arrival is
    /// never sent early; it costs the generator's core while idle, and on a
    /// machine whose CPUs are shared with other work it makes the tail
    /// worse (a busy-polling thread loses its CPU in whole scheduler slices;
    /// issue 13, `bench/RESULTS.md` "Latency targets"). The generator's CPU
    /// figure leaves spinning out (it is idle time).
    pub spin_us: u64,
}

/// Largest [`Profile::spin_us`] accepted (one second).
pub const MAX_SPIN_US: u64 = 1_000_000;

impl Default for Profile {
    fn default() -> Self {
        Profile {
            mode: LoopMode::Open,
            rate: 1000.0,
            arrivals: Arrivals::Poisson,
            concurrency: 64,
            duration_s: 30.0,
            warmup_s: 5.0,
            ramp_s: 0.0,
            mix: BTreeMap::new(),
            keys: None,
            zipf_exponent: 1.0,
            connections: 8,
            conn_lifetime_s: None,
            timeout_ms: 5000,
            verify_fraction: 1.0,
            sni: false,
            client_ip: false,
            server_ip: None,
            cores: 1,
            first_cpu: None,
            tls12_only: false,
            seed: None,
            max_outstanding_per_core: 262_144,
            spin_us: 0,
        }
    }
}

/// The default operation mix (see [`Profile::mix`]).
pub fn default_mix() -> Vec<(OpKind, f64)> {
    vec![
        (OpKind::EcdsaP256Sha256, 70.0),
        (OpKind::RsaPssSha256, 20.0),
        (OpKind::RsaPkcs1Sha256, 8.0),
        (OpKind::RsaDecrypt, 2.0),
    ]
}

/// A profile that can't be run. Each variant names the setting or file
/// and carries the value refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile file could not be read.
    #[error("profile {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The profile file is not valid JSON for a profile.
    #[error("profile {}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's error (names the field).
        #[source]
        source: serde_json::Error,
    },
    /// The profile file is not valid YAML for a profile.
    #[error("profile {}", path.display())]
    Yaml {
        /// The file.
        path: PathBuf,
        /// The parser's error (names the field and line; boxed: it is
        /// large, and every Result carrying a ProfileError would pay for it).
        #[source]
        source: Box<serde_saphyr::Error>,
    },
    /// A `--mix` item without `=`.
    #[error("mix item {0:?}: want name=weight")]
    MixItem(String),
    /// A `--mix` weight that is not a number.
    #[error("mix item {item:?}: weight is not a number")]
    MixWeight {
        /// The item.
        item: String,
        /// The parse error.
        #[source]
        source: std::num::ParseFloatError,
    },
    /// A mix weight below zero (or not finite).
    #[error("mix weight of {op} must be zero or more, got {weight}")]
    MixWeightNegative {
        /// The operation's name.
        op: String,
        /// The weight.
        weight: f64,
    },
    /// A mix operation the generator does not know.
    #[error(transparent)]
    UnknownOp(#[from] crate::check::UnknownOp),
    /// A setting that must be a positive number.
    #[error("{setting} must be a positive number, got {value}")]
    NotPositive {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: f64,
    },
    /// A setting that must be zero or more.
    #[error("{setting} must be zero or more, got {value}")]
    Negative {
        /// The setting.
        setting: &'static str,
        /// Its value.
        value: f64,
    },
    /// A count that must be at least 1.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// An open-loop rate over [`MAX_RATE`].
    #[error("rate {0} is over the limit of {MAX_RATE}")]
    RateOverLimit(f64),
    /// `verify_fraction` outside 0..=1.
    #[error("verify_fraction must be within 0..=1, got {0}")]
    VerifyFraction(f64),
    /// `cores` outside 1..=[`MAX_CORES`].
    #[error("cores must be within 1..={MAX_CORES}, got {0}")]
    Cores(usize),
    /// `spin_us` over [`MAX_SPIN_US`].
    #[error("spin_us must be within 0..={MAX_SPIN_US}, got {0}")]
    SpinUs(u64),
    /// An explicit mix names an operation no given key can do.
    #[error("mix asks for {op} but no suitable key was given (keys: {})",
        if have.is_empty() { "none".to_string() } else { have.join(", ") })]
    NoKeyFor {
        /// The operation.
        op: OpKind,
        /// The kinds of the keys given.
        have: Vec<String>,
    },
    /// Nothing in the mix can run with the keys given.
    #[error("no operation can run: the mix is empty or no key suits any operation in it")]
    NothingToRun,
}

impl Profile {
    /// Read a profile file: JSON if it ends in `.json`, else YAML.
    pub fn from_file(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        if is_json {
            serde_json::from_str(&text).map_err(|source| ProfileError::Json {
                path: path.to_path_buf(),
                source,
            })
        } else {
            serde_saphyr::from_str(&text).map_err(|e| ProfileError::Yaml {
                path: path.to_path_buf(),
                source: Box::new(e),
            })
        }
    }

    /// Parse a `name=weight,name=weight` mix (command-line form).
    pub fn parse_mix(s: &str) -> Result<BTreeMap<String, f64>, ProfileError> {
        let mut m = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part
                .split_once('=')
                .ok_or_else(|| ProfileError::MixItem(part.to_string()))?;
            let w: f64 = w.trim().parse().map_err(|source| ProfileError::MixWeight {
                item: part.to_string(),
                source,
            })?;
            m.insert(name.trim().to_string(), w);
        }
        Ok(m)
    }

    /// Check ranges; called by [`Plan::new`].
    pub fn validate(&self) -> Result<(), ProfileError> {
        let pos = |setting: &'static str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(ProfileError::NotPositive { setting, value })
            }
        };
        let nonneg = |setting: &'static str, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(())
            } else {
                Err(ProfileError::Negative { setting, value })
            }
        };
        if self.mode == LoopMode::Open {
            pos("rate", self.rate)?;
            if self.rate > MAX_RATE {
                return Err(ProfileError::RateOverLimit(self.rate));
            }
        } else if self.concurrency == 0 {
            return Err(ProfileError::Zero("concurrency"));
        }
        pos("duration_s", self.duration_s)?;
        nonneg("warmup_s", self.warmup_s)?;
        nonneg("ramp_s", self.ramp_s)?;
        nonneg("zipf_exponent", self.zipf_exponent)?;
        if !(0.0..=1.0).contains(&self.verify_fraction) {
            return Err(ProfileError::VerifyFraction(self.verify_fraction));
        }
        if let Some(l) = self.conn_lifetime_s {
            pos("conn_lifetime_s", l)?;
        }
        if self.connections == 0 {
            return Err(ProfileError::Zero("connections"));
        }
        if self.timeout_ms == 0 {
            return Err(ProfileError::Zero("timeout_ms"));
        }
        if self.cores == 0 || self.cores > MAX_CORES {
            return Err(ProfileError::Cores(self.cores));
        }
        if self.max_outstanding_per_core == 0 {
            return Err(ProfileError::Zero("max_outstanding_per_core"));
        }
        if self.spin_us > MAX_SPIN_US {
            return Err(ProfileError::SpinUs(self.spin_us));
        }
        if self.keys == Some(0) {
            return Err(ProfileError::Zero("keys (K)"));
        }
        Ok(())
    }

    /// Measured duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_s)
    }

    /// Warm-up duration.
    pub fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_s)
    }

    /// Per-request timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// Key popularity: sample ranks 0..n with P(rank k) ∝ 1/(k+1)^s.
#[derive(Clone, Debug)]
pub struct Zipf {
    /// Cumulative probabilities, last = 1.
    cdf: Vec<f64>,
}

impl Zipf {
    /// A sampler over `n` ranks (n ≥ 1) with exponent `s` (≥ 0).
    pub fn new(n: usize, s: f64) -> Zipf {
        let n = n.max(1);
        let mut cdf = Vec::with_capacity(n);
        let mut acc = 0.0;
        for k in 0..n {
            acc += 1.0 / ((k + 1) as f64).powf(s);
            cdf.push(acc);
        }
        for c in &mut cdf {
            *c /= acc;
        }
        Zipf { cdf }
    }

    /// Rank for a uniform `u` in [0, 1).
    pub fn sample(&self, u: f64) -> usize {
        self.cdf
            .partition_point(|&c| c <= u)
            .min(self.cdf.len() - 1)
    }

    /// Probability of rank `k`.
    pub fn p(&self, k: usize) -> f64 {
        let prev = if k == 0 { 0.0 } else { self.cdf[k - 1] };
        self.cdf[k] - prev
    }
}

/// A validated profile with everything precomputed, shared read-only by
/// every executor.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The profile it came from.
    pub profile: Profile,
    /// Operations with their cumulative weight (last = 1).
    pub ops: Vec<(OpKind, f64)>,
    /// For each op in `ops`: indices into `keys` of the keys it may use, in rank order.
    pub op_keys: Vec<Vec<usize>>,
    /// For each op in `ops`: popularity over `op_keys`.
    pub op_zipf: Vec<Zipf>,
    /// The keys used (after the K limit).
    pub keys: Vec<PublicKeyInfo>,
    /// Operations of the default mix dropped for lack of a key.
    pub dropped_ops: Vec<OpKind>,
    /// Recorded arrivals to replay instead of the generated schedule
    /// (`--replay`; open loop).
    pub replay: Option<std::sync::Arc<crate::replay::Replay>>,
}

impl Plan {
    /// Validate `profile` against the loaded `keys`.
    pub fn new(profile: Profile, mut keys: Vec<PublicKeyInfo>) -> Result<Plan, ProfileError> {
        profile.validate()?;
        if let Some(k) = profile.keys {
            keys.truncate(k);
        }
        keys.truncate(MAX_KEYS);
        let explicit = !profile.mix.is_empty();
        let mix: Vec<(OpKind, f64)> = if explicit {
            let mut v = Vec::new();
            for (name, w) in &profile.mix {
                let op: OpKind = name.parse::<OpKind>()?;
                if !(w.is_finite() && *w >= 0.0) {
                    return Err(ProfileError::MixWeightNegative {
                        op: name.clone(),
                        weight: *w,
                    });
                }
                if *w > 0.0 {
                    v.push((op, *w));
                }
            }
            v
        } else {
            default_mix()
        };
        let mut ops = Vec::new();
        let mut op_keys = Vec::new();
        let mut dropped_ops = Vec::new();
        for (op, w) in mix {
            let ks: Vec<usize> = (0..keys.len())
                .filter(|&i| op.accepts(keys[i].kind))
                .collect();
            if op.needs_key() && ks.is_empty() {
                if explicit {
                    return Err(ProfileError::NoKeyFor {
                        op,
                        have: keys.iter().map(|k| k.kind.to_string()).collect(),
                    });
                }
                dropped_ops.push(op);
                continue;
            }
            ops.push((op, w));
            op_keys.push(ks);
        }
        if ops.is_empty() {
            return Err(ProfileError::NothingToRun);
        }
        let total: f64 = ops.iter().map(|(_, w)| w).sum();
        let mut acc = 0.0;
        for (_, w) in &mut ops {
            acc += *w / total;
            *w = acc;
        }
        if let Some(last) = ops.last_mut() {
            last.1 = 1.0;
        }
        let op_zipf = op_keys
            .iter()
            .map(|ks| Zipf::new(ks.len(), profile.zipf_exponent))
            .collect();
        Ok(Plan {
            profile,
            ops,
            op_keys,
            op_zipf,
            keys,
            dropped_ops,
            replay: None,
        })
    }

    /// Pick (op, key index) from two uniforms in [0, 1).
    pub fn pick(&self, u_op: f64, u_key: f64) -> (OpKind, usize) {
        let i = self
            .ops
            .partition_point(|&(_, c)| c <= u_op)
            .min(self.ops.len() - 1);
        let op = self.ops[i].0;
        let ks = &self.op_keys[i];
        let key = if ks.is_empty() {
            0
        } else {
            ks[self.op_zipf[i].sample(u_key)]
        };
        (op, key)
    }
}

/// Share of `total` for core `i` of `n` (remainder spread over the first cores).
pub fn share(total: usize, i: usize, n: usize) -> usize {
    total / n + usize::from(i < total % n)
}

/// Open-loop arrival times as offsets from the start of the run.
#[derive(Clone, Debug)]
pub struct Schedule {
    rate: f64,
    ramp_s: f64,
    arrivals: Arrivals,
    next_s: f64,
}

impl Schedule {
    /// Arrivals at `rate` per second (this core's share), ramped over `ramp_s`.
    pub fn new(rate: f64, ramp_s: f64, arrivals: Arrivals) -> Schedule {
        Schedule {
            rate,
            ramp_s,
            arrivals,
            next_s: 0.0,
        }
    }

    /// Offered rate at `t_s` seconds.
    pub fn rate_at(&self, t_s: f64) -> f64 {
        if self.ramp_s > 0.0 && t_s < self.ramp_s {
            self.rate * (RAMP_START_FRACTION + (1.0 - RAMP_START_FRACTION) * t_s / self.ramp_s)
        } else {
            self.rate
        }
    }

    /// The next arrival's offset in seconds; `u` uniform in (0, 1] (used by Poisson).
    pub fn next(&mut self, u: f64) -> f64 {
        let r = self.rate_at(self.next_s);
        let gap = match self.arrivals {
            Arrivals::Constant => 1.0 / r,
            Arrivals::Poisson => -u.max(f64::MIN_POSITIVE).ln() / r,
        };
        let t = self.next_s;
        self.next_s += gap;
        t
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::KeyKind;
    use std::path::PathBuf;

    /// A public key of `kind` whose SKI is `n` repeated (no key material:
    /// enough for mix and SKI tests; also used by replay's tests).
    pub(crate) fn key(kind: KeyKind, n: u8) -> PublicKeyInfo {
        PublicKeyInfo {
            source: PathBuf::from(format!("k{n}")),
            spki_der: vec![],
            key_bits: vec![],
            ski: [n; 20],
            kind,
        }
    }

    #[test]
    fn yaml_and_json_profiles_parse_and_unknown_fields_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let y = dir.path().join("p.yaml");
        std::fs::write(
            &y,
            "mode: closed\nconcurrency: 16\nduration_s: 2\nmix:\n  ecdsa-p256-sha256: 3\n  ping: 1\nconn_lifetime_s: 10\n",
        )
        .unwrap();
        let p = Profile::from_file(&y).unwrap();
        assert_eq!(p.mode, LoopMode::Closed);
        assert_eq!(p.concurrency, 16);
        assert_eq!(p.mix.get("ping"), Some(&1.0));
        assert_eq!(p.conn_lifetime_s, Some(10.0));
        assert_eq!(p.rate, 1000.0, "unset fields keep their defaults");
        let j = dir.path().join("p.json");
        std::fs::write(&j, r#"{"rate": 250.5, "arrivals": "constant"}"#).unwrap();
        let p = Profile::from_file(&j).unwrap();
        assert_eq!((p.rate, p.arrivals), (250.5, Arrivals::Constant));
        std::fs::write(&j, r#"{"rte": 250}"#).unwrap();
        let e = Profile::from_file(&j).unwrap_err();
        assert!(
            matches!(&e, ProfileError::Json { path, .. } if *path == j),
            "{e:?}"
        );
        // The file, then the parser's reason naming the field.
        let e = keycore_keys::error_chain(&e);
        assert!(e.contains("p.json") && e.contains("rte"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_setting_named() {
        let bad = [
            Profile {
                rate: 0.0,
                ..Profile::default()
            },
            Profile {
                rate: f64::NAN,
                ..Profile::default()
            },
            Profile {
                verify_fraction: 1.5,
                ..Profile::default()
            },
            Profile {
                connections: 0,
                ..Profile::default()
            },
            Profile {
                cores: 0,
                ..Profile::default()
            },
            Profile {
                duration_s: -1.0,
                ..Profile::default()
            },
        ];
        let names = [
            "rate",
            "rate",
            "verify_fraction",
            "connections",
            "cores",
            "duration_s",
        ];
        for (p, n) in bad.iter().zip(names) {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(n), "{e}");
        }
        assert!(matches!(
            Profile::parse_mix("ecdsa-p256-sha256"),
            Err(ProfileError::MixItem(i)) if i == "ecdsa-p256-sha256"
        ));
        assert!(matches!(
            Profile::parse_mix("ping=x"),
            Err(ProfileError::MixWeight { item, .. }) if item == "ping=x"
        ));
        assert!(matches!(
            Profile {
                cores: 0,
                ..Profile::default()
            }
            .validate(),
            Err(ProfileError::Cores(0))
        ));
        let m = Profile::parse_mix("ping=1, ed25519=2").unwrap();
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn default_mix_drops_ops_without_keys_but_explicit_mix_fails() {
        let keys = vec![key(KeyKind::EcdsaP256, 1), key(KeyKind::EcdsaP256, 2)];
        let plan = Plan::new(Profile::default(), keys.clone()).unwrap();
        assert_eq!(plan.ops.len(), 1);
        assert_eq!(plan.ops[0].0, OpKind::EcdsaP256Sha256);
        assert_eq!(plan.dropped_ops.len(), 3);
        let p = Profile {
            mix: Profile::parse_mix("ecdsa-p256-sha256=1,rsa-pss-sha256=1").unwrap(),
            ..Profile::default()
        };
        let e = Plan::new(p, keys).unwrap_err();
        assert!(
            matches!(&e, ProfileError::NoKeyFor { op: OpKind::RsaPssSha256, have } if have.len() == 2),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("rsa-pss-sha256") && e.contains("ECDSA P-256"),
            "{e}"
        );
    }

    #[test]
    fn mix_weights_pick_ops_in_proportion() {
        let keys = vec![
            key(KeyKind::EcdsaP256, 1),
            key(KeyKind::Rsa { bits: 2048 }, 2),
        ];
        let p = Profile {
            mix: Profile::parse_mix("ecdsa-p256-sha256=3,rsa-pkcs1-sha256=1,ping=0").unwrap(),
            ..Profile::default()
        };
        let plan = Plan::new(p, keys).unwrap();
        let n = 10_000;
        let mut ec = 0;
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64;
            let (op, k) = plan.pick(u, 0.3);
            if op == OpKind::EcdsaP256Sha256 {
                ec += 1;
                assert_eq!(k, 0);
            } else {
                assert_eq!((op, k), (OpKind::RsaPkcs1Sha256, 1));
            }
        }
        assert_eq!(ec, 7500);
    }

    #[test]
    fn zipf_matches_its_law() {
        let z = Zipf::new(100, 1.0);
        let h: f64 = (1..=100).map(|k| 1.0 / k as f64).sum();
        assert!((z.p(0) - 1.0 / h).abs() < 1e-12);
        assert!((z.p(9) - 0.1 / h).abs() < 1e-12);
        // Sampling a fine uniform grid reproduces the probabilities.
        let n = 1_000_000;
        let mut counts = [0usize; 100];
        for i in 0..n {
            counts[z.sample((i as f64 + 0.5) / n as f64)] += 1;
        }
        for k in [0, 1, 9, 99] {
            let got = counts[k] as f64 / n as f64;
            assert!((got - z.p(k)).abs() < 1e-5, "rank {k}: {got} vs {}", z.p(k));
        }
        let u = Zipf::new(4, 0.0);
        assert!((u.p(3) - 0.25).abs() < 1e-12);
        assert_eq!(Zipf::new(1, 1.0).sample(0.999_999), 0);
    }

    #[test]
    fn constant_schedule_is_even_and_poisson_has_the_right_mean() {
        let mut s = Schedule::new(1000.0, 0.0, Arrivals::Constant);
        let t: Vec<f64> = (0..4).map(|_| s.next(0.5)).collect();
        assert_eq!(t, vec![0.0, 0.001, 0.002, 0.003]);
        let mut s = Schedule::new(1000.0, 0.0, Arrivals::Poisson);
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut last = 0.0;
        for _ in 0..100_000 {
            last = s.next(1.0 - rng.random::<f64>());
        }
        // 100k arrivals at 1000/s take about 100 s (±1%).
        assert!((last - 100.0).abs() < 1.0, "{last}");
    }

    #[test]
    fn ramp_rises_linearly_to_the_rate() {
        let s = Schedule::new(1000.0, 10.0, Arrivals::Constant);
        assert!((s.rate_at(0.0) - 10.0).abs() < 1e-9);
        assert!((s.rate_at(5.0) - 505.0).abs() < 1e-9);
        assert_eq!(s.rate_at(10.0), 1000.0);
        assert_eq!(s.rate_at(99.0), 1000.0);
    }

    #[test]
    fn shares_add_up() {
        for (total, n) in [(8, 3), (1, 2), (64, 64), (7, 1)] {
            let sum: usize = (0..n).map(|i| share(total, i, n)).sum();
            assert_eq!(sum, total);
        }
    }
}
