//! One vocabulary for "where does this bus address live", shared by the vfio-user
//! server (which knows the client's DMA maps) and the fabric (which routes every DMA a
//! device issues), and the one piecewise walk both use to move data.

use crate::{bounce_from_file, bounce_to_file, BusAddr, DmaError, MmapRegion};
use std::fs::File;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// Where guest memory at a bus address lives, as the client (QEMU) described it.
#[derive(Clone)]
pub enum HostRoute {
    /// In an fd-backed DMA map: access `region` at `offset` directly.
    Mapped {
        region: Arc<MmapRegion>,
        offset: u64,
    },
    /// In a map without fd: relayed with `VFIO_USER_DMA_READ/WRITE` messages
    /// ([`HostMemory::relay_read`] / [`HostMemory::relay_write`]).
    Relay,
}

impl std::fmt::Debug for HostRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostRoute::Mapped { offset, .. } => write!(f, "Mapped {{ offset: {offset:#x} }}"),
            HostRoute::Relay => f.write_str("Relay"),
        }
    }
}

/// One whole DMA map of a client ([`HostMemory::map_at`]), for caches of routes.
#[derive(Clone, Debug)]
pub struct HostMap {
    /// Its bus range.
    pub start: u64,
    pub len: u64,
    pub readable: bool,
    pub writable: bool,
    /// Where `start` lives (a mapped route's offset grows with the address).
    pub route: HostRoute,
}

/// Guest memory as one client connection maps it (implemented by the vfio-user
/// server's DMA map table; the fabric routes to it after the BAR windows).
pub trait HostMemory: Send + Sync {
    /// The map containing `addr` and how many bytes from `addr` stay inside it (<= len).
    fn resolve(&self, addr: BusAddr, len: u64, write: bool) -> Result<(HostRoute, u64), DmaError>;
    /// The whole map containing `addr`, or None. A caller that keeps it must hold
    /// [`HostMemory::generation`]'s value read before the lookup and drop the map when
    /// the counter moves; it must not keep the region alive (the client waits for a
    /// removed map's users before it answers the unmap).
    fn map_at(&self, addr: BusAddr) -> Option<HostMap>;
    /// A counter the client bumps after every change to its maps (map, unmap, clear).
    fn generation(&self) -> Arc<AtomicU64>;
    /// The client reads guest memory at `addr` into `buf` for us.
    fn relay_read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError>;
    /// The client writes `data` to guest memory at `addr` for us.
    fn relay_write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError>;
}

/// Where one piece of a transfer goes.
pub enum Piece<'a> {
    /// A mapping (a BAR's memory, guest RAM), at this offset.
    Mapped(&'a MmapRegion, u64),
    /// Guest memory only the client can reach.
    Relay(&'a dyn HostMemory),
}

/// A bus that splits a transfer into pieces, each inside one mapping or one relayed map.
/// [`read`], [`write()`], [`write_from_file`] and [`read_to_file`] move the data for any
/// such bus, so every [`DmaSpace`](crate::DmaSpace) built on one moves it the same way.
pub trait Pieces {
    /// Walk `addr..addr+len`: `op(piece, offset into the transfer, bytes)` once per
    /// piece, in order; the first error stops the walk.
    fn pieces(
        &self,
        addr: BusAddr,
        len: usize,
        write: bool,
        op: &mut dyn FnMut(Piece<'_>, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError>;
}

/// `addr + at`, or [`DmaError::Overflow`].
fn at_addr(addr: BusAddr, at: usize, len: usize) -> Result<BusAddr, DmaError> {
    addr.checked_add(at as u64).ok_or(DmaError::Overflow {
        addr: addr.0,
        len: len as u64,
    })
}

/// `file_offset + at`, or [`DmaError::Overflow`].
fn at_file(file_offset: u64, at: usize, len: usize) -> Result<u64, DmaError> {
    file_offset
        .checked_add(at as u64)
        .ok_or(DmaError::Overflow {
            addr: file_offset,
            len: len as u64,
        })
}

/// The device reads `buf.len()` bytes at `addr`.
pub fn read<P: Pieces + ?Sized>(bus: &P, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
    let len = buf.len();
    bus.pieces(addr, len, false, &mut |piece, at, n| {
        let dst = &mut buf[at..at + n];
        match piece {
            Piece::Mapped(m, off) => m.read(off, dst),
            Piece::Relay(c) => c.relay_read(at_addr(addr, at, len)?, dst),
        }
    })
}

/// The device writes `data` at `addr`.
pub fn write<P: Pieces + ?Sized>(bus: &P, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
    let len = data.len();
    bus.pieces(addr, len, true, &mut |piece, at, n| {
        let src = &data[at..at + n];
        match piece {
            Piece::Mapped(m, off) => m.write(off, src),
            Piece::Relay(c) => c.relay_write(at_addr(addr, at, len)?, src),
        }
    })
}

/// The device writes `len` bytes of `file` at `file_offset` to `addr`: `pread` straight
/// into each mapped piece, a bounce buffer for relayed ones.
pub fn write_from_file<P: Pieces + ?Sized>(
    bus: &P,
    addr: BusAddr,
    file: &File,
    file_offset: u64,
    len: usize,
) -> Result<(), DmaError> {
    bus.pieces(addr, len, true, &mut |piece, at, n| {
        let foff = at_file(file_offset, at, len)?;
        match piece {
            Piece::Mapped(m, off) => m.read_from_file(off, file, foff, n),
            Piece::Relay(c) => {
                let a = at_addr(addr, at, len)?;
                bounce_from_file(file, foff, n, |b| c.relay_write(a, b))
            }
        }
    })
}

/// The device reads `len` bytes at `addr` into `file` at `file_offset`: `pwrite`
/// straight from each mapped piece, a bounce buffer for relayed ones.
pub fn read_to_file<P: Pieces + ?Sized>(
    bus: &P,
    addr: BusAddr,
    file: &File,
    file_offset: u64,
    len: usize,
) -> Result<(), DmaError> {
    bus.pieces(addr, len, false, &mut |piece, at, n| {
        let foff = at_file(file_offset, at, len)?;
        match piece {
            Piece::Mapped(m, off) => m.write_to_file(off, file, foff, n),
            Piece::Relay(c) => {
                let a = at_addr(addr, at, len)?;
                bounce_to_file(file, foff, n, |b| c.relay_read(a, b))
            }
        }
    })
}
