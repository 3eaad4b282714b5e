//! Copy engine: a descriptor ring in guest memory, consumed one bounded step at a time.
//!
//! The guest programs `CE_RING_BASE`/`CE_RING_SIZE`, sets `CE_CTRL.ENABLE`, fills
//! descriptors and writes the index one past the last one to `CE_TAIL`. The engine
//! fetches the descriptor at `CE_HEAD`, copies `len` bytes from `src` to `dst` (both bus
//! addresses: guest RAM, this device's own VRAM BAR, or a peer's BAR — the fabric routes
//! them) in chunks of [`CHUNK`] bytes, writes the status word back into the descriptor,
//! then advances `CE_HEAD` and raises `INTR_CE_DONE`/`INTR_CE_ERROR`.
//!
//! A source or destination range that lies partly in this device's own VRAM — it starts
//! inside the VRAM BAR and runs past its end, or starts below it and runs into it — is
//! refused before any byte moves ([`DESC_ERR_VRAM_RANGE`]): the engine knows its VRAM,
//! and the bytes past its end belong to whatever the bus has there (below a switch,
//! often a peer's BAR).
//!
//! A failed copy is reported in that descriptor's status word and the engine goes on with
//! the next one. Only a failure to fetch a descriptor or to write its status back halts
//! the ring (`CE_STATUS.HALTED`), since the guest could not learn the outcome otherwise.
//! Chunks are copied in ascending address order through a bounce buffer, so overlapping
//! source and destination ranges give unspecified (but memory-safe) results.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes one engine step moves (bounds the time of one `process()` call).
pub const CHUNK: usize = 1 << 20;

/// One copy descriptor as laid out in the ring (little-endian, 32 bytes).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct CopyDescriptor {
    /// Bus address the engine reads from.
    pub src: U64,
    /// Bus address the engine writes to.
    pub dst: U64,
    /// Bytes to copy; 0 is an error ([`DESC_ERR_LENGTH`]).
    pub len: U64,
    /// `DESC_FLAG_*`; unknown bits are an error ([`DESC_ERR_FLAGS`]).
    pub flags: U32,
    /// Written by the device on completion: [`DESC_STATUS_DONE`], [`DESC_STATUS_ERROR`],
    /// error code in bits 15:8. The guest should zero it before posting.
    pub status: U32,
}
const _: () = assert!(size_of::<CopyDescriptor>() == DESC_SIZE as usize);

/// Size of one ring entry.
pub const DESC_SIZE: u64 = 32;
/// Offset of the status word inside a descriptor.
pub const DESC_STATUS_OFFSET: u64 = 28;

/// Descriptor flag: raise `INTR_CE_DONE` when this descriptor completes successfully
/// (errors always raise `INTR_CE_ERROR`).
pub const DESC_FLAG_INTERRUPT: u32 = 1 << 0;
/// All defined descriptor flags.
pub const DESC_FLAGS_ALL: u32 = DESC_FLAG_INTERRUPT;

/// Status: the device has finished with this descriptor.
pub const DESC_STATUS_DONE: u32 = 1 << 0;
/// Status: the copy failed; the code is in bits 15:8.
pub const DESC_STATUS_ERROR: u32 = 1 << 1;
/// Status: shift of the error code.
pub const DESC_STATUS_CODE_SHIFT: u32 = 8;

/// Descriptor error: `len` is 0.
pub const DESC_ERR_LENGTH: u8 = 1;
/// Descriptor error: `src + len` or `dst + len` overflows 64 bits.
pub const DESC_ERR_OVERFLOW: u8 = 2;
/// Descriptor error: reading the source failed (unmapped, bus master off, ...).
pub const DESC_ERR_SRC_FAULT: u8 = 3;
/// Descriptor error: writing the destination failed.
pub const DESC_ERR_DST_FAULT: u8 = 4;
/// Descriptor error: reserved flag bits set.
pub const DESC_ERR_FLAGS: u8 = 5;
/// Descriptor error: the source or destination lies partly in this device's VRAM (runs
/// past its end or into its start); nothing was copied.
pub const DESC_ERR_VRAM_RANGE: u8 = 6;

/// The status word the device writes for an outcome.
pub fn status_word(result: Result<(), u8>) -> u32 {
    match result {
        Ok(()) => DESC_STATUS_DONE,
        Err(code) => {
            DESC_STATUS_DONE | DESC_STATUS_ERROR | (u32::from(code) << DESC_STATUS_CODE_SHIFT)
        }
    }
}

/// Check a fetched descriptor before any data moves. `vram`: this device's VRAM window
/// on the bus (`(start, len)`), if its BAR is programmed.
pub fn validate(desc: &CopyDescriptor, vram: Option<(u64, u64)>) -> Result<(), u8> {
    if desc.flags.get() & !DESC_FLAGS_ALL != 0 {
        return Err(DESC_ERR_FLAGS);
    }
    let len = desc.len.get();
    if len == 0 {
        return Err(DESC_ERR_LENGTH);
    }
    if desc.src.get().checked_add(len).is_none() || desc.dst.get().checked_add(len).is_none() {
        return Err(DESC_ERR_OVERFLOW);
    }
    if let Some((start, size)) = vram {
        let end = start.saturating_add(size);
        // Overlaps the window without lying inside it (the ends cannot overflow: checked).
        let partly = |a: u64| {
            let b = a + len;
            a < end && b > start && (a < start || b > end)
        };
        if partly(desc.src.get()) || partly(desc.dst.get()) {
            return Err(DESC_ERR_VRAM_RANGE);
        }
    }
    Ok(())
}

/// A descriptor being worked on by the engine.
#[derive(Debug)]
pub(crate) struct InFlight {
    /// Ring generation the descriptor was fetched under (stale after reset/disable).
    pub generation: u64,
    /// Ring index of the descriptor.
    pub index: u32,
    /// Bus address of the descriptor (for the status write-back).
    pub addr: u64,
    pub desc: CopyDescriptor,
    /// Bytes copied so far.
    pub done: u64,
    /// Set once the outcome is known; the next step writes it back.
    pub outcome: Option<Result<(), u8>>,
}
