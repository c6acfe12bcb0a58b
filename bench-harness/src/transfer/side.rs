//! One side of one GPU pair ([`Side`]): its endpoint, connection and buffers ([`Buf`], in host
//! or GPU memory), the lock-step loop of a `--depth 1` run ([`run_iterations`]: every side
//! posts, then all are waited for) and the end-of-run exchange with the peer ([`finish`],
//! [`compare_done`]). Outside the timed region a verifying sender writes the pattern of each
//! iteration and a receiver poisons its buffer with a byte no pattern word is made of, so a
//! chunk that never lands fails the check; both sides' checksums must then match (when the
//! data was verified).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::args::{Mem, TransferArgs};
use super::report::{gbps, IterTime, Timed};
use super::BoxError;
use crate::check::{fill, verify, POISON};
use crate::cpu;
use tcpx::core::codec::Done;
use tcpx::endpoint::{BufferId, Connection, Endpoint, TransferId};
use tcpx::net::HostBuffer;

/// The buffer one side sends from or receives into.
pub(super) enum Buf {
    Host(Arc<HostBuffer>),
    /// GPU memory; the pattern goes through a host staging copy (outside the timed region).
    #[cfg(feature = "cuda")]
    Gpu {
        buf: Arc<tcpx::cuda::CudaBuffer>,
        staging: Vec<u8>,
    },
}

impl Buf {
    fn region(&self) -> Arc<dyn tcpx::net::Region> {
        match self {
            Buf::Host(b) => b.clone(),
            #[cfg(feature = "cuda")]
            Buf::Gpu { buf, .. } => buf.clone(),
        }
    }

    pub(super) fn host(&self) -> Option<&Arc<HostBuffer>> {
        match self {
            Buf::Host(b) => Some(b),
            #[cfg(feature = "cuda")]
            Buf::Gpu { .. } => None,
        }
    }

    /// Write the pattern of `iter`; its checksum.
    pub(super) fn fill(&mut self, iter: u32) -> Result<u64, BoxError> {
        match self {
            Buf::Host(b) => Ok(fill(&mut b.lock()?, iter)),
            #[cfg(feature = "cuda")]
            Buf::Gpu { buf, staging } => {
                let sum = fill(staging, iter);
                buf.copy_from_host(staging, 0)?;
                Ok(sum)
            }
        }
    }

    /// Overwrite with a byte no pattern word is made of, so a chunk that never lands fails.
    pub(super) fn poison(&mut self) -> Result<(), BoxError> {
        match self {
            Buf::Host(b) => b.lock()?.fill(POISON),
            #[cfg(feature = "cuda")]
            Buf::Gpu { buf, .. } => buf.fill(POISON)?,
        }
        Ok(())
    }

    /// Check the pattern of `iter`; its checksum.
    pub(super) fn verify(&mut self, iter: u32) -> Result<u64, String> {
        match self {
            Buf::Host(b) => verify(&b.lock().map_err(|e| e.to_string())?, iter),
            #[cfg(feature = "cuda")]
            Buf::Gpu { buf, staging } => {
                buf.copy_to_host(staging, 0).map_err(|e| e.to_string())?;
                verify(staging, iter)
            }
        }
    }
}

/// One side of one GPU pair: its endpoint, connection and buffer.
pub(super) struct Side {
    pub(super) gpu: u32,
    pub(super) ep: Endpoint,
    pub(super) conn: Connection,
    /// [`TransferArgs::buffers`] of them: iteration i uses `buffers[i % len]`, except in a
    /// pipelined run, which picks a seed (sender buffer) and a receive buffer per iteration.
    pub(super) buffers: Vec<(Buf, BufferId)>,
    pub(super) sending: bool,
    pub(super) checksum: u64,
}

impl Side {
    pub(super) fn new(
        args: &TransferArgs,
        gpu: u32,
        ep: Endpoint,
        conn: Connection,
        size: u64,
    ) -> Result<Self, BoxError> {
        let mut ep = ep;
        let len = usize::try_from(size)?;
        let sending = conn.direction() == tcpx::endpoint::Direction::Send;
        let mut buffers = Vec::new();
        for _ in 0..args.buffers(sending)? {
            let buffer = match args.mem {
                Mem::Host => Buf::Host(Arc::new(HostBuffer::new(len)?)),
                Mem::Gpu => gpu_buffer(&ep, len)?,
            };
            let id = ep.register(buffer.region())?;
            buffers.push((buffer, id));
        }
        Ok(Self {
            gpu,
            ep,
            conn,
            buffers,
            sending,
            checksum: 0,
        })
    }

    fn slot(&mut self, iter: u32) -> &mut (Buf, BufferId) {
        let n = self.buffers.len();
        &mut self.buffers[iter as usize % n]
    }

    fn before(&mut self, iter: u32, verify_data: bool) -> Result<(), BoxError> {
        if !verify_data {
            // Unverified senders still write each buffer once: a never-written buffer maps the
            // kernel's zero page, and sending from it is a copy out of one cache-hot page.
            if self.sending && (iter as usize) < self.buffers.len() {
                self.slot(iter).0.fill(iter)?;
            }
            return Ok(());
        }
        if self.sending {
            let sum = self.slot(iter).0.fill(iter)?;
            self.checksum = self.checksum.wrapping_add(sum);
        } else {
            self.slot(iter).0.poison()?;
        }
        Ok(())
    }

    fn post(&mut self, iter: u32, size: u64) -> Result<TransferId, BoxError> {
        let n = self.buffers.len();
        self.post_slot(iter as usize % n, size)
    }

    pub(super) fn post_slot(&mut self, slot: usize, size: u64) -> Result<TransferId, BoxError> {
        let buf = self.buffers[slot].1;
        Ok(self.ep.post(self.conn.id(), buf, 0, size)?)
    }

    fn after(&mut self, iter: u32, verify_data: bool) -> Result<(), BoxError> {
        if !self.sending && verify_data {
            let gpu = self.gpu;
            let sum = self
                .slot(iter)
                .0
                .verify(iter)
                .map_err(|e| format!("GPU {gpu}: {e}"))?;
            self.checksum = self.checksum.wrapping_add(sum);
        }
        Ok(())
    }
}

#[cfg(feature = "cuda")]
fn gpu_buffer(ep: &Endpoint, len: usize) -> Result<Buf, BoxError> {
    let cuda = ep
        .config()
        .cuda
        .as_ref()
        .ok_or("--mem gpu needs the endpoint's GPU")?;
    Ok(Buf::Gpu {
        buf: Arc::new(tcpx::cuda::CudaBuffer::new(&cuda.gpu, len)?),
        staging: vec![0; len],
    })
}

#[cfg(not(feature = "cuda"))]
fn gpu_buffer(_ep: &Endpoint, _len: usize) -> Result<Buf, BoxError> {
    Err("--mem gpu needs a build with `--features cuda`".into())
}

/// GPU pairs among `sides`: the receiving sides, or the sending ones when this process only
/// sends.
fn pair_count(sides: &[Side]) -> u64 {
    let recv = sides.iter().filter(|s| !s.sending).count();
    (if recv > 0 { recv } else { sides.len() }).max(1) as u64
}

/// Run `iters` warm-up + timed iterations over all `sides` at once (every side posts, then all
/// are waited for); `sync` runs between iterations (a bootstrap barrier for multi-process runs).
pub(super) fn run_iterations(
    args: &TransferArgs,
    sides: &mut [Side],
    mut sync: impl FnMut(&mut [Side], u32) -> Result<(), BoxError>,
) -> Result<Timed, BoxError> {
    let verify_data = !args.no_verify;
    let total = args.total_iters()?;
    let mut times = Vec::new();
    let mut last_report = Instant::now();
    let mut usage = cpu::Usage::default();
    for iter in 0..total {
        for s in sides.iter_mut() {
            s.before(iter, verify_data)?;
        }
        sync(sides, iter)?;
        let deadline = Instant::now() + args.timeout;
        let cpu_before = (iter >= args.warmup).then(cpu::Snapshot::take);
        let t = Instant::now();
        let mut ids = Vec::with_capacity(sides.len());
        for s in sides.iter_mut() {
            ids.push(s.post(iter, args.size)?);
        }
        for (s, id) in sides.iter_mut().zip(ids) {
            s.ep.wait(id, deadline)
                .map_err(|e| format!("GPU {} iteration {iter}: {e}", s.gpu))?;
        }
        let secs = t.elapsed().as_secs_f64();
        if let Some(before) = &cpu_before {
            usage.add(before, &cpu::Snapshot::take());
        }
        for s in sides.iter_mut() {
            s.after(iter, verify_data)?;
        }
        if iter >= args.warmup {
            let it = IterTime {
                iter: iter - args.warmup,
                secs,
            };
            if !args.json {
                let pairs = pair_count(sides);
                println!(
                    "iter {:>4}  {:>10.3} ms  {:>8.2} GB/s{}",
                    it.iter,
                    secs * 1e3,
                    gbps(args.size as f64 * pairs as f64, secs),
                    if verify_data { "  verified" } else { "" }
                );
            } else if last_report.elapsed() > Duration::from_secs(5) {
                eprintln!("[tcpx-bench] iteration {}/{}", it.iter + 1, args.iters);
                last_report = Instant::now();
            }
            times.push(it);
        }
    }
    Ok(Timed {
        times,
        cpu: usage.report(),
        window: 1,
        pipeline: Value::Null,
    })
}

/// Compare the peer's end-of-run summary with ours: the same iterations and bytes, and (when
/// `checksums`, i.e. the data was verified) the same checksum.
fn compare_done(gpu: u32, ours: &Done, theirs: &Done, checksums: bool) -> Result<(), String> {
    if theirs.iters != ours.iters {
        return Err(format!(
            "GPU {gpu}: the peer ran {} iterations, we ran {} (do --warmup and --iters match?)",
            theirs.iters, ours.iters
        ));
    }
    if theirs.bytes != ours.bytes {
        return Err(format!(
            "GPU {gpu}: the peer moved {} bytes, we moved {}",
            theirs.bytes, ours.bytes
        ));
    }
    if checksums && theirs.checksum != ours.checksum {
        return Err(format!(
            "GPU {gpu}: checksums differ: ours {:#x}, peer's {:#x}",
            ours.checksum, theirs.checksum
        ));
    }
    Ok(())
}

pub(super) fn finish(sides: &mut [Side], args: &TransferArgs) -> Result<Vec<Value>, BoxError> {
    let mut out = Vec::new();
    let (bytes, iters) = (args.total_bytes()?, args.total_iters()?);
    for s in sides.iter_mut() {
        let ours = Done {
            bytes,
            checksum: s.checksum,
            iters,
        };
        let theirs = s.conn.finish(ours, Instant::now() + args.timeout)?;
        let compared = !args.no_verify;
        compare_done(s.gpu, &ours, &theirs, compared)?;
        out.push(json!({ "gpu": s.gpu, "checksum": format!("{:#x}", ours.checksum), "checksum_matched": compared }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peers_done_must_match_ours() {
        let ours = Done {
            bytes: 3 << 20,
            checksum: 0xabc,
            iters: 3,
        };
        assert_eq!(compare_done(2, &ours, &ours, true), Ok(()));
        let e = compare_done(2, &ours, &Done { iters: 4, ..ours }, false).unwrap_err();
        assert!(
            e.starts_with("GPU 2: the peer ran 4 iterations, we ran 3"),
            "{e}"
        );
        let e = compare_done(2, &ours, &Done { bytes: 1, ..ours }, false).unwrap_err();
        assert_eq!(e, "GPU 2: the peer moved 1 bytes, we moved 3145728");
        let other_sum = Done {
            checksum: 0xdef,
            ..ours
        };
        assert!(compare_done(2, &ours, &other_sum, true)
            .unwrap_err()
            .contains("checksums differ: ours 0xabc, peer's 0xdef"));
        // Unverified runs do not compare checksums.
        assert_eq!(compare_done(2, &ours, &other_sum, false), Ok(()));
    }
}
