//! `#[repr(C)]` payload structs (the part after the [`Header`](crate::Header)), laid out
//! as in the vfio-user spec and QEMU `hw/vfio-user/protocol.h`. All little-endian.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

macro_rules! wire {
    ($(#[$m:meta])* $name:ident, $size:expr, { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[repr(C)]
        #[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
        const _: () = assert!(core::mem::size_of::<$name>() == $size);
        impl $name {
            /// Size on the wire.
            pub const SIZE: usize = $size;
        }
    };
}

wire!(
    /// VERSION payload prefix; a NUL-terminated JSON capabilities string follows.
    Version, 4, {
    /// Major version (0).
    major: u16,
    /// Minor version (0).
    minor: u16,
});

wire!(
    /// DMA_MAP request (`struct vfio_iommu_type1_dma_map`, `vaddr` replaced by the fd offset).
    DmaMap, 32, {
    /// Size of this struct (32).
    argsz: u32,
    /// `DMA_MAP_FLAG_READ` / `DMA_MAP_FLAG_WRITE`.
    flags: u32,
    /// Offset of the range within the fd sent with the message (0 without fd).
    offset: u64,
    /// Bus address (guest physical address) of the range.
    iova: u64,
    /// Length of the range in bytes.
    size: u64,
});

wire!(
    /// DMA_UNMAP request and reply (`struct vfio_iommu_type1_dma_unmap` without bitmap).
    DmaUnmap, 24, {
    /// Size of this struct (24) plus any bitmap.
    argsz: u32,
    /// `DMA_UNMAP_FLAG_ALL` or 0.
    flags: u32,
    /// Bus address of the range (must match a map exactly).
    iova: u64,
    /// Length of the range.
    size: u64,
});

wire!(
    /// DEVICE_GET_INFO request and reply (`struct vfio_device_info`).
    DeviceInfo, 16, {
    argsz: u32,
    /// `DEVICE_FLAGS_*`.
    flags: u32,
    num_regions: u32,
    num_irqs: u32,
});

wire!(
    /// DEVICE_GET_REGION_INFO request and reply (`struct vfio_region_info`); in a reply
    /// the capability chain follows when `flags` has `REGION_INFO_FLAG_CAPS`.
    RegionInfo, 32, {
    /// Request: room the client has for the reply payload. Reply: room needed.
    argsz: u32,
    /// `REGION_INFO_FLAG_*`.
    flags: u32,
    index: u32,
    /// Offset of the first capability from the start of this struct (0 = none).
    cap_offset: u32,
    size: u64,
    /// Offset of the region within the fd sent with the reply.
    offset: u64,
});

wire!(
    /// Header of every capability in a region-info chain (`struct vfio_info_cap_header`).
    CapHeader, 8, {
    id: u16,
    version: u16,
    /// Offset of the next capability from the start of the region info (0 = last).
    next: u32,
});

wire!(
    /// Sparse mmap capability body after its [`CapHeader`]; `nr_areas` [`SparseMmapArea`]s follow.
    SparseMmap, 8, {
    nr_areas: u32,
    reserved: u32,
});

wire!(
    /// One mmappable area of a region (`struct vfio_region_sparse_mmap_area`).
    SparseMmapArea, 16, {
    /// Offset within the region.
    offset: u64,
    size: u64,
});

wire!(
    /// DEVICE_GET_IRQ_INFO request and reply (`struct vfio_irq_info`).
    IrqInfo, 16, {
    argsz: u32,
    /// `IRQ_INFO_*`.
    flags: u32,
    index: u32,
    /// Number of vectors of this index.
    count: u32,
});

wire!(
    /// DEVICE_SET_IRQS request (`struct vfio_irq_set`); with `IRQ_SET_DATA_BOOL`,
    /// `count` bytes follow; with `IRQ_SET_DATA_EVENTFD`, fds ride in SCM_RIGHTS.
    IrqSet, 20, {
    argsz: u32,
    /// One `IRQ_SET_DATA_*` and one `IRQ_SET_ACTION_*` bit.
    flags: u32,
    index: u32,
    /// First vector.
    start: u32,
    /// Number of vectors.
    count: u32,
});

wire!(
    /// REGION_READ/REGION_WRITE request and reply prefix (`VFIOUserRegionRW`); data follows
    /// in a write request and a read reply.
    RegionAccess, 16, {
    offset: u64,
    region: u32,
    count: u32,
});

wire!(
    /// REGION_WRITE_MULTI payload prefix; `wr_cnt` [`WriteOne`]s follow.
    WriteMulti, 8, {
    wr_cnt: u64,
});

wire!(
    /// One coalesced write of REGION_WRITE_MULTI (`VFIOUserWROne`).
    WriteOne, 24, {
    offset: u64,
    region: u32,
    /// Bytes of `data` used (at most [`WRITE_MULTI_DATA`]).
    count: u32,
    data: [u8; 8],
});

wire!(
    /// DMA_READ/DMA_WRITE prefix (server → client): bus address and a 64-bit count,
    /// followed by the data in a DMA_WRITE request and a DMA_READ reply (see
    /// [`DmaRwLayout`]). A DMA_READ request is this prefix alone; QEMU echoes it in
    /// both replies.
    DmaAccess, 16, {
    /// Bus address.
    address: u64,
    /// Bytes to transfer.
    count: u64,
});

/// Bytes of data one [`WriteOne`] can carry (`VFIO_USER_MULTI_DATA`).
pub const WRITE_MULTI_DATA: usize = 8;
/// Most writes one REGION_WRITE_MULTI carries (`VFIO_USER_MULTI_MAX`).
pub const WRITE_MULTI_MAX: u64 = 200;

/// Largest DMA_READ a server should ask QEMU for in one message (64 KiB).
///
/// QEMU 11.1 sends the reply (`count` + 32 bytes) with a single non-blocking
/// `sendmsg` on its socket and treats a short write as complete (`vfio_user_send_qio`
/// returns the byte count, `vfio_user_send_queued` then considers the message sent):
/// the rest of the reply is never written and the stream is out of sync for good —
/// the server waits for payload bytes that never come, and QEMU's later messages are
/// swallowed as reply data. An AF_UNIX stream socket takes about `wmem_default`
/// (208 KiB) of unread data per non-blocking send, so a 1 MiB reply is always cut
/// short; a reply of 64 KiB fits whole as long as the server keeps reading (the reader
/// thread does). DMA_WRITE is not limited this way: QEMU reads requests of up to
/// `max_data_xfer_size` + 32 bytes in as many reads as needed, and its reply is 32 bytes.
pub const QEMU_SAFE_DMA_READ: usize = 64 * 1024;

/// Where the data of DMA_WRITE requests and DMA_READ replies sits.
///
/// **QEMU 11.1 uses the spec layout** (verified in the 11.1.3 binary, whose
/// `vfio_user_dma_read`/`vfio_user_dma_write` load `count` as a 64-bit value at message
/// offset 24 and pass message offset 32 as the data pointer to `pci_dma_read/write`):
/// `VFIOUserDMARW { hdr; uint64_t offset; uint64_t count; char data[]; }`, sizeof 32,
/// data at payload offset **16**, message size = `count` + 32. QEMU checks a DMA_WRITE
/// with `count > hdr.size - 32` → `E2BIG` and a DMA_READ with `count >
/// max_data_xfer_size` (the server's advertised value) → `E2BIG`; a request larger than
/// `max_data_xfer_size` + 32 is dropped without reply. The DMA_READ reply is the request's
/// 32 bytes (type switched to reply) followed by `count` data bytes; the DMA_WRITE reply is
/// the request's 32 bytes without data. Message ids of server requests are independent of
/// QEMU's own (QEMU matches only replies, by id).
///
/// Older patch-series sources of `hw/vfio/user-protocol.h` show a `uint32_t count` with
/// `data` at payload offset 12 ([`DmaRwLayout::Count32`]). Sending that layout to QEMU
/// 11.1 puts data bytes into the high half of its 64-bit count, so every DMA_WRITE fails
/// with `E2BIG`, and it reads replies 4 bytes off. See also [`QEMU_SAFE_DMA_READ`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DmaRwLayout {
    /// Data at payload offset 16 after a 64-bit count (vfio-user spec, QEMU 11.1,
    /// libvfio-user).
    #[default]
    Spec,
    /// Data at payload offset 12 after a 32-bit count, message padded by 4 bytes (old
    /// QEMU patch series only; not what QEMU 11.1 speaks).
    Count32,
}

impl DmaRwLayout {
    /// Payload offset of the data.
    pub fn data_offset(self) -> usize {
        match self {
            DmaRwLayout::Spec => 16,
            DmaRwLayout::Count32 => 12,
        }
    }

    /// Payload length of a message carrying `count` data bytes (count + 16 in both:
    /// `Count32` pads to its 8-aligned sizeof).
    pub fn payload_len(self, count: usize) -> Option<usize> {
        count.checked_add(16)
    }

    fn count_matches(self, echoed: u64, count: usize) -> bool {
        match self {
            DmaRwLayout::Spec => echoed == count as u64,
            DmaRwLayout::Count32 => echoed & 0xffff_ffff == count as u64 & 0xffff_ffff,
        }
    }

    /// DMA_WRITE request payload (`address`, `count`, data).
    pub fn encode_write(self, address: u64, data: &[u8]) -> Option<Vec<u8>> {
        let mut v = vec![0u8; self.payload_len(data.len())?];
        let prefix = DmaAccess {
            address,
            count: u64::try_from(data.len()).ok()?,
        };
        v[..DmaAccess::SIZE].copy_from_slice(prefix.as_bytes());
        let off = self.data_offset();
        v[off..off + data.len()].copy_from_slice(data);
        Some(v)
    }

    /// The data of a DMA_READ reply payload that must carry `count` bytes.
    pub fn decode_read_reply(
        self,
        payload: &[u8],
        count: usize,
    ) -> Result<&[u8], crate::DecodeError> {
        let (prefix, _) = DmaAccess::read_from_prefix(payload).map_err(|_| {
            crate::DecodeError::too_short(crate::Command::DMA_READ, DmaAccess::SIZE, payload.len())
        })?;
        if !self.count_matches(prefix.count, count) {
            return Err(crate::DecodeError::CountMismatch {
                expected: count as u64,
                actual: prefix.count,
            });
        }
        let off = self.data_offset();
        let end = off.checked_add(count).ok_or(crate::DecodeError::Overflow)?;
        payload.get(off..end).ok_or(crate::DecodeError::too_short(
            crate::Command::DMA_READ,
            end,
            payload.len(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What QEMU 11.1.3 reads: count as u64 at payload 8, data at payload 16, and
    /// `count <= hdr.size - 32` (payload length - 16).
    #[test]
    fn spec_layout_is_what_qemu_11_1_reads() {
        let p = DmaRwLayout::default()
            .encode_write(0x1000, &[0xaa, 0xbb])
            .unwrap();
        assert_eq!(p.len(), 18);
        assert_eq!(&p[0..8], &0x1000u64.to_le_bytes());
        let count = u64::from_le_bytes(p[8..16].try_into().unwrap());
        assert_eq!(count, 2);
        assert!(count <= (p.len() as u64 + 16) - 32);
        assert_eq!(&p[16..], &[0xaa, 0xbb]);
    }

    #[test]
    fn count32_layout_puts_data_at_offset_12() {
        let p = DmaRwLayout::Count32
            .encode_write(0x1000, &[0xaa, 0xbb])
            .unwrap();
        assert_eq!(p.len(), 18);
        assert_eq!(&p[8..12], &2u32.to_le_bytes());
        assert_eq!(&p[12..14], &[0xaa, 0xbb]);
        assert_eq!(&p[14..], &[0, 0, 0, 0]);
        // QEMU 11.1 would see a 64-bit count of 0x0000bbaa_00000002 here: E2BIG.
        assert_ne!(u64::from_le_bytes(p[8..16].try_into().unwrap()), 2);
    }

    /// QEMU 11.1's DMA_READ reply: the 16-byte request prefix echoed, then the data.
    #[test]
    fn read_reply_checks_count_and_length() {
        let mut p = vec![0u8; 16 + 4];
        p[..8].copy_from_slice(&0x1000u64.to_le_bytes());
        p[8..16].copy_from_slice(&4u64.to_le_bytes());
        p[16..20].copy_from_slice(&[1, 2, 3, 4]);
        let l = DmaRwLayout::Spec;
        assert_eq!(l.decode_read_reply(&p, 4).unwrap(), &[1, 2, 3, 4]);
        assert!(l.decode_read_reply(&p, 5).is_err());
        assert!(l.decode_read_reply(&p[..10], 4).is_err());
        assert!(l.decode_read_reply(&p[..19], 4).is_err());
        // A count differing only in the high half is a mismatch for the spec layout.
        p[12] = 1;
        assert!(l.decode_read_reply(&p, 4).is_err());
    }

    #[test]
    fn count32_read_reply() {
        let mut p = vec![0u8; 16 + 4];
        p[8..12].copy_from_slice(&4u32.to_le_bytes());
        p[12..16].copy_from_slice(&[1, 2, 3, 4]);
        let l = DmaRwLayout::Count32;
        assert_eq!(l.decode_read_reply(&p, 4).unwrap(), &[1, 2, 3, 4]);
        assert!(l.decode_read_reply(&p, 5).is_err());
    }
}
