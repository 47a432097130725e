//! The server: one pinned glommio executor per selected core, each with its
//! own SO_REUSEPORT listener, connections, buffers, per-core part of each
//! key store (PKCS#11 sessions, ...) and counters.
//!
//! What cores share is built before they start and is read-only: the key
//! index (`Arc<KeyIndex>`), the TLS configuration, the limits. Cores talk to
//! the outside only through control-plane atomics (drain request) polled by a
//! per-core task, and through their metrics (single-writer atomics).
//!
//! Shutdown protocol: [`ServerHandle::shutdown`] sets the drain flag; each
//! core's control task sees it within `CONTROL_POLL`, stops accepting (drops
//! its listener), wakes its connections, which answer what they already read
//! and close; the core exits when it has no open connection or when
//! `drain_timeout` passes, whichever is first. [`ServerHandle::join`] waits
//! for every core.

pub mod conn;
pub mod dispatch;
pub mod tls;

use crate::metrics::{CoreStats, Registry};
use anyhow::{bail, Context, Result};
use futures_lite::future;
use glommio::{LocalExecutorBuilder, Placement};
use keycore_keys::{CoreStore, KeyIndex, KeyStore};
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
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

/// Everything `start` needs.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Address to listen on (port 0 picks a free port, shared by all cores).
    pub listen: SocketAddr,
    /// CPU ids to run one pinned reactor on each.
    pub cpus: Vec<usize>,
    /// Limits.
    pub limits: Limits,
}

/// What one core owns. Lives in an `Rc` on its reactor thread.
pub struct CoreCtx {
    /// Index of this core in the configured list.
    pub index: usize,
    /// The start-up key index.
    pub keys: Arc<KeyIndex>,
    /// This core's part of every key store, indexed by `StoreId`.
    pub stores: Vec<Box<dyn CoreStore>>,
    /// This core's counters.
    pub stats: Arc<CoreStats>,
    /// Limits.
    pub limits: Limits,
    /// TLS acceptor (shared read-only config).
    pub acceptor: futures_rustls::TlsAcceptor,
    /// Set once the core drains.
    pub draining: Cell<bool>,
    /// Wakers of connections waiting for input, woken on drain: one slot
    /// per open connection (see [`DrainSlot`]).
    drain_wakers: RefCell<DrainWakers>,
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
    /// Resolves once the core starts draining.
    pub async fn notice(&self) {
        future::poll_fn(|cx| {
            if self.core.draining.get() {
                return Poll::Ready(());
            }
            let mut w = self.core.drain_wakers.borrow_mut();
            match &mut w.slots[self.index] {
                Some(x) if x.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
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

    fn start_drain(&self) {
        self.draining.set(true);
        let wakers = self.drain_wakers.borrow_mut().take_all();
        for w in wakers {
            w.wake();
        }
    }
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the cores listen on.
    pub addr: SocketAddr,
    /// Counters of every core, for scrapes and tests.
    pub registry: Arc<Registry>,
    drain: Arc<AtomicBool>,
    threads: Vec<glommio::ExecutorJoinHandle<()>>,
}

impl ServerHandle {
    /// Ask every core to drain and stop. Returns at once; see [`Self::join`].
    pub fn shutdown(&self) {
        self.drain.store(true, Ordering::Release);
    }

    /// Wait for every core to exit.
    pub fn join(self) -> Result<()> {
        for t in self.threads {
            t.join()
                .map_err(|e| anyhow::anyhow!("reactor thread failed: {e}"))?;
        }
        Ok(())
    }
}

/// The opened key stores, shared by every core, in `StoreId` order (the
/// registry's `OpenedStores::stores`). Each core takes its own part.
pub type Stores = Vec<Arc<dyn KeyStore>>;

/// Start the reactors. Returns once every core listens.
pub fn start(
    settings: ServerSettings,
    tls: Arc<rustls::ServerConfig>,
    keys: Arc<KeyIndex>,
    stores: Stores,
    mut registry: Registry,
) -> Result<ServerHandle> {
    settings.limits.validate()?;
    if settings.cpus.is_empty() {
        bail!("no cores selected");
    }
    // Port 0: reserve one free port with a bound-but-not-listening socket
    // (SO_REUSEPORT) so every core can bind the same port; it receives no
    // connections because it never listens.
    let (listen, _reservation) = if settings.listen.port() == 0 {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(settings.listen),
            socket2::Type::STREAM,
            None,
        )?;
        s.set_reuse_port(true)?;
        s.set_reuse_address(true)?;
        s.bind(&settings.listen.into())
            .with_context(|| format!("bind {}", settings.listen))?;
        let a = s
            .local_addr()?
            .as_socket()
            .context("reserved address is not an IP socket")?;
        (a, Some(s))
    } else {
        (settings.listen, None)
    };

    let stats: Vec<Arc<CoreStats>> = (0..settings.cpus.len())
        .map(|i| Arc::new(CoreStats::new(i)))
        .collect();
    registry.cores = stats.clone();
    let registry = Arc::new(registry);
    let drain = Arc::new(AtomicBool::new(false));
    // Each core reports once: listening, or why not. A core whose thread
    // dies before reporting (a panic while building its context) drops its
    // sender, so the wait below ends instead of spinning forever.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut threads = Vec::new();
    for (index, &cpu) in settings.cpus.iter().enumerate() {
        let keys = keys.clone();
        let stores = stores.clone();
        let stats = stats[index].clone();
        let limits = settings.limits.clone();
        let tls = tls.clone();
        let drain = drain.clone();
        let ready = ready_tx.clone();
        let placement = if cpu == usize::MAX {
            Placement::Unbound
        } else {
            Placement::Fixed(cpu)
        };
        let t = LocalExecutorBuilder::new(placement)
            .name(&format!("keycore-core{index}"))
            .spawn(move || async move {
                let listener = match glommio::net::TcpListener::bind(listen) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready.send(Err(format!("core {index}: bind {listen}: {e}")));
                        return;
                    }
                };
                let stores = stores.into_iter().map(|s| s.core(index)).collect();
                let core = Rc::new(CoreCtx {
                    index,
                    stores,
                    keys,
                    stats,
                    limits,
                    acceptor: futures_rustls::TlsAcceptor::from(tls),
                    draining: Cell::new(false),
                    drain_wakers: RefCell::new(DrainWakers::default()),
                    tls_out: RefCell::new(Vec::new()),
                });
                let _ = ready.send(Ok(()));
                drop(ready);
                tracing::info!(core = index, cpu, %listen, "reactor listening");
                run_core(core, listener, drain).await;
                tracing::info!(core = index, "reactor stopped");
            })
            .map_err(|e| anyhow::anyhow!("start reactor on cpu {cpu}: {e}"))?;
        threads.push(t);
    }
    drop(ready_tx);
    let mut failed = None;
    for _ in 0..settings.cpus.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed.get_or_insert(e);
            }
            // Every sender is gone with reports missing: a reactor thread
            // ended (panicked) before it could say whether it listens.
            Err(_) => {
                failed.get_or_insert_with(|| {
                    "a reactor thread ended before it was ready (see the panic above)".into()
                });
                break;
            }
        }
    }
    if let Some(e) = failed {
        drain.store(true, Ordering::Release);
        for t in threads {
            let _ = t.join();
        }
        bail!(e);
    }
    Ok(ServerHandle {
        addr: listen,
        registry,
        drain,
        threads,
    })
}

async fn run_core(core: Rc<CoreCtx>, listener: glommio::net::TcpListener, drain: Arc<AtomicBool>) {
    let open = Rc::new(Cell::new(0usize));
    let accept_loop = {
        let core = core.clone();
        let open = open.clone();
        async move {
            loop {
                let s = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(core = core.index, error = %e, "accept failed");
                        glommio::timer::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                core.stats.accepted.inc();
                let peer = s.peer_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                if open.get() >= core.limits.max_connections_per_core {
                    core.stats.refused.inc();
                    tracing::warn!(core = core.index, %peer, limit = core.limits.max_connections_per_core, "connection limit reached; closing new connection");
                    drop(s);
                    continue;
                }
                open.set(open.get() + 1);
                core.stats.open.inc();
                let core2 = core.clone();
                let open2 = open.clone();
                glommio::spawn_local(async move {
                    conn::serve(core2.clone(), s, peer).await;
                    open2.set(open2.get() - 1);
                    core2.stats.open.sub(1);
                })
                .detach();
            }
        }
    };
    // The control task: also the core's heartbeat for `/healthz` (a core
    // that stops turning stops beating).
    let watch_drain = async {
        core.stats.heartbeat.beat();
        while !drain.load(Ordering::Acquire) {
            glommio::timer::sleep(CONTROL_POLL).await;
            core.stats.heartbeat.beat();
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
    watch_drain.await;
    drop(accept_task);
    core.start_drain();
    let deadline = Instant::now() + core.limits.drain_timeout;
    while open.get() > 0 && Instant::now() < deadline {
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
    use keycore_keys::PromWriter;
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
