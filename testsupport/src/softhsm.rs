//! SoftHSM2 tokens and keys made by the tests, with the real tools
//! (`softhsm2-util`, OpenSC's `pkcs11-tool`, `openssl`).
//!
//! Every command gets `SOFTHSM2_CONF` set on the child, so it works whether
//! or not the test process has set it in its own environment (which it
//! must do, before the first `C_Initialize`, to open the token in-process).
//!
//! Owns: token initialisation, key generation and import, the
//! "installed?" check. Must not: initialise PKCS#11 in the test process.

use crate::{run_ok, SOFTHSM_MODULE};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The security officer PIN of the tokens [`Token::init`] makes.
pub const SO_PIN: &str = "1111";

/// SoftHSM2's module and OpenSC's `pkcs11-tool` are both installed (tests
/// that need a token skip, saying so, when they are not).
pub fn softhsm_available() -> bool {
    Path::new(SOFTHSM_MODULE).exists()
        && Command::new("pkcs11-tool").arg("--help").output().is_ok()
        && Command::new("softhsm2-util").arg("--help").output().is_ok()
}

/// A SoftHSM2 token a test initialised.
#[derive(Debug, Clone)]
pub struct Token {
    /// The SoftHSM2 configuration whose token directory holds it.
    pub conf: PathBuf,
    /// Its label.
    pub label: String,
    /// Its user PIN.
    pub pin: String,
}

/// A key pair written by [`openssl_key`]: PKCS#8 and SPKI, both DER.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// The private key, PKCS#8 DER.
    pub private_der: PathBuf,
    /// The public key, SubjectPublicKeyInfo DER.
    pub public_der: PathBuf,
}

/// A fresh key made by `openssl genpkey` in `dir` as `<name>.der` and
/// `<name>.pub.der`; `algo` is "rsa" (2048 bits) or "ec" (P-256).
pub fn openssl_key(dir: &Path, name: &str, algo: &str) -> KeyFiles {
    let pem = dir.join(format!("{name}.pem"));
    let mut c = Command::new("openssl");
    c.args(["genpkey", "-out"]).arg(&pem);
    match algo {
        "rsa" => c.args(["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
        "ec" => c.args(["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
        other => panic!("openssl_key: unknown algorithm {other:?} (rsa, ec)"),
    };
    run_ok(&mut c);
    let private_der = dir.join(format!("{name}.der"));
    let public_der = dir.join(format!("{name}.pub.der"));
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&private_der),
    );
    run_ok(
        Command::new("openssl")
            .args(["pkey", "-pubout", "-outform", "DER", "-in"])
            .arg(&pem)
            .arg("-out")
            .arg(&public_der),
    );
    KeyFiles {
        private_der,
        public_der,
    }
}

impl Token {
    /// Initialise a token `label` with user PIN `pin` (SO PIN [`SO_PIN`]) in
    /// the first free slot of the SoftHSM2 configuration `conf` (see
    /// [`crate::softhsm_conf`]).
    pub fn init(conf: &Path, label: &str, pin: &str) -> Token {
        Self::init_with_so_pin(conf, label, SO_PIN, pin)
    }

    /// [`Token::init`] with the SO PIN given.
    pub fn init_with_so_pin(conf: &Path, label: &str, so_pin: &str, pin: &str) -> Token {
        run_ok(
            Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", conf)
                .args(["--init-token", "--free", "--label", label])
                .args(["--so-pin", so_pin, "--pin", pin]),
        );
        Token {
            conf: conf.to_path_buf(),
            label: label.to_owned(),
            pin: pin.to_owned(),
        }
    }

    /// `pkcs11-tool` on SoftHSM2, this token, logged in as the user; add
    /// the operation's arguments and run it with [`run_ok`].
    pub fn tool(&self) -> Command {
        let mut c = Command::new("pkcs11-tool");
        c.env("SOFTHSM2_CONF", &self.conf)
            .args(["--module", SOFTHSM_MODULE, "--token-label"])
            .arg(&self.label)
            .args(["--login", "--pin"])
            .arg(&self.pin);
        c
    }

    /// Generate a key pair in the token (`key_type` as pkcs11-tool spells
    /// it: "rsa:2048", "EC:prime256v1", "EC:edwards25519") with CKA_ID `id`
    /// (hex) and CKA_LABEL `label`.
    pub fn keypair(&self, key_type: &str, id: &str, label: &str) {
        run_ok(self.tool().args([
            "--keypairgen",
            "--key-type",
            key_type,
            "--id",
            id,
            "--label",
            label,
        ]));
    }

    /// The public key with CKA_ID `id`, as SubjectPublicKeyInfo DER (read
    /// back through pkcs11-tool into `dir`).
    pub fn public_key(&self, dir: &Path, id: &str) -> Vec<u8> {
        let out = dir.join(format!("{}-{id}.pub.der", self.label));
        run_ok(
            self.tool()
                .args(["--read-object", "--type", "pubkey", "--id", id, "-o"])
                .arg(&out),
        );
        std::fs::read(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()))
    }

    /// Import a key made outside the token (private and public object, both
    /// with CKA_ID `id` and CKA_LABEL `label`).
    pub fn import(&self, key: &KeyFiles, id: &str, label: &str) {
        for (ty, f) in [("privkey", &key.private_der), ("pubkey", &key.public_der)] {
            run_ok(
                self.tool()
                    .arg("--write-object")
                    .arg(f)
                    .args(["--type", ty, "--id", id, "--label", label]),
            );
        }
    }

    /// Delete both objects with CKA_ID `id`.
    pub fn delete(&self, id: &str) {
        for ty in ["privkey", "pubkey"] {
            run_ok(
                self.tool()
                    .args(["--delete-object", "--type", ty, "--id", id]),
            );
        }
    }
}
