//! Host limits for `p2plab bench`, measured by the bench process itself in the same run,
//! before any guest boots: the copies the device processes do on a guest's behalf, at
//! their fastest on this host. A P2P read is a `pread` from the namespace file (page
//! cache) into the BAR's memfd mapping, and a 4 KiB random read is one 4 KiB `pread`;
//! no emulated device can beat these.

use anyhow::Context;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;
/// Buffer and file size: large enough to leave the CPU caches.
const BUF: usize = 256 * MIB;
/// Samples per limit (the median is the figure).
pub const SAMPLES: usize = 5;
/// Shortest time of one sample.
const MIN_SAMPLE: Duration = Duration::from_millis(250);

/// One host limit and its samples.
pub struct Limit {
    /// Name in the printout and `bench.json` (`host_memcpy`, ...).
    pub name: &'static str,
    pub unit: &'static str,
    pub what: &'static str,
    pub samples: Vec<f64>,
}

/// Measure every host limit; scratch files go to `dir` and are removed again.
pub fn measure(dir: &Path) -> anyhow::Result<Vec<Limit>> {
    let memcpy = memcpy_mib_s();
    let path = dir.join("host-limit.dat");
    let r = pread_limits(&path, BUF);
    // A leftover scratch file only costs disk space: a failed removal is not an error.
    let _ = std::fs::remove_file(&path);
    let (memfd, ops) = r.with_context(|| format!("host pread limits on {}", path.display()))?;
    Ok(vec![
        Limit {
            name: "host_memcpy",
            unit: "MiB/s",
            what: "memcpy between two 256 MiB buffers, one thread",
            samples: memcpy,
        },
        Limit {
            name: "host_pread_memfd",
            unit: "MiB/s",
            what: "pread 1 MiB blocks of a page-cached 256 MiB file into a memfd mapping",
            samples: memfd,
        },
        Limit {
            name: "host_pread4k_ops",
            unit: "ops/s",
            what: "pread 4 KiB at random offsets of the page-cached file, one thread",
            samples: ops,
        },
    ])
}

/// Run `step` (which returns the bytes or operations it did) until [`MIN_SAMPLE`] has
/// passed; work per second.
fn rate(mut step: impl FnMut() -> anyhow::Result<usize>) -> anyhow::Result<f64> {
    let t = Instant::now();
    let mut done = 0usize;
    while t.elapsed() < MIN_SAMPLE {
        done += step()?;
    }
    Ok(done as f64 / t.elapsed().as_secs_f64().max(1e-9))
}

fn memcpy_mib_s() -> Vec<f64> {
    let src = vec![0x5au8; BUF];
    let mut dst = vec![0u8; BUF];
    dst.copy_from_slice(&src); // fault the destination in
    (0..SAMPLES)
        .map(|_| {
            rate(|| {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
                Ok(BUF)
            })
            .unwrap_or(0.0)
                / MIB as f64
        })
        .collect()
}

/// A shared read-write mapping of a memfd, unmapped on drop.
struct MemfdMap {
    _fd: OwnedFd,
    ptr: *mut u8,
    len: usize,
}

impl MemfdMap {
    fn new(len: usize) -> anyhow::Result<MemfdMap> {
        // SAFETY: the name is a NUL-terminated literal; the call creates a new fd.
        let raw = unsafe { libc::memfd_create(c"p2plab-bench".as_ptr(), libc::MFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error()).context("memfd_create");
        }
        // SAFETY: raw is a fresh fd owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        File::from(fd.try_clone().context("dup memfd")?)
            .set_len(len as u64)
            .context("size the memfd")?;
        // SAFETY: a new shared mapping of our own memfd; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mmap {} MiB of a memfd", len / MIB));
        }
        Ok(MemfdMap {
            _fd: fd,
            ptr: p.cast(),
            len,
        })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr/len is our live, writable mapping, borrowed mutably through self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for MemfdMap {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `host_pread_memfd` (MiB/s) and `host_pread4k_ops` (ops/s) samples over a file of
/// `len` bytes (whole MiB) written at `path` (so it is in the page cache).
fn pread_limits(path: &Path, len: usize) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    {
        let mut f = File::create(path).context("create")?;
        let block: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8 + 1).collect();
        for _ in 0..len / MIB {
            f.write_all(&block).context("write")?;
        }
    }
    let f = File::open(path).context("open")?;
    let mut map = MemfdMap::new(len)?;
    let dst = map.as_mut_slice();
    let mut pass = || -> anyhow::Result<usize> {
        for (i, blk) in dst.chunks_mut(MIB).enumerate() {
            f.read_exact_at(blk, (i * MIB) as u64)
                .context("pread 1 MiB")?;
        }
        Ok(len)
    };
    pass()?; // fault the memfd in; the file is cached since it was written
    let mut memfd = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        memfd.push(rate(&mut pass)? / MIB as f64);
    }
    drop(map);
    let mut buf = [0u8; 4096];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let blocks = (len / 4096) as u64;
    let mut ops = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        ops.push(rate(|| {
            for _ in 0..256 {
                // xorshift64: a cheap random block index
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                f.read_exact_at(&mut buf, (x % blocks) * 4096)
                    .context("pread 4 KiB")?;
            }
            Ok(256)
        })?);
    }
    Ok((memfd, ops))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pread_limits_measure_something() {
        let dir = std::env::temp_dir().join(format!("p2plab-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let (memfd, ops) = super::pread_limits(&path, 8 << 20).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(memfd.len(), super::SAMPLES);
        assert!(memfd.iter().all(|v| *v > 0.0) && ops.iter().all(|v| *v > 0.0));
    }
}
