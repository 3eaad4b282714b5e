//! Declaring a function's config space and checking the declaration.
//!
//! Capabilities are laid out in a fixed order: PM, MSI-X, PCI Express from 0x40 (each on
//! a 16-byte boundary), then Device Serial Number and Resizable BAR from 0x100.

use thiserror::Error;

use super::registers::Registers;
use super::{ConfigSpace, Layout, PciIds};
use crate::bar::{self, BarDef, BarKind, BAR32_MAX_SIZE, BAR64_MAX_SIZE, BAR_MIN_SIZE};
use crate::ext_caps::rebar::{self, RebarEntry, REBAR_MAX_ENCODING};
use crate::ext_caps::{self, dsn};
use crate::msix::{self, MsixInfo, MSIX_MAX_VECTORS, PCI_MSIX_FLAGS_BIRMASK};
use crate::pcie::{self, PcieLink, LINK_WIDTHS, PCI_CAP_EXP_ENDPOINT_SIZEOF_V2};
use crate::pm::{self, PCI_PM_SIZEOF};
use crate::regs::*;

/// First offset available to the capability list.
const CAP_LIST_START: usize = 0x40;
/// Alignment of each standard and extended capability.
const CAP_ALIGN: usize = 0x10;

/// Why a declaration cannot be built.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The class code does not fit in 24 bits.
    #[error("class code {class:#x} does not fit in 24 bits")]
    ClassTooWide {
        /// The rejected class code.
        class: u32,
    },
    /// The interrupt pin is not 0 (none) or 1..=4 (INTA#..INTD#).
    #[error("interrupt pin {pin} is not 0..=4")]
    InterruptPin {
        /// The rejected pin.
        pin: u8,
    },
    /// BAR index is not 0..=5.
    #[error("BAR {bar} does not exist (0..=5)")]
    BarIndex {
        /// The rejected index.
        bar: usize,
    },
    /// Two BAR declarations use the same register (a 64-bit BAR uses two).
    #[error("BAR {bar} overlaps a register already used by another BAR")]
    BarOverlap {
        /// The BAR whose registers collide.
        bar: usize,
    },
    /// A 64-bit BAR needs the next register for its upper dword.
    #[error("64-bit BAR {bar} needs register {bar}+1 for its upper dword")]
    Bar64AtLastIndex {
        /// The rejected index.
        bar: usize,
    },
    /// The BAR size is not a power of two.
    #[error("BAR {bar} size {size:#x} is not a power of two")]
    BarSizeNotPowerOfTwo {
        /// The BAR.
        bar: usize,
        /// The rejected size.
        size: u64,
    },
    /// The BAR size is below the 16-byte minimum or above its decoder's maximum.
    #[error("BAR {bar} size {size:#x} is outside {min:#x}..={max:#x}")]
    BarSizeRange {
        /// The BAR.
        bar: usize,
        /// The rejected size.
        size: u64,
        /// Smallest allowed size.
        min: u64,
        /// Largest allowed size for this BAR kind.
        max: u64,
    },
    /// MSI-X vector count is not 1..=2048.
    #[error("MSI-X vector count {vectors} is not 1..=2048")]
    MsixVectors {
        /// The rejected count.
        vectors: u16,
    },
    /// The MSI-X table or PBA names a BAR that is not implemented.
    #[error("MSI-X {structure} is in BAR {bar}, which is not implemented")]
    MsixBarMissing {
        /// "table" or "PBA".
        structure: &'static str,
        /// The missing BAR.
        bar: usize,
    },
    /// The MSI-X table or PBA offset is not 8-byte aligned.
    #[error("MSI-X {structure} offset {offset:#x} is not 8-byte aligned")]
    MsixMisaligned {
        /// "table" or "PBA".
        structure: &'static str,
        /// The rejected offset.
        offset: u64,
    },
    /// The MSI-X table or PBA does not fit in its BAR (or in a 32-bit offset).
    #[error("MSI-X {structure} at {offset:#x} (+{len:#x}) does not fit in BAR {bar}")]
    MsixOutsideBar {
        /// "table" or "PBA".
        structure: &'static str,
        /// The BAR.
        bar: usize,
        /// The structure's offset.
        offset: u64,
        /// The structure's length.
        len: u64,
    },
    /// The MSI-X table and PBA overlap.
    #[error("MSI-X table and PBA overlap in BAR {bar}")]
    MsixTablePbaOverlap {
        /// The shared BAR.
        bar: usize,
    },
    /// The link width is not one the Link Capabilities field can name.
    #[error("PCIe link width x{width} is not one of 1, 2, 4, 8, 12, 16, 32")]
    LinkWidth {
        /// The rejected width.
        width: u8,
    },
    /// Extended capabilities need the PCI Express capability (no extended space without).
    #[error("extended capabilities need pcie_endpoint()")]
    ExtCapsWithoutPcie,
    /// A Resizable BAR entry names a BAR that is not implemented.
    #[error("Resizable BAR entry names BAR {bar}, which is not implemented")]
    RebarBarMissing {
        /// The missing BAR.
        bar: usize,
    },
    /// The same BAR was declared resizable twice.
    #[error("BAR {bar} is declared resizable twice")]
    RebarDuplicate {
        /// The BAR.
        bar: usize,
    },
    /// The supported-sizes mask is empty, uses bits above 43 (2^63 bytes), or names sizes
    /// a 32-bit BAR cannot decode.
    #[error("Resizable BAR {bar} sizes mask {sizes:#x} is empty or out of range")]
    RebarSizes {
        /// The BAR.
        bar: usize,
        /// The rejected mask.
        sizes: u64,
    },
    /// The BAR's declared (power-on) size is not among its supported sizes.
    #[error("BAR {bar} size {size:#x} is not in its Resizable BAR sizes mask")]
    RebarCurrentSize {
        /// The BAR.
        bar: usize,
        /// Its declared size.
        size: u64,
    },
}

/// Collects a function's declaration; [`build`](Self::build) checks it.
#[derive(Clone, Debug)]
pub struct ConfigSpaceBuilder {
    ids: PciIds,
    bars: Vec<(usize, BarDef)>,
    msix: Option<MsixInfo>,
    pm: bool,
    pcie: Option<PcieLink>,
    dsn: Option<u64>,
    rebar: Vec<RebarEntry>,
    interrupt_pin: u8,
}

impl ConfigSpaceBuilder {
    pub(crate) fn new(ids: PciIds) -> Self {
        Self {
            ids,
            bars: Vec::new(),
            msix: None,
            pm: false,
            pcie: None,
            dsn: None,
            rebar: Vec::new(),
            interrupt_pin: 0,
        }
    }

    /// Declares memory BAR `index` (a 64-bit BAR also takes `index + 1`).
    pub fn bar(mut self, index: usize, def: BarDef) -> Self {
        self.bars.push((index, def));
        self
    }

    /// Adds the MSI-X capability: `vectors` entries, table and PBA at the given BAR offsets.
    pub fn msix(
        mut self,
        vectors: u16,
        table_bar: usize,
        table_offset: u64,
        pba_bar: usize,
        pba_offset: u64,
    ) -> Self {
        self.msix = Some(MsixInfo {
            vectors,
            table_bar,
            table_offset,
            pba_bar,
            pba_offset,
        });
        self
    }

    /// Adds the Power Management capability (D0 and D3hot, No_Soft_Reset).
    pub fn power_management(mut self) -> Self {
        self.pm = true;
        self
    }

    /// Adds the PCI Express capability (v2, Endpoint) with the default link, Gen4 x4.
    pub fn pcie_endpoint(self) -> Self {
        let link = self.pcie.unwrap_or_default();
        self.pcie_link(link)
    }

    /// Adds the PCI Express capability (v2, Endpoint) reporting `link` as trained.
    pub fn pcie_link(mut self, link: PcieLink) -> Self {
        self.pcie = Some(link);
        self
    }

    /// Adds the Device Serial Number extended capability.
    pub fn dsn(mut self, serial: u64) -> Self {
        self.dsn = Some(serial);
        self
    }

    /// Makes BAR `bar` resizable; bit n of `sizes` = 2^(n+20) bytes supported. The BAR's
    /// declared size is its power-on size and must be in the mask.
    pub fn resizable_bar(mut self, bar: usize, sizes: u64) -> Self {
        self.rebar.push(RebarEntry { bar, sizes });
        self
    }

    /// Sets the Interrupt Pin (0 = no INTx, 1 = INTA#).
    pub fn interrupt_pin(mut self, pin: u8) -> Self {
        self.interrupt_pin = pin;
        self
    }

    /// Checks the declaration and produces the power-on config space.
    pub fn build(self) -> Result<ConfigSpace, ConfigError> {
        let bars = self.check_bars()?;
        if self.ids.class > 0x00ff_ffff {
            return Err(ConfigError::ClassTooWide {
                class: self.ids.class,
            });
        }
        if self.interrupt_pin > 4 {
            return Err(ConfigError::InterruptPin {
                pin: self.interrupt_pin,
            });
        }
        if let Some(info) = &self.msix {
            check_msix(info, &bars)?;
        }
        if let Some(link) = &self.pcie {
            if !LINK_WIDTHS.contains(&link.width) {
                return Err(ConfigError::LinkWidth { width: link.width });
            }
        }
        let rebar = self.check_rebar(&bars)?;
        if (self.dsn.is_some() || !rebar.is_empty()) && self.pcie.is_none() {
            return Err(ConfigError::ExtCapsWithoutPcie);
        }

        let mut regs = Registers::new();
        self.install_header(&mut regs);
        for (index, def) in bars.iter().enumerate() {
            if let Some(def) = def {
                bar::install(&mut regs, index, def);
            }
        }
        let layout = self.install_caps(&mut regs, &rebar);
        Ok(ConfigSpace::from_parts(self.ids, regs, bars, layout))
    }

    fn check_bars(&self) -> Result<[Option<BarDef>; PCI_NUM_BARS], ConfigError> {
        let mut bars = [None; PCI_NUM_BARS];
        let mut used = [false; PCI_NUM_BARS];
        for &(index, def) in &self.bars {
            if index >= PCI_NUM_BARS {
                return Err(ConfigError::BarIndex { bar: index });
            }
            if def.kind == BarKind::Mem64 && index + 1 >= PCI_NUM_BARS {
                return Err(ConfigError::Bar64AtLastIndex { bar: index });
            }
            if !def.size.is_power_of_two() {
                return Err(ConfigError::BarSizeNotPowerOfTwo {
                    bar: index,
                    size: def.size,
                });
            }
            let max = match def.kind {
                BarKind::Mem32 => BAR32_MAX_SIZE,
                BarKind::Mem64 => BAR64_MAX_SIZE,
            };
            if def.size < BAR_MIN_SIZE || def.size > max {
                return Err(ConfigError::BarSizeRange {
                    bar: index,
                    size: def.size,
                    min: BAR_MIN_SIZE,
                    max,
                });
            }
            for slot in &mut used[index..index + def.registers()] {
                if std::mem::replace(slot, true) {
                    return Err(ConfigError::BarOverlap { bar: index });
                }
            }
            bars[index] = Some(def);
        }
        Ok(bars)
    }

    fn check_rebar(
        &self,
        bars: &[Option<BarDef>; PCI_NUM_BARS],
    ) -> Result<Vec<(RebarEntry, u32)>, ConfigError> {
        let mut entries: Vec<(RebarEntry, u32)> = Vec::new();
        for entry in &self.rebar {
            let Some(def) = bars.get(entry.bar).copied().flatten() else {
                return Err(ConfigError::RebarBarMissing { bar: entry.bar });
            };
            if entries.iter().any(|(e, _)| e.bar == entry.bar) {
                return Err(ConfigError::RebarDuplicate { bar: entry.bar });
            }
            let max_encoding = match def.kind {
                BarKind::Mem32 => rebar::size_encoding(BAR32_MAX_SIZE).unwrap_or(0),
                BarKind::Mem64 => REBAR_MAX_ENCODING,
            };
            if entry.sizes == 0 || entry.sizes >> (max_encoding + 1) != 0 {
                return Err(ConfigError::RebarSizes {
                    bar: entry.bar,
                    sizes: entry.sizes,
                });
            }
            let current = rebar::size_encoding(def.size)
                .filter(|&n| n <= REBAR_MAX_ENCODING && entry.sizes & (1u64 << n) != 0)
                .ok_or(ConfigError::RebarCurrentSize {
                    bar: entry.bar,
                    size: def.size,
                })?;
            entries.push((*entry, current));
        }
        Ok(entries)
    }

    fn install_header(&self, regs: &mut Registers) {
        let ids = &self.ids;
        regs.set_u16(PCI_VENDOR_ID, ids.vendor);
        regs.set_u16(PCI_DEVICE_ID, ids.device);
        regs.init_u16(
            PCI_COMMAND,
            0,
            PCI_COMMAND_MEMORY
                | PCI_COMMAND_MASTER
                | PCI_COMMAND_PARITY
                | PCI_COMMAND_SERR
                | PCI_COMMAND_INTX_DISABLE,
        );
        regs.set_w1c_u16(
            PCI_STATUS,
            PCI_STATUS_PARITY
                | PCI_STATUS_SIG_TARGET_ABORT
                | PCI_STATUS_REC_TARGET_ABORT
                | PCI_STATUS_REC_MASTER_ABORT
                | PCI_STATUS_SIG_SYSTEM_ERROR
                | PCI_STATUS_DETECTED_PARITY,
        );
        regs.set_u8(PCI_REVISION_ID, ids.revision);
        let class = ids.class.to_le_bytes();
        regs.set_bytes(PCI_CLASS_PROG, &class[..3]);
        regs.set_wmask_u8(PCI_CACHE_LINE_SIZE, 0xff);
        regs.set_u8(PCI_HEADER_TYPE, PCI_HEADER_TYPE_NORMAL);
        regs.set_u16(PCI_SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor);
        regs.set_u16(PCI_SUBSYSTEM_ID, ids.subsystem);
        regs.set_wmask_u8(PCI_INTERRUPT_LINE, 0xff);
        regs.set_u8(PCI_INTERRUPT_PIN, self.interrupt_pin);
    }

    fn install_caps(&self, regs: &mut Registers, rebar_entries: &[(RebarEntry, u32)]) -> Layout {
        let mut layout = Layout::default();
        let mut std_caps: Vec<usize> = Vec::new();
        let mut at = CAP_LIST_START;
        let mut place = |size: usize| {
            let here = at;
            at = (at + size).next_multiple_of(CAP_ALIGN);
            here
        };
        if self.pm {
            let off = place(PCI_PM_SIZEOF);
            pm::install(regs, off);
            layout.pm = Some(off);
            std_caps.push(off);
        }
        if let Some(info) = self.msix {
            let off = place(msix::PCI_MSIX_SIZEOF);
            msix::install(regs, off, &info);
            layout.msix = Some((off, info));
            std_caps.push(off);
        }
        if let Some(link) = self.pcie {
            let off = place(PCI_CAP_EXP_ENDPOINT_SIZEOF_V2);
            pcie::install(regs, off, &link);
            layout.pcie = Some(off);
            std_caps.push(off);
        }
        if let Some(&first) = std_caps.first() {
            regs.set_u8(PCI_CAPABILITY_LIST, first as u8);
            regs.set_u16(PCI_STATUS, regs.u16(PCI_STATUS) | PCI_STATUS_CAP_LIST);
        }
        for pair in std_caps.windows(2) {
            regs.set_u8(pair[0] + PCI_CAP_LIST_NEXT, pair[1] as u8);
        }

        let mut ext_caps: Vec<usize> = Vec::new();
        let mut at = PCI_CONFIG_SPACE_SIZE;
        let mut place = |size: usize| {
            let here = at;
            at = (at + size).next_multiple_of(CAP_ALIGN);
            here
        };
        if let Some(serial) = self.dsn {
            let off = place(dsn::PCI_EXT_CAP_DSN_SIZEOF);
            dsn::install(regs, off, serial);
            layout.dsn = Some(off);
            ext_caps.push(off);
        }
        if !rebar_entries.is_empty() {
            let off = place(rebar::sizeof(rebar_entries.len()));
            rebar::install(regs, off, rebar_entries);
            layout.rebar = Some((off, rebar_entries.iter().map(|(e, _)| *e).collect()));
            ext_caps.push(off);
        }
        for pair in ext_caps.windows(2) {
            ext_caps::set_next(regs, pair[0], pair[1]);
        }
        layout
    }
}

fn check_msix(info: &MsixInfo, bars: &[Option<BarDef>; PCI_NUM_BARS]) -> Result<(), ConfigError> {
    if info.vectors == 0 || info.vectors > MSIX_MAX_VECTORS {
        return Err(ConfigError::MsixVectors {
            vectors: info.vectors,
        });
    }
    let structures = [
        ("table", info.table_bar, info.table_range()),
        ("PBA", info.pba_bar, info.pba_range()),
    ];
    for (structure, bar, range) in &structures {
        let Some(def) = bars.get(*bar).copied().flatten() else {
            return Err(ConfigError::MsixBarMissing {
                structure,
                bar: *bar,
            });
        };
        if range.start & u64::from(PCI_MSIX_FLAGS_BIRMASK) != 0 {
            return Err(ConfigError::MsixMisaligned {
                structure,
                offset: range.start,
            });
        }
        if range.end > def.size || range.start > u64::from(u32::MAX) {
            return Err(ConfigError::MsixOutsideBar {
                structure,
                bar: *bar,
                offset: range.start,
                len: range.end - range.start,
            });
        }
    }
    let (table, pba) = (info.table_range(), info.pba_range());
    if info.table_bar == info.pba_bar && table.start < pba.end && pba.start < table.end {
        return Err(ConfigError::MsixTablePbaOverlap {
            bar: info.table_bar,
        });
    }
    Ok(())
}
