//! # tcpx
//!
//! Move GPU buffers between machines over Google's GPUDirect-TCPX by driving the TCPX NCCL net
//! plugin directly. See the workspace README for the architecture map.
//!
//! | module | what it holds |
//! |---|---|
//! | [`bootstrap`] | the TCP control plane: hello, listen handles, barriers |
//! | [`channel`] | the ChannelManager: N comms per GPU, NIC choice, listen/accept/connect |
//! | `cuda` | (feature `cuda`) the GPU unpack: device buffers, stream, events, the batched unpack kernel |
//! | [`engine`] | the progress engine: one thread per GPU keeping every comm busy |
//! | [`endpoint`] | the public API: endpoints, connections, post / poll / wait |
//! | [`net`] | the plugin ABI mirror and the plugin loader |
//! | [`topology`] | PCI/NUMA topology from sysfs and the channel → NIC choice |
//! | [`wait`] | bounded polling waits for GPU work (streams, events), here and in tcpx-sim |
//!
//! `unsafe` is denied crate-wide and allowed in two modules only: [`net`] (the plugin loader)
//! and `cuda` (the CUDA glue); every block there carries a `// SAFETY:` comment.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod bootstrap;
pub mod channel;
#[cfg(feature = "cuda")]
#[allow(unsafe_code)]
pub mod cuda;
pub mod endpoint;
pub mod engine;
#[allow(unsafe_code)]
pub mod net;
pub mod topology;
pub mod wait;

pub use tcpx_core as core;
