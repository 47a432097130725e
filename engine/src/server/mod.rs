//! The server: one pinned glommio executor per selected core, each with its
//! own SO_REUSEPORT listener, connections, buffers, per-core part of each
//! key store (PKCS#11 sessions, ...) and counters.
//!
//! What cores share is read-only: the limits (fixed at start-up) and the
//! served state (key index, key stores, TLS configuration; [`Served`]),
//! which a reload replaces as a whole through a [`Swap`] cell that each
//! core's control task polls (see `served.rs` for the design: no lock on the
//! data path). Cores talk to the outside only through control-plane atomics
//! (drain request, served generation) polled by a per-core task, and
//! through their metrics (single-writer atomics).
//!
//! Admission (issue 12): a connection still in the TLS handshake is not
//! authenticated, so it never takes one of the `max_connections_per_core`
//! slots of authenticated edges. Handshakes have their own, smaller budget:
//! at most `max_handshakes_per_core` at once (at the budget the core stops
//! accepting, so further connections wait in the kernel's listen backlog
//! rather than being refused), and at most `max_handshakes_per_source` from
//! one IP address (further ones are accepted and closed at once, counted in
//! `keycore_connections_refused_source_total`, logged at most once per
//! `refusals::LOG_INTERVAL`, with failed and
//! timed-out handshakes and accept errors, counted per reason). A handshake slot is held for at most
//! `handshake_timeout` (or until the drain deadline). Only a finished
//! handshake takes a connection slot; beyond `max_connections_per_core` it is
//! closed and counted in `keycore_connections_refused_total`.
//!
//! Shutdown protocol: [`ServerHandle::shutdown`] sets the drain flag; each
//! core's control task sees it within `CONTROL_POLL`, stops accepting (drops
//! its listener) and sets the drain deadline (`drain_timeout` from then).
//! Every connection then reads what is already in its socket, answers every
//! complete request and closes with close_notify; handshakes in progress may
//! finish and are then served the same way. At the deadline whatever was
//! received and not answered is counted (`keycore_requests_unanswered_total`)
//! and the connection is closed. [`ServerHandle::hurry`] (a second signal)
//! moves the deadline to at most `HURRY_GRACE` from then. The core exits
//! when it has no open connection, or at the deadline plus `CLOSE_GRACE`.
//! [`ServerHandle::join`] waits for every core.

pub mod conn;
pub mod conn_state;
pub mod dispatch;
pub mod port;
pub mod served;
pub mod tls;

pub use served::{CoreServed, Served, Stores};

use crate::metrics::{CoreStats, Registry};
use crate::refusals::{Refusal, RefusalLog};
use crate::security::{AuditTx, ClientRules, CoreSecurity, Identities, Policy};
use crate::swap::Swap;
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use keycore_keys::KeyIndex;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// How often a core's control task looks at the shared drain flag. Control
/// plane only; 20 ms bounds how late a drain starts.
const CONTROL_POLL: Duration = Duration::from_millis(20);

/// Per-connection and per-core limits, fixed at start-up: part of the
/// configuration (one definition, with the config keys of the same names).
pub use keycore_config::Limits;

/// A hurried drain (second signal) ends at most this long after the hurry:
/// long enough to write answers already computed, short enough to feel
/// immediate to an operator.
pub const HURRY_GRACE: Duration = Duration::from_millis(500);

/// Longest a graceful close (close_notify) may take; a peer whose socket is
/// full is dropped without it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The sans-IO connection core's limits from the configured ones. The
/// answer queue holds up to one padded answer per in-flight request (1 MiB
/// with the default 1024), and at least one full write buffer.
pub fn conn_limits(l: &Limits) -> conn_state::ConnLimits {
    conn_state::ConnLimits {
        max_in_flight: l.max_in_flight_per_connection,
        answer_queue_bytes: (l.max_in_flight_per_connection * keycore_protocol::PADDED_LEN)
            .max(l.write_buffer_bytes),
        idle_timeout: l.idle_timeout,
        read_buffer_bytes: l.read_buffer_bytes,
        write_buffer_bytes: l.write_buffer_bytes,
        max_body_len: l.max_body_len,
        turn_budget: conn_state::TURN_BUDGET,
    }
}

/// Everything `start` needs.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on (port 0 picks a free port, shared by all cores).
    pub listen: SocketAddr,
    /// CPU ids to run one pinned reactor on each.
    pub cpus: Vec<usize>,
    /// Limits.
    pub limits: Limits,
    /// The request tracer when `tracing_enabled`: each core takes its span
    /// sender from it at start.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// The traffic recorder when `record_file` is set: each core takes its
    /// buffer from it at start.
    pub recorder: Option<Arc<crate::record::Recorder>>,
}

/// The issue-18 parts the cores share for the process's life: the client
/// identity table and the audit writer's sender (the allow-list, the
/// limits and the key policies are reloaded, in `Served`).
#[derive(Debug, Clone)]
pub struct SecurityParts {
    /// The client identity table (labels, connection counts, refusal
    /// counters). The allow-list, limits and key policies are part of the
    /// reloaded state (`Served::clients`, `Served::policy`).
    pub identities: Arc<Identities>,
    /// The audit writer; `None`: nothing is counted or recorded.
    pub audit: Option<AuditTx>,
    /// With `audit_fail_closed`: false while the audit file is down.
    pub audit_ok: Option<Arc<AtomicBool>>,
    /// How often each core hands its counts to the writer.
    pub audit_interval: Duration,
}

impl Default for SecurityParts {
    /// No identities, no policy, no audit: the server as before issue 18.
    fn default() -> Self {
        SecurityParts {
            identities: Arc::new(Identities::new(&Default::default(), None)),
            audit: None,
            audit_ok: None,
            audit_interval: Duration::from_secs(10),
        }
    }
}

/// What one core owns. Lives in an `Rc` on its reactor thread.
pub struct CoreCtx {
    /// Index of this core in the configured list.
    pub index: usize,
    /// What this core serves (keys, its part of every store, TLS
    /// acceptor); replaced by the control task when a reload publishes a
    /// new generation. Read by connections once per turn.
    served: RefCell<Rc<CoreServed>>,
    /// The [`Swap`] generation `served` was built from.
    served_gen: Cell<u64>,
    /// This core's counters.
    pub stats: Arc<CoreStats>,
    /// Client identities (shared).
    pub identities: Arc<Identities>,
    /// This core's rate limiters and audit counts.
    pub sec: CoreSecurity,
    /// This core's request tracer, when `tracing_enabled`.
    pub tracer: Option<crate::trace::CoreTracer>,
    /// This core's traffic-recording buffer, when `record_file` is set.
    pub recorder: Option<crate::record::CoreRecorder>,
    /// Limits.
    pub limits: Limits,
    /// Set once the core drains.
    pub draining: Cell<bool>,
    /// When the drain must be over (set with `draining`, moved earlier by a hurry).
    drain_deadline: Cell<Option<Instant>>,
    /// Bumped on every control event (drain start, hurry); connections
    /// compare it with the value they last saw.
    control_gen: Cell<u64>,
    /// Wakers of connections waiting for input, woken on drain: one slot
    /// per open connection (see [`DrainSlot`]).
    drain_wakers: RefCell<DrainWakers>,
    /// Admission state (accept loop and handshake tickets).
    admission: RefCell<Admission>,
    /// Connections dropped before they were served, since the last log line.
    refusals: RefCell<RefusalLog>,
    /// Ciphertext of one connection's coalesced write (all its TLS records,
    /// sent with one `send`), reused by every connection of the core: taken
    /// for the write and put back after, so a connection that finds it
    /// taken (another one's write is waiting on a full socket) uses a fresh
    /// one. At most `write_buffer_bytes` + one message + record overhead.
    pub(crate) tls_out: RefCell<Vec<u8>>,
}

/// One waker slot per open connection plus a free list. A connection takes
/// a slot when it starts and gives it back when it ends, so registering a
/// waker is O(1) per wait and closed connections leave nothing behind
/// (bounded by `max_connections_per_core`). A plain list scanned for
/// `will_wake` was O(connections) per wait and kept every closed
/// connection's waker (and with it its task allocation) until shutdown.
#[derive(Default)]
struct DrainWakers {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl DrainWakers {
    /// Take a free slot (reusing a closed connection's first).
    fn take(&mut self) -> usize {
        match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        }
    }

    /// Give a slot back, dropping its waker.
    fn release(&mut self, index: usize) {
        self.slots[index] = None;
        self.free.push(index);
    }

    /// Every registered waker, leaving the slots empty.
    fn take_all(&mut self) -> Vec<Waker> {
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

/// A connection's drain-waker slot; frees the slot on drop.
pub struct DrainSlot<'a> {
    core: &'a CoreCtx,
    index: usize,
}

impl std::fmt::Debug for DrainSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainSlot")
            .field("index", &self.index)
            .finish()
    }
}

impl DrainSlot<'_> {
    /// Ready once the core's control generation differs from `seen` (a drain
    /// started or was hurried); otherwise registers the task's waker.
    pub fn poll_changed(&self, cx: &mut std::task::Context<'_>, seen: u64) -> Poll<()> {
        if self.core.control_gen.get() != seen {
            return Poll::Ready(());
        }
        let mut w = self.core.drain_wakers.borrow_mut();
        match &mut w.slots[self.index] {
            Some(x) if x.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Resolves once the control generation differs from `seen`.
    pub async fn changed(&self, seen: u64) {
        future::poll_fn(|cx| self.poll_changed(cx, seen)).await
    }
}

impl Drop for DrainSlot<'_> {
    fn drop(&mut self) {
        self.core.drain_wakers.borrow_mut().release(self.index);
    }
}

impl std::fmt::Debug for CoreCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreCtx")
            .field("index", &self.index)
            .finish()
    }
}

impl CoreCtx {
    /// A drain-waker slot for one connection (held for its lifetime).
    pub fn drain_slot(&self) -> DrainSlot<'_> {
        let index = self.drain_wakers.borrow_mut().take();
        DrainSlot { core: self, index }
    }

    /// What this core serves now (see [`Self::served_generation`]).
    pub fn served(&self) -> Rc<CoreServed> {
        self.served.borrow().clone()
    }

    /// Generation of [`Self::served`]; a connection compares it once per
    /// turn with the one it holds.
    #[inline]
    pub fn served_generation(&self) -> u64 {
        self.served_gen.get()
    }

    /// Control task: take up a newly published served state, keeping this
    /// core's part of every store that did not change, then wake every
    /// connection so idle ones let go of the old generation too.
    fn take_up(&self, cell: &Swap<Served>) {
        let (next, generation) = cell.load();
        let prev = self.served();
        let built = CoreServed::build(next, self.index, Some(&prev));
        drop(prev);
        // The reload's rate limits, before any connection serves from it.
        self.sec.retune(&built.served.clients);
        *self.served.borrow_mut() = Rc::new(built);
        self.served_gen.set(generation);
        tracing::debug!(core = self.index, generation, "reloaded state taken up");
        self.control_event();
    }

    /// The control generation (see [`DrainSlot::poll_changed`]).
    pub fn control_gen(&self) -> u64 {
        self.control_gen.get()
    }

    /// The drain deadline, once draining.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get()
    }

    fn control_event(&self) {
        self.control_gen.set(self.control_gen.get() + 1);
        let wakers = self.drain_wakers.borrow_mut().take_all();
        for w in wakers {
            w.wake();
        }
    }

    fn start_drain(&self, deadline: Instant) {
        self.draining.set(true);
        self.drain_deadline.set(Some(deadline));
        self.control_event();
    }

    /// Move the drain deadline to at most `deadline`.
    fn hurry(&self, deadline: Instant) {
        if self.drain_deadline.get().is_some_and(|d| d > deadline) {
            self.drain_deadline.set(Some(deadline));
            self.control_event();
        }
    }

    /// Count a connection dropped before it was served, by reason (its
    /// metric), and log the per-core summary at most once per
    /// [`crate::refusals::LOG_INTERVAL`] (see `refusals`).
    pub fn refused(
        &self,
        r: Refusal,
        peer: Option<SocketAddr>,
        error: Option<&dyn std::fmt::Display>,
    ) {
        let s = &self.stats;
        match r {
            Refusal::HandshakeTimeout => s.handshake_timeouts.inc(),
            Refusal::SourceLimit => s.refused_source.inc(),
            Refusal::ConnectionLimit => s.refused.inc(),
            _ => {}
        }
        if let Some(i) = r.tls_index() {
            s.tls_failures.inc();
            s.tls_failure_reasons[i].inc();
        }
        if let Some(i) = r.accept_index() {
            s.accept_errors[i].inc();
        }
        let line = self
            .refusals
            .borrow_mut()
            .note(r, peer, error, Instant::now());
        if let Some(line) = line {
            tracing::warn!(core = self.index, "{line}");
        }
    }

    /// Log the refusal summary if one is due (the control task, each tick).
    fn flush_refusals(&self) {
        let line = self.refusals.borrow_mut().flush(Instant::now());
        if let Some(line) = line {
            tracing::warn!(core = self.index, "{line}");
        }
    }

    /// Take a handshake slot for `peer`, or `None` if its source is at
    /// `max_handshakes_per_source`. The core-wide budget is enforced by the
    /// accept loop before accepting.
    fn begin_handshake(self: &Rc<Self>, peer: IpAddr) -> Option<HandshakeTicket> {
        let mut a = self.admission.borrow_mut();
        let n = a.per_source.entry(peer).or_insert(0);
        if *n >= self.limits.max_handshakes_per_source {
            if *n == 0 {
                a.per_source.remove(&peer);
            }
            return None;
        }
        *n += 1;
        a.handshaking += 1;
        self.stats.handshaking.inc();
        Some(HandshakeTicket {
            core: self.clone(),
            peer,
            done: false,
        })
    }

    /// Resolves once fewer than `max_handshakes_per_core` handshakes run.
    async fn handshake_room(&self) {
        future::poll_fn(|cx| {
            let mut a = self.admission.borrow_mut();
            if a.handshaking < self.limits.max_handshakes_per_core {
                Poll::Ready(())
            } else {
                a.accept_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    /// An authenticated connection wants a slot; `false` at the limit.
    pub(crate) fn take_connection_slot(&self) -> bool {
        let mut a = self.admission.borrow_mut();
        if a.established >= self.limits.max_connections_per_core {
            return false;
        }
        a.established += 1;
        true
    }

    /// An authenticated connection ended.
    pub(crate) fn release_connection_slot(&self) {
        let mut a = self.admission.borrow_mut();
        a.established -= 1;
    }
}

/// Per-core admission counters (see the module header).
#[derive(Debug, Default)]
struct Admission {
    /// Connections in the TLS handshake.
    handshaking: usize,
    /// The same, per source address (entries removed at zero, so at most
    /// `max_handshakes_per_core` entries).
    per_source: HashMap<IpAddr, usize>,
    /// Authenticated connections (hold a connection slot).
    established: usize,
    /// The accept loop, waiting for handshake room.
    accept_waker: Option<Waker>,
}

/// A connection's handshake slot; given back when the handshake ends
/// (either way) or the task is dropped.
#[derive(Debug)]
pub struct HandshakeTicket {
    core: Rc<CoreCtx>,
    peer: IpAddr,
    done: bool,
}

impl HandshakeTicket {
    /// The handshake is over: free the slot.
    pub fn finish(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut a = self.core.admission.borrow_mut();
        a.handshaking -= 1;
        self.core.stats.handshaking.sub(1);
        if let Some(n) = a.per_source.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                a.per_source.remove(&self.peer);
            }
        }
        if let Some(w) = a.accept_waker.take() {
            w.wake();
        }
    }
}

impl Drop for HandshakeTicket {
    fn drop(&mut self) {
        self.release();
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the cores listen on.
    pub addr: SocketAddr,
    /// Counters of every core, for scrapes and tests.
    pub registry: Arc<Registry>,
    /// What the cores serve; a reload stores a new value here.
    pub served: Arc<Swap<Served>>,
    control: ServerControl,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
    /// The exclusive claim on `addr`, released when the handle goes (after
    /// the cores have dropped their listeners in `join`).
    _claim: port::PortClaim,
}

/// Drain controls of a running server, for another thread (signal handling)
/// while the owner joins.
#[derive(Debug, Clone, Default)]
pub struct ServerControl {
    drain: Arc<AtomicBool>,
    hurry: Arc<AtomicBool>,
}

impl ServerControl {
    /// Ask every core to drain and stop. Returns at once.
    pub fn shutdown(&self) {
        self.drain.store(true, Ordering::Release);
    }

    /// Shorten a drain (started or not yet): it ends at most
    /// [`HURRY_GRACE`] after the cores see this.
    pub fn hurry(&self) {
        self.hurry.store(true, Ordering::Release);
        self.drain.store(true, Ordering::Release);
    }
}

impl ServerHandle {
    /// Ask every core to drain and stop. Returns at once; see [`Self::join`].
    pub fn shutdown(&self) {
        self.control.shutdown();
    }

    /// Shorten the drain (a second signal); see [`ServerControl::hurry`].
    pub fn hurry(&self) {
        self.control.hurry();
    }

    /// The drain controls, usable from another thread.
    pub fn control(&self) -> ServerControl {
        self.control.clone()
    }

    /// Wait for every core to exit.
    pub fn join(self) -> Result<(), ServerError> {
        for t in self.threads {
            t.join().map_err(|e| ServerError::Reactor(e.to_string()))?;
        }
        Ok(())
    }
}

/// Why the server could not start (or a reactor failed). Names the core,
/// CPU or address; the underlying error is the source.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The limits contradict each other.
    #[error(transparent)]
    Limits(#[from] keycore_config::LimitsError),
    /// `cpus` selected no core.
    #[error("no cores selected")]
    NoCores,
    /// The client identities have no slot left (see `ClientRules::build`).
    #[error(transparent)]
    Clients(#[from] crate::security::NoIdentitySlot),
    /// The address could not be claimed, or another process holds it.
    #[error(transparent)]
    Port(#[from] port::PortError),
    /// One reactor's listening socket could not be made.
    #[error("core {core}")]
    Listen {
        /// The core.
        core: usize,
        /// What failed.
        #[source]
        source: port::PortError,
    },
    /// A reactor thread could not be started (glommio's error, as text:
    /// it is not `Send`).
    #[error("start reactor on cpu {cpu}: {reason}")]
    Spawn {
        /// The CPU asked for.
        cpu: usize,
        /// glommio's reason.
        reason: String,
    },
    /// A reactor thread ended before it reported whether it listens.
    #[error("a reactor thread ended before it was ready (see the panic above)")]
    ReactorDied,
    /// A reactor thread failed (joined with an error). glommio's error, as
    /// text: it is not `Send`, so it cannot be kept as a source.
    #[error("reactor thread failed: {0}")]
    Reactor(String),
}

/// Start the reactors serving a fixed key index, stores and TLS
/// configuration (tests, benches; `launch` uses [`start_served`]).
pub fn start(
    settings: ServerSettings,
    tls: Arc<rustls::ServerConfig>,
    keys: Arc<KeyIndex>,
    stores: Stores,
    registry: Registry,
) -> Result<ServerHandle, ServerError> {
    let security = SecurityParts::default();
    let clients = ClientRules::build(&Default::default(), &security.identities)?;
    let served = Served {
        keys,
        stores,
        tls,
        policy: Arc::new(Policy::default()),
        clients: Arc::new(clients),
    };
    start_served(
        settings,
        Arc::new(Swap::new(Arc::new(served))),
        registry,
        security,
    )
}

/// Start the reactors serving what `served` holds (and whatever a reload
/// stores there later), with client identities and an audit writer.
/// Returns once every core listens.
pub fn start_served(
    settings: ServerSettings,
    served: Arc<Swap<Served>>,
    mut registry: Registry,
    security: SecurityParts,
) -> Result<ServerHandle, ServerError> {
    settings.limits.validate()?;
    if settings.cpus.is_empty() {
        return Err(ServerError::NoCores);
    }
    // The exclusive claim on the address (see `port`): a second process on
    // it fails here; port 0 picks one free port for every core.
    let claim = port::PortClaim::take(settings.listen)?;
    let listen = claim.addr();

    let stats: Vec<Arc<CoreStats>> = (0..settings.cpus.len())
        .map(|i| Arc::new(CoreStats::new(i)))
        .collect();
    registry.cores = stats.clone();
    let registry = Arc::new(registry);
    let control = ServerControl::default();
    // Each core reports once: listening, or why not. A core whose thread
    // dies before reporting (a panic while building its context) drops its
    // sender, so the wait below ends instead of spinning forever.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u64, ServerError>>();
    let mut threads = Vec::new();
    for (index, &cpu) in settings.cpus.iter().enumerate() {
        let cell = served.clone();
        let stats = stats[index].clone();
        let tracer = settings.tracer.as_ref().map(|t| t.core(index));
        let recorder = settings.recorder.clone();
        let limits = settings.limits.clone();
        let control = control.clone();
        let ready = ready_tx.clone();
        // Bound here, on the starting thread, so a failure is reported
        // with the claim's context; the reactor adopts the socket.
        let bound = claim.listener().map_err(|source| ServerError::Listen {
            core: index,
            source,
        });
        let security = security.clone();
        let cores = settings.cpus.len();
        let placement = if cpu == usize::MAX {
            Placement::Unbound
        } else {
            Placement::Fixed(cpu)
        };
        let mut builder =
            LocalExecutorBuilder::new(placement).name(&format!("keycore-core{index}"));
        // `reactor_spin`: poll through short idle gaps instead of sleeping
        // (a sleeping core's wake-up lands in the next request's latency).
        if let Some(spin) = settings.limits.reactor_spin {
            builder = builder.spin_before_park(spin);
        }
        let t = builder
            .spawn(move || async move {
                let (listener, inode) = match bound {
                    // SAFETY: a bound, listening socket, owned by nothing else.
                    Ok((l, inode)) => (
                        unsafe {
                            <glommio::net::TcpListener as std::os::fd::FromRawFd>::from_raw_fd(
                                std::os::fd::IntoRawFd::into_raw_fd(l),
                            )
                        },
                        inode,
                    ),
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                let (first, generation) = cell.load();
                let sec = CoreSecurity::new(
                    index,
                    cores,
                    &first.clients,
                    security.audit.clone(),
                    security.audit_ok.clone(),
                );
                let core = Rc::new(CoreCtx {
                    index,
                    served: RefCell::new(Rc::new(CoreServed::build(first, index, None))),
                    served_gen: Cell::new(generation),
                    stats,
                    identities: security.identities.clone(),
                    sec,
                    tracer,
                    recorder: recorder.and_then(|r| r.core(index)),
                    limits,
                    draining: Cell::new(false),
                    drain_deadline: Cell::new(None),
                    control_gen: Cell::new(0),
                    drain_wakers: RefCell::new(DrainWakers::default()),
                    admission: RefCell::new(Admission::default()),
                    refusals: RefCell::new(RefusalLog::default()),
                    tls_out: RefCell::new(Vec::new()),
                });
                let _ = ready.send(Ok(inode));
                drop(ready);
                tracing::info!(core = index, cpu, %listen, "reactor listening");
                run_core(core, listener, control, cell, security.audit_interval).await;
                tracing::info!(core = index, "reactor stopped");
            })
            .map_err(|e| ServerError::Spawn {
                cpu,
                reason: e.to_string(),
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut failed = None;
    let mut ours = std::collections::HashSet::new();
    for _ in 0..settings.cpus.len() {
        match ready_rx.recv() {
            Ok(Ok(inode)) => {
                ours.insert(inode);
            }
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            // Every sender is gone with reports missing: a reactor thread
            // ended (panicked) before it could say whether it listens.
            Err(_) => {
                failed.get_or_insert(ServerError::ReactorDied);
                break;
            }
        }
    }
    if failed.is_none() {
        if let Err(e) = claim.check_sole_owner(&ours) {
            failed = Some(e.into());
        }
    }
    if let Some(e) = failed {
        control.shutdown();
        for t in threads {
            let _ = t.join();
        }
        return Err(e);
    }
    Ok(ServerHandle {
        addr: listen,
        registry,
        served,
        control,
        threads,
        _claim: claim,
    })
}

async fn run_core(
    core: Rc<CoreCtx>,
    listener: glommio::net::TcpListener,
    control: ServerControl,
    served: Arc<Swap<Served>>,
    audit_interval: Duration,
) {
    let open = Rc::new(Cell::new(0usize));
    let accept_loop = {
        let core = core.clone();
        let open = open.clone();
        async move {
            loop {
                // Handshake budget: at the limit, leave new connections in
                // the kernel's backlog until a handshake ends.
                core.handshake_room().await;
                let s = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of descriptors (or memory): counted and
                        // summarised, not a line per retry.
                        let errno = match &e {
                            glommio::GlommioError::IoError(io) => io.raw_os_error(),
                            _ => None,
                        };
                        core.refused(Refusal::of_accept(errno), None, Some(&e));
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                core.stats.accepted.inc();
                let peer = s.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                let Some(ticket) = core.begin_handshake(peer.ip()) else {
                    core.refused(Refusal::SourceLimit, Some(peer), None);
                    drop(s);
                    continue;
                };
                open.set(open.get() + 1);
                core.stats.open.inc();
                let core2 = core.clone();
                let open2 = open.clone();
                glommio::spawn_local(async move {
                    conn::serve(core2.clone(), s, peer, ticket).await;
                    open2.set(open2.get() - 1);
                    core2.stats.open.sub(1);
                })
                .detach();
            }
        }
    };
    // The control task: also the core's heartbeat for `/healthz` (a core
    // that stops turning stops beating), and where a reload's new served
    // state is taken up (one atomic load per tick when nothing changed).
    let watch_drain = async {
        core.stats.heartbeat.beat();
        while !control.drain.load(Ordering::Acquire) {
            glommio::timer::sleep(CONTROL_POLL).await;
            core.stats.heartbeat.beat();
            core.flush_refusals();
            if served.generation() != core.served_generation() {
                core.take_up(&served);
            }
        }
    };
    // The accept loop runs as its own task, not raced with `watch_drain` in
    // this one: glommio's accept future adds a clone of the polling task's
    // waker to the listener's source on *every* poll and releases them only
    // when a connection arrives. Raced here, it was re-polled by each 20 ms
    // drain tick, so a core that accepted nothing for ~11 minutes (32,767
    // polls) overflowed the task's reference count and its reactor thread
    // panicked ("Waker invariant broken"). In its own task it is polled only
    // when a connection arrives. Cancelling the task (drop) drops the
    // listener, so no new connection lands on this core.
    let accept_task = glommio::spawn_local(accept_loop);
    // Hand this core's audit counts to the writer every interval (a message,
    // never a lock the data path could meet).
    let audit_task = {
        let core = core.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(audit_interval).await;
                core.sec.flush();
            }
        })
    };
    watch_drain.await;
    drop(accept_task);
    core.start_drain(Instant::now() + core.limits.drain_timeout);
    let mut hurried = false;
    loop {
        let now = Instant::now();
        if !hurried && control.hurry.load(Ordering::Acquire) {
            hurried = true;
            tracing::warn!(core = core.index, "drain hurried");
            core.hurry(now + HURRY_GRACE);
        }
        let deadline = core.drain_deadline().unwrap_or(now);
        // Connections close themselves by the deadline; the grace covers
        // their bounded close_notify.
        if open.get() == 0 || now >= deadline + CLOSE_GRACE {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
        core.stats.heartbeat.beat();
    }
    if open.get() > 0 {
        tracing::warn!(
            core = core.index,
            open = open.get(),
            "drain timeout; closing remaining connections"
        );
    }
    drop(audit_task);
    // The last counts (requests answered during the drain).
    core.sec.flush();
    core.stats.heartbeat.stop();
}

/// All CPUs this process may run on, for the `cores` default.
pub fn available_cpus() -> Vec<usize> {
    match core_affinity::get_core_ids() {
        Some(ids) if !ids.is_empty() => ids.into_iter().map(|c| c.id).collect(),
        _ => vec![usize::MAX],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_keys::{CoreStore, KeyStore, PromWriter};
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A store whose per-core part cannot be built: the reactor thread
    /// panics before it reports ready.
    #[derive(Debug)]
    struct PanicsOnCore;

    impl KeyStore for PanicsOnCore {
        fn name(&self) -> &'static str {
            "panics"
        }
        fn core(self: Arc<Self>, _core: usize) -> Box<dyn CoreStore> {
            panic!("test: this store's core part cannot be built")
        }
        fn render_metrics(&self, _w: &mut PromWriter<'_>) {}
    }

    #[test]
    fn start_fails_instead_of_hanging_when_a_reactor_panics_before_ready() {
        // Regression: start() polled a ready counter the panicked thread
        // never incremented, and spun forever.
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate(dir.path()).unwrap();
        let tls = tls::server_config(&tls::TlsSettings {
            cert: &pki.server_cert,
            key: &pki.server_key,
            client_ca: &pki.ca_cert,
            tls12_only: false,
            current_time: None,
        })
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = start(
                ServerSettings {
                    listen: "127.0.0.1:0".parse().unwrap(),
                    cpus: vec![usize::MAX; 2],
                    limits: Limits::default(),
                    tracer: None,
                    recorder: None,
                },
                tls,
                Arc::new(KeyIndex::default()),
                vec![Arc::new(PanicsOnCore)],
                Registry::default(),
            );
            let _ = tx.send(r.map(|h| h.addr).map_err(|e| e.to_string()));
        });
        // A limit, not a benchmark: start-up of two reactors takes far less.
        let r = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("start() returned");
        let e = r.expect_err("a reactor that panicked must fail start()");
        assert!(e.contains("ended before it was ready"), "{e}");
    }

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn closed_connections_leave_no_drain_waker_behind() {
        // Regression: the list kept every closed connection's waker (and its
        // task) until shutdown, and was scanned on every wait.
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let mut w = DrainWakers::default();
        let kept = w.take();
        w.slots[kept] = Some(Waker::from(count.clone()));
        for _ in 0..10_000 {
            let i = w.take();
            w.slots[i] = Some(Waker::from(count.clone()));
            w.release(i);
        }
        assert_eq!(w.slots.len(), 2, "slots are reused, not piled up");
        assert_eq!(Arc::strong_count(&count), 2, "released wakers are dropped");
        for waker in w.take_all() {
            waker.wake();
        }
        assert_eq!(
            count.0.load(Ordering::Relaxed),
            1,
            "only the open connection is woken"
        );
    }
}
