//! What a run reports: its timed iterations ([`Timed`], [`IterTime`]), their GB/s summary
//! ([`summarize`]; GB = 10^9 bytes, computed on bytes as `f64` so a product of sizes and
//! counts cannot overflow, and over windows of `--depth` completions for a pipelined run),
//! each endpoint's channel, NIC and progress-thread counters ([`endpoint_report`],
//! [`nic_snapshot`]), and the table or JSON object printed at the end ([`print_report`]),
//! which ends with the CPU use of the timed iterations ([`crate::cpu`]).

use serde_json::{json, Value};

use super::args::{Mem, TransferArgs};
use super::side::Side;
use crate::cpu;
use tcpx::endpoint::Connection;
use tcpx::topology::Sysfs;

/// The timed iterations of a run and where the CPU went meanwhile ([`cpu::report`]).
pub(super) struct Timed {
    pub(super) times: Vec<IterTime>,
    pub(super) cpu: Value,
    /// Iterations per rate in the summary's median/min/max: 1, or `--depth` for a pipelined
    /// run, whose single completion intervals say little.
    pub(super) window: u32,
    /// A pipelined run's shape and buffer reuse (`null` otherwise).
    pub(super) pipeline: Value,
}

/// Timing of one iteration.
#[derive(Clone, Copy, Debug)]
pub(super) struct IterTime {
    pub(super) iter: u32,
    pub(super) secs: f64,
}

/// GB/s (bytes as `f64`, so a product of sizes and counts cannot overflow).
pub(super) fn gbps(bytes: f64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes / secs / 1e9
    } else {
        0.0
    }
}

fn summarize(times: &[IterTime], window: u32, bytes_per_iter: u64) -> Value {
    let w = window.max(1) as usize;
    let mut rates: Vec<f64> = times
        .chunks(w)
        .map(|c| {
            gbps(
                bytes_per_iter as f64 * c.len() as f64,
                c.iter().map(|t| t.secs).sum(),
            )
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    let total_secs: f64 = times.iter().map(|t| t.secs).sum();
    let n = rates.len().max(1);
    json!({
        "iters": times.len(),
        "bytes_per_iter": bytes_per_iter,
        "avg_gbps": gbps(bytes_per_iter as f64 * times.len() as f64, total_secs),
        "median_gbps": rates.get(n / 2).copied().unwrap_or(0.0),
        "min_gbps": rates.first().copied().unwrap_or(0.0),
        "max_gbps": rates.last().copied().unwrap_or(0.0),
        "avg_ms": total_secs * 1e3 / n as f64,
    })
}

/// Per-channel counters, NIC counters and thread placement of an endpoint.
pub(super) fn endpoint_report(
    side: &Side,
    nic_before: &[(String, Option<tcpx::topology::NicBytes>)],
) -> Value {
    let sys = Sysfs::default();
    let (channels, thread) = match side.ep.stats() {
        Ok(s) => s,
        Err(e) => return json!({ "error": e.to_string() }),
    };
    let chans: Vec<Value> = channels
        .iter()
        .map(|c| {
            json!({
                "channel": c.channel,
                "nic": side.conn.nics().get(c.channel).map(|n| n.1.clone()),
                "bytes": c.stats.bytes,
                "chunks": c.stats.chunks,
                "requests": c.stats.requests,
                "test_calls": c.stats.test_calls,
                "max_window_depth": c.stats.max_window_depth,
            })
        })
        .collect();
    let nics: Vec<Value> = nic_before
        .iter()
        .map(|(name, before)| {
            let after = sys.nic_bytes(name);
            let ours: u64 = channels
                .iter()
                .filter(|c| {
                    side.conn
                        .nics()
                        .get(c.channel)
                        .is_some_and(|n| &n.1 == name)
                })
                .map(|c| c.stats.bytes)
                .sum();
            json!({
                "nic": name,
                "our_bytes": ours,
                "sysfs_tx_bytes": after.zip(*before).map(|(a, b)| a.tx.wrapping_sub(b.tx)),
                "sysfs_rx_bytes": after.zip(*before).map(|(a, b)| a.rx.wrapping_sub(b.rx)),
            })
        })
        .collect();
    json!({
        "gpu": side.gpu,
        "role": if side.sending { "send" } else { "recv" },
        "progress_thread": { "pinned": thread.pinned, "last_cpu": thread.last_cpu, "loops": thread.loops },
        "channels": chans,
        "nics": nics,
    })
}

pub(super) fn nic_snapshot(conn: &Connection) -> Vec<(String, Option<tcpx::topology::NicBytes>)> {
    let sys = Sysfs::default();
    let mut names: Vec<String> = conn.nics().iter().map(|n| n.1.clone()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let b = sys.nic_bytes(&n);
            (n, b)
        })
        .collect()
}

pub(super) fn print_report(
    args: &TransferArgs,
    mode: &str,
    run: &Timed,
    pairs: u64,
    reports: Vec<Value>,
    extra: Value,
) {
    let times = &run.times;
    let summary = summarize(times, run.window, args.size.saturating_mul(pairs));
    let out = json!({
        "bench": mode,
        "plugin": args.plugin.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "tcpx-sim".into()),
        "channels": args.channels,
        "chunk_bytes": args.chunk_bytes,
        "size": args.size,
        "pairs": pairs,
        "verified": !args.no_verify,
        "mem": format!("{:?}", args.mem).to_lowercase(),
        "unpack": if args.mem == Mem::Gpu { Some(args.unpack.clone()) } else { None },
        "summary": summary,
        "iterations": times.iter().map(|t| json!({"iter": t.iter, "ms": t.secs * 1e3})).collect::<Vec<_>>(),
        "endpoints": reports,
        "cpu": run.cpu,
        "pipeline": run.pipeline,
        "extra": extra,
    });
    if args.json {
        println!("{out}");
        return;
    }
    println!(
        "\n{mode}: {} × {} bytes, {} channels, {} KiB chunks, {}",
        times.len(),
        args.size.saturating_mul(pairs),
        args.channels,
        args.chunk_bytes >> 10,
        if args.no_verify {
            "NOT verified"
        } else {
            "every byte verified"
        }
    );
    println!(
        "avg {:.2} GB/s  median {:.2}  min {:.2}  max {:.2}  ({:.3} ms/iter)",
        summary["avg_gbps"].as_f64().unwrap_or(0.0),
        summary["median_gbps"].as_f64().unwrap_or(0.0),
        summary["min_gbps"].as_f64().unwrap_or(0.0),
        summary["max_gbps"].as_f64().unwrap_or(0.0),
        summary["avg_ms"].as_f64().unwrap_or(0.0),
    );
    for r in &reports {
        let t = &r["progress_thread"];
        println!(
            "GPU {} ({}): progress thread {}, last on CPU {}",
            r["gpu"],
            r["role"].as_str().unwrap_or("?"),
            match &t["pinned"] {
                Value::Null => "not pinned".to_owned(),
                p => format!("pinned to {p}"),
            },
            t["last_cpu"]
        );
        for n in r["nics"].as_array().into_iter().flatten() {
            println!(
                "  NIC {}: our bytes {}, sysfs tx {} rx {}",
                n["nic"].as_str().unwrap_or("?"),
                n["our_bytes"],
                n["sysfs_tx_bytes"],
                n["sysfs_rx_bytes"]
            );
        }
    }
    for line in cpu::lines(&run.cpu) {
        println!("{line}");
    }
}
