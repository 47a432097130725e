//! Who a client is and what it may do (issue 18): client identities and
//! their allow-list, per-key policy, per-identity limits, and what the data
//! path records for the audit trail.
//!
//! Owns:
//! - [`Identities`] (shared by every core, behind an `Arc`, for the
//!   process's life): the identity labels by id (at most
//!   [`MAX_CLIENT_IDENTITIES`], the rest share [`OTHER`]; ids are given by
//!   name and survive reloads), each identity's connection count across
//!   cores (one atomic add per connection, never per request) and the
//!   TLS-level refusal counters;
//! - [`ClientRules`] (one per served generation, reloaded): the configured
//!   `client_identities` compiled for matching and each id's limits, and
//!   what a reload does to established connections and buckets;
//! - [`AllowListVerifier`]: rustls's client-certificate verifier wrapped so
//!   that a certificate which chains but matches no configured identity is
//!   refused inside the handshake (`access_denied`-class alert), counted by
//!   reason;
//! - [`Policy`]: `key_policies` compiled per loaded key into a 256-bit
//!   opcode deny mask and an allowed-identities mask, so dispatch checks a
//!   request with two bit tests;
//! - [`CoreSecurity`] (one per core, never shared): the per-identity token
//!   buckets, the per-(key, identity, opcode, result) counts and a bounded
//!   sample of refusals, handed to the audit writer every `audit_interval`
//!   as a message (no lock on the data path);
//! - [`AuditMsg`] / [`AuditTx`]: what is sent to the audit writer
//!   (`audit.rs` owns the file, the rotation and the merged totals).
//!
//! Must not: block or lock on the data path (the per-request work is a
//! bucket update, two bit tests and a hash-map increment, all core-local),
//! read or record payloads, digests or PINs, or know any backend.
//!
//! Rate-limit split (stated once here): `max_rps` is per identity for the
//! whole server; each of the N cores enforces `max_rps / N` with a burst of
//! the same size (at least one). No core ever asks another, so the
//! identity's total can never exceed `max_rps` (plus one burst per core).
//! The split is fair when the identity's connections are spread over the
//! cores, which SO_REUSEPORT's hash of the 4-tuple does for an edge's pool
//! of connections; an identity that opens a single connection gets only
//! `max_rps / N` (one core's share). The edge opens several connections per
//! key server, so set `max_rps` for the pool, and expect the per-core share.
//!
//! Reload seam: [`ClientRules`] and [`Policy`] are built from a `Config`
//! (and the `KeyIndex`) into `Served`; a reload builds new ones and swaps
//! them together with the key index and the TLS configuration (whose
//! verifier holds the same rules). [`Identities`] stays, so ids, labels,
//! connection counts and per-core buckets carry over.

use crate::config::{ClientIdentity, Security as SecurityConfig, MAX_CLIENT_IDENTITIES};
use keycore_keys::KeyIndex;
use keycore_protocol::{ErrorCode, Op};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

/// A client identity: 0 is [`OTHER`], 1..=[`MAX_CLIENT_IDENTITIES`] a label.
pub type ClientId = u8;

/// The identity of clients beyond the label cap (and the metrics label of
/// them all).
pub const OTHER: ClientId = 0;

const SLOTS: usize = MAX_CLIENT_IDENTITIES + 1;
const _: () = assert!(SLOTS <= 128, "identity masks are u128");

/// Audit key reference for a request whose key was not found.
pub const NO_KEY: u32 = u32::MAX;

/// How the audit counts name a key: the served generation's epoch (its
/// generation's low 8 bits) in the top byte, the key's index in that
/// generation's key index below. Cells counted before and after a reload
/// stay apart, and the writer keeps the labels of the last
/// [`AUDIT_EPOCHS`] generations, so a count is never given another key's
/// label. An index too large for 24 bits (16 million keys) counts as
/// [`OVERFLOW_KEY`].
#[inline]
pub fn key_ref(epoch: u8, index: u32) -> u32 {
    if index >= 0x00FF_FFFE {
        OVERFLOW_KEY
    } else {
        (epoch as u32) << 24 | index
    }
}

/// Back from [`key_ref`]: (epoch, index).
pub fn split_key_ref(r: u32) -> (u8, u32) {
    ((r >> 24) as u8, r & 0x00FF_FFFF)
}

/// Generations whose key labels the audit writer keeps (more reloads
/// within one `audit_interval` label the oldest counts `unknown`).
pub const AUDIT_EPOCHS: u8 = 8;

/// Most distinct (key, identity, opcode, result) cells one core keeps per
/// interval; beyond it counts go to the key [`OVERFLOW_KEY`]. Bounds a
/// core's audit memory at about 1 MiB whatever the traffic.
pub const MAX_AUDIT_CELLS: usize = 32_768;
/// Audit key index of counts that did not fit [`MAX_AUDIT_CELLS`].
pub const OVERFLOW_KEY: u32 = u32::MAX - 1;

/// Individual refusal records one core keeps per interval; the rest are
/// only counted (as `suppressed`): one misbehaving edge at line rate must
/// not turn the audit file into a copy of its traffic.
pub const MAX_REFUSAL_SAMPLES: usize = 32;

/// Messages queued to the audit writer before a sender's `try_send` drops
/// one (counted): cores never wait for the writer.
pub const AUDIT_QUEUE: usize = 1024;

/// Why a client certificate was refused (TLS level) or its connection
/// closed right after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRefusal {
    /// Its names match no configured identity.
    Name = 0,
    /// A name matched, but its public key is not among that identity's pins.
    SpkiPin = 1,
    /// The certificate could not be parsed for names and key.
    Unparsable = 2,
    /// Its identity already has `max_connections` connections.
    Connections = 3,
    /// Established, but a reload's allow-list no longer admits it (closed
    /// at its next turn).
    Revoked = 4,
}

impl TlsRefusal {
    /// Every reason, in counter order.
    pub const ALL: [TlsRefusal; 5] = [
        TlsRefusal::Name,
        TlsRefusal::SpkiPin,
        TlsRefusal::Unparsable,
        TlsRefusal::Connections,
        TlsRefusal::Revoked,
    ];

    /// Metrics label and audit text.
    pub fn label(self) -> &'static str {
        match self {
            TlsRefusal::Name => "unknown_name",
            TlsRefusal::SpkiPin => "spki_pin_mismatch",
            TlsRefusal::Unparsable => "unparsable_certificate",
            TlsRefusal::Connections => "max_connections",
            TlsRefusal::Revoked => "revoked_by_reload",
        }
    }
}

/// Why a request was refused before reaching a backend. Answered
/// [`REFUSAL_CODE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Refusal {
    /// The key's policy denies this operation.
    OpDenied = 0,
    /// The key's policy does not list this client identity.
    ClientDenied = 1,
    /// The identity is over its `max_rps` on this core.
    RateLimited = 2,
    /// `audit_fail_closed` and the audit file cannot be written.
    AuditUnavailable = 3,
}

impl Refusal {
    /// Every reason, in counter order.
    pub const ALL: [Refusal; 4] = [
        Refusal::OpDenied,
        Refusal::ClientDenied,
        Refusal::RateLimited,
        Refusal::AuditUnavailable,
    ];

    /// Metrics label and audit text.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::OpDenied => "op_denied",
            Refusal::ClientDenied => "client_denied",
            Refusal::RateLimited => "rate_limited",
            Refusal::AuditUnavailable => "audit_unavailable",
        }
    }

    /// The result byte in an audit cell: error codes are 0x00..=0x0B, a
    /// refusal 0x80 + reason (its answer on the wire is [`REFUSAL_CODE`]).
    pub fn result_byte(self) -> u8 {
        0x80 | self as u8
    }

    /// Back from [`Refusal::result_byte`].
    pub fn from_result_byte(b: u8) -> Option<Refusal> {
        (b & 0x80 != 0)
            .then(|| Refusal::ALL.get((b & 0x7f) as usize).copied())
            .flatten()
    }
}

/// The error answered for a refused request: PROTOCOL.md's 0x08
/// ("unsupported op on this server"), the reference's answer for an
/// operation the server will not perform. Not 0x02 (key not found): the
/// edge would treat the key as missing from this server and log a
/// misconfiguration instead of a refusal.
pub const REFUSAL_CODE: ErrorCode = ErrorCode::INTERNAL;

// ---------------------------------------------------------------------------
// What the audit writer receives
// ---------------------------------------------------------------------------

/// One refused request, as recorded (no payload, no digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusalSample {
    /// Wall-clock time of the refusal.
    pub at: SystemTime,
    /// The key's [`key_ref`], or [`NO_KEY`] (rate limit before lookup).
    pub key: u32,
    /// Who asked.
    pub client: ClientId,
    /// What was asked.
    pub op: Op,
    /// Why it was refused.
    pub reason: Refusal,
}

/// A key's audit label: SKI hex and where it was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLabel {
    /// SKI, lower-case hex.
    pub ski: String,
    /// File path or URI (PINs redacted).
    pub source: String,
}

/// A message to the audit writer.
#[derive(Debug)]
pub enum AuditMsg {
    /// The loaded keys' labels, by key index, for one served generation
    /// (its [`key_ref`] epoch): sent at start-up and by each reload before
    /// the cores serve it.
    Keys {
        /// The generation's epoch.
        epoch: u8,
        /// Labels by key index.
        labels: Vec<KeyLabel>,
    },
    /// One core's counts since its last flush: packed cells (see
    /// [`pack`]) with their counts, a sample of refusals and how many
    /// refusals were not sampled.
    Counts {
        /// Core index.
        core: usize,
        /// `(pack(key, client, op, result), count)`.
        cells: Vec<(u64, u64)>,
        /// Individual refusal records (at most [`MAX_REFUSAL_SAMPLES`]).
        refusals: Vec<RefusalSample>,
        /// Refusals beyond the sample.
        suppressed: u64,
    },
    /// An individual record (key load, reload, TLS refusal, HSM login...):
    /// its type and flat text fields. Never a secret.
    Event {
        /// When it happened.
        at: SystemTime,
        /// The record's `type`.
        kind: String,
        /// Other fields.
        fields: Vec<(String, String)>,
    },
    /// A reload changed where and how the file is written: records
    /// written from now on go to `path` (`None`: no file), rotated at
    /// `max_bytes` keeping `keep` old files.
    Settings {
        /// `audit_file`.
        path: Option<std::path::PathBuf>,
        /// `audit_max_bytes`.
        max_bytes: u64,
        /// `audit_keep`.
        keep: u32,
    },
    /// Write what is queued and stop (sent after the cores have exited).
    Stop,
}

/// A sender to the audit writer that never blocks: a full queue drops the
/// message and counts it.
#[derive(Debug, Clone)]
pub struct AuditTx {
    tx: SyncSender<AuditMsg>,
    dropped: Arc<AtomicU64>,
}

impl AuditTx {
    /// A sender over `tx`, counting drops in `dropped`.
    pub fn new(tx: SyncSender<AuditMsg>, dropped: Arc<AtomicU64>) -> AuditTx {
        AuditTx { tx, dropped }
    }

    /// Queue `msg`; never waits.
    pub fn send(&self, msg: AuditMsg) {
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queue `msg`, waiting for room (control plane only: shutdown, tests).
    pub fn send_blocking(&self, msg: AuditMsg) -> Result<(), std::sync::mpsc::SendError<AuditMsg>> {
        self.tx.send(msg)
    }

    /// Queue an individual record.
    pub fn event(&self, kind: &str, fields: &[(&str, &str)]) {
        self.send(AuditMsg::Event {
            at: SystemTime::now(),
            kind: kind.to_owned(),
            fields: fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
    }
}

/// Pack an audit cell's coordinates into one map key.
#[inline]
pub fn pack(key: u32, client: ClientId, op: Op, result: u8) -> u64 {
    (key as u64) << 24 | (client as u64) << 16 | (op.0 as u64) << 8 | result as u64
}

/// Back from [`pack`]: (key, client, opcode, result byte).
pub fn unpack(cell: u64) -> (u32, ClientId, Op, u8) {
    (
        (cell >> 24) as u32,
        (cell >> 16) as u8,
        Op((cell >> 8) as u8),
        cell as u8,
    )
}

// ---------------------------------------------------------------------------
// Identities
// ---------------------------------------------------------------------------

/// Glob match: `*` is any run of characters, ASCII case ignored.
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What a client certificate says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject common name, if any.
    pub cn: Option<String>,
    /// DNS and URI subject alternative names.
    pub sans: Vec<String>,
    /// SHA-256 of the DER SubjectPublicKeyInfo.
    pub spki_sha256: [u8; 32],
}

impl CertFacts {
    /// Read a DER certificate; `None` if it does not parse.
    pub fn of(der: &[u8]) -> Option<CertFacts> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_owned);
        let mut sans = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for n in &ext.value.general_names {
                match n {
                    x509_parser::extensions::GeneralName::DNSName(s)
                    | x509_parser::extensions::GeneralName::URI(s) => sans.push((*s).to_owned()),
                    _ => {}
                }
            }
        }
        let d = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            cert.tbs_certificate.subject_pki.raw,
        );
        let mut spki_sha256 = [0u8; 32];
        spki_sha256.copy_from_slice(d.as_ref());
        Some(CertFacts {
            cn,
            sans,
            spki_sha256,
        })
    }

    /// The name used for an identity seen without a configured list: the
    /// CN, else the first SAN, else `unnamed`.
    pub fn display_name(&self) -> &str {
        self.cn
            .as_deref()
            .or(self.sans.first().map(String::as_str))
            .unwrap_or("unnamed")
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The client-identity table of the process (shared by every core, kept
/// across reloads): the label of each [`ClientId`], each identity's open
/// connections across cores and the TLS-level refusal counters. Ids are
/// given by name and never renumbered, so a reload that keeps an identity
/// keeps its id, its connection count, its rate-limit buckets and its
/// audit label. What each identity may do is [`ClientRules`] (one per
/// served generation).
#[derive(Debug)]
pub struct Identities {
    /// Label of id `i` at `labels[i - 1]`; configured names first, then
    /// (without a configured list) CNs as they connect, up to the cap.
    labels: Mutex<Vec<String>>,
    /// Open connections per id, across cores.
    conns: Vec<AtomicU32>,
    /// Names of the identities the served generation configures (set when
    /// a generation is published): their slots are never given to another
    /// name, even by a reload that is later refused.
    in_force: Mutex<Vec<String>>,
    /// TLS-level refusals by [`TlsRefusal`].
    refused: [AtomicU64; TlsRefusal::ALL.len()],
    /// Where refusal records go.
    audit: Option<AuditTx>,
}

impl Identities {
    /// The table, seeded with the configured identities' names (ids 1..
    /// in configuration order).
    pub fn new(cfg: &SecurityConfig, audit: Option<AuditTx>) -> Identities {
        Identities {
            labels: Mutex::new(
                cfg.client_identities
                    .iter()
                    .map(|i| i.name.clone())
                    .collect(),
            ),
            conns: (0..SLOTS).map(|_| AtomicU32::new(0)).collect(),
            in_force: Mutex::new(
                cfg.client_identities
                    .iter()
                    .map(|i| i.name.clone())
                    .collect(),
            ),
            refused: Default::default(),
            audit,
        }
    }

    /// A generation configuring `cfg`'s identities is now served (start-up
    /// and each published reload).
    pub fn set_in_force(&self, cfg: &SecurityConfig) {
        *self.in_force.lock().unwrap_or_else(|p| p.into_inner()) = cfg
            .client_identities
            .iter()
            .map(|i| i.name.clone())
            .collect();
    }

    /// The ids of `names` (all or none), giving each name that has none
    /// a free slot, else the slot of a name that neither `names` nor the
    /// served generation configures and that has no open connection (that
    /// slot's label changes: at most one `audit_interval` of the old
    /// name's counts may be labelled with the new one). Each id comes with
    /// whether its slot was reassigned. `Err(name)`: no slot for `name`.
    fn assign(&self, names: &[&str]) -> Result<Vec<(ClientId, bool)>, NoIdentitySlot> {
        let mut labels = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        let in_force = self.in_force.lock().unwrap_or_else(|p| p.into_inner());
        let mut next = labels.clone();
        let mut out = Vec::with_capacity(names.len());
        for &name in names {
            if let Some(i) = next.iter().position(|l| l == name) {
                out.push(((i + 1) as ClientId, false));
                continue;
            }
            if next.len() < MAX_CLIENT_IDENTITIES {
                next.push(name.to_owned());
                out.push((next.len() as ClientId, false));
                continue;
            }
            let i = (0..next.len())
                .find(|&i| {
                    let l = next[i].as_str();
                    !names.contains(&l)
                        && !in_force.iter().any(|f| f == l)
                        && !out.iter().any(|(id, _)| *id as usize == i + 1)
                        && self.conns[i + 1].load(Ordering::Acquire) == 0
                })
                .ok_or_else(|| NoIdentitySlot(name.to_owned()))?;
            next[i] = name.to_owned();
            out.push(((i + 1) as ClientId, true));
        }
        *labels = next;
        Ok(out)
    }

    /// The id of a certificate seen without a configured list: its CN (or
    /// first SAN), interned up to the cap, the rest [`OTHER`].
    fn intern(&self, facts: &CertFacts) -> ClientId {
        let name = facts.display_name();
        let mut labels = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = labels.iter().position(|l| l == name) {
            return (i + 1) as ClientId;
        }
        if labels.len() < MAX_CLIENT_IDENTITIES {
            labels.push(name.to_owned());
            return labels.len() as ClientId;
        }
        OTHER
    }

    /// The label of an identity (`other` for [`OTHER`]).
    pub fn label(&self, id: ClientId) -> String {
        if id == OTHER {
            return "other".to_owned();
        }
        let labels = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        labels
            .get(id as usize - 1)
            .cloned()
            .unwrap_or_else(|| "other".to_owned())
    }

    /// Every label, by id (index 0 is `other`).
    pub fn labels(&self) -> Vec<String> {
        let labels = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        std::iter::once("other".to_owned())
            .chain(labels.iter().cloned())
            .collect()
    }

    /// Open connections of `id`.
    pub fn connections(&self, id: ClientId) -> u32 {
        self.conns[id as usize].load(Ordering::Relaxed)
    }

    /// Count a refusal and record it (the name is a CN or identity label,
    /// the pin a public-key hash: neither is secret).
    pub fn refuse(&self, why: TlsRefusal, name: &str, spki: Option<&[u8; 32]>) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(a) = &self.audit {
            let name: String = name.chars().take(128).collect();
            let pin = spki.map(|p| hex(p)).unwrap_or_default();
            a.event(
                "client_refused",
                &[
                    ("reason", why.label()),
                    ("name", &name),
                    ("spki_sha256", &pin),
                ],
            );
        }
    }

    /// Refusals for `why` so far.
    pub fn refused(&self, why: TlsRefusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    /// Prometheus families: refusals by reason, open connections per
    /// identity (bounded: at most the label cap + `other`).
    pub fn render(&self, s: &mut String) {
        use std::fmt::Write as _;
        s.push_str("# HELP keycore_client_refused_total Client certificates refused in the TLS handshake (allow-list), connections closed right after it (max_connections) or at a reload that no longer allows them (revoked_by_reload), by reason.\n# TYPE keycore_client_refused_total counter\n");
        for r in TlsRefusal::ALL {
            let _ = writeln!(
                s,
                "keycore_client_refused_total{{reason=\"{}\"}} {}",
                r.label(),
                self.refused(r)
            );
        }
        s.push_str("# HELP keycore_client_connections Open connections per client identity.\n# TYPE keycore_client_connections gauge\n");
        for (i, l) in self.labels().iter().enumerate() {
            let _ = writeln!(
                s,
                "keycore_client_connections{{identity=\"{}\"}} {}",
                prom_escape(l),
                self.connections(i as ClientId)
            );
        }
    }
}

/// What each client identity may do, for one served generation (built
/// from `Config` by every reload, in `Served`): the allow-list with each
/// entry's id in the [`Identities`] table, and each id's limits.
///
/// Reload semantics (stated once here; SECURITY.md and the README say the
/// same): new connections are checked against the new allow-list at once
/// (the generation's TLS configuration carries its verifier). An
/// established connection is checked again ([`ClientRules::readmit`]) at
/// its first turn after its core takes the reload up (every connection is
/// woken for it): one the new list refuses is closed without reading
/// further requests (requests it sent and had no answer to yet stay
/// unanswered), counted as `revoked_by_reload`; one the new list maps to
/// another identity moves to it (its connection slot too). A lowered
/// `max_connections` applies to new connections only. Rate-limit buckets
/// of an identity whose limit did not change are kept (so a reload is not
/// a way around the limit); a changed limit starts a fresh bucket.
#[derive(Debug)]
pub struct ClientRules {
    ids: Arc<Identities>,
    /// Configured identities with their ids, in configuration order.
    rules: Vec<(ClientId, ClientIdentity)>,
    /// `max_rps` per id (the identity's own, else `client_max_rps`).
    rps: [u32; SLOTS],
    /// `max_connections` per id.
    max_conns: [u32; SLOTS],
    /// Ids this build gave to a new name in a reused slot (bit `id`):
    /// their buckets start afresh whatever the limit.
    reassigned: u128,
}

/// A new client identity found every slot of the identity table taken
/// (each names a configured identity or one with open connections).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("client_identities: no identity slot left for {0:?} ({MAX_CLIENT_IDENTITIES} names in use, each configured now or with open connections); retry once the removed identities' connections have closed, or restart")]
pub struct NoIdentitySlot(pub String);

impl ClientRules {
    /// Compile `cfg`'s identities and limits against the table `ids`
    /// (new names get ids). Fails only when the table has no slot left for
    /// a new name (every slot names a configured identity or one with open
    /// connections).
    pub fn build(
        cfg: &SecurityConfig,
        ids: &Arc<Identities>,
    ) -> Result<ClientRules, NoIdentitySlot> {
        let names: Vec<&str> = cfg
            .client_identities
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        let assigned = ids.assign(&names)?;
        let mut rules = Vec::with_capacity(cfg.client_identities.len());
        let mut rps = [cfg.client_max_rps; SLOTS];
        let mut max_conns = [cfg.client_max_connections; SLOTS];
        let mut reassigned = 0u128;
        for (r, (id, reused)) in cfg.client_identities.iter().zip(assigned) {
            if reused {
                reassigned |= 1u128 << id;
            }
            rps[id as usize] = r.max_rps.unwrap_or(cfg.client_max_rps);
            max_conns[id as usize] = r.max_connections.unwrap_or(cfg.client_max_connections);
            rules.push((id, r.clone()));
        }
        Ok(ClientRules {
            ids: ids.clone(),
            rules,
            rps,
            max_conns,
            reassigned,
        })
    }

    /// The process's identity table.
    pub fn identities(&self) -> &Arc<Identities> {
        &self.ids
    }

    /// Whether an allow-list is configured (certificates matching none of
    /// its entries are refused in the handshake).
    pub fn has_allow_list(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The id of a configured identity's name.
    pub fn id_of(&self, name: &str) -> Option<ClientId> {
        self.rules
            .iter()
            .find(|(_, r)| r.name == name)
            .map(|(id, _)| *id)
    }

    /// The configured identity a certificate belongs to, or why none.
    pub fn match_configured(&self, facts: &CertFacts) -> Result<ClientId, TlsRefusal> {
        let mut name_matched = false;
        for (id, r) in &self.rules {
            let name_ok = r.names.is_empty()
                || r.names.iter().any(|p| {
                    facts.cn.as_deref().is_some_and(|cn| glob(p, cn))
                        || facts.sans.iter().any(|s| glob(p, s))
                });
            if !name_ok {
                continue;
            }
            name_matched = true;
            if r.spki_sha256.is_empty() || r.spki_sha256.contains(&facts.spki_sha256) {
                return Ok(*id);
            }
        }
        Err(if name_matched {
            TlsRefusal::SpkiPin
        } else {
            TlsRefusal::Name
        })
    }

    /// The identity of an authenticated connection's certificate (once per
    /// connection). Without an allow-list: its CN, interned up to the cap.
    pub fn identify(&self, facts: Option<&CertFacts>) -> Result<ClientId, TlsRefusal> {
        let facts = facts.ok_or(TlsRefusal::Unparsable)?;
        if self.has_allow_list() {
            return self.match_configured(facts);
        }
        Ok(self.ids.intern(facts))
    }

    /// An established connection admitted as `was`, checked against these
    /// (reloaded) rules: its identity now, or why it is no longer allowed
    /// ([`TlsRefusal::Revoked`]). Without an allow-list any certificate
    /// that chained is allowed, so the connection keeps its identity.
    pub fn readmit(
        &self,
        facts: Option<&CertFacts>,
        was: ClientId,
    ) -> Result<ClientId, TlsRefusal> {
        if !self.has_allow_list() {
            return Ok(was);
        }
        facts
            .ok_or(TlsRefusal::Revoked)
            .and_then(|f| self.match_configured(f).map_err(|_| TlsRefusal::Revoked))
    }

    /// Requests per second allowed to `id` over the whole server (0: none).
    pub fn max_rps(&self, id: ClientId) -> u32 {
        self.rps[id as usize]
    }

    /// Connections allowed to `id` (0: no limit).
    pub fn max_connections(&self, id: ClientId) -> u32 {
        self.max_conns[id as usize]
    }

    /// Take a connection slot for `id`; `None` at its `max_connections`
    /// (counted). Once per connection: one atomic add shared by the cores.
    pub fn connect(&self, id: ClientId) -> Option<ConnSlot> {
        let max = self.max_connections(id);
        let c = &self.ids.conns[id as usize];
        let before = c.fetch_add(1, Ordering::AcqRel);
        if max != 0 && before >= max {
            c.fetch_sub(1, Ordering::AcqRel);
            self.ids
                .refuse(TlsRefusal::Connections, &self.ids.label(id), None);
            return None;
        }
        Some(ConnSlot {
            ids: self.ids.clone(),
            id,
        })
    }
}

/// A Prometheus label value with `\`, `"` and newlines escaped.
pub fn prom_escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An identity's connection slot; given back on drop.
#[derive(Debug)]
pub struct ConnSlot {
    ids: Arc<Identities>,
    id: ClientId,
}

impl ConnSlot {
    /// The connection's identity.
    pub fn id(&self) -> ClientId {
        self.id
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.ids.conns[self.id as usize].fetch_sub(1, Ordering::AcqRel);
    }
}

/// rustls's client-certificate verifier plus the allow-list: the chain is
/// checked first (a foreign or expired certificate fails as before), then
/// the certificate must match a configured identity. Installed only when
/// `client_identities` is set.
#[derive(Debug)]
pub struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    rules: Arc<ClientRules>,
}

impl AllowListVerifier {
    /// Wrap `inner`, admitting what `rules` allow (the rules of the
    /// generation whose TLS configuration this verifier is part of).
    pub fn new(inner: Arc<dyn ClientCertVerifier>, rules: Arc<ClientRules>) -> AllowListVerifier {
        AllowListVerifier { inner, rules }
    }
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let refused = |why: TlsRefusal, name: &str, pin: Option<&[u8; 32]>| {
            self.rules.ids.refuse(why, name, pin);
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        };
        let Some(facts) = CertFacts::of(end_entity) else {
            return refused(TlsRefusal::Unparsable, "", None);
        };
        match self.rules.match_configured(&facts) {
            Ok(_) => Ok(ok),
            Err(why) => refused(why, facts.display_name(), Some(&facts.spki_sha256)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------
// Per-key policy
// ---------------------------------------------------------------------------

/// One key's compiled rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyRule {
    /// Bit `op` set: opcode `op` is refused.
    deny: [u64; 4],
    /// Bit `id` set: identity `id` may use the key.
    clients: u128,
}

const UNRESTRICTED: KeyRule = KeyRule {
    deny: [0; 4],
    clients: u128::MAX,
};

/// `key_policies` compiled against the loaded keys.
#[derive(Debug, Default)]
pub struct Policy {
    /// Per key index; empty when no policy is configured (nothing to check).
    rules: Vec<KeyRule>,
    /// How many keys a policy restricts (for the start-up log).
    restricted: usize,
}

impl Policy {
    /// Compile `cfg.key_policies` for every key of `keys` (first matching
    /// entry per key); `clients:` names become the ids `rules` gave them.
    pub fn build(cfg: &SecurityConfig, keys: &KeyIndex, rules: &ClientRules) -> Policy {
        if cfg.key_policies.is_empty() {
            return Policy::default();
        }
        let mut restricted = 0;
        let rules = keys
            .entries()
            .iter()
            .map(|e| {
                let Some(p) = cfg
                    .key_policies
                    .iter()
                    .find(|p| p.selects(&e.ski, &e.source))
                else {
                    return UNRESTRICTED;
                };
                let mut r = UNRESTRICTED;
                for b in 0..=255u8 {
                    let class = Op(b).class();
                    if p.deny_ops.iter().any(|f| f.matches(class)) {
                        r.deny[b as usize / 64] |= 1 << (b % 64);
                    }
                }
                if let Some(names) = &p.clients {
                    r.clients = 0;
                    for n in names {
                        if let Some(id) = rules.id_of(n) {
                            r.clients |= 1u128 << id;
                        }
                    }
                }
                if r != UNRESTRICTED {
                    restricted += 1;
                }
                r
            })
            .collect();
        Policy { rules, restricted }
    }

    /// Keys a policy restricts.
    pub fn restricted(&self) -> usize {
        self.restricted
    }

    /// Whether key `key` may perform `op` for `client`.
    #[inline]
    pub fn check(&self, key: u32, op: Op, client: ClientId) -> Result<(), Refusal> {
        let Some(r) = self.rules.get(key as usize) else {
            return Ok(());
        };
        if r.deny[op.0 as usize / 64] & (1 << (op.0 % 64)) != 0 {
            return Err(Refusal::OpDenied);
        }
        if r.clients & (1u128 << client) == 0 {
            return Err(Refusal::ClientDenied);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Per core
// ---------------------------------------------------------------------------

/// A GCRA token bucket (the "virtual scheduling" form): one integer
/// comparison and one add per request.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Nanoseconds per request at this core's share of the rate; 0: none.
    interval_ns: u64,
    /// How far ahead of now the theoretical arrival time may run (burst).
    tolerance_ns: u64,
    /// Theoretical arrival time of the next request, ns since the epoch.
    tat_ns: u64,
}

impl Bucket {
    fn new(max_rps: u32, cores: usize) -> Bucket {
        if max_rps == 0 {
            return Bucket {
                interval_ns: 0,
                tolerance_ns: 0,
                tat_ns: 0,
            };
        }
        let share = (max_rps as u64 / cores.max(1) as u64).max(1);
        let interval_ns = 1_000_000_000 / share;
        Bucket {
            interval_ns,
            // A burst of `share` requests (one second's worth).
            tolerance_ns: interval_ns * (share - 1),
            tat_ns: 0,
        }
    }

    #[inline]
    fn admit(&mut self, now_ns: u64) -> bool {
        if self.interval_ns == 0 {
            return true;
        }
        let tat = self.tat_ns.max(now_ns);
        if tat - now_ns > self.tolerance_ns {
            return false;
        }
        self.tat_ns = tat + self.interval_ns;
        true
    }
}

/// One core's security state. Lives in the core's context; only its
/// reactor touches it (interior mutability, no lock).
#[derive(Debug)]
pub struct CoreSecurity {
    index: usize,
    cores: usize,
    epoch: Instant,
    /// Any identity has a rate limit (else the bucket step is skipped).
    limited: Cell<bool>,
    /// One bucket per id, and the `max_rps` each was made for.
    buckets: RefCell<Vec<(u32, Bucket)>>,
    cells: RefCell<HashMap<u64, u64>>,
    refusals: RefCell<Vec<RefusalSample>>,
    suppressed: Cell<u64>,
    /// `Some` with `audit_fail_closed`: false while the audit file is down.
    audit_ok: Option<Arc<AtomicBool>>,
    /// Where the counts go; `None`: nothing is counted (no writer).
    tx: Option<AuditTx>,
}

impl CoreSecurity {
    /// Core `index` of `cores` under `rules`, sending its counts to `tx`
    /// (none: nothing is counted).
    pub fn new(
        index: usize,
        cores: usize,
        rules: &ClientRules,
        tx: Option<AuditTx>,
        audit_ok: Option<Arc<AtomicBool>>,
    ) -> CoreSecurity {
        let buckets: Vec<(u32, Bucket)> = (0..SLOTS)
            .map(|i| {
                let rps = rules.max_rps(i as ClientId);
                (rps, Bucket::new(rps, cores))
            })
            .collect();
        CoreSecurity {
            index,
            cores,
            epoch: Instant::now(),
            limited: Cell::new(buckets.iter().any(|(r, _)| *r != 0)),
            buckets: RefCell::new(buckets),
            cells: RefCell::new(HashMap::with_capacity(256)),
            refusals: RefCell::new(Vec::new()),
            suppressed: Cell::new(0),
            audit_ok,
            tx,
        }
    }

    /// Admission of one key operation from `client` read at `at`: the
    /// fail-closed audit switch, then the identity's bucket.
    #[inline]
    pub fn admit(&self, client: ClientId, at: Instant) -> Result<(), Refusal> {
        if let Some(ok) = &self.audit_ok {
            if !ok.load(Ordering::Relaxed) {
                return Err(Refusal::AuditUnavailable);
            }
        }
        if !self.limited.get() {
            return Ok(());
        }
        let now_ns = at.saturating_duration_since(self.epoch).as_nanos() as u64;
        if self.buckets.borrow_mut()[client as usize].1.admit(now_ns) {
            Ok(())
        } else {
            Err(Refusal::RateLimited)
        }
    }

    /// Take up a reload's rules (the core's control task, when it takes
    /// up a new generation): an id whose `max_rps` is unchanged keeps its
    /// bucket (and with it what it has used of its burst), a changed or
    /// reassigned one starts a fresh bucket at the new rate.
    pub fn retune(&self, rules: &ClientRules) {
        let mut buckets = self.buckets.borrow_mut();
        for (i, (rps, b)) in buckets.iter_mut().enumerate() {
            let now = rules.max_rps(i as ClientId);
            if now != *rps || rules.reassigned & (1u128 << i) != 0 {
                *rps = now;
                *b = Bucket::new(now, self.cores);
            }
        }
        self.limited.set(buckets.iter().any(|(r, _)| *r != 0));
    }

    /// Count one finished key operation (`result`: the error code byte, or
    /// [`Refusal::result_byte`]).
    #[inline]
    pub fn count(&self, key: u32, client: ClientId, op: Op, result: u8) {
        if self.tx.is_none() {
            return;
        }
        let mut cells = self.cells.borrow_mut();
        let len = cells.len();
        let cell = pack(key, client, op, result);
        match cells.get_mut(&cell) {
            Some(n) => *n += 1,
            None if len < MAX_AUDIT_CELLS => {
                cells.insert(cell, 1);
            }
            None => {
                *cells
                    .entry(pack(OVERFLOW_KEY, client, op, result))
                    .or_insert(0) += 1
            }
        }
    }

    /// Record a refusal individually (up to the sample cap) besides its
    /// count.
    #[cold]
    pub fn sample_refusal(&self, key: u32, client: ClientId, op: Op, reason: Refusal) {
        if self.tx.is_none() {
            return;
        }
        let mut r = self.refusals.borrow_mut();
        if r.len() < MAX_REFUSAL_SAMPLES {
            r.push(RefusalSample {
                at: SystemTime::now(),
                key,
                client,
                op,
                reason,
            });
        } else {
            self.suppressed.set(self.suppressed.get() + 1);
        }
    }

    /// Hand this interval's counts to the audit writer (control plane: the
    /// core's timer task, and once more when the core stops).
    pub fn flush(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let cells = std::mem::take(&mut *self.cells.borrow_mut());
        let refusals = std::mem::take(&mut *self.refusals.borrow_mut());
        let suppressed = self.suppressed.replace(0);
        if cells.is_empty() && refusals.is_empty() && suppressed == 0 {
            return;
        }
        tx.send(AuditMsg::Counts {
            core: self.index,
            cells: cells.into_iter().collect(),
            refusals,
            suppressed,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{KeyPolicy, OpFilter};
    use keycore_protocol::Hash;
    use rustls_pki_types::pem::PemObject as _;

    /// The rules of `cfg` over a fresh identity table.
    fn rules(cfg: &SecurityConfig) -> ClientRules {
        ClientRules::build(cfg, &Arc::new(Identities::new(cfg, None))).unwrap()
    }

    fn ident(name: &str, names: &[&str], pins: &[[u8; 32]]) -> ClientIdentity {
        ClientIdentity {
            name: name.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            spki_sha256: pins.to_vec(),
            max_rps: None,
            max_connections: None,
        }
    }

    #[test]
    fn glob_matches_like_a_shell_ignoring_ascii_case() {
        assert!(glob("*.edge.example", "a.EDGE.example"));
        assert!(glob("edge-*-b", "edge-1-b"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("*.edge.example", "edge.example"));
        assert!(!glob("edge", "edge2"));
        assert!(!glob("a*c", "abcd"));
    }

    #[test]
    fn configured_identities_match_name_and_pin() {
        let pin = [7u8; 32];
        let cfg = SecurityConfig {
            client_identities: vec![
                ident("a", &["*.a.example"], &[]),
                ident("b", &["b"], &[pin, [8; 32]]),
            ],
            ..Default::default()
        };
        let ids = rules(&cfg);
        let facts = |cn: &str, sans: &[&str], key: [u8; 32]| CertFacts {
            cn: Some(cn.into()),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            spki_sha256: key,
        };
        assert_eq!(
            ids.match_configured(&facts("x", &["e.a.example"], [0; 32])),
            Ok(1)
        );
        assert_eq!(ids.match_configured(&facts("b", &[], pin)), Ok(2));
        assert_eq!(ids.match_configured(&facts("b", &[], [8; 32])), Ok(2));
        assert_eq!(
            ids.match_configured(&facts("b", &[], [9; 32])),
            Err(TlsRefusal::SpkiPin)
        );
        assert_eq!(
            ids.match_configured(&facts("c", &[], pin)),
            Err(TlsRefusal::Name)
        );
        assert_eq!(ids.identities().label(2), "b");
        assert_eq!(ids.identities().label(OTHER), "other");
    }

    #[test]
    fn unconfigured_identities_are_capped_with_other() {
        let r = rules(&SecurityConfig::default());
        let ids = r.identities();
        let mut labels = ids.labels.lock().unwrap();
        for i in 0..MAX_CLIENT_IDENTITIES {
            labels.push(format!("cn{i}"));
        }
        drop(labels);
        let pki_dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate(pki_dir.path()).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_file(&pki.client_cert).unwrap();
        // The 65th distinct name is folded into `other`.
        let facts = CertFacts::of(&der).unwrap();
        assert_eq!(r.identify(Some(&facts)), Ok(OTHER));
        assert_eq!(r.identify(None), Err(TlsRefusal::Unparsable));
        assert_eq!(ids.labels().len(), MAX_CLIENT_IDENTITIES + 1);
    }

    #[test]
    fn connection_slots_are_capped_per_identity_and_given_back() {
        let mut a = ident("a", &["a"], &[]);
        a.max_connections = Some(2);
        let cfg = SecurityConfig {
            client_identities: vec![a],
            ..Default::default()
        };
        let ids = rules(&cfg);
        let s1 = ids.connect(1).unwrap();
        let s2 = ids.connect(1).unwrap();
        assert!(ids.connect(1).is_none());
        assert_eq!(ids.identities().refused(TlsRefusal::Connections), 1);
        drop(s1);
        let _s3 = ids.connect(1).unwrap();
        assert_eq!(ids.identities().connections(1), 2);
        drop(s2);
        assert_eq!(ids.identities().connections(1), 1);
    }

    #[test]
    fn a_reload_keeps_ids_by_name_and_readmits_or_revokes_connections() {
        let pin_old = [1u8; 32];
        let pin_new = [2u8; 32];
        let before = SecurityConfig {
            client_identities: vec![ident("a", &["a"], &[pin_old]), ident("b", &["b"], &[])],
            ..Default::default()
        };
        let table = Arc::new(Identities::new(&before, None));
        let r1 = ClientRules::build(&before, &table).unwrap();
        let facts = |cn: &str, key: [u8; 32]| CertFacts {
            cn: Some(cn.into()),
            sans: vec![],
            spki_sha256: key,
        };
        let a_old = facts("a", pin_old);
        assert_eq!(r1.identify(Some(&a_old)), Ok(1));
        let slot = r1.connect(1).unwrap();
        // Rotated: a's pin is the new key only, c is new, b unchanged but
        // listed first now.
        let after = SecurityConfig {
            client_identities: vec![
                ident("b", &["b"], &[]),
                ident("c", &["c"], &[]),
                ident("a", &["a"], &[pin_new]),
            ],
            ..Default::default()
        };
        let r2 = ClientRules::build(&after, &table).unwrap();
        assert_eq!(
            (r2.id_of("a"), r2.id_of("b"), r2.id_of("c")),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(r2.readmit(Some(&a_old), 1), Err(TlsRefusal::Revoked));
        assert_eq!(r2.readmit(Some(&facts("a", pin_new)), 1), Ok(1));
        assert_eq!(r2.readmit(Some(&facts("b", [9; 32])), 2), Ok(2));
        assert_eq!(r2.readmit(None, 2), Err(TlsRefusal::Revoked));
        // Now matching another identity: moves to it.
        assert_eq!(r2.readmit(Some(&facts("c", [9; 32])), 2), Ok(3));
        // The connection count stays with the id across the reload.
        assert_eq!(table.connections(1), 1);
        drop(slot);
        assert_eq!(table.connections(1), 0);
        // Without an allow-list every connection keeps its identity.
        let open = ClientRules::build(&SecurityConfig::default(), &table).unwrap();
        assert_eq!(open.readmit(Some(&a_old), 1), Ok(1));
        assert_eq!(table.labels(), ["other", "a", "b", "c"]);
    }

    #[test]
    fn a_full_table_reuses_an_idle_removed_slot_and_refuses_when_none_is_idle() {
        let names: Vec<String> = (0..MAX_CLIENT_IDENTITIES)
            .map(|i| format!("e{i}"))
            .collect();
        let all = SecurityConfig {
            client_identities: names.iter().map(|n| ident(n, &[n], &[])).collect(),
            ..Default::default()
        };
        let table = Arc::new(Identities::new(&all, None));
        let r = ClientRules::build(&all, &table).unwrap();
        assert_eq!(r.reassigned, 0);
        let _busy = r.connect(1).unwrap();
        // Renaming in one step while the table is full: e0 and e1 are
        // still served, so their slots are not free yet.
        let mut renamed = all.clone();
        renamed.client_identities.drain(0..2);
        renamed.client_identities.push(ident("new", &["new"], &[]));
        let e = ClientRules::build(&renamed, &table)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no identity slot left for \"new\""), "{e}");
        // Two steps: remove them (served), then add: "new" takes e1's idle
        // slot, not busy e0's.
        let mut removed = all.clone();
        removed.client_identities.drain(0..2);
        ClientRules::build(&removed, &table).unwrap();
        table.set_in_force(&removed);
        let r2 = ClientRules::build(&renamed, &table).unwrap();
        assert_eq!(r2.id_of("new"), Some(2));
        assert_eq!(r2.reassigned, 1 << 2);
        assert_eq!(table.label(2), "new");
        assert_eq!(table.label(1), "e0", "the busy slot keeps its name");
        // One more new name while e0 still has a connection: no slot, and
        // the failed build changes no label.
        table.set_in_force(&renamed);
        let before = table.labels();
        let mut more = renamed.clone();
        more.client_identities.push(ident("x", &["x"], &[]));
        let e = ClientRules::build(&more, &table).unwrap_err();
        assert_eq!(e, NoIdentitySlot("x".into()));
        assert!(
            e.to_string().contains("no identity slot left for \"x\""),
            "{e}"
        );
        assert_eq!(table.labels(), before);
    }

    #[test]
    fn retune_keeps_buckets_of_unchanged_limits_and_renews_changed_ones() {
        let mut a = ident("a", &["a"], &[]);
        a.max_rps = Some(10);
        let mut b = ident("b", &["b"], &[]);
        b.max_rps = Some(10);
        let cfg = SecurityConfig {
            client_identities: vec![a, b],
            ..Default::default()
        };
        let table = Arc::new(Identities::new(&cfg, None));
        let core = CoreSecurity::new(0, 1, &ClientRules::build(&cfg, &table).unwrap(), None, None);
        let t = Instant::now();
        let used = |id| (0..20).filter(|_| core.admit(id, t).is_ok()).count();
        assert_eq!((used(1), used(2)), (10, 10), "both bursts spent");
        let mut next = cfg.clone();
        next.client_identities[1].max_rps = Some(20);
        core.retune(&ClientRules::build(&next, &table).unwrap());
        // a's limit did not change: its spent burst stays spent; b has a
        // fresh bucket at its new rate.
        assert_eq!((used(1), used(2)), (0, 20));
        // No limit left at all: the bucket step is skipped.
        core.retune(&ClientRules::build(&SecurityConfig::default(), &table).unwrap());
        assert!(!core.limited.get());
        assert_eq!(used(1), 20);
    }

    #[test]
    fn policy_denies_ops_and_clients_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let pki = crate::pki::generate(dir.path()).unwrap();
        let mut index = KeyIndex::default();
        for r in keycore_keys::software::load_dir(&pki.keys_dir) {
            index.insert(r.unwrap()).unwrap();
        }
        let rsa = index
            .entries()
            .iter()
            .position(|e| e.source.ends_with("rsa2048.key"))
            .unwrap() as u32;
        let p256 = index
            .entries()
            .iter()
            .position(|e| e.source.ends_with("p256.key"))
            .unwrap() as u32;
        let cfg = SecurityConfig {
            client_identities: vec![ident("a", &["a"], &[]), ident("b", &["b"], &[])],
            key_policies: vec![
                KeyPolicy {
                    ski: None,
                    store: Some(
                        pki.keys_dir
                            .join("rsa2048.key")
                            .to_string_lossy()
                            .into_owned(),
                    ),
                    deny_ops: vec![OpFilter::RsaDecrypt, OpFilter::Hash(Hash::Sha1)],
                    clients: None,
                },
                KeyPolicy {
                    ski: Some(index.entries()[p256 as usize].ski),
                    store: None,
                    deny_ops: vec![],
                    clients: Some(vec!["b".into()]),
                },
            ],
            ..Default::default()
        };
        let p = Policy::build(&cfg, &index, &rules(&cfg));
        assert_eq!(p.restricted(), 2);
        assert_eq!(p.check(rsa, Op::RSA_DECRYPT, 1), Err(Refusal::OpDenied));
        assert_eq!(p.check(rsa, Op(0x03), 1), Err(Refusal::OpDenied));
        assert_eq!(p.check(rsa, Op::RSA_SIGN_SHA256, 1), Ok(()));
        assert_eq!(
            p.check(p256, Op::ECDSA_SIGN_SHA256, 1),
            Err(Refusal::ClientDenied)
        );
        assert_eq!(p.check(p256, Op::ECDSA_SIGN_SHA256, 2), Ok(()));
        // Keys no entry selects, and the not-found key, are unrestricted.
        let other = (0..index.len() as u32)
            .find(|&k| k != rsa && k != p256)
            .unwrap();
        assert_eq!(p.check(other, Op::RSA_DECRYPT, 0), Ok(()));
        assert_eq!(p.check(NO_KEY, Op::RSA_DECRYPT, 0), Ok(()));
    }

    #[test]
    fn bucket_allows_the_core_share_with_one_burst() {
        // 100/s over 2 cores: 50 per core, burst 50, then one per 20 ms.
        let mut b = Bucket::new(100, 2);
        let ok = (0..200).filter(|_| b.admit(1_000_000_000)).count();
        assert_eq!(ok, 50);
        assert!(!b.admit(1_000_000_000 + 19_000_000));
        assert!(b.admit(1_000_000_000 + 20_000_000));
        // Over 10 s of steady arrivals at 1 kHz, the admitted count is the
        // share of the rate plus the burst.
        let mut b = Bucket::new(100, 2);
        let ok = (0..10_000u64).filter(|i| b.admit(i * 1_000_000)).count();
        assert!((540..=551).contains(&ok), "{ok}");
        assert!(Bucket::new(0, 4).admit(0));
    }

    #[test]
    fn cells_pack_and_overflow_is_bounded() {
        let c = pack(12345, 7, Op::ECDSA_SIGN_SHA256, 0x82);
        assert_eq!(unpack(c), (12345, 7, Op::ECDSA_SIGN_SHA256, 0x82));
        let r = key_ref(3, 12345);
        assert_eq!(split_key_ref(r), (3, 12345));
        assert_eq!(key_ref(255, 0x00FF_FFFE), OVERFLOW_KEY);
        assert_ne!(key_ref(255, 0x00FF_FFFD), NO_KEY);
        assert_eq!(Refusal::from_result_byte(0x82), Some(Refusal::RateLimited));
        assert_eq!(Refusal::from_result_byte(0x08), None);
        let ids = rules(&SecurityConfig::default());
        let (tx, _rx) = std::sync::mpsc::sync_channel(4);
        let core = CoreSecurity::new(0, 1, &ids, Some(AuditTx::new(tx, Arc::default())), None);
        for k in 0..(MAX_AUDIT_CELLS as u32 + 100) {
            core.count(k, 1, Op::ECDSA_SIGN_SHA256, 0);
        }
        let cells = core.cells.borrow();
        assert_eq!(cells.len(), MAX_AUDIT_CELLS + 1);
        assert_eq!(cells[&pack(OVERFLOW_KEY, 1, Op::ECDSA_SIGN_SHA256, 0)], 100);
    }

    #[test]
    fn refusal_samples_are_capped_and_the_rest_counted() {
        let ids = rules(&SecurityConfig::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(4);
        let core = CoreSecurity::new(0, 1, &ids, Some(AuditTx::new(tx, Arc::default())), None);
        for _ in 0..(MAX_REFUSAL_SAMPLES + 5) {
            core.sample_refusal(1, 1, Op::RSA_DECRYPT, Refusal::OpDenied);
        }
        core.flush();
        match rx.try_recv().unwrap() {
            AuditMsg::Counts {
                refusals,
                suppressed,
                ..
            } => {
                assert_eq!(refusals.len(), MAX_REFUSAL_SAMPLES);
                assert_eq!(suppressed, 5);
            }
            other => panic!("{other:?}"),
        }
        let flag = Arc::new(AtomicBool::new(true));
        let core = CoreSecurity::new(0, 1, &ids, None, Some(flag.clone()));
        assert_eq!(core.admit(1, Instant::now()), Ok(()));
        flag.store(false, Ordering::Relaxed);
        assert_eq!(
            core.admit(1, Instant::now()),
            Err(Refusal::AuditUnavailable)
        );
    }
}
