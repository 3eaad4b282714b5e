//! PCI Express capability, version 2, for an Endpoint (PCIe Base 6.0 §7.5.3).
//!
//! Implemented: Device Capabilities (FLR, 256-byte Max_Payload_Size, extended tags),
//! Device Control/Status, Link Capabilities/Control/Status (a fixed, trained link),
//! Device Capabilities 2/Control 2 (completion timeout), Link Capabilities 2/Control 2.
//! Slot and Root registers are absent (0) as for every Endpoint.

use crate::config::registers::Registers;
use crate::regs::PCI_CAP_ID_EXP;

/// PCI Express Capabilities register (16 bits, RO).
pub const PCI_EXP_FLAGS: usize = 0x02;
/// Device Capabilities (32 bits, RO).
pub const PCI_EXP_DEVCAP: usize = 0x04;
/// Device Control (16 bits).
pub const PCI_EXP_DEVCTL: usize = 0x08;
/// Device Status (16 bits, RW1C error bits).
pub const PCI_EXP_DEVSTA: usize = 0x0a;
/// Link Capabilities (32 bits, RO).
pub const PCI_EXP_LNKCAP: usize = 0x0c;
/// Link Control (16 bits).
pub const PCI_EXP_LNKCTL: usize = 0x10;
/// Link Status (16 bits, RO).
pub const PCI_EXP_LNKSTA: usize = 0x12;
/// Device Capabilities 2 (32 bits, RO).
pub const PCI_EXP_DEVCAP2: usize = 0x24;
/// Device Control 2 (16 bits).
pub const PCI_EXP_DEVCTL2: usize = 0x28;
/// Device Status 2 (16 bits, reserved 0).
pub const PCI_EXP_DEVSTA2: usize = 0x2a;
/// Link Capabilities 2 (32 bits, RO).
pub const PCI_EXP_LNKCAP2: usize = 0x2c;
/// Link Control 2 (16 bits).
pub const PCI_EXP_LNKCTL2: usize = 0x30;
/// Link Status 2 (16 bits).
pub const PCI_EXP_LNKSTA2: usize = 0x32;
/// Size of a version-2 Endpoint capability structure.
pub const PCI_CAP_EXP_ENDPOINT_SIZEOF_V2: usize = 0x3c;

/// Flags: capability version field.
pub const PCI_EXP_FLAGS_VERS: u16 = 0x000f;
/// Flags: version 2.
pub const PCI_EXP_FLAGS_VERS_2: u16 = 0x0002;
/// Flags: Device/Port Type field.
pub const PCI_EXP_FLAGS_TYPE: u16 = 0x00f0;
/// Device/Port Type 0: PCI Express Endpoint.
pub const PCI_EXP_TYPE_ENDPOINT: u16 = 0x0;

/// DEVCAP: Max_Payload_Size Supported field.
pub const PCI_EXP_DEVCAP_PAYLOAD: u32 = 0x0000_0007;
/// DEVCAP: Max_Payload_Size Supported = 256 bytes.
pub const PCI_EXP_DEVCAP_PAYLOAD_256B: u32 = 0x0000_0001;
/// DEVCAP: Extended Tag Field Supported.
pub const PCI_EXP_DEVCAP_EXT_TAG: u32 = 0x0000_0020;
/// DEVCAP: Endpoint L0s Acceptable Latency = no limit.
pub const PCI_EXP_DEVCAP_L0S_NO_LIMIT: u32 = 0x0000_01c0;
/// DEVCAP: Endpoint L1 Acceptable Latency = no limit.
pub const PCI_EXP_DEVCAP_L1_NO_LIMIT: u32 = 0x0000_0e00;
/// DEVCAP: Role-Based Error Reporting.
pub const PCI_EXP_DEVCAP_RBER: u32 = 0x0000_8000;
/// DEVCAP: Function Level Reset Capability.
pub const PCI_EXP_DEVCAP_FLR: u32 = 0x1000_0000;

/// DEVCTL: Correctable Error Reporting Enable.
pub const PCI_EXP_DEVCTL_CERE: u16 = 0x0001;
/// DEVCTL: Non-Fatal Error Reporting Enable.
pub const PCI_EXP_DEVCTL_NFERE: u16 = 0x0002;
/// DEVCTL: Fatal Error Reporting Enable.
pub const PCI_EXP_DEVCTL_FERE: u16 = 0x0004;
/// DEVCTL: Unsupported Request Reporting Enable.
pub const PCI_EXP_DEVCTL_URRE: u16 = 0x0008;
/// DEVCTL: Enable Relaxed Ordering.
pub const PCI_EXP_DEVCTL_RELAX_EN: u16 = 0x0010;
/// DEVCTL: Max_Payload_Size field.
pub const PCI_EXP_DEVCTL_PAYLOAD: u16 = 0x00e0;
/// DEVCTL: Extended Tag Field Enable.
pub const PCI_EXP_DEVCTL_EXT_TAG: u16 = 0x0100;
/// DEVCTL: Enable No Snoop.
pub const PCI_EXP_DEVCTL_NOSNOOP_EN: u16 = 0x0800;
/// DEVCTL: Max_Read_Request_Size field.
pub const PCI_EXP_DEVCTL_READRQ: u16 = 0x7000;
/// DEVCTL: Max_Read_Request_Size = 512 bytes (the power-on default).
pub const PCI_EXP_DEVCTL_READRQ_512B: u16 = 0x2000;
/// DEVCTL: Initiate Function Level Reset (write 1 to trigger; always reads 0).
pub const PCI_EXP_DEVCTL_BCR_FLR: u16 = 0x8000;

/// DEVSTA: Correctable Error Detected (RW1C).
pub const PCI_EXP_DEVSTA_CED: u16 = 0x0001;
/// DEVSTA: Non-Fatal Error Detected (RW1C).
pub const PCI_EXP_DEVSTA_NFED: u16 = 0x0002;
/// DEVSTA: Fatal Error Detected (RW1C).
pub const PCI_EXP_DEVSTA_FED: u16 = 0x0004;
/// DEVSTA: Unsupported Request Detected (RW1C).
pub const PCI_EXP_DEVSTA_URD: u16 = 0x0008;

/// LNKCAP: Max Link Speed field.
pub const PCI_EXP_LNKCAP_SLS: u32 = 0x0000_000f;
/// LNKCAP: Maximum Link Width field.
pub const PCI_EXP_LNKCAP_MLW: u32 = 0x0000_03f0;
/// LNKCTL: ASPM Control field.
pub const PCI_EXP_LNKCTL_ASPMC: u16 = 0x0003;
/// LNKCTL: Read Completion Boundary.
pub const PCI_EXP_LNKCTL_RCB: u16 = 0x0008;
/// LNKCTL: Common Clock Configuration.
pub const PCI_EXP_LNKCTL_CCC: u16 = 0x0040;
/// LNKCTL: Extended Synch.
pub const PCI_EXP_LNKCTL_ES: u16 = 0x0080;
/// LNKSTA: Current Link Speed field.
pub const PCI_EXP_LNKSTA_CLS: u16 = 0x000f;
/// LNKSTA: Negotiated Link Width field.
pub const PCI_EXP_LNKSTA_NLW: u16 = 0x03f0;
/// LNKSTA: Slot Clock Configuration.
pub const PCI_EXP_LNKSTA_SLC: u16 = 0x1000;

/// DEVCAP2: Completion Timeout Ranges A-D supported.
pub const PCI_EXP_DEVCAP2_COMP_TMOUT_RANGES: u32 = 0x0000_000f;
/// DEVCAP2: Completion Timeout Disable supported.
pub const PCI_EXP_DEVCAP2_COMP_TMOUT_DIS: u32 = 0x0000_0010;
/// DEVCTL2: Completion Timeout Value field.
pub const PCI_EXP_DEVCTL2_COMP_TIMEOUT: u16 = 0x000f;
/// DEVCTL2: Completion Timeout Disable.
pub const PCI_EXP_DEVCTL2_COMP_TMOUT_DIS: u16 = 0x0010;
/// LNKCAP2: Supported Link Speeds Vector field (bit 1 = 2.5 GT/s …).
pub const PCI_EXP_LNKCAP2_SLS: u32 = 0x0000_00fe;
/// LNKCTL2: Target Link Speed field.
pub const PCI_EXP_LNKCTL2_TLS: u16 = 0x000f;

/// Link speed, encoded as in LNKCAP.SLS / LNKSTA.CLS / LNKCTL2.TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkSpeed {
    /// 2.5 GT/s (Gen1).
    Gt2_5 = 1,
    /// 5.0 GT/s (Gen2).
    Gt5 = 2,
    /// 8.0 GT/s (Gen3).
    Gt8 = 3,
    /// 16.0 GT/s (Gen4).
    Gt16 = 4,
    /// 32.0 GT/s (Gen5).
    Gt32 = 5,
}

/// Link widths the Maximum Link Width field can name.
pub const LINK_WIDTHS: [u8; 7] = [1, 2, 4, 8, 12, 16, 32];

/// The trained link an Endpoint reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PcieLink {
    /// Maximum and current speed.
    pub speed: LinkSpeed,
    /// Maximum and negotiated width (lanes), one of [`LINK_WIDTHS`].
    pub width: u8,
}

impl Default for PcieLink {
    /// Gen4 x4, as a typical NVMe SSD.
    fn default() -> Self {
        Self {
            speed: LinkSpeed::Gt16,
            width: 4,
        }
    }
}

/// Installs the capability at `offset` (next pointer left 0). `link` is validated.
pub(crate) fn install(regs: &mut Registers, offset: usize, link: &PcieLink) {
    let speed = link.speed as u16;
    let width = u16::from(link.width);
    regs.set_u8(offset, PCI_CAP_ID_EXP);
    regs.init_u16(
        offset + PCI_EXP_FLAGS,
        PCI_EXP_FLAGS_VERS_2 | (PCI_EXP_TYPE_ENDPOINT << 4),
        0,
    );
    regs.init_u32(
        offset + PCI_EXP_DEVCAP,
        PCI_EXP_DEVCAP_PAYLOAD_256B
            | PCI_EXP_DEVCAP_EXT_TAG
            | PCI_EXP_DEVCAP_L0S_NO_LIMIT
            | PCI_EXP_DEVCAP_L1_NO_LIMIT
            | PCI_EXP_DEVCAP_RBER
            | PCI_EXP_DEVCAP_FLR,
        0,
    );
    regs.init_u16(
        offset + PCI_EXP_DEVCTL,
        PCI_EXP_DEVCTL_RELAX_EN | PCI_EXP_DEVCTL_NOSNOOP_EN | PCI_EXP_DEVCTL_READRQ_512B,
        PCI_EXP_DEVCTL_CERE
            | PCI_EXP_DEVCTL_NFERE
            | PCI_EXP_DEVCTL_FERE
            | PCI_EXP_DEVCTL_URRE
            | PCI_EXP_DEVCTL_RELAX_EN
            | PCI_EXP_DEVCTL_PAYLOAD
            | PCI_EXP_DEVCTL_EXT_TAG
            | PCI_EXP_DEVCTL_NOSNOOP_EN
            | PCI_EXP_DEVCTL_READRQ,
    );
    regs.set_w1c_u16(
        offset + PCI_EXP_DEVSTA,
        PCI_EXP_DEVSTA_CED | PCI_EXP_DEVSTA_NFED | PCI_EXP_DEVSTA_FED | PCI_EXP_DEVSTA_URD,
    );
    regs.init_u32(
        offset + PCI_EXP_LNKCAP,
        u32::from(speed) | (u32::from(width) << 4),
        0,
    );
    regs.init_u16(
        offset + PCI_EXP_LNKCTL,
        0,
        PCI_EXP_LNKCTL_ASPMC | PCI_EXP_LNKCTL_RCB | PCI_EXP_LNKCTL_CCC | PCI_EXP_LNKCTL_ES,
    );
    regs.init_u16(
        offset + PCI_EXP_LNKSTA,
        speed | (width << 4) | PCI_EXP_LNKSTA_SLC,
        0,
    );
    regs.init_u32(
        offset + PCI_EXP_DEVCAP2,
        PCI_EXP_DEVCAP2_COMP_TMOUT_RANGES | PCI_EXP_DEVCAP2_COMP_TMOUT_DIS,
        0,
    );
    regs.init_u16(
        offset + PCI_EXP_DEVCTL2,
        0,
        PCI_EXP_DEVCTL2_COMP_TIMEOUT | PCI_EXP_DEVCTL2_COMP_TMOUT_DIS,
    );
    // Supported Link Speeds Vector: every speed up to the maximum.
    let speeds = (1u32 << (u32::from(speed) + 1)) - 2;
    regs.init_u32(offset + PCI_EXP_LNKCAP2, speeds, 0);
    regs.init_u16(offset + PCI_EXP_LNKCTL2, speed, PCI_EXP_LNKCTL2_TLS);
}
