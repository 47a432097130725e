//! A throwaway PKI for the demo and the tests: a CA, a server and a client
//! certificate it signs, a client certificate from a foreign CA, an expired
//! client certificate, and one private key file of every kind the software
//! backend serves.
//!
//! Everything is generated fresh (rcgen and aws-lc) into a directory the
//! caller chooses, as PEM files; nothing here is fit for production: keys are
//! written unencrypted and the validity periods are fixed dates. It must stay
//! fast, since the demo runs it at every start: the slow part, RSA prime
//! generation, runs on threads alongside the rest.

use keycore_keys::KeyKind;
use rcgen::{
    date_time_ymd, BasicConstraints, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RsaKeySize, SerialNumber,
    SignatureAlgorithm,
};
use std::path::{Path, PathBuf};

/// Why the demo PKI could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file or directory could not be created, written or read.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done ("creating", "writing", "reading").
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// rcgen could not generate, parse or sign.
    #[error("{what}")]
    Cert {
        /// What was being made ("generating the CA key", ...).
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// A key-generation thread panicked.
    #[error("generating {0}: thread panicked")]
    Panicked(&'static str),
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PkiError {
    let path = path.to_owned();
    move |source| PkiError::Io { what, path, source }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

/// The generated files. Every path is inside `dir`.
#[derive(Debug, Clone)]
pub struct DemoPki {
    /// The directory everything was written to.
    pub dir: PathBuf,
    /// The CA (ECDSA P-256, self-signed) that signs the server and client
    /// certificates: both the server's `cloudflare_ca_cert` and the client's
    /// trust root.
    pub ca_cert: PathBuf,
    /// The CA's private key (PKCS#8 PEM), for tests that issue more.
    pub ca_key: PathBuf,
    /// Server certificate for "localhost", 127.0.0.1 and ::1 (ECDSA P-256).
    pub server_cert: PathBuf,
    /// Its private key.
    pub server_key: PathBuf,
    /// Client certificate signed by the CA (ECDSA P-256).
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
    /// A second client certificate signed by the CA, with another CN
    /// ("keycore second client") and a DNS SAN ("edge2.keycore.test"): a
    /// second edge identity for the client-identity tests (issue 18).
    pub second_client_cert: PathBuf,
    /// Its private key.
    pub second_client_key: PathBuf,
    /// Directory holding one key file per kind (`*.key`, PKCS#8 PEM).
    pub keys_dir: PathBuf,
    /// The key files in `keys_dir`, with their kind.
    pub key_files: Vec<(KeyKind, PathBuf)>,
    /// A second, unrelated CA.
    pub foreign_ca_cert: PathBuf,
    /// Client certificate signed by the foreign CA: must be refused.
    pub foreign_client_cert: PathBuf,
    /// Its private key.
    pub foreign_client_key: PathBuf,
    /// Client certificate signed by the CA but expired (valid only during
    /// 2000): must be refused.
    pub expired_client_cert: PathBuf,
    /// Its private key.
    pub expired_client_key: PathBuf,
}

impl DemoPki {
    /// The files [`generate`] writes into `dir`, without generating or
    /// reading anything: how a process that did not generate the PKI (a
    /// test's child process) finds them. The one definition of the layout:
    /// `generate` writes to these paths.
    pub fn in_dir(dir: &Path) -> DemoPki {
        let (ca_cert, ca_key) = leaf_paths(dir, "ca");
        let (server_cert, server_key) = leaf_paths(dir, "server");
        let (client_cert, client_key) = leaf_paths(dir, "client");
        let (second_client_cert, second_client_key) = leaf_paths(dir, "second-client");
        let (foreign_client_cert, foreign_client_key) = leaf_paths(dir, "foreign-client");
        let (expired_client_cert, expired_client_key) = leaf_paths(dir, "expired-client");
        let keys_dir = dir.join(KEYS_DIR);
        let mut key_files: Vec<(KeyKind, PathBuf)> = KEY_FILES
            .iter()
            .map(|&(name, kind)| (kind, keys_dir.join(name)))
            .collect();
        key_files.sort_by(|a, b| a.1.cmp(&b.1));
        DemoPki {
            dir: dir.to_path_buf(),
            ca_cert,
            ca_key,
            server_cert,
            server_key,
            client_cert,
            client_key,
            second_client_cert,
            second_client_key,
            keys_dir,
            key_files,
            foreign_ca_cert: leaf_paths(dir, "foreign-ca").0,
            foreign_client_cert,
            foreign_client_key,
            expired_client_cert,
            expired_client_key,
        }
    }
}

/// `<name>.pem` and `<name>.key.pem` in `dir` (not `*.key`, so they never
/// land in a keys directory by accident).
fn leaf_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key.pem")),
    )
}

/// The directory under the PKI's directory that holds [`KEY_FILES`].
const KEYS_DIR: &str = "keys";

/// The key files written to `keys_dir`: name, kind, how to generate it.
const KEY_FILES: [(&str, KeyKind); 7] = [
    ("rsa2048.key", KeyKind::Rsa { bits: 2048 }),
    ("rsa3072.key", KeyKind::Rsa { bits: 3072 }),
    ("rsa4096.key", KeyKind::Rsa { bits: 4096 }),
    ("p256.key", KeyKind::EcdsaP256),
    ("p384.key", KeyKind::EcdsaP384),
    ("p521.key", KeyKind::EcdsaP521),
    ("ed25519.key", KeyKind::Ed25519),
];

fn generate_key(kind: KeyKind) -> Result<KeyPair, rcgen::Error> {
    let ec = |alg: &'static SignatureAlgorithm| KeyPair::generate_for(alg);
    match kind {
        KeyKind::Rsa { bits } => {
            let size = match bits {
                2048 => RsaKeySize::_2048,
                3072 => RsaKeySize::_3072,
                _ => RsaKeySize::_4096,
            };
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, size)
        }
        KeyKind::EcdsaP256 => ec(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyKind::EcdsaP384 => ec(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyKind::EcdsaP521 => ec(&rcgen::PKCS_ECDSA_P521_SHA512),
        KeyKind::Ed25519 => ec(&rcgen::PKCS_ED25519),
    }
}

/// Write a file; private keys are made owner-only on Unix.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(io_err("creating", path))?;
    f.write_all(contents.as_bytes())
        .map_err(io_err("writing", path))
}

fn dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "keycore demo (throwaway)");
    dn.push(DnType::CommonName, cn);
    dn
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2049, 12, 31);
    p.serial_number = Some(SerialNumber::from_slice(&[1]));
    p
}

fn leaf_params(
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
    serial: u8,
) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .map_err(cert_err("certificate names"))?;
    p.distinguished_name = dn(cn);
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![eku];
    p.use_authority_key_identifier_extension = true;
    p.not_before = date_time_ymd(2020, 1, 1);
    p.not_after = date_time_ymd(2049, 12, 31);
    p.serial_number = Some(SerialNumber::from_slice(&[serial]));
    Ok(p)
}

/// A leaf key and certificate issued by `issuer`, written to
/// [`leaf_paths`]`(dir, name)`.
fn issue(
    dir: &Path,
    name: &str,
    params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(cert_err(format!("generating the {name} key")))?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(cert_err(format!("signing the {name} certificate")))?;
    let (cert_path, key_path) = leaf_paths(dir, name);
    write(&cert_path, &cert.pem(), false)?;
    write(&key_path, &key.serialize_pem(), true)?;
    Ok((cert_path, key_path))
}

/// Generate the demo PKI into `dir` (created if missing; existing files with
/// the same names are overwritten).
pub fn generate(dir: &Path) -> Result<DemoPki, PkiError> {
    let layout = DemoPki::in_dir(dir);
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let keys_dir = &layout.keys_dir;
    std::fs::create_dir_all(keys_dir).map_err(io_err("creating", keys_dir))?;

    std::thread::scope(|s| {
        // RSA prime generation dominates (4096 bits: up to seconds); run
        // the RSA keys on their own threads while the certificates are made.
        let rsa_jobs: Vec<_> = KEY_FILES
            .iter()
            .filter(|(_, k)| matches!(k, KeyKind::Rsa { .. }))
            .map(|&(name, kind)| (name, s.spawn(move || generate_key(kind))))
            .collect();

        let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating the CA key"))?;
        let ca_p = ca_params("keycore demo CA");
        let ca_cert = ca_p
            .self_signed(&ca_key)
            .map_err(cert_err("self-signing the CA"))?;
        write(&layout.ca_cert, &ca_cert.pem(), false)?;
        write(&layout.ca_key, &ca_key.serialize_pem(), true)?;
        let ca = Issuer::new(ca_p, ca_key);

        issue(
            dir,
            "server",
            leaf_params(
                "localhost",
                &["localhost", "127.0.0.1", "::1"],
                ExtendedKeyUsagePurpose::ServerAuth,
                2,
            )?,
            &ca,
        )?;
        let client = |cn| leaf_params(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, 3);
        issue(dir, "client", client("keycore demo client")?, &ca)?;
        issue(
            dir,
            "second-client",
            leaf_params(
                "keycore second client",
                &["edge2.keycore.test"],
                ExtendedKeyUsagePurpose::ClientAuth,
                5,
            )?,
            &ca,
        )?;
        let mut expired = client("keycore expired client")?;
        expired.not_before = date_time_ymd(2000, 1, 1);
        expired.not_after = date_time_ymd(2000, 12, 31);
        expired.serial_number = Some(SerialNumber::from_slice(&[4]));
        issue(dir, "expired-client", expired, &ca)?;

        let foreign_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating the foreign CA key"))?;
        let foreign_p = ca_params("keycore foreign CA (not trusted)");
        let foreign_cert = foreign_p
            .self_signed(&foreign_key)
            .map_err(cert_err("self-signing the foreign CA"))?;
        write(&layout.foreign_ca_cert, &foreign_cert.pem(), false)?;
        let foreign = Issuer::new(foreign_p, foreign_key);
        issue(
            dir,
            "foreign-client",
            client("keycore foreign client")?,
            &foreign,
        )?;

        for &(name, kind) in KEY_FILES
            .iter()
            .filter(|(_, k)| !matches!(k, KeyKind::Rsa { .. }))
        {
            let key = generate_key(kind).map_err(cert_err(format!("generating {name}")))?;
            write(&keys_dir.join(name), &key.serialize_pem(), true)?;
        }
        for (name, job) in rsa_jobs {
            let key = job
                .join()
                .map_err(|_| PkiError::Panicked(name))?
                .map_err(cert_err(format!("generating {name}")))?;
            write(&keys_dir.join(name), &key.serialize_pem(), true)?;
        }
        Ok(layout.clone())
    })
}

/// A site certificate for "localhost", 127.0.0.1 and ::1 whose subject key
/// is the key in `key_file` (a key the key server serves), signed by the
/// demo CA and written to `out`: what `keycore edge` presents while the
/// private key stays with the key server. No key file is written; the key
/// is read only to put its public half in the certificate.
pub fn issue_site_cert(
    pki: &DemoPki,
    key_file: &Path,
    cn: &str,
    serial: u8,
    out: &Path,
) -> Result<(), PkiError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err("reading", p));
    let ca_key = KeyPair::from_pem(&read(&pki.ca_key)?).map_err(cert_err("the demo CA key"))?;
    // Same parameters as `generate`, so issuer name and key identifier match.
    let ca = Issuer::new(ca_params("keycore demo CA"), ca_key);
    let key = KeyPair::from_pem(&read(key_file)?)
        .map_err(cert_err(format!("site key {}", key_file.display())))?;
    // Key usage digitalSignature only: the edge offers ECDHE suites, so
    // even an RSA site key only ever signs.
    let params = leaf_params(
        cn,
        &["localhost", "127.0.0.1", "::1"],
        ExtendedKeyUsagePurpose::ServerAuth,
        serial,
    )?;
    let cert = params
        .signed_by(&key, &ca)
        .map_err(cert_err(format!("signing the site certificate {cn}")))?;
    write(out, &cert.pem(), false)
}

/// A client certificate with a fresh P-256 key, signed by the demo CA,
/// written as `<name>.pem` and `<name>.key.pem` into `dir`: an edge's
/// certificate after a rotation (same names, new key and pin).
pub fn issue_client_cert(
    pki: &DemoPki,
    dir: &Path,
    name: &str,
    cn: &str,
    sans: &[&str],
    serial: u8,
) -> Result<(PathBuf, PathBuf), PkiError> {
    let read = |p: &Path| std::fs::read_to_string(p).map_err(io_err("reading", p));
    let ca_key = KeyPair::from_pem(&read(&pki.ca_key)?).map_err(cert_err("the demo CA key"))?;
    // Same parameters as `generate`, so issuer name and key identifier match.
    let ca = Issuer::new(ca_params("keycore demo CA"), ca_key);
    let params = leaf_params(cn, sans, ExtendedKeyUsagePurpose::ClientAuth, serial)?;
    issue(dir, name, params, &ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_keys::software;
    use std::process::Command;
    use x509_parser::prelude::*;

    fn openssl_verify(dir: &Path, ca: &Path, cert: &Path) -> (bool, String) {
        let o = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(ca)
            .arg(cert)
            .current_dir(dir)
            .output()
            .expect("the openssl CLI is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        (o.status.success(), text)
    }

    fn parse(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).unwrap();
        let (_, p) = parse_x509_pem(&pem).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        p.contents
    }

    /// Not a check: prints how long each key kind takes to generate here
    /// (`cargo test -p keycore-engine --lib pki_timing -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn pki_timing() {
        for (name, kind) in KEY_FILES {
            let mut times = Vec::new();
            for _ in 0..5 {
                let t0 = std::time::Instant::now();
                generate_key(kind).unwrap();
                times.push(t0.elapsed().as_millis());
            }
            eprintln!("{name}: {times:?} ms");
        }
        for _ in 0..5 {
            let tmp = tempfile::tempdir().unwrap();
            let t0 = std::time::Instant::now();
            generate(tmp.path()).unwrap();
            eprintln!("generate: {:?}", t0.elapsed());
        }
    }

    /// One signature per key (and a decrypt for RSA), checked with
    /// aws-lc-rs's public verification: covers the 3072- and 4096-bit sizes
    /// the software-key tests don't generate.
    fn signs_and_verifies(e: &keycore_keys::KeyEntry) {
        use aws_lc_rs::digest;
        use aws_lc_rs::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};
        use keycore_protocol::{Hash, OpClass};
        let keycore_keys::Backend::Inline(k) = &e.backend else {
            panic!("software keys are inline")
        };
        let (_, spki) = SubjectPublicKeyInfo::from_der(&e.spki_der).unwrap();
        let public = spki.subject_public_key.data.to_vec();
        let msg = b"keycore demo pki";
        let cases: Vec<(OpClass, Vec<u8>, &'static dyn VerificationAlgorithm)> = match e.kind {
            KeyKind::Rsa { .. } => vec![
                (
                    OpClass::RsaPkcs1(Hash::Sha256),
                    digest::digest(&digest::SHA256, msg).as_ref().to_vec(),
                    &sig::RSA_PKCS1_2048_8192_SHA256,
                ),
                (
                    OpClass::RsaPss(Hash::Sha384),
                    digest::digest(&digest::SHA384, msg).as_ref().to_vec(),
                    &sig::RSA_PSS_2048_8192_SHA384,
                ),
            ],
            KeyKind::EcdsaP256 => vec![(
                OpClass::Ecdsa(Hash::Sha256),
                digest::digest(&digest::SHA256, msg).as_ref().to_vec(),
                &sig::ECDSA_P256_SHA256_ASN1,
            )],
            KeyKind::EcdsaP384 => vec![(
                OpClass::Ecdsa(Hash::Sha384),
                digest::digest(&digest::SHA384, msg).as_ref().to_vec(),
                &sig::ECDSA_P384_SHA384_ASN1,
            )],
            KeyKind::EcdsaP521 => vec![(
                OpClass::Ecdsa(Hash::Sha512),
                digest::digest(&digest::SHA512, msg).as_ref().to_vec(),
                &sig::ECDSA_P521_SHA512_ASN1,
            )],
            KeyKind::Ed25519 => vec![(OpClass::Ed25519, msg.to_vec(), &sig::ED25519)],
        };
        for (op, input, alg) in cases {
            let mut out = Vec::new();
            k.perform(op, &input, &mut out).unwrap();
            UnparsedPublicKey::new(alg, &public)
                .verify(msg, &out)
                .unwrap_or_else(|_| panic!("{}: {op:?} does not verify", e.source));
        }
        if let KeyKind::Rsa { bits } = e.kind {
            use aws_lc_rs::rsa::{Pkcs1PublicEncryptingKey, PublicEncryptingKey};
            let pk =
                Pkcs1PublicEncryptingKey::new(PublicEncryptingKey::from_der(&e.spki_der).unwrap())
                    .unwrap();
            let mut ct = vec![0u8; bits / 8];
            let ct = pk.encrypt(msg, &mut ct).unwrap().to_vec();
            let mut pt = Vec::new();
            k.perform(OpClass::RsaDecrypt, &ct, &mut pt).unwrap();
            assert_eq!(pt.len(), bits / 8);
            assert_eq!(&pt[..2], &[0, 2]);
            assert!(pt.ends_with(msg));
        }
    }

    #[test]
    fn generated_pki_chains_expires_and_loads() {
        let tmp = tempfile::tempdir().unwrap();
        let t0 = std::time::Instant::now();
        let pki = generate(tmp.path()).unwrap();
        eprintln!("pki::generate took {:?}", t0.elapsed());
        let d = tmp.path();

        // Certificates parse and say what they are.
        let ca_der = parse(&pki.ca_cert);
        let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
        assert!(ca.is_ca());
        let server_der = parse(&pki.server_cert);
        let (_, server) = X509Certificate::from_der(&server_der).unwrap();
        assert!(!server.is_ca());
        let san = server.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert!(names.iter().any(|n| n.contains("localhost")), "{names:?}");
        assert!(
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [127, 0, 0, 1])),
            "{names:?}"
        );
        assert!(server.validity().is_valid());
        let expired_der = parse(&pki.expired_client_cert);
        let (_, expired) = X509Certificate::from_der(&expired_der).unwrap();
        assert!(!expired.validity().is_valid());
        assert!(expired.validity().not_after < ASN1Time::now());

        // Chains, per openssl.
        for good in [&pki.server_cert, &pki.client_cert] {
            let (ok, text) = openssl_verify(d, &pki.ca_cert, good);
            assert!(ok, "{}: {text}", good.display());
        }
        let (ok, text) = openssl_verify(d, &pki.ca_cert, &pki.expired_client_cert);
        assert!(!ok && text.contains("expired"), "{text}");
        let (ok, _) = openssl_verify(d, &pki.ca_cert, &pki.foreign_client_cert);
        assert!(!ok, "the foreign client must not chain to the CA");
        let (ok, text) = openssl_verify(d, &pki.foreign_ca_cert, &pki.foreign_client_cert);
        assert!(ok, "{text}");

        // Every key file loads, with the kind it was made as.
        let loaded: Vec<_> = software::load_dir(&pki.keys_dir)
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert_eq!(loaded.len(), KEY_FILES.len());
        assert_eq!(pki.key_files.len(), KEY_FILES.len());
        for ((kind, path), entry) in pki.key_files.iter().zip(&loaded) {
            assert_eq!(entry.source, path.display().to_string());
            assert_eq!(entry.kind, *kind);
            signs_and_verifies(entry);
        }
        // The TLS keys load too (they are not `*.key`, so not picked up by
        // a directory scan).
        for k in [&pki.server_key, &pki.client_key, &pki.ca_key] {
            assert_eq!(software::load_file(k).unwrap().kind, KeyKind::EcdsaP256);
        }
        // `in_dir` names exactly the files written: every one exists, and
        // the directory holds nothing else (13 PEM files and the keys).
        let again = DemoPki::in_dir(d);
        let named = [
            &again.ca_cert,
            &again.ca_key,
            &again.server_cert,
            &again.server_key,
            &again.client_cert,
            &again.client_key,
            &again.second_client_cert,
            &again.second_client_key,
            &again.foreign_ca_cert,
            &again.foreign_client_cert,
            &again.foreign_client_key,
            &again.expired_client_cert,
            &again.expired_client_key,
        ];
        for p in named
            .iter()
            .copied()
            .chain(again.key_files.iter().map(|(_, p)| p))
        {
            assert!(p.is_file(), "{} not written", p.display());
        }
        let files = |dir: &Path| std::fs::read_dir(dir).unwrap().count();
        assert_eq!(files(d), named.len() + 1, "the PEM files and keys/");
        assert_eq!(files(&again.keys_dir), again.key_files.len());
        assert_eq!(again.key_files, pki.key_files);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&pki.server_key)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "private keys are owner-only");
        }
    }
}
