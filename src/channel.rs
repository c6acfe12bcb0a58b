//! The ChannelManager: the N channels (one TCPX comm each) of one GPU, the NIC each one uses,
//! and the listen / accept / connect of all of them.
//!
//! One channel is one TCPX connection (Google's guidance: about 8 per 200 Gb/s NIC reach its
//! ceiling). The NIC of each channel comes from [`topology::choose_nics`]: the NIC under the
//! GPU's PCIe root (A3-high: GPU pairs share it), or an explicit list of interface names.
//!
//! Invariants:
//! * Channel `i` of the server pairs with channel `i` of the client: handles travel in channel
//!   order and comms are accepted and connected in channel order.
//! * Every accept and connect has a deadline; the loader retries TCPX's non-blocking
//!   connect/accept on the same handle / listen comm until it completes or the deadline passes.
//!
//! ```no_run
//! use std::time::{Duration, Instant};
//! use tcpx::channel::{ChannelManager, NicSelection};
//! use tcpx::net::Plugin;
//! let plugin = Plugin::load("libtcpx_sim.so")?;
//! let cm = ChannelManager::new(&plugin, 0, 4, &NicSelection::Topology)?;
//! let listens = cm.server_listen_all()?;
//! // … send the handles (listens[i].handle()) to the client over the bootstrap …
//! let comms = ChannelManager::server_accept_all(listens, Instant::now() + Duration::from_secs(30))?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::net::abi::NetHandle;
use crate::net::{ListenComm, Plugin, PluginError, RecvComm, SendComm};
use crate::topology::{self, NicInfo, Sysfs, TopologyError};

/// How the NIC of each channel is chosen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NicSelection {
    /// By PCI topology from sysfs (the NIC closest to the GPU; all NICs round-robin when
    /// nothing is close, e.g. on loopback).
    #[default]
    Topology,
    /// Channel `i` uses the interface `names[i % names.len()]`.
    Names(Vec<String>),
}

/// Why the channels could not be set up.
#[derive(Debug)]
#[non_exhaustive]
pub enum ChannelError {
    /// A plugin call failed.
    Plugin(PluginError),
    /// No NIC could be chosen.
    Topology(TopologyError),
    /// The peer's handle count differs from what we were asked to connect.
    HandleCount {
        /// Handles received.
        handles: usize,
        /// Channels expected.
        channels: usize,
    },
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Plugin(e) => write!(f, "{e}"),
            Self::Topology(e) => write!(f, "choosing NICs: {e}"),
            Self::HandleCount { handles, channels } => {
                write!(f, "got {handles} listen handles for {channels} channels")
            }
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Plugin(e) => Some(e),
            Self::Topology(e) => Some(e),
            Self::HandleCount { .. } => None,
        }
    }
}

impl From<PluginError> for ChannelError {
    fn from(e: PluginError) -> Self {
        Self::Plugin(e)
    }
}

/// The channels of one GPU.
#[derive(Debug)]
pub struct ChannelManager {
    plugin: Arc<Plugin>,
    gpu: u32,
    /// The plugin device (NIC) of each channel.
    nics: Vec<usize>,
    /// All NICs the plugin reports.
    all: Vec<NicInfo>,
}

impl ChannelManager {
    /// Choose a NIC for each of `channels` channels of GPU `gpu`.
    pub fn new(
        plugin: &Arc<Plugin>,
        gpu: u32,
        channels: usize,
        selection: &NicSelection,
    ) -> Result<Self, ChannelError> {
        Self::with_sysfs(plugin, gpu, channels, selection, &Sysfs::default())
    }

    /// As [`new`](Self::new), reading topology from the given sysfs tree.
    pub fn with_sysfs(
        plugin: &Arc<Plugin>,
        gpu: u32,
        channels: usize,
        selection: &NicSelection,
        sysfs: &Sysfs,
    ) -> Result<Self, ChannelError> {
        let n = plugin.device_count()?;
        let all = (0..n)
            .map(|dev| {
                let p = plugin.properties(dev)?;
                Ok(NicInfo {
                    dev,
                    name: p.name,
                    pci_path: p.pci_path,
                })
            })
            .collect::<Result<Vec<_>, PluginError>>()?;
        let gpu_path = sysfs.gpu_pci_paths().into_iter().nth(gpu as usize);
        let names = match selection {
            NicSelection::Topology => None,
            NicSelection::Names(n) => Some(n.as_slice()),
        };
        let nics = topology::choose_nics(gpu_path.as_deref(), &all, channels, names)
            .map_err(ChannelError::Topology)?;
        tracing::info!(
            gpu,
            channels,
            nics = ?nics.iter().map(|&d| all[d].name.as_str()).collect::<Vec<_>>(),
            "channels placed"
        );
        Ok(Self {
            plugin: plugin.clone(),
            gpu,
            nics,
            all,
        })
    }

    /// The GPU.
    pub fn gpu(&self) -> u32 {
        self.gpu
    }

    /// Number of channels.
    pub fn num_channels(&self) -> usize {
        self.nics.len()
    }

    /// The plugin device (NIC) of each channel.
    pub fn nics(&self) -> &[usize] {
        &self.nics
    }

    /// The interface name of a plugin device.
    pub fn nic_name(&self, dev: usize) -> &str {
        self.all.get(dev).map_or("?", |n| n.name.as_str())
    }

    /// `listen` on every channel's NIC; the handles (`listen.handle()`) go to the client in
    /// channel order.
    pub fn server_listen_all(&self) -> Result<Vec<ListenComm>, ChannelError> {
        Ok(self
            .nics
            .iter()
            .map(|&dev| self.plugin.listen(dev))
            .collect::<Result<_, _>>()?)
    }

    /// Accept one comm per listen comm, in channel order, before `deadline`.
    pub fn server_accept_all(
        listens: Vec<ListenComm>,
        deadline: Instant,
    ) -> Result<Vec<RecvComm>, ChannelError> {
        Ok(listens
            .into_iter()
            .map(|l| l.accept(deadline))
            .collect::<Result<_, _>>()?)
    }

    /// Connect channel `i` to `handles[i]`, in channel order, before `deadline`.
    pub fn client_connect_all(
        &self,
        handles: &[NetHandle],
        deadline: Instant,
    ) -> Result<Vec<SendComm>, ChannelError> {
        if handles.len() != self.nics.len() {
            return Err(ChannelError::HandleCount {
                handles: handles.len(),
                channels: self.nics.len(),
            });
        }
        Ok(self
            .nics
            .iter()
            .zip(handles)
            .map(|(&dev, h)| self.plugin.connect(dev, h, deadline))
            .collect::<Result<_, _>>()?)
    }
}
