//! Scatter Gather Lists (spec §4.4): Data Block, Bit Bucket, Segment and Last Segment
//! descriptors. Keyed, transport and vendor descriptors are rejected.

use nvme_spec::sgl::{SglDescriptor, SglDescriptorSubType, SglDescriptorType, SGL_DESCRIPTOR_SIZE};
use nvme_spec::Status;
use p2plab_memory::{BusAddr, DmaSpace};
use zerocopy::FromBytes;

use crate::error::NvmeError;
use crate::prp::{push_run, Run};

/// Most descriptors one command may use (all segments together); bounds the work a
/// guest can ask for.
pub const MAX_SGL_DESCRIPTORS: usize = 4096;

/// Resolves the SGL whose first descriptor is `sgl1` (the SQE's DPTR) for a transfer
/// of `len` bytes. `to_guest` is true when the device writes guest memory (a read
/// command); Bit Bucket descriptors are only valid then.
pub fn sgl_runs(
    dma: &dyn DmaSpace,
    sgl1: SglDescriptor,
    len: u64,
    to_guest: bool,
) -> Result<Vec<Run>, NvmeError> {
    let mut runs = Vec::new();
    let mut total = 0u64;
    let mut used = 1usize;
    let mut add = |d: &SglDescriptor, runs: &mut Vec<Run>| -> Result<(), NvmeError> {
        if d.sub_type() != SglDescriptorSubType::ADDRESS {
            return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.into());
        }
        let bit_bucket = match d.descriptor_type() {
            SglDescriptorType::DATA_BLOCK => false,
            SglDescriptorType::BIT_BUCKET if to_guest => true,
            _ => return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.into()),
        };
        let n = u64::from(d.len);
        if !bit_bucket && d.addr.checked_add(n).is_none() {
            return Err(Status::DATA_TRANSFER_ERROR.into());
        }
        total = total.saturating_add(n);
        push_run(
            runs,
            Run {
                addr: BusAddr(d.addr),
                len: n,
                bit_bucket,
            },
        );
        Ok(())
    };

    let mut next = match sgl1.descriptor_type() {
        SglDescriptorType::SEGMENT | SglDescriptorType::LAST_SEGMENT => Some(sgl1),
        _ => {
            add(&sgl1, &mut runs)?;
            None
        }
    };
    while let Some(seg) = next.take() {
        if seg.sub_type() != SglDescriptorSubType::ADDRESS {
            return Err(Status::SGL_DESCRIPTOR_TYPE_INVALID.into());
        }
        let last = seg.descriptor_type() == SglDescriptorType::LAST_SEGMENT;
        let seg_len = seg.len as usize;
        if seg_len == 0 || seg_len & (SGL_DESCRIPTOR_SIZE - 1) != 0 {
            return Err(Status::INVALID_SGL_SEGMENT_DESCRIPTOR.into());
        }
        let count = seg_len / SGL_DESCRIPTOR_SIZE;
        used = used.saturating_add(count);
        if used > MAX_SGL_DESCRIPTORS {
            return Err(Status::INVALID_NUMBER_OF_SGL_DESCRIPTORS.into());
        }
        let mut raw = vec![0u8; seg_len];
        dma.read(BusAddr(seg.addr), &mut raw)?;
        for (i, chunk) in raw.chunks_exact(SGL_DESCRIPTOR_SIZE).enumerate() {
            let d = SglDescriptor::read_from_bytes(chunk)
                .map_err(|_| Status::INVALID_SGL_SEGMENT_DESCRIPTOR)?;
            match d.descriptor_type() {
                SglDescriptorType::SEGMENT | SglDescriptorType::LAST_SEGMENT => {
                    // Only the last descriptor of a Segment (not Last Segment) may chain.
                    if last || i + 1 != count {
                        return Err(Status::INVALID_SGL_SEGMENT_DESCRIPTOR.into());
                    }
                    next = Some(d);
                }
                _ => add(&d, &mut runs)?,
            }
        }
    }
    if total != len {
        return Err(NvmeError::new(
            Status::DATA_SGL_LENGTH_INVALID,
            format!("SGL describes {total} bytes, command transfers {len}"),
        ));
    }
    Ok(runs)
}
