//! p2plab-nvme: an NVMe 1.4 controller with a Controller Memory Buffer, as a pure state
//! machine.
//!
//! # What it is
//! The device model behind p2plab's emulated NVMe: BAR0 registers and doorbells, admin
//! and I/O queues, PRP/SGL data pointers, namespaces on files, MSI-X per completion
//! queue, and a CMB in its own prefetchable BAR so Linux publishes it as p2pmem.
//!
//! # Architecture
//! [`NvmeController`] implements the device contract [`p2plab_pci::PciFunction`] and is
//! driven by the host glue through it:
//! - the vfio-user thread calls `bar_read` / `bar_write`; they never block on DMA or on
//!   the worker (a doorbell write only records the tail and returns `true`);
//! - the host's worker calls `process` while it returns true or `needs_processing` is
//!   set, then sleeps until `bar_write` returns true again or a config event
//!   (`set_bus_master`, `reset`) sets `needs_processing`;
//! - with shadow doorbells the driver rings the MMIO doorbell only when it moves a
//!   tail/head past the EventIdx the controller published when it found the queue empty
//!   (or the CQ full), so a sleeping worker never misses work;
//! - all DMA goes through a [`p2plab_memory::DmaSpace`]; the fabric behind it routes CMB
//!   addresses (queues, PRP lists, data) to the CMB memory and counts them as `self`, so
//!   the model has no CMB data path of its own (`cmb` is only the register semantics);
//! - interrupts go through a [`p2plab_memory::InterruptSink`] (vector = CQ's IV), one per
//!   vector per pass; when the host sets Interrupt Coalescing (Feature 08h) an I/O CQ's
//!   vector waits for THR + 1 entries or TIME, unless its Interrupt Vector Configuration
//!   has CD set (the worker keeps polling while one waits).
//!
//! Modules, imports running one way (openvmm `storage/nvme`):
//! - `controller`: [`NvmeController`], the register path and the worker loop;
//! - the command workers `admin` and `io`, each returning the neutral `command::Outcome`;
//! - the shared state: `state` (what the register path and the worker share, and what
//!   the worker owns), `features` (Set/Get Features values), `command` (outcome, CQE
//!   status);
//! - spec leaves: `regs` (register file), `queue`, `prp`, `sgl`, `cmb`, [`namespace`],
//!   [`error`], [`pci`] (IDs, BAR layout).
//!
//! Nothing below reaches back up; a unit test checks the module imports.
//!
//! # What it does not implement
//! Metadata / protection information, reservations, namespace management, Format NVM,
//! firmware download, self-test, sanitize, directives, boot partitions, PMR, NVM
//! subsystem reset, keep-alive timeouts, weighted round robin (all SQs are serviced
//! round robin), fused commands. Only 4 KiB memory pages (CAP.MPSMAX = 0). Commands execute synchronously in `process`,
//! so Abort never finds anything to abort.

#![forbid(unsafe_code)]

mod admin;
mod cmb;
mod command;
mod controller;
pub mod error;
mod features;
mod io;
pub mod namespace;
pub mod pci;
mod prp;
mod queue;
mod regs;
mod sgl;
mod state;

#[cfg(test)]
mod tests;

pub use controller::{NvmeConfig, NvmeController, ADMIN_BATCH, IO_BATCH};
pub use error::{ConfigError, NvmeError};
pub use namespace::{Deallocate, NamespaceConfig};
pub use pci::{PciLayout, CMB_BAR, MAX_IO_QUEUES, MSIX_BAR, REG_BAR, REG_BAR_SIZE};
pub use state::VendorLogSource;
