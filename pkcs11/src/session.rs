//! One session on one partition (a "lane"), the mechanisms keycore uses, and
//! one attempt at an operation, its failure classified by the partition's
//! error policy. Inline dispatch also retries and recovers here; offload
//! workers decide in dispatch.rs.
//!
//! Owns: [`Lane`] (a session, the generation it was opened under, and the
//! object handles found on it) and the mapping from an `OpClass` to a
//! PKCS#11 mechanism and back to the wire's answer.
//! Must not: be shared between threads. A lane belongs to one reactor
//! (inline) or one worker thread (offload); `Session` is `Send` but not
//! `Sync`, and nothing here locks.

use super::policy::{rv_code, Action};
use super::token::{now_ns, rv_of, KeyLoc, Partition, TokenError};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsPssParams};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use keycore_keys::{ecdsa_der_from_raw, KeyKind};
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

/// Why one attempt failed, for the caller's retry policy.
#[derive(Debug)]
pub enum Fail {
    /// Not the token's problem: bad input length, wrong key kind, an
    /// operation the token cannot do. Answer `CRYPTO`.
    Input,
    /// The key is missing from a token that still shows other private keys.
    KeyGone,
    /// No session could be opened.
    Open(TokenError),
    /// The token answered an error; the policy says what it means.
    Token {
        /// What to do about it.
        action: Action,
        /// The `CKR_*` value.
        rv: u64,
    },
}

impl Fail {
    /// The action this failure calls for (an open failure is evidence
    /// against the session's partition).
    pub fn action(&self) -> Action {
        match self {
            Fail::Input | Fail::KeyGone => Action::Fail,
            Fail::Open(_) => Action::Session,
            Fail::Token { action, .. } => *action,
        }
    }

    /// Whether the session itself was found dead (closed or invalidated by
    /// the token), as opposed to an operation failing on a live one.
    pub fn dead_session(&self) -> bool {
        matches!(
            self,
            Fail::Token {
                rv: super::policy::ckr::CKR_SESSION_HANDLE_INVALID
                    | super::policy::ckr::CKR_SESSION_CLOSED,
                ..
            }
        )
    }

    /// For logs and `last_error`.
    pub fn describe(&self) -> String {
        match self {
            Fail::Input => "input does not fit the key".into(),
            Fail::KeyGone => "key not found on the token".into(),
            Fail::Open(e) => format!("opening a session: {}", keycore_keys::error_chain(e)),
            Fail::Token { action, rv } => {
                format!("{} ({})", super::policy::rv_name(*rv), action.name())
            }
        }
    }
}

/// An open session and what was found on it.
#[derive(Debug)]
struct Open {
    session: Session,
    generation: u64,
    /// Per key position of the partition: its handle, once found on this
    /// session (handles are per session: AWS CloudHSM SDK 5 gives each
    /// session its own, so a handle found elsewhere is never reused). Grows
    /// when a reload adds keys.
    handles: Vec<Option<ObjectHandle>>,
    /// The partition's session epoch this session was last known alive at.
    checked_epoch: u64,
}

/// One session on one partition, owned by one thread.
#[derive(Debug)]
pub struct Lane {
    part: Arc<Partition>,
    /// The partition's key positions as of this lane's last look (see
    /// `token::KeyList`: append-only, so a position past its end is a key a
    /// reload added since; then the lane looks again).
    keys: Arc<Vec<KeyLoc>>,
    open: Option<Open>,
    /// Set by the offload watchdog's timeout: this lane's thread was
    /// replaced; it closes its session once the stuck call returns.
    pub quarantined: bool,
    /// Per key position: no new search for it before this time
    /// ([`now_ns`]); set when the key is missing from a token that still
    /// holds other private keys (a deleted key must not take its whole
    /// partition out of use).
    key_retry_at_ns: Vec<u64>,
    /// Whether a refused RSA decrypt was already explained in the log.
    decrypt_refusal_logged: bool,
    /// Keys this lane had found on its last session (at most
    /// [`EAGER_KEYS`]): after a rebuild, these are found again in the
    /// background; the others on first use. `None` before the first
    /// session: then the first [`EAGER_KEYS`] keys.
    in_use: Option<Vec<usize>>,
}

/// How long a lane waits before searching again for a key that is missing
/// from an otherwise healthy token (a key re-created under the same id is
/// back in use within this time).
pub const KEY_RETRY: std::time::Duration = std::time::Duration::from_millis(100);
/// Keys whose handles a lane finds as soon as its session opens (off the
/// request path): the first ones at start-up, the ones it was using after
/// a rebuild; the others are found on first use.
const EAGER_KEYS: usize = 16;

/// What `run_op` failed on inside the token.
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

/// What a token signs for an empty ECDSA digest. A software key signs the
/// empty digest (its integer is 0, SEC 1 section 4.1.3 step 5); so does a
/// digest of zero bytes, which every token accepts where some refuse an
/// empty input. The signature verifies against the empty digest.
const EMPTY_ECDSA_DIGEST: [u8; 32] = [0; 32];

/// Carry out `op` with key `h` of `kind`, appending the wire answer to `out`.
fn run_op(
    part: &Partition,
    s: &Session,
    h: ObjectHandle,
    kind: KeyKind,
    op: OpClass,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), OpFail> {
    // Input lengths were checked once, by dispatch (`keycore_keys::check_input`);
    // the stack buffer below only refuses what would not fit it.
    match (op, kind) {
        (OpClass::RsaPkcs1(hash), KeyKind::Rsa { .. }) => {
            // DigestInfo prefix (none for MD5‖SHA1) + digest, on the stack.
            let prefix = hash.digest_info_prefix();
            let mut buf = [0u8; 19 + 64];
            let n = prefix.len() + input.len();
            let encoded = buf.get_mut(..n).ok_or(OpFail::Input)?;
            encoded[..prefix.len()].copy_from_slice(prefix);
            encoded[prefix.len()..].copy_from_slice(input);
            out.extend_from_slice(&s.sign(&Mechanism::RsaPkcs, h, encoded)?);
        }
        (OpClass::RsaPss(hash), KeyKind::Rsa { .. }) => {
            let (hash_alg, mgf) = hash_mech(hash).ok_or(OpFail::Input)?;
            let params = PkcsPssParams {
                hash_alg,
                mgf,
                s_len: (hash.len() as u64).into(),
            };
            out.extend_from_slice(&s.sign(&Mechanism::RsaPkcsPss(params), h, input)?);
        }
        (OpClass::RsaDecrypt, KeyKind::Rsa { bits }) => {
            let k = bits.div_ceil(8);
            if !part.rsa_decrypt {
                return Err(OpFail::Input);
            }
            // CKM_RSA_X_509: the raw c^d mod n, left-padded to k bytes, the
            // same answer a software key gives (padding not removed).
            let mut m = s.decrypt(&Mechanism::RsaX509, h, input)?;
            if m.len() > k {
                super::token::wipe(&mut m);
                return Err(OpFail::Input);
            }
            out.resize(out.len() + (k - m.len()), 0);
            out.extend_from_slice(&m);
            super::token::wipe(&mut m);
        }
        (OpClass::Ecdsa(_), KeyKind::EcdsaP256 | KeyKind::EcdsaP384 | KeyKind::EcdsaP521) => {
            let digest = if input.is_empty() {
                &EMPTY_ECDSA_DIGEST[..]
            } else {
                input
            };
            let raw = s.sign(&Mechanism::Ecdsa, h, digest)?;
            ecdsa_der_from_raw(&raw, out).ok_or(OpFail::Input)?;
        }
        (OpClass::Ed25519, KeyKind::Ed25519) => {
            let sig = if part.eddsa_mech == super::token::CKM_EDDSA {
                let m = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
                s.sign(&m, h, input)?
            } else {
                // Thales Luna's vendor-defined CKM_EDDSA: pure Ed25519, no
                // parameters.
                let t = MechanismType::new_vendor_defined(part.eddsa_mech)
                    .map_err(|_| OpFail::Input)?;
                let m = Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(t, None));
                s.sign(&m, h, input)?
            };
            out.extend_from_slice(&sig);
        }
        _ => return Err(OpFail::Input),
    }
    Ok(())
}

impl Lane {
    /// A lane on `part`; the session is opened on first use.
    pub fn new(part: Arc<Partition>) -> Lane {
        let keys = part.keys.snapshot();
        Lane {
            key_retry_at_ns: vec![0; keys.len()],
            keys,
            part,
            open: None,
            quarantined: false,
            decrypt_refusal_logged: false,
            in_use: None,
        }
    }

    /// Whether a session is open (and of the module's current generation).
    pub fn is_open(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.generation == self.part.module.generation())
    }

    /// Open the session now and find the first keys' handles on it (start-up
    /// and after a session error: off the request path).
    pub fn warm_up(&mut self) -> Result<(), TokenError> {
        let part = self.part.clone();
        let locs = self.keys.clone();
        let keys = match self.in_use.take() {
            Some(v) => v,
            None => (0..locs.len().min(EAGER_KEYS)).collect(),
        };
        let o = self.ensure_open()?;
        if o.handles.len() < locs.len() {
            o.handles.resize(locs.len(), None);
        }
        let _g = part.module.enter();
        for k in keys {
            if o.handles[k].is_none() {
                if let Ok(Some(h)) = part.find_key(&o.session, &locs[k]) {
                    o.handles[k] = Some(h);
                }
            }
        }
        Ok(())
    }

    /// Throw the session away. A session of an older module generation is
    /// forgotten, not closed: its handle number may belong to a new session.
    pub fn reset(&mut self) {
        if let Some(o) = self.open.take() {
            // Remember which keys were in use, to find them again eagerly
            // (a rebuild costs a lookup per key: only the ones served here).
            self.in_use = Some(
                o.handles
                    .iter()
                    .enumerate()
                    .filter(|(_, h)| h.is_some())
                    .map(|(k, _)| k)
                    .take(EAGER_KEYS)
                    .collect(),
            );
            if o.generation == self.part.module.generation() {
                let _g = self.part.module.enter();
                drop(o.session);
            } else {
                std::mem::forget(o.session);
            }
        }
    }

    fn ensure_open(&mut self) -> Result<&mut Open, TokenError> {
        if self.open.is_some() && !self.is_open() {
            self.reset();
        }
        if self.open.is_none() {
            let p = &self.part;
            let generation = p.module.generation();
            // A new session of a logged-in application is logged in
            // (PKCS#11 v2.40 section 5.6); a logout is handled once, on the
            // control path, not per session.
            let session = {
                let _g = p.module.enter();
                p.open_session(p.slot()).map_err(TokenError::OpenSession)?
            };
            self.open = Some(Open {
                session,
                generation,
                handles: vec![None; self.keys.len()],
                checked_epoch: p.health.session_epoch(),
            });
        }
        Ok(self.open.as_mut().expect("just opened"))
    }

    /// One attempt at `op` with the partition's key `key` on this lane's
    /// session (opened if needed). No retry, no recovery: the caller decides
    /// from the [`Fail`].
    pub fn attempt(
        &mut self,
        key: usize,
        op: OpClass,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        if key >= self.keys.len() {
            // A key a reload added since this lane last looked.
            self.keys = self.part.keys.snapshot();
            self.key_retry_at_ns.resize(self.keys.len(), 0);
        }
        let Some(kind) = self.keys.get(key).map(|k| k.kind) else {
            // Not a position of this partition (cannot happen: positions
            // come from the store's groups, placed before they are handed
            // out); refuse rather than index out of range.
            return Err(Fail::KeyGone);
        };
        if self.key_retry_at_ns[key] > now_ns() {
            return Err(Fail::KeyGone);
        }
        let part = self.part.clone();
        let start = out.len();
        let epoch = part.health.session_epoch();
        if self.open.as_ref().is_some_and(|o| o.checked_epoch != epoch) {
            // Another session of this partition died since this one was
            // last checked: check it (one call) before trusting a request
            // to it; rebuild it here if it died too.
            let alive = {
                let o = self.open.as_ref().expect("checked above");
                let _g = part.module.enter();
                !matches!(
                    o.session.get_session_info(),
                    Err(CkError::Pkcs11(
                        cryptoki::error::RvError::SessionHandleInvalid
                            | cryptoki::error::RvError::SessionClosed,
                        _
                    ))
                )
            };
            if alive {
                if let Some(o) = self.open.as_mut() {
                    o.checked_epoch = epoch;
                }
            } else {
                self.reset();
                part.health.reopened();
            }
        }
        let o = self.ensure_open().map_err(Fail::Open)?;
        if key >= o.handles.len() {
            o.handles.resize(key + 1, None);
        }
        let _g = part.module.enter();
        let h = match o.handles[key] {
            Some(h) => h,
            None => {
                // The lane's own snapshot is borrowed with the session; the
                // partition's (one uncontended lock) costs nothing next to
                // the lookup's calls into the token.
                let locs = part.keys.snapshot();
                let loc = &locs[key];
                let mut found = part.find_key(&o.session, loc);
                if matches!(found, Ok(None)) && part.has_private_keys(&o.session) {
                    // Confirm before calling the key gone: a login made by
                    // the control path between the two searches makes a
                    // key invisible to the first one appear in the second.
                    found = part.find_key(&o.session, loc);
                    if matches!(found, Ok(None)) {
                        self.key_retry_at_ns[key] = now_ns() + KEY_RETRY.as_nanos() as u64;
                        return Err(Fail::KeyGone);
                    }
                }
                match found {
                    Ok(Some(h)) => {
                        o.handles[key] = Some(h);
                        h
                    }
                    // No private key visible at all: logged out (private
                    // objects are invisible to a public session), or the
                    // token lost its objects. A login is tried, and it is a
                    // strike: if logging in does not bring the keys back,
                    // the run of strikes gets the partition probed.
                    Ok(None) => {
                        if part.health.strike() {
                            super::recovery::want(&part, super::recovery::Want::Probe);
                        }
                        return Err(Fail::Token {
                            action: if part.has_pin() {
                                Action::Login
                            } else {
                                Action::Device
                            },
                            rv: super::policy::ckr::CKR_USER_NOT_LOGGED_IN,
                        });
                    }
                    Err(e) => {
                        let rv = rv_of(&e)
                            .map(rv_code)
                            .unwrap_or(super::policy::ckr::CKR_GENERAL_ERROR);
                        return Err(Fail::Token {
                            action: part.policy.classify_lookup(rv),
                            rv,
                        });
                    }
                }
            }
        };
        match run_op(&part, &o.session, h, kind, op, input, out) {
            Ok(()) => Ok(()),
            Err(OpFail::Input) => {
                out.truncate(start);
                Err(Fail::Input)
            }
            Err(OpFail::Ck(e)) => {
                out.truncate(start);
                let rv = rv_of(&e)
                    .map(rv_code)
                    .unwrap_or(super::policy::ckr::CKR_GENERAL_ERROR);
                let action = part.policy.classify(rv);
                if matches!(
                    rv,
                    super::policy::ckr::CKR_SESSION_HANDLE_INVALID
                        | super::policy::ckr::CKR_SESSION_CLOSED
                ) {
                    part.health.session_died();
                }
                if action == Action::Handle {
                    o.handles[key] = None;
                }
                drop(_g);
                if op == OpClass::RsaDecrypt && action == Action::Fail {
                    self.explain_decrypt_refusal(rv);
                }
                Err(Fail::Token { action, rv })
            }
        }
    }

    /// A token that refuses RSA decryption outright is usually a FIPS-mode
    /// one: say so once per lane, where an operator will look.
    fn explain_decrypt_refusal(&mut self, rv: u64) {
        use super::policy::ckr;
        let refusal = matches!(
            rv,
            ckr::CKR_MECHANISM_INVALID | 0x68 /* KEY_FUNCTION_NOT_PERMITTED */ | 0x200 /* FUNCTION_REJECTED */ | 0x54 /* FUNCTION_NOT_SUPPORTED */
        );
        if refusal && !self.decrypt_refusal_logged {
            self.decrypt_refusal_logged = true;
            let why = format!(
                "the token refused RSA decrypt ({}): FIPS-mode AWS CloudHSM clusters deprecated PKCS#1 v1.5 decryption and Thales Luna FIPS partitions restrict it; RSA key exchange (opcode 0x01) cannot be served from this partition (see docs/pkcs11)",
                super::policy::rv_name(rv)
            );
            tracing::warn!(partition = %self.part.name, "{why}");
            self.part.health.note_error(&why);
        }
    }

    /// Perform `op` synchronously (inline dispatch, on the reactor): one
    /// attempt, and after a session, handle, login or device error up to two
    /// more on a rebuilt session. Recovery runs here, on the reactor: inline
    /// dispatch is for in-process tokens, where it takes microseconds.
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
        let part = self.part.clone();
        // Three attempts: a token that killed every session also lost the
        // login, so a rebuilt session may need the login before it works.
        for attempt in 0..3 {
            let login_seen = part.health.login_epoch();
            let f = match self.attempt(key, op, input, out) {
                Ok(()) => {
                    part.health.ok();
                    return Ok(());
                }
                Err(f) => f,
            };
            let action = f.action();
            let suspect = part.health.error(action);
            match (&f, action) {
                (Fail::Input, _) => return Err(LaneError::Crypto),
                (Fail::KeyGone, _) | (_, Action::Fail) => return Err(LaneError::Failed),
                _ => {}
            }
            if attempt == 2 {
                if suspect {
                    super::recovery::want(&part, super::recovery::Want::Probe);
                }
                part.health.note_error(&f.describe());
                break;
            }
            part.health.retried();
            match action {
                Action::Busy | Action::Handle => {}
                Action::Login => {
                    if part.health.login_epoch() == login_seen {
                        match part.relogin() {
                            Ok(()) => part.health.relogged(),
                            Err(e) => part.health.note_error(&keycore_keys::error_chain(&e)),
                        }
                    }
                }
                Action::Session => {
                    part.health.reopened();
                    self.reset();
                    if let Fail::Open(_) = f {
                        // The session would not even open: find the token
                        // again, re-initialising the module if needed.
                        if let Err(e) = self.recover_sync() {
                            part.health.fail(&keycore_keys::error_chain(&e));
                            return Err(LaneError::Down);
                        }
                    }
                }
                Action::Device => {
                    part.health.reopened();
                    self.reset();
                    if let Err(e) = self.reinit_sync() {
                        part.health.fail(&keycore_keys::error_chain(&e));
                        return Err(LaneError::Down);
                    }
                }
                Action::Fail => unreachable!("returned above"),
            }
        }
        Err(LaneError::Failed)
    }

    /// Find the token again and make sure the login holds; re-initialise the
    /// module once if that fails (inline recovery).
    fn recover_sync(&mut self) -> Result<(), TokenError> {
        let p = self.part.clone();
        let found = p
            .find_slot()
            .and_then(|s| p.ensure_control(s).map_err(TokenError::Login));
        match found {
            Ok(()) => Ok(()),
            Err(first) => self.reinit_sync().map_err(|after| TokenError::AfterReinit {
                first: Box::new(first),
                after: Box::new(after),
            }),
        }
    }

    fn reinit_sync(&mut self) -> Result<(), TokenError> {
        let p = self.part.clone();
        p.module.reinit(p.module.generation())?;
        p.health.reinitialised();
        self.reset();
        let slot = p.find_slot()?;
        p.ensure_control(slot).map_err(TokenError::Login)
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
    fn pss_hashes_map_to_same_mgf() {
        assert!(hash_mech(Hash::Md5Sha1).is_none());
        let (h, m) = hash_mech(Hash::Sha384).unwrap();
        assert_eq!(h, MechanismType::SHA384);
        assert_eq!(m, PkcsMgfType::MGF1_SHA384);
    }
}
