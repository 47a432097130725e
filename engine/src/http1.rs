//! A small blocking HTTP/1.1 client for the control plane: one POST per
//! connection. Used by enrollment (JSON to the certificates API, over
//! https) and by the span exporter (OTLP/HTTP JSON batches, usually plain
//! http to a local collector).
//!
//! Owns: splitting a URL, sending one request, and reading the answer
//! within a byte limit and a deadline that covers everything (connect, TLS,
//! write, read): `Content-Length`, `chunked` and read-to-close bodies.
//! Must not: run on a reactor (it blocks its thread), follow redirects,
//! retry (callers decide), or put header values in errors or logs (they
//! carry credentials). Name resolution uses the system resolver, which has
//! its own timeout (resolv.conf), outside the deadline.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest response head (status line + headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// A URL split for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `https://` (else `http://`).
    pub https: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (443 / 80 when not written).
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Url {
    /// Split `http(s)://host[:port][/path]`.
    pub fn parse(s: &str) -> Result<Url, HttpError> {
        let bad = || HttpError::Url(s.to_owned());
        let (https, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => default_port,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (authority.to_owned(), default_port),
            }
        };
        if host.is_empty() || path.contains(char::is_whitespace) {
            return Err(bad());
        }
        Ok(Url {
            https,
            host,
            port,
            path: path.to_owned(),
        })
    }

    /// The `Host` header value.
    fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.https { 443 } else { 80 } {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

/// An answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Reason phrase as sent.
    pub reason: String,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an http(s) URL this client can use.
    #[error("not a usable http(s) URL: {0:?}")]
    Url(String),
    /// Name resolution or every connect attempt failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// host:port.
        addr: String,
        /// The last error.
        source: io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, ...).
    #[error("TLS with {addr}")]
    Tls {
        /// host:port.
        addr: String,
        /// What rustls said.
        source: io::Error,
    },
    /// Reading or writing failed.
    #[error("{0}")]
    Io(io::Error),
    /// The deadline passed.
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    /// The answer is larger than allowed.
    #[error("answer larger than {0} bytes; refused")]
    TooLarge(usize),
    /// The answer is not HTTP/1.x.
    #[error("malformed HTTP answer: {0}")]
    Malformed(&'static str),
}

/// The socket, plain or under TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Conn {
    fn tcp(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Tls(s) => &s.sock,
        }
    }
}

impl Read for Conn {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(b),
            Conn::Tls(s) => s.read(b),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(b),
            Conn::Tls(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Time left before `deadline`, or the timeout error.
fn left(deadline: Instant, timeout: Duration) -> Result<Duration, HttpError> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        Err(HttpError::Timeout(timeout))
    } else {
        Ok(d)
    }
}

fn io_err(e: io::Error, timeout: Duration) -> HttpError {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => HttpError::Timeout(timeout),
        _ => HttpError::Io(e),
    }
}

/// POST `body` to `url` with `headers` (name, value; `Host`,
/// `Content-Length` and `Connection: close` are added). `tls` is required
/// for an https URL. Everything must be over within `timeout`; a body past
/// `max_body` bytes is refused.
pub fn post(
    url: &Url,
    headers: &[(&str, &str)],
    body: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
    max_body: usize,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let addr = format!("{}:{}", url.host, url.port);
    let addrs: Vec<_> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|source| HttpError::Connect {
            addr: addr.clone(),
            source,
        })?
        .collect();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "name resolved to no address");
    let mut tcp = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, left(deadline, timeout)?) {
            Ok(s) => {
                tcp = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let tcp = tcp.ok_or(HttpError::Connect {
        addr: addr.clone(),
        source: last,
    })?;
    let _ = tcp.set_nodelay(true);
    let mut conn = if url.https {
        let cfg =
            tls.ok_or_else(|| HttpError::Url(format!("https://{addr} without TLS settings")))?;
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|_| HttpError::Url(url.host.clone()))?;
        let c = rustls::ClientConnection::new(cfg, name).map_err(|e| HttpError::Tls {
            addr: addr.clone(),
            source: io::Error::other(e),
        })?;
        Conn::Tls(Box::new(rustls::StreamOwned::new(c, tcp)))
    } else {
        Conn::Plain(tcp)
    };
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: keycore/{}\r\n",
        url.path,
        url.host_header(),
        body.len(),
        env!("CARGO_PKG_VERSION")
    );
    for (k, v) in headers {
        head.push_str(k);
        head.push_str(": ");
        head.push_str(v);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut req = zeroize::Zeroizing::new(head.into_bytes());
    req.extend_from_slice(body);
    let tls_err = |e: io::Error, addr: &str| {
        if e.get_ref().is_some_and(|i| i.is::<rustls::Error>()) {
            HttpError::Tls {
                addr: addr.to_owned(),
                source: e,
            }
        } else {
            io_err(e, timeout)
        }
    };
    let mut off = 0;
    while off < req.len() {
        conn.tcp()
            .set_write_timeout(Some(left(deadline, timeout)?))
            .map_err(HttpError::Io)?;
        conn.tcp()
            .set_read_timeout(Some(left(deadline, timeout)?))
            .map_err(HttpError::Io)?;
        match conn.write(&req[off..]) {
            Ok(0) => return Err(HttpError::Io(io::ErrorKind::WriteZero.into())),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(tls_err(e, &addr)),
        }
    }
    conn.flush().map_err(|e| tls_err(e, &addr))?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Some(r) = parse_response(&buf, max_body, false)? {
            return Ok(r);
        }
        conn.tcp()
            .set_read_timeout(Some(left(deadline, timeout)?))
            .map_err(HttpError::Io)?;
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A peer closing without close_notify after a whole answer.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(tls_err(e, &addr)),
        }
    }
    parse_response(&buf, max_body, true)?.ok_or(HttpError::Malformed(
        "connection closed before the end of the answer",
    ))
}

/// Parse what has arrived: `Ok(None)` while incomplete. `eof`: the peer
/// closed (a body without length ends there).
pub fn parse_response(
    buf: &[u8],
    max_body: usize,
    eof: bool,
) -> Result<Option<Response>, HttpError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HttpError::TooLarge(MAX_HEAD_BYTES));
        }
        return Ok(None);
    };
    if head_end > MAX_HEAD_BYTES {
        return Err(HttpError::TooLarge(MAX_HEAD_BYTES));
    }
    let head =
        std::str::from_utf8(&buf[..head_end]).map_err(|_| HttpError::Malformed("head not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or(HttpError::Malformed("bad status code"))?;
    let reason = parts.next().unwrap_or("").to_owned();
    let (mut length, mut chunked) = (None, false);
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(HttpError::Malformed("header line without a colon"));
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| HttpError::Malformed("bad Content-Length"))?;
            if n > max_body {
                return Err(HttpError::TooLarge(max_body));
            }
            length = Some(n);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let data = &buf[head_end + 4..];
    let body = if chunked {
        match dechunk(data, max_body)? {
            Some(b) => b,
            None if eof => return Err(HttpError::Malformed("chunked body cut short")),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if data.len() < n {
            return if eof {
                Err(HttpError::Malformed("body shorter than Content-Length"))
            } else {
                Ok(None)
            };
        }
        data[..n].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        if data.len() > max_body {
            return Err(HttpError::TooLarge(max_body));
        }
        if !eof {
            return Ok(None);
        }
        data.to_vec()
    };
    Ok(Some(Response {
        status,
        reason,
        body,
    }))
}

/// Decode a chunked body; `Ok(None)` while incomplete.
fn dechunk(mut data: &[u8], max_body: usize) -> Result<Option<Vec<u8>>, HttpError> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            if data.len() > 64 {
                return Err(HttpError::Malformed("chunk size line too long"));
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[..eol])
            .map_err(|_| HttpError::Malformed("chunk size not text"))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Malformed("bad chunk size"))?;
        if size == 0 {
            // Trailers, if any, are not needed.
            return Ok(Some(out));
        }
        if out.len().saturating_add(size) > max_body {
            return Err(HttpError::TooLarge(max_body));
        }
        let rest = &data[eol + 2..];
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        if &rest[size..size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF"));
        }
        data = &rest[size + 2..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split() {
        let u = Url::parse("https://api.cloudflare.com/client/v4/certificates/").unwrap();
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "api.cloudflare.com", 443, "/client/v4/certificates/")
        );
        assert_eq!(u.host_header(), "api.cloudflare.com");
        let u = Url::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!((u.port, u.path.as_str()), (4318, "/"));
        assert_eq!(u.host_header(), "127.0.0.1:4318");
        let u = Url::parse("http://[::1]:9/v1/traces").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 9));
        assert_eq!(u.host_header(), "[::1]:9");
        for bad in [
            "ftp://x/",
            "https://",
            "http://:80/",
            "http://u@h/",
            "http://h:x/",
            "h:1",
        ] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_parse_by_length_chunks_and_close() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        let a = parse_response(r, 100, false).unwrap().unwrap();
        assert_eq!(
            (a.status, a.reason.as_str(), &a.body[..]),
            (200, "OK", &b"hello"[..])
        );
        // Incomplete until the whole length is there.
        assert!(parse_response(&r[..r.len() - 1], 100, false)
            .unwrap()
            .is_none());
        assert!(parse_response(&r[..r.len() - 1], 100, true).is_err());
        let c = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let a = parse_response(c, 100, false).unwrap().unwrap();
        assert_eq!((a.status, &a.body[..]), (403, &b"abcde"[..]));
        assert!(parse_response(&c[..c.len() - 8], 100, false)
            .unwrap()
            .is_none());
        let e = b"HTTP/1.0 200 OK\r\n\r\nuntil close";
        assert!(parse_response(e, 100, false).unwrap().is_none());
        assert_eq!(
            parse_response(e, 100, true).unwrap().unwrap().body,
            b"until close"
        );
    }

    #[test]
    fn oversized_and_malformed_answers_are_refused() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n";
        assert!(matches!(
            parse_response(r, 100, false),
            Err(HttpError::TooLarge(100))
        ));
        let c = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n80\r\n";
        assert!(matches!(
            parse_response(c, 100, false),
            Err(HttpError::TooLarge(100))
        ));
        let head = vec![b'a'; MAX_HEAD_BYTES + 1];
        assert!(matches!(
            parse_response(&head, 100, false),
            Err(HttpError::TooLarge(_))
        ));
        for bad in [
            &b"SMTP 220 hi\r\n\r\n"[..],
            b"HTTP/1.1 2000 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(
                matches!(parse_response(bad, 100, true), Err(HttpError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
