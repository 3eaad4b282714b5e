//! MSI-X capability (PCIe Base 6.0 §7.7.2).
//!
//! Only the capability lives in config space. The vector table and the PBA live in a
//! memory BAR that the device must not let the client mmap (QEMU emulates the table and
//! forwards PBA reads to the server).

use std::ops::Range;

use crate::config::registers::Registers;
use crate::regs::PCI_CAP_ID_MSIX;

/// Message Control (16 bits).
pub const PCI_MSIX_FLAGS: usize = 2;
/// Table Offset/Table BIR (32 bits, RO).
pub const PCI_MSIX_TABLE: usize = 4;
/// PBA Offset/PBA BIR (32 bits, RO).
pub const PCI_MSIX_PBA: usize = 8;
/// Size of the capability structure.
pub const PCI_MSIX_SIZEOF: usize = 12;

/// Message Control: Table Size field (N - 1, RO).
pub const PCI_MSIX_FLAGS_QSIZE: u16 = 0x07ff;
/// Message Control: Function Mask.
pub const PCI_MSIX_FLAGS_MASKALL: u16 = 0x4000;
/// Message Control: MSI-X Enable.
pub const PCI_MSIX_FLAGS_ENABLE: u16 = 0x8000;
/// Table/PBA register: BAR indicator (BIR) field.
pub const PCI_MSIX_FLAGS_BIRMASK: u32 = 0x7;

/// Size of one MSI-X table entry (address lo/hi, data, vector control).
pub const PCI_MSIX_ENTRY_SIZE: u64 = 16;
/// Largest number of vectors the Table Size field can express.
pub const MSIX_MAX_VECTORS: u16 = 2048;

/// Where the MSI-X structures live, as declared by the device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MsixInfo {
    /// Number of vectors (1..=2048).
    pub vectors: u16,
    /// BAR holding the vector table.
    pub table_bar: usize,
    /// Offset of the table in that BAR (8-byte aligned).
    pub table_offset: u64,
    /// BAR holding the Pending Bit Array.
    pub pba_bar: usize,
    /// Offset of the PBA in that BAR (8-byte aligned).
    pub pba_offset: u64,
}

impl MsixInfo {
    /// Bytes of the vector table within its BAR.
    pub fn table_range(&self) -> Range<u64> {
        self.table_offset..self.table_offset + u64::from(self.vectors) * PCI_MSIX_ENTRY_SIZE
    }

    /// Bytes of the PBA within its BAR (one bit per vector, in whole qwords).
    pub fn pba_range(&self) -> Range<u64> {
        let qwords = u64::from(self.vectors).div_ceil(64);
        self.pba_offset..self.pba_offset + qwords * 8
    }
}

/// Installs the capability at `offset` (next pointer left 0). `info` is validated.
pub(crate) fn install(regs: &mut Registers, offset: usize, info: &MsixInfo) {
    regs.set_u8(offset, PCI_CAP_ID_MSIX);
    regs.init_u16(
        offset + PCI_MSIX_FLAGS,
        (info.vectors - 1) & PCI_MSIX_FLAGS_QSIZE,
        PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL,
    );
    // The builder checked that the offsets fit in 32 bits and the BIRs in 3.
    regs.set_u32(
        offset + PCI_MSIX_TABLE,
        info.table_offset as u32 | info.table_bar as u32,
    );
    regs.set_u32(
        offset + PCI_MSIX_PBA,
        info.pba_offset as u32 | info.pba_bar as u32,
    );
}

/// Message Control.
pub(crate) fn control(regs: &Registers, offset: usize) -> u16 {
    regs.u16(offset + PCI_MSIX_FLAGS)
}
