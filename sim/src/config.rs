//! The sim's configuration, read from the environment once per `init`, like TCPX's `tcpxInit`.
//!
//! | variable | default | range / meaning |
//! |---|---|---|
//! | `NCCL_GPUDIRECTTCPX_SOCKET_ENABLE` | 1 | 0 makes `init` fail |
//! | `NCCL_DYNAMIC_CHUNK_SIZE` | **0 → `init` fails** | bytes per chunk (TCPX hangs on 0; GCP uses 524288) |
//! | `NCCL_NSOCKS_PERTHREAD` | 1 | 1..=8, out of range keeps the default |
//! | `NCCL_SOCKET_NTHREADS` | 1 | 1..=16, out of range keeps the default |
//! | `NCCL_GPUDIRECTTCPX_SOCKET_IFNAME` | `=lo` | NIC filter ([`crate::nic`]) |
//! | `NCCL_GPUDIRECTTCPX_SOCKET_FAMILY` | any | `AF_INET` / `AF_INET6` |
//! | `NCCL_GPUDIRECTTCPX_CTRL_DEV` | unset | control sockets on this interface instead of the data NIC |
//! | `NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS` | **0** (TCPX: 5 s) | sleep after accept |
//! | `NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY` | unset | a non-negative value other than 3 makes `init` fail |
//! | `NCCL_USE_DMA_BUF` | 1 | 0 makes CUDA `regMr` fail |
//! | `TCPX_SIM_VIRTUAL_NICS` | unset | virtual NICs on loopback ([`crate::nic`]) |
//! | `TCPX_SIM_CUDA` | unset = auto | `0`: host mode; `1`: CUDA mode or `init` fails; unset: CUDA mode when built with `cuda`, libcuda loads and a GPU exists ([`CudaMode`]) |
//! | `TCPX_SIM_BOUNCE_BYTES` | 512 MiB | CUDA mode: bytes of each GPU's bounce pool, rounded up to 4 KiB; at least one chunk, at most 4 GiB |
//! | `TCPX_SIM_HANDSHAKE_TIMEOUT_MS` | 60000 | 1..=86400000: how long a connect or accept thread may take, from the first `connect` / `accept` call to its last socket, before it fails with [`SimError::HandshakeTimeout`] (TCPX waits forever; [`crate::conn`]) |
//! | `TCPX_SIM_HELLO_TIMEOUT_MS` | 5000 | 1..=86400000: how long the acceptor waits for the hello of one accepted connection before it closes it as not a connector and accepts the next ([`crate::conn`]) |
//! | `TCPX_SIM_BOUNCE_MEM` | `device` | CUDA mode: where each GPU's bounce pool lives ([`BounceMem`]): `device` (GPU memory, filled by a scatter kernel) or `host` (pinned, device-mapped host memory that helper threads receive into: no GPU work on the receive path, as on TCPX — use it under NCCL) |
//!
//! Integers are parsed like C's `strtoll(s, NULL, 0)` (one optional sign, then decimal, `0x` hex
//! or leading-`0` octal), but the whole string must be the number ([`parse_c_int`]); unparsable
//! or out-of-range values keep the default, as TCPX's `TCPX_GET_INT_FLAG` does.
//! Sockets per comm = `NSOCKS_PERTHREAD × NTHREADS`; above 8 (`MAX_SOCKETS`) TCPX lowers the
//! sockets per thread to `8 / NTHREADS`, which is 0 for more than 8 threads — the sim fails `init`
//! there instead of creating comms that can never move data.
//!
//! The `TCPX_SIM_*` variables are the sim's own: a malformed or out-of-range value fails `init`
//! ([`SimError::BadEnv`]) instead of falling back to a default.
//!
//! ```
//! use tcpx_sim::config::Config;
//! let env = |k: &str| match k {
//!     "NCCL_DYNAMIC_CHUNK_SIZE" => Some("524288".to_owned()),
//!     "NCCL_NSOCKS_PERTHREAD" => Some("4".to_owned()),
//!     _ => None,
//! };
//! let c = Config::from_env(&env).unwrap();
//! assert_eq!((c.chunk_size, c.nsocks, c.nthreads), (524288, 4, 1));
//! assert_eq!(c.nics[0].name_str(), "lo");
//! ```
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use tcpx::net::abi::MAX_SOCKETS;

use crate::conn::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HELLO_TIMEOUT, MAX_HANDSHAKE_TIMEOUT};
use crate::error::SimError;
use crate::nic::{self, Family, IfFilter, Nic};

/// TCPX's `MAX_THREADS`: helper threads per comm.
pub const MAX_THREADS: usize = 16;

/// Default size of a GPU's bounce pool in CUDA mode: room for 16 in-flight 4 MiB receives on
/// each of 8 comms.
pub const DEFAULT_BOUNCE_BYTES: usize = 512 << 20;
/// Largest bounce pool: `loadMeta::src_off` is a u32 (TCPX's RX pool is 4 GiB).
pub const MAX_BOUNCE_BYTES: usize = 1 << 32;

/// `TCPX_SIM_CUDA`: whether the sim runs in CUDA mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaMode {
    /// Unset: CUDA mode when the build has the `cuda` feature, libcuda loads and a GPU exists;
    /// host mode otherwise.
    Auto,
    /// `0`: host mode.
    Off,
    /// `1`: CUDA mode; `init` fails when it is not available.
    On,
}

/// `TCPX_SIM_BOUNCE_MEM`: where a GPU's bounce pool lives in CUDA mode.
///
/// On TCPX the NIC writes received payload into the GPU's RX pool by DMA: the receive path
/// issues no GPU work at all, and NCCL relies on that — its kernel stays resident, spinning on
/// the tail that the proxy advances after `test` reports a receive done. The sim cannot DMA into
/// GPU memory from a CPU thread; `Device` copies with a kernel on its own stream, which the GPU
/// does not have to run while NCCL's kernel spins (stream work is not guaranteed to run
/// concurrently). `Host` keeps TCPX's property instead of its memory type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BounceMem {
    /// `device` (default): the pool is GPU memory (`cuMemAlloc`); helper threads stage received
    /// bytes in pinned memory and a scatter kernel moves them into their pages; consumed pages are
    /// poisoned by a kernel.
    Device,
    /// `host`: the pool is pinned, device-mapped host memory (`cuMemHostAlloc(DEVICEMAP |
    /// PORTABLE)`, `bounce_buf` its device address); helper threads `recv` straight into the
    /// pages and poison them with the CPU. No CUDA call on the receive path after `accept`.
    Host,
}

/// Everything `init` read.
#[derive(Clone, Debug)]
pub struct Config {
    /// `NCCL_DYNAMIC_CHUNK_SIZE`: bytes per chunk, > 0.
    pub chunk_size: usize,
    /// Data sockets per comm (1..=8), after TCPX's cap.
    pub nsocks: usize,
    /// Helper threads per comm; socket `i` is served by thread `i % nthreads`.
    pub nthreads: usize,
    /// Sleep of the accept thread before the comm is usable.
    pub flow_steering_wait: Duration,
    /// `NCCL_USE_DMA_BUF`.
    pub use_dma_buf: bool,
    /// The devices, sorted by name.
    pub nics: Vec<Nic>,
    /// Address of `NCCL_GPUDIRECTTCPX_CTRL_DEV`, when set.
    pub ctrl_addr: Option<IpAddr>,
    /// `TCPX_SIM_CUDA`.
    pub cuda: CudaMode,
    /// `TCPX_SIM_BOUNCE_BYTES`: bytes of each GPU's bounce pool (a multiple of 4096).
    pub bounce_bytes: usize,
    /// `TCPX_SIM_BOUNCE_MEM`: where the bounce pools live.
    pub bounce_mem: BounceMem,
    /// `TCPX_SIM_HANDSHAKE_TIMEOUT_MS`: how long a connect or accept thread may run.
    pub handshake_timeout: Duration,
    /// `TCPX_SIM_HELLO_TIMEOUT_MS`: how long the acceptor waits for one connection's hello.
    pub hello_timeout: Duration,
}

/// Parses an integer flag the way TCPX's `TCPX_PARAM` (NCCL's parameter loader) does, with C's
/// `strtoll(s, NULL, 0)`: surrounding whitespace, **one** optional `+` / `-`, then `0x` / `0X`
/// and hex digits, `0` and octal digits, or decimal digits. Stricter than `strtoll`: the whole
/// string must be the number (`"12abc"` is `None`, not 12), and a value outside `i64` is `None`
/// (`strtoll` clamps it and sets `ERANGE`, which NCCL treats as unparsable). A second sign —
/// `"--5"`, `"+-5"`, `"0x-5"`, `"0-5"` — is not a digit, so it is `None`, as `strtoll` stops there.
pub fn parse_c_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let (neg, t) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let (radix, digits) = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        (16, h)
    } else if t.len() > 1 && t.starts_with('0') {
        (8, &t[1..])
    } else {
        (10, t)
    };
    if digits.is_empty() {
        return None;
    }
    // The magnitude as u64, so that i64::MIN ("-9223372036854775808") is representable; every
    // step is checked, so no input overflows.
    let mut magnitude: u64 = 0;
    for c in digits.chars() {
        let d = c.to_digit(radix)?;
        magnitude = magnitude
            .checked_mul(u64::from(radix))?
            .checked_add(u64::from(d))?;
    }
    if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Reads an integer flag: `default` unless set, parsable and in `lo..hi` (hi exclusive).
fn int_flag(
    env: &dyn Fn(&str) -> Option<String>,
    var: &str,
    default: i64,
    lo: i64,
    hi: i64,
) -> i64 {
    env(var)
        .as_deref()
        .and_then(parse_c_int)
        .filter(|v| (lo..hi).contains(v))
        .unwrap_or(default)
}

impl Config {
    /// A host-mode configuration on `lo` with `nsocks` data sockets and `nthreads` helper
    /// threads per comm and 4 KiB chunks, for unit tests of comms and connections.
    #[cfg(test)]
    pub(crate) fn loopback_for_tests(nsocks: usize, nthreads: usize) -> Config {
        Config {
            chunk_size: 4096,
            nsocks,
            nthreads,
            flow_steering_wait: Duration::ZERO,
            use_dma_buf: true,
            nics: vec![Nic {
                name: std::ffi::CString::new("lo").unwrap_or_default(),
                addr: IpAddr::from([127, 0, 0, 1]),
                pci_path: None,
                speed_mbps: 10_000,
                is_virtual: false,
            }],
            ctrl_addr: None,
            cuda: CudaMode::Off,
            bounce_bytes: DEFAULT_BOUNCE_BYTES,
            bounce_mem: BounceMem::Device,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            hello_timeout: DEFAULT_HELLO_TIMEOUT,
        }
    }

    /// Reads the configuration through `env` (the process environment in `init`; a map in tests),
    /// discovering real interfaces with `getifaddrs` when no virtual NICs are configured.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, SimError> {
        Self::from_env_with(env, &|| nic::host_interfaces(), Path::new("/sys/class/net"))
    }

    /// [`Config::from_env`] with the interface list and sysfs root supplied (for tests).
    pub fn from_env_with(
        env: &dyn Fn(&str) -> Option<String>,
        host_ifaces: &dyn Fn() -> Result<Vec<nic::IfAddr>, SimError>,
        sys_class_net: &Path,
    ) -> Result<Config, SimError> {
        if int_flag(env, "NCCL_GPUDIRECTTCPX_SOCKET_ENABLE", 1, 0, 2) == 0 {
            return Err(SimError::Disabled);
        }
        let strategy = int_flag(
            env,
            "NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY",
            -2,
            i64::MIN,
            i64::MAX,
        );
        if strategy >= 0 && strategy != 3 {
            return Err(SimError::FlowSteeringStrategy { value: strategy });
        }
        let chunk = int_flag(env, "NCCL_DYNAMIC_CHUNK_SIZE", 0, 0, i64::from(i32::MAX));
        if chunk == 0 {
            return Err(SimError::ChunkSizeUnset);
        }
        let mut per_thread = int_flag(env, "NCCL_NSOCKS_PERTHREAD", 1, 1, MAX_SOCKETS as i64 + 1);
        let nthreads = int_flag(env, "NCCL_SOCKET_NTHREADS", 1, 1, MAX_THREADS as i64 + 1);
        if per_thread * nthreads > MAX_SOCKETS as i64 {
            per_thread = MAX_SOCKETS as i64 / nthreads;
        }
        let nsocks = per_thread * nthreads;
        if nsocks == 0 {
            return Err(SimError::NoSockets {
                nthreads: nthreads as usize,
            });
        }
        let wait = int_flag(
            env,
            "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
            0,
            1,
            i64::MAX,
        );
        let use_dma_buf = int_flag(env, "NCCL_USE_DMA_BUF", 1, 0, 2) == 1;
        let family = Family::parse(env("NCCL_GPUDIRECTTCPX_SOCKET_FAMILY").as_deref());

        let ifname = env(nic::IFNAME_VAR).filter(|s| !s.trim().is_empty());
        let virtual_list = env(nic::VIRTUAL_NICS_VAR).unwrap_or_default();
        let virtual_nics = nic::parse_virtual_nics(&virtual_list)?;

        let (nics, filter_text) = if !virtual_nics.is_empty() {
            let text = ifname.clone().unwrap_or_default();
            let filter = match &ifname {
                Some(s) => IfFilter::parse(s),
                None => IfFilter::parse("^"),
            };
            (nic::select_virtual_nics(&virtual_nics, &filter)?, text)
        } else {
            let text = ifname.clone().unwrap_or_else(|| "=lo".to_owned());
            let filter = IfFilter::parse(&text);
            let ifaces = host_ifaces()?;
            (
                nic::select_host_nics(&ifaces, &filter, family, sys_class_net),
                text,
            )
        };
        if nics.is_empty() {
            return Err(SimError::NoInterface {
                filter: filter_text,
            });
        }

        let ctrl_addr = match env("NCCL_GPUDIRECTTCPX_CTRL_DEV").filter(|s| !s.trim().is_empty()) {
            None => None,
            Some(dev) => {
                let filter = IfFilter::parse(&dev);
                let found = if !virtual_nics.is_empty() {
                    virtual_nics
                        .iter()
                        .find(|v| filter.matches(&v.name))
                        .map(|v| v.addr)
                } else {
                    host_ifaces()?
                        .iter()
                        .filter(|i| !matches!(i.addr, IpAddr::V6(v) if (v.segments()[0] & 0xffc0) == 0xfe80))
                        .find(|i| filter.matches(&i.name) && family_ok(family, &i.addr))
                        .map(|i| i.addr)
                };
                Some(found.ok_or(SimError::NoInterface { filter: dev })?)
            }
        };

        let cuda = cuda_mode(env)?;
        let bounce_bytes = bounce_bytes(env, chunk as usize)?;
        let bounce_mem = bounce_mem(env)?;
        let handshake_timeout = millis(
            env,
            "TCPX_SIM_HANDSHAKE_TIMEOUT_MS",
            DEFAULT_HANDSHAKE_TIMEOUT,
        )?;
        let hello_timeout = millis(env, "TCPX_SIM_HELLO_TIMEOUT_MS", DEFAULT_HELLO_TIMEOUT)?;

        Ok(Config {
            chunk_size: chunk as usize,
            nsocks: nsocks as usize,
            nthreads: nthreads as usize,
            flow_steering_wait: Duration::from_micros(wait as u64),
            use_dma_buf,
            nics,
            ctrl_addr,
            cuda,
            bounce_bytes,
            bounce_mem,
            handshake_timeout,
            hello_timeout,
        })
    }
}

/// Parses a sim timeout in milliseconds: unset or empty is `default`; otherwise an integer
/// ([`parse_c_int`]) in `1..=MAX_HANDSHAKE_TIMEOUT` ms, else [`SimError::BadEnv`].
fn millis(
    env: &dyn Fn(&str) -> Option<String>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, SimError> {
    let Some(v) = env(var).filter(|s| !s.trim().is_empty()) else {
        return Ok(default);
    };
    let max = MAX_HANDSHAKE_TIMEOUT.as_secs().saturating_mul(1000);
    let ms = parse_c_int(&v).ok_or_else(|| SimError::BadEnv {
        var,
        why: format!("\"{v}\" is not an integer (milliseconds)"),
    })?;
    match u64::try_from(ms) {
        Ok(m) if (1..=max).contains(&m) => Ok(Duration::from_millis(m)),
        _ => Err(SimError::BadEnv {
            var,
            why: format!("{ms} ms is out of range: a timeout is 1..={max} ms"),
        }),
    }
}

/// Parses `TCPX_SIM_BOUNCE_MEM`.
fn bounce_mem(env: &dyn Fn(&str) -> Option<String>) -> Result<BounceMem, SimError> {
    match env("TCPX_SIM_BOUNCE_MEM").as_deref().map(str::trim) {
        None | Some("") | Some("device") => Ok(BounceMem::Device),
        Some("host") => Ok(BounceMem::Host),
        Some(v) => Err(SimError::BadEnv {
            var: "TCPX_SIM_BOUNCE_MEM",
            why: format!("\"{v}\" is neither device nor host"),
        }),
    }
}

/// Parses `TCPX_SIM_CUDA`.
fn cuda_mode(env: &dyn Fn(&str) -> Option<String>) -> Result<CudaMode, SimError> {
    match env("TCPX_SIM_CUDA").as_deref().map(str::trim) {
        None | Some("") => Ok(CudaMode::Auto),
        Some("0") => Ok(CudaMode::Off),
        Some("1") => Ok(CudaMode::On),
        Some(v) => Err(SimError::BadEnv {
            var: "TCPX_SIM_CUDA",
            why: format!("\"{v}\" is neither 0 (host mode) nor 1 (CUDA mode)"),
        }),
    }
}

/// Parses `TCPX_SIM_BOUNCE_BYTES`: rounded up to whole pages, at least one chunk's pages, at most
/// 4 GiB.
fn bounce_bytes(env: &dyn Fn(&str) -> Option<String>, chunk: usize) -> Result<usize, SimError> {
    const VAR: &str = "TCPX_SIM_BOUNCE_BYTES";
    let page = tcpx::net::abi::NET_PAGE_SIZE;
    let min = chunk.div_ceil(page) * page;
    let bytes = match env(VAR).filter(|s| !s.trim().is_empty()) {
        None => DEFAULT_BOUNCE_BYTES.max(min),
        Some(v) => {
            let n = parse_c_int(&v).ok_or_else(|| SimError::BadEnv {
                var: VAR,
                why: format!("\"{v}\" is not an integer"),
            })?;
            if n < 0 {
                return Err(SimError::BadEnv {
                    var: VAR,
                    why: format!("{n} is negative: the bounce pool size is a byte count"),
                });
            }
            // n >= 0 fits a 64-bit usize; rounding i64::MAX up to pages still fits.
            usize::try_from(n)
                .unwrap_or(usize::MAX)
                .div_ceil(page)
                .saturating_mul(page)
        }
    };
    if bytes < min || bytes > MAX_BOUNCE_BYTES {
        return Err(SimError::BadEnv {
            var: VAR,
            why: format!(
                "{bytes} bytes: the bounce pool must hold one chunk ({min} bytes, \
                 NCCL_DYNAMIC_CHUNK_SIZE rounded to pages) and at most 4 GiB"
            ),
        });
    }
    Ok(bytes)
}

fn family_ok(f: Family, a: &IpAddr) -> bool {
    match f {
        Family::Any => true,
        Family::V4 => a.is_ipv4(),
        Family::V6 => a.is_ipv6(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, SimError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let env = move |k: &str| map.get(k).cloned();
        let ifaces = || {
            Ok(vec![
                nic::IfAddr {
                    name: "lo".into(),
                    addr: "127.0.0.1".parse().map_err(|_| SimError::Panic)?,
                },
                nic::IfAddr {
                    name: "eth0".into(),
                    addr: "10.0.0.5".parse().map_err(|_| SimError::Panic)?,
                },
            ])
        };
        Config::from_env_with(&env, &ifaces, Path::new("/nonexistent"))
    }

    const CHUNK: (&str, &str) = ("NCCL_DYNAMIC_CHUNK_SIZE", "524288");

    #[test]
    fn c_integers() {
        assert_eq!(parse_c_int("42"), Some(42));
        assert_eq!(parse_c_int(" 0x80000 "), Some(524_288));
        assert_eq!(parse_c_int("010"), Some(8));
        assert_eq!(parse_c_int("-2"), Some(-2));
        assert_eq!(parse_c_int("0"), Some(0));
        assert_eq!(parse_c_int("12abc"), None);
        assert_eq!(parse_c_int(""), None);
        assert_eq!(parse_c_int("+7"), Some(7));
        assert_eq!(parse_c_int("-0x10"), Some(-16));
        assert_eq!(parse_c_int("-010"), Some(-8));
        // i64's ends, as strtoll gives them; one past is out of range.
        assert_eq!(parse_c_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_c_int("-0x8000000000000000"), Some(i64::MIN));
        assert_eq!(parse_c_int("9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_c_int("9223372036854775808"), None);
        assert_eq!(parse_c_int("-9223372036854775809"), None);
        assert_eq!(parse_c_int("0x1ffffffffffffffff"), None);
    }

    #[test]
    fn c_integers_take_one_sign_only() {
        for s in [
            "--5",
            "+-5",
            "-+5",
            "++5",
            "0-5",
            "0+5",
            "0x-5",
            "0x+5",
            "-0x-5",
            "0X-5",
            "00-5",
            "- 5",
            "-",
            "+",
            "0x",
            "-0x",
            // Would overflow a negation of i64::MIN.
            "--9223372036854775808",
            "-0x-8000000000000000",
            "08",
        ] {
            assert_eq!(parse_c_int(s), None, "{s:?}");
        }
    }

    #[test]
    fn chunk_size_must_be_set() {
        assert_eq!(cfg(&[]).err(), Some(SimError::ChunkSizeUnset));
        assert_eq!(
            cfg(&[("NCCL_DYNAMIC_CHUNK_SIZE", "0")]).err(),
            Some(SimError::ChunkSizeUnset)
        );
        // Out of range keeps TCPX's default, which is 0 as well.
        assert_eq!(
            cfg(&[("NCCL_DYNAMIC_CHUNK_SIZE", "-5")]).err(),
            Some(SimError::ChunkSizeUnset)
        );
        assert_eq!(cfg(&[CHUNK]).map(|c| c.chunk_size).ok(), Some(524_288));
    }

    #[test]
    fn socket_enable_zero_disables() {
        assert_eq!(
            cfg(&[CHUNK, ("NCCL_GPUDIRECTTCPX_SOCKET_ENABLE", "0")]).err(),
            Some(SimError::Disabled)
        );
        // Out of range keeps the default (enabled).
        assert!(cfg(&[CHUNK, ("NCCL_GPUDIRECTTCPX_SOCKET_ENABLE", "7")]).is_ok());
    }

    #[test]
    fn sockets_and_threads_like_tcpx() {
        let get = |v: &[(&str, &str)]| cfg(v).map(|c| (c.nsocks, c.nthreads)).ok();
        assert_eq!(get(&[CHUNK]), Some((1, 1)));
        assert_eq!(get(&[CHUNK, ("NCCL_NSOCKS_PERTHREAD", "4")]), Some((4, 1)));
        assert_eq!(
            get(&[
                CHUNK,
                ("NCCL_NSOCKS_PERTHREAD", "4"),
                ("NCCL_SOCKET_NTHREADS", "2")
            ]),
            Some((8, 2))
        );
        // 4 x 4 = 16 > 8: per-thread becomes 8 / 4 = 2.
        assert_eq!(
            get(&[
                CHUNK,
                ("NCCL_NSOCKS_PERTHREAD", "4"),
                ("NCCL_SOCKET_NTHREADS", "4")
            ]),
            Some((8, 4))
        );
        // 3 x 3 = 9 > 8: per-thread becomes 8 / 3 = 2, 6 sockets.
        assert_eq!(
            get(&[
                CHUNK,
                ("NCCL_NSOCKS_PERTHREAD", "3"),
                ("NCCL_SOCKET_NTHREADS", "3")
            ]),
            Some((6, 3))
        );
        // Out of range: defaults.
        assert_eq!(
            get(&[
                CHUNK,
                ("NCCL_NSOCKS_PERTHREAD", "9"),
                ("NCCL_SOCKET_NTHREADS", "-2")
            ]),
            Some((1, 1))
        );
        assert_eq!(
            get(&[
                CHUNK,
                ("NCCL_NSOCKS_PERTHREAD", "0"),
                ("NCCL_SOCKET_NTHREADS", "17")
            ]),
            Some((1, 1))
        );
        // 9..16 threads leave 0 sockets per thread: TCPX would hang, the sim refuses.
        assert_eq!(
            cfg(&[CHUNK, ("NCCL_SOCKET_NTHREADS", "9")]).err(),
            Some(SimError::NoSockets { nthreads: 9 })
        );
    }

    #[test]
    fn interfaces_default_to_lo_and_follow_ifname() {
        let names = |v: &[(&str, &str)]| {
            cfg(v)
                .map(|c| {
                    c.nics
                        .iter()
                        .map(|n| n.name_str().to_owned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        assert_eq!(names(&[CHUNK]), ["lo"]);
        assert_eq!(
            names(&[CHUNK, ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "eth")]),
            ["eth0"]
        );
        assert_eq!(
            names(&[CHUNK, ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "^docker")]),
            ["eth0", "lo"]
        );
        assert!(matches!(
            cfg(&[CHUNK, ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "ib")]),
            Err(SimError::NoInterface { .. })
        ));
    }

    #[test]
    fn virtual_nics_replace_discovery() {
        let c = cfg(&[
            CHUNK,
            (
                "TCPX_SIM_VIRTUAL_NICS",
                "eth2=127.0.0.3@/sys/devices/pci0000:80/0000:80:00.0,eth1=127.0.0.2",
            ),
        ]);
        let c = c.map_err(|e| e.to_string());
        let names: Vec<String> = c
            .as_ref()
            .map(|c| c.nics.iter().map(|n| n.name_str().to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["eth1", "eth2"], "{c:?}");
        let c = cfg(&[
            CHUNK,
            (
                "TCPX_SIM_VIRTUAL_NICS",
                "eth1=127.0.0.2,eth2=127.0.0.3,lo2=127.0.0.4",
            ),
            ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "=eth2"),
            ("NCCL_GPUDIRECTTCPX_CTRL_DEV", "lo2"),
        ]);
        let c = c.map_err(|e| e.to_string());
        assert_eq!(c.as_ref().map(|c| c.nics.len()).ok(), Some(1));
        assert_eq!(
            c.as_ref()
                .ok()
                .and_then(|c| c.ctrl_addr)
                .map(|a| a.to_string()),
            Some("127.0.0.4".to_owned())
        );
        assert!(matches!(
            cfg(&[CHUNK, ("TCPX_SIM_VIRTUAL_NICS", "eth1")]),
            Err(SimError::BadEnv { .. })
        ));
    }

    #[test]
    fn other_flags() {
        let c = cfg(&[
            CHUNK,
            (
                "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
                "1500",
            ),
            ("NCCL_USE_DMA_BUF", "0"),
        ]);
        let c = c.ok();
        assert_eq!(c.as_ref().map(|c| c.cuda), Some(CudaMode::Auto));
        assert_eq!(
            c.as_ref().map(|c| c.flow_steering_wait),
            Some(Duration::from_micros(1500))
        );
        assert_eq!(c.as_ref().map(|c| c.use_dma_buf), Some(false));
        assert_eq!(
            cfg(&[CHUNK, ("NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY", "0")]).err(),
            Some(SimError::FlowSteeringStrategy { value: 0 })
        );
        assert!(cfg(&[CHUNK, ("NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY", "3")]).is_ok());
        assert!(matches!(
            cfg(&[CHUNK, ("NCCL_GPUDIRECTTCPX_CTRL_DEV", "nope")]),
            Err(SimError::NoInterface { .. })
        ));
    }

    #[test]
    fn cuda_mode_and_bounce_pool_size() {
        let get = |v: &[(&str, &str)]| cfg(v).map(|c| (c.cuda, c.bounce_bytes));
        assert_eq!(get(&[CHUNK]), Ok((CudaMode::Auto, DEFAULT_BOUNCE_BYTES)));
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_CUDA", "0")]).map(|c| c.0),
            Ok(CudaMode::Off)
        );
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_CUDA", "1")]).map(|c| c.0),
            Ok(CudaMode::On)
        );
        assert!(matches!(
            get(&[CHUNK, ("TCPX_SIM_CUDA", "yes")]),
            Err(SimError::BadEnv {
                var: "TCPX_SIM_CUDA",
                ..
            })
        ));
        // Rounded up to whole pages.
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_BOUNCE_BYTES", "1048577")]).map(|c| c.1),
            Ok(1_048_576 + 4096)
        );
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_BOUNCE_BYTES", "0x100000000")]).map(|c| c.1),
            Ok(1 << 32)
        );
        // Smaller than one chunk, larger than 4 GiB, or not a number: init fails.
        for bad in ["4096", "0x100001000", "lots", "-1"] {
            assert!(
                matches!(
                    get(&[CHUNK, ("TCPX_SIM_BOUNCE_BYTES", bad)]),
                    Err(SimError::BadEnv {
                        var: "TCPX_SIM_BOUNCE_BYTES",
                        ..
                    })
                ),
                "{bad}"
            );
        }
        // A negative size is reported as negative, not as a rounded "0 bytes".
        let e = get(&[CHUNK, ("TCPX_SIM_BOUNCE_BYTES", "-4096")]).map_err(|e| e.to_string());
        assert_eq!(
            e,
            Err(
                "TCPX_SIM_BOUNCE_BYTES: -4096 is negative: the bounce pool size is a byte count"
                    .to_owned()
            )
        );
        // A chunk larger than the default pool raises the default to one chunk.
        assert_eq!(
            get(&[("NCCL_DYNAMIC_CHUNK_SIZE", "0x40000001")]).map(|c| c.1),
            Ok((1 << 30) + 4096)
        );
    }

    #[test]
    fn handshake_and_hello_timeouts() {
        let get = |v: &[(&str, &str)]| cfg(v).map(|c| (c.handshake_timeout, c.hello_timeout));
        assert_eq!(
            get(&[CHUNK]),
            Ok((DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HELLO_TIMEOUT))
        );
        assert_eq!(
            get(&[
                CHUNK,
                ("TCPX_SIM_HANDSHAKE_TIMEOUT_MS", "250"),
                ("TCPX_SIM_HELLO_TIMEOUT_MS", "0x10"),
            ]),
            Ok((Duration::from_millis(250), Duration::from_millis(16)))
        );
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_HANDSHAKE_TIMEOUT_MS", "86400000")]).map(|c| c.0),
            Ok(MAX_HANDSHAKE_TIMEOUT)
        );
        for var in ["TCPX_SIM_HANDSHAKE_TIMEOUT_MS", "TCPX_SIM_HELLO_TIMEOUT_MS"] {
            for bad in ["0", "-5", "86400001", "soon", "--5"] {
                assert!(
                    matches!(get(&[CHUNK, (var, bad)]), Err(SimError::BadEnv { var: v, .. }) if v == var),
                    "{var}={bad}"
                );
            }
        }
    }

    #[test]
    fn bounce_pool_memory() {
        let get = |v: &[(&str, &str)]| cfg(v).map(|c| c.bounce_mem);
        assert_eq!(get(&[CHUNK]), Ok(BounceMem::Device));
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_BOUNCE_MEM", "device")]),
            Ok(BounceMem::Device)
        );
        assert_eq!(
            get(&[CHUNK, ("TCPX_SIM_BOUNCE_MEM", " host ")]),
            Ok(BounceMem::Host)
        );
        assert!(matches!(
            get(&[CHUNK, ("TCPX_SIM_BOUNCE_MEM", "gpu")]),
            Err(SimError::BadEnv {
                var: "TCPX_SIM_BOUNCE_MEM",
                ..
            })
        ));
    }
}
