//! p2plab-nvme: an NVMe 1.4 controller with a Controller Memory Buffer, as a pure state
//! machine.
//!
//! # What it is
//! The device model behind p2plab's emulated NVMe: BAR0 registers and doorbells, admin
//! and I/O queues, PRP/SGL data pointers, namespaces on files, MSI-X per completion
//! queue, and a CMB in its own prefetchable BAR so Linux publishes it as p2pmem.
//!
//! # Architecture
//! [`NvmeController`] is driven by the host glue:
//! - the vfio-user thread calls [`NvmeController::bar_read`] / [`NvmeController::bar_write`];
//!   they never block on DMA or on the worker (a doorbell write only records the tail);
//! - the host's worker calls [`NvmeController::process`] while it returns true or
//!   [`NvmeController::needs_processing`] is set, then sleeps until `bar_write` returns
//!   true again;
//! - all DMA goes through a [`p2plab_memory::DmaSpace`]; the fabric behind it routes CMB
//!   addresses (queues, PRP lists, data) to the CMB memory and counts them as `self`, so
//!   the model has no CMB data path of its own (`cmb` is only the register semantics);
//! - interrupts go through a [`p2plab_memory::InterruptSink`] (vector = CQ's IV).
//!
//! Modules follow the spec: `regs` (register file), `queue`, `prp`, `sgl`, `cmb`,
//! `admin`, `io`, [`namespace`], [`error`], [`pci`] (IDs and BAR layout).
//!
//! # What it does not implement
//! Metadata / protection information, reservations, namespace management, Format NVM,
//! firmware download, self-test, sanitize, directives, boot partitions, PMR, NVM
//! subsystem reset, keep-alive timeouts, weighted round robin (all SQs are serviced
//! round robin), interrupt coalescing (accepted, not applied), fused commands. Only
//! 4 KiB memory pages (CAP.MPSMAX = 0). Commands execute synchronously in `process`,
//! so Abort never finds anything to abort.

#![forbid(unsafe_code)]

mod admin;
mod cmb;
mod controller;
pub mod error;
mod io;
pub mod namespace;
pub mod pci;
mod prp;
mod queue;
mod regs;
mod sgl;

#[cfg(test)]
mod tests;

pub use controller::{NvmeConfig, NvmeController, VendorLogSource, ADMIN_BATCH, IO_BATCH};
pub use error::{ConfigError, NvmeError};
pub use namespace::{Deallocate, NamespaceConfig};
pub use pci::{PciLayout, REG_BAR_SIZE};

/// BAR of the registers and doorbells.
pub const REG_BAR: usize = 0;
/// BAR of the Controller Memory Buffer.
pub const CMB_BAR: usize = 2;
/// BAR of the MSI-X table and PBA.
pub const MSIX_BAR: usize = 4;
/// Most I/O queue pairs a controller can be configured with (MSI-X table room).
pub const MAX_IO_QUEUES: u16 = 127;

/// End of the register block: doorbells start here.
pub(crate) const fn regs_end() -> u64 {
    nvme_spec::regs::DBS
}
