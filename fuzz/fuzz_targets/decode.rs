//! Fuzz target: any bytes through `frame::check` and `Message::decode`.
//!
//! Asserts, for every input:
//! - nothing panics (a panic is a crash to libFuzzer);
//! - framing + decoding performs **zero heap allocations** (a counting global
//!   allocator wraps the system one), with the reader's limit at the
//!   header's maximum body, 65535, and at a tight 1016;
//! - `frame::check` agrees with the header, and decoding exactly the framed
//!   message gives the same result as decoding the whole input (bytes past the
//!   announced length are never looked at);
//! - whatever decodes re-encodes to a well-formed padded message (>= 1024
//!   bytes, header length == body length) that decodes to the same items.
#![no_main]

use keycore_protocol::frame::{self, FrameStatus};
use keycore_protocol::{Message, HEADER_LEN, MAX_BODY_LEN, PADDED_LEN};
use libfuzzer_sys::fuzz_target;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Counts every allocation made through Rust's global allocator. (libFuzzer's
/// own C++ allocations don't go through it, so they are not counted.)
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; counting has no effect on the memory returned.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A reader limit tighter than the protocol's, so the over-limit path is hit.
const TIGHT_LIMIT: usize = PADDED_LEN - HEADER_LEN;

/// Proves, once per process, that the counter sees allocations at all (so a
/// zero count below means "no allocation", not "not counting").
fn counter_is_live() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let before = ALLOCATIONS.load(Relaxed);
        drop(std::hint::black_box(Box::new(0u64)));
        assert!(
            ALLOCATIONS.load(Relaxed) > before,
            "counting allocator not installed"
        );
    });
}

fuzz_target!(|data: &[u8]| {
    counter_is_live();
    let before = ALLOCATIONS.load(Relaxed);
    let framed = frame::check(data, MAX_BODY_LEN);
    let tight = frame::check(data, TIGHT_LIMIT);
    let whole_input = Message::decode(data);
    let framed_only = match framed {
        Ok(FrameStatus::Complete { len, .. }) => Some((len, Message::decode(&data[..len]))),
        _ => None,
    };
    let after = ALLOCATIONS.load(Relaxed);
    assert_eq!(after, before, "frame::check + Message::decode allocated");

    // frame::check agrees with the header.
    match framed {
        Ok(FrameStatus::NeedMore(n)) => {
            assert!(n > 0);
            if data.len() < HEADER_LEN {
                assert_eq!(n, HEADER_LEN - data.len());
            } else {
                let body = u16::from_be_bytes([data[2], data[3]]) as usize;
                assert_eq!(n, HEADER_LEN + body - data.len());
            }
        }
        Ok(FrameStatus::Complete { header, len }) => {
            assert_eq!(len, HEADER_LEN + header.body_len as usize);
            assert!(len <= data.len());
        }
        Err(e) => panic!("no header can exceed the protocol maximum: {e}"),
    }
    if let Ok(FrameStatus::Complete { len, .. }) = tight {
        assert!(len <= PADDED_LEN);
    }

    let Some((_, decoded)) = framed_only else {
        return;
    };
    assert_eq!(
        decoded, whole_input,
        "bytes past the message changed the result"
    );
    let Ok(m) = decoded else {
        return;
    };
    let mut out = Vec::new();
    if m.encode(&mut out).is_err() {
        // Only items that already fill a maximal body can't take padding.
        assert!(m.items_len() > MAX_BODY_LEN);
        return;
    }
    assert!(out.len() >= PADDED_LEN);
    assert_eq!(
        u16::from_be_bytes([out[2], out[3]]) as usize + HEADER_LEN,
        out.len()
    );
    let again = Message::decode(&out).expect("our own encoding failed to decode");
    assert_eq!(
        again,
        Message {
            version: (1, 0),
            ..m
        }
    );
});
