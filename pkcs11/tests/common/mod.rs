//! Helpers shared by the PKCS#11 test binaries (each includes this file as
//! `mod common;`): the offload throughput loop the benches measure with.

use keycore_pkcs11::{KeyRef, Pkcs11Store};
use keycore_protocol::OpClass;
use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sign `op` on `k` through offload for `secs`, with `inflight` requests
/// outstanding (one glommio task each), on one reactor. Returns ops/s.
pub fn offload_rate(
    store: Arc<Pkcs11Store>,
    k: KeyRef,
    op: OpClass,
    d: Vec<u8>,
    inflight: usize,
    secs: f64,
) -> f64 {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let core = Rc::new(store.core(0));
            core.submit(k, op, &d).await.unwrap(); // sessions open, handles found
            let count = Rc::new(Cell::new(0u64));
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(secs);
            let tasks: Vec<_> = (0..inflight)
                .map(|_| {
                    let (core, count, d) = (core.clone(), count.clone(), d.clone());
                    glommio::spawn_local(async move {
                        while Instant::now() < deadline {
                            core.submit(k, op, &d).await.unwrap();
                            count.set(count.get() + 1);
                        }
                    })
                    .detach()
                })
                .collect();
            for t in tasks {
                t.await;
            }
            count.get() as f64 / start.elapsed().as_secs_f64()
        })
        .unwrap()
        .join()
        .unwrap()
}
