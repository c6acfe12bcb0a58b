//! A steady-state transfer loop makes zero allocations: posting, the progress threads' work
//! (planning, windows, plugin calls, releases, completions) and waiting, on both sides.
//!
//! A counting global allocator sees every allocation of this process's Rust code — the test
//! thread and both progress threads. tcpx-sim is a separate shared library with its own
//! allocator, so the plugin's own bookkeeping is not counted: this measures our engine.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tcpx::bootstrap::BootstrapListener;
use tcpx::endpoint::{Endpoint, EndpointConfig, Pinning};
use tcpx::net::{HostBuffer, Plugin};

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
fn steady_state_transfers_allocate_nothing() {
    std::env::set_var("TCPX_SIM_CUDA", "0");
    std::env::set_var("NCCL_DYNAMIC_CHUNK_SIZE", "131072");
    std::env::set_var("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo");
    let plugin = Plugin::load(common::sim_plugin_path()).unwrap();
    let config = |gpu| EndpointConfig {
        gpu,
        channels: 4,
        chunk_bytes: 64 << 10,
        pinning: Pinning::Off,
        ..EndpointConfig::default()
    };
    let deadline = || Instant::now() + Duration::from_secs(30);
    let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let p = plugin.clone();
    let client = thread::spawn(move || {
        let mut tx = Endpoint::new(p, config(1)).unwrap();
        let conn = tx.connect(addr, 1 << 20, 1, deadline()).unwrap();
        (tx, conn)
    });
    let mut rx = Endpoint::new(plugin, config(0)).unwrap();
    let rconn = rx.serve(&listener, deadline()).unwrap();
    let (mut tx, tconn) = client.join().unwrap();
    let len = 1u64 << 20;
    let sbuf = tx
        .register(Arc::new(HostBuffer::new(len as usize).unwrap()))
        .unwrap();
    let rbuf = rx
        .register(Arc::new(HostBuffer::new(len as usize).unwrap()))
        .unwrap();

    let round = |rx: &mut Endpoint, tx: &mut Endpoint| {
        let r = rx.post(rconn.id(), rbuf, 0, len).unwrap();
        let s = tx.post(tconn.id(), sbuf, 0, len).unwrap();
        tx.wait(s, deadline()).unwrap();
        rx.wait(r, deadline()).unwrap().bytes
    };
    // Warm-up: lazily initialised state (thread-locals, tracing callsites) settles here.
    for _ in 0..20 {
        round(&mut rx, &mut tx);
    }
    COUNTING.store(true, Ordering::SeqCst);
    let mut bytes = 0;
    for _ in 0..200 {
        bytes += round(&mut rx, &mut tx);
    }
    COUNTING.store(false, Ordering::SeqCst);
    assert_eq!(bytes, 200 * len);
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "the steady-state transfer loop allocated"
    );
}
