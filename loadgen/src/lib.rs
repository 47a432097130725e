//! # keycore-loadgen
//!
//! A keyless client library and an edge-traffic load generator.
//!
//! The client ([`client`]) is what the edge does to reach a key server:
//! mutual TLS, many requests pipelined over a few long-lived connections,
//! request IDs, timeouts, reconnects. The generator drives it thread-per-core
//! with an open- or closed-loop traffic model and reports latency the way
//! capacity planning needs it (measured from each request's scheduled time, so
//! a stalled server shows in the tail).
//!
//! What it is not: it has no server code and does not parse the wire format
//! itself (both come from `keycore-engine` and `keycore-protocol`). It is a
//! separate crate so tests, the edge and the CLI can use the client without
//! the server.

pub mod check;
pub mod client;
pub mod keys;
pub mod profile;
pub mod report;
pub mod runner;
pub mod stats;
mod sys;
#[cfg(test)]
mod testsrv;
pub mod tls;

pub use client::{BlockingClient, ClientError, OwnedResponse, Pool, PoolConfig, PoolCounters};
pub use tls::{ClientTls, ClientTlsPaths, TlsOptions};
