//! # tcpx-ffi-cxx
//!
//! The C++ drop-in for the C++ tcpx tree: a cxx bridge built as a static library, so the tree can
//! swap its `SlidingWindow`, `ChannelManager`, bootstrap and plugin wrappers for ours one at a
//! time, and other C++ transports can link the whole engine.
//!
//! Status: not built yet. This crate exists so the workspace shows the architecture; the bridge,
//! the headers in `cpp/include/` and the C++ test programs arrive with the C++ drop-in issue. It
//! exports nothing today.
#![forbid(unsafe_code)]
