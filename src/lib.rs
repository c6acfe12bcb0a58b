//! # tcpx
//!
//! Move GPU buffers between machines over Google's GPUDirect-TCPX by driving the TCPX NCCL net
//! plugin directly. See the workspace README for the architecture map.
//!
//! | module | what it holds |
//! |---|---|
//! | [`net`] | the plugin ABI mirror and the plugin loader |
#![warn(missing_docs)]

pub mod net;

pub use tcpx_core as core;
