//! Fragment validation for the C++ unpack launcher: [`tcpx_core::unpack::validate_fragments`]
//! over the 16-byte `loadMeta` descriptors C++ holds (passed as pairs of `u64`: word 0 =
//! `src_off | len << 32`, word 1 = `dst_off`, the little-endian layout of NCCL's
//! `union loadMeta`).
//!
//! ```
//! use tcpx_ffi_cxx::bridge::ffi::Status;
//! use tcpx_ffi_cxx::unpack::unpack_validate;
//! // Two 4 KiB pages of an 8 KiB chunk, in reverse order in the bounce pool.
//! let metas = [8192 | 4096 << 32, 0, 0 | 4096 << 32, 4096];
//! let o = unpack_validate(&metas, 1 << 20, 8192);
//! assert_eq!((o.status, o.value), (Status::Ok, 8192));
//! assert_eq!(unpack_validate(&metas, 1 << 20, 4096).status, Status::InvalidArgument);
//! ```

use tcpx_core::unpack::{validate_fragments, LoadMeta, MAX_FRAGMENTS};

use crate::bridge::ffi::{Outcome, Status};
use crate::status::{fail, guard, internal, ok, C_REFUSED};

/// Checks a fragment list against the bounce pool and the chunk; the chunk's byte count in
/// `value`.
pub fn unpack_validate(metas: &[u64], bounce_len: u64, chunk_len: u64) -> Outcome {
    guard(
        || {
            if metas.len() % 2 != 0 || metas.len() / 2 > MAX_FRAGMENTS {
                return fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    format_args!(
                        "unpack: {} words are not 1..={MAX_FRAGMENTS} 16-byte descriptors",
                        metas.len()
                    ),
                );
            }
            let mut frags = [LoadMeta {
                src_off: 0,
                len: 0,
                dst_off: 0,
            }; MAX_FRAGMENTS];
            let n = metas.len() / 2;
            for (f, w) in frags.iter_mut().zip(metas.chunks_exact(2)) {
                *f = LoadMeta {
                    src_off: w[0] as u32,
                    len: (w[0] >> 32) as u32,
                    dst_off: w[1],
                };
            }
            match validate_fragments(&frags[..n], bounce_len, chunk_len) {
                Ok(s) => ok(s.bytes),
                Err(e) => fail(
                    Status::InvalidArgument,
                    C_REFUSED,
                    format_args!("unpack: {e}"),
                ),
            }
        },
        internal,
    )
}
