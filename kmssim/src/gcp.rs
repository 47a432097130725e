//! Google stand-ins: Cloud KMS v1 `cryptoKeyVersions` getPublicKey and
//! asymmetricSign (fixed algorithm per key version, CRC32C both ways), the
//! OAuth 2.0 token endpoint (JWT bearer grant signed by a service account)
//! and the metadata server.
//!
//! Request shape checked as documented: bearer token for the cloudkms scope;
//! exactly one of `digest` (one of sha256/sha384/sha512, matching the key's
//! algorithm and of the right length) or `data` (raw PKCS#1 and Ed25519
//! keys); base64 bytes; `digestCrc32c`/`dataCrc32c`, when present, as int64
//! strings that must match (else 400 INVALID_ARGUMENT). Answers carry
//! `signatureCrc32c`, `verifiedDigestCrc32c`/`verifiedDataCrc32c`, `name`.

use crate::{b64, bump, json, lock, parse_form, unb64, verify_jwt, ApiError, Gate, State};
use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use keycore_protocol::{Hash, OpClass};
use serde_json::json as j;

/// The scope keycore asks for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";

fn err(status: StatusCode, s: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        j!({"error": {"code": status.as_u16(), "message": message, "status": s}}),
    )
}

fn crc(b: &[u8]) -> String {
    crc32c::crc32c(b).to_string()
}

/// Audience given to a metadata-server token whose access scopes include
/// neither cloud-platform nor cloudkms (the token is valid, but not for
/// Cloud KMS).
const NO_KMS_SCOPE: &str = "scopes-without-cloudkms";

/// `/v1/<name>/publicKey` and `/v1/<name>:asymmetricSign`.
pub async fn kms(st: &State, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    if st.bearer_audience(parts).as_deref() == Some(NO_KMS_SCOPE) {
        // What Google answers for a token without a usable scope.
        return json(
            StatusCode::FORBIDDEN,
            j!({"error": {"code": 403, "message": "Request had insufficient authentication scopes.", "status": "PERMISSION_DENIED",
                "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT", "domain": "googleapis.com",
                             "metadata": {"service": "cloudkms.googleapis.com"}}]}}),
        );
    }
    if let Err(e) = st.check_bearer(parts, SCOPE) {
        return err(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            &format!("Request had invalid authentication credentials: {e}"),
        );
    }
    match st.gate().await {
        Gate::Pass => {}
        Gate::Throttle(s) => {
            let mut r = err(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Cryptographic requests'",
            );
            if let Ok(v) = s.to_string().parse() {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Gate::Fail => {
            return err(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
            )
        }
    }
    let path = parts.uri.path().trim_start_matches("/v1/");
    let resource = path
        .strip_suffix("/publicKey")
        .or_else(|| path.strip_suffix(":asymmetricSign"))
        .unwrap_or(path);
    if st.knob(|k| k.gcp_missing_role) {
        let perm = if path.ends_with("/publicKey") {
            "cloudkms.cryptoKeyVersions.viewPublicKey"
        } else {
            "cloudkms.cryptoKeyVersions.useToSign"
        };
        return err(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            &format!("Permission '{perm}' denied on resource '{resource}' (or it may not exist)."),
        );
    }
    if st.key_state(resource) != crate::KeyState::Enabled {
        return err(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            &format!("{resource} is not enabled, current state is: DISABLED."),
        );
    }
    if let Some(name) = path.strip_suffix("/publicKey") {
        if parts.method != Method::GET {
            return err(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "GET required");
        }
        let Some((key, alg)) = lock(&st.gcp_keys).get(name).cloned() else {
            return err(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("{name} not found."),
            );
        };
        let pem = key.spki_pem();
        return json(
            StatusCode::OK,
            j!({"pem": pem, "algorithm": alg, "pemCrc32c": crc(pem.as_bytes()), "name": name, "protectionLevel": "HSM"}),
        );
    }
    let Some(name) = path.strip_suffix(":asymmetricSign") else {
        return err(StatusCode::NOT_FOUND, "NOT_FOUND", "unknown method");
    };
    if parts.method != Method::POST {
        return err(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "POST required");
    }
    let Some((key, alg)) = lock(&st.gcp_keys).get(name).cloned() else {
        return err(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("{name} not found."),
        );
    };
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!("Invalid JSON payload: {e}"),
            )
        }
    };
    let r = sign(&key, &alg, &v);
    match r {
        Err(m) => err(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &m.to_string()),
        Ok((mut sig, digest_verified, data_verified)) => {
            bump(&st.stats.operations);
            st.maybe_spoil(&mut sig);
            let corrupt = {
                let mut k = lock(&st.knobs);
                let c = k.corrupt_crc_always || k.corrupt_crc_next > 0;
                k.corrupt_crc_next = k.corrupt_crc_next.saturating_sub(1);
                c
            };
            let c = if corrupt {
                (crc32c::crc32c(&sig) ^ 1).to_string()
            } else {
                crc(&sig)
            };
            json(
                StatusCode::OK,
                j!({"signature": b64(&sig), "signatureCrc32c": c, "verifiedDigestCrc32c": digest_verified,
                    "verifiedDataCrc32c": data_verified, "name": name, "protectionLevel": "HSM"}),
            )
        }
    }
}

/// Sign per the key version's algorithm: (signature, verifiedDigestCrc32c, verifiedDataCrc32c).
fn sign(
    key: &crate::SimKey,
    alg: &str,
    v: &serde_json::Value,
) -> Result<(Vec<u8>, bool, bool), ApiError> {
    let crc_field = |field: &'static str, bytes: &[u8]| match &v[field] {
        serde_json::Value::Null => Ok(false),
        serde_json::Value::String(s) if *s == crc(bytes) => Ok(true),
        serde_json::Value::String(_) => Err(ApiError::ChecksumMismatch(field)),
        _ => Err(ApiError::ChecksumType(field)),
    };
    let has_digest = !v["digest"].is_null();
    let has_data = !v["data"].is_null();
    if has_digest == has_data {
        return Err(ApiError::DigestOrData);
    }
    let want_hash = |s: &str| match s {
        "SHA256" => Some(Hash::Sha256),
        "SHA384" => Some(Hash::Sha384),
        "SHA512" => Some(Hash::Sha512),
        _ => None,
    };
    let parts: Vec<&str> = alg.split('_').collect();
    if has_digest {
        let d = v["digest"].as_object().ok_or(ApiError::DigestNotObject)?;
        if d.len() != 1 {
            return Err(ApiError::DigestFields);
        }
        let (field, b) = d.iter().next().ok_or(ApiError::DigestEmpty)?;
        let h = match field.as_str() {
            "sha256" => Hash::Sha256,
            "sha384" => Hash::Sha384,
            "sha512" => Hash::Sha512,
            other => return Err(ApiError::DigestField(other.to_string())),
        };
        let digest = b
            .as_str()
            .and_then(unb64)
            .ok_or(ApiError::NotBase64("digest"))?;
        if digest.len() != h.len() {
            return Err(ApiError::DigestFieldLength {
                field: field.clone(),
                len: digest.len(),
            });
        }
        let verified = crc_field("digestCrc32c", &digest)?;
        let key_hash = parts.last().and_then(|s| want_hash(s));
        if key_hash != Some(h) {
            return Err(ApiError::DigestAlgorithm {
                field: field.clone(),
                alg: alg.to_string(),
            });
        }
        let op = match parts.as_slice() {
            ["RSA", "SIGN", "PKCS1", ..] => OpClass::RsaPkcs1(h),
            ["RSA", "SIGN", "PSS", ..] => OpClass::RsaPss(h),
            ["EC", "SIGN", ..] => OpClass::Ecdsa(h),
            _ => return Err(ApiError::SignsData(alg.to_string())),
        };
        Ok((key.perform(op, &digest)?, verified, false))
    } else {
        let data = v["data"]
            .as_str()
            .and_then(unb64)
            .ok_or(ApiError::NotBase64("data"))?;
        let verified = crc_field("dataCrc32c", &data)?;
        let sig = match parts.as_slice() {
            ["RSA", "SIGN", "RAW", "PKCS1", _] => key.sign_raw_pkcs1(&data)?,
            ["EC", "SIGN", "ED25519"] => key.perform(OpClass::Ed25519, &data)?,
            _ => return Err(ApiError::SignsDigests(alg.to_string())),
        };
        Ok((sig, false, verified))
    }
}

/// OAuth token endpoint: `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`.
pub fn token(st: &State, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let bad = |code: &str, d: &str| {
        json(
            StatusCode::BAD_REQUEST,
            j!({"error": code, "error_description": d}),
        )
    };
    if parts.method != Method::POST {
        return bad("invalid_request", "POST required");
    }
    let f = parse_form(&String::from_utf8_lossy(body));
    if f.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return bad("unsupported_grant_type", "Invalid grant_type");
    }
    let Some(a) = f.get("assertion") else {
        return bad("invalid_request", "Missing required parameter: assertion");
    };
    // Read the issuer before verifying (to find its key), then verify.
    let iss = a
        .split('.')
        .nth(1)
        .and_then(crate::unb64url)
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
        .and_then(|c| c["iss"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let Some(acct) = lock(&st.gcp_accounts).get(&iss).cloned() else {
        return bad("invalid_grant", "Invalid JWT: unknown issuer");
    };
    let (h, c) = match verify_jwt(a, &acct.public, "RS256") {
        Ok(x) => x,
        Err(e) => return bad("invalid_grant", &format!("Invalid JWT Signature: {e}")),
    };
    let now = crate::unix_now();
    let aud = format!("{}/token", st.https_url());
    let (iat, exp) = (
        c["iat"].as_u64().unwrap_or(0),
        c["exp"].as_u64().unwrap_or(0),
    );
    if h["kid"] != acct.key_id.as_str() {
        return bad(
            "invalid_grant",
            "Invalid JWT: kid is not the service account's key",
        );
    }
    if c["aud"] != aud.as_str() {
        return bad(
            "invalid_grant",
            "Invalid JWT: aud is not the token endpoint",
        );
    }
    if exp <= now || iat > now + 60 || exp.saturating_sub(iat) > 3600 {
        return bad("invalid_grant", "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    let scopes = c["scope"].as_str().unwrap_or("");
    if !scopes.split(' ').any(|s| s == SCOPE) {
        return bad("invalid_scope", "the cloudkms scope was not requested");
    }
    let (t, life) = st.issue_token(SCOPE);
    bump(&st.stats.gcp_tokens);
    json(
        StatusCode::OK,
        j!({"access_token": t, "expires_in": life, "token_type": "Bearer"}),
    )
}

/// Metadata server: `/computeMetadata/v1/instance/service-accounts/default/token`
/// (and `.../default/scopes`, the VM's access scopes, one per line).
pub fn metadata(st: &State, parts: &Parts) -> Response<Full<Bytes>> {
    if parts
        .headers
        .get("metadata-flavor")
        .and_then(|v| v.to_str().ok())
        != Some("Google")
    {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Full::new(Bytes::from_static(
                b"Missing Metadata-Flavor:Google header.",
            )))
            .unwrap_or_default();
    }
    if parts.uri.path() == "/computeMetadata/v1/instance/service-accounts/default/scopes" {
        let scopes = st.knob(|k| k.gcp_metadata_scopes.join("\n"));
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/text")
            .body(Full::new(Bytes::from(scopes + "\n")))
            .unwrap_or_default();
    }
    if parts.uri.path() != "/computeMetadata/v1/instance/service-accounts/default/token" {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::default())
            .unwrap_or_default();
    }
    let _ = parse_form(parts.uri.query().unwrap_or(""));
    // The token carries the VM's access scopes; Cloud KMS takes it only
    // with cloud-platform or cloudkms among them.
    let usable = st.knob(|k| {
        k.gcp_metadata_scopes
            .iter()
            .any(|s| s == SCOPE || s == crate::CLOUD_PLATFORM_SCOPE)
    });
    let (t, life) = st.issue_token(if usable { SCOPE } else { NO_KMS_SCOPE });
    bump(&st.stats.gcp_metadata_tokens);
    json(
        StatusCode::OK,
        j!({"access_token": t, "expires_in": life, "token_type": "Bearer"}),
    )
}
