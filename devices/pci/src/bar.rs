//! Memory Base Address Registers (PCI Local Bus 3.0 §6.2.5.1, PCIe Base 6.0 §7.5.1.2.1).
//!
//! A BAR is modelled with the generic writable-bits mask: the address bits at and above
//! the BAR size are writable, the size bits below and the type bits are read-only. Writing
//! all-ones therefore reads back `!(size - 1) | type bits`, which is exactly the sizing
//! pattern software expects, for the low dword and (64-bit BARs) the upper dword.

use crate::config::registers::Registers;
use crate::regs::{
    PCI_BASE_ADDRESS_0, PCI_BASE_ADDRESS_MEM_MASK, PCI_BASE_ADDRESS_MEM_PREFETCH,
    PCI_BASE_ADDRESS_MEM_TYPE_64,
};

/// Smallest memory BAR the spec allows (PCI Local Bus 3.0 §6.2.5.1).
pub const BAR_MIN_SIZE: u64 = 16;
/// Largest 32-bit memory BAR (half of the 32-bit address space).
pub const BAR32_MAX_SIZE: u64 = 1 << 31;
/// Largest 64-bit memory BAR this model accepts.
pub const BAR64_MAX_SIZE: u64 = 1 << 63;

/// Memory BAR decoder width.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// 32-bit memory BAR (type 00b): one register.
    Mem32,
    /// 64-bit memory BAR (type 10b): this register and the next one (upper dword).
    Mem64,
}

/// How a BAR is declared by the device model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BarDef {
    /// Size in bytes: a power of two, at least [`BAR_MIN_SIZE`].
    pub size: u64,
    /// 32- or 64-bit decoder.
    pub kind: BarKind,
    /// Prefetchable (no read side effects; bit 3).
    pub prefetchable: bool,
}

/// A BAR as the device model sees it now (size may have changed through Resizable BAR).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BarInfo {
    /// Current size in bytes.
    pub size: u64,
    /// 32- or 64-bit decoder.
    pub kind: BarKind,
    /// Prefetchable bit.
    pub prefetchable: bool,
    /// The programmed base address, `None` while unset or holding a sizing pattern.
    pub address: Option<u64>,
}

impl BarDef {
    /// Number of BAR registers this BAR occupies (2 for a 64-bit BAR).
    pub fn registers(&self) -> usize {
        match self.kind {
            BarKind::Mem32 => 1,
            BarKind::Mem64 => 2,
        }
    }

    /// The read-only type bits of the low dword.
    pub(crate) fn type_bits(&self) -> u32 {
        let width = match self.kind {
            BarKind::Mem32 => 0,
            BarKind::Mem64 => PCI_BASE_ADDRESS_MEM_TYPE_64,
        };
        let prefetch = if self.prefetchable {
            PCI_BASE_ADDRESS_MEM_PREFETCH
        } else {
            0
        };
        width | prefetch
    }
}

/// Offset of BAR register `index` in the header.
pub(crate) fn bar_offset(index: usize) -> usize {
    PCI_BASE_ADDRESS_0 + 4 * index
}

/// Writable address bits for a BAR of `size` bytes (64-bit view).
fn address_mask(size: u64) -> u64 {
    !(size.wrapping_sub(1))
}

/// Installs BAR `index` at power-on: type bits, address 0, sizing masks.
pub(crate) fn install(regs: &mut Registers, index: usize, def: &BarDef) {
    regs.set_u32(bar_offset(index), def.type_bits());
    if def.kind == BarKind::Mem64 {
        regs.set_u32(bar_offset(index + 1), 0);
    }
    set_size(regs, index, def);
}

/// Reprograms the sizing masks of BAR `index` for `def.size` and drops address bits that
/// fall below the new size (a Resizable BAR write, PCIe Base 6.0 §7.8.6).
pub(crate) fn set_size(regs: &mut Registers, index: usize, def: &BarDef) {
    let mask = address_mask(def.size);
    let low_mask = (mask as u32) & PCI_BASE_ADDRESS_MEM_MASK;
    regs.set_wmask_u32(bar_offset(index), low_mask);
    let low = regs.u32(bar_offset(index));
    regs.set_u32(bar_offset(index), (low & low_mask) | def.type_bits());
    if def.kind == BarKind::Mem64 {
        let high_mask = (mask >> 32) as u32;
        regs.set_wmask_u32(bar_offset(index + 1), high_mask);
        let high = regs.u32(bar_offset(index + 1));
        regs.set_u32(bar_offset(index + 1), high & high_mask);
    }
}

/// The address bits currently held by BAR `index` (both dwords for a 64-bit BAR).
pub(crate) fn raw_address(regs: &Registers, index: usize, def: &BarDef) -> u64 {
    let low = u64::from(regs.u32(bar_offset(index)) & PCI_BASE_ADDRESS_MEM_MASK);
    match def.kind {
        BarKind::Mem32 => low,
        BarKind::Mem64 => low | (u64::from(regs.u32(bar_offset(index + 1))) << 32),
    }
}
