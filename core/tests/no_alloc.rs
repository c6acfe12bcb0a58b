//! The core's hot path allocates nothing: a counting global allocator watches a steady-state
//! loop of window and ring operations (what the progress thread does per chunk) and must see
//! zero allocations.
//!
//! `tcpx-core` is `no_std` without `alloc`, so it cannot allocate by construction; this test
//! keeps that true for the code paths as used (including through generic instantiations and
//! `Arc`-backed ring halves, whose allocation happens once at setup).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tcpx_core::plan::{PlanConfig, Planner, Policy};
use tcpx_core::ring::Ring;
use tcpx_core::unpack::{validate_fragments, LoadMeta, SlotCounter};
use tcpx_core::window::{EventId, TcpxWindow, WindowKind};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn steady_state_window_ring_plan_and_unpack_loop_allocates_nothing() {
    // Setup (may allocate).
    let submissions: Arc<Ring<(u64, u64), 64>> = Arc::new(Ring::new());
    let (mut submit, mut take) = Ring::split(submissions).expect("fresh ring");
    let mut send: TcpxWindow<u64> = TcpxWindow::new(WindowKind::Send);
    let mut recv: TcpxWindow<u64> = TcpxWindow::new(WindowKind::RecvUnpack);
    let mut slots = SlotCounter::new();
    let mut planner = Planner::new(PlanConfig::new(512 << 10, 4, Policy::RoundRobin).unwrap());
    let frags: Vec<LoadMeta> = (0..128u32)
        .map(|i| LoadMeta {
            src_off: (127 - i) * 4096,
            len: 4096,
            dst_off: u64::from(i) * 4096,
        })
        .collect();

    COUNTING.store(true, Ordering::SeqCst);
    let mut request = 0u64;
    let mut bytes = 0u64;
    for transfer in 0..2_000u64 {
        submit.push((transfer, 4 << 20)).expect("room");
        let (_, len) = take.pop().expect("just pushed");
        let plan = planner.plan(len).expect("valid plan");
        for chunk in plan {
            request += 1;
            send.post(request, chunk.index, chunk.len).expect("room");
            recv.post(request, chunk.index, chunk.len).expect("room");
            let _slot = slots.next_slot();
            let head = send.next_to_test().expect("posted");
            send.mark_done(head.request).expect("head");
            send.release_oldest().expect("done");
            let head = recv.next_to_test().expect("posted");
            recv.mark_done(head.request).expect("head");
            let summary = validate_fragments(&frags, 1 << 32, u64::from(chunk.len)).expect("valid");
            bytes += summary.bytes;
            recv.start_unpack(EventId(chunk.index)).expect("done");
            recv.release_oldest().expect("unpacking");
        }
    }
    COUNTING.store(false, Ordering::SeqCst);

    assert_eq!(bytes, 2_000 * (4 << 20));
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the steady-state loop allocated"
    );
}
