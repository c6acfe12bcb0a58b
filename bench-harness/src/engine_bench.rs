//! `tcpx-bench engine`: the progress engine's own cost per chunk, on the in-process null plugin
//! (`tcpx::net::null`: requests complete at their first `test`, no bytes move).
//!
//! A sending and a receiving endpoint are joined over the bootstrap on loopback; then each
//! side alone keeps its submission ring full of transfers and the progress thread turns them
//! into chunks, posts, tests, releases (and, on the receive side, consumes). With the plugin
//! doing nothing, wall time per chunk is the engine's CPU cost per chunk (the progress thread
//! is the bottleneck; posting costs the user thread once per transfer, not per chunk).
//! Target: ≤ 300 ns per chunk.

use std::error::Error;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;
use tcpx::bootstrap::BootstrapListener;
use tcpx::endpoint::{BufferId, ConnId, Endpoint, EndpointConfig, Error as EpError, Pinning};
use tcpx::net::{null, HostBuffer};

type BoxError = Box<dyn Error + Send + Sync>;

/// Arguments of `tcpx-bench engine`.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// Channels per connection.
    #[arg(long, default_value_t = 8)]
    pub channels: u16,
    /// Chunk size (bytes are never moved; it only sets chunks per transfer).
    #[arg(long, default_value = "512KiB", value_parser = crate::transfer::parse_size)]
    pub chunk_bytes: u64,
    /// Bytes per transfer.
    #[arg(long, default_value = "64MiB", value_parser = crate::transfer::parse_size)]
    pub size: u64,
    /// Transfers per measurement.
    #[arg(long, default_value_t = 2000)]
    pub transfers: u32,
    /// Repeat each measurement and report the best run.
    #[arg(long, default_value_t = 3)]
    pub repeats: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Keep `ep`'s ring full with `transfers` transfers; returns the time they took.
fn drive(
    ep: &mut Endpoint,
    conn: ConnId,
    buf: BufferId,
    size: u64,
    transfers: u32,
) -> Result<Duration, BoxError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let start = Instant::now();
    let (mut posted, mut done) = (0u32, 0u32);
    while done < transfers {
        while posted < transfers {
            match ep.post(conn, buf, 0, size) {
                Ok(_) => posted += 1,
                Err(EpError::Busy) => break,
                Err(e) => return Err(e.into()),
            }
        }
        match ep.poll() {
            Some(c) => {
                c.result.map_err(|e| format!("transfer failed: {e}"))?;
                done += 1;
            }
            None if Instant::now() > deadline => return Err("engine bench timed out".into()),
            None => std::hint::spin_loop(),
        }
    }
    Ok(start.elapsed())
}

/// Run `tcpx-bench engine`.
pub fn run(args: &EngineArgs) -> Result<(), BoxError> {
    let chunk_bytes = u32::try_from(args.chunk_bytes)
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| {
            format!(
                "--chunk-bytes {}: expected above 0 and at most 4 MiB",
                args.chunk_bytes
            )
        })?;
    let plugin = null::plugin()?;
    let config = |gpu| EndpointConfig {
        gpu,
        channels: args.channels,
        chunk_bytes,
        pinning: Pinning::Off,
        yield_when_waiting: false,
        ..EndpointConfig::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let listener = BootstrapListener::bind("127.0.0.1:0".parse()?)?;
    let addr = listener.local_addr();
    let (p, txc) = (plugin.clone(), config(1));
    let (size, transfers) = (args.size, args.transfers);
    let client = thread::spawn(move || -> Result<_, String> {
        let mut tx = Endpoint::new(p, txc).map_err(|e| e.to_string())?;
        let conn = tx
            .connect(addr, size, transfers, deadline)
            .map_err(|e| e.to_string())?;
        Ok((tx, conn))
    });
    let mut rx = Endpoint::new(plugin, config(0))?;
    let rconn = rx.serve(&listener, deadline)?;
    let (mut tx, tconn) = client.join().map_err(|_| "client thread panicked")??;
    let region = Arc::new(HostBuffer::new(usize::try_from(args.size)?)?);
    let sbuf = tx.register(region.clone())?;
    let rbuf = rx.register(region)?;
    let chunks_per_transfer = args.size.div_ceil(u64::from(chunk_bytes)).max(1);
    let chunks = chunks_per_transfer
        .checked_mul(u64::from(args.transfers))
        .ok_or("--size / --chunk-bytes × --transfers overflows a 64-bit chunk count")?;

    // Warm up both sides, then measure each alone, best of `repeats`.
    drive(&mut tx, tconn.id(), sbuf, args.size, 50)?;
    drive(&mut rx, rconn.id(), rbuf, args.size, 50)?;
    let best = |ep: &mut Endpoint, conn: ConnId, buf: BufferId| -> Result<f64, BoxError> {
        let mut best = f64::INFINITY;
        for _ in 0..args.repeats.max(1) {
            let t = drive(ep, conn, buf, args.size, args.transfers)?;
            best = best.min(t.as_nanos() as f64 / chunks as f64);
        }
        Ok(best)
    };
    let send_ns = best(&mut tx, tconn.id(), sbuf)?;
    let recv_ns = best(&mut rx, rconn.id(), rbuf)?;
    let (stats, _) = tx.stats()?;
    let tests: u64 = stats.iter().map(|c| c.stats.test_calls).sum();
    let released: u64 = stats.iter().map(|c| c.stats.chunks).sum();
    if args.json {
        println!(
            "{}",
            json!({
                "bench": "engine",
                "plugin": "null",
                "channels": args.channels,
                "chunk_bytes": args.chunk_bytes,
                "chunks_per_transfer": chunks_per_transfer,
                "chunks": chunks,
                "send_ns_per_chunk": send_ns,
                "recv_ns_per_chunk": recv_ns,
                "send_tests_per_chunk": tests as f64 / released.max(1) as f64,
            })
        );
    } else {
        println!(
            "tcpx-bench engine: null plugin, {} channels, {} chunks per transfer, {} chunks per run, best of {}",
            args.channels, chunks_per_transfer, chunks, args.repeats
        );
        println!("{:<40} {:>10}", "side", "ns/chunk");
        println!("{:<40} {:>10.1}", "send (isend, test, release)", send_ns);
        println!(
            "{:<40} {:>10.1}",
            "recv (irecv, test, consume, release)", recv_ns
        );
        println!("target ≤ 300 ns per chunk");
    }
    Ok(())
}
