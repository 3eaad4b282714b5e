//! The configuration space: guest accesses through the masks, device-side queries.

pub mod builder;
pub(crate) mod registers;

use std::fmt;

use crate::bar::{self, BarDef, BarInfo, BarKind};
use crate::ext_caps::rebar::{self, RebarEntry, PCI_REBAR_CTRL, PCI_REBAR_CTRL_BAR_SHIFT};
use crate::ext_caps::{ext_cap_id, ext_cap_next};
use crate::msix::{self, MsixInfo, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL};
use crate::pcie::{PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR};
use crate::pm::{self, PowerState, PCI_PM_CTRL};
use crate::regs::*;
use registers::Registers;

pub use builder::{ConfigError, ConfigSpaceBuilder};

/// The identity of a function (read-only header fields).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem Vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code, 24 bits: base class << 16 | sub-class << 8 | programming interface.
    pub class: u32,
}

/// What a guest write changed, for the device glue to act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfigEvents {
    /// The Command register changed (MSE, BME, INTx Disable …).
    pub command_changed: bool,
    /// A BAR register, BAR size or BAR address (incl. sizing state) changed.
    pub bars_changed: bool,
    /// MSI-X Enable or Function Mask changed.
    pub msix_changed: bool,
    /// PMCSR.PowerState changed.
    pub pm_state_changed: bool,
    /// The guest initiated a Function Level Reset; config space has been reset already,
    /// the device model must reset its own state.
    pub flr_requested: bool,
}

/// Where the builder placed each capability.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) pm: Option<usize>,
    pub(crate) msix: Option<(usize, MsixInfo)>,
    pub(crate) pcie: Option<usize>,
    pub(crate) dsn: Option<usize>,
    pub(crate) rebar: Option<(usize, Vec<RebarEntry>)>,
}

/// State restored by [`ConfigSpace::reset`].
#[derive(Clone)]
struct PowerOn {
    regs: Registers,
    bars: [Option<BarDef>; PCI_NUM_BARS],
}

/// A 4 KiB PCI Express configuration space of a type-0 function.
///
/// Guest accesses go through [`read`](Self::read)/[`write`](Self::write) (any size and
/// alignment; out-of-range bytes read 0 and are ignored on write). The device model queries
/// the decoded state (`memory_enabled`, `bar_address`, `msix_enabled` …) and may change
/// device-owned bits through the privileged setters.
#[derive(Clone)]
pub struct ConfigSpace {
    ids: PciIds,
    regs: Registers,
    /// Current BAR definitions (sizes change through Resizable BAR); `None` for
    /// unimplemented BARs and for the upper half of a 64-bit BAR.
    bars: [Option<BarDef>; PCI_NUM_BARS],
    /// Per BAR register, one bit per byte whose last guest write was 0xff: a register
    /// whose four bits are set holds a sizing pattern, not an address.
    sizing: [u8; PCI_NUM_BARS],
    layout: Layout,
    power_on: Box<PowerOn>,
}

/// The part of a guest access that falls inside config space.
fn clip(offset: u64, len: usize) -> Option<(usize, usize)> {
    let start = usize::try_from(offset).ok()?;
    if start >= PCIE_CONFIG_SPACE_SIZE {
        return None;
    }
    let end = start.saturating_add(len).min(PCIE_CONFIG_SPACE_SIZE);
    Some((start, end))
}

/// Whether `[start, end)` touches any byte of `[reg, reg + len)`.
fn touches(start: usize, end: usize, reg: usize, len: usize) -> bool {
    start < reg + len && reg < end
}

impl ConfigSpace {
    /// Starts describing a function with identity `ids`.
    pub fn builder(ids: PciIds) -> ConfigSpaceBuilder {
        ConfigSpaceBuilder::new(ids)
    }

    pub(crate) fn from_parts(
        ids: PciIds,
        regs: Registers,
        bars: [Option<BarDef>; PCI_NUM_BARS],
        layout: Layout,
    ) -> Self {
        let power_on = Box::new(PowerOn {
            regs: regs.clone(),
            bars,
        });
        Self {
            ids,
            regs,
            bars,
            sizing: [0; PCI_NUM_BARS],
            layout,
            power_on,
        }
    }

    /// Guest read of `buf.len()` bytes at `offset`; bytes beyond 4 KiB read as 0.
    pub fn read(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        if let Some((start, end)) = clip(offset, buf.len()) {
            self.regs.read(start, &mut buf[..end - start]);
        }
    }

    /// Guest write of `data` at `offset` through the writable and RW1C masks; bytes beyond
    /// 4 KiB are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> ConfigEvents {
        let mut events = ConfigEvents::default();
        let Some((start, end)) = clip(offset, data.len()) else {
            return events;
        };
        let data = &data[..end - start];
        let before = self.clone_state();

        for (i, &byte) in data.iter().enumerate() {
            self.regs.guest_write_byte(start + i, byte);
        }
        self.track_sizing(start, data);
        if let Some(pm) = self.layout.pm {
            if touches(start, end, pm + PCI_PM_CTRL, 2) {
                pm::after_write(&mut self.regs, pm, before.pmcsr);
            }
        }
        self.apply_rebar_writes(start, data);

        if let Some(pcie) = self.layout.pcie {
            let flr_byte = pcie + PCI_EXP_DEVCTL + 1;
            if (start..end).contains(&flr_byte)
                && data[flr_byte - start] & (PCI_EXP_DEVCTL_BCR_FLR >> 8) as u8 != 0
            {
                self.reset();
                events.flr_requested = true;
            }
        }

        let after = self.clone_state();
        events.command_changed = before.command != after.command;
        events.bars_changed = before.bars != after.bars;
        events.msix_changed = before.msix_control != after.msix_control;
        events.pm_state_changed = before.pm_state != after.pm_state;
        events
    }

    /// Back to power-on values: Command, Status, every capability control register, BAR
    /// addresses (cleared) and sizes (Resizable BAR defaults), Interrupt Line.
    pub fn reset(&mut self) {
        self.regs = self.power_on.regs.clone();
        self.bars = self.power_on.bars;
        self.sizing = [0; PCI_NUM_BARS];
    }

    /// The identity the space was built with.
    pub fn ids(&self) -> PciIds {
        self.ids
    }

    /// The Command register.
    pub fn command(&self) -> u16 {
        self.regs.u16(PCI_COMMAND)
    }

    /// The Status register.
    pub fn status(&self) -> u16 {
        self.regs.u16(PCI_STATUS)
    }

    /// Memory Space Enable is set and the function is in D0 (in D3hot a function does not
    /// decode memory, PCI PM 1.2 §5.3.1).
    pub fn memory_enabled(&self) -> bool {
        self.command() & PCI_COMMAND_MEMORY != 0 && self.pm_state() == PowerState::D0
    }

    /// Bus Master Enable is set and the function is in D0: the device may issue DMA.
    pub fn bus_master(&self) -> bool {
        self.command() & PCI_COMMAND_MASTER != 0 && self.pm_state() == PowerState::D0
    }

    /// Command.Interrupt Disable: INTx must not be asserted.
    pub fn intx_disabled(&self) -> bool {
        self.command() & PCI_COMMAND_INTX_DISABLE != 0
    }

    /// Interrupt Pin (0 = none, 1 = INTA#).
    pub fn interrupt_pin(&self) -> u8 {
        self.regs.byte(PCI_INTERRUPT_PIN)
    }

    /// MSI-X Enable is set.
    pub fn msix_enabled(&self) -> bool {
        self.msix_control() & PCI_MSIX_FLAGS_ENABLE != 0
    }

    /// MSI-X Function Mask is set: every vector is masked.
    pub fn msix_function_masked(&self) -> bool {
        self.msix_control() & PCI_MSIX_FLAGS_MASKALL != 0
    }

    /// Where the MSI-X table and PBA live, if the function has MSI-X.
    pub fn msix(&self) -> Option<MsixInfo> {
        self.layout.msix.map(|(_, info)| info)
    }

    /// PMCSR.PowerState (D0 when there is no PM capability).
    pub fn pm_state(&self) -> PowerState {
        self.layout
            .pm
            .map_or(PowerState::D0, |pm| pm::state(&self.regs, pm))
    }

    /// The base address the guest programmed into BAR `bar`; `None` for an unimplemented
    /// BAR, the upper half of a 64-bit BAR, an address of 0, or a register holding the
    /// sizing pattern (all-ones written).
    pub fn bar_address(&self, bar: usize) -> Option<u64> {
        let def = self.bars.get(bar).copied().flatten()?;
        let sizing = |i: usize| self.sizing[i] == 0xf;
        if sizing(bar) || (def.kind == BarKind::Mem64 && sizing(bar + 1)) {
            return None;
        }
        let address = bar::raw_address(&self.regs, bar, &def);
        (address != 0).then_some(address)
    }

    /// Current size of BAR `bar` in bytes (0 if unimplemented or the upper half of a
    /// 64-bit BAR).
    pub fn bar_size(&self, bar: usize) -> u64 {
        self.bars.get(bar).copied().flatten().map_or(0, |d| d.size)
    }

    /// Everything about BAR `bar`, if implemented (`None` for the upper half of a 64-bit
    /// BAR).
    pub fn bar(&self, bar: usize) -> Option<BarInfo> {
        let def = self.bars.get(bar).copied().flatten()?;
        Some(BarInfo {
            size: def.size,
            kind: def.kind,
            prefetchable: def.prefetchable,
            address: self.bar_address(bar),
        })
    }

    /// Offset of the first capability with ID `id` in the capability list.
    pub fn capability_offset(&self, id: u8) -> Option<usize> {
        let mut at = usize::from(self.regs.byte(PCI_CAPABILITY_LIST) & !3);
        // At most 48 capabilities fit between 0x40 and 0x100: bound the walk.
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            if self.regs.byte(at + PCI_CAP_LIST_ID) == id {
                return Some(at);
            }
            at = usize::from(self.regs.byte(at + PCI_CAP_LIST_NEXT) & !3);
        }
        None
    }

    /// Offset of the first extended capability with ID `id`.
    pub fn ext_capability_offset(&self, id: u16) -> Option<usize> {
        let mut at = PCI_CONFIG_SPACE_SIZE;
        // At most 960 dwords of extended space: bound the walk.
        for _ in 0..960 {
            if at < PCI_CONFIG_SPACE_SIZE || at + 4 > PCIE_CONFIG_SPACE_SIZE {
                return None;
            }
            let header = self.regs.u32(at);
            if header == 0 {
                return None;
            }
            if ext_cap_id(header) == id {
                return Some(at);
            }
            at = ext_cap_next(header);
        }
        None
    }

    /// Privileged (device-side) store that bypasses both masks, e.g. to set a Status or
    /// Device Status error bit. Bytes beyond 4 KiB are ignored.
    pub fn device_write(&mut self, offset: u16, data: &[u8]) {
        if let Some((start, end)) = clip(u64::from(offset), data.len()) {
            self.regs.set_bytes(start, &data[..end - start]);
        }
    }

    /// Sets or clears Status.Interrupt Status (INTx asserted), owned by the device.
    pub fn set_interrupt_status(&mut self, asserted: bool) {
        let status = self.status() & !PCI_STATUS_INTERRUPT;
        let bit = if asserted { PCI_STATUS_INTERRUPT } else { 0 };
        self.regs.set_u16(PCI_STATUS, status | bit);
    }

    fn msix_control(&self) -> u16 {
        self.layout
            .msix
            .map_or(0, |(at, _)| msix::control(&self.regs, at))
    }

    fn clone_state(&self) -> WriteSnapshot {
        let mut bars = [(0u32, 0u64, None); PCI_NUM_BARS];
        for (i, slot) in bars.iter_mut().enumerate() {
            *slot = (
                self.regs.u32(bar::bar_offset(i)),
                self.bar_size(i),
                self.bar_address(i),
            );
        }
        WriteSnapshot {
            command: self.command(),
            bars,
            msix_control: self.msix_control(),
            pmcsr: self
                .layout
                .pm
                .map_or(0, |pm| self.regs.u16(pm + PCI_PM_CTRL)),
            pm_state: self.pm_state(),
        }
    }

    /// Remembers which BAR bytes were last written with 0xff (the sizing pattern).
    fn track_sizing(&mut self, start: usize, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            let at = start + i;
            let Some(rel) = at.checked_sub(PCI_BASE_ADDRESS_0) else {
                continue;
            };
            let reg = rel / 4;
            if reg >= PCI_NUM_BARS {
                break;
            }
            let bit = 1u8 << (rel % 4);
            if byte == 0xff {
                self.sizing[reg] |= bit;
            } else {
                self.sizing[reg] &= !bit;
            }
        }
    }

    /// Applies writes to Resizable BAR Size fields: supported sizes resize, others are
    /// ignored.
    fn apply_rebar_writes(&mut self, start: usize, data: &[u8]) {
        let Some((at, entries)) = &self.layout.rebar else {
            return;
        };
        let at = *at;
        let mut resized = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let size_byte = at + PCI_REBAR_CTRL + 8 * i + (PCI_REBAR_CTRL_BAR_SHIFT / 8) as usize;
            let Some(&byte) = size_byte.checked_sub(start).and_then(|rel| data.get(rel)) else {
                continue;
            };
            let encoding = u32::from(byte & 0x3f);
            if encoding <= rebar::REBAR_MAX_ENCODING && entry.sizes & (1u64 << encoding) != 0 {
                resized.push((i, entry.bar, encoding));
            }
        }
        for (i, bar_index, encoding) in resized {
            rebar::set_current(&mut self.regs, at, i, encoding);
            if let Some(def) = self.bars[bar_index].as_mut() {
                def.size = rebar::encoding_size(encoding);
                let def = *def;
                bar::set_size(&mut self.regs, bar_index, &def);
            }
        }
    }
}

/// Decoded state before and after a guest write, to report [`ConfigEvents`].
struct WriteSnapshot {
    command: u16,
    bars: [(u32, u64, Option<u64>); PCI_NUM_BARS],
    msix_control: u16,
    pmcsr: u16,
    pm_state: PowerState,
}

impl fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bars: Vec<_> = (0..PCI_NUM_BARS)
            .filter_map(|i| self.bar(i).map(|b| (i, b)))
            .collect();
        f.debug_struct("ConfigSpace")
            .field("ids", &self.ids)
            .field("command", &format_args!("{:#06x}", self.command()))
            .field("status", &format_args!("{:#06x}", self.status()))
            .field("bars", &bars)
            .field("msix", &self.layout.msix)
            .field(
                "msix_control",
                &format_args!("{:#06x}", self.msix_control()),
            )
            .field("pm", &self.layout.pm.map(|_| self.pm_state()))
            .field("pcie", &self.layout.pcie)
            .field("dsn", &self.layout.dsn)
            .field("rebar", &self.layout.rebar)
            .finish()
    }
}
