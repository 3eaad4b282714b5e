//! PCI Express extended capabilities (PCIe Base 6.0 §7.6): the list header and the two
//! capabilities p2plab devices carry, Device Serial Number and Resizable BAR.

pub mod dsn;
pub mod rebar;

use crate::config::registers::Registers;

/// Capability ID: Device Serial Number.
pub const PCI_EXT_CAP_ID_DSN: u16 = 0x0003;
/// Capability ID: Resizable BAR.
pub const PCI_EXT_CAP_ID_REBAR: u16 = 0x0015;

/// Capability ID field of an extended capability header.
pub fn ext_cap_id(header: u32) -> u16 {
    (header & 0xffff) as u16
}

/// Capability Version field of an extended capability header.
pub fn ext_cap_version(header: u32) -> u8 {
    ((header >> 16) & 0xf) as u8
}

/// Next Capability Offset field of an extended capability header.
pub fn ext_cap_next(header: u32) -> usize {
    ((header >> 20) & 0xffc) as usize
}

/// Builds an extended capability header.
pub(crate) fn header(id: u16, version: u8, next: usize) -> u32 {
    u32::from(id) | (u32::from(version & 0xf) << 16) | (((next & 0xffc) as u32) << 20)
}

/// Sets the Next Capability Offset of the header at `offset`.
pub(crate) fn set_next(regs: &mut Registers, offset: usize, next: usize) {
    let h = regs.u32(offset);
    regs.set_u32(offset, header(ext_cap_id(h), ext_cap_version(h), next));
}
