//! Controller registers (spec §3.1, "Register Definition"), mapped in BAR0.
//!
//! Offsets are `NVME_REG_*` in Linux; every register is a `bitfield-struct` whose field
//! names are the spec mnemonics in lower case.

use bitfield_struct::bitfield;

/// CAP: Controller Capabilities (§3.1.1), 64-bit, RO.
pub const CAP: u64 = 0x00;
/// VS: Version (§3.1.2), 32-bit, RO.
pub const VS: u64 = 0x08;
/// INTMS: Interrupt Mask Set (§3.1.3), 32-bit, RW1S.
pub const INTMS: u64 = 0x0c;
/// INTMC: Interrupt Mask Clear (§3.1.4), 32-bit, RW1C.
pub const INTMC: u64 = 0x10;
/// CC: Controller Configuration (§3.1.5), 32-bit.
pub const CC: u64 = 0x14;
/// CSTS: Controller Status (§3.1.6), 32-bit.
pub const CSTS: u64 = 0x1c;
/// NSSR: NVM Subsystem Reset (§3.1.7), 32-bit, optional.
pub const NSSR: u64 = 0x20;
/// AQA: Admin Queue Attributes (§3.1.8), 32-bit.
pub const AQA: u64 = 0x24;
/// ASQ: Admin Submission Queue Base Address (§3.1.9), 64-bit.
pub const ASQ: u64 = 0x28;
/// ACQ: Admin Completion Queue Base Address (§3.1.10), 64-bit.
pub const ACQ: u64 = 0x30;
/// CMBLOC: Controller Memory Buffer Location (§3.1.11), 32-bit, RO.
pub const CMBLOC: u64 = 0x38;
/// CMBSZ: Controller Memory Buffer Size (§3.1.12), 32-bit, RO.
pub const CMBSZ: u64 = 0x3c;
/// BPINFO: Boot Partition Information (§3.1.13), 32-bit, RO.
pub const BPINFO: u64 = 0x40;
/// BPRSEL: Boot Partition Read Select (§3.1.14), 32-bit.
pub const BPRSEL: u64 = 0x44;
/// BPMBL: Boot Partition Memory Buffer Location (§3.1.15), 64-bit.
pub const BPMBL: u64 = 0x48;
/// CMBMSC: Controller Memory Buffer Memory Space Control (§3.1.16), 64-bit.
pub const CMBMSC: u64 = 0x50;
/// CMBSTS: Controller Memory Buffer Status (§3.1.17), 32-bit, RO.
pub const CMBSTS: u64 = 0x58;
/// PMRCAP: Persistent Memory Region Capabilities (§3.1.18), 32-bit, RO.
pub const PMRCAP: u64 = 0xe00;
/// First doorbell register: SQ0TDBL (§3.1.24).
pub const DBS: u64 = 0x1000;

/// Offset of the Submission Queue `qid` Tail Doorbell (SQyTDBL) for a doorbell stride
/// of `4 << dstrd` bytes.
pub const fn sq_tail_doorbell(qid: u16, dstrd: u8) -> u64 {
    DBS + (2 * qid as u64) * (4 << dstrd)
}

/// Offset of the Completion Queue `qid` Head Doorbell (CQyHDBL).
pub const fn cq_head_doorbell(qid: u16, dstrd: u8) -> u64 {
    DBS + (2 * qid as u64 + 1) * (4 << dstrd)
}

/// CAP: Controller Capabilities (§3.1.1).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Cap {
    /// MQES: Maximum Queue Entries Supported (0's based).
    pub mqes: u16,
    /// CQR: Contiguous Queues Required.
    pub cqr: bool,
    /// AMS: Arbitration Mechanism Supported (bit 0 WRR with urgent, bit 1 vendor).
    #[bits(2)]
    pub ams: u8,
    #[bits(5)]
    __: u8,
    /// TO: Timeout, worst-case time to CSTS.RDY change, in 500 ms units.
    pub to: u8,
    /// DSTRD: Doorbell Stride, `4 << DSTRD` bytes.
    #[bits(4)]
    pub dstrd: u8,
    /// NSSRS: NVM Subsystem Reset Supported.
    pub nssrs: bool,
    /// CSS: Command Sets Supported (bit 0 NVM, bit 6 I/O command sets, bit 7 admin only).
    pub css: u8,
    /// BPS: Boot Partition Support.
    pub bps: bool,
    #[bits(2)]
    __: u8,
    /// MPSMIN: Memory Page Size Minimum, `2 ^ (12 + MPSMIN)`.
    #[bits(4)]
    pub mpsmin: u8,
    /// MPSMAX: Memory Page Size Maximum, `2 ^ (12 + MPSMAX)`.
    #[bits(4)]
    pub mpsmax: u8,
    /// PMRS: Persistent Memory Region Supported.
    pub pmrs: bool,
    /// CMBS: Controller Memory Buffer Supported (CMBMSC is implemented).
    pub cmbs: bool,
    #[bits(6)]
    __: u8,
}

/// CAP.CSS bit for the NVM command set.
pub const CAP_CSS_NVM: u8 = 1 << 0;

/// VS: Version (§3.1.2).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Vs {
    /// TER: Tertiary Version Number.
    pub ter: u8,
    /// MNR: Minor Version Number.
    pub mnr: u8,
    /// MJR: Major Version Number.
    pub mjr: u16,
}

/// NVMe 1.4.0.
pub const VS_1_4: Vs = Vs::new().with_mjr(1).with_mnr(4);

/// CC: Controller Configuration (§3.1.5).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cc {
    /// EN: Enable.
    pub en: bool,
    #[bits(3)]
    __: u8,
    /// CSS: I/O Command Set Selected (000b NVM).
    #[bits(3)]
    pub css: u8,
    /// MPS: Memory Page Size, `2 ^ (12 + MPS)`.
    #[bits(4)]
    pub mps: u8,
    /// AMS: Arbitration Mechanism Selected (000b round robin).
    #[bits(3)]
    pub ams: u8,
    /// SHN: Shutdown Notification ([`CC_SHN_NORMAL`], [`CC_SHN_ABRUPT`]).
    #[bits(2)]
    pub shn: u8,
    /// IOSQES: I/O Submission Queue Entry Size, `2 ^ n` bytes (6 = 64 B).
    #[bits(4)]
    pub iosqes: u8,
    /// IOCQES: I/O Completion Queue Entry Size, `2 ^ n` bytes (4 = 16 B).
    #[bits(4)]
    pub iocqes: u8,
    #[bits(8)]
    __: u8,
}

/// CC.SHN: no notification.
pub const CC_SHN_NONE: u8 = 0;
/// CC.SHN: normal shutdown notification.
pub const CC_SHN_NORMAL: u8 = 1;
/// CC.SHN: abrupt shutdown notification.
pub const CC_SHN_ABRUPT: u8 = 2;

/// CSTS: Controller Status (§3.1.6).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Csts {
    /// RDY: Ready.
    pub rdy: bool,
    /// CFS: Controller Fatal Status.
    pub cfs: bool,
    /// SHST: Shutdown Status ([`CSTS_SHST_OCCURRING`], [`CSTS_SHST_COMPLETE`]).
    #[bits(2)]
    pub shst: u8,
    /// NSSRO: NVM Subsystem Reset Occurred (RW1C).
    pub nssro: bool,
    /// PP: Processing Paused.
    pub pp: bool,
    #[bits(26)]
    __: u32,
}

/// CSTS.SHST: normal operation.
pub const CSTS_SHST_NORMAL: u8 = 0;
/// CSTS.SHST: shutdown processing occurring.
pub const CSTS_SHST_OCCURRING: u8 = 1;
/// CSTS.SHST: shutdown processing complete.
pub const CSTS_SHST_COMPLETE: u8 = 2;

/// AQA: Admin Queue Attributes (§3.1.8).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Aqa {
    /// ASQS: Admin Submission Queue Size (0's based).
    #[bits(12)]
    pub asqs: u16,
    #[bits(4)]
    __: u8,
    /// ACQS: Admin Completion Queue Size (0's based).
    #[bits(12)]
    pub acqs: u16,
    #[bits(4)]
    __: u8,
}

/// CMBLOC: Controller Memory Buffer Location (§3.1.11).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cmbloc {
    /// BIR: Base Indicator Register (the BAR holding the CMB).
    #[bits(3)]
    pub bir: u8,
    /// CQMMS: CMB Queue Mixed Memory Support.
    pub cqmms: bool,
    /// CQPDS: CMB Queue Physically Discontiguous Support.
    pub cqpds: bool,
    /// CDPMLS: CMB Data Pointer Mixed Locations Support.
    pub cdpmls: bool,
    /// CDPCILS: CMB Data Pointer and Command Independent Locations Support.
    pub cdpcils: bool,
    /// CDMMMS: CMB Data Metadata Mixed Memory Support.
    pub cdmmms: bool,
    /// CQDA: CMB Queue Dword Alignment.
    pub cqda: bool,
    #[bits(3)]
    __: u8,
    /// OFST: Offset of the CMB in the BAR, in CMBSZ.SZU units.
    #[bits(20)]
    pub ofst: u32,
}

/// CMBSZ: Controller Memory Buffer Size (§3.1.12).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cmbsz {
    /// SQS: Submission Queue Support (I/O SQs may live in the CMB).
    pub sqs: bool,
    /// CQS: Completion Queue Support.
    pub cqs: bool,
    /// LISTS: PRP SGL List Support.
    pub lists: bool,
    /// RDS: Read Data Support (data of reads may be transferred into the CMB).
    pub rds: bool,
    /// WDS: Write Data Support (data of writes may come from the CMB).
    pub wds: bool,
    #[bits(3)]
    __: u8,
    /// SZU: Size Units ([`CMBSZ_SZU_4K`] .. 64 GiB in powers of 16).
    #[bits(4)]
    pub szu: u8,
    /// SZ: Size, in SZU units.
    #[bits(20)]
    pub sz: u32,
}

/// CMBSZ.SZU: 4 KiB units.
pub const CMBSZ_SZU_4K: u8 = 0;
/// CMBSZ.SZU: 64 KiB units.
pub const CMBSZ_SZU_64K: u8 = 1;
/// CMBSZ.SZU: 1 MiB units.
pub const CMBSZ_SZU_1M: u8 = 2;

/// Bytes per CMBSZ.SZU unit: `4 KiB * 16 ^ SZU` (Linux `nvme_cmb_size_unit`).
pub const fn cmbsz_unit_bytes(szu: u8) -> u64 {
    1u64 << (12 + 4 * (szu as u32 & 0x7))
}

/// CMBMSC: Controller Memory Buffer Memory Space Control (§3.1.16).
#[bitfield(u64)]
#[derive(PartialEq, Eq)]
pub struct Cmbmsc {
    /// CRE: Capabilities Registers Enabled (CMBLOC/CMBSZ read non-zero when set).
    pub cre: bool,
    /// CMSE: Controller Memory Space Enable.
    pub cmse: bool,
    #[bits(10)]
    __: u16,
    /// CBA: Controller Base Address, bits 63:12 of the CMB's bus address.
    #[bits(52)]
    pub cba: u64,
}

impl Cmbmsc {
    /// The Controller Base Address as a byte address.
    pub fn cba_addr(&self) -> u64 {
        self.cba() << 12
    }
}

/// CMBSTS: Controller Memory Buffer Status (§3.1.17).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Cmbsts {
    /// CBAI: Controller Base Address Invalid (the last CBA written was rejected).
    pub cbai: bool,
    #[bits(31)]
    __: u32,
}

/// BPINFO: Boot Partition Information (§3.1.13).
#[bitfield(u32)]
#[derive(PartialEq, Eq)]
pub struct Bpinfo {
    /// BPSZ: Boot Partition Size, in 128 KiB units.
    #[bits(15)]
    pub bpsz: u16,
    #[bits(9)]
    __: u16,
    /// BRS: Boot Read Status.
    #[bits(2)]
    pub brs: u8,
    #[bits(5)]
    __: u8,
    /// ABPID: Active Boot Partition ID.
    pub abpid: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doorbells_follow_the_stride() {
        assert_eq!(sq_tail_doorbell(0, 0), 0x1000);
        assert_eq!(cq_head_doorbell(0, 0), 0x1004);
        assert_eq!(sq_tail_doorbell(3, 0), 0x1018);
        assert_eq!(cq_head_doorbell(1, 1), 0x1018);
    }

    #[test]
    fn register_fields_sit_at_spec_bits() {
        assert_eq!(Cap::new().with_cmbs(true).into_bits(), 1 << 57);
        assert_eq!(Cap::new().with_to(0xff).into_bits(), 0xff << 24);
        assert_eq!(Cap::new().with_css(CAP_CSS_NVM).into_bits(), 1 << 37);
        assert_eq!(Cc::new().with_iocqes(4).into_bits(), 4 << 20);
        assert_eq!(Cc::new().with_shn(CC_SHN_NORMAL).into_bits(), 1 << 14);
        assert_eq!(
            Csts::new().with_shst(CSTS_SHST_COMPLETE).into_bits(),
            0b1000
        );
        assert_eq!(Cmbsz::new().with_wds(true).with_rds(true).into_bits(), 0x18);
        assert_eq!(
            Cmbsz::new().with_szu(CMBSZ_SZU_1M).with_sz(128).into_bits(),
            0x0008_0200
        );
        assert_eq!(Cmbmsc::new().with_cba(0x12345).cba_addr(), 0x1234_5000);
        assert_eq!(VS_1_4.into_bits(), 0x0001_0400);
        assert_eq!(cmbsz_unit_bytes(CMBSZ_SZU_1M), 1 << 20);
    }
}
