//! PCI and NUMA topology from sysfs, and the choice of NIC for each channel of a GPU.
//!
//! On GCP A3-high every pair of GPUs shares the NIC under its PCIe root ({0,1}→eth1, {2,3}→eth2,
//! {4,5}→eth3, {6,7}→eth4) and Google's guidance is to keep a GPU on that NUMA-local NIC. We find
//! it the way the C++ tree did, from the devices' canonical sysfs paths: the NIC whose path shares
//! the longest prefix with the GPU's is the closest; tied NICs share the channels round-robin, in
//! device order. An explicit override (a list of NIC names) always wins.
//!
//! Invariants:
//! * Everything here reads files under a configurable root ([`Sysfs`]), so tests run on a fake
//!   tree and production reads `/sys`.
//! * [`choose_nics`] is deterministic: the same inputs give the same channel → NIC map.
//!
//! ```
//! use tcpx::topology::{choose_nics, NicInfo};
//! let nics = [
//!     NicInfo::new(0, "eth1", Some("/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0")),
//!     NicInfo::new(1, "eth2", Some("/sys/devices/pci0000:07/0000:07:00.0/0000:0c:00.0")),
//! ];
//! let gpu = std::path::PathBuf::from("/sys/devices/pci0000:07/0000:07:00.0/0000:0b:00.0");
//! let map = choose_nics(Some(&gpu), &nics, 4, None).unwrap();
//! assert_eq!(map, vec![1, 1, 1, 1]); // every channel of GPU 3 on eth2
//! ```

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

/// A NIC as the plugin reports it: device index, interface name, canonical PCI path (if any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NicInfo {
    /// The plugin's device index.
    pub dev: usize,
    /// Interface name, e.g. `eth1`.
    pub name: String,
    /// `realpath` of `/sys/class/net/<if>/device`; `None` for virtual interfaces such as `lo`.
    pub pci_path: Option<PathBuf>,
}

impl NicInfo {
    /// A NIC description.
    pub fn new(dev: usize, name: &str, pci_path: Option<&str>) -> Self {
        Self {
            dev,
            name: name.to_owned(),
            pci_path: pci_path.map(PathBuf::from),
        }
    }
}

/// Why no channel → NIC map could be made.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyError {
    /// The plugin reports no devices.
    NoNics,
    /// Zero channels were asked for.
    NoChannels,
    /// An override names a NIC the plugin does not have.
    UnknownNic {
        /// The name in the override.
        name: String,
        /// The NICs the plugin has.
        available: Vec<String>,
    },
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoNics => f.write_str("the plugin reports no network devices"),
            Self::NoChannels => f.write_str("at least one channel is needed"),
            Self::UnknownNic { name, available } => write!(
                f,
                "NIC override names {name:?}, but the plugin's devices are {}",
                available.join(", ")
            ),
        }
    }
}

impl std::error::Error for TopologyError {}

/// How close two PCI paths are: the number of path components they share from their PCIe root
/// (the first component named `pci…`, e.g. `pci0000:01`) down. `0` means different roots, or a
/// path that is not under a PCIe root.
pub fn shared_prefix(a: &Path, b: &Path) -> usize {
    fn from_root(p: &Path) -> impl Iterator<Item = std::path::Component<'_>> {
        p.components()
            .skip_while(|c| !c.as_os_str().to_string_lossy().starts_with("pci"))
    }
    from_root(a)
        .zip(from_root(b))
        .take_while(|(x, y)| x == y)
        .count()
}

/// Choose a NIC (device index) for each of `channels` channels of one GPU.
///
/// * With `override_names`, channel `i` goes to `override_names[i % len]`.
/// * Otherwise the NICs closest to the GPU (longest shared PCI prefix, at least one component)
///   take every channel, spread round-robin if several tie.
/// * With no GPU path, or no NIC on the GPU's PCIe root, channels spread round-robin over all
///   NICs in device order.
pub fn choose_nics(
    gpu_pci_path: Option<&Path>,
    nics: &[NicInfo],
    channels: usize,
    override_names: Option<&[String]>,
) -> Result<Vec<usize>, TopologyError> {
    if nics.is_empty() {
        return Err(TopologyError::NoNics);
    }
    if channels == 0 {
        return Err(TopologyError::NoChannels);
    }
    let pool: Vec<usize> = match override_names {
        Some(names) if !names.is_empty() => names
            .iter()
            .map(|n| {
                nics.iter()
                    .find(|nic| &nic.name == n)
                    .map(|nic| nic.dev)
                    .ok_or_else(|| TopologyError::UnknownNic {
                        name: n.clone(),
                        available: nics.iter().map(|nic| nic.name.clone()).collect(),
                    })
            })
            .collect::<Result<_, _>>()?,
        _ => closest(gpu_pci_path, nics),
    };
    Ok((0..channels).map(|i| pool[i % pool.len()]).collect())
}

/// The device indices of the NICs closest to the GPU, or all of them when nothing is close.
fn closest(gpu: Option<&Path>, nics: &[NicInfo]) -> Vec<usize> {
    let mut sorted: Vec<&NicInfo> = nics.iter().collect();
    sorted.sort_by_key(|n| n.dev);
    let all = || sorted.iter().map(|n| n.dev).collect::<Vec<_>>();
    let Some(gpu) = gpu else { return all() };
    let score = |n: &NicInfo| n.pci_path.as_deref().map_or(0, |p| shared_prefix(gpu, p));
    let best = sorted.iter().map(|n| score(n)).max().unwrap_or(0);
    if best == 0 {
        return all();
    }
    sorted
        .iter()
        .filter(|n| score(n) == best)
        .map(|n| n.dev)
        .collect()
}

/// A sysfs tree: `/sys` in production, a temporary directory in tests.
#[derive(Clone, Debug)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Self::new("/sys")
    }
}

/// NVIDIA's PCI vendor id.
const NVIDIA_VENDOR: &str = "0x10de";

impl Sysfs {
    /// A sysfs tree rooted at `root` (normally `/sys`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Canonical PCI paths of the NVIDIA GPUs (PCI class 0x0300xx or 0x0302xx), in PCI bus-id
    /// order — CUDA's order under `CUDA_DEVICE_ORDER=PCI_BUS_ID`, which the bench sets.
    pub fn gpu_pci_paths(&self) -> Vec<PathBuf> {
        let dir = self.root.join("bus/pci/devices");
        let Ok(entries) = fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut gpus: Vec<(String, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|e| {
                let p = e.path();
                let vendor = read_trimmed(&p.join("vendor"));
                let class = read_trimmed(&p.join("class"));
                vendor.as_deref() == Some(NVIDIA_VENDOR)
                    && class
                        .as_deref()
                        .is_some_and(|c| c.starts_with("0x0300") || c.starts_with("0x0302"))
            })
            .map(|e| {
                let bdf = e.file_name().to_string_lossy().into_owned();
                let path = fs::canonicalize(e.path()).unwrap_or_else(|_| e.path());
                (bdf, path)
            })
            .collect();
        gpus.sort();
        gpus.into_iter().map(|(_, p)| p).collect()
    }

    /// The canonical PCI path of a network interface, if it is a PCI device.
    pub fn nic_pci_path(&self, ifname: &str) -> Option<PathBuf> {
        fs::canonicalize(self.root.join("class/net").join(ifname).join("device")).ok()
    }

    /// The NUMA node of a PCI device (`None` when unknown or -1).
    pub fn numa_node(&self, pci_path: &Path) -> Option<usize> {
        let node = read_trimmed(&pci_path.join("numa_node"))?;
        node.parse::<i64>()
            .ok()
            .and_then(|n| usize::try_from(n).ok())
    }

    /// The CPUs of a NUMA node, from its `cpulist`.
    pub fn node_cpus(&self, node: usize) -> Vec<usize> {
        read_trimmed(
            &self
                .root
                .join(format!("devices/system/node/node{node}/cpulist")),
        )
        .map(|s| parse_cpulist(&s))
        .unwrap_or_default()
    }

    /// Bytes sent and received by an interface so far, from `/sys/class/net/<if>/statistics`.
    pub fn nic_bytes(&self, ifname: &str) -> Option<NicBytes> {
        let stats = self.root.join("class/net").join(ifname).join("statistics");
        Some(NicBytes {
            tx: read_trimmed(&stats.join("tx_bytes"))?.parse().ok()?,
            rx: read_trimmed(&stats.join("rx_bytes"))?.parse().ok()?,
        })
    }
}

/// An interface's byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicBytes {
    /// Bytes transmitted.
    pub tx: u64,
    /// Bytes received.
    pub rx: u64,
}

fn read_trimmed(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

/// Parse a Linux cpulist such as `0-3,8,10-11`. Malformed pieces are skipped.
pub fn parse_cpulist(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                    cpus.extend(a..=b.min(a.saturating_add(4096)));
                }
            }
            None => {
                if let Ok(c) = part.trim().parse() {
                    cpus.push(c);
                }
            }
        }
    }
    cpus
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a3_nics() -> Vec<NicInfo> {
        vec![
            NicInfo::new(
                0,
                "eth1",
                Some("/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0"),
            ),
            NicInfo::new(
                1,
                "eth2",
                Some("/sys/devices/pci0000:07/0000:07:00.0/0000:0c:00.0"),
            ),
            NicInfo::new(
                2,
                "eth3",
                Some("/sys/devices/pci0000:81/0000:81:00.0/0000:86:00.0"),
            ),
            NicInfo::new(
                3,
                "eth4",
                Some("/sys/devices/pci0000:87/0000:87:00.0/0000:8c:00.0"),
            ),
        ]
    }

    fn a3_gpu(g: usize) -> PathBuf {
        let (root, bus) = [
            ("01", "04"),
            ("01", "05"),
            ("07", "0a"),
            ("07", "0b"),
            ("81", "84"),
            ("81", "85"),
            ("87", "8a"),
            ("87", "8b"),
        ][g];
        PathBuf::from(format!(
            "/sys/devices/pci0000:{root}/0000:{root}:00.0/0000:{bus}:00.0"
        ))
    }

    #[test]
    fn a3_high_gpu_pairs_share_their_local_nic() {
        let nics = a3_nics();
        for g in 0..8 {
            let map = choose_nics(Some(&a3_gpu(g)), &nics, 8, None).unwrap();
            assert_eq!(map, vec![g / 2; 8], "gpu {g}");
        }
    }

    #[test]
    fn no_gpu_path_spreads_over_all_nics() {
        let map = choose_nics(None, &a3_nics(), 6, None).unwrap();
        assert_eq!(map, vec![0, 1, 2, 3, 0, 1]);
    }

    #[test]
    fn nics_without_pci_paths_spread_round_robin() {
        let nics = vec![NicInfo::new(0, "lo", None), NicInfo::new(1, "lo2", None)];
        let map = choose_nics(Some(&a3_gpu(0)), &nics, 3, None).unwrap();
        assert_eq!(map, vec![0, 1, 0]);
    }

    #[test]
    fn override_wins_and_unknown_names_are_errors() {
        let names = vec!["eth4".to_owned(), "eth2".to_owned()];
        let map = choose_nics(Some(&a3_gpu(0)), &a3_nics(), 3, Some(&names)).unwrap();
        assert_eq!(map, vec![3, 1, 3]);
        let bad = vec!["eth9".to_owned()];
        let err = choose_nics(None, &a3_nics(), 1, Some(&bad)).unwrap_err();
        assert!(err.to_string().contains("eth9"), "{err}");
        assert!(err.to_string().contains("eth1"), "{err}");
    }

    #[test]
    fn empty_inputs_are_errors() {
        assert_eq!(choose_nics(None, &[], 1, None), Err(TopologyError::NoNics));
        assert_eq!(
            choose_nics(None, &a3_nics(), 0, None),
            Err(TopologyError::NoChannels)
        );
    }

    #[test]
    fn cpulists_parse() {
        assert_eq!(parse_cpulist("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpulist(""), Vec::<usize>::new());
        assert_eq!(parse_cpulist("x,2"), vec![2]);
    }

    #[test]
    fn reads_a_fake_sysfs_tree() {
        let root = std::env::temp_dir().join(format!("tcpx-sysfs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dev = root.join("devices/pci0000:01/0000:01:00.0/0000:04:00.0");
        fs::create_dir_all(&dev).unwrap();
        fs::write(dev.join("vendor"), "0x10de\n").unwrap();
        fs::write(dev.join("class"), "0x030200\n").unwrap();
        fs::write(dev.join("numa_node"), "1\n").unwrap();
        let nic = root.join("devices/pci0000:01/0000:01:00.0/0000:06:00.0");
        fs::create_dir_all(&nic).unwrap();
        fs::write(nic.join("vendor"), "0x1ae0\n").unwrap();
        fs::write(nic.join("class"), "0x020000\n").unwrap();
        fs::create_dir_all(root.join("bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(&dev, root.join("bus/pci/devices/0000:04:00.0")).unwrap();
        std::os::unix::fs::symlink(&nic, root.join("bus/pci/devices/0000:06:00.0")).unwrap();
        let ifdir = root.join("class/net/eth1");
        fs::create_dir_all(ifdir.join("statistics")).unwrap();
        std::os::unix::fs::symlink(&nic, ifdir.join("device")).unwrap();
        fs::write(ifdir.join("statistics/tx_bytes"), "123\n").unwrap();
        fs::write(ifdir.join("statistics/rx_bytes"), "456\n").unwrap();
        let node = root.join("devices/system/node/node1");
        fs::create_dir_all(&node).unwrap();
        fs::write(node.join("cpulist"), "4-5\n").unwrap();

        let sys = Sysfs::new(&root);
        let gpus = sys.gpu_pci_paths();
        assert_eq!(gpus.len(), 1);
        assert_eq!(sys.numa_node(&gpus[0]), Some(1));
        assert_eq!(sys.node_cpus(1), vec![4, 5]);
        let nic_path = sys.nic_pci_path("eth1").unwrap();
        assert!(shared_prefix(&gpus[0], &nic_path) > 0);
        assert_eq!(sys.nic_bytes("eth1"), Some(NicBytes { tx: 123, rx: 456 }));
        assert_eq!(sys.nic_bytes("eth9"), None);
        let _ = fs::remove_dir_all(&root);
    }
}
