//! Transfer benchmarks: `loopback` (both sides in one process over tcpx-sim), `server` /
//! `client` (one process per side, the C++ tree's `test_tcpx_perf_multi`) and `orchestrator`
//! (every GPU of a node in one process, the C++ tree's `test_tcpx_perf_orchestrator`).
//!
//! The server side receives, the client side sends. Every iteration the sender writes a
//! pattern that encodes the iteration and each 8-byte word's offset, and (unless
//! `--no-verify`) the receiver checks every byte after the timed region; both sides exchange
//! checksums at the end. `loopback --depth D` streams instead: D iterations in flight, the
//! pattern encoding the sender's buffer (a seed no other iteration in flight has) and each
//! word's offset, received buffers checked by a pool of idle-priority threads while the next
//! ones move
//! ([`run_pipelined`], [`crate::check`]). Throughput is GB/s with GB = 10^9 bytes; every report
//! ends with the CPU use of the timed iterations ([`crate::cpu`]).
//!
//! | module | what it holds |
//! |---|---|
//! | this one | the subcommands, their arguments, the agreement with the peer |
//! | [`args`] | [`TransferArgs`], `--preset` and the sim's environment, parsers and limits |
//! | [`side`] | [`Side`] and its buffers, the lock-step loop, the end-of-run exchange |
//! | [`pipeline`] | the `loopback --depth` stream: seeds, receive buffers, the check pool |
//! | [`report`] | iteration times, GB/s summaries, endpoint and NIC counters, the report |

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::limits::{self, MAX_GPU_ID};
use tcpx::bootstrap::{port_for, BootstrapListener};
use tcpx::endpoint::{Agreement, Connection, Endpoint};

mod args;
mod pipeline;
mod report;
mod side;

pub use args::{parse_size, TransferArgs};
use pipeline::run_pipelined;
use report::{endpoint_report, nic_snapshot, print_report};
use side::{finish, run_iterations, Side};

type BoxError = Box<dyn Error + Send + Sync>;

/// `tcpx-bench loopback`: both sides in one process, one endpoint each (GPU ids 0 and 1).
pub fn loopback(args: &TransferArgs) -> Result<(), BoxError> {
    args.validate()?;
    args.check_memory([false, true], "")?;
    let plugin = args.load_plugin()?;
    let deadline = Instant::now() + args.timeout;
    let listener = BootstrapListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = listener.local_addr();
    let mut rx = Endpoint::new(plugin.clone(), args.endpoint_config(0)?)?;
    let tx_cfg = args.endpoint_config(1)?;
    let (size, iters) = (args.size, args.iters);
    let client = std::thread::spawn(move || -> Result<(Endpoint, Connection), String> {
        let mut tx = Endpoint::new(plugin, tx_cfg).map_err(|e| e.to_string())?;
        let conn = tx
            .connect(addr, size, iters, deadline)
            .map_err(|e| e.to_string())?;
        Ok((tx, conn))
    });
    args.say(format_args!(
        "connecting {} channels on loopback",
        args.channels
    ));
    let rconn = rx.serve(&listener, deadline)?;
    let (tx, tconn) = client.join().map_err(|_| "the client thread panicked")??;
    let nic_before = nic_snapshot(&rconn);
    let mut sides = vec![
        Side::new(args, 0, rx, rconn, args.size)?,
        Side::new(args, 1, tx, tconn, args.size)?,
    ];
    args.say(format_args!(
        "running {} + {} iterations of {} bytes",
        args.warmup, args.iters, args.size
    ));
    let times = if args.depth > 1 {
        run_pipelined(args, &mut sides)?
    } else {
        run_iterations(args, &mut sides, |_, _| Ok(()))?
    };
    // Both sides in this process: compare the checksums directly.
    if !args.no_verify && sides[0].checksum != sides[1].checksum {
        return Err(format!(
            "checksums differ: received {:#x}, sent {:#x}",
            sides[0].checksum, sides[1].checksum
        )
        .into());
    }
    let reports = sides
        .iter()
        .map(|s| endpoint_report(s, &nic_before))
        .collect();
    print_report(args, "loopback", &times, 1, reports, json!({}));
    Ok(())
}

/// Arguments of `server`.
#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// The GPU (bootstrap port = base + gpu).
    #[arg(default_value_t = 0)]
    pub gpu: u32,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    #[command(flatten)]
    pub common: TransferArgs,
}

/// Arguments of `client`.
#[derive(clap::Args, Debug)]
pub struct ClientArgs {
    /// The server's address.
    pub server: IpAddr,
    /// The GPU (bootstrap port = base + gpu).
    #[arg(default_value_t = 0)]
    pub gpu: u32,
    #[command(flatten)]
    pub common: TransferArgs,
}

fn barrier_each(sides: &mut [Side], iter: u32, timeout: Duration) -> Result<(), BoxError> {
    let deadline = Instant::now() + timeout;
    for s in sides.iter_mut() {
        s.conn.barrier(iter + 1, deadline)?;
    }
    Ok(())
}

/// `tcpx-bench server`: receive on GPU `gpu`.
pub fn server(a: &ServerArgs) -> Result<(), BoxError> {
    let args = &a.common;
    args.validate()?;
    let plugin = args.load_plugin()?;
    let port = port_for(args.port_base, a.gpu).ok_or("port base + gpu overflows")?;
    let listener = BootstrapListener::bind(SocketAddr::new(a.bind, port))?;
    args.say(format_args!(
        "GPU {} waiting for a client on {}",
        a.gpu,
        listener.local_addr()
    ));
    let mut ep = Endpoint::new(plugin, args.endpoint_config(a.gpu)?)?;
    let conn = ep.serve(&listener, Instant::now() + args.timeout)?;
    run_pair(args, a.gpu, ep, conn, "server")
}

/// `tcpx-bench client`: send from GPU `gpu`.
pub fn client(a: &ClientArgs) -> Result<(), BoxError> {
    let args = &a.common;
    args.validate()?;
    let plugin = args.load_plugin()?;
    let port = port_for(args.port_base, a.gpu).ok_or("port base + gpu overflows")?;
    let mut ep = Endpoint::new(plugin, args.endpoint_config(a.gpu)?)?;
    args.say(format_args!(
        "GPU {} connecting to {}:{port}",
        a.gpu, a.server
    ));
    let conn = ep.connect(
        SocketAddr::new(a.server, port),
        args.size,
        args.iters,
        Instant::now() + args.timeout,
    )?;
    run_pair(args, a.gpu, ep, conn, "client")
}

/// The client proposes size and iterations, the server decides channels and chunk size; the
/// bootstrap's `Handles` carries all four to both sides, which then run identical loops. The
/// size and iterations may be the peer's, so the result is validated again.
fn agreed_args(args: &TransferArgs, agreed: &Agreement) -> Result<TransferArgs, BoxError> {
    let mut args = args.clone();
    args.size = agreed.bytes;
    args.iters = agreed.iters;
    args.channels = agreed.channels;
    args.chunk_bytes = agreed.chunk_bytes.into();
    args.validate()
        .map_err(|e| format!("with the size and iterations agreed with the peer: {e}"))?;
    Ok(args)
}

/// Where the agreed `--size` came from, for error messages.
fn size_origin(sending: bool) -> &'static str {
    if sending {
        ""
    } else {
        " (as the client proposed it)"
    }
}

/// The orchestrator runs one loop for every GPU with the first connection's agreement, so every
/// other connection (`gpu`, `agreed`) must have agreed on the same run.
fn same_agreement(
    (first_gpu, first): (u32, &Agreement),
    (gpu, agreed): (u32, &Agreement),
) -> Result<(), String> {
    let fields = [
        (
            "channels",
            u64::from(first.channels),
            u64::from(agreed.channels),
        ),
        (
            "chunk bytes",
            u64::from(first.chunk_bytes),
            u64::from(agreed.chunk_bytes),
        ),
        ("bytes per iteration", first.bytes, agreed.bytes),
        (
            "iterations",
            u64::from(first.iters),
            u64::from(agreed.iters),
        ),
    ];
    for (what, want, got) in fields {
        if got != want {
            return Err(format!(
                "GPU {gpu}: agreed on {got} {what}, but GPU {first_gpu} on {want}; every GPU's \
                 server and client must be started with the same settings"
            ));
        }
    }
    Ok(())
}

fn run_pair(
    args: &TransferArgs,
    gpu: u32,
    ep: Endpoint,
    conn: Connection,
    mode: &str,
) -> Result<(), BoxError> {
    let args = agreed_args(args, &conn.agreement())?;
    let sending = conn.direction() == tcpx::endpoint::Direction::Send;
    args.check_memory([sending], size_origin(sending))
        .map_err(|e| format!("GPU {gpu}: {e}"))?;
    let nic_before = nic_snapshot(&conn);
    let mut sides = vec![Side::new(&args, gpu, ep, conn, args.size)?];
    let timeout = args.timeout;
    let times = run_iterations(&args, &mut sides, |s, iter| barrier_each(s, iter, timeout))?;
    let checks = finish(&mut sides, &args)?;
    let reports = sides
        .iter()
        .map(|s| endpoint_report(s, &nic_before))
        .collect();
    print_report(
        &args,
        mode,
        &times,
        1,
        reports,
        json!({ "checksums": checks }),
    );
    Ok(())
}

/// Arguments of `orchestrator`.
#[derive(clap::Args, Debug)]
pub struct OrchestratorArgs {
    /// `server` (receive on every GPU) or `client` (send from every GPU).
    #[arg(value_enum)]
    pub role: Role,
    /// The server's address (client role).
    #[arg(long, default_value = "127.0.0.1")]
    pub server: IpAddr,
    /// The GPUs, e.g. `0-7`.
    #[arg(long, default_value = "0-7")]
    pub gpus: String,
    #[command(flatten)]
    pub common: TransferArgs,
}

/// Orchestrator roles.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Receive on every GPU.
    Server,
    /// Send from every GPU.
    Client,
}

/// `tcpx-bench orchestrator`: every GPU of a node in one process, one endpoint (and progress
/// thread) per GPU. The server binds every GPU's bootstrap port before accepting any; the
/// client connects GPU by GPU in ascending order.
pub fn orchestrator(a: &OrchestratorArgs) -> Result<(), BoxError> {
    let args = &a.common;
    let gpus = limits::parse_id_list("--gpus", &a.gpus, MAX_GPU_ID)?;
    args.validate()?;
    let plugin = args.load_plugin()?;
    let deadline = Instant::now() + args.timeout;
    let mut sides = Vec::new();
    match a.role {
        Role::Server => {
            let listeners = gpus
                .iter()
                .map(|&g| {
                    let port = port_for(args.port_base, g).ok_or("port base + gpu overflows")?;
                    Ok(BootstrapListener::bind(SocketAddr::new(
                        [0, 0, 0, 0].into(),
                        port,
                    ))?)
                })
                .collect::<Result<Vec<_>, BoxError>>()?;
            for (&g, l) in gpus.iter().zip(&listeners) {
                args.say(format_args!(
                    "GPU {g}: waiting for its client on {}",
                    l.local_addr()
                ));
                let mut ep = Endpoint::new(plugin.clone(), args.endpoint_config(g)?)?;
                let conn = ep.serve(l, deadline)?;
                sides.push((g, ep, conn));
            }
        }
        Role::Client => {
            for &g in &gpus {
                let port = port_for(args.port_base, g).ok_or("port base + gpu overflows")?;
                args.say(format_args!("GPU {g}: connecting to {}:{port}", a.server));
                let mut ep = Endpoint::new(plugin.clone(), args.endpoint_config(g)?)?;
                let conn = ep.connect(
                    SocketAddr::new(a.server, port),
                    args.size,
                    args.iters,
                    deadline,
                )?;
                sides.push((g, ep, conn));
            }
        }
    }
    let args = &match sides.first() {
        Some(first) => {
            let agreed = first.2.agreement();
            for (g, _, conn) in &sides[1..] {
                same_agreement((first.0, &agreed), (*g, &conn.agreement()))?;
            }
            let args = agreed_args(args, &agreed)?;
            let sending = a.role == Role::Client;
            args.check_memory(
                std::iter::repeat_n(sending, sides.len()),
                size_origin(sending),
            )?;
            args
        }
        None => args.clone(),
    };
    let nic_before = sides
        .first()
        .map(|s| nic_snapshot(&s.2))
        .unwrap_or_default();
    let mut sides = sides
        .into_iter()
        .map(|(g, ep, conn)| Side::new(args, g, ep, conn, args.size))
        .collect::<Result<Vec<_>, _>>()?;
    let timeout = args.timeout;
    let times = run_iterations(args, &mut sides, |s, iter| barrier_each(s, iter, timeout))?;
    let checks = finish(&mut sides, args)?;
    let reports = sides
        .iter()
        .map(|s| endpoint_report(s, &nic_before))
        .collect();
    print_report(
        args,
        "orchestrator",
        &times,
        gpus.len() as u64,
        reports,
        json!({ "checksums": checks }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TransferArgs,
    }

    pub(super) fn args(flags: &[&str]) -> Result<TransferArgs, String> {
        Cli::try_parse_from(std::iter::once("tcpx-bench").chain(flags.iter().copied()))
            .map(|c| c.args)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn size_and_iterations_from_the_peer_are_validated() {
        let ours = args(&[]).unwrap();
        let agreed = Agreement {
            peer_gpu: 0,
            channels: 4,
            chunk_bytes: 1 << 19,
            bytes: u64::MAX,
            iters: 2,
        };
        let e = agreed_args(&ours, &agreed).unwrap_err().to_string();
        assert!(
            e.starts_with("with the size and iterations agreed with the peer"),
            "{e}"
        );
        let fine = Agreement {
            bytes: 1 << 20,
            ..agreed
        };
        let a = agreed_args(&ours, &fine).unwrap();
        assert_eq!(
            (a.size, a.iters, a.channels, a.chunk_bytes),
            (1 << 20, 2, 4, 1 << 19)
        );
    }

    #[test]
    fn every_orchestrated_connection_must_agree_with_the_first() {
        let first = Agreement {
            peer_gpu: 0,
            channels: 8,
            chunk_bytes: 1 << 19,
            bytes: 1 << 26,
            iters: 20,
        };
        // Only the peer's GPU may differ.
        let same = Agreement {
            peer_gpu: 1,
            ..first
        };
        assert_eq!(same_agreement((0, &first), (1, &same)), Ok(()));
        let cases = [
            (
                Agreement {
                    channels: 4,
                    ..first
                },
                "agreed on 4 channels, but GPU 0 on 8",
            ),
            (
                Agreement {
                    chunk_bytes: 1 << 20,
                    ..first
                },
                "agreed on 1048576 chunk bytes, but GPU 0 on 524288",
            ),
            (
                Agreement { bytes: 1, ..first },
                "agreed on 1 bytes per iteration, but GPU 0 on 67108864",
            ),
            (
                Agreement { iters: 3, ..first },
                "agreed on 3 iterations, but GPU 0 on 20",
            ),
        ];
        for (other, want) in cases {
            let e = same_agreement((0, &first), (5, &other)).unwrap_err();
            assert!(e.starts_with(&format!("GPU 5: {want}")), "{e}");
        }
    }
}
