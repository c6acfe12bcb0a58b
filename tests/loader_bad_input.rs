//! Bad input to the plugin loader: every case is a clear error naming the plugin path and the
//! cause — never a panic or a crash.
//!
//! Cases: a path that does not exist; a file that is not a shared library (text, empty); a real
//! shared library without `ncclNetPlugin_v7` (this process's libc); a library exporting only other
//! table versions; a table with NULL required slots; a table whose `init` fails (its log line,
//! sent through the C-variadic logger, must reach `tracing`).
//!
//! The broken plugins are built from `tests/fixtures/bad_plugins.c` by the system C compiler
//! (`$CC`, else `cc`) into `CARGO_TARGET_TMPDIR`; without a C compiler these tests fail with a
//! message saying so.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use tcpx::net::abi::NcclResult;
use tcpx::net::{Plugin, PluginError};

fn scratch_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loader_bad_input");
    std::fs::create_dir_all(&dir).expect("create the scratch dir under CARGO_TARGET_TMPDIR");
    dir
}

/// Compiles `tests/fixtures/bad_plugins.c` with `-D<variant>` into a fresh shared library.
fn fixture(variant: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bad_plugins.c");
    let out = scratch_dir().join(format!(
        "libbad_{}_{}.so",
        variant.to_lowercase(),
        std::process::id()
    ));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let output = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O0", "-Wall"])
        .arg(format!("-D{variant}"))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("these tests build fixture plugins with a C compiler, but `{cc}` could not run ({e}); install gcc or clang, or set CC")
        });
    assert!(
        output.status.success(),
        "`{cc}` failed to build {} with -D{variant}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// The path of the C library mapped into this process (a real shared library without any
/// plugin table).
fn mapped_libc() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(PathBuf::from)
        .find(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with("libc.so") || (n.starts_with("libc-") && n.ends_with(".so"))
            })
        })
        .expect(
            "no shared libc mapped into this process (/proc/self/maps); is the test binary static?",
        )
}

fn load_err(path: &Path) -> PluginError {
    match Plugin::load(path) {
        Ok(p) => panic!("{} loaded as plugin {:?}", path.display(), p.name()),
        Err(e) => e,
    }
}

fn assert_names_path(e: &PluginError, path: &Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&*path.to_string_lossy()),
        "error does not name {}: {msg}",
        path.display()
    );
}

#[test]
fn a_missing_path_is_not_found() {
    let path = scratch_dir().join("no-such-dir/libnccl-net.so");
    let e = load_err(&path);
    assert_eq!(e, PluginError::NotFound { path: path.clone() });
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("no such file"), "{e}");
}

#[test]
fn a_text_file_is_not_a_shared_library() {
    let path = scratch_dir().join(format!("not_a_plugin_{}.so", std::process::id()));
    std::fs::write(&path, "this is a text file, not an ELF shared object\n")
        .expect("write the text file");
    let e = load_err(&path);
    assert!(matches!(e, PluginError::NotSharedLibrary { .. }), "{e:?}");
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("not a shared library"), "{e}");
    let _ = std::fs::remove_file(&path);

    let empty = scratch_dir().join(format!("empty_{}.so", std::process::id()));
    std::fs::write(&empty, b"").expect("write the empty file");
    let e = load_err(&empty);
    assert!(matches!(e, PluginError::NotSharedLibrary { .. }), "{e:?}");
    assert_names_path(&e, &empty);
    let _ = std::fs::remove_file(&empty);
}

#[test]
fn a_library_without_the_table_says_what_it_exports() {
    let libc = mapped_libc();
    let e = load_err(&libc);
    assert_eq!(
        e,
        PluginError::MissingSymbol {
            path: libc.clone(),
            symbol: "ncclNetPlugin_v7",
            exported: vec![]
        }
    );
    assert_names_path(&e, &libc);
    assert!(
        e.to_string().contains("does not export `ncclNetPlugin_v7`"),
        "{e}"
    );

    let v8 = fixture("ONLY_V8");
    let e = load_err(&v8);
    assert_eq!(
        e,
        PluginError::MissingSymbol {
            path: v8.clone(),
            symbol: "ncclNetPlugin_v7",
            exported: vec!["ncclNetPlugin_v8", "ncclCollNetPlugin_v7"],
        }
    );
    assert_names_path(&e, &v8);
    assert!(
        e.to_string()
            .contains("ncclNetPlugin_v8, ncclCollNetPlugin_v7"),
        "{e}"
    );
    let _ = std::fs::remove_file(&v8);
}

#[test]
fn null_required_slots_are_named() {
    let path = fixture("NULL_SLOTS");
    let e = load_err(&path);
    // regMrDmaBuf, iflush and getDeviceMr are NULL too, and allowed.
    assert_eq!(
        e,
        PluginError::NullSlots {
            path: path.clone(),
            slots: vec!["isend", "test"]
        }
    );
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("NULL: isend, test"), "{e}");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_failing_init_names_the_plugin_and_the_rc_and_its_log_reaches_tracing() {
    let path = fixture("INIT_FAILS");
    let (result, events) = common::plugin_log(|| Plugin::load(&path));
    let e = result.expect_err("init fails");
    assert_eq!(
        e,
        PluginError::Init {
            path: path.clone(),
            name: "fixture_init_fails".into(),
            rc: NcclResult::INTERNAL_ERROR
        }
    );
    assert_names_path(&e, &path);
    assert!(e.to_string().contains("ncclInternalError (3)"), "{e}");
    let _ = std::fs::remove_file(&path);

    // The fixture's init called the logger C-variadically: "fixture init refusing: %s %d".
    assert!(
        events
            .iter()
            .any(|(level, msg)| *level == tracing::Level::WARN
                && msg == "fixture init refusing: rc 3"),
        "{events:?}"
    );
}

#[test]
fn sim_plugin_path_finds_a_shared_library() {
    let path = common::sim_plugin_path();
    let bytes = std::fs::read(&path).expect("read the tcpx-sim cdylib");
    assert_eq!(
        bytes.get(..4),
        Some(&b"\x7fELF"[..]),
        "{} is not ELF",
        path.display()
    );
}
