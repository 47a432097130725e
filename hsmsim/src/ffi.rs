//! The C side: the exported `C_GetFunctionList`, the static `CK_FUNCTION_LIST` of wrappers, and
//! loading the real module with `dlopen`. Every `unsafe` block of the crate lives here (and in
//! its submodule `objects`, the wrappers a vendor behaviour rewrites). Each wrapper describes its
//! call to the shaper (`sim::Call`) and hands it a closure that makes the same call on the real
//! module with the caller's arguments untouched (or translated by `objects`); a few wrappers also
//! keep the session table in step (open/close, login, session and slot info).

#![allow(non_snake_case)] // the wrappers carry their PKCS#11 names

use std::ffi::{c_void, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use cryptoki_sys::*;

use crate::config::Config;
use crate::func::Func;
use crate::sim::{Call, Sim};

mod objects;
use objects::*;

/// The simulator, created by the first successful `C_Initialize`.
static SIM: OnceLock<Sim> = OnceLock::new();
/// Serialises `C_Initialize` / `C_Finalize`; the flag it guards is mirrored in `INITIALISED`
/// so the call path reads an atomic instead of taking a process-wide lock.
static INIT: Mutex<bool> = Mutex::new(false);
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// Size of the scratch buffer used to end an operation on the real module after an injected
/// failure: larger than any signature (RSA-16384 is 2 KiB) or block-cipher final output.
const SCRATCH_BYTES: usize = 16 * 1024;

pub(crate) fn with_sim(f: impl FnOnce(&'static Sim) -> CK_RV) -> CK_RV {
    match SIM.get() {
        Some(sim) if INITIALISED.load(Ordering::Acquire) => f(sim),
        _ => CKR_CRYPTOKI_NOT_INITIALIZED,
    }
}

/// Reads the mechanism type out of a caller's `CK_MECHANISM` pointer.
///
/// # Safety
/// `p` must be NULL or point to a valid `CK_MECHANISM` (the PKCS#11 contract for every
/// function taking `pMechanism`).
pub(crate) unsafe fn mech_type(p: *const CK_MECHANISM) -> Option<CK_MECHANISM_TYPE> {
    // SAFETY: the caller guarantees p is NULL or valid; as_ref handles NULL.
    unsafe { p.as_ref() }.map(|m| m.mechanism)
}

/// Ends the operation running on `session` in the real module by calling `fin` into a scratch
/// buffer (the result is discarded). Used after the simulator failed an update step.
pub(crate) fn end_operation(real: &CK_FUNCTION_LIST, fin: Func, session: CK_SESSION_HANDLE) {
    let mut buf = vec![0u8; SCRATCH_BYTES];
    let mut len = SCRATCH_BYTES as CK_ULONG;
    let (p, l) = (buf.as_mut_ptr(), &mut len as *mut CK_ULONG);
    // SAFETY: `buf` is SCRATCH_BYTES long and `len` says so; both outlive the call; the
    // function pointers come from the real module's own function list.
    unsafe {
        let _ = match fin {
            Func::SignFinal => real.C_SignFinal.map(|f| f(session, p, l)),
            Func::EncryptFinal => real.C_EncryptFinal.map(|f| f(session, p, l)),
            Func::DecryptFinal => real.C_DecryptFinal.map(|f| f(session, p, l)),
            Func::DigestFinal => real.C_DigestFinal.map(|f| f(session, p, l)),
            // A junk signature ends the verification (with CKR_SIGNATURE_INVALID).
            Func::VerifyFinal => real.C_VerifyFinal.map(|f| f(session, p, 1)),
            _ => None,
        };
    }
}

/// Why the real module behind the simulator cannot be used; names its file.
#[derive(Debug, thiserror::Error)]
enum RealModuleError {
    #[error("{}: path contains a NUL byte", .0.display())]
    NulInPath(std::path::PathBuf),
    #[error("{}: dlopen failed: {reason}", path.display())]
    Dlopen {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("{}: no C_GetFunctionList symbol", .0.display())]
    NoFunctionList(std::path::PathBuf),
    #[error("{}: C_GetFunctionList returned {rv:#x}", path.display())]
    GetFunctionList { path: std::path::PathBuf, rv: CK_RV },
    #[error("{}: is the simulator itself; point `module` at a real module", .0.display())]
    Itself(std::path::PathBuf),
}

/// Loads the real module once; it is never unloaded (its function pointers must stay valid).
fn load_real(path: &Path) -> Result<&'static CK_FUNCTION_LIST, RealModuleError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| RealModuleError::NulInPath(path.to_path_buf()))?;
    // SAFETY: c_path is a valid NUL-terminated string; dlopen has no other preconditions.
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(RealModuleError::Dlopen {
            path: path.to_path_buf(),
            reason: dl_error(),
        });
    }
    // SAFETY: handle is a live dlopen handle and the symbol name is NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, c"C_GetFunctionList".as_ptr()) };
    if sym.is_null() {
        return Err(RealModuleError::NoFunctionList(path.to_path_buf()));
    }
    // SAFETY: PKCS#11 defines C_GetFunctionList with exactly this C signature.
    let get: unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV =
        unsafe { std::mem::transmute::<*mut c_void, _>(sym) };
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    // SAFETY: `list` is a valid out-pointer for the duration of the call.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(RealModuleError::GetFunctionList {
            path: path.to_path_buf(),
            rv,
        });
    }
    if ptr::eq(list, &FUNCTION_LIST) {
        return Err(RealModuleError::Itself(path.to_path_buf()));
    }
    // SAFETY: the module is never dlclose'd, so its static function list lives forever.
    Ok(unsafe { &*list })
}

/// The file stem of the shared object this code was loaded from (`hsm2` for `/x/hsm2.so`), or
/// `"keycore_hsmsim"` if the loader cannot say (e.g. linked statically into a test).
fn own_stem() -> String {
    let mut info = libc::Dl_info {
        dli_fname: ptr::null(),
        dli_fbase: ptr::null_mut(),
        dli_sname: ptr::null(),
        dli_saddr: ptr::null_mut(),
    };
    let addr = C_GetFunctionList as *const c_void;
    // SAFETY: dladdr only inspects the address and fills `info`, which lives across the call.
    let found = unsafe { libc::dladdr(addr, &mut info) } != 0;
    if !found || info.dli_fname.is_null() {
        return "keycore_hsmsim".into();
    }
    // SAFETY: dli_fname is a NUL-terminated path owned by the loader, valid while the object
    // stays loaded (it is never unloaded while this code runs); copied out at once.
    let fname = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) }
        .to_string_lossy()
        .into_owned();
    Path::new(&fname)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "keycore_hsmsim".into())
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated string valid until the next dl* call
    // on this thread; it is copied out at once.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown error".into()
        } else {
            std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

/// Exported entry point: hands out the simulator's function list (the real module is loaded
/// later, by `C_Initialize`, once the config says which one).
///
/// # Safety
/// `ppFunctionList` must be NULL or a valid pointer to write one pointer to.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    if ppFunctionList.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: checked non-NULL above; the caller guarantees it is writable. The list is never
    // written through this pointer (PKCS#11 callers treat it as read-only).
    unsafe { *ppFunctionList = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST };
    CKR_OK
}

unsafe extern "C" fn C_Initialize(pInitArgs: *mut c_void) -> CK_RV {
    let mut initialised = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if *initialised {
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    let sim = match SIM.get() {
        Some(sim) => sim,
        None => {
            let (cfg, path) = match Config::from_env(&own_stem()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keycore-hsmsim: C_Initialize: {e}");
                    return CKR_GENERAL_ERROR;
                }
            };
            let real = match load_real(&cfg.module) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("keycore-hsmsim: C_Initialize: {e}");
                    return CKR_GENERAL_ERROR;
                }
            };
            SIM.get_or_init(|| Sim::new(real, cfg, path))
        }
    };
    let rv = match sim.real().C_Initialize {
        // SAFETY: the caller's CK_C_INITIALIZE_ARGS (or NULL) is passed through unchanged.
        Some(f) => unsafe { f(pInitArgs) },
        None => CKR_GENERAL_ERROR,
    };
    if rv == CKR_OK {
        sim.reset();
        *initialised = true;
        INITIALISED.store(true, Ordering::Release);
    }
    rv
}

unsafe extern "C" fn C_Finalize(pReserved: *mut c_void) -> CK_RV {
    let mut initialised = INIT.lock().unwrap_or_else(|e| e.into_inner());
    let Some(sim) = SIM.get().filter(|_| *initialised) else {
        return CKR_CRYPTOKI_NOT_INITIALIZED;
    };
    let rv = match sim.real().C_Finalize {
        // SAFETY: pass-through of the caller's (reserved, NULL) argument.
        Some(f) => unsafe { f(pReserved) },
        None => CKR_GENERAL_ERROR,
    };
    if rv == CKR_OK {
        INITIALISED.store(false, Ordering::Release);
        sim.reset();
        *initialised = false;
    }
    rv
}

unsafe extern "C" fn C_GetFunctionList_wrapper(pp: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    // SAFETY: same contract as the exported function.
    unsafe { C_GetFunctionList(pp) }
}

/// Defines a wrapper that runs `$call` (a `sim::Call`) through the shaper and forwards to the
/// real module's function of the same name with the arguments untouched.
macro_rules! shaped {
    ($name:ident ( $($arg:ident : $ty:ty),* ) => $call:expr) => {
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            with_sim(|sim| {
                sim.run($call, |real| match real.$name {
                    // SAFETY: the caller's arguments go unchanged to the real module's
                    // implementation of the same function, under the same PKCS#11 contract.
                    Some(f) => unsafe { f($($arg),*) },
                    None => CKR_FUNCTION_NOT_SUPPORTED,
                })
            })
        }
    };
}

/// Defines a wrapper for a function real clients answer locally: no shaping at all.
macro_rules! local {
    ($name:ident ( $($arg:ident : $ty:ty),* )) => {
        unsafe extern "C" fn $name($($arg: $ty),*) -> CK_RV {
            with_sim(|sim| match sim.real().$name {
                // SAFETY: pass-through of the caller's arguments to the same real function.
                Some(f) => unsafe { f($($arg),*) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            })
        }
    };
}

local!(C_GetInfo(pInfo: CK_INFO_PTR));
local!(C_GetFunctionStatus(hSession: CK_SESSION_HANDLE));
local!(C_CancelFunction(hSession: CK_SESSION_HANDLE));

shaped!(C_GetTokenInfo(slotID: CK_SLOT_ID, pInfo: CK_TOKEN_INFO_PTR)
    => Call::slot(Func::GetTokenInfo, slotID));
shaped!(C_InitToken(slotID: CK_SLOT_ID, pPin: CK_UTF8CHAR_PTR, ulPinLen: CK_ULONG, pLabel: CK_UTF8CHAR_PTR)
    => Call::slot(Func::InitToken, slotID));
shaped!(C_InitPIN(hSession: CK_SESSION_HANDLE, pPin: CK_UTF8CHAR_PTR, ulPinLen: CK_ULONG)
    => Call::session(Func::InitPIN, hSession));
shaped!(C_SetPIN(hSession: CK_SESSION_HANDLE, pOldPin: CK_UTF8CHAR_PTR, ulOldLen: CK_ULONG, pNewPin: CK_UTF8CHAR_PTR, ulNewLen: CK_ULONG)
    => Call::session(Func::SetPIN, hSession));
shaped!(C_GetOperationState(hSession: CK_SESSION_HANDLE, pOperationState: CK_BYTE_PTR, pulOperationStateLen: CK_ULONG_PTR)
    => Call::session(Func::GetOperationState, hSession));
shaped!(C_FindObjectsFinal(hSession: CK_SESSION_HANDLE)
    => Call::session(Func::FindObjectsFinal, hSession));

// Operation set-up (`*Init`), object handles, templates and mechanism lists: see `objects`.

// Operation steps. A NULL output buffer is a size query (see `Call::length_query`).
shaped!(C_Encrypt(hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pEncryptedData: CK_BYTE_PTR, pulEncryptedDataLen: CK_ULONG_PTR)
    => Call::session(Func::Encrypt, hSession).length_query(pEncryptedData.is_null()));
shaped!(C_EncryptUpdate(hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG, pEncryptedPart: CK_BYTE_PTR, pulEncryptedPartLen: CK_ULONG_PTR)
    => Call::session(Func::EncryptUpdate, hSession).length_query(pEncryptedPart.is_null()));
shaped!(C_EncryptFinal(hSession: CK_SESSION_HANDLE, pLastEncryptedPart: CK_BYTE_PTR, pulLastEncryptedPartLen: CK_ULONG_PTR)
    => Call::session(Func::EncryptFinal, hSession).length_query(pLastEncryptedPart.is_null()));
shaped!(C_Decrypt(hSession: CK_SESSION_HANDLE, pEncryptedData: CK_BYTE_PTR, ulEncryptedDataLen: CK_ULONG, pData: CK_BYTE_PTR, pulDataLen: CK_ULONG_PTR)
    => Call::session(Func::Decrypt, hSession).length_query(pData.is_null()));
shaped!(C_DecryptUpdate(hSession: CK_SESSION_HANDLE, pEncryptedPart: CK_BYTE_PTR, ulEncryptedPartLen: CK_ULONG, pPart: CK_BYTE_PTR, pulPartLen: CK_ULONG_PTR)
    => Call::session(Func::DecryptUpdate, hSession).length_query(pPart.is_null()));
shaped!(C_DecryptFinal(hSession: CK_SESSION_HANDLE, pLastPart: CK_BYTE_PTR, pulLastPartLen: CK_ULONG_PTR)
    => Call::session(Func::DecryptFinal, hSession).length_query(pLastPart.is_null()));
shaped!(C_Digest(hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pDigest: CK_BYTE_PTR, pulDigestLen: CK_ULONG_PTR)
    => Call::session(Func::Digest, hSession).length_query(pDigest.is_null()));
shaped!(C_DigestUpdate(hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG)
    => Call::session(Func::DigestUpdate, hSession));
shaped!(C_DigestFinal(hSession: CK_SESSION_HANDLE, pDigest: CK_BYTE_PTR, pulDigestLen: CK_ULONG_PTR)
    => Call::session(Func::DigestFinal, hSession).length_query(pDigest.is_null()));
shaped!(C_Sign(hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pSignature: CK_BYTE_PTR, pulSignatureLen: CK_ULONG_PTR)
    => Call::session(Func::Sign, hSession).length_query(pSignature.is_null()));
shaped!(C_SignUpdate(hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG)
    => Call::session(Func::SignUpdate, hSession));
shaped!(C_SignFinal(hSession: CK_SESSION_HANDLE, pSignature: CK_BYTE_PTR, pulSignatureLen: CK_ULONG_PTR)
    => Call::session(Func::SignFinal, hSession).length_query(pSignature.is_null()));
shaped!(C_SignRecover(hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pSignature: CK_BYTE_PTR, pulSignatureLen: CK_ULONG_PTR)
    => Call::session(Func::SignRecover, hSession).length_query(pSignature.is_null()));
shaped!(C_Verify(hSession: CK_SESSION_HANDLE, pData: CK_BYTE_PTR, ulDataLen: CK_ULONG, pSignature: CK_BYTE_PTR, ulSignatureLen: CK_ULONG)
    => Call::session(Func::Verify, hSession));
shaped!(C_VerifyUpdate(hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG)
    => Call::session(Func::VerifyUpdate, hSession));
shaped!(C_VerifyFinal(hSession: CK_SESSION_HANDLE, pSignature: CK_BYTE_PTR, ulSignatureLen: CK_ULONG)
    => Call::session(Func::VerifyFinal, hSession));
shaped!(C_VerifyRecover(hSession: CK_SESSION_HANDLE, pSignature: CK_BYTE_PTR, ulSignatureLen: CK_ULONG, pData: CK_BYTE_PTR, pulDataLen: CK_ULONG_PTR)
    => Call::session(Func::VerifyRecover, hSession).length_query(pData.is_null()));
shaped!(C_DigestEncryptUpdate(hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG, pEncryptedPart: CK_BYTE_PTR, pulEncryptedPartLen: CK_ULONG_PTR)
    => Call::session(Func::DigestEncryptUpdate, hSession).length_query(pEncryptedPart.is_null()));
shaped!(C_DecryptDigestUpdate(hSession: CK_SESSION_HANDLE, pEncryptedPart: CK_BYTE_PTR, ulEncryptedPartLen: CK_ULONG, pPart: CK_BYTE_PTR, pulPartLen: CK_ULONG_PTR)
    => Call::session(Func::DecryptDigestUpdate, hSession).length_query(pPart.is_null()));
shaped!(C_SignEncryptUpdate(hSession: CK_SESSION_HANDLE, pPart: CK_BYTE_PTR, ulPartLen: CK_ULONG, pEncryptedPart: CK_BYTE_PTR, pulEncryptedPartLen: CK_ULONG_PTR)
    => Call::session(Func::SignEncryptUpdate, hSession).length_query(pEncryptedPart.is_null()));
shaped!(C_DecryptVerifyUpdate(hSession: CK_SESSION_HANDLE, pEncryptedPart: CK_BYTE_PTR, ulEncryptedPartLen: CK_ULONG, pPart: CK_BYTE_PTR, pulPartLen: CK_ULONG_PTR)
    => Call::session(Func::DecryptVerifyUpdate, hSession).length_query(pPart.is_null()));

shaped!(C_SeedRandom(hSession: CK_SESSION_HANDLE, pSeed: CK_BYTE_PTR, ulSeedLen: CK_ULONG)
    => Call::session(Func::SeedRandom, hSession));
shaped!(C_GenerateRandom(hSession: CK_SESSION_HANDLE, RandomData: CK_BYTE_PTR, ulRandomLen: CK_ULONG)
    => Call::session(Func::GenerateRandom, hSession));
shaped!(C_WaitForSlotEvent(flags: CK_FLAGS, pSlot: CK_SLOT_ID_PTR, pReserved: *mut c_void)
    => Call::none(Func::WaitForSlotEvent));

// Wrappers that keep the simulator's view of sessions and login in step.

unsafe extern "C" fn C_GetSlotInfo(slotID: CK_SLOT_ID, pInfo: CK_SLOT_INFO_PTR) -> CK_RV {
    with_sim(|sim| {
        let rv = sim.run(Call::slot(Func::GetSlotInfo, slotID), |real| {
            match real.C_GetSlotInfo {
                // SAFETY: pass-through of the caller's arguments.
                Some(f) => unsafe { f(slotID, pInfo) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            }
        });
        if rv == CKR_OK && sim.token_removed() {
            // SAFETY: on CKR_OK the real module filled *pInfo, so pInfo is valid and writable.
            if let Some(info) = unsafe { pInfo.as_mut() } {
                info.flags &= !CKF_TOKEN_PRESENT;
            }
        }
        rv
    })
}

unsafe extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    with_sim(|sim| {
        let forward = |real: &CK_FUNCTION_LIST| match real.C_CloseSession {
            // SAFETY: pass-through of the caller's argument.
            Some(f) => unsafe { f(hSession) },
            None => CKR_FUNCTION_NOT_SUPPORTED,
        };
        if sim.is_dead(hSession) {
            // The application lets go of a session a fault killed: free the real one, and
            // answer as a device that already forgot it would.
            forward(sim.real());
            sim.session_closed(hSession);
            return CKR_SESSION_HANDLE_INVALID;
        }
        let rv = sim.run(Call::session(Func::CloseSession, hSession), forward);
        if rv == CKR_OK {
            sim.session_closed(hSession);
        }
        rv
    })
}

unsafe extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    with_sim(|sim| {
        let rv = sim.run(
            Call::slot(Func::CloseAllSessions, slotID),
            |real| match real.C_CloseAllSessions {
                // SAFETY: pass-through of the caller's argument.
                Some(f) => unsafe { f(slotID) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            },
        );
        if rv == CKR_OK {
            sim.slot_closed(slotID);
        }
        rv
    })
}

unsafe extern "C" fn C_GetSessionInfo(
    hSession: CK_SESSION_HANDLE,
    pInfo: CK_SESSION_INFO_PTR,
) -> CK_RV {
    with_sim(|sim| {
        let rv = sim.run(
            Call::session(Func::GetSessionInfo, hSession),
            |real| match real.C_GetSessionInfo {
                // SAFETY: pass-through of the caller's arguments.
                Some(f) => unsafe { f(hSession, pInfo) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            },
        );
        if rv == CKR_OK && sim.is_logged_out() {
            // SAFETY: on CKR_OK the real module filled *pInfo, so it is valid and writable.
            if let Some(info) = unsafe { pInfo.as_mut() } {
                info.state = match info.state {
                    CKS_RO_USER_FUNCTIONS => CKS_RO_PUBLIC_SESSION,
                    CKS_RW_USER_FUNCTIONS | CKS_RW_SO_FUNCTIONS => CKS_RW_PUBLIC_SESSION,
                    s => s,
                };
            }
        }
        rv
    })
}

unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    with_sim(|sim| {
        let was_logged_out = sim.is_logged_out();
        let rv = sim.run(Call::session(Func::Login, hSession), |real| {
            match real.C_Login {
                // SAFETY: pass-through of the caller's arguments.
                Some(f) => unsafe { f(hSession, userType, pPin, ulPinLen) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            }
        });
        if was_logged_out && (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN) {
            // The real module never logged out (faults don't touch it), so "already logged
            // in" is this login succeeding.
            sim.clear_logout();
            return CKR_OK;
        }
        rv
    })
}

unsafe extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    with_sim(|sim| {
        if sim.is_logged_out() && !sim.is_dead(hSession) {
            return CKR_USER_NOT_LOGGED_IN;
        }
        sim.run(Call::session(Func::Logout, hSession), |real| {
            match real.C_Logout {
                // SAFETY: pass-through of the caller's argument.
                Some(f) => unsafe { f(hSession) },
                None => CKR_FUNCTION_NOT_SUPPORTED,
            }
        })
    })
}

/// The list handed to applications. Version 2.40: the simulator speaks PKCS#11 v2.40 whatever
/// the real module speaks.
static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION {
        major: 2,
        minor: 40,
    },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList_wrapper),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(C_InitToken),
    C_InitPIN: Some(C_InitPIN),
    C_SetPIN: Some(C_SetPIN),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(C_GetOperationState),
    C_SetOperationState: Some(C_SetOperationState),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(C_CreateObject),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(C_GetObjectSize),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(C_EncryptUpdate),
    C_EncryptFinal: Some(C_EncryptFinal),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(C_DecryptUpdate),
    C_DecryptFinal: Some(C_DecryptFinal),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(C_DigestKey),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(C_SignRecoverInit),
    C_SignRecover: Some(C_SignRecover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(C_VerifyRecoverInit),
    C_VerifyRecover: Some(C_VerifyRecover),
    C_DigestEncryptUpdate: Some(C_DigestEncryptUpdate),
    C_DecryptDigestUpdate: Some(C_DecryptDigestUpdate),
    C_SignEncryptUpdate: Some(C_SignEncryptUpdate),
    C_DecryptVerifyUpdate: Some(C_DecryptVerifyUpdate),
    C_GenerateKey: Some(C_GenerateKey),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(C_UnwrapKey),
    C_DeriveKey: Some(C_DeriveKey),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(C_GetFunctionStatus),
    C_CancelFunction: Some(C_CancelFunction),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};
