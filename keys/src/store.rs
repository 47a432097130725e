//! The key-backend seam: what a key store (PKCS#11 tokens, a cloud KMS, any
//! future backend) gives the server, and what one core asks of it.
//!
//! Shape (DESIGN.md "one reactor per core"): a store is opened once at
//! start-up by the engine's registry, which routes each `uri:` store entry to
//! the backend that claims it and hands the store its [`StoreId`]. The store
//! returns [`KeyEntry`](crate::KeyEntry)s whose backend is a [`StoreKey`] and
//! a [`KeyStore`] shared read-only by every core. Each reactor then asks it
//! once, on its own thread, for its [`CoreStore`] (sessions, batches and
//! channels that belong to that core alone), and dispatch calls
//! [`CoreStore::perform`] per request: one call shape that returns either a
//! finished result or a pending completion ([`Outcome`]).
//!
//! Must not: parse configuration, know the wire format beyond `OpClass` and
//! `ErrorCode`, or know which backends exist (the registry does).

use crate::prom::PromWriter;
use keycore_protocol::{ErrorCode, OpClass};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Which registered store a key belongs to (its position in the server's
/// store list). Assigned by the registry when the store is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreId(pub u16);

/// A key of a store: the store, and the store's own number for the key.
/// Small and `Copy`: it sits in the shared key index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreKey {
    /// The store holding the key.
    pub store: StoreId,
    /// The store's own index of the key (meaningless to anyone else).
    pub key: u32,
}

/// An operation carried out off the reactor: resolves with the result bytes.
/// Lives on the core that submitted it (not `Send`).
pub type PendingOp = Pin<Box<dyn Future<Output = Result<Vec<u8>, ErrorCode>>>>;

/// What [`CoreStore::perform`] gives back.
pub enum Outcome {
    /// Done synchronously: the result was appended to `out` (or failed).
    Done(Result<(), ErrorCode>),
    /// Carried out elsewhere; the connection awaits it.
    Pending(PendingOp),
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Done(r) => f.debug_tuple("Done").field(r).finish(),
            Outcome::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// A store [`KeyStore::reopen`] made, and its keys.
pub type Reopened = (Arc<dyn KeyStore>, Vec<crate::KeyEntry>);

/// An opened key store, shared read-only by every core.
pub trait KeyStore: Send + Sync + fmt::Debug {
    /// Short name for logs and errors (`pkcs11`, `kms`, ...).
    fn name(&self) -> &'static str;

    /// This core's part. Called once per core, on that core's reactor thread,
    /// before the core accepts connections. Takes the shared handle so the
    /// part can keep the store alive (a channel to a runtime thread, say).
    fn core(self: Arc<Self>, core: usize) -> Box<dyn CoreStore>;

    /// Append this store's metric families at scrape time (control plane;
    /// may read shared counters, must not block on a backend).
    fn render_metrics(&self, w: &mut PromWriter<'_>);

    /// Whether the store can serve its keys now (`/readyz`); `Err` says
    /// why not. Called at probe time on a control-plane thread.
    fn readiness(&self) -> Result<(), NotReady> {
        Ok(())
    }

    /// Reload, for a store kept open (its URIs and settings unchanged): find
    /// its keys again, as entries of store `id` (its place in the new
    /// list), keeping what is open (sessions, logins, worker threads,
    /// connections). A key found before must keep its `StoreKey::key`
    /// number (requests of the running generation may carry it) and a new
    /// one must be served by the existing core parts from their next
    /// request. `Ok(None)`, the default: the store's keys do not change
    /// while it is open, so the registry keeps the list it had. An error
    /// refuses the whole reload (the running state stays); it must not
    /// have changed what the running generation serves. Control plane.
    fn rescan(&self, id: StoreId) -> Result<Option<Vec<crate::KeyEntry>>, StoreReloadError> {
        let _ = id;
        Ok(None)
    }

    /// Reload, for a store whose settings are unchanged but whose URIs
    /// changed: open `uris` as a new store with id `id`, taking over what
    /// this store has open for the parts the change did not touch (a
    /// PKCS#11 token named by the same URI keeps its login and, through
    /// [`KeyStore::core`] on each reactor, that core's sessions and worker
    /// threads). Must not change what this store serves (it keeps serving
    /// until the reload is published, and for good if the reload fails).
    /// `Ok(None)`, the default: the registry opens the new store afresh.
    /// Control plane.
    fn reopen(&self, uris: &[String], id: StoreId) -> Result<Option<Reopened>, StoreReloadError> {
        let _ = (uris, id);
        Ok(None)
    }

    /// What `keycore check` reports about the store after opening it (one
    /// line per partition, service, ...). Control plane.
    fn status(&self) -> Vec<StoreStatus> {
        Vec::new()
    }
}

/// Why an open store could not find its keys again, or be reopened, on
/// reload ([`KeyStore::rescan`], [`KeyStore::reopen`]); the store's own
/// error (naming the URI, never a PIN) is the source.
#[derive(Debug, thiserror::Error)]
#[error("{store}: reloading the open store")]
pub struct StoreReloadError {
    /// The store's [`KeyStore::name`].
    pub store: &'static str,
    /// The store's error.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Why a store cannot serve its keys now: `/readyz`'s reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{store}: {detail}")]
pub struct NotReady {
    /// The store's [`KeyStore::name`].
    pub store: &'static str,
    /// What is missing (which keys, which partitions).
    pub detail: String,
}

/// One line of `keycore check` about a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    /// Whether this part is usable.
    pub ok: bool,
    /// What it is about (`pkcs11 partition`, `cloud keys`).
    pub what: &'static str,
    /// Details (names, errors).
    pub detail: String,
}

/// One core's part of a store. Not `Send`: it stays on its reactor.
pub trait CoreStore: fmt::Debug {
    /// Perform `op` with the store's key `key` on `input`. The input has
    /// already passed [`crate::check_input`] against the key's kind. A
    /// synchronous result is appended to `out`; anything slower returns
    /// [`Outcome::Pending`] and must not block the reactor.
    fn perform(&self, key: u32, op: OpClass, input: &[u8], out: &mut Vec<u8>) -> Outcome;

    /// Send whatever this turn's calls queued (batching). The server calls it
    /// once after each read pass of a connection; a store that does not batch
    /// ignores it.
    fn flush(&self) {}
}
