//! `loopback --depth D`: D iterations in flight on every side at once ([`run_pipelined`]), each
//! with its own buffer. Iterations in flight never share a seed, and an iteration lands in a
//! receive buffer that does not hold its seed ([`choose_seed`], [`RecvBuffers::take`]): a
//! chunk that lands in another iteration's buffer, or never lands and leaves stale words
//! behind, fails the check, and no buffer needs poisoning (with several receivers a buffer is
//! poisoned when no seed fits: [`check::must_poison`]). Finished host buffers are checked by
//! the idle-priority check pool ([`check::CheckPool`]) while the next iterations land in the
//! spare buffers; a buffer is free again once its check is retired ([`retire`]).

use std::collections::VecDeque;
use std::time::Instant;

use serde_json::json;

use super::args::TransferArgs;
use super::report::{IterTime, Timed};
use super::side::Side;
use super::BoxError;
use crate::check;
use crate::cpu;
use tcpx::endpoint::TransferId;

/// `--depth D`: D iterations in flight on every side at once (`loopback`).
///
/// * A sender has D + 1 buffers, buffer s filled once before the run with the pattern of seed
///   s: a received word from another buffer, iteration or offset fails the check.
/// * A receiver has D + S buffers (S = `--spare-buffers`, by default one per check thread), all
///   poisoned first. Iteration i goes into the most recently checked free buffer (still in
///   cache) with a seed that no other iteration in flight has and that this buffer does not
///   hold ([`choose_seed`]; D + 1 seeds always leave one): a chunk that lands in another
///   iteration's buffer, or never lands and leaves stale words behind, fails the check, and no
///   buffer needs poisoning (with several receivers a buffer is poisoned when no seed fits:
///   [`check::must_poison`]). Once i completes on every side, the check pool
///   ([`check::CheckPool`]: by default one idle-priority thread per CPU) checks it against
///   its seed, and the buffer is free again. Checks finish in any order.
/// * Unverified runs skip the checks; GPU buffers are checked on this thread.
///
/// Returns one time per iteration: the interval between successive completions (their sum is
/// the wall time from the first post to the last completion); the report's rates are over
/// windows of D completions.
pub(super) fn run_pipelined(args: &TransferArgs, sides: &mut [Side]) -> Result<Timed, BoxError> {
    let verify_data = !args.no_verify;
    let (depth, checkers) = args.pipeline()?;
    let total = args.total_iters()?;
    // One seed per sender buffer: depth + 1 (`TransferArgs::buffers`).
    let nseeds = args.buffers(true)?;
    let host_checks = verify_data && sides.iter().all(|s| s.buffers[0].0.host().is_some());
    // Senders: each buffer's pattern and checksum, once. Receivers: poisoned (when verifying),
    // holding no seed.
    let mut sent_sums: Vec<Vec<u64>> = Vec::with_capacity(sides.len());
    for s in sides.iter_mut() {
        let mut sums = Vec::new();
        for (slot, (buf, _)) in s.buffers.iter_mut().enumerate() {
            // Unverified senders write their buffers too (see `Side::before`).
            if s.sending {
                sums.push(buf.fill(slot as u32)?);
            } else if verify_data {
                buf.poison()?;
            }
        }
        sent_sums.push(sums);
    }
    // Receive buffers: which seed each holds, the free ones (most recently freed last), and
    // their cells on the check board (`cells[c]` = side, buffer).
    let mut recv = Vec::with_capacity(sides.len());
    let (mut bufs, mut cells) = (Vec::new(), Vec::new());
    for (k, s) in sides.iter().enumerate() {
        let n = if s.sending { 0 } else { s.buffers.len() };
        recv.push(RecvBuffers {
            holds: vec![None; n],
            free: (0..n).collect(),
            first_cell: bufs.len(),
        });
        if host_checks && !s.sending {
            for (slot, (b, _)) in s.buffers.iter().enumerate() {
                bufs.push(b.host().ok_or("a GPU buffer on a check thread")?.clone());
                cells.push((k, slot));
            }
        }
    }
    let cpus = check::allowed_cpus();
    let receive_buffers = args.buffers(false)?;
    let mut poisoned = 0u64;
    let mut inflight: Vec<VecDeque<(usize, TransferId)>> = vec![VecDeque::new(); sides.len()];
    // The seed of every iteration in flight, oldest first.
    let mut seeds: VecDeque<u32> = VecDeque::with_capacity(depth as usize);
    let mut times = Vec::new();
    let cpu_start = cpu::Snapshot::take();
    let (cpu_end, threads) = std::thread::scope(|scope| -> Result<_, BoxError> {
        let threads = if host_checks { checkers as usize } else { 0 };
        let mut pool = check::CheckPool::start(scope, bufs, threads, &cpus, args.timeout)?;
        let (mut posted, mut completed) = (0u32, 0u32);
        let mut last = Instant::now();
        while completed < total {
            // Post while there is room in the pipeline and a free buffer on every side.
            while posted < total
                && (posted - completed) < depth
                && sides
                    .iter()
                    .zip(&recv)
                    .all(|(s, r)| s.sending || !r.free.is_empty())
            {
                let newest = sides
                    .iter()
                    .zip(&recv)
                    .filter(|(s, _)| !s.sending)
                    .map(|(_, r)| r.newest_holds());
                let seed = choose_seed(posted % nseeds, nseeds, &seeds, newest);
                seeds.push_back(seed);
                for (k, s) in sides.iter_mut().enumerate() {
                    // Sender buffer `seed` holds that seed's pattern.
                    let slot = if s.sending {
                        seed as usize
                    } else {
                        let r = &mut recv[k];
                        let slot = r.take(seed).ok_or("no free buffer")?;
                        if verify_data && check::must_poison(r.holds[slot], seed) {
                            s.buffers[slot].0.poison()?;
                            poisoned += 1;
                        }
                        r.holds[slot] = Some(seed);
                        slot
                    };
                    if let Some(sum) = sent_sums[k].get(slot) {
                        s.checksum = s.checksum.wrapping_add(*sum);
                    }
                    let id = s.post_slot(slot, args.size)?;
                    inflight[k].push_back((slot, id));
                }
                if posted == 0 {
                    last = Instant::now();
                }
                posted += 1;
            }
            if posted == completed {
                // Every receive buffer is being checked: wait for one.
                let (cell, sum) = pool.wait()?;
                retire(sides, &mut recv, cells[cell], sum)?;
                continue;
            }
            let iter = completed;
            let deadline = Instant::now() + args.timeout;
            for (s, q) in sides.iter_mut().zip(inflight.iter()) {
                let (_, id) = q.front().copied().ok_or("nothing in flight")?;
                s.ep.wait(id, deadline)
                    .map_err(|e| format!("GPU {} iteration {iter}: {e}", s.gpu))?;
            }
            let now = Instant::now();
            if iter >= args.warmup {
                times.push(IterTime {
                    iter: iter - args.warmup,
                    secs: (now - last).as_secs_f64(),
                });
            }
            last = now;
            completed += 1;
            let seed = seeds.pop_front().ok_or("nothing in flight")?;
            for (k, s) in sides.iter_mut().enumerate() {
                let (slot, _) = inflight[k].pop_front().ok_or("nothing in flight")?;
                if s.sending {
                    continue;
                }
                if host_checks {
                    pool.submit(recv[k].first_cell + slot, seed)?;
                } else {
                    if verify_data {
                        let gpu = s.gpu;
                        let sum = s.buffers[slot]
                            .0
                            .verify(seed)
                            .map_err(|e| format!("GPU {gpu}: {e}"))?;
                        s.checksum = s.checksum.wrapping_add(sum);
                    }
                    recv[k].free.push_back(slot);
                }
            }
            while let Some((cell, sum)) = pool.try_take() {
                retire(sides, &mut recv, cells[cell], sum)?;
            }
        }
        while pool.pending() > 0 {
            let (cell, sum) = pool.wait()?;
            retire(sides, &mut recv, cells[cell], sum)?;
        }
        // Before the check threads end, so their CPU time is in the report.
        Ok((cpu::Snapshot::take(), pool.threads()))
    })?;
    if !args.json {
        println!(
            "{total} iterations, {depth} in flight, {} (rates over windows of {depth} completions)",
            if host_checks {
                format!(
                    "checked on {threads} idle-priority threads{} with {} spare buffers, \
                     {poisoned} buffers poisoned before reuse",
                    if cpus.is_empty() {
                        ""
                    } else {
                        " spread over the CPUs"
                    },
                    receive_buffers.saturating_sub(depth)
                )
            } else if verify_data {
                "checked on this thread".to_owned()
            } else {
                "not checked".to_owned()
            }
        );
    }
    Ok(Timed {
        times,
        cpu: cpu::report(&cpu_start, &cpu_end),
        window: depth,
        pipeline: json!({
            "depth": depth,
            "check_threads": threads,
            "receive_buffers": receive_buffers,
            "poisoned": poisoned,
        }),
    })
}

/// A receiving side's buffers in [`run_pipelined`].
struct RecvBuffers {
    /// The seed each buffer holds (`None`: poison).
    holds: Vec<Option<u32>>,
    /// Buffers neither in flight nor being checked, the most recently freed last.
    free: VecDeque<usize>,
    /// The check cell of buffer 0 (buffer `i` is cell `first_cell + i`).
    first_cell: usize,
}

/// The seed of the next iteration, out of `seeds` (one per sender buffer), given the seeds of
/// the iterations in flight and what the buffers it will land in hold (`newest`: one per
/// receiving side, the seed the most recently freed buffer holds; `None` for poison or no
/// free buffer): the first of `preferred`,
/// `preferred + 1`, … (mod `seeds`) that no iteration in flight has and none of those buffers
/// holds. With `seeds` = depth + 1 and one receiver there always is one, so iterations in flight
/// never share a seed (a chunk of one landing in another's buffer fails the check) and no buffer
/// needs poisoning. Otherwise the first seed not in flight (the caller poisons a buffer that
/// holds it).
pub(super) fn choose_seed(
    preferred: u32,
    seeds: u32,
    in_flight: &VecDeque<u32>,
    newest: impl Iterator<Item = Option<u32>> + Clone,
) -> u32 {
    let rotation = (0..seeds)
        .map(|d| (preferred + d) % seeds)
        .filter(|seed| !in_flight.contains(seed));
    rotation
        .clone()
        .find(|&seed| newest.clone().all(|held| !check::must_poison(held, seed)))
        .or_else(|| rotation.clone().next())
        .unwrap_or(preferred)
}

impl RecvBuffers {
    /// The seed the most recently freed buffer holds (`None`: poison, or no buffer is free).
    fn newest_holds(&self) -> Option<u32> {
        self.free.back().and_then(|&b| self.holds[b])
    }

    /// A free buffer for seed `seed`: the most recently freed one that does not hold it (still
    /// in cache, no poison needed), else the most recently freed one.
    fn take(&mut self, seed: u32) -> Option<usize> {
        let i = (0..self.free.len())
            .rev()
            .find(|&i| !check::must_poison(self.holds[self.free[i]], seed))
            .unwrap_or(self.free.len().checked_sub(1)?);
        self.free.remove(i)
    }
}

/// Adds the checksum of side `k`'s buffer `slot` to the side and frees the buffer, or fails the
/// run.
fn retire(
    sides: &mut [Side],
    recv: &mut [RecvBuffers],
    (k, slot): (usize, usize),
    sum: Result<u64, String>,
) -> Result<(), BoxError> {
    let side = &mut sides[k];
    let sum = sum.map_err(|e| format!("GPU {}: {e}", side.gpu))?;
    side.checksum = side.checksum.wrapping_add(sum);
    recv[k].free.push_back(slot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_iteration_gets_a_seed_no_iteration_in_flight_has_and_its_buffer_does_not_hold() {
        fn newest(h: &[Option<u32>]) -> impl Iterator<Item = Option<u32>> + Clone + '_ {
            h.iter().copied()
        }
        let flying = |f: &[u32]| f.iter().copied().collect::<VecDeque<u32>>();
        // Nothing in flight, the buffer holds another seed or poison: the preferred one.
        assert_eq!(choose_seed(3, 9, &flying(&[]), newest(&[Some(1)])), 3);
        assert_eq!(choose_seed(3, 9, &flying(&[]), newest(&[None])), 3);
        // It holds the preferred seed: the next one, wrapping.
        assert_eq!(choose_seed(3, 9, &flying(&[]), newest(&[Some(3)])), 4);
        assert_eq!(choose_seed(2, 3, &flying(&[]), newest(&[Some(2)])), 0);
        // Seeds in flight are skipped: depth 2 (3 seeds), 0 in flight, the buffer holds 1.
        assert_eq!(choose_seed(0, 3, &flying(&[0]), newest(&[Some(1)])), 2);
        // Depth 8 (9 seeds), 7 in flight and the buffer holds the eighth: the ninth.
        let seven = [0, 1, 2, 3, 4, 5, 6];
        assert_eq!(choose_seed(0, 9, &flying(&seven), newest(&[Some(7)])), 8);
        // Two receivers: a seed neither holds, else one not in flight (to be poisoned).
        let two = [Some(1), Some(2)];
        assert_eq!(choose_seed(1, 4, &flying(&[0]), newest(&two)), 3);
        assert_eq!(choose_seed(1, 3, &flying(&[0]), newest(&two)), 1);
        // Senders only: the preferred seed.
        assert_eq!(choose_seed(5, 9, &flying(&[]), newest(&[])), 5);
    }

    #[test]
    fn a_receive_buffer_is_reused_for_another_seed_most_recent_first() {
        let mut r = RecvBuffers {
            holds: vec![Some(0), Some(1), None, Some(1)],
            free: VecDeque::from([0, 1, 2, 3]),
            first_cell: 0,
        };
        // Most recently freed (3) holds another seed: no poison needed.
        assert_eq!(r.take(0), Some(3));
        // 1 and 0 hold seed 1 / 0; for seed 1 the newest one that does not hold it is 2.
        assert_eq!(r.take(1), Some(2));
        assert_eq!(r.take(1), Some(0));
        // Only buffer 1 is left and it holds seed 1: taken anyway (the caller poisons it).
        assert!(check::must_poison(r.holds[1], 1));
        assert_eq!(r.take(1), Some(1));
        assert_eq!(r.take(1), None);
    }
}
