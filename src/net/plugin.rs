//! The plugin loader: [`Plugin`] opens a v7 net plugin, checks its table, calls `init` with the
//! logger shim, and creates comms ([`Plugin::listen`], [`Plugin::connect`]).
//!
//! Invariants:
//! * The library is opened `RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE`: it is never unmapped, because
//!   TCPX's detached connect/accept threads can outlive every handle to it (a timed-out
//!   `connect`), and unmapping code a thread still runs would crash the process.
//! * The table is copied once at load (TCPX declares it `volatile`, so the copy is a volatile
//!   read); every required slot is checked non-NULL then. Only `regMrDmaBuf`, `iflush` and
//!   `getDeviceMr` may be NULL — this crate never calls them.
//! * `init` always gets the logger shim ([`super::logger::shim`]), never NULL.
//! * A plugin is trusted native code: the safe API is sound as long as the plugin honours the
//!   `ncclNet_v7_t` contract (`shared/reference/tcpx-plugin-contract.md`).
//! * `Plugin` is `Send + Sync`: NCCL calls `devices`/`getProperties`/`listen`/`connect` from
//!   any thread. Comms are `Send` but not `Sync` (see [`super::comm`]).
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use tcpx::net::Plugin;
//! let plugin = Plugin::load("/usr/local/tcpx/lib64/libnccl-net.so")?;
//! println!("{} has {} devices", plugin.name(), plugin.device_count()?);
//! let listen = plugin.listen(0)?;
//! let handle = *listen.handle(); // send it to the peer out of band
//! # let _ = handle;
//! let recv = listen.accept(Instant::now() + Duration::from_secs(30))?;
//! # Ok::<(), tcpx::net::PluginError>(())
//! ```

use core::ffi::{c_int, c_void, CStr};
use core::ptr::{self, NonNull};
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use super::abi::{
    net_device_type, NcclResult, NetDeviceHandle, NetHandle, NetPluginV7, NetProperties,
    KNOWN_PLUGIN_SYMBOLS, PLUGIN_SYMBOL_V7, PTR_CUDA, PTR_HOST, SLOT_NAMES_V7,
};
use super::comm::{ListenComm, SendComm};
use super::error::{Call, PluginError};
use super::logger;
use super::mem::MemKind;

/// Collective-network table symbols, probed only to tell the user what a library exports.
pub const KNOWN_COLLNET_SYMBOLS: [&str; 8] = [
    "ncclCollNetPlugin_v4",
    "ncclCollNetPlugin_v5",
    "ncclCollNetPlugin_v6",
    "ncclCollNetPlugin_v7",
    "ncclCollNetPlugin_v8",
    "ncclCollNetPlugin_v9",
    "ncclCollNetPlugin_v10",
    "ncclCollNetPlugin_v11",
];

/// Slots this crate never calls, which may therefore be NULL.
const OPTIONAL_SLOTS: [Call; 3] = [Call::RegMrDmaBuf, Call::Iflush, Call::GetDeviceMr];

/// First pause between `connect`/`accept` retries; it doubles up to [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_micros(100);
/// Longest pause between `connect`/`accept` retries.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(1);

/// A loaded, initialised v7 net plugin.
pub struct Plugin {
    table: NetPluginV7,
    name: String,
    path: PathBuf,
    /// Keeps the library open (it is `RTLD_NODELETE`, so it is never unmapped anyway); `None`
    /// for an in-process table.
    _library: Option<Library>,
}

// SAFETY: the table is an immutable copy; its function pointers are plugin globals that NCCL
// calls from any thread, and `name` points at a string in a library that is never unmapped.
unsafe impl Send for Plugin {}
// SAFETY: as for Send; `&Plugin` exposes only the global (thread-safe) functions.
unsafe impl Sync for Plugin {}

impl core::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("path", &self.path)
            .finish()
    }
}

/// What `getProperties` reports for one device (a NIC), with the strings copied.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct DeviceProperties {
    /// Interface name, e.g. `eth1`.
    pub name: String,
    /// The NIC's PCI device path; `None` when the plugin reports NULL (e.g. `lo`).
    pub pci_path: Option<PathBuf>,
    /// Unique id (TCPX: the device index).
    pub guid: u64,
    /// `NCCL_PTR_*` bits (TCPX: HOST | CUDA).
    pub ptr_support: c_int,
    /// Link speed in Mbps.
    pub speed_mbps: c_int,
    /// Port number.
    pub port: c_int,
    /// Latency in µs.
    pub latency_us: f32,
    /// Comms per device.
    pub max_comms: c_int,
    /// Buffers per `irecv` (TCPX: 1).
    pub max_recvs: c_int,
    /// `NCCL_NET_DEVICE_*` (TCPX: UNPACK).
    pub net_device_type: c_int,
    /// Device-handle version (TCPX: 7).
    pub net_device_version: c_int,
}

impl DeviceProperties {
    /// Whether the device can register memory of this kind.
    pub fn supports(&self, kind: MemKind) -> bool {
        let bit = match kind {
            MemKind::Host => PTR_HOST,
            MemKind::Cuda => PTR_CUDA,
        };
        self.ptr_support & bit != 0
    }

    /// Whether received data must be unpacked from the bounce pool (TCPX).
    pub fn needs_unpack(&self) -> bool {
        self.net_device_type == net_device_type::UNPACK
    }
}

impl Plugin {
    /// Opens the plugin at `path`, finds `ncclNetPlugin_v7`, checks the required slots and calls
    /// `init` with the logger shim.
    ///
    /// A `path` without a `/` is searched like `dlopen` does (`LD_LIBRARY_PATH`, …). Every
    /// error names the path and the cause; a missing table lists the `ncclNetPlugin_*` /
    /// `ncclCollNetPlugin_*` symbols the library does export.
    ///
    /// Loading the same library twice calls its `init` twice; load a plugin once per process.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<Self>, PluginError> {
        let path = path.as_ref();
        let searched = !path.as_os_str().as_bytes().contains(&b'/');
        if !searched && matches!(path.try_exists(), Ok(false)) {
            return Err(PluginError::NotFound {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: dlopen runs the library's initialisers; a net plugin is trusted native code
        // (module docs), and nothing of it is called before the checks below.
        let library =
            unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL | libc::RTLD_NODELETE) }
                .map_err(|e| open_error(path, e.to_string()))?;

        // SAFETY: only the symbol's address is read; nothing is dereferenced here.
        let symbol = unsafe { library.get::<*const NetPluginV7>(PLUGIN_SYMBOL_V7.as_bytes()) };
        let table_ptr = symbol.map(|s| *s).unwrap_or(ptr::null());
        if table_ptr.is_null() {
            return Err(PluginError::MissingSymbol {
                path: path.to_path_buf(),
                symbol: PLUGIN_SYMBOL_V7,
                exported: exported_tables(&library),
            });
        }
        // SAFETY: `ncclNetPlugin_v7` is the plugin's `ncclNet_v7_t` (19 pointer-sized slots,
        // layout asserted in abi.rs) in a library that stays mapped; TCPX declares it
        // `volatile`, hence the volatile copy.
        let table = unsafe { ptr::read_volatile(table_ptr) };
        Self::from_table(table, path.to_path_buf(), Some(library))
    }

    /// Uses a table that lives in this process (e.g. tcpx-sim linked in as an rlib) instead of
    /// a dlopened library; `label` stands in for the path in errors and [`Plugin::path`]. The
    /// same slot checks and `init` call as [`Plugin::load`].
    ///
    /// # Safety
    ///
    /// `table` must be a correct `ncclNet_v7_t`: every non-NULL slot a function with the v7
    /// signature and semantics, `name` NULL or a NUL-terminated string that lives forever.
    pub unsafe fn from_static(
        table: &'static NetPluginV7,
        label: impl Into<PathBuf>,
    ) -> Result<Arc<Self>, PluginError> {
        Self::from_table(*table, label.into(), None)
    }

    fn from_table(
        table: NetPluginV7,
        path: PathBuf,
        library: Option<Library>,
    ) -> Result<Arc<Self>, PluginError> {
        let slots = null_slots(&table);
        if !slots.is_empty() {
            return Err(PluginError::NullSlots { path, slots });
        }
        // SAFETY: checked non-NULL above; the plugin's `name` is a NUL-terminated string in a
        // library that is never unmapped (or a 'static in-process table).
        let name = unsafe { CStr::from_ptr(table.name) }
            .to_string_lossy()
            .into_owned();
        let init = slot(table.init, Call::Init)?;
        // SAFETY: `init` is the plugin's v7 init; the logger shim is a valid, never-NULL,
        // thread-safe function that lives as long as the process.
        let rc = unsafe { init(Some(logger::shim())) };
        if !rc.is_success() {
            return Err(PluginError::Init { path, name, rc });
        }
        tracing::info!(target: "tcpx::net", path = %path.display(), name, "net plugin loaded");
        Ok(Arc::new(Self {
            table,
            name,
            path,
            _library: library,
        }))
    }

    /// The table's `name` (`"GPUDirectTCPX_v7"` for TCPX).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path the plugin was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw v7 table (a copy taken at load), for tests that must break the contract on
    /// purpose. Calling its functions is `unsafe`; the comms' methods are the safe way.
    pub fn table(&self) -> &NetPluginV7 {
        &self.table
    }

    /// `devices`: how many NICs the plugin drives.
    pub fn device_count(&self) -> Result<usize, PluginError> {
        let devices = slot(self.table.devices, Call::Devices)?;
        let mut n: c_int = 0;
        // SAFETY: `devices(int* ndev)` writes one int into our local.
        let rc = unsafe { devices(&mut n) };
        check(Call::Devices, rc)?;
        usize::try_from(n).map_err(|_| PluginError::BadOutput {
            call: Call::Devices,
            what: "negative device count",
        })
    }

    /// `getProperties` of device `dev`.
    pub fn properties(&self, dev: usize) -> Result<DeviceProperties, PluginError> {
        let get = slot(self.table.get_properties, Call::GetProperties)?;
        let d = dev_int(Call::GetProperties, dev)?;
        let mut p = NetProperties::zeroed();
        // SAFETY: `getProperties` fills the 56-byte v7 struct we own.
        let rc = unsafe { get(d, &mut p) };
        check_dev(Call::GetProperties, dev, rc)?;
        if p.name.is_null() {
            return Err(PluginError::BadOutput {
                call: Call::GetProperties,
                what: "NULL interface name",
            });
        }
        // SAFETY: non-NULL; the plugin's device name is a NUL-terminated string it owns (static
        // per device in TCPX); it is copied now.
        let name = unsafe { CStr::from_ptr(p.name) }
            .to_string_lossy()
            .into_owned();
        let pci_path = if p.pci_path.is_null() {
            None
        } else {
            // SAFETY: as for `name`.
            let bytes = unsafe { CStr::from_ptr(p.pci_path) }.to_bytes();
            Some(PathBuf::from(OsStr::from_bytes(bytes)))
        };
        Ok(DeviceProperties {
            name,
            pci_path,
            guid: p.guid,
            ptr_support: p.ptr_support,
            speed_mbps: p.speed,
            port: p.port,
            latency_us: p.latency,
            max_comms: p.max_comms,
            max_recvs: p.max_recvs,
            net_device_type: p.net_device_type,
            net_device_version: p.net_device_version,
        })
    }

    /// `listen` on device `dev`: a listen comm and the 128-byte handle to send to the peer.
    pub fn listen(self: &Arc<Self>, dev: usize) -> Result<ListenComm, PluginError> {
        let listen = slot(self.table.listen, Call::Listen)?;
        let d = dev_int(Call::Listen, dev)?;
        let mut handle: NetHandle = [0; super::abi::NET_HANDLE_MAXSIZE];
        let mut comm: *mut c_void = ptr::null_mut();
        // SAFETY: `handle` is 128 writable bytes (NCCL_NET_HANDLE_MAXSIZE), `comm` a writable
        // pointer slot; both outlive the call, and listen keeps neither.
        let rc = unsafe { listen(d, handle.as_mut_ptr().cast(), &mut comm) };
        check_dev(Call::Listen, dev, rc)?;
        let comm = NonNull::new(comm).ok_or(PluginError::BadOutput {
            call: Call::Listen,
            what: "success with a NULL listen comm",
        })?;
        Ok(ListenComm::new(Arc::clone(self), comm, dev, handle))
    }

    /// `connect` to the peer whose listen handle is `handle`, on device `dev`.
    ///
    /// The plugin connects in the background and answers "not yet" (success, NULL comm) until
    /// it is done; the loader retries with the *same* writable copy of the handle (TCPX keeps
    /// its connect state inside it), pausing 100 µs doubling to 1 ms, until the comm appears,
    /// `connect` fails, or `deadline` passes ([`PluginError::Timeout`]). On timeout the handle
    /// copy is leaked (128 bytes): the plugin's connect thread may still use it.
    pub fn connect(
        self: &Arc<Self>,
        dev: usize,
        handle: &NetHandle,
        deadline: Instant,
    ) -> Result<SendComm, PluginError> {
        struct Scratch {
            handle: NetHandle,
            send_dev_handle: *mut NetDeviceHandle,
        }
        let connect = slot(self.table.connect, Call::Connect)?;
        let d = dev_int(Call::Connect, dev)?;
        let scratch = Box::into_raw(Box::new(Scratch {
            handle: *handle,
            send_dev_handle: ptr::null_mut(),
        }));
        let result = retry_until(Call::Connect, dev, deadline, || {
            let mut comm: *mut c_void = ptr::null_mut();
            // SAFETY: `scratch` is our live heap allocation at a fixed address for every retry:
            // 128 writable handle bytes and a writable device-handle pointer slot (TCPX ignores
            // it); `comm` is a writable local.
            let rc = unsafe {
                connect(
                    d,
                    ptr::addr_of_mut!((*scratch).handle).cast(),
                    &mut comm,
                    ptr::addr_of_mut!((*scratch).send_dev_handle),
                )
            };
            check_dev(Call::Connect, dev, rc)?;
            Ok(NonNull::new(comm))
        });
        match result {
            Err(e @ PluginError::Timeout { .. }) => {
                tracing::warn!(target: "tcpx::net", dev, "{e}; leaking the connect handle buffer");
                Err(e)
            }
            other => {
                // SAFETY: from Box::into_raw above; connect finished (a comm or an error), so
                // the plugin no longer uses the buffer.
                drop(unsafe { Box::from_raw(scratch) });
                other.map(|comm| SendComm::new(Arc::clone(self), comm, dev))
            }
        }
    }
}

/// Calls `attempt` until it yields a value, fails, or `deadline` passes (at least once).
pub(crate) fn retry_until<T>(
    call: Call,
    dev: usize,
    deadline: Instant,
    mut attempt: impl FnMut() -> Result<Option<T>, PluginError>,
) -> Result<T, PluginError> {
    let start = Instant::now();
    let mut pause = RETRY_PAUSE_MIN;
    loop {
        if let Some(v) = attempt()? {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(PluginError::Timeout {
                call,
                dev,
                waited: now - start,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(RETRY_PAUSE_MAX);
    }
}

/// A table slot the load checks found non-NULL; the error is unreachable after load.
pub(crate) fn slot<T>(f: Option<T>, call: Call) -> Result<T, PluginError> {
    f.ok_or(PluginError::BadOutput {
        call,
        what: "the table slot is NULL",
    })
}

/// `Ok` for `ncclSuccess`, else [`PluginError::Call`].
pub(crate) fn check(call: Call, rc: NcclResult) -> Result<(), PluginError> {
    if rc.is_success() {
        Ok(())
    } else {
        Err(PluginError::Call { call, rc })
    }
}

fn check_dev(call: Call, dev: usize, rc: NcclResult) -> Result<(), PluginError> {
    if rc.is_success() {
        Ok(())
    } else {
        Err(PluginError::DeviceCall { call, dev, rc })
    }
}

fn dev_int(call: Call, dev: usize) -> Result<c_int, PluginError> {
    c_int::try_from(dev).map_err(|_| PluginError::BadDevice { call, dev })
}

/// The names of required slots that are NULL, in table order.
fn null_slots(t: &NetPluginV7) -> Vec<&'static str> {
    let present = [
        !t.name.is_null(),
        t.init.is_some(),
        t.devices.is_some(),
        t.get_properties.is_some(),
        t.listen.is_some(),
        t.connect.is_some(),
        t.accept.is_some(),
        t.reg_mr.is_some(),
        t.reg_mr_dma_buf.is_some(),
        t.dereg_mr.is_some(),
        t.isend.is_some(),
        t.irecv.is_some(),
        t.iflush.is_some(),
        t.test.is_some(),
        t.close_send.is_some(),
        t.close_recv.is_some(),
        t.close_listen.is_some(),
        t.get_device_mr.is_some(),
        t.irecv_consumed.is_some(),
    ];
    let optional = |i: usize| OPTIONAL_SLOTS.iter().any(|c| c.slot() == i);
    SLOT_NAMES_V7
        .iter()
        .zip(present)
        .enumerate()
        .filter(|&(i, (_, there))| !there && !optional(i))
        .map(|(_, (name, _))| *name)
        .collect()
}

/// The known plugin-table symbols `library` resolves.
fn exported_tables(library: &Library) -> Vec<&'static str> {
    KNOWN_PLUGIN_SYMBOLS
        .iter()
        .chain(KNOWN_COLLNET_SYMBOLS.iter())
        .copied()
        .filter(|name| {
            // SAFETY: a lookup only; the address is compared with NULL, never dereferenced.
            let sym = unsafe { library.get::<*const c_void>(name.as_bytes()) };
            sym.is_ok_and(|s| !s.is_null())
        })
        .collect()
}

/// Classifies a `dlopen` failure: a file that is not ELF gets its own error.
fn open_error(path: &Path, reason: String) -> PluginError {
    let mut magic = [0u8; 4];
    let is_elf = std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| magic == *b"\x7fELF");
    // Not ELF, or shorter than the 4-byte magic: not a shared library. ELF (wrong architecture,
    // missing dependency, …) or unreadable: dlopen's reason is the cause.
    match is_elf {
        Ok(false) => PluginError::NotSharedLibrary {
            path: path.to_path_buf(),
            reason,
        },
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => PluginError::NotSharedLibrary {
            path: path.to_path_buf(),
            reason,
        },
        _ => PluginError::Open {
            path: path.to_path_buf(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::logger::tests::Capture;
    use crate::net::mock;

    fn leak(table: NetPluginV7) -> &'static NetPluginV7 {
        Box::leak(Box::new(table))
    }

    #[test]
    fn an_in_process_table_is_checked_initialised_and_queried() {
        // SAFETY: the mock implements the v7 contract.
        let p = unsafe { Plugin::from_static(leak(mock::table(true)), "(mock)") }.unwrap();
        assert_eq!(p.name(), "mock_v7");
        assert_eq!(p.path(), Path::new("(mock)"));
        assert_eq!(p.device_count(), Ok(3));
        let props = p.properties(0).unwrap();
        assert_eq!(props.name, "mock0");
        assert_eq!(
            props.pci_path.as_deref(),
            Some(Path::new("/sys/devices/pci0000:00/0000:00:04.0"))
        );
        assert!(props.supports(MemKind::Host) && !props.supports(MemKind::Cuda));
        assert!(props.needs_unpack());
        assert_eq!(
            (props.max_recvs, props.speed_mbps, props.guid),
            (1, 100_000, 0)
        );
        assert_eq!(p.properties(1).unwrap().pci_path, None);
        assert_eq!(
            p.properties(5),
            Err(PluginError::DeviceCall {
                call: Call::GetProperties,
                dev: 5,
                rc: NcclResult::INVALID_ARGUMENT
            })
        );
        assert_eq!(
            p.properties(usize::MAX),
            Err(PluginError::BadDevice {
                call: Call::GetProperties,
                dev: usize::MAX
            })
        );
    }

    #[test]
    fn null_required_slots_are_named_and_optional_ones_allowed() {
        let mut t = mock::table(true);
        t.isend = None;
        t.irecv_consumed = None;
        t.iflush = None;
        t.reg_mr_dma_buf = None;
        t.get_device_mr = None;
        // SAFETY: the table is rejected before any slot is called.
        let e = unsafe { Plugin::from_static(leak(t), "/x/libmock.so") }.unwrap_err();
        assert_eq!(
            e,
            PluginError::NullSlots {
                path: "/x/libmock.so".into(),
                slots: vec!["isend", "irecvConsumed"]
            }
        );
        assert!(e.to_string().contains("/x/libmock.so"), "{e}");
        let mut t = mock::table(true);
        t.name = ptr::null();
        // SAFETY: as above.
        let e = unsafe { Plugin::from_static(leak(t), "(mock)") }.unwrap_err();
        assert!(
            matches!(e, PluginError::NullSlots { ref slots, .. } if *slots == ["name"]),
            "{e:?}"
        );
    }

    #[test]
    fn a_failing_init_is_an_error_and_its_log_reaches_tracing() {
        let capture = Capture::default();
        let result = tracing::subscriber::with_default(capture.clone(), || {
            // SAFETY: the mock implements the v7 contract.
            unsafe { Plugin::from_static(leak(mock::table(false)), "/x/libmock.so") }
        });
        let e = result.unwrap_err();
        assert_eq!(
            e,
            PluginError::Init {
                path: "/x/libmock.so".into(),
                name: "mock_v7".into(),
                rc: NcclResult::INTERNAL_ERROR
            }
        );
        let events = capture.events();
        assert!(
            events.iter().any(|e| e.target == logger::TARGET
                && e.message == "mock init refusing: 3"
                && e.file == "init_fails"
                && e.level == Some(tracing::Level::WARN)),
            "{events:?}"
        );
    }

    #[test]
    fn retry_returns_the_value_or_times_out() {
        let mut tries = 0;
        let v = retry_until(
            Call::Connect,
            0,
            Instant::now() + Duration::from_secs(60),
            || {
                tries += 1;
                Ok((tries == 3).then_some(7))
            },
        );
        assert_eq!(v, Ok(7));
        assert_eq!(tries, 3);

        let mut tries = 0;
        let e = retry_until::<()>(Call::Accept, 2, Instant::now(), || {
            tries += 1;
            Ok(None)
        });
        assert!(
            matches!(
                e,
                Err(PluginError::Timeout {
                    call: Call::Accept,
                    dev: 2,
                    ..
                })
            ),
            "{e:?}"
        );
        assert_eq!(tries, 1, "one attempt even with a past deadline");

        let e = retry_until::<()>(
            Call::Connect,
            1,
            Instant::now() + Duration::from_secs(60),
            || {
                Err(PluginError::DeviceCall {
                    call: Call::Connect,
                    dev: 1,
                    rc: NcclResult::SYSTEM_ERROR,
                })
            },
        );
        assert!(matches!(e, Err(PluginError::DeviceCall { .. })));
    }

    #[test]
    fn bare_names_are_searched_and_missing_paths_are_not_found() {
        let e = Plugin::load("/nonexistent-dir/libnccl-net.so").unwrap_err();
        assert!(matches!(e, PluginError::NotFound { .. }), "{e:?}");
        // A bare name goes to dlopen's search, so the error comes from dlopen.
        let e = Plugin::load("libtcpx-no-such-plugin.so").unwrap_err();
        assert!(matches!(e, PluginError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("libtcpx-no-such-plugin.so"), "{e}");
    }
}
