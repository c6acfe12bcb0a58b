//! The C++ side, driven from cargo: builds `cpp/` with its Makefile against the
//! `libtcpx_ffi_cxx.a` cargo just built, runs the C++ unit tests, then runs each of the three
//! C++ test programs as a server/client pair of processes over tcpx-sim on loopback, checking
//! exit codes and the programs' own data verification.
//!
//! How the pieces are found (no install step, works on a fresh checkout):
//! * the static library: cargo builds this crate's `staticlib` next to the test binary
//!   (`target/<profile>/deps/libtcpx_ffi_cxx-<hash>.a`, uplifted to `target/<profile>/`);
//! * the plugin: `tcpx-sim` is a dev-dependency, so `libtcpx_sim.so` lands there too;
//! * the C++ sources: `cpp/` beside this crate; `make` and a C++17 compiler (`CXX`, default
//!   `g++`) from `PATH`. Binaries go to `target/<profile>/cpp-tests/`.
//! * with `--features cuda`: the programs are built with `TCPX_CUDA=1` against the CUDA
//!   archive, linking the static cudart of `CUDA_HOME` (`scripts/install-nvcc.sh` provides
//!   one); they still run on host memory here, so no GPU is needed.
//!
//! Every pair gets its own bootstrap ports (derived from this process id), so the tests run in
//! parallel with each other and with other test binaries.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Where the built C++ binaries are, or why the build failed.
fn built() -> &'static Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let deps = exe.parent().expect("the test binary's directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The staticlib cargo built for this test run: the newest `libtcpx_ffi_cxx*.a` in
/// `target/<profile>/deps` or `target/<profile>` built with this run's `cuda` feature. A
/// `--features cuda` build and a plain one share the folder, and only the former holds the
/// CUDA objects (`unpack_launch_cuda.o`, which needs cudart to link).
fn static_lib() -> Result<PathBuf, String> {
    let profile = profile_dir();
    let mut found: Vec<(std::time::SystemTime, PathBuf)> = [profile.join("deps"), profile.clone()]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libtcpx_ffi_cxx") && n.ends_with(".a"))
        })
        .filter(|p| has_cuda_objects(p) == Some(cfg!(feature = "cuda")))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        format!(
            "no libtcpx_ffi_cxx*.a built {} the cuda feature under {}",
            if cfg!(feature = "cuda") {
                "with"
            } else {
                "without"
            },
            profile.display()
        )
    })
}

/// Whether an archive holds the CUDA objects (their member name appears in it); `None` when it
/// cannot be read.
fn has_cuda_objects(archive: &Path) -> Option<bool> {
    let bytes = fs::read(archive).ok()?;
    let needle = b"unpack_launch_cuda";
    Some(bytes.windows(needle.len()).any(|w| w == needle))
}

fn sim_plugin() -> PathBuf {
    let profile = profile_dir();
    [profile.join("deps"), profile]
        .into_iter()
        .map(|d| d.join("libtcpx_sim.so"))
        .find(|p| p.is_file())
        .expect("libtcpx_sim.so next to the test binary (tcpx-sim is a dev-dependency)")
}

fn build() -> Result<PathBuf, String> {
    let cpp = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("cpp");
    let lib = static_lib()?;
    let out = profile_dir().join("cpp-tests");
    fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let mut make = Command::new(std::env::var("MAKE").unwrap_or_else(|_| "make".into()));
    make.arg("-C")
        .arg(&cpp)
        .arg(format!("TCPX_RS_LIB={}", lib.display()))
        .arg(format!("TCPX_BUILD_DIR={}", out.display()));
    if cfg!(feature = "cuda") {
        // The archive holds the CUDA glue: the programs must be built for it (and link
        // cudart from CUDA_HOME, which make reads from the environment).
        make.arg("TCPX_CUDA=1");
    }
    let output = make
        .arg("tcpx-all")
        .output()
        .map_err(|e| format!("running make: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "make -C cpp failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(out)
}

fn bin(name: &str) -> PathBuf {
    match built() {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e}"),
    }
}

/// A range of 40 ports for this process (tests use fixed offsets inside it), below Linux's
/// ephemeral range (32768+) so no outgoing connection can be holding one of them.
fn port_base() -> u16 {
    20_000 + (std::process::id() % 300) as u16 * 40
}

fn command(name: &str, args: &[&str], env: &[(&str, String)], log: &Path) -> Command {
    let mut cmd = Command::new(bin(name));
    cmd.args(args)
        .env("UCCL_TCPX_PLUGIN_PATH", sim_plugin())
        .env("NCCL_DYNAMIC_CHUNK_SIZE", "524288")
        .env("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "lo")
        .env("UCCL_TCPX_BOOTSTRAP_TIMEOUT_MS", "60000")
        .env_remove("NCCL_GPUDIRECTTCPX_PLUGIN_PATH")
        .env_remove("UCCL_TCPX_UNPACK_IMPL")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let file = fs::File::create(log).expect("log file");
    let err = file.try_clone().expect("log file");
    cmd.stdout(file).stderr(err);
    cmd
}

/// Waits for every child until `limit`; kills them all on timeout.
fn wait_all(children: &mut [Child], limit: Duration) -> Vec<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    let mut status: Vec<Option<ExitStatus>> = vec![None; children.len()];
    while Instant::now() < deadline && status.iter().any(Option::is_none) {
        for (c, s) in children.iter_mut().zip(status.iter_mut()) {
            if s.is_none() {
                *s = c.try_wait().ok().flatten();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (c, s) in children.iter_mut().zip(&status) {
        if s.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    status
}

struct PairRun {
    server: (Option<ExitStatus>, String),
    client: (Option<ExitStatus>, String),
}

/// Runs `program` as a server and a client process (server first) and collects both.
fn run_pair(
    test: &str,
    program: &str,
    server_args: &[&str],
    client_args: &[&str],
    env: &[(&str, String)],
) -> PairRun {
    let logs = profile_dir().join("cpp-tests").join("logs");
    fs::create_dir_all(&logs).expect("log dir");
    let slog = logs.join(format!("{test}-server.log"));
    let clog = logs.join(format!("{test}-client.log"));
    let server = command(program, server_args, env, &slog)
        .spawn()
        .expect("spawn server");
    let client = command(program, client_args, env, &clog)
        .spawn()
        .expect("spawn client");
    let mut children = [server, client];
    let status = wait_all(&mut children, Duration::from_secs(180));
    let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
    PairRun {
        server: (status[0], read(&slog)),
        client: (status[1], read(&clog)),
    }
}

fn assert_success(run: &PairRun) {
    for (side, (status, log)) in [("server", &run.server), ("client", &run.client)] {
        assert!(
            status.is_some_and(|s| s.success()),
            "{side} exited with {status:?}\n--- server ---\n{}\n--- client ---\n{}",
            run.server.1,
            run.client.1
        );
        assert!(!log.is_empty(), "{side} printed nothing");
    }
}

#[test]
fn cpp_unit_tests_pass_over_tcpx_sim() {
    let logs = profile_dir().join("cpp-tests").join("logs");
    fs::create_dir_all(&logs).expect("log dir");
    let log = logs.join("test_modules.log");
    let base = port_base().to_string();
    let mut child = command("test_modules", &[], &[("TCPX_TEST_PORT_BASE", base)], &log)
        .spawn()
        .expect("spawn test_modules");
    let status = wait_all(std::slice::from_mut(&mut child), Duration::from_secs(180));
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        status[0].is_some_and(|s| s.success()),
        "test_modules: {:?}\n{out}",
        status[0]
    );
    assert!(out.contains("ALL PASSED"), "{out}");
    // Every case ran, the misuse ones included.
    for case in [
        "transfer and misuse (17th request, non-head test, foreign, closed)",
        "dead peer",
        "gpu wait policy",
        "window events and unpack hook",
        "channel manager",
        "bootstrap",
        "endpoint",
        "unpack (host)",
    ] {
        assert!(out.contains(&format!("[  OK  ] {case}")), "{case}:\n{out}");
    }
}

/// A tree that swaps only its `SlidingWindow`: the program defines its own `tcpx_test` /
/// `tcpx_irecv_consumed` (raw-pointer requests, like the tree's `tcpx_impl.cc`); that it links
/// at all shows the window pulls in none of this library's wrappers.
#[test]
fn sliding_window_swaps_in_alone_over_the_trees_wrappers() {
    let logs = profile_dir().join("cpp-tests").join("logs");
    fs::create_dir_all(&logs).expect("log dir");
    let log = logs.join("test_window_swap.log");
    let status = command("test_window_swap", &[], &[], &log)
        .status()
        .expect("run test_window_swap");
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status:?}\n{out}");
    assert!(out.contains("16 consumed"), "{out}");
    assert!(out.contains("ALL PASSED"), "{out}");
}

#[test]
fn perf_multi_loopback_pair_verifies_every_iteration() {
    let base = (port_base() + 10).to_string();
    let env = [
        ("UCCL_TCPX_BOOTSTRAP_PORT_BASE", base),
        ("UCCL_TCPX_NUM_CHANNELS", "4".to_string()),
        ("UCCL_TCPX_PERF_SIZE", "6M".to_string()),
        ("UCCL_TCPX_PERF_ITERS", "3".to_string()),
        ("UCCL_TCPX_CHUNK_BYTES", "524288".to_string()),
    ];
    let run = run_pair(
        "perf_multi",
        "test_tcpx_perf_multi",
        &["server", "1"],
        &["client", "127.0.0.1", "1"],
        &env,
    );
    assert_success(&run);
    let (s, c) = (&run.server.1, &run.client.1);
    for i in 0..3 {
        assert!(
            s.contains(&format!("[VERIFY] Iter {i}: OK (6291456 bytes)")),
            "{s}"
        );
        assert!(s.contains(&format!("[PERF] Iter {i} time=")), "{s}");
    }
    assert!(s.contains("[PERF] Avg (3 iter): "), "{s}");
    assert!(s.contains("[VERIFY] all 3 iterations verified"), "{s}");
    assert!(s.contains("[SERVER] 4 channels"), "{s}");
    // The client took size, chunk and channel count from the server's plan.
    assert!(
        c.contains("[CLIENT] 4 channels, 6291456 bytes x 3 iterations, 524288-byte chunks"),
        "{c}"
    );
    assert!(c.contains("[VERIFY] checksum match"), "{c}");
}

#[test]
fn orchestrator_loopback_pair_verifies_every_gpu() {
    let base = (port_base() + 20).to_string();
    let env = [
        ("UCCL_TCPX_BOOTSTRAP_PORT_BASE", base),
        ("UCCL_TCPX_NUM_GPUS", "2".to_string()),
        ("UCCL_TCPX_NUM_CHANNELS", "2".to_string()),
        ("UCCL_TCPX_PERF_SIZE", "2M".to_string()),
        ("UCCL_TCPX_PERF_ITERS", "2".to_string()),
        ("UCCL_TCPX_CHUNK_BYTES", "262144".to_string()),
    ];
    let run = run_pair(
        "orchestrator",
        "test_tcpx_perf_orchestrator",
        &["server"],
        &["client", "127.0.0.1"],
        &env,
    );
    assert_success(&run);
    let s = &run.server.1;
    assert!(
        s.contains("[VERIFY] Iter 1: OK (2 GPUs x 2097152 bytes)"),
        "{s}"
    );
    assert!(s.contains("[SERVER] Iteration 1 completed in"), "{s}");
    assert!(s.contains("[PERF] Avg (2 iter): "), "{s}");
    assert!(
        s.contains("[VERIFY] all 2 iterations of 2 GPUs verified, checksums match"),
        "{s}"
    );
    assert!(run.client.1.contains("checksums match"), "{}", run.client.1);
}

#[test]
fn devmem_validation_loopback_pair_sets_up_channels_concurrently() {
    // GPU 2, channels 0..3: ports base + 16 + c (base + gpu×8 + channel, as in the C++ tree).
    let base = (port_base() + 10).to_string();
    let env = [
        ("UCCL_TCPX_BOOTSTRAP_PORT_BASE", base),
        ("UCCL_TCPX_NUM_CHANNELS", "4".to_string()),
        ("UCCL_TCPX_PERF_SIZE", "3M".to_string()),
    ];
    let run = run_pair(
        "devmem",
        "test_devmem_validation",
        &["server", "127.0.0.1", "2", "0"],
        &["client", "127.0.0.1", "2", "0"],
        &env,
    );
    assert_success(&run);
    let (s, c) = (&run.server.1, &run.client.1);
    for ch in 0..4 {
        let port = port_base() + 10 + 16 + ch;
        assert!(
            s.contains(&format!(
                "[GPU 2 CH {ch}] server on dev 0, bootstrap port {port}"
            )),
            "{s}"
        );
        assert!(
            s.contains(&format!("[GPU 2 CH {ch}] Recv OK (3145728 bytes verified)")),
            "{s}"
        );
    }
    assert!(s.contains("=== ALL CHANNELS PASSED ==="), "{s}");
    assert!(c.contains("=== ALL CHANNELS PASSED ==="), "{c}");
}

/// Without `--features cuda` the programs are built without TCPX_WITH_CUDA and must refuse the
/// GPU path up front. (With it they take that path; `cpp/scripts/gpu-programs.sh` runs it on a
/// GPU.)
#[cfg(not(feature = "cuda"))]
#[test]
fn programs_refuse_the_gpu_path_without_cuda() {
    let logs = profile_dir().join("cpp-tests").join("logs");
    fs::create_dir_all(&logs).expect("log dir");
    let log = logs.join("refuse-gpu.log");
    let env = [("UCCL_TCPX_UNPACK_IMPL", "kernel".to_string())];
    let status = command("test_tcpx_perf_multi", &["server", "0"], &env, &log)
        .status()
        .expect("run");
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("needs a build with TCPX_WITH_CUDA"), "{out}");
}

#[test]
fn programs_refuse_bad_arguments() {
    let logs = profile_dir().join("cpp-tests").join("logs");
    fs::create_dir_all(&logs).expect("log dir");
    let log = logs.join("refuse-args.log");
    let status = command("test_devmem_validation", &["sideways"], &[], &log)
        .status()
        .expect("run");
    let out = fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{out}");
    assert!(out.contains("Usage: "), "{out}");
}
