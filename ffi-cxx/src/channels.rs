//! The NIC choice behind the C++ `ChannelManager`: [`tcpx::topology::choose_nics`] over the NICs
//! the C++ side listed with `tcpx_get_device_count` / `tcpx_get_properties`, and the GPU's PCI
//! path from sysfs. `UCCL_TCPX_NICS` (comma-separated interface names) overrides the topology.
//!
//! The NIC list comes from C++ on purpose: the `ChannelManager` then drives whichever `tcpx_*`
//! wrappers the program links — this library's, or the C++ tree's own — and never loads the
//! plugin a second time.
//!
//! ```
//! use tcpx_ffi_cxx::bridge::ffi::NicDesc;
//! use tcpx_ffi_cxx::channels::choose_nics;
//! let lo = [NicDesc { dev: 0, name: "lo".into(), pci_path: String::new() }];
//! // Every channel on the only NIC (no PCI path: nothing is "close", so round-robin).
//! assert_eq!(choose_nics(0, 3, &lo).unwrap(), vec![0, 0, 0]);
//! assert!(choose_nics(0, 0, &lo).is_err());
//! ```

use std::path::PathBuf;

use tcpx::topology::{self, NicInfo, Sysfs};

use crate::bridge::ffi::NicDesc;
use crate::status::{guard_result, Error};

/// Variable with a comma-separated list of interface names for the channels, in order.
pub const NICS_ENV: &str = "UCCL_TCPX_NICS";

/// The plugin device of each of `num_channels` channels of GPU `gpu`.
pub fn choose_nics(gpu: i32, num_channels: i32, nics: &[NicDesc]) -> Result<Vec<i32>, Error> {
    guard_result(|| {
        let n = usize::try_from(num_channels)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "ChannelManager: {num_channels} channels (need at least 1)"
                ))
            })?;
        let gpu = usize::try_from(gpu)
            .map_err(|_| Error::invalid(format!("ChannelManager: negative GPU id {gpu}")))?;
        let all: Vec<NicInfo> = nics
            .iter()
            .map(|d| {
                Ok(NicInfo {
                    dev: usize::try_from(d.dev)
                        .map_err(|_| Error::invalid("ChannelManager: negative device index"))?,
                    name: d.name.clone(),
                    pci_path: (!d.pci_path.is_empty()).then(|| PathBuf::from(&d.pci_path)),
                })
            })
            .collect::<Result<_, Error>>()?;
        let names: Option<Vec<String>> = std::env::var(NICS_ENV)
            .ok()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split(',')
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            });
        let gpu_path = Sysfs::default().gpu_pci_paths().into_iter().nth(gpu);
        let chosen = topology::choose_nics(gpu_path.as_deref(), &all, n, names.as_deref())
            .map_err(|e| {
                Error::invalid(format!("ChannelManager (GPU {gpu}): choosing NICs: {e}"))
            })?;
        Ok(chosen.into_iter().map(|d| d as i32).collect())
    })
}
