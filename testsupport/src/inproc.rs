//! An in-process key server for tests: the engine's reactors
//! ([`keycore_engine::server::start`]) on 127.0.0.1:0, unpinned (several
//! test servers share a small machine), TLS from a throwaway PKI.
//!
//! [`start`] is the one call (any key index and stores: software keys, a
//! KMS store, ...); [`TestServer`] is the common case: the shared PKI's
//! software keys of every kind, drained and joined on drop.
//!
//! Owns: server TLS from a PKI, start-up and shutdown of in-process
//! servers. Must not: spawn processes (that is [`crate::server`]).

use crate::pki;
use keycore_engine::pki::DemoPki;
use keycore_engine::server::{self, tls, Limits, ServerHandle, ServerSettings, Stores};
use keycore_keys::{software, KeyIndex, KeyKind};
use keycore_loadgen::client::BlockingClient;
use keycore_loadgen::tls::ClientTls;
use keycore_protocol::Ski;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How an in-process server runs.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Reactors (unpinned).
    pub cores: usize,
    /// Connection limits.
    pub limits: Limits,
    /// Offer TLS 1.2 only.
    pub tls12_only: bool,
    /// Serve with an RSA-2048 server certificate signed by the same CA
    /// (made with the openssl CLI) instead of the PKI's ECDSA one, for the
    /// ECDHE-RSA suites. Only [`TestServer`] reads it.
    pub rsa_server_cert: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            cores: 1,
            limits: Limits::default(),
            tls12_only: false,
            rsa_server_cert: false,
        }
    }
}

/// Start the engine on 127.0.0.1:0 with `opts.cores` unpinned reactors,
/// presenting `cert`/`key` and trusting `pki`'s CA for clients, serving
/// `keys` and `stores`. Panics with the engine's error if it cannot start.
pub fn start(
    opts: &Opts,
    pki: &DemoPki,
    cert: &Path,
    key: &Path,
    keys: KeyIndex,
    stores: Stores,
) -> ServerHandle {
    let tls = tls::server_config(&tls::TlsSettings {
        cert,
        key,
        client_ca: &pki.ca_cert,
        tls12_only: opts.tls12_only,
        current_time: None,
    })
    .expect("server TLS config");
    server::start(
        ServerSettings {
            listen: "127.0.0.1:0".parse().expect("loopback address"),
            cpus: vec![usize::MAX; opts.cores],
            limits: opts.limits.clone(),
            tracer: None,
            recorder: None,
        },
        tls,
        Arc::new(keys),
        stores,
        Default::default(),
    )
    .expect("start the in-process server")
}

/// Every software key in `keys_dir`, indexed; panics on a key that does
/// not load or a duplicate SKI.
pub fn software_keys(keys_dir: &Path) -> (KeyIndex, Vec<TestKey>) {
    let mut index = KeyIndex::default();
    let mut keys = Vec::new();
    for r in software::load_dir(keys_dir) {
        let e = r.expect("load key");
        keys.push(TestKey {
            kind: e.kind,
            ski: e.ski,
            spki_der: e.spki_der.clone(),
        });
        index.insert(e).expect("unique SKI");
    }
    (index, keys)
}

/// A loaded key as the tests see it.
#[derive(Debug, Clone)]
pub struct TestKey {
    /// Its kind.
    pub kind: KeyKind,
    /// Its SKI.
    pub ski: Ski,
    /// Its public key, SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

/// An in-process server on the shared PKI with a software key of every
/// kind; drained and joined on drop.
#[derive(Debug)]
pub struct TestServer {
    /// The PKI (the shared one: read it, never write into its directory;
    /// use [`TestServer::dir`] for the test's own files).
    pub pki: DemoPki,
    /// The keys served.
    pub keys: Vec<TestKey>,
    /// The running engine (`None` once stopped).
    pub handle: Option<ServerHandle>,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl TestServer {
    /// With the default [`Opts`].
    pub fn start() -> TestServer {
        Self::start_with(Opts::default())
    }

    /// With `opts`.
    pub fn start_with(opts: Opts) -> TestServer {
        let dir = tempfile::tempdir().expect("temporary directory");
        let pki = pki::shared().pki.clone();
        let (index, keys) = software_keys(&pki.keys_dir);
        let (cert, key) = if opts.rsa_server_cert {
            rsa_server_cert(&pki, dir.path())
        } else {
            (pki.server_cert.clone(), pki.server_key.clone())
        };
        let handle = start(&opts, &pki, &cert, &key, index, Vec::new());
        TestServer {
            addr: handle.addr,
            pki,
            keys,
            handle: Some(handle),
            dir,
        }
    }

    /// A directory of the test's own, removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The served key of `kind`; panics if there is none.
    pub fn key(&self, kind: KeyKind) -> &TestKey {
        self.keys
            .iter()
            .find(|k| k.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} key"))
    }

    /// Client TLS as the PKI's client (`tls12_only`: offer TLS 1.2 only).
    pub fn client_tls(&self, tls12_only: bool) -> ClientTls {
        self.client_tls_with(&self.pki.client_cert, &self.pki.client_key, tls12_only)
    }

    /// Client TLS presenting `cert`/`key`.
    pub fn client_tls_with(&self, cert: &Path, key: &Path, tls12_only: bool) -> ClientTls {
        ClientTls::from_paths(
            &keycore_loadgen::tls::ClientTlsPaths {
                ca: self.pki.ca_cert.clone(),
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            &keycore_loadgen::tls::TlsOptions {
                tls12_only,
                server_name: Some("localhost".into()),
            },
        )
        .expect("client TLS")
    }

    /// A connected blocking client as the PKI's client.
    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(self.addr, &self.client_tls(false)).expect("connect")
    }

    /// The engine's metrics.
    pub fn registry(&self) -> &keycore_engine::metrics::Registry {
        &self.handle.as_ref().expect("server running").registry
    }

    /// Drain and join; returns how long it took.
    pub fn stop(&mut self) -> Duration {
        let t = Instant::now();
        if let Some(h) = self.handle.take() {
            h.shutdown();
            h.join().expect("join");
        }
        t.elapsed()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An RSA-2048 server certificate for localhost signed by `pki`'s CA, made
/// with the openssl CLI into `dir`. Returns (cert, key).
fn rsa_server_cert(pki: &DemoPki, dir: &Path) -> (PathBuf, PathBuf) {
    let key = dir.join("server-rsa.key.pem");
    let csr = dir.join("server-rsa.csr");
    let cert = dir.join("server-rsa.pem");
    crate::run_ok(
        std::process::Command::new("openssl")
            .args(["req", "-new", "-newkey", "rsa:2048", "-nodes"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr),
    );
    crate::run_ok(
        std::process::Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-copy_extensions", "copy"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&pki.ca_cert)
            .arg("-CAkey")
            .arg(&pki.ca_key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}
