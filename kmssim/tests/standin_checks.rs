//! The stand-ins check requests the way the services document them. Driven
//! with the `curl` CLI, an HTTP client independent of keycore's (and with its
//! own SigV4 signer, `--aws-sigv4`), so the stand-ins are not only tested
//! against the client they are meant to test.

use keycore_kmssim::{get, KeyType, Sim};
use std::process::Command;

struct Curl {
    status: u16,
    body: String,
}

fn curl(sim: &Sim, dir: &std::path::Path, args: &[&str]) -> Curl {
    let ca = sim.write_ca(dir).unwrap();
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (needed by these tests, like openssl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    Curl {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
    }
}

/// A SigV4-signed `TrentService.GetPublicKey` of `arn` in eu-west-1, signed
/// by curl as `user` (`AKID:secret`).
fn aws_get_public_key(sim: &Sim, dir: &std::path::Path, user: &str, arn: &str) -> Curl {
    let body = format!("{{\"KeyId\":\"{arn}\"}}");
    let url = format!("{}/", sim.https_url);
    curl(
        sim,
        dir,
        &[
            "--aws-sigv4",
            "aws:amz:eu-west-1:kms",
            "--user",
            user,
            "-H",
            "X-Amz-Target: TrentService.GetPublicKey",
            "-H",
            "Content-Type: application/x-amz-json-1.1",
            "-d",
            &body,
            &url,
        ],
    )
}

#[test]
fn aws_accepts_curls_sigv4_and_refuses_a_wrong_secret() {
    let sim = Sim::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    sim.aws_access_key("AKIDCURL", "curl-secret");
    let (arn, key) = sim.aws_key("eu-west-1", KeyType::EcP256).unwrap();
    let body = format!("{{\"KeyId\":\"{arn}\"}}");
    let url = format!("{}/", sim.https_url);
    let call = |user: &str| aws_get_public_key(&sim, dir.path(), user, &arn);
    let r = call("AKIDCURL:curl-secret");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["KeySpec"], "ECC_NIST_P256");
    assert_eq!(v["PublicKey"], keycore_kmssim::b64(&key.spki));
    let r = call("AKIDCURL:wrong");
    assert_eq!(r.status, 400);
    assert!(r.body.contains("InvalidSignatureException"), "{}", r.body);
    let r = call("AKIDNOBODY:curl-secret");
    assert!(r.body.contains("UnrecognizedClientException"), "{}", r.body);
    // Unsigned.
    let r = curl(
        &sim,
        dir.path(),
        &[
            "-H",
            "X-Amz-Target: TrentService.GetPublicKey",
            "-H",
            "Content-Type: application/x-amz-json-1.1",
            "-d",
            &body,
            &url,
        ],
    );
    assert!(
        r.status == 400 && r.body.contains("MissingAuthenticationToken"),
        "{}",
        r.body
    );
}

/// `--quota-rps` / `Knobs::quota_per_second`: above the quota the AWS
/// stand-in answers `ThrottlingException` (HTTP 400), as AWS KMS throttles
/// an account's request-rate quota, and counts it.
#[test]
fn aws_quota_is_throttled_with_throttling_exception() {
    let sim = Sim::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    sim.aws_access_key("AKIDCURL", "curl-secret");
    let (arn, _) = sim.aws_key("eu-west-1", KeyType::EcP256).unwrap();
    // 1/s, burst 1: of two calls made back to back (well within a second)
    // the second finds the bucket empty.
    sim.knobs(|k| k.quota_per_second = 1);
    let call = || aws_get_public_key(&sim, dir.path(), "AKIDCURL:curl-secret", &arn);
    let first = call();
    assert_eq!(first.status, 200, "{}", first.body);
    let second = call();
    assert_eq!(second.status, 400, "{}", second.body);
    assert!(
        second.body.contains("ThrottlingException"),
        "{}",
        second.body
    );
    assert_eq!(get(&sim.state.stats.throttled), 1);
    // The bucket refills at the quota's rate.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(call().status, 200);
}

#[test]
fn azure_shape_checks() {
    let sim = Sim::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    sim.azure_client_secret("t", "c", "s");
    let (uri, _) = sim.azure_key("kv1", false, "k", KeyType::Rsa2048).unwrap();
    let path = &uri[uri.find("/keys/").unwrap()..];
    // Token: wrong secret refused, right one accepted.
    let tok_url = format!("{}/t/oauth2/v2.0/token", sim.https_url);
    let form = |secret: &str| {
        format!("client_id=c&client_secret={secret}&scope=https%3A%2F%2Fvault.azure.net%2F.default&grant_type=client_credentials")
    };
    let r = curl(&sim, dir.path(), &["-d", &form("nope"), &tok_url]);
    assert!(
        r.status == 401 && r.body.contains("invalid_client"),
        "{}",
        r.body
    );
    let r = curl(&sim, dir.path(), &["-d", &form("s"), &tok_url]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let auth = format!(
        "Authorization: Bearer {}",
        v["access_token"].as_str().unwrap()
    );
    let key_url = format!("{}{path}", sim.https_url);
    // No api-version.
    let r = curl(&sim, dir.path(), &["-H", &auth, &key_url]);
    assert!(
        r.status == 400 && r.body.contains("MissingApiVersionParameter"),
        "{}",
        r.body
    );
    // No token.
    let r = curl(&sim, dir.path(), &[&format!("{key_url}?api-version=7.4")]);
    assert_eq!(r.status, 401);
    // Padded (not base64url-without-padding) value; wrong digest length.
    let sign_url = format!("{key_url}/sign?api-version=7.4");
    let json = ["-H", "Content-Type: application/json", "-H", &auth];
    let mut a = json.to_vec();
    let padded = r#"{"alg":"RS256","value":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}"#;
    a.extend(["-d", padded, &sign_url]);
    let r = curl(&sim, dir.path(), &a);
    assert!(
        r.status == 400 && r.body.contains("base64url"),
        "{}",
        r.body
    );
    let mut a = json.to_vec();
    a.extend(["-d", r#"{"alg":"RS256","value":"AAAA"}"#, &sign_url]);
    let r = curl(&sim, dir.path(), &a);
    assert!(
        r.status == 400 && r.body.contains("digest length"),
        "{}",
        r.body
    );
    let mut a = json.to_vec();
    a.extend([
        "-d",
        r#"{"alg":"ES256","value":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        &sign_url,
    ]);
    let r = curl(&sim, dir.path(), &a);
    assert!(
        r.status == 400 && r.body.contains("not valid for this key"),
        "{}",
        r.body
    );
    let mut a = json.to_vec();
    a.extend([
        "-d",
        r#"{"alg":"RS256","value":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}"#,
        &sign_url,
    ]);
    let r = curl(&sim, dir.path(), &a);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(get(&sim.stats().bad_requests) >= 4);
    // A vault token does not open a Managed HSM key.
    let (hsm_uri, _) = sim.azure_key("hsm1", true, "k", KeyType::EcP256).unwrap();
    let hsm_url = format!(
        "{}{}?api-version=7.4",
        sim.https_url,
        &hsm_uri[hsm_uri.find("/keys/").unwrap()..]
    );
    let r = curl(&sim, dir.path(), &["-H", &auth, &hsm_url]);
    assert!(r.status == 401 && r.body.contains("audience"), "{}", r.body);
}

#[test]
fn google_shape_checks() {
    let sim = Sim::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let name = "projects/p/locations/global/keyRings/r/cryptoKeys/k/cryptoKeyVersions/1";
    sim.gcp_key(name, "RSA_SIGN_PSS_2048_SHA256", KeyType::Rsa2048)
        .unwrap();
    // The metadata server wants its header.
    let md = format!(
        "{}/computeMetadata/v1/instance/service-accounts/default/token",
        sim.http_url
    );
    let r = curl(&sim, dir.path(), &[&md]);
    assert_eq!(r.status, 403);
    let r = curl(&sim, dir.path(), &["-H", "Metadata-Flavor: Google", &md]);
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let auth = format!(
        "Authorization: Bearer {}",
        v["access_token"].as_str().unwrap()
    );
    let sign = format!("{}/v1/{name}:asymmetricSign", sim.https_url);
    let post = |body: &str| {
        curl(
            &sim,
            dir.path(),
            &[
                "-H",
                &auth,
                "-H",
                "Content-Type: application/json",
                "-d",
                body,
                &sign,
            ],
        )
    };
    let d = keycore_kmssim::b64(&[1u8; 32]);
    let crc = crc32c::crc32c(&[1u8; 32]);
    // Digest type that does not match the version's algorithm.
    let r = post(&format!(
        r#"{{"digest":{{"sha384":"{}"}}}}"#,
        keycore_kmssim::b64(&[1u8; 48])
    ));
    assert!(
        r.status == 400 && r.body.contains("does not match algorithm"),
        "{}",
        r.body
    );
    // Wrong digestCrc32c.
    let r = post(&format!(
        r#"{{"digest":{{"sha256":"{d}"}},"digestCrc32c":"{}"}}"#,
        crc ^ 1
    ));
    assert!(r.status == 400 && r.body.contains("checksum"), "{}", r.body);
    // data on a digest algorithm.
    let r = post(&format!(r#"{{"data":"{d}"}}"#));
    assert_eq!(r.status, 400, "{}", r.body);
    // Good: signatureCrc32c and verifiedDigestCrc32c answered.
    let r = post(&format!(
        r#"{{"digest":{{"sha256":"{d}"}},"digestCrc32c":"{crc}"}}"#
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let sig = keycore_kmssim::unb64(v["signature"].as_str().unwrap()).unwrap();
    assert_eq!(v["signatureCrc32c"], crc32c::crc32c(&sig).to_string());
    assert_eq!(v["verifiedDigestCrc32c"], true);
    assert_eq!(v["name"], name);
}
