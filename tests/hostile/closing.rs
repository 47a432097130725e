//! Closing (issue 12 item 1): a client that pipelines large requests and
//! never reads its answers loses its slot once its writes stall for
//! `idle_timeout`; the server never waits on close_notify into a full socket.

use crate::support::{request, start, Client};
use keycore_protocol::Op;
use std::time::{Duration, Instant};

#[test]
fn clients_that_never_read_lose_their_slot_within_idle_timeout() {
    let idle = Duration::from_secs(1);
    let srv = start("idle_timeout: 1s\nmax_connections_per_core: 2\n");
    // Two clients take both slots, then flood large pings and never read.
    let big = vec![0xABu8; 60_000];
    let mut hogs = Vec::new();
    for _ in 0..2 {
        let mut c = Client::connect(srv.addr).unwrap();
        c.tls
            .sock
            .set_write_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let msg = request(1, Op::PING, None, &big);
        // Until the server's answers fill every buffer and our write blocks.
        let t = Instant::now();
        while c.send(&msg).is_ok() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "writes never blocked"
            );
        }
        hogs.push(c);
    }
    let stuck_at = Instant::now();
    // A real edge must get a slot within idle_timeout + 2 s (the hogs stay
    // connected, never reading, the whole time).
    let limit = idle + Duration::from_secs(2);
    loop {
        let ok = Client::connect(srv.addr).and_then(|mut c| c.ping(b"edge"));
        if ok.is_ok() {
            break;
        }
        assert!(
            stuck_at.elapsed() < limit + Duration::from_secs(1),
            "no slot for an edge {:?} after the hogs stalled: {ok:?}",
            stuck_at.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(srv.metric("keycore_write_stalls_total") >= 2);
    assert!(srv.metric("keycore_requests_unanswered_total") >= 2);
    drop(hogs);
}
