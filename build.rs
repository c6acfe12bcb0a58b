//! Build script of the `tcpx` crate.
//!
//! * Always: compiles `src/net/logger_shim.c`, the C-variadic `ncclDebugLogger_t` that the plugin
//!   loader passes to a plugin's `init` (Rust cannot define a C-variadic function on stable).
//! * Feature `cuda`: nothing yet (see below).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/net/logger_shim.c");

    cc::Build::new()
        .file("src/net/logger_shim.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("tcpx_logger_shim");

    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // CUDA seam: the CUDA issue compiles the unpack kernel `cuda/unpack.cu` (and its C
        // launcher) here with nvcc through `cc::Build::new().cuda(true)`. Nothing is built yet,
        // so the `cuda` feature currently adds no code.
    }
}
