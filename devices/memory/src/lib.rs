//! p2plab-memory: bus addresses, the DMA-space trait, and shared-memory mappings.
//!
//! # What it is
//! The vocabulary every p2plab device model and the fabric share:
//! - [`BusAddr`]: an address a device puts on the PCIe bus (a guest-physical address,
//!   since the lab runs without a vIOMMU). A newtype so it cannot be mixed with BAR
//!   offsets or file offsets.
//! - [`DmaSpace`]: what a bus master can do with a bus address: read, write, and the
//!   zero-copy file transfers the NVMe model uses (`pread` straight into the target).
//! - [`InterruptSink`]: how a device raises an MSI-X vector.
//! - [`HostMemory`] / [`HostRoute`]: guest memory as a client connection maps it (fd-backed
//!   or relayed), and [`Pieces`] with the [`route`] functions: the one walk that moves a
//!   transfer piece by piece, used by the vfio-user server and the fabric alike.
//! - [`MmapRegion`]: a shared mapping of a file (a guest-RAM memfd handed over by QEMU,
//!   or a BAR's own memfd) through rust-vmm's `vm-memory` (fd-backed region, volatile
//!   slices, `ReadVolatile`/`WriteVolatile` file I/O), with bounds-checked copy and
//!   zero-copy `pread`/`pwrite`, kept out of core dumps (`MADV_DONTDUMP`).
//! - File seals ([`seal_against_shrink`], [`memfd_create_sealed`]): a file another process
//!   holds cannot be truncated under our mapping (which would raise SIGBUS and kill the
//!   lab); a client file that cannot be sealed is mapped with a size check before each
//!   access ([`MmapRegion::new_size_checked`]).
//!
//! # Architecture
//! Device crates forbid `unsafe`; they only see the traits here. This is the one crate
//! that maps memory: [`MmapRegion`] wraps `vm-memory`'s region, every access goes through
//! one of its bounds-checked `VolatileSlice`s.
//!
//! # What it does not implement
//! Routing (which mapping a bus address hits) and counting: that is `p2plab-fabric`.
//! Guest memory is shared with a running guest, so byte contents can change under a copy;
//! that is the nature of DMA and not a memory-safety issue for plain byte copies, which is
//! why all access goes through volatile slices and never through Rust references.

use std::fs::File;

mod mmap;
pub mod route;
mod seal;
pub use mmap::{memfd_create, MmapRegion};
pub use route::{HostMap, HostMemory, HostRoute, Piece, Pieces};
pub use seal::{memfd_create_sealed, seal_against_shrink, seals, SIZE_SEALS};

/// A bus address (guest physical address) as seen by a DMA master.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BusAddr(pub u64);

impl BusAddr {
    /// `self + off`, or `None` on overflow (guest-controlled values must never wrap).
    pub fn checked_add(self, off: u64) -> Option<BusAddr> {
        self.0.checked_add(off).map(BusAddr)
    }
}

impl std::fmt::LowerHex for BusAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Why a DMA failed. Device models turn these into guest-visible statuses (NVMe: Data
/// Transfer Error); they are never a reason to panic.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DmaError {
    /// Nothing is mapped at (part of) this range.
    #[error("no mapping covers bus address {addr:#x}+{len:#x}")]
    Unmapped { addr: u64, len: u64 },
    /// The target mapping does not allow this direction.
    #[error("bus address {addr:#x} is mapped read-only")]
    ReadOnly { addr: u64 },
    /// The device's Bus Master Enable bit is clear.
    #[error("bus mastering is disabled")]
    BusMasterDisabled,
    /// A range whose end overflows 64 bits.
    #[error("range {addr:#x}+{len:#x} overflows")]
    Overflow { addr: u64, len: u64 },
    /// The client (QEMU) relay failed or the client went away.
    #[error("relayed DMA through the client failed: {0}")]
    Relay(String),
    /// Reading or writing the backing file failed.
    #[error("backing file I/O failed: {0}")]
    Io(String),
    /// The transfer moved fewer bytes than asked.
    #[error("partial transfer: expected {expected} bytes, completed {completed}")]
    Partial { expected: usize, completed: usize },
    /// The file behind a mapping (a client's memfd) was truncated below the bytes the
    /// access needs (file offset `offset`, `len` bytes); touching them would fault.
    #[error("the file behind the mapping shrank to {size:#x} bytes, below {offset:#x}+{len:#x}")]
    BackingShrunk { offset: u64, len: u64, size: u64 },
}

/// Direction-neutral view of a bus as one DMA master sees it.
///
/// Implementations route each address (own BAR, peer BAR, guest RAM, client relay) and
/// count the bytes; the device model never knows which route was taken.
pub trait DmaSpace: Send + Sync {
    /// Device reads `buf.len()` bytes at `addr` (the target is read).
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError>;
    /// Device writes `data` at `addr` (the target is written).
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError>;

    /// Device writes `len` bytes read from `file` at `file_offset` to `addr`.
    /// Routed implementations `pread` straight into the target mapping (zero copy); this
    /// default bounces through a buffer.
    fn write_from_file(
        &self,
        addr: BusAddr,
        file: &File,
        file_offset: u64,
        len: usize,
    ) -> Result<(), DmaError> {
        bounce_from_file(file, file_offset, len, |buf| self.write(addr, buf))
    }

    /// Device reads `len` bytes at `addr` and they are written to `file` at `file_offset`.
    /// Routed implementations `pwrite` straight from the source mapping.
    fn read_to_file(
        &self,
        addr: BusAddr,
        file: &File,
        file_offset: u64,
        len: usize,
    ) -> Result<(), DmaError> {
        bounce_to_file(file, file_offset, len, |buf| self.read(addr, buf))
    }
}

impl<T: DmaSpace + ?Sized> DmaSpace for std::sync::Arc<T> {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        (**self).read(addr, buf)
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        (**self).write(addr, data)
    }
    fn write_from_file(&self, a: BusAddr, f: &File, o: u64, l: usize) -> Result<(), DmaError> {
        (**self).write_from_file(a, f, o, l)
    }
    fn read_to_file(&self, a: BusAddr, f: &File, o: u64, l: usize) -> Result<(), DmaError> {
        (**self).read_to_file(a, f, o, l)
    }
}

/// How a device raises an interrupt: one MSI-X vector (or vector 0 for INTx/MSI).
pub trait InterruptSink: Send + Sync {
    fn signal(&self, vector: u16);

    /// Whether interrupts go out as MSI-X now (the host installed MSI-X vectors). A
    /// device's own masks meant for pin-based and MSI interrupts (NVMe INTMS/INTMC) do
    /// not apply then: MSI-X has its own per-vector mask. The default: no.
    fn msix_enabled(&self) -> bool {
        false
    }
}

/// File → a target without a mapping: `pread` `len` bytes at `offset` into a buffer and
/// hand it to `write` (e.g. a DMA_WRITE relay).
pub fn bounce_from_file(
    file: &File,
    offset: u64,
    len: usize,
    write: impl FnOnce(&[u8]) -> Result<(), DmaError>,
) -> Result<(), DmaError> {
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, offset)?;
    write(&buf)
}

/// A source without a mapping → file: `read` fills a `len`-byte buffer, which is then
/// `pwrite`n at `offset`.
pub fn bounce_to_file(
    file: &File,
    offset: u64,
    len: usize,
    read: impl FnOnce(&mut [u8]) -> Result<(), DmaError>,
) -> Result<(), DmaError> {
    let mut buf = vec![0u8; len];
    read(&mut buf)?;
    write_all_at(file, &buf, offset)
}

/// `pread` until `buf` is full; a short file reads as an error (never silently zero).
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> Result<(), DmaError> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, offset)
        .map_err(|e| DmaError::Io(e.to_string()))
}

/// `pwrite` all of `buf`.
pub fn write_all_at(file: &File, buf: &[u8], offset: u64) -> Result<(), DmaError> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
        .map_err(|e| DmaError::Io(e.to_string()))
}

/// A flat, in-memory DMA space for unit tests of device models: `size` bytes at bus
/// address `base`, everything else unmapped.
pub struct TestDmaSpace {
    base: u64,
    mem: std::sync::Mutex<Vec<u8>>,
}

impl TestDmaSpace {
    pub fn new(base: u64, size: usize) -> Self {
        Self {
            base,
            mem: std::sync::Mutex::new(vec![0; size]),
        }
    }
    fn range(&self, addr: BusAddr, len: usize) -> Result<std::ops::Range<usize>, DmaError> {
        let bad = DmaError::Unmapped {
            addr: addr.0,
            len: len as u64,
        };
        let start = addr.0.checked_sub(self.base).ok_or(bad.clone())?;
        let start = usize::try_from(start).map_err(|_| bad.clone())?;
        let end = start.checked_add(len).ok_or(bad.clone())?;
        let size = self.mem.lock().unwrap_or_else(|p| p.into_inner()).len();
        if end > size {
            return Err(bad);
        }
        Ok(start..end)
    }
    /// Test helper: copy bytes into the space.
    pub fn poke(&self, addr: u64, data: &[u8]) {
        self.write(BusAddr(addr), data)
            .expect("poke outside TestDmaSpace");
    }
    /// Test helper: copy bytes out of the space.
    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(BusAddr(addr), &mut v)
            .expect("peek outside TestDmaSpace");
        v
    }
}

impl DmaSpace for TestDmaSpace {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.mem.lock().unwrap_or_else(|p| p.into_inner())[r]);
        Ok(())
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        let r = self.range(addr, data.len())?;
        self.mem.lock().unwrap_or_else(|p| p.into_inner())[r].copy_from_slice(data);
        Ok(())
    }
}

/// Records every signalled vector, for unit tests.
#[derive(Default)]
pub struct RecordingInterrupts {
    pub signalled: std::sync::Mutex<Vec<u16>>,
    /// What [`InterruptSink::msix_enabled`] answers.
    pub msix: std::sync::atomic::AtomicBool,
}

impl RecordingInterrupts {
    pub fn take(&self) -> Vec<u16> {
        std::mem::take(&mut *self.signalled.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl InterruptSink for RecordingInterrupts {
    fn signal(&self, vector: u16) {
        self.signalled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(vector);
    }
    fn msix_enabled(&self) -> bool {
        self.msix.load(std::sync::atomic::Ordering::Relaxed)
    }
}
