//! PKCS#11 backend: URIs, modules, tokens, per-core sessions, dispatch.
//!
//! Interface with the server (fixed; the implementation grows behind it):
//! - control plane: [`Pkcs11Store`] is built once at start-up from the
//!   `uri: pkcs11:` stores and yields `KeyEntry`s with `Backend::Pkcs11(KeyRef)`;
//! - data plane: each reactor calls [`Pkcs11Store::core`] once on its own
//!   thread and keeps the returned [`CoreHsm`] (not `Send`): its sessions and
//!   handles belong to that core alone.

use keycore_protocol::{ErrorCode, OpClass};
use std::future::Future;

/// Which key (HA group of partitions) a request is for. Small and `Copy`: it
/// is stored in the shared key index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef(pub u32);

/// Everything PKCS#11 that is shared read-only by the cores.
#[derive(Debug, Default)]
pub struct Pkcs11Store {}

impl Pkcs11Store {
    /// The per-core handle; call on the reactor thread that will use it.
    pub fn core(&self, _core: usize) -> CoreHsm {
        CoreHsm {
            _not_send: std::marker::PhantomData,
        }
    }
}

/// One core's PKCS#11 state (sessions, handles, batches). Not `Send`.
#[derive(Debug)]
pub struct CoreHsm {
    _not_send: std::marker::PhantomData<*const ()>,
}

impl CoreHsm {
    /// Whether `key` is served inline (synchronously on the reactor).
    pub fn is_inline(&self, _key: KeyRef) -> bool {
        true
    }

    /// Perform an operation synchronously on this core's session.
    pub fn perform_inline(
        &self,
        _key: KeyRef,
        _op: OpClass,
        _input: &[u8],
        _out: &mut Vec<u8>,
    ) -> Result<(), ErrorCode> {
        Err(ErrorCode::INTERNAL)
    }

    /// Submit an operation to be carried out off the reactor; the future
    /// resolves with the result. Never blocks the reactor.
    pub fn submit(
        &self,
        _key: KeyRef,
        _op: OpClass,
        _input: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ErrorCode>> + 'static {
        std::future::ready(Err(ErrorCode::INTERNAL))
    }
}
