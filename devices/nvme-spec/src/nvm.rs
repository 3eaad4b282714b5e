//! NVM command set command fields (spec §6).

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Read / Write / Compare / Write Zeroes CDW12 (§6.9, §6.15, §6.16).
#[bitfield(u32)]
pub struct RwCdw12 {
    /// NLB: Number of Logical Blocks (0's based).
    pub nlb: u16,
    #[bits(4)]
    __: u8,
    /// DTYPE: Directive Type (Write only).
    #[bits(4)]
    pub dtype: u8,
    #[bits(1)]
    __: u8,
    /// DEAC: Deallocate (Write Zeroes only).
    pub deac: bool,
    /// PRINFO: Protection Information Field.
    #[bits(4)]
    pub prinfo: u8,
    /// FUA: Force Unit Access.
    pub fua: bool,
    /// LR: Limited Retry.
    pub lr: bool,
}

/// Dataset Management CDW10 (§6.7, Figure 366).
#[bitfield(u32)]
pub struct DsmCdw10 {
    /// NR: Number of Ranges (0's based).
    pub nr: u8,
    #[bits(24)]
    __: u32,
}

/// Dataset Management CDW11 (§6.7, Figure 367).
#[bitfield(u32)]
pub struct DsmCdw11 {
    /// IDR: Attribute – Integral Dataset for Read.
    pub idr: bool,
    /// IDW: Attribute – Integral Dataset for Write.
    pub idw: bool,
    /// AD: Attribute – Deallocate.
    pub ad: bool,
    #[bits(29)]
    __: u32,
}

/// Dataset Management range (§6.7, Figure 368).
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct DsmRange {
    /// Context Attributes.
    pub context_attributes: u32,
    /// Length in logical blocks.
    pub nlb: u32,
    /// Starting LBA.
    pub slba: u64,
}
const _: () = assert!(size_of::<DsmRange>() == 16);

/// Maximum number of Dataset Management ranges (NR is 8 bits, 0's based).
pub const DSM_MAX_RANGES: usize = 256;
