//! Checksum engine: SHA-256 (FIPS 180-4, the `sha2` crate) over a range of VRAM.
//!
//! The guest writes `CK_OFFSET` and `CK_LEN` and then `CK_CTRL.START`; the engine hashes
//! [`CHUNK`] bytes per step through the host's [`VramAccess`](crate::VramAccess) handle
//! (not through the bus: the data never leaves the device), then exposes the 32-byte
//! digest in `CK_DIGEST` and raises `INTR_CK_DONE` (or `INTR_CK_ERROR`).

use sha2::{Digest, Sha256};

/// Bytes hashed per engine step.
pub const CHUNK: usize = 1 << 20;

/// A checksum run in progress.
pub(crate) struct Run {
    /// Engine generation the run was started under (stale after reset).
    pub generation: u64,
    /// Next VRAM offset to hash.
    pub offset: u64,
    /// Bytes still to hash.
    pub remaining: u64,
    pub hasher: Sha256,
}

impl Run {
    pub fn new(generation: u64, offset: u64, len: u64) -> Self {
        Self {
            generation,
            offset,
            remaining: len,
            hasher: Sha256::new(),
        }
    }
}

/// SHA-256 of `data` (the reference the tests and the host control socket use).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}
