//! Bad command-line input and an absurd size from the peer: each run fails with an error that
//! names the flag (or says where the value came from), never a panic or a hang.

use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tcpx-bench"));
    c.env("TCPX_SIM_CUDA", "0")
        .env("NCCL_DYNAMIC_CHUNK_SIZE", "131072")
        .env("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo")
        .env_remove("UCCL_TCPX_PLUGIN_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
    // A port base of its own: 15000–19980, one slot per process (see two_process.rs).
    let base = &(15_000 + (std::process::id() % 250) * 20).to_string();
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
