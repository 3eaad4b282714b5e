//! Fuzz the PCI configuration-space model with guest writes and reads of any offset,
//! size and value, on the NVMe's and the GPU's real layouts and on arbitrary declared
//! ones (BAR sizes and kinds, MSI-X placement, Resizable BAR), with BAR sizing, Function
//! Level Resets and conventional resets in between.
//!
//! Checks after every access, besides "no panic":
//! - the read-only identity (IDs, class, header type, subsystem, capability pointer,
//!   interrupt pin), every capability's ID and next pointer, every extended capability
//!   header, the MSI-X table/PBA registers and the DSN keep their power-on bytes;
//! - every implemented BAR has a power-of-two size >= 16 (<= 2 GiB for a 32-bit BAR),
//!   keeps its type bits, and its decoded address (if any) is size-aligned and, for a
//!   32-bit BAR, below 4 GiB;
//! - writing all-ones to a BAR reads back the sizing pattern `!(size - 1) | type bits`
//!   and decodes no address;
//! - a write that reports no BAR change leaves every BAR register, size and address as
//!   it was; `command_changed` is exactly "the Command register changed";
//! - after an FLR (reported) or a reset the whole space equals the power-on space;
//! - reads beyond 4 KiB return zeros.
//!
//! Input: an `arbitrary`-decoded [`Input`]: the layout, then a list of [`Op`]s.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use p2plab_pci::ext_caps::{ext_cap_next, PCI_EXT_CAP_ID_DSN};
use p2plab_pci::msix::{PCI_MSIX_PBA, PCI_MSIX_TABLE};
use p2plab_pci::pcie::{PCI_EXP_DEVCTL, PCI_EXP_DEVCTL_BCR_FLR};
use p2plab_pci::regs::*;
use p2plab_pci::{BarKind, BarLayout, ConfigSpace, PciLayout, ResizableBar};

const SPACE: usize = PCIE_CONFIG_SPACE_SIZE;

#[derive(Arbitrary, Debug)]
struct ArbBar {
    index: u8,
    size_log2: u8,
    is_64bit: bool,
    prefetchable: bool,
}

#[derive(Arbitrary, Debug)]
enum Layout {
    Nvme {
        cmb_log2: u8,
        vectors: u8,
    },
    Gpu {
        vram_log2: u8,
    },
    Custom {
        bars: Vec<ArbBar>,
        msix_vectors: u16,
        msix_bar: u8,
        msix_table_offset: u32,
        msix_pba_offset: u32,
        dsn: u64,
        interrupt_pin: u8,
        rebar: Option<(u8, u64)>,
    },
}

impl Layout {
    fn build(&self) -> Option<PciLayout> {
        Some(match self {
            Layout::Nvme { cmb_log2, vectors } => {
                let cmb = match cmb_log2 % 12 {
                    0 => 0,
                    n => 1u64 << (20 + n),
                };
                p2plab_nvme::pci::layout(cmb, u16::from(*vectors % 65).max(1), "FUZZ")
            }
            Layout::Gpu { vram_log2 } => {
                p2plab_gpu::pci::layout(1u64 << (20 + vram_log2 % 28), 0x1234)
            }
            Layout::Custom {
                bars,
                msix_vectors,
                msix_bar,
                msix_table_offset,
                msix_pba_offset,
                dsn,
                interrupt_pin,
                rebar,
            } => PciLayout {
                vendor: 0x2b2b,
                device: 0xf022,
                subsystem_vendor: 0x2b2b,
                subsystem: 1,
                revision: 1,
                class: 0x05_80_00,
                bars: bars
                    .iter()
                    .take(6)
                    .map(|b| BarLayout {
                        index: usize::from(b.index % 7),
                        size: 1u64.checked_shl(u32::from(b.size_log2 % 70)).unwrap_or(0),
                        is_64bit: b.is_64bit,
                        prefetchable: b.prefetchable,
                        mmappable: false,
                    })
                    .collect(),
                msix_vectors: *msix_vectors % 2100,
                msix_bar: usize::from(*msix_bar % 7),
                msix_table_offset: *msix_table_offset,
                msix_pba_offset: *msix_pba_offset,
                dsn: *dsn,
                interrupt_pin: *interrupt_pin,
                rebar: rebar.map(|(bar, sizes)| ResizableBar {
                    bar: usize::from(bar % 7),
                    sizes,
                }),
            },
        })
    }
}

/// Where a write lands: mostly in registers with behaviour.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Off {
    Header(u8),
    Bar(u8, u8),
    /// Inside the n-th capability of the list (by walk order).
    Cap(u8, u8),
    /// Inside the n-th extended capability.
    ExtCap(u8, u8),
    Raw(u16),
    Huge(u64),
}

#[derive(Arbitrary, Debug)]
enum Op {
    Write {
        at: Off,
        data: Vec<u8>,
    },
    Write32 {
        at: Off,
        value: u32,
    },
    Read {
        at: Off,
        len: u8,
    },
    /// Write all-ones to BAR register `n` and check the sizing pattern.
    Size(u8),
    /// Initiate Function Level Reset through the PCIe capability.
    Flr,
    Reset,
    SetInterruptStatus(bool),
}

#[derive(Arbitrary, Debug)]
struct Input {
    layout: Layout,
    ops: Vec<Op>,
}

fn image(cfg: &ConfigSpace) -> Vec<u8> {
    let mut v = vec![0u8; SPACE];
    cfg.read(0, &mut v);
    v
}

fn u32_at(img: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(img[at..at + 4].try_into().unwrap())
}

/// The capability offsets of a space, in list order.
fn caps(img: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut at = usize::from(img[PCI_CAPABILITY_LIST] & !3);
    while at >= 0x40 && v.len() < 48 {
        v.push(at);
        at = usize::from(img[at + PCI_CAP_LIST_NEXT] & !3);
    }
    v
}

fn ext_caps(img: &[u8]) -> Vec<usize> {
    let mut v = Vec::new();
    let mut at = PCI_CONFIG_SPACE_SIZE;
    while at >= PCI_CONFIG_SPACE_SIZE && at + 4 <= SPACE && v.len() < 960 {
        let h = u32_at(img, at);
        if h == 0 {
            break;
        }
        v.push(at);
        at = ext_cap_next(h);
    }
    v
}

/// Byte ranges that no guest write may change.
fn read_only_ranges(cfg: &ConfigSpace, img: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut r = vec![
        PCI_VENDOR_ID..PCI_COMMAND,
        PCI_REVISION_ID..PCI_CACHE_LINE_SIZE,
        PCI_HEADER_TYPE..PCI_HEADER_TYPE + 1,
        PCI_SUBSYSTEM_VENDOR_ID..PCI_ROM_ADDRESS,
        PCI_CAPABILITY_LIST..PCI_CAPABILITY_LIST + 1,
        PCI_INTERRUPT_PIN..PCI_INTERRUPT_PIN + 1,
    ];
    for at in caps(img) {
        r.push(at..at + 2);
    }
    if let Some(at) = cfg.capability_offset(PCI_CAP_ID_MSIX) {
        r.push(at + PCI_MSIX_TABLE..at + PCI_MSIX_PBA + 4);
    }
    for at in ext_caps(img) {
        r.push(at..at + 4);
    }
    if let Some(at) = cfg.ext_capability_offset(PCI_EXT_CAP_ID_DSN) {
        r.push(at + 4..at + 12);
    }
    r
}

struct Bars {
    regs: [u32; PCI_NUM_BARS],
    sizes: [u64; PCI_NUM_BARS],
    addrs: [Option<u64>; PCI_NUM_BARS],
}

fn bars(cfg: &ConfigSpace) -> Bars {
    let mut raw = [0u8; 4 * PCI_NUM_BARS];
    cfg.read(PCI_BASE_ADDRESS_0 as u64, &mut raw);
    let mut b = Bars {
        regs: [0; PCI_NUM_BARS],
        sizes: [0; PCI_NUM_BARS],
        addrs: [None; PCI_NUM_BARS],
    };
    for i in 0..PCI_NUM_BARS {
        b.regs[i] = u32_at(&raw, 4 * i);
        b.sizes[i] = cfg.bar_size(i);
        b.addrs[i] = cfg.bar_address(i);
    }
    b
}

struct Fuzz {
    cfg: ConfigSpace,
    power_on: Vec<u8>,
    fixed: Vec<std::ops::Range<usize>>,
    /// Capability offsets (the lists are read-only, checked by `fixed`).
    caps: Vec<usize>,
    ext_caps: Vec<usize>,
}

impl Fuzz {
    fn offset(&self, at: Off) -> u64 {
        match at {
            Off::Header(o) => u64::from(o % 0x40),
            Off::Bar(n, b) => {
                (PCI_BASE_ADDRESS_0 + 4 * usize::from(n % 6) + usize::from(b % 4)) as u64
            }
            Off::Cap(n, o) => {
                let c = &self.caps;
                if c.is_empty() {
                    return u64::from(o);
                }
                (c[usize::from(n) % c.len()] + usize::from(o % 0x40)) as u64
            }
            Off::ExtCap(n, o) => {
                let c = &self.ext_caps;
                if c.is_empty() {
                    return 0x100 + u64::from(o);
                }
                (c[usize::from(n) % c.len()] + usize::from(o % 0x40)) as u64
            }
            Off::Raw(o) => u64::from(o % 0x1100),
            Off::Huge(o) => o,
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let before = bars(&self.cfg);
        let command = self.cfg.command();
        let ev = self.cfg.write(offset, data);
        let after = bars(&self.cfg);
        if ev.flr_requested {
            assert_eq!(image(&self.cfg), self.power_on, "config space after FLR");
        }
        if !ev.bars_changed {
            assert_eq!(before.regs, after.regs, "BAR registers changed unreported");
            assert_eq!(before.sizes, after.sizes, "BAR sizes changed unreported");
            assert_eq!(
                before.addrs, after.addrs,
                "BAR addresses changed unreported"
            );
        }
        assert_eq!(
            ev.command_changed,
            command != self.cfg.command(),
            "command_changed misreported"
        );
    }

    fn check(&self) {
        let mut buf = [0u8; 16];
        for r in &self.fixed {
            let got = &mut buf[..r.len()];
            self.cfg.read(r.start as u64, got);
            assert_eq!(
                *got,
                self.power_on[r.clone()],
                "read-only bytes {r:x?} changed"
            );
        }
        let mut raw = [0u8; 4 * PCI_NUM_BARS];
        self.cfg.read(PCI_BASE_ADDRESS_0 as u64, &mut raw);
        for i in 0..PCI_NUM_BARS {
            let Some(bar) = self.cfg.bar(i) else { continue };
            assert!(
                bar.size.is_power_of_two() && bar.size >= 16,
                "BAR{i} size {:#x}",
                bar.size
            );
            let reg = u32_at(&raw, 4 * i);
            let po = u32_at(&self.power_on, PCI_BASE_ADDRESS_0 + 4 * i);
            assert_eq!(
                reg & !PCI_BASE_ADDRESS_MEM_MASK,
                po & !PCI_BASE_ADDRESS_MEM_MASK
            );
            if bar.kind == BarKind::Mem32 {
                assert!(bar.size <= 1 << 31, "32-bit BAR{i} of {:#x}", bar.size);
            }
            if let Some(a) = bar.address {
                assert_eq!(
                    a % bar.size,
                    0,
                    "BAR{i} at {a:#x} not aligned to {:#x}",
                    bar.size
                );
                if bar.kind == BarKind::Mem32 {
                    assert!(a + bar.size <= 1 << 32, "32-bit BAR{i} at {a:#x}");
                }
            }
        }
        let mut beyond = [0xaau8; 8];
        self.cfg.read(SPACE as u64, &mut beyond);
        assert_eq!(beyond, [0; 8]);
    }

    fn size_bar(&mut self, n: usize) {
        let at = (PCI_BASE_ADDRESS_0 + 4 * n) as u64;
        self.write(at, &[0xff; 4]);
        let mut b = [0u8; 4];
        self.cfg.read(at, &mut b);
        let got = u32::from_le_bytes(b);
        let po = u32_at(&self.power_on, at as usize);
        if let Some(bar) = self.cfg.bar(n) {
            let want = (!(bar.size - 1) as u32 & PCI_BASE_ADDRESS_MEM_MASK)
                | (po & !PCI_BASE_ADDRESS_MEM_MASK);
            assert_eq!(got, want, "BAR{n} sizing pattern (size {:#x})", bar.size);
            assert_eq!(self.cfg.bar_address(n), None, "BAR{n} decodes while sizing");
        } else if n > 0
            && self
                .cfg
                .bar(n - 1)
                .is_some_and(|b| b.kind == BarKind::Mem64)
        {
            let size = self.cfg.bar_size(n - 1);
            assert_eq!(
                got,
                (!(size - 1) >> 32) as u32,
                "BAR{n} (upper) sizing pattern"
            );
            assert_eq!(self.cfg.bar_address(n - 1), None);
        } else {
            assert_eq!(got, 0, "unimplemented BAR{n} reads back {got:#x}");
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write { at, data } => {
                let off = self.offset(*at);
                self.write(off, &data[..data.len().min(8)]);
            }
            Op::Write32 { at, value } => {
                let off = self.offset(*at);
                self.write(off, &value.to_le_bytes());
            }
            Op::Read { at, len } => {
                let off = self.offset(*at);
                let mut buf = vec![0xaau8; usize::from(*len % 9)];
                self.cfg.read(off, &mut buf);
                for (i, b) in buf.iter().enumerate() {
                    let o = off.checked_add(i as u64);
                    if o.is_none_or(|o| o >= SPACE as u64) {
                        assert_eq!(*b, 0, "byte beyond 4 KiB read {b:#x}");
                    }
                }
            }
            Op::Size(n) => self.size_bar(usize::from(n % 6)),
            Op::Flr => {
                if let Some(at) = self.cfg.capability_offset(PCI_CAP_ID_EXP) {
                    let off = (at + PCI_EXP_DEVCTL) as u64;
                    let mut b = [0u8; 2];
                    self.cfg.read(off, &mut b);
                    let v = u16::from_le_bytes(b) | PCI_EXP_DEVCTL_BCR_FLR;
                    let ev = self.cfg.write(off, &v.to_le_bytes());
                    assert!(ev.flr_requested, "FLR not reported");
                    assert_eq!(image(&self.cfg), self.power_on, "config space after FLR");
                }
            }
            Op::Reset => {
                self.cfg.reset();
                assert_eq!(image(&self.cfg), self.power_on, "config space after reset");
            }
            Op::SetInterruptStatus(on) => self.cfg.set_interrupt_status(*on),
        }
        self.check();
    }
}

fuzz_target!(|input: Input| {
    let Some(layout) = input.layout.build() else {
        return;
    };
    let Ok(cfg) = layout.config_space() else {
        return;
    };
    let power_on = image(&cfg);
    let fixed = read_only_ranges(&cfg, &power_on);
    let mut f = Fuzz {
        caps: caps(&power_on),
        ext_caps: ext_caps(&power_on),
        cfg,
        power_on,
        fixed,
    };
    f.check();
    for op in input.ops.iter().take(128) {
        f.apply(op);
    }
});
