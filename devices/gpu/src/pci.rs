//! PCI identity, BAR layout and capabilities of the GPU-like device.
//!
//! IDs: vendor [`VENDOR_ID`] `0x2b2b` is a lab-only ID chosen for "p2p" (it is not in the
//! pci.ids database as of 2023-04 and not assigned to p2plab by the PCI-SIG; never ship
//! it outside a lab VM). Device [`DEVICE_ID`] `0x0001`, class [`CLASS_CODE`] 0x030200
//! (display controller, 3D). The guest module `p2pgpu.ko` binds exactly this pair.
//!
//! | BAR | what | type | size |
//! |---|---|---|---|
//! | 0 | registers ([`crate::regs`]) | 64-bit, non-prefetchable, trapped | 64 KiB |
//! | 2 | "VRAM" | 64-bit, prefetchable, memfd-backed (mmapped by QEMU) | `GpuConfig::vram_size` |
//! | 4 | MSI-X table (offset 0) + PBA ([`MSIX_PBA_OFFSET`]) | 32-bit, non-prefetchable, trapped | 4 KiB |
//!
//! [`PciLayout::config_space`] turns the description into a `p2plab_pci::ConfigSpace`.
//!
//! Capabilities: Power Management, MSI-X ([`crate::regs::MSIX_VECTORS`] vectors), PCI
//! Express endpoint; extended: Resizable BAR for BAR2 (sizes from 1 MiB up to the VRAM
//! size, current = VRAM size), Device Serial Number.

use crate::regs;
use p2plab_pci::ResizableBar;

/// Lab-only vendor ID (see the module docs; defined in `p2plab-guest-abi`, where the
/// guest runner finds the device by it).
pub const VENDOR_ID: u16 = p2plab_guest_abi::ids::VENDOR_ID;
/// The GPU-like device.
pub const DEVICE_ID: u16 = p2plab_guest_abi::ids::GPU_DEVICE_ID;
/// Subsystem vendor (same lab-only ID).
pub const SUBSYSTEM_VENDOR_ID: u16 = VENDOR_ID;
/// Subsystem ID.
pub const SUBSYSTEM_ID: u16 = 0x0001;
/// Revision ID.
pub const REVISION_ID: u8 = 0x01;
/// Class code: base 0x03 (display), sub 0x02 (3D controller), prog-if 0.
pub const CLASS_CODE: u32 = p2plab_guest_abi::ids::GPU_CLASS_CODE;

/// Size of BAR4 (MSI-X table and PBA).
pub const MSIX_BAR_SIZE: u64 = 4096;
/// Offset of the MSI-X table in BAR4.
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// Offset of the MSI-X Pending Bit Array in BAR4.
pub const MSIX_PBA_OFFSET: u32 = 0x800;

/// Smallest VRAM size: the smallest Resizable BAR size (1 MiB).
pub const MIN_VRAM_SIZE: u64 = 1 << 20;
/// Largest VRAM size: the largest size the Resizable BAR capability register can
/// advertise without the extended size bits (2^47 bytes = 128 TiB).
pub const MAX_VRAM_SIZE: u64 = 1 << 47;

pub use p2plab_pci::{BarLayout, PciLayout};

/// Resizable BAR size mask for a VRAM of `vram_size` bytes: every power of two from
/// 1 MiB up to `vram_size` (bit n = 2^(n+20) bytes, n <= 27).
pub fn rebar_sizes(vram_size: u64) -> u64 {
    (0..=27u32)
        .filter(|n| 1u64.checked_shl(n + 20).is_some_and(|s| s <= vram_size))
        .fold(0, |m, n| m | (1 << n))
}

/// The PCI description of a device with `vram_size` bytes of VRAM and serial `dsn`.
pub fn layout(vram_size: u64, dsn: u64) -> PciLayout {
    PciLayout {
        vendor: VENDOR_ID,
        device: DEVICE_ID,
        subsystem_vendor: SUBSYSTEM_VENDOR_ID,
        subsystem: SUBSYSTEM_ID,
        revision: REVISION_ID,
        class: CLASS_CODE,
        bars: vec![
            BarLayout {
                index: crate::REG_BAR,
                size: regs::BAR0_SIZE,
                is_64bit: true,
                prefetchable: false,
                mmappable: false,
            },
            BarLayout {
                index: crate::VRAM_BAR,
                size: vram_size,
                is_64bit: true,
                prefetchable: true,
                mmappable: true,
            },
            BarLayout {
                index: crate::MSIX_BAR,
                size: MSIX_BAR_SIZE,
                is_64bit: false,
                prefetchable: false,
                mmappable: false,
            },
        ],
        msix_vectors: regs::MSIX_VECTORS,
        msix_bar: crate::MSIX_BAR,
        msix_table_offset: MSIX_TABLE_OFFSET,
        msix_pba_offset: MSIX_PBA_OFFSET,
        dsn,
        interrupt_pin: 1,
        rebar: Some(ResizableBar {
            bar: crate::VRAM_BAR,
            sizes: rebar_sizes(vram_size),
        }),
    }
}
