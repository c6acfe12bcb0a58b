//! GPU → GPU transfers through the whole engine over tcpx-sim in CUDA mode (feature `cuda`;
//! needs a GPU — these tests fail, they do not skip, without one).
//!
//! tcpx-sim in CUDA mode behaves like TCPX: received chunks land in a GPU bounce pool as 4 KiB
//! pages in shuffled order, fragments are published in mapped metadata, and pages are poisoned
//! when consumed. So a wrong unpack, or a consume before the unpack finished, shows up as wrong
//! bytes in the destination, which every test checks.
#![cfg(feature = "cuda")]

mod common;

use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tcpx::bootstrap::BootstrapListener;
use tcpx::cuda::{CudaBuffer, Gpu, UnpackConfig, UnpackImpl};
use tcpx::endpoint::{Connection, Endpoint, EndpointConfig, Pinning};
use tcpx::engine::CudaRecvConfig;
use tcpx::net::Plugin;

fn plugin() -> Arc<Plugin> {
    static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| {
            std::env::set_var("TCPX_SIM_CUDA", "1");
            std::env::set_var("NCCL_DYNAMIC_CHUNK_SIZE", "131072");
            std::env::set_var("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo");
            std::env::set_var("NCCL_NSOCKS_PERTHREAD", "2");
            Plugin::load(common::sim_plugin_path()).expect("load tcpx-sim (CUDA mode)")
        })
        .clone()
}

fn gpu() -> Arc<Gpu> {
    Gpu::new(0).expect("GPU 0 (these tests need a GPU)")
}

fn config(id: u32, channels: u16, chunk: u32, imp: UnpackImpl) -> EndpointConfig {
    let mut unpack = UnpackConfig::default();
    unpack.imp = imp;
    EndpointConfig {
        gpu: id,
        channels,
        chunk_bytes: chunk,
        pinning: Pinning::Off,
        stall_timeout: Duration::from_secs(20),
        cuda: Some(CudaRecvConfig { gpu: gpu(), unpack }),
        ..EndpointConfig::default()
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn pair(
    channels: u16,
    chunk: u32,
    imp: UnpackImpl,
) -> (Endpoint, Connection, Endpoint, Connection) {
    let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let client = thread::spawn(move || {
        let mut tx = Endpoint::new(plugin(), config(1, 1, 4096, imp)).unwrap();
        let conn = tx.connect(addr, 0, 1, soon()).unwrap();
        (tx, conn)
    });
    let mut rx = Endpoint::new(plugin(), config(0, channels, chunk, imp)).unwrap();
    let rconn = rx.serve(&listener, soon()).unwrap();
    let (tx, tconn) = client.join().unwrap();
    (rx, rconn, tx, tconn)
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97)).to_le_bytes()[2])
        .collect()
}

fn transfer_sizes(imp: UnpackImpl, channels: u16, sizes: &[usize]) {
    let chunk = 256 << 10;
    let (mut rx, rconn, mut tx, tconn) = pair(channels, chunk, imp);
    let max = sizes.iter().max().copied().unwrap_or(0) + 8192;
    let src = Arc::new(CudaBuffer::new(&gpu(), max).unwrap());
    let dst = Arc::new(CudaBuffer::new(&gpu(), max).unwrap());
    let sbuf = tx.register(src.clone()).unwrap();
    let rbuf = rx.register(dst.clone()).unwrap();
    let mut host = vec![0u8; max];
    for (k, &len) in sizes.iter().enumerate() {
        let off = 4096 * (k % 2); // page-aligned and not
        let data = pattern(len, k as u32);
        src.copy_from_host(&data, off).unwrap();
        dst.fill(0xee).unwrap();
        let r = rx.post(rconn.id(), rbuf, off as u64, len as u64).unwrap();
        let s = tx.post(tconn.id(), sbuf, off as u64, len as u64).unwrap();
        tx.wait(s, soon()).unwrap();
        let got = rx.wait(r, soon()).unwrap();
        assert_eq!(got.bytes, len as u64);
        dst.copy_to_host(&mut host, 0).unwrap();
        assert!(
            host[off..off + len] == data[..],
            "{imp}, {channels} channels, {len} bytes at {off}: data differs (first bad byte {:?})",
            host[off..off + len]
                .iter()
                .zip(&data)
                .position(|(a, b)| a != b)
        );
        assert!(
            host[..off].iter().all(|&b| b == 0xee),
            "wrote before the range"
        );
        assert!(
            host[off + len..].iter().all(|&b| b == 0xee),
            "wrote past the range"
        );
    }
}

const SIZES: &[usize] = &[0, 1, 4095, 4097, 256 << 10, (3 << 18) + 17, 16 << 20];

#[test]
fn kernel_unpack_gpu_to_gpu_is_byte_exact_over_one_and_eight_channels() {
    transfer_sizes(UnpackImpl::Kernel, 1, SIZES);
    transfer_sizes(UnpackImpl::Kernel, 8, SIZES);
}

#[test]
fn d2d_and_host_unpack_variants_are_byte_exact() {
    transfer_sizes(UnpackImpl::D2d, 4, SIZES);
    transfer_sizes(UnpackImpl::Host, 4, SIZES);
}

#[test]
fn many_transfers_in_flight_share_batches_and_stay_in_order() {
    const PIECE: usize = 8 << 20;
    const PIECES: usize = 16;
    let (mut rx, rconn, mut tx, tconn) = pair(8, 512 << 10, UnpackImpl::Kernel);
    let src = Arc::new(CudaBuffer::new(&gpu(), PIECE * PIECES).unwrap());
    let dst = Arc::new(CudaBuffer::new(&gpu(), PIECE * PIECES).unwrap());
    let data = pattern(PIECE * PIECES, 7);
    src.copy_from_host(&data, 0).unwrap();
    let sbuf = tx.register(src).unwrap();
    let rbuf = rx.register(dst.clone()).unwrap();
    let mut ids = Vec::new();
    for k in 0..PIECES {
        let off = (k * PIECE) as u64;
        ids.push((
            rx.post(rconn.id(), rbuf, off, PIECE as u64).unwrap(),
            tx.post(tconn.id(), sbuf, off, PIECE as u64).unwrap(),
        ));
    }
    for (r, s) in ids {
        tx.wait(s, soon()).unwrap();
        rx.wait(r, soon()).unwrap();
    }
    let mut host = vec![0u8; PIECE * PIECES];
    dst.copy_to_host(&mut host, 0).unwrap();
    assert!(
        host == data,
        "128 MiB in 16 transfers over 8 channels: data differs"
    );
}
