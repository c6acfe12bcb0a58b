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
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

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

/// How long one thread of the two-thread ring bench waits for the other to make room or push
/// an item before it gives up: generous, a healthy run waits nanoseconds.
const STALL: Duration = Duration::from_secs(30);

fn best_ns_per_op(
    ops: u64,
    repeats: u32,
    mut f: impl FnMut(u64) -> Result<(), String>,
) -> Result<f64, String> {
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f(ops)?;
        best = best.min(t.elapsed().as_nanos() as f64 / ops.max(1) as f64);
    }
    Ok(best)
}

fn window_cycle(ops: u64) -> Result<(), String> {
    let mut w: TcpxWindow<u64> = TcpxWindow::new(WindowKind::Send);
    for i in 0..8 {
        let _ = w.post(i, i as u32, 4096);
    }
    for i in 8..ops.saturating_add(8) {
        let _ = black_box(w.post(black_box(i), i as u32, 4096));
        if let Some(e) = w.next_to_test() {
            let _ = black_box(w.mark_done(e.request));
        }
        let _ = black_box(w.release_oldest());
    }
    Ok(())
}

fn ring_same_thread(ops: u64) -> Result<(), String> {
    let ring: Ring<u64, 256> = Ring::new();
    let (mut p, mut c) = Ring::split(&ring).map_err(|e| e.to_string())?;
    for i in 0..128 {
        let _ = p.push(i);
    }
    for i in 0..ops {
        let _ = black_box(p.push(black_box(i)));
        black_box(c.pop());
    }
    Ok(())
}

/// Spin until `attempt` succeeds. The clock is read only after the first attempt fails, and
/// then once every 1024 attempts, so a bench that never waits never reads it. Fails when no
/// attempt succeeds within `stall`, or when one more attempt fails after `give_up` says the
/// other thread is gone (its flag is read with `Acquire`, so that attempt sees all it did).
fn spin_until<T>(
    what: &str,
    stall: Duration,
    mut attempt: impl FnMut() -> Option<T>,
    give_up: impl Fn() -> bool,
) -> Result<T, String> {
    if let Some(v) = attempt() {
        return Ok(v);
    }
    let deadline = Instant::now() + stall;
    loop {
        for _ in 0..1024 {
            std::hint::spin_loop();
            if let Some(v) = attempt() {
                return Ok(v);
            }
        }
        if give_up() {
            return attempt().ok_or_else(|| format!("{what}: the other thread stopped"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: nothing for {stall:?}"));
        }
    }
}

/// Sets its flag when dropped (`Release`): a thread's end, even by panic.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

fn ring_two_threads(ops: u64) -> Result<(), String> {
    let ring: Arc<Ring<u64, 256>> = Arc::new(Ring::new());
    let (mut p, mut c) = Ring::split(ring).map_err(|e| e.to_string())?;
    // The consumer stopped (set by it) / the producer ended, however it did (set by a guard).
    let stop = Arc::new(AtomicBool::new(false));
    let producer_done = Arc::new(AtomicBool::new(false));
    let (stopped, done) = (stop.clone(), SetOnDrop(producer_done.clone()));
    let producer = thread::Builder::new()
        .name("tcpx-core-bench-producer".into())
        .spawn(move || -> Result<(), String> {
            let _done = done;
            for i in 0..ops {
                let mut v = Some(i);
                spin_until(
                    "ring producer waiting for room",
                    STALL,
                    || match p.push(v.take()?) {
                        Ok(()) => Some(()),
                        Err(back) => {
                            v = Some(back);
                            None
                        }
                    },
                    || stopped.load(Ordering::Acquire),
                )?;
            }
            Ok(())
        })
        .map_err(|e| format!("spawning the ring producer thread: {e}"))?;
    let mut consumed = Ok(());
    for _ in 0..ops {
        match spin_until(
            "ring consumer waiting for an item",
            STALL,
            || c.pop(),
            || producer_done.load(Ordering::Acquire),
        ) {
            Ok(v) => {
                black_box(v);
            }
            Err(e) => {
                consumed = Err(e);
                break;
            }
        }
    }
    // On an error the producer must not wait out its own deadline.
    stop.store(true, Ordering::Release);
    let produced = producer
        .join()
        .map_err(|_| "the ring producer thread panicked".to_owned())?;
    produced.and(consumed)
}

/// Run `tcpx-bench core`.
pub fn run(args: &CoreArgs) -> Result<(), Box<dyn std::error::Error>> {
    let window = best_ns_per_op(args.ops, args.repeats, window_cycle)?;
    let ring1 = best_ns_per_op(args.ops, args.repeats, ring_same_thread)?;
    let ring2 = best_ns_per_op(args.ops, args.repeats, ring_two_threads)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_thread_ring_bench_moves_every_item() {
        assert_eq!(ring_two_threads(10_000), Ok(()));
        assert_eq!(ring_two_threads(0), Ok(()));
    }

    #[test]
    fn a_wait_that_never_succeeds_fails_at_its_deadline() {
        let e = spin_until("waiting", Duration::from_millis(1), || None::<()>, || false);
        assert_eq!(e, Err("waiting: nothing for 1ms".to_owned()));
    }

    #[test]
    fn a_wait_for_a_thread_that_stopped_fails() {
        let e = spin_until("waiting", STALL, || None::<()>, || true);
        assert_eq!(e, Err("waiting: the other thread stopped".to_owned()));
    }

    #[test]
    fn a_wait_succeeds_once_its_attempt_does() {
        let mut n = 0;
        let got = spin_until(
            "waiting",
            STALL,
            || {
                n += 1;
                (n > 5000).then_some(n)
            },
            || false,
        );
        assert_eq!(got, Ok(5001));
    }
}
