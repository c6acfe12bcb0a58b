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

/// How a waiting thread of the ring bench gives up. Each wait counts its failed attempts in a
/// local and calls [`Patience::check`] every [`CHECK_EVERY`] of them, which fails once the
/// other thread is gone (`give_up`, read with `Acquire`) or `stall` has passed since the wait's
/// first check. The measured loops are otherwise the plain spin loops they were: this bench
/// measures a handoff of a few nanoseconds, and any work on its success path (a clock read,
/// even two stores per item) shifts the producer/consumer balance it depends on several-fold.
struct Patience<'a> {
    what: &'static str,
    stall: Duration,
    since: Instant,
    give_up: &'a AtomicBool,
}

/// Failed attempts between two [`Patience::check`]s.
const CHECK_EVERY: u32 = 4096;

impl<'a> Patience<'a> {
    fn new(what: &'static str, stall: Duration, give_up: &'a AtomicBool) -> Self {
        Patience {
            what,
            stall,
            since: Instant::now(),
            give_up,
        }
    }

    /// A wait has failed `failed` attempts in a row (a multiple of [`CHECK_EVERY`]).
    #[cold]
    fn check(&mut self, failed: u32) -> Result<(), String> {
        if self.give_up.load(Ordering::Acquire) {
            return Err(format!("{}: the other thread stopped", self.what));
        }
        let now = Instant::now();
        if failed == CHECK_EVERY {
            self.since = now; // this wait's first check
        } else if now - self.since > self.stall {
            return Err(format!("{}: nothing for {:?}", self.what, self.stall));
        }
        Ok(())
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
            let mut patience = Patience::new("ring producer waiting for room", STALL, &stopped);
            for i in 0..ops {
                let mut v = i;
                let mut failed = 0u32;
                while let Err(back) = p.push(v) {
                    v = back;
                    std::hint::spin_loop();
                    failed = failed.wrapping_add(1);
                    if failed % CHECK_EVERY == 0 {
                        patience.check(failed)?;
                    }
                }
            }
            Ok(())
        })
        .map_err(|e| format!("spawning the ring producer thread: {e}"))?;
    let mut patience = Patience::new("ring consumer waiting for an item", STALL, &producer_done);
    let mut consumed = Ok(());
    let (mut got, mut failed) = (0, 0u32);
    while got < ops {
        match c.pop() {
            Some(v) => {
                black_box(v);
                got += 1;
                failed = 0;
            }
            None => {
                std::hint::spin_loop();
                failed = failed.wrapping_add(1);
                if failed % CHECK_EVERY == 0 {
                    if let Err(e) = patience.check(failed) {
                        // Items pushed before the producer ended are visible now: take them.
                        if c.pop().is_some_and(|v| black_box(v) == v) {
                            got += 1;
                            failed = 0;
                            continue;
                        }
                        consumed = Err(e);
                        break;
                    }
                }
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
        let gone = AtomicBool::new(false);
        let mut patience = Patience::new("waiting", Duration::from_millis(1), &gone);
        assert_eq!(patience.check(CHECK_EVERY), Ok(()));
        let mut failed = CHECK_EVERY;
        let e = loop {
            failed += CHECK_EVERY;
            if let Err(e) = patience.check(failed) {
                break e;
            }
        };
        assert_eq!(e, "waiting: nothing for 1ms");
    }

    #[test]
    fn a_wait_for_a_thread_that_stopped_fails() {
        let gone = AtomicBool::new(true);
        let mut patience = Patience::new("waiting", STALL, &gone);
        assert_eq!(
            patience.check(CHECK_EVERY),
            Err("waiting: the other thread stopped".to_owned())
        );
    }

    #[test]
    fn each_wait_gets_its_own_stall_time() {
        let gone = AtomicBool::new(false);
        let mut patience = Patience::new("waiting", Duration::from_millis(1), &gone);
        assert_eq!(patience.check(CHECK_EVERY), Ok(()));
        std::thread::sleep(Duration::from_millis(5));
        // A new wait's first check starts its clock again, however long the last one took;
        // its later checks count from there.
        assert_eq!(patience.check(CHECK_EVERY), Ok(()));
        std::thread::sleep(Duration::from_millis(5));
        assert!(patience.check(2 * CHECK_EVERY).is_err());
    }
}
