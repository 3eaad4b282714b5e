//! The 16-byte message header every vfio-user message starts with, and the command
//! numbers (vfio-user spec "Header"; QEMU `hw/vfio-user/protocol.h` `VFIOUserHdr`).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Message header (`VFIOUserHdr`).
#[repr(C)]
#[derive(
    FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub struct Header {
    /// Message ID: chosen by the sender of a request, echoed in its reply.
    pub id: u16,
    /// Command number ([`Command`]).
    pub command: u16,
    /// Size of the whole message including this header, in bytes.
    pub size: u32,
    /// [`FLAG_TYPE_MASK`] type bits plus [`FLAG_NO_REPLY`] and [`FLAG_ERROR`].
    pub flags: u32,
    /// errno of a failed request, valid in a reply with [`FLAG_ERROR`].
    pub error: u32,
}
const _: () = assert!(core::mem::size_of::<Header>() == 16);

/// Size of [`Header`] on the wire.
pub const HEADER_SIZE: usize = core::mem::size_of::<Header>();

/// Message type bits of [`Header::flags`].
pub const FLAG_TYPE_MASK: u32 = 0xf;
/// Type: a request (command).
pub const FLAG_TYPE_REQUEST: u32 = 0x0;
/// Type: a reply.
pub const FLAG_TYPE_REPLY: u32 = 0x1;
/// The sender does not want a reply (posted writes).
pub const FLAG_NO_REPLY: u32 = 0x10;
/// The reply reports an error; [`Header::error`] holds the errno.
pub const FLAG_ERROR: u32 = 0x20;

/// Kind of a message, from its type bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Request,
    Reply,
    /// A type value the protocol does not define.
    Invalid(u32),
}

impl Header {
    /// A request header for `command` with a body of `body_len` bytes, or `None` if the
    /// message would not fit the 32-bit size field.
    pub fn request(id: u16, command: Command, body_len: usize) -> Option<Header> {
        Some(Header {
            id,
            command: command.0,
            size: message_size(body_len)?,
            flags: FLAG_TYPE_REQUEST,
            error: 0,
        })
    }

    /// The success reply header to `self` carrying `body_len` bytes of payload.
    pub fn reply(&self, body_len: usize) -> Option<Header> {
        Some(Header {
            id: self.id,
            command: self.command,
            size: message_size(body_len)?,
            flags: FLAG_TYPE_REPLY,
            error: 0,
        })
    }

    /// The error reply header to `self` (no payload).
    pub fn error_reply(&self, errno: u32) -> Header {
        Header {
            id: self.id,
            command: self.command,
            size: HEADER_SIZE as u32,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: errno,
        }
    }

    pub fn message_type(&self) -> MessageType {
        match self.flags & FLAG_TYPE_MASK {
            FLAG_TYPE_REQUEST => MessageType::Request,
            FLAG_TYPE_REPLY => MessageType::Reply,
            t => MessageType::Invalid(t),
        }
    }

    pub fn no_reply(&self) -> bool {
        self.flags & FLAG_NO_REPLY != 0
    }

    pub fn is_error(&self) -> bool {
        self.flags & FLAG_ERROR != 0
    }

    pub fn command(&self) -> Command {
        Command(self.command)
    }

    /// Body length declared by [`Header::size`], or `None` if it is below the header size.
    pub fn body_len(&self) -> Option<usize> {
        usize::try_from(self.size).ok()?.checked_sub(HEADER_SIZE)
    }
}

fn message_size(body_len: usize) -> Option<u32> {
    u32::try_from(body_len.checked_add(HEADER_SIZE)?).ok()
}

/// A command number. Open: values the protocol does not define stay representable so
/// a server can answer them with an error instead of losing the stream.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command(pub u16);

impl Command {
    pub const VERSION: Command = Command(1);
    pub const DMA_MAP: Command = Command(2);
    pub const DMA_UNMAP: Command = Command(3);
    pub const DEVICE_GET_INFO: Command = Command(4);
    pub const DEVICE_GET_REGION_INFO: Command = Command(5);
    pub const DEVICE_GET_REGION_IO_FDS: Command = Command(6);
    pub const DEVICE_GET_IRQ_INFO: Command = Command(7);
    pub const DEVICE_SET_IRQS: Command = Command(8);
    pub const REGION_READ: Command = Command(9);
    pub const REGION_WRITE: Command = Command(10);
    pub const DMA_READ: Command = Command(11);
    pub const DMA_WRITE: Command = Command(12);
    pub const DEVICE_RESET: Command = Command(13);
    pub const DIRTY_PAGES: Command = Command(14);
    pub const REGION_WRITE_MULTI: Command = Command(15);
    pub const DEVICE_FEATURE: Command = Command(16);
    pub const MIG_DATA_READ: Command = Command(17);
    pub const MIG_DATA_WRITE: Command = Command(18);

    /// The spec name, or `None` for an undefined number.
    pub fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            1 => "VERSION",
            2 => "DMA_MAP",
            3 => "DMA_UNMAP",
            4 => "DEVICE_GET_INFO",
            5 => "DEVICE_GET_REGION_INFO",
            6 => "DEVICE_GET_REGION_IO_FDS",
            7 => "DEVICE_GET_IRQ_INFO",
            8 => "DEVICE_SET_IRQS",
            9 => "REGION_READ",
            10 => "REGION_WRITE",
            11 => "DMA_READ",
            12 => "DMA_WRITE",
            13 => "DEVICE_RESET",
            14 => "DIRTY_PAGES",
            15 => "REGION_WRITE_MULTI",
            16 => "DEVICE_FEATURE",
            17 => "MIG_DATA_READ",
            18 => "MIG_DATA_WRITE",
            _ => return None,
        })
    }
}

impl core::fmt::Debug for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Command({})", self.0),
        }
    }
}

impl core::fmt::Display for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_little_endian() {
        let h = Header {
            id: 0x1234,
            command: 5,
            size: 48,
            flags: FLAG_TYPE_REPLY | FLAG_ERROR,
            error: 22,
        };
        let b = h.as_bytes();
        assert_eq!(
            b,
            [0x34, 0x12, 5, 0, 48, 0, 0, 0, 0x21, 0, 0, 0, 22, 0, 0, 0]
        );
        assert_eq!(Header::read_from_bytes(b).unwrap(), h);
    }

    #[test]
    fn message_type_and_flags() {
        let mut h = Header::request(1, Command::REGION_WRITE, 20).unwrap();
        assert_eq!(h.message_type(), MessageType::Request);
        assert_eq!(h.size, 36);
        assert_eq!(h.body_len(), Some(20));
        h.flags |= FLAG_NO_REPLY;
        assert!(h.no_reply());
        h.flags = 7;
        assert_eq!(h.message_type(), MessageType::Invalid(7));
    }

    #[test]
    fn body_len_rejects_sizes_below_header() {
        let h = Header {
            size: 15,
            ..Default::default()
        };
        assert_eq!(h.body_len(), None);
    }

    #[test]
    fn error_reply_keeps_id_and_command() {
        let h = Header::request(9, Command::DMA_MAP, 32).unwrap();
        let e = h.error_reply(17);
        assert_eq!((e.id, e.command, e.size, e.error), (9, 2, 16, 17));
        assert!(e.is_error());
        assert_eq!(e.message_type(), MessageType::Reply);
    }

    #[test]
    fn command_names() {
        assert_eq!(
            format!("{:?}", Command::REGION_WRITE_MULTI),
            "REGION_WRITE_MULTI"
        );
        assert_eq!(format!("{:?}", Command(999)), "Command(999)");
    }
}
