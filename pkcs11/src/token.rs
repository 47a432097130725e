//! Partitions (one token in one slot of one module): finding the token a URI
//! names, logging in once, finding the private keys and reading their public
//! halves, and the partition's health.
//!
//! Owns: [`Partition`] (shared read-only by every core, except its health
//! counters, which are atomics) and start-up key discovery.
//! Must not: perform key operations (that is `session.rs`), or keep
//! per-core state.

use super::module::{Module, ModuleError};
use super::policy::{ErrorPolicy, Vendor};
use super::recovery::Recovery;
use super::uri::{DispatchMode, Pkcs11Uri};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use keycore_keys::KeyKind;
use keycore_protocol::Ski;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use zeroize::{Zeroize as _, Zeroizing};

/// First wait after a failed recovery; doubles per consecutive failure.
pub const BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest wait between two recovery attempts of a failed partition: a
/// partition that comes back is back in use within this time.
pub const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Most private keys one URI may load (a URI without `id`/`object` loads
/// every private key of the token).
pub const MAX_KEYS_PER_URI: usize = 4096;

/// Nanoseconds since the first call (a monotonic clock that fits an atomic).
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Why a partition's token could not be found, logged in to or checked (the
/// control path: start-up, recovery, probes). The library's error is the
/// source; the partition is named by whoever keeps the error.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `C_GetSlotList` failed.
    #[error("C_GetSlotList")]
    SlotList(#[source] CkError),
    /// Reading one slot's or token's information failed.
    #[error("slot {slot}")]
    SlotInfo {
        /// The slot ID.
        slot: u64,
        /// The library's answer.
        #[source]
        source: CkError,
    },
    /// More than one token matches the URI.
    #[error("{} tokens match (slots {slots:?}); add serial= or slot-id=", slots.len())]
    Ambiguous {
        /// The matching slot IDs.
        slots: Vec<u64>,
    },
    /// No token matches (any more).
    #[error("token not present")]
    NotPresent,
    /// `C_Login` again after the token logged the application out.
    #[error("C_Login")]
    Relogin(#[source] CkError),
    /// Opening or logging in the control session failed.
    #[error("login")]
    Login(#[source] CkError),
    /// `C_OpenSession` failed.
    #[error("C_OpenSession")]
    OpenSession(#[source] CkError),
    /// The token answers but shows none of its private keys.
    #[error("the token shows no private key")]
    NoPrivateKey,
    /// Re-initialising the module failed.
    #[error(transparent)]
    Module(#[from] ModuleError),
    /// Inline recovery: finding the token failed, and so did a
    /// re-initialisation after it.
    #[error("{}; after C_Initialize", keycore_keys::error_chain(.first))]
    AfterReinit {
        /// The first failure.
        first: Box<TokenError>,
        /// The failure after re-initialising.
        #[source]
        after: Box<TokenError>,
    },
}

/// Which token a URI names (the token and slot attributes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSelector {
    token: Option<String>,
    manufacturer: Option<String>,
    serial: Option<String>,
    model: Option<String>,
    slot_id: Option<u64>,
    slot_description: Option<String>,
    slot_manufacturer: Option<String>,
}

impl TokenSelector {
    fn from_uri(u: &Pkcs11Uri) -> Self {
        TokenSelector {
            token: u.token.clone(),
            manufacturer: u.manufacturer.clone(),
            serial: u.serial.clone(),
            model: u.model.clone(),
            slot_id: u.slot_id,
            slot_description: u.slot_description.clone(),
            slot_manufacturer: u.slot_manufacturer.clone(),
        }
    }

    fn matches(&self, ctx: &cryptoki::context::Pkcs11, slot: Slot) -> Result<bool, CkError> {
        if self.slot_id.is_some_and(|id| id != slot.id()) {
            return Ok(false);
        }
        let t = ctx.get_token_info(slot)?;
        let eq = |want: &Option<String>, have: &str| {
            want.as_deref()
                .is_none_or(|w| w.trim_end() == have.trim_end())
        };
        if !(eq(&self.token, t.label())
            && eq(&self.manufacturer, t.manufacturer_id())
            && eq(&self.serial, t.serial_number())
            && eq(&self.model, t.model()))
        {
            return Ok(false);
        }
        if self.slot_description.is_some() || self.slot_manufacturer.is_some() {
            let s = ctx.get_slot_info(slot)?;
            return Ok(eq(&self.slot_description, s.slot_description())
                && eq(&self.slot_manufacturer, s.manufacturer_id()));
        }
        Ok(true)
    }

    /// The one slot whose token matches. `Ok(None)` when none does.
    pub fn find(&self, module: &Module) -> Result<Option<Slot>, TokenError> {
        let _g = module.enter();
        let slots = module
            .ctx
            .get_slots_with_token()
            .map_err(TokenError::SlotList)?;
        let mut found = Vec::new();
        for s in slots {
            if self
                .matches(&module.ctx, s)
                .map_err(|source| TokenError::SlotInfo {
                    slot: s.id(),
                    source,
                })?
            {
                found.push(s);
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(Some(found[0])),
            _ => Err(TokenError::Ambiguous {
                slots: found.iter().map(|s| s.id()).collect(),
            }),
        }
    }
}

/// A list of the tokens a module shows, for "no token matches" errors.
fn describe_tokens(module: &Module) -> String {
    let _g = module.enter();
    let Ok(slots) = module.ctx.get_slots_with_token() else {
        return "(cannot list slots)".into();
    };
    let v: Vec<String> = slots
        .iter()
        .filter_map(|&s| {
            let t = module.ctx.get_token_info(s).ok()?;
            Some(format!(
                "{:?} serial {:?} slot {}",
                t.label().trim_end(),
                t.serial_number().trim_end(),
                s.id()
            ))
        })
        .collect();
    if v.is_empty() {
        "no tokens present".into()
    } else {
        format!("tokens present: {}", v.join(", "))
    }
}

/// Failed attempts in a row (no success in between, on any session of any
/// core) after which the partition is probed. One error on one session is
/// that session's problem; a run like this is evidence worth a probe, and
/// only a failed probe takes the partition out.
pub const SUSPECT_STREAK: u32 = 4;
/// Session re-opens per second one partition may make (all cores), and the
/// burst allowed above it: enough to replace every session at once after a
/// token-wide invalidation, not enough to hammer a device that is down.
pub const REOPEN_RATE: u64 = 500;
/// See [`REOPEN_RATE`].
pub const REOPEN_BURST: u64 = 64;

/// Health of one partition, shared by every core (atomics only).
#[derive(Debug, Default)]
pub struct Health {
    /// True while the partition is out of use (a probe failed).
    down: AtomicBool,
    /// No new recovery attempt before this time ([`now_ns`]).
    retry_at_ns: AtomicU64,
    /// Consecutive failed recoveries (drives the backoff).
    consecutive: AtomicU64,
    /// Times the partition was taken out.
    failures: AtomicU64,
    /// Times the partition came back after being out.
    recoveries: AtomicU64,
    /// Session re-opens (after a session error), successful or not.
    reopens: AtomicU64,
    /// `C_OpenSession` calls made for the partition (every session: the
    /// cores', the workers', the control path's), successful or not. A
    /// reload that keeps the store opens none (tests/hostile/reload.rs).
    sessions_opened: AtomicU64,
    /// Operations that hit the per-operation timeout.
    timeouts: AtomicU64,
    /// Failed attempts in a row across sessions (see [`SUSPECT_STREAK`]).
    streak: AtomicU32,
    /// Bumped by every login the control path makes after a logout.
    login_epoch: AtomicU64,
    /// Logins made again on the control path.
    relogins: AtomicU64,
    /// Module re-initialisations made for this partition.
    reinits: AtomicU64,
    /// Probes run, and how many failed.
    probes: AtomicU64,
    probe_failures: AtomicU64,
    /// Requests tried again after an error (on another session, after a
    /// login, after a busy answer).
    retries: AtomicU64,
    /// Errors from key operations, by the policy's action (`Action::ALL`
    /// order).
    errors: [AtomicU64; 6],
    /// Worker threads quarantined (stuck in a call past the timeout) and
    /// not yet returned.
    quarantined: AtomicU64,
    /// Bumped when a session turns out dead (`CKR_SESSION_HANDLE_INVALID`,
    /// `CKR_SESSION_CLOSED`): a token that kills one session often killed
    /// them all, so every lane checks its own (one cheap call) before its
    /// next operation instead of spending a request's attempt to find out.
    session_epoch: AtomicU64,
    /// Re-open rate limiter (GCRA: theoretical arrival time, [`now_ns`]).
    reopen_tat_ns: AtomicU64,
    /// Last failure, for the health report (written only on failure).
    last_error: Mutex<String>,
}

impl Health {
    /// Whether a request may use (or probe) the partition now.
    #[inline]
    pub fn usable(&self) -> bool {
        !self.down.load(Ordering::Relaxed) || now_ns() >= self.retry_at_ns.load(Ordering::Relaxed)
    }

    /// Whether the partition is currently considered up.
    #[inline]
    pub fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }

    /// Record a success: ends a failure run, brings an out partition back.
    #[inline]
    pub fn ok(&self) {
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
        if self.down.load(Ordering::Relaxed) {
            self.down.store(false, Ordering::Relaxed);
            self.consecutive.store(0, Ordering::Relaxed);
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Take the partition out (a probe or a recovery failed), with doubling
    /// backoff before the next probe.
    pub fn fail(&self, why: &str) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = BACKOFF_MIN.saturating_mul(1 << n).min(BACKOFF_MAX);
        self.retry_at_ns
            .store(now_ns() + backoff.as_nanos() as u64, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.note_error(why);
    }

    /// Remember `why` as the last error without changing the state.
    pub fn note_error(&self, why: &str) {
        let mut e = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        e.clear();
        e.push_str(why);
    }

    /// Count an error of a key operation by its action; returns true when
    /// this error completes a run of [`SUSPECT_STREAK`] failures (time to
    /// probe). Busy answers and plain request failures are not evidence.
    pub fn error(&self, a: super::policy::Action) -> bool {
        use super::policy::Action;
        let i = Action::ALL.iter().position(|x| *x == a).unwrap_or(0);
        self.errors[i].fetch_add(1, Ordering::Relaxed);
        if matches!(a, Action::Fail | Action::Busy | Action::Login) {
            return false;
        }
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_multiple_of(SUSPECT_STREAK)
    }

    /// A session was found dead; see the field.
    pub fn session_died(&self) {
        self.session_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// See [`Health::session_died`].
    pub fn session_epoch(&self) -> u64 {
        self.session_epoch.load(Ordering::Acquire)
    }

    /// One strike against the partition without an operation error (see
    /// [`SUSPECT_STREAK`]); true when it completes a suspect run.
    pub fn strike(&self) -> bool {
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_multiple_of(SUSPECT_STREAK)
    }

    /// Count a session re-open.
    pub fn reopened(&self) {
        self.reopens.fetch_add(1, Ordering::Relaxed);
    }

    /// Count an operation timeout (also a strike against the partition);
    /// returns true when it completes a suspect run.
    pub fn timed_out(&self) -> bool {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
        let n = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        n.is_multiple_of(SUSPECT_STREAK)
    }

    /// Count a timeout of a request that never reached the token (it waited
    /// in the queue past its deadline): not evidence against the partition.
    pub fn expired(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a retried request.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }

    /// The login epoch (see [`super::recovery`]).
    pub fn login_epoch(&self) -> u64 {
        self.login_epoch.load(Ordering::Acquire)
    }

    /// A login on the control path succeeded.
    pub fn relogged(&self) {
        self.relogins.fetch_add(1, Ordering::Relaxed);
        self.login_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// A module re-initialisation ran.
    pub fn reinitialised(&self) {
        self.reinits.fetch_add(1, Ordering::Relaxed);
    }

    /// A probe ran.
    pub fn probed(&self, ok: bool) {
        self.probes.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.probe_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A worker was quarantined (+1) or its stuck call returned (-1).
    pub fn quarantine(&self, delta: i64) {
        if delta >= 0 {
            self.quarantined.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let _ = self
                .quarantined
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                    Some(q.saturating_sub(delta.unsigned_abs()))
                });
        }
    }

    /// Take a re-open token: `None` when a re-open may start now, else how
    /// long to wait first ([`REOPEN_RATE`], [`REOPEN_BURST`]).
    pub fn reopen_wait(&self) -> Option<Duration> {
        let interval = 1_000_000_000 / REOPEN_RATE;
        let tolerance = interval * REOPEN_BURST;
        let now = now_ns();
        let mut tat = self.reopen_tat_ns.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            if base - now > tolerance {
                return Some(Duration::from_nanos(base - now - tolerance));
            }
            match self.reopen_tat_ns.compare_exchange_weak(
                tat,
                base + interval,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return None,
                Err(t) => tat = t,
            }
        }
    }

    /// Snapshot for the metrics endpoint.
    pub fn snapshot(&self, name: &str) -> PartitionHealth {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PartitionHealth {
            partition: name.to_string(),
            healthy: self.is_up(),
            failures: l(&self.failures),
            recoveries: l(&self.recoveries),
            reopens: l(&self.reopens),
            sessions_opened: l(&self.sessions_opened),
            timeouts: l(&self.timeouts),
            relogins: l(&self.relogins),
            reinits: l(&self.reinits),
            probes: l(&self.probes),
            probe_failures: l(&self.probe_failures),
            retries: l(&self.retries),
            errors: std::array::from_fn(|i| l(&self.errors[i])),
            quarantined: l(&self.quarantined),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }
}

/// One partition's health, as exported to the metrics endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionHealth {
    /// Token label, serial and module, for the metric label.
    pub partition: String,
    /// False while the partition is out of use (a probe failed).
    pub healthy: bool,
    /// Times it was taken out of use.
    pub failures: u64,
    /// Times it came back.
    pub recoveries: u64,
    /// Session re-opens after session errors.
    pub reopens: u64,
    /// `C_OpenSession` calls made for the partition.
    pub sessions_opened: u64,
    /// Operations that exceeded the per-operation timeout (or waited past it).
    pub timeouts: u64,
    /// Logins made again after a logout.
    pub relogins: u64,
    /// Module re-initialisations.
    pub reinits: u64,
    /// Probes run.
    pub probes: u64,
    /// Probes that failed (each takes the partition out or keeps it out).
    pub probe_failures: u64,
    /// Requests tried again after an error.
    pub retries: u64,
    /// Errors of key operations by action, in `policy::Action::ALL` order.
    pub errors: [u64; 6],
    /// Worker threads stuck in a call past the timeout.
    pub quarantined: u64,
    /// The last failure's description (empty if none).
    pub last_error: String,
}

/// One private key on a partition, as found at start-up.
#[derive(Debug, Clone)]
pub struct KeyLoc {
    /// `CKA_ID` read from the object (searched again after recovery).
    pub id: Vec<u8>,
    /// `CKA_LABEL` read from the object (used when the id is empty).
    pub label: Vec<u8>,
    /// Kind and public key (checked again after recovery: a re-created key
    /// with the same id but another key pair is not silently used).
    pub kind: KeyKind,
    /// The SKI of its public key.
    pub ski: Ski,
    /// DER SubjectPublicKeyInfo.
    pub spki: Vec<u8>,
}

/// The keys found on a partition, by position. Append-only: a position,
/// once given, names the same key pair for the store's life (the cores'
/// HA groups, the offload workers' lanes and requests of an older reload
/// generation may still hold it), so a reload that finds a new key appends
/// it, and one that no longer finds a key leaves its position unused
/// ("retired"). A key that comes back after a scan missed it gets a new
/// position, so no lane reuses a handle it found before the key went away
/// (a token may give the old handle number to another object).
///
/// Readers keep a snapshot ([`KeyList::snapshot`]) and take a new one only
/// when they meet a position past its end: no lock on the data path. The
/// mutex is taken by the control path (open, reload) and by a lane meeting
/// a key added since its snapshot (once per lane per added key).
#[derive(Debug, Default)]
pub struct KeyList {
    inner: Mutex<KeyListInner>,
}

#[derive(Debug, Default)]
struct KeyListInner {
    all: Arc<Vec<KeyLoc>>,
    /// Positions the last scan found (the others are retired).
    live: Vec<usize>,
}

impl KeyList {
    /// Every key position so far (retired ones included).
    pub fn snapshot(&self) -> Arc<Vec<KeyLoc>> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .all
            .clone()
    }

    /// The position for `k` found by the scan in progress, whose positions
    /// so far are `scan`: the one this scan already gave the same key pair
    /// (two URIs selecting it), else the one the last scan found it at,
    /// else a new one. Adds it to `scan`.
    pub fn place(&self, k: KeyLoc, scan: &mut Vec<usize>) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let same = |&p: &usize| g.all[p].ski == k.ski;
        if let Some(p) = scan.iter().copied().find(same) {
            return p;
        }
        let p = match g.live.iter().copied().find(same) {
            Some(p) => p,
            None => {
                Arc::make_mut(&mut g.all).push(k);
                g.all.len() - 1
            }
        };
        scan.push(p);
        p
    }

    /// End a scan: the positions in `scan` are the live ones now.
    pub fn set_live(&self, scan: &[usize]) {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).live = scan.to_vec();
    }

    /// Whether the last scan found no key.
    pub fn is_empty(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live
            .is_empty()
    }
}

/// One token in one slot of one module.
#[derive(Debug)]
pub struct Partition {
    /// Position in the store's partition list.
    pub index: usize,
    /// Human-readable name (label, serial, module) for errors and metrics.
    pub name: String,
    /// The library.
    pub module: Arc<Module>,
    selector: TokenSelector,
    /// Current slot id (slot ids may change across re-initialisation).
    slot: AtomicU64,
    pin: Option<Pin>,
    login_user: u64,
    /// Keys found on this partition (append-only; see [`KeyList`]).
    pub keys: KeyList,
    /// How requests reach it.
    pub dispatch: DispatchMode,
    /// Sessions (= worker threads in offload mode) per core.
    pub sessions_per_core: u32,
    /// Longest one offloaded operation may take.
    pub op_timeout: Duration,
    /// Shared health.
    pub health: Health,
    /// What each error means on this partition (vendor preset + URI).
    pub policy: ErrorPolicy,
    /// The control path (login again, re-initialise, probe); shared with its
    /// thread.
    pub recovery: Arc<Recovery>,
    /// Whether the token offers `CKM_RSA_X_509` for decryption (YubiHSM 2
    /// does not: RSA decrypt is refused there, see docs/pkcs11/yubihsm.md).
    pub rsa_decrypt: bool,
    /// The mechanism for Ed25519 keys: the standard `CKM_EDDSA`, or Thales
    /// Luna's vendor-defined one where only that is offered.
    pub eddsa_mech: u64,
    /// The session that keeps the login alive (PKCS#11 logs the application
    /// out when its last session on a token closes). Control plane only.
    control: Mutex<Option<(Session, u64)>>,
}

/// Is `e` a PKCS#11 return value in `set`?
pub fn rv_of(e: &CkError) -> Option<RvError> {
    match e {
        CkError::Pkcs11(rv, _) => Some(*rv),
        _ => None,
    }
}

impl Partition {
    /// Whether this partition is the token in `slot` of `module`.
    pub fn is_token(&self, module: &Arc<Module>, slot: Slot) -> bool {
        Arc::ptr_eq(&self.module, module) && self.slot.load(Ordering::Relaxed) == slot.id()
    }

    /// The slot currently used.
    pub fn slot(&self) -> Slot {
        // CK_SLOT_ID is an unsigned long: 64 bits on the LP64 targets keycore
        // builds for, so the conversion cannot fail.
        Slot::try_from(self.slot.load(Ordering::Relaxed)).expect("CK_SLOT_ID is 64 bits")
    }

    /// Whether the partition logs in (has a PIN).
    pub fn has_pin(&self) -> bool {
        self.pin.is_some()
    }

    /// Find the token again (after re-initialisation) and remember its slot.
    pub fn find_slot(&self) -> Result<Slot, TokenError> {
        match self.selector.find(&self.module)? {
            Some(s) => {
                self.slot.store(s.id(), Ordering::Relaxed);
                Ok(s)
            }
            None => Err(TokenError::NotPresent),
        }
    }

    /// Open a session: read-write, as AWS CloudHSM SDK 5 requires (a
    /// read-only `C_OpenSession` fails there with `CKR_FUNCTION_FAILED`,
    /// known issue ki-pkcs11-13); read-only where the token is
    /// write-protected. keycore never writes to a token either way.
    pub fn open_session(&self, slot: Slot) -> Result<Session, CkError> {
        self.health.sessions_opened.fetch_add(1, Ordering::Relaxed);
        match self.module.ctx.open_rw_session(slot) {
            Err(CkError::Pkcs11(RvError::TokenWriteProtected, _)) => {
                self.module.ctx.open_ro_session(slot)
            }
            r => r,
        }
    }

    /// Log in on `session`; with `force`, call `C_Login` even when the
    /// session reports a logged-in state (after `CKR_USER_NOT_LOGGED_IN`
    /// the reported state is not to be trusted).
    pub fn login_with(&self, session: &Session, force: bool) -> Result<(), CkError> {
        let Some(pin) = &self.pin else {
            return Ok(());
        };
        if force {
            // fall through to C_Login
        } else if let Ok(info) = session.get_session_info() {
            if matches!(
                info.session_state(),
                SessionState::RoUser | SessionState::RwUser
            ) {
                return Ok(());
            }
        }
        let user = match self.login_user {
            super::uri::CKU_USER => UserType::User,
            n => UserType::VendorExtension(n as u32),
        };
        // RawAuthPin wipes its copy when dropped.
        match session.login_with_raw(user, &RawAuthPin::new(Box::new(pin.0.to_vec()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Make sure the login-keeping session exists and is logged in (after a
    /// re-initialisation, the old one is gone).
    pub fn ensure_control(&self, slot: Slot) -> Result<(), CkError> {
        self.control_login(slot, false)
    }

    fn control_login(&self, slot: Slot, force: bool) -> Result<(), CkError> {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let _g = self.module.enter();
        let gen = self.module.generation();
        if let Some((s, g)) = c.take() {
            if g == gen {
                match self.login_with(&s, force) {
                    Ok(()) => {
                        *c = Some((s, g));
                        if force {
                            self.login_event(None);
                        }
                        return Ok(());
                    }
                    // Wrong PIN and friends: a new session will not help.
                    Err(e @ CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLocked, _)) => {
                        *c = Some((s, g));
                        self.login_event(Some(&e));
                        return Err(e);
                    }
                    Err(_) => drop(s),
                }
            } else {
                std::mem::forget(s); // handle belongs to a finalised library
            }
        }
        let s = self.open_session(slot)?;
        let r = self.login_with(&s, force);
        self.login_event(r.as_ref().err());
        r?;
        *c = Some((s, gen));
        Ok(())
    }

    /// An audit record of a `C_Login` on the control path (issue 18): the
    /// partition's name and the result, never the PIN.
    fn login_event(&self, err: Option<&CkError>) {
        if self.pin.is_none() {
            return;
        }
        let result = err.map_or_else(|| "ok".to_owned(), |e| e.to_string());
        keycore_keys::emit_event(
            "hsm_login",
            &[("partition", &self.name), ("result", &result)],
        );
    }

    /// Log in again on the control path after the token logged the
    /// application out (`CKR_USER_NOT_LOGGED_IN` on a key operation). One
    /// `C_Login` serves every session of the application (PKCS#11 v2.40
    /// section 5.6: the login state is shared by all sessions).
    pub fn relogin(&self) -> Result<(), TokenError> {
        let slot = self.slot();
        self.control_login(slot, true).map_err(TokenError::Relogin)
    }

    /// Reload: the keys `uri` (one of the URIs this partition was opened
    /// from) selects now, found on the control session: no session is
    /// opened, and no `C_Login` is made while the login holds.
    pub fn rescan(
        &self,
        uri: &Pkcs11Uri,
        skip_failed_keys: bool,
        warnings: &mut Vec<String>,
    ) -> Result<Vec<KeyLoc>, super::uri::UriError> {
        let attr = token_attribute(uri);
        self.ensure_control(self.slot()).map_err(|e| {
            uri.error(
                attr,
                format!("the login session could not be kept or opened again: {e}"),
            )
        })?;
        let c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let _g = self.module.enter();
        match c.as_ref() {
            Some((session, gen)) if *gen == self.module.generation() => {
                find_keys(session, self, uri, skip_failed_keys, warnings)
            }
            // Re-initialised between the two (a recovery ran): its session
            // is gone; the next reload finds the new one.
            _ => Err(uri.error(
                attr,
                "the module was re-initialised during the reload; reload again",
            )),
        }
    }

    /// Check the partition end to end: the token is there, a session opens,
    /// the login holds, the keys are visible. Control path only.
    pub fn probe(&self) -> Result<(), TokenError> {
        let slot = self.find_slot()?;
        self.ensure_control(slot).map_err(TokenError::Login)?;
        let _g = self.module.enter();
        let s = self.open_session(slot).map_err(TokenError::OpenSession)?;
        if self.keys.is_empty() || self.has_private_keys(&s) {
            Ok(())
        } else {
            Err(TokenError::NoPrivateKey)
        }
    }

    /// Whether `session` sees at least one private key (a cheap check that
    /// the token's objects are there at all).
    pub fn has_private_keys(&self, session: &Session) -> bool {
        session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .is_ok_and(|v| !v.is_empty())
    }

    /// Find the private key `k` on `session` (object handles are
    /// session-specific on some tokens, AWS CloudHSM SDK 5 among them, so
    /// every session finds its own) and check it is still the same key pair.
    /// `Ok(None)`: no such key on the token.
    pub fn find_key(
        &self,
        session: &Session,
        loc: &KeyLoc,
    ) -> Result<Option<ObjectHandle>, CkError> {
        let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if loc.id.is_empty() {
            tmpl.push(Attribute::Label(loc.label.clone()));
        } else {
            tmpl.push(Attribute::Id(loc.id.clone()));
        }
        let mut last = None;
        for h in session.find_objects(&tmpl)? {
            match read_public(session, h) {
                Ok(found) if found.ski == loc.ski => return Ok(Some(h)),
                Ok(_) => {}
                Err(e) => last = Some(e),
            }
        }
        // A lookup that failed on the token (throttled, session lost) is
        // not "key gone": report the token's error.
        match last {
            Some(ReadError::Ck(e)) => Err(e),
            _ => Ok(None),
        }
    }
}

/// Why a public key could not be read.
#[derive(Debug)]
enum ReadError {
    /// The token failed the call.
    Ck(CkError),
    /// The key is not usable (unsupported type, missing attributes).
    Key(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Ck(e) => write!(f, "{e}"),
            ReadError::Key(s) => f.write_str(s),
        }
    }
}

impl From<String> for ReadError {
    fn from(s: String) -> Self {
        ReadError::Key(s)
    }
}

impl From<&str> for ReadError {
    fn from(s: &str) -> Self {
        ReadError::Key(s.to_string())
    }
}

/// A PIN held in memory: wiped when dropped (`Zeroizing`), never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Pin(pub Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pin(***)")
    }
}

/// Overwrite `b` with zeros in a way the optimiser keeps (`zeroize`), for
/// a buffer that held a secret and is handed on (an RSA decrypt's result).
pub fn wipe(b: &mut [u8]) {
    b.zeroize();
}

/// A key's public half read from the token.
struct Public {
    kind: KeyKind,
    spki: Vec<u8>,
    ski: Ski,
}

fn attr_bytes(attrs: &[Attribute], which: AttributeType) -> Option<&[u8]> {
    attrs.iter().find_map(|a| match (a, which) {
        (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::EcParams(v), AttributeType::EcParams)
        | (Attribute::EcPoint(v), AttributeType::EcPoint)
        | (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Label(v), AttributeType::Label) => Some(v.as_slice()),
        _ => None,
    })
}

/// Read the public key of private key `h`, in this order:
/// 1. `CKA_PUBLIC_KEY_INFO` on the private object (PKCS#11 v2.40), where
///    the token fills it in;
/// 2. RSA: the private object's modulus and exponent; EC/EdDSA: a
///    `CKA_EC_POINT` on the private object, where the vendor offers one;
/// 3. the public key object with the same `CKA_ID` (else the same
///    `CKA_LABEL`, for keys made without an id, e.g. Luna's without `-id`).
///
/// Ed25519 keys are recognised by the standard `CKK_EC_EDWARDS` and by
/// Thales Luna's vendor-defined one.
fn read_public(session: &Session, h: ObjectHandle) -> Result<Public, ReadError> {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Label,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcParams,
                AttributeType::EcPoint,
                AttributeType::PublicKeyInfo,
            ],
        )
        .map_err(ReadError::Ck)?;
    let key_type = attrs
        .iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        })
        .ok_or("key has no CKA_KEY_TYPE")?;
    let kt: u64 = key_type.into();
    let eddsa = key_type == KeyType::EC_EDWARDS || kt == super::policy::LUNA_CKK_EC_EDWARDS;
    let info = attrs.iter().find_map(|a| match a {
        Attribute::PublicKeyInfo(v) if !v.is_empty() => Some(v.as_slice()),
        _ => None,
    });
    let (spki, kind) = if let Some(info) = info {
        let (spki, kind) = keycore_keys::spki_from_info(info).map_err(|e| e.to_string())?;
        let fits = match kind {
            KeyKind::Rsa { .. } => key_type == KeyType::RSA,
            KeyKind::Ed25519 => eddsa,
            _ => key_type == KeyType::EC,
        };
        if !fits {
            return Err(
                format!("CKA_PUBLIC_KEY_INFO does not match CKA_KEY_TYPE {key_type}").into(),
            );
        }
        (spki, kind)
    } else if key_type == KeyType::RSA {
        let n = attr_bytes(&attrs, AttributeType::Modulus);
        let e = attr_bytes(&attrs, AttributeType::PublicExponent);
        let (n, e) = match (n, e) {
            (Some(n), Some(e)) if !n.is_empty() && !e.is_empty() => (n.to_vec(), e.to_vec()),
            _ => {
                let p = public_object(session, &attrs, key_type)?;
                let pa = session
                    .get_attributes(p, &[AttributeType::Modulus, AttributeType::PublicExponent])
                    .map_err(ReadError::Ck)?;
                match (
                    attr_bytes(&pa, AttributeType::Modulus),
                    attr_bytes(&pa, AttributeType::PublicExponent),
                ) {
                    (Some(n), Some(e)) => (n.to_vec(), e.to_vec()),
                    _ => return Err("RSA key without modulus/exponent".into()),
                }
            }
        };
        let (spki, bits) = keycore_keys::rsa_spki(&n, &e).map_err(|e| e.to_string())?;
        (spki, KeyKind::Rsa { bits })
    } else if key_type == KeyType::EC || eddsa {
        let own = (
            attr_bytes(&attrs, AttributeType::EcParams).filter(|v| !v.is_empty()),
            attr_bytes(&attrs, AttributeType::EcPoint).filter(|v| !v.is_empty()),
        );
        let pa;
        let (params, point) = match own {
            (Some(params), Some(point)) => (params, point),
            _ => {
                let p = public_object(session, &attrs, key_type)?;
                pa = session
                    .get_attributes(p, &[AttributeType::EcParams, AttributeType::EcPoint])
                    .map_err(ReadError::Ck)?;
                let (Some(params), Some(point)) = (
                    attr_bytes(&pa, AttributeType::EcParams),
                    attr_bytes(&pa, AttributeType::EcPoint),
                ) else {
                    return Err("public key object without CKA_EC_PARAMS/CKA_EC_POINT".into());
                };
                (params, point)
            }
        };
        if eddsa {
            (
                keycore_keys::ed25519_spki(params, point).map_err(|e| e.to_string())?,
                KeyKind::Ed25519,
            )
        } else {
            keycore_keys::ec_spki(params, point).map_err(|e| e.to_string())?
        }
    } else {
        return Err(format!("unsupported key type {key_type}").into());
    };
    let ski = keycore_keys::ski_from_spki(&spki).map_err(|e| format!("SPKI: {e}"))?;
    Ok(Public { kind, spki, ski })
}

/// The public key object of a private key: same key type and `CKA_ID`, or,
/// for a private key without an id, the same `CKA_LABEL`.
fn public_object(
    session: &Session,
    priv_attrs: &[Attribute],
    key_type: KeyType,
) -> Result<ObjectHandle, ReadError> {
    let id = attr_bytes(priv_attrs, AttributeType::Id).filter(|id| !id.is_empty());
    let label = attr_bytes(priv_attrs, AttributeType::Label).filter(|l| !l.is_empty());
    let by = match (id, label) {
        (Some(id), _) => Attribute::Id(id.to_vec()),
        (None, Some(l)) => Attribute::Label(l.to_vec()),
        (None, None) => {
            return Err("the private key has no CKA_ID nor CKA_LABEL and the token offers no CKA_PUBLIC_KEY_INFO/CKA_EC_POINT on it, so its public key cannot be found".into())
        }
    };
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(key_type),
            by,
        ])
        .map_err(ReadError::Ck)?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no public key object with the private key's {} and the token offers no CKA_PUBLIC_KEY_INFO/CKA_EC_POINT on the private key",
            if id.is_some() { "CKA_ID" } else { "CKA_LABEL" }
        )
        .into()),
        // Several public keys share the label (no id): ambiguous.
        _ if id.is_none() => Err("several public key objects share the private key's CKA_LABEL (and it has no CKA_ID)".into()),
        [first, ..] => Ok(*first),
    }
}

/// Settings a partition takes from the (first) URI naming it.
#[derive(Debug, Clone, Copy)]
pub struct PartitionSettings {
    /// Dispatch mode.
    pub dispatch: DispatchMode,
    /// Sessions per core.
    pub sessions_per_core: u32,
    /// Per-operation timeout.
    pub op_timeout: Duration,
    /// Reactors that will open sessions (for the session-count checks).
    pub cores: u32,
    /// `key_load_errors: skip`: a key that cannot be used is skipped with a
    /// warning instead of failing start-up.
    pub skip_failed_keys: bool,
}

/// Open (or reuse, when `existing` already has it) the partition a URI names
/// and find the keys it selects. Returns the partition index and the keys
/// found (the caller places them in the partition's [`KeyList`]).
pub fn open_uri(
    uri: &Pkcs11Uri,
    existing: &mut Vec<Arc<Partition>>,
    settings: impl Fn(&Module) -> PartitionSettings,
    warnings: &mut Vec<String>,
) -> Result<(usize, Vec<KeyLoc>), super::uri::UriError> {
    let path = super::module::resolve(uri.module_path.as_deref(), uri.module_name.as_deref())
        .map_err(|r| {
            uri.error(
                if uri.module_path.is_some() {
                    "module-path"
                } else {
                    "module-name"
                },
                keycore_keys::error_chain(&r),
            )
        })?;
    let module = super::module::load(&path)
        .map_err(|r| uri.error("module-path", keycore_keys::error_chain(&r)))?;
    if let Some((maj, min)) = uri.library_version {
        let info = module
            .ctx
            .get_library_info()
            .map_err(|e| uri.error("library-version", e.to_string()))?;
        let v = info.library_version();
        if (v.major(), v.minor()) != (maj, min) {
            return Err(uri.error(
                "library-version",
                format!("library is {}.{}", v.major(), v.minor()),
            ));
        }
    }
    if uri.library_manufacturer.is_some() || uri.library_description.is_some() {
        let info = module
            .ctx
            .get_library_info()
            .map_err(|e| uri.error("library-manufacturer", e.to_string()))?;
        if uri
            .library_manufacturer
            .as_deref()
            .is_some_and(|m| m != info.manufacturer_id().trim_end())
        {
            return Err(uri.error(
                "library-manufacturer",
                format!("library says {:?}", info.manufacturer_id().trim_end()),
            ));
        }
        if uri
            .library_description
            .as_deref()
            .is_some_and(|m| m != info.library_description().trim_end())
        {
            return Err(uri.error(
                "library-description",
                format!("library says {:?}", info.library_description().trim_end()),
            ));
        }
    }
    let selector = TokenSelector::from_uri(uri);
    let tok_attr = token_attribute(uri);
    let uri_err = |r: &dyn std::error::Error| uri.error(tok_attr, keycore_keys::error_chain(r));
    let mut slot = selector.find(&module).map_err(|r| uri_err(&r))?;
    if slot.is_none() {
        // Many modules (SoftHSM among them) fix their slot list at
        // C_Initialize: a token created since then appears only after a
        // re-initialisation. Start-up is the control plane; one is cheap.
        module
            .reinit(module.generation())
            .map_err(|r| uri_err(&r))?;
        slot = selector.find(&module).map_err(|r| uri_err(&r))?;
    }
    let slot = slot.ok_or_else(|| {
        uri.error(
            tok_attr,
            format!("no token matches ({})", describe_tokens(&module)),
        )
    })?;
    let pin = uri.pin()?.map(Pin);
    let s = settings(&module);

    let pi = match existing.iter().position(|p| p.is_token(&module, slot)) {
        Some(pi) => {
            if pin.is_some() && existing[pi].pin.is_some() && existing[pi].pin != pin {
                return Err(uri.error(
                    "pin-value",
                    "another URI gives a different PIN for the same token",
                ));
            }
            pi
        }
        None => {
            let info = {
                let _g = module.enter();
                module
                    .ctx
                    .get_token_info(slot)
                    .map_err(|e| uri.error(tok_attr, e.to_string()))?
            };
            let file = module
                .path
                .file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("");
            let vendor = uri.vendor.unwrap_or_else(|| Vendor::detect(file));
            let dispatch = uri.dispatch.unwrap_or(s.dispatch);
            let sessions_per_core = uri.sessions_per_core.unwrap_or(s.sessions_per_core);
            check_sessions(
                uri,
                &info,
                vendor,
                dispatch,
                sessions_per_core,
                s.cores,
                warnings,
            )?;
            let (rsa_decrypt, eddsa_mech) = mechanisms(&module, slot);
            let p = Partition {
                index: existing.len(),
                name: format!(
                    "{}/{} ({})",
                    info.label().trim_end(),
                    info.serial_number().trim_end(),
                    module.path.display()
                ),
                module: module.clone(),
                selector,
                slot: AtomicU64::new(slot.id()),
                pin: pin.clone(),
                login_user: uri.login_user,
                keys: KeyList::default(),
                dispatch,
                sessions_per_core,
                op_timeout: uri.op_timeout.unwrap_or(s.op_timeout),
                health: Health::default(),
                policy: ErrorPolicy {
                    vendor,
                    overrides: uri.on_error.clone(),
                },
                recovery: Arc::new(Recovery::default()),
                rsa_decrypt,
                eddsa_mech,
                control: Mutex::new(None),
            };
            if p.pin.is_none() && info.login_required() {
                return Err(uri.error(
                    "pin-value",
                    "the token requires a login: give pin-value or pin-source",
                ));
            }
            existing.push(Arc::new(p));
            existing.len() - 1
        }
    };
    let part = &existing[pi];
    part.ensure_control(slot).map_err(|e| {
        let attr = if uri.pin_source.is_some() {
            "pin-source"
        } else {
            "pin-value"
        };
        match e {
            CkError::Pkcs11(RvError::PinIncorrect, _) => {
                uri.error(attr, "wrong PIN (CKR_PIN_INCORRECT)")
            }
            CkError::Pkcs11(RvError::PinLocked, _) => uri.error(attr, "PIN locked (CKR_PIN_LOCKED)"),
            CkError::Pkcs11(
                rv @ (RvError::PinInvalid | RvError::PinLenRange | RvError::PinExpired),
                _,
            ) => uri.error(attr, format!("the token refused the PIN: {rv}")),
            CkError::Pkcs11(RvError::UserTypeInvalid, _) => uri.error(
                "x-login-user",
                "the token does not know this user type (CKR_USER_TYPE_INVALID)",
            ),
            // Not the PIN's fault: say which call failed.
            CkError::Pkcs11(rv, cryptoki::context::Function::OpenSession) => uri.error(
                tok_attr,
                format!(
                    "C_OpenSession (read-write) failed: {}{}",
                    super::policy::rv_name(super::policy::rv_code(rv)),
                    if rv == RvError::FunctionFailed {
                        " (AWS CloudHSM refuses read-only sessions; check the client daemon/cluster connection)"
                    } else {
                        ""
                    }
                ),
            ),
            e => uri.error(tok_attr, format!("login failed, not because of the PIN: {e}")),
        }
    })?;

    // Find the private keys this URI selects, on a short-lived session.
    let found = {
        let _g = part.module.enter();
        let session = part
            .open_session(slot)
            .map_err(|e| uri.error(tok_attr, format!("C_OpenSession: {e}")))?;
        find_keys(&session, part, uri, s.skip_failed_keys, warnings)?
    };
    Ok((pi, found))
}

/// The URI attribute that names the token, for errors about it.
fn token_attribute(uri: &Pkcs11Uri) -> &'static str {
    if uri.token.is_some() {
        "token"
    } else if uri.serial.is_some() {
        "serial"
    } else {
        "slot-id"
    }
}

/// The private keys `uri` selects on `part`, read on `session` (with their
/// public halves). A key that cannot be used fails the URI, or is skipped
/// with a warning under `key_load_errors: skip`; no usable key at all fails
/// it either way.
fn find_keys(
    session: &Session,
    part: &Partition,
    uri: &Pkcs11Uri,
    skip_failed_keys: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<KeyLoc>, super::uri::UriError> {
    let mut skipped = 0usize;
    let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(id) = &uri.id {
        tmpl.push(Attribute::Id(id.clone()));
    }
    if let Some(l) = &uri.object {
        tmpl.push(Attribute::Label(l.clone()));
    }
    let handles = session
        .find_objects(&tmpl)
        .map_err(|e| uri.error("object", format!("C_FindObjects: {e}")))?;
    if handles.len() > MAX_KEYS_PER_URI {
        return Err(uri.error(
            "object",
            format!("more than {MAX_KEYS_PER_URI} private keys match"),
        ));
    }
    let attr = if uri.id.is_some() { "id" } else { "object" };
    let mut found = Vec::new();
    for h in handles {
        let read = read_public(session, h).map_err(|e| e.to_string()).and_then(|p| {
            let a = session
                .get_attributes(h, &[AttributeType::Id, AttributeType::Label])
                .map_err(|e| e.to_string())?;
            let id = attr_bytes(&a, AttributeType::Id).unwrap_or_default().to_vec();
            let label = attr_bytes(&a, AttributeType::Label).unwrap_or_default().to_vec();
            if id.is_empty() && label.is_empty() {
                return Err("a matching key has neither CKA_ID nor CKA_LABEL, so it cannot be found again after recovery".into());
            }
            Ok(KeyLoc {
                id,
                label,
                kind: p.kind,
                ski: p.ski,
                spki: p.spki,
            })
        });
        match read {
            Ok(k) => found.push(k),
            Err(r) if skip_failed_keys => {
                skipped += 1;
                warnings.push(format!(
                    "{}: skipping a private key that cannot be used (key_load_errors: skip): {r}",
                    uri.display
                ))
            }
            Err(r) => {
                return Err(uri.error(
                    attr,
                    format!("{r} (set key_load_errors: skip to start without this key)"),
                ))
            }
        }
    }
    if found.is_empty() {
        let why = if skipped > 0 {
            format!("no usable private key on the token matches ({skipped} skipped)")
        } else {
            "no private key on the token matches".into()
        };
        return Err(uri.error(attr, why));
    }
    if !part.rsa_decrypt && found.iter().any(|k| matches!(k.kind, KeyKind::Rsa { .. })) {
        warnings.push(format!(
            "{}: the token offers no CKM_RSA_X_509, so RSA decrypt (opcode 0x01) is refused for its keys (signing works); rebuilding the block from CKM_RSA_PKCS would turn padding errors into a Bleichenbacher oracle",
            uri.display
        ));
    }
    Ok(found)
}

/// Whether the token offers `CKM_RSA_X_509` (decrypt), and which mechanism
/// signs with Ed25519 keys. A token that cannot list its mechanisms is
/// assumed to offer the standard ones (the operation then fails clearly).
fn mechanisms(module: &Module, slot: Slot) -> (bool, u64) {
    let _g = module.enter();
    let Ok(list) = module.ctx.get_mechanism_list(slot) else {
        return (true, CKM_EDDSA);
    };
    let has = |m: u64| list.iter().any(|t| u64::from(*t) == m);
    let rsa_decrypt = has(CKM_RSA_X_509);
    // cryptoki's mechanism list drops vendor-defined types, so Luna's
    // vendor CKM_EDDSA is asked for by number.
    let luna = || {
        cryptoki::mechanism::MechanismType::new_vendor_defined(super::policy::LUNA_CKM_EDDSA)
            .is_ok_and(|t| module.ctx.get_mechanism_info(slot, t).is_ok())
    };
    let eddsa = if !has(CKM_EDDSA) && luna() {
        super::policy::LUNA_CKM_EDDSA
    } else {
        CKM_EDDSA
    };
    (rsa_decrypt, eddsa)
}

/// `CKM_RSA_X_509`.
pub const CKM_RSA_X_509: u64 = 0x03;
/// `CKM_EDDSA` (PKCS#11 3.0).
pub const CKM_EDDSA: u64 = 0x1057;

/// Extra sessions a core may hold for one partition beyond its configured
/// ones: replacements for workers stuck in a call past the timeout (see
/// dispatch.rs), plus the partition's control session.
pub fn extra_sessions(sessions_per_core: u32) -> u32 {
    super::dispatch::max_stuck(sessions_per_core) as u32
}

/// Check the sessions keycore will open against what the token and the
/// vendor allow, and say so when `max-sessions` cannot be honoured.
fn check_sessions(
    uri: &Pkcs11Uri,
    info: &cryptoki::slot::TokenInfo,
    vendor: Vendor,
    dispatch: DispatchMode,
    sessions_per_core: u32,
    cores: u32,
    warnings: &mut Vec<String>,
) -> Result<(), super::uri::UriError> {
    let cores = cores.max(1);
    let per_core = match dispatch {
        DispatchMode::Inline => 1,
        DispatchMode::Offload => sessions_per_core.max(1),
    };
    if let Some(n) = uri.max_sessions {
        if n < cores {
            warnings.push(format!(
                "{}: max-sessions={n} is below the number of cores ({cores}): every core needs its own session, so keycore opens {cores} (one per core); lower `cores` or raise max-sessions",
                uri.display
            ));
        }
    }
    // Steady state: every core's sessions plus the control session.
    let steady = cores as u64 * per_core as u64 + 2;
    let worst = steady
        + match dispatch {
            DispatchMode::Inline => 0,
            DispatchMode::Offload => cores as u64 * extra_sessions(per_core) as u64,
        };
    let attr = if uri.sessions_per_core.is_some() {
        "x-sessions-per-core"
    } else if uri.max_sessions.is_some() {
        "max-sessions"
    } else {
        "x-sessions-per-core"
    };
    let token_max = match info.max_rw_session_count() {
        cryptoki::slot::Limit::Max(n) if n > 0 => Some(n),
        _ => None,
    };
    let limits = [
        vendor.session_limit().map(|l| {
            (
                l as u64,
                format!("{} allows {l} sessions per application", vendor.name()),
            )
        }),
        token_max.map(|l| (l, format!("the token allows {l} read-write sessions"))),
    ];
    for (limit, what) in limits.into_iter().flatten() {
        if steady > limit {
            return Err(uri.error(
                attr,
                format!(
                    "{cores} cores x {per_core} sessions (+ the login session) = {steady} sessions, but {what}; lower x-sessions-per-core or cores"
                ),
            ));
        }
        if worst > limit {
            warnings.push(format!(
                "{}: with every worker replacement after stuck calls keycore could hold {worst} sessions, above the {limit} {what}; replacements stop at the limit",
                uri.display
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(n: u8) -> KeyLoc {
        KeyLoc {
            id: vec![n],
            label: Vec::new(),
            kind: KeyKind::EcdsaP256,
            ski: [n; 20],
            spki: vec![n],
        }
    }

    #[test]
    fn key_places_are_kept_while_found_and_retired_when_missed() {
        let keys = KeyList::default();
        // Start-up: two URIs select key 1 twice and key 2 once.
        let mut scan = Vec::new();
        assert_eq!(keys.place(loc(1), &mut scan), 0);
        assert_eq!(keys.place(loc(2), &mut scan), 1);
        assert_eq!(keys.place(loc(1), &mut scan), 0, "the same key in one scan");
        keys.set_live(&scan);
        let before = keys.snapshot();
        // A reload finds key 2 and a new key 3: 2 keeps its place, 3 is
        // appended, 1 is retired.
        let mut scan = Vec::new();
        assert_eq!(keys.place(loc(2), &mut scan), 1);
        assert_eq!(keys.place(loc(3), &mut scan), 2);
        keys.set_live(&scan);
        assert_eq!(before.len(), 2, "a reader's snapshot is not changed");
        // Key 1 comes back: a new place, never its retired one (a session
        // may hold a handle found for it before it went away).
        let mut scan = Vec::new();
        assert_eq!(keys.place(loc(1), &mut scan), 3);
        keys.set_live(&scan);
        let all = keys.snapshot();
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].ski, all[3].ski);
        assert!(!keys.is_empty());
        keys.set_live(&[]);
        assert!(keys.is_empty());
    }

    #[test]
    fn health_backs_off_doubling_and_comes_back() {
        let h = Health::default();
        assert!(h.is_up() && h.usable());
        h.fail("first");
        assert!(!h.is_up());
        assert!(!h.usable(), "usable inside the first backoff");
        let first = h
            .retry_at_ns
            .load(Ordering::Relaxed)
            .saturating_sub(now_ns());
        assert!(first <= BACKOFF_MIN.as_nanos() as u64);
        h.fail("second");
        let second = h
            .retry_at_ns
            .load(Ordering::Relaxed)
            .saturating_sub(now_ns());
        assert!(second > first, "backoff doubles: {first} then {second}");
        for _ in 0..40 {
            h.fail("again");
        }
        let capped = h
            .retry_at_ns
            .load(Ordering::Relaxed)
            .saturating_sub(now_ns());
        assert!(capped <= BACKOFF_MAX.as_nanos() as u64);
        // Once the backoff expires a request may probe it.
        h.retry_at_ns.store(now_ns(), Ordering::Relaxed);
        assert!(h.usable() && !h.is_up());
        h.ok();
        let s = h.snapshot("p");
        assert!(s.healthy);
        // Taken out once (the later failures kept it out), back once.
        assert_eq!((s.failures, s.recoveries), (1, 1));
        assert_eq!(s.last_error, "again");
        h.ok();
        assert_eq!(
            h.snapshot("p").recoveries,
            1,
            "ok() on a healthy partition is not a recovery"
        );
    }

    #[test]
    fn strikes_ask_for_a_probe_only_in_a_run() {
        use super::super::policy::Action;
        let h = Health::default();
        // Busy, plain failures and logouts are not evidence.
        for a in [Action::Busy, Action::Fail, Action::Login] {
            for _ in 0..10 {
                assert!(!h.error(a));
            }
        }
        // Session errors interleaved with successes never make a run.
        for _ in 0..20 {
            assert!(!h.error(Action::Session));
            h.ok();
        }
        let run: Vec<bool> = (0..SUSPECT_STREAK)
            .map(|_| h.error(Action::Session))
            .collect();
        assert_eq!(run.iter().filter(|&&p| p).count(), 1);
        assert!(run[SUSPECT_STREAK as usize - 1], "{run:?}");
        assert!(h.is_up(), "strikes alone never take the partition out");
        let snap = h.snapshot("p");
        assert_eq!(snap.errors[2], 20 + SUSPECT_STREAK as u64);
        assert_eq!(snap.errors[1], 10);
    }

    #[test]
    fn reopen_rate_allows_a_burst_then_paces() {
        let h = Health::default();
        let mut allowed = 0;
        while h.reopen_wait().is_none() {
            allowed += 1;
            assert!(allowed <= REOPEN_BURST + 5, "no limit");
        }
        // The burst (plus what refilled meanwhile), then a wait of about
        // one interval.
        assert!(allowed >= REOPEN_BURST, "{allowed}");
        let w = h.reopen_wait().unwrap();
        assert!(
            w <= Duration::from_nanos(1_000_000_000 / REOPEN_RATE),
            "{w:?}"
        );
    }
}
