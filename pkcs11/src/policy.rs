//! The error policy: what a `CKR_*` from a key operation means for the
//! request, the session, the partition and the module, per vendor.
//!
//! Owns: [`Action`] (the five things keycore can do about an error), the
//! [`Vendor`] presets (detected from the module file name, overridable with
//! `x-vendor`), the per-URI overrides (`x-on-error`), and the vendor-defined
//! constants keycore must know (Thales Luna's connection codes and Ed25519
//! key type and mechanism).
//! Must not: call the token or keep state; `session.rs` and `dispatch.rs`
//! act on the answer, `recovery.rs` does the control-path work.
//!
//! Why per vendor: the same code means different things on different
//! products. `CKR_DEVICE_ERROR` is a lost connection on a network HSM but
//! every failed RPC (quota, permission) on Google's kmsp11; AWS CloudHSM SDK 5
//! reports throttling as `CKR_FUNCTION_FAILED`; Luna has vendor codes for a
//! lost HA member. See docs/pkcs11/README.md "Failure policy".

use cryptoki::error::RvError;

/// Standard `CKR_*` values the policy names (PKCS#11 v2.40 pkcs11t.h).
/// Local so the table does not need cryptoki-sys; `codes_round_trip`
/// checks them against cryptoki's own parser.
#[allow(missing_docs)]
pub mod ckr {
    pub const CKR_GENERAL_ERROR: u64 = 0x05;
    pub const CKR_FUNCTION_FAILED: u64 = 0x06;
    pub const CKR_SLOT_ID_INVALID: u64 = 0x03;
    #[cfg(test)]
    pub const CKR_DATA_LEN_RANGE: u64 = 0x21;
    pub const CKR_DEVICE_ERROR: u64 = 0x30;
    pub const CKR_DEVICE_MEMORY: u64 = 0x31;
    pub const CKR_DEVICE_REMOVED: u64 = 0x32;
    pub const CKR_KEY_HANDLE_INVALID: u64 = 0x60;
    pub const CKR_MECHANISM_INVALID: u64 = 0x70;
    pub const CKR_OBJECT_HANDLE_INVALID: u64 = 0x82;
    pub const CKR_OPERATION_ACTIVE: u64 = 0x90;
    pub const CKR_SESSION_CLOSED: u64 = 0xB0;
    pub const CKR_SESSION_HANDLE_INVALID: u64 = 0xB3;
    pub const CKR_TOKEN_NOT_PRESENT: u64 = 0xE0;
    pub const CKR_TOKEN_NOT_RECOGNIZED: u64 = 0xE1;
    pub const CKR_USER_NOT_LOGGED_IN: u64 = 0x101;
    #[cfg(test)]
    pub const CKR_BUFFER_TOO_SMALL: u64 = 0x150;
    pub const CKR_CRYPTOKI_NOT_INITIALIZED: u64 = 0x190;
}

/// Thales Luna: the client lost its connection to the HSM.
pub const LUNA_CKR_UNABLE_TO_CONNECT: u64 = 0x8000_001F;
/// Thales Luna: the partition is disabled (e.g. every HA member lost).
pub const LUNA_CKR_PARTITION_DISABLED: u64 = 0x8000_0020;
/// Thales Luna: a call timed out.
pub const LUNA_CKR_TIMEOUT: u64 = 0x8000_0024;
/// Thales Luna: the device timed out.
pub const LUNA_CKR_DEVICE_TIMEOUT: u64 = 0x8000_002B;
/// Thales Luna: busy, try again.
pub const LUNA_CKR_AGAIN: u64 = 0x8000_0041;
/// Thales Luna's vendor-defined `CKK_EC_EDWARDS` (`CKK_VENDOR_DEFINED + 0x12`),
/// used by Luna firmware for Ed25519 keys instead of the standard 0x40.
pub const LUNA_CKK_EC_EDWARDS: u64 = 0x8000_0012;
/// Thales Luna's vendor-defined `CKM_EDDSA` (`CKM_VENDOR_DEFINED + 0xC03`).
pub const LUNA_CKM_EDDSA: u64 = 0x8000_0C03;

/// What to do about an error returned by a key operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// The request fails; the session and partition are fine (bad input,
    /// refused mechanism, key not allowed to sign). Another HA member may
    /// still answer it.
    Fail,
    /// The device is busy or throttling: back off briefly and retry (on any
    /// session). Not evidence that anything is down.
    Busy,
    /// The session is broken: retry on another session, reopen this one in
    /// the background. Evidence (one strike) against the partition.
    Session,
    /// The key's object handle is not valid on this session: find it again
    /// on this session and retry.
    Handle,
    /// The token logged the application out: log in once, again, on the
    /// control path, and requeue the request.
    Login,
    /// The module lost the device: re-initialise the module (control path,
    /// rate-limited) and requeue the request until its deadline.
    Device,
}

impl Action {
    /// Name used in `x-on-error`, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Action::Fail => "fail",
            Action::Busy => "busy",
            Action::Session => "session",
            Action::Handle => "handle",
            Action::Login => "login",
            Action::Device => "device",
        }
    }

    /// Every action, in metric order.
    pub const ALL: [Action; 6] = [
        Action::Fail,
        Action::Busy,
        Action::Session,
        Action::Handle,
        Action::Login,
        Action::Device,
    ];

    fn parse(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// A product whose documented error behaviour keycore follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// Standard PKCS#11 meanings only.
    Generic,
    /// SoftHSM2 (tests, development): `CKR_GENERAL_ERROR` when its token
    /// directory vanishes.
    SoftHsm,
    /// AWS CloudHSM Client SDK 5: read-write sessions only, session-specific
    /// object handles, throttling as `CKR_FUNCTION_FAILED` (SDK 5) or
    /// `CKR_OPERATION_ACTIVE` (SDK 3), a throttled `C_GetAttributeValue` as
    /// `CKR_DEVICE_ERROR`, at most 1,024 sessions per application.
    CloudHsm,
    /// Thales Luna (also IBM Cloud HSM, Azure Dedicated HSM): vendor
    /// connection codes; re-initialise after losing every HA member.
    Luna,
    /// Google Cloud KMS's kmsp11: every failed RPC is `CKR_DEVICE_ERROR`.
    Kmsp11,
    /// Yubico YubiHSM 2: no `CKM_RSA_X_509`.
    YubiHsm,
    /// Entrust nShield.
    NShield,
}

impl Vendor {
    /// Name used in `x-vendor` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Vendor::Generic => "generic",
            Vendor::SoftHsm => "softhsm",
            Vendor::CloudHsm => "cloudhsm",
            Vendor::Luna => "luna",
            Vendor::Kmsp11 => "kmsp11",
            Vendor::YubiHsm => "yubihsm",
            Vendor::NShield => "nshield",
        }
    }

    /// Parse an `x-vendor` value.
    pub fn parse(s: &str) -> Option<Vendor> {
        [
            Vendor::Generic,
            Vendor::SoftHsm,
            Vendor::CloudHsm,
            Vendor::Luna,
            Vendor::Kmsp11,
            Vendor::YubiHsm,
            Vendor::NShield,
        ]
        .into_iter()
        .find(|v| v.name() == s)
    }

    /// The vendor a module file belongs to, from the library names the
    /// vendors ship (`libcloudhsm_pkcs11.so`, `libCryptoki2_64.so`,
    /// `libkmsp11.so`, `yubihsm_pkcs11.so`, `libcknfast.so`,
    /// `libsofthsm2.so`). Unknown names are `Generic`; `x-vendor` overrides.
    pub fn detect(file_name: &str) -> Vendor {
        let f = file_name.to_ascii_lowercase();
        if f.contains("cloudhsm") {
            Vendor::CloudHsm
        } else if f.contains("cryptoki2") || f.contains("luna") {
            Vendor::Luna
        } else if f.contains("kmsp11") {
            Vendor::Kmsp11
        } else if f.contains("yubihsm") {
            Vendor::YubiHsm
        } else if f.contains("cknfast") {
            Vendor::NShield
        } else if f.contains("softhsm") {
            Vendor::SoftHsm
        } else {
            Vendor::Generic
        }
    }

    /// Whether sessions must be opened read-write (CloudHSM SDK 5 refuses
    /// read-only ones with `CKR_FUNCTION_FAILED`, AWS known issue
    /// ki-pkcs11-13). keycore opens read-write sessions on every token and
    /// falls back to read-only only where the token is write-protected, so
    /// this is informational (start-up log).
    pub fn needs_rw_sessions(self) -> bool {
        self == Vendor::CloudHsm
    }

    /// Most sessions one application may hold on the token, where the vendor
    /// documents it (CloudHSM: 1,024 per application).
    pub fn session_limit(self) -> Option<u32> {
        match self {
            Vendor::CloudHsm => Some(1024),
            _ => None,
        }
    }
}

/// The standard meaning of a return value.
fn standard(rv: u64) -> Action {
    use ckr as s;
    match rv {
        s::CKR_SESSION_HANDLE_INVALID
        | s::CKR_SESSION_CLOSED
        // An operation left active on the session (a crashed call, a
        // vendor that did not end it) fails every later *Init on it.
        | s::CKR_OPERATION_ACTIVE
        // One device error on one session is that session's problem;
        // the partition goes out only on evidence (recovery.rs).
        | s::CKR_DEVICE_ERROR
        | s::CKR_GENERAL_ERROR
        | s::CKR_DEVICE_MEMORY => Action::Session,
        s::CKR_OBJECT_HANDLE_INVALID | s::CKR_KEY_HANDLE_INVALID => Action::Handle,
        s::CKR_USER_NOT_LOGGED_IN => Action::Login,
        s::CKR_DEVICE_REMOVED
        | s::CKR_TOKEN_NOT_PRESENT
        | s::CKR_TOKEN_NOT_RECOGNIZED
        | s::CKR_CRYPTOKI_NOT_INITIALIZED
        | s::CKR_SLOT_ID_INVALID => Action::Device,
        _ => Action::Fail,
    }
}

/// The error policy of one partition: its vendor's preset plus the URI's
/// `x-on-error` overrides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// The vendor preset.
    pub vendor: Vendor,
    /// `x-on-error` overrides, checked first.
    pub overrides: Vec<(u64, Action)>,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            vendor: Vendor::Generic,
            overrides: Vec::new(),
        }
    }
}

impl ErrorPolicy {
    /// The policy for `vendor` with no overrides.
    #[cfg(test)]
    pub fn new(vendor: Vendor) -> Self {
        ErrorPolicy {
            vendor,
            overrides: Vec::new(),
        }
    }

    /// What to do about `rv` returned by a key operation (sign, decrypt,
    /// their `*Init`, or the handle lookup before them).
    pub fn classify(&self, rv: u64) -> Action {
        use ckr as s;
        if let Some(&(_, a)) = self.overrides.iter().find(|(r, _)| *r == rv) {
            return a;
        }
        match (self.vendor, rv) {
            // kmsp11 maps every failed RPC (quota exhausted, permission
            // denied, deadline) to CKR_DEVICE_ERROR: nothing local is broken,
            // re-initialising the module would only add load.
            (Vendor::Kmsp11, s::CKR_DEVICE_ERROR) => Action::Busy,
            // CloudHSM SDK 5 throttling (the SDK already retried 3 times
            // from 5.8 on); SDK 3 reported it as CKR_OPERATION_ACTIVE.
            (Vendor::CloudHsm, s::CKR_FUNCTION_FAILED) => Action::Busy,
            (Vendor::CloudHsm, s::CKR_OPERATION_ACTIVE) => Action::Busy,
            (Vendor::Luna, LUNA_CKR_AGAIN) => Action::Busy,
            (Vendor::Luna, LUNA_CKR_TIMEOUT | LUNA_CKR_DEVICE_TIMEOUT) => Action::Session,
            // Thales: after losing every HA member, C_Finalize + C_Initialize.
            (Vendor::Luna, LUNA_CKR_UNABLE_TO_CONNECT | LUNA_CKR_PARTITION_DISABLED) => {
                Action::Device
            }
            _ => standard(rv),
        }
    }

    /// What to do about `rv` returned while looking a key up
    /// (`C_FindObjects*`, `C_GetAttributeValue`). CloudHSM returns
    /// `CKR_DEVICE_ERROR` for a throttled `C_GetAttributeValue` (AWS known
    /// issue ki-pkcs11-15): that is not "key gone".
    pub fn classify_lookup(&self, rv: u64) -> Action {
        if self.vendor == Vendor::CloudHsm && rv == ckr::CKR_DEVICE_ERROR {
            return Action::Busy;
        }
        self.classify(rv)
    }

    /// Parse an `x-on-error` value: comma-separated `CODE:action`, where CODE
    /// is a `CKR_*` name keycore knows or a number (`0x80000041`), and action
    /// one of `fail`, `busy`, `session`, `handle`, `login`, `device`.
    pub fn parse_overrides(s: &str) -> Result<Vec<(u64, Action)>, OverrideError> {
        let mut out = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (code, action) = item
                .split_once(':')
                .ok_or_else(|| OverrideError::NotAPair(item.to_string()))?;
            let rv = rv_from_name(code.trim())
                .ok_or_else(|| OverrideError::UnknownCode(code.to_string()))?;
            let a = Action::parse(action.trim())
                .ok_or_else(|| OverrideError::UnknownAction(action.to_string()))?;
            if out.iter().any(|(r, _)| *r == rv) {
                return Err(OverrideError::Duplicate(code.to_string()));
            }
            out.push((rv, a));
        }
        if out.len() > MAX_OVERRIDES {
            return Err(OverrideError::TooMany);
        }
        Ok(out)
    }
}

/// Most `x-on-error` entries one URI may carry.
const MAX_OVERRIDES: usize = 64;

/// Why an `x-on-error` value was refused; names the entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    /// An entry without `:`.
    #[error("{0:?}: expected CODE:action, e.g. CKR_DEVICE_ERROR:busy")]
    NotAPair(String),
    /// A code that is neither a known `CKR_*` name nor a number.
    #[error("{0:?}: not a CKR_* name keycore knows nor a number like 0x80000041")]
    UnknownCode(String),
    /// An action keycore does not have.
    #[error("{0:?}: action must be one of {all}", all = Action::ALL.map(Action::name).join(", "))]
    UnknownAction(String),
    /// The same code twice.
    #[error("{0:?} given more than once")]
    Duplicate(String),
    /// More than [`MAX_OVERRIDES`] entries.
    #[error("more than {MAX_OVERRIDES} overrides")]
    TooMany,
}

/// The numeric value of a cryptoki error.
pub fn rv_code(rv: RvError) -> u64 {
    // cryptoki keeps the code of vendor errors; the standard ones map back
    // through the same table it parsed them with.
    match rv {
        RvError::VendorDefined(c) => c,
        other => NAMES
            .iter()
            .find(|(_, _, e)| *e == Some(other))
            .map(|(_, c, _)| *c)
            .unwrap_or_else(|| rv_code_slow(other)),
    }
}

/// Codes not in [`NAMES`]: cryptoki has no reverse table, so the standard
/// range is searched through its own forward one. Only reached for rare
/// codes, never on the path of a successful request.
fn rv_code_slow(rv: RvError) -> u64 {
    if let RvError::UnknownErrorCode(c) = rv {
        return c;
    }
    (0..0x400u64)
        .find(|&c| cryptoki::error::Rv::from(c) == cryptoki::error::Rv::Error(rv))
        .unwrap_or(ckr::CKR_GENERAL_ERROR)
}

/// `CKR_*` names accepted in `x-on-error`, with their values and cryptoki's
/// variant (for [`rv_code`]).
const NAMES: &[(&str, u64, Option<RvError>)] = &[
    ("CKR_FUNCTION_FAILED", 0x06, Some(RvError::FunctionFailed)),
    ("CKR_GENERAL_ERROR", 0x05, Some(RvError::GeneralError)),
    ("CKR_HOST_MEMORY", 0x02, Some(RvError::HostMemory)),
    ("CKR_ARGUMENTS_BAD", 0x07, Some(RvError::ArgumentsBad)),
    ("CKR_DATA_INVALID", 0x20, Some(RvError::DataInvalid)),
    ("CKR_DATA_LEN_RANGE", 0x21, Some(RvError::DataLenRange)),
    ("CKR_DEVICE_ERROR", 0x30, Some(RvError::DeviceError)),
    ("CKR_DEVICE_MEMORY", 0x31, Some(RvError::DeviceMemory)),
    ("CKR_DEVICE_REMOVED", 0x32, Some(RvError::DeviceRemoved)),
    (
        "CKR_ENCRYPTED_DATA_INVALID",
        0x40,
        Some(RvError::EncryptedDataInvalid),
    ),
    (
        "CKR_ENCRYPTED_DATA_LEN_RANGE",
        0x41,
        Some(RvError::EncryptedDataLenRange),
    ),
    (
        "CKR_FUNCTION_CANCELED",
        0x50,
        Some(RvError::FunctionCanceled),
    ),
    (
        "CKR_FUNCTION_NOT_SUPPORTED",
        0x54,
        Some(RvError::FunctionNotSupported),
    ),
    (
        "CKR_KEY_HANDLE_INVALID",
        0x60,
        Some(RvError::KeyHandleInvalid),
    ),
    (
        "CKR_KEY_TYPE_INCONSISTENT",
        0x63,
        Some(RvError::KeyTypeInconsistent),
    ),
    (
        "CKR_KEY_FUNCTION_NOT_PERMITTED",
        0x68,
        Some(RvError::KeyFunctionNotPermitted),
    ),
    (
        "CKR_MECHANISM_INVALID",
        0x70,
        Some(RvError::MechanismInvalid),
    ),
    (
        "CKR_MECHANISM_PARAM_INVALID",
        0x71,
        Some(RvError::MechanismParamInvalid),
    ),
    (
        "CKR_OBJECT_HANDLE_INVALID",
        0x82,
        Some(RvError::ObjectHandleInvalid),
    ),
    ("CKR_OPERATION_ACTIVE", 0x90, Some(RvError::OperationActive)),
    (
        "CKR_OPERATION_NOT_INITIALIZED",
        0x91,
        Some(RvError::OperationNotInitialized),
    ),
    ("CKR_PIN_INCORRECT", 0xA0, Some(RvError::PinIncorrect)),
    ("CKR_PIN_LOCKED", 0xA4, Some(RvError::PinLocked)),
    ("CKR_SESSION_CLOSED", 0xB0, Some(RvError::SessionClosed)),
    ("CKR_SESSION_COUNT", 0xB1, Some(RvError::SessionCount)),
    (
        "CKR_SESSION_HANDLE_INVALID",
        0xB3,
        Some(RvError::SessionHandleInvalid),
    ),
    (
        "CKR_SESSION_READ_ONLY",
        0xB5,
        Some(RvError::SessionReadOnly),
    ),
    ("CKR_SLOT_ID_INVALID", 0x03, Some(RvError::SlotIdInvalid)),
    (
        "CKR_TOKEN_NOT_PRESENT",
        0xE0,
        Some(RvError::TokenNotPresent),
    ),
    (
        "CKR_TOKEN_NOT_RECOGNIZED",
        0xE1,
        Some(RvError::TokenNotRecognized),
    ),
    (
        "CKR_TOKEN_WRITE_PROTECTED",
        0xE2,
        Some(RvError::TokenWriteProtected),
    ),
    (
        "CKR_USER_NOT_LOGGED_IN",
        0x101,
        Some(RvError::UserNotLoggedIn),
    ),
    (
        "CKR_USER_ALREADY_LOGGED_IN",
        0x100,
        Some(RvError::UserAlreadyLoggedIn),
    ),
    (
        "CKR_CRYPTOKI_NOT_INITIALIZED",
        0x190,
        Some(RvError::CryptokiNotInitialized),
    ),
    (
        "CKR_FUNCTION_REJECTED",
        0x200,
        Some(RvError::FunctionRejected),
    ),
    ("CKR_UNABLE_TO_CONNECT", LUNA_CKR_UNABLE_TO_CONNECT, None),
    ("CKR_PARTITION_DISABLED", LUNA_CKR_PARTITION_DISABLED, None),
    ("CKR_TIMEOUT", LUNA_CKR_TIMEOUT, None),
    ("CKR_DEVICE_TIMEOUT", LUNA_CKR_DEVICE_TIMEOUT, None),
    ("CKR_AGAIN", LUNA_CKR_AGAIN, None),
];

/// A `CKR_*` name from [`NAMES`] or a number (`0x30`, `48`).
pub fn rv_from_name(s: &str) -> Option<u64> {
    if let Some(&(_, c, _)) = NAMES.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(s)) {
        return Some(c);
    }
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok();
    }
    s.parse().ok()
}

/// The `CKR_*` name of `rv` when keycore knows it, else its hex value.
pub fn rv_name(rv: u64) -> String {
    NAMES
        .iter()
        .find(|(_, c, _)| *c == rv)
        .map(|(n, _, _)| n.to_string())
        .unwrap_or_else(|| format!("{rv:#x}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ckr as s;

    #[test]
    fn standard_meanings() {
        let p = ErrorPolicy::default();
        assert_eq!(p.classify(s::CKR_SESSION_HANDLE_INVALID), Action::Session);
        assert_eq!(p.classify(s::CKR_DEVICE_ERROR), Action::Session);
        assert_eq!(p.classify(s::CKR_OPERATION_ACTIVE), Action::Session);
        assert_eq!(p.classify(s::CKR_USER_NOT_LOGGED_IN), Action::Login);
        assert_eq!(p.classify(s::CKR_OBJECT_HANDLE_INVALID), Action::Handle);
        assert_eq!(p.classify(s::CKR_DEVICE_REMOVED), Action::Device);
        assert_eq!(p.classify(s::CKR_CRYPTOKI_NOT_INITIALIZED), Action::Device);
        assert_eq!(p.classify(s::CKR_DATA_LEN_RANGE), Action::Fail);
        assert_eq!(p.classify(s::CKR_MECHANISM_INVALID), Action::Fail);
        assert_eq!(p.classify(s::CKR_FUNCTION_FAILED), Action::Fail);
        assert_eq!(
            p.classify(LUNA_CKR_AGAIN),
            Action::Fail,
            "vendor code, no vendor"
        );
    }

    #[test]
    fn vendor_presets() {
        let k = ErrorPolicy::new(Vendor::Kmsp11);
        assert_eq!(k.classify(s::CKR_DEVICE_ERROR), Action::Busy);
        let c = ErrorPolicy::new(Vendor::CloudHsm);
        assert_eq!(c.classify(s::CKR_FUNCTION_FAILED), Action::Busy);
        assert_eq!(c.classify(s::CKR_OPERATION_ACTIVE), Action::Busy);
        assert_eq!(c.classify(s::CKR_DEVICE_ERROR), Action::Session);
        assert_eq!(c.classify_lookup(s::CKR_DEVICE_ERROR), Action::Busy);
        let l = ErrorPolicy::new(Vendor::Luna);
        assert_eq!(l.classify(LUNA_CKR_AGAIN), Action::Busy);
        assert_eq!(l.classify(LUNA_CKR_UNABLE_TO_CONNECT), Action::Device);
        assert_eq!(l.classify(LUNA_CKR_PARTITION_DISABLED), Action::Device);
        assert_eq!(l.classify(LUNA_CKR_TIMEOUT), Action::Session);
        assert_eq!(l.classify(LUNA_CKR_DEVICE_TIMEOUT), Action::Session);
    }

    #[test]
    fn detect_from_file_names() {
        assert_eq!(Vendor::detect("libcloudhsm_pkcs11.so"), Vendor::CloudHsm);
        assert_eq!(Vendor::detect("libCryptoki2_64.so"), Vendor::Luna);
        assert_eq!(Vendor::detect("libkmsp11.so"), Vendor::Kmsp11);
        assert_eq!(Vendor::detect("yubihsm_pkcs11.so"), Vendor::YubiHsm);
        assert_eq!(Vendor::detect("libcknfast.so"), Vendor::NShield);
        assert_eq!(Vendor::detect("libsofthsm2.so"), Vendor::SoftHsm);
        assert_eq!(Vendor::detect("libkeycore_hsmsim.so"), Vendor::Generic);
        for v in [
            "generic", "cloudhsm", "luna", "kmsp11", "yubihsm", "nshield", "softhsm",
        ] {
            assert_eq!(Vendor::parse(v).unwrap().name(), v);
        }
        assert!(Vendor::parse("thales").is_none());
    }

    #[test]
    fn overrides_parse_and_win() {
        let o = ErrorPolicy::parse_overrides(
            "CKR_DEVICE_ERROR:busy, 0x80000041:busy,ckr_function_failed:session",
        )
        .unwrap();
        assert_eq!(
            o,
            vec![
                (s::CKR_DEVICE_ERROR, Action::Busy),
                (LUNA_CKR_AGAIN, Action::Busy),
                (s::CKR_FUNCTION_FAILED, Action::Session)
            ]
        );
        let p = ErrorPolicy {
            vendor: Vendor::Generic,
            overrides: o,
        };
        assert_eq!(p.classify(s::CKR_DEVICE_ERROR), Action::Busy);
        assert_eq!(p.classify(s::CKR_FUNCTION_FAILED), Action::Session);
        for bad in [
            "CKR_DEVICE_ERROR",
            "CKR_NOPE:busy",
            "CKR_DEVICE_ERROR:explode",
            "CKR_DEVICE_ERROR:busy,CKR_DEVICE_ERROR:fail",
        ] {
            assert!(ErrorPolicy::parse_overrides(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_round_trip() {
        assert_eq!(rv_code(RvError::DeviceError), s::CKR_DEVICE_ERROR);
        assert_eq!(rv_code(RvError::UserNotLoggedIn), s::CKR_USER_NOT_LOGGED_IN);
        assert_eq!(
            rv_code(RvError::VendorDefined(LUNA_CKR_AGAIN)),
            LUNA_CKR_AGAIN
        );
        assert_eq!(rv_code(RvError::BufferTooSmall), s::CKR_BUFFER_TOO_SMALL);
        for (name, code, _) in NAMES {
            assert_eq!(rv_from_name(name), Some(*code), "{name}");
            assert_eq!(rv_name(*code), *name);
        }
        // The local constants agree with cryptoki's parser.
        use cryptoki::error::Rv;
        for (c, e) in [
            (s::CKR_GENERAL_ERROR, RvError::GeneralError),
            (s::CKR_SLOT_ID_INVALID, RvError::SlotIdInvalid),
            (s::CKR_DEVICE_MEMORY, RvError::DeviceMemory),
            (s::CKR_OPERATION_ACTIVE, RvError::OperationActive),
            (s::CKR_SESSION_CLOSED, RvError::SessionClosed),
            (s::CKR_TOKEN_NOT_RECOGNIZED, RvError::TokenNotRecognized),
            (s::CKR_BUFFER_TOO_SMALL, RvError::BufferTooSmall),
            (
                s::CKR_CRYPTOKI_NOT_INITIALIZED,
                RvError::CryptokiNotInitialized,
            ),
        ] {
            assert_eq!(Rv::from(c), Rv::Error(e), "{c:#x}");
        }
        for (_, c, e) in NAMES {
            if let Some(e) = e {
                assert_eq!(Rv::from(*c), Rv::Error(*e), "{c:#x}");
            }
        }
    }
}
