//! Stand-in of the CDN's certificates API for keyless enrollment
//! (`POST /client/v4/certificates`), on the same HTTPS listener as the KMS
//! stand-ins.
//!
//! Checks what keycore's enrollment must get right, as the API documents
//! it: `POST`, `Content-Type: application/json`, a credential registered
//! with the stand-in (`Authorization: Bearer <token>`, or the legacy
//! `X-Auth-User-Service-Key`), a JSON body with `request_type`
//! `"keyless-certificate"`, exactly one hostname, a known `zone_id` and a
//! PEM CSR whose signature verifies with its own key and whose SAN names the
//! hostname. It then issues a certificate for the CSR's key (CN from the
//! CSR, SAN the hostname, server-auth EKU) signed by its own test CA
//! ([`CfApi::ca_pem`]), and answers
//! `{"success":true,"result":{"certificate":PEM,...}}`; failures answer the
//! API's envelope `{"success":false,"errors":[{"code":N,"message":..}]}`
//! with the HTTP status the API uses (403 for authentication).
//!
//! Must not: depend on any engine crate (it stands in for the far side).

use crate::{bump, json, lock, ApiError, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use rustls_pki_types::pem::PemObject as _;
use serde_json::json as j;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

/// The path the API serves (with or without the trailing slash).
pub const PATH: &str = "/client/v4/certificates";

/// The stand-in's accounts and its CA.
#[derive(Debug, Default)]
pub struct CfApi {
    tokens: Mutex<Vec<String>>,
    service_keys: Mutex<Vec<String>>,
    zones: Mutex<Vec<String>>,
    ca: Mutex<Option<(String, rcgen::Issuer<'static, rcgen::KeyPair>)>>,
    /// Certificates issued.
    pub issued: AtomicU64,
    /// Requests refused for their credential.
    pub auth_failures: AtomicU64,
}

impl CfApi {
    /// Accept `Authorization: Bearer <token>`.
    pub fn add_token(&self, token: &str) {
        lock(&self.tokens).push(token.to_owned());
    }

    /// Accept `X-Auth-User-Service-Key: <key>`.
    pub fn add_service_key(&self, key: &str) {
        lock(&self.service_keys).push(key.to_owned());
    }

    /// Accept `zone_id`.
    pub fn add_zone(&self, zone: &str) {
        lock(&self.zones).push(zone.to_owned());
    }

    /// The CA that signs issued certificates (PEM); made on first use.
    pub fn ca_pem(&self) -> Result<String, ApiError> {
        let mut ca = lock(&self.ca);
        if ca.is_none() {
            *ca = Some(make_ca()?);
        }
        Ok(ca.as_ref().map(|c| c.0.clone()).unwrap_or_default())
    }
}

fn make_ca() -> Result<(String, rcgen::Issuer<'static, rcgen::KeyPair>), ApiError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(ApiError::Certificate)?;
    let mut p =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(ApiError::Certificate)?;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "keycore-kmssim keyless CA");
    let cert = p.self_signed(&key).map_err(ApiError::Certificate)?;
    Ok((cert.pem(), rcgen::Issuer::new(p, key)))
}

/// An API error answer.
fn fail(status: StatusCode, code: u32, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        j!({"success": false, "errors": [{"code": code, "message": message}], "messages": [], "result": null}),
    )
}

/// The public key of a CSR, for rcgen to certify.
struct CsrKey {
    point: Vec<u8>,
    alg: &'static rcgen::SignatureAlgorithm,
}

impl rcgen::PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// `POST /client/v4/certificates`.
pub(crate) fn certificates(st: &State, req: &Parts, body: &[u8]) -> Response<Full<Bytes>> {
    let api = &st.cfapi;
    if req.method != Method::POST {
        return fail(StatusCode::METHOD_NOT_ALLOWED, 10405, "method not allowed");
    }
    let header = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    if !header("content-type").is_some_and(|c| c.starts_with("application/json")) {
        return fail(
            StatusCode::BAD_REQUEST,
            6003,
            "Content-Type must be application/json",
        );
    }
    let authed = match (header("authorization"), header("x-auth-user-service-key")) {
        (Some(a), _) => a
            .strip_prefix("Bearer ")
            .is_some_and(|t| lock(&api.tokens).iter().any(|x| x == t)),
        (None, Some(k)) => lock(&api.service_keys).iter().any(|x| x == k),
        (None, None) => false,
    };
    if !authed {
        bump(&api.auth_failures);
        return fail(StatusCode::FORBIDDEN, 10000, "Authentication error");
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return fail(
            StatusCode::BAD_REQUEST,
            6007,
            "Malformed JSON in request body",
        );
    };
    if v.get("request_type").and_then(|x| x.as_str()) != Some("keyless-certificate") {
        return fail(
            StatusCode::BAD_REQUEST,
            1002,
            "request_type must be keyless-certificate",
        );
    }
    let hostnames: Vec<&str> = v
        .get("hostnames")
        .and_then(|h| h.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
        .unwrap_or_default();
    let [host] = hostnames[..] else {
        return fail(
            StatusCode::BAD_REQUEST,
            1003,
            "exactly one hostname expected",
        );
    };
    let zone = v.get("zone_id").and_then(|z| z.as_str()).unwrap_or("");
    if !lock(&api.zones).iter().any(|z| z == zone) {
        return fail(StatusCode::NOT_FOUND, 1001, "unknown zone_id");
    }
    let Some(csr_pem) = v.get("csr").and_then(|c| c.as_str()) else {
        return fail(StatusCode::BAD_REQUEST, 1004, "csr missing");
    };
    let key = match check_csr(csr_pem, host) {
        Ok(k) => k,
        Err(m) => return fail(StatusCode::BAD_REQUEST, 1010, &m.to_string()),
    };
    let pem = match issue(api, host, &key) {
        Ok(p) => p,
        Err(m) => return fail(StatusCode::INTERNAL_SERVER_ERROR, 1100, &m.to_string()),
    };
    bump(&api.issued);
    json(
        StatusCode::OK,
        j!({
            "success": true,
            "errors": [],
            "messages": [],
            "result": {
                "id": crate::random_hex(16),
                "certificate": pem,
                "hostnames": [host],
                "request_type": "keyless-certificate",
                "csr": csr_pem,
            }
        }),
    )
}

/// Parse and verify a CSR; its SAN must name `host`.
fn check_csr(pem: &str, host: &str) -> Result<CsrKey, ApiError> {
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer as _;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(ApiError::CsrPem)?;
    let (_, csr) = X509CertificationRequest::from_der(der.as_ref()).map_err(ApiError::CsrDer)?;
    let info = &csr.certification_request_info;
    let sig_oid = csr.signature_algorithm.algorithm.to_id_string();
    let (verify_alg, alg): (
        &'static dyn aws_lc_rs::signature::VerificationAlgorithm,
        &'static rcgen::SignatureAlgorithm,
    ) = match sig_oid.as_str() {
        "1.2.840.10045.4.3.3" => (
            &aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1,
            &rcgen::PKCS_ECDSA_P384_SHA384,
        ),
        "1.2.840.10045.4.3.2" => (
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
            &rcgen::PKCS_ECDSA_P256_SHA256,
        ),
        o => return Err(ApiError::CsrAlgorithm(o.to_string())),
    };
    let point = info.subject_pki.subject_public_key.data.to_vec();
    aws_lc_rs::signature::UnparsedPublicKey::new(verify_alg, &point)
        .verify(info.raw, &csr.signature_value.data)
        .map_err(|_| ApiError::CsrSignature)?;
    let names_host = csr.requested_extensions().into_iter().flatten().any(|e| {
        matches!(e, ParsedExtension::SubjectAlternativeName(s)
            if s.general_names.iter().any(|n| matches!(n, GeneralName::DNSName(d) if *d == host)))
    });
    if !names_host {
        return Err(ApiError::CsrHost(host.to_string()));
    }
    Ok(CsrKey { point, alg })
}

/// Certify `key` for `host` with the stand-in's CA.
fn issue(api: &CfApi, host: &str, key: &CsrKey) -> Result<String, ApiError> {
    api.ca_pem()?;
    let ca = lock(&api.ca);
    let (_, issuer) = ca.as_ref().ok_or(ApiError::NoCa)?;
    let mut p =
        rcgen::CertificateParams::new(vec![host.to_owned()]).map_err(ApiError::Certificate)?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Keyless Server Authentication Certificate",
    );
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    let cert = p.signed_by(key, issuer).map_err(ApiError::Certificate)?;
    Ok(cert.pem())
}
