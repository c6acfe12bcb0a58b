//! The knobs every transfer subcommand shares ([`TransferArgs`]: each also reads the C++ tree's
//! variable), the machine presets and the plugin environment they fill ([`Preset`],
//! [`fill_env`]), and the parsers and bounds of sizes, timeouts and the pipeline
//! ([`parse_size`], [`MAX_TIMEOUT`], …). The environment is filled before any thread is
//! spawned ([`TransferArgs::prepare_env`]); values the run cannot use are refused before
//! anything is connected or allocated ([`TransferArgs::validate`]), and a timeout is at most a
//! day so that a deadline `Instant::now() + timeout` is always representable.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::BoxError;
use crate::check;
use crate::limits::{self, MAX_CPU_ID};
use tcpx::channel::NicSelection;
use tcpx::endpoint::{EndpointConfig, Pinning};
use tcpx::engine::MAX_IN_FLIGHT;
use tcpx::net::Plugin;

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

    pub(super) fn endpoint_config(&self, gpu: u32) -> Result<EndpointConfig, BoxError> {
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
    pub(super) fn pipeline(&self) -> Result<(u32, u32), BoxError> {
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
    /// iteration in flight, and one its receive buffer does not hold:
    /// [`choose_seed`](super::pipeline::choose_seed)), and a pipelined receiver of host memory
    /// the spares (by default one per check thread), so checking does not hold back the next
    /// receive (GPU buffers are checked on the calling thread before their next receive is
    /// posted).
    pub(super) fn buffers(&self, sending: bool) -> Result<u32, BoxError> {
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
    pub(super) fn total_iters(&self) -> Result<u32, BoxError> {
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
    pub(super) fn total_bytes(&self) -> Result<u64, BoxError> {
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
    /// iterations are agreed: [`agreed_args`](super::agreed_args)).
    pub(super) fn validate(&self) -> Result<(), BoxError> {
        self.buffers(true)?;
        self.buffers(false)?;
        self.total_bytes()?;
        Ok(())
    }

    /// Refuse a run whose buffers would not fit in memory, before allocating any: `sides`
    /// says, for each side in this process, whether it sends. Host buffers live in host
    /// memory, and so does each GPU buffer's staging copy. `origin` says where `--size`
    /// came from.
    pub(super) fn check_memory(
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

    pub(super) fn load_plugin(&self) -> Result<Arc<Plugin>, BoxError> {
        let path = self.plugin_path()?;
        self.say(format_args!("loading plugin {}", path.display()));
        Ok(Plugin::load(&path)?)
    }

    pub(super) fn say(&self, msg: std::fmt::Arguments<'_>) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transfer::tests::args;

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
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512K"), Ok(512_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }
}
