//! # keycore-kmssim
//!
//! Local stand-ins of the cloud key services keycore talks to: the Azure Key
//! Vault keys API with the Azure AD v2 token endpoint and managed-identity
//! IMDS; the Google Cloud KMS v1 API with the OAuth token endpoint (JWT
//! bearer grant) and the metadata server; the AWS KMS JSON 1.1 API with real
//! SigV4 verification and IMDSv2. They hold real keys (generated with
//! aws-lc-rs through rcgen, used through keycore's software keys), do the
//! real signature math, check requests as the services document them
//! (headers, auth, JSON fields, base64 flavours, CRC32C) and can be told to
//! throttle (429 + `Retry-After`, AWS `ThrottlingException`), fail (503),
//! expire tokens, corrupt checksums or stall. Vendor behaviours a real
//! deployment meets (issue 20), each switchable by a test: AWS Ed25519 keys
//! (RAW messages only), `LimitExceededException`, disabled and
//! pending-deletion keys, STS serving one partition per host; Google
//! disabled key versions, metadata tokens without a Cloud KMS scope, a
//! missing IAM role; Azure missing data-plane role, disabled keys, IMDS
//! 404/410/429 sequences, PS256 `x5t#S256` certificate assertions only.
//!
//! Why a crate of its own: the engine's integration tests run it in-process,
//! the `keycore-kmssim` binary serves it to a manually started keycore (docs,
//! `curl -v`, `keycore loadgen`), and none of it may ship inside the server.
//! LocalStack (the AWS emulator the issue suggests) needs a Docker daemon,
//! which these machines do not run (only the client is installed), hence our
//! own SigV4-verifying AWS stand-in; its verifier is cross-checked against
//! curl's independent SigV4 signer (tests/standin_checks.rs).
//!
//! Also the CDN's certificates API for keyless enrollment (`cfapi`): checks
//! the JSON and the credential header and signs the CSR with a test CA.
//!
//! What it is not: a complete emulator. Only the calls keycore makes exist
//! (get-key / sign / decrypt, getPublicKey / asymmetricSign, GetPublicKey /
//! Sign, the token and metadata endpoints), and it binds 127.0.0.1 only.
//!
//! Public surface: [`Sim`] (start the stand-ins, its [`Knobs`], [`State`] and
//! [`Stats`]), [`SimKey`] / [`KeyType`] / [`KeyState`], the errors
//! [`SimError`] and [`ApiError`], the per-service modules (`aws`, `azure`,
//! `gcp`, `cfapi`, `keys`, `proxy` for the CONNECT proxy), and for tests
//! `get` (read a counter), `b64` / `unb64`, [`STAND_IN_HOST_NAMES`],
//! [`CLOUD_PLATFORM_SCOPE`], [`MAX_REQUEST_BYTES`]. Other helpers are
//! `pub(crate)`.
#![forbid(unsafe_code)]

pub mod aws;
pub mod azure;
pub mod cfapi;
mod error;
pub mod gcp;
pub mod keys;
pub mod proxy;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
pub use error::ApiError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keycore_keys::KeyKind;
pub use keys::{KeyType, SimKey};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Largest request body read (the services' own limits are far lower).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// A stand-in failure (start-up, bad key material): what failed, with the
/// cause as its source.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Making a key, CA or certificate (rcgen).
    #[error("kmssim: {what}")]
    Cert {
        /// Which one ("CA key", "server cert", "key generation", ...).
        what: &'static str,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The TLS server configuration.
    #[error("kmssim: TLS")]
    Tls(#[source] rustls::Error),
    /// A socket or thread of the stand-in.
    #[error("kmssim: {what}")]
    Io {
        /// What ("bind", "listener", "thread", "proxy bind", ...).
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Writing a file (the CA).
    #[error("kmssim: {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Key material the software key loader refuses.
    #[error("kmssim: key")]
    Key(#[source] keycore_keys::software::KeyLoadError),
    /// A software key that is not performed in-process.
    #[error("kmssim: software key without an inline backend")]
    NotInline,
    /// A certificate that does not parse.
    #[error("kmssim: certificate")]
    Certificate(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    /// A service account's public key.
    #[error("kmssim: service account key")]
    ServiceAccount(#[source] ApiError),
    /// A CONNECT proxy name mapped to an address that is not loopback.
    #[error("kmssim: proxy name {name} -> {addr}: only loopback addresses")]
    ProxyName {
        /// The name.
        name: String,
        /// The address.
        addr: SocketAddr,
    },
}

/// Behaviour switches, changed by tests while the stand-ins run.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// The next N key-API requests get a throttling answer.
    pub throttle_next: u32,
    /// Every key-API request gets a throttling answer.
    pub throttle_always: bool,
    /// `Retry-After` seconds sent with 429s (Azure, Google).
    pub retry_after_s: u32,
    /// The next N key-API requests get a 503.
    pub fail_next: u32,
    /// Lifetime of issued tokens and temporary credentials.
    pub token_lifetime_s: u64,
    /// The next N Google sign answers carry a wrong `signatureCrc32c`.
    pub corrupt_crc_next: u32,
    /// Every Google sign answer carries a wrong `signatureCrc32c`.
    pub corrupt_crc_always: bool,
    /// Stall every key-API answer this long.
    pub delay: Duration,
    /// The next N signatures are wrong (one bit flipped "inside the HSM",
    /// before any checksum is computed over them).
    pub wrong_signature_next: u32,
    /// Azure IMDS answers these statuses, in order, before it issues a token
    /// (404 and 410 while "IMDS is updating", 429 when called too often).
    pub azure_imds_statuses: Vec<u16>,
    /// Azure key operations are refused 403 `ForbiddenByRbac` (the identity
    /// has a token but no data-plane role on the vault).
    pub azure_missing_role: bool,
    /// The access scopes of the Google metadata server's token (the VM's
    /// access scopes). Cloud KMS accepts `cloud-platform` or `cloudkms`;
    /// a token with neither is refused 403 ACCESS_TOKEN_SCOPE_INSUFFICIENT.
    pub gcp_metadata_scopes: Vec<String>,
    /// Google key operations are refused 403 PERMISSION_DENIED (no IAM
    /// role on the key).
    pub gcp_missing_role: bool,
    /// The next N AWS KMS requests get `LimitExceededException` (a quota,
    /// not rate throttling).
    pub aws_limit_exceeded_next: u32,
    /// A request-rate quota over every key-API request of this stand-in
    /// (one bucket shared by its services: run one stand-in per quota you
    /// model, e.g. one AWS account-and-Region): above it, requests
    /// get the service's throttling answer, as the clouds throttle a
    /// quota. 0 = none. A token bucket whose burst is one second's worth —
    /// an assumption: the services publish per-second rates, not their
    /// burst allowance.
    pub quota_per_second: u32,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            throttle_next: 0,
            throttle_always: false,
            retry_after_s: 1,
            fail_next: 0,
            token_lifetime_s: 3600,
            corrupt_crc_next: 0,
            corrupt_crc_always: false,
            delay: Duration::ZERO,
            wrong_signature_next: 0,
            azure_imds_statuses: Vec::new(),
            azure_missing_role: false,
            gcp_metadata_scopes: vec![CLOUD_PLATFORM_SCOPE.to_owned()],
            gcp_missing_role: false,
            aws_limit_exceeded_next: 0,
            quota_per_second: 0,
        }
    }
}

/// Google's all-APIs OAuth scope (a VM's default service account often has
/// narrower access scopes unless this one is set).
pub const CLOUD_PLATFORM_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// Cloud host names the stand-ins' TLS certificate also carries, so a test
/// can point a client at a real host name through the CONNECT proxy's name
/// map (proxy.rs) and the stand-in sees which one was used. Only names a
/// test needs: the global STS endpoint and the regional ones of the
/// regions the tests use, in both partitions' suffixes.
pub const STAND_IN_HOST_NAMES: &[&str] = &[
    "sts.amazonaws.com",
    "sts.cn-north-1.amazonaws.com.cn",
    "sts.cn-north-1.amazonaws.com",
    "sts.eu-west-1.amazonaws.com",
];

/// Key states a test can set ([`Sim::set_key_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable (the default).
    Enabled,
    /// Disabled: Azure `KeyDisabled`, Google version state DISABLED, AWS
    /// `DisabledException`.
    Disabled,
    /// AWS only: scheduled for deletion (`KMSInvalidStateException`).
    PendingDeletion,
}

/// Counters tests read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Azure AD token requests answered with a token.
    pub azure_tokens: AtomicU64,
    /// Azure managed-identity tokens issued (IMDS and App Service).
    pub azure_imds_tokens: AtomicU64,
    /// Google OAuth tokens issued (JWT bearer grant).
    pub gcp_tokens: AtomicU64,
    /// Google metadata-server tokens issued.
    pub gcp_metadata_tokens: AtomicU64,
    /// AWS IMDSv2 credentials issued.
    pub aws_imds_credentials: AtomicU64,
    /// AWS STS AssumeRoleWithWebIdentity credentials issued.
    pub aws_sts_credentials: AtomicU64,
    /// AWS container (ECS / EKS Pod Identity) credentials issued.
    pub aws_container_credentials: AtomicU64,
    /// Key-API requests (all services), answered or not.
    pub key_requests: AtomicU64,
    /// Signatures / decryptions made.
    pub operations: AtomicU64,
    /// Throttling answers sent.
    pub throttled: AtomicU64,
    /// 401 answers for a missing, unknown or expired token.
    pub unauthorized: AtomicU64,
    /// Requests refused as malformed (400 for shape errors).
    pub bad_requests: AtomicU64,
    /// TCP connections accepted (both listeners): shows keep-alive reuse.
    pub connections: AtomicU64,
    /// Key-API requests being answered right now.
    pub in_flight: AtomicU64,
    /// Most key-API requests seen in flight at once.
    pub max_in_flight: AtomicU64,
}

/// Read a counter.
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// An issued bearer token.
#[derive(Debug, Clone)]
struct Token {
    audience: String,
    expires: Instant,
}

/// A registered Azure app.
#[derive(Debug, Clone)]
enum AzureApp {
    Secret(String),
    /// (x5t#S256: base64url SHA-256 thumbprint, RSAPublicKey DER of the
    /// certificate).
    Certificate(String, Vec<u8>),
    /// A federated credential: the assertion the platform's token file holds.
    Federated(String),
}

/// A Google service account: key ID and RSAPublicKey DER.
#[derive(Debug, Clone)]
struct ServiceAccount {
    key_id: String,
    public: Vec<u8>,
}

/// AWS key material.
#[derive(Debug, Clone)]
struct AwsSecret {
    secret: String,
    session_token: Option<String>,
    expires: Option<Instant>,
}

/// Everything the servers share.
#[derive(Debug, Default)]
pub struct State {
    knobs: Mutex<Knobs>,
    /// The quota's token bucket: (tokens, when last refilled).
    quota: Mutex<Option<(f64, Instant)>>,
    /// Counters.
    pub stats: Stats,
    tokens: Mutex<HashMap<String, Token>>,
    azure_apps: Mutex<HashMap<(String, String), AzureApp>>,
    /// Path -> (key, is a Managed HSM key: decides the token audience).
    azure_keys: Mutex<HashMap<String, (Arc<SimKey>, bool)>>,
    gcp_accounts: Mutex<HashMap<String, ServiceAccount>>,
    gcp_keys: Mutex<HashMap<String, (Arc<SimKey>, String)>>,
    aws_secrets: Mutex<HashMap<String, AwsSecret>>,
    aws_keys: Mutex<HashMap<String, (Arc<SimKey>, String)>>,
    /// Alias ARN -> key ARN.
    aws_aliases: Mutex<HashMap<String, String>>,
    imds_tokens: Mutex<HashMap<String, Instant>>,
    /// App Service identity header (IDENTITY_HEADER) expected, if enabled.
    identity_header: Mutex<Option<String>>,
    /// (role ARN, web identity token) STS accepts, if enabled.
    web_identity: Mutex<Option<(String, String)>>,
    /// Container credentials Authorization token expected, if any.
    container_token: Mutex<Option<String>>,
    /// `https://127.0.0.1:<port>`, for token audiences.
    https_url: Mutex<String>,
    /// The certificates API stand-in (enrollment): accounts, zones, CA.
    pub cfapi: cfapi::CfApi,
    /// Key states other than enabled, by key ID (Azure `/keys/<n>/<v>`,
    /// Google version name, AWS key ARN).
    key_states: Mutex<HashMap<String, KeyState>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A random token / ID (hex).
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Unix seconds now.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Standard base64.
pub fn b64(b: &[u8]) -> String {
    STANDARD.encode(b)
}

/// base64url, no padding.
pub(crate) fn b64url(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// Strict standard base64 (padding required, as Google and AWS JSON bytes).
pub fn unb64(s: &str) -> Option<Vec<u8>> {
    STANDARD.decode(s).ok()
}

/// Strict base64url without padding (JOSE, as Key Vault documents `value`).
pub(crate) fn unb64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s).ok()
}

/// What a key-API request may be answered with before it is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    Pass,
    Throttle(u32),
    Fail,
}

impl State {
    /// Change the knobs.
    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        f(&mut lock(&self.knobs));
    }

    fn knob<T>(&self, f: impl FnOnce(&Knobs) -> T) -> T {
        f(&lock(&self.knobs))
    }

    /// Count a key-API request and decide whether it is throttled / failed.
    pub(crate) async fn gate(&self) -> Gate {
        bump(&self.stats.key_requests);
        let now = self.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.max_in_flight.fetch_max(now, Ordering::Relaxed);
        let delay = self.knob(|k| k.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut k = lock(&self.knobs);
        if k.throttle_always || k.throttle_next > 0 {
            k.throttle_next = k.throttle_next.saturating_sub(1);
            bump(&self.stats.throttled);
            return Gate::Throttle(k.retry_after_s);
        }
        if k.fail_next > 0 {
            k.fail_next -= 1;
            return Gate::Fail;
        }
        if k.quota_per_second > 0 && !self.take_quota(f64::from(k.quota_per_second)) {
            bump(&self.stats.throttled);
            return Gate::Throttle(k.retry_after_s);
        }
        Gate::Pass
    }

    /// One token from the quota's bucket (refilled at `rate`/s, burst
    /// `rate`); false when empty.
    fn take_quota(&self, rate: f64) -> bool {
        let now = Instant::now();
        let mut q = lock(&self.quota);
        let (tokens, at) = q.get_or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Spoil `sig` if the knobs say so (see [`Knobs::wrong_signature_next`]).
    pub(crate) fn maybe_spoil(&self, sig: &mut [u8]) {
        let mut k = lock(&self.knobs);
        if k.wrong_signature_next > 0 && !sig.is_empty() {
            k.wrong_signature_next -= 1;
            let mid = sig.len() / 2;
            sig[mid] ^= 0x10;
        }
    }

    /// Issue a bearer token for `audience`.
    pub(crate) fn issue_token(&self, audience: &str) -> (String, u64) {
        let life = self.knob(|k| k.token_lifetime_s);
        let t = random_hex(24);
        lock(&self.tokens).insert(
            t.clone(),
            Token {
                audience: audience.to_owned(),
                expires: Instant::now() + Duration::from_secs(life),
            },
        );
        (t, life)
    }

    /// Check `Authorization: Bearer <t>` for `audience`: Err(reason) -> 401.
    pub(crate) fn check_bearer(
        &self,
        req: &hyper::http::request::Parts,
        audience: &str,
    ) -> Result<(), ApiError> {
        let h = req
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(ApiError::NoAuthorization)?;
        let t = h.strip_prefix("Bearer ").ok_or(ApiError::NotBearer)?;
        let tokens = lock(&self.tokens);
        let tok = tokens.get(t).ok_or(ApiError::UnknownToken)?;
        if tok.audience != audience {
            return Err(ApiError::WrongAudience {
                issued_for: tok.audience.clone(),
                wanted: audience.to_string(),
            });
        }
        if Instant::now() >= tok.expires {
            return Err(ApiError::TokenExpired);
        }
        Ok(())
    }

    /// The audience a presented bearer token was issued for, if known.
    pub(crate) fn bearer_audience(&self, req: &hyper::http::request::Parts) -> Option<String> {
        let t = req
            .headers
            .get("authorization")?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?
            .to_owned();
        lock(&self.tokens).get(&t).map(|x| x.audience.clone())
    }

    /// A key's state (enabled unless a test set another).
    pub(crate) fn key_state(&self, id: &str) -> KeyState {
        lock(&self.key_states)
            .get(id)
            .copied()
            .unwrap_or(KeyState::Enabled)
    }

    /// Make every issued token and temporary credential expire now.
    pub fn expire_all_tokens(&self) {
        let past = Instant::now();
        for t in lock(&self.tokens).values_mut() {
            t.expires = past;
        }
        for s in lock(&self.aws_secrets).values_mut() {
            if s.expires.is_some() {
                s.expires = Some(past);
            }
        }
    }

    fn https_url(&self) -> String {
        lock(&self.https_url).clone()
    }
}

/// Parse `a=b&c=d` (form bodies and query strings), percent-decoded.
pub(crate) fn parse_form(s: &str) -> HashMap<String, String> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    match u8::from_str_radix(
                        std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"),
                        16,
                    ) {
                        Ok(v) => {
                            out.push(v);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=utf-8")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap_or_default()
}

/// Verify a JWT signed with `alg` (`RS256` or `PS256`); returns (header,
/// claims).
pub(crate) fn verify_jwt(
    jwt: &str,
    rsa_public: &[u8],
    alg: &str,
) -> Result<(serde_json::Value, serde_json::Value), ApiError> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, s] = parts.as_slice() else {
        return Err(ApiError::JwtShape);
    };
    let dec = |p: &str, part| unb64url(p).ok_or(ApiError::JwtBase64 { part });
    let json = |p: &str, part| {
        serde_json::from_slice::<serde_json::Value>(&dec(p, part)?)
            .map_err(|error| ApiError::JwtJson { part, error })
    };
    let header = json(h, "header")?;
    let claims = json(c, "claims")?;
    if header["alg"] != alg {
        return Err(ApiError::JwtAlg {
            got: header["alg"].clone(),
            expected: alg.to_string(),
        });
    }
    let sig = dec(s, "signature")?;
    let verifier: &'static dyn aws_lc_rs::signature::VerificationAlgorithm = match alg {
        "PS256" => &aws_lc_rs::signature::RSA_PSS_2048_8192_SHA256,
        _ => &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(verifier, rsa_public)
        .verify(format!("{h}.{c}").as_bytes(), &sig)
        .map_err(|_| ApiError::JwtSignature)?;
    Ok((header, claims))
}

/// The RSAPublicKey (subjectPublicKey contents) of an SPKI.
pub(crate) fn rsa_public_of_spki(spki: &[u8]) -> Result<Vec<u8>, ApiError> {
    use x509_parser::prelude::FromDer;
    let (_, info) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).map_err(ApiError::Spki)?;
    Ok(info.subject_public_key.data.to_vec())
}

/// The running stand-ins.
#[derive(Debug)]
pub struct Sim {
    /// `https://127.0.0.1:<port>`: every API, over TLS.
    pub https_url: String,
    /// `http://127.0.0.1:<port>`: the same router in clear (the metadata
    /// services are plain HTTP in the clouds).
    pub http_url: String,
    /// The CA that signed the TLS certificate (PEM).
    pub ca_pem: String,
    /// Shared state (knobs, counters).
    pub state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.shutdown.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tls_material() -> Result<(String, rustls::ServerConfig), SimError> {
    let e = |what| move |source| SimError::Cert { what, source };
    let ca_key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e("CA key"))?;
    let mut ca_p = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(e("CA params"))?;
    ca_p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_p.distinguished_name
        .push(rcgen::DnType::CommonName, "keycore-kmssim CA");
    let ca_cert = ca_p.self_signed(&ca_key).map_err(e("CA cert"))?;
    let ca = rcgen::Issuer::new(ca_p, ca_key);
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e("server key"))?;
    let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    names.extend(STAND_IN_HOST_NAMES.iter().map(|n| n.to_string()));
    let mut p = rcgen::CertificateParams::new(names).map_err(e("server params"))?;
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "keycore-kmssim");
    let cert = p.signed_by(&key, &ca).map_err(e("server cert"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(SimError::Tls)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone(), ca_cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .map_err(SimError::Tls)?;
    Ok((ca_cert.pem(), cfg))
}

impl Sim {
    /// Start on 127.0.0.1 with kernel-chosen ports.
    pub fn start() -> Result<Sim, SimError> {
        Sim::start_on(0, 0)
    }

    /// Start on fixed ports (0 = any).
    pub fn start_on(https_port: u16, http_port: u16) -> Result<Sim, SimError> {
        let (ca_pem, tls) = tls_material()?;
        let state = Arc::new(State::default());
        let io = |what| move |source| SimError::Io { what, source };
        let std_https =
            std::net::TcpListener::bind(("127.0.0.1", https_port)).map_err(io("bind"))?;
        let std_http = std::net::TcpListener::bind(("127.0.0.1", http_port)).map_err(io("bind"))?;
        let (a1, a2): (SocketAddr, SocketAddr) = (
            std_https.local_addr().map_err(io("listener"))?,
            std_http.local_addr().map_err(io("listener"))?,
        );
        for l in [&std_https, &std_http] {
            l.set_nonblocking(true).map_err(io("listener"))?;
        }
        let https_url = format!("https://{a1}");
        *lock(&state.https_url) = https_url.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("kmssim".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("kmssim runtime: {e}");
                        return;
                    }
                };
                rt.block_on(async move {
                    let (Ok(https), Ok(http)) = (
                        tokio::net::TcpListener::from_std(std_https),
                        tokio::net::TcpListener::from_std(std_http),
                    ) else {
                        return;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
                    let serve_tls = {
                        let st = st.clone();
                        async move {
                            loop {
                                let Ok((sock, _)) = https.accept().await else {
                                    continue;
                                };
                                bump(&st.stats.connections);
                                let (acc, st) = (acceptor.clone(), st.clone());
                                tokio::spawn(async move {
                                    if let Ok(s) = acc.accept(sock).await {
                                        serve(TokioIo::new(s), st).await;
                                    }
                                });
                            }
                        }
                    };
                    let serve_plain = {
                        let st = st.clone();
                        async move {
                            loop {
                                let Ok((sock, _)) = http.accept().await else {
                                    continue;
                                };
                                bump(&st.stats.connections);
                                let st = st.clone();
                                tokio::spawn(async move { serve(TokioIo::new(sock), st).await });
                            }
                        }
                    };
                    tokio::select! {
                        _ = serve_tls => {}
                        _ = serve_plain => {}
                        _ = rx => {}
                    }
                });
            })
            .map_err(io("thread"))?;
        Ok(Sim {
            https_url,
            http_url: format!("http://{a2}"),
            ca_pem,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// Write the CA to `dir/kmssim-ca.pem` and return the path.
    pub fn write_ca(&self, dir: &Path) -> Result<PathBuf, SimError> {
        let p = dir.join("kmssim-ca.pem");
        std::fs::write(&p, &self.ca_pem).map_err(|source| SimError::Write {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }

    /// Change the knobs.
    pub fn knobs(&self, f: impl FnOnce(&mut Knobs)) {
        self.state.knobs(f)
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.state.stats
    }

    /// Register an Azure app with a client secret.
    pub fn azure_client_secret(&self, tenant: &str, client_id: &str, secret: &str) {
        lock(&self.state.azure_apps).insert(
            (tenant.into(), client_id.into()),
            AzureApp::Secret(secret.into()),
        );
    }

    /// Register an Azure app with a federated credential: `assertion` is
    /// the token the workload's platform writes to its token file.
    pub fn azure_federated_credential(&self, tenant: &str, client_id: &str, assertion: &str) {
        lock(&self.state.azure_apps).insert(
            (tenant.into(), client_id.into()),
            AzureApp::Federated(assertion.into()),
        );
    }

    /// Register an Azure app with a certificate (DER); its key must be RSA.
    pub fn azure_client_certificate(
        &self,
        tenant: &str,
        client_id: &str,
        cert_der: &[u8],
    ) -> Result<(), SimError> {
        use x509_parser::prelude::FromDer;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
            .map_err(SimError::Certificate)?;
        let public = cert.public_key().subject_public_key.data.to_vec();
        let thumb = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert_der);
        lock(&self.state.azure_apps).insert(
            (tenant.into(), client_id.into()),
            AzureApp::Certificate(b64url(thumb.as_ref()), public),
        );
        Ok(())
    }

    /// Add an Azure key; returns its key URI (`https://<vault>.vault.azure.net/keys/<name>/<version>`,
    /// or managedhsm when `hsm`).
    pub fn azure_key(
        &self,
        vault: &str,
        hsm: bool,
        name: &str,
        t: KeyType,
    ) -> Result<(String, Arc<SimKey>), SimError> {
        let key = Arc::new(SimKey::generate(t)?);
        let version = random_hex(16);
        lock(&self.state.azure_keys).insert(format!("/keys/{name}/{version}"), (key.clone(), hsm));
        let domain = if hsm {
            "managedhsm.azure.net"
        } else {
            "vault.azure.net"
        };
        Ok((
            format!("https://{vault}.{domain}/keys/{name}/{version}"),
            key,
        ))
    }

    /// Add a Google key version with a fixed algorithm (`RSA_SIGN_PSS_2048_SHA256`, ...).
    pub fn gcp_key(
        &self,
        name: &str,
        algorithm: &str,
        t: KeyType,
    ) -> Result<Arc<SimKey>, SimError> {
        let key = Arc::new(SimKey::generate(t)?);
        lock(&self.state.gcp_keys).insert(name.into(), (key.clone(), algorithm.into()));
        Ok(key)
    }

    /// Create a Google service account; returns its key file (JSON).
    pub fn gcp_service_account(&self, email: &str) -> Result<String, SimError> {
        let kp =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
                .map_err(|source| SimError::Cert {
                    what: "service account key",
                    source,
                })?;
        let public = rsa_public_of_spki(&SimKey::from_pkcs8(&kp.serialize_der())?.spki)
            .map_err(SimError::ServiceAccount)?;
        let key_id = random_hex(20);
        lock(&self.state.gcp_accounts).insert(
            email.into(),
            ServiceAccount {
                key_id: key_id.clone(),
                public,
            },
        );
        Ok(serde_json::json!({
            "type": "service_account",
            "project_id": "kmssim",
            "private_key_id": key_id,
            "private_key": kp.serialize_pem(),
            "client_email": email,
            "client_id": "1",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": format!("{}/token", self.https_url),
        })
        .to_string())
    }

    /// Set a key's state: `id` is an Azure key URI, a Google key version
    /// name or an AWS key ARN (as returned when the key was added).
    pub fn set_key_state(&self, id: &str, state: KeyState) {
        // Azure keys are stored by path.
        let id = match id.find("/keys/") {
            Some(i) if id.starts_with("https://") => &id[i..],
            _ => id,
        };
        lock(&self.state.key_states).insert(id.to_owned(), state);
    }

    /// The HTTPS stand-in's address (for the CONNECT proxy's name map).
    pub fn https_addr(&self) -> SocketAddr {
        self.https_url
            .trim_start_matches("https://")
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Enable the App Service identity endpoint (`/msi/token`) with this
    /// IDENTITY_HEADER value.
    pub fn azure_app_service_identity(&self, header: &str) {
        *lock(&self.state.identity_header) = Some(header.into());
    }

    /// Let STS AssumeRoleWithWebIdentity accept `token` for `role_arn`.
    pub fn aws_web_identity(&self, role_arn: &str, token: &str) {
        *lock(&self.state.web_identity) = Some((role_arn.into(), token.into()));
    }

    /// Require this `Authorization` value at the container credentials
    /// endpoint (`/v2/credentials/...`).
    pub fn aws_container_token(&self, token: &str) {
        *lock(&self.state.container_token) = Some(token.into());
    }

    /// Register an AWS access key.
    pub fn aws_access_key(&self, access_key: &str, secret: &str) {
        lock(&self.state.aws_secrets).insert(
            access_key.into(),
            AwsSecret {
                secret: secret.into(),
                session_token: None,
                expires: None,
            },
        );
    }

    /// Point `alias/<name>` (in the key's region and account) at a key;
    /// returns the alias ARN.
    pub fn aws_alias(&self, key_arn: &str, name: &str) -> String {
        let base = key_arn
            .rsplit_once(":key/")
            .map(|(b, _)| b)
            .unwrap_or(key_arn);
        let alias = format!("{base}:alias/{name}");
        lock(&self.state.aws_aliases).insert(alias.clone(), key_arn.to_owned());
        alias
    }

    /// Add an AWS KMS key (`arn:aws:kms:<region>:111122223333:key/<uuid>`,
    /// `arn:aws-cn:...` in a `cn-` region);
    /// `spec` is the KeySpec (`RSA_2048`, `ECC_NIST_P256`, ...).
    pub fn aws_key(&self, region: &str, t: KeyType) -> Result<(String, Arc<SimKey>), SimError> {
        let key = Arc::new(SimKey::generate(t)?);
        let h = random_hex(16);
        let id = format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        // The China regions are the aws-cn partition.
        let partition = if region.starts_with("cn-") {
            "aws-cn"
        } else {
            "aws"
        };
        let arn = format!("arn:{partition}:kms:{region}:111122223333:key/{id}");
        let spec = match key.kind {
            KeyKind::Rsa { bits } => format!("RSA_{bits}"),
            KeyKind::EcdsaP256 => "ECC_NIST_P256".into(),
            KeyKind::EcdsaP384 => "ECC_NIST_P384".into(),
            KeyKind::EcdsaP521 => "ECC_NIST_P521".into(),
            KeyKind::Ed25519 => "ECC_NIST_EDWARDS25519".into(),
        };
        lock(&self.state.aws_keys).insert(arn.clone(), (key.clone(), spec));
        Ok((arn, key))
    }
}

async fn serve<S>(io: TokioIo<S>, st: Arc<State>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(route(st, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, svc)
        .await;
}

async fn route(st: Arc<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"error": "body too large"}),
            )
        }
    };
    let path = parts.uri.path().to_owned();
    let r = if path.trim_end_matches('/') == cfapi::PATH {
        cfapi::certificates(&st, &parts, &body)
    } else if path.starts_with("/keys/") {
        azure::keys(&st, &parts, &body).await
    } else if path.ends_with("/oauth2/v2.0/token") {
        azure::token(&st, &parts, &body)
    } else if path == "/metadata/identity/oauth2/token" {
        azure::imds(&st, &parts)
    } else if path.starts_with("/v1/projects/") {
        gcp::kms(&st, &parts, &body).await
    } else if path == "/token" {
        gcp::token(&st, &parts, &body)
    } else if path.starts_with("/computeMetadata/") {
        gcp::metadata(&st, &parts)
    } else if path == "/"
        && parts.method == hyper::Method::POST
        && !parts.headers.contains_key("x-amz-target")
    {
        aws::sts(&st, &parts, &body)
    } else if path == "/" && parts.method == hyper::Method::POST {
        aws::kms(&st, &parts, &body).await
    } else if path == "/msi/token" {
        azure::app_service(&st, &parts)
    } else if path.starts_with("/v2/credentials/") {
        aws::container(&st, &parts)
    } else if path.starts_with("/latest/") {
        aws::imds(&st, &parts)
    } else {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"error": format!("no such path {path}")}),
        )
    };
    if r.status() == StatusCode::BAD_REQUEST {
        bump(&st.stats.bad_requests);
    }
    if r.status() == StatusCode::UNAUTHORIZED {
        bump(&st.stats.unauthorized);
    }
    r
}
