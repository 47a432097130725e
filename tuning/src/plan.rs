//! `keycore plan`: how many key-server cores/instances and HSMs (or how much cloud quota) a
//! stated peak of new TLS handshakes needs, per vendor profile, with the binding constraint
//! named and the arithmetic shown.
//!
//! Owns: the demand model (handshakes → private-key operations by kind), the sizing arithmetic
//! (headroom, N+1 spares, per-unit utilisation), the cloud-quota figures with their sources and
//! the text/JSON/HTML renderings. It takes HSM figures from `keycore_hsmprofiles` (one
//! definition of each published figure, with its source) and measured capacities from the JSON a
//! `keycore loadgen --capacity --json` or `keycore tune --json` run wrote. It measures nothing
//! itself and must not invent a figure: every number it uses carries a source or the word
//! ASSUMED.
//!
//! Demand model (each rule is stated in the output):
//! - a resumed handshake (TLS 1.3 PSK, TLS 1.2 ticket/session id) needs no private-key
//!   operation; every full handshake needs exactly one;
//! - a full handshake uses the ECDSA key with probability `ecdsa_share`, else the RSA key;
//! - an RSA handshake on TLS 1.2 with RSA key exchange is an RSA decrypt, every other one an RSA
//!   signature (same cost: one private-key exponentiation);
//! - headroom multiplies the demand before sizing (the reference's docs advise 2x);
//! - spares (N+1) are added after rounding up, for key servers and for HSMs separately.

use keycore_hsmprofiles as profiles;
use keycore_hsmprofiles::{ec_size_cost, rsa_size_cost, DEFAULT_KEY_SIZE_EXPONENT};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// A number and where it comes from (a document, a measurement file, or ASSUMED: why).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sourced {
    /// The value.
    pub value: f64,
    /// Its source.
    pub source: String,
}

fn src(value: f64, source: impl Into<String>) -> Sourced {
    Sourced {
        value,
        source: source.into(),
    }
}

/// Key-server per-core signing rates on this project's VM (release build, one pinned core),
/// README "Performance" / bench/RESULTS.md.
const SW_SOURCE: &str = "measured: README \"Performance\" (bench/RESULTS.md), keycore serve, \
    one core of this project's 2-vCPU VM, release build";
const SW_ECDSA_P256: f64 = 45_812.0;
const SW_RSA2048: f64 = 3_632.0;
const SW_ED25519: f64 = 70_191.0;
/// What one key-server core forwards per second when the crypto is elsewhere (HSM, cloud).
const PROXY_CORE_OPS: f64 = 20_000.0;
const PROXY_SOURCE: &str = "ASSUMED: keycore's own cost per forwarded operation was not \
    measured; a ping (no crypto) runs at 117,942/s on one core (bench/RESULTS.md), PKCS#11 \
    offload and HTTPS cost more. Measure with `keycore loadgen --capacity --json` against \
    your backend and pass it with --measured";
const KEY_SIZE_LAW: &str = "ASSUMED: cost grows as (bits / reference bits)^3 \
    (hsmsim's key-size law; vendors rarely publish per-size figures)";

/// Cloud request quotas (per the scope each service throttles).
const AWS_KMS_QUOTA: f64 = 1_000.0;
const AWS_KMS_SOURCE: &str = "AWS KMS Developer Guide, \"Request quotas\" \
    (https://docs.aws.amazon.com/kms/latest/developerguide/requests-per-second.html): \
    \"Cryptographic operations (RSA) request rate\" and \"(ECC) request rate\", separate \
    quotas per account and Region, \"1,000 (shared)\" each (verified 2026-12-04; older \
    versions of the page said 500 and 300: check Service Quotas); adjustable";
const AZURE_KV_SOURCE: &str = "Microsoft Learn, \"Azure Key Vault service limits\": 2,000 \
    transactions per 10 s per vault and region for HSM-protected RSA-2048 and EC keys, 500 \
    for RSA-3072, 250 for RSA-4096 (docs/kms/azure.md)";
/// Azure Key Vault transactions per 10 s per vault, HSM-protected RSA-2048 and EC keys.
const AZURE_KV_PER_10S: f64 = 2_000.0;
const GCP_KMS_QUOTA: f64 = 1_000.0;
const GCP_KMS_SOURCE: &str = "Google Cloud KMS \"Quotas\": 60,000 cryptographic requests per \
    minute per project and region (the config table's kms_gcp_max_rps); since 16 February 2026 \
    every quota is regional, dynamic (set from the project's earlier limits and use) and \
    soft-enforced (https://cloud.google.com/kms/quotas, verified 2026-12-04): the figure is \
    ASSUMED fixed here, read your project's regional value";

/// A cloud service's request limit for one unit (an account-Region, a vault, a project).
#[derive(Clone, Debug)]
pub struct CloudQuota {
    /// Requests per second per unit.
    pub per_s: f64,
    /// Where it comes from.
    pub source: &'static str,
    /// RSA and ECC requests have a quota each (AWS KMS), rather than one shared.
    pub separate_rsa_ecc: bool,
}

/// The quota of a cloud target by name (`aws-kms`, `azure-key-vault-premium` for RSA-2048/EC
/// keys, `gcp-kms`).
pub fn cloud_quota(name: &str) -> Option<CloudQuota> {
    Some(match name {
        "aws-kms" => CloudQuota {
            per_s: AWS_KMS_QUOTA,
            source: AWS_KMS_SOURCE,
            separate_rsa_ecc: true,
        },
        "azure-key-vault-premium" => CloudQuota {
            per_s: AZURE_KV_PER_10S / 10.0,
            source: AZURE_KV_SOURCE,
            separate_rsa_ecc: false,
        },
        "gcp-kms" => CloudQuota {
            per_s: GCP_KMS_QUOTA,
            source: GCP_KMS_SOURCE,
            separate_rsa_ecc: false,
        },
        _ => return None,
    })
}

/// Planner inputs. Defaults are the issue's example where it gives one, else ASSUMED.
#[derive(Clone, Debug, Serialize)]
pub struct PlanInput {
    /// New TLS connections per second at peak (full + resumed).
    pub handshakes_per_s: f64,
    /// Fraction of handshakes that resume a session (no private-key operation).
    pub resumption_ratio: f64,
    /// Fraction of full handshakes served with the ECDSA certificate (rest: RSA).
    pub ecdsa_share: f64,
    /// Fraction of handshakes on TLS 1.3 (rest: TLS 1.2).
    pub tls13_share: f64,
    /// Of TLS 1.2 handshakes on the RSA certificate, the fraction using RSA key exchange
    /// (an RSA decrypt instead of a signature).
    pub rsa_kex_share: f64,
    /// RSA modulus bits.
    pub rsa_bits: u32,
    /// ECDSA curve bits (256, 384, 521).
    pub ec_bits: u32,
    /// An operation mix that replaces the ECDSA/RSA split (e.g. from a recorded trace):
    /// shares of ecdsa, rsa-sign, rsa-decrypt, ed25519 (normalised).
    pub mix: Option<Mix>,
    /// Where `mix` came from, when not typed in (a recorded trace: what it held).
    pub mix_source: Option<String>,
    /// Capacity provisioned = demand x headroom.
    pub headroom: f64,
    /// Spare key-server instances beyond the computed number (N+1: 1).
    pub server_spares: u32,
    /// Spare HSMs (or quota units) beyond the computed number.
    pub hsm_spares: u32,
    /// Cores per key-server instance.
    pub cores_per_instance: u32,
    /// Targets: hsmsim profile names, "software", "aws-kms", "azure-key-vault-premium",
    /// "gcp-kms"; empty = all.
    pub targets: Vec<String>,
    /// Measured capacities: (label, ops/s of one key-server instance for this mix, source).
    pub measured: Vec<(String, Sourced)>,
}

impl Default for PlanInput {
    fn default() -> Self {
        PlanInput {
            handshakes_per_s: 20_000.0,
            resumption_ratio: 0.5,
            ecdsa_share: 0.7,
            tls13_share: 0.7,
            rsa_kex_share: 0.0,
            rsa_bits: 2048,
            ec_bits: 256,
            mix: None,
            mix_source: None,
            headroom: 2.0,
            server_spares: 1,
            hsm_spares: 1,
            cores_per_instance: 4,
            targets: Vec::new(),
            measured: Vec::new(),
        }
    }
}

/// Why `keycore plan` cannot plan: an input out of range, a mix, trace or
/// measured file it cannot read, an unknown target.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// A `--mix` entry without `=`.
    #[error("mix entry {0:?}: want name=weight")]
    MixEntry(String),
    /// A `--mix` weight that is not a number.
    #[error("mix entry {entry:?}: weight is not a number")]
    MixWeight {
        /// The entry.
        entry: String,
        /// The parse error.
        #[source]
        source: std::num::ParseFloatError,
    },
    /// A negative or infinite `--mix` weight.
    #[error("mix entry {0:?}: weight < 0")]
    MixNegative(String),
    /// A `--mix` operation the planner does not know.
    #[error("mix: unknown operation {0:?} (ecdsa, rsa-sign, rsa-decrypt, ed25519)")]
    MixOperation(String),
    /// A mix whose weights sum to zero.
    #[error("mix has no weight")]
    MixNoWeight,
    /// The `--trace` recordings could not be read.
    #[error(transparent)]
    Trace(#[from] keycore_loadgen::replay::ReplayError),
    /// Recordings without a single key operation.
    #[error("trace {}: no key operation recorded ({other} other requests)",
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "))]
    TraceNoKeyOps {
        /// The recordings.
        files: Vec<PathBuf>,
        /// Requests that were not key operations.
        other: u64,
    },
    /// Peak handshakes not a positive number.
    #[error("handshakes per second must be positive")]
    Handshakes(f64),
    /// A share or ratio outside 0..=1.
    #[error("{what} must be within 0..=1, got {value}")]
    Fraction {
        /// Which input.
        what: &'static str,
        /// Its value.
        value: f64,
    },
    /// Headroom below 1.
    #[error("headroom must be at least 1")]
    Headroom(f64),
    /// An RSA size without figures.
    #[error("RSA bits: 2048, 3072 or 4096")]
    RsaBits(u32),
    /// An EC curve size without figures.
    #[error("EC curve bits: 256, 384 or 521")]
    EcBits(u32),
    /// Zero cores per instance.
    #[error("cores per instance >= 1")]
    CoresPerInstance,
    /// A target name that is neither built in nor measured.
    #[error("unknown target {0:?}; known: {known}", known = target_names().join(", "))]
    UnknownTarget(String),
    /// An HSM profile without the figure the plan needs.
    #[error("{target}: no {figure} figure")]
    MissingFigure {
        /// The profile.
        target: String,
        /// "RSA" or "EC".
        figure: &'static str,
    },
    /// A `--measured` entry without `=`.
    #[error("--measured {0:?}: want LABEL=FILE")]
    MeasuredEntry(String),
    /// A `--measured` label that names a built-in target.
    #[error("--measured label {0:?} is a built-in target name")]
    MeasuredBuiltin(String),
    /// A measured file that could not be read.
    #[error("reading {}", path.display())]
    MeasuredRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A measured file that is not JSON.
    #[error("{}: not JSON", path.display())]
    MeasuredJson {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A measured file without a capacity figure.
    #[error("{}: no highest_held_per_s (loadgen --capacity --json) or recommended.capacity_per_s (tune --json)", .0.display())]
    MeasuredNoCapacity(PathBuf),
    /// A measured capacity of zero or less.
    #[error("{}: capacity is not positive", path.display())]
    MeasuredNotPositive {
        /// The file.
        path: PathBuf,
        /// The capacity it holds.
        value: f64,
    },
    /// The HTML page could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The plan could not be written to stdout.
    #[error("writing the plan")]
    Output(#[source] std::io::Error),
}

/// Operation shares of full handshakes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Mix {
    /// ECDSA signatures.
    pub ecdsa: f64,
    /// RSA signatures.
    pub rsa_sign: f64,
    /// RSA decrypts (TLS 1.2 RSA key exchange).
    pub rsa_decrypt: f64,
    /// Ed25519 signatures.
    pub ed25519: f64,
}

impl Mix {
    /// Parse `ecdsa=70,rsa-sign=28,rsa-decrypt=2,ed25519=0` (weights, normalised).
    pub fn parse(s: &str) -> Result<Mix, PlanError> {
        let mut m = Mix::default();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| PlanError::MixEntry(part.to_string()))?;
            let v: f64 = v.trim().parse().map_err(|source| PlanError::MixWeight {
                entry: part.to_string(),
                source,
            })?;
            if !(v >= 0.0 && v.is_finite()) {
                return Err(PlanError::MixNegative(part.to_string()));
            }
            match k.trim() {
                "ecdsa" => m.ecdsa += v,
                "rsa-sign" => m.rsa_sign += v,
                "rsa-decrypt" => m.rsa_decrypt += v,
                "ed25519" => m.ed25519 += v,
                other => return Err(PlanError::MixOperation(other.to_string())),
            }
        }
        m.normalised()
    }

    /// The mix of a recorded trace (`keycore serve` with `record_file`; the
    /// files of one or several servers), and a line saying what it held: key
    /// operations per class, what was not a key operation (pings, other
    /// opcodes: left out of the mix), the span and the busiest second.
    pub fn from_trace(files: &[PathBuf]) -> Result<(Mix, String), PlanError> {
        use keycore_protocol::{Op, OpClass};
        let recs = keycore_loadgen::replay::read(files)?;
        let mut m = Mix::default();
        let mut other = 0u64;
        // Busiest second: a sliding one-second window over the key operations.
        let (mut peak, mut lo) = (0usize, 0usize);
        let mut times: Vec<u64> = Vec::with_capacity(recs.len());
        for r in &recs {
            match Op(r.4).class() {
                OpClass::Ecdsa(_) => m.ecdsa += 1.0,
                OpClass::RsaPkcs1(_) | OpClass::RsaPss(_) => m.rsa_sign += 1.0,
                OpClass::RsaDecrypt => m.rsa_decrypt += 1.0,
                OpClass::Ed25519 => m.ed25519 += 1.0,
                _ => {
                    other += 1;
                    continue;
                }
            }
            times.push(r.0);
            while times[times.len() - 1] - times[lo] >= 1_000_000_000 {
                lo += 1;
            }
            peak = peak.max(times.len() - lo);
        }
        let key_ops = times.len();
        if key_ops == 0 {
            return Err(PlanError::TraceNoKeyOps {
                files: files.to_vec(),
                other,
            });
        }
        let span = (times[key_ops - 1] - times[0]) as f64 / 1e9;
        let line = format!(
            "recorded trace ({} file(s)): {key_ops} key operations over {span:.1} s \
             (ecdsa {}, rsa-sign {}, rsa-decrypt {}, ed25519 {}; {other} other requests left out), \
             busiest second {peak} key operations",
            files.len(),
            m.ecdsa,
            m.rsa_sign,
            m.rsa_decrypt,
            m.ed25519
        );
        Ok((m.normalised()?, line))
    }

    fn normalised(self) -> Result<Mix, PlanError> {
        let t = self.ecdsa + self.rsa_sign + self.rsa_decrypt + self.ed25519;
        if t <= 0.0 {
            return Err(PlanError::MixNoWeight);
        }
        Ok(Mix {
            ecdsa: self.ecdsa / t,
            rsa_sign: self.rsa_sign / t,
            rsa_decrypt: self.rsa_decrypt / t,
            ed25519: self.ed25519 / t,
        })
    }
}

/// Private-key operations per second (before headroom).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Demand {
    /// Full handshakes per second.
    pub full_handshakes: f64,
    /// ECDSA signatures/s.
    pub ecdsa: f64,
    /// RSA signatures/s.
    pub rsa_sign: f64,
    /// RSA decrypts/s.
    pub rsa_decrypt: f64,
    /// Ed25519 signatures/s.
    pub ed25519: f64,
}

impl Demand {
    /// Every operation per second.
    pub fn total(&self) -> f64 {
        self.ecdsa + self.rsa_sign + self.rsa_decrypt + self.ed25519
    }
    /// RSA operations (sign + decrypt: the same exponentiation).
    pub fn rsa(&self) -> f64 {
        self.rsa_sign + self.rsa_decrypt
    }
    fn scaled(&self, k: f64) -> Demand {
        Demand {
            full_handshakes: self.full_handshakes * k,
            ecdsa: self.ecdsa * k,
            rsa_sign: self.rsa_sign * k,
            rsa_decrypt: self.rsa_decrypt * k,
            ed25519: self.ed25519 * k,
        }
    }
}

impl PlanInput {
    /// Check ranges.
    pub fn validate(&self) -> Result<(), PlanError> {
        let frac = |value: f64, what: &'static str| {
            if (0.0..=1.0).contains(&value) {
                Ok(())
            } else {
                Err(PlanError::Fraction { what, value })
            }
        };
        if !(self.handshakes_per_s > 0.0 && self.handshakes_per_s.is_finite()) {
            return Err(PlanError::Handshakes(self.handshakes_per_s));
        }
        frac(self.resumption_ratio, "resumption ratio")?;
        frac(self.ecdsa_share, "ECDSA share")?;
        frac(self.tls13_share, "TLS 1.3 share")?;
        frac(self.rsa_kex_share, "RSA key exchange share")?;
        if !(self.headroom >= 1.0 && self.headroom.is_finite()) {
            return Err(PlanError::Headroom(self.headroom));
        }
        if ![2048, 3072, 4096].contains(&self.rsa_bits) {
            return Err(PlanError::RsaBits(self.rsa_bits));
        }
        if ![256, 384, 521].contains(&self.ec_bits) {
            return Err(PlanError::EcBits(self.ec_bits));
        }
        if self.cores_per_instance < 1 {
            return Err(PlanError::CoresPerInstance);
        }
        Ok(())
    }

    /// Operations per second at peak, before headroom.
    pub fn demand(&self) -> Demand {
        let full = self.handshakes_per_s * (1.0 - self.resumption_ratio);
        let mix = self.mix.unwrap_or_else(|| {
            let rsa = 1.0 - self.ecdsa_share;
            let dec = rsa * (1.0 - self.tls13_share) * self.rsa_kex_share;
            Mix {
                ecdsa: self.ecdsa_share,
                rsa_sign: rsa - dec,
                rsa_decrypt: dec,
                ed25519: 0.0,
            }
        });
        Demand {
            full_handshakes: full,
            ecdsa: full * mix.ecdsa,
            rsa_sign: full * mix.rsa_sign,
            rsa_decrypt: full * mix.rsa_decrypt,
            ed25519: full * mix.ed25519,
        }
    }

    fn rsa_cost(&self) -> f64 {
        rsa_size_cost(self.rsa_bits, DEFAULT_KEY_SIZE_EXPONENT)
    }
    fn ec_cost(&self) -> f64 {
        ec_size_cost(self.ec_bits, DEFAULT_KEY_SIZE_EXPONENT)
    }
}

/// Built-in non-HSM targets.
pub const OTHER_TARGETS: &[&str] = &["software", "aws-kms", "azure-key-vault-premium", "gcp-kms"];

/// Every target name `keycore plan` knows.
pub fn target_names() -> Vec<String> {
    OTHER_TARGETS
        .iter()
        .chain(profiles::NAMES.iter())
        .map(|s| s.to_string())
        .collect()
}

/// One line of a target's sizing: what it limits, the load it takes as a fraction of one unit.
#[derive(Clone, Debug, Serialize)]
pub struct Constraint {
    /// What is limited ("RSA-2048 private-key ops", "licence cap", "key-server CPU").
    pub name: String,
    /// Units needed for it before rounding (demand x headroom / capacity per unit).
    pub units: f64,
    /// How it was computed.
    pub arithmetic: String,
}

/// The plan for one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetPlan {
    /// Target name (profile).
    pub target: String,
    /// What a unit is ("HSM", "account-region quota", "vault", "key-server instance").
    pub unit: String,
    /// HSMs / quota units (rounded up, with spares); 0 for software keys.
    pub units: u64,
    /// Constraints on units (HSM time, licence cap, quotas).
    pub unit_constraints: Vec<Constraint>,
    /// The one that sets the number of units.
    pub binding: String,
    /// Key-server cores needed (rounded up, before spares).
    pub server_cores: u64,
    /// Key-server instances, spares included.
    pub server_instances: u64,
    /// How the key-server side was computed.
    pub server_arithmetic: Vec<String>,
    /// The overall binding constraint, named.
    pub binding_overall: String,
    /// Every figure used, with its source.
    pub figures: Vec<(String, Sourced)>,
    /// Caveats.
    pub notes: Vec<String>,
}

/// The whole plan.
#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    /// Inputs as given.
    pub input: PlanInput,
    /// Demand before headroom.
    pub demand: Demand,
    /// Demand x headroom.
    pub provisioned: Demand,
    /// How the demand was derived.
    pub demand_arithmetic: Vec<String>,
    /// One plan per target.
    pub targets: Vec<TargetPlan>,
}

/// Units for a set of per-unit capacities sharing one engine: the sum of time fractions.
fn engine_units(parts: &[(&str, f64, f64)]) -> (f64, String) {
    let mut terms = Vec::new();
    let mut u = 0.0;
    for (name, load, cap) in parts {
        if *load > 0.0 {
            u += load / cap;
            terms.push(format!("{load:.0} {name}/s / {cap:.0}"));
        }
    }
    let text = if terms.is_empty() {
        "no load".to_string()
    } else {
        format!("{} = {u:.2}", terms.join(" + "))
    };
    (u, text)
}

fn ceil_u(x: f64) -> u64 {
    // Guard against 3.0000000001 from float division rounding to 4.
    let r = (x - 1e-9).ceil();
    if r < 0.0 {
        0
    } else {
        r as u64
    }
}

/// Compute the plan.
pub fn plan(input: &PlanInput) -> Result<Plan, PlanError> {
    input.validate()?;
    let d = input.demand();
    let p = d.scaled(input.headroom);
    let h = input.handshakes_per_s;
    let mut da = vec![format!(
        "full handshakes = {h:.0} x (1 - {:.2} resumed) = {:.0}/s",
        input.resumption_ratio, d.full_handshakes
    )];
    match input.mix {
        Some(m) => da.push(format!(
            "{}: ecdsa {:.3}, rsa-sign {:.3}, rsa-decrypt {:.3}, ed25519 {:.3}",
            input.mix_source.as_deref().unwrap_or("given mix"),
            m.ecdsa,
            m.rsa_sign,
            m.rsa_decrypt,
            m.ed25519
        )),
        None => {
            da.push(format!(
                "ECDSA P-{} signatures = {:.0} x {:.2} = {:.0}/s",
                input.ec_bits, d.full_handshakes, input.ecdsa_share, d.ecdsa
            ));
            da.push(format!(
                "RSA-{} operations = {:.0} x (1 - {:.2}) = {:.0}/s, of which decrypts (TLS 1.2 RSA key exchange) = {:.0} x {:.2} TLS 1.2 x {:.2} = {:.0}/s",
                input.rsa_bits,
                d.full_handshakes,
                input.ecdsa_share,
                d.rsa(),
                d.rsa(),
                1.0 - input.tls13_share,
                input.rsa_kex_share,
                d.rsa_decrypt
            ));
        }
    }
    da.push(format!(
        "provisioned = demand x {:.1} headroom: {:.0} ECDSA + {:.0} RSA + {:.0} Ed25519 = {:.0} ops/s",
        input.headroom,
        p.ecdsa,
        p.rsa(),
        p.ed25519,
        p.total()
    ));
    let names: Vec<String> = if input.targets.is_empty() {
        let mut v = target_names();
        v.extend(input.measured.iter().map(|(l, _)| l.clone()));
        v
    } else {
        input.targets.clone()
    };
    let mut targets = Vec::new();
    for n in &names {
        targets.push(plan_target(input, &p, n)?);
    }
    Ok(Plan {
        input: input.clone(),
        demand: d,
        provisioned: p,
        demand_arithmetic: da,
        targets,
    })
}

fn size_label(input: &PlanInput) -> (String, String) {
    (
        format!("RSA-{}", input.rsa_bits),
        format!("ECDSA P-{}", input.ec_bits),
    )
}

fn plan_target(input: &PlanInput, p: &Demand, name: &str) -> Result<TargetPlan, PlanError> {
    let (rsa_l, ec_l) = size_label(input);
    let mut figures: Vec<(String, Sourced)> = Vec::new();
    let mut notes = Vec::new();
    let mut unit_constraints = Vec::new();
    let unit;
    // Key-server cores: either the crypto runs on them (software) or they forward.
    let mut server_arithmetic = Vec::new();
    let server_cores_f;
    let mut measured_instance = None;
    if input.rsa_bits != 2048 || input.ec_bits != 256 {
        figures.push((
            format!(
                "key-size cost: {rsa_l} x{:.2}, {ec_l} x{:.2} of RSA-2048 / P-256",
                input.rsa_cost(),
                input.ec_cost()
            ),
            src(0.0, KEY_SIZE_LAW),
        ));
    }
    if let Some((_, m)) = input.measured.iter().find(|(l, _)| l == name) {
        unit = "key-server instance".to_string();
        figures.push((
            "measured ops/s of one key-server instance at this mix".into(),
            m.clone(),
        ));
        measured_instance = Some(m.value);
        server_cores_f = 0.0;
        notes.push(
            "capacity measured as a whole instance: the mix of the measuring run must match this plan's"
                .into(),
        );
    } else if name == "software" {
        unit = "none (keys on the key servers)".into();
        let ec = SW_ECDSA_P256 / input.ec_cost();
        let rsa = SW_RSA2048 / input.rsa_cost();
        figures.push((
            "ECDSA P-256 signatures/s per key-server core".into(),
            src(SW_ECDSA_P256, SW_SOURCE),
        ));
        figures.push((
            "RSA-2048 signatures/s per key-server core".into(),
            src(SW_RSA2048, SW_SOURCE),
        ));
        figures.push((
            "Ed25519 signatures/s per key-server core".into(),
            src(SW_ED25519, SW_SOURCE),
        ));
        let (u, text) = engine_units(&[
            (&ec_l, p.ecdsa, ec),
            (&rsa_l, p.rsa(), rsa),
            ("Ed25519", p.ed25519, SW_ED25519),
        ]);
        server_arithmetic.push(format!("cores = {text}"));
        server_cores_f = u;
    } else {
        figures.push((
            "operations/s one key-server core forwards".into(),
            src(PROXY_CORE_OPS, PROXY_SOURCE),
        ));
        server_cores_f = p.total() / PROXY_CORE_OPS;
        server_arithmetic.push(format!(
            "cores = {:.0} ops/s / {PROXY_CORE_OPS:.0} = {server_cores_f:.2}",
            p.total()
        ));
        match name {
            "aws-kms" => {
                unit = "account-region quota".into();
                figures.push((
                    "RSA and ECC request quotas, each, per account and Region".into(),
                    src(AWS_KMS_QUOTA, AWS_KMS_SOURCE),
                ));
                unit_constraints.push(Constraint {
                    name: "RSA request quota".into(),
                    units: p.rsa() / AWS_KMS_QUOTA,
                    arithmetic: format!(
                        "{:.0} RSA/s / {AWS_KMS_QUOTA:.0} = {:.2}",
                        p.rsa(),
                        p.rsa() / AWS_KMS_QUOTA
                    ),
                });
                let ecc = p.ecdsa + p.ed25519;
                unit_constraints.push(Constraint {
                    name: "ECC request quota".into(),
                    units: ecc / AWS_KMS_QUOTA,
                    arithmetic: format!(
                        "{ecc:.0} ECC/s / {AWS_KMS_QUOTA:.0} = {:.2}",
                        ecc / AWS_KMS_QUOTA
                    ),
                });
                notes.push(format!(
                    "quotas are adjustable: instead of more account-regions, request RSA {:.0}/s and ECC {:.0}/s",
                    p.rsa(),
                    ecc
                ));
            }
            "azure-key-vault-premium" => {
                unit = "vault".into();
                let per_10s = match input.rsa_bits {
                    2048 => AZURE_KV_PER_10S,
                    3072 => 500.0,
                    _ => 250.0,
                };
                figures.push((
                    format!("{rsa_l} transactions per 10 s per vault"),
                    src(per_10s, AZURE_KV_SOURCE),
                ));
                figures.push((
                    "EC transactions per 10 s per vault".into(),
                    src(AZURE_KV_PER_10S, AZURE_KV_SOURCE),
                ));
                // One limit per vault shared by all keys in it: the RSA and EC requests each
                // use a fraction of the vault's budget.
                let (u, text) = engine_units(&[
                    (&ec_l, p.ecdsa + p.ed25519, AZURE_KV_PER_10S / 10.0),
                    (&rsa_l, p.rsa(), per_10s / 10.0),
                ]);
                unit_constraints.push(Constraint {
                    name: "per-vault transaction limit".into(),
                    units: u,
                    arithmetic: text,
                });
                notes.push(
                    "ASSUMED: RSA and EC transactions count against one per-vault budget; the subscription-wide limit (5x a vault's, docs/kms/README.md) caps vaults per subscription at 5"
                        .into(),
                );
            }
            "gcp-kms" => {
                unit = "project-region quota".into();
                figures.push((
                    "cryptographic requests/s per project and region".into(),
                    src(GCP_KMS_QUOTA, GCP_KMS_SOURCE),
                ));
                unit_constraints.push(Constraint {
                    name: "cryptographic request quota".into(),
                    units: p.total() / GCP_KMS_QUOTA,
                    arithmetic: format!(
                        "{:.0} ops/s / {GCP_KMS_QUOTA:.0} = {:.2}",
                        p.total(),
                        p.total() / GCP_KMS_QUOTA
                    ),
                });
            }
            hsm => {
                let (fig, cluster_note) = hsm_figures(hsm, input, p)?;
                unit = "HSM".into();
                let get = |k: &str| fig.iter().find(|(n, _)| *n == k).map(|(_, f)| *f);
                let missing = |figure| PlanError::MissingFigure {
                    target: hsm.to_string(),
                    figure,
                };
                let rsa = get("rsa2048_sign_per_sec").ok_or_else(|| missing("RSA"))?;
                let ec = get("ec_p256_sign_per_sec").ok_or_else(|| missing("EC"))?;
                let ed = get("ed25519_sign_per_sec").unwrap_or(ec);
                for (k, f) in &fig {
                    figures.push(((*k).to_string(), src(f.value, f.source)));
                }
                let rsa_rate = rsa.value / input.rsa_cost();
                let ec_rate = ec.value / input.ec_cost();
                let (u, text) = engine_units(&[
                    (&ec_l, p.ecdsa, ec_rate),
                    (&rsa_l, p.rsa(), rsa_rate),
                    ("Ed25519", p.ed25519, ed.value),
                ]);
                // Name the algorithm that takes most of the HSM time.
                let ec_t = p.ecdsa / ec_rate;
                let rsa_t = p.rsa() / rsa_rate;
                let ed_t = p.ed25519 / ed.value;
                let main = if rsa_t >= ec_t && rsa_t >= ed_t {
                    format!("{rsa_l} ({:.0}% of HSM time)", 100.0 * rsa_t / u.max(1e-12))
                } else if ec_t >= ed_t {
                    format!("{ec_l} ({:.0}% of HSM time)", 100.0 * ec_t / u.max(1e-12))
                } else {
                    format!("Ed25519 ({:.0}% of HSM time)", 100.0 * ed_t / u.max(1e-12))
                };
                unit_constraints.push(Constraint {
                    name: format!("HSM crypto throughput, mostly {main}"),
                    units: u,
                    arithmetic: text,
                });
                if let Some(cap) = get("licence_cap_per_sec") {
                    unit_constraints.push(Constraint {
                        name: "licence cap (all operations)".into(),
                        units: p.total() / cap.value,
                        arithmetic: format!(
                            "{:.0} ops/s / {:.0} = {:.2}",
                            p.total(),
                            cap.value,
                            p.total() / cap.value
                        ),
                    });
                }
                if hsm.starts_with("azure-") {
                    notes.push(
                        "the figures are Microsoft's 'one of three partitions available' rate: partition loss is already planned for; the spare covers a whole instance"
                            .into(),
                    );
                }
                notes.extend(cluster_note);
            }
        }
    }
    let binding_units = unit_constraints
        .iter()
        .max_by(|a, b| a.units.total_cmp(&b.units));
    let units = match binding_units {
        Some(c) => ceil_u(c.units) + u64::from(input.hsm_spares),
        None => 0,
    };
    let binding = binding_units.map_or("-".to_string(), |c| c.name.clone());
    let (server_cores, instances) = match measured_instance {
        Some(cap) => {
            let n = p.total() / cap;
            server_arithmetic.push(format!(
                "instances = {:.0} ops/s / {cap:.0} = {n:.2} -> {} + {} spare",
                p.total(),
                ceil_u(n),
                input.server_spares
            ));
            (
                ceil_u(n) * u64::from(input.cores_per_instance),
                ceil_u(n) + u64::from(input.server_spares),
            )
        }
        None => {
            let cores = ceil_u(server_cores_f);
            let inst = ceil_u(cores as f64 / f64::from(input.cores_per_instance)).max(1);
            server_arithmetic.push(format!(
                "instances = {cores} cores / {} per instance -> {inst} + {} spare (N+{})",
                input.cores_per_instance, input.server_spares, input.server_spares
            ));
            (cores, inst + u64::from(input.server_spares))
        }
    };
    if let Some(c) = binding_units {
        notes.push(format!(
            "{unit}s = ceil({:.2}, the largest constraint) + {} spare = {units}",
            c.units, input.hsm_spares
        ));
    }
    // The overall binding constraint: what grows first as the load grows, in the unit that
    // costs most. For HSM/cloud targets it is the device/quota unless the key servers need
    // more of their own (a measured or software target has only the key servers).
    let binding_overall = if unit_constraints.is_empty() {
        if measured_instance.is_some() {
            "key-server instance capacity (measured)".to_string()
        } else {
            let big = if p.rsa() / (SW_RSA2048 / input.rsa_cost())
                >= p.ecdsa / (SW_ECDSA_P256 / input.ec_cost())
            {
                rsa_l.clone()
            } else {
                ec_l.clone()
            };
            format!("key-server CPU ({big} signing)")
        }
    } else {
        binding.clone()
    };
    Ok(TargetPlan {
        target: name.to_string(),
        unit,
        units,
        unit_constraints,
        binding,
        server_cores,
        server_instances: instances,
        server_arithmetic,
        binding_overall,
        figures,
        notes,
    })
}

/// An HSM profile's figures; for a product whose clusters scale sub-linearly (the `-6`
/// CloudHSM profiles), the larger-cluster figures when the plain ones need more than 3 HSMs.
#[allow(clippy::type_complexity)]
fn hsm_figures(
    name: &str,
    input: &PlanInput,
    p: &Demand,
) -> Result<(Vec<(&'static str, profiles::Figure)>, Option<String>), PlanError> {
    let fig = profiles::figures(name).ok_or_else(|| PlanError::UnknownTarget(name.to_string()))?;
    let six = format!("{name}-6");
    if let Some(f6) = profiles::figures(&six) {
        let get = |f: &[(&str, profiles::Figure)], k: &str| {
            f.iter()
                .find(|(n, _)| *n == k)
                .map_or(1.0, |(_, x)| x.value)
        };
        let u = p.ecdsa / (get(&fig, "ec_p256_sign_per_sec") / input.ec_cost())
            + p.rsa() / (get(&fig, "rsa2048_sign_per_sec") / input.rsa_cost());
        if ceil_u(u) + u64::from(input.hsm_spares) > 3 {
            return Ok((
                f6,
                Some(format!(
                    "more than 3 HSMs: sized with {six}'s per-member figures (AWS publishes sub-linear scaling for 6-HSM clusters; beyond 6 ASSUMED to stay at that per-member rate)"
                )),
            ));
        }
    }
    Ok((fig, None))
}

impl Plan {
    /// Text with the arithmetic.
    pub fn to_text(&self) -> String {
        let i = &self.input;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "keycore plan: {:.0} new handshakes/s at peak, {:.0}% resumed, {:.0}% ECDSA, {:.0}% TLS 1.3, headroom x{}, key servers N+{}, HSMs +{} spare",
            i.handshakes_per_s,
            i.resumption_ratio * 100.0,
            i.ecdsa_share * 100.0,
            i.tls13_share * 100.0,
            i.headroom,
            i.server_spares,
            i.hsm_spares
        );
        let _ = writeln!(s, "\ndemand:");
        for l in &self.demand_arithmetic {
            let _ = writeln!(s, "  {l}");
        }
        let _ = writeln!(
            s,
            "\n{:<30} {:>6} {:<22} {:>12} {:>10}  binding constraint",
            "target", "units", "unit", "server cores", "instances"
        );
        for t in &self.targets {
            let _ = writeln!(
                s,
                "{:<30} {:>6} {:<22} {:>12} {:>10}  {}",
                t.target,
                if t.unit_constraints.is_empty() {
                    "-".to_string()
                } else {
                    t.units.to_string()
                },
                if t.unit_constraints.is_empty() {
                    "-"
                } else {
                    &t.unit
                },
                t.server_cores,
                t.server_instances,
                t.binding_overall
            );
        }
        for t in &self.targets {
            let _ = writeln!(s, "\n{}:", t.target);
            for c in &t.unit_constraints {
                let _ = writeln!(s, "  {} units for {}: {}", t.unit, c.name, c.arithmetic);
            }
            for a in &t.server_arithmetic {
                let _ = writeln!(s, "  key servers: {a}");
            }
            for n in &t.notes {
                let _ = writeln!(s, "  note: {n}");
            }
            for (what, f) in &t.figures {
                if f.value == 0.0 {
                    let _ = writeln!(s, "  figure: {what} [{}]", f.source);
                } else {
                    let _ = writeln!(s, "  figure: {what} = {:.1} [{}]", f.value, f.source);
                }
            }
        }
        s
    }

    /// JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}))
    }

    /// One HTML page: the summary table, then each target's arithmetic and sources.
    pub fn to_html(&self) -> String {
        let esc = keycore_loadgen::report::html_escape;
        let mut rows = String::new();
        for t in &self.targets {
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.target),
                if t.unit_constraints.is_empty() {
                    "-".into()
                } else {
                    t.units.to_string()
                },
                esc(&t.unit),
                t.server_cores,
                t.server_instances,
                esc(&t.binding_overall)
            );
        }
        let mut details = String::new();
        for t in &self.targets {
            let _ = write!(details, "<h3>{}</h3><ul>", esc(&t.target));
            for c in &t.unit_constraints {
                let _ = write!(
                    details,
                    "<li>{} units for {}: <code>{}</code></li>",
                    esc(&t.unit),
                    esc(&c.name),
                    esc(&c.arithmetic)
                );
            }
            for a in &t.server_arithmetic {
                let _ = write!(details, "<li>key servers: <code>{}</code></li>", esc(a));
            }
            for n in &t.notes {
                let _ = write!(details, "<li>note: {}</li>", esc(n));
            }
            details.push_str("</ul><table><tr><th>figure</th><th>value</th><th>source</th></tr>");
            for (what, f) in &t.figures {
                let assumed =
                    f.source.starts_with("ASSUMED") || f.source.starts_with("RECOLLECTION");
                let _ = write!(
                    details,
                    "<tr{}><td>{}</td><td>{}</td><td>{}</td></tr>",
                    if assumed { " class=\"assumed\"" } else { "" },
                    esc(what),
                    if f.value == 0.0 {
                        String::new()
                    } else {
                        format!("{}", f.value)
                    },
                    esc(&f.source)
                );
            }
            details.push_str("</table>");
        }
        let demand: String = self
            .demand_arithmetic
            .iter()
            .map(|l| format!("<li><code>{}</code></li>", esc(l)))
            .collect();
        format!(
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>keycore plan</title>\
<style>body{{font-family:sans-serif;margin:2em;}} table{{border-collapse:collapse;margin:1em 0;}} \
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;}} tr.assumed{{background:#fff4d6;}}</style>\
</head><body>\n<h1>keycore plan: {:.0} new handshakes/s at peak</h1>\n<h2>Demand</h2><ul>{demand}</ul>\n\
<h2>Plan</h2><table><tr><th>target</th><th>units</th><th>unit</th><th>key-server cores</th>\
<th>key-server instances (with spares)</th><th>binding constraint</th></tr>{rows}</table>\n\
<h2>Arithmetic and sources</h2><p>Rows shaded are ASSUMED or recollected figures.</p>{details}\n</body></html>\n",
            self.input.handshakes_per_s
        )
    }
}

/// Read a capacity from a `keycore loadgen --capacity --json` report (`highest_held_per_s`)
/// or a `keycore tune --json` server sweep (`recommended.capacity_per_s`).
pub fn measured_from_file(path: &Path) -> Result<Sourced, PlanError> {
    let text = std::fs::read_to_string(path).map_err(|source| PlanError::MeasuredRead {
        path: path.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| PlanError::MeasuredJson {
            path: path.to_path_buf(),
            source,
        })?;
    let value = v
        .get("highest_held_per_s")
        .and_then(|x| x.as_f64())
        .or_else(|| {
            v.get("recommended")
                .and_then(|r| r.get("capacity_per_s"))
                .and_then(|x| x.as_f64())
        })
        .ok_or_else(|| PlanError::MeasuredNoCapacity(path.to_path_buf()))?;
    if value <= 0.0 {
        return Err(PlanError::MeasuredNotPositive {
            path: path.to_path_buf(),
            value,
        });
    }
    Ok(src(value, format!("measured: {}", path.display())))
}

/// `keycore plan`.
#[derive(clap::Args, Debug, Clone)]
pub struct PlanArgs {
    /// New TLS handshakes per second at peak (full and resumed).
    #[arg(long, value_name = "N")]
    pub handshakes_per_s: f64,
    /// Fraction of handshakes resumed (no private-key operation). Default 0.5.
    #[arg(long, value_name = "0..1")]
    pub resumption: Option<f64>,
    /// Fraction of full handshakes on the ECDSA certificate. Default 0.7.
    #[arg(long, value_name = "0..1")]
    pub ecdsa_share: Option<f64>,
    /// Fraction of handshakes on TLS 1.3. Default 0.7 (ASSUMED).
    #[arg(long, value_name = "0..1")]
    pub tls13_share: Option<f64>,
    /// Of TLS 1.2 RSA-certificate handshakes, the fraction with RSA key exchange (decrypt).
    /// Default 0 (ASSUMED: ECDHE everywhere).
    #[arg(long, value_name = "0..1")]
    pub rsa_kex_share: Option<f64>,
    /// Operation mix replacing the ECDSA/RSA split, e.g. from a recorded trace:
    /// ecdsa=70,rsa-sign=28,rsa-decrypt=2,ed25519=0.
    #[arg(long, value_name = "MIX", conflicts_with = "trace")]
    pub mix: Option<String>,
    /// Take the operation mix from recordings of live traffic (`keycore serve` with
    /// `record_file`; several files, e.g. every server's, merge). The peak rate stays
    /// --handshakes-per-s (the trace's busiest second is printed beside the mix).
    #[arg(long, value_name = "FILE")]
    pub trace: Vec<PathBuf>,
    /// RSA key size (2048, 3072, 4096). Default 2048.
    #[arg(long)]
    pub rsa_bits: Option<u32>,
    /// ECDSA curve size (256, 384, 521). Default 256.
    #[arg(long)]
    pub ec_bits: Option<u32>,
    /// Provision this multiple of the peak. Default 2 (the reference's docs' advice).
    #[arg(long)]
    pub headroom: Option<f64>,
    /// Spare key-server instances (N+1: 1). Default 1.
    #[arg(long)]
    pub server_spares: Option<u32>,
    /// Spare HSMs / quota units. Default 1.
    #[arg(long)]
    pub hsm_spares: Option<u32>,
    /// Cores per key-server instance. Default 4.
    #[arg(long)]
    pub cores_per_instance: Option<u32>,
    /// Targets to plan for (comma-separated): software, aws-kms, azure-key-vault-premium,
    /// gcp-kms, or any hsmsim profile. Default: all.
    #[arg(long, value_delimiter = ',')]
    pub target: Vec<String>,
    /// A measured capacity: LABEL=FILE, FILE the JSON of `keycore loadgen --capacity --json`
    /// or `keycore tune --json` against one key-server instance with this mix.
    #[arg(long, value_name = "LABEL=FILE")]
    pub measured: Vec<String>,
    /// JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the HTML page here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl PlanArgs {
    /// The planner input.
    pub fn to_input(&self) -> Result<PlanInput, PlanError> {
        let d = PlanInput::default();
        let mut measured = Vec::new();
        for m in &self.measured {
            let (label, file) = m
                .split_once('=')
                .ok_or_else(|| PlanError::MeasuredEntry(m.clone()))?;
            if target_names().iter().any(|n| n == label) {
                return Err(PlanError::MeasuredBuiltin(label.to_string()));
            }
            measured.push((label.to_string(), measured_from_file(Path::new(file))?));
        }
        let (mix, mix_source) = if self.trace.is_empty() {
            (self.mix.as_deref().map(Mix::parse).transpose()?, None)
        } else {
            let (m, line) = Mix::from_trace(&self.trace)?;
            (Some(m), Some(line))
        };
        let input = PlanInput {
            handshakes_per_s: self.handshakes_per_s,
            resumption_ratio: self.resumption.unwrap_or(d.resumption_ratio),
            ecdsa_share: self.ecdsa_share.unwrap_or(d.ecdsa_share),
            tls13_share: self.tls13_share.unwrap_or(d.tls13_share),
            rsa_kex_share: self.rsa_kex_share.unwrap_or(d.rsa_kex_share),
            rsa_bits: self.rsa_bits.unwrap_or(d.rsa_bits),
            ec_bits: self.ec_bits.unwrap_or(d.ec_bits),
            mix,
            mix_source,
            headroom: self.headroom.unwrap_or(d.headroom),
            server_spares: self.server_spares.unwrap_or(d.server_spares),
            hsm_spares: self.hsm_spares.unwrap_or(d.hsm_spares),
            cores_per_instance: self.cores_per_instance.unwrap_or(d.cores_per_instance),
            targets: self.target.clone(),
            measured,
        };
        for t in &input.targets {
            if !(target_names().iter().any(|n| n == t)
                || input.measured.iter().any(|(l, _)| l == t))
            {
                return Err(PlanError::UnknownTarget(t.clone()));
            }
        }
        input.validate()?;
        Ok(input)
    }
}

/// Run `keycore plan`.
pub fn run_cli(args: &PlanArgs) -> Result<(), PlanError> {
    use std::io::Write;
    let p = plan(&args.to_input()?)?;
    let mut out = std::io::stdout().lock();
    let printed = if args.json {
        serde_json::to_writer_pretty(&mut out, &p.to_json())
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(out))
    } else {
        write!(out, "{}", p.to_text())
    };
    printed.map_err(PlanError::Output)?;
    if let Some(h) = &args.html {
        std::fs::write(h, p.to_html()).map_err(|source| PlanError::Write {
            path: h.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--trace`: a recording's opcodes become the mix (pings and other
    /// opcodes left out), and the busiest one-second window is counted.
    #[test]
    fn a_recorded_trace_gives_the_mix_and_its_busiest_second() {
        use keycore_protocol::record::{push_header, push_record, FileHeader};
        let dir = tempfile::tempdir().unwrap();
        let mut b = Vec::new();
        push_header(
            &mut b,
            &FileHeader {
                origin_unix_ns: 1_700_000_000_000_000_000,
                seq: 0,
            },
        );
        let ski = [7u8; 20];
        // Second 0: 7 ECDSA (0x15), 2 RSA PSS (0x35), 1 decrypt (0x01), 3 pings (0xF1).
        // Second 5: 1 PKCS#1 (0x05), 1 Ed25519 (0x18).
        let mut t = 0u64;
        for op in [
            0x15, 0x15, 0x15, 0x15, 0x15, 0x15, 0x15, 0x35, 0x35, 0x01, 0xF1, 0xF1, 0xF1,
        ] {
            push_record(&mut b, t, 1, 0, op, (op != 0xF1).then_some(&ski));
            t += 10_000_000;
        }
        for op in [0x05, 0x18] {
            push_record(&mut b, 5_000_000_000 + t, 2, 0, op, Some(&ski));
            t += 1;
        }
        let f = dir.path().join("trace.kcr");
        std::fs::write(&f, &b).unwrap();
        let (m, line) = Mix::from_trace(std::slice::from_ref(&f)).unwrap();
        assert!((m.ecdsa - 7.0 / 12.0).abs() < 1e-12, "{m:?}");
        assert!((m.rsa_sign - 3.0 / 12.0).abs() < 1e-12, "{m:?}");
        assert!((m.rsa_decrypt - 1.0 / 12.0).abs() < 1e-12, "{m:?}");
        assert!((m.ed25519 - 1.0 / 12.0).abs() < 1e-12, "{m:?}");
        assert!(line.contains("12 key operations"), "{line}");
        assert!(line.contains("3 other requests left out"), "{line}");
        assert!(line.contains("busiest second 10 key operations"), "{line}");
        // Through the CLI arguments: the plan says where its mix came from.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            plan: PlanArgs,
        }
        use clap::Parser as _;
        let args = Cli::try_parse_from([
            "plan",
            "--handshakes-per-s",
            "1000",
            "--trace",
            f.to_str().unwrap(),
        ])
        .unwrap()
        .plan;
        let input = args.to_input().unwrap();
        assert_eq!(input.mix, Some(m));
        assert!(input
            .mix_source
            .unwrap()
            .starts_with("recorded trace (1 file(s))"));
        // A trace with no key operation, and --mix beside --trace, are refused.
        let mut pings = Vec::new();
        push_header(
            &mut pings,
            &FileHeader {
                origin_unix_ns: 1,
                seq: 0,
            },
        );
        push_record(&mut pings, 0, 1, 0, 0xF1, None);
        let p = dir.path().join("pings.kcr");
        std::fs::write(&p, &pings).unwrap();
        let e = Mix::from_trace(&[p]).unwrap_err().to_string();
        assert!(e.contains("no key operation recorded (1 other"), "{e}");
        assert!(Cli::try_parse_from([
            "plan",
            "--handshakes-per-s",
            "1",
            "--mix",
            "ecdsa=1",
            "--trace",
            "x"
        ])
        .is_err());
    }

    fn example() -> PlanInput {
        PlanInput::default()
    }

    fn target<'a>(p: &'a Plan, n: &str) -> &'a TargetPlan {
        p.targets.iter().find(|t| t.target == n).unwrap()
    }

    #[test]
    fn worked_example_demand_is_the_hand_arithmetic() {
        // 20,000/s, 50% resumed -> 10,000 full; 70% ECDSA -> 7,000; RSA 3,000; x2 headroom.
        let p = plan(&example()).unwrap();
        assert_eq!(p.demand.full_handshakes, 10_000.0);
        assert!((p.demand.ecdsa - 7_000.0).abs() < 1e-6);
        assert!((p.demand.rsa() - 3_000.0).abs() < 1e-6);
        assert_eq!(p.demand.rsa_decrypt, 0.0);
        assert!((p.provisioned.total() - 20_000.0).abs() < 1e-6);
    }

    #[test]
    fn cloudhsm_hsm2m_example_switches_to_six_member_figures_and_names_ecdsa() {
        // Plain member figures: 14,000/1,500 + 6,000/1,000 = 15.33 HSMs (> 3), so the
        // 6-member figures apply: 14,000/(7,000/6) + 6,000/(5,000/6) = 12 + 7.2 = 19.2 -> 20 + 1.
        let p = plan(&example()).unwrap();
        let t = target(&p, "aws-cloudhsm-hsm2m.medium");
        assert_eq!(t.units, 21, "{t:#?}");
        assert!(t.notes.iter().any(|n| n.contains("-6")), "{:?}", t.notes);
        assert!(t.binding.contains("ECDSA P-256"), "{}", t.binding);
        // Key servers forward 20,000 ops/s at 20,000 per core: 1 core, 1 instance + 1 spare.
        assert_eq!((t.server_cores, t.server_instances), (1, 2));
        // Every figure carries a source.
        assert!(t.figures.iter().all(|(_, f)| !f.source.is_empty()));
    }

    #[test]
    fn software_keys_size_the_key_servers_and_name_rsa_cpu() {
        let p = plan(&example()).unwrap();
        let t = target(&p, "software");
        // 14,000/45,812 + 6,000/3,632 = 0.306 + 1.652 = 1.958 -> 2 cores, 1 instance of 4 + 1.
        assert_eq!(t.server_cores, 2);
        assert_eq!(t.server_instances, 2);
        assert_eq!(t.units, 0);
        assert!(
            t.binding_overall.contains("RSA-2048"),
            "{}",
            t.binding_overall
        );
    }

    #[test]
    fn licence_cap_binds_a_capped_luna() {
        let p = plan(&example()).unwrap();
        // A700: 1,000 ops/s licence; 20,000 provisioned -> 20 + 1; crypto: 14,000/20,000 +
        // 6,000/10,000 = 1.3.
        let t = target(&p, "thales-luna7-a700");
        assert_eq!(t.units, 21);
        assert!(t.binding.contains("licence"), "{}", t.binding);
    }

    #[test]
    fn cloud_quotas_and_key_sizes() {
        let mut i = example();
        i.rsa_bits = 3072;
        let p = plan(&i).unwrap();
        // AWS: ECC 14,000/1,000 = 14 (binding) vs RSA 6; + 1 spare.
        let aws = target(&p, "aws-kms");
        assert_eq!(aws.units, 15);
        assert!(aws.binding.contains("ECC"));
        // Azure Key Vault: RSA-3072 is 500 per 10 s: 14,000/200 + 6,000/50 = 70 + 120 = 190 + 1.
        let az = target(&p, "azure-key-vault-premium");
        assert_eq!(az.units, 191);
        // Software: RSA-3072 costs (3072/2048)^3 = 3.375x: 6,000 / (3,632/3.375) = 5.58.
        let sw = target(&p, "software");
        assert_eq!(sw.server_cores, 6);
        assert!(sw.figures.iter().any(|(_, f)| f.source.contains("ASSUMED")));
    }

    #[test]
    fn tls12_rsa_key_exchange_becomes_decrypts_and_a_mix_overrides() {
        let mut i = example();
        i.tls13_share = 0.5;
        i.rsa_kex_share = 0.2;
        let d = i.demand();
        // RSA 3,000 x 0.5 TLS 1.2 x 0.2 = 300 decrypts.
        assert!((d.rsa_decrypt - 300.0).abs() < 1e-6);
        assert!((d.rsa_sign - 2_700.0).abs() < 1e-6);
        i.mix = Some(Mix::parse("ecdsa=1,ed25519=1").unwrap());
        let d = i.demand();
        assert_eq!((d.ecdsa, d.ed25519, d.rsa()), (5_000.0, 5_000.0, 0.0));
        assert!(matches!(Mix::parse("md5=1"), Err(PlanError::MixOperation(o)) if o == "md5"));
        assert!(matches!(Mix::parse("ecdsa=0"), Err(PlanError::MixNoWeight)));
        assert!(matches!(
            Mix::parse("ecdsa=x"),
            Err(PlanError::MixWeight { entry, .. }) if entry == "ecdsa=x"
        ));
    }

    #[test]
    fn measured_capacity_from_a_capacity_report_sizes_instances() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("cap.json");
        std::fs::write(&f, r#"{"server":"x","highest_held_per_s": 6000.0}"#).unwrap();
        let mut i = example();
        i.measured = vec![("lab".into(), measured_from_file(&f).unwrap())];
        i.targets = vec!["lab".into()];
        let p = plan(&i).unwrap();
        let t = target(&p, "lab");
        // 20,000 / 6,000 = 3.33 -> 4 instances + 1 spare.
        assert_eq!(t.server_instances, 5);
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        assert!(matches!(
            measured_from_file(&bad),
            Err(PlanError::MeasuredNoCapacity(p)) if p == bad
        ));
    }

    #[test]
    fn bad_inputs_are_refused_and_every_rendering_carries_sources() {
        let mut i = example();
        i.resumption_ratio = 1.5;
        let e = plan(&i).unwrap_err();
        assert!(
            matches!(e, PlanError::Fraction { what: "resumption ratio", value } if value == 1.5),
            "{e:?}"
        );
        let mut i = example();
        i.headroom = 0.5;
        assert!(matches!(plan(&i), Err(PlanError::Headroom(h)) if h == 0.5));
        let mut i = example();
        i.targets = vec!["nonsense".into()];
        let e = plan(&i).unwrap_err();
        assert!(matches!(&e, PlanError::UnknownTarget(t) if t == "nonsense"));
        assert!(e.to_string().contains("known: software"), "{e}");
        let p = plan(&example()).unwrap();
        let text = p.to_text();
        assert!(
            text.contains("full handshakes = 20000 x (1 - 0.50 resumed) = 10000/s"),
            "{text}"
        );
        assert!(text.contains("docs.aws.amazon.com/cloudhsm"), "{text}");
        let html = p.to_html();
        assert!(html.contains("<table>") && html.contains("class=\"assumed\""));
        assert_eq!(p.to_json()["demand"]["full_handshakes"], 10_000.0);
    }
}
