//! # tcpx
//!
//! Move GPU buffers between machines over Google's GPUDirect-TCPX by driving the TCPX NCCL net
//! plugin directly. See the workspace README for the architecture map.
//!
//! | module | what it holds |
//! |---|---|
//! | [`net`] | the plugin ABI mirror and the plugin loader |
//! | [`topology`] | PCI/NUMA topology from sysfs and the channel → NIC choice |
#![warn(missing_docs)]

pub mod net;
pub mod topology;

pub use tcpx_core as core;
