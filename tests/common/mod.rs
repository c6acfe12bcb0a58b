//! Helpers shared by the root crate's integration tests (`mod common;` in a test file).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

/// The tcpx-sim cdylib (`libtcpx_sim.so`) built next to the running test binary.
///
/// `tcpx` has `tcpx-sim` as a dev-dependency, so `cargo test -p tcpx` builds its cdylib into
/// `target/<profile>/deps/` (the test binary's own directory); `cargo build -p tcpx-sim` puts it
/// in `target/<profile>/`. Both are checked. Panics with instructions when it is missing.
pub fn sim_plugin_path() -> PathBuf {
    let name = format!(
        "{}tcpx_sim{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("the test binary's path (current_exe)");
    let deps = exe
        .parent()
        .expect("the test binary has a parent directory")
        .to_path_buf();
    let candidates: Vec<PathBuf> = [Some(deps.clone()), deps.parent().map(PathBuf::from)]
        .into_iter()
        .flatten()
        .map(|d| d.join(&name))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!(
            "the tcpx-sim plugin {name} is not next to the test binary (looked at {candidates:?}); \
             it is built by `cargo test -p tcpx` (tcpx-sim is a dev-dependency) or `cargo build -p tcpx-sim`"
        )
    })
}
