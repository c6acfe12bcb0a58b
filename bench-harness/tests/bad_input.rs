//! Bad command-line input and an absurd size from the peer: each run fails with an error that
//! names the flag (or says where the value came from), never a panic or a hang.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{port_base, wait_with_deadline};

/// The bench, its output captured.
fn bench() -> Command {
    let mut c = common::bench();
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Run the bench with `args`; it must fail (exit status 1 or clap's 2, not a panic's 101) with
/// `want` on stderr.
fn refused(args: &[&str], want: &str) {
    let out = bench().args(args).output().expect("run tcpx-bench");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "{args:?}: {:?}\n{err}",
        out.status
    );
    assert!(err.contains(want), "{args:?}: expected {want:?} in\n{err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn bad_flags_are_refused_naming_the_flag() {
    refused(
        &["loopback", "--timeout", "1e20"],
        "invalid value '1e20' for '--timeout <TIMEOUT>'",
    );
    refused(
        &["loopback", "--stall-timeout", "1e19"],
        "'--stall-timeout <STALL_TIMEOUT>'",
    );
    refused(
        &["orchestrator", "server", "--gpus", "0-3,x"],
        "--gpus: \"x\" in \"0-3,x\" is not a number",
    );
    refused(
        &["orchestrator", "client", "--gpus", "4294967296"],
        "--gpus: 4294967296 in \"4294967296\" is above the maximum, 1023",
    );
    refused(
        &["loopback", "--pin", "0-3,x"],
        "--pin (numa, off or a CPU list): \"x\"",
    );
    refused(
        &["loopback", "--depth", "100000"],
        "--depth 100000: at most",
    );
    refused(
        &["loopback", "--iters", "4294967295"],
        "--warmup 1 + --iters 4294967295",
    );
    refused(
        &["engine", "--chunk-bytes", "4GiB"],
        "--chunk-bytes 4294967296: expected above 0 and at most 4 MiB",
    );
}

#[test]
fn a_server_refuses_a_client_size_beyond_its_memory() {
    // Every Linux since 3.14 has it; without it the bench cannot check, and this test cannot.
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    assert!(
        meminfo.contains("MemAvailable:"),
        "no MemAvailable in /proc/meminfo"
    );
    let base = &port_base(15_000, 0);
    let server = bench()
        .args(["server", "0", "--port-base", base, "--channels", "1"])
        .args(["--pin", "off", "--timeout", "30"])
        .spawn()
        .expect("spawn server");
    // 1 PiB: more than any machine this runs on has.
    let client = bench()
        .args(["client", "127.0.0.1", "0", "--port-base", base])
        .args(["--size", "1048576GiB", "--iters", "1", "--pin", "off"])
        .args(["--timeout", "30"])
        .spawn()
        .expect("spawn client");
    let s = wait_with_deadline(server, Duration::from_secs(60));
    let c = wait_with_deadline(client, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&s.stderr);
    assert_eq!(s.status.code(), Some(1), "{err}");
    assert!(
        err.contains("GPU 0: --size 1125899906842624 (as the client proposed it): host buffers: 1 × 1125899906842624-byte buffers need"),
        "{err}"
    );
    assert!(err.contains("MemAvailable"), "{err}");
    // The client, which sizes its own buffer the same way, is refused too.
    assert_eq!(c.status.code(), Some(1));
}
