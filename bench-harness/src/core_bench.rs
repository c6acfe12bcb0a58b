//! `tcpx-bench core`: the cost of the core's hot-path operations, in ns per operation.
//!
//! * window: one post → next_to_test → mark_done → release_oldest cycle on a 16-deep window
//!   kept half full (as a busy channel's is);
//! * ring, same thread: one push + one pop on a ring kept half full;
//! * ring, two threads: items per second through a ring from a producer thread to a consumer
//!   thread (the endpoint → progress-thread path), as ns per item.
//!
//! Timing uses `Instant` around many iterations; every result is fed to `black_box` so the
//! compiler cannot drop the work. Numbers are machine-specific: record them with the machine.

use std::hint::black_box;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use serde_json::json;
use tcpx_core::ring::Ring;
use tcpx_core::window::{TcpxWindow, WindowKind};

/// Arguments of `tcpx-bench core`.
#[derive(clap::Args, Debug)]
pub struct CoreArgs {
    /// Operations per measurement.
    #[arg(long, default_value_t = 10_000_000)]
    pub ops: u64,
    /// Repeat each measurement this many times and report the best (least disturbed) run.
    #[arg(long, default_value_t = 5)]
    pub repeats: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn best_ns_per_op(ops: u64, repeats: u32, mut f: impl FnMut(u64)) -> f64 {
    (0..repeats.max(1))
        .map(|_| {
            let t = Instant::now();
            f(ops);
            t.elapsed().as_nanos() as f64 / ops as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn window_cycle(ops: u64) {
    let mut w: TcpxWindow<u64> = TcpxWindow::new(WindowKind::Send);
    for i in 0..8 {
        let _ = w.post(i, i as u32, 4096);
    }
    for i in 8..ops + 8 {
        let _ = black_box(w.post(black_box(i), i as u32, 4096));
        if let Some(e) = w.next_to_test() {
            let _ = black_box(w.mark_done(e.request));
        }
        let _ = black_box(w.release_oldest());
    }
}

fn ring_same_thread(ops: u64) {
    let ring: Ring<u64, 256> = Ring::new();
    let Ok((mut p, mut c)) = Ring::split(&ring) else {
        return;
    };
    for i in 0..128 {
        let _ = p.push(i);
    }
    for i in 0..ops {
        let _ = black_box(p.push(black_box(i)));
        black_box(c.pop());
    }
}

fn ring_two_threads(ops: u64) {
    let ring: Arc<Ring<u64, 256>> = Arc::new(Ring::new());
    let Ok((mut p, mut c)) = Ring::split(ring) else {
        return;
    };
    let producer = thread::spawn(move || {
        for i in 0..ops {
            let mut v = i;
            while let Err(back) = p.push(v) {
                v = back;
                std::hint::spin_loop();
            }
        }
    });
    let mut got = 0;
    while got < ops {
        match c.pop() {
            Some(v) => {
                black_box(v);
                got += 1;
            }
            None => std::hint::spin_loop(),
        }
    }
    let _ = producer.join();
}

/// Run `tcpx-bench core`.
pub fn run(args: &CoreArgs) -> Result<(), Box<dyn std::error::Error>> {
    let window = best_ns_per_op(args.ops, args.repeats, window_cycle);
    let ring1 = best_ns_per_op(args.ops, args.repeats, ring_same_thread);
    let ring2 = best_ns_per_op(args.ops, args.repeats, ring_two_threads);
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "core",
                "ops": args.ops,
                "repeats": args.repeats,
                "window_post_test_release_ns": window,
                "ring_push_pop_same_thread_ns": ring1,
                "ring_cross_thread_ns_per_item": ring2,
            })
        );
    } else {
        println!(
            "tcpx-bench core: {} ops, best of {}",
            args.ops, args.repeats
        );
        println!("{:<48} {:>10}", "operation", "ns/op");
        println!("{:<48} {:>10.2}", "window post+test+release cycle", window);
        println!("{:<48} {:>10.2}", "ring push+pop (same thread)", ring1);
        println!(
            "{:<48} {:>10.2}",
            "ring item, producer → consumer thread", ring2
        );
    }
    Ok(())
}
