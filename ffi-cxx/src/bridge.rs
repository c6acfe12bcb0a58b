//! The cxx bridge: the one module where Rust and C++ meet. It only declares; every function
//! lives in a plain Rust module of this crate ([`crate::comms`], [`crate::window`], …).
//!
//! Rules of the boundary:
//! * Hot-path calls (`comm_isend`, `comm_irecv`, `request_test`, `comm_irecv_consumed`, the
//!   window and endpoint post/poll calls) return a [`Status`](ffi::Status) (inside a small
//!   struct where they also hand back a value). They never throw and never unwind: each body
//!   runs under `catch_unwind`, and a panic comes back as `Status::Internal`.
//! * Setup calls (window, channel set, bootstrap and endpoint construction, connection setup)
//!   return `Result`: cxx turns an `Err` into a `rust::Error` exception carrying the message.
//!   They too catch panics and report them as errors.
//! * Comms, requests and memory handles cross as `u64` tokens (see [`crate::token`]): C++
//!   never holds a Rust pointer it could dangle, and every token is checked on the way in.
//!
//! ```
//! use tcpx_ffi_cxx::bridge::ffi::Status;
//! assert_eq!(Status::NotHead.repr, 4);
//! ```

use crate::bootstrap::{
    bootstrap_barrier, bootstrap_close, bootstrap_connect, bootstrap_finish,
    bootstrap_recv_handles, bootstrap_send_handles, bootstrap_serve,
};
use crate::channels::choose_nics;
use crate::comms::{
    comm_accept, comm_close, comm_connect, comm_dereg_mr, comm_irecv, comm_irecv_consumed,
    comm_isend, comm_listen, comm_outstanding, comm_reg_mr, request_test, request_unpack_slot,
};
use crate::endpoint::{
    endpoint_barrier, endpoint_connect, endpoint_finish, endpoint_in_flight, endpoint_new,
    endpoint_poll, endpoint_post, endpoint_register, endpoint_serve, endpoint_wait, Endpoint,
};
use crate::plugin::{plugin_device_count, plugin_load, plugin_properties};
use crate::status::{last_error, record_error};
use crate::unpack::unpack_validate;
use crate::window::{
    window_add, window_capacity, window_clear, window_event_done, window_is_full, window_len,
    window_new, window_set_event, window_set_unpack, window_try_release, Window,
};

/// The shared types and the declarations of every function C++ may call.
#[cxx::bridge(namespace = "tcpx::ffi")]
pub mod ffi {
    /// Outcome of a hot-path call. The numbering is part of the C++ API (`tcpx::Status` in
    /// `cpp/include/tcpx/status.h` has the same values).
    #[derive(Debug)]
    #[repr(i32)]
    enum Status {
        /// Done.
        Ok = 0,
        /// Not yet (a request not done, a window head not releasable, no completion).
        NotReady = 1,
        /// No room: 16 requests outstanding on the comm, a full window, too many transfers.
        Busy = 2,
        /// A null, unknown, closed or foreign handle, a wrong comm kind, a bad size or range.
        InvalidArgument = 3,
        /// `test`/`irecvConsumed` on a request that is not the oldest of its comm.
        NotHead = 4,
        /// `irecvConsumed` on a receive that `test` has not reported done.
        NotDone = 5,
        /// The peer closed or died (TCPX's rc 2 from `test`).
        PeerClosed = 6,
        /// The plugin returned another error; the `rc` next to it says which.
        PluginError = 7,
        /// A deadline passed.
        Timeout = 8,
        /// No plugin could be loaded.
        NoPlugin = 9,
        /// A bug in this library (a caught panic); the process stays usable.
        Internal = 10,
    }

    /// Which close a token gets.
    #[derive(Debug)]
    #[repr(i32)]
    enum CommKind {
        /// `closeListen`.
        Listen = 1,
        /// `closeSend`.
        Send = 2,
        /// `closeRecv`.
        Recv = 3,
    }

    /// Status, the C return code the C++ tree's wrapper would give, and a value (a token, a
    /// count).
    #[derive(Debug)]
    struct Outcome {
        /// What happened.
        status: Status,
        /// The C return code the C++ tree's wrapper gives (0, the plugin's rc, or -1).
        rc: i32,
        /// A token, a count or a byte count, per call.
        value: u64,
    }

    /// What `request_test` found.
    #[derive(Debug)]
    struct TestOutcome {
        /// What happened.
        status: Status,
        /// The C return code the C++ tree's wrapper gives (0, the plugin's rc, or -1).
        rc: i32,
        /// 1 when the request completed.
        done: i32,
        /// Bytes posted with the request (when done).
        size: i32,
    }

    /// The receive device handle `accept` filled (`ncclNetDeviceHandle_v7_t`, 32 bytes).
    #[derive(Debug)]
    struct DeviceHandle {
        /// `NCCL_NET_DEVICE_*`.
        net_device_type: i32,
        /// Device-handle version.
        net_device_version: i32,
        /// The plugin's handle pointer (TCPX: a device pointer).
        handle: u64,
        /// Bytes posted with the request (when done).
        size: u64,
        /// Whether NCCL must run a proxy progress thread.
        needs_proxy_progress: i32,
    }

    /// What `comm_accept` produced.
    #[derive(Debug)]
    struct AcceptOutcome {
        /// What happened.
        status: Status,
        /// The C return code the C++ tree's wrapper gives (0, the plugin's rc, or -1).
        rc: i32,
        /// The receive comm's token.
        comm: u64,
        /// The device handle the plugin filled.
        dev_handle: DeviceHandle,
    }

    /// `getProperties` of one device.
    #[derive(Debug)]
    struct NetProperties {
        /// What happened.
        status: Status,
        /// The C return code the C++ tree's wrapper gives (0, the plugin's rc, or -1).
        rc: i32,
        /// Interface name.
        name: String,
        /// PCI device path ("" when none).
        pci_path: String,
        /// Whether the plugin reported a PCI path.
        has_pci_path: bool,
        /// Device GUID.
        guid: u64,
        /// `NCCL_PTR_*` bits.
        ptr_support: i32,
        /// Link speed in Mbps.
        speed: i32,
        /// Port number.
        port: i32,
        /// Latency in µs.
        latency: f32,
        /// Comms per device.
        max_comms: i32,
        /// Buffers per `irecv`.
        max_recvs: i32,
        /// `NCCL_NET_DEVICE_*`.
        net_device_type: i32,
        /// Device-handle version.
        net_device_version: i32,
    }

    /// One step of `SlidingWindow::try_release_oldest`: the C++ tree's code (0/1/-1), why, and
    /// an event C++ must wait for before calling again (0: none).
    #[derive(Debug)]
    struct WindowRelease {
        /// 0 released or empty, 1 not ready, -1 error.
        code: i32,
        /// What happened.
        status: Status,
        /// An event to wait for before calling again (0: none).
        wait_event: u64,
        /// A receive that just completed and must be unpacked first (0: none): C++ runs its
        /// unpack hook, then `window_set_event`, then calls again.
        unpack_request: u64,
        /// That receive's chunk index.
        unpack_chunk: i32,
    }

    /// The plan a server sends with its handles.
    #[derive(Debug)]
    struct PeerPlan {
        /// GPU index.
        gpu: u32,
        /// Chunk size in bytes.
        chunk_bytes: u32,
        /// Bytes (per iteration, or moved).
        bytes: u64,
        /// Iterations.
        iters: u32,
    }

    /// The handles (`count × 128` bytes) and plan a client received.
    #[derive(Debug)]
    struct ReceivedHandles {
        /// The server's plan.
        plan: PeerPlan,
        /// Number of handles.
        count: u32,
        /// `count × 128` bytes of listen handles.
        handles: Vec<u8>,
    }

    /// The end-of-run summary both sides exchange.
    #[derive(Debug)]
    struct DoneSummary {
        /// Bytes (per iteration, or moved).
        bytes: u64,
        /// Checksum of everything moved.
        checksum: u64,
        /// Iterations.
        iters: u32,
    }

    /// `tcpx::EndpointConfig` from C++.
    #[derive(Debug)]
    struct EndpointOptions {
        /// Plugin to load ("" = `UCCL_TCPX_PLUGIN_PATH` / default).
        plugin_path: String,
        /// GPU index.
        gpu: u32,
        /// Channels (TCPX comms) per connection.
        channels: u16,
        /// Chunk size in bytes.
        chunk_bytes: u32,
        /// Comma-separated interface names ("" = by PCI topology).
        nics: String,
        /// Pin the progress thread to the GPU's NUMA node.
        pin_progress_thread: bool,
        /// Fail a transfer without progress for this long.
        stall_timeout_ms: u64,
    }

    /// A connection of an endpoint and what its bootstrap agreed.
    #[derive(Debug)]
    struct ConnectionInfo {
        /// Id.
        id: u32,
        /// The peer's GPU index.
        peer_gpu: u32,
        /// Channels (TCPX comms) per connection.
        channels: u16,
        /// Chunk size in bytes.
        chunk_bytes: u32,
        /// Bytes (per iteration, or moved).
        bytes: u64,
        /// Iterations.
        iters: u32,
    }

    /// A NIC as `tcpx_get_properties` reports it, for the channel → NIC choice.
    #[derive(Debug)]
    struct NicDesc {
        /// The plugin device index.
        dev: i32,
        /// Interface name.
        name: String,
        /// PCI device path ("" when none).
        pci_path: String,
    }

    /// What the linked `tcpx_test` answered.
    #[derive(Debug)]
    struct TestIo {
        /// Its return code.
        rc: i32,
        /// Its `done`.
        done: i32,
    }

    /// A finished transfer.
    #[derive(Debug)]
    struct TransferResult {
        /// What happened.
        status: Status,
        /// Id.
        id: u64,
        /// Bytes (per iteration, or moved).
        bytes: u64,
        /// Chunks (plugin requests) it took.
        chunks: u32,
        /// Time from start to last chunk, in ns.
        elapsed_ns: u64,
    }

    extern "Rust" {
        /// The request window behind `SlidingWindow`.
        type Window;
        /// The engine behind `tcpx::Endpoint`.
        type Endpoint;

        fn last_error() -> String;
        fn record_error(message: &str);

        fn plugin_load(path: &str) -> Outcome;
        fn plugin_device_count() -> Outcome;
        fn plugin_properties(dev: i32) -> NetProperties;

        fn comm_listen(dev: i32, handle: &mut [u8]) -> Outcome;
        fn comm_connect(dev: i32, handle: &[u8]) -> Outcome;
        fn comm_accept(listen: u64) -> AcceptOutcome;
        fn comm_reg_mr(comm: u64, data: u64, size: u64, ptr_type: i32) -> Outcome;
        fn comm_dereg_mr(comm: u64, mhandle: u64) -> Outcome;
        fn comm_isend(comm: u64, data: u64, size: i32, mhandle: u64) -> Outcome;
        fn comm_irecv(comm: u64, data: u64, size: i32, mhandle: u64) -> Outcome;
        fn request_test(request: u64) -> TestOutcome;
        fn request_unpack_slot(request: u64) -> Outcome;
        fn comm_irecv_consumed(comm: u64, request: u64) -> Outcome;
        fn comm_close(comm: u64, kind: CommKind) -> Outcome;
        fn comm_outstanding(comm: u64) -> Outcome;

        fn window_new(max_inflight: i32) -> Result<Box<Window>>;
        fn window_add(w: &mut Window, request: u64, chunk: i32, event: u64) -> Status;
        fn window_len(w: &Window) -> i32;
        fn window_capacity(w: &Window) -> i32;
        fn window_is_full(w: &Window) -> bool;
        fn window_try_release(w: &mut Window, comm: u64, is_recv: bool) -> WindowRelease;
        fn window_event_done(w: &mut Window) -> Status;
        fn window_set_unpack(w: &mut Window, on: bool);
        fn window_set_event(w: &mut Window, event: u64) -> Status;
        fn window_clear(w: &mut Window) -> Vec<u64>;

        fn choose_nics(gpu: i32, num_channels: i32, nics: &[NicDesc]) -> Result<Vec<i32>>;

        fn bootstrap_serve(port: i32, timeout_ms: u64) -> Result<i32>;
        fn bootstrap_connect(host: &str, port: i32, gpu: u32, timeout_ms: u64) -> Result<i32>;
        fn bootstrap_send_handles(
            fd: i32,
            handles: &[u8],
            plan: PeerPlan,
            timeout_ms: u64,
        ) -> Result<()>;
        fn bootstrap_recv_handles(fd: i32, timeout_ms: u64) -> Result<ReceivedHandles>;
        fn bootstrap_barrier(fd: i32, token: u32, timeout_ms: u64) -> Result<()>;
        fn bootstrap_finish(fd: i32, ours: DoneSummary, timeout_ms: u64) -> Result<DoneSummary>;
        fn bootstrap_close(fd: i32) -> bool;

        fn endpoint_new(options: &EndpointOptions) -> Result<Box<Endpoint>>;
        fn endpoint_register(ep: &mut Endpoint, addr: u64, len: u64, cuda: bool) -> Result<u32>;
        fn endpoint_serve(ep: &mut Endpoint, port: i32, timeout_ms: u64) -> Result<ConnectionInfo>;
        fn endpoint_connect(
            ep: &mut Endpoint,
            host: &str,
            port: i32,
            bytes: u64,
            iters: u32,
            timeout_ms: u64,
        ) -> Result<ConnectionInfo>;
        fn endpoint_post(
            ep: &mut Endpoint,
            conn: u32,
            buf: u32,
            offset: u64,
            len: u64,
            id: &mut u64,
        ) -> Status;
        fn endpoint_poll(ep: &mut Endpoint, out: &mut TransferResult) -> Status;
        fn endpoint_wait(
            ep: &mut Endpoint,
            id: u64,
            timeout_ms: u64,
            out: &mut TransferResult,
        ) -> Status;
        fn endpoint_in_flight(ep: &Endpoint) -> u32;
        fn endpoint_barrier(
            ep: &mut Endpoint,
            conn: u32,
            token: u32,
            timeout_ms: u64,
        ) -> Result<()>;
        fn endpoint_finish(
            ep: &mut Endpoint,
            conn: u32,
            ours: DoneSummary,
            timeout_ms: u64,
        ) -> Result<DoneSummary>;

        fn unpack_validate(metas: &[u64], bounce_len: u64, chunk_len: u64) -> Outcome;
    }

    // SAFETY: both take integers, not pointers into Rust memory. `SlidingWindow` (window.rs)
    // passes back only requests C++ handed it with `add_request` (a live request of the
    // window's comm, as the C++ tree's window required) and the comm it was made for, so the
    // linked `tcpx_test` / `tcpx_irecv_consumed` get what they would from the tree's own window.
    unsafe extern "C++" {
        include!("tcpx_window_io.h");

        /// `tcpx_test(request, &done, NULL)` through whichever `tcpx_*` wrappers the program
        /// links (ours, or the C++ tree's `tcpx_impl.cc`).
        fn window_io_test(request: u64) -> TestIo;
        /// `tcpx_irecv_consumed(comm, 1, request)`, likewise.
        fn window_io_consume(comm: u64, request: u64) -> i32;
    }
}
