//! A tiny keyless server for this crate's unit tests and for the
//! generator's latency floor ([`crate::floor`], pings only): std threads,
//! real rustls with a mandatory client certificate, real aws-lc-rs
//! signatures. It exists so the client and the generator can be tested end
//! to end without `keycore-engine`; the integration tests under `tests/` use
//! the real server. It is not a key server: it panics on set-up failure
//! (the floor turns that into an error) and serves one thread per
//! connection.
//!
//! Knobs: `delay_ms` holds every batch of responses (a slow server),
//! `stall_once_ms` pauses once (a stalled server),
//! `close_after` drops a connection after that many requests (reconnects).
//! Each batch read in one go is answered in reverse order, so the client's
//! ID matching is exercised.

use crate::tls::ClientTlsPaths;
use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{self, KeyPair};
use keycore_protocol::{
    encode_error, encode_response, frame, ErrorCode, FrameStatus, Message, Op, Ski, MAX_BODY_LEN,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub enum TestKey {
    Ec(signature::EcdsaKeyPair),
    Rsa(signature::RsaKeyPair),
    Ed(signature::Ed25519KeyPair),
}

pub struct Knobs {
    pub delay_ms: AtomicU64,
    /// One pause of this long before the next batch (then reset to 0).
    pub stall_once_ms: AtomicU64,
    pub close_after: AtomicU64,
    pub requests: AtomicU64,
    pub connections: AtomicU64,
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub tls: ClientTlsPaths,
    /// Public key files (one per key), for `load_public_keys`.
    pub key_dir: PathBuf,
    // Read by the unit tests only.
    #[cfg_attr(not(test), allow(dead_code))]
    pub knobs: Arc<Knobs>,
    _dir: tempfile::TempDir,
}

fn pem_key(der: &[u8]) -> String {
    let k = rcgen::KeyPair::try_from(der).unwrap();
    k.serialize_pem()
}

impl TestServer {
    // Used by this crate's unit tests (the floor pins its responder).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn start() -> TestServer {
        TestServer::start_on(None)
    }

    /// With every connection's thread pinned to `cpu` (the floor puts the
    /// responder where the measured server runs, not beside the generator).
    pub fn start_on(cpu: Option<usize>) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        // PKI: CA, server cert for 127.0.0.1, client cert.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let srv_key = rcgen::KeyPair::generate().unwrap();
        let srv_cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
            .unwrap()
            .signed_by(&srv_key, &issuer)
            .unwrap();
        let cli_key = rcgen::KeyPair::generate().unwrap();
        let cli_cert = rcgen::CertificateParams::new(vec!["edge".into()])
            .unwrap()
            .signed_by(&cli_key, &issuer)
            .unwrap();
        std::fs::write(p("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(p("client.pem"), cli_cert.pem()).unwrap();
        std::fs::write(p("client.key"), cli_key.serialize_pem()).unwrap();

        // Keys: one of each kind, private halves stay here, public PEMs on disk.
        let key_dir = dir.path().join("keys");
        std::fs::create_dir(&key_dir).unwrap();
        let mut keys: HashMap<Ski, TestKey> = HashMap::new();
        let ec =
            signature::EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        let ec_pk8 = ec.to_pkcs8v1().unwrap();
        std::fs::write(key_dir.join("ec.key"), pem_key(ec_pk8.as_ref())).unwrap();
        let ski = keycore_keys::ski_from_spki(ec.public_key().as_der().unwrap().as_ref()).unwrap();
        keys.insert(ski, TestKey::Ec(ec));
        let rsa = signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pk8: aws_lc_rs::encoding::Pkcs8V1Der = rsa.as_der().unwrap();
        std::fs::write(key_dir.join("rsa.key"), pem_key(rsa_pk8.as_ref())).unwrap();
        let ski = keycore_keys::ski_from_spki(rsa.public_key().as_der().unwrap().as_ref()).unwrap();
        keys.insert(ski, TestKey::Rsa(rsa));
        let ed = signature::Ed25519KeyPair::generate().unwrap();
        let ed_pk8 = ed.to_pkcs8().unwrap();
        std::fs::write(key_dir.join("ed.key"), pem_key(ed_pk8.as_ref())).unwrap();
        let ski = keycore_keys::ski_from_spki(ed.public_key().as_der().unwrap().as_ref()).unwrap();
        keys.insert(ski, TestKey::Ed(ed));

        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_cert.der().to_vec()))
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .build()
            .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![CertificateDer::from(srv_cert.der().to_vec())],
                    PrivateKeyDer::from_pem_slice(srv_key.serialize_pem().as_bytes()).unwrap(),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let knobs = Arc::new(Knobs {
            delay_ms: AtomicU64::new(0),
            stall_once_ms: AtomicU64::new(0),
            close_after: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let keys = Arc::new(keys);
        let k2 = knobs.clone();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                // As keycore's server does: without it Nagle holds an answer
                // written while the previous one is unacknowledged until the
                // client's delayed ACK (up to 40 ms), which the floor showed
                // as its max (issue 13).
                let _ = s.set_nodelay(true);
                let (config, keys, knobs) = (config.clone(), keys.clone(), k2.clone());
                knobs.connections.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    if let Some(id) = cpu {
                        // Best effort: unpinned if the CPU is not ours.
                        let _ = core_affinity::set_for_current(core_affinity::CoreId { id });
                    }
                    serve(s, config, &keys, &knobs)
                });
            }
        });
        TestServer {
            addr,
            tls: ClientTlsPaths {
                ca: p("ca.pem"),
                cert: p("client.pem"),
                key: p("client.key"),
            },
            key_dir,
            knobs,
            _dir: dir,
        }
    }
}

fn answer(m: &Message<'_>, keys: &HashMap<Ski, TestKey>, out: &mut Vec<u8>) {
    let op = m.opcode.unwrap_or(Op(0));
    if op == Op::PING {
        let _ = encode_response(out, m.id, Op::PONG, m.payload.unwrap_or(&[]));
        return;
    }
    let Some(key) = m.ski.and_then(|s| keys.get(s)) else {
        encode_error(out, m.id, ErrorCode::KEY_NOT_FOUND);
        return;
    };
    let payload = m.payload.unwrap_or(&[]);
    let sig: Option<Vec<u8>> = match (key, op) {
        (TestKey::Ec(k), Op::ECDSA_SIGN_SHA256) => {
            digest::Digest::import_less_safe(payload, &digest::SHA256)
                .ok()
                .and_then(|d| k.sign_digest(&d).ok())
                .map(|s| s.as_ref().to_vec())
        }
        (TestKey::Rsa(k), Op::RSA_SIGN_SHA256 | Op::RSA_PSS_SIGN_SHA256) => {
            let alg: &'static dyn signature::RsaEncoding = if op == Op::RSA_SIGN_SHA256 {
                &signature::RSA_PKCS1_SHA256
            } else {
                &signature::RSA_PSS_SHA256
            };
            let mut sig = vec![0u8; k.public_modulus_len()];
            digest::Digest::import_less_safe(payload, &digest::SHA256)
                .ok()
                .and_then(|d| k.sign_digest(alg, &d, &mut sig).ok())
                .map(|_| sig)
        }
        (TestKey::Ed(k), Op::ED25519_SIGN) => Some(k.sign(payload).as_ref().to_vec()),
        _ => None,
    };
    match sig {
        Some(s) => {
            let _ = encode_response(out, m.id, Op::RESPONSE, &s);
        }
        None => encode_error(out, m.id, ErrorCode::CRYPTO),
    }
}

fn serve(
    sock: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    keys: &HashMap<Ski, TestKey>,
    knobs: &Knobs,
) {
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut served = 0u64;
    loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut batch = Vec::new();
        let mut pos = 0;
        while let Ok(FrameStatus::Complete { len, .. }) = frame::check(&buf[pos..], MAX_BODY_LEN) {
            let m = Message::decode(&buf[pos..pos + len]).unwrap();
            let mut out = Vec::new();
            answer(&m, keys, &mut out);
            batch.push(out);
            pos += len;
        }
        buf.drain(..pos);
        let delay =
            knobs.delay_ms.load(Ordering::Relaxed) + knobs.stall_once_ms.swap(0, Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        let mut out = Vec::new();
        for r in batch.iter().rev() {
            out.extend_from_slice(r);
        }
        knobs
            .requests
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        served += batch.len() as u64;
        if s.write_all(&out).and_then(|_| s.flush()).is_err() {
            return;
        }
        let close_after = knobs.close_after.load(Ordering::Relaxed);
        if close_after > 0 && served >= close_after {
            s.conn.send_close_notify();
            let _ = s.flush();
            return;
        }
    }
}
