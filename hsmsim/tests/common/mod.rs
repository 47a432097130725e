//! Shared set-up for the simulator's integration tests: a SoftHSM2 token in a tempdir with its
//! own SOFTHSM2_CONF, a simulator config file in the same tempdir, and a cryptoki context that
//! loads the simulator's cdylib (found next to the test executable). One per test process;
//! tests in a file take `lock()` so timing and fault scenarios never overlap.

#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keycore_testsupport::softhsm::Token;

pub const TOKEN_LABEL: &str = "hsmsim-test";
pub const USER_PIN: &str = "1234";
pub const SO_PIN: &str = "123456";
pub const EC_LABEL: &str = "ec-key";
pub const RSA_LABEL: &str = "rsa-key";
/// DER OID of prime256v1 (P-256).
pub const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// Reload interval used by every test config: short, so a switch takes effect fast.
pub const RELOAD_MS: u64 = 20;
/// How long to wait after rewriting the config before relying on it.
pub const RELOAD_WAIT: Duration = Duration::from_millis(5 * RELOAD_MS);

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub pkcs11: Pkcs11,
    pub slot: Slot,
}

static HARNESS: OnceLock<Harness> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// The simulator cdylib built for this test run (next to the test
/// executable; see `keycore_testsupport::hsmsim_module`).
pub fn module_path() -> PathBuf {
    keycore_testsupport::hsmsim_module()
}

/// Serialises the tests of one file; returns the shared harness.
pub fn lock() -> (MutexGuard<'static, ()>, &'static Harness) {
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    (guard, harness())
}

pub fn harness() -> &'static Harness {
    HARNESS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let softhsm_conf = keycore_testsupport::softhsm_conf(dir.path());
        let config_path = dir.path().join("hsmsim.json");
        write_config(&config_path, "{}");
        // Set before the module is loaded; nothing else in this process reads them earlier.
        std::env::set_var("SOFTHSM2_CONF", &softhsm_conf);
        std::env::set_var("KEYCORE_HSMSIM_CONFIG", &config_path);
        Token::init_with_so_pin(&softhsm_conf, TOKEN_LABEL, SO_PIN, USER_PIN);

        let pkcs11 = Pkcs11::new(module_path()).expect("load simulator");
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slot = pkcs11
            .get_slots_with_token()
            .unwrap()
            .into_iter()
            .find(|s| {
                pkcs11
                    .get_token_info(*s)
                    .map(|t| t.label() == TOKEN_LABEL)
                    .unwrap_or(false)
            })
            .expect("token by label");
        let h = Harness {
            dir,
            config_path,
            pkcs11,
            slot,
        };
        let s = h.session();
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(P256_OID.to_vec()),
                Attribute::Label(EC_LABEL.into()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Label(EC_LABEL.into()),
            ],
        )
        .expect("EC key pair");
        s.generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Label(RSA_LABEL.into()),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Label(RSA_LABEL.into()),
            ],
        )
        .expect("RSA key pair");
        h
    })
}

impl Harness {
    /// A new logged-in read-write session.
    pub fn session(&self) -> Session {
        let s = self
            .pkcs11
            .open_rw_session(self.slot)
            .expect("C_OpenSession");
        login(&s).expect("C_Login");
        s
    }

    /// Rewrites the simulator config and waits until the simulator has re-read it.
    pub fn set_config(&self, json: &str) {
        write_config(&self.config_path, json);
        std::thread::sleep(RELOAD_WAIT);
    }
}

/// Logs in; "already logged in" (another session of this process did) counts as success.
pub fn login(s: &Session) -> Result<(), Error> {
    match s.login(UserType::User, Some(&AuthPin::new(USER_PIN.into()))) {
        Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        r => r,
    }
}

/// Writes atomically (temp file + rename) so the simulator never reads half a file.
pub fn write_config(path: &Path, json: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The private key with `label`.
pub fn private_key(s: &Session, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.into()),
        ])
        .expect("C_FindObjects");
    assert_eq!(found.len(), 1, "private key {label}");
    found[0]
}

pub fn public_key(s: &Session, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(label.into()),
        ])
        .expect("C_FindObjects");
    assert_eq!(found.len(), 1, "public key {label}");
    found[0]
}

/// One ECDSA signature over a fixed 32-byte digest.
pub fn ec_sign(s: &Session, key: ObjectHandle) -> Result<Vec<u8>, Error> {
    s.sign(&Mechanism::Ecdsa, key, &[0x5a; 32])
}

/// The PKCS#11 return value inside a cryptoki error.
pub fn rv_of(e: &Error) -> Option<RvError> {
    match e {
        Error::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

/// The given percentile of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

pub fn config_with(body: &str) -> String {
    format!(
        r#"{{"reload_interval_ms": {RELOAD_MS}{}{body}}}"#,
        if body.is_empty() { "" } else { ", " }
    )
}
