//! The start-up key index and how each key is reached.
//!
//! The index is built once at start-up and then shared read-only by every
//! core (behind an `Arc`); nothing here takes a lock on the data path.
//! Must not: know any backend beyond [`Backend`]'s two shapes (in-process,
//! or a key of some registered store, named by [`StoreKey`]).

use crate::kind::KeyKind;
use crate::store::StoreKey;
use keycore_protocol::{ErrorCode, OpClass, Ski, CERT_DIGEST_LEN};
use std::collections::HashMap;
use std::fmt;

/// A key that performs operations synchronously, on the calling thread
/// (software keys).
pub trait PrivateKeyOps: Send + Sync + fmt::Debug {
    /// The key's kind.
    fn kind(&self) -> KeyKind;
    /// DER SubjectPublicKeyInfo of the public half.
    fn spki_der(&self) -> &[u8];
    /// Perform `op` on `input` (digest, message or ciphertext) and append the
    /// result to `out`. An operation that does not fit the key (an RSA op on
    /// an EC key, a digest of the wrong length for RSA) is `ErrorCode::CRYPTO`;
    /// it never produces a signature of another kind.
    fn perform(&self, op: OpClass, input: &[u8], out: &mut Vec<u8>) -> Result<(), ErrorCode>;
}

/// Where a key's operations are carried out.
#[derive(Debug)]
pub enum Backend {
    /// In-process, synchronous (software keys): called straight from
    /// dispatch, no store in between.
    Inline(Box<dyn PrivateKeyOps>),
    /// A key of a registered store (PKCS#11, cloud KMS, ...): carried out
    /// through that store's per-core part ([`crate::CoreStore`]).
    Store(StoreKey),
}

/// One loaded key.
#[derive(Debug)]
pub struct KeyEntry {
    /// SKI computed from the public key.
    pub ski: Ski,
    /// Legacy certificate digest (RSA keys only).
    pub legacy_digest: Option<[u8; CERT_DIGEST_LEN]>,
    /// The key's kind.
    pub kind: KeyKind,
    /// DER SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// Where it came from (path or URI), for logs.
    pub source: String,
    /// How to use it.
    pub backend: Backend,
}

/// All keys, indexed by SKI and legacy digest. Built once, then read-only.
#[derive(Debug, Default)]
pub struct KeyIndex {
    entries: Vec<KeyEntry>,
    by_ski: HashMap<Ski, u32>,
    by_digest: HashMap<[u8; CERT_DIGEST_LEN], u32>,
}

impl KeyIndex {
    /// Add a key. A second key with the same SKI is refused (returns it back)
    /// so the caller can report both sources.
    pub fn insert(&mut self, entry: KeyEntry) -> Result<(), Box<KeyEntry>> {
        if self.by_ski.contains_key(&entry.ski) {
            return Err(Box::new(entry));
        }
        let i = self.entries.len() as u32;
        self.by_ski.insert(entry.ski, i);
        if let Some(d) = entry.legacy_digest {
            self.by_digest.entry(d).or_insert(i);
        }
        self.entries.push(entry);
        Ok(())
    }

    /// Find the key for a request: by SKI when one is given (20 bytes; a SKI
    /// that matches nothing is `KEY_NOT_FOUND`), else by legacy digest, else
    /// `INTERNAL` (PROTOCOL.md: "no SKI" is an internal error).
    #[inline]
    pub fn lookup(
        &self,
        ski: Option<&Ski>,
        digest: Option<&[u8; CERT_DIGEST_LEN]>,
    ) -> Result<&KeyEntry, ErrorCode> {
        self.lookup_at(ski, digest).map(|(_, e)| e)
    }

    /// [`KeyIndex::lookup`] with the key's position in [`KeyIndex::entries`]
    /// (per-key tables such as policies and audit counts are indexed by it).
    #[inline]
    pub fn lookup_at(
        &self,
        ski: Option<&Ski>,
        digest: Option<&[u8; CERT_DIGEST_LEN]>,
    ) -> Result<(u32, &KeyEntry), ErrorCode> {
        let i = match (ski, digest) {
            (Some(s), _) => self.by_ski.get(s),
            (None, Some(d)) => self.by_digest.get(d),
            (None, None) => return Err(ErrorCode::INTERNAL),
        };
        i.map(|&i| (i, &self.entries[i as usize]))
            .ok_or(ErrorCode::KEY_NOT_FOUND)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is loaded.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All keys, in load order.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.entries
    }
}
