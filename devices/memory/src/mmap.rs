//! Shared mappings of files (guest RAM a client handed over, a BAR's own memfd), built
//! on rust-vmm's `vm-memory`: its fd-backed `MmapRegion` owns the mapping, its
//! `VolatileSlice` does the bounds-checked copies, and its `ReadVolatile`/`WriteVolatile`
//! move file data straight into and out of the mapping.

use crate::DmaError;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, ReadVolatile, VolatileMemory, VolatileMemoryError, VolatileSlice, WriteVolatile,
};

/// A `MAP_SHARED` mapping of `len` bytes of a file at a file offset.
///
/// The memory is shared with other processes (QEMU, the guest), so it is only ever
/// accessed through `vm-memory`'s volatile slices, never through Rust references. Every
/// mapping is `MADV_DONTDUMP`: it holds guest RAM or a BAR's memory, which a core dump of
/// the lab must not carry.
pub struct MmapRegion {
    map: vm_memory::MmapRegion<()>,
    writable: bool,
    /// Set for a file another process may shrink: checked before every access.
    size_checked: bool,
}

/// Create an anonymous memfd of `size` bytes (sparse: costs nothing until touched).
///
/// It cannot be sealed; memory handed to another process while the lab maps it too
/// should come from [`memfd_create_sealed`](crate::memfd_create_sealed).
pub fn memfd_create(name: &str, size: u64) -> std::io::Result<File> {
    let cname = std::ffi::CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: cname is a valid NUL-terminated string; flags are constants.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size)?;
    Ok(file)
}

impl MmapRegion {
    /// Map `len` bytes of `file` at `fd_offset`, shared; read-only unless `writable`.
    ///
    /// For files whose size nobody else can change: the lab's own memfds, or a client's
    /// memfd sealed with `F_SEAL_SHRINK` ([`seal_against_shrink`](crate::seal_against_shrink)).
    /// The region keeps `file` open while it lives.
    pub fn new(
        file: Arc<File>,
        fd_offset: u64,
        len: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        Ok(Self {
            map: map(file, fd_offset, len, writable)?,
            writable,
            size_checked: false,
        })
    }

    /// Map `len` bytes of `file` at `fd_offset` like [`MmapRegion::new`], for a file
    /// another process may shrink (a client's memfd that cannot be sealed): every access
    /// first compares the file's current size (`fstat`) with the bytes it touches and
    /// fails with [`DmaError::BackingShrunk`] instead of faulting.
    ///
    /// The check narrows the hazard but cannot close it: a truncation that lands between
    /// the check and the copy still raises SIGBUS. Sealing is the complete answer.
    pub fn new_size_checked(
        file: Arc<File>,
        fd_offset: u64,
        len: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        Ok(Self {
            map: map(file, fd_offset, len, writable)?,
            writable,
            size_checked: true,
        })
    }

    /// Whether every access checks the backing file's size first
    /// ([`MmapRegion::new_size_checked`]).
    pub fn is_size_checked(&self) -> bool {
        self.size_checked
    }

    pub fn len(&self) -> usize {
        self.map.size()
    }

    pub fn is_empty(&self) -> bool {
        self.map.size() == 0
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Whether mapping bytes `off..off+len` still lie inside the file (one `fstat`).
    fn covers(&self, off: usize, len: usize) -> Result<(), DmaError> {
        let Some(fo) = self.map.file_offset() else {
            return Ok(());
        };
        let size = fo
            .file()
            .metadata()
            .map_err(|e| DmaError::Io(e.to_string()))?
            .len();
        let offset = fo.start().saturating_add(off as u64);
        if offset.saturating_add(len as u64) > size {
            return Err(DmaError::BackingShrunk {
                offset,
                len: len as u64,
                size,
            });
        }
        Ok(())
    }

    /// The bytes `offset..offset+len` of the mapping, bounds- (and size-) checked.
    fn slice(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_, ()>, DmaError> {
        let bad = DmaError::Unmapped {
            addr: offset,
            len: len as u64,
        };
        let off = usize::try_from(offset).map_err(|_| bad.clone())?;
        let s = self.map.get_slice(off, len).map_err(|_| bad)?;
        if self.size_checked {
            self.covers(off, len)?;
        }
        Ok(s)
    }

    fn slice_mut(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_, ()>, DmaError> {
        if !self.writable {
            return Err(DmaError::ReadOnly { addr: offset });
        }
        self.slice(offset, len)
    }

    /// Copy `buf.len()` bytes out of the mapping at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.slice(offset, buf.len())?.copy_to(buf);
        Ok(())
    }

    /// Copy `data` into the mapping at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaError> {
        self.slice_mut(offset, data.len())?.copy_from(data);
        Ok(())
    }

    /// `pread` from `file` at `file_offset` straight into the mapping (zero copy).
    pub fn read_from_file(
        &self,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: usize,
    ) -> Result<(), DmaError> {
        let mut dst = self.slice_mut(offset, len)?;
        let mut src = FileAt {
            file,
            offset: file_offset,
        };
        let mut done = 0;
        while done < len {
            match src.read_volatile(&mut dst) {
                Ok(0) => {
                    return Err(DmaError::Partial {
                        expected: len,
                        completed: done,
                    })
                }
                Ok(n) => {
                    done += n;
                    dst = dst.offset(n).map_err(io_error)?;
                }
                Err(VolatileMemoryError::IOError(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    /// `pwrite` to `file` at `file_offset` straight from the mapping (zero copy).
    pub fn write_to_file(
        &self,
        offset: u64,
        file: &File,
        file_offset: u64,
        len: usize,
    ) -> Result<(), DmaError> {
        let mut src = self.slice(offset, len)?;
        let mut dst = FileAt {
            file,
            offset: file_offset,
        };
        let mut done = 0;
        while done < len {
            match dst.write_volatile(&src) {
                Ok(0) => {
                    return Err(DmaError::Partial {
                        expected: len,
                        completed: done,
                    })
                }
                Ok(n) => {
                    done += n;
                    src = src.offset(n).map_err(io_error)?;
                }
                Err(VolatileMemoryError::IOError(e))
                    if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }
}

fn io_error(e: VolatileMemoryError) -> DmaError {
    DmaError::Io(e.to_string())
}

/// A file at a position that advances with each transfer: `pread`/`pwrite`, so one file
/// serves many concurrent transfers (vm-memory's own impls for `File` use the shared
/// file position).
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl FileAt<'_> {
    fn off(&self) -> Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset).map_err(|_| {
            VolatileMemoryError::IOError(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "file offset too large",
            ))
        })
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let off = self.off()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the guard's pointer and length describe memory the slice covers, valid
        // for writes while the guard lives; the kernel writes at most `len` bytes there.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                guard.len(),
                off,
            )
        };
        if n < 0 {
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        let n = n as usize; // n >= 0 checked
        buf.bitmap().mark_dirty(0, n);
        self.offset += n as u64;
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let off = self.off()?;
        let guard = buf.ptr_guard();
        // SAFETY: the guard's pointer and length describe memory the slice covers, valid
        // for reads while the guard lives.
        let n = unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                guard.len(),
                off,
            )
        };
        if n < 0 {
            return Err(VolatileMemoryError::IOError(std::io::Error::last_os_error()));
        }
        self.offset += n as u64;
        Ok(n as usize)
    }
}

/// `mmap` `len` bytes of `file` at `fd_offset`, shared, kept out of core dumps.
fn map(
    file: Arc<File>,
    fd_offset: u64,
    len: usize,
    writable: bool,
) -> std::io::Result<vm_memory::MmapRegion<()>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
    if len == 0 {
        return Err(invalid("zero-length mapping"));
    }
    libc::off_t::try_from(fd_offset).map_err(|_| invalid("offset too large"))?;
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let map = MmapRegionBuilder::new(len)
        .with_file_offset(FileOffset::from_arc(file, fd_offset))
        .with_mmap_prot(prot)
        .with_mmap_flags(libc::MAP_SHARED)
        .build()
        .map_err(|e| match e {
            vm_memory::mmap::MmapRegionError::Mmap(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
    // Guest memory stays out of core dumps (libvfio-user does the same for every
    // client mapping): a crash report must not carry the guest's data.
    // SAFETY: as_ptr()..+size is the mapping vm-memory just created and owns; madvise
    // only changes its flags.
    if unsafe { libc::madvise(map.as_ptr().cast(), map.size(), libc::MADV_DONTDUMP) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let f = memfd_create("t", 8192).unwrap();
        let m = MmapRegion::new(Arc::new(f), 0, 8192, true).unwrap();
        m.write(8190, &[1, 2]).unwrap();
        assert!(m.write(8191, &[1, 2]).is_err());
        assert!(m.read(u64::MAX, &mut [0u8; 1]).is_err());
        let mut b = [0u8; 2];
        m.read(8190, &mut b).unwrap();
        assert_eq!(b, [1, 2]);
    }

    #[test]
    fn read_only_rejects_writes() {
        let f = memfd_create("t", 4096).unwrap();
        let m = MmapRegion::new(Arc::new(f), 0, 4096, false).unwrap();
        assert_eq!(m.write(0, &[1]), Err(DmaError::ReadOnly { addr: 0 }));
    }

    #[test]
    fn file_io_is_zero_copy_into_mapping() {
        let f = memfd_create("t", 4096).unwrap();
        let m = MmapRegion::new(Arc::new(f), 0, 4096, true).unwrap();
        let src = memfd_create("src", 4096).unwrap();
        crate::write_all_at(&src, b"hello", 100).unwrap();
        m.read_from_file(10, &src, 100, 5).unwrap();
        let mut b = [0u8; 5];
        m.read(10, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(matches!(
            m.read_from_file(0, &src, 4094, 5),
            Err(DmaError::Partial { .. })
        ));
    }

    #[test]
    fn a_sparse_memfd_costs_only_what_was_written() {
        use std::os::unix::fs::MetadataExt;
        let f = Arc::new(memfd_create("t", 1 << 30).unwrap());
        let m = MmapRegion::new(f.clone(), 0, 1 << 30, true).unwrap();
        assert_eq!(f.metadata().unwrap().blocks(), 0);
        m.write(0, &[0xaa; 8192]).unwrap();
        assert_eq!(f.metadata().unwrap().blocks() * 512, 8192);
    }

    #[test]
    fn large_transfers_cross_the_file_in_pieces() {
        // 3 MiB through a pipe-sized boundary: pread/pwrite return short counts on some
        // files; the loops must carry on where they stopped.
        let len = 3 << 20;
        let m = MmapRegion::new(
            Arc::new(memfd_create("t", len as u64).unwrap()),
            0,
            len,
            true,
        )
        .unwrap();
        let src = memfd_create("src", len as u64).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        crate::write_all_at(&src, &data, 0).unwrap();
        m.read_from_file(0, &src, 0, len).unwrap();
        let out = memfd_create("out", len as u64).unwrap();
        m.write_to_file(0, &out, 0, len).unwrap();
        let mut back = vec![0u8; len];
        crate::read_exact_at(&out, &mut back, 0).unwrap();
        assert!(back == data);
    }

    /// The `VmFlags` of the mapping that starts at `addr`, from /proc/self/smaps.
    fn vm_flags(addr: *mut u8) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{:x}-", addr as usize);
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&start));
        assert!(lines.next().is_some(), "mapping {start} not in smaps");
        let flags = lines
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .expect("VmFlags line");
        flags.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn mappings_are_left_out_of_core_dumps() {
        let f = Arc::new(memfd_create("t", 8192).unwrap());
        let m = MmapRegion::new(f.clone(), 0, 8192, true).unwrap();
        assert!(vm_flags(m.map.as_ptr()).contains(&"dd".to_string()));
        let c = MmapRegion::new_size_checked(f, 4096, 4096, false).unwrap();
        assert!(vm_flags(c.map.as_ptr()).contains(&"dd".to_string()));
    }

    #[test]
    fn a_shrunk_file_fails_the_access_instead_of_faulting() {
        let f = Arc::new(memfd_create("t", 3 * 4096).unwrap());
        let m = MmapRegion::new_size_checked(f.clone(), 4096, 2 * 4096, true).unwrap();
        assert!(m.is_size_checked());
        m.write(4096, b"tail").unwrap();
        f.set_len(2 * 4096).unwrap(); // the mapping's second page is gone
        let mut b = [0u8; 4];
        m.read(0, &mut b).expect("first page still backed");
        let gone = DmaError::BackingShrunk {
            offset: 2 * 4096,
            len: 4,
            size: 2 * 4096,
        };
        assert_eq!(m.read(4096, &mut b), Err(gone.clone()));
        assert_eq!(m.write(4096, b"tail"), Err(gone));
        assert!(matches!(
            m.write(4000, &[0; 200]),
            Err(DmaError::BackingShrunk { .. })
        ));
        let src = memfd_create("src", 4096).unwrap();
        assert!(matches!(
            m.read_from_file(4096, &src, 0, 16),
            Err(DmaError::BackingShrunk { .. })
        ));
        assert!(matches!(
            m.write_to_file(4096, &src, 0, 16),
            Err(DmaError::BackingShrunk { .. })
        ));
        let own = MmapRegion::new(Arc::new(src), 0, 4096, true).unwrap();
        assert!(!own.is_size_checked());
    }
}
