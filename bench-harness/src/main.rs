//! # tcpx-bench
//!
//! Benchmarks for tcpx-rs. Every subcommand prints a table (or `--json`); figures that go into
//! `BENCHMARKS.md` carry the machine, date, commit and the exact command.
//!
//! | subcommand | what it measures |
//! |---|---|
//! | `core` | ns per request-window cycle and per SPSC ring push/pop |
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};

mod core_bench;

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
}

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Core(args) => core_bench::run(args),
    };
    if let Err(e) = result {
        eprintln!("tcpx-bench: {e}");
        std::process::exit(1);
    }
}
