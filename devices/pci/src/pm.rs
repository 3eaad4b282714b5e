//! PCI Power Management capability (PCI Bus Power Management Interface 1.2, PCIe Base 6.0
//! §7.5.2).
//!
//! Only D0 and D3hot are supported. PMCSR.PowerState is writable; a write of the optional
//! D1/D2 states is discarded (§7.5.2.2). No_Soft_Reset is set: a D3hot→D0 transition keeps
//! the function's state, so neither Linux nor QEMU treats PM as a reset method.

use crate::config::registers::Registers;
use crate::regs::PCI_CAP_ID_PM;

/// Power Management Capabilities register (PMC, 16 bits, RO).
pub const PCI_PM_PMC: usize = 2;
/// Power Management Control/Status register (PMCSR, 16 bits).
pub const PCI_PM_CTRL: usize = 4;
/// PMCSR_BSE bridge extensions (8 bits, RO 0).
pub const PCI_PM_PPB_EXTENSIONS: usize = 6;
/// Data register (8 bits, RO 0).
pub const PCI_PM_DATA_REGISTER: usize = 7;
/// Size of the capability structure.
pub const PCI_PM_SIZEOF: usize = 8;

/// PMC: version field mask.
pub const PCI_PM_CAP_VER_MASK: u16 = 0x0007;
/// PMC version 3: compliant with PCI PM 1.2.
pub const PCI_PM_CAP_VER_1_2: u16 = 0x0003;
/// PMCSR: PowerState field (D0..D3hot).
pub const PCI_PM_CTRL_STATE_MASK: u16 = 0x0003;
/// PMCSR: No_Soft_Reset (RO): D3hot→D0 keeps the function's state.
pub const PCI_PM_CTRL_NO_SOFT_RESET: u16 = 0x0008;
/// PMCSR: PME_En.
pub const PCI_PM_CTRL_PME_ENABLE: u16 = 0x0100;
/// PMCSR: PME_Status (RW1C when PME is supported).
pub const PCI_PM_CTRL_PME_STATUS: u16 = 0x8000;

/// A device power state as held in PMCSR.PowerState.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PowerState {
    /// Fully on.
    D0,
    /// Software-visible low-power state; only config space responds.
    D3Hot,
}

impl PowerState {
    /// The PMCSR.PowerState encoding.
    pub fn bits(self) -> u16 {
        match self {
            Self::D0 => 0,
            Self::D3Hot => 3,
        }
    }

    /// Decodes a supported PowerState value (D1/D2 are not supported).
    pub fn from_bits(bits: u16) -> Option<Self> {
        match bits & PCI_PM_CTRL_STATE_MASK {
            0 => Some(Self::D0),
            3 => Some(Self::D3Hot),
            _ => None,
        }
    }
}

/// Installs the capability at `offset` (next pointer left 0).
pub(crate) fn install(regs: &mut Registers, offset: usize) {
    regs.set_u8(offset, PCI_CAP_ID_PM);
    // PME not supported (PME_Support = 0), no D1/D2, no aux current.
    regs.init_u16(offset + PCI_PM_PMC, PCI_PM_CAP_VER_1_2, 0);
    regs.init_u16(
        offset + PCI_PM_CTRL,
        PCI_PM_CTRL_NO_SOFT_RESET | PowerState::D0.bits(),
        PCI_PM_CTRL_STATE_MASK,
    );
}

/// The PowerState field after a guest write; discards unsupported D1/D2 requests.
pub(crate) fn after_write(regs: &mut Registers, offset: usize, old_pmcsr: u16) {
    let pmcsr = regs.u16(offset + PCI_PM_CTRL);
    if PowerState::from_bits(pmcsr).is_none() {
        let kept = (pmcsr & !PCI_PM_CTRL_STATE_MASK) | (old_pmcsr & PCI_PM_CTRL_STATE_MASK);
        regs.set_u16(offset + PCI_PM_CTRL, kept);
    }
}

/// Current power state.
pub(crate) fn state(regs: &Registers, offset: usize) -> PowerState {
    PowerState::from_bits(regs.u16(offset + PCI_PM_CTRL)).unwrap_or(PowerState::D0)
}
