//! # keycore-testsupport
//!
//! Dev-only fixtures shared by the test suites of several crates, so each
//! lives once. Only a `[dev-dependencies]` entry may name this crate.
//!
//! Public surface: [`SOFTHSM_MODULE`], [`hsmsim_module`].
//!
//! Not here yet (still per test file): SoftHSM token setup, the throwaway
//! PKI and a running server; they move here next.

use std::path::PathBuf;

/// The SoftHSM2 PKCS#11 module as Debian installs it (`softhsm2` package).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// The hsmsim cdylib cargo built for this test run: next to the running test
/// executable (`<target>/<profile>/deps/`), else its copy one level up. Found
/// from the executable's own path, so it follows `CARGO_TARGET_DIR` and the
/// profile instead of assuming `target/debug`. The test's crate must list
/// `keycore-hsmsim` as a dev-dependency so cargo builds the cdylib first.
///
/// Panics, naming both places, if neither has it.
pub fn hsmsim_module() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    let candidates = [
        deps.join("libkeycore_hsmsim.so"),
        deps.parent()
            .map(|p| p.join("libkeycore_hsmsim.so"))
            .unwrap_or_default(),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("libkeycore_hsmsim.so not found at {candidates:?}"))
        .clone()
}
