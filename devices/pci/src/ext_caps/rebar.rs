//! Resizable BAR extended capability (PCIe Base 6.0 §7.8.6).
//!
//! One entry (capability + control register) per resizable BAR. Sizes are named by their
//! encoding `n` = 2^(n+20) bytes: bits 0..=27 of a sizes mask appear in the capability
//! register bits 4..=31 (1 MiB … 128 TiB), bits 28..=43 in the control register bits
//! 16..=31 (256 TiB … 8 EiB). Only the BAR Size field is writable; a write of a supported
//! size resizes the BAR (and its sizing masks), any other value is ignored.

use super::{header, PCI_EXT_CAP_ID_REBAR};
use crate::config::registers::Registers;

/// Resizable BAR Capability register of entry 0 (entry `i` at `+ 8 * i`).
pub const PCI_REBAR_CAP: usize = 4;
/// Resizable BAR Control register of entry 0 (entry `i` at `+ 8 * i`).
pub const PCI_REBAR_CTRL: usize = 8;
/// Capability register: supported sizes 1 MiB … 128 TiB.
pub const PCI_REBAR_CAP_SIZES: u32 = 0xffff_fff0;
/// Control register: BAR Index field.
pub const PCI_REBAR_CTRL_BAR_IDX: u32 = 0x0000_0007;
/// Control register: Number of Resizable BARs field (entry 0 only).
pub const PCI_REBAR_CTRL_NBAR_MASK: u32 = 0x0000_00e0;
/// Shift of the Number of Resizable BARs field.
pub const PCI_REBAR_CTRL_NBAR_SHIFT: u32 = 5;
/// Control register: BAR Size field.
pub const PCI_REBAR_CTRL_BAR_SIZE: u32 = 0x0000_3f00;
/// Shift of the BAR Size field.
pub const PCI_REBAR_CTRL_BAR_SHIFT: u32 = 8;
/// Control register: supported sizes 256 TiB … 8 EiB.
pub const PCI_REBAR_CTRL_SIZES: u32 = 0xffff_0000;
/// Smallest resizable size (encoding 0).
pub const REBAR_MIN_SIZE: u64 = 1 << 20;
/// Highest size encoding a sizes mask may use (2^63 bytes).
pub const REBAR_MAX_ENCODING: u32 = 43;

/// Size of a capability with `entries` resizable BARs.
pub fn sizeof(entries: usize) -> usize {
    4 + 8 * entries
}

/// The size encoding of `size` bytes, if `size` is a power of two >= 1 MiB.
pub fn size_encoding(size: u64) -> Option<u32> {
    (size.is_power_of_two() && size >= REBAR_MIN_SIZE).then(|| size.trailing_zeros() - 20)
}

/// Bytes named by size encoding `n`.
pub fn encoding_size(n: u32) -> u64 {
    REBAR_MIN_SIZE << n
}

/// One resizable BAR as declared by the device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RebarEntry {
    pub(crate) bar: usize,
    pub(crate) sizes: u64,
}

/// Installs the capability at `offset` (next pointer left 0) with each entry's current
/// size encoding from `current`.
pub(crate) fn install(regs: &mut Registers, offset: usize, entries: &[(RebarEntry, u32)]) {
    regs.set_u32(offset, header(PCI_EXT_CAP_ID_REBAR, 1, 0));
    let nbar = entries.len() as u32;
    for (i, (entry, current)) in entries.iter().enumerate() {
        let cap = ((entry.sizes & 0x0fff_ffff) as u32) << 4;
        let high = ((entry.sizes >> 28) & 0xffff) as u32;
        let nbar_field = if i == 0 {
            nbar << PCI_REBAR_CTRL_NBAR_SHIFT
        } else {
            0
        };
        let ctrl = (high << 16)
            | (current << PCI_REBAR_CTRL_BAR_SHIFT)
            | nbar_field
            | (entry.bar as u32 & PCI_REBAR_CTRL_BAR_IDX);
        regs.init_u32(offset + PCI_REBAR_CAP + 8 * i, cap, 0);
        // BAR Size is applied by `ConfigSpace::write`, not through the mask.
        regs.init_u32(offset + PCI_REBAR_CTRL + 8 * i, ctrl, 0);
    }
}

/// Stores a new BAR Size encoding in entry `i`'s control register.
pub(crate) fn set_current(regs: &mut Registers, offset: usize, i: usize, encoding: u32) {
    let at = offset + PCI_REBAR_CTRL + 8 * i;
    let ctrl = regs.u32(at) & !PCI_REBAR_CTRL_BAR_SIZE;
    regs.set_u32(
        at,
        ctrl | ((encoding << PCI_REBAR_CTRL_BAR_SHIFT) & PCI_REBAR_CTRL_BAR_SIZE),
    );
}
