//! Credentials: OAuth bearer tokens for Azure (client secret, client
//! certificate assertion, managed identity via IMDS or the App Service
//! identity endpoint) and Google (service-account JWT grant, metadata
//! server), AWS access keys (environment, profile file, STS web identity,
//! ECS/EKS container endpoint, IMDSv2); each cached and refreshed before it
//! expires.
//!
//! Owns: [`TokenSource`], [`TokenCache`], [`AwsCredSource`], [`AwsCredCache`]
//! (both over one single-flight lease cache),
//! the JWT assertions.
//! Must not: run off the KMS runtime thread, log a secret, or block: a
//! refresh is one HTTP exchange awaited by the requests that need it (one
//! refresh at a time per cache; the others wait for its result).

use super::http::{Attempt, CallError, Http, Reply};
use super::util::{b64url, form, parse_rfc3339, pct};
use aws_lc_rs::signature::{RsaEncoding, RsaKeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use std::cell::RefCell;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use zeroize::Zeroizing;

/// Refresh this long before expiry at most (also Azure's and Google's SDK
/// habit), or at half the lifetime for short-lived tokens.
pub const REFRESH_MARGIN_MAX: Duration = Duration::from_secs(300);

/// Lifetime of the JWT assertions we sign (Google allows at most one hour).
pub const ASSERTION_LIFETIME_S: u64 = 3600;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Why a credential (key file, certificate, profile, token request) could
/// not be read or used. `what` names the file or endpoint ("service-account
/// key file /etc/..."); the underlying error is the source.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file could not be read.
    #[error("{what}")]
    Read {
        /// The file, described.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM section that does not parse.
    #[error("{what}: PEM")]
    Pem {
        /// The file, described.
        what: String,
        /// The parser's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A private key aws-lc refuses (not RSA, too small, malformed).
    #[error("{what}: not a usable RSA private key")]
    BadKey {
        /// The file, described.
        what: String,
        /// aws-lc's reason.
        #[source]
        source: aws_lc_rs::error::KeyRejected,
    },
    /// No RSA private key in the PEM.
    #[error("{what}: no RSA private key in the PEM")]
    NoKey {
        /// The file, described.
        what: String,
    },
    /// No certificate in the PEM.
    #[error("{what}: no certificate")]
    NoCertificate {
        /// The file, described.
        what: String,
        /// The parser's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// A service-account file that is not JSON.
    #[error("{what}: not JSON")]
    NotJson {
        /// The file, described.
        what: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A JSON key file of another type.
    #[error("{what}: \"type\" is {found}, expected \"service_account\"")]
    NotServiceAccount {
        /// The file, described.
        what: String,
        /// The `type` found (JSON text).
        found: String,
    },
    /// A required field missing from a key file.
    #[error("{what}: missing \"{field}\"")]
    MissingField {
        /// The file, described.
        what: String,
        /// The field.
        field: &'static str,
    },
    /// The profile is not in the credentials file or lacks a key.
    #[error("{what}: profile [{profile}] has no aws_access_key_id / aws_secret_access_key")]
    NoProfile {
        /// The file, described.
        what: String,
        /// The profile asked for.
        profile: String,
    },
    /// Signing a JWT assertion failed.
    #[error("JWT signing failed")]
    JwtSigning,
    /// A token request that cannot be built (bad URL).
    #[error("{what} {url}")]
    Request {
        /// "token request to", "IMDS request", ...
        what: &'static str,
        /// The URL.
        url: String,
        /// The HTTP library's error.
        #[source]
        source: hyper::http::Error,
    },
    /// A container credentials URL that does not parse.
    #[error("container credentials URL {url:?}")]
    ContainerUrl {
        /// The URL.
        url: String,
        /// The parser's error.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// A container credentials URL the AWS SDKs would refuse.
    #[error("container credentials URL {0:?} refused: over http only loopback, 169.254.170.2 (ECS), 169.254.170.23 or fd00:ec2::23 (EKS Pod Identity) are allowed, as in the AWS SDKs; use https for any other host")]
    ContainerUrlRefused(String),
}

/// An RSA signing key for JWT assertions (service account, client cert).
pub struct JwtKey(RsaKeyPair);

impl fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtKey(..)")
    }
}

impl JwtKey {
    /// From a PEM holding a PKCS#8 "PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY".
    pub fn from_pem(pem: &[u8], what: &str) -> Result<JwtKey, CredentialError> {
        use rustls_pki_types::pem::{PemObject, SectionKind};
        for sec in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            let (kind, der) = sec.map_err(|source| CredentialError::Pem {
                what: what.to_owned(),
                source,
            })?;
            // The decoded private key: wiped when dropped.
            let der = Zeroizing::new(der);
            let kp = match kind {
                SectionKind::PrivateKey => RsaKeyPair::from_pkcs8(&der),
                SectionKind::RsaPrivateKey => RsaKeyPair::from_der(&der),
                _ => continue,
            };
            return kp.map(JwtKey).map_err(|source| CredentialError::BadKey {
                what: what.to_owned(),
                source,
            });
        }
        Err(CredentialError::NoKey {
            what: what.to_owned(),
        })
    }

    /// `header.claims.signature` with RS256 (Google's JWT bearer grant).
    pub fn sign_jwt(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, CredentialError> {
        self.sign_jwt_with(&RSA_PKCS1_SHA256, header, claims)
    }

    /// `header.claims.signature` with PS256 (RSASSA-PSS, SHA-256, salt of
    /// the hash length, RFC 7518 3.5), as Microsoft Entra wants certificate
    /// assertions signed.
    pub fn sign_jwt_ps256(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, CredentialError> {
        self.sign_jwt_with(&RSA_PSS_SHA256, header, claims)
    }

    fn sign_jwt_with(
        &self,
        alg: &'static dyn RsaEncoding,
        header: &serde_json::Value,
        claims: &serde_json::Value,
    ) -> Result<String, CredentialError> {
        let mut msg = b64url(header.to_string().as_bytes());
        msg.push('.');
        msg.push_str(&b64url(claims.to_string().as_bytes()));
        let mut sig = vec![0u8; self.0.public_modulus_len()];
        self.0
            .sign(
                alg,
                &aws_lc_rs::rand::SystemRandom::new(),
                msg.as_bytes(),
                &mut sig,
            )
            .map_err(|_| CredentialError::JwtSigning)?;
        msg.push('.');
        msg.push_str(&b64url(&sig));
        Ok(msg)
    }
}

/// Where a bearer token comes from.
#[derive(Debug)]
pub enum TokenSource {
    /// Azure AD v2 token endpoint, client credentials with a secret.
    AzureSecret {
        /// `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`.
        token_url: String,
        /// Application (client) ID.
        client_id: String,
        /// Client secret.
        secret: String,
    },
    /// Azure AD v2, client credentials with a certificate-signed assertion:
    /// PS256 with the certificate's SHA-256 thumbprint in `x5t#S256`, as
    /// the current Microsoft Entra "certificate credentials" page specifies
    /// (the RS256 / SHA-1 `x5t` form is the older one).
    AzureCertificate {
        /// Token endpoint.
        token_url: String,
        /// Application (client) ID.
        client_id: String,
        /// The certificate's RSA key.
        key: JwtKey,
        /// base64url SHA-256 thumbprint of the certificate (`x5t#S256`).
        x5t_s256: String,
    },
    /// Azure AD workload identity federation (AKS workload identity): the
    /// platform's signed token file is the client assertion (re-read at
    /// each refresh, as the platform rotates it).
    AzureFederated {
        /// Token endpoint.
        token_url: String,
        /// Application (client) ID.
        client_id: String,
        /// AZURE_FEDERATED_TOKEN_FILE.
        token_file: PathBuf,
    },
    /// Azure managed identity via IMDS.
    AzureManagedIdentity {
        /// `http://169.254.169.254/metadata/identity/oauth2/token`.
        endpoint: String,
        /// A user-assigned identity's client ID.
        client_id: Option<String>,
    },
    /// Azure App Service / Functions / Container Apps managed identity
    /// (IDENTITY_ENDPOINT + IDENTITY_HEADER, api-version 2019-08-01).
    AzureAppService {
        /// IDENTITY_ENDPOINT.
        endpoint: String,
        /// IDENTITY_HEADER, sent as `X-IDENTITY-HEADER`.
        header: String,
        /// A user-assigned identity's client ID.
        client_id: Option<String>,
    },
    /// Google service-account key: RS256 JWT exchanged at the token URI.
    GcpServiceAccount {
        /// `https://oauth2.googleapis.com/token` (the key file's `token_uri`).
        token_url: String,
        /// `client_email`.
        email: String,
        /// `private_key_id` (JWT `kid`).
        key_id: String,
        /// `private_key`.
        key: JwtKey,
    },
    /// Google metadata server.
    GcpMetadata {
        /// `http://metadata.google.internal`.
        endpoint: String,
    },
}

/// A client secret is wiped when its source goes.
impl Drop for TokenSource {
    fn drop(&mut self) {
        if let TokenSource::AzureSecret { secret, .. } = self {
            zeroize::Zeroize::zeroize(secret);
        }
    }
}

/// A cached credential with its two moments: refresh from `refresh_at`,
/// unusable from `expires_at`.
#[derive(Debug, Clone)]
struct Lease<T> {
    value: T,
    refresh_at: Instant,
    expires_at: Instant,
}

/// One credential (a bearer token, AWS temporary keys) shared by every call
/// of a service: fetched by one caller at a time (single flight: callers
/// that find it due wait for that one fetch instead of each fetching), and
/// kept serving while a refresh fails and it has not yet expired.
#[derive(Debug)]
struct SingleFlight<T> {
    cached: RefCell<Option<Lease<T>>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl<T: Clone> SingleFlight<T> {
    fn new() -> Self {
        SingleFlight {
            cached: RefCell::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn invalidate(&self) {
        self.cached.borrow_mut().take();
    }

    fn fresh(&self) -> Option<T> {
        let c = self.cached.borrow();
        let t = c.as_ref()?;
        (Instant::now() < t.refresh_at).then(|| t.value.clone())
    }

    /// The cached value, or one from `fetch` (value and remaining lifetime)
    /// when it is due; `refreshes` counts the fetches.
    async fn get<F>(
        &self,
        refreshes: &std::sync::atomic::AtomicU64,
        fetch: F,
    ) -> Result<T, CallError>
    where
        F: std::future::Future<Output = Result<(T, Duration), CallError>>,
    {
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        let _g = self.refreshing.lock().await;
        if let Some(v) = self.fresh() {
            return Ok(v);
        }
        super::http::bump(refreshes);
        match fetch.await {
            Ok((value, life)) => {
                let (refresh_at, expires_at) = lease_times(life);
                *self.cached.borrow_mut() = Some(Lease {
                    value: value.clone(),
                    refresh_at,
                    expires_at,
                });
                Ok(value)
            }
            Err(e) => {
                // A refresh that fails while the old value still has time
                // left keeps serving with the old one.
                let c = self.cached.borrow();
                match c.as_ref() {
                    Some(t) if Instant::now() < t.expires_at => Ok(t.value.clone()),
                    _ => Err(e),
                }
            }
        }
    }
}

/// A token source for one audience, with its cached token.
#[derive(Debug)]
pub struct TokenCache {
    source: TokenSource,
    /// Azure resource (`https://vault.azure.net`) or Google scope.
    audience: String,
    /// The bearer token, wiped when replaced or dropped (each request's
    /// copy too; the copy inside the HTTP header is the HTTP stack's).
    cache: SingleFlight<Zeroizing<String>>,
}

/// A token's lifetime from its `expires_in` seconds, clamped so that a bogus
/// value cannot overflow `Instant`.
fn token_life(expires_in: u64) -> Duration {
    Duration::from_secs(expires_in.min(7 * 86_400))
}

/// When a credential living `life` from now is refreshed and when it expires:
/// refreshed `REFRESH_MARGIN_MAX` early, or at half its life if shorter.
fn lease_times(life: Duration) -> (Instant, Instant) {
    let now = Instant::now();
    let margin = REFRESH_MARGIN_MAX.min(life / 2);
    (now + life - margin, now + life)
}

fn json_u64(v: &serde_json::Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str()?.trim().parse().ok())
}

impl TokenCache {
    /// A cache for `audience`.
    pub fn new(source: TokenSource, audience: String) -> TokenCache {
        TokenCache {
            source,
            audience,
            cache: SingleFlight::new(),
        }
    }

    /// Forget the cached token (the service refused it).
    pub fn invalidate(&self) {
        self.cache.invalidate();
    }

    /// A valid token, fetching a new one when the cached one is due.
    pub async fn get(
        &self,
        http: &Http,
        deadline: Instant,
        refreshes: &std::sync::atomic::AtomicU64,
    ) -> Result<Zeroizing<String>, CallError> {
        self.cache
            .get(refreshes, async {
                let (value, expires_in) = self.fetch(http, deadline).await?;
                Ok((Zeroizing::new(value), token_life(expires_in)))
            })
            .await
    }

    async fn fetch(&self, http: &Http, deadline: Instant) -> Result<(String, u64), CallError> {
        let imds = matches!(self.source, TokenSource::AzureManagedIdentity { .. });
        let mut wait = IMDS_RETRY_FIRST;
        let mut tries = 0u32;
        let mut last: Option<StatusCode> = None;
        loop {
            let req = self
                .request()
                .map_err(|e| CallError::Service(keycore_keys::error_chain(&e)))?;
            let r = match http.send(req, deadline).await {
                Ok(r) => r,
                // After transient answers, say so rather than only "timeout".
                Err(e) => {
                    return Err(match last {
                        Some(s) => CallError::Transport(format!(
                        "Azure IMDS token endpoint: HTTP {} (transient) {tries} times, then: {e}",
                        s.as_u16()
                    )),
                        None => e,
                    })
                }
            };
            tries += 1;
            last = Some(r.status);
            if !(imds && imds_transient(r.status)) {
                return parse_token_reply(&r);
            }
            // Azure IMDS answers 404 and 410 while it is still updating (410:
            // "available within 70 seconds"), 429 when called too often and
            // 5xx for transient faults; Microsoft says to retry all of them
            // with backoff. Retried here, until the caller's deadline.
            let pause = r.retry_after().unwrap_or(wait).min(IMDS_RETRY_MAX);
            if Instant::now() + pause >= deadline {
                return Err(CallError::Transport(format!(
                    "Azure IMDS token endpoint: HTTP {} after {tries} tries (transient: IMDS is updating or busy; retried until the deadline): {}",
                    r.status.as_u16(),
                    r.snippet()
                )));
            }
            tokio::time::sleep(pause).await;
            wait = (wait * 2).min(IMDS_RETRY_MAX);
        }
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, CredentialError> {
        let post = |url: &str, body: String| {
            Request::builder()
                .method(Method::POST)
                .uri(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(Full::new(Bytes::from(body)))
                .map_err(|source| CredentialError::Request {
                    what: "token request to",
                    url: url.to_owned(),
                    source,
                })
        };
        match &self.source {
            TokenSource::AzureSecret {
                token_url,
                client_id,
                secret,
            } => {
                let scope = format!("{}/.default", self.audience);
                post(
                    token_url,
                    form(&[
                        ("client_id", client_id),
                        ("scope", &scope),
                        ("client_secret", secret),
                        ("grant_type", "client_credentials"),
                    ]),
                )
            }
            TokenSource::AzureFederated {
                token_url,
                client_id,
                token_file,
            } => {
                let assertion = std::fs::read_to_string(token_file).map_err(|source| {
                    CredentialError::Read {
                        what: format!("federated token file {}", token_file.display()),
                        source,
                    }
                })?;
                let scope = format!("{}/.default", self.audience);
                post(
                    token_url,
                    form(&[
                        ("client_id", client_id),
                        ("scope", &scope),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", assertion.trim()),
                        ("grant_type", "client_credentials"),
                    ]),
                )
            }
            TokenSource::AzureCertificate {
                token_url,
                client_id,
                key,
                x5t_s256,
            } => {
                let now = unix_now();
                let header =
                    serde_json::json!({"alg": "PS256", "typ": "JWT", "x5t#S256": x5t_s256});
                let claims = serde_json::json!({
                    "aud": token_url, "iss": client_id, "sub": client_id,
                    "jti": format!("{:032x}", rand_u128()),
                    "nbf": now, "iat": now, "exp": now + 600,
                });
                let jwt = key.sign_jwt_ps256(&header, &claims)?;
                let scope = format!("{}/.default", self.audience);
                post(
                    token_url,
                    form(&[
                        ("client_id", client_id),
                        ("scope", &scope),
                        (
                            "client_assertion_type",
                            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        ),
                        ("client_assertion", &jwt),
                        ("grant_type", "client_credentials"),
                    ]),
                )
            }
            TokenSource::AzureManagedIdentity {
                endpoint,
                client_id,
            } => {
                let mut url = format!(
                    "{endpoint}?api-version=2018-02-01&resource={}",
                    pct(&self.audience)
                );
                if let Some(c) = client_id {
                    url.push_str(&format!("&client_id={}", pct(c)));
                }
                Request::builder()
                    .method(Method::GET)
                    .uri(&url)
                    .header("Metadata", "true")
                    .body(Full::new(Bytes::new()))
                    .map_err(|source| CredentialError::Request {
                        what: "IMDS request",
                        url: url.clone(),
                        source,
                    })
            }
            TokenSource::AzureAppService {
                endpoint,
                header,
                client_id,
            } => {
                let mut url = format!(
                    "{endpoint}?api-version=2019-08-01&resource={}",
                    pct(&self.audience)
                );
                if let Some(c) = client_id {
                    url.push_str(&format!("&client_id={}", pct(c)));
                }
                Request::builder()
                    .method(Method::GET)
                    .uri(&url)
                    .header("X-IDENTITY-HEADER", header.as_str())
                    .body(Full::new(Bytes::new()))
                    .map_err(|source| CredentialError::Request {
                        what: "identity endpoint request",
                        url: url.clone(),
                        source,
                    })
            }
            TokenSource::GcpServiceAccount {
                token_url,
                email,
                key_id,
                key,
            } => {
                let now = unix_now();
                let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": key_id});
                let claims = serde_json::json!({
                    "iss": email, "scope": self.audience, "aud": token_url,
                    "iat": now, "exp": now + ASSERTION_LIFETIME_S,
                });
                let jwt = key.sign_jwt(&header, &claims)?;
                post(
                    token_url,
                    form(&[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", &jwt),
                    ]),
                )
            }
            TokenSource::GcpMetadata { endpoint } => {
                let url = format!(
                    "{endpoint}/computeMetadata/v1/instance/service-accounts/default/token"
                );
                Request::builder()
                    .method(Method::GET)
                    .uri(&url)
                    .header("Metadata-Flavor", "Google")
                    .body(Full::new(Bytes::new()))
                    .map_err(|source| CredentialError::Request {
                        what: "metadata request",
                        url: url.clone(),
                        source,
                    })
            }
        }
    }
}

/// First pause after a transient Azure IMDS answer; doubles per try.
pub const IMDS_RETRY_FIRST: Duration = Duration::from_millis(500);

/// Longest pause between two Azure IMDS tries (also caps its Retry-After).
pub const IMDS_RETRY_MAX: Duration = Duration::from_secs(8);

/// Azure IMDS answers worth another try ("Azure Instance Metadata Service:
/// error and debugging"; managed identities "How to use managed identities
/// on a VM": 404 and 410 while IMDS updates, 429, 5xx). A 400 (no such
/// identity, bad resource) is final.
pub fn imds_transient(status: StatusCode) -> bool {
    matches!(status.as_u16(), 404 | 410 | 429) || status.is_server_error()
}

/// `{"access_token": ..., "expires_in": N}` (N a number, or a string as
/// Azure IMDS sends it).
pub(crate) fn parse_token_reply(r: &Reply) -> Result<(String, u64), CallError> {
    if r.status != StatusCode::OK {
        let why = format!(
            "token endpoint: HTTP {}: {}",
            r.status.as_u16(),
            r.snippet()
        );
        // A throttled or failing token endpoint is worth another try (the
        // operation's retry loop makes it); a refusal (400/401) is not.
        return Err(
            if r.status == StatusCode::TOO_MANY_REQUESTS || r.status.is_server_error() {
                CallError::Transport(why)
            } else {
                CallError::Service(why)
            },
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .map_err(|e| CallError::Service(format!("token endpoint: bad JSON: {e}")))?;
    let tok = v["access_token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| CallError::Service("token endpoint: no access_token".into()))?;
    // expires_in (seconds); Azure App Service identity answers only
    // expires_on (Unix seconds); neither: assume a short life.
    let exp = json_u64(&v["expires_in"])
        .or_else(|| json_u64(&v["expires_on"]).map(|on| on.saturating_sub(unix_now())))
        .unwrap_or(300)
        .max(1);
    Ok((tok.to_owned(), exp))
}

/// A few random bits for JWT IDs (not secret, only unique).
pub fn rand_u128() -> u128 {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    u128::from_le_bytes(b)
}

/// Read and parse a Google service-account key file.
pub fn gcp_service_account(
    path: &Path,
    token_url_override: Option<&str>,
) -> Result<TokenSource, CredentialError> {
    let what = format!("service-account key file {}", path.display());
    // The file holds the private key: its bytes are wiped when dropped
    // (the parsed JSON's copy is not, see SECURITY.md).
    let text = Zeroizing::new(std::fs::read(path).map_err(|source| CredentialError::Read {
        what: what.clone(),
        source,
    })?);
    let v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| CredentialError::NotJson {
            what: what.clone(),
            source,
        })?;
    if v["type"] != "service_account" {
        return Err(CredentialError::NotServiceAccount {
            what,
            found: v["type"].to_string(),
        });
    }
    let field = |field: &'static str| -> Result<String, CredentialError> {
        v[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| CredentialError::MissingField {
                what: what.clone(),
                field,
            })
    };
    let key = JwtKey::from_pem(Zeroizing::new(field("private_key")?).as_bytes(), &what)?;
    let token_url = match token_url_override {
        Some(u) => u.to_owned(),
        None => v["token_uri"]
            .as_str()
            .unwrap_or("https://oauth2.googleapis.com/token")
            .to_owned(),
    };
    Ok(TokenSource::GcpServiceAccount {
        token_url,
        email: field("client_email")?,
        key_id: v["private_key_id"].as_str().unwrap_or_default().to_owned(),
        key,
    })
}

/// Load an Azure client certificate PEM (certificate + private key in one
/// file, as `AZURE_CLIENT_CERTIFICATE_PATH` holds): the key and `x5t#S256`.
pub fn azure_certificate(path: &Path) -> Result<(JwtKey, String), CredentialError> {
    use rustls_pki_types::pem::PemObject;
    let what = format!("client certificate {}", path.display());
    // Certificate and private key: wiped when dropped.
    let pem = Zeroizing::new(std::fs::read(path).map_err(|source| CredentialError::Read {
        what: what.clone(),
        source,
    })?);
    let cert = rustls_pki_types::CertificateDer::from_pem_slice(&pem).map_err(|source| {
        CredentialError::NoCertificate {
            what: what.clone(),
            source,
        }
    })?;
    let key = JwtKey::from_pem(&pem, &what)?;
    let thumb = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &cert);
    Ok((key, b64url(thumb.as_ref())))
}

/// AWS access key.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCreds {
    /// Access key ID.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token (temporary credentials).
    pub session_token: Option<String>,
}

/// The secret key and session token are wiped when the credentials go (a
/// refresh replaces them; only the access key ID is not a secret).
impl Drop for AwsCreds {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.secret_key);
        if let Some(t) = &mut self.session_token {
            zeroize::Zeroize::zeroize(t);
        }
    }
}

impl fmt::Debug for AwsCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsCreds")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Where AWS credentials come from.
#[derive(Debug)]
pub enum AwsCredSource {
    /// Fixed (environment variables or a profile file read at start-up).
    Static(AwsCreds),
    /// EC2 instance metadata, IMDSv2 (session token first).
    Imds {
        /// `http://169.254.169.254`.
        endpoint: String,
    },
    /// EKS IRSA and other OIDC federation: STS AssumeRoleWithWebIdentity
    /// with the token file's JWT (re-read at each renewal).
    WebIdentity {
        /// AWS_WEB_IDENTITY_TOKEN_FILE.
        token_file: PathBuf,
        /// AWS_ROLE_ARN.
        role_arn: String,
        /// AWS_ROLE_SESSION_NAME (default `keycore`).
        session_name: String,
        /// STS endpoint, e.g. `https://sts.eu-west-1.amazonaws.com`.
        sts_endpoint: String,
    },
    /// ECS task role or EKS Pod Identity: the container credentials endpoint.
    Container {
        /// `http://169.254.170.2<AWS_CONTAINER_CREDENTIALS_RELATIVE_URI>` or
        /// AWS_CONTAINER_CREDENTIALS_FULL_URI.
        url: String,
        /// `Authorization` header value, or the file it is read from on
        /// every refresh (EKS rotates it).
        auth: Option<ContainerAuth>,
    },
}

/// How the container credentials endpoint is authorized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerAuth {
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN.
    Token(String),
    /// AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE.
    File(PathBuf),
}

/// Read `[profile]` from a shared credentials file.
pub fn aws_profile(path: &Path, profile: &str) -> Result<AwsCreds, CredentialError> {
    let what = format!("AWS credentials file {}", path.display());
    // Secret access keys: the file's text is wiped when dropped.
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
                what: what.clone(),
                source,
            })?,
        );
    let mut in_section = false;
    let (mut ak, mut sk, mut st) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            let name = name.trim();
            in_section =
                name == profile || name.strip_prefix("profile ").map(str::trim) == Some(profile);
            continue;
        }
        if !in_section {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = Some(v.trim().to_owned());
            match k.trim() {
                "aws_access_key_id" => ak = v,
                "aws_secret_access_key" => sk = v,
                "aws_session_token" => st = v,
                _ => {}
            }
        }
    }
    match (ak, sk) {
        (Some(access_key), Some(secret_key)) => Ok(AwsCreds {
            access_key,
            secret_key,
            session_token: st,
        }),
        _ => Err(CredentialError::NoProfile {
            what,
            profile: profile.to_owned(),
        }),
    }
}

/// AWS credentials with refresh for the IMDS source.
#[derive(Debug)]
pub struct AwsCredCache {
    source: AwsCredSource,
    cache: SingleFlight<AwsCreds>,
}

impl AwsCredCache {
    /// A cache over `source`.
    pub fn new(source: AwsCredSource) -> AwsCredCache {
        AwsCredCache {
            source,
            cache: SingleFlight::new(),
        }
    }

    /// Drop cached temporary credentials (refused by the service).
    pub fn invalidate(&self) {
        self.cache.invalidate();
    }

    /// Valid credentials.
    pub async fn get(
        &self,
        http: &Http,
        deadline: Instant,
        refreshes: &std::sync::atomic::AtomicU64,
    ) -> Result<AwsCreds, CallError> {
        if let AwsCredSource::Static(c) = &self.source {
            return Ok(c.clone());
        }
        self.cache
            .get(refreshes, async {
                let (creds, expires_unix) = self.fetch(http, deadline).await?;
                // Clamped: a far-future or bogus Expiration must not overflow Instant.
                let left = Duration::from_secs(
                    expires_unix.saturating_sub(unix_now()).clamp(1, 7 * 86_400),
                );
                Ok((creds, left))
            })
            .await
    }

    async fn fetch(&self, http: &Http, deadline: Instant) -> Result<(AwsCreds, u64), CallError> {
        match &self.source {
            AwsCredSource::Imds { endpoint } => imds_credentials(http, endpoint, deadline).await,
            AwsCredSource::Container { url, auth } => {
                container_credentials(http, url, auth.as_ref(), deadline).await
            }
            AwsCredSource::WebIdentity {
                token_file,
                role_arn,
                session_name,
                sts_endpoint,
            } => {
                web_identity_credentials(
                    http,
                    token_file,
                    role_arn,
                    session_name,
                    sts_endpoint,
                    deadline,
                )
                .await
            }
            AwsCredSource::Static(c) => Ok((c.clone(), u64::MAX)),
        }
    }
}

/// IMDSv2: PUT a session token, GET the role name, GET the role's keys.
async fn imds_credentials(
    http: &Http,
    endpoint: &str,
    deadline: Instant,
) -> Result<(AwsCreds, u64), CallError> {
    let send = |method: Method, url: String, token: Option<&str>| {
        let mut b = Request::builder().method(method).uri(url);
        b = match token {
            Some(t) => b.header("x-aws-ec2-metadata-token", t),
            None => b.header("x-aws-ec2-metadata-token-ttl-seconds", "21600"),
        };
        b.body(Full::new(Bytes::new()))
            .map_err(|e| CallError::Service(format!("IMDS request: {e}")))
    };
    let ok = |r: Reply, what: &str| -> Result<String, CallError> {
        if r.status != StatusCode::OK {
            return Err(CallError::Service(format!(
                "IMDS {what}: HTTP {}: {}",
                r.status.as_u16(),
                r.snippet()
            )));
        }
        Ok(String::from_utf8_lossy(&r.body).trim().to_owned())
    };
    let token = ok(
        http.send(
            send(Method::PUT, format!("{endpoint}/latest/api/token"), None)?,
            deadline,
        )
        .await?,
        "session token",
    )?;
    let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
    let role = ok(
        http.send(send(Method::GET, base.clone(), Some(&token))?, deadline)
            .await?,
        "role",
    )?;
    let role = role.lines().next().unwrap_or_default().to_owned();
    if role.is_empty() {
        return Err(CallError::Service(
            "IMDS: no IAM role attached to the instance".into(),
        ));
    }
    let body = ok(
        http.send(
            send(Method::GET, format!("{base}{role}"), Some(&token))?,
            deadline,
        )
        .await?,
        "credentials",
    )?;
    role_credentials(&body, "IMDS")
}

/// The text of `<tag>...</tag>` in an XML answer (STS's query protocol
/// answers in XML; only flat, unique leaf elements are read).
fn xml_leaf(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim().to_owned())
}

/// STS AssumeRoleWithWebIdentity (unsigned; the web identity token is the
/// credential).
async fn web_identity_credentials(
    http: &Http,
    token_file: &Path,
    role_arn: &str,
    session_name: &str,
    sts_endpoint: &str,
    deadline: Instant,
) -> Result<(AwsCreds, u64), CallError> {
    let token = std::fs::read_to_string(token_file).map_err(|e| {
        CallError::Service(format!(
            "web identity token file {}: {e}",
            token_file.display()
        ))
    })?;
    let body = form(&[
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session_name),
        ("WebIdentityToken", token.trim()),
    ]);
    let url = format!("{}/", sts_endpoint.trim_end_matches('/'));
    let req = Request::builder()
        .method(Method::POST)
        .uri(&url)
        .header(
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8",
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| CallError::Service(format!("STS request {url}: {e}")))?;
    let r = http.send(req, deadline).await?;
    let text = String::from_utf8_lossy(&r.body).into_owned();
    if r.status != StatusCode::OK {
        let why = format!(
            "STS AssumeRoleWithWebIdentity: HTTP {}: {}",
            r.status.as_u16(),
            xml_leaf(&text, "Code").unwrap_or_else(|| r.snippet())
        );
        return Err(
            if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS {
                CallError::Transport(why)
            } else {
                CallError::Service(why)
            },
        );
    }
    match (
        xml_leaf(&text, "AccessKeyId"),
        xml_leaf(&text, "SecretAccessKey"),
    ) {
        (Some(access_key), Some(secret_key)) => Ok((
            AwsCreds {
                access_key,
                secret_key,
                session_token: xml_leaf(&text, "SessionToken"),
            },
            xml_leaf(&text, "Expiration")
                .and_then(|e| parse_rfc3339(&e))
                .unwrap_or(unix_now() + 300),
        )),
        _ => Err(CallError::Service("STS answer has no Credentials".into())),
    }
}

/// The global STS endpoint: only for the `aws` partition.
pub const GLOBAL_STS_ENDPOINT: &str = "https://sts.amazonaws.com";

/// DNS suffix of the partition a region belongs to: the China regions
/// (`cn-north-1`, `cn-northwest-1`: partition `aws-cn`) are under
/// `amazonaws.com.cn`, every `aws` and `aws-us-gov` region under
/// `amazonaws.com` (AWS General Reference, "AWS Security Token Service
/// endpoints": `sts.cn-north-1.amazonaws.com.cn`). The other partitions
/// (ISO) are not served by keycore (uri.rs accepts aws, aws-cn,
/// aws-us-gov).
pub fn aws_dns_suffix(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    }
}

/// STS endpoint for a region: `https://sts.<region>.<suffix>`; without a
/// region, the global endpoint.
pub fn sts_endpoint(region: Option<&str>) -> String {
    match region.map(str::trim).filter(|r| !r.is_empty()) {
        Some(r) => format!("https://sts.{r}.{}", aws_dns_suffix(r)),
        None => GLOBAL_STS_ENDPOINT.to_owned(),
    }
}

/// The STS endpoint to use for keys in `key_region`: the configured one,
/// except that the global endpoint (chosen when no AWS_REGION was set) is
/// replaced by the key's regional endpoint. The global endpoint serves only
/// the `aws` partition: a China-region role ARN (`arn:aws-cn:...`) must go
/// to `sts.<region>.amazonaws.com.cn`.
pub fn sts_endpoint_for_key(configured: &str, key_region: &str) -> String {
    if configured.trim_end_matches('/') == GLOBAL_STS_ENDPOINT {
        sts_endpoint(Some(key_region))
    } else {
        configured.to_owned()
    }
}

/// Whether the container credentials URL may be used, as the AWS SDKs
/// decide for AWS_CONTAINER_CREDENTIALS_FULL_URI: any `https` URL; a plain
/// `http` URL only to a loopback address (127.0.0.0/8, ::1, `localhost`),
/// the ECS agent (169.254.170.2) or the EKS Pod Identity agent
/// (169.254.170.23, fd00:ec2::23). Credentials are never fetched in clear
/// from anywhere else. The SDKs resolve a host name and check every
/// address; keycore does not resolve here and refuses other names over
/// http.
pub fn container_url_allowed(url: &str) -> Result<(), CredentialError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|source| CredentialError::ContainerUrl {
            url: url.to_owned(),
            source,
        })?;
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => {
            host.eq_ignore_ascii_case("localhost")
                || match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => {
                        ip.is_loopback()
                            || ip == std::net::IpAddr::from([169, 254, 170, 2])
                            || ip == std::net::IpAddr::from([169, 254, 170, 23])
                            || ip == std::net::IpAddr::from([0xfd00u16, 0xec2, 0, 0, 0, 0, 0, 0x23])
                    }
                    Err(_) => false,
                }
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(CredentialError::ContainerUrlRefused(url.to_owned()))
    }
}

/// ECS / EKS Pod Identity: one GET, the same JSON as IMDS.
async fn container_credentials(
    http: &Http,
    url: &str,
    auth: Option<&ContainerAuth>,
    deadline: Instant,
) -> Result<(AwsCreds, u64), CallError> {
    container_url_allowed(url).map_err(|e| CallError::Service(keycore_keys::error_chain(&e)))?;
    let mut b = Request::builder().method(Method::GET).uri(url);
    match auth {
        None => {}
        Some(ContainerAuth::Token(t)) => b = b.header("authorization", t.trim()),
        Some(ContainerAuth::File(p)) => {
            let t = std::fs::read_to_string(p).map_err(|e| {
                CallError::Service(format!(
                    "container credentials token file {}: {e}",
                    p.display()
                ))
            })?;
            b = b.header("authorization", t.trim());
        }
    }
    let req = b
        .body(Full::new(Bytes::new()))
        .map_err(|e| CallError::Service(format!("container credentials request {url}: {e}")))?;
    let r = http.send(req, deadline).await?;
    if r.status != StatusCode::OK {
        let why = format!(
            "container credentials {url}: HTTP {}: {}",
            r.status.as_u16(),
            r.snippet()
        );
        return Err(
            if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS {
                CallError::Transport(why)
            } else {
                CallError::Service(why)
            },
        );
    }
    role_credentials(&String::from_utf8_lossy(&r.body), "container credentials")
}

/// `{"AccessKeyId", "SecretAccessKey", "Token", "Expiration"}`.
fn role_credentials(body: &str, what: &str) -> Result<(AwsCreds, u64), CallError> {
    let v: serde_json::Value = serde_json::from_str(body)
        .map_err(|e| CallError::Service(format!("{what}: bad JSON: {e}")))?;
    let s = |k: &str| v[k].as_str().map(str::to_owned);
    match (s("AccessKeyId"), s("SecretAccessKey")) {
        (Some(access_key), Some(secret_key)) => {
            let exp = s("Expiration")
                .and_then(|e| parse_rfc3339(&e))
                .unwrap_or(unix_now() + 300);
            Ok((
                AwsCreds {
                    access_key,
                    secret_key,
                    session_token: s("Token"),
                },
                exp,
            ))
        }
        _ => Err(CallError::Service(format!(
            "{what}: missing AccessKeyId / SecretAccessKey"
        ))),
    }
}

/// The judgement of a service answer common to bearer-token APIs: success,
/// or a 401 that drops the cached token.
pub fn judge_bearer<T>(
    cache: &TokenCache,
    r: &Reply,
    ok: impl FnOnce(&Reply) -> Attempt<T>,
) -> Attempt<T> {
    if r.status == StatusCode::OK {
        return ok(r);
    }
    if r.status == StatusCode::UNAUTHORIZED {
        cache.invalidate();
    }
    Attempt::status(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_file_sections() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("credentials");
        std::fs::write(
            &p,
            "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n# comment\n[profile edge]\naws_access_key_id=AKIDEDGE\naws_secret_access_key=s2\naws_session_token=tok\n[empty]\n",
        )
        .unwrap();
        let d = aws_profile(&p, "default").unwrap();
        assert_eq!(
            (d.access_key.as_str(), d.session_token.as_deref()),
            ("AKIDDEFAULT", None)
        );
        let e = aws_profile(&p, "edge").unwrap();
        assert_eq!(e.secret_key, "s2");
        assert_eq!(e.session_token.as_deref(), Some("tok"));
        let err = aws_profile(&p, "empty").unwrap_err().to_string();
        assert!(
            err.contains("[empty]") && err.contains("credentials"),
            "{err}"
        );
        assert!(aws_profile(&dir.path().join("none"), "default").is_err());
    }

    #[test]
    fn token_reply_parsing() {
        let mk = |status: u16, body: &'static str| Reply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: Bytes::from_static(body.as_bytes()),
        };
        assert_eq!(
            parse_token_reply(&mk(
                200,
                r#"{"access_token":"t","expires_in":3599,"token_type":"Bearer"}"#
            ))
            .unwrap(),
            ("t".into(), 3599)
        );
        // Azure IMDS sends expires_in as a string.
        assert_eq!(
            parse_token_reply(&mk(200, r#"{"access_token":"t","expires_in":"86399"}"#))
                .unwrap()
                .1,
            86399
        );
        assert!(matches!(
            parse_token_reply(&mk(400, r#"{"error":"invalid_client"}"#)),
            Err(CallError::Service(_))
        ));
        assert!(matches!(
            parse_token_reply(&mk(503, "busy")),
            Err(CallError::Transport(_))
        ));
        assert!(parse_token_reply(&mk(200, r#"{"expires_in":1}"#)).is_err());
    }

    #[test]
    fn container_url_hosts_as_the_sdks_allow() {
        for ok in [
            "http://169.254.170.2/v2/credentials/x",
            "http://169.254.170.23/v1/credentials",
            "http://[fd00:ec2::23]/v1/credentials",
            "http://127.0.0.1:8080/creds",
            "http://127.1.2.3/creds",
            "http://[::1]:9/creds",
            "http://localhost/creds",
            "https://creds.example.com/x",
        ] {
            assert!(container_url_allowed(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.5/creds",
            "http://169.254.169.254/latest",
            "http://creds.example.com/x",
            "ftp://127.0.0.1/x",
        ] {
            let e = keycore_keys::error_chain(&container_url_allowed(bad).unwrap_err());
            assert!(e.contains("refused") || e.contains("URL"), "{bad}: {e}");
        }
    }

    #[test]
    fn sts_endpoints_follow_the_partition() {
        assert_eq!(
            sts_endpoint(Some("cn-north-1")),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            sts_endpoint(Some("cn-northwest-1")),
            "https://sts.cn-northwest-1.amazonaws.com.cn"
        );
        assert_eq!(
            sts_endpoint(Some("eu-west-1")),
            "https://sts.eu-west-1.amazonaws.com"
        );
        assert_eq!(
            sts_endpoint(Some("us-gov-west-1")),
            "https://sts.us-gov-west-1.amazonaws.com"
        );
        assert_eq!(sts_endpoint(None), GLOBAL_STS_ENDPOINT);
        // No region configured: the key's region decides (China keys never
        // go to the global endpoint); an explicit endpoint is kept.
        assert_eq!(
            sts_endpoint_for_key(GLOBAL_STS_ENDPOINT, "cn-north-1"),
            "https://sts.cn-north-1.amazonaws.com.cn"
        );
        assert_eq!(
            sts_endpoint_for_key("https://sts.vpce.example", "cn-north-1"),
            "https://sts.vpce.example"
        );
    }

    #[test]
    fn imds_statuses_that_are_retried() {
        for s in [404u16, 410, 429, 500, 503] {
            assert!(imds_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400u16, 401, 403] {
            assert!(!imds_transient(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn xml_leaves() {
        let x = "<R><Credentials><AccessKeyId>ASIA1</AccessKeyId><Expiration>2026-01-01T00:00:00Z</Expiration></Credentials></R>";
        assert_eq!(xml_leaf(x, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_leaf(x, "SessionToken"), None);
    }

    #[test]
    fn refresh_margin_is_at_most_half_the_lifetime() {
        let (refresh, expiry) = lease_times(token_life(2));
        let d = expiry - refresh;
        assert_eq!(d, Duration::from_secs(1));
        let (refresh, expiry) = lease_times(token_life(3600));
        assert_eq!(expiry - refresh, REFRESH_MARGIN_MAX);
        // A bogus lifetime does not overflow.
        let (_, expiry) = lease_times(token_life(u64::MAX));
        assert!(expiry > Instant::now());
    }

    #[test]
    fn jwt_has_three_parts_and_verifies() {
        let kp = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&kp).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            super::super::util::b64(der.as_ref())
        );
        let key = JwtKey::from_pem(pem.as_bytes(), "test").unwrap();
        let jwt = key
            .sign_jwt(
                &serde_json::json!({"alg":"RS256"}),
                &serde_json::json!({"iss":"x"}),
            )
            .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = super::super::util::unb64url(parts[2]).unwrap();
        let pk = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            aws_lc_rs::signature::KeyPair::public_key(&kp)
                .as_ref()
                .to_vec(),
        );
        pk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .unwrap();
    }
}
