//! Configuration: an operator's gokeyless.yaml (read unchanged), keycore's
//! own keys beside it, `KEYLESS_*` environment variables and `keycore serve`
//! flags → one validated [`Config`].
//!
//! Owns: finding and reading the config file, layering the sources (flag >
//! environment > file > default), parsing and range-checking every value,
//! and the messages that say exactly which file line, variable or flag was
//! wrong. Must not: open keys, certificates or sockets (the paths and URIs
//! here are only checked for shape; the key and TLS loaders own their
//! contents), log (problems that are not errors come back as
//! [`Loaded::warnings`] for the binary to print), or change the meaning of
//! any key the reference server defines.
//!
//! Everything downstream (reactors, key loaders, metrics) sees only
//! [`Config`]: once [`load`] returns, no value needs re-checking.

pub mod duration;
mod parse;
mod rfc3339;
mod yaml;

pub use duration::{format_duration, parse_duration};
pub use rfc3339::{format_rfc3339, parse_rfc3339};

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use yaml::{Kind, Node};

// ---------------------------------------------------------------------------
// Defaults and limits
// ---------------------------------------------------------------------------

/// Config files keycore looks for when no `-c` is given, in order: the
/// reference server's search path, so an existing install is found as is.
pub const DEFAULT_CONFIG_PATHS: [&str; 2] = ["gokeyless.yaml", "/etc/keyless/gokeyless.yaml"];

/// Largest config file read. A real one is a few hundred bytes; the limit
/// keeps a wrong `-c /dev/zero` from exhausting memory.
pub const MAX_CONFIG_FILE_BYTES: u64 = 1 << 20;

/// Default keyless port (the reference's).
pub const DEFAULT_PORT: u16 = 2407;
/// Default metrics port (the reference's).
pub const DEFAULT_METRICS_PORT: u16 = 2406;
/// Default connections accepted per core before new ones wait in the
/// kernel's backlog.
pub const DEFAULT_MAX_CONNECTIONS_PER_CORE: u32 = 4096;
/// Upper bound for `max_connections_per_core`: each connection may hold a
/// read and a write buffer, so a million is already tens of GiB.
pub const MAX_CONNECTIONS_PER_CORE_LIMIT: u32 = 1_000_000;
/// Default requests one connection may have outstanding (the reference's).
pub const DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION: u32 = 1024;
/// Upper bound for `max_in_flight_per_connection`: request ids are 32-bit,
/// but an edge never pipelines anywhere near this many.
pub const MAX_IN_FLIGHT_PER_CONNECTION_LIMIT: u32 = 65_536;
/// Default idle timeout (the reference's).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default TLS handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time given to in-flight requests at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default read buffer: the largest message (8-byte header + 65 535-byte
/// body) rounded up to 64 KiB + 8, so one buffer always holds a whole frame.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 65_536 + 8;
/// Default write buffer (flush threshold and bound): 64 padded responses per
/// flush, which already amortises the TLS record and syscall; more only
/// raises per-connection memory under pipelined overload.
pub const DEFAULT_WRITE_BUFFER_BYTES: usize = 65_536 + 8;
/// Smallest read/write buffer: must hold the largest message.
pub const MIN_BUFFER_BYTES: usize = keycore_protocol::MAX_MESSAGE_LEN;
/// Largest read/write buffer per connection.
pub const MAX_BUFFER_BYTES: usize = 64 << 20;
/// Upper bound for `sign_retry_count`: retries multiply a failing HSM's load.
pub const MAX_SIGN_RETRY_COUNT: u32 = 1000;
/// Largest CPU id accepted in `cores` (Linux's largest `NR_CPUS` is 8192).
pub const MAX_CPU_ID: usize = 8191;

const _: () = assert!(DEFAULT_READ_BUFFER_BYTES >= MIN_BUFFER_BYTES);
const _: () = assert!(DEFAULT_WRITE_BUFFER_BYTES >= MIN_BUFFER_BYTES);
const _: () = assert!(DEFAULT_WRITE_BUFFER_BYTES <= MAX_BUFFER_BYTES);

/// Keys a config file may hold, in the order [`Config::to_yaml`] writes
/// them: the reference server's first, then keycore's own.
pub const KEYS: [&str; 32] = [
    "loglevel",
    "hostname",
    "zone_id",
    "origin_ca_api_key",
    "auth_cert",
    "auth_key",
    "auth_csr",
    "cloudflare_ca_cert",
    "private_key_stores",
    "port",
    "metrics_port",
    "pid_file",
    "current_time",
    "tracing_enabled",
    "tracing_address",
    "tracing_sample_rate",
    "sign_timeout",
    "sign_retry_count",
    "listen_address",
    "metrics_address",
    "cores",
    "max_connections_per_core",
    "max_in_flight_per_connection",
    "idle_timeout",
    "handshake_timeout",
    "drain_timeout",
    "tls12_only",
    "read_buffer_bytes",
    "write_buffer_bytes",
    "key_load_errors",
    "pkcs11_dispatch",
    "log_format",
];

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
// Flags
// ---------------------------------------------------------------------------

/// Flags of `keycore serve`. Every config key has a flag (dashes for
/// underscores) that overrides the `KEYLESS_<KEY>` environment variable,
/// which overrides the config file. Values are taken as text and checked by
/// the same parser as the file, so a value means the same everywhere.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServeArgs {
    /// Config file (YAML, gokeyless.yaml format). Default: ./gokeyless.yaml
    /// if it exists, else /etc/keyless/gokeyless.yaml if it exists, else
    /// built-in defaults only. A file named here must exist.
    #[arg(
        short = 'c',
        long = "config-file",
        visible_alias = "config_file",
        value_name = "FILE"
    )]
    pub config_file: Option<PathBuf>,

    /// Print the effective configuration (all sources applied) as YAML and
    /// exit. Default: off.
    #[arg(short = 'o', long = "output-config")]
    pub output_config: bool,

    /// Accepted for compatibility. The reference server uses it to run
    /// certificate registration only; keycore does not implement
    /// registration, so with this flag it validates the configuration and
    /// exits. Default: off.
    #[arg(long = "config-only")]
    pub config_only: bool,

    /// Comma-separated directories of `*.key` files; replaces
    /// private_key_stores (together with --private-key-files). Env:
    /// KEYLESS_PRIVATE_KEY_DIRS. Default: unset.
    #[arg(long, value_name = "DIRS")]
    pub private_key_dirs: Option<String>,

    /// Comma-separated key files; replaces private_key_stores (together with
    /// --private-key-dirs). Env: KEYLESS_PRIVATE_KEY_FILES. Default: unset.
    #[arg(long, value_name = "FILES")]
    pub private_key_files: Option<String>,

    /// Log level: 0 debug, 1 info, 2 warning, 3 error, 4 critical, 5 fatal.
    /// Default: 1.
    #[arg(long, value_name = "0-5")]
    pub loglevel: Option<String>,

    /// Registration only (not supported by keycore yet). Default: empty.
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Registration only (not supported by keycore yet). Default: empty.
    #[arg(long, value_name = "ID")]
    pub zone_id: Option<String>,

    /// Registration only (not supported by keycore yet). Default: empty.
    #[arg(long, value_name = "KEY")]
    pub origin_ca_api_key: Option<String>,

    /// The server's TLS certificate chain (PEM). Default: server.pem.
    #[arg(long, value_name = "FILE")]
    pub auth_cert: Option<String>,

    /// The server's TLS private key (PEM). Default: server-key.pem.
    #[arg(long, value_name = "FILE")]
    pub auth_key: Option<String>,

    /// Where a registration CSR would be written (unused by keycore).
    /// Default: server.csr.
    #[arg(long, value_name = "FILE")]
    pub auth_csr: Option<String>,

    /// CA that client (edge) certificates must chain to (PEM).
    /// Default: keyless_cacert.pem.
    #[arg(long, value_name = "FILE")]
    pub cloudflare_ca_cert: Option<String>,

    /// Keyless listener port (0: any free port, for tests). Default: 2407.
    #[arg(long, value_name = "PORT")]
    pub port: Option<String>,

    /// Prometheus /metrics port; 0 disables metrics. Default: 2406.
    #[arg(long, value_name = "PORT")]
    pub metrics_port: Option<String>,

    /// File to write the process id to. Default: empty (none).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<String>,

    /// RFC 3339 time used instead of now for certificate checks (testing).
    /// Default: empty (the real clock).
    #[arg(long, value_name = "TIME")]
    pub current_time: Option<String>,

    /// Jaeger tracing on/off (`--tracing-enabled` alone means true).
    /// Default: false.
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub tracing_enabled: Option<String>,

    /// Jaeger agent address (host:port, UDP). Default: empty.
    #[arg(long, value_name = "ADDR")]
    pub tracing_address: Option<String>,

    /// Fraction of requests traced, 0..=1. Default: 0.
    #[arg(long, value_name = "RATE")]
    pub tracing_sample_rate: Option<String>,

    /// Time limit for one sign attempt, Go duration syntax ("500ms", "2s").
    /// Default: empty (no limit).
    #[arg(long, value_name = "DURATION")]
    pub sign_timeout: Option<String>,

    /// Retries of a failed sign. Default: 0.
    #[arg(long, value_name = "N")]
    pub sign_retry_count: Option<String>,

    /// IP address the keyless listener binds. Default: 0.0.0.0.
    #[arg(long, value_name = "IP")]
    pub listen_address: Option<String>,

    /// IP address the metrics listener binds. Default: 0.0.0.0.
    #[arg(long, value_name = "IP")]
    pub metrics_address: Option<String>,

    /// Cores to run on: "all", a count ("4"), or CPU ids ("0,2,4", "0-3").
    /// Default: all cores available to the process.
    #[arg(long, value_name = "CORES")]
    pub cores: Option<String>,

    /// Connections each core accepts at once. Default: 4096.
    #[arg(long, value_name = "N")]
    pub max_connections_per_core: Option<String>,

    /// Outstanding requests per connection. Default: 1024.
    #[arg(long, value_name = "N")]
    pub max_in_flight_per_connection: Option<String>,

    /// Close a connection idle this long. Default: 30s.
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<String>,

    /// Close a connection whose TLS handshake takes longer. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub handshake_timeout: Option<String>,

    /// Time given to in-flight requests at shutdown. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub drain_timeout: Option<String>,

    /// Offer only TLS 1.2, like the reference (`--tls12-only` alone means
    /// true). Default: false (TLS 1.3 and 1.2).
    #[arg(
        long,
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true"
    )]
    pub tls12_only: Option<String>,

    /// Per-connection read buffer in bytes. Default: 65544.
    #[arg(long, value_name = "BYTES")]
    pub read_buffer_bytes: Option<String>,

    /// Per-connection write buffer (flush bound) in bytes. Default: 262144.
    #[arg(long, value_name = "BYTES")]
    pub write_buffer_bytes: Option<String>,

    /// A key that cannot be loaded: "fail" stops start-up, "skip" logs and
    /// continues. Default: fail.
    #[arg(long, value_name = "fail|skip")]
    pub key_load_errors: Option<String>,

    /// Where PKCS#11 calls run: "auto", "inline" (on the reactor) or
    /// "offload" (worker threads). Default: auto.
    #[arg(long, value_name = "auto|inline|offload")]
    pub pkcs11_dispatch: Option<String>,

    /// Log line format on stderr: "text" (colours only when stderr is a
    /// terminal) or "json" (one JSON object per line). Default: text.
    #[arg(long, value_name = "text|json")]
    pub log_format: Option<String>,
}

impl ServeArgs {
    /// The flag's value for a config key, if given on the command line.
    fn flag_for(&self, key: &str) -> Option<&str> {
        let v = match key {
            "loglevel" => &self.loglevel,
            "hostname" => &self.hostname,
            "zone_id" => &self.zone_id,
            "origin_ca_api_key" => &self.origin_ca_api_key,
            "auth_cert" => &self.auth_cert,
            "auth_key" => &self.auth_key,
            "auth_csr" => &self.auth_csr,
            "cloudflare_ca_cert" => &self.cloudflare_ca_cert,
            "port" => &self.port,
            "metrics_port" => &self.metrics_port,
            "pid_file" => &self.pid_file,
            "current_time" => &self.current_time,
            "tracing_enabled" => &self.tracing_enabled,
            "tracing_address" => &self.tracing_address,
            "tracing_sample_rate" => &self.tracing_sample_rate,
            "sign_timeout" => &self.sign_timeout,
            "sign_retry_count" => &self.sign_retry_count,
            "listen_address" => &self.listen_address,
            "metrics_address" => &self.metrics_address,
            "cores" => &self.cores,
            "max_connections_per_core" => &self.max_connections_per_core,
            "max_in_flight_per_connection" => &self.max_in_flight_per_connection,
            "idle_timeout" => &self.idle_timeout,
            "handshake_timeout" => &self.handshake_timeout,
            "drain_timeout" => &self.drain_timeout,
            "tls12_only" => &self.tls12_only,
            "read_buffer_bytes" => &self.read_buffer_bytes,
            "write_buffer_bytes" => &self.write_buffer_bytes,
            "key_load_errors" => &self.key_load_errors,
            "pkcs11_dispatch" => &self.pkcs11_dispatch,
            "log_format" => &self.log_format,
            _ => return None,
        };
        v.as_deref()
    }
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

/// Log level, numbered as in gokeyless.yaml.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// 0
    Debug = 0,
    /// 1 (default)
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines; ANSI colours only when stderr is a terminal.
    Text,
    /// One JSON object per line (for journald/Loki/Elasticsearch shippers).
    Json,
}

/// Which cores run a reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cores {
    /// Every CPU in the process's affinity mask.
    All,
    /// This many reactors (>= 1), on the first CPUs of the affinity mask.
    Count(usize),
    /// Exactly these CPU ids (non-empty, no duplicates).
    List(Vec<usize>),
}

/// What to do when a key file cannot be read or parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLoadErrors {
    /// Stop start-up (the reference's behaviour).
    Fail,
    /// Log the key and continue without it.
    Skip,
}

/// Where PKCS#11 operations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pkcs11Dispatch {
    /// Decided per token by the PKCS#11 backend.
    Auto,
    /// On the reactor thread (fast local tokens).
    Inline,
    /// On worker threads (network HSMs whose calls block).
    Offload,
}

/// The validated configuration. Every field is already range-checked; see
/// the README's config table (and [`Config::to_yaml`]) for each key.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `loglevel`.
    pub loglevel: LogLevel,
    /// `hostname` (registration only; kept so `-o` shows it).
    pub hostname: String,
    /// `zone_id` (registration only).
    pub zone_id: String,
    /// `origin_ca_api_key` (registration only; a secret).
    pub origin_ca_api_key: String,
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
    /// `port`: keyless listener (0..=65535; 0 lets the kernel pick a free port, for tests and `keycore demo`).
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
    /// `listen_address` (default 0.0.0.0, as the reference listens on all
    /// interfaces). Narrowing it (e.g. to one VLAN's address) costs nothing
    /// but reachability.
    pub listen_address: IpAddr,
    /// `metrics_address` (default 0.0.0.0, as the reference). 127.0.0.1
    /// hides `/metrics` from remote scrapers.
    pub metrics_address: IpAddr,
    /// `cores` (default all CPUs in the affinity mask): one reactor per
    /// core. Fewer cores leave CPU for other processes at the cost of peak
    /// signing throughput; a count above the CPUs available oversubscribes.
    pub cores: Cores,
    /// `max_connections_per_core`, 1..=[`MAX_CONNECTIONS_PER_CORE_LIMIT`]
    /// (default 4096). Bounds per-core memory (each connection may hold
    /// `read_buffer_bytes + write_buffer_bytes`); past it new connections
    /// wait in the kernel backlog.
    pub max_connections_per_core: u32,
    /// `max_in_flight_per_connection`,
    /// 1..=[`MAX_IN_FLIGHT_PER_CONNECTION_LIMIT`] (default 1024, as the
    /// reference). Lower limits one edge connection's share of a core; a
    /// connection at the limit stops being read until answers go out.
    pub max_in_flight_per_connection: u32,
    /// `idle_timeout`, > 0 (default 30s, as the reference). Shorter frees
    /// idle connections sooner but makes edges reconnect (a TLS handshake
    /// each time).
    pub idle_timeout: Duration,
    /// `handshake_timeout`, > 0 (default 10s). Shorter sheds slow or
    /// half-open clients sooner; too short fails real clients on lossy
    /// links.
    pub handshake_timeout: Duration,
    /// `drain_timeout`, > 0 (default 10s): how long shutdown waits for
    /// in-flight requests. Longer delays restarts; shorter drops answers.
    pub drain_timeout: Duration,
    /// `tls12_only` (default false: TLS 1.3 and 1.2 offered). True gives
    /// the reference's TLS 1.2-only behaviour, for edges or middleboxes that
    /// expect it; it costs TLS 1.3's shorter handshake.
    pub tls12_only: bool,
    /// `read_buffer_bytes`, [`MIN_BUFFER_BYTES`]..=[`MAX_BUFFER_BYTES`]
    /// (default 65544: holds the largest message). Larger reads more
    /// pipelined requests per syscall at the cost of memory per connection.
    pub read_buffer_bytes: usize,
    /// `write_buffer_bytes`, [`MIN_BUFFER_BYTES`]..=[`MAX_BUFFER_BYTES`]
    /// (default 256 KiB): answers are batched up to this before a flush.
    /// Larger batches more (fewer syscalls) at the cost of memory.
    pub write_buffer_bytes: usize,
    /// `key_load_errors` (default fail, as the reference: a key that cannot
    /// be read or parsed stops start-up). `skip` starts with the keys that
    /// loaded, at the risk of silently serving fewer keys.
    pub key_load_errors: KeyLoadErrors,
    /// `pkcs11_dispatch` (default auto). `inline` runs PKCS#11 calls on the
    /// reactor (fastest for local tokens; a slow HSM stalls the core);
    /// `offload` runs them on worker threads (a hand-off per call).
    pub pkcs11_dispatch: Pkcs11Dispatch,
    /// `log_format` (default text). `json` writes one object per line with
    /// level, target, message and fields (core, peer...), for log shippers.
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            loglevel: LogLevel::Info,
            hostname: String::new(),
            zone_id: String::new(),
            origin_ca_api_key: String::new(),
            auth_cert: PathBuf::from("server.pem"),
            auth_key: PathBuf::from("server-key.pem"),
            auth_csr: PathBuf::from("server.csr"),
            cloudflare_ca_cert: PathBuf::from("keyless_cacert.pem"),
            private_key_stores: Vec::new(),
            port: DEFAULT_PORT,
            metrics_port: DEFAULT_METRICS_PORT,
            pid_file: None,
            current_time: None,
            tracing_enabled: false,
            tracing_address: String::new(),
            tracing_sample_rate: 0.0,
            sign_timeout: None,
            sign_retry_count: 0,
            listen_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            metrics_address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            cores: Cores::All,
            max_connections_per_core: DEFAULT_MAX_CONNECTIONS_PER_CORE,
            max_in_flight_per_connection: DEFAULT_MAX_IN_FLIGHT_PER_CONNECTION,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            tls12_only: false,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            write_buffer_bytes: DEFAULT_WRITE_BUFFER_BYTES,
            key_load_errors: KeyLoadErrors::Fail,
            pkcs11_dispatch: Pkcs11Dispatch::Auto,
            log_format: LogFormat::Text,
        }
    }
}

impl Config {
    /// The keyless listener's address.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_address, self.port)
    }

    /// The metrics listener's address; `None` when `metrics_port` is 0.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        (self.metrics_port != 0).then(|| SocketAddr::new(self.metrics_address, self.metrics_port))
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

    /// The effective configuration as gokeyless.yaml-compatible YAML (every
    /// key, reference keys first), for `-o/--output-config`. Parsing it back
    /// gives an equal `Config`. Note: secrets (`origin_ca_api_key`, PINs in
    /// PKCS#11 URIs) are printed as configured, as the operator asked for
    /// the effective configuration.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("# keycore effective configuration\n");
        let mut line = |key: &str, value: String| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(&value);
            out.push('\n');
        };
        let path = |p: &Path| yaml_quote(&p.to_string_lossy());
        line("loglevel", self.loglevel.number().to_string());
        line("hostname", yaml_quote(&self.hostname));
        line("zone_id", yaml_quote(&self.zone_id));
        line("origin_ca_api_key", yaml_quote(&self.origin_ca_api_key));
        line("auth_cert", path(&self.auth_cert));
        line("auth_key", path(&self.auth_key));
        line("auth_csr", path(&self.auth_csr));
        line("cloudflare_ca_cert", path(&self.cloudflare_ca_cert));
        let stores = if self.private_key_stores.is_empty() {
            "[]".to_owned()
        } else {
            let mut s = String::new();
            for store in &self.private_key_stores {
                let (k, v) = match store {
                    KeyStore::Dir(p) => ("dir", path(p)),
                    KeyStore::File(p) => ("file", path(p)),
                    KeyStore::Uri(u) => ("uri", yaml_quote(u)),
                };
                s.push_str(&format!("\n  - {k}: {v}"));
            }
            s
        };
        line("private_key_stores", stores);
        line("port", self.port.to_string());
        line("metrics_port", self.metrics_port.to_string());
        line(
            "pid_file",
            yaml_quote(
                &self
                    .pid_file
                    .as_deref()
                    .map_or(String::new(), |p| p.to_string_lossy().into_owned()),
            ),
        );
        line(
            "current_time",
            yaml_quote(&self.current_time.map_or(String::new(), format_rfc3339)),
        );
        line("tracing_enabled", self.tracing_enabled.to_string());
        line("tracing_address", yaml_quote(&self.tracing_address));
        line(
            "tracing_sample_rate",
            format!("{:?}", self.tracing_sample_rate),
        );
        line(
            "sign_timeout",
            yaml_quote(&self.sign_timeout.map_or(String::new(), format_duration)),
        );
        line("sign_retry_count", self.sign_retry_count.to_string());
        line(
            "listen_address",
            yaml_quote(&self.listen_address.to_string()),
        );
        line(
            "metrics_address",
            yaml_quote(&self.metrics_address.to_string()),
        );
        line(
            "cores",
            match &self.cores {
                Cores::All => "all".to_owned(),
                Cores::Count(n) => n.to_string(),
                Cores::List(ids) => {
                    let ids: Vec<String> = ids.iter().map(usize::to_string).collect();
                    format!("[{}]", ids.join(", "))
                }
            },
        );
        line(
            "max_connections_per_core",
            self.max_connections_per_core.to_string(),
        );
        line(
            "max_in_flight_per_connection",
            self.max_in_flight_per_connection.to_string(),
        );
        line(
            "idle_timeout",
            yaml_quote(&format_duration(self.idle_timeout)),
        );
        line(
            "handshake_timeout",
            yaml_quote(&format_duration(self.handshake_timeout)),
        );
        line(
            "drain_timeout",
            yaml_quote(&format_duration(self.drain_timeout)),
        );
        line("tls12_only", self.tls12_only.to_string());
        line("read_buffer_bytes", self.read_buffer_bytes.to_string());
        line("write_buffer_bytes", self.write_buffer_bytes.to_string());
        line(
            "key_load_errors",
            match self.key_load_errors {
                KeyLoadErrors::Fail => "fail",
                KeyLoadErrors::Skip => "skip",
            }
            .to_owned(),
        );
        line(
            "pkcs11_dispatch",
            match self.pkcs11_dispatch {
                Pkcs11Dispatch::Auto => "auto",
                Pkcs11Dispatch::Inline => "inline",
                Pkcs11Dispatch::Offload => "offload",
            }
            .to_owned(),
        );
        line(
            "log_format",
            match self.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .to_owned(),
        );
        out
    }
}

/// A YAML double-quoted string: safe for any text (colons, `#`, leading
/// spaces, PKCS#11 URIs with `%` and `?`).
fn yaml_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            // Characters YAML forbids unescaped even in quotes (C1 controls,
            // surrogates are impossible in a Rust str, BOM, non-characters).
            c if ('\u{80}'..='\u{9f}').contains(&c) || c == '\u{feff}' || c == '\u{fffe}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// Errors and where a value came from
// ---------------------------------------------------------------------------

/// Where a setting's value came from, for messages.
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
        /// Its name, e.g. `KEYLESS_PORT`.
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
    #[error("config file {}: {source}", path.display())]
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
    /// Registration keys are set but the certificate it would produce is
    /// missing; keycore cannot register.
    #[error(
        "{origin}: key \"{key}\" is set and {what} {} does not exist: the reference server would \
         now register a certificate with Cloudflare, but registration is not supported by keycore \
         yet; obtain the certificate and key (e.g. with gokeyless once) and point auth_cert and \
         auth_key at them",
        path.display()
    )]
    RegistrationUnsupported {
        /// Where the registration key was set.
        origin: Origin,
        /// Which registration key (`hostname`, `zone_id`, `origin_ca_api_key`).
        key: String,
        /// `auth_cert` or `auth_key`.
        what: &'static str,
        /// The missing file.
        path: PathBuf,
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
}

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

/// Load the configuration for `keycore serve`: the config file (see
/// [`ServeArgs::config_file`]), then `KEYLESS_*` variables from the process
/// environment, then `args`.
pub fn load(args: &ServeArgs) -> Result<Loaded, ConfigError> {
    let path: Option<PathBuf> = match &args.config_file {
        Some(p) => Some(p.clone()),
        None => DEFAULT_CONFIG_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file()),
    };
    let text = match &path {
        Some(p) => Some(read_config_file(p)?),
        None => None,
    };
    let env = |name: &str| std::env::var(name).ok();
    let file = match (&text, &path) {
        (Some(t), Some(p)) => Some((t.as_str(), p.as_path())),
        _ => None,
    };
    let mut loaded = resolve(file, &env, args, &|p: &Path| p.exists())?;
    loaded.warnings.extend(unknown_env_warnings(
        std::env::vars_os().filter_map(|(k, _)| k.into_string().ok()),
    ));
    Ok(loaded)
}

/// Parse a config file's text as if it were the only source besides `env`
/// (no flags). `origin` is the name used in messages.
pub fn from_yaml_str(
    text: &str,
    origin: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigError> {
    resolve(
        Some((text, origin)),
        env,
        &ServeArgs::default(),
        &|p: &Path| p.exists(),
    )
}

/// Layer all sources: `file` (text and the name used in messages), `env`
/// (variable lookup), `args` (flags). `exists` answers whether a file is
/// present (only used for the registration check; injectable for tests).
pub fn resolve(
    file: Option<(&str, &Path)>,
    env: &dyn Fn(&str) -> Option<String>,
    args: &ServeArgs,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let root = match file {
        Some((text, path)) => yaml::parse(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.line,
            column: e.column,
            message: e.message,
        })?,
        None => None,
    };
    let file_layer = match (file, &root) {
        (Some((_, path)), Some(root)) => Some(FileLayer::new(path, root, &mut warnings)?),
        _ => None,
    };
    let layers = Layers {
        file: file_layer,
        env,
        args,
    };
    let config = layers.build(&mut warnings)?;
    check_registration(&layers, &config, exists)?;
    Ok(Loaded {
        config,
        warnings,
        source: file.map(|(_, p)| p.to_owned()),
    })
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source: io::Error| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let f = fs::File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ConfigError::NotFound {
                path: path.to_owned(),
            }
        } else {
            read_err(e)
        }
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_CONFIG_FILE_BYTES} bytes; is this the right file?"),
        )));
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

/// Warnings for `KEYLESS_*` variables that match no key (a typo would
/// otherwise be silently ignored).
fn unknown_env_warnings(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut known: Vec<String> = KEYS.iter().map(|k| env_var_name(k)).collect();
    known.push(ENV_PRIVATE_KEY_DIRS.to_owned());
    known.push(ENV_PRIVATE_KEY_FILES.to_owned());
    let mut out: Vec<String> = names
        .filter(|n| n.starts_with("KEYLESS_") && !known.contains(n))
        .filter(|n| n != "KEYLESS_PRIVATE_KEY_STORES") // warned about in build
        .map(|n| format!("environment variable {n} matches no config key; ignored"))
        .collect();
    out.sort();
    out
}

/// The registration keys are kept but keycore cannot register: if any is
/// set and the certificate or key it would produce is missing, say so
/// instead of failing later with a bare "file not found".
fn check_registration(
    layers: &Layers<'_>,
    config: &Config,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<(), ConfigError> {
    let set = [
        ("hostname", &config.hostname),
        ("zone_id", &config.zone_id),
        ("origin_ca_api_key", &config.origin_ca_api_key),
    ]
    .into_iter()
    .find(|(_, v)| !v.is_empty());
    let Some((key, _)) = set else {
        return Ok(());
    };
    for (what, path) in [
        ("auth_cert", &config.auth_cert),
        ("auth_key", &config.auth_key),
    ] {
        if !exists(path) {
            let origin = match layers.find(key) {
                Some((_, origin)) => origin,
                None => Origin::Flag {
                    flag: flag_name(key),
                },
            };
            return Err(ConfigError::RegistrationUnsupported {
                origin,
                key: key.to_owned(),
                what,
                path: path.clone(),
            });
        }
    }
    Ok(())
}

/// The top-level keys of a config file, lower-cased (viper, which the
/// reference uses, matches keys case-insensitively).
struct FileLayer<'a> {
    path: &'a Path,
    keys: HashMap<String, &'a Node>,
}

impl<'a> FileLayer<'a> {
    fn new(
        path: &'a Path,
        root: &'a Node,
        warnings: &mut Vec<String>,
    ) -> Result<Self, ConfigError> {
        let Kind::Map(pairs) = &root.kind else {
            return Err(ConfigError::Syntax {
                path: path.to_owned(),
                line: root.line,
                column: 1,
                message: format!(
                    "expected a mapping of `key: value` lines at the top level, found {}",
                    root.kind.describe()
                ),
            });
        };
        let mut keys: HashMap<String, &'a Node> = HashMap::new();
        let mut key_lines: HashMap<String, usize> = HashMap::new();
        for (key, line, value) in yaml::map_entries(pairs) {
            let Some(key) = key else {
                warnings.push(format!(
                    "{}:{line}: a key that is not text; ignored",
                    path.display()
                ));
                continue;
            };
            let lower = key.to_ascii_lowercase();
            if !KEYS.contains(&lower.as_str()) {
                let hint = {
                    let underscored = lower.replace('-', "_");
                    if KEYS.contains(&underscored.as_str()) {
                        format!(" (did you mean \"{underscored}\"?)")
                    } else {
                        String::new()
                    }
                };
                warnings.push(format!(
                    "{}:{line}: unknown key \"{key}\" ignored{hint}",
                    path.display()
                ));
                continue;
            }
            if let Some(first) = key_lines.get(&lower) {
                return Err(ConfigError::Value {
                    origin: Origin::File {
                        path: path.to_owned(),
                        line,
                    },
                    key: lower,
                    message: format!("set twice (first on line {first})"),
                });
            }
            key_lines.insert(lower.clone(), line);
            keys.insert(lower, value);
        }
        Ok(FileLayer { path, keys })
    }
}

struct Layers<'a> {
    file: Option<FileLayer<'a>>,
    env: &'a dyn Fn(&str) -> Option<String>,
    args: &'a ServeArgs,
}

impl<'a> Layers<'a> {
    /// The highest-precedence value for `key`: flag, non-empty environment
    /// variable (an empty one counts as unset, as in viper), non-null file
    /// value. `None` means the default applies.
    fn find(&self, key: &str) -> Option<(Raw<'a>, Origin)> {
        if let Some(v) = self.args.flag_for(key) {
            return Some((
                Raw::Text(v.to_owned()),
                Origin::Flag {
                    flag: flag_name(key),
                },
            ));
        }
        let var = env_var_name(key);
        if let Some(v) = (self.env)(&var).filter(|v| !v.is_empty()) {
            return Some((Raw::Text(v), Origin::Env { var }));
        }
        let file = self.file.as_ref()?;
        let node = *file.keys.get(key)?;
        if node.kind == Kind::Null {
            return None;
        }
        Some((
            Raw::Node(node),
            Origin::File {
                path: file.path.to_owned(),
                line: node.line,
            },
        ))
    }

    /// A single-valued key parsed with `parse`; `default` when unset.
    fn scalar<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let Some((raw, origin)) = self.find(key) else {
            return Ok(default);
        };
        let text = match &raw {
            Raw::Text(t) => t.as_str(),
            Raw::Node(Node {
                kind: Kind::Scalar(t),
                ..
            }) => t.as_str(),
            Raw::Node(n) => {
                return Err(value_error(
                    origin,
                    key,
                    format!("expected a single value, found {}", n.kind.describe()),
                ))
            }
        };
        parse(text).map_err(|m| value_error(origin, key, m))
    }

    fn build(&self, warnings: &mut Vec<String>) -> Result<Config, ConfigError> {
        let d = Config::default();
        let path = |t: &str| parse::non_empty(t).map(PathBuf::from);
        let opt_path = |t: &str| Ok((!t.trim().is_empty()).then(|| PathBuf::from(t)));
        let text = |t: &str| Ok(t.to_owned());
        let buffer = |t: &str| {
            parse::int_in(t, MIN_BUFFER_BYTES as u64, MAX_BUFFER_BYTES as u64).map(|v| v as usize)
        };
        let config = Config {
            loglevel: self.scalar("loglevel", d.loglevel, |t| {
                parse::int_in(t, 0, 5).map(LogLevel::from_number)
            })?,
            hostname: self.scalar("hostname", d.hostname, text)?,
            zone_id: self.scalar("zone_id", d.zone_id, text)?,
            origin_ca_api_key: self.scalar("origin_ca_api_key", d.origin_ca_api_key, text)?,
            auth_cert: self.scalar("auth_cert", d.auth_cert, path)?,
            auth_key: self.scalar("auth_key", d.auth_key, path)?,
            auth_csr: self.scalar("auth_csr", d.auth_csr, path)?,
            cloudflare_ca_cert: self.scalar("cloudflare_ca_cert", d.cloudflare_ca_cert, path)?,
            private_key_stores: self.key_stores(warnings)?,
            port: self.scalar("port", d.port, |t| {
                parse::int_in(t, 0, 65535).map(|v| v as u16)
            })?,
            metrics_port: self.scalar("metrics_port", d.metrics_port, |t| {
                parse::int_in(t, 0, 65535).map(|v| v as u16)
            })?,
            pid_file: self.scalar("pid_file", d.pid_file, opt_path)?,
            current_time: self.scalar("current_time", d.current_time, |t| {
                if t.trim().is_empty() {
                    Ok(None)
                } else {
                    parse_rfc3339(t).map(Some)
                }
            })?,
            tracing_enabled: self.scalar("tracing_enabled", d.tracing_enabled, parse::boolean)?,
            tracing_address: self.scalar("tracing_address", d.tracing_address, text)?,
            tracing_sample_rate: self.scalar(
                "tracing_sample_rate",
                d.tracing_sample_rate,
                |t| parse::float_in(t, 0.0, 1.0),
            )?,
            sign_timeout: self.scalar("sign_timeout", d.sign_timeout, parse::optional_duration)?,
            sign_retry_count: self.scalar("sign_retry_count", d.sign_retry_count, |t| {
                parse::int_in(t, 0, u64::from(MAX_SIGN_RETRY_COUNT)).map(|v| v as u32)
            })?,
            listen_address: self.scalar("listen_address", d.listen_address, parse::ip)?,
            metrics_address: self.scalar("metrics_address", d.metrics_address, parse::ip)?,
            cores: self.cores(warnings)?,
            max_connections_per_core: self.scalar(
                "max_connections_per_core",
                d.max_connections_per_core,
                |t| {
                    parse::int_in(t, 1, u64::from(MAX_CONNECTIONS_PER_CORE_LIMIT)).map(|v| v as u32)
                },
            )?,
            max_in_flight_per_connection: self.scalar(
                "max_in_flight_per_connection",
                d.max_in_flight_per_connection,
                |t| {
                    parse::int_in(t, 1, u64::from(MAX_IN_FLIGHT_PER_CONNECTION_LIMIT))
                        .map(|v| v as u32)
                },
            )?,
            idle_timeout: self.scalar("idle_timeout", d.idle_timeout, parse::positive_duration)?,
            handshake_timeout: self.scalar(
                "handshake_timeout",
                d.handshake_timeout,
                parse::positive_duration,
            )?,
            drain_timeout: self.scalar(
                "drain_timeout",
                d.drain_timeout,
                parse::positive_duration,
            )?,
            tls12_only: self.scalar("tls12_only", d.tls12_only, parse::boolean)?,
            read_buffer_bytes: self.scalar("read_buffer_bytes", d.read_buffer_bytes, buffer)?,
            write_buffer_bytes: self.scalar("write_buffer_bytes", d.write_buffer_bytes, buffer)?,
            key_load_errors: self.scalar("key_load_errors", d.key_load_errors, |t| {
                parse::one_of(
                    t,
                    &[("fail", KeyLoadErrors::Fail), ("skip", KeyLoadErrors::Skip)],
                )
            })?,
            pkcs11_dispatch: self.scalar("pkcs11_dispatch", d.pkcs11_dispatch, |t| {
                parse::one_of(
                    t,
                    &[
                        ("auto", Pkcs11Dispatch::Auto),
                        ("inline", Pkcs11Dispatch::Inline),
                        ("offload", Pkcs11Dispatch::Offload),
                    ],
                )
            })?,
            log_format: self.scalar("log_format", d.log_format, |t| {
                parse::one_of(t, &[("text", LogFormat::Text), ("json", LogFormat::Json)])
            })?,
        };
        Ok(config)
    }

    /// `cores`: `all`, a count, a comma/range string, or a YAML list of ids.
    fn cores(&self, warnings: &mut Vec<String>) -> Result<Cores, ConfigError> {
        const KEY: &str = "cores";
        let Some((raw, origin)) = self.find(KEY) else {
            return Ok(Cores::All);
        };
        let cores = match &raw {
            Raw::Text(t) => parse_cores_text(t),
            Raw::Node(Node {
                kind: Kind::Scalar(t),
                ..
            }) => parse_cores_text(t),
            Raw::Node(Node {
                kind: Kind::Seq(items),
                ..
            }) => {
                let mut ids: Vec<&str> = Vec::with_capacity(items.len());
                for item in items {
                    match &item.kind {
                        Kind::Scalar(s) if !s.contains(',') => ids.push(s),
                        other => {
                            return Err(value_error(
                                origin,
                                KEY,
                                format!(
                                    "list items must be CPU ids or ranges, found {} on line {}",
                                    other.describe(),
                                    item.line
                                ),
                            ))
                        }
                    }
                }
                parse::cpu_list(&ids, MAX_CPU_ID).map(Cores::List)
            }
            Raw::Node(n) => Err(format!(
                "expected \"all\", a count or a list of CPU ids, found {}",
                n.kind.describe()
            )),
        }
        .map_err(|m| value_error(origin.clone(), KEY, m))?;

        // Check against the CPUs this process may run on, when known.
        let available: Vec<usize> = core_affinity::get_core_ids()
            .map(|ids| ids.into_iter().map(|c| c.id).collect())
            .unwrap_or_default();
        match &cores {
            Cores::List(ids) if !available.is_empty() => {
                if let Some(bad) = ids.iter().find(|id| !available.contains(id)) {
                    let avail: Vec<String> = available.iter().map(usize::to_string).collect();
                    return Err(value_error(
                        origin,
                        KEY,
                        format!(
                            "CPU {bad} is not available to this process (available: {})",
                            avail.join(",")
                        ),
                    ));
                }
            }
            Cores::Count(n) if !available.is_empty() && *n > available.len() => {
                warnings.push(format!(
                    "{origin}: key \"cores\": {n} reactors on {} available CPUs; some CPUs will \
                     run more than one",
                    available.len()
                ));
            }
            _ => {}
        }
        Ok(cores)
    }

    /// `private_key_stores`, or its replacement by the dirs/files flags
    /// (both flags together form the list: dirs first) or, failing those, by
    /// the `KEYLESS_PRIVATE_KEY_DIRS`/`_FILES` variables.
    fn key_stores(&self, warnings: &mut Vec<String>) -> Result<Vec<KeyStore>, ConfigError> {
        let from_lists = |dirs: Option<&str>, files: Option<&str>| -> Vec<KeyStore> {
            let mut out: Vec<KeyStore> = Vec::new();
            for d in dirs.map(parse::comma_list).unwrap_or_default() {
                out.push(KeyStore::Dir(PathBuf::from(d)));
            }
            for f in files.map(parse::comma_list).unwrap_or_default() {
                out.push(KeyStore::File(PathBuf::from(f)));
            }
            out
        };
        let (fd, ff) = (
            self.args.private_key_dirs.as_deref(),
            self.args.private_key_files.as_deref(),
        );
        if fd.is_some() || ff.is_some() {
            return Ok(from_lists(fd, ff));
        }
        let env = |name: &str| (self.env)(name).filter(|v| !v.is_empty());
        if env(&env_var_name("private_key_stores")).is_some() {
            warnings.push(format!(
                "environment variable {} is ignored (a list of entries cannot be written as one \
                 variable); use {ENV_PRIVATE_KEY_DIRS} and {ENV_PRIVATE_KEY_FILES}",
                env_var_name("private_key_stores")
            ));
        }
        let (ed, ef) = (env(ENV_PRIVATE_KEY_DIRS), env(ENV_PRIVATE_KEY_FILES));
        if ed.is_some() || ef.is_some() {
            return Ok(from_lists(ed.as_deref(), ef.as_deref()));
        }
        const KEY: &str = "private_key_stores";
        let Some(file) = &self.file else {
            return Ok(Vec::new());
        };
        let Some(node) = file.keys.get(KEY).copied() else {
            return Ok(Vec::new());
        };
        let at = |line: usize| Origin::File {
            path: file.path.to_owned(),
            line,
        };
        let items = match &node.kind {
            Kind::Null => return Ok(Vec::new()),
            Kind::Seq(items) => items,
            other => {
                return Err(value_error(
                    at(node.line),
                    KEY,
                    format!(
                        "expected a list of entries (`- dir: ...`, `- file: ...`, `- uri: ...`), \
                         found {}",
                        other.describe()
                    ),
                ))
            }
        };
        let mut stores = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let entry_key = format!("{KEY}[{i}]");
            let Kind::Map(pairs) = &item.kind else {
                return Err(value_error(
                    at(item.line),
                    &entry_key,
                    format!(
                        "expected an entry with one of dir:, file:, uri:, found {}",
                        item.kind.describe()
                    ),
                ));
            };
            let mut found: Vec<(&'static str, usize, &Node)> = Vec::new();
            for (k, line, v) in yaml::map_entries(pairs) {
                let lower = k.map(str::to_ascii_lowercase);
                match lower.as_deref() {
                    Some("dir") => found.push(("dir", line, v)),
                    Some("file") => found.push(("file", line, v)),
                    Some("uri") => found.push(("uri", line, v)),
                    _ => warnings.push(format!(
                        "{}: unknown key {} in {entry_key} ignored",
                        at(line),
                        k.map_or("(not text)".to_owned(), |k| format!("\"{k}\""))
                    )),
                }
            }
            let (kind, line, value) = match found.as_slice() {
                [one] => *one,
                [] => {
                    return Err(value_error(
                        at(item.line),
                        &entry_key,
                        "entry has none of dir:, file:, uri: (each entry needs exactly one)"
                            .to_owned(),
                    ))
                }
                [a, b, ..] => {
                    return Err(value_error(
                        at(b.1),
                        &entry_key,
                        format!(
                            "entry has both \"{}\" (line {}) and \"{}\" (line {}); each entry \
                             needs exactly one of dir:, file:, uri:",
                            a.0, a.1, b.0, b.1
                        ),
                    ))
                }
            };
            let text = match &value.kind {
                Kind::Scalar(s) if !s.trim().is_empty() => s.clone(),
                other => {
                    return Err(value_error(
                        at(line.max(value.line)),
                        &entry_key,
                        format!(
                            "\"{kind}\" needs a non-empty value, found {}",
                            other.describe()
                        ),
                    ))
                }
            };
            stores.push(match kind {
                "dir" => KeyStore::Dir(PathBuf::from(text)),
                "file" => KeyStore::File(PathBuf::from(text)),
                _ => KeyStore::Uri(text),
            });
        }
        Ok(stores)
    }
}

/// A raw value before parsing: text from a flag or variable, or a node of
/// the file's tree.
enum Raw<'a> {
    Text(String),
    Node(&'a Node),
}

fn value_error(origin: Origin, key: &str, message: String) -> ConfigError {
    ConfigError::Value {
        origin,
        key: key.to_owned(),
        message,
    }
}

/// `cores` written as text: `all`, a count, or ids/ranges with `,`/`-`.
fn parse_cores_text(t: &str) -> Result<Cores, String> {
    let t = t.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(Cores::All);
    }
    if t.contains(',') || t.contains('-') {
        let items: Vec<&str> = t.split(',').collect();
        return parse::cpu_list(&items, MAX_CPU_ID).map(Cores::List);
    }
    parse::int_in(t, 1, MAX_CPU_ID as u64 + 1)
        .map(|n| Cores::Count(n as usize))
        .map_err(|_| {
            format!(
                "expected \"all\", a count 1..={} or CPU ids like \"0,2\" or \"0-3\", got {t:?}",
                MAX_CPU_ID + 1
            )
        })
}

#[cfg(test)]
mod tests;
