//! The client's DMA map table and server→client DMA.
//!
//! Every DMA_MAP is recorded. Maps that came with an fd (guest RAM with
//! `memory-backend-memfd,share=on`) are mmapped and accessed directly; maps without
//! one (anonymous guest RAM, BARs of vfio-user devices, ROM) are reached with
//! VFIO_USER_DMA_READ/WRITE messages ("relay").
//!
//! # A client's file must not fault the lab
//! The client keeps the file it mapped and may truncate it; touching a page of our
//! mapping past the file's new end would raise SIGBUS and kill every device of the
//! process. So a regular file is sealed with `F_SEAL_SHRINK` when it allows that (QEMU's
//! `memory-backend-memfd` is created sealed by default, `seal=on`); one that cannot be
//! sealed (`seal=off`, a tmpfs file of `memory-backend-file`) is mapped with a size
//! check before every access ([`MmapRegion::new_size_checked`]), and a DMA into a
//! truncated part fails with [`DmaError::BackingShrunk`]. Such files stay open while
//! mapped: maps of one file share a descriptor, and at most [`MAX_CHECKED_FILES`]
//! distinct unsealable files are accepted per connection.

use crate::link::Link;
use crate::Errno;
use p2plab_memory::{
    route, BusAddr, DmaError, DmaSpace, HostMap, HostMemory, HostRoute, MmapRegion, Piece, Pieces,
};
use std::collections::BTreeMap;
use std::fs::{File, Metadata};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use vfio_user_proto::wire::DmaAccess;
use vfio_user_proto::{Command, DmaRwLayout, DMA_MAP_FLAG_READ, DMA_MAP_FLAG_WRITE};
use zerocopy::IntoBytes;

/// Most distinct files per connection that could not be sealed against shrinking (each
/// stays open while mapped, so a client must not be able to pile up descriptors).
pub const MAX_CHECKED_FILES: usize = 64;

/// A file's identity: (st_dev, st_ino).
type FileId = (u64, u64);

struct MapEntry {
    size: u64,
    flags: u32,
    /// The mapping and the offset of `iova` inside it (fd offsets need not be page
    /// aligned; the mapping starts at the page below).
    backing: Option<(Arc<MmapRegion>, u64)>,
    /// The client's file, kept open for the mapping's size check (unsealable files only).
    checked_file: Option<(FileId, Arc<File>)>,
}

/// One DMA map as recorded (for diagnostics and tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMapInfo {
    pub iova: u64,
    pub size: u64,
    /// `DMA_MAP_FLAG_READ` / `DMA_MAP_FLAG_WRITE`.
    pub flags: u32,
    /// The map came with an fd and is accessed directly.
    pub fd_backed: bool,
    /// Its file could not be sealed against shrinking: every access checks its size.
    pub size_checked: bool,
}

/// The DMA view of one client connection: its map table and the relay.
///
/// Implements [`DmaSpace`] (fd maps direct, others relayed). After the client
/// disconnects every access fails with [`DmaError::Unmapped`] or [`DmaError::Relay`].
pub struct ClientDma {
    link: Arc<Link>,
    maps: RwLock<BTreeMap<u64, MapEntry>>,
    /// Bumped after every change to `maps`, under its lock ([`HostMemory::generation`]).
    generation: Arc<AtomicU64>,
    max_maps: AtomicUsize,
    unmap_wait: Duration,
    layout: DmaRwLayout,
    /// Most data bytes per DMA_READ (see [`vfio_user_proto::QEMU_SAFE_DMA_READ`]).
    max_read: usize,
    /// Add `F_SEAL_SHRINK` to the client's files where possible ([`ServerConfig::seal_dma_fds`]).
    ///
    /// [`ServerConfig::seal_dma_fds`]: crate::ServerConfig::seal_dma_fds
    seal_fds: bool,
}

const PAGE: u64 = 4096;

impl ClientDma {
    pub(crate) fn new(
        link: Arc<Link>,
        max_maps: usize,
        unmap_wait: Duration,
        layout: DmaRwLayout,
        max_read: usize,
        seal_fds: bool,
    ) -> Self {
        ClientDma {
            link,
            maps: RwLock::new(BTreeMap::new()),
            generation: Arc::default(),
            max_maps: AtomicUsize::new(max_maps),
            unmap_wait,
            layout,
            max_read: max_read.max(1),
            seal_fds,
        }
    }

    fn read_maps(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, MapEntry>> {
        self.maps.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_maps(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, MapEntry>> {
        self.maps.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The map containing `addr`, and how many bytes from `addr` stay inside it (<= len).
    pub fn resolve(&self, addr: u64, len: u64, write: bool) -> Result<(HostRoute, u64), DmaError> {
        let maps = self.read_maps();
        let unmapped = DmaError::Unmapped { addr, len };
        let (&iova, e) = maps.range(..=addr).next_back().ok_or(unmapped.clone())?;
        let off = addr - iova; // iova <= addr by the range query
        if off >= e.size {
            return Err(unmapped);
        }
        if write && e.flags & DMA_MAP_FLAG_WRITE == 0 {
            return Err(DmaError::ReadOnly { addr });
        }
        if !write && e.flags & DMA_MAP_FLAG_READ == 0 {
            return Err(unmapped);
        }
        let n = len.min(e.size - off);
        let r = match &e.backing {
            Some((region, delta)) => HostRoute::Mapped {
                region: region.clone(),
                offset: delta + off,
            },
            None => HostRoute::Relay,
        };
        Ok((r, n))
    }

    /// VFIO_USER_DMA_READ: the client reads guest memory at `addr` into `buf`, in
    /// chunks of at most `max_data_xfer_size` and [`ServerConfig::max_dma_read`]
    /// (QEMU 11.1 truncates a reply bigger than its socket buffer and loses the stream).
    ///
    /// [`ServerConfig::max_dma_read`]: crate::ServerConfig::max_dma_read
    ///
    /// Callable from any thread except the connection's reader thread (it would wait
    /// for a reply only it can receive: an error is returned instead). Never holds a
    /// lock while waiting. Must not be called while a client request is being handled
    /// (QEMU runs DMA under the BQL that the vCPU waiting for our reply holds).
    pub fn relay_read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let chunk = self
            .link
            .max_xfer
            .load(Ordering::Relaxed)
            .min(self.max_read)
            .max(1);
        let mut done = 0usize;
        while done < buf.len() {
            let n = chunk.min(buf.len() - done);
            let a = checked_addr(addr, done, buf.len())?;
            let req = DmaAccess {
                address: a,
                count: n as u64,
            };
            let reply = self.link.request(Command::DMA_READ, req.as_bytes())?;
            let data = self
                .layout
                .decode_read_reply(&reply, n)
                .map_err(|e| DmaError::Relay(format!("bad DMA_READ reply: {e}")))?;
            buf[done..done + n].copy_from_slice(data);
            done += n;
        }
        Ok(())
    }

    /// VFIO_USER_DMA_WRITE: the client writes `data` to guest memory at `addr`. Same
    /// threading rules as [`ClientDma::relay_read`].
    pub fn relay_write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let chunk = self.link.max_xfer.load(Ordering::Relaxed).max(1);
        let mut done = 0usize;
        while done < data.len() {
            let n = chunk.min(data.len() - done);
            let a = checked_addr(addr, done, data.len())?;
            let payload = self
                .layout
                .encode_write(a, &data[done..done + n])
                .ok_or_else(|| DmaError::Relay("DMA_WRITE too large".into()))?;
            self.link.request(Command::DMA_WRITE, &payload)?;
            done += n;
        }
        Ok(())
    }

    /// The maps currently recorded, in address order.
    pub fn maps(&self) -> Vec<DmaMapInfo> {
        self.read_maps()
            .iter()
            .map(|(&iova, e)| DmaMapInfo {
                iova,
                size: e.size,
                flags: e.flags,
                fd_backed: e.backing.is_some(),
                size_checked: e.checked_file.is_some(),
            })
            .collect()
    }

    /// Whether the client connection is still up.
    pub fn is_connected(&self) -> bool {
        !self.link.is_closed()
    }

    pub(crate) fn set_max_maps(&self, n: usize) {
        self.max_maps.store(n, Ordering::Relaxed);
    }

    /// DMA_MAP: record `iova..iova+size`, mmapping `fd` at `fd_offset` if given.
    pub(crate) fn add(
        &self,
        iova: u64,
        size: u64,
        flags: u32,
        fd: Option<(OwnedFd, u64)>,
    ) -> Result<(), Errno> {
        if size == 0 || flags & !(DMA_MAP_FLAG_READ | DMA_MAP_FLAG_WRITE) != 0 {
            return Err(Errno::EINVAL);
        }
        let end = iova.checked_add(size).ok_or(Errno::EINVAL)?;
        if self.overlaps(iova, end) {
            return Err(Errno::EEXIST);
        }
        // Map outside the table lock: mmap of a large range can take a while.
        let mut checked_file = None;
        let backing = match fd {
            None => None,
            Some((fd, fd_offset)) => {
                let delta = fd_offset % PAGE;
                let len = size.checked_add(delta).ok_or(Errno::EINVAL)?;
                let len = usize::try_from(len).map_err(|_| Errno::EINVAL)?;
                let file = File::from(fd);
                let meta = file.metadata().map_err(Errno::from)?;
                check_fd_covers(&meta, fd_offset, size)?;
                let writable = flags & DMA_MAP_FLAG_WRITE != 0;
                let map_offset = fd_offset - delta;
                let region = if self.needs_size_check(&file, &meta) {
                    let (id, file) = self.checked_file(file, &meta)?;
                    checked_file = Some((id, file.clone()));
                    MmapRegion::new_size_checked(file, map_offset, len, writable)
                } else {
                    MmapRegion::new(Arc::new(file), map_offset, len, writable)
                }
                .map_err(Errno::from)?;
                Some((Arc::new(region), delta))
            }
        };
        let mut maps = self.write_maps();
        if maps.len() >= self.max_maps.load(Ordering::Relaxed) {
            return Err(Errno::ENOSPC);
        }
        if overlaps_in(&maps, iova, end) {
            return Err(Errno::EEXIST);
        }
        maps.insert(
            iova,
            MapEntry {
                size,
                flags,
                backing,
                checked_file,
            },
        );
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Whether a map of `file` needs a size check before each access: a regular file
    /// that carries no `F_SEAL_SHRINK` and could not be given one. Other fd types
    /// (device files) have no size that could shrink under the mapping.
    fn needs_size_check(&self, file: &File, meta: &Metadata) -> bool {
        if !meta.file_type().is_file() {
            return false;
        }
        let sealed = if self.seal_fds {
            p2plab_memory::seal_against_shrink(file)
        } else {
            p2plab_memory::seals(file).map(|s| s & libc::F_SEAL_SHRINK as u32 != 0)
        };
        match sealed {
            Ok(sealed) => !sealed,
            Err(e) => {
                log::debug!("reading the seals of a DMA map's fd: {e}");
                true
            }
        }
    }

    /// The open file a size-checked map keeps: shared with the maps of the same file
    /// already recorded, or `file` itself if it is new and the per-connection limit
    /// ([`MAX_CHECKED_FILES`]) allows one more.
    fn checked_file(&self, file: File, meta: &Metadata) -> Result<(FileId, Arc<File>), Errno> {
        let id = (meta.dev(), meta.ino());
        let maps = self.read_maps();
        let mut known = Vec::new();
        for (fid, f) in maps.values().filter_map(|e| e.checked_file.as_ref()) {
            if *fid == id {
                return Ok((id, f.clone()));
            }
            if !known.contains(fid) {
                known.push(*fid);
            }
        }
        if known.len() >= MAX_CHECKED_FILES {
            log::warn!(
                "DMA map refused: the client shares more than {MAX_CHECKED_FILES} files that \
                 cannot be sealed against shrinking (F_SEAL_SHRINK)"
            );
            return Err(Errno::ENOSPC);
        }
        Ok((id, Arc::new(file)))
    }

    fn overlaps(&self, iova: u64, end: u64) -> bool {
        overlaps_in(&self.read_maps(), iova, end)
    }

    /// DMA_UNMAP of exactly one earlier map; waits for in-flight users of its mapping.
    pub(crate) fn remove(&self, iova: u64, size: u64) -> Result<(), Errno> {
        let e = {
            let mut maps = self.write_maps();
            let e = match maps.get(&iova) {
                Some(e) if e.size == size => maps.remove(&iova),
                _ => None,
            };
            self.generation.fetch_add(1, Ordering::Release);
            e
        };
        let e = e.ok_or(Errno::EINVAL)?;
        self.retire(iova, e);
        Ok(())
    }

    /// DMA_UNMAP with the ALL flag, and disconnect.
    pub(crate) fn clear(&self) {
        let all = {
            let mut maps = self.write_maps();
            self.generation.fetch_add(1, Ordering::Release);
            std::mem::take(&mut *maps)
        };
        for (iova, e) in all {
            self.retire(iova, e);
        }
    }

    /// Drop a removed map once nobody uses its mapping any more (bounded wait: a user
    /// that holds a [`HostRoute::Mapped`] region for longer only delays the munmap,
    /// which stays memory-safe because the region is reference counted).
    fn retire(&self, iova: u64, e: MapEntry) {
        let Some((region, _)) = e.backing else { return };
        let start = Instant::now();
        let mut nap = Duration::from_micros(20);
        while Arc::strong_count(&region) > 1 {
            if start.elapsed() >= self.unmap_wait {
                log::warn!(
                    "DMA map {iova:#x} still in use after {:?}; unmapping anyway",
                    self.unmap_wait
                );
                break;
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(5));
        }
    }
}

/// A map must lie inside its file: pages of a shared mapping past the end of a regular
/// file (a memfd) raise SIGBUS on access, which would kill every device in the process
/// the first time the device DMAs there (a later truncation is handled by sealing or
/// the size check, see the module docs). Other fd types (device files) report no
/// meaningful size and are left to mmap to refuse.
fn check_fd_covers(meta: &Metadata, fd_offset: u64, size: u64) -> Result<(), Errno> {
    if !meta.file_type().is_file() {
        return Ok(());
    }
    let end = fd_offset.checked_add(size).ok_or(Errno::EINVAL)?;
    if end > meta.len() {
        log::debug!(
            "DMA map of fd bytes {fd_offset:#x}..{end:#x} beyond its size {:#x}",
            meta.len()
        );
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn overlaps_in(maps: &BTreeMap<u64, MapEntry>, iova: u64, end: u64) -> bool {
    if let Some((&a, e)) = maps.range(..end).next_back() {
        // The last map starting below `end` overlaps iff it ends above `iova`.
        return a.saturating_add(e.size) > iova;
    }
    false
}

fn checked_addr(addr: u64, done: usize, len: usize) -> Result<u64, DmaError> {
    addr.checked_add(done as u64).ok_or(DmaError::Overflow {
        addr,
        len: len as u64,
    })
}

impl Pieces for ClientDma {
    /// Map by map: each piece stays inside one DMA map.
    fn pieces(
        &self,
        addr: BusAddr,
        len: usize,
        write: bool,
        op: &mut dyn FnMut(Piece<'_>, usize, usize) -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let mut done = 0usize;
        while done < len {
            let a = checked_addr(addr.0, done, len)?;
            let (r, n) = self.resolve(a, (len - done) as u64, write)?;
            let n = n as usize; // n <= len - done, which came from a usize
            match &r {
                HostRoute::Mapped { region, offset } => {
                    op(Piece::Mapped(region, *offset), done, n)?
                }
                HostRoute::Relay => op(Piece::Relay(self), done, n)?,
            }
            done += n;
        }
        Ok(())
    }
}

impl HostMemory for ClientDma {
    fn resolve(&self, addr: BusAddr, len: u64, write: bool) -> Result<(HostRoute, u64), DmaError> {
        ClientDma::resolve(self, addr.0, len, write)
    }
    fn map_at(&self, addr: BusAddr) -> Option<HostMap> {
        let maps = self.read_maps();
        let (&start, e) = maps.range(..=addr.0).next_back()?;
        (addr.0 - start < e.size).then(|| HostMap {
            start,
            len: e.size,
            readable: e.flags & DMA_MAP_FLAG_READ != 0,
            writable: e.flags & DMA_MAP_FLAG_WRITE != 0,
            route: match &e.backing {
                Some((region, delta)) => HostRoute::Mapped {
                    region: region.clone(),
                    offset: *delta,
                },
                None => HostRoute::Relay,
            },
        })
    }
    fn generation(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }
    fn relay_read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        ClientDma::relay_read(self, addr.0, buf)
    }
    fn relay_write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        ClientDma::relay_write(self, addr.0, data)
    }
}

impl DmaSpace for ClientDma {
    fn read(&self, addr: BusAddr, buf: &mut [u8]) -> Result<(), DmaError> {
        route::read(self, addr, buf)
    }
    fn write(&self, addr: BusAddr, data: &[u8]) -> Result<(), DmaError> {
        route::write(self, addr, data)
    }
    fn write_from_file(&self, a: BusAddr, f: &File, o: u64, l: usize) -> Result<(), DmaError> {
        route::write_from_file(self, a, f, o, l)
    }
    fn read_to_file(&self, a: BusAddr, f: &File, o: u64, l: usize) -> Result<(), DmaError> {
        route::read_to_file(self, a, f, o, l)
    }
}
