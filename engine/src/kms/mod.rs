//! Cloud key services over REST: Azure Key Vault / Managed HSM, Google
//! Cloud KMS, AWS KMS.
//!
//! Interface with the server (fixed; the implementation grows behind it):
//! - control plane: [`KmsStore`] is built once at start-up from the
//!   `uri: https://...vault.azure.net/...`, `projects/...` and
//!   `arn:aws:kms:...` stores and yields `KeyEntry`s with
//!   `Backend::Kms(KeyRef)`;
//! - data plane: [`KmsStore::submit`] hands one operation to the HTTP
//!   runtime thread and returns a future the reactor awaits; it never blocks
//!   the reactor.

pub mod uri;

use keycore_protocol::{ErrorCode, OpClass};
use std::future::Future;

/// Which remote key a request is for (index into the store).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyRef(pub u32);

/// Shared by every core (Send + Sync): the channel to the HTTP runtime.
#[derive(Debug, Default)]
pub struct KmsStore {}

impl KmsStore {
    /// Whether a `uri:` store names a cloud key this backend serves.
    pub fn handles(uri: &str) -> bool {
        uri.starts_with("https://")
            || uri.starts_with("projects/")
            || uri.starts_with("arn:aws:kms:")
    }

    /// Submit an operation; the future resolves with the result.
    pub fn submit(
        &self,
        _key: KeyRef,
        _op: OpClass,
        _input: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, ErrorCode>> + 'static {
        std::future::ready(Err(ErrorCode::INTERNAL))
    }
}
