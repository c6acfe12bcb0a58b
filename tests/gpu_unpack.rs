//! GPU tests of the unpack path (`tcpx::cuda`): the kernel against a CPU reference on random
//! layouts, every descriptor path, staging reuse across launches, rejection of corrupt chunks
//! before launch, the d2d / host variants, the C launcher.
//!
//! Compiled only with `--features cuda`; CI builds them (`cargo test --features cuda --no-run`)
//! and the lead runs the binary on the GPU machine (`scripts/gpu/unpack-check.sh`, also under
//! `compute-sanitizer --tool memcheck`). Without a GPU every test FAILS (no skipping): each one
//! starts by opening GPU 0.
//!
//! Destinations are poisoned before each launch, twice with different bytes, so a byte the
//! kernel should have written but did not is caught even when the source byte happens to equal
//! one poison value; bytes outside the chunks must keep the poison.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use tcpx::core::unpack::{FragmentError, LoadMeta, MAX_FRAGMENTS};
use tcpx::core::window::EventId;
use tcpx::cuda::{
    read_unpack_handle, vector_width, CudaBuffer, DescPath, DeviceDst, Gpu, Stream, UnpackConfig,
    UnpackDesc, UnpackError, UnpackImpl, Unpacker, INLINE_MAX, TCPX_UNPACK_ERR_NO_CONTEXT,
    TCPX_UNPACK_OK,
};

const POISON: [u8; 2] = [0xa5, 0x5a];

fn gpu() -> Arc<Gpu> {
    Gpu::new(0).unwrap_or_else(|e| {
        panic!("the GPU tests need GPU 0 and a CUDA 13 driver: {e}");
    })
}

/// xorshift64*: deterministic, seed printed in every failure message.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// A chunk of a test layout: its place in the destination buffer and its fragments.
#[derive(Clone, Debug)]
struct Chunk {
    dst_off: usize,
    len: u64,
    frags: Vec<LoadMeta>,
}

/// A random fragment length: mostly whole pages, often odd, sometimes longer than a piece.
fn frag_len(rng: &mut Rng) -> u32 {
    match rng.range(0, 9) {
        0..=3 => 4096,
        4..=6 => rng.range(1, 4096) as u32,
        7 => rng.range(1, 16) as u32,
        _ => rng.range(4097, 20_000) as u32,
    }
}

/// A source offset in `[0, pool - len]` with a random alignment 1 ..= 4096.
fn src_off(rng: &mut Rng, pool: usize, len: u32) -> u32 {
    let align = 1u64 << rng.range(0, 12);
    let max = (pool as u64 - u64::from(len)) / align;
    (rng.range(0, max) * align) as u32
}

/// Random chunks laid out one after another from `base` in a destination of `dst_len` bytes,
/// each at a random alignment, with at most `max_frags` fragments each and about
/// `budget` bytes in total.
fn random_chunks(
    rng: &mut Rng,
    pool: usize,
    base: usize,
    dst_len: usize,
    nchunks: usize,
    max_frags: usize,
    budget: usize,
) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut at = base;
    let per_chunk = budget / nchunks.max(1);
    for _ in 0..nchunks {
        // Start at a random alignment: 1 ..= 4096.
        let align = 1usize << rng.range(0, 12);
        at = at.next_multiple_of(4096) + (rng.range(0, 8) as usize) * align;
        let nfrags = match rng.range(0, 5) {
            0 => 1,
            1 => max_frags,
            _ => rng.range(1, max_frags as u64) as usize,
        };
        let mut frags = Vec::with_capacity(nfrags);
        let mut len = 0u64;
        for _ in 0..nfrags {
            let flen = frag_len(rng);
            if at + (len as usize) + flen as usize > dst_len || len as usize > per_chunk {
                break;
            }
            frags.push(LoadMeta {
                src_off: src_off(rng, pool, flen),
                len: flen,
                dst_off: len,
            });
            len += u64::from(flen);
        }
        if frags.is_empty() {
            break;
        }
        chunks.push(Chunk {
            dst_off: at,
            len,
            frags,
        });
        at += len as usize;
    }
    chunks
}

/// The destination after unpacking `chunks` from `pool` into a buffer poisoned with `poison`.
fn expected(pool: &[u8], dst_len: usize, poison: u8, chunks: &[Chunk]) -> Vec<u8> {
    let mut out = vec![poison; dst_len];
    for c in chunks {
        for f in &c.frags {
            let s = f.src_off as usize;
            let d = c.dst_off + f.dst_off as usize;
            out[d..d + f.len as usize].copy_from_slice(&pool[s..s + f.len as usize]);
        }
    }
    out
}

fn assert_same(got: &[u8], want: &[u8], chunks: &[Chunk], what: &str) {
    if got == want {
        return;
    }
    let i = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let place = chunks
        .iter()
        .enumerate()
        .find_map(|(ci, c)| {
            let rel = i.checked_sub(c.dst_off)? as u64;
            let fi = c
                .frags
                .iter()
                .position(|f| rel >= f.dst_off && rel < f.dst_off + u64::from(f.len))?;
            Some(format!("chunk {ci} fragment {fi} {:?}", c.frags[fi]))
        })
        .unwrap_or_else(|| "outside every chunk (an overwrite)".into());
    let bad = got.iter().zip(want).filter(|(a, b)| a != b).count();
    panic!(
        "{what}: {bad} bytes differ; first at byte {i} ({place}): got {:#04x}, want {:#04x}",
        got[i], want[i]
    );
}

/// A bounce pool of random bytes on the GPU, with its host copy.
struct Pool {
    buf: CudaBuffer,
    host: Vec<u8>,
}

fn pool(gpu: &Arc<Gpu>, len: usize, rng: &mut Rng) -> Pool {
    let buf = CudaBuffer::new(gpu, len).unwrap();
    let mut host = vec![0u8; buf.len()];
    rng.fill(&mut host);
    buf.copy_from_host(&host, 0).unwrap();
    Pool { buf, host }
}

fn push_all(unpacker: &mut Unpacker, pool: &Pool, dst: &CudaBuffer, chunks: &[Chunk]) {
    for (i, c) in chunks.iter().enumerate() {
        let d = DeviceDst::in_region(dst, c.dst_off, c.len as usize).unwrap();
        unpacker
            .push_chunk(&c.frags, pool.buf.device_ptr(), pool.buf.len() as u64, d)
            .unwrap_or_else(|e| panic!("push of chunk {i} failed: {e}"));
    }
}

fn finish(unpacker: &mut Unpacker, event: EventId, chunks: usize) {
    unpacker.wait_event(event).unwrap();
    assert!(unpacker.event_complete(event).unwrap());
    for _ in 0..chunks {
        unpacker.release_event(event).unwrap();
    }
    assert_eq!(
        unpacker.release_event(event),
        Err(UnpackError::UnknownEvent { event })
    );
}

/// Unpacks `chunks` twice (two poisons) with `imp` and checks the whole destination.
fn check_layout(
    unpacker: &mut Unpacker,
    imp: UnpackImpl,
    pool: &Pool,
    dst: &CudaBuffer,
    chunks: &[Chunk],
    what: &str,
) {
    for poison in POISON {
        dst.fill(poison).unwrap();
        push_all(unpacker, pool, dst, chunks);
        let event = unpacker
            .launch_with(imp)
            .unwrap()
            .expect("chunks were pushed");
        finish(unpacker, event, chunks.len());
        let mut got = vec![0u8; dst.len()];
        dst.copy_to_host(&mut got, 0).unwrap();
        let want = expected(&pool.host, dst.len(), poison, chunks);
        assert_same(&got, &want, chunks, &format!("{what}, poison {poison:#x}"));
    }
}

fn config(path: DescPath) -> UnpackConfig {
    let mut c = UnpackConfig::default();
    c.desc_path = path;
    c
}

#[test]
fn kernel_matches_the_cpu_reference_on_random_layouts() {
    let gpu = gpu();
    let mut rng = Rng::new(1);
    let pool = pool(&gpu, 16 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 40 << 20).unwrap();
    let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    let mut widths = std::collections::BTreeSet::new();
    for seed in 0..12u64 {
        let mut rng = Rng::new(100 + seed);
        let nchunks = rng.range(1, 12) as usize;
        let chunks = random_chunks(
            &mut rng,
            pool.buf.len(),
            0,
            dst.len(),
            nchunks,
            MAX_FRAGMENTS,
            24 << 20,
        );
        for c in &chunks {
            for f in &c.frags {
                widths.insert(vector_width(
                    pool.buf.device_ptr() + u64::from(f.src_off),
                    dst.device_ptr() + (c.dst_off as u64) + f.dst_off,
                ));
            }
        }
        check_layout(
            &mut unpacker,
            UnpackImpl::Kernel,
            &pool,
            &dst,
            &chunks,
            &format!("seed {seed}, {} chunks", chunks.len()),
        );
    }
    // The layouts exercised every vector width of the kernel.
    assert_eq!(widths.into_iter().collect::<Vec<_>>(), [1, 2, 4, 8, 16]);
    let stats = unpacker.stats();
    assert_eq!(stats.launches, 24);
    assert_eq!(stats.rejected_chunks, 0);
}

#[test]
fn every_descriptor_path_matches_the_reference() {
    let gpu = gpu();
    let mut rng = Rng::new(2);
    let pool = pool(&gpu, 8 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 24 << 20).unwrap();
    for path in [
        DescPath::Auto,
        DescPath::AutoCopy,
        DescPath::Mapped,
        DescPath::Copy,
    ] {
        let mut unpacker = Unpacker::new(&gpu, config(path)).unwrap();
        for seed in 0..6u64 {
            let mut rng = Rng::new(200 + seed);
            // Small batches (inline-sized) and large ones.
            // Small: at most 120 fragments and 124 KiB, so at most 151 descriptors (inline).
            let (nchunks, max_frags, budget) = if seed % 2 == 0 {
                (rng.range(1, 3) as usize, 40, 64 << 10)
            } else {
                (rng.range(2, 8) as usize, MAX_FRAGMENTS, 16 << 20)
            };
            let chunks = random_chunks(
                &mut rng,
                pool.buf.len(),
                0,
                dst.len(),
                nchunks,
                max_frags,
                budget,
            );
            check_layout(
                &mut unpacker,
                UnpackImpl::Kernel,
                &pool,
                &dst,
                &chunks,
                &format!("{path:?}, seed {seed}"),
            );
        }
        let s = unpacker.stats();
        match path {
            DescPath::Auto => {
                assert!(s.inline_launches > 0 && s.mapped_launches > 0 && s.copy_launches == 0)
            }
            DescPath::AutoCopy => {
                assert!(s.inline_launches > 0 && s.copy_launches > 0 && s.mapped_launches == 0)
            }
            DescPath::Mapped => assert_eq!(s.mapped_launches, s.launches),
            DescPath::Copy => assert_eq!(s.copy_launches, s.launches),
        }
    }
}

#[test]
fn inline_limit_boundary() {
    let gpu = gpu();
    let mut rng = Rng::new(3);
    let pool = pool(&gpu, 4 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 4 << 20).unwrap();
    let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    for n in [1, INLINE_MAX - 1, INLINE_MAX, INLINE_MAX + 1] {
        let frags: Vec<LoadMeta> = (0..n as u64)
            .map(|i| LoadMeta {
                src_off: ((i * 37 + 5) % n as u64 * 4096) as u32,
                len: 4096,
                dst_off: i * 4096,
            })
            .collect();
        let chunks = [Chunk {
            dst_off: 0,
            len: n as u64 * 4096,
            frags,
        }];
        check_layout(
            &mut unpacker,
            UnpackImpl::Kernel,
            &pool,
            &dst,
            &chunks,
            &format!("{n} descriptors"),
        );
    }
    let s = unpacker.stats();
    assert_eq!((s.inline_launches, s.mapped_launches), (6, 2));
}

#[test]
fn many_launches_in_flight_reuse_staging() {
    let gpu = gpu();
    let mut rng = Rng::new(4);
    let pool = pool(&gpu, 8 << 20, &mut rng);
    const AREA: usize = 2 << 20;
    const LAUNCHES: usize = 24;
    let dst = CudaBuffer::new(&gpu, AREA * LAUNCHES).unwrap();
    for path in [DescPath::Mapped, DescPath::Copy, DescPath::Auto] {
        let mut cfg = config(path);
        cfg.staging_slots = 2;
        let mut unpacker = Unpacker::new(&gpu, cfg).unwrap();
        for poison in POISON {
            dst.fill(poison).unwrap();
            let mut all = Vec::new();
            let mut in_flight: Vec<(EventId, usize)> = Vec::new();
            for l in 0..LAUNCHES {
                let mut rng = Rng::new(400 + l as u64);
                let chunks = random_chunks(
                    &mut rng,
                    pool.buf.len(),
                    l * AREA,
                    (l + 1) * AREA,
                    3,
                    600,
                    AREA - 3 * 8 * 4096,
                );
                for c in &chunks {
                    let d = DeviceDst::in_region(&dst, c.dst_off, c.len as usize).unwrap();
                    loop {
                        match unpacker.push_chunk(
                            &c.frags,
                            pool.buf.device_ptr(),
                            pool.buf.len() as u64,
                            d,
                        ) {
                            Ok(()) => break,
                            Err(UnpackError::StagingBusy) => {
                                // Both slots in flight: the oldest launch must finish first.
                                let (e, n) = in_flight.remove(0);
                                finish(&mut unpacker, e, n);
                            }
                            Err(e) => panic!("push failed: {e}"),
                        }
                    }
                }
                let e = unpacker.launch().unwrap().expect("chunks were pushed");
                in_flight.push((e, chunks.len()));
                all.extend(chunks);
            }
            for (e, n) in in_flight {
                finish(&mut unpacker, e, n);
            }
            assert_eq!(unpacker.free_events(), unpacker.config().events as usize);
            let mut got = vec![0u8; dst.len()];
            dst.copy_to_host(&mut got, 0).unwrap();
            let want = expected(&pool.host, dst.len(), poison, &all);
            assert_same(&got, &want, &all, &format!("{path:?}, poison {poison:#x}"));
        }
    }
}

#[test]
fn the_unpacker_moves_to_another_thread() {
    let gpu = gpu();
    let mut rng = Rng::new(5);
    let pool = pool(&gpu, 4 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 8 << 20).unwrap();
    let chunks = random_chunks(&mut rng, pool.buf.len(), 0, dst.len(), 4, 512, 6 << 20);
    let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    std::thread::spawn(move || {
        // A fresh thread has no current context: the unpacker makes it current.
        check_layout(
            &mut unpacker,
            UnpackImpl::Kernel,
            &pool,
            &dst,
            &chunks,
            "other thread",
        );
    })
    .join()
    .unwrap();
}

#[test]
fn d2d_and_host_variants_equal_the_kernel() {
    let gpu = gpu();
    let mut rng = Rng::new(6);
    let pool = pool(&gpu, 8 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 16 << 20).unwrap();
    let mut kernel = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    let mut host_cfg = UnpackConfig::default();
    host_cfg.imp = UnpackImpl::Host;
    host_cfg.host_scratch_bytes = 1 << 20; // several rounds for the larger layouts
    let mut host = Unpacker::new(&gpu, host_cfg).unwrap();
    for seed in 0..4u64 {
        let mut rng = Rng::new(600 + seed);
        let nchunks = rng.range(1, 5) as usize;
        let chunks = random_chunks(
            &mut rng,
            pool.buf.len(),
            0,
            dst.len(),
            nchunks,
            MAX_FRAGMENTS,
            8 << 20,
        );
        let what = format!("seed {seed}");
        check_layout(&mut kernel, UnpackImpl::Kernel, &pool, &dst, &chunks, &what);
        let mut by_kernel = vec![0u8; dst.len()];
        dst.copy_to_host(&mut by_kernel, 0).unwrap();
        check_layout(&mut kernel, UnpackImpl::D2d, &pool, &dst, &chunks, &what);
        let mut by_d2d = vec![0u8; dst.len()];
        dst.copy_to_host(&mut by_d2d, 0).unwrap();
        check_layout(&mut host, UnpackImpl::Host, &pool, &dst, &chunks, &what);
        let mut by_host = vec![0u8; dst.len()];
        dst.copy_to_host(&mut by_host, 0).unwrap();
        assert!(by_kernel == by_d2d && by_d2d == by_host, "{what}");
    }
    // The default unpacker has no host scratch.
    let d = DeviceDst::in_region(&dst, 0, 4096).unwrap();
    let frag = [LoadMeta {
        src_off: 0,
        len: 4096,
        dst_off: 0,
    }];
    kernel
        .push_chunk(&frag, pool.buf.device_ptr(), pool.buf.len() as u64, d)
        .unwrap();
    assert_eq!(
        kernel.launch_with(UnpackImpl::Host),
        Err(UnpackError::NoHostScratch)
    );
    assert_eq!(kernel.pending_chunks(), 1, "the batch is kept");
    let e = kernel.launch().unwrap().unwrap();
    finish(&mut kernel, e, 1);
}

#[test]
fn none_variant_copies_nothing() {
    let gpu = gpu();
    let mut rng = Rng::new(7);
    let pool = pool(&gpu, 1 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 1 << 20).unwrap();
    dst.fill(POISON[0]).unwrap();
    let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    let chunks = random_chunks(&mut rng, pool.buf.len(), 0, dst.len(), 2, 64, 512 << 10);
    push_all(&mut unpacker, &pool, &dst, &chunks);
    let e = unpacker.launch_with(UnpackImpl::None).unwrap().unwrap();
    finish(&mut unpacker, e, chunks.len());
    let mut got = vec![0u8; dst.len()];
    dst.copy_to_host(&mut got, 0).unwrap();
    assert!(got.iter().all(|&b| b == POISON[0]));
}

/// A destination that no launch of `unpacker` may touch: every refused chunk targets it.
fn assert_untouched(unpacker: &Unpacker, buf: &CudaBuffer, poison: u8) {
    unpacker.stream().synchronize().unwrap();
    let mut got = vec![0u8; buf.len()];
    buf.copy_to_host(&mut got, 0).unwrap();
    assert!(
        got.iter().all(|&b| b == poison),
        "a refused chunk was written"
    );
}

#[test]
fn corrupt_fragments_are_rejected_before_launch() {
    let gpu = gpu();
    let mut rng = Rng::new(8);
    let pool = pool(&gpu, 1 << 20, &mut rng);
    let good_dst = CudaBuffer::new(&gpu, 64 << 10).unwrap();
    let bad_dst = CudaBuffer::new(&gpu, 64 << 10).unwrap();
    good_dst.fill(POISON[0]).unwrap();
    bad_dst.fill(POISON[1]).unwrap();
    let pool_len = pool.buf.len() as u64;
    let f = |src_off: u32, len: u32, dst_off: u64| LoadMeta {
        src_off,
        len,
        dst_off,
    };
    let too_many = vec![f(0, 1, 0); MAX_FRAGMENTS + 1];
    // (fragments, chunk length, the error)
    let cases: Vec<(Vec<LoadMeta>, u64, FragmentError)> = vec![
        (
            too_many,
            (MAX_FRAGMENTS + 1) as u64,
            FragmentError::TooMany {
                count: MAX_FRAGMENTS as u64 + 1,
            },
        ),
        (
            vec![f(0, 4096, 0), f(4096, 0, 4096), f(8192, 4096, 4096)],
            8192,
            FragmentError::Empty { index: 1 },
        ),
        (
            vec![f(0, 4096, 0), f(pool_len as u32 - 100, 4096, 4096)],
            8192,
            FragmentError::SrcOutOfPool {
                index: 1,
                src_off: pool_len as u32 - 100,
                len: 4096,
                pool_len,
            },
        ),
        (
            vec![f(0, 4096, 0), f(4096, 4096, 4097)],
            8192,
            FragmentError::DstOutOfChunk {
                index: 1,
                dst_off: 4097,
                len: 4096,
                chunk_len: 8192,
            },
        ),
        (
            vec![f(0, 4096, 0), f(4096, 4096, 4095), f(8192, 1, 8191)],
            8192,
            FragmentError::Overlap {
                index: 1,
                dst_off: 4095,
                prev_end: 4096,
            },
        ),
        (
            vec![f(0, 4096, 0), f(4096, 4095, 4097)],
            8192,
            FragmentError::LengthMismatch {
                sum: 8191,
                chunk_len: 8192,
            },
        ),
    ];
    let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    let nkinds = cases.len() as u64;
    for (frags, chunk_len, want) in cases {
        let d = DeviceDst::in_region(&bad_dst, 0, chunk_len as usize).unwrap();
        assert_eq!(
            unpacker.push_chunk(&frags, pool.buf.device_ptr(), pool_len, d),
            Err(UnpackError::Fragment(want))
        );
        assert_eq!(
            (unpacker.pending_chunks(), unpacker.pending_descriptors()),
            (0, 0)
        );
        assert_eq!(unpacker.launch(), Ok(None), "nothing may be launched");
    }
    assert_eq!(unpacker.stats().rejected_chunks, nkinds);
    assert_eq!(unpacker.stats().launches, 0);
    assert_untouched(&unpacker, &bad_dst, POISON[1]);

    // A bounce pool whose end overflows the address space.
    let d = DeviceDst::in_region(&bad_dst, 0, 4096).unwrap();
    assert_eq!(
        unpacker.push_chunk(&[f(0, 4096, 0)], u64::MAX - 10, 1 << 20, d),
        Err(UnpackError::AddressOverflow)
    );

    // A good chunk, then a bad one, in one batch: only the good one is unpacked.
    let good = Chunk {
        dst_off: 4096,
        len: 8192,
        frags: vec![f(12_288, 4096, 0), f(0, 4096, 4096)],
    };
    push_all(&mut unpacker, &pool, &good_dst, std::slice::from_ref(&good));
    let d = DeviceDst::in_region(&bad_dst, 0, 8192).unwrap();
    assert!(matches!(
        unpacker.push_chunk(
            &[f(0, 4096, 0), f(4096, 4096, 4000)],
            pool.buf.device_ptr(),
            pool_len,
            d
        ),
        Err(UnpackError::Fragment(FragmentError::Overlap { .. }))
    ));
    assert_eq!(unpacker.pending_chunks(), 1);
    let e = unpacker.launch().unwrap().unwrap();
    finish(&mut unpacker, e, 1);
    let mut got = vec![0u8; good_dst.len()];
    good_dst.copy_to_host(&mut got, 0).unwrap();
    let chunks = [good];
    let want = expected(&pool.host, good_dst.len(), POISON[0], &chunks);
    assert_same(&got, &want, &chunks, "good chunk beside a refused one");
    assert_untouched(&unpacker, &bad_dst, POISON[1]);

    // A host region is refused as a destination.
    let host = tcpx::net::HostBuffer::new(4096).unwrap();
    assert_eq!(
        DeviceDst::in_region(&host, 0, 4096),
        Err(UnpackError::NotDeviceMemory)
    );
}

#[test]
fn limits_are_typed_errors_and_keep_the_batch() {
    let gpu = gpu();
    let mut rng = Rng::new(9);
    let pool = pool(&gpu, 2 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 2 << 20).unwrap();
    let pages = |n: u64, at: u64| -> Chunk {
        Chunk {
            dst_off: at as usize,
            len: n * 4096,
            frags: (0..n)
                .map(|i| LoadMeta {
                    src_off: ((n - 1 - i) * 4096) as u32,
                    len: 4096,
                    dst_off: i * 4096,
                })
                .collect(),
        }
    };
    let mut cfg = UnpackConfig::default();
    cfg.max_descriptors = 100;
    cfg.max_chunks = 3;
    cfg.events = 1;
    let mut unpacker = Unpacker::new(&gpu, cfg).unwrap();
    let push = |u: &mut Unpacker, c: &Chunk| {
        let d = DeviceDst::in_region(&dst, c.dst_off, c.len as usize).unwrap();
        u.push_chunk(&c.frags, pool.buf.device_ptr(), pool.buf.len() as u64, d)
    };
    dst.fill(POISON[0]).unwrap();
    let big = pages(128, 0);
    assert_eq!(
        push(&mut unpacker, &big),
        Err(UnpackError::StagingFull {
            needed: 128,
            free: 100
        })
    );
    let a = pages(64, 0);
    let b = pages(64, 64 * 4096);
    let c = pages(16, 128 * 4096);
    let d = pages(4, 144 * 4096);
    let e = pages(4, 148 * 4096);
    push(&mut unpacker, &a).unwrap();
    assert_eq!(
        push(&mut unpacker, &b),
        Err(UnpackError::StagingFull {
            needed: 64,
            free: 36
        })
    );
    push(&mut unpacker, &c).unwrap();
    push(&mut unpacker, &d).unwrap();
    assert_eq!(
        push(&mut unpacker, &e),
        Err(UnpackError::TooManyChunks { max: 3 })
    );
    assert_eq!(
        (unpacker.pending_chunks(), unpacker.pending_descriptors()),
        (3, 84)
    );
    assert_eq!(unpacker.free_descriptors(), 16);
    let first = unpacker.launch().unwrap().unwrap();
    // One event only: the next launch must wait until it is released.
    push(&mut unpacker, &e).unwrap();
    assert_eq!(
        unpacker.launch(),
        Err(UnpackError::NoFreeEvent { capacity: 1 })
    );
    assert_eq!(unpacker.pending_chunks(), 1, "the batch is kept");
    finish(&mut unpacker, first, 3);
    let second = unpacker.launch().unwrap().unwrap();
    finish(&mut unpacker, second, 1);
    let mut got = vec![0u8; dst.len()];
    dst.copy_to_host(&mut got, 0).unwrap();
    let chunks = [a, c, d, e];
    let want = expected(&pool.host, dst.len(), POISON[0], &chunks);
    assert_same(&got, &want, &chunks, "after limit errors");
}

#[test]
fn empty_chunks_get_an_event() {
    let gpu = gpu();
    let dst = CudaBuffer::new(&gpu, 4096).unwrap();
    let pool = CudaBuffer::new(&gpu, 4096).unwrap();
    let mut unpacker = Unpacker::new(&gpu, UnpackConfig::default()).unwrap();
    assert_eq!(unpacker.launch(), Ok(None));
    for _ in 0..2 {
        let d = DeviceDst::in_region(&dst, 0, 0).unwrap();
        unpacker
            .push_chunk(&[], pool.device_ptr(), pool.len() as u64, d)
            .unwrap();
    }
    let e = unpacker.launch().unwrap().expect("two size-0 chunks");
    finish(&mut unpacker, e, 2);
    let e = unpacker.launch_empty().unwrap();
    finish(&mut unpacker, e, 1);
    assert_eq!(unpacker.stats().descriptors, 0);
}

#[test]
fn device_handle_is_read_from_device_memory() {
    let gpu = gpu();
    let buf = CudaBuffer::new(&gpu, 4096).unwrap();
    let words: [u64; 3] = [0x7f00_1234_5000, 0x7e00_0000_0000, u64::MAX];
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    buf.copy_from_host(&bytes, 128).unwrap();
    let ptr = (buf.device_ptr() + 128) as usize as *const core::ffi::c_void;
    let h = read_unpack_handle(&gpu, ptr).unwrap();
    assert_eq!(h.meta as usize as u64, words[0]);
    assert_eq!(h.bounce_buf as usize as u64, words[1]);
    assert_eq!(h.head, u64::MAX);
}

#[test]
fn cuda_buffers_are_page_aligned_regions() {
    use tcpx::net::{MemKind, Region};
    let gpu = gpu();
    for len in [0usize, 1, 4095, 4096, 4097, 3 << 20] {
        let b = CudaBuffer::new(&gpu, len).unwrap();
        assert_eq!(b.device_ptr() % 4096, 0);
        assert_eq!(b.len(), len.max(1).next_multiple_of(4096));
        assert_eq!(Region::len(&b), b.len());
        assert_eq!(b.kind(), MemKind::Cuda);
        assert_eq!(b.as_ptr() as usize as u64, b.device_ptr());
        assert!(b.access_state().is_none());
        let mut zeros = vec![1u8; b.len()];
        b.copy_to_host(&mut zeros, 0).unwrap();
        assert!(zeros.iter().all(|&x| x == 0), "zeroed at allocation");
    }
    let b = CudaBuffer::new(&gpu, 4096).unwrap();
    assert!(b.copy_from_host(&[1, 2, 3], 4094).is_err());
    assert!(b.copy_to_host(&mut [0; 2], usize::MAX).is_err());
}

#[test]
fn c_launcher_unpacks_device_descriptors() {
    let gpu = gpu();
    let mut rng = Rng::new(10);
    let pool = pool(&gpu, 2 << 20, &mut rng);
    let dst = CudaBuffer::new(&gpu, 2 << 20).unwrap();
    dst.fill(POISON[0]).unwrap();
    let chunks = random_chunks(&mut rng, pool.buf.len(), 0, dst.len(), 3, 256, 1 << 20);
    // Descriptors built by hand, as a C++ caller would (absolute addresses, any length).
    let mut descs = Vec::new();
    for c in &chunks {
        for f in &c.frags {
            descs.push(UnpackDesc {
                src: pool.buf.device_ptr() + u64::from(f.src_off),
                dst: dst.device_ptr() + c.dst_off as u64 + f.dst_off,
                len: f.len,
                flags: 0,
            });
        }
    }
    let bytes: Vec<u8> = descs
        .iter()
        .flat_map(|d| {
            let mut b = Vec::with_capacity(24);
            b.extend_from_slice(&d.src.to_le_bytes());
            b.extend_from_slice(&d.dst.to_le_bytes());
            b.extend_from_slice(&d.len.to_le_bytes());
            b.extend_from_slice(&d.flags.to_le_bytes());
            b
        })
        .collect();
    let table = CudaBuffer::new(&gpu, bytes.len()).unwrap();
    table.copy_from_host(&bytes, 0).unwrap();
    let stream = Stream::new(&gpu).unwrap();
    let table_ptr = table.device_ptr() as usize as *const UnpackDesc;
    // SAFETY: the descriptors are in device memory and name ranges inside `pool` and `dst`,
    // whose chunks do not overlap; nothing touches `dst` until the stream is synchronised.
    let rc = unsafe {
        tcpx::cuda::tcpx_unpack_launch(stream.as_raw().cast(), table_ptr, descs.len() as u32)
    };
    assert_eq!(rc, TCPX_UNPACK_OK);
    stream.synchronize().unwrap();
    let mut got = vec![0u8; dst.len()];
    dst.copy_to_host(&mut got, 0).unwrap();
    let want = expected(&pool.host, dst.len(), POISON[0], &chunks);
    assert_same(&got, &want, &chunks, "C launcher");

    // A thread without a current context is told so.
    let table_addr = table_ptr as usize;
    let rc = std::thread::spawn(move || {
        let table_ptr = table_addr as *const UnpackDesc;
        // SAFETY: refused before any launch (no context on this thread).
        unsafe { tcpx::cuda::tcpx_unpack_launch(core::ptr::null_mut(), table_ptr, 1) }
    })
    .join()
    .unwrap();
    assert_eq!(rc, TCPX_UNPACK_ERR_NO_CONTEXT);
}
