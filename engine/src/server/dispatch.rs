//! One request in, one response out: the opcode `match` of the data path.
//!
//! Owns the mapping from a decoded request to the protocol's answer (result,
//! pong, or error code), following PROTOCOL.md "Opcodes": a response-class
//! opcode gets 0x06, an unknown or missing one 0x05, seal/unseal/RPC with no
//! handler 0x08, a custom op with no function 0x05; key operations look the
//! key up by SKI (0x02 unknown, 0x08 none), check the request's shape
//! against the key once (`keycore_keys::check_input`, before any backend)
//! and run it: a software key inline, a store's key through this core's
//! `CoreStore::perform`, which answers now or returns a pending completion.
//!
//! Security (issue 18), checked here once per key operation, before any
//! backend and next to `check_input`: the identity's rate and the
//! fail-closed audit switch (`CoreSecurity::admit`), then the key's policy
//! (`Policy::check`: two bit tests). A refusal is answered
//! `security::REFUSAL_CODE` and counted by reason (and per key in the audit
//! counts); every key operation's result is counted per key, identity,
//! opcode and result for the audit trail (core-local, no lock).
//!
//! Must not: allocate for a synchronous operation (the result goes to a
//! reused scratch buffer, then straight into the connection's write buffer),
//! log per request, block the reactor (slow backends return a future), or
//! name any particular backend.

use crate::metrics::CoreStats;
use crate::record::CoreRecorder;
use crate::security::{key_ref, ClientId, CoreSecurity, Policy, Refusal, NO_KEY, REFUSAL_CODE};
use crate::trace::{CoreTracer, SpanRecord};
use keycore_keys::{check_input, Backend, CoreStore, KeyIndex, KeyKind, Outcome, PendingOp};
use keycore_protocol::codec::{encode_error, encode_response};
use keycore_protocol::{ErrorCode, Message, Op, OpClass};
use std::rc::Rc;
use std::time::Instant;

/// A request whose operation runs off the reactor.
pub struct Pending {
    /// Request ID to answer.
    pub id: u32,
    /// Its opcode (for metrics).
    pub op: Op,
    /// When the request was read (for the total-duration histogram).
    pub read_at: Instant,
    /// The key's audit reference (`security::key_ref`).
    pub key: u32,
    /// The operation.
    pub fut: PendingOp,
    /// Its span, when the request is sampled for tracing (finished and
    /// handed to the exporter with the answer).
    pub trace: Option<Box<SpanRecord>>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("id", &self.id)
            .field("op", &self.op)
            .finish()
    }
}

/// What the core shares with its connections' dispatch.
#[derive(Debug)]
pub struct DispatchCtx<'a> {
    /// The key index of the served generation the connection holds.
    pub keys: &'a KeyIndex,
    /// This core's part of every key store, indexed by `StoreId`.
    pub stores: &'a [Rc<dyn CoreStore>],
    /// This core's counters.
    pub stats: &'a CoreStats,
    /// This core's limiter and audit counts.
    pub sec: &'a CoreSecurity,
    /// The key policies.
    pub policy: &'a Policy,
    /// The connection's client identity.
    pub client: ClientId,
    /// The served generation's epoch (`security::key_ref`).
    pub epoch: u8,
    /// This core's tracer, when `tracing_enabled`.
    pub tracer: Option<&'a CoreTracer>,
    /// This core's traffic recorder, when `record_file` is set.
    pub recorder: Option<&'a CoreRecorder>,
    /// The connection's id for the recording (unique within the core).
    pub conn: u32,
}

/// What [`handle`] did with one request.
#[derive(Debug)]
pub struct Handled {
    /// The offloaded operation, if the answer comes later.
    pub pending: Option<Pending>,
    /// Estimated reactor cost, in [`cost`] units, for the connection's turn
    /// budget (see `conn_state`).
    pub cost: u32,
}

/// Estimated cost of one private-key operation on the reactor, in units of
/// about one microsecond of this project's 2-vCPU VM (bench/RESULTS.md raw
/// signer figures: RSA-2048 ~255 µs, ECDSA P-256 ~17 µs, Ed25519 ~9 µs; RSA
/// cost grows ~ bits^2.6, P-384/P-521 are unaccelerated curves). Only the
/// ratios matter: they size each connection's turn so that scheduling is by
/// crypto cost, not by request count. Requests answered without crypto
/// (ping, errors) cost [`CHEAP`]; operations handed to an off-reactor
/// backend cost only their submission.
pub fn cost(kind: KeyKind) -> u32 {
    match kind {
        KeyKind::Ed25519 => 10,
        KeyKind::EcdsaP256 => 20,
        KeyKind::EcdsaP384 => 150,
        KeyKind::EcdsaP521 => 350,
        KeyKind::Rsa { bits } if bits <= 2048 => 260,
        KeyKind::Rsa { bits } if bits <= 3072 => 800,
        KeyKind::Rsa { .. } => 1_800,
    }
}

/// Cost of a request answered without a private-key operation.
pub const CHEAP: u32 = 1;

/// Cost of submitting an operation to an off-reactor backend.
const SUBMIT: u32 = 5;

/// Handle one decoded request. A synchronous answer is appended to `out`
/// (using `scratch` for the operation's output); an offloaded one is returned
/// in [`Handled::pending`] and nothing is appended.
#[inline]
pub fn handle(
    ctx: &DispatchCtx<'_>,
    msg: &Message<'_>,
    read_at: Instant,
    scratch: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> Handled {
    let id = msg.id;
    let op = msg.opcode.unwrap_or(Op(0));
    let mut cost_units = CHEAP;
    ctx.stats.requests_by_op[op.0 as usize].inc();
    // Recording off: one branch. On: a 36-byte copy (no payload, ever).
    if let Some(r) = ctx.recorder {
        r.record(read_at, op.0, msg.ski, ctx.conn);
    }
    // Tracing off: one branch. On: the sampler, then a span for the few.
    let mut span = match ctx.tracer {
        None => None,
        Some(t) => t.sample(msg.span_context).map(|ids| t.record(ids, read_at)),
    };
    let result: Result<(), ErrorCode> = match (msg.opcode, op.class()) {
        (None, _) => Err(ErrorCode::BAD_OPCODE),
        (_, OpClass::Ping) => {
            // Echo; a too-large echo can't happen (the request fit one body).
            let _ = encode_response(out, id, Op::PONG, msg.payload.unwrap_or(&[]));
            let ns = elapsed_ns(read_at);
            ctx.stats.total.record(op, ErrorCode::NONE, ns);
            ctx.stats.total_fine.record(op, ns);
            if let (Some(t), Some(rec)) = (ctx.tracer, span) {
                t.submit(rec, op, ErrorCode::NONE, ctx.stats);
            }
            return Handled {
                pending: None,
                cost: CHEAP,
            };
        }
        (_, OpClass::ResponseClass) => Err(ErrorCode::UNEXPECTED_OPCODE),
        (_, OpClass::Unknown) | (_, OpClass::Custom) => Err(ErrorCode::BAD_OPCODE),
        (_, OpClass::Seal) | (_, OpClass::Unseal) | (_, OpClass::Rpc) => Err(ErrorCode::INTERNAL),
        (_, class) => match ctx.sec.admit(ctx.client, read_at) {
            Err(why) => refuse(ctx, NO_KEY, op, why),
            Ok(()) => match ctx.keys.lookup_at(msg.ski, msg.cert_digest) {
                Err(e) => {
                    ctx.sec.count(NO_KEY, ctx.client, op, e.0);
                    Err(e)
                }
                Ok((index, entry)) => match ctx.policy.check(index, op, ctx.client) {
                    Err(why) => refuse(ctx, key_ref(ctx.epoch, index), op, why),
                    Ok(()) => {
                        let key = key_ref(ctx.epoch, index);
                        let input = msg.payload.unwrap_or(&[]);
                        let started = Instant::now();
                        if let Some(rec) = &mut span {
                            rec.key(entry, started);
                        }
                        scratch.clear();
                        cost_units = cost(entry.kind);
                        let r = match check_input(entry.kind, class, input) {
                            Err(e) => Err(e),
                            Ok(()) => match &entry.backend {
                                Backend::Inline(k) => k.perform(class, input, scratch),
                                Backend::Store(sk) => match ctx.stores.get(sk.store.0 as usize) {
                                    // A key of a store this core does not have: a
                                    // start-up bug, never a client's doing.
                                    None => Err(ErrorCode::INTERNAL),
                                    Some(store) => {
                                        match store.perform(sk.key, class, input, scratch) {
                                            Outcome::Done(r) => r,
                                            Outcome::Pending(fut) => {
                                                return Handled {
                                                    pending: Some(Pending {
                                                        id,
                                                        op,
                                                        read_at,
                                                        key,
                                                        fut,
                                                        trace: span.map(Box::new),
                                                    }),
                                                    cost: SUBMIT,
                                                }
                                            }
                                        }
                                    }
                                },
                            },
                        };
                        let code = r.err().unwrap_or(ErrorCode::NONE);
                        ctx.stats.exec.record(op, code, elapsed_ns(started));
                        ctx.sec.count(key, ctx.client, op, code.0);
                        r
                    }
                },
            },
        },
    };
    let code = finish(
        ctx.stats,
        out,
        id,
        op,
        read_at,
        result.map(|()| &scratch[..]),
    );
    if let (Some(t), Some(rec)) = (ctx.tracer, span) {
        t.submit(rec, op, code, ctx.stats);
    }
    Handled {
        pending: None,
        cost: cost_units,
    }
}

/// Count and answer a refused key operation (cold: refusals are the
/// exception, and their sample record allocates).
#[cold]
fn refuse(ctx: &DispatchCtx<'_>, key: u32, op: Op, why: Refusal) -> Result<(), ErrorCode> {
    ctx.stats.requests_refused[why as usize].inc();
    ctx.sec.count(key, ctx.client, op, why.result_byte());
    ctx.sec.sample_refusal(key, ctx.client, op, why);
    Err(REFUSAL_CODE)
}

/// Send what this core's stores queued during a read pass (one batch per
/// store instead of one per request). Called by the connection after it has
/// dispatched every complete request it read.
#[inline]
pub fn flush(stores: &[Rc<dyn CoreStore>]) {
    for s in stores {
        s.flush();
    }
}

/// Encode the answer to a request and record its total duration; returns
/// the error code answered (`NONE` for a result).
#[inline]
pub fn finish(
    stats: &CoreStats,
    out: &mut Vec<u8>,
    id: u32,
    op: Op,
    read_at: Instant,
    result: Result<&[u8], ErrorCode>,
) -> ErrorCode {
    let code = match result {
        Ok(payload) => match encode_response(out, id, Op::RESPONSE, payload) {
            Ok(()) => ErrorCode::NONE,
            Err(_) => {
                encode_error(out, id, ErrorCode::INTERNAL);
                ErrorCode::INTERNAL
            }
        },
        Err(code) => {
            encode_error(out, id, code);
            code
        }
    };
    let ns = elapsed_ns(read_at);
    stats.total.record(op, code, ns);
    stats.total_fine.record(op, ns);
    code
}

#[inline]
fn elapsed_ns(since: Instant) -> u64 {
    since.elapsed().as_nanos().min(u64::MAX as u128) as u64
}
