//! Transfer benchmarks: `loopback` (both sides in one process over tcpx-sim), `server` /
//! `client` (one process per side, the C++ tree's `test_tcpx_perf_multi`) and `orchestrator`
//! (every GPU of a node in one process, the C++ tree's `test_tcpx_perf_orchestrator`).
//!
//! The server side receives, the client side sends. Every iteration the sender writes a
//! pattern that encodes the iteration and each 8-byte word's offset, and (unless
//! `--no-verify`) the receiver checks every byte after the timed region; both sides exchange
//! checksums at the end. `loopback --depth D` streams instead: D iterations in flight, the
//! pattern encoding the sender's buffer (a seed no other iteration in flight has) and each
//! word's offset, received buffers checked by a pool of idle-priority threads while the next
//! ones move
//! ([`run_pipelined`], [`crate::check`]). Throughput is GB/s with GB = 10^9 bytes; every report
//! ends with the CPU use of the timed iterations ([`crate::cpu`]).

use std::collections::VecDeque;
use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::check::{self, fill, verify, POISON};
use crate::cpu;
use crate::limits::{self, MAX_CPU_ID, MAX_GPU_ID};
use tcpx::bootstrap::{port_for, BootstrapListener};
use tcpx::channel::NicSelection;
use tcpx::core::codec::Done;
use tcpx::endpoint::{
    Agreement, BufferId, Connection, Endpoint, EndpointConfig, Pinning, TransferId,
};
use tcpx::engine::MAX_IN_FLIGHT;
use tcpx::net::{HostBuffer, Plugin};
use tcpx::topology::Sysfs;

type BoxError = Box<dyn Error + Send + Sync>;

/// The longest `--timeout` / `--stall-timeout`: one day (a longer deadline is a typo, and a
/// deadline `Instant::now() + timeout` must be representable).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// The most `--spare-buffers` (each is one more `--size` buffer).
pub const MAX_SPARE_BUFFERS: u32 = 1024;

/// The most `--check-threads` (the default, one per CPU, is capped at it too).
pub const MAX_CHECK_THREADS: u32 = 1024;

/// Knobs shared by every transfer subcommand. Each also reads the C++ tree's variable.
#[derive(clap::Args, Debug, Clone)]
pub struct TransferArgs {
    /// The net plugin: the real TCPX (`/usr/local/tcpx/lib64/libnccl-net.so`) or tcpx-sim.
    /// Default: the tcpx-sim library built next to this binary.
    #[arg(long, env = "UCCL_TCPX_PLUGIN_PATH")]
    pub plugin: Option<PathBuf>,
    /// Channels (TCPX comms) per GPU; the server decides.
    #[arg(long, env = "UCCL_TCPX_NUM_CHANNELS", default_value_t = 8)]
    pub channels: u16,
    /// Bytes per iteration (suffixes K, M, G, KiB, MiB, GiB).
    #[arg(long, env = "UCCL_TCPX_PERF_SIZE", default_value = "64MiB", value_parser = parse_size)]
    pub size: u64,
    /// Timed iterations.
    #[arg(long, env = "UCCL_TCPX_PERF_ITERS", default_value_t = 20)]
    pub iters: u32,
    /// Untimed iterations before them.
    #[arg(long, default_value_t = 1)]
    pub warmup: u32,
    /// Chunk size (≤ 4 MiB, a multiple of 4 KiB); the server decides.
    #[arg(long, env = "UCCL_TCPX_CHUNK_BYTES", default_value = "512KiB", value_parser = parse_size)]
    pub chunk_bytes: u64,
    /// Bootstrap port of GPU g is base + g.
    #[arg(long, env = "UCCL_TCPX_BOOTSTRAP_PORT_BASE", default_value_t = 20000)]
    pub port_base: u16,
    /// Interface names for the channels, in order (default: by PCI topology).
    #[arg(long, env = "UCCL_TCPX_NICS", value_delimiter = ',')]
    pub nics: Vec<String>,
    /// Progress-thread placement: `numa` (the GPU's NUMA node), `off`, or a CPU list like `0-3,8`.
    #[arg(long, env = "UCCL_TCPX_PIN", default_value = "numa")]
    pub pin: String,
    /// Fill the plugin environment GCP publishes for this machine type where it is unset.
    #[arg(long, value_enum)]
    pub preset: Option<Preset>,
    /// Skip the byte-by-byte check of received data (numbers are then unverified).
    #[arg(long)]
    pub no_verify: bool,
    /// Deadline for setup and for each iteration.
    #[arg(long, default_value = "60", value_parser = parse_secs)]
    pub timeout: Duration,
    /// Fail a connection whose transfers make no progress for this long (seconds).
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    pub stall_timeout: Duration,
    /// Where the buffers live: `host` memory, or `gpu` memory (received chunks are unpacked out
    /// of the plugin's bounce pool on the GPU; needs a build with `--features cuda`).
    #[arg(long, env = "UCCL_TCPX_MEM", value_enum, default_value = "host")]
    pub mem: Mem,
    /// How received chunks are unpacked with `--mem gpu`: `kernel` (one launch per batch),
    /// `d2d` (a copy per fragment), `host` (through host memory), `none` (consume without
    /// copying — ablation only, refused unless `--no-verify`).
    #[arg(long, env = "UCCL_TCPX_UNPACK_IMPL", default_value = "kernel")]
    pub unpack: String,
    /// `loopback` only: keep this many iterations in flight (like iperf3, which never waits
    /// between writes). Each has its own buffer; the receiver checks finished ones on
    /// `--check-threads` worker threads while the next ones land in `--spare-buffers`.
    /// Throughput is then total bytes over total time.
    #[arg(long, default_value_t = 1)]
    pub depth: u32,
    /// With `--depth` > 1: threads that check received iterations, at idle priority, pinned
    /// and spread evenly over the CPUs (default: one per CPU this process may use).
    #[arg(long)]
    pub check_threads: Option<u32>,
    /// With `--depth` > 1: receive buffers beyond `--depth`, where the next iterations land
    /// while finished ones wait for or undergo their check (default: one per check thread).
    #[arg(long)]
    pub spare_buffers: Option<u32>,
    /// Never yield the progress threads' CPUs while waiting (pure spinning).
    #[arg(long, env = "UCCL_TCPX_SPIN")]
    pub spin: bool,
    /// Print one JSON object at the end instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Where the bench's buffers live.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mem {
    /// Host memory.
    Host,
    /// GPU memory (feature `cuda`).
    Gpu,
}

/// Machine presets for `--preset`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// GCP A3-high (8× H100, eth1..eth4 for TCPX, eth0 for control): plugin v3.1.12 settings.
    A3High,
}

/// GCP's published plugin environment for A3-high (container-engine-accelerators,
/// gpudirect-tcpx/README.md, plugin v3.1.12 / RxDM v2.0.15).
const A3_HIGH_ENV: &[(&str, &str)] = &[
    ("NCCL_SOCKET_IFNAME", "eth0"),
    ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "eth1,eth2,eth3,eth4"),
    ("NCCL_GPUDIRECTTCPX_CTRL_DEV", "eth0"),
    ("NCCL_DYNAMIC_CHUNK_SIZE", "524288"),
    ("NCCL_P2P_NET_CHUNKSIZE", "524288"),
    ("NCCL_P2P_PCI_CHUNKSIZE", "524288"),
    ("NCCL_P2P_NVL_CHUNKSIZE", "1048576"),
    ("NCCL_BUFFSIZE", "4194304"),
    ("NCCL_NSOCKS_PERTHREAD", "4"),
    ("NCCL_SOCKET_NTHREADS", "1"),
    ("NCCL_CROSS_NIC", "0"),
    ("NCCL_NET_GDR_LEVEL", "PIX"),
    ("NCCL_P2P_PXN_LEVEL", "0"),
    ("NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX", "/run/tcpx"),
    (
        "NCCL_GPUDIRECTTCPX_TX_BINDINGS",
        "eth1:8-21,112-125;eth2:8-21,112-125;eth3:60-73,164-177;eth4:60-73,164-177",
    ),
    (
        "NCCL_GPUDIRECTTCPX_RX_BINDINGS",
        "eth1:22-35,126-139;eth2:22-35,126-139;eth3:74-87,178-191;eth4:74-87,178-191",
    ),
    (
        "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
        "500000",
    ),
];

/// What tcpx-sim needs on loopback, set where unset (the sim, like TCPX, refuses to start
/// without a chunk size). Two helper threads per comm, one socket each: while one waits for
/// its socket or a wake-up the other moves bytes, which beat one thread per comm on the 16-core
/// H200 host and on the 2-core dev box, and four (BENCHMARKS.md).
const SIM_ENV: &[(&str, &str)] = &[
    ("NCCL_DYNAMIC_CHUNK_SIZE", "524288"),
    ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo"),
    ("NCCL_NSOCKS_PERTHREAD", "1"),
    ("NCCL_SOCKET_NTHREADS", "2"),
];

/// Set each variable that is not set yet. Called from `main` before any thread starts.
pub fn fill_env(vars: &[(&str, &str)]) {
    for (k, v) in vars {
        if std::env::var_os(k).is_none() {
            std::env::set_var(k, v);
        }
    }
}

impl TransferArgs {
    /// Apply the preset (or the sim defaults when the plugin is tcpx-sim). Must run before
    /// any thread is spawned.
    pub fn prepare_env(&self) {
        match self.preset {
            Some(Preset::A3High) => fill_env(A3_HIGH_ENV),
            None => {}
        }
        if self.plugin.is_none() {
            fill_env(SIM_ENV);
            // tcpx-sim's CUDA mode (bounce pool, unpack metadata) only when the buffers are on
            // the GPU; host runs stay in host mode even on a GPU machine.
            fill_env(&[(
                "TCPX_SIM_CUDA",
                if self.mem == Mem::Gpu { "1" } else { "0" },
            )]);
        }
    }

    fn plugin_path(&self) -> Result<PathBuf, BoxError> {
        if let Some(p) = &self.plugin {
            return Ok(p.clone());
        }
        let exe = std::env::current_exe()?;
        let dir = exe.parent().ok_or("the bench binary has no directory")?;
        for cand in [dir.join("libtcpx_sim.so"), dir.join("deps/libtcpx_sim.so")] {
            if cand.exists() {
                return Ok(cand);
            }
        }
        Err(format!(
            "tcpx-sim not found next to {} (build it with `cargo build --release -p tcpx-sim`) — or pass --plugin",
            exe.display()
        )
        .into())
    }

    fn endpoint_config(&self, gpu: u32) -> Result<EndpointConfig, BoxError> {
        let pinning = match self.pin.as_str() {
            "numa" => Pinning::NumaLocal,
            "off" => Pinning::Off,
            list => Pinning::Cpus(
                limits::parse_id_list("--pin (numa, off or a CPU list)", list, MAX_CPU_ID)?
                    .into_iter()
                    .map(|c| c as usize)
                    .collect(),
            ),
        };
        Ok(EndpointConfig {
            gpu,
            channels: self.channels,
            chunk_bytes: u32::try_from(self.chunk_bytes).map_err(|_| {
                format!(
                    "--chunk-bytes {}: too large (chunks are at most 4 MiB)",
                    self.chunk_bytes
                )
            })?,
            nics: if self.nics.is_empty() {
                NicSelection::Topology
            } else {
                NicSelection::Names(self.nics.clone())
            },
            pinning,
            stall_timeout: self.stall_timeout,
            yield_when_waiting: !self.spin,
            #[cfg(feature = "cuda")]
            cuda: self.cuda_config(gpu)?,
        })
    }

    /// The GPU receive path for `--mem gpu`: GPU `gpu` (modulo the GPUs present) and the
    /// unpack implementation.
    #[cfg(feature = "cuda")]
    fn cuda_config(&self, gpu: u32) -> Result<Option<tcpx::engine::CudaRecvConfig>, BoxError> {
        if self.mem != Mem::Gpu {
            return Ok(None);
        }
        let imp: tcpx::cuda::UnpackImpl = self.unpack.parse().map_err(|_| {
            format!(
                "--unpack: expected kernel, d2d, host or none, got {:?}",
                self.unpack
            )
        })?;
        if imp == tcpx::cuda::UnpackImpl::None && !self.no_verify {
            return Err(
                "--unpack none copies nothing, so it needs --no-verify (ablation only)".into(),
            );
        }
        let count = tcpx::cuda::Gpu::count()?;
        if count == 0 {
            return Err("--mem gpu: no GPU".into());
        }
        let gpu = tcpx::cuda::Gpu::new(gpu as usize % count)?;
        let mut unpack = tcpx::cuda::UnpackConfig::default();
        unpack.imp = imp;
        Ok(Some(tcpx::engine::CudaRecvConfig { gpu, unpack }))
    }

    /// `--depth` > 1: iterations in flight, and the receiver's threads that check them.
    fn pipeline(&self) -> Result<(u32, u32), BoxError> {
        let max_depth = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        if self.depth > max_depth {
            return Err(format!(
                "--depth {}: at most {max_depth} (the transfers an endpoint keeps in flight)",
                self.depth
            )
            .into());
        }
        let depth = self.depth.max(1);
        let checkers = match self.check_threads {
            Some(n) if n > MAX_CHECK_THREADS => {
                return Err(format!("--check-threads {n}: at most {MAX_CHECK_THREADS}").into())
            }
            Some(n) => n.max(1),
            // One check thread per CPU (check.rs says why), at least one.
            None => u32::try_from(check::allowed_cpus().len())
                .unwrap_or(u32::MAX)
                .clamp(1, MAX_CHECK_THREADS),
        };
        Ok((depth, checkers))
    }

    /// Buffers per side: one per iteration in flight; a pipelined sender one more (one seed per
    /// iteration in flight, and one its receive buffer does not hold: [`choose_seed`]), and a
    /// pipelined receiver of host memory the spares (by default one per check thread), so
    /// checking does not hold back the next receive (GPU buffers are checked on the calling
    /// thread before their next receive is posted).
    fn buffers(&self, sending: bool) -> Result<u32, BoxError> {
        let (depth, checkers) = self.pipeline()?;
        let spare = match self.spare_buffers {
            Some(n) if n > MAX_SPARE_BUFFERS => {
                return Err(format!("--spare-buffers {n}: at most {MAX_SPARE_BUFFERS}").into())
            }
            Some(n) => n,
            None => checkers,
        };
        let n = if depth == 1 {
            Some(1)
        } else if sending {
            depth.checked_add(1)
        } else if !self.no_verify && self.mem == Mem::Host {
            depth.checked_add(spare)
        } else {
            Some(depth)
        };
        Ok(n.ok_or("--depth + --spare-buffers overflows")?)
    }

    /// Warm-up plus timed iterations (`--iters` may be the one agreed with the peer).
    fn total_iters(&self) -> Result<u32, BoxError> {
        self.warmup.checked_add(self.iters).ok_or_else(|| {
            format!(
                "--warmup {} + --iters {} is more than {} iterations",
                self.warmup,
                self.iters,
                u32::MAX
            )
            .into()
        })
    }

    /// Bytes one side moves over the whole run: `--size` × warm-up and timed iterations.
    fn total_bytes(&self) -> Result<u64, BoxError> {
        let iters = self.total_iters()?;
        self.size.checked_mul(u64::from(iters)).ok_or_else(|| {
            format!(
                "--size {} × {iters} iterations overflows a 64-bit byte count",
                self.size
            )
            .into()
        })
    }

    /// Refuse values the run cannot use before anything is connected or allocated: the
    /// pipeline's bounds and the run's totals (checked again once the peer's size and
    /// iterations are agreed: [`agreed_args`]).
    fn validate(&self) -> Result<(), BoxError> {
        self.buffers(true)?;
        self.buffers(false)?;
        self.total_bytes()?;
        Ok(())
    }

    /// Refuse a run whose buffers would not fit in memory, before allocating any: `sides`
    /// says, for each side in this process, whether it sends. Host buffers live in host
    /// memory, and so does each GPU buffer's staging copy. `origin` says where `--size`
    /// came from.
    fn check_memory(
        &self,
        sides: impl IntoIterator<Item = bool>,
        origin: &str,
    ) -> Result<(), BoxError> {
        let mut buffers = 0u64;
        for sending in sides {
            buffers = buffers
                .checked_add(u64::from(self.buffers(sending)?))
                .ok_or("buffer count overflows")?;
        }
        limits::check_memory(self.size, buffers, limits::read_mem_available()).map_err(|e| {
            let what = match self.mem {
                Mem::Host => "host buffers",
                Mem::Gpu => "host staging copies of the GPU buffers",
            };
            format!("--size {}{origin}: {what}: {e}", self.size).into()
        })
    }

    fn load_plugin(&self) -> Result<Arc<Plugin>, BoxError> {
        let path = self.plugin_path()?;
        self.say(format_args!("loading plugin {}", path.display()));
        Ok(Plugin::load(&path)?)
    }

    fn say(&self, msg: std::fmt::Arguments<'_>) {
        eprintln!("[tcpx-bench] {msg}");
    }
}

/// Parse `64MiB`, `512K`, `1G`, `4096` (binary suffixes with `i`, decimal without).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Parse a timeout in seconds (`60`, `2.5s`): above 0, at most [`MAX_TIMEOUT`].
fn parse_secs(s: &str) -> Result<Duration, String> {
    let t = s.trim().trim_end_matches('s');
    let secs: f64 = t
        .parse()
        .map_err(|_| format!("expected seconds, got {s:?}"))?;
    if secs.is_nan() || secs <= 0.0 {
        return Err(format!("expected seconds above 0, got {s:?}"));
    }
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if d.is_zero() => Err(format!("{s:?} seconds rounds to 0")),
        Ok(d) if d <= MAX_TIMEOUT => Ok(d),
        _ => Err(format!(
            "{s:?} seconds is more than the maximum, {} (one day)",
            MAX_TIMEOUT.as_secs()
        )),
    }
}

/// The buffer one side sends from or receives into.
enum Buf {
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

    fn host(&self) -> Option<&Arc<HostBuffer>> {
        match self {
            Buf::Host(b) => Some(b),
            #[cfg(feature = "cuda")]
            Buf::Gpu { .. } => None,
        }
    }

    /// Write the pattern of `iter`; its checksum.
    fn fill(&mut self, iter: u32) -> Result<u64, BoxError> {
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
    fn poison(&mut self) -> Result<(), BoxError> {
        match self {
            Buf::Host(b) => b.lock()?.fill(POISON),
            #[cfg(feature = "cuda")]
            Buf::Gpu { buf, .. } => buf.fill(POISON)?,
        }
        Ok(())
    }

    /// Check the pattern of `iter`; its checksum.
    fn verify(&mut self, iter: u32) -> Result<u64, String> {
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
struct Side {
    gpu: u32,
    ep: Endpoint,
    conn: Connection,
    /// [`TransferArgs::buffers`] of them: iteration i uses `buffers[i % len]`, except in a
    /// pipelined run, which picks a seed (sender buffer) and a receive buffer per iteration.
    buffers: Vec<(Buf, BufferId)>,
    sending: bool,
    checksum: u64,
}

impl Side {
    fn new(
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

    fn post_slot(&mut self, slot: usize, size: u64) -> Result<TransferId, BoxError> {
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

/// The timed iterations of a run and where the CPU went meanwhile ([`cpu::report`]).
struct Timed {
    times: Vec<IterTime>,
    cpu: Value,
    /// Iterations per rate in the summary's median/min/max: 1, or `--depth` for a pipelined
    /// run, whose single completion intervals say little.
    window: u32,
    /// A pipelined run's shape and buffer reuse (`null` otherwise).
    pipeline: Value,
}

/// Timing of one iteration.
#[derive(Clone, Copy, Debug)]
struct IterTime {
    iter: u32,
    secs: f64,
}

/// GB/s (bytes as `f64`, so a product of sizes and counts cannot overflow).
fn gbps(bytes: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes / secs / 1e9
    } else {
        0.0
    }
}

fn summarize(times: &[IterTime], window: u32, bytes_per_iter: u64) -> Value {
    let w = window.max(1) as usize;
    let mut rates: Vec<f64> = times
        .chunks(w)
        .map(|c| {
            gbps(
                bytes_per_iter as f64 * c.len() as f64,
                c.iter().map(|t| t.secs).sum(),
            )
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let total_secs: f64 = times.iter().map(|t| t.secs).sum();
    let n = rates.len().max(1);
    json!({
        "iters": times.len(),
        "bytes_per_iter": bytes_per_iter,
        "avg_gbps": gbps(bytes_per_iter as f64 * times.len() as f64, total_secs),
        "median_gbps": rates.get(n / 2).copied().unwrap_or(0.0),
        "min_gbps": rates.first().copied().unwrap_or(0.0),
        "max_gbps": rates.last().copied().unwrap_or(0.0),
        "avg_ms": total_secs * 1e3 / n as f64,
    })
}

/// Per-channel counters, NIC counters and thread placement of an endpoint.
fn endpoint_report(
    side: &Side,
    nic_before: &[(String, Option<tcpx::topology::NicBytes>)],
) -> Value {
    let sys = Sysfs::default();
    let (channels, thread) = match side.ep.stats() {
        Ok(s) => s,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let chans: Vec<Value> = channels
        .iter()
        .map(|c| {
            json!({
                "channel": c.channel,
                "nic": side.conn.nics().get(c.channel).map(|n| n.1.clone()),
                "bytes": c.stats.bytes,
                "chunks": c.stats.chunks,
                "requests": c.stats.requests,
                "test_calls": c.stats.test_calls,
                "max_window_depth": c.stats.max_window_depth,
            })
        })
        .collect();
    let nics: Vec<Value> = nic_before
        .iter()
        .map(|(name, before)| {
            let after = sys.nic_bytes(name);
            let ours: u64 = channels
                .iter()
                .filter(|c| {
                    side.conn
                        .nics()
                        .get(c.channel)
                        .is_some_and(|n| &n.1 == name)
                })
                .map(|c| c.stats.bytes)
                .sum();
            json!({
                "nic": name,
                "our_bytes": ours,
                "sysfs_tx_bytes": after.zip(*before).map(|(a, b)| a.tx.wrapping_sub(b.tx)),
                "sysfs_rx_bytes": after.zip(*before).map(|(a, b)| a.rx.wrapping_sub(b.rx)),
            })
        })
        .collect();
    json!({
        "gpu": side.gpu,
        "role": if side.sending { "send" } else { "recv" },
        "progress_thread": { "pinned": thread.pinned, "last_cpu": thread.last_cpu, "loops": thread.loops },
        "channels": chans,
        "nics": nics,
    })
}

fn nic_snapshot(conn: &Connection) -> Vec<(String, Option<tcpx::topology::NicBytes>)> {
    let sys = Sysfs::default();
    let mut names: Vec<String> = conn.nics().iter().map(|n| n.1.clone()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let b = sys.nic_bytes(&n);
            (n, b)
        })
        .collect()
}

/// GPU pairs among `sides`: the receiving sides, or the sending ones when this process only
/// sends.
fn pair_count(sides: &[Side]) -> u64 {
    let recv = sides.iter().filter(|s| !s.sending).count();
    (if recv > 0 { recv } else { sides.len() }).max(1) as u64
}

/// Run `iters` warm-up + timed iterations over all `sides` at once (every side posts, then all
/// are waited for); `sync` runs between iterations (a bootstrap barrier for multi-process runs).
fn run_iterations(
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
fn run_pipelined(args: &TransferArgs, sides: &mut [Side]) -> Result<Timed, BoxError> {
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
fn choose_seed(
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

fn finish(sides: &mut [Side], args: &TransferArgs) -> Result<Vec<Value>, BoxError> {
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

fn print_report(
    args: &TransferArgs,
    mode: &str,
    run: &Timed,
    pairs: u64,
    reports: Vec<Value>,
    extra: Value,
) {
    let times = &run.times;
    let summary = summarize(times, run.window, args.size.saturating_mul(pairs));
    let out = json!({
        "bench": mode,
        "plugin": args.plugin.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "tcpx-sim".into()),
        "channels": args.channels,
        "chunk_bytes": args.chunk_bytes,
        "size": args.size,
        "pairs": pairs,
        "verified": !args.no_verify,
        "mem": format!("{:?}", args.mem).to_lowercase(),
        "unpack": if args.mem == Mem::Gpu { Some(args.unpack.clone()) } else { None },
        "summary": summary,
        "iterations": times.iter().map(|t| json!({"iter": t.iter, "ms": t.secs * 1e3})).collect::<Vec<_>>(),
        "endpoints": reports,
        "cpu": run.cpu,
        "pipeline": run.pipeline,
        "extra": extra,
    });
    if args.json {
        println!("{out}");
        return;
    }
    println!(
        "\n{mode}: {} × {} bytes, {} channels, {} KiB chunks, {}",
        times.len(),
        args.size.saturating_mul(pairs),
        args.channels,
        args.chunk_bytes >> 10,
        if args.no_verify {
            "NOT verified"
        } else {
            "every byte verified"
        }
    );
    println!(
        "avg {:.2} GB/s  median {:.2}  min {:.2}  max {:.2}  ({:.3} ms/iter)",
        summary["avg_gbps"].as_f64().unwrap_or(0.0),
        summary["median_gbps"].as_f64().unwrap_or(0.0),
        summary["min_gbps"].as_f64().unwrap_or(0.0),
        summary["max_gbps"].as_f64().unwrap_or(0.0),
        summary["avg_ms"].as_f64().unwrap_or(0.0),
    );
    for r in &reports {
        let t = &r["progress_thread"];
        println!(
            "GPU {} ({}): progress thread {}, last on CPU {}",
            r["gpu"],
            r["role"].as_str().unwrap_or("?"),
            match &t["pinned"] {
                Value::Null => "not pinned".to_owned(),
                p => format!("pinned to {p}"),
            },
            t["last_cpu"]
        );
        for n in r["nics"].as_array().into_iter().flatten() {
            println!(
                "  NIC {}: our bytes {}, sysfs tx {} rx {}",
                n["nic"].as_str().unwrap_or("?"),
                n["our_bytes"],
                n["sysfs_tx_bytes"],
                n["sysfs_rx_bytes"]
            );
        }
    }
    for line in cpu::lines(&run.cpu) {
        println!("{line}");
    }
}

/// `tcpx-bench loopback`: both sides in one process, one endpoint each (GPU ids 0 and 1).
pub fn loopback(args: &TransferArgs) -> Result<(), BoxError> {
    args.validate()?;
    args.check_memory([false, true], "")?;
    let plugin = args.load_plugin()?;
    let deadline = Instant::now() + args.timeout;
    let listener = BootstrapListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr();
    let mut rx = Endpoint::new(plugin.clone(), args.endpoint_config(0)?)?;
    let tx_cfg = args.endpoint_config(1)?;
    let (size, iters) = (args.size, args.iters);
    let client = std::thread::spawn(move || -> Result<(Endpoint, Connection), String> {
        let mut tx = Endpoint::new(plugin, tx_cfg).map_err(|e| e.to_string())?;
        let conn = tx
            .connect(addr, size, iters, deadline)
            .map_err(|e| e.to_string())?;
        Ok((tx, conn))
    });
    args.say(format_args!(
        "connecting {} channels on loopback",
        args.channels
    ));
    let rconn = rx.serve(&listener, deadline)?;
    let (tx, tconn) = client.join().map_err(|_| "the client thread panicked")??;
    let nic_before = nic_snapshot(&rconn);
    let mut sides = vec![
        Side::new(args, 0, rx, rconn, args.size)?,
        Side::new(args, 1, tx, tconn, args.size)?,
    ];
    args.say(format_args!(
        "running {} + {} iterations of {} bytes",
        args.warmup, args.iters, args.size
    ));
    let times = if args.depth > 1 {
        run_pipelined(args, &mut sides)?
    } else {
        run_iterations(args, &mut sides, |_, _| Ok(()))?
    };
    // Both sides in this process: compare the checksums directly.
    if !args.no_verify && sides[0].checksum != sides[1].checksum {
        return Err(format!(
            "checksums differ: received {:#x}, sent {:#x}",
            sides[0].checksum, sides[1].checksum
        )
        .into());
    }
    let reports = sides
        .iter()
        .map(|s| endpoint_report(s, &nic_before))
        .collect();
    print_report(args, "loopback", &times, 1, reports, json!({}));
    Ok(())
}

/// Arguments of `server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The GPU (bootstrap port = base + gpu).
    #[arg(default_value_t = 0)]
    pub gpu: u32,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    #[command(flatten)]
    pub common: TransferArgs,
}

/// Arguments of `client`.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The server's address.
    pub server: IpAddr,
    /// The GPU (bootstrap port = base + gpu).
    #[arg(default_value_t = 0)]
    pub gpu: u32,
    #[command(flatten)]
    pub common: TransferArgs,
}

fn barrier_each(sides: &mut [Side], iter: u32, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    for s in sides.iter_mut() {
        s.conn.barrier(iter + 1, deadline)?;
    }
    Ok(())
}

/// `tcpx-bench server`: receive on GPU `gpu`.
pub fn server(a: &ServerArgs) -> Result<(), BoxError> {
    let args = &a.common;
    args.validate()?;
    let plugin = args.load_plugin()?;
    let port = port_for(args.port_base, a.gpu).ok_or("port base + gpu overflows")?;
    let listener = BootstrapListener::bind(SocketAddr::new(a.bind, port))?;
    args.say(format_args!(
        "GPU {} waiting for a client on {}",
        a.gpu,
        listener.local_addr()
    ));
    let mut ep = Endpoint::new(plugin, args.endpoint_config(a.gpu)?)?;
    let conn = ep.serve(&listener, Instant::now() + args.timeout)?;
    run_pair(args, a.gpu, ep, conn, "server")
}

/// `tcpx-bench client`: send from GPU `gpu`.
pub fn client(a: &ClientArgs) -> Result<(), BoxError> {
    let args = &a.common;
    args.validate()?;
    let plugin = args.load_plugin()?;
    let port = port_for(args.port_base, a.gpu).ok_or("port base + gpu overflows")?;
    let mut ep = Endpoint::new(plugin, args.endpoint_config(a.gpu)?)?;
    args.say(format_args!(
        "GPU {} connecting to {}:{port}",
        a.gpu, a.server
    ));
    let conn = ep.connect(
        SocketAddr::new(a.server, port),
        args.size,
        args.iters,
        Instant::now() + args.timeout,
    )?;
    run_pair(args, a.gpu, ep, conn, "client")
}

/// The client proposes size and iterations, the server decides channels and chunk size; the
/// bootstrap's `Handles` carries all four to both sides, which then run identical loops. The
/// size and iterations may be the peer's, so the result is validated again.
fn agreed_args(args: &TransferArgs, agreed: &Agreement) -> Result<TransferArgs, BoxError> {
    let mut args = args.clone();
    args.size = agreed.bytes;
    args.iters = agreed.iters;
    args.channels = agreed.channels;
    args.chunk_bytes = agreed.chunk_bytes.into();
    args.validate()
        .map_err(|e| format!("with the size and iterations agreed with the peer: {e}"))?;
    Ok(args)
}

/// Where the agreed `--size` came from, for error messages.
fn size_origin(sending: bool) -> &'static str {
    if sending {
        ""
    } else {
        " (as the client proposed it)"
    }
}

/// The orchestrator runs one loop for every GPU with the first connection's agreement, so every
/// other connection (`gpu`, `agreed`) must have agreed on the same run.
fn same_agreement(
    (first_gpu, first): (u32, &Agreement),
    (gpu, agreed): (u32, &Agreement),
) -> Result<(), String> {
    let fields = [
        (
            "channels",
            u64::from(first.channels),
            u64::from(agreed.channels),
        ),
        (
            "chunk bytes",
            u64::from(first.chunk_bytes),
            u64::from(agreed.chunk_bytes),
        ),
        ("bytes per iteration", first.bytes, agreed.bytes),
        (
            "iterations",
            u64::from(first.iters),
            u64::from(agreed.iters),
        ),
    ];
    for (what, want, got) in fields {
        if got != want {
            return Err(format!(
                "GPU {gpu}: agreed on {got} {what}, but GPU {first_gpu} on {want}; every GPU's \
                 server and client must be started with the same settings"
            ));
        }
    }
    Ok(())
}

fn run_pair(
    args: &TransferArgs,
    gpu: u32,
    ep: Endpoint,
    conn: Connection,
    mode: &str,
) -> Result<(), BoxError> {
    let args = agreed_args(args, &conn.agreement())?;
    let sending = conn.direction() == tcpx::endpoint::Direction::Send;
    args.check_memory([sending], size_origin(sending))
        .map_err(|e| format!("GPU {gpu}: {e}"))?;
    let nic_before = nic_snapshot(&conn);
    let mut sides = vec![Side::new(&args, gpu, ep, conn, args.size)?];
    let timeout = args.timeout;
    let times = run_iterations(&args, &mut sides, |s, iter| barrier_each(s, iter, timeout))?;
    let checks = finish(&mut sides, &args)?;
    let reports = sides
        .iter()
        .map(|s| endpoint_report(s, &nic_before))
        .collect();
    print_report(
        &args,
        mode,
        &times,
        1,
        reports,
        json!({ "checksums": checks }),
    );
    Ok(())
}

/// Arguments of `orchestrator`.
#[derive(clap::Args, Debug)]
pub struct OrchestratorArgs {
    /// `server` (receive on every GPU) or `client` (send from every GPU).
    #[arg(value_enum)]
    pub role: Role,
    /// The server's address (client role).
    #[arg(long, default_value = "127.0.0.1")]
    pub server: IpAddr,
    /// The GPUs, e.g. `0-7`.
    #[arg(long, default_value = "0-7")]
    pub gpus: String,
    #[command(flatten)]
    pub common: TransferArgs,
}

/// Orchestrator roles.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receive on every GPU.
    Server,
    /// Send from every GPU.
    Client,
}

/// `tcpx-bench orchestrator`: every GPU of a node in one process, one endpoint (and progress
/// thread) per GPU. The server binds every GPU's bootstrap port before accepting any; the
/// client connects GPU by GPU in ascending order.
pub fn orchestrator(a: &OrchestratorArgs) -> Result<(), BoxError> {
    let args = &a.common;
    let gpus = limits::parse_id_list("--gpus", &a.gpus, MAX_GPU_ID)?;
    args.validate()?;
    let plugin = args.load_plugin()?;
    let deadline = Instant::now() + args.timeout;
    let mut sides = Vec::new();
    match a.role {
        Role::Server => {
            let listeners = gpus
                .iter()
                .map(|&g| {
                    let port = port_for(args.port_base, g).ok_or("port base + gpu overflows")?;
                    Ok(BootstrapListener::bind(SocketAddr::new(
                        [0, 0, 0, 0].into(),
                        port,
                    ))?)
                })
                .collect::<Result<Vec<_>, BoxError>>()?;
            for (&g, l) in gpus.iter().zip(&listeners) {
                args.say(format_args!(
                    "GPU {g}: waiting for its client on {}",
                    l.local_addr()
                ));
                let mut ep = Endpoint::new(plugin.clone(), args.endpoint_config(g)?)?;
                let conn = ep.serve(l, deadline)?;
                sides.push((g, ep, conn));
            }
        }
        Role::Client => {
            for &g in &gpus {
                let port = port_for(args.port_base, g).ok_or("port base + gpu overflows")?;
                args.say(format_args!("GPU {g}: connecting to {}:{port}", a.server));
                let mut ep = Endpoint::new(plugin.clone(), args.endpoint_config(g)?)?;
                let conn = ep.connect(
                    SocketAddr::new(a.server, port),
                    args.size,
                    args.iters,
                    deadline,
                )?;
                sides.push((g, ep, conn));
            }
        }
    }
    let args = &match sides.first() {
        Some(first) => {
            let agreed = first.2.agreement();
            for (g, _, conn) in &sides[1..] {
                same_agreement((first.0, &agreed), (*g, &conn.agreement()))?;
            }
            let args = agreed_args(args, &agreed)?;
            let sending = a.role == Role::Client;
            args.check_memory(
                std::iter::repeat_n(sending, sides.len()),
                size_origin(sending),
            )?;
            args
        }
        None => args.clone(),
    };
    let nic_before = sides
        .first()
        .map(|s| nic_snapshot(&s.2))
        .unwrap_or_default();
    let mut sides = sides
        .into_iter()
        .map(|(g, ep, conn)| Side::new(args, g, ep, conn, args.size))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = args.timeout;
    let times = run_iterations(args, &mut sides, |s, iter| barrier_each(s, iter, timeout))?;
    let checks = finish(&mut sides, args)?;
    let reports = sides
        .iter()
        .map(|s| endpoint_report(s, &nic_before))
        .collect();
    print_report(
        args,
        "orchestrator",
        &times,
        gpus.len() as u64,
        reports,
        json!({ "checksums": checks }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TransferArgs,
    }

    fn args(flags: &[&str]) -> Result<TransferArgs, String> {
        Cli::try_parse_from(std::iter::once("tcpx-bench").chain(flags.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn timeouts_parse_within_a_day() {
        assert_eq!(parse_secs("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_secs("2.5s"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_secs("86400"), Ok(MAX_TIMEOUT));
        for bad in [
            "0", "-1", "NaN", "inf", "1e20", "1e19", "86401", "1e-300", "soon",
        ] {
            assert!(parse_secs(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse_secs("1e20")
            .unwrap_err()
            .contains("more than the maximum, 86400"));
        assert!(parse_secs("-1").unwrap_err().contains("above 0"));
        // The flag is named in the error.
        let e = args(&["--timeout", "1e20"]).unwrap_err();
        assert!(e.contains("--timeout"), "{e}");
        let e = args(&["--stall-timeout", "NaN"]).unwrap_err();
        assert!(e.contains("--stall-timeout"), "{e}");
    }

    #[test]
    fn pipeline_knobs_are_bounded() {
        let err = |flags: &[&str]| args(flags).unwrap().validate().unwrap_err().to_string();
        let max = MAX_IN_FLIGHT.to_string();
        assert!(args(&["--depth", &max]).unwrap().validate().is_ok());
        let over = (MAX_IN_FLIGHT + 1).to_string();
        assert!(err(&["--depth", &over]).starts_with(&format!("--depth {over}: at most {max}")));
        let e = err(&["--depth", "4", "--check-threads", "4294967295"]);
        assert!(
            e.starts_with("--check-threads 4294967295: at most 1024"),
            "{e}"
        );
        let e = err(&["--depth", "4", "--spare-buffers", "4294967295"]);
        assert!(
            e.starts_with("--spare-buffers 4294967295: at most 1024"),
            "{e}"
        );
        let a = args(&["--depth", "4", "--spare-buffers", "1024"]).unwrap();
        assert_eq!(a.buffers(false).unwrap(), 1028);
        assert_eq!(a.buffers(true).unwrap(), 5);
    }

    #[test]
    fn run_totals_that_overflow_are_refused() {
        let e = args(&["--iters", "4294967295"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(
            e.to_string().contains("--warmup 1 + --iters 4294967295"),
            "{e}"
        );
        let e = args(&["--size", "8GiB", "--iters", "4000000000"])
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("overflows"), "{e}");
        let a = args(&["--size", "1MiB", "--iters", "3", "--warmup", "2"]).unwrap();
        assert_eq!(
            (a.total_iters().unwrap(), a.total_bytes().unwrap()),
            (5, 5 << 20)
        );
    }

    #[test]
    fn size_and_iterations_from_the_peer_are_validated() {
        let ours = args(&[]).unwrap();
        let agreed = Agreement {
            peer_gpu: 0,
            channels: 4,
            chunk_bytes: 1 << 19,
            bytes: u64::MAX,
            iters: 2,
        };
        let e = agreed_args(&ours, &agreed).unwrap_err().to_string();
        assert!(
            e.starts_with("with the size and iterations agreed with the peer"),
            "{e}"
        );
        let fine = Agreement {
            bytes: 1 << 20,
            ..agreed
        };
        let a = agreed_args(&ours, &fine).unwrap();
        assert_eq!(
            (a.size, a.iters, a.channels, a.chunk_bytes),
            (1 << 20, 2, 4, 1 << 19)
        );
    }

    #[test]
    fn pin_and_gpus_take_strict_lists() {
        let e = args(&["--pin", "0-3,x"])
            .unwrap()
            .endpoint_config(0)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--pin (numa, off or a CPU list): "),
            "{e}"
        );
        let c = args(&["--pin", "2-3,0"])
            .unwrap()
            .endpoint_config(0)
            .unwrap();
        assert!(matches!(c.pinning, Pinning::Cpus(ref v) if v == &[2, 3, 0]));
        let e = args(&["--chunk-bytes", "4GiB"])
            .unwrap()
            .endpoint_config(0)
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("--chunk-bytes 4294967296: too large"),
            "{e}"
        );
    }

    #[test]
    fn every_orchestrated_connection_must_agree_with_the_first() {
        let first = Agreement {
            peer_gpu: 0,
            channels: 8,
            chunk_bytes: 1 << 19,
            bytes: 1 << 26,
            iters: 20,
        };
        // Only the peer's GPU may differ.
        let same = Agreement {
            peer_gpu: 1,
            ..first
        };
        assert_eq!(same_agreement((0, &first), (1, &same)), Ok(()));
        let cases = [
            (
                Agreement {
                    channels: 4,
                    ..first
                },
                "agreed on 4 channels, but GPU 0 on 8",
            ),
            (
                Agreement {
                    chunk_bytes: 1 << 20,
                    ..first
                },
                "agreed on 1048576 chunk bytes, but GPU 0 on 524288",
            ),
            (
                Agreement { bytes: 1, ..first },
                "agreed on 1 bytes per iteration, but GPU 0 on 67108864",
            ),
            (
                Agreement { iters: 3, ..first },
                "agreed on 3 iterations, but GPU 0 on 20",
            ),
        ];
        for (other, want) in cases {
            let e = same_agreement((0, &first), (5, &other)).unwrap_err();
            assert!(e.starts_with(&format!("GPU 5: {want}")), "{e}");
        }
    }

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

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512K"), Ok(512_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

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
