//! The data check: the pattern every sender writes, and the pool of check threads that verify
//! received buffers of `loopback --depth` on CPU time the transfer leaves idle.
//!
//! # Pattern
//!
//! Word `j` (8 bytes, little endian) of seed `s` is `j ^ ((s + 1) × K)` with `K` odd, so:
//! * a word at the wrong offset fails (its `j` differs);
//! * the words of two seeds below 256 differ at every offset, in the word's first byte already
//!   (`(s + 1) × K mod 256` is a bijection of `s mod 256`, `K` being odd) — so a buffer that
//!   still holds seed `a` fails a check against seed `b ≠ a` in every word, the last partial one
//!   included. That is what makes poisoning optional: a receive buffer reused for a different
//!   seed needs no poison for a chunk that never lands to fail ([`must_poison`]).
//!
//! # Check pool
//!
//! One check thread per CPU this process may run on (or `--check-threads`, then spread evenly),
//! each pinned to its CPU and running at `SCHED_IDLE` ([`idle_priority`]): whenever its CPU has
//! nothing else to run, even for a few microseconds between two socket wake-ups of a helper
//! thread, the check thread is already there to use it, and any transfer thread that wakes
//! preempts it at once. A few unpinned threads do not get those slices: the kernel does not pull
//! waiting tasks onto CPUs that only go idle briefly, so they sat runnable while the machine was
//! 25 % idle. A CPU without a check thread wastes its idle slices: with 16 MiB in flight one
//! thread per CPU moved 12–25 % more than one per two CPUs on the 2-core dev box, 2–3 % more on
//! the 16-core H200 host in session 4, with 64 MiB in flight (BENCHMARKS.md).
//!
//! Work goes through a board of cells, one per receive buffer, without a lock: the main thread
//! queues a cell (`FREE → QUEUED`), any check thread claims it (`QUEUED → CHECKING`, a CAS, so
//! exactly one does), verifies, stores the result and publishes it (`→ CHECKED`); the main thread
//! takes the result (`→ FREE`) and reuses the buffer. A check thread stuck behind a busy CPU holds
//! one buffer, never a queue of them. Idle check threads poll the board for [`POLL_FOR`] (spinning
//! and yielding, on idle CPU time only), then park until the main thread queues work. Every wait
//! has a deadline.
//!
//! Invariants:
//! * A cell's buffer is touched only by the thread that owns the cell's state: the main thread
//!   in `FREE` and `CHECKED`, the claiming check thread in `CHECKING`. Nothing allocates per check.
//! * Dropping the pool stops and unparks every check thread (the enclosing scope joins them).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, Scope, Thread};
use std::time::{Duration, Instant};

use tcpx::net::HostBuffer;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The byte buffers are overwritten with when they must not pass as received data; no seed
/// below 256 has a word that is all poison.
pub const POISON: u8 = 0xa5;

/// The word at 8-byte index `j` of seed `seed`.
pub fn pattern_word(seed: u32, j: u64) -> u64 {
    j ^ u64::from(seed)
        .wrapping_add(1)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// Writes the pattern of `seed`; returns its checksum.
pub fn fill(buf: &mut [u8], seed: u32) -> u64 {
    let mut sum = 0u64;
    let mut words = buf.chunks_exact_mut(8);
    let mut j = 0u64;
    for w in &mut words {
        let v = pattern_word(seed, j);
        w.copy_from_slice(&v.to_le_bytes());
        sum = sum.wrapping_add(v);
        j += 1;
    }
    let tail = words.into_remainder();
    let v = pattern_word(seed, j).to_le_bytes();
    tail.copy_from_slice(&v[..tail.len()]);
    sum.wrapping_add(tail.iter().map(|&b| u64::from(b)).sum::<u64>())
}

/// The little-endian word of 8 bytes `w` (inlined into every compiled version of [`scan`]).
#[inline(always)]
fn word(w: &[u8]) -> u64 {
    u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
}

/// The sum of the whole words of `buf` and the OR of their differences from the pattern of
/// `seed`. No early exit, so the loop vectorizes; compiled for AVX-512 and AVX2 as well, picked
/// at run time (on the H200 host's Xeons the SSE2 loop is compute-bound even from L2).
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2"))]
fn scan(buf: &[u8], seed: u32) -> (u64, u64) {
    let (mut sum, mut bad) = (0u64, 0u64);
    for (j, w) in buf.chunks_exact(8).enumerate() {
        let got = word(w);
        bad |= got ^ pattern_word(seed, j as u64);
        sum = sum.wrapping_add(got);
    }
    (sum, bad)
}

/// Checks the pattern of `seed`; returns the checksum, or where the first wrong byte is.
pub fn verify(buf: &[u8], seed: u32) -> Result<u64, String> {
    let words = buf.chunks_exact(8);
    let (sum, bad) = scan(buf, seed);
    if bad != 0 {
        // The slow search names the first wrong word.
        let (j, got) = buf
            .chunks_exact(8)
            .enumerate()
            .map(|(j, w)| (j as u64, word(w)))
            .find(|&(j, got)| got != pattern_word(seed, j))
            .unwrap_or((0, 0));
        return Err(format!(
            "seed {seed}: byte offset {}: got word {got:#018x}, expected {:#018x}",
            j * 8,
            pattern_word(seed, j)
        ));
    }
    let tail = words.remainder();
    let want = pattern_word(seed, (buf.len() / 8) as u64).to_le_bytes();
    if tail != &want[..tail.len()] {
        return Err(format!("seed {seed}: the last {} bytes differ", tail.len()));
    }
    Ok(sum.wrapping_add(tail.iter().map(|&b| u64::from(b)).sum::<u64>()))
}

/// Whether a receive buffer that holds `held` (`None`: poison or nothing yet) must be poisoned
/// before it receives `seed`: only when it holds that very seed, since stale words of any other
/// seed fail the check anyway (module docs). Seeds are below 256 (at most `MAX_IN_FLIGHT` buffers).
pub fn must_poison(held: Option<u32>, seed: u32) -> bool {
    held == Some(seed)
}

const FREE: u8 = 0;
const QUEUED: u8 = 1;
const CHECKING: u8 = 2;
const CHECKED: u8 = 3;

/// How long an idle check thread polls the board before it parks.
pub const POLL_FOR: Duration = Duration::from_millis(1);

/// One receive buffer's place on the board.
struct Cell {
    state: AtomicU8,
    seed: AtomicU32,
    buf: Arc<HostBuffer>,
    /// Written by the claiming check thread, taken by the main thread (never contended).
    result: Mutex<Option<Result<u64, String>>>,
}

struct Board {
    cells: Vec<Cell>,
    /// Per check thread: parked (or about to park) for lack of work.
    asleep: Vec<AtomicBool>,
    /// The main thread is parked in [`CheckPool::wait`].
    main_waiting: AtomicBool,
    main: Thread,
    stop: AtomicBool,
}

impl Board {
    fn claim(&self) -> Option<&Cell> {
        self.cells.iter().find(|c| {
            c.state.load(Ordering::Relaxed) == QUEUED
                && c.state
                    .compare_exchange(QUEUED, CHECKING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })
    }

    fn queued(&self) -> bool {
        self.cells
            .iter()
            .any(|c| c.state.load(Ordering::SeqCst) == QUEUED)
    }

    fn check(&self, cell: &Cell) {
        let seed = cell.seed.load(Ordering::Relaxed);
        let r = cell
            .buf
            .lock()
            .map_err(|e| e.to_string())
            .and_then(|b| verify(&b, seed));
        if let Ok(mut slot) = cell.result.lock() {
            *slot = Some(r);
        }
        cell.state.store(CHECKED, Ordering::SeqCst);
        if self.main_waiting.load(Ordering::SeqCst) {
            self.main.unpark();
        }
    }

    /// A check thread's life: claim and check cells; poll while recently busy; park when not.
    fn serve(&self, me: usize) {
        let mut idle_since: Option<Instant> = None;
        let mut polls = 0u32;
        while !self.stop.load(Ordering::Acquire) {
            if let Some(cell) = self.claim() {
                self.check(cell);
                idle_since = None;
                continue;
            }
            polls = polls.wrapping_add(1);
            if polls % 64 != 0 {
                std::hint::spin_loop();
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() < POLL_FOR {
                thread::yield_now();
                continue;
            }
            // Announce, then look once more: a cell queued in between is seen here, or its
            // poster sees the announcement and unparks us (both sides store, then load, SeqCst).
            self.asleep[me].store(true, Ordering::SeqCst);
            if !self.queued() && !self.stop.load(Ordering::SeqCst) {
                thread::park_timeout(Duration::from_millis(50));
            }
            self.asleep[me].store(false, Ordering::SeqCst);
            idle_since = None;
        }
    }
}

/// The check threads and their board (see the module docs).
pub struct CheckPool {
    board: Arc<Board>,
    threads: Vec<Thread>,
    /// Cells queued or being checked (not yet taken).
    pending: usize,
    timeout: Duration,
}

impl CheckPool {
    /// Starts `threads` check threads in `scope` over `bufs` (cell `i` is `bufs[i]`), pinned
    /// round-robin to `cpus` (none: not pinned). Answers that do not come within `timeout`
    /// fail [`CheckPool::wait`].
    pub fn start<'scope>(
        scope: &'scope Scope<'scope, '_>,
        bufs: Vec<Arc<HostBuffer>>,
        threads: usize,
        cpus: &[usize],
        timeout: Duration,
    ) -> Result<CheckPool, BoxError> {
        let board = Arc::new(Board {
            cells: bufs
                .into_iter()
                .map(|buf| Cell {
                    state: AtomicU8::new(FREE),
                    seed: AtomicU32::new(0),
                    buf,
                    result: Mutex::new(None),
                })
                .collect(),
            asleep: (0..threads).map(|_| AtomicBool::new(false)).collect(),
            main_waiting: AtomicBool::new(false),
            main: thread::current(),
            stop: AtomicBool::new(false),
        });
        let mut pool = CheckPool {
            board,
            threads: Vec::with_capacity(threads),
            pending: 0,
            timeout,
        };
        for me in 0..threads {
            let board = Arc::clone(&pool.board);
            let cpu = spread(cpus, me, threads);
            let spawned = thread::Builder::new()
                .name(format!("tcpx-check{me}"))
                .spawn_scoped(scope, move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    idle_priority();
                    board.serve(me);
                });
            // On error the pool drops here, which stops the threads already started.
            let handle = spawned.map_err(|e| format!("starting a check thread: {e}"))?;
            pool.threads.push(handle.thread().clone());
        }
        Ok(pool)
    }

    /// Check threads in the pool.
    pub fn threads(&self) -> usize {
        self.threads.len()
    }

    /// Cells queued or being checked.
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Queues cell `cell` for a check against `seed`. The cell must be free (taken back since
    /// its last check).
    pub fn submit(&mut self, cell: usize, seed: u32) -> Result<(), BoxError> {
        let c = self.board.cells.get(cell).ok_or("no such check cell")?;
        if c.state.load(Ordering::Acquire) != FREE {
            return Err("a buffer queued for a check twice".into());
        }
        c.seed.store(seed, Ordering::Relaxed);
        c.state.store(QUEUED, Ordering::SeqCst);
        self.pending += 1;
        for (t, asleep) in self.threads.iter().zip(&self.board.asleep) {
            if asleep.load(Ordering::SeqCst) {
                t.unpark();
            }
        }
        Ok(())
    }

    /// A finished check, if any: the cell and its result (the checksum, or what was wrong).
    pub fn try_take(&mut self) -> Option<(usize, Result<u64, String>)> {
        let (i, cell) = self
            .board
            .cells
            .iter()
            .enumerate()
            .find(|(_, c)| c.state.load(Ordering::Acquire) == CHECKED)?;
        let result = match cell.result.lock() {
            Ok(mut r) => r.take(),
            Err(_) => None,
        }
        .unwrap_or_else(|| Err("a check thread left no result".to_owned()));
        cell.state.store(FREE, Ordering::Release);
        self.pending -= 1;
        Some((i, result))
    }

    /// The next finished check, waiting up to the pool's timeout for it.
    pub fn wait(&mut self) -> Result<(usize, Result<u64, String>), BoxError> {
        if self.pending == 0 {
            return Err("waiting for a check while none is queued".into());
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            self.board.main_waiting.store(true, Ordering::SeqCst);
            let done = self.try_take();
            if let Some(done) = done {
                self.board.main_waiting.store(false, Ordering::SeqCst);
                return Ok(done);
            }
            let now = Instant::now();
            if now >= deadline {
                self.board.main_waiting.store(false, Ordering::SeqCst);
                return Err(format!(
                    "no check finished within {:?} ({} queued or running)",
                    self.timeout, self.pending
                )
                .into());
            }
            thread::park_timeout((deadline - now).min(Duration::from_millis(50)));
        }
    }
}

impl Drop for CheckPool {
    fn drop(&mut self) {
        self.board.stop.store(true, Ordering::SeqCst);
        for t in &self.threads {
            t.unpark();
        }
    }
}

/// The CPUs this process may run on (empty when they cannot be read).
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(e) => {
            tracing::debug!("cannot read the CPU affinity: {e}");
            Vec::new()
        }
    }
}

/// The CPU of check thread `me` of `threads`: spread evenly over `cpus` (8 threads on 16 CPUs
/// take every other one), round-robin when there are more threads than CPUs; `None` without
/// CPUs.
fn spread(cpus: &[usize], me: usize, threads: usize) -> Option<usize> {
    let n = cpus.len();
    (n > 0).then(|| {
        cpus[if threads <= n {
            me * n / threads
        } else {
            me % n
        }]
    })
}

/// Pins the calling thread to `cpu` (left unpinned where that fails).
fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(cpu)
        .and_then(|()| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        tracing::debug!("check thread not pinned to CPU {cpu}: {e}");
    }
}

/// Moves the calling thread to `SCHED_IDLE` (Linux): a check thread then runs only on CPU time
/// the transfer's own threads leave idle, so checking every byte does not slow the transfer it
/// checks (when checks fall behind, the receiver runs out of buffers and waits, and the freed
/// CPUs check). Where the policy cannot be set, the thread stays at normal priority.
fn idle_priority() {
    use thread_priority::{
        set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
        ThreadPriority, ThreadSchedulePolicy,
    };
    let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
    if let Err(e) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
        tracing::debug!("check thread stays at normal priority: {e:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_round_trips_and_catches_misplaced_bytes() {
        for len in [0usize, 1, 7, 8, 9, 4096, 4099] {
            let mut b = vec![0u8; len];
            let sum = fill(&mut b, 3);
            assert_eq!(verify(&b, 3), Ok(sum));
            if len > 0 {
                b[len / 2] ^= 1;
                assert!(verify(&b, 3).is_err());
            }
        }
        let mut a = vec![0u8; 64];
        fill(&mut a, 0);
        a.copy_within(0..8, 8); // a word in the wrong place
        assert!(verify(&a, 0).unwrap_err().contains("byte offset 8"));
    }

    #[test]
    fn every_word_of_another_seed_fails_so_reuse_needs_no_poison() {
        // What `must_poison` relies on: stale data of seed a fails a check against b ≠ a in
        // every word, the first byte already, for every length and every pair of seeds < 256.
        let n = 4096 + 5;
        let bufs: Vec<Vec<u8>> = (0..256u32)
            .map(|s| {
                let mut b = vec![0u8; n];
                fill(&mut b, s);
                b
            })
            .collect();
        for a in 0..256usize {
            for b in (0..256usize).filter(|&b| b != a) {
                for off in (0..n).step_by(8) {
                    assert_ne!(bufs[a][off], bufs[b][off], "seeds {a}, {b}, offset {off}");
                }
            }
        }
        for len in [1usize, 5, 8, 13, 4096] {
            assert!(verify(&bufs[7][..len], 8).is_err(), "length {len}");
        }
        assert!(must_poison(Some(3), 3));
        assert!(!must_poison(Some(3), 4));
        assert!(!must_poison(None, 0));
        // A fully poisoned buffer fails every seed.
        assert!((0..256).all(|s| verify(&[POISON; 64], s).is_err()));
    }

    fn filled(len: usize, seed: u32) -> Arc<HostBuffer> {
        let b = Arc::new(HostBuffer::new(len).unwrap());
        fill(&mut b.lock().unwrap(), seed);
        b
    }

    #[test]
    fn the_pool_checks_every_queued_buffer_once_and_reports_bad_ones() {
        let bufs: Vec<_> = (0..6).map(|i| filled(3 * 4096 + i, i as u32)).collect();
        let sums: Vec<u64> = bufs
            .iter()
            .enumerate()
            .map(|(i, b)| verify(&b.lock().unwrap(), i as u32).unwrap())
            .collect();
        thread::scope(|scope| {
            let mut pool =
                CheckPool::start(scope, bufs.clone(), 3, &[], Duration::from_secs(20)).unwrap();
            assert_eq!(pool.threads(), 3);
            for round in 0..50 {
                for i in 0..6 {
                    // Cell 5 is checked against the wrong seed: its answer must be an error.
                    let seed = if i == 5 { 4 } else { i as u32 };
                    pool.submit(i, seed).unwrap();
                }
                assert!(
                    pool.submit(0, 0).is_err(),
                    "a queued cell cannot be queued again"
                );
                let mut seen = [false; 6];
                while pool.pending() > 0 {
                    let (i, r) = pool.wait().unwrap();
                    assert!(!seen[i], "round {round}: cell {i} answered twice");
                    seen[i] = true;
                    match i {
                        5 => assert!(r.unwrap_err().contains("seed 4"), "round {round}"),
                        _ => assert_eq!(r, Ok(sums[i]), "round {round}, cell {i}"),
                    }
                }
                assert!(seen.iter().all(|&s| s));
            }
            assert!(pool.try_take().is_none());
            assert!(pool.wait().is_err(), "nothing queued: no wait");
        });
    }

    #[test]
    fn a_buffer_still_in_use_is_an_error_not_a_hang() {
        let buf = filled(4096, 0);
        thread::scope(|scope| {
            let mut pool =
                CheckPool::start(scope, vec![buf.clone()], 1, &[], Duration::from_secs(20))
                    .unwrap();
            let held = buf.lock().unwrap();
            pool.submit(0, 0).unwrap();
            let (i, r) = pool.wait().unwrap();
            drop(held);
            assert_eq!(i, 0);
            assert!(r.is_err());
        });
    }

    #[test]
    fn check_threads_spread_evenly_over_the_cpus() {
        let cpus: Vec<usize> = (10..26).collect();
        let on = |threads| -> Vec<usize> {
            (0..threads)
                .map(|me| spread(&cpus, me, threads).unwrap())
                .collect()
        };
        assert_eq!(on(8), (10..26).step_by(2).collect::<Vec<_>>());
        assert_eq!(on(16), cpus);
        assert_eq!(on(1), [10]);
        assert_eq!(on(3), [10, 15, 20]);
        assert_eq!(
            &on(18)[16..],
            [10, 11],
            "more threads than CPUs: round-robin"
        );
        assert_eq!(spread(&[], 0, 4), None);
    }

    #[test]
    fn the_vectorized_scan_finds_a_wrong_bit_in_any_word() {
        // The scan is compiled for several instruction sets: a flipped bit in any lane of any
        // vector, or in the tail, must fail, and the checksum must match the sender's.
        for len in [8 * 64 + 3, 8 * 67, 1000] {
            let mut b = vec![0u8; len];
            let sum = fill(&mut b, 9);
            assert_eq!(verify(&b, 9), Ok(sum));
            for at in 0..len {
                b[at] ^= 0x80;
                let e = verify(&b, 9).unwrap_err();
                assert!(
                    e.contains(&format!("byte offset {}", at / 8 * 8)) || at >= len / 8 * 8,
                    "length {len}, byte {at}: {e}"
                );
                b[at] ^= 0x80;
            }
        }
    }

    #[test]
    fn allowed_cpus_lists_at_least_the_current_one() {
        let cpus = allowed_cpus();
        assert!(!cpus.is_empty());
        if let Ok(c) = nix::sched::sched_getcpu() {
            assert!(cpus.contains(&c));
        }
    }
}
