//! Feature identifiers and values (spec §5.21.1).

use bitfield_struct::bitfield;

open_enum! {
    /// FID: Feature Identifier (§5.21.1, Figure 271).
    pub struct FeatureId: u8 {
        ARBITRATION = 0x01,
        POWER_MANAGEMENT = 0x02,
        LBA_RANGE_TYPE = 0x03,
        TEMPERATURE_THRESHOLD = 0x04,
        ERROR_RECOVERY = 0x05,
        VOLATILE_WRITE_CACHE = 0x06,
        NUMBER_OF_QUEUES = 0x07,
        INTERRUPT_COALESCING = 0x08,
        INTERRUPT_VECTOR_CONFIGURATION = 0x09,
        WRITE_ATOMICITY_NORMAL = 0x0a,
        ASYNC_EVENT_CONFIGURATION = 0x0b,
        AUTONOMOUS_POWER_STATE_TRANSITION = 0x0c,
        HOST_MEMORY_BUFFER = 0x0d,
        TIMESTAMP = 0x0e,
        KEEP_ALIVE_TIMER = 0x0f,
        HOST_CONTROLLED_THERMAL_MANAGEMENT = 0x10,
        NON_OPERATIONAL_POWER_STATE_CONFIG = 0x11,
        READ_RECOVERY_LEVEL_CONFIG = 0x12,
        PREDICTABLE_LATENCY_MODE_CONFIG = 0x13,
        PREDICTABLE_LATENCY_MODE_WINDOW = 0x14,
        LBA_STATUS_INFORMATION_REPORT_INTERVAL = 0x15,
        HOST_BEHAVIOR_SUPPORT = 0x16,
        SANITIZE_CONFIG = 0x17,
        ENDURANCE_GROUP_EVENT_CONFIGURATION = 0x18,
        SOFTWARE_PROGRESS_MARKER = 0x80,
        HOST_IDENTIFIER = 0x81,
        RESERVATION_NOTIFICATION_MASK = 0x82,
        RESERVATION_PERSISTENCE = 0x83,
        NAMESPACE_WRITE_PROTECTION_CONFIG = 0x84,
    }
}

/// Get Features SEL: current value.
pub const SEL_CURRENT: u8 = 0;
/// Get Features SEL: default value.
pub const SEL_DEFAULT: u8 = 1;
/// Get Features SEL: saved value.
pub const SEL_SAVED: u8 = 2;
/// Get Features SEL: supported capabilities.
pub const SEL_SUPPORTED_CAPABILITIES: u8 = 3;

/// Supported-capabilities result bit 2: the feature is changeable.
pub const CAPABILITY_CHANGEABLE: u32 = 1 << 2;

/// Number of Queues, CDW11 and completion DW0 (§5.21.1.7, Figure 284).
#[bitfield(u32)]
pub struct NumberOfQueues {
    /// NSQR / NSQA: Number of I/O Submission Queues (0's based).
    pub nsq: u16,
    /// NCQR / NCQA: Number of I/O Completion Queues (0's based).
    pub ncq: u16,
}

/// Temperature Threshold, CDW11 (§5.21.1.4, Figure 277).
#[bitfield(u32)]
pub struct TemperatureThreshold {
    /// TMPTH: Temperature Threshold (Kelvin).
    pub tmpth: u16,
    /// TMPSEL: Threshold Temperature Select (0 composite, 1..8 sensors, Fh all).
    #[bits(4)]
    pub tmpsel: u8,
    /// THSEL: Threshold Type Select (0 over, 1 under).
    #[bits(2)]
    pub thsel: u8,
    #[bits(10)]
    __: u16,
}

/// Power Management, CDW11 (§5.21.1.2, Figure 274).
#[bitfield(u32)]
pub struct PowerManagement {
    /// PS: Power State.
    #[bits(5)]
    pub ps: u8,
    /// WH: Workload Hint.
    #[bits(3)]
    pub wh: u8,
    #[bits(24)]
    __: u32,
}

/// Interrupt Coalescing, CDW11 (§5.21.1.8, Figure 287).
#[bitfield(u32)]
pub struct InterruptCoalescing {
    /// THR: Aggregation Threshold, completion entries per interrupt (0's based).
    pub thr: u8,
    /// TIME: Aggregation Time, the longest an interrupt may be delayed, in 100 µs units.
    pub time: u8,
    __: u16,
}

impl InterruptCoalescing {
    /// (completion entries per interrupt, longest delay); `None` when THR or TIME is 0,
    /// which turns coalescing off.
    pub fn aggregation(self) -> Option<(u32, std::time::Duration)> {
        (self.thr() != 0 && self.time() != 0).then(|| {
            (
                u32::from(self.thr()) + 1,
                std::time::Duration::from_micros(100 * u64::from(self.time())),
            )
        })
    }
}

/// Interrupt Vector Configuration, CDW11 (§5.21.1.9, Figure 288).
#[bitfield(u32)]
pub struct InterruptVectorConfiguration {
    /// IV: Interrupt Vector.
    pub iv: u16,
    /// CD: Coalescing Disable.
    pub cd: bool,
    #[bits(15)]
    __: u16,
}

/// Timestamp feature data (§5.21.1.14, Figure 297): 8 bytes in the data buffer.
#[bitfield(u64)]
pub struct Timestamp {
    /// Timestamp: milliseconds since midnight, 01-Jan-1970 UTC.
    #[bits(48)]
    pub timestamp: u64,
    /// Synch: the timestamp may have skipped (controller paused).
    pub synch: bool,
    /// Timestamp Origin (000b reset, 001b set by Set Features).
    #[bits(3)]
    pub origin: u8,
    #[bits(12)]
    __: u16,
}

/// Volatile Write Cache, CDW11 bit 0: WCE.
pub const VWC_WCE: u32 = 1;
