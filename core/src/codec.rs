//! The bootstrap wire codec: the messages a server and a client exchange over plain TCP before
//! any TCPX comm exists, and at the end of a run.
//!
//! The C++ tree's bootstrap sent a raw host-order `u32` channel count followed by `count × 128`
//! bytes of `ncclNetHandle_v7`, one way, with no magic, version or acknowledgement. This codec
//! frames every message, names its kind, bounds its length before anything is read, and checks
//! every byte it is given: a peer speaking another protocol, another version or garbage gets a
//! typed [`DecodeError`], never a panic, a hang on a huge length, or a silently accepted value.
//!
//! # Frame
//!
//! Every message is a fixed [`HEADER_LEN`]-byte header followed by its payload. Every integer
//! is little-endian, written with `to_le_bytes` and read with `from_le_bytes`; nothing is
//! transmuted and there is no padding.
//!
//! | offset | size | field | value |
//! |---:|---:|---|---|
//! | 0 | 4 | magic | [`MAGIC`] = `b"TCPX"` |
//! | 4 | 2 | version | `u16`, [`PROTOCOL_VERSION`] = 1 |
//! | 6 | 2 | kind | `u16`, a [`MessageKind`] |
//! | 8 | 4 | payload length | `u32`, at most [`MAX_PAYLOAD_LEN`] |
//! | 12 | payload length | payload | laid out per kind, below |
//!
//! # Payloads
//!
//! | kind | code | payload layout (offset: field) | length |
//! |---|---:|---|---:|
//! | [`Hello`] | 1 | 0: `u32` gpu, 4: `u32` chunk_bytes, 8: `u64` bytes, 16: `u32` iters, 20: `u16` channels | 22 |
//! | [`Handles`] | 2 | the same 22 bytes as `Hello`, then `channels × 128` bytes of listen handles | 22 + 128·n |
//! | [`Message::Ready`] | 3 | 0: `u32` token | 4 |
//! | [`Done`] | 4 | 0: `u64` bytes, 8: `u64` checksum, 16: `u32` iters | 20 |
//! | [`Message::Bye`] | 5 | nothing | 0 |
//! | [`Message::Error`] | 6 | 0: `u32` code, 4: `u8` reason length r, 5: r bytes of UTF-8 | 5 + r |
//!
//! # Message flow
//!
//! ```text
//!  client (GPU g)                                   server (listens on base + g)
//!    | -- Hello { gpu, channels, chunk_bytes, bytes, iters } -->  |  channels/chunk_bytes 0 = "yours"
//!    | <-- Handles { gpu, chunk_bytes, bytes, iters, n × 128 B } - |  the plan both sides follow
//!    |        (client connects n comms, server accepts n comms)    |
//!    | -- Ready { token } -------------------------------------->  |
//!    | <-- Ready { token } --------------------------------------  |
//!    |        ... transfer over the TCPX comms ...                 |
//!    | -- Done { bytes, checksum, iters } ---------------------->  |
//!    | <-- Done { bytes, checksum, iters } ----------------------  |
//!    | -- Bye -------------------------------------------------->  |
//!    | <-- Bye --------------------------------------------------  |
//! ```
//!
//! Either side may send [`Message::Error`] at any point instead of its next message and then
//! close. The server's [`Handles`] is authoritative: it carries the chunk size, transfer size
//! and iteration count both sides plan with, so both cut the transfer into identical chunks.
//! Which side checks what (a `Handles` that does not match the `Hello`, a `Done` whose bytes
//! differ) is the transport's business; this codec only guarantees what arrives is well formed.
//!
//! # Reading from a stream
//!
//! Read exactly [`HEADER_LEN`] bytes and pass them to [`decode_header`]: it checks magic,
//! version, kind and the payload length against [`MAX_PAYLOAD_LEN`] and the kind's layout, so
//! a hostile length is refused before a single payload byte is awaited. Then read exactly
//! [`Header::payload_size`] bytes and pass them to [`decode_payload`]. A buffer holding whole
//! messages can instead go to [`decode`], which returns how many bytes it consumed.
//!
//! # Invariants
//!
//! * Decoding is exact: a payload whose declared length differs from what its kind's fields
//!   require is an error, and every field value is checked, so any message [`decode`] accepts
//!   re-encodes to exactly the bytes it consumed.
//! * [`encode`] of a message produced by [`decode`] or by the constructors here always succeeds
//!   given [`encoded_len`] bytes of room; encoding never writes past `out`.
//! * Nothing allocates; the largest message fits in [`MAX_MESSAGE_LEN`] bytes.
//!
//! # Example
//!
//! ```
//! use tcpx_core::codec::{self, Handles, Hello, Message, MAX_MESSAGE_LEN};
//!
//! // The client says hello: GPU 3, "your channel count and chunk size", 64 MiB × 20 iterations.
//! let hello = Message::Hello(Hello { gpu: 3, channels: 0, chunk_bytes: 0, bytes: 64 << 20, iters: 20 });
//! let mut buf = [0u8; MAX_MESSAGE_LEN];
//! let n = codec::encode(&hello, &mut buf).unwrap();
//! assert_eq!(n, codec::encoded_len(&hello));
//! let (decoded, used) = codec::decode(&buf[..n]).unwrap();
//! assert_eq!((decoded, used), (hello, n));
//!
//! // The server answers with two listen handles and a 512 KiB chunk size.
//! let handles = Handles::new(3, 512 << 10, 64 << 20, 20, &[[0xab; 128], [0xcd; 128]]).unwrap();
//! let n = codec::encode(&Message::Handles(handles.clone()), &mut buf).unwrap();
//!
//! // A stream reader: the header first, then exactly the payload it announces.
//! let header = codec::decode_header(&buf[..codec::HEADER_LEN]).unwrap();
//! let end = codec::HEADER_LEN + header.payload_size();
//! assert_eq!(end, n);
//! let msg = codec::decode_payload(&header, &buf[codec::HEADER_LEN..end]).unwrap();
//! match msg {
//!     Message::Handles(h) => assert_eq!(h.handles(), handles.handles()),
//!     other => panic!("unexpected {other:?}"),
//! }
//!
//! // Garbage is an error, not a panic.
//! assert!(codec::decode(b"HTTP/1.1 200 OK\r\n").is_err());
//! ```
#![forbid(unsafe_code)]

use core::fmt;

/// The first four bytes of every message.
pub const MAGIC: [u8; 4] = *b"TCPX";

/// The only protocol version this codec speaks. A header with any other version is refused
/// with [`DecodeError::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Bytes in a frame header: magic (4), version (2), kind (2), payload length (4).
pub const HEADER_LEN: usize = 12;

/// Bytes in one TCPX listen handle (`ncclNetHandle_v7`, `NCCL_NET_HANDLE_MAXSIZE`).
pub const HANDLE_LEN: usize = 128;

/// The most channels (TCPX comms, hence listen handles) one bootstrap can carry.
///
/// 64 is the bound the C++ tree's client enforced, so every configuration it could run still
/// fits; it is four times the 16 channels UCCL's later engine allowed and far above the 8
/// comms per NIC Google recommends for a 200 Gbps gVNIC. It keeps [`MAX_MESSAGE_LEN`] at about
/// 8 KiB, small enough for a stack buffer in a `no_std`, allocation-free reader.
pub const MAX_CHANNELS: usize = 64;

/// The longest [`Message::Error`] reason, in bytes of UTF-8.
pub const MAX_REASON_LEN: usize = 64;

/// Bytes of the setup record shared by [`Hello`] and the fixed part of [`Handles`].
const SETUP_LEN: usize = 4 + 4 + 8 + 4 + 2;
/// Payload bytes of [`Message::Ready`].
const READY_LEN: usize = 4;
/// Payload bytes of [`Done`].
const DONE_LEN: usize = 8 + 8 + 4;
/// Payload bytes of [`Message::Error`] before the reason.
const ERROR_FIXED_LEN: usize = 4 + 1;

/// The largest payload any message may declare: a [`Handles`] with [`MAX_CHANNELS`] handles.
/// [`decode_header`] refuses anything longer before the payload is read.
pub const MAX_PAYLOAD_LEN: u32 = (SETUP_LEN + MAX_CHANNELS * HANDLE_LEN) as u32;

/// The largest encoded message, header included: size a receive buffer with this.
pub const MAX_MESSAGE_LEN: usize = HEADER_LEN + MAX_PAYLOAD_LEN as usize;

// Every payload bound must fit the wire's length fields and the other kinds must fit under the
// Handles bound; counts must fit their u16/u8 fields.
const _: () = assert!(SETUP_LEN + MAX_CHANNELS * HANDLE_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_CHANNELS <= u16::MAX as usize);
const _: () = assert!(MAX_REASON_LEN <= u8::MAX as usize);
const _: () = assert!(ERROR_FIXED_LEN + MAX_REASON_LEN <= MAX_PAYLOAD_LEN as usize);
const _: () = assert!(DONE_LEN <= MAX_PAYLOAD_LEN as usize);

/// [`MAX_CHANNELS`] as it appears in errors.
const MAX_CHANNELS_U16: u16 = MAX_CHANNELS as u16;
/// [`MAX_REASON_LEN`] as it appears in errors.
const MAX_REASON_LEN_U8: u8 = MAX_REASON_LEN as u8;

/// One TCPX listen handle, opaque bytes produced by the plugin's `listen` on the server and fed
/// to `connect` on the client.
pub type NetHandle = [u8; HANDLE_LEN];

/// Well-known [`Message::Error`] codes. The wire carries any `u32`; these are the ones the
/// transport sends, so both sides read them the same way.
pub mod error_code {
    /// No more specific code applies; the reason says what happened.
    pub const UNSPECIFIED: u32 = 0;
    /// The peer's message could not be decoded or arrived out of order.
    pub const PROTOCOL: u32 = 1;
    /// The peer's setup (GPU, channel count, chunk size, transfer size, iterations) cannot be
    /// served or does not match what was asked for.
    pub const MISMATCH: u32 = 2;
    /// Setting up the TCPX comms (listen, connect, accept, memory registration) failed.
    pub const SETUP: u32 = 3;
    /// The transfer failed or stalled.
    pub const TRANSFER: u32 = 4;
    /// Received data failed verification (pattern or checksum).
    pub const VERIFY: u32 = 5;
}

/// The kind of a message: the `u16` at offset 6 of the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    /// Client → server: who the client is and what it expects. See [`Hello`].
    Hello = 1,
    /// Server → client: the listen handles and the plan. See [`Handles`].
    Handles = 2,
    /// Both ways: this side's comms are set up. See [`Message::Ready`].
    Ready = 3,
    /// Both ways: this side finished the run. See [`Done`].
    Done = 4,
    /// Both ways: this side closes the bootstrap connection. See [`Message::Bye`].
    Bye = 5,
    /// Both ways: this side failed and will close. See [`Message::Error`].
    Error = 6,
}

impl MessageKind {
    /// The kind's wire code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// The kind with wire code `code`, or `None` for a code this version does not know.
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            1 => Some(Self::Hello),
            2 => Some(Self::Handles),
            3 => Some(Self::Ready),
            4 => Some(Self::Done),
            5 => Some(Self::Bye),
            6 => Some(Self::Error),
            _ => None,
        }
    }

    /// The kind's name, as in the type docs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "Hello",
            Self::Handles => "Handles",
            Self::Ready => "Ready",
            Self::Done => "Done",
            Self::Bye => "Bye",
            Self::Error => "Error",
        }
    }

    /// The shortest and longest payload this kind's layout allows. Equal for fixed-size kinds.
    const fn payload_bounds(self) -> (usize, usize) {
        match self {
            Self::Hello => (SETUP_LEN, SETUP_LEN),
            Self::Handles => (SETUP_LEN, MAX_PAYLOAD_LEN as usize),
            Self::Ready => (READY_LEN, READY_LEN),
            Self::Done => (DONE_LEN, DONE_LEN),
            Self::Bye => (0, 0),
            Self::Error => (ERROR_FIXED_LEN, ERROR_FIXED_LEN + MAX_REASON_LEN),
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Client → server, first message: who the client is and what it expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hello {
    /// The client's GPU index.
    pub gpu: u32,
    /// Channels the client wants; 0 means "whatever the server has". At most [`MAX_CHANNELS`].
    pub channels: u16,
    /// Chunk size in bytes the client wants; 0 means "whatever the server uses".
    pub chunk_bytes: u32,
    /// Bytes per iteration the client intends to move.
    pub bytes: u64,
    /// Iterations the client intends to run.
    pub iters: u32,
}

/// Server → client, answer to [`Hello`]: one TCPX listen handle per channel and the plan both
/// sides follow.
///
/// The handles live in a fixed array (no allocation); [`Handles::handles`] returns the used
/// part. A `Handles` always holds between 1 and [`MAX_CHANNELS`] handles.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Handles {
    /// The server's GPU index.
    pub gpu: u32,
    /// Chunk size in bytes both sides cut the transfer into.
    pub chunk_bytes: u32,
    /// Bytes per iteration both sides move.
    pub bytes: u64,
    /// Iterations both sides run.
    pub iters: u32,
    /// Handles in use, `1..=MAX_CHANNELS`.
    count: u16,
    /// `handles[..count]` are in use; the rest are zero.
    handles: [NetHandle; MAX_CHANNELS],
}

impl Handles {
    /// A `Handles` carrying `handles`, one per channel, in channel order.
    ///
    /// # Errors
    ///
    /// [`EncodeError::ZeroChannels`] if `handles` is empty, [`EncodeError::TooManyChannels`] if
    /// it holds more than [`MAX_CHANNELS`].
    ///
    /// ```
    /// use tcpx_core::codec::{EncodeError, Handles};
    /// let h = Handles::new(0, 512 << 10, 1 << 26, 10, &[[7; 128]]).unwrap();
    /// assert_eq!(h.channels(), 1);
    /// assert_eq!(Handles::new(0, 1, 1, 1, &[]), Err(EncodeError::ZeroChannels));
    /// ```
    pub fn new(
        gpu: u32,
        chunk_bytes: u32,
        bytes: u64,
        iters: u32,
        handles: &[NetHandle],
    ) -> Result<Self, EncodeError> {
        if handles.is_empty() {
            return Err(EncodeError::ZeroChannels);
        }
        if handles.len() > MAX_CHANNELS {
            return Err(EncodeError::TooManyChannels {
                count: handles.len(),
                max: MAX_CHANNELS,
            });
        }
        let mut out = Self {
            gpu,
            chunk_bytes,
            bytes,
            iters,
            count: 0,
            handles: [[0; HANDLE_LEN]; MAX_CHANNELS],
        };
        for (dst, src) in out.handles.iter_mut().zip(handles) {
            *dst = *src;
        }
        // Cannot truncate: the length was checked against MAX_CHANNELS, which fits a u16.
        out.count = handles.len() as u16;
        Ok(out)
    }

    /// The number of channels, one per handle: always `1..=MAX_CHANNELS`.
    pub fn channels(&self) -> u16 {
        self.count
    }

    /// The listen handles in channel order.
    pub fn handles(&self) -> &[NetHandle] {
        self.handles.get(..usize::from(self.count)).unwrap_or(&[])
    }
}

impl fmt::Debug for Handles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handles")
            .field("gpu", &self.gpu)
            .field("chunk_bytes", &self.chunk_bytes)
            .field("bytes", &self.bytes)
            .field("iters", &self.iters)
            .field("channels", &self.count)
            .finish_non_exhaustive()
    }
}

/// Both ways, at the end of a run: what this side moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Done {
    /// Bytes this side sent or received over the whole run.
    pub bytes: u64,
    /// This side's checksum of those bytes (the transport picks the algorithm; both sides use
    /// the same one), so the peers can compare without a second pass.
    pub checksum: u64,
    /// Iterations this side completed.
    pub iters: u32,
}

/// The reason text of a [`Message::Error`]: at most [`MAX_REASON_LEN`] bytes of UTF-8, kept in
/// a fixed buffer.
///
/// Build one with [`Reason::new`] (refuses a longer text), [`Reason::truncated`] (cuts a longer
/// text at a character boundary) or by `write!`-ing into [`Reason::EMPTY`] (also truncates).
///
/// ```
/// use core::fmt::Write;
/// use tcpx_core::codec::Reason;
/// let mut r = Reason::EMPTY;
/// write!(r, "accept timed out on channel {}", 3).unwrap();
/// assert_eq!(r.as_str(), "accept timed out on channel 3");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason {
    /// Bytes in use, `0..=MAX_REASON_LEN`.
    len: u8,
    /// `bytes[..len]` is valid UTF-8; the rest is zero.
    bytes: [u8; MAX_REASON_LEN],
}

impl Reason {
    /// The empty reason.
    pub const EMPTY: Self = Self {
        len: 0,
        bytes: [0; MAX_REASON_LEN],
    };

    /// `text` as a reason.
    ///
    /// # Errors
    ///
    /// [`EncodeError::ReasonTooLong`] if `text` is longer than [`MAX_REASON_LEN`] bytes.
    pub fn new(text: &str) -> Result<Self, EncodeError> {
        if text.len() > MAX_REASON_LEN {
            return Err(EncodeError::ReasonTooLong {
                len: text.len(),
                max: MAX_REASON_LEN,
            });
        }
        let mut out = Self::EMPTY;
        out.push_truncated(text);
        Ok(out)
    }

    /// `text` as a reason, cut at the last character boundary that fits [`MAX_REASON_LEN`].
    pub fn truncated(text: &str) -> Self {
        let mut out = Self::EMPTY;
        out.push_truncated(text);
        out
    }

    /// The reason text.
    pub fn as_str(&self) -> &str {
        let used = self.bytes.get(..usize::from(self.len)).unwrap_or(&[]);
        // Always valid by construction; the fallback is unreachable.
        core::str::from_utf8(used).unwrap_or("")
    }

    /// Length of the reason in bytes.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether the reason is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends as much of `text` as fits, cutting at a character boundary.
    fn push_truncated(&mut self, text: &str) {
        let start = usize::from(self.len);
        let room = MAX_REASON_LEN.saturating_sub(start);
        let mut take = text.len().min(room);
        while !text.is_char_boundary(take) {
            take -= 1;
        }
        let src = text.as_bytes().get(..take).unwrap_or(&[]);
        if let Some(dst) = self.bytes.get_mut(start..start + src.len()) {
            dst.copy_from_slice(src);
            // Cannot truncate: start + take <= MAX_REASON_LEN, which fits a u8.
            self.len = (start + src.len()) as u8;
        }
    }
}

impl Default for Reason {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Appends to the reason, silently cutting at [`MAX_REASON_LEN`] bytes (on a character
/// boundary): a reason is a short hint, and a formatting error would lose all of it.
impl fmt::Write for Reason {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_truncated(s);
        Ok(())
    }
}

/// One bootstrap message.
// `Handles` carries its handles inline (about 8 KiB) because this crate has no allocator; the
// bootstrap moves a handful of messages per run, so the size costs nothing that matters.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Message {
    /// Client → server: who the client is and what it expects.
    Hello(Hello),
    /// Server → client: the listen handles and the plan.
    Handles(Handles),
    /// Both ways, after this side's comms are set up (server: accepted; client: connected).
    Ready {
        /// An opaque value the transport chooses (for example a session nonce) and may check.
        token: u32,
    },
    /// Both ways, after this side finished the run.
    Done(Done),
    /// Both ways: nothing more will be sent; the bootstrap connection closes.
    Bye,
    /// Both ways: this side failed and will close the connection.
    Error {
        /// What went wrong; see [`error_code`] for the codes the transport uses.
        code: u32,
        /// A short human-readable hint.
        reason: Reason,
    },
}

impl Message {
    /// The message's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Self::Hello(_) => MessageKind::Hello,
            Self::Handles(_) => MessageKind::Handles,
            Self::Ready { .. } => MessageKind::Ready,
            Self::Done(_) => MessageKind::Done,
            Self::Bye => MessageKind::Bye,
            Self::Error { .. } => MessageKind::Error,
        }
    }

    /// Bytes of the payload (without the header).
    fn payload_len(&self) -> usize {
        match self {
            Self::Hello(_) => SETUP_LEN,
            Self::Handles(h) => SETUP_LEN + usize::from(h.count) * HANDLE_LEN,
            Self::Ready { .. } => READY_LEN,
            Self::Done(_) => DONE_LEN,
            Self::Bye => 0,
            Self::Error { reason, .. } => ERROR_FIXED_LEN + reason.len(),
        }
    }
}

/// A validated frame header: what [`decode_header`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// The message kind.
    pub kind: MessageKind,
    /// The payload length as on the wire; already checked against [`MAX_PAYLOAD_LEN`] and the
    /// bounds of `kind`'s layout.
    pub payload_len: u32,
}

impl Header {
    /// The payload length in bytes: how many bytes to read after the header.
    pub fn payload_size(&self) -> usize {
        // Lossless: payload_len <= MAX_PAYLOAD_LEN, which fits every usize.
        self.payload_len as usize
    }

    /// The whole message's length, header included.
    pub fn message_len(&self) -> usize {
        HEADER_LEN + self.payload_size()
    }
}

/// Why a message could not be built or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EncodeError {
    /// The output buffer is shorter than the encoded message.
    BufferTooSmall {
        /// Bytes the message needs ([`encoded_len`]).
        needed: usize,
        /// Bytes the buffer has.
        got: usize,
    },
    /// A [`Handles`] needs at least one handle.
    ZeroChannels,
    /// More channels than [`MAX_CHANNELS`] (a [`Handles`] or a [`Hello`]'s request).
    TooManyChannels {
        /// Channels given.
        count: usize,
        /// [`MAX_CHANNELS`].
        max: usize,
    },
    /// A reason longer than [`MAX_REASON_LEN`] bytes.
    ReasonTooLong {
        /// Bytes given.
        len: usize,
        /// [`MAX_REASON_LEN`].
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall { needed, got } => write!(
                f,
                "bootstrap message needs {needed} bytes but the buffer has {got}"
            ),
            Self::ZeroChannels => {
                f.write_str("bootstrap Handles message needs at least one channel")
            }
            Self::TooManyChannels { count, max } => {
                write!(f, "{count} channels requested, at most {max} supported")
            }
            Self::ReasonTooLong { len, max } => {
                write!(f, "error reason is {len} bytes, at most {max} allowed")
            }
        }
    }
}

impl core::error::Error for EncodeError {}

/// Why bytes were refused as a bootstrap message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ends before the header or the payload it announces.
    Truncated {
        /// Bytes needed: [`HEADER_LEN`], or the whole message once the header is known.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The first four bytes are not [`MAGIC`]: the peer does not speak this protocol.
    BadMagic([u8; 4]),
    /// The peer speaks another protocol version.
    UnsupportedVersion {
        /// The version in the header.
        got: u16,
        /// [`PROTOCOL_VERSION`].
        supported: u16,
    },
    /// A kind code this version does not know.
    UnknownKind(u16),
    /// The header announces a payload longer than [`MAX_PAYLOAD_LEN`].
    PayloadTooLarge {
        /// The announced length.
        len: u32,
        /// [`MAX_PAYLOAD_LEN`].
        max: u32,
    },
    /// The payload length does not match what the kind's layout and fields require.
    PayloadLengthMismatch {
        /// The message kind.
        kind: MessageKind,
        /// The length the layout requires; where the header alone cannot fix it (a too short
        /// [`Handles`], a too short or too long [`Message::Error`]), the bound it broke.
        expected: u32,
        /// The announced length.
        got: u32,
    },
    /// A channel count above [`MAX_CHANNELS`] (in a [`Hello`] or a [`Handles`]).
    TooManyChannels {
        /// The count on the wire.
        count: u16,
        /// [`MAX_CHANNELS`].
        max: u16,
    },
    /// A [`Handles`] with a channel count of zero.
    ZeroChannels,
    /// A [`Message::Error`] reason length above [`MAX_REASON_LEN`].
    ReasonTooLong {
        /// The length on the wire.
        len: u8,
        /// [`MAX_REASON_LEN`].
        max: u8,
    },
    /// A [`Message::Error`] reason that is not UTF-8.
    InvalidUtf8,
    /// [`decode_payload`] was given more bytes than the header announces.
    TrailingBytes {
        /// Bytes beyond the announced payload.
        extra: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { needed, got } => write!(
                f,
                "bootstrap message truncated: needed {needed} bytes, got {got}"
            ),
            Self::BadMagic(m) => write!(
                f,
                "bootstrap message has bad magic {:02x} {:02x} {:02x} {:02x} (expected \"TCPX\")",
                m[0], m[1], m[2], m[3]
            ),
            Self::UnsupportedVersion { got, supported } => write!(
                f,
                "bootstrap protocol version {got} is not supported (this side speaks {supported})"
            ),
            Self::UnknownKind(code) => write!(f, "unknown bootstrap message kind {code}"),
            Self::PayloadTooLarge { len, max } => write!(
                f,
                "bootstrap payload of {len} bytes exceeds the maximum of {max}"
            ),
            Self::PayloadLengthMismatch {
                kind,
                expected,
                got,
            } => write!(
                f,
                "bootstrap {kind} payload is {got} bytes, its layout requires {expected}"
            ),
            Self::TooManyChannels { count, max } => write!(
                f,
                "bootstrap message names {count} channels, at most {max} supported"
            ),
            Self::ZeroChannels => f.write_str("bootstrap Handles message has zero channels"),
            Self::ReasonTooLong { len, max } => write!(
                f,
                "bootstrap error reason is {len} bytes, at most {max} allowed"
            ),
            Self::InvalidUtf8 => f.write_str("bootstrap error reason is not valid UTF-8"),
            Self::TrailingBytes { extra } => write!(
                f,
                "{extra} bytes follow the bootstrap payload the header announces"
            ),
        }
    }
}

impl core::error::Error for DecodeError {}

/// Bytes [`encode`] writes for `msg`, header included; at most [`MAX_MESSAGE_LEN`].
pub fn encoded_len(msg: &Message) -> usize {
    HEADER_LEN + msg.payload_len()
}

/// Encodes `msg` into the front of `out` and returns the bytes written ([`encoded_len`]).
///
/// # Errors
///
/// [`EncodeError::BufferTooSmall`] if `out` is shorter than [`encoded_len`] (nothing is
/// written); [`EncodeError::TooManyChannels`] for a [`Hello`] asking for more than
/// [`MAX_CHANNELS`], which the peer would refuse.
pub fn encode(msg: &Message, out: &mut [u8]) -> Result<usize, EncodeError> {
    if let Message::Hello(h) = msg {
        if usize::from(h.channels) > MAX_CHANNELS {
            return Err(EncodeError::TooManyChannels {
                count: usize::from(h.channels),
                max: MAX_CHANNELS,
            });
        }
    }
    let needed = encoded_len(msg);
    let got = out.len();
    let dst = out
        .get_mut(..needed)
        .ok_or(EncodeError::BufferTooSmall { needed, got })?;
    let mut w = Writer { buf: dst, pos: 0 };
    w.put(&MAGIC)?;
    w.put(&PROTOCOL_VERSION.to_le_bytes())?;
    w.put(&msg.kind().code().to_le_bytes())?;
    // Cannot truncate: every payload is at most MAX_PAYLOAD_LEN, a u32.
    w.put(&(msg.payload_len() as u32).to_le_bytes())?;
    match msg {
        Message::Hello(h) => {
            w.put_setup(h.gpu, h.chunk_bytes, h.bytes, h.iters, h.channels)?;
        }
        Message::Handles(h) => {
            w.put_setup(h.gpu, h.chunk_bytes, h.bytes, h.iters, h.count)?;
            for handle in h.handles() {
                w.put(handle)?;
            }
        }
        Message::Ready { token } => w.put(&token.to_le_bytes())?,
        Message::Done(d) => {
            w.put(&d.bytes.to_le_bytes())?;
            w.put(&d.checksum.to_le_bytes())?;
            w.put(&d.iters.to_le_bytes())?;
        }
        Message::Bye => {}
        Message::Error { code, reason } => {
            w.put(&code.to_le_bytes())?;
            w.put(&[reason.len])?;
            w.put(reason.as_str().as_bytes())?;
        }
    }
    Ok(w.pos)
}

/// Decodes and validates the header at the front of `buf` (bytes after [`HEADER_LEN`] are not
/// looked at).
///
/// Checks, in order: length, magic, version, kind, the payload length against
/// [`MAX_PAYLOAD_LEN`], then against the bounds of the kind's layout. A reader that gets `Ok`
/// can read exactly [`Header::payload_size`] more bytes, knowing that is at most
/// [`MAX_PAYLOAD_LEN`].
///
/// # Errors
///
/// [`DecodeError::Truncated`], [`DecodeError::BadMagic`], [`DecodeError::UnsupportedVersion`],
/// [`DecodeError::UnknownKind`], [`DecodeError::PayloadTooLarge`] or
/// [`DecodeError::PayloadLengthMismatch`].
pub fn decode_header(buf: &[u8]) -> Result<Header, DecodeError> {
    let mut r = Reader::new(buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated {
        needed: HEADER_LEN,
        got: buf.len(),
    })?);
    let magic: [u8; 4] = r.array()?;
    if magic != MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = r.u16()?;
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::UnsupportedVersion {
            got: version,
            supported: PROTOCOL_VERSION,
        });
    }
    let code = r.u16()?;
    let kind = MessageKind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
    let payload_len = r.u32()?;
    check_payload_len(kind, payload_len)?;
    Ok(Header { kind, payload_len })
}

/// Decodes the payload of a message whose header [`decode_header`] accepted. `payload` must
/// be exactly [`Header::payload_size`] bytes.
///
/// # Errors
///
/// What [`decode_header`] checks of the length ([`DecodeError::PayloadTooLarge`],
/// [`DecodeError::PayloadLengthMismatch`]) is checked again, for a hand-built `header`;
/// then [`DecodeError::Truncated`] if `payload` is short, [`DecodeError::TrailingBytes`] if it
/// is long, and otherwise whatever the kind's fields break:
/// [`DecodeError::PayloadLengthMismatch`], [`DecodeError::TooManyChannels`],
/// [`DecodeError::ZeroChannels`], [`DecodeError::ReasonTooLong`] or
/// [`DecodeError::InvalidUtf8`].
pub fn decode_payload(header: &Header, payload: &[u8]) -> Result<Message, DecodeError> {
    // `Header`'s fields are public: a hand-built one gets the same checks as a decoded one.
    check_payload_len(header.kind, header.payload_len)?;
    let len = header.payload_size();
    if payload.len() < len {
        return Err(DecodeError::Truncated {
            needed: len,
            got: payload.len(),
        });
    }
    if payload.len() > len {
        return Err(DecodeError::TrailingBytes {
            extra: payload.len() - len,
        });
    }
    let mismatch = |expected: usize| DecodeError::PayloadLengthMismatch {
        kind: header.kind,
        // Cannot truncate: callers pass lengths bounded by MAX_PAYLOAD_LEN + a u8.
        expected: expected as u32,
        got: header.payload_len,
    };
    let mut r = Reader::new(payload);
    let msg = match header.kind {
        MessageKind::Hello => {
            let s = r.setup()?;
            if usize::from(s.channels) > MAX_CHANNELS {
                return Err(DecodeError::TooManyChannels {
                    count: s.channels,
                    max: MAX_CHANNELS_U16,
                });
            }
            Message::Hello(Hello {
                gpu: s.gpu,
                channels: s.channels,
                chunk_bytes: s.chunk_bytes,
                bytes: s.bytes,
                iters: s.iters,
            })
        }
        MessageKind::Handles => {
            let s = r.setup()?;
            if s.channels == 0 {
                return Err(DecodeError::ZeroChannels);
            }
            if usize::from(s.channels) > MAX_CHANNELS {
                return Err(DecodeError::TooManyChannels {
                    count: s.channels,
                    max: MAX_CHANNELS_U16,
                });
            }
            let expected = SETUP_LEN + usize::from(s.channels) * HANDLE_LEN;
            if expected != len {
                return Err(mismatch(expected));
            }
            let mut h = Handles {
                gpu: s.gpu,
                chunk_bytes: s.chunk_bytes,
                bytes: s.bytes,
                iters: s.iters,
                count: s.channels,
                handles: [[0; HANDLE_LEN]; MAX_CHANNELS],
            };
            for slot in h.handles.iter_mut().take(usize::from(s.channels)) {
                *slot = r.array()?;
            }
            Message::Handles(h)
        }
        MessageKind::Ready => Message::Ready { token: r.u32()? },
        MessageKind::Done => Message::Done(Done {
            bytes: r.u64()?,
            checksum: r.u64()?,
            iters: r.u32()?,
        }),
        MessageKind::Bye => Message::Bye,
        MessageKind::Error => {
            let code = r.u32()?;
            let [reason_len] = r.array::<1>()?;
            if usize::from(reason_len) > MAX_REASON_LEN {
                return Err(DecodeError::ReasonTooLong {
                    len: reason_len,
                    max: MAX_REASON_LEN_U8,
                });
            }
            let expected = ERROR_FIXED_LEN + usize::from(reason_len);
            if expected != len {
                return Err(mismatch(expected));
            }
            let text = r.take(usize::from(reason_len))?;
            let text = core::str::from_utf8(text).map_err(|_| DecodeError::InvalidUtf8)?;
            Message::Error {
                code,
                reason: Reason::truncated(text),
            }
        }
    };
    // Each arm consumes exactly its layout, and the length was checked against it; anything
    // left would mean a layout bug, never a silently ignored byte.
    let left = r.remaining();
    if left != 0 {
        return Err(DecodeError::TrailingBytes { extra: left });
    }
    Ok(msg)
}

/// Decodes one message from the front of `buf` and returns it with the bytes it consumed.
/// Bytes after the message are left alone, so a caller holding several can continue from the
/// returned offset.
///
/// # Errors
///
/// Everything [`decode_header`] and [`decode_payload`] refuse; [`DecodeError::Truncated`] if
/// `buf` ends inside the header or the payload.
pub fn decode(buf: &[u8]) -> Result<(Message, usize), DecodeError> {
    let header = decode_header(buf)?;
    let end = header.message_len();
    let payload = buf.get(HEADER_LEN..end).ok_or(DecodeError::Truncated {
        needed: end,
        got: buf.len(),
    })?;
    Ok((decode_payload(&header, payload)?, end))
}

/// Checks `payload_len` against [`MAX_PAYLOAD_LEN`], then against the bounds of `kind`'s layout.
fn check_payload_len(kind: MessageKind, payload_len: u32) -> Result<(), DecodeError> {
    if payload_len > MAX_PAYLOAD_LEN {
        return Err(DecodeError::PayloadTooLarge {
            len: payload_len,
            max: MAX_PAYLOAD_LEN,
        });
    }
    let (min, max) = kind.payload_bounds();
    let len = payload_len as usize; // lossless: at most MAX_PAYLOAD_LEN
    let bound = if len < min {
        min
    } else if len > max {
        max
    } else {
        return Ok(());
    };
    Err(DecodeError::PayloadLengthMismatch {
        kind,
        // Cannot truncate: every bound is at most MAX_PAYLOAD_LEN.
        expected: bound as u32,
        got: payload_len,
    })
}

/// The fields [`Hello`] and [`Handles`] share, as on the wire.
struct Setup {
    gpu: u32,
    chunk_bytes: u32,
    bytes: u64,
    iters: u32,
    channels: u16,
}

/// Writes into a buffer already sized to the message; a write past its end is an error.
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), EncodeError> {
        let end = self.pos + bytes.len();
        let got = self.buf.len();
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(EncodeError::BufferTooSmall { needed: end, got })?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    fn put_setup(
        &mut self,
        gpu: u32,
        chunk_bytes: u32,
        bytes: u64,
        iters: u32,
        channels: u16,
    ) -> Result<(), EncodeError> {
        self.put(&gpu.to_le_bytes())?;
        self.put(&chunk_bytes.to_le_bytes())?;
        self.put(&bytes.to_le_bytes())?;
        self.put(&iters.to_le_bytes())?;
        self.put(&channels.to_le_bytes())
    }
}

/// Reads little-endian fields from a slice; reading past its end is [`DecodeError::Truncated`].
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos + n;
        let out = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated {
            needed: end,
            got: self.buf.len(),
        })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N)?;
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated {
            needed: N,
            got: bytes.len(),
        })
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    fn setup(&mut self) -> Result<Setup, DecodeError> {
        Ok(Setup {
            gpu: self.u32()?,
            chunk_bytes: self.u32()?,
            bytes: self.u64()?,
            iters: self.u32()?,
            channels: self.u16()?,
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use core::fmt::Write as _;
    use proptest::prelude::*;
    use std::string::{String, ToString};
    use std::vec::Vec;

    fn enc(msg: &Message) -> Vec<u8> {
        let mut buf = [0u8; MAX_MESSAGE_LEN];
        let n = encode(msg, &mut buf).expect("encode");
        assert_eq!(n, encoded_len(msg));
        buf[..n].to_vec()
    }

    fn header(kind: u16, payload_len: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&payload_len.to_le_bytes());
        v
    }

    fn handle(seed: u8) -> NetHandle {
        let mut h = [0u8; HANDLE_LEN];
        for (i, b) in h.iter_mut().enumerate() {
            *b = seed.wrapping_add(i as u8);
        }
        h
    }

    fn sample_messages() -> Vec<Message> {
        let hs: Vec<NetHandle> = (0..MAX_CHANNELS as u8).map(handle).collect();
        std::vec![
            Message::Hello(Hello {
                gpu: 7,
                channels: 0,
                chunk_bytes: 0,
                bytes: 1 << 26,
                iters: 20,
            }),
            Message::Hello(Hello {
                gpu: u32::MAX,
                channels: MAX_CHANNELS as u16,
                chunk_bytes: u32::MAX,
                bytes: u64::MAX,
                iters: u32::MAX,
            }),
            Message::Handles(Handles::new(1, 512 << 10, 1 << 26, 10, &hs[..1]).unwrap()),
            Message::Handles(Handles::new(2, 1 << 20, 1 << 30, 3, &hs[..4]).unwrap()),
            Message::Handles(Handles::new(3, 4096, 0, 0, &hs).unwrap()),
            Message::Ready { token: 0 },
            Message::Ready { token: 0xdead_beef },
            Message::Done(Done {
                bytes: 1 << 40,
                checksum: 0x0123_4567_89ab_cdef,
                iters: 20,
            }),
            Message::Bye,
            Message::Error {
                code: error_code::SETUP,
                reason: Reason::EMPTY,
            },
            Message::Error {
                code: error_code::VERIFY,
                reason: Reason::new("chunk 17 on channel 2: checksum mismatch ✗").unwrap(),
            },
            Message::Error {
                code: u32::MAX,
                reason: Reason::new(&"é".repeat(MAX_REASON_LEN / 2)).unwrap(),
            },
        ]
    }

    // ---- round trips ----------------------------------------------------------------------

    #[test]
    fn every_kind_round_trips() {
        let mut kinds = Vec::new();
        for msg in sample_messages() {
            let bytes = enc(&msg);
            let (back, used) = decode(&bytes).unwrap();
            assert_eq!(back, msg);
            assert_eq!(used, bytes.len());
            // The header/payload path agrees with `decode`.
            let h = decode_header(&bytes[..HEADER_LEN]).unwrap();
            assert_eq!(h.kind, msg.kind());
            assert_eq!(h.message_len(), bytes.len());
            assert_eq!(decode_payload(&h, &bytes[HEADER_LEN..]).unwrap(), msg);
            kinds.push(msg.kind());
        }
        for code in 1..=6 {
            let kind = MessageKind::from_code(code).unwrap();
            assert_eq!(kind.code(), code);
            assert!(kinds.contains(&kind), "{kind} not covered");
        }
    }

    #[test]
    fn decode_leaves_following_bytes_for_the_next_message() {
        let a = Message::Ready { token: 9 };
        let b = Message::Bye;
        let mut stream = enc(&a);
        stream.extend_from_slice(&enc(&b));
        let (m1, n1) = decode(&stream).unwrap();
        assert_eq!(m1, a);
        let (m2, n2) = decode(&stream[n1..]).unwrap();
        assert_eq!(m2, b);
        assert_eq!(n1 + n2, stream.len());
    }

    #[test]
    fn largest_message_fits_max_message_len() {
        let hs: Vec<NetHandle> = (0..MAX_CHANNELS as u8).map(handle).collect();
        let m = Message::Handles(Handles::new(0, 1, 1, 1, &hs).unwrap());
        assert_eq!(encoded_len(&m), MAX_MESSAGE_LEN);
        assert_eq!(MAX_PAYLOAD_LEN as usize, 22 + 64 * 128);
    }

    // ---- golden bytes: the wire format must not change by accident ------------------------

    #[test]
    fn golden_hello() {
        let m = Message::Hello(Hello {
            gpu: 3,
            channels: 4,
            chunk_bytes: 512 << 10,
            bytes: 64 << 20,
            iters: 20,
        });
        let expected: [u8; 34] = [
            b'T', b'C', b'P', b'X', // magic
            0x01, 0x00, // version 1
            0x01, 0x00, // kind Hello
            0x16, 0x00, 0x00, 0x00, // payload 22
            0x03, 0x00, 0x00, 0x00, // gpu 3
            0x00, 0x00, 0x08, 0x00, // chunk_bytes 524288
            0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, // bytes 64 MiB
            0x14, 0x00, 0x00, 0x00, // iters 20
            0x04, 0x00, // channels 4
        ];
        assert_eq!(enc(&m), expected);
        assert_eq!(decode(&expected).unwrap(), (m, expected.len()));
    }

    #[test]
    fn golden_other_kinds() {
        let ready = [
            b'T', b'C', b'P', b'X', 1, 0, 3, 0, 4, 0, 0, 0, 0xef, 0xbe, 0xad, 0xde,
        ];
        assert_eq!(enc(&Message::Ready { token: 0xdead_beef }), ready);

        let done = Message::Done(Done {
            bytes: 0x0102,
            checksum: 0x0a0b,
            iters: 5,
        });
        let mut want = header(4, 20);
        want.extend_from_slice(&[
            2, 1, 0, 0, 0, 0, 0, 0, 0x0b, 0x0a, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0,
        ]);
        assert_eq!(enc(&done), want);

        assert_eq!(enc(&Message::Bye), header(5, 0));

        let err = Message::Error {
            code: 2,
            reason: Reason::new("no").unwrap(),
        };
        let mut want = header(6, 7);
        want.extend_from_slice(&[2, 0, 0, 0, 2, b'n', b'o']);
        assert_eq!(enc(&err), want);

        let hs = Message::Handles(Handles::new(1, 2, 3, 4, &[handle(0), handle(9)]).unwrap());
        let mut want = header(2, 22 + 256);
        want.extend_from_slice(&[
            1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 2, 0,
        ]);
        want.extend_from_slice(&handle(0));
        want.extend_from_slice(&handle(9));
        assert_eq!(enc(&hs), want);
    }

    // ---- every DecodeError variant ---------------------------------------------------------

    #[test]
    fn truncated_header_and_payload() {
        let bytes = enc(&Message::Ready { token: 1 });
        assert_eq!(
            decode(&bytes[..5]),
            Err(DecodeError::Truncated { needed: 12, got: 5 })
        );
        assert_eq!(
            decode_header(&[]),
            Err(DecodeError::Truncated { needed: 12, got: 0 })
        );
        assert_eq!(
            decode(&bytes[..14]),
            Err(DecodeError::Truncated {
                needed: 16,
                got: 14
            })
        );
        let h = decode_header(&bytes).unwrap();
        assert_eq!(
            decode_payload(&h, &bytes[12..15]),
            Err(DecodeError::Truncated { needed: 4, got: 3 })
        );
    }

    #[test]
    fn bad_magic() {
        let mut bytes = enc(&Message::Bye);
        bytes[..4].copy_from_slice(b"HTTP");
        assert_eq!(decode(&bytes), Err(DecodeError::BadMagic(*b"HTTP")));
        // The C++ tree's bootstrap: a raw host-order u32 channel count, then handles.
        let mut cxx = 4u32.to_le_bytes().to_vec();
        cxx.extend_from_slice(&[0u8; 4 * HANDLE_LEN]);
        assert_eq!(decode(&cxx), Err(DecodeError::BadMagic([4, 0, 0, 0])));
    }

    #[test]
    fn unsupported_version() {
        for v in [0u16, 2, u16::MAX] {
            let mut bytes = enc(&Message::Bye);
            bytes[4..6].copy_from_slice(&v.to_le_bytes());
            assert_eq!(
                decode(&bytes),
                Err(DecodeError::UnsupportedVersion {
                    got: v,
                    supported: 1
                })
            );
        }
    }

    #[test]
    fn unknown_kind() {
        for k in [0u16, 7, 0x0100, u16::MAX] {
            assert_eq!(decode(&header(k, 0)), Err(DecodeError::UnknownKind(k)));
            assert_eq!(MessageKind::from_code(k), None);
        }
    }

    #[test]
    fn payload_too_large_is_refused_from_the_header_alone() {
        for len in [MAX_PAYLOAD_LEN + 1, u32::MAX] {
            // Only the header: no payload is needed to refuse it.
            assert_eq!(
                decode_header(&header(2, len)),
                Err(DecodeError::PayloadTooLarge {
                    len,
                    max: MAX_PAYLOAD_LEN
                })
            );
            assert_eq!(
                decode(&header(6, len)),
                Err(DecodeError::PayloadTooLarge {
                    len,
                    max: MAX_PAYLOAD_LEN
                })
            );
        }
    }

    #[test]
    fn payload_length_mismatch_from_the_header() {
        let cases: [(u16, u32, MessageKind, u32); 9] = [
            (1, 21, MessageKind::Hello, 22),
            (1, 23, MessageKind::Hello, 22),
            (2, 21, MessageKind::Handles, 22),
            (3, 0, MessageKind::Ready, 4),
            (3, 5, MessageKind::Ready, 4),
            (4, 19, MessageKind::Done, 20),
            (5, 1, MessageKind::Bye, 0),
            (6, 4, MessageKind::Error, 5),
            (6, 70, MessageKind::Error, 69),
        ];
        for (code, len, kind, expected) in cases {
            assert_eq!(
                decode_header(&header(code, len)),
                Err(DecodeError::PayloadLengthMismatch {
                    kind,
                    expected,
                    got: len
                }),
                "kind {code} len {len}"
            );
        }
    }

    #[test]
    fn payload_length_mismatch_from_the_fields() {
        // Handles announcing 2 channels but carrying 1 handle.
        let mut bytes = enc(&Message::Handles(
            Handles::new(0, 1, 1, 1, &[handle(1)]).unwrap(),
        ));
        bytes[12 + 20..12 + 22].copy_from_slice(&2u16.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::PayloadLengthMismatch {
                kind: MessageKind::Handles,
                expected: 22 + 256,
                got: 22 + 128
            })
        );
        // Handles whose handle bytes are not a whole number of handles.
        let mut bytes = header(2, 22 + 100);
        bytes.extend_from_slice(&[0; 20]);
        bytes.extend_from_slice(&1u16.to_le_bytes());
        bytes.extend_from_slice(&[0; 100]);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::PayloadLengthMismatch {
                kind: MessageKind::Handles,
                expected: 22 + 128,
                got: 22 + 100
            })
        );
        // Error whose reason length disagrees with the payload length.
        let mut bytes = header(6, 8);
        bytes.extend_from_slice(&[1, 0, 0, 0, 2, b'a', b'b', b'c']);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::PayloadLengthMismatch {
                kind: MessageKind::Error,
                expected: 7,
                got: 8
            })
        );
    }

    #[test]
    fn too_many_channels() {
        let mut bytes = enc(&Message::Hello(Hello {
            gpu: 0,
            channels: 1,
            chunk_bytes: 0,
            bytes: 0,
            iters: 0,
        }));
        bytes[12 + 20..].copy_from_slice(&65u16.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::TooManyChannels { count: 65, max: 64 })
        );
        let mut bytes = enc(&Message::Handles(
            Handles::new(0, 1, 1, 1, &[handle(1)]).unwrap(),
        ));
        bytes[12 + 20..12 + 22].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::TooManyChannels {
                count: u16::MAX,
                max: 64
            })
        );
    }

    #[test]
    fn zero_channels() {
        let mut bytes = header(2, 22);
        bytes.extend_from_slice(&[0; 22]);
        assert_eq!(decode(&bytes), Err(DecodeError::ZeroChannels));
        let mut bytes = enc(&Message::Handles(
            Handles::new(0, 1, 1, 1, &[handle(1)]).unwrap(),
        ));
        bytes[12 + 20..12 + 22].copy_from_slice(&0u16.to_le_bytes());
        assert_eq!(decode(&bytes), Err(DecodeError::ZeroChannels));
        // Zero channels in a Hello means "whatever the server has" and is fine.
        let hello = Message::Hello(Hello {
            gpu: 0,
            channels: 0,
            chunk_bytes: 0,
            bytes: 0,
            iters: 0,
        });
        assert!(decode(&enc(&hello)).is_ok());
    }

    #[test]
    fn reason_too_long_and_invalid_utf8() {
        let mut bytes = header(6, 5);
        bytes.extend_from_slice(&[0, 0, 0, 0, 65]);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::ReasonTooLong { len: 65, max: 64 })
        );
        let mut bytes = header(6, 7);
        bytes.extend_from_slice(&[0, 0, 0, 0, 2, 0xc3, 0x28]);
        assert_eq!(decode(&bytes), Err(DecodeError::InvalidUtf8));
        let mut bytes = header(6, 6);
        bytes.extend_from_slice(&[0, 0, 0, 0, 1, 0xff]);
        assert_eq!(decode(&bytes), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn trailing_bytes_in_decode_payload() {
        let bytes = enc(&Message::Ready { token: 5 });
        let h = decode_header(&bytes).unwrap();
        let mut payload = bytes[HEADER_LEN..].to_vec();
        payload.push(0);
        assert_eq!(
            decode_payload(&h, &payload),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
    }

    #[test]
    fn hand_built_header_gets_the_same_checks() {
        let h = Header {
            kind: MessageKind::Ready,
            payload_len: 8,
        };
        assert_eq!(
            decode_payload(&h, &[0; 8]),
            Err(DecodeError::PayloadLengthMismatch {
                kind: MessageKind::Ready,
                expected: 4,
                got: 8
            })
        );
        let h = Header {
            kind: MessageKind::Handles,
            payload_len: u32::MAX,
        };
        assert!(matches!(
            decode_payload(&h, &[]),
            Err(DecodeError::PayloadTooLarge { .. })
        ));
    }

    // ---- encoding errors and constructors --------------------------------------------------

    #[test]
    fn encode_errors() {
        let m = Message::Ready { token: 1 };
        let mut small = [0xaau8; 15];
        assert_eq!(
            encode(&m, &mut small),
            Err(EncodeError::BufferTooSmall {
                needed: 16,
                got: 15
            })
        );
        assert_eq!(small, [0xaa; 15], "nothing written on error");
        let mut big = [0u8; 100];
        assert_eq!(encode(&m, &mut big), Ok(16));

        let hello = Message::Hello(Hello {
            gpu: 0,
            channels: 65,
            chunk_bytes: 0,
            bytes: 0,
            iters: 0,
        });
        assert_eq!(
            encode(&hello, &mut big),
            Err(EncodeError::TooManyChannels { count: 65, max: 64 })
        );

        assert_eq!(
            Handles::new(0, 0, 0, 0, &[]),
            Err(EncodeError::ZeroChannels)
        );
        let hs = [[0u8; HANDLE_LEN]; MAX_CHANNELS + 1];
        assert_eq!(
            Handles::new(0, 0, 0, 0, &hs),
            Err(EncodeError::TooManyChannels { count: 65, max: 64 })
        );
        assert_eq!(
            Reason::new(&"x".repeat(65)),
            Err(EncodeError::ReasonTooLong { len: 65, max: 64 })
        );
    }

    #[test]
    fn handles_accessors() {
        let h = Handles::new(5, 6, 7, 8, &[handle(3), handle(4), handle(5)]).unwrap();
        assert_eq!(h.channels(), 3);
        assert_eq!(h.handles(), &[handle(3), handle(4), handle(5)]);
        let dbg = std::format!("{h:?}");
        assert!(dbg.contains("channels: 3"), "{dbg}");
    }

    #[test]
    fn reason_truncates_on_a_char_boundary() {
        let long = "ü".repeat(40); // 80 bytes
        let r = Reason::truncated(&long);
        assert_eq!(r.len(), 64);
        assert_eq!(r.as_str(), &long[..64]);
        let odd = std::format!("a{long}"); // boundary at 63
        let r = Reason::truncated(&odd);
        assert_eq!(r.len(), 63);
        assert_eq!(r.as_str(), &odd[..63]);

        let mut w = Reason::EMPTY;
        assert!(w.is_empty());
        write!(w, "{}", "z".repeat(100)).unwrap();
        assert_eq!(w.as_str(), "z".repeat(64));
        assert_eq!(Reason::default(), Reason::EMPTY);
        assert_eq!(Reason::new("hi").unwrap().to_string(), "hi");
    }

    #[test]
    fn displays_name_the_numbers() {
        let cases: [(DecodeError, &[&str]); 12] = [
            (DecodeError::Truncated { needed: 12, got: 3 }, &["12", "3"]),
            (DecodeError::BadMagic(*b"HTTP"), &["48 54 54 50"]),
            (
                DecodeError::UnsupportedVersion {
                    got: 9,
                    supported: 1,
                },
                &["9", "1"],
            ),
            (DecodeError::UnknownKind(77), &["77"]),
            (
                DecodeError::PayloadTooLarge {
                    len: 99999,
                    max: 8214,
                },
                &["99999", "8214"],
            ),
            (
                DecodeError::PayloadLengthMismatch {
                    kind: MessageKind::Done,
                    expected: 20,
                    got: 21,
                },
                &["Done", "20", "21"],
            ),
            (
                DecodeError::TooManyChannels { count: 65, max: 64 },
                &["65", "64"],
            ),
            (DecodeError::ZeroChannels, &["zero"]),
            (
                DecodeError::ReasonTooLong { len: 70, max: 64 },
                &["70", "64"],
            ),
            (DecodeError::InvalidUtf8, &["UTF-8"]),
            (DecodeError::TrailingBytes { extra: 4 }, &["4"]),
            (
                DecodeError::Truncated {
                    needed: 34,
                    got: 20,
                },
                &["34", "20"],
            ),
        ];
        for (err, words) in cases {
            let s = err.to_string();
            for w in words {
                assert!(s.contains(w), "{s:?} lacks {w:?}");
            }
            let _: &dyn core::error::Error = &err;
        }
        let enc_cases: [(EncodeError, &[&str]); 4] = [
            (
                EncodeError::BufferTooSmall { needed: 34, got: 8 },
                &["34", "8"],
            ),
            (EncodeError::ZeroChannels, &["at least one"]),
            (
                EncodeError::TooManyChannels { count: 65, max: 64 },
                &["65", "64"],
            ),
            (
                EncodeError::ReasonTooLong { len: 65, max: 64 },
                &["65", "64"],
            ),
        ];
        for (err, words) in enc_cases {
            let s = err.to_string();
            for w in words {
                assert!(s.contains(w), "{s:?} lacks {w:?}");
            }
            let _: &dyn core::error::Error = &err;
        }
        assert_eq!(MessageKind::Handles.to_string(), "Handles");
    }

    // ---- properties ------------------------------------------------------------------------

    fn arb_reason() -> impl Strategy<Value = Reason> {
        any::<String>().prop_map(|s| Reason::truncated(&s))
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let hello = (
            any::<u32>(),
            0..=MAX_CHANNELS as u16,
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
        )
            .prop_map(|(gpu, channels, chunk_bytes, bytes, iters)| {
                Message::Hello(Hello {
                    gpu,
                    channels,
                    chunk_bytes,
                    bytes,
                    iters,
                })
            });
        let handles = (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            (1..=MAX_CHANNELS)
                .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), n * HANDLE_LEN)),
        )
            .prop_map(|(gpu, chunk_bytes, bytes, iters, raw)| {
                let hs: Vec<NetHandle> = raw
                    .chunks_exact(HANDLE_LEN)
                    .map(|c| <NetHandle>::try_from(c).unwrap())
                    .collect();
                Message::Handles(Handles::new(gpu, chunk_bytes, bytes, iters, &hs).unwrap())
            });
        let done =
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(bytes, checksum, iters)| {
                Message::Done(Done {
                    bytes,
                    checksum,
                    iters,
                })
            });
        prop_oneof![
            hello,
            handles,
            any::<u32>().prop_map(|token| Message::Ready { token }),
            done,
            Just(Message::Bye),
            (any::<u32>(), arb_reason()).prop_map(|(code, reason)| Message::Error { code, reason }),
        ]
    }

    /// Bytes that start like a frame (right magic and version) so the fuzzing reaches the
    /// kind, length and payload checks.
    fn arb_framed_bytes() -> impl Strategy<Value = Vec<u8>> {
        (
            0u16..9,
            prop_oneof![0u32..200, 0u32..=MAX_PAYLOAD_LEN + 2, any::<u32>()],
            proptest::collection::vec(any::<u8>(), 0..600),
        )
            .prop_map(|(kind, len, tail)| {
                let mut v = header(kind, len);
                v.extend_from_slice(&tail);
                v
            })
    }

    proptest! {
        #[test]
        fn prop_round_trip(msg in arb_message()) {
            let bytes = enc(&msg);
            prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
            let (back, used) = decode(&bytes).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_header(&bytes);
            if let Ok((msg, used)) = decode(&bytes) {
                prop_assert_eq!(enc(&msg), bytes[..used].to_vec());
            }
        }

        #[test]
        fn prop_framed_bytes_never_panic(bytes in arb_framed_bytes()) {
            if let Ok((msg, used)) = decode(&bytes) {
                prop_assert_eq!(enc(&msg), bytes[..used].to_vec());
            }
        }

        #[test]
        fn prop_mutations_error_or_re_encode_identically(
            msg in arb_message(),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        ) {
            let mut bytes = enc(&msg);
            for (at, xor) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= xor;
            }
            if let Ok((back, used)) = decode(&bytes) {
                prop_assert_eq!(enc(&back), bytes[..used].to_vec());
            }
        }

        #[test]
        fn prop_truncation_is_truncated(msg in arb_message(), cut in any::<prop::sample::Index>()) {
            let bytes = enc(&msg);
            let cut = cut.index(bytes.len()); // 0..len: always short of the whole message
            let needed = if cut < HEADER_LEN { HEADER_LEN } else { bytes.len() };
            prop_assert_eq!(
                decode(&bytes[..cut]),
                Err(DecodeError::Truncated { needed, got: cut })
            );
        }
    }

    #[test]
    fn truncation_at_every_point_of_every_sample() {
        for msg in sample_messages() {
            let bytes = enc(&msg);
            for cut in 0..bytes.len() {
                assert!(
                    matches!(decode(&bytes[..cut]), Err(DecodeError::Truncated { .. })),
                    "{msg:?} cut at {cut}"
                );
            }
        }
    }
}
