//! # keycore-keys
//!
//! Key identity and the key-backend seam, shared by the server
//! (`keycore-engine`), its backends (`keycore-pkcs11`, `keycore-kms`), the
//! load generator, the KMS stand-ins and the benches.
//!
//! Why a crate along this seam: every one of those needs to say what a key
//! is (kind, SPKI, SKI) and the backends need to say how they answer, but
//! none of them should depend on the server or on each other. Before this
//! crate the engine's `keys` module imported the backends and they imported
//! it back (a module circle), and key identity existed in several copies
//! (two `KeyKind`s, three SPKI classifiers, a dozen digest-length checks).
//!
//! Public surface:
//! - identity: [`KeyKind`], [`op_fits`], [`check_input`] (the one
//!   request-shape check, run by dispatch before any backend);
//! - DER: [`classify_spki`], [`spki_key_bits`], [`read_tlv`], [`rsa_spki`],
//!   [`ec_spki`], [`ed25519_spki`], [`spki_from_info`], [`ecdsa_der_from_raw`],
//!   [`SpkiError`];
//! - identifiers: [`ski_from_spki`], [`ski_from_key_bits`],
//!   [`legacy_digest_from_spki`], [`legacy_digest_from_modulus`] (and the
//!   wire type [`Ski`], re-exported from the protocol);
//! - the index: [`KeyEntry`], [`KeyIndex`], [`Backend`], [`PrivateKeyOps`];
//! - the backend seam: [`KeyStore`], [`CoreStore`], [`NotReady`], [`Outcome`],
//!   [`PendingOp`], [`StoreId`], [`StoreKey`], [`StoreStatus`];
//! - metrics text: [`PromWriter`], [`MetricKind`];
//! - audit events from backends: [`emit_event`], [`set_event_sink`];
//! - errors kept as text: [`error_chain`] (an error and its causes on one line);
//! - the software signer: module [`software`] (files and directories of
//!   PEM/DER keys signed with aws-lc on the calling thread).
//!
//! Must not: do I/O other than reading key files, spawn threads, or know
//! which backends exist.

mod chain;
mod events;
mod index;
mod kind;
mod prom;
mod ski;
pub mod software;
mod spki;
mod store;
mod sys;

pub use chain::error_chain;
pub use events::{emit_event, set_event_sink, EventSink};
pub use index::{Backend, KeyEntry, KeyIndex, PrivateKeyOps};
pub use keycore_protocol::Ski;
pub use kind::{check_input, op_fits, KeyKind};
pub use prom::{MetricKind, PromWriter};
pub use ski::{
    legacy_digest_from_modulus, legacy_digest_from_spki, ski_from_key_bits, ski_from_spki,
};
pub use spki::{
    classify_spki, ec_spki, ecdsa_der_from_raw, ed25519_spki, read_tlv, rsa_spki, spki_from_info,
    spki_key_bits, SpkiError,
};
pub use store::{
    CoreStore, KeyStore, NotReady, Outcome, PendingOp, Reopened, StoreId, StoreKey,
    StoreReloadError, StoreStatus,
};
