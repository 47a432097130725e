//! A `keycore serve` child process on loopback and a minimal blocking TLS
//! client that does exactly what a test tells it (write without reading,
//! read without writing), which a well-behaved client library won't.

use keycore_engine::pki::DemoPki;
use keycore_keys::KeyKind;
use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{Message, Op, Ski};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The shared throwaway PKI and the SKIs of its keys.
pub struct Pki {
    pub pki: DemoPki,
    pub keys: Vec<(KeyKind, Ski)>,
    _dir: tempfile::TempDir,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pki = keycore_engine::pki::generate(dir.path()).expect("PKI");
        let keys = keycore_keys::software::load_dir(&pki.keys_dir)
            .into_iter()
            .map(|r| {
                let e = r.expect("key");
                (e.kind, e.ski)
            })
            .collect();
        Pki {
            pki,
            keys,
            _dir: dir,
        }
    })
}

pub fn ski(kind: KeyKind) -> Ski {
    pki()
        .keys
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, s)| *s)
        .unwrap_or_else(|| panic!("no {kind:?} key"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `keycore serve` with `cores: 1` and extra YAML lines.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    /// The config file the server was started with (tests rewrite it before
    /// a reload).
    pub config: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(extra_yaml: &str) -> Server {
        Self::start_with(extra_yaml, "", &[])
    }

    /// With extra `private_key_stores` entries (YAML list lines) and
    /// environment variables for the child.
    pub fn start_with(
        extra_yaml: &str,
        extra_stores: &str,
        env: &[(&str, &std::path::Path)],
    ) -> Server {
        let s = Self::spawn(free_port(), extra_yaml, extra_stores, env, false);
        s.wait_up();
        s
    }

    /// Like [`Server::start`], with the child's stderr (its log) kept in a
    /// file for [`Server::log`].
    pub fn start_logged(extra_yaml: &str, extra_stores: &str) -> Server {
        let s = Self::spawn(free_port(), extra_yaml, extra_stores, &[], true);
        s.wait_up();
        s
    }

    /// Start `keycore serve` on `port` without waiting for it to come up;
    /// with `log`, stderr goes to a file read by [`Server::log`].
    pub fn spawn(
        port: u16,
        extra_yaml: &str,
        extra_stores: &str,
        env: &[(&str, &std::path::Path)],
        log: bool,
    ) -> Server {
        Self::spawn_with(port, extra_yaml, extra_stores, env, log, &mut |_| {})
    }

    /// [`Server::spawn`], with `tweak` applied to the command before it runs
    /// (e.g. a resource limit for the child).
    pub fn spawn_with(
        port: u16,
        extra_yaml: &str,
        extra_stores: &str,
        env: &[(&str, &std::path::Path)],
        log: bool,
        tweak: &mut dyn FnMut(&mut Command),
    ) -> Server {
        let p = &pki().pki;
        let yaml = |port: u16, mport: u16| {
            format!(
            "loglevel: 1\nport: {port}\nmetrics_port: {mport}\nmetrics_address: 127.0.0.1\nauth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nlisten_address: 127.0.0.1\ncores: 1\n{extra_yaml}private_key_stores:\n  - dir: {}\n{extra_stores}",
            p.server_cert.display(),
            p.server_key.display(),
            p.ca_cert.display(),
            p.keys_dir.display()
        )
        };
        Self::spawn_config_with(port, yaml, env, log, tweak)
    }

    /// A server whose whole config file the test writes: `yaml(port,
    /// metrics_port)` gives its text. Started on `port`, not waited for.
    /// `KEYCORE_LOG` in `env` replaces the default (warn).
    pub fn spawn_config(
        port: u16,
        yaml: impl FnOnce(u16, u16) -> String,
        env: &[(&str, &std::path::Path)],
        log: bool,
    ) -> Server {
        Self::spawn_config_with(port, yaml, env, log, &mut |_| {})
    }

    /// [`Server::spawn_config`], with `tweak` applied to the command before
    /// it runs (e.g. a resource limit for the child).
    pub fn spawn_config_with(
        port: u16,
        yaml: impl FnOnce(u16, u16) -> String,
        env: &[(&str, &std::path::Path)],
        log: bool,
        tweak: &mut dyn FnMut(&mut Command),
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let mport = free_port();
        let cfg = dir.path().join("gokeyless.yaml");
        std::fs::write(&cfg, yaml(port, mport)).unwrap();
        // KEYCORE_HOSTILE_BIN runs the suite against another build (e.g. an
        // older release, to check that each test fails before its fix).
        let bin = std::env::var_os("KEYCORE_HOSTILE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_keycore").into());
        let mut cmd = Command::new(bin);
        cmd.env("KEYCORE_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let stderr = if log {
            Stdio::from(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        } else {
            Stdio::inherit()
        };
        tweak(&mut cmd);
        let child = cmd
            .args(["serve", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Server {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics: format!("127.0.0.1:{mport}").parse().unwrap(),
            config: cfg,
            _dir: dir,
        }
    }

    /// Wait (at most 20 s) until the server answers a ping and its metrics
    /// listener accepts (it starts after the reactors: a scrape right after
    /// the first ping was refused now and then).
    pub fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::connect(self.addr) {
                Ok(mut c) => {
                    c.ping(b"up").expect("first ping");
                    break;
                }
                Err(e) if Instant::now() > deadline => panic!("server never came up: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        while let Err(e) = TcpStream::connect(self.metrics) {
            assert!(
                Instant::now() < deadline,
                "metrics listener never came up: {e}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The config file the child was started with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self._dir.path().join("gokeyless.yaml")
    }

    /// What the child wrote to stderr so far (servers started with a log).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait for the process to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < limit {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// One bounded HTTP/1.0 GET on the metrics listener (5 s to connect and
    /// to read): the status code and the body.
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&self.metrics, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        let status = text
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status line: {:.80}", text)))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    /// One per-core series summed, from `/metrics`.
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_where(name, "")
    }

    /// One series summed over the lines whose labels contain `label`
    /// (e.g. `reason="bad_cert"`), from `/metrics`.
    pub fn metric_where(&self, name: &str, label: &str) -> u64 {
        self.try_metric_where(name, label).expect("scrape /metrics")
    }

    /// [`Server::metric_where`], or why the scrape failed (no complete
    /// answer: e.g. the server is out of descriptors).
    pub fn try_metric_where(&self, name: &str, label: &str) -> std::io::Result<u64> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            return Err(std::io::Error::other(format!(
                "scrape answered: {status} {:.80}",
                body
            )));
        }
        Ok(body
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client_config() -> Arc<rustls::ClientConfig> {
    let p = &pki().pki;
    client_config_with(&p.client_cert, &p.client_key)
}

/// A client configuration trusting the server, presenting `cert`/`key`.
pub fn client_config_with(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Arc<rustls::ClientConfig> {
    let p = &pki().pki;
    keycore_loadgen::tls::ClientTls::from_paths(
        &keycore_loadgen::tls::ClientTlsPaths {
            ca: p.ca_cert.clone(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        },
        &keycore_loadgen::tls::TlsOptions {
            tls12_only: false,
            server_name: Some("localhost".into()),
        },
    )
    .unwrap()
    .config
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
    pub fn connect_as(
        addr: SocketAddr,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> std::io::Result<Client> {
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
