//! Physical Region Page entries and lists (spec §4.3), and the data runs they describe.
//!
//! A transfer is resolved up front into [`Run`]s: contiguous bus-address ranges
//! (adjacent PRP pages coalesced), so the I/O path issues one zero-copy file transfer
//! per run.

use nvme_spec::Status;
use p2plab_memory::{BusAddr, DmaSpace};

use crate::error::NvmeError;

/// Memory page size: CAP.MPSMIN = CAP.MPSMAX = 0, so CC.MPS must be 0 (4 KiB).
pub const PAGE_SIZE: u64 = 4096;

/// A contiguous piece of a transfer: `len` bytes at `addr`, or `len` bytes dropped
/// (an SGL Bit Bucket).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub addr: BusAddr,
    pub len: u64,
    pub bit_bucket: bool,
}

impl Run {
    pub fn data(addr: u64, len: u64) -> Self {
        Self {
            addr: BusAddr(addr),
            len,
            bit_bucket: false,
        }
    }
}

/// Appends `run`, merging it into the previous one when they are adjacent.
pub fn push_run(runs: &mut Vec<Run>, run: Run) {
    if run.len == 0 {
        return;
    }
    if let Some(last) = runs.last_mut() {
        if last.bit_bucket == run.bit_bucket
            && (run.bit_bucket || last.addr.0.checked_add(last.len) == Some(run.addr.0))
        {
            last.len += run.len;
            return;
        }
    }
    runs.push(run);
}

/// Resolves PRP1/PRP2 for a transfer of `len` bytes (§4.3, Figures 108-109).
///
/// - PRP1 may have a dword-aligned offset; it covers up to the end of its page.
/// - If the rest fits in one page, PRP2 is that page (offset 0).
/// - Otherwise PRP2 points to a PRP list; a list's last entry points to the next list
///   page when more entries are needed than fit. Entries have offset 0.
pub fn prp_runs(dma: &dyn DmaSpace, prp1: u64, prp2: u64, len: u64) -> Result<Vec<Run>, NvmeError> {
    let mut runs = Vec::new();
    if len == 0 {
        return Ok(runs);
    }
    if prp1 & 0x3 != 0 {
        return Err(Status::PRP_OFFSET_INVALID.into());
    }
    let first = len.min(PAGE_SIZE - (prp1 % PAGE_SIZE));
    push_run(&mut runs, Run::data(prp1, first));
    let mut remaining = len - first;
    if remaining == 0 {
        return Ok(runs);
    }
    if remaining <= PAGE_SIZE {
        if prp2 & (PAGE_SIZE - 1) != 0 {
            return Err(Status::PRP_OFFSET_INVALID.into());
        }
        push_run(&mut runs, Run::data(prp2, remaining));
        return Ok(runs);
    }
    if prp2 & 0x7 != 0 {
        return Err(Status::PRP_OFFSET_INVALID.into());
    }
    let mut list = prp2;
    while remaining > 0 {
        let needed = remaining.div_ceil(PAGE_SIZE);
        let in_page = (PAGE_SIZE - list % PAGE_SIZE) / 8;
        let (count, chained) = if needed <= in_page {
            (needed, false)
        } else {
            (in_page, true)
        };
        // count <= 512 entries (one page), so the buffer is small and bounded.
        let mut raw = vec![0u8; (count * 8) as usize];
        dma.read(BusAddr(list), &mut raw)?;
        let entries: Vec<u64> = raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default()))
            .collect();
        let data_entries = if chained {
            &entries[..entries.len() - 1]
        } else {
            &entries[..]
        };
        for &e in data_entries {
            if e & (PAGE_SIZE - 1) != 0 {
                return Err(Status::PRP_OFFSET_INVALID.into());
            }
            let n = remaining.min(PAGE_SIZE);
            push_run(&mut runs, Run::data(e, n));
            remaining -= n;
        }
        if chained {
            let next = entries[entries.len() - 1];
            if next & (PAGE_SIZE - 1) != 0 {
                return Err(Status::PRP_OFFSET_INVALID.into());
            }
            list = next;
        }
    }
    Ok(runs)
}

/// Device → guest: writes `data` across `runs` (bit buckets drop their bytes).
pub fn copy_to_guest(dma: &dyn DmaSpace, runs: &[Run], data: &[u8]) -> Result<(), NvmeError> {
    let mut off = 0usize;
    for r in runs {
        if off >= data.len() {
            break;
        }
        let n = usize::try_from(r.len)
            .unwrap_or(usize::MAX)
            .min(data.len() - off);
        if !r.bit_bucket {
            dma.write(r.addr, &data[off..off + n])?;
        }
        off += n;
    }
    Ok(())
}

/// Guest → device: fills `buf` from `runs`.
pub fn copy_from_guest(dma: &dyn DmaSpace, runs: &[Run], buf: &mut [u8]) -> Result<(), NvmeError> {
    let mut off = 0usize;
    for r in runs {
        if off >= buf.len() {
            break;
        }
        let n = usize::try_from(r.len)
            .unwrap_or(usize::MAX)
            .min(buf.len() - off);
        if !r.bit_bucket {
            dma.read(r.addr, &mut buf[off..off + n])?;
        }
        off += n;
    }
    Ok(())
}
