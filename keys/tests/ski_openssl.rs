//! SKI and legacy digest checked against the `openssl` command line, which is
//! an implementation independent of ours (aws-lc + a hand-written DER walk).
//!
//! For each key type the test generates a fresh key in a tempdir, exports its
//! SubjectPublicKeyInfo as DER, and gets the expected SKI from openssl in two
//! ways: (1) a self-signed certificate made with
//! `-addext subjectKeyIdentifier=hash`, read back with
//! `openssl x509 -ext subjectKeyIdentifier`; (2) the subjectPublicKey BIT
//! STRING located with `openssl asn1parse` and hashed with
//! `openssl dgst -sha1`. Both must equal `ski_from_spki`.
//!
//! The legacy digest is SHA-256 of the upper-case hex of the RSA modulus as a
//! big integer, without leading zeros (PROTOCOL.md). The test takes
//! `openssl rsa -modulus` (`Modulus=<HEX>`), strips any leading `0` digits
//! (so it holds whether or not openssl prints them) and hashes the text with
//! `openssl dgst -sha256`. A 2044-bit key is included because its modulus has
//! an odd number of hex digits: the top byte is `0x0?`, so a leading zero
//! nibble must be dropped; a 2048-bit key's DER INTEGER carries a leading 0x00
//! byte that must be dropped too.
//!
//! If `openssl` is not installed the tests print why and pass without
//! checking (the only case they skip).

use keycore_keys::{legacy_digest_from_spki, ski_from_spki, SpkiError};
use std::path::Path;
use std::process::Command;

fn have_openssl() -> bool {
    match Command::new("openssl").arg("version").output() {
        Ok(o) if o.status.success() => true,
        _ => {
            eprintln!("SKIPPED: the `openssl` command is not installed; SKI vectors not checked");
            false
        }
    }
}

/// Run openssl in `dir`; panic with its stderr on failure; return stdout.
fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl {args:?}: {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("openssl printed non-UTF-8")
}

fn unhex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    assert!(s.len().is_multiple_of(2), "odd hex {s:?}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `openssl dgst -r` prints `<hex> *<file>`.
fn dgst(dir: &Path, alg: &str, file: &str) -> Vec<u8> {
    let out = openssl(dir, &["dgst", alg, "-r", file]);
    unhex(out.split_whitespace().next().expect("empty dgst output"))
}

/// A fresh key of the given `genpkey` options; returns (tempdir, SPKI DER).
fn keypair(genpkey: &[&str]) -> (tempfile::TempDir, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(genpkey);
    args.extend_from_slice(&["-out", "key.pem"]);
    openssl(dir.path(), &args);
    openssl(
        dir.path(),
        &[
            "pkey", "-in", "key.pem", "-pubout", "-outform", "DER", "-out", "spki.der",
        ],
    );
    let spki = std::fs::read(dir.path().join("spki.der")).unwrap();
    (dir, spki)
}

/// Expected SKI from a self-signed certificate's extension.
fn ski_via_certificate(dir: &Path) -> Vec<u8> {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "key.pem",
            "-subj",
            "/CN=keycore ski test",
            "-days",
            "1",
            "-addext",
            "subjectKeyIdentifier=hash",
            "-out",
            "cert.pem",
        ],
    );
    let text = openssl(
        dir,
        &[
            "x509",
            "-in",
            "cert.pem",
            "-noout",
            "-ext",
            "subjectKeyIdentifier",
        ],
    );
    // "X509v3 Subject Key Identifier: \n    A9:99:3E:..."
    let hex = text
        .lines()
        .skip_while(|l| !l.contains("Subject Key Identifier"))
        .nth(1)
        .unwrap_or_else(|| panic!("no SKI in openssl output: {text}"));
    unhex(hex)
}

/// Expected SKI: openssl asn1parse locates the BIT STRING, openssl dgst hashes it.
fn ski_via_asn1parse(dir: &Path, spki: &[u8]) -> Vec<u8> {
    let listing = openssl(dir, &["asn1parse", "-inform", "DER", "-in", "spki.der"]);
    // e.g. "   19:d=1  hl=4 l= 271 prim: BIT STRING"
    let line = listing
        .lines()
        .find(|l| l.contains("d=1") && l.contains("BIT STRING"))
        .unwrap_or_else(|| panic!("no top-level BIT STRING in:\n{listing}"));
    let num = |key: &str| -> usize {
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let offset: usize = line.split(':').next().unwrap().trim().parse().unwrap();
    let (hl, l) = (num("hl="), num(" l="));
    let contents = &spki[offset + hl..offset + hl + l];
    assert_eq!(contents[0], 0, "BIT STRING with unused bits");
    std::fs::write(dir.join("key_bits.bin"), &contents[1..]).unwrap();
    dgst(dir, "-sha1", "key_bits.bin")
}

fn check_ski(genpkey: &[&str]) -> Option<(tempfile::TempDir, Vec<u8>)> {
    if !have_openssl() {
        return None;
    }
    let (dir, spki) = keypair(genpkey);
    let ours = ski_from_spki(&spki).unwrap_or_else(|e| panic!("{genpkey:?}: {e}"));
    let by_cert = ski_via_certificate(dir.path());
    let by_bits = ski_via_asn1parse(dir.path(), &spki);
    assert_eq!(
        by_cert, by_bits,
        "{genpkey:?}: openssl disagrees with itself"
    );
    assert_eq!(
        &ours[..],
        &by_cert[..],
        "{genpkey:?}: SKI differs from openssl"
    );
    Some((dir, spki))
}

/// `hex_digits`: how many significant hex digits the modulus must have, so
/// the test proves it exercised the case it is named after.
fn check_legacy_digest(genpkey: &[&str], hex_digits: usize) {
    let Some((dir, spki)) = check_ski(genpkey) else {
        return;
    };
    let out = openssl(dir.path(), &["rsa", "-in", "key.pem", "-noout", "-modulus"]);
    let hex = out
        .trim()
        .strip_prefix("Modulus=")
        .unwrap_or_else(|| panic!("unexpected openssl rsa output {out:?}"));
    assert!(hex
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
    // As a big integer: no leading zeros, whether openssl printed any or not.
    let hex = hex.trim_start_matches('0');
    assert_eq!(hex.len(), hex_digits, "{genpkey:?}: modulus {hex}");
    std::fs::write(dir.path().join("modulus.txt"), hex).unwrap();
    let want = dgst(dir.path(), "-sha256", "modulus.txt");
    let ours = legacy_digest_from_spki(&spki).unwrap();
    assert_eq!(&ours[..], &want[..], "{genpkey:?}: legacy digest differs");
}

#[test]
fn ski_and_legacy_digest_match_openssl_rsa_2048() {
    check_legacy_digest(
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        512,
    );
}

#[test]
fn ski_and_legacy_digest_match_openssl_rsa_2044_odd_hex_digits() {
    check_legacy_digest(
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2044"],
        511,
    );
}

fn check_ec(curve: &str) {
    let curve_opt = format!("ec_paramgen_curve:{curve}");
    let Some((_dir, spki)) = check_ski(&[
        "-algorithm",
        "EC",
        "-pkeyopt",
        &curve_opt,
        "-pkeyopt",
        "ec_param_enc:named_curve",
    ]) else {
        return;
    };
    assert_eq!(legacy_digest_from_spki(&spki), Err(SpkiError::NotRsa));
}

#[test]
fn ski_matches_openssl_ec_p256() {
    check_ec("P-256");
}

#[test]
fn ski_matches_openssl_ec_p384() {
    check_ec("P-384");
}

#[test]
fn ski_matches_openssl_ec_p521() {
    check_ec("P-521");
}

#[test]
fn ski_matches_openssl_ed25519() {
    if let Some((_dir, spki)) = check_ski(&["-algorithm", "ED25519"]) {
        assert_eq!(legacy_digest_from_spki(&spki), Err(SpkiError::NotRsa));
    }
}
