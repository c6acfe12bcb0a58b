//! # tcpx-sim — an NCCL net plugin that behaves like GPUDirect-TCPX, over kernel TCP
//!
//! tcpx-sim exports `ncclNetPlugin_v7` with the ABI, limits, return codes and unpack metadata of
//! Google's TCPX plugin (`GPUDirectTCPX_v7`, open-source 3.1.9), but moves bytes over ordinary
//! TCP sockets, so it runs on any Linux box, loopback included. Every TCPX rule is enforced, and
//! every violation **fails loudly**: a WARN through the NCCL logger that names the rule, what TCPX
//! would do, and the code returned (TCPX's own code; `ncclInternalError` where TCPX would crash,
//! hang or corrupt memory instead). The reference for every rule is
//! `shared/reference/tcpx-plugin-contract.md`.
//!
//! The table's name is **`tcpx-sim_v7`** (not `GPUDirectTCPX_v7`) so logs tell the two apart;
//! log lines start with `NET/tcpx-sim : <call>:`.
//!
//! ## What it emulates
//!
//! | area | behaviour (TCPX's unless marked *sim*) |
//! |---|---|
//! | properties | `name` = interface, `pciPath` = realpath of `/sys/class/net/<if>/device` or NULL, `guid` = dev index, `ptrSupport` = HOST\|CUDA, `speed` from `/sys/class/net/<if>/speed` or 10000, `maxComms` 65536, `maxRecvs` 1, `netDeviceType` UNPACK, `netDeviceVersion` 7 |
//! | devices | NICs matching `NCCL_GPUDIRECTTCPX_SOCKET_IFNAME`, sorted, ≤ 16; unset = `lo` (*sim*); or virtual NICs |
//! | listen/connect/accept | non-blocking: the first call starts a thread and returns success with a NULL comm; retry with the same handle buffer / listen comm; `connect` writes its state key at handle offset 80; one connect per handle, one accept per listen comm; `connect` completes only once the peer's accept runs |
//! | accept's device handle | fills the caller's 32-byte `ncclNetDeviceHandle_v7_t`: UNPACK, version 7, `handle` → 24-byte `{meta, bounce_buf, head = u64::MAX}`, size 24, `needsProxyProgress` 1 |
//! | sockets, threads | 1 control + `NSOCKS_PERTHREAD × NTHREADS` (≤ 8) data sockets per comm; `NTHREADS` helper threads, socket `i` on thread `i % NTHREADS`; chunks of `NCCL_DYNAMIC_CHUNK_SIZE`, round robin over sockets with < 6 chunks in flight, one control message per chunk |
//! | requests | ≤ 16 per comm ("unable to allocate requests"); a recv holds its slot until `irecvConsumed`; irecv `n == 1`; tags ignored; FIFO matching; `test` only on the oldest outstanding request; `test` never writes `sizes`; progress only inside `test` |
//! | receives | the k-th receive uses unpack slot `k % 16`; size-0 messages take a slot (cnt 0); `irecvConsumed` in FIFO order, only after done; host receives land in the irecv buffer, `cnt[slot] = 0` |
//! | errors | peer closed / socket error → `ncclSystemError` (2) from `test`; contract violations → `ncclInternalError` (3) |
//! | memory | `regMr(HOST)` records the buffer; `regMr(CUDA)` checks `NCCL_USE_DMA_BUF` and `data % 4096 == 0` ("data not aligned"), then needs CUDA mode and device memory of one GPU; `regMrDmaBuf` NULL; `getDeviceMr` no-op; `iflush` fails ("never call iflush on TCPX") |
//! | CUDA mode | the device handle in device memory, the metadata in pinned device-mapped memory, a per-GPU bounce pool (device memory, or with `TCPX_SIM_BOUNCE_MEM=host` pinned device-mapped host memory); receives into CUDA memory land there as shuffled 4 KiB pages (the irecv buffer is never written), `cnt[slot]` last; `irecvConsumed` poisons and frees the pages; sends from CUDA memory are copied to host staging first — see the `cuda` module (feature `cuda`) |
//! | close | stops helper threads; WARNs when receives were not consumed |
//! | diagnostics (*sim*) | INFO on each comm's first isend/irecv/test/completion/irecvConsumed; a WARN when `test` finds the same request pending for 10 s, saying where its bytes are and what each helper thread does (socket, CUDA wait) |
//!
//! Stricter than TCPX (*sim*), each a loud failure instead of a crash, hang or silent corruption:
//! a NULL logger, `NCCL_DYNAMIC_CHUNK_SIZE` unset/0 or `NCCL_SOCKET_NTHREADS` > 8 fail `init`;
//! a `connect` or `accept` whose peer never completes the handshake fails after
//! `TCPX_SIM_HANDSHAKE_TIMEOUT_MS` (TCPX's threads wait forever); a wait for the sim's own GPU
//! work (CUDA mode) gives up after 10 s with `ncclUnhandledCudaError` ([`gpu_wait`]);
//! a message larger than the posted receive fails that receive's `test` (TCPX overflows); `accept`
//! with a NULL device-handle pointer makes the first `irecv` fail (TCPX segfaults); `test` on a
//! done receive, `irecvConsumed` on a send request, a buffer outside its registration, two
//! threads inside one comm, a forged handle or pointer — all fail. `deregMr` of a registration
//! that outstanding requests use succeeds like TCPX, with a WARN.
//!
//! ## Environment (read once per `init`; see [`config`] for ranges)
//!
//! * `NCCL_DYNAMIC_CHUNK_SIZE` — **required**, bytes per chunk (GCP: 524288).
//! * `NCCL_NSOCKS_PERTHREAD` (1..8, default 1), `NCCL_SOCKET_NTHREADS` (1..16, default 1).
//! * `NCCL_GPUDIRECTTCPX_SOCKET_IFNAME` — NIC filter (`eth`, `=eth1,eth2`, `^docker,lo`); default `=lo`.
//! * `NCCL_GPUDIRECTTCPX_SOCKET_FAMILY` — `AF_INET` / `AF_INET6`.
//! * `NCCL_GPUDIRECTTCPX_CTRL_DEV` — control sockets on this interface.
//! * `NCCL_GPUDIRECTTCPX_SOCKET_ENABLE` — 0 makes `init` fail.
//! * `NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY` — a non-negative value other than 3 makes `init` fail.
//! * `NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS` — sleep after accept (sim default 0; TCPX 5 s).
//! * `NCCL_USE_DMA_BUF` — 0 makes CUDA `regMr` fail.
//! * `TCPX_SIM_VIRTUAL_NICS` — *sim only*: virtual NICs on loopback, below.
//! * `TCPX_SIM_CUDA` — *sim only*: `0` host mode, `1` CUDA mode or `init` fails, unset = CUDA mode
//!   when built with `cuda`, libcuda loads and a GPU exists.
//! * `TCPX_SIM_BOUNCE_BYTES` — *sim only*: each GPU's bounce pool in CUDA mode (default 512 MiB).
//! * `TCPX_SIM_BOUNCE_MEM` — *sim only*: `device` (default) or `host` — where the bounce pools
//!   live; `host` keeps GPU work off the receive path, as on TCPX (use it under NCCL, below).
//! * `TCPX_SIM_HANDSHAKE_TIMEOUT_MS` — *sim only*: how long a connect or accept thread may run
//!   before it fails with a handshake timeout (default 60000; TCPX waits forever).
//! * `TCPX_SIM_HELLO_TIMEOUT_MS` — *sim only*: how long the acceptor waits for the hello of one
//!   accepted connection before closing it and accepting the next (default 5000).
//!
//! ## Virtual NICs
//!
//! `TCPX_SIM_VIRTUAL_NICS` replaces interface discovery with NICs that have their own name,
//! address and PCI path but live on loopback, so NIC choice by PCI topology can be tested on one
//! machine:
//!
//! ```text
//! TCPX_SIM_VIRTUAL_NICS="eth1=127.0.0.1@/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0,eth2=127.0.0.2@/sys/devices/pci0000:81/0000:81:00.0/0000:86:00.0#200000"
//! entry := name '=' address [ '@' pci_path ] [ '#' speed_mbps ]
//! ```
//!
//! Each address must be bindable (every 127.x.y.z is on Linux); the PCI path is reported as given
//! (it need not exist) or NULL; speed defaults to 10000. `NCCL_GPUDIRECTTCPX_SOCKET_IFNAME` still
//! filters them; they are sorted by name. Sockets of a NIC bind to its address. Details: [`nic`].
//!
//! ## Using it with NCCL
//!
//! ```text
//! # NCCL_NET_PLUGIN=<name> makes NCCL dlopen libnccl-net-<name>.so from the library path;
//! # newer NCCL releases also take a full path. A symlink works everywhere:
//! ln -s /path/to/libtcpx_sim.so /some/dir/libnccl-net-tcpx-sim.so
//! LD_LIBRARY_PATH=/some/dir NCCL_NET_PLUGIN=tcpx-sim NCCL_NET=tcpx-sim_v7 \
//! NCCL_DYNAMIC_CHUNK_SIZE=524288 NCCL_GPUDIRECTTCPX_SOCKET_IFNAME=lo <your NCCL program>
//! ```
//!
//! Like TCPX it reports `ptrSupport = HOST|CUDA` and an UNPACK device type, so NCCL registers
//! GPU buffers and runs its unpack kernel over the sim's metadata: NCCL end to end needs CUDA
//! mode (build with `--features cuda`). `lo` has no PCI path, so NCCL only uses GPU buffers
//! (GDR) with `NCCL_NET_GDR_LEVEL=SYS`; `scripts/gpu/nccl-sim.sh` has a complete setup.
//!
//! **Under NCCL, keep GPU work off the data path:** `TCPX_SIM_BOUNCE_MEM=host` (receives land in
//! a host-memory pool without a kernel) and `NCCL_NET_GDR_READ=0` (NCCL sends from host buffers,
//! so no device-to-host copy either). NCCL's kernel stays resident and spins on the tail its
//! proxy advances after `test` (`src/transport/net.cc: recvProxyProgress`,
//! `src/device/prims_simple.h: waitPeer`); TCPX never queues GPU work there (the NIC DMAs), and
//! work the sim queues on its own streams need not run while that kernel spins — the run would
//! hang (NCCL's own proxy-side copies do the same: NVIDIA/nccl issues 803, 1509). With the
//! default device pool a stalled request's WARN names the helper stuck in the CUDA wait, and
//! after 10 s that wait fails the comm ([`gpu_wait`]).
//!
//! The `tcpx` crate loads it like the real plugin (`Plugin::load(path)`); in-process users can
//! take the table directly with [`plugin_v7`].
//!
//! ## What it does not emulate
//!
//! devmem-TCP (CUDA mode stages through pinned host memory instead, and a device bounce pool is
//! filled by a kernel — GPU work on the receive path that TCPX does not have), zero-copy send and its
//! completion notifications, RxDM and flow steering (the wait after accept is honoured), the
//! ConnectionState retries, the per-socket
//! 100 ms connect delay, TX/RX CPU bindings and thread pinning, `NCCL_GPUDIRECTTCPX_RECV_SYNC`,
//! `NCCL_INLINE_THRESHOLD` (size-0 messages are always inline), the KATY scheduler, slowness
//! reports, telemetry, TCPX's per-receive "requested receive on host mem buffer" WARN, TCPX's
//! `exit(1)` paths, and interface auto-detection beyond falling back to `lo`.
//!
//! ## Layout
//!
//! `unsafe` lives in [`ffi`] (the exported table and entry points), [`hostmem`] (slices over
//! caller-registered buffers), [`bounce`] (the host unpack-queue allocation), `cuda` (the CUDA
//! glue of CUDA mode), plus the logger call in [`log`]. Everything else forbids it.
//!
//! | module | role |
//! |---|---|
//! | [`ffi`] | `ncclNetPlugin_v7`, NULL checks, magic checks, `catch_unwind` |
//! | [`plugin`] | `init` state, the objects behind comm/request pointers |
//! | [`conn`] | listen / connect / accept threads and the handshake |
//! | [`comm`] | send and recv comms: chunking, control messages, progress in `test` |
//! | [`request`] | the 16-slot FIFO request ring |
//! | [`helper`] | helper threads doing blocking socket I/O |
//! | [`hostmem`] | registered host buffers and the ranges helpers move |
//! | [`bounce`] | unpack queue, host/CUDA mode seam, CUDA registration rules |
//! | [`pages`] | bounce-pool page allocator, page shuffler, fragment builder (pure Rust) |
//! | `cuda` | CUDA mode: driver glue, per-GPU bounce pool and kernels, unpack queue, staging (feature `cuda`) |
//! | [`config`], [`nic`] | environment and devices |
//! | [`wire`] | handle, hello and control-message encodings |
//! | [`error`], [`log`] | failures and how they are reported |
//!
//! ```
//! let t = tcpx_sim::plugin_v7();
//! // SAFETY: the table's name is a static NUL-terminated string.
//! let name = unsafe { std::ffi::CStr::from_ptr(t.name) };
//! assert_eq!(name.to_str().unwrap(), "tcpx-sim_v7");
//! ```
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bounce;
pub mod comm;
pub mod config;
pub mod conn;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod error;
pub mod ffi;
pub mod gpu_wait;
pub mod helper;
pub mod hostmem;
pub mod log;
pub mod nic;
pub mod pages;
pub mod plugin;
pub mod request;
pub mod wire;

use tcpx::net::abi::NetPluginV7;

/// The exported `ncclNetPlugin_v7` table, for in-process use without `dlopen`.
pub fn plugin_v7() -> &'static NetPluginV7 {
    &ffi::ncclNetPlugin_v7.0
}

/// Helpers of the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::time::Duration;

    /// Drop `value` on another thread and wait at most `limit` for that drop to return, so a
    /// drop that hangs fails its test instead of hanging it. Whether it returned in time.
    pub fn dropped_within<T: Send + 'static>(value: T, limit: Duration) -> bool {
        let (done, dropped) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(value);
            let _ = done.send(());
        });
        dropped.recv_timeout(limit).is_ok()
    }
}
