//! The throwaway PKI the tests share: one [`keycore_engine::pki::generate`]
//! per test process (its RSA-4096 key is the slow part), read-only after,
//! with the SKIs of its keys and client TLS settings built from it.
//!
//! Owns: the shared instance and the client-side helpers. Must not: write
//! into the shared PKI's files (tests that need to change a certificate or
//! key copy it into their own directory first).

use keycore_engine::pki::DemoPki;
use keycore_keys::KeyKind;
use keycore_loadgen::tls::{ClientTls, ClientTlsPaths, TlsOptions};
use keycore_protocol::Ski;
use std::path::Path;
use std::sync::OnceLock;

/// The shared PKI: its files and the SKI of each key in `pki.keys_dir`.
#[derive(Debug)]
pub struct TestPki {
    /// The generated files (CA, server, clients, key directory, ...).
    pub pki: DemoPki,
    /// Every key in `pki.keys_dir`: its kind and SKI, in load order.
    pub keys: Vec<(KeyKind, Ski)>,
    _dir: tempfile::TempDir,
}

/// The PKI shared by every test in this process, generated on first use
/// (into a temporary directory kept for the process's life).
pub fn shared() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory for the PKI");
        let pki = keycore_engine::pki::generate(dir.path()).expect("generate the test PKI");
        let keys = keycore_keys::software::load_dir(&pki.keys_dir)
            .into_iter()
            .map(|r| {
                let e = r.expect("a demo key loads");
                (e.kind, e.ski)
            })
            .collect();
        TestPki {
            pki,
            keys,
            _dir: dir,
        }
    })
}

impl TestPki {
    /// The SKI of the shared PKI's key of `kind`; panics if it has none.
    pub fn ski(&self, kind: KeyKind) -> Ski {
        self.keys
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .unwrap_or_else(|| panic!("the test PKI has no {kind:?} key"))
    }

    /// The key file of `kind` in `pki.keys_dir`; panics if there is none.
    pub fn key_file(&self, kind: KeyKind) -> &Path {
        self.pki
            .key_files
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, p)| p.as_path())
            .unwrap_or_else(|| panic!("the test PKI has no {kind:?} key file"))
    }

    /// Client TLS trusting this CA for "localhost", presenting the demo
    /// client certificate.
    pub fn client_tls(&self) -> ClientTls {
        self.client_tls_as(&self.pki.client_cert, &self.pki.client_key)
    }

    /// Client TLS trusting this CA for "localhost", presenting `cert`/`key`.
    pub fn client_tls_as(&self, cert: &Path, key: &Path) -> ClientTls {
        client_tls(&self.pki.ca_cert, cert, key, "localhost")
    }
}

/// Client TLS (both TLS versions) trusting `ca` for `server_name`,
/// presenting `cert`/`key`; panics naming the files if they do not load.
pub fn client_tls(ca: &Path, cert: &Path, key: &Path, server_name: &str) -> ClientTls {
    ClientTls::from_paths(
        &ClientTlsPaths {
            ca: ca.to_path_buf(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        &TlsOptions {
            tls12_only: false,
            server_name: Some(server_name.into()),
        },
    )
    .unwrap_or_else(|e| {
        panic!(
            "client TLS from {} / {} / {}: {e}",
            ca.display(),
            cert.display(),
            key.display()
        )
    })
}
