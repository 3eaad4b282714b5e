//! p2plab-gpu: a GPU-like PCIe device with a large "VRAM" BAR, a copy engine and a
//! checksum engine.
//!
//! # What it is
//! The peer that makes P2PDMA interesting: BAR2 is a big (1 GiB by default, up to
//! 128 TiB) 64-bit prefetchable BAR backed by a sparse memfd, like a datacenter GPU's
//! BAR1. A guest module (`guest-tests/kmod/p2pgpu.ko`) publishes a slice of it as p2pmem
//! and exports it as a dma-buf, so an NVMe read can land straight in "VRAM".
//! - BAR0: registers ([`regs`]): identity, VRAM size, interrupt status/enable (RW1C),
//!   a **copy engine** (descriptor ring in guest memory, [`copy`]) that moves bytes
//!   between any two bus addresses (guest RAM, its own VRAM, a peer's BAR), and a
//!   **checksum engine** ([`checksum`], SHA-256) over a VRAM range, so tests can verify
//!   P2P data without the CPU reading the BAR.
//! - BAR2: VRAM. The host creates and maps the memfd; the model only describes the BAR
//!   and reads it through [`VramAccess`] (checksum engine, trapped fallback accesses).
//! - BAR4: MSI-X table and PBA (QEMU emulates the table; the BAR must not be mmapped).
//!
//! PCI identity and capabilities are in [`pci`] (vendor 0x2b2b, device 0x0001, class
//! 0x030200).
//!
//! # Architecture
//! A pure state machine, like `p2plab-nvme`, driven through the device contract
//! [`p2plab_pci::PciFunction`]: `bar_write` only records work (a doorbell, a start bit, a
//! disable the worker must acknowledge) and returns `true` for it, never blocking;
//! `process`, called by the host's worker thread until it returns `false` and
//! `needs_processing` is clear, does one bounded step per engine (one descriptor fetch
//! plus at most [`copy::CHUNK`] bytes copied, [`checksum::CHUNK`] bytes hashed). DMA goes
//! through the [`DmaSpace`] the fabric gives the device (which routes and counts every
//! byte); VRAM as a copy source or destination is addressed by its bus address (the
//! fabric's self route). No register lock is held across a DMA, so a relayed DMA that
//! waits on QEMU can never block a vCPU's register access. A function reset (FLR or
//! conventional) stops both engines: registers to power-on values, whatever the worker
//! holds abandoned without a completion.
//!
//! # What it does not implement
//! No graphics, no command processor, no page tables: VRAM is flat and the copy engine
//! takes bus addresses. No INTx (the host may still route vector 0 to INTx). Resizing
//! BAR2 through the Resizable BAR capability is advertised by the config space but the
//! model keeps the VRAM size it was built with (the host glue owns the config space and
//! must keep the BAR at the VRAM size or reject the resize).

#![forbid(unsafe_code)]

pub mod checksum;
pub mod copy;
pub mod pci;
pub mod regs;

use p2plab_memory::{BusAddr, DmaError, DmaSpace, InterruptSink, MmapRegion};
use p2plab_pci::{ConfigSpace, PciFunction, UNCLAIMED_READ};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use zerocopy::{FromZeros, IntoBytes};

/// BAR index of the registers.
pub const REG_BAR: usize = 0;
/// BAR index of the VRAM.
pub const VRAM_BAR: usize = 2;
/// BAR index of the MSI-X table and PBA.
pub const MSIX_BAR: usize = 4;

/// Default VRAM size: 1 GiB.
pub const DEFAULT_VRAM_SIZE: u64 = 1 << 30;

/// The device's own view of its VRAM (the memfd behind BAR2), used by the checksum
/// engine and for trapped BAR2 accesses. Not a bus path: nothing here is counted as DMA.
pub trait VramAccess: Send + Sync {
    /// Read `buf.len()` bytes at VRAM offset `off`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Write `data` at VRAM offset `off` (trapped CPU writes when BAR2 is not mmapped).
    fn write(&self, off: u64, data: &[u8]) -> Result<(), DmaError> {
        let _ = data;
        Err(DmaError::ReadOnly { addr: off })
    }
    /// VRAM size in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl VramAccess for MmapRegion {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        MmapRegion::read(self, off, buf)
    }
    fn write(&self, off: u64, data: &[u8]) -> Result<(), DmaError> {
        MmapRegion::write(self, off, data)
    }
    fn len(&self) -> u64 {
        MmapRegion::len(self) as u64
    }
}

/// Device configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuConfig {
    /// BAR2 size in bytes: a power of two in [`pci::MIN_VRAM_SIZE`]..=[`pci::MAX_VRAM_SIZE`].
    pub vram_size: u64,
    /// PCIe Device Serial Number (also how the guest tells devices apart).
    pub serial: u64,
}

impl Default for GpuConfig {
    fn default() -> Self {
        Self {
            vram_size: DEFAULT_VRAM_SIZE,
            serial: 0,
        }
    }
}

/// Why a device could not be built.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum GpuError {
    #[error("VRAM size {0:#x} is not a power of two between 1 MiB and 128 TiB")]
    BadVramSize(u64),
    #[error("the VRAM handle is {have:#x} bytes, smaller than the VRAM size {want:#x}")]
    VramTooSmall { have: u64, want: u64 },
    #[error("the PCI config space declaration is invalid")]
    Config(#[from] p2plab_pci::ConfigError),
}

/// Counters of guest errors the engines caught ([`PciFunction::error_counters`]). Kept
/// with the registers (updated under their lock) but never reset.
#[derive(Clone, Copy, Debug, Default)]
struct ErrorCounts {
    /// Copy descriptors completed with an error, by `copy::DESC_ERR_*` code (index).
    ce_desc: [u64; 7],
    /// Copy engine halts, by `regs::CE_HALT_*` code (index).
    ce_halt: [u64; 5],
    /// Checksum runs that failed, by `regs::CK_ERR_*` code (index).
    ck: [u64; 3],
}

impl ErrorCounts {
    fn count(slots: &mut [u64], code: u8) {
        let i = usize::from(code).min(slots.len() - 1);
        slots[i] = slots[i].wrapping_add(1);
    }

    /// `(name, count)` pairs, every code named (0 included).
    fn export(&self) -> Vec<(String, u64)> {
        let desc = [
            (copy::DESC_ERR_LENGTH, "length"),
            (copy::DESC_ERR_OVERFLOW, "overflow"),
            (copy::DESC_ERR_SRC_FAULT, "src_fault"),
            (copy::DESC_ERR_DST_FAULT, "dst_fault"),
            (copy::DESC_ERR_FLAGS, "flags"),
            (copy::DESC_ERR_VRAM_RANGE, "vram_range"),
        ];
        let halt = [
            (regs::CE_HALT_BAD_RING, "bad_ring"),
            (regs::CE_HALT_BAD_TAIL, "bad_tail"),
            (regs::CE_HALT_FETCH_FAULT, "fetch_fault"),
            (regs::CE_HALT_WRITEBACK_FAULT, "writeback_fault"),
        ];
        let ck = [(regs::CK_ERR_RANGE, "range"), (regs::CK_ERR_READ, "read")];
        let mut out = vec![(
            "ce_descriptor_errors".to_string(),
            self.ce_desc.iter().sum(),
        )];
        let by = |slots: &[u64], code: u8| slots.get(usize::from(code)).copied().unwrap_or(0);
        out.extend(
            desc.iter()
                .map(|&(c, n)| (format!("ce_error_{n}"), by(&self.ce_desc, c))),
        );
        out.push(("ce_halts".into(), self.ce_halt.iter().sum()));
        out.extend(
            halt.iter()
                .map(|&(c, n)| (format!("ce_halt_{n}"), by(&self.ce_halt, c))),
        );
        out.push(("ck_errors".into(), self.ck.iter().sum()));
        out.extend(
            ck.iter()
                .map(|&(c, n)| (format!("ck_error_{n}"), by(&self.ck, c))),
        );
        out
    }
}

/// Guest-visible register state. Only ever locked briefly, never across DMA.
#[derive(Default)]
struct Regs {
    bus_master: bool,
    intr_status: u32,
    intr_enable: u32,

    ce_ring_base: u64,
    ce_ring_size: u32,
    ce_ctrl: u32,
    /// Ring base and size latched when the engine was enabled.
    ce_base: u64,
    ce_size: u32,
    ce_head: u32,
    ce_tail: u32,
    /// Halt reason (`CE_HALT_*`), 0 when running.
    ce_halt: u8,
    /// The worker holds a descriptor (CE_STATUS.ACTIVE): DMA of it may still happen.
    ce_active: bool,
    /// Bumped whenever in-flight copy work must be abandoned (disable, reset).
    ce_generation: u64,
    ce_completed: u32,
    ce_errors: u32,
    ce_bytes: u64,

    ck_offset: u64,
    ck_len: u64,
    ck_status: u32,
    /// A started range not yet picked up by the worker.
    ck_pending: Option<(u64, u64)>,
    /// Bumped whenever an in-flight checksum must be abandoned (reset).
    ck_generation: u64,
    ck_digest: [u8; regs::CK_DIGEST_LEN],
    ck_bytes: u64,

    /// Not a register: survives resets.
    errors: ErrorCounts,
}

impl Regs {
    fn ce_enabled(&self) -> bool {
        self.ce_ctrl & regs::CE_CTRL_ENABLE != 0
    }

    fn ce_runnable(&self) -> bool {
        self.ce_enabled() && self.ce_halt == 0
    }

    /// Set `cause` in INTR_STATUS; returns the vector to signal, if enabled.
    #[must_use]
    fn raise(&mut self, cause: u32) -> Option<u16> {
        self.intr_status |= cause;
        if self.intr_enable & cause == 0 {
            return None;
        }
        if cause & (regs::INTR_CE_DONE | regs::INTR_CE_ERROR) != 0 {
            Some(regs::VECTOR_CE)
        } else {
            Some(regs::VECTOR_CK)
        }
    }

    #[must_use]
    fn ce_halt_with(&mut self, code: u8) -> Option<u16> {
        log::debug!("gpu copy engine halted: code {code}");
        ErrorCounts::count(&mut self.errors.ce_halt, code);
        self.ce_halt = code;
        self.raise(regs::INTR_CE_ERROR)
    }

    fn read_reg(&self, vram_size: u64, off: u64) -> u32 {
        let lo = |v: u64| v as u32;
        let hi = |v: u64| (v >> 32) as u32;
        match off {
            regs::ID => regs::ID_VALUE,
            regs::VERSION => regs::VERSION_VALUE,
            regs::VRAM_SIZE_LO => lo(vram_size),
            regs::VRAM_SIZE_HI => hi(vram_size),
            regs::STATUS => {
                let mut s = regs::STATUS_READY;
                if self.ce_runnable() && self.ce_head != self.ce_tail {
                    s |= regs::STATUS_CE_BUSY;
                }
                if self.ck_status & regs::CK_STATUS_BUSY != 0 {
                    s |= regs::STATUS_CK_BUSY;
                }
                s
            }
            regs::CAPS => regs::CAPS_COPY_ENGINE | regs::CAPS_CHECKSUM_SHA256,
            regs::MAX_CHUNK => copy::CHUNK as u32,
            regs::INTR_STATUS => self.intr_status,
            regs::INTR_ENABLE => self.intr_enable,
            regs::CE_RING_BASE_LO => lo(self.ce_ring_base),
            regs::CE_RING_BASE_HI => hi(self.ce_ring_base),
            regs::CE_RING_SIZE => self.ce_ring_size,
            regs::CE_HEAD => self.ce_head,
            regs::CE_TAIL => self.ce_tail,
            regs::CE_CTRL => self.ce_ctrl,
            regs::CE_STATUS => {
                let mut s = 0;
                if self.ce_enabled() {
                    s |= regs::CE_STATUS_ENABLED;
                }
                if self.ce_runnable() && self.ce_head != self.ce_tail {
                    s |= regs::CE_STATUS_BUSY;
                }
                if self.ce_active {
                    s |= regs::CE_STATUS_ACTIVE;
                }
                if self.ce_halt != 0 {
                    s |= regs::CE_STATUS_HALTED
                        | (u32::from(self.ce_halt) << regs::CE_STATUS_HALT_SHIFT);
                }
                s
            }
            regs::CE_COMPLETED => self.ce_completed,
            regs::CE_ERRORS => self.ce_errors,
            regs::CE_BYTES_LO => lo(self.ce_bytes),
            regs::CE_BYTES_HI => hi(self.ce_bytes),
            regs::CK_OFFSET_LO => lo(self.ck_offset),
            regs::CK_OFFSET_HI => hi(self.ck_offset),
            regs::CK_LEN_LO => lo(self.ck_len),
            regs::CK_LEN_HI => hi(self.ck_len),
            regs::CK_STATUS => self.ck_status,
            regs::CK_ALGO => regs::CK_ALGO_SHA256,
            regs::CK_BYTES_LO => lo(self.ck_bytes),
            regs::CK_BYTES_HI => hi(self.ck_bytes),
            o if (regs::CK_DIGEST..regs::CK_DIGEST + regs::CK_DIGEST_LEN as u64).contains(&o) => {
                let i = (o - regs::CK_DIGEST) as usize;
                let mut b = [0u8; 4];
                b.copy_from_slice(&self.ck_digest[i..i + 4]);
                u32::from_le_bytes(b)
            }
            _ => 0,
        }
    }

    /// Apply a dword write: the vector to signal, if any, and whether it gave the
    /// worker something to do.
    #[must_use]
    fn write_reg(&mut self, off: u64, val: u32) -> RegWrite {
        let set_lo = |r: &mut u64, v: u32| *r = (*r & !0xffff_ffff) | u64::from(v);
        let set_hi = |r: &mut u64, v: u32| *r = (*r & 0xffff_ffff) | (u64::from(v) << 32);
        match off {
            regs::INTR_STATUS => self.intr_status &= !val,
            regs::INTR_ENABLE => self.intr_enable = val & regs::INTR_ALL,
            regs::CE_RING_BASE_LO => set_lo(&mut self.ce_ring_base, val),
            regs::CE_RING_BASE_HI => set_hi(&mut self.ce_ring_base, val),
            regs::CE_RING_SIZE => self.ce_ring_size = val,
            regs::CE_TAIL => {
                if !self.ce_runnable() {
                    log::debug!("gpu CE_TAIL write {val} while the engine is stopped: ignored");
                } else if val >= self.ce_size {
                    return RegWrite::signal(self.ce_halt_with(regs::CE_HALT_BAD_TAIL));
                } else {
                    self.ce_tail = val;
                    return RegWrite::WORK;
                }
            }
            regs::CE_CTRL => return self.write_ce_ctrl(val),
            regs::CK_OFFSET_LO => set_lo(&mut self.ck_offset, val),
            regs::CK_OFFSET_HI => set_hi(&mut self.ck_offset, val),
            regs::CK_LEN_LO => set_lo(&mut self.ck_len, val),
            regs::CK_LEN_HI => set_hi(&mut self.ck_len, val),
            regs::CK_CTRL => {
                if val & regs::CK_CTRL_START != 0 && self.ck_status & regs::CK_STATUS_BUSY == 0 {
                    self.ck_status = regs::CK_STATUS_BUSY;
                    self.ck_digest = [0; regs::CK_DIGEST_LEN];
                    self.ck_pending = Some((self.ck_offset, self.ck_len));
                    return RegWrite::WORK;
                }
            }
            _ => log::trace!("gpu BAR0 write {val:#x} at {off:#x}: read-only or unknown"),
        }
        RegWrite::NONE
    }

    /// CE_CTRL: either edge is work (the worker drops what it holds and clears
    /// CE_STATUS.ACTIVE; an enable starts the ring).
    #[must_use]
    fn write_ce_ctrl(&mut self, val: u32) -> RegWrite {
        let was = self.ce_enabled();
        let now = val & regs::CE_CTRL_ENABLE != 0;
        self.ce_ctrl = val & regs::CE_CTRL_ENABLE;
        if was == now {
            return RegWrite::NONE;
        }
        // Either edge abandons whatever the worker holds and restarts the ring at 0.
        self.ce_generation = self.ce_generation.wrapping_add(1);
        self.ce_head = 0;
        self.ce_tail = 0;
        self.ce_halt = 0;
        if !now {
            return RegWrite::WORK;
        }
        let size = self.ce_ring_size;
        let ring_bytes = u64::from(size) * copy::DESC_SIZE;
        let valid = (1..=regs::CE_RING_MAX_ENTRIES).contains(&size)
            && self.ce_ring_base & (regs::CE_RING_ALIGN - 1) == 0
            && self.ce_ring_base.checked_add(ring_bytes).is_some();
        if !valid {
            return RegWrite {
                vector: self.ce_halt_with(regs::CE_HALT_BAD_RING),
                work: true,
            };
        }
        self.ce_base = self.ce_ring_base;
        self.ce_size = size;
        RegWrite::WORK
    }
}

/// What a register write did beyond storing its value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct RegWrite {
    /// MSI-X vector to signal.
    vector: Option<u16>,
    /// The worker has something to do (`process`).
    work: bool,
}

impl RegWrite {
    const NONE: Self = Self {
        vector: None,
        work: false,
    };
    const WORK: Self = Self {
        vector: None,
        work: true,
    };

    fn signal(vector: Option<u16>) -> Self {
        Self {
            vector,
            work: false,
        }
    }
}

/// State owned by the worker (`process()`); holds the in-flight work between steps.
struct Worker {
    ce: Option<copy::InFlight>,
    ck: Option<checksum::Run>,
    buf: Vec<u8>,
}

/// The GPU-like device model.
pub struct GpuDevice {
    cfg: GpuConfig,
    config_space: p2plab_pci::ConfigSpace,
    dma: Arc<dyn DmaSpace>,
    irq: Arc<dyn InterruptSink>,
    vram: Arc<dyn VramAccess>,
    regs: Mutex<Regs>,
    /// BAR2's bus address as the guest programmed it (the copy engine refuses ranges
    /// that lie partly in it); kept across resets, as the host keeps the BAR.
    vram_bar: Mutex<Option<u64>>,
    worker: Mutex<Worker>,
    /// Work recorded for `process` since it last started (`needs_processing`).
    work: AtomicBool,
}

/// The first `n` bytes of the worker's bounce buffer (at most one engine step:
/// [`copy::CHUNK`], [`checksum::CHUNK`]), grown on first use: a device that never copies
/// or hashes holds none.
fn bounce(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl GpuDevice {
    /// BAR of the registers (64-bit, 64 KiB, trapped).
    pub const REG_BAR: usize = REG_BAR;
    /// BAR of the VRAM (64-bit prefetchable, memory-backed).
    pub const VRAM_BAR: usize = VRAM_BAR;
    /// BAR of the MSI-X table and PBA (32-bit, trapped).
    pub const MSIX_BAR: usize = MSIX_BAR;

    /// Build a device. `vram` must cover at least `cfg.vram_size` bytes.
    pub fn new(
        cfg: GpuConfig,
        dma: Arc<dyn DmaSpace>,
        irq: Arc<dyn InterruptSink>,
        vram: Arc<dyn VramAccess>,
    ) -> Result<Self, GpuError> {
        let size = cfg.vram_size;
        if !size.is_power_of_two() || !(pci::MIN_VRAM_SIZE..=pci::MAX_VRAM_SIZE).contains(&size) {
            return Err(GpuError::BadVramSize(size));
        }
        if vram.len() < size {
            return Err(GpuError::VramTooSmall {
                have: vram.len(),
                want: size,
            });
        }
        let config_space = pci::layout(size, cfg.serial).config_space()?;
        Ok(Self {
            cfg,
            config_space,
            dma,
            irq,
            vram,
            regs: Mutex::new(Regs::default()),
            vram_bar: Mutex::new(None),
            worker: Mutex::new(Worker {
                ce: None,
                ck: None,
                buf: Vec::new(),
            }),
            work: AtomicBool::new(false),
        })
    }

    /// The configuration the device was built with.
    pub fn config(&self) -> &GpuConfig {
        &self.cfg
    }

    /// The description the config space was built from.
    pub fn pci_layout(&self) -> pci::PciLayout {
        pci::layout(self.cfg.vram_size, self.cfg.serial)
    }

    /// Size of BAR `bar` (0 for an unimplemented BAR).
    pub fn bar_size(&self, bar: usize) -> u64 {
        match bar {
            REG_BAR => regs::BAR0_SIZE,
            VRAM_BAR => self.cfg.vram_size,
            MSIX_BAR => pci::MSIX_BAR_SIZE,
            _ => 0,
        }
    }

    /// Records work for `process` (`needs_processing`).
    fn kick(&self) {
        self.work.store(true, Ordering::Release);
    }

    fn signal(&self, vector: Option<u16>) {
        if let Some(v) = vector {
            self.irq.signal(v);
        }
    }

    fn copy_step(&self, w: &mut Worker) -> bool {
        let (generation, addr) = {
            let mut r = lock(&self.regs);
            let generation = r.ce_generation;
            if w.ce.as_ref().is_some_and(|f| f.generation != generation) {
                // Disabled or reset under us: drop the descriptor and tell the driver
                // (CE_STATUS.ACTIVE) that no DMA of it is left.
                w.ce = None;
                r.ce_active = false;
                return true;
            }
            if !r.bus_master {
                return false;
            }
            if w.ce.is_some() {
                (generation, None)
            } else if r.ce_runnable() && r.ce_head != r.ce_tail {
                r.ce_active = true;
                // In range: base + size * DESC_SIZE was checked when the ring was latched.
                let addr = r.ce_base + u64::from(r.ce_head) * copy::DESC_SIZE;
                (generation, Some((r.ce_head, addr)))
            } else {
                return false;
            }
        };

        if let Some((index, addr)) = addr {
            let mut desc = copy::CopyDescriptor::new_zeroed();
            if let Err(e) = self.dma.read(BusAddr(addr), desc.as_mut_bytes()) {
                log::debug!("gpu copy descriptor fetch at {addr:#x} failed: {e}");
                let mut r = lock(&self.regs);
                r.ce_active = false;
                if r.ce_generation == generation {
                    let v = r.ce_halt_with(regs::CE_HALT_FETCH_FAULT);
                    drop(r);
                    self.signal(v);
                }
                return true;
            }
            let vram = lock(&self.vram_bar).map(|a| (a, self.cfg.vram_size));
            let outcome = copy::validate(&desc, vram).err().map(Err);
            w.ce = Some(copy::InFlight {
                generation,
                index,
                addr,
                desc,
                done: 0,
                outcome,
            });
        }
        let Some(f) = w.ce.as_mut() else { return false };

        if f.outcome.is_none() {
            let len = f.desc.len.get();
            let n = (len - f.done).min(copy::CHUNK as u64) as usize;
            let buf = bounce(&mut w.buf, n);
            // validate() checked that src + len and dst + len do not overflow.
            let src = BusAddr(f.desc.src.get() + f.done);
            let dst = BusAddr(f.desc.dst.get() + f.done);
            if let Err(e) = self.dma.read(src, buf) {
                log::debug!("gpu copy read at {src:#x} failed: {e}");
                f.outcome = Some(Err(copy::DESC_ERR_SRC_FAULT));
            } else if let Err(e) = self.dma.write(dst, buf) {
                log::debug!("gpu copy write at {dst:#x} failed: {e}");
                f.outcome = Some(Err(copy::DESC_ERR_DST_FAULT));
            } else {
                f.done += n as u64;
                let mut r = lock(&self.regs);
                if r.ce_generation == generation {
                    r.ce_bytes = r.ce_bytes.wrapping_add(n as u64);
                }
                if f.done == len {
                    f.outcome = Some(Ok(()));
                }
            }
        }

        let Some(outcome) = f.outcome else {
            return true;
        };
        let status = copy::status_word(outcome);
        let status_addr = BusAddr(f.addr + copy::DESC_STATUS_OFFSET);
        let index = f.index;
        let want_irq = f.desc.flags.get() & copy::DESC_FLAG_INTERRUPT != 0;
        w.ce = None;
        {
            let mut r = lock(&self.regs);
            if r.ce_generation != generation {
                r.ce_active = false;
                return true;
            }
        }
        // A disable from here on still sees CE_STATUS.ACTIVE until this write is done,
        // so the driver never reuses the descriptor under it.
        let written = self.dma.write(status_addr, &status.to_le_bytes());

        let mut r = lock(&self.regs);
        r.ce_active = false;
        if r.ce_generation != generation {
            return true;
        }
        let vector = match written {
            Err(e) => {
                log::debug!("gpu copy status write-back at {status_addr:#x} failed: {e}");
                r.ce_halt_with(regs::CE_HALT_WRITEBACK_FAULT)
            }
            Ok(()) => {
                r.ce_head = if index + 1 >= r.ce_size { 0 } else { index + 1 };
                r.ce_completed = r.ce_completed.wrapping_add(1);
                match outcome {
                    Ok(()) if want_irq => r.raise(regs::INTR_CE_DONE),
                    Ok(()) => None,
                    Err(code) => {
                        r.ce_errors = r.ce_errors.wrapping_add(1);
                        ErrorCounts::count(&mut r.errors.ce_desc, code);
                        r.raise(regs::INTR_CE_ERROR)
                    }
                }
            }
        };
        drop(r);
        self.signal(vector);
        true
    }

    fn checksum_step(&self, w: &mut Worker) -> bool {
        let generation = {
            let mut r = lock(&self.regs);
            if let Some((offset, len)) = r.ck_pending.take() {
                let in_range = offset
                    .checked_add(len)
                    .is_some_and(|end| end <= self.cfg.vram_size);
                if !in_range {
                    ErrorCounts::count(&mut r.errors.ck, regs::CK_ERR_RANGE);
                    r.ck_status = regs::CK_STATUS_ERROR
                        | (u32::from(regs::CK_ERR_RANGE) << regs::CK_STATUS_CODE_SHIFT);
                    let v = r.raise(regs::INTR_CK_ERROR);
                    drop(r);
                    self.signal(v);
                    return true;
                }
                w.ck = Some(checksum::Run::new(r.ck_generation, offset, len));
            }
            r.ck_generation
        };
        if w.ck
            .as_ref()
            .is_some_and(|run| run.generation != generation)
        {
            w.ck = None;
        }
        let Some(run) = w.ck.as_mut() else {
            return false;
        };

        let n = run.remaining.min(checksum::CHUNK as u64) as usize;
        let buf = bounce(&mut w.buf, n);
        let read = if n == 0 {
            Ok(())
        } else {
            self.vram.read(run.offset, buf)
        };
        let result = match read {
            Err(e) => {
                log::warn!("gpu checksum read of VRAM at {:#x} failed: {e}", run.offset);
                Some(Err(regs::CK_ERR_READ))
            }
            Ok(()) => {
                sha2::Digest::update(&mut run.hasher, &*buf);
                // n <= remaining and offset + remaining <= vram_size: no overflow.
                run.offset += n as u64;
                run.remaining -= n as u64;
                let mut r = lock(&self.regs);
                if r.ck_generation == generation {
                    r.ck_bytes = r.ck_bytes.wrapping_add(n as u64);
                }
                (run.remaining == 0).then_some(Ok(()))
            }
        };
        let Some(result) = result else { return true };
        let Some(run) = w.ck.take() else { return true };

        let mut r = lock(&self.regs);
        if r.ck_generation != generation {
            return true;
        }
        let vector = match result {
            Ok(()) => {
                r.ck_digest = sha2::Digest::finalize(run.hasher).into();
                r.ck_status = regs::CK_STATUS_DONE;
                r.raise(regs::INTR_CK_DONE)
            }
            Err(code) => {
                ErrorCounts::count(&mut r.errors.ck, code);
                r.ck_status =
                    regs::CK_STATUS_ERROR | (u32::from(code) << regs::CK_STATUS_CODE_SHIFT);
                r.raise(regs::INTR_CK_ERROR)
            }
        };
        drop(r);
        self.signal(vector);
        true
    }
}

impl PciFunction for GpuDevice {
    /// IDs, BARs, PM, MSI-X, PCIe (with FLR), DSN, Resizable BAR; see [`pci`].
    fn config_space(&self) -> ConfigSpace {
        self.config_space.clone()
    }

    /// Registers as [`regs`] says (unknown offsets inside BAR0: 0), trapped VRAM through
    /// [`VramAccess`], the MSI-X BAR as zeros (QEMU emulates the table and PBA); all
    /// unclaimed bytes (other BARs, accesses past a BAR's end, a failed VRAM read) as
    /// all-ones.
    fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]) {
        buf.fill(UNCLAIMED_READ);
        if !p2plab_pci::access_in_bar(offset, buf.len(), self.bar_size(bar)) {
            log::debug!("gpu read outside BAR{bar}: {offset:#x}+{:#x}", buf.len());
            return;
        }
        match bar {
            REG_BAR => {
                let r = lock(&self.regs);
                for (i, b) in buf.iter_mut().enumerate() {
                    let at = offset + i as u64;
                    let dword_off = at & !3;
                    let v = r.read_reg(self.cfg.vram_size, dword_off);
                    *b = v.to_le_bytes()[(at - dword_off) as usize];
                }
            }
            VRAM_BAR => {
                if let Err(e) = self.vram.read(offset, buf) {
                    log::warn!("gpu trapped VRAM read at {offset:#x} failed: {e}");
                    buf.fill(UNCLAIMED_READ);
                }
            }
            MSIX_BAR => buf.fill(0),
            _ => {}
        }
    }

    /// Records register writes (aligned dwords or qwords); returns whether one gave the
    /// worker something to do (CE_TAIL, a CE_CTRL edge, a checksum start).
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if !p2plab_pci::access_in_bar(offset, data.len(), self.bar_size(bar)) {
            log::debug!("gpu write outside BAR{bar}: {offset:#x}+{:#x}", data.len());
            return false;
        }
        match bar {
            REG_BAR => {
                if offset & 3 != 0 || !(data.len() == 4 || data.len() == 8) {
                    log::debug!(
                        "gpu BAR0 write of {} bytes at {offset:#x}: ignored",
                        data.len()
                    );
                    return false;
                }
                let mut vectors = Vec::new();
                let mut work = false;
                {
                    let mut r = lock(&self.regs);
                    for (i, dw) in data.chunks_exact(4).enumerate() {
                        let val = u32::from_le_bytes([dw[0], dw[1], dw[2], dw[3]]);
                        let fx = r.write_reg(offset + 4 * i as u64, val);
                        vectors.extend(fx.vector);
                        work |= fx.work;
                    }
                }
                if work {
                    self.kick();
                }
                vectors.into_iter().for_each(|v| self.irq.signal(v));
                work
            }
            VRAM_BAR => {
                if let Err(e) = self.vram.write(offset, data) {
                    log::warn!("gpu trapped VRAM write at {offset:#x} failed: {e}");
                }
                false
            }
            _ => false,
        }
    }

    /// BAR2's address: copy ranges lying partly in VRAM are refused against it.
    fn bar_moved(&self, bar: usize, address: Option<u64>) {
        if bar == VRAM_BAR {
            *lock(&self.vram_bar) = address;
        }
    }

    /// Without Bus Master Enable the copy engine does not fetch or copy (posted work
    /// waits); enabling it asks for processing.
    fn set_bus_master(&self, enabled: bool) {
        lock(&self.regs).bus_master = enabled;
        if enabled {
            self.kick();
        }
    }

    /// Function reset (FLR or conventional): registers to power-on values, both engines
    /// stopped and their in-flight work abandoned (never completed), Bus Master off.
    fn reset(&self) {
        let mut r = lock(&self.regs);
        let ce_generation = r.ce_generation.wrapping_add(1);
        let ck_generation = r.ck_generation.wrapping_add(1);
        *r = Regs {
            ce_generation,
            ck_generation,
            errors: r.errors,
            ..Regs::default()
        };
        drop(r);
        // The worker must drop what it holds and clear CE_STATUS.ACTIVE.
        self.kick();
    }

    /// One bounded step of each engine. Returns `true` if anything was done.
    fn process(&self) -> bool {
        self.work.store(false, Ordering::SeqCst);
        let mut w = lock(&self.worker);
        let copied = self.copy_step(&mut w);
        let hashed = self.checksum_step(&mut w);
        copied || hashed
    }

    fn needs_processing(&self) -> bool {
        self.work.load(Ordering::Acquire)
    }

    /// `ce_descriptor_errors` and `ce_error_<code>` (copy descriptors completed with an
    /// error: `length`, `overflow`, `src_fault`, `dst_fault`, `flags`, `vram_range`), `ce_halts` and
    /// `ce_halt_<reason>` (`bad_ring`, `bad_tail`, `fetch_fault`, `writeback_fault`),
    /// `ck_errors` and `ck_error_<code>` (`range`, `read`). Unlike `CE_ERRORS` they
    /// survive resets.
    fn error_counters(&self) -> Vec<(String, u64)> {
        lock(&self.regs).errors.export()
    }
}
