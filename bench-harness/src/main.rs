//! # tcpx-bench
//!
//! Benchmarks for tcpx-rs. Every subcommand prints a table (or `--json`); figures that go into
//! `BENCHMARKS.md` carry the machine, date, commit and the exact command.
//!
//! | subcommand | what it measures |
//! |---|---|
//! | `core` | ns per request-window cycle and per SPSC ring push/pop |
//! | `loopback` | both sides in one process over tcpx-sim: verified GB/s |
//! | `server` / `client` | one process per side (port base + GPU), like `test_tcpx_perf_multi` |
//! | `orchestrator` | every GPU of a node in one process, like `test_tcpx_perf_orchestrator` |
//! | `engine` | the progress engine's ns per chunk on an in-process null plugin |
//! | `unpack` | (feature `cuda`) the GPU unpack kernel: GB/s vs D2D copy, launch → event vs empty kernel |
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod check;
mod core_bench;
mod cpu;
mod engine_bench;
mod limits;
mod transfer;
#[cfg(feature = "cuda")]
mod unpack_bench;

/// Benchmarks for tcpx-rs.
#[derive(Parser, Debug)]
#[command(name = "tcpx-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Hot-path cost of the core: request window cycles and ring push/pop, in ns per operation.
    Core(core_bench::CoreArgs),
    /// Both sides in one process over tcpx-sim (or --plugin): verified throughput.
    Loopback(transfer::TransferArgs),
    /// Receive side of a GPU pair (listens on port base + GPU).
    Server(transfer::ServerArgs),
    /// Send side of a GPU pair.
    Client(transfer::ClientArgs),
    /// Every GPU of a node in one process (one endpoint per GPU).
    Orchestrator(transfer::OrchestratorArgs),
    /// The progress engine's cost per chunk on an in-process null plugin.
    Engine(engine_bench::EngineArgs),
    /// GPU unpack kernel: bandwidth against a D2D copy, launch latency against an empty kernel.
    #[cfg(feature = "cuda")]
    Unpack(unpack_bench::UnpackArgs),
}

fn main() {
    let cli = Cli::parse();
    // Environment first, while this is the only thread.
    match &cli.command {
        Command::Core(_) | Command::Engine(_) => {}
        Command::Loopback(a) => a.prepare_env(),
        Command::Server(a) => a.common.prepare_env(),
        Command::Client(a) => a.common.prepare_env(),
        Command::Orchestrator(a) => a.common.prepare_env(),
        #[cfg(feature = "cuda")]
        Command::Unpack(_) => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TCPX_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result: Result<(), Box<dyn std::error::Error + Send + Sync>> = match &cli.command {
        Command::Core(args) => core_bench::run(args).map_err(|e| e.to_string().into()),
        Command::Loopback(args) => transfer::loopback(args),
        Command::Server(args) => transfer::server(args),
        Command::Client(args) => transfer::client(args),
        Command::Orchestrator(args) => transfer::orchestrator(args),
        Command::Engine(args) => engine_bench::run(args),
        #[cfg(feature = "cuda")]
        Command::Unpack(args) => unpack_bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("tcpx-bench: {e}");
        std::process::exit(1);
    }
}
