//! A `keycore serve` child process on loopback and a minimal blocking TLS
//! client that does exactly what a test tells it (write without reading,
//! read without writing), which a well-behaved client library won't.

use keycore_keys::KeyKind;
use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{Message, Op, Ski};
pub use keycore_testsupport::pki::TestPki as Pki;
pub use keycore_testsupport::server::{Serve, Server};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The shared throwaway PKI and the SKIs of its keys.
pub fn pki() -> &'static Pki {
    keycore_testsupport::pki::shared()
}

pub fn ski(kind: KeyKind) -> Ski {
    pki().ski(kind)
}

/// A `keycore serve` (the suite's binary, or `KEYCORE_HOSTILE_BIN` to run
/// the suite against another build, e.g. an older release to check that
/// each test fails before its fix) logging at warn, ready once it answers a
/// keyless ping and its metrics listener accepts.
pub fn serve<'a>() -> Serve<'a> {
    let bin = std::env::var_os("KEYCORE_HOSTILE_BIN")
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_keycore").into());
    // A config of the test's own (`.config`) is on the shared PKI too.
    Serve::new(bin)
        .env("KEYCORE_LOG", "warn")
        .ready_probe(|addr| Client::connect(addr)?.ping(b"up"))
}

/// A running server with the standard config plus `extra_yaml`.
pub fn start(extra_yaml: &str) -> Server {
    serve().yaml(extra_yaml).start()
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let p = &pki().pki;
    client_config_with(&p.client_cert, &p.client_key)
}

/// A client configuration trusting the server, presenting `cert`/`key`.
pub fn client_config_with(cert: &Path, key: &Path) -> Arc<rustls::ClientConfig> {
    pki().client_tls_as(cert, key).config
}

/// A blocking mutual-TLS keyless client.
pub struct Client {
    pub tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    buf: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Self::over(tcp)
    }

    /// Connect presenting `cert`/`key` instead of the demo client's (the
    /// security suite includes this file).
    #[allow(dead_code)]
    pub fn connect_as(addr: SocketAddr, cert: &Path, key: &Path) -> std::io::Result<Client> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        Self::over_with(tcp, client_config_with(cert, key))
    }

    /// Finish a TLS handshake over an already connected socket.
    pub fn over(tcp: TcpStream) -> std::io::Result<Client> {
        Self::over_with(tcp, client_config())
    }

    fn over_with(tcp: TcpStream, config: Arc<rustls::ClientConfig>) -> std::io::Result<Client> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        let conn =
            rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap())
                .map_err(std::io::Error::other)?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock)?;
        }
        Ok(Client {
            tls,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, msgs: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(msgs)?;
        self.tls.flush()
    }

    /// Read one response: (id, opcode, payload). `Ok(None)` on a clean EOF.
    pub fn recv(&mut self) -> std::io::Result<Option<(u32, Op, Vec<u8>)>> {
        loop {
            if let Ok(FrameStatus::Complete { len, .. }) =
                frame::check(&self.buf, keycore_protocol::MAX_BODY_LEN)
            {
                let m = Message::decode(&self.buf[..len])
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let r = (
                    m.id,
                    m.opcode.unwrap_or(Op(0)),
                    m.payload.unwrap_or(&[]).to_vec(),
                );
                self.buf.drain(..len);
                return Ok(Some(r));
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.tls.read(&mut chunk)?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn ping(&mut self, payload: &[u8]) -> std::io::Result<()> {
        self.send(&request(0x5eed, Op::PING, None, payload))?;
        match self.recv()? {
            Some((0x5eed, Op::PONG, p)) if p == payload => Ok(()),
            other => Err(std::io::Error::other(format!("bad pong: {other:?}"))),
        }
    }
}

/// One encoded request.
pub fn request(id: u32, op: Op, ski: Option<&Ski>, payload: &[u8]) -> Vec<u8> {
    let m = Message {
        id,
        opcode: Some(op),
        ski,
        payload: Some(payload),
        ..Default::default()
    };
    let mut v = Vec::new();
    m.encode(&mut v).unwrap();
    v
}

/// A SHA-256-sized digest to sign.
pub const DIGEST: [u8; 32] = [7u8; 32];
