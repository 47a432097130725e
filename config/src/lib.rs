//! # keycore-config
//!
//! Configuration: an operator's gokeyless.yaml (read unchanged), keycore's
//! own keys beside it, `KEYLESS_*` environment variables (plus the older
//! `KEYCORE_*` names of the cloud KMS tunables, kept as aliases) and
//! `keycore serve` flags → one validated [`Config`].
//!
//! Owns: the table of settings ([`SETTINGS`], one entry per key: name,
//! type, default, environment names, doc, validation — the flag, the help
//! text, YAML parsing, `-o` output and the README table all come from it),
//! finding and reading the config file, layering the sources (flag >
//! environment > file > default), the messages that say exactly which file
//! line, variable or flag was wrong, and the workspace's one duration and
//! one RFC 3339 parser. Must not: open keys, certificates or sockets (the
//! paths and URIs here are only checked for shape; the key and TLS loaders
//! own their contents), log (problems that are not errors come back as
//! [`Loaded::warnings`] for the binary to print), read credentials (cloud
//! credentials stay environment-only, read by the KMS backend), or change
//! the meaning of any key the reference server defines.
//!
//! Everything downstream (reactors, key loaders, metrics) sees only
//! [`Config`]: once [`load`] returns, no value needs re-checking.
//!
//! Public surface: [`Config`] and its parts ([`Limits`], [`Pkcs11Settings`],
//! [`KmsSettings`], [`Security`] with [`ClientIdentity`], [`KeyPolicy`] and
//! [`OpFilter`], [`KeyStore`], [`LogLevel`], [`LogFormat`], [`Cores`],
//! [`KeyLoadErrors`], [`Pkcs11Dispatch`]); loading ([`load`], [`resolve`],
//! [`from_yaml_str`], [`ServeArgs`], [`Loaded`], [`Origin`],
//! [`ConfigError`], [`Limits::validate`] and [`LimitsError`]); the table
//! ([`SETTINGS`], [`Setting`], [`Section`], [`Alias`], [`Secret`],
//! [`readme_table`], [`env_var_name`], [`flag_name`]); what a reload
//! applies ([`changed_settings`], [`APPLIED_BY_RELOAD`]); the bounds
//! (`MAX_*`, `MIN_BUFFER_BYTES`, `DEFAULT_CONFIG_PATHS`,
//! [`PKCS11_OP_TIMEOUT_FALLBACK`]); the parsers ([`parse_duration`],
//! [`format_duration`], [`parse_rfc3339`], [`format_rfc3339`] and their
//! errors [`DurationError`], [`TimeError`], [`ValueError`]).
//!
//! Depends on no other keycore crate but `keycore-protocol` (for the
//! message size bounds), so every crate may use it without a circle.

mod args;
mod duration;
mod load;
mod output;
mod parse;
mod reload;
mod rfc3339;
mod secret;
mod security;
mod table;
mod yaml;

pub use args::ServeArgs;
pub use duration::{format_duration, parse_duration, DurationError};
pub use load::{from_yaml_str, load, resolve};
pub use output::{readme_table, redact_uri_pins};
pub use parse::{CpuListError, ValueError};
pub use reload::{changed_settings, APPLIED_BY_RELOAD};
pub use rfc3339::{format_rfc3339, parse_rfc3339, TimeError};
pub use secret::SecretString;
pub use security::{
    ClientIdentity, KeyPolicy, OpFilter, Security, MAX_CLIENT_IDENTITIES, MAX_CONNECTIONS,
    MAX_KEY_POLICIES, MAX_MATCHERS, MAX_RPS, OP_FILTERS,
};
pub use table::{Alias, Secret, Section, Setting, SETTINGS};

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

// ---------------------------------------------------------------------------
// Bounds (defaults live in the table, `table.rs`)
// ---------------------------------------------------------------------------

/// Config files keycore looks for when no `-c` is given, in order: the
/// reference server's search path, so an existing install is found as is.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["gokeyless.yaml", "/etc/keyless/gokeyless.yaml"];

/// Largest config file read. A real one is a few hundred bytes; the limit
/// keeps a wrong `-c /dev/zero` from exhausting memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Upper bound for `max_connections_per_core`: each connection may hold a
/// read and a write buffer, so a million is already tens of GiB.
pub const MAX_CONNECTIONS_PER_CORE_LIMIT: u32 = 1_000_000;
/// Upper bound for `max_in_flight_per_connection`: request ids are 32-bit,
/// but an edge never pipelines anywhere near this many.
pub const MAX_IN_FLIGHT_PER_CONNECTION_LIMIT: u32 = 65_536;
/// Smallest read/write buffer: must hold the largest message.
pub const MIN_BUFFER_BYTES: usize = keycore_protocol::MAX_MESSAGE_LEN;
/// Largest read/write buffer per connection.
pub const MAX_BUFFER_BYTES: usize = 64 << 20;
/// Upper bound for `sign_retry_count`: retries multiply a failing HSM's load.
pub const MAX_SIGN_RETRY_COUNT: u32 = 1000;
/// Largest CPU id accepted in `cores` (Linux's largest `NR_CPUS` is 8192).
pub const MAX_CPU_ID: usize = 8191;

/// Environment variables that replace `private_key_stores`, like the
/// `--private-key-dirs`/`--private-key-files` flags.
pub const ENV_PRIVATE_KEY_DIRS: &str = "KEYLESS_PRIVATE_KEY_DIRS";
/// See [`ENV_PRIVATE_KEY_DIRS`].
pub const ENV_PRIVATE_KEY_FILES: &str = "KEYLESS_PRIVATE_KEY_FILES";

/// The environment variable for a key: `KEYLESS_` + the key upper-cased.
pub fn env_var_name(key: &str) -> String {
    format!("KEYLESS_{}", key.to_ascii_uppercase())
}

/// The flag for a key: `--` + the key with dashes for underscores.
pub fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

// ---------------------------------------------------------------------------
// The validated configuration
// ---------------------------------------------------------------------------

/// Where private keys come from: one `private_key_stores` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStore {
    /// `dir:` — searched recursively for files named `*.key`.
    Dir(PathBuf),
    /// `file:` — one PEM or DER key file.
    File(PathBuf),
    /// `uri:` — a PKCS#11 URI or a cloud KMS key name, as written (the key
    /// backends parse it).
    Uri(String),
}

/// A `pkcs11:` URI may carry the user PIN (`pin-value`): the text is wiped
/// when the entry goes (a reload drops the old config; `-o` never prints it
/// unredacted without `--show-secrets`).
impl Drop for KeyStore {
    fn drop(&mut self) {
        if let KeyStore::Uri(u) = self {
            zeroize::Zeroize::zeroize(u);
        }
    }
}

/// Log level, numbered as in gokeyless.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum LogLevel {
    /// 0
    Debug = 0,
    /// 1 (default)
    #[default]
    Info = 1,
    /// 2
    Warning = 2,
    /// 3
    Error = 3,
    /// 4
    Critical = 4,
    /// 5
    Fatal = 5,
}

impl LogLevel {
    fn from_number(n: u64) -> LogLevel {
        match n {
            0 => LogLevel::Debug,
            1 => LogLevel::Info,
            2 => LogLevel::Warning,
            3 => LogLevel::Error,
            4 => LogLevel::Critical,
            _ => LogLevel::Fatal,
        }
    }

    /// The number written in gokeyless.yaml.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The closest `tracing` level (critical and fatal have none of their
    /// own; both map to ERROR).
    pub fn tracing_level(self) -> tracing::Level {
        match self {
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warning => tracing::Level::WARN,
            LogLevel::Error | LogLevel::Critical | LogLevel::Fatal => tracing::Level::ERROR,
        }
    }
}

/// How log lines are written (`log_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which cores run a reactor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Cores {
    /// Every CPU in the process's affinity mask.
    #[default]
    All,
    /// This many reactors (>= 1), on the first CPUs of the affinity mask.
    Count(usize),
    /// Exactly these CPU ids (non-empty, no duplicates).
    List(Vec<usize>),
}

/// What to do when a key file cannot be read or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyLoadErrors {
    /// Stop start-up (the reference's behaviour).
    #[default]
    Fail,
    /// Log the key and continue without it.
    Skip,
}

/// Where PKCS#11 operations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pkcs11Dispatch {
    /// Decided per token by the PKCS#11 backend.
    #[default]
    Auto,
    /// On the reactor thread (fast local tokens).
    Inline,
    /// On worker threads (network HSMs whose calls block).
    Offload,
}

/// Per-connection and per-core limits of the server, fixed at start-up.
/// Every field except `max_body_len` is a config key of the same name (see
/// the table for defaults and ranges); the server takes them as they are.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// `max_connections_per_core`.
    pub max_connections_per_core: usize,
    /// `max_in_flight_per_connection`.
    pub max_in_flight_per_connection: usize,
    /// `max_handshakes_per_core`.
    pub max_handshakes_per_core: usize,
    /// `max_handshakes_per_source`.
    pub max_handshakes_per_source: usize,
    /// `idle_timeout`.
    pub idle_timeout: Duration,
    /// `handshake_timeout`.
    pub handshake_timeout: Duration,
    /// `drain_timeout`.
    pub drain_timeout: Duration,
    /// `read_buffer_bytes`.
    pub read_buffer_bytes: usize,
    /// `write_buffer_bytes`.
    pub write_buffer_bytes: usize,
    /// `reactor_spin`: how long an idle reactor polls before it sleeps;
    /// `None` = sleep at once.
    pub reactor_spin: Option<Duration>,
    /// Largest request body accepted: not a config key (the protocol's
    /// maximum, 65535); tests lower it to exercise the refusal path.
    pub max_body_len: usize,
}

impl Default for Limits {
    /// The table's defaults (the same values as [`Config::default`]).
    fn default() -> Self {
        Config::default().limits
    }
}

/// Relations between limits that a hand-built [`Limits`] may break (values
/// loaded from the config are range-checked already).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    /// A buffer smaller than one largest message.
    #[error("{setting} ({value}) must hold one largest message ({min} bytes)")]
    BufferTooSmall {
        /// `read_buffer_bytes` or `write_buffer_bytes`.
        setting: &'static str,
        /// Its value.
        value: usize,
        /// The smallest allowed.
        min: usize,
    },
    /// `max_body_len` above the protocol's maximum.
    #[error("max_body_len ({0}) must be at most {max}", max = keycore_protocol::MAX_BODY_LEN)]
    BodyTooLarge(usize),
    /// A count or timeout of zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

impl Limits {
    /// Check the relations between limits; messages name the setting.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_body_len > keycore_protocol::MAX_BODY_LEN {
            return Err(LimitsError::BodyTooLarge(self.max_body_len));
        }
        let min_read = keycore_protocol::HEADER_LEN + self.max_body_len;
        if self.read_buffer_bytes < min_read {
            return Err(LimitsError::BufferTooSmall {
                setting: "read_buffer_bytes",
                value: self.read_buffer_bytes,
                min: min_read,
            });
        }
        if self.write_buffer_bytes < keycore_protocol::PADDED_LEN {
            return Err(LimitsError::BufferTooSmall {
                setting: "write_buffer_bytes",
                value: self.write_buffer_bytes,
                min: keycore_protocol::PADDED_LEN,
            });
        }
        for (name, n) in [
            ("max_connections_per_core", self.max_connections_per_core),
            (
                "max_in_flight_per_connection",
                self.max_in_flight_per_connection,
            ),
            ("max_handshakes_per_core", self.max_handshakes_per_core),
            ("max_handshakes_per_source", self.max_handshakes_per_source),
        ] {
            if n == 0 {
                return Err(LimitsError::Zero(name));
            }
        }
        for (name, d) in [
            ("idle_timeout", self.idle_timeout),
            ("handshake_timeout", self.handshake_timeout),
            ("drain_timeout", self.drain_timeout),
        ] {
            if d.is_zero() {
                return Err(LimitsError::Zero(name));
            }
        }
        Ok(())
    }
}

/// PKCS#11 backend tunables (the `pkcs11_*` keys). Per-token overrides stay
/// in the token's URI (`x-dispatch`, `x-sessions-per-core`, `x-op-timeout`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Pkcs11Settings {
    /// `pkcs11_dispatch`.
    pub dispatch: Pkcs11Dispatch,
    /// `pkcs11_sessions_per_core`.
    pub sessions_per_core: u32,
    /// `pkcs11_op_timeout`; `None`: `sign_timeout` if set, else 2 s (see
    /// [`Config::pkcs11_op_timeout`]).
    pub op_timeout: Option<Duration>,
}

/// Enrollment settings (the `enroll_*` keys): the API token, the
/// certificates endpoint, an extra CA for it and the time limit. With
/// `hostname`, `zone_id` and a credential (`enroll_api_token`, else the
/// legacy `origin_ca_api_key`) they let `keycore enroll` and `serve` obtain
/// the server's own certificate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnrollSettings {
    /// `enroll_api_token` (a secret; sent as `Authorization: Bearer`).
    pub api_token: SecretString,
    /// `enroll_endpoint`.
    pub endpoint: String,
    /// `enroll_ca_file`; `None`: the system roots only.
    pub ca_file: Option<PathBuf>,
    /// `enroll_timeout`: the whole exchange, connect included.
    pub timeout: Duration,
}

/// Cloud KMS tunables (the `kms_*` keys): endpoints, rates, timeouts, the
/// extra CA file and the signature check. Credentials are not here: they
/// stay environment-only, read by the KMS backend under the providers' SDK
/// names.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KmsSettings {
    /// `kms_azure_endpoint`; `None`: the key URI's host.
    pub azure_endpoint: Option<String>,
    /// `kms_azure_authority`; `None`: the cloud's login host.
    pub azure_authority: Option<String>,
    /// `kms_azure_imds_endpoint`.
    pub azure_imds_endpoint: String,
    /// `kms_azure_max_rps`.
    pub azure_max_rps: u32,
    /// `kms_azure_max_in_flight`.
    pub azure_max_in_flight: u32,
    /// `kms_gcp_endpoint`.
    pub gcp_endpoint: String,
    /// `kms_gcp_token_endpoint`; `None`: the key file's `token_uri`.
    pub gcp_token_endpoint: Option<String>,
    /// `kms_gcp_metadata_endpoint`.
    pub gcp_metadata_endpoint: String,
    /// `kms_gcp_max_rps`.
    pub gcp_max_rps: u32,
    /// `kms_gcp_max_in_flight`.
    pub gcp_max_in_flight: u32,
    /// `kms_aws_endpoint`; `None`: `https://kms.<region>.amazonaws.com`.
    pub aws_endpoint: Option<String>,
    /// `kms_aws_imds_endpoint`.
    pub aws_imds_endpoint: String,
    /// `kms_aws_sts_endpoint`; `None`: regional from `AWS_REGION`.
    pub aws_sts_endpoint: Option<String>,
    /// `kms_aws_max_rps`.
    pub aws_max_rps: u32,
    /// `kms_aws_max_in_flight`.
    pub aws_max_in_flight: u32,
    /// `kms_ca_file`.
    pub ca_file: Option<PathBuf>,
    /// `kms_op_timeout`.
    pub op_timeout: Duration,
    /// `kms_attempt_timeout`.
    pub attempt_timeout: Duration,
    /// `kms_startup_timeout`.
    pub startup_timeout: Duration,
    /// `kms_verify`.
    pub verify: bool,
}

/// The validated configuration. Every field is already range-checked; the
/// table ([`SETTINGS`], rendered in the README) documents each key.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `loglevel`.
    pub loglevel: LogLevel,
    /// `log_format`.
    pub log_format: LogFormat,
    /// `hostname` (registration only; kept so `-o` shows it).
    pub hostname: String,
    /// `zone_id` (registration only).
    pub zone_id: String,
    /// `origin_ca_api_key`: the legacy Origin CA service key for
    /// enrollment (a secret; retired by the API on 2026-09-30).
    pub origin_ca_api_key: SecretString,
    /// `auth_cert`: the server certificate chain, relative to the working
    /// directory as in the reference.
    pub auth_cert: PathBuf,
    /// `auth_key`: the server's TLS key.
    pub auth_key: PathBuf,
    /// `auth_csr` (registration only).
    pub auth_csr: PathBuf,
    /// `cloudflare_ca_cert`: the CA client certificates must chain to.
    pub cloudflare_ca_cert: PathBuf,
    /// `private_key_stores`, in order.
    pub private_key_stores: Vec<KeyStore>,
    /// `port`.
    pub port: u16,
    /// `metrics_port`: 0 disables metrics.
    pub metrics_port: u16,
    /// `pid_file`; `None` when empty.
    pub pid_file: Option<PathBuf>,
    /// `current_time`; `None` means the real clock.
    pub current_time: Option<SystemTime>,
    /// `tracing_enabled`.
    pub tracing_enabled: bool,
    /// `tracing_address` (host:port), as written.
    pub tracing_address: String,
    /// `tracing_sample_rate`, 0..=1.
    pub tracing_sample_rate: f64,
    /// `sign_timeout`; `None` means no limit.
    pub sign_timeout: Option<Duration>,
    /// `sign_retry_count`, 0..=[`MAX_SIGN_RETRY_COUNT`].
    pub sign_retry_count: u32,
    /// `listen_address`.
    pub listen_address: IpAddr,
    /// `metrics_address`.
    pub metrics_address: IpAddr,
    /// `cores`: one reactor per core.
    pub cores: Cores,
    /// `tls12_only`.
    pub tls12_only: bool,
    /// `key_load_errors`.
    pub key_load_errors: KeyLoadErrors,
    /// `reload_watch`: how often to look for changed files; `None` = off.
    pub reload_watch: Option<Duration>,
    /// `reload_timeout`: longest a reload may take.
    pub reload_timeout: Duration,
    /// `record_file`: where the traffic recording goes; `None` = off.
    pub record_file: Option<PathBuf>,
    /// `record_max_bytes`: rotate the recording at this size.
    pub record_max_bytes: u64,
    /// `record_files`: rotated recording files kept.
    pub record_files: u32,
    /// `record_buffer`: records each core buffers for the writer.
    pub record_buffer: usize,
    /// The server's limits (`max_*`, `*_timeout`, `*_buffer_bytes`).
    pub limits: Limits,
    /// The PKCS#11 backend's tunables (`pkcs11_*`).
    pub pkcs11: Pkcs11Settings,
    /// The cloud KMS backend's tunables (`kms_*`).
    pub kms: KmsSettings,
    /// Client identities, key policies, per-identity limits and the audit
    /// trail (`client_*`, `key_policies`, `audit_*`; issue 18).
    pub security: Security,
    /// Enrollment with the CDN's certificates API (`enroll_*`).
    pub enroll: EnrollSettings,
}

/// The defaults, built once from the table's default texts through the same
/// setters the file uses (so the README, `--help` and the running value
/// cannot disagree).
static DEFAULT: LazyLock<Config> = LazyLock::new(|| {
    let mut c = Config::placeholder();
    for s in SETTINGS {
        s.apply_default(&mut c);
    }
    c
});

impl Default for Config {
    /// Every key at the table's default.
    fn default() -> Self {
        DEFAULT.clone()
    }
}

impl Config {
    /// Values every table default overwrites; they are never seen outside
    /// [`DEFAULT`]'s construction (a key missing from the table would keep
    /// its placeholder: `every_field_comes_from_the_table` checks).
    fn placeholder() -> Config {
        Config {
            loglevel: LogLevel::default(),
            log_format: LogFormat::default(),
            hostname: String::new(),
            zone_id: String::new(),
            origin_ca_api_key: SecretString::default(),
            auth_cert: PathBuf::new(),
            auth_key: PathBuf::new(),
            auth_csr: PathBuf::new(),
            cloudflare_ca_cert: PathBuf::new(),
            private_key_stores: Vec::new(),
            port: 0,
            metrics_port: 0,
            pid_file: None,
            current_time: None,
            tracing_enabled: false,
            tracing_address: String::new(),
            tracing_sample_rate: 0.0,
            sign_timeout: None,
            sign_retry_count: 0,
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            metrics_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            cores: Cores::default(),
            tls12_only: false,
            key_load_errors: KeyLoadErrors::default(),
            reload_watch: None,
            reload_timeout: Duration::ZERO,
            record_file: None,
            record_max_bytes: 0,
            record_files: 0,
            record_buffer: 0,
            limits: Limits {
                max_connections_per_core: 0,
                max_in_flight_per_connection: 0,
                max_handshakes_per_core: 0,
                max_handshakes_per_source: 0,
                idle_timeout: Duration::ZERO,
                handshake_timeout: Duration::ZERO,
                drain_timeout: Duration::ZERO,
                read_buffer_bytes: 0,
                write_buffer_bytes: 0,
                reactor_spin: None,
                max_body_len: keycore_protocol::MAX_BODY_LEN,
            },
            pkcs11: Pkcs11Settings::default(),
            kms: KmsSettings::default(),
            security: Security::default(),
            enroll: EnrollSettings::default(),
        }
    }

    /// The keyless listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_address, self.port)
    }

    /// The metrics listener's address; `None` when `metrics_port` is 0.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        (self.metrics_port != 0).then(|| SocketAddr::new(self.metrics_address, self.metrics_port))
    }

    /// The PKCS#11 per-operation watchdog: `pkcs11_op_timeout`, else the
    /// reference's `sign_timeout` (which bounds one sign attempt, the
    /// natural meaning), else 2 s.
    pub fn pkcs11_op_timeout(&self) -> Duration {
        self.pkcs11
            .op_timeout
            .or(self.sign_timeout)
            .unwrap_or(PKCS11_OP_TIMEOUT_FALLBACK)
    }

    /// The CPU ids to run reactors on, given the CPUs this process may use
    /// (`available`, e.g. from `core_affinity::get_core_ids`). A count larger
    /// than `available` wraps around (more than one reactor per CPU; `load`
    /// warns about it). An empty `available` means unknown: ids 0.. are used.
    pub fn core_ids(&self, available: &[usize]) -> Vec<usize> {
        match &self.cores {
            Cores::List(ids) => ids.clone(),
            Cores::All if available.is_empty() => vec![0],
            Cores::All => available.to_vec(),
            Cores::Count(n) if available.is_empty() => (0..*n).collect(),
            Cores::Count(n) => (0..*n).map(|i| available[i % available.len()]).collect(),
        }
    }

    /// The configuration as gokeyless.yaml-compatible YAML (every key, in
    /// table order, secrets included). Parsing it back gives an equal
    /// `Config`. `-o` uses [`Loaded::effective_yaml`] instead, which adds
    /// each value's source and hides secrets.
    pub fn to_yaml(&self) -> String {
        output::yaml(self, None, true)
    }
}

/// `pkcs11_op_timeout` when neither it nor `sign_timeout` is set: an HSM
/// answer slower than this is a stuck session, not a slow one.
pub const PKCS11_OP_TIMEOUT_FALLBACK: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------
// Errors and where a value came from
// ---------------------------------------------------------------------------

/// Where a setting's value came from, for messages and `-o`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A config file line.
    File {
        /// The file, as named (so the message matches what the operator typed).
        path: PathBuf,
        /// 1-based line.
        line: usize,
    },
    /// An environment variable.
    Env {
        /// Its name, e.g. `KEYLESS_PORT` or an alias such as
        /// `KEYCORE_AZURE_MAX_RPS`.
        var: String,
    },
    /// A command-line flag.
    Flag {
        /// Its name, e.g. `--port`.
        flag: String,
    },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line } => write!(f, "{}:{line}", path.display()),
            Origin::Env { var } => write!(f, "environment variable {var}"),
            Origin::Flag { flag } => write!(f, "flag {flag}"),
        }
    }
}

/// Why the configuration could not be loaded. Every variant names the file,
/// line, variable or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file named with `-c` does not exist.
    #[error("config file {} does not exist", path.display())]
    NotFound {
        /// As named.
        path: PathBuf,
    },
    /// The config file could not be read (permissions, not UTF-8, too big).
    #[error("config file {}", path.display())]
    Read {
        /// As named.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file is not valid YAML (or not a single mapping).
    #[error("{}:{line}:{column}: {message}", path.display())]
    Syntax {
        /// As named.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is malformed or out of range.
    #[error("{origin}: key \"{key}\": {message}")]
    Value {
        /// Where it was written.
        origin: Origin,
        /// The config key (`private_key_stores[2]` for a store entry).
        key: String,
        /// What was expected and what was found.
        message: String,
    },
}

/// A loaded configuration and what the operator should be told about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Things worth logging that are not errors (unknown keys with their
    /// line, ignored variables, oversubscribed cores).
    pub warnings: Vec<String>,
    /// The config file read, if any.
    pub source: Option<PathBuf>,
    /// Where each key's value came from; a key not listed has its default.
    pub origins: BTreeMap<&'static str, Origin>,
}

impl Loaded {
    /// The effective configuration for `-o/--output-config`: every key
    /// (PKCS#11 and KMS tunables included), each with its source as a
    /// trailing comment (`# default`, `# g.yaml:3`, `# env KEYLESS_PORT`,
    /// `# flag --port`). Secrets (`origin_ca_api_key`, `enroll_api_token`, `pin-value` in
    /// PKCS#11 URIs) are replaced by `<redacted>` unless `show_secrets`.
    pub fn effective_yaml(&self, show_secrets: bool) -> String {
        output::yaml(&self.config, Some(&self.origins), show_secrets)
    }
}

#[cfg(test)]
mod tests;
