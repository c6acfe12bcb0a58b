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

/// Runs `f` with every `tracing` event of this thread captured, and returns the plugin's log
/// lines (the loader forwards them to target `tcpx::plugin`) as (level, message).
pub fn plugin_log<T>(f: impl FnOnce() -> T) -> (T, Vec<(tracing::Level, String)>) {
    let capture = Capture::default();
    let out = tracing::subscriber::with_default(capture.clone(), f);
    let lines = capture
        .0
        .lock()
        .map(|v| {
            v.iter()
                .filter(|(target, _, _)| target == "tcpx::plugin")
                .map(|(_, level, msg)| (*level, msg.clone()))
                .collect()
        })
        .unwrap_or_default();
    (out, lines)
}

/// A `tracing` subscriber that keeps (target, level, message) of every event.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<(String, tracing::Level, String)>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            *self.0 = format!("{value:?}");
        }
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut msg = String::new();
        event.record(&mut Message(&mut msg));
        if let Ok(mut v) = self.0.lock() {
            v.push((
                event.metadata().target().to_owned(),
                *event.metadata().level(),
                msg,
            ));
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
