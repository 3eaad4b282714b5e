//! The `hostile` group: the runner turns into the devices' driver — theirs unbound —
//! and feeds them invalid values through raw BAR accesses (sysfs `resourceN` mmaps):
//! - `hostile-nvme-regs` (`nvme::regs`): register and doorbell attacks;
//! - `hostile-nvme-dma` (`nvme::dma`): queues and data pointers the controller must
//!   refuse or survive;
//! - `hostile-gpu-ce` (`gpu::copy_engine`): copy descriptors and rings.
//!
//! Each attack is checked against what the NVMe spec (or the GPU's register contract,
//! `devices/gpu/src/regs.rs`) says the device answers — a status code, CSTS.CFS, a
//! per-descriptor error status, a halt — and is followed by a clean reset (CC.EN 1→0,
//! the copy engine disabled). Guest memory the device may touch is laid out with
//! canaries around the targets, so "nothing written outside the target" is checked
//! here; the host checks the device's error counters and DMA counters
//! (`devices/harness/src/assertions.rs`). At the end the drivers are rebound and the
//! devices must work through them; the suite then runs the topology's other cases in
//! the same boot.
//!
//! Memory the devices reach: guest RAM pages locked in place, their bus addresses read
//! from `/proc/self/pagemap` (the guest has no IOMMU: bus address = physical address),
//! the NVMe CMB and the GPU's VRAM through their BARs. "Unmapped" addresses lie above
//! the guest's physical address space, where no RAM, BAR or ROM can be.

mod gpu;
mod nvme;

pub use gpu::copy_engine as gpu_ce;
pub use nvme::{dma as nvme_dma, regs as nvme_regs};

use super::pci::{driver_of, write_sysfs};
use super::Ctx;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// A bus address no device of the lab can reach: above the guest's 40 physical address
/// bits (no RAM, BAR or ROM is ever there).
const UNMAPPED: u64 = 0xdead_0000_0000;
/// Another one, for a second wild address in the same command.
const UNMAPPED2: u64 = 0xbeef_0000_0000;
const PAGE: usize = 4096;

/// PCI Command register bits (`PCI_COMMAND_*`).
const PCI_COMMAND: u64 = 0x04;
const PCI_COMMAND_MEMORY: u16 = 1 << 1;
const PCI_COMMAND_MASTER: u16 = 1 << 2;

/// What an attack case reports: each check as a diagnostic line, the failed ones
/// collected for the case's verdict.
pub struct Checks<'c, 'a> {
    ctx: &'c mut Ctx<'a>,
    fails: Vec<String>,
    passed: usize,
}

impl<'c, 'a> Checks<'c, 'a> {
    fn new(ctx: &'c mut Ctx<'a>) -> Self {
        Self {
            ctx,
            fails: vec![],
            passed: 0,
        }
    }

    /// One expectation: `ok` and what was seen.
    fn check(&mut self, what: &str, ok: bool, seen: impl std::fmt::Display) {
        if ok {
            self.passed += 1;
            self.ctx.diag(&format!("ok: {what}: {seen}"));
        } else {
            self.ctx.diag(&format!("FAILED: {what}: {seen}"));
            self.fails.push(format!("{what}: {seen}"));
        }
    }

    fn diag(&mut self, s: &str) {
        self.ctx.diag(s);
    }

    /// The verdict: every failed check, or how many passed.
    fn verdict(self) -> Result<usize, String> {
        if self.fails.is_empty() {
            Ok(self.passed)
        } else {
            Err(format!(
                "{} of {} checks failed: {}",
                self.fails.len(),
                self.fails.len() + self.passed,
                self.fails.join("; ")
            ))
        }
    }
}

/// A window of a BAR mapped through sysfs `resource<bar>` (possible only while no
/// driver owns the function): every access is a 32- or 64-bit volatile load or store.
pub struct Bar {
    ptr: *mut u8,
    len: usize,
    /// Bus address of the window's first byte.
    pub bus: u64,
}

impl Bar {
    /// `len` bytes at `offset` (page aligned) of BAR `bar` of `bdf`.
    pub fn map(bdf: &str, bar: usize, offset: u64, len: usize) -> Result<Bar, String> {
        let (start, size) = super::gpu::bar_resource(bdf, bar)?;
        if !offset.is_multiple_of(PAGE as u64) || offset.saturating_add(len as u64) > size {
            return Err(format!(
                "{bdf} BAR{bar}: window {offset:#x}+{len:#x} outside its {size:#x} bytes"
            ));
        }
        let path = format!("/sys/bus/pci/devices/{bdf}/resource{bar}");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("open {path}: {e}"))?;
        let off = libc::off_t::try_from(offset).map_err(|_| format!("{path}: offset"))?;
        // SAFETY: a new shared mapping of an open sysfs resource; nothing aliases it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&f),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {path} at {offset:#x}+{len:#x}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Bar {
            ptr: p.cast(),
            len,
            bus: start + offset,
        })
    }

    fn inside(&self, off: usize, n: usize) -> bool {
        off.is_multiple_of(n) && off.checked_add(n).is_some_and(|e| e <= self.len)
    }

    /// The dword at `off` (all-ones for an offset outside the window).
    pub fn r32(&self, off: usize) -> u32 {
        if !self.inside(off, 4) {
            return u32::MAX;
        }
        // SAFETY: inside the live mapping and 4-byte aligned (checked above).
        unsafe { self.ptr.add(off).cast::<u32>().read_volatile() }
    }

    pub fn w32(&self, off: usize, v: u32) {
        if self.inside(off, 4) {
            // SAFETY: inside the live mapping and 4-byte aligned (checked above).
            unsafe { self.ptr.add(off).cast::<u32>().write_volatile(v) }
        }
    }

    pub fn r64(&self, off: usize) -> u64 {
        if !self.inside(off, 8) {
            return u64::MAX;
        }
        // SAFETY: inside the live mapping and 8-byte aligned (checked above).
        unsafe { self.ptr.add(off).cast::<u64>().read_volatile() }
    }

    pub fn w64(&self, off: usize, v: u64) {
        if self.inside(off, 8) {
            // SAFETY: inside the live mapping and 8-byte aligned (checked above).
            unsafe { self.ptr.add(off).cast::<u64>().write_volatile(v) }
        }
    }

    /// Bytes at `off` (a multiple of 8 long), in 64-bit loads.
    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|i| self.r64(off + 8 * i).to_le_bytes())
            .collect()
    }

    /// `data` (a multiple of 8 long) at `off`, in 64-bit stores.
    pub fn write(&self, off: usize, data: &[u8]) {
        for (i, w) in data.chunks_exact(8).enumerate() {
            self.w64(
                off + 8 * i,
                u64::from_le_bytes(w.try_into().unwrap_or_default()),
            );
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Pages of guest RAM locked in place, with their bus addresses: what a driver's DMA
/// buffers are. Accessed with volatile loads and stores (the device writes them).
pub struct DmaPages {
    ptr: *mut u8,
    pages: usize,
    phys: Vec<u64>,
}

impl DmaPages {
    pub fn new(pages: usize) -> Result<DmaPages, String> {
        let len = pages * PAGE;
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE | libc::MAP_LOCKED,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {pages} locked pages: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut m = DmaPages {
            ptr: p.cast(),
            pages,
            phys: vec![],
        };
        for i in 0..pages {
            m.fill(i, 0);
        }
        m.phys = m.lookup()?;
        Ok(m)
    }

    /// Each page's physical address (`/proc/self/pagemap`; needs CAP_SYS_ADMIN).
    fn lookup(&self) -> Result<Vec<u64>, String> {
        let f = std::fs::File::open("/proc/self/pagemap")
            .map_err(|e| format!("open /proc/self/pagemap: {e}"))?;
        let va = self.ptr as u64;
        let mut raw = vec![0u8; self.pages * 8];
        f.read_exact_at(&mut raw, va / PAGE as u64 * 8)
            .map_err(|e| format!("read /proc/self/pagemap: {e}"))?;
        raw.chunks_exact(8)
            .enumerate()
            .map(|(i, e)| {
                let e = u64::from_le_bytes(e.try_into().unwrap_or_default());
                let pfn = e & ((1 << 55) - 1);
                if e >> 63 == 0 || pfn == 0 {
                    Err(format!(
                        "page {i} is not present or its PFN is hidden (pagemap {e:#x})"
                    ))
                } else {
                    Ok(pfn * PAGE as u64)
                }
            })
            .collect()
    }

    /// Bus address of page `i`.
    pub fn bus(&self, i: usize) -> u64 {
        self.phys[i]
    }

    fn word(&self, i: usize, w: usize) -> *mut u64 {
        assert!(i < self.pages && w < PAGE / 8, "page {i} word {w}");
        // SAFETY: inside the mapping (asserted above).
        unsafe { self.ptr.add(i * PAGE + w * 8).cast::<u64>() }
    }

    pub fn r64(&self, i: usize, w: usize) -> u64 {
        // SAFETY: an aligned word of the live mapping.
        unsafe { self.word(i, w).read_volatile() }
    }

    pub fn w64(&self, i: usize, w: usize, v: u64) {
        // SAFETY: an aligned word of the live mapping.
        unsafe { self.word(i, w).write_volatile(v) }
    }

    /// `len` bytes (a multiple of 8) at byte `off` (8-byte aligned) of page `i`.
    pub fn read_at(&self, i: usize, off: usize, len: usize) -> Vec<u8> {
        (0..len / 8)
            .flat_map(|k| self.r64(i, off / 8 + k).to_le_bytes())
            .collect()
    }

    /// `data` (a multiple of 8 long) at byte `off` (8-byte aligned) of page `i`.
    pub fn write_at(&self, i: usize, off: usize, data: &[u8]) {
        for (k, b) in data.chunks_exact(8).enumerate() {
            self.w64(
                i,
                off / 8 + k,
                u64::from_le_bytes(b.try_into().unwrap_or_default()),
            );
        }
    }

    /// Page `i` filled with the canary of `seed` (distinct per page and seed).
    pub fn fill(&self, i: usize, seed: u64) {
        for w in 0..PAGE / 8 {
            self.w64(i, w, canary(seed, i, w));
        }
    }

    /// The pages of `range` that no longer hold the canary of `seed`.
    pub fn changed(&self, range: std::ops::Range<usize>, seed: u64) -> Vec<usize> {
        range
            .filter(|&i| (0..PAGE / 8).any(|w| self.r64(i, w) != canary(seed, i, w)))
            .collect()
    }
}

impl Drop for DmaPages {
    fn drop(&mut self) {
        // SAFETY: ptr and the length came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.pages * PAGE) };
    }
}

fn canary(seed: u64, page: usize, word: usize) -> u64 {
    crate::mem::pattern(seed ^ 0xca4a_1e55, (page * PAGE / 8 + word) as u64)
}

/// Sets bits of the PCI Command register of `bdf` through sysfs `config` (the driver
/// that owned them is gone: Bus Master was cleared by its remove).
fn set_command(bdf: &str, bits: u16) -> Result<u16, String> {
    let path = format!("/sys/bus/pci/devices/{bdf}/config");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open {path}: {e}"))?;
    let mut b = [0u8; 2];
    f.read_exact_at(&mut b, PCI_COMMAND)
        .map_err(|e| format!("read {path}: {e}"))?;
    let cmd = u16::from_le_bytes(b) | bits;
    f.write_all_at(&cmd.to_le_bytes(), PCI_COMMAND)
        .map_err(|e| format!("write {path}: {e}"))?;
    Ok(cmd)
}

/// Unbinds `driver` from `bdf` and turns Memory Space and Bus Master on, so the runner
/// can drive the function itself.
fn take_over(ctx: &mut Ctx, bdf: &str, driver: &str) -> Result<(), String> {
    let bound = driver_of(bdf);
    if bound.as_deref() != Some(driver) {
        return Err(format!("{bdf} is bound to {bound:?}, want {driver}"));
    }
    write_sysfs(&format!("/sys/bus/pci/drivers/{driver}/unbind"), bdf)?;
    if let Some(d) = driver_of(bdf) {
        return Err(format!("{bdf} still bound to {d} after unbind"));
    }
    let cmd = set_command(bdf, PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)?;
    ctx.diag(&format!(
        "{bdf}: {driver} unbound; the runner drives it (PCI command {cmd:#06x})"
    ));
    Ok(())
}

/// Binds `driver` to `bdf` again.
fn hand_back(bdf: &str, driver: &str) -> Result<(), String> {
    write_sysfs(&format!("/sys/bus/pci/drivers/{driver}/bind"), bdf)?;
    match driver_of(bdf) {
        Some(d) if d == driver => Ok(()),
        other => Err(format!(
            "{bdf} is bound to {other:?} after binding {driver}"
        )),
    }
}

/// Polls `done` every 100 µs until it returns `Some` or `limit` passes.
fn poll<T>(limit: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
    let t = Instant::now();
    loop {
        if let Some(v) = done() {
            return Some(v);
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}
