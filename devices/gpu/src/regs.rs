//! BAR0 register map of the p2plab GPU-like device.
//!
//! All registers are 32 bits wide, little-endian, at 4-byte aligned offsets. 64-bit
//! quantities are a `_LO`/`_HI` pair (low dword first). Reads have no side effects.
//! Writes must be 4 or 8 bytes at a 4-byte aligned offset (an 8-byte write is two dword
//! writes, low first); other writes are ignored. Unknown offsets read 0 and ignore
//! writes. The guest driver `guest-tests/kmod/p2pgpu.c` uses the same names with a
//! `P2PGPU_REG_` prefix.
//!
//! | offset | name | access | meaning |
//! |---|---|---|---|
//! | 0x000 | `ID` | RO | [`ID_VALUE`] (`"P2PG"` in memory order) |
//! | 0x004 | `VERSION` | RO | `major << 16 \| minor` ([`VERSION_VALUE`]) |
//! | 0x008 | `VRAM_SIZE_LO/HI` | RO | size of BAR2 "VRAM" in bytes |
//! | 0x010 | `STATUS` | RO | [`STATUS_READY`], [`STATUS_CE_BUSY`], [`STATUS_CK_BUSY`] |
//! | 0x014 | `CAPS` | RO | [`CAPS_COPY_ENGINE`], [`CAPS_CHECKSUM_SHA256`] |
//! | 0x018 | `MAX_CHUNK` | RO | bytes one engine step moves (informational) |
//! | 0x020 | `INTR_STATUS` | RW1C | `INTR_*` cause bits |
//! | 0x024 | `INTR_ENABLE` | RW | same bits; a cause raises its vector only if enabled |
//! | 0x100 | `CE_RING_BASE_LO/HI` | RW | bus address of the descriptor ring (32-byte aligned) |
//! | 0x108 | `CE_RING_SIZE` | RW | ring entries, 1..=[`CE_RING_MAX_ENTRIES`] |
//! | 0x10c | `CE_HEAD` | RO | next descriptor the engine consumes |
//! | 0x110 | `CE_TAIL` | RW | doorbell: one past the last descriptor posted |
//! | 0x114 | `CE_CTRL` | RW | [`CE_CTRL_ENABLE`] (0→1 latches base/size, head=tail=0) |
//! | 0x118 | `CE_STATUS` | RO | [`CE_STATUS_ENABLED`], [`CE_STATUS_BUSY`], [`CE_STATUS_HALTED`], [`CE_STATUS_ACTIVE`], halt code in bits 15:8 |
//! | 0x11c | `CE_COMPLETED` | RO | descriptors completed (wraps) |
//! | 0x120 | `CE_ERRORS` | RO | descriptors completed with an error (wraps) |
//! | 0x128 | `CE_BYTES_LO/HI` | RO | bytes copied since reset |
//! | 0x200 | `CK_OFFSET_LO/HI` | RW | VRAM offset of the range to hash |
//! | 0x208 | `CK_LEN_LO/HI` | RW | length of the range (0 is allowed: empty input) |
//! | 0x210 | `CK_CTRL` | WO | write [`CK_CTRL_START`] to start (ignored while busy) |
//! | 0x214 | `CK_STATUS` | RO | [`CK_STATUS_BUSY`], [`CK_STATUS_DONE`], [`CK_STATUS_ERROR`], code in bits 15:8 |
//! | 0x218 | `CK_ALGO` | RO | [`CK_ALGO_SHA256`] |
//! | 0x220 | `CK_BYTES_LO/HI` | RO | bytes hashed since reset |
//! | 0x240 | `CK_DIGEST` | RO | 32 digest bytes; byte `i` at `0x240 + i` |
//!
//! Interrupts (MSI-X): [`VECTOR_CE`] for `INTR_CE_*`, [`VECTOR_CK`] for `INTR_CK_*`.
//! A vector is signalled each time an enabled cause is raised (MSI-X is edge-triggered),
//! whether or not the bit was already set in `INTR_STATUS`.

/// `"P2PG"` read as a little-endian dword.
pub const ID_VALUE: u32 = u32::from_le_bytes(*b"P2PG");
/// Register interface version 1.0.
pub const VERSION_VALUE: u32 = 1 << 16;

pub const ID: u64 = 0x000;
pub const VERSION: u64 = 0x004;
pub const VRAM_SIZE_LO: u64 = 0x008;
pub const VRAM_SIZE_HI: u64 = 0x00c;
pub const STATUS: u64 = 0x010;
pub const CAPS: u64 = 0x014;
pub const MAX_CHUNK: u64 = 0x018;
pub const INTR_STATUS: u64 = 0x020;
pub const INTR_ENABLE: u64 = 0x024;

/// STATUS: the device is ready for register access (always set).
pub const STATUS_READY: u32 = 1 << 0;
/// STATUS: the copy engine has posted or in-flight descriptors.
pub const STATUS_CE_BUSY: u32 = 1 << 1;
/// STATUS: the checksum engine is running.
pub const STATUS_CK_BUSY: u32 = 1 << 2;

/// CAPS: a copy engine is present.
pub const CAPS_COPY_ENGINE: u32 = 1 << 0;
/// CAPS: the checksum engine computes SHA-256.
pub const CAPS_CHECKSUM_SHA256: u32 = 1 << 1;

/// INTR: a copy descriptor with [`crate::copy::DESC_FLAG_INTERRUPT`] completed successfully.
pub const INTR_CE_DONE: u32 = 1 << 0;
/// INTR: a copy descriptor completed with an error, or the ring halted.
pub const INTR_CE_ERROR: u32 = 1 << 1;
/// INTR: the checksum engine finished successfully.
pub const INTR_CK_DONE: u32 = 1 << 2;
/// INTR: the checksum engine finished with an error.
pub const INTR_CK_ERROR: u32 = 1 << 3;
/// All defined INTR bits.
pub const INTR_ALL: u32 = INTR_CE_DONE | INTR_CE_ERROR | INTR_CK_DONE | INTR_CK_ERROR;

/// MSI-X vector of the copy engine causes.
pub const VECTOR_CE: u16 = 0;
/// MSI-X vector of the checksum engine causes.
pub const VECTOR_CK: u16 = 1;
/// MSI-X vectors the device implements (2 and 3 are reserved and never signalled).
pub const MSIX_VECTORS: u16 = 4;

pub const CE_RING_BASE_LO: u64 = 0x100;
pub const CE_RING_BASE_HI: u64 = 0x104;
pub const CE_RING_SIZE: u64 = 0x108;
pub const CE_HEAD: u64 = 0x10c;
pub const CE_TAIL: u64 = 0x110;
pub const CE_CTRL: u64 = 0x114;
pub const CE_STATUS: u64 = 0x118;
pub const CE_COMPLETED: u64 = 0x11c;
pub const CE_ERRORS: u64 = 0x120;
pub const CE_BYTES_LO: u64 = 0x128;
pub const CE_BYTES_HI: u64 = 0x12c;

/// Largest copy ring, in descriptors.
pub const CE_RING_MAX_ENTRIES: u32 = 65536;
/// Required alignment of `CE_RING_BASE`.
pub const CE_RING_ALIGN: u64 = 32;

/// CE_CTRL: engine enabled. 0→1 latches the ring and zeroes head and tail;
/// 1→0 abandons any in-flight descriptor (see [`CE_STATUS_ACTIVE`]).
pub const CE_CTRL_ENABLE: u32 = 1 << 0;

/// CE_STATUS: the engine is enabled (and the ring was valid when enabled).
pub const CE_STATUS_ENABLED: u32 = 1 << 0;
/// CE_STATUS: descriptors are posted or in flight.
pub const CE_STATUS_BUSY: u32 = 1 << 1;
/// CE_STATUS: the ring halted; the reason is in bits 15:8. Cleared by re-enabling.
pub const CE_STATUS_HALTED: u32 = 1 << 2;
/// CE_STATUS: the engine holds a descriptor and may still DMA for it (descriptor,
/// data, status word). After clearing `CE_CTRL.ENABLE`, wait for this bit to clear
/// before reusing the ring or the buffers of an abandoned descriptor.
pub const CE_STATUS_ACTIVE: u32 = 1 << 3;
/// CE_STATUS: shift of the halt reason.
pub const CE_STATUS_HALT_SHIFT: u32 = 8;

/// Halt reason: the ring base or size was invalid when the engine was enabled.
pub const CE_HALT_BAD_RING: u8 = 1;
/// Halt reason: the guest wrote a tail >= ring size.
pub const CE_HALT_BAD_TAIL: u8 = 2;
/// Halt reason: reading a descriptor from the ring failed.
pub const CE_HALT_FETCH_FAULT: u8 = 3;
/// Halt reason: writing a descriptor's status word back failed.
pub const CE_HALT_WRITEBACK_FAULT: u8 = 4;

pub const CK_OFFSET_LO: u64 = 0x200;
pub const CK_OFFSET_HI: u64 = 0x204;
pub const CK_LEN_LO: u64 = 0x208;
pub const CK_LEN_HI: u64 = 0x20c;
pub const CK_CTRL: u64 = 0x210;
pub const CK_STATUS: u64 = 0x214;
pub const CK_ALGO: u64 = 0x218;
pub const CK_BYTES_LO: u64 = 0x220;
pub const CK_BYTES_HI: u64 = 0x224;
pub const CK_DIGEST: u64 = 0x240;
/// Size of `CK_DIGEST` in bytes.
pub const CK_DIGEST_LEN: usize = 32;

/// CK_CTRL: start hashing `CK_LEN` bytes at VRAM offset `CK_OFFSET`.
pub const CK_CTRL_START: u32 = 1 << 0;

/// CK_STATUS: hashing in progress.
pub const CK_STATUS_BUSY: u32 = 1 << 0;
/// CK_STATUS: the digest in `CK_DIGEST` is valid for the last started range.
pub const CK_STATUS_DONE: u32 = 1 << 1;
/// CK_STATUS: the last run failed; the reason is in bits 15:8.
pub const CK_STATUS_ERROR: u32 = 1 << 2;
/// CK_STATUS: shift of the error code.
pub const CK_STATUS_CODE_SHIFT: u32 = 8;

/// CK error: offset + length overflows or exceeds the VRAM size.
pub const CK_ERR_RANGE: u8 = 1;
/// CK error: reading VRAM failed on the host.
pub const CK_ERR_READ: u8 = 2;

/// CK_ALGO: SHA-256 (FIPS 180-4).
pub const CK_ALGO_SHA256: u32 = 1;

/// Size of BAR0.
pub const BAR0_SIZE: u64 = p2plab_guest_abi::ids::GPU_REG_BAR_SIZE;
