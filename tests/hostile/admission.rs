//! Admission (issue 12 item 2): sockets still in the TLS handshake have
//! their own budget, per core and per source address, and never take the
//! connection slots of authenticated edges.

use crate::support::{start, Client};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A raw socket from `src` (a loopback alias) that sends the first bytes of
/// a TLS record header and then nothing: a ClientHello trickled forever.
fn trickler(src: &str, to: SocketAddr) -> Option<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    let src: SocketAddr = format!("{src}:0").parse().unwrap();
    s.bind(&src.into()).ok()?;
    s.connect_timeout(&to.into(), Duration::from_secs(2)).ok()?;
    let mut t: TcpStream = s.into();
    let _ = t.write_all(&[0x16, 0x03, 0x01]);
    Some(t)
}

#[test]
fn trickling_handshakes_never_take_an_edge_slot() {
    // 10 connection slots; the attacker opens 100 handshakes from one
    // address and keeps them open past the handshake timeout's reach.
    let srv = start("max_connections_per_core: 10\nhandshake_timeout: 30s\n");
    let mut held = Vec::new();
    for _ in 0..100 {
        if let Some(t) = trickler("127.0.0.2", srv.addr) {
            held.push(t);
        }
    }
    assert!(held.len() >= 50, "could not open the attacking sockets");
    std::thread::sleep(Duration::from_millis(300));
    // Edges (another source) still connect and are served, at once.
    let t = Instant::now();
    let mut edges = Vec::new();
    for i in 0..5 {
        let mut c =
            Client::connect(srv.addr).unwrap_or_else(|e| panic!("edge {i} could not connect: {e}"));
        c.ping(b"edge")
            .unwrap_or_else(|e| panic!("edge {i} refused: {e}"));
        edges.push(c);
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "edges waited {:?}",
        t.elapsed()
    );
    // The one address got at most its per-source budget; the rest were
    // refused and counted.
    let in_progress = srv.metric("keycore_handshakes_in_progress");
    assert!(
        in_progress <= 64,
        "{in_progress} handshakes held by one source"
    );
    assert!(srv.metric("keycore_connections_refused_source_total") >= 30);
    assert_eq!(srv.metric("keycore_connections_refused_total"), 0);
    drop(held);
}
