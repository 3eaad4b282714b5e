//! Decoding a request's payload into a typed [`Request`], with an error for every
//! malformed input (never a panic).

use crate::caps::{parse_capabilities, Capabilities};
use crate::header::{Command, Header};
use crate::wire::*;
use zerocopy::FromBytes;

/// A decoded client request. Borrowed variants point into the received payload.
#[derive(Debug, Clone, PartialEq)]
pub enum Request<'a> {
    Version {
        major: u16,
        minor: u16,
        caps: Capabilities,
    },
    DmaMap(DmaMap),
    DmaUnmap(DmaUnmap),
    DeviceGetInfo(DeviceInfo),
    GetRegionInfo(RegionInfo),
    GetIrqInfo(IrqInfo),
    /// `data` holds `count` bools with `IRQ_SET_DATA_BOOL`, else it is empty.
    SetIrqs {
        set: IrqSet,
        data: &'a [u8],
    },
    RegionRead(RegionAccess),
    RegionWrite {
        access: RegionAccess,
        data: &'a [u8],
    },
    RegionWriteMulti(Vec<WriteOne>),
    DeviceReset,
}

/// Why a payload could not be decoded.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{command} payload is {actual} bytes, needs {expected}")]
    TooShort {
        command: Command,
        expected: usize,
        actual: usize,
    },
    #[error("{command} argsz {argsz} is below {min}")]
    ArgszTooSmall {
        command: Command,
        argsz: u32,
        min: usize,
    },
    #[error("count {actual} does not match the {expected} bytes carried")]
    CountMismatch { expected: u64, actual: u64 },
    #[error("malformed capabilities: {0}")]
    BadCapabilities(String),
    #[error("REGION_WRITE_MULTI with {0} writes (max {WRITE_MULTI_MAX})")]
    TooManyWrites(u64),
    #[error("REGION_WRITE_MULTI entry of {0} bytes (max {WRITE_MULTI_DATA})")]
    WriteTooLong(u32),
    #[error("length arithmetic overflows")]
    Overflow,
    #[error("{0} is not supported")]
    Unsupported(Command),
    #[error("unknown command {}", .0 .0)]
    UnknownCommand(Command),
}

/// Linux errno values used in error replies (the wire carries Linux numbers).
pub mod errno {
    pub const E2BIG: u32 = 7;
    pub const EINVAL: u32 = 22;
    pub const ENOSYS: u32 = 38;
    pub const ENOTSUP: u32 = 95;
}

impl DecodeError {
    pub(crate) fn too_short(command: Command, expected: usize, actual: usize) -> Self {
        DecodeError::TooShort {
            command,
            expected,
            actual,
        }
    }

    /// The errno an error reply should carry.
    pub fn errno(&self) -> u32 {
        match self {
            DecodeError::Unsupported(_) => errno::ENOTSUP,
            DecodeError::UnknownCommand(_) => errno::ENOSYS,
            DecodeError::TooManyWrites(_) | DecodeError::WriteTooLong(_) => errno::E2BIG,
            _ => errno::EINVAL,
        }
    }
}

fn fixed<T: FromBytes + zerocopy::KnownLayout + zerocopy::Immutable>(
    command: Command,
    payload: &[u8],
) -> Result<(T, &[u8]), DecodeError> {
    T::read_from_prefix(payload)
        .map_err(|_| DecodeError::too_short(command, core::mem::size_of::<T>(), payload.len()))
}

fn check_argsz(command: Command, argsz: u32, min: usize) -> Result<(), DecodeError> {
    if (argsz as usize) < min {
        return Err(DecodeError::ArgszTooSmall {
            command,
            argsz,
            min,
        });
    }
    Ok(())
}

/// Decode the payload of request `header` (the bytes after the header).
pub fn decode_request<'a>(header: &Header, payload: &'a [u8]) -> Result<Request<'a>, DecodeError> {
    let cmd = header.command();
    Ok(match cmd {
        Command::VERSION => {
            let (v, rest) = fixed::<Version>(cmd, payload)?;
            Request::Version {
                major: v.major,
                minor: v.minor,
                caps: parse_capabilities(rest)?,
            }
        }
        Command::DMA_MAP => {
            let (m, _) = fixed::<DmaMap>(cmd, payload)?;
            check_argsz(cmd, m.argsz, DmaMap::SIZE)?;
            Request::DmaMap(m)
        }
        Command::DMA_UNMAP => {
            let (m, _) = fixed::<DmaUnmap>(cmd, payload)?;
            check_argsz(cmd, m.argsz, DmaUnmap::SIZE)?;
            Request::DmaUnmap(m)
        }
        Command::DEVICE_GET_INFO => {
            let (m, _) = fixed::<DeviceInfo>(cmd, payload)?;
            check_argsz(cmd, m.argsz, DeviceInfo::SIZE)?;
            Request::DeviceGetInfo(m)
        }
        Command::DEVICE_GET_REGION_INFO => {
            let (m, _) = fixed::<RegionInfo>(cmd, payload)?;
            check_argsz(cmd, m.argsz, RegionInfo::SIZE)?;
            Request::GetRegionInfo(m)
        }
        Command::DEVICE_GET_IRQ_INFO => {
            let (m, _) = fixed::<IrqInfo>(cmd, payload)?;
            check_argsz(cmd, m.argsz, IrqInfo::SIZE)?;
            Request::GetIrqInfo(m)
        }
        Command::DEVICE_SET_IRQS => {
            let (set, rest) = fixed::<IrqSet>(cmd, payload)?;
            check_argsz(cmd, set.argsz, IrqSet::SIZE)?;
            let data = if set.flags & crate::vfio::IRQ_SET_DATA_BOOL != 0 {
                let n = set.count as usize;
                rest.get(..n).ok_or(DecodeError::too_short(
                    cmd,
                    IrqSet::SIZE.saturating_add(n),
                    payload.len(),
                ))?
            } else {
                &[]
            };
            Request::SetIrqs { set, data }
        }
        Command::REGION_READ => {
            let (a, _) = fixed::<RegionAccess>(cmd, payload)?;
            Request::RegionRead(a)
        }
        Command::REGION_WRITE => {
            let (access, data) = fixed::<RegionAccess>(cmd, payload)?;
            if access.count as usize != data.len() {
                return Err(DecodeError::CountMismatch {
                    expected: data.len() as u64,
                    actual: access.count.into(),
                });
            }
            Request::RegionWrite { access, data }
        }
        Command::REGION_WRITE_MULTI => {
            let (m, rest) = fixed::<WriteMulti>(cmd, payload)?;
            if m.wr_cnt > WRITE_MULTI_MAX {
                return Err(DecodeError::TooManyWrites(m.wr_cnt));
            }
            // wr_cnt <= 200, so this cannot overflow.
            let n = m.wr_cnt as usize;
            let need = n * WriteOne::SIZE;
            let bytes = rest.get(..need).ok_or(DecodeError::too_short(
                cmd,
                WriteMulti::SIZE + need,
                payload.len(),
            ))?;
            let mut writes = Vec::with_capacity(n);
            for chunk in bytes.chunks_exact(WriteOne::SIZE) {
                let w = WriteOne::read_from_bytes(chunk).map_err(|_| DecodeError::Overflow)?;
                if w.count as usize > WRITE_MULTI_DATA {
                    return Err(DecodeError::WriteTooLong(w.count));
                }
                writes.push(w);
            }
            Request::RegionWriteMulti(writes)
        }
        Command::DEVICE_RESET => Request::DeviceReset,
        Command::DEVICE_GET_REGION_IO_FDS
        | Command::DMA_READ
        | Command::DMA_WRITE
        | Command::DIRTY_PAGES
        | Command::DEVICE_FEATURE
        | Command::MIG_DATA_READ
        | Command::MIG_DATA_WRITE => return Err(DecodeError::Unsupported(cmd)),
        _ => return Err(DecodeError::UnknownCommand(cmd)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vfio::*;
    use zerocopy::IntoBytes;

    fn hdr(cmd: Command, len: usize) -> Header {
        Header::request(1, cmd, len).unwrap()
    }

    #[track_caller]
    fn decode(cmd: Command, payload: &[u8]) -> Result<Request<'_>, DecodeError> {
        decode_request(&hdr(cmd, payload.len()), payload)
    }

    #[test]
    fn version_with_caps() {
        let mut p = Version { major: 0, minor: 0 }.as_bytes().to_vec();
        p.extend_from_slice(b"{\"capabilities\":{\"max_msg_fds\":16}}\0");
        match decode(Command::VERSION, &p).unwrap() {
            Request::Version {
                major: 0,
                minor: 0,
                caps,
            } => assert_eq!(caps.max_msg_fds, 16),
            r => panic!("{r:?}"),
        }
        assert!(matches!(
            decode(Command::VERSION, &[0, 0]),
            Err(DecodeError::TooShort { .. })
        ));
        let mut bad = Version::default().as_bytes().to_vec();
        bad.extend_from_slice(b"{nope\0");
        assert_eq!(
            decode(Command::VERSION, &bad).unwrap_err().errno(),
            errno::EINVAL
        );
    }

    #[test]
    fn dma_map_and_unmap() {
        let m = DmaMap {
            argsz: 32,
            flags: DMA_MAP_FLAG_READ,
            offset: 0,
            iova: 0x1000,
            size: 0x2000,
        };
        assert_eq!(
            decode(Command::DMA_MAP, m.as_bytes()).unwrap(),
            Request::DmaMap(m)
        );
        assert!(matches!(
            decode(Command::DMA_MAP, &m.as_bytes()[..31]),
            Err(DecodeError::TooShort { .. })
        ));
        let small = DmaMap { argsz: 8, ..m };
        assert!(matches!(
            decode(Command::DMA_MAP, small.as_bytes()),
            Err(DecodeError::ArgszTooSmall { .. })
        ));
        let u = DmaUnmap {
            argsz: 24,
            flags: DMA_UNMAP_FLAG_ALL,
            iova: 0,
            size: 0,
        };
        assert_eq!(
            decode(Command::DMA_UNMAP, u.as_bytes()).unwrap(),
            Request::DmaUnmap(u)
        );
        assert!(decode(Command::DMA_UNMAP, &u.as_bytes()[..16]).is_err());
    }

    #[test]
    fn info_requests() {
        let d = DeviceInfo {
            argsz: 16,
            ..Default::default()
        };
        assert_eq!(
            decode(Command::DEVICE_GET_INFO, d.as_bytes()).unwrap(),
            Request::DeviceGetInfo(d)
        );
        let r = RegionInfo {
            argsz: 32,
            index: 7,
            ..Default::default()
        };
        assert_eq!(
            decode(Command::DEVICE_GET_REGION_INFO, r.as_bytes()).unwrap(),
            Request::GetRegionInfo(r)
        );
        let r_small = RegionInfo { argsz: 16, ..r };
        assert!(decode(Command::DEVICE_GET_REGION_INFO, r_small.as_bytes()).is_err());
        let i = IrqInfo {
            argsz: 16,
            index: 2,
            ..Default::default()
        };
        assert_eq!(
            decode(Command::DEVICE_GET_IRQ_INFO, i.as_bytes()).unwrap(),
            Request::GetIrqInfo(i)
        );
        assert!(decode(Command::DEVICE_GET_IRQ_INFO, &[0; 15]).is_err());
    }

    #[test]
    fn set_irqs_bool_data_must_be_present() {
        let s = IrqSet {
            argsz: 23,
            flags: IRQ_SET_DATA_BOOL | IRQ_SET_ACTION_TRIGGER,
            index: 2,
            start: 0,
            count: 3,
        };
        let mut p = s.as_bytes().to_vec();
        p.extend_from_slice(&[1, 0, 1]);
        assert_eq!(
            decode(Command::DEVICE_SET_IRQS, &p).unwrap(),
            Request::SetIrqs {
                set: s,
                data: &[1, 0, 1]
            }
        );
        assert!(decode(Command::DEVICE_SET_IRQS, &p[..21]).is_err());
        let e = IrqSet {
            flags: IRQ_SET_DATA_EVENTFD | IRQ_SET_ACTION_TRIGGER,
            ..s
        };
        assert_eq!(
            decode(Command::DEVICE_SET_IRQS, e.as_bytes()).unwrap(),
            Request::SetIrqs { set: e, data: &[] }
        );
    }

    #[test]
    fn region_read_write() {
        let a = RegionAccess {
            offset: 4,
            region: 0,
            count: 4,
        };
        assert_eq!(
            decode(Command::REGION_READ, a.as_bytes()).unwrap(),
            Request::RegionRead(a)
        );
        let mut p = a.as_bytes().to_vec();
        p.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(
            decode(Command::REGION_WRITE, &p).unwrap(),
            Request::RegionWrite {
                access: a,
                data: &[1, 2, 3, 4]
            }
        );
        assert!(matches!(
            decode(Command::REGION_WRITE, &p[..19]),
            Err(DecodeError::CountMismatch { .. })
        ));
    }

    #[test]
    fn region_write_multi() {
        let w = WriteOne {
            offset: 8,
            region: 0,
            count: 4,
            data: [1, 2, 3, 4, 0, 0, 0, 0],
        };
        let mut p = WriteMulti { wr_cnt: 2 }.as_bytes().to_vec();
        p.extend_from_slice(w.as_bytes());
        p.extend_from_slice(w.as_bytes());
        assert_eq!(
            decode(Command::REGION_WRITE_MULTI, &p).unwrap(),
            Request::RegionWriteMulti(vec![w, w])
        );
        assert!(decode(Command::REGION_WRITE_MULTI, &p[..40]).is_err());
        let huge = WriteMulti { wr_cnt: u64::MAX };
        assert_eq!(
            decode(Command::REGION_WRITE_MULTI, huge.as_bytes()),
            Err(DecodeError::TooManyWrites(u64::MAX))
        );
        let mut long = WriteMulti { wr_cnt: 1 }.as_bytes().to_vec();
        long.extend_from_slice(WriteOne { count: 9, ..w }.as_bytes());
        assert_eq!(
            decode(Command::REGION_WRITE_MULTI, &long),
            Err(DecodeError::WriteTooLong(9))
        );
    }

    #[test]
    fn reset_unsupported_and_unknown() {
        assert_eq!(
            decode(Command::DEVICE_RESET, &[]).unwrap(),
            Request::DeviceReset
        );
        let e = decode(Command::DIRTY_PAGES, &[]).unwrap_err();
        assert_eq!(e.errno(), errno::ENOTSUP);
        let e = decode(Command(200), &[1, 2, 3]).unwrap_err();
        assert_eq!(e, DecodeError::UnknownCommand(Command(200)));
        assert_eq!(e.errno(), errno::ENOSYS);
    }
}
