//! # keycore-testsupport
//!
//! Dev-only fixtures shared by the test suites of several crates, so each
//! lives once. Only a `[dev-dependencies]` entry may name this crate.
//!
//! Public surface: [`SOFTHSM_MODULE`], [`softhsm_conf`], [`run_ok`],
//! [`hsmsim_module`], [`softhsm`] (tokens and keys made with the real
//! tools); with the `server` feature, [`pki`] (the shared
//! throwaway PKI and client TLS), [`server`] (a running `keycore serve`:
//! [`server::Serve`] builds it, [`server::Server`] is it) and [`inproc`]
//! (the engine started in the test process: [`inproc::TestServer`]).

#[cfg(feature = "server")]
pub mod inproc;
#[cfg(feature = "server")]
pub mod pki;
#[cfg(feature = "server")]
pub mod server;
pub mod softhsm;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The SoftHSM2 PKCS#11 module as Debian installs it (`softhsm2` package).
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 configuration of the test's own: writes `root/softhsm2.conf`
/// whose token directory is a fresh `root/tokens`, and returns the file's
/// path. The caller points SoftHSM2 at it (`SOFTHSM2_CONF`, in the process
/// environment before the first `C_Initialize`, or per child command).
pub fn softhsm_conf(root: &Path) -> PathBuf {
    let tokens = root.join("tokens");
    std::fs::create_dir_all(&tokens).expect("create the token directory");
    let conf = root.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write softhsm2.conf");
    conf
}

/// Run a set-up command (`softhsm2-util`, `pkcs11-tool`, `openssl`) and
/// return its standard output; panics with the command and everything it
/// printed when it cannot start or exits non-zero.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
