//! Partitions (one token in one slot of one module): finding the token a URI
//! names, logging in once, finding the private keys and reading their public
//! halves, and the partition's health.
//!
//! Owns: [`Partition`] (shared read-only by every core, except its health
//! counters, which are atomics) and start-up key discovery.
//! Must not: perform key operations (that is `session.rs`), or keep
//! per-core state.

use super::module::Module;
use super::spki;
use super::uri::{DispatchMode, Pkcs11Uri};
use crate::keys::KeyKind;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::RawAuthPin;
use keycore_protocol::Ski;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

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
    pub fn find(&self, module: &Module) -> Result<Option<Slot>, String> {
        let _g = module.enter();
        let slots = module
            .ctx
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList: {e}"))?;
        let mut found = Vec::new();
        for s in slots {
            if self
                .matches(&module.ctx, s)
                .map_err(|e| format!("slot {}: {e}", s.id()))?
            {
                found.push(s);
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(Some(found[0])),
            n => Err(format!(
                "{n} tokens match (slots {:?}); add serial= or slot-id=",
                found.iter().map(|s| s.id()).collect::<Vec<_>>()
            )),
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

/// Health of one partition, shared by every core (atomics only).
#[derive(Debug, Default)]
pub struct Health {
    /// False while the last recovery attempt failed.
    down: AtomicBool,
    /// No new recovery attempt before this time ([`now_ns`]).
    retry_at_ns: AtomicU64,
    /// Consecutive failed recoveries (drives the backoff).
    consecutive: AtomicU64,
    /// Total failed recoveries / operations that took the partition down.
    failures: AtomicU64,
    /// Times the partition came back after being down.
    recoveries: AtomicU64,
    /// Session re-opens (after a recoverable error), successful or not.
    reopens: AtomicU64,
    /// Operations that hit the per-operation timeout.
    timeouts: AtomicU64,
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

    /// Record a success (brings a down partition back).
    #[inline]
    pub fn ok(&self) {
        if self.down.load(Ordering::Relaxed) {
            self.down.store(false, Ordering::Relaxed);
            self.consecutive.store(0, Ordering::Relaxed);
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Record a failed recovery: down, with doubling backoff.
    pub fn fail(&self, why: &str) {
        let n = self.consecutive.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = BACKOFF_MIN.saturating_mul(1 << n).min(BACKOFF_MAX);
        self.retry_at_ns
            .store(now_ns() + backoff.as_nanos() as u64, Ordering::Relaxed);
        self.down.store(true, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
        let mut e = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        e.clear();
        e.push_str(why);
    }

    /// Count a session re-open.
    pub fn reopened(&self) {
        self.reopens.fetch_add(1, Ordering::Relaxed);
    }

    /// Count an operation timeout.
    pub fn timed_out(&self) {
        self.timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Snapshot for the metrics endpoint.
    pub fn snapshot(&self, name: &str) -> PartitionHealth {
        PartitionHealth {
            partition: name.to_string(),
            healthy: self.is_up(),
            failures: self.failures.load(Ordering::Relaxed),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            reopens: self.reopens.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
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
    /// False while the partition is out of use (recovery failing).
    pub healthy: bool,
    /// Times it was taken out of use.
    pub failures: u64,
    /// Times it came back.
    pub recoveries: u64,
    /// Session re-opens after recoverable errors.
    pub reopens: u64,
    /// Operations that exceeded the per-operation timeout.
    pub timeouts: u64,
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
    /// The handle found at start-up, a head start for the per-core sessions
    /// (object handles are valid for the whole application, until the module
    /// is re-initialised).
    pub handle0: ObjectHandle,
    /// The module generation `handle0` was found under.
    pub handle0_gen: u64,
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
    pin: Option<Vec<u8>>,
    login_user: u64,
    /// Keys found on this partition (fixed after start-up).
    pub keys: Vec<KeyLoc>,
    /// How requests reach it.
    pub dispatch: DispatchMode,
    /// Sessions (= worker threads in offload mode) per core.
    pub sessions_per_core: u32,
    /// Longest one offloaded operation may take.
    pub op_timeout: Duration,
    /// Shared health.
    pub health: Health,
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
    /// The slot currently used.
    pub fn slot(&self) -> Slot {
        // CK_SLOT_ID is an unsigned long: 64 bits on the LP64 targets keycore
        // builds for, so the conversion cannot fail.
        Slot::try_from(self.slot.load(Ordering::Relaxed)).expect("CK_SLOT_ID is 64 bits")
    }

    /// Find the token again (after re-initialisation) and remember its slot.
    pub fn find_slot(&self) -> Result<Slot, String> {
        match self.selector.find(&self.module)? {
            Some(s) => {
                self.slot.store(s.id(), Ordering::Relaxed);
                Ok(s)
            }
            None => Err("token not present".into()),
        }
    }

    /// Log in on `session` unless the application already is.
    pub fn login(&self, session: &Session) -> Result<(), CkError> {
        self.login_with(session, false)
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
        match session.login_with_raw(user, &RawAuthPin::new(Box::new(pin.clone()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Make sure the login-keeping session exists and is logged in (after a
    /// re-initialisation, the old one is gone).
    pub fn ensure_control(&self, slot: Slot) -> Result<(), CkError> {
        let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let _g = self.module.enter();
        let gen = self.module.generation();
        if let Some((s, g)) = c.take() {
            if g == gen {
                if self.login(&s).is_ok() {
                    *c = Some((s, g));
                    return Ok(());
                }
                drop(s);
            } else {
                std::mem::forget(s); // handle belongs to a finalised library
            }
        }
        let s = self.module.ctx.open_ro_session(slot)?;
        self.login(&s)?;
        *c = Some((s, gen));
        Ok(())
    }

    /// Whether `session` sees at least one private key (a cheap check that
    /// the token's objects are there at all).
    pub fn has_private_keys(&self, session: &Session) -> bool {
        session
            .find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])
            .is_ok_and(|v| !v.is_empty())
    }

    /// Find the private key `k` on `session` and check it is still the same
    /// key pair.
    pub fn find_key(&self, session: &Session, k: usize) -> Result<ObjectHandle, CkError> {
        let loc = &self.keys[k];
        let mut tmpl = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if loc.id.is_empty() {
            tmpl.push(Attribute::Label(loc.label.clone()));
        } else {
            tmpl.push(Attribute::Id(loc.id.clone()));
        }
        for h in session.find_objects(&tmpl)? {
            if let Ok(found) = read_public(session, h) {
                if found.ski == loc.ski {
                    return Ok(h);
                }
            }
        }
        Err(CkError::Pkcs11(
            RvError::KeyHandleInvalid,
            cryptoki::context::Function::FindObjects,
        ))
    }
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

/// Read the public key of private key `h`: RSA from the private object's
/// modulus and exponent; EC and Ed25519 from the public key object with the
/// same `CKA_ID` (PKCS#11 private EC keys carry no point).
fn read_public(session: &Session, h: ObjectHandle) -> Result<Public, String> {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::KeyType,
                AttributeType::Id,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
            ],
        )
        .map_err(|e| format!("reading key attributes: {e}"))?;
    let key_type = attrs
        .iter()
        .find_map(|a| match a {
            Attribute::KeyType(t) => Some(*t),
            _ => None,
        })
        .ok_or("key has no CKA_KEY_TYPE")?;
    let (spki, kind) = if key_type == KeyType::RSA {
        let n = attr_bytes(&attrs, AttributeType::Modulus);
        let e = attr_bytes(&attrs, AttributeType::PublicExponent);
        let (n, e) = match (n, e) {
            (Some(n), Some(e)) => (n.to_vec(), e.to_vec()),
            _ => {
                let p = public_object(session, &attrs, KeyType::RSA)?;
                let pa = session
                    .get_attributes(p, &[AttributeType::Modulus, AttributeType::PublicExponent])
                    .map_err(|e| format!("reading public key: {e}"))?;
                match (
                    attr_bytes(&pa, AttributeType::Modulus),
                    attr_bytes(&pa, AttributeType::PublicExponent),
                ) {
                    (Some(n), Some(e)) => (n.to_vec(), e.to_vec()),
                    _ => return Err("RSA key without modulus/exponent".into()),
                }
            }
        };
        let (spki, bits) = spki::rsa_spki(&n, &e)?;
        (spki, KeyKind::Rsa { bits })
    } else if key_type == KeyType::EC || key_type == KeyType::EC_EDWARDS {
        let p = public_object(session, &attrs, key_type)?;
        let pa = session
            .get_attributes(p, &[AttributeType::EcParams, AttributeType::EcPoint])
            .map_err(|e| format!("reading public key: {e}"))?;
        let (Some(params), Some(point)) = (
            attr_bytes(&pa, AttributeType::EcParams),
            attr_bytes(&pa, AttributeType::EcPoint),
        ) else {
            return Err("public key object without CKA_EC_PARAMS/CKA_EC_POINT".into());
        };
        if key_type == KeyType::EC {
            spki::ec_spki(params, point)?
        } else {
            (spki::ed25519_spki(params, point)?, KeyKind::Ed25519)
        }
    } else {
        return Err(format!("unsupported key type {key_type}"));
    };
    let ski = keycore_protocol::ski_from_spki(&spki).map_err(|e| format!("SPKI: {e}"))?;
    Ok(Public { kind, spki, ski })
}

fn public_object(
    session: &Session,
    priv_attrs: &[Attribute],
    key_type: KeyType,
) -> Result<ObjectHandle, String> {
    let id = attr_bytes(priv_attrs, AttributeType::Id)
        .filter(|id| !id.is_empty())
        .ok_or("the private key has no CKA_ID, so its public key object cannot be found")?;
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(key_type),
            Attribute::Id(id.to_vec()),
        ])
        .map_err(|e| format!("finding the public key: {e}"))?;
    found
        .first()
        .copied()
        .ok_or_else(|| "no public key object with the private key's CKA_ID".into())
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
}

/// Open (or reuse, when `existing` already has it) the partition a URI names
/// and find the keys it selects. Returns the partition index and the
/// positions of the keys within that partition's key list.
pub fn open_uri(
    uri: &Pkcs11Uri,
    existing: &mut Vec<Partition>,
    settings: impl Fn(&Module) -> PartitionSettings,
) -> Result<(usize, Vec<usize>), super::uri::UriError> {
    let path = super::module::resolve(uri.module_path.as_deref(), uri.module_name.as_deref())
        .map_err(|r| {
            uri.error(
                if uri.module_path.is_some() {
                    "module-path"
                } else {
                    "module-name"
                },
                r,
            )
        })?;
    let module = super::module::load(&path).map_err(|r| uri.error("module-path", r))?;
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
    let tok_attr = if uri.token.is_some() {
        "token"
    } else if uri.serial.is_some() {
        "serial"
    } else {
        "slot-id"
    };
    let mut slot = selector.find(&module).map_err(|r| uri.error(tok_attr, r))?;
    if slot.is_none() {
        // Many modules (SoftHSM among them) fix their slot list at
        // C_Initialize: a token created since then appears only after a
        // re-initialisation. Start-up is the control plane; one is cheap.
        module
            .reinit(module.generation())
            .map_err(|r| uri.error(tok_attr, r))?;
        slot = selector.find(&module).map_err(|r| uri.error(tok_attr, r))?;
    }
    let slot = slot.ok_or_else(|| {
        uri.error(
            tok_attr,
            format!("no token matches ({})", describe_tokens(&module)),
        )
    })?;
    let pin = uri.pin()?;

    let pi = match existing.iter().position(|p| {
        Arc::ptr_eq(&p.module, &module) && p.slot.load(Ordering::Relaxed) == slot.id()
    }) {
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
            let s = settings(&module);
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
                keys: Vec::new(),
                dispatch: uri.dispatch.unwrap_or(s.dispatch),
                sessions_per_core: uri.sessions_per_core.unwrap_or(s.sessions_per_core),
                op_timeout: uri.op_timeout.unwrap_or(s.op_timeout),
                health: Health::default(),
                control: Mutex::new(None),
            };
            if p.pin.is_none() && info.login_required() {
                return Err(uri.error(
                    "pin-value",
                    "the token requires a login: give pin-value or pin-source",
                ));
            }
            existing.push(p);
            existing.len() - 1
        }
    };
    let part = &mut existing[pi];
    part.ensure_control(slot).map_err(|e| {
        let attr = if uri.pin_source.is_some() {
            "pin-source"
        } else {
            "pin-value"
        };
        match rv_of(&e) {
            Some(RvError::PinIncorrect) => uri.error(attr, "wrong PIN (CKR_PIN_INCORRECT)"),
            Some(RvError::PinLocked) => uri.error(attr, "PIN locked (CKR_PIN_LOCKED)"),
            _ => uri.error(attr, format!("login failed: {e}")),
        }
    })?;

    // Find the private keys this URI selects, on a short-lived session.
    let found = {
        let _g = part.module.enter();
        let session = part
            .module
            .ctx
            .open_ro_session(slot)
            .map_err(|e| uri.error(tok_attr, format!("C_OpenSession: {e}")))?;
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
        let mut out = Vec::new();
        for h in handles {
            let attr = if uri.id.is_some() { "id" } else { "object" };
            let p = read_public(&session, h).map_err(|r| uri.error(attr, r))?;
            let a = session
                .get_attributes(h, &[AttributeType::Id, AttributeType::Label])
                .map_err(|e| uri.error(attr, e.to_string()))?;
            out.push(KeyLoc {
                id: attr_bytes(&a, AttributeType::Id)
                    .unwrap_or_default()
                    .to_vec(),
                label: attr_bytes(&a, AttributeType::Label)
                    .unwrap_or_default()
                    .to_vec(),
                kind: p.kind,
                ski: p.ski,
                spki: p.spki,
                handle0: h,
                handle0_gen: part.module.generation(),
            });
        }
        out
    };
    if found.is_empty() {
        let attr = if uri.id.is_some() { "id" } else { "object" };
        return Err(uri.error(attr, "no private key on the token matches"));
    }
    let mut positions = Vec::new();
    for k in found {
        if k.id.is_empty() && k.label.is_empty() {
            return Err(uri.error("id", "a matching key has neither CKA_ID nor CKA_LABEL, so it cannot be found again after recovery"));
        }
        let pos = match part.keys.iter().position(|x| x.ski == k.ski) {
            Some(p) => p,
            None => {
                part.keys.push(k);
                part.keys.len() - 1
            }
        };
        positions.push(pos);
    }
    Ok((pi, positions))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!((s.failures, s.recoveries), (42, 1));
        assert_eq!(s.last_error, "again");
        h.ok();
        assert_eq!(
            h.snapshot("p").recoveries,
            1,
            "ok() on a healthy partition is not a recovery"
        );
    }
}
