//! The integration suite's shared helpers: the in-process [`TestServer`]
//! and the `keycore serve` child (both from keycore-testsupport, on its
//! shared PKI), requests, and signature checks with the openssl CLI.

use keycore_loadgen::client::BlockingClient;
use keycore_protocol::{Message, Op, Ski};

// The in-process server lives once, in keycore-testsupport.
pub use keycore_testsupport::inproc::{Opts, TestServer};

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

/// A request for `op` on `ski` with `payload`.
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
