//! Identify data structures (spec §5.15.2).

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Size of every Identify data structure.
pub const IDENTIFY_DATA_SIZE: usize = 4096;

open_enum! {
    /// CNS: Controller or Namespace Structure (§5.15.1, Figure 244).
    pub struct Cns: u8 {
        /// Identify Namespace data structure for NSID.
        NAMESPACE = 0x00,
        /// Identify Controller data structure.
        CONTROLLER = 0x01,
        /// Active Namespace ID list (NSIDs greater than NSID).
        ACTIVE_NAMESPACES = 0x02,
        /// Namespace Identification Descriptor list for NSID.
        NAMESPACE_ID_DESCRIPTORS = 0x03,
        /// NVM Set List.
        NVM_SET_LIST = 0x04,
        /// I/O Command Set specific Identify Namespace (NVMe 2.0 / TP 4056).
        CS_NAMESPACE = 0x05,
        /// I/O Command Set specific Identify Controller (NVMe 2.0 / TP 4056).
        CS_CONTROLLER = 0x06,
        /// Allocated Namespace ID list.
        ALLOCATED_NAMESPACES = 0x10,
        /// Identify Namespace for an allocated NSID.
        ALLOCATED_NAMESPACE = 0x11,
        /// Controller list attached to NSID.
        NAMESPACE_CONTROLLERS = 0x12,
        /// Controller list in the subsystem.
        CONTROLLERS = 0x13,
    }
}

/// Power State Descriptor (§5.15.2.2, Figure 248).
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct PowerStateDescriptor {
    /// MP: Maximum Power, in centiwatts (or 0.0001 W if MXPS).
    pub mp: u16,
    pub rsvd2: u8,
    /// Bit 0 MXPS: Max Power Scale; bit 1 NOPS: Non-Operational State.
    pub flags: u8,
    /// ENLAT: Entry Latency (µs).
    pub enlat: u32,
    /// EXLAT: Exit Latency (µs).
    pub exlat: u32,
    /// RRT: Relative Read Throughput.
    pub rrt: u8,
    /// RRL: Relative Read Latency.
    pub rrl: u8,
    /// RWT: Relative Write Throughput.
    pub rwt: u8,
    /// RWL: Relative Write Latency.
    pub rwl: u8,
    /// IDLP: Idle Power.
    pub idlp: u16,
    /// IPS: Idle Power Scale (bits 7:6).
    pub ips: u8,
    pub rsvd19: u8,
    /// ACTP: Active Power.
    pub actp: u16,
    /// APW (bits 2:0) and APS (bits 7:6): Active Power Workload / Scale.
    pub apw_aps: u8,
    pub rsvd23: [u8; 9],
}
const _: () = assert!(size_of::<PowerStateDescriptor>() == 32);

/// OACS: Optional Admin Command Support (§5.15.2.2, bytes 257:256).
#[bitfield(u16)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Oacs {
    /// Security Send / Receive.
    pub security: bool,
    /// Format NVM.
    pub format: bool,
    /// Firmware Commit / Image Download.
    pub firmware: bool,
    /// Namespace Management.
    pub ns_management: bool,
    /// Device Self-test.
    pub self_test: bool,
    /// Directives.
    pub directives: bool,
    /// NVMe-MI Send / Receive.
    pub nvme_mi: bool,
    /// Virtualization Management.
    pub virtualization: bool,
    /// Doorbell Buffer Config (bit 8, Linux `NVME_CTRL_OACS_DBBUF_SUPP`).
    pub doorbell_buffer_config: bool,
    /// Get LBA Status.
    pub get_lba_status: bool,
    #[bits(6)]
    __: u8,
}

/// ONCS: Optional NVM Command Support (§5.15.2.2, bytes 521:520).
#[bitfield(u16)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Oncs {
    /// Compare.
    pub compare: bool,
    /// Write Uncorrectable.
    pub write_uncorrectable: bool,
    /// Dataset Management.
    pub dataset_management: bool,
    /// Write Zeroes.
    pub write_zeroes: bool,
    /// Save field in Set Features and Select field in Get Features.
    pub save_select: bool,
    /// Reservations.
    pub reservations: bool,
    /// Timestamp feature.
    pub timestamp: bool,
    /// Verify.
    pub verify: bool,
    #[bits(8)]
    __: u8,
}

/// LPA: Log Page Attributes (§5.15.2.2, byte 261).
#[bitfield(u8)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Lpa {
    /// SMART / Health log per namespace.
    pub smart_per_namespace: bool,
    /// Commands Supported and Effects log page.
    pub commands_effects: bool,
    /// Extended data for Get Log Page (NUMDU, LPOL/LPOU).
    pub extended_data: bool,
    /// Telemetry Host-Initiated / Controller-Initiated logs.
    pub telemetry: bool,
    /// Persistent Event log.
    pub persistent_event: bool,
    #[bits(3)]
    __: u8,
}

/// SGLS: SGL Support (§5.15.2.2, bytes 539:536).
#[bitfield(u32)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct Sgls {
    /// 01b: SGLs supported, no alignment requirement; 10b: dword alignment required.
    #[bits(2)]
    pub supported: u8,
    /// Keyed SGL Data Block descriptor supported.
    pub keyed: bool,
    #[bits(13)]
    __: u16,
    /// SGL Bit Bucket descriptor supported.
    pub bit_bucket: bool,
    /// Byte aligned contiguous physical buffer of metadata supported.
    pub byte_aligned_metadata: bool,
    /// SGL longer than the data to transfer supported.
    pub oversized: bool,
    /// MPTR containing a single SGL descriptor supported.
    pub mptr_single_descriptor: bool,
    /// Address field as an offset supported.
    pub address_as_offset: bool,
    /// Transport SGL Data Block descriptor supported.
    pub transport_data_block: bool,
    #[bits(10)]
    __: u16,
}

/// VWC: Volatile Write Cache (byte 525) bit 0: a volatile write cache is present.
pub const VWC_PRESENT: u8 = 1 << 0;
/// VWC bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported (NVMe 1.4).
pub const VWC_FLUSH_BROADCAST_SUPPORTED: u8 = 0b11 << 1;

/// CNTRLTYPE: I/O controller (byte 111).
pub const CNTRLTYPE_IO: u8 = 1;

/// Identify Controller data structure (§5.15.2.2, Figure 247).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct IdentifyController {
    /// VID: PCI Vendor ID.
    pub vid: u16,
    /// SSVID: PCI Subsystem Vendor ID.
    pub ssvid: u16,
    /// SN: Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// MN: Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// FR: Firmware Revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// RAB: Recommended Arbitration Burst (2^n commands).
    pub rab: u8,
    /// IEEE: IEEE OUI Identifier.
    pub ieee: [u8; 3],
    /// CMIC: Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// MDTS: Maximum Data Transfer Size, 2^n units of CAP.MPSMIN (0 = no limit).
    pub mdts: u8,
    /// CNTLID: Controller ID.
    pub cntlid: u16,
    /// VER: Version (same format as the VS register).
    pub ver: u32,
    /// RTD3R: RTD3 Resume Latency (µs).
    pub rtd3r: u32,
    /// RTD3E: RTD3 Entry Latency (µs).
    pub rtd3e: u32,
    /// OAES: Optional Asynchronous Events Supported.
    pub oaes: u32,
    /// CTRATT: Controller Attributes.
    pub ctratt: u32,
    /// RRLS: Read Recovery Levels Supported.
    pub rrls: u16,
    pub rsvd102: [u8; 9],
    /// CNTRLTYPE: Controller Type ([`CNTRLTYPE_IO`]).
    pub cntrltype: u8,
    /// FGUID: FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// CRDT1..3: Command Retry Delay Times (100 ms units).
    pub crdt: [u16; 3],
    pub rsvd134: [u8; 119],
    /// NVMSR: NVM Subsystem Report (NVMe-MI).
    pub nvmsr: u8,
    /// VWCI: VPD Write Cycle Information.
    pub vwci: u8,
    /// MEC: Management Endpoint Capabilities.
    pub mec: u8,
    /// OACS: Optional Admin Command Support.
    pub oacs: Oacs,
    /// ACL: Abort Command Limit (0's based).
    pub acl: u8,
    /// AERL: Asynchronous Event Request Limit (0's based).
    pub aerl: u8,
    /// FRMW: Firmware Updates (bit 0 slot 1 read-only, bits 3:1 number of slots).
    pub frmw: u8,
    /// LPA: Log Page Attributes.
    pub lpa: Lpa,
    /// ELPE: Error Log Page Entries (0's based).
    pub elpe: u8,
    /// NPSS: Number of Power States Support (0's based).
    pub npss: u8,
    /// AVSCC: Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// APSTA: Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// WCTEMP: Warning Composite Temperature Threshold (Kelvin).
    pub wctemp: u16,
    /// CCTEMP: Critical Composite Temperature Threshold (Kelvin).
    pub cctemp: u16,
    /// MTFA: Maximum Time for Firmware Activation.
    pub mtfa: u16,
    /// HMPRE: Host Memory Buffer Preferred Size.
    pub hmpre: u32,
    /// HMMIN: Host Memory Buffer Minimum Size.
    pub hmmin: u32,
    /// TNVMCAP: Total NVM Capacity (bytes, 128-bit).
    pub tnvmcap: [u8; 16],
    /// UNVMCAP: Unallocated NVM Capacity (bytes, 128-bit).
    pub unvmcap: [u8; 16],
    /// RPMBS: Replay Protected Memory Block Support.
    pub rpmbs: u32,
    /// EDSTT: Extended Device Self-test Time.
    pub edstt: u16,
    /// DSTO: Device Self-test Options.
    pub dsto: u8,
    /// FWUG: Firmware Update Granularity.
    pub fwug: u8,
    /// KAS: Keep Alive Support (100 ms units, 0 = not supported).
    pub kas: u16,
    /// HCTMA: Host Controlled Thermal Management Attributes.
    pub hctma: u16,
    /// MNTMT: Minimum Thermal Management Temperature.
    pub mntmt: u16,
    /// MXTMT: Maximum Thermal Management Temperature.
    pub mxtmt: u16,
    /// SANICAP: Sanitize Capabilities.
    pub sanicap: u32,
    /// HMMINDS: Host Memory Buffer Minimum Descriptor Entry Size.
    pub hmminds: u32,
    /// HMMAXD: Host Memory Maximum Descriptors Entries.
    pub hmmaxd: u16,
    /// NSETIDMAX: NVM Set Identifier Maximum.
    pub nsetidmax: u16,
    /// ENDGIDMAX: Endurance Group Identifier Maximum.
    pub endgidmax: u16,
    /// ANATT: ANA Transition Time.
    pub anatt: u8,
    /// ANACAP: Asymmetric Namespace Access Capabilities.
    pub anacap: u8,
    /// ANAGRPMAX: ANA Group Identifier Maximum.
    pub anagrpmax: u32,
    /// NANAGRPID: Number of ANA Group Identifiers.
    pub nanagrpid: u32,
    /// PELS: Persistent Event Log Size.
    pub pels: u32,
    pub rsvd356: [u8; 156],
    /// SQES: Submission Queue Entry Size (bits 3:0 required, 7:4 maximum; log2).
    pub sqes: u8,
    /// CQES: Completion Queue Entry Size (bits 3:0 required, 7:4 maximum; log2).
    pub cqes: u8,
    /// MAXCMD: Maximum Outstanding Commands.
    pub maxcmd: u16,
    /// NN: Number of Namespaces (highest valid NSID).
    pub nn: u32,
    /// ONCS: Optional NVM Command Support.
    pub oncs: Oncs,
    /// FUSES: Fused Operation Support.
    pub fuses: u16,
    /// FNA: Format NVM Attributes.
    pub fna: u8,
    /// VWC: Volatile Write Cache ([`VWC_PRESENT`]).
    pub vwc: u8,
    /// AWUN: Atomic Write Unit Normal (0's based, logical blocks).
    pub awun: u16,
    /// AWUPF: Atomic Write Unit Power Fail (0's based, logical blocks).
    pub awupf: u16,
    /// NVSCC: NVM Vendor Specific Command Configuration.
    pub nvscc: u8,
    /// NWPC: Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// ACWU: Atomic Compare & Write Unit.
    pub acwu: u16,
    pub rsvd534: u16,
    /// SGLS: SGL Support.
    pub sgls: Sgls,
    /// MNAN: Maximum Number of Allowed Namespaces.
    pub mnan: u32,
    pub rsvd544: [u8; 224],
    /// SUBNQN: NVM Subsystem NVMe Qualified Name (UTF-8, NUL padded).
    pub subnqn: [u8; 256],
    pub rsvd1024: [u8; 768],
    /// NVMe over Fabrics attributes (IOCCSZ, IORCSZ, ICDOFF, FCATT, MSDBD, OFCS).
    pub fabrics: [u8; 256],
    /// PSD0..PSD31: Power State Descriptors.
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor Specific.
    pub vs: [u8; 1024],
}
const _: () = assert!(size_of::<IdentifyController>() == IDENTIFY_DATA_SIZE);

/// LBA Format Data Structure (§5.15.2.1, Figure 246).
#[bitfield(u32)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct LbaFormat {
    /// MS: Metadata Size (bytes per LBA).
    pub ms: u16,
    /// LBADS: LBA Data Size, 2^n bytes.
    pub lbads: u8,
    /// RP: Relative Performance.
    #[bits(2)]
    pub rp: u8,
    #[bits(6)]
    __: u8,
}

/// NSFEAT bit 2 DAE: Deallocated or Unwritten Logical Block error support.
pub const NSFEAT_DAE: u8 = 1 << 2;
/// DLFEAT bits 2:0 = 001b: deallocated logical blocks read as all zeroes.
pub const DLFEAT_READ_ZEROES: u8 = 0b001;
/// DLFEAT bit 3: Write Zeroes with DEAC set deallocates.
pub const DLFEAT_WRITE_ZEROES_DEALLOCATES: u8 = 1 << 3;

/// Identify Namespace data structure, NVM command set (§5.15.2.1, Figure 245).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct IdentifyNamespace {
    /// NSZE: Namespace Size (logical blocks).
    pub nsze: u64,
    /// NCAP: Namespace Capacity (logical blocks).
    pub ncap: u64,
    /// NUSE: Namespace Utilization (logical blocks).
    pub nuse: u64,
    /// NSFEAT: Namespace Features.
    pub nsfeat: u8,
    /// NLBAF: Number of LBA Formats (0's based).
    pub nlbaf: u8,
    /// FLBAS: Formatted LBA Size (bits 3:0 the LBA format index).
    pub flbas: u8,
    /// MC: Metadata Capabilities.
    pub mc: u8,
    /// DPC: End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// DPS: End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// NMIC: Namespace Multi-path I/O and Namespace Sharing Capabilities.
    pub nmic: u8,
    /// RESCAP: Reservation Capabilities.
    pub rescap: u8,
    /// FPI: Format Progress Indicator.
    pub fpi: u8,
    /// DLFEAT: Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// NAWUN: Namespace Atomic Write Unit Normal.
    pub nawun: u16,
    /// NAWUPF: Namespace Atomic Write Unit Power Fail.
    pub nawupf: u16,
    /// NACWU: Namespace Atomic Compare & Write Unit.
    pub nacwu: u16,
    /// NABSN: Namespace Atomic Boundary Size Normal.
    pub nabsn: u16,
    /// NABO: Namespace Atomic Boundary Offset.
    pub nabo: u16,
    /// NABSPF: Namespace Atomic Boundary Size Power Fail.
    pub nabspf: u16,
    /// NOIOB: Namespace Optimal I/O Boundary.
    pub noiob: u16,
    /// NVMCAP: NVM Capacity (bytes, 128-bit).
    pub nvmcap: [u8; 16],
    /// NPWG: Namespace Preferred Write Granularity (0's based).
    pub npwg: u16,
    /// NPWA: Namespace Preferred Write Alignment (0's based).
    pub npwa: u16,
    /// NPDG: Namespace Preferred Deallocate Granularity (0's based).
    pub npdg: u16,
    /// NPDA: Namespace Preferred Deallocate Alignment (0's based).
    pub npda: u16,
    /// NOWS: Namespace Optimal Write Size (0's based).
    pub nows: u16,
    pub rsvd74: [u8; 18],
    /// ANAGRPID: ANA Group Identifier.
    pub anagrpid: u32,
    pub rsvd96: [u8; 3],
    /// NSATTR: Namespace Attributes (bit 0 write protected).
    pub nsattr: u8,
    /// NVMSETID: NVM Set Identifier.
    pub nvmsetid: u16,
    /// ENDGID: Endurance Group Identifier.
    pub endgid: u16,
    /// NGUID: Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// EUI64: IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBAF0..LBAF15: LBA Format Support.
    pub lbaf: [LbaFormat; 16],
    pub rsvd192: [u8; 192],
    /// Vendor Specific.
    pub vs: [u8; 3712],
}
const _: () = assert!(size_of::<IdentifyNamespace>() == IDENTIFY_DATA_SIZE);

/// Active Namespace ID list (CNS 02h): up to 1024 NSIDs, zero terminated.
pub type ActiveNamespaceList = [u32; 1024];
const _: () = assert!(size_of::<ActiveNamespaceList>() == IDENTIFY_DATA_SIZE);

open_enum! {
    /// NIDT: Namespace Identifier Type (§5.15.2.3, Figure 249).
    pub struct Nidt: u8 {
        /// IEEE Extended Unique Identifier, 8 bytes.
        EUI64 = 1,
        /// Namespace Globally Unique Identifier, 16 bytes.
        NGUID = 2,
        /// Namespace UUID, 16 bytes.
        UUID = 3,
        /// Command Set Identifier, 1 byte (NVMe 2.0).
        CSI = 4,
    }
}

/// Namespace Identification Descriptor header (§5.15.2.3, Figure 249); NIDL bytes of
/// NID follow.
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct NsIdDescriptorHeader {
    /// NIDT: Namespace Identifier Type.
    pub nidt: Nidt,
    /// NIDL: Namespace Identifier Length.
    pub nidl: u8,
    pub rsvd: u16,
}
const _: () = assert!(size_of::<NsIdDescriptorHeader>() == 4);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn controller_fields_sit_at_spec_offsets() {
        assert_eq!(offset_of!(IdentifyController, mdts), 77);
        assert_eq!(offset_of!(IdentifyController, cntrltype), 111);
        assert_eq!(offset_of!(IdentifyController, oacs), 256);
        assert_eq!(offset_of!(IdentifyController, kas), 320);
        assert_eq!(offset_of!(IdentifyController, sqes), 512);
        assert_eq!(offset_of!(IdentifyController, oncs), 520);
        assert_eq!(offset_of!(IdentifyController, vwc), 525);
        assert_eq!(offset_of!(IdentifyController, sgls), 536);
        assert_eq!(offset_of!(IdentifyController, subnqn), 768);
        assert_eq!(offset_of!(IdentifyController, psd), 2048);
    }

    #[test]
    fn namespace_fields_sit_at_spec_offsets() {
        assert_eq!(offset_of!(IdentifyNamespace, dlfeat), 33);
        assert_eq!(offset_of!(IdentifyNamespace, nvmcap), 48);
        assert_eq!(offset_of!(IdentifyNamespace, anagrpid), 92);
        assert_eq!(offset_of!(IdentifyNamespace, nguid), 104);
        assert_eq!(offset_of!(IdentifyNamespace, eui64), 120);
        assert_eq!(offset_of!(IdentifyNamespace, lbaf), 128);
        assert_eq!(offset_of!(IdentifyNamespace, vs), 384);
    }
}
