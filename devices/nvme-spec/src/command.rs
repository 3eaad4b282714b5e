//! Submission and completion queue entries (spec §4.2, §4.6) and opcodes (§5, §6).

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Command Dword 0 (§4.2, Figure 105).
#[bitfield(u32)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Cdw0 {
    /// OPC: Opcode.
    pub opc: u8,
    /// FUSE: Fused Operation (00b normal).
    #[bits(2)]
    pub fuse: u8,
    #[bits(4)]
    __: u8,
    /// PSDT: PRP or SGL for Data Transfer ([`PSDT_PRP`], [`PSDT_SGL_MPTR_CONTIG`],
    /// [`PSDT_SGL_MPTR_SGL`]).
    #[bits(2)]
    pub psdt: u8,
    /// CID: Command Identifier.
    pub cid: u16,
}

/// CDW0.PSDT: PRPs are used for this transfer.
pub const PSDT_PRP: u8 = 0;
/// CDW0.PSDT: SGLs are used; MPTR is the address of a contiguous metadata buffer.
pub const PSDT_SGL_MPTR_CONTIG: u8 = 1;
/// CDW0.PSDT: SGLs are used; MPTR is the address of an SGL segment.
pub const PSDT_SGL_MPTR_SGL: u8 = 2;

/// A Submission Queue Entry: the 64-byte common command format (§4.2, Figure 104).
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct Command {
    /// CDW0: opcode, fused operation, PSDT, command identifier.
    pub cdw0: Cdw0,
    /// NSID: Namespace Identifier.
    pub nsid: u32,
    /// CDW2 (command specific).
    pub cdw2: u32,
    /// CDW3 (command specific).
    pub cdw3: u32,
    /// MPTR: Metadata Pointer.
    pub mptr: u64,
    /// DPTR: Data Pointer, PRP1 + PRP2 or SGL1 (16 bytes).
    pub dptr: [u64; 2],
    /// CDW10 (command specific).
    pub cdw10: u32,
    /// CDW11 (command specific).
    pub cdw11: u32,
    /// CDW12 (command specific).
    pub cdw12: u32,
    /// CDW13 (command specific).
    pub cdw13: u32,
    /// CDW14 (command specific).
    pub cdw14: u32,
    /// CDW15 (command specific).
    pub cdw15: u32,
}
const _: () = assert!(size_of::<Command>() == 64);

/// Size of a submission queue entry (CC.IOSQES = 6).
pub const SQE_SIZE: usize = 64;
/// log2 of [`SQE_SIZE`].
pub const SQES_LOG2: u8 = 6;

/// Completion Queue Entry Status Field (§4.6.1, Figure 125), including the Phase Tag.
#[bitfield(u16)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct CqeStatus {
    /// P: Phase Tag.
    pub p: bool,
    /// SC: Status Code.
    pub sc: u8,
    /// SCT: Status Code Type.
    #[bits(3)]
    pub sct: u8,
    /// CRD: Command Retry Delay.
    #[bits(2)]
    pub crd: u8,
    /// M: More (more status information in the Error Information log).
    pub m: bool,
    /// DNR: Do Not Retry.
    pub dnr: bool,
}

/// A Completion Queue Entry (§4.6, Figure 124).
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct Completion {
    /// DW0: command specific result.
    pub dw0: u32,
    /// DW1: command specific / reserved.
    pub dw1: u32,
    /// SQHD: SQ Head Pointer.
    pub sqhd: u16,
    /// SQID: SQ Identifier.
    pub sqid: u16,
    /// CID: Command Identifier.
    pub cid: u16,
    /// Status Field with the Phase Tag in bit 0.
    pub status: CqeStatus,
}
const _: () = assert!(size_of::<Completion>() == 16);

/// Size of a completion queue entry (CC.IOCQES = 4).
pub const CQE_SIZE: usize = 16;
/// log2 of [`CQE_SIZE`].
pub const CQES_LOG2: u8 = 4;

open_enum! {
    /// Admin command opcodes (§5, Figure 139).
    pub struct AdminOpcode: u8 {
        DELETE_IO_SQ = 0x00,
        CREATE_IO_SQ = 0x01,
        GET_LOG_PAGE = 0x02,
        DELETE_IO_CQ = 0x04,
        CREATE_IO_CQ = 0x05,
        IDENTIFY = 0x06,
        ABORT = 0x08,
        SET_FEATURES = 0x09,
        GET_FEATURES = 0x0a,
        ASYNC_EVENT_REQUEST = 0x0c,
        NAMESPACE_MANAGEMENT = 0x0d,
        FIRMWARE_COMMIT = 0x10,
        FIRMWARE_IMAGE_DOWNLOAD = 0x11,
        DEVICE_SELF_TEST = 0x14,
        NAMESPACE_ATTACHMENT = 0x15,
        KEEP_ALIVE = 0x18,
        DIRECTIVE_SEND = 0x19,
        DIRECTIVE_RECEIVE = 0x1a,
        VIRTUALIZATION_MANAGEMENT = 0x1c,
        NVME_MI_SEND = 0x1d,
        NVME_MI_RECEIVE = 0x1e,
        DOORBELL_BUFFER_CONFIG = 0x7c,
        FORMAT_NVM = 0x80,
        SECURITY_SEND = 0x81,
        SECURITY_RECEIVE = 0x82,
        SANITIZE = 0x84,
        GET_LBA_STATUS = 0x86,
    }
}

open_enum! {
    /// NVM command set opcodes (§6, Figure 346).
    pub struct NvmOpcode: u8 {
        FLUSH = 0x00,
        WRITE = 0x01,
        READ = 0x02,
        WRITE_UNCORRECTABLE = 0x04,
        COMPARE = 0x05,
        WRITE_ZEROES = 0x08,
        DATASET_MANAGEMENT = 0x09,
        VERIFY = 0x0c,
        RESERVATION_REGISTER = 0x0d,
        RESERVATION_REPORT = 0x0e,
        RESERVATION_ACQUIRE = 0x11,
        RESERVATION_RELEASE = 0x15,
    }
}

/// Create I/O Completion Queue CDW10 / Create I/O Submission Queue CDW10 (§5.3, §5.4).
#[bitfield(u32)]
pub struct CreateQueueCdw10 {
    /// QID: Queue Identifier.
    pub qid: u16,
    /// QSIZE: Queue Size (0's based).
    pub qsize: u16,
}

/// Create I/O Completion Queue CDW11 (§5.3, Figure 150).
#[bitfield(u32)]
pub struct CreateCqCdw11 {
    /// PC: Physically Contiguous.
    pub pc: bool,
    /// IEN: Interrupts Enabled.
    pub ien: bool,
    #[bits(14)]
    __: u16,
    /// IV: Interrupt Vector.
    pub iv: u16,
}

/// Create I/O Submission Queue CDW11 (§5.4, Figure 153).
#[bitfield(u32)]
pub struct CreateSqCdw11 {
    /// PC: Physically Contiguous.
    pub pc: bool,
    /// QPRIO: Queue Priority.
    #[bits(2)]
    pub qprio: u8,
    #[bits(13)]
    __: u16,
    /// CQID: Completion Queue Identifier.
    pub cqid: u16,
}

/// Delete I/O SQ / CQ CDW10 (§5.5, §5.6).
#[bitfield(u32)]
pub struct DeleteQueueCdw10 {
    /// QID: Queue Identifier.
    pub qid: u16,
    __: u16,
}

/// Get Log Page CDW10 (§5.14.1, Figure 190).
#[bitfield(u32)]
pub struct GetLogPageCdw10 {
    /// LID: Log Page Identifier.
    pub lid: u8,
    /// LSP: Log Specific Field.
    #[bits(4)]
    pub lsp: u8,
    #[bits(3)]
    __: u8,
    /// RAE: Retain Asynchronous Event.
    pub rae: bool,
    /// NUMDL: Number of Dwords Lower (0's based with NUMDU).
    pub numdl: u16,
}

/// Get Log Page CDW11 (§5.14.1, Figure 191).
#[bitfield(u32)]
pub struct GetLogPageCdw11 {
    /// NUMDU: Number of Dwords Upper.
    pub numdu: u16,
    /// LSI: Log Specific Identifier.
    pub lsi: u16,
}

/// Identify CDW10 (§5.15.1, Figure 241).
#[bitfield(u32)]
pub struct IdentifyCdw10 {
    /// CNS: Controller or Namespace Structure ([`crate::identify::Cns`]).
    pub cns: u8,
    __: u8,
    /// CNTID: Controller Identifier.
    pub cntid: u16,
}

/// Get/Set Features CDW10 (§5.21.1, §5.27.1).
#[bitfield(u32)]
pub struct FeaturesCdw10 {
    /// FID: Feature Identifier ([`crate::feature::FeatureId`]).
    pub fid: u8,
    /// SEL: Select (Get Features only): 0 current, 1 default, 2 saved, 3 capabilities.
    #[bits(3)]
    pub sel: u8,
    #[bits(20)]
    __: u32,
    /// SV: Save (Set Features only).
    pub sv: bool,
}

/// Asynchronous Event Request completion DW0 (§5.2.1, Figure 146).
#[bitfield(u32)]
pub struct AsyncEventCompletion {
    /// Asynchronous Event Type ([`AsyncEventType`]).
    #[bits(3)]
    pub aet: u8,
    #[bits(5)]
    __: u8,
    /// Asynchronous Event Information.
    pub aei: u8,
    /// Log Page Identifier associated with the event.
    pub lid: u8,
    __: u8,
}

open_enum! {
    /// Asynchronous Event Type (§5.2.1, Figure 146).
    pub struct AsyncEventType: u8 {
        ERROR_STATUS = 0,
        SMART_HEALTH_STATUS = 1,
        NOTICE = 2,
        IO_COMMAND_SPECIFIC = 6,
        VENDOR_SPECIFIC = 7,
    }
}

open_enum! {
    /// Asynchronous Event Information for the Error Status type (§5.2.1, Figure 147).
    pub struct AsyncEventErrorInfo: u8 {
        WRITE_TO_INVALID_DOORBELL_REGISTER = 0x00,
        INVALID_DOORBELL_WRITE_VALUE = 0x01,
        DIAGNOSTIC_FAILURE = 0x02,
        PERSISTENT_INTERNAL_ERROR = 0x03,
        TRANSIENT_INTERNAL_ERROR = 0x04,
        FIRMWARE_IMAGE_LOAD_ERROR = 0x05,
    }
}

open_enum! {
    /// Asynchronous Event Information for the Notice type (§5.2.1, Figure 149).
    pub struct AsyncEventNoticeInfo: u8 {
        NAMESPACE_ATTRIBUTE_CHANGED = 0x00,
        FIRMWARE_ACTIVATION_STARTING = 0x01,
        TELEMETRY_LOG_CHANGED = 0x02,
    }
}

/// Abort completion DW0 bit 0: the command was not aborted (§5.1).
pub const ABORT_NOT_ABORTED: u32 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdw0_packs_opcode_psdt_and_cid() {
        let c = Cdw0::new()
            .with_opc(0x02)
            .with_psdt(PSDT_SGL_MPTR_CONTIG)
            .with_cid(0xbeef);
        assert_eq!(c.into_bits(), 0xbeef_4002);
    }

    #[test]
    fn status_field_has_phase_in_bit_0() {
        let s = CqeStatus::new()
            .with_p(true)
            .with_sc(0x02)
            .with_sct(1)
            .with_dnr(true);
        assert_eq!(s.into_bits(), 0x8000 | (1 << 9) | (0x02 << 1) | 1);
    }

    #[test]
    fn unknown_opcodes_are_representable() {
        assert_eq!(format!("{:?}", AdminOpcode(0xee)), "AdminOpcode(0xee)");
        assert_eq!(format!("{:?}", NvmOpcode::READ), "READ");
    }
}
