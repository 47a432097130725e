//! AWS KMS asymmetric keys over the JSON 1.1 API (`X-Amz-Target:
//! TrentService.*`), signed with Signature Version 4: GetPublicKey, Sign
//! with `MessageType=DIGEST` (Ed25519: `RAW`).
//!
//! Owns: the SigV4 signer and the op -> `SigningAlgorithm` map.
//! - PKCS#1 v1.5 SHA-256/384/512 -> `RSASSA_PKCS1_V1_5_SHA_<n>`;
//! - PSS SHA-256/384/512 -> `RSASSA_PSS_SHA_<n>` (AWS uses salt = hash
//!   length, as TLS 1.3 needs);
//! - ECDSA on P-256/P-384/P-521 -> `ECDSA_SHA_256/384/512`, the digest fitted
//!   to the curve; AWS answers DER already;
//! - MD5‖SHA1, SHA-1, SHA-224 PKCS#1: AWS KMS has no such algorithm and no
//!   raw RSA signing: refused;
//! - RSA decrypt: AWS KMS decrypts RSA only with OAEP (`RSAES_OAEP_SHA_1/256`),
//!   which cannot give the edge its PKCS#1 v1.5 block: refused;
//! - Ed25519 (`ECC_NIST_EDWARDS25519` keys) -> `ED25519_SHA_512` with
//!   `MessageType=RAW`: pure Ed25519 over the whole message, as TLS signs
//!   (the other Ed25519 algorithm, `ED25519_PH_SHA_512`, is the pre-hashed
//!   Ed25519ph variant, which no TLS peer verifies); AWS takes messages of
//!   at most [`MAX_RAW_MESSAGE`] bytes;
//! - only algorithms the key lists in `SigningAlgorithms` are used.
//!
//! Errors: AWS KMS answers HTTP 400 `ThrottlingException` (not 429) when a
//! request rate is exceeded; that and 5xx are retried.
//! `LimitExceededException` is a quota ("the request was rejected because a
//! quota was exceeded", e.g. a resource quota), which no retry within an
//! operation's deadline clears: it fails at once, named as a quota. Key state
//! errors (`DisabledException`, `KMSInvalidStateException`: pending
//! deletion, pending import, unavailable custom key store), `NotFoundException`
//! and `AccessDeniedException` fail at once with the reason spelled out.

use super::auth::{unix_now, AwsCredCache, AwsCreds};
use super::http::{quoted, with_retries, Attempt, CallError, Http, Reply, Service};
use super::uri::AwsKey;
use super::util::{amz_date, b64, fit_ecdsa_digest, unb64, PlanError};
use super::OpError;
use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, StatusCode};
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};
use tokio::time::Instant;

/// Largest `Message` AWS KMS signs (API reference, Sign: "messages of up
/// to 4096 bytes").
pub const MAX_RAW_MESSAGE: usize = 4096;

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg)
        .as_ref()
        .to_vec()
}

/// One request to sign: everything SigV4 covers.
#[derive(Debug)]
pub struct SigV4Input<'a> {
    /// `POST`.
    pub method: &'a str,
    /// Canonical URI (`/`).
    pub path: &'a str,
    /// Canonical query string (empty for KMS).
    pub query: &'a str,
    /// Headers to sign, names lower-case, values trimmed; sorted here.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: &'a [u8],
    /// Region.
    pub region: &'a str,
    /// Service (`kms`).
    pub service: &'a str,
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
}

/// The `Authorization` header value (AWS4-HMAC-SHA256).
pub fn sigv4_authorization(inp: &SigV4Input<'_>, access_key: &str, secret_key: &str) -> String {
    let mut headers = inp.headers.clone();
    headers.sort();
    let canon_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
    let signed = signed.join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        inp.method,
        inp.path,
        inp.query,
        canon_headers,
        signed,
        hex(digest::digest(&digest::SHA256, inp.body).as_ref())
    );
    let day = &inp.amz_date[..8];
    let scope = format!("{day}/{}/{}/aws4_request", inp.region, inp.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        inp.amz_date,
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let k_date = hmac_sha256(format!("AWS4{secret_key}").as_bytes(), day.as_bytes());
    let k_region = hmac_sha256(&k_date, inp.region.as_bytes());
    let k_service = hmac_sha256(&k_region, inp.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"aws4_request");
    let sig = hex(&hmac_sha256(&k_signing, to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={sig}"
    )
}

/// One planned Sign call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignPlan {
    /// `SigningAlgorithm`.
    pub alg: &'static str,
    /// `Message`.
    pub msg: Vec<u8>,
    /// `MessageType`: `DIGEST` (a hash the edge computed) or `RAW`
    /// (Ed25519's whole message).
    pub message_type: &'static str,
}

/// Pick the signing algorithm for an op, or say why not.
pub fn plan(
    kind: KeyKind,
    offered: &[String],
    op: OpClass,
    input: &[u8],
) -> Result<SignPlan, PlanError> {
    let mut message_type = "DIGEST";
    let (alg, msg) = match (kind, op) {
        (KeyKind::Rsa { .. }, OpClass::RsaPkcs1(h) | OpClass::RsaPss(h)) => {
            let pss = matches!(op, OpClass::RsaPss(_));
            let alg = match (pss, h) {
                (false, Hash::Sha256) => "RSASSA_PKCS1_V1_5_SHA_256",
                (false, Hash::Sha384) => "RSASSA_PKCS1_V1_5_SHA_384",
                (false, Hash::Sha512) => "RSASSA_PKCS1_V1_5_SHA_512",
                (true, Hash::Sha256) => "RSASSA_PSS_SHA_256",
                (true, Hash::Sha384) => "RSASSA_PSS_SHA_384",
                (true, Hash::Sha512) => "RSASSA_PSS_SHA_512",
                _ => {
                    return Err(PlanError::NoAlgorithm {
                        service: "AWS KMS",
                        op,
                    })
                }
            };
            (alg, input.to_vec())
        }
        (KeyKind::EcdsaP256, OpClass::Ecdsa(_)) => (
            "ECDSA_SHA_256",
            fit_ecdsa_digest(kind, input).ok_or(PlanError::EmptyDigest)?,
        ),
        (KeyKind::EcdsaP384, OpClass::Ecdsa(_)) => (
            "ECDSA_SHA_384",
            fit_ecdsa_digest(kind, input).ok_or(PlanError::EmptyDigest)?,
        ),
        (KeyKind::EcdsaP521, OpClass::Ecdsa(_)) => (
            "ECDSA_SHA_512",
            fit_ecdsa_digest(kind, input).ok_or(PlanError::EmptyDigest)?,
        ),
        (KeyKind::Ed25519, OpClass::Ed25519) => {
            if input.is_empty() || input.len() > MAX_RAW_MESSAGE {
                return Err(PlanError::MessageSize {
                    service: "AWS KMS",
                    len: input.len(),
                    max: MAX_RAW_MESSAGE,
                });
            }
            message_type = "RAW";
            ("ED25519_SHA_512", input.to_vec())
        }
        (KeyKind::Rsa { .. }, OpClass::RsaDecrypt) => {
            return Err(PlanError::NoRawDecrypt { service: "AWS KMS" })
        }
        (kind, op) => {
            return Err(PlanError::Unsupported {
                service: "AWS KMS",
                kind,
                op,
            })
        }
    };
    if !offered.iter().any(|a| a == alg) {
        return Err(PlanError::NotOffered {
            alg,
            offered: offered.join(", "),
        });
    }
    Ok(SignPlan {
        alg,
        msg,
        message_type,
    })
}

/// The AWS service.
#[derive(Debug)]
pub struct Aws {
    /// Limits and counters.
    pub svc: Service,
    /// Credentials.
    pub creds: AwsCredCache,
    /// Endpoint override (else `https://kms.<region>.amazonaws.com`).
    pub endpoint: Option<String>,
}

/// What GetPublicKey told us.
#[derive(Debug, Clone)]
pub struct AwsKeyInfo {
    /// DER SPKI.
    pub spki: Vec<u8>,
    /// Kind.
    pub kind: KeyKind,
    /// `SigningAlgorithms`.
    pub algorithms: Vec<String>,
}

pub(crate) fn error_type(r: &Reply) -> String {
    let from_header = r
        .headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(':').next().unwrap_or(s).to_owned());
    let from_body = serde_json::from_slice::<serde_json::Value>(&r.body)
        .ok()
        .and_then(|v| v["__type"].as_str().map(str::to_owned));
    let t = from_body.or(from_header).unwrap_or_default();
    quoted(t.rsplit('#').next().unwrap_or_default())
}

impl Aws {
    async fn call(
        &self,
        http: &Http,
        key: &AwsKey,
        deadline: Instant,
        target: &str,
        body: String,
    ) -> Result<serde_json::Value, CallError> {
        let endpoint = self
            .endpoint
            .clone()
            .unwrap_or_else(|| key.default_endpoint());
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let authority = endpoint
            .split_once("://")
            .map(|(_, a)| a)
            .unwrap_or(&endpoint)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        with_retries(&self.svc, deadline, async || {
            let creds = match self
                .creds
                .get(http, deadline, &self.svc.stats.token_refreshes)
                .await
            {
                Ok(c) => c,
                Err(e) => return Attempt::transport(e),
            };
            let req = match signed_request(
                &endpoint,
                &authority,
                &key.region,
                target,
                &body,
                &creds,
                unix_now(),
            ) {
                Ok(r) => r,
                Err(e) => {
                    return Attempt::Fail(CallError::Service(format!(
                        "request to {endpoint}: {e}"
                    )))
                }
            };
            let r = match http.send(req, deadline).await {
                Ok(r) => r,
                Err(e) => return Attempt::transport(e),
            };
            if r.status == StatusCode::OK {
                return match serde_json::from_slice(&r.body) {
                    Ok(v) => Attempt::Done(v),
                    Err(e) => Attempt::Fail(CallError::Service(format!("bad JSON answer: {e}"))),
                };
            }
            let t = error_type(&r);
            let why = format!("HTTP {} {t}: {}", r.status.as_u16(), r.snippet());
            match t.as_str() {
                "ThrottlingException" => Attempt::Retry {
                    after: r.retry_after(),
                    throttled: true,
                    why,
                },
                "LimitExceededException" => Attempt::Fail(CallError::Service(format!(
                    "{why} (an AWS KMS quota was exceeded; this is not request-rate throttling and is not retried: raise the quota in Service Quotas)"
                ))),
                "DisabledException" => Attempt::Fail(CallError::Service(format!(
                    "{why} (the KMS key is disabled: enable it with `aws kms enable-key`)"
                ))),
                "KMSInvalidStateException" => Attempt::Fail(CallError::Service(format!(
                    "{why} (the KMS key is not usable in its current state, e.g. pending deletion or pending import: check `aws kms describe-key`)"
                ))),
                "AccessDeniedException" => Attempt::Fail(CallError::Service(format!(
                    "{why} (the key policy or IAM policy does not allow this principal kms:GetPublicKey and kms:Sign on the key)"
                ))),
                "KMSInternalException"
                | "DependencyTimeoutException"
                | "ServiceUnavailableException" => Attempt::Retry {
                    after: r.retry_after(),
                    throttled: false,
                    why,
                },
                "ExpiredTokenException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException" => {
                    self.creds.invalidate();
                    Attempt::Reauth(why)
                }
                _ => Attempt::status(&r),
            }
        })
        .await
    }

    /// GetPublicKey.
    pub async fn fetch_public(
        &self,
        http: &Http,
        key: &AwsKey,
        deadline: Instant,
    ) -> Result<AwsKeyInfo, CallError> {
        let body = serde_json::json!({"KeyId": key.arn}).to_string();
        let v = self
            .call(http, key, deadline, "TrentService.GetPublicKey", body)
            .await?;
        let usage = v["KeyUsage"].as_str().unwrap_or_default();
        if usage != "SIGN_VERIFY" {
            return Err(CallError::Service(format!(
                "KeyUsage is {usage:?}: AWS KMS decrypts RSA only with OAEP, so only SIGN_VERIFY keys are served"
            )));
        }
        let spki = v["PublicKey"]
            .as_str()
            .and_then(unb64)
            .ok_or_else(|| CallError::Service("answer has no base64 PublicKey".into()))?;
        let kind =
            keycore_keys::classify_spki(&spki).map_err(|e| CallError::Service(e.to_string()))?;
        let algorithms = v["SigningAlgorithms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(AwsKeyInfo {
            spki,
            kind,
            algorithms,
        })
    }

    /// Sign (`MessageType` per [`plan`]).
    pub async fn perform(
        &self,
        http: &Http,
        key: &AwsKey,
        info: &AwsKeyInfo,
        op: OpClass,
        input: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, OpError> {
        let SignPlan {
            alg,
            msg,
            message_type,
        } = plan(info.kind, &info.algorithms, op, input).map_err(OpError::Refused)?;
        let body = serde_json::json!({
            "KeyId": key.arn, "Message": b64(&msg), "MessageType": message_type, "SigningAlgorithm": alg,
        })
        .to_string();
        let v = self
            .call(http, key, deadline, "TrentService.Sign", body)
            .await
            .map_err(OpError::Call)?;
        if v["SigningAlgorithm"].as_str().is_some_and(|a| a != alg) {
            return Err(OpError::Call(CallError::Service(format!(
                "answer used {} instead of {alg}",
                v["SigningAlgorithm"]
            ))));
        }
        v["Signature"].as_str().and_then(unb64).ok_or_else(|| {
            OpError::Call(CallError::Service("answer has no base64 Signature".into()))
        })
    }
}

/// Build one signed KMS request.
pub fn signed_request(
    endpoint: &str,
    authority: &str,
    region: &str,
    target: &str,
    body: &str,
    creds: &AwsCreds,
    now_unix: u64,
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let date = amz_date(now_unix);
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/x-amz-json-1.1".to_owned(),
        ),
        ("host".to_owned(), authority.to_owned()),
        ("x-amz-date".to_owned(), date.clone()),
        ("x-amz-target".to_owned(), target.to_owned()),
    ];
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".to_owned(), t.clone()));
    }
    let auth = sigv4_authorization(
        &SigV4Input {
            method: "POST",
            path: "/",
            query: "",
            headers: headers.clone(),
            body: body.as_bytes(),
            region,
            service: "kms",
            amz_date: &date,
        },
        &creds.access_key,
        &creds.secret_key,
    );
    let mut b = Request::builder()
        .method(Method::POST)
        .uri(format!("{endpoint}/"));
    for (k, v) in &headers {
        b = b.header(k.as_str(), v.as_str());
    }
    b.header("authorization", auth)
        .body(Full::new(Bytes::from(body.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of AWS's SigV4 documentation (IAM ListUsers,
    /// 2015-08-30, AKIDEXAMPLE): the signature printed there.
    #[test]
    fn sigv4_documentation_example() {
        let inp = SigV4Input {
            method: "GET",
            path: "/",
            query: "Action=ListUsers&Version=2010-05-08",
            headers: vec![
                (
                    "content-type".into(),
                    "application/x-www-form-urlencoded; charset=utf-8".into(),
                ),
                ("host".into(), "iam.amazonaws.com".into()),
                ("x-amz-date".into(), "20150830T123600Z".into()),
            ],
            body: b"",
            region: "us-east-1",
            service: "iam",
            amz_date: "20150830T123600Z",
        };
        let a = sigv4_authorization(
            &inp,
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        );
        assert_eq!(
            a,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn algorithm_map() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        let all: Vec<String> = [
            "RSASSA_PSS_SHA_256",
            "RSASSA_PSS_SHA_384",
            "RSASSA_PSS_SHA_512",
            "RSASSA_PKCS1_V1_5_SHA_256",
            "RSASSA_PKCS1_V1_5_SHA_384",
            "RSASSA_PKCS1_V1_5_SHA_512",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            plan(rsa, &all, OpClass::RsaPss(Hash::Sha256), &[0; 32])
                .unwrap()
                .alg,
            "RSASSA_PSS_SHA_256"
        );
        assert_eq!(
            plan(rsa, &all, OpClass::RsaPkcs1(Hash::Sha384), &[0; 48])
                .unwrap()
                .alg,
            "RSASSA_PKCS1_V1_5_SHA_384"
        );
        assert!(plan(rsa, &all, OpClass::RsaPkcs1(Hash::Md5Sha1), &[0; 36]).is_err());
        assert!(plan(rsa, &all, OpClass::RsaPkcs1(Hash::Sha1), &[0; 20]).is_err());
        assert!(plan(rsa, &all, OpClass::RsaDecrypt, &[0; 256])
            .unwrap_err()
            .to_string()
            .contains("OAEP"));
        assert!(
            plan(rsa, &all[..3], OpClass::RsaPkcs1(Hash::Sha256), &[0; 32])
                .unwrap_err()
                .to_string()
                .contains("does not offer")
        );
        let ec = vec!["ECDSA_SHA_256".to_string()];
        let p = plan(
            KeyKind::EcdsaP256,
            &ec,
            OpClass::Ecdsa(Hash::Sha1),
            &[7; 20],
        )
        .unwrap();
        assert_eq!(
            (p.alg, p.msg.len(), p.message_type),
            ("ECDSA_SHA_256", 32, "DIGEST")
        );
    }

    #[test]
    fn ed25519_signs_the_raw_message() {
        let ed = vec!["ED25519_SHA_512".to_string(), "ED25519_PH_SHA_512".into()];
        let msg = b"TLS 1.3, server CertificateVerify";
        let p = plan(KeyKind::Ed25519, &ed, OpClass::Ed25519, msg).unwrap();
        assert_eq!(
            (p.alg, p.msg.as_slice(), p.message_type),
            ("ED25519_SHA_512", &msg[..], "RAW")
        );
        // AWS's message limit, and a key that offers only the pre-hashed variant.
        assert!(plan(KeyKind::Ed25519, &ed, OpClass::Ed25519, &[1; 4097])
            .unwrap_err()
            .to_string()
            .contains("4096"));
        assert!(plan(KeyKind::Ed25519, &ed, OpClass::Ed25519, &[]).is_err());
        assert!(plan(KeyKind::Ed25519, &ed[1..], OpClass::Ed25519, msg)
            .unwrap_err()
            .to_string()
            .contains("does not offer"));
        assert!(plan(
            KeyKind::Ed25519,
            &ed,
            OpClass::Ecdsa(Hash::Sha256),
            &[0; 32]
        )
        .is_err());
    }
}
