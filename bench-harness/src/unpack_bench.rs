//! `tcpx-bench unpack` (feature `cuda`): the GPU unpack against its anchors in DESIGN.md §5.
//!
//! * **bandwidth**: a batch of `--batch-mib` MiB of 4 KiB fragments (chunks of `--chunk-kib`,
//!   every page taken from a random page of the source "bounce pool": scattered sources,
//!   contiguous destination), unpacked by ONE launch, against one `cuMemcpyDtoDAsync` of the same
//!   bytes, timed in the same run, interleaved rep by rep. Device time from CUDA events around
//!   the launch (descriptor delivery included) and around the copy; host time from just before
//!   the launch until the event is seen complete. Target: kernel ≥ 90 % of the copy.
//! * **latency**: one 512 KiB chunk (128 fragments) from `launch()` until `event_complete`
//!   reports it done (host clock, spinning), against the empty kernel's launch → event, reps
//!   interleaved. Target: ≤ 1.5 × the empty kernel.
//!
//! Each descriptor path (kernel parameters / mapped pinned staging / H2D-copied staging) and
//! the d2d ablation get their own row. Every unpack is checked byte for byte against the
//! expected layout before it is timed; a mismatch fails the run. Medians are reported (and
//! p10 / p90); GB/s uses GB = 10^9 bytes.

use std::error::Error;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tcpx::core::unpack::LoadMeta;
use tcpx::core::window::EventId;
use tcpx::cuda::{
    CudaBuffer, DescPath, DeviceDst, Gpu, Stream, StreamTimer, UnpackConfig, UnpackImpl, Unpacker,
};

type BoxError = Box<dyn Error + Send + Sync>;

const PAGE: usize = 4096;
/// The anchors of DESIGN.md §5.
const BANDWIDTH_TARGET: f64 = 0.90;
const LATENCY_TARGET: f64 = 1.5;

/// Arguments of `tcpx-bench unpack`.
#[derive(clap::Args, Debug)]
pub struct UnpackArgs {
    /// GPU ordinal.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Batch sizes of the bandwidth test, in MiB of 4 KiB fragments.
    #[arg(long, value_delimiter = ',', default_value = "64,256")]
    pub batch_mib: Vec<usize>,
    /// Chunk size in the bandwidth batches, KiB (a multiple of 4).
    #[arg(long, default_value_t = 512)]
    pub chunk_kib: usize,
    /// Timed repetitions per bandwidth row (after 3 untimed ones).
    #[arg(long, default_value_t = 30)]
    pub reps: u32,
    /// Timed repetitions per latency row (after 100 untimed ones).
    #[arg(long, default_value_t = 2000)]
    pub latency_reps: u32,
    /// Seed of the page shuffle and the data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// Median, p10, p90 of `v` (sorted in place).
fn percentiles(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.1), at(0.9))
}

/// A bounce pool of random bytes and its host copy.
struct Pool {
    buf: CudaBuffer,
    host: Vec<u8>,
}

fn make_pool(gpu: &std::sync::Arc<Gpu>, bytes: usize, rng: &mut Rng) -> Result<Pool, BoxError> {
    let buf = CudaBuffer::new(gpu, bytes)?;
    let mut host = vec![0u8; buf.len()];
    for w in host.chunks_mut(8) {
        let v = rng.next().to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
    buf.copy_from_host(&host, 0)?;
    Ok(Pool { buf, host })
}

/// Chunks of `frags_per_chunk` 4 KiB pages covering `dst` from 0; destination page k comes
/// from pool page `perm[k]`.
fn page_chunks(perm: &[usize], frags_per_chunk: usize) -> Vec<Vec<LoadMeta>> {
    perm.chunks(frags_per_chunk)
        .map(|pages| {
            pages
                .iter()
                .enumerate()
                .map(|(i, &p)| LoadMeta {
                    src_off: (p * PAGE) as u32,
                    len: PAGE as u32,
                    dst_off: (i * PAGE) as u64,
                })
                .collect()
        })
        .collect()
}

fn push_chunks(
    unpacker: &mut Unpacker,
    pool: &Pool,
    dst: &CudaBuffer,
    chunks: &[Vec<LoadMeta>],
) -> Result<(), BoxError> {
    let mut at = 0;
    for frags in chunks {
        let len = frags.len() * PAGE;
        let d = DeviceDst::in_region(dst, at, len)?;
        unpacker.push_chunk(frags, pool.buf.device_ptr(), pool.buf.len() as u64, d)?;
        at += len;
    }
    Ok(())
}

/// Unpacks once with `imp` into a poisoned `dst` and checks every byte of the first
/// `perm.len()` pages.
fn verify(
    unpacker: &mut Unpacker,
    imp: UnpackImpl,
    pool: &Pool,
    dst: &CudaBuffer,
    chunks: &[Vec<LoadMeta>],
    perm: &[usize],
    what: &str,
) -> Result<(), BoxError> {
    dst.fill(0xee)?;
    push_chunks(unpacker, pool, dst, chunks)?;
    let e = unpacker.launch_with(imp)?.ok_or("nothing to launch")?;
    unpacker.wait_event(e)?;
    for _ in 0..chunks.len() {
        unpacker.release_event(e)?;
    }
    let mut got = vec![0u8; perm.len() * PAGE];
    dst.copy_to_host(&mut got, 0)?;
    for (k, &p) in perm.iter().enumerate() {
        if got[k * PAGE..(k + 1) * PAGE] != pool.host[p * PAGE..(p + 1) * PAGE] {
            return Err(
                format!("{what}: destination page {k} (from pool page {p}) is wrong").into(),
            );
        }
    }
    Ok(())
}

/// How long a measured launch may take before the bench gives up on it (a hung kernel or a
/// lost event is an error, not a hang).
const LAUNCH_DEADLINE: Duration = Duration::from_secs(10);

/// Spin on `event_complete` until it reports done. The clock is read first after 1024 queries
/// (far longer than a measured launch takes) and every 1024 after, so the latency measured
/// around this wait does not include a clock read of its own.
fn spin_until_complete(u: &Unpacker, e: EventId) -> Result<(), BoxError> {
    let mut since: Option<Instant> = None;
    let mut spins = 0u32;
    while !u.event_complete(e)? {
        spins = spins.wrapping_add(1);
        if spins % 1024 == 0 {
            let start = *since.get_or_insert_with(Instant::now);
            if start.elapsed() > LAUNCH_DEADLINE {
                return Err(format!(
                    "an unpack launch did not complete within {LAUNCH_DEADLINE:?}"
                )
                .into());
            }
        }
        std::hint::spin_loop();
    }
    Ok(())
}

/// One measured unpack launch: (device ms, host µs from launch to event seen complete).
fn timed_unpack(
    unpacker: &mut Unpacker,
    timer: &StreamTimer,
    pool: &Pool,
    dst: &CudaBuffer,
    chunks: &[Vec<LoadMeta>],
) -> Result<(f64, f64, f64), BoxError> {
    let t_push = Instant::now();
    push_chunks(unpacker, pool, dst, chunks)?;
    let push_ns = t_push.elapsed().as_nanos() as f64 / chunks.len() as f64;
    timer.start(unpacker.stream())?;
    let t0 = Instant::now();
    let e = unpacker.launch()?.ok_or("nothing to launch")?;
    timer.stop(unpacker.stream())?;
    spin_until_complete(unpacker, e)?;
    let host_us = t0.elapsed().as_secs_f64() * 1e6;
    for _ in 0..chunks.len() {
        unpacker.release_event(e)?;
    }
    Ok((f64::from(timer.elapsed_ms()?), host_us, push_ns))
}

struct BandwidthRow {
    batch_bytes: usize,
    path: &'static str,
    dev_ms: Vec<f64>,
    host_us: Vec<f64>,
    push_ns: Vec<f64>,
}

fn bandwidth(gpu: &std::sync::Arc<Gpu>, args: &UnpackArgs) -> Result<Vec<Value>, BoxError> {
    let mut out = Vec::new();
    let frags_per_chunk = (args.chunk_kib * 1024 / PAGE).max(1);
    for &mib in &args.batch_mib {
        let bytes = mib.max(1) << 20;
        let pages = bytes / PAGE;
        let mut rng = Rng(args.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let pool = make_pool(gpu, bytes, &mut rng)?;
        let dst = CudaBuffer::new(gpu, bytes)?;
        let mut perm: Vec<usize> = (0..pages).collect();
        rng.shuffle(&mut perm);
        let chunks = page_chunks(&perm, frags_per_chunk);
        let mut rows = Vec::new();
        let mut unpackers = Vec::new();
        for (path, name) in [
            (DescPath::Mapped, "kernel, mapped staging"),
            (DescPath::Copy, "kernel, H2D-copied staging"),
        ] {
            let mut cfg = UnpackConfig::default();
            cfg.desc_path = path;
            cfg.max_descriptors = pages;
            cfg.max_chunks = chunks.len();
            cfg.staging_slots = 2;
            let mut u = Unpacker::new(gpu, cfg)?;
            verify(
                &mut u,
                UnpackImpl::Kernel,
                &pool,
                &dst,
                &chunks,
                &perm,
                name,
            )?;
            unpackers.push(u);
            rows.push(BandwidthRow {
                batch_bytes: bytes,
                path: name,
                dev_ms: Vec::new(),
                host_us: Vec::new(),
                push_ns: Vec::new(),
            });
        }
        let stream = Stream::new(gpu)?;
        let timer = StreamTimer::new(gpu)?;
        let mut d2d_ms = Vec::new();
        let mut d2d_host_us = Vec::new();
        for rep in 0..args.reps + 3 {
            for (u, row) in unpackers.iter_mut().zip(rows.iter_mut()) {
                let (ms, us, push) = timed_unpack(u, &timer, &pool, &dst, &chunks)?;
                if rep >= 3 {
                    row.dev_ms.push(ms);
                    row.host_us.push(us);
                    row.push_ns.push(push);
                }
            }
            timer.start(&stream)?;
            let t0 = Instant::now();
            stream.copy(&dst, 0, &pool.buf, 0, bytes)?;
            timer.stop(&stream)?;
            let ms = f64::from(timer.elapsed_ms()?);
            let us = t0.elapsed().as_secs_f64() * 1e6;
            if rep >= 3 {
                d2d_ms.push(ms);
                d2d_host_us.push(us);
            }
        }
        let (d2d_med, _, _) = percentiles(&mut d2d_ms);
        let (d2d_host_med, _, _) = percentiles(&mut d2d_host_us);
        let gbps = |b: usize, ms: f64| b as f64 / (ms * 1e-3) / 1e9;
        let d2d_gbps = gbps(bytes, d2d_med);
        out.push(json!({
            "batch_bytes": bytes,
            "path": "cuMemcpyDtoDAsync (baseline)",
            "dev_ms_median": d2d_med,
            "dev_gbps_median": d2d_gbps,
            "host_us_median": d2d_host_med,
            "host_gbps_median": bytes as f64 / (d2d_host_med * 1e-6) / 1e9,
        }));
        for mut row in rows {
            let (ms, ms10, ms90) = percentiles(&mut row.dev_ms);
            let (us, _, _) = percentiles(&mut row.host_us);
            let (push, _, _) = percentiles(&mut row.push_ns);
            let ratio = d2d_med / ms;
            out.push(json!({
                "batch_bytes": row.batch_bytes,
                "path": row.path,
                "chunks": chunks.len(),
                "fragments": pages,
                "dev_ms_median": ms,
                "dev_ms_p10": ms10,
                "dev_ms_p90": ms90,
                "dev_gbps_median": gbps(row.batch_bytes, ms),
                "host_us_median": us,
                "host_gbps_median": row.batch_bytes as f64 / (us * 1e-6) / 1e9,
                "push_ns_per_chunk_median": push,
                "ratio_to_d2d": ratio,
                "host_ratio_to_d2d": d2d_host_med / us,
                "target": BANDWIDTH_TARGET,
                "meets_target": ratio >= BANDWIDTH_TARGET,
            }));
        }
    }
    Ok(out)
}

/// A latency row: how to launch one rep.
#[derive(Clone, Copy)]
enum Lat {
    Empty,
    Unpack(usize, UnpackImpl),
}

fn latency(gpu: &std::sync::Arc<Gpu>, args: &UnpackArgs) -> Result<Value, BoxError> {
    const CHUNK: usize = 512 << 10;
    let frags = CHUNK / PAGE;
    let mut rng = Rng(args
        .seed
        .wrapping_add(77)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        | 1);
    let pool = make_pool(gpu, 64 << 20, &mut rng)?;
    let dst = CudaBuffer::new(gpu, CHUNK)?;
    let mut all: Vec<usize> = (0..pool.buf.len() / PAGE).collect();
    rng.shuffle(&mut all);
    let perm = all[..frags].to_vec();
    let chunks = page_chunks(&perm, frags);
    let mut unpackers = Vec::new();
    for path in [DescPath::Auto, DescPath::Mapped, DescPath::Copy] {
        let mut cfg = UnpackConfig::default();
        cfg.desc_path = path;
        unpackers.push(Unpacker::new(gpu, cfg)?);
    }
    let rows: [(&str, Lat); 5] = [
        ("empty kernel (baseline)", Lat::Empty),
        (
            "kernel, descriptors in parameters",
            Lat::Unpack(0, UnpackImpl::Kernel),
        ),
        ("kernel, mapped staging", Lat::Unpack(1, UnpackImpl::Kernel)),
        (
            "kernel, H2D-copied staging",
            Lat::Unpack(2, UnpackImpl::Kernel),
        ),
        (
            "d2d: 128 x cuMemcpyDtoDAsync",
            Lat::Unpack(0, UnpackImpl::D2d),
        ),
    ];
    for (name, lat) in rows {
        if let Lat::Unpack(i, imp) = lat {
            verify(&mut unpackers[i], imp, &pool, &dst, &chunks, &perm, name)?;
        }
    }
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    let mut launch_us: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for rep in 0..args.latency_reps + 100 {
        for (r, &(_, lat)) in rows.iter().enumerate() {
            let (u, e, t0, t_launch) = match lat {
                Lat::Empty => {
                    let u = &mut unpackers[0];
                    let t0 = Instant::now();
                    let e = u.launch_empty()?;
                    (u, e, t0, t0.elapsed())
                }
                Lat::Unpack(i, imp) => {
                    let u = &mut unpackers[i];
                    push_chunks(u, &pool, &dst, &chunks)?;
                    let t0 = Instant::now();
                    let e = u.launch_with(imp)?.ok_or("nothing to launch")?;
                    (u, e, t0, t0.elapsed())
                }
            };
            spin_until_complete(u, e)?;
            let us = t0.elapsed().as_secs_f64() * 1e6;
            u.release_event(e)?;
            if rep >= 100 {
                samples[r].push(us);
                launch_us[r].push(t_launch.as_secs_f64() * 1e6);
            }
        }
    }
    let mut out = Vec::new();
    let mut empty_med = f64::NAN;
    for (r, &(name, lat)) in rows.iter().enumerate() {
        let (med, p10, p90) = percentiles(&mut samples[r]);
        let (call, _, _) = percentiles(&mut launch_us[r]);
        if matches!(lat, Lat::Empty) {
            empty_med = med;
        }
        let ratio = med / empty_med;
        out.push(json!({
            "path": name,
            "us_median": med,
            "us_p10": p10,
            "us_p90": p90,
            "launch_call_us_median": call,
            "ratio_to_empty": ratio,
        }));
    }
    let inline_ratio = out
        .get(1)
        .and_then(|v| v["ratio_to_empty"].as_f64())
        .unwrap_or(f64::NAN);
    Ok(json!({
        "chunk_bytes": CHUNK,
        "fragments": frags,
        "rows": out,
        "target": LATENCY_TARGET,
        "meets_target": inline_ratio <= LATENCY_TARGET,
    }))
}

/// Run `tcpx-bench unpack`.
pub fn run(args: &UnpackArgs) -> Result<(), BoxError> {
    if args.chunk_kib == 0 || args.chunk_kib % 4 != 0 || args.chunk_kib > 4096 {
        return Err("--chunk-kib must be a multiple of 4 in 4..=4096".into());
    }
    let gpu = Gpu::new(args.gpu)?;
    let bw = bandwidth(&gpu, args)?;
    let lat = latency(&gpu, args)?;
    let report = json!({
        "bench": "unpack",
        "gpu": gpu.name(),
        "gpu_ordinal": gpu.ordinal(),
        "sm_count": gpu.sm_count(),
        "reps": args.reps,
        "latency_reps": args.latency_reps,
        "verified": true,
        "bandwidth": bw,
        "latency": lat,
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!(
        "tcpx-bench unpack on {} ({} SMs): every unpack verified; medians",
        gpu.name(),
        gpu.sm_count()
    );
    println!();
    println!(
        "bandwidth: scattered 4 KiB pages → contiguous, one launch per batch (target ≥ {:.0} % of D2D)",
        BANDWIDTH_TARGET * 100.0
    );
    println!(
        "{:>9}  {:<30} {:>10} {:>9} {:>8} {:>10} {:>9}",
        "batch", "path", "dev ms", "dev GB/s", "vs D2D", "host GB/s", "push ns"
    );
    for row in &bw {
        let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
        let ratio = row["ratio_to_d2d"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |r| format!("{:.1} %", r * 100.0));
        let push = row["push_ns_per_chunk_median"]
            .as_f64()
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.0}"));
        println!(
            "{:>6} MiB  {:<30} {:>10.4} {:>9.1} {:>8} {:>10.1} {:>9}",
            row["batch_bytes"].as_u64().unwrap_or(0) >> 20,
            row["path"].as_str().unwrap_or(""),
            f("dev_ms_median"),
            f("dev_gbps_median"),
            ratio,
            f("host_gbps_median"),
            push,
        );
    }
    println!();
    println!(
        "latency: one 512 KiB chunk (128 fragments), launch → event seen complete (target ≤ {LATENCY_TARGET}× empty)"
    );
    println!(
        "{:<36} {:>9} {:>9} {:>9} {:>12} {:>8}",
        "path", "µs p50", "µs p10", "µs p90", "launch µs", "× empty"
    );
    if let Some(rows) = lat["rows"].as_array() {
        for row in rows {
            let f = |k: &str| row[k].as_f64().unwrap_or(f64::NAN);
            println!(
                "{:<36} {:>9.2} {:>9.2} {:>9.2} {:>12.2} {:>8.2}",
                row["path"].as_str().unwrap_or(""),
                f("us_median"),
                f("us_p10"),
                f("us_p90"),
                f("launch_call_us_median"),
                f("ratio_to_empty"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffles_are_permutations() {
        let mut rng = Rng(12345);
        let mut v: Vec<usize> = (0..1000).collect();
        rng.shuffle(&mut v);
        assert_ne!(v, (0..1000).collect::<Vec<_>>());
        v.sort_unstable();
        assert_eq!(v, (0..1000).collect::<Vec<_>>());
    }

    #[test]
    fn chunks_cover_the_destination_in_order() {
        let perm = vec![5, 0, 3, 1, 4];
        let chunks = page_chunks(&perm, 2);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0][1].src_off, 0);
        assert_eq!(chunks[1][0].src_off, 3 * 4096);
        assert_eq!(chunks[1][1].dst_off, 4096);
        assert_eq!(chunks[2].len(), 1);
        for c in &chunks {
            let lens: u64 = c.iter().map(|f| u64::from(f.len)).sum();
            assert!(tcpx::core::unpack::validate_fragments(c, 6 * 4096, lens).is_ok());
        }
    }

    #[test]
    fn percentiles_of_samples() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentiles(&mut v), (3.0, 1.0, 5.0));
        assert!(percentiles(&mut []).0.is_nan());
    }
}
