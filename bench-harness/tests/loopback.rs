//! `tcpx-bench loopback` over tcpx-sim, both sides in one process: one iteration at a time and
//! pipelined (`--depth`, checks on worker threads), every byte verified, checksums matched,
//! and the CPU report present.

mod common;

fn loopback(args: &[&str]) -> serde_json::Value {
    let out = common::bench()
        .args(["loopback", "--json", "--pin", "off", "--timeout", "60"])
        .args(args)
        .output()
        .expect("run tcpx-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tcpx-bench loopback {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).expect("one JSON object")
}

fn check(r: &serde_json::Value, iters: u64) {
    assert_eq!(r["verified"], true);
    assert_eq!(r["summary"]["iters"], iters);
    assert!(r["summary"]["avg_gbps"]
        .as_f64()
        .is_some_and(f64::is_finite));
    let groups = r["cpu"]["groups"].as_array().expect("a CPU report");
    assert!(
        groups.iter().any(|g| g["group"] == "tcpx-sim-tx*"),
        "{}",
        r["cpu"]
    );
}

#[test]
fn one_iteration_at_a_time() {
    let r = loopback(&["--channels", "3", "--size", "3MiB", "--iters", "4"]);
    check(&r, 4);
}

#[test]
fn pipelined_with_check_threads() {
    let r = loopback(&[
        "--channels",
        "4",
        "--size",
        "2MiB",
        "--iters",
        "40",
        "--depth",
        "3",
        "--check-threads",
        "2",
    ]);
    check(&r, 40);
    let groups = r["cpu"]["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["group"] == "tcpx-check*" && g["threads"] == 2),
        "{}",
        r["cpu"]
    );
}

#[test]
fn pipelined_odd_size_unverified_and_one_check_thread() {
    let odd = (1 << 20) + 12345;
    let r = loopback(&[
        "--channels",
        "2",
        "--size",
        &odd.to_string(),
        "--iters",
        "9",
        "--depth",
        "4",
        "--check-threads",
        "1",
    ]);
    check(&r, 9);
    let mut args = vec!["--channels", "2", "--size", "1MiB", "--iters", "9"];
    args.extend(["--depth", "2", "--no-verify"]);
    let r = loopback(&args);
    assert_eq!(r["verified"], false);
    assert_eq!(r["summary"]["iters"], 9);
}

/// CPUs in this process's affinity mask (`Cpus_allowed_list`, e.g. `0-3,8-11`).
fn allowed_cpus() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim();
    list.split(',')
        .map(|r| match r.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

#[test]
fn pipelined_default_pool_has_one_check_thread_per_cpu_and_reuses_buffers() {
    // Many small iterations over few buffers: each reuse gets a seed its buffer does not hold,
    // so no buffer is ever poisoned after the first pass.
    let r = loopback(&[
        "--channels",
        "2",
        "--size",
        "300KiB",
        "--iters",
        "400",
        "--depth",
        "5",
    ]);
    check(&r, 400);
    let cpus = allowed_cpus();
    assert_eq!(r["pipeline"]["depth"], 5);
    assert_eq!(r["pipeline"]["check_threads"], cpus);
    assert_eq!(r["pipeline"]["receive_buffers"], 5 + cpus);
    assert_eq!(r["pipeline"]["poisoned"], 0, "{}", r["pipeline"]);
    let groups = r["cpu"]["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["group"] == "tcpx-check*" && g["threads"] == cpus),
        "{cpus} CPUs: {}",
        r["cpu"]
    );
}

#[test]
fn pipelined_without_spare_buffers_waits_for_its_checks() {
    // No spares: every receive buffer is in flight or being checked, so each post waits for a
    // check to finish (the `posted == completed` path); every byte is still verified.
    let r = loopback(&[
        "--channels",
        "3",
        "--size",
        "700KiB",
        "--iters",
        "60",
        "--depth",
        "2",
        "--check-threads",
        "3",
        "--spare-buffers",
        "0",
    ]);
    check(&r, 60);
}
