//! # tcpx-ffi-cxx
//!
//! The C++ drop-in for the C++ tcpx tree (UCCL `p2p/tcpx`): one cxx bridge ([`bridge`]) plus
//! C++ glue (`cpp/src/*.cc`, compiled by this crate's build script), built as a static library.
//! The headers in `cpp/include/` keep the tree's names and shapes — the `tcpx_*` plugin
//! wrappers, `ChannelManager`, `SlidingWindow`, the bootstrap calls, the unpack launcher — so
//! the tree can swap its pieces for these one at a time by changing an include and a link
//! line; `tcpx::Endpoint` gives other C++ transports the whole engine.
//!
//! | module | behind which C++ API |
//! |---|---|
//! | [`bridge`] | the cxx declarations and shared types |
//! | [`status`] | `tcpx::Status`, errors, the panic guard, `tcpx_last_error()` |
//! | [`plugin`] | `tcpx_load_plugin`, `tcpx_get_device_count`, `tcpx_get_properties` |
//! | [`comms`] | `tcpx_listen` … `tcpx_close_*`, `tcpx_request_unpack_slot` (comm, request and memory-handle tokens) |
//! | [`token`] | how those tokens are laid out |
//! | [`region`] | caller-owned memory registered by pointer |
//! | [`window`] | `SlidingWindow` (its plugin calls go back to the linked `tcpx_test` / `tcpx_irecv_consumed`) |
//! | [`channels`] | `ChannelManager`'s NIC choice (by PCI topology) |
//! | [`bootstrap`] | `bootstrap_server_create` & co. |
//! | [`endpoint`] | `tcpx::Endpoint` |
//! | [`unpack`] | fragment validation for `tcpx::UnpackLauncher` |
//!
//! The migration guide is `cpp/README.md`. Everything here is reachable from C++, so nothing
//! panics across the boundary: every bridged function runs under `catch_unwind`.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod bootstrap;
// The cxx macro expands to `unsafe` glue (extern "C" shims); the code written here has none.
#[allow(unsafe_code)]
pub mod bridge;
pub mod channels;
pub mod comms;
pub mod endpoint;
pub mod plugin;
pub mod region;
pub mod status;
pub mod token;
pub mod unpack;
pub mod window;
