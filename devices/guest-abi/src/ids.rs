//! PCI ids of the lab's devices.
//!
//! Vendor [`VENDOR_ID`] `0x2b2b` is a lab-only id chosen for "p2p" (it is not in the
//! pci.ids database and not assigned to p2plab by the PCI-SIG; never ship it outside a
//! lab VM). The device models (`p2plab-gpu`, `p2plab-nvme`) put these in their config
//! space, the guest runner finds GPU-kind devices by them, and `p2pgpu.ko` binds
//! `P2PGPU_PCI_VENDOR_ID`/`P2PGPU_PCI_DEVICE_ID` from `p2pgpu_uapi.h`, which
//! `p2plab-gpu`'s `c_header` test checks against [`VENDOR_ID`] and [`GPU_DEVICE_ID`].

/// Lab-only vendor id of every p2plab device.
pub const VENDOR_ID: u16 = 0x2b2b;
/// The GPU-like device (`p2plab-gpu`).
pub const GPU_DEVICE_ID: u16 = 0x0001;
/// The NVMe controller (`p2plab-nvme`).
pub const NVME_DEVICE_ID: u16 = 0x0002;
/// The NVMe controller's class code: base 0x01 (mass storage), sub 0x08 (NVM),
/// prog-if 0x02 (NVMe I/O controller).
pub const NVME_CLASS_CODE: u32 = 0x01_08_02;
/// The GPU-like device's class code: base 0x03 (display), sub 0x02 (3D controller).
pub const GPU_CLASS_CODE: u32 = 0x03_02_00;
/// Size of the NVMe controller's register BAR (BAR0: registers and doorbells).
pub const NVME_REG_BAR_SIZE: u64 = 16 * 1024;
/// Size of the GPU-like device's register BAR (BAR0, `p2pgpu_regs.h`).
pub const GPU_REG_BAR_SIZE: u64 = 64 * 1024;
