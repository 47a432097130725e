//! Connections dropped before they were served (issue 12 item 12): failed
//! and timed-out TLS handshakes, admission refusals and accept errors,
//! classified by reason and summarised in at most one log line per
//! [`LOG_INTERVAL`] per core.
//!
//! Owns the reasons (their metric label values), the classification of a
//! handshake or accept error, and the per-core log window. Must not count
//! metrics itself or touch sockets: the core counts (see
//! `server::CoreCtx::refused`) and decides when to flush. Why a window: an
//! unauthenticated peer controls how often these happen, so a line per event
//! lets anyone on the network fill the disk (4.7 MB of logs in 10 s before);
//! a line per interval with the counts keeps what an operator needs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// At most one summary line per this interval per core.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why a connection was dropped before it was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// TLS: the client certificate did not verify (foreign CA, expired...).
    BadCert,
    /// TLS: no client certificate.
    NoCert,
    /// TLS: the peer sent an alert (it refused our certificate, or gave up).
    PeerAlert,
    /// TLS: not TLS, or a protocol violation.
    Protocol,
    /// TLS: the peer closed or reset the socket mid-handshake.
    PeerClosed,
    /// TLS: any other I/O error during the handshake.
    TlsOther,
    /// The handshake did not finish within `handshake_timeout`.
    HandshakeTimeout,
    /// Closed at accept: the source had `max_handshakes_per_source`.
    SourceLimit,
    /// Authenticated, but the core had `max_connections_per_core`.
    ConnectionLimit,
    /// accept(2) failed for lack of file descriptors (EMFILE/ENFILE).
    AcceptFdLimit,
    /// accept(2) failed otherwise (ENOBUFS, ENOMEM, ...).
    AcceptOther,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 11] = [
        Refusal::BadCert,
        Refusal::NoCert,
        Refusal::PeerAlert,
        Refusal::Protocol,
        Refusal::PeerClosed,
        Refusal::TlsOther,
        Refusal::HandshakeTimeout,
        Refusal::SourceLimit,
        Refusal::ConnectionLimit,
        Refusal::AcceptFdLimit,
        Refusal::AcceptOther,
    ];

    /// The TLS-failure reasons (`keycore_tls_failures_total{reason}`), in
    /// the order of [`Refusal::tls_index`].
    pub const TLS: [Refusal; 6] = [
        Refusal::BadCert,
        Refusal::NoCert,
        Refusal::PeerAlert,
        Refusal::Protocol,
        Refusal::PeerClosed,
        Refusal::TlsOther,
    ];

    /// The accept-error reasons (`keycore_accept_errors_total{reason}`).
    pub const ACCEPT: [Refusal; 2] = [Refusal::AcceptFdLimit, Refusal::AcceptOther];

    /// The label value (metrics and the log line).
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadCert => "bad_cert",
            Refusal::NoCert => "no_cert",
            Refusal::PeerAlert => "peer_alert",
            Refusal::Protocol => "protocol",
            Refusal::PeerClosed => "peer_closed",
            Refusal::TlsOther => "tls_other",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::SourceLimit => "max_handshakes_per_source",
            Refusal::ConnectionLimit => "max_connections_per_core",
            Refusal::AcceptFdLimit => "accept_fd_limit",
            Refusal::AcceptOther => "accept_other",
        }
    }

    fn index(self) -> usize {
        Refusal::ALL.iter().position(|&r| r == self).unwrap_or(0)
    }

    /// Index into [`Refusal::TLS`], for a TLS reason.
    pub fn tls_index(self) -> Option<usize> {
        Refusal::TLS.iter().position(|&r| r == self)
    }

    /// Index into [`Refusal::ACCEPT`], for an accept reason.
    pub fn accept_index(self) -> Option<usize> {
        Refusal::ACCEPT.iter().position(|&r| r == self)
    }

    /// Classify a failed TLS handshake (futures-rustls wraps the rustls
    /// error in an `io::Error`).
    pub fn of_handshake(e: &std::io::Error) -> Refusal {
        use std::io::ErrorKind as K;
        if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return match t {
                rustls::Error::InvalidCertificate(_) => Refusal::BadCert,
                rustls::Error::NoCertificatesPresented => Refusal::NoCert,
                rustls::Error::AlertReceived(_) => Refusal::PeerAlert,
                _ => Refusal::Protocol,
            };
        }
        match e.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                Refusal::PeerClosed
            }
            K::InvalidData => Refusal::Protocol,
            _ => Refusal::TlsOther,
        }
    }

    /// Classify a failed accept(2) by its errno.
    pub fn of_accept(errno: Option<i32>) -> Refusal {
        match errno {
            Some(libc::EMFILE) | Some(libc::ENFILE) => Refusal::AcceptFdLimit,
            _ => Refusal::AcceptOther,
        }
    }
}

/// One core's log window: counts since the last line.
#[derive(Debug, Default)]
pub struct RefusalLog {
    counts: [u64; Refusal::ALL.len()],
    /// When the last line was written.
    last_line: Option<Instant>,
    /// When the first event not yet logged happened.
    since: Option<Instant>,
    /// The last peer seen (a hint for the operator; the counts matter).
    last_peer: Option<std::net::SocketAddr>,
    /// The last error's text, for the reasons that carry one.
    last_error: Option<String>,
}

impl RefusalLog {
    /// Record one event. Returns the summary line to log now, if the
    /// interval since the last line has passed (the first event logs at
    /// once, so an operator sees an attack start).
    pub fn note(
        &mut self,
        r: Refusal,
        peer: Option<std::net::SocketAddr>,
        error: Option<&dyn std::fmt::Display>,
        now: Instant,
    ) -> Option<String> {
        self.counts[r.index()] += 1;
        self.since.get_or_insert(now);
        if peer.is_some() {
            self.last_peer = peer;
        }
        if let Some(e) = error {
            // Bounded: one short message, replaced each time.
            let mut s = String::new();
            let _ = write!(s, "{e}");
            s.truncate(200);
            self.last_error = Some(s);
        }
        self.flush(now)
    }

    /// The summary line, if anything was counted and the interval since the
    /// last line has passed (called by the core's control task each tick, so
    /// a burst's tail is logged one interval later, not at the next event).
    pub fn flush(&mut self, now: Instant) -> Option<String> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || self.last_line.is_some_and(|t| now < t + LOG_INTERVAL) {
            return None;
        }
        let from = self
            .last_line
            .unwrap_or_else(|| self.since.unwrap_or(now))
            .min(self.since.unwrap_or(now));
        let mut parts = Vec::new();
        for r in Refusal::ALL {
            let n = self.counts[r.index()];
            if n > 0 {
                parts.push(format!("{} {}", r.label(), thousands(n)));
            }
        }
        let mut line = format!(
            "refused {} connection{} before serving {} in the last {:.1} s: {}",
            thousands(total),
            if total == 1 { "" } else { "s" },
            if total == 1 { "it" } else { "them" },
            now.saturating_duration_since(from).as_secs_f64(),
            parts.join(", ")
        );
        if let Some(p) = self.last_peer.take() {
            let _ = write!(line, "; last from {p}");
        }
        if let Some(e) = self.last_error.take() {
            let _ = write!(line, "; last error: {e}");
        }
        self.counts = Default::default();
        self.last_line = Some(now);
        self.since = None;
        Some(line)
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::with_capacity(d.len() + d.len() / 3);
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
    }

    #[test]
    fn a_burst_gives_one_line_at_once_and_one_per_interval_with_every_count() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let mut lines = Vec::new();
        // 1,234 events over 25 s: 1,200 bad certificates, 34 timeouts.
        for i in 0..1234u32 {
            let now = t0 + Duration::from_millis(u64::from(i) * 20);
            let r = if i % 36 == 35 && i < 36 * 34 {
                Refusal::HandshakeTimeout
            } else {
                Refusal::BadCert
            };
            lines.extend(log.note(r, None, None, now));
            lines.extend(log.flush(now));
        }
        lines.extend(log.flush(t0 + Duration::from_secs(40)));
        // First event at once, then one line per 10 s: t=0, 10, 20, and the
        // tail at 40 (flushed by the control task).
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("refused 1 connection before serving it"));
        let total: u64 = lines
            .iter()
            .map(|l| {
                let n = l.split(' ').nth(1).unwrap().replace(',', "");
                n.parse::<u64>().unwrap()
            })
            .sum();
        assert_eq!(total, 1234);
        assert!(lines[1].contains("bad_cert"), "{}", lines[1]);
        assert!(lines[1].contains("handshake_timeout"), "{}", lines[1]);
        assert!(
            log.flush(t0 + Duration::from_secs(100)).is_none(),
            "nothing left"
        );
    }

    #[test]
    fn the_line_names_counts_peer_and_error() {
        let t0 = Instant::now();
        let mut log = RefusalLog::default();
        let peer = "127.0.0.1:9".parse().unwrap();
        let _ = log.note(Refusal::Protocol, Some(peer), Some(&"first"), t0);
        for _ in 0..1200 {
            assert!(log
                .note(
                    Refusal::BadCert,
                    Some(peer),
                    Some(&"invalid peer certificate: UnknownIssuer"),
                    t0 + Duration::from_secs(1)
                )
                .is_none());
        }
        for _ in 0..34 {
            let _ = log.note(
                Refusal::HandshakeTimeout,
                None,
                None,
                t0 + Duration::from_secs(2),
            );
        }
        let line = log.flush(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            line,
            "refused 1,234 connections before serving them in the last 10.0 s: bad_cert 1,200, handshake_timeout 34; last from 127.0.0.1:9; last error: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn handshake_errors_are_classified() {
        use std::io::{Error, ErrorKind};
        let wrap = |e: rustls::Error| Error::new(ErrorKind::InvalidData, e);
        assert_eq!(
            Refusal::of_handshake(&wrap(rustls::Error::NoCertificatesPresented)),
            Refusal::NoCert
        );
        assert_eq!(
            Refusal::of_handshake(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            Refusal::BadCert
        );
        assert_eq!(
            Refusal::of_handshake(&wrap(rustls::Error::AlertReceived(
                rustls::AlertDescription::BadCertificate
            ))),
            Refusal::PeerAlert
        );
        assert_eq!(
            Refusal::of_handshake(&wrap(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            Refusal::Protocol
        );
        assert_eq!(
            Refusal::of_handshake(&Error::from(ErrorKind::UnexpectedEof)),
            Refusal::PeerClosed
        );
        assert_eq!(
            Refusal::of_accept(Some(libc::EMFILE)),
            Refusal::AcceptFdLimit
        );
        assert_eq!(
            Refusal::of_accept(Some(libc::ENOBUFS)),
            Refusal::AcceptOther
        );
    }
}
