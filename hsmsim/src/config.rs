//! The simulator's configuration: a JSON file (named by `KEYCORE_HSMSIM_CONFIG`) parsed once per
//! change into a validated [`Config`] the call path trusts. Owns parsing, defaults, limits and
//! the merge of a built-in profile under the file's own settings. Does no I/O besides reading
//! the file it is given, and never panics on bad input: every error names the file and the key.
//!
//! Format (all keys optional; see README.md for the full reference):
//! ```json
//! { "profile": "aws-cloudhsm-hsm2m.medium",
//!   "module": "/usr/lib/softhsm/libsofthsm2.so",
//!   "seed": 7, "reload_interval_ms": 100,
//!   "rtt": {"fixed_us": 500},
//!   "capacity": {"max_concurrent": 4, "max_ops_per_sec": 400, "burst": 1},
//!   "latency": {"default": {}, "functions": {"C_Login": {"fixed_us": 20000}},
//!               "mechanisms": {"CKM_ECDSA": {"fixed_us": 2000, "median_us": 300, "sigma": 0.5}}},
//!   "faults": [{"kind": "error", "rv": "CKR_DEVICE_ERROR", "rate": 0.01}] }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki_sys::{CK_MECHANISM_TYPE, CK_RV};
use serde::Deserialize;
use serde_json::Value;

use crate::behaviour::{
    Behaviour, KeyClass, MAX_CLIENT_RETRIES, MAX_SESSIONS_LIMIT, PRESETS, VENDOR_RV_NAMES,
};
use crate::func::{Func, ALL};
use crate::names::{MECHANISM_NAMES, RV_NAMES};
use crate::profiles;

/// Environment variable naming the config file. Unset: the simulator is a transparent proxy
/// (or follows `KEYCORE_HSMSIM_PROFILE`).
pub const CONFIG_ENV: &str = "KEYCORE_HSMSIM_CONFIG";
/// Environment variable naming a built-in profile, used when no config file is set.
pub const PROFILE_ENV: &str = "KEYCORE_HSMSIM_PROFILE";
/// Environment variable naming the real PKCS#11 module, used when the config has no `module`.
pub const MODULE_ENV: &str = "KEYCORE_HSMSIM_MODULE";
/// Placeholder in `KEYCORE_HSMSIM_CONFIG` replaced by the simulator library's file stem.
pub const MODULE_PLACEHOLDER: &str = "{module}";
/// The real module used when neither the config nor the environment names one.
pub const DEFAULT_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// How often the call path may `stat` the config file, by default. The issue asks for "at
/// most every ~100 ms": fast enough for a test to flip a fault, cheap enough to be invisible.
pub const DEFAULT_RELOAD_INTERVAL_MS: u64 = 100;
/// Floor for `reload_interval_ms`: below this the stat itself becomes a measurable cost.
pub const MIN_RELOAD_INTERVAL_MS: u64 = 10;
/// Largest duration accepted anywhere (1 hour): anything longer is a unit mistake (ms vs us).
pub const MAX_DURATION_US: u64 = 3_600_000_000;
/// Largest `max_concurrent`: far above any real partition, small enough to catch typos.
pub const MAX_CONCURRENT_LIMIT: u32 = 4096;
/// Largest `max_ops_per_sec` (10 M/s): beyond what the simulator itself can pace.
pub const MAX_OPS_PER_SEC_LIMIT: f64 = 10_000_000.0;
/// Largest log-normal sigma: at 3 the mean is 90x the median, already absurd for an HSM.
pub const MAX_SIGMA: f64 = 3.0;
/// Largest config file read (1 MiB): a config is a few KiB; more means a wrong path.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a config could not be used. `origin` is the file path (or `$KEYCORE_HSMSIM_PROFILE`).
/// Messages are whole (the cause is in the text, not a `#[source]`): the
/// simulator's `C_Initialize` prints this error's Display on stderr and
/// has nothing else to show.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read config: {error}")]
    Read {
        /// The file.
        origin: String,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The file is not JSON, or a key has the wrong type or is unknown.
    #[error("{origin}: invalid config: {error}")]
    Parse {
        /// The file.
        origin: String,
        /// serde's message (it names the key and line).
        error: serde_json::Error,
    },
    /// A value is out of range or names something unknown.
    #[error("{origin}: {key}: {msg}")]
    Invalid {
        /// The file.
        origin: String,
        /// Dotted path of the offending key.
        key: String,
        /// What is wrong and what is accepted.
        msg: String,
    },
}

/// A latency distribution: `fixed_us` plus, when `median_us > 0`, a log-normal sample with that
/// median and shape `sigma`; the total is capped at `max_us` when given.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    /// Constant part, microseconds.
    pub fixed_us: u64,
    /// Median of the log-normal part, microseconds (0 = no random part).
    pub median_us: u64,
    /// Log-normal shape (standard deviation of the underlying normal). 0 = always the median.
    pub sigma: f64,
    /// Upper bound on a sample, microseconds (None = unbounded).
    pub max_us: Option<u64>,
}

impl Latency {
    /// The expected value in microseconds (ignoring the cap): fixed + median * exp(sigma^2 / 2).
    pub fn mean_us(&self) -> f64 {
        self.fixed_us as f64 + self.median_us as f64 * (self.sigma * self.sigma / 2.0).exp()
    }

    /// True when every sample is zero: the shaper can skip clocks and sleeps.
    pub fn is_zero(&self) -> bool {
        self.fixed_us == 0 && self.median_us == 0
    }

    /// One sample, given a standard normal draw `z`.
    pub fn sample_with(&self, z: f64) -> Duration {
        let mut us = self.fixed_us as f64;
        if self.median_us > 0 {
            us += self.median_us as f64 * (self.sigma * z).exp();
        }
        if let Some(max) = self.max_us {
            us = us.min(max as f64);
        }
        Duration::from_nanos((us * 1000.0) as u64)
    }
}

/// Partition capacity: how many operations run at once and how many start per second.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Capacity {
    /// Crypto cores: at most this many crypto calls in service at once (None = unlimited).
    pub max_concurrent: Option<u32>,
    /// Token bucket refill rate for crypto calls (None = unlimited).
    pub max_ops_per_sec: Option<f64>,
    /// Token bucket depth: how many calls may start back to back after an idle spell.
    pub burst: u32,
    /// Calls allowed to wait for a core; one more is throttled at once (None = unbounded).
    pub max_queue: Option<u32>,
}

/// A set of functions, as a bitmask over `CK_FUNCTION_LIST` positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuncSet(u128);

impl FuncSet {
    /// Every crypto function (the default target of faults: "ops").
    pub fn crypto() -> FuncSet {
        let mut bits = 0u128;
        for f in ALL {
            if f.is_crypto() {
                bits |= 1 << f.index();
            }
        }
        FuncSet(bits)
    }

    /// Every call that starts an operation (`C_SignInit`, `C_DecryptInit`, ...).
    pub fn op_inits() -> FuncSet {
        let mut bits = 0u128;
        for f in ALL {
            if f.is_op_init() {
                bits |= 1 << f.index();
            }
        }
        FuncSet(bits)
    }

    /// Every function that is not answered locally.
    pub fn all() -> FuncSet {
        let mut bits = 0u128;
        for f in ALL {
            if !f.is_local() {
                bits |= 1 << f.index();
            }
        }
        FuncSet(bits)
    }

    /// Does the set contain `f`?
    pub fn contains(self, f: Func) -> bool {
        self.0 & (1 << f.index()) != 0
    }
}

/// What a fault does when it fires.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FaultKind {
    /// Return `rv` instead of doing the call.
    Error {
        /// The return value.
        rv: CK_RV,
    },
    /// Stall for `duration`, then either proceed or return `then_rv`.
    Hang {
        /// How long the call stalls.
        duration: Duration,
        /// Return value after the stall (None = do the call normally).
        then_rv: Option<CK_RV>,
        /// Where the call is stuck (`"at"`): in the device, holding a crypto
        /// core (true, the default), or on the way (network, HA client,
        /// failover), holding nothing the device needs (false).
        holds_core: bool,
    },
    /// Invalidate sessions: later calls on them get `CKR_SESSION_HANDLE_INVALID`.
    InvalidateSessions {
        /// All open sessions (true) or only the calling one (false).
        all: bool,
    },
    /// Log the user out: private-key calls get `CKR_USER_NOT_LOGGED_IN` until `C_Login`.
    Logout,
    /// The device is busy or over quota: the call gets the vendor's throttle code (or `rv`).
    Throttle {
        /// Overrides the behaviour's throttle code.
        rv: Option<CK_RV>,
    },
    /// An operation is left active on the call's session: every later `*Init` on it returns
    /// `CKR_OPERATION_ACTIVE` until the session is closed or an operation step ends it.
    OperationActive,
    /// Remove the token: all sessions die, calls get `rv` / `CKR_TOKEN_NOT_PRESENT`.
    TokenRemoved {
        /// What session calls return while removed.
        rv: CK_RV,
        /// How long the token stays out (None = until the fault leaves the config).
        duration: Option<Duration>,
    },
}

/// When a fault fires: on matching calls after the first `after_ops`, with probability `rate`,
/// at most `max_fires` times. Counters start when the config file is (re)loaded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trigger {
    /// Functions the fault watches (and counts).
    pub functions: FuncSet,
    /// Matching calls that pass untouched before the fault may fire.
    pub after_ops: u64,
    /// Probability of firing on each eligible call, 0..=1.
    pub rate: f64,
    /// Upper bound on how often it fires (None = unlimited).
    pub max_fires: Option<u64>,
}

/// One configured fault.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fault {
    /// What it does.
    pub kind: FaultKind,
    /// When it does it.
    pub trigger: Trigger,
}

/// The validated configuration. Built once per file change; the call path only reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The real PKCS#11 module (read only at the first `C_Initialize`).
    pub module: PathBuf,
    /// RNG seed (None = from the OS).
    pub seed: Option<u64>,
    /// Minimum time between two `stat`s of the config file.
    pub reload_interval: Duration,
    /// Network round trip added to every non-local call, outside the crypto cores.
    pub rtt: Latency,
    /// Partition capacity for crypto calls.
    pub capacity: Capacity,
    /// Service time for calls with no function or mechanism entry.
    pub default_latency: Latency,
    /// Service time per function, indexed by [`Func::index`].
    pub functions: Vec<Option<Latency>>,
    /// Service time per mechanism; wins over `functions` for calls that run a mechanism.
    pub mechanisms: HashMap<CK_MECHANISM_TYPE, Latency>,
    /// Faults, evaluated in order; the first that fires decides the call.
    pub faults: Vec<Fault>,
    /// Drop every session and the login after this long without any call (None = never).
    pub idle_drop: Option<Duration>,
    /// The vendor behaviour (error conventions, session and handle rules, constants).
    pub behaviour: Behaviour,
    /// Key-size cost law: a key's service time is the mechanism's times (bits / reference
    /// bits)^exponent (0 = key size not modelled). See [`KeyClass::default_cost`].
    pub key_size_exponent: f64,
    /// Explicit key-size cost factors by key name ("RSA-4096", "P-384"), winning over the law.
    pub key_sizes: HashMap<String, f64>,
}

/// Default exponent of the key-size cost law (see [`KeyClass::default_cost`]).
pub use keycore_hsmprofiles::DEFAULT_KEY_SIZE_EXPONENT;
/// Largest key-size cost factor accepted: beyond it a typo (ms vs us) is likelier.
pub const MAX_KEY_SIZE_COST: f64 = 1000.0;

impl Default for Config {
    fn default() -> Config {
        Config {
            module: PathBuf::from(DEFAULT_MODULE),
            seed: None,
            reload_interval: Duration::from_millis(DEFAULT_RELOAD_INTERVAL_MS),
            rtt: Latency::default(),
            capacity: Capacity {
                max_concurrent: None,
                max_ops_per_sec: None,
                burst: 1,
                max_queue: None,
            },
            default_latency: Latency::default(),
            functions: vec![None; ALL.len()],
            mechanisms: HashMap::new(),
            faults: Vec::new(),
            idle_drop: None,
            behaviour: Behaviour::default(),
            key_size_exponent: DEFAULT_KEY_SIZE_EXPONENT,
            key_sizes: HashMap::new(),
        }
    }
}

impl Config {
    /// Service time for `func`, running mechanism `mech` if known (the shaper passes a
    /// mechanism only for crypto calls).
    pub fn service_latency(&self, func: Func, mech: Option<CK_MECHANISM_TYPE>) -> &Latency {
        if let Some(l) = mech.and_then(|m| self.mechanisms.get(&m)) {
            return l;
        }
        self.functions[func.index()]
            .as_ref()
            .unwrap_or(&self.default_latency)
    }

    /// How much more a key of class `k` costs than the reference key of its algorithm.
    pub fn key_cost(&self, k: KeyClass) -> f64 {
        if let Some(f) = k.name().and_then(|n| self.key_sizes.get(&n)) {
            return *f;
        }
        k.default_cost(self.key_size_exponent)
    }

    /// Does any fault remove the token? (A removal without duration lasts while this holds.)
    pub fn has_token_removed_fault(&self) -> bool {
        self.faults
            .iter()
            .any(|f| matches!(f.kind, FaultKind::TokenRemoved { .. }))
    }

    /// Parses JSON text. `origin` names the source in error messages.
    pub fn from_json(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|error| ConfigError::Parse {
            origin: origin.to_owned(),
            error,
        })?;
        Config::from_value(value, origin)
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let read_err = |error| ConfigError::Read {
            origin: origin.clone(),
            error,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_CONFIG_BYTES {
            return Err(invalid(
                &origin,
                "",
                format!("file is {len} bytes, more than the {MAX_CONFIG_BYTES}-byte limit"),
            ));
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Config::from_json(&text, &origin)
    }

    /// The start-up config: the file in `KEYCORE_HSMSIM_CONFIG`, else the profile in
    /// `KEYCORE_HSMSIM_PROFILE`, else a transparent proxy. Returns the file path to watch.
    ///
    /// `module_stem` is the file stem of the simulator library itself (`hsm2` for
    /// `/opt/sim/hsm2.so`); it replaces [`MODULE_PLACEHOLDER`] in the path, so several copies of
    /// the library loaded by one process (one per simulated HSM) each read their own file.
    pub fn from_env(module_stem: &str) -> Result<(Config, Option<PathBuf>), ConfigError> {
        if let Some(path) = std::env::var_os(CONFIG_ENV).filter(|p| !p.is_empty()) {
            let path = PathBuf::from(
                path.to_string_lossy()
                    .replace(MODULE_PLACEHOLDER, module_stem),
            );
            return Ok((Config::load(&path)?, Some(path)));
        }
        if let Ok(name) = std::env::var(PROFILE_ENV) {
            let value = serde_json::json!({ "profile": name });
            return Ok((Config::from_value(value, "$KEYCORE_HSMSIM_PROFILE")?, None));
        }
        Config::from_value(Value::Object(Default::default()), "(no config)").map(|c| (c, None))
    }

    fn from_value(mut value: Value, origin: &str) -> Result<Config, ConfigError> {
        // A profile is a base document; the file's own keys override it key by key.
        if let Some(name) = value.get("profile").cloned() {
            let name = name
                .as_str()
                .ok_or_else(|| invalid(origin, "profile", "must be a string".into()))?;
            let mut base = profiles::get(name).ok_or_else(|| {
                invalid(
                    origin,
                    "profile",
                    format!(
                        "unknown profile {name:?}; known: {}",
                        profiles::NAMES.join(", ")
                    ),
                )
            })?;
            merge(&mut base, value);
            value = base;
        }
        let raw: RawConfig = serde_json::from_value(value).map_err(|error| ConfigError::Parse {
            origin: origin.to_owned(),
            error,
        })?;
        raw.validate(origin)
    }
}

/// Overlays `top` on `base`: objects merge key by key, anything else replaces.
fn merge(base: &mut Value, top: Value) {
    match (base, top) {
        (Value::Object(b), Value::Object(t)) => {
            for (k, v) in t {
                match b.get_mut(&k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (slot, top) => *slot = top,
    }
}

fn invalid(origin: &str, key: &str, msg: String) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        key: key.to_owned(),
        msg,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    profile: Option<String>,
    /// Free text for the reader (e.g. a profile's sources); ignored.
    #[serde(default, rename = "comment")]
    _comment: Option<Value>,
    module: Option<PathBuf>,
    seed: Option<u64>,
    reload_interval_ms: Option<u64>,
    #[serde(default)]
    rtt: RawLatency,
    #[serde(default)]
    capacity: RawCapacity,
    #[serde(default)]
    latency: RawLatencyTable,
    #[serde(default)]
    faults: Vec<RawFault>,
    /// A preset name, or `{"preset": name, <switch>: value...}`.
    behaviour: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBehaviour {
    preset: Option<String>,
    rw_sessions_only: Option<bool>,
    session_handles: Option<bool>,
    max_sessions: Option<u32>,
    no_rsa_x509: Option<bool>,
    vendor_eddsa: Option<bool>,
    hide_public_keys: Option<bool>,
    hide_cka_id: Option<bool>,
    ec_point_on_private: Option<bool>,
    public_key_info_on_private: Option<bool>,
    fips_no_pkcs1_decrypt: Option<bool>,
    idle_timeout_ms: Option<u64>,
    client_retries: Option<u32>,
    retry_backoff_ms: Option<u32>,
}

fn parse_behaviour(v: Value, origin: &str) -> Result<Behaviour, ConfigError> {
    let raw: RawBehaviour = match v {
        Value::String(s) => RawBehaviour {
            preset: Some(s),
            ..RawBehaviour::default()
        },
        v => serde_json::from_value(v).map_err(|e| {
            invalid(
                origin,
                "behaviour",
                format!("{e} (expected a preset name or an object)"),
            )
        })?,
    };
    let name = raw.preset.as_deref().unwrap_or("generic");
    let mut b = Behaviour::preset(name).ok_or_else(|| {
        invalid(
            origin,
            "behaviour",
            format!("unknown preset {name:?}; known: {}", PRESETS.join(", ")),
        )
    })?;
    let set = |dst: &mut bool, v: Option<bool>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    set(&mut b.rw_sessions_only, raw.rw_sessions_only);
    set(&mut b.session_handles, raw.session_handles);
    set(&mut b.no_rsa_x509, raw.no_rsa_x509);
    set(&mut b.vendor_eddsa, raw.vendor_eddsa);
    set(&mut b.hide_public_keys, raw.hide_public_keys);
    set(&mut b.hide_cka_id, raw.hide_cka_id);
    set(&mut b.ec_point_on_private, raw.ec_point_on_private);
    set(
        &mut b.public_key_info_on_private,
        raw.public_key_info_on_private,
    );
    set(&mut b.fips_no_pkcs1_decrypt, raw.fips_no_pkcs1_decrypt);
    if let Some(ms) = raw.idle_timeout_ms {
        duration_ms(origin, "behaviour.idle_timeout_ms", ms)?;
        b.idle_timeout_ms = ms;
    }
    if let Some(n) = raw.client_retries {
        if n > MAX_CLIENT_RETRIES {
            return Err(invalid(
                origin,
                "behaviour.client_retries",
                format!("{n} is outside 0..={MAX_CLIENT_RETRIES}"),
            ));
        }
        b.client_retries = n;
    }
    if let Some(ms) = raw.retry_backoff_ms {
        if !(1..=60_000).contains(&ms) {
            return Err(invalid(
                origin,
                "behaviour.retry_backoff_ms",
                format!("{ms} is outside 1..=60000"),
            ));
        }
        b.retry_backoff_ms = ms;
    }
    if let Some(n) = raw.max_sessions {
        if n == 0 || n > MAX_SESSIONS_LIMIT {
            return Err(invalid(
                origin,
                "behaviour.max_sessions",
                format!("{n} is outside 1..={MAX_SESSIONS_LIMIT}"),
            ));
        }
        b.max_sessions = Some(n);
    }
    Ok(b)
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(deny_unknown_fields)]
struct RawLatency {
    #[serde(default)]
    fixed_us: u64,
    #[serde(default)]
    median_us: u64,
    #[serde(default)]
    sigma: f64,
    max_us: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    max_concurrent: Option<u32>,
    max_ops_per_sec: Option<f64>,
    burst: Option<u32>,
    max_queue: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLatencyTable {
    #[serde(default)]
    default: RawLatency,
    #[serde(default)]
    functions: HashMap<String, RawLatency>,
    #[serde(default)]
    mechanisms: HashMap<String, RawLatency>,
    key_size_exponent: Option<f64>,
    #[serde(default)]
    key_sizes: HashMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    kind: String,
    rv: Option<Value>,
    then_rv: Option<Value>,
    rate: Option<f64>,
    after_ops: Option<u64>,
    max_fires: Option<u64>,
    functions: Option<Vec<String>>,
    duration_ms: Option<u64>,
    idle_ms: Option<u64>,
    scope: Option<String>,
    /// Hang only: "device" (default) or "network".
    at: Option<String>,
    /// Free text for the reader; ignored.
    #[serde(default, rename = "comment")]
    _comment: Option<Value>,
}

impl RawLatency {
    fn validate(self, origin: &str, key: &str) -> Result<Latency, ConfigError> {
        for (name, v) in [
            ("fixed_us", Some(self.fixed_us)),
            ("median_us", Some(self.median_us)),
            ("max_us", self.max_us),
        ] {
            if let Some(v) = v {
                if v > MAX_DURATION_US {
                    return Err(invalid(
                        origin,
                        &format!("{key}.{name}"),
                        format!("{v} us is more than the 1-hour limit (unit mistake?)"),
                    ));
                }
            }
        }
        if !(0.0..=MAX_SIGMA).contains(&self.sigma) {
            return Err(invalid(
                origin,
                &format!("{key}.sigma"),
                format!("{} is outside 0..={MAX_SIGMA}", self.sigma),
            ));
        }
        Ok(Latency {
            fixed_us: self.fixed_us,
            median_us: self.median_us,
            sigma: self.sigma,
            max_us: self.max_us,
        })
    }
}

/// Parses a return value: a `"CKR_*"` name, or a number (JSON number or `"0x..."`).
pub fn parse_rv(v: &Value) -> Option<CK_RV> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| n as CK_RV),
        Value::String(s) => RV_NAMES
            .iter()
            .chain(VENDOR_RV_NAMES)
            .find(|(n, _)| *n == s)
            .map(|(_, rv)| *rv)
            .or_else(|| parse_number(s)),
        _ => None,
    }
}

/// Parses a mechanism: a `"CKM_*"` name or a number (`"0x1041"`, `"4161"`).
pub fn parse_mechanism(s: &str) -> Option<CK_MECHANISM_TYPE> {
    MECHANISM_NAMES
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, m)| *m)
        .or_else(|| parse_number(s))
}

/// The `CKR_*` name of a return value, for messages.
pub fn rv_name(rv: CK_RV) -> &'static str {
    RV_NAMES
        .iter()
        .chain(VENDOR_RV_NAMES)
        .find(|(_, v)| *v == rv)
        .map(|(n, _)| *n)
        .unwrap_or("CKR_(unknown)")
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn duration_ms(origin: &str, key: &str, ms: u64) -> Result<Duration, ConfigError> {
    if ms.saturating_mul(1000) > MAX_DURATION_US {
        return Err(invalid(
            origin,
            key,
            format!("{ms} ms is more than the 1-hour limit"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

impl RawConfig {
    fn validate(self, origin: &str) -> Result<Config, ConfigError> {
        let _ = &self.profile; // already applied by the merge
        let mut cfg = Config::default();
        if let Some(m) = self.module {
            cfg.module = m;
        } else if let Some(m) = std::env::var_os(MODULE_ENV).filter(|m| !m.is_empty()) {
            cfg.module = PathBuf::from(m);
        }
        cfg.seed = self.seed;
        if let Some(ms) = self.reload_interval_ms {
            if ms < MIN_RELOAD_INTERVAL_MS {
                return Err(invalid(
                    origin,
                    "reload_interval_ms",
                    format!("{ms} is below the {MIN_RELOAD_INTERVAL_MS} ms floor"),
                ));
            }
            cfg.reload_interval = duration_ms(origin, "reload_interval_ms", ms)?;
        }
        cfg.rtt = self.rtt.validate(origin, "rtt")?;

        let cap = self.capacity;
        if let Some(n) = cap.max_concurrent {
            if n == 0 || n > MAX_CONCURRENT_LIMIT {
                return Err(invalid(
                    origin,
                    "capacity.max_concurrent",
                    format!("{n} is outside 1..={MAX_CONCURRENT_LIMIT}"),
                ));
            }
        }
        if let Some(r) = cap.max_ops_per_sec {
            if !(r > 0.0 && r <= MAX_OPS_PER_SEC_LIMIT) {
                return Err(invalid(
                    origin,
                    "capacity.max_ops_per_sec",
                    format!("{r} is outside (0, {MAX_OPS_PER_SEC_LIMIT}]"),
                ));
            }
        }
        let burst = cap.burst.unwrap_or(1);
        if burst == 0 || burst > 1_000_000 {
            return Err(invalid(
                origin,
                "capacity.burst",
                format!("{burst} is outside 1..=1000000"),
            ));
        }
        if cap.max_queue.is_some() && cap.max_concurrent.is_none() {
            return Err(invalid(
                origin,
                "capacity.max_queue",
                "needs capacity.max_concurrent (nothing queues without a core limit)".into(),
            ));
        }
        cfg.capacity = Capacity {
            max_concurrent: cap.max_concurrent,
            max_ops_per_sec: cap.max_ops_per_sec,
            burst,
            max_queue: cap.max_queue,
        };
        if let Some(b) = self.behaviour {
            cfg.behaviour = parse_behaviour(b, origin)?;
        }
        if let Some(e) = self.latency.key_size_exponent {
            if !(0.0..=4.0).contains(&e) {
                return Err(invalid(
                    origin,
                    "latency.key_size_exponent",
                    format!("{e} is outside 0..=4"),
                ));
            }
            cfg.key_size_exponent = e;
        }
        for (name, f) in self.latency.key_sizes {
            let key = format!("latency.key_sizes.{name}");
            let known = name
                .strip_prefix("RSA-")
                .is_some_and(|b| b.parse::<u32>().is_ok_and(|b| (512..=16384).contains(&b)))
                || ["P-256", "P-384", "P-521", "Ed25519"].contains(&name.as_str());
            if !known {
                return Err(invalid(
                    origin,
                    &key,
                    "unknown key (expected RSA-<bits>, P-256, P-384, P-521 or Ed25519)".into(),
                ));
            }
            if !(f > 0.0 && f <= MAX_KEY_SIZE_COST) {
                return Err(invalid(
                    origin,
                    &key,
                    format!("{f} is outside (0, {MAX_KEY_SIZE_COST}]"),
                ));
            }
            cfg.key_sizes.insert(name, f);
        }

        cfg.default_latency = self.latency.default.validate(origin, "latency.default")?;
        for (name, l) in self.latency.functions {
            let key = format!("latency.functions.{name}");
            let f = Func::from_name(&name).ok_or_else(|| {
                invalid(
                    origin,
                    &key,
                    "unknown function (expected e.g. \"C_Sign\")".into(),
                )
            })?;
            cfg.functions[f.index()] = Some(l.validate(origin, &key)?);
        }
        for (name, l) in self.latency.mechanisms {
            let key = format!("latency.mechanisms.{name}");
            let m = parse_mechanism(&name).ok_or_else(|| {
                invalid(
                    origin,
                    &key,
                    "unknown mechanism (expected a CKM_* name or a number like \"0x1041\")".into(),
                )
            })?;
            cfg.mechanisms.insert(m, l.validate(origin, &key)?);
        }

        for (i, f) in self.faults.into_iter().enumerate() {
            let key = format!("faults[{i}]");
            if let Some(idle) = f.validate_idle(origin, &key)? {
                cfg.idle_drop = Some(idle);
            } else {
                cfg.faults.push(f.validate(origin, &key)?);
            }
        }
        Ok(cfg)
    }
}

impl RawFault {
    /// `idle_drop` is a device-wide timer rather than a per-call trigger.
    fn validate_idle(&self, origin: &str, key: &str) -> Result<Option<Duration>, ConfigError> {
        if self.kind != "idle_drop" {
            return Ok(None);
        }
        let ms = self.idle_ms.ok_or_else(|| {
            invalid(
                origin,
                &format!("{key}.idle_ms"),
                "required for kind idle_drop".into(),
            )
        })?;
        if ms == 0 {
            return Err(invalid(
                origin,
                &format!("{key}.idle_ms"),
                "must be > 0".into(),
            ));
        }
        Ok(Some(duration_ms(origin, &format!("{key}.idle_ms"), ms)?))
    }

    fn rv_field(v: &Option<Value>, origin: &str, key: &str) -> Result<Option<CK_RV>, ConfigError> {
        match v {
            None => Ok(None),
            Some(v) => parse_rv(v).map(Some).ok_or_else(|| {
                invalid(origin, key, format!("{v} is not a CKR_* name or a number"))
            }),
        }
    }

    fn validate(self, origin: &str, key: &str) -> Result<Fault, ConfigError> {
        let rv = Self::rv_field(&self.rv, origin, &format!("{key}.rv"))?;
        let then_rv = Self::rv_field(&self.then_rv, origin, &format!("{key}.then_rv"))?;
        let duration = self
            .duration_ms
            .map(|ms| duration_ms(origin, &format!("{key}.duration_ms"), ms))
            .transpose()?;
        let unexpected = |field: &str| {
            invalid(
                origin,
                &format!("{key}.{field}"),
                format!("not used by kind {:?}", self.kind),
            )
        };
        if self.idle_ms.is_some() {
            return Err(unexpected("idle_ms"));
        }
        let kind = match self.kind.as_str() {
            "error" => {
                if self.then_rv.is_some() {
                    return Err(unexpected("then_rv"));
                }
                if self.duration_ms.is_some() {
                    return Err(unexpected("duration_ms"));
                }
                FaultKind::Error {
                    rv: rv.ok_or_else(|| {
                        invalid(
                            origin,
                            &format!("{key}.rv"),
                            "required for kind error".into(),
                        )
                    })?,
                }
            }
            "hang" => {
                if self.rv.is_some() {
                    return Err(unexpected("rv"));
                }
                let holds_core = match self.at.as_deref() {
                    None | Some("device") => true,
                    Some("network") => false,
                    Some(other) => {
                        return Err(invalid(
                            origin,
                            &format!("{key}.at"),
                            format!("{other:?}; expected \"device\" or \"network\""),
                        ))
                    }
                };
                FaultKind::Hang {
                    holds_core,
                    duration: duration.ok_or_else(|| {
                        invalid(
                            origin,
                            &format!("{key}.duration_ms"),
                            "required for kind hang".into(),
                        )
                    })?,
                    then_rv,
                }
            }
            "invalidate_sessions" => {
                if self.rv.is_some() || self.then_rv.is_some() || self.duration_ms.is_some() {
                    return Err(unexpected("rv/then_rv/duration_ms"));
                }
                let all = match self.scope.as_deref() {
                    None | Some("all") => true,
                    Some("session") => false,
                    Some(other) => {
                        return Err(invalid(
                            origin,
                            &format!("{key}.scope"),
                            format!("{other:?} is not \"all\" or \"session\""),
                        ))
                    }
                };
                FaultKind::InvalidateSessions { all }
            }
            "logout" => {
                if self.rv.is_some() || self.then_rv.is_some() || self.duration_ms.is_some() {
                    return Err(unexpected("rv/then_rv/duration_ms"));
                }
                FaultKind::Logout
            }
            "throttle" => {
                if self.then_rv.is_some() || self.duration_ms.is_some() {
                    return Err(unexpected("then_rv/duration_ms"));
                }
                FaultKind::Throttle { rv }
            }
            "operation_active" => {
                if self.rv.is_some() || self.then_rv.is_some() || self.duration_ms.is_some() {
                    return Err(unexpected("rv/then_rv/duration_ms"));
                }
                FaultKind::OperationActive
            }
            "token_removed" => {
                if self.then_rv.is_some() {
                    return Err(unexpected("then_rv"));
                }
                FaultKind::TokenRemoved {
                    rv: rv.unwrap_or(cryptoki_sys::CKR_DEVICE_REMOVED),
                    duration,
                }
            }
            other => {
                return Err(invalid(
                    origin,
                    &format!("{key}.kind"),
                    format!(
                        "unknown kind {other:?}; expected error, hang, throttle, \
                         invalidate_sessions, logout, operation_active, token_removed or \
                         idle_drop"
                    ),
                ))
            }
        };
        if self.scope.is_some() && !matches!(kind, FaultKind::InvalidateSessions { .. }) {
            return Err(unexpected("scope"));
        }
        if self.at.is_some() && !matches!(kind, FaultKind::Hang { .. }) {
            return Err(unexpected("at"));
        }
        let rate = self.rate.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&rate) {
            return Err(invalid(
                origin,
                &format!("{key}.rate"),
                format!("{rate} is outside 0..=1"),
            ));
        }
        let functions = match self.functions {
            // An operation is left active by its *Init; the other kinds watch the work.
            None if kind == FaultKind::OperationActive => FuncSet::op_inits(),
            None => FuncSet::crypto(),
            Some(names) => {
                let mut set = FuncSet(0);
                for name in names {
                    if name == "*" {
                        set = FuncSet::all();
                        continue;
                    }
                    let f = Func::from_name(&name).ok_or_else(|| {
                        invalid(
                            origin,
                            &format!("{key}.functions"),
                            format!(
                                "unknown function {name:?} (expected e.g. \"C_Sign\" or \"*\")"
                            ),
                        )
                    })?;
                    if f.is_local() {
                        return Err(invalid(
                            origin,
                            &format!("{key}.functions"),
                            format!("{name} is answered locally and cannot fault"),
                        ));
                    }
                    set.0 |= 1 << f.index();
                }
                set
            }
        };
        Ok(Fault {
            kind,
            trigger: Trigger {
                functions,
                after_ops: self.after_ops.unwrap_or(0),
                rate,
                max_fires: self.max_fires,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_is_a_transparent_proxy() {
        let c = Config::from_json("{}", "t").unwrap();
        assert!(c.rtt.is_zero());
        assert_eq!(c.capacity.max_concurrent, None);
        assert!(c.faults.is_empty());
        assert_eq!(c.reload_interval, Duration::from_millis(100));
    }

    #[test]
    fn full_config_parses_names_and_numbers() {
        let c = Config::from_json(
            r#"{"rtt": {"fixed_us": 300},
                "capacity": {"max_concurrent": 4, "max_ops_per_sec": 400, "burst": 2},
                "latency": {"functions": {"C_Login": {"fixed_us": 7}},
                            "mechanisms": {"CKM_ECDSA": {"fixed_us": 5000, "median_us": 100, "sigma": 0.5},
                                           "0x1": {"fixed_us": 9}}},
                "faults": [{"kind": "error", "rv": "CKR_DEVICE_ERROR", "rate": 0.5, "after_ops": 3},
                           {"kind": "hang", "duration_ms": 20, "then_rv": 5, "functions": ["C_Sign"]},
                           {"kind": "invalidate_sessions", "scope": "session", "max_fires": 1},
                           {"kind": "logout"},
                           {"kind": "token_removed", "rv": "CKR_TOKEN_NOT_PRESENT", "duration_ms": 10},
                           {"kind": "idle_drop", "idle_ms": 250}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.capacity.max_concurrent, Some(4));
        assert_eq!(c.capacity.burst, 2);
        let ec = c.service_latency(Func::Sign, Some(cryptoki_sys::CKM_ECDSA));
        assert_eq!(ec.fixed_us, 5000);
        assert_eq!(c.service_latency(Func::Sign, Some(1)).fixed_us, 9);
        assert_eq!(c.service_latency(Func::Login, None).fixed_us, 7);
        assert_eq!(c.service_latency(Func::Sign, None).fixed_us, 0);
        assert_eq!(c.faults.len(), 5);
        assert_eq!(
            c.faults[0].kind,
            FaultKind::Error {
                rv: cryptoki_sys::CKR_DEVICE_ERROR
            }
        );
        assert!(c.faults[0].trigger.functions.contains(Func::Sign));
        assert!(!c.faults[0].trigger.functions.contains(Func::OpenSession));
        assert_eq!(
            c.faults[1].kind,
            FaultKind::Hang {
                duration: Duration::from_millis(20),
                then_rv: Some(5),
                holds_core: true,
            }
        );
        assert_eq!(
            c.faults[2].kind,
            FaultKind::InvalidateSessions { all: false }
        );
        assert_eq!(c.idle_drop, Some(Duration::from_millis(250)));
        assert!(c.has_token_removed_fault());
    }

    #[test]
    fn errors_name_the_file_and_key() {
        let cases = [
            (
                r#"{"capacity": {"max_concurrent": 0}}"#,
                "capacity.max_concurrent",
            ),
            (
                r#"{"latency": {"mechanisms": {"CKM_NOPE": {}}}}"#,
                "latency.mechanisms.CKM_NOPE",
            ),
            (
                r#"{"latency": {"functions": {"C_Nope": {}}}}"#,
                "latency.functions.C_Nope",
            ),
            (r#"{"faults": [{"kind": "error"}]}"#, "faults[0].rv"),
            (
                r#"{"faults": [{"kind": "error", "rv": "CKR_NOPE"}]}"#,
                "faults[0].rv",
            ),
            (r#"{"faults": [{"kind": "melt"}]}"#, "faults[0].kind"),
            (
                r#"{"faults": [{"kind": "logout", "rate": 2}]}"#,
                "faults[0].rate",
            ),
            (r#"{"faults": [{"kind": "hang"}]}"#, "faults[0].duration_ms"),
            (
                r#"{"faults": [{"kind": "hang", "duration_ms": 5, "at": "disk"}]}"#,
                "faults[0].at",
            ),
            (
                r#"{"faults": [{"kind": "logout", "at": "network"}]}"#,
                "faults[0].at",
            ),
            (r#"{"rtt": {"sigma": 9}}"#, "rtt.sigma"),
            (r#"{"profile": "nope"}"#, "profile"),
            (r#"{"reload_interval_ms": 1}"#, "reload_interval_ms"),
        ];
        for (text, key) in cases {
            let err = Config::from_json(text, "/tmp/sim.json")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("/tmp/sim.json: "), "{err}");
            assert!(err.contains(key), "{text} -> {err}");
        }
        let err = Config::from_json(r#"{"capcity": {}}"#, "/tmp/x.json").unwrap_err();
        assert!(err.to_string().contains("capcity"), "{err}");
        assert!(Config::from_json("not json", "f").is_err());
    }

    #[test]
    fn profile_is_a_base_the_file_overrides_key_by_key() {
        let c = Config::from_json(
            r#"{"profile": "aws-cloudhsm-hsm1.medium", "capacity": {"max_ops_per_sec": 10}}"#,
            "t",
        )
        .unwrap();
        let base = Config::from_json(r#"{"profile": "aws-cloudhsm-hsm1.medium"}"#, "t").unwrap();
        assert_eq!(c.capacity.max_ops_per_sec, Some(10.0));
        assert_eq!(c.capacity.max_concurrent, base.capacity.max_concurrent);
        assert_eq!(c.rtt, base.rtt);
    }

    #[test]
    fn latency_mean_and_cap() {
        let l = Latency {
            fixed_us: 1000,
            median_us: 1000,
            sigma: 0.0,
            max_us: Some(1500),
        };
        assert_eq!(l.mean_us(), 2000.0);
        assert_eq!(l.sample_with(0.0), Duration::from_micros(1500));
        let l = Latency {
            max_us: None,
            sigma: 1.0,
            ..l
        };
        assert!((l.mean_us() - (1000.0 + 1000.0 * 0.5f64.exp())).abs() < 1e-9);
        assert_eq!(l.sample_with(0.0), Duration::from_micros(2000));
    }

    #[test]
    fn behaviour_presets_and_switches_parse_and_errors_name_the_key() {
        let c = Config::from_json(r#"{"behaviour": "cloudhsm-sdk5"}"#, "t").unwrap();
        assert!(c.behaviour.rw_sessions_only && c.behaviour.session_handles);
        assert_eq!(c.behaviour.max_sessions, Some(1024));
        let c = Config::from_json(
            r#"{"behaviour": {"preset": "cloudhsm-sdk5", "max_sessions": 8, "session_handles": false,
                              "hide_cka_id": true}}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.behaviour.max_sessions, Some(8));
        assert!(!c.behaviour.session_handles && c.behaviour.hide_cka_id);
        assert!(
            c.behaviour.rw_sessions_only,
            "the preset's other switches stay"
        );
        let c = Config::from_json(r#"{"behaviour": {"ec_point_on_private": true}}"#, "t").unwrap();
        assert!(c.behaviour.ec_point_on_private && !c.behaviour.rw_sessions_only);
        let c =
            Config::from_json(r#"{"behaviour": {"fips_no_pkcs1_decrypt": true}}"#, "t").unwrap();
        assert!(c
            .behaviour
            .refuses(Func::DecryptInit, cryptoki_sys::CKM_RSA_PKCS));
        assert!(!c
            .behaviour
            .refuses(Func::SignInit, cryptoki_sys::CKM_RSA_PKCS));
        for (text, key) in [
            (r#"{"behaviour": "hsm9000"}"#, "behaviour"),
            (r#"{"behaviour": {"hide_cka": true}}"#, "behaviour"),
            (
                r#"{"behaviour": {"max_sessions": 0}}"#,
                "behaviour.max_sessions",
            ),
            (r#"{"behaviour": 3}"#, "behaviour"),
            (
                r#"{"behaviour": {"client_retries": 11}}"#,
                "behaviour.client_retries",
            ),
            (
                r#"{"behaviour": {"retry_backoff_ms": 0}}"#,
                "behaviour.retry_backoff_ms",
            ),
            (r#"{"capacity": {"max_queue": 4}}"#, "capacity.max_queue"),
            (
                r#"{"latency": {"key_sizes": {"RSA-9": 2}}}"#,
                "latency.key_sizes.RSA-9",
            ),
            (
                r#"{"latency": {"key_sizes": {"P-384": 0}}}"#,
                "latency.key_sizes.P-384",
            ),
            (
                r#"{"latency": {"key_size_exponent": 9}}"#,
                "latency.key_size_exponent",
            ),
            (
                r#"{"faults": [{"kind": "operation_active", "rv": 5}]}"#,
                "faults[0]",
            ),
            (
                r#"{"faults": [{"kind": "throttle", "duration_ms": 5}]}"#,
                "faults[0]",
            ),
        ] {
            let err = Config::from_json(text, "/tmp/sim.json")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text} -> {err}");
        }
    }

    #[test]
    fn new_fault_kinds_vendor_codes_and_key_costs() {
        let c = Config::from_json(
            r#"{"capacity": {"max_concurrent": 2, "max_queue": 0},
                "latency": {"key_sizes": {"RSA-4096": 6.5}, "key_size_exponent": 2},
                "faults": [{"kind": "throttle"}, {"kind": "throttle", "rv": "CKR_AGAIN"},
                           {"kind": "operation_active"},
                           {"kind": "error", "rv": "CKR_PARTITION_DISABLED"}]}"#,
            "t",
        )
        .unwrap();
        assert_eq!(c.capacity.max_queue, Some(0));
        assert_eq!(c.faults[0].kind, FaultKind::Throttle { rv: None });
        assert_eq!(
            c.faults[1].kind,
            FaultKind::Throttle {
                rv: Some(0x8000_0041)
            }
        );
        assert_eq!(c.faults[2].kind, FaultKind::OperationActive);
        let t = c.faults[2].trigger.functions;
        assert!(t.contains(Func::SignInit) && t.contains(Func::DecryptInit));
        assert!(
            !t.contains(Func::Sign),
            "operation_active watches *Init calls"
        );
        assert_eq!(c.faults[3].kind, FaultKind::Error { rv: 0x8000_0020 });
        assert_eq!(rv_name(0x8000_001F), "CKR_UNABLE_TO_CONNECT");
        assert_eq!(c.key_cost(KeyClass::Rsa(4096)), 6.5);
        assert!(
            (c.key_cost(KeyClass::Rsa(3072)) - 2.25).abs() < 1e-9,
            "exponent 2"
        );
        assert_eq!(c.key_cost(KeyClass::Ec(256)), 1.0);
        let d = Config::default();
        assert!((d.key_cost(KeyClass::Ec(384)) - 3.375).abs() < 1e-9);
    }

    #[test]
    fn rv_and_mechanism_names() {
        assert_eq!(parse_rv(&Value::from("CKR_OK")), Some(0));
        assert_eq!(parse_rv(&Value::from("0x30")), Some(0x30));
        assert_eq!(parse_rv(&Value::from(48)), Some(48));
        assert_eq!(parse_mechanism("CKM_RSA_PKCS"), Some(1));
        assert_eq!(
            rv_name(cryptoki_sys::CKR_DEVICE_REMOVED),
            "CKR_DEVICE_REMOVED"
        );
    }
}
