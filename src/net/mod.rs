//! Everything that talks to an NCCL net plugin: the v7 ABI mirror ([`abi`]).
pub mod abi;
