//! Completion status codes (spec §4.6.1.2): the Status Code Type and Status Code of a
//! CQE's Status Field, kept together as `(SCT << 8) | SC`.

open_enum! {
    /// Status Code Type (§4.6.1.1, Figure 126).
    pub struct StatusCodeType: u8 {
        GENERIC = 0,
        COMMAND_SPECIFIC = 1,
        MEDIA_ERROR = 2,
        PATH_RELATED = 3,
        VENDOR_SPECIFIC = 7,
    }
}

open_enum! {
    /// A completion status: `(SCT << 8) | SC` (§4.6.1.2).
    pub struct Status: u16 {
        // Generic Command Status (SCT 0, Figure 127).
        SUCCESS = 0x000,
        INVALID_COMMAND_OPCODE = 0x001,
        INVALID_FIELD_IN_COMMAND = 0x002,
        COMMAND_ID_CONFLICT = 0x003,
        DATA_TRANSFER_ERROR = 0x004,
        COMMANDS_ABORTED_DUE_TO_POWER_LOSS_NOTIFICATION = 0x005,
        INTERNAL_ERROR = 0x006,
        COMMAND_ABORT_REQUESTED = 0x007,
        COMMAND_ABORTED_DUE_TO_SQ_DELETION = 0x008,
        COMMAND_ABORTED_DUE_TO_FAILED_FUSED_COMMAND = 0x009,
        COMMAND_ABORTED_DUE_TO_MISSING_FUSED_COMMAND = 0x00a,
        INVALID_NAMESPACE_OR_FORMAT = 0x00b,
        COMMAND_SEQUENCE_ERROR = 0x00c,
        INVALID_SGL_SEGMENT_DESCRIPTOR = 0x00d,
        INVALID_NUMBER_OF_SGL_DESCRIPTORS = 0x00e,
        DATA_SGL_LENGTH_INVALID = 0x00f,
        METADATA_SGL_LENGTH_INVALID = 0x010,
        SGL_DESCRIPTOR_TYPE_INVALID = 0x011,
        INVALID_USE_OF_CONTROLLER_MEMORY_BUFFER = 0x012,
        PRP_OFFSET_INVALID = 0x013,
        ATOMIC_WRITE_UNIT_EXCEEDED = 0x014,
        OPERATION_DENIED = 0x015,
        SGL_OFFSET_INVALID = 0x016,
        HOST_IDENTIFIER_INCONSISTENT_FORMAT = 0x018,
        KEEP_ALIVE_TIMER_EXPIRED = 0x019,
        KEEP_ALIVE_TIMEOUT_INVALID = 0x01a,
        COMMAND_ABORTED_DUE_TO_PREEMPT_AND_ABORT = 0x01b,
        SANITIZE_FAILED = 0x01c,
        SANITIZE_IN_PROGRESS = 0x01d,
        SGL_DATA_BLOCK_GRANULARITY_INVALID = 0x01e,
        COMMAND_NOT_SUPPORTED_FOR_QUEUE_IN_CMB = 0x01f,
        NAMESPACE_IS_WRITE_PROTECTED = 0x020,
        COMMAND_INTERRUPTED = 0x021,
        TRANSIENT_TRANSPORT_ERROR = 0x022,
        // Generic Command Status, NVM command set (Figure 128).
        LBA_OUT_OF_RANGE = 0x080,
        CAPACITY_EXCEEDED = 0x081,
        NAMESPACE_NOT_READY = 0x082,
        RESERVATION_CONFLICT = 0x083,
        FORMAT_IN_PROGRESS = 0x084,

        // Command Specific Status (SCT 1, Figure 129).
        COMPLETION_QUEUE_INVALID = 0x100,
        INVALID_QUEUE_IDENTIFIER = 0x101,
        INVALID_QUEUE_SIZE = 0x102,
        ABORT_COMMAND_LIMIT_EXCEEDED = 0x103,
        ASYNCHRONOUS_EVENT_REQUEST_LIMIT_EXCEEDED = 0x105,
        INVALID_FIRMWARE_SLOT = 0x106,
        INVALID_FIRMWARE_IMAGE = 0x107,
        INVALID_INTERRUPT_VECTOR = 0x108,
        INVALID_LOG_PAGE = 0x109,
        INVALID_FORMAT = 0x10a,
        FIRMWARE_ACTIVATION_REQUIRES_CONVENTIONAL_RESET = 0x10b,
        INVALID_QUEUE_DELETION = 0x10c,
        FEATURE_IDENTIFIER_NOT_SAVEABLE = 0x10d,
        FEATURE_NOT_CHANGEABLE = 0x10e,
        FEATURE_NOT_NAMESPACE_SPECIFIC = 0x10f,
        NAMESPACE_INSUFFICIENT_CAPACITY = 0x115,
        NAMESPACE_IDENTIFIER_UNAVAILABLE = 0x116,
        INVALID_CONTROLLER_IDENTIFIER = 0x11f,
        // Command Specific Status, NVM command set (Figure 130).
        CONFLICTING_ATTRIBUTES = 0x180,
        INVALID_PROTECTION_INFORMATION = 0x181,
        ATTEMPTED_WRITE_TO_READ_ONLY_RANGE = 0x182,

        // Media and Data Integrity Errors (SCT 2, Figure 131).
        WRITE_FAULT = 0x280,
        UNRECOVERED_READ_ERROR = 0x281,
        END_TO_END_GUARD_CHECK_ERROR = 0x282,
        END_TO_END_APPLICATION_TAG_CHECK_ERROR = 0x283,
        END_TO_END_REFERENCE_TAG_CHECK_ERROR = 0x284,
        COMPARE_FAILURE = 0x285,
        ACCESS_DENIED = 0x286,
        DEALLOCATED_OR_UNWRITTEN_LOGICAL_BLOCK = 0x287,
    }
}

impl Status {
    /// Builds a status from its Status Code Type and Status Code.
    pub const fn from_parts(sct: StatusCodeType, sc: u8) -> Self {
        Self(((sct.0 as u16 & 0x7) << 8) | sc as u16)
    }
    /// SCT: Status Code Type.
    pub const fn sct(self) -> StatusCodeType {
        StatusCodeType(((self.0 >> 8) & 0x7) as u8)
    }
    /// SC: Status Code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// Whether this is Successful Completion.
    pub const fn is_success(self) -> bool {
        self.0 == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip() {
        let s = Status::INVALID_QUEUE_DELETION;
        assert_eq!(s.sct(), StatusCodeType::COMMAND_SPECIFIC);
        assert_eq!(s.sc(), 0x0c);
        assert_eq!(Status::from_parts(s.sct(), s.sc()), s);
        assert_eq!(Status::COMPARE_FAILURE.sct(), StatusCodeType::MEDIA_ERROR);
    }
}
