//! Every way a call into tcpx-sim can fail, with the TCPX rule it enforces and the return code.
//!
//! tcpx-sim exists to turn TCPX contract violations into loud, testable failures. Each
//! [`SimError`] variant therefore carries three things besides its message:
//! * [`SimError::rc`]: the `ncclResult_t` the sim returns — TCPX's own code wherever TCPX returns
//!   one, `ncclInternalError` (3) where TCPX would crash, hang or corrupt memory instead;
//! * [`SimError::rule`]: the TCPX rule in a few words, so a WARN line says what was broken;
//! * [`SimError::tcpx`]: what the real plugin does in the same situation.
//!
//! Invariants:
//! * Peer and socket failures map to `ncclSystemError` (2), like TCPX; malformed arguments (a
//!   bad device index, negative size, foreign comm/request/handle) to `ncclInvalidArgument` (4);
//!   every other violation, NULL pointers included (TCPX's own NULL checks return 3), to
//!   `ncclInternalError` (3).
//! * Errors are cheap to build (no allocation) except the setup-path ones that carry text.
//!
//! ```
//! use tcpx_sim::error::SimError;
//! let e = SimError::TooManyRequests;
//! assert_eq!(e.rc().0, 3);
//! assert!(e.to_string().contains("unable to allocate requests"));
//! ```
#![forbid(unsafe_code)]

use core::fmt;

use tcpx::net::abi::{NcclResult, MAX_REQUESTS};

/// Which side of a connection a comm is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommKind {
    /// A listen comm (from `listen`).
    Listen,
    /// A send comm (from `connect`).
    Send,
    /// A receive comm (from `accept`).
    Recv,
}

impl fmt::Display for CommKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommKind::Listen => "listen comm",
            CommKind::Send => "send comm",
            CommKind::Recv => "recv comm",
        })
    }
}

/// A failure of one plugin call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimError {
    /// A call other than `init` came before a successful `init`.
    NotInitialized,
    /// `init` got a NULL logger; TCPX stores it and calls it on the first INFO.
    NoLogger,
    /// `NCCL_GPUDIRECTTCPX_SOCKET_ENABLE=0`.
    Disabled,
    /// `NCCL_DYNAMIC_CHUNK_SIZE` unset or 0.
    ChunkSizeUnset,
    /// `NCCL_SOCKET_NTHREADS` above `MAX_SOCKETS` caps the sockets per thread to 0.
    NoSockets {
        /// The helper threads per comm that were asked for.
        nthreads: usize,
    },
    /// `NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY` other than 3 (UNIX_CLIENT).
    FlowSteeringStrategy {
        /// The value that was set.
        value: i64,
    },
    /// An environment variable the sim parses (IFNAME, virtual NICs, …) is malformed.
    BadEnv {
        /// The variable.
        var: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// No network interface matched; TCPX's init fails with "no interface found".
    NoInterface {
        /// The filter that matched nothing.
        filter: String,
    },
    /// A pointer argument that must not be NULL was NULL.
    NullArgument {
        /// The argument's name in the C signature.
        arg: &'static str,
    },
    /// `dev` is not a device index of this plugin.
    BadDevice {
        /// The index passed.
        dev: i32,
        /// How many devices there are.
        ndev: usize,
    },
    /// A comm pointer does not point at a live comm of the expected kind.
    BadComm {
        /// What the call needs.
        expected: CommKind,
    },
    /// A request pointer does not point at a request of this plugin.
    BadRequest,
    /// The 128-byte handle was not written by this plugin's `listen`.
    BadHandle {
        /// What is wrong with it.
        why: &'static str,
    },
    /// A size argument is negative.
    NegativeSize {
        /// The value passed.
        size: i64,
    },
    /// Two threads called into the same comm at once.
    ConcurrentUse {
        /// The comm's kind.
        kind: CommKind,
    },
    /// A comm's internal lock was poisoned by an earlier panic.
    Poisoned,
    /// `connect` was called again on a handle buffer that already produced a comm or an error.
    SecondConnect,
    /// `accept` was called again on a listen comm that already produced a comm or an error.
    SecondAccept,
    /// The handle's `connect_args` field holds a value no `connect` of this process wrote.
    UnknownConnectArgs,
    /// The connection handshake failed (wrong peer, wrong handle, protocol mismatch).
    Handshake {
        /// What went wrong.
        why: String,
    },
    /// A connect or accept thread did not finish its handshake within
    /// `TCPX_SIM_HANDSHAKE_TIMEOUT_MS` (*sim*: TCPX waits forever).
    HandshakeTimeout {
        /// What the thread was still waiting for.
        waiting_for: &'static str,
        /// The timeout that passed.
        after: std::time::Duration,
    },
    /// `accept` was given `recvDevComm != NULL` but `*recvDevComm == NULL`.
    NullDeviceHandleStorage,
    /// More than 16 requests outstanding on one comm.
    TooManyRequests,
    /// `irecv` with `n != 1`.
    IrecvCount {
        /// The `n` passed.
        n: i32,
    },
    /// `test` on a request that is not the oldest not-yet-done request of its comm.
    TestNotHead {
        /// The slot of the request that was tested.
        slot: usize,
        /// The slot that must be tested next, if any request is outstanding.
        expected: Option<usize>,
    },
    /// `irecvConsumed` with `n != 1`.
    ConsumedCount {
        /// The `n` passed.
        n: i32,
    },
    /// `irecvConsumed` on a request that `test` has not reported done yet.
    ConsumedBeforeDone {
        /// The request's slot.
        slot: usize,
    },
    /// `irecvConsumed` on a done request that is not the oldest unconsumed one.
    ConsumedOutOfOrder {
        /// The request's slot.
        slot: usize,
        /// The slot that must be consumed next.
        expected: usize,
    },
    /// `irecvConsumed` on a request of another comm, a send request, or a free slot.
    ConsumedInvalid {
        /// The request's slot.
        slot: usize,
    },
    /// `irecv` on a comm accepted without a device-handle pointer.
    NoDeviceHandle,
    /// The peer sent a message larger than the receive posted for it.
    MessageTooLarge {
        /// Bytes the sender sent.
        sent: u32,
        /// Bytes the receive was posted with.
        posted: u32,
    },
    /// The peer closed the connection (a socket read returned 0).
    PeerClosed {
        /// Which socket saw it: `None` for the control socket, else the data socket index.
        socket: Option<usize>,
    },
    /// A socket call failed.
    Io {
        /// The operation (`"send"`, `"recv"`, `"connect"`, …).
        op: &'static str,
        /// The OS error number, if any.
        errno: Option<i32>,
        /// The error kind.
        kind: std::io::ErrorKind,
    },
    /// The peer's control stream is malformed (corrupt or desynchronised).
    Protocol {
        /// What was wrong.
        why: &'static str,
    },
    /// `isend`/`irecv` with a NULL `mhandle`.
    NullMhandle,
    /// An `mhandle` that `regMr` on this comm did not return (or that was deregistered).
    UnknownMhandle,
    /// A buffer that does not lie inside the registration passed with it.
    OutsideRegistration {
        /// Start of the buffer.
        addr: usize,
        /// Its size.
        size: usize,
        /// Start of the registration.
        base: usize,
        /// Size of the registration.
        len: usize,
    },
    /// `regMr` with a type other than `NCCL_PTR_HOST` / `NCCL_PTR_CUDA`.
    UnknownMemType {
        /// The `type` passed.
        ty: i32,
    },
    /// `regMr(NCCL_PTR_CUDA)` of an address that is not 4096-byte aligned.
    CudaNotAligned {
        /// The address passed.
        addr: usize,
    },
    /// `regMr(NCCL_PTR_CUDA)` with `NCCL_USE_DMA_BUF=0`.
    CudaNeedsDmaBuf,
    /// `regMr(NCCL_PTR_CUDA)` while the sim runs in host mode.
    CudaNeedsCudaMode,
    /// `regMr(NCCL_PTR_CUDA)` of a range that is not CUDA device memory of one GPU.
    NotDeviceMemory {
        /// Start of the range.
        addr: usize,
        /// Its size.
        size: usize,
    },
    /// `TCPX_SIM_CUDA=1` but CUDA mode cannot run (no `cuda` feature, no libcuda, no GPU).
    CudaUnavailable {
        /// Why.
        why: String,
    },
    /// The sim's own GPU work (a bounce-pool copy, scatter or poison kernel) did not finish
    /// within [`crate::gpu_wait::GPU_WAIT_TIMEOUT`].
    CudaWaitTimeout {
        /// The query that kept saying "not ready".
        call: &'static str,
        /// How long it was polled.
        after: std::time::Duration,
    },
    /// A CUDA driver call failed inside a plugin call or a helper thread.
    Cuda {
        /// The driver function.
        call: &'static str,
        /// Its `CUresult`.
        code: u32,
    },
    /// A receive into CUDA memory needs more than 2048 fragments (4 KiB pages).
    TooManyFragments {
        /// Fragments it would need.
        count: usize,
    },
    /// The bounce-pool page accounting broke (a page freed twice or unknown): a sim bug.
    PageAccounting {
        /// What the allocator refused.
        why: crate::pages::PageError,
    },
    /// `iflush` was called.
    Iflush,
    /// A Rust panic inside the sim was caught at the C boundary.
    Panic,
    /// The comm failed earlier; every later call on it fails with this.
    Broken {
        /// The code of the original failure.
        rc: NcclResult,
    },
}

impl SimError {
    /// The `ncclResult_t` returned for this failure.
    pub fn rc(&self) -> NcclResult {
        match self {
            SimError::PeerClosed { .. } | SimError::Io { .. } => NcclResult::SYSTEM_ERROR,
            SimError::BadDevice { .. }
            | SimError::BadComm { .. }
            | SimError::BadRequest
            | SimError::BadHandle { .. }
            | SimError::NegativeSize { .. } => NcclResult::INVALID_ARGUMENT,
            SimError::Broken { rc } => *rc,
            SimError::Cuda { .. } | SimError::CudaWaitTimeout { .. } => {
                NcclResult::UNHANDLED_CUDA_ERROR
            }
            _ => NcclResult::INTERNAL_ERROR,
        }
    }

    /// The TCPX rule this failure enforces, in a few words.
    pub fn rule(&self) -> &'static str {
        match self {
            SimError::NotInitialized => "init must succeed before any other call",
            SimError::NoLogger => "init needs a logger",
            SimError::Disabled => "NCCL_GPUDIRECTTCPX_SOCKET_ENABLE=0 disables the plugin",
            SimError::ChunkSizeUnset => "NCCL_DYNAMIC_CHUNK_SIZE must be set (> 0)",
            SimError::NoSockets { .. } => "sockets per comm = NSOCKS_PERTHREAD x NTHREADS <= 8",
            SimError::FlowSteeringStrategy { .. } => "only flow-steering strategy 3 (UNIX_CLIENT)",
            SimError::BadEnv { .. } => "well-formed environment",
            SimError::NoInterface { .. } => "at least one NIC matches the interface filter",
            SimError::NullArgument { .. } => "pointer arguments are not NULL",
            SimError::BadDevice { .. } => "0 <= dev < ndev",
            SimError::BadComm { .. } => "a live comm of the right kind",
            SimError::BadRequest => "a request returned by isend/irecv",
            SimError::BadHandle { .. } => "the 128-byte handle from listen",
            SimError::NegativeSize { .. } => "sizes are >= 0",
            SimError::ConcurrentUse { .. } => "one thread at a time per comm",
            SimError::Poisoned => "no use after an internal failure",
            SimError::SecondConnect => "one connect per handle buffer",
            SimError::SecondAccept => "one accept per listen comm",
            SimError::UnknownConnectArgs => "retry connect with the same handle buffer",
            SimError::Handshake { .. } => "connect to the listener the handle came from",
            SimError::HandshakeTimeout { .. } => {
                "the peer runs connect / accept for the handle concurrently"
            }
            SimError::NullDeviceHandleStorage => "accept's **recvDevComm is caller storage",
            SimError::TooManyRequests => {
                "MAX_REQUESTS=16 per comm (recv holds its slot until irecvConsumed)"
            }
            SimError::IrecvCount { .. } => "irecv n == 1 (maxRecvs=1)",
            SimError::TestNotHead { .. } => "test only the oldest outstanding request of a comm",
            SimError::ConsumedCount { .. } => "irecvConsumed n == 1",
            SimError::ConsumedBeforeDone { .. } => "irecvConsumed only after test reported done",
            SimError::ConsumedOutOfOrder { .. } => "irecvConsumed in FIFO order",
            SimError::ConsumedInvalid { .. } => "irecvConsumed on a done recv request of this comm",
            SimError::NoDeviceHandle => "accept needs a device-handle pointer on the recv side",
            SimError::MessageTooLarge { .. } => "never send more than the peer posted",
            SimError::PeerClosed { .. } => "the peer keeps its comm open until transfers finish",
            SimError::Io { .. } => "sockets stay healthy",
            SimError::Protocol { .. } => "both sides speak the same protocol",
            SimError::NullMhandle => "isend/irecv need the mhandle from regMr",
            SimError::UnknownMhandle => "an mhandle from regMr on the same comm",
            SimError::OutsideRegistration { .. } => "buffers lie inside their registration",
            SimError::UnknownMemType { .. } => "regMr type is NCCL_PTR_HOST or NCCL_PTR_CUDA",
            SimError::CudaNotAligned { .. } => "CUDA registrations are 4096-byte aligned",
            SimError::CudaNeedsDmaBuf => "CUDA regMr needs NCCL_USE_DMA_BUF=1",
            SimError::CudaNeedsCudaMode => "CUDA memory needs a GPU bounce pool",
            SimError::NotDeviceMemory { .. } => "NCCL_PTR_CUDA registrations are device memory",
            SimError::CudaUnavailable { .. } => "TCPX needs CUDA and a GPU",
            SimError::Cuda { .. } => "CUDA calls succeed",
            SimError::CudaWaitTimeout { .. } => {
                "the GPU runs the plugin's work (under NCCL: TCPX_SIM_BOUNCE_MEM=host)"
            }
            SimError::TooManyFragments { .. } => {
                "at most 2048 fragments per receive (keep receives <= 4 MiB)"
            }
            SimError::PageAccounting { .. } => "bounce pages are owned by one receive at a time",
            SimError::Iflush => "never call iflush",
            SimError::Panic => "no panic crosses the C boundary",
            SimError::Broken { .. } => "no use of a failed comm",
        }
    }

    /// What the real TCPX plugin does in this situation.
    pub fn tcpx(&self) -> &'static str {
        match self {
            SimError::NoLogger => "crashes on its first log line",
            SimError::ChunkSizeUnset => "accepts 0 and hangs on the first transfer",
            SimError::NoSockets { .. } => "creates comms without data sockets and hangs",
            SimError::NullArgument { .. } => {
                "returns ncclInternalError where it checks (test, regMr, irecvConsumed, mhandle), crashes elsewhere"
            }
            SimError::BadComm { .. }
            | SimError::BadRequest
            | SimError::BadHandle { .. }
            | SimError::UnknownConnectArgs
            | SimError::NullDeviceHandleStorage
            | SimError::NoDeviceHandle
            | SimError::BadDevice { .. } => "dereferences it and crashes",
            SimError::ConcurrentUse { .. } => "races on the comm's state",
            SimError::SecondConnect | SimError::SecondAccept => "uses freed memory",
            SimError::HandshakeTimeout { .. } => {
                "waits forever: connect / accept keep returning a NULL comm"
            }
            SimError::TestNotHead { expected: None, .. } => "returns success with done=0 forever",
            SimError::ConsumedInvalid { .. } => "returns success or ncclInternalError",
            SimError::MessageTooLarge { .. } => "overflows the receive buffer silently",
            SimError::NegativeSize { .. } | SimError::OutsideRegistration { .. } => {
                "reads or writes out of bounds"
            }
            SimError::Iflush => "reads an output argument as a request and crashes",
            SimError::CudaNeedsCudaMode => "registers the dmabuf through Google's kernel",
            SimError::NotDeviceMemory { .. } => "fails to export a dmabuf: ncclInternalError",
            SimError::CudaUnavailable { .. } => "fails init (cuInit / cuDeviceGetCount)",
            SimError::TooManyFragments { .. } => "\"received N/2048 segs, failstop\": exit(1)",
            SimError::PageAccounting { .. } => "n/a (a tcpx-sim bug)",
            SimError::Panic | SimError::Poisoned => "n/a",
            SimError::Broken { .. } => "returns the comm's error",
            SimError::CudaWaitTimeout { .. } => "n/a (the sim's own GPU work; it would hang)",
            _ => "returns the same code",
        }
    }
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::NotInitialized => write!(f, "called before a successful init"),
            SimError::NoLogger => write!(f, "init called with a NULL logger"),
            SimError::Disabled => write!(f, "disabled by NCCL_GPUDIRECTTCPX_SOCKET_ENABLE=0"),
            SimError::ChunkSizeUnset => write!(
                f,
                "NCCL_DYNAMIC_CHUNK_SIZE is unset or 0; set it (GCP uses 524288)"
            ),
            SimError::NoSockets { nthreads } => write!(
                f,
                "NCCL_SOCKET_NTHREADS={nthreads} > 8 caps NCCL_NSOCKS_PERTHREAD to 8/{nthreads} = 0 \
                 data sockets per comm"
            ),
            SimError::FlowSteeringStrategy { value } => write!(
                f,
                "NCCL_GPUDIRECTTCPX_FLOW_STEERING_STRATEGY={value} is unsupported (only 3)"
            ),
            SimError::BadEnv { var, why } => write!(f, "{var}: {why}"),
            SimError::NoInterface { filter } => {
                write!(f, "no interface found matching \"{filter}\"")
            }
            SimError::NullArgument { arg } => write!(f, "{arg} is NULL"),
            SimError::BadDevice { dev, ndev } => {
                write!(f, "dev {dev} out of range (the plugin has {ndev} devices)")
            }
            SimError::BadComm { expected } => {
                write!(f, "the comm pointer is not a live {expected} of tcpx-sim")
            }
            SimError::BadRequest => write!(f, "the request pointer is not a tcpx-sim request"),
            SimError::BadHandle { why } => write!(f, "bad connect handle: {why}"),
            SimError::NegativeSize { size } => write!(f, "negative size {size}"),
            SimError::ConcurrentUse { kind } => {
                write!(f, "two threads called into the same {kind} at once")
            }
            SimError::Poisoned => write!(f, "the comm failed internally earlier"),
            SimError::SecondConnect => write!(
                f,
                "connect called again on a handle buffer that already returned a comm or an error"
            ),
            SimError::SecondAccept => write!(
                f,
                "accept called again on a listen comm that already returned a comm or an error"
            ),
            SimError::UnknownConnectArgs => write!(
                f,
                "the handle's connect_args (offset 80) was not written by connect in this process"
            ),
            SimError::Handshake { why } => write!(f, "connection handshake failed: {why}"),
            SimError::HandshakeTimeout { waiting_for, after } => write!(
                f,
                "connection handshake timed out after {} ms waiting for {waiting_for} \
                 (TCPX_SIM_HANDSHAKE_TIMEOUT_MS)",
                after.as_millis()
            ),
            SimError::NullDeviceHandleStorage => write!(
                f,
                "*recvDevComm is NULL; pass a pointer to a caller-owned 32-byte ncclNetDeviceHandle_v7_t"
            ),
            SimError::TooManyRequests => write!(
                f,
                "unable to allocate requests: {MAX_REQUESTS} already outstanding on this comm"
            ),
            SimError::IrecvCount { n } => write!(f, "irecv with n={n}; TCPX supports only n=1"),
            SimError::TestNotHead { slot, expected } => match expected {
                Some(e) => write!(
                    f,
                    "test called with invalid request (slot {slot}); the oldest outstanding request is slot {e}"
                ),
                None => write!(
                    f,
                    "test called with invalid request (slot {slot}); no request is outstanding"
                ),
            },
            SimError::ConsumedCount { n } => write!(f, "irecvConsumed with n={n}; TCPX needs n=1"),
            SimError::ConsumedBeforeDone { slot } => write!(
                f,
                "irecvConsumed called with invalid request (slot {slot}): test has not reported it done"
            ),
            SimError::ConsumedOutOfOrder { slot, expected } => write!(
                f,
                "irecvConsumed called with invalid request (slot {slot}); the oldest unconsumed is slot {expected}"
            ),
            SimError::ConsumedInvalid { slot } => write!(
                f,
                "irecvConsumed called with invalid request (slot {slot}): not an outstanding recv of this comm"
            ),
            SimError::NoDeviceHandle => write!(
                f,
                "irecv on a comm accepted with recvDevComm == NULL; TCPX segfaults here on its unpack queue"
            ),
            SimError::MessageTooLarge { sent, posted } => write!(
                f,
                "the peer sent {sent} bytes into a receive posted with {posted} bytes"
            ),
            SimError::PeerClosed { socket: None } => {
                write!(f, "Net : Connection closed by remote peer (control socket)")
            }
            SimError::PeerClosed { socket: Some(i) } => {
                write!(f, "Net : Connection closed by remote peer (data socket {i})")
            }
            SimError::Io { op, errno, kind } => match errno {
                Some(e) => write!(f, "call to {op} failed: {kind} (errno {e})"),
                None => write!(f, "call to {op} failed: {kind}"),
            },
            SimError::Protocol { why } => write!(f, "control stream error: {why}"),
            SimError::NullMhandle => write!(f, "mhandle is null"),
            SimError::UnknownMhandle => {
                write!(f, "mhandle was not returned by regMr on this comm (or was deregistered)")
            }
            SimError::OutsideRegistration {
                addr,
                size,
                base,
                len,
            } => write!(
                f,
                "buffer {addr:#x}+{size} is outside its registration {base:#x}+{len}"
            ),
            SimError::UnknownMemType { ty } => write!(f, "unknown mem type {ty}"),
            SimError::CudaNotAligned { addr } => {
                write!(f, "data not aligned: {addr:#x} vs 4096")
            }
            SimError::CudaNeedsDmaBuf => {
                write!(f, "p2pdma api won't work with only RegMr (NCCL_USE_DMA_BUF=0)")
            }
            SimError::CudaNeedsCudaMode => write!(
                f,
                "CUDA memory needs tcpx-sim CUDA mode; this build runs in host mode"
            ),
            SimError::NotDeviceMemory { addr, size } => write!(
                f,
                "regMr(NCCL_PTR_CUDA) of {addr:#x}+{size}, which is not device memory of one GPU"
            ),
            SimError::CudaUnavailable { why } => {
                write!(f, "CUDA mode requested (TCPX_SIM_CUDA=1) but unavailable: {why}")
            }
            SimError::Cuda { call, code } => {
                write!(f, "call to {call} failed: {} ({code})", cuda_error_name(*code))
            }
            SimError::CudaWaitTimeout { call, after } => write!(
                f,
                "the sim's GPU work did not finish within {} ms ({call} kept saying not ready; \
                 under NCCL use TCPX_SIM_BOUNCE_MEM=host)",
                after.as_millis()
            ),
            SimError::TooManyFragments { count } => write!(
                f,
                "received {count}/2048 segs, failstop: a receive into CUDA memory needs more than \
                 2048 4 KiB pages"
            ),
            SimError::PageAccounting { why } => write!(f, "bounce pool accounting: {why}"),
            SimError::Iflush => write!(f, "never call iflush on TCPX"),
            SimError::Panic => write!(f, "internal panic caught at the C boundary"),
            SimError::Broken { rc } => write!(f, "the comm failed earlier with {rc}"),
        }
    }
}

impl std::error::Error for SimError {}

/// The name of a `CUresult` the sim may see (numbers from `cuda.h`).
pub fn cuda_error_name(code: u32) -> &'static str {
    match code {
        0 => "CUDA_SUCCESS",
        1 => "CUDA_ERROR_INVALID_VALUE",
        2 => "CUDA_ERROR_OUT_OF_MEMORY",
        3 => "CUDA_ERROR_NOT_INITIALIZED",
        4 => "CUDA_ERROR_DEINITIALIZED",
        34 => "CUDA_ERROR_STUB_LIBRARY",
        35 => "CUDA_ERROR_INSUFFICIENT_DRIVER",
        100 => "CUDA_ERROR_NO_DEVICE",
        101 => "CUDA_ERROR_INVALID_DEVICE",
        200 => "CUDA_ERROR_INVALID_IMAGE",
        201 => "CUDA_ERROR_INVALID_CONTEXT",
        209 => "CUDA_ERROR_NO_BINARY_FOR_GPU",
        218 => "CUDA_ERROR_INVALID_PTX",
        222 => "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        400 => "CUDA_ERROR_INVALID_HANDLE",
        500 => "CUDA_ERROR_NOT_FOUND",
        600 => "CUDA_ERROR_NOT_READY",
        700 => "CUDA_ERROR_ILLEGAL_ADDRESS",
        701 => "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES",
        702 => "CUDA_ERROR_LAUNCH_TIMEOUT",
        719 => "CUDA_ERROR_LAUNCH_FAILED",
        999 => "CUDA_ERROR_UNKNOWN",
        _ => "a CUDA error",
    }
}

impl SimError {
    /// Wraps an I/O error of `op`, mapping "connection closed" kinds to [`SimError::PeerClosed`].
    pub fn from_io(op: &'static str, socket: Option<usize>, e: &std::io::Error) -> SimError {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::UnexpectedEof | K::ConnectionReset | K::BrokenPipe | K::ConnectionAborted => {
                SimError::PeerClosed { socket }
            }
            kind => SimError::Io {
                op,
                errno: e.raw_os_error(),
                kind,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_tcpx() {
        assert_eq!(
            SimError::PeerClosed { socket: None }.rc(),
            NcclResult::SYSTEM_ERROR
        );
        assert_eq!(SimError::TooManyRequests.rc(), NcclResult::INTERNAL_ERROR);
        assert_eq!(
            SimError::IrecvCount { n: 2 }.rc(),
            NcclResult::INTERNAL_ERROR
        );
        assert_eq!(
            SimError::NullArgument { arg: "done" }.rc(),
            NcclResult::INTERNAL_ERROR
        );
        assert_eq!(
            SimError::NegativeSize { size: -1 }.rc(),
            NcclResult::INVALID_ARGUMENT
        );
        assert_eq!(
            SimError::Broken {
                rc: NcclResult::SYSTEM_ERROR
            }
            .rc(),
            NcclResult::SYSTEM_ERROR
        );
    }

    #[test]
    fn cuda_failures_are_unhandled_cuda_errors() {
        let e = SimError::Cuda {
            call: "cuMemAlloc",
            code: 2,
        };
        assert_eq!(e.rc(), NcclResult::UNHANDLED_CUDA_ERROR);
        assert!(e.to_string().contains("cuMemAlloc"));
        assert!(e.to_string().contains("CUDA_ERROR_OUT_OF_MEMORY (2)"));
        assert_eq!(
            SimError::TooManyFragments { count: 2049 }.rc(),
            NcclResult::INTERNAL_ERROR
        );
        assert!(SimError::TooManyFragments { count: 2049 }
            .to_string()
            .contains("2049/2048 segs"));
        assert_eq!(
            SimError::NotDeviceMemory { addr: 1, size: 2 }.rc(),
            NcclResult::INTERNAL_ERROR
        );
    }

    #[test]
    fn io_errors_that_mean_closed_become_peer_closed() {
        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(
            SimError::from_io("recv", Some(1), &e),
            SimError::PeerClosed { socket: Some(1) }
        );
        let e = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert!(matches!(
            SimError::from_io("send", None, &e),
            SimError::Io { op: "send", .. }
        ));
    }

    #[test]
    fn messages_name_tcpx_wording() {
        assert!(SimError::TestNotHead {
            slot: 3,
            expected: Some(2)
        }
        .to_string()
        .contains("test called with invalid request"));
        assert!(SimError::Iflush.to_string().contains("iflush"));
        let e = SimError::HandshakeTimeout {
            waiting_for: "the acceptor's ConnectionState",
            after: std::time::Duration::from_millis(1500),
        };
        assert_eq!(e.rc(), NcclResult::INTERNAL_ERROR);
        assert!(e.to_string().contains("after 1500 ms"), "{e}");
        assert!(
            e.to_string().contains("TCPX_SIM_HANDSHAKE_TIMEOUT_MS"),
            "{e}"
        );
        assert!(SimError::MessageTooLarge {
            sent: 10,
            posted: 5
        }
        .to_string()
        .contains("10 bytes"));
    }
}
