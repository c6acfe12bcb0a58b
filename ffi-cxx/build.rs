//! Builds the C++ half of the drop-in: the cxx bridge's generated shims plus the glue in
//! `cpp/src/*.cc` (the `tcpx_*` wrappers, `SlidingWindow`, `ChannelManager`, bootstrap,
//! `tcpx::Endpoint`), all compiled into this crate, so `libtcpx_ffi_cxx.a` is the one library a
//! C++ program links.
//!
//! The generated headers (`rust/cxx.h`, `tcpx-ffi-cxx/src/bridge.rs.h`) are only needed by the
//! glue; the public headers in `cpp/include/` do not include them. They are still copied to
//! `<target>/<profile>/tcpx-ffi-cxx/include/` for C++ code that wants to call the bridge
//! directly, and their `OUT_DIR` location is exported to this crate's tests as
//! `TCPX_FFI_CXX_INCLUDE`.

use std::path::{Path, PathBuf};

const GLUE: [&str; 7] = [
    "status.cc",
    "tcpx_interface.cc",
    "sliding_window.cc",
    "channel_manager.cc",
    "bootstrap.cc",
    "endpoint.cc",
    "unpack_launch.cc",
];

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let cpp = manifest.join("..").join("cpp");
    let include = cpp.join("include");
    let glue: Vec<PathBuf> = GLUE.iter().map(|f| cpp.join("src").join(f)).collect();

    let mut build = cxx_build::bridge("src/bridge.rs");
    build
        .files(&glue)
        .include(&include)
        .include(cpp.join("src"))
        .std("c++17")
        .flag_if_supported("-Wall")
        .flag_if_supported("-Wextra")
        .flag_if_supported("-fno-strict-aliasing");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_some() {
        // GPU events in SlidingWindow and the CUDA unpack launch; the final link adds cudart.
        let cuda_home = std::env::var_os("CUDA_HOME")
            .map_or_else(|| PathBuf::from("/usr/local/cuda"), PathBuf::from);
        build
            .define("TCPX_WITH_CUDA", None)
            .include(cuda_home.join("include"))
            .include(manifest.join("..").join("cuda"))
            .file(cpp.join("src").join("unpack_launch_cuda.cc"));
        println!("cargo:rerun-if-env-changed=CUDA_HOME");
        println!(
            "cargo:rerun-if-changed={}",
            manifest.join("../cuda/unpack.h").display()
        );
    }
    build.compile("tcpx_ffi_cxx_glue");

    println!("cargo:rerun-if-changed=src/bridge.rs");
    println!("cargo:rerun-if-changed={}", include.display());
    for f in &glue {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    for entry in std::fs::read_dir(&include).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    for entry in std::fs::read_dir(cpp.join("src"))
        .into_iter()
        .flatten()
        .flatten()
    {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }

    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let generated = out.join("cxxbridge").join("include");
    println!(
        "cargo:rustc-env=TCPX_FFI_CXX_INCLUDE={}",
        generated.display()
    );
    if let Some(profile_dir) = profile_dir(&out) {
        copy_tree(
            &generated,
            &profile_dir.join("tcpx-ffi-cxx").join("include"),
        );
    }
}

/// `<target>/<profile>` from `<target>/<profile>/build/<pkg>-<hash>/out`, when the layout is the
/// usual one.
fn profile_dir(out: &Path) -> Option<PathBuf> {
    let build = out.parent()?.parent()?;
    (build.file_name()? == "build").then(|| build.parent().map(Path::to_path_buf))?
}

/// Copies a directory tree, following the symlinks cxx-build leaves in `OUT_DIR`. Best effort:
/// the copy is a convenience for C++ builds outside cargo.
fn copy_tree(from: &Path, to: &Path) {
    let Ok(entries) = std::fs::read_dir(from) else {
        return;
    };
    let _ = std::fs::create_dir_all(to);
    for entry in entries.flatten() {
        let path = entry.path();
        let dest = to.join(entry.file_name());
        if path.is_dir() {
            copy_tree(&path, &dest);
        } else {
            let _ = std::fs::copy(&path, &dest);
        }
    }
}
