//! Build script of the `tcpx` crate.
//!
//! * Always: compiles `src/net/logger_shim.c`, the C-variadic `ncclDebugLogger_t` that the plugin
//!   loader passes to a plugin's `init` (Rust cannot define a C-variadic function on stable).
//! * Feature `cuda`: compiles the unpack kernels `cuda/unpack.cu` with nvcc into a fatbin (SASS
//!   for sm_90 plus PTX for compute_90) at `$OUT_DIR/unpack.fatbin`, which `src/cuda/` embeds
//!   with `include_bytes!` and loads through the driver API at run time. No CUDA runtime is
//!   linked, so the binaries build anywhere and run wherever `libcuda.so` exists.
//!
//! nvcc is looked up, in order, as `$CUDA_HOME/bin/nvcc`, `nvcc` on `PATH`, and the project's
//! own toolkit `.cuda/toolkit/nvidia/cu13/bin/nvcc` installed by `scripts/install-nvcc.sh`.
//! Without the `cuda` feature nvcc is never needed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/net/logger_shim.c");

    cc::Build::new()
        .file("src/net/logger_shim.c")
        .warnings(true)
        .extra_warnings(true)
        .compile("tcpx_logger_shim");

    if env::var_os("CARGO_FEATURE_CUDA").is_some() {
        build_cuda();
    }
}

/// Where the project's own toolkit lives, relative to the crate root.
const PROJECT_TOOLKIT: &str = ".cuda/toolkit/nvidia/cu13";

fn build_cuda() {
    println!("cargo:rerun-if-changed=cuda/unpack.cu");
    println!("cargo:rerun-if-changed=cuda/unpack.h");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default());
    let project_nvcc = manifest.join(PROJECT_TOOLKIT).join("bin/nvcc");

    let Some(nvcc) = find_nvcc(&project_nvcc) else {
        fail(&format!(
            "feature `cuda` needs nvcc to compile cuda/unpack.cu, and none was found. Looked for:\n\
             \x20 1. $CUDA_HOME/bin/nvcc (CUDA_HOME is {})\n\
             \x20 2. nvcc on PATH\n\
             \x20 3. the project's toolkit {} (install it with scripts/install-nvcc.sh, then \
             export the CUDA_HOME it prints)\n\
             Build without `--features cuda` to skip the CUDA code.",
            env::var("CUDA_HOME").map_or_else(|_| "not set".to_owned(), |h| format!("`{h}`")),
            project_nvcc.display(),
        ));
    };

    // A reinstalled or switched nvcc rebuilds the kernels (the path exists: it was found).
    println!("cargo:rerun-if-changed={}", nvcc.display());

    let fatbin = out.join("unpack.fatbin");
    let mut cmd = Command::new(&nvcc);
    cmd.args([
        "--fatbin",
        "-O3",
        "-std=c++17",
        "-lineinfo",
        "-gencode",
        "arch=compute_90,code=sm_90",
        "-gencode",
        "arch=compute_90,code=compute_90",
        "-Werror",
        "all-warnings",
    ])
    .arg("-I")
    .arg(manifest.join("cuda"))
    .arg("-o")
    .arg(&fatbin)
    .arg(manifest.join("cuda/unpack.cu"));
    match cmd.status() {
        Ok(status) if status.success() => {}
        Ok(status) => fail(&format!(
            "{} failed ({status}) compiling cuda/unpack.cu: {cmd:?}",
            nvcc.display()
        )),
        Err(e) => fail(&format!("could not run {}: {e}", nvcc.display())),
    }
}

fn find_nvcc(project_nvcc: &Path) -> Option<PathBuf> {
    if let Some(home) = env::var_os("CUDA_HOME").filter(|h| !h.is_empty()) {
        let nvcc = PathBuf::from(home).join("bin/nvcc");
        if nvcc.is_file() {
            return Some(nvcc);
        }
    }
    if let Some(path) = env::var_os("PATH") {
        if let Some(nvcc) = env::split_paths(&path)
            .map(|dir| dir.join("nvcc"))
            .find(|p| p.is_file())
        {
            return Some(nvcc);
        }
    }
    project_nvcc.is_file().then(|| project_nvcc.to_path_buf())
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={}", msg.lines().next().unwrap_or(msg));
    exit(1);
}
