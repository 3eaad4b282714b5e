//! The I/O worker: NVM command set I/O commands (spec §6): Read, Write, Flush, Compare, Write Zeroes,
//! Dataset Management.
//!
//! Data moves zero-copy: one `DmaSpace::write_from_file` (Read: the device writes guest
//! memory from the namespace file) or `read_to_file` (Write) per contiguous run.

use std::sync::atomic::Ordering::Relaxed;

use nvme_spec::nvm::{DsmCdw10, DsmCdw11, DsmRange, RwCdw12};
use nvme_spec::sgl::SglDescriptor;
use nvme_spec::{Command, NvmOpcode, Status, PSDT_PRP, PSDT_SGL_MPTR_CONTIG, PSDT_SGL_MPTR_SGL};
use p2plab_memory::DmaError;
use zerocopy::FromBytes;

use crate::command::{CommandResult, Outcome};
use crate::error::NvmeError;
use crate::namespace::Namespace;
use crate::prp::{copy_from_guest, prp_runs, Run};
use crate::sgl::sgl_runs;
use crate::state::Shared;

/// Bytes written per call when Write Zeroes has to write zeroes.
const ZERO_CHUNK: usize = 1 << 20;

/// Executes I/O command `cmd`; I/O commands always complete at once (DW0 = 0).
/// `write_cache` is the Volatile Write Cache feature's WCE: when the host has disabled
/// the cache, every write is durable before it completes, as with FUA.
pub fn handle(sh: &Shared, cmd: &Command, write_cache: bool) -> CommandResult {
    if cmd.cdw0.fuse() != 0 {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let op = NvmOpcode(cmd.cdw0.opc());
    if op == NvmOpcode::FLUSH {
        return flush(sh, cmd.nsid).map(|()| Outcome::Complete(0));
    }
    let ns = sh
        .namespace(cmd.nsid)
        .ok_or(Status::INVALID_NAMESPACE_OR_FORMAT)?;
    match op {
        NvmOpcode::READ => read(sh, ns, cmd),
        NvmOpcode::WRITE => write(sh, ns, cmd, write_cache),
        NvmOpcode::COMPARE => compare(sh, ns, cmd),
        NvmOpcode::WRITE_ZEROES => write_zeroes(ns, cmd, write_cache),
        NvmOpcode::DATASET_MANAGEMENT => dataset_management(sh, ns, cmd),
        _ => Err(Status::INVALID_COMMAND_OPCODE.into()),
    }
    .map(|()| Outcome::Complete(0))
}

/// The data runs of a transfer of `len` bytes; `to_guest` for reads.
pub fn data_runs(
    sh: &Shared,
    cmd: &Command,
    len: u64,
    to_guest: bool,
) -> Result<Vec<Run>, NvmeError> {
    match cmd.cdw0.psdt() {
        PSDT_PRP => prp_runs(&*sh.dma, cmd.dptr[0], cmd.dptr[1], len),
        // No metadata (MS = 0), so MPTR is not used.
        PSDT_SGL_MPTR_CONTIG | PSDT_SGL_MPTR_SGL => {
            sgl_runs(&*sh.dma, SglDescriptor::from_dptr(cmd.dptr), len, to_guest)
        }
        _ => Err(Status::INVALID_FIELD_IN_COMMAND.into()),
    }
}

/// SLBA (CDW10/11) and NLB (CDW12, 1's based) of a Read/Write/Compare/Write Zeroes.
fn lba_range(cmd: &Command) -> (u64, u64, RwCdw12) {
    let slba = (u64::from(cmd.cdw11) << 32) | u64::from(cmd.cdw10);
    let cdw12 = RwCdw12::from_bits(cmd.cdw12);
    (slba, u64::from(cdw12.nlb()) + 1, cdw12)
}

/// Offset and length of a data-moving command, with MDTS enforced.
fn rw_range(sh: &Shared, ns: &Namespace, cmd: &Command) -> Result<(u64, u64, RwCdw12), NvmeError> {
    let (slba, nlb, cdw12) = lba_range(cmd);
    // NLB <= 65536 and LBA <= 4 KiB: at most 256 MiB, checked against MDTS first.
    if nlb << ns.lba_shift > sh.max_transfer() {
        return Err(Status::INVALID_FIELD_IN_COMMAND.into());
    }
    let (off, len) = ns.byte_range(slba, nlb)?;
    Ok((off, len, cdw12))
}

/// A failed transfer: file-side I/O errors are media errors, the rest the bus's.
fn media_or_transfer(sh: &Shared, e: DmaError, media: Status) -> NvmeError {
    match e {
        DmaError::Io(_) => {
            sh.stats.media_errors.fetch_add(1, Relaxed);
            NvmeError::new(media, e)
        }
        e => e.into(),
    }
}

fn read(sh: &Shared, ns: &Namespace, cmd: &Command) -> Result<(), NvmeError> {
    let (mut off, len, _) = rw_range(sh, ns, cmd)?;
    let runs = data_runs(sh, cmd, len, true)?;
    for r in &runs {
        let n = usize::try_from(r.len).map_err(|_| Status::INVALID_FIELD_IN_COMMAND)?;
        if !r.bit_bucket {
            sh.dma
                .write_from_file(r.addr, &ns.file, off, n)
                .map_err(|e| media_or_transfer(sh, e, Status::UNRECOVERED_READ_ERROR))?;
        }
        off += r.len;
    }
    sh.stats.read_cmds.fetch_add(1, Relaxed);
    sh.stats.read_512.fetch_add(len / 512, Relaxed);
    Ok(())
}

fn write(sh: &Shared, ns: &Namespace, cmd: &Command, write_cache: bool) -> Result<(), NvmeError> {
    let (mut off, len, cdw12) = rw_range(sh, ns, cmd)?;
    let runs = data_runs(sh, cmd, len, false)?;
    for r in &runs {
        let n = usize::try_from(r.len).map_err(|_| Status::INVALID_FIELD_IN_COMMAND)?;
        sh.dma
            .read_to_file(r.addr, &ns.file, off, n)
            .map_err(|e| media_or_transfer(sh, e, Status::WRITE_FAULT))?;
        off += r.len;
    }
    if cdw12.fua() || !write_cache {
        ns.sync()?;
    }
    sh.stats.write_cmds.fetch_add(1, Relaxed);
    sh.stats.written_512.fetch_add(len / 512, Relaxed);
    Ok(())
}

/// Flush (§6.8): `fdatasync` the namespace, or all of them for NSID FFFFFFFFh.
fn flush(sh: &Shared, nsid: u32) -> Result<(), NvmeError> {
    let targets: Vec<&Namespace> = if nsid == 0xffff_ffff {
        sh.namespaces.iter().collect()
    } else {
        vec![sh
            .namespace(nsid)
            .ok_or(Status::INVALID_NAMESPACE_OR_FORMAT)?]
    };
    for ns in targets {
        ns.sync()?;
    }
    Ok(())
}

fn compare(sh: &Shared, ns: &Namespace, cmd: &Command) -> Result<(), NvmeError> {
    let (off, len, _) = rw_range(sh, ns, cmd)?;
    let runs = data_runs(sh, cmd, len, false)?;
    // len <= MDTS, so both buffers are bounded.
    let mut host = vec![0u8; len as usize];
    copy_from_guest(&*sh.dma, &runs, &mut host)?;
    let mut media = vec![0u8; len as usize];
    p2plab_memory::read_exact_at(&ns.file, &mut media, off)
        .map_err(|e| media_or_transfer(sh, e, Status::UNRECOVERED_READ_ERROR))?;
    if host != media {
        return Err(Status::COMPARE_FAILURE.into());
    }
    Ok(())
}

fn zero_range(ns: &Namespace, off: u64, len: u64, deallocate: bool) -> Result<(), NvmeError> {
    if deallocate {
        if let Some(d) = &ns.deallocate {
            return d
                .punch_hole(&ns.file, off, len)
                .map_err(|e| NvmeError::new(Status::WRITE_FAULT, e));
        }
    }
    let zeroes = vec![0u8; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64) as usize;
        p2plab_memory::write_all_at(&ns.file, &zeroes[..n], off + done)
            .map_err(|e| NvmeError::new(Status::WRITE_FAULT, e))?;
        done += n as u64;
    }
    Ok(())
}

/// Write Zeroes (§6.16): not limited by MDTS; DEAC punches a hole when the host
/// provides deallocation, which reads back as zeroes too.
fn write_zeroes(ns: &Namespace, cmd: &Command, write_cache: bool) -> Result<(), NvmeError> {
    let (slba, nlb, cdw12) = lba_range(cmd);
    let (off, len) = ns.byte_range(slba, nlb)?;
    zero_range(ns, off, len, cdw12.deac())?;
    if cdw12.fua() || !write_cache {
        ns.sync()?;
    }
    Ok(())
}

/// Dataset Management (§6.7): only the Deallocate attribute does anything, and only
/// when the host supplies hole punching (else deallocation is a no-op, which the spec
/// allows: DLFEAT then reports nothing about deallocated blocks).
fn dataset_management(sh: &Shared, ns: &Namespace, cmd: &Command) -> Result<(), NvmeError> {
    let nr = usize::from(DsmCdw10::from_bits(cmd.cdw10).nr()) + 1;
    let attrs = DsmCdw11::from_bits(cmd.cdw11);
    let len = nr * size_of::<DsmRange>();
    let runs = data_runs(sh, cmd, len as u64, false)?;
    let mut raw = vec![0u8; len];
    copy_from_guest(&*sh.dma, &runs, &mut raw)?;
    let ranges: Vec<DsmRange> = raw
        .chunks_exact(size_of::<DsmRange>())
        .filter_map(|c| DsmRange::read_from_bytes(c).ok())
        .collect();
    let mut spans = Vec::with_capacity(ranges.len());
    for r in &ranges {
        spans.push(ns.byte_range(r.slba, u64::from(r.nlb))?);
    }
    if attrs.ad() && ns.deallocate.is_some() {
        for (off, len) in spans {
            if len != 0 {
                zero_range(ns, off, len, true)?;
            }
        }
    }
    Ok(())
}
