//! TCPX contract tests: tcpx-sim, loaded by `dlopen` through the `tcpx` loader, must answer every
//! rule of `shared/reference/tcpx-plugin-contract.md` with TCPX's return code and a WARN (through
//! the NCCL logger, which the loader forwards to `tracing`) that names the rule.
//!
//! Layout:
//! * One plugin per process ([`plugin`]), loaded once with this file's environment
//!   (`NCCL_DYNAMIC_CHUNK_SIZE=65536`, 2 sockets per thread × 2 threads = 4 data sockets per
//!   comm, NIC `lo`), so the happy path crosses chunk and socket boundaries.
//! * Rules the loader's safe API lets through (17th request, test of a non-head request,
//!   consumed out of order, oversized send, peer close) are driven through it; rules it blocks
//!   on purpose (irecv n≠1, consumed before done, second accept/connect, NULL device handle,
//!   iflush, CUDA regMr) through its raw table ([`Plugin::table`]).
//! * Rules read at `init` (`NCCL_DYNAMIC_CHUNK_SIZE` unset, `SOCKET_ENABLE=0`, too many threads,
//!   virtual NICs) run in a child process of this test binary with their own environment
//!   ([`in_child`]), because the environment is read once per process.

mod common;

use core::ffi::{c_int, c_void};
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tcpx::net::abi::{
    net_device_type, NcclResult, NetDeviceHandle, NetHandle, NET_DEVICE_UNPACK_VERSION, PTR_CUDA,
};
use tcpx::net::{
    HostBuffer, MemHandle, Plugin, PluginError, RecvComm, Request, SendComm, TestResult,
};

/// Chunk size of this process's plugin.
const CHUNK: usize = 65536;
const DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Plugin, connections, polling
// ---------------------------------------------------------------------------------------------

static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();

/// The plugin of this process. The environment is set once, inside the `OnceLock`, before the
/// plugin's `init` reads it; every test goes through here first.
fn plugin() -> Arc<Plugin> {
    Arc::clone(PLUGIN.get_or_init(|| {
        // Host mode: these rules are about the host path (a cuda-built sim on a GPU box would
        // otherwise pick CUDA mode).
        std::env::set_var("TCPX_SIM_CUDA", "0");
        std::env::set_var("NCCL_DYNAMIC_CHUNK_SIZE", CHUNK.to_string());
        std::env::set_var("NCCL_NSOCKS_PERTHREAD", "2");
        std::env::set_var("NCCL_SOCKET_NTHREADS", "2");
        std::env::remove_var("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME");
        std::env::remove_var("TCPX_SIM_VIRTUAL_NICS");
        Plugin::load(common::sim_plugin_path()).expect("load tcpx-sim")
    }))
}

fn deadline() -> Instant {
    Instant::now() + DEADLINE
}

/// A connected pair on device `dev`: connect runs on a helper thread because, like TCPX,
/// connect completes only once the peer's accept runs.
fn pair_on(p: &Arc<Plugin>, listen_dev: usize, connect_dev: usize) -> (SendComm, RecvComm) {
    let listen = p.listen(listen_dev).expect("listen");
    let handle = *listen.handle();
    let p2 = Arc::clone(p);
    let t = std::thread::spawn(move || p2.connect(connect_dev, &handle, deadline()));
    let recv = listen.accept(deadline()).expect("accept");
    let send = t.join().expect("connect thread").expect("connect");
    (send, recv)
}

fn pair() -> (SendComm, RecvComm) {
    pair_on(&plugin(), 0, 0)
}

/// Calls `f` until it yields a value; panics at the deadline.
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

fn wait_send(s: &SendComm, r: Request) {
    poll("send done", || {
        (s.test(r).expect("send test") == TestResult::Done).then_some(())
    })
}

fn wait_recv(c: &RecvComm, r: Request) {
    poll("recv done", || {
        (c.test(r).expect("recv test") == TestResult::Done).then_some(())
    })
}

/// Tests `r` until it fails; returns the plugin's code.
fn wait_error_recv(c: &RecvComm, r: Request) -> NcclResult {
    poll("recv error", || match c.test(r) {
        Ok(TestResult::Pending) => None,
        Ok(TestResult::Done) => panic!("expected the receive to fail"),
        Err(e) => Some(rc_of(&e)),
    })
}

fn rc_of(e: &PluginError) -> NcclResult {
    match e {
        PluginError::Call { rc, .. }
        | PluginError::DeviceCall { rc, .. }
        | PluginError::Init { rc, .. } => *rc,
        other => panic!("expected a plugin return code, got {other}"),
    }
}

fn buffer(len: usize) -> Arc<HostBuffer> {
    Arc::new(HostBuffer::new(len).expect("host buffer"))
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

// ---------------------------------------------------------------------------------------------
// WARN capture: the loader forwards plugin log lines to `tracing` (target "tcpx::plugin").
// ---------------------------------------------------------------------------------------------

/// Runs `f` with the plugin's log lines captured (this thread only); returns the WARN lines.
fn warns<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let (out, lines) = common::plugin_log(f);
    let warns = lines
        .into_iter()
        .filter(|(l, _)| *l == tracing::Level::WARN)
        .map(|(_, m)| m)
        .collect();
    (out, warns)
}

/// Asserts `rc` and a WARN that contains every `needles` entry and names `rc`.
fn assert_violation(rc: NcclResult, want: NcclResult, lines: &[String], needles: &[&str]) {
    assert_eq!(rc, want, "return code; WARNs: {lines:#?}");
    let code = format!("rc {} ({})", want.name(), want.0);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&code) && needles.iter().all(|n| l.contains(n))),
        "no WARN with {needles:?} and {code:?} among {lines:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw table calls (for the rules the safe API refuses to break)
// ---------------------------------------------------------------------------------------------

fn raw_irecv(
    p: &Plugin,
    comm: *mut c_void,
    n: c_int,
    data: *mut u8,
    size: c_int,
    mh: *mut c_void,
) -> (NcclResult, *mut c_void) {
    let irecv = p.table().irecv.expect("irecv slot");
    let mut datas = [data.cast::<c_void>(); 2];
    let mut sizes = [size; 2];
    let mut tags = [0 as c_int; 2];
    let mut mhandles = [mh; 2];
    let mut req = ptr::null_mut();
    // SAFETY: the arrays hold 2 elements (enough for n <= 2), `req` is writable, the buffer is a
    // live registered HostBuffer region of at least `size` bytes kept alive by the caller.
    let rc = unsafe {
        irecv(
            comm,
            n,
            datas.as_mut_ptr(),
            sizes.as_mut_ptr(),
            tags.as_mut_ptr(),
            mhandles.as_mut_ptr(),
            &mut req,
        )
    };
    (rc, req)
}

fn raw_test(p: &Plugin, req: *mut c_void, sizes: &mut c_int) -> (NcclResult, c_int) {
    let test = p.table().test.expect("test slot");
    let mut done: c_int = -1;
    // SAFETY: `req` is a request of a live comm; `done` and `sizes` are writable locals.
    let rc = unsafe { test(req, &mut done, sizes) };
    (rc, done)
}

fn raw_consumed(p: &Plugin, comm: *mut c_void, n: c_int, req: *mut c_void) -> NcclResult {
    let f = p.table().irecv_consumed.expect("irecvConsumed slot");
    // SAFETY: `comm` is a live recv comm and `req` one of its requests.
    unsafe { f(comm, n, req) }
}

/// Accepts on a raw listen comm, passing `dev_handle` as `recvDevComm`, until the comm appears.
fn raw_accept(
    p: &Plugin,
    listen: *mut c_void,
    dev_handle: *mut *mut NetDeviceHandle,
) -> *mut c_void {
    let accept = p.table().accept.expect("accept slot");
    poll("raw accept", || {
        let mut comm = ptr::null_mut();
        // SAFETY: `listen` is a live listen comm; `comm` is writable; `dev_handle` is NULL or
        // points at a pointer to caller storage of 32 bytes.
        let rc = unsafe { accept(listen, &mut comm, dev_handle) };
        assert_eq!(rc, NcclResult::SUCCESS, "accept");
        (!comm.is_null()).then_some(comm)
    })
}

fn raw_close_recv(p: &Plugin, comm: *mut c_void) {
    let close = p.table().close_recv.expect("closeRecv slot");
    // SAFETY: `comm` is a live recv comm from raw accept, closed once here.
    assert_eq!(unsafe { close(comm) }, NcclResult::SUCCESS);
}

// ---------------------------------------------------------------------------------------------
// Child processes for rules read at init
// ---------------------------------------------------------------------------------------------

/// Runs test `name` in a child process with `env` (None = unset) applied on top of an
/// environment cleared of NCCL/TCPX variables. Returns true in the parent (the test is done:
/// the child passed) and false in the child (run the body).
fn in_child(name: &str, env: &[(&str, Option<&str>)]) -> bool {
    const MARK: &str = "TCPX_CONTRACT_CHILD";
    if std::env::var(MARK).ok().as_deref() == Some(name) {
        return false;
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([name, "--exact", "--nocapture", "--test-threads=1"]);
    for (k, _) in std::env::vars() {
        if k.starts_with("NCCL_") || k.starts_with("TCPX_SIM_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env(MARK, name);
    let out = cmd.output().expect("run the child test process");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "child test {name} failed:\n{text}"
    );
    true
}

/// In a child: loads the plugin and returns the error and the WARN lines of its init.
fn load_failure() -> (PluginError, Vec<String>) {
    let (r, lines) = warns(|| Plugin::load(common::sim_plugin_path()));
    match r {
        Ok(_) => panic!("init should have failed; WARNs: {lines:#?}"),
        Err(e) => (e, lines),
    }
}

// ---------------------------------------------------------------------------------------------
// ABI, properties, exported symbol
// ---------------------------------------------------------------------------------------------

#[test]
fn table_name_and_properties_are_tcpx_s() {
    let p = plugin();
    assert_eq!(p.name(), "tcpx-sim_v7");
    assert!(
        p.table().reg_mr_dma_buf.is_none(),
        "regMrDmaBuf must be NULL like TCPX"
    );
    assert_eq!(p.device_count().expect("devices"), 1);
    let d = p.properties(0).expect("getProperties");
    assert_eq!(d.name, "lo");
    assert_eq!(d.pci_path, None, "lo has no PCI device");
    assert_eq!(d.guid, 0);
    assert_eq!(d.ptr_support, 3, "NCCL_PTR_HOST | NCCL_PTR_CUDA");
    assert_eq!(
        d.speed_mbps, 10_000,
        "lo has no readable speed: TCPX's default"
    );
    assert_eq!((d.port, d.latency_us), (0, 0.0));
    assert_eq!(d.max_comms, 65536);
    assert_eq!(d.max_recvs, 1);
    assert_eq!(d.net_device_type, net_device_type::UNPACK);
    assert_eq!(d.net_device_version, NET_DEVICE_UNPACK_VERSION);
    let e = p.properties(1).expect_err("dev 1 does not exist");
    assert_eq!(rc_of(&e), NcclResult::INVALID_ARGUMENT);
}

/// The ELF dynamic symbol table of the built library exports `ncclNetPlugin_v7`, checked with a
/// small ELF64 reader and, where installed, `nm -D`.
#[test]
fn the_library_exports_ncclnetplugin_v7() {
    let path = common::sim_plugin_path();
    let bytes = std::fs::read(&path).expect("read the plugin");
    let syms = elf_dynamic_symbols(&bytes).expect("an ELF64 little-endian shared object");
    assert!(
        syms.iter().any(|s| s == "ncclNetPlugin_v7"),
        "ncclNetPlugin_v7 not among {} dynamic symbols",
        syms.len()
    );
    assert!(
        !syms.iter().any(|s| s == "ncclNetPlugin_v8"),
        "only v7 is exported"
    );
    if let Ok(out) = std::process::Command::new("nm")
        .arg("-D")
        .arg(&path)
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.lines()
                    .any(|l| l.ends_with(" ncclNetPlugin_v7") && l.contains(" D ")),
                "nm -D shows no data symbol ncclNetPlugin_v7"
            );
        }
    }
}

/// Names of the defined symbols in `.dynsym`.
fn elf_dynamic_symbols(b: &[u8]) -> Option<Vec<String>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    if b.get(0..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let shoff = u64_at(0x28)? as usize;
    let shentsize = usize::from(u16_at(0x3A)?);
    let shnum = usize::from(u16_at(0x3C)?);
    let section = |i: usize| {
        let o = shoff + i * shentsize;
        Some((
            u32_at(o + 4)?,             // sh_type
            u64_at(o + 0x18)? as usize, // sh_offset
            u64_at(o + 0x20)? as usize, // sh_size
            u32_at(o + 0x28)? as usize, // sh_link
            u64_at(o + 0x38)? as usize, // sh_entsize
        ))
    };
    let mut names = Vec::new();
    for i in 0..shnum {
        let (ty, off, size, link, entsize) = section(i)?;
        if ty != 11 || entsize == 0 {
            continue; // SHT_DYNSYM
        }
        let (_, stroff, strsize, _, _) = section(link)?;
        let strtab = b.get(stroff..stroff + strsize)?;
        for s in (off..off + size).step_by(entsize) {
            let name_off = u32_at(s)? as usize;
            let shndx = u16_at(s + 6)?;
            if shndx == 0 {
                continue; // undefined (imported)
            }
            let rest = strtab.get(name_off..)?;
            let end = rest.iter().position(|c| *c == 0)?;
            names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        }
    }
    Some(names)
}

#[test]
fn init_with_a_null_logger_fails_cleanly() {
    let p = plugin();
    let init = p.table().init.expect("init slot");
    // SAFETY: TCPX would store NULL and crash on its first log line; the sim must refuse.
    let rc = unsafe { init(None) };
    assert_eq!(rc, NcclResult::INTERNAL_ERROR);
    // The plugin stays usable (the failed init changed nothing).
    assert_eq!(p.device_count().expect("devices"), 1);
}

// ---------------------------------------------------------------------------------------------
// The happy path
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_arrive_intact_in_fifo_order_across_chunks_and_sockets() {
    let (send, recv) = pair();
    // SAFETY: tcpx-sim in host mode: the device handle points at host memory.
    let uh = unsafe { recv.read_unpack_handle_host() }.expect("unpack handle");
    let dh = recv.device_handle();
    assert_eq!(dh.net_device_type, net_device_type::UNPACK);
    assert_eq!(dh.net_device_version, NET_DEVICE_UNPACK_VERSION);
    assert_eq!(dh.size, 24);
    assert_eq!(dh.needs_proxy_progress, 1);
    assert!(!uh.meta.is_null());
    assert!(uh.bounce_buf.is_null(), "host mode has no bounce pool");
    assert_eq!(uh.head, u64::MAX);

    let sizes = [
        0,
        1,
        4096,
        CHUNK - 1,
        CHUNK,
        CHUNK + 1,
        7 * CHUNK / 2,
        4 << 20,
        123_457,
        0,
    ];
    let total: usize = sizes.iter().sum();
    let src_data = pattern(42, total);
    let src = buffer(total);
    src.lock().expect("lock src").copy_from_slice(&src_data);
    // Receives are posted with room to spare: only the sender's size counts.
    let dst = buffer(total + sizes.len() * 100);
    let smh = send.register(src.clone()).expect("regMr send");
    let rmh = recv.register(dst.clone()).expect("regMr recv");

    let mut sreqs = Vec::new();
    let mut rreqs = Vec::new();
    let (mut soff, mut roff) = (0, 0);
    for &n in &sizes {
        rreqs.push(recv.irecv(&rmh, roff, n + 100).expect("irecv"));
        sreqs.push(send.isend(&smh, soff, n).expect("isend"));
        soff += n;
        roff += n + 100;
    }
    for (k, (s, r)) in sreqs.iter().zip(&rreqs).enumerate() {
        // Poison this receive's unpack slot: the sim must publish cnt = 0 for host receives.
        // SAFETY: host-mode metadata in host memory, live while the comm is open; the test is
        // the only writer of a slot whose receive is not done yet.
        unsafe { ptr::addr_of_mut!((*uh.meta).cnt[k % 16]).write_volatile(0xDEAD) };
        wait_send(&send, *s);
        wait_recv(&recv, *r);
        // SAFETY: as above; the receive is done, the sim wrote cnt before test returned.
        let cnt = unsafe { ptr::addr_of!((*uh.meta).cnt[k % 16]).read_volatile() };
        assert_eq!(cnt, 0, "host receive {k}: cnt[{}]", k % 16);
    }
    {
        let got = dst.lock().expect("lock dst");
        let (mut soff, mut roff) = (0, 0);
        for &n in &sizes {
            assert_eq!(
                &got[roff..roff + n],
                &src_data[soff..soff + n],
                "message of {n} bytes"
            );
            assert!(
                got[roff + n..roff + n + 100].iter().all(|b| *b == 0),
                "nothing past the message"
            );
            soff += n;
            roff += n + 100;
        }
    }
    for r in rreqs {
        recv.irecv_consumed(r).expect("irecvConsumed");
    }
    assert_eq!(recv.outstanding(), 0);
    let ((), lines) = warns(|| {
        send.close().expect("closeSend");
        recv.close().expect("closeRecv");
    });
    assert!(lines.is_empty(), "a clean close warns nothing: {lines:#?}");
}

#[test]
fn test_never_writes_sizes() {
    let p = plugin();
    let (send, recv) = pair();
    let src = buffer(5000);
    let dst = buffer(5000);
    let smh = send.register(src).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    let (rc, req) = raw_irecv(&p, recv.as_raw(), 1, rmh.base(), 5000, rmh.as_raw());
    assert_eq!(rc, NcclResult::SUCCESS);
    let s = send.isend(&smh, 0, 5000).expect("isend");
    wait_send(&send, s);
    let mut sizes: c_int = -7;
    poll("raw recv done", || {
        let (rc, done) = raw_test(&p, req, &mut sizes);
        assert_eq!(rc, NcclResult::SUCCESS);
        (done == 1).then_some(())
    });
    assert_eq!(sizes, -7, "TCPX never writes sizes; neither may the sim");
    assert_eq!(raw_consumed(&p, recv.as_raw(), 1, req), NcclResult::SUCCESS);
}

#[test]
fn get_device_mr_is_a_no_op() {
    let p = plugin();
    let (send, _recv) = pair();
    let mh = send.register(buffer(4096)).expect("regMr");
    let f = p.table().get_device_mr.expect("getDeviceMr slot");
    let mut out = 0x1234usize as *mut c_void;
    // SAFETY: a live comm, its mhandle and a writable output slot.
    let rc = unsafe { f(send.as_raw(), mh.as_raw(), &mut out) };
    assert_eq!(rc, NcclResult::SUCCESS);
    assert_eq!(
        out as usize, 0x1234,
        "TCPX's getDeviceMr does not write its output"
    );
}

/// Like TCPX, connect cannot finish before the peer's accept thread runs: drive both sides.
#[test]
fn connect_completes_only_after_the_peer_accepts() {
    let p = plugin();
    let listen = p.listen(0).expect("listen");
    let connect = p.table().connect.expect("connect slot");
    let mut handle: NetHandle = *listen.handle();
    let mut dev_handle: *mut NetDeviceHandle = ptr::null_mut();
    let mut try_connect = |handle: &mut NetHandle| {
        let mut comm = ptr::null_mut();
        // SAFETY: `handle` is our writable 128-byte buffer, reused for every retry.
        let rc = unsafe { connect(0, handle.as_mut_ptr().cast(), &mut comm, &mut dev_handle) };
        assert_eq!(rc, NcclResult::SUCCESS);
        comm
    };
    assert!(
        try_connect(&mut handle).is_null(),
        "the first call only starts the thread"
    );
    assert_ne!(
        &handle[80..88],
        &[0u8; 8],
        "connect keeps its state in the handle at offset 80"
    );
    for _ in 0..200 {
        assert!(try_connect(&mut handle).is_null(), "no accept yet: no comm");
        std::thread::sleep(Duration::from_millis(1));
    }
    let t = std::thread::spawn(move || listen.accept(deadline()).map(drop));
    let comm = poll("connect after accept", || {
        let c = try_connect(&mut handle);
        (!c.is_null()).then_some(c)
    });
    t.join().expect("accept thread").expect("accept");
    let close = p.table().close_send.expect("closeSend slot");
    // SAFETY: the comm connect returned, closed once.
    assert_eq!(unsafe { close(comm) }, NcclResult::SUCCESS);
}

// ---------------------------------------------------------------------------------------------
// Request limits and ordering
// ---------------------------------------------------------------------------------------------

#[test]
fn the_seventeenth_request_is_unable_to_allocate() {
    let (send, recv) = pair();
    let smh = send.register(buffer(4096)).expect("regMr");
    let rmh = recv.register(buffer(4096)).expect("regMr");
    let sends: Vec<Request> = (0..16)
        .map(|_| send.isend(&smh, 0, 16).expect("isend"))
        .collect();
    let (r, lines) = warns(|| send.isend(&smh, 0, 16));
    let rc = rc_of(&r.expect_err("17th isend"));
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["unable to allocate requests", "MAX_REQUESTS=16"],
    );

    let recvs: Vec<Request> = (0..16)
        .map(|_| recv.irecv(&rmh, 0, 16).expect("irecv"))
        .collect();
    let (r, lines) = warns(|| recv.irecv(&rmh, 0, 16));
    assert_violation(
        rc_of(&r.expect_err("17th irecv")),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["unable to allocate requests"],
    );

    // A done receive still holds its slot until irecvConsumed.
    wait_send(&send, sends[0]);
    wait_recv(&recv, recvs[0]);
    let (r, lines) = warns(|| recv.irecv(&rmh, 0, 16));
    assert_violation(
        rc_of(&r.expect_err("done, unconsumed")),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["unable to allocate requests"],
    );
    recv.irecv_consumed(recvs[0]).expect("irecvConsumed");
    let again = recv
        .irecv(&rmh, 0, 16)
        .expect("a consumed slot is free again");
    // A done send frees its slot at test.
    let more = send
        .isend(&smh, 0, 16)
        .expect("a done send's slot is free again");
    for (s, r) in sends[1..].iter().zip(&recvs[1..]) {
        wait_send(&send, *s);
        wait_recv(&recv, *r);
        recv.irecv_consumed(*r).expect("irecvConsumed");
    }
    wait_send(&send, more);
    wait_recv(&recv, again);
    recv.irecv_consumed(again).expect("irecvConsumed");
}

#[test]
fn size_zero_messages_take_a_slot_with_cnt_zero() {
    let (send, recv) = pair();
    // SAFETY: host mode: the device handle points at host memory.
    let uh = unsafe { recv.read_unpack_handle_host() }.expect("unpack handle");
    let smh = send.register(buffer(4096)).expect("regMr");
    let rmh = recv.register(buffer(4096)).expect("regMr");
    let mut recvs = Vec::new();
    for k in 0..16 {
        // SAFETY: the slot's receive is not posted yet; only the test writes it.
        unsafe { ptr::addr_of_mut!((*uh.meta).cnt[k]).write_volatile(77) };
        let r = recv.irecv(&rmh, 0, 4096).expect("irecv");
        let s = send.isend(&smh, 0, 0).expect("isend of 0 bytes");
        wait_send(&send, s);
        wait_recv(&recv, r);
        // SAFETY: done: the sim published the slot's count.
        let cnt = unsafe { ptr::addr_of!((*uh.meta).cnt[k]).read_volatile() };
        assert_eq!(cnt, 0, "size-0 receive {k} publishes cnt = 0 in slot {k}");
        recvs.push(r);
    }
    let (r, lines) = warns(|| recv.irecv(&rmh, 0, 4096));
    assert_violation(
        rc_of(&r.expect_err("17th")),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["unable to allocate requests"],
    );
    for r in recvs {
        recv.irecv_consumed(r).expect("irecvConsumed");
    }
}

#[test]
fn irecv_with_n_other_than_one_is_an_internal_error() {
    let p = plugin();
    let (_send, recv) = pair();
    let rmh = recv.register(buffer(4096)).expect("regMr");
    for n in [0, 2] {
        let ((rc, req), lines) =
            warns(|| raw_irecv(&p, recv.as_raw(), n, rmh.base(), 4096, rmh.as_raw()));
        assert!(req.is_null());
        assert_violation(
            rc,
            NcclResult::INTERNAL_ERROR,
            &lines,
            &[&format!("n={n}"), "irecv n == 1"],
        );
    }
}

#[test]
fn test_of_a_request_behind_the_oldest_is_an_invalid_request() {
    let (send, recv) = pair();
    let smh = send.register(buffer(1 << 20)).expect("regMr");
    let rmh = recv.register(buffer(1 << 20)).expect("regMr");
    let s0 = send.isend(&smh, 0, 1 << 19).expect("isend");
    let s1 = send.isend(&smh, 1 << 19, 1 << 19).expect("isend");
    let (r, lines) = warns(|| send.test(s1));
    assert_violation(
        rc_of(&r.expect_err("test of s1 before s0")),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &[
            "test called with invalid request",
            "oldest outstanding request",
        ],
    );
    let r0 = recv.irecv(&rmh, 0, 1 << 19).expect("irecv");
    let r1 = recv.irecv(&rmh, 1 << 19, 1 << 19).expect("irecv");
    let (r, lines) = warns(|| recv.test(r1));
    assert_violation(
        rc_of(&r.expect_err("test of r1 before r0")),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["test called with invalid request"],
    );
    // The violation does not break the comms.
    wait_send(&send, s0);
    wait_send(&send, s1);
    wait_recv(&recv, r0);
    wait_recv(&recv, r1);
}

#[test]
fn irecv_consumed_out_of_order_is_an_internal_error() {
    let (send, recv) = pair();
    let smh = send.register(buffer(8192)).expect("regMr");
    let rmh = recv.register(buffer(8192)).expect("regMr");
    let r0 = recv.irecv(&rmh, 0, 4096).expect("irecv");
    let r1 = recv.irecv(&rmh, 4096, 4096).expect("irecv");
    let s0 = send.isend(&smh, 0, 4096).expect("isend");
    let s1 = send.isend(&smh, 4096, 4096).expect("isend");
    wait_send(&send, s0);
    wait_send(&send, s1);
    wait_recv(&recv, r0);
    wait_recv(&recv, r1);
    let (r, lines) = warns(|| recv.irecv_consumed(r1));
    assert_violation(
        rc_of(&r.expect_err("consume r1 before r0")),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["irecvConsumed called with invalid request", "FIFO"],
    );
    recv.irecv_consumed(r0).expect("r0 first");
    recv.irecv_consumed(r1).expect("then r1");
}

#[test]
fn irecv_consumed_before_done_or_with_n_other_than_one_is_an_internal_error() {
    let p = plugin();
    let (send, recv) = pair();
    let smh = send.register(buffer(4096)).expect("regMr");
    let rmh = recv.register(buffer(4096)).expect("regMr");
    let (rc, req) = raw_irecv(&p, recv.as_raw(), 1, rmh.base(), 4096, rmh.as_raw());
    assert_eq!(rc, NcclResult::SUCCESS);
    let (rc, lines) = warns(|| raw_consumed(&p, recv.as_raw(), 1, req));
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["test has not reported it done"],
    );
    let s = send.isend(&smh, 0, 4096).expect("isend");
    wait_send(&send, s);
    let mut sizes = 0;
    poll("recv done", || {
        let (rc, done) = raw_test(&p, req, &mut sizes);
        assert_eq!(rc, NcclResult::SUCCESS);
        (done == 1).then_some(())
    });
    let (rc, lines) = warns(|| raw_consumed(&p, recv.as_raw(), 2, req));
    assert_violation(rc, NcclResult::INTERNAL_ERROR, &lines, &["n=2"]);
    let (rc, lines) = warns(|| raw_consumed(&p, send.as_raw(), 1, req));
    assert_eq!(
        rc,
        NcclResult::INVALID_ARGUMENT,
        "a send comm is not a recv comm: {lines:#?}"
    );
    assert_eq!(raw_consumed(&p, recv.as_raw(), 1, req), NcclResult::SUCCESS);
    let (rc, lines) = warns(|| raw_consumed(&p, recv.as_raw(), 1, ptr::null_mut()));
    assert_violation(rc, NcclResult::INTERNAL_ERROR, &lines, &["request is NULL"]);
}

// ---------------------------------------------------------------------------------------------
// Connection setup rules
// ---------------------------------------------------------------------------------------------

#[test]
fn a_second_accept_on_a_listen_comm_is_an_internal_error() {
    let p = plugin();
    let listen = p.listen(0).expect("listen");
    let handle = *listen.handle();
    let p2 = Arc::clone(&p);
    let t = std::thread::spawn(move || p2.connect(0, &handle, deadline()));
    let mut storage = NetDeviceHandle::zeroed();
    let mut dev: *mut NetDeviceHandle = &mut storage;
    let comm = raw_accept(&p, listen.as_raw(), &mut dev);
    let _send = t.join().expect("connect thread").expect("connect");
    let accept = p.table().accept.expect("accept slot");
    let mut again = ptr::null_mut();
    // SAFETY: the listen comm is still open; outputs are writable locals.
    let (rc, lines) = warns(|| unsafe { accept(listen.as_raw(), &mut again, &mut dev) });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["one accept per listen comm"],
    );
    assert!(again.is_null());
    raw_close_recv(&p, comm);
}

#[test]
fn a_second_connect_with_the_same_handle_is_an_internal_error() {
    let p = plugin();
    let connect = p.table().connect.expect("connect slot");
    let listen = p.listen(0).expect("listen");
    let mut handle: NetHandle = *listen.handle();
    let mut dev: *mut NetDeviceHandle = ptr::null_mut();
    let t = std::thread::spawn(move || listen.accept(deadline()).map(drop));
    let comm = poll("raw connect", || {
        let mut comm = ptr::null_mut();
        // SAFETY: our writable handle buffer, reused for every retry.
        let rc = unsafe { connect(0, handle.as_mut_ptr().cast(), &mut comm, &mut dev) };
        assert_eq!(rc, NcclResult::SUCCESS);
        (!comm.is_null()).then_some(comm)
    });
    t.join().expect("accept thread").expect("accept");
    let mut again = ptr::null_mut();
    // SAFETY: as above.
    let (rc, lines) =
        warns(|| unsafe { connect(0, handle.as_mut_ptr().cast(), &mut again, &mut dev) });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["one connect per handle buffer"],
    );
    assert!(again.is_null());
    let close = p.table().close_send.expect("closeSend slot");
    // SAFETY: the comm connect returned, closed once.
    assert_eq!(unsafe { close(comm) }, NcclResult::SUCCESS);
}

#[test]
fn accept_without_a_device_handle_fails_the_first_irecv() {
    let p = plugin();
    let listen = p.listen(0).expect("listen");
    let handle = *listen.handle();
    let p2 = Arc::clone(&p);
    let t = std::thread::spawn(move || p2.connect(0, &handle, deadline()));
    let comm = raw_accept(&p, listen.as_raw(), ptr::null_mut());
    let _send = t.join().expect("connect thread").expect("connect");
    let buf = buffer(4096);
    let reg_mr = p.table().reg_mr.expect("regMr slot");
    let mut mh = ptr::null_mut();
    // SAFETY: a live recv comm and a live 4096-byte host buffer that outlives the comm.
    let rc = unsafe {
        reg_mr(
            comm,
            tcpx::net::Region::as_ptr(&*buf).cast(),
            4096,
            1,
            &mut mh,
        )
    };
    assert_eq!(rc, NcclResult::SUCCESS);
    let ((rc, req), lines) =
        warns(|| raw_irecv(&p, comm, 1, tcpx::net::Region::as_ptr(&*buf), 4096, mh));
    assert!(req.is_null());
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["recvDevComm == NULL", "segfaults"],
    );
    raw_close_recv(&p, comm);
}

#[test]
fn accept_with_null_device_handle_storage_is_an_internal_error() {
    let p = plugin();
    let listen = p.listen(0).expect("listen");
    let handle = *listen.handle();
    let p2 = Arc::clone(&p);
    let t = std::thread::spawn(move || p2.connect(0, &handle, deadline()));
    let accept = p.table().accept.expect("accept slot");
    let mut dev: *mut NetDeviceHandle = ptr::null_mut();
    let (rc, lines) = warns(|| {
        poll("accept result", || {
            let mut comm = ptr::null_mut();
            // SAFETY: live listen comm; `dev` points at a NULL storage pointer on purpose.
            let rc = unsafe { accept(listen.as_raw(), &mut comm, &mut dev) };
            (rc != NcclResult::SUCCESS || !comm.is_null()).then_some(rc)
        })
    });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["*recvDevComm is NULL"],
    );
    // The connector sees a normal connection (the acceptor's comm was dropped at once).
    drop(t.join());
}

// ---------------------------------------------------------------------------------------------
// Memory rules
// ---------------------------------------------------------------------------------------------

#[test]
fn iflush_is_refused() {
    let p = plugin();
    let (_send, recv) = pair();
    let iflush = p.table().iflush.expect("iflush slot");
    let mut req = ptr::null_mut();
    // SAFETY: the sim reads none of the arguments; TCPX would read `request[0]` as a request.
    let (rc, lines) = warns(|| unsafe {
        iflush(
            recv.as_raw(),
            1,
            ptr::null_mut(),
            ptr::null_mut(),
            ptr::null_mut(),
            &mut req,
        )
    });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["never call iflush"],
    );
}

#[test]
fn cuda_registration_needs_cuda_mode_and_alignment() {
    let p = plugin();
    let (send, _recv) = pair();
    let reg_mr = p.table().reg_mr.expect("regMr slot");
    let mut mh = ptr::null_mut();
    // A fake device address: the sim in host mode never dereferences CUDA pointers.
    // SAFETY: a live comm and a writable output; the data pointer is only inspected.
    let (rc, lines) = warns(|| unsafe {
        reg_mr(
            send.as_raw(),
            0x7f00_0000_1000 as *mut c_void,
            1 << 20,
            PTR_CUDA,
            &mut mh,
        )
    });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["CUDA memory needs tcpx-sim CUDA mode"],
    );
    // SAFETY: as above.
    let (rc, lines) = warns(|| unsafe {
        reg_mr(
            send.as_raw(),
            0x7f00_0000_1010 as *mut c_void,
            1 << 20,
            PTR_CUDA,
            &mut mh,
        )
    });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["data not aligned", "4096"],
    );
    assert!(mh.is_null());
    // SAFETY: as above.
    let (rc, lines) =
        warns(|| unsafe { reg_mr(send.as_raw(), 0x1000 as *mut c_void, 4096, 9, &mut mh) });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["unknown mem type 9"],
    );
}

// ---------------------------------------------------------------------------------------------
// Failures during transfer
// ---------------------------------------------------------------------------------------------

#[test]
fn a_send_larger_than_the_posted_receive_fails_without_writing_past_the_buffer() {
    let (send, recv) = pair();
    let src = buffer(3 * CHUNK);
    src.lock().expect("lock").fill(0x11);
    let dst = buffer(4 * CHUNK);
    dst.lock().expect("lock").fill(0xAB);
    let smh = send.register(src).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    let r = recv.irecv(&rmh, 0, CHUNK).expect("irecv");
    let s = send.isend(&smh, 0, 3 * CHUNK).expect("isend");
    // Both sides make progress only inside test: drive the sender too.
    let mut send_settled = false;
    let (rc, lines) = warns(|| {
        poll("recv error", || {
            if !send_settled {
                send_settled = !matches!(send.test(s), Ok(TestResult::Pending));
            }
            match recv.test(r) {
                Ok(TestResult::Pending) => None,
                Ok(TestResult::Done) => panic!("the too-large message must fail the receive"),
                Err(e) => Some(rc_of(&e)),
            }
        })
    });
    let sent = format!("sent {} bytes", 3 * CHUNK);
    let posted = format!("posted with {CHUNK} bytes");
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &[&sent, &posted, "overflows"],
    );
    // Later calls report the comm's failure again.
    let (r2, _) = warns(|| recv.test(r));
    assert_eq!(
        rc_of(&r2.expect_err("broken comm")),
        NcclResult::INTERNAL_ERROR
    );
    drop(recv);
    let got = dst.lock().expect("lock dst");
    assert!(
        got.iter().all(|b| *b == 0xAB),
        "the sim wrote into the receive buffer of a too-large message"
    );
    drop(got);
}

#[test]
fn a_closed_sender_fails_the_receive_with_system_error() {
    let (send, recv) = pair();
    let rmh = recv.register(buffer(4096)).expect("regMr");
    let r = recv.irecv(&rmh, 0, 4096).expect("irecv");
    drop(send);
    let (rc, lines) = warns(|| wait_error_recv(&recv, r));
    assert_violation(
        rc,
        NcclResult::SYSTEM_ERROR,
        &lines,
        &["Connection closed by remote peer"],
    );
}

#[test]
fn a_sender_whose_peer_died_mid_message_gets_system_error() {
    let (send, recv) = pair();
    let src = buffer(4 << 20);
    let dst = buffer(4 << 20);
    let smh = send.register(src).expect("regMr");
    let rmh = recv.register(dst).expect("regMr");
    // The receiver takes the first message, then dies with a second one half-received.
    let r = recv.irecv(&rmh, 0, 4 << 20).expect("irecv");
    let s = send.isend(&smh, 0, 4 << 20).expect("isend");
    wait_send(&send, s);
    wait_recv(&recv, r);
    recv.irecv_consumed(r).expect("irecvConsumed");
    drop(recv);
    let mut last = NcclResult::SUCCESS;
    for _ in 0..200 {
        let s = send.isend(&smh, 0, 4 << 20).expect("isend");
        let rc = poll("send settles", || match send.test(s) {
            Ok(TestResult::Pending) => None,
            Ok(TestResult::Done) => Some(NcclResult::SUCCESS),
            Err(e) => Some(rc_of(&e)),
        });
        if rc != NcclResult::SUCCESS {
            last = rc;
            break;
        }
    }
    assert_eq!(
        last,
        NcclResult::SYSTEM_ERROR,
        "sends to a closed peer must fail with ncclSystemError"
    );
    let (r, _) = warns(|| send.isend(&smh, 0, 16));
    assert_eq!(
        rc_of(&r.expect_err("broken comm")),
        NcclResult::SYSTEM_ERROR
    );
}

#[test]
fn closing_with_unconsumed_receives_warns_like_tcpx() {
    let (send, recv) = pair();
    let smh = send.register(buffer(4096)).expect("regMr");
    let rmh = recv.register(buffer(4096)).expect("regMr");
    let r = recv.irecv(&rmh, 0, 4096).expect("irecv");
    let s = send.isend(&smh, 0, 4096).expect("isend");
    wait_send(&send, s);
    wait_recv(&recv, r);
    let (res, lines) = warns(|| recv.close());
    res.expect("close succeeds, like TCPX");
    assert!(
        lines.iter().any(|l| l.contains("some pages not yet freed")),
        "no close WARN among {lines:#?}"
    );
}

#[test]
fn a_buffer_outside_its_registration_is_refused() {
    let p = plugin();
    let (send, _recv) = pair();
    let mh: MemHandle = send.register(buffer(4096)).expect("regMr");
    let isend = p.table().isend.expect("isend slot");
    let mut req = ptr::null_mut();
    // SAFETY: a live send comm and its mhandle; the range is checked by the sim before use.
    let (rc, lines) = warns(|| unsafe {
        isend(
            send.as_raw(),
            mh.base().add(4000).cast(),
            200,
            0,
            mh.as_raw(),
            &mut req,
        )
    });
    assert_violation(
        rc,
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["outside its registration"],
    );
    // SAFETY: as above, with a NULL mhandle (TCPX: "mhandle is null").
    let (rc, lines) = warns(|| unsafe {
        isend(
            send.as_raw(),
            mh.base().cast(),
            16,
            0,
            ptr::null_mut(),
            &mut req,
        )
    });
    assert_violation(rc, NcclResult::INTERNAL_ERROR, &lines, &["mhandle is null"]);
    assert!(req.is_null());
}

// ---------------------------------------------------------------------------------------------
// Rules read at init (child processes)
// ---------------------------------------------------------------------------------------------

#[test]
fn init_fails_when_dynamic_chunk_size_is_unset() {
    if in_child("init_fails_when_dynamic_chunk_size_is_unset", &[]) {
        return;
    }
    let (e, lines) = load_failure();
    assert_violation(
        rc_of(&e),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["NCCL_DYNAMIC_CHUNK_SIZE", "hangs"],
    );
}

#[test]
fn init_fails_when_dynamic_chunk_size_is_zero() {
    if in_child(
        "init_fails_when_dynamic_chunk_size_is_zero",
        &[("NCCL_DYNAMIC_CHUNK_SIZE", Some("0"))],
    ) {
        return;
    }
    let (e, lines) = load_failure();
    assert_violation(
        rc_of(&e),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["NCCL_DYNAMIC_CHUNK_SIZE"],
    );
}

#[test]
fn init_fails_when_the_plugin_is_disabled() {
    if in_child(
        "init_fails_when_the_plugin_is_disabled",
        &[
            ("NCCL_DYNAMIC_CHUNK_SIZE", Some("524288")),
            ("NCCL_GPUDIRECTTCPX_SOCKET_ENABLE", Some("0")),
        ],
    ) {
        return;
    }
    let (e, lines) = load_failure();
    assert_violation(
        rc_of(&e),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["SOCKET_ENABLE=0"],
    );
}

#[test]
fn init_fails_when_threads_leave_no_socket() {
    if in_child(
        "init_fails_when_threads_leave_no_socket",
        &[
            ("NCCL_DYNAMIC_CHUNK_SIZE", Some("524288")),
            ("NCCL_SOCKET_NTHREADS", Some("12")),
        ],
    ) {
        return;
    }
    let (e, lines) = load_failure();
    assert_violation(
        rc_of(&e),
        NcclResult::INTERNAL_ERROR,
        &lines,
        &["NCCL_SOCKET_NTHREADS=12"],
    );
}

#[test]
fn out_of_range_socket_counts_keep_tcpx_defaults() {
    if in_child(
        "out_of_range_socket_counts_keep_tcpx_defaults",
        &[
            ("NCCL_DYNAMIC_CHUNK_SIZE", Some("4096")),
            ("NCCL_NSOCKS_PERTHREAD", Some("9")),
            ("NCCL_SOCKET_NTHREADS", Some("-2")),
        ],
    ) {
        return;
    }
    let p = Plugin::load(common::sim_plugin_path()).expect("load");
    let listen = p.listen(0).expect("listen");
    let h = listen.handle();
    assert_eq!(&h[36..40], &1i32.to_le_bytes(), "num_socks stays 1");
    assert_eq!(&h[40..44], &1i32.to_le_bytes(), "num_threads stays 1");
}

/// Virtual NICs: names, PCI paths and addresses as configured, sorted by name, filtered by
/// IFNAME, and a transfer from one to another.
#[test]
fn virtual_nics_present_their_own_names_paths_and_addresses() {
    if in_child(
        "virtual_nics_present_their_own_names_paths_and_addresses",
        &[
            ("NCCL_DYNAMIC_CHUNK_SIZE", Some("8192")),
            ("NCCL_NSOCKS_PERTHREAD", Some("3")),
            (
                "TCPX_SIM_VIRTUAL_NICS",
                Some(
                    "eth2=127.0.0.3@/sys/devices/pci0000:81/0000:81:00.0/0000:86:00.0#200000,\
                     eth1=127.0.0.2@/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0,\
                     docker0=127.0.0.4",
                ),
            ),
            ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", Some("eth")),
        ],
    ) {
        return;
    }
    let p = Plugin::load(common::sim_plugin_path()).expect("load");
    assert_eq!(p.device_count().expect("devices"), 2);
    let d0 = p.properties(0).expect("props 0");
    let d1 = p.properties(1).expect("props 1");
    assert_eq!((d0.name.as_str(), d1.name.as_str()), ("eth1", "eth2"));
    assert_eq!(
        d0.pci_path.as_deref(),
        Some(std::path::Path::new(
            "/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0"
        ))
    );
    assert_eq!(d1.speed_mbps, 200_000);
    assert_eq!(d0.speed_mbps, 10_000);
    assert_eq!((d0.guid, d1.guid), (0, 1));
    // The handle of a listen on eth2 carries eth2's address (sockaddr_in at offset 0).
    let listen = p.listen(1).expect("listen on eth2");
    assert_eq!(&listen.handle()[4..8], &[127, 0, 0, 3]);
    drop(listen);
    let (send, recv) = pair_on(&p, 1, 0);
    let data = pattern(7, 100_000);
    let src = buffer(data.len());
    src.lock().expect("lock").copy_from_slice(&data);
    let dst = buffer(data.len());
    let smh = send.register(src).expect("regMr");
    let rmh = recv.register(dst.clone()).expect("regMr");
    let r = recv.irecv(&rmh, 0, data.len()).expect("irecv");
    let s = send.isend(&smh, 0, data.len()).expect("isend");
    wait_send(&send, s);
    wait_recv(&recv, r);
    recv.irecv_consumed(r).expect("irecvConsumed");
    assert_eq!(&dst.lock().expect("lock")[..], &data[..]);
}
