//! Errors: the guest-visible NVMe status kept apart from the host-side diagnostic.

use nvme_spec::Status;
use p2plab_memory::DmaError;

/// A command failure: `status` goes into the CQE, `source` only into the host log.
#[derive(Debug, thiserror::Error)]
#[error("command failed with {status:?}")]
pub struct NvmeError {
    /// What the guest sees.
    pub status: Status,
    /// Why, for the host log (absent when the status says it all).
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl NvmeError {
    /// A failure with a diagnostic.
    pub fn new(
        status: Status,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            status,
            source: Some(source.into()),
        }
    }
}

impl From<Status> for NvmeError {
    fn from(status: Status) -> Self {
        Self {
            status,
            source: None,
        }
    }
}

impl From<DmaError> for NvmeError {
    /// A failed bus-master access is a Data Transfer Error (§4.6.1.2.1).
    fn from(e: DmaError) -> Self {
        Self::new(Status::DATA_TRANSFER_ERROR, e)
    }
}

/// Why [`crate::NvmeController::new`] refused a configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("serial number must be 1..=20 ASCII characters")]
    Serial,
    #[error("model number must be 1..=40 ASCII characters")]
    Model,
    #[error("firmware revision must be 1..=8 ASCII characters")]
    Firmware,
    #[error("at least one namespace is required")]
    NoNamespaces,
    #[error("namespace {nsid}: LBA size {lba_size} is not 512 or 4096")]
    LbaSize { nsid: u32, lba_size: u32 },
    #[error("namespace {nsid}: size {size} is zero or not a multiple of the LBA size")]
    NamespaceSize { nsid: u32, size: u64 },
    #[error("namespace {nsid}: backing file is shorter than {size} bytes")]
    FileTooShort { nsid: u32, size: u64 },
    #[error("namespace {nsid}: backing file metadata: {error}")]
    FileMetadata { nsid: u32, error: String },
    #[error("CMB size {0:#x} is not a power of two >= 2 MiB (or 0 for none)")]
    CmbSize(u64),
    #[error("MQES {0} must be in 1..=4095")]
    Mqes(u16),
    #[error("max_io_queues {0} must be in 1..={max}", max = crate::pci::MAX_IO_QUEUES)]
    MaxIoQueues(u16),
    #[error("MDTS {0} must be in 1..=12")]
    Mdts(u8),
    #[error("the PCI config space declaration is invalid")]
    PciConfig(#[from] p2plab_pci::ConfigError),
}
