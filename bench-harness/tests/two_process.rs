//! `tcpx-bench server` and `tcpx-bench client` as two processes over tcpx-sim: the transfer
//! completes with every byte verified and matching checksums; a client killed mid-run makes the
//! server fail within its deadline instead of hanging.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Bootstrap port bases of this test binary: 10000–14990, one slot of 10 per process (so runs
/// of it at once rarely meet, and never meet the other test binaries' ranges).
fn port_base(k: u32) -> String {
    (10_000 + (std::process::id() % 250) * 20 + k * 10).to_string()
}

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tcpx-bench"));
    c.env("TCPX_SIM_CUDA", "0")
        .env("NCCL_DYNAMIC_CHUNK_SIZE", "131072")
        .env("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo")
        .env_remove("UCCL_TCPX_PLUGIN_PATH");
    c
}

fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not finish within {limit:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn server_and_client_processes_move_verified_data() {
    let base = &port_base(0);
    let server = bench()
        .args([
            "server",
            "2",
            "--port-base",
            base,
            "--channels",
            "3",
            "--pin",
            "off",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let client = bench()
        .args([
            "client",
            "127.0.0.1",
            "2",
            "--port-base",
            base,
            "--size",
            "8MiB",
        ])
        .args(["--iters", "3", "--pin", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let c = wait_with_deadline(client, Duration::from_secs(60));
    let s = wait_with_deadline(server, Duration::from_secs(60));
    let (cout, sout) = (
        String::from_utf8_lossy(&c.stdout),
        String::from_utf8_lossy(&s.stdout),
    );
    assert!(
        c.status.success(),
        "client failed: {cout}\n{}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert!(
        s.status.success(),
        "server failed: {sout}\n{}",
        String::from_utf8_lossy(&s.stderr)
    );
    // The server adopted the client's size and iterations and verified every byte.
    assert!(
        sout.contains("server: 3 × 8388608 bytes, 3 channels"),
        "{sout}"
    );
    assert!(sout.contains("every byte verified"), "{sout}");
    let verified_iters = sout
        .lines()
        .filter(|l| l.starts_with("iter") && l.ends_with("verified"))
        .count();
    assert_eq!(verified_iters, 3, "{sout}");
    assert!(cout.contains("client: 3 × 8388608 bytes"), "{cout}");
}

#[test]
fn a_killed_client_makes_the_server_fail_within_its_deadline() {
    let base = &port_base(1);
    let server = bench()
        .args([
            "server",
            "0",
            "--port-base",
            base,
            "--channels",
            "2",
            "--pin",
            "off",
        ])
        .args(["--timeout", "20", "--stall-timeout", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut client = bench()
        .args([
            "client",
            "127.0.0.1",
            "0",
            "--port-base",
            base,
            "--size",
            "64MiB",
        ])
        .args(["--iters", "100000", "--pin", "off"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn client");
    // Once its first iteration is done, kill it in the middle of the run.
    let out = client.stdout.take().expect("client stdout");
    let (started, iterating) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("iter") {
                let _ = started.send(());
            }
        }
    });
    let first = iterating.recv_timeout(Duration::from_secs(60));
    client.kill().expect("kill client");
    first.expect("the client never finished an iteration");
    let _ = client.wait();
    let start = Instant::now();
    let s = wait_with_deadline(server, Duration::from_secs(30));
    assert!(start.elapsed() < Duration::from_secs(25));
    assert!(
        !s.status.success(),
        "the server must fail when its client dies"
    );
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(
        err.contains("peer closed")
            || err.contains("stalled")
            || err.contains("closed the connection"),
        "{err}"
    );
}
