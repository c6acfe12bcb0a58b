//! tcpx-sim in CUDA mode, driven through the `tcpx::net` loader (`Plugin::load` of the built
//! `libtcpx_sim.so`), checked against TCPX's device-side contract
//! (`shared/reference/tcpx-plugin-contract.md` §2.9): the 24-byte unpack handle in device memory,
//! the metadata in device-mapped host memory, receives into GPU memory landing in the bounce
//! pool as shuffled 4 KiB pages (the GPU buffer itself never written), `cnt[slot]` and fragments
//! per slot, pages poisoned on `irecvConsumed`, receives waiting while the pool is exhausted,
//! TCPX's regMr rules for CUDA memory.
//!
//! GPU tests: compiled only with `--features cuda` (the sim must be built with its `cuda`
//! feature too: `tcpx-sim/cuda`); CI compiles them (`--no-run`), the lead runs the binary on the
//! GPU machine (`scripts/gpu/sim-cuda-check.sh`, also under compute-sanitizer). Without a GPU
//! every test FAILS: the plugin is loaded with `TCPX_SIM_CUDA=1`, whose `init` fails without
//! CUDA. CUDA buffers are allocated with cudarc directly; the expected bytes come from a
//! host-side unpack of the published fragments.
//!
//! Environment of this process (set once, before the plugin's `init`): 64 KiB chunks over 2 × 2
//! data sockets, a 16 MiB bounce pool (so the exhaustion test can fill it), CUDA mode required.
//! Tests share the pool, so each holds [`serial`] while it runs.
#![cfg(feature = "cuda")]

mod common;

use core::ffi::c_void;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::sys;
use tcpx::core::unpack::validate_fragments;
use tcpx::net::abi::{
    net_device_type, LoadMeta, NcclResult, NetUnpackMeta, UnpackNetDeviceHandle, MAX_FRAGMENTS,
    NET_DEVICE_UNPACK_VERSION,
};
use tcpx::net::{
    HostBuffer, MemKind, Plugin, PluginError, RecvComm, Region, Request, SendComm, TestResult,
};

const CHUNK: usize = 65536;
const POOL: usize = 16 << 20;
const PAGE: usize = 4096;
const POISON: u8 = 0xdb;
/// What receive buffers are filled with: the sim must never write them.
const SENTINEL: u8 = 0x5a;
const DEADLINE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// CUDA through cudarc's driver bindings
// ---------------------------------------------------------------------------------------------

fn ck(call: &str, r: sys::CUresult) {
    assert_eq!(r, sys::CUresult::CUDA_SUCCESS, "{call}");
}

/// GPU 0's primary context (retained once).
fn ctx() -> sys::CUcontext {
    struct Ctx(sys::CUcontext);
    // SAFETY: a retained primary context is a process-wide handle usable from any thread.
    unsafe impl Send for Ctx {}
    // SAFETY: as above; never mutated.
    unsafe impl Sync for Ctx {}
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        assert!(
            // SAFETY: only loads libcuda to look; cudarc panics on use without it.
            unsafe { sys::is_culib_present() },
            "the CUDA tests need libcuda.so and a GPU"
        );
        let mut dev = 0;
        let mut c = core::ptr::null_mut();
        // SAFETY: plain driver calls with writable outputs.
        unsafe {
            ck("cuInit", sys::cuInit(0));
            ck("cuDeviceGet", sys::cuDeviceGet(&mut dev, 0));
            ck(
                "cuDevicePrimaryCtxRetain",
                sys::cuDevicePrimaryCtxRetain(&mut c, dev),
            );
        }
        Ctx(c)
    })
    .0
}

/// Makes GPU 0 current on this thread (TCPX: `cudaSetDevice` before listen/accept/regMr).
fn on_gpu0() {
    let c = ctx();
    // SAFETY: a retained primary context.
    ck("cuCtxSetCurrent", unsafe { sys::cuCtxSetCurrent(c) });
}

fn dtoh(dst: &mut [u8], src: u64) {
    on_gpu0();
    // SAFETY: `dst` is writable for its length; `src` is device memory of at least that size
    // (every caller passes a range inside one of its allocations).
    ck("cuMemcpyDtoH", unsafe {
        sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len())
    });
}

/// A 4 KiB-aligned device allocation, registrable through the loader.
struct DeviceBuf {
    raw: u64,
    ptr: u64,
    len: usize,
}

impl DeviceBuf {
    fn new(len: usize) -> Arc<DeviceBuf> {
        on_gpu0();
        let mut raw = 0;
        // SAFETY: writable output, a context is current.
        ck("cuMemAlloc", unsafe {
            sys::cuMemAlloc_v2(&mut raw, len + PAGE)
        });
        let ptr = raw.div_ceil(PAGE as u64) * PAGE as u64;
        let b = DeviceBuf { raw, ptr, len };
        b.fill(SENTINEL);
        Arc::new(b)
    }

    fn fill(&self, v: u8) {
        on_gpu0();
        // SAFETY: `ptr..ptr+len` is inside our allocation.
        ck("cuMemsetD8", unsafe {
            sys::cuMemsetD8_v2(self.ptr, v, self.len)
        });
        // SAFETY: a context is current.
        ck("cuCtxSynchronize", unsafe { sys::cuCtxSynchronize() });
    }

    fn write(&self, off: usize, bytes: &[u8]) {
        assert!(off + bytes.len() <= self.len);
        on_gpu0();
        // SAFETY: the destination range is inside our allocation; the source a live slice.
        ck("cuMemcpyHtoD", unsafe {
            sys::cuMemcpyHtoD_v2(self.ptr + off as u64, bytes.as_ptr().cast(), bytes.len())
        });
    }

    fn read(&self, off: usize, len: usize) -> Vec<u8> {
        assert!(off + len <= self.len);
        let mut v = vec![0u8; len];
        dtoh(&mut v, self.ptr + off as u64);
        v
    }
}

// SAFETY: `ptr..ptr+len` is one device allocation that lives as long as the value; address,
// length and kind never change; the test never hands out host views of it.
unsafe impl Region for DeviceBuf {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr as *mut u8
    }
    fn len(&self) -> usize {
        self.len
    }
    fn kind(&self) -> MemKind {
        MemKind::Cuda
    }
}

impl Drop for DeviceBuf {
    fn drop(&mut self) {
        on_gpu0();
        // SAFETY: allocated in `new`, freed once; the comm that used it is closed (regions are
        // released only after closeSend/closeRecv).
        let _ = unsafe { sys::cuMemFree_v2(self.raw) };
    }
}

/// A 4 KiB-aligned host allocation registered as CUDA memory (to be refused).
struct HostAsCuda(HostBuffer);

// SAFETY: forwards a live HostBuffer's stable address and length; only its kind lies, which the
// plugin must detect; nothing reads its bytes through a shared view.
unsafe impl Region for HostAsCuda {
    fn as_ptr(&self) -> *mut u8 {
        Region::as_ptr(&self.0)
    }
    fn len(&self) -> usize {
        Region::len(&self.0)
    }
    fn kind(&self) -> MemKind {
        MemKind::Cuda
    }
}

/// A device allocation 16 bytes past a page boundary (to be refused: "data not aligned").
struct Misaligned(Arc<DeviceBuf>);

// SAFETY: a sub-range of a live device allocation, fixed for the value's life.
unsafe impl Region for Misaligned {
    fn as_ptr(&self) -> *mut u8 {
        (self.0.ptr + 16) as *mut u8
    }
    fn len(&self) -> usize {
        self.0.len - 16
    }
    fn kind(&self) -> MemKind {
        MemKind::Cuda
    }
}

fn pointer_attr<T: Default>(attr: sys::CUpointer_attribute, p: u64) -> Option<T> {
    on_gpu0();
    let mut v = T::default();
    // SAFETY: `v` is writable and of the attribute's type (chosen by each caller).
    let r = unsafe { sys::cuPointerGetAttribute((&mut v as *mut T).cast(), attr, p) };
    (r == sys::CUresult::CUDA_SUCCESS).then_some(v)
}

fn memory_type(p: u64) -> Option<u32> {
    pointer_attr::<u32>(
        sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
        p,
    )
}

// ---------------------------------------------------------------------------------------------
// Plugin, pairs, polling, WARN capture
// ---------------------------------------------------------------------------------------------

static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();

fn plugin() -> Arc<Plugin> {
    Arc::clone(PLUGIN.get_or_init(|| {
        std::env::set_var("NCCL_DYNAMIC_CHUNK_SIZE", CHUNK.to_string());
        std::env::set_var("NCCL_NSOCKS_PERTHREAD", "2");
        std::env::set_var("NCCL_SOCKET_NTHREADS", "2");
        std::env::set_var("TCPX_SIM_CUDA", "1");
        std::env::set_var("TCPX_SIM_BOUNCE_BYTES", POOL.to_string());
        std::env::remove_var("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME");
        std::env::remove_var("TCPX_SIM_VIRTUAL_NICS");
        std::env::remove_var("NCCL_USE_DMA_BUF");
        on_gpu0();
        Plugin::load(common::sim_plugin_path()).unwrap_or_else(|e| {
            panic!(
                "load tcpx-sim in CUDA mode (needs a GPU and a sim built with its `cuda` \
                 feature): {e}"
            )
        })
    }))
}

/// Tests share the GPU's bounce pool: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn deadline() -> Instant {
    Instant::now() + DEADLINE
}

/// A connected pair; accept runs on this thread (GPU 0 current), connect on another, because
/// TCPX's connect completes only once the peer accepts.
fn pair() -> (SendComm, RecvComm) {
    let p = plugin();
    on_gpu0();
    let listen = p.listen(0).expect("listen");
    let handle = *listen.handle();
    let p2 = Arc::clone(&p);
    let t = std::thread::spawn(move || {
        on_gpu0();
        p2.connect(0, &handle, deadline())
    });
    let recv = listen.accept(deadline()).expect("accept");
    let send = t.join().expect("connect thread").expect("connect");
    (send, recv)
}

fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = deadline();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn rc_of(e: &PluginError) -> NcclResult {
    match e {
        PluginError::Call { rc, .. }
        | PluginError::DeviceCall { rc, .. }
        | PluginError::Init { rc, .. } => *rc,
        other => panic!("expected a plugin return code, got {other}"),
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `f` with the plugin's log lines on this thread captured; returns all of them.
fn logged<T>(f: impl FnOnce() -> T) -> (T, Vec<(tracing::Level, String)>) {
    common::plugin_log(f)
}

fn has_warn(lines: &[(tracing::Level, String)], needles: &[&str]) -> bool {
    lines
        .iter()
        .any(|(l, m)| *l == tracing::Level::WARN && needles.iter().all(|n| m.contains(n)))
}

// ---------------------------------------------------------------------------------------------
// The unpack side, as a driver sees it
// ---------------------------------------------------------------------------------------------

/// The receive side's view: the device handle's contents and the host address of the metadata.
struct Unpack {
    handle: UnpackNetDeviceHandle,
    meta_host: *const NetUnpackMeta,
}

fn unpack_view(recv: &RecvComm) -> Unpack {
    let dh = recv.device_handle();
    assert_eq!(dh.net_device_type, net_device_type::UNPACK);
    assert_eq!(dh.net_device_version, NET_DEVICE_UNPACK_VERSION);
    assert_eq!(dh.size, 24);
    assert_eq!(dh.needs_proxy_progress, 1);
    let mut raw = [0u8; 24];
    dtoh(&mut raw, recv.unpack_handle_ptr() as u64);
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&raw[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    let handle = UnpackNetDeviceHandle {
        meta: word(0) as *mut NetUnpackMeta,
        bounce_buf: word(1) as *mut c_void,
        head: word(2),
    };
    let meta_host = pointer_attr::<usize>(
        sys::CUpointer_attribute::CU_POINTER_ATTRIBUTE_HOST_POINTER,
        handle.meta as u64,
    )
    .expect("meta is pinned host memory with a host pointer")
        as *const NetUnpackMeta;
    Unpack { handle, meta_host }
}

impl Unpack {
    fn cnt(&self, slot: usize) -> u64 {
        // SAFETY: the comm (and so its metadata) is open while the test uses this view; `cnt`
        // is read volatile because the plugin writes it from its own calls.
        unsafe { core::ptr::addr_of!((*self.meta_host).cnt[slot]).read_volatile() }
    }

    fn frags(&self, slot: usize) -> Vec<LoadMeta> {
        let n = self.cnt(slot) as usize;
        assert!(n <= MAX_FRAGMENTS, "cnt {n} > 2048");
        (0..n)
            .map(|i| {
                // SAFETY: as in `cnt`; `i < n <= 2048` stays inside `mem[slot]`.
                unsafe { core::ptr::addr_of!((*self.meta_host).mem[slot][i]).read_volatile() }
            })
            .collect()
    }

    /// The whole bounce pool, copied to the host.
    fn pool(&self) -> Vec<u8> {
        let mut v = vec![0u8; POOL];
        dtoh(&mut v, self.handle.bounce_buf as u64);
        v
    }

    /// Checks slot `slot`'s fragments for a `len`-byte receive (TCPX's layout: 4 KiB pages,
    /// running `dst_off`, tiles the receive) and unpacks them on the host from `pool`.
    fn unpack(&self, slot: usize, len: usize, pool: &[u8]) -> Vec<u8> {
        let frags = self.frags(slot);
        validate_fragments(&frags, POOL as u64, len as u64)
            .unwrap_or_else(|e| panic!("slot {slot}: fragments of a {len}-byte receive: {e:?}"));
        let mut at = 0u64;
        for f in &frags {
            assert_eq!(f.src_off as usize % PAGE, 0, "fragments start on a page");
            assert!(f.len as usize <= PAGE && f.len > 0);
            assert_eq!(f.dst_off, at, "dst_off is the running offset");
            at += u64::from(f.len);
        }
        let mut out = vec![0u8; len];
        for f in &frags {
            let (s, d, n) = (f.src_off as usize, f.dst_off as usize, f.len as usize);
            out[d..d + n].copy_from_slice(&pool[s..s + n]);
        }
        out
    }
}

fn pages_of(frags: &[LoadMeta]) -> Vec<u32> {
    frags.iter().map(|f| f.src_off / PAGE as u32).collect()
}

/// Whether `pages` (in chunk order) is NOT one ascending run: the shuffle happened.
fn scattered(pages: &[u32]) -> bool {
    pages.windows(2).any(|w| w[1] != w[0] + 1)
}

/// Drives a send and a receive of the same message to completion (test only heads).
fn transfer(send: &SendComm, sreq: Request, recv: &RecvComm, rreq: Request) {
    let (mut sdone, mut rdone) = (false, false);
    poll("transfer", || {
        if !sdone {
            sdone = send.test(sreq).expect("send test") == TestResult::Done;
        }
        if !rdone {
            rdone = recv.test(rreq).expect("recv test") == TestResult::Done;
        }
        (sdone && rdone).then_some(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn accept_hands_out_tcpx_s_device_handle() {
    let _g = serial();
    let (_send, recv) = pair();
    let u = unpack_view(&recv);
    assert_eq!(u.handle.head, u64::MAX, "head starts at -1");
    assert_eq!(
        memory_type(recv.unpack_handle_ptr() as u64),
        Some(sys::CUmemorytype_enum::CU_MEMORYTYPE_DEVICE as u32),
        "the 24-byte handle lives in device memory (cuMemAlloc)"
    );
    assert_eq!(
        memory_type(u.handle.meta as u64),
        Some(sys::CUmemorytype_enum::CU_MEMORYTYPE_HOST as u32),
        "meta is pinned, device-mapped host memory"
    );
    assert_eq!(
        memory_type(u.handle.bounce_buf as u64),
        Some(sys::CUmemorytype_enum::CU_MEMORYTYPE_DEVICE as u32),
        "the bounce pool is device memory"
    );
    // Fresh metadata is zero.
    assert!((0..16).all(|s| u.cnt(s) == 0));
    // A second comm on the same GPU shares the pool, with its own metadata.
    let (_s2, r2) = pair();
    let u2 = unpack_view(&r2);
    assert_eq!(u2.handle.bounce_buf, u.handle.bounce_buf);
    assert_ne!(u2.handle.meta, u.handle.meta);
}

#[test]
fn accept_without_a_current_context_uses_gpu0() {
    let _g = serial();
    let p = plugin();
    on_gpu0();
    let listen = p.listen(0).expect("listen");
    let handle = *listen.handle();
    let p2 = Arc::clone(&p);
    let t = std::thread::spawn(move || {
        on_gpu0();
        p2.connect(0, &handle, deadline())
    });
    // A fresh thread has no current CUDA context.
    let (recv, lines) = std::thread::spawn(move || logged(|| listen.accept(deadline())))
        .join()
        .expect("accept thread");
    let recv = recv.expect("accept");
    let _send = t.join().expect("connect thread").expect("connect");
    assert!(
        lines
            .iter()
            .any(|(l, m)| *l == tracing::Level::INFO && m.contains("using GPU 0")),
        "an INFO names the fallback: {lines:#?}"
    );
    let (_s, r) = pair();
    assert_eq!(
        unpack_view(&recv).handle.bounce_buf,
        unpack_view(&r).handle.bounce_buf,
        "GPU 0's pool"
    );
}

#[test]
fn gpu_to_gpu_receives_land_in_the_bounce_pool_as_shuffled_pages() {
    let _g = serial();
    let (send, recv) = pair();
    let u = unpack_view(&recv);
    let sizes = [
        1usize,
        4095,
        4096,
        4097,
        CHUNK,
        CHUNK + 1,
        200_000,
        1 << 20,
        (4 << 20) - 3,
        0,
        3 * CHUNK + 4096,
    ];
    let max = *sizes.iter().max().unwrap_or(&1);
    let src = DeviceBuf::new(max);
    let dst = DeviceBuf::new(max);
    let smh = send.register(src.clone()).expect("regMr CUDA send buffer");
    let rmh = recv.register(dst.clone()).expect("regMr CUDA recv buffer");
    for (k, &len) in sizes.iter().enumerate() {
        let data = pattern(k as u64 + 1, len);
        src.write(0, &data);
        let rreq = recv.irecv(&rmh, 0, len).expect("irecv");
        let sreq = send.isend(&smh, 0, len).expect("isend");
        transfer(&send, sreq, &recv, rreq);
        let slot = k % 16;
        assert_eq!(
            u.cnt(slot) as usize,
            len.div_ceil(PAGE),
            "message {k} ({len} B): one fragment per 4 KiB page"
        );
        let frags = u.frags(slot);
        let pages = pages_of(&frags);
        let mut sorted = pages.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), pages.len(), "a page holds one fragment");
        if pages.len() >= 8 {
            assert!(
                scattered(&pages),
                "message {k}: pages are shuffled: {pages:?}"
            );
        }
        let got = u.unpack(slot, len, &u.pool());
        assert!(
            got == data,
            "message {k} ({len} B) unpacked from the bounce pool differs"
        );
        assert!(
            dst.read(0, max).iter().all(|b| *b == SENTINEL),
            "message {k}: the sim wrote the CUDA receive buffer (the driver must unpack)"
        );
        recv.irecv_consumed(rreq).expect("irecvConsumed");
    }
    let _ = send.deregister(smh);
    let _ = recv.deregister(rmh);
}

#[test]
fn consume_before_unpack_reads_poison() {
    let _g = serial();
    let (send, recv) = pair();
    let u = unpack_view(&recv);
    let len = 256 << 10;
    let src = DeviceBuf::new(len);
    let dst = DeviceBuf::new(len);
    let smh = send.register(src.clone()).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    let data = pattern(99, len);
    src.write(0, &data);
    let rreq = recv.irecv(&rmh, 0, len).expect("irecv");
    let sreq = send.isend(&smh, 0, len).expect("isend");
    transfer(&send, sreq, &recv, rreq);
    let frags = u.frags(0);
    assert_eq!(
        u.unpack(0, len, &u.pool()),
        data,
        "bytes are there before the consume"
    );
    // A driver that consumes first and unpacks later reads the pages after they were given back.
    recv.irecv_consumed(rreq).expect("irecvConsumed");
    let pool = u.pool();
    for f in &frags {
        let page = &pool[f.src_off as usize..f.src_off as usize + PAGE];
        assert!(
            page.iter().all(|b| *b == POISON),
            "page at {:#x} was not poisoned on irecvConsumed",
            f.src_off
        );
    }
}

#[test]
fn many_receives_in_flight_use_distinct_slots_and_pages() {
    let _g = serial();
    let (send, recv) = pair();
    let u = unpack_view(&recv);
    let msg = 512 << 10;
    let src = DeviceBuf::new(16 * msg);
    let dst = DeviceBuf::new(16 * msg);
    let smh = send.register(src.clone()).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    for round in 0..2u64 {
        let datas: Vec<Vec<u8>> = (0..16)
            .map(|m| pattern(round * 100 + m as u64, msg))
            .collect();
        for (m, d) in datas.iter().enumerate() {
            src.write(m * msg, d);
        }
        let rreqs: Vec<Request> = (0..16)
            .map(|m| recv.irecv(&rmh, m * msg, msg).expect("irecv"))
            .collect();
        // The 17th receive while 16 are outstanding: TCPX's "unable to allocate requests".
        let e = recv.irecv(&rmh, 0, msg).expect_err("a 17th receive");
        assert_eq!(rc_of(&e), NcclResult::INTERNAL_ERROR);
        let sreqs: Vec<Request> = (0..16)
            .map(|m| send.isend(&smh, m * msg, msg).expect("isend"))
            .collect();
        let (mut s, mut r) = (0, 0);
        poll("16 transfers", || {
            if s < 16 && send.test(sreqs[s]).expect("send test") == TestResult::Done {
                s += 1;
            }
            if r < 16 && recv.test(rreqs[r]).expect("recv test") == TestResult::Done {
                r += 1;
            }
            (s == 16 && r == 16).then_some(())
        });
        // All 16 done and unconsumed: 16 slots, each with its own pages.
        let pool = u.pool();
        let mut all_pages = Vec::new();
        for (m, d) in datas.iter().enumerate() {
            assert_eq!(u.cnt(m) as usize, msg / PAGE, "round {round}, slot {m}");
            all_pages.extend(pages_of(&u.frags(m)));
            assert!(
                u.unpack(m, msg, &pool) == *d,
                "round {round}, message {m} differs"
            );
        }
        let n = all_pages.len();
        all_pages.sort_unstable();
        all_pages.dedup();
        assert_eq!(
            all_pages.len(),
            n,
            "no page is shared by unconsumed receives"
        );
        for r in rreqs {
            recv.irecv_consumed(r).expect("irecvConsumed in FIFO order");
        }
    }
    assert!(
        dst.read(0, 16 * msg).iter().all(|b| *b == SENTINEL),
        "the sim wrote a CUDA receive buffer"
    );
}

#[test]
fn an_exhausted_pool_makes_receives_wait_not_corrupt() {
    let _g = serial();
    let (send, recv) = pair();
    let u = unpack_view(&recv);
    // 4 MiB receives, 1024 pages each; the 16 MiB pool holds 4 of them.
    let msg = 4 << 20;
    let count = 6;
    let src = DeviceBuf::new(count * msg);
    let dst = DeviceBuf::new(count * msg);
    let smh = send.register(src.clone()).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    let datas: Vec<Vec<u8>> = (0..count).map(|m| pattern(500 + m as u64, msg)).collect();
    for (m, d) in datas.iter().enumerate() {
        src.write(m * msg, d);
    }
    let rreqs: Vec<Request> = (0..count)
        .map(|m| recv.irecv(&rmh, m * msg, msg).expect("irecv"))
        .collect();
    let sreqs: Vec<Request> = (0..count)
        .map(|m| send.isend(&smh, m * msg, msg).expect("isend"))
        .collect();
    let mut s = 0;
    let pump_sends = |s: &mut usize| {
        while *s < count && send.test(sreqs[*s]).expect("send test") == TestResult::Done {
            *s += 1;
        }
    };
    for (r, req) in rreqs.iter().enumerate().take(4) {
        poll("the receives that fit the pool", || {
            pump_sends(&mut s);
            (recv.test(*req).expect("recv test") == TestResult::Done).then_some(())
        });
        assert_eq!(u.cnt(r) as usize, msg / PAGE);
    }
    // The pool is full of unconsumed receives: the fifth cannot get pages, however long it is
    // tested (it waits, like a NIC out of RX pages, instead of overwriting pages still owned).
    let pool = u.pool();
    let snapshot: Vec<Vec<u8>> = (0..4).map(|m| u.unpack(m, msg, &pool)).collect();
    for _ in 0..2000 {
        pump_sends(&mut s);
        assert_eq!(
            recv.test(rreqs[4]).expect("recv test"),
            TestResult::Pending,
            "a receive completed without free bounce pages"
        );
    }
    let pool = u.pool();
    for m in 0..4 {
        assert!(
            u.unpack(m, msg, &pool) == snapshot[m],
            "owned pages were overwritten"
        );
        assert!(snapshot[m] == datas[m], "message {m} differs");
    }
    // Consuming frees pages; the waiting receives go on.
    for (m, req) in rreqs.iter().enumerate().take(count) {
        if m >= 4 {
            poll("a receive after pages were freed", || {
                pump_sends(&mut s);
                (recv.test(*req).expect("recv test") == TestResult::Done).then_some(())
            });
            assert!(
                u.unpack(m % 16, msg, &u.pool()) == datas[m],
                "message {m} differs"
            );
        }
        recv.irecv_consumed(*req).expect("irecvConsumed");
    }
    poll("the sends", || {
        pump_sends(&mut s);
        (s == count).then_some(())
    });
}

#[test]
fn host_buffers_in_cuda_mode_are_filled_directly() {
    let _g = serial();
    let (send, recv) = pair();
    let u = unpack_view(&recv);
    let len = 300_000;
    let src = DeviceBuf::new(len);
    let dev_dst = DeviceBuf::new(len);
    let data = pattern(7, len);
    src.write(0, &data);
    let host = Arc::new(HostBuffer::new(len).expect("host buffer"));
    let smh = send.register(src.clone()).expect("regMr CUDA");
    let rdev = recv.register(dev_dst.clone()).expect("regMr CUDA");
    let rhost = recv.register(host.clone()).expect("regMr host");
    // Message 0 (slot 0): GPU -> GPU, so slot 0 holds fragments.
    let r = recv.irecv(&rdev, 0, len).expect("irecv");
    let s = send.isend(&smh, 0, len).expect("isend");
    transfer(&send, s, &recv, r);
    assert_eq!(u.cnt(0) as usize, len.div_ceil(PAGE));
    recv.irecv_consumed(r).expect("irecvConsumed");
    // Messages 1..=15: small GPU -> host receives in slots 1..15.
    for k in 1..16 {
        let r = recv.irecv(&rhost, 0, 100).expect("irecv");
        let s = send.isend(&smh, 0, 100).expect("isend");
        transfer(&send, s, &recv, r);
        assert_eq!(u.cnt(k), 0, "host receives publish cnt 0");
        recv.irecv_consumed(r).expect("irecvConsumed");
    }
    // Message 16 reuses slot 0: a host receive there publishes cnt 0 over the old count, and
    // the bytes (copied device -> host by the sender) are in the host buffer.
    let r = recv.irecv(&rhost, 0, len).expect("irecv");
    let s = send.isend(&smh, 0, len).expect("isend");
    transfer(&send, s, &recv, r);
    assert_eq!(u.cnt(0), 0, "host receives publish cnt 0");
    recv.irecv_consumed(r).expect("irecvConsumed");
    assert!(
        host.lock().expect("host buffer idle")[..] == data[..],
        "GPU -> host bytes differ"
    );
}

#[test]
fn cuda_registrations_follow_tcpx_s_rules() {
    let _g = serial();
    let (send, recv) = pair();
    let dev = DeviceBuf::new(1 << 20);
    let (r, lines) = logged(|| send.register(Arc::new(Misaligned(dev.clone()))));
    let e = r.expect_err("a misaligned CUDA registration");
    assert_eq!(rc_of(&e), NcclResult::INTERNAL_ERROR);
    assert!(has_warn(&lines, &["data not aligned"]), "{lines:#?}");
    let host = HostAsCuda(HostBuffer::new(1 << 20).expect("host buffer"));
    let (r, lines) = logged(|| recv.register(Arc::new(host)));
    let e = r.expect_err("host memory registered as CUDA");
    assert_eq!(rc_of(&e), NcclResult::INTERNAL_ERROR);
    assert!(has_warn(&lines, &["not device memory"]), "{lines:#?}");
    // An aligned device buffer registers with both comms.
    assert!(send.register(dev.clone()).is_ok());
    assert!(recv.register(dev).is_ok());
}

#[test]
fn a_receive_over_2048_pages_fails_like_tcpx() {
    let _g = serial();
    let (send, recv) = pair();
    // 2049 pages (> NET_UNPACK_MAX_SLICE_PAGES): TCPX exits with "received N/2048 segs".
    let len = 2049 * PAGE;
    let src = DeviceBuf::new(len);
    let dst = DeviceBuf::new(len);
    let smh = send.register(src.clone()).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    let rreq = recv.irecv(&rmh, 0, len).expect("irecv");
    let _sreq = send.isend(&smh, 0, len).expect("isend");
    let (rc, lines) = logged(|| {
        poll("the receive to fail", || {
            let _ = send.test(_sreq);
            match recv.test(rreq) {
                Ok(TestResult::Pending) => None,
                Ok(TestResult::Done) => panic!("a 2049-page receive completed"),
                Err(e) => Some(rc_of(&e)),
            }
        })
    });
    assert_eq!(rc, NcclResult::INTERNAL_ERROR);
    assert!(has_warn(&lines, &["2048 segs"]), "{lines:#?}");
    drop(send);
    drop(recv);
}
