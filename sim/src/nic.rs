//! The sim's devices: which NICs it offers and what it reports about them.
//!
//! TCPX offers the NICs matched by `NCCL_GPUDIRECTTCPX_SOCKET_IFNAME`, sorted alphabetically, at
//! most 16 ([`MAX_NICS`]). The filter syntax is NCCL's ([`IfFilter`]): a comma-separated list of
//! name prefixes; a leading `^` excludes instead of selects; a leading `=` (after any `^`) makes
//! the names exact; a `:port` suffix on an element is accepted and ignored.
//!
//! With the variable unset TCPX auto-detects (`ib*`, then the `NCCL_COMM_ID` subnet, then anything
//! but docker/lo, then docker, then lo). The sim emulates only the last step: **unset means `=lo`**.
//!
//! **Virtual NICs.** `TCPX_SIM_VIRTUAL_NICS` replaces interface discovery with a list of NICs
//! that live on loopback but have their own name, address and PCI path, so NIC-by-topology
//! choice can be tested on one machine ([`parse_virtual_nics`]):
//!
//! ```text
//! TCPX_SIM_VIRTUAL_NICS="eth1=127.0.0.1@/sys/devices/pci0000:00/0000:00:04.0,eth2=127.0.0.2@/sys/devices/pci0000:80/0000:80:04.0#200000"
//!   entry   := name '=' address [ '@' pci_path ] [ '#' speed_mbps ]
//!   name    := 1-15 chars of [A-Za-z0-9_.-], unique
//!   address := an IPv4 or IPv6 address this host can bind (any 127.x.y.z on Linux), IPv6 may be [bracketed]
//!   pci_path:= an absolute path, reported as-is (it need not exist); absent = NULL, like lo
//!   speed   := Mbps reported in the properties; absent = 10000
//! ```
//!
//! The interface filter still applies to virtual NICs (prefix match on their names), then the same
//! alphabetical sort and 16-NIC cap.
//!
//! Invariants: names are unique and sorted; `props_*` strings are NUL-terminated and live as long
//! as the [`Nic`].
//!
//! ```
//! use tcpx_sim::nic::IfFilter;
//! let f = IfFilter::parse("^eth0,docker");
//! assert!(f.matches("eth1"));
//! assert!(!f.matches("eth0"));
//! assert!(!f.matches("docker0"));
//! ```
#![forbid(unsafe_code)]

use std::ffi::CString;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;

use crate::error::SimError;

/// TCPX's `MAX_IFS`: the most NICs a plugin offers.
pub const MAX_NICS: usize = 16;
/// Speed reported when `/sys/class/net/<if>/speed` is unreadable (TCPX's default, Mbps).
pub const DEFAULT_SPEED_MBPS: i32 = 10_000;
/// The variable that lists virtual NICs.
pub const VIRTUAL_NICS_VAR: &str = "TCPX_SIM_VIRTUAL_NICS";
/// The interface filter variable.
pub const IFNAME_VAR: &str = "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME";

/// One device of the plugin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Interface name (`props.name`).
    pub name: CString,
    /// Address the NIC's sockets bind to.
    pub addr: IpAddr,
    /// `props.pciPath`: realpath of `/sys/class/net/<if>/device`, the virtual NIC's path, or None.
    pub pci_path: Option<CString>,
    /// `props.speed` in Mbps.
    pub speed_mbps: i32,
    /// Whether this NIC came from `TCPX_SIM_VIRTUAL_NICS`.
    pub is_virtual: bool,
}

impl Nic {
    /// The interface name as text.
    pub fn name_str(&self) -> &str {
        self.name.to_str().unwrap_or("?")
    }
}

/// An NCCL-style interface filter (`NCCL_GPUDIRECTTCPX_SOCKET_IFNAME`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfFilter {
    /// `^`: the list says which interfaces to leave out.
    pub exclude: bool,
    /// `=`: names must match exactly instead of by prefix.
    pub exact: bool,
    /// The names or prefixes (ports stripped).
    pub names: Vec<String>,
}

impl IfFilter {
    /// Parses NCCL's syntax. Never fails: empty elements are skipped, like NCCL does.
    pub fn parse(s: &str) -> IfFilter {
        let mut rest = s.trim();
        let exclude = rest.starts_with('^');
        if exclude {
            rest = &rest[1..];
        }
        let exact = rest.starts_with('=');
        if exact {
            rest = &rest[1..];
        }
        let names = rest
            .split(',')
            .map(|e| e.trim())
            .map(|e| e.split(':').next().unwrap_or(""))
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        IfFilter {
            exclude,
            exact,
            names,
        }
    }

    /// Whether interface `name` is selected.
    pub fn matches(&self, name: &str) -> bool {
        let hit = self.names.iter().any(|p| {
            if self.exact {
                name == p
            } else {
                name.starts_with(p.as_str())
            }
        });
        hit != self.exclude
    }
}

/// A virtual NIC as written in `TCPX_SIM_VIRTUAL_NICS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualNic {
    /// Interface name.
    pub name: String,
    /// Address to bind.
    pub addr: IpAddr,
    /// PCI path reported in the properties.
    pub pci_path: Option<String>,
    /// Speed reported in the properties (Mbps).
    pub speed_mbps: Option<i32>,
}

fn bad(why: String) -> SimError {
    SimError::BadEnv {
        var: VIRTUAL_NICS_VAR,
        why,
    }
}

/// Parses `TCPX_SIM_VIRTUAL_NICS` (syntax in the module docs). An empty string is an empty list.
pub fn parse_virtual_nics(s: &str) -> Result<Vec<VirtualNic>, SimError> {
    let mut out: Vec<VirtualNic> = Vec::new();
    for raw in s.split(',') {
        let entry = raw.trim();
        if entry.is_empty() {
            continue;
        }
        let (name, rest) = entry
            .split_once('=')
            .ok_or_else(|| bad(format!("entry \"{entry}\" has no '=' (want name=address)")))?;
        let name = name.trim();
        if name.is_empty()
            || name.len() > 15
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(bad(format!(
                "entry \"{entry}\": name \"{name}\" must be 1-15 chars of [A-Za-z0-9_.-]"
            )));
        }
        if out.iter().any(|n| n.name == name) {
            return Err(bad(format!("NIC name \"{name}\" appears twice")));
        }
        let (rest, speed) = match rest.split_once('#') {
            Some((r, sp)) => {
                let v: i32 = sp.trim().parse().map_err(|_| {
                    bad(format!("entry \"{entry}\": speed \"{sp}\" is not a number"))
                })?;
                if v <= 0 {
                    return Err(bad(format!("entry \"{entry}\": speed must be > 0")));
                }
                (r, Some(v))
            }
            None => (rest, None),
        };
        let (addr, pci) = match rest.split_once('@') {
            Some((a, p)) => (a, Some(p.trim())),
            None => (rest, None),
        };
        let addr_txt = addr.trim().trim_start_matches('[').trim_end_matches(']');
        let addr: IpAddr = addr_txt.parse().map_err(|_| {
            bad(format!(
                "entry \"{entry}\": \"{addr_txt}\" is not an IPv4/IPv6 address"
            ))
        })?;
        let pci_path = match pci {
            None => None,
            Some(p) if p.starts_with('/') => Some(p.to_owned()),
            Some(p) => {
                return Err(bad(format!(
                    "entry \"{entry}\": PCI path \"{p}\" must be absolute"
                )))
            }
        };
        out.push(VirtualNic {
            name: name.to_owned(),
            addr,
            pci_path,
            speed_mbps: speed,
        });
    }
    Ok(out)
}

/// Reads the link speed like TCPX: `/sys/class/net/<if>/speed`, 10000 when unreadable or <= 0.
pub fn read_speed(sys_class_net: &Path, ifname: &str) -> i32 {
    std::fs::read_to_string(sys_class_net.join(ifname).join("speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|v| *v > 0)
        .and_then(|v| i32::try_from(v).ok())
        .unwrap_or(DEFAULT_SPEED_MBPS)
}

/// Reads the PCI path like TCPX: `realpath(/sys/class/net/<if>/device)`, None when absent.
pub fn read_pci_path(sys_class_net: &Path, ifname: &str) -> Option<CString> {
    let p = std::fs::canonicalize(sys_class_net.join(ifname).join("device")).ok()?;
    CString::new(p.into_os_string().into_encoded_bytes()).ok()
}

/// Which address family to use (`NCCL_GPUDIRECTTCPX_SOCKET_FAMILY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Family {
    /// Any: the first usable address of the interface.
    #[default]
    Any,
    /// `AF_INET`.
    V4,
    /// `AF_INET6`.
    V6,
}

impl Family {
    /// Parses `AF_INET` / `AF_INET6`; anything else is [`Family::Any`].
    pub fn parse(s: Option<&str>) -> Family {
        match s.map(str::trim) {
            Some("AF_INET") => Family::V4,
            Some("AF_INET6") => Family::V6,
            _ => Family::Any,
        }
    }

    fn allows(self, a: &IpAddr) -> bool {
        match self {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        }
    }
}

/// An interface address as seen by `getifaddrs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IfAddr {
    /// Interface name.
    pub name: String,
    /// One of its addresses.
    pub addr: IpAddr,
}

/// The host's interface addresses in `getifaddrs` order.
pub fn host_interfaces() -> Result<Vec<IfAddr>, SimError> {
    let list = nix::ifaddrs::getifaddrs().map_err(|e| SimError::Io {
        op: "getifaddrs",
        errno: Some(e as i32),
        kind: std::io::Error::from(e).kind(),
    })?;
    let mut out = Vec::new();
    for ifa in list {
        let Some(a) = ifa.address else { continue };
        let ip = if let Some(v4) = a.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = a.as_sockaddr_in6() {
            IpAddr::V6(v6.ip())
        } else {
            continue;
        };
        out.push(IfAddr {
            name: ifa.interface_name,
            addr: ip,
        });
    }
    Ok(out)
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Picks the NICs: first usable address per interface name that passes `filter` and `family`, in
/// discovery order, at most [`MAX_NICS`], then sorted by name (TCPX's `sortInterfaces`).
pub fn select_host_nics(
    ifaddrs: &[IfAddr],
    filter: &IfFilter,
    family: Family,
    sys_class_net: &Path,
) -> Vec<Nic> {
    let mut picked: Vec<&IfAddr> = Vec::new();
    for ifa in ifaddrs {
        if picked.len() == MAX_NICS {
            break;
        }
        if !filter.matches(&ifa.name)
            || !family.allows(&ifa.addr)
            || is_link_local_v6(&ifa.addr)
            || picked.iter().any(|p| p.name == ifa.name)
        {
            continue;
        }
        picked.push(ifa);
    }
    let mut nics: Vec<Nic> = picked
        .into_iter()
        .filter_map(|ifa| {
            Some(Nic {
                name: CString::new(ifa.name.clone()).ok()?,
                addr: ifa.addr,
                pci_path: read_pci_path(sys_class_net, &ifa.name),
                speed_mbps: read_speed(sys_class_net, &ifa.name),
                is_virtual: false,
            })
        })
        .collect();
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    nics
}

/// Turns virtual NICs into devices: filter, cap, sort, and check each address can be bound.
pub fn select_virtual_nics(list: &[VirtualNic], filter: &IfFilter) -> Result<Vec<Nic>, SimError> {
    let mut nics = Vec::new();
    for v in list
        .iter()
        .filter(|v| filter.matches(&v.name))
        .take(MAX_NICS)
    {
        if let Err(e) = TcpListener::bind(SocketAddr::new(v.addr, 0)) {
            return Err(bad(format!(
                "NIC {}: cannot bind address {}: {e}",
                v.name, v.addr
            )));
        }
        let pci_path = match &v.pci_path {
            Some(p) => Some(
                CString::new(p.as_str())
                    .map_err(|_| bad(format!("NIC {}: PCI path contains NUL", v.name)))?,
            ),
            None => None,
        };
        nics.push(Nic {
            name: CString::new(v.name.as_str())
                .map_err(|_| bad(format!("NIC name {} contains NUL", v.name)))?,
            addr: v.addr,
            pci_path,
            speed_mbps: v.speed_mbps.unwrap_or(DEFAULT_SPEED_MBPS),
            is_virtual: true,
        });
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ifa(name: &str, addr: &str) -> IfAddr {
        IfAddr {
            name: name.into(),
            addr: addr.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        }
    }

    #[test]
    fn filter_prefix_exact_and_exclude() {
        let f = IfFilter::parse("eth");
        assert!(f.matches("eth0") && f.matches("eth10") && !f.matches("lo"));
        let f = IfFilter::parse("=eth1,eth2");
        assert!(f.matches("eth1") && !f.matches("eth10") && !f.matches("eth3"));
        let f = IfFilter::parse("^docker,lo");
        assert!(f.matches("eth0") && !f.matches("docker0") && !f.matches("lo"));
        let f = IfFilter::parse("^=eth0");
        assert!(!f.matches("eth0") && f.matches("eth01"));
        let f = IfFilter::parse("eth1:5000, ,eth2");
        assert_eq!(f.names, vec!["eth1".to_owned(), "eth2".to_owned()]);
    }

    #[test]
    fn host_nics_sorted_deduplicated_capped() {
        let addrs = vec![
            ifa("eth2", "10.0.0.2"),
            ifa("eth1", "10.0.0.1"),
            ifa("eth1", "fe80::1"),
            ifa("eth1", "10.0.0.11"),
            ifa("lo", "127.0.0.1"),
            ifa("eth3", "fe80::3"),
            ifa("eth3", "2001:db8::3"),
        ];
        let none = Path::new("/nonexistent-sys-class-net");
        let nics = select_host_nics(&addrs, &IfFilter::parse("eth"), Family::Any, none);
        let names: Vec<&str> = nics.iter().map(Nic::name_str).collect();
        assert_eq!(names, ["eth1", "eth2", "eth3"]);
        assert_eq!(
            nics[0].addr,
            "10.0.0.1".parse::<IpAddr>().unwrap_or(nics[1].addr)
        );
        assert_eq!(nics[2].addr.to_string(), "2001:db8::3");
        assert!(nics
            .iter()
            .all(|n| n.pci_path.is_none() && n.speed_mbps == 10_000));

        let v4 = select_host_nics(&addrs, &IfFilter::parse("eth"), Family::V4, none);
        assert_eq!(v4.len(), 2);

        let many: Vec<IfAddr> = (0..20)
            .map(|i| ifa(&format!("e{i:02}"), "10.1.1.1"))
            .collect();
        let capped = select_host_nics(&many, &IfFilter::parse("e"), Family::Any, none);
        assert_eq!(capped.len(), MAX_NICS);
    }

    #[test]
    fn virtual_nic_syntax() {
        let v = parse_virtual_nics(
            " eth1=127.0.0.1@/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0 ,eth2=127.0.0.2#200000,eth3=[::1]",
        );
        let v = v.unwrap_or_default();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name, "eth1");
        assert_eq!(
            v[0].pci_path.as_deref(),
            Some("/sys/devices/pci0000:01/0000:01:00.0/0000:06:00.0")
        );
        assert_eq!(v[1].speed_mbps, Some(200_000));
        assert_eq!(v[1].pci_path, None);
        assert!(v[2].addr.is_ipv6());
        assert_eq!(parse_virtual_nics("").unwrap_or_default(), vec![]);
    }

    #[test]
    fn virtual_nic_errors_name_the_entry() {
        for bad in [
            "eth1",
            "=127.0.0.1",
            "eth1=notanip",
            "eth1=127.0.0.1@relative/path",
            "eth1=127.0.0.1#fast",
            "eth1=127.0.0.1#0",
            "eth1=127.0.0.1,eth1=127.0.0.2",
            "a-very-long-interface-name=127.0.0.1",
        ] {
            match parse_virtual_nics(bad) {
                Err(SimError::BadEnv { var, why }) => {
                    assert_eq!(var, VIRTUAL_NICS_VAR);
                    assert!(!why.is_empty());
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn virtual_nics_filtered_sorted_and_bound() {
        let list = parse_virtual_nics("eth2=127.0.0.2,eth1=127.0.0.1@/x/y,lo9=127.0.0.3")
            .unwrap_or_default();
        let nics = select_virtual_nics(&list, &IfFilter::parse("eth")).unwrap_or_default();
        let names: Vec<&str> = nics.iter().map(Nic::name_str).collect();
        assert_eq!(names, ["eth1", "eth2"]);
        assert_eq!(
            nics[0].pci_path.as_deref().and_then(|p| p.to_str().ok()),
            Some("/x/y")
        );
        assert!(nics.iter().all(|n| n.is_virtual));
        // 192.0.2.1 (TEST-NET-1) is not an address of this host: binding fails loudly.
        let list = parse_virtual_nics("eth9=192.0.2.1").unwrap_or_default();
        assert!(matches!(
            select_virtual_nics(&list, &IfFilter::parse("eth")),
            Err(SimError::BadEnv { .. })
        ));
    }

    #[test]
    fn sysfs_readers_fall_back_like_tcpx() {
        let dir = std::env::temp_dir().join(format!("tcpx-sim-sysfs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(dir.join("eth7"));
        let _ = std::fs::write(dir.join("eth7").join("speed"), "200000\n");
        let _ = std::fs::create_dir_all(dir.join("eth8"));
        let _ = std::fs::write(dir.join("eth8").join("speed"), "-1\n");
        assert_eq!(read_speed(&dir, "eth7"), 200_000);
        assert_eq!(read_speed(&dir, "eth8"), DEFAULT_SPEED_MBPS);
        assert_eq!(read_speed(&dir, "nope"), DEFAULT_SPEED_MBPS);
        assert_eq!(read_pci_path(&dir, "eth7"), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn real_loopback_is_found() {
        let addrs = host_interfaces().unwrap_or_default();
        let nics = select_host_nics(
            &addrs,
            &IfFilter::parse("=lo"),
            Family::V4,
            Path::new("/sys/class/net"),
        );
        assert_eq!(nics.len(), 1);
        assert_eq!(nics[0].name_str(), "lo");
        assert!(nics[0].addr.is_loopback());
        assert_eq!(nics[0].pci_path, None);
    }
}
