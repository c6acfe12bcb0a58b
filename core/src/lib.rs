//! # tcpx-core
//!
//! The sans-IO heart of tcpx-rs: every piece of state the transport keeps on its hot path, with
//! no sockets, no plugin calls, no clocks, no allocation and no locks. Time and I/O results are
//! arguments; the `tcpx` crate executes what this crate decides.
//!
//! | module | what it holds |
//! |---|---|
//! | [`window`] | the per-comm request window: FIFO, fixed capacity, posted → done → unpacking → released |
//! | [`ring`] | a lock-free single-producer single-consumer ring for submissions and completions |
//! | [`plan`] | the chunk plan: how a transfer is cut into chunks and spread over channels |
//! | [`unpack`] | TCPX unpack metadata (`loadMeta`, `netUnpackMeta`), slot accounting, fragment validation |
//! | [`codec`] | the bootstrap wire codec |
//! | [`stats`] | `Copy` counters |
//!
//! Invariants that hold crate-wide:
//! * `#![no_std]` without `alloc`: nothing here can allocate, so nothing here can allocate on the
//!   hot path.
//! * `unsafe` appears only in [`ring`]: the crate denies `unsafe_code` and allows it there alone.
//! * Misuse is a typed error, never a panic.
#![no_std]
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod codec;
pub mod plan;
#[allow(unsafe_code)]
pub mod ring;
pub mod stats;
mod sync;
pub mod unpack;
pub mod window;
