//! Latency histograms and outcome counters, per operation, per interval.
//!
//! Each executor records into its own [`OpSet`] (no sharing, no locks) and
//! ships a copy every interval to the coordinating thread, which merges them.
//! Latencies are recorded in microseconds into HdrHistograms (3 significant
//! digits). This module owns the recording and merging rules; it does no I/O.

use crate::check::{Failure, OpKind};
use crate::client::ClientError;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt;

/// Lowest latency tracked, µs.
pub const HIST_LOW_US: u64 = 1;
/// Highest latency tracked, µs (10 minutes: above any timeout; larger
/// values are clamped rather than lost).
pub const HIST_HIGH_US: u64 = 600_000_000;
/// Significant digits kept (0.1% value resolution).
pub const HIST_SIGFIG: u8 = 3;

/// A new empty latency histogram with the crate's bounds.
pub fn new_hist() -> Histogram<u64> {
    // Bounds are constants known valid; this cannot fail.
    Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
        .unwrap_or_else(|_| unreachable!("constant histogram bounds are valid"))
}

/// Record `us` into `h`, clamped into the tracked range.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(HIST_LOW_US, HIST_HIGH_US));
}

/// Why a request did not count as OK, as counted in the error table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// Server error response with this code.
    Server(u8),
    /// Signature or plaintext wrong.
    BadResult,
    /// Response opcode not the expected one.
    WrongOpcode(u8),
    /// No response within the timeout (lost or late).
    Timeout,
    /// The connection closed with the request in flight.
    ConnectionLost,
    /// No connection was up.
    NotConnected,
    /// Any other client-side failure.
    Client,
    /// Open loop: not sent at all, because the generator already had its
    /// maximum of requests outstanding (the server is far behind).
    NotSent,
}

impl ErrorKind {
    /// Map a check failure.
    pub fn from_failure(f: Failure) -> ErrorKind {
        match f {
            Failure::Server(c) => ErrorKind::Server(c.0),
            Failure::BadResult => ErrorKind::BadResult,
            Failure::WrongOpcode(op) => ErrorKind::WrongOpcode(op.0),
        }
    }

    /// Map a client error.
    pub fn from_client(e: &ClientError) -> ErrorKind {
        match e {
            ClientError::Timeout => ErrorKind::Timeout,
            ClientError::ConnectionLost => ErrorKind::ConnectionLost,
            ClientError::NotConnected => ErrorKind::NotConnected,
            _ => ErrorKind::Client,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Server(c) => {
                write!(
                    f,
                    "server error 0x{c:02x} ({})",
                    keycore_protocol::ErrorCode(*c)
                )
            }
            ErrorKind::BadResult => f.write_str("bad signature / plaintext"),
            ErrorKind::WrongOpcode(o) => {
                write!(f, "unexpected opcode {:?}", keycore_protocol::Op(*o))
            }
            ErrorKind::Timeout => f.write_str("timeout (lost or late)"),
            ErrorKind::ConnectionLost => f.write_str("connection lost"),
            ErrorKind::NotConnected => f.write_str("not connected"),
            ErrorKind::Client => f.write_str("client error"),
            ErrorKind::NotSent => f.write_str("not sent (generator at its outstanding limit)"),
        }
    }
}

/// Outcomes of one operation over some span of time.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Latency of OK responses, µs.
    pub hist: Histogram<u64>,
    /// OK responses.
    pub ok: u64,
    /// OK responses whose result was verified with the public key.
    pub verified: u64,
    /// Failures by kind.
    pub errors: BTreeMap<ErrorKind, u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            hist: new_hist(),
            ok: 0,
            verified: 0,
            errors: BTreeMap::new(),
        }
    }
}

impl OpStats {
    /// Count an OK response of latency `us`.
    pub fn ok(&mut self, us: u64, verified: bool) {
        record(&mut self.hist, us);
        self.ok += 1;
        self.verified += u64::from(verified);
    }

    /// Count a failure.
    pub fn error(&mut self, kind: ErrorKind) {
        *self.errors.entry(kind).or_insert(0) += 1;
    }

    /// Total failures.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.verified += other.verified;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_insert(0) += v;
        }
    }
}

/// Where the OK requests' latency went inside the generator (issue 13),
/// all operations together, µs. The three parts of one request add up to
/// its latency (from its scheduled time, or its send in a closed loop, to
/// the read that brought its answer) plus the part after that read which
/// the latency does not include.
#[derive(Clone, Debug)]
pub struct Phases {
    /// Scheduled (open loop) or started (closed loop) → the write carrying
    /// the request returned: the generator's timer, task and write path.
    pub to_wire: Histogram<u64>,
    /// Written → the read bringing the answer returned: loopback both ways,
    /// the server, and the generator's wake-up to read.
    pub round_trip: Histogram<u64>,
    /// Answer read → outcome recorded: the request task's wake-up and the
    /// answer's check (verification included); not part of the latency.
    pub after_read: Histogram<u64>,
}

impl Default for Phases {
    fn default() -> Self {
        Phases {
            to_wire: new_hist(),
            round_trip: new_hist(),
            after_read: new_hist(),
        }
    }
}

impl Phases {
    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &Phases) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.to_wire.add(&other.to_wire);
        let _ = self.round_trip.add(&other.round_trip);
        let _ = self.after_read.add(&other.after_read);
    }

    fn reset(&mut self) {
        self.to_wire.reset();
        self.round_trip.reset();
        self.after_read.reset();
    }
}

/// One [`OpStats`] per operation, indexed by [`OpKind::index`].
#[derive(Clone, Debug, Default)]
pub struct OpSet {
    /// Per operation.
    pub ops: [OpStats; OpKind::ALL.len()],
    /// Open loop: how late requests were sent relative to their schedule, µs.
    pub lag: Option<Histogram<u64>>,
    /// The OK requests' latency split by where it was spent.
    pub phases: Phases,
}

impl OpSet {
    /// An empty set; `open_loop` adds a lag histogram.
    pub fn new(open_loop: bool) -> OpSet {
        OpSet {
            ops: Default::default(),
            lag: open_loop.then(new_hist),
            phases: Phases::default(),
        }
    }

    /// The stats of `op`.
    pub fn op(&mut self, op: OpKind) -> &mut OpStats {
        &mut self.ops[op.index()]
    }

    /// Add `other` into `self`.
    pub fn merge(&mut self, other: &OpSet) {
        for (a, b) in self.ops.iter_mut().zip(&other.ops) {
            a.merge(b);
        }
        match (&mut self.lag, &other.lag) {
            (Some(a), Some(b)) => {
                let _ = a.add(b);
            }
            (None, Some(b)) => self.lag = Some(b.clone()),
            _ => {}
        }
        self.phases.merge(&other.phases);
    }

    /// All operations merged into one.
    pub fn all(&self) -> OpStats {
        let mut t = OpStats::default();
        for o in &self.ops {
            t.merge(o);
        }
        t
    }

    /// Forget everything (keep allocations).
    pub fn reset(&mut self) {
        for o in &mut self.ops {
            o.hist.reset();
            o.ok = 0;
            o.verified = 0;
            o.errors.clear();
        }
        if let Some(l) = &mut self.lag {
            l.reset();
        }
        self.phases.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keycore_protocol::ErrorCode;

    #[test]
    fn merge_adds_counts_and_histograms() {
        let mut a = OpSet::new(true);
        let mut b = OpSet::new(true);
        for us in 1..=1000 {
            a.op(OpKind::EcdsaP256Sha256).ok(us, true);
        }
        for us in 1001..=2000 {
            b.op(OpKind::EcdsaP256Sha256).ok(us, false);
        }
        b.op(OpKind::Ping).error(ErrorKind::Timeout);
        b.op(OpKind::EcdsaP256Sha256)
            .error(ErrorKind::from_failure(Failure::Server(
                ErrorCode::KEY_NOT_FOUND,
            )));
        record(b.lag.as_mut().unwrap(), 5);
        record(&mut b.phases.round_trip, 70);
        record(&mut a.phases.round_trip, 90);
        a.merge(&b);
        let e = &a.ops[OpKind::EcdsaP256Sha256.index()];
        assert_eq!((e.ok, e.verified), (2000, 1000));
        assert_eq!(e.hist.len(), 2000);
        let p50 = e.hist.value_at_quantile(0.5);
        assert!((999..=1001).contains(&p50), "{p50}");
        assert_eq!(e.errors.get(&ErrorKind::Server(2)), Some(&1));
        let all = a.all();
        assert_eq!(all.error_count(), 2);
        assert_eq!(a.lag.as_ref().unwrap().len(), 1);
        assert_eq!(a.phases.round_trip.len(), 2);
        assert_eq!(a.phases.round_trip.max(), 90);
        assert!(a.phases.to_wire.is_empty());
        a.reset();
        assert_eq!(a.all().ok, 0);
        assert!(a.phases.round_trip.is_empty());
    }

    #[test]
    fn out_of_range_latencies_are_clamped_not_lost() {
        let mut s = OpStats::default();
        s.ok(0, false);
        s.ok(u64::MAX, false);
        assert_eq!(s.hist.len(), 2);
        assert!(s.hist.max() >= HIST_HIGH_US);
    }

    #[test]
    fn error_kinds_read_well() {
        assert_eq!(
            ErrorKind::Server(2).to_string(),
            "server error 0x02 (key not found)"
        );
        assert_eq!(
            ErrorKind::from_client(&ClientError::Timeout),
            ErrorKind::Timeout
        );
    }
}
