//! The error of the generator's entry points ([`crate::run`],
//! [`crate::capacity`], [`crate::compare`], the floor and the CLI flags).
//!
//! Owns: [`LoadgenError`], which wraps the parts' own errors unchanged
//! (client TLS, keys, profile, runner, HdrHistogram log, replay,
//! handshakes) and adds what the entry points themselves refuse. Must not:
//! pre-format a part's error into text (the binary prints the whole chain).

use crate::handshake::HandshakeError;
use crate::keys::KeyLoadError;
use crate::profile::ProfileError;
use crate::replay::ReplayError;
use crate::report::HdrLogError;
use crate::runner::RunError;
use crate::tls::TlsConfigError;
use crate::MAX_COMPARE_SERVERS;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Why a load test (or a flag set describing one) could not run.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// The client TLS files.
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
    /// The public keys (`--keys`).
    #[error(transparent)]
    Keys(#[from] KeyLoadError),
    /// The traffic model (profile file or flags).
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The generator could not start.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The HdrHistogram log could not be created.
    #[error(transparent)]
    HdrLog(#[from] HdrLogError),
    /// The HdrHistogram log could not be written during the run.
    #[error("writing HdrHistogram log {}", path.display())]
    HdrLogWrite {
        /// The log.
        path: PathBuf,
        /// The first write error.
        #[source]
        source: std::io::Error,
    },
    /// The recordings of a replay.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// `--handshakes` mode.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// A capacity search whose step factor would not raise the rate.
    #[error("capacity step factor must be above 1, got {0}")]
    CapacityStepFactor(f64),
    /// A capacity search with a start rate or SLO that is not positive.
    #[error("capacity start rate and SLO must be positive")]
    CapacityNotPositive {
        /// The start rate, req/s.
        start_rate: f64,
        /// The p99 SLO, ms.
        slo_p99_ms: f64,
    },
    /// A comparison with too few or too many servers.
    #[error("compare needs 2 to {MAX_COMPARE_SERVERS} servers, got {0}")]
    CompareServers(usize),
    /// One run of a comparison failed.
    #[error("run against {server}")]
    RunAgainst {
        /// The server of that run.
        server: SocketAddr,
        /// Why it failed.
        #[source]
        source: Box<LoadgenError>,
    },
    /// A `--server` address that does not resolve.
    #[error("server address {addr:?}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// The resolver's error.
        #[source]
        source: std::io::Error,
    },
    /// A `--server` address that resolves to no address.
    #[error("server address {0:?} resolves to nothing")]
    NoAddress(String),
    /// A flag the mode needs is missing.
    #[error("{0} is required")]
    MissingFlag(&'static str),
    /// Replay options without `--replay`.
    #[error("--scale, --replay-map and --replay-skip-unsupported go with --replay")]
    ReplayOptionsWithoutReplay,
    /// `--replay` with several servers, `--capacity` or `--compare-report`.
    #[error("--replay takes one --server and no --capacity/--compare-report")]
    ReplayNotAlone,
    /// `--capacity` with several servers.
    #[error("--capacity takes one --server")]
    CapacityOneServer,
    /// `--compare-report` reached the library's CLI entry point.
    #[error("--compare-report is run by the keycore binary (keycore_tuning::compare::run_cli)")]
    CompareReportElsewhere,
    /// The floor's in-process responder did not start.
    #[error("the floor responder could not start (throwaway PKI or 127.0.0.1 listener)")]
    FloorResponder,
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
