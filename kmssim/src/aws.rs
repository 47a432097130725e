//! AWS stand-ins: KMS over the JSON 1.1 protocol (`POST /`,
//! `Content-Type: application/x-amz-json-1.1`, `X-Amz-Target:
//! TrentService.GetPublicKey | TrentService.Sign`) with real Signature
//! Version 4 verification, and EC2 IMDSv2 for temporary credentials.
//!
//! SigV4 is recomputed here from the request as received (method, path,
//! query, the headers named in `SignedHeaders` with their received values,
//! the body's SHA-256), independently of keycore's signer: an unknown access
//! key is `UnrecognizedClientException`, a wrong signature
//! `InvalidSignatureException`, a stale date (over 5 minutes) the same, and
//! an expired session `ExpiredTokenException`, all HTTP 400 as AWS answers.
//! Throttling is `ThrottlingException` (HTTP 400); a quota exceeded is
//! `LimitExceededException` (HTTP 400, knob `aws_limit_exceeded_next`).
//! Key states: a disabled key answers `DisabledException`, one pending
//! deletion `KMSInvalidStateException` (GetPublicKey and Sign alike).
//! Ed25519 keys (`ECC_NIST_EDWARDS25519`) offer `ED25519_SHA_512` (pure
//! Ed25519, `MessageType` RAW only) and `ED25519_PH_SHA_512` (Ed25519ph over
//! a SHA-512 digest; listed as AWS lists it, not signed here: the stand-in
//! answers that it does not model it).
//!
//! STS serves one partition per host: a request that arrives for
//! `sts.<region>.amazonaws.com.cn` takes only `arn:aws-cn:` roles, one for
//! an `amazonaws.com` host only `arn:aws:` / `arn:aws-us-gov:` roles (the
//! global endpoint cannot assume a China-region role; the exact AWS error
//! text for that case is not documented, the stand-in answers
//! `InvalidParameterValue`). A request to the bare loopback address (tests
//! that set the STS endpoint to the stand-in) is not checked.

use crate::{b64, bump, json, lock, unb64, AwsSecret, Gate, State};
use aws_lc_rs::{digest, hmac};
use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};
use serde_json::json as j;
use std::time::{Duration, Instant};

/// Largest clock difference accepted on `X-Amz-Date` (AWS: 5 minutes).
pub const MAX_SKEW_S: u64 = 300;

fn err(t: &str, message: &str) -> Response<Full<Bytes>> {
    let mut r = json(
        StatusCode::BAD_REQUEST,
        j!({"__type": t, "message": message}),
    );
    if let Ok(v) = t.parse() {
        r.headers_mut().insert("x-amzn-errortype", v);
    }
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    r
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn mac(k: &[u8], m: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, k), m)
        .as_ref()
        .to_vec()
}

/// Unix seconds of `YYYYMMDDTHHMMSSZ`.
fn parse_amz_date(s: &str) -> Option<u64> {
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (
        n(0..4)?,
        n(4..6)?,
        n(6..8)?,
        n(9..11)?,
        n(11..13)?,
        n(13..15)?,
    );
    // days from civil (Howard Hinnant's algorithm)
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

/// Verify SigV4; Ok(()) or the AWS error to answer.
fn verify_sigv4(st: &State, parts: &Parts, body: &[u8]) -> Result<(), (&'static str, String)> {
    let err = |t: &'static str, m: &str| (t, m.to_owned());
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let auth = h("authorization").ok_or_else(|| {
        err(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        )
    })?;
    let rest = auth.strip_prefix("AWS4-HMAC-SHA256 ").ok_or_else(|| {
        err(
            "IncompleteSignatureException",
            "Authorization must be AWS4-HMAC-SHA256",
        )
    })?;
    let mut cred = None;
    let mut signed = None;
    let mut sig = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            cred = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            sig = Some(v);
        }
    }
    let (Some(cred), Some(signed), Some(sig)) = (cred, signed, sig) else {
        return Err(err(
            "IncompleteSignatureException",
            "Authorization lacks Credential, SignedHeaders or Signature",
        ));
    };
    let cparts: Vec<&str> = cred.split('/').collect();
    let [ak, day, region, service, term] = cparts.as_slice() else {
        return Err(err(
            "IncompleteSignatureException",
            "Credential must be AK/date/region/service/aws4_request",
        ));
    };
    if *service != "kms" || *term != "aws4_request" {
        return Err(err(
            "InvalidSignatureException",
            "Credential should be scoped to a valid service (kms) and aws4_request",
        ));
    }
    let date = h("x-amz-date")
        .ok_or_else(|| err("IncompleteSignatureException", "X-Amz-Date is required"))?;
    let t = parse_amz_date(date).ok_or_else(|| {
        err(
            "IncompleteSignatureException",
            "X-Amz-Date is not YYYYMMDDTHHMMSSZ",
        )
    })?;
    if !date.starts_with(day) {
        return Err(err(
            "InvalidSignatureException",
            "Credential date does not match X-Amz-Date",
        ));
    }
    if t.abs_diff(crate::unix_now()) > MAX_SKEW_S {
        return Err(err(
            "InvalidSignatureException",
            "Signature expired: the request time is too far from the server time",
        ));
    }
    let names: Vec<&str> = signed.split(';').collect();
    for must in ["host", "x-amz-date"] {
        if !names.contains(&must) {
            return Err(err(
                "InvalidSignatureException",
                &format!("SignedHeaders must include {must}"),
            ));
        }
    }
    let mut sorted = names.clone();
    sorted.sort();
    if sorted != names {
        return Err(err(
            "InvalidSignatureException",
            "SignedHeaders must be sorted",
        ));
    }
    let secret: AwsSecret = lock(&st.aws_secrets).get(*ak).cloned().ok_or_else(|| {
        err(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
        )
    })?;
    if let Some(tok) = &secret.session_token {
        if h("x-amz-security-token") != Some(tok.as_str())
            || !names.contains(&"x-amz-security-token")
        {
            return Err(err(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ));
        }
        if secret.expires.is_some_and(|e| Instant::now() >= e) {
            return Err(err(
                "ExpiredTokenException",
                "The security token included in the request is expired",
            ));
        }
    }
    let mut canon_headers = String::new();
    for n in &names {
        let vals: Vec<String> = parts
            .headers
            .get_all(*n)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if vals.is_empty() {
            return Err(err(
                "InvalidSignatureException",
                &format!("signed header {n} is missing"),
            ));
        }
        canon_headers.push_str(&format!("{n}:{}\n", vals.join(",")));
    }
    let canonical = format!(
        "{}\n{}\n{}\n{canon_headers}\n{signed}\n{}",
        parts.method.as_str(),
        parts.uri.path(),
        parts.uri.query().unwrap_or(""),
        hex(digest::digest(&digest::SHA256, body).as_ref())
    );
    let scope = format!("{day}/{region}/kms/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let k = mac(format!("AWS4{}", secret.secret).as_bytes(), day.as_bytes());
    let k = mac(&k, region.as_bytes());
    let k = mac(&k, b"kms");
    let k = mac(&k, b"aws4_request");
    let want = hex(&mac(&k, to_sign.as_bytes()));
    if want != sig {
        return Err(err(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided.",
        ));
    }
    Ok(())
}

fn algorithms(kind: KeyKind) -> Vec<&'static str> {
    match kind {
        KeyKind::Rsa { .. } => vec![
            "RSASSA_PSS_SHA_256",
            "RSASSA_PSS_SHA_384",
            "RSASSA_PSS_SHA_512",
            "RSASSA_PKCS1_V1_5_SHA_256",
            "RSASSA_PKCS1_V1_5_SHA_384",
            "RSASSA_PKCS1_V1_5_SHA_512",
        ],
        KeyKind::EcdsaP256 => vec!["ECDSA_SHA_256"],
        KeyKind::EcdsaP384 => vec!["ECDSA_SHA_384"],
        KeyKind::EcdsaP521 => vec!["ECDSA_SHA_512"],
        KeyKind::Ed25519 => vec!["ED25519_SHA_512", "ED25519_PH_SHA_512"],
    }
}

/// `POST /` with `X-Amz-Target`.
pub async fn kms(st: &State, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/x-amz-json-1.1" {
        return err(
            "SerializationException",
            "Content-Type must be application/x-amz-json-1.1",
        );
    }
    if let Err((t, m)) = verify_sigv4(st, parts, body) {
        return err(t, &m);
    }
    let quota = {
        let mut k = lock(&st.knobs);
        let q = k.aws_limit_exceeded_next > 0;
        k.aws_limit_exceeded_next = k.aws_limit_exceeded_next.saturating_sub(1);
        q
    };
    if quota {
        bump(&st.stats.key_requests);
        return err(
            "LimitExceededException",
            "The request was rejected because a quota was exceeded.",
        );
    }
    match st.gate().await {
        Gate::Pass => {}
        Gate::Throttle(_) => return err("ThrottlingException", "Rate exceeded"),
        Gate::Fail => {
            let mut r = err("KMSInternalException", "internal error");
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return r;
        }
    }
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let v: serde_json::Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return err("SerializationException", &format!("bad JSON: {e}")),
    };
    let Some(key_id) = v["KeyId"].as_str() else {
        return err("ValidationException", "1 validation error detected: Value null at 'keyId' failed to satisfy constraint: Member must not be null");
    };
    let key_id = lock(&st.aws_aliases)
        .get(key_id)
        .cloned()
        .unwrap_or_else(|| key_id.to_owned());
    let key_id = key_id.as_str();
    let found = {
        let keys = lock(&st.aws_keys);
        keys.iter()
            .find(|(arn, _)| arn.as_str() == key_id || arn.ends_with(&format!("key/{key_id}")))
            .map(|(arn, k)| (arn.clone(), k.clone()))
    };
    let Some((arn, (key, spec))) = found else {
        return err(
            "NotFoundException",
            &format!("Key '{key_id}' does not exist"),
        );
    };
    match st.key_state(&arn) {
        crate::KeyState::Enabled => {}
        crate::KeyState::Disabled => {
            return err("DisabledException", &format!("{arn} is disabled."))
        }
        crate::KeyState::PendingDeletion => {
            return err(
                "KMSInvalidStateException",
                &format!("{arn} is pending deletion."),
            )
        }
    }
    match target {
        "TrentService.GetPublicKey" => json(
            StatusCode::OK,
            j!({"KeyId": arn, "PublicKey": b64(&key.spki), "KeySpec": spec, "CustomerMasterKeySpec": spec,
                "KeyUsage": "SIGN_VERIFY", "SigningAlgorithms": algorithms(key.kind)}),
        ),
        "TrentService.Sign" => {
            let (Some(msg), Some(alg)) = (v["Message"].as_str(), v["SigningAlgorithm"].as_str())
            else {
                return err(
                    "ValidationException",
                    "Message and SigningAlgorithm are required",
                );
            };
            let Some(msg) = unb64(msg) else {
                return err("SerializationException", "Message is not base64");
            };
            if !algorithms(key.kind).contains(&alg) {
                return err(
                    "InvalidKeyUsageException",
                    &format!("{alg} is not a valid signing algorithm for this key"),
                );
            }
            if key.kind == KeyKind::Ed25519 {
                return ed25519_sign(st, &arn, &key, alg, v["MessageType"].as_str(), &msg);
            }
            let h = match &alg[alg.len() - 3..] {
                "256" => Hash::Sha256,
                "384" => Hash::Sha384,
                _ => Hash::Sha512,
            };
            let digest = match v["MessageType"].as_str().unwrap_or("RAW") {
                "DIGEST" => msg,
                "RAW" => {
                    let a = match h {
                        Hash::Sha256 => &digest::SHA256,
                        Hash::Sha384 => &digest::SHA384,
                        _ => &digest::SHA512,
                    };
                    digest::digest(a, &msg).as_ref().to_vec()
                }
                other => {
                    return err(
                        "ValidationException",
                        &format!("MessageType {other} is not RAW or DIGEST"),
                    )
                }
            };
            if digest.len() != h.len() {
                return err(
                    "ValidationException",
                    &format!("Digest is invalid length for algorithm {alg}."),
                );
            }
            let op = if alg.starts_with("RSASSA_PSS") {
                OpClass::RsaPss(h)
            } else if alg.starts_with("RSASSA_PKCS1") {
                OpClass::RsaPkcs1(h)
            } else {
                OpClass::Ecdsa(h)
            };
            match key.perform(op, &digest) {
                Ok(mut sig) => {
                    bump(&st.stats.operations);
                    st.maybe_spoil(&mut sig);
                    json(
                        StatusCode::OK,
                        j!({"KeyId": arn, "Signature": b64(&sig), "SigningAlgorithm": alg}),
                    )
                }
                Err(e) => err("KMSInternalException", &e.to_string()),
            }
        }
        other => err(
            "UnknownOperationException",
            &format!("unknown target {other}"),
        ),
    }
}

/// Sign with an Ed25519 key: pure Ed25519 over the whole message
/// (`ED25519_SHA_512`, `MessageType` RAW; AWS signs messages of at most 4096
/// bytes).
fn ed25519_sign(
    st: &State,
    arn: &str,
    key: &crate::SimKey,
    alg: &str,
    message_type: Option<&str>,
    msg: &[u8],
) -> Response<Full<Bytes>> {
    if alg != "ED25519_SHA_512" {
        return err(
            "UnsupportedOperationException",
            &format!("kmssim does not model {alg} (Ed25519ph)"),
        );
    }
    if message_type.unwrap_or("RAW") != "RAW" {
        return err(
            "ValidationException",
            "ED25519_SHA_512 requires MessageType RAW.",
        );
    }
    if msg.is_empty() || msg.len() > 4096 {
        return err(
            "ValidationException",
            "1 validation error detected: Value at 'message' failed to satisfy constraint: Member must have length less than or equal to 4096",
        );
    }
    match key.perform(OpClass::Ed25519, msg) {
        Ok(mut sig) => {
            bump(&st.stats.operations);
            st.maybe_spoil(&mut sig);
            json(
                StatusCode::OK,
                j!({"KeyId": arn, "Signature": b64(&sig), "SigningAlgorithm": alg}),
            )
        }
        Err(e) => err("KMSInternalException", &e.to_string()),
    }
}

/// IMDSv2: `PUT /latest/api/token`, then the role and its credentials.
pub fn imds(st: &State, parts: &Parts) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, s: String| {
        Response::builder()
            .status(status)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from(s)))
            .unwrap_or_default()
    };
    let path = parts.uri.path();
    if path == "/latest/api/token" {
        if parts.method != Method::PUT {
            return text(StatusCode::METHOD_NOT_ALLOWED, String::new());
        }
        let ttl: u64 = match parts
            .headers
            .get("x-aws-ec2-metadata-token-ttl-seconds")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            Some(t) if (1..=21600).contains(&t) => t,
            _ => return text(StatusCode::BAD_REQUEST, String::new()),
        };
        let t = crate::random_hex(24);
        lock(&st.imds_tokens).insert(t.clone(), Instant::now() + Duration::from_secs(ttl));
        return text(StatusCode::OK, t);
    }
    let tok = parts
        .headers
        .get("x-aws-ec2-metadata-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if lock(&st.imds_tokens)
        .get(tok)
        .is_none_or(|e| Instant::now() >= *e)
    {
        return text(StatusCode::UNAUTHORIZED, String::new());
    }
    match path.strip_prefix("/latest/meta-data/iam/security-credentials/") {
        Some("") => text(StatusCode::OK, "keycore-role".into()),
        Some("keycore-role") => {
            bump(&st.stats.aws_imds_credentials);
            temporary_credentials(st)
        }
        _ => text(StatusCode::NOT_FOUND, String::new()),
    }
}

/// Issue temporary credentials (a session) as IMDS and the container
/// endpoint answer them.
fn temporary_credentials(st: &State) -> Response<Full<Bytes>> {
    let life = st.knob(|k| k.token_lifetime_s);
    let ak = format!("ASIA{}", crate::random_hex(8).to_uppercase());
    let sk = crate::random_hex(20);
    let session = crate::random_hex(32);
    lock(&st.aws_secrets).insert(
        ak.clone(),
        AwsSecret {
            secret: sk.clone(),
            session_token: Some(session.clone()),
            expires: Some(Instant::now() + Duration::from_secs(life)),
        },
    );
    let exp = rfc3339(crate::unix_now() + life);
    json(
        StatusCode::OK,
        j!({"Code": "Success", "LastUpdated": rfc3339(crate::unix_now()), "Type": "AWS-HMAC",
            "AccessKeyId": ak, "SecretAccessKey": sk, "Token": session, "Expiration": exp}),
    )
}

/// STS `AssumeRoleWithWebIdentity` (query protocol, form body, XML answer):
/// the role and token must be the registered ones.
pub fn sts(st: &State, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let xml_err = |status: StatusCode, code: &str, msg: &str| {
        Response::builder()
            .status(status)
            .header("content-type", "text/xml")
            .body(Full::new(Bytes::from(format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type><Code>{code}</Code><Message>{msg}</Message></Error></ErrorResponse>"
            ))))
            .unwrap_or_default()
    };
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return xml_err(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValue",
            "form body required",
        );
    }
    let f = crate::parse_form(&String::from_utf8_lossy(body));
    if f.get("Action").map(String::as_str) != Some("AssumeRoleWithWebIdentity")
        || f.get("Version").map(String::as_str) != Some("2011-06-15")
    {
        return xml_err(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            "only AssumeRoleWithWebIdentity, Version 2011-06-15",
        );
    }
    // One partition per STS host (see the module header).
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .split(':')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    let host_partition = if host.ends_with(".amazonaws.com.cn") {
        Some("aws-cn")
    } else if host.ends_with(".amazonaws.com") {
        Some("aws")
    } else {
        None
    };
    let role_partition = f
        .get("RoleArn")
        .and_then(|r| r.split(':').nth(1))
        .unwrap_or("");
    let role_partition = if role_partition == "aws-us-gov" {
        "aws"
    } else {
        role_partition
    };
    if let Some(p) = host_partition {
        if p != role_partition {
            return xml_err(
                StatusCode::BAD_REQUEST,
                "InvalidParameterValue",
                &format!(
                    "role of partition {role_partition} cannot be assumed at {host} (partition {p})"
                ),
            );
        }
    }
    let want = lock(&st.web_identity).clone();
    let ok = want.is_some_and(|(role, token)| {
        f.get("RoleArn") == Some(&role)
            && f.get("WebIdentityToken") == Some(&token)
            && f.get("RoleSessionName").is_some_and(|n| !n.is_empty())
    });
    if !ok {
        return xml_err(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "Not authorized to perform sts:AssumeRoleWithWebIdentity",
        );
    }
    let life = st.knob(|k| k.token_lifetime_s);
    let ak = format!("ASIA{}", crate::random_hex(8).to_uppercase());
    let sk = crate::random_hex(20);
    let session = crate::random_hex(32);
    lock(&st.aws_secrets).insert(
        ak.clone(),
        AwsSecret {
            secret: sk.clone(),
            session_token: Some(session.clone()),
            expires: Some(Instant::now() + Duration::from_secs(life)),
        },
    );
    bump(&st.stats.aws_sts_credentials);
    let exp = rfc3339(crate::unix_now() + life);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/xml")
        .body(Full::new(Bytes::from(format!(
            "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><SessionToken>{session}</SessionToken><SecretAccessKey>{sk}</SecretAccessKey><Expiration>{exp}</Expiration><AccessKeyId>{ak}</AccessKeyId></Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>"
        ))))
        .unwrap_or_default()
}

/// ECS task role / EKS Pod Identity: `GET /v2/credentials/<id>`, with the
/// `Authorization` token when one is configured.
pub fn container(st: &State, parts: &Parts) -> Response<Full<Bytes>> {
    let want = lock(&st.container_token).clone();
    if let Some(w) = want {
        let got = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        if got != Some(w.as_str()) {
            return json(
                StatusCode::UNAUTHORIZED,
                j!({"code": "AccessDeniedException", "message": "bad authorization token"}),
            );
        }
    }
    bump(&st.stats.aws_container_credentials);
    temporary_credentials(st)
}

fn rfc3339(unix: u64) -> String {
    let z = (unix / 86400) as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = unix % 86400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1440938160));
        assert_eq!(rfc3339(1440938160), "2015-08-30T12:36:00Z");
        assert_eq!(parse_amz_date("2015-08-30"), None);
    }
}
