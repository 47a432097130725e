//! An HTTP CONNECT proxy stand-in (a corporate egress proxy), for testing
//! keycore's HTTPS_PROXY support: it reads `CONNECT host:port`, checks
//! `Proxy-Authorization` when told to, and relays bytes.
//!
//! Names: a test can give the proxy a few host names with the loopback
//! address that stands in for each (a hosts-file entry, in effect), so a
//! client configured with a cloud's real host name (for example the China
//! partition's `sts.cn-north-1.amazonaws.com.cn`) reaches a stand-in and
//! the test sees which name it asked for ([`ConnectProxy::targets`]).
//!
//! Must not: connect anywhere but loopback. A CONNECT to any other host (or
//! to a name not mapped to a loopback address) is answered 403, so a test
//! can never send traffic off the machine.

use crate::SimError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest CONNECT request head read.
const MAX_HEAD: usize = 8 * 1024;

/// Counters.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Tunnels opened.
    pub tunnels: AtomicU64,
    /// CONNECTs refused (auth, non-loopback target, malformed).
    pub refused: AtomicU64,
    /// Every CONNECT target asked for (`host:port`), in order; at most
    /// [`MAX_TARGETS`] are kept.
    pub targets: Mutex<Vec<String>>,
}

/// CONNECT targets remembered (tests look at the first few).
pub const MAX_TARGETS: usize = 1024;

/// A running proxy.
#[derive(Debug)]
pub struct ConnectProxy {
    /// `http://127.0.0.1:<port>` (with user info when auth is required).
    pub url: String,
    /// Counters.
    pub stats: Arc<ProxyStats>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ConnectProxy {
    fn drop(&mut self) {
        self.shutdown.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl ConnectProxy {
    /// Start on 127.0.0.1; `basic` = Some("user:password") requires it.
    pub fn start(basic: Option<&str>) -> Result<ConnectProxy, SimError> {
        ConnectProxy::start_with_names(basic, &[])
    }

    /// Like [`ConnectProxy::start`], and a CONNECT to `name:<any port>`
    /// for each `(name, addr)` goes to `addr`, which must be loopback.
    pub fn start_with_names(
        basic: Option<&str>,
        names: &[(&str, SocketAddr)],
    ) -> Result<ConnectProxy, SimError> {
        let mut map = HashMap::new();
        for (n, a) in names {
            if !a.ip().is_loopback() {
                return Err(SimError::ProxyName {
                    name: n.to_string(),
                    addr: *a,
                });
            }
            map.insert(n.to_ascii_lowercase(), *a);
        }
        let map = Arc::new(map);
        let io = |what| move |source| SimError::Io { what, source };
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("proxy bind"))?;
        l.set_nonblocking(true).map_err(io("proxy listener"))?;
        let addr = l.local_addr().map_err(io("proxy listener"))?;
        let want = basic.map(|b| {
            use base64::Engine as _;
            format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode(b)
            )
        });
        let stats = Arc::new(ProxyStats::default());
        let st = stats.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kmssim-proxy".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(l) = tokio::net::TcpListener::from_std(l) else {
                        return;
                    };
                    let accept = async {
                        loop {
                            let Ok((sock, _)) = l.accept().await else {
                                continue;
                            };
                            tokio::spawn(relay(sock, want.clone(), st.clone(), map.clone()));
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = rx => {}
                    }
                });
            })
            .map_err(io("proxy thread"))?;
        let url = match basic {
            Some(b) => format!("http://{b}@{addr}"),
            None => format!("http://{addr}"),
        };
        Ok(ConnectProxy {
            url,
            stats,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Tunnels opened so far.
    pub fn tunnels(&self) -> u64 {
        self.stats.tunnels.load(Ordering::Relaxed)
    }

    /// The CONNECT targets asked for so far (`host:port`).
    pub fn targets(&self) -> Vec<String> {
        self.stats
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn relay(
    mut sock: tokio::net::TcpStream,
    want: Option<String>,
    st: Arc<ProxyStats>,
    names: Arc<HashMap<String, SocketAddr>>,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match sock.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            return;
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let refuse = |code: &'static str| {
        st.refused.fetch_add(1, Ordering::Relaxed);
        code
    };
    let target = match first.split(' ').collect::<Vec<_>>().as_slice() {
        ["CONNECT", t, _] => t.to_string(),
        _ => {
            let _ = sock
                .write_all(refuse("HTTP/1.1 405 Method Not Allowed\r\n\r\n").as_bytes())
                .await;
            return;
        }
    };
    {
        let mut t = st.targets.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() < MAX_TARGETS {
            t.push(target.clone());
        }
    }
    if let Some(w) = &want {
        let got = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
            .map(|(_, v)| v.trim().to_string());
        // Scheme names are case-insensitive; the credentials are not.
        let ok = got.is_some_and(|g| {
            let (scheme, cred) = g.split_once(' ').unwrap_or(("", ""));
            let (ws, wc) = w.split_once(' ').unwrap_or(("", ""));
            scheme.eq_ignore_ascii_case(ws) && cred == wc
        });
        if !ok {
            let msg = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"kmssim\"\r\n\r\n";
            let _ = sock.write_all(refuse(msg).as_bytes()).await;
            return;
        }
    }
    let host = target.rsplit_once(':').map(|(h, _)| h).unwrap_or("");
    let upstream = match names.get(&host.to_ascii_lowercase()) {
        Some(a) => a.to_string(),
        None if matches!(host, "127.0.0.1" | "localhost" | "[::1]") => target.clone(),
        None => {
            let _ = sock
                .write_all(refuse("HTTP/1.1 403 Forbidden\r\n\r\n").as_bytes())
                .await;
            return;
        }
    };
    let Ok(mut up) = tokio::net::TcpStream::connect(&upstream).await else {
        let _ = sock
            .write_all(refuse("HTTP/1.1 502 Bad Gateway\r\n\r\n").as_bytes())
            .await;
        return;
    };
    if sock
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .is_err()
    {
        return;
    }
    st.tunnels.fetch_add(1, Ordering::Relaxed);
    let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name mapped off loopback is refused with the name and address,
    /// before anything binds.
    #[test]
    fn a_name_off_loopback_is_refused_by_name() {
        let addr: SocketAddr = "192.0.2.7:443".parse().unwrap();
        let e = ConnectProxy::start_with_names(None, &[("kms.example", addr)]).unwrap_err();
        assert!(
            matches!(&e, SimError::ProxyName { name, addr: a } if name == "kms.example" && *a == addr),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "kmssim: proxy name kms.example -> 192.0.2.7:443: only loopback addresses"
        );
    }
}
