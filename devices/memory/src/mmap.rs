//! Shared mappings of file descriptors, with bounds-checked access.

use crate::DmaError;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

/// A `MAP_SHARED` mapping of `len` bytes of an fd at `fd_offset`.
///
/// The memory is shared with other processes (QEMU, the guest), so it is only ever
/// accessed through raw-pointer copies, never through Rust references. Every mapping is
/// `MADV_DONTDUMP`: it holds guest RAM or a BAR's memory, which a core dump of the lab
/// must not carry.
pub struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
    /// Set for a file another process may shrink: checked before every access.
    size_check: Option<SizeCheck>,
}

/// The file behind a mapping that can shrink under us (a client's unsealed memfd).
struct SizeCheck {
    file: Arc<File>,
    /// File offset of the mapping's first byte.
    map_offset: u64,
}

impl SizeCheck {
    /// Whether mapping bytes `off..off+len` still lie inside the file (one `fstat`).
    fn covers(&self, off: usize, len: usize) -> Result<(), DmaError> {
        let size = self
            .file
            .metadata()
            .map_err(|e| DmaError::Io(e.to_string()))?
            .len();
        let offset = self.map_offset.saturating_add(off as u64);
        if offset.saturating_add(len as u64) > size {
            return Err(DmaError::BackingShrunk {
                offset,
                len: len as u64,
                size,
            });
        }
        Ok(())
    }
}

// SAFETY: the mapping is plain shared memory; every access is a bounds-checked raw copy,
// so concurrent use from several threads is no different from DMA by several masters.
unsafe impl Send for MmapRegion {}
// SAFETY: as above; no interior state besides the immutable pointer and length (and
// the size check's file, which is only fstat'ed).
unsafe impl Sync for MmapRegion {}

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
    /// Map `len` bytes of `fd` at `fd_offset`, shared; read-only unless `writable`.
    ///
    /// For files whose size nobody else can change: the lab's own memfds, or a client's
    /// memfd sealed with `F_SEAL_SHRINK` ([`seal_against_shrink`](crate::seal_against_shrink)).
    pub fn new(
        fd: &impl AsRawFd,
        fd_offset: u64,
        len: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        let ptr = map(fd, fd_offset, len, writable)?;
        Ok(Self {
            ptr,
            len,
            writable,
            size_check: None,
        })
    }

    /// Map `len` bytes of `file` at `fd_offset` like [`MmapRegion::new`], for a file
    /// another process may shrink (a client's memfd that cannot be sealed): every access
    /// first compares the file's current size (`fstat`) with the bytes it touches and
    /// fails with [`DmaError::BackingShrunk`] instead of faulting. The region keeps
    /// `file` open for that.
    ///
    /// The check narrows the hazard but cannot close it: a truncation that lands between
    /// the check and the copy still raises SIGBUS. Sealing is the complete answer.
    pub fn new_size_checked(
        file: Arc<File>,
        fd_offset: u64,
        len: usize,
        writable: bool,
    ) -> std::io::Result<Self> {
        let ptr = map(&*file, fd_offset, len, writable)?;
        Ok(Self {
            ptr,
            len,
            writable,
            size_check: Some(SizeCheck {
                file,
                map_offset: fd_offset,
            }),
        })
    }

    /// Whether every access checks the backing file's size first
    /// ([`MmapRegion::new_size_checked`]).
    pub fn is_size_checked(&self) -> bool {
        self.size_check.is_some()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Raw base pointer (for `preadv`-style I/O by callers that checked bounds).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, DmaError> {
        let bad = DmaError::Unmapped {
            addr: offset,
            len: len as u64,
        };
        let off = usize::try_from(offset).map_err(|_| bad.clone())?;
        let end = off.checked_add(len).ok_or(bad.clone())?;
        if end > self.len {
            return Err(bad);
        }
        if let Some(sc) = &self.size_check {
            sc.covers(off, len)?;
        }
        Ok(off)
    }

    fn check_write(&self, offset: u64, len: usize) -> Result<usize, DmaError> {
        if !self.writable {
            return Err(DmaError::ReadOnly { addr: offset });
        }
        self.check(offset, len)
    }

    /// Copy `buf.len()` bytes out of the mapping at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let off = self.check(offset, buf.len())?;
        // SAFETY: off..off+len is inside the mapping (checked); buf is a distinct Rust
        // allocation, so the ranges cannot overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copy `data` into the mapping at `offset`.
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaError> {
        let off = self.check_write(offset, data.len())?;
        // SAFETY: bounds checked and mapping writable; data is a distinct allocation.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        Ok(())
    }

    /// Fill `len` bytes at `offset` with `byte`.
    pub fn fill(&self, offset: u64, len: usize, byte: u8) -> Result<(), DmaError> {
        let off = self.check_write(offset, len)?;
        // SAFETY: bounds checked and mapping writable.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(off), byte, len) };
        Ok(())
    }

    /// Copy between two mappings (or within one; overlap allowed).
    pub fn copy_to(
        &self,
        src_off: u64,
        dst: &MmapRegion,
        dst_off: u64,
        len: usize,
    ) -> Result<(), DmaError> {
        let s = self.check(src_off, len)?;
        let d = dst.check_write(dst_off, len)?;
        // SAFETY: both ranges are inside their mappings (checked); `copy` tolerates overlap.
        unsafe { std::ptr::copy(self.ptr.as_ptr().add(s), dst.ptr.as_ptr().add(d), len) };
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
        let off = self.check_write(offset, len)?;
        let mut done = 0usize;
        while done < len {
            let foff = libc::off_t::try_from(file_offset + done as u64)
                .map_err(|_| DmaError::Io("file offset too large".into()))?;
            // SAFETY: the destination range off+done..off+len is inside the writable
            // mapping (checked above).
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    self.ptr.as_ptr().add(off + done).cast(),
                    len - done,
                    foff,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DmaError::Io(e.to_string()));
            }
            if n == 0 {
                return Err(DmaError::Partial {
                    expected: len,
                    completed: done,
                });
            }
            done += n as usize;
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
        let off = self.check(offset, len)?;
        let mut done = 0usize;
        while done < len {
            let foff = libc::off_t::try_from(file_offset + done as u64)
                .map_err(|_| DmaError::Io("file offset too large".into()))?;
            // SAFETY: the source range is inside the mapping (checked above).
            let n = unsafe {
                libc::pwrite(
                    file.as_raw_fd(),
                    self.ptr.as_ptr().add(off + done).cast(),
                    len - done,
                    foff,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DmaError::Io(e.to_string()));
            }
            if n == 0 {
                return Err(DmaError::Partial {
                    expected: len,
                    completed: done,
                });
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Resident pages of the mapping in bytes (mincore), for RSS checks of sparse BARs.
    pub fn resident_bytes(&self) -> u64 {
        let page = 4096usize;
        let pages = self.len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: ptr/len describe our own mapping; vec has one byte per page.
        let r = unsafe { libc::mincore(self.ptr.as_ptr().cast(), self.len, vec.as_mut_ptr()) };
        if r != 0 {
            return 0;
        }
        vec.iter().filter(|b| **b & 1 != 0).count() as u64 * page as u64
    }
}

/// `mmap` `len` bytes of `fd` at `fd_offset`, shared, and keep them out of core dumps.
fn map(
    fd: &impl AsRawFd,
    fd_offset: u64,
    len: usize,
    writable: bool,
) -> std::io::Result<NonNull<u8>> {
    if len == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "zero-length mapping",
        ));
    }
    let off = libc::off_t::try_from(fd_offset)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "offset too large"))?;
    let prot = if writable {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    // SAFETY: a fresh mapping at a kernel-chosen address; fd validity is checked by
    // the kernel; we never alias existing Rust memory.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            off,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // Guest memory stays out of core dumps (libvfio-user does the same for every
    // client mapping): a crash report must not carry the guest's data.
    // SAFETY: p..p+len is the mapping just created; madvise only changes its flags.
    if unsafe { libc::madvise(p, len, libc::MADV_DONTDUMP) } != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: p/len came from the successful mmap above; nobody else has seen it.
        unsafe { libc::munmap(p, len) };
        return Err(e);
    }
    NonNull::new(p.cast::<u8>()).ok_or_else(std::io::Error::last_os_error)
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped exactly once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let f = memfd_create("t", 8192).unwrap();
        let m = MmapRegion::new(&f, 0, 8192, true).unwrap();
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
        let m = MmapRegion::new(&f, 0, 4096, false).unwrap();
        assert_eq!(m.write(0, &[1]), Err(DmaError::ReadOnly { addr: 0 }));
    }

    #[test]
    fn file_io_is_zero_copy_into_mapping() {
        let f = memfd_create("t", 4096).unwrap();
        let m = MmapRegion::new(&f, 0, 4096, true).unwrap();
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
    fn sparse_memfd_is_not_resident() {
        let f = memfd_create("t", 1 << 30).unwrap();
        let m = MmapRegion::new(&f, 0, 1 << 30, true).unwrap();
        assert_eq!(m.resident_bytes(), 0);
        m.fill(0, 8192, 0xaa).unwrap();
        assert_eq!(m.resident_bytes(), 8192);
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
        let f = memfd_create("t", 8192).unwrap();
        let m = MmapRegion::new(&f, 0, 8192, true).unwrap();
        assert!(vm_flags(m.as_ptr()).contains(&"dd".to_string()));
        let c = MmapRegion::new_size_checked(Arc::new(f), 4096, 4096, false).unwrap();
        assert!(vm_flags(c.as_ptr()).contains(&"dd".to_string()));
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
            m.fill(4000, 200, 0),
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
        let own = MmapRegion::new(&src, 0, 4096, true).unwrap();
        assert!(!own.is_size_checked());
        assert!(matches!(
            m.copy_to(4096, &own, 0, 16),
            Err(DmaError::BackingShrunk { .. })
        ));
        assert!(matches!(
            own.copy_to(0, &m, 4096, 16),
            Err(DmaError::BackingShrunk { .. })
        ));
    }
}
