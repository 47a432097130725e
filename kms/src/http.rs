//! The HTTP side of the KMS backend: one hyper client (keep-alive pool,
//! rustls with the aws-lc-rs provider), per-service limits (in-flight cap and
//! request rate) and the retry loop (backoff on 429 / 5xx / throttling
//! answers, honouring `Retry-After`, bounded by a deadline), and the
//! optional HTTPS_PROXY tunnel.
//!
//! Owns: [`Http`], [`Limits`], [`Service`], [`Attempt`], [`with_retries`],
//! [`ProxySettings`].
//! Must not: run anywhere but the KMS runtime thread (everything here is
//! `!Send`-friendly and lives on one current-thread tokio runtime), know any
//! provider's JSON, or log per request.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use keycore_keys::error_chain;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use std::cell::RefCell;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Largest response body read. Key service answers are a few KB (a 4096-bit
/// JWK or PEM is under 1 KB); anything near this is not a key service.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Idle keep-alive connections kept per host. Beyond the in-flight cap a
/// service never needs more than that many sockets at once.
pub const MAX_IDLE_PER_HOST: usize = 256;

/// How long an idle pooled connection is kept. Azure Front Door and the
/// Google and AWS front ends close idle connections after a few minutes;
/// 90 s stays under all of them so a reused socket is rarely a dead one.
pub const POOL_IDLE: Duration = Duration::from_secs(90);

/// Longest wait honoured from a `Retry-After` header; a longer one fails the
/// request instead (it would outlive any operation deadline anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Error from the HTTP layer or a service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The deadline passed.
    #[error("no answer within the deadline")]
    Timeout,
    /// Connect / TLS / protocol failure. Text (the transport error's chain,
    /// or the endpoint's own words for a metadata/token endpoint that is
    /// down): what matters to a caller is the variant, which is retried.
    #[error("transport: {0}")]
    Transport(String),
    /// The service refused or answered unusably: the text is the service's
    /// own answer (HTTP status and its error code/message, e.g. AWS
    /// `DisabledException: ...`) or what was wrong with the answer (bad JSON,
    /// a missing field). Kept as text on purpose: it is not retried, and
    /// every caller only reports it (the operation fails with it, `/readyz`
    /// and `keycore check` print it); nothing branches on its content.
    #[error("{0}")]
    Service(String),
    /// Retries exhausted on a retryable answer.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last reason.
        last: String,
    },
}

/// An answer as read from the wire.
#[derive(Debug)]
pub struct Reply {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// Whole body (at most [`MAX_RESPONSE_BYTES`]).
    pub body: Bytes,
}

impl Reply {
    /// `Retry-After` in seconds (the HTTP-date form is treated as absent and
    /// the backoff applies).
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self
            .headers
            .get(hyper::header::RETRY_AFTER)?
            .to_str()
            .ok()?;
        let secs: f64 = v.trim().parse().ok()?;
        // Capped: a huge value must not overflow Duration (it then fails the
        // request, being over MAX_RETRY_AFTER).
        (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
    }

    /// The body as text, cut short, for error messages.
    pub fn snippet(&self) -> String {
        let s = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]);
        s.replace(['\n', '\r'], " ")
    }
}

/// Longest piece of a service's own text (an error message, a status code,
/// a key name) quoted in our messages: a hostile or broken service must not
/// turn one answer into a log line of megabytes (fuzz target `kms_answer`).
pub const MAX_QUOTED: usize = 200;

/// `s` cut to [`MAX_QUOTED`] bytes on a character boundary, newlines made
/// spaces, with "…" marking a cut.
pub fn quoted(s: &str) -> String {
    let mut end = s.len().min(MAX_QUOTED);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut q = s[..end].replace(['\n', '\r'], " ");
    if end < s.len() {
        q.push('…');
    }
    q
}

/// The shared client (pool + TLS). Built on the runtime thread.
#[derive(Debug, Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Client whose HTTPS connections go through an HTTP CONNECT proxy.
    proxied: Option<Client<HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>>,
    /// Hosts reached directly even with a proxy (NO_PROXY).
    no_proxy: Vec<String>,
    attempt_timeout: Duration,
}

/// An egress proxy for the services' HTTPS endpoints (HTTPS_PROXY).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// `http://[user:password@]host:port`.
    pub url: String,
    /// NO_PROXY entries: `*`, host names (also matching subdomains, with or
    /// without a leading dot) or IP addresses.
    pub no_proxy: Vec<String>,
}

/// Whether `host` is reached directly per NO_PROXY `entries`.
pub fn bypasses_proxy(host: &str, entries: &[String]) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    entries.iter().any(|e| {
        let e = e.trim().trim_start_matches('.').to_ascii_lowercase();
        !e.is_empty() && (e == "*" || host == e || host.ends_with(&format!(".{e}")))
    })
}

/// Why the HTTPS client could not be set up: the proxy URL, the CA bundle
/// or TLS. Names the URL or file; the library's error is the source.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A proxy URL that is not `http://`.
    #[error("proxy {0:?}: only http:// proxies (HTTP CONNECT) are supported")]
    ProxyScheme(String),
    /// A proxy URL without a host.
    #[error("proxy {0:?}: no host")]
    ProxyNoHost(String),
    /// A proxy URL that does not parse.
    #[error("proxy {url:?}")]
    ProxyUrl {
        /// The proxy URL as configured.
        url: String,
        /// The parser's error.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// Proxy user info that is not a valid header value.
    #[error("proxy {0:?}: bad user info")]
    ProxyUserInfo(String),
    /// The CA bundle cannot be read or holds a bad PEM section.
    #[error("CA bundle {}", path.display())]
    CaRead {
        /// The file.
        path: std::path::PathBuf,
        /// The reader's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The CA bundle holds no certificate.
    #[error("CA bundle {}: no certificates", .0.display())]
    CaEmpty(std::path::PathBuf),
    /// A certificate in the CA bundle rustls refuses.
    #[error("CA bundle {}", path.display())]
    CaCertificate {
        /// The file.
        path: std::path::PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// Neither the system store nor a bundle gave a root.
    #[error("no trusted CA certificates (system store empty and no CA bundle)")]
    NoRoots,
    /// rustls refused the protocol versions.
    #[error("TLS")]
    Tls(#[source] rustls::Error),
}

/// Split a proxy URL into the proxy's own URI and an optional
/// `Proxy-Authorization: Basic` value from its user info.
fn parse_proxy(url: &str) -> Result<(hyper::Uri, Option<hyper::header::HeaderValue>), SetupError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| SetupError::ProxyScheme(url.to_owned()))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if hostport.is_empty() {
        return Err(SetupError::ProxyNoHost(url.to_owned()));
    }
    let uri: hyper::Uri =
        format!("http://{hostport}")
            .parse()
            .map_err(|source| SetupError::ProxyUrl {
                url: url.to_owned(),
                source,
            })?;
    let auth = match userinfo {
        None => None,
        Some(u) => {
            use base64::Engine as _;
            let v = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(u)
            );
            Some(
                v.parse()
                    .map_err(|_| SetupError::ProxyUserInfo(url.to_owned()))?,
            )
        }
    };
    Ok((uri, auth))
}

/// Build the rustls client config: the system's roots plus an optional PEM
/// bundle (private endpoints, the stand-ins' CA).
pub fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(p) = ca_file {
        let read = |source| SetupError::CaRead {
            path: p.to_path_buf(),
            source,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
            .map_err(read)?
            .collect::<Result<_, _>>()
            .map_err(read)?;
        if certs.is_empty() {
            return Err(SetupError::CaEmpty(p.to_path_buf()));
        }
        for c in certs {
            roots.add(c).map_err(|source| SetupError::CaCertificate {
                path: p.to_path_buf(),
                source,
            })?;
        }
    }
    if roots.is_empty() {
        return Err(SetupError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SetupError::Tls)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}

impl Http {
    /// A client; must be called inside the tokio runtime. With `proxy`,
    /// HTTPS requests to hosts not in its NO_PROXY list are tunnelled
    /// through it (plain-http metadata services never are).
    pub fn new(
        tls: rustls::ClientConfig,
        attempt_timeout: Duration,
        proxy: Option<&ProxySettings>,
    ) -> Result<Http, SetupError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(attempt_timeout));
        let builder = || {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
                .clone()
        };
        let proxied = match proxy {
            None => None,
            Some(p) => {
                let (uri, auth) = parse_proxy(&p.url)?;
                let mut tunnel = Tunnel::new(uri, http.clone());
                if let Some(a) = auth {
                    tunnel = tunnel.with_auth(a);
                }
                let conn = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls.clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(tunnel);
                Some(builder().build(conn))
            }
        };
        let conn = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            // Plain http only for the link-local metadata services (IMDS,
            // GCE metadata) or an operator's explicit override.
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Http {
            client: builder().build(conn),
            proxied,
            no_proxy: proxy.map(|p| p.no_proxy.clone()).unwrap_or_default(),
            attempt_timeout,
        })
    }

    /// One exchange, bounded by the attempt timeout and `deadline`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        deadline: Instant,
    ) -> Result<Reply, CallError> {
        let until = deadline.min(Instant::now() + self.attempt_timeout);
        let via_proxy = match &self.proxied {
            Some(p)
                if req.uri().scheme_str() == Some("https")
                    && !bypasses_proxy(req.uri().host().unwrap_or(""), &self.no_proxy) =>
            {
                Some(p)
            }
            _ => None,
        };
        let fut = async {
            let resp = match via_proxy {
                Some(p) => p.request(req).await,
                None => self.client.request(req).await,
            }
            .map_err(|e| CallError::Transport(error_chain(&e)))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| CallError::Transport(format!("reading body: {e}")))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout_at(until, fut).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Timeout),
        }
    }
}

/// Limits of one service (one per provider in use).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests in flight at once; further ones wait for a slot.
    pub max_in_flight: usize,
    /// Requests started per second (token bucket, burst = one second's worth).
    pub max_per_second: f64,
    /// Attempts per operation (first try + retries).
    pub max_attempts: u32,
    /// First backoff; doubles per retry, with jitter.
    pub backoff_base: Duration,
    /// Largest backoff between two attempts.
    pub backoff_max: Duration,
}

/// Token bucket state.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Per-service limiter plus counters (metrics).
#[derive(Debug)]
pub struct Service {
    /// "azure", "gcp" or "aws".
    pub name: &'static str,
    /// Limits.
    pub limits: Limits,
    sem: Arc<Semaphore>,
    bucket: RefCell<Bucket>,
    /// Counters, read by the metrics scrape from another thread.
    pub stats: Arc<ServiceStats>,
}

/// Counters of one service. Written only by the runtime thread, read by the
/// metrics scrape (relaxed atomics: each is an independent count).
#[derive(Debug, Default)]
pub struct ServiceStats {
    /// Operations answered successfully.
    pub ok: AtomicU64,
    /// Operations that ended in an error (refused, failed or timed out).
    pub failures: AtomicU64,
    /// Operations refused before any request (the key cannot do the op).
    pub refused: AtomicU64,
    /// HTTP attempts sent.
    pub attempts: AtomicU64,
    /// Retries after a 429 / throttling answer.
    pub throttled: AtomicU64,
    /// Retries after a 5xx, a transport error or a checksum mismatch.
    pub server_errors: AtomicU64,
    /// Token / credential refreshes.
    pub token_refreshes: AtomicU64,
    /// Answers whose signature did not verify with the key's public key.
    pub bad_signatures: AtomicU64,
}

/// Add one to a counter.
pub fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Service {
    /// A limiter for `name`.
    pub fn new(name: &'static str, limits: Limits) -> Service {
        Service::sharing(name, limits, Arc::new(ServiceStats::default()))
    }

    /// A limiter of its own that counts into `stats` (one limiter per
    /// vault, one set of counters per service).
    pub fn sharing(name: &'static str, limits: Limits, stats: Arc<ServiceStats>) -> Service {
        Service {
            name,
            limits,
            sem: Arc::new(Semaphore::new(limits.max_in_flight.max(1))),
            bucket: RefCell::new(Bucket {
                tokens: limits.max_per_second.max(1.0),
                at: Instant::now(),
            }),
            stats,
        }
    }

    /// Wait for a rate token (never past `deadline`).
    async fn rate_token(&self, deadline: Instant) -> Result<(), CallError> {
        let rate = self.limits.max_per_second;
        if rate <= 0.0 || !rate.is_finite() {
            return Ok(());
        }
        loop {
            let wait = {
                let mut b = self.bucket.borrow_mut();
                let now = Instant::now();
                let burst = rate.max(1.0);
                b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(burst);
                b.at = now;
                if b.tokens >= 1.0 {
                    b.tokens -= 1.0;
                    return Ok(());
                }
                Duration::from_secs_f64(((1.0 - b.tokens) / rate).min(3600.0))
            };
            if Instant::now() + wait > deadline {
                return Err(CallError::Timeout);
            }
            tokio::time::sleep(wait).await;
        }
    }

    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .limits
            .backoff_base
            .saturating_mul(1u32 << retry.min(16))
            .min(self.limits.backoff_max);
        // Full jitter in [exp/2, exp): spreads retries of requests throttled
        // together so they do not come back as one burst.
        let half = exp / 2;
        half + half.mul_f64(jitter())
    }
}

/// A number in [0, 1) that differs between calls (not secret).
fn jitter() -> f64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// What one attempt came to, as the provider's code judged the answer.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Success.
    Done(T),
    /// Retryable (429, 5xx, throttling, transport): wait `after` if the
    /// service said so, else back off.
    Retry {
        /// `Retry-After`, if given.
        after: Option<Duration>,
        /// Whether it was throttling (for counters).
        throttled: bool,
        /// Why, for the final error.
        why: String,
    },
    /// The credential was refused (401): the provider has dropped its cached
    /// token; try once more at once with a fresh one.
    Reauth(String),
    /// Not retryable.
    Fail(CallError),
}

impl<T> Attempt<T> {
    /// The usual judgement of a transport error.
    pub fn transport(e: CallError) -> Attempt<T> {
        match e {
            CallError::Timeout | CallError::Transport(_) => Attempt::Retry {
                after: None,
                throttled: false,
                why: e.to_string(),
            },
            other => Attempt::Fail(other),
        }
    }

    /// The usual judgement of a non-success HTTP status.
    pub fn status(r: &Reply) -> Attempt<T> {
        let why = format!("HTTP {}: {}", r.status.as_u16(), r.snippet());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            Attempt::Retry {
                after: r.retry_after(),
                throttled: true,
                why,
            }
        } else if r.status.is_server_error() {
            Attempt::Retry {
                after: r.retry_after(),
                throttled: false,
                why,
            }
        } else if r.status == StatusCode::UNAUTHORIZED {
            Attempt::Reauth(why)
        } else {
            Attempt::Fail(CallError::Service(why))
        }
    }
}

/// Run `once` until it succeeds, fails for good, runs out of attempts or the
/// deadline passes. Each attempt first takes a rate token and an in-flight
/// slot of `svc`.
pub async fn with_retries<T, F>(
    svc: &Service,
    deadline: Instant,
    mut once: F,
) -> Result<T, CallError>
where
    F: AsyncFnMut() -> Attempt<T>,
{
    let mut retries = 0u32;
    let mut reauthed = false;
    loop {
        svc.rate_token(deadline).await?;
        let permit = tokio::time::timeout_at(deadline, svc.sem.acquire())
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(|_| CallError::Transport("limiter closed".into()))?;
        bump(&svc.stats.attempts);
        let outcome = match tokio::time::timeout_at(deadline, once()).await {
            Ok(o) => o,
            Err(_) => return Err(CallError::Timeout),
        };
        drop(permit);
        let (after, last) = match outcome {
            Attempt::Done(t) => return Ok(t),
            Attempt::Fail(e) => return Err(e),
            Attempt::Reauth(why) => {
                if reauthed {
                    return Err(CallError::Service(format!(
                        "credential refused twice: {why}"
                    )));
                }
                // The provider dropped its cached credential; the next
                // attempt fetches a fresh one (not counted as a retry).
                reauthed = true;
                continue;
            }
            Attempt::Retry {
                after,
                throttled,
                why,
            } => {
                bump(if throttled {
                    &svc.stats.throttled
                } else {
                    &svc.stats.server_errors
                });
                (after, why)
            }
        };
        retries += 1;
        if retries >= svc.limits.max_attempts {
            return Err(CallError::Exhausted {
                attempts: retries,
                last,
            });
        }
        let wait = match after {
            Some(a) if a > MAX_RETRY_AFTER => {
                return Err(CallError::Exhausted {
                    attempts: retries,
                    last: format!("{last} (Retry-After {a:?} is too long)"),
                })
            }
            Some(a) => a,
            None => svc.backoff(retries - 1),
        };
        if Instant::now() + wait >= deadline {
            return Err(CallError::Exhausted {
                attempts: retries,
                last: format!("{last} (next try would pass the deadline)"),
            });
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn quoted_cuts_on_a_char_boundary_and_marks_the_cut() {
        assert_eq!(quoted("short\nline"), "short line");
        let long = "é".repeat(MAX_QUOTED); // 2 bytes each
        let q = quoted(&long);
        assert!(q.ends_with('…'));
        assert_eq!(q.len(), MAX_QUOTED + '…'.len_utf8());
        assert_eq!(quoted(&"a".repeat(MAX_QUOTED)), "a".repeat(MAX_QUOTED));
    }

    fn limits(attempts: u32) -> Limits {
        Limits {
            max_in_flight: 2,
            max_per_second: 0.0,
            max_attempts: attempts,
            backoff_base: Duration::from_millis(5),
            backoff_max: Duration::from_millis(20),
        }
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn retries_until_success_and_counts_throttling() {
        let svc = Service::new("t", limits(5));
        let n = Cell::new(0);
        let r = run(with_retries(
            &svc,
            Instant::now() + Duration::from_secs(5),
            async || {
                n.set(n.get() + 1);
                if n.get() < 3 {
                    Attempt::Retry {
                        after: Some(Duration::from_millis(1)),
                        throttled: true,
                        why: "429".into(),
                    }
                } else {
                    Attempt::Done(7)
                }
            },
        ));
        assert_eq!(r, Ok(7));
        assert_eq!(svc.stats.throttled.load(Ordering::Relaxed), 2);
        assert_eq!(svc.stats.attempts.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let svc = Service::new("t", limits(3));
        let r: Result<(), _> = run(with_retries(
            &svc,
            Instant::now() + Duration::from_secs(5),
            async || Attempt::Retry {
                after: None,
                throttled: false,
                why: "HTTP 503".into(),
            },
        ));
        assert!(
            matches!(r, Err(CallError::Exhausted { attempts: 3, .. })),
            "{r:?}"
        );
    }

    #[test]
    fn retry_after_past_the_deadline_fails_at_once() {
        let svc = Service::new("t", limits(10));
        let t0 = std::time::Instant::now();
        let r: Result<(), _> = run(with_retries(
            &svc,
            Instant::now() + Duration::from_millis(200),
            async || Attempt::Retry {
                after: Some(Duration::from_secs(5)),
                throttled: true,
                why: "429".into(),
            },
        ));
        assert!(
            matches!(r, Err(CallError::Exhausted { attempts: 1, .. })),
            "{r:?}"
        );
        assert!(t0.elapsed() < Duration::from_millis(150));
    }

    #[test]
    fn reauth_once_then_fail() {
        let svc = Service::new("t", limits(5));
        let n = Cell::new(0);
        let r: Result<(), _> = run(with_retries(
            &svc,
            Instant::now() + Duration::from_secs(5),
            async || {
                n.set(n.get() + 1);
                Attempt::Reauth("401".into())
            },
        ));
        assert!(matches!(r, Err(CallError::Service(_))), "{r:?}");
        assert_eq!(n.get(), 2);
    }

    #[test]
    fn rate_limit_spaces_requests() {
        let mut l = limits(1);
        l.max_per_second = 50.0;
        let svc = Service::new("t", l);
        let t0 = std::time::Instant::now();
        run(async {
            for _ in 0..60 {
                let r: Result<(), _> =
                    with_retries(&svc, Instant::now() + Duration::from_secs(5), async || {
                        Attempt::Done(())
                    })
                    .await;
                r.unwrap();
            }
        });
        // 50 from the burst, then 10 more at 50/s = 200 ms.
        let e = t0.elapsed();
        assert!(e >= Duration::from_millis(150), "{e:?}");
        assert!(e < Duration::from_secs(2), "{e:?}");
    }

    #[test]
    fn no_proxy_matching_and_proxy_urls() {
        let np = vec![
            ".internal.example".to_string(),
            "10.1.2.3".into(),
            "vault.azure.net".into(),
        ];
        assert!(bypasses_proxy("kms.internal.example", &np));
        assert!(bypasses_proxy("10.1.2.3", &np));
        assert!(bypasses_proxy("kv1.vault.azure.net", &np));
        assert!(!bypasses_proxy("cloudkms.googleapis.com", &np));
        assert!(!bypasses_proxy("notvault.azure.net.evil", &np));
        assert!(bypasses_proxy("anything", &["*".to_string()]));
        let (u, a) = parse_proxy("http://user:pa%40ss@proxy.corp:3128").unwrap();
        assert_eq!(u.to_string(), "http://proxy.corp:3128/");
        assert_eq!(a.unwrap().to_str().unwrap(), "Basic dXNlcjpwYSU0MHNz");
        assert!(parse_proxy("https://proxy.corp:3128").is_err());
        assert!(parse_proxy("http://").is_err());
    }

    #[test]
    fn retry_after_header_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(hyper::header::RETRY_AFTER, "2".parse().unwrap());
        let r = Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Bytes::from_static(b"slow down"),
        };
        assert_eq!(r.retry_after(), Some(Duration::from_secs(2)));
        let mut huge = HeaderMap::new();
        huge.insert(hyper::header::RETRY_AFTER, "1e300".parse().unwrap());
        let r2 = Reply {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: huge,
            body: Bytes::new(),
        };
        assert_eq!(r2.retry_after(), Some(Duration::from_secs(86_400)));
        assert!(matches!(
            Attempt::<()>::status(&r),
            Attempt::Retry {
                throttled: true,
                after: Some(_),
                ..
            }
        ));
    }
}
