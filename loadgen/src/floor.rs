//! The generator's own latency floor (issue 13), so that a capacity
//! planner knows what part of a p99 is the tool and not the server.
//!
//! Owns: the floor run and its summary line. It repeats the profile's
//! traffic shape (connections, concurrency, loop mode, rate, arrivals,
//! generator cores) with pings only, against a do-nothing responder started
//! in this process on 127.0.0.1 (`testsrv`: rustls with client
//! certificates like a key server, each request answered as soon as it is
//! read, no crypto, no queue, one thread per connection). What it measures
//! is the generator, loopback and TLS on both ends, on the machine as it is
//! loaded at that moment.
//!
//! Must not: stand in for a server's figures (the responder only answers
//! pings, and it shares the machine with the generator), or run longer than
//! [`FLOOR_MAX_S`] plus one second of warm-up.

use crate::report::{ms, Report};
use crate::testsrv::TestServer;
use crate::{LoadSpec, LoadgenError, Profile};

/// Longest measured window of a floor run: long enough for a p99.9 at a
/// few thousand requests per second, short next to the run it qualifies.
pub const FLOOR_MAX_S: f64 = 5.0;

/// Run the spec's traffic shape, pings only, against the in-process
/// do-nothing responder.
pub fn floor(spec: &LoadSpec) -> Result<Report, LoadgenError> {
    floor_on(spec, None)
}

/// [`floor`] with the responder's connection threads pinned to
/// `responder_cpu` (where the measured server runs). Unpinned, the kernel
/// tends to wake a loopback peer on the waker's CPU, so the responder
/// shares the generator's core and the two preempt each other: a cost the
/// real run (server pinned elsewhere) does not have.
pub fn floor_on(spec: &LoadSpec, responder_cpu: Option<usize>) -> Result<Report, LoadgenError> {
    // The responder's set-up (throwaway PKI, loopback listener) reports
    // failure by panicking; here that is an error, not a crash.
    let srv = std::panic::catch_unwind(|| TestServer::start_on(responder_cpu))
        .map_err(|_| LoadgenError::FloorResponder)?;
    let mut s = spec.clone();
    s.server = srv.addr;
    s.tls = srv.tls.clone();
    s.server_name = None;
    s.keys = vec![srv.key_dir.clone()];
    s.live = false;
    s.hdr_log = None;
    s.profile = Profile {
        mix: Profile::parse_mix("ping=1")?,
        duration_s: spec.profile.duration_s.min(FLOOR_MAX_S),
        warmup_s: spec.profile.warmup_s.min(1.0),
        ..spec.profile.clone()
    };
    crate::run(&s)
}

/// One line for the text report (two with the generator's split).
pub fn floor_line(r: &Report) -> String {
    match &r.total.latency {
        Some(p) => format!(
            "generator floor (same shape, pings to a do-nothing in-process responder, {:.0}/s, {} errors): p50 {}  p99 {}  p99.9 {}  max {}  -- latencies near these are the tool's, not the server's{}",
            r.total.throughput_per_s,
            r.total.errors,
            ms(p.p50_us),
            ms(p.p99_us),
            ms(p.p999_us),
            ms(p.max_us),
            r.phases
                .as_ref()
                .map_or(String::new(), |ph| format!("\n  floor: {}", ph.line()))
        ),
        None => format!(
            "generator floor: no answers from the in-process responder ({} errors)",
            r.total.errors
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testsrv::TestServer;
    use crate::LoopMode;

    /// The floor run answers every ping, never contacts the caller's
    /// server and bounds its window; its figures are ordered and printed.
    #[test]
    fn floor_runs_the_same_shape_with_pings() {
        // Any server address: the floor never contacts it.
        let other = TestServer::start();
        let mut spec = LoadSpec::new(other.addr, other.tls.clone(), vec![other.key_dir.clone()]);
        spec.profile = Profile {
            mode: LoopMode::Closed,
            connections: 2,
            duration_s: 30.0,
            warmup_s: 0.2,
            ..Profile::default()
        };
        // A 30 s run: its floor measures FLOOR_MAX_S, not 30 s.
        let r = floor(&spec).unwrap();
        let window_s = r.total.ok as f64 / r.total.throughput_per_s;
        assert!(window_s <= FLOOR_MAX_S + 0.01, "{window_s}");
        assert_eq!(r.total.errors, 0);
        assert!(r.total.ok > 100, "{}", r.total.ok);
        assert_eq!(r.ops.len(), 1, "pings only");
        let p = r.total.latency.as_ref().unwrap();
        assert!(p.p50_us <= p.p99_us && p.p99_us <= p.max_us);
        assert_eq!(
            other
                .knobs
                .requests
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
        let line = floor_line(&r);
        assert!(line.contains("p99 "), "{line}");
        assert!(line.contains(&ms(p.p99_us)), "{line}");
        assert!(line.contains("scheduled → written"), "{line}");
    }

    /// With the responder pinned (to a CPU this process may use), the
    /// floor answers every ping of its window like the unpinned one.
    #[test]
    fn a_pinned_responder_answers_every_ping() {
        let other = TestServer::start();
        let mut spec = LoadSpec::new(other.addr, other.tls.clone(), vec![other.key_dir.clone()]);
        spec.profile = Profile {
            rate: 500.0,
            connections: 2,
            duration_s: 0.5,
            warmup_s: 0.1,
            ..Profile::default()
        };
        let cpu = core_affinity::get_core_ids()
            .unwrap_or_default()
            .first()
            .map(|c| c.id);
        let r = floor_on(&spec, cpu).unwrap();
        assert_eq!(r.total.errors, 0);
        assert!(r.total.ok > 100, "{}", r.total.ok);
        assert_eq!(r.ops.len(), 1, "pings only");
    }
}
