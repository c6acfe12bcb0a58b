//! Bytes on the wire and in the 128-byte handle. All multi-byte fields are explicit; nothing is
//! a transmuted struct.
//!
//! **Listen handle** (128 bytes, NCCL's `NCCL_NET_HANDLE_MAXSIZE`). The fields TCPX's
//! `struct tcpxHandle` defines sit at TCPX's offsets, in TCPX's encoding (a `sockaddr_in` /
//! `sockaddr_in6`: host-order family, network-order port):
//!
//! | off | size | field |
//! |---|---|---|
//! | 0 | 28 | data listen address (`connect_addr`) |
//! | 28 | 4 | `port_start` = -1 (unused, like TCPX) |
//! | 32 | 4 | `port_count` = -1 |
//! | 36 | 4 | `num_socks` (i32 LE) — the connector uses the listener's value |
//! | 40 | 4 | `num_threads` (i32 LE) |
//! | 44 | 1 | `redirect_ctrl` (1 when `NCCL_GPUDIRECTTCPX_CTRL_DEV` is set) |
//! | 48 | 28 | control listen address (`ctrl_addr`) |
//! | 80 | 8 | `connect_args`: 0 from `listen`; **written by `connect`** (see [`crate::conn`]) |
//! | 88 | 8 | magic `"TCPXSIM1"` (sim only) |
//! | 96 | 8 | listen nonce, u64 LE (sim only): a connector proves it came from this listener |
//! | 104 | 24 | zero |
//!
//! **Hello** (32 bytes, little-endian), sent by the connector first on every socket it opens:
//! `u32 magic "TXSM" | u16 version | u16 role (0 ctrl, 1 data) | u64 listen nonce | u64 conn id |
//! u32 socket index (nsocks for ctrl) | u32 nsocks`.
//!
//! **Connection state** (4 bytes, u32 LE, TCPX's `ConnectionState`): 0 OK, 1 PENDING, 2 FAILED;
//! the acceptor answers each hello on the control socket.
//!
//! **Control message** (16 bytes, little-endian), one per chunk and one per size-0 message, on
//! the control socket, in the order the sender dispatched the chunks:
//!
//! | off | field |
//! |---|---|
//! | 0 | u8 kind: 1 = chunk, 2 = empty message (size 0) |
//! | 1 | u8 data socket index the chunk travels on |
//! | 2 | u16 message sequence number (k-th isend of the comm, mod 65536) |
//! | 4 | u32 chunk length |
//! | 8 | u32 chunk offset in the message |
//! | 12 | u32 message total |
//!
//! ```
//! use tcpx_sim::wire::{Ctrl, CtrlKind};
//! let c = Ctrl { kind: CtrlKind::Chunk, sock: 2, seq: 7, len: 4096, offset: 8192, total: 65536 };
//! assert_eq!(Ctrl::decode(&c.encode()), Ok(c));
//! ```
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tcpx::net::abi::NetHandle;

use crate::error::SimError;

/// Magic at handle offset 88.
pub const HANDLE_MAGIC: [u8; 8] = *b"TCPXSIM1";
/// Offset of `connect_args` (TCPX's `tcpxHandle::connect_args`).
pub const CONNECT_ARGS_OFFSET: usize = 80;
/// Hello magic.
pub const HELLO_MAGIC: u32 = u32::from_le_bytes(*b"TXSM");
/// Hello protocol version.
pub const HELLO_VERSION: u16 = 1;
/// Size of a hello.
pub const HELLO_LEN: usize = 32;
/// Size of a control message.
pub const CTRL_LEN: usize = 16;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

fn put_sockaddr(out: &mut [u8], a: &SocketAddr) {
    out[..28].fill(0);
    match a {
        SocketAddr::V4(v4) => {
            out[0..2].copy_from_slice(&AF_INET.to_ne_bytes());
            out[2..4].copy_from_slice(&v4.port().to_be_bytes());
            out[4..8].copy_from_slice(&v4.ip().octets());
        }
        SocketAddr::V6(v6) => {
            out[0..2].copy_from_slice(&AF_INET6.to_ne_bytes());
            out[2..4].copy_from_slice(&v6.port().to_be_bytes());
            out[4..8].copy_from_slice(&v6.flowinfo().to_be_bytes());
            out[8..24].copy_from_slice(&v6.ip().octets());
            out[24..28].copy_from_slice(&v6.scope_id().to_ne_bytes());
        }
    }
}

fn get_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes([b[0], b[1]]);
    let port = u16::from_be_bytes([b[2], b[3]]);
    match family {
        AF_INET => {
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            Some(SocketAddr::V4(SocketAddrV4::new(ip, port)))
        }
        AF_INET6 => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[8..24]);
            let flow = u32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(o),
                port,
                flow,
                scope,
            )))
        }
        _ => None,
    }
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// What a listen handle says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenHandle {
    /// The data listen socket.
    pub data_addr: SocketAddr,
    /// The control listen socket.
    pub ctrl_addr: SocketAddr,
    /// Data sockets per comm.
    pub nsocks: u32,
    /// Helper threads per comm.
    pub nthreads: u32,
    /// Whether control traffic uses `NCCL_GPUDIRECTTCPX_CTRL_DEV`.
    pub redirect_ctrl: bool,
    /// The listener's nonce.
    pub nonce: u64,
}

impl ListenHandle {
    /// Writes the whole handle (zeroing `connect_args` and the unused tail).
    pub fn encode(&self, out: &mut NetHandle) {
        out.fill(0);
        put_sockaddr(&mut out[0..28], &self.data_addr);
        out[28..32].copy_from_slice(&(-1i32).to_le_bytes());
        out[32..36].copy_from_slice(&(-1i32).to_le_bytes());
        out[36..40].copy_from_slice(&self.nsocks.to_le_bytes());
        out[40..44].copy_from_slice(&self.nthreads.to_le_bytes());
        out[44] = u8::from(self.redirect_ctrl);
        put_sockaddr(&mut out[48..76], &self.ctrl_addr);
        out[88..96].copy_from_slice(&HANDLE_MAGIC);
        out[96..104].copy_from_slice(&self.nonce.to_le_bytes());
    }

    /// Reads a handle written by [`ListenHandle::encode`].
    pub fn decode(h: &NetHandle) -> Result<ListenHandle, SimError> {
        if h[88..96] != HANDLE_MAGIC {
            return Err(SimError::BadHandle {
                why: "no tcpx-sim magic at offset 88 (not a handle from tcpx-sim's listen)",
            });
        }
        let data_addr = get_sockaddr(&h[0..28]).ok_or(SimError::BadHandle {
            why: "unknown address family in connect_addr",
        })?;
        let ctrl_addr = get_sockaddr(&h[48..76]).ok_or(SimError::BadHandle {
            why: "unknown address family in ctrl_addr",
        })?;
        let nsocks = le_u32(h, 36);
        let nthreads = le_u32(h, 40);
        if nsocks == 0 || nsocks as usize > tcpx::net::abi::MAX_SOCKETS || nthreads == 0 {
            return Err(SimError::BadHandle {
                why: "num_socks/num_threads out of range",
            });
        }
        Ok(ListenHandle {
            data_addr,
            ctrl_addr,
            nsocks,
            nthreads,
            redirect_ctrl: h[44] != 0,
            nonce: le_u64(h, 96),
        })
    }
}

/// Reads `connect_args` (offset 80).
pub fn connect_args(h: &NetHandle) -> u64 {
    le_u64(h, CONNECT_ARGS_OFFSET)
}

/// Writes `connect_args` (offset 80), as TCPX's `connect` does.
pub fn set_connect_args(h: &mut NetHandle, v: u64) {
    h[CONNECT_ARGS_OFFSET..CONNECT_ARGS_OFFSET + 8].copy_from_slice(&v.to_le_bytes());
}

/// The role of a socket in a hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The control socket.
    Ctrl,
    /// A data socket.
    Data,
}

/// The first message on every connected socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Control or data.
    pub role: Role,
    /// The listener's nonce from the handle.
    pub nonce: u64,
    /// Random id of this connection (same on all its sockets).
    pub conn_id: u64,
    /// Data socket index; `nsocks` for the control socket.
    pub index: u32,
    /// Data sockets of the connection.
    pub nsocks: u32,
}

impl Hello {
    /// Encodes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[0..4].copy_from_slice(&HELLO_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&HELLO_VERSION.to_le_bytes());
        let role: u16 = match self.role {
            Role::Ctrl => 0,
            Role::Data => 1,
        };
        b[6..8].copy_from_slice(&role.to_le_bytes());
        b[8..16].copy_from_slice(&self.nonce.to_le_bytes());
        b[16..24].copy_from_slice(&self.conn_id.to_le_bytes());
        b[24..28].copy_from_slice(&self.index.to_le_bytes());
        b[28..32].copy_from_slice(&self.nsocks.to_le_bytes());
        b
    }

    /// Decodes, checking magic, version and role.
    pub fn decode(b: &[u8; HELLO_LEN]) -> Result<Hello, SimError> {
        if le_u32(b, 0) != HELLO_MAGIC {
            return Err(SimError::Protocol {
                why: "hello without tcpx-sim magic (a foreign connection)",
            });
        }
        if u16::from_le_bytes([b[4], b[5]]) != HELLO_VERSION {
            return Err(SimError::Protocol {
                why: "hello of another tcpx-sim protocol version",
            });
        }
        let role = match u16::from_le_bytes([b[6], b[7]]) {
            0 => Role::Ctrl,
            1 => Role::Data,
            _ => {
                return Err(SimError::Protocol {
                    why: "hello with an unknown role",
                })
            }
        };
        Ok(Hello {
            role,
            nonce: le_u64(b, 8),
            conn_id: le_u64(b, 16),
            index: le_u32(b, 24),
            nsocks: le_u32(b, 28),
        })
    }
}

/// TCPX's `ConnectionState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// 0.
    Ok,
    /// 1.
    Pending,
    /// 2.
    Failed,
}

impl ConnState {
    /// Encodes as u32 LE.
    pub fn encode(self) -> [u8; 4] {
        let v: u32 = match self {
            ConnState::Ok => 0,
            ConnState::Pending => 1,
            ConnState::Failed => 2,
        };
        v.to_le_bytes()
    }

    /// Decodes; unknown values are `Failed`.
    pub fn decode(b: [u8; 4]) -> ConnState {
        match u32::from_le_bytes(b) {
            0 => ConnState::Ok,
            1 => ConnState::Pending,
            _ => ConnState::Failed,
        }
    }
}

/// The kind of a control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtrlKind {
    /// A chunk of `len` bytes travels on data socket `sock`.
    Chunk,
    /// A size-0 message (TCPX's `CTRL_INLINE` with size 0).
    Empty,
}

/// One control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ctrl {
    /// Chunk or empty message.
    pub kind: CtrlKind,
    /// Data socket of the chunk.
    pub sock: u8,
    /// Message sequence number, mod 65536.
    pub seq: u16,
    /// Chunk length.
    pub len: u32,
    /// Chunk offset in the message.
    pub offset: u32,
    /// Message size.
    pub total: u32,
}

impl Ctrl {
    /// Encodes.
    pub fn encode(&self) -> [u8; CTRL_LEN] {
        let mut b = [0u8; CTRL_LEN];
        b[0] = match self.kind {
            CtrlKind::Chunk => 1,
            CtrlKind::Empty => 2,
        };
        b[1] = self.sock;
        b[2..4].copy_from_slice(&self.seq.to_le_bytes());
        b[4..8].copy_from_slice(&self.len.to_le_bytes());
        b[8..12].copy_from_slice(&self.offset.to_le_bytes());
        b[12..16].copy_from_slice(&self.total.to_le_bytes());
        b
    }

    /// Decodes; an unknown kind is a protocol error.
    pub fn decode(b: &[u8; CTRL_LEN]) -> Result<Ctrl, SimError> {
        let kind = match b[0] {
            1 => CtrlKind::Chunk,
            2 => CtrlKind::Empty,
            _ => {
                return Err(SimError::Protocol {
                    why: "unknown control message kind",
                })
            }
        };
        Ok(Ctrl {
            kind,
            sock: b[1],
            seq: u16::from_le_bytes([b[2], b[3]]),
            len: le_u32(b, 4),
            offset: le_u32(b, 8),
            total: le_u32(b, 12),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(data: &str, ctrl: &str) -> ListenHandle {
        ListenHandle {
            data_addr: data.parse().unwrap(),
            ctrl_addr: ctrl.parse().unwrap(),
            nsocks: 4,
            nthreads: 2,
            redirect_ctrl: true,
            nonce: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn handle_round_trip_v4_at_tcpx_offsets() {
        let h = handle("127.0.0.2:40001", "127.0.0.3:40002");
        let mut b = [0xAAu8; 128];
        h.encode(&mut b);
        assert_eq!(ListenHandle::decode(&b), Ok(h));
        // sockaddr_in: family 2 (host order), port big-endian, address bytes.
        assert_eq!(&b[0..2], &2u16.to_ne_bytes());
        assert_eq!(&b[2..4], &40001u16.to_be_bytes());
        assert_eq!(&b[4..8], &[127, 0, 0, 2]);
        assert_eq!(&b[36..40], &4i32.to_le_bytes());
        assert_eq!(&b[40..44], &2i32.to_le_bytes());
        assert_eq!(b[44], 1);
        assert_eq!(&b[50..52], &40002u16.to_be_bytes());
        assert_eq!(connect_args(&b), 0);
        assert!(b[104..].iter().all(|x| *x == 0));
    }

    #[test]
    fn handle_round_trip_v6_and_connect_args() {
        let h = handle("[::1]:5000", "[::1]:5001");
        let mut b = [0u8; 128];
        h.encode(&mut b);
        assert_eq!(ListenHandle::decode(&b), Ok(h));
        set_connect_args(&mut b, 0xDEAD_BEEF);
        assert_eq!(connect_args(&b), 0xDEAD_BEEF);
        assert_eq!(ListenHandle::decode(&b), Ok(h));
    }

    #[test]
    fn foreign_handles_are_rejected() {
        let b = [0u8; 128];
        assert!(matches!(
            ListenHandle::decode(&b),
            Err(SimError::BadHandle { .. })
        ));
        let mut b = [0u8; 128];
        handle("127.0.0.1:1", "127.0.0.1:2").encode(&mut b);
        b[36..40].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(
            ListenHandle::decode(&b),
            Err(SimError::BadHandle { .. })
        ));
        b[36..40].copy_from_slice(&1u32.to_le_bytes());
        b[0] = 99;
        assert!(matches!(
            ListenHandle::decode(&b),
            Err(SimError::BadHandle { .. })
        ));
    }

    #[test]
    fn hello_round_trip_and_checks() {
        let h = Hello {
            role: Role::Data,
            nonce: 9,
            conn_id: 77,
            index: 3,
            nsocks: 4,
        };
        let b = h.encode();
        assert_eq!(Hello::decode(&b), Ok(h));
        let mut bad = b;
        bad[0] = b'X';
        assert!(Hello::decode(&bad).is_err());
        let mut bad = b;
        bad[4] = 9;
        assert!(Hello::decode(&bad).is_err());
        let mut bad = b;
        bad[6] = 5;
        assert!(Hello::decode(&bad).is_err());
    }

    #[test]
    fn ctrl_round_trip_little_endian() {
        let c = Ctrl {
            kind: CtrlKind::Empty,
            sock: 0,
            seq: 0xBEEF,
            len: 0,
            offset: 0,
            total: 0,
        };
        let b = c.encode();
        assert_eq!(b[0], 2);
        assert_eq!(&b[2..4], &[0xEF, 0xBE]);
        assert_eq!(Ctrl::decode(&b), Ok(c));
        let c = Ctrl {
            kind: CtrlKind::Chunk,
            sock: 7,
            seq: 1,
            len: 0x0008_0000,
            offset: 0x0010_0000,
            total: 0x0040_0000,
        };
        let b = c.encode();
        assert_eq!(&b[4..8], &[0, 0, 8, 0]);
        assert_eq!(Ctrl::decode(&b), Ok(c));
        let mut bad = b;
        bad[0] = 0;
        assert!(Ctrl::decode(&bad).is_err());
    }

    #[test]
    fn conn_state_codes() {
        assert_eq!(ConnState::Ok.encode(), [0, 0, 0, 0]);
        assert_eq!(ConnState::decode([1, 0, 0, 0]), ConnState::Pending);
        assert_eq!(ConnState::decode([9, 0, 0, 0]), ConnState::Failed);
    }
}
