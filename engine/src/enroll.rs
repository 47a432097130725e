//! Enrollment: obtain the server's own TLS certificate from the CDN's
//! certificates API, as the reference's registration does, with the API
//! token flow that replaced its service keys.
//!
//! Owns: the decision whether `serve` must enroll before loading its TLS
//! material ([`decide`]: `hostname`, `zone_id` and a credential set, and no
//! `auth_cert`/`auth_key` yet), the ECDSA P-384 key and the CSR (CN
//! [`CSR_COMMON_NAME`], the hostname as SAN), the POST of
//! `{"request_type":"keyless-certificate","hostnames":[..],"zone_id":..,"csr":..}`
//! with `Authorization: Bearer <enroll_api_token>` (preferred) or the legacy
//! `X-Auth-User-Service-Key: <origin_ca_api_key>` (warned: retired
//! 2026-09-30), the checks on the answer (HTTP status, `success`,
//! `errors[]`, a PEM certificate whose public key is the one just made),
//! and writing key (0600), CSR (0600) and certificate (0644) atomically
//! without following symlinks — only once everything checked out, so a
//! failed enrollment leaves nothing behind. [`manual`] is the reference's
//! manual activation: key and CSR written, the CSR printed for the
//! dashboard.
//!
//! Bounded: one request, [`MAX_RESPONSE_BYTES`] of answer, `enroll_timeout`
//! for the whole exchange; no retries (the operator or the service manager
//! decides). Must not: log or put in an error the key or the credential
//! (the server's own error text is quoted, truncated and stripped of
//! control characters); run on a reactor (it blocks; it runs before them).

use crate::config::Config;
use crate::http1::{self, HttpError, Url};
use crate::ops::write_file_atomic;
use rustls_pki_types::pem::PemObject as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

/// The CSR's subject CN, as the reference sends it.
pub const CSR_COMMON_NAME: &str = "Keyless Server Authentication Certificate";

/// Largest answer read from the certificates API (a certificate chain is a
/// few KiB; the API's error answers are smaller).
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Most characters of the server's own error text quoted in our error.
const MAX_DETAIL_CHARS: usize = 400;

/// The credential enrollment sends.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// `enroll_api_token`: `Authorization: Bearer`.
    Token(&'a str),
    /// `origin_ca_api_key`: `X-Auth-User-Service-Key` (retired by the API).
    ServiceKey(&'a str),
}

impl std::fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credential::Token(_) => "Token(<redacted>)",
            Credential::ServiceKey(_) => "ServiceKey(<redacted>)",
        })
    }
}

/// The credential of `cfg`: the token if set, else the service key.
pub fn credential(cfg: &Config) -> Option<Credential<'_>> {
    if !cfg.enroll.api_token.is_empty() {
        Some(Credential::Token(cfg.enroll.api_token.expose()))
    } else if !cfg.origin_ca_api_key.is_empty() {
        Some(Credential::ServiceKey(cfg.origin_ca_api_key.expose()))
    } else {
        None
    }
}

/// What `serve` does about enrollment before it loads its TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to do: the certificate and key exist, or no registration key
    /// is set (a missing file is then the TLS loader's error).
    Nothing,
    /// Enroll now: registration keys complete, certificate or key missing.
    Enroll,
    /// Some registration keys are set, the certificate or key is missing,
    /// and enrollment cannot run: the text says what is missing.
    Incomplete(String),
}

/// Decide as the reference would (see [`Decision`]).
pub fn decide(cfg: &Config) -> Decision {
    decide_with(cfg, &|p: &Path| p.exists())
}

/// [`decide`] with an injectable "file exists" (tests).
pub fn decide_with(cfg: &Config, exists: &dyn Fn(&Path) -> bool) -> Decision {
    if exists(&cfg.auth_cert) && exists(&cfg.auth_key) {
        return Decision::Nothing;
    }
    let cred = credential(cfg).is_some();
    if cfg.hostname.is_empty() && cfg.zone_id.is_empty() && !cred {
        return Decision::Nothing;
    }
    let mut missing = Vec::new();
    if cfg.hostname.is_empty() {
        missing.push("hostname");
    }
    if cfg.zone_id.is_empty() {
        missing.push("zone_id");
    }
    if !cred {
        missing.push("enroll_api_token (or the legacy origin_ca_api_key)");
    }
    if missing.is_empty() {
        return Decision::Enroll;
    }
    let absent = if exists(&cfg.auth_cert) {
        format!("auth_key {}", cfg.auth_key.display())
    } else {
        format!("auth_cert {}", cfg.auth_cert.display())
    };
    Decision::Incomplete(format!(
        "{absent} does not exist and enrollment cannot run: {} not set (set it, or run \
         `keycore enroll --manual` to write a key and CSR for the dashboard, or point \
         auth_cert/auth_key at an existing certificate and key)",
        missing.join(", ")
    ))
}

/// Why enrollment failed. No variant holds the key or the credential.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// A setting enrollment needs is empty.
    #[error("enrollment needs {0}")]
    Missing(String),
    /// The certificate and key exist and `--force` was not given.
    #[error("auth_cert {} already exists; `keycore enroll --force` replaces it", .0.display())]
    Exists(PathBuf),
    /// Making the key or CSR failed.
    #[error("cannot make the key and CSR")]
    Generate(#[source] rcgen::Error),
    /// `enroll_ca_file` could not be read as PEM.
    #[error("TLS trust for enroll_endpoint: enroll_ca_file {}", path.display())]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// `enroll_ca_file` holds no certificate.
    #[error("TLS trust for enroll_endpoint: enroll_ca_file {}: no CERTIFICATE in it", .0.display())]
    CaFileEmpty(PathBuf),
    /// A certificate of `enroll_ca_file` is not a usable trust anchor.
    #[error("TLS trust for enroll_endpoint: enroll_ca_file {}", path.display())]
    CaCert {
        /// The file.
        path: PathBuf,
        /// rustls' reason.
        #[source]
        source: rustls::Error,
    },
    /// Neither a system CA bundle nor `enroll_ca_file`.
    #[error("TLS trust for enroll_endpoint: no trusted CA: no system CA bundle found and enroll_ca_file is not set")]
    NoTrustRoots,
    /// rustls refused the TLS versions with its provider.
    #[error("TLS trust for enroll_endpoint: TLS versions")]
    TlsVersions(#[source] rustls::Error),
    /// No answer (connect, TLS, timeout, size).
    #[error("POST {endpoint}")]
    Http {
        /// `enroll_endpoint`.
        endpoint: String,
        /// What went wrong.
        source: HttpError,
    },
    /// The API answered with an HTTP error.
    #[error("certificates API {endpoint} answered HTTP {status} {reason}: {detail}")]
    Status {
        /// `enroll_endpoint`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Reason phrase.
        reason: String,
        /// The API's `errors[]`, or the start of the body.
        detail: String,
    },
    /// The API answered `"success": false`.
    #[error("certificates API refused the request: {0}")]
    Refused(String),
    /// The answer is not what the API documents.
    #[error("certificates API answer unusable: {0}")]
    BadAnswer(String),
    /// The certificate is not for the key just generated.
    #[error(
        "the certificate returned is not for the key just generated (its public key differs); \
         nothing written"
    )]
    KeyMismatch,
    /// Writing a file failed.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A new key and its CSR.
pub struct Generated {
    /// PKCS#8 PEM (zeroed on drop).
    pub key_pem: Zeroizing<String>,
    /// The CSR, PEM.
    pub csr_pem: String,
    /// The public key, SubjectPublicKeyInfo DER.
    pub spki_der: Vec<u8>,
}

impl std::fmt::Debug for Generated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generated")
            .field("key_pem", &"<redacted>")
            .field("csr_pem", &self.csr_pem)
            .finish()
    }
}

/// Make an ECDSA P-384 key (aws-lc-rs, through rcgen) and a CSR signed by
/// it: subject CN [`CSR_COMMON_NAME`], SAN `hostname`.
pub fn generate(hostname: &str) -> Result<Generated, EnrollError> {
    let g = EnrollError::Generate;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).map_err(g)?;
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_owned()]).map_err(g)?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, CSR_COMMON_NAME);
    params.distinguished_name = dn;
    let csr = params.serialize_request(&key).map_err(g)?;
    Ok(Generated {
        key_pem: Zeroizing::new(key.serialize_pem()),
        csr_pem: csr.pem().map_err(g)?,
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
    })
}

/// The request body the API documents.
pub fn request_body(hostname: &str, zone_id: &str, csr_pem: &str) -> String {
    serde_json::json!({
        "request_type": "keyless-certificate",
        "hostnames": [hostname],
        "zone_id": zone_id,
        "csr": csr_pem,
    })
    .to_string()
}

/// Quote the server's text safely: control characters dropped, length cut.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL_CHARS)
        .collect();
    if s.chars().count() > MAX_DETAIL_CHARS {
        out.push('…');
    }
    out
}

/// `errors[]` of an API answer as "code N: message; ...", if any.
fn api_errors(v: &serde_json::Value) -> Option<String> {
    let errs = v.get("errors")?.as_array()?;
    if errs.is_empty() {
        return None;
    }
    let parts: Vec<String> = errs
        .iter()
        .map(|e| {
            let msg = e.get("message").and_then(|m| m.as_str()).unwrap_or("");
            match e.get("code").and_then(|c| c.as_i64()) {
                Some(c) => format!("code {c}: {msg}"),
                None => msg.to_owned(),
            }
        })
        .collect();
    Some(sanitize(&parts.join("; ")))
}

/// Check an answer and return the certificate PEM: HTTP 2xx, JSON,
/// `success: true`, `result.certificate` a PEM certificate chain whose first
/// certificate carries `spki_der`.
pub fn certificate_from_answer(
    endpoint: &str,
    r: &http1::Response,
    spki_der: &[u8],
) -> Result<String, EnrollError> {
    let json: Option<serde_json::Value> = serde_json::from_slice(&r.body).ok();
    if !(200..300).contains(&r.status) {
        let detail = json.as_ref().and_then(api_errors).unwrap_or_else(|| {
            sanitize(&String::from_utf8_lossy(&r.body[..r.body.len().min(1024)]))
        });
        return Err(EnrollError::Status {
            endpoint: endpoint.to_owned(),
            status: r.status,
            reason: sanitize(&r.reason),
            detail,
        });
    }
    let v = json.ok_or_else(|| EnrollError::BadAnswer("body is not JSON".into()))?;
    if v.get("success").and_then(|s| s.as_bool()) != Some(true) {
        return Err(EnrollError::Refused(api_errors(&v).unwrap_or_else(|| {
            "success is not true and no errors given".into()
        })));
    }
    let pem = v
        .get("result")
        .and_then(|r| r.get("certificate"))
        .and_then(|c| c.as_str())
        .ok_or_else(|| EnrollError::BadAnswer("no result.certificate string".into()))?;
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| EnrollError::BadAnswer(format!("result.certificate is not PEM: {e}")))?;
    let first = certs.first().ok_or_else(|| {
        EnrollError::BadAnswer("result.certificate holds no CERTIFICATE block".into())
    })?;
    let (_, cert) = x509_parser::parse_x509_certificate(first).map_err(|e| {
        EnrollError::BadAnswer(format!(
            "result.certificate is not an X.509 certificate: {e}"
        ))
    })?;
    if cert.public_key().raw != spki_der {
        return Err(EnrollError::KeyMismatch);
    }
    let mut out = pem.trim_end().to_owned();
    out.push('\n');
    Ok(out)
}

/// The TLS client settings for the endpoint: the system roots plus
/// `enroll_ca_file`.
fn client_tls(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, EnrollError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    if let Some(p) = ca_file {
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(p)
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .map_err(|source| EnrollError::CaFile {
                path: p.to_path_buf(),
                source,
            })?;
        if certs.is_empty() {
            return Err(EnrollError::CaFileEmpty(p.to_path_buf()));
        }
        for c in certs {
            roots.add(c).map_err(|source| EnrollError::CaCert {
                path: p.to_path_buf(),
                source,
            })?;
        }
    }
    if roots.is_empty() {
        return Err(EnrollError::NoTrustRoots);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(EnrollError::TlsVersions)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// What an automatic enrollment wrote.
#[derive(Debug, Clone)]
pub struct Enrolled {
    /// `auth_cert`.
    pub cert: PathBuf,
    /// `auth_key`.
    pub key: PathBuf,
    /// `auth_csr`.
    pub csr: PathBuf,
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), EnrollError> {
    write_file_atomic(path, bytes, mode).map_err(|source| EnrollError::Write {
        path: path.to_owned(),
        source,
    })
}

/// Enroll with the API: make a key and CSR, POST them, check the answer,
/// then write key, CSR and certificate. `force`: even if the certificate
/// and key exist.
pub fn enroll(cfg: &Config, force: bool) -> Result<Enrolled, EnrollError> {
    if !force && cfg.auth_cert.exists() && cfg.auth_key.exists() {
        return Err(EnrollError::Exists(cfg.auth_cert.clone()));
    }
    let mut missing = Vec::new();
    if cfg.hostname.is_empty() {
        missing.push("hostname");
    }
    if cfg.zone_id.is_empty() {
        missing.push("zone_id");
    }
    let cred = credential(cfg);
    if cred.is_none() {
        missing.push("enroll_api_token (or the legacy origin_ca_api_key)");
    }
    let Some(cred) = cred.filter(|_| missing.is_empty()) else {
        return Err(EnrollError::Missing(format!(
            "{} (or `keycore enroll --manual` for the dashboard flow)",
            missing.join(", ")
        )));
    };
    let endpoint = cfg.enroll.endpoint.as_str();
    let url = Url::parse(endpoint).map_err(|source| EnrollError::Http {
        endpoint: endpoint.to_owned(),
        source,
    })?;
    let tls = client_tls(cfg.enroll.ca_file.as_deref())?;
    let gen = generate(&cfg.hostname)?;
    let body = request_body(&cfg.hostname, &cfg.zone_id, &gen.csr_pem);
    let auth: (&str, Zeroizing<String>) = match cred {
        Credential::Token(t) => ("Authorization", Zeroizing::new(format!("Bearer {t}"))),
        Credential::ServiceKey(k) => {
            tracing::warn!(
                "enrolling with origin_ca_api_key (X-Auth-User-Service-Key): the API retired \
                 service keys on 2026-09-30; create an API token and set enroll_api_token"
            );
            ("X-Auth-User-Service-Key", Zeroizing::new(k.to_owned()))
        }
    };
    tracing::info!(
        endpoint,
        hostname = %cfg.hostname,
        zone_id = %cfg.zone_id,
        credential = auth.0,
        "enrolling: requesting the server certificate"
    );
    let headers = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
        (auth.0, auth.1.as_str()),
    ];
    let answer = http1::post(
        &url,
        &headers,
        body.as_bytes(),
        Some(tls),
        cfg.enroll.timeout,
        MAX_RESPONSE_BYTES,
    )
    .map_err(|source| EnrollError::Http {
        endpoint: endpoint.to_owned(),
        source,
    })?;
    let cert_pem = certificate_from_answer(endpoint, &answer, &gen.spki_der)?;
    if let Some(parsed) = rustls_pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
    {
        if let Ok((_, c)) = x509_parser::parse_x509_certificate(&parsed) {
            let names: Vec<String> = c
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|s| {
                    s.value
                        .general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect()
                })
                .unwrap_or_default();
            if !names.iter().any(|n| n.ends_with(&cfg.hostname)) {
                tracing::warn!(hostname = %cfg.hostname, names = ?names, "the enrolled certificate does not name hostname");
            }
        }
    }
    write(&cfg.auth_key, gen.key_pem.as_bytes(), 0o600)?;
    write(&cfg.auth_csr, gen.csr_pem.as_bytes(), 0o600)?;
    write(&cfg.auth_cert, cert_pem.as_bytes(), 0o644)?;
    tracing::info!(
        cert = %cfg.auth_cert.display(),
        key = %cfg.auth_key.display(),
        csr = %cfg.auth_csr.display(),
        "enrolled: certificate, key and CSR written"
    );
    Ok(Enrolled {
        cert: cfg.auth_cert.clone(),
        key: cfg.auth_key.clone(),
        csr: cfg.auth_csr.clone(),
    })
}

/// Manual activation: make a key and CSR for `hostname`, write them to
/// `auth_key` (0600) and `auth_csr` (0600), and return the CSR for the
/// operator to paste into the dashboard; the certificate it gives back
/// goes to `auth_cert`.
pub fn manual(cfg: &Config, force: bool) -> Result<String, EnrollError> {
    if !force && cfg.auth_cert.exists() && cfg.auth_key.exists() {
        return Err(EnrollError::Exists(cfg.auth_cert.clone()));
    }
    if cfg.hostname.is_empty() {
        return Err(EnrollError::Missing("hostname".into()));
    }
    let gen = generate(&cfg.hostname)?;
    write(&cfg.auth_key, gen.key_pem.as_bytes(), 0o600)?;
    write(&cfg.auth_csr, gen.csr_pem.as_bytes(), 0o600)?;
    tracing::info!(
        key = %cfg.auth_key.display(),
        csr = %cfg.auth_csr.display(),
        "manual activation: key and CSR written; submit the CSR and save the certificate as auth_cert"
    );
    Ok(gen.csr_pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_config::SecretString;

    fn cfg() -> Config {
        let d = Config::default();
        Config {
            hostname: "keyless.example.com".into(),
            zone_id: "z1".into(),
            enroll: keycore_config::EnrollSettings {
                api_token: SecretString::new("tok"),
                ..d.enroll.clone()
            },
            ..d
        }
    }

    #[test]
    fn csr_has_the_references_subject_san_and_a_p384_key() {
        use x509_parser::prelude::FromDer as _;
        let g = generate("keyless.example.com").unwrap();
        let der =
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(g.csr_pem.as_bytes())
                .unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        let info = &csr.certification_request_info;
        aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
            &info.subject_pki.subject_public_key.data,
        )
        .verify(info.raw, &csr.signature_value.data)
        .expect("CSR signed by its key");
        assert_eq!(info.subject.to_string(), format!("CN={CSR_COMMON_NAME}"));
        assert_eq!(info.subject_pki.raw, &g.spki_der[..]);
        let kind = keycore_keys::classify_spki(&g.spki_der).unwrap();
        assert_eq!(kind, keycore_keys::KeyKind::EcdsaP384);
        let san: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(
                    s.general_names
                        .iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(san, ["DNSName(keyless.example.com)"]);
        assert!(g.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(!format!("{g:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn request_body_is_the_documented_json() {
        let v: serde_json::Value =
            serde_json::from_str(&request_body("h.example", "z9", "-----BEGIN")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"request_type":"keyless-certificate","hostnames":["h.example"],"zone_id":"z9","csr":"-----BEGIN"})
        );
    }

    #[test]
    fn decisions_follow_the_reference() {
        let none = |_: &Path| false;
        let all = |_: &Path| true;
        assert_eq!(decide_with(&cfg(), &none), Decision::Enroll);
        assert_eq!(decide_with(&cfg(), &all), Decision::Nothing);
        assert_eq!(decide_with(&Config::default(), &none), Decision::Nothing);
        let mut c = cfg();
        c.enroll.api_token = SecretString::default();
        match decide_with(&c, &none) {
            Decision::Incomplete(m) => {
                assert!(m.contains("auth_cert server.pem does not exist"), "{m}");
                assert!(m.contains("enroll_api_token"), "{m}");
            }
            d => panic!("{d:?}"),
        }
        c.origin_ca_api_key = SecretString::new("v1.0-k");
        assert_eq!(decide_with(&c, &none), Decision::Enroll);
        assert!(matches!(credential(&c), Some(Credential::ServiceKey(_))));
        // The token wins when both are set.
        assert!(matches!(credential(&cfg()), Some(Credential::Token(_))));
        assert_eq!(
            format!("{:?}", credential(&cfg())),
            "Some(Token(<redacted>))"
        );
    }

    fn answer(status: u16, body: &str) -> http1::Response {
        http1::Response {
            status,
            reason: "X".into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn every_bad_answer_is_a_clear_error() {
        let g = generate("h.example").unwrap();
        let e = certificate_from_answer(
            "https://api/",
            &answer(
                403,
                r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}"#,
            ),
            &g.spki_der,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "certificates API https://api/ answered HTTP 403 X: code 10000: Authentication error"
        );
        let e = certificate_from_answer("u", &answer(502, "<html>\x1b[2Jbad gateway"), &g.spki_der)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("HTTP 502 X: <html> [2Jbad gateway"), "{e}");
        let e = certificate_from_answer(
            "u",
            &answer(
                200,
                r#"{"success":false,"errors":[{"code":1001,"message":"bad csr"}]}"#,
            ),
            &g.spki_der,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "certificates API refused the request: code 1001: bad csr"
        );
        for (body, want) in [
            ("not json", "body is not JSON"),
            (r#"{"success":true,"result":{}}"#, "no result.certificate"),
            (
                r#"{"success":true,"result":{"certificate":"hello"}}"#,
                "holds no CERTIFICATE block",
            ),
        ] {
            let e = certificate_from_answer("u", &answer(200, body), &g.spki_der)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{body}: {e}");
        }
        // A real certificate, but for another key.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["h.example".into()])
            .unwrap()
            .self_signed(&other)
            .unwrap();
        let body = serde_json::json!({"success":true,"result":{"certificate":cert.pem()}});
        let e =
            certificate_from_answer("u", &answer(200, &body.to_string()), &g.spki_der).unwrap_err();
        assert!(matches!(e, EnrollError::KeyMismatch), "{e}");
        // And for the right one.
        let body = serde_json::json!({"success":true,"result":{"certificate":cert.pem()}});
        let pem = certificate_from_answer(
            "u",
            &answer(200, &body.to_string()),
            &rcgen::PublicKeyData::subject_public_key_info(&other),
        )
        .unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----") && pem.ends_with("-----\n"));
    }

    #[test]
    fn missing_settings_and_existing_files_are_refused_before_any_request() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.zone_id.clear();
        c.auth_cert = dir.path().join("c.pem");
        c.auth_key = dir.path().join("k.pem");
        c.auth_csr = dir.path().join("r.csr");
        let e = enroll(&c, false).unwrap_err().to_string();
        assert!(e.starts_with("enrollment needs zone_id"), "{e}");
        std::fs::write(&c.auth_cert, "x").unwrap();
        std::fs::write(&c.auth_key, "x").unwrap();
        let e = enroll(&cfg_with(&c), false).unwrap_err();
        assert!(matches!(e, EnrollError::Exists(_)), "{e}");
        assert!(!c.auth_csr.exists());
    }

    /// A bad `enroll_ca_file` is refused naming the file; the cause is the
    /// chain's next link, printed once.
    #[test]
    fn a_bad_enroll_ca_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(matches!(
            client_tls(Some(&empty)),
            Err(EnrollError::CaFileEmpty(p)) if p == empty
        ));
        let missing = dir.path().join("missing.pem");
        let e = client_tls(Some(&missing)).unwrap_err();
        assert!(
            matches!(&e, EnrollError::CaFile { path, .. } if *path == missing),
            "{e:?}"
        );
        let text = keycore_keys::error_chain(&e);
        assert!(
            text.starts_with("TLS trust for enroll_endpoint: enroll_ca_file ")
                && text.contains("missing.pem: ")
                && text.matches("missing.pem").count() == 1,
            "{text}"
        );
    }

    fn cfg_with(c: &Config) -> Config {
        let mut c = c.clone();
        c.zone_id = "z1".into();
        c
    }

    #[test]
    fn manual_activation_writes_key_and_csr_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.auth_cert = dir.path().join("c.pem");
        c.auth_key = dir.path().join("k.pem");
        c.auth_csr = dir.path().join("r.csr");
        // A planted symlink at the key's name is replaced, not followed.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &c.auth_key).unwrap();
        let csr = manual(&c, false).unwrap();
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert_eq!(std::fs::read_to_string(&c.auth_csr).unwrap(), csr);
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        for p in [&c.auth_key, &c.auth_csr] {
            let m = std::fs::symlink_metadata(p).unwrap();
            assert!(m.file_type().is_file());
            assert_eq!(m.permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        assert!(!c.auth_cert.exists());
    }
}
