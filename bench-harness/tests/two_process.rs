//! `tcpx-bench server` and `tcpx-bench client` as two processes over tcpx-sim: the transfer
//! completes with every byte verified and matching checksums; a client killed mid-run makes the
//! server fail within its deadline instead of hanging.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{bench, wait_with_deadline};

/// This binary's bootstrap port bases (range 10000–14999, see `common::port_base`).
fn port_base(k: u32) -> String {
    common::port_base(10_000, k)
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
