//! The raw register image: values, writable-bits mask and RW1C mask, byte by byte.
//!
//! A guest byte write becomes `(old & !wmask) | (new & wmask)`, then every bit set in both
//! `new` and `w1c` is cleared. Offsets here come from the builder and the capability
//! modules, never from the guest: the guest-facing bounds checks live in `ConfigSpace`.

use crate::regs::PCIE_CONFIG_SPACE_SIZE;

/// Values and masks of the whole 4 KiB configuration space.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Registers {
    value: Box<[u8; PCIE_CONFIG_SPACE_SIZE]>,
    wmask: Box<[u8; PCIE_CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; PCIE_CONFIG_SPACE_SIZE]>,
}

impl Registers {
    pub(crate) fn new() -> Self {
        Self {
            value: Box::new([0; PCIE_CONFIG_SPACE_SIZE]),
            wmask: Box::new([0; PCIE_CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; PCIE_CONFIG_SPACE_SIZE]),
        }
    }

    pub(crate) fn byte(&self, offset: usize) -> u8 {
        self.value[offset]
    }

    pub(crate) fn u16(&self, offset: usize) -> u16 {
        u16::from_le_bytes([self.value[offset], self.value[offset + 1]])
    }

    pub(crate) fn u32(&self, offset: usize) -> u32 {
        let b = &self.value[offset..offset + 4];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Privileged (device-side) store: ignores both masks.
    pub(crate) fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        self.value[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    pub(crate) fn set_u8(&mut self, offset: usize, v: u8) {
        self.value[offset] = v;
    }

    pub(crate) fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub(crate) fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub(crate) fn set_wmask_u8(&mut self, offset: usize, mask: u8) {
        self.wmask[offset] = mask;
    }

    pub(crate) fn set_wmask_u16(&mut self, offset: usize, mask: u16) {
        self.wmask[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    pub(crate) fn set_wmask_u32(&mut self, offset: usize, mask: u32) {
        self.wmask[offset..offset + 4].copy_from_slice(&mask.to_le_bytes());
    }

    pub(crate) fn set_w1c_u16(&mut self, offset: usize, mask: u16) {
        self.w1c[offset..offset + 2].copy_from_slice(&mask.to_le_bytes());
    }

    /// A 16-bit register: power-on value and writable bits.
    pub(crate) fn init_u16(&mut self, offset: usize, value: u16, wmask: u16) {
        self.set_u16(offset, value);
        self.set_wmask_u16(offset, wmask);
    }

    /// A 32-bit register: power-on value and writable bits.
    pub(crate) fn init_u32(&mut self, offset: usize, value: u32, wmask: u32) {
        self.set_u32(offset, value);
        self.set_wmask_u32(offset, wmask);
    }

    pub(crate) fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.copy_from_slice(&self.value[offset..offset + buf.len()]);
    }

    /// A guest byte write through the masks.
    pub(crate) fn guest_write_byte(&mut self, offset: usize, data: u8) {
        let old = self.value[offset];
        let wmask = self.wmask[offset];
        let merged = (old & !wmask) | (data & wmask);
        self.value[offset] = merged & !(data & self.w1c[offset]);
    }
}
