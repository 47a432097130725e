//! One session on one partition (a "lane"), the mechanisms keycore uses, and
//! recovery: reopen, log in again, find handles again, re-initialise the
//! module when it lost its state, with the partition's bounded backoff.
//!
//! Owns: [`Lane`] (a session, the generation it was opened under, and the
//! object handles found on it) and the mapping from an `OpClass` to a
//! PKCS#11 mechanism and back to the wire's answer.
//! Must not: be shared between threads. A lane belongs to one reactor
//! (inline) or one worker thread (offload); `Session` is `Send` but not
//! `Sync`, and nothing here locks.

use super::spki::ecdsa_der_from_raw;
use super::token::{now_ns, rv_of, Partition};
use crate::keys::KeyKind;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use keycore_protocol::{Hash, OpClass};
use std::sync::Arc;

/// Why a lane could not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneError {
    /// The request does not fit the key (wrong kind, digest length): answer
    /// `CRYPTO`; no other member would do better.
    Crypto,
    /// The token refused the operation (a non-recoverable `CKR_*`): another
    /// HA member may answer; else `CRYPTO`.
    Failed,
    /// The partition is out of use (recovery failed or backing off): another
    /// HA member may answer; else `CRYPTO`.
    Down,
}

/// Errors after which the session (and maybe the module) is rebuilt and the
/// request tried once more. The list plus the two SoftHSM actually
/// returns when key objects vanish under a session (`KEY_HANDLE_INVALID`)
/// or its token directory does (`GENERAL_ERROR`).
pub fn recoverable(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::SessionHandleInvalid
            | RvError::SessionClosed
            | RvError::UserNotLoggedIn
            | RvError::ObjectHandleInvalid
            | RvError::KeyHandleInvalid
            | RvError::DeviceError
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::CryptokiNotInitialized
            | RvError::GeneralError
    )
}

/// Errors after which the module itself must be re-initialised.
fn needs_reinit(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::CryptokiNotInitialized
            | RvError::DeviceRemoved
            | RvError::TokenNotPresent
            | RvError::TokenNotRecognized
            | RvError::DeviceError
            | RvError::SlotIdInvalid
            | RvError::GeneralError
    )
}

/// An open session and what was found on it.
#[derive(Debug)]
struct Open {
    session: Session,
    generation: u64,
    /// Per key of the partition: its handle, once found on this lane.
    handles: Vec<Option<ObjectHandle>>,
}

/// One session on one partition, owned by one thread.
#[derive(Debug)]
pub struct Lane {
    part: Arc<Partition>,
    open: Option<Open>,
    /// Set by an error that says the module lost its state.
    reinit_wanted: bool,
    /// Set by `CKR_USER_NOT_LOGGED_IN`: log in on the next session even if
    /// it reports a logged-in state.
    relogin_wanted: bool,
    /// Whether the next session may start from the handles found at
    /// start-up. Cleared by the first reset: after a failure, handles are
    /// searched again (a token may renumber objects when all sessions of the
    /// application close, as SoftHSM does for private objects).
    startup_handles: bool,
    /// Set by the offload watchdog's timeout: the session is not trusted.
    pub quarantined: bool,
    /// Per key of the partition: no new search for it before this time
    /// ([`now_ns`]); set when the key is missing from a token that still
    /// holds other private keys (a deleted key must not take its whole
    /// partition out of use).
    key_retry_at_ns: Vec<u64>,
}

/// How long a lane waits before searching again for a key that is missing
/// from an otherwise healthy token (a key re-created under the same id is
/// back in use within this time).
pub const KEY_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// What `perform` failed on inside the token.
enum OpFail {
    /// Not a token problem: bad input length, wrong key kind.
    Input,
    /// The token said no.
    Ck(CkError),
}

impl From<CkError> for OpFail {
    fn from(e: CkError) -> Self {
        OpFail::Ck(e)
    }
}

fn hash_mech(h: Hash) -> Option<(MechanismType, PkcsMgfType)> {
    Some(match h {
        Hash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        Hash::Sha224 => (MechanismType::SHA224, PkcsMgfType::MGF1_SHA224),
        Hash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
        Hash::Sha384 => (MechanismType::SHA384, PkcsMgfType::MGF1_SHA384),
        Hash::Sha512 => (MechanismType::SHA512, PkcsMgfType::MGF1_SHA512),
        Hash::Md5Sha1 => return None,
    })
}

/// Carry out `op` with key `h` of `kind`, appending the wire answer to `out`.
fn run_op(
    s: &Session,
    h: ObjectHandle,
    kind: KeyKind,
    op: OpClass,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), OpFail> {
    match (op, kind) {
        (OpClass::RsaPkcs1(hash), KeyKind::Rsa { .. }) => {
            if input.len() != hash.len() {
                return Err(OpFail::Input);
            }
            // DigestInfo prefix (none for MD5‖SHA1) + digest, on the stack.
            let prefix = hash.digest_info_prefix();
            let mut buf = [0u8; 19 + 64];
            let n = prefix.len() + input.len();
            buf[..prefix.len()].copy_from_slice(prefix);
            buf[prefix.len()..n].copy_from_slice(input);
            out.extend_from_slice(&s.sign(&Mechanism::RsaPkcs, h, &buf[..n])?);
        }
        (OpClass::RsaPss(hash), KeyKind::Rsa { .. }) => {
            let (hash_alg, mgf) = hash_mech(hash).ok_or(OpFail::Input)?;
            if input.len() != hash.len() {
                return Err(OpFail::Input);
            }
            let params = PkcsPssParams {
                hash_alg,
                mgf,
                s_len: (hash.len() as u64).into(),
            };
            out.extend_from_slice(&s.sign(&Mechanism::RsaPkcsPss(params), h, input)?);
        }
        (OpClass::RsaDecrypt, KeyKind::Rsa { bits }) => {
            let k = bits.div_ceil(8);
            if input.len() != k {
                return Err(OpFail::Input);
            }
            // CKM_RSA_X_509: the raw c^d mod n, left-padded to k bytes, the
            // same answer a software key gives (padding not removed).
            let m = s.decrypt(&Mechanism::RsaX509, h, input)?;
            if m.len() > k {
                return Err(OpFail::Input);
            }
            out.resize(out.len() + (k - m.len()), 0);
            out.extend_from_slice(&m);
        }
        (OpClass::Ecdsa(_), KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521) => {
            if input.is_empty() {
                return Err(OpFail::Input);
            }
            let raw = s.sign(&Mechanism::Ecdsa, h, input)?;
            ecdsa_der_from_raw(&raw, out).ok_or(OpFail::Input)?;
        }
        (OpClass::Ed25519, KeyKind::Ed25519) => {
            let m = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
            out.extend_from_slice(&s.sign(&m, h, input)?);
        }
        _ => return Err(OpFail::Input),
    }
    Ok(())
}

impl Lane {
    /// A lane on `part`; the session is opened on first use.
    pub fn new(part: Arc<Partition>) -> Lane {
        Lane {
            key_retry_at_ns: vec![0; part.keys.len()],
            part,
            open: None,
            reinit_wanted: false,
            relogin_wanted: false,
            startup_handles: true,
            quarantined: false,
        }
    }

    /// The partition.
    pub fn partition(&self) -> &Arc<Partition> {
        &self.part
    }

    /// Open the session now (start-up), so the first request does not pay it.
    pub fn warm_up(&mut self) -> Result<(), String> {
        self.ensure_open().map(|_| ())
    }

    /// Throw the session away. A session of an older module generation is
    /// forgotten, not closed: its handle number may belong to a new session.
    fn reset(&mut self) {
        self.startup_handles = false;
        if let Some(o) = self.open.take() {
            if o.generation == self.part.module.generation() && !self.quarantined {
                let _g = self.part.module.enter();
                drop(o.session);
            } else {
                std::mem::forget(o.session);
            }
        }
    }

    fn ensure_open(&mut self) -> Result<&mut Open, String> {
        let module = self.part.module.clone();
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.generation != module.generation())
        {
            self.reset();
        }
        if self.open.is_none() {
            if self.reinit_wanted {
                module.reinit(module.generation())?;
                self.reinit_wanted = false;
            }
            let o = match self.try_open() {
                Ok(o) => o,
                Err(first) => {
                    // The module may have lost its state (token gone and
                    // back, library restarted): re-initialise once and retry.
                    module.reinit(module.generation())?;
                    self.try_open()
                        .map_err(|e| format!("{first}; after C_Initialize: {e}"))?
                }
            };
            self.open = Some(o);
            self.relogin_wanted = false;
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    fn try_open(&self) -> Result<Open, String> {
        let p = &self.part;
        let generation = p.module.generation();
        let slot = p.find_slot()?;
        p.ensure_control(slot).map_err(|e| format!("login: {e}"))?;
        let _g = p.module.enter();
        let session = p
            .module
            .ctx
            .open_ro_session(slot)
            .map_err(|e| format!("C_OpenSession: {e}"))?;
        p.login_with(&session, self.relogin_wanted)
            .map_err(|e| format!("login: {e}"))?;
        let handles = p
            .keys
            .iter()
            .map(|k| (self.startup_handles && k.handle0_gen == generation).then_some(k.handle0))
            .collect();
        Ok(Open {
            session,
            generation,
            handles,
        })
    }

    /// Perform `op` with the partition's key `key`; on a recoverable error,
    /// rebuild the session (and module) and try once more.
    pub fn perform(
        &mut self,
        key: usize,
        op: OpClass,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), LaneError> {
        if !self.part.health.usable() {
            return Err(LaneError::Down);
        }
        if self.key_retry_at_ns[key] > now_ns() {
            return Err(LaneError::Failed);
        }
        let kind = self.part.keys[key].kind;
        let start = out.len();
        for attempt in 0..2 {
            let part = self.part.clone();
            let open = match self.ensure_open() {
                Ok(o) => o,
                Err(e) => {
                    part.health.fail(&e);
                    return Err(LaneError::Down);
                }
            };
            let _g = part.module.enter();
            let h = match open.handles[key] {
                Some(h) => Ok(h),
                None => part.find_key(&open.session, key).inspect(|&h| {
                    open.handles[key] = Some(h);
                }),
            };
            // A key missing from a freshly rebuilt session on a token that
            // still shows other private keys: the key is gone, not the token.
            let key_gone = attempt == 1 && h.is_err() && part.has_private_keys(&open.session);
            let r = match h {
                Ok(h) => run_op(&open.session, h, kind, op, input, out),
                Err(e) => Err(OpFail::Ck(e)),
            };
            drop(_g);
            if key_gone {
                self.key_retry_at_ns[key] = now_ns() + KEY_RETRY.as_nanos() as u64;
                return Err(LaneError::Failed);
            }
            match r {
                Ok(()) => {
                    part.health.ok();
                    return Ok(());
                }
                Err(OpFail::Input) => return Err(LaneError::Crypto),
                Err(OpFail::Ck(e)) => {
                    out.truncate(start);
                    let Some(rv) = rv_of(&e) else {
                        return Err(LaneError::Failed);
                    };
                    if !recoverable(rv) {
                        return Err(LaneError::Failed);
                    }
                    if attempt == 1 {
                        // Rebuilt and failed again: the partition is not healthy.
                        part.health.fail(&format!("after session rebuild: {e}"));
                        self.reset();
                        return Err(LaneError::Down);
                    }
                    part.health.reopened();
                    self.reinit_wanted |= needs_reinit(rv);
                    self.relogin_wanted |= rv == RvError::UserNotLoggedIn;
                    self.reset();
                }
            }
        }
        Err(LaneError::Failed)
    }
}

impl Drop for Lane {
    fn drop(&mut self) {
        self.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_classes() {
        for rv in [
            RvError::SessionHandleInvalid,
            RvError::SessionClosed,
            RvError::UserNotLoggedIn,
            RvError::ObjectHandleInvalid,
            RvError::DeviceError,
            RvError::DeviceRemoved,
            RvError::TokenNotPresent,
            RvError::CryptokiNotInitialized,
        ] {
            assert!(recoverable(rv), "{rv:?}");
        }
        for rv in [
            RvError::DataLenRange,
            RvError::MechanismInvalid,
            RvError::KeyTypeInconsistent,
            RvError::ArgumentsBad,
        ] {
            assert!(!recoverable(rv), "{rv:?}");
        }
        assert!(needs_reinit(RvError::CryptokiNotInitialized));
        assert!(!needs_reinit(RvError::SessionHandleInvalid));
    }

    #[test]
    fn pss_hashes_map_to_same_mgf() {
        assert!(hash_mech(Hash::Md5Sha1).is_none());
        let (h, m) = hash_mech(Hash::Sha384).unwrap();
        assert_eq!(h, MechanismType::SHA384);
        assert_eq!(m, PkcsMgfType::MGF1_SHA384);
    }
}
