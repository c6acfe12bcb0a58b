//! The transport end to end over tcpx-sim (loaded by `dlopen`): bootstrap, channels, progress
//! engine and endpoint API, with every received byte checked.
//!
//! * sizes 0, 1, odd, chunk multiples and 1 GiB over 1–8 channels arrive intact;
//! * a sender that dies mid-transfer makes the receiver fail within its deadline, and a sender
//!   that goes silent makes it fail with `Stalled` and a dump of the windows — even while
//!   another connection of the same endpoint keeps moving;
//! * garbage, truncated and wrong-version bootstrap bytes get clear errors, and so does a server
//!   that answers with another size or iteration count than the client proposed.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use tcpx::bootstrap::BootstrapListener;
use tcpx::endpoint::{Connection, Endpoint, EndpointConfig, Error, Pinning, TransferError};
use tcpx::net::{HostBuffer, Plugin};

/// One plugin per test binary: `init` reads the environment, so it runs once, first.
fn plugin() -> Arc<Plugin> {
    static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();
    PLUGIN
        .get_or_init(|| {
            std::env::set_var("TCPX_SIM_CUDA", "0");
            std::env::set_var("NCCL_DYNAMIC_CHUNK_SIZE", "131072");
            std::env::set_var("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo");
            std::env::set_var("NCCL_NSOCKS_PERTHREAD", "2");
            Plugin::load(common::sim_plugin_path()).expect("load tcpx-sim")
        })
        .clone()
}

fn config(gpu: u32, channels: u16, chunk_bytes: u32) -> EndpointConfig {
    EndpointConfig {
        gpu,
        channels,
        chunk_bytes,
        pinning: Pinning::Off,
        stall_timeout: Duration::from_secs(20),
        ..EndpointConfig::default()
    }
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// A receiving and a sending endpoint joined by one connection.
fn pair(
    channels: u16,
    chunk_bytes: u32,
    bytes: u64,
) -> (Endpoint, Connection, Endpoint, Connection) {
    let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let p = plugin();
    let client = thread::spawn(move || {
        let mut tx = Endpoint::new(p, config(1, 1, 4096)).unwrap();
        let conn = tx.connect(addr, bytes, 1, soon()).unwrap();
        (tx, conn)
    });
    let mut rx = Endpoint::new(plugin(), config(0, channels, chunk_bytes)).unwrap();
    let rconn = rx.serve(&listener, soon()).unwrap();
    let (tx, tconn) = client.join().unwrap();
    (rx, rconn, tx, tconn)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect()
}

#[test]
fn sizes_and_channel_counts_arrive_intact() {
    let chunk = 64 << 10;
    let sizes = [
        0usize,
        1,
        4095,
        4097,
        chunk,
        3 * chunk,
        3 * chunk + 17,
        1 << 20,
    ];
    for channels in [1u16, 3, 8] {
        let max = *sizes.iter().max().unwrap();
        let (mut rx, rconn, mut tx, tconn) = pair(channels, chunk as u32, max as u64);
        assert_eq!(rconn.agreement().channels, channels);
        assert_eq!(tconn.agreement().channels, channels);
        assert_eq!(tconn.agreement().chunk_bytes, chunk as u32);
        let src = Arc::new(HostBuffer::new(max + 8192).unwrap());
        let dst = Arc::new(HostBuffer::new(max + 8192).unwrap());
        let sbuf = tx.register(src.clone()).unwrap();
        let rbuf = rx.register(dst.clone()).unwrap();
        for (k, &len) in sizes.iter().enumerate() {
            // Odd offsets too: the destination starts 4 KiB + k bytes in.
            let off = 4096 + k;
            let data = pattern(len, k as u8);
            src.lock().unwrap()[off..off + len].copy_from_slice(&data);
            dst.lock().unwrap().fill(0xee);
            let r = rx.post(rconn.id(), rbuf, off as u64, len as u64).unwrap();
            let s = tx.post(tconn.id(), sbuf, off as u64, len as u64).unwrap();
            let sent = tx.wait(s, soon()).unwrap();
            let got = rx.wait(r, soon()).unwrap();
            assert_eq!((sent.bytes, got.bytes), (len as u64, len as u64));
            assert_eq!(got.chunks, (len.div_ceil(chunk)).max(1) as u32);
            let d = dst.lock().unwrap();
            assert!(
                d[off..off + len] == data[..],
                "{channels} channels, {len} bytes: data differs"
            );
            assert!(
                d[..off].iter().all(|&b| b == 0xee),
                "wrote before the range"
            );
            assert!(
                d[off + len..].iter().all(|&b| b == 0xee),
                "wrote past the range"
            );
        }
    }
}

#[test]
fn one_gibibyte_over_eight_channels_with_many_transfers_in_flight() {
    const GIB: usize = 1 << 30;
    const PIECE: usize = 64 << 20;
    let (mut rx, rconn, mut tx, tconn) = pair(8, 512 << 10, GIB as u64);
    let src = Arc::new(HostBuffer::new(GIB).unwrap());
    let dst = Arc::new(HostBuffer::new(GIB).unwrap());
    {
        let mut s = src.lock().unwrap();
        for (i, w) in s.chunks_exact_mut(8).enumerate() {
            w.copy_from_slice(&(i as u64 ^ 0x5a5a_5a5a).to_le_bytes());
        }
    }
    let sbuf = tx.register(src.clone()).unwrap();
    let rbuf = rx.register(dst.clone()).unwrap();
    // 16 transfers of 64 MiB each, all posted before any is waited for.
    let mut recvs = Vec::new();
    let mut sends = Vec::new();
    for k in 0..GIB / PIECE {
        let off = (k * PIECE) as u64;
        recvs.push(rx.post(rconn.id(), rbuf, off, PIECE as u64).unwrap());
        sends.push(tx.post(tconn.id(), sbuf, off, PIECE as u64).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for id in sends {
        tx.wait(id, deadline).unwrap();
    }
    let mut bytes = 0;
    for id in recvs {
        bytes += rx.wait(id, deadline).unwrap().bytes;
    }
    assert_eq!(bytes, GIB as u64);
    let d = dst.lock().unwrap();
    for (i, w) in d.chunks_exact(8).enumerate() {
        assert_eq!(
            u64::from_le_bytes(w.try_into().unwrap()),
            i as u64 ^ 0x5a5a_5a5a,
            "word {i} (byte {})",
            i * 8
        );
    }
    let (channels, _) = rx.stats().unwrap();
    assert_eq!(channels.len(), 8);
    assert!(
        channels.iter().all(|c| c.stats.bytes == GIB as u64 / 8),
        "round-robin spreads bytes evenly"
    );
}

#[test]
fn a_sender_that_dies_mid_transfer_fails_the_receiver_within_its_deadline() {
    let len = 256 << 20;
    let (mut rx, rconn, mut tx, tconn) = pair(4, 512 << 10, len);
    let src = Arc::new(HostBuffer::new(len as usize / 2).unwrap());
    let dst = Arc::new(HostBuffer::new(len as usize).unwrap());
    let sbuf = tx.register(src).unwrap();
    let rbuf = rx.register(dst).unwrap();
    let r = rx.post(rconn.id(), rbuf, 0, len).unwrap();
    // The sender sends only half, then dies: its endpoint and comms go away.
    let s = tx.post(tconn.id(), sbuf, 0, len / 2).unwrap();
    tx.wait(s, soon()).unwrap();
    drop(tconn);
    drop(tx);
    // Within the deadline, and as the peer's closed sockets (TCPX's rc 2 from `test`), not as
    // the 20 s stall timeout.
    let err = rx
        .wait(r, Instant::now() + Duration::from_secs(25))
        .unwrap_err();
    assert!(
        matches!(&err, Error::Transfer(TransferError::Plugin { .. })),
        "expected a plugin error, got {err}"
    );
    assert!(err.to_string().contains("peer closed"), "{err}");
    // The endpoint stays usable: later posts on the dead connection fail at once.
    let again = rx.post(rconn.id(), rbuf, 0, 4096).unwrap();
    assert!(rx.wait(again, soon()).is_err());
}

#[test]
fn a_silent_sender_makes_the_receiver_fail_with_a_stall_dump() {
    let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let client = thread::spawn(move || {
        let mut tx = Endpoint::new(plugin(), config(1, 1, 4096)).unwrap();
        let conn = tx.connect(addr, 1 << 20, 1, soon()).unwrap();
        (tx, conn)
    });
    let mut cfg = config(0, 2, 64 << 10);
    cfg.stall_timeout = Duration::from_millis(500);
    let mut rx = Endpoint::new(plugin(), cfg).unwrap();
    let rconn = rx.serve(&listener, soon()).unwrap();
    let (_tx, _tconn) = client.join().unwrap();
    let dst = Arc::new(HostBuffer::new(1 << 20).unwrap());
    let rbuf = rx.register(dst).unwrap();
    let r = rx.post(rconn.id(), rbuf, 0, 1 << 20).unwrap();
    let err = rx.wait(r, soon()).unwrap_err();
    let Error::Transfer(TransferError::Stalled { dump, .. }) = &err else {
        panic!("expected Stalled, got {err}");
    };
    assert!(
        dump.contains("channel 0") && dump.contains("channel 1"),
        "{dump}"
    );
    assert!(dump.contains("posted"), "{dump}");
}

#[test]
fn a_silent_connection_stalls_while_another_on_the_same_endpoint_keeps_moving() {
    let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr();
    let len = 64u64 << 10;
    let clients = thread::spawn(move || {
        let mut busy = Endpoint::new(plugin(), config(1, 1, 4096)).unwrap();
        let busy_conn = busy.connect(addr, len, 1, soon()).unwrap();
        let mut silent = Endpoint::new(plugin(), config(2, 1, 4096)).unwrap();
        let silent_conn = silent.connect(addr, len, 1, soon()).unwrap();
        (busy, busy_conn, silent, silent_conn)
    });
    // Long enough that the busy connection's own transfers never stall on a loaded machine.
    let mut cfg = config(0, 2, 16 << 10);
    cfg.stall_timeout = Duration::from_secs(3);
    let mut rx = Endpoint::new(plugin(), cfg).unwrap();
    let busy_r = rx.serve(&listener, soon()).unwrap();
    let silent_r = rx.serve(&listener, soon()).unwrap();
    let (mut tx, busy_s, _silent_tx, _silent_s) = clients.join().unwrap();
    let src = Arc::new(HostBuffer::new(len as usize).unwrap());
    let dst = Arc::new(HostBuffer::new(len as usize).unwrap());
    let sbuf = tx.register(src.clone()).unwrap();
    let rbuf = rx.register(dst.clone()).unwrap();
    let stuck_buf = rx
        .register(Arc::new(HostBuffer::new(len as usize).unwrap()))
        .unwrap();
    let data = pattern(len as usize, 7);
    src.lock().unwrap().copy_from_slice(&data);

    // The silent peer never sends; the busy one moves a transfer after another meanwhile.
    let stuck = rx.post(silent_r.id(), stuck_buf, 0, len).unwrap();
    let give_up = Instant::now() + Duration::from_secs(20);
    let mut moved = 0u32;
    let err = loop {
        assert!(
            Instant::now() < give_up,
            "the silent connection never stalled ({moved} transfers moved beside it)"
        );
        let r = rx.post(busy_r.id(), rbuf, 0, len).unwrap();
        let s = tx.post(busy_s.id(), sbuf, 0, len).unwrap();
        tx.wait(s, soon()).unwrap();
        rx.wait(r, soon()).unwrap();
        assert!(dst.lock().unwrap()[..] == data[..]);
        moved += 1;
        match rx.wait(stuck, Instant::now()) {
            Err(Error::Timeout { .. }) => continue,
            Err(e) => break e,
            Ok(r) => panic!("a receive nobody sent completed: {r:?}"),
        }
    };
    let Error::Transfer(TransferError::Stalled { waited, dump }) = &err else {
        panic!("expected Stalled, got {err}");
    };
    assert!(*waited >= Duration::from_secs(3), "{waited:?}");
    assert!(dump.contains("recv") && dump.contains("posted"), "{dump}");
    assert!(moved > 1, "the busy connection moved {moved} transfers");
    // Only the silent connection failed: the busy one goes on.
    let r = rx.post(busy_r.id(), rbuf, 0, len).unwrap();
    let s = tx.post(busy_s.id(), sbuf, 0, len).unwrap();
    tx.wait(s, soon()).unwrap();
    rx.wait(r, soon()).unwrap();
}

#[test]
fn a_server_that_changes_the_size_or_iterations_is_refused() {
    use tcpx::core::codec::{Handles, Message, MessageKind};
    for (bytes, iters) in [((1u64 << 20) + 1, 3u32), (1 << 20, 4)] {
        let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        // A server that answers the hello with other values than the client proposed.
        let server = thread::spawn(move || {
            let mut c = listener.accept(soon()).unwrap();
            c.expect(MessageKind::Hello, soon()).unwrap();
            let h = Handles::new(0, 4096, bytes, iters, &[[0; 128]]).unwrap();
            c.send(&Message::Handles(h), soon()).unwrap();
            // Hold the connection until the client has read and judged the handles.
            let _ = c.expect(MessageKind::Ready, Instant::now() + Duration::from_secs(5));
        });
        let mut tx = Endpoint::new(plugin(), config(1, 1, 4096)).unwrap();
        let err = tx.connect(addr, 1 << 20, 3, soon()).unwrap_err();
        server.join().unwrap();
        assert!(
            err.to_string().contains("disagrees on")
                && err
                    .to_string()
                    .contains(if iters == 3 { "bytes" } else { "iterations" }),
            "{err}"
        );
    }
}

fn serve_against(bytes: &[u8]) -> Error {
    let listener = BootstrapListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr: SocketAddr = listener.local_addr();
    let payload = bytes.to_vec();
    let peer = thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&payload).unwrap();
        thread::sleep(Duration::from_millis(200));
    });
    let mut rx = Endpoint::new(plugin(), config(0, 1, 4096)).unwrap();
    let err = rx
        .serve(&listener, Instant::now() + Duration::from_secs(5))
        .unwrap_err();
    peer.join().unwrap();
    err
}

#[test]
fn garbage_truncated_and_wrong_version_bootstrap_bytes_get_clear_errors() {
    let err = serve_against(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(err.to_string().contains("magic"), "{err}");

    let mut hello = vec![b'T', b'C', b'P', b'X', 1, 0, 1, 0, 22, 0, 0, 0];
    hello.extend_from_slice(&[0; 10]); // 10 of 22 payload bytes, then the peer closes
    let err = serve_against(&hello);
    assert!(err.to_string().contains("closed"), "{err}");

    let mut wrong = vec![b'T', b'C', b'P', b'X', 9, 0, 1, 0, 22, 0, 0, 0];
    wrong.extend_from_slice(&[0; 22]);
    let err = serve_against(&wrong);
    assert!(err.to_string().contains("version"), "{err}");
}
