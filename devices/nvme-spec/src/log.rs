//! Log pages (spec §5.14.1).

use bitfield_struct::bitfield;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

open_enum! {
    /// LID: Log Page Identifier (§5.14.1, Figure 191).
    pub struct LogPageId: u8 {
        SUPPORTED_LOG_PAGES = 0x00,
        ERROR_INFORMATION = 0x01,
        SMART_HEALTH = 0x02,
        FIRMWARE_SLOT = 0x03,
        CHANGED_NAMESPACE_LIST = 0x04,
        COMMANDS_SUPPORTED_AND_EFFECTS = 0x05,
        DEVICE_SELF_TEST = 0x06,
        TELEMETRY_HOST = 0x07,
        TELEMETRY_CONTROLLER = 0x08,
        ENDURANCE_GROUP = 0x09,
        PERSISTENT_EVENT = 0x0d,
        RESERVATION_NOTIFICATION = 0x80,
        SANITIZE_STATUS = 0x81,
        /// Vendor specific: p2plab's fabric counters (JSON, NUL padded to at least 64 KiB).
        VENDOR_P2PLAB_COUNTERS = 0xc0,
    }
}

/// Error Information log entry (§5.14.1.1, Figure 194).
#[repr(C)]
#[derive(
    Copy, Clone, Debug, Default, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout,
)]
pub struct ErrorInformationEntry {
    /// Error Count (unique, incrementing; 0 = invalid entry).
    pub error_count: u64,
    /// Submission Queue ID.
    pub sqid: u16,
    /// Command ID.
    pub cid: u16,
    /// Status Field (without the phase tag in bit 0).
    pub status: u16,
    /// Parameter Error Location.
    pub parameter_error_location: u16,
    /// LBA.
    pub lba: u64,
    /// Namespace.
    pub nsid: u32,
    /// Vendor Specific Information Available.
    pub vsia: u8,
    /// Transport Type.
    pub trtype: u8,
    pub rsvd30: [u8; 2],
    /// Command Specific Information.
    pub csi: u64,
    /// Transport Type Specific Information.
    pub ttsi: u16,
    pub rsvd42: [u8; 22],
}
const _: () = assert!(size_of::<ErrorInformationEntry>() == 64);

/// SMART / Health Information log (§5.14.1.2, Figure 196). 128-bit counters are byte
/// arrays (little-endian), as the structure has no 16-byte alignment.
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct SmartHealthLog {
    /// Critical Warning.
    pub critical_warning: u8,
    /// Composite Temperature (Kelvin).
    pub composite_temperature: [u8; 2],
    /// Available Spare (percent).
    pub available_spare: u8,
    /// Available Spare Threshold (percent).
    pub available_spare_threshold: u8,
    /// Percentage Used.
    pub percentage_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endurance_group_critical_warning: u8,
    pub rsvd7: [u8; 25],
    /// Data Units Read: thousands of 512-byte units, rounded up.
    pub data_units_read: [u8; 16],
    /// Data Units Written: thousands of 512-byte units, rounded up.
    pub data_units_written: [u8; 16],
    /// Host Read Commands.
    pub host_read_commands: [u8; 16],
    /// Host Write Commands.
    pub host_write_commands: [u8; 16],
    /// Controller Busy Time (minutes).
    pub controller_busy_time: [u8; 16],
    /// Power Cycles.
    pub power_cycles: [u8; 16],
    /// Power On Hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and Data Integrity Errors.
    pub media_errors: [u8; 16],
    /// Number of Error Information Log Entries.
    pub num_err_log_entries: [u8; 16],
    /// Warning Composite Temperature Time (minutes).
    pub warning_temp_time: u32,
    /// Critical Composite Temperature Time (minutes).
    pub critical_comp_time: u32,
    /// Temperature Sensors 1..8 (Kelvin).
    pub temp_sensor: [u16; 8],
    /// Thermal Management Temperature 1/2 Transition Counts.
    pub thm_temp_trans_count: [u32; 2],
    /// Total Time For Thermal Management Temperature 1/2.
    pub thm_temp_total_time: [u32; 2],
    pub rsvd232: [u8; 280],
}
const _: () = assert!(size_of::<SmartHealthLog>() == 512);

/// Firmware Slot Information log (§5.14.1.3, Figure 198).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct FirmwareSlotLog {
    /// AFI: Active Firmware Info (bits 2:0 active slot).
    pub afi: u8,
    pub rsvd1: [u8; 7],
    /// FRS1..FRS7: Firmware Revision for Slot n (ASCII).
    pub frs: [[u8; 8]; 7],
    pub rsvd64: [u8; 448],
}
const _: () = assert!(size_of::<FirmwareSlotLog>() == 512);

/// Changed Namespace List log (§5.14.1.4): up to 1024 NSIDs.
pub type ChangedNamespaceList = [u32; 1024];

/// One Commands Supported and Effects entry (§5.14.1.5, Figure 200).
#[bitfield(u32)]
#[derive(PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct CommandEffects {
    /// CSUPP: Command Supported.
    pub csupp: bool,
    /// LBCC: Logical Block Content Change.
    pub lbcc: bool,
    /// NCC: Namespace Capability Change.
    pub ncc: bool,
    /// NIC: Namespace Inventory Change.
    pub nic: bool,
    /// CCC: Controller Capability Change.
    pub ccc: bool,
    #[bits(11)]
    __: u16,
    /// CSE: Command Submission and Execution.
    #[bits(3)]
    pub cse: u8,
    #[bits(13)]
    __: u16,
}

/// Commands Supported and Effects log (§5.14.1.5, Figure 199).
#[repr(C)]
#[derive(Copy, Clone, Debug, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
pub struct CommandsEffectsLog {
    /// ACS0..ACS255: Admin Command Supported, indexed by opcode.
    pub acs: [CommandEffects; 256],
    /// IOCS0..IOCS255: I/O Command Supported, indexed by opcode.
    pub iocs: [CommandEffects; 256],
    pub rsvd2048: [u8; 2048],
}
const _: () = assert!(size_of::<CommandsEffectsLog>() == 4096);

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::offset_of;

    #[test]
    fn smart_fields_sit_at_spec_offsets() {
        assert_eq!(offset_of!(SmartHealthLog, data_units_read), 32);
        assert_eq!(offset_of!(SmartHealthLog, data_units_written), 48);
        assert_eq!(offset_of!(SmartHealthLog, num_err_log_entries), 176);
        assert_eq!(offset_of!(SmartHealthLog, temp_sensor), 200);
        assert_eq!(offset_of!(FirmwareSlotLog, frs), 8);
    }
}
