//! PKCS#11 backend: URIs, modules, tokens, per-core sessions, dispatch.
//!
//! Interface with the server:
//! - control plane: [`Pkcs11Store::open`] is called once at start-up (by the
//!   engine's backend registry) with the `uri: pkcs11:` stores and yields
//!   `KeyEntry`s whose backend is a `StoreKey` of this store; on reload the
//!   registry calls [`Pkcs11Store::rescan`] (same URIs: find the keys again
//!   on the login sessions) or [`Pkcs11Store::reopen`] (URIs changed: a new
//!   store keeping the tokens whose URI did not change);
//!   [`Pkcs11Store::health`] reports each partition, rendered by the
//!   store's `KeyStore::render_metrics`;
//! - data plane: each reactor calls [`Pkcs11Store::core`] (or
//!   `KeyStore::core`) once on its own thread and keeps the returned
//!   [`CoreHsm`] (not `Send`): its sessions and handles belong to that core
//!   alone. Dispatch calls it through `CoreStore::perform`.
//!
//! Why a crate: the backend depends on `keycore-keys` (key identity, the
//! backend seam) and never on the server, so it can be built, tested and
//! replaced alone. Public surface: [`Pkcs11Store`], [`CoreHsm`], [`KeyRef`],
//! [`Pkcs11Options`], [`Pkcs11Error`], [`DispatchMode`], [`Pkcs11Uri`],
//! [`UriError`], [`PartitionHealth`], [`MAX_HA_MEMBERS`].
//!
//! Layout: `uri` (RFC 7512 parsing), `module` (load + initialise once,
//! re-initialise on loss), `token` (partitions, login, key discovery,
//! health), `session` (a lane: one session, mechanisms, recovery),
//! `dispatch` (offload workers, completions, watchdog). Public keys become
//! SPKI through `keycore_keys::{rsa_spki, ec_spki, ed25519_spki}`.
//!
//! A [`KeyRef`] is an HA group: every partition holding a key with the same
//! SKI. A core spreads requests over the group's usable members round-robin;
//! a member whose recovery fails is skipped until its backoff expires, and
//! the next request after that probes it back in.

mod dispatch;
mod module;
mod policy;
mod recovery;
mod session;
mod token;
mod uri;

pub use token::PartitionHealth;
pub use uri::{DispatchMode, Pkcs11Uri, UriError};

use dispatch::{Completion, Job, Pending, Watchdog, Workers};
use keycore_keys::{
    op_fits, Backend, CoreStore, KeyEntry, KeyKind, KeyStore, MetricKind, NotReady, Outcome,
    PromWriter, Reopened, StoreId, StoreKey, StoreReloadError, StoreStatus,
};
use keycore_protocol::{ErrorCode, OpClass, Ski};
use session::{Lane, LaneError};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::{Rc, Weak};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use token::{Partition, PartitionSettings};

/// Which key (HA group of partitions) a request is for. Small and `Copy`: it
/// is stored in the shared key index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef(pub u32);

/// Start-up failure. Always names the URI (PIN redacted) and the attribute.
#[derive(Debug, thiserror::Error)]
pub enum Pkcs11Error {
    /// A URI is malformed, or what it names cannot be used.
    #[error(transparent)]
    Uri(#[from] UriError),
}

/// Store-wide settings; every field can be overridden per token in its URI.
#[derive(Debug, Clone)]
pub struct Pkcs11Options {
    /// Number of reactors that will call [`Pkcs11Store::core`]; divides the
    /// reference's `max-sessions` between them. Default 1.
    pub cores: usize,
    /// Dispatch for tokens whose URI has no `x-dispatch`. `None` (default):
    /// inline for in-process software tokens (SoftHSM), offload for the rest
    /// — see docs/pkcs11/README.md for the measurement behind it.
    pub dispatch: Option<DispatchMode>,
    /// Sessions (worker threads) per core per offload token, unless the URI
    /// says `x-sessions-per-core` or `max-sessions`. Default 2: one call in
    /// flight while the next is being prepared; raise it for high-latency
    /// HSMs (each costs a thread and an HSM session). Config key
    /// `pkcs11_sessions_per_core`.
    pub sessions_per_core: u32,
    /// Longest one offloaded operation may take before it is answered
    /// `CRYPTO` and its session quarantined (URI: `x-op-timeout`; the
    /// reference config's `sign_timeout` is the natural source). Default 2 s.
    /// Config key `pkcs11_op_timeout` (see `Config::pkcs11_op_timeout`).
    pub op_timeout: Duration,
    /// `key_load_errors: skip`: a key on a token that cannot be used (an
    /// unsupported type, no public key to be found) is skipped with a
    /// warning instead of failing start-up. Default false.
    pub skip_failed_keys: bool,
}

impl Default for Pkcs11Options {
    fn default() -> Self {
        // The config table holds the defaults (pkcs11_sessions_per_core,
        // pkcs11_op_timeout); this is the same value for code that builds
        // options without a config (tests, tools).
        Pkcs11Options {
            cores: 1,
            dispatch: None,
            sessions_per_core: keycore_config::Config::default().pkcs11.sessions_per_core,
            op_timeout: keycore_config::PKCS11_OP_TIMEOUT_FALLBACK,
            skip_failed_keys: false,
        }
    }
}

/// Most partitions one key (HA group) may span: a member is one bit in the
/// per-request "already tried" mask.
pub const MAX_HA_MEMBERS: usize = 64;

/// Library file names of tokens that run in-process (a sign is CPU work on
/// the calling thread), for which inline dispatch is the default.
const IN_PROCESS_MODULES: &[&str] = &["libsofthsm2.so", "libsofthsm.so"];

/// One HA group: the partitions (and key positions in them) that hold the
/// same key. Never changed once made (see [`Groups`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    ski: Ski,
    members: Vec<(usize, usize)>,
    kind: KeyKind,
}

/// The store's HA groups, by key number (`StoreKey::key`). Append-only,
/// like each partition's `token::KeyList`: a key number, once handed out
/// in a `KeyEntry`, names the same group for the store's life (requests of
/// an older reload generation may still carry it), so a reload whose scan
/// finds a group that did not exist (a new key, or a key on other
/// partitions than before) appends it, and a group no scan finds any more
/// stays, unused. Nothing a running generation uses is ever changed, so a
/// reload that fails after the scan leaves the served state as it was.
///
/// Cores keep a snapshot and take a new one only for a key number past its
/// end (no lock on the data path).
#[derive(Debug, Default)]
struct Groups {
    all: Mutex<Arc<Vec<Group>>>,
    /// Key numbers the last scan found: the ones `/readyz` looks at.
    live: Mutex<Vec<usize>>,
}

impl Groups {
    fn snapshot(&self) -> Arc<Vec<Group>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The number of the group `g` (the same one again, or a new one).
    fn place(&self, g: Group) -> usize {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = all.iter().position(|x| *x == g) {
            return n;
        }
        Arc::make_mut(&mut all).push(g);
        all.len() - 1
    }
}

impl Shared {
    /// The partition `uri` was the first URI to name (it defines its
    /// settings and PIN), if any.
    fn defined_by(&self, uri: &Pkcs11Uri) -> Option<&Arc<Partition>> {
        let (_, pi) = self.uris.iter().find(|(u, _)| u == uri)?;
        // The first URI naming partition `pi` is the one that made it.
        let (first, _) = self.uris.iter().find(|(_, p)| p == pi)?;
        (first == uri).then(|| &self.partitions[*pi])
    }
}

#[derive(Debug)]
struct Shared {
    partitions: Vec<Arc<Partition>>,
    groups: Groups,
    /// Each configured URI (parsed) and the partition it names, in
    /// configuration order: what a reload scans again.
    uris: Vec<(Pkcs11Uri, usize)>,
    /// The options it was opened with (a reload's scans and reopen).
    opts: Pkcs11Options,
    /// Times out stuck offloaded calls; shared with the store a reload
    /// reopens this one as (see [`Pkcs11Store::reopen`]).
    watchdog: Arc<Watchdog>,
    /// Start-up warnings (also logged).
    warnings: Vec<String>,
}

/// Everything PKCS#11 that is shared read-only by the cores.
#[derive(Debug)]
pub struct Pkcs11Store {
    shared: Arc<Shared>,
}

impl Default for Pkcs11Store {
    fn default() -> Self {
        Pkcs11Store {
            shared: Arc::new(Shared {
                partitions: Vec::new(),
                groups: Groups::default(),
                uris: Vec::new(),
                opts: Pkcs11Options::default(),
                watchdog: Arc::default(),
                warnings: Vec::new(),
            }),
        }
    }
}

/// Place one scan's keys (per URI: its partition and the keys found) in
/// the partitions' key lists and the store's groups; the keys as entries of
/// store `id`, one per distinct key (SKI). Start-up and reload place the
/// same way.
fn place_scan(
    partitions: &[&Partition],
    groups: &Groups,
    scan: Vec<(&Pkcs11Uri, usize, Vec<token::KeyLoc>)>,
    id: StoreId,
) -> Result<Vec<KeyEntry>, Pkcs11Error> {
    let mut placed: Vec<Vec<usize>> = vec![Vec::new(); partitions.len()];
    // Per distinct key, in the order found: the group it makes, and the
    // URI that found it first (the entry's source).
    let mut found: Vec<(Group, Vec<u8>, &Pkcs11Uri)> = Vec::new();
    for (uri, pi, keys) in scan {
        for k in keys {
            let (ski, kind) = (k.ski, k.kind);
            let spki = k.spki.clone();
            let pos = partitions[pi].keys.place(k, &mut placed[pi]);
            match found.iter_mut().find(|(g, _, _)| g.ski == ski) {
                Some((g, _, _)) => {
                    if !g.members.contains(&(pi, pos)) {
                        if g.members.len() == MAX_HA_MEMBERS {
                            return Err(uri
                                .error(
                                    "token",
                                    format!(
                                        "the same key is on more than {MAX_HA_MEMBERS} partitions"
                                    ),
                                )
                                .into());
                        }
                        g.members.push((pi, pos));
                    }
                }
                None => found.push((
                    Group {
                        ski,
                        members: vec![(pi, pos)],
                        kind,
                    },
                    spki,
                    uri,
                )),
            }
        }
    }
    for (p, positions) in partitions.iter().zip(&placed) {
        p.keys.set_live(positions);
    }
    let mut entries = Vec::with_capacity(found.len());
    let mut live = Vec::with_capacity(found.len());
    for (g, spki, uri) in found {
        let (ski, kind) = (g.ski, g.kind);
        let n = groups.place(g);
        live.push(n);
        entries.push(KeyEntry {
            ski,
            legacy_digest: match kind {
                KeyKind::Rsa { .. } => keycore_keys::legacy_digest_from_spki(&spki).ok(),
                _ => None,
            },
            kind,
            spki_der: spki,
            source: uri.display.clone(),
            backend: Backend::Store(StoreKey {
                store: id,
                key: n as u32,
            }),
        });
    }
    *groups.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
    Ok(entries)
}

impl Pkcs11Store {
    /// Load the modules, find the tokens, log in and find the keys the URIs
    /// name. One `KeyEntry` per distinct key (SKI); a key found on several
    /// partitions becomes one HA group. Fails on the first URI that cannot be
    /// used, naming it and the attribute at fault.
    /// `id` is the store's place in the server's list; every entry's backend
    /// is `Backend::Store(StoreKey { store: id, .. })`.
    pub fn open(
        uris: &[String],
        opts: &Pkcs11Options,
        id: StoreId,
    ) -> Result<(Pkcs11Store, Vec<KeyEntry>), Pkcs11Error> {
        Self::open_reusing(uris, opts, id, None)
    }

    /// Reload, when the URIs changed but not the store's settings: open
    /// `uris` as a new store with id `id`, taking over each partition of
    /// this store whose defining URI (the first naming its token) is the
    /// first new URI naming that token too, unchanged, PIN and attributes
    /// included. A kept partition keeps its login session, health and key
    /// places (its keys are searched again on the login session), and each
    /// core's [`Pkcs11Store::core`] for the new store takes over that core's
    /// sessions and worker threads for it. The other tokens are opened
    /// afresh (login, key search). This store is not changed: it serves on
    /// until the reload is published.
    pub fn reopen(
        &self,
        uris: &[String],
        id: StoreId,
    ) -> Result<(Pkcs11Store, Vec<KeyEntry>), Pkcs11Error> {
        let opts = self.shared.opts.clone();
        Self::open_reusing(uris, &opts, id, Some(&self.shared))
    }

    fn open_reusing(
        uris: &[String],
        opts: &Pkcs11Options,
        id: StoreId,
        previous: Option<&Shared>,
    ) -> Result<(Pkcs11Store, Vec<KeyEntry>), Pkcs11Error> {
        let cores = opts.cores.max(1) as u32;
        let mut parts: Vec<Arc<Partition>> = Vec::new();
        let mut opened = Vec::new();
        let mut found = Vec::new();
        let mut warnings = Vec::new();
        let mut kept = 0usize;
        for raw in uris {
            let uri = Pkcs11Uri::parse(raw)?;
            // A partition of the previous store this URI defined, whose
            // token no URI before this one named.
            let keep = previous.and_then(|sh| {
                let p = sh.defined_by(&uri)?;
                let slot = p.slot();
                (!parts.iter().any(|x| x.is_token(&p.module, slot))).then(|| p.clone())
            });
            if let Some(p) = keep {
                let keys = p.rescan(&uri, opts.skip_failed_keys, &mut warnings)?;
                parts.push(p);
                kept += 1;
                opened.push((uri, parts.len() - 1));
                found.push(keys);
                continue;
            }
            let settings = |m: &module::Module| PartitionSettings {
                dispatch: opts.dispatch.unwrap_or_else(|| {
                    let file = m.path.file_name().and_then(|f| f.to_str()).unwrap_or("");
                    if IN_PROCESS_MODULES.contains(&file) {
                        DispatchMode::Inline
                    } else {
                        DispatchMode::Offload
                    }
                }),
                sessions_per_core: uri
                    .max_sessions
                    .map(|n| (n / cores).max(1))
                    .unwrap_or(opts.sessions_per_core),
                op_timeout: opts.op_timeout,
                cores,
                skip_failed_keys: opts.skip_failed_keys,
            };
            let (pi, keys) = token::open_uri(&uri, &mut parts, settings, &mut warnings)?;
            opened.push((uri, pi));
            found.push(keys);
        }
        let groups = Groups::default();
        let scan = opened
            .iter()
            .zip(found)
            .map(|((u, pi), keys)| (u, *pi, keys))
            .collect();
        let entries = place_scan(
            &parts.iter().map(|p| &**p).collect::<Vec<_>>(),
            &groups,
            scan,
            id,
        )?;
        if previous.is_some() {
            tracing::info!(
                kept,
                opened = parts.len() - kept,
                "PKCS#11 store reopened: tokens whose URI did not change keep their login, sessions and worker threads"
            );
        }
        let store = Pkcs11Store {
            shared: Arc::new(Shared {
                partitions: parts,
                groups,
                uris: opened,
                opts: opts.clone(),
                // Shared with the previous store: the worker threads the
                // new one takes over stay watched after the old one goes.
                watchdog: previous.map(|sh| sh.watchdog.clone()).unwrap_or_default(),
                warnings,
            }),
        };
        for w in &store.shared.warnings {
            tracing::warn!("{w}");
        }
        Ok((store, entries))
    }

    /// Reload (the store is kept: same URIs and settings): find the keys
    /// every URI selects again, on each partition's control session (no
    /// session opened, no login while the logins hold), and return them as
    /// entries of store `id`. A key found before keeps its key number; a new
    /// one gets a new number, which every core's sessions and workers serve
    /// from their next request for it (each finds the key's handle on its
    /// own session); a key not found is simply not returned (the server
    /// answers `0x02` for it once the reload is published). Fails, naming
    /// the URI, where a scan fails (token gone, a key that cannot be used
    /// without `key_load_errors: skip`, no key left): nothing the running
    /// generation uses has changed then.
    pub fn rescan(&self, id: StoreId) -> Result<Vec<KeyEntry>, Pkcs11Error> {
        let sh = &self.shared;
        let mut warnings = Vec::new();
        let mut scan = Vec::with_capacity(sh.uris.len());
        for (uri, pi) in &sh.uris {
            let found = sh.partitions[*pi].rescan(uri, sh.opts.skip_failed_keys, &mut warnings)?;
            scan.push((uri, *pi, found));
        }
        let parts: Vec<&Partition> = sh.partitions.iter().map(|p| &**p).collect();
        let entries = place_scan(&parts, &sh.groups, scan, id)?;
        for w in &warnings {
            tracing::warn!("{w}");
        }
        Ok(entries)
    }

    /// The per-core handle; call on the reactor thread that will use it.
    /// Opens this core's inline sessions now and starts its offload
    /// workers, except for a partition this thread already has a lane of
    /// for the same core (a partition a reload's [`Pkcs11Store::reopen`]
    /// kept): that lane (its session, or its worker threads) is shared.
    pub fn core(&self, core: usize) -> CoreHsm {
        let lanes = self
            .shared
            .partitions
            .iter()
            .map(|p| {
                if let Some(lane) = THREAD_LANES.with(|l| l.borrow().find(p, core)) {
                    return lane;
                }
                let lane = Rc::new(self.new_lane(p, core));
                THREAD_LANES.with(|l| l.borrow_mut().add(p, core, &lane));
                lane
            })
            .collect::<Vec<_>>();
        let n = lanes.len();
        CoreHsm {
            inner: Rc::new(CoreInner {
                groups: RefCell::new(self.shared.groups.snapshot()),
                shared: self.shared.clone(),
                lanes,
                rr: Cell::new(core),
                pending: RefCell::new((0..n).map(|_| Vec::new()).collect()),
                flush_armed: Cell::new(false),
            }),
        }
    }

    fn new_lane(&self, p: &Arc<Partition>, core: usize) -> CoreLane {
        match p.dispatch {
            DispatchMode::Inline => {
                let mut lane = Lane::new(p.clone());
                if let Err(e) = lane.warm_up() {
                    p.health.note_error(&keycore_keys::error_chain(&e));
                    recovery::want(p, recovery::Want::Probe);
                }
                CoreLane::Inline(RefCell::new(lane))
            }
            DispatchMode::Offload => match Workers::start(p.clone(), core, &self.shared.watchdog) {
                Ok(w) => CoreLane::Offload(w),
                Err(e) => {
                    p.health.fail(&format!("cannot start worker threads: {e}"));
                    CoreLane::Dead
                }
            },
        }
    }

    /// Health of every partition, for the metrics endpoint.
    pub fn health(&self) -> Vec<PartitionHealth> {
        self.shared
            .partitions
            .iter()
            .map(|p| p.health.snapshot(&p.name))
            .collect()
    }

    /// Start-up warnings (already logged): keys skipped, session counts,
    /// operations a token cannot do.
    pub fn warnings(&self) -> &[String] {
        &self.shared.warnings
    }

    /// Number of partitions (tokens) in use.
    pub fn partitions(&self) -> usize {
        self.shared.partitions.len()
    }

    /// For `/readyz`: the keys (HA groups) with no partition up, each named
    /// by its first partition. Empty when every key can be served.
    pub fn keys_without_healthy_partition(&self) -> Vec<String> {
        let sh = &self.shared;
        let all = sh.groups.snapshot();
        let live = sh
            .groups
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        live.iter()
            .filter_map(|&n| all.get(n))
            .filter(|g| {
                !g.members
                    .iter()
                    .any(|&(pi, _)| sh.partitions[pi].health.is_up())
            })
            .map(|g| sh.partitions[g.members[0].0].name.clone())
            .collect()
    }

    /// The dispatch mode each partition uses, in `health()` order.
    pub fn dispatch_modes(&self) -> Vec<DispatchMode> {
        self.shared.partitions.iter().map(|p| p.dispatch).collect()
    }
}

impl KeyStore for Pkcs11Store {
    fn name(&self) -> &'static str {
        "pkcs11"
    }

    fn core(self: Arc<Self>, core: usize) -> Box<dyn CoreStore> {
        Box::new(Pkcs11Store::core(&self, core))
    }

    /// See [`Pkcs11Store::reopen`].
    fn reopen(&self, uris: &[String], id: StoreId) -> Result<Option<Reopened>, StoreReloadError> {
        let (store, keys) = Pkcs11Store::reopen(self, uris, id).map_err(|e| StoreReloadError {
            store: "pkcs11",
            source: Box::new(e),
        })?;
        Ok(Some((Arc::new(store), keys)))
    }

    /// See [`Pkcs11Store::rescan`].
    fn rescan(&self, id: StoreId) -> Result<Option<Vec<KeyEntry>>, StoreReloadError> {
        Pkcs11Store::rescan(self, id)
            .map(Some)
            .map_err(|e| StoreReloadError {
                store: "pkcs11",
                source: Box::new(e),
            })
    }

    /// `keycore_pkcs11_*` series: health of each partition, read at scrape
    /// time. Nothing when no partition is open.
    fn render_metrics(&self, w: &mut PromWriter<'_>) {
        if self.partitions() == 0 {
            return;
        }
        let health = self.health();
        type Get = fn(&PartitionHealth) -> u64;
        use MetricKind::{Counter, Gauge};
        let series: [(&str, MetricKind, &str, Get); 12] = [
            (
                "keycore_pkcs11_partition_healthy",
                Gauge,
                "1 while the partition is in use, 0 while it is out (a probe failed).",
                |h| h.healthy as u64,
            ),
            (
                "keycore_pkcs11_partition_failures_total",
                Counter,
                "Times the partition was taken out of use.",
                |h| h.failures,
            ),
            (
                "keycore_pkcs11_partition_recoveries_total",
                Counter,
                "Times the partition came back.",
                |h| h.recoveries,
            ),
            (
                "keycore_pkcs11_session_reopens_total",
                Counter,
                "Sessions re-opened after a session error.",
                |h| h.reopens,
            ),
            (
                "keycore_pkcs11_sessions_opened_total",
                Counter,
                "C_OpenSession calls made for the partition (every core's and worker's sessions, the login session, probes and key searches); a reload that keeps the store opens none.",
                |h| h.sessions_opened,
            ),
            (
                "keycore_pkcs11_op_timeouts_total",
                Counter,
                "Operations that exceeded the per-operation timeout, or waited past it.",
                |h| h.timeouts,
            ),
            (
                "keycore_pkcs11_retries_total",
                Counter,
                "Requests tried again after an error (on another session, after a login, after a busy answer).",
                |h| h.retries,
            ),
            (
                "keycore_pkcs11_relogins_total",
                Counter,
                "Logins made again on the control path after the token logged keycore out.",
                |h| h.relogins,
            ),
            (
                "keycore_pkcs11_module_reinits_total",
                Counter,
                "Module re-initialisations (C_Finalize + C_Initialize) made for the partition.",
                |h| h.reinits,
            ),
            (
                "keycore_pkcs11_probes_total",
                Counter,
                "Probes of the partition (token, session, keys) after a run of failures or while out.",
                |h| h.probes,
            ),
            (
                "keycore_pkcs11_probe_failures_total",
                Counter,
                "Probes that failed: each takes the partition out or keeps it out.",
                |h| h.probe_failures,
            ),
            (
                "keycore_pkcs11_sessions_quarantined",
                Gauge,
                "Worker threads stuck in a call past the timeout (their sessions close when the call returns).",
                |h| h.quarantined,
            ),
        ];
        for (name, kind, help, get) in series {
            w.family(name, kind, help);
            for h in &health {
                w.sample(name, &[("partition", &h.partition)], get(h));
            }
        }
        let name = "keycore_pkcs11_op_errors_total";
        w.family(
            name,
            Counter,
            "Errors of PKCS#11 key operations by what the error policy did about them (fail, busy, session, handle, login, device).",
        );
        for h in &health {
            for (i, a) in policy::Action::ALL.iter().enumerate() {
                w.sample(
                    name,
                    &[("partition", &h.partition), ("action", a.name())],
                    h.errors[i],
                );
            }
        }
    }

    /// One line per partition: logged in, or down and why.
    fn status(&self) -> Vec<StoreStatus> {
        self.health()
            .into_iter()
            .map(|h| StoreStatus {
                ok: h.healthy,
                what: "pkcs11 partition",
                detail: if h.healthy {
                    format!("{}: logged in", h.partition)
                } else {
                    format!("{}: down: {}", h.partition, h.last_error)
                },
            })
            .collect()
    }

    /// Ready while every key has at least one partition up.
    fn readiness(&self) -> Result<(), NotReady> {
        let down = self.keys_without_healthy_partition();
        if down.is_empty() {
            return Ok(());
        }
        let mut names: Vec<&str> = down.iter().map(String::as_str).collect();
        names.dedup();
        Err(NotReady {
            store: "pkcs11",
            detail: format!(
                "{} key(s) with no healthy partition ({})",
                down.len(),
                names.join(", ")
            ),
        })
    }
}

impl CoreStore for CoreHsm {
    /// Inline keys answer at once on this core's session; offloaded ones
    /// queue a job for this turn's batch and return its completion.
    fn perform(&self, key: u32, op: OpClass, input: &[u8], out: &mut Vec<u8>) -> Outcome {
        let key = KeyRef(key);
        if self.is_inline(key) {
            Outcome::Done(self.perform_inline(key, op, input, out))
        } else {
            Outcome::Pending(Box::pin(self.submit(key, op, input)))
        }
    }

    fn flush(&self) {
        CoreHsm::flush(self);
    }
}

/// This reactor thread's lanes, by partition and core number, so that the
/// store a reload reopens takes over the lanes of the partitions it kept
/// (same `Arc<Partition>`) instead of opening new sessions and threads.
/// Weak: a lane lives while a core part (of the old store, until its last
/// request is answered, or of the new one) holds it.
#[derive(Default)]
struct ThreadLanes(Vec<(std::sync::Weak<Partition>, usize, Weak<CoreLane>)>);

impl ThreadLanes {
    fn find(&self, p: &Arc<Partition>, core: usize) -> Option<Rc<CoreLane>> {
        self.0
            .iter()
            .find(|(wp, c, _)| *c == core && std::ptr::eq(wp.as_ptr(), Arc::as_ptr(p)))
            .and_then(|(_, _, l)| l.upgrade())
    }

    fn add(&mut self, p: &Arc<Partition>, core: usize, lane: &Rc<CoreLane>) {
        self.0
            .retain(|(wp, _, l)| wp.strong_count() > 0 && l.strong_count() > 0);
        self.0.push((Arc::downgrade(p), core, Rc::downgrade(lane)));
    }
}

thread_local! {
    static THREAD_LANES: RefCell<ThreadLanes> = RefCell::new(ThreadLanes::default());
}

#[derive(Debug)]
enum CoreLane {
    Inline(RefCell<Lane>),
    Offload(Workers),
    /// Workers could not be started; requests answer `CRYPTO`.
    Dead,
}

#[derive(Debug)]
struct CoreInner {
    shared: Arc<Shared>,
    /// The store's groups as of this core's last look: taken again when a
    /// request names a key number past its end (one a reload added; see
    /// [`Groups`]). Borrowed only inside one call, never across an await.
    groups: RefCell<Arc<Vec<Group>>>,
    /// Per partition (shared with another store's core part on this thread
    /// when a reload kept the partition; see [`ThreadLanes`]).
    lanes: Vec<Rc<CoreLane>>,
    /// Round-robin position for HA groups.
    rr: Cell<usize>,
    /// Per partition: requests submitted this turn, not yet sent.
    pending: RefCell<Vec<Vec<Job>>>,
    /// Whether a submitted future will flush on its first poll.
    flush_armed: Cell<bool>,
}

impl CoreInner {
    /// Make sure this core's groups cover `key` (a key a reload added).
    #[inline]
    fn see(&self, key: KeyRef) {
        if key.0 as usize >= self.groups.borrow().len() {
            *self.groups.borrow_mut() = self.shared.groups.snapshot();
        }
    }

    fn flush(&self) {
        self.flush_armed.set(false);
        let mut pending = self.pending.borrow_mut();
        for (pi, jobs) in pending.iter_mut().enumerate() {
            if jobs.is_empty() {
                continue;
            }
            let batch = std::mem::take(jobs);
            match &*self.lanes[pi] {
                CoreLane::Offload(w) => w.send_batch(batch),
                _ => drop(batch), // answered CRYPTO by Job::drop
            }
        }
    }

    /// Advance this core's round-robin cursor.
    fn next_start(&self) -> usize {
        let s = self.rr.get();
        self.rr.set(s.wrapping_add(1));
        s
    }

    /// The next member of `g` to try (its position in the group), starting
    /// at `start` and skipping those in `tried` (a bit per position): usable
    /// members first, round-robin, then the ones backing off (a request to
    /// one of those is its probe). Computed per attempt, so a member that
    /// just failed is not picked again. No allocation.
    fn member(&self, g: &Group, start: usize, tried: u64) -> Option<usize> {
        let n = g.members.len();
        for want_usable in [true, false] {
            for i in 0..n {
                let m = (start + i) % n;
                if tried & (1 << m) != 0 {
                    continue;
                }
                let pi = g.members[m].0;
                if self.shared.partitions[pi].health.usable() == want_usable {
                    return Some(m);
                }
            }
        }
        None
    }
}

/// One core's PKCS#11 state (sessions, handles, batches). Not `Send`.
#[derive(Debug)]
pub struct CoreHsm {
    inner: Rc<CoreInner>,
}

impl CoreHsm {
    /// Whether `key` is served inline (synchronously on the reactor).
    pub fn is_inline(&self, key: KeyRef) -> bool {
        self.inner.see(key);
        let groups = self.inner.groups.borrow();
        let Some(g) = groups.get(key.0 as usize) else {
            return true; // perform_inline answers INTERNAL
        };
        g.members
            .iter()
            .all(|&(pi, _)| matches!(*self.inner.lanes[pi], CoreLane::Inline(_)))
    }

    /// Perform an operation synchronously on this core's session. A member
    /// partition that is down is skipped for the next; an operation that
    /// does not fit the key, or fails on a healthy token, is `CRYPTO`.
    pub fn perform_inline(
        &self,
        key: KeyRef,
        op: OpClass,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ErrorCode> {
        let inner = &self.inner;
        inner.see(key);
        let groups = inner.groups.borrow();
        let g = groups.get(key.0 as usize).ok_or(ErrorCode::INTERNAL)?;
        if !op_fits(op, g.kind) {
            return Err(ErrorCode::CRYPTO);
        }
        let start = inner.next_start();
        let mut tried = 0u64;
        while let Some(m) = inner.member(g, start, tried) {
            tried |= 1 << m;
            let (pi, k) = g.members[m];
            let CoreLane::Inline(lane) = &*inner.lanes[pi] else {
                continue;
            };
            match lane.borrow_mut().perform(k, op, input, out) {
                Ok(()) => return Ok(()),
                Err(LaneError::Crypto) => return Err(ErrorCode::CRYPTO),
                // The next member (if any) gets the request.
                Err(LaneError::Failed | LaneError::Down) => continue,
            }
        }
        Err(ErrorCode::CRYPTO)
    }

    /// Submit an operation to be carried out off the reactor; the future
    /// resolves with the result. Never blocks the reactor. Requests
    /// submitted before the first of their futures is polled (or before
    /// [`CoreHsm::flush`]) go to each partition as one batch. A key served
    /// inline is performed here and the future is ready at once.
    pub fn submit(
        &self,
        key: KeyRef,
        op: OpClass,
        input: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ErrorCode>> + 'static {
        let inner = self.inner.clone();
        let start = inner.next_start();
        let (first, m) = route(&inner, key, op, input, start, 0);
        let single = inner
            .groups
            .borrow()
            .get(key.0 as usize)
            .is_none_or(|g| g.members.len() == 1);
        // Keep the input for one retry on another HA member.
        let retry_input = if single { None } else { Some(input.to_vec()) };
        async move {
            let mut r = first.await;
            if let (Err(LaneError::Down | LaneError::Failed), Some(input), Some(m)) =
                (&r, retry_input, m)
            {
                r = route(&inner, key, op, &input, start, 1 << m).0.await;
            }
            r.map_err(|e| match e {
                LaneError::Crypto | LaneError::Failed | LaneError::Down => ErrorCode::CRYPTO,
            })
        }
    }

    /// Send this turn's batches now (the server may call this at the end of
    /// each reactor turn; otherwise the first poll of a submitted future
    /// does it).
    pub fn flush(&self) {
        self.inner.flush();
    }
}

/// The future of one routed attempt.
enum Routed {
    Ready(Option<Result<Vec<u8>, LaneError>>),
    /// Queued for a worker; the core is kept to send this turn's batches on
    /// first poll (every queued future can do it, so dropping one never
    /// strands the others).
    Queued(Pending, Option<Rc<CoreInner>>),
}

impl Future for Routed {
    type Output = Result<Vec<u8>, LaneError>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Routed::Ready(r) => std::task::Poll::Ready(r.take().unwrap_or(Err(LaneError::Crypto))),
            Routed::Queued(p, core) => {
                if let Some(c) = core.take() {
                    if c.flush_armed.get() {
                        c.flush();
                    }
                }
                std::pin::Pin::new(p).poll(cx)
            }
        }
    }
}

/// Pick the next member of `key`'s group not in `tried` and either perform
/// inline or queue a job for its workers. Also returns the member's position.
fn route(
    inner: &Rc<CoreInner>,
    key: KeyRef,
    op: OpClass,
    input: &[u8],
    start: usize,
    tried: u64,
) -> (Routed, Option<usize>) {
    inner.see(key);
    let groups = inner.groups.borrow();
    let Some(g) = groups.get(key.0 as usize) else {
        return (Routed::Ready(Some(Err(LaneError::Crypto))), None);
    };
    if !op_fits(op, g.kind) {
        return (Routed::Ready(Some(Err(LaneError::Crypto))), None);
    }
    let Some(m) = inner.member(g, start, tried) else {
        return (Routed::Ready(Some(Err(LaneError::Down))), None);
    };
    let (pi, k) = g.members[m];
    let routed = match &*inner.lanes[pi] {
        CoreLane::Inline(lane) => {
            let mut out = Vec::new();
            let r = lane.borrow_mut().perform(k, op, input, &mut out);
            Routed::Ready(Some(r.map(|()| out)))
        }
        CoreLane::Dead => Routed::Ready(Some(Err(LaneError::Down))),
        CoreLane::Offload(_) => {
            let done = Arc::new(Completion::default());
            // Another member could take it if this partition is out.
            let fail_over = (0..g.members.len()).any(|o| {
                o != m
                    && tried & (1 << o) == 0
                    && inner.shared.partitions[g.members[o].0].health.is_up()
            });
            inner.pending.borrow_mut()[pi].push(Job::new(
                k,
                op,
                input.to_vec(),
                done.clone(),
                fail_over,
            ));
            inner.flush_armed.set(true);
            Routed::Queued(Pending { done }, Some(inner.clone()))
        }
    };
    (routed, Some(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(ski: u8, members: &[(usize, usize)]) -> Group {
        Group {
            ski: [ski; 20],
            members: members.to_vec(),
            kind: KeyKind::EcdsaP256,
        }
    }

    #[test]
    fn group_numbers_are_kept_for_the_same_group_and_new_for_a_changed_one() {
        let groups = Groups::default();
        assert_eq!(groups.place(group(1, &[(0, 0)])), 0);
        assert_eq!(groups.place(group(2, &[(0, 1)])), 1);
        let held = groups.snapshot();
        // The same key on the same partitions again: the same number.
        assert_eq!(groups.place(group(1, &[(0, 0)])), 0);
        // The key now also on a second partition: a new number; the old
        // group (which requests of the running generation may carry) is
        // unchanged.
        assert_eq!(groups.place(group(1, &[(0, 0), (1, 0)])), 2);
        assert_eq!(held.len(), 2);
        assert_eq!(groups.snapshot()[0].members, vec![(0, 0)]);
    }
}
