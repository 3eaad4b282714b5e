//! PCI identity, BAR layout and capabilities of the NVMe controller.
//!
//! IDs: vendor [`VENDOR_ID`] `0x2b2b` is p2plab's lab-only ID (see `p2plab-gpu`'s
//! `pci.rs`; not assigned by the PCI-SIG, never ship it outside a lab VM); device
//! [`DEVICE_ID`] `0x0002`; class [`CLASS_CODE`] 0x010802 (mass storage, NVM, NVMe I/O
//! controller), which is what `nvme.ko` binds to. A distinct vendor ID also keeps
//! Linux's QEMU-NVMe quirks (1b36:0010) away.
//!
//! | BAR | what | type | size |
//! |---|---|---|---|
//! | 0 | registers + doorbells | 64-bit, non-prefetchable, trapped | 16 KiB |
//! | 2 | Controller Memory Buffer | 64-bit, prefetchable, memfd-backed (mmapped) | `cmb_size` (power of two >= 2 MiB) |
//! | 4 | MSI-X table (offset 0) + PBA ([`MSIX_PBA_OFFSET`]) | 32-bit, non-prefetchable, trapped | 4 KiB |
//!
//! Capabilities: Power Management, MSI-X (one vector per queue pair), PCI Express
//! endpoint; extended: Device Serial Number. INTx pin A as a fallback.

/// BAR of the registers and doorbells.
pub const REG_BAR: usize = 0;
/// BAR of the Controller Memory Buffer.
pub const CMB_BAR: usize = 2;
/// BAR of the MSI-X table and PBA.
pub const MSIX_BAR: usize = 4;
/// Most I/O queue pairs a controller can be configured with (MSI-X table room).
pub const MAX_IO_QUEUES: u16 = 127;

/// Lab-only vendor ID (shared with the GPU-like device; defined in `p2plab-guest-abi`,
/// where the guest runner finds it too).
pub const VENDOR_ID: u16 = p2plab_guest_abi::ids::VENDOR_ID;
/// The NVMe controller.
pub const DEVICE_ID: u16 = p2plab_guest_abi::ids::NVME_DEVICE_ID;
/// Subsystem vendor (same lab-only ID).
pub const SUBSYSTEM_VENDOR_ID: u16 = VENDOR_ID;
/// Subsystem ID.
pub const SUBSYSTEM_ID: u16 = 0x0002;
/// Revision ID.
pub const REVISION_ID: u8 = 0x01;
/// Class code: base 0x01 (mass storage), sub 0x08 (NVM), prog-if 0x02 (NVMe).
pub const CLASS_CODE: u32 = p2plab_guest_abi::ids::NVME_CLASS_CODE;

/// Size of BAR0.
pub const REG_BAR_SIZE: u64 = p2plab_guest_abi::ids::NVME_REG_BAR_SIZE;
/// Size of BAR4 (MSI-X table and PBA).
pub const MSIX_BAR_SIZE: u64 = 4096;
/// Offset of the MSI-X table in BAR4.
pub const MSIX_TABLE_OFFSET: u32 = 0;
/// Offset of the MSI-X Pending Bit Array in BAR4 (room for 128 table entries before).
pub const MSIX_PBA_OFFSET: u32 = 0x800;

pub use p2plab_pci::{BarLayout, PciLayout};

/// The PCI description of a controller.
pub fn layout(cmb_size: u64, msix_vectors: u16, serial: &str) -> PciLayout {
    let mut bars = vec![BarLayout {
        index: REG_BAR,
        size: REG_BAR_SIZE,
        is_64bit: true,
        prefetchable: false,
        mmappable: false,
    }];
    if cmb_size != 0 {
        bars.push(BarLayout {
            index: CMB_BAR,
            size: cmb_size,
            is_64bit: true,
            prefetchable: true,
            mmappable: true,
        });
    }
    bars.push(BarLayout {
        index: MSIX_BAR,
        size: MSIX_BAR_SIZE,
        is_64bit: false,
        prefetchable: false,
        mmappable: false,
    });
    let dsn = p2plab_pci::dsn_from_str(serial);
    PciLayout {
        vendor: VENDOR_ID,
        device: DEVICE_ID,
        subsystem_vendor: SUBSYSTEM_VENDOR_ID,
        subsystem: SUBSYSTEM_ID,
        revision: REVISION_ID,
        class: CLASS_CODE,
        bars,
        msix_vectors,
        msix_bar: MSIX_BAR,
        msix_table_offset: MSIX_TABLE_OFFSET,
        msix_pba_offset: MSIX_PBA_OFFSET,
        dsn,
        interrupt_pin: 1,
        rebar: None,
    }
}
