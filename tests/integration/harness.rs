//! Start a real server on loopback with a fresh PKI and keys of every kind.

use keycore_engine::pki::{self, DemoPki};
use keycore_engine::server::{self, tls, Limits, ServerHandle, ServerSettings};
use keycore_keys::{software, KeyIndex, KeyKind};
use keycore_loadgen::client::BlockingClient;
use keycore_loadgen::tls::{ClientTls, ClientTlsPaths, TlsOptions};
use keycore_protocol::{Message, Op, Ski};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

/// A loaded key as the tests see it.
pub struct TestKey {
    pub kind: KeyKind,
    pub ski: Ski,
    pub spki_der: Vec<u8>,
}

pub struct Opts {
    pub cores: usize,
    pub limits: Limits,
    pub tls12_only: bool,
    /// Serve with an RSA-2048 server certificate (signed by the same CA)
    /// instead of the demo's ECDSA one, for the ECDHE-RSA suites.
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

/// An RSA-2048 server certificate for localhost signed by the demo CA,
/// made with the openssl CLI. Returns (cert, key).
fn rsa_server_cert(pki: &DemoPki) -> (std::path::PathBuf, std::path::PathBuf) {
    let d = &pki.dir;
    let key = d.join("server-rsa.key.pem");
    let csr = d.join("server-rsa.csr");
    let cert = d.join("server-rsa.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .status()
        .expect("openssl req")
        .success()
        && std::process::Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-copy_extensions", "copy"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&pki.ca_cert)
            .arg("-CAkey")
            .arg(&pki.ca_key)
            .arg("-out")
            .arg(&cert)
            .status()
            .expect("openssl x509")
            .success();
    assert!(ok, "openssl could not make the RSA server certificate");
    (cert, key)
}

pub struct TestServer {
    pub pki: DemoPki,
    pub keys: Vec<TestKey>,
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> TestServer {
        Self::start_with(Opts::default())
    }

    pub fn start_with(opts: Opts) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let pki = pki::generate(dir.path()).expect("generate PKI");
        let mut index = KeyIndex::default();
        let mut keys = Vec::new();
        for r in software::load_dir(&pki.keys_dir) {
            let e = r.expect("load key");
            keys.push(TestKey {
                kind: e.kind,
                ski: e.ski,
                spki_der: e.spki_der.clone(),
            });
            index.insert(e).expect("unique SKI");
        }
        let (cert, key) = if opts.rsa_server_cert {
            rsa_server_cert(&pki)
        } else {
            (pki.server_cert.clone(), pki.server_key.clone())
        };
        let tls = tls::server_config(&tls::TlsSettings {
            cert: &cert,
            key: &key,
            client_ca: &pki.ca_cert,
            tls12_only: opts.tls12_only,
            current_time: None,
        })
        .expect("server TLS config");
        let handle = server::start(
            ServerSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                // Unpinned: several test servers share this small machine.
                cpus: vec![usize::MAX; opts.cores],
                limits: opts.limits,
            },
            tls,
            Arc::new(index),
            Default::default(),
            Default::default(),
        )
        .expect("start server");
        TestServer {
            addr: handle.addr,
            pki,
            keys,
            handle: Some(handle),
            _dir: dir,
        }
    }

    pub fn key(&self, kind: KeyKind) -> &TestKey {
        self.keys
            .iter()
            .find(|k| k.kind == kind)
            .unwrap_or_else(|| panic!("no {kind:?} key"))
    }

    pub fn client_tls(&self, tls12_only: bool) -> ClientTls {
        self.client_tls_with(&self.pki.client_cert, &self.pki.client_key, tls12_only)
    }

    pub fn client_tls_with(&self, cert: &Path, key: &Path, tls12_only: bool) -> ClientTls {
        ClientTls::from_paths(
            &ClientTlsPaths {
                ca: self.pki.ca_cert.clone(),
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            &TlsOptions {
                tls12_only,
                server_name: Some("localhost".into()),
            },
        )
        .expect("client TLS")
    }

    pub fn client(&self) -> BlockingClient {
        BlockingClient::connect(self.addr, &self.client_tls(false)).expect("connect")
    }

    pub fn registry(&self) -> &keycore_engine::metrics::Registry {
        &self.handle.as_ref().unwrap().registry
    }

    /// Drain and join; returns how long it took.
    pub fn stop(&mut self) -> std::time::Duration {
        let t = std::time::Instant::now();
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

/// A request for `op` on `ski` with `payload`.
/// A `keycore serve` child built from this package's binary (see
/// [`keycore_testsupport::server::Serve`] for the options).
pub fn serve<'a>() -> keycore_testsupport::server::Serve<'a> {
    keycore_testsupport::server::Serve::new(env!("CARGO_BIN_EXE_keycore"))
}

/// A blocking keyless client of a server on the shared PKI, presenting the
/// demo client certificate.
pub fn client(srv: &keycore_testsupport::server::Server) -> BlockingClient {
    BlockingClient::connect(srv.addr, &keycore_testsupport::pki::shared().client_tls())
        .unwrap_or_else(|e| panic!("connect to {}: {e}\n{}", srv.addr, srv.log()))
}

pub fn req<'a>(op: Op, ski: Option<&'a Ski>, payload: &'a [u8]) -> Message<'a> {
    Message {
        opcode: Some(op),
        ski,
        payload: Some(payload),
        ..Message::default()
    }
}

/// Verify a signature over a prehashed `digest` with the openssl CLI.
/// `md` is the openssl digest name ("sha256", ...), or `None` for raw
/// PKCS#1 v1.5 over the bytes (MD5SHA1).
pub fn openssl_verify(
    spki_der: &[u8],
    digest: &[u8],
    sig: &[u8],
    md: Option<&str>,
    pss: bool,
) -> bool {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("pub.der"), spki_der).unwrap();
    std::fs::write(d.path().join("in"), digest).unwrap();
    std::fs::write(d.path().join("sig"), sig).unwrap();
    let mut cmd = std::process::Command::new("openssl");
    cmd.current_dir(d.path()).args([
        "pkeyutl", "-verify", "-pubin", "-keyform", "DER", "-inkey", "pub.der", "-in", "in",
        "-sigfile", "sig",
    ]);
    if let Some(md) = md {
        cmd.args(["-pkeyopt", &format!("digest:{md}")]);
    }
    if pss {
        cmd.args([
            "-pkeyopt",
            "rsa_padding_mode:pss",
            "-pkeyopt",
            "rsa_pss_saltlen:digest",
        ]);
    }
    let out = cmd.output().expect("run openssl");
    out.status.success()
}
