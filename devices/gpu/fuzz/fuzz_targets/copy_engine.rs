//! Fuzz the GPU model's copy engine and checksum engine as a hostile driver would drive
//! them: register writes (any offset, size, value), descriptor rings with wild source
//! and destination addresses, lengths past VRAM, rings that point into themselves or
//! into VRAM, tails past the ring, resets and Bus Master flips mid-copy, trapped VRAM
//! accesses — over an in-memory bus with guest RAM and the device's own VRAM window
//! (the fabric's self route), both backed by flat buffers reused from input to input.
//!
//! Checks, besides "no panic":
//! - no DMA while Bus Master is off (the `PciFunction` contract);
//! - nothing written outside a target: every DMA write is either a descriptor's status
//!   word (4 bytes at a fetched descriptor + 28) or lies inside `[dst, dst + len)` of a
//!   descriptor the engine fetched just before (one of the last four 32-byte reads);
//! - the checksum engine writes nothing and reads VRAM only inside `[0, vram_size)`;
//! - the worker goes idle within a bound once the driver stops;
//! - CE_HEAD stays inside the ring; unclaimed BAR reads return all-ones.
//!
//! Input: an `arbitrary`-decoded list of [`Op`]s.
#![no_main]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use p2plab_gpu::copy::{CopyDescriptor, DESC_SIZE, DESC_STATUS_OFFSET};
use p2plab_gpu::{regs, GpuConfig, GpuDevice, VramAccess, MSIX_BAR, REG_BAR};
use p2plab_memory::{BusAddr, DmaError, DmaSpace, RecordingInterrupts};
use p2plab_pci::{PciFunction, UNCLAIMED_READ};
use zerocopy::{FromBytes, IntoBytes};

const RAM_BASE: u64 = 0x10_0000;
const RAM_SIZE: u64 = 1 << 20;
/// Where the host put BAR2 (VRAM) on the bus.
const VRAM_ADDR: u64 = 0x8000_0000;
const VRAM_SIZE: u64 = 1 << 20;
/// Every `process` call does one bounded step per engine; a full ring of 65536
/// descriptors takes at most one call each, plus the checksum's 1 MiB steps.
const IDLE_BOUND: usize = 2 * regs::CE_RING_MAX_ENTRIES as usize + 64;
/// 32-byte reads remembered by [`Bus`].
const FETCHED_KEPT: usize = 4;

const PAGE: u64 = 4096;

/// `size` zero-filled bytes at `base`: a flat buffer reused from input to input (zeroing
/// megabytes per input would dominate the run time); the pages written since it was
/// last clean are zeroed when it is taken again.
struct Flat {
    base: u64,
    size: u64,
    inner: Mutex<(Vec<u8>, Vec<bool>)>,
    /// Where the buffer goes back when this is dropped.
    pool: &'static Mutex<Option<(Vec<u8>, Vec<bool>)>>,
}

static RAM_POOL: Mutex<Option<(Vec<u8>, Vec<bool>)>> = Mutex::new(None);
static VRAM_POOL: Mutex<Option<(Vec<u8>, Vec<bool>)>> = Mutex::new(None);

impl Flat {
    fn new(base: u64, size: u64, pool: &'static Mutex<Option<(Vec<u8>, Vec<bool>)>>) -> Self {
        let pages = (size / PAGE) as usize;
        let inner = match pool.lock().unwrap().take() {
            Some((mut bytes, mut dirty)) => {
                for (p, d) in dirty.iter_mut().enumerate() {
                    if std::mem::take(d) {
                        let at = p * PAGE as usize;
                        bytes[at..at + PAGE as usize].fill(0);
                    }
                }
                (bytes, dirty)
            }
            None => (vec![0; size as usize], vec![false; pages]),
        };
        Self {
            base,
            size,
            inner: Mutex::new(inner),
            pool,
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let bad = DmaError::Unmapped {
            addr,
            len: len as u64,
        };
        let end = addr.checked_add(len as u64).ok_or(bad.clone())?;
        if addr < self.base || end > self.base + self.size {
            return Err(bad);
        }
        Ok((addr - self.base) as usize..(end - self.base) as usize)
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.inner.lock().unwrap().0[r]);
        Ok(())
    }

    fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(addr, data.len())?;
        if r.is_empty() {
            return Ok(());
        }
        let mut inner = self.inner.lock().unwrap();
        inner.1[r.start / PAGE as usize..=(r.end - 1) / PAGE as usize].fill(true);
        inner.0[r].copy_from_slice(data);
        Ok(())
    }
}

impl Drop for Flat {
    fn drop(&mut self) {
        let inner = std::mem::take(&mut *self.inner.lock().unwrap());
        *self.pool.lock().unwrap() = Some(inner);
    }
}

/// VRAM as the model's [`VramAccess`] (offsets from 0) and as bus memory behind the
/// VRAM window.
struct Vram(Flat);

impl VramAccess for Vram {
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.0.read(off, buf)
    }
    fn write(&self, off: u64, data: &[u8]) -> Result<(), DmaError> {
        self.0.write(off, data)
    }
    fn len(&self) -> u64 {
        VRAM_SIZE
    }
}

/// The bus: guest RAM and the VRAM window; records what the engine fetched to check
/// where it writes.
struct Bus {
    ram: Flat,
    vram: Arc<Vram>,
    bus_master: AtomicBool,
    /// (address, descriptor) of the last few 32-byte reads. The engine holds one
    /// descriptor at a time and writes only for it, after fetching it: its fetch is at
    /// most two 32-byte reads back (a 32-byte copy's source read may follow it).
    fetched: Mutex<VecDeque<(u64, CopyDescriptor)>>,
}

impl Bus {
    fn vram_off(addr: u64, len: usize) -> Option<u64> {
        let off = addr.checked_sub(VRAM_ADDR)?;
        (off.checked_add(len as u64)? <= VRAM_SIZE).then_some(off)
    }

    #[track_caller]
    fn check_bme(&self, what: &str, addr: BusAddr, len: usize) {
        assert!(
            self.bus_master.load(Ordering::Relaxed),
            "DMA {what} of {len} bytes at {:#x} while Bus Master is off",
            addr.0
        );
    }

    #[track_caller]
    fn check_write_target(&self, addr: u64, len: usize) {
        let fetched = self.fetched.lock().unwrap();
        let end = addr + len as u64;
        let ok = fetched.iter().any(|(at, d)| {
            let status = len == 4 && addr == at + DESC_STATUS_OFFSET;
            let dst = d.dst.get();
            let data = addr >= dst && dst.checked_add(d.len.get()).is_some_and(|e| end <= e);
            status || data
        });
        assert!(
            ok,
            "DMA write of {len} bytes at {addr:#x}: neither a status word nor inside a \
             fetched descriptor's destination"
        );
    }
}

impl DmaSpace for Bus {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        self.check_bme("read", addr, buf.len());
        match Self::vram_off(addr.0, buf.len()) {
            Some(off) => self.vram.read(off, buf)?,
            None => self.ram.read(addr.0, buf)?,
        }
        if buf.len() == DESC_SIZE as usize {
            if let Ok(d) = CopyDescriptor::read_from_bytes(buf) {
                let mut f = self.fetched.lock().unwrap();
                if f.len() == FETCHED_KEPT {
                    f.pop_front();
                }
                f.push_back((addr.0, d));
            }
        }
        Ok(())
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        self.check_bme("write", addr, data.len());
        self.check_write_target(addr.0, data.len());
        match Self::vram_off(addr.0, data.len()) {
            Some(off) => self.vram.write(off, data),
            None => self.ram.write(addr.0, data),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// 32-byte aligned in RAM (rings, descriptors).
    RamSlot(u16),
    Ram(u32),
    Vram(u32),
    /// Straddling the end of RAM or VRAM.
    RamEnd(u8),
    VramEnd(u8),
    Raw(u64),
}

impl Addr {
    fn get(self) -> u64 {
        match self {
            Addr::RamSlot(s) => RAM_BASE + (u64::from(s) * 32) % RAM_SIZE,
            Addr::Ram(o) => RAM_BASE + u64::from(o) % RAM_SIZE,
            Addr::Vram(o) => VRAM_ADDR + u64::from(o) % VRAM_SIZE,
            Addr::RamEnd(b) => RAM_BASE + RAM_SIZE - u64::from(b),
            Addr::VramEnd(b) => VRAM_ADDR + VRAM_SIZE - u64::from(b),
            Addr::Raw(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Len {
    Small(u8),
    Pages(u8),
    Big(u32),
    Raw(u64),
}

impl Len {
    fn get(self) -> u64 {
        match self {
            Len::Small(n) => u64::from(n),
            Len::Pages(n) => u64::from(n) * 4096,
            Len::Big(n) => u64::from(n) % (3 << 20),
            Len::Raw(n) => n,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reg {
    IntrStatus,
    IntrEnable,
    RingBaseLo,
    RingBaseHi,
    RingSize,
    Tail,
    Ctrl,
    CkOffsetLo,
    CkOffsetHi,
    CkLenLo,
    CkLenHi,
    CkCtrl,
    Raw(u16),
}

impl Reg {
    fn offset(self) -> u64 {
        match self {
            Reg::IntrStatus => regs::INTR_STATUS,
            Reg::IntrEnable => regs::INTR_ENABLE,
            Reg::RingBaseLo => regs::CE_RING_BASE_LO,
            Reg::RingBaseHi => regs::CE_RING_BASE_HI,
            Reg::RingSize => regs::CE_RING_SIZE,
            Reg::Tail => regs::CE_TAIL,
            Reg::Ctrl => regs::CE_CTRL,
            Reg::CkOffsetLo => regs::CK_OFFSET_LO,
            Reg::CkOffsetHi => regs::CK_OFFSET_HI,
            Reg::CkLenLo => regs::CK_LEN_LO,
            Reg::CkLenHi => regs::CK_LEN_HI,
            Reg::CkCtrl => regs::CK_CTRL,
            Reg::Raw(o) => u64::from(o),
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Op {
    Write32(Reg, u32),
    Write64(Reg, u64),
    WriteBar {
        bar: u8,
        offset: u64,
        data: Vec<u8>,
    },
    ReadBar {
        bar: u8,
        offset: u64,
        len: u8,
    },
    /// Program and enable a ring at `base` with `size` entries (the driver's way).
    Ring {
        base: Addr,
        size: u16,
    },
    /// A descriptor in the ring last programmed with `Ring`, at slot `slot % size`.
    Desc {
        slot: u16,
        src: Addr,
        dst: Addr,
        len: Len,
        flags: u8,
    },
    /// The doorbell.
    Tail(u16),
    /// Guest CPU stores to RAM (or VRAM through the window).
    Poke {
        at: Addr,
        data: Vec<u8>,
    },
    /// Hash a VRAM range.
    Checksum {
        offset: u32,
        len: Len,
    },
    Process(u8),
    BusMaster(bool),
    Reset,
}

struct Harness {
    dev: GpuDevice,
    bus: Arc<Bus>,
    ring: (u64, u32),
}

impl Harness {
    fn new() -> Self {
        let vram = Arc::new(Vram(Flat::new(0, VRAM_SIZE, &VRAM_POOL)));
        let bus = Arc::new(Bus {
            ram: Flat::new(RAM_BASE, RAM_SIZE, &RAM_POOL),
            vram: vram.clone(),
            bus_master: AtomicBool::new(false),
            fetched: Mutex::new(VecDeque::new()),
        });
        let cfg = GpuConfig {
            vram_size: VRAM_SIZE,
            serial: 1,
        };
        let irq = Arc::new(RecordingInterrupts::default());
        let dev = GpuDevice::new(cfg, bus.clone(), irq, vram).expect("valid config");
        let h = Self {
            dev,
            bus,
            ring: (RAM_BASE, 16),
        };
        h.bus_master(true);
        h
    }

    fn bus_master(&self, on: bool) {
        if on {
            self.bus.bus_master.store(true, Ordering::Relaxed);
            self.dev.set_bus_master(true);
        } else {
            self.dev.set_bus_master(false);
            self.bus.bus_master.store(false, Ordering::Relaxed);
        }
    }

    fn w32(&self, off: u64, v: u32) {
        self.dev.bar_write(REG_BAR, off, &v.to_le_bytes());
    }

    fn r32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(REG_BAR, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn poke(&self, addr: u64, data: &[u8]) {
        if let Some(off) = Bus::vram_off(addr, data.len()) {
            let _ = self.bus.vram.write(off, data);
        } else {
            let _ = self.bus.ram.write(addr, data);
        }
    }

    #[track_caller]
    fn run_to_idle(&self) {
        for _ in 0..IDLE_BOUND {
            if !self.dev.process() && !self.dev.needs_processing() {
                return;
            }
        }
        panic!("process() still busy after {IDLE_BOUND} calls with no new work");
    }

    #[track_caller]
    fn check_registers(&self) {
        let status = self.r32(regs::CE_STATUS);
        let head = self.r32(regs::CE_HEAD);
        if status & regs::CE_STATUS_ENABLED != 0 && status & regs::CE_STATUS_HALTED == 0 {
            let size = self.r32(regs::CE_RING_SIZE);
            // The latched size is not readable; the programmed one bounds it unless the
            // driver rewrote CE_RING_SIZE after enabling, so only the hard bound is sure.
            assert!(
                head < regs::CE_RING_MAX_ENTRIES,
                "CE_HEAD {head} outside any ring (programmed size {size})"
            );
        }
        assert_eq!(self.r32(regs::ID), regs::ID_VALUE);
        assert_eq!(
            self.r32(regs::STATUS) & regs::STATUS_READY,
            regs::STATUS_READY
        );
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Write32(reg, v) => self.w32(reg.offset(), *v),
            Op::Write64(reg, v) => {
                self.dev.bar_write(REG_BAR, reg.offset(), &v.to_le_bytes());
            }
            Op::WriteBar { bar, offset, data } => {
                let data = &data[..data.len().min(16)];
                self.dev.bar_write(usize::from(*bar % 6), *offset, data);
            }
            Op::ReadBar { bar, offset, len } => {
                let bar = usize::from(*bar % 6);
                let mut buf = vec![0u8; usize::from(*len % 16)];
                self.dev.bar_read(bar, *offset, &mut buf);
                let size = self.dev.bar_size(bar);
                if !p2plab_pci::access_in_bar(*offset, buf.len(), size) {
                    assert!(
                        buf.iter().all(|&b| b == UNCLAIMED_READ),
                        "unclaimed read of BAR{bar} at {offset:#x} returned {buf:x?}"
                    );
                }
                if bar == MSIX_BAR && p2plab_pci::access_in_bar(*offset, buf.len(), size) {
                    assert!(buf.iter().all(|&b| b == 0), "MSI-X BAR reads as zeros");
                }
            }
            Op::Ring { base, size } => {
                let base = base.get();
                let size = u32::from(*size % 1024).max(1);
                self.w32(regs::CE_CTRL, 0);
                self.w32(regs::CE_RING_BASE_LO, base as u32);
                self.w32(regs::CE_RING_BASE_HI, (base >> 32) as u32);
                self.w32(regs::CE_RING_SIZE, size);
                self.w32(regs::CE_CTRL, regs::CE_CTRL_ENABLE);
                self.ring = (base, size);
            }
            Op::Desc {
                slot,
                src,
                dst,
                len,
                flags,
            } => {
                let (base, size) = self.ring;
                let at = base.wrapping_add(u64::from(u32::from(*slot) % size) * DESC_SIZE);
                let mut d = CopyDescriptor::default();
                d.src.set(src.get());
                d.dst.set(dst.get());
                d.len.set(len.get());
                d.flags.set(u32::from(*flags & 3));
                self.poke(at, d.as_bytes());
            }
            Op::Tail(t) => self.w32(regs::CE_TAIL, u32::from(*t)),
            Op::Poke { at, data } => self.poke(at.get(), &data[..data.len().min(256)]),
            Op::Checksum { offset, len } => {
                let len = len.get();
                self.w32(regs::CK_OFFSET_LO, *offset);
                self.w32(regs::CK_OFFSET_HI, 0);
                self.w32(regs::CK_LEN_LO, len as u32);
                self.w32(regs::CK_LEN_HI, (len >> 32) as u32);
                self.w32(regs::CK_CTRL, regs::CK_CTRL_START);
            }
            Op::Process(n) => {
                for _ in 0..*n {
                    if !self.dev.process() {
                        break;
                    }
                }
            }
            Op::BusMaster(on) => self.bus_master(*on),
            Op::Reset => {
                self.dev.reset();
                self.bus.bus_master.store(false, Ordering::Relaxed);
            }
        }
        self.check_registers();
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new();
    for op in ops.iter().take(64) {
        h.apply(op);
    }
    h.bus_master(true);
    h.run_to_idle();
    h.check_registers();
});
