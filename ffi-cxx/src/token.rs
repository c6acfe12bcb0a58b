//! Tokens: how comms, requests and memory handles cross to C++ as opaque `void*`.
//!
//! A token is a `u64` that C++ stores in a `void*` and never dereferences. Its top byte is a
//! tag, so a token can never equal a real user-space pointer on x86-64/aarch64 Linux (those
//! are below 2^48), a null pointer is never a token, and a request token is never mistaken for
//! a comm token. The rest names a registry slot and its generation, so a token of a closed
//! comm is refused even after its slot was reused.
//!
//! | token | bits 63..56 | 55..40 | 39..32 | 31..0 |
//! |---|---|---|---|---|
//! | comm | `0x7C` | slot index | slot generation (low 8 bits) | kind (1 listen, 2 send, 3 recv) |
//! | request | `0x7D` | slot index of its comm | comm generation (low 8 bits) | sequence number on that comm |
//! | memory handle | `0x7E` | slot index of its comm | comm generation (low 8 bits) | registration id |
//!
//! ```
//! use tcpx_ffi_cxx::token::{Token, TokenKind};
//! let t = Token { kind: TokenKind::Request, slot: 5, gen: 9, low: 1234 };
//! assert_eq!(Token::decode(t.encode(), TokenKind::Request), Some(t));
//! assert_eq!(Token::decode(t.encode(), TokenKind::Comm), None);
//! assert_eq!(Token::decode(0, TokenKind::Comm), None);
//! ```

/// What a token names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A listen, send or receive comm.
    Comm,
    /// An outstanding request.
    Request,
    /// A registration (`mhandle`).
    MemHandle,
}

impl TokenKind {
    const fn tag(self) -> u64 {
        match self {
            TokenKind::Comm => 0x7C,
            TokenKind::Request => 0x7D,
            TokenKind::MemHandle => 0x7E,
        }
    }
}

/// A decoded token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Token {
    /// What it names.
    pub kind: TokenKind,
    /// The comm's registry slot.
    pub slot: u16,
    /// The low 8 bits of the slot's generation.
    pub gen: u8,
    /// Comm kind, request sequence number or registration id.
    pub low: u32,
}

impl Token {
    /// The `u64` C++ holds.
    pub const fn encode(self) -> u64 {
        (self.kind.tag() << 56)
            | ((self.slot as u64) << 40)
            | ((self.gen as u64) << 32)
            | self.low as u64
    }

    /// Decodes `raw` as a token of `kind`; `None` if it is not one (null, a pointer, another
    /// kind).
    pub const fn decode(raw: u64, kind: TokenKind) -> Option<Token> {
        if raw >> 56 != kind.tag() {
            return None;
        }
        Some(Token {
            kind,
            slot: ((raw >> 40) & 0xFFFF) as u16,
            gen: ((raw >> 32) & 0xFF) as u8,
            low: raw as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_never_look_like_pointers() {
        for kind in [TokenKind::Comm, TokenKind::Request, TokenKind::MemHandle] {
            let t = Token {
                kind,
                slot: u16::MAX,
                gen: u8::MAX,
                low: u32::MAX,
            };
            let raw = t.encode();
            assert!(raw >= 1 << 48, "above every user-space address");
            assert_eq!(Token::decode(raw, kind), Some(t));
        }
        let stack = 0u8;
        assert_eq!(
            Token::decode(&stack as *const u8 as u64, TokenKind::Comm),
            None
        );
    }
}
