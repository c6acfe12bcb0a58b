//! The process-wide plugin behind the `tcpx_*` wrappers, loaded once.
//!
//! Like the C++ tree, the plugin is loaded lazily by the first call that needs it, from
//! `UCCL_TCPX_PLUGIN_PATH` (default [`DEFAULT_PLUGIN_PATH`]), or explicitly with
//! `tcpx_load_plugin(path)`. Unlike the tree, `init`'s result is checked, a failed load is not
//! remembered as a success (the next call tries again), and loading a second, different path
//! is refused instead of calling another plugin's `init` in the same process.
//!
//! ```no_run
//! let p = tcpx_ffi_cxx::plugin::plugin().expect("UCCL_TCPX_PLUGIN_PATH points at a plugin");
//! println!("{} devices", p.device_count()?);
//! # Ok::<(), tcpx::net::PluginError>(())
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tcpx::net::{Plugin, PluginError};

use crate::bridge::ffi::{NetProperties, Outcome, Status};
use crate::status::{self, fail, fail_plugin, guard, ok, Error, C_REFUSED};

/// The C++ tree's default plugin path.
pub const DEFAULT_PLUGIN_PATH: &str = "/usr/local/tcpx/lib64/libnccl-net-tcpx.so";
/// The variable the C++ tree reads for the plugin path.
pub const PLUGIN_PATH_ENV: &str = "UCCL_TCPX_PLUGIN_PATH";

static PLUGIN: OnceLock<Arc<Plugin>> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Loads the plugin at `path` unless one is loaded; a different path than the loaded one is an
/// error.
pub fn load(path: &Path) -> Result<Arc<Plugin>, Error> {
    if let Some(p) = PLUGIN.get() {
        return same_path(p, path);
    }
    let _serialised = LOADING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(p) = PLUGIN.get() {
        return same_path(p, path);
    }
    let plugin = Plugin::load(path).map_err(|e| {
        let (status, _) = status::from_plugin(&e);
        Error::new(status, e.to_string())
    })?;
    Ok(PLUGIN.get_or_init(|| plugin).clone())
}

fn same_path(p: &Arc<Plugin>, path: &Path) -> Result<Arc<Plugin>, Error> {
    if p.path() == path {
        Ok(p.clone())
    } else {
        Err(Error::new(
            Status::InvalidArgument,
            format!(
                "a net plugin is already loaded from {}; refusing to load {} as well",
                p.path().display(),
                path.display()
            ),
        ))
    }
}

/// The loaded plugin, loading it from `UCCL_TCPX_PLUGIN_PATH` (or the default path) if needed.
pub fn plugin() -> Result<Arc<Plugin>, Error> {
    if let Some(p) = PLUGIN.get() {
        return Ok(p.clone());
    }
    let path = std::env::var_os(PLUGIN_PATH_ENV).unwrap_or_else(|| DEFAULT_PLUGIN_PATH.into());
    load(Path::new(&path))
}

/// A duration from a millisecond environment variable, or `default`.
pub fn env_millis(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(default, Duration::from_millis)
}

/// `tcpx_load_plugin`.
pub fn plugin_load(path: &str) -> Outcome {
    guard(
        || match load(Path::new(path)) {
            Ok(_) => ok(0),
            Err(e) => fail(e.status, C_REFUSED, e),
        },
        status::internal,
    )
}

/// `tcpx_get_device_count`: the count in `value`.
pub fn plugin_device_count() -> Outcome {
    guard(
        || {
            let p = match plugin() {
                Ok(p) => p,
                Err(e) => return fail(e.status, C_REFUSED, e),
            };
            match p.device_count() {
                Ok(n) => ok(n as u64),
                Err(e) => fail_plugin(&e),
            }
        },
        status::internal,
    )
}

/// `tcpx_get_properties`.
pub fn plugin_properties(dev: i32) -> NetProperties {
    let failed = |status: Status, rc: i32| NetProperties {
        status,
        rc,
        name: String::new(),
        pci_path: String::new(),
        has_pci_path: false,
        guid: 0,
        ptr_support: 0,
        speed: 0,
        port: 0,
        latency: 0.0,
        max_comms: 0,
        max_recvs: 0,
        net_device_type: 0,
        net_device_version: 0,
    };
    guard(
        || {
            let p = match plugin() {
                Ok(p) => p,
                Err(e) => {
                    status::set_last_error(&e);
                    return failed(e.status, C_REFUSED);
                }
            };
            let Ok(dev) = usize::try_from(dev) else {
                status::set_last_error(format_args!("getProperties: negative device {dev}"));
                return failed(Status::InvalidArgument, C_REFUSED);
            };
            match p.properties(dev) {
                Ok(props) => NetProperties {
                    status: Status::Ok,
                    rc: 0,
                    name: props.name,
                    has_pci_path: props.pci_path.is_some(),
                    pci_path: props
                        .pci_path
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    guid: props.guid,
                    ptr_support: props.ptr_support,
                    speed: props.speed_mbps,
                    port: props.port,
                    latency: props.latency_us,
                    max_comms: props.max_comms,
                    max_recvs: props.max_recvs,
                    net_device_type: props.net_device_type,
                    net_device_version: props.net_device_version,
                },
                Err(e) => {
                    let (status, rc) = status::from_plugin(&e);
                    status::set_last_error(&e);
                    failed(status, rc)
                }
            }
        },
        || failed(Status::Internal, C_REFUSED),
    )
}

/// Converts a loader error for setup paths.
pub fn setup_error(e: PluginError) -> Error {
    let (status, _) = status::from_plugin(&e);
    Error::new(status, e.to_string())
}
