//! A real `keycore serve` child process on loopback, for tests.
//!
//! [`Serve`] builds it: the config file (the standard one on the shared
//! PKI plus the suite's extra YAML and key stores, or the whole text from
//! the test), environment, extra arguments, and a readiness wait bounded by
//! a deadline. The child's stderr (its log) always goes to a file the
//! [`Server`] reads back ([`Server::log`]); every failure to come up panics
//! with that log. Dropping a [`Server`] kills and reaps the child.
//!
//! Owns: config writing, spawning, the readiness wait, log capture, the
//! metrics scrape and stopping. Must not: speak the keyless protocol beyond
//! what readiness needs (suites bring their own clients; a probe is passed
//! in with [`Serve::ready_probe`]).
//!
//! ```ignore
//! let srv = Serve::new(env!("CARGO_BIN_EXE_keycore"))
//!     .yaml("idle_timeout: 1s\n")
//!     .start();
//! let mut c = BlockingClient::connect(srv.addr, &pki::shared().client_tls()).unwrap();
//! ```

use crate::pki;
use keycore_engine::pki::DemoPki;
use keycore_loadgen::client::BlockingClient;
use keycore_protocol::{Message, Op};
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A loopback port free at the time of asking (another process may take it
/// before the server binds; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// The config text a test writes itself: given (keyless port, metrics
/// port), the whole gokeyless.yaml.
type ConfigFn<'a> = Box<dyn FnOnce(u16, u16) -> String + 'a>;
/// A readiness probe: `Ok` once the server at the address is ready.
type Probe = Box<dyn FnMut(SocketAddr) -> std::io::Result<()>>;
/// A last change to the child's command (e.g. a resource limit).
type Tweak<'a> = Box<dyn FnMut(&mut Command) + 'a>;

/// How a [`Server`] is started; see the module docs. Defaults: the standard
/// config on the shared PKI with `cores: 1`, a fresh free port, 30 s to come
/// up; ready when a keyless ping as the PKI's client is answered (with a
/// config of the test's own: when the keyless port accepts a TCP
/// connection, which the server counts as one failed handshake) and the
/// metrics port accepts.
#[must_use = "a Serve does nothing until .start() or .spawn()"]
pub struct Serve<'a> {
    bin: PathBuf,
    port: Option<u16>,
    extra_yaml: String,
    extra_stores: String,
    pki: Option<DemoPki>,
    config: Option<ConfigFn<'a>>,
    env: Vec<(OsString, OsString)>,
    args: Vec<OsString>,
    tweak: Option<Tweak<'a>>,
    probe: Option<Probe>,
    no_ping: bool,
    wait_metrics: bool,
    deadline: Duration,
}

impl std::fmt::Debug for Serve<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("bin", &self.bin)
            .field("port", &self.port)
            .field("extra_yaml", &self.extra_yaml)
            .field("extra_stores", &self.extra_stores)
            .field("env", &self.env)
            .field("args", &self.args)
            .finish_non_exhaustive()
    }
}

impl<'a> Serve<'a> {
    /// A server run from the `keycore` binary at `bin` (in the root
    /// package's tests: `env!("CARGO_BIN_EXE_keycore")`).
    pub fn new(bin: impl Into<PathBuf>) -> Serve<'a> {
        Serve {
            bin: bin.into(),
            port: None,
            extra_yaml: String::new(),
            extra_stores: String::new(),
            pki: None,
            config: None,
            env: Vec::new(),
            args: Vec::new(),
            tweak: None,
            probe: None,
            no_ping: false,
            wait_metrics: true,
            deadline: Duration::from_secs(30),
        }
    }

    /// Extra top-level YAML lines (each ending in a newline) for the
    /// standard config; they come before `private_key_stores`.
    pub fn yaml(mut self, lines: &str) -> Serve<'a> {
        self.extra_yaml.push_str(lines);
        self
    }

    /// Extra `private_key_stores` entries (YAML list lines such as
    /// `"  - uri: pkcs11:...\n"`) after the shared PKI's key directory.
    pub fn stores(mut self, entries: &str) -> Serve<'a> {
        self.extra_stores.push_str(entries);
        self
    }

    /// The standard config on `pki` instead of the shared PKI (a suite
    /// whose clients already trust another throwaway CA).
    pub fn pki(mut self, pki: &DemoPki) -> Serve<'a> {
        self.pki = Some(pki.clone());
        self
    }

    /// The whole config text instead of the standard one: `yaml(port,
    /// metrics_port)` gives it. With a config that has no metrics listener
    /// on `metrics_port`, also call [`Serve::no_metrics_wait`].
    pub fn config(mut self, yaml: impl FnOnce(u16, u16) -> String + 'a) -> Serve<'a> {
        self.config = Some(Box::new(yaml));
        self
    }

    /// The keyless port (default: a free one).
    pub fn port(mut self, port: u16) -> Serve<'a> {
        self.port = Some(port);
        self
    }

    /// One environment variable for the child.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Serve<'a> {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Extra arguments after `serve -c <config>`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Serve<'a> {
        self.args.push(arg.into());
        self
    }

    /// A change to the command just before it runs (e.g. a resource limit).
    pub fn tweak(mut self, f: impl FnMut(&mut Command) + 'a) -> Serve<'a> {
        self.tweak = Some(Box::new(f));
        self
    }

    /// The readiness check on the keyless port instead of the default
    /// (see [`Serve`]); retried until it returns `Ok` or the deadline.
    pub fn ready_probe(
        mut self,
        probe: impl FnMut(SocketAddr) -> std::io::Result<()> + 'static,
    ) -> Serve<'a> {
        self.probe = Some(Box::new(probe));
        self
    }

    /// Ready when the keyless port accepts a TCP connection, without the
    /// default ping (a test that counts every request, e.g. traced spans;
    /// the bare connection counts as one failed handshake instead).
    pub fn ready_on_connect(mut self) -> Serve<'a> {
        self.no_ping = true;
        self
    }

    /// Do not wait for the metrics listener (a config without one).
    pub fn no_metrics_wait(mut self) -> Serve<'a> {
        self.wait_metrics = false;
        self
    }

    /// How long [`Serve::start`] waits for readiness (default 30 s).
    pub fn deadline(mut self, limit: Duration) -> Serve<'a> {
        self.deadline = limit;
        self
    }

    /// Start the child and wait until it is ready (see [`Server::wait_up`]).
    pub fn start(self) -> Server {
        let mut srv = self.spawn();
        srv.wait_up();
        srv
    }

    /// Start the child without waiting (for a server expected to fail at
    /// start-up, or a test that acts before it is up, then calls
    /// [`Server::wait_up`]).
    pub fn spawn(mut self) -> Server {
        let dir = tempfile::tempdir().expect("temporary directory for the server");
        let port = self.port.unwrap_or_else(free_port);
        let mport = free_port();
        let yaml = match self.config.take() {
            Some(f) => f(port, mport),
            None => {
                let p = self.pki.take().unwrap_or_else(|| pki::shared().pki.clone());
                let yaml =
                    standard_config_on(&p, port, mport, &self.extra_yaml, &self.extra_stores);
                if self.probe.is_none() && !self.no_ping {
                    self.probe = Some(ping_probe(p));
                }
                yaml
            }
        };
        let config = dir.path().join("gokeyless.yaml");
        std::fs::write(&config, yaml).expect("write gokeyless.yaml");
        let log_path = dir.path().join("stderr.log");
        let log = std::fs::File::create(&log_path).expect("create stderr.log");
        let mut cmd = Command::new(&self.bin);
        cmd.args(["serve", "-c"])
            .arg(&config)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        if let Some(t) = self.tweak.as_mut() {
            t(&mut cmd);
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        Server {
            child,
            addr: ([127, 0, 0, 1], port).into(),
            metrics: ([127, 0, 0, 1], mport).into(),
            config,
            log_path,
            probe: self.probe,
            wait_metrics: self.wait_metrics,
            deadline: self.deadline,
            _dir: dir,
        }
    }
}

/// The default readiness probe of the standard config: one keyless ping
/// over TLS as `pki`'s client (it shows in the server's connection counts
/// as one served connection, never as a failed handshake).
fn ping_probe(pki: DemoPki) -> Probe {
    let tls = pki::client_tls(&pki.ca_cert, &pki.client_cert, &pki.client_key, "localhost");
    Box::new(move |addr| {
        let mut c = BlockingClient::connect(addr, &tls).map_err(std::io::Error::other)?;
        let ping = Message {
            id: 1,
            opcode: Some(Op::PING),
            payload: Some(b"up"),
            ..Default::default()
        };
        match c.call(&ping) {
            Ok(r) if r.opcode == Op::PONG => Ok(()),
            Ok(r) => Err(std::io::Error::other(format!(
                "ping answered {:?}",
                r.opcode
            ))),
            Err(e) => Err(std::io::Error::other(e)),
        }
    })
}

/// The standard config [`Serve`] writes: loopback listeners (keyless on
/// `port`, metrics on `mport`), one core, the shared PKI's server
/// certificate, CA and key directory, then `extra_yaml` (top-level lines)
/// and `extra_stores` (`private_key_stores` entries). Public for tests that
/// run other commands (`serve --check`) on the same file.
pub fn standard_config(port: u16, mport: u16, extra_yaml: &str, extra_stores: &str) -> String {
    standard_config_on(&pki::shared().pki, port, mport, extra_yaml, extra_stores)
}

fn standard_config_on(
    p: &DemoPki,
    port: u16,
    mport: u16,
    extra_yaml: &str,
    extra_stores: &str,
) -> String {
    format!(
        "port: {port}\nmetrics_port: {mport}\nmetrics_address: 127.0.0.1\n\
         auth_cert: {}\nauth_key: {}\ncloudflare_ca_cert: {}\nlisten_address: 127.0.0.1\n\
         cores: 1\n{extra_yaml}private_key_stores:\n  - dir: {}\n{extra_stores}",
        p.server_cert.display(),
        p.server_key.display(),
        p.ca_cert.display(),
        p.keys_dir.display()
    )
}

/// A running (or exited) `keycore serve` child; killed and reaped on drop.
pub struct Server {
    /// The child process (tests signal it, wait for it, read its pid).
    pub child: Child,
    /// The keyless listener.
    pub addr: SocketAddr,
    /// The metrics listener (the port given to the config; unused by a
    /// config of the test's own that does not name it).
    pub metrics: SocketAddr,
    /// The config file the child was started with (tests rewrite it before
    /// a reload).
    pub config: PathBuf,
    log_path: PathBuf,
    probe: Option<Probe>,
    wait_metrics: bool,
    deadline: Duration,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .field("metrics", &self.metrics)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Wait, within the [`Serve::deadline`], until the keyless port accepts
    /// (and the [`Serve::ready_probe`] passes), then until the metrics
    /// listener accepts (it starts after the reactors). Panics with the log
    /// if the child exits or the deadline passes first. [`Serve::start`]
    /// calls it; call it yourself after [`Serve::spawn`].
    pub fn wait_up(&mut self) {
        let deadline = self.deadline;
        let until = Instant::now() + deadline;
        let mut probe = self.probe.take();
        let mut targets = vec![self.addr];
        if self.wait_metrics {
            targets.push(self.metrics);
        }
        for (i, target) in targets.into_iter().enumerate() {
            loop {
                if let Some(st) = self.child.try_wait().expect("try_wait") {
                    panic!(
                        "keycore serve exited ({st}) before it was up:\n{}",
                        self.log()
                    );
                }
                // The probe makes its own connection: a bare TCP connect
                // on the keyless port would count as a failed handshake.
                let ok = match probe.as_mut() {
                    Some(p) if i == 0 => p(target),
                    _ => TcpStream::connect_timeout(&target, Duration::from_secs(2)).map(drop),
                };
                match ok {
                    Ok(()) => break,
                    Err(e) if Instant::now() > until => panic!(
                        "keycore serve not up on {target} within {deadline:?}: {e}\n{}",
                        self.log()
                    ),
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        self.probe = probe;
    }

    /// What the child wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The directory holding the config and the log (the test may put its
    /// own files there; it goes with the server).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Send `sig` (e.g. `libc::SIGHUP`) to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait for the child to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if t.elapsed() >= limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then wait at most `limit` for the exit; panics with the log
    /// if it does not exit or exits unsuccessfully. Returns the whole log.
    pub fn stop(&mut self, limit: Duration) -> String {
        self.signal(libc::SIGTERM);
        let status = self.wait_exit(limit).unwrap_or_else(|| {
            panic!(
                "keycore serve did not exit within {limit:?} of SIGTERM:\n{}",
                self.log()
            )
        });
        let log = self.log();
        assert!(status.success(), "keycore serve exited {status}:\n{log}");
        log
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
            .ok_or_else(|| std::io::Error::other(format!("no status line: {text:.80}")))?;
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_owned();
        Ok((status, body))
    }

    /// `/metrics` as text; panics if the scrape fails or is not 200.
    pub fn scrape(&self) -> String {
        match self.get("/metrics") {
            Ok((200, body)) => body,
            Ok((status, body)) => panic!("scrape answered {status}: {body:.200}"),
            Err(e) => panic!("scrape /metrics: {e}"),
        }
    }

    /// One series summed over every line (all cores, all labels).
    pub fn metric(&self, name: &str) -> u64 {
        self.metric_where(name, "")
    }

    /// One series summed over the lines whose labels contain `label` (e.g.
    /// `reason="bad_cert"`).
    pub fn metric_where(&self, name: &str, label: &str) -> u64 {
        self.try_metric_where(name, label).expect("scrape /metrics")
    }

    /// [`Server::metric_where`], or why the scrape failed (no complete
    /// answer: e.g. the server is out of descriptors).
    pub fn try_metric_where(&self, name: &str, label: &str) -> std::io::Result<u64> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            return Err(std::io::Error::other(format!(
                "scrape answered: {status} {body:.80}"
            )));
        }
        Ok(sum_series(&body, name, label))
    }
}

/// The values of series `name` (exactly that name, with or without labels)
/// on the lines containing `label`, summed, in a Prometheus text page.
pub fn sum_series(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
