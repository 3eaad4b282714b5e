//! Type-0 configuration header registers (PCI Local Bus 3.0 §6.1, PCIe Base 6.0 §7.5.1),
//! named as in Linux `include/uapi/linux/pci_regs.h`.

/// Size of the PCI Express configuration space (PCIe Base 6.0 §7.2.2).
pub const PCIE_CONFIG_SPACE_SIZE: usize = 4096;
/// Size of the conventional (legacy) configuration space; extended capabilities start here.
pub const PCI_CONFIG_SPACE_SIZE: usize = 256;

/// Vendor ID (16 bits, RO).
pub const PCI_VENDOR_ID: usize = 0x00;
/// Device ID (16 bits, RO).
pub const PCI_DEVICE_ID: usize = 0x02;
/// Command register (16 bits).
pub const PCI_COMMAND: usize = 0x04;
/// Status register (16 bits, RO and RW1C bits).
pub const PCI_STATUS: usize = 0x06;
/// Revision ID (8 bits, RO).
pub const PCI_REVISION_ID: usize = 0x08;
/// Class code, programming interface byte (lowest byte of the 24-bit class).
pub const PCI_CLASS_PROG: usize = 0x09;
/// Class code, sub-class byte.
pub const PCI_CLASS_DEVICE: usize = 0x0a;
/// Class code, base class byte.
pub const PCI_CLASS_BASE: usize = 0x0b;
/// Cache Line Size (8 bits, RW, no effect on PCIe).
pub const PCI_CACHE_LINE_SIZE: usize = 0x0c;
/// Latency Timer (8 bits, RO 0 on PCIe).
pub const PCI_LATENCY_TIMER: usize = 0x0d;
/// Header Type (8 bits, RO; 0 = type-0 single-function).
pub const PCI_HEADER_TYPE: usize = 0x0e;
/// BIST (8 bits, RO 0: not supported).
pub const PCI_BIST: usize = 0x0f;
/// Base Address Register 0; BAR n is at `PCI_BASE_ADDRESS_0 + 4 * n`.
pub const PCI_BASE_ADDRESS_0: usize = 0x10;
/// Subsystem Vendor ID (16 bits, RO).
pub const PCI_SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// Subsystem ID (16 bits, RO).
pub const PCI_SUBSYSTEM_ID: usize = 0x2e;
/// Expansion ROM Base Address (32 bits; hardwired 0: no ROM).
pub const PCI_ROM_ADDRESS: usize = 0x30;
/// Capabilities Pointer (8 bits, RO).
pub const PCI_CAPABILITY_LIST: usize = 0x34;
/// Interrupt Line (8 bits, RW scratch for software).
pub const PCI_INTERRUPT_LINE: usize = 0x3c;
/// Interrupt Pin (8 bits, RO; 0 = none, 1 = INTA# … 4 = INTD#).
pub const PCI_INTERRUPT_PIN: usize = 0x3d;

/// Number of BAR registers in a type-0 header.
pub const PCI_NUM_BARS: usize = 6;

/// Command: I/O Space Enable (hardwired 0: no I/O BARs).
pub const PCI_COMMAND_IO: u16 = 0x0001;
/// Command: Memory Space Enable (MSE).
pub const PCI_COMMAND_MEMORY: u16 = 0x0002;
/// Command: Bus Master Enable (BME).
pub const PCI_COMMAND_MASTER: u16 = 0x0004;
/// Command: Parity Error Response.
pub const PCI_COMMAND_PARITY: u16 = 0x0040;
/// Command: SERR# Enable.
pub const PCI_COMMAND_SERR: u16 = 0x0100;
/// Command: Interrupt Disable (INTx).
pub const PCI_COMMAND_INTX_DISABLE: u16 = 0x0400;

/// Status: Interrupt Status (RO, INTx asserted).
pub const PCI_STATUS_INTERRUPT: u16 = 0x0008;
/// Status: Capabilities List (RO).
pub const PCI_STATUS_CAP_LIST: u16 = 0x0010;
/// Status: Master Data Parity Error (RW1C).
pub const PCI_STATUS_PARITY: u16 = 0x0100;
/// Status: Signaled Target Abort (RW1C).
pub const PCI_STATUS_SIG_TARGET_ABORT: u16 = 0x0800;
/// Status: Received Target Abort (RW1C).
pub const PCI_STATUS_REC_TARGET_ABORT: u16 = 0x1000;
/// Status: Received Master Abort (RW1C).
pub const PCI_STATUS_REC_MASTER_ABORT: u16 = 0x2000;
/// Status: Signaled System Error (RW1C).
pub const PCI_STATUS_SIG_SYSTEM_ERROR: u16 = 0x4000;
/// Status: Detected Parity Error (RW1C).
pub const PCI_STATUS_DETECTED_PARITY: u16 = 0x8000;

/// Header Type 0: a normal (endpoint) function.
pub const PCI_HEADER_TYPE_NORMAL: u8 = 0x00;

/// BAR bit 0: I/O space indicator (0 = memory).
pub const PCI_BASE_ADDRESS_SPACE_IO: u32 = 0x01;
/// BAR bits 2:1 = 10b: 64-bit memory BAR.
pub const PCI_BASE_ADDRESS_MEM_TYPE_64: u32 = 0x04;
/// BAR bit 3: prefetchable.
pub const PCI_BASE_ADDRESS_MEM_PREFETCH: u32 = 0x08;
/// Mask of the address bits of a memory BAR's low dword.
pub const PCI_BASE_ADDRESS_MEM_MASK: u32 = !0x0f;

/// Capability list entry: capability ID byte.
pub const PCI_CAP_LIST_ID: usize = 0;
/// Capability list entry: next pointer byte.
pub const PCI_CAP_LIST_NEXT: usize = 1;
/// Capability list entry: capability-specific 16-bit flags.
pub const PCI_CAP_FLAGS: usize = 2;

/// Capability ID: PCI Power Management.
pub const PCI_CAP_ID_PM: u8 = 0x01;
/// Capability ID: PCI Express.
pub const PCI_CAP_ID_EXP: u8 = 0x10;
/// Capability ID: MSI-X.
pub const PCI_CAP_ID_MSIX: u8 = 0x11;
