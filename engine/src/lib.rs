//! # keycore-engine
//!
//! The key server itself: configuration, key backends (software keys,
//! PKCS#11), the per-core glommio reactors with their TLS listeners and
//! connections, and metrics.
//!
//! What it is not: it does not parse the wire format (that is
//! `keycore-protocol`, which has no I/O) and it does not generate load
//! (`keycore-loadgen`). It is one crate because the reactors, the key index
//! and the backends share one start-up path and one set of per-core types;
//! splitting them would only move `pub` boundaries around.
//!
//! Data path (see `DESIGN.md`): accept on this core's SO_REUSEPORT listener →
//! rustls → read buffer → `keycore_protocol::frame::check` → `Message::decode`
//! → `KeyIndex` lookup (built at start-up or by a reload, read-only; see
//! `server::served`) → signer →
//! response encoded into the connection's write buffer → flushed with
//! whatever else completed in the same turn.

pub mod audit;
pub mod check;
/// The configuration (its own crate, keycore-config; re-exported so the
/// server's types and its config read as one API).
pub use keycore_config as config;
pub mod endpoint;
pub mod health;
pub mod launch;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod refusals;
pub mod registry;
pub mod reload;
pub mod security;
pub mod server;
pub mod swap;
