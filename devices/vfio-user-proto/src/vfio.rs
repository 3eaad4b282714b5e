//! Constants vfio-user reuses from Linux `include/uapi/linux/vfio.h`.

/// `VFIO_DEVICE_FLAGS_RESET`: the device supports DEVICE_RESET.
pub const DEVICE_FLAGS_RESET: u32 = 1 << 0;
/// `VFIO_DEVICE_FLAGS_PCI`: a PCI device (regions/irqs use the PCI index layout).
pub const DEVICE_FLAGS_PCI: u32 = 1 << 1;

/// `VFIO_REGION_INFO_FLAG_READ`.
pub const REGION_INFO_FLAG_READ: u32 = 1 << 0;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const REGION_INFO_FLAG_WRITE: u32 = 1 << 1;
/// `VFIO_REGION_INFO_FLAG_MMAP`: the client may mmap the region (fd in the reply).
pub const REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
/// `VFIO_REGION_INFO_FLAG_CAPS`: a capability chain starts at `cap_offset`.
pub const REGION_INFO_FLAG_CAPS: u32 = 1 << 3;

/// `VFIO_REGION_INFO_CAP_SPARSE_MMAP`: capability id of the sparse mmap areas.
pub const REGION_INFO_CAP_SPARSE_MMAP: u16 = 1;
/// Version of the sparse mmap capability layout.
pub const REGION_INFO_CAP_SPARSE_MMAP_VERSION: u16 = 1;

/// PCI region indices (`VFIO_PCI_*_REGION_INDEX`).
pub const PCI_BAR0_REGION_INDEX: u32 = 0;
pub const PCI_BAR5_REGION_INDEX: u32 = 5;
pub const PCI_ROM_REGION_INDEX: u32 = 6;
pub const PCI_CONFIG_REGION_INDEX: u32 = 7;
pub const PCI_VGA_REGION_INDEX: u32 = 8;
/// Number of standard PCI regions.
pub const PCI_NUM_REGIONS: u32 = 9;

/// PCI interrupt indices (`VFIO_PCI_*_IRQ_INDEX`).
pub const PCI_INTX_IRQ_INDEX: u32 = 0;
pub const PCI_MSI_IRQ_INDEX: u32 = 1;
pub const PCI_MSIX_IRQ_INDEX: u32 = 2;
pub const PCI_ERR_IRQ_INDEX: u32 = 3;
pub const PCI_REQ_IRQ_INDEX: u32 = 4;
/// Number of standard PCI interrupt indices.
pub const PCI_NUM_IRQS: u32 = 5;

/// `VFIO_IRQ_INFO_EVENTFD`: the index can signal through an eventfd.
pub const IRQ_INFO_EVENTFD: u32 = 1 << 0;
/// `VFIO_IRQ_INFO_MASKABLE`.
pub const IRQ_INFO_MASKABLE: u32 = 1 << 1;
/// `VFIO_IRQ_INFO_AUTOMASKED`: triggering masks the interrupt until unmasked (INTx).
pub const IRQ_INFO_AUTOMASKED: u32 = 1 << 2;
/// `VFIO_IRQ_INFO_NORESIZE`.
pub const IRQ_INFO_NORESIZE: u32 = 1 << 3;

/// `VFIO_IRQ_SET_DATA_NONE`: no data follows.
pub const IRQ_SET_DATA_NONE: u32 = 1 << 0;
/// `VFIO_IRQ_SET_DATA_BOOL`: one byte per vector follows.
pub const IRQ_SET_DATA_BOOL: u32 = 1 << 1;
/// `VFIO_IRQ_SET_DATA_EVENTFD`: eventfds ride in the message's SCM_RIGHTS.
pub const IRQ_SET_DATA_EVENTFD: u32 = 1 << 2;
/// Mask of the data-type bits (exactly one must be set).
pub const IRQ_SET_DATA_TYPE_MASK: u32 =
    IRQ_SET_DATA_NONE | IRQ_SET_DATA_BOOL | IRQ_SET_DATA_EVENTFD;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const IRQ_SET_ACTION_MASK: u32 = 1 << 3;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const IRQ_SET_ACTION_UNMASK: u32 = 1 << 4;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const IRQ_SET_ACTION_TRIGGER: u32 = 1 << 5;
/// Mask of the action bits (exactly one must be set).
pub const IRQ_SET_ACTION_TYPE_MASK: u32 =
    IRQ_SET_ACTION_MASK | IRQ_SET_ACTION_UNMASK | IRQ_SET_ACTION_TRIGGER;

/// `VFIO_DMA_MAP_FLAG_READ`: the device may read the range.
pub const DMA_MAP_FLAG_READ: u32 = 1 << 0;
/// `VFIO_DMA_MAP_FLAG_WRITE`: the device may write the range.
pub const DMA_MAP_FLAG_WRITE: u32 = 1 << 1;

/// `VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP` (bit 0; not supported by p2plab).
pub const DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: u32 = 1 << 0;
/// `VFIO_DMA_UNMAP_FLAG_ALL` (bit 1): unmap everything; iova and size must be 0.
/// (The crates.io `vfio_user` 0.1.7 uses bit 2 here, which is wrong.)
pub const DMA_UNMAP_FLAG_ALL: u32 = 1 << 1;
