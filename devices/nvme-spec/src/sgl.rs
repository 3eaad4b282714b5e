//! Scatter Gather List descriptors (spec §4.4).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

open_enum! {
    /// SGL Descriptor Type (§4.4, Figure 114), bits 7:4 of the SGL Identifier.
    pub struct SglDescriptorType: u8 {
        DATA_BLOCK = 0x0,
        BIT_BUCKET = 0x1,
        SEGMENT = 0x2,
        LAST_SEGMENT = 0x3,
        KEYED_DATA_BLOCK = 0x4,
        TRANSPORT_DATA_BLOCK = 0x5,
        VENDOR_SPECIFIC = 0xf,
    }
}

open_enum! {
    /// SGL Descriptor Sub Type (§4.4, Figure 115), bits 3:0 of the SGL Identifier.
    pub struct SglDescriptorSubType: u8 {
        ADDRESS = 0x0,
        OFFSET = 0x1,
        TRANSPORT_SPECIFIC = 0xa,
    }
}

/// An SGL descriptor (§4.4, Figure 113): 16 bytes.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct SglDescriptor {
    /// Address (data block, segment, last segment); unused for a bit bucket.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    pub rsvd: [u8; 3],
    /// SGL Identifier: type in bits 7:4, sub type in bits 3:0.
    pub id: u8,
}
const _: () = assert!(size_of::<SglDescriptor>() == 16);

/// Size of one SGL descriptor.
pub const SGL_DESCRIPTOR_SIZE: usize = 16;

impl SglDescriptor {
    /// The SGL Descriptor Type.
    pub fn descriptor_type(&self) -> SglDescriptorType {
        SglDescriptorType(self.id >> 4)
    }
    /// The SGL Descriptor Sub Type.
    pub fn sub_type(&self) -> SglDescriptorSubType {
        SglDescriptorSubType(self.id & 0xf)
    }
    /// Builds a descriptor of `ty` with the Address sub type.
    pub fn new(ty: SglDescriptorType, addr: u64, len: u32) -> Self {
        Self {
            addr,
            len,
            rsvd: [0; 3],
            id: ty.0 << 4,
        }
    }
    /// The descriptor as the two 64-bit words of an SQE's DPTR.
    pub fn to_dptr(&self) -> [u64; 2] {
        [self.addr, u64::from(self.len) | (u64::from(self.id) << 56)]
    }
    /// The descriptor stored in an SQE's DPTR.
    pub fn from_dptr(dptr: [u64; 2]) -> Self {
        Self {
            addr: dptr[0],
            len: dptr[1] as u32,
            rsvd: [
                (dptr[1] >> 32) as u8,
                (dptr[1] >> 40) as u8,
                (dptr[1] >> 48) as u8,
            ],
            id: (dptr[1] >> 56) as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dptr_round_trip() {
        let d = SglDescriptor::new(SglDescriptorType::LAST_SEGMENT, 0x1000, 0x30);
        assert_eq!(SglDescriptor::from_dptr(d.to_dptr()), d);
        assert_eq!(d.to_dptr()[1], 0x3000_0000_0000_0030);
        assert_eq!(d.as_bytes()[15], 0x30);
    }
}
