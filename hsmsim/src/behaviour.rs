//! Vendor behaviour modes: what a real product's PKCS#11 library does differently from SoftHSM2,
//! as documented by the vendor (not just how fast it is). Owns the named presets
//! (`"behaviour": "cloudhsm-sdk5"` ...), the individual switches a config may override, the
//! vendor return codes and constants, and the pure helpers the call path needs (which code a
//! throttled call gets, vendor <-> standard constant translation, key-size cost, DER building
//! for a public key read off a private object). No FFI and no state: `ffi` and `sim` apply it.
//!
//! Facts and their sources (ASSUMPTION marks what no source was found for):
//! - AWS CloudHSM Client SDK 5: `C_OpenSession` without `CKF_RW_SESSION` fails with
//!   `CKR_FUNCTION_FAILED` (AWS CloudHSM User Guide, "Known issues for the PKCS #11 library",
//!   ki-pkcs11-13); object handles are session-specific (AWS "Migrate from Client SDK 3 to 5"
//!   guide, as quoted in issue 20; the numbering below is an ASSUMPTION, AWS does not document
//!   it); throttling surfaces as `CKR_FUNCTION_FAILED`, and a throttled `C_GetAttributeValue`
//!   as `CKR_DEVICE_ERROR` (known issue ki-pkcs11-15; AWS's "Certificate storage limits" page,
//!   checked 2026-12-04, states both codes for its throttled calls); at most 1,024 sessions per application
//!   (issue 20 item 9; the code returned past it, `CKR_SESSION_COUNT`, is an ASSUMPTION);
//!   SDK 5.8.0 and later retry an HSM-throttled operation up to 3 times with exponential
//!   back-off before answering, mode `standard` by default, `off` possible (AWS "Retry commands
//!   for PKCS #11 library", checked 2026-12-04; the back-off base is not published: an
//!   ASSUMPTION). SDK 3 reports a busy HSM as `CKR_OPERATION_ACTIVE` (AWS "HSM throttling").
//! - Google Cloud KMS PKCS#11 library (kmsp11): every RPC failure, quota or permission, is
//!   returned as `CKR_DEVICE_ERROR` (kmsp11 `provider.cc`, per issue 20 item 8; its decrypt
//!   operations' source does the same, except `INVALID_ARGUMENT` -> `CKR_ENCRYPTED_DATA_INVALID`,
//!   which is not modelled).
//! - Thales Luna: Ed25519 uses `CKK_EC_EDWARDS` = `CKK_VENDOR_DEFINED + 0x12` and `CKM_EDDSA` =
//!   `CKM_VENDOR_DEFINED + 0xC03`, key generation `CKM_VENDOR_DEFINED + 0xC01` (Luna
//!   `cryptoki_v2.h`, as reproduced in public client code);
//!   connection codes `CKR_UNABLE_TO_CONNECT` 0x8000001F, `CKR_PARTITION_DISABLED` 0x80000020,
//!   `CKR_TIMEOUT` 0x80000024, `CKR_DEVICE_TIMEOUT` 0x8000002B, `CKR_AGAIN` 0x80000041 (issue 20
//!   item 8, from Luna's headers). Throttling as `CKR_AGAIN` is an ASSUMPTION (Thales's
//!   "System Operational and Error Messages" pages were searched for `CKR_AGAIN`, 2026-12-04:
//!   not found).
//! - YubiHSM 2: no `CKM_RSA_X_509`; RSA decryption is `CKM_RSA_PKCS` or OAEP only (yubihsm-shell
//!   `pkcs11/util_pkcs11.c`, per issue 20 item 3); sessions expire after 30 s idle (Yubico's
//!   Session concept page; issue 20 item 16).
//! - FIPS mode: Thales documents `CKM_RSA_PKCS` as "cannot decrypt / cannot encrypt / cannot
//!   wrap / cannot unwrap" in FIPS-approved configuration from firmware 7.7.3 (Luna 7 SDK,
//!   mechanism CKM_RSA_PKCS); issue 20 item 11 says CloudHSM FIPS clusters deprecated PKCS#1
//!   v1.5 decryption. The code a refused `*Init` returns, `CKR_MECHANISM_INVALID`, is an
//!   ASSUMPTION.

use cryptoki_sys::{
    CKK_EC_EDWARDS, CKK_VENDOR_DEFINED, CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA, CKM_VENDOR_DEFINED,
    CKR_DEVICE_ERROR, CKR_FUNCTION_FAILED, CK_KEY_TYPE, CK_MECHANISM_TYPE, CK_RV,
};

use crate::func::Func;

/// Luna's vendor-defined key type for Edwards-curve keys (`CKK_VENDOR_DEFINED + 0x12`).
pub const LUNA_CKK_EC_EDWARDS: CK_KEY_TYPE = CKK_VENDOR_DEFINED + 0x12;
/// Luna's vendor-defined EdDSA mechanism (`CKM_VENDOR_DEFINED + 0xC03`).
pub const LUNA_CKM_EDDSA: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED + 0xC03;
/// Luna's vendor-defined Edwards key-pair generation (`CKM_VENDOR_DEFINED + 0xC01`).
pub const LUNA_CKM_EC_EDWARDS_KEY_PAIR_GEN: CK_MECHANISM_TYPE = CKM_VENDOR_DEFINED + 0xC01;
/// Luna: the client cannot reach the appliance.
pub const CKR_UNABLE_TO_CONNECT: CK_RV = 0x8000_001F;
/// Luna: the partition is disabled.
pub const CKR_PARTITION_DISABLED: CK_RV = 0x8000_0020;
/// Luna: the command timed out.
pub const CKR_TIMEOUT: CK_RV = 0x8000_0024;
/// Luna: the device timed out.
pub const CKR_DEVICE_TIMEOUT: CK_RV = 0x8000_002B;
/// Luna: try again (busy).
pub const CKR_AGAIN: CK_RV = 0x8000_0041;

/// Vendor return codes accepted by name in `rv` fields (besides every standard `CKR_*`).
pub const VENDOR_RV_NAMES: &[(&str, CK_RV)] = &[
    ("CKR_UNABLE_TO_CONNECT", CKR_UNABLE_TO_CONNECT),
    ("CKR_PARTITION_DISABLED", CKR_PARTITION_DISABLED),
    ("CKR_TIMEOUT", CKR_TIMEOUT),
    ("CKR_DEVICE_TIMEOUT", CKR_DEVICE_TIMEOUT),
    ("CKR_AGAIN", CKR_AGAIN),
];

/// A vendor library whose error conventions the simulator follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// No vendor quirks: SoftHSM2 seen through a network.
    Generic,
    /// AWS CloudHSM, Client SDK 5.
    CloudHsmSdk5,
    /// AWS CloudHSM, Client SDK 3 (busy is `CKR_OPERATION_ACTIVE`).
    CloudHsmSdk3,
    /// Google Cloud KMS PKCS#11 library.
    Kmsp11,
    /// Thales Luna Network HSM 7.
    Luna,
    /// Yubico YubiHSM 2.
    YubiHsm,
}

/// Names accepted by `"behaviour"` / `"behaviour": {"preset": ...}`.
pub const PRESETS: &[&str] = &[
    "generic",
    "cloudhsm-sdk5",
    "cloudhsm-sdk3",
    "kmsp11",
    "luna",
    "yubihsm",
];

/// Default first back-off of a retrying client (ms). ASSUMPTION: AWS documents exponential
/// back-off for SDK 5.8+ retries, not its base.
pub const DEFAULT_RETRY_BACKOFF_MS: u32 = 10;
/// YubiHSM 2 sessions expire after 30 s without a command (Yubico, YubiHSM 2 "Session" concept
/// page, https://developers.yubico.com/YubiHSM2/Concepts/Session.html, as cited by the yubihsm
/// crate's `SESSION_INACTIVITY_TIMEOUT`).
pub const YUBIHSM_SESSION_TIMEOUT_MS: u64 = 30_000;

/// Largest `client_retries`: more would hide a device that is simply down.
pub const MAX_CLIENT_RETRIES: u32 = 10;

/// Largest `max_sessions`: CloudHSM's documented cap is 1,024; this only catches typos.
pub const MAX_SESSIONS_LIMIT: u32 = 1 << 20;

/// The vendor behaviour in force: a preset plus individual switches (a config may override any).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Behaviour {
    /// Whose error conventions apply (throttle codes, kmsp11's blanket `CKR_DEVICE_ERROR`).
    pub vendor: Vendor,
    /// `C_OpenSession` without `CKF_RW_SESSION` fails with `CKR_FUNCTION_FAILED`.
    pub rw_sessions_only: bool,
    /// Object handles belong to the session that found or made the object (see `sim`).
    pub session_handles: bool,
    /// Open sessions allowed per application (this process); past it `CKR_SESSION_COUNT`.
    pub max_sessions: Option<u32>,
    /// No `CKM_RSA_X_509`: omitted from `C_GetMechanismList`, refused by every `*Init`.
    pub no_rsa_x509: bool,
    /// Ed25519 keys and EdDSA are reported with Luna's vendor constants (and only those work).
    pub vendor_eddsa: bool,
    /// Public-key objects are invisible (private-key-only imports).
    pub hide_public_keys: bool,
    /// `CKA_ID` reads as empty and searches by a non-empty `CKA_ID` find nothing.
    pub hide_cka_id: bool,
    /// `CKA_EC_POINT` is readable from EC / Edwards private-key objects.
    pub ec_point_on_private: bool,
    /// `CKA_PUBLIC_KEY_INFO` (DER SubjectPublicKeyInfo) is readable from private-key objects.
    pub public_key_info_on_private: bool,
    /// FIPS mode: `CKM_RSA_PKCS` may sign but not decrypt or encrypt (Luna FIPS 140-3
    /// partitions; CloudHSM FIPS clusters deprecated PKCS#1 v1.5 decryption).
    pub fips_no_pkcs1_decrypt: bool,
    /// The device drops every session (and the login) after this long without a call, in
    /// milliseconds (0 = never). An `idle_drop` fault overrides it.
    pub idle_timeout_ms: u64,
    /// Times the vendor's client library retries a throttled call itself before answering.
    pub client_retries: u32,
    /// First back-off of those retries, milliseconds; it doubles on each retry.
    pub retry_backoff_ms: u32,
}

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour::preset("generic").expect("generic preset")
    }
}

impl Behaviour {
    /// A named preset, or None.
    pub fn preset(name: &str) -> Option<Behaviour> {
        let generic = Behaviour {
            vendor: Vendor::Generic,
            rw_sessions_only: false,
            session_handles: false,
            max_sessions: None,
            no_rsa_x509: false,
            vendor_eddsa: false,
            hide_public_keys: false,
            hide_cka_id: false,
            ec_point_on_private: false,
            public_key_info_on_private: false,
            fips_no_pkcs1_decrypt: false,
            idle_timeout_ms: 0,
            client_retries: 0,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
        };
        Some(match name {
            "generic" => generic,
            "cloudhsm-sdk5" => Behaviour {
                vendor: Vendor::CloudHsmSdk5,
                rw_sessions_only: true,
                session_handles: true,
                max_sessions: Some(1024),
                client_retries: 3,
                ..generic
            },
            "cloudhsm-sdk3" => Behaviour {
                vendor: Vendor::CloudHsmSdk3,
                ..generic
            },
            "kmsp11" => Behaviour {
                vendor: Vendor::Kmsp11,
                ..generic
            },
            "luna" => Behaviour {
                vendor: Vendor::Luna,
                vendor_eddsa: true,
                ..generic
            },
            "yubihsm" => Behaviour {
                vendor: Vendor::YubiHsm,
                no_rsa_x509: true,
                idle_timeout_ms: YUBIHSM_SESSION_TIMEOUT_MS,
                ..generic
            },
            _ => return None,
        })
    }

    /// The code a throttled (busy / over quota) call gets from this vendor's library.
    pub fn throttle_rv(&self, func: Func) -> CK_RV {
        match self.vendor {
            // ki-pkcs11-15: attribute reads report throttling as a device error.
            Vendor::CloudHsmSdk5 if func == Func::GetAttributeValue => CKR_DEVICE_ERROR,
            Vendor::CloudHsmSdk5 | Vendor::Generic | Vendor::YubiHsm => CKR_FUNCTION_FAILED,
            Vendor::Kmsp11 => CKR_DEVICE_ERROR,
            Vendor::Luna => CKR_AGAIN, // ASSUMPTION (see the module header)
            Vendor::CloudHsmSdk3 => cryptoki_sys::CKR_OPERATION_ACTIVE,
        }
    }

    /// The vendor's idle timeout, if it has one.
    pub fn idle_timeout(&self) -> Option<std::time::Duration> {
        (self.idle_timeout_ms > 0).then(|| std::time::Duration::from_millis(self.idle_timeout_ms))
    }

    /// The back-off before retry number `k` (0-based) of a retrying client: base x 2^k.
    pub fn retry_backoff(&self, k: u32) -> std::time::Duration {
        std::time::Duration::from_millis(self.retry_backoff_ms as u64) * (1u32 << k.min(16))
    }

    /// The code the application sees for a simulated device failure `rv` (an `error` fault, a
    /// hang's `then_rv`, a throttle): kmsp11 turns every RPC failure into `CKR_DEVICE_ERROR`.
    pub fn fault_rv(&self, rv: CK_RV) -> CK_RV {
        match self.vendor {
            Vendor::Kmsp11 => CKR_DEVICE_ERROR,
            _ => rv,
        }
    }

    /// A mechanism as the application names it -> as the real module (SoftHSM2) names it, or
    /// None if this vendor does not offer it.
    pub fn mechanism_in(&self, m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_TYPE> {
        if self.no_rsa_x509 && m == cryptoki_sys::CKM_RSA_X_509 {
            return None;
        }
        if self.vendor_eddsa {
            match m {
                LUNA_CKM_EDDSA => return Some(CKM_EDDSA),
                LUNA_CKM_EC_EDWARDS_KEY_PAIR_GEN => return Some(CKM_EC_EDWARDS_KEY_PAIR_GEN),
                CKM_EDDSA | CKM_EC_EDWARDS_KEY_PAIR_GEN => return None,
                _ => {}
            }
        }
        Some(m)
    }

    /// Does this vendor refuse `mech` for the operation `func` starts (mechanism known)?
    pub fn refuses(&self, func: Func, mech: CK_MECHANISM_TYPE) -> bool {
        self.fips_no_pkcs1_decrypt
            && mech == cryptoki_sys::CKM_RSA_PKCS
            && matches!(func, Func::DecryptInit | Func::EncryptInit)
    }

    /// Mechanism flags this vendor clears in `C_GetMechanismInfo` for `mech`.
    pub fn hidden_flags(&self, mech: CK_MECHANISM_TYPE) -> cryptoki_sys::CK_FLAGS {
        if self.fips_no_pkcs1_decrypt && mech == cryptoki_sys::CKM_RSA_PKCS {
            cryptoki_sys::CKF_DECRYPT
                | cryptoki_sys::CKF_ENCRYPT
                | cryptoki_sys::CKF_WRAP
                | cryptoki_sys::CKF_UNWRAP
        } else {
            0
        }
    }

    /// A mechanism as the real module names it -> as this vendor reports it (None: hidden).
    pub fn mechanism_out(&self, m: CK_MECHANISM_TYPE) -> Option<CK_MECHANISM_TYPE> {
        if self.no_rsa_x509 && m == cryptoki_sys::CKM_RSA_X_509 {
            return None;
        }
        if self.vendor_eddsa {
            match m {
                CKM_EDDSA => return Some(LUNA_CKM_EDDSA),
                CKM_EC_EDWARDS_KEY_PAIR_GEN => return Some(LUNA_CKM_EC_EDWARDS_KEY_PAIR_GEN),
                _ => {}
            }
        }
        Some(m)
    }

    /// A key type in a template the application passed -> for the real module. A standard
    /// `CKK_EC_EDWARDS` under Luna matches nothing (Luna knows only its vendor constant), so it
    /// becomes a value no object has.
    pub fn key_type_in(&self, k: CK_KEY_TYPE) -> CK_KEY_TYPE {
        if self.vendor_eddsa {
            if k == LUNA_CKK_EC_EDWARDS {
                return CKK_EC_EDWARDS;
            }
            if k == CKK_EC_EDWARDS {
                return NO_SUCH_KEY_TYPE;
            }
        }
        k
    }

    /// A key type the real module reported -> as this vendor reports it.
    pub fn key_type_out(&self, k: CK_KEY_TYPE) -> CK_KEY_TYPE {
        if self.vendor_eddsa && k == CKK_EC_EDWARDS {
            LUNA_CKK_EC_EDWARDS
        } else {
            k
        }
    }

    /// Does this behaviour hide or rename any mechanism?
    pub fn touches_mechanisms(&self) -> bool {
        self.no_rsa_x509 || self.vendor_eddsa
    }

    /// Does this behaviour rewrite anything in attribute templates or results?
    pub fn touches_attributes(&self) -> bool {
        self.vendor_eddsa
            || self.hide_cka_id
            || self.hide_public_keys
            || self.ec_point_on_private
            || self.public_key_info_on_private
    }
}

/// A key type no real object has: a search for it finds nothing.
pub const NO_SUCH_KEY_TYPE: CK_KEY_TYPE = CKK_VENDOR_DEFINED | 0x7FFF_FFFE;

/// What an operation's key is, for its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyClass {
    /// RSA with this modulus size in bits.
    Rsa(u32),
    /// A prime curve with this field size in bits (256, 384, 521).
    Ec(u32),
    /// Ed25519 / Ed448.
    Edwards,
    /// Anything else (symmetric keys...): not scaled.
    Other,
}

/// DER of the named-curve OIDs in `CKA_EC_PARAMS`.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521_PARAMS: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

impl KeyClass {
    /// From `CKA_KEY_TYPE` and, for RSA, the modulus length in bytes, for EC the
    /// `CKA_EC_PARAMS` DER.
    pub fn classify(key_type: CK_KEY_TYPE, modulus_len: usize, ec_params: &[u8]) -> KeyClass {
        match key_type {
            cryptoki_sys::CKK_RSA => KeyClass::Rsa((modulus_len * 8) as u32),
            cryptoki_sys::CKK_EC => match ec_params {
                p if p == P256_PARAMS => KeyClass::Ec(256),
                p if p == P384_PARAMS => KeyClass::Ec(384),
                p if p == P521_PARAMS => KeyClass::Ec(521),
                _ => KeyClass::Other,
            },
            CKK_EC_EDWARDS => KeyClass::Edwards,
            _ => KeyClass::Other,
        }
    }

    /// The name used in `latency.key_sizes` ("RSA-3072", "P-384", "Ed25519").
    pub fn name(&self) -> Option<String> {
        match self {
            KeyClass::Rsa(bits) => Some(format!("RSA-{bits}")),
            KeyClass::Ec(bits) => Some(format!("P-{bits}")),
            KeyClass::Edwards => Some("Ed25519".into()),
            KeyClass::Other => None,
        }
    }

    /// Default cost relative to the profile's reference key (RSA-2048, P-256): bits^exponent.
    /// With exponent 3 (schoolbook modular arithmetic: quadratic multiplication times a
    /// linear-length exponent or scalar) RSA-3072 costs 3.4x, RSA-4096 8x, P-384 3.4x, P-521
    /// 8.4x. That law is an ASSUMPTION: real HSMs have per-curve firmware, and vendors rarely
    /// publish per-size figures; override with `latency.key_sizes`.
    pub fn default_cost(&self, exponent: f64) -> f64 {
        match self {
            KeyClass::Rsa(bits) => keycore_hsmprofiles::rsa_size_cost(*bits, exponent),
            KeyClass::Ec(bits) => keycore_hsmprofiles::ec_size_cost(*bits, exponent),
            _ => 1.0,
        }
    }
}

/// Minimal DER writer for the SubjectPublicKeyInfo built from a private key's public parts.
mod der {
    pub fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = body.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(body);
        out
    }

    /// A positive INTEGER from big-endian magnitude bytes.
    pub fn uint(bytes: &[u8]) -> Vec<u8> {
        let trimmed: &[u8] = {
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            &bytes[skip.min(bytes.len().saturating_sub(1))..]
        };
        let mut body = Vec::with_capacity(trimmed.len() + 1);
        if trimmed.first().is_some_and(|b| b & 0x80 != 0) {
            body.push(0);
        }
        body.extend_from_slice(trimmed);
        tlv(0x02, &body)
    }

    pub fn bit_string(bytes: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8];
        body.extend_from_slice(bytes);
        tlv(0x03, &body)
    }

    pub fn seq(parts: &[&[u8]]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    /// The content of a DER OCTET STRING (CKA_EC_POINT is one), or the input if it is not one.
    pub fn unwrap_octet_string(v: &[u8]) -> &[u8] {
        if v.len() < 2 || v[0] != 0x04 {
            return v;
        }
        let (len, hdr) = if v[1] < 0x80 {
            (v[1] as usize, 2)
        } else {
            let n = (v[1] & 0x7f) as usize;
            if n == 0 || n > 4 || v.len() < 2 + n {
                return v;
            }
            let len = v[2..2 + n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | *b as usize);
            (len, 2 + n)
        };
        if hdr + len == v.len() {
            &v[hdr..]
        } else {
            v
        }
    }
}

/// DER `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// DER `rsaEncryption` (1.2.840.113549.1.1.1).
const OID_RSA: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];
/// DER `id-Ed25519` (1.3.101.112).
const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];

/// SubjectPublicKeyInfo of an EC key from `CKA_EC_PARAMS` and `CKA_EC_POINT` (the point is a
/// DER OCTET STRING in PKCS#11; a raw point is accepted too).
pub fn ec_spki(ec_params: &[u8], ec_point: &[u8]) -> Vec<u8> {
    let point = der::unwrap_octet_string(ec_point);
    der::seq(&[
        &der::seq(&[OID_EC_PUBLIC_KEY, ec_params]),
        &der::bit_string(point),
    ])
}

/// SubjectPublicKeyInfo of an Ed25519 key from its `CKA_EC_POINT`.
pub fn ed25519_spki(ec_point: &[u8]) -> Vec<u8> {
    let point = der::unwrap_octet_string(ec_point);
    der::seq(&[&der::seq(&[OID_ED25519]), &der::bit_string(point)])
}

/// SubjectPublicKeyInfo of an RSA key from `CKA_MODULUS` and `CKA_PUBLIC_EXPONENT`.
pub fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let key = der::seq(&[&der::uint(modulus), &der::uint(exponent)]);
    der::seq(&[&der::seq(&[OID_RSA, &[0x05, 0x00]]), &der::bit_string(&key)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_set_their_documented_switches() {
        let c = Behaviour::preset("cloudhsm-sdk5").unwrap();
        assert!(c.rw_sessions_only && c.session_handles);
        assert_eq!(c.max_sessions, Some(1024));
        assert_eq!(c.throttle_rv(Func::Sign), CKR_FUNCTION_FAILED);
        assert_eq!(c.throttle_rv(Func::GetAttributeValue), CKR_DEVICE_ERROR);
        assert_eq!(c.client_retries, 3);
        assert_eq!(
            c.retry_backoff(2),
            std::time::Duration::from_millis(4 * DEFAULT_RETRY_BACKOFF_MS as u64)
        );
        let c3 = Behaviour::preset("cloudhsm-sdk3").unwrap();
        assert_eq!(
            c3.throttle_rv(Func::Sign),
            cryptoki_sys::CKR_OPERATION_ACTIVE
        );
        assert!(!c3.rw_sessions_only && c3.client_retries == 0);
        let k = Behaviour::preset("kmsp11").unwrap();
        assert_eq!(k.fault_rv(CKR_FUNCTION_FAILED), CKR_DEVICE_ERROR);
        assert_eq!(k.throttle_rv(Func::Sign), CKR_DEVICE_ERROR);
        let y = Behaviour::preset("yubihsm").unwrap();
        assert_eq!(y.idle_timeout(), Some(std::time::Duration::from_secs(30)));
        assert_eq!(Behaviour::default().idle_timeout(), None);
        assert_eq!(y.mechanism_in(cryptoki_sys::CKM_RSA_X_509), None);
        assert_eq!(y.mechanism_out(cryptoki_sys::CKM_RSA_X_509), None);
        assert_eq!(
            y.mechanism_in(cryptoki_sys::CKM_RSA_PKCS),
            Some(cryptoki_sys::CKM_RSA_PKCS)
        );
        for p in PRESETS {
            assert!(Behaviour::preset(p).is_some(), "{p}");
        }
        assert!(Behaviour::preset("nope").is_none());
    }

    #[test]
    fn luna_constants_translate_both_ways_and_the_standard_ones_vanish() {
        let l = Behaviour::preset("luna").unwrap();
        assert_eq!(LUNA_CKK_EC_EDWARDS, 0x8000_0012);
        assert_eq!(LUNA_CKM_EDDSA, 0x8000_0C03);
        assert_eq!(l.mechanism_in(LUNA_CKM_EDDSA), Some(CKM_EDDSA));
        assert_eq!(l.mechanism_in(CKM_EDDSA), None);
        assert_eq!(l.mechanism_out(CKM_EDDSA), Some(LUNA_CKM_EDDSA));
        assert_eq!(l.key_type_in(LUNA_CKK_EC_EDWARDS), CKK_EC_EDWARDS);
        assert_eq!(l.key_type_in(CKK_EC_EDWARDS), NO_SUCH_KEY_TYPE);
        assert_eq!(l.key_type_out(CKK_EC_EDWARDS), LUNA_CKK_EC_EDWARDS);
        assert_eq!(l.key_type_out(cryptoki_sys::CKK_EC), cryptoki_sys::CKK_EC);
        let g = Behaviour::default();
        assert_eq!(g.mechanism_in(CKM_EDDSA), Some(CKM_EDDSA));
        assert_eq!(g.key_type_out(CKK_EC_EDWARDS), CKK_EC_EDWARDS);
    }

    #[test]
    fn key_classes_and_default_costs() {
        let rsa = |bytes| KeyClass::classify(cryptoki_sys::CKK_RSA, bytes, &[]);
        assert_eq!(rsa(256), KeyClass::Rsa(2048));
        assert_eq!(rsa(512).name().unwrap(), "RSA-4096");
        assert!((rsa(256).default_cost(3.0) - 1.0).abs() < 1e-9);
        assert!((rsa(384).default_cost(3.0) - 3.375).abs() < 1e-9);
        assert!((rsa(512).default_cost(3.0) - 8.0).abs() < 1e-9);
        let ec = |p| KeyClass::classify(cryptoki_sys::CKK_EC, 0, p);
        assert_eq!(ec(P256_PARAMS), KeyClass::Ec(256));
        assert_eq!(ec(P384_PARAMS).name().unwrap(), "P-384");
        assert!(ec(P384_PARAMS).default_cost(3.0) > ec(P256_PARAMS).default_cost(3.0));
        assert_eq!(ec(&[1, 2]), KeyClass::Other);
        assert_eq!(
            KeyClass::classify(CKK_EC_EDWARDS, 0, &[]).default_cost(3.0),
            1.0
        );
    }

    #[test]
    fn spki_der_is_well_formed() {
        // P-256 point: 65 bytes, wrapped in an OCTET STRING as PKCS#11 stores it.
        let mut point = vec![0x04, 65, 0x04];
        point.extend([7u8; 64]);
        let spki = ec_spki(P256_PARAMS, &point);
        // SEQUENCE(0x59) { SEQUENCE(0x13) {...}, BIT STRING(0x42) {0, 04 ...} }: the standard
        // 91-byte P-256 SubjectPublicKeyInfo.
        assert_eq!(spki.len(), 91);
        assert_eq!(&spki[..4], &[0x30, 0x59, 0x30, 0x13]);
        assert_eq!(&spki[23..27], &[0x03, 0x42, 0x00, 0x04]);
        let ed = ed25519_spki(&[
            0x04, 32, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
            22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32,
        ]);
        assert_eq!(ed.len(), 44);
        assert_eq!(
            &ed[..9],
            &[0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70]
        );
        // RSA with a high-bit modulus gets a leading zero; e = 65537.
        let spki = rsa_spki(&[0xff; 256], &[1, 0, 1]);
        assert_eq!(
            &spki[..4],
            &[0x30, 0x82, 0x01, 0x22],
            "RSA-2048 SPKI is 294 bytes"
        );
        assert_eq!(spki.len(), 294);
        assert_eq!(&spki[spki.len() - 5..], &[0x02, 0x03, 1, 0, 1]);
    }
}
