//! Cloud key services over REST: Azure Key Vault / Managed HSM, Google
//! Cloud KMS, AWS KMS.
//!
//! Interface with the server (fixed; the implementation grows behind it):
//! - control plane: [`KmsStore::open`] is called once at start-up (by the
//!   engine's backend registry, for the store entries [`KmsStore::handles`]
//!   claims) with the `uri: https://...vault.azure.net/...`, `projects/...`
//!   and `arn:aws:kms:...` stores; it fetches every key's public half and
//!   yields `KeyEntry`s whose backend is a `StoreKey` of this store;
//! - data plane: [`KmsStore::submit`] (through `CoreStore::perform`) hands
//!   one operation to the HTTP runtime thread and returns a future the
//!   reactor awaits; it never blocks the reactor (a bounded `try_send`; a
//!   full queue answers `CRYPTO` at once).
//!
//! Why a crate: tokio, hyper and the REST clients live only here, so a
//! server built without the `kms` feature does not compile them; it depends
//! on `keycore-keys` for key identity and the backend seam, never on the
//! server. Public surface: [`KmsStore`], [`KmsOptions`], [`KmsError`],
//! [`KeyRef`], [`AzureCredential`], [`GcpCredential`], [`AwsCredential`],
//! [`ContainerAuth`], [`DEFAULT_QUEUE_DEPTH`].
//!
//! The runtime thread ("keycore-kms") runs a current-thread tokio runtime
//! with one hyper client (keep-alive pool, rustls on aws-lc-rs); tokens,
//! per-service limits, retries and timeouts live there (http.rs, auth.rs).
//! Completions travel back on a tokio oneshot, whose receiver is an ordinary
//! waker-based future: the sender wakes the glommio task from the runtime
//! thread, which glommio 0.9 supports (see `pkcs11::dispatch`'s
//! `foreign_thread_wakes_glommio_task`). Every request is answered: success,
//! an error, or `CRYPTO` at the operation deadline or if the thread is gone.
//! Every returned signature is checked against the key's public half before
//! it is passed on (verify.rs).
//!
//! Files: uri.rs (accepted URI forms), azure.rs / gcp.rs / aws.rs (one
//! service each: op map, request and answer shapes), auth.rs (credentials),
//! http.rs (client, limits, retries, proxy), verify.rs, util.rs.
//!
//! Endpoints, rates, timeouts, CA file and the verify switch are config keys
//! (`kms_*`, keycore-config's table, with the older `KEYCORE_*` variable
//! names as aliases); credentials stay environment-only:
//! [`KmsOptions::new`] (documented there and in docs/kms/).

mod auth;
mod aws;
mod azure;
// Also built for this crate's tests, so `cargo clippy --all-targets`
// (land.sh, CI) catches a change that breaks the fuzz entry points.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod gcp;
mod http;
mod uri;
mod util;
mod verify;

pub use auth::ContainerAuth;

use http::{bump, CallError, Http, Limits, Service, ServiceStats};
use keycore_config::KmsSettings;
use keycore_keys::{
    legacy_digest_from_spki, ski_from_spki, Backend, CoreStore, KeyEntry, KeyKind, KeyStore,
    MetricKind, Outcome, PromWriter, StoreId, StoreKey, StoreStatus,
};
use keycore_protocol::{ErrorCode, OpClass, Ski, CERT_DIGEST_LEN};
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use uri::KeyUri;

/// Operations queued for the runtime thread before `submit` answers `CRYPTO`
/// at once; also the most the runtime works on at a time (so at most twice
/// this many are accepted). Sized for bursts: at the services' own limits (a
/// few hundred per second) this is several seconds of work, past any sane
/// deadline, which counts from the moment an operation is queued.
pub const DEFAULT_QUEUE_DEPTH: usize = 4096;

/// Which key a request is for (index into the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef(pub u32);

/// Start-up failure: names the URI, the service or the setting involved.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// A URI that does not parse.
    #[error(transparent)]
    Uri(#[from] uri::UriError),
    /// Credentials missing or unreadable.
    #[error("{service} credentials: {reason}")]
    Credentials {
        /// "Azure", "Google Cloud", "AWS".
        service: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A credential file or certificate that cannot be read or used.
    #[error("{service} credentials")]
    CredentialFile {
        /// "Azure", "Google Cloud", "AWS".
        service: &'static str,
        /// Which file and what is wrong with it.
        #[source]
        source: auth::CredentialError,
    },
    /// The HTTPS client could not be set up (proxy, CA bundle, TLS).
    #[error("{what}")]
    HttpClient {
        /// "setting HTTPS_PROXY" or "KMS runtime".
        what: &'static str,
        /// Which URL or file and what is wrong with it.
        #[source]
        source: http::SetupError,
    },
    /// A key whose public half could not be fetched or is not served.
    #[error("key {uri}: {reason}")]
    Key {
        /// The key URI.
        uri: String,
        /// Why.
        reason: String,
    },
    /// A setting with a bad value (from the config layer: names the file
    /// line, variable or flag).
    #[error(transparent)]
    Config(#[from] keycore_config::ConfigError),
    /// A setting (environment variable) with a bad value.
    #[error("setting {name}: {reason}")]
    Setting {
        /// Variable name.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// The runtime thread could not be started.
    #[error("KMS runtime: cannot start thread")]
    Thread(#[source] std::io::Error),
    /// The runtime thread could not build its tokio runtime.
    #[error("KMS runtime: tokio runtime")]
    Tokio(#[source] std::io::Error),
    /// The public keys were not all fetched within `wait` (the start-up
    /// timeout plus 5 s): raise `kms_startup_timeout` or check the service.
    #[error("KMS runtime: fetching the public keys took longer than {wait:?}")]
    SetupTimeout {
        /// How long start-up waited.
        wait: Duration,
    },
}

/// How Azure authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AzureCredential {
    /// App registration with a client secret (AZURE_TENANT_ID, AZURE_CLIENT_ID, AZURE_CLIENT_SECRET).
    ClientSecret {
        /// Tenant (directory) ID.
        tenant: String,
        /// Application (client) ID.
        client_id: String,
        /// Secret.
        secret: String,
    },
    /// App registration with a certificate (AZURE_CLIENT_CERTIFICATE_PATH: PEM with cert + key).
    ClientCertificate {
        /// Tenant (directory) ID.
        tenant: String,
        /// Application (client) ID.
        client_id: String,
        /// PEM file.
        pem: PathBuf,
    },
    /// Managed identity through IMDS (AZURE_CLIENT_ID selects a user-assigned one).
    ManagedIdentity {
        /// User-assigned identity's client ID.
        client_id: Option<String>,
    },
    /// Workload identity federation (AKS workload identity):
    /// AZURE_FEDERATED_TOKEN_FILE with AZURE_TENANT_ID and AZURE_CLIENT_ID.
    WorkloadIdentity {
        /// Tenant (directory) ID.
        tenant: String,
        /// Application (client) ID.
        client_id: String,
        /// The platform's token file.
        token_file: PathBuf,
    },
    /// Managed identity of App Service / Functions / Container Apps
    /// (IDENTITY_ENDPOINT, IDENTITY_HEADER).
    AppServiceIdentity {
        /// IDENTITY_ENDPOINT.
        endpoint: String,
        /// IDENTITY_HEADER.
        header: String,
        /// User-assigned identity's client ID.
        client_id: Option<String>,
    },
}

/// A client secret is wiped when the credential goes.
impl Drop for AzureCredential {
    fn drop(&mut self) {
        if let AzureCredential::ClientSecret { secret, .. } = self {
            zeroize::Zeroize::zeroize(secret);
        }
    }
}

/// How Google authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcpCredential {
    /// Service-account key file (GOOGLE_APPLICATION_CREDENTIALS).
    ServiceAccountFile(PathBuf),
    /// The metadata server of the VM / GKE node.
    Metadata,
}

/// How AWS authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsCredential {
    /// Fixed keys (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
    Static {
        /// Access key ID.
        access_key: String,
        /// Secret.
        secret_key: String,
        /// Session token.
        session_token: Option<String>,
    },
    /// A profile of a shared credentials file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE).
    Profile {
        /// The file.
        file: PathBuf,
        /// Profile name.
        name: String,
    },
    /// EC2 instance metadata (IMDSv2).
    InstanceMetadata,
    /// EKS IRSA / OIDC federation (AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN,
    /// AWS_ROLE_SESSION_NAME) through STS AssumeRoleWithWebIdentity.
    WebIdentity {
        /// Token file (re-read at each renewal).
        token_file: PathBuf,
        /// Role to assume.
        role_arn: String,
        /// Session name.
        session_name: String,
        /// STS endpoint (KEYCORE_AWS_STS_ENDPOINT; else regional from
        /// AWS_REGION / AWS_DEFAULT_REGION; else `https://sts.amazonaws.com`).
        sts_endpoint: String,
    },
    /// ECS task role or EKS Pod Identity (container credentials endpoint).
    Container {
        /// The endpoint URL.
        url: String,
        /// Authorization token or token file.
        auth: Option<auth::ContainerAuth>,
    },
}

/// Endpoints, credentials and limits. [`KmsOptions::default`] has the
/// config table's defaults and no credentials; [`KmsOptions::new`] takes
/// the config's `kms_*` settings and reads credentials from the
/// environment. The `KEYCORE_*` names below are the aliases of the config
/// keys `kms_<provider>_<setting>`.
#[derive(Debug, Clone)]
pub struct KmsOptions {
    /// KEYCORE_AZURE_ENDPOINT: replaces `https://<vault host>` for every
    /// Azure key (private endpoints, stand-ins). Default: the URI's host.
    pub azure_endpoint: Option<String>,
    /// KEYCORE_AZURE_AUTHORITY (or AZURE_AUTHORITY_HOST): login host; the
    /// token URL is `<authority>/<tenant>/oauth2/v2.0/token`. Default: the
    /// cloud's (login.microsoftonline.com, ...).
    pub azure_authority: Option<String>,
    /// KEYCORE_AZURE_IMDS_ENDPOINT: managed identity token URL. Default
    /// `http://169.254.169.254/metadata/identity/oauth2/token`.
    pub azure_imds_endpoint: String,
    /// Azure credential; `None` refuses Azure keys at start-up.
    pub azure_credential: Option<AzureCredential>,
    /// KEYCORE_GCP_KMS_ENDPOINT. Default `https://cloudkms.googleapis.com`.
    pub gcp_endpoint: String,
    /// KEYCORE_GCP_TOKEN_ENDPOINT: overrides the key file's `token_uri`.
    pub gcp_token_endpoint: Option<String>,
    /// KEYCORE_GCP_METADATA_ENDPOINT. Default `http://metadata.google.internal`.
    pub gcp_metadata_endpoint: String,
    /// Google credential; `None` refuses Google keys at start-up.
    pub gcp_credential: Option<GcpCredential>,
    /// KEYCORE_AWS_KMS_ENDPOINT. Default `https://kms.<region>.amazonaws.com`.
    pub aws_endpoint: Option<String>,
    /// KEYCORE_AWS_IMDS_ENDPOINT. Default `http://169.254.169.254`.
    pub aws_imds_endpoint: String,
    /// AWS credential; `None` refuses AWS keys at start-up.
    pub aws_credential: Option<AwsCredential>,
    /// KEYCORE_KMS_CA_FILE: PEM bundle trusted in addition to the system
    /// roots (stand-ins, TLS-inspecting proxies).
    pub ca_file: Option<PathBuf>,
    /// KEYCORE_KMS_OP_TIMEOUT_MS: one operation, retries included (default
    /// 5000). The edge has given up on a handshake long before more.
    pub op_timeout: Duration,
    /// KEYCORE_KMS_ATTEMPT_TIMEOUT_MS: one HTTP exchange (default 2000).
    pub attempt_timeout: Duration,
    /// Fetching every public key at start-up (default 60 s).
    pub startup_timeout: Duration,
    /// Azure limits (KEYCORE_AZURE_MAX_RPS, KEYCORE_AZURE_MAX_IN_FLIGHT).
    pub azure_limits: Limits,
    /// Google limits (KEYCORE_GCP_MAX_RPS, KEYCORE_GCP_MAX_IN_FLIGHT).
    pub gcp_limits: Limits,
    /// AWS limits (KEYCORE_AWS_MAX_RPS, KEYCORE_AWS_MAX_IN_FLIGHT).
    pub aws_limits: Limits,
    /// Queue to the runtime thread (default [`DEFAULT_QUEUE_DEPTH`]).
    pub queue_depth: usize,
    /// Leave out (and log) keys whose public half cannot be fetched instead
    /// of failing [`KmsStore::open`]; for `key_load_errors: skip`. Missing
    /// credentials still fail. Default false (as `key_load_errors: fail`).
    pub skip_failed_keys: bool,
    /// HTTPS_PROXY (or https_proxy): `http://[user:password@]host:port`;
    /// the services' HTTPS endpoints are reached through it with HTTP
    /// CONNECT. Plain-http metadata services never are.
    pub https_proxy: Option<String>,
    /// NO_PROXY (or no_proxy): comma-separated hosts, domains (`.corp`) or
    /// `*` reached directly.
    pub no_proxy: Vec<String>,
    /// KEYCORE_KMS_VERIFY (default on; `0` turns it off): check every
    /// signature a service returns against the key's public half and answer
    /// `CRYPTO` instead of passing a wrong one on (verify.rs says why).
    pub verify_signatures: bool,
}

fn limits(max_per_second: u32, max_in_flight: u32) -> Limits {
    Limits {
        max_in_flight: max_in_flight as usize,
        max_per_second: f64::from(max_per_second),
        max_attempts: 4,
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
    }
}

impl Default for KmsOptions {
    /// The config table's defaults (public endpoints, the services' published
    /// rate limits), no credentials, no proxy.
    fn default() -> Self {
        KmsOptions::with_settings(&keycore_config::Config::default().kms)
    }
}

impl KmsOptions {
    /// The tunables from the config (`kms_*` keys; the table documents
    /// each, with the services' published limits behind the rate defaults),
    /// no credentials, no proxy.
    fn with_settings(s: &KmsSettings) -> KmsOptions {
        KmsOptions {
            azure_endpoint: s.azure_endpoint.clone(),
            azure_authority: s.azure_authority.clone(),
            azure_imds_endpoint: s.azure_imds_endpoint.clone(),
            azure_credential: None,
            gcp_endpoint: s.gcp_endpoint.clone(),
            gcp_token_endpoint: s.gcp_token_endpoint.clone(),
            gcp_metadata_endpoint: s.gcp_metadata_endpoint.clone(),
            gcp_credential: None,
            aws_endpoint: s.aws_endpoint.clone(),
            aws_imds_endpoint: s.aws_imds_endpoint.clone(),
            aws_credential: None,
            ca_file: s.ca_file.clone(),
            op_timeout: s.op_timeout,
            attempt_timeout: s.attempt_timeout,
            startup_timeout: s.startup_timeout,
            azure_limits: limits(s.azure_max_rps, s.azure_max_in_flight),
            gcp_limits: limits(s.gcp_max_rps, s.gcp_max_in_flight),
            aws_limits: limits(s.aws_max_rps, s.aws_max_in_flight),
            queue_depth: DEFAULT_QUEUE_DEPTH,
            skip_failed_keys: false,
            verify_signatures: s.verify,
            https_proxy: None,
            no_proxy: Vec::new(),
        }
    }

    /// Read the settings from the process environment alone (the
    /// `KEYLESS_KMS_*` names and their `KEYCORE_*` aliases, through the
    /// config layer) plus credentials; see [`KmsOptions::new`]. `serve`
    /// uses [`KmsOptions::new`] with the loaded config instead.
    pub fn from_env() -> Result<KmsOptions, KmsError> {
        Self::from_lookup(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// [`KmsOptions::from_env`] over any lookup (tests): the tunables
    /// resolved by the config layer from `get` alone, credentials from `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<KmsOptions, KmsError> {
        let loaded = keycore_config::resolve(
            None,
            &|k: &str| get(k),
            &keycore_config::ServeArgs::default(),
        )?;
        Self::new(&loaded.config.kms, get)
    }

    /// Options from the config's tunables (`settings`) plus credentials and
    /// proxy from the environment (`get`), following the providers' SDK
    /// conventions:
    /// - Azure: AZURE_CLIENT_SECRET -> client secret; else
    ///   AZURE_CLIENT_CERTIFICATE_PATH -> client certificate; else
    ///   AZURE_FEDERATED_TOKEN_FILE -> workload identity (all three need
    ///   AZURE_TENANT_ID and AZURE_CLIENT_ID); else App Service identity
    ///   (IDENTITY_ENDPOINT, IDENTITY_HEADER); else managed identity
    ///   (AZURE_CLIENT_ID optional).
    /// - Google: GOOGLE_APPLICATION_CREDENTIALS -> key file; else the
    ///   metadata server.
    /// - AWS, in the SDKs' order: AWS_ACCESS_KEY_ID and
    ///   AWS_SECRET_ACCESS_KEY (with AWS_SESSION_TOKEN); else web identity
    ///   (AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN); else the shared
    ///   credentials file (AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials)
    ///   when it has the profile (AWS_PROFILE or "default"); else the
    ///   container endpoint; else instance metadata (IMDSv2).
    /// - HTTPS_PROXY / NO_PROXY (either case), the conventional variables
    ///   (a proxy URL may carry a password, so it is not a config key).
    pub fn new(
        settings: &KmsSettings,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<KmsOptions, KmsError> {
        let mut o = KmsOptions::with_settings(settings);
        o.https_proxy = get("HTTPS_PROXY").or_else(|| get("https_proxy"));
        o.no_proxy = get("NO_PROXY")
            .or_else(|| get("no_proxy"))
            .map(|v| {
                v.split(',')
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let tenant = get("AZURE_TENANT_ID");
        let client = get("AZURE_CLIENT_ID");
        let need = |what: &str| KmsError::Credentials {
            service: "Azure",
            reason: format!("{what} needs AZURE_TENANT_ID and AZURE_CLIENT_ID"),
        };
        o.azure_credential = Some(if let Some(secret) = get("AZURE_CLIENT_SECRET") {
            AzureCredential::ClientSecret {
                tenant: tenant.ok_or_else(|| need("AZURE_CLIENT_SECRET"))?,
                client_id: client.ok_or_else(|| need("AZURE_CLIENT_SECRET"))?,
                secret,
            }
        } else if let Some(pem) = get("AZURE_CLIENT_CERTIFICATE_PATH") {
            AzureCredential::ClientCertificate {
                tenant: tenant.ok_or_else(|| need("AZURE_CLIENT_CERTIFICATE_PATH"))?,
                client_id: client.ok_or_else(|| need("AZURE_CLIENT_CERTIFICATE_PATH"))?,
                pem: pem.into(),
            }
        } else if let Some(token_file) = get("AZURE_FEDERATED_TOKEN_FILE") {
            AzureCredential::WorkloadIdentity {
                tenant: tenant.ok_or_else(|| need("AZURE_FEDERATED_TOKEN_FILE"))?,
                client_id: client.ok_or_else(|| need("AZURE_FEDERATED_TOKEN_FILE"))?,
                token_file: token_file.into(),
            }
        } else if let (Some(endpoint), Some(header)) =
            (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER"))
        {
            AzureCredential::AppServiceIdentity {
                endpoint,
                header,
                client_id: client,
            }
        } else {
            AzureCredential::ManagedIdentity { client_id: client }
        });
        o.gcp_credential = Some(match get("GOOGLE_APPLICATION_CREDENTIALS") {
            Some(p) => GcpCredential::ServiceAccountFile(p.into()),
            None => GcpCredential::Metadata,
        });
        o.aws_credential = Some(
            match (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) {
                (Some(access_key), Some(secret_key)) => AwsCredential::Static {
                    access_key,
                    secret_key,
                    session_token: get("AWS_SESSION_TOKEN"),
                },
                _ => {
                    let file = get("AWS_SHARED_CREDENTIALS_FILE")
                        .map(PathBuf::from)
                        .or_else(|| {
                            get("HOME").map(|h| PathBuf::from(h).join(".aws").join("credentials"))
                        });
                    let name = get("AWS_PROFILE").unwrap_or_else(|| "default".into());
                    let web_identity =
                        match (get("AWS_WEB_IDENTITY_TOKEN_FILE"), get("AWS_ROLE_ARN")) {
                            (Some(token_file), Some(role_arn)) => {
                                Some(AwsCredential::WebIdentity {
                                    token_file: token_file.into(),
                                    role_arn,
                                    session_name: get("AWS_ROLE_SESSION_NAME")
                                        .unwrap_or_else(|| "keycore".into()),
                                    sts_endpoint: settings.aws_sts_endpoint.clone().unwrap_or_else(
                                        || {
                                            auth::sts_endpoint(
                                                get("AWS_REGION")
                                                    .or_else(|| get("AWS_DEFAULT_REGION"))
                                                    .as_deref(),
                                            )
                                        },
                                    ),
                                })
                            }
                            _ => None,
                        };
                    let container_url = get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
                        .map(|rel| format!("http://169.254.170.2{rel}"))
                        .or_else(|| get("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
                    let container_auth = get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
                        .map(|f| auth::ContainerAuth::File(f.into()))
                        .or_else(|| {
                            get("AWS_CONTAINER_AUTHORIZATION_TOKEN").map(auth::ContainerAuth::Token)
                        });
                    // The SDKs' order (botocore's default chain; the AWS SDK
                    // for PHP's "default credential provider chain" page):
                    // environment keys, web identity (env), the shared
                    // credentials file, container, instance metadata.
                    match (web_identity, file, container_url) {
                        (Some(w), _, _) => w,
                        (None, Some(f), _) if auth::aws_profile(&f, &name).is_ok() => {
                            AwsCredential::Profile { file: f, name }
                        }
                        (None, _, Some(url)) => AwsCredential::Container {
                            url,
                            auth: container_auth,
                        },
                        _ => AwsCredential::InstanceMetadata,
                    }
                }
            },
        );
        Ok(o)
    }
}

/// One operation for the runtime thread.
#[derive(Debug)]
struct Job {
    key: u32,
    op: OpClass,
    input: Vec<u8>,
    reply: oneshot::Sender<Result<Vec<u8>, ErrorCode>>,
    /// When it was queued: the operation deadline counts from here, so
    /// time spent waiting in the queue is not given twice.
    queued: std::time::Instant,
}

/// Per-service counters visible to the metrics scrape.
#[derive(Debug)]
struct StatsRef {
    service: &'static str,
    stats: Arc<ServiceStats>,
}

/// Shared by every core (Send + Sync): the channel to the HTTP runtime.
#[derive(Debug, Default)]
pub struct KmsStore {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Vec<StatsRef>,
    /// Operations refused because the queue was full.
    queue_full: AtomicU64,
    keys: usize,
}

// Every reactor core holds the store (behind an Arc).
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<KmsStore>();
};

impl Drop for KmsStore {
    fn drop(&mut self) {
        // Closing the queue ends the runtime loop; operations still in
        // flight are dropped there, which answers them CRYPTO.
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the runtime thread knows about one key.
#[derive(Debug)]
enum Detail {
    Azure,
    Gcp(gcp::Alg),
    Aws(aws::AwsKeyInfo),
}

#[derive(Debug)]
struct RemoteKey {
    uri: KeyUri,
    kind: KeyKind,
    detail: Detail,
    /// subjectPublicKey bits, for checking the service's signatures.
    public: Vec<u8>,
}

/// Everything the runtime thread owns.
#[derive(Debug)]
struct Runtime {
    http: Http,
    azure: Option<azure::Azure>,
    gcp: Option<gcp::Gcp>,
    aws: Option<aws::Aws>,
    keys: Vec<RemoteKey>,
    op_timeout: Duration,
    verify_signatures: bool,
    /// (key, op) pairs already logged as refused: one line each, not one per request.
    refused_logged: RefCell<HashSet<(u32, OpClass)>>,
    /// Per service: when a failure was last logged, and how many since.
    fail_log: RefCell<HashMap<&'static str, (tokio::time::Instant, u64)>>,
}

/// Shortest gap between two failure log lines of one service.
const FAIL_LOG_EVERY: Duration = Duration::from_secs(10);

/// An operation's failure, before it becomes `CRYPTO`.
#[derive(Debug)]
pub enum OpError {
    /// The key cannot do this op (logged once per key and op).
    Refused(util::PlanError),
    /// The service call failed.
    Call(CallError),
}

impl KmsStore {
    /// Whether a `uri:` store names a cloud key this backend serves.
    pub fn handles(uri: &str) -> bool {
        uri.starts_with("https://")
            || uri.starts_with("projects/")
            || (uri.starts_with("arn:aws") && uri.contains(":kms:"))
    }

    /// Number of keys served.
    pub fn len(&self) -> usize {
        self.keys
    }

    /// Whether no key is served.
    pub fn is_empty(&self) -> bool {
        self.keys == 0
    }

    /// Start the runtime thread, fetch every key's public half and return
    /// the store plus one `KeyEntry` per URI (in order). Blocks the caller
    /// (start-up only) until every key is fetched or one fails.
    /// `id` is the store's place in the server's list; every entry's backend
    /// is `Backend::Store(StoreKey { store: id, .. })`.
    pub fn open(
        uris: &[String],
        opts: &KmsOptions,
        id: StoreId,
    ) -> Result<(KmsStore, Vec<KeyEntry>), KmsError> {
        if uris.is_empty() {
            return Ok((KmsStore::default(), Vec::new()));
        }
        let parsed: Vec<KeyUri> = uris
            .iter()
            .map(|u| KeyUri::parse(u))
            .collect::<Result<_, _>>()?;
        let tls =
            http::tls_config(opts.ca_file.as_deref()).map_err(|source| KmsError::HttpClient {
                what: "KMS runtime",
                source,
            })?;
        let (tx, rx) = mpsc::channel::<Job>(opts.queue_depth.max(1));
        type Setup = Result<(Vec<Fetched>, Vec<StatsRef>), KmsError>;
        let (setup_tx, setup_rx) = std::sync::mpsc::channel::<Setup>();
        let opts2 = opts.clone();
        let thread = std::thread::Builder::new()
            .name("keycore-kms".into())
            .spawn(move || runtime_main(parsed, opts2, tls, rx, setup_tx))
            .map_err(KmsError::Thread)?;
        let wait = opts.startup_timeout + Duration::from_secs(5);
        let setup = match setup_rx.recv_timeout(wait) {
            Ok(s) => s,
            Err(_) => {
                drop(tx);
                return Err(KmsError::SetupTimeout { wait });
            }
        };
        let (pubs, stats) = match setup {
            Ok(s) => s,
            Err(e) => {
                drop(tx);
                let _ = thread.join();
                return Err(e);
            }
        };
        // KeyRef(i) is the position among the keys served (the runtime
        // thread's key list), not in `uris`: skipped keys leave no hole.
        let entries: Vec<KeyEntry> = pubs
            .into_iter()
            .enumerate()
            .map(|(i, (at, spki, kind, ski, legacy_digest))| KeyEntry {
                ski,
                legacy_digest,
                kind,
                spki_der: spki,
                source: uris[at].clone(),
                backend: Backend::Store(StoreKey {
                    store: id,
                    key: i as u32,
                }),
            })
            .collect();
        let store = KmsStore {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            queue_full: AtomicU64::new(0),
            keys: entries.len(),
        };
        Ok((store, entries))
    }

    /// Submit an operation; the future resolves with the result.
    pub fn submit(
        &self,
        key: KeyRef,
        op: OpClass,
        input: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ErrorCode>> + 'static {
        let (reply, rx) = oneshot::channel();
        let queued: Result<(), ErrorCode> = match &self.tx {
            None => Err(ErrorCode::INTERNAL),
            Some(tx) => tx
                .try_send(Job {
                    key: key.0,
                    op,
                    input: input.to_vec(),
                    reply,
                    queued: std::time::Instant::now(),
                })
                .map_err(|_| {
                    self.queue_full.fetch_add(1, Ordering::Relaxed);
                    ErrorCode::CRYPTO
                }),
        };
        async move {
            queued?;
            // A dropped sender (thread gone, shut down) is an answer too.
            rx.await.unwrap_or(Err(ErrorCode::CRYPTO))
        }
    }

    /// The KMS counters (`keycore_kms_*`), per service. Nothing when no
    /// cloud key is served.
    fn render(&self, w: &mut PromWriter<'_>) {
        if self.tx.is_none() {
            return;
        }
        type Counter = fn(&ServiceStats) -> &AtomicU64;
        let rows: [(&str, &str, Counter); 8] = [
            (
                "keycore_kms_operations_ok_total",
                "Operations answered by the cloud key service.",
                |s| &s.ok,
            ),
            (
                "keycore_kms_operations_failed_total",
                "Operations answered with an error (refused, failed, timed out).",
                |s| &s.failures,
            ),
            (
                "keycore_kms_operations_refused_total",
                "Operations the key cannot do, refused before any request.",
                |s| &s.refused,
            ),
            (
                "keycore_kms_http_attempts_total",
                "HTTP requests sent to the key service.",
                |s| &s.attempts,
            ),
            (
                "keycore_kms_throttled_total",
                "Retries after a throttling answer (429, ThrottlingException).",
                |s| &s.throttled,
            ),
            (
                "keycore_kms_retried_errors_total",
                "Retries after a 5xx, transport error or checksum mismatch.",
                |s| &s.server_errors,
            ),
            (
                "keycore_kms_credential_refreshes_total",
                "Token or credential fetches.",
                |s| &s.token_refreshes,
            ),
            (
                "keycore_kms_bad_signatures_total",
                "Service signatures that did not verify (answered as errors, never passed on).",
                |s| &s.bad_signatures,
            ),
        ];
        for (name, help, f) in rows {
            w.family(name, MetricKind::Counter, help);
            for s in &self.stats {
                w.sample(
                    name,
                    &[("service", s.service)],
                    f(&s.stats).load(Ordering::Relaxed),
                );
            }
        }
        w.family(
            "keycore_kms_queue_full_total",
            MetricKind::Counter,
            "Operations refused because the KMS queue was full.",
        );
        w.sample(
            "keycore_kms_queue_full_total",
            &[],
            self.queue_full.load(Ordering::Relaxed),
        );
    }
}

impl KeyStore for KmsStore {
    fn name(&self) -> &'static str {
        "kms"
    }

    fn core(self: Arc<Self>, _core: usize) -> Box<dyn CoreStore> {
        Box::new(KmsCore { store: self })
    }

    fn render_metrics(&self, w: &mut PromWriter<'_>) {
        self.render(w);
    }

    fn status(&self) -> Vec<StoreStatus> {
        vec![StoreStatus {
            ok: true,
            what: "cloud keys",
            detail: format!("{} fetched from their key services", self.len()),
        }]
    }
}

/// A core's view of the store: every core shares the one channel to the
/// runtime thread, so this is just the shared handle.
#[derive(Debug)]
struct KmsCore {
    store: Arc<KmsStore>,
}

impl CoreStore for KmsCore {
    fn perform(&self, key: u32, op: OpClass, input: &[u8], _out: &mut Vec<u8>) -> Outcome {
        Outcome::Pending(Box::pin(self.store.submit(KeyRef(key), op, input)))
    }
}

/// A key whose public half was fetched: its position in the URI list, SPKI,
/// kind, SKI and (RSA) legacy digest.
type Fetched = (usize, Vec<u8>, KeyKind, Ski, Option<[u8; CERT_DIGEST_LEN]>);

type SetupTx = std::sync::mpsc::Sender<Result<(Vec<Fetched>, Vec<StatsRef>), KmsError>>;

fn runtime_main(
    keys: Vec<KeyUri>,
    opts: KmsOptions,
    tls: rustls::ClientConfig,
    mut rx: mpsc::Receiver<Job>,
    setup: SetupTx,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = setup.send(Err(KmsError::Tokio(e)));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let rt = match build_runtime(&keys, &opts, tls) {
            Ok(r) => r,
            Err(e) => {
                let _ = setup.send(Err(e));
                return;
            }
        };
        let rt = match fetch_all(rt, keys, &opts).await {
            Ok((rt, pubs)) => {
                let stats = [
                    rt.azure.as_ref().map(|s| &s.svc),
                    rt.gcp.as_ref().map(|s| &s.svc),
                    rt.aws.as_ref().map(|s| &s.svc),
                ]
                .into_iter()
                .flatten()
                .map(|s| StatsRef {
                    service: s.name,
                    stats: s.stats.clone(),
                })
                .collect();
                if setup.send(Ok((pubs, stats))).is_err() {
                    return;
                }
                Rc::new(rt)
            }
            Err(e) => {
                let _ = setup.send(Err(e));
                return;
            }
        };
        // At most `queue_depth` operations in progress: past that the loop
        // stops taking jobs, the queue fills and `submit` answers CRYPTO at
        // once instead of piling up work that would only time out.
        let in_progress = Arc::new(tokio::sync::Semaphore::new(opts.queue_depth.max(1)));
        loop {
            let Ok(permit) = in_progress.clone().acquire_owned().await else {
                break;
            };
            let Some(job) = rx.recv().await else { break };
            let rt = rt.clone();
            tokio::task::spawn_local(async move {
                let r = rt.perform(job.key, job.op, &job.input, job.queued).await;
                let _ = job.reply.send(r);
                drop(permit);
            });
        }
    });
}

fn build_runtime(
    keys: &[KeyUri],
    opts: &KmsOptions,
    tls: rustls::ClientConfig,
) -> Result<Runtime, KmsError> {
    let proxy = opts.https_proxy.as_ref().map(|url| http::ProxySettings {
        url: url.clone(),
        no_proxy: opts.no_proxy.clone(),
    });
    let http = Http::new(tls, opts.attempt_timeout, proxy.as_ref()).map_err(|source| {
        KmsError::HttpClient {
            what: "setting HTTPS_PROXY",
            source,
        }
    })?;
    let mut azure = None;
    let mut gcp = None;
    let mut aws = None;
    for k in keys {
        match k {
            KeyUri::Azure(a) => {
                let az = match &mut azure {
                    Some(az) => az,
                    None => azure.insert(azure::Azure::new(
                        Service::new("azure", opts.azure_limits),
                        opts.azure_endpoint.clone(),
                    )),
                };
                if !az.tokens.contains_key(&a.resource) {
                    let src = azure_source(a, opts)?;
                    az.tokens.insert(
                        a.resource.clone(),
                        auth::TokenCache::new(src, a.resource.clone()),
                    );
                }
            }
            KeyUri::Gcp(_) if gcp.is_none() => {
                let fail = |reason: String| KmsError::Credentials {
                    service: "Google Cloud",
                    reason,
                };
                let src = match &opts.gcp_credential {
                    None => return Err(fail(
                        "none configured (set GOOGLE_APPLICATION_CREDENTIALS or run on GCE/GKE)"
                            .into(),
                    )),
                    Some(GcpCredential::ServiceAccountFile(p)) => {
                        auth::gcp_service_account(p, opts.gcp_token_endpoint.as_deref()).map_err(
                            |source| KmsError::CredentialFile {
                                service: "Google Cloud",
                                source,
                            },
                        )?
                    }
                    Some(GcpCredential::Metadata) => auth::TokenSource::GcpMetadata {
                        endpoint: opts.gcp_metadata_endpoint.trim_end_matches('/').to_owned(),
                    },
                };
                gcp = Some(gcp::Gcp {
                    svc: Service::new("gcp", opts.gcp_limits),
                    token: auth::TokenCache::new(src, gcp::SCOPE.into()),
                    endpoint: opts.gcp_endpoint.clone(),
                });
            }
            KeyUri::Aws(key) if aws.is_none() => {
                let fail = |reason: String| KmsError::Credentials {
                    service: "AWS",
                    reason,
                };
                let src =
                    match &opts.aws_credential {
                        None => return Err(fail(
                            "none configured (set AWS_ACCESS_KEY_ID / AWS_PROFILE or run on EC2)"
                                .into(),
                        )),
                        Some(AwsCredential::Static {
                            access_key,
                            secret_key,
                            session_token,
                        }) => auth::AwsCredSource::Static(auth::AwsCreds {
                            access_key: access_key.clone(),
                            secret_key: secret_key.clone(),
                            session_token: session_token.clone(),
                        }),
                        Some(AwsCredential::Profile { file, name }) => {
                            auth::AwsCredSource::Static(auth::aws_profile(file, name).map_err(
                                |source| KmsError::CredentialFile {
                                    service: "AWS",
                                    source,
                                },
                            )?)
                        }
                        Some(AwsCredential::InstanceMetadata) => auth::AwsCredSource::Imds {
                            endpoint: opts.aws_imds_endpoint.trim_end_matches('/').to_owned(),
                        },
                        Some(AwsCredential::Container { url, auth }) => {
                            auth::AwsCredSource::Container {
                                url: url.clone(),
                                auth: auth.clone(),
                            }
                        }
                        Some(AwsCredential::WebIdentity {
                            token_file,
                            role_arn,
                            session_name,
                            sts_endpoint,
                        }) => auth::AwsCredSource::WebIdentity {
                            token_file: token_file.clone(),
                            role_arn: role_arn.clone(),
                            session_name: session_name.clone(),
                            sts_endpoint: auth::sts_endpoint_for_key(sts_endpoint, &key.region),
                        },
                    };
                aws = Some(aws::Aws {
                    svc: Service::new("aws", opts.aws_limits),
                    creds: auth::AwsCredCache::new(src),
                    endpoint: opts.aws_endpoint.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(Runtime {
        http,
        azure,
        gcp,
        aws,
        keys: Vec::new(),
        op_timeout: opts.op_timeout,
        verify_signatures: opts.verify_signatures,
        refused_logged: RefCell::new(HashSet::new()),
        fail_log: RefCell::new(HashMap::new()),
    })
}

fn azure_source(key: &uri::AzureKey, opts: &KmsOptions) -> Result<auth::TokenSource, KmsError> {
    let fail = |reason: String| KmsError::Credentials {
        service: "Azure",
        reason,
    };
    let token_url = |tenant: &str| {
        let authority = opts
            .azure_authority
            .as_deref()
            .unwrap_or(key.cloud.authority());
        format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        )
    };
    Ok(match &opts.azure_credential {
        None => {
            return Err(fail(
                "none configured (set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET or AZURE_CLIENT_CERTIFICATE_PATH, or run with a managed identity)".into(),
            ))
        }
        Some(AzureCredential::ClientSecret {
            tenant,
            client_id,
            secret,
        }) => auth::TokenSource::AzureSecret {
            token_url: token_url(tenant),
            client_id: client_id.clone(),
            secret: secret.clone(),
        },
        Some(AzureCredential::ClientCertificate { tenant, client_id, pem }) => {
            let (key, x5t_s256) =
                auth::azure_certificate(pem).map_err(|source| KmsError::CredentialFile {
                    service: "Azure",
                    source,
                })?;
            auth::TokenSource::AzureCertificate {
                token_url: token_url(tenant),
                client_id: client_id.clone(),
                key,
                x5t_s256,
            }
        }
        Some(AzureCredential::WorkloadIdentity {
            tenant,
            client_id,
            token_file,
        }) => auth::TokenSource::AzureFederated {
            token_url: token_url(tenant),
            client_id: client_id.clone(),
            token_file: token_file.clone(),
        },
        Some(AzureCredential::AppServiceIdentity {
            endpoint,
            header,
            client_id,
        }) => auth::TokenSource::AzureAppService {
            endpoint: endpoint.clone(),
            header: header.clone(),
            client_id: client_id.clone(),
        },
        Some(AzureCredential::ManagedIdentity { client_id }) => auth::TokenSource::AzureManagedIdentity {
            endpoint: opts.azure_imds_endpoint.clone(),
            client_id: client_id.clone(),
        },
    })
}

/// Fetch every key's public half (concurrently) and fill `rt.keys`.
async fn fetch_all(
    mut rt: Runtime,
    keys: Vec<KeyUri>,
    opts: &KmsOptions,
) -> Result<(Runtime, Vec<Fetched>), KmsError> {
    let deadline = tokio::time::Instant::now() + opts.startup_timeout;
    let results = {
        let rt = &rt;
        let futs = keys.iter().map(|k| async move {
            let fail = |e: CallError| KmsError::Key {
                uri: k.to_string(),
                reason: e.to_string(),
            };
            match k {
                KeyUri::Azure(a) => {
                    let svc = rt.azure.as_ref().expect("built for every Azure key");
                    let (spki, kind) = svc
                        .fetch_public(&rt.http, a, deadline)
                        .await
                        .map_err(fail)?;
                    Ok::<_, KmsError>((spki, kind, Detail::Azure))
                }
                KeyUri::Gcp(g) => {
                    let svc = rt.gcp.as_ref().expect("built for every Google key");
                    let (spki, kind, alg) = svc
                        .fetch_public(&rt.http, g, deadline)
                        .await
                        .map_err(fail)?;
                    Ok((spki, kind, Detail::Gcp(alg)))
                }
                KeyUri::Aws(a) => {
                    let svc = rt.aws.as_ref().expect("built for every AWS key");
                    let info = svc
                        .fetch_public(&rt.http, a, deadline)
                        .await
                        .map_err(fail)?;
                    Ok((info.spki.clone(), info.kind, Detail::Aws(info)))
                }
            }
        });
        join_all(futs.collect()).await
    };
    let mut pubs = Vec::with_capacity(results.len());
    for (at, (r, uri)) in results.into_iter().zip(keys).enumerate() {
        let ids = r.and_then(|(spki, kind, detail)| {
            let ski = ski_from_spki(&spki).map_err(|e| KmsError::Key {
                uri: uri.to_string(),
                reason: format!("public key: {e}"),
            })?;
            let legacy = match kind {
                KeyKind::Rsa { .. } => legacy_digest_from_spki(&spki).ok(),
                _ => None,
            };
            Ok((spki, kind, detail, ski, legacy))
        });
        match ids {
            Ok((spki, kind, detail, ski, legacy)) => {
                tracing::info!(key = %uri, service = uri.service(), ?kind, "cloud key loaded");
                let public = verify::public_bits(&spki).unwrap_or_default();
                pubs.push((at, spki, kind, ski, legacy));
                rt.keys.push(RemoteKey {
                    uri,
                    kind,
                    detail,
                    public,
                });
            }
            Err(e) if opts.skip_failed_keys => {
                tracing::error!(error = %e, "skipping cloud key that failed to load (key_load_errors: skip)");
            }
            Err(e) => return Err(e),
        }
    }
    Ok((rt, pubs))
}

/// Await every future (they run concurrently on this thread).
async fn join_all<F: Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// One provider's operation in flight.
type OpFuture<'a> = std::pin::Pin<Box<dyn Future<Output = Result<Vec<u8>, OpError>> + 'a>>;

impl Runtime {
    async fn perform(
        &self,
        key: u32,
        op: OpClass,
        input: &[u8],
        queued: std::time::Instant,
    ) -> Result<Vec<u8>, ErrorCode> {
        let Some(k) = self.keys.get(key as usize) else {
            return Err(ErrorCode::INTERNAL);
        };
        let deadline = tokio::time::Instant::from_std(queued) + self.op_timeout;
        let (svc, fut): (&Service, OpFuture<'_>) = match (&k.uri, &k.detail) {
            (KeyUri::Azure(a), Detail::Azure) => {
                let s = self.azure.as_ref().ok_or(ErrorCode::INTERNAL)?;
                (
                    &s.svc,
                    Box::pin(s.perform(&self.http, a, k.kind, op, input, deadline)),
                )
            }
            (KeyUri::Gcp(g), Detail::Gcp(alg)) => {
                let s = self.gcp.as_ref().ok_or(ErrorCode::INTERNAL)?;
                (
                    &s.svc,
                    Box::pin(s.perform(&self.http, g, k.kind, *alg, op, input, deadline)),
                )
            }
            (KeyUri::Aws(a), Detail::Aws(info)) => {
                let s = self.aws.as_ref().ok_or(ErrorCode::INTERNAL)?;
                (
                    &s.svc,
                    Box::pin(s.perform(&self.http, a, info, op, input, deadline)),
                )
            }
            _ => return Err(ErrorCode::INTERNAL),
        };
        let r = match tokio::time::timeout_at(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(OpError::Call(CallError::Timeout)),
        };
        match r {
            Ok(v) => {
                if self.verify_signatures
                    && verify::check(k.kind, &k.public, op, input, &v) == verify::Checked::Bad
                {
                    bump(&svc.stats.bad_signatures);
                    bump(&svc.stats.failures);
                    let e = CallError::Service("the service's signature does not verify with the key's public key; not passed on".into());
                    self.log_failure(svc.name, &k.uri, op, &e);
                    return Err(ErrorCode::CRYPTO);
                }
                bump(&svc.stats.ok);
                Ok(v)
            }
            Err(OpError::Refused(why)) => {
                bump(&svc.stats.refused);
                bump(&svc.stats.failures);
                if self.refused_logged.borrow_mut().insert((key, op)) {
                    tracing::warn!(key = %k.uri, ?op, reason = %why, "operation refused: the cloud key cannot do it (logged once per key and operation)");
                }
                Err(ErrorCode::CRYPTO)
            }
            Err(OpError::Call(e)) => {
                bump(&svc.stats.failures);
                self.log_failure(svc.name, &k.uri, op, &e);
                Err(ErrorCode::CRYPTO)
            }
        }
    }

    /// Log a failed operation, at most once per [`FAIL_LOG_EVERY`] per
    /// service (with the count of those not logged).
    fn log_failure(&self, service: &'static str, uri: &KeyUri, op: OpClass, e: &CallError) {
        let now = tokio::time::Instant::now();
        let mut m = self.fail_log.borrow_mut();
        let entry = m.entry(service).or_insert((now - FAIL_LOG_EVERY, 0));
        if now.duration_since(entry.0) >= FAIL_LOG_EVERY {
            tracing::warn!(key = %uri, ?op, error = %e, suppressed = entry.1, "cloud key operation failed");
            *entry = (now, 0);
        } else {
            entry.1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_every_form() {
        assert!(KmsStore::handles("https://kv1.vault.azure.net/keys/k/1"));
        assert!(KmsStore::handles(
            "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1"
        ));
        assert!(KmsStore::handles(
            "arn:aws:kms:us-east-1:111122223333:key/x"
        ));
        assert!(KmsStore::handles(
            "arn:aws-us-gov:kms:us-gov-west-1:111122223333:key/x"
        ));
        assert!(!KmsStore::handles("pkcs11:token=x"));
        assert!(!KmsStore::handles("arn:aws:s3:::bucket"));
    }

    #[test]
    fn empty_store_answers_internal() {
        let s = KmsStore::default();
        let r = futures_lite::future::block_on(s.submit(KeyRef(0), OpClass::RsaDecrypt, &[]));
        assert_eq!(r, Err(ErrorCode::INTERNAL));
        let (s, e) = KmsStore::open(&[], &KmsOptions::default(), StoreId(0)).unwrap();
        assert!(s.is_empty() && e.is_empty());
    }

    #[test]
    fn bad_uri_fails_open_naming_it() {
        let e = KmsStore::open(
            &["https://x.example.com/keys/k/1".into()],
            &KmsOptions::default(),
            StoreId(0),
        )
        .unwrap_err();
        assert!(e.to_string().contains("x.example.com"), "{e}");
    }

    #[test]
    fn missing_credentials_fail_open_naming_the_service() {
        let e = KmsStore::open(
            &[
                "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
                    .into(),
            ],
            &KmsOptions::default(),
            StoreId(0),
        )
        .unwrap_err();
        assert!(e.to_string().contains("AWS credentials"), "{e}");
    }

    #[test]
    fn options_from_environment() {
        let env: HashMap<&str, &str> = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
            ("GOOGLE_APPLICATION_CREDENTIALS", "/k.json"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "sk"),
            ("KEYCORE_AWS_KMS_ENDPOINT", "https://127.0.0.1:1"),
            ("KEYCORE_AZURE_MAX_RPS", "50"),
            ("KEYCORE_KMS_OP_TIMEOUT_MS", "1500"),
        ]
        .into_iter()
        .collect();
        let o = KmsOptions::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(matches!(
            o.azure_credential,
            Some(AzureCredential::ClientSecret { .. })
        ));
        assert_eq!(
            o.gcp_credential,
            Some(GcpCredential::ServiceAccountFile("/k.json".into()))
        );
        assert!(matches!(
            o.aws_credential,
            Some(AwsCredential::Static { .. })
        ));
        assert_eq!(o.aws_endpoint.as_deref(), Some("https://127.0.0.1:1"));
        assert_eq!(o.azure_limits.max_per_second, 50.0);
        assert_eq!(o.op_timeout, Duration::from_millis(1500));
        let e = KmsOptions::from_lookup(|k| (k == "KEYCORE_GCP_MAX_RPS").then(|| "fast".into()))
            .unwrap_err();
        assert!(e.to_string().contains("KEYCORE_GCP_MAX_RPS"), "{e}");
        let e = KmsOptions::from_lookup(|k| (k == "AZURE_CLIENT_SECRET").then(|| "s".into()))
            .unwrap_err();
        assert!(e.to_string().contains("AZURE_TENANT_ID"), "{e}");
        // Nothing set: managed identity, metadata server, instance metadata.
        let o = KmsOptions::from_lookup(|_| None).unwrap();
        assert_eq!(
            o.azure_credential,
            Some(AzureCredential::ManagedIdentity { client_id: None })
        );
        assert_eq!(o.gcp_credential, Some(GcpCredential::Metadata));
        assert_eq!(o.aws_credential, Some(AwsCredential::InstanceMetadata));
        assert!(o.verify_signatures && o.https_proxy.is_none());
    }

    #[test]
    fn web_identity_comes_before_the_profile_file_as_in_the_sdks() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n",
        )
        .unwrap();
        let creds = creds.to_string_lossy().into_owned();
        let env: HashMap<&str, &str> = [
            ("AWS_SHARED_CREDENTIALS_FILE", creds.as_str()),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks/token"),
            ("AWS_ROLE_ARN", "arn:aws-cn:iam::111122223333:role/r"),
            ("AWS_REGION", "cn-north-1"),
        ]
        .into_iter()
        .collect();
        let o = KmsOptions::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(
            matches!(&o.aws_credential, Some(AwsCredential::WebIdentity { sts_endpoint, .. })
                if sts_endpoint == "https://sts.cn-north-1.amazonaws.com.cn"),
            "{:?}",
            o.aws_credential
        );
        // Without web identity the file is used.
        let o = KmsOptions::from_lookup(|k| {
            (k == "AWS_SHARED_CREDENTIALS_FILE").then(|| creds.clone())
        })
        .unwrap();
        assert!(
            matches!(&o.aws_credential, Some(AwsCredential::Profile { name, .. }) if name == "default"),
            "{:?}",
            o.aws_credential
        );
    }

    #[test]
    fn platform_credentials_from_environment() {
        // App Service identity and ECS container credentials.
        let env: HashMap<&str, &str> = [
            ("IDENTITY_ENDPOINT", "http://localhost:4141/msi/token"),
            ("IDENTITY_HEADER", "h"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/abc",
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "t"),
            ("HOME", "/nonexistent"),
            ("HTTPS_PROXY", "http://proxy.corp:3128"),
            ("NO_PROXY", "localhost, .internal ,"),
            ("KEYCORE_KMS_VERIFY", "0"),
        ]
        .into_iter()
        .collect();
        let o = KmsOptions::from_lookup(|k| env.get(k).map(|v| v.to_string())).unwrap();
        assert!(matches!(
            o.azure_credential,
            Some(AzureCredential::AppServiceIdentity { .. })
        ));
        let fed: HashMap<&str, &str> = [
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            (
                "AZURE_FEDERATED_TOKEN_FILE",
                "/var/run/secrets/azure/tokens/azure-identity-token",
            ),
        ]
        .into_iter()
        .collect();
        let of = KmsOptions::from_lookup(|k| fed.get(k).map(|v| v.to_string())).unwrap();
        assert!(matches!(
            of.azure_credential,
            Some(AzureCredential::WorkloadIdentity { .. })
        ));
        assert_eq!(
            o.aws_credential,
            Some(AwsCredential::Container {
                url: "http://169.254.170.2/v2/credentials/abc".into(),
                auth: Some(auth::ContainerAuth::Token("t".into())),
            })
        );
        assert_eq!(o.https_proxy.as_deref(), Some("http://proxy.corp:3128"));
        assert_eq!(
            o.no_proxy,
            vec!["localhost".to_string(), ".internal".into()]
        );
        assert!(!o.verify_signatures);
        // EKS IRSA: web identity, regional STS.
        let wi: HashMap<&str, &str> = [
            ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/secrets/eks/token"),
            ("AWS_ROLE_ARN", "arn:aws:iam::111122223333:role/r"),
            ("AWS_REGION", "eu-west-1"),
        ]
        .into_iter()
        .collect();
        let o = KmsOptions::from_lookup(|k| wi.get(k).map(|v| v.to_string())).unwrap();
        assert!(
            matches!(&o.aws_credential, Some(AwsCredential::WebIdentity { sts_endpoint, session_name, .. })
                if sts_endpoint == "https://sts.eu-west-1.amazonaws.com" && session_name == "keycore"),
            "{:?}",
            o.aws_credential
        );
    }
}
