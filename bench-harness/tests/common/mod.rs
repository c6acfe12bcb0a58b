//! What the bench's integration tests share: the binary with tcpx-sim's environment, a wait
//! for a child process with a deadline, and bootstrap port bases per process.
#![allow(dead_code)] // each test binary uses its own part

use std::process::{Child, Command, Output};
use std::thread;
use std::time::{Duration, Instant};

/// `tcpx-bench` over tcpx-sim in host mode on `lo`, whatever the caller's environment says.
pub fn bench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tcpx-bench"));
    c.env("TCPX_SIM_CUDA", "0")
        .env("NCCL_DYNAMIC_CHUNK_SIZE", "131072")
        .env("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo")
        .env_remove("UCCL_TCPX_PLUGIN_PATH");
    c
}

/// Wait for `child` to exit and take its output; kill it and fail the test after `limit`.
pub fn wait_with_deadline(mut child: Child, limit: Duration) -> Output {
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

/// Bootstrap port base `k` (0 or 1) of this process within a test binary's own range of 5000
/// ports from `range_start` (two_process: 10000, bad_input: 15000): one slot of 20 per process,
/// so runs at once rarely meet and different binaries never do. A base's GPU g listens on
/// base + g (g < 10).
pub fn port_base(range_start: u32, k: u32) -> String {
    (range_start + (std::process::id() % 250) * 20 + k * 10).to_string()
}
