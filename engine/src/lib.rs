//! # keycore-engine
//!
//! The key server: the per-core glommio reactors with their TLS listeners
//! and sans-IO connection core, request dispatch, the key-backend registry
//! (which backends exist and which store URI each claims), start-up and
//! reload, the metrics and health endpoint, and the demo PKI. Key identity,
//! the software signer and the backend seam are `keycore-keys`; the config
//! is `keycore-config`; the PKCS#11 and cloud KMS backends are their own
//! crates, reached only through the registry.
//!
//! What it is not: it does not parse the wire format (`keycore-protocol`,
//! no I/O) and it does not generate load (`keycore-loadgen`).
//!
//! Module layering (no circle; `scripts/check-layering.sh`, in CI): `launch`
//! → `reload` → `load` → `server`, `registry`, `security`, `metrics`; `trace`
//! and `record` render their own counters through `metrics::Render`.
//!
//! Data path (see `DESIGN.md`): accept on this core's SO_REUSEPORT listener →
//! rustls → read buffer → `keycore_protocol::frame::check` → `Message::decode`
//! → `KeyIndex` lookup (built at start-up or by a reload, read-only; see
//! `server::served`) → `keycore_keys::check_input` (once, before any
//! backend) → signer → response encoded into the connection's write buffer
//! → flushed with whatever else completed in the same turn.
//!
//! Public surface (modules; each module header says what it owns):
//! - [`launch`]: start everything a `Config` describes (`launch`, `Running`,
//!   `check_nofile_limit`, `LaunchError`);
//! - [`load`]: one load of what the cores serve, for start-up and reload
//!   alike (`build`, `Built`, `load_keys`, `load_keys_reusing`,
//!   `LoadedKeys`, `cert_expiry`, `LoadError`);
//! - [`server`]: reactors and their handle (`start`, `start_served`,
//!   `ServerSettings`, `ServerHandle`, `ServerControl`, `ServerError`,
//!   `conn_limits`, `available_cpus`), `server::tls` (`TlsError`),
//!   `server::port` (`PortError`) and `server::conn_state`, the sans-IO
//!   connection core;
//! - [`registry`]: the backends (`BACKENDS`, `claim`, `open_all`,
//!   `open_all_reusing`, `Opened`, `OpenedStore`, `OpenError`,
//!   `Registration`, `StoreRecord`);
//! - [`reload`]: SIGHUP / `keycore reload` (`Reloader`, `ReloadReport`,
//!   `ReloadError`, `record_success`); [`swap`]: the `Swap` cell it uses;
//! - [`metrics`]: per-core counters and the scrape (`Registry`, `CoreStats`,
//!   `Counter`, `Histograms`, `Heartbeat`, `Loaded`, `StaticGauge`,
//!   `ReloadStats`, bucket helpers); [`endpoint`]: the HTTP listener
//!   (`MetricsServer`, `probe`); [`health`]: `/healthz` and `/readyz`;
//!   [`refusals`]: refusal reasons and their rate-limited log;
//! - [`check`]: `keycore serve --check`; [`ops`]: pid file, signals,
//!   `RLIMIT_NOFILE`, sd_notify; [`pki`]: the demo PKI;
//! - [`config`]: `keycore-config`, re-exported.
//!
//! Errors: every fallible public call returns an enum (`LaunchError`, `LoadError`,
//! `ServerError`, `TlsError`, `PortError`, `ReloadError`, `PkiError`,
//! `health::Unready`, `trace::TraceConfigError`), naming the setting and its
//! file or address, with the cause as `#[source]`; where one is kept as text
//! (`serve --check`, the reload log line) it is rendered with
//! `keycore_keys::error_chain`. No anyhow (`scripts/check-error-types.sh`).

pub mod audit;
pub mod check;
/// The configuration (its own crate, keycore-config; re-exported so the
/// server's types and its config read as one API).
pub use keycore_config as config;
pub mod endpoint;
pub mod enroll;
pub mod health;
pub mod http1;
pub mod launch;
pub mod load;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod record;
pub mod refusals;
pub mod registry;
pub mod reload;
pub mod security;
pub mod server;
pub mod swap;
pub mod trace;
