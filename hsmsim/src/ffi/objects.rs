//! The wrappers a vendor behaviour rewrites: sessions (read-only refusal, session cap), object
//! handles (session-specific numbering, hidden public keys), attribute templates and results
//! (Luna's key type, hidden `CKA_ID`, a public key read off a private object), mechanisms
//! (hidden or renamed) and operation set-up (which also records the key's size for its cost),
//! plus the slot list of a removed token. Part of `ffi`: all `unsafe` stays in that module.
//! With the generic behaviour every wrapper forwards the caller's arguments untouched.

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;

use crate::behaviour::{ec_spki, ed25519_spki, rsa_spki, Behaviour, KeyClass};
use crate::func::Func;
use crate::sim::{Call, Sim};

use super::{mech_type, with_sim};

/// Largest attribute value read internally (public-key parts, EC params): RSA-16384 modulus
/// is 2 KiB; anything bigger is not a key attribute this code needs.
const MAX_INTERNAL_ATTR: usize = 8192;
/// Largest mechanism list accepted from the real module (SoftHSM2 lists about 80).
const MAX_MECHANISMS: usize = 4096;
/// A class no object has: a search with it finds nothing.
const NO_SUCH_CLASS: CK_OBJECT_CLASS = CKO_VENDOR_DEFINED | 0x7FFF_FFFE;

/// `CK_FALSE` for the `CKA_PRIVATE` attribute added to searches while logged out.
static CK_FALSE_BYTE: CK_BBOOL = CK_FALSE as CK_BBOOL;
static NO_SUCH_CLASS_VALUE: CK_OBJECT_CLASS = NO_SUCH_CLASS;

fn ulong_size() -> CK_ULONG {
    std::mem::size_of::<CK_ULONG>() as CK_ULONG
}

/// Reads one attribute of `obj` from the real module (two calls: length, then value).
fn read_attr(
    real: &CK_FUNCTION_LIST,
    session: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    type_: CK_ATTRIBUTE_TYPE,
) -> Option<Vec<u8>> {
    let f = real.C_GetAttributeValue?;
    let mut a = CK_ATTRIBUTE {
        type_,
        pValue: ptr::null_mut(),
        ulValueLen: 0,
    };
    // SAFETY: one valid attribute with a NULL value asks for its length only.
    if unsafe { f(session, obj, &mut a, 1) } != CKR_OK
        || a.ulValueLen == CK_UNAVAILABLE_INFORMATION
        || a.ulValueLen as usize > MAX_INTERNAL_ATTR
    {
        return None;
    }
    let mut buf = vec![0u8; a.ulValueLen as usize];
    a.pValue = buf.as_mut_ptr() as *mut c_void;
    // SAFETY: `buf` is ulValueLen bytes and outlives the call.
    if unsafe { f(session, obj, &mut a, 1) } != CKR_OK {
        return None;
    }
    buf.truncate(a.ulValueLen as usize);
    Some(buf)
}

fn read_ulong(
    real: &CK_FUNCTION_LIST,
    session: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
    type_: CK_ATTRIBUTE_TYPE,
) -> Option<CK_ULONG> {
    let v = read_attr(real, session, obj, type_)?;
    let bytes: [u8; std::mem::size_of::<CK_ULONG>()] = v.as_slice().try_into().ok()?;
    Some(CK_ULONG::from_ne_bytes(bytes))
}

/// The real object behind the application's handle `h` on `session`: translated under
/// `session_handles`, and None if it is not this session's or is a hidden public key.
fn resolve(
    sim: &Sim,
    b: &Behaviour,
    session: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
) -> Option<CK_OBJECT_HANDLE> {
    let r = sim.real_handle(b, session, h)?;
    if b.hide_public_keys
        && r != 0
        && read_ulong(sim.real(), session, r, CKA_CLASS) == Some(CKO_PUBLIC_KEY)
    {
        return None;
    }
    Some(r)
}

/// Hands a real object handle to the application through `out` (None: the session's handle
/// table is full).
///
/// # Safety
/// `out` must be NULL or valid for writing one handle.
unsafe fn hand_out(
    sim: &Sim,
    b: &Behaviour,
    session: CK_SESSION_HANDLE,
    out: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    // SAFETY: the caller guarantees `out` is NULL or writable.
    let Some(slot) = (unsafe { out.as_mut() }) else {
        return CKR_OK;
    };
    match sim.session_handle(b, session, *slot) {
        Some(v) => {
            *slot = v;
            CKR_OK
        }
        None => CKR_DEVICE_MEMORY,
    }
}

/// A copy of the caller's template with the values the behaviour rewrites for the real module
/// (Luna's key type; under `hide_cka_id` a non-empty `CKA_ID` matches nothing and an empty one
/// is dropped, since every object then "has" an empty ID). `store` owns rewritten values.
///
/// # Safety
/// `p` must be NULL or point to `n` valid attributes.
unsafe fn template_in(
    b: &Behaviour,
    p: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    store: &mut Vec<CK_ULONG>,
    searching: bool,
) -> Vec<CK_ATTRIBUTE> {
    if p.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: the caller guarantees n valid attributes at p.
    let attrs = unsafe { std::slice::from_raw_parts(p, n as usize) };
    store.reserve_exact(attrs.len());
    let mut out = Vec::with_capacity(attrs.len());
    for a in attrs {
        let mut a = *a;
        if a.type_ == CKA_KEY_TYPE && a.ulValueLen == ulong_size() && !a.pValue.is_null() {
            // SAFETY: a CK_ULONG-sized value at a non-NULL pointer (possibly unaligned).
            let k = unsafe { (a.pValue as *const CK_ULONG).read_unaligned() };
            let mapped = b.key_type_in(k);
            if mapped != k {
                // `store` has capacity for every attribute, so pushing never moves it.
                store.push(mapped);
                a.pValue = store.last_mut().expect("just pushed") as *mut CK_ULONG as *mut c_void;
            }
        }
        if searching && b.hide_cka_id && a.type_ == CKA_ID {
            if a.ulValueLen == 0 {
                continue;
            }
            a = CK_ATTRIBUTE {
                type_: CKA_CLASS,
                pValue: &NO_SUCH_CLASS_VALUE as *const CK_OBJECT_CLASS as *mut c_void,
                ulValueLen: ulong_size(),
            };
        }
        out.push(a);
    }
    out
}

/// The mechanism to pass to the real module: the caller's, or a renamed copy in `local`.
/// Err(CKR_MECHANISM_INVALID) if this vendor has no such mechanism.
///
/// # Safety
/// `p` must be NULL or point to a valid `CK_MECHANISM`.
unsafe fn mechanism_in(
    b: &Behaviour,
    p: CK_MECHANISM_PTR,
    local: &mut CK_MECHANISM,
) -> Result<CK_MECHANISM_PTR, CK_RV> {
    // SAFETY: the caller guarantees p is NULL or valid.
    let Some(m) = (unsafe { p.as_ref() }) else {
        return Ok(p);
    };
    match b.mechanism_in(m.mechanism) {
        None => Err(CKR_MECHANISM_INVALID),
        Some(t) if t == m.mechanism => Ok(p),
        Some(t) => {
            *local = CK_MECHANISM { mechanism: t, ..*m };
            Ok(local as *mut CK_MECHANISM)
        }
    }
}

/// The size class of a key, from the real module.
fn key_class(
    real: &CK_FUNCTION_LIST,
    session: CK_SESSION_HANDLE,
    key: CK_OBJECT_HANDLE,
) -> KeyClass {
    let Some(kt) = read_ulong(real, session, key, CKA_KEY_TYPE) else {
        return KeyClass::Other;
    };
    let modulus = if kt == CKK_RSA {
        read_attr(real, session, key, CKA_MODULUS)
            .map_or(0, |m| m.len() - m.iter().take_while(|b| **b == 0).count())
    } else {
        0
    };
    let params = if kt == CKK_EC {
        read_attr(real, session, key, CKA_EC_PARAMS).unwrap_or_default()
    } else {
        Vec::new()
    };
    KeyClass::classify(kt, modulus, &params)
}

/// One `C_*Init`: mechanism and key translated for the vendor, the key's size recorded for the
/// operation's cost.
///
/// # Safety
/// The PKCS#11 contract of the wrapped `*Init` (`p_mech` NULL or valid).
unsafe fn op_init(
    func: Func,
    session: CK_SESSION_HANDLE,
    p_mech: CK_MECHANISM_PTR,
    key: Option<CK_OBJECT_HANDLE>,
    f: impl FnOnce(&CK_FUNCTION_LIST, CK_MECHANISM_PTR, CK_OBJECT_HANDLE) -> CK_RV,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let mut local = CK_MECHANISM {
            mechanism: 0,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: p_mech is NULL or valid (caller's contract).
        let mech = match unsafe { mechanism_in(&b, p_mech, &mut local) } {
            Ok(m) => m,
            Err(rv) => return sim.run(Call::session(func, session), |_| rv),
        };
        // SAFETY: `mech` is the caller's mechanism or `local`, both valid (or NULL).
        let call = Call::session(func, session).mech(unsafe { mech_type(mech) });
        if call.mech.is_some_and(|m| b.refuses(func, m)) {
            return sim.run(call, |_| CKR_MECHANISM_INVALID);
        }
        let real_key = match key {
            None => 0,
            Some(h) => match resolve(sim, &b, session, h) {
                Some(r) => r,
                None => return sim.run(call, |_| CKR_KEY_HANDLE_INVALID),
            },
        };
        let rv = sim.run(call, |real| f(real, mech, real_key));
        if rv == CKR_OK && key.is_some() {
            sim.set_operation_key(session, real_key, || {
                key_class(sim.real(), session, real_key)
            });
        }
        rv
    })
}

macro_rules! init_with_key {
    ($name:ident, $func:expr) => {
        pub(super) unsafe extern "C" fn $name(
            hSession: CK_SESSION_HANDLE,
            pMechanism: CK_MECHANISM_PTR,
            hKey: CK_OBJECT_HANDLE,
        ) -> CK_RV {
            // SAFETY: the caller's PKCS#11 contract for this *Init.
            unsafe {
                op_init($func, hSession, pMechanism, Some(hKey), |real, m, k| {
                    match real.$name {
                        // SAFETY: the caller's arguments, with the mechanism and key handle
                        // translated for the real module.
                        Some(f) => f(hSession, m, k),
                        None => CKR_FUNCTION_NOT_SUPPORTED,
                    }
                })
            }
        }
    };
}

init_with_key!(C_EncryptInit, Func::EncryptInit);
init_with_key!(C_DecryptInit, Func::DecryptInit);
init_with_key!(C_SignInit, Func::SignInit);
init_with_key!(C_SignRecoverInit, Func::SignRecoverInit);
init_with_key!(C_VerifyInit, Func::VerifyInit);
init_with_key!(C_VerifyRecoverInit, Func::VerifyRecoverInit);

pub(super) unsafe extern "C" fn C_DigestInit(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
) -> CK_RV {
    // SAFETY: the caller's PKCS#11 contract for C_DigestInit.
    unsafe {
        op_init(
            Func::DigestInit,
            hSession,
            pMechanism,
            None,
            |real, m, _| {
                match real.C_DigestInit {
                    // SAFETY: the caller's session and (translated) mechanism.
                    Some(f) => f(hSession, m),
                    None => CKR_FUNCTION_NOT_SUPPORTED,
                }
            },
        )
    }
}

/// Defines a wrapper whose listed object-handle arguments are translated to the real module's
/// (`$bad` answers a handle that is not this session's object).
macro_rules! with_objects {
    ($name:ident ( $s:ident : $sty:ty $(, $arg:ident : $ty:ty)* ) [$($h:ident),+] $bad:expr => $call:expr) => {
        pub(super) unsafe extern "C" fn $name($s: $sty $(, $arg: $ty)*) -> CK_RV {
            with_sim(|sim| {
                let b = sim.behaviour();
                $(
                    let Some($h) = resolve(sim, &b, $s, $h) else {
                        return sim.run($call, |_| $bad);
                    };
                )+
                sim.run($call, |real| match real.$name {
                    // SAFETY: the caller's arguments, object handles translated.
                    Some(f) => unsafe { f($s $(, $arg)*) },
                    None => CKR_FUNCTION_NOT_SUPPORTED,
                })
            })
        }
    };
}

with_objects!(C_GetObjectSize(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE, pulSize: CK_ULONG_PTR)
    [hObject] CKR_OBJECT_HANDLE_INVALID => Call::session(Func::GetObjectSize, hSession));
with_objects!(C_SetAttributeValue(hSession: CK_SESSION_HANDLE, hObject: CK_OBJECT_HANDLE, pTemplate: CK_ATTRIBUTE_PTR, ulCount: CK_ULONG)
    [hObject] CKR_OBJECT_HANDLE_INVALID => Call::session(Func::SetAttributeValue, hSession));
with_objects!(C_DigestKey(hSession: CK_SESSION_HANDLE, hKey: CK_OBJECT_HANDLE)
    [hKey] CKR_KEY_HANDLE_INVALID => Call::session(Func::DigestKey, hSession));
with_objects!(C_WrapKey(hSession: CK_SESSION_HANDLE, pMechanism: CK_MECHANISM_PTR, hWrappingKey: CK_OBJECT_HANDLE, hKey: CK_OBJECT_HANDLE, pWrappedKey: CK_BYTE_PTR, pulWrappedKeyLen: CK_ULONG_PTR)
    [hWrappingKey, hKey] CKR_KEY_HANDLE_INVALID
    // SAFETY: pMechanism is NULL or valid (caller's contract).
    => Call::session(Func::WrapKey, hSession).mech(unsafe { mech_type(pMechanism) }).length_query(pWrappedKey.is_null()));
with_objects!(C_SetOperationState(hSession: CK_SESSION_HANDLE, pOperationState: CK_BYTE_PTR, ulOperationStateLen: CK_ULONG, hEncryptionKey: CK_OBJECT_HANDLE, hAuthenticationKey: CK_OBJECT_HANDLE)
    [hEncryptionKey, hAuthenticationKey] CKR_KEY_HANDLE_INVALID => Call::session(Func::SetOperationState, hSession));

pub(super) unsafe extern "C" fn C_DestroyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::session(Func::DestroyObject, hSession);
        let Some(obj) = resolve(sim, &b, hSession, hObject) else {
            return sim.run(call, |_| CKR_OBJECT_HANDLE_INVALID);
        };
        let rv = sim.run(call, |real| match real.C_DestroyObject {
            // SAFETY: the caller's session, object handle translated.
            Some(f) => unsafe { f(hSession, obj) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv == CKR_OK {
            sim.object_destroyed(obj);
        }
        rv
    })
}

pub(super) unsafe extern "C" fn C_CreateObject(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let mut store = Vec::new();
        // SAFETY: the caller passes ulCount valid attributes at pTemplate.
        let mut t = unsafe { template_in(&b, pTemplate, ulCount, &mut store, false) };
        let (tp, tn) = if b.touches_attributes() {
            (t.as_mut_ptr(), t.len() as CK_ULONG)
        } else {
            (pTemplate, ulCount)
        };
        let rv = sim.run(Call::session(Func::CreateObject, hSession), |real| {
            match real.C_CreateObject {
                // SAFETY: the (possibly rewritten) template outlives the call.
                Some(f) => unsafe { f(hSession, tp, tn, phObject) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            }
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: on CKR_OK the real module wrote the handle through phObject.
        unsafe { hand_out(sim, &b, hSession, phObject) }
    })
}

pub(super) unsafe extern "C" fn C_CopyObject(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phNewObject: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::session(Func::CopyObject, hSession);
        let Some(obj) = resolve(sim, &b, hSession, hObject) else {
            return sim.run(call, |_| CKR_OBJECT_HANDLE_INVALID);
        };
        let rv = sim.run(call, |real| match real.C_CopyObject {
            // SAFETY: the caller's arguments, object handle translated.
            Some(f) => unsafe { f(hSession, obj, pTemplate, ulCount, phNewObject) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: on CKR_OK the real module wrote the handle through phNewObject.
        unsafe { hand_out(sim, &b, hSession, phNewObject) }
    })
}

pub(super) unsafe extern "C" fn C_GenerateKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        // SAFETY: pMechanism is NULL or valid (caller's contract).
        let call =
            Call::session(Func::GenerateKey, hSession).mech(unsafe { mech_type(pMechanism) });
        let rv = sim.run(call, |real| match real.C_GenerateKey {
            // SAFETY: pass-through of the caller's arguments.
            Some(f) => unsafe { f(hSession, pMechanism, pTemplate, ulCount, phKey) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: on CKR_OK the real module wrote the handle through phKey.
        unsafe { hand_out(sim, &b, hSession, phKey) }
    })
}

pub(super) unsafe extern "C" fn C_GenerateKeyPair(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    pPublicKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPublicKeyAttributeCount: CK_ULONG,
    pPrivateKeyTemplate: CK_ATTRIBUTE_PTR,
    ulPrivateKeyAttributeCount: CK_ULONG,
    phPublicKey: CK_OBJECT_HANDLE_PTR,
    phPrivateKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let mut local = CK_MECHANISM {
            mechanism: 0,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: pMechanism is NULL or valid (caller's contract).
        let mech = match unsafe { mechanism_in(&b, pMechanism, &mut local) } {
            Ok(m) => m,
            Err(rv) => return rv,
        };
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        // SAFETY: the caller passes the stated number of valid attributes in each template.
        let (mut pubt, mut privt) = unsafe {
            (
                template_in(
                    &b,
                    pPublicKeyTemplate,
                    ulPublicKeyAttributeCount,
                    &mut s1,
                    false,
                ),
                template_in(
                    &b,
                    pPrivateKeyTemplate,
                    ulPrivateKeyAttributeCount,
                    &mut s2,
                    false,
                ),
            )
        };
        let rewrite = b.touches_attributes();
        let (pp, pn) = if rewrite {
            (pubt.as_mut_ptr(), pubt.len() as CK_ULONG)
        } else {
            (pPublicKeyTemplate, ulPublicKeyAttributeCount)
        };
        let (sp, sn) = if rewrite {
            (privt.as_mut_ptr(), privt.len() as CK_ULONG)
        } else {
            (pPrivateKeyTemplate, ulPrivateKeyAttributeCount)
        };
        // SAFETY: `mech` is the caller's mechanism or `local`.
        let call = Call::session(Func::GenerateKeyPair, hSession).mech(unsafe { mech_type(mech) });
        let rv = sim.run(call, |real| match real.C_GenerateKeyPair {
            // SAFETY: the caller's arguments; rewritten templates/mechanism outlive the call.
            Some(f) => unsafe { f(hSession, mech, pp, pn, sp, sn, phPublicKey, phPrivateKey) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: on CKR_OK the real module wrote both handles.
        let rv = unsafe { hand_out(sim, &b, hSession, phPublicKey) };
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: as above.
        unsafe { hand_out(sim, &b, hSession, phPrivateKey) }
    })
}

pub(super) unsafe extern "C" fn C_UnwrapKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hUnwrappingKey: CK_OBJECT_HANDLE,
    pWrappedKey: CK_BYTE_PTR,
    ulWrappedKeyLen: CK_ULONG,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        // SAFETY: pMechanism is NULL or valid (caller's contract).
        let call = Call::session(Func::UnwrapKey, hSession).mech(unsafe { mech_type(pMechanism) });
        let Some(unwrapping) = resolve(sim, &b, hSession, hUnwrappingKey) else {
            return sim.run(call, |_| CKR_UNWRAPPING_KEY_HANDLE_INVALID);
        };
        let rv = sim.run(call, |real| match real.C_UnwrapKey {
            // SAFETY: the caller's arguments, key handle translated.
            Some(f) => unsafe {
                f(
                    hSession,
                    pMechanism,
                    unwrapping,
                    pWrappedKey,
                    ulWrappedKeyLen,
                    pTemplate,
                    ulAttributeCount,
                    phKey,
                )
            },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: on CKR_OK the real module wrote the handle through phKey.
        unsafe { hand_out(sim, &b, hSession, phKey) }
    })
}

pub(super) unsafe extern "C" fn C_DeriveKey(
    hSession: CK_SESSION_HANDLE,
    pMechanism: CK_MECHANISM_PTR,
    hBaseKey: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulAttributeCount: CK_ULONG,
    phKey: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        // SAFETY: pMechanism is NULL or valid (caller's contract).
        let call = Call::session(Func::DeriveKey, hSession).mech(unsafe { mech_type(pMechanism) });
        let Some(base) = resolve(sim, &b, hSession, hBaseKey) else {
            return sim.run(call, |_| CKR_KEY_HANDLE_INVALID);
        };
        let rv = sim.run(call, |real| match real.C_DeriveKey {
            // SAFETY: the caller's arguments, key handle translated.
            Some(f) => unsafe {
                f(
                    hSession,
                    pMechanism,
                    base,
                    pTemplate,
                    ulAttributeCount,
                    phKey,
                )
            },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv != CKR_OK {
            return rv;
        }
        // SAFETY: on CKR_OK the real module wrote the handle through phKey.
        unsafe { hand_out(sim, &b, hSession, phKey) }
    })
}

pub(super) unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    pApplication: *mut c_void,
    Notify: CK_NOTIFY,
    phSession: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::slot(Func::OpenSession, slotID);
        if b.rw_sessions_only && flags & CKF_RW_SESSION == 0 {
            // CloudHSM SDK 5 (ki-pkcs11-13): read-only sessions are refused.
            return sim.run(call, |_| CKR_FUNCTION_FAILED);
        }
        if !sim.reserve_session(b.max_sessions) {
            // ASSUMPTION: the standard code for "too many sessions".
            return sim.run(call, |_| CKR_SESSION_COUNT);
        }
        let rv = sim.run(call, |real| match real.C_OpenSession {
            // SAFETY: pass-through of the caller's arguments.
            Some(f) => unsafe { f(slotID, flags, pApplication, Notify, phSession) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        // SAFETY: on CKR_OK the real module wrote the new handle through phSession.
        match (rv, unsafe { phSession.as_ref() }) {
            (CKR_OK, Some(h)) => sim.session_opened(*h, slotID),
            _ => sim.open_failed(),
        }
        rv
    })
}

pub(super) unsafe extern "C" fn C_GetSlotList(
    tokenPresent: CK_BBOOL,
    pSlotList: CK_SLOT_ID_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let rv = sim.run(Call::none(Func::GetSlotList), |real| {
            match real.C_GetSlotList {
                // SAFETY: pass-through of the caller's arguments.
                Some(f) => unsafe { f(tokenPresent, pSlotList, pulCount) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            }
        });
        if rv == CKR_OK && tokenPresent != 0 && sim.token_removed() {
            // The device's token is out: no slot of this device has a token present.
            // SAFETY: on CKR_OK pulCount is valid and writable.
            if let Some(n) = unsafe { pulCount.as_mut() } {
                *n = 0;
            }
        }
        rv
    })
}

pub(super) unsafe extern "C" fn C_GetMechanismList(
    slotID: CK_SLOT_ID,
    pMechanismList: CK_MECHANISM_TYPE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::slot(Func::GetMechanismList, slotID);
        if !b.touches_mechanisms() {
            return sim.run(call, |real| match real.C_GetMechanismList {
                // SAFETY: pass-through of the caller's arguments.
                Some(f) => unsafe { f(slotID, pMechanismList, pulCount) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            });
        }
        if pulCount.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        let mut list: Vec<CK_MECHANISM_TYPE> = Vec::new();
        let rv = sim.run(call, |real| {
            let Some(f) = real.C_GetMechanismList else {
                return CKR_FUNCTION_NOT_SUPPORTED;
            };
            let mut n: CK_ULONG = 0;
            // SAFETY: a NULL list asks for the count; `n` is writable.
            let rv = unsafe { f(slotID, ptr::null_mut(), &mut n) };
            if rv != CKR_OK {
                return rv;
            }
            if n as usize > MAX_MECHANISMS {
                return CKR_DEVICE_ERROR;
            }
            list = vec![0; n as usize];
            // SAFETY: `list` holds n entries and `n` says so.
            let rv = unsafe { f(slotID, list.as_mut_ptr(), &mut n) };
            list.truncate(n as usize);
            rv
        });
        if rv != CKR_OK {
            return rv;
        }
        let shown: Vec<_> = list.iter().filter_map(|m| b.mechanism_out(*m)).collect();
        // SAFETY: checked non-NULL above; the caller's out-parameter.
        let count = unsafe { &mut *pulCount };
        if pMechanismList.is_null() {
            *count = shown.len() as CK_ULONG;
            return CKR_OK;
        }
        let room = *count as usize;
        *count = shown.len() as CK_ULONG;
        if room < shown.len() {
            return CKR_BUFFER_TOO_SMALL;
        }
        // SAFETY: the caller's buffer holds `room` >= shown.len() entries.
        unsafe { ptr::copy_nonoverlapping(shown.as_ptr(), pMechanismList, shown.len()) };
        CKR_OK
    })
}

pub(super) unsafe extern "C" fn C_GetMechanismInfo(
    slotID: CK_SLOT_ID,
    type_: CK_MECHANISM_TYPE,
    pInfo: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::slot(Func::GetMechanismInfo, slotID);
        let Some(t) = b.mechanism_in(type_) else {
            return sim.run(call, |_| CKR_MECHANISM_INVALID);
        };
        let rv = sim.run(call, |real| match real.C_GetMechanismInfo {
            // SAFETY: the caller's arguments, mechanism translated.
            Some(f) => unsafe { f(slotID, t, pInfo) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        });
        if rv == CKR_OK {
            // SAFETY: on CKR_OK the real module filled *pInfo, so it is valid and writable.
            if let Some(info) = unsafe { pInfo.as_mut() } {
                info.flags &= !b.hidden_flags(t);
            }
        }
        rv
    })
}

pub(super) unsafe extern "C" fn C_FindObjectsInit(
    hSession: CK_SESSION_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let logged_out = sim.is_logged_out();
        let mut store = Vec::new();
        // SAFETY: the caller passes ulCount valid attributes at pTemplate (PKCS#11).
        let mut t = unsafe { template_in(&b, pTemplate, ulCount, &mut store, true) };
        // While a fault has logged the user out, the real module still is logged in; a real
        // device would hide private objects, so the search also requires CKA_PRIVATE = FALSE.
        if logged_out {
            t.push(CK_ATTRIBUTE {
                type_: CKA_PRIVATE,
                pValue: &CK_FALSE_BYTE as *const CK_BBOOL as *mut c_void,
                ulValueLen: 1,
            });
        }
        let (tp, tn) = if logged_out || b.touches_attributes() {
            (t.as_mut_ptr(), t.len() as CK_ULONG)
        } else {
            (pTemplate, ulCount)
        };
        sim.run(
            Call::session(Func::FindObjectsInit, hSession),
            |real| match real.C_FindObjectsInit {
                // SAFETY: `tp` is the caller's array or `t`, which outlives the call; the real
                // module only reads it.
                Some(f) => unsafe { f(hSession, tp, tn) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            },
        )
    })
}

pub(super) unsafe extern "C" fn C_FindObjects(
    hSession: CK_SESSION_HANDLE,
    phObject: CK_OBJECT_HANDLE_PTR,
    ulMaxObjectCount: CK_ULONG,
    pulObjectCount: CK_ULONG_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::session(Func::FindObjects, hSession);
        if !b.session_handles && !b.hide_public_keys {
            return sim.run(call, |real| match real.C_FindObjects {
                // SAFETY: pass-through of the caller's arguments.
                Some(f) => unsafe { f(hSession, phObject, ulMaxObjectCount, pulObjectCount) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            });
        }
        if phObject.is_null() || pulObjectCount.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        let max = ulMaxObjectCount as usize;
        let mut found: Vec<CK_OBJECT_HANDLE> = Vec::with_capacity(max.min(1024));
        let rv = sim.run(call, |real| {
            let Some(f) = real.C_FindObjects else {
                return CKR_FUNCTION_NOT_SUPPORTED;
            };
            // Hidden objects are skipped, so keep asking until the caller's buffer is full or
            // the real search is exhausted (a short answer means "no more" in PKCS#11).
            let mut chunk = vec![0 as CK_OBJECT_HANDLE; max.clamp(1, 64)];
            while found.len() < max {
                let want = (max - found.len()).min(chunk.len());
                let mut n: CK_ULONG = 0;
                // SAFETY: `chunk` holds at least `want` entries; `n` is writable.
                let rv = unsafe { f(hSession, chunk.as_mut_ptr(), want as CK_ULONG, &mut n) };
                if rv != CKR_OK {
                    return rv;
                }
                let n = (n as usize).min(want);
                for r in &chunk[..n] {
                    let hidden = b.hide_public_keys
                        && read_ulong(real, hSession, *r, CKA_CLASS) == Some(CKO_PUBLIC_KEY);
                    if !hidden {
                        found.push(*r);
                    }
                }
                if n < want {
                    break;
                }
            }
            CKR_OK
        });
        if rv != CKR_OK {
            return rv;
        }
        for (i, r) in found.iter().enumerate() {
            let Some(v) = sim.session_handle(&b, hSession, *r) else {
                return CKR_DEVICE_MEMORY;
            };
            // SAFETY: the caller's buffer holds ulMaxObjectCount >= found.len() handles.
            unsafe { *phObject.add(i) = v };
        }
        // SAFETY: checked non-NULL above.
        unsafe { *pulObjectCount = found.len() as CK_ULONG };
        CKR_OK
    })
}

/// A value the simulator answers for an attribute instead of the real module.
enum Synth {
    /// The attribute's value.
    Value(Vec<u8>),
    /// The object has no such attribute.
    Invalid,
}

/// A private key's public half, as a vendor offering it on the private object reports it.
struct PublicParts {
    /// `CKA_EC_POINT` (EC and Edwards keys only).
    ec_point: Option<Vec<u8>>,
    /// DER SubjectPublicKeyInfo (`CKA_PUBLIC_KEY_INFO`).
    spki: Vec<u8>,
}

/// The public key of private key `obj`, as the vendor would read it off the private object. RSA parts are on the private
/// object itself; an EC point is taken from the matching public object in the real module
/// (found on a separate real session, so the caller's own search state is untouched).
fn public_parts(
    sim: &Sim,
    session: CK_SESSION_HANDLE,
    obj: CK_OBJECT_HANDLE,
) -> Option<PublicParts> {
    let real = sim.real();
    let kt = read_ulong(real, session, obj, CKA_KEY_TYPE)?;
    if kt == CKK_RSA {
        let n = read_attr(real, session, obj, CKA_MODULUS)?;
        let e = read_attr(real, session, obj, CKA_PUBLIC_EXPONENT)?;
        return Some(PublicParts {
            ec_point: None,
            spki: rsa_spki(&n, &e),
        });
    }
    if kt != CKK_EC && kt != CKK_EC_EDWARDS {
        return None;
    }
    let params = read_attr(real, session, obj, CKA_EC_PARAMS)?;
    let label = read_attr(real, session, obj, CKA_LABEL).unwrap_or_default();
    let id = read_attr(real, session, obj, CKA_ID).unwrap_or_default();
    let slot = sim.session_slot(session)?;
    let point = find_public_point(real, slot, kt, &params, &label, &id)?;
    let spki = if kt == CKK_EC {
        ec_spki(&params, &point)
    } else {
        ed25519_spki(&point)
    };
    Some(PublicParts {
        ec_point: Some(point),
        spki,
    })
}

/// `CKA_EC_POINT` of the public key matching (type, params, label, id), on a fresh real session.
fn find_public_point(
    real: &CK_FUNCTION_LIST,
    slot: CK_SLOT_ID,
    kt: CK_KEY_TYPE,
    params: &[u8],
    label: &[u8],
    id: &[u8],
) -> Option<Vec<u8>> {
    let (open, close) = (real.C_OpenSession?, real.C_CloseSession?);
    let (init, find, fin) = (
        real.C_FindObjectsInit?,
        real.C_FindObjects?,
        real.C_FindObjectsFinal?,
    );
    let mut s: CK_SESSION_HANDLE = 0;
    // SAFETY: `s` is a valid out-pointer; no callback.
    if unsafe { open(slot, CKF_SERIAL_SESSION, ptr::null_mut(), None, &mut s) } != CKR_OK {
        return None;
    }
    let class = CKO_PUBLIC_KEY;
    let attr = |type_, p: *const c_void, len: usize| CK_ATTRIBUTE {
        type_,
        pValue: p as *mut c_void,
        ulValueLen: len as CK_ULONG,
    };
    let ulong = std::mem::size_of::<CK_ULONG>();
    let base = [
        attr(CKA_CLASS, &class as *const _ as *const c_void, ulong),
        attr(CKA_KEY_TYPE, &kt as *const _ as *const c_void, ulong),
        attr(
            CKA_EC_PARAMS,
            params.as_ptr() as *const c_void,
            params.len(),
        ),
    ];
    let by_label = attr(CKA_LABEL, label.as_ptr() as *const c_void, label.len());
    let by_id = attr(CKA_ID, id.as_ptr() as *const c_void, id.len());
    // The pair shares ID and label when made together; an ID set later on one half only, or
    // a relabelled half, still finds its partner by the other.
    let mut point = None;
    for extra in [&[by_label, by_id][..], &[by_id], &[by_label]] {
        let mut t: Vec<CK_ATTRIBUTE> = base.iter().chain(extra).copied().collect();
        let mut h: CK_OBJECT_HANDLE = 0;
        let mut n: CK_ULONG = 0;
        // SAFETY: the template's values all outlive the calls; `h`/`n` are writable.
        let found = unsafe {
            init(s, t.as_mut_ptr(), t.len() as CK_ULONG) == CKR_OK && {
                let ok = find(s, &mut h, 1, &mut n) == CKR_OK && n == 1;
                fin(s);
                ok
            }
        };
        if found {
            point = read_attr(real, s, h, CKA_EC_POINT);
            break;
        }
    }
    // SAFETY: `s` is the session opened above.
    unsafe { close(s) };
    point
}

pub(super) unsafe extern "C" fn C_GetAttributeValue(
    hSession: CK_SESSION_HANDLE,
    hObject: CK_OBJECT_HANDLE,
    pTemplate: CK_ATTRIBUTE_PTR,
    ulCount: CK_ULONG,
) -> CK_RV {
    with_sim(|sim| {
        let b = sim.behaviour();
        let call = Call::session(Func::GetAttributeValue, hSession);
        let Some(obj) = resolve(sim, &b, hSession, hObject) else {
            return sim.run(call, |_| CKR_OBJECT_HANDLE_INVALID);
        };
        if !b.touches_attributes() || pTemplate.is_null() {
            return sim.run(call, |real| match real.C_GetAttributeValue {
                // SAFETY: the caller's arguments, object handle translated.
                Some(f) => unsafe { f(hSession, obj, pTemplate, ulCount) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            });
        }
        // SAFETY: the caller passes ulCount valid attributes at pTemplate, which we may write
        // (lengths, and values into the caller's buffers).
        let t = unsafe { std::slice::from_raw_parts_mut(pTemplate, ulCount as usize) };
        sim.run(call, |real| {
            let Some(f) = real.C_GetAttributeValue else {
                return CKR_FUNCTION_NOT_SUPPORTED;
            };
            let private = || read_ulong(real, hSession, obj, CKA_CLASS) == Some(CKO_PRIVATE_KEY);
            let mut is_private: Option<bool> = None;
            let mut parts: Option<Option<PublicParts>> = None;
            let mut synth: Vec<(usize, Synth)> = Vec::new();
            for (i, a) in t.iter().enumerate() {
                let want_point = a.type_ == CKA_EC_POINT && b.ec_point_on_private;
                let want_info = a.type_ == CKA_PUBLIC_KEY_INFO && b.public_key_info_on_private;
                if a.type_ == CKA_ID && b.hide_cka_id {
                    synth.push((i, Synth::Value(Vec::new())));
                } else if (want_point || want_info) && *is_private.get_or_insert_with(private) {
                    let p = parts.get_or_insert_with(|| public_parts(sim, hSession, obj));
                    let v = match (p, want_point) {
                        (
                            Some(PublicParts {
                                ec_point: Some(point),
                                ..
                            }),
                            true,
                        ) => Synth::Value(point.clone()),
                        (Some(PublicParts { spki, .. }), false) => Synth::Value(spki.clone()),
                        _ => Synth::Invalid,
                    };
                    synth.push((i, v));
                }
            }
            // The real module answers everything else, writing straight into the caller's
            // buffers (the copies keep the caller's pointers).
            let mut rest: Vec<(usize, CK_ATTRIBUTE)> = t
                .iter()
                .enumerate()
                .filter(|(i, _)| !synth.iter().any(|(j, _)| j == i))
                .map(|(i, a)| (i, *a))
                .collect();
            let mut rv = CKR_OK;
            if !rest.is_empty() {
                let mut arr: Vec<CK_ATTRIBUTE> = rest.iter().map(|(_, a)| *a).collect();
                // SAFETY: `arr` copies the caller's attributes (same value buffers and sizes).
                rv = unsafe { f(hSession, obj, arr.as_mut_ptr(), arr.len() as CK_ULONG) };
                for ((i, _), a) in rest.iter_mut().zip(&arr) {
                    t[*i].ulValueLen = a.ulValueLen;
                }
            }
            for a in t.iter_mut() {
                if a.type_ == CKA_KEY_TYPE && a.ulValueLen == ulong_size() && !a.pValue.is_null() {
                    // SAFETY: the real module wrote a CK_ULONG into the caller's buffer.
                    unsafe {
                        let p = a.pValue as *mut CK_ULONG;
                        p.write_unaligned(b.key_type_out(p.read_unaligned()));
                    }
                }
            }
            let mut own_rv = CKR_OK;
            for (i, v) in synth {
                let a = &mut t[i];
                match v {
                    Synth::Invalid => {
                        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        own_rv = CKR_ATTRIBUTE_TYPE_INVALID;
                    }
                    Synth::Value(v) => {
                        if a.pValue.is_null() {
                            a.ulValueLen = v.len() as CK_ULONG;
                        } else if (a.ulValueLen as usize) < v.len() {
                            a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                            if own_rv == CKR_OK {
                                own_rv = CKR_BUFFER_TOO_SMALL;
                            }
                        } else {
                            // SAFETY: the caller's buffer holds ulValueLen >= v.len() bytes.
                            unsafe {
                                ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len())
                            };
                            a.ulValueLen = v.len() as CK_ULONG;
                        }
                    }
                }
            }
            // PKCS#11 lets either answer stand when several apply; the real module's first.
            if rv != CKR_OK {
                rv
            } else {
                own_rv
            }
        })
    })
}
