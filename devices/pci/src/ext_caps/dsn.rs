//! Device Serial Number extended capability (PCIe Base 6.0 §7.9.3): a read-only EUI-64.

use super::{header, PCI_EXT_CAP_ID_DSN};
use crate::config::registers::Registers;

/// Serial Number Register, lower dword.
pub const PCI_DSN_LOWER: usize = 4;
/// Serial Number Register, upper dword.
pub const PCI_DSN_UPPER: usize = 8;
/// Size of the capability structure.
pub const PCI_EXT_CAP_DSN_SIZEOF: usize = 12;

/// Installs the capability at `offset` (next pointer left 0).
pub(crate) fn install(regs: &mut Registers, offset: usize, serial: u64) {
    regs.set_u32(offset, header(PCI_EXT_CAP_ID_DSN, 1, 0));
    regs.set_u32(offset + PCI_DSN_LOWER, serial as u32);
    regs.set_u32(offset + PCI_DSN_UPPER, (serial >> 32) as u32);
}
