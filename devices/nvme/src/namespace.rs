//! Namespaces: a backing file, an LBA size, and identifiers derived from the serial.

use std::fs::File;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nvme_spec::identify::{
    IdentifyNamespace, LbaFormat, Nidt, NsIdDescriptorHeader, DLFEAT_READ_ZEROES,
    DLFEAT_WRITE_ZEROES_DEALLOCATES, IDENTIFY_DATA_SIZE,
};
use nvme_spec::Status;
use zerocopy::{FromZeros, IntoBytes};

use crate::error::{ConfigError, NvmeError};

/// One namespace as configured by the host.
#[derive(Debug)]
pub struct NamespaceConfig {
    /// Backing file, opened read-write; at least `size` bytes long.
    pub file: File,
    /// Namespace size in bytes (a multiple of `lba_size`).
    pub size: u64,
    /// Logical block size: 512 or 4096.
    pub lba_size: u32,
}

/// Deallocation (hole punching) supplied by the host, which may use `fallocate`; this
/// crate has no libc. Without it, Dataset Management deallocate is a no-op (allowed:
/// deallocation is advisory, DLFEAT reports nothing) and Write Zeroes writes zeroes.
pub trait Deallocate: Send + Sync {
    /// Make `len` bytes at `offset` of `file` read as zeroes, freeing their storage.
    fn punch_hole(&self, file: &File, offset: u64, len: u64) -> std::io::Result<()>;
}

/// A namespace of the controller.
pub(crate) struct Namespace {
    pub nsid: u32,
    pub file: File,
    /// Number of logical blocks (NSZE).
    pub nlba: u64,
    /// log2 of the LBA size.
    pub lba_shift: u32,
    pub nguid: [u8; 16],
    pub eui64: [u8; 8],
    pub uuid: [u8; 16],
    pub deallocate: Option<Arc<dyn Deallocate>>,
    /// `fdatasync`s of the backing file so far ([`Namespace::sync`]).
    pub syncs: AtomicU64,
}

/// FNV-1a of `data` from the offset basis xor `seed` (stable identifiers).
fn fnv1a(data: &[u8], seed: u64) -> u64 {
    p2plab_pci::fnv1a(p2plab_pci::FNV1A_BASIS ^ seed, data)
}

impl Namespace {
    pub fn new(
        nsid: u32,
        serial: &str,
        cfg: NamespaceConfig,
        deallocate: Option<Arc<dyn Deallocate>>,
    ) -> Result<Self, ConfigError> {
        let lba_shift = match cfg.lba_size {
            512 => 9,
            4096 => 12,
            lba_size => return Err(ConfigError::LbaSize { nsid, lba_size }),
        };
        if cfg.size == 0 || cfg.size & (u64::from(cfg.lba_size) - 1) != 0 {
            return Err(ConfigError::NamespaceSize {
                nsid,
                size: cfg.size,
            });
        }
        let len = cfg
            .file
            .metadata()
            .map_err(|e| ConfigError::FileMetadata {
                nsid,
                error: e.to_string(),
            })?
            .len();
        if len < cfg.size {
            return Err(ConfigError::FileTooShort {
                nsid,
                size: cfg.size,
            });
        }
        let a = fnv1a(serial.as_bytes(), u64::from(nsid)).to_be_bytes();
        let b = fnv1a(serial.as_bytes(), !u64::from(nsid)).to_be_bytes();
        let mut nguid = [0u8; 16];
        nguid[..8].copy_from_slice(&a);
        nguid[8..12].copy_from_slice(&b[..4]);
        nguid[12..].copy_from_slice(&nsid.to_be_bytes());
        // EUI-64: the lab vendor ID as an (unregistered, locally administered) prefix,
        // then hash and nsid bits.
        let mut eui64 = [0u8; 8];
        eui64[0] = 0x2a; // locally administered, unicast
        eui64[1] = 0x2b;
        eui64[2..6].copy_from_slice(&a[..4]);
        eui64[6..].copy_from_slice(&(nsid as u16).to_be_bytes());
        let mut uuid = [0u8; 16];
        uuid[..8].copy_from_slice(&b);
        uuid[8..].copy_from_slice(&a);
        uuid[6] = (uuid[6] & 0x0f) | 0x80; // version 8 (custom)
        uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
        Ok(Self {
            nsid,
            file: cfg.file,
            nlba: cfg.size >> lba_shift,
            lba_shift,
            nguid,
            eui64,
            uuid,
            deallocate,
            syncs: AtomicU64::new(0),
        })
    }

    /// Make everything written so far durable: `fdatasync` the backing file. What
    /// Flush, a FUA write, a write with the volatile write cache disabled and a
    /// shutdown rely on; a failure is a Write Fault.
    pub fn sync(&self) -> Result<(), NvmeError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.file
            .sync_data()
            .map_err(|e| NvmeError::new(Status::WRITE_FAULT, e))
    }

    /// Byte offset and length of `nlb` blocks at `slba`, or LBA Out of Range.
    pub fn byte_range(&self, slba: u64, nlb: u64) -> Result<(u64, u64), NvmeError> {
        let end = slba.checked_add(nlb).ok_or(Status::LBA_OUT_OF_RANGE)?;
        if end > self.nlba {
            return Err(Status::LBA_OUT_OF_RANGE.into());
        }
        // nlba << lba_shift fits u64 (it is a file size), so these cannot overflow.
        Ok((slba << self.lba_shift, nlb << self.lba_shift))
    }

    /// Identify Namespace (CNS 00h, §5.15.2.1).
    pub fn identify(&self) -> IdentifyNamespace {
        let mut id = IdentifyNamespace::new_zeroed();
        id.nsze = self.nlba;
        id.ncap = self.nlba;
        id.nuse = self.nlba;
        id.nlbaf = 0;
        id.flbas = 0;
        if self.deallocate.is_some() {
            id.dlfeat = DLFEAT_READ_ZEROES | DLFEAT_WRITE_ZEROES_DEALLOCATES;
        }
        id.nvmcap = u128::from(self.nlba << self.lba_shift).to_le_bytes();
        id.nguid = self.nguid;
        id.eui64 = self.eui64;
        id.lbaf[0] = LbaFormat::new().with_lbads(self.lba_shift as u8);
        id
    }

    /// Namespace Identification Descriptor list (CNS 03h, §5.15.2.3).
    pub fn id_descriptors(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(IDENTIFY_DATA_SIZE);
        for (nidt, nid) in [
            (Nidt::EUI64, &self.eui64[..]),
            (Nidt::NGUID, &self.nguid[..]),
            (Nidt::UUID, &self.uuid[..]),
        ] {
            let h = NsIdDescriptorHeader {
                nidt,
                nidl: nid.len() as u8,
                rsvd: 0,
            };
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(nid);
        }
        out.resize(IDENTIFY_DATA_SIZE, 0);
        out
    }
}
