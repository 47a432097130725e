//! The error of the sweeps and the comparison report (`keycore tune`,
//! `keycore loadgen --compare-report`); `keycore plan` has its own
//! [`crate::plan::PlanError`].
//!
//! Owns: [`TuneError`]: the load generator's error unchanged, and what the
//! sweeps themselves refuse or meet (flags, the launched `keycore serve`).
//! Must not: pre-format the load generator's error into text (the binary
//! prints the whole chain; a point's failure in a report is rendered with
//! `keycore_keys::error_chain`).

use keycore_loadgen::{ClientError, LoadgenError, TlsConfigError};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Why a sweep or comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum TuneError {
    /// The load generator (its flags, TLS files, keys, a run).
    #[error(transparent)]
    Load(#[from] LoadgenError),
    /// The client TLS files, read to probe a launched server.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// A client sweep without connection counts or concurrencies.
    #[error("a sweep needs at least one connection count and one concurrency")]
    SweepEmpty,
    /// More points than a sweep allows.
    #[error("{points} points is over the limit of {max}; sweep fewer values")]
    TooManyPoints {
        /// Points asked for.
        points: usize,
        /// The limit.
        max: usize,
    },
    /// A client sweep with an SLO or step duration that is not positive.
    #[error("SLO and step duration must be positive")]
    SweepBounds {
        /// The p99 SLO, ms.
        slo_p99_ms: f64,
        /// Measured seconds per point.
        step_duration_s: f64,
    },
    /// A server sweep without steps or with no start-up time.
    #[error("need at least one step per point and a positive start-up timeout")]
    ServerSweepBounds {
        /// Capacity steps per point.
        max_steps: usize,
        /// Longest wait for a launched server, s.
        startup_timeout_s: f64,
    },
    /// `--set` or `--confirm` without `--serve-config`.
    #[error("--set and --confirm need --serve-config (the server-side sweep)")]
    SetWithoutServeConfig,
    /// A `--set` value without `=`.
    #[error("--set {0:?}: want KEY=V1,V2,...")]
    SetEntry(String),
    /// A `--set` key that is not in the config table.
    #[error("--set {0:?}: not a config key (see `keycore serve --help`)")]
    SetUnknownKey(String),
    /// A `--set` key the sweep itself sets.
    #[error("--set {0:?}: the sweep owns where the server listens and what it serves")]
    SetOwnedKey(String),
    /// A `--set` key without values.
    #[error("--set {0}: no values")]
    SetNoValues(String),
    /// A switch swept with values other than true and false.
    #[error("--set {0}: true or false")]
    SetNotBoolean(String),
    /// This program's own path (the default `--keycore-bin`) is unknown.
    #[error("finding this program's path (give --keycore-bin)")]
    CurrentExe(#[source] std::io::Error),
    /// The `keycore` binary to launch does not exist.
    #[error("keycore binary {} not found", .0.display())]
    BinaryNotFound(PathBuf),
    /// The directory for the launched servers' logs.
    #[error("creating a directory for the servers' logs")]
    LogDir(#[source] std::io::Error),
    /// A launched server's log file.
    #[error("creating {}", path.display())]
    ServeLog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `keycore serve` could not be started.
    #[error("starting {}", bin.display())]
    Spawn {
        /// The binary.
        bin: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `keycore serve -o` failed; `stderr` is what it printed.
    #[error("keycore serve -o failed: {stderr}")]
    ShowConfig {
        /// Its standard error.
        stderr: String,
    },
    /// `keycore serve -o` did not print the swept key.
    #[error("keycore serve -o printed no {0:?} line")]
    ShowConfigMissing(String),
    /// A launched server exited before it served; `log_tail` is the last
    /// lines of its log.
    #[error("keycore serve exited ({status}) before serving: {log_tail}")]
    ServeExited {
        /// Its exit status.
        status: ExitStatus,
        /// Its last log lines, joined with " | ".
        log_tail: String,
    },
    /// A launched server did not accept a connection in time.
    #[error("keycore serve not accepting on {addr} after {timeout_s} s")]
    ServeNotReady {
        /// Where it should listen.
        addr: SocketAddr,
        /// The wait, s.
        timeout_s: f64,
        /// The last connection attempt's error.
        #[source]
        source: ClientError,
    },
    /// A comparison with no or too many backends.
    #[error("compare needs 1 to {max} backends, got {got}")]
    CompareBackends {
        /// Backends given.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// A flag the mode needs is missing.
    #[error("{0} is required")]
    MissingFlag(&'static str),
    /// A `--label` / `--backend-keys` entry not naming a `--server`.
    #[error("{flag} {entry:?}: want SERVER=VALUE with SERVER one of the --server values")]
    ServerEntry {
        /// The flag.
        flag: &'static str,
        /// The entry as given.
        entry: String,
    },
    /// A report file could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The report could not be written to stdout.
    #[error("writing the report")]
    Output(#[source] std::io::Error),
}
