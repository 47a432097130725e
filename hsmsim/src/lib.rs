//! keycore-hsmsim: a PKCS#11 module that sits in front of a real one (SoftHSM2 by default) and
//! behaves like a network HSM: every call pays a network round trip, crypto operations queue for
//! a partition's crypto cores and ops/s budget and take a configured service time, and faults
//! (errors, hangs, dead sessions, lost logins, a removed token, idle disconnects) can be switched
//! on and off while it runs by editing its config file.
//!
//! It is a `cdylib` loaded by applications (keycore, pkcs11-tool, the load generator) through
//! `C_GetFunctionList`; the `rlib` exposes the config types so tools can validate a file or list
//! the built-in profiles. It is not a PKCS#11 implementation: every answer comes from the real
//! module or is a simulated failure. It lives in its own crate because it is a shared library
//! with its own global state, which must never be linked into the server.
//!
//! Layout: `config` (file format, validation), `profiles` (published product figures, from keycore-hsmprofiles),
//! `behaviour` (vendor behaviour modes: presets, switches, vendor constants), `func` (facts about
//! each PKCS#11 function), `sim` (the simulated device), `ffi` (all `unsafe`: the exported entry
//! point, the function list, `dlopen`, template and handle rewriting).

mod ffi;
mod names;
mod sim;

pub mod behaviour;
pub mod config;
pub mod func;
pub mod profiles;

pub use config::{
    Config, ConfigError, CONFIG_ENV, DEFAULT_MODULE, MODULE_ENV, MODULE_PLACEHOLDER, PROFILE_ENV,
};
pub use ffi::C_GetFunctionList;
