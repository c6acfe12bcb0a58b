//! A large loopback transfer through tcpx-sim, loaded by `dlopen` through the `tcpx` loader:
//! 1 GiB over 8 comms (8 connections, GCP's 512 KiB chunks), every byte verified.
//!
//! Each comm carries 128 messages of 1 MiB with a window of 16 requests (TCPX's limit; a receive
//! holds its slot until `irecvConsumed`). Message `m` of comm `c` is pattern `(m + c) % 17`
//! (17 distinct pseudo-random MiB, so any reordering inside a window shows) with `(c, m)` written
//! over its first 8 bytes; the receiver checks all 1 MiB of every message against that. One
//! thread drives all send comms and one all receive comms, testing only the head of each comm,
//! the way the transport's progress engine does.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tcpx::net::{HostBuffer, MemHandle, Plugin, RecvComm, Request, SendComm, TestResult};

const COMMS: usize = 8;
const MSG: usize = 1 << 20;
const MSGS_PER_COMM: usize = 128;
const WINDOW: usize = 16;
const PATTERNS: usize = 17;
const DEADLINE: Duration = Duration::from_secs(120);

fn pattern(seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(MSG);
    while v.len() < MSG {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

fn header(c: usize, m: usize) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&(c as u32).to_le_bytes());
    h[4..].copy_from_slice(&(m as u32).to_le_bytes());
    h
}

struct Sender {
    comm: SendComm,
    bufs: Vec<Arc<HostBuffer>>,
    mhs: Vec<MemHandle>,
    next: usize,
    inflight: VecDeque<Request>,
}

struct Receiver {
    comm: RecvComm,
    bufs: Vec<Arc<HostBuffer>>,
    mhs: Vec<MemHandle>,
    next_post: usize,
    next_done: usize,
    inflight: VecDeque<Request>,
}

fn buffers(n: usize) -> Vec<Arc<HostBuffer>> {
    (0..n)
        .map(|_| Arc::new(HostBuffer::new(MSG).expect("host buffer")))
        .collect()
}

fn drive_senders(mut senders: Vec<Sender>, patterns: Arc<Vec<Vec<u8>>>) {
    let end = Instant::now() + DEADLINE;
    loop {
        let mut progress = false;
        let mut finished = true;
        for (c, s) in senders.iter_mut().enumerate() {
            while s.inflight.len() < WINDOW && s.next < MSGS_PER_COMM {
                let m = s.next;
                let slot = m % WINDOW;
                {
                    let mut b = s.bufs[slot].lock().expect("a free send buffer");
                    b.copy_from_slice(&patterns[(m + c) % PATTERNS]);
                    b[..8].copy_from_slice(&header(c, m));
                }
                let req = s.comm.isend(&s.mhs[slot], 0, MSG).expect("isend");
                s.inflight.push_back(req);
                s.next += 1;
                progress = true;
            }
            if let Some(&head) = s.inflight.front() {
                if s.comm.test(head).expect("send test") == TestResult::Done {
                    s.inflight.pop_front();
                    progress = true;
                }
            }
            finished &= s.next == MSGS_PER_COMM && s.inflight.is_empty();
        }
        if finished {
            return;
        }
        assert!(Instant::now() < end, "senders made no progress in time");
        if !progress {
            std::thread::yield_now();
        }
    }
}

fn drive_receivers(mut receivers: Vec<Receiver>, patterns: Arc<Vec<Vec<u8>>>) -> usize {
    let end = Instant::now() + DEADLINE;
    let mut verified = 0usize;
    loop {
        let mut progress = false;
        let mut finished = true;
        for (c, r) in receivers.iter_mut().enumerate() {
            while r.inflight.len() < WINDOW && r.next_post < MSGS_PER_COMM {
                let slot = r.next_post % WINDOW;
                let req = r.comm.irecv(&r.mhs[slot], 0, MSG).expect("irecv");
                r.inflight.push_back(req);
                r.next_post += 1;
                progress = true;
            }
            if let Some(&head) = r.inflight.front() {
                if r.comm.test(head).expect("recv test") == TestResult::Done {
                    let m = r.next_done;
                    {
                        let got = r.bufs[m % WINDOW].lock().expect("a done receive buffer");
                        assert_eq!(got[..8], header(c, m), "comm {c}: message {m} out of order");
                        let want = &patterns[(m + c) % PATTERNS];
                        assert!(
                            got[8..] == want[8..],
                            "comm {c}: message {m} corrupted at byte {:?}",
                            got[8..].iter().zip(&want[8..]).position(|(a, b)| a != b)
                        );
                        verified += got.len();
                    }
                    r.comm.irecv_consumed(head).expect("irecvConsumed");
                    r.inflight.pop_front();
                    r.next_done += 1;
                    progress = true;
                }
            }
            finished &= r.next_done == MSGS_PER_COMM;
        }
        if finished {
            return verified;
        }
        assert!(Instant::now() < end, "receivers made no progress in time");
        if !progress {
            std::thread::yield_now();
        }
    }
}

#[test]
fn one_gib_over_eight_comms_arrives_byte_exact() {
    // This binary has one test, so setting the environment before the plugin's init is safe.
    std::env::set_var("TCPX_SIM_CUDA", "0");
    std::env::set_var("NCCL_DYNAMIC_CHUNK_SIZE", "524288");
    std::env::remove_var("NCCL_NSOCKS_PERTHREAD");
    std::env::remove_var("NCCL_SOCKET_NTHREADS");
    std::env::remove_var("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME");
    std::env::remove_var("TCPX_SIM_VIRTUAL_NICS");
    let plugin = Plugin::load(common::sim_plugin_path()).expect("load tcpx-sim");

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..COMMS {
        let listen = plugin.listen(0).expect("listen");
        let handle = *listen.handle();
        let p = Arc::clone(&plugin);
        let t = std::thread::spawn(move || {
            p.connect(0, &handle, Instant::now() + Duration::from_secs(30))
        });
        let recv = listen
            .accept(Instant::now() + Duration::from_secs(30))
            .expect("accept");
        let send = t.join().expect("connect thread").expect("connect");
        let sbufs = buffers(WINDOW);
        let rbufs = buffers(WINDOW);
        let smhs = sbufs
            .iter()
            .map(|b| send.register(b.clone()).expect("regMr"))
            .collect();
        let rmhs = rbufs
            .iter()
            .map(|b| recv.register(b.clone()).expect("regMr"))
            .collect();
        senders.push(Sender {
            comm: send,
            bufs: sbufs,
            mhs: smhs,
            next: 0,
            inflight: VecDeque::new(),
        });
        receivers.push(Receiver {
            comm: recv,
            bufs: rbufs,
            mhs: rmhs,
            next_post: 0,
            next_done: 0,
            inflight: VecDeque::new(),
        });
    }
    let patterns: Arc<Vec<Vec<u8>>> = Arc::new((0..PATTERNS as u64).map(pattern).collect());

    let pr = Arc::clone(&patterns);
    let rx = std::thread::spawn(move || drive_receivers(receivers, pr));
    drive_senders(senders, patterns);
    let verified = rx.join().expect("receiver thread");
    assert_eq!(verified, COMMS * MSGS_PER_COMM * MSG, "every byte verified");
}
