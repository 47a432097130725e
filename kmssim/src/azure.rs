//! Azure stand-ins: the Key Vault keys API (get key, sign, decrypt;
//! `api-version` required, bearer token for the vault or Managed HSM
//! audience), the Azure AD v2 token endpoint (client credentials with a
//! secret or a certificate assertion) and the managed-identity IMDS
//! endpoint.
//!
//! Request shape checked as documented: `api-version` query parameter,
//! `Authorization: Bearer`, JSON body `{"alg", "value"}` with `value` in
//! base64url without padding, the algorithm valid for the key and the digest
//! length valid for the algorithm. Answers: `{"kid", "value"}` (ECDSA as raw
//! `r‖s`), errors as `{"error": {"code", "message"}}`, 429 with
//! `Retry-After`, 401 with `WWW-Authenticate` for a bad token.

use crate::keys::{der_to_raw, ec_width};
use crate::{
    b64url, bump, json, lock, parse_form, unb64url, verify_jwt, ApiError, AzureApp, Gate, State,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper::http::request::Parts;
use hyper::{Method, Response, StatusCode};
use keycore_keys::KeyKind;
use keycore_protocol::{Hash, OpClass};
use serde_json::json as j;

/// API versions accepted (those whose keys API has what keycore uses;
/// 2025-07-01 is the current one).
const API_VERSIONS: &[&str] = &["7.2", "7.3", "7.4", "7.5", "7.6", "2025-07-01"];

fn err(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(status, j!({"error": {"code": code, "message": message}}))
}

fn audience_of(host_kind: bool) -> &'static str {
    if host_kind {
        "https://managedhsm.azure.net"
    } else {
        "https://vault.azure.net"
    }
}

/// `/keys/<name>/<version>[/sign|/decrypt]`.
pub async fn keys(st: &State, parts: &Parts, body: &Bytes) -> Response<Full<Bytes>> {
    let q = parse_form(parts.uri.query().unwrap_or(""));
    match q.get("api-version") {
        None => {
            return err(
                StatusCode::BAD_REQUEST,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            )
        }
        Some(v) if !API_VERSIONS.contains(&v.as_str()) => {
            return err(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                &format!("The specified version ({v}) is not recognized."),
            )
        }
        _ => {}
    }
    // The stand-in serves vault and Managed HSM keys on one address: any
    // valid token gets past this first check; the key's own audience is
    // checked once the key is known.
    let segs: Vec<&str> = parts
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .collect();
    let (path_key, action) = match segs.as_slice() {
        ["keys", n, v] => (format!("/keys/{n}/{v}"), None),
        ["keys", n, v, a] => (format!("/keys/{n}/{v}"), Some(*a)),
        _ => {
            return err(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                "expected /keys/<name>/<version>[/<op>]",
            )
        }
    };
    let ok_vault = st.check_bearer(parts, audience_of(false));
    let ok_hsm = st.check_bearer(parts, audience_of(true));
    if let (Err(e), Err(_)) = (&ok_vault, &ok_hsm) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(
                "www-authenticate",
                "Bearer authorization=\"https://login.microsoftonline.com/tenant\", resource=\"https://vault.azure.net\"",
            )
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(j!({"error": {"code": "Unauthorized", "message": e.to_string()}}).to_string())))
            .unwrap_or_default();
    }
    match st.gate().await {
        Gate::Pass => {}
        Gate::Throttle(s) => {
            return Response::builder()
                .status(StatusCode::TOO_MANY_REQUESTS)
                .header("retry-after", s.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    j!({"error": {"code": "Throttled", "message": "Operations per second limit reached, retry after the Retry-After period."}}).to_string(),
                )))
                .unwrap_or_default()
        }
        Gate::Fail => return err(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "try again"),
    }
    let Some((key, hsm)) = lock(&st.azure_keys).get(&path_key).cloned() else {
        return err(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            &format!("A key with (name/id) {path_key} was not found in this key vault."),
        );
    };
    // A vault token does not open a Managed HSM and the other way round.
    if let Err(e) = st.check_bearer(parts, audience_of(hsm)) {
        return err(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            &format!("AKV10022: Invalid audience: {e}"),
        );
    }
    // A valid token without a data-plane role, and a disabled key: 403 with
    // the inner code Key Vault gives.
    let forbidden = |inner: &str, message: String| {
        json(
            StatusCode::FORBIDDEN,
            j!({"error": {"code": "Forbidden", "message": message, "innererror": {"code": inner}}}),
        )
    };
    let what = match (action, &parts.method) {
        (None, _) => "get".to_string(),
        (Some(a), _) => a.to_string(),
    };
    if st.knob(|k| k.azure_missing_role) {
        return forbidden(
            "ForbiddenByRbac",
            format!("Caller is not authorized to perform action on resource. Action: 'Microsoft.KeyVault/vaults/keys/{what}/action' Resource: '{path_key}'"),
        );
    }
    if st.key_state(&path_key) != crate::KeyState::Enabled && what != "get" {
        return forbidden(
            "KeyDisabled",
            format!("Operation \"{what}\" is not allowed on a disabled key."),
        );
    }
    let host = parts
        .headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let kid = format!("https://{host}{path_key}");
    match (action, &parts.method) {
        (None, &Method::GET) => {
            let jwk = match key.kind {
                KeyKind::Rsa { .. } => {
                    let Some((n, e)) = key.rsa_components() else {
                        return err(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                            "no RSA components",
                        );
                    };
                    j!({"kid": kid, "kty": "RSA-HSM", "key_ops": ["sign", "verify", "encrypt", "decrypt", "wrapKey", "unwrapKey"], "n": b64url(&n), "e": b64url(&e)})
                }
                KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521 => {
                    let w = ec_width(key.kind);
                    let Some(p) = key.ec_point() else {
                        return err(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "InternalError",
                            "no EC point",
                        );
                    };
                    let crv = match key.kind {
                        KeyKind::EcdsaP256 => "P-256",
                        KeyKind::EcdsaP384 => "P-384",
                        _ => "P-521",
                    };
                    j!({"kid": kid, "kty": "EC-HSM", "key_ops": ["sign", "verify"], "crv": crv, "x": b64url(&p[1..1 + w]), "y": b64url(&p[1 + w..])})
                }
                KeyKind::Ed25519 => {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "BadParameter",
                        "Key Vault has no Ed25519 keys",
                    )
                }
            };
            json(
                StatusCode::OK,
                j!({"key": jwk, "attributes": {"enabled": true, "exportable": false, "recoveryLevel": "Recoverable"}}),
            )
        }
        (Some(op @ ("sign" | "decrypt")), &Method::POST) => {
            let ct = parts
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !ct.starts_with("application/json") {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "Content-Type must be application/json",
                );
            }
            let v: serde_json::Value = match serde_json::from_slice(body) {
                Ok(v) => v,
                Err(e) => {
                    return err(
                        StatusCode::BAD_REQUEST,
                        "BadParameter",
                        &format!("invalid JSON: {e}"),
                    )
                }
            };
            let (Some(alg), Some(value)) = (v["alg"].as_str(), v["value"].as_str()) else {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "alg and value are required",
                );
            };
            let Some(value) = unb64url(value) else {
                return err(
                    StatusCode::BAD_REQUEST,
                    "BadParameter",
                    "value must be base64url without padding",
                );
            };
            let r = if op == "sign" {
                sign(&key, alg, &value).map(|mut s| {
                    st.maybe_spoil(&mut s);
                    s
                })
            } else {
                decrypt(&key, alg, &value)
            };
            match r {
                Ok(out) => {
                    bump(&st.stats.operations);
                    json(StatusCode::OK, j!({"kid": kid, "value": b64url(&out)}))
                }
                Err(m) => err(StatusCode::BAD_REQUEST, "BadParameter", &m.to_string()),
            }
        }
        _ => err(
            StatusCode::METHOD_NOT_ALLOWED,
            "BadParameter",
            "unsupported method or operation",
        ),
    }
}

fn sign(key: &crate::SimKey, alg: &str, value: &[u8]) -> Result<Vec<u8>, ApiError> {
    let need = |n: usize| {
        if value.len() == n {
            Ok(())
        } else {
            Err(ApiError::DigestLength {
                alg: alg.to_string(),
                got: value.len(),
                expected: n,
            })
        }
    };
    let rsa = matches!(key.kind, KeyKind::Rsa { .. });
    match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" if rsa => {
            let h = match &alg[2..] {
                "256" => Hash::Sha256,
                "384" => Hash::Sha384,
                _ => Hash::Sha512,
            };
            need(h.len())?;
            let op = if alg.starts_with("PS") {
                OpClass::RsaPss(h)
            } else {
                OpClass::RsaPkcs1(h)
            };
            key.perform(op, value)
        }
        // PKCS#1 v1.5 padding around the value as given.
        "RSNULL" if rsa => key.sign_raw_pkcs1(value),
        "ES256" | "ES384" | "ES512" => {
            let (kind, n) = match alg {
                "ES256" => (KeyKind::EcdsaP256, 32),
                "ES384" => (KeyKind::EcdsaP384, 48),
                _ => (KeyKind::EcdsaP521, 64),
            };
            if key.kind != kind {
                return Err(ApiError::CurveMismatch(alg.to_string()));
            }
            need(n)?;
            let der = key.perform(OpClass::Ecdsa(Hash::Sha256), value)?;
            der_to_raw(&der, ec_width(kind)).ok_or(ApiError::EcdsaSignature)
        }
        other => Err(ApiError::SignAlgorithm(other.to_string())),
    }
}

fn decrypt(key: &crate::SimKey, alg: &str, value: &[u8]) -> Result<Vec<u8>, ApiError> {
    if alg != "RSA1_5" || !matches!(key.kind, KeyKind::Rsa { .. }) {
        return Err(ApiError::DecryptAlgorithm(alg.to_string()));
    }
    if value.len() != key.rsa_len() {
        return Err(ApiError::CiphertextLength);
    }
    let em = key.perform(OpClass::RsaDecrypt, value)?;
    // 00 02 PS(>= 8 nonzero) 00 M
    if em.len() < 11 || em[0] != 0 || em[1] != 2 {
        return Err(ApiError::DecryptPadding);
    }
    let Some(z) = em[2..].iter().position(|&b| b == 0) else {
        return Err(ApiError::DecryptPadding);
    };
    if z < 8 {
        return Err(ApiError::DecryptPadding);
    }
    Ok(em[2 + z + 1..].to_vec())
}

/// `/<tenant>/oauth2/v2.0/token`: client credentials grant.
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
    let ct = parts
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/x-www-form-urlencoded") {
        return bad("invalid_request", "AADSTS900144: form body required");
    }
    let tenant = parts
        .uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or("")
        .to_owned();
    let f = parse_form(&String::from_utf8_lossy(body));
    if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return bad(
            "unsupported_grant_type",
            "grant_type must be client_credentials",
        );
    }
    let Some(client_id) = f.get("client_id") else {
        return bad("invalid_request", "AADSTS900144: client_id missing");
    };
    let Some(scope) = f.get("scope") else {
        return bad("invalid_scope", "scope missing");
    };
    let Some(resource) = scope.strip_suffix("/.default") else {
        return bad(
            "invalid_scope",
            "AADSTS1002012: client credentials need a /.default scope",
        );
    };
    let app = lock(&st.azure_apps)
        .get(&(tenant.clone(), client_id.clone()))
        .cloned();
    let ok = match app {
        None => {
            return json(
                StatusCode::BAD_REQUEST,
                j!({"error": "unauthorized_client", "error_description": format!("AADSTS700016: application {client_id} not found in tenant {tenant}")}),
            )
        }
        Some(AzureApp::Secret(s)) => f.get("client_secret") == Some(&s),
        Some(AzureApp::Federated(want)) => {
            f.get("client_assertion_type").map(String::as_str)
                == Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                && f.get("client_assertion") == Some(&want)
        }
        Some(AzureApp::Certificate(x5t, public)) => {
            if f.get("client_assertion_type").map(String::as_str)
                != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
            {
                return bad(
                    "invalid_request",
                    "client_assertion_type must be jwt-bearer",
                );
            }
            let Some(a) = f.get("client_assertion") else {
                return bad("invalid_request", "client_assertion missing");
            };
            // The current Entra assertion format: PS256, `x5t#S256` (the
            // certificate's SHA-256 thumbprint).
            match verify_jwt(a, &public, "PS256") {
                Err(e) => return bad("invalid_client", &format!("AADSTS700027: {e}")),
                Ok((h, c)) => {
                    let now = crate::unix_now();
                    let aud = format!("{}{}", st.https_url(), parts.uri.path());
                    h["x5t#S256"] == x5t.as_str()
                        && c["aud"] == aud.as_str()
                        && c["iss"] == client_id.as_str()
                        && c["sub"] == client_id.as_str()
                        && c["exp"].as_u64().is_some_and(|e| e > now)
                        && c["nbf"].as_u64().is_none_or(|n| n <= now + 60)
                        && c["jti"].is_string()
                }
            }
        }
    };
    if !ok {
        return json(
            StatusCode::UNAUTHORIZED,
            j!({"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret or assertion."}),
        );
    }
    let (t, life) = st.issue_token(resource);
    bump(&st.stats.azure_tokens);
    json(
        StatusCode::OK,
        j!({"token_type": "Bearer", "expires_in": life, "ext_expires_in": life, "access_token": t}),
    )
}

/// Managed identity: `GET /metadata/identity/oauth2/token?api-version=...&resource=...`, `Metadata: true`.
pub fn imds(st: &State, parts: &Parts) -> Response<Full<Bytes>> {
    if parts.headers.get("metadata").and_then(|v| v.to_str().ok()) != Some("true") {
        return json(
            StatusCode::BAD_REQUEST,
            j!({"error": "invalid_request", "error_description": "Required metadata header not specified"}),
        );
    }
    let q = parse_form(parts.uri.query().unwrap_or(""));
    let (Some(_), Some(resource)) = (q.get("api-version"), q.get("resource")) else {
        return json(
            StatusCode::BAD_REQUEST,
            j!({"error": "invalid_request", "error_description": "api-version and resource are required"}),
        );
    };
    // A scripted sequence of transient answers first (IMDS updating: 404,
    // 410; throttled: 429).
    let transient = {
        let mut k = crate::lock(&st.knobs);
        (!k.azure_imds_statuses.is_empty()).then(|| k.azure_imds_statuses.remove(0))
    };
    if let Some(code) = transient {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        return json(
            status,
            j!({"error": "unavailable", "error_description": format!("IMDS answered {code} (scripted)")}),
        );
    }
    let (t, life) = st.issue_token(resource);
    bump(&st.stats.azure_imds_tokens);
    let on = crate::unix_now() + life;
    json(
        StatusCode::OK,
        j!({"access_token": t, "expires_in": life.to_string(), "expires_on": on.to_string(), "resource": resource, "token_type": "Bearer"}),
    )
}

/// App Service / Functions managed identity: `GET <IDENTITY_ENDPOINT>?resource=...&api-version=2019-08-01`
/// with `X-IDENTITY-HEADER`; the answer has `expires_on` only.
pub fn app_service(st: &State, parts: &Parts) -> Response<Full<Bytes>> {
    let want = lock(&st.identity_header).clone();
    let got = parts
        .headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok());
    if want.is_none() || got != want.as_deref() {
        return json(
            StatusCode::UNAUTHORIZED,
            j!({"statusCode": 401, "message": "X-IDENTITY-HEADER missing or wrong"}),
        );
    }
    let q = parse_form(parts.uri.query().unwrap_or(""));
    if q.get("api-version").map(String::as_str) != Some("2019-08-01") {
        return json(
            StatusCode::BAD_REQUEST,
            j!({"statusCode": 400, "message": "api-version 2019-08-01 required"}),
        );
    }
    let Some(resource) = q.get("resource") else {
        return json(
            StatusCode::BAD_REQUEST,
            j!({"statusCode": 400, "message": "resource required"}),
        );
    };
    let (t, life) = st.issue_token(resource);
    bump(&st.stats.azure_imds_tokens);
    let on = crate::unix_now() + life;
    json(
        StatusCode::OK,
        j!({"access_token": t, "expires_on": on.to_string(), "resource": resource, "token_type": "Bearer", "client_id": "app-service"}),
    )
}
