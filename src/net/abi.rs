//! `#[repr(C)]` mirrors of the NCCL net-plugin ABI, version 7, as TCPX exports it.
//!
//! Sources (see `shared/reference/tcpx-plugin-contract.md` §1): `NVIDIA/nccl@v2.19.3-1`
//! `src/include/nccl_net.h`, `src/include/net_device.h`, `src/include/nccl_common.h`,
//! `src/device/network/unpack/unpack_defs.h`; `google/nccl-plugin-gpudirecttcpx` `src/nccl_plugin.cc`.
//!
//! Invariants:
//! * Every struct here has compile-time size and offset asserts for x86-64 / aarch64 (LP64).
//! * Only v7 lives here. A v8+ table has other layouts (`regMr` takes `size_t`, the properties
//!   gain fields); it gets its own types when we support it and is never cast to v7.
//! * Function-pointer slots are `Option<…>`: a plugin may leave a slot NULL (TCPX leaves
//!   `regMrDmaBuf` NULL), and the loader checks the slots it needs.
//!
//! The unpack-metadata layouts (`loadMeta`, `netUnpackMeta`) live in [`tcpx_core::unpack`] because
//! the sans-IO core validates fragments; they are re-exported here so this module is the one
//! place that shows the whole ABI.

use core::ffi::{c_char, c_int, c_ulong, c_void};
use core::mem::{offset_of, size_of};

pub use tcpx_core::unpack::{LoadMeta, NetUnpackMeta, MAX_FRAGMENTS, UNPACK_QUEUE_DEPTH};

/// The exported symbol name of a v7 table.
pub const PLUGIN_SYMBOL_V7: &str = "ncclNetPlugin_v7";
/// Symbols of other table versions, used only to tell the user what a library does export.
pub const KNOWN_PLUGIN_SYMBOLS: [&str; 8] = [
    "ncclNetPlugin_v4",
    "ncclNetPlugin_v5",
    "ncclNetPlugin_v6",
    "ncclNetPlugin_v7",
    "ncclNetPlugin_v8",
    "ncclNetPlugin_v9",
    "ncclNetPlugin_v10",
    "ncclNetPlugin_v11",
];

/// `NCCL_NET_HANDLE_MAXSIZE`: the opaque listen handle exchanged out of band.
pub const NET_HANDLE_MAXSIZE: usize = 128;
/// `NCCL_PTR_HOST`.
pub const PTR_HOST: c_int = 0x1;
/// `NCCL_PTR_CUDA`.
pub const PTR_CUDA: c_int = 0x2;
/// `NCCL_PTR_DMABUF`.
pub const PTR_DMABUF: c_int = 0x4;
/// `NCCL_NET_DEVICE_UNPACK_VERSION`.
pub const NET_DEVICE_UNPACK_VERSION: c_int = 0x7;
/// `NCCL_NET_MTU_SIZE` / the devmem page size.
pub const NET_PAGE_SIZE: usize = 4096;
/// TCPX's `MAX_REQUESTS`: outstanding requests per comm (send and recv share them).
pub const MAX_REQUESTS: usize = 16;
/// TCPX's `MAX_SOCKETS`: data sockets per comm.
pub const MAX_SOCKETS: usize = 8;

/// An opaque 128-byte listen handle.
pub type NetHandle = [u8; NET_HANDLE_MAXSIZE];

/// `ncclResult_t`. A C enum, so 32 bits; kept as a transparent newtype because a plugin may
/// return a value outside the known set.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NcclResult(pub c_int);

impl NcclResult {
    /// `ncclSuccess`.
    pub const SUCCESS: Self = Self(0);
    /// `ncclUnhandledCudaError`.
    pub const UNHANDLED_CUDA_ERROR: Self = Self(1);
    /// `ncclSystemError`: a socket error or the peer closed (TCPX's rc 2).
    pub const SYSTEM_ERROR: Self = Self(2);
    /// `ncclInternalError`: TCPX's answer to every contract violation (rc 3).
    pub const INTERNAL_ERROR: Self = Self(3);
    /// `ncclInvalidArgument`.
    pub const INVALID_ARGUMENT: Self = Self(4);
    /// `ncclInvalidUsage`.
    pub const INVALID_USAGE: Self = Self(5);
    /// `ncclRemoteError`.
    pub const REMOTE_ERROR: Self = Self(6);
    /// `ncclInProgress`.
    pub const IN_PROGRESS: Self = Self(7);

    /// Whether this is `ncclSuccess`.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }

    /// NCCL's name for the code, or `"unknown"`.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "ncclSuccess",
            1 => "ncclUnhandledCudaError",
            2 => "ncclSystemError",
            3 => "ncclInternalError",
            4 => "ncclInvalidArgument",
            5 => "ncclInvalidUsage",
            6 => "ncclRemoteError",
            7 => "ncclInProgress",
            _ => "unknown",
        }
    }
}

impl core::fmt::Debug for NcclResult {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl core::fmt::Display for NcclResult {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

/// `ncclDebugLogLevel`.
pub mod log_level {
    use core::ffi::c_int;
    /// `NCCL_LOG_NONE`.
    pub const NONE: c_int = 0;
    /// `NCCL_LOG_VERSION`.
    pub const VERSION: c_int = 1;
    /// `NCCL_LOG_WARN`.
    pub const WARN: c_int = 2;
    /// `NCCL_LOG_INFO`.
    pub const INFO: c_int = 3;
    /// `NCCL_LOG_ABORT`.
    pub const ABORT: c_int = 4;
    /// `NCCL_LOG_TRACE`.
    pub const TRACE: c_int = 5;
}

/// `ncclDebugLogSubSys` flags (the ones a net plugin uses).
pub mod log_subsys {
    use core::ffi::c_ulong;
    /// `NCCL_INIT`.
    pub const INIT: c_ulong = 0x1;
    /// `NCCL_NET`.
    pub const NET: c_ulong = 0x10;
    /// `NCCL_ENV`.
    pub const ENV: c_ulong = 0x80;
    /// `NCCL_ALL`.
    pub const ALL: c_ulong = !0;
}

/// `ncclDebugLogger_t`: `void (*)(ncclDebugLogLevel, unsigned long flags, const char* file,
/// int line, const char* fmt, ...)`.
///
/// The real type is C-variadic. Rust cannot define such a function on stable, so the `tcpx`
/// loader passes a C shim; a plugin *calling* through this pointer (as tcpx-sim does) passes the
/// message already formatted as `"%s", msg`, which is a valid variadic call.
pub type DebugLogger = unsafe extern "C" fn(
    level: c_int,
    flags: c_ulong,
    file: *const c_char,
    line: c_int,
    fmt: *const c_char,
    ...
);

/// `ncclNetDeviceType`.
pub mod net_device_type {
    use core::ffi::c_int;
    /// `NCCL_NET_DEVICE_HOST`.
    pub const HOST: c_int = 0;
    /// `NCCL_NET_DEVICE_UNPACK`: received data must be unpacked from the bounce pool.
    pub const UNPACK: c_int = 1;
}

/// `ncclNetProperties_v7_t`, 56 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetProperties {
    /// Interface name, e.g. `eth1`.
    pub name: *mut c_char,
    /// `realpath` of the NIC's PCI device; may be NULL (e.g. `lo`).
    pub pci_path: *mut c_char,
    /// Unique id; TCPX uses the device index.
    pub guid: u64,
    /// `NCCL_PTR_HOST | NCCL_PTR_CUDA` on TCPX.
    pub ptr_support: c_int,
    /// Link speed in Mbps.
    pub speed: c_int,
    /// Port number; 0 on TCPX.
    pub port: c_int,
    /// Latency in µs; 0 on TCPX.
    pub latency: f32,
    /// Comms per device; 65536 on TCPX.
    pub max_comms: c_int,
    /// Buffers per `irecv`; 1 on TCPX.
    pub max_recvs: c_int,
    /// [`net_device_type`]: `UNPACK` on TCPX.
    pub net_device_type: c_int,
    /// `NCCL_NET_DEVICE_UNPACK_VERSION` on TCPX.
    pub net_device_version: c_int,
}

impl NetProperties {
    /// All-zero properties for a plugin to fill.
    pub const fn zeroed() -> Self {
        Self {
            name: core::ptr::null_mut(),
            pci_path: core::ptr::null_mut(),
            guid: 0,
            ptr_support: 0,
            speed: 0,
            port: 0,
            latency: 0.0,
            max_comms: 0,
            max_recvs: 0,
            net_device_type: 0,
            net_device_version: 0,
        }
    }
}

const _: () = {
    assert!(size_of::<NetProperties>() == 56);
    assert!(offset_of!(NetProperties, name) == 0);
    assert!(offset_of!(NetProperties, pci_path) == 8);
    assert!(offset_of!(NetProperties, guid) == 16);
    assert!(offset_of!(NetProperties, ptr_support) == 24);
    assert!(offset_of!(NetProperties, speed) == 28);
    assert!(offset_of!(NetProperties, port) == 32);
    assert!(offset_of!(NetProperties, latency) == 36);
    assert!(offset_of!(NetProperties, max_comms) == 40);
    assert!(offset_of!(NetProperties, max_recvs) == 44);
    assert!(offset_of!(NetProperties, net_device_type) == 48);
    assert!(offset_of!(NetProperties, net_device_version) == 52);
};

/// `ncclNetDeviceHandle_v7_t`, 32 bytes. On the receive side of TCPX, `accept` fills a
/// caller-owned instance; `handle` is then a **device** pointer to an [`UnpackNetDeviceHandle`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetDeviceHandle {
    /// [`net_device_type`].
    pub net_device_type: c_int,
    /// `NCCL_NET_DEVICE_UNPACK_VERSION`.
    pub net_device_version: c_int,
    /// Device pointer to the plugin's per-comm device state.
    pub handle: *mut c_void,
    /// Size of what `handle` points at (24 on TCPX).
    pub size: usize,
    /// 1 on TCPX: NCCL's proxy must keep calling `test`.
    pub needs_proxy_progress: c_int,
}

impl NetDeviceHandle {
    /// An empty handle for `accept` to fill.
    pub const fn zeroed() -> Self {
        Self {
            net_device_type: 0,
            net_device_version: 0,
            handle: core::ptr::null_mut(),
            size: 0,
            needs_proxy_progress: 0,
        }
    }
}

const _: () = {
    assert!(size_of::<NetDeviceHandle>() == 32);
    assert!(offset_of!(NetDeviceHandle, net_device_type) == 0);
    assert!(offset_of!(NetDeviceHandle, net_device_version) == 4);
    assert!(offset_of!(NetDeviceHandle, handle) == 8);
    assert!(offset_of!(NetDeviceHandle, size) == 16);
    assert!(offset_of!(NetDeviceHandle, needs_proxy_progress) == 24);
};

/// `unpackNetDeviceHandle`, 24 bytes, living in device memory: where a comm's unpack metadata and
/// the GPU's bounce pool are.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UnpackNetDeviceHandle {
    /// Device pointer (pinned, device-mapped host memory) to the comm's [`NetUnpackMeta`].
    pub meta: *mut NetUnpackMeta,
    /// Device pointer to the bounce pool that `LoadMeta::src_off` is relative to.
    pub bounce_buf: *mut c_void,
    /// NCCL's consumer head, initialised to `u64::MAX` (-1).
    pub head: u64,
}

const _: () = {
    assert!(size_of::<UnpackNetDeviceHandle>() == 24);
    assert!(offset_of!(UnpackNetDeviceHandle, meta) == 0);
    assert!(offset_of!(UnpackNetDeviceHandle, bounce_buf) == 8);
    assert!(offset_of!(UnpackNetDeviceHandle, head) == 16);
};

/// `ncclNet_v7_t`: 19 pointer-sized slots (152 bytes).
///
/// Signatures from `NVIDIA/nccl@v2.19.3-1: src/include/nccl_net.h`. Every function returns an
/// [`NcclResult`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetPluginV7 {
    /// Plugin name; `"GPUDirectTCPX_v7"` for TCPX.
    pub name: *const c_char,
    /// `init(logger)`.
    pub init: Option<unsafe extern "C" fn(logger: Option<DebugLogger>) -> NcclResult>,
    /// `devices(&ndev)`.
    pub devices: Option<unsafe extern "C" fn(ndev: *mut c_int) -> NcclResult>,
    /// `getProperties(dev, props)`.
    pub get_properties:
        Option<unsafe extern "C" fn(dev: c_int, props: *mut NetProperties) -> NcclResult>,
    /// `listen(dev, handle /* 128 B out */, &listen_comm)`.
    pub listen: Option<
        unsafe extern "C" fn(
            dev: c_int,
            handle: *mut c_void,
            listen_comm: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `connect(dev, handle /* in-out */, &send_comm, &send_dev_handle)`; success with a NULL
    /// comm means "not yet, call again with the same handle buffer".
    pub connect: Option<
        unsafe extern "C" fn(
            dev: c_int,
            handle: *mut c_void,
            send_comm: *mut *mut c_void,
            send_dev_comm: *mut *mut NetDeviceHandle,
        ) -> NcclResult,
    >,
    /// `accept(listen_comm, &recv_comm, &recv_dev_handle)`; success with a NULL comm means
    /// "not yet". TCPX writes into `**recv_dev_comm`, which must point at caller storage.
    pub accept: Option<
        unsafe extern "C" fn(
            listen_comm: *mut c_void,
            recv_comm: *mut *mut c_void,
            recv_dev_comm: *mut *mut NetDeviceHandle,
        ) -> NcclResult,
    >,
    /// `regMr(comm, data, size, type, &mhandle)`; `size` is an `int` in v7.
    pub reg_mr: Option<
        unsafe extern "C" fn(
            comm: *mut c_void,
            data: *mut c_void,
            size: c_int,
            ptr_type: c_int,
            mhandle: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `regMrDmaBuf`; NULL on TCPX.
    pub reg_mr_dma_buf: Option<
        unsafe extern "C" fn(
            comm: *mut c_void,
            data: *mut c_void,
            size: usize,
            ptr_type: c_int,
            offset: u64,
            fd: c_int,
            mhandle: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `deregMr(comm, mhandle)`.
    pub dereg_mr:
        Option<unsafe extern "C" fn(comm: *mut c_void, mhandle: *mut c_void) -> NcclResult>,
    /// `isend(send_comm, data, size, tag, mhandle, &request)`.
    pub isend: Option<
        unsafe extern "C" fn(
            send_comm: *mut c_void,
            data: *mut c_void,
            size: c_int,
            tag: c_int,
            mhandle: *mut c_void,
            request: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `irecv(recv_comm, n, data[], sizes[], tags[], mhandles[], &request)`; TCPX needs `n == 1`.
    pub irecv: Option<
        unsafe extern "C" fn(
            recv_comm: *mut c_void,
            n: c_int,
            data: *mut *mut c_void,
            sizes: *mut c_int,
            tags: *mut c_int,
            mhandles: *mut *mut c_void,
            request: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `iflush`; never call it on TCPX.
    pub iflush: Option<
        unsafe extern "C" fn(
            recv_comm: *mut c_void,
            n: c_int,
            data: *mut *mut c_void,
            sizes: *mut c_int,
            mhandles: *mut *mut c_void,
            request: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `test(request, &done, sizes)`; TCPX never writes `sizes`.
    pub test: Option<
        unsafe extern "C" fn(
            request: *mut c_void,
            done: *mut c_int,
            sizes: *mut c_int,
        ) -> NcclResult,
    >,
    /// `closeSend(send_comm)`.
    pub close_send: Option<unsafe extern "C" fn(send_comm: *mut c_void) -> NcclResult>,
    /// `closeRecv(recv_comm)`.
    pub close_recv: Option<unsafe extern "C" fn(recv_comm: *mut c_void) -> NcclResult>,
    /// `closeListen(listen_comm)`.
    pub close_listen: Option<unsafe extern "C" fn(listen_comm: *mut c_void) -> NcclResult>,
    /// `getDeviceMr(comm, mhandle, &dptr_mhandle)`; a no-op on TCPX.
    pub get_device_mr: Option<
        unsafe extern "C" fn(
            comm: *mut c_void,
            mhandle: *mut c_void,
            dptr_mhandle: *mut *mut c_void,
        ) -> NcclResult,
    >,
    /// `irecvConsumed(recv_comm, n, request)`: give the request's bounce pages and slot back.
    pub irecv_consumed: Option<
        unsafe extern "C" fn(recv_comm: *mut c_void, n: c_int, request: *mut c_void) -> NcclResult,
    >,
}

const _: () = {
    assert!(size_of::<NetPluginV7>() == 19 * size_of::<usize>());
    assert!(offset_of!(NetPluginV7, name) == 0);
    assert!(offset_of!(NetPluginV7, init) == 8);
    assert!(offset_of!(NetPluginV7, listen) == 4 * 8);
    assert!(offset_of!(NetPluginV7, reg_mr) == 7 * 8);
    assert!(offset_of!(NetPluginV7, reg_mr_dma_buf) == 8 * 8);
    assert!(offset_of!(NetPluginV7, isend) == 10 * 8);
    assert!(offset_of!(NetPluginV7, test) == 13 * 8);
    assert!(offset_of!(NetPluginV7, close_listen) == 16 * 8);
    assert!(offset_of!(NetPluginV7, irecv_consumed) == 18 * 8);
};

/// The names of the 19 slots, in table order, for error messages.
pub const SLOT_NAMES_V7: [&str; 19] = [
    "name",
    "init",
    "devices",
    "getProperties",
    "listen",
    "connect",
    "accept",
    "regMr",
    "regMrDmaBuf",
    "deregMr",
    "isend",
    "irecv",
    "iflush",
    "test",
    "closeSend",
    "closeRecv",
    "closeListen",
    "getDeviceMr",
    "irecvConsumed",
];
