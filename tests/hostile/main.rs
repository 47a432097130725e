//! Hostile peers and careless operators (issue 12), against the real
//! `keycore serve` process: real TLS, real sockets, loopback only.
//!
//! One test per fixed item, each written to fail on the code before the fix
//! (c01084d) and pass after. Timings are limits ("slot freed within
//! idle_timeout + 2 s"), never benchmarks. The PKI (with its slow RSA-4096
//! key) is generated once per process and shared read-only.
//!
//! `record_replay` (issue 17) lives here for this suite's `keycore serve`
//! process fixture: a recording replayed against a second server.

mod admission;
mod closing;
mod drain;
mod fairness;
mod leak;
mod logs;
mod operator;
mod readiness;
mod record_replay;
mod reload;
mod reload_pkcs11;
mod support;
