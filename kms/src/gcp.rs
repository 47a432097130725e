//! Google Cloud KMS key versions over the REST API (v1): getPublicKey,
//! asymmetricSign, with CRC32C integrity checks both ways.
//!
//! Owns: the key version's fixed algorithm and which ops it can answer.
//! A Cloud KMS key version has exactly one algorithm; an op that does not
//! match it is refused (`CRYPTO`, logged once per key and op), never answered
//! with a signature of another kind.
//! - `RSA_SIGN_PKCS1_<bits>_SHA<n>`: PKCS#1 v1.5 with that hash only;
//! - `RSA_SIGN_PSS_<bits>_SHA<n>`: PSS with that hash only;
//! - `RSA_SIGN_RAW_PKCS1_<bits>`: every PKCS#1 v1.5 op (we send
//!   DigestInfo‖digest, or the bare 36 bytes of MD5‖SHA1, as `data`);
//! - `EC_SIGN_P256_SHA256` / `EC_SIGN_P384_SHA384`: every ECDSA op, the digest
//!   fitted to the curve (util::fit_ecdsa_digest; same signature math);
//! - `EC_SIGN_ED25519`: Ed25519 over the whole message (`data`).
//!
//! Decryption keys (`RSA_DECRYPT_OAEP_*`) are refused at start-up: Cloud KMS
//! decrypts only with OAEP, and the edge's RSA decrypt needs the raw block.
//!
//! Integrity (as Google documents for asymmetricSign): we send
//! `digestCrc32c`/`dataCrc32c`; the answer must say
//! `verifiedDigestCrc32c`/`verifiedDataCrc32c: true`, carry the key version's
//! `name`, and `signatureCrc32c` must match the signature. A mismatch is
//! treated as corruption in transit and retried (bounded), then `CRYPTO`.

use super::auth::{judge_bearer, TokenCache};
use super::http::{quoted, with_retries, Attempt, CallError, Http, Reply, Service};
use super::uri::GcpKey;
use super::util::{b64, fit_ecdsa_digest, unb64, PlanError};
use super::OpError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};
use tokio::time::Instant;

/// OAuth scope for Cloud KMS.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";

/// A key version's algorithm, as far as signing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// PKCS#1 v1.5 with this hash.
    Pkcs1(Hash),
    /// PSS with this hash.
    Pss(Hash),
    /// Raw PKCS#1 v1.5 (caller supplies DigestInfo).
    RawPkcs1,
    /// ECDSA with this hash.
    Ec(Hash),
    /// Ed25519.
    Ed25519,
}

/// Parse the `algorithm` of getPublicKey.
pub fn parse_alg(s: &str) -> Result<Alg, PlanError> {
    let hash = |t: &str| match t {
        "SHA256" => Some(Hash::Sha256),
        "SHA384" => Some(Hash::Sha384),
        "SHA512" => Some(Hash::Sha512),
        _ => None,
    };
    let parts: Vec<&str> = s.split('_').collect();
    let a = match parts.as_slice() {
        ["RSA", "SIGN", "PKCS1", _bits, h] => hash(h).map(Alg::Pkcs1),
        ["RSA", "SIGN", "PSS", _bits, h] => hash(h).map(Alg::Pss),
        ["RSA", "SIGN", "RAW", "PKCS1", _bits] => Some(Alg::RawPkcs1),
        ["EC", "SIGN", "P256" | "P384", h] => hash(h).map(Alg::Ec),
        ["EC", "SIGN", "ED25519"] => Some(Alg::Ed25519),
        ["RSA", "DECRYPT", ..] => return Err(PlanError::DecryptKey(s.to_string())),
        _ => None,
    };
    a.ok_or_else(|| PlanError::NotSigning(s.to_string()))
}

fn digest_field(h: Hash) -> Option<&'static str> {
    match h {
        Hash::Sha256 => Some("sha256"),
        Hash::Sha384 => Some("sha384"),
        Hash::Sha512 => Some("sha512"),
        _ => None,
    }
}

/// What to send: `digest` (field name, bytes) or `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `{"digest": {"<field>": ...}}`.
    Digest(&'static str, Vec<u8>),
    /// `{"data": ...}`.
    Data(Vec<u8>),
}

/// Map an op to a request for a key version with algorithm `alg`.
pub fn plan(alg: Alg, kind: KeyKind, op: OpClass, input: &[u8]) -> Result<Plan, PlanError> {
    let exact = |want: Hash, asked: Hash, scheme: &'static str| -> Result<Plan, PlanError> {
        if asked != want {
            return Err(PlanError::WrongHash {
                scheme,
                want,
                asked,
            });
        }
        Ok(Plan::Digest(
            digest_field(asked).ok_or(PlanError::NoDigestField(asked))?,
            input.to_vec(),
        ))
    };
    match (alg, op) {
        (Alg::Pkcs1(want), OpClass::RsaPkcs1(h)) => exact(want, h, "PKCS#1 v1.5"),
        (Alg::Pss(want), OpClass::RsaPss(h)) => exact(want, h, "RSA-PSS"),
        (Alg::RawPkcs1, OpClass::RsaPkcs1(h)) => {
            let mut v = h.digest_info_prefix().to_vec();
            v.extend_from_slice(input);
            Ok(Plan::Data(v))
        }
        (Alg::Ec(h), OpClass::Ecdsa(_)) => Ok(Plan::Digest(
            digest_field(h).ok_or(PlanError::NoDigestField(h))?,
            fit_ecdsa_digest(kind, input).ok_or(PlanError::EmptyDigest)?,
        )),
        (Alg::Ed25519, OpClass::Ed25519) => Ok(Plan::Data(input.to_vec())),
        (alg, op) => Err(PlanError::WrongAlgorithm {
            alg: format!("{alg:?}"),
            op,
        }),
    }
}

/// CRC32C as the JSON int64 string Google uses.
fn crc(b: &[u8]) -> String {
    crc32c::crc32c(b).to_string()
}

/// The Google service.
#[derive(Debug)]
pub struct Gcp {
    /// Limits and counters.
    pub svc: Service,
    /// Token cache (scope cloudkms).
    pub token: TokenCache,
    /// `https://cloudkms.googleapis.com` or an override.
    pub endpoint: String,
}

impl Gcp {
    async fn call<T>(
        &self,
        http: &Http,
        deadline: Instant,
        method: Method,
        url: &str,
        body: Option<String>,
        ok: impl Fn(&Reply) -> Attempt<T>,
    ) -> Result<T, CallError> {
        with_retries(&self.svc, deadline, async || {
            let token = match self
                .token
                .get(http, deadline, &self.svc.stats.token_refreshes)
                .await
            {
                Ok(t) => t,
                Err(e) => return Attempt::transport(e),
            };
            let mut b = Request::builder()
                .method(method.clone())
                .uri(url)
                .header("authorization", format!("Bearer {}", token.as_str()))
                .header("accept", "application/json");
            if body.is_some() {
                b = b.header("content-type", "application/json");
            }
            let req = match b.body(Full::new(Bytes::from(body.clone().unwrap_or_default()))) {
                Ok(r) => r,
                Err(e) => return Attempt::Fail(CallError::Service(format!("request {url}: {e}"))),
            };
            match http.send(req, deadline).await {
                Ok(r) => match explained(&r) {
                    Some(why) => Attempt::Fail(CallError::Service(why)),
                    None => judge_bearer(&self.token, &r, &ok),
                },
                Err(e) => Attempt::transport(e),
            }
        })
        .await
    }

    /// getPublicKey: (SPKI, kind, algorithm).
    pub async fn fetch_public(
        &self,
        http: &Http,
        key: &GcpKey,
        deadline: Instant,
    ) -> Result<(Vec<u8>, KeyKind, Alg), CallError> {
        let url = format!(
            "{}/v1/{}/publicKey",
            self.endpoint.trim_end_matches('/'),
            key.name
        );
        let v = self
            .call(http, deadline, Method::GET, &url, None, |r| {
                let v: serde_json::Value = match serde_json::from_slice(&r.body) {
                    Ok(v) => v,
                    Err(e) => {
                        return Attempt::Fail(CallError::Service(format!("bad JSON answer: {e}")))
                    }
                };
                let pem = v["pem"].as_str().unwrap_or_default();
                match v["pemCrc32c"].as_str() {
                    Some(c) if c == crc(pem.as_bytes()) => Attempt::Done(v),
                    Some(_) => Attempt::Retry {
                        after: None,
                        throttled: false,
                        why: "pemCrc32c does not match the PEM (corrupted in transit)".into(),
                    },
                    None => Attempt::Fail(CallError::Service("answer has no pemCrc32c".into())),
                }
            })
            .await?;
        if v["name"].as_str() != Some(key.name.as_str()) {
            return Err(CallError::Service(format!(
                "answer names another key version: {}",
                quoted(&v["name"].to_string())
            )));
        }
        let alg_s = v["algorithm"].as_str().unwrap_or_default();
        let alg = parse_alg(alg_s).map_err(|e| CallError::Service(e.to_string()))?;
        use rustls_pki_types::pem::PemObject;
        let spki = rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(
            v["pem"].as_str().unwrap_or_default().as_bytes(),
        )
        .map_err(|e| CallError::Service(format!("public key PEM: {e}")))?;
        let kind =
            keycore_keys::classify_spki(&spki).map_err(|e| CallError::Service(e.to_string()))?;
        let consistent = matches!(
            (alg, kind),
            (
                Alg::Pkcs1(_) | Alg::Pss(_) | Alg::RawPkcs1,
                KeyKind::Rsa { .. }
            ) | (Alg::Ec(Hash::Sha256), KeyKind::EcdsaP256)
                | (Alg::Ec(Hash::Sha384), KeyKind::EcdsaP384)
                | (Alg::Ed25519, KeyKind::Ed25519)
        );
        if !consistent {
            return Err(CallError::Service(format!(
                "algorithm {alg_s} does not fit the public key ({kind:?})"
            )));
        }
        Ok((spki.as_ref().to_vec(), kind, alg))
    }

    /// asymmetricSign.
    #[allow(clippy::too_many_arguments)]
    pub async fn perform(
        &self,
        http: &Http,
        key: &GcpKey,
        kind: KeyKind,
        alg: Alg,
        op: OpClass,
        input: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, OpError> {
        let p = plan(alg, kind, op, input).map_err(OpError::Refused)?;
        let (body, verified) = match &p {
            Plan::Digest(field, d) => (
                serde_json::json!({"digest": {*field: b64(d)}, "digestCrc32c": crc(d)}),
                "verifiedDigestCrc32c",
            ),
            Plan::Data(d) => (
                serde_json::json!({"data": b64(d), "dataCrc32c": crc(d)}),
                "verifiedDataCrc32c",
            ),
        };
        let url = format!(
            "{}/v1/{}:asymmetricSign",
            self.endpoint.trim_end_matches('/'),
            key.name
        );
        self.call(
            http,
            deadline,
            Method::POST,
            &url,
            Some(body.to_string()),
            |r| check_sign_answer(r, &key.name, verified),
        )
        .await
        .map_err(OpError::Call)
    }
}

/// A final error worth explaining, or `None` for the usual judgement:
/// - 403 `ACCESS_TOKEN_SCOPE_INSUFFICIENT` ("Request had insufficient
///   authentication scopes"): on Compute Engine and GKE node service
///   accounts the metadata server's token carries the VM's access scopes,
///   and Cloud KMS accepts only `cloud-platform` or `cloudkms`;
/// - 403 `PERMISSION_DENIED`: the IAM role is missing;
/// - 400 `FAILED_PRECONDITION` naming a state: the key version is not
///   enabled (DISABLED, DESTROYED, ...).
pub fn explained(r: &Reply) -> Option<String> {
    let status = r.status.as_u16();
    if status != 403 && status != 400 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let e = &v["error"];
    let msg = e["message"].as_str().unwrap_or_default();
    let code = e["status"].as_str().unwrap_or_default();
    let (qmsg, qcode) = (quoted(msg), quoted(code));
    let body = String::from_utf8_lossy(&r.body);
    let hint = if status == 403
        && (body.contains("ACCESS_TOKEN_SCOPE_INSUFFICIENT")
            || msg.contains("insufficient authentication scopes"))
    {
        "the access token lacks the cloud-platform or cloudkms OAuth scope: a Compute Engine / GKE node token from the metadata server carries the VM's access scopes; stop the VM and set its scopes to cloud-platform (gcloud compute instances set-service-account --scopes=cloud-platform), use GKE Workload Identity, or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
    } else if status == 403 {
        "the service account lacks an IAM permission on the key: grant roles/cloudkms.signerVerifier (cloudkms.cryptoKeyVersions.useToSign) and roles/cloudkms.publicKeyViewer (cloudkms.cryptoKeyVersions.viewPublicKey) on the key or key ring"
    } else if code == "FAILED_PRECONDITION" {
        "the key version is not enabled (a disabled, destroyed or pending version signs nothing): enable it (gcloud kms keys versions enable) or configure an enabled version"
    } else {
        return None;
    };
    Some(format!("HTTP {status} {qcode}: {qmsg} ({hint})"))
}

/// Judge an asymmetricSign answer: the integrity fields as documented.
pub fn check_sign_answer(r: &Reply, name: &str, verified: &str) -> Attempt<Vec<u8>> {
    let v: serde_json::Value = match serde_json::from_slice(&r.body) {
        Ok(v) => v,
        Err(e) => return Attempt::Fail(CallError::Service(format!("bad JSON answer: {e}"))),
    };
    let corrupt = |why: &str| Attempt::Retry {
        after: None,
        throttled: false,
        why: why.to_owned(),
    };
    if v[verified] != serde_json::Value::Bool(true) {
        return corrupt(&format!(
            "{verified} is not true: the request was corrupted in transit"
        ));
    }
    if v["name"].as_str() != Some(name) {
        return Attempt::Fail(CallError::Service(format!(
            "answer names another key version: {}",
            quoted(&v["name"].to_string())
        )));
    }
    let Some(sig) = v["signature"].as_str().and_then(unb64) else {
        return Attempt::Fail(CallError::Service(
            "answer has no base64 \"signature\"".into(),
        ));
    };
    if v["signatureCrc32c"].as_str() != Some(crc(&sig).as_str()) {
        return corrupt(
            "signatureCrc32c does not match the signature: the answer was corrupted in transit",
        );
    }
    Attempt::Done(sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn final_errors_are_explained() {
        let mk = |status: u16, v: serde_json::Value| Reply {
            status: hyper::StatusCode::from_u16(status).unwrap(),
            headers: Default::default(),
            body: Bytes::from(v.to_string()),
        };
        let scope = mk(
            403,
            serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                "message": "Request had insufficient authentication scopes.",
                "details": [{"reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT"}]}}),
        );
        assert!(explained(&scope)
            .unwrap()
            .contains("--scopes=cloud-platform"));
        let role = mk(
            403,
            serde_json::json!({"error": {"code": 403, "status": "PERMISSION_DENIED",
                "message": "Permission 'cloudkms.cryptoKeyVersions.useToSign' denied"}}),
        );
        assert!(explained(&role)
            .unwrap()
            .contains("roles/cloudkms.signerVerifier"));
        let disabled = mk(
            400,
            serde_json::json!({"error": {"code": 400, "status": "FAILED_PRECONDITION",
                "message": "... is not enabled, current state is: DISABLED."}}),
        );
        assert!(explained(&disabled).unwrap().contains("not enabled"));
        // Other answers keep the usual judgement (retry, re-auth, fail).
        let bad = mk(
            400,
            serde_json::json!({"error": {"code": 400, "status": "INVALID_ARGUMENT"}}),
        );
        assert!(explained(&bad).is_none());
        assert!(explained(&mk(429, serde_json::json!({}))).is_none());
        assert!(explained(&mk(401, serde_json::json!({}))).is_none());
    }

    #[test]
    fn algorithms() {
        assert_eq!(
            parse_alg("RSA_SIGN_PSS_2048_SHA256").unwrap(),
            Alg::Pss(Hash::Sha256)
        );
        assert_eq!(
            parse_alg("RSA_SIGN_PKCS1_4096_SHA512").unwrap(),
            Alg::Pkcs1(Hash::Sha512)
        );
        assert_eq!(parse_alg("RSA_SIGN_RAW_PKCS1_3072").unwrap(), Alg::RawPkcs1);
        assert_eq!(
            parse_alg("EC_SIGN_P384_SHA384").unwrap(),
            Alg::Ec(Hash::Sha384)
        );
        assert_eq!(parse_alg("EC_SIGN_ED25519").unwrap(), Alg::Ed25519);
        assert!(parse_alg("RSA_DECRYPT_OAEP_2048_SHA256")
            .unwrap_err()
            .to_string()
            .contains("OAEP"));
        assert!(parse_alg("EC_SIGN_SECP256K1_SHA256").is_err());
        assert!(parse_alg("GOOGLE_SYMMETRIC_ENCRYPTION").is_err());
    }

    #[test]
    fn mismatched_ops_are_refused_never_substituted() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        let pss = Alg::Pss(Hash::Sha256);
        assert!(plan(pss, rsa, OpClass::RsaPss(Hash::Sha256), &[0; 32]).is_ok());
        assert!(plan(pss, rsa, OpClass::RsaPkcs1(Hash::Sha256), &[0; 32]).is_err());
        assert!(plan(pss, rsa, OpClass::RsaPss(Hash::Sha384), &[0; 48]).is_err());
        let pkcs1 = Alg::Pkcs1(Hash::Sha256);
        assert!(plan(pkcs1, rsa, OpClass::RsaPss(Hash::Sha256), &[0; 32]).is_err());
        assert!(plan(pkcs1, rsa, OpClass::RsaPkcs1(Hash::Sha1), &[0; 20]).is_err());
        assert!(plan(pkcs1, rsa, OpClass::RsaDecrypt, &[0; 256]).is_err());
        assert_eq!(
            plan(
                Alg::RawPkcs1,
                rsa,
                OpClass::RsaPkcs1(Hash::Md5Sha1),
                &[5; 36]
            )
            .unwrap(),
            Plan::Data(vec![5; 36])
        );
        assert!(plan(
            Alg::Ec(Hash::Sha256),
            KeyKind::EcdsaP256,
            OpClass::RsaPkcs1(Hash::Sha256),
            &[0; 32]
        )
        .is_err());
        assert_eq!(
            plan(
                Alg::Ec(Hash::Sha256),
                KeyKind::EcdsaP256,
                OpClass::Ecdsa(Hash::Sha384),
                &[1; 48]
            )
            .unwrap(),
            Plan::Digest("sha256", vec![1; 32])
        );
    }

    #[test]
    fn sign_answer_integrity() {
        let mk = |v: serde_json::Value| Reply {
            status: hyper::StatusCode::OK,
            headers: Default::default(),
            body: Bytes::from(v.to_string()),
        };
        let sig = [1u8, 2, 3];
        let good = serde_json::json!({"name": "n", "signature": b64(&sig), "signatureCrc32c": crc(&sig), "verifiedDigestCrc32c": true});
        assert!(
            matches!(check_sign_answer(&mk(good.clone()), "n", "verifiedDigestCrc32c"), Attempt::Done(s) if s == sig)
        );
        let mut bad = good.clone();
        bad["signatureCrc32c"] = "1".into();
        assert!(matches!(
            check_sign_answer(&mk(bad), "n", "verifiedDigestCrc32c"),
            Attempt::Retry { .. }
        ));
        let mut unverified = good.clone();
        unverified["verifiedDigestCrc32c"] = false.into();
        assert!(matches!(
            check_sign_answer(&mk(unverified), "n", "verifiedDigestCrc32c"),
            Attempt::Retry { .. }
        ));
        assert!(matches!(
            check_sign_answer(&mk(good), "other", "verifiedDigestCrc32c"),
            Attempt::Fail(_)
        ));
    }
}
