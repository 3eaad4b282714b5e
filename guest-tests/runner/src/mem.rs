//! Mappings (p2pmem, page-aligned RAM) and the data pattern.
//!
//! Patterns are written and checked with explicit 64-bit volatile accesses: glibc's
//! memset/memcmp are slow under TCG and must not touch device memory in odd widths.

use std::fs::File;
use std::os::fd::AsRawFd;

pub const MIB: usize = 1 << 20;

/// An mmap'ed range, unmapped on drop.
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    /// Anonymous, page-aligned RAM (suitable for O_DIRECT).
    pub fn ram(len: usize) -> Result<Mapping, String> {
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap {len} bytes of RAM: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    /// `len` bytes of P2P memory from `/sys/bus/pci/devices/<bdf>/p2pmem/allocate`.
    pub fn p2pmem(bdf: &str, len: usize) -> Result<Mapping, String> {
        let path = format!("/sys/bus/pci/devices/{bdf}/p2pmem/allocate");
        let ptr = map_shared(&path, len, libc::PROT_READ | libc::PROT_WRITE)?;
        Ok(Mapping { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Fill with the pattern of `seed` (word i of the device range at `base` + i*8).
    pub fn fill(&self, seed: u64) {
        let words = self.ptr.cast::<u64>();
        for i in 0..self.len / 8 {
            // SAFETY: i*8 < len, the mapping is writable and 8-byte aligned (page aligned).
            unsafe { words.add(i).write_volatile(pattern(seed, i as u64)) };
        }
    }

    /// Check the pattern of `seed`; the first mismatch as an error.
    pub fn verify(&self, seed: u64) -> Result<(), String> {
        let words = self.ptr.cast::<u64>();
        let mut bad = 0u64;
        let mut first = None;
        for i in 0..self.len / 8 {
            // SAFETY: i*8 < len, the mapping is readable and 8-byte aligned.
            let got = unsafe { words.add(i).read_volatile() };
            let want = pattern(seed, i as u64);
            if got != want {
                bad += 1;
                first.get_or_insert((i * 8, got, want));
            }
        }
        match first {
            None => Ok(()),
            Some((off, got, want)) => Err(format!(
                "data mismatch: {bad} of {} words differ, first at byte {off:#x}: got {got:#018x}, want {want:#018x}",
                self.len / 8
            )),
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Word `i` of pattern `seed`: distinct per word, per seed, never all-zero or all-ones.
pub fn pattern(seed: u64, i: u64) -> u64 {
    let x = (seed ^ 0x5050_4c41_4200_0000)
        .wrapping_add(i)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 29) ^ 0x0123_4567_89ab_cdef
}

/// Open a namespace block device for O_DIRECT I/O.
pub fn open_direct(dev: &str) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .map_err(|e| format!("open {dev} O_DIRECT: {e}"))
}

/// Move `m` to/from `f` at `off` in `chunk`-sized O_DIRECT calls, straight from/into the
/// mapping. `write`: pwrite (mapping → device), else pread (device → mapping).
pub fn direct_io(
    f: &File,
    m: &Mapping,
    off: u64,
    chunk: usize,
    write: bool,
) -> Result<(), std::io::Error> {
    let mut done = 0usize;
    while done < m.len() {
        let n = chunk.min(m.len() - done);
        // SAFETY: [ptr+done, ptr+done+n) lies inside the live mapping.
        let buf = unsafe { m.ptr().add(done) };
        let pos = libc::off_t::try_from(off + done as u64)
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        // SAFETY: buf points to n valid bytes of the mapping; the fd is open.
        let r = unsafe {
            if write {
                libc::pwrite(f.as_raw_fd(), buf.cast(), n, pos)
            } else {
                libc::pread(f.as_raw_fd(), buf.cast(), n, pos)
            }
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("short transfer at {}", off + done as u64),
            ));
        }
        done += r as usize;
    }
    Ok(())
}

/// A new shared mapping of `len` bytes at offset 0 of the file at `path` (a sysfs
/// resource or the p2pmem allocator), opened read-write. The kernel keeps what the
/// mapping shows alive for its life; the fd may close.
pub fn map_shared(path: &str, len: usize, prot: libc::c_int) -> Result<*mut u8, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: a new shared mapping of an open file; nothing else aliases it yet.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            prot,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!(
            "mmap {len:#x} bytes of {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(p.cast())
}
