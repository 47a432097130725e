//! Azure Key Vault and Managed HSM keys over the Key Vault REST API
//! (`api-version=2025-07-01`, [`API_VERSION`]): get-key (JWK -> SPKI), sign,
//! decrypt.
//!
//! Limits: Key Vault throttles per vault (2,000 transactions per 10 s for
//! HSM-protected RSA-2048 and EC keys, "Azure Key Vault service limits"),
//! so each vault host gets a limiter of its own with the configured rate;
//! Managed HSM pools get only the in-flight cap (their capacity is the
//! HSM partition's, not a service throttle). Counters stay per service.
//!
//! Errors spelled out: 403 (no data-plane role or access policy; a disabled
//! key), never retried.
//! Owns: the op -> JWA algorithm map, the JWK conversion, the raw `r‖s` ->
//! DER step and the RSA1_5 decrypt result shaping.
//! Must not: hold credentials logic (auth.rs) or retry policy (http.rs).
//!
//! Operation map (key kind, op -> `alg`):
//! - RSA PKCS#1 v1.5 SHA-256/384/512 -> RS256/RS384/RS512;
//! - RSA PKCS#1 v1.5 MD5‖SHA1 -> RSNULL over the 36 bytes; SHA-1 and
//!   SHA-224 -> RSNULL over DigestInfo‖digest (RSNULL is PKCS#1 v1.5 type 1
//!   padding around the given bytes, no DigestInfo added: the same primitive
//!   a local signer uses for those hashes);
//! - RSA-PSS SHA-256/384/512 -> PS256/PS384/PS512 (salt = hash length, as
//!   TLS 1.3 requires);
//! - ECDSA on P-256 / P-384 / P-521 -> ES256 / ES384 / ES512, the digest fitted
//!   to the curve (util::fit_ecdsa_digest), the raw `r‖s` answer turned into
//!   DER;
//! - RSA decrypt -> RSA1_5, see [`decrypt_block`];
//! - Ed25519: Key Vault has no Ed25519 keys; refused.

use super::auth::{judge_bearer, TokenCache};
use super::http::{quoted, with_retries, Attempt, CallError, Http, Reply, Service};
use super::uri::{AzureKey, AzureKind};
use super::util::{b64url, fit_ecdsa_digest, pkcs1_type2_block, unb64url, PlanError};
use super::OpError;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request};
use keycore_keys::KeyKind;
use keycore_keys::{ec_spki, ecdsa_der_from_raw, rsa_spki};
use keycore_protocol::{Hash, OpClass};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use tokio::time::Instant;

/// Key Vault REST API version used for every call: 2025-07-01, the current
/// GA data-plane version (after 7.4, 7.5, 7.6: the Azure SDK for Python's
/// `ApiVersion` enum lists V2025_07_01 as the newest). The keys operations
/// keycore uses (get, sign with PS/RS/ES/RSNULL, decrypt RSA1_5) are the
/// same in every one of them.
pub const API_VERSION: &str = "2025-07-01";

/// DER OID TLVs of the named curves (CKA_EC_PARAMS form, for `ec_spki`).
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/// What to do with the service's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Post {
    /// Return as is.
    AsIs,
    /// Raw `r‖s` -> DER.
    RawToDer,
    /// Unpadded plaintext -> `00 02 PS 00 M` of `k` bytes.
    Repad(usize),
}

/// One planned call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `sign` or `decrypt`.
    pub action: &'static str,
    /// JWA algorithm.
    pub alg: &'static str,
    /// Bytes sent as `value`.
    pub value: Vec<u8>,
    /// Answer shaping.
    pub post: Post,
}

/// Map an op on a key of `kind` to a Key Vault call, or say why not.
pub fn plan(kind: KeyKind, op: OpClass, input: &[u8]) -> Result<Plan, PlanError> {
    let sign = |alg, value: Vec<u8>, post| {
        Ok(Plan {
            action: "sign",
            alg,
            value,
            post,
        })
    };
    match (kind, op) {
        (KeyKind::Rsa { .. }, OpClass::RsaPkcs1(h)) => match h {
            Hash::Sha256 => sign("RS256", input.to_vec(), Post::AsIs),
            Hash::Sha384 => sign("RS384", input.to_vec(), Post::AsIs),
            Hash::Sha512 => sign("RS512", input.to_vec(), Post::AsIs),
            Hash::Md5Sha1 | Hash::Sha1 | Hash::Sha224 => {
                let mut v = h.digest_info_prefix().to_vec();
                v.extend_from_slice(input);
                sign("RSNULL", v, Post::AsIs)
            }
        },
        (KeyKind::Rsa { .. }, OpClass::RsaPss(h)) => match h {
            Hash::Sha256 => sign("PS256", input.to_vec(), Post::AsIs),
            Hash::Sha384 => sign("PS384", input.to_vec(), Post::AsIs),
            Hash::Sha512 => sign("PS512", input.to_vec(), Post::AsIs),
            _ => Err(PlanError::NoAlgorithm {
                service: "Key Vault",
                op,
            }),
        },
        (KeyKind::Rsa { bits }, OpClass::RsaDecrypt) => {
            let k = bits.div_ceil(8);
            Ok(Plan {
                action: "decrypt",
                alg: "RSA1_5",
                value: input.to_vec(),
                post: Post::Repad(k),
            })
        }
        (KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521, OpClass::Ecdsa(_)) => {
            let alg = match kind {
                KeyKind::EcdsaP256 => "ES256",
                KeyKind::EcdsaP384 => "ES384",
                _ => "ES512",
            };
            let d = fit_ecdsa_digest(kind, input).ok_or(PlanError::EmptyDigest)?;
            sign(alg, d, Post::RawToDer)
        }
        (kind, op) => Err(PlanError::Unsupported {
            service: "Key Vault",
            kind,
            op,
        }),
    }
}

/// The RSA decrypt answer. The protocol wants the raw `c^d mod n` block with
/// its padding; Key Vault has no raw RSA decrypt, only RSA1_5 (and OAEP),
/// which strips the PKCS#1 v1.5 padding and returns the message M. We return
/// `00 02 PS 00 M` with fresh random nonzero PS.
///
/// Equivalence: the edge uses opcode 0x01 for the TLS RSA key exchange and
/// decodes the block as PKCS#1 v1.5 itself; every conforming decoder reads
/// the same M out of our block as out of the true one, because PS carries
/// nothing (it is random nonzero filler by construction). The block is NOT
/// bit-identical to `c^d mod n` (the original PS is unrecoverable), so an
/// edge that inspected PS would see a difference; none does. Difference in
/// failure: a ciphertext whose padding is invalid makes Key Vault answer an
/// error (we answer 0x01 crypto) where a raw decrypt would return garbage
/// that the edge then rejects itself; the edge must treat 0x01 on decrypt
/// like a padding failure (random premaster, RFC 5246 7.4.7.1) so this
/// does not become a padding oracle.
pub fn decrypt_block(k: usize, plaintext: &[u8]) -> Option<Vec<u8>> {
    let mut pool = [0u8; 256];
    let mut i = pool.len();
    pkcs1_type2_block(k, plaintext, || {
        if i == pool.len() {
            let _ = aws_lc_rs::rand::fill(&mut pool);
            i = 0;
        }
        i += 1;
        pool[i - 1]
    })
}

/// Why a Key Vault JWK is not a key keycore can serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    /// A field missing or not base64url.
    #[error("JWK field {0:?} missing or not base64url")]
    Field(&'static str),
    /// An EC curve keycore does not serve.
    #[error("EC curve {0:?} is not served (P-256, P-384, P-521 are)")]
    Curve(String),
    /// Coordinates too long for the curve.
    #[error("JWK coordinates longer than {len} bytes for {curve}")]
    Coordinates {
        /// The curve's coordinate length.
        len: usize,
        /// The curve.
        curve: String,
    },
    /// A symmetric or unknown key type.
    #[error("key type {0:?} is not an asymmetric signing key")]
    KeyType(String),
    /// The key's numbers do not make a SubjectPublicKeyInfo.
    #[error(transparent)]
    Spki(#[from] keycore_keys::SpkiError),
}

/// SPKI and kind from a Key Vault JWK.
pub fn jwk_to_spki(jwk: &serde_json::Value) -> Result<(Vec<u8>, KeyKind), JwkError> {
    let field = |k: &'static str| -> Result<Vec<u8>, JwkError> {
        jwk[k].as_str().and_then(unb64url).ok_or(JwkError::Field(k))
    };
    let kty = jwk["kty"].as_str().unwrap_or_default();
    match kty {
        "RSA" | "RSA-HSM" => {
            let (spki, bits) = rsa_spki(&field("n")?, &field("e")?)?;
            Ok((spki, KeyKind::Rsa { bits }))
        }
        "EC" | "EC-HSM" => {
            let crv = jwk["crv"].as_str().unwrap_or_default();
            let (params, coord) = match crv {
                "P-256" => (P256_PARAMS, 32),
                "P-384" => (P384_PARAMS, 48),
                "P-521" => (P521_PARAMS, 66),
                other => return Err(JwkError::Curve(other.to_owned())),
            };
            let (x, y) = (field("x")?, field("y")?);
            if x.len() > coord || y.len() > coord {
                return Err(JwkError::Coordinates {
                    len: coord,
                    curve: crv.to_owned(),
                });
            }
            let mut point = vec![0x04];
            for c in [&x, &y] {
                point.extend(std::iter::repeat_n(0u8, coord - c.len()));
                point.extend_from_slice(c);
            }
            Ok(ec_spki(params, &point)?)
        }
        other => Err(JwkError::KeyType(other.to_owned())),
    }
}

/// The Azure service: limiter and one token cache per resource (vaults and
/// Managed HSM pools need different audiences).
#[derive(Debug)]
pub struct Azure {
    /// Limits and counters.
    pub svc: Service,
    /// Token cache per resource (`https://vault.azure.net`, ...).
    pub tokens: HashMap<String, TokenCache>,
    /// Endpoint override (replaces `https://<vault host>`).
    pub endpoint: Option<String>,
    /// One limiter per vault / Managed HSM host (made on first use).
    pub vaults: RefCell<HashMap<String, Rc<Service>>>,
}

impl Azure {
    /// A service with no vault limiters yet.
    pub fn new(svc: Service, endpoint: Option<String>) -> Azure {
        Azure {
            svc,
            tokens: HashMap::new(),
            endpoint,
            vaults: RefCell::new(HashMap::new()),
        }
    }

    /// The limiter of the key's vault: Key Vault's throttle is per vault,
    /// so two vaults each get the configured rate; a Managed HSM pool gets
    /// no rate limit (in-flight cap only). Counters are the service's.
    pub fn limiter(&self, key: &AzureKey) -> Rc<Service> {
        self.vaults
            .borrow_mut()
            .entry(key.vault_url.clone())
            .or_insert_with(|| {
                let mut limits = self.svc.limits;
                if key.kind == AzureKind::ManagedHsm {
                    limits.max_per_second = 0.0;
                }
                Rc::new(Service::sharing(
                    self.svc.name,
                    limits,
                    self.svc.stats.clone(),
                ))
            })
            .clone()
    }

    fn url(&self, key: &AzureKey, action: Option<&str>) -> String {
        let base = self
            .endpoint
            .as_deref()
            .unwrap_or(&key.vault_url)
            .trim_end_matches('/');
        match action {
            None => format!(
                "{base}/keys/{}/{}?api-version={API_VERSION}",
                key.name, key.version
            ),
            Some(a) => format!(
                "{base}/keys/{}/{}/{a}?api-version={API_VERSION}",
                key.name, key.version
            ),
        }
    }

    #[allow(clippy::too_many_arguments)] // one request's parts, all distinct
    async fn call<T>(
        &self,
        http: &Http,
        key: &AzureKey,
        deadline: Instant,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        ok: impl Fn(&Reply) -> Attempt<T>,
    ) -> Result<T, CallError> {
        let cache = self.tokens.get(&key.resource).ok_or_else(|| {
            CallError::Service(format!("no Azure credential for {}", key.resource))
        })?;
        let limiter = self.limiter(key);
        with_retries(&limiter, deadline, async || {
            let token = match cache
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
                Ok(r) if r.status == hyper::StatusCode::FORBIDDEN => {
                    Attempt::Fail(CallError::Service(forbidden(key, &r)))
                }
                Ok(r) => judge_bearer(cache, &r, &ok),
                Err(e) => Attempt::transport(e),
            }
        })
        .await
    }

    /// Get the key's public half: (SPKI, kind).
    pub async fn fetch_public(
        &self,
        http: &Http,
        key: &AzureKey,
        deadline: Instant,
    ) -> Result<(Vec<u8>, KeyKind), CallError> {
        let url = self.url(key, None);
        let v = self
            .call(http, key, deadline, Method::GET, &url, None, json_ok)
            .await?;
        if v["attributes"]["enabled"] == serde_json::Value::Bool(false) {
            return Err(CallError::Service("the key is disabled".into()));
        }
        jwk_to_spki(&v["key"]).map_err(|e| CallError::Service(e.to_string()))
    }

    /// Carry out one operation.
    pub async fn perform(
        &self,
        http: &Http,
        key: &AzureKey,
        kind: KeyKind,
        op: OpClass,
        input: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, OpError> {
        let p = plan(kind, op, input).map_err(OpError::Refused)?;
        let url = self.url(key, Some(p.action));
        let body = serde_json::json!({"alg": p.alg, "value": b64url(&p.value)}).to_string();
        let v = self
            .call(
                http,
                key,
                deadline,
                Method::POST,
                &url,
                Some(body.into_bytes()),
                json_ok,
            )
            .await
            .map_err(OpError::Call)?;
        let out = v["value"].as_str().and_then(unb64url).ok_or_else(|| {
            OpError::Call(CallError::Service(
                "answer has no base64url \"value\"".into(),
            ))
        })?;
        match p.post {
            Post::AsIs => Ok(out),
            Post::RawToDer => {
                let mut der = Vec::with_capacity(out.len() + 8);
                ecdsa_der_from_raw(&out, &mut der).ok_or_else(|| {
                    OpError::Call(CallError::Service(format!(
                        "ECDSA answer of {} bytes is not r‖s",
                        out.len()
                    )))
                })?;
                Ok(der)
            }
            Post::Repad(k) => decrypt_block(k, &out).ok_or_else(|| {
                OpError::Call(CallError::Service(format!(
                    "RSA1_5 plaintext of {} bytes does not fit a {k}-byte block",
                    out.len()
                )))
            }),
        }
    }
}

/// A 403 explained: Key Vault answers `Forbidden` with an inner code
/// (`ForbiddenByRbac`, `ForbiddenByPolicy`, `KeyDisabled`) for a principal
/// without the data-plane permission and for a disabled key. Neither clears
/// by retrying.
pub fn forbidden(key: &AzureKey, r: &Reply) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    let inner = quoted(
        v["error"]["innererror"]["code"]
            .as_str()
            .unwrap_or_default(),
    );
    let raw_msg = v["error"]["message"].as_str().unwrap_or_default();
    let msg = quoted(raw_msg);
    let hint = if inner == "KeyDisabled" || raw_msg.to_ascii_lowercase().contains("disabled") {
        "the key (version) is disabled: enable it or configure an enabled version".to_string()
    } else if key.kind == AzureKind::ManagedHsm {
        "the identity has no Managed HSM local RBAC role on the key: assign \"Managed HSM Crypto User\" (keys/read, keys/sign, keys/decrypt) at /keys or /keys/<name>".to_string()
    } else {
        "the identity may not use the key: assign \"Key Vault Crypto User\" on the vault or key (Azure RBAC vaults), or an access policy with key permissions get, sign, decrypt (access-policy vaults)".to_string()
    };
    format!(
        "HTTP 403 {}{}: {msg} ({hint})",
        quoted(v["error"]["code"].as_str().unwrap_or("Forbidden")),
        if inner.is_empty() {
            String::new()
        } else {
            format!("/{inner}")
        }
    )
}

/// 200 with a JSON body.
fn json_ok(r: &Reply) -> Attempt<serde_json::Value> {
    match serde_json::from_slice(&r.body) {
        Ok(v) => Attempt::Done(v),
        Err(e) => Attempt::Fail(CallError::Service(format!("bad JSON answer: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_map() {
        let rsa = KeyKind::Rsa { bits: 2048 };
        assert_eq!(
            plan(rsa, OpClass::RsaPkcs1(Hash::Sha256), &[1; 32])
                .unwrap()
                .alg,
            "RS256"
        );
        assert_eq!(
            plan(rsa, OpClass::RsaPkcs1(Hash::Sha512), &[1; 64])
                .unwrap()
                .alg,
            "RS512"
        );
        assert_eq!(
            plan(rsa, OpClass::RsaPss(Hash::Sha384), &[1; 48])
                .unwrap()
                .alg,
            "PS384"
        );
        let p = plan(rsa, OpClass::RsaPkcs1(Hash::Md5Sha1), &[7; 36]).unwrap();
        assert_eq!((p.alg, p.value.len()), ("RSNULL", 36));
        let p = plan(rsa, OpClass::RsaPkcs1(Hash::Sha1), &[7; 20]).unwrap();
        assert_eq!((p.alg, p.value.len()), ("RSNULL", 35));
        // Digest and ciphertext lengths are not re-checked here: dispatch
        // ran the one rule (`check_input`) before this backend saw the op.
        assert!(keycore_keys::check_input(rsa, OpClass::RsaPkcs1(Hash::Sha256), &[1; 31]).is_err());
        assert!(plan(rsa, OpClass::RsaPss(Hash::Sha1), &[1; 20]).is_err());
        let p = plan(rsa, OpClass::RsaDecrypt, &[1; 256]).unwrap();
        assert_eq!(
            (p.action, p.alg, p.post),
            ("decrypt", "RSA1_5", Post::Repad(256))
        );
        assert!(keycore_keys::check_input(rsa, OpClass::RsaDecrypt, &[1; 255]).is_err());
        let p = plan(KeyKind::EcdsaP384, OpClass::Ecdsa(Hash::Sha256), &[1; 32]).unwrap();
        assert_eq!(
            (p.alg, p.value.len(), p.post),
            ("ES384", 48, Post::RawToDer)
        );
        assert!(plan(
            KeyKind::EcdsaP256,
            OpClass::RsaPkcs1(Hash::Sha256),
            &[1; 32]
        )
        .is_err());
        assert!(plan(rsa, OpClass::Ecdsa(Hash::Sha256), &[1; 32]).is_err());
        assert!(plan(KeyKind::Ed25519, OpClass::Ed25519, b"m").is_err());
    }

    #[test]
    fn jwk_conversion_matches_aws_lc() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let pt = kp.public_key().as_ref();
        let jwk = serde_json::json!({"kty": "EC-HSM", "crv": "P-256", "x": b64url(&pt[1..33]), "y": b64url(&pt[33..])});
        let (spki, kind) = jwk_to_spki(&jwk).unwrap();
        assert_eq!(kind, KeyKind::EcdsaP256);
        assert_eq!(
            keycore_keys::classify_spki(&spki).unwrap(),
            KeyKind::EcdsaP256
        );
        assert!(jwk_to_spki(&serde_json::json!({"kty": "oct"})).is_err());
        assert!(jwk_to_spki(
            &serde_json::json!({"kty": "EC", "crv": "P-256K", "x": "AA", "y": "AA"})
        )
        .is_err());
    }

    #[test]
    fn forbidden_answers_name_the_fix() {
        let key = |u: &str| match super::super::uri::KeyUri::parse(u).unwrap() {
            super::super::uri::KeyUri::Azure(a) => a,
            _ => unreachable!(),
        };
        let vault = key("https://kv1.vault.azure.net/keys/k/1");
        let hsm = key("https://hsm1.managedhsm.azure.net/keys/k/1");
        let mk = |inner: &str, msg: &str| Reply {
            status: hyper::StatusCode::FORBIDDEN,
            headers: Default::default(),
            body: Bytes::from(
                serde_json::json!({"error": {"code": "Forbidden", "message": msg,
                    "innererror": {"code": inner}}})
                .to_string(),
            ),
        };
        let rbac = mk("ForbiddenByRbac", "Caller is not authorized");
        assert!(forbidden(&vault, &rbac).contains("Key Vault Crypto User"));
        assert!(forbidden(&hsm, &rbac).contains("Managed HSM Crypto User"));
        let off = mk(
            "KeyDisabled",
            "Operation \"sign\" is not allowed on a disabled key.",
        );
        let m = forbidden(&vault, &off);
        assert!(
            m.contains("Forbidden/KeyDisabled") && m.contains("disabled"),
            "{m}"
        );
    }

    #[test]
    fn decrypt_block_is_a_valid_type2_block() {
        let b = decrypt_block(256, &[9; 48]).unwrap();
        assert_eq!(b.len(), 256);
        assert_eq!(&b[..2], &[0, 2]);
        assert!(b[2..256 - 49].iter().all(|&x| x != 0));
        assert_eq!(b[256 - 49], 0);
        assert!(decrypt_block(256, &[9; 246]).is_none());
    }
}
